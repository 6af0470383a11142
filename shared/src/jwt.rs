//! JWT verification for Supabase tokens (README.md, the opening section).
//!
//! Two ways a token can be signed, as on a Supabase project during key rotation:
//! HS256 with the project's legacy JWT secret, or ES256/RS256 with a key published in
//! the project's JWKS. [`verify_token`] is pure (the caller passes the key set and
//! `now`); [`authenticate`] is the I/O shell that keeps the JWKS cached per isolate.
//!
//! What it defends against, each with a test below: `alg: none`; an `alg` that does
//! not match the key's type; HS256 tokens "signed" with a public key (HS256 only ever
//! uses the configured secret, and `oct` keys in a JWKS are ignored); unknown or
//! missing `kid`; expired and not-yet-valid tokens (with a small leeway); wrong `aud`
//! or `iss`; missing or malformed `sub`; roles a user must not have (`service_role`
//! is only ever the project's HS256 service-role key, which names no user); oversized
//! tokens.

use crate::deadline::Deadline;
use crate::upstream::{exchange, Answer, ExchangeError, Limits};
use crate::ApiError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use std::cell::RefCell;
use std::collections::HashMap;

/// Longest token accepted; Supabase's are about 1 KB.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// How tokens are verified. Built by [`crate::config::Config`].
#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    /// The project's legacy HS256 secret.
    pub hs256_secret: Option<String>,
    /// The project's JWKS endpoint (ES256/RS256 keys).
    pub jwks_url: Option<String>,
    /// When set, user tokens must carry exactly this `iss`.
    pub issuer: Option<String>,
    /// Leeway for `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    /// An end user; `user_id` is the token's `sub` (a lowercase UUID).
    User { user_id: String },
    /// Supabase's service role: only for server-to-server calls.
    ServiceRole,
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    pub principal: Principal,
    pub claims: Value,
    pub token: String,
}

impl Verified {
    /// The token's `exp` in whole seconds (verification requires it): a socket or a
    /// stream opened with this token ends then.
    pub fn expires(&self) -> u64 {
        self.claims.get("exp").and_then(Value::as_f64).map_or(0, |exp| exp.max(0.0) as u64)
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthError {
    MissingToken,
    BadScheme,
    TooLarge,
    Malformed(&'static str),
    AlgNone,
    UnsupportedAlg(String),
    NoSecretConfigured,
    NoJwksConfigured,
    MissingKid,
    UnknownKid(String),
    KeyTypeMismatch,
    BadSignature,
    MissingExp,
    Expired,
    NotYetValid,
    WrongAudience,
    WrongIssuer,
    MissingSub,
    BadSub,
    ForbiddenRole(String),
    /// `role: service_role` on a token that is not the project's service-role key: one
    /// that names a user (`sub`) or is signed with a JWKS key (Supabase Auth's).
    ServiceRoleNotGranted,
    KeysUnavailable(String),
}

impl AuthError {
    fn message(&self) -> String {
        match self {
            AuthError::MissingToken => "an Authorization: Bearer <token> header is required".into(),
            AuthError::BadScheme => "the Authorization header must be `Bearer <token>`".into(),
            AuthError::TooLarge => format!("the token is longer than {MAX_TOKEN_LEN} bytes"),
            AuthError::Malformed(why) => format!("the token is malformed: {why}"),
            AuthError::AlgNone => "unsigned tokens (alg none) are not accepted".into(),
            AuthError::UnsupportedAlg(alg) => {
                format!("token algorithm {alg:?} is not accepted (HS256, ES256 or RS256)")
            }
            AuthError::NoSecretConfigured => "HS256 tokens are not accepted by this deployment".into(),
            AuthError::NoJwksConfigured => "asymmetric tokens are not accepted by this deployment".into(),
            AuthError::MissingKid => "the token header has no kid".into(),
            AuthError::UnknownKid(_) => "the token was signed with an unknown key".into(),
            AuthError::KeyTypeMismatch => "the token's algorithm does not match its key".into(),
            AuthError::BadSignature => "the token signature is invalid".into(),
            AuthError::MissingExp => "the token has no numeric exp claim".into(),
            AuthError::Expired => "the token has expired".into(),
            AuthError::NotYetValid => "the token is not valid yet (nbf)".into(),
            AuthError::WrongAudience => "the token's audience is not `authenticated`".into(),
            AuthError::WrongIssuer => "the token was issued by another issuer".into(),
            AuthError::MissingSub => "the token has no sub claim".into(),
            AuthError::BadSub => "the token's sub is not a user id".into(),
            AuthError::ForbiddenRole(role) => format!("role {role:?} may not call this service"),
            AuthError::ServiceRoleNotGranted => {
                "only the project's service-role key (HS256, naming no user) acts as the service role".into()
            }
            AuthError::KeysUnavailable(_) => "the signing keys could not be fetched; try again shortly".into(),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let message = e.message();
        match e {
            AuthError::MissingToken => ApiError::unauthorized("missing_token", message),
            AuthError::ForbiddenRole(_) | AuthError::ServiceRoleNotGranted => {
                ApiError::forbidden("forbidden_role", message)
            }
            AuthError::KeysUnavailable(why) => ApiError::unavailable("jwks_unavailable", message).with_log_detail(why),
            _ => ApiError::unauthorized("invalid_token", message),
        }
    }
}

/// The token from an `Authorization` header value: exactly `Bearer <token>`.
pub fn bearer_token(header: Option<&str>) -> Result<&str, AuthError> {
    let header = header.map(str::trim).filter(|h| !h.is_empty()).ok_or(AuthError::MissingToken)?;
    let (scheme, token) = header.split_once(' ').ok_or(AuthError::BadScheme)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::BadScheme);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::BadScheme);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::TooLarge);
    }
    Ok(token)
}

