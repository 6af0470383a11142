/**
 * The local state, on any `Storage`:
 *
 * - the **server layer** (`server`): rows exactly as `/sync` delivered them, up to the
 *   stored cursor;
 * - the **outbox** (`outbox`): the app's mutations, pending until `/upload`
 *   acknowledges them, then kept (as *acknowledged*) until a pull has reached their
 *   write checkpoint;
 * - the **rows the app reads** (`rows`): the server layer with every outbox entry of
 *   the row replayed on top, in op_id order, so the app never sees a server version
 *   older than one of the device's own writes;
 * - logs of **rejected** mutations and of **conflicts** the server reported.
 *
 * Every change (a local write, an acknowledgement, a page with its cursor) is one
 * storage transaction. Nothing here touches the network. This is `client/src/store.rs`
 * of the Rust reference client, over the storage interface instead of SQLite.
 */

import { LocalError } from './errors.js';
import {
  CONFLICT_LOG_LIMIT,
  overlay,
  validId,
  validTable,
  type Ack,
  type Conflict,
  type Mutation,
  type OutboxEntry,
  type Page,
  type Rejection,
  type Row,
} from './protocol.js';
import type { Storage, StorageTx } from './storage.js';

/** Counts for `status()`. */
export interface Counts {
  /** Entries not yet acknowledged by the server. */
  outbox: number;
  /** Acknowledged entries a pull has not yet caught up with. */
  awaitingCheckpoint: number;
  rejected: number;
  conflicts: number;
}

/** What applying a page did. */
export interface Applied {
  upserted: number;
  deleted: number;
  /** Acknowledged outbox entries the page's checkpoint covered (now settled). */
  settled: number;
  /** Rows dropped at the end of a rebuild because the server no longer has them. */
  dropped: number;
}

interface ServerRecord {
  table: string;
  id: string;
  data: Row;
  gen: number;
}

const rowKey = (table: string, id: string) => `${table}/${id}`;
const CHANGE_ALL = '*';

async function getMeta<T>(tx: StorageTx, key: string): Promise<T | null> {
  const v = await tx.get('meta', key);
  return v === undefined ? null : (v as T);
}

/** Ensure the table is in the list of mirrored tables. */
async function ensureTable(tx: StorageTx, table: string): Promise<void> {
  const tables = (await getMeta<string[]>(tx, 'tables')) ?? [];
  if (!tables.includes(table)) await tx.put('meta', 'tables', [...tables, table].sort());
}

/** Recompute the row the app sees: the server layer's version with the row's outbox
 * entries (pending and acknowledged-but-unsettled) replayed on top in op_id order. */
async function recompute(tx: StorageTx, outbox: readonly OutboxEntry[], table: string, id: string, user: string | null) {
  const server = (await tx.get('server', rowKey(table, id))) as ServerRecord | undefined;
  let row: Row | null = server?.data ?? null;
  for (const e of outbox) if (e.table === table && e.id === id) row = overlay(row, e.op, id, e.data, user);
  if (row === null) await tx.delete('rows', rowKey(table, id));
  else await tx.put('rows', rowKey(table, id), row);
}

export class LocalStore {
  private readonly listeners = new Set<(tables: ReadonlySet<string>) => void>();
  private readonly unlisten: (() => void) | undefined;

  constructor(
    readonly storage: Storage,
    private readonly now: () => number = Date.now,
    private readonly newId: () => string = () => crypto.randomUUID(),
  ) {
    this.unlisten = storage.onExternalChange?.((tables) => this.emit(new Set([...tables, CHANGE_ALL]), false));
  }

