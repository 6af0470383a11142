// Supabase JWT verification with `jose` (Supabase Auth cannot run here, so this is what
// a TypeScript Worker verifying Supabase tokens itself would use). The rules are those
// of shared/src/jwt.rs: HS256 with the project's secret only, ES256/RS256 only through
// the JWKS (cached per isolate, refetched on an unknown `kid` at most once a minute),
// `exp` required, `exp`/`nbf` with the configured leeway, and then by role:
// `authenticated` needs `aud` = authenticated, `iss` when configured and a UUID `sub`;
// `service_role` (only as the HS256 service-role key, naming no user) is accepted here
// and refused by the per-user endpoints; anything else is 403 forbidden_role.

import { createRemoteJWKSet, errors, jwtVerify, type JWTPayload } from "jose";
import type { Config } from "./config";
import { base64UrlDecode } from "./cursor";
import { ApiError, rustTrim, truncate } from "./errors";

export const MAX_TOKEN_LEN = 8 * 1024;

export type Principal = { kind: "user"; userId: string } | { kind: "service_role" };

export interface Verified {
  principal: Principal;
  claims: JWTPayload;
  token: string;
}

const invalid = (message: string) => ApiError.unauthorized("invalid_token", message);
const malformed = (why: string) => invalid(`the token is malformed: ${why}`);
const keysUnavailable = () =>
  ApiError.unavailable("jwks_unavailable", "the signing keys could not be fetched; try again shortly");

/** A canonical lowercase UUID, or null. */
export function parseUuid(s: string): string | null {
  return /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/.test(s)
    ? s.toLowerCase()
    : null;
}

/** The token from an `Authorization` header value: exactly `Bearer <token>`. */
export function bearerToken(header: string | null): string {
  const value = header === null ? "" : rustTrim(header);
  if (!value) throw ApiError.unauthorized("missing_token", "an Authorization: Bearer <token> header is required");
  const space = value.indexOf(" ");
  const badScheme = () => invalid("the Authorization header must be `Bearer <token>`");
  if (space < 0 || value.slice(0, space).toLowerCase() !== "bearer") throw badScheme();
  const token = rustTrim(value.slice(space + 1));
  if (!token) throw badScheme();
  if (new TextEncoder().encode(token).length > MAX_TOKEN_LEN) {
    throw invalid(`the token is longer than ${MAX_TOKEN_LEN} bytes`);
  }
  return token;
}

// One remote key set per JWKS URL for the life of the isolate; jose caches the keys
// (refresh after 10 minutes, an unknown `kid` refetches at most once a minute).
const keySets = new Map<string, ReturnType<typeof createRemoteJWKSet>>();

function remoteKeySet(url: string) {
  let set = keySets.get(url);
  if (!set) {
    set = createRemoteJWKSet(new URL(url), { cooldownDuration: 60_000, cacheMaxAge: 600_000 });
    keySets.set(url, set);
  }
  return set;
}

const secrets = new Map<string, Uint8Array>();

function hmacSecret(secret: string): Uint8Array {
  let key = secrets.get(secret);
  if (!key) {
    key = new TextEncoder().encode(secret);
    secrets.set(secret, key);
  }
  return key;
}

