/**
 * The protocol's rules as pure functions: reading the server's answers strictly,
 * and deciding what to do with them (settle, reject, halve, rebuild, back off).
 * No I/O here; `client.ts` does the exchanges and `store.ts` the local state.
 */

import { HttpError, ProtocolError, type EdgesyncError } from './errors.js';

/** Wait `ms`, or less when `signal` aborts (the client's timer; tests pass their own). */
export type Sleep = (ms: number, signal?: AbortSignal) => Promise<void>;

export type Op = 'PUT' | 'PATCH' | 'DELETE';

/** A row as the app sees it: a JSON object with an `id`. */
export type Row = { id: string; [column: string]: unknown };

/** A change the app makes. */
export interface Mutation {
  table: string;
  op: Op;
  id: string;
  /** PUT: the whole row; PATCH: the changed columns; DELETE: none. */
  data?: Record<string, unknown> | null;
}

/** An outbox entry. */
export interface OutboxEntry {
  opId: number;
  table: string;
  op: Op;
  id: string;
  data: Record<string, unknown> | null;
  /** The cursor the local view was at when the change was made (conflict detection). */
  baseCursor: string | null;
  queuedAt: number;
  attempts: number;
  lastError: string | null;
  /** null while pending; the upload's write checkpoint once acknowledged. */
  ackedCheckpoint: number | null;
}

/** How `/upload` answered for one mutation. */
export interface Ack {
  opId: number;
  status: 'applied' | 'duplicate' | 'conflict';
  /** An applied write that overwrote someone else's change (last write wins). */
  conflict: boolean;
  reason: string | null;
  serverRow: Record<string, unknown> | null;
}

/** A mutation the server refused: out of the outbox, in the rejected log. */
export interface Rejection {
  opId: number;
  table: string;
  op: Op;
  id: string;
  data: Record<string, unknown> | null;
  code: string;
  message: string;
  at: number;
}

/** A conflict the server reported (the conflict log). */
export interface Conflict {
  seq: number;
  opId: number;
  table: string;
  id: string;
  status: Ack['status'];
  reason: string | null;
  serverRow: Record<string, unknown> | null;
  at: number;
}

/** One `/sync` page, read. */
export interface Page {
  changes: { table: string; upserted: Row[]; deleted: string[] }[];
  cursor: string;
  hasMore: boolean;
  checkpoint: number;
}

/** Codes of error answers about the request as a whole, not about the mutations in
 * it: the batch stays queued and the engine backs off. */
export const NOT_ABOUT_MUTATIONS: readonly string[] = [
  'client_id_taken',
  'user_required',
  'missing_token',
  'invalid_token',
  'forbidden',
  'forbidden_role',
  'unsupported_media_type',
  'rate_limited',
  'misconfigured',
  'not_found',
  'method_not_allowed',
];

/** The most mutations one `/upload` takes. */
export const MAX_MUTATIONS = 1000;
/** The most rows one `/sync` page may ask for. */
export const MAX_PAGE_LIMIT = 5000;
/** The longest `wait` of a long-poll, in seconds. */
export const MAX_WAIT_SECS = 55;
/** How many conflict reports are kept (oldest dropped first). */
export const CONFLICT_LOG_LIMIT = 1000;
/** How many rebuilds one pull may start before giving up. */
export const MAX_RESYNCS_PER_PULL = 2;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A decimal counter (`checkpoint`, `write_checkpoint`), or undefined. */
export function parseCounter(v: unknown): number | undefined {
  if (typeof v !== 'string' || !/^\d{1,16}$/.test(v)) return undefined;
  const n = Number(v);
  return Number.isSafeInteger(n) ? n : undefined;
}

/** Is `id` a UUID in its canonical text form (what the server's `uuid` columns take)? */
export function validId(id: unknown): id is string {
  return typeof id === 'string' && /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/.test(id);
}

/** A synced table's name the store can mirror (not one of the store's own `_es_…`). */
export function validTable(name: unknown): name is string {
  return typeof name === 'string' && /^[a-z_][a-z0-9_]{0,62}$/.test(name) && !name.startsWith('_es_') && !name.startsWith('sqlite_');
}

/**
 * Replay one outbox entry on top of a row (`null`: no live row). This is the whole
 * local conflict model: PUT replaces, PATCH merges into a live row (and does nothing
 * to a missing one, as the server would), DELETE removes.
 */
export function overlay(
  base: Row | null,
  op: Op,
  id: string,
  data: Record<string, unknown> | null,
  userId: string | null,
): Row | null {
  if (op === 'DELETE') return null;
  if (op === 'PUT') {
    const row: Row = { ...(data ?? {}), id };
    if (userId !== null && !('user_id' in row)) row.user_id = userId;
    return row;
  }
  if (base === null) return null;
  const row: Row = { ...base };
  for (const [k, v] of Object.entries(data ?? {})) if (k !== 'id') row[k] = v;
  return row;
}

