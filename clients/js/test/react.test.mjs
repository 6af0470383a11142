// The React hooks, rendered with a stand-in for React (React is an optional peer
// dependency and is not installed): `react` resolves to test/fixtures/fake-react.mjs.

import assert from 'node:assert/strict';
import { register } from 'node:module';
import { test } from 'node:test';
import { Client } from '../dist/index.js';
import { A, B, FakeServer, USER, makeToken } from './helpers.mjs';

const fake = new URL('./fixtures/fake-react.mjs', import.meta.url).href;
register(
  `data:text/javascript,${encodeURIComponent(
    `export async function resolve(s, c, next) { return s === 'react' ? { url: ${JSON.stringify(fake)}, shortCircuit: true } : next(s, c); }`,
  )}`,
);
const React = await import('react');
const { useQuery, useSyncStatus } = await import('../dist/react.js');

const changed = () => new Promise((resolve) => {
  const l = () => {
    React.changes.listeners.delete(l);
    resolve();
  };
  React.changes.listeners.add(l);
});

/** Render until `pred` holds, rendering again after each change callback. */
async function renderUntil(view, pred) {
  for (;;) {
    const next = changed();
    const out = React.render(view);
    if (pred(out)) return out;
    await next;
  }
}

test('useQuery and useSyncStatus render the rows and the status, and follow changes', async () => {
  const server = new FakeServer();
  const client = await Client.open({ url: 'http://edgesync.test', token: makeToken({ sub: USER }), fetch: server.fetch, WebSocket: null });
  const view = () => {
    const { rows, loading } = useQuery(client, 'entries', { filter: (r) => r.title !== 'hidden' }, []);
    const status = useSyncStatus(client);
    return { loading, titles: rows.map((r) => r.title), outbox: status.outboxLength };
  };
  assert.deepEqual(React.render(view), { loading: true, titles: [], outbox: 0 });
  assert.deepEqual(await renderUntil(view, (v) => !v.loading), { loading: false, titles: [], outbox: 0 });

  await client.put('entries', A, { title: 'mine' });
  await client.put('entries', B, { title: 'hidden' });
  assert.deepEqual(await renderUntil(view, (v) => v.titles.length === 1 && v.outbox === 2), { loading: false, titles: ['mine'], outbox: 2 });

  const first = React.render(view);
  assert.deepEqual(React.render(view), first, 'renders without changes give the same result');
  await client.settled();
  const calls = React.changes.count;
  React.unmount();
  await client.put('entries', A, { title: 'after unmount' });
  await client.settled();
  assert.equal(React.changes.count, calls, 'unmounted: no more change callbacks');
});
