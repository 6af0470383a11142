//! `jwt::verify_token` with a fixed HS256 secret and the fixture JWKS, on any token
//! string and on tokens assembled from fuzzed header and claims JSON (base64url parts
//! plus a fuzzed signature, or a genuine HS256 signature so the claim checks are
//! reached); and `jwt::bearer_token` on any header value.
//!
//! Invariants: never panics; a token is accepted only if it is genuinely signed with
//! the configured secret (HS256, checked against an HMAC computed here) or with the
//! fixture key its `kid` names (checked with the PEM public key, not the JWKS), and
//! only if its claims pass: unexpired at `NOW`, a user with audience `authenticated`,
//! the configured issuer and a UUID `sub`, or the service role.

#![no_main]

use arbitrary::Unstructured;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use edgesync_fuzz::{is_lower_uuid, number, object, pick, value, Dict};
use edgesync_shared::jwt::{bearer_token, verify_token, AuthConfig, AuthError, KeySet, Principal, MAX_TOKEN_LEN};
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use sha2::Sha256;
use std::sync::OnceLock;

const SECRET: &str = "test-hs256-secret-0123456789abcdefghijklmnop";
const NOW: u64 = 1_800_000_000;
const LEEWAY: u64 = 10;
const USER: &str = "8f14e45f-ceea-467f-a0e1-6a2b5d8a9c10";
const ISS: &str = "https://proj.supabase.co/auth/v1";
const JWKS: &str = include_str!("../../shared/src/jwt_fixtures/jwks.json");
const EC_PUBLIC: &str = include_str!("../../shared/src/jwt_fixtures/ec_public.pem");
const RSA_PUBLIC: &str = include_str!("../../shared/src/jwt_fixtures/rsa_public.pem");

const HEADER: Dict = Dict {
    keys: &["alg", "typ", "kid", "cty", "jku", "x5u", "crit", "b64"],
    strings: &[
        "HS256",
        "ES256",
        "RS256",
        "none",
        "NONE",
        "HS384",
        "EdDSA",
        "JWT",
        "test-ec-1",
        "test-rsa-1",
        "test-oct-1",
    ],
};

const CLAIMS: Dict = Dict {
    keys: &["exp", "nbf", "iat", "role", "aud", "iss", "sub", "email"],
    strings: &[
        "authenticated",
        "service_role",
        "anon",
        "supabase",
        ISS,
        USER,
        "8F14E45F-CEEA-467F-A0E1-6A2B5D8A9C10",
        "not-a-uuid",
    ],
};

fn cfg() -> &'static AuthConfig {
    static CFG: OnceLock<AuthConfig> = OnceLock::new();
    CFG.get_or_init(|| AuthConfig {
        hs256_secret: Some(SECRET.into()),
        jwks_url: None,
        issuer: Some(ISS.into()),
        leeway_secs: LEEWAY,
    })
}

fn keys() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| KeySet::from_jwks_json(JWKS).expect("the fixture JWKS parses"))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        check_token(s);
        check_bearer(s);
    }
    let mut u = Unstructured::new(data);
    if let Ok(token) = assembled(&mut u) {
        check_token(&token);
        check_bearer(&format!("Bearer {token}"));
    }
});

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hs256(message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(message.as_bytes());
    b64(&mac.finalize().into_bytes())
}

/// `header.claims.signature` from fuzzed parts.
fn assembled(u: &mut Unstructured) -> arbitrary::Result<String> {
    let mut header = object(u, &HEADER, 1)?;
    if u.ratio(7u8, 8u8)? {
        header.insert("alg".into(), json!(pick(u, HEADER.strings)?));
    }
    let mut claims = object(u, &CLAIMS, 1)?;
    if u.ratio(3u8, 4u8)? {
        // Mostly plausible claims, so the later checks are reached.
        claims.insert("role".into(), json!(pick(u, &["authenticated", "service_role", "anon", ""])?));
        claims.insert("exp".into(), time(u)?);
        if u.ratio(1u8, 2u8)? {
            claims.insert("aud".into(), aud(u)?);
            claims.insert("iss".into(), json!(pick(u, &[ISS, "supabase", "https://evil.example/auth/v1"])?));
            claims.insert("sub".into(), json!(pick(u, CLAIMS.strings)?));
        }
        if u.ratio(1u8, 4u8)? {
            claims.insert("nbf".into(), time(u)?);
        }
    }
    let segment = |u: &mut Unstructured, obj: Map<String, Value>| -> arbitrary::Result<String> {
        Ok(match u.int_in_range(0..=9)? {
            0 => u.arbitrary()?,
            1 => format!("{}==", b64(Value::Object(obj).to_string().as_bytes())),
            2 => b64(value(u, &CLAIMS, 1)?.to_string().as_bytes()),
            _ => b64(Value::Object(obj).to_string().as_bytes()),
        })
    };
    let head = segment(u, header)?;
    let body = segment(u, claims)?;
    let signing_input = format!("{head}.{body}");
    let signature = match u.int_in_range(0..=5)? {
        0 => u.arbitrary()?,
        1 => b64(&u.arbitrary::<Vec<u8>>()?),
        2 => String::new(),
        _ => hs256(&signing_input),
    };
    Ok(format!("{signing_input}.{signature}"))
}

