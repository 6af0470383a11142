/**
 * SQLite storage on `node:sqlite` (Node 22.13 and later): a local store that outlives
 * the process, for Node tools and Electron's main process. One table of JSON values;
 * each storage transaction is one SQLite transaction.
 */

import { Mutex, type Collection, type Key, type Storage, type StorageTx } from './storage.js';

/** The part of `node:sqlite`'s `DatabaseSync` used here. */
export interface SqliteDatabase {
  exec(sql: string): void;
  prepare(sql: string): {
    run(...params: unknown[]): unknown;
    get(...params: unknown[]): unknown;
    all(...params: unknown[]): unknown[];
  };
  close(): void;
}

const SCHEMA = `create table if not exists _es_kv (
  c text not null, k not null, v text not null, primary key (c, k)) without rowid`;

export class SqliteStorage implements Storage {
  private readonly lock = new Mutex();
  private readonly q;

  /** Use an open database (`new DatabaseSync(path)` from `node:sqlite`). */
  constructor(private readonly db: SqliteDatabase) {
    db.exec(SCHEMA);
    this.q = {
      get: db.prepare('select v from _es_kv where c = ? and k = ?'),
      all: db.prepare('select v from _es_kv where c = ? order by k'),
      prefix: db.prepare('select v from _es_kv where c = ? and k >= ? and k < ? order by k'),
      put: db.prepare('insert into _es_kv (c, k, v) values (?, ?, ?) on conflict (c, k) do update set v = excluded.v'),
      delete: db.prepare('delete from _es_kv where c = ? and k = ?'),
      count: db.prepare('select count(*) as n from _es_kv where c = ?'),
      clear: db.prepare('delete from _es_kv where c = ?'),
    };
  }

  /** Open (or create) the database file at `path` (`:memory:` for none). */
  static async open(path: string): Promise<SqliteStorage> {
    const specifier = 'node:sqlite';
    const { DatabaseSync } = (await import(specifier)) as { DatabaseSync: new (path: string) => SqliteDatabase };
    const db = new DatabaseSync(path);
    if (path !== ':memory:') db.exec('pragma journal_mode = wal; pragma synchronous = normal; pragma busy_timeout = 5000');
    return new SqliteStorage(db);
  }

  transaction<T>(mode: 'readonly' | 'readwrite', fn: (tx: StorageTx) => Promise<T>): Promise<T> {
    return this.lock.run(async () => {
      const q = this.q;
      const writable = () => {
        if (mode !== 'readwrite') throw new Error('a readonly transaction cannot write');
      };
      const parse = (row: unknown) => JSON.parse((row as { v: string }).v) as unknown;
      const tx: StorageTx = {
        get: async (c: Collection, k: Key) => {
          const row = q.get.get(c, k);
          return row === undefined ? undefined : parse(row);
        },
        all: async (c, prefix) => (prefix === undefined ? q.all.all(c) : q.prefix.all(c, prefix, `${prefix}\uffff`)).map(parse),
        put: async (c, k, v) => {
          writable();
          q.put.run(c, k, JSON.stringify(v));
        },
        delete: async (c, k) => {
          writable();
          q.delete.run(c, k);
        },
        count: async (c) => Number((q.count.get(c) as { n: number | bigint }).n),
        clear: async (c) => {
          writable();
          q.clear.run(c);
        },
      };
      this.db.exec(mode === 'readwrite' ? 'begin immediate' : 'begin');
      try {
        const result = await fn(tx);
        this.db.exec('commit');
        return result;
      } catch (e) {
        this.db.exec('rollback');
        throw e;
      }
    });
  }

  close(): void {
    this.db.close();
  }
}
