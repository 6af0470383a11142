/**
 * The error classes, one per `Error` variant of the Rust reference client
 * (`client/src/lib.rs`). Every one is an `EdgesyncError` with a `kind` (the variant,
 * also the name the conformance scenarios use), a `code` and, for answers of the
 * server, the HTTP `status` and `requestId`.
 */

export type ErrorKind =
  | 'local'
  | 'no_token'
  | 'offline'
  | 'http'
  | 'protocol'
  | 'foreign_row'
  | 'backing_off'
  | 'refresh';

export class EdgesyncError extends Error {
  /** Which class of failure (the Rust client's `Error` variant, in snake_case). */
  readonly kind: ErrorKind;
  /** The server's error code for `http`; otherwise a fixed code per kind. */
  readonly code: string;
  /** The HTTP status, for `http` only. */
  readonly status: number | undefined;
  /** The server's request id (`x-request-id`), for `http` only. */
  readonly requestId: string | undefined;

  constructor(kind: ErrorKind, code: string, message: string, status?: number, requestId?: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = new.target.name;
    this.kind = kind;
    this.code = code;
    this.status = status;
    this.requestId = requestId;
  }
}

/** The local store failed (`code: "storage"`) or the app's input was invalid (`"invalid"`). */
export class LocalError extends EdgesyncError {
  constructor(code: 'invalid' | 'storage', message: string, cause?: unknown) {
    super('local', code, code === 'invalid' ? `invalid: ${message}` : `local store: ${message}`, undefined, undefined, cause);
  }
}

/** No token: call `setToken` first. */
export class NoTokenError extends EdgesyncError {
  constructor() {
    super('no_token', 'no_token', 'no token: sign in first');
  }
}

/** The server could not be reached (network failure, timeout). */
export class OfflineError extends EdgesyncError {
  constructor(message: string, cause?: unknown) {
    super('offline', 'offline', `offline: ${message}`, undefined, undefined, cause);
  }
}

/** The server answered with an error that is not about particular mutations. */
export class HttpError extends EdgesyncError {
  declare readonly status: number;
  declare readonly kind: 'http';
  /** The error's `details` (for example `errors`, `allowed`, `retry_after_secs`), or null. */
  readonly details: unknown;
  /** The server's message, without status and code. */
  readonly serverMessage: string;
  /** The `Retry-After` header, in milliseconds. */
  readonly retryAfterMs: number | undefined;

  constructor(status: number, code: string, message: string, details: unknown, requestId?: string, retryAfterMs?: number) {
    super('http', code, `${status} ${code}: ${message}${requestId ? ` (request ${requestId})` : ''}`, status, requestId);
    this.details = details;
    this.serverMessage = message;
    this.retryAfterMs = retryAfterMs;
  }
}

/** The server answered something this client cannot use. */
export class ProtocolError extends EdgesyncError {
  constructor(message: string) {
    super('protocol', 'protocol', `unexpected answer: ${message}`);
  }
}

/** A page carried a row of another user; nothing of it was applied. */
export class ForeignRowError extends EdgesyncError {
  readonly table: string;
  readonly id: string;
  constructor(table: string, id: string) {
    super('foreign_row', 'foreign_row', `the server sent another user's row ${table}/${id}`);
    this.table = table;
    this.id = id;
  }
}

/** The engine is waiting after a failure; try again later (or `resetBackoff()`). */
export class BackingOffError extends EdgesyncError {
  readonly retryInMs: number;
  constructor(retryInMs: number) {
    super('backing_off', 'backing_off', `waiting ${retryInMs} ms after a failure`);
    this.retryInMs = retryInMs;
  }
}

/** The token refresh hook failed. */
export class RefreshError extends EdgesyncError {
  constructor(message: string, cause?: unknown) {
    super('refresh', 'refresh', `token refresh failed: ${message}`, undefined, undefined, cause);
  }
}

/** `e` as an `EdgesyncError` (a foreign exception becomes a local `storage` error). */
export function asEdgesyncError(e: unknown): EdgesyncError {
  return e instanceof EdgesyncError ? e : new LocalError('storage', e instanceof Error ? e.message : String(e), e);
}
