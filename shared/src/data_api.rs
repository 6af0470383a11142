//! The PostgREST client layer, on the `postgrest` crate.
//!
//! Every request says who it is made for ([`Caller`]): a user's request carries the
//! user's own JWT so Row Level Security decides what it may see and write; the
//! service role is used only where no user is involved. PostgREST's answers are
//! mapped to [`ApiError`]s here, in one place, without leaking internals.

use crate::deadline::Deadline;
use crate::upstream::{exchange, ExchangeError, Limits};
use crate::ApiError;
use serde_json::Value;

/// On whose behalf a request to PostgREST is made.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    /// No token at all: PostgREST's `anon` role (only `/health` uses this).
    Anonymous,
    /// The user's own, already verified, JWT.
    User(&'a str),
    /// The service-role key (bypasses RLS): only for work no user is present for.
    ServiceRole(&'a str),
}

/// A PostgREST endpoint plus the Supabase `apikey` to present at its gateway.
#[derive(Clone)]
pub struct DataApi {
    base_url: String,
    anon_key: Option<String>,
    /// How long one exchange (request and answer) may take.
    deadline: Option<Deadline<'static>>,
    /// The `postgrest` client (and its HTTP client) for `base_url`, built once: each
    /// exchange clones it and adds only the caller's headers.
    base: postgrest::Postgrest,
}

impl std::fmt::Debug for DataApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataApi")
            .field("base_url", &self.base_url)
            .field("anon_key", &self.anon_key.as_ref().map(|_| "<set>"))
            .field("deadline_ms", &self.deadline.as_ref().map(|d| d.ms))
            .finish()
    }
}

/// What went wrong talking to PostgREST.
#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamError {
    /// No HTTP answer at all (connection refused, DNS, TLS).
    Unreachable(String),
    /// No complete answer within this many milliseconds.
    Timeout(u64),
    /// PostgREST answered with an error status. `code`, `message`, `hint` and
    /// `details` come from its JSON error body when there is one.
    Status { status: u16, code: Option<String>, message: Option<String>, hint: Option<String>, details: Option<String> },
    /// A 2xx answer whose body was not what the caller expected.
    BadBody(String),
    /// We refused to send the request (for example a header value that is not valid).
    BadRequest(String),
}

impl DataApi {
    pub fn new(base_url: impl Into<String>, anon_key: Option<String>) -> Self {
        let base_url = base_url.into();
        DataApi { base: postgrest::Postgrest::new(base_url.clone()), base_url, anon_key, deadline: None }
    }

    /// Give up on an exchange after `deadline` (the Worker's timer).
    pub fn with_deadline(mut self, deadline: Deadline<'static>) -> Self {
        self.deadline = Some(deadline);
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// A `postgrest` client that presents `caller`'s credentials.
    pub fn client(&self, caller: Caller<'_>) -> Result<postgrest::Postgrest, UpstreamError> {
        // `postgrest` panics on header values that are not valid; check them first so
        // that no input can panic the Worker.
        let mut client = self.base.clone();
        let (apikey, bearer) = match caller {
            Caller::Anonymous => (self.anon_key.as_deref(), None),
            Caller::User(token) => (self.anon_key.as_deref(), Some(token)),
            Caller::ServiceRole(key) => (Some(key), Some(key)),
        };
        if let Some(key) = apikey {
            client = client.insert_header("apikey", header_safe(key)?);
        }
        if let Some(token) = bearer {
            client = client.insert_header("Authorization", format!("Bearer {}", header_safe(token)?));
        }
        Ok(client)
    }

    /// Call `POST /rpc/<function>` with JSON arguments and return the JSON answer.
    pub async fn rpc(&self, caller: Caller<'_>, function: &str, args: &Value) -> Result<Value, UpstreamError> {
        let (status, body) = self.rpc_bytes(caller, function, args.to_string()).await?;
        parse_answer(status, &body)
    }

    /// Like [`DataApi::rpc`], but the arguments go as the JSON text given and a success
    /// comes back as the raw JSON bytes, for requests and answers too large to be worth
    /// building `Value` trees for (an `/upload` batch, a `/sync` page).
    pub async fn rpc_raw(&self, caller: Caller<'_>, function: &str, args: String) -> Result<Vec<u8>, UpstreamError> {
        let (status, body) = self.rpc_bytes(caller, function, args).await?;
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            parse_answer(status, &body).map(|_| body)
        }
    }

