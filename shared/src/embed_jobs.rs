//! Draining embedding jobs: claim due jobs (with each entry's current content), skip
//! the ones whose stored hash is already current, embed the rest in one request per
//! batch, write the vectors back and finish the jobs; on failure, record it so the job
//! backs off (or fails for good after `max_attempts`). All database work goes through
//! PostgREST RPCs with the service role (`sql/migrations/0004_embeddings.sql`).

use crate::data_api::{Caller, DataApi};
use crate::deadline::Deadline;
use crate::embed::{
    content_hash, embedding_text, vector_literal, EmbeddingsConfig, EntryContent, BATCH, MAX_INLINE_WAIT_SECS,
};
use crate::upstream::{exchange, retry_after_secs, ExchangeError, Limits};
use crate::ApiError;
use serde::Deserialize;
use serde_json::{json, Value};

pub const CLAIM_RPC: &str = "edgesync_claim_embedding_jobs";
pub const COMPLETE_RPC: &str = "edgesync_complete_embedding_jobs";
pub const FAIL_RPC: &str = "edgesync_fail_embedding_jobs";
/// How long a claim holds a job before another run may take it.
pub const LEASE_SECS: u32 = 120;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// A claimed job with its entry's current content.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Claimed {
    pub entry_id: String,
    pub generation: i64,
    pub attempts: i32,
    #[serde(flatten)]
    pub content: EntryContent,
    pub embedding_hash: Option<String>,
    pub embedding_model: Option<String>,
}

/// One job to embed.
#[derive(Debug, Clone, PartialEq)]
pub struct Todo {
    pub entry_id: String,
    pub generation: i64,
    pub text: String,
    pub hash: String,
}

/// What to do with a batch of claimed jobs: finish the current ones as they are,
/// finish the blank ones by clearing their embedding (an entry with no text has none,
/// and the API refuses an empty input), embed the others.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub current: Vec<Value>,
    pub blank: Vec<Value>,
    pub todo: Vec<Todo>,
}

/// Pure: decide per job whether its stored embedding is already the one this model
/// would make from this text.
pub fn plan(cfg: &EmbeddingsConfig, claimed: Vec<Claimed>) -> Plan {
    let mut p = Plan::default();
    for c in claimed {
        let text = embedding_text(&c.content, cfg.max_tokens);
        let hash = content_hash(&cfg.model, cfg.dimensions, &text);
        if c.embedding_hash.as_deref() == Some(hash.as_str()) && c.embedding_model.as_deref() == Some(&cfg.model) {
            p.current.push(json!({ "entry_id": c.entry_id, "generation": c.generation }));
        } else if text.is_empty() {
            // Its hash is recorded, so rewriting it blank again is "current".
            p.blank.push(json!({
                "entry_id": c.entry_id, "generation": c.generation,
                "embedding": null, "model": cfg.model, "hash": hash,
            }));
        } else {
            p.todo.push(Todo { entry_id: c.entry_id, generation: c.generation, text, hash });
        }
    }
    p
}

/// The completion record of an embedded job.
pub fn completion(cfg: &EmbeddingsConfig, todo: &Todo, vector: &[f32]) -> Value {
    json!({
        "entry_id": todo.entry_id, "generation": todo.generation,
        "embedding": vector_literal(vector), "model": cfg.model, "hash": todo.hash,
    })
}

/// What one drain did.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct DrainReport {
    pub claimed: usize,
    pub embedded: usize,
    /// Jobs whose stored embedding was already current.
    pub unchanged: usize,
    /// Jobs of entries with no text: finished without a request, their embedding cleared.
    pub cleared: usize,
    pub failed: usize,
    pub api_requests: usize,
    pub last_error: Option<String>,
}

pub use crate::deadline::Sleep;

pub struct Drain<'a> {
    pub api: &'a DataApi,
    pub service_key: &'a str,
    pub embeddings: &'a EmbeddingsConfig,
    pub max_attempts: u32,
    pub sleep: Sleep<'a>,
}

/// Batches per Cron run by default (`EMBED_CRON_ROUNDS`): each batch is three
/// subrequests (claim, embed, finish).
pub const DEFAULT_CRON_ROUNDS: u32 = 8;

