//! The one error type of the HTTP layer, and its JSON shape.
//!
//! Every failure a client can see becomes an [`ApiError`]: a status, a stable
//! machine-readable `code`, a human message and optional `details`. The function
//! crates turn it into a response in exactly one place, adding the request id.

use serde::Serialize;
use serde_json::{json, Value};

/// An error answered to the client as
/// `{"error": {"code", "message", "details", "request_id"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// What an upstream said (its body, a URL in a connection error): for the log
    /// line with the request id, never for the client, whose `message` is a fixed text
    /// for the code.
    pub log_detail: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), details: None, log_detail: None }
    }

    /// Keep `detail` for the log only (see [`ApiError::log_detail`]).
    pub fn with_log_detail(mut self, detail: impl Into<String>) -> Self {
        self.log_detail = Some(detail.into());
        self
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(401, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(403, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }

    pub fn method_not_allowed(method: &str, allowed: &[&str]) -> Self {
        Self::new(405, "method_not_allowed", format!("method {method} is not allowed here"))
            .with_details(json!({ "allowed": allowed }))
    }

    pub fn bad_gateway(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(502, code, message)
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(503, code, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal", message)
    }

    /// The JSON body, carrying the request id so a user can quote it and an operator
    /// can find the matching log line.
    /// The headers an error answer carries besides its JSON body: `www-authenticate`
    /// on a 401, `retry-after` when the details say how long to wait
    /// (`retry_after_secs`), `allow` when they list the methods allowed (`allowed`).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = Vec::new();
        if self.status == 401 {
            headers.push(("www-authenticate", "Bearer".to_owned()));
        }
        let detail = |key: &str| self.details.as_ref().and_then(|d| d.get(key));
        if let Some(secs) = detail("retry_after_secs").and_then(Value::as_u64) {
            headers.push(("retry-after", secs.to_string()));
        }
        if let Some(Value::Array(allowed)) = detail("allowed") {
            let allow: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
            headers.push(("allow", allow.join(", ")));
        }
        headers
    }

    pub fn body(&self, request_id: &str) -> Value {
        json!({ "error": ErrorBody {
            code: self.code,
            message: &self.message,
            details: self.details.as_ref(),
            request_id,
        }})
    }
}

/// Accept a request whose method is exactly one of `allowed`, else 405 with the
/// allowed list (the `Allow` header). `method` is the method as received: the Workers
/// crate maps methods it does not know (`QUERY`, `FOO`) to GET, so judging by its enum
/// would let them through as GET.
pub fn require_method(method: &str, allowed: &[&str]) -> Result<(), ApiError> {
    if allowed.contains(&method) {
        Ok(())
    } else {
        let shown: String = method.chars().take(32).collect();
        Err(ApiError::method_not_allowed(&shown, allowed))
    }
}

/// Whether a request with this method may carry a body when it is forwarded: fetch
/// refuses a GET or HEAD with one (and such a body has no meaning), so the gateway
/// drops it and the function answers as for any GET or HEAD.
pub fn method_allows_body(method: &str) -> bool {
    !matches!(method, "GET" | "HEAD")
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
    details: Option<&'a Value>,
    request_id: &'a str,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::ApiError;
    use serde_json::json;

    #[test]
    fn an_error_answer_carries_the_headers_its_status_and_details_call_for() {
        assert_eq!(ApiError::new(400, "bad", "m").headers(), vec![]);
        assert_eq!(ApiError::new(401, "missing_token", "m").headers(), vec![("www-authenticate", "Bearer".to_owned())]);
        let busy = ApiError::new(429, "busy", "m").with_details(json!({"retry_after_secs": 7}));
        assert_eq!(busy.headers(), vec![("retry-after", "7".to_owned())]);
        let not_a_number = ApiError::new(503, "busy", "m").with_details(json!({"retry_after_secs": "soon"}));
        assert_eq!(not_a_number.headers(), vec![]);
        let method = ApiError::new(405, "method_not_allowed", "m").with_details(json!({"allowed": ["GET", "POST", 7]}));
        assert_eq!(method.headers(), vec![("allow", "GET, POST".to_owned())]);
    }

    use super::*;

    #[test]
    fn body_has_code_message_details_and_request_id() {
        let e = ApiError::bad_request("bad_cursor", "cursor is malformed").with_details(json!({"at": 3}));
        assert_eq!(
            e.body("req-1"),
            json!({"error": {"code": "bad_cursor", "message": "cursor is malformed",
                             "details": {"at": 3}, "request_id": "req-1"}})
        );
    }

    #[test]
    fn only_the_exact_allowed_methods_pass() {
        assert_eq!(require_method("GET", &["GET", "HEAD"]), Ok(()));
        assert_eq!(require_method("HEAD", &["GET", "HEAD"]), Ok(()));
        // Unknown methods (which the Workers crate would call GET) and other spellings.
        for method in ["QUERY", "FOO", "get", "POST", ""] {
            let e = require_method(method, &["GET", "HEAD"]).unwrap_err();
            assert_eq!((e.status, e.code), (405, "method_not_allowed"), "{method}");
            assert_eq!(e.details, Some(json!({"allowed": ["GET", "HEAD"]})));
        }
        let e = require_method(&"X".repeat(100), &["POST"]).unwrap_err();
        assert!(e.message.len() < 80, "{}", e.message);
    }

    #[test]
    fn bodies_of_get_and_head_are_not_forwarded() {
        assert!(!method_allows_body("GET") && !method_allows_body("HEAD"));
        for method in ["POST", "PUT", "PATCH", "DELETE", "QUERY", "OPTIONS"] {
            assert!(method_allows_body(method), "{method}");
        }
    }

    #[test]
    fn missing_details_serialise_as_null() {
        let e = ApiError::unavailable("misconfigured", "setting X is not set");
        assert_eq!(e.status, 503);
        assert_eq!(e.body("r")["error"]["details"], Value::Null);
        assert_eq!(e.body("r")["error"]["message"], "setting X is not set");
    }
}
