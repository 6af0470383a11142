//! The edgesync reference client: a local SQLite store, an outbox of PowerSync-shaped
//! mutations, and a sync engine that speaks `/upload` and `/sync`.
//!
//! ```no_run
//! use edgesync_client::{Client, Config};
//! let mut c = Client::open("app.db".as_ref(), Config::new("http://127.0.0.1:8787")).unwrap();
//! c.set_token("<a Supabase access token>").unwrap();
//! let id = edgesync_client::store::random_uuid();
//! c.put("entries", &id, serde_json::json!({ "title": "offline is fine" })).unwrap(); // local only
//! c.sync().ok(); // push the outbox, then pull until caught up; errors leave everything queued
//! ```
//!
//! Guarantees, each backed by a test (`client/src/*` unit tests, the protocol scenarios
//! of `tests/conformance/` run by `client/tests/conformance.rs`, `tests/client.rs`,
//! `tests/convergence.rs`):
//! - a local write and its outbox entry commit together; reads never need the network;
//! - an outbox entry leaves only after `/upload` acknowledged it (and stays, as
//!   *acknowledged*, until a pull reached its write checkpoint, so the app never sees a
//!   server version older than its own write);
//! - retries are safe: `op_id` is the server's idempotency key;
//! - a page and its cursor are applied in one local transaction;
//! - `410 resync_required` rebuilds the local copy without touching the outbox.

pub mod live;
pub use live::{Live, LiveEvent};
pub mod store;

use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
pub use store::{Ack, Counts, Mutation, Op, OutboxEntry, Page, Rejection, Store, StoreError};

/// Engine settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// The functions' base URL (`cargo xtask dev`: `http://127.0.0.1:8787`).
    pub url: String,
    /// Mutations per `/upload` (the server takes at most 1000).
    pub batch_size: usize,
    /// Rows per `/sync` page (at most 5000).
    pub page_limit: u32,
    /// Tables to pull (`None`: every synced table).
    pub tables: Option<Vec<String>>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// First and longest wait after a failed exchange (exponential, with jitter).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Extra request headers (a test's device tag, an `apikey`).
    pub headers: Vec<(String, String)>,
    /// Where the `/live` WebSocket is, when not at `url` (an HTTP-only proxy in front).
    pub live_url: Option<String>,
    /// The engine's clock, for backoff deadlines (`Instant::now`; a test can freeze it).
    pub now: fn() -> Instant,
}

impl Config {
    pub fn new(url: &str) -> Config {
        Config {
            url: url.trim_end_matches('/').to_owned(),
            batch_size: 200,
            page_limit: 1000,
            tables: None,
            timeout: Duration::from_secs(30),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            headers: Vec::new(),
            live_url: None,
            now: Instant::now,
        }
    }
}

/// What the engine is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Idle,
    Pushing,
    Pulling,
    /// The last exchange failed for a reason other than the network.
    Error,
    /// The last exchange could not reach the server.
    Offline,
}

/// `status()`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Status {
    pub state: State,
    pub last_pull_at_ms: Option<i64>,
    pub last_push_at_ms: Option<i64>,
    /// Mutations not yet acknowledged by the server.
    pub outbox_len: u64,
    /// Acknowledged mutations a pull has not caught up with yet.
    pub awaiting_checkpoint: u64,
    pub rejected: u64,
    pub conflicts: u64,
    pub checkpoint: u64,
    pub resyncing: bool,
    pub last_error: Option<String>,
    /// When the engine will try the network again (after a failure).
    pub retry_in_ms: Option<u64>,
    pub client_id: String,
    pub user_id: Option<String>,
}

