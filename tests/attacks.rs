//! Attacks through the real stack (gateway → Worker → PostgREST → Postgres under
//! wrangler dev): forged, misplaced and oversized tokens on every endpoint that takes
//! one, and resource abuse (bodies over the limits, deep nesting, too many mutations,
//! table and column names that are not identifiers).
//!
//! Every refusal must be the JSON error (with the request id) and must happen before
//! any upstream request: PostgREST's request log ([`PostgrestLog`]) and the Neo4j
//! stand-in's per-user counter show that nothing got through, and each of the two is
//! first shown to see a valid request.
//!
//! Every test holds [`exclusive`]: the upstream count is of PostgREST's whole log, so
//! no other test of this binary may talk to PostgREST meanwhile.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use edgesync_integration::*;
use serde_json::{json, Value};

/// The leeway the stack's Workers allow for `exp`/`nbf` (`DEFAULT_JWT_LEEWAY_SECS`).
const LEEWAY_SECS: i64 = edgesync_shared::config::DEFAULT_JWT_LEEWAY_SECS as i64;

// ---------------------------------------------------------------------------------------
// HMAC-SHA256, to sign tokens with any header and any key material (the test crate has
// no crypto dependency of its own; `keys::sign_hs256` only signs the standard header).
// Checked against `keys::sign_hs256` before use, so a wrong HMAC cannot make the
// algorithm-confusion cases pass vacuously.

const SHA256_K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
    0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
    0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
    0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
];

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h: [u32; 8] =
        [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for (word, bytes) in w.iter_mut().zip(block.chunks(4)) {
            *word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for (k, wi) in SHA256_K.iter().zip(w) {
            let t1 = hh
                .wrapping_add(e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25))
                .wrapping_add((e & f) ^ (!e & g))
                .wrapping_add(*k)
                .wrapping_add(wi);
            let t2 =
                (a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22)).wrapping_add((a & b) ^ (a & c) ^ (b & c));
            (hh, g, f, e, d, c, b, a) = (g, f, e, d.wrapping_add(t1), c, b, a, t1.wrapping_add(t2));
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (bytes, x) in out.chunks_mut(4).zip(h) {
        bytes.copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&sha256(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).chain(msg.iter().copied()).collect();
    let outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).chain(sha256(&inner)).collect();
    sha256(&outer)
}

// ---------------------------------------------------------------------------------------
// Tokens

