/**
 * The one small interface every local storage implements, and the in-memory one.
 *
 * A storage is a handful of named collections of JSON values under string or number
 * keys, read and written in transactions: everything one transaction wrote is kept,
 * or nothing is (a transaction whose callback throws is rolled back). `store.ts`
 * writes the protocol's local state on top of it, the same way for every storage.
 */

export type Collection = 'meta' | 'server' | 'rows' | 'outbox' | 'rejected' | 'conflicts';
export const COLLECTIONS: readonly Collection[] = ['meta', 'server', 'rows', 'outbox', 'rejected', 'conflicts'];

export type Key = string | number;

export interface StorageTx {
  get(c: Collection, key: Key): Promise<unknown>;
  /** The values in key order (numbers before strings); with `prefix`, only those
   * whose (string) key starts with it. */
  all(c: Collection, prefix?: string): Promise<unknown[]>;
  put(c: Collection, key: Key, value: unknown): Promise<void>;
  delete(c: Collection, key: Key): Promise<void>;
  count(c: Collection): Promise<number>;
  clear(c: Collection): Promise<void>;
}

export interface Storage {
  /**
   * Run `fn` in one transaction. In a `readwrite` one, everything `fn` wrote is
   * committed when it resolves, and nothing when it throws. `fn` must await only the
   * transaction's own calls (IndexedDB ends a transaction that waits on anything else).
   */
  transaction<T>(mode: 'readonly' | 'readwrite', fn: (tx: StorageTx) => Promise<T>): Promise<T>;
  /** Other instances (another tab) changed these tables; optional. */
  onExternalChange?(listener: (tables: string[]) => void): () => void;
  /** Tell other instances that these tables changed; optional. */
  announce?(tables: string[]): void;
  close?(): void | Promise<void>;
}

/** Runs async critical sections one after another. */
export class Mutex {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.tail.then(fn);
    this.tail = result.catch(() => undefined);
    return result;
  }
}

export function compareKeys(a: Key, b: Key): number {
  if (typeof a !== typeof b) return typeof a === 'number' ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

const clone = <T>(v: T): T => (v === undefined ? v : structuredClone(v));
const DELETED = Symbol('deleted');

/**
 * Keeps everything in memory: for tests, Node tools and Electron's main process when
 * nothing must outlive the process. Values are copied in and out, so callers cannot
 * change stored state by mutating what they got.
 */
export class MemoryStorage implements Storage {
  private readonly data = new Map<Collection, Map<Key, unknown>>(COLLECTIONS.map((c) => [c, new Map()]));
  private readonly lock = new Mutex();

  transaction<T>(mode: 'readonly' | 'readwrite', fn: (tx: StorageTx) => Promise<T>): Promise<T> {
    return this.lock.run(async () => {
      const pending = new Map<Collection, Map<Key, unknown>>();
      const cleared = new Set<Collection>();
      const writable = () => {
        if (mode !== 'readwrite') throw new Error('a readonly transaction cannot write');
      };
      const staged = (c: Collection) => {
        let m = pending.get(c);
        if (!m) pending.set(c, (m = new Map()));
        return m;
      };
      const view = (c: Collection): Map<Key, unknown> => {
        const out = new Map(cleared.has(c) ? [] : this.data.get(c)!);
        for (const [k, v] of pending.get(c) ?? []) {
          if (v === DELETED) out.delete(k);
          else out.set(k, v);
        }
        return out;
      };
      const tx: StorageTx = {
        get: async (c, key) => {
          const p = pending.get(c);
          if (p?.has(key)) {
            const v = p.get(key);
            return v === DELETED ? undefined : clone(v);
          }
          return cleared.has(c) ? undefined : clone(this.data.get(c)!.get(key));
        },
        all: async (c, prefix) =>
          [...view(c)]
            .filter(([k]) => prefix === undefined || (typeof k === 'string' && k.startsWith(prefix)))
            .sort(([a], [b]) => compareKeys(a, b))
            .map(([, v]) => clone(v)),
        put: async (c, key, value) => {
          writable();
          staged(c).set(key, clone(value));
        },
        delete: async (c, key) => {
          writable();
          staged(c).set(key, DELETED);
        },
        count: async (c) => view(c).size,
        clear: async (c) => {
          writable();
          cleared.add(c);
          pending.delete(c);
        },
      };
      const result = await fn(tx);
      for (const c of cleared) this.data.get(c)!.clear();
      for (const [c, m] of pending) {
        const target = this.data.get(c)!;
        for (const [k, v] of m) {
          if (v === DELETED) target.delete(k);
          else target.set(k, v);
        }
      }
      return result;
    });
  }
}
