//! `POST /populate` (README.md "Populate"): bulk load of a user's existing data into the sync
//! tables, from a Neo4j graph or from a batch of legacy records.
//!
//! A Neo4j populate is a *run* that pages through the user's nodes, then their
//! relationships, in element-id order. Each page is mapped ([`mapping`]) and written
//! with one RPC that also moves the run's cursor, so a call can stop anywhere — at its
//! subrequest or time budget, or on a source failure — and the next call (with the
//! continuation, or the Cron Trigger) resumes from the last written page. The run's
//! state lives in `sync_state` (`sql/migrations/0006_populate.sql`).

pub mod legacy;
pub mod legacy_run;
pub mod mapping;
pub mod neo4j;
pub mod run;

use crate::auth::parse_uuid;
use crate::config::ConfigError;
use crate::data_api::{Caller, DataApi};
use crate::deadline::Sleep;
use crate::ApiError;
use legacy::{LegacyBatch, MAX_RECORDS};
use legacy_run::{LegacyRun, LegacyStep};
use mapping::{later, MappedNode, Mapping, Table};
use neo4j::{Neo4jConfig, SourceFailure};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

pub const BEGIN_RPC: &str = "edgesync_populate_begin";
pub const APPLY_RPC: &str = "edgesync_populate_apply";
pub const FINISH_RPC: &str = "edgesync_populate_finish";
pub const DUE_RPC: &str = "edgesync_populate_due";

/// Largest request body: a legacy batch of up to [`MAX_RECORDS`] records.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// Rejections listed in one answer (all are counted).
const MAX_LISTED_REJECTIONS: usize = 100;

/// Budgets and schedule, from the Worker's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PopulateConfig {
    /// Nodes or relationships asked for per Neo4j request (`POPULATE_PAGE_SIZE`, 1000).
    pub page_size: u32,
    /// Subrequests one call may make (`POPULATE_MAX_SUBREQUESTS`, 45: Workers Free allows 50).
    pub max_subrequests: u32,
    /// Wall time after which a call stops starting pages (`POPULATE_TIME_BUDGET_MS`, 20000).
    pub time_budget_ms: u64,
    /// A Cron run refreshes users whose last sync is older than this (`POPULATE_STALE_AFTER_SECS`, 21600).
    pub stale_after_secs: u32,
    /// Users a Cron run takes on at most (`POPULATE_CRON_USERS`, 5).
    pub cron_users: u32,
}

impl PopulateConfig {
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<PopulateConfig, ConfigError> {
        let number = |name, default, min, max| crate::config::whole_number(&get, name, default, min, max);
        Ok(PopulateConfig {
            page_size: number("POPULATE_PAGE_SIZE", 1000, 1, 5000)? as u32,
            max_subrequests: number("POPULATE_MAX_SUBREQUESTS", 45, 5, 10_000)? as u32,
            time_budget_ms: number("POPULATE_TIME_BUDGET_MS", 20_000, 100, 600_000)?,
            stale_after_secs: number("POPULATE_STALE_AFTER_SECS", 21_600, 0, 31_536_000)? as u32,
            cron_users: number("POPULATE_CRON_USERS", 5, 1, 100)? as u32,
        })
    }

    /// How long a call's lease lasts: its time budget plus room for its last page.
    pub fn lease_secs(&self) -> u64 {
        self.time_budget_ms / 1000 + 30
    }
}

/// Full or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Full,
    Incremental,
    /// Resume the unfinished run, else incremental (the Cron Trigger).
    Auto,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Incremental => "incremental",
            Mode::Auto => "auto",
        }
    }
}

