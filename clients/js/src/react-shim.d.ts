// The few React APIs `react.ts` uses, so the package builds without React installed
// (React is an optional peer dependency). Not emitted: `dist/react.d.ts` names no
// React type.
declare module 'react' {
  export function useSyncExternalStore<T>(
    subscribe: (onChange: () => void) => () => void,
    getSnapshot: () => T,
    getServerSnapshot?: () => T,
  ): T;
  export function useMemo<T>(factory: () => T, deps: readonly unknown[]): T;
  export function useCallback<T extends (...args: never[]) => unknown>(fn: T, deps: readonly unknown[]): T;
}
