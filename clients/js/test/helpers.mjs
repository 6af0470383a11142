// Test doubles: tokens, a clock with timers the test drives, a fetch the test answers,
// a WebSocket the test opens and closes, and the storages to run everything against.
// Nothing here sleeps: every wait is on a promise the test (or the engine) resolves.

import 'fake-indexeddb/auto';
import { MemoryStorage } from '../dist/index.js';
import { IndexedDBStorage } from '../dist/indexeddb.js';
import { SqliteStorage } from '../dist/sqlite.js';

export const USER = '00000000-0000-4000-8000-0000000000ff';
export const OTHER = '00000000-0000-4000-8000-0000000000ee';
export const A = '00000000-0000-4000-8000-00000000000a';
export const B = '00000000-0000-4000-8000-00000000000b';
export const C = '00000000-0000-4000-8000-00000000000c';
export const BASE_URL = 'http://edgesync.test';
export const T0 = 1_700_000_000_000;

const b64url = (s) => Buffer.from(s).toString('base64url');

/** An unsigned JWT with these claims (the client reads `sub` without verifying). */
export function makeToken(claims, label = 'token') {
  return `${b64url(JSON.stringify({ alg: 'none', typ: 'JWT' }))}.${b64url(JSON.stringify({ ...claims, jti: label }))}.sig`;
}

/** A deferred promise. */
export function deferred() {
  let resolve, reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/**
 * A clock whose timers fire only when the test advances it. `sleep` is the engine's
 * injected sleep: it resolves at its deadline or when its signal aborts.
 */
export class FakeClock {
  constructor(start = T0) {
    this.t = start;
    this.timers = new Set();
    this.waiters = [];
  }
  now = () => this.t;
  sleep = (ms, signal) =>
    new Promise((resolve) => {
      if (signal?.aborted) return resolve();
      const timer = { at: this.t + Math.max(0, ms), ms, resolve };
      const cancel = () => {
        this.timers.delete(timer);
        resolve();
      };
      timer.cancel = () => signal?.removeEventListener('abort', cancel);
      signal?.addEventListener('abort', cancel, { once: true });
      this.timers.add(timer);
      const ws = this.waiters;
      this.waiters = [];
      for (const w of ws) w.resolve(timer);
    });
  /** Sleeps not yet over, by length. */
  pending(ms) {
    return [...this.timers].filter((t) => ms === undefined || t.ms === ms);
  }
  /** Resolves with the next timer set (or one already pending of that length). */
  nextSleep(ms) {
    const have = this.pending(ms)[0];
    if (have) return Promise.resolve(have);
    const d = deferred();
    this.waiters.push(d);
    return d.promise.then((t) => (ms === undefined || t.ms === ms ? t : this.nextSleep(ms)));
  }
  /** Move time forward, firing the timers that come due, in order. */
  advance(ms) {
    this.t += ms;
    const due = [...this.timers].filter((t) => t.at <= this.t).sort((a, b) => a.at - b.at);
    for (const t of due) {
      this.timers.delete(t);
      t.cancel();
      t.resolve();
    }
    return due.length;
  }
}

/** A fetch the test answers: `await server.next()` gives the next request. */
export class FakeServer {
  constructor() {
    this.queue = [];
    this.waiters = [];
    this.log = [];
  }
  fetch = (url, init) => {
    const d = deferred();
    const u = new URL(url);
    const req = {
      url: u,
      method: init.method,
      path: u.pathname,
      query: Object.fromEntries(u.searchParams),
      headers: init.headers,
      body: init.body === undefined ? undefined : JSON.parse(init.body),
      signal: init.signal,
      respond: (status, body, headers = {}) =>
        d.resolve(
          new Response(typeof body === 'string' ? body : JSON.stringify(body), {
            status,
            headers: { 'content-type': 'application/json', ...headers },
          }),
        ),
      fail: (message = 'connection refused') => d.reject(new TypeError(message)),
    };
    init.signal?.addEventListener('abort', () => d.reject(new DOMException('aborted', 'AbortError')), { once: true });
    this.log.push(req);
    const w = this.waiters.shift();
    if (w) w.resolve(req);
    else this.queue.push(req);
    return d.promise;
  };
  next() {
    const r = this.queue.shift();
    if (r) return Promise.resolve(r);
    const d = deferred();
    this.waiters.push(d);
    return d.promise;
  }
}

export const page = (rows, { cursor = 'c1', hasMore = false, checkpoint = '1', deleted = [], table = 'entries' } = {}) => ({
  changes: { [table]: { upserted: rows, deleted } },
  cursor,
  has_more: hasMore,
  checkpoint,
});

export const errorBody = (code, message = code, details = null) => ({ error: { code, message, details, request_id: 'req-1' } });

/** A WebSocket the test drives. `FakeWebSocket.opened` holds every socket made. */
export class FakeWebSocket {
  static made = [];
  static waiters = [];
  static reset() {
    FakeWebSocket.made = [];
    FakeWebSocket.waiters = [];
  }
  /** Resolves with the next socket the client makes. */
  static next() {
    const d = deferred();
    FakeWebSocket.waiters.push(d);
    return d.promise;
  }
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.sent = [];
    this.closed = null;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeWebSocket.made.push(this);
    const w = FakeWebSocket.waiters.shift();
    if (w) queueMicrotask(() => w.resolve(this));
  }
  send(data) {
    this.sent.push(data);
  }
  close(code = 1000) {
    this.closed ??= code;
  }
  // the server's side
  open() {
    this.onopen?.({});
  }
  message(data) {
    this.onmessage?.({ data: typeof data === 'string' ? data : JSON.stringify(data) });
  }
  serverClose(code, reason = '') {
    this.closed ??= code;
    this.onclose?.({ code, reason });
  }
  fail() {
    this.onerror?.({});
    this.onclose?.({ code: 1006, reason: '' });
  }
}

let dbCounter = 0;
let sqliteAvailable;
try {
  await import('node:sqlite');
  sqliteAvailable = true;
} catch {
  sqliteAvailable = false;
}

/** The storages every protocol test runs against. */
export const backends = [
  { name: 'memory', open: async () => new MemoryStorage() },
  { name: 'indexeddb', open: async () => IndexedDBStorage.open(`edgesync-test-${process.pid}-${++dbCounter}`) },
  {
    name: 'sqlite',
    skip: sqliteAvailable ? false : 'node:sqlite needs Node 22.13 or later',
    open: async () => SqliteStorage.open(':memory:'),
  },
];

/** The first status snapshot (current or coming) of `client` for which `pred` holds. */
export async function statusWhen(client, pred) {
  await client.settled();
  if (pred(client.getStatus())) return client.getStatus();
  return new Promise((resolve) => {
    const off = client.subscribeStatus((s) => {
      if (pred(s)) {
        off();
        resolve(s);
      }
    });
  });
}
