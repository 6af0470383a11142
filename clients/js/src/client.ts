/**
 * The sync engine: the exchanges with `/upload` and `/sync`, with the decisions of
 * `protocol.ts` applied to the local state of `store.ts`. Port of the Rust reference
 * client's `Client` (`client/src/lib.rs`); the transport, the clock, the randomness and
 * the timers are injectable, so every rule runs in tests without a network.
 */

import {
  BackingOffError,
  EdgesyncError,
  ForeignRowError,
  LocalError,
  NoTokenError,
  OfflineError,
  ProtocolError,
  RefreshError,
  asEdgesyncError,
} from './errors.js';
import {
  MAX_MUTATIONS,
  MAX_PAGE_LIMIT,
  MAX_WAIT_SECS,
  backoffDelay,
  countsAsFailure,
  crudEntry,
  decideUpload,
  foreignRow,
  httpErrorFrom,
  needsResync,
  parsePage,
  parseUpload,
  syncQuery,
  tokenSubject,
  type Ack,
  type Conflict,
  type Rejection,
  type Row,
  type Sleep,
} from './protocol.js';
import { LiveQuery, type QueryOptions } from './query.js';
import { MemoryStorage, Mutex, type Storage } from './storage.js';
import { LocalStore } from './store.js';
import { LiveSync, type LiveClient, type LiveMode, type WebSocketClass } from './live.js';

/** The part of the Fetch API the client uses. */
export type FetchLike = (
  url: string,
  init: { method: string; headers: Record<string, string>; body?: string; signal?: AbortSignal },
) => Promise<{ status: number; headers: { get(name: string): string | null }; text(): Promise<string> }>;

export type { Sleep } from './protocol.js';

export interface ClientOptions {
  /** The functions' base URL (`cargo xtask dev`: `http://127.0.0.1:8787`). */
  url: string;
  /** Where the local state lives (default: in memory). */
  storage?: Storage;
  /** The user's access token (a Supabase session's `access_token`). */
  token?: string | null;
  /** Called on a `401` (and on a `/live` close 4001) for a fresh token; the request is
   * retried once with it. A supabase-js session fits:
   * `async () => (await supabase.auth.refreshSession()).data.session!.access_token`. */
  refreshToken?: () => string | Promise<string>;
  /** Mutations per `/upload` (at most 1000; default 200). */
  batchSize?: number;
  /** Rows per `/sync` page (at most 5000; default 1000). */
  pageLimit?: number;
  /** Tables to pull (default: every synced table). */
  tables?: readonly string[] | null;
  /** Per-request timeout (default 30 s). */
  timeoutMs?: number;
  /** First and longest wait after a failed exchange (default 500 ms and 60 s). */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** Extra request headers (an `apikey`). */
  headers?: Record<string, string>;
  /** Where the `/live` WebSocket is, when not at `url`. */
  liveUrl?: string;
  /** How long a long-poll waits when no socket can be had (default 25 s). */
  longPollSecs?: number;
  /** How often a live socket is pinged (default 25 s). */
  heartbeatMs?: number;
  /** How long a live client goes without pulling, pokes or not (default 60 s). */
  safetyPullMs?: number;
  fetch?: FetchLike;
  /** The WebSocket class (default: the global one); `null`: never open a socket, long-poll. */
  WebSocket?: WebSocketClass | null;
  now?: () => number;
  /** Uniform in [0, 1) (the backoff's jitter). */
  random?: () => number;
  /** Resolves after `ms`, or early (without error) once `signal` aborts. */
  sleep?: Sleep;
}

/** The options with their defaults applied. */
interface Settings {
  url: string;
  batchSize: number;
  pageLimit: number;
  tables: readonly string[] | null;
  timeoutMs: number;
  backoffBaseMs: number;
  backoffMaxMs: number;
  headers: Record<string, string>;
  liveUrl: string | undefined;
  longPollSecs: number;
  heartbeatMs: number;
  safetyPullMs: number;
  fetch: FetchLike;
  WebSocket: WebSocketClass | undefined;
  now: () => number;
  random: () => number;
  sleep: Sleep;
  refreshToken: (() => string | Promise<string>) | undefined;
}

