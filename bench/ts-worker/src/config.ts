// Settings, with the same names and rules as shared/src/config.rs. A missing or
// malformed one is a 503 `misconfigured` naming the setting (never its value).

import { ApiError } from "./errors";

export interface Env {
  SUPABASE_URL?: string;
  /** A bare PostgREST (no `/rest/v1` prefix), as in the local stack. */
  POSTGREST_URL?: string;
  SUPABASE_JWT_SECRET?: string;
  SUPABASE_JWKS_URL?: string;
  SUPABASE_JWT_ISSUER?: string;
  SUPABASE_ANON_KEY?: string;
  JWT_LEEWAY_SECS?: string;
  UPSTREAM_TIMEOUT_MS?: string;
}

export interface Config {
  /** What supabase-js is given as the project URL. */
  supabaseUrl: string;
  /** Set when PostgREST is reached without Supabase's gateway (see `supabaseFor`). */
  postgrestUrl: string | null;
  anonKey: string;
  hs256Secret: string | null;
  jwksUrl: string | null;
  issuer: string | null;
  leewaySecs: number;
  upstreamTimeoutMs: number;
}

const misconfigured = (setting: string, problem: string) =>
  ApiError.unavailable("misconfigured", `the service is misconfigured: setting ${setting}: ${problem}`);

export function loadConfig(env: Env): Config {
  const get = (name: keyof Env) => {
    const v = env[name]?.trim();
    return v ? v : null;
  };
  const supabaseUrl = get("SUPABASE_URL") === null ? null : httpUrl("SUPABASE_URL", get("SUPABASE_URL")!);
  const postgrestUrl = get("POSTGREST_URL") === null ? null : httpUrl("POSTGREST_URL", get("POSTGREST_URL")!);
  if (supabaseUrl === null && postgrestUrl === null) {
    throw misconfigured("SUPABASE_URL", "is not set (set SUPABASE_URL, or POSTGREST_URL for a bare PostgREST)");
  }
  const explicitJwks = get("SUPABASE_JWKS_URL");
  const jwksUrl =
    explicitJwks !== null
      ? httpUrl("SUPABASE_JWKS_URL", explicitJwks)
      : supabaseUrl !== null
        ? `${supabaseUrl}/auth/v1/.well-known/jwks.json`
        : null;
  const hs256Secret = get("SUPABASE_JWT_SECRET");
  if (hs256Secret !== null && hs256Secret.length < 32) {
    throw misconfigured(
      "SUPABASE_JWT_SECRET",
      `is ${hs256Secret.length} characters long; a JWT secret needs at least 32`,
    );
  }
  if (hs256Secret === null && jwksUrl === null) {
    throw misconfigured(
      "SUPABASE_JWT_SECRET",
      "no way to verify tokens: set SUPABASE_JWT_SECRET (HS256) and/or SUPABASE_JWKS_URL or SUPABASE_URL (JWKS)",
    );
  }
  const leeway = get("JWT_LEEWAY_SECS");
  const leewaySecs = leeway === null ? 10 : /^\+?[0-9]+$/.test(leeway) ? Number(leeway) : NaN;
  if (!(leewaySecs <= 300)) {
    throw misconfigured("JWT_LEEWAY_SECS", "must be a whole number of seconds between 0 and 300");
  }
  const timeout = get("UPSTREAM_TIMEOUT_MS");
  const upstreamTimeoutMs = timeout === null ? 10_000 : /^\+?[0-9]+$/.test(timeout) ? Number(timeout) : NaN;
  if (!(upstreamTimeoutMs >= 100 && upstreamTimeoutMs <= 120_000)) {
    throw misconfigured("UPSTREAM_TIMEOUT_MS", "must be a whole number of milliseconds from 100 to 120000");
  }
  // supabase-js needs a key; the Rust Workers send `apikey` only when it is set.
  const anonKey = get("SUPABASE_ANON_KEY");
  if (anonKey === null) throw misconfigured("SUPABASE_ANON_KEY", "is not set, and supabase-js needs it");
  return {
    supabaseUrl: postgrestUrl ?? supabaseUrl!,
    postgrestUrl,
    anonKey,
    hs256Secret,
    jwksUrl,
    issuer: get("SUPABASE_JWT_ISSUER"),
    leewaySecs,
    upstreamTimeoutMs,
  };
}

/** Accept `http(s)://host[:port][/path]`, return it without a trailing slash. */
function httpUrl(setting: string, value: string): string {
  const rest = value.startsWith("https://")
    ? value.slice(8)
    : value.startsWith("http://")
      ? value.slice(7)
      : null;
  if (rest === null) throw misconfigured(setting, "must start with http:// or https://");
  const host = rest.split("/")[0]!;
  if (!host || /[\s@?#]/u.test(host)) {
    throw misconfigured(setting, "must be a URL with a host, like https://abc.supabase.co");
  }
  if (/[?#\s]/u.test(value)) throw misconfigured(setting, "must not contain a query, fragment or whitespace");
  return value.replace(/\/+$/, "");
}
