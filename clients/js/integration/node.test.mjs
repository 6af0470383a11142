// @edgesync/client in Node against the real stack (Postgres, PostgREST, wrangler dev
// running the Workers), devices talking through the fault-injecting proxy of
// tests/faults.rs where the test says so. Run by tests/js_client.rs; see stack.mjs.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import { createClient, MemoryStorage } from '../dist/index.js';
import { SqliteStorage } from '../dist/sqlite.js';
import { database, eventually, faultUrl, newUser, stack, userToken } from './stack.mjs';

/** A device of `user`: its own store, `x-sim-device` naming it to the fault proxy. */
async function device(user, name, { url = stack.functions_url, storage, ...options } = {}) {
  return createClient({
    url,
    token: user.token,
    storage: storage ?? new MemoryStorage(),
    headers: { 'x-sim-device': name },
    backoffBaseMs: 20,
    backoffMaxMs: 200,
    timeoutMs: 10_000,
    ...options,
  });
}

/** Sync until `client` has nothing to send and nothing awaiting its checkpoint,
 * whatever the network does meanwhile. */
async function settle(client, rounds = 200) {
  for (let i = 0; i < rounds; i++) {
    client.resetBackoff();
    try {
      await client.sync();
    } catch (e) {
      if (!['offline', 'http', 'backing_off'].includes(e.kind)) throw e;
      continue;
    }
    const s = await client.status();
    if (s.outboxLength === 0 && s.awaitingCheckpoint === 0) return;
  }
  throw new Error(`${client.getStatus().clientId} did not settle`);
}

/** The user's live entries on the server: id → title. */
async function serverEntries(db, userId) {
  const { rows } = await db.query(
    'select id::text, title from public.entries where user_id = $1 and deleted_at is null',
    [userId],
  );
  return new Map(rows.map((r) => [r.id, r.title]));
}

const localEntries = async (client) => new Map((await client.list('entries')).map((r) => [r.id, r.title]));

test('two devices of one user converge through a network that drops, duplicates and delays', async () => {
  const user = newUser();
  const proxy = faultUrl();
  const a = await device(user, `a-${user.id}`, { url: proxy, storage: await SqliteStorage.open(':memory:') });
  const b = await device(user, `b-${user.id}`, { url: proxy });
  const ids = Array.from({ length: 12 }, () => randomUUID());
  let seed = 7;
  const next = (n) => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed % n;
  };
  for (let round = 0; round < 8; round++) {
    for (const [name, c] of [['a', a], ['b', b]]) {
      for (let k = 0; k < 4; k++) {
        const id = ids[next(ids.length)];
        const title = `${name}${round}.${k}`;
        const op = next(10);
        if (op < 5) await c.put('entries', id, { title, body_markdown: '', tags: [name, 'round' + round] });
        else if (op < 8 && (await c.get('entries', id))) await c.patch('entries', id, { title });
        else await c.delete('entries', id);
      }
      c.resetBackoff();
      await c.sync().catch((e) => {
        if (!['offline', 'http', 'backing_off'].includes(e.kind)) throw e;
      });
    }
  }
  // Both settle; then each pulls what the other sent last.
  await settle(a);
  await settle(b);
  await settle(a);
  const db = await database();
  try {
    const server = await serverEntries(db, user.id);
    assert.deepEqual(await localEntries(a), server, 'device a differs from the server');
    assert.deepEqual(await localEntries(b), server, 'device b differs from the server');
    assert.ok(server.size > 0, 'the scenario left nothing alive to compare');
    // Every acknowledged op_id was applied once: the server's ledger holds each
    // device's last op_id, and nothing is left in either outbox.
    const { rows } = await db.query(
      'select client_id::text, last_op_id from edgesync.clients where user_id = $1 order by 1',
      [user.id],
    );
    assert.equal(rows.length, 2);
  } finally {
    await db.end();
    await a.close();
    await b.close();
  }
});

test('a write on one device reaches a live device of the same user through the socket', async () => {
  const user = newUser();
  const a = await device(user, 'live-a');
  const b = await device(user, 'live-b');
  a.start();
  try {
    await eventually('device a to hold its socket', () => a.getStatus().live === 'socket');
    await a.settled();
    const id = randomUUID();
    const started = Date.now();
    await b.put('entries', id, { title: 'from b, live', body_markdown: '', tags: [] });
    await b.push();
    await eventually('the write to reach device a', async () => (await a.get('entries', id)) !== null, 10_000);
    console.log(`live: a write on b reached a in ${Date.now() - started} ms`);
  } finally {
    await a.close();
    await b.close();
  }
});

test('an expired token is refreshed through the hook once and the request retried', async () => {
  const user = newUser();
  let refreshes = 0;
  const c = await device(
    { ...user, token: userToken(user.id, -60) },
    'refresh',
    {
      refreshToken: () => {
        refreshes += 1;
        return userToken(user.id);
      },
    },
  );
  try {
    await c.put('entries', randomUUID(), { title: 'after a refresh', body_markdown: '', tags: [] });
    const report = await c.sync();
    assert.equal(refreshes, 1);
    assert.equal(report.push.acks.length, 1);
    assert.equal(report.push.acks[0].status, 'applied');
  } finally {
    await c.close();
  }
});

test('a 410 rebuild keeps the writes not yet sent', async () => {
  const user = newUser();
  const c = await device(user, 'rebuild', { pageLimit: 2 });
  const db = await database();
  try {
    for (let i = 0; i < 5; i++) await c.put('entries', randomUUID(), { title: `kept ${i}`, body_markdown: '', tags: [] });
    await settle(c);
    const unsent = randomUUID();
    await c.put('entries', unsent, { title: 'not yet sent', body_markdown: '', tags: [] });
    // A purge for this user, after the device's cursor: its next pull must rebuild.
    await db.query(
      `insert into edgesync.purge_horizons (user_id, horizon, purged_xid)
       values ($1, edgesync.sync_position(), edgesync.sync_position())
       on conflict (user_id) do update set horizon = excluded.horizon, purged_xid = excluded.purged_xid`,
      [user.id],
    );
    const pulled = await c.pull();
    assert.equal(pulled.resynced, true, 'the pull did not rebuild');
    assert.equal((await c.status()).outboxLength, 1, 'the rebuild lost the unsent write');
    assert.equal((await c.get('entries', unsent))?.title, 'not yet sent');
    await settle(c);
    const server = await serverEntries(db, user.id);
    assert.equal(server.get(unsent), 'not yet sent');
    assert.deepEqual(await localEntries(c), server);
  } finally {
    await db.end();
    await c.close();
  }
});

test("another user's rows never reach a device", async () => {
  const [me, other] = [newUser(), newUser()];
  const mine = await device(me, 'mine');
  const theirs = await device(other, 'theirs');
  try {
    await theirs.put('entries', randomUUID(), { title: "the other user's", body_markdown: '', tags: [] });
    await settle(theirs);
    await mine.put('entries', randomUUID(), { title: 'mine', body_markdown: '', tags: [] });
    await settle(mine);
    const titles = [...(await localEntries(mine)).values()];
    assert.deepEqual(titles, ['mine']);
  } finally {
    await mine.close();
    await theirs.close();
  }
});
