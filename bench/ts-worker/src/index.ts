// edgesync's TypeScript baseline: GET /sync and POST /upload as one Worker on
// @supabase/supabase-js, for the benchmark against the Rust Workers (functions/sync,
// functions/upload). Same rules, limits, status codes, error bodies and cursors; the
// same SQL RPCs (`edgesync_pull`, `edgesync_push`) called with the user's own token,
// so Row Level Security applies. Written the way a TypeScript developer would write
// it: supabase-js for PostgREST, jose for the JWT, JSON in and out.

import { authenticate, requireUser } from "./auth";
import { loadConfig, type Env } from "./config";
import { acceptOrGenerateRequestId, ApiError, errorResponse, privateJson, truncate } from "./errors";
import { rpcResult, supabaseFor, upstreamDeadline } from "./postgrest";
import { parsePullQuery, pullArgs, pullResponse, PULL_RPC } from "./sync";
import { parseUploadBatch, PUSH_RPC, readJsonBody, uploadResponse } from "./upload";

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    const started = Date.now();
    const requestId = acceptOrGenerateRequestId(request.headers.get("x-request-id"));
    const url = new URL(request.url);
    let response: Response;
    try {
      response = await route(request, url, env);
      console.log(`${line(request, url, response.status, started, requestId)}`);
    } catch (e) {
      const err = e instanceof ApiError ? e : ApiError.internal(`unexpected error: ${e}`);
      if (err.status >= 500) console.error(`${line(request, url, err.status, started, requestId)} ${err}`);
      else console.log(`${line(request, url, err.status, started, requestId)} ${err.code}`);
      response = errorResponse(err, requestId);
    }
    response.headers.set("x-request-id", requestId);
    return response;
  },
} satisfies ExportedHandler<Env>;

function line(request: Request, url: URL, status: number, started: number, requestId: string): string {
  return `${request.method} ${url.pathname} ${status} ${Date.now() - started}ms req=${requestId}`;
}

function route(request: Request, url: URL, env: Env): Promise<Response> {
  const path = url.pathname;
  if (path === "/sync" || path === "/sync/") return sync(request, url, env);
  if (path === "/upload" || path === "/upload/") return upload(request, env);
  throw ApiError.notFound(`no such endpoint: ${path}`);
}

function requireMethod(request: Request, allowed: string[]): void {
  if (!allowed.includes(request.method)) throw ApiError.methodNotAllowed(truncate(request.method, 32), allowed);
}

/** GET /sync: one `edgesync_pull` as the user, shaped into `{changes, cursor, has_more, checkpoint}`. */
async function sync(request: Request, url: URL, env: Env): Promise<Response> {
  requireMethod(request, ["GET"]);
  const config = loadConfig(env);
  const verified = await authenticate(request.headers.get("authorization"), config);
  requireUser(verified);
  const pull = parsePullQuery(url.search.slice(1));
  const supabase = supabaseFor(config, verified.token);
  const deadline = upstreamDeadline(config);
  const answer = rpcResult(await supabase.rpc(PULL_RPC, pullArgs(pull)).abortSignal(deadline), deadline, config);
  return privateJson(pullResponse(pull, answer));
}

/** POST /upload: validate the batch, one `edgesync_push` as the user, `{results, last_op_id, write_checkpoint}`. */
async function upload(request: Request, env: Env): Promise<Response> {
  requireMethod(request, ["POST"]);
  const config = loadConfig(env);
  const verified = await authenticate(request.headers.get("authorization"), config);
  const userId = requireUser(verified);
  const body = await readJsonBody(request);
  const batch = parseUploadBatch(body, userId);
  const supabase = supabaseFor(config, verified.token);
  const deadline = upstreamDeadline(config);
  const answer = rpcResult(await supabase.rpc(PUSH_RPC, batch).abortSignal(deadline), deadline, config);
  return privateJson(uploadResponse(answer));
}
