//! Typed configuration, read once from the Worker's vars and secrets.
//!
//! Parsing is pure: it takes a lookup function, so the Worker passes its `Env` and
//! tests pass a map. A missing or malformed setting is an error that names the
//! setting (and never echoes a secret value).

use crate::auth::AuthConfig;

/// Default leeway for `exp`/`nbf`, in seconds.
pub const DEFAULT_JWT_LEEWAY_SECS: u64 = 10;

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The name of the setting, exactly as it is set with `wrangler secret put` or in `[vars]`.
    pub setting: &'static str,
    pub problem: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "setting {}: {}", self.setting, self.problem)
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for crate::ApiError {
    fn from(e: ConfigError) -> Self {
        // The operator needs the name; the caller only needs to know it is not their fault.
        crate::ApiError::unavailable("misconfigured", format!("the service is misconfigured: {e}"))
    }
}

/// Everything a function needs to talk to Supabase.
#[derive(Debug, Clone)]
pub struct Config {
    /// Base URL of PostgREST (on Supabase: `<SUPABASE_URL>/rest/v1`), without a trailing slash.
    pub postgrest_url: String,
    /// Supabase's anon (publishable) key, sent as `apikey` so the Supabase gateway
    /// admits the request; PostgREST itself ignores it.
    pub anon_key: Option<String>,
    /// Service-role key: used only where no user is involved; never sent to a client.
    pub service_role_key: Option<String>,
    pub auth: AuthConfig,
    /// How long one PostgREST exchange may take (`UPSTREAM_TIMEOUT_MS`, default 10 s).
    pub upstream_timeout_ms: u64,
}

/// Default of `UPSTREAM_TIMEOUT_MS`.
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 10_000;

/// A setting as written, trimmed; blank is unset. Every settings parser reads through
/// this, so none of them disagrees about what an empty setting means.
pub fn non_blank(get: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// A whole-number setting within `min..=max`, `default` when unset or blank.
pub fn whole_number(
    get: impl Fn(&str) -> Option<String>,
    setting: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    match non_blank(&get, setting) {
        None => Ok(default),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or(ConfigError { setting, problem: format!("must be a whole number from {min} to {max}") }),
    }
}

/// A timeout setting in milliseconds, 100 ms to 2 minutes.
pub fn timeout_ms(
    get: impl Fn(&str) -> Option<String>,
    setting: &'static str,
    default: u64,
) -> Result<u64, ConfigError> {
    match non_blank(&get, setting) {
        None => Ok(default),
        Some(v) => v.parse::<u64>().ok().filter(|ms| (100..=120_000).contains(ms)).ok_or(ConfigError {
            setting,
            problem: "must be a whole number of milliseconds from 100 to 120000".into(),
        }),
    }
}

impl Config {
    /// Read the settings:
    /// - `SUPABASE_URL`: the project URL; `POSTGREST_URL` and `SUPABASE_JWKS_URL` default from it.
    /// - `POSTGREST_URL`: overrides `<SUPABASE_URL>/rest/v1` (local PostgREST has no prefix).
    /// - `SUPABASE_JWT_SECRET` (HS256) and/or `SUPABASE_JWKS_URL` (ES256/RS256): at least one.
    /// - `SUPABASE_JWT_ISSUER`, `JWT_LEEWAY_SECS`, `SUPABASE_ANON_KEY`, `SUPABASE_SERVICE_ROLE_KEY`: optional.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &str| non_blank(&get, name);

        let supabase_url = match get("SUPABASE_URL") {
            Some(u) => Some(http_url("SUPABASE_URL", &u)?),
            None => None,
        };
        let postgrest_url = match (get("POSTGREST_URL"), &supabase_url) {
            (Some(u), _) => http_url("POSTGREST_URL", &u)?,
            (None, Some(base)) => format!("{base}/rest/v1"),
            (None, None) => {
                return Err(ConfigError {
                    setting: "SUPABASE_URL",
                    problem: "is not set (set SUPABASE_URL, or POSTGREST_URL for a bare PostgREST)".into(),
                })
            }
        };
        let jwks_url = match (get("SUPABASE_JWKS_URL"), &supabase_url) {
            (Some(u), _) => Some(http_url("SUPABASE_JWKS_URL", &u)?),
            (None, Some(base)) => Some(format!("{base}/auth/v1/.well-known/jwks.json")),
            (None, None) => None,
        };
        let hs256_secret = get("SUPABASE_JWT_SECRET");
        if let Some(s) = &hs256_secret {
            if s.len() < 32 {
                return Err(ConfigError {
                    setting: "SUPABASE_JWT_SECRET",
                    problem: format!("is {} characters long; a JWT secret needs at least 32", s.len()),
                });
            }
        }
        if hs256_secret.is_none() && jwks_url.is_none() {
            return Err(ConfigError {
                setting: "SUPABASE_JWT_SECRET",
                problem: "no way to verify tokens: set SUPABASE_JWT_SECRET (HS256) and/or SUPABASE_JWKS_URL or SUPABASE_URL (JWKS)".into(),
            });
        }
        let leeway_secs = match get("JWT_LEEWAY_SECS") {
            None => DEFAULT_JWT_LEEWAY_SECS,
            Some(v) => v.parse::<u64>().ok().filter(|s| *s <= 300).ok_or_else(|| ConfigError {
                setting: "JWT_LEEWAY_SECS",
                problem: "must be a whole number of seconds between 0 and 300".into(),
            })?,
        };
        let upstream_timeout_ms = timeout_ms(get, "UPSTREAM_TIMEOUT_MS", DEFAULT_UPSTREAM_TIMEOUT_MS)?;
        Ok(Config {
            upstream_timeout_ms,
            postgrest_url,
            anon_key: get("SUPABASE_ANON_KEY"),
            service_role_key: get("SUPABASE_SERVICE_ROLE_KEY"),
            auth: AuthConfig { hs256_secret, jwks_url, issuer: get("SUPABASE_JWT_ISSUER"), leeway_secs },
        })
    }

    /// The service-role key, or an error naming the setting, for the functions that need it.
    pub fn require_service_role_key(&self) -> Result<&str, ConfigError> {
        self.service_role_key.as_deref().ok_or(ConfigError {
            setting: "SUPABASE_SERVICE_ROLE_KEY",
            problem: "is not set, and this function needs it".into(),
        })
    }
}