/** Verify a request's `Authorization` header value. */
export async function authenticate(authorization: string | null, config: Config): Promise<Verified> {
  const token = bearerToken(authorization);
  const segments = token.split(".");
  if (segments.length !== 3) throw malformed("a JWT has three dot-separated parts");
  const header = decodeHeader(segments[0]!);
  const alg = header.alg;
  if (typeof alg !== "string") throw malformed("the header has no alg");
  if (alg.toLowerCase() === "none") throw invalid("unsigned tokens (alg none) are not accepted");

  let claims: JWTPayload;
  const options = { requiredClaims: ["exp"], clockTolerance: config.leewaySecs };
  try {
    if (alg === "HS256") {
      // Only the configured secret: never a JWKS key (the confusion attack).
      if (!config.hs256Secret) throw invalid("HS256 tokens are not accepted by this deployment");
      ({ payload: claims } = await jwtVerify(token, hmacSecret(config.hs256Secret), {
        ...options,
        algorithms: ["HS256"],
      }));
    } else if (alg === "ES256" || alg === "RS256") {
      if (!config.jwksUrl) throw invalid("asymmetric tokens are not accepted by this deployment");
      if (typeof header.kid !== "string") throw invalid("the token header has no kid");
      const keySet = remoteKeySet(config.jwksUrl);
      ({ payload: claims } = await jwtVerify(
        token,
        async (protectedHeader, jws) => {
          try {
            return await keySet(protectedHeader, jws);
          } catch (e) {
            // An unknown kid (or a key of another type) is the token's fault; anything
            // else (fetch failed, timed out, not a key set) is the key server's.
            if (e instanceof errors.JWKSNoMatchingKey || e instanceof errors.JWKSMultipleMatchingKeys) throw e;
            throw keysUnavailable();
          }
        },
        { ...options, algorithms: [alg] },
      ));
    } else {
      throw invalid(`token algorithm ${JSON.stringify(truncate(alg, 20))} is not accepted (HS256, ES256 or RS256)`);
    }
  } catch (e) {
    throw e instanceof ApiError ? e : joseError(e);
  }

  const role = typeof claims.role === "string" ? claims.role : "";
  let principal: Principal;
  if (role === "authenticated") {
    const aud = claims.aud;
    const audOk = typeof aud === "string" ? aud === "authenticated" : Array.isArray(aud) && aud.includes("authenticated");
    if (!audOk) throw invalid("the token's audience is not `authenticated`");
    if (config.issuer !== null && claims.iss !== config.issuer) {
      throw invalid("the token was issued by another issuer");
    }
    if (typeof claims.sub !== "string") throw invalid("the token has no sub claim");
    const userId = parseUuid(claims.sub);
    if (userId === null) throw invalid("the token's sub is not a user id");
    principal = { kind: "user", userId };
  } else if (role === "service_role") {
    // Only the project's service-role key (HS256, no `sub`) is the service role; a
    // token that names a user, or one from Supabase Auth's signing keys, never is.
    if (alg !== "HS256" || "sub" in claims) {
      throw ApiError.forbidden(
        "forbidden_role",
        "only the project's service-role key (HS256, naming no user) acts as the service role",
      );
    }
    principal = { kind: "service_role" };
  } else {
    const shown = role === "" ? "(none)" : truncate(role, 40);
    throw ApiError.forbidden("forbidden_role", `role ${JSON.stringify(shown)} may not call this service`);
  }
  return { principal, claims, token };
}

/** The token's header, read before choosing the key (jose reads it again when verifying). */
function decodeHeader(segment: string): Record<string, unknown> {
  const bytes = base64UrlDecode(segment.replace(/=+$/, ""));
  if (bytes === null) throw malformed("not base64url");
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes));
  } catch {
    throw malformed("not JSON");
  }
  return typeof header === "object" && header !== null && !Array.isArray(header)
    ? (header as Record<string, unknown>)
    : {};
}

/** jose's verdicts, in the Rust Worker's words. */
function joseError(e: unknown): ApiError {
  if (e instanceof errors.JWSSignatureVerificationFailed) return invalid("the token signature is invalid");
  if (e instanceof errors.JWTExpired) return invalid("the token has expired");
  if (e instanceof errors.JWKSNoMatchingKey) return invalid("the token was signed with an unknown key");
  if (e instanceof errors.JWKSMultipleMatchingKeys) return invalid("the token was signed with an unknown key");
  if (e instanceof errors.JOSEAlgNotAllowed) return invalid("the token's algorithm does not match its key");
  if (e instanceof errors.JWTClaimValidationFailed) {
    if (e.claim === "exp") return invalid("the token has no numeric exp claim");
    if (e.claim === "nbf" && e.reason === "check_failed") return invalid("the token is not valid yet (nbf)");
    return malformed(`${e.claim} is not valid`);
  }
  if (e instanceof errors.JWTInvalid) return malformed("the claims are not a JSON object");
  if (e instanceof errors.JWSInvalid) return malformed("not base64url");
  return invalid("the token signature is invalid");
}

/** The signed-in user's id; the service role has no user and is refused (403). */
export function requireUser(verified: Verified): string {
  if (verified.principal.kind === "user") return verified.principal.userId;
  throw ApiError.forbidden("user_required", "this endpoint acts for a user; call it with a user's token");
}