    /// The answer's status and body as bytes ([`crate::upstream::Answer`]), whole: no
    /// cap, as PostgREST's answers are bounded by the RPCs themselves.
    async fn rpc_bytes(
        &self,
        caller: Caller<'_>,
        function: &str,
        args: String,
    ) -> Result<(u16, Vec<u8>), UpstreamError> {
        let request = self.client(caller)?.rpc(function, args);
        let answer = exchange(request.execute(), Limits::new(self.deadline)).await?;
        Ok((answer.status, answer.body))
    }
}

impl From<ExchangeError> for UpstreamError {
    /// The transport's detail stays in the variant's text, for the log and `/health`'s
    /// summary; [`ApiError`]'s mapping below never quotes it.
    fn from(e: ExchangeError) -> Self {
        match e {
            ExchangeError::Unreachable(why) | ExchangeError::Unreadable { detail: why, .. } => {
                UpstreamError::Unreachable(why)
            }
            ExchangeError::Timeout(ms) => UpstreamError::Timeout(ms),
            // No cap is set for PostgREST; kept total for a cap added later.
            ExchangeError::TooLarge { limit, .. } => UpstreamError::BadBody(format!("larger than {limit} bytes")),
        }
    }
}

/// The error codes our SQL functions raise (as the `hint` of a `PTxyz` error); any
/// other hint is not passed on as a code.
pub const SQL_ERROR_CODES: &[&str] = &[
    "client_id_taken",
    "continuation_expired",
    "forbidden_row",
    "invalid_mutations",
    "invalid_request",
    "invalid_value",
    "populate_in_progress",
    "resync_required",
    "source_rate_limited",
    "unique_violation",
    "unknown_table",
    "user_id_mismatch",
    "user_required",
];

fn sql_error_code(hint: &str) -> Option<&'static str> {
    SQL_ERROR_CODES.iter().copied().find(|c| *c == hint)
}

fn header_safe(value: &str) -> Result<&str, UpstreamError> {
    if value.bytes().all(|b| (0x21..=0x7e).contains(&b)) && !value.is_empty() {
        Ok(value)
    } else {
        Err(UpstreamError::BadRequest("a credential contains characters not allowed in an HTTP header".into()))
    }
}

/// Turn PostgREST's status and body into a value or an error.
pub fn parse_answer(status: u16, body: impl AsRef<[u8]>) -> Result<Value, UpstreamError> {
    let body = body.as_ref();
    if (200..300).contains(&status) {
        if body.trim_ascii().is_empty() {
            return Ok(Value::Null);
        }
        return serde_json::from_slice(body).map_err(|e| UpstreamError::BadBody(format!("not JSON: {e}")));
    }
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| parsed.as_ref().and_then(|v| v.get(name)).and_then(Value::as_str).map(str::to_owned);
    Err(UpstreamError::Status {
        status,
        code: field("code"),
        message: field("message"),
        hint: field("hint"),
        details: field("details"),
    })
}

impl UpstreamError {
    /// Short description for logs and for `/health` (no secrets: tokens are never in it).
    pub fn describe(&self) -> String {
        match self {
            UpstreamError::Unreachable(why) => format!("unreachable: {why}"),
            UpstreamError::Timeout(ms) => format!("no answer within {ms} ms"),
            UpstreamError::Status { status, code, message, .. } => format!(
                "HTTP {status}{}{}",
                code.as_deref().map(|c| format!(" {c}")).unwrap_or_default(),
                message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
            ),
            UpstreamError::BadBody(why) => format!("unexpected answer: {why}"),
            UpstreamError::BadRequest(why) => format!("request not sent: {why}"),
        }
    }
}