export type State = 'idle' | 'pushing' | 'pulling' | 'error' | 'offline';

export interface Status {
  state: State;
  /** The platform says it is online and the last exchange reached the server. */
  online: boolean;
  /** What `start()` is using for live updates. */
  live: LiveMode;
  /** When the last page was applied (the last sync), ms since the epoch. */
  lastPullAt: number | null;
  lastPushAt: number | null;
  /** Mutations not yet acknowledged by the server. */
  outboxLength: number;
  /** Acknowledged mutations a pull has not caught up with yet. */
  awaitingCheckpoint: number;
  rejected: number;
  conflicts: number;
  checkpoint: number;
  resyncing: boolean;
  lastError: EdgesyncError | null;
  /** When the engine will use the network again after a failure (ms since the epoch). */
  retryAt: number | null;
  /** `retryAt - now` when the snapshot was taken. */
  retryInMs: number | null;
  clientId: string;
  userId: string | null;
}

/** What one `push()` did. */
export interface PushReport {
  requests: number;
  /** Every acknowledgement, in order (applied, duplicate, conflict). */
  acks: Ack[];
  rejected: Rejection[];
  tokenRefreshes: number;
}

/** Progress of a pull, after each page. */
export interface PullProgress {
  pages: number;
  upserted: number;
  deleted: number;
  settled: number;
  checkpoint: number;
  hasMore: boolean;
  resynced: boolean;
}

export interface SyncReport {
  push: PushReport;
  pull: PullProgress;
}

/** A waiting pull cut short (a newer pull, `stop()`): not a failure. */
class Cancelled extends Error {}

const defaultSleep: Sleep = (ms, signal) =>
  new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, Math.max(0, ms));
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });

const clamp = (n: number, lo: number, hi: number) => Math.min(Math.max(n, lo), hi);

export class Client implements LiveClient {
  readonly store: LocalStore;
  private readonly o: Settings;
  private token: string | null = null;
  private readonly pushLock = new Mutex();
  private readonly pullLock = new Mutex();
  private failures = 0;
  private retryAt: number | null = null;
  private pushing = 0;
  private pulling = 0;
  private outcome: State = 'idle';
  private lastError: EdgesyncError | null = null;
  /** Waiting pulls in flight or queued: a plain pull cuts them short. */
  private readonly waiting = new Set<AbortController>();
  private snapshot: Status;
  private readonly statusListeners = new Set<(s: Status) => void>();
  private statusRun: Promise<void> | null = null;
  private statusDirty = false;
  private live: LiveSync | null = null;
  private pushQueued = false;
  private pushRetry = false;
  /** What the last `push()` did, including the batches acknowledged before it failed. */
  lastPush: PushReport = { requests: 0, acks: [], rejected: [], tokenRefreshes: 0 };

  /** Open the local store (and claim it for the token's user). No network. */
  static async open(options: ClientOptions): Promise<Client> {
    const c = new Client(options);
    await c.store.clientId();
    if (options.token) await c.setToken(options.token);
    c.snapshot = await c.computeStatus();
    return c;
  }

