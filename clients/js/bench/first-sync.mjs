// Time to first sync in Chromium: a new device of a user with N rows (default 10,000,
// in sync_events)
// opens, pulls everything into IndexedDB, and is settled. Recorded, not asserted.
//
//   EDGESYNC_STACK_DIR=target/stack EDGESYNC_BROWSER='{"nodeModules":…,"chromium":"/usr/bin/chromium","args":[…]}' \
//     node bench/first-sync.mjs [rows] [runs]
//
// (the same environment as the integration tests; see integration/stack.mjs). The page
// loads the built client (dist/) and idb as ES modules, from its own origin.

import { randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import { browserConfig, database, stack, userToken } from '../integration/stack.mjs';

const rows = Number(process.argv[2] ?? 10_000);
const runs = Number(process.argv[3] ?? 3);
const root = fileURLToPath(new URL('..', import.meta.url));
const cfg = browserConfig();
const { chromium } = createRequire(join(cfg.nodeModules, 'noop.js'))('playwright-core');

const page = `<!doctype html><meta charset=utf-8>
<script type=importmap>{"imports": {"idb": "/node_modules/idb/build/index.js"}}</script>
<script type=module>
  import { createClient } from '/dist/index.js';
  import { IndexedDBStorage } from '/dist/indexeddb.js';
  window.firstSync = async (url, token) => {
    const started = performance.now();
    const client = await createClient({ url, token, storage: await IndexedDBStorage.open('bench') });
    const report = await client.sync();
    const n = (await client.list('sync_events')).length;
    return { ms: performance.now() - started, pages: report.pull.pages, rows: n };
  };
</script>`;
const server = http.createServer(async (req, res) => {
  const path = normalize(new URL(req.url, 'http://x').pathname).replace(/^(\.\.[/\\])+/, '');
  if (path === '/') return res.writeHead(200, { 'content-type': 'text/html' }).end(page);
  try {
    const body = await readFile(join(root, path));
    res.writeHead(200, { 'content-type': extname(path) === '.js' ? 'text/javascript' : 'application/octet-stream' });
    res.end(body);
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));

const user = randomUUID();
const db = await database();
// Calendar events, about 400 bytes each: entries would also queue N embedding jobs,
// and the local embeddings server would compete with the browser for the CPU.
await db.query(
  `insert into public.sync_events (user_id, title, description, start_time, end_time, location, properties)
   select $1, 'event ' || i, repeat('description ', 16), now() + make_interval(hours => i), now() + make_interval(hours => i + 1),
          'room ' || (i % 12), jsonb_build_object('n', i, 'kind', 'bench')
     from generate_series(1, $2) i`,
  [user, rows],
);
await db.end();

const figures = [];
for (let run = 0; run < runs; run++) {
  const dir = await mkdtemp(join(tmpdir(), 'edgesync-bench-'));
  const context = await chromium.launchPersistentContext(dir, { executablePath: cfg.chromium, args: cfg.args, headless: true });
  try {
    const tab = context.pages()[0] ?? (await context.newPage());
    await tab.goto(`http://127.0.0.1:${server.address().port}/`);
    await tab.waitForFunction(() => typeof window.firstSync === 'function');
    const r = await tab.evaluate(([url, token]) => window.firstSync(url, token), [stack.functions_url, userToken(user)]);
    if (r.rows !== rows) throw new Error(`the device holds ${r.rows} rows, not ${rows}`);
    figures.push(r);
    console.log(`run ${run + 1}: ${rows} rows in ${r.ms.toFixed(0)} ms (${r.pages} pages)`);
  } finally {
    await context.close();
    await rm(dir, { recursive: true, force: true });
  }
}
server.close();
const sorted = figures.map((f) => f.ms).sort((a, b) => a - b);
console.log(`first sync of ${rows} rows in Chromium: median ${sorted[Math.floor(sorted.length / 2)].toFixed(0)} ms, min ${sorted[0].toFixed(0)}, max ${sorted.at(-1).toFixed(0)} over ${runs} runs`);
