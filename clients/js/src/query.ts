/**
 * Live views of the local rows for UI code: `subscribe(listener)` and `getSnapshot()`,
 * the contract of React's `useSyncExternalStore` (and close to Svelte's and Vue's
 * stores). A snapshot is immutable and replaced on every change, so it can be compared
 * by identity.
 */

import { asEdgesyncError, type EdgesyncError } from './errors.js';
import type { Row } from './protocol.js';
import { ANY_TABLE, type LocalStore } from './store.js';

export interface QueryOptions<T extends Row = Row> {
  /** Keep only the rows for which this is true. */
  filter?: (row: T) => boolean;
  /** Order the rows (default: by id). */
  sort?: (a: T, b: T) => number;
}

export interface QuerySnapshot<T extends Row = Row> {
  readonly rows: readonly T[];
  /** True until the first load finished. */
  readonly loading: boolean;
  /** The last load's failure (the rows are then the last good ones). */
  readonly error: EdgesyncError | null;
}

export class LiveQuery<T extends Row = Row> {
  private snapshot: QuerySnapshot<T> = { rows: [], loading: true, error: null };
  private readonly listeners = new Set<(s: QuerySnapshot<T>) => void>();
  private unlisten: (() => void) | null = null;
  private running: Promise<void> | null = null;
  private again = false;

  constructor(
    private readonly store: LocalStore,
    readonly table: string,
    private readonly options: QueryOptions<T> = {},
  ) {}

  /** The current snapshot (stable until the rows change). */
  getSnapshot = (): QuerySnapshot<T> => this.snapshot;

  /** Call `listener` after the first load and after every change of the table.
   * Returns the unsubscribe. The first subscriber starts the loading. */
  subscribe = (listener: (s: QuerySnapshot<T>) => void): (() => void) => {
    this.listeners.add(listener);
    if (!this.unlisten) {
      this.unlisten = this.store.onChange((tables) => {
        if (tables.has(this.table) || tables.has(ANY_TABLE)) void this.refresh();
      });
      void this.refresh();
    }
    return () => {
      this.listeners.delete(listener);
      if (this.listeners.size === 0 && this.unlisten) {
        this.unlisten();
        this.unlisten = null;
      }
    };
  };

  /** Load the rows again (coalesced); resolves once the snapshot is current. */
  refresh(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        try {
          let rows = (await this.store.list(this.table)) as T[];
          if (this.options.filter) rows = rows.filter(this.options.filter);
          if (this.options.sort) rows.sort(this.options.sort);
          this.snapshot = { rows, loading: false, error: null };
        } catch (e) {
          this.snapshot = { rows: this.snapshot.rows, loading: false, error: asEdgesyncError(e) };
        }
        for (const l of this.listeners) l(this.snapshot);
      } while (this.again);
      this.running = null;
    })();
    return this.running;
  }
}
