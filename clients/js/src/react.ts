/**
 * React bindings (React 18 or later, an optional peer dependency): thin hooks over the
 * client's reactive API through `useSyncExternalStore`.
 *
 * ```tsx
 * const { rows, loading } = useQuery(client, 'entries', { filter: (e) => !e.done }, []);
 * const status = useSyncStatus(client);
 * ```
 */

import { useCallback, useMemo, useSyncExternalStore } from 'react';
import type { Client, Status } from './client.js';
import type { Row } from './protocol.js';
import type { QueryOptions, QuerySnapshot } from './query.js';

/**
 * The rows of `table` (filtered and sorted as `options` says), kept current. The query
 * is made again when `client`, `table` or anything in `deps` changes: list there what
 * `filter` and `sort` read, as for `useMemo`.
 */
export function useQuery<T extends Row = Row>(
  client: Client,
  table: string,
  options: QueryOptions<T> = {},
  deps: readonly unknown[] = [],
): QuerySnapshot<T> {
  // eslint-disable-next-line react-hooks/exhaustive-deps
  const query = useMemo(() => client.query<T>(table, options), [client, table, ...deps]);
  return useSyncExternalStore(query.subscribe, query.getSnapshot, query.getSnapshot);
}

/** The client's status (state, outbox length, last sync, last error, online), kept current. */
export function useSyncStatus(client: Client): Status {
  const subscribe = useCallback((onChange: () => void) => client.subscribeStatus(onChange), [client]);
  const get = useCallback(() => client.getStatus(), [client]);
  return useSyncExternalStore(subscribe, get, get);
}
