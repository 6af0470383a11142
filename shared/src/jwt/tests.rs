//! Verification cases, one per attack or rule of token verification (ARCHITECTURE.md, `shared/src/jwt.rs`).

use super::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "test-hs256-secret-0123456789abcdefghijklmnop";
const NOW: u64 = 1_800_000_000;
const USER: &str = "8f14e45f-ceea-467f-a0e1-6a2b5d8a9c10";
const ISS: &str = "https://proj.supabase.co/auth/v1";
const EC_PRIVATE: &str = include_str!("../jwt_fixtures/ec_private.pem");
const EC_PUBLIC: &str = include_str!("../jwt_fixtures/ec_public.pem");
const EC_OTHER_PRIVATE: &str = include_str!("../jwt_fixtures/ec_other_private.pem");
const RSA_PRIVATE: &str = include_str!("../jwt_fixtures/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("../jwt_fixtures/rsa_public.pem");
const JWKS: &str = include_str!("../jwt_fixtures/jwks.json");

fn cfg() -> AuthConfig {
    AuthConfig { hs256_secret: Some(SECRET.into()), jwks_url: None, issuer: Some(ISS.into()), leeway_secs: 10 }
}

fn keys() -> KeySet {
    KeySet::from_jwks_json(JWKS).unwrap()
}

fn user_claims() -> Value {
    json!({"iss": ISS, "sub": USER, "aud": "authenticated", "role": "authenticated",
           "exp": NOW + 3600, "iat": NOW - 10, "email": "a@example.test"})
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    if value.is_null() {
        claims.as_object_mut().unwrap().remove(key);
    } else {
        claims[key] = value;
    }
    claims
}

fn hs256(claims: &Value) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn hs256_with(secret: &[u8], claims: &Value) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn es256(kid: Option<&str>, pem: &str, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = kid.map(Into::into);
    encode(&h, claims, &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap()).unwrap()
}

fn rs256(kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = kid.map(Into::into);
    encode(&h, claims, &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap()).unwrap()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn unsigned(alg: &str, claims: &Value) -> String {
    format!("{}.{}.", b64(&json!({"alg": alg, "typ": "JWT"})), b64(claims))
}

fn verify(token: &str) -> Result<Verified, AuthError> {
    verify_token(token, &cfg(), Some(&keys()), NOW)
}

#[test]
fn valid_user_tokens_of_every_algorithm_are_accepted() {
    let claims = user_claims();
    for token in [hs256(&claims), es256(Some("test-ec-1"), EC_PRIVATE, &claims), rs256(Some("test-rsa-1"), &claims)] {
        let v = verify(&token).unwrap();
        assert_eq!(v.principal, Principal::User { user_id: USER.into() });
        assert_eq!(v.claims["email"], "a@example.test");
        assert_eq!(v.token, token);
    }
}

#[test]
fn legacy_service_role_key_is_the_service_role() {
    let key = hs256(&json!({"iss": "supabase", "ref": "proj", "role": "service_role", "iat": NOW, "exp": NOW + 100}));
    assert_eq!(verify(&key).unwrap().principal, Principal::ServiceRole);
}

#[test]
fn every_rejection_has_its_reason() {
    let c = user_claims();
    let hs_good = hs256(&c);
    let parts: Vec<&str> = hs_good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&with(c.clone(), "sub", json!("00000000-0000-4000-8000-000000000000"))),
        parts[2]
    );
    let escalated = format!("{}.{}.{}", parts[0], b64(&with(c.clone(), "role", json!("service_role"))), parts[2]);

    let cases: Vec<(&str, String, AuthError)> = vec![
        ("alg none", unsigned("none", &c), AuthError::AlgNone),
        ("alg None", unsigned("None", &c), AuthError::AlgNone),
        ("alg NONE with a fake signature", format!("{}abc", unsigned("NONE", &c)), AuthError::AlgNone),
        (
            "alg HS512",
            hs256_with(SECRET.as_bytes(), &c).replacen(parts[0], &b64(&json!({"alg": "HS512", "typ": "JWT"})), 1),
            AuthError::UnsupportedAlg("HS512".into()),
        ),
        ("HS256 signed with the EC public key", hs256_with(EC_PUBLIC.as_bytes(), &c), AuthError::BadSignature),
        ("HS256 signed with the RSA public key", hs256_with(RSA_PUBLIC.as_bytes(), &c), AuthError::BadSignature),
        (
            "HS256 signed with the JWKS oct key",
            hs256_with(b"an-hmac-secret-that-must-be-ignored-0123", &c),
            AuthError::BadSignature,
        ),
        ("wrong secret", hs256_with(b"another-secret-another-secret-another", &c), AuthError::BadSignature),
        ("ES256 signed by another key", es256(Some("test-ec-1"), EC_OTHER_PRIVATE, &c), AuthError::BadSignature),
        ("RS256 header with the EC key's kid", rs256(Some("test-ec-1"), &c), AuthError::KeyTypeMismatch),
        ("ES256 header with the RSA key's kid", es256(Some("test-rsa-1"), EC_PRIVATE, &c), AuthError::KeyTypeMismatch),
        (
            "ES256 with the oct key's kid",
            es256(Some("test-oct-1"), EC_PRIVATE, &c),
            AuthError::UnknownKid("test-oct-1".into()),
        ),
        ("unknown kid", es256(Some("rotated-away"), EC_PRIVATE, &c), AuthError::UnknownKid("rotated-away".into())),
        ("missing kid", es256(None, EC_PRIVATE, &c), AuthError::MissingKid),
        ("tampered payload", tampered, AuthError::BadSignature),
        ("role escalated in the payload", escalated, AuthError::BadSignature),
        ("expired beyond leeway", hs256(&with(c.clone(), "exp", json!(NOW - 11))), AuthError::Expired),
        ("missing exp", hs256(&with(c.clone(), "exp", Value::Null)), AuthError::MissingExp),
        ("string exp", hs256(&with(c.clone(), "exp", json!("tomorrow"))), AuthError::MissingExp),
        ("nbf beyond leeway", hs256(&with(c.clone(), "nbf", json!(NOW + 11))), AuthError::NotYetValid),
        ("wrong aud", hs256(&with(c.clone(), "aud", json!("anon"))), AuthError::WrongAudience),
        ("missing aud", hs256(&with(c.clone(), "aud", Value::Null)), AuthError::WrongAudience),
        ("wrong iss", hs256(&with(c.clone(), "iss", json!("https://evil.example/auth/v1"))), AuthError::WrongIssuer),
        ("missing sub", hs256(&with(c.clone(), "sub", Value::Null)), AuthError::MissingSub),
        ("sub not a uuid", hs256(&with(c.clone(), "sub", json!("admin"))), AuthError::BadSub),
        (
            "role postgres",
            hs256(&with(c.clone(), "role", json!("postgres"))),
            AuthError::ForbiddenRole("postgres".into()),
        ),
        ("role anon", hs256(&with(c.clone(), "role", json!("anon"))), AuthError::ForbiddenRole("anon".into())),
        ("no role", hs256(&with(c.clone(), "role", Value::Null)), AuthError::ForbiddenRole("(none)".into())),
        ("two segments", "abc.def".into(), AuthError::Malformed("a JWT has three dot-separated parts")),
        ("header not base64", "!!!.e30.sig".into(), AuthError::Malformed("not base64url")),
        ("header not json", format!("{}.e30.sig", URL_SAFE_NO_PAD.encode("nope")), AuthError::Malformed("not JSON")),
        (
            "header without alg",
            format!("{}.e30.sig", b64(&json!({"typ": "JWT"}))),
            AuthError::Malformed("the header has no alg"),
        ),
        ("oversized", format!("{}.{}.x", "a".repeat(MAX_TOKEN_LEN), "b"), AuthError::TooLarge),
    ];
    for (what, token, want) in cases {
        assert_eq!(verify(&token).map(|v| v.principal), Err(want), "{what}");
    }
}

