// The /sync cursor, ported exactly from shared/src/cursor.rs so that a client can switch
// between this Worker and the Rust one with the cursors it holds.
//
// base64url (no padding) of `2.<txid>.<id hex>.<tables %08x>.<origin>.<checksum %08x>`,
// the checksum being bits 16..48 of FNV-1a 64 over `edgesync-cursor:<payload>`.
// Version-1 cursors (no origin) still decode, with origin 0.

import { ApiError } from "./errors";

/** The nil UUID: "before every id" at a given txid. */
export const NIL_ID = "00000000-0000-0000-0000-000000000000";
const VERSION = "2";
const MAX_CURSOR_LEN = 200;
const I64_MAX = (1n << 63n) - 1n;
const U64_MAX = (1n << 64n) - 1n;
const U32_MAX = 0xffff_ffffn;

export interface Cursor {
  /** Every version with `_txid` below this has been delivered. */
  txid: bigint;
  /** ... and at `txid`, every id up to this one (lowercase UUID). */
  id: string;
  /** Fingerprint of the table set (`tablesFingerprint`). */
  tables: number;
  /** Where the scan began (0: unknown). */
  origin: bigint;
}

const utf8 = new TextEncoder();

export function encodeCursor(c: Cursor): string {
  const payload = `${VERSION}.${c.txid}.${c.id.replaceAll("-", "")}.${hex8(c.tables)}.${c.origin}`;
  return base64UrlEncode(`${payload}.${hex8(checksum(payload))}`);
}

export function decodeCursor(s: string): Cursor {
  const bad = (why: string) =>
    ApiError.badRequest("invalid_cursor", `the cursor is not valid (${why}); pull again without \`since\``);
  if (utf8.encode(s).length > MAX_CURSOR_LEN) throw bad("too long");
  const raw = base64UrlDecode(s);
  if (raw === null) throw bad("not base64url");
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(raw);
  } catch {
    throw bad("not text");
  }
  const dot = text.lastIndexOf(".");
  if (dot < 0) throw bad("no checksum");
  const payload = text.slice(0, dot);
  const check = text.slice(dot + 1);
  const checkValue = parseRadix(check, 16, U32_MAX);
  if (checkValue === null || Number(checkValue) !== checksum(payload) || check.length !== 8) {
    throw bad("checksum mismatch");
  }
  const parts = payload.split(".");
  let origin: bigint;
  if (parts[0] === "1" && parts.length === 4) {
    origin = 0n;
  } else if (parts[0] === "2" && parts.length === 5) {
    const o = parseRadix(parts[4]!, 10, U64_MAX);
    if (o === null || o > I64_MAX) throw bad("bad origin");
    origin = o;
  } else {
    throw bad("unknown version");
  }
  const txid = parseRadix(parts[1]!, 10, U64_MAX);
  if (txid === null || txid > I64_MAX) throw bad("bad position");
  const hex = parts[2]!;
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw bad("bad id");
  const id = `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`.toLowerCase();
  const tables = parseRadix(parts[3]!, 16, U32_MAX);
  if (tables === null) throw bad("bad table set");
  return { txid, id, tables: Number(tables), origin };
}

/** Which tables a cursor covers: 0 for "every synced table", otherwise a hash of the sorted names. */
export function tablesFingerprint(tables: string[] | null): number {
  if (tables === null) return 0;
  // Low 32 bits, never 0, so an explicit set can't collide with "all".
  return (Number(fnv1a64(utf8.encode(tables.join(","))) & U32_MAX) | 1) >>> 0;
}

function checksum(payload: string): number {
  return Number((fnv1a64(utf8.encode(`edgesync-cursor:${payload}`)) >> 16n) & U32_MAX);
}

const FNV_OFFSET = 0xcbf2_9ce4_8422_2325n;
const FNV_PRIME = 0x0000_0100_0000_01b3n;

function fnv1a64(bytes: Uint8Array): bigint {
  let h = FNV_OFFSET;
  for (const b of bytes) {
    h = ((h ^ BigInt(b)) * FNV_PRIME) & U64_MAX;
  }
  return h;
}

function hex8(n: number): string {
  return (n >>> 0).toString(16).padStart(8, "0");
}

/**
 * An unsigned integer as Rust's `from_str_radix` reads it (an optional `+`, then at
 * least one digit, no overflow past `max`), or null.
 */
export function parseRadix(s: string, radix: 10 | 16, max: bigint): bigint | null {
  const ok = radix === 10 ? /^\+?[0-9]+$/ : /^\+?[0-9a-fA-F]+$/;
  if (!ok.test(s)) return null;
  const digits = s.startsWith("+") ? s.slice(1) : s;
  const value = BigInt(radix === 10 ? digits : `0x${digits}`);
  return value <= max ? value : null;
}

export function parseU64(s: string): bigint | null {
  return parseRadix(s, 10, U64_MAX);
}

function base64UrlEncode(ascii: string): string {
  return btoa(ascii).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const LOOKUP = new Map(Array.from(ALPHABET, (ch, i) => [ch, i] as const));

/**
 * Strict base64url without padding, as Rust's `URL_SAFE_NO_PAD` decodes it: no `=`,
 * no other characters, no impossible length, and unused trailing bits must be zero.
 */
export function base64UrlDecode(s: string): Uint8Array | null {
  if (s.length % 4 === 1) return null;
  const out = new Uint8Array(Math.floor((s.length * 6) / 8));
  let at = 0;
  let buffer = 0;
  let bits = 0;
  for (const ch of s) {
    const v = LOOKUP.get(ch);
    if (v === undefined) return null;
    buffer = (buffer << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[at++] = (buffer >> bits) & 0xff;
    }
    buffer &= (1 << bits) - 1;
  }
  if (buffer !== 0) return null;
  return out.subarray(0, at);
}