impl From<UpstreamError> for ApiError {
    /// The client sees what it can act on; internals (SQL, hosts) stay in the logs.
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::Unreachable(_) => {
                ApiError::bad_gateway("upstream_unreachable", "the database API could not be reached")
            }
            UpstreamError::Timeout(ms) => ApiError::new(
                504,
                "upstream_timeout",
                format!(
                    "the database API did not answer within {ms} ms; a write may still complete, so retry it as it was"
                ),
            ),
            UpstreamError::BadBody(_) => {
                ApiError::bad_gateway("upstream_bad_response", "the database API gave an unexpected answer")
            }
            UpstreamError::BadRequest(why) => ApiError::bad_request("bad_credentials", why),
            UpstreamError::Status { status, code, message, hint, details } => {
                let code_str = code.as_deref().unwrap_or_default();
                match (status, code_str) {
                    // Our own SQL raises PTxyz with a message written for clients, a
                    // machine-readable code as the hint, and JSON details.
                    (400..=499, c) if c.starts_with("PT") && status != 401 => {
                        let err = ApiError::new(
                            status,
                            hint.as_deref().and_then(sql_error_code).unwrap_or("rejected"),
                            message.unwrap_or_else(|| "the request was rejected".into()),
                        );
                        match details.as_deref().and_then(|d| serde_json::from_str::<Value>(d).ok()) {
                            Some(d) if d.is_object() => err.with_details(d),
                            _ => err,
                        }
                    }
                    (403, _) | (_, "42501") => {
                        ApiError::forbidden("forbidden", "the database refused this operation for this user")
                    }
                    // We verified the token ourselves; PostgREST disagreeing means the
                    // two are configured with different keys.
                    (401, _) => ApiError::bad_gateway(
                        "upstream_rejected_token",
                        "the database API rejected a token this service accepted; check that both use the same JWT keys",
                    ),
                    // Aborted to break a deadlock or a serialisation conflict: nothing was
                    // written, and the same request will very likely pass.
                    (_, "40P01") | (_, "40001") => ApiError::unavailable(
                        "database_busy",
                        "the database aborted this request to resolve a conflict with another one; nothing was applied, retry it",
                    )
                    .with_details(serde_json::json!({ "retry_after_secs": 1 })),
                    (409, _) => ApiError::new(409, "conflict", "the change conflicts with existing data"),
                    // The role's statement_timeout (Supabase: 8 s for users) cancelled it:
                    // the transaction was rolled back, so a retry is safe.
                    (_, "57014") => ApiError::new(
                        504,
                        "database_timeout",
                        "the database cancelled the request after its time limit; nothing was applied, retry it",
                    ),
                    (503, _) | (_, "PGRST000") | (_, "PGRST001") | (_, "PGRST002") => {
                        ApiError::unavailable("database_unavailable", "the database is unavailable")
                    }
                    // Function or relation missing from PostgREST's schema cache.
                    (404, c) if c.starts_with("PGRST2") => ApiError::bad_gateway(
                        "schema_mismatch",
                        "the database schema does not match this version of edgesync; apply the migrations in sql/",
                    ),
                    _ => ApiError::bad_gateway("upstream_error", format!("the database API answered HTTP {status}")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn success_bodies_are_parsed() {
        assert_eq!(parse_answer(200, r#"{"a":1}"#), Ok(json!({"a": 1})));
        assert_eq!(parse_answer(204, ""), Ok(Value::Null));
        assert!(matches!(parse_answer(200, "<html>"), Err(UpstreamError::BadBody(_))));
    }

    #[test]
    fn error_bodies_keep_code_and_message() {
        let e = parse_answer(403, r#"{"code":"PT403","message":"client_id belongs to another user","details":null}"#);
        assert_eq!(
            e,
            Err(UpstreamError::Status {
                status: 403,
                code: Some("PT403".into()),
                message: Some("client_id belongs to another user".into()),
                hint: None,
                details: None,
            })
        );
        assert_eq!(
            parse_answer(502, "Bad Gateway"),
            Err(UpstreamError::Status { status: 502, code: None, message: None, hint: None, details: None })
        );
    }

    fn status(status: u16, code: Option<&str>, message: Option<&str>) -> ApiError {
        UpstreamError::Status {
            status,
            code: code.map(Into::into),
            message: message.map(Into::into),
            hint: None,
            details: None,
        }
        .into()
    }

    #[test]
    fn our_sql_errors_keep_their_code_and_details() {
        let e: ApiError =
            parse_answer(410, r#"{"code":"PT410","message":"pull again","hint":"resync_required","details":null}"#)
                .unwrap_err()
                .into();
        assert_eq!((e.status, e.code, e.message.as_str(), e.details), (410, "resync_required", "pull again", None));
        let e: ApiError = parse_answer(
            400,
            r#"{"code":"PT400","message":"1 invalid","hint":"invalid_mutations","details":"{\"errors\": [{\"op_id\": 3}]}"}"#,
        )
        .unwrap_err()
        .into();
        assert_eq!((e.status, e.code), (400, "invalid_mutations"));
        assert_eq!(e.details.unwrap()["errors"][0]["op_id"], 3);
        // A hint that is not one of ours is not turned into a code.
        let e: ApiError =
            parse_answer(400, r#"{"code":"PT400","message":"m","hint":"Drop table x","details":"not json"}"#)
                .unwrap_err()
                .into();
        assert_eq!((e.code, e.details), ("rejected", None));
    }

    #[test]
    fn upstream_errors_map_to_client_errors_without_internals() {
        let cases: &[(ApiError, u16, &str)] = &[
            (
                UpstreamError::Unreachable("connection refused 127.0.0.1:3000".into()).into(),
                502,
                "upstream_unreachable",
            ),
            (UpstreamError::BadBody("x".into()).into(), 502, "upstream_bad_response"),
            (status(403, Some("PT403"), Some("client_id belongs to another user")), 403, "rejected"),
            (status(400, Some("PT400"), Some("bad batch")), 400, "rejected"),
            (status(403, Some("42501"), Some("permission denied for table secret_stuff")), 403, "forbidden"),
            (status(401, Some("PGRST301"), Some("JWT expired")), 502, "upstream_rejected_token"),
            (status(409, Some("23505"), Some("duplicate key value violates unique constraint \"x\"")), 409, "conflict"),
            (status(503, Some("PGRST001"), Some("Database client error")), 503, "database_unavailable"),
            (status(500, Some("57014"), Some("canceling statement due to statement timeout")), 504, "database_timeout"),
            (status(500, Some("40P01"), Some("deadlock detected")), 503, "database_busy"),
            (status(404, Some("PGRST202"), Some("Could not find the function")), 502, "schema_mismatch"),
            (status(500, Some("XX000"), Some("internal: relation pg_secret")), 502, "upstream_error"),
        ];
        for (err, want_status, want_code) in cases {
            assert_eq!((err.status, err.code), (*want_status, *want_code), "{err}");
            for leak in ["127.0.0.1", "secret_stuff", "pg_secret", "unique constraint"] {
                assert!(!err.message.contains(leak), "{err} leaks {leak}");
            }
        }
        // Messages our own SQL raised for clients are passed on.
        assert_eq!(
            status(403, Some("PT403"), Some("client_id belongs to another user")).message,
            "client_id belongs to another user"
        );
    }

    #[test]
    fn credentials_that_are_not_header_safe_are_refused_not_panicked_on() {
        let api = DataApi::new("http://127.0.0.1:1", Some("anon\nkey".into()));
        assert!(matches!(api.client(Caller::Anonymous), Err(UpstreamError::BadRequest(_))));
        let api = DataApi::new("http://127.0.0.1:1", None);
        assert!(matches!(api.client(Caller::User("a b")), Err(UpstreamError::BadRequest(_))));
        assert!(api.client(Caller::User("aaa.bbb.ccc")).is_ok());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_postgrest_that_never_answers_times_out() {
        // Accepts connections and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let _hold = std::thread::spawn(move || {
            let conns: Vec<_> = listener.incoming().take(1).collect();
            std::thread::sleep(std::time::Duration::from_secs(5));
            drop(conns);
        });
        const SLEEP: crate::deadline::Sleep<'static> =
            &|ms| Box::pin(tokio::time::sleep(std::time::Duration::from_millis(ms)));
        let api = DataApi::new(url, None).with_deadline(Deadline { ms: 200, sleep: SLEEP });
        let err = api.rpc(Caller::Anonymous, "edgesync_health", &json!({})).await.unwrap_err();
        assert_eq!(err, UpstreamError::Timeout(200));
        let e: ApiError = err.into();
        assert_eq!((e.status, e.code), (504, "upstream_timeout"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unreachable_postgrest_is_an_upstream_error() {
        // Port 1 on loopback: nothing listens there.
        let api = DataApi::new("http://127.0.0.1:1", None);
        let err = api.rpc(Caller::Anonymous, "edgesync_health", &json!({})).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Unreachable(_)), "{err:?}");
    }
}
