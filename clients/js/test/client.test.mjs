// The engine beyond the conformance scenarios: transport details, timeouts,
// concurrency, the status and the live queries. A fake server and a fake clock
// drive everything; nothing waits on real time.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Client, HttpError, LocalError, MemoryStorage, NoTokenError, OfflineError } from '../dist/index.js';
import { A, B, BASE_URL, C, FakeClock, FakeServer, OTHER, T0, USER, deferred, errorBody, makeToken, page, statusWhen } from './helpers.mjs';

async function setup(options = {}) {
  const server = new FakeServer();
  const clock = new FakeClock();
  const client = await Client.open({
    url: `${BASE_URL}/`,
    token: makeToken({ sub: USER }),
    fetch: server.fetch,
    now: clock.now,
    sleep: clock.sleep,
    random: () => 0.5,
    WebSocket: null,
    ...options,
  });
  return { server, clock, client };
}

const applied = (...opIds) => ({ results: opIds.map((op_id) => ({ op_id, status: 'applied' })), last_op_id: opIds.at(-1), write_checkpoint: '5' });


test('requests carry the token, the extra headers and a JSON body, below the base URL', async () => {
  const token = makeToken({ sub: USER });
  const { server, client } = await setup({ headers: { apikey: 'anon-key' }, token });
  await client.put('entries', A, { title: 'x' });
  const pushed = client.push();
  const req = await server.next();
  assert.equal(req.url.href, `${BASE_URL}/upload`);
  assert.equal(req.headers.authorization, `Bearer ${token}`);
  assert.equal(req.headers.apikey, 'anon-key');
  assert.equal(req.headers['content-type'], 'application/json');
  assert.equal(req.body.client_id, (await client.status()).clientId);
  req.respond(200, applied(1));
  assert.equal((await pushed).acks.length, 1);
  const pulled = client.pull();
  const get = await server.next();
  assert.equal(get.headers['content-type'], undefined, 'a GET has no body');
  get.respond(200, page([]));
  await pulled;
});

test('a request without an answer times out as offline; the batch stays, with the attempt noted', async () => {
  const { server, clock, client } = await setup({ timeoutMs: 10_000 });
  await client.put('entries', A, { title: 'x' });
  const pushed = client.push();
  const req = await server.next();
  await clock.nextSleep(10_000);
  clock.advance(10_000);
  await assert.rejects(pushed, (e) => e instanceof OfflineError && /no answer within 10000 ms/.test(e.message));
  assert.ok(req.signal.aborted, 'the request was aborted');
  const [entry] = await client.store.outbox();
  assert.equal(entry.attempts, 1);
  assert.match(entry.lastError, /offline/);
  const s = await statusWhen(client, (s) => s.state === 'offline');
  assert.equal(s.online, false);
  assert.equal(s.outboxLength, 1);
  assert.equal(s.retryAt, T0 + 10_000 + 375);
  assert.equal(s.retryInMs, 375);
  assert.equal(clock.pending().length, 0, 'no timer is left behind');
});

test('an answered request leaves no timer behind', async () => {
  const { server, clock, client } = await setup();
  const pulled = client.pull();
  (await server.next()).respond(200, page([]));
  await pulled;
  assert.equal(clock.pending().length, 0);
});

test('the status follows the engine and its subscribers hear every change', async () => {
  const { server, clock, client } = await setup();
  const seen = [];
  client.subscribeStatus((s) => seen.push(s.state));
  assert.equal((await statusWhen(client, (s) => s.userId === USER)).outboxLength, 0);
  await client.put('entries', A, { title: 'x' });
  await statusWhen(client, (s) => s.outboxLength === 1);
  clock.advance(1000);
  const pushed = client.push();
  const req = await server.next();
  assert.equal((await statusWhen(client, (s) => s.state === 'pushing')).outboxLength, 1);
  req.respond(200, applied(1));
  await pushed;
  const s = await statusWhen(client, (s) => s.state === 'idle' && s.awaitingCheckpoint === 1);
  assert.deepEqual([s.outboxLength, s.lastPushAt, s.lastError, s.online, s.live], [0, T0 + 1000, null, true, 'off']);
  const pulled = client.pull();
  const get = await server.next();
  await statusWhen(client, (s) => s.state === 'pulling');
  get.respond(503, errorBody('database_unavailable'), { 'x-request-id': 'rq' });
  await assert.rejects(pulled, HttpError);
  const failed = await statusWhen(client, (s) => s.state === 'error');
  assert.ok(failed.lastError instanceof HttpError);
  assert.equal(failed.lastError.requestId, 'rq');
  assert.ok(failed.retryInMs > 0);
  assert.ok(seen.includes('pushing') && seen.includes('pulling') && seen.at(-1) === 'error', seen.join());
});

