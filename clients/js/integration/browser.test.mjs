// The example web app (examples/web, built by `cargo xtask test`) in a real browser:
// Debian's Chromium driven by playwright-core, two browser profiles as two devices of
// one user. The app is served from its own origin (node:http on 127.0.0.1, a free
// port), so every call to the functions is a CORS request. Run by tests/js_client.rs.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { readFile, mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { extname, join, normalize } from 'node:path';
import { after, before, test } from 'node:test';
import { browserConfig, database, eventually, newUser, stack } from './stack.mjs';

const cfg = browserConfig();
const { chromium } = createRequire(join(cfg.nodeModules, 'noop.js'))('playwright-core');
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.map': 'application/json' };

let server;
let origin;
const cleanup = [];

before(async () => {
  // Every file may be cached for an hour: a device that is offline opens the app
  // again from the browser's cache, as an installed web app would.
  server = http.createServer(async (req, res) => {
    const path = normalize(new URL(req.url, 'http://x').pathname).replace(/^(\.\.[/\\])+/, '');
    try {
      const body = await readFile(join(cfg.exampleDist, path === '/' ? 'index.html' : path));
      res.writeHead(200, { 'content-type': TYPES[extname(path)] ?? 'text/html', 'cache-control': 'max-age=3600' });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin = `http://127.0.0.1:${server.address().port}`;
});

after(async () => {
  for (const c of cleanup.reverse()) await c();
  server?.close();
});

/** A device: a browser profile of its own (a fresh --user-data-dir) with the app open. */
async function device(token) {
  const dir = await mkdtemp(join(tmpdir(), 'edgesync-device-'));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: cfg.chromium,
    args: cfg.args,
    headless: true,
    timeout: 60_000,
  });
  cleanup.push(async () => {
    await context.close();
    await rm(dir, { recursive: true, force: true });
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  const url = `${origin}/?${new URLSearchParams({ url: stack.functions_url, token })}`;
  await page.goto(url);
  await page.locator('#live-mode', { hasText: 'socket' }).waitFor({ timeout: 20_000 });
  return { context, page, url, errors };
}

const entry = (page, title) => page.locator('#entries li', { has: page.locator('.title', { hasText: title }) });
const outbox = async (page) => Number(await page.locator('#outbox').textContent());

async function add(page, title, body, tags) {
  await page.fill('#new-entry [name=title]', title);
  await page.fill('#new-entry [name=body]', body);
  await page.fill('#new-entry [name=tags]', tags);
  await page.click('#new-entry button[type=submit]');
  await entry(page, title).waitFor();
}

async function retitle(page, from, to) {
  const li = entry(page, from);
  await li.locator('input[name=title]').fill(to);
  await li.locator('button.save').click();
  await entry(page, to).waitFor();
}

test('two devices of one user: offline writes persist, arrive live, conflict and survive a rebuild', async (t) => {
  const user = newUser();
  const other = newUser();
  const db = await database();
  cleanup.push(() => db.end());
  // Another user's row, there before either device opens: it must never appear.
  await db.query(
    `insert into public.entries (id, user_id, title, body_markdown, tags)
     values ($1, $2, 'the other user''s row', '', '{}')`,
    [randomUUID(), other.id],
  );

  const a = await device(user.token);
  const b = await device(user.token);

  await t.test('a write on A reaches B through the live channel', async () => {
    const started = Date.now();
    await add(a.page, 'hello from A', 'the *first* entry', 'intro, demo');
    await entry(b.page, 'hello from A').waitFor({ timeout: 10_000 });
    console.log(`browser: A's write shown on B after ${Date.now() - started} ms`);
    assert.deepEqual(await entry(b.page, 'hello from A').locator('.tag').allTextContents(), ['intro', 'demo']);
  });

  await t.test('A goes offline, writes, opens the app again: the write persists in IndexedDB', async () => {
    await a.context.setOffline(true);
    await a.page.locator('#online[data-online=false]').waitFor();
    await add(a.page, 'written offline', 'while the network was gone', 'offline');
    // Concurrently, both edit the same entry: A offline, B online (pushed at once).
    await retitle(a.page, 'hello from A', "A's edit");
    await retitle(b.page, 'hello from A', "B's edit");
    await b.page.locator('#outbox', { hasText: /^0$/ }).waitFor();
    assert.equal(await outbox(a.page), 2);
    await a.page.goto(a.url); // offline: the app from the HTTP cache, the data from IndexedDB
    await entry(a.page, 'written offline').waitFor();
    await entry(a.page, "A's edit").waitFor();
    assert.equal(await outbox(a.page), 2, 'the outbox did not survive opening the app again');
  });

  await t.test('A comes back online: B receives its writes live, and A shows the conflict', async () => {
    await a.context.setOffline(false);
    await a.page.locator('#outbox', { hasText: /^0$/ }).waitFor({ timeout: 20_000 });
    await entry(b.page, 'written offline').waitFor({ timeout: 10_000 });
    // Last write wins: A's edit came later, and A's conflict log names B's version.
    await entry(b.page, "A's edit").waitFor({ timeout: 10_000 });
    const conflict = a.page.locator('#conflicts li');
    await conflict.first().waitFor({ timeout: 10_000 });
    assert.match(await conflict.first().textContent(), /replaced another device's “B's edit”/);
  });

  await t.test('a forced 410 rebuild keeps the writes not yet sent', async () => {
    // Uploads fail for now (the write stays unsent), pulls go through.
    await a.page.route('**/upload', (route) => route.abort('internetdisconnected'));
    await add(a.page, 'unsent during the rebuild', '', '');
    await db.query(
      `insert into edgesync.purge_horizons (user_id, horizon, purged_xid)
       values ($1, edgesync.sync_position(), edgesync.sync_position())
       on conflict (user_id) do update set horizon = excluded.horizon, purged_xid = excluded.purged_xid`,
      [user.id],
    );
    // The live loop is stopped, so this pull is the one that meets the 410; the failed
    // upload's backoff is forgotten.
    const pulled = await a.page.evaluate(async () => {
      await window.edgesync.stop();
      window.edgesync.resetBackoff();
      return window.edgesync.pull();
    });
    assert.equal(pulled.resynced, true, 'the pull did not rebuild');
    await entry(a.page, 'unsent during the rebuild').waitFor();
    await entry(a.page, 'written offline').waitFor();
    assert.ok((await outbox(a.page)) >= 1, 'the rebuild dropped the unsent write');
    await a.page.unroute('**/upload');
    await a.page.evaluate(() => {
      window.edgesync.resetBackoff();
      window.edgesync.start();
    });
    await entry(b.page, 'unsent during the rebuild').waitFor({ timeout: 10_000 });
  });

  await t.test('search finds an entry by its meaning', async () => {
    // The entry's embedding is made after its write (the webhook, then embed_entry;
    // a job the webhook missed is the Cron's, run here as the drain it calls): wait
    // until its latest version is embedded and no job is left for it.
    await eventually('the entry to be embedded', async () => {
      const drain = await fetch(`${stack.functions_url}/embed_entry/drain`, {
        method: 'POST',
        headers: { authorization: `Bearer ${stack.service_role_key}` },
      });
      assert.equal(drain.status, 200, await drain.text());
      const { rows } = await db.query(
        `select count(*)::int as n from public.entries e
          where e.user_id = $1 and e.title = 'A''s edit' and e.embedding is not null
            and not exists (select from edgesync.embedding_jobs j where j.entry_id = e.id)`,
        [user.id],
      );
      return rows[0].n === 1;
    });
    await a.page.fill('#search [name=query]', "A's edit: the first entry");
    await a.page.click('#search button[type=submit]');
    const results = a.page.locator('#search-results');
    await results.locator('li', { hasNotText: 'searching' }).first().waitFor();
    assert.match(await results.locator('li').first().textContent(), /^A's edit \(0\.\d\d\)$/);
  });

  await t.test("the other user's data never appears, and no page failed", async () => {
    for (const d of [a, b]) {
      assert.equal(await d.page.getByText("the other user's row").count(), 0);
      assert.deepEqual(d.errors, []);
    }
    if (process.env.EDGESYNC_SCREENSHOT) await a.page.screenshot({ path: process.env.EDGESYNC_SCREENSHOT, fullPage: true });
  });
});
