//! The Neo4j HTTP Query API v2 (`POST {NEO4J_URL}/db/{database}/query/v2`): the two
//! statements edgesync sends, the request, and the answer or error, as Neo4j documents
//! them (`{"data": {"fields", "values"}}` on 202; `{"errors": [{"code", "message"}]}`).

use crate::config::{http_url, ConfigError};
use crate::deadline::{Deadline, Sleep};
use crate::upstream::{exchange, retry_after_secs, ExchangeError, Limits};
use base64::Engine;
use serde_json::{json, Map, Value};

/// One page of a user's nodes after `$after` (element id order), optionally only those
/// changed after `$since`. Property names are parameters (`n[$tenant]`), so no
/// configured name is ever spliced into Cypher.
pub const NODES_STATEMENT: &str = "MATCH (n)
WHERE n[$tenant] = $user_id
  AND ($after IS NULL OR elementId(n) > $after)
  AND ($since IS NULL OR n[$changed] IS NULL OR n[$changed] > $since)
RETURN elementId(n) AS id, labels(n) AS labels, properties(n) AS properties
ORDER BY id
LIMIT $limit";

/// One page of the relationships between a user's nodes, with both ends' labels and
/// properties (their natural keys are found through the mapping).
pub const RELS_STATEMENT: &str = "MATCH (a)-[r]->(b)
WHERE a[$tenant] = $user_id AND b[$tenant] = $user_id
  AND ($after IS NULL OR elementId(r) > $after)
  AND ($since IS NULL OR r[$changed] IS NULL OR r[$changed] > $since)
RETURN elementId(r) AS id, type(r) AS type, properties(r) AS properties,
       labels(a) AS from_labels, properties(a) AS from_properties,
       labels(b) AS to_labels, properties(b) AS to_properties
ORDER BY id
LIMIT $limit";

#[derive(Debug, Clone, PartialEq)]
pub enum Neo4jAuth {
    Basic { user: String, password: String },
    Bearer(String),
}

/// Where the graph is and how to sign in (Worker secrets).
#[derive(Debug, Clone, PartialEq)]
pub struct Neo4jConfig {
    pub url: String,
    pub database: String,
    pub auth: Neo4jAuth,
    /// How long one query may take (`NEO4J_TIMEOUT_MS`, default 15 s).
    pub timeout_ms: u64,
}

impl Neo4jConfig {
    /// `NEO4J_URL` (e.g. `https://xxxx.databases.neo4j.io`), `NEO4J_DATABASE` (default
    /// `neo4j`), and `NEO4J_USER` + `NEO4J_PASSWORD` (basic) or `NEO4J_TOKEN` (bearer).
    /// `None` when `NEO4J_URL` is not set: the source is not configured.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Neo4jConfig>, ConfigError> {
        let get = |name: &str| crate::config::non_blank(&get, name);
        let Some(url) = get("NEO4J_URL") else { return Ok(None) };
        let url = http_url("NEO4J_URL", &url)?;
        let database = get("NEO4J_DATABASE").unwrap_or_else(|| "neo4j".into());
        if !database.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) || database.len() > 63 {
            return Err(ConfigError { setting: "NEO4J_DATABASE", problem: "is not a database name".into() });
        }
        let auth = match (get("NEO4J_TOKEN"), get("NEO4J_USER"), get("NEO4J_PASSWORD")) {
            (Some(token), None, None) => Neo4jAuth::Bearer(token),
            (None, Some(user), Some(password)) => Neo4jAuth::Basic { user, password },
            (None, Some(_), None) => {
                return Err(ConfigError { setting: "NEO4J_PASSWORD", problem: "is not set (NEO4J_USER is)".into() })
            }
            (None, None, _) => {
                return Err(ConfigError {
                    setting: "NEO4J_USER",
                    problem: "is not set: set NEO4J_USER and NEO4J_PASSWORD, or NEO4J_TOKEN".into(),
                })
            }
            (Some(_), _, _) => {
                return Err(ConfigError {
                    setting: "NEO4J_TOKEN",
                    problem: "set either NEO4J_TOKEN or NEO4J_USER/NEO4J_PASSWORD, not both".into(),
                })
            }
        };
        let timeout_ms = crate::config::timeout_ms(get, "NEO4J_TIMEOUT_MS", 15_000)?;
        Ok(Some(Neo4jConfig { url, database, auth, timeout_ms }))
    }

    pub fn query_url(&self) -> String {
        format!("{}/db/{}/query/v2", self.url, self.database)
    }

    pub fn authorization(&self) -> String {
        match &self.auth {
            Neo4jAuth::Basic { user, password } => {
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
            }
            Neo4jAuth::Bearer(token) => format!("Bearer {token}"),
        }
    }
}

