// One PowerSync "device": a stock @powersync/node database in this process, driven over
// stdin/stdout with one JSON command per line and one JSON answer per line, in order:
//   -> {"cmd":"open","path":"/tmp/a.db"}
//   <- {"ok":true}            or  {"ok":false,"error":"..."}
// stdout carries answers only (console output goes to stderr; DEVICE_LOG=1 also copies
// the SDK's log there). See docs/design/powersync-protocol.md §4 and §6.
import { createInterface } from 'node:readline';
import path from 'node:path';
import { format } from 'node:util';
import { column, PowerSyncDatabase, Schema, SyncStreamConnectionMethod, Table } from '@powersync/node';

// The local schema. Add tables here (each gets an `id` text column implicitly).
const TABLES = {
  entries: {
    user_id: column.text,
    title: column.text,
    body_markdown: column.text,
    tags: column.text, // a JSON array as text
    created_at: column.text,
    updated_at: column.text,
    deleted_at: column.text
  }
};
const SCHEMA = new Schema(Object.fromEntries(Object.entries(TABLES).map(([name, cols]) => [name, new Table(cols)])));

const MISMATCH = /^Could not apply (partial )?checkpoint, Checksums didn't match/;
const LEVELS = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR' };

// Keep stdout for answers: anything printed through console goes to stderr.
for (const name of ['log', 'info', 'warn', 'debug', 'error']) {
  console[name] = (...args) => process.stderr.write(format(...args) + '\n');
}

let db = null;
let credentials = null; // {endpoint, token}, the token replaceable by the `token` command
let uploadUrl = null;
let wasConnected = false;
const logs = []; // the last 200 log lines
const uploads = []; // the last 50 /upload answers
const rejected = []; // mutations the server refused, with its reasons
const counters = {
  checksumMismatches: 0,
  fetchCredentials: 0,
  uploadCalls: 0, // uploadData invocations that found a transaction
  uploadPosts: 0,
  uploadsOk: 0, // transactions completed
  uploadsFailed: 0, // uploadData calls that threw (the SDK retries)
  rejectedOps: 0,
  statusChanged: 0,
  statusWithUploadError: 0,
  statusWithDownloadError: 0,
  disconnects: 0 // connected true -> false
};
let uploading = false;

const errorMessage = (e) => (e == null ? null : e instanceof Error ? e.message : typeof e === 'string' ? e : JSON.stringify(e));

const logger = {
  log(record) {
    const line = `${LEVELS[record.level] ?? record.level} ${record.message}${record.error != null ? ': ' + errorMessage(record.error) : ''}`;
    logs.push(line);
    if (logs.length > 200) logs.shift();
    if (MISMATCH.test(record.message)) counters.checksumMismatches++;
    if (process.env.DEVICE_LOG === '1') process.stderr.write(line + '\n');
  }
};

const connector = {
  async fetchCredentials() {
    counters.fetchCredentials++;
    return credentials && { ...credentials };
  },

  // Like the README's connector: one local transaction per POST /upload. Mutations the
  // server names in `error.details.errors` of a 4xx are recorded and dropped, the rest
  // re-sent, then the transaction is completed; any other failure throws, so the SDK
  // keeps the transaction and retries after retryDelayMs.
  async uploadData(database) {
    const tx = await database.getNextCrudTransaction();
    if (!tx) return;
    counters.uploadCalls++;
    uploading = true;
    try {
      const clientId = await database.getClientId();
      let mutations = tx.crud.map((e) => ({
        op_id: e.clientId,
        op: e.op, // UpdateType: PUT | PATCH | DELETE
        type: e.table, // what /upload reads (CrudEntry.toJSON()'s name for it)
        table: e.table,
        id: e.id,
        tx_id: e.transactionId ?? null,
        data: e.opData ?? null
      }));
      for (;;) {
        counters.uploadPosts++;
        const res = await fetch(uploadUrl, {
          method: 'POST',
          headers: { authorization: `Bearer ${credentials.token}`, 'content-type': 'application/json' },
          body: JSON.stringify({ client_id: clientId, mutations })
        });
        const text = await res.text();
        let body = null;
        try {
          body = JSON.parse(text);
        } catch {
          body = text;
        }
        uploads.push({ status: res.status, op_ids: mutations.map((m) => m.op_id), body });
        if (uploads.length > 50) uploads.shift();
        if (res.ok) break;
        const problems = body?.error?.details?.errors ?? [];
        const bad = new Set(problems.map((p) => p.op_id));
        const refusable = res.status >= 400 && res.status < 500 && res.status !== 401 && res.status !== 429;
        if (!refusable || !mutations.some((m) => bad.has(m.op_id))) {
          throw new Error(`upload failed: ${res.status} ${body?.error?.code ?? text.slice(0, 200)}`);
        }
        for (const m of mutations.filter((m) => bad.has(m.op_id))) {
          rejected.push({ status: res.status, mutation: m, problems: problems.filter((p) => p.op_id === m.op_id) });
          counters.rejectedOps++;
        }
        mutations = mutations.filter((m) => !bad.has(m.op_id));
        if (mutations.length === 0) break;
      }
      await tx.complete();
      counters.uploadsOk++;
    } catch (e) {
      counters.uploadsFailed++;
      throw e;
    } finally {
      uploading = false;
    }
  }
};

function statusJson(s = db.currentStatus) {
  const flow = s.dataFlowStatus;
  return {
    connected: s.connected,
    connecting: s.connecting,
    hasSynced: s.hasSynced ?? false,
    lastSyncedAt: s.lastSyncedAt?.toISOString() ?? null,
    dataFlowStatus: {
      uploading: flow.uploading,
      downloading: flow.downloading,
      uploadError: errorMessage(flow.uploadError),
      downloadError: errorMessage(flow.downloadError)
    }
  };
}

