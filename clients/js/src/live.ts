/**
 * Live updates: the `/live` WebSocket of pokes, and the long-poll (`/sync?wait=`) when
 * no socket can be had. A poke names a checkpoint and nothing else: on each one the
 * client pulls, and the pull decides what arrives. A lost poke only delays a change
 * until the next pull, so a live client still pulls at a long interval.
 *
 * The loop is `client/src/main.rs`'s `sync --live`, with the socket a browser can
 * open: the token goes as the subprotocol `bearer.<jwt>` beside `edgesync`.
 */

import { backoffDelay, parsePoke, type Sleep } from './protocol.js';

/**
 * What the live loop asks of the client (`Client` implements it). Declared here, so
 * this module depends on no more of the client than it uses, and not the other way.
 */
export interface LiveClient {
  sync(): Promise<unknown>;
  push(): Promise<unknown>;
  pullWaiting(waitSecs: number): Promise<{ upserted: number; deleted: number }>;
  handlePoke(checkpoint: number): Promise<boolean>;
  refreshToken(): Promise<boolean>;
  currentToken(): string | null;
  retryIn(): number;
  resetBackoff(): void;
  statusChanged(): void;
}

export type LiveMode = 'off' | 'connecting' | 'socket' | 'long-poll';

/** The part of the WebSocket API the client uses (the browser's, or Node 22's). */
export interface WebSocketLike {
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketClass = new (url: string, protocols: string[]) => WebSocketLike;

/** The WebSocket subprotocol edgesync speaks. */
export const SUBPROTOCOL = 'edgesync';
/** A browser offers its token as a second subprotocol with this prefix. */
export const BEARER_PROTOCOL_PREFIX = 'bearer.';
/** The close code of a socket whose token expired: reconnect with a fresh one. */
export const CLOSE_TOKEN_EXPIRED = 4001;
/** What keeps the socket open. */
export const PING = 'ping';

export interface LiveDeps {
  url: string;
  WebSocket: WebSocketClass | undefined;
  sleep: Sleep;
  now: () => number;
  random: () => number;
  backoffBaseMs: number;
  backoffMaxMs: number;
  heartbeatMs: number;
  safetyPullMs: number;
  longPollSecs: number;
  /** How long a socket may take to open before the loop long-polls instead. */
  connectTimeoutMs: number;
  onMode: (mode: LiveMode) => void;
}

type SessionEnd = 'expired' | 'closed' | 'stopped';

const quiet = (p: () => Promise<unknown>): Promise<boolean> => p().then(() => true, () => false);

export class LiveSync {
  mode: LiveMode = 'connecting';
  private stopped = false;
  private readonly sleepers = new Set<AbortController>();
  private readonly stopCtl = new AbortController();
  private done: Promise<void> = Promise.resolve();
  private failures = 0;

  constructor(private readonly client: LiveClient, private readonly d: LiveDeps) {}

  run(): void {
    this.done = this.loop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.stopCtl.abort();
    this.wake();
    await this.done;
  }

  /** Cut the current wait short (the network is back, a new token). */
  wake(): void {
    for (const c of this.sleepers) c.abort();
  }

  /** Sleep unless stopped or woken (or `until` aborts); false once stopped. */
  async sleep(ms: number, until?: AbortSignal): Promise<boolean> {
    if (this.stopped) return false;
    const ctl = new AbortController();
    const cut = () => ctl.abort();
    until?.addEventListener('abort', cut, { once: true });
    if (until?.aborted) ctl.abort();
    this.sleepers.add(ctl);
    try {
      await this.d.sleep(ms, ctl.signal);
    } finally {
      this.sleepers.delete(ctl);
      until?.removeEventListener('abort', cut);
    }
    return !this.stopped;
  }

  private setMode(mode: LiveMode): void {
    if (this.mode !== mode) {
      this.mode = mode;
      this.d.onMode(mode);
    }
  }

  private backoff(): number {
    return backoffDelay(this.failures, this.d.backoffBaseMs, this.d.backoffMaxMs, this.d.random());
  }

  private async loop(): Promise<void> {
    const unwatch = this.watchOnline();
    try {
      while (!this.stopped) {
        await quiet(() => this.client.sync());
        if (this.stopped) break;
        const ws = await this.open();
        if (ws === 'woken') continue;
        if (ws) {
          const end = await this.session(ws);
          if (end === 'stopped') break;
          // Token expired: reconnect at once with a fresh one (without a refresh hook,
          // with whatever token the app has set meanwhile).
          if (end === 'expired' && (await this.client.refreshToken().catch(() => false))) continue;
          if (this.failures > 0) await this.sleep(this.backoff());
        } else {
          if (this.stopped) break;
          this.setMode('long-poll');
          // A long-poll that failed, or came back at once with nothing (a server that
          // does not wait), counts as a failure: the loop must not spin.
          const started = this.d.now();
          let ok = await quiet(() => this.client.push());
          if (ok && !this.stopped) {
            ok = await this.client.pullWaiting(this.d.longPollSecs).then(
              (p) => p.upserted + p.deleted > 0 || this.d.now() - started >= 1000,
              () => false,
            );
          }
          this.failures = ok ? 0 : this.failures + 1;
          const wait = Math.max(this.client.retryIn(), ok ? 0 : this.backoff());
          if (wait > 0) await this.sleep(wait);
        }
      }
    } finally {
      unwatch();
      this.setMode('off');
    }
  }

