// Runs the language-neutral scenarios of tests/conformance/*.json (format:
// tests/conformance/README.md) against this client, once per storage.

import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import { Client } from '../dist/index.js';
import { BASE_URL, FakeClock, backends, makeToken } from './helpers.mjs';

const DIR = new URL('../../../tests/conformance/', import.meta.url);
const files = readdirSync(DIR).filter((f) => f.endsWith('.json')).sort();
const NETWORK_STEPS = new Set(['push', 'pull', 'sync', 'pull_waiting', 'poke']);

/** The pattern rules of the README: objects by listed keys ($absent, $any), arrays
 * element by element, anything else equal. Returns the first mismatch, or null. */
export function mismatch(pattern, value, where = '$') {
  if (pattern !== null && typeof pattern === 'object' && !Array.isArray(pattern)) {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) return `${where}: expected an object, got ${JSON.stringify(value)}`;
    for (const [k, p] of Object.entries(pattern)) {
      if (p === '$absent') {
        if (k in value) return `${where}.${k}: expected absent, got ${JSON.stringify(value[k])}`;
      } else if (p === '$any') {
        if (!(k in value)) return `${where}.${k}: expected present`;
      } else {
        if (!(k in value)) return `${where}.${k}: missing (expected ${JSON.stringify(p)})`;
        const m = mismatch(p, value[k], `${where}.${k}`);
        if (m) return m;
      }
    }
    return null;
  }
  if (Array.isArray(pattern)) {
    if (!Array.isArray(value) || value.length !== pattern.length) return `${where}: expected ${pattern.length} items, got ${JSON.stringify(value)}`;
    for (let i = 0; i < pattern.length; i++) {
      const m = mismatch(pattern[i], value[i], `${where}[${i}]`);
      if (m) return m;
    }
    return null;
  }
  return pattern === value ? null : `${where}: expected ${JSON.stringify(pattern)}, got ${JSON.stringify(value)}`;
}

/** A fetch that plays the scenario's server for one step. */
class ScriptedServer {
  constructor(tokens) {
    this.tokens = tokens;
    this.exchanges = [];
    this.problems = [];
  }
  fetch = async (url, init) => {
    const u = new URL(url);
    const ex = this.exchanges.shift();
    const what = `${init.method} ${u.pathname}${u.search}`;
    if (!ex) {
      this.problems.push(`unexpected request ${what}`);
      throw new TypeError('unexpected request');
    }
    const r = ex.request;
    const problems = [];
    if (init.method !== r.method) problems.push(`method ${init.method}, expected ${r.method}`);
    if (u.origin + u.pathname !== BASE_URL + r.path) problems.push(`path ${u.pathname}, expected ${r.path}`);
    const names = [...u.searchParams.keys()];
    if (new Set(names).size !== names.length) problems.push(`a query parameter given twice: ${u.search}`);
    const m = mismatch(r.query ?? {}, Object.fromEntries(u.searchParams), 'query');
    const extra = names.filter((n) => !(n in (r.query ?? {})));
    if (m || extra.length > 0) problems.push(m ?? `unexpected query parameters ${extra.join(', ')}`);
    if (r.token !== undefined && init.headers.authorization !== `Bearer ${this.tokens[r.token]}`) {
      const label = Object.keys(this.tokens).find((k) => init.headers.authorization === `Bearer ${this.tokens[k]}`);
      problems.push(`token ${label ?? init.headers.authorization}, expected ${r.token}`);
    }
    if (r.body !== undefined) {
      const bm = mismatch(r.body, init.body === undefined ? undefined : JSON.parse(init.body), 'body');
      if (bm) problems.push(bm);
    }
    if (problems.length > 0) {
      this.problems.push(`${what}: ${problems.join('; ')}`);
      throw new TypeError('request mismatch');
    }
    const res = ex.response;
    if (res.network_error !== undefined) throw new TypeError(res.network_error);
    const isText = res.body_text !== undefined;
    return new Response(isText ? res.body_text : JSON.stringify(res.body), {
      status: res.status,
      headers: { 'content-type': isText ? 'text/plain' : 'application/json', ...(res.headers ?? {}) },
    });
  };
}

const snake = {
  rejection: (r) => ({ op_id: r.opId, table: r.table, op: r.op, id: r.id, data: r.data, code: r.code, message: r.message }),
  conflict: (c) => ({ op_id: c.opId, table: c.table, id: c.id, status: c.status, reason: c.reason, server_row: c.serverRow }),
};

