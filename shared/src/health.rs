//! The `/health` verdict: pure, from what the function observed.
//!
//! The function crate does the I/O (one RPC to PostgREST, timed) and hands the
//! outcome here; this module decides the status code and the report. The report
//! names each dependency and whether it is well, and never carries secrets or user
//! data: upstream errors are summarised, not quoted.

use crate::config::ConfigError;
use crate::data_api::UpstreamError;
use serde_json::{json, Map, Value};

/// The RPC `/health` calls as the anonymous role. It answers `{"schema_version": n}`.
pub const HEALTH_RPC: &str = "edgesync_health";

/// What the function saw when it called [`HEALTH_RPC`].
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub outcome: Result<Value, UpstreamError>,
    pub latency_ms: u64,
}

/// Status code and JSON body of a health answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub status: u16,
    pub body: Value,
}

/// Decide the health answer.
///
/// `config` is the outcome of reading the settings `/health` needs; `probe` is
/// `None` exactly when the config could not be read (then nothing was called).
pub fn report(config: Result<(), &ConfigError>, probe: Option<&Probe>, expected_schema: i64, version: &str) -> Report {
    let mut checks = Map::new();
    let mut failing: Vec<&str> = Vec::new();

    match config {
        Ok(()) => {
            checks.insert("config".into(), json!({ "ok": true }));
        }
        Err(e) => {
            // The setting's name helps the operator; its value is never included.
            checks.insert("config".into(), json!({ "ok": false, "error": e.to_string() }));
            failing.push("config");
        }
    }

    if let Some(probe) = probe {
        match &probe.outcome {
            Ok(answer) => {
                checks.insert("postgrest".into(), json!({ "ok": true, "latency_ms": probe.latency_ms }));
                let actual = answer.get("schema_version").and_then(Value::as_i64);
                let ok = actual == Some(expected_schema);
                let mut schema = json!({ "ok": ok, "expected": expected_schema, "actual": actual });
                if !ok {
                    schema["error"] = json!(match actual {
                        None => "the database did not report a schema version".to_owned(),
                        Some(a) if a < expected_schema =>
                            format!("the database is at schema version {a}; apply the newer migrations in sql/migrations"),
                        Some(a) => format!("the database is at schema version {a}, newer than this code expects; deploy the matching functions"),
                    });
                    failing.push("schema");
                }
                checks.insert("schema".into(), schema);
            }
            Err(e) => {
                let (dependency, summary) = summarise(e);
                checks.insert(
                    "postgrest".into(),
                    json!({ "ok": dependency != "postgrest", "latency_ms": probe.latency_ms,
                            "error": if dependency == "postgrest" { Some(summary.clone()) } else { None } }),
                );
                match dependency {
                    "postgrest" => {
                        checks.insert(
                            "schema".into(),
                            json!({ "ok": false, "expected": expected_schema, "actual": null,
                                                               "error": "not checked: PostgREST is not answering" }),
                        );
                        failing.push("postgrest");
                    }
                    other => {
                        checks.insert(other.into(), json!({ "ok": false, "error": summary }));
                        failing.push(other);
                        if other != "schema" {
                            checks.insert(
                                "schema".into(),
                                json!({ "ok": false, "expected": expected_schema, "actual": null,
                                                                   "error": "not checked" }),
                            );
                        }
                    }
                }
            }
        }
    }

    let status = if failing.is_empty() { 200 } else { 503 };
    Report {
        status,
        body: json!({
            "status": if failing.is_empty() { "ok" } else { "down" },
            "version": version,
            "checks": Value::Object(checks),
            "failing": failing,
        }),
    }
}

