// GET /sync: the query rules, the `edgesync_pull` arguments and the answer, ported from
// shared/src/sync.rs.

import { decodeCursor, encodeCursor, NIL_ID, parseU64, tablesFingerprint, type Cursor } from "./cursor";
import { ApiError, rustTrim, truncate } from "./errors";
import { parseUuid } from "./auth";

export const PULL_RPC = "edgesync_pull";
export const DEFAULT_LIMIT = 1000;
export const MAX_LIMIT = 5000;
export const MAX_PAGE_BYTES = 4 * 1024 * 1024;
export const MAX_TABLES = 64;

export interface PullRequest {
  /** Sorted, without duplicates; null means every synced table. */
  tables: string[] | null;
  since: Cursor | null;
  limit: number;
}

/** The same rule the SQL registry uses for table names. */
export function validTableName(name: string): boolean {
  return /^[a-z_][a-z0-9_]{0,62}$/.test(name);
}

export function parsePullQuery(query: string): PullRequest {
  const given: Record<"since" | "tables" | "limit", string | undefined> = {
    since: undefined,
    tables: undefined,
    limit: undefined,
  };
  for (const [key, value] of parseQuery(query)) {
    if (key !== "since" && key !== "tables" && key !== "limit") {
      throw ApiError.badRequest(
        "invalid_parameter",
        `unknown query parameter \`${truncate(key)}\`; /sync takes since, tables and limit`,
      );
    }
    if (given[key] !== undefined) {
      throw ApiError.badRequest("invalid_parameter", `\`${key}\` is given more than once`);
    }
    given[key] = value;
  }

  let tables: string[] | null = null;
  if (given.tables) {
    const names: string[] = [];
    for (const raw of given.tables.split(",")) {
      const name = rustTrim(raw);
      if (!name) continue;
      if (!validTableName(name)) {
        throw ApiError.badRequest(
          "invalid_parameter",
          `\`${truncate(name)}\` is not a table name (lowercase letters, digits and _)`,
        );
      }
      names.push(name);
    }
    tables = [...new Set(names)].sort();
    if (tables.length === 0) throw ApiError.badRequest("invalid_parameter", "`tables` names no table");
    if (tables.length > MAX_TABLES) {
      throw ApiError.badRequest("invalid_parameter", `at most ${MAX_TABLES} tables per pull`);
    }
  }

  let limit = DEFAULT_LIMIT;
  if (given.limit !== undefined) {
    const n = /^\+?[0-9]+$/.test(given.limit) ? Number(given.limit) : NaN;
    if (!(n >= 1 && n <= MAX_LIMIT)) {
      throw ApiError.badRequest("invalid_parameter", `\`limit\` must be an integer from 1 to ${MAX_LIMIT}`);
    }
    limit = n;
  }

  let since: Cursor | null = null;
  if (given.since) {
    since = decodeCursor(given.since);
    if (since.tables !== tablesFingerprint(tables)) {
      throw ApiError.badRequest(
        "cursor_mismatch",
        "this cursor was issued for a different set of tables; pull the new set without `since`",
      );
    }
  }
  return { tables, since, limit };
}

/** Arguments of the `edgesync_pull` RPC. */
export function pullArgs(pull: PullRequest) {
  return {
    since_txid: (pull.since?.txid ?? 0n).toString(),
    since_id: pull.since?.id ?? NIL_ID,
    since_origin: (pull.since?.origin ?? 0n).toString(),
    tables: pull.tables,
    lim: pull.limit,
    max_bytes: MAX_PAGE_BYTES,
  };
}

/** What `edgesync_pull` answers. */
interface Page {
  changes: Record<string, { upserted: unknown[]; deleted: string[] }>;
  has_more: boolean;
  next_txid: string;
  next_id: string;
  origin: string;
}

/**
 * The /sync body from the RPC's answer: the rows as they came, a new cursor, and
 * `checkpoint` (every version below it has been delivered once this page is applied).
 */
export function pullResponse(pull: PullRequest, answer: unknown) {
  const bad = (what: string) =>
    ApiError.badGateway("upstream_bad_response", `the pull answer has no valid ${what}`);
  const page = answer as Partial<Page> | null;
  if (
    typeof page !== "object" ||
    page === null ||
    Array.isArray(page) ||
    page.changes === undefined ||
    typeof page.has_more !== "boolean" ||
    typeof page.next_txid !== "string" ||
    typeof page.next_id !== "string" ||
    typeof page.origin !== "string"
  ) {
    throw bad("page");
  }
  if (typeof page.changes !== "object" || page.changes === null || Array.isArray(page.changes)) {
    throw bad("changes");
  }
  const txid = parseU64(page.next_txid);
  if (txid === null) throw bad("next_txid");
  const id = parseUuid(page.next_id);
  if (id === null) throw bad("next_id");
  const origin = parseU64(page.origin);
  if (origin === null) throw bad("origin");
  const cursor = encodeCursor({ txid, id, tables: tablesFingerprint(pull.tables), origin });
  return { changes: page.changes, cursor, has_more: page.has_more, checkpoint: txid.toString() };
}

/** Decoded `key=value` pairs; `+` is a space; a bad percent-escape or non-UTF-8 is a 400. */
export function parseQuery(query: string): Array<[string, string]> {
  if (query.length > 8 * 1024) {
    throw ApiError.badRequest("invalid_parameter", "the query string is too long");
  }
  const out: Array<[string, string]> = [];
  for (const part of query.split("&")) {
    if (!part) continue;
    const eq = part.indexOf("=");
    const [k, v] = eq < 0 ? [part, ""] : [part.slice(0, eq), part.slice(eq + 1)];
    out.push([percentDecode(k), percentDecode(v)]);
  }
  return out;
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function percentDecode(s: string): string {
  if (!s.includes("%") && !s.includes("+")) return s;
  const bad = () => ApiError.badRequest("invalid_parameter", "the query string has a bad percent-escape");
  const bytes = new TextEncoder().encode(s);
  const out = new Uint8Array(bytes.length);
  let n = 0;
  for (let i = 0; i < bytes.length; i++) {
    const c = bytes[i]!;
    if (c === 0x2b) {
      out[n++] = 0x20;
    } else if (c === 0x25) {
      const hex = String.fromCharCode(bytes[i + 1] ?? 0x7a, bytes[i + 2] ?? 0x7a);
      // Rust's `u8::from_str_radix` also takes "+f".
      if (!/^(?:[0-9a-fA-F]{2}|\+[0-9a-fA-F])$/.test(hex)) throw bad();
      out[n++] = parseInt(hex, 16);
      i += 2;
    } else {
      out[n++] = c;
    }
  }
  try {
    return strictUtf8.decode(out.subarray(0, n));
  } catch {
    throw bad();
  }
}