  private constructor(options: ClientOptions) {
    const g = globalThis as { fetch?: FetchLike; WebSocket?: WebSocketClass };
    this.o = {
      url: options.url.replace(/\/+$/, ''),
      batchSize: clamp(options.batchSize ?? 200, 1, MAX_MUTATIONS),
      pageLimit: clamp(options.pageLimit ?? 1000, 1, MAX_PAGE_LIMIT),
      tables: options.tables ?? null,
      timeoutMs: options.timeoutMs ?? 30_000,
      backoffBaseMs: options.backoffBaseMs ?? 500,
      backoffMaxMs: options.backoffMaxMs ?? 60_000,
      headers: options.headers ?? {},
      liveUrl: options.liveUrl,
      longPollSecs: options.longPollSecs ?? 25,
      heartbeatMs: options.heartbeatMs ?? 25_000,
      safetyPullMs: options.safetyPullMs ?? 60_000,
      fetch: options.fetch ?? ((url, init) => g.fetch!(url, init)),
      WebSocket: options.WebSocket === undefined ? g.WebSocket : (options.WebSocket ?? undefined),
      now: options.now ?? Date.now,
      random: options.random ?? Math.random,
      sleep: options.sleep ?? defaultSleep,
      refreshToken: options.refreshToken,
    };
    this.store = new LocalStore(options.storage ?? new MemoryStorage(), this.o.now);
    this.store.onChange(() => this.statusChanged());
    this.snapshot = {
      state: 'idle', online: true, live: 'off', lastPullAt: null, lastPushAt: null, outboxLength: 0, awaitingCheckpoint: 0,
      rejected: 0, conflicts: 0, checkpoint: 0, resyncing: false, lastError: null, retryAt: null, retryInMs: null, clientId: '', userId: null,
    };
  }

  // ---- the token ----

  /** Use `token` from now on. The local data belongs to one user: a token of another
   * user is refused (`LocalError`). */
  async setToken(token: string): Promise<void> {
    const sub = tokenSubject(token);
    if (sub === null) throw new LocalError('invalid', 'the token is not a JWT with a `sub` claim');
    await this.store.claimUser(sub);
    this.token = token;
    this.live?.wake();
    this.statusChanged();
  }

  /** Called on a `401` for a fresh token (replaces the `refreshToken` option). */
  onTokenRefresh(refresh: (() => string | Promise<string>) | undefined): void {
    this.o.refreshToken = refresh;
  }

  /** Get a fresh token through the refresh hook (the live loop does on close 4001). */
  async refreshToken(): Promise<boolean> {
    if (!this.o.refreshToken) return false;
    let fresh: string;
    try {
      fresh = await this.o.refreshToken();
    } catch (e) {
      throw new RefreshError(e instanceof Error ? e.message : String(e), e);
    }
    await this.setToken(fresh);
    return true;
  }

  /** The current token (for the `/live` socket). */
  currentToken(): string | null {
    return this.token;
  }

  // ---- local, never touching the network ----

  /** Insert or replace a row locally and queue it, in one local transaction. Returns its op_id. */
  put(table: string, id: string, data: Record<string, unknown>): Promise<number> {
    return this.queue({ table, op: 'PUT', id, data });
  }

  /** Change some columns of a row locally and queue it. */
  patch(table: string, id: string, data: Record<string, unknown>): Promise<number> {
    return this.queue({ table, op: 'PATCH', id, data });
  }

  /** Delete a row locally and queue it. */
  delete(table: string, id: string): Promise<number> {
    return this.queue({ table, op: 'DELETE', id, data: null });
  }

  private async queue(m: { table: string; op: 'PUT' | 'PATCH' | 'DELETE'; id: string; data: Record<string, unknown> | null }) {
    const opId = await this.store.queue(m);
    if (this.live) this.pushSoon();
    return opId;
  }

  get(table: string, id: string): Promise<Row | null> {
    return this.store.get(table, id);
  }

  list(table: string): Promise<Row[]> {
    return this.store.list(table);
  }

  rejections(): Promise<Rejection[]> {
    return this.store.rejections();
  }

  conflicts(): Promise<Conflict[]> {
    return this.store.conflicts();
  }

  clearRejections(opIds?: readonly number[]): Promise<void> {
    return this.store.clearRejections(opIds);
  }

  clearConflicts(seqs?: readonly number[]): Promise<void> {
    return this.store.clearConflicts(seqs);
  }

  /** Forget all local data and the token (signing out). Stops live updates. */
  async clearLocalData(): Promise<void> {
    await this.stop();
    await this.store.wipe();
    this.token = null;
    this.resetBackoff();
  }

  // ---- the reactive API ----

  /** A live view of a table (optionally filtered and sorted): `subscribe` and
   * `getSnapshot`, the shape React's `useSyncExternalStore` and most UI libraries take. */
  query<T extends Row = Row>(table: string, options: QueryOptions<T> = {}): LiveQuery<T> {
    return new LiveQuery<T>(this.store, table, options);
  }