/// Why the source did not answer with rows.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceFailure {
    /// 429 (or Neo4j's transient resource errors): wait this long.
    RateLimited { retry_after_secs: u64, message: String },
    /// 410: the cursor or token is no longer valid; start again fully.
    Gone { message: String },
    /// 401/403: the credentials are wrong or lack the rights.
    Unauthorized { status: u16, message: String },
    /// Any other failure, with the HTTP status when there was an answer.
    Failed { status: Option<u16>, message: String },
    /// No answer within `NEO4J_TIMEOUT_MS`.
    TimedOut { ms: u64, message: String },
}

impl SourceFailure {
    pub fn message(&self) -> &str {
        match self {
            SourceFailure::RateLimited { message, .. }
            | SourceFailure::Gone { message }
            | SourceFailure::Unauthorized { message, .. }
            | SourceFailure::Failed { message, .. }
            | SourceFailure::TimedOut { message, .. } => message,
        }
    }
}

/// The JSON body of one query.
pub fn query_body(statement: &str, parameters: Value) -> Value {
    json!({ "statement": statement, "parameters": parameters })
}

/// Rows of an answer, by field name.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub fields: Vec<String>,
    pub values: Vec<Vec<Value>>,
}

impl Rows {
    /// Each row as a map of field → value.
    pub fn records(&self) -> impl Iterator<Item = Map<String, Value>> + '_ {
        self.values.iter().map(|row| self.fields.iter().cloned().zip(row.iter().cloned()).collect())
    }
}

/// Read an answer: rows on success, a classified failure otherwise.
pub fn parse_answer(status: u16, retry_after: Option<&str>, body: &str) -> Result<Rows, SourceFailure> {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let first_error =
        parsed.as_ref().and_then(|v| v.get("errors")).and_then(Value::as_array).and_then(|errs| errs.first()).map(
            |e| {
                let field = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
                (field("code"), field("message"))
            },
        );
    let describe = |code: &str, message: &str| {
        let mut text = format!("Neo4j answered HTTP {status}");
        if !code.is_empty() {
            text.push_str(&format!(" {code}"));
        }
        if !message.is_empty() {
            // Neo4j's messages are about the query, never about our secrets; keep them short.
            let short: String = message.chars().take(300).collect();
            text.push_str(&format!(": {short}"));
        }
        text
    };
    if (200..300).contains(&status) && first_error.is_none() {
        let data = parsed.as_ref().and_then(|v| v.get("data")).ok_or_else(|| SourceFailure::Failed {
            status: Some(status),
            message: "Neo4j answered without data (is NEO4J_URL a Neo4j Query API?)".into(),
        })?;
        let fields: Option<Vec<String>> = data
            .get("fields")
            .and_then(Value::as_array)
            .map(|f| f.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect());
        let values: Option<Vec<Vec<Value>>> = data
            .get("values")
            .and_then(Value::as_array)
            .map(|rows| rows.iter().filter_map(|r| r.as_array().cloned()).collect());
        return match (fields, values) {
            (Some(fields), Some(values)) if values.iter().all(|r| r.len() == fields.len()) => {
                Ok(Rows { fields, values })
            }
            _ => Err(SourceFailure::Failed {
                status: Some(status),
                message: "Neo4j's answer has no valid fields/values".into(),
            }),
        };
    }
    let (code, message) = first_error.unwrap_or_default();
    let text = describe(&code, &message);
    let transient = code.starts_with("Neo.TransientError.");
    Err(match status {
        429 => {
            SourceFailure::RateLimited { retry_after_secs: retry_after_secs(retry_after).unwrap_or(60), message: text }
        }
        410 => SourceFailure::Gone { message: text },
        401 | 403 => SourceFailure::Unauthorized { status, message: text },
        _ if code.starts_with("Neo.ClientError.Security.") => SourceFailure::Unauthorized { status, message: text },
        503 if transient => {
            SourceFailure::RateLimited { retry_after_secs: retry_after_secs(retry_after).unwrap_or(30), message: text }
        }
        _ => SourceFailure::Failed { status: Some(status), message: text },
    })
}

/// Run one statement, giving up after the configured timeout.
pub async fn query(
    cfg: &Neo4jConfig,
    statement: &str,
    parameters: Value,
    sleep: Sleep<'_>,
) -> Result<Rows, SourceFailure> {
    let request = reqwest::Client::new()
        .post(cfg.query_url())
        .header("authorization", cfg.authorization())
        .header("accept", "application/json")
        .json(&query_body(statement, parameters));
    let limits = Limits::new(Some(Deadline { ms: cfg.timeout_ms, sleep }));
    let answer = exchange(request.send(), limits).await?;
    parse_answer(answer.status, answer.retry_after.as_deref(), &answer.text())
}

