// POST /upload: body rules, the `edgesync_push` arguments and the answer, ported from
// shared/src/upload.rs and the body half of functions/_edge.

import { parseUuid } from "./auth";
import { decodeCursor, parseU64 } from "./cursor";
import { ApiError } from "./errors";
import { validTableName } from "./sync";

export const PUSH_RPC = "edgesync_push";
export const MAX_MUTATIONS = 1000;
export const MAX_BODY_BYTES = 4 * 1024 * 1024;

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

export interface UploadBatch {
  client_id: string;
  /** Normalised: `{op_id, op, type, id, data, base_txid?, base_id?}`. */
  mutations: JsonObject[];
}

export function tooLargeBody(len: number): ApiError {
  return new ApiError(
    413,
    "body_too_large",
    `the body is ${len} bytes; the limit is ${MAX_BODY_BYTES}: split the outbox`,
    { max_bytes: MAX_BODY_BYTES },
  );
}

/**
 * The body of a JSON request: 415 for another content type, 413 over `MAX_BODY_BYTES`
 * (judged by `Content-Length` first, so an oversized upload is not read at all).
 */
export async function readJsonBody(request: Request): Promise<ArrayBuffer> {
  const contentType = request.headers.get("content-type") ?? "";
  if (contentType.split(";")[0]!.trim().toLowerCase() !== "application/json") {
    throw new ApiError(415, "unsupported_media_type", "send the body as application/json");
  }
  const declared = request.headers.get("content-length")?.trim();
  if (declared && /^\+?[0-9]+$/.test(declared) && Number(declared) > MAX_BODY_BYTES) {
    throw tooLargeBody(Number(declared));
  }
  let body: ArrayBuffer;
  try {
    body = await request.arrayBuffer();
  } catch (e) {
    throw ApiError.badRequest("unreadable_body", `the request body could not be read: ${e}`);
  }
  if (body.byteLength > MAX_BODY_BYTES) throw tooLargeBody(body.byteLength);
  return body;
}

const isObject = (v: unknown): v is JsonObject => typeof v === "object" && v !== null && !Array.isArray(v);

/** Parse and check a request body for the signed-in `userId`: every shape error at once. */
export function parseUploadBatch(body: ArrayBuffer, userId: string): UploadBatch {
  if (body.byteLength > MAX_BODY_BYTES) throw tooLargeBody(body.byteLength);
  let value: Json;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(body));
  } catch (e) {
    throw ApiError.badRequest("invalid_json", `the body is not valid JSON: ${e instanceof Error ? e.message : e}`);
  }
  if (!isObject(value)) throw ApiError.badRequest("invalid_request", "the body must be a JSON object");
  const clientId = typeof value.client_id === "string" ? parseUuid(value.client_id) : null;
  if (clientId === null) throw ApiError.badRequest("invalid_request", "`client_id` must be a UUID string");
  const raw = value.mutations;
  if (!Array.isArray(raw)) throw ApiError.badRequest("invalid_request", "`mutations` must be an array");
  if (raw.length > MAX_MUTATIONS) {
    throw new ApiError(
      413,
      "too_many_mutations",
      `${raw.length} mutations in one batch; the limit is ${MAX_MUTATIONS}: split the outbox`,
      { max_mutations: MAX_MUTATIONS },
    );
  }

  const errors: JsonObject[] = [];
  let otherUser = false;
  const seen = new Set<number>();
  const mutations: JsonObject[] = [];
  raw.forEach((m, index) => {
    const checked = checkMutation(index, m, userId, seen);
    if ("problem" in checked) {
      otherUser ||= checked.problem.code === "user_id_mismatch";
      errors.push(checked.problem);
    } else {
      mutations.push(checked.mutation);
    }
  });
  if (errors.length > 0) {
    throw otherUser
      ? new ApiError(403, "user_id_mismatch", "a mutation names another user; user_id comes from your token", {
          errors,
        })
      : new ApiError(400, "invalid_mutations", `${errors.length} invalid mutation(s); nothing was applied`, {
          errors,
        });
  }
  return { client_id: clientId, mutations };
}