/// A parsed `/populate` body.
#[derive(Debug, Clone, PartialEq)]
pub enum PopulateRequest {
    Neo4j { run: Option<String>, mode: Mode, max_pages: Option<u32>, user_id: Option<String> },
    Legacy { records: Vec<Value>, user_id: Option<String> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    source: String,
    #[serde(default)]
    records: Option<Vec<Value>>,
    #[serde(default)]
    continuation: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    max_pages: Option<u32>,
    #[serde(default)]
    user_id: Option<String>,
}

const CONTINUATION_PREFIX: &str = "r1.";

/// The continuation token of a run (opaque to clients).
pub fn continuation(run_id: &str) -> String {
    format!("{CONTINUATION_PREFIX}{run_id}")
}

impl PopulateRequest {
    pub fn parse(body: &[u8]) -> Result<PopulateRequest, ApiError> {
        let invalid = |m: String| ApiError::bad_request("invalid_request", m);
        let b: Body = serde_json::from_slice(body).map_err(|e| {
            invalid(format!("the body must be {{\"source\": \"neo4j\" | \"legacy\", ...}} (README \"Populate\"): {e}"))
        })?;
        let user_id = match b.user_id {
            None => None,
            Some(u) => Some(parse_uuid(&u).ok_or_else(|| invalid("user_id must be a UUID".into()))?),
        };
        match b.source.as_str() {
            "neo4j" => {
                if b.records.is_some() {
                    return Err(invalid("records are for source \"legacy\"".into()));
                }
                let run = match b.continuation {
                    None => None,
                    Some(token) => {
                        Some(token.strip_prefix(CONTINUATION_PREFIX).and_then(parse_uuid).ok_or_else(|| {
                            ApiError::bad_request(
                                "invalid_continuation",
                                "continuation is not a token this service gave out; call again without it",
                            )
                        })?)
                    }
                };
                let mode = match b.mode.as_deref() {
                    None | Some("full") => Mode::Full,
                    Some("incremental") => Mode::Incremental,
                    Some(_) => return Err(invalid("mode must be \"full\" or \"incremental\"".into())),
                };
                if run.is_some() && b.mode.is_some() {
                    return Err(invalid("a continuation resumes its run; leave mode out".into()));
                }
                if b.max_pages.is_some_and(|n| !(1..=1000).contains(&n)) {
                    return Err(invalid("max_pages must be from 1 to 1000".into()));
                }
                Ok(PopulateRequest::Neo4j { run, mode, max_pages: b.max_pages, user_id })
            }
            "legacy" => {
                if b.continuation.is_some() || b.mode.is_some() || b.max_pages.is_some() {
                    return Err(invalid("a legacy batch takes only records (and user_id)".into()));
                }
                let records =
                    b.records.ok_or_else(|| invalid("records (a list of legacy records) is required".into()))?;
                if records.len() > MAX_RECORDS {
                    return Err(ApiError::new(
                        413,
                        "too_many_records",
                        format!("{} records; send at most {MAX_RECORDS} per call", records.len()),
                    ));
                }
                Ok(PopulateRequest::Legacy { records, user_id })
            }
            other => Err(invalid(format!("source must be \"neo4j\" or \"legacy\", not {other:?}"))),
        }
    }

    pub fn user_id(&self) -> Option<&str> {
        match self {
            PopulateRequest::Neo4j { user_id, .. } | PopulateRequest::Legacy { user_id, .. } => user_id.as_deref(),
        }
    }
}

/// Whose data a `/populate` call loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whose<'a> {
    /// The calling user's own, with their token (RLS applies).
    Own,
    /// The named user's, with the service role.
    Named(&'a str),
}

/// Who may populate whom: a user only their own data (naming anyone else is `403`);
/// the service role only a user it names (`400` without one).
pub fn whose<'a>(principal: &crate::auth::Principal, named: Option<&'a str>) -> Result<Whose<'a>, ApiError> {
    match principal {
        crate::auth::Principal::User { user_id } => match named {
            Some(other) if other != user_id => {
                Err(ApiError::forbidden("user_id_mismatch", "a user can populate only their own data"))
            }
            _ => Ok(Whose::Own),
        },
        crate::auth::Principal::ServiceRole => named.map(Whose::Named).ok_or_else(|| {
            ApiError::bad_request("invalid_request", "user_id is required when calling with the service role")
        }),
    }
}

/// The Cron's subrequest budget, spent user after user (`POPULATE_MAX_SUBREQUESTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CronBudget {
    left: u32,
}

impl CronBudget {
    /// The budget of one Cron invocation; one subrequest goes to finding the due users.
    pub fn new(max_subrequests: u32) -> CronBudget {
        CronBudget { left: max_subrequests.saturating_sub(1) }
    }