/// The drain's settings of the `embed_entry` Worker: `EMBED_MAX_ATTEMPTS` (5) and
/// `EMBED_CRON_ROUNDS` (8), each a whole number from 1 to 100; blank is unset, as for
/// every other bounded setting (`config::whole_number`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainSettings {
    pub max_attempts: u32,
    pub cron_rounds: u32,
}

impl DrainSettings {
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<DrainSettings, crate::config::ConfigError> {
        let number = |name, default| crate::config::whole_number(&get, name, u64::from(default), 1, 100);
        Ok(DrainSettings {
            max_attempts: number("EMBED_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)? as u32,
            cron_rounds: number("EMBED_CRON_ROUNDS", DEFAULT_CRON_ROUNDS)? as u32,
        })
    }
}

/// What the `embed_entry` Worker's drains read from its settings, in the order they
/// are checked: the service-role key (the job RPCs are the service role's), the
/// embeddings API, the drain's bounds.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub service_key: String,
    pub embeddings: EmbeddingsConfig,
    pub drain: DrainSettings,
}

impl JobSettings {
    pub fn from_lookup(
        config: &crate::config::Config,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<JobSettings, crate::config::ConfigError> {
        Ok(JobSettings {
            service_key: config.require_service_role_key()?.to_owned(),
            embeddings: EmbeddingsConfig::from_lookup(&get)?,
            drain: DrainSettings::from_lookup(&get)?,
        })
    }

    /// A drain on `api` with these settings and the runtime's timer.
    pub fn drain<'a>(&'a self, api: &'a DataApi, sleep: Sleep<'a>) -> Drain<'a> {
        let (service_key, embeddings) = (self.service_key.as_str(), &self.embeddings);
        Drain { api, service_key, embeddings, max_attempts: self.drain.max_attempts, sleep }
    }
}

/// What a request to the `embed_entry` Worker asks for, by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /search`, as a user.
    Search,
    /// `POST /embed_entry`: a database webhook's nudge.
    Nudge,
    /// `POST /embed_entry/drain`: drain due jobs now (operators, tests).
    Drain,
}

impl Route {
    /// The route of `path` (a trailing slash is the same path), or `None`: 404.
    pub fn of(path: &str) -> Option<Route> {
        match path {
            "/search" | "/search/" => Some(Route::Search),
            "/embed_entry" | "/embed_entry/" => Some(Route::Nudge),
            "/embed_entry/drain" => Some(Route::Drain),
            _ => None,
        }
    }
}

/// Why an embeddings request failed, and when to try again.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiFailure {
    pub status: Option<u16>,
    pub message: String,
    pub retry_after: u64,
}

impl ApiFailure {
    /// The API refused the input itself (a 4xx other than 429: too long, empty, against
    /// its policy), as opposed to failing for every request (5xx, 429, no answer).
    pub fn refuses_input(&self) -> bool {
        matches!(self.status, Some(400..=499)) && !matches!(self.status, Some(401 | 403 | 404 | 408 | 429))
    }

    /// The API said it is busy (429 rate limited, 503 overloaded): the jobs back off,
    /// but the try does not count towards their attempts. A burst of writes (a bulk
    /// insert of thousands of entries) would otherwise use up every job's attempts
    /// within a minute of backoff and fail them for good, though nothing is wrong with
    /// them; while the API stays busy they stay pending (`/health` reports them
    /// overdue), and they are embedded once it has room.
    pub fn charges_an_attempt(&self) -> bool {
        !matches!(self.status, Some(429 | 503))
    }
}

/// `p_max_attempts` for a failure that charges no attempt: no job reaches it.
const NO_ATTEMPT_LIMIT: u32 = i32::MAX as u32;

impl From<ApiFailure> for ApiError {
    /// A fixed text per code for the client; what the embeddings API said (its body,
    /// a URL in reqwest's message) goes to the log only.
    fn from(f: ApiFailure) -> Self {
        let e = match f.status {
            Some(429) | Some(503) => {
                ApiError::unavailable("embeddings_busy", "the embeddings service is busy; try again shortly")
            }
            _ => ApiError::bad_gateway("embeddings_unavailable", "the embeddings service could not embed the query"),
        };
        e.with_log_detail(f.message)
    }
}

