/**
 * `@edgesync/client`: the client side of edgesync for browsers, Electron and Node.
 *
 * ```ts
 * import { createClient } from '@edgesync/client';
 * import { IndexedDBStorage } from '@edgesync/client/indexeddb';
 * const client = await createClient({ url, storage: await IndexedDBStorage.open('app'), token });
 * await client.put('entries', crypto.randomUUID(), { title: 'offline is fine' }); // local only
 * client.start(); // sync now, then on every change (the /live WebSocket)
 * ```
 */

export { Client, createClient } from './client.js';
export type { ClientOptions, FetchLike, PullProgress, PushReport, Sleep, State, Status, SyncReport } from './client.js';
export {
  BackingOffError,
  EdgesyncError,
  ForeignRowError,
  HttpError,
  LocalError,
  NoTokenError,
  OfflineError,
  ProtocolError,
  RefreshError,
} from './errors.js';
export type { ErrorKind } from './errors.js';
export { BEARER_PROTOCOL_PREFIX, CLOSE_TOKEN_EXPIRED, SUBPROTOCOL } from './live.js';
export type { LiveMode, WebSocketClass, WebSocketLike } from './live.js';
export * as protocol from './protocol.js';
export type { Ack, Conflict, Mutation, Op, OutboxEntry, Page, Rejection, Row } from './protocol.js';
export { LiveQuery } from './query.js';
export type { QueryOptions, QuerySnapshot } from './query.js';
export { MemoryStorage } from './storage.js';
export type { Collection, Key, Storage, StorageTx } from './storage.js';
export { LocalStore } from './store.js';
export type { Applied, Counts } from './store.js';

/** A fresh random UUID (v4), for the ids of new rows. */
export const randomUuid = (): string => crypto.randomUUID();
