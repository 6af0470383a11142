//! Local signing material and tokens: an HS256 secret and an ES256 key with its
//! JWKS, shaped like a Supabase project's, and tokens shaped like Supabase Auth's.
//! For the local stack and tests only; nothing here is used in production.

use crate::util::{random_hex, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Es256Key {
    pub kid: String,
    pub private_pem: String,
    /// The public half as a JWK (`kty`, `crv`, `x`, `y`, `kid`, `alg`, `use`).
    pub public_jwk: Value,
}

impl Es256Key {
    pub fn generate() -> Result<Es256Key> {
        let secret = loop {
            let mut bytes = [0u8; 32];
            getrandom::getrandom(&mut bytes).context("no entropy")?;
            if let Ok(k) = p256::SecretKey::from_slice(&bytes) {
                break k;
            }
        };
        let private_pem = secret.to_pkcs8_pem(LineEnding::LF).context("could not encode the EC key")?.to_string();
        let point = p256::EncodedPoint::from(secret.public_key());
        let kid = random_hex(8);
        let public_jwk = json!({
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(point.x().context("EC point has no x")?),
            "y": URL_SAFE_NO_PAD.encode(point.y().context("EC point has no y")?),
            "kid": kid, "alg": "ES256", "use": "sig", "key_ops": ["verify"], "ext": true,
        });
        Ok(Es256Key { kid, private_pem, public_jwk })
    }
}

/// The JWKS the auth stand-in serves (public keys only, as Supabase's does).
pub fn public_jwks(key: &Es256Key) -> Value {
    json!({ "keys": [key.public_jwk] })
}

/// The key set PostgREST verifies with: the ES256 public key plus the legacy HS256
/// secret as an `oct` key, like a Supabase project during key rotation.
pub fn postgrest_jwks(key: &Es256Key, hs256_secret: &str) -> Value {
    json!({ "keys": [key.public_jwk, {
        "kty": "oct", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(hs256_secret.as_bytes())
    }]})
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Claims of a Supabase Auth access token for `sub`, valid for `ttl_secs`.
pub fn user_claims(sub: &str, issuer: &str, ttl_secs: i64) -> Value {
    let now = now() as i64;
    json!({
        "iss": issuer, "sub": sub, "aud": "authenticated",
        "exp": now + ttl_secs, "iat": now,
        "email": format!("{}@example.test", &sub[..8.min(sub.len())]), "phone": "",
        "app_metadata": {"provider": "email", "providers": ["email"]}, "user_metadata": {},
        "role": "authenticated", "aal": "aal1",
        "amr": [{"method": "password", "timestamp": now}],
        "session_id": random_uuid(), "is_anonymous": false,
    })
}

/// Claims of a legacy Supabase API key (`anon` or `service_role`): no `sub`, no `aud`.
pub fn api_key_claims(role: &str) -> Value {
    let now = now() as i64;
    json!({ "iss": "supabase", "ref": "local", "role": role, "iat": now, "exp": now + 10 * 365 * 24 * 3600 })
}

pub fn sign_hs256(secret: &str, claims: &Value) -> Result<String> {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()))
        .context("could not sign an HS256 token")
}

pub fn sign_es256(key: &Es256Key, claims: &Value) -> Result<String> {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    let enc = EncodingKey::from_ec_pem(key.private_pem.as_bytes()).context("bad EC key")?;
    jsonwebtoken::encode(&header, claims, &enc).context("could not sign an ES256 token")
}

/// A random (version 4) UUID.
pub fn random_uuid() -> String {
    let h = random_hex(16);
    let variant = ["8", "9", "a", "b"][usize::from_str_radix(&h[16..17], 16).unwrap_or(0) % 4];
    format!("{}-{}-4{}-{}{}-{}", &h[0..8], &h[8..12], &h[13..16], variant, &h[17..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, DecodingKey, Validation};

    #[test]
    fn es256_token_verifies_against_the_published_jwk() {
        let key = Es256Key::generate().unwrap();
        let token = sign_es256(&key, &user_claims(&random_uuid(), "http://127.0.0.1/auth/v1", 60)).unwrap();
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.public_jwk.clone()).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&["authenticated"]);
        let data = decode::<Value>(&token, &DecodingKey::from_jwk(&jwk).unwrap(), &v).unwrap();
        assert_eq!(data.claims["role"], "authenticated");
        assert_eq!(data.header.kid.as_deref(), Some(key.kid.as_str()));
    }

    #[test]
    fn uuids_look_like_v4() {
        let u = random_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!("89ab".contains(&u[19..20]), "{u}");
    }
}