test('live queries load, follow local writes and pulls, filter and sort, and stop when unsubscribed', async () => {
  const { server, client } = await setup();
  const q = client.query('entries', { filter: (r) => !r.done, sort: (a, b) => b.title.localeCompare(a.title) });
  assert.deepEqual(q.getSnapshot(), { rows: [], loading: true, error: null });
  const snapshots = [];
  let notify;
  const next = () => new Promise((r) => (notify = r));
  let waiting = next();
  const unsubscribe = q.subscribe((s) => {
    snapshots.push(s);
    notify(s);
  });
  assert.deepEqual(await waiting, { rows: [], loading: false, error: null });
  const stable = q.getSnapshot();
  assert.equal(q.getSnapshot(), stable, 'the snapshot is stable between changes');
  waiting = next();
  await client.put('entries', A, { title: 'b' });
  assert.deepEqual((await waiting).rows.map((r) => r.id), [A]);
  waiting = next();
  await client.put('entries', B, { title: 'z', done: true });
  assert.deepEqual((await waiting).rows.map((r) => r.id), [A], 'filtered out');
  waiting = next();
  const pulled = client.pull();
  (await server.next()).respond(200, page([{ id: C, title: 'c', user_id: USER }]));
  await pulled;
  assert.deepEqual((await waiting).rows.map((r) => r.title), ['c', 'b'], 'sorted');
  await client.put('notes', A, { title: 'elsewhere' });
  await client.settled();
  unsubscribe();
  const count = snapshots.length;
  await client.put('entries', A, { title: 'after' });
  await client.settled();
  assert.equal(snapshots.length, count, 'no call after unsubscribing, nor for other tables');
  assert.equal(q.getSnapshot().rows[1].title, 'b');

  const watched = deferred();
  const off = client.watch('entries', (r) => watched.resolve(r.map((x) => x.title)));
  assert.deepEqual(await watched.promise, ['after', 'z', 'c']);
  off();
});

test('a pull cuts a waiting pull short; a push is not held up by one', async () => {
  const { server, client } = await setup();
  const first = client.pull();
  (await server.next()).respond(200, page([], { cursor: 'c1', checkpoint: '1' }));
  await first;

  const waitingPull = client.pullWaiting(25);
  const held = await server.next();
  assert.deepEqual(held.query, { limit: '1000', since: 'c1', wait: '25' });
  await client.put('entries', A, { title: 'x' });
  const pushed = client.push();
  (await server.next()).respond(200, applied(1));
  assert.equal((await pushed).acks.length, 1, 'the push went out while the pull waited');

  const pulled = client.pull();
  assert.deepEqual(await waitingPull, { pages: 0, upserted: 0, deleted: 0, settled: 0, checkpoint: 0, hasMore: false, resynced: false });
  assert.ok(held.signal.aborted);
  const now = await server.next();
  assert.deepEqual(now.query, { limit: '1000', since: 'c1' });
  now.respond(200, page([], { cursor: 'c5', checkpoint: '5' }));
  assert.equal((await pulled).settled, 1);
  const s = await statusWhen(client, (s) => s.state === 'idle');
  assert.equal(s.lastError, null);
});

test('a pull right after a waiting pull cuts it short before it sends anything', async () => {
  const { server, client } = await setup();
  const first = client.pull();
  (await server.next()).respond(200, page([], { cursor: 'c1', checkpoint: '1' }));
  await first;
  const waitingPull = client.pullWaiting(25);
  const pulled = client.pull();
  const req = await server.next();
  assert.deepEqual(req.query, { limit: '1000', since: 'c1' }, 'no wait');
  assert.equal((await waitingPull).pages, 0);
  req.respond(200, page([], { cursor: 'c2', checkpoint: '2' }));
  assert.equal((await pulled).checkpoint, 2);
  assert.equal(server.log.length, 2);
});

