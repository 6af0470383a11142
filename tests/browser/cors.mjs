// CORS in a real browser: headless Chromium (Debian's), driven by playwright-core.
//
// Run by tests/browser.rs, which starts nothing itself: the stack is running, and this
// script gets one JSON argument:
//   {nodeModules, chromium, args, functionsUrl, embedEntryUrl, token, clientId, entryId}
// (`nodeModules`: where `cargo xtask setup` installed playwright-core, in the tool cache).
// It serves a page from its own origin (node:http on 127.0.0.1, a free port), opens it
// as http://127.0.0.1:<port> (an allowed origin: the stack allows any local port) and
// as http://blocked.test:<port> (mapped to 127.0.0.1 by Chromium's resolver rules, and
// not allowed), runs fetch() calls in each page, and prints what each call saw as one
// JSON object on stdout. The Rust test judges it; this script only reports.

import http from "node:http";
import { createRequire } from "node:module";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

const cfg = JSON.parse(process.argv[2]);
const { chromium } = createRequire(join(cfg.nodeModules, "noop.js"))("playwright-core");

const server = http.createServer((req, res) => {
  res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
  res.end("<!doctype html><meta charset=utf-8><title>edgesync CORS test</title><p>edgesync CORS test page</p>");
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const port = server.address().port;

const userDataDir = await mkdtemp(join(tmpdir(), "edgesync-chromium-"));
const started = Date.now();
let browser;
try {
  // A fresh --user-data-dir: playwright takes it as launchPersistentContext's argument.
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: cfg.chromium,
    args: [...cfg.args, "--host-resolver-rules=MAP blocked.test 127.0.0.1"],
    headless: true,
    timeout: 60_000,
  });
  browser = context;

  // Every call in the page returns what the page could see of the answer.
  const calls = async ({ base, embedEntryUrl, token, clientId, entryId }) => {
    const see = async (name, url, init) => {
      try {
        const r = await fetch(url, init);
        const text = await r.text();
        let body = null;
        try {
          body = JSON.parse(text);
        } catch {}
        return {
          name,
          status: r.status,
          request_id: r.headers.get("x-request-id"),
          content_type: r.headers.get("content-type"),
          body,
        };
      } catch (e) {
        return { name, rejected: e.name, message: String(e.message) };
      }
    };
    const auth = { authorization: `Bearer ${token}` };
    const json = { ...auth, "content-type": "application/json" };
    const upload = {
      client_id: clientId,
      mutations: [{ op_id: 1, op: "PUT", type: "entries", id: entryId, data: { title: "written from a browser" } }],
    };
    return [
      await see("sync", `${base}/sync?tables=entries`, { headers: auth }),
      await see("upload", `${base}/upload`, { method: "POST", headers: json, body: JSON.stringify(upload) }),
      await see("search", `${base}/search`, { method: "POST", headers: json, body: JSON.stringify({ query: "a browser" }) }),
      // The embeddings Worker on its own (as deployed without the gateway).
      await see("search_alone", `${embedEntryUrl}/search`, {
        method: "POST",
        headers: json,
        body: JSON.stringify({ query: "a browser" }),
      }),
      await see("invalid_sync", `${base}/sync?limit=lots`, { headers: auth }),
      // A simple request (no preflight): the 401 must be readable too.
      await see("no_token", `${base}/sync`, {}),
      await see("health", `${base}/health`, {}),
    ];
  };

  const run = async (origin) => {
    const page = await context.newPage();
    await page.goto(`${origin}/`, { timeout: 30_000 });
    const results = await page.evaluate(calls, {
      base: cfg.functionsUrl,
      embedEntryUrl: cfg.embedEntryUrl,
      token: cfg.token,
      clientId: cfg.clientId,
      entryId: cfg.entryId,
    });
    const seenOrigin = await page.evaluate(() => location.origin);
    await page.close();
    return { origin: seenOrigin, results };
  };

  const allowed = await run(`http://127.0.0.1:${port}`);
  const blocked = await run(`http://blocked.test:${port}`);
  const version = context.browser()?.version() ?? "chromium";
  await context.close();
  browser = undefined;
  console.log(JSON.stringify({ chromium: version, elapsed_ms: Date.now() - started, allowed, blocked }));
} finally {
  if (browser) await browser.close().catch(() => {});
  server.close();
  await rm(userDataDir, { recursive: true, force: true });
}