    /// What is left, for the next user's run.
    pub fn left(&self) -> u32 {
        self.left
    }

    /// Room for another user: a run needs its begin, a page from the source, the
    /// page's write and its finish.
    pub fn room_for_a_user(&self) -> bool {
        self.left >= 4
    }

    /// A run that reports what it spent.
    pub fn spend(&mut self, requests: &Requests) {
        self.left = self.left.saturating_sub(requests.source + requests.database);
    }

    /// A run that failed spent at least its begin, a page and its finish.
    pub fn spend_failed(&mut self) {
        self.left = self.left.saturating_sub(3);
    }
}

/// `edgesync_populate_due`'s arguments: the Neo4j users not synced for
/// `stale_after_secs`, at most `cron_users` of them.
pub fn due_args(config: &PopulateConfig) -> Value {
    json!({ "p_source": "neo4j", "p_stale_after_secs": config.stale_after_secs, "p_limit": config.cron_users })
}

/// The user ids in `edgesync_populate_due`'s answer (rows of `{"user_id": …}`).
pub fn due_users(answer: &Value) -> Vec<String> {
    let rows = answer.as_array().map(Vec::as_slice).unwrap_or_default();
    rows.iter().filter_map(|r| r.get("user_id").and_then(Value::as_str).map(str::to_owned)).collect()
}

pub fn too_large_body(len: usize) -> ApiError {
    ApiError::new(
        413,
        "body_too_large",
        format!("the body is {len} bytes; a populate request is at most {MAX_BODY_BYTES} (split legacy records)"),
    )
}

/// What a call did to rows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counts {
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    /// Not imported on purpose: unmapped labels, rows the user deleted.
    pub skipped: u64,
    /// Could not be imported; each has a reason.
    pub rejected: u64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.inserted += o.inserted;
        self.updated += o.updated;
        self.unchanged += o.unchanged;
        self.skipped += o.skipped;
        self.rejected += o.rejected;
    }

    pub fn changed(&self) -> u64 {
        self.inserted + self.updated
    }
}

/// A row that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    #[serde(rename = "ref")]
    pub reference: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunInfo {
    pub id: String,
    pub mode: String,
    pub resumed: bool,
    /// The source refused the run's cursor or token (410), so it started again fully.
    pub restarted: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct Requests {
    pub source: u32,
    pub database: u32,
}

/// The answer to a Neo4j populate call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub source: &'static str,
    pub user_id: String,
    /// `completed`, or `partial` with a `continuation`.
    pub status: &'static str,
    pub run: RunInfo,
    /// This call.
    pub counts: Counts,
    /// The whole run so far.
    pub run_counts: Counts,
    pub rejected: Vec<Rejection>,
    pub continuation: Option<String>,
    /// A `/sync` whose `checkpoint` is at least this (as integers) has every row this
    /// call wrote, as `/upload`'s `write_checkpoint`.
    pub write_checkpoint: String,
    pub requests: Requests,
    pub elapsed_ms: u64,
}

/// `write_checkpoint` from the answer of a call's last `edgesync_populate_finish`: one
/// past its sync position, which follows every write of the call.
pub fn write_checkpoint(finish: &Value) -> Result<String, ApiError> {
    finish
        .get("checkpoint")
        .and_then(Value::as_str)
        .and_then(|c| c.parse::<u64>().ok())
        .map(|c| c.saturating_add(1).to_string())
        .ok_or_else(|| ApiError::bad_gateway("upstream_bad_response", "the populate answer has no valid checkpoint"))
}

/// Where a run is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    pub phase: Phase,
    pub after: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Nodes,
    Relationships,
    Done,
}

impl Position {
    fn start() -> Position {
        Position { phase: Phase::Nodes, after: None }
    }

    /// The stored cursor; `None` when it cannot be read (then the run starts again).
    pub fn decode(cursor: Option<&str>) -> Option<Position> {
        match cursor {
            None => Some(Position::start()),
            Some(text) => serde_json::from_str(text).ok(),
        }
    }

    fn encode(&self) -> String {
        json!(self).to_string()
    }

