// The protocol's pure rules: reading answers strictly, and the decisions taken on them.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  BackingOffError,
  EdgesyncError,
  ForeignRowError,
  HttpError,
  LocalError,
  NoTokenError,
  OfflineError,
  ProtocolError,
  RefreshError,
  protocol as p,
} from '../dist/index.js';
import { A, B, OTHER, USER, makeToken } from './helpers.mjs';

const entry = (opId) => ({ opId, table: 't', op: 'PUT', id: A, data: null, baseCursor: null, queuedAt: 0, attempts: 0, lastError: null, ackedCheckpoint: null });
const http = (status, code, details = null, message = 'bad') => new HttpError(status, code, message, details);

test('upload answers are read strictly', () => {
  const { acks, writeCheckpoint } = p.parseUpload({
    results: [
      { op_id: 1, status: 'applied' },
      { op_id: 2, status: 'applied', conflict: true, server_row: { id: 'x' } },
      { op_id: 3, status: 'conflict', reason: 'row_missing', server_row: null },
    ],
    last_op_id: 3,
    write_checkpoint: '77',
  });
  assert.equal(writeCheckpoint, 77);
  assert.deepEqual(acks[1], { opId: 2, status: 'applied', conflict: true, reason: null, serverRow: { id: 'x' } });
  assert.deepEqual(acks[2], { opId: 3, status: 'conflict', conflict: false, reason: 'row_missing', serverRow: null });
  for (const bad of [
    { results: [], write_checkpoint: 5 },
    { results: [], write_checkpoint: '-5' },
    { results: [], write_checkpoint: '99999999999999999' },
    { results: [{ op_id: 1, status: 'maybe' }], write_checkpoint: '5' },
    { results: [{ op_id: '1', status: 'applied' }], write_checkpoint: '5' },
    { write_checkpoint: '5' },
    null,
    [],
  ]) {
    assert.throws(() => p.parseUpload(bad), ProtocolError, JSON.stringify(bad));
  }
});

test('pages are read strictly', () => {
  const page = p.parsePage({ changes: { entries: { upserted: [{ id: 'a' }], deleted: ['b'] } }, cursor: 'c', has_more: true, checkpoint: '9' });
  assert.deepEqual(page, { changes: [{ table: 'entries', upserted: [{ id: 'a' }], deleted: ['b'] }], cursor: 'c', hasMore: true, checkpoint: 9 });
  const ok = { cursor: 'c', has_more: false, checkpoint: '9' };
  for (const bad of [
    { ...ok, changes: { entries: { upserted: [], deleted: [1] } } },
    { ...ok, changes: { entries: { upserted: [{ title: 'no id' }], deleted: [] } } },
    { ...ok, changes: { entries: { upserted: ['row'], deleted: [] } } },
    { ...ok, changes: { _es_meta: { upserted: [], deleted: [] } } },
    { ...ok, changes: { Entries: { upserted: [], deleted: [] } } },
    { ...ok, changes: { entries: { deleted: [] } } },
    { ...ok, changes: [] },
    { changes: {}, cursor: 'c', has_more: false },
    { changes: {}, cursor: 'c', has_more: 'no', checkpoint: '1' },
    { changes: {}, has_more: false, checkpoint: '1' },
    { changes: {}, cursor: 'c', has_more: false, checkpoint: 1 },
  ]) {
    assert.throws(() => p.parsePage(bad), ProtocolError, JSON.stringify(bad));
  }
});

test('rows of another user are found; rows without user_id are not foreign', () => {
  const page = p.parsePage({
    changes: { entries: { upserted: [{ id: A, user_id: USER }, { id: B }], deleted: [] }, notes: { upserted: [{ id: A, user_id: OTHER }], deleted: [] } },
    cursor: 'c',
    has_more: false,
    checkpoint: '1',
  });
  assert.deepEqual(p.foreignRow(page, USER), { table: 'notes', id: A });
  assert.equal(p.foreignRow(page, OTHER)?.table, 'entries');
  assert.equal(p.foreignRow(page, null), null, 'no owner yet: nothing to compare');
});

test('errors that name op_ids reject only those in the batch, once each', () => {
  const err = http(400, 'invalid_mutations', {
    errors: [
      { op_id: 2, code: 'unknown_column', message: 'no', column: 'x' },
      { op_id: 2, code: 'again', message: 'dup' },
      { op_id: 9, code: 'elsewhere', message: 'not ours' },
      { op_id: null, code: 'invalid_op_id', message: 'missing' },
      { op_id: 3 },
    ],
  });
  const batch = [entry(1), entry(2), entry(3)];
  assert.deepEqual(p.namedOpIds(err, batch), [
    [2, 'unknown_column', 'no (column x)'],
    [3, 'invalid_mutations', 'bad'],
  ]);
  assert.deepEqual(p.decideUpload(err, batch), { action: 'reject', rejections: p.namedOpIds(err, batch) });
});