function table(name, data = {}) {
  if (!Object.hasOwn(TABLES, name)) throw new Error(`unknown table ${name}`);
  const cols = Object.keys(data);
  for (const c of cols) if (!Object.hasOwn(TABLES[name], c)) throw new Error(`unknown column ${name}.${c}`);
  // Arrays and objects (tags) are stored as JSON text.
  const values = cols.map((c) => (data[c] !== null && typeof data[c] === 'object' ? JSON.stringify(data[c]) : data[c]));
  return { cols, values };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function count(sql) {
  return (await db.get(sql)).n;
}

const commands = {
  async open({ path: file, readWorkers = 1, implementation = 'better-sqlite3' }) {
    if (db) throw new Error('already open');
    db = new PowerSyncDatabase({
      schema: SCHEMA,
      database: {
        dbFilename: path.basename(file),
        dbLocation: path.dirname(path.resolve(file)),
        readWorkerCount: readWorkers,
        implementation: { type: implementation }
      },
      logger
    });
    db.registerListener({
      statusChanged(s) {
        counters.statusChanged++;
        if (s.dataFlowStatus.uploadError) counters.statusWithUploadError++;
        if (s.dataFlowStatus.downloadError) counters.statusWithDownloadError++;
        if (wasConnected && !s.connected) counters.disconnects++;
        wasConnected = s.connected;
      }
    });
    await db.init();
    return { clientId: await db.getClientId() };
  },

  async connect({ endpoint, token, uploadUrl: url, retryDelayMs = 200, crudUploadThrottleMs = 0 }) {
    credentials = { endpoint, token };
    uploadUrl = url;
    await db.connect(connector, {
      connectionMethod: SyncStreamConnectionMethod.HTTP,
      retryDelayMs,
      crudUploadThrottleMs
    });
    return { status: statusJson() };
  },

  // The SDK caches credentials: it calls fetchCredentials again only after a 401, a
  // token_expires_in line or a reconnect. /upload uses the new token at once.
  async token({ token }) {
    credentials = { ...credentials, token };
    return {};
  },

  // Local writes go through the SDK's views (INSTEAD OF triggers): SQLite reports no
  // affected rows for them, so none are returned.
  async put({ table: name, id, data }) {
    const { cols, values } = table(name, data);
    const names = ['id', ...cols].join(', ');
    const marks = ['?', ...cols.map(() => '?')].join(', ');
    await db.execute(`INSERT INTO ${name} (${names}) VALUES (${marks})`, [id, ...values]);
    return {};
  },

  async patch({ table: name, id, data }) {
    const { cols, values } = table(name, data);
    if (cols.length === 0) throw new Error('patch needs data');
    const sets = cols.map((c) => `${c} = ?`).join(', ');
    await db.execute(`UPDATE ${name} SET ${sets} WHERE id = ?`, [...values, id]);
    return {};
  },

  async delete({ table: name, id }) {
    table(name);
    await db.execute(`DELETE FROM ${name} WHERE id = ?`, [id]);
    return {};
  },

  async query({ sql, params = [] }) {
    return { rows: await db.getAll(sql, params) };
  },

  // Synced: a checkpoint was applied (at or after `since`, an ISO time or epoch ms, when
  // given: hasSynced alone stays true across reconnects), nothing is left to upload, and
  // every local write was reconciled by a later applied checkpoint (ps_updated_rows empty).
  async waitSynced({ timeoutMs = 30000, since = null }) {
    const deadline = Date.now() + timeoutMs;
    const after = since == null ? null : new Date(since).getTime();
    for (;;) {
      const s = db.currentStatus;
      const fresh = after == null || (s.lastSyncedAt?.getTime() ?? 0) >= after;
      if (s.hasSynced && fresh && !uploading && !s.dataFlowStatus.uploading) {
        const crud = await count('SELECT count(*) AS n FROM ps_crud');
        const pending = await count('SELECT count(*) AS n FROM ps_updated_rows');
        if (crud === 0 && pending === 0) return { status: statusJson() };
      }
      if (Date.now() > deadline) {
        const crud = await count('SELECT count(*) AS n FROM ps_crud');
        throw new Error(`not synced after ${timeoutMs} ms: ps_crud=${crud} status=${JSON.stringify(statusJson())}`);
      }
      await sleep(50);
    }
  },

  async status() {
    return { status: statusJson() };
  },

  async counters() {
    return { counters: { ...counters } };
  },

  async logs() {
    return { logs, uploads, rejected };
  },

  async disconnect() {
    await db.disconnect();
    return { status: statusJson() };
  },

  async close() {
    if (db) await db.close();
    db = null;
    return {};
  }
};

// One command at a time, answered in order.
let queue = Promise.resolve();
const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  if (line.trim() === '') return;
  queue = queue.then(async () => {
    let answer;
    try {
      const { cmd, ...args } = JSON.parse(line);
      const run = commands[cmd];
      if (!run) throw new Error(`unknown command ${JSON.stringify(cmd)}`);
      if (!db && cmd !== 'open' && cmd !== 'close') throw new Error('no database: send open first');
      answer = { ok: true, ...(await run(args)) };
    } catch (e) {
      answer = { ok: false, error: errorMessage(e) ?? 'error' };
    }
    process.stdout.write(JSON.stringify(answer) + '\n');
  });
});
lines.on('close', () => {
  queue.then(async () => {
    if (db) await db.close().catch(() => {});
    process.exit(0);
  });
});
