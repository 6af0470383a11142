// The storages' transactions, and the local state on top of them (the Rust store's
// tests, ported), run against every storage.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { LocalError, LocalStore, protocol } from '../dist/index.js';
import { IndexedDBStorage } from '../dist/indexeddb.js';
import { SqliteStorage } from '../dist/sqlite.js';
import { A, B, C, USER, backends, deferred } from './helpers.mjs';

const page = (rows, deleted, checkpoint, hasMore = false) => ({
  changes: [{ table: 'entries', upserted: rows, deleted }],
  cursor: `c${checkpoint}`,
  hasMore,
  checkpoint,
});
const ack = (opId, status = 'applied') => ({ opId, status, conflict: false, reason: null, serverRow: null });
const m = (op, id, data) => ({ table: 'entries', op, id, data });

for (const backend of backends) {
  describe(`storage ${backend.name}`, { skip: backend.skip }, () => {
    const opened = [];
    after(async () => {
      for (const s of opened) await s.close?.();
    });
    const open = async () => {
      const storage = await backend.open();
      opened.push(storage);
      const store = new LocalStore(storage, () => 1000);
      await store.claimUser(USER);
      return store;
    };

    test('a transaction that throws writes nothing; a readonly one cannot write', async () => {
      const s = await backend.open();
      await s.transaction('readwrite', async (tx) => {
        await tx.put('meta', 'kept', 1);
      });
      await assert.rejects(
        s.transaction('readwrite', async (tx) => {
          await tx.put('meta', 'lost', 1);
          await tx.put('outbox', 1, { x: 1 });
          await tx.delete('meta', 'kept');
          assert.equal(await tx.get('meta', 'lost'), 1, 'a transaction reads its own writes');
          throw new Error('boom');
        }),
        /boom/,
      );
      await s.transaction('readonly', async (tx) => {
        assert.equal(await tx.get('meta', 'kept'), 1);
        assert.equal(await tx.get('meta', 'lost'), undefined);
        assert.equal(await tx.count('outbox'), 0);
      });
      await assert.rejects(s.transaction('readonly', (tx) => tx.put('meta', 'x', 1)));
      await s.close?.();
    });

    test('values come back in key order, numbers before strings, by prefix, and as copies', async () => {
      const s = await backend.open();
      const value = { n: 1, nested: { list: [1, 2] } };
      await s.transaction('readwrite', async (tx) => {
        for (const k of [10, 2, 1]) await tx.put('outbox', k, { k });
        for (const k of ['b/2', 'a/1', 'b/1', 'ba/1']) await tx.put('rows', k, { k });
        await tx.put('meta', 'v', value);
      });
      value.nested.list.push(3);
      await s.transaction('readwrite', async (tx) => {
        assert.deepEqual((await tx.all('outbox')).map((v) => v.k), [1, 2, 10]);
        assert.deepEqual((await tx.all('rows', 'b/')).map((v) => v.k), ['b/1', 'b/2']);
        assert.deepEqual((await tx.all('rows')).map((v) => v.k), ['a/1', 'b/1', 'b/2', 'ba/1']);
        const got = await tx.get('meta', 'v');
        assert.deepEqual(got, { n: 1, nested: { list: [1, 2] } });
        got.n = 99;
        await tx.clear('rows');
        assert.equal(await tx.count('rows'), 0);
        await tx.put('rows', 'c/1', { k: 'c/1' });
      });
      await s.transaction('readonly', async (tx) => {
        assert.equal((await tx.get('meta', 'v')).n, 1);
        assert.deepEqual((await tx.all('rows')).map((v) => v.k), ['c/1']);
      });
      await s.close?.();
    });

    test('a local write is visible at once and queued with increasing op_ids', async () => {
      const s = await open();
      const changes = [];
      s.onChange((t) => changes.push([...t]));
      assert.equal(await s.queue(m('PUT', A, { title: 'one' })), 1);
      assert.equal(await s.queue(m('PATCH', A, { body: 'x' })), 2);
      assert.equal(await s.queue(m('PUT', B, {})), 3);
      assert.equal(await s.queue(m('DELETE', B, null)), 4);
      assert.deepEqual(await s.get('entries', A), { id: A, title: 'one', body: 'x', user_id: USER });
      assert.equal(await s.get('entries', B), null);
      const pending = await s.pending(10);
      assert.deepEqual(pending.map((e) => e.opId), [1, 2, 3, 4]);
      assert.deepEqual(protocol.crudEntry(pending[1]), { op_id: 2, op: 'PATCH', type: 'entries', id: A, data: { body: 'x' } });
      assert.deepEqual(protocol.crudEntry(pending[3]), { op_id: 4, op: 'DELETE', type: 'entries', id: B });
      assert.deepEqual((await s.pending(2)).map((e) => e.opId), [1, 2]);
      assert.equal((await s.counts()).outbox, 4);
      assert.deepEqual(await s.tables(), ['entries']);
      assert.deepEqual(changes, [['entries'], ['entries'], ['entries'], ['entries']]);
    });

    test('bad local input is refused and writes nothing', async () => {
      const s = await open();
      for (const bad of [
        { table: 'Entries; drop', op: 'PUT', id: A, data: {} },
        { table: '_es_outbox', op: 'PUT', id: A, data: {} },
        { table: 'entries', op: 'PUT', id: 'not-a-uuid', data: {} },
        { table: 'entries', op: 'UPSERT', id: A, data: {} },
        m('PUT', A, { id: B }),
        m('PUT', A, [1, 2]),
      ]) {
        await assert.rejects(s.queue(bad), (e) => e instanceof LocalError && e.code === 'invalid', JSON.stringify(bad));
      }
      assert.deepEqual(await s.counts(), { outbox: 0, awaitingCheckpoint: 0, rejected: 0, conflicts: 0 });
      assert.deepEqual(await s.tables(), []);
      await assert.rejects(s.list('_es_meta'), LocalError);
    });

    test('an acknowledged write stays visible until a pull reaches its checkpoint', async () => {
      const s = await open();
      await s.applyPage(page([{ id: A, title: 'server v1' }], [], 10));
      await s.queue(m('PATCH', A, { title: 'mine' }));
      assert.equal((await s.pending(1))[0].baseCursor, 'c10');
      await s.recordAcks([ack(1)], 20);
      assert.deepEqual(await s.counts(), { outbox: 0, awaitingCheckpoint: 1, rejected: 0, conflicts: 0 });
      assert.deepEqual(await s.pending(10), []);
      let applied = await s.applyPage(page([{ id: A, title: 'server v2' }], [], 15));
      assert.equal(applied.settled, 0);
      assert.equal((await s.get('entries', A)).title, 'mine');
      assert.equal((await s.serverRow('entries', A)).title, 'server v2');
      applied = await s.applyPage(page([{ id: A, title: 'mine' }], [], 20));
      assert.equal(applied.settled, 1);
      assert.deepEqual(await s.counts(), { outbox: 0, awaitingCheckpoint: 0, rejected: 0, conflicts: 0 });
      assert.deepEqual(await s.get('entries', A), { id: A, title: 'mine' });
      assert.equal(await s.cursor(), 'c20');
      assert.equal(await s.checkpoint(), 20);
      assert.equal(await s.meta('last_pull_at'), 1000);
    });

    test('pending writes survive pages that touch their rows', async () => {
      const s = await open();
      await s.queue(m('PUT', A, { title: 'local' }));
      await s.applyPage(page([{ id: A, title: 'server' }], [], 5));
      assert.equal((await s.get('entries', A)).title, 'local');
      await s.queue(m('DELETE', B, null));
      await s.applyPage(page([{ id: B, title: 'server' }], [], 6));
      assert.equal(await s.get('entries', B), null);
      assert.equal((await s.counts()).outbox, 2);
    });

    test('server-kept conflicts and rejections leave the outbox visibly', async () => {
      const s = await open();
      await s.applyPage(page([{ id: A, title: 'server' }], [], 5));
      await s.queue(m('PATCH', A, { title: 'mine' }));
      await s.queue(m('PUT', B, { title: 'bad' }));
      await s.recordAcks([{ opId: 1, status: 'conflict', conflict: false, reason: null, serverRow: { id: A, title: 'server' } }], 9);
      assert.equal((await s.get('entries', A)).title, 'server');
      const r = await s.reject([[2, 'invalid_value', 'no'], [77, 'ignored', 'not in the outbox']]);
      assert.deepEqual(r, [{ opId: 2, table: 'entries', op: 'PUT', id: B, data: { title: 'bad' }, code: 'invalid_value', message: 'no', at: 1000 }]);
      assert.equal(await s.get('entries', B), null);
      assert.deepEqual(await s.counts(), { outbox: 0, awaitingCheckpoint: 0, rejected: 1, conflicts: 1 });
      assert.equal((await s.rejections())[0].code, 'invalid_value');
      assert.deepEqual((await s.conflicts())[0], { seq: 1, opId: 1, table: 'entries', id: A, status: 'conflict', reason: null, serverRow: { id: A, title: 'server' }, at: 1000 });
      await s.clearRejections([2]);
      await s.clearConflicts();
      assert.deepEqual(await s.counts(), { outbox: 0, awaitingCheckpoint: 0, rejected: 0, conflicts: 0 });
    });

    test('a resync drops what the server no longer has and keeps the outbox', async () => {
      const s = await open();
      await s.applyPage(page([{ id: A, title: 'a' }, { id: B, title: 'b' }], [], 5));
      await s.queue(m('PUT', C, { title: 'pending' }));
      await s.beginResync();
      assert.equal(await s.cursor(), null);
      assert.equal(await s.checkpoint(), 0);
      assert.ok(await s.resyncing());
      await s.applyPage(page([{ id: A, title: 'a2' }], [], 7, true));
      assert.ok(await s.get('entries', B), 'rows stay until the rebuild completes');
      const applied = await s.applyPage(page([], [], 8));
      assert.equal(applied.dropped, 1);
      assert.ok(!(await s.resyncing()));
      assert.equal(await s.get('entries', B), null);
      assert.equal((await s.get('entries', A)).title, 'a2');
      assert.equal((await s.get('entries', C)).title, 'pending');
      assert.equal((await s.pending(10)).length, 1);
    });

    test('a page with a bad table or row changes nothing', async () => {
      const s = await open();
      const p = page([{ id: A }], [], 5);
      p.changes.push({ table: '_es_meta', upserted: [], deleted: [] });
      await assert.rejects(s.applyPage(p), LocalError);
      await assert.rejects(s.applyPage(page([{ title: 'no id' }], [], 5)), LocalError);
      assert.equal(await s.cursor(), null);
      assert.equal(await s.get('entries', A), null);
    });

    test('the store belongs to one user', async () => {
      const s = await open();
      await s.claimUser(USER);
      await assert.rejects(s.claimUser('someone-else'), (e) => e instanceof LocalError && /belongs to user/.test(e.message));
      assert.equal(await s.userId(), USER);
    });

    test('a wipe forgets everything, the client id included', async () => {
      const s = await open();
      const id = await s.clientId();
      assert.equal(await s.clientId(), id, 'the client id is stable');
      await s.queue(m('PUT', A, { title: 'x' }));
      await s.wipe();
      assert.deepEqual(await s.list('entries'), []);
      assert.equal(await s.userId(), null);
      assert.deepEqual(await s.counts(), { outbox: 0, awaitingCheckpoint: 0, rejected: 0, conflicts: 0 });
      assert.notEqual(await s.clientId(), id);
    });
  });
}