/// An HTTP error answer from the functions.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub details: Value,
    pub request_id: Option<String>,
    pub retry_after: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Error {
    /// The local store failed or the app's input was invalid.
    Local(StoreError),
    /// No token: call `set_token` (the CLI: `login`).
    NoToken,
    /// The server could not be reached (connection refused, reset, timeout).
    Offline(String),
    /// The server answered with an error that is not about particular mutations.
    Http(Box<HttpError>),
    /// The server answered something this client cannot use.
    Protocol(String),
    /// A page carried a row of another user; nothing of it was applied.
    ForeignRow { table: String, id: String },
    /// The engine is waiting after a failure; try again later.
    BackingOff(Duration),
    /// The token refresh callback failed.
    Refresh(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Local(e) => write!(f, "{e}"),
            Error::NoToken => write!(f, "no token: log in first"),
            Error::Offline(m) => write!(f, "offline: {m}"),
            Error::Http(h) => write!(
                f,
                "{} {}: {}{}",
                h.status,
                h.code,
                h.message,
                h.request_id.as_deref().map(|r| format!(" (request {r})")).unwrap_or_default()
            ),
            Error::Protocol(m) => write!(f, "unexpected answer: {m}"),
            Error::ForeignRow { table, id } => write!(f, "the server sent another user's row {table}/{id}"),
            Error::BackingOff(d) => write!(f, "waiting {} ms after a failure", d.as_millis()),
            Error::Refresh(m) => write!(f, "token refresh failed: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Local(e)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// What one `push_outbox` did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PushReport {
    pub requests: u32,
    /// Every acknowledgement, in order (applied, duplicate, conflict).
    pub acks: Vec<Ack>,
    pub rejected: Vec<Rejection>,
    pub token_refreshes: u32,
}

/// Progress of a pull, after each page.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PullProgress {
    pub pages: u32,
    pub upserted: usize,
    pub deleted: usize,
    pub settled: usize,
    pub checkpoint: u64,
    pub has_more: bool,
    pub resynced: bool,
}

/// What one `sync` did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncReport {
    pub push: PushReport,
    pub pull: PullProgress,
}

/// Produces a fresh token when the server says the current one is no longer good.
pub type TokenRefresh = Box<dyn FnMut() -> std::result::Result<String, String> + Send>;

/// Codes of error answers that are about the request as a whole, not about the
/// mutations in it: the batch stays queued and the engine backs off.
const NOT_ABOUT_MUTATIONS: &[&str] = &[
    "client_id_taken",
    "user_required",
    "missing_token",
    "invalid_token",
    "forbidden",
    "forbidden_role",
    "unsupported_media_type",
    "rate_limited",
    "misconfigured",
    "not_found",
    "method_not_allowed",
];

pub struct Client {
    store: Store,
    cfg: Config,
    agent: ureq::Agent,
    token: Option<String>,
    refresh: Option<TokenRefresh>,
    state: Arc<Mutex<(State, Option<String>)>>,
    failures: u32,
    retry_at: Option<Instant>,
    jitter: u64,
    last_push: PushReport,
    /// Set by `pull_waiting`: the first page's `wait`.
    pull_wait: Option<u32>,
}

impl Client {
    /// Open (or create) the local database at `path`. No network.
    pub fn open(path: &Path, cfg: Config) -> Result<Client> {
        Client::with_store(Store::open(path)?, cfg)
    }