/** The entry as `/upload` takes it: PowerSync's `CrudEntry.toJSON()` plus `base_cursor`. */
export function crudEntry(e: OutboxEntry): Record<string, unknown> {
  const m: Record<string, unknown> = { op_id: e.opId, op: e.op, type: e.table, id: e.id };
  if (e.data !== null) m.data = e.data;
  if (e.baseCursor !== null) m.base_cursor = e.baseCursor;
  return m;
}

/** `/upload`'s answer: the acknowledgements and the write checkpoint. */
export function parseUpload(answer: unknown): { acks: Ack[]; writeCheckpoint: number } {
  const bad = (what: string) => new ProtocolError(`/upload answer without a valid ${what}`);
  if (!isObject(answer)) throw bad('body');
  const writeCheckpoint = parseCounter(answer.write_checkpoint);
  if (writeCheckpoint === undefined) throw bad('write_checkpoint');
  if (!Array.isArray(answer.results)) throw bad('results');
  const acks = answer.results.map((r): Ack => {
    if (!isObject(r) || !Number.isSafeInteger(r.op_id)) throw bad('op_id');
    if (r.status !== 'applied' && r.status !== 'duplicate' && r.status !== 'conflict') throw bad('status');
    return {
      opId: r.op_id as number,
      status: r.status,
      conflict: r.conflict === true,
      reason: typeof r.reason === 'string' ? r.reason : null,
      serverRow: isObject(r.server_row) ? r.server_row : null,
    };
  });
  return { acks, writeCheckpoint };
}

/** A `/sync` page. Every upserted row must be an object with a string `id`, and every
 * table name one the store can mirror. */
export function parsePage(answer: unknown): Page {
  const bad = (what: string) => new ProtocolError(`/sync answer without a valid ${what}`);
  if (!isObject(answer) || !isObject(answer.changes)) throw bad('changes');
  const changes = Object.entries(answer.changes).map(([table, c]) => {
    if (!validTable(table)) throw bad(`table name (${JSON.stringify(table).slice(0, 70)})`);
    if (!isObject(c) || !Array.isArray(c.upserted)) throw bad('upserted');
    if (!Array.isArray(c.deleted)) throw bad('deleted');
    for (const row of c.upserted) if (!isObject(row) || typeof row.id !== 'string') throw bad(`row of ${table}`);
    for (const id of c.deleted) if (typeof id !== 'string') throw bad('deleted id');
    return { table, upserted: c.upserted as Row[], deleted: c.deleted as string[] };
  });
  if (typeof answer.cursor !== 'string') throw bad('cursor');
  if (typeof answer.has_more !== 'boolean') throw bad('has_more');
  const checkpoint = parseCounter(answer.checkpoint);
  if (checkpoint === undefined) throw bad('checkpoint');
  return { changes, cursor: answer.cursor, hasMore: answer.has_more, checkpoint };
}

/** The first row of a page that is not `userId`'s (a `user_id` naming someone else). */
export function foreignRow(page: Page, userId: string | null): { table: string; id: string } | null {
  if (userId === null) return null;
  for (const { table, upserted } of page.changes) {
    for (const row of upserted) {
      if (typeof row.user_id === 'string' && row.user_id !== userId) return { table, id: row.id };
    }
  }
  return null;
}

/** `Retry-After` in milliseconds (seconds form only, as the server sends it). */
export function parseRetryAfter(header: string | null): number | undefined {
  const v = header?.trim();
  return v && /^\d{1,9}$/.test(v) ? Number(v) * 1000 : undefined;
}

/** An error answer as an `HttpError`: `{"error": {code, message, details, request_id}}`,
 * or whatever came (code `http_error`, the text's start as message). */
export function httpErrorFrom(status: number, text: string, header: (name: string) => string | null): HttpError {
  let err: Record<string, unknown> = {};
  try {
    const body: unknown = JSON.parse(text);
    if (isObject(body) && isObject(body.error)) err = body.error;
  } catch {
    // not JSON: the text is the message
  }
  const str = (v: unknown) => (typeof v === 'string' ? v : undefined);
  return new HttpError(
    status,
    str(err.code) ?? 'http_error',
    str(err.message) ?? text.slice(0, 200),
    err.details ?? null,
    header('x-request-id') ?? str(err.request_id),
    parseRetryAfter(header('retry-after')),
  );
}

/** The op_ids an error answer names (`details.errors[].op_id`) that are in `batch`,
 * once each, with their code and message. */