/// Which dependency an upstream error points at, and a summary safe to publish.
fn summarise(e: &UpstreamError) -> (&'static str, String) {
    match e {
        UpstreamError::Unreachable(_) => ("postgrest", "not reachable".into()),
        UpstreamError::Timeout(ms) => ("postgrest", format!("no answer within {ms} ms")),
        UpstreamError::BadRequest(_) => ("config", "a credential is not a valid header value".into()),
        UpstreamError::BadBody(_) => ("postgrest", "answered with something that is not JSON".into()),
        UpstreamError::Status { status, code, .. } => {
            let code = code.as_deref().unwrap_or("");
            match (*status, code) {
                // PostgREST is up but cannot reach Postgres.
                (503, _) | (_, "PGRST000") | (_, "PGRST001") | (_, "PGRST002") => (
                    "database",
                    format!("PostgREST answers but the database does not (HTTP {status} {code})").trim_end().to_owned(),
                ),
                // The health RPC is not in the schema: migrations not applied.
                (404, c) if c.starts_with("PGRST2") || c == "42883" => {
                    ("schema", "the edgesync migrations are not applied (edgesync_health is missing)".into())
                }
                (401 | 403, _) => {
                    ("config", format!("PostgREST refused the health check (HTTP {status}); check SUPABASE_ANON_KEY"))
                }
                _ => ("postgrest", format!("answered HTTP {status}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(outcome: Result<Value, UpstreamError>) -> Probe {
        Probe { outcome, latency_ms: 7 }
    }

    fn status(status: u16, code: &str) -> UpstreamError {
        UpstreamError::Status {
            status,
            code: Some(code.into()),
            message: Some("internal detail".into()),
            hint: None,
            details: None,
        }
    }

    #[test]
    fn all_well_is_200_with_latency() {
        let r = report(Ok(()), Some(&probe(Ok(json!({"schema_version": 3})))), 3, "1.2.3");
        assert_eq!(r.status, 200);
        assert_eq!(r.body["status"], "ok");
        assert_eq!(r.body["version"], "1.2.3");
        assert_eq!(r.body["checks"]["postgrest"], json!({"ok": true, "latency_ms": 7}));
        assert_eq!(r.body["checks"]["schema"], json!({"ok": true, "expected": 3, "actual": 3}));
        assert_eq!(r.body["failing"], json!([]));
    }

    #[test]
    fn each_failure_is_503_naming_the_dependency() {
        let cases: Vec<(Result<Value, UpstreamError>, &str)> = vec![
            (Err(UpstreamError::Unreachable("connection refused".into())), "postgrest"),
            (Err(UpstreamError::BadBody("x".into())), "postgrest"),
            (Err(status(503, "PGRST001")), "database"),
            (Err(status(404, "PGRST202")), "schema"),
            (Err(status(401, "PGRST301")), "config"),
            (Err(status(500, "XX000")), "postgrest"),
            (Ok(json!({"schema_version": 2})), "schema"),
            (Ok(json!({"schema_version": 4})), "schema"),
            (Ok(json!({})), "schema"),
        ];
        for (outcome, dependency) in cases {
            let r = report(Ok(()), Some(&probe(outcome.clone())), 3, "v");
            assert_eq!(r.status, 503, "{outcome:?}");
            assert_eq!(r.body["status"], "down");
            assert!(r.body["failing"].as_array().unwrap().contains(&json!(dependency)), "{outcome:?}: {}", r.body);
            assert_eq!(r.body["checks"][dependency]["ok"], false, "{}", r.body);
            assert!(!r.body.to_string().contains("internal detail"), "{}", r.body);
            assert!(!r.body.to_string().contains("connection refused"), "{}", r.body);
        }
    }

    #[test]
    fn schema_behind_tells_the_operator_to_migrate() {
        let r = report(Ok(()), Some(&probe(Ok(json!({"schema_version": 1})))), 2, "v");
        assert!(r.body["checks"]["schema"]["error"].as_str().unwrap().contains("apply the newer migrations"));
    }

    #[test]
    fn broken_config_is_503_naming_the_setting_and_calls_nothing() {
        let e = ConfigError { setting: "POSTGREST_URL", problem: "must start with http:// or https://".into() };
        let r = report(Err(&e), None, 1, "v");
        assert_eq!(r.status, 503);
        assert_eq!(r.body["failing"], json!(["config"]));
        assert!(r.body["checks"]["config"]["error"].as_str().unwrap().contains("POSTGREST_URL"));
        assert!(r.body["checks"].get("postgrest").is_none());
    }
}