/// Which family a JWKS key belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum KeyKind {
    Ec,
    Rsa,
}

/// A parsed JWKS: the EC (P-256) and RSA public keys that have a `kid`.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, (KeyKind, DecodingKey)>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet").field("kids", &self.keys.keys().collect::<Vec<_>>()).finish()
    }
}

impl KeySet {
    /// Parse a JWKS document. `oct` (HMAC) keys are ignored: a published key set must
    /// never be able to supply an HS256 secret. Keys without `kid` are ignored too.
    pub fn from_jwks_json(json: &str) -> Result<KeySet, String> {
        let raw: Value = serde_json::from_str(json).map_err(|e| format!("JWKS is not JSON: {e}"))?;
        let entries = raw.get("keys").and_then(Value::as_array).ok_or("JWKS has no keys array")?;
        let mut keys = HashMap::new();
        for entry in entries {
            // Parse one key at a time, so one exotic key does not hide the others.
            let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else { continue };
            let Some(kid) = jwk.common.key_id.clone() else { continue };
            let kind = match &jwk.algorithm {
                AlgorithmParameters::EllipticCurve(p) if matches!(p.curve, jsonwebtoken::jwk::EllipticCurve::P256) => {
                    KeyKind::Ec
                }
                AlgorithmParameters::RSA(_) => KeyKind::Rsa,
                _ => continue,
            };
            // A key published for encryption, or declared for another algorithm, must
            // not verify signatures.
            let declared_use = entry.get("use").and_then(Value::as_str);
            let declared_alg = entry.get("alg").and_then(Value::as_str);
            let alg_fits = matches!(
                (kind, declared_alg),
                (_, None) | (KeyKind::Ec, Some("ES256")) | (KeyKind::Rsa, Some("RS256"))
            );
            if declared_use.is_some_and(|u| u != "sig") || !alg_fits {
                continue;
            }
            if let Ok(key) = DecodingKey::from_jwk(&jwk) {
                keys.insert(kid, (kind, key));
            }
        }
        Ok(KeySet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn decode_segment(segment: &str) -> Result<Value, AuthError> {
    let bytes =
        URL_SAFE_NO_PAD.decode(segment.trim_end_matches('=')).map_err(|_| AuthError::Malformed("not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed("not JSON"))
}

/// Verify `token`. Pure: `keys` is the current JWKS (if any), `now` is unix seconds.
/// Returns [`AuthError::UnknownKid`] when the key set lacks the token's `kid`, so the
/// caller can refetch the JWKS and try again.
pub fn verify_token(token: &str, cfg: &AuthConfig, keys: Option<&KeySet>, now: u64) -> Result<Verified, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::TooLarge);
    }
    let segments: Vec<&str> = token.split('.').collect();
    if segments.len() != 3 {
        return Err(AuthError::Malformed("a JWT has three dot-separated parts"));
    }
    let header = decode_segment(segments[0])?;
    let alg_name = header.get("alg").and_then(Value::as_str).ok_or(AuthError::Malformed("the header has no alg"))?;
    let (alg, key) = match alg_name {
        a if a.eq_ignore_ascii_case("none") => return Err(AuthError::AlgNone),
        "HS256" => {
            // Only the configured secret: never a JWKS key (the confusion attack).
            let secret = cfg.hs256_secret.as_deref().ok_or(AuthError::NoSecretConfigured)?;
            (Algorithm::HS256, DecodingKey::from_secret(secret.as_bytes()))
        }
        "ES256" | "RS256" => {
            let keys = keys.ok_or(AuthError::NoJwksConfigured)?;
            let kid = header.get("kid").and_then(Value::as_str).ok_or(AuthError::MissingKid)?;
            let (kind, key) = keys.keys.get(kid).ok_or_else(|| AuthError::UnknownKid(kid.to_owned()))?;
            let (alg, expected) =
                if alg_name == "ES256" { (Algorithm::ES256, KeyKind::Ec) } else { (Algorithm::RS256, KeyKind::Rsa) };
            if *kind != expected {
                return Err(AuthError::KeyTypeMismatch);
            }
            (alg, key.clone())
        }
        other => return Err(AuthError::UnsupportedAlg(other.chars().take(20).collect())),
    };

    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = match jsonwebtoken::decode::<Value>(token, &key, &validation) {
        Ok(data) => data.claims,
        Err(e) => {
            use jsonwebtoken::errors::ErrorKind;
            return Err(match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AuthError::KeyTypeMismatch,
                ErrorKind::Base64(_) => AuthError::Malformed("not base64url"),
                ErrorKind::Json(_) | ErrorKind::Utf8(_) => AuthError::Malformed("the claims are not a JSON object"),
                _ => AuthError::BadSignature,
            });
        }
    };
    if !claims.is_object() {
        return Err(AuthError::Malformed("the claims are not a JSON object"));
    }

    // Time: our clock, our leeway (jsonwebtoken's own checks are off above).
    let exp = claims.get("exp").and_then(Value::as_f64).ok_or(AuthError::MissingExp)?;
    if exp + cfg.leeway_secs as f64 <= now as f64 {
        return Err(AuthError::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_f64().ok_or(AuthError::Malformed("nbf is not a number"))?;
        if nbf > (now + cfg.leeway_secs) as f64 {
            return Err(AuthError::NotYetValid);
        }
    }

    let role = claims.get("role").and_then(Value::as_str).unwrap_or("");
    let principal = match role {
        "authenticated" => {
            let aud_ok = match claims.get("aud") {
                Some(Value::String(a)) => a == "authenticated",
                Some(Value::Array(list)) => list.iter().any(|a| a == "authenticated"),
                _ => false,
            };
            if !aud_ok {
                return Err(AuthError::WrongAudience);
            }
            if let Some(expected) = &cfg.issuer {
                if claims.get("iss").and_then(Value::as_str) != Some(expected.as_str()) {
                    return Err(AuthError::WrongIssuer);
                }
            }
            let sub = claims.get("sub").and_then(Value::as_str).ok_or(AuthError::MissingSub)?;
            Principal::User { user_id: parse_uuid(sub).ok_or(AuthError::BadSub)? }
        }
        // Supabase's service-role API key: HS256 with the project secret, iss "supabase",
        // no sub, no aud. A token that names a user, or one from Supabase Auth's signing
        // keys (which only sign user sessions), is never the service role, whatever its
        // `role` says: a custom-claims hook or a leaked signing path must not turn a
        // user into the service role.
        "service_role" => {
            if alg != Algorithm::HS256 || claims.get("sub").is_some() {
                return Err(AuthError::ServiceRoleNotGranted);
            }
            Principal::ServiceRole
        }
        other => {
            return Err(AuthError::ForbiddenRole(if other.is_empty() {
                "(none)".into()
            } else {
                other.chars().take(40).collect()
            }))
        }
    };
    Ok(Verified { principal, claims, token: token.to_owned() })
}

/// A canonical lowercase UUID, or None.
pub fn parse_uuid(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    for (i, c) in b.iter().enumerate() {
        let ok = if matches!(i, 8 | 13 | 18 | 23) { *c == b'-' } else { c.is_ascii_hexdigit() };
        if !ok {
            return None;
        }
    }
    Some(s.to_ascii_lowercase())
}

/// When to fetch the JWKS again.
pub const JWKS_MAX_AGE_SECS: u64 = 600;
/// An unknown `kid` refetches at most this often.
pub const JWKS_UNKNOWN_KID_INTERVAL_SECS: u64 = 60;
/// A real JWKS is a few kilobytes; refuse absurd ones.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
/// While no keys have ever been fetched, retry no more often than this.
pub const JWKS_COLD_RETRY_SECS: u64 = 5;

/// The cache policy for one JWKS URL. Pure: every decision takes `now`.
#[derive(Debug, Clone, Default)]
pub struct JwksCache {
    keys: Option<KeySet>,
    fetched_at: Option<u64>,
    attempted_at: Option<u64>,
}

impl JwksCache {
    pub fn keys(&self) -> Option<&KeySet> {
        self.keys.as_ref()
    }

    /// Should we fetch now? `unknown_kid` is true when verification just met a `kid`
    /// the cached set lacks.
    pub fn should_fetch(&self, now: u64, unknown_kid: bool) -> bool {
        let since_attempt = self.attempted_at.map(|t| now.saturating_sub(t));
        match (self.fetched_at, since_attempt) {
            (None, None) => true,
            (None, Some(s)) => s >= JWKS_COLD_RETRY_SECS,
            (Some(fetched), since) => {
                let since = since.unwrap_or(u64::MAX);
                let stale = now.saturating_sub(fetched) >= JWKS_MAX_AGE_SECS && since >= JWKS_COLD_RETRY_SECS;
                stale || (unknown_kid && since >= JWKS_UNKNOWN_KID_INTERVAL_SECS)
            }
        }
    }

    /// Record an attempt and its outcome. A failed refresh keeps the old keys.
    pub fn record(&mut self, now: u64, result: Result<KeySet, String>) -> Result<(), String> {
        self.attempted_at = Some(now);
        match result {
            Ok(keys) => {
                self.keys = Some(keys);
                self.fetched_at = Some(now);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

thread_local! {
    /// One cache per JWKS URL, for the life of the isolate (Workers are single-threaded).
    static CACHES: RefCell<HashMap<String, JwksCache>> = RefCell::new(HashMap::new());
}

/// Fetch and parse the key set, within `deadline` for the whole exchange (headers and
/// body), reading at most [`MAX_JWKS_BYTES`] (and no error body): a slow or hostile
/// auth endpoint costs one bounded wait, never a hung request or an unbounded buffer.
async fn fetch_jwks(url: &str, deadline: Option<Deadline<'_>>) -> Result<KeySet, String> {
    let limits = Limits::new(deadline).max_body(MAX_JWKS_BYTES).skip_error_bodies();
    let answer = exchange(reqwest::Client::new().get(url).send(), limits).await.map_err(jwks_failure)?;
    parse_jwks_answer(&answer)
}

/// The key set in a JWKS answer, or why there is none (for the log).
fn parse_jwks_answer(answer: &Answer) -> Result<KeySet, String> {
    if !answer.is_success() {
        let status = reqwest::StatusCode::from_u16(answer.status).map_or(answer.status.to_string(), |s| s.to_string());
        return Err(format!("JWKS endpoint answered HTTP {status}"));
    }
    KeySet::from_jwks_json(&answer.text())
}

/// Why the key set could not be fetched, for [`AuthError::KeysUnavailable`] (whose
/// client message is fixed; this text goes to the log).
pub(crate) fn jwks_failure(e: ExchangeError) -> String {
    match e {
        ExchangeError::Unreachable(why) => format!("JWKS request failed: {why}"),
        ExchangeError::Unreadable { detail, .. } => format!("JWKS body: {detail}"),
        ExchangeError::TooLarge { limit, .. } => format!("JWKS body is larger than {limit} bytes"),
        ExchangeError::Timeout(ms) => format!("JWKS endpoint did not answer within {ms} ms"),
    }
}

fn cached(url: &str) -> JwksCache {
    CACHES.with(|c| c.borrow().get(url).cloned().unwrap_or_default())
}

/// Fetch when the policy allows, store the outcome. Never holds the borrow across `.await`.
async fn refresh(url: &str, now: u64, unknown_kid: bool, deadline: Option<Deadline<'_>>) -> Result<(), String> {
    if !cached(url).should_fetch(now, unknown_kid) {
        return Ok(());
    }
    let result = fetch_jwks(url, deadline).await;
    CACHES.with(|c| c.borrow_mut().entry(url.to_owned()).or_default().record(now, result))
}

/// Verify a request's `Authorization` header value. A key-set fetch it needs gives up
/// after `deadline` (the Worker passes `UPSTREAM_TIMEOUT_MS` on its timer).
pub async fn authenticate(
    header: Option<&str>,
    cfg: &AuthConfig,
    now: u64,
    deadline: Option<Deadline<'_>>,
) -> Result<Verified, AuthError> {
    let token = bearer_token(header)?;
    let alg = token
        .split('.')
        .next()
        .and_then(|h| decode_segment(h).ok())
        .and_then(|h| h.get("alg").and_then(Value::as_str).map(str::to_owned));
    let asymmetric = matches!(alg.as_deref(), Some("ES256") | Some("RS256"));
    let url = match (&cfg.jwks_url, asymmetric) {
        (Some(url), true) => url.clone(),
        // HS256 (or something verify_token will refuse): no key set needed.
        _ => return verify_token(token, cfg, None, now),
    };
    let fetch_error = refresh(&url, now, false, deadline).await.err();
    let keys = cached(&url);
    match (keys.keys(), fetch_error) {
        (None, Some(e)) => return Err(AuthError::KeysUnavailable(e)),
        (None, None) => return Err(AuthError::KeysUnavailable("no keys fetched yet".into())),
        _ => {}
    }
    match verify_token(token, cfg, keys.keys(), now) {
        Err(AuthError::UnknownKid(kid)) => {
            // Keys may have rotated: refetch (at most once a minute) and try again.
            let _ = refresh(&url, now, true, deadline).await;
            let keys = cached(&url);
            match verify_token(token, cfg, keys.keys(), now) {
                Err(AuthError::UnknownKid(_)) => Err(AuthError::UnknownKid(kid)),
                other => other,
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests;
