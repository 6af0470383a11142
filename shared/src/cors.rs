//! CORS: which browser origins may call edgesync, and the headers that say so.
//!
//! The setting `ALLOWED_ORIGINS` is a comma-separated list of origins
//! (`scheme://host[:port]`), or `*` for any origin. A port of `*`
//! (`http://localhost:*`) allows that scheme and host on any port. Unset or empty
//! allows no origin: browsers are then blocked, and non-browser clients (which send no
//! `Origin`) are unaffected. An entry that is not an origin (`localhost:3000`,
//! `https://app.example.com/path`) matches nothing; [`Cors::ignored`] lists such entries
//! so the adapter can log them.
//!
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an
//!   allowed origin is answered `204` with the allowed methods, headers and max age; it
//!   needs no token. From any other origin it is the JSON `403 origin_not_allowed`,
//!   without CORS headers, so the browser blocks the request that would have followed.
//! - Every other answer, errors included, carries `Access-Control-Allow-Origin` and
//!   `Access-Control-Expose-Headers` when the request's origin is allowed, and always
//!   `Vary: Origin`.
//! - With `*`, `Access-Control-Allow-Origin` is `*`: edgesync authenticates with a
//!   bearer token in `Authorization`, never with cookies, so no answer needs
//!   credentials mode (`Access-Control-Allow-Credentials` is never sent).
//!
//! Pure: the adapter passes the setting and the request's headers in, and sets the
//! headers this module returns.

use crate::ApiError;

/// The Worker setting read by [`Cors::from_setting`].
pub const SETTING: &str = "ALLOWED_ORIGINS";
/// Every method an edgesync endpoint answers (each endpoint still answers `405` for
/// the ones it does not take).
pub const ALLOW_METHODS: &str = "GET, HEAD, POST, OPTIONS";
/// Request headers a browser may send: the token, the JSON body, supabase-js's own
/// (`apikey`, `x-client-info`) and a caller's request id.
pub const ALLOW_HEADERS: &str = "authorization, content-type, apikey, x-client-info, x-request-id, x-user-agent";
/// Response headers a page may read besides the CORS-safelisted ones.
pub const EXPOSE_HEADERS: &str = "x-request-id, retry-after";
/// How long a browser may reuse a preflight's answer. Chromium caps it at 2 hours.
pub const MAX_AGE_SECS: u32 = 7200;

/// Response headers this module decides; an adapter removes them before setting its
/// own, so an answer passed on from another Worker says what this Worker decided.
pub const DECIDED_HEADERS: &[&str] = &[
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-expose-headers",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
];