function checkMutation(
  index: number,
  m: Json,
  userId: string,
  seen: Set<number>,
): { mutation: JsonObject } | { problem: JsonObject } {
  const fail = (code: string, message: string) => ({
    problem: { index, op_id: isObject(m) ? (m.op_id ?? null) : null, code, message },
  });
  if (!isObject(m)) return fail("invalid_mutation", "a mutation must be a JSON object");
  const opId = m.op_id;
  if (typeof opId !== "number" || !Number.isSafeInteger(opId) || opId < 1) {
    return fail("invalid_op_id", "op_id must be a positive integer");
  }
  if (seen.has(opId)) return fail("duplicate_op_id", `op_id ${opId} appears twice in this batch`);
  seen.add(opId);
  const op = typeof m.op === "string" ? m.op.replace(/[a-z]/g, (c) => c.toUpperCase()) : null;
  if (op !== "PUT" && op !== "PATCH" && op !== "DELETE") return fail("invalid_op", "op must be PUT, PATCH or DELETE");
  if (typeof m.type !== "string" || !validTableName(m.type)) {
    return fail("invalid_type", "type must name a synced table");
  }
  const id = typeof m.id === "string" ? parseUuid(m.id) : null;
  if (id === null) return fail("invalid_id", "id must be a UUID string");
  // PowerSync's CrudEntry calls it `data`; its wire form `opData`.
  // A null `data` is absent, as in the Rust Worker: `opData` is used then.
  const given = m.data ?? m.opData;
  let data: JsonObject;
  if (given === undefined || given === null) data = {};
  else if (isObject(given)) data = given;
  else return fail("invalid_data", "data must be a JSON object");
  // Postgres text and jsonb cannot hold U+0000: the database would refuse the batch
  // with an error that is not about a mutation.
  if (containsNul(data)) {
    return fail("invalid_value", "data contains the NUL character (U+0000), which the database cannot store");
  }
  if ("user_id" in data) {
    const named = data.user_id;
    if ((typeof named === "string" ? parseUuid(named) : null) !== userId) {
      return fail("user_id_mismatch", "data.user_id names another user; leave it out");
    }
  }
  if ("id" in data) {
    const named = data.id;
    if ((typeof named === "string" ? parseUuid(named) : null) !== id) {
      return fail("id_mismatch", "data.id differs from the mutation's id");
    }
  }
  const out: JsonObject = { op_id: opId, op, type: m.type, id, data };
  const base = m.base_cursor;
  if (typeof base === "string") {
    try {
      const c = decodeCursor(base);
      out.base_txid = c.txid.toString();
      out.base_id = c.id;
    } catch (e) {
      return fail("invalid_base_cursor", e instanceof ApiError ? e.message : String(e));
    }
  } else if (base !== undefined && base !== null) {
    return fail("invalid_base_cursor", "base_cursor must be a cursor string");
  }
  return { mutation: out };
}

/** Does a string (or an object key) anywhere in `v` contain U+0000? */
function containsNul(v: Json): boolean {
  if (typeof v === "string") return v.includes("\0");
  if (Array.isArray(v)) return v.some(containsNul);
  if (isObject(v)) return Object.entries(v).some(([k, x]) => k.includes("\0") || containsNul(x));
  return false;
}

/**
 * The /upload body from the RPC's answer. `write_checkpoint` is one past the pushing
 * transaction's id: a /sync whose `checkpoint` has reached it contains this batch.
 */
export function uploadResponse(answer: unknown) {
  const bad = (what: string) =>
    ApiError.badGateway("upstream_bad_response", `the push answer has no valid ${what}`);
  if (!isObject(answer as Json) || !Array.isArray((answer as JsonObject).results)) throw bad("results");
  const a = answer as JsonObject;
  const lastOpId = a.last_op_id;
  if (typeof lastOpId !== "number" || !Number.isInteger(lastOpId) || lastOpId < 0) throw bad("last_op_id");
  const checkpoint = typeof a.checkpoint === "string" ? parseU64(a.checkpoint) : null;
  if (checkpoint === null) throw bad("checkpoint");
  return { results: a.results, last_op_id: lastOpId, write_checkpoint: (checkpoint + 1n).toString() };
}