impl From<ExchangeError> for ApiFailure {
    /// No usable answer: the message is for the log and the jobs' error, never the
    /// client's ([`ApiError`]'s mapping above answers a fixed text).
    fn from(e: ExchangeError) -> Self {
        let (status, message) = match e {
            ExchangeError::Unreachable(why) => (None, format!("embeddings API unreachable: {why}")),
            ExchangeError::Timeout(ms) => (None, format!("embeddings API did not answer within {ms} ms")),
            ExchangeError::Unreadable { status, detail, .. } => {
                (Some(status), format!("embeddings API's answer could not be read: {detail}"))
            }
            // No cap is set for the embeddings API; kept total for a cap added later.
            ExchangeError::TooLarge { limit, .. } => {
                (None, format!("embeddings API's answer is larger than {limit} bytes"))
            }
        };
        ApiFailure { status, message, retry_after: 0 }
    }
}

/// What an embeddings answer means: `n` vectors on a 200, else a failure whose message
/// quotes the start of the body (for the log and the jobs' error).
pub fn parse_answer(
    cfg: &EmbeddingsConfig,
    n: usize,
    status: u16,
    retry_after: Option<u64>,
    body: &str,
) -> Result<Vec<Vec<f32>>, ApiFailure> {
    if status == 200 {
        return cfg.vectors(body, n).map_err(|e| ApiFailure { status: Some(200), message: e.message, retry_after: 0 });
    }
    let message = format!("embeddings API answered {status}: {}", body.chars().take(300).collect::<String>());
    Err(ApiFailure { status: Some(status), message, retry_after: retry_after.unwrap_or(0) })
}

/// The embedding of one search query: [`embed_texts`] with one text.
pub async fn embed_query(cfg: &EmbeddingsConfig, query: &str, sleep: Sleep<'_>) -> Result<Vec<f32>, ApiError> {
    let mut requests = 0;
    let mut vectors = embed_texts(cfg, vec![query.to_owned()], sleep, &mut requests).await?;
    vectors.pop().ok_or_else(|| ApiError::bad_gateway("embeddings_bad_response", "no embedding"))
}

/// One embeddings request for `texts`; a 429/503 with a short `Retry-After` is retried
/// in place (twice at most), a longer one is left to the caller (a job's backoff).
pub async fn embed_texts(
    cfg: &EmbeddingsConfig,
    texts: Vec<String>,
    sleep: Sleep<'_>,
    requests: &mut usize,
) -> Result<Vec<Vec<f32>>, ApiFailure> {
    let n = texts.len();
    let body = cfg.request(texts);
    let mut tries = 0;
    loop {
        tries += 1;
        *requests += 1;
        let mut req = reqwest::Client::new().post(cfg.url()).json(&body);
        if let Some(key) = &cfg.api_key {
            req = req.bearer_auth(key);
        }
        let limits = Limits::new(Some(Deadline { ms: cfg.timeout_ms, sleep }));
        let (status, retry_after, text) = match exchange(req.send(), limits).await {
            Ok(answer) => (answer.status, retry_after_secs(answer.retry_after.as_deref()), answer.text().into_owned()),
            // An answer whose body broke off is read as an empty body.
            Err(ExchangeError::Unreadable { status, retry_after, .. }) => {
                (status, retry_after_secs(retry_after.as_deref()), String::new())
            }
            Err(e) => return Err(e.into()),
        };
        if status != 200 {
            if let Some(wait_secs) = retry_in_place(status, retry_after, tries) {
                sleep(wait_secs * 1000).await;
                continue;
            }
        }
        return parse_answer(cfg, n, status, retry_after, &text);
    }
}

/// After the `tries`-th request answered `status` (with `Retry-After: retry_after`
/// seconds, if given): wait this many seconds and ask again, or `None` to give up and
/// leave the wait to the jobs' backoff. Only a busy API (429, 503) is asked again, at
/// most twice, and only when it asks for a short wait (1 s when it names none).
pub fn retry_in_place(status: u16, retry_after: Option<u64>, tries: u32) -> Option<u64> {
    let wait = retry_after.unwrap_or(1);
    (matches!(status, 429 | 503) && tries <= 2 && wait <= MAX_INLINE_WAIT_SECS).then_some(wait)
}

/// What to write back for entries whose embedding failed (`edgesync_fail_embedding_jobs`).
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    pub entries: Vec<String>,
    pub error: String,
    pub retry_after_secs: u64,
    /// `p_max_attempts`: the configured limit, or no limit when the try does not count.
    pub max_attempts: u32,
}

