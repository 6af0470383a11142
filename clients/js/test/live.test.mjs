// Live updates: the /live WebSocket of pokes, its heartbeat and safety pull, close
// 4001, and the long-poll fallback. A fake socket, server and clock drive the loop.

import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';
import { Client } from '../dist/index.js';
import { A, B, BASE_URL, FakeClock, FakeServer, FakeWebSocket, USER, errorBody, makeToken, page, statusWhen } from './helpers.mjs';

const token = makeToken({ sub: USER }, 'first');
const fresh = makeToken({ sub: USER }, 'fresh');
const running = [];

afterEach(async () => {
  for (const c of running.splice(0)) await c.stop();
  FakeWebSocket.reset();
});

async function setup(options = {}) {
  const server = new FakeServer();
  const clock = new FakeClock();
  const client = await Client.open({
    url: BASE_URL,
    token,
    fetch: server.fetch,
    now: clock.now,
    sleep: clock.sleep,
    random: () => 0.5,
    WebSocket: FakeWebSocket,
    ...options,
  });
  running.push(client);
  return { server, clock, client };
}


/** Start, answer the first sync's pull at `checkpoint`, and open the socket. */
async function live(server, client, checkpoint = '10') {
  const made = FakeWebSocket.next();
  client.start();
  const first = await server.next();
  assert.deepEqual([first.method, first.path, first.query], ['GET', '/sync', { limit: '1000' }], 'start syncs first');
  first.respond(200, page([], { cursor: `c${checkpoint}`, checkpoint }));
  const ws = await made;
  ws.open();
  await statusWhen(client, (s) => s.live === 'socket');
  return ws;
}

test('start syncs, opens /live with the bearer subprotocol, and pulls on pokes above the checkpoint', async () => {
  const { server, client } = await setup();
  const ws = await live(server, client);
  assert.equal(ws.url, 'ws://edgesync.test/live');
  assert.deepEqual(ws.protocols, ['edgesync', `bearer.${token}`]);
  ws.message({ type: 'poke', checkpoint: '10' });
  ws.message('pong');
  ws.message('{"type":"hello"}');
  ws.message({ type: 'poke', checkpoint: '12' });
  const req = await server.next();
  assert.deepEqual(req.query, { limit: '1000', since: 'c10' });
  assert.equal(server.log.length, 2, 'the poke at the local checkpoint made no request');
  req.respond(200, page([{ id: A, title: 'a' }], { cursor: 'c12', checkpoint: '12' }));
  assert.equal((await statusWhen(client, (s) => s.checkpoint === 12)).live, 'socket');
  assert.equal((await client.get('entries', A)).title, 'a');
  await client.stop();
  assert.equal(ws.closed, 1000);
  assert.equal((await statusWhen(client, (s) => s.live === 'off')).live, 'off');
});

test('a poke the page falls short of is followed by a waiting pull', async () => {
  const { server, client } = await setup();
  const ws = await live(server, client);
  ws.message({ type: 'poke', checkpoint: '20' });
  (await server.next()).respond(200, page([], { cursor: 'c15', checkpoint: '15' }));
  const waiting = await server.next();
  assert.deepEqual(waiting.query, { limit: '1000', since: 'c15', wait: '25' });
  waiting.respond(200, page([{ id: B, title: 'b' }], { cursor: 'c20', checkpoint: '20' }));
  await statusWhen(client, (s) => s.checkpoint === 20);
});

test('the socket is pinged, and pulled at least every safetyPullMs without pokes', async () => {
  const { server, clock, client } = await setup({ heartbeatMs: 25_000, safetyPullMs: 60_000 });
  const ws = await live(server, client);
  await clock.nextSleep(25_000);
  for (const n of [1, 2]) {
    clock.advance(25_000);
    await clock.nextSleep(25_000); // the next beat is set: this one is done
    assert.equal(ws.sent.length, n);
  }
  assert.deepEqual(ws.sent, ['ping', 'ping']);
  assert.equal(server.log.length, 1, 'no pull before 60 s');
  clock.advance(25_000);
  const safety = await server.next();
  assert.deepEqual(safety.query, { limit: '1000', since: 'c10' });
  assert.equal(ws.sent.length, 3);
  safety.respond(200, page([], { cursor: 'c10', checkpoint: '10' }));
});