  /** Call `listener` with the table's rows now and after every change. Returns the unsubscribe. */
  watch<T extends Row = Row>(table: string, listener: (rows: readonly T[]) => void, options: QueryOptions<T> = {}): () => void {
    const q = this.query<T>(table, options);
    return q.subscribe((s) => {
      if (!s.loading) listener(s.rows);
    });
  }

  /** The status as of the last change (synchronous; `status()` reads it fresh). */
  getStatus(): Status {
    return this.snapshot;
  }

  /** Call `listener` on every status change. Returns the unsubscribe. */
  subscribeStatus(listener: (s: Status) => void): () => void {
    this.statusListeners.add(listener);
    return () => this.statusListeners.delete(listener);
  }

  async status(): Promise<Status> {
    return (this.snapshot = await this.computeStatus());
  }

  private async computeStatus(): Promise<Status> {
    const s = this.store;
    const [counts, lastPullAt, lastPushAt, checkpoint, resyncing, clientId, userId] = await Promise.all([
      s.counts(), s.meta<number>('last_pull_at'), s.meta<number>('last_push_at'), s.checkpoint(), s.resyncing(), s.clientId(), s.userId(),
    ]);
    const state: State = this.pushing > 0 ? 'pushing' : this.pulling > 0 ? 'pulling' : this.outcome;
    const nav = (globalThis as { navigator?: { onLine?: boolean } }).navigator;
    const now = this.o.now();
    return {
      state,
      online: nav?.onLine !== false && this.outcome !== 'offline',
      live: this.live?.mode ?? 'off',
      lastPullAt, lastPushAt,
      outboxLength: counts.outbox,
      awaitingCheckpoint: counts.awaitingCheckpoint,
      rejected: counts.rejected,
      conflicts: counts.conflicts,
      checkpoint, resyncing,
      lastError: this.lastError,
      retryAt: this.retryAt,
      retryInMs: this.retryAt === null ? null : Math.max(0, this.retryAt - now),
      clientId, userId,
    };
  }

  /** Recompute the snapshot (coalesced) and tell the listeners. */
  statusChanged(): void {
    if (this.statusRun) {
      this.statusDirty = true;
      return;
    }
    this.statusRun = (async () => {
      do {
        this.statusDirty = false;
        try {
          this.snapshot = await this.computeStatus();
        } catch {
          continue; // the store failed; the next change tries again
        }
        for (const l of this.statusListeners) l(this.snapshot);
      } while (this.statusDirty);
      this.statusRun = null;
    })();
  }

  /** Resolves once pending status updates were delivered (tests, shutdown). */
  async settled(): Promise<void> {
    while (this.statusRun) await this.statusRun;
  }

  // ---- backoff ----

  /** How long until the engine will use the network again (0: now). */
  retryIn(): number {
    return this.retryAt === null ? 0 : Math.max(0, this.retryAt - this.o.now());
  }

  /** Forget the backoff (the app learned that the network is back). */
  resetBackoff(): void {
    this.failures = 0;
    this.retryAt = null;
    this.statusChanged();
  }

  private ready(): void {
    const wait = this.retryIn();
    if (wait > 0) throw new BackingOffError(wait);
  }

  /** After an exchange: the state, and the backoff (reset on success, grown on
   * failure; a server's `Retry-After` is honoured). */
  private finish(err: EdgesyncError | null): void {
    if (err === null) {
      this.failures = 0;
      this.retryAt = null;
      this.outcome = 'idle';
      this.lastError = null;
    } else {
      this.outcome = err.kind === 'offline' ? 'offline' : 'error';
      this.lastError = err;
      if (countsAsFailure(err)) {
        this.failures += 1;
        const retryAfter = (err as { retryAfterMs?: number }).retryAfterMs;
        const wait = backoffDelay(this.failures, this.o.backoffBaseMs, this.o.backoffMaxMs, this.o.random(), retryAfter);
        this.retryAt = this.o.now() + wait;
      }
    }
    this.statusChanged();
  }