/// Only the settings `/health` needs: it must report on PostgREST even when the auth
/// settings are broken, so it does not require them.
pub fn postgrest_url_from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let get = |name: &str| non_blank(&get, name);
    match (get("POSTGREST_URL"), get("SUPABASE_URL")) {
        (Some(u), _) => http_url("POSTGREST_URL", &u),
        (None, Some(base)) => Ok(format!("{}/rest/v1", http_url("SUPABASE_URL", &base)?)),
        (None, None) => Err(ConfigError {
            setting: "SUPABASE_URL",
            problem: "is not set (set SUPABASE_URL, or POSTGREST_URL for a bare PostgREST)".into(),
        }),
    }
}

/// Accept `http(s)://host[:port][/path]`, return it without a trailing slash.
pub(crate) fn http_url(setting: &'static str, value: &str) -> Result<String, ConfigError> {
    let bad = |problem: &str| ConfigError { setting, problem: problem.to_owned() };
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '@' || c == '?' || c == '#') {
        return Err(bad("must be a URL with a host, like https://abc.supabase.co"));
    }
    if value.contains(['?', '#']) || value.contains(char::is_whitespace) {
        return Err(bad("must not contain a query, fragment or whitespace"));
    }
    Ok(value.trim_end_matches('/').to_owned())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";

    /// Settings as a Worker's `Env` would give them (test fixture).
    pub(crate) fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn a_setting_is_read_trimmed_and_blank_is_unset() {
        let get = lookup(&[("A", "  x \n"), ("B", " \t"), ("C", "")]);
        assert_eq!(non_blank(&get, "A").as_deref(), Some("x"));
        assert_eq!((non_blank(&get, "B"), non_blank(&get, "C"), non_blank(&get, "D")), (None, None, None));
    }

    #[test]
    fn supabase_url_gives_postgrest_and_jwks_urls() {
        let c = Config::from_lookup(lookup(&[("SUPABASE_URL", "https://abc.supabase.co/")])).unwrap();
        assert_eq!(c.postgrest_url, "https://abc.supabase.co/rest/v1");
        assert_eq!(c.auth.jwks_url.as_deref(), Some("https://abc.supabase.co/auth/v1/.well-known/jwks.json"));
        assert_eq!(c.auth.hs256_secret, None);
        assert_eq!(c.auth.leeway_secs, DEFAULT_JWT_LEEWAY_SECS);
    }

    #[test]
    fn explicit_urls_override_the_derived_ones() {
        let c = Config::from_lookup(lookup(&[
            ("SUPABASE_URL", "https://abc.supabase.co"),
            ("POSTGREST_URL", "http://127.0.0.1:3000"),
            ("SUPABASE_JWKS_URL", "http://127.0.0.1:9999/jwks.json"),
            ("SUPABASE_JWT_SECRET", SECRET),
            ("SUPABASE_JWT_ISSUER", "http://127.0.0.1/auth/v1"),
            ("JWT_LEEWAY_SECS", "5"),
            ("SUPABASE_ANON_KEY", "anon"),
        ]))
        .unwrap();
        assert_eq!(c.postgrest_url, "http://127.0.0.1:3000");
        assert_eq!(c.auth.jwks_url.as_deref(), Some("http://127.0.0.1:9999/jwks.json"));
        assert_eq!(c.auth.hs256_secret.as_deref(), Some(SECRET));
        assert_eq!(c.auth.issuer.as_deref(), Some("http://127.0.0.1/auth/v1"));
        assert_eq!(c.auth.leeway_secs, 5);
        assert_eq!(c.anon_key.as_deref(), Some("anon"));
    }

    #[test]
    fn errors_name_the_setting() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "SUPABASE_URL"),
            (&[("POSTGREST_URL", "http://127.0.0.1:3000")], "SUPABASE_JWT_SECRET"),
            (&[("SUPABASE_URL", "ftp://x")], "SUPABASE_URL"),
            (&[("SUPABASE_URL", "https://")], "SUPABASE_URL"),
            (&[("POSTGREST_URL", "localhost:3000"), ("SUPABASE_JWT_SECRET", SECRET)], "POSTGREST_URL"),
            (&[("POSTGREST_URL", "http://h"), ("SUPABASE_JWT_SECRET", "short")], "SUPABASE_JWT_SECRET"),
            (&[("SUPABASE_URL", "https://a.b"), ("SUPABASE_JWKS_URL", "nope")], "SUPABASE_JWKS_URL"),
            (&[("SUPABASE_URL", "https://a.b"), ("JWT_LEEWAY_SECS", "ten")], "JWT_LEEWAY_SECS"),
            (&[("SUPABASE_URL", "https://a.b"), ("JWT_LEEWAY_SECS", "100000")], "JWT_LEEWAY_SECS"),
        ];
        for (pairs, setting) in cases {
            let err = Config::from_lookup(lookup(pairs)).unwrap_err();
            assert_eq!(err.setting, *setting, "{pairs:?} -> {err}");
        }
    }

    #[test]
    fn secret_values_never_appear_in_errors() {
        let err = Config::from_lookup(lookup(&[("POSTGREST_URL", "http://h"), ("SUPABASE_JWT_SECRET", "hunter2")]))
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn blank_settings_count_as_missing() {
        let err = Config::from_lookup(lookup(&[("SUPABASE_URL", "  ")])).unwrap_err();
        assert_eq!(err.setting, "SUPABASE_URL");
    }

    #[test]
    fn service_role_key_is_required_only_on_demand() {
        let c = Config::from_lookup(lookup(&[("SUPABASE_URL", "https://a.b")])).unwrap();
        assert_eq!(c.require_service_role_key().unwrap_err().setting, "SUPABASE_SERVICE_ROLE_KEY");
    }

    #[test]
    fn health_needs_only_the_postgrest_url() {
        assert_eq!(
            postgrest_url_from_lookup(lookup(&[("SUPABASE_URL", "https://a.b")])).unwrap(),
            "https://a.b/rest/v1"
        );
        assert_eq!(postgrest_url_from_lookup(lookup(&[])).unwrap_err().setting, "SUPABASE_URL");
    }
}