test('close 4001 refreshes the token and reconnects with the fresh one', async () => {
  let refreshes = 0;
  const { server, client } = await setup({
    refreshToken: async () => {
      refreshes += 1;
      return fresh;
    },
  });
  const ws = await live(server, client);
  const next = FakeWebSocket.next();
  ws.serverClose(4001, 'token expired');
  const sync = await server.next();
  assert.equal(sync.headers.authorization, `Bearer ${fresh}`);
  sync.respond(200, page([], { cursor: 'c10', checkpoint: '10' }));
  const again = await next;
  assert.deepEqual(again.protocols, ['edgesync', `bearer.${fresh}`]);
  assert.equal(refreshes, 1);
});

test('without a WebSocket the loop long-polls, and stop() cuts the wait short', async () => {
  const { server, client } = await setup({ WebSocket: null });
  client.start();
  (await server.next()).respond(200, page([], { cursor: 'c1', checkpoint: '1' }));
  const held = await server.next();
  assert.deepEqual(held.query, { limit: '1000', since: 'c1', wait: '25' });
  assert.equal((await statusWhen(client, (s) => s.live === 'long-poll')).state, 'idle', 'a waiting pull is not "pulling"');
  held.respond(200, page([{ id: A, title: 'a' }], { cursor: 'c2', checkpoint: '2' }));
  const sync = await server.next();
  assert.deepEqual(sync.query, { limit: '1000', since: 'c2' }, 'then a plain sync, and again');
  sync.respond(200, page([], { cursor: 'c2', checkpoint: '2' }));
  const held2 = await server.next();
  assert.equal(held2.query.wait, '25');
  await client.stop();
  assert.ok(held2.signal.aborted);
  assert.equal((await statusWhen(client, (s) => s.live === 'off')).lastError, null);
});

test('a handshake that never answers is given up after timeoutMs, and the loop long-polls', async () => {
  const { server, clock, client } = await setup(); // timeoutMs: 30 s
  const made = FakeWebSocket.next();
  client.start();
  (await server.next()).respond(200, page([], { cursor: 'c1', checkpoint: '1' }));
  const ws = await made; // neither opens nor fails: a proxy holding the handshake
  await clock.nextSleep(30_000);
  clock.advance(30_000);
  const held = await server.next();
  assert.equal(held.query.wait, '25', 'a long-poll instead of waiting for ever');
  assert.equal(ws.closed, 1000, 'the stalled socket is closed');
  assert.equal((await statusWhen(client, (s) => s.live === 'long-poll')).live, 'long-poll');
  held.respond(200, page([], { cursor: 'c1', checkpoint: '1' }));
});

test('a new token (or the network coming back) cuts a stalled handshake short and syncs at once', async () => {
  const { server, client } = await setup();
  let made = FakeWebSocket.next();
  client.start();
  (await server.next()).respond(200, page([], { cursor: 'c1', checkpoint: '1' }));
  const stalled = await made;
  made = FakeWebSocket.next();
  await client.setToken(fresh);
  const again = await server.next();
  assert.deepEqual([again.path, again.query.since], ['/sync', 'c1'], 'a sync at once, no clock advanced');
  assert.equal(again.headers.authorization, `Bearer ${fresh}`);
  again.respond(200, page([], { cursor: 'c1', checkpoint: '1' }));
  const next = await made;
  assert.equal(stalled.closed, 1000);
  assert.deepEqual(next.protocols, ['edgesync', `bearer.${fresh}`]);
});