    /// The position after a page whose last item is `last`, of `n` items out of `page_size`.
    fn next(&self, last: Option<&str>, n: usize, page_size: u32) -> Position {
        if n < page_size as usize {
            let phase = match self.phase {
                Phase::Nodes => Phase::Relationships,
                _ => Phase::Done,
            };
            Position { phase, after: None }
        } else {
            Position { phase: self.phase, after: last.map(str::to_owned).or_else(|| self.after.clone()) }
        }
    }
}

/// One mapped page: rows per table, and what the Worker refused or skipped itself.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Page {
    pub entities: Vec<Value>,
    pub events: Vec<Value>,
    pub relationships: Vec<Value>,
    pub rejected: Vec<Rejection>,
    pub skipped: u64,
    pub watermark: Option<Value>,
    pub last_id: Option<String>,
    pub items: usize,
}

impl Page {
    fn note_change(&mut self, mapping: &Mapping, props: &Map<String, Value>) {
        if let Some(v) = mapping.changed(props) {
            if self.watermark.as_ref().is_none_or(|w| later(v, w)) {
                self.watermark = Some(v.clone());
            }
        }
    }

    fn reject(&mut self, reference: &str, reason: String) {
        self.rejected.push(Rejection { reference: reference.to_owned(), reason });
    }

    /// Map a page of `NODES_STATEMENT` records.
    pub fn of_nodes(mapping: &Mapping, records: impl Iterator<Item = Map<String, Value>>) -> Page {
        let mut page = Page::default();
        for rec in records {
            page.items += 1;
            let id = rec.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
            let labels = strings(rec.get("labels"));
            let empty = Map::new();
            let props = rec.get("properties").and_then(Value::as_object).unwrap_or(&empty);
            page.note_change(mapping, props);
            match mapping.map_node(&id, &labels, props) {
                Ok(MappedNode::Row { table: Table::SyncEntities, row }) => page.entities.push(row),
                Ok(MappedNode::Row { table: Table::SyncEvents, row }) => page.events.push(row),
                Ok(MappedNode::Unmapped) => page.skipped += 1,
                Err(reason) => page.reject(&id, reason),
            }
            page.last_id = Some(id);
        }
        page
    }

    /// Map a page of `RELS_STATEMENT` records.
    pub fn of_relationships(mapping: &Mapping, records: impl Iterator<Item = Map<String, Value>>) -> Page {
        let mut page = Page::default();
        let empty = Map::new();
        for rec in records {
            page.items += 1;
            let id = rec.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
            let props = rec.get("properties").and_then(Value::as_object).unwrap_or(&empty);
            page.note_change(mapping, props);
            let end = |l: &str, p: &str| {
                mapping.endpoint(&strings(rec.get(l)), rec.get(p).and_then(Value::as_object).unwrap_or(&empty))
            };
            let rel_type = rec.get("type").and_then(Value::as_str).unwrap_or_default();
            match (end("from_labels", "from_properties"), end("to_labels", "to_properties")) {
                (Err(e), _) | (_, Err(e)) => page.reject(&id, format!("an end cannot be identified: {e}")),
                (Ok(None), _) | (_, Ok(None)) => page.skipped += 1,
                _ if rel_type.is_empty() => page.reject(&id, "it has no type".into()),
                _ if crate::object_has_nul(props) => page.reject(&id, mapping::NUL_REASON.into()),
                (Ok(Some(from)), Ok(Some(to))) => page.relationships.push(json!({
                    "ref": id, "type": rel_type,
                    "from_table": from.table.name(), "from_type": from.entity_type, "from_key": from.key,
                    "to_table": to.table.name(), "to_type": to.entity_type, "to_key": to.key,
                    "properties": mapping.relationship_properties(props),
                })),
            }
            page.last_id = Some(id);
        }
        page
    }