test('an upload error is rejected, halved or kept', () => {
  const two = [entry(1), entry(2)];
  const one = [entry(7)];
  assert.deepEqual(p.decideUpload(http(413, 'body_too_large'), [entry(1), entry(2), entry(3)]), { action: 'halve', batchSize: 1 });
  assert.deepEqual(p.decideUpload(http(400, 'invalid_request'), two), { action: 'halve', batchSize: 1 });
  assert.deepEqual(p.decideUpload(http(422, 'x'), [...two, entry(3), entry(4)]), { action: 'halve', batchSize: 2 });
  assert.deepEqual(p.decideUpload(http(413, 'too_many_mutations', null, 'too many'), one), { action: 'reject', rejections: [[7, 'too_many_mutations', 'too many']] });
  // account-level answers, 5xx, 429 and 4xx that name nothing outside 400/413/422 keep the batch
  for (const code of p.NOT_ABOUT_MUTATIONS) assert.deepEqual(p.decideUpload(http(403, code, { errors: [{ op_id: 1 }] }), two), { action: 'keep' }, code);
  assert.deepEqual(p.decideUpload(http(403, 'forbidden_row'), two), { action: 'keep' });
  assert.deepEqual(p.decideUpload(http(409, 'conflict'), one), { action: 'keep' });
  assert.deepEqual(p.decideUpload(http(503, 'database_unavailable', { errors: [{ op_id: 1 }] }), two), { action: 'keep' });
  assert.deepEqual(p.decideUpload(http(429, 'rate_limited'), two), { action: 'keep' });
  assert.deepEqual(p.decideUpload(new OfflineError('down'), two), { action: 'keep' });
});

test('resync answers rebuild, at most twice per pull', () => {
  assert.ok(p.needsResync(http(410, 'resync_required'), 0));
  assert.ok(p.needsResync(http(400, 'invalid_cursor'), 1));
  assert.ok(p.needsResync(http(400, 'cursor_mismatch'), 0));
  assert.ok(!p.needsResync(http(410, 'resync_required'), 2));
  assert.ok(!p.needsResync(http(410, 'gone'), 0));
  assert.ok(!p.needsResync(http(400, 'invalid_parameter'), 0));
  assert.ok(!p.needsResync(http(409, 'cursor_mismatch'), 0));
  assert.ok(!p.needsResync(new OfflineError('x'), 0));
});

test('the backoff grows exponentially with jitter, honours Retry-After and is capped', () => {
  assert.equal(p.backoffDelay(1, 500, 60_000, 0), 250);
  assert.equal(p.backoffDelay(1, 500, 60_000, 1), 500);
  assert.equal(p.backoffDelay(2, 500, 60_000, 0.5), 750);
  assert.equal(p.backoffDelay(5, 500, 60_000, 0), 4000);
  assert.equal(p.backoffDelay(40, 500, 60_000, 1), 60_000, 'capped at the maximum');
  assert.equal(p.backoffDelay(40, 500, 60_000, 0), 30_000, 'jitter: at least half');
  assert.equal(p.backoffDelay(1, 500, 60_000, 0, 30_000), 30_000, 'Retry-After is a floor');
  assert.equal(p.backoffDelay(1, 500, 60_000, 0, 600_000), 60_000, 'Retry-After is capped at the maximum');
  assert.equal(p.backoffDelay(1, 100, 200, 0, 5000), 1000, '... or at 1 s when the maximum is below');
  assert.ok(p.countsAsFailure(new OfflineError('x')) && p.countsAsFailure(http(500, 'internal')) && p.countsAsFailure(new RefreshError('x')));
  assert.ok(!p.countsAsFailure(new LocalError('invalid', 'x')) && !p.countsAsFailure(new NoTokenError()) && !p.countsAsFailure(new BackingOffError(5)));
});

test('error answers become HttpError with code, message, request id and Retry-After', () => {
  const headers = { 'x-request-id': 'hdr', 'retry-after': ' 7 ' };
  const e = p.httpErrorFrom(503, JSON.stringify({ error: { code: 'database_unavailable', message: 'down', details: { retry_after_secs: 7 }, request_id: 'body' } }), (n) => headers[n] ?? null);
  assert.ok(e instanceof HttpError && e instanceof EdgesyncError);
  assert.deepEqual([e.kind, e.status, e.code, e.serverMessage, e.requestId, e.retryAfterMs], ['http', 503, 'database_unavailable', 'down', 'hdr', 7000]);
  assert.deepEqual(e.details, { retry_after_secs: 7 });
  assert.equal(e.message, '503 database_unavailable: down (request hdr)');
  const raw = p.httpErrorFrom(502, '<html>bad gateway</html>', () => null);
  assert.deepEqual([raw.code, raw.serverMessage, raw.requestId, raw.retryAfterMs, raw.details], ['http_error', '<html>bad gateway</html>', undefined, undefined, null]);
  const fromBody = p.httpErrorFrom(400, JSON.stringify({ error: { code: 'x', message: 'm', details: null, request_id: 'b1' } }), () => null);
  assert.equal(fromBody.requestId, 'b1');
  assert.equal(p.parseRetryAfter('Wed, 21 Oct 2015 07:28:00 GMT'), undefined);
});