  /**
   * Open the socket: the socket; null when it cannot be had (no WebSocket, no token,
   * refused, or no answer within `connectTimeoutMs`: a proxy that holds the handshake
   * must not stall the loop); 'woken' when `wake()` cut the attempt short (the network
   * is back: sync at once, then try again).
   */
  private open(): Promise<WebSocketLike | null | 'woken'> {
    const token = this.client.currentToken();
    const WS = this.d.WebSocket;
    if (!WS || token === null) return Promise.resolve(null);
    this.setMode('connecting');
    return new Promise((resolve) => {
      let ws: WebSocketLike;
      try {
        ws = new WS(this.d.url, [SUBPROTOCOL, BEARER_PROTOCOL_PREFIX + token]);
      } catch {
        return resolve(null);
      }
      let settled = false;
      const timer = new AbortController();
      const stop = () => give(null);
      const give = (v: WebSocketLike | null | 'woken') => {
        if (settled) return;
        settled = true;
        this.sleepers.delete(timer);
        timer.abort();
        ws.onopen = ws.onclose = ws.onerror = null;
        this.stopCtl.signal.removeEventListener('abort', stop);
        if (v !== ws) ws.close();
        resolve(v);
      };
      ws.onopen = () => give(ws);
      ws.onclose = stop;
      ws.onerror = stop;
      this.stopCtl.signal.addEventListener('abort', stop, { once: true });
      // wake() aborts the sleepers: this wait too.
      this.sleepers.add(timer);
      void this.d.sleep(this.d.connectTimeoutMs, timer.signal).then(
        () => give(timer.signal.aborted && !this.stopped ? 'woken' : null),
        () => give(null),
      );
    });
  }

  /** Hold an open socket: pull on pokes, ping, pull at least every `safetyPullMs`. */
  private session(ws: WebSocketLike): Promise<SessionEnd> {
    this.setMode('socket');
    const ended = new AbortController();
    const openedAt = this.d.now();
    let lastPull = openedAt;
    let heard = false;
    let target = 0;
    let busy = false;

    const onPoke = async (checkpoint: number) => {
      target = Math.max(target, checkpoint);
      if (busy) return;
      busy = true;
      try {
        for (;;) {
          const t = target;
          await quiet(() => this.client.handlePoke(t));
          lastPull = this.d.now();
          if (target === t || this.stopped) break;
        }
      } finally {
        busy = false;
      }
    };

    const heartbeat = async () => {
      while (await this.sleep(this.d.heartbeatMs, ended.signal)) {
        if (ended.signal.aborted) return;
        try {
          ws.send(PING);
        } catch {
          // the close event follows
        }
        if (!busy && this.d.now() - lastPull >= this.d.safetyPullMs) {
          await quiet(() => this.client.sync());
          lastPull = this.d.now();
        }
      }
    };

    return new Promise<SessionEnd>((resolve) => {
      const stop = () => end('stopped');
      const end = (why: SessionEnd) => {
        if (ended.signal.aborted) return;
        ended.abort();
        ws.onmessage = ws.onclose = ws.onerror = null;
        this.stopCtl.signal.removeEventListener('abort', stop);
        // A socket that stayed a while or heard something was healthy.
        this.failures = heard || this.d.now() - openedAt >= this.d.heartbeatMs ? 0 : this.failures + 1;
        if (why === 'stopped') ws.close(1000);
        resolve(why);
      };
      ws.onmessage = (ev) => {
        heard = true;
        const checkpoint = parsePoke(ev.data);
        if (checkpoint !== null) void onPoke(checkpoint);
      };
      ws.onclose = (ev) => end(ev.code === 4001 ? 'expired' : 'closed');
      ws.onerror = () => undefined; // the close event follows
      this.stopCtl.signal.addEventListener('abort', stop, { once: true });
      void heartbeat();
    });
  }

  /** In a browser: back online → try at once; offline → the status says so. */
  private watchOnline(): () => void {
    const g = globalThis as {
      addEventListener?: (t: string, f: () => void) => void;
      removeEventListener?: (t: string, f: () => void) => void;
    };
    if (typeof g.addEventListener !== 'function' || typeof g.removeEventListener !== 'function') return () => undefined;
    const online = () => {
      this.client.resetBackoff();
      this.wake();
    };
    const offline = () => this.client.statusChanged();
    g.addEventListener('online', online);
    g.addEventListener('offline', offline);
    return () => {
      g.removeEventListener!('online', online);
      g.removeEventListener!('offline', offline);
    };
  }
}
