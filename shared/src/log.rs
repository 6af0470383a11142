//! The one log line of a request: a JSON object, so Workers Logs (and anything else
//! reading the Worker's console) can index and filter by its fields.
//!
//! `{"request_id", "function", "method", "path", "status", "duration_ms",
//! "upstream_ms", "error_code"}`, plus `error_message` and `error_details` for a
//! status of 500 or more — where an upstream's own words belong, never in the client's
//! answer — and `warnings` when there are any (a setting the Worker ignored).
//! `path` has no query string (a query can carry what should not be logged).

use crate::ApiError;
use serde_json::{json, Map, Value};

/// What [`line`] is made from.
#[derive(Debug, Clone, Copy)]
pub struct RequestLog<'a> {
    pub request_id: &'a str,
    /// The Worker's name (`sync`, `gateway`, ...).
    pub function: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration_ms: u64,
    /// Time spent waiting on upstreams (PostgREST, the embeddings API, Neo4j, a
    /// function behind the gateway); `None` when it was not measured.
    pub upstream_ms: Option<u64>,
    pub error: Option<&'a ApiError>,
    pub warnings: &'a [String],
}

/// The log object; `line(..).to_string()` is the text logged.
pub fn line(r: &RequestLog<'_>) -> Value {
    let mut obj = Map::new();
    obj.insert("request_id".into(), json!(r.request_id));
    obj.insert("function".into(), json!(r.function));
    obj.insert("method".into(), json!(r.method));
    obj.insert("path".into(), json!(r.path.split('?').next().unwrap_or_default()));
    obj.insert("status".into(), json!(r.status));
    obj.insert("duration_ms".into(), json!(r.duration_ms));
    obj.insert("upstream_ms".into(), json!(r.upstream_ms));
    obj.insert("error_code".into(), json!(r.error.map(|e| e.code)));
    if let Some(e) = r.error.filter(|e| e.status >= 500) {
        obj.insert("error_message".into(), json!(e.message));
        obj.insert("error_details".into(), e.details.clone().unwrap_or(Value::Null));
    }
    if let Some(detail) = r.error.and_then(|e| e.log_detail.as_deref()) {
        obj.insert("error_detail".into(), json!(detail));
    }
    if !r.warnings.is_empty() {
        obj.insert("warnings".into(), json!(r.warnings));
    }
    Value::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base<'a>() -> RequestLog<'a> {
        RequestLog {
            request_id: "req-1",
            function: "sync",
            method: "GET",
            path: "/sync",
            status: 200,
            duration_ms: 12,
            upstream_ms: Some(9),
            error: None,
            warnings: &[],
        }
    }

    #[test]
    fn a_success_has_every_field_and_no_error() {
        let v = line(&base());
        assert_eq!(
            v,
            json!({"request_id": "req-1", "function": "sync", "method": "GET", "path": "/sync", "status": 200,
                   "duration_ms": 12, "upstream_ms": 9, "error_code": null})
        );
        let text = v.to_string();
        assert!(!text.contains('\n'), "one line");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
    }

    #[test]
    fn a_client_error_logs_its_code_only() {
        let err = ApiError::unauthorized("invalid_token", "the token's signature is wrong");
        let v = line(&RequestLog { status: 401, error: Some(&err), upstream_ms: None, ..base() });
        assert_eq!(v["error_code"], "invalid_token");
        assert_eq!(v["upstream_ms"], Value::Null);
        assert!(v.get("error_message").is_none() && v.get("error_details").is_none(), "{v}");
    }

    #[test]
    fn a_server_error_logs_the_upstream_detail() {
        let err = ApiError::bad_gateway("upstream_error", "PostgREST said: relation x does not exist")
            .with_details(json!({"upstream_status": 500}));
        let v = line(&RequestLog { status: 502, error: Some(&err), ..base() });
        assert_eq!(v["error_code"], "upstream_error");
        assert_eq!(v["error_message"], "PostgREST said: relation x does not exist");
        assert_eq!(v["error_details"], json!({"upstream_status": 500}));
        let plain = ApiError::internal("boom");
        assert_eq!(line(&RequestLog { status: 500, error: Some(&plain), ..base() })["error_details"], Value::Null);
    }

    #[test]
    fn what_an_upstream_said_is_logged_but_never_answered() {
        let err = ApiError::new(429, "source_rate_limited", "the data source is limiting requests")
            .with_log_detail("Neo4j answered HTTP 429 at http://neo4j.internal:7474");
        let v = line(&RequestLog { status: 429, error: Some(&err), ..base() });
        assert_eq!(v["error_detail"], "Neo4j answered HTTP 429 at http://neo4j.internal:7474");
        assert!(!err.body("rid").to_string().contains("neo4j.internal"), "{}", err.body("rid"));
        assert!(line(&base()).get("error_detail").is_none());
    }

    #[test]
    fn the_query_string_is_never_logged_and_warnings_only_when_there_are_some() {
        let warnings = vec!["ALLOWED_ORIGINS: not an origin: localhost:3000".to_owned()];
        let v = line(&RequestLog { path: "/sync?since=secret", warnings: &warnings, ..base() });
        assert_eq!(v["path"], "/sync");
        assert_eq!(v["warnings"], json!(warnings));
        assert!(line(&base()).get("warnings").is_none());
    }
}