/// A time claim near `NOW` (either side of the leeway), far away, or anything.
fn time(u: &mut Unstructured) -> arbitrary::Result<Value> {
    Ok(match u.int_in_range(0..=3)? {
        0 => json!(NOW as i64 + u.int_in_range(-3600i64..=3600)?),
        1 => json!((NOW as f64) + u.int_in_range(-20i32..=20)? as f64 + 0.5),
        2 => number(u)?,
        _ => value(u, &CLAIMS, 0)?,
    })
}

fn aud(u: &mut Unstructured) -> arbitrary::Result<Value> {
    Ok(match u.int_in_range(0..=3)? {
        0 => json!("authenticated"),
        1 => json!(["other", "authenticated"]),
        2 => json!(["other"]),
        _ => value(u, &CLAIMS, 1)?,
    })
}

fn check_bearer(header: &str) {
    match bearer_token(Some(header)) {
        Ok(token) => {
            assert!(!token.is_empty() && token.len() <= MAX_TOKEN_LEN, "{header:?}");
            assert_eq!(token, token.trim(), "{header:?}");
            let trimmed = header.trim();
            assert!(trimmed.get(..6).is_some_and(|s| s.eq_ignore_ascii_case("bearer")), "{header:?}");
            assert!(trimmed.ends_with(token), "{header:?}");
            check_token(token);
        }
        Err(e) => assert!(matches!(e, AuthError::MissingToken | AuthError::BadScheme | AuthError::TooLarge), "{e:?}"),
    }
    assert_eq!(bearer_token(None), Err(AuthError::MissingToken));
}

fn check_token(token: &str) {
    let Ok(v) = verify_token(token, cfg(), Some(keys()), NOW) else { return };
    assert_eq!(v.token, token);
    let alg = assert_genuine(token);
    let claims = &v.claims;
    let exp = claims["exp"].as_f64().expect("an accepted token has a numeric exp");
    assert!(exp + LEEWAY as f64 > NOW as f64, "expired token accepted: {claims}");
    if let Some(nbf) = claims.get("nbf") {
        assert!(nbf.as_f64().is_some_and(|n| n <= (NOW + LEEWAY) as f64), "not-yet-valid token accepted: {claims}");
    }
    match &v.principal {
        Principal::User { user_id } => {
            assert_eq!(claims["role"], "authenticated", "{claims}");
            assert!(is_lower_uuid(user_id), "{user_id:?}");
            assert_eq!(claims["sub"].as_str().map(str::to_ascii_lowercase).as_deref(), Some(user_id.as_str()));
            assert_eq!(claims["iss"], ISS, "wrong issuer accepted: {claims}");
            let aud_ok = claims["aud"] == "authenticated"
                || claims["aud"].as_array().is_some_and(|a| a.iter().any(|x| x == "authenticated"));
            assert!(aud_ok, "wrong audience accepted: {claims}");
        }
        Principal::ServiceRole => {
            assert_eq!(claims["role"], "service_role", "{claims}");
            // Only the project's HS256 service-role key, which names no user.
            assert!(claims.get("sub").is_none(), "a token naming a user became the service role: {claims}");
            assert_eq!(alg, "HS256", "a JWKS-signed token became the service role: {token:?}");
        }
    }
}

/// An accepted token must carry a signature made with the fixed secret or the fixture
/// key its header names; computed here independently of `shared`.
fn assert_genuine(token: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token:?}");
    let header: Value = URL_SAFE_NO_PAD
        .decode(parts[0].trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| panic!("an accepted token's header does not decode: {token:?}"));
    let alg = header["alg"].as_str().unwrap_or_default();
    match alg {
        "HS256" => assert_eq!(
            parts[2],
            hs256(&format!("{}.{}", parts[0], parts[1])),
            "a token not signed with the secret was accepted: {token:?}"
        ),
        "ES256" | "RS256" => {
            let (algorithm, key) = match (alg, header["kid"].as_str()) {
                ("ES256", Some("test-ec-1")) => (Algorithm::ES256, DecodingKey::from_ec_pem(EC_PUBLIC.as_bytes())),
                ("RS256", Some("test-rsa-1")) => (Algorithm::RS256, DecodingKey::from_rsa_pem(RSA_PUBLIC.as_bytes())),
                _ => panic!("accepted {alg} with a kid that is not the fixture key of that type: {token:?}"),
            };
            let mut validation = Validation::new(algorithm);
            validation.validate_exp = false;
            validation.validate_aud = false;
            validation.required_spec_claims.clear();
            let key = key.expect("the fixture PEM parses");
            assert!(
                jsonwebtoken::decode::<Value>(token, &key, &validation).is_ok(),
                "a token not signed with the fixture key was accepted: {token:?}"
            );
        }
        _ => panic!("a token with alg {alg:?} was accepted: {token:?}"),
    }
    alg.to_owned()
}