test('a socket that cannot open falls back to a long-poll, then the socket is tried again', async () => {
  const { server, clock, client } = await setup();
  let made = FakeWebSocket.next();
  client.start();
  (await server.next()).respond(200, page([], { cursor: 'c1', checkpoint: '1' }));
  (await made).fail();
  let held = await server.next();
  assert.equal(held.query.wait, '25');
  assert.equal((await statusWhen(client, (s) => s.live === 'long-poll')).live, 'long-poll');
  held.respond(200, page([{ id: A, title: 'a' }], { cursor: 'c2', checkpoint: '2' }));
  made = FakeWebSocket.next();
  (await server.next()).respond(200, page([], { cursor: 'c2', checkpoint: '2' }));
  (await made).fail();
  held = await server.next();
  const requests = server.log.length;
  held.respond(200, page([], { cursor: 'c2', checkpoint: '2' }));
  // an empty answer at once (a server that does not wait): back off before the next round
  await clock.nextSleep(375);
  assert.equal(server.log.length, requests);
  clock.advance(375);
  made = FakeWebSocket.next();
  (await server.next()).respond(200, page([], { cursor: 'c2', checkpoint: '2' }));
  (await made).open();
  await statusWhen(client, (s) => s.live === 'socket');
  assert.equal(FakeWebSocket.made.length, 3);
});

test('a local write while live is pushed at once, and again after the backoff when that fails', async () => {
  const { server, clock, client } = await setup({ backoffBaseMs: 1000 });
  await live(server, client);
  await client.put('entries', A, { title: 'a' });
  const push = await server.next();
  assert.deepEqual([push.method, push.path, push.body.mutations.map((m) => m.op_id)], ['POST', '/upload', [1]]);
  push.respond(503, errorBody('database_unavailable'));
  await clock.nextSleep(750);
  clock.advance(750);
  const retry = await server.next();
  assert.equal(retry.path, '/upload');
  retry.respond(200, { results: [{ op_id: 1, status: 'applied' }], last_op_id: 1, write_checkpoint: '11' });
  await statusWhen(client, (s) => s.outboxLength === 0 && s.awaitingCheckpoint === 1);
});

test('a socket closed at once is retried after a backoff; one that lived reconnects at once', async () => {
  const { server, clock, client } = await setup({ backoffBaseMs: 1000, heartbeatMs: 25_000 });
  const ws = await live(server, client);
  let made = FakeWebSocket.next();
  ws.serverClose(1006);
  await clock.nextSleep(750);
  assert.equal(server.log.length, 1, 'nothing before the backoff');
  clock.advance(750);
  (await server.next()).respond(200, page([], { cursor: 'c10', checkpoint: '10' }));
  const second = await made;
  second.open();
  await statusWhen(client, (s) => s.live === 'socket');
  await clock.nextSleep(25_000);
  clock.advance(25_000);
  made = FakeWebSocket.next();
  second.serverClose(1001, 'going away');
  (await server.next()).respond(200, page([], { cursor: 'c10', checkpoint: '10' }));
  await made;
  assert.equal(clock.pending(750).length, 0, 'no backoff after a healthy socket');
});

test("the browser's online event ends the backoff at once", async () => {
  const target = new EventTarget();
  globalThis.addEventListener = target.addEventListener.bind(target);
  globalThis.removeEventListener = target.removeEventListener.bind(target);
  try {
    const { server, clock, client } = await setup({ WebSocket: null, backoffBaseMs: 10_000 });
    client.start();
    (await server.next()).fail('network is down');
    await statusWhen(client, (s) => s.state === 'offline' && s.retryInMs > 0);
    await clock.nextSleep();
    const before = clock.now();
    target.dispatchEvent(new Event('online'));
    const again = await server.next();
    assert.equal(again.path, '/sync');
    assert.equal(clock.now(), before, 'no time passed');
    again.respond(200, page([], { cursor: 'c1', checkpoint: '1' }));
    await client.stop();
  } finally {
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
  }
});

test('close 4001 with a failing refresh hook backs off instead of spinning', async () => {
  const { server, clock, client } = await setup({
    refreshToken: async () => {
      throw new Error('signed out');
    },
  });
  const ws = await live(server, client);
  ws.serverClose(4001);
  await clock.nextSleep(375);
  assert.equal(server.log.length, 1, 'no request before the backoff');
  assert.equal(FakeWebSocket.made.length, 1, 'no socket before the backoff');
  const made = FakeWebSocket.next();
  clock.advance(375);
  (await server.next()).respond(200, page([], { cursor: 'c10', checkpoint: '10' }));
  assert.deepEqual((await made).protocols, ['edgesync', `bearer.${token}`]);
});
