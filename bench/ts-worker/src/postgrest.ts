// supabase-js per request, with the caller's own token (so Row Level Security applies),
// and the one mapping from PostgREST's answers to ApiError (as shared/src/data_api.rs).

import { createClient, type PostgrestError, type SupabaseClient } from "@supabase/supabase-js";
import type { Config } from "./config";
import { ApiError } from "./errors";

/**
 * A client that calls PostgREST as the user holding `token`.
 *
 * The one accommodation for the local stack: supabase-js always puts `/rest/v1` after
 * the project URL, which Supabase's API gateway strips before PostgREST. The local
 * stack runs a bare PostgREST (no gateway, no prefix), so when `POSTGREST_URL` is set
 * supabase-js is given that URL as its base and this `fetch` drops the `/rest/v1`
 * again. Against a real Supabase project (`SUPABASE_URL` only) nothing is rewritten.
 */
export function supabaseFor(config: Config, token: string): SupabaseClient {
  return createClient(config.supabaseUrl, config.anonKey, {
    global: {
      headers: { Authorization: `Bearer ${token}` },
      ...(config.postgrestUrl !== null ? { fetch: withoutRestPrefix(config.postgrestUrl) } : {}),
    },
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
  });
}

function withoutRestPrefix(postgrestUrl: string): typeof fetch {
  const prefix = `${postgrestUrl}/rest/v1`;
  return (input, init) => {
    const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
    if (!url.startsWith(prefix)) return fetch(input, init);
    const local = postgrestUrl + url.slice(prefix.length);
    return input instanceof Request ? fetch(new Request(local, input), init) : fetch(local, init);
  };
}

/** An abort signal that ends an exchange after `UPSTREAM_TIMEOUT_MS`. */
export function upstreamDeadline(config: Config): AbortSignal {
  return AbortSignal.timeout(config.upstreamTimeoutMs);
}

/** The error codes our SQL functions raise (as the `hint` of a `PTxyz` error). */
const SQL_ERROR_CODES = new Set([
  "client_id_taken",
  "continuation_expired",
  "forbidden_row",
  "invalid_mutations",
  "invalid_request",
  "invalid_value",
  "populate_in_progress",
  "resync_required",
  "source_rate_limited",
  "unique_violation",
  "unknown_table",
  "user_id_mismatch",
  "user_required",
]);

/**
 * A supabase-js result as our answer: the data, or the ApiError the client should see
 * (what it can act on; internals such as SQL and hosts stay out).
 */
export function rpcResult<T>(
  result: { data: T | null; error: PostgrestError | null; status: number },
  deadline: AbortSignal,
  config: Config,
): T | null {
  const { data, error, status } = result;
  if (status === 0) {
    // supabase-js turns a failed fetch (or an abort) into status 0.
    if (deadline.aborted) {
      throw new ApiError(
        504,
        "upstream_timeout",
        `the database API did not answer within ${config.upstreamTimeoutMs} ms; a write may still complete, so retry it as it was`,
      );
    }
    throw ApiError.badGateway("upstream_unreachable", "the database API could not be reached");
  }
  if (status >= 200 && status < 300) {
    if (error) throw ApiError.badGateway("upstream_bad_response", "the database API gave an unexpected answer");
    return data;
  }
  const field = (name: "code" | "message" | "hint" | "details") => {
    const v = (error as Record<string, unknown> | null)?.[name];
    return typeof v === "string" ? v : null;
  };
  const code = field("code") ?? "";
  if (status >= 400 && status <= 499 && code.startsWith("PT") && status !== 401) {
    const hint = field("hint");
    const err = new ApiError(
      status,
      hint !== null && SQL_ERROR_CODES.has(hint) ? hint : "rejected",
      field("message") ?? "the request was rejected",
    );
    let details: unknown = null;
    try {
      details = JSON.parse(field("details") ?? "");
    } catch {
      details = null;
    }
    throw typeof details === "object" && details !== null && !Array.isArray(details)
      ? err.withDetails(details as Record<string, unknown>)
      : err;
  }
  if (status === 403 || code === "42501") {
    throw ApiError.forbidden("forbidden", "the database refused this operation for this user");
  }
  if (status === 401) {
    throw ApiError.badGateway(
      "upstream_rejected_token",
      "the database API rejected a token this service accepted; check that both use the same JWT keys",
    );
  }
  if (code === "40P01" || code === "40001") {
    // Aborted to break a deadlock or a serialisation conflict: nothing was written.
    throw new ApiError(
      503,
      "database_busy",
      "the database aborted this request to resolve a conflict with another one; nothing was applied, retry it",
      { retry_after_secs: 1 },
    );
  }
  if (status === 409) throw new ApiError(409, "conflict", "the change conflicts with existing data");
  if (code === "57014") {
    // The role's statement_timeout cancelled it: rolled back, so a retry is safe.
    throw new ApiError(
      504,
      "database_timeout",
      "the database cancelled the request after its time limit; nothing was applied, retry it",
    );
  }
  if (status === 503 || code === "PGRST000" || code === "PGRST001" || code === "PGRST002") {
    throw ApiError.unavailable("database_unavailable", "the database is unavailable");
  }
  if (status === 404 && code.startsWith("PGRST2")) {
    throw ApiError.badGateway(
      "schema_mismatch",
      "the database schema does not match this version of edgesync; apply the migrations in sql/",
    );
  }
  throw ApiError.badGateway("upstream_error", `the database API answered HTTP ${status}`);
}