/// The embeddings requests of one claimed batch, without I/O: which texts to ask for
/// next ([`BatchEmbedding::next_request`]) and what each answer means. A group the API refuses
/// as bad input is halved, down to the one entry it refuses, so only that entry is
/// charged (one user's entry must not fail other users' jobs in the same batch). Any
/// other failure charges that group and every group not tried yet, and stops the drain
/// (a failing upstream should back off).
#[derive(Debug)]
pub struct BatchEmbedding {
    groups: Vec<Vec<Todo>>,
    asked: Option<Vec<Todo>>,
    /// Completions to write back (`edgesync_complete_embedding_jobs`).
    pub done: Vec<Value>,
    pub embedded: usize,
    /// The API failed for everyone: the drain stops after this batch.
    pub stop: bool,
}

impl BatchEmbedding {
    pub fn new(todo: Vec<Todo>, done: Vec<Value>) -> BatchEmbedding {
        BatchEmbedding { groups: vec![todo], asked: None, done, embedded: 0, stop: false }
    }

    /// The texts of the next request, or `None` when the batch is through.
    pub fn next_request(&mut self) -> Option<Vec<String>> {
        while let Some(group) = self.groups.pop() {
            if !group.is_empty() {
                let texts = group.iter().map(|t| t.text.clone()).collect();
                self.asked = Some(group);
                return Some(texts);
            }
        }
        None
    }

    /// The request succeeded with one vector per text.
    pub fn on_vectors(&mut self, cfg: &EmbeddingsConfig, vectors: &[Vec<f32>]) {
        let group = self.asked.take().unwrap_or_default();
        self.embedded += vectors.len();
        self.done.extend(group.iter().zip(vectors).map(|(t, v)| completion(cfg, t, v)));
    }

    /// The request failed: what to charge, if anything (a refused group of several
    /// entries is split and asked again instead).
    pub fn on_failure(&mut self, failure: ApiFailure, max_attempts: u32) -> Option<Charge> {
        let mut group = self.asked.take().unwrap_or_default();
        if failure.refuses_input() && group.len() > 1 {
            let second = group.split_off(group.len() / 2);
            self.groups.push(second);
            self.groups.push(group);
            return None;
        }
        if !failure.refuses_input() {
            group.extend(self.groups.drain(..).flatten());
            self.stop = true;
        }
        let max_attempts = if failure.charges_an_attempt() { max_attempts } else { NO_ATTEMPT_LIMIT };
        Some(Charge {
            entries: group.into_iter().map(|t| t.entry_id).collect(),
            error: failure.message,
            retry_after_secs: failure.retry_after,
            max_attempts,
        })
    }
}