    fn rows(&self) -> Value {
        json!({
            "entities": self.entities, "events": self.events, "relationships": self.relationships,
            "rejected": self.rejected.len(), "skipped": self.skipped,
        })
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// What `edgesync_populate_begin` answers.
#[derive(Debug, Clone, Deserialize)]
struct Begun {
    user_id: String,
    run_id: String,
    lease_id: String,
    mode: String,
    cursor: Option<String>,
    since: Option<String>,
    #[serde(default)]
    progress: Value,
    resumed: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Applied {
    counts: Counts,
    rejected: Vec<Rejection>,
    results: Vec<Value>,
}

/// The user a call is for, and with which credentials the database is asked.
pub struct Populate<'a> {
    pub api: &'a DataApi,
    pub caller: Caller<'a>,
    /// The user named in the request (the service role must name one).
    pub user_id: Option<&'a str>,
    pub config: &'a PopulateConfig,
    /// Milliseconds on the runtime's clock.
    pub now_ms: &'a dyn Fn() -> u64,
    /// The runtime's timer (for the Neo4j deadline).
    pub sleep: Sleep<'a>,
}

/// How a call's run ended, for the error answers.
/// A fixed text per code for the client; what Neo4j said (or the error naming
/// NEO4J_URL) goes to the log only.
pub(crate) fn source_error(f: &SourceFailure, continuation: &str) -> ApiError {
    let details = json!({ "continuation": continuation });
    let e = match f {
        SourceFailure::RateLimited { retry_after_secs, .. } => ApiError::new(
            429,
            "source_rate_limited",
            format!(
                "the data source is limiting requests; the run is saved, call again with the continuation after {retry_after_secs} s"
            ),
        )
        .with_details(json!({ "continuation": continuation, "retry_after_secs": retry_after_secs })),
        SourceFailure::Unauthorized { .. } => ApiError::bad_gateway(
            "source_unauthorized",
            "the data source refused the credentials (check NEO4J_USER/NEO4J_PASSWORD or NEO4J_TOKEN); the run is saved",
        )
        .with_details(details),
        SourceFailure::TimedOut { ms, .. } => ApiError::bad_gateway(
            "source_error",
            format!("the data source did not answer within {ms} ms; the run is saved, resume with the continuation"),
        )
        .with_details(details.clone()),
        SourceFailure::Gone { .. } | SourceFailure::Failed { .. } => ApiError::bad_gateway(
            "source_error",
            "the data source failed; the run is saved, resume with the continuation",
        )
        .with_details(details),
    };
    e.with_log_detail(f.message())
}

/// What `sync_state.last_error` keeps of a source failure: a fixed text per kind (the
/// user can read the row; Neo4j's own words are in the log).
fn stored_error(f: &SourceFailure) -> &'static str {
    match f {
        SourceFailure::RateLimited { .. } => "the data source is limiting requests",
        SourceFailure::Unauthorized { .. } => "the data source refused the credentials",
        SourceFailure::TimedOut { .. } => "the data source did not answer in time",
        SourceFailure::Gone { .. } | SourceFailure::Failed { .. } => "the data source failed",
    }
}

impl Populate<'_> {
    fn args(&self, mut v: Value) -> Value {
        if let (Some(u), Some(o)) = (self.user_id, v.as_object_mut()) {
            o.insert("p_user".into(), json!(u));
        }
        v
    }

    /// `function` with `args` (and `p_user`, for the service role).
    async fn rpc(&self, function: &str, args: Value) -> Result<Value, ApiError> {
        Ok(self.api.rpc(self.caller, function, &self.args(args)).await?)
    }

    /// `edgesync_populate_finish` of the run holding `lease`.
    async fn finish(
        &self,
        source: &str,
        lease: &str,
        outcome: &str,
        error: Option<&str>,
        retry: Option<u64>,
    ) -> Result<Value, ApiError> {
        let args = json!({ "p_source": source, "p_lease": lease, "p_outcome": outcome, "p_error": error,
                           "p_retry_after_secs": retry });
        self.rpc(FINISH_RPC, args).await
    }

    /// `edgesync_populate_begin`: the run to write to, and its lease.
    async fn begin(&self, source: &str, run: Option<&str>, mode: Mode) -> Result<Begun, ApiError> {
        let args = json!({ "p_source": source, "p_run": run, "p_mode": mode.as_str(),
                           "p_lease_secs": self.config.lease_secs() });
        serde_json::from_value(self.rpc(BEGIN_RPC, args).await?)
            .map_err(|e| ApiError::bad_gateway("upstream_bad_response", format!("populate_begin: {e}")))
    }