  // ---- network ----

  /** Push, then pull until caught up. */
  async sync(onProgress?: (p: PullProgress) => void): Promise<SyncReport> {
    const push = await this.push();
    const pull = await this.pull(onProgress);
    return { push, pull };
  }

  /**
   * Send the outbox to `/upload` in batches until it is empty.
   *
   * - acknowledged entries stay (as *acknowledged*) until a pull reaches the answer's
   *   `write_checkpoint`; `conflict` entries (the server kept its row) leave the outbox
   *   and are logged;
   * - `401`: the token is refreshed through the hook and the batch retried once;
   * - a `4xx` naming op_ids: those entries move to the rejected log, the rest is sent
   *   again; a `413` (or `400`/`422`) naming nothing halves the batch until the one
   *   entry at fault is rejected;
   * - `5xx`, `429`, network errors and account-level `4xx`: everything stays queued and
   *   the engine backs off.
   */
  push(): Promise<PushReport> {
    return this.pushLock.run(async () => {
      this.pushQueued = false;
      this.ready();
      const report: PushReport = { requests: 0, acks: [], rejected: [], tokenRefreshes: 0 };
      this.lastPush = report;
      this.pushing += 1;
      this.statusChanged();
      try {
        await this.pushInner(report);
        this.finish(null);
        return report;
      } catch (e) {
        const err = asEdgesyncError(e);
        this.finish(err);
        throw err;
      } finally {
        this.pushing -= 1;
        this.statusChanged();
      }
    });
  }

  private async pushInner(report: PushReport): Promise<void> {
    const clientId = await this.store.clientId();
    let batchSize = this.o.batchSize;
    for (;;) {
      const batch = await this.store.pending(batchSize);
      if (batch.length === 0) return;
      report.requests += 1;
      let answer: unknown;
      try {
        answer = await this.request('POST', '/upload', { client_id: clientId, mutations: batch.map(crudEntry) }, report);
      } catch (e) {
        const err = asEdgesyncError(e);
        const d = decideUpload(err, batch);
        if (d.action === 'reject') {
          report.rejected.push(...(await this.store.reject(d.rejections)));
        } else if (d.action === 'halve') {
          batchSize = d.batchSize;
        } else {
          await this.store.noteAttempt(batch.map((b) => b.opId), err.message);
          throw err;
        }
        continue;
      }
      const { acks, writeCheckpoint } = parseUpload(answer);
      await this.store.recordAcks(acks, writeCheckpoint);
      report.acks.push(...acks);
      batchSize = this.o.batchSize;
    }
  }

  /** Pull `/sync` pages until `has_more` is false. A pull cuts short a waiting one. */
  pull(onProgress?: (p: PullProgress) => void): Promise<PullProgress> {
    this.cancelWaiting();
    return this.pullWith(null, onProgress);
  }

  private cancelWaiting(): void {
    for (const w of this.waiting) w.abort();
  }

  /** Pull as `pull()` does, but let the first page wait up to `waitSecs` (1-55 s, and
   * 5 s below the request timeout) for a change. Resolves with no pages when a newer
   * pull or `stop()` cut it short. */
  pullWaiting(waitSecs: number, onProgress?: (p: PullProgress) => void): Promise<PullProgress> {
    const most = Math.min(Math.floor((this.o.timeoutMs - 5000) / 1000), MAX_WAIT_SECS);
    return this.pullWith(clamp(Math.floor(waitSecs), 1, Math.max(most, 1)), onProgress);
  }