#[test]
fn only_the_hs256_service_role_key_without_a_user_is_the_service_role() {
    // Validly signed tokens that claim the service role but name a user, or come from
    // the JWKS (Supabase Auth's session keys): refused, never the service role.
    let svc = |c: Value| with(c, "role", json!("service_role"));
    let key_shaped = json!({"iss": "supabase", "ref": "proj", "role": "service_role", "iat": NOW, "exp": NOW + 100});
    let cases = [
        ("HS256 user token with role service_role", hs256(&svc(user_claims()))),
        ("ES256 user token with role service_role", es256(Some("test-ec-1"), EC_PRIVATE, &svc(user_claims()))),
        ("RS256 user token with role service_role", rs256(Some("test-rsa-1"), &svc(user_claims()))),
        ("HS256 service key that names a user", hs256(&with(key_shaped.clone(), "sub", json!(USER)))),
        ("HS256 service key with an empty sub", hs256(&with(key_shaped.clone(), "sub", json!("")))),
        ("ES256 service key", es256(Some("test-ec-1"), EC_PRIVATE, &key_shaped)),
        ("RS256 service key", rs256(Some("test-rsa-1"), &key_shaped)),
    ];
    for (what, token) in cases {
        let err = verify(&token).map(|v| v.principal).unwrap_err();
        assert_eq!(err, AuthError::ServiceRoleNotGranted, "{what}");
        let api = ApiError::from(err);
        assert_eq!((api.status, api.code), (403, "forbidden_role"), "{what}");
    }
    assert_eq!(verify(&hs256(&key_shaped)).unwrap().principal, Principal::ServiceRole);
}