    /// One call of a Neo4j run: resume or start it, write pages until the budget is
    /// spent (`max_subrequests` here, the deadline on the runtime's clock) or the run is
    /// done, and say where it stands.
    pub async fn neo4j(
        &self,
        neo: &Neo4jConfig,
        mapping: &Mapping,
        run: Option<&str>,
        mode: Mode,
        max_pages: Option<u32>,
        max_subrequests: u32,
    ) -> Result<Report, ApiError> {
        let begun = self.begin("neo4j", run, mode).await?;
        let (mut call, mut step) =
            run::NeoRun::start(begun, mapping, self.config, max_pages, max_subrequests, (self.now_ms)());
        loop {
            step = match step {
                run::NeoStep::Done(answer) => return *answer,
                run::NeoStep::Query { statement, params } => {
                    match neo4j::query(neo, statement, params, self.sleep).await {
                        Ok(rows) => call.on_rows(&rows, mapping, (self.now_ms)()),
                        Err(f) => call.on_source_failure(f, (self.now_ms)()),
                    }
                }
                run::NeoStep::Apply { args } => match self.rpc(APPLY_RPC, args).await {
                    Ok(v) => call.on_applied(v, (self.now_ms)()),
                    Err(e) => call.on_apply_failed(e),
                },
                run::NeoStep::Finish { outcome, error, retry_after_secs } => {
                    match self.finish("neo4j", call.lease(), outcome, error.as_deref(), retry_after_secs).await {
                        Ok(v) => call.on_finished(v, (self.now_ms)()),
                        Err(e) => call.on_finish_failed(e),
                    }
                }
            };
        }
    }