/// A header to set: (lowercase name, value).
pub type Header = (&'static str, String);

/// Which origins are allowed, parsed from `ALLOWED_ORIGINS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    rule: Rule,
    ignored: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Anyone,
    Listed(Vec<Pattern>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    scheme: String,
    host: String,
    port: PortRule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortRule {
    Any,
    /// `None` is the scheme's default port (which an `Origin` header leaves out).
    Is(Option<u16>),
}

/// An origin taken apart: scheme and host lowercase, the default port as `None`.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
    /// Only for a pattern: the port was `*`.
    any_port: bool,
}

impl Cors {
    /// Parse the setting; `None`, empty or only commas allows no origin. Never fails:
    /// entries that are not origins are kept in [`Cors::ignored`] and match nothing.
    pub fn from_setting(value: Option<&str>) -> Cors {
        let mut patterns = Vec::new();
        let mut ignored = Vec::new();
        for entry in value.unwrap_or_default().split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                return Cors { rule: Rule::Anyone, ignored: Vec::new() };
            }
            match parse_origin(entry, true) {
                Some(o) => patterns.push(Pattern {
                    scheme: o.scheme,
                    host: o.host,
                    port: if o.any_port { PortRule::Any } else { PortRule::Is(o.port) },
                }),
                None => ignored.push(entry.to_owned()),
            }
        }
        Cors { rule: Rule::Listed(patterns), ignored }
    }

    /// Entries of the setting that are not origins (they match nothing).
    pub fn ignored(&self) -> &[String] {
        &self.ignored
    }

    /// Whether a request with this `Origin` header may read the answer.
    pub fn allows(&self, origin: &str) -> bool {
        match &self.rule {
            Rule::Anyone => true,
            Rule::Listed(patterns) => match parse_origin(origin, false) {
                Some(o) => patterns.iter().any(|p| {
                    p.scheme == o.scheme
                        && p.host == o.host
                        && match p.port {
                            PortRule::Any => true,
                            PortRule::Is(port) => port == o.port,
                        }
                }),
                None => false,
            },
        }
    }

    /// The `Access-Control-Allow-Origin` value for a request with this `Origin`
    /// header, or `None` when the origin is not allowed (or there is none).
    pub fn allow_origin(&self, origin: Option<&str>) -> Option<String> {
        let origin = origin?;
        if !self.allows(origin) {
            return None;
        }
        Some(match self.rule {
            Rule::Anyone => "*".to_owned(),
            Rule::Listed(_) => origin.to_owned(),
        })
    }

    /// The CORS headers of a real (non-preflight) answer: allow-origin and
    /// expose-headers when the origin is allowed, nothing otherwise. `Vary` is
    /// [`vary_with_origin`]'s.
    pub fn answer_headers(&self, origin: Option<&str>) -> Vec<Header> {
        match self.allow_origin(origin) {
            Some(allow) => {
                vec![("access-control-allow-origin", allow), ("access-control-expose-headers", EXPOSE_HEADERS.into())]
            }
            None => Vec::new(),
        }
    }

    /// The answer to a preflight: the `204`'s CORS headers, or `403 origin_not_allowed`
    /// (which gets no CORS headers, so the browser blocks the request).
    pub fn preflight(&self, origin: Option<&str>) -> Result<Vec<Header>, ApiError> {
        match self.allow_origin(origin) {
            Some(allow) => Ok(vec![
                ("access-control-allow-origin", allow),
                ("access-control-allow-methods", ALLOW_METHODS.into()),
                ("access-control-allow-headers", ALLOW_HEADERS.into()),
                ("access-control-max-age", MAX_AGE_SECS.to_string()),
            ]),
            None => Err(ApiError::forbidden(
                "origin_not_allowed",
                format!("this origin may not call edgesync; add it to {SETTING}"),
            )),
        }
    }
}

/// Is this request a CORS preflight? `OPTIONS` with both `Origin` and
/// `Access-Control-Request-Method`; a plain `OPTIONS` is an ordinary request (405).
pub fn is_preflight(method: &str, origin: Option<&str>, request_method: Option<&str>) -> bool {
    method == "OPTIONS" && origin.is_some() && request_method.is_some()
}

/// The `Vary` header with `Origin` in it, keeping what was there (a token list,
/// compared case-insensitively). `*` already varies on everything.
pub fn vary_with_origin(existing: Option<&str>) -> String {
    let existing = existing.map(str::trim).filter(|v| !v.is_empty());
    match existing {
        None => "Origin".to_owned(),
        Some(v) if v.split(',').any(|t| t.trim().eq_ignore_ascii_case("origin") || t.trim() == "*") => v.to_owned(),
        Some(v) => format!("{v}, Origin"),
    }
}

