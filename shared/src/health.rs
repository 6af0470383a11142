//! The `/health` verdict: pure, from what the function observed.
//!
//! The function crate does the I/O (one RPC to PostgREST, timed) and hands the
//! outcome here; this module decides the status code and the report. The report
//! names each dependency and whether it is well, and never carries secrets or user
//! data: upstream errors are summarised, not quoted.

use crate::config::ConfigError;
use crate::data_api::UpstreamError;
use serde_json::{json, Map, Value};

/// The RPC `/health` calls as the anonymous role. It answers `{"schema_version": n,
/// "watermark": {...}, "embeddings": {...}, "populate": {...}}` (0008_operations.sql),
/// with [`Thresholds::rpc_args`].
pub const HEALTH_RPC: &str = "edgesync_health";

/// Where `/health` stops answering `ok` and answers `degraded` (still 200: the API
/// works, but something needs an operator). Each is a setting of the health Worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// `HEALTH_MAX_WATERMARK_LAG_SECS` (30): the oldest running transaction that writes
    /// synced rows (holds a sync position) may be this old. Every pull waits for it: rows written after it began are not returned
    /// until it ends.
    pub max_watermark_lag_ms: u64,
    /// `HEALTH_EMBEDDING_OVERDUE_SECS` (300): a job due this long and not done is overdue
    /// (the Cron Trigger drains due jobs every minute).
    pub embedding_overdue_secs: u64,
    /// `HEALTH_MAX_OVERDUE_EMBEDDINGS` (0), `HEALTH_MAX_FAILED_EMBEDDINGS` (0): how many
    /// overdue jobs, and jobs that failed for good, are tolerated.
    pub max_overdue_embeddings: u64,
    pub max_failed_embeddings: u64,
    /// `HEALTH_MAX_POPULATE_ERRORS` (0): populate runs in status `error`.
    pub max_populate_errors: u64,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            max_watermark_lag_ms: 30_000,
            embedding_overdue_secs: 300,
            max_overdue_embeddings: 0,
            max_failed_embeddings: 0,
            max_populate_errors: 0,
        }
    }
}

/// The settings [`Thresholds::from_lookup`] reads.
pub const THRESHOLD_SETTINGS: [&str; 5] = [
    "HEALTH_MAX_WATERMARK_LAG_SECS",
    "HEALTH_EMBEDDING_OVERDUE_SECS",
    "HEALTH_MAX_OVERDUE_EMBEDDINGS",
    "HEALTH_MAX_FAILED_EMBEDDINGS",
    "HEALTH_MAX_POPULATE_ERRORS",
];

impl Thresholds {
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Thresholds, ConfigError> {
        let d = Thresholds::default();
        let number = |setting, default, max| crate::config::whole_number(&get, setting, default, 0, max);
        let [lag, overdue, max_overdue, max_failed, max_populate] = THRESHOLD_SETTINGS;
        Ok(Thresholds {
            max_watermark_lag_ms: number(lag, d.max_watermark_lag_ms / 1000, 86_400)? * 1000,
            embedding_overdue_secs: number(overdue, d.embedding_overdue_secs, 86_400)?,
            max_overdue_embeddings: number(max_overdue, d.max_overdue_embeddings, 1_000_000_000)?,
            max_failed_embeddings: number(max_failed, d.max_failed_embeddings, 1_000_000_000)?,
            max_populate_errors: number(max_populate, d.max_populate_errors, 1_000_000_000)?,
        })
    }

