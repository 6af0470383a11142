// The one error type, and its JSON shape: `{"error": {code, message, details, request_id}}`
// (a port of shared/src/error.rs and the error half of functions/_edge).

export class ApiError extends Error {
  constructor(
    public readonly status: number,
    public readonly code: string,
    message: string,
    public readonly details: Record<string, unknown> | null = null,
  ) {
    super(message);
  }

  withDetails(details: Record<string, unknown>): ApiError {
    return new ApiError(this.status, this.code, this.message, details);
  }

  static badRequest(code: string, message: string): ApiError {
    return new ApiError(400, code, message);
  }

  static unauthorized(code: string, message: string): ApiError {
    return new ApiError(401, code, message);
  }

  static forbidden(code: string, message: string): ApiError {
    return new ApiError(403, code, message);
  }

  static notFound(message: string): ApiError {
    return new ApiError(404, "not_found", message);
  }

  static methodNotAllowed(method: string, allowed: string[]): ApiError {
    return new ApiError(405, "method_not_allowed", `method ${method} is not allowed here`, { allowed });
  }

  static badGateway(code: string, message: string): ApiError {
    return new ApiError(502, code, message);
  }

  static unavailable(code: string, message: string): ApiError {
    return new ApiError(503, code, message);
  }

  static internal(message: string): ApiError {
    return new ApiError(500, "internal", message);
  }

  toString(): string {
    return `${this.status} ${this.code}: ${this.message}`;
  }
}

/** The JSON error response, with the headers the Rust Workers add. */
export function errorResponse(err: ApiError, requestId: string): Response {
  const body = {
    error: { code: err.code, message: err.message, details: err.details, request_id: requestId },
  };
  const headers = new Headers({ "content-type": "application/json" });
  if (err.status === 401) headers.set("www-authenticate", "Bearer");
  const retryAfter = err.details?.["retry_after_secs"];
  if (typeof retryAfter === "number" && Number.isInteger(retryAfter) && retryAfter >= 0) {
    headers.set("retry-after", String(retryAfter));
  }
  const allowed = err.details?.["allowed"];
  if (Array.isArray(allowed)) {
    headers.set("allow", allowed.filter((a): a is string => typeof a === "string").join(", "));
  }
  return new Response(JSON.stringify(body), { status: err.status, headers });
}

/** A JSON response that no cache may keep (per-user data). */
export function privateJson(body: unknown): Response {
  return new Response(JSON.stringify(body), {
    headers: { "content-type": "application/json", "cache-control": "no-store" },
  });
}

/** The caller's `x-request-id` when it is a short plain token, otherwise 16 random bytes in hex. */
export function acceptOrGenerateRequestId(incoming: string | null): string {
  if (incoming && incoming.length <= 64 && /^[A-Za-z0-9_-]+$/.test(incoming)) return incoming;
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** At most 64 characters (code points) of `s`, for messages that quote client input. */
export function truncate(s: string, max = 64): string {
  return Array.from(s).slice(0, max).join("");
}

const RUST_WS = "[\\t\\n\\v\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";
const RUST_TRIM = new RegExp(`^${RUST_WS}+|${RUST_WS}+$`, "g");

/** Rust's `str::trim` (Unicode White_Space, which differs from JS's `trim` in U+0085 and U+FEFF). */
export function rustTrim(s: string): string {
  return s.replace(RUST_TRIM, "");
}