/// `scheme://host[:port]`, nothing after it (a `/` alone is tolerated in a setting).
/// In a pattern (`pattern`), the port may be `*` and letters may be uppercase.
fn parse_origin(text: &str, pattern: bool) -> Option<Origin> {
    let (scheme, rest) = text.split_once("://")?;
    let rest = if pattern { rest.strip_suffix('/').unwrap_or(rest) } else { rest };
    let scheme_ok = scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok || rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ', ',']) {
        return None;
    }
    // The port is after the last ':' outside an IPv6 literal's brackets.
    let (host, port) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains(']') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if host.is_empty() || (host.starts_with('[') != host.ends_with(']')) {
        return None;
    }
    if !pattern && (scheme.bytes().any(|b| b.is_ascii_uppercase()) || host.bytes().any(|b| b.is_ascii_uppercase())) {
        // A browser serializes origins in lowercase; anything else is not one.
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    };
    let (port, any_port) = match port {
        None => (None, false),
        Some("*") if pattern => (None, true),
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            let n: u16 = p.parse().ok()?;
            // An Origin header never names the default port; a setting may.
            if default_port == Some(n) {
                if !pattern {
                    return None;
                }
                (None, false)
            } else {
                (Some(n), false)
            }
        }
        Some(_) => return None,
    };
    Some(Origin { scheme, host: host.to_ascii_lowercase(), port, any_port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(s: &str) -> Cors {
        Cors::from_setting(Some(s))
    }

    fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
        headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn unset_or_empty_allows_nobody() {
        for c in [Cors::from_setting(None), cors(""), cors(" , ,")] {
            assert!(!c.allows("http://localhost:3000"));
            assert!(!c.allows("https://app.example.com"));
            assert!(!c.allows("null"));
            assert_eq!(c.allow_origin(Some("http://localhost:3000")), None);
            assert!(c.answer_headers(Some("https://app.example.com")).is_empty());
            assert!(c.ignored().is_empty());
        }
    }

    #[test]
    fn a_star_allows_anyone_and_answers_star() {
        let c = cors("*");
        assert!(c.allows("https://anything.example"));
        assert!(c.allows("null"), "any origin means any, even an opaque one");
        assert_eq!(c.allow_origin(Some("https://a.example")).as_deref(), Some("*"));
        assert_eq!(c.allow_origin(None), None, "no Origin, no CORS headers");
        // A star among entries is still a star.
        assert_eq!(cors("https://a.example, *").allow_origin(Some("https://b.example")).as_deref(), Some("*"));
    }

    #[test]
    fn listed_origins_match_exactly_and_echo_the_origin() {
        let c = cors("https://app.example.com, http://localhost:3000");
        assert_eq!(c.allow_origin(Some("https://app.example.com")).as_deref(), Some("https://app.example.com"));
        assert!(c.allows("http://localhost:3000"));
        for refused in [
            "http://app.example.com",       // other scheme
            "https://app.example.com:8443", // other port
            "https://evil.app.example.com", // a subdomain is another origin
            "https://app.example.com.evil.test",
            "https://app.example.co",
            "http://localhost:3001",
            "http://localhost",
            "null",
            "",
            "https://app.example.com/",    // not a serialized origin
            "https://APP.example.com",     // browsers send lowercase
            "https://app.example.com:443", // browsers leave the default port out
        ] {
            assert!(!c.allows(refused), "{refused:?} must not be allowed");
        }
    }

    #[test]
    fn a_port_wildcard_allows_any_port_of_that_scheme_and_host() {
        let c = cors("http://localhost:*,http://127.0.0.1:*");
        for ok in [
            "http://localhost:3000",
            "http://localhost:1",
            "http://localhost:65535",
            "http://localhost",
            "http://127.0.0.1:5173",
        ] {
            assert!(c.allows(ok), "{ok}");
        }
        for refused in [
            "https://localhost:3000",
            "http://localhost.evil.test:3000",
            "http://127.0.0.2:3000",
            "http://evil-localhost:80",
            "http://localhost:99999",
            "http://localhost:abc",
            "http://localhost:",
        ] {
            assert!(!c.allows(refused), "{refused}");
        }
    }

    #[test]
    fn settings_are_normalised_but_origins_are_not() {
        // A setting may use uppercase, a trailing slash and the default port.
        let c = cors(" HTTPS://App.Example.com:443/ , http://[::1]:8080, capacitor://localhost ");
        assert!(c.allows("https://app.example.com"));
        assert!(c.allows("http://[::1]:8080"));
        assert!(!c.allows("http://[::1]:8081"));
        assert!(c.allows("capacitor://localhost"), "app schemes (Capacitor, Electron custom protocols) work");
        assert!(c.ignored().is_empty(), "{:?}", c.ignored());
        assert!(cors("http://[::1]:*").allows("http://[::1]:4000"));
        assert!(cors("http://[::1]").allows("http://[::1]"));
    }

    #[test]
    fn entries_that_are_not_origins_are_reported_and_match_nothing() {
        let c = cors("localhost:3000, https://app.example.com/path, https://ok.example, *.example.com, https://:80, https://a.example:x");
        assert_eq!(
            c.ignored(),
            ["localhost:3000", "https://app.example.com/path", "*.example.com", "https://:80", "https://a.example:x"]
        );
        assert!(c.allows("https://ok.example"));
        assert!(!c.allows("https://app.example.com"));
        assert!(!c.allows("http://localhost:3000"));
        // Wildcards exist only as the whole setting or a port.
        assert!(!c.allows("https://x.example.com"));
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_gets_methods_headers_and_max_age() {
        let c = cors("http://localhost:*");
        let h = c.preflight(Some("http://localhost:5173")).unwrap();
        assert_eq!(header(&h, "access-control-allow-origin"), Some("http://localhost:5173"));
        let methods = header(&h, "access-control-allow-methods").unwrap();
        for m in ["GET", "HEAD", "POST", "OPTIONS"] {
            assert!(methods.split(", ").any(|x| x == m), "{methods}");
        }
        let allowed = header(&h, "access-control-allow-headers").unwrap();
        for name in ["authorization", "content-type", "apikey", "x-client-info", "x-request-id"] {
            assert!(allowed.split(", ").any(|x| x == name), "{allowed}");
        }
        assert_eq!(header(&h, "access-control-max-age"), Some("7200"));
        assert_eq!(header(&h, "access-control-allow-credentials"), None);
        assert_eq!(
            header(&cors("*").preflight(Some("https://x.example")).unwrap(), "access-control-allow-origin"),
            Some("*")
        );
    }

    #[test]
    fn a_preflight_from_another_origin_is_a_403_without_cors_headers() {
        let c = cors("https://app.example.com");
        let err = c.preflight(Some("https://evil.example")).unwrap_err();
        assert_eq!((err.status, err.code), (403, "origin_not_allowed"));
        assert!(err.message.contains(SETTING));
        assert!(!err.message.contains("app.example.com"), "the allowed list is not told to strangers");
        assert_eq!(
            Cors::from_setting(None).preflight(Some("http://localhost:1")).unwrap_err().code,
            "origin_not_allowed"
        );
    }

    #[test]
    fn real_answers_carry_allow_origin_and_expose_headers_when_allowed() {
        let c = cors("https://app.example.com");
        let h = c.answer_headers(Some("https://app.example.com"));
        assert_eq!(header(&h, "access-control-allow-origin"), Some("https://app.example.com"));
        assert_eq!(header(&h, "access-control-expose-headers"), Some("x-request-id, retry-after"));
        assert_eq!(h.len(), 2);
        assert!(c.answer_headers(Some("https://evil.example")).is_empty());
        assert!(c.answer_headers(None).is_empty());
        for (name, _) in c.preflight(Some("https://app.example.com")).unwrap().iter().chain(&h) {
            assert!(DECIDED_HEADERS.contains(name), "{name} is removed before being decided");
        }
    }

    #[test]
    fn preflights_are_options_with_origin_and_a_requested_method() {
        assert!(is_preflight("OPTIONS", Some("http://localhost:1"), Some("POST")));
        assert!(!is_preflight("OPTIONS", Some("http://localhost:1"), None), "plain OPTIONS");
        assert!(!is_preflight("OPTIONS", None, Some("POST")));
        assert!(!is_preflight("GET", Some("http://localhost:1"), Some("POST")));
        assert!(!is_preflight("options", Some("http://localhost:1"), Some("POST")), "methods are case-sensitive");
    }

    #[test]
    fn vary_gains_origin_once() {
        assert_eq!(vary_with_origin(None), "Origin");
        assert_eq!(vary_with_origin(Some("")), "Origin");
        assert_eq!(vary_with_origin(Some("Accept-Encoding")), "Accept-Encoding, Origin");
        assert_eq!(vary_with_origin(Some("Accept-Encoding, origin")), "Accept-Encoding, origin");
        assert_eq!(vary_with_origin(Some("Origin")), "Origin");
        assert_eq!(vary_with_origin(Some("*")), "*");
    }
}