test('the sync query: limit, tables as given, since, and wait only with a cursor', () => {
  assert.equal(p.syncQuery(1000, null, null, 25), 'limit=1000');
  assert.equal(p.syncQuery(5, ['sync_entities', 'entries'], 'c-1_', 25), 'limit=5&tables=sync_entities,entries&since=c-1_&wait=25');
  assert.equal(p.syncQuery(5, null, 'c', null), 'limit=5&since=c');
});

test('the token subject is read without verification', () => {
  assert.equal(p.tokenSubject(makeToken({ sub: 'u1' })), 'u1');
  assert.equal(p.tokenSubject(makeToken({ sub: 'Zoë', name: '日本' })), 'Zoë');
  assert.equal(p.tokenSubject('garbage'), null);
  assert.equal(p.tokenSubject('a.!!!.c'), null);
  assert.equal(p.tokenSubject(makeToken({ sub: '' })), null);
  assert.equal(p.tokenSubject(makeToken({ role: 'service_role' })), null);
});

test('overlay: PUT replaces, PATCH merges into a live row, DELETE removes', () => {
  const base = { id: A, title: 't', body: 'b' };
  assert.deepEqual(p.overlay(base, 'PUT', A, { title: 'n' }, USER), { id: A, title: 'n', user_id: USER });
  assert.deepEqual(p.overlay(base, 'PUT', A, { user_id: OTHER }, USER), { id: A, user_id: OTHER }, "the app's own user_id is kept");
  assert.deepEqual(p.overlay(base, 'PATCH', A, { title: 'n', id: B }, null), { id: A, title: 'n', body: 'b' });
  assert.equal(p.overlay(null, 'PATCH', A, { title: 'n' }, null), null);
  assert.equal(p.overlay(base, 'DELETE', A, null, null), null);
  assert.deepEqual(base, { id: A, title: 't', body: 'b' }, 'the base is not changed');
});

test('a crud entry is PowerSync-shaped, with base_cursor only when known', () => {
  assert.deepEqual(p.crudEntry({ ...entry(2), op: 'PATCH', data: { x: 1 }, baseCursor: 'c' }), { op_id: 2, op: 'PATCH', type: 't', id: A, data: { x: 1 }, base_cursor: 'c' });
  assert.deepEqual(p.crudEntry({ ...entry(4), op: 'DELETE' }), { op_id: 4, op: 'DELETE', type: 't', id: A });
});

test('ids and table names are checked as the server checks them', () => {
  assert.ok(p.validId(A) && p.validId(A.toUpperCase()));
  for (const bad of ['', 'not-a-uuid', `${A}0`, A.replace(/-/g, '_'), 42]) assert.ok(!p.validId(bad), String(bad));
  assert.ok(p.validTable('entries') && p.validTable('_x1') && p.validTable('a'.repeat(63)));
  for (const bad of ['Entries', '1x', '_es_outbox', 'sqlite_master', 'a'.repeat(64), 'a-b', '']) assert.ok(!p.validTable(bad), bad);
});

test('pokes are read; anything else is not a poke', () => {
  assert.equal(p.parsePoke('{"type":"poke","checkpoint":"42"}'), 42);
  for (const other of ['pong', '{"type":"poke","checkpoint":42}', '{"type":"hello"}', 'nope', 7]) assert.equal(p.parsePoke(other), null);
});

test('every error class is an EdgesyncError with its kind', () => {
  const cases = [
    [new LocalError('invalid', 'x'), 'local', 'invalid'],
    [new LocalError('storage', 'x'), 'local', 'storage'],
    [new NoTokenError(), 'no_token', 'no_token'],
    [new OfflineError('x'), 'offline', 'offline'],
    [http(404, 'not_found'), 'http', 'not_found'],
    [new ProtocolError('x'), 'protocol', 'protocol'],
    [new ForeignRowError('entries', A), 'foreign_row', 'foreign_row'],
    [new BackingOffError(10), 'backing_off', 'backing_off'],
    [new RefreshError('x'), 'refresh', 'refresh'],
  ];
  for (const [e, kind, code] of cases) {
    assert.ok(e instanceof EdgesyncError && e instanceof Error, kind);
    assert.equal(e.kind, kind);
    assert.equal(e.code, code);
    assert.equal(e.name, e.constructor.name);
  }
  assert.equal(new ForeignRowError('entries', A).message, `the server sent another user's row entries/${A}`);
  assert.equal(new BackingOffError(10).retryInMs, 10);
});