impl From<ExchangeError> for SourceFailure {
    /// The texts are the run's error (its log and `sync_state`), never the client's
    /// message (`populate::source_error` answers a fixed text per code).
    fn from(e: ExchangeError) -> Self {
        match e {
            ExchangeError::Unreachable(why) => {
                SourceFailure::Failed { status: None, message: format!("Neo4j could not be reached: {why}") }
            }
            ExchangeError::Unreadable { status, detail, .. } => SourceFailure::Failed {
                status: Some(status),
                message: format!("Neo4j's answer could not be read: {detail}"),
            },
            // No cap is set for Neo4j; kept total for a cap added later.
            ExchangeError::TooLarge { status, limit } => SourceFailure::Failed {
                status: Some(status),
                message: format!("Neo4j's answer is larger than {limit} bytes"),
            },
            ExchangeError::Timeout(ms) => {
                SourceFailure::TimedOut { ms, message: format!("Neo4j did not answer within {ms} ms") }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Option<Neo4jConfig>, ConfigError> {
        let map: std::collections::HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Neo4jConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn settings_choose_basic_or_bearer_auth() {
        assert_eq!(settings(&[]).unwrap(), None);
        let c = settings(&[
            ("NEO4J_URL", "https://x.databases.neo4j.io/"),
            ("NEO4J_USER", "neo4j"),
            ("NEO4J_PASSWORD", "pw"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.query_url(), "https://x.databases.neo4j.io/db/neo4j/query/v2");
        assert_eq!(c.authorization(), "Basic bmVvNGo6cHc=");
        let c =
            settings(&[("NEO4J_URL", "http://127.0.0.1:7474"), ("NEO4J_TOKEN", "t"), ("NEO4J_DATABASE", "graph-1")])
                .unwrap()
                .unwrap();
        assert_eq!(
            (c.query_url().as_str(), c.authorization().as_str()),
            ("http://127.0.0.1:7474/db/graph-1/query/v2", "Bearer t")
        );
        for (pairs, setting) in [
            (vec![("NEO4J_URL", "http://h")], "NEO4J_USER"),
            (vec![("NEO4J_URL", "http://h"), ("NEO4J_USER", "u")], "NEO4J_PASSWORD"),
            (vec![("NEO4J_URL", "http://h"), ("NEO4J_TOKEN", "t"), ("NEO4J_USER", "u")], "NEO4J_TOKEN"),
            (vec![("NEO4J_URL", "ftp://h"), ("NEO4J_TOKEN", "t")], "NEO4J_URL"),
            (vec![("NEO4J_URL", "http://h"), ("NEO4J_TOKEN", "t"), ("NEO4J_DATABASE", "a/b")], "NEO4J_DATABASE"),
        ] {
            assert_eq!(settings(&pairs).unwrap_err().setting, setting, "{pairs:?}");
        }
    }

    #[test]
    fn an_answer_becomes_records() {
        let rows = parse_answer(
            202,
            None,
            r#"{"data":{"fields":["id","labels"],"values":[["4:a:1",["Person"]],["4:a:2",[]]]},"bookmarks":["FB:x"]}"#,
        )
        .unwrap();
        let recs: Vec<_> = rows.records().collect();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0]["id"], "4:a:1");
        assert_eq!(recs[1]["labels"], json!([]));
        for bad in ["<html>", r#"{"data":{"fields":["a"],"values":[[1,2]]}}"#, r#"{"bookmarks":[]}"#] {
            assert!(matches!(parse_answer(202, None, bad), Err(SourceFailure::Failed { .. })), "{bad}");
        }
    }

    #[test]
    fn errors_are_classified() {
        let err = |status, retry, body: &str| parse_answer(status, retry, body).unwrap_err();
        let body = |code: &str| format!(r#"{{"errors":[{{"code":"{code}","message":"m"}}]}}"#);
        assert_eq!(
            err(429, Some("7"), &body("Neo.TransientError.Request.ResourceExhaustion")),
            SourceFailure::RateLimited {
                retry_after_secs: 7,
                message: "Neo4j answered HTTP 429 Neo.TransientError.Request.ResourceExhaustion: m".into()
            }
        );
        assert!(matches!(err(429, None, ""), SourceFailure::RateLimited { retry_after_secs: 60, .. }));
        assert!(matches!(err(410, None, &body("Neo.ClientError.Request.Invalid")), SourceFailure::Gone { .. }));
        let e = err(401, None, &body("Neo.ClientError.Security.Unauthorized"));
        assert!(matches!(e, SourceFailure::Unauthorized { status: 401, .. }));
        assert!(e.message().contains("Neo.ClientError.Security.Unauthorized"));
        assert!(matches!(
            err(400, None, &body("Neo.ClientError.Security.Forbidden")),
            SourceFailure::Unauthorized { .. }
        ));
        assert!(matches!(err(500, None, "oops"), SourceFailure::Failed { status: Some(500), .. }));
        // An error list in a 2xx answer is still an error.
        assert!(matches!(
            err(200, None, &body("Neo.ClientError.Statement.SyntaxError")),
            SourceFailure::Failed { status: Some(200), .. }
        ));
        let long = format!(r#"{{"errors":[{{"code":"c","message":"{}"}}]}}"#, "x".repeat(5000));
        assert!(err(400, None, &long).message().len() < 400);
    }
}