  private pullWith(wait: number | null, onProgress?: (p: PullProgress) => void): Promise<PullProgress> {
    const abort = wait === null ? null : new AbortController();
    if (abort) this.waiting.add(abort);
    return this.pullLock.run(async () => {
      const p: PullProgress = { pages: 0, upserted: 0, deleted: 0, settled: 0, checkpoint: 0, hasMore: false, resynced: false };
      if (abort?.signal.aborted) {
        this.waiting.delete(abort);
        return p;
      }
      try {
        this.ready();
      } catch (e) {
        if (abort) this.waiting.delete(abort);
        throw e;
      }
      let counted = false;
      const count = () => {
        if (!counted) {
          counted = true;
          this.pulling += 1;
          this.statusChanged();
        }
      };
      // A waiting pull is "pulling" only once its first answer came.
      if (!abort) count();
      try {
        await this.pullInner(p, wait, abort?.signal, count, onProgress);
        this.finish(null);
        return p;
      } catch (e) {
        if (e instanceof Cancelled) return p;
        const err = asEdgesyncError(e);
        this.finish(err);
        throw err;
      } finally {
        if (abort) this.waiting.delete(abort);
        if (counted) this.pulling -= 1;
        this.statusChanged();
      }
    });
  }

  private async pullInner(
    p: PullProgress,
    wait: number | null,
    signal: AbortSignal | undefined,
    answered: () => void,
    onProgress?: (p: PullProgress) => void,
  ): Promise<void> {
    const refreshes = { tokenRefreshes: 0 };
    let resyncs = 0;
    const user = await this.store.userId();
    for (;;) {
      const cursor = await this.store.cursor();
      // Only the first request of an up-to-date device (one with a cursor) waits.
      const query = syncQuery(this.o.pageLimit, this.o.tables, cursor, wait);
      wait = null;
      let answer: unknown;
      try {
        answer = await this.request('GET', `/sync?${query}`, undefined, refreshes, signal);
      } catch (e) {
        const err = asEdgesyncError(e);
        // Our cursor predates the tombstone window, or no longer fits the tables
        // asked for: rebuild from scratch (the outbox stays).
        if (needsResync(err, resyncs)) {
          resyncs += 1;
          await this.store.beginResync();
          p.resynced = true;
          continue;
        }
        throw e;
      } finally {
        answered();
      }
      const page = parsePage(answer);
      const foreign = foreignRow(page, user);
      if (foreign) throw new ForeignRowError(foreign.table, foreign.id);
      const applied = await this.store.applyPage(page);
      p.pages += 1;
      p.upserted += applied.upserted;
      p.deleted += applied.deleted;
      p.settled += applied.settled;
      p.checkpoint = page.checkpoint;
      p.hasMore = page.hasMore;
      onProgress?.({ ...p });
      if (!page.hasMore) return;
    }
  }

  /** What the live loop does on a poke: nothing when the local checkpoint already
   * reaches it; otherwise sync, and when the page still falls short (the poke came
   * before the server's watermark passed the change), a waiting pull. Returns whether
   * it synced. */
  async handlePoke(checkpoint: number): Promise<boolean> {
    if ((await this.store.checkpoint()) >= checkpoint) return false;
    await this.sync();
    if ((await this.store.checkpoint()) < checkpoint) await this.pullWaiting(this.o.longPollSecs);
    return true;
  }

  /** Semantic search over the user's entries (online only). */
  async search(query: string, options: { matchThreshold?: number; matchCount?: number } = {}): Promise<{ id: string; title: string | null; similarity: number }[]> {
    const body: Record<string, unknown> = { query };
    if (options.matchThreshold !== undefined) body.match_threshold = options.matchThreshold;
    if (options.matchCount !== undefined) body.match_count = options.matchCount;
    const answer = (await this.request('POST', '/search', body, { tokenRefreshes: 0 })) as { results?: unknown };
    if (!Array.isArray(answer?.results)) throw new ProtocolError('/search answer without results');
    return answer.results as { id: string; title: string | null; similarity: number }[];
  }

