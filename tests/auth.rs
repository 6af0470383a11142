//! Every function that needs a token refuses requests without a valid one, with the
//! JSON error, through the real gateway and Workers under wrangler dev.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use edgesync_integration::{call, call_with_headers, keys, stack, user_token, user_token_es256, StackInfo};
use serde_json::{json, Value};

/// (method, path) of each endpoint that takes a user token.
const PROTECTED: &[(&str, &str)] =
    &[("GET", "/sync"), ("POST", "/upload"), ("POST", "/populate"), ("POST", "/embed_entry")];

fn body_for(method: &str) -> Option<Value> {
    (method == "POST").then(|| json!({}))
}

fn each_endpoint(info: &StackInfo, mut check: impl FnMut(&str, &str, String)) {
    for (method, path) in PROTECTED {
        check(method, path, format!("{}{}", info.functions_url, path));
    }
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn no_token_is_401_missing_token() {
    let info = stack();
    each_endpoint(&info, |method, path, url| {
        let a = call(method, &url, None, body_for(method).as_ref());
        a.assert_error(401, "missing_token");
        assert_eq!(a.www_authenticate.as_deref(), Some("Bearer"), "{path}");
    });
}

#[test]
fn bad_tokens_are_401_invalid_token() {
    let info = stack();
    let sub = keys::random_uuid();
    let expired = keys::sign_hs256(&info.jwt_secret, &keys::user_claims(&sub, &info.jwt_issuer, -3600)).unwrap();
    let wrong_secret = keys::sign_hs256(
        "another-secret-that-is-long-enough-0123456789",
        &keys::user_claims(&sub, &info.jwt_issuer, 3600),
    )
    .unwrap();
    let claims = keys::user_claims(&sub, &info.jwt_issuer, 3600);
    let alg_none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims));
    // A valid token whose payload was edited afterwards (another user's id).
    let good = user_token(&info, &sub);
    let parts: Vec<&str> = good.split('.').collect();
    let mut forged_claims = claims.clone();
    forged_claims["sub"] = json!(keys::random_uuid());
    let tampered = format!("{}.{}.{}", parts[0], b64(&forged_claims), parts[2]);

    let cases = [
        ("expired", expired),
        ("wrong secret", wrong_secret),
        ("alg none", alg_none),
        ("tampered", tampered),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    each_endpoint(&info, |method, path, url| {
        for (what, token) in &cases {
            let a = call(method, &url, Some(token), body_for(method).as_ref());
            assert_eq!(a.status, 401, "{what} on {path}: {}", a.text);
            a.assert_error(401, "invalid_token");
        }
    });
}

#[test]
fn wrong_scheme_is_refused() {
    let info = stack();
    let token = user_token(&info, &keys::random_uuid());
    each_endpoint(&info, |method, _path, url| {
        for header in [format!("Basic {token}"), token.clone(), "Bearer".to_owned()] {
            let a = call_with_headers(method, &url, &[("authorization", header)], body_for(method).as_ref());
            assert_eq!(a.status, 401, "{}", a.text);
        }
    });
}

/// A valid token gets through verification to the function; `embed_entry` then
/// refuses a user's role with 403 `forbidden_role`, not 401.
#[test]
fn valid_hs256_and_es256_tokens_pass_verification() {
    let info = stack();
    let sub = keys::random_uuid();
    for token in [user_token(&info, &sub), user_token_es256(&info, &sub)] {
        each_endpoint(&info, |method, path, url| {
            let a = call(method, &url, Some(&token), body_for(method).as_ref());
            assert_ne!(a.status, 401, "{path}: {}", a.text);
            if path == "/embed_entry" {
                // Verified, then refused by role: only the database or the service role call it.
                a.assert_error(403, "forbidden_role");
                return;
            }
            assert_ne!(a.status, 403, "{path}: {}", a.text);
            assert_ne!(a.status, 501, "{path}: {}", a.text);
        });
    }
}

#[test]
fn es256_token_with_an_unknown_kid_is_401() {
    let info = stack();
    let mut other = keys::Es256Key::generate().unwrap();
    other.kid = "not-in-the-jwks".into();
    let token = keys::sign_es256(&other, &keys::user_claims(&keys::random_uuid(), &info.jwt_issuer, 3600)).unwrap();
    let a = call("GET", &format!("{}/sync", info.functions_url), Some(&token), None);
    a.assert_error(401, "invalid_token");
}

#[test]
fn wrong_method_is_405_before_auth() {
    let info = stack();
    call("POST", &format!("{}/sync", info.functions_url), None, Some(&json!({})))
        .assert_error(405, "method_not_allowed");
    call("GET", &format!("{}/upload", info.functions_url), None, None).assert_error(405, "method_not_allowed");
}