    /// The arguments of [`HEALTH_RPC`].
    pub fn rpc_args(&self) -> Value {
        json!({ "overdue_after_secs": self.embedding_overdue_secs })
    }
}

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
/// A dependency that is down makes it 503 `down`; a threshold passed, 200 `degraded`.
pub fn report(
    config: Result<&Thresholds, &ConfigError>,
    probe: Option<&Probe>,
    expected_schema: i64,
    version: &str,
) -> Report {
    let mut checks = Map::new();
    let mut failing: Vec<&str> = Vec::new();
    let mut degraded: Vec<&str> = Vec::new();

    match config {
        Ok(thresholds) => {
            if let Some(Ok(answer)) = probe.map(|p| &p.outcome) {
                operations(answer, thresholds, &mut checks, &mut degraded);
            }
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

    let (status, verdict) = match (failing.is_empty(), degraded.is_empty()) {
        (false, _) => (503, "down"),
        (true, false) => (200, "degraded"),
        (true, true) => (200, "ok"),
    };
    Report {
        status,
        body: json!({
            "status": verdict,
            "version": version,
            "checks": Value::Object(checks),
            "failing": failing,
            "degraded": degraded,
        }),
    }
}

/// The operational checks, from the parts of the health RPC's answer that report them
/// (absent from a database before 0008; then the schema check already fails).
fn operations(answer: &Value, t: &Thresholds, checks: &mut Map<String, Value>, degraded: &mut Vec<&str>) {
    let count = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64).unwrap_or(0);
    if let Some(w) = answer.get("watermark").filter(|w| w.is_object()) {
        let age = count(w, "oldest_write_age_ms");
        let ok = age <= t.max_watermark_lag_ms;
        let mut check = json!({
            "ok": ok,
            "writers": count(w, "writers"),
            "oldest_write_age_ms": age,
            "oldest_write_xid_distance": count(w, "oldest_write_xid_distance"),
            "max_lag_ms": t.max_watermark_lag_ms,
        });
        if !ok {
            check["error"] = json!(format!(
                "a transaction writing synced rows has been open for {} s; pulls return nothing written after it began until it ends",
                age / 1000
            ));
            degraded.push("watermark");
        }
        checks.insert("watermark".into(), check);
    }
    if let Some(e) = answer.get("embeddings").filter(|e| e.is_object()) {
        let (failed, overdue) = (count(e, "failed"), count(e, "overdue"));
        let ok = failed <= t.max_failed_embeddings && overdue <= t.max_overdue_embeddings;
        checks.insert(
            "embeddings".into(),
            json!({
                "ok": ok,
                "failed": failed,
                "overdue": overdue,
                "overdue_after_secs": t.embedding_overdue_secs,
                "max_failed": t.max_failed_embeddings,
                "max_overdue": t.max_overdue_embeddings,
            }),
        );
        if !ok {
            degraded.push("embeddings");
        }
    }
    if let Some(p) = answer.get("populate").filter(|p| p.is_object()) {
        let errors = count(p, "errors");
        let ok = errors <= t.max_populate_errors;
        checks.insert("populate".into(), json!({ "ok": ok, "errors": errors, "max_errors": t.max_populate_errors }));
        if !ok {
            degraded.push("populate");
        }
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
        let r = report(Ok(&Thresholds::default()), Some(&probe(Ok(json!({"schema_version": 3})))), 3, "1.2.3");
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
            let r = report(Ok(&Thresholds::default()), Some(&probe(outcome.clone())), 3, "v");
            assert_eq!(r.status, 503, "{outcome:?}");
            assert_eq!(r.body["status"], "down");
            assert!(r.body["failing"].as_array().unwrap().contains(&json!(dependency)), "{outcome:?}: {}", r.body);
            assert_eq!(r.body["checks"][dependency]["ok"], false, "{}", r.body);
            assert!(!r.body.to_string().contains("internal detail"), "{}", r.body);
            assert!(!r.body.to_string().contains("connection refused"), "{}", r.body);
        }
    }

    fn operations_answer(age_ms: u64, failed: u64, overdue: u64, errors: u64) -> Value {
        json!({
            "schema_version": 3,
            "watermark": {"writers": 1, "oldest_write_age_ms": age_ms, "oldest_write_xid_distance": 12},
            "embeddings": {"failed": failed, "overdue": overdue},
            "populate": {"errors": errors},
        })
    }

    #[test]
    fn operations_within_thresholds_are_ok_and_reported() {
        let r = report(Ok(&Thresholds::default()), Some(&probe(Ok(operations_answer(29_999, 0, 0, 0)))), 3, "v");
        assert_eq!((r.status, r.body["status"].as_str()), (200, Some("ok")), "{}", r.body);
        assert_eq!(r.body["degraded"], json!([]));
        assert_eq!(
            r.body["checks"]["watermark"],
            json!({"ok": true, "writers": 1, "oldest_write_age_ms": 29_999, "oldest_write_xid_distance": 12, "max_lag_ms": 30_000})
        );
        assert_eq!(r.body["checks"]["embeddings"]["ok"], true);
        assert_eq!(r.body["checks"]["populate"], json!({"ok": true, "errors": 0, "max_errors": 0}));
    }

    #[test]
    fn lag_and_backlog_are_degraded_but_200() {
        let cases = [
            (operations_answer(30_001, 0, 0, 0), vec!["watermark"]),
            (operations_answer(0, 1, 0, 0), vec!["embeddings"]),
            (operations_answer(0, 0, 1, 0), vec!["embeddings"]),
            (operations_answer(0, 0, 0, 1), vec!["populate"]),
            (operations_answer(60_000, 2, 0, 3), vec!["watermark", "embeddings", "populate"]),
        ];
        for (answer, expected) in cases {
            let r = report(Ok(&Thresholds::default()), Some(&probe(Ok(answer.clone()))), 3, "v");
            assert_eq!(r.status, 200, "{answer}");
            assert_eq!(r.body["status"], "degraded", "{answer}");
            assert_eq!(r.body["degraded"], json!(expected), "{answer}");
            assert_eq!(r.body["failing"], json!([]));
        }
        let r = report(Ok(&Thresholds::default()), Some(&probe(Ok(operations_answer(45_000, 0, 0, 0)))), 3, "v");
        assert!(r.body["checks"]["watermark"]["error"].as_str().unwrap().contains("open for 45 s"), "{}", r.body);
    }

    #[test]
    fn a_dependency_down_wins_over_degraded() {
        let mut answer = operations_answer(60_000, 5, 5, 5);
        answer["schema_version"] = json!(2);
        let r = report(Ok(&Thresholds::default()), Some(&probe(Ok(answer))), 3, "v");
        assert_eq!((r.status, r.body["status"].as_str()), (503, Some("down")));
        assert_eq!(r.body["failing"], json!(["schema"]));
    }

    #[test]
    fn thresholds_come_from_settings() {
        let settings = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        assert_eq!(Thresholds::from_lookup(|_| None).unwrap(), Thresholds::default());
        let t = Thresholds::from_lookup(settings(&[
            ("HEALTH_MAX_WATERMARK_LAG_SECS", "5"),
            ("HEALTH_EMBEDDING_OVERDUE_SECS", " 60 "),
            ("HEALTH_MAX_OVERDUE_EMBEDDINGS", "10"),
            ("HEALTH_MAX_FAILED_EMBEDDINGS", "3"),
            ("HEALTH_MAX_POPULATE_ERRORS", "2"),
        ]))
        .unwrap();
        assert_eq!(
            t,
            Thresholds {
                max_watermark_lag_ms: 5_000,
                embedding_overdue_secs: 60,
                max_overdue_embeddings: 10,
                max_failed_embeddings: 3,
                max_populate_errors: 2
            }
        );
        assert_eq!(t.rpc_args(), json!({"overdue_after_secs": 60}));
        // Tolerated counts change the verdict.
        let r = report(Ok(&t), Some(&probe(Ok(operations_answer(4_000, 3, 10, 2)))), 3, "v");
        assert_eq!(r.body["status"], "ok", "{}", r.body);
        for bad in ["-1", "1.5", "soon", "86401"] {
            let e = Thresholds::from_lookup(|n: &str| (n == "HEALTH_MAX_WATERMARK_LAG_SECS").then(|| bad.to_owned()))
                .unwrap_err();
            assert_eq!(e.setting, "HEALTH_MAX_WATERMARK_LAG_SECS", "{bad}");
        }
    }

    #[test]
    fn schema_behind_tells_the_operator_to_migrate() {
        let r = report(Ok(&Thresholds::default()), Some(&probe(Ok(json!({"schema_version": 1})))), 2, "v");
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