    pub fn with_store(store: Store, cfg: Config) -> Result<Client> {
        let agent = ureq::AgentBuilder::new().timeout(cfg.timeout).build();
        let token = store.meta("token")?;
        let mut seed = [0u8; 8];
        getrandom::getrandom(&mut seed).map_err(|e| Error::Protocol(e.to_string()))?;
        Ok(Client {
            store,
            cfg,
            agent,
            token,
            refresh: None,
            state: Arc::new(Mutex::new((State::Idle, None))),
            failures: 0,
            retry_at: None,
            jitter: u64::from_le_bytes(seed) | 1,
            last_push: PushReport::default(),
            pull_wait: None,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Use `token` from now on (kept in the local database). A database belongs to one
    /// user: a token of another user is refused.
    pub fn set_token(&mut self, token: &str) -> Result<()> {
        let sub = token_subject(token)
            .ok_or_else(|| Error::Local(StoreError::Invalid("the token is not a JWT with a `sub` claim".into())))?;
        match self.store.user_id()? {
            Some(owner) if owner != sub => {
                return Err(Error::Local(StoreError::Invalid(format!(
                    "this local database belongs to user {owner}, the token is user {sub}'s: use another database"
                ))))
            }
            Some(_) => {}
            None => self.store.set_meta("user_id", &sub)?,
        }
        self.store.set_meta("token", token)?;
        self.token = Some(token.to_owned());
        Ok(())
    }

    /// Called on a 401 to get a fresh token; the request is retried once with it.
    pub fn on_token_refresh(&mut self, refresh: TokenRefresh) {
        self.refresh = Some(refresh);
    }

    /// A handle that reads the engine's state from another thread (a UI).
    pub fn state_handle(&self) -> Arc<Mutex<(State, Option<String>)>> {
        self.state.clone()
    }

    // ---- local, never touching the network ----

    /// Write locally and queue the change, in one local transaction. Returns its op_id.
    pub fn queue_mutation(&mut self, m: Mutation) -> Result<i64> {
        Ok(self.store.queue(&m)?)
    }

    pub fn put(&mut self, table: &str, id: &str, data: Value) -> Result<i64> {
        self.queue_mutation(Mutation { table: table.into(), op: Op::Put, id: id.into(), data: Some(object(data)?) })
    }

    pub fn patch(&mut self, table: &str, id: &str, data: Value) -> Result<i64> {
        self.queue_mutation(Mutation { table: table.into(), op: Op::Patch, id: id.into(), data: Some(object(data)?) })
    }

    pub fn delete(&mut self, table: &str, id: &str) -> Result<i64> {
        self.queue_mutation(Mutation { table: table.into(), op: Op::Delete, id: id.into(), data: None })
    }

    pub fn get(&self, table: &str, id: &str) -> Result<Option<Value>> {
        Ok(self.store.get(table, id)?)
    }

    pub fn list(&self, table: &str) -> Result<Vec<Value>> {
        Ok(self.store.list(table)?)
    }

    pub fn status(&self) -> Result<Status> {
        let counts = self.store.counts()?;
        let (state, last_error) = self.state.lock().map(|s| s.clone()).unwrap_or((State::Error, None));
        Ok(Status {
            state,
            last_pull_at_ms: self.store.meta_i64("last_pull_at")?,
            last_push_at_ms: self.store.meta_i64("last_push_at")?,
            outbox_len: counts.outbox,
            awaiting_checkpoint: counts.awaiting_checkpoint,
            rejected: counts.rejected,
            conflicts: counts.conflicts,
            checkpoint: self.store.checkpoint()?,
            resyncing: self.store.resyncing()?,
            last_error,
            retry_in_ms: self.retry_at.map(|t| t.saturating_duration_since((self.cfg.now)()).as_millis() as u64),
            client_id: self.store.client_id()?,
            user_id: self.store.user_id()?,
        })
    }

    /// How long until the engine will use the network again (zero: now).
    pub fn retry_in(&self) -> Duration {
        self.retry_at.map(|t| t.saturating_duration_since((self.cfg.now)())).unwrap_or_default()
    }

    /// Forget the backoff (the app learned that the network is back).
    pub fn reset_backoff(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }

    // ---- network ----

    /// Push, then pull until caught up.
    pub fn sync(&mut self) -> Result<SyncReport> {
        self.sync_with(&mut |_| {})
    }

    pub fn sync_with(&mut self, progress: &mut dyn FnMut(&PullProgress)) -> Result<SyncReport> {
        let push = self.push_outbox()?;
        let pull = self.pull_delta_with(progress)?;
        Ok(SyncReport { push, pull })
    }

    /// Send the outbox to `/upload` in batches until it is empty.
    ///
    /// - acknowledged entries (applied, duplicate) stay as *acknowledged* until a pull
    ///   reaches the answer's `write_checkpoint`; `conflict` entries (the server kept
    ///   its row) leave the outbox and are logged;
    /// - `401`: the token is refreshed through the callback and the batch retried once;
    /// - a `4xx` naming op_ids: those entries move to the rejected log, the rest is sent
    ///   again; a `413` or a `400` naming nothing is narrowed down by halving the batch
    ///   until the one entry at fault is rejected;
    /// - `5xx`, `429`, network errors and account-level `4xx`: everything stays queued
    ///   and the engine backs off.
    pub fn push_outbox(&mut self) -> Result<PushReport> {
        self.last_push = PushReport::default();
        self.ready()?;
        self.set_state(State::Pushing, None);
        let mut report = PushReport::default();
        let result = self.push_inner(&mut report);
        self.finish(&result);
        self.last_push = report.clone();
        result.map(|()| report)
    }

    /// What the last `push_outbox` did, including the batches acknowledged before it
    /// failed (an error return carries no report).
    pub fn last_push(&self) -> &PushReport {
        &self.last_push
    }

    fn push_inner(&mut self, report: &mut PushReport) -> Result<()> {
        let client_id = self.store.client_id()?;
        let mut batch_size = self.cfg.batch_size.clamp(1, edgesync_shared::upload::MAX_MUTATIONS);
        loop {
            let batch = self.store.pending(batch_size)?;
            if batch.is_empty() {
                return Ok(());
            }
            let body = json!({
                "client_id": client_id,
                "mutations": batch.iter().map(OutboxEntry::to_crud_entry).collect::<Vec<_>>(),
            });
            report.requests += 1;
            match self.request("POST", "/upload", Some(&body), &mut report.token_refreshes) {
                Ok(answer) => {
                    let (acks, write_checkpoint) = parse_upload(&answer)?;
                    self.store.record_acks(&acks, write_checkpoint)?;
                    report.acks.extend(acks);
                    batch_size = self.cfg.batch_size.clamp(1, edgesync_shared::upload::MAX_MUTATIONS);
                }
                Err(Error::Http(h))
                    if (400..500).contains(&h.status) && !NOT_ABOUT_MUTATIONS.contains(&h.code.as_str()) =>
                {
                    let named = named_op_ids(&h, &batch);
                    if !named.is_empty() {
                        report.rejected.extend(self.store.reject(&named)?);
                    } else if batch.len() > 1 && matches!(h.status, 400 | 413 | 422) {
                        batch_size = (batch.len() / 2).max(1);
                    } else if batch.len() == 1 && matches!(h.status, 400 | 413 | 422) {
                        // This one entry is what the server refuses (or too big to send).
                        let one = vec![(batch[0].op_id, h.code.clone(), h.message.clone())];
                        report.rejected.extend(self.store.reject(&one)?);
                    } else {
                        return Err(self.keep(&batch, Error::Http(h)));
                    }
                }
                Err(e) => return Err(self.keep(&batch, e)),
            }
        }
    }

    /// Note the failure on the batch (it stays queued) and pass the error on.
    fn keep(&mut self, batch: &[OutboxEntry], e: Error) -> Error {
        let ids: Vec<i64> = batch.iter().map(|b| b.op_id).collect();
        match self.store.note_attempt(&ids, &e.to_string()) {
            Ok(()) => e,
            Err(local) => Error::Local(local),
        }
    }

    /// Pull `/sync` pages until `has_more` is false.
    pub fn pull_delta(&mut self) -> Result<PullProgress> {
        self.pull_delta_with(&mut |_| {})
    }

    /// As `pull_delta`, calling `progress` after each applied page.
    pub fn pull_delta_with(&mut self, progress: &mut dyn FnMut(&PullProgress)) -> Result<PullProgress> {
        self.ready()?;
        self.set_state(State::Pulling, None);
        let mut p = PullProgress::default();
        let result = self.pull_inner(&mut p, progress);
        self.finish(&result);
        result.map(|()| p)
    }

    fn pull_inner(&mut self, p: &mut PullProgress, progress: &mut dyn FnMut(&PullProgress)) -> Result<()> {
        let mut refreshes = 0;
        let mut resyncs = 0;
        let user = self.store.user_id()?;
        // Only the first request may wait, and only with a cursor: an up-to-date device.
        let mut first_wait = self.pull_wait.take();
        loop {
            let wait = first_wait.take();
            let mut path = format!("/sync?limit={}", self.cfg.page_limit);
            if let Some(t) = &self.cfg.tables {
                path.push_str(&format!("&tables={}", t.join(",")));
            }
            if let Some(c) = self.store.cursor()? {
                path.push_str(&format!("&since={c}"));
                if let Some(w) = wait {
                    path.push_str(&format!("&wait={w}"));
                }
            }
            let answer = match self.request("GET", &path, None, &mut refreshes) {
                Ok(a) => a,
                // Our cursor predates the tombstone window, or no longer fits the
                // tables asked for: rebuild from scratch (the outbox stays).
                Err(Error::Http(h))
                    if resyncs < 2
                        && (h.status == 410 && h.code == "resync_required"
                            || h.status == 400 && matches!(h.code.as_str(), "cursor_mismatch" | "invalid_cursor")) =>
                {
                    resyncs += 1;
                    self.store.begin_resync()?;
                    p.resynced = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let page = parse_page(&answer)?;
            if let Some(user) = &user {
                for (table, rows, _) in &page.changes {
                    for row in rows {
                        if row.get("user_id").and_then(Value::as_str).is_some_and(|u| u != user) {
                            let id = row.get("id").and_then(Value::as_str).unwrap_or("?").to_owned();
                            return Err(Error::ForeignRow { table: table.clone(), id });
                        }
                    }
                }
            }
            let applied = self.store.apply_page(&page)?;
            p.pages += 1;
            p.upserted += applied.upserted;
            p.deleted += applied.deleted;
            p.settled += applied.settled;
            p.checkpoint = page.checkpoint;
            p.has_more = page.has_more;
            progress(p);
            if !page.has_more {
                return Ok(());
            }
        }
    }

    /// Refuse to use the network while backing off.
    fn ready(&self) -> Result<()> {
        let wait = self.retry_in();
        if wait.is_zero() {
            Ok(())
        } else {
            Err(Error::BackingOff(wait))
        }
    }

    fn set_state(&self, state: State, error: Option<String>) {
        if let Ok(mut s) = self.state.lock() {
            *s = (state, error);
        }
    }

    /// After an exchange: the state, and the backoff (reset on success, grown on
    /// failure; a server's `Retry-After` is honoured).
    fn finish<T>(&mut self, result: &Result<T>) {
        match result {
            Ok(_) => {
                self.failures = 0;
                self.retry_at = None;
                self.set_state(State::Idle, None);
            }
            Err(e) => {
                let state = if matches!(e, Error::Offline(_)) { State::Offline } else { State::Error };
                self.set_state(state, Some(e.to_string()));
                if matches!(e, Error::Local(_) | Error::NoToken | Error::BackingOff(_)) {
                    return;
                }
                self.failures = self.failures.saturating_add(1);
                let exp = self.cfg.backoff_base.saturating_mul(1 << self.failures.min(16).saturating_sub(1));
                let mut wait = exp.min(self.cfg.backoff_max);
                // Jitter: between half and all of the wait, so devices spread out.
                self.jitter ^= self.jitter << 13;
                self.jitter ^= self.jitter >> 7;
                self.jitter ^= self.jitter << 17;
                wait = wait / 2 + wait.mul_f64((self.jitter % 1000) as f64 / 2000.0);
                if let Some(ra) = match e {
                    Error::Http(h) => h.retry_after,
                    _ => None,
                } {
                    wait = wait.max(ra.min(self.cfg.backoff_max.max(Duration::from_secs(1))));
                }
                self.retry_at = Some((self.cfg.now)() + wait);
            }
        }
    }

    /// One HTTP exchange with the functions; a 401 refreshes the token (through the
    /// callback) and retries once.
    fn request(&mut self, method: &str, path: &str, body: Option<&Value>, refreshes: &mut u32) -> Result<Value> {
        let mut refreshed = false;
        loop {
            let token = self.token.clone().ok_or(Error::NoToken)?;
            let mut req = self.agent.request(method, &format!("{}{path}", self.cfg.url));
            req = req.set("authorization", &format!("Bearer {token}"));
            for (k, v) in &self.cfg.headers {
                req = req.set(k, v);
            }
            let res = match body {
                Some(b) => req.set("content-type", "application/json").send_string(&b.to_string()),
                None => req.call(),
            };
            match res {
                Ok(resp) => {
                    let text = resp.into_string().map_err(|e| Error::Offline(format!("reading the answer: {e}")))?;
                    return serde_json::from_str(&text)
                        .map_err(|e| Error::Protocol(format!("{method} {path}: the answer is not JSON: {e}")));
                }
                Err(ureq::Error::Status(status, resp)) => {
                    let err = http_error(status, resp);
                    if status == 401 && !refreshed {
                        if let Some(refresh) = self.refresh.as_mut() {
                            let fresh = refresh().map_err(Error::Refresh)?;
                            self.set_token(&fresh)?;
                            refreshed = true;
                            *refreshes += 1;
                            continue;
                        }
                    }
                    return Err(Error::Http(Box::new(err)));
                }
                Err(ureq::Error::Transport(t)) => return Err(Error::Offline(t.to_string())),
            }
        }
    }
}

fn object(data: Value) -> Result<serde_json::Map<String, Value>> {
    match data {
        Value::Object(m) => Ok(m),
        other => Err(Error::Local(StoreError::Invalid(format!("a row must be a JSON object, not {other}")))),
    }
}

fn http_error(status: u16, resp: ureq::Response) -> HttpError {
    let request_id = resp.header("x-request-id").map(str::to_owned);
    let retry_after = resp.header("retry-after").and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs);
    let text = resp.into_string().unwrap_or_default();
    let mut err = http_error_from(status, &text);
    // The header's request id, else the body's.
    err.request_id = request_id.or(err.request_id);
    err.retry_after = retry_after;
    err
}

/// An error answer's status and body as an `HttpError` (no headers).
fn http_error_from(status: u16, text: &str) -> HttpError {
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let err = &body["error"];
    HttpError {
        status,
        code: err["code"].as_str().unwrap_or("http_error").to_owned(),
        message: err["message"].as_str().map(str::to_owned).unwrap_or_else(|| text.chars().take(200).collect()),
        details: err["details"].clone(),
        request_id: err["request_id"].as_str().map(str::to_owned),
        retry_after: None,
    }
}

/// The op_ids an error answer names (`details.errors[].op_id`) that are in `batch`,
/// with their code and message.
fn named_op_ids(h: &HttpError, batch: &[OutboxEntry]) -> Vec<(i64, String, String)> {
    let mut out: Vec<(i64, String, String)> = Vec::new();
    for e in h.details["errors"].as_array().into_iter().flatten() {
        let Some(op_id) = e["op_id"].as_i64() else { continue };
        if batch.iter().any(|b| b.op_id == op_id) && !out.iter().any(|o| o.0 == op_id) {
            let code = e["code"].as_str().unwrap_or(&h.code).to_owned();
            let mut message = e["message"].as_str().unwrap_or(&h.message).to_owned();
            if let Some(col) = e["column"].as_str() {
                message = format!("{message} (column {col})");
            }
            out.push((op_id, code, message));
        }
    }
    out
}

/// `/upload`'s answer: the acknowledgements and the write checkpoint.
pub fn parse_upload(answer: &Value) -> Result<(Vec<Ack>, u64)> {
    let bad = |what: &str| Error::Protocol(format!("/upload answer without a valid {what}"));
    let wc = answer["write_checkpoint"].as_str().and_then(|s| s.parse().ok()).ok_or_else(|| bad("write_checkpoint"))?;
    let mut acks = Vec::new();
    for r in answer["results"].as_array().ok_or_else(|| bad("results"))? {
        let op_id = r["op_id"].as_i64().ok_or_else(|| bad("op_id"))?;
        let status = r["status"].as_str().ok_or_else(|| bad("status"))?;
        if !matches!(status, "applied" | "duplicate" | "conflict") {
            return Err(bad("status"));
        }
        acks.push(Ack {
            op_id,
            status: status.to_owned(),
            conflict: r["conflict"].as_bool().unwrap_or(false),
            reason: r["reason"].as_str().map(str::to_owned),
            server_row: r.get("server_row").filter(|v| !v.is_null()).cloned(),
        });
    }
    Ok((acks, wc))
}

/// A `/sync` page. Every table name must be one the store can mirror and every
/// upserted row an object with a string `id`: anything else breaks the protocol.
pub fn parse_page(answer: &Value) -> Result<Page> {
    let bad = |what: &str| Error::Protocol(format!("/sync answer without a valid {what}"));
    let mut changes = Vec::new();
    for (table, change) in answer["changes"].as_object().ok_or_else(|| bad("changes"))? {
        if !store::valid_local_table(table) {
            return Err(bad(&format!("table name ({:?})", table.chars().take(70).collect::<String>())));
        }
        let upserted = change["upserted"].as_array().ok_or_else(|| bad("upserted"))?.clone();
        if upserted.iter().any(|row| !row["id"].is_string()) {
            return Err(bad(&format!("row of {table}")));
        }
        let deleted = change["deleted"]
            .as_array()
            .ok_or_else(|| bad("deleted"))?
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| bad("deleted id")))
            .collect::<Result<Vec<_>>>()?;
        changes.push((table.clone(), upserted, deleted));
    }
    Ok(Page {
        changes,
        cursor: answer["cursor"].as_str().ok_or_else(|| bad("cursor"))?.to_owned(),
        has_more: answer["has_more"].as_bool().ok_or_else(|| bad("has_more"))?,
        checkpoint: answer["checkpoint"].as_str().and_then(|s| s.parse().ok()).ok_or_else(|| bad("checkpoint"))?,
    })
}

/// The `sub` claim of a JWT, read without verifying it (the server verifies; the
/// client only needs to know whose data it holds).
pub fn token_subject(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims["sub"].as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_answers_are_read_strictly() {
        let (acks, wc) = parse_upload(&json!({
            "results": [{"op_id": 1, "status": "applied"},
                        {"op_id": 2, "status": "applied", "conflict": true, "server_row": {"id": "x"}},
                        {"op_id": 3, "status": "conflict", "reason": "row_missing", "server_row": null}],
            "last_op_id": 3, "write_checkpoint": "77"}))
        .unwrap();
        assert_eq!(wc, 77);
        assert_eq!(
            acks[1],
            Ack {
                op_id: 2,
                status: "applied".into(),
                conflict: true,
                reason: None,
                server_row: Some(json!({"id": "x"}))
            }
        );
        assert_eq!(acks[2].reason.as_deref(), Some("row_missing"));
        for bad in [
            json!({"results": [], "write_checkpoint": 5}),
            json!({"results": [{"op_id": 1, "status": "maybe"}], "write_checkpoint": "5"}),
            json!({"write_checkpoint": "5"}),
        ] {
            assert!(matches!(parse_upload(&bad), Err(Error::Protocol(_))), "{bad}");
        }
    }

    #[test]
    fn pages_are_read_strictly() {
        let p = parse_page(&json!({"changes": {"entries": {"upserted": [{"id": "a"}], "deleted": ["b"]}},
                                   "cursor": "c", "has_more": true, "checkpoint": "9"}))
        .unwrap();
        assert_eq!(p.changes, vec![("entries".to_owned(), vec![json!({"id": "a"})], vec!["b".to_owned()])]);
        assert!(p.has_more);
        assert_eq!(p.checkpoint, 9);
        assert!(parse_page(&json!({"changes": {"entries": {"upserted": [], "deleted": [1]}}, "cursor": "c",
                                   "has_more": false, "checkpoint": "9"}))
        .is_err());
        assert!(parse_page(&json!({"changes": {}, "cursor": "c", "has_more": false})).is_err());
        // A table the store cannot mirror, or a row without a string id, breaks the protocol.
        for changes in [
            json!({"_es_meta": {"upserted": [], "deleted": []}}),
            json!({"Entries; drop": {"upserted": [], "deleted": []}}),
            json!({"entries": {"upserted": [{"title": "no id"}], "deleted": []}}),
            json!({"entries": {"upserted": [{"id": 7}], "deleted": []}}),
            json!({"entries": {"upserted": ["a"], "deleted": []}}),
        ] {
            let page = json!({"changes": changes, "cursor": "c", "has_more": false, "checkpoint": "9"});
            assert!(matches!(parse_page(&page), Err(Error::Protocol(_))), "{page}");
        }
    }

    #[test]
    fn errors_that_name_op_ids_reject_only_those_in_the_batch() {
        let batch: Vec<OutboxEntry> = (1..=3)
            .map(|op_id| OutboxEntry {
                op_id,
                table: "t".into(),
                op: Op::Put,
                id: "i".into(),
                data: None,
                base_cursor: None,
            })
            .collect();
        let h = HttpError {
            status: 400,
            code: "invalid_mutations".into(),
            message: "bad".into(),
            details: json!({"errors": [{"op_id": 2, "code": "unknown_column", "message": "no", "column": "x"},
                                       {"op_id": 2, "code": "again", "message": "dup"},
                                       {"op_id": 9, "code": "elsewhere", "message": "not ours"}]}),
            request_id: None,
            retry_after: None,
        };
        assert_eq!(named_op_ids(&h, &batch), vec![(2, "unknown_column".to_owned(), "no (column x)".to_owned())]);
    }

    #[test]
    fn the_token_subject_is_read_without_verification() {
        use base64::Engine;
        let enc = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let t = format!("{}.{}.sig", enc(json!({"alg": "HS256"})), enc(json!({"sub": "u1"})));
        assert_eq!(token_subject(&t).as_deref(), Some("u1"));
        assert_eq!(token_subject("garbage"), None);
        assert_eq!(token_subject(&format!("h.{}.s", enc(json!({"sub": ""})))), None);
    }

    #[test]
    fn local_work_needs_no_network_and_network_failures_back_off() {
        let mut cfg = Config::new("http://127.0.0.1:9"); // discard port: nothing listens
        cfg.timeout = Duration::from_secs(2);
        cfg.backoff_base = Duration::from_secs(30);
        let mut c = Client::with_store(Store::open_in_memory().unwrap(), cfg).unwrap();
        let id = store::random_uuid();
        c.put("entries", &id, json!({"title": "offline"})).unwrap();
        assert_eq!(c.push_outbox(), Err(Error::NoToken));
        let t = format!(
            "e30.{}.s",
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, r#"{"sub":"u"}"#)
        );
        c.set_token(&t).unwrap();
        assert_eq!(c.get("entries", &id).unwrap().unwrap()["title"], "offline");
        assert!(matches!(c.sync(), Err(Error::Offline(_))));
        let s = c.status().unwrap();
        assert_eq!(s.state, State::Offline);
        assert_eq!(s.outbox_len, 1);
        assert!(s.retry_in_ms.unwrap() > 10_000, "{s:?}");
        assert!(matches!(c.sync(), Err(Error::BackingOff(_))));
        assert!(c.set_token(&t.replace("eyJzdWIiOiJ1In0", "eyJzdWIiOiJ2In0")).is_err(), "another user's token");
    }
}