  /** Called after each committed change with the tables whose rows may have changed
   * (empty when only counts did). */
  onChange(listener: (tables: ReadonlySet<string>) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(tables: Set<string>, announce = true): void {
    if (announce && tables.size > 0) this.storage.announce?.([...tables]);
    for (const l of this.listeners) l(tables);
  }

  private async write<T>(fn: (tx: StorageTx) => Promise<T>): Promise<T> {
    try {
      return await this.storage.transaction('readwrite', fn);
    } catch (e) {
      throw e instanceof LocalError ? e : new LocalError('storage', e instanceof Error ? e.message : String(e), e);
    }
  }

  private async read<T>(fn: (tx: StorageTx) => Promise<T>): Promise<T> {
    try {
      return await this.storage.transaction('readonly', fn);
    } catch (e) {
      throw e instanceof LocalError ? e : new LocalError('storage', e instanceof Error ? e.message : String(e), e);
    }
  }

  meta<T = unknown>(key: string): Promise<T | null> {
    return this.read((tx) => getMeta<T>(tx, key));
  }

  setMeta(key: string, value: unknown): Promise<void> {
    return this.write((tx) => tx.put('meta', key, value));
  }

  /** This install's id (the idempotency scope of op_ids on the server), made on first use. */
  async clientId(): Promise<string> {
    const id = await this.meta<string>('client_id');
    if (id !== null) return id;
    return this.write(async (tx) => {
      const again = await getMeta<string>(tx, 'client_id');
      if (again !== null) return again;
      const fresh = this.newId();
      await tx.put('meta', 'client_id', fresh);
      return fresh;
    });
  }

  cursor(): Promise<string | null> {
    return this.meta<string>('cursor');
  }

  /** The checkpoint of the last applied page (0 before the first). */
  async checkpoint(): Promise<number> {
    return (await this.meta<number>('checkpoint')) ?? 0;
  }

  /** The user the local data belongs to (from the token's `sub`). */
  userId(): Promise<string | null> {
    return this.meta<string>('user_id');
  }

  async resyncing(): Promise<boolean> {
    return (await this.meta('resyncing')) !== null;
  }

  /** The tables the store mirrors so far. */
  async tables(): Promise<string[]> {
    return (await this.meta<string[]>('tables')) ?? [];
  }

  /** The local data belongs to one user: the first `sub` claims it, another is refused. */
  claimUser(sub: string): Promise<void> {
    return this.write(async (tx) => {
      const owner = await getMeta<string>(tx, 'user_id');
      if (owner === null) await tx.put('meta', 'user_id', sub);
      else if (owner !== sub) {
        throw new LocalError('invalid', `this local store belongs to user ${owner}, the token is user ${sub}'s: use another store`);
      }
    });
  }

  /** Write locally and append to the outbox, in one transaction. Returns the op_id. */
  async queue(m: Mutation): Promise<number> {
    if (!validTable(m.table)) throw new LocalError('invalid', `${JSON.stringify(m.table)} is not a table name`);
    if (!validId(m.id)) throw new LocalError('invalid', `${JSON.stringify(m.id)} is not a UUID`);
    if (m.op !== 'PUT' && m.op !== 'PATCH' && m.op !== 'DELETE') throw new LocalError('invalid', `unknown op ${String(m.op)}`);
    const given = m.data ?? {};
    if (typeof given !== 'object' || Array.isArray(given)) throw new LocalError('invalid', 'a row must be a JSON object');
    if ('id' in given && given.id !== m.id) throw new LocalError('invalid', `data.id ${JSON.stringify(given.id)} differs from the mutation's id`);
    let data: Record<string, unknown> | null;
    try {
      data = m.op === 'DELETE' ? null : (JSON.parse(JSON.stringify(given)) as Record<string, unknown>);
    } catch (e) {
      throw new LocalError('invalid', 'the row is not JSON', e);
    }
    const opId = await this.write(async (tx) => {
      const opId = (await getMeta<number>(tx, 'next_op_id')) ?? 1;
      const entry: OutboxEntry = {
        opId,
        table: m.table,
        op: m.op,
        id: m.id,
        data,
        baseCursor: await getMeta<string>(tx, 'cursor'),
        queuedAt: this.now(),
        attempts: 0,
        lastError: null,
        ackedCheckpoint: null,
      };
      await tx.put('outbox', opId, entry);
      await tx.put('meta', 'next_op_id', opId + 1);
      await ensureTable(tx, m.table);
      const outbox = (await tx.all('outbox')) as OutboxEntry[];
      await recompute(tx, outbox, m.table, m.id, await getMeta<string>(tx, 'user_id'));
      return opId;
    });
    this.emit(new Set([m.table]));
    return opId;
  }

  /** The oldest `limit` entries the server has not acknowledged, in op_id order. */
  async pending(limit: number): Promise<OutboxEntry[]> {
    const all = await this.read((tx) => tx.all('outbox') as Promise<OutboxEntry[]>);
    return all.filter((e) => e.ackedCheckpoint === null).slice(0, limit);
  }

  /** The whole outbox (pending and acknowledged), in op_id order. */
  outbox(): Promise<OutboxEntry[]> {
    return this.read((tx) => tx.all('outbox') as Promise<OutboxEntry[]>);
  }

  /** Note a failed attempt on entries that stay in the outbox. */
  async noteAttempt(opIds: readonly number[], error: string): Promise<void> {
    await this.write(async (tx) => {
      for (const opId of opIds) {
        const e = (await tx.get('outbox', opId)) as OutboxEntry | undefined;
        if (e) await tx.put('outbox', opId, { ...e, attempts: e.attempts + 1, lastError: error });
      }
    });
    this.emit(new Set());
  }

  /**
   * Record `/upload`'s answer, in one transaction: applied and duplicate entries become
   * acknowledged (kept until a pull reaches `writeCheckpoint`); `conflict` entries (the
   * server kept its row) leave the outbox; every conflict is logged.
   */
  async recordAcks(acks: readonly Ack[], writeCheckpoint: number): Promise<void> {
    const changed = new Set<string>();
    await this.write(async (tx) => {
      const user = await getMeta<string>(tx, 'user_id');
      const at = this.now();
      let seq = (await getMeta<number>(tx, 'conflict_seq')) ?? 0;
      const gone: OutboxEntry[] = [];
      for (const a of acks) {
        const e = (await tx.get('outbox', a.opId)) as OutboxEntry | undefined;
        if (!e) continue;
        if (a.conflict || a.status === 'conflict') {
          seq += 1;
          const c: Conflict = { seq, opId: a.opId, table: e.table, id: e.id, status: a.status, reason: a.reason, serverRow: a.serverRow, at };
          await tx.put('conflicts', seq, c);
        }
        if (a.status === 'conflict') {
          await tx.delete('outbox', a.opId);
          gone.push(e);
        } else {
          await tx.put('outbox', a.opId, { ...e, ackedCheckpoint: writeCheckpoint, lastError: null });
        }
      }
      if (gone.length > 0) {
        const outbox = (await tx.all('outbox')) as OutboxEntry[];
        for (const e of gone) {
          await recompute(tx, outbox, e.table, e.id, user);
          changed.add(e.table);
        }
      }
      await tx.put('meta', 'conflict_seq', seq);
      for (let old = seq - CONFLICT_LOG_LIMIT; old > 0; old--) {
        if ((await tx.get('conflicts', old)) === undefined) break;
        await tx.delete('conflicts', old);
      }
      await tx.put('meta', 'last_push_at', at);
    });
    this.emit(changed);
  }

  /** Move refused entries out of the outbox into the rejected log (one transaction),
   * and show their rows without them again. */
  async reject(rejections: readonly [number, string, string][]): Promise<Rejection[]> {
    const out: Rejection[] = [];
    await this.write(async (tx) => {
      const user = await getMeta<string>(tx, 'user_id');
      const at = this.now();
      for (const [opId, code, message] of rejections) {
        const e = (await tx.get('outbox', opId)) as OutboxEntry | undefined;
        if (!e) continue;
        const r: Rejection = { opId, table: e.table, op: e.op, id: e.id, data: e.data, code, message, at };
        await tx.put('rejected', opId, r);
        await tx.delete('outbox', opId);
        out.push(r);
      }
      const outbox = (await tx.all('outbox')) as OutboxEntry[];
      for (const r of out) await recompute(tx, outbox, r.table, r.id, user);
    });
    this.emit(new Set(out.map((r) => r.table)));
    return out;
  }

  /** Forget the cursor and rebuild the server layer from a full pull; rows the full
   * pull does not deliver again are dropped when it ends. The outbox is untouched. */
  async beginResync(): Promise<void> {
    await this.write(async (tx) => {
      await tx.put('meta', 'gen', ((await getMeta<number>(tx, 'gen')) ?? 0) + 1);
      await tx.put('meta', 'resyncing', true);
      await tx.delete('meta', 'cursor');
      await tx.delete('meta', 'checkpoint');
    });
    this.emit(new Set());
  }

  /**
   * Apply one `/sync` page and its cursor in one transaction: the server layer takes
   * the rows; acknowledged outbox entries whose write checkpoint the page reached are
   * settled; the rows the app sees are recomputed for every row touched.
   */
  async applyPage(page: Page): Promise<Applied> {
    for (const c of page.changes) {
      if (!validTable(c.table)) throw new LocalError('invalid', `the server sent table ${JSON.stringify(c.table)}`);
      for (const row of c.upserted) if (typeof row?.id !== 'string') throw new LocalError('invalid', `a row of ${c.table} has no id`);
    }
    const applied: Applied = { upserted: 0, deleted: 0, settled: 0, dropped: 0 };
    const changed = new Set<string>();
    await this.write(async (tx) => {
      const user = await getMeta<string>(tx, 'user_id');
      const gen = (await getMeta<number>(tx, 'gen')) ?? 0;
      const touched = new Map<string, [string, string]>();
      const touch = (table: string, id: string) => touched.set(rowKey(table, id), [table, id]);
      // The server's version of each row this page names (null: deleted). The writes
      // are issued together and awaited once: a storage pipelines them (IndexedDB
      // would otherwise pay a round trip of the event loop per row).
      const fresh = new Map<string, Row | null>();
      const writes: Promise<void>[] = [];
      for (const { table, upserted, deleted } of page.changes) {
        await ensureTable(tx, table);
        for (const row of upserted) {
          const rec: ServerRecord = { table, id: row.id, data: row, gen };
          writes.push(tx.put('server', rowKey(table, row.id), rec));
          fresh.set(rowKey(table, row.id), row);
          touch(table, row.id);
          applied.upserted += 1;
        }
        for (const id of deleted) {
          writes.push(tx.delete('server', rowKey(table, id)));
          fresh.set(rowKey(table, id), null);
          touch(table, id);
          applied.deleted += 1;
        }
      }
      writes.push(tx.put('meta', 'cursor', page.cursor), tx.put('meta', 'checkpoint', page.checkpoint));
      await Promise.all(writes);
      const outbox: OutboxEntry[] = [];
      for (const e of (await tx.all('outbox')) as OutboxEntry[]) {
        if (e.ackedCheckpoint !== null && e.ackedCheckpoint <= page.checkpoint) {
          await tx.delete('outbox', e.opId);
          touch(e.table, e.id);
          applied.settled += 1;
        } else outbox.push(e);
      }
      if (!page.hasMore && (await getMeta(tx, 'resyncing')) !== null) {
        const drops: Promise<void>[] = [];
        for (const rec of (await tx.all('server')) as ServerRecord[]) {
          if (rec.gen < gen) {
            drops.push(tx.delete('server', rowKey(rec.table, rec.id)));
            fresh.set(rowKey(rec.table, rec.id), null);
            touch(rec.table, rec.id);
            applied.dropped += 1;
          }
        }
        drops.push(tx.delete('meta', 'resyncing'));
        await Promise.all(drops);
      }
      // A row with no outbox entry is the server's version, known from the page;
      // the others are the server's version with their entries replayed on top.
      const pending = new Set(outbox.map((e) => rowKey(e.table, e.id)));
      const shown: Promise<void>[] = [];
      for (const [key, [table, id]] of touched) {
        changed.add(table);
        const row = fresh.get(key);
        if (pending.has(key) || row === undefined) shown.push(recompute(tx, outbox, table, id, user));
        else shown.push(row === null ? tx.delete('rows', key) : tx.put('rows', key, row));
      }
      await Promise.all(shown);
      await tx.put('meta', 'last_pull_at', this.now());
    });
    this.emit(changed);
    return applied;
  }

  /** The row the app sees. */
  async get(table: string, id: string): Promise<Row | null> {
    if (!validTable(table)) throw new LocalError('invalid', `${JSON.stringify(table)} is not a table name`);
    return ((await this.read((tx) => tx.get('rows', rowKey(table, id)))) as Row | undefined) ?? null;
  }

  /** Every row of `table` the app sees, by id. */
  list(table: string): Promise<Row[]> {
    if (!validTable(table)) return Promise.reject(new LocalError('invalid', `${JSON.stringify(table)} is not a table name`));
    return this.read((tx) => tx.all('rows', `${table}/`) as Promise<Row[]>);
  }

  /** The server layer's row (tests and diagnostics). */
  async serverRow(table: string, id: string): Promise<Row | null> {
    const rec = (await this.read((tx) => tx.get('server', rowKey(table, id)))) as ServerRecord | undefined;
    return rec?.data ?? null;
  }

  counts(): Promise<Counts> {
    return this.read(async (tx) => {
      let outbox = 0;
      let awaitingCheckpoint = 0;
      for (const e of (await tx.all('outbox')) as OutboxEntry[]) {
        if (e.ackedCheckpoint === null) outbox += 1;
        else awaitingCheckpoint += 1;
      }
      return { outbox, awaitingCheckpoint, rejected: await tx.count('rejected'), conflicts: await tx.count('conflicts') };
    });
  }

  /** The rejected log, oldest first. */
  rejections(): Promise<Rejection[]> {
    return this.read((tx) => tx.all('rejected') as Promise<Rejection[]>);
  }

  /** The conflict log, oldest first. */
  conflicts(): Promise<Conflict[]> {
    return this.read((tx) => tx.all('conflicts') as Promise<Conflict[]>);
  }

  /** Empty the rejected log (the app has shown it), or drop the given entries. */
  async clearRejections(opIds?: readonly number[]): Promise<void> {
    await this.write(async (tx) => {
      if (opIds === undefined) await tx.clear('rejected');
      else for (const id of opIds) await tx.delete('rejected', id);
    });
    this.emit(new Set());
  }

  /** Empty the conflict log (the app has shown it), or drop the given entries. */
  async clearConflicts(seqs?: readonly number[]): Promise<void> {
    await this.write(async (tx) => {
      if (seqs === undefined) await tx.clear('conflicts');
      else for (const s of seqs) await tx.delete('conflicts', s);
    });
    this.emit(new Set());
  }

  /** Forget everything (signing out): rows, outbox, logs, cursor, owner and client id. */
  async wipe(): Promise<void> {
    const tables = await this.tables();
    await this.write(async (tx) => {
      for (const c of ['meta', 'server', 'rows', 'outbox', 'rejected', 'conflicts'] as const) await tx.clear(c);
    });
    this.emit(new Set([...tables, CHANGE_ALL]));
  }

  /** Stop listening to other instances. */
  dispose(): void {
    this.unlisten?.();
    this.listeners.clear();
  }
}

/** In a change notification: "any table may have changed" (a wipe, another tab). */
export const ANY_TABLE = CHANGE_ALL;