test('pushes run one at a time', async () => {
  const { server, client } = await setup();
  await client.put('entries', A, { title: 'x' });
  const one = client.push();
  const two = client.push();
  (await server.next()).respond(200, applied(1));
  const [r1, r2] = await Promise.all([one, two]);
  assert.deepEqual([r1.requests, r2.requests, server.log.length], [1, 0, 1]);
});

test('lastPush keeps what was acknowledged before a failure; progress is reported per page', async () => {
  const { server, client } = await setup({ batchSize: 1 });
  await client.put('entries', A, { title: 'a' });
  await client.put('entries', B, { title: 'b' });
  const pushed = client.push();
  (await server.next()).respond(200, applied(1));
  (await server.next()).respond(500, errorBody('internal'));
  await assert.rejects(pushed, HttpError);
  assert.deepEqual([client.lastPush.requests, client.lastPush.acks.map((a) => a.opId)], [2, [1]]);

  client.resetBackoff();
  const progress = [];
  const pulled = client.pull((p) => progress.push([p.pages, p.upserted, p.hasMore]));
  (await server.next()).respond(200, page([{ id: A, title: 'a' }], { cursor: 'p1', hasMore: true, checkpoint: '3' }));
  (await server.next()).respond(200, page([{ id: C, title: 'c' }], { cursor: 'p2', checkpoint: '4' }));
  assert.equal((await pulled).pages, 2);
  assert.deepEqual(progress, [[1, 1, true], [2, 2, false]]);
});

test('setToken refuses what is not a JWT of the store owner, and keeps the old token', async () => {
  const token = makeToken({ sub: USER });
  const { client } = await setup({ token });
  await assert.rejects(client.setToken('garbage'), (e) => e instanceof LocalError && e.code === 'invalid');
  await assert.rejects(client.setToken(makeToken({ sub: OTHER })), LocalError);
  assert.equal(client.currentToken(), token);
});

test('clearLocalData signs out: data, token, owner and client id are gone', async () => {
  const { client } = await setup();
  const before = (await client.status()).clientId;
  await client.put('entries', A, { title: 'x' });
  await client.clearLocalData();
  assert.deepEqual(await client.list('entries'), []);
  assert.equal(client.currentToken(), null);
  await assert.rejects(client.pull(), NoTokenError);
  await client.setToken(makeToken({ sub: OTHER }));
  const s = await client.status();
  assert.equal(s.userId, OTHER);
  assert.notEqual(s.clientId, before);
});

test('search posts the query and returns the results', async () => {
  const { server, client } = await setup();
  const found = client.search('lifting weights', { matchThreshold: 0.2, matchCount: 5 });
  const req = await server.next();
  assert.deepEqual([req.method, req.path, req.body], ['POST', '/search', { query: 'lifting weights', match_threshold: 0.2, match_count: 5 }]);
  req.respond(200, { results: [{ id: A, title: 'gym', similarity: 0.8 }] });
  assert.deepEqual(await found, [{ id: A, title: 'gym', similarity: 0.8 }]);
  const failed = client.search('x');
  (await server.next()).respond(503, errorBody('embeddings_busy'));
  await assert.rejects(failed, (e) => e instanceof HttpError && e.code === 'embeddings_busy');
});

test('a local store failure is a local error and does not back off', async () => {
  const inner = new MemoryStorage();
  let failWrites = false;
  const storage = {
    transaction: (mode, fn) => (failWrites && mode === 'readwrite' ? Promise.reject(new Error('disk full')) : inner.transaction(mode, fn)),
  };
  const { server, client } = await setup({ storage });
  failWrites = true;
  await assert.rejects(client.put('entries', A, { title: 'x' }), (e) => e instanceof LocalError && e.code === 'storage' && /disk full/.test(e.message));
  const pulled = client.pull();
  (await server.next()).respond(200, page([{ id: A, title: 'a' }]));
  await assert.rejects(pulled, (e) => e.kind === 'local');
  assert.equal(client.retryIn(), 0);
  failWrites = false;
  assert.deepEqual(await client.list('entries'), []);
});