    /// A batch of legacy records: checked here, written in chunks, one verdict each
    /// ([`legacy_run`] decides; this only asks the database).
    pub async fn legacy(&self, records: &[Value]) -> Result<Value, ApiError> {
        let started = (self.now_ms)();
        let batch = LegacyBatch::parse(records);
        let begun = self.begin("legacy", None, Mode::Full).await?;
        let (mut call, mut step) = LegacyRun::start(batch, begun, self.config, started);
        loop {
            step = match step {
                LegacyStep::Done(answer) => return *answer,
                LegacyStep::Apply { args, .. } => match self.rpc(APPLY_RPC, args).await {
                    Ok(v) => call.on_applied(v),
                    Err(e) => call.on_apply_failed(e),
                },
                LegacyStep::Finish { outcome, error } => {
                    match self.finish("legacy", call.lease(), outcome, error.as_deref(), None).await {
                        Ok(v) => call.on_finished(v, (self.now_ms)()),
                        Err(e) => call.on_finish_failed(e),
                    }
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_user_populates_their_own_data_and_the_service_role_a_named_users() {
        use crate::auth::Principal;
        let me = Principal::User { user_id: "u1".into() };
        assert_eq!(whose(&me, None).unwrap(), Whose::Own);
        assert_eq!(whose(&me, Some("u1")).unwrap(), Whose::Own);
        let e = whose(&me, Some("u2")).unwrap_err();
        assert_eq!((e.status, e.code), (403, "user_id_mismatch"));
        assert_eq!(whose(&Principal::ServiceRole, Some("u2")).unwrap(), Whose::Named("u2"));
        let e = whose(&Principal::ServiceRole, None).unwrap_err();
        assert_eq!((e.status, e.code), (400, "invalid_request"));
    }

    #[test]
    fn the_cron_takes_users_while_a_run_still_fits_its_budget() {
        let mut b = CronBudget::new(45);
        assert_eq!(b.left(), 44, "one subrequest finds the due users");
        b.spend(&Requests { source: 20, database: 19 });
        assert_eq!(b.left(), 5);
        assert!(b.room_for_a_user());
        b.spend_failed();
        assert_eq!(b.left(), 2);
        assert!(!b.room_for_a_user());
        b.spend(&Requests { source: 9, database: 9 });
        assert_eq!(b.left(), 0, "never below zero");
        assert!(!CronBudget::new(4).room_for_a_user());
        assert!(CronBudget::new(5).room_for_a_user());
    }

    #[test]
    fn the_cron_asks_for_stale_neo4j_users_and_reads_their_ids() {
        let c = PopulateConfig::from_lookup(|_| None).unwrap();
        assert_eq!(due_args(&c), json!({"p_source": "neo4j", "p_stale_after_secs": 21_600, "p_limit": 5}));
        let answer = json!([{"user_id": "u1"}, {"user_id": 7}, {}, {"user_id": "u2", "due": true}]);
        assert_eq!(due_users(&answer), ["u1", "u2"]);
        assert!(due_users(&json!({"user_id": "u1"})).is_empty());
    }

    #[test]
    fn the_write_checkpoint_is_one_past_the_finishing_transaction() {
        assert_eq!(write_checkpoint(&json!({"status": "idle", "checkpoint": "1041"})).unwrap(), "1042");
        for bad in [json!({}), json!({"checkpoint": 1041}), json!({"checkpoint": "x"}), json!(null)] {
            assert_eq!(write_checkpoint(&bad).unwrap_err().code, "upstream_bad_response", "{bad}");
        }
    }

    use super::*;

    #[test]
    fn requests_are_checked() {
        let ok = |b: Value| PopulateRequest::parse(b.to_string().as_bytes()).unwrap();
        let err = |b: &str| PopulateRequest::parse(b.as_bytes()).unwrap_err();
        assert_eq!(
            ok(json!({"source": "neo4j"})),
            PopulateRequest::Neo4j { run: None, mode: Mode::Full, max_pages: None, user_id: None }
        );
        let uid = "0b8a6b66-8b5e-4d40-9d53-0b5a3c1d2e3f";
        assert_eq!(
            ok(json!({"source": "neo4j", "continuation": format!("r1.{uid}"), "max_pages": 3, "user_id": uid})),
            PopulateRequest::Neo4j {
                run: Some(uid.into()),
                mode: Mode::Full,
                max_pages: Some(3),
                user_id: Some(uid.into())
            }
        );
        assert_eq!(
            ok(json!({"source": "legacy", "records": []})),
            PopulateRequest::Legacy { records: vec![], user_id: None }
        );
        let cases = [
            ("", "invalid_request"),
            ("[]", "invalid_request"),
            (r#"{"source":"mysql"}"#, "invalid_request"),
            (r#"{"source":"neo4j","extra":1}"#, "invalid_request"),
            (r#"{"source":"neo4j","continuation":"abc"}"#, "invalid_continuation"),
            (r#"{"source":"neo4j","continuation":"r1.not-a-uuid"}"#, "invalid_continuation"),
            (r#"{"source":"neo4j","mode":"sideways"}"#, "invalid_request"),
            (r#"{"source":"neo4j","max_pages":0}"#, "invalid_request"),
            (r#"{"source":"neo4j","user_id":"me"}"#, "invalid_request"),
            (r#"{"source":"neo4j","records":[]}"#, "invalid_request"),
            (r#"{"source":"legacy"}"#, "invalid_request"),
            (r#"{"source":"legacy","records":{}}"#, "invalid_request"),
            (r#"{"source":"legacy","records":[],"mode":"full"}"#, "invalid_request"),
        ];
        for (body, code) in cases {
            let e = err(body);
            assert_eq!((e.status, e.code), (400, code), "{body}: {}", e.message);
        }
        let many = json!({"source": "legacy", "records": vec![json!({}); MAX_RECORDS + 1]});
        let e = PopulateRequest::parse(many.to_string().as_bytes()).unwrap_err();
        assert_eq!((e.status, e.code), (413, "too_many_records"));
    }

    #[test]
    fn settings_have_defaults_and_bounds() {
        let c = PopulateConfig::from_lookup(|_| None).unwrap();
        assert_eq!((c.page_size, c.max_subrequests, c.time_budget_ms, c.cron_users), (1000, 45, 20_000, 5));
        assert_eq!(c.lease_secs(), 50);
        let e = PopulateConfig::from_lookup(|k| (k == "POPULATE_PAGE_SIZE").then(|| "0".into())).unwrap_err();
        assert_eq!(e.setting, "POPULATE_PAGE_SIZE");
    }

    #[test]
    fn positions_move_through_nodes_then_relationships() {
        let p = Position::start();
        let full = p.next(Some("4:a:9"), 10, 10);
        assert_eq!(full, Position { phase: Phase::Nodes, after: Some("4:a:9".into()) });
        let short = full.next(Some("4:a:12"), 3, 10);
        assert_eq!(short, Position { phase: Phase::Relationships, after: None });
        assert_eq!(short.next(None, 0, 10).phase, Phase::Done);
        assert_eq!(Position::decode(Some(&full.encode())), Some(full));
        assert_eq!(Position::decode(None), Some(Position::start()));
        assert_eq!(Position::decode(Some("{\"phase\":\"sideways\"}")), None);
        assert_eq!(Position::decode(Some("garbage")), None);
    }

    fn rec(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn a_page_of_nodes_is_split_by_table_with_reasons_and_a_watermark() {
        let m = Mapping::default_mapping();
        let page = Page::of_nodes(
            &m,
            vec![
                rec(json!({"id": "4:s:1", "labels": ["Person"], "properties": {"user_id": "u", "email": "a@x", "updated_at": 5}})),
                rec(json!({"id": "4:s:2", "labels": ["Event"], "properties": {"user_id": "u", "google_event_id": "g", "updated_at": 9}})),
                rec(json!({"id": "4:s:3", "labels": ["Draft"], "properties": {"user_id": "u", "updated_at": 7}})),
                rec(json!({"id": "4:s:4", "labels": ["Person"], "properties": {"user_id": "u"}})),
            ]
            .into_iter(),
        );
        assert_eq!((page.entities.len(), page.events.len(), page.skipped, page.items), (1, 1, 1, 4));
        assert_eq!(page.rejected[0].reference, "4:s:4");
        assert_eq!(page.watermark, Some(json!(9)));
        assert_eq!(page.last_id.as_deref(), Some("4:s:4"));
        assert_eq!(page.rows()["rejected"], 1);
    }

    #[test]
    fn a_page_of_relationships_names_its_ends_by_natural_key() {
        let m = Mapping::default_mapping();
        let page = Page::of_relationships(
            &m,
            vec![
                rec(json!({"id": "5:s:1", "type": "ATTENDED", "properties": {"user_id": "u", "weight": 1},
                    "from_labels": ["Person"], "from_properties": {"email": "a@x"},
                    "to_labels": ["Event"], "to_properties": {"google_event_id": "g"}})),
                rec(json!({"id": "5:s:2", "type": "ABOUT", "properties": {},
                    "from_labels": ["Draft"], "from_properties": {}, "to_labels": ["Concept"], "to_properties": {"name": "c"}})),
                rec(json!({"id": "5:s:3", "type": "KNOWS", "properties": {},
                    "from_labels": ["Person"], "from_properties": {}, "to_labels": ["Person"], "to_properties": {"email": "b"}})),
            ]
            .into_iter(),
        );
        assert_eq!(
            page.relationships,
            vec![json!({"ref": "5:s:1", "type": "ATTENDED", "from_table": "sync_entities", "from_type": "person",
                "from_key": "a@x", "to_table": "sync_events", "to_type": null, "to_key": "g", "properties": {"weight": 1}})]
        );
        assert_eq!(page.skipped, 1);
        assert!(page.rejected[0].reason.contains("an end cannot be identified"), "{:?}", page.rejected);
    }

    #[test]
    fn source_failures_keep_the_continuation() {
        let e = source_error(&SourceFailure::RateLimited { retry_after_secs: 3, message: "m".into() }, "r1.x");
        assert_eq!((e.status, e.code), (429, "source_rate_limited"));
        assert_eq!(e.details.unwrap()["retry_after_secs"], 3);
        let e = source_error(
            &SourceFailure::Unauthorized { status: 401, message: "Neo4j answered HTTP 401".into() },
            "r1.x",
        );
        assert_eq!((e.status, e.code), (502, "source_unauthorized"));
        assert!(e.message.contains("NEO4J_USER"));
        let e = source_error(&SourceFailure::Failed { status: Some(500), message: "boom".into() }, "r1.x");
        assert_eq!(
            (e.status, e.code, e.details.unwrap()["continuation"].as_str()),
            (502, "source_error", Some("r1.x"))
        );
    }
}