export function namedOpIds(err: HttpError, batch: readonly OutboxEntry[]): [number, string, string][] {
  const out: [number, string, string][] = [];
  const errors = isObject(err.details) && Array.isArray(err.details.errors) ? err.details.errors : [];
  for (const e of errors) {
    if (!isObject(e) || !Number.isSafeInteger(e.op_id)) continue;
    const opId = e.op_id as number;
    if (!batch.some((b) => b.opId === opId) || out.some((o) => o[0] === opId)) continue;
    let message = typeof e.message === 'string' ? e.message : err.serverMessage;
    if (typeof e.column === 'string') message = `${message} (column ${e.column})`;
    out.push([opId, typeof e.code === 'string' ? e.code : err.code, message]);
  }
  return out;
}

/** What to do with an error answer to an `/upload` batch. */
export type UploadDecision =
  /** These entries are at fault: move them to the rejected log, send the rest again. */
  | { action: 'reject'; rejections: [number, string, string][] }
  /** Something in the batch is refused but unnamed: send smaller batches. */
  | { action: 'halve'; batchSize: number }
  /** Not about the mutations: keep everything queued and back off. */
  | { action: 'keep' };

export function decideUpload(err: EdgesyncError, batch: readonly OutboxEntry[]): UploadDecision {
  if (!(err instanceof HttpError) || err.status < 400 || err.status > 499 || NOT_ABOUT_MUTATIONS.includes(err.code)) {
    return { action: 'keep' };
  }
  const named = namedOpIds(err, batch);
  if (named.length > 0) return { action: 'reject', rejections: named };
  if (err.status === 400 || err.status === 413 || err.status === 422) {
    if (batch.length > 1) return { action: 'halve', batchSize: Math.max(1, Math.floor(batch.length / 2)) };
    // This one entry is what the server refuses (or too big to send).
    if (batch.length === 1) return { action: 'reject', rejections: [[batch[0]!.opId, err.code, err.serverMessage]] };
  }
  return { action: 'keep' };
}

/** Does this answer to `/sync` call for a rebuild (drop the cursor, keep the outbox)? */
export function needsResync(err: EdgesyncError, resyncsSoFar: number): boolean {
  return (
    err instanceof HttpError &&
    resyncsSoFar < MAX_RESYNCS_PER_PULL &&
    ((err.status === 410 && err.code === 'resync_required') ||
      (err.status === 400 && (err.code === 'cursor_mismatch' || err.code === 'invalid_cursor')))
  );
}

/** Does this failure grow the backoff? (Local mistakes, a missing token and a refusal
 * while backing off do not.) */
export function countsAsFailure(err: EdgesyncError): boolean {
  return err.kind !== 'local' && err.kind !== 'no_token' && err.kind !== 'backing_off';
}

/**
 * The wait after the `failures`-th failure in a row: exponential from `baseMs` up to
 * `maxMs`, with jitter (between half and all of it, so devices spread out), and at
 * least a server's `Retry-After` (itself capped at `max(maxMs, 1 s)`).
 */
export function backoffDelay(failures: number, baseMs: number, maxMs: number, random01: number, retryAfterMs?: number): number {
  const exp = baseMs * 2 ** (Math.min(Math.max(failures, 1), 16) - 1);
  let wait = Math.min(exp, maxMs);
  wait = wait / 2 + (wait * Math.min(Math.max(random01, 0), 1)) / 2;
  if (retryAfterMs !== undefined) wait = Math.max(wait, Math.min(retryAfterMs, Math.max(maxMs, 1000)));
  return Math.floor(wait);
}

/** The query of a `/sync` request. Only the first page of an up-to-date device (one
 * with a cursor) waits. */
export function syncQuery(limit: number, tables: readonly string[] | null, cursor: string | null, waitSecs: number | null): string {
  const q = new URLSearchParams({ limit: String(limit) });
  if (tables !== null) q.set('tables', tables.join(','));
  if (cursor !== null) {
    q.set('since', cursor);
    if (waitSecs !== null) q.set('wait', String(waitSecs));
  }
  return q.toString().replace(/%2C/g, ',');
}

/** The `sub` claim of a JWT, read without verifying it (the server verifies; the
 * client only needs to know whose data it holds). */
export function tokenSubject(token: string): string | null {
  try {
    const part = token.split('.')[1];
    if (part === undefined) return null;
    const bin = atob(part.replace(/-/g, '+').replace(/_/g, '/').replace(/=+$/, ''));
    const claims: unknown = JSON.parse(new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0))));
    return isObject(claims) && typeof claims.sub === 'string' && claims.sub !== '' ? claims.sub : null;
  } catch {
    return null;
  }
}

/** A `/live` message: the poke's checkpoint, or null for anything else (`pong`, a
 * message of a newer server). */
export function parsePoke(data: unknown): number | null {
  if (typeof data !== 'string' || data === 'pong') return null;
  try {
    const m: unknown = JSON.parse(data);
    return isObject(m) && m.type === 'poke' ? (parseCounter(m.checkpoint) ?? null) : null;
  } catch {
    return null;
  }
}