fn seg(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// An HS256 token with any header, signed with any bytes.
fn hs256_raw(secret: &[u8], header: &Value, claims: &Value) -> String {
    let signing_input = format!("{}.{}", seg(header), seg(claims));
    let sig = hmac_sha256(secret, signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// `token` with its header replaced (the signature is kept, so it no longer matches).
fn with_header(token: &str, header: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{}.{}", seg(header), parts[1], parts[2])
}

/// `token` with its payload replaced (the signature is kept).
fn with_payload(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{}.{}", parts[0], seg(claims), parts[2])
}

fn set(mut claims: Value, key: &str, value: Value) -> Value {
    if value.is_null() {
        claims.as_object_mut().unwrap().remove(key);
    } else {
        claims[key] = value;
    }
    claims
}

fn claims(info: &StackInfo, sub: &str) -> Value {
    keys::user_claims(sub, &info.jwt_issuer, 3600)
}

fn hs(info: &StackInfo, claims: &Value) -> String {
    keys::sign_hs256(&info.jwt_secret, claims).unwrap()
}

fn es(info: &StackInfo, claims: &Value) -> String {
    keys::sign_es256(&info.es256_key, claims).unwrap()
}

/// The ES256 public key as the stack's JWKS endpoint serves it: (the JWKS text, the JWK).
fn served_jwks(info: &StackInfo) -> (String, Value) {
    let a = call("GET", &info.jwks_url, None, None);
    assert_eq!(a.status, 200, "{}", a.text);
    let jwk = a.body["keys"][0].clone();
    assert_eq!(jwk["kid"], info.es256_key.kid.as_str(), "the JWKS serves the stack's key: {}", a.text);
    assert_eq!(jwk["kty"], "EC");
    (a.text, jwk)
}

/// The P-256 point of a JWK, uncompressed (`04 || x || y`).
fn ec_point(jwk: &Value) -> Vec<u8> {
    let coord = |k: &str| URL_SAFE_NO_PAD.decode(jwk[k].as_str().unwrap()).unwrap();
    let mut point = vec![4u8];
    point.extend(coord("x"));
    point.extend(coord("y"));
    assert_eq!(point.len(), 65);
    point
}

/// The SubjectPublicKeyInfo PEM of a P-256 JWK (what `openssl ec -pubout` prints).
fn ec_public_pem(jwk: &Value) -> String {
    // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) ... }
    const SPKI_PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
        0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let mut der = SPKI_PREFIX.to_vec();
    der.extend(ec_point(jwk));
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"))
}

// ---------------------------------------------------------------------------------------
// Endpoints and cases

/// An endpoint that takes a token, with a body that passes its validation.
struct Endpoint {
    method: &'static str,
    path: &'static str,
    body: Option<Value>,
}

/// Every endpoint that takes a token. `sub` is the user the forged tokens name: the
/// Neo4j `/populate` asks the stand-in for that user's graph if it gets through.
fn endpoints(sub: &str) -> Vec<Endpoint> {
    let ep = |method, path, body| Endpoint { method, path, body };
    vec![
        ep("GET", "/sync", None),
        ep("POST", "/upload", Some(json!({"client_id": uuid(), "mutations": []}))),
        ep("POST", "/populate", Some(json!({"source": "legacy", "records": []}))),
        ep("POST", "/populate", Some(json!({"source": "neo4j", "user_id": sub}))),
        ep("POST", "/search", Some(json!({"query": "x"}))),
        // A payload for a table that is not embedded: accepted, it would be ignored.
        ep("POST", "/embed_entry", Some(json!({"type": "INSERT", "table": "other", "schema": "public", "record": {}}))),
        ep("POST", "/embed_entry/drain", None),
    ]
}

fn send(info: &StackInfo, ep: &Endpoint, extra: &[(&str, String)]) -> Result<Answer, String> {
    let url = format!("{}{}", info.functions_url, ep.path);
    let mut headers: Vec<(&str, String)> = extra.to_vec();
    let body = ep.body.as_ref().map(|b| b.to_string().into_bytes());
    match &body {
        Some(b) => {
            headers.push(("content-type", "application/json".into()));
            call_raw_http(ep.method, &url, &headers, RawBody::Sized(b))
        }
        None => call_raw_http(ep.method, &url, &headers, RawBody::None),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// The product's JSON error with this status and code.
    Error(u16, &'static str),
    /// Refused by the runtime's HTTP server before any Worker runs (no JSON possible).
    Runtime(u16),
}

struct Case {
    what: String,
    headers: Vec<(&'static str, String)>,
    expect: Expect,
}

const INVALID: Expect = Expect::Error(401, "invalid_token");
const MISSING: Expect = Expect::Error(401, "missing_token");
const FORBIDDEN_ROLE: Expect = Expect::Error(403, "forbidden_role");

fn bearer(what: impl Into<String>, token: impl Into<String>, expect: Expect) -> Case {
    Case { what: what.into(), headers: vec![("authorization", format!("Bearer {}", token.into()))], expect }
}

fn header(what: impl Into<String>, headers: Vec<(&'static str, String)>, expect: Expect) -> Case {
    Case { what: what.into(), headers, expect }
}

/// Every forged, misplaced or malformed token, all naming `sub`.
fn attack_cases(info: &StackInfo, sub: &str) -> Vec<Case> {
    let c = claims(info, sub);
    let now = keys::now() as i64;
    let kid = info.es256_key.kid.clone();
    let good_hs = hs(info, &c);
    let good_es = es(info, &c);
    let es_sig = good_es.split('.').nth(2).unwrap().to_owned();
    let (jwks_text, jwk) = served_jwks(info);
    let pem = ec_public_pem(&jwk);
    let hs_header = json!({"alg": "HS256", "typ": "JWT"});
    let mut other_key = keys::Es256Key::generate().unwrap();
    let mut cases = vec![
        // alg none
        bearer(
            "alg none, no signature",
            format!("{}.{}.", seg(&json!({"alg": "none", "typ": "JWT"})), seg(&c)),
            INVALID,
        ),
        bearer("alg none, with a signature", with_header(&good_es, &json!({"alg": "none", "typ": "JWT"})), INVALID),
        bearer(
            "alg None, the stack's kid",
            format!("{}.{}.", seg(&json!({"alg": "None", "kid": kid})), seg(&c)),
            INVALID,
        ),
        bearer("alg NONE, with a signature", with_header(&good_hs, &json!({"alg": "NONE"})), INVALID),
        bearer("alg none, two parts", format!("{}.{}", seg(&json!({"alg": "none"})), seg(&c)), INVALID),
        // HS256 keyed with the published public key: the algorithm confusion.
        bearer("HS256 keyed with the JWKS key's PEM", hs256_raw(pem.as_bytes(), &hs_header, &c), INVALID),
        bearer(
            "HS256 keyed with the PEM, no final newline",
            hs256_raw(pem.trim_end().as_bytes(), &hs_header, &c),
            INVALID,
        ),
        bearer(
            "HS256 keyed with the PEM, the EC key's kid",
            hs256_raw(pem.as_bytes(), &json!({"alg": "HS256", "typ": "JWT", "kid": kid}), &c),
            INVALID,
        ),
        bearer("HS256 keyed with the raw JWK JSON", hs256_raw(jwk.to_string().as_bytes(), &hs_header, &c), INVALID),
        bearer(
            "HS256 keyed with the raw JWK JSON, the EC key's kid",
            hs256_raw(jwk.to_string().as_bytes(), &json!({"alg": "HS256", "kid": kid}), &c),
            INVALID,
        ),
        bearer(
            "HS256 keyed with the JWKS document as served",
            hs256_raw(jwks_text.as_bytes(), &hs_header, &c),
            INVALID,
        ),
        bearer("HS256 keyed with the raw EC point", hs256_raw(&ec_point(&jwk), &hs_header, &c), INVALID),
        bearer(
            "HS256 keyed with the JWK's x",
            hs256_raw(jwk["x"].as_str().unwrap().as_bytes(), &hs_header, &c),
            INVALID,
        ),
        bearer(
            "HS256 with a wrong secret",
            hs256_raw(b"another-secret-that-is-long-enough-0123", &hs_header, &c),
            INVALID,
        ),
        bearer(
            "HS512 with the real secret",
            hs256_raw(info.jwt_secret.as_bytes(), &json!({"alg": "HS512"}), &c),
            INVALID,
        ),
        // kid
        bearer(
            "ES256, unknown kid, signed by the stack's key",
            {
                let k = keys::Es256Key { kid: "not-in-the-jwks".into(), ..info.es256_key.clone() };
                keys::sign_es256(&k, &c).unwrap()
            },
            INVALID,
        ),
        bearer(
            "ES256, empty kid, signed by the stack's key",
            {
                let k = keys::Es256Key { kid: String::new(), ..info.es256_key.clone() };
                keys::sign_es256(&k, &c).unwrap()
            },
            INVALID,
        ),
        // No ES256 signer for a header without kid here: the signature is the stack
        // key's over the header with kid (the product refuses a missing kid first).
        bearer("ES256 without kid", with_header(&good_es, &json!({"alg": "ES256", "typ": "JWT"})), INVALID),
        bearer(
            "ES256 with a null kid",
            with_header(&good_es, &json!({"alg": "ES256", "typ": "JWT", "kid": null})),
            INVALID,
        ),
        bearer(
            "ES256, the stack's kid, signed by another key",
            {
                other_key.kid = kid.clone();
                keys::sign_es256(&other_key, &c).unwrap()
            },
            INVALID,
        ),
        bearer(
            "ES256, unknown kid, signed by another key",
            {
                other_key.kid = "rotated-away".into();
                keys::sign_es256(&other_key, &c).unwrap()
            },
            INVALID,
        ),
        bearer(
            "RS256 header with the EC key's kid",
            with_header(&good_es, &json!({"alg": "RS256", "typ": "JWT", "kid": kid})),
            INVALID,
        ),
        bearer(
            "ES256 header with the EC key's kid on an HMAC of the real secret",
            hs256_raw(info.jwt_secret.as_bytes(), &json!({"alg": "ES256", "typ": "JWT", "kid": kid}), &c),
            INVALID,
        ),
        bearer(
            "ES256 header on an HS256 token",
            with_header(&good_hs, &json!({"alg": "ES256", "typ": "JWT", "kid": kid})),
            INVALID,
        ),
        bearer(
            "HS256 header on an ES256 token",
            with_header(&good_es, &json!({"alg": "HS256", "typ": "JWT", "kid": kid})),
            INVALID,
        ),
        // Time
        bearer("HS256 expired an hour ago", hs(info, &set(c.clone(), "exp", json!(now - 3600))), INVALID),
        bearer("ES256 expired an hour ago", es(info, &set(c.clone(), "exp", json!(now - 3600))), INVALID),
        bearer(
            "HS256 expired just beyond the leeway",
            hs(info, &set(c.clone(), "exp", json!(now - LEEWAY_SECS - 5))),
            INVALID,
        ),
        bearer("HS256 without exp", hs(info, &set(c.clone(), "exp", Value::Null)), INVALID),
        bearer(
            "HS256 with exp as a string",
            hs(info, &set(c.clone(), "exp", json!((now + 3600).to_string()))),
            INVALID,
        ),
        bearer("HS256 nbf in an hour", hs(info, &set(c.clone(), "nbf", json!(now + 3600))), INVALID),
        bearer("ES256 nbf in an hour", es(info, &set(c.clone(), "nbf", json!(now + 3600))), INVALID),
        bearer(
            "ES256 nbf just beyond the leeway",
            es(info, &set(c.clone(), "nbf", json!(now + LEEWAY_SECS + 30))),
            INVALID,
        ),
        // Audience and issuer
        bearer("HS256 aud anon", hs(info, &set(c.clone(), "aud", json!("anon"))), INVALID),
        bearer("ES256 aud another project", es(info, &set(c.clone(), "aud", json!(["other"]))), INVALID),
        bearer("HS256 without aud", hs(info, &set(c.clone(), "aud", Value::Null)), INVALID),
        bearer("HS256 wrong iss", hs(info, &set(c.clone(), "iss", json!("https://evil.example/auth/v1"))), INVALID),
        bearer("ES256 wrong iss", es(info, &set(c.clone(), "iss", json!(format!("{}/", info.jwt_issuer)))), INVALID),
        bearer("HS256 without iss", hs(info, &set(c.clone(), "iss", Value::Null)), INVALID),
        // sub
        bearer("HS256 without sub", hs(info, &set(c.clone(), "sub", Value::Null)), INVALID),
        bearer("ES256 without sub", es(info, &set(c.clone(), "sub", Value::Null)), INVALID),
        bearer("HS256 sub admin", hs(info, &set(c.clone(), "sub", json!("admin"))), INVALID),
        bearer("ES256 sub SQL", es(info, &set(c.clone(), "sub", json!("x' or '1'='1"))), INVALID),
        bearer("HS256 sub empty", hs(info, &set(c.clone(), "sub", json!(""))), INVALID),
        bearer(
            "HS256 sub a UUID without dashes",
            hs(info, &set(c.clone(), "sub", json!(sub.replace('-', "")))),
            INVALID,
        ),
        bearer("HS256 sub a number", hs(info, &set(c.clone(), "sub", json!(42))), INVALID),
        // Roles a user's token must not carry (signed validly: only a misconfigured
        // issuer could mint them, and they still grant nothing).
        bearer(
            "HS256 user token with role service_role",
            hs(info, &set(c.clone(), "role", json!("service_role"))),
            FORBIDDEN_ROLE,
        ),
        bearer(
            "ES256 user token with role service_role",
            es(info, &set(c.clone(), "role", json!("service_role"))),
            FORBIDDEN_ROLE,
        ),
        bearer(
            "HS256 user token with role postgres",
            hs(info, &set(c.clone(), "role", json!("postgres"))),
            FORBIDDEN_ROLE,
        ),
        bearer(
            "ES256 user token with role postgres",
            es(info, &set(c.clone(), "role", json!("postgres"))),
            FORBIDDEN_ROLE,
        ),
        bearer(
            "ES256 user token with role supabase_admin",
            es(info, &set(c.clone(), "role", json!("supabase_admin"))),
            FORBIDDEN_ROLE,
        ),
        bearer("HS256 user token with role anon", hs(info, &set(c.clone(), "role", json!("anon"))), FORBIDDEN_ROLE),
        bearer("HS256 user token without role", hs(info, &set(c.clone(), "role", Value::Null)), FORBIDDEN_ROLE),
        bearer(
            "ES256 service_role without sub or aud",
            {
                let svc = set(set(c.clone(), "sub", Value::Null), "aud", Value::Null);
                es(info, &set(svc, "role", json!("service_role")))
            },
            FORBIDDEN_ROLE,
        ),
        // Tampering
        bearer(
            "HS256 payload edited: another sub",
            with_payload(&good_hs, &set(c.clone(), "sub", json!(uuid()))),
            INVALID,
        ),
        bearer(
            "ES256 payload edited: role service_role",
            with_payload(&good_es, &set(c.clone(), "role", json!("service_role"))),
            INVALID,
        ),
        bearer(
            "ES256 payload edited: exp a year later",
            with_payload(&good_es, &set(c.clone(), "exp", json!(now + 365 * 86400))),
            INVALID,
        ),
        bearer("ES256 signature truncated", &good_es[..good_es.len() - 4], INVALID),
        bearer(
            "ES256 signature of another token",
            format!("{}.{}", good_hs.rsplit_once('.').unwrap().0, es_sig),
            INVALID,
        ),
        bearer("garbage", "not.a.jwt", INVALID),
        bearer("two parts", "abc.def", INVALID),
        bearer("four parts", format!("{good_hs}.x"), INVALID),
        bearer("the token followed by junk", format!("{good_hs} junk"), INVALID),
        // Size
        bearer("a 64 KiB token", format!("{}.{}.x", "a".repeat(64 * 1024), seg(&c)), INVALID),
        bearer("a valid token padded to 64 KiB", format!("{good_hs}{}", "=".repeat(64 * 1024)), INVALID),
        bearer("a 1 MiB token", "a".repeat(1024 * 1024), Expect::Runtime(431)),
        // Where and how the token is sent
        header("the token in X-Authorization", vec![("x-authorization", format!("Bearer {good_hs}"))], MISSING),
        header("the token in a cookie", vec![("cookie", format!("sb-access-token={good_hs}"))], MISSING),
        header("Authorization in a cookie", vec![("cookie", format!("Authorization=Bearer {good_es}"))], MISSING),
        header("the token as apikey", vec![("apikey", good_hs.clone())], MISSING),
        header("no Authorization at all", vec![], MISSING),
        header("an empty Authorization", vec![("authorization", String::new())], MISSING),
        header("scheme Basic", vec![("authorization", format!("Basic {good_hs}"))], INVALID),
        header(
            "scheme Basic, base64",
            vec![("authorization", format!("Basic {}", STANDARD.encode(&good_hs)))],
            INVALID,
        ),
        header("scheme Token", vec![("authorization", format!("Token {good_hs}"))], INVALID),
        header("scheme Bearer: (colon)", vec![("authorization", format!("Bearer: {good_hs}"))], INVALID),
        header("no scheme", vec![("authorization", good_hs.clone())], INVALID),
        header("an empty bearer", vec![("authorization", "Bearer".into())], INVALID),
        header("an empty bearer with a space", vec![("authorization", "Bearer ".into())], INVALID),
        header("a bearer of spaces", vec![("authorization", "Bearer      ".into())], INVALID),
        header(
            "two Authorization headers, both valid",
            vec![("authorization", format!("Bearer {good_hs}")), ("authorization", format!("Bearer {good_hs}"))],
            INVALID,
        ),
        header(
            "two Authorization headers, valid then forged",
            vec![("authorization", format!("Bearer {good_es}")), ("authorization", "Bearer not.a.jwt".into())],
            INVALID,
        ),
        header(
            "two Authorization headers, forged then valid",
            vec![("authorization", "Basic eDp5".into()), ("authorization", format!("Bearer {good_es}"))],
            INVALID,
        ),
    ];
    cases.push(header(
        "lowercase bearer on a forged token",
        vec![("authorization", format!("bearer {}", hs256_raw(pem.as_bytes(), &hs_header, &c)))],
        INVALID,
    ));
    cases
}

/// Send every case to every endpoint; returns the failures (as messages) and the
/// observed (status, code) per case.
fn run_cases(info: &StackInfo, sub: &str, cases: &[Case]) -> (Vec<String>, Vec<(String, Vec<u16>)>) {
    let mut failures = Vec::new();
    let mut observed = Vec::new();
    for case in cases {
        let mut statuses = Vec::new();
        for ep in endpoints(sub) {
            let headers: Vec<(&str, String)> = case.headers.iter().map(|(k, v)| (*k, v.clone())).collect();
            let at =
                format!("{} on {} {} {}", case.what, ep.method, ep.path, ep.body.as_ref().map_or("", |_| "(body)"));
            let a = match send(info, &ep, &headers) {
                Ok(a) => a,
                Err(e) => {
                    failures.push(format!("{at}: no answer: {e}"));
                    continue;
                }
            };
            statuses.push(a.status);
            if let Some(problem) = check(&a, case.expect) {
                failures.push(format!("{at}: {problem}"));
            }
        }
        observed.push((case.what.clone(), statuses));
    }
    (failures, observed)
}

/// What is wrong with `a` for `expect`, if anything.
fn check(a: &Answer, expect: Expect) -> Option<String> {
    match expect {
        Expect::Runtime(status) => {
            (a.status != status).then(|| format!("expected {status}, got {}: {}", a.status, a.text))
        }
        Expect::Error(status, code) => {
            let err = &a.body["error"];
            if a.status != status || err["code"] != code {
                return Some(format!("expected {status} {code}, got {}: {}", a.status, a.text));
            }
            if err["message"].as_str().is_none_or(str::is_empty) {
                return Some(format!("no message: {}", a.text));
            }
            if err["request_id"].as_str().is_none() || err["request_id"].as_str() != a.request_id.as_deref() {
                return Some(format!("request id {:?} vs body {}", a.request_id, a.text));
            }
            if !a.content_type.as_deref().is_some_and(|c| c.starts_with("application/json")) {
                return Some(format!("content-type {:?}", a.content_type));
            }
            if status == 401 && a.www_authenticate.as_deref() != Some("Bearer") {
                return Some(format!("401 with www-authenticate {:?}", a.www_authenticate));
            }
            None
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tests: tokens

#[test]
fn the_test_hmac_is_hmac_sha256() {
    assert_eq!(
        sha256(b"abc").iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let claims = json!({"sub": "x", "n": "y".repeat(200)});
    for secret in ["short", "a-secret-longer-than-one-sha256-block-of-sixty-four-bytes-0123456789abcdef"] {
        let reference = keys::sign_hs256(secret, &claims).unwrap();
        let (input, sig) = reference.rsplit_once('.').unwrap();
        assert_eq!(URL_SAFE_NO_PAD.encode(hmac_sha256(secret.as_bytes(), input.as_bytes())), sig);
    }
}

/// Every forged, misplaced or oversized token on every endpoint that takes one: 401
/// (or 403 for a validly signed token with a role a user must not have) with the JSON
/// error — and not one request reaches PostgREST or Neo4j. Both counters are first
/// shown to count a valid request.
#[test]
fn forged_and_misplaced_tokens_are_refused_before_any_upstream_request() {
    let _x = exclusive();
    let info = stack();
    let neo4j = neo4j(&info);
    let _quiet = RelayStopped::new(&info);
    let log = PostgrestLog::new(&info);

    // The counters see a valid request: PostgREST logs the Worker's RPC, the stand-in
    // counts the user's query.
    let control = uuid();
    let from = log.mark();
    let a = call("GET", &format!("{}/sync", info.functions_url), Some(&user_token_es256(&info, &control)), None);
    assert_eq!(a.status, 200, "{}", a.text);
    let seen = log.requests_since(from);
    assert!(seen.iter().any(|l| l.contains("POST /rpc/edgesync_pull")), "a valid /sync is not in the log: {seen:?}");
    let a = call(
        "POST",
        &format!("{}/populate", info.functions_url),
        Some(&user_token(&info, &control)),
        Some(&json!({"source": "neo4j"})),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(neo4j.requests(&control) > 0, "the Neo4j stand-in did not count a valid populate");
    // The way the cases below are made is sound: the same constructions with the right
    // key, or times just inside the leeway, are accepted.
    let c = claims(&info, &control);
    let now = keys::now() as i64;
    for (what, token) in [
        (
            "HS256 signed here, with the EC key's kid",
            hs256_raw(
                info.jwt_secret.as_bytes(),
                &json!({"alg": "HS256", "typ": "JWT", "kid": info.es256_key.kid}),
                &c,
            ),
        ),
        ("ES256 expired within the leeway", es(&info, &set(c.clone(), "exp", json!(now - 2)))),
        ("HS256 nbf within the leeway", hs(&info, &set(c.clone(), "nbf", json!(now + 2)))),
        ("HS256 aud a list with authenticated", hs(&info, &set(c.clone(), "aud", json!(["x", "authenticated"])))),
    ] {
        let a = call("GET", &format!("{}/sync", info.functions_url), Some(&token), None);
        assert_eq!(a.status, 200, "{what}: {}", a.text);
    }

    // A forged token whose Worker-side check is in place of PostgREST's is the case
    // that matters: PostgREST itself would accept these (it ignores `kid`, allows 30 s
    // past `exp`, does not require `aud`).
    let victim = uuid();
    let cases = attack_cases(&info, &victim);
    let started = std::time::Instant::now();
    let from = log.mark();
    let (failures, observed) = run_cases(&info, &victim, &cases);
    let reached = log.requests_since(from);
    let elapsed = started.elapsed();
    for (what, statuses) in &observed {
        eprintln!("{what}: {statuses:?}");
    }
    eprintln!("{} cases x {} endpoints in {elapsed:?}", cases.len(), endpoints(&victim).len());
    let neo4j_requests = neo4j.requests(&victim);
    assert!(
        failures.is_empty() && reached.is_empty() && neo4j_requests == 0,
        "{} wrong answers:\n{}\n\n{} requests reached PostgREST:\n{}\n\n{neo4j_requests} reached Neo4j",
        failures.len(),
        failures.join("\n"),
        reached.len(),
        reached.join("\n"),
    );
}

/// The endpoints that act only for the database or the service role refuse a valid
/// user's token (403) and a wrong webhook secret (401), before any upstream request.
#[test]
fn embed_entry_refuses_users_and_wrong_webhook_secrets_before_any_upstream_request() {
    let _x = exclusive();
    let info = stack();
    let _quiet = RelayStopped::new(&info);
    let log = PostgrestLog::new(&info);
    let user = uuid();
    let eps: Vec<Endpoint> = endpoints(&user).into_iter().filter(|e| e.path.starts_with("/embed_entry")).collect();
    let cases = [
        bearer("a valid HS256 user token", user_token(&info, &user), FORBIDDEN_ROLE),
        bearer("a valid ES256 user token", user_token_es256(&info, &user), FORBIDDEN_ROLE),
        header(
            "a wrong webhook secret",
            vec![("x-webhook-secret", "guess".into())],
            Expect::Error(401, "invalid_webhook_secret"),
        ),
        header(
            "an empty webhook secret",
            vec![("x-webhook-secret", String::new())],
            Expect::Error(401, "invalid_webhook_secret"),
        ),
        header(
            "a wrong webhook secret with the service role",
            vec![("x-webhook-secret", "guess".into()), ("authorization", format!("Bearer {}", info.service_role_key))],
            Expect::Error(401, "invalid_webhook_secret"),
        ),
        header(
            "the webhook secret as a bearer token",
            vec![("authorization", format!("Bearer {}", info.embed_webhook_secret))],
            INVALID,
        ),
    ];
    let from = log.mark();
    let mut failures = Vec::new();
    for case in &cases {
        for ep in &eps {
            let headers: Vec<(&str, String)> = case.headers.iter().map(|(k, v)| (*k, v.clone())).collect();
            match send(&info, ep, &headers) {
                Ok(a) => {
                    eprintln!("{} on {}: {}", case.what, ep.path, a.status);
                    if let Some(p) = check(&a, case.expect) {
                        failures.push(format!("{} on {}: {p}", case.what, ep.path));
                    }
                }
                Err(e) => failures.push(format!("{} on {}: {e}", case.what, ep.path)),
            }
        }
    }
    let reached = log.requests_since(from);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(reached.is_empty(), "refused requests reached PostgREST:\n{}", reached.join("\n"));
}

/// A validly signed user token that says `role: service_role` gets no service powers:
/// it cannot read another user's rows, populate for another user, or drive the
/// embeddings Worker.
#[test]
fn a_user_token_claiming_the_service_role_gets_no_service_powers() {
    let _x = exclusive();
    let info = stack();
    let (alice, alice_token) = new_user(&info);
    let row = uuid();
    let a = upload(
        &info,
        &alice_token,
        &uuid(),
        json!([{"op_id": 1, "op": "PUT", "type": "entries", "id": row, "data": {"title": "alice's secret"}}]),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let mut db = db(&info);
    let before = server_state(&mut db, "entries", &alice);
    assert!(before.0.contains_key(&row));

    let bob = uuid();
    let escalated = set(claims(&info, &bob), "role", json!("service_role"));
    for token in [hs(&info, &escalated), es(&info, &escalated)] {
        let sync = call("GET", &format!("{}/sync", info.functions_url), Some(&token), None);
        assert!(!sync.text.contains(&row), "bob's escalated token sees alice's row: {}", sync.text);
        sync.assert_error(403, "forbidden_role");
        let populate = call(
            "POST",
            &format!("{}/populate", info.functions_url),
            Some(&token),
            Some(&json!({"source": "legacy", "user_id": alice, "records": [
                {"id": "legacy-1", "type": "note", "title": "planted by bob", "content": "x"}]})),
        );
        populate.assert_error(403, "forbidden_role");
        for path in ["/embed_entry", "/embed_entry/drain"] {
            let body = json!({"type": "INSERT", "table": "entries", "schema": "public", "record": {"id": row}});
            call("POST", &format!("{}{path}", info.functions_url), Some(&token), Some(&body))
                .assert_error(403, "forbidden_role");
        }
        call("POST", &format!("{}/search", info.functions_url), Some(&token), Some(&json!({"query": "secret"})))
            .assert_error(403, "forbidden_role");
    }
    assert_eq!(server_state(&mut db, "entries", &alice), before, "alice's data changed");
    // The real service role still works (so the refusals above are about the claims).
    let drain = call("POST", &format!("{}/embed_entry/drain", info.functions_url), Some(&info.service_role_key), None);
    assert_eq!(drain.status, 200, "{}", drain.text);
}

/// The scheme is matched case-insensitively (RFC 9110 §11.1): `bearer` and `BEARER`
/// work with a valid token; the token itself is still fully verified.
#[test]
fn the_bearer_scheme_is_case_insensitive_and_nothing_else_is_accepted() {
    let _x = exclusive();
    let info = stack();
    let (_, token) = new_user(&info);
    let url = format!("{}/sync", info.functions_url);
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let a = call_with_headers("GET", &url, &[("authorization", format!("{scheme} {token}"))], None);
        assert_eq!(a.status, 200, "{scheme}: {}", a.text);
    }
    // Extra spaces between scheme and token are tolerated.
    let a = call_with_headers("GET", &url, &[("authorization", format!("Bearer   {token}"))], None);
    assert_eq!(a.status, 200, "{}", a.text);
    for scheme in ["Bearer:", "Bearer\t", "Bearer-", "Bearers", "Token", "JWT", "Basic", "Digest"] {
        let a = call_with_headers("GET", &url, &[("authorization", format!("{scheme}{token}"))], None);
        a.assert_error(401, "invalid_token");
        let a = call_with_headers("GET", &url, &[("authorization", format!("{scheme} {token}"))], None);
        a.assert_error(401, "invalid_token");
    }
}

// ---------------------------------------------------------------------------------------
// Tests: limits and resource abuse

/// `prefix` + padding + `suffix`, exactly `len` bytes (the padding is inside a string).
fn padded(prefix: &str, suffix: &str, len: usize) -> Vec<u8> {
    let fill = len.checked_sub(prefix.len() + suffix.len()).expect("too short");
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(prefix.as_bytes());
    b.extend(std::iter::repeat_n(b'x', fill));
    b.extend_from_slice(suffix.as_bytes());
    assert_eq!(b.len(), len);
    b
}

/// A body of exactly n bytes.
type BodyOfLen = Box<dyn Fn(usize) -> Vec<u8>>;

/// (path, limit, token, body)
fn limited_posts(info: &StackInfo, user_token: &str) -> Vec<(&'static str, usize, String, BodyOfLen)> {
    let client = uuid();
    vec![
        (
            "/upload",
            edgesync_shared::upload::MAX_BODY_BYTES,
            user_token.to_owned(),
            Box::new(move |n| padded(&format!(r#"{{"client_id":"{client}","mutations":[],"pad":""#), r#""}"#, n)),
        ),
        (
            "/populate",
            edgesync_shared::populate::MAX_BODY_BYTES,
            user_token.to_owned(),
            Box::new(|n| padded(r#"{"source":"legacy","records":[{"id":"x","title":""#, r#""}]}"#, n)),
        ),
        ("/search", 16 * 1024, user_token.to_owned(), Box::new(|n| padded(r#"{"query":""#, r#""}"#, n))),
        (
            "/embed_entry",
            256 * 1024,
            info.service_role_key.clone(),
            Box::new(|n| {
                padded(r#"{"type":"INSERT","table":"other","schema":"public","record":{"pad":""#, r#""}}"#, n)
            }),
        ),
    ]
}

/// One byte over each POST's limit is 413 `body_too_large` JSON, whether the size is
/// declared (`Content-Length`) or only found by reading (chunked); at the limit it is
/// not 413. Nothing over a limit reaches PostgREST.
#[test]
fn bodies_over_the_limit_are_413_with_and_without_content_length() {
    let _x = exclusive();
    let info = stack();
    let _quiet = RelayStopped::new(&info);
    let log = PostgrestLog::new(&info);
    let (_, token) = new_user(&info);
    let posts = limited_posts(&info, &token);
    for (path, limit, token, body) in &posts {
        let url = format!("{}{path}", info.functions_url);
        let headers = [("authorization", format!("Bearer {token}")), ("content-type", "application/json".to_owned())];
        let at_limit = body(*limit);
        for how in ["sized", "chunked"] {
            let raw = if how == "sized" { RawBody::Sized(&at_limit) } else { RawBody::Chunked(&at_limit) };
            let a = call_raw_http("POST", &url, &headers, raw).unwrap();
            eprintln!("{path} at the limit ({limit} bytes, {how}): {} {}", a.status, a.body["error"]["code"]);
            assert!(a.status != 413 && a.status < 500, "{path} at the limit, {how}: {} {}", a.status, a.text);
        }
        let from = log.mark();
        let over = body(limit + 1);
        let big = body(limit * 4);
        for (what, raw) in [
            ("one byte over, Content-Length", RawBody::Sized(&over)),
            ("one byte over, chunked", RawBody::Chunked(&over)),
            ("four times the limit, chunked", RawBody::Chunked(&big)),
        ] {
            let a = call_raw_http("POST", &url, &headers, raw).unwrap_or_else(|e| panic!("{path} {what}: {e}"));
            eprintln!("{path} {what}: {} {}", a.status, a.body["error"]["code"]);
            a.assert_error(413, "body_too_large");
        }
        let reached = log.requests_since(from);
        assert!(reached.is_empty(), "{path}: an oversized body reached PostgREST: {reached:?}");
    }
}

/// `limit` beyond the cap or not a whole number is 400, before any upstream request.
#[test]
fn sync_limit_out_of_range_or_not_a_number_is_400() {
    let _x = exclusive();
    let info = stack();
    let _quiet = RelayStopped::new(&info);
    let log = PostgrestLog::new(&info);
    let (_, token) = new_user(&info);
    let max = edgesync_shared::sync::MAX_LIMIT;
    let a = call("GET", &format!("{}/sync?limit={max}", info.functions_url), Some(&token), None);
    assert_eq!(a.status, 200, "the cap itself is allowed: {}", a.text);
    let from = log.mark();
    let over = (max + 1).to_string();
    for bad in [
        over.as_str(),
        "4294967296",
        "99999999999999999999999",
        "0",
        "-1",
        "abc",
        "1.5",
        "1e3",
        "0x10",
        "%2010",
        "10%00",
        "",
        "NaN",
    ] {
        let a = call("GET", &format!("{}/sync?limit={bad}", info.functions_url), Some(&token), None);
        eprintln!("limit={bad}: {} {}", a.status, a.body["error"]["code"]);
        a.assert_error(400, "invalid_parameter");
    }
    let a = call("GET", &format!("{}/sync?limit=10&limit=20", info.functions_url), Some(&token), None);
    a.assert_error(400, "invalid_parameter");
    let long = format!("{}/sync?limit=10&tables={}", info.functions_url, "a,".repeat(5000));
    call("GET", &long, Some(&token), None).assert_error(400, "invalid_parameter");
    let reached = log.requests_since(from);
    assert!(reached.is_empty(), "bad limits reached PostgREST: {reached:?}");
}

/// 10,000 levels of nesting on every POST — and as deep as fits under /search's 16 KiB
/// — bare and inside an otherwise valid body: 400 with the JSON error, never 5xx, and
/// no upstream request. (`/embed_entry/drain` takes no body and never reads it.)
#[test]
fn deeply_nested_json_is_400() {
    let _x = exclusive();
    let info = stack();
    let _quiet = RelayStopped::new(&info);
    let log = PostgrestLog::new(&info);
    let (_, token) = new_user(&info);
    let service = info.service_role_key.clone();
    let nest = |depth: usize, open: &str, close: &str| format!("{}{}", open.repeat(depth), close.repeat(depth));
    let client = uuid();
    // (path, token, code, limit, the body around the nesting: `{}` marks where it goes)
    let posts = [
        (
            "/upload",
            &token,
            "invalid_json",
            4 << 20,
            format!(r#"{{"client_id":"{client}","mutations":[{{"data":{{}}}}]}}"#),
        ),
        ("/populate", &token, "invalid_request", 2 << 20, r#"{"source":"legacy","records":[{}]}"#.to_owned()),
        ("/search", &token, "invalid_search", 16 << 10, r#"{"query":{}}"#.to_owned()),
        (
            "/embed_entry",
            &service,
            "invalid_webhook",
            256 << 10,
            r#"{"type":"INSERT","table":"entries","record":{}}"#.to_owned(),
        ),
    ];
    let from = log.mark();
    let mut failures = Vec::new();
    for (path, token, code, limit, around) in &posts {
        let mut bodies = Vec::new();
        for depth in [10_000, 8_000, 2_500] {
            for (what, nested) in
                [("[", "[".repeat(depth)), ("[…]", nest(depth, "[", "]")), ("{\"a\":…}", nest(depth, r#"{"a":"#, "}"))]
            {
                bodies.push((format!("{depth} x {what}"), nested.clone()));
                bodies.push((format!("{depth} x {what} inside"), around.replacen("{}", &nested, 1)));
            }
        }
        let mut sent = 0;
        for (what, body) in bodies.iter().filter(|(_, b)| b.len() <= *limit) {
            let a = call_raw(
                "POST",
                &format!("{}{path}", info.functions_url),
                &[("authorization", format!("Bearer {token}")), ("content-type", "application/json".into())],
                body,
            );
            sent += 1;
            eprintln!("{path} {what} ({} bytes): {} {}", body.len(), a.status, a.body["error"]["code"]);
            let ok = a.status == 400 && a.body["error"]["code"] == *code && a.request_id.is_some();
            if !ok {
                failures.push(format!("{path} {what}: {} {}", a.status, a.text));
            }
        }
        assert!(sent >= 6, "{path}: only {sent} bodies fit");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let reached = log.requests_since(from);
    assert!(reached.is_empty(), "nested bodies reached PostgREST: {reached:?}");
    // The drain takes no body: what is sent is not parsed, the drain runs.
    let a = call_raw(
        "POST",
        &format!("{}/embed_entry/drain", info.functions_url),
        &[("authorization", format!("Bearer {service}")), ("content-type", "application/json".into())],
        &"[".repeat(10_000),
    );
    assert_eq!(a.status, 200, "{}", a.text);
}

fn put(op_id: u64, table: &str, data: Value) -> Value {
    json!({"op_id": op_id, "op": "PUT", "type": table, "id": uuid(), "data": data})
}

/// 1,001 mutations is 413 `too_many_mutations`, without an upstream request; 1,000 is
/// within the limit (a batch that size is then judged on its mutations).
#[test]
fn more_than_1000_mutations_is_413() {
    let _x = exclusive();
    let info = stack();
    let _quiet = RelayStopped::new(&info);
    let log = PostgrestLog::new(&info);
    let (user, token) = new_user(&info);
    let max = edgesync_shared::upload::MAX_MUTATIONS;
    let batch =
        |n: usize| (1..=n as u64).map(|i| put(i, "entries", json!({"title": format!("t{i}")}))).collect::<Vec<_>>();
    let from = log.mark();
    let a = upload(&info, &token, &uuid(), json!(batch(max + 1)));
    a.assert_error(413, "too_many_mutations");
    assert_eq!(a.body["error"]["details"]["max_mutations"], max);
    let reached = log.requests_since(from);
    assert!(reached.is_empty(), "an oversized batch reached PostgREST: {reached:?}");
    // 1,000 with one bad op is refused for that op, not for the count.
    let mut at_limit = batch(max);
    at_limit[max - 1]["op"] = json!("MERGE");
    let a = upload(&info, &token, &uuid(), json!(at_limit));
    let err = a.assert_error(400, "invalid_mutations");
    assert_eq!(err["details"]["errors"][0]["code"], "invalid_op", "{}", a.text);
    let mut db = db(&info);
    assert!(server_state(&mut db, "entries", &user).0.is_empty(), "nothing of a refused batch is written");
}

/// The state of the schema an injection would change: the synced tables, their
/// columns, and how many rows each has.
fn schema_fingerprint(db: &mut postgres::Client) -> Vec<(String, String, i64)> {
    let tables: Vec<(String, String, String)> = db
        .query(
            "select s.name::text, s.relid::regclass::text,
                    (select string_agg(attname::text, ',' order by attnum) from pg_attribute
                      where attrelid = s.relid and attnum > 0 and not attisdropped)
               from edgesync.synced_tables s order by 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    tables
        .into_iter()
        .map(|(name, rel, columns)| {
            let rows: i64 = db.query_one(format!("select count(*) from {rel}").as_str(), &[]).unwrap().get(0);
            (name, columns, rows)
        })
        .collect()
}

/// Table names that are not plain identifiers are refused by the Worker (400
/// `invalid_mutations`, each `invalid_type`), so no request is made at all. Column
/// keys are checked by `edgesync_push` against the catalog (400, each
/// `unknown_column`): the one request is that RPC, whose SQL is fixed, and the names
/// only ever appear in messages. Tables are intact after.
#[test]
fn upload_names_that_are_not_identifiers_are_refused_without_sql_built_from_them() {
    let _x = exclusive();
    let info = stack();
    let _quiet = RelayStopped::new(&info);
    let log = PostgrestLog::new(&info);
    let mut db = db(&info);
    let (user, token) = new_user(&info);
    let before = schema_fingerprint(&mut db);
    assert!(before.iter().any(|(t, _, _)| t == "entries"), "{before:?}");

    let long = "e".repeat(200);
    let tables = [
        "entries; drop table x",
        "entries; drop table entries; --",
        "public.entries",
        "ENTRIES",
        "Entries",
        long.as_str(),
        "entries\"",
        "\"entries\"",
        "entries--",
        "pg_catalog.pg_class",
        "entries)",
        " entries",
        "entries\u{0}",
        "",
        "1entries",
    ];
    let from = log.mark();
    let mutations: Vec<Value> =
        tables.iter().enumerate().map(|(i, t)| put(i as u64 + 1, t, json!({"title": "x"}))).collect();
    let a = upload(&info, &token, &uuid(), json!(mutations));
    let err = a.assert_error(400, "invalid_mutations");
    let errors = err["details"]["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), tables.len(), "{}", a.text);
    for (e, t) in errors.iter().zip(tables) {
        assert_eq!(e["code"], "invalid_type", "{t:?}: {e}");
    }
    // Mutation by mutation too, and as `type` of other shapes.
    for t in tables {
        upload(&info, &token, &uuid(), json!([put(1, t, json!({}))])).assert_error(400, "invalid_mutations");
    }
    for bad_type in [json!(null), json!(7), json!(["entries"]), json!({"name": "entries"})] {
        let mut m = put(1, "entries", json!({}));
        m["type"] = bad_type;
        upload(&info, &token, &uuid(), json!([m])).assert_error(400, "invalid_mutations");
    }
    // NUL in a column key or a value: Postgres cannot store it, the Worker refuses it.
    let nul = json!([
        put(1, "entries", json!({"title\u{0}": "v"})),
        put(2, "entries", json!({"title": "a\u{0}b"})),
        put(3, "entries", json!({"title": "ok", "properties": {"k": ["\u{0}"]}})),
    ]);
    let a = upload(&info, &token, &uuid(), nul);
    let err = a.assert_error(400, "invalid_mutations");
    let codes: Vec<&str> =
        err["details"]["errors"].as_array().unwrap().iter().map(|e| e["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["invalid_value"; 3], "{}", a.text);
    let reached = log.requests_since(from);
    assert!(reached.is_empty(), "a bad table name or a NUL reached PostgREST: {reached:?}");

    let long_column = "x".repeat(200);
    let columns = [
        "title\"; --",
        "title\" = 'x', user_id = '00000000-0000-0000-0000-000000000000' --",
        "a b",
        "Title",
        "title; drop table entries",
        "(select 1)",
        "entries.title",
        "",
        long_column.as_str(),
        "tit'le",
    ];
    let from = log.mark();
    let ids: Vec<Value> = columns.iter().map(|_| json!(uuid())).collect();
    let mutations: Vec<Value> = columns
        .iter()
        .zip(&ids)
        .enumerate()
        .map(|(i, (c, id))| json!({"op_id": i + 1, "op": "PUT", "type": "entries", "id": id, "data": {*c: "v", "title": "ok"}}))
        .collect();
    let a = upload(&info, &token, &uuid(), json!(mutations));
    let err = a.assert_error(400, "invalid_mutations");
    let errors = err["details"]["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), columns.len(), "{}", a.text);
    for (e, c) in errors.iter().zip(columns) {
        assert_eq!((e["code"].as_str(), e["column"].as_str()), (Some("unknown_column"), Some(c)), "{e}");
    }
    // PATCH builds its SET list from the keys: the same refusal.
    let patch =
        json!([{"op_id": 1, "op": "PATCH", "type": "entries", "id": uuid(), "data": {"title\" = 'x' --": "v"}}]);
    let a = upload(&info, &token, &uuid(), patch);
    assert_eq!(a.assert_error(400, "invalid_mutations")["details"]["errors"][0]["code"], "unknown_column");
    let reached = log.requests_since(from);
    assert_eq!(reached.len(), 2, "one RPC per batch: {reached:?}");
    for line in &reached {
        assert!(line.contains("\"POST /rpc/edgesync_push HTTP/1.1\" 400"), "only the fixed push RPC: {line}");
    }

    assert_eq!(schema_fingerprint(&mut db), before, "the synced tables changed");
    let x: Option<String> = db.query_one("select to_regclass('public.x')::text", &[]).unwrap().get(0);
    assert_eq!(x, None);
    assert!(server_state(&mut db, "entries", &user).0.is_empty(), "nothing of a refused batch is written");
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `/sync?tables=` with names that are not plain identifiers is 400 with no upstream
/// request; a well-formed name that is not a synced table is the database's precise 400.
#[test]
fn sync_tables_that_are_not_identifiers_are_400() {
    let _x = exclusive();
    let info = stack();
    let _quiet = RelayStopped::new(&info);
    let log = PostgrestLog::new(&info);
    let (_, token) = new_user(&info);
    let long = "e".repeat(200);
    let from = log.mark();
    for bad in [
        "entries; drop table x",
        "public.entries",
        "ENTRIES",
        long.as_str(),
        "entries\"",
        "entries)",
        "'entries'",
        "entries,public.entries",
        "entries,x y",
        "entries\u{0}",
        "é",
    ] {
        let url = format!("{}/sync?tables={}", info.functions_url, percent_encode(bad));
        let a = call("GET", &url, Some(&token), None);
        eprintln!("tables={bad:?}: {} {}", a.status, a.body["error"]["code"]);
        a.assert_error(400, "invalid_parameter");
    }
    let reached = log.requests_since(from);
    assert!(reached.is_empty(), "bad table names reached PostgREST: {reached:?}");
    let a = call("GET", &format!("{}/sync?tables=entries", info.functions_url), Some(&token), None);
    assert_eq!(a.status, 200, "{}", a.text);
    call("GET", &format!("{}/sync?tables=entries,no_such_table", info.functions_url), Some(&token), None)
        .assert_error(400, "unknown_table");
}