test('the conflict log keeps the newest 1000', async () => {
  const s = new LocalStore((await backends[0].open()));
  for (let i = 1; i <= 3; i++) await s.queue(m('PUT', A, { n: i }));
  const conflict = (opId) => ({ opId, status: 'applied', conflict: true, reason: null, serverRow: null });
  // 1001 reports (acks naming the same entries again are logged again)
  const acks = Array.from({ length: 1001 }, (_, i) => conflict((i % 3) + 1));
  await s.recordAcks(acks, 5);
  const log = await s.conflicts();
  assert.equal(log.length, protocol.CONFLICT_LOG_LIMIT);
  assert.equal(log[0].seq, 2);
  assert.equal(log.at(-1).seq, 1001);
});

test('a SQLite store survives reopening', { skip: backends[2].skip }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'edgesync-js-'));
  try {
    const path = join(dir, 'device.db');
    const first = new LocalStore(await SqliteStorage.open(path));
    await first.queue(m('PUT', A, { title: 'kept' }));
    const id = await first.clientId();
    await first.storage.close();
    const again = new LocalStore(await SqliteStorage.open(path));
    assert.equal(await again.clientId(), id);
    assert.equal((await again.get('entries', A)).title, 'kept');
    assert.equal(await again.queue(m('DELETE', A, null)), 2);
    await again.storage.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('an IndexedDB store survives reopening, and tells other tabs of its changes', async () => {
  const name = `edgesync-reopen-${process.pid}`;
  const first = new LocalStore(await IndexedDBStorage.open(name));
  const other = new LocalStore(await IndexedDBStorage.open(name));
  const heard = deferred();
  other.onChange((tables) => heard.resolve([...tables]));
  await first.queue(m('PUT', A, { title: 'kept' }));
  assert.deepEqual(await heard.promise, ['entries', '*']);
  assert.equal((await other.get('entries', A)).title, 'kept', 'the other tab reads the same database');
  first.dispose();
  other.dispose();
  await first.storage.close();
  await other.storage.close();
  const again = new LocalStore(await IndexedDBStorage.open(name));
  assert.equal((await again.get('entries', A)).title, 'kept');
  await again.storage.close();
  await IndexedDBStorage.delete(name);
});