  /** One HTTP exchange; a `401` refreshes the token (through the hook) and retries once. */
  private async request(method: string, path: string, body: unknown, counter: { tokenRefreshes: number }, signal?: AbortSignal): Promise<unknown> {
    let refreshed = false;
    for (;;) {
      if (this.token === null) throw new NoTokenError();
      const headers: Record<string, string> = { ...this.o.headers, authorization: `Bearer ${this.token}` };
      if (body !== undefined) headers['content-type'] = 'application/json';
      const { status, header, text } = await this.exchange(method, path, headers, body === undefined ? undefined : JSON.stringify(body), signal);
      if (status >= 200 && status < 300) {
        try {
          return JSON.parse(text);
        } catch {
          throw new ProtocolError(`${method} ${path.split('?')[0]}: the answer is not JSON`);
        }
      }
      if (status === 401 && !refreshed && this.o.refreshToken) {
        await this.refreshToken();
        refreshed = true;
        counter.tokenRefreshes += 1;
        continue;
      }
      throw httpErrorFrom(status, text, header);
    }
  }

  /** The request and its whole answer under the timeout; network failures are `OfflineError`. */
  private async exchange(method: string, path: string, headers: Record<string, string>, body: string | undefined, signal?: AbortSignal) {
    const abort = new AbortController();
    const timer = new AbortController();
    if (signal?.aborted) throw new Cancelled();
    const cancel = () => abort.abort();
    signal?.addEventListener('abort', cancel, { once: true });
    let timedOut = false;
    const timeout = this.o.sleep(this.o.timeoutMs, timer.signal).then(() => {
      if (!timer.signal.aborted) {
        timedOut = true;
        abort.abort();
      }
    });
    try {
      const res = await this.o.fetch(this.o.url + path, { method, headers, body, signal: abort.signal });
      const text = await res.text();
      return { status: res.status, header: (n: string) => res.headers.get(n), text };
    } catch (e) {
      if (signal?.aborted) throw new Cancelled();
      const why = timedOut ? `no answer within ${this.o.timeoutMs} ms` : e instanceof Error ? e.message : String(e);
      throw new OfflineError(`${method} ${path.split('?')[0]}: ${why}`, e);
    } finally {
      timer.abort();
      signal?.removeEventListener('abort', cancel);
      void timeout;
    }
  }

  // ---- live ----

  /** Push soon (a local write while live); a failed push is tried again once the
   * backoff is over (one retry pending at a time). */
  private pushSoon(): void {
    if (this.pushQueued) return;
    this.pushQueued = true;
    this.push().catch((e: EdgesyncError) => {
      const live = this.live;
      if (!live || this.pushRetry || !(countsAsFailure(e) || e.kind === 'backing_off')) return;
      this.pushRetry = true;
      void live.sleep(this.retryIn()).then((ok) => {
        this.pushRetry = false;
        if (ok && this.live === live) this.pushSoon();
      });
    });
  }

  /** Keep in sync: sync now, then on every poke of the `/live` WebSocket (long-polling
   * `/sync?wait=` while no socket can be had), and at least every `safetyPullMs`. */
  start(): void {
    if (this.live) return;
    this.live = new LiveSync(this, {
      url: (this.o.liveUrl ?? this.o.url).replace(/\/+$/, '').replace(/^http/, 'ws') + '/live',
      WebSocket: this.o.WebSocket,
      sleep: this.o.sleep,
      now: this.o.now,
      random: this.o.random,
      backoffBaseMs: this.o.backoffBaseMs,
      backoffMaxMs: this.o.backoffMaxMs,
      heartbeatMs: this.o.heartbeatMs,
      safetyPullMs: this.o.safetyPullMs,
      longPollSecs: this.o.longPollSecs,
      // A handshake is a request: it gets the requests' time limit.
      connectTimeoutMs: this.o.timeoutMs,
      onMode: () => this.statusChanged(),
    });
    this.live.run();
    this.statusChanged();
  }

  /** Stop live updates (closes the socket, cuts a waiting pull short). */
  async stop(): Promise<void> {
    const live = this.live;
    if (!live) return;
    this.live = null;
    this.cancelWaiting();
    await live.stop();
    this.statusChanged();
  }

  /** Stop, and let go of the storage. */
  async close(): Promise<void> {
    await this.stop();
    this.store.dispose();
    await this.store.storage.close?.();
  }
}

/** `Client.open(options)`. */
export function createClient(options: ClientOptions): Promise<Client> {
  return Client.open(options);
}
