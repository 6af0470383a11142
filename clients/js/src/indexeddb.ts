/**
 * IndexedDB storage for browsers and Electron renderers, through `idb`.
 *
 * One database per local store (name it per app, or per user); six object stores with
 * out-of-line keys. Tabs of one origin share the database; a change made in one tab is
 * announced to the others on a BroadcastChannel, so their live queries follow.
 */

import { deleteDB, openDB, type IDBPDatabase } from 'idb';
import { COLLECTIONS, type Storage, type StorageTx } from './storage.js';

const VERSION = 1;

export interface IndexedDBStorageOptions {
  /** Announce changes to other tabs (default: when BroadcastChannel exists). */
  broadcast?: boolean;
}

export class IndexedDBStorage implements Storage {
  private readonly channel: BroadcastChannel | null;

  private constructor(
    private readonly db: IDBPDatabase,
    readonly name: string,
    broadcast: boolean,
  ) {
    this.channel = broadcast && typeof BroadcastChannel === 'function' ? new BroadcastChannel(`edgesync:${name}`) : null;
  }

  /** Open (or create) the database `name`. */
  static async open(name = 'edgesync', options: IndexedDBStorageOptions = {}): Promise<IndexedDBStorage> {
    const db = await openDB(name, VERSION, {
      upgrade(db) {
        for (const c of COLLECTIONS) if (!db.objectStoreNames.contains(c)) db.createObjectStore(c);
      },
    });
    return new IndexedDBStorage(db, name, options.broadcast ?? true);
  }

  /** Delete the database `name` (close every storage on it first). */
  static delete(name = 'edgesync'): Promise<void> {
    return deleteDB(name);
  }

  async transaction<T>(mode: 'readonly' | 'readwrite', fn: (tx: StorageTx) => Promise<T>): Promise<T> {
    const t = this.db.transaction([...COLLECTIONS], mode);
    const tx: StorageTx = {
      get: (c, key) => t.objectStore(c).get(key),
      all: (c, prefix) => t.objectStore(c).getAll(prefix === undefined ? undefined : IDBKeyRange.bound(prefix, `${prefix}\uffff`)),
      put: async (c, key, value) => {
        await t.objectStore(c).put!(value, key);
      },
      delete: (c, key) => t.objectStore(c).delete!(key),
      count: (c) => t.objectStore(c).count(),
      clear: (c) => t.objectStore(c).clear!(),
    };
    try {
      const result = await fn(tx);
      await t.done;
      return result;
    } catch (e) {
      try {
        t.abort();
      } catch {
        // already finished or aborted
      }
      await t.done.catch(() => undefined);
      throw e;
    }
  }

  announce(tables: string[]): void {
    this.channel?.postMessage({ tables });
  }

  onExternalChange(listener: (tables: string[]) => void): () => void {
    const channel = this.channel;
    if (!channel) return () => undefined;
    const handler = (ev: MessageEvent) => {
      const tables = (ev.data as { tables?: unknown })?.tables;
      if (Array.isArray(tables)) listener(tables.filter((t): t is string => typeof t === 'string'));
    };
    channel.addEventListener('message', handler);
    return () => channel.removeEventListener('message', handler);
  }

  close(): void {
    this.channel?.close();
    this.db.close();
  }
}