#[test]
fn leeway_accepts_small_clock_skew() {
    let c = user_claims();
    assert!(verify(&hs256(&with(c.clone(), "exp", json!(NOW - 9)))).is_ok());
    assert!(verify(&hs256(&with(c.clone(), "nbf", json!(NOW + 9)))).is_ok());
    assert!(verify(&hs256(&with(c, "aud", json!(["other", "authenticated"])))).is_ok());
}

#[test]
fn issuer_is_not_checked_when_not_configured() {
    let token = hs256(&with(user_claims(), "iss", json!("anything")));
    let cfg = AuthConfig { issuer: None, ..cfg() };
    assert!(verify_token(&token, &cfg, None, NOW).is_ok());
}

#[test]
fn algorithms_without_their_key_material_are_refused() {
    let c = user_claims();
    let no_secret = AuthConfig { hs256_secret: None, ..cfg() };
    assert_eq!(verify_token(&hs256(&c), &no_secret, Some(&keys()), NOW).unwrap_err(), AuthError::NoSecretConfigured);
    let token = es256(Some("test-ec-1"), EC_PRIVATE, &c);
    assert_eq!(verify_token(&token, &cfg(), None, NOW).unwrap_err(), AuthError::NoJwksConfigured);
}

#[test]
fn jwks_keeps_ec_and_rsa_keys_and_drops_oct() {
    let k = keys();
    assert_eq!(k.len(), 2);
    assert!(KeySet::from_jwks_json("[]").is_err());
    assert!(KeySet::from_jwks_json("not json").is_err());
    // Broken entries are skipped, not fatal.
    let k = KeySet::from_jwks_json(r#"{"keys":[{"kty":"EC","kid":"x"},{"kty":"weird"}]}"#).unwrap();
    assert!(k.is_empty());
    // Keys meant for encryption, or declared for another algorithm, are dropped.
    let mut doc: Value = serde_json::from_str(JWKS).unwrap();
    doc["keys"][0]["use"] = json!("enc");
    doc["keys"][1]["alg"] = json!("ES256");
    assert!(KeySet::from_jwks_json(&doc.to_string()).unwrap().is_empty());
}

#[test]
fn bearer_header_parsing() {
    assert_eq!(bearer_token(None), Err(AuthError::MissingToken));
    assert_eq!(bearer_token(Some("  ")), Err(AuthError::MissingToken));
    assert_eq!(bearer_token(Some("Basic abc")), Err(AuthError::BadScheme));
    assert_eq!(bearer_token(Some("abc.def.ghi")), Err(AuthError::BadScheme));
    assert_eq!(bearer_token(Some("Bearer ")), Err(AuthError::BadScheme));
    assert_eq!(bearer_token(Some("Bearer  ")), Err(AuthError::BadScheme));
    assert_eq!(bearer_token(Some("bearer a.b.c")), Ok("a.b.c"));
    assert_eq!(bearer_token(Some("Bearer a.b.c")), Ok("a.b.c"));
    let huge = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
    assert_eq!(bearer_token(Some(&huge)), Err(AuthError::TooLarge));
}

#[test]
fn errors_map_to_401_403_503_and_never_echo_the_token() {
    let cases = [
        (AuthError::MissingToken, 401, "missing_token"),
        (AuthError::BadSignature, 401, "invalid_token"),
        (AuthError::Expired, 401, "invalid_token"),
        (AuthError::UnknownKid("k".into()), 401, "invalid_token"),
        (AuthError::ForbiddenRole("postgres".into()), 403, "forbidden_role"),
        (AuthError::KeysUnavailable("connect refused to 10.0.0.1".into()), 503, "jwks_unavailable"),
    ];
    for (e, status, code) in cases {
        let api: ApiError = e.into();
        assert_eq!((api.status, api.code), (status, code));
        assert!(!api.message.contains("10.0.0.1"));
    }
}

#[test]
fn jwks_cache_policy() {
    let mut c = JwksCache::default();
    assert!(c.should_fetch(NOW, false), "cold cache fetches");
    // A failed cold fetch is retried, but not on every request.
    assert!(c.record(NOW, Err("down".into())).is_err());
    assert!(!c.should_fetch(NOW + 1, false));
    assert!(c.should_fetch(NOW + JWKS_COLD_RETRY_SECS, false));
    c.record(NOW + 5, Ok(keys())).unwrap();
    let t = NOW + 5;
    assert!(!c.should_fetch(t + 1, false), "fresh keys are reused");
    assert!(!c.should_fetch(t + 59, true), "unknown kid refetches at most once a minute");
    assert!(c.should_fetch(t + 60, true));
    assert!(c.should_fetch(t + JWKS_MAX_AGE_SECS, false), "old keys are refreshed");
    // A failed refresh keeps the old keys.
    assert!(c.record(t + JWKS_MAX_AGE_SECS, Err("down".into())).is_err());
    assert_eq!(c.keys().map(KeySet::len), Some(2));
    assert!(!c.should_fetch(t + JWKS_MAX_AGE_SECS + 1, true));
}

/// A tiny JWKS server on loopback that counts its requests.
fn jwks_server(body: &'static str) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let answer = move |s: &mut std::net::TcpStream| {
        counter.fetch_add(1, Ordering::SeqCst);
        let _ = write!(s, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
    };
    (format!("{}/auth/v1/.well-known/jwks.json", crate::test_server::raw_server("", answer, true)), hits)
}

#[tokio::test(flavor = "current_thread")]
async fn authenticate_fetches_once_and_refetches_unknown_kids_at_most_once_a_minute() {
    use std::sync::atomic::Ordering;
    let (url, hits) = jwks_server(JWKS);
    let cfg = AuthConfig { jwks_url: Some(url), ..cfg() };
    let c = user_claims();
    let good = format!("Bearer {}", es256(Some("test-ec-1"), EC_PRIVATE, &c));
    let unknown = format!("Bearer {}", es256(Some("not-there"), EC_PRIVATE, &c));

    assert!(authenticate(Some(&good), &cfg, NOW, None).await.is_ok());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert!(authenticate(Some(&good), &cfg, NOW + 1, None).await.is_ok());
    assert_eq!(hits.load(Ordering::SeqCst), 1, "cached");

    assert_eq!(
        authenticate(Some(&unknown), &cfg, NOW + 61, None).await.unwrap_err(),
        AuthError::UnknownKid("not-there".into())
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2, "one refetch for the unknown kid");
    assert!(authenticate(Some(&unknown), &cfg, NOW + 62, None).await.is_err());
    assert_eq!(hits.load(Ordering::SeqCst), 2, "no refetch within a minute");

    // HS256 never touches the JWKS.
    assert!(authenticate(Some(&format!("Bearer {}", hs256(&c))), &cfg, NOW + 63, None).await.is_ok());
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn unreachable_jwks_is_503_not_401() {
    let cfg = AuthConfig { jwks_url: Some("http://127.0.0.1:1/jwks.json".into()), ..cfg() };
    let token = format!("Bearer {}", es256(Some("test-ec-1"), EC_PRIVATE, &user_claims()));
    let err = authenticate(Some(&token), &cfg, NOW, None).await.unwrap_err();
    assert!(matches!(err, AuthError::KeysUnavailable(_)), "{err:?}");
    assert_eq!(ApiError::from(err).status, 503);
}

use crate::test_server::{raw_server, TOKIO_SLEEP};

/// A JWKS endpoint that answers `head` (status line and headers) and then `body`
/// forever, chunk after chunk, or (`body` empty) nothing more, never closing.
fn endless_jwks_server(head: &'static str, body: &'static str) -> String {
    use std::io::Write;
    let chunks = move |s: &mut std::net::TcpStream| {
        // Bounded: 64 MiB at most, far past the cap, then the connection stays open.
        for _ in 0..(64 * 1024 * 1024 / body.len().max(1)) {
            if body.is_empty() || write!(s, "{:x}\r\n{body}\r\n", body.len()).is_err() {
                break;
            }
        }
    };
    format!("{}/jwks.json", raw_server(head, chunks, false))
}

#[tokio::test(flavor = "current_thread")]
async fn a_jwks_endpoint_that_never_finishes_is_given_up_on_at_the_deadline() {
    let url =
        endless_jwks_server("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{", "");
    let cfg = AuthConfig { jwks_url: Some(url), ..cfg() };
    let token = format!("Bearer {}", es256(Some("test-ec-1"), EC_PRIVATE, &user_claims()));
    let deadline = crate::deadline::Deadline { ms: 300, sleep: TOKIO_SLEEP };
    let started = std::time::Instant::now();
    let err = authenticate(Some(&token), &cfg, NOW, Some(deadline)).await.unwrap_err();
    assert!(matches!(&err, AuthError::KeysUnavailable(m) if m.contains("within 300 ms")), "{err:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "it waited {:?}", started.elapsed());
}

#[tokio::test(flavor = "current_thread")]
async fn an_endless_jwks_body_is_refused_while_reading() {
    // Chunked, so no Content-Length tells the size: only reading can.
    let url = endless_jwks_server(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        "{\"keys\": [                                                                                  ",
    );
    let cfg = AuthConfig { jwks_url: Some(url), ..cfg() };
    let token = format!("Bearer {}", es256(Some("test-ec-1"), EC_PRIVATE, &user_claims()));
    let err = authenticate(Some(&token), &cfg, NOW, None).await.unwrap_err();
    assert!(matches!(&err, AuthError::KeysUnavailable(m) if m.contains("larger than 65536 bytes")), "{err:?}");
    // A declared length past the cap is refused without reading.
    let url = endless_jwks_server("HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n", "");
    let declared = AuthConfig { jwks_url: Some(url), ..cfg };
    let err = authenticate(Some(&token), &declared, NOW, None).await.unwrap_err();
    assert!(matches!(&err, AuthError::KeysUnavailable(m) if m.contains("larger than")), "{err:?}");
}

#[test]
fn expires_is_the_verified_exp_in_whole_seconds_fractions_included() {
    assert_eq!(verify(&hs256(&user_claims())).unwrap().expires(), NOW + 3600);
    // A fractional `exp` passes verification; it must not read as "already expired".
    let fractional = with(user_claims(), "exp", json!((NOW + 60) as f64 + 0.5));
    assert_eq!(verify(&hs256(&fractional)).unwrap().expires(), NOW + 60);
}