impl Drain<'_> {
    /// Claim and process up to `rounds` batches. With `entry` (a webhook's nudge), one
    /// batch: that entry's job first, filled up with other due jobs. Stops early when
    /// nothing is due or the embeddings API fails.
    pub async fn run(&self, entry: Option<&str>, rounds: u32) -> Result<DrainReport, ApiError> {
        let mut report = DrainReport::default();
        for _ in 0..rounds.max(1) {
            // A nudge for one entry also takes other due jobs into its batch (schema v5).
            let args =
                json!({ "p_max": BATCH, "p_lease_secs": LEASE_SECS, "p_entry": entry, "p_fill": entry.is_some() });
            let claimed: Vec<Claimed> =
                serde_json::from_value(self.api.rpc(Caller::ServiceRole(self.service_key), CLAIM_RPC, &args).await?)
                    .map_err(|e| ApiError::bad_gateway("upstream_bad_response", format!("claimed jobs: {e}")))?;
            if claimed.is_empty() {
                break;
            }
            report.claimed += claimed.len();
            let plan = plan(self.embeddings, claimed);
            report.unchanged += plan.current.len();
            report.cleared += plan.blank.len();
            let mut done = plan.current;
            done.extend(plan.blank);
            let mut batch = BatchEmbedding::new(plan.todo, done);
            while let Some(texts) = batch.next_request() {
                let charge = match embed_texts(self.embeddings, texts, self.sleep, &mut report.api_requests).await {
                    Ok(vectors) => {
                        batch.on_vectors(self.embeddings, &vectors);
                        continue;
                    }
                    Err(f) => batch.on_failure(f, self.max_attempts),
                };
                let Some(charge) = charge else { continue };
                let args = json!({ "p_entries": charge.entries, "p_error": charge.error,
                                   "p_retry_after_secs": charge.retry_after_secs, "p_max_attempts": charge.max_attempts });
                self.api.rpc(Caller::ServiceRole(self.service_key), FAIL_RPC, &args).await?;
                report.failed += charge.entries.len();
                report.last_error = Some(charge.error);
            }
            report.embedded += batch.embedded;
            let (done, stop) = (batch.done, batch.stop);
            if !done.is_empty() {
                self.api
                    .rpc(Caller::ServiceRole(self.service_key), COMPLETE_RPC, &json!({ "p_results": done }))
                    .await?;
            }
            if stop || entry.is_some() {
                break;
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> EmbeddingsConfig {
        EmbeddingsConfig {
            base_url: "http://x/v1".into(),
            model: "m".into(),
            dimensions: 1536,
            api_key: None,
            timeout_ms: 1000,
            max_tokens: crate::embed::DEFAULT_MAX_TOKENS,
        }
    }

    fn todo(id: &str) -> Todo {
        Todo { entry_id: id.into(), generation: 1, text: format!("text of {id}"), hash: format!("h{id}") }
    }

    fn failure(status: Option<u16>) -> ApiFailure {
        ApiFailure { status, message: format!("failed with {status:?}"), retry_after: 7 }
    }

    /// Drive a batch against an API that refuses exactly the texts of `bad` entries.
    fn run_batch(ids: &[&str], bad: &[&str]) -> (BatchEmbedding, Vec<Charge>, usize) {
        let mut batch = BatchEmbedding::new(ids.iter().map(|i| todo(i)).collect(), vec![json!("already done")]);
        let (mut charges, mut requests) = (Vec::new(), 0);
        while let Some(texts) = batch.next_request() {
            requests += 1;
            if texts.iter().any(|t| bad.iter().any(|b| *t == format!("text of {b}"))) {
                charges.extend(batch.on_failure(failure(Some(400)), 5));
            } else {
                batch.on_vectors(&cfg(), &vec![vec![0.5; 4]; texts.len()]);
            }
        }
        (batch, charges, requests)
    }

    #[test]
    fn a_batch_that_embeds_is_one_request_and_every_job_completes() {
        let (batch, charges, requests) = run_batch(&["a", "b", "c"], &[]);
        assert_eq!((requests, batch.embedded, batch.done.len(), batch.stop), (1, 3, 4, false));
        assert!(charges.is_empty());
    }

    #[test]
    fn an_entry_the_api_refuses_is_found_by_halving_and_charged_alone() {
        let (batch, charges, requests) = run_batch(&["a", "b", "c", "d", "e"], &["d"]);
        assert_eq!(charges.len(), 1, "{charges:?}");
        assert_eq!(charges[0].entries, ["d"]);
        assert_eq!(charges[0].max_attempts, 5, "a refused input counts as a try");
        assert_eq!((batch.embedded, batch.done.len(), batch.stop), (4, 5, false));
        assert!(requests <= 1 + 2 * 3, "halving: {requests} requests for 5 entries");
    }

    #[test]
    fn an_api_that_fails_for_everyone_charges_the_rest_and_stops_the_drain() {
        let mut batch = BatchEmbedding::new(["a", "b", "c", "d"].map(todo).to_vec(), Vec::new());
        assert!(batch.next_request().is_some());
        // Refused as input first: split into [a, b] and [c, d]; [a, b] is asked next.
        assert_eq!(batch.on_failure(failure(Some(422)), 5), None);
        assert_eq!(batch.next_request().unwrap(), ["text of a", "text of b"]);
        // Then the API goes down: this group and the one not tried yet are charged.
        let charge = batch.on_failure(failure(Some(500)), 5).unwrap();
        assert_eq!(charge.entries, ["a", "b", "c", "d"]);
        assert_eq!((charge.max_attempts, charge.retry_after_secs), (5, 7));
        assert!(batch.stop && batch.next_request().is_none());
    }

    #[test]
    fn a_busy_api_backs_the_jobs_off_without_using_up_their_attempts() {
        for busy in [429, 503] {
            let mut batch = BatchEmbedding::new(vec![todo("a")], Vec::new());
            batch.next_request();
            let charge = batch.on_failure(failure(Some(busy)), 5).unwrap();
            assert_eq!(charge.max_attempts, NO_ATTEMPT_LIMIT, "{busy}");
            assert!(batch.stop);
        }
        let mut batch = BatchEmbedding::new(vec![todo("a")], Vec::new());
        batch.next_request();
        assert_eq!(batch.on_failure(failure(None), 5).unwrap().max_attempts, 5, "no answer counts");
    }

    #[test]
    fn only_a_busy_api_asking_for_a_short_wait_is_asked_again_in_place_twice_at_most() {
        assert_eq!(retry_in_place(429, None, 1), Some(1));
        assert_eq!(retry_in_place(503, Some(2), 2), Some(2));
        assert_eq!(retry_in_place(429, Some(2), 3), None, "a third try is left to the backoff");
        assert_eq!(retry_in_place(429, Some(MAX_INLINE_WAIT_SECS + 1), 1), None, "a long wait is the backoff's");
        for other in [400, 401, 500, 502] {
            assert_eq!(retry_in_place(other, Some(1), 1), None, "{other}");
        }
    }

    #[test]
    fn claimed_rows_are_read_from_the_rpc_answer() {
        let row: Claimed = serde_json::from_value(json!({
            "entry_id": "e", "generation": 3, "attempts": 1, "title": "T", "body_markdown": null,
            "tags": ["a"], "contexts": null, "people": [], "embedding_hash": null, "embedding_model": null
        }))
        .unwrap();
        assert_eq!(row.content.tags, vec!["a"]);
        assert_eq!(row.generation, 3);
    }

    #[test]
    fn an_entry_with_no_text_is_finished_without_a_request_and_its_embedding_cleared() {
        let blank = Claimed {
            entry_id: "blank".into(),
            generation: 2,
            attempts: 1,
            content: EntryContent { title: Some("  ".into()), ..Default::default() },
            embedding_hash: Some("old".into()),
            embedding_model: Some("m".into()),
        };
        let p = plan(&cfg(), vec![blank.clone()]);
        assert!(p.todo.is_empty() && p.current.is_empty());
        let hash = content_hash("m", 1536, "");
        assert_eq!(
            p.blank,
            vec![json!({"entry_id": "blank", "generation": 2, "embedding": null, "model": "m", "hash": hash})]
        );
        // Written blank again: current, nothing to do.
        let again = Claimed { embedding_hash: Some(hash), ..blank };
        assert_eq!(plan(&cfg(), vec![again]).current.len(), 1);
    }

    #[test]
    fn drain_settings_are_bounded_and_blank_is_unset() {
        let get = crate::config::tests::lookup;
        let defaults = DrainSettings { max_attempts: DEFAULT_MAX_ATTEMPTS, cron_rounds: DEFAULT_CRON_ROUNDS };
        assert_eq!(DrainSettings::from_lookup(get(&[])).unwrap(), defaults);
        assert_eq!(
            DrainSettings::from_lookup(get(&[("EMBED_MAX_ATTEMPTS", " "), ("EMBED_CRON_ROUNDS", "")])).unwrap(),
            defaults
        );
        let set =
            DrainSettings::from_lookup(get(&[("EMBED_MAX_ATTEMPTS", " 9 "), ("EMBED_CRON_ROUNDS", "100")])).unwrap();
        assert_eq!(set, DrainSettings { max_attempts: 9, cron_rounds: 100 });
        for bad in ["0", "101", "-1", "2.5", "many"] {
            let e = DrainSettings::from_lookup(move |k: &str| (k == "EMBED_CRON_ROUNDS").then(|| bad.to_string()));
            assert_eq!(e.unwrap_err().setting, "EMBED_CRON_ROUNDS", "{bad}");
        }
    }

    #[test]
    fn job_settings_need_the_service_role_key_first() {
        let get = crate::config::tests::lookup;
        let without = crate::config::Config::from_lookup(get(&[("SUPABASE_URL", "https://a.b")])).unwrap();
        let e = JobSettings::from_lookup(&without, get(&[("EMBED_CRON_ROUNDS", "0")])).unwrap_err();
        assert_eq!(e.setting, "SUPABASE_SERVICE_ROLE_KEY", "checked before the rest");
        let config = crate::config::Config::from_lookup(get(&[
            ("SUPABASE_URL", "https://a.b"),
            ("SUPABASE_SERVICE_ROLE_KEY", "service"),
        ]))
        .unwrap();
        let e = JobSettings::from_lookup(&config, get(&[("EMBED_CRON_ROUNDS", "0")])).unwrap_err();
        assert_eq!(e.setting, "OPENAI_API_KEY", "then the embeddings API");
        let e = JobSettings::from_lookup(&config, get(&[("OPENAI_API_KEY", "sk"), ("EMBED_CRON_ROUNDS", "0")]));
        assert_eq!(e.unwrap_err().setting, "EMBED_CRON_ROUNDS");
        let s =
            JobSettings::from_lookup(&config, get(&[("OPENAI_API_KEY", "sk"), ("EMBED_MAX_ATTEMPTS", "7")])).unwrap();
        assert_eq!((s.service_key.as_str(), s.drain.max_attempts), ("service", 7));
        let api = DataApi::new(config.postgrest_url.clone(), None);
        let no_wait = |_: u64| -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> { Box::pin(async {}) };
        let drain = s.drain(&api, &no_wait);
        assert_eq!((drain.service_key, drain.max_attempts), ("service", 7));
    }

    #[test]
    fn the_worker_routes_search_nudges_and_drains_by_path() {
        assert_eq!(Route::of("/search"), Some(Route::Search));
        assert_eq!(Route::of("/search/"), Some(Route::Search));
        assert_eq!(Route::of("/embed_entry"), Some(Route::Nudge));
        assert_eq!(Route::of("/embed_entry/"), Some(Route::Nudge));
        assert_eq!(Route::of("/embed_entry/drain"), Some(Route::Drain));
        for other in ["/", "/embed_entry/drain/x", "/embed_entry/other", "/searches", ""] {
            assert_eq!(Route::of(other), None, "{other}");
        }
    }

    #[test]
    fn a_busy_api_backs_jobs_off_without_using_up_their_attempts() {
        let f = |status| ApiFailure { status, message: String::new(), retry_after: 0 };
        for s in [Some(429), Some(503)] {
            assert!(!f(s).charges_an_attempt(), "{s:?}");
        }
        for s in [Some(400), Some(401), Some(500), Some(502), Some(504), None] {
            assert!(f(s).charges_an_attempt(), "{s:?}");
        }
    }

    #[test]
    fn only_refused_input_is_split_out_of_a_batch() {
        let f = |status| ApiFailure { status, message: String::new(), retry_after: 0 };
        for s in [400, 413, 422] {
            assert!(f(Some(s)).refuses_input(), "{s}");
        }
        for s in [Some(401), Some(403), Some(404), Some(429), Some(500), Some(503), None] {
            assert!(!f(s).refuses_input(), "{s:?}");
        }
    }

    #[test]
    fn only_stale_or_missing_embeddings_are_computed() {
        let content = EntryContent { title: Some("T".into()), ..Default::default() };
        let hash = content_hash("m", 1536, "T");
        let job = |id: &str, hash: Option<&str>, model: Option<&str>| Claimed {
            entry_id: id.into(),
            generation: 1,
            attempts: 1,
            content: content.clone(),
            embedding_hash: hash.map(str::to_owned),
            embedding_model: model.map(str::to_owned),
        };
        let p = plan(
            &cfg(),
            vec![
                job("current", Some(&hash), Some("m")),
                job("never", None, None),
                job("other-model", Some(&hash), Some("old")),
                job("edited", Some("0000"), Some("m")),
            ],
        );
        assert_eq!(p.current, vec![json!({"entry_id": "current", "generation": 1})]);
        assert!(p.blank.is_empty());
        assert_eq!(p.todo.iter().map(|t| t.entry_id.as_str()).collect::<Vec<_>>(), ["never", "other-model", "edited"]);
        assert!(p.todo.iter().all(|t| t.text == "T" && t.hash == hash));
        let c = completion(&cfg(), &p.todo[0], &[0.5, 0.25]);
        assert_eq!(
            c,
            json!({"entry_id": "never", "generation": 1, "embedding": "[0.5,0.25]", "model": "m", "hash": hash})
        );
    }
}
