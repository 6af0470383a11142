// What the integration tests know of the running stack. Run by tests/js_client.rs
// (`cargo xtask test`), which starts nothing here: the stack is up, and the
// environment says where:
//   EDGESYNC_STACK_DIR   the stack's directory (its stack.json: URLs, the JWT secret)
//   EDGESYNC_FAULT_URL   a fault-injecting proxy in front of the functions (tests/faults.rs)
//   EDGESYNC_BROWSER     JSON {nodeModules, chromium, args, exampleDist} for browser.test.mjs
// Without them these tests fail at once: they never pass vacuously.

import { createHmac, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createRequire } from 'node:module';

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests through cargo xtask test`);
  return value;
}

export const stack = JSON.parse(readFileSync(join(required('EDGESYNC_STACK_DIR'), 'stack.json'), 'utf8'));
export const faultUrl = () => required('EDGESYNC_FAULT_URL');
export const browserConfig = () => JSON.parse(required('EDGESYNC_BROWSER'));

const b64url = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

/** A user token for `sub`, signed with the stack's HS256 secret, as Supabase Auth issues. */
export function userToken(sub, ttlSecs = 3600) {
  const now = Math.floor(Date.now() / 1000);
  const claims = {
    iss: stack.jwt_issuer, sub, aud: 'authenticated', exp: now + ttlSecs, iat: now,
    role: 'authenticated', aal: 'aal1', session_id: randomUUID(), is_anonymous: false,
  };
  const head = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url(claims)}`;
  return `${head}.${createHmac('sha256', stack.jwt_secret).update(head).digest('base64url')}`;
}

/** A new user: its id and a token. */
export function newUser() {
  const id = randomUUID();
  return { id, token: userToken(id) };
}

/** A connection to the stack's database as its superuser (`pg`, a devDependency). */
export async function database() {
  const require = createRequire(import.meta.url);
  const pg = require('pg');
  const client = new pg.Client({ connectionString: stack.database_url });
  await client.connect();
  return client;
}

/** Resolve once `check()` is true, polling; fail with `what` after `ms`. */
export async function eventually(what, check, ms = 30_000) {
  const until = Date.now() + ms;
  let last;
  for (;;) {
    try {
      if (await check()) return;
    } catch (e) {
      last = e;
    }
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