async function runStep(client, server, clock, step, where) {
  const call = {
    push: () => client.push(),
    pull: () => client.pull(),
    sync: () => client.sync(),
    pull_waiting: () => client.pullWaiting(step.wait_secs),
    poke: () => client.handlePoke(step.checkpoint),
  };
  switch (step.do) {
    case 'write': {
      const op = { PUT: 'put', PATCH: 'patch', DELETE: 'delete' }[step.op];
      const args = step.op === 'DELETE' ? [step.table, step.id] : [step.table, step.id, step.data ?? {}];
      if (step.error) {
        await assert.rejects(client[op](...args), (e) => e.kind === step.error, `${where}: expected a ${step.error} error`);
      } else {
        const opId = await client[op](...args);
        if (step.op_id !== undefined) assert.equal(opId, step.op_id, `${where}: op_id`);
      }
      return;
    }
    case 'set_token': {
      const p = client.setToken(server.tokens[step.token]);
      if (step.error) await assert.rejects(p, (e) => e.kind === step.error, `${where}: expected a ${step.error} error`);
      else await p;
      return;
    }
    case 'reset_backoff':
      client.resetBackoff();
      return;
    case 'check':
      return check(client, clock, step, where);
    default: {
      assert.ok(NETWORK_STEPS.has(step.do), `${where}: unknown step ${step.do}`);
      assert.ok(Array.isArray(step.exchanges), `${where}: exchanges must be a list`);
      server.exchanges = [...step.exchanges];
      server.problems = [];
      let error = null;
      try {
        await call[step.do]();
      } catch (e) {
        error = e;
      }
      assert.deepEqual(server.problems, [], `${where}: requests`);
      assert.equal(server.exchanges.length, 0, `${where}: ${server.exchanges.length} exchange(s) not made`);
      if (step.error) {
        assert.ok(error, `${where}: expected a ${step.error.kind} error, it succeeded`);
        assert.equal(error.kind, step.error.kind, `${where}: error kind (${error.message})`);
        if (step.error.status !== undefined) assert.equal(error.status, step.error.status, `${where}: error status`);
        if (step.error.code !== undefined) assert.equal(error.code, step.error.code, `${where}: error code`);
      } else if (error) {
        assert.fail(`${where}: expected success, got ${error.kind}: ${error.message}`);
      }
    }
  }
}

async function check(client, clock, step, where) {
  const counts = await client.store.counts();
  const status = await client.status();
  for (const [table, rows] of Object.entries(step.rows ?? {})) {
    assert.deepEqual(await client.list(table), rows, `${where}: rows of ${table}`);
  }
  for (const [table, byId] of Object.entries(step.server_rows ?? {})) {
    for (const [id, row] of Object.entries(byId)) {
      assert.deepEqual(await client.store.serverRow(table, id), row, `${where}: server row ${table}/${id}`);
    }
  }
  if ('outbox' in step) assert.equal(counts.outbox, step.outbox, `${where}: outbox`);
  if ('awaiting_checkpoint' in step) assert.equal(counts.awaitingCheckpoint, step.awaiting_checkpoint, `${where}: awaiting_checkpoint`);
  if ('rejected' in step) {
    const m = mismatch(step.rejected, (await client.rejections()).map(snake.rejection), 'rejected');
    assert.equal(m, null, `${where}: ${m}`);
  }
  if ('conflicts' in step) {
    const m = mismatch(step.conflicts, (await client.conflicts()).map(snake.conflict), 'conflicts');
    assert.equal(m, null, `${where}: ${m}`);
  }
  if ('cursor' in step) assert.equal(await client.store.cursor(), step.cursor, `${where}: cursor`);
  if ('checkpoint' in step) assert.equal(await client.store.checkpoint(), step.checkpoint, `${where}: checkpoint`);
  if ('resyncing' in step) assert.equal(status.resyncing, step.resyncing, `${where}: resyncing`);
  if ('state' in step) assert.equal(status.state, step.state, `${where}: state (last error: ${status.lastError?.message})`);
  if ('backing_off' in step) assert.equal(client.retryIn() > 0, step.backing_off, `${where}: backing_off`);
  if ('retry_in_ms' in step) {
    const r = client.retryIn();
    assert.ok(r >= step.retry_in_ms.min && r <= step.retry_in_ms.max, `${where}: retry_in_ms ${r} not in [${step.retry_in_ms.min}, ${step.retry_in_ms.max}]`);
  }
}

test('there are conformance scenarios', () => {
  assert.ok(files.length >= 10, `found ${files.length} scenarios in ${DIR.pathname}`);
});

for (const file of files) {
  const scenario = JSON.parse(readFileSync(new URL(file, DIR), 'utf8'));
  for (const backend of backends) {
    test(`conformance ${scenario.name} [${backend.name}]`, { skip: backend.skip }, async () => {
      assert.equal(`${scenario.name}.json`, file, 'name matches the file');
      assert.ok(Array.isArray(scenario.steps) && scenario.steps.length > 0, 'has steps');
      const tokens = Object.fromEntries(Object.entries(scenario.tokens).map(([label, claims]) => [label, makeToken(claims, label)]));
      const server = new ScriptedServer(tokens);
      const clock = new FakeClock();
      const cfg = scenario.config ?? {};
      const refresh = scenario.refresh === undefined ? undefined : [...scenario.refresh];
      const storage = await backend.open();
      const client = await Client.open({
        url: BASE_URL,
        storage,
        token: scenario.token === undefined ? null : tokens[scenario.token],
        refreshToken:
          refresh &&
          (async () => {
            const next = refresh.shift();
            if (next === undefined || next === null) throw new Error('the refresh hook refused');
            return tokens[next];
          }),
        batchSize: cfg.batch_size,
        pageLimit: cfg.page_limit,
        tables: cfg.tables,
        backoffBaseMs: cfg.backoff_base_ms,
        backoffMaxMs: cfg.backoff_max_ms,
        timeoutMs: cfg.timeout_ms,
        fetch: server.fetch,
        now: clock.now,
        random: () => 0.5,
        sleep: clock.sleep,
      });
      try {
        for (const [i, step] of scenario.steps.entries()) {
          await runStep(client, server, clock, step, `${scenario.name} step ${i + 1} (${step.do})`);
        }
      } finally {
        await client.close();
      }
    });
  }
}
