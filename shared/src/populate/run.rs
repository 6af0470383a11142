//! One call of a Neo4j populate run, as a sans-I/O state machine: [`NeoRun`] says what
//! to do next ([`NeoStep`]: ask Neo4j for a page, write a page, finish the call) and
//! is told each answer. [`super::Populate::neo4j`] drives it with the database and the
//! source; the decisions — restart once when the source refuses the cursor, pause at
//! the page, subrequest and time budgets, which outcome a failure records — are tested
//! here, natively.

use serde_json::{json, Value};

use super::neo4j::{Rows, SourceFailure, NODES_STATEMENT, RELS_STATEMENT};
use super::{
    continuation, source_error, stored_error, write_checkpoint, Applied, Begun, Counts, Mapping, Page, Phase,
    PopulateConfig, Position, Rejection, Report, Requests, RunInfo, MAX_LISTED_REJECTIONS,
};
use crate::ApiError;

/// What the driver does next.
#[derive(Debug, Clone, PartialEq)]
pub enum NeoStep {
    /// `edgesync_populate_finish` with this outcome; report with [`NeoRun::on_finished`]
    /// or [`NeoRun::on_finish_failed`].
    Finish { outcome: &'static str, error: Option<String>, retry_after_secs: Option<u64> },
    /// One Neo4j query; report with [`NeoRun::on_rows`] or [`NeoRun::on_source_failure`].
    Query { statement: &'static str, params: Value },
    /// `edgesync_populate_apply` with these arguments (without `p_user`); report with
    /// [`NeoRun::on_applied`] or [`NeoRun::on_apply_failed`].
    Apply { args: Value },
    /// The call's answer.
    Done(Box<Result<Report, ApiError>>),
}

/// Why the pending `Finish` was asked for: what follows its answer.
#[derive(Debug, Clone, PartialEq)]
enum AfterFinish {
    /// The run starts again from the beginning (the cursor could not be read, or the
    /// source refused it), then goes on.
    Restart,
    /// The call ends with its report.
    End { completed: bool },
    /// The call ends with this error, whatever `finish` answers (it is best effort).
    Fail(ApiError),
}

/// One call's state; see the module documentation.
#[derive(Debug)]
pub struct NeoRun {
    begun: Begun,
    /// The Neo4j query parameters every page shares.
    tenant: String,
    changed: String,
    token: String,
    lease_secs: u64,
    page_size: u32,
    deadline_ms: u64,
    max_pages: u32,
    max_subrequests: u32,
    started_ms: u64,
    pos: Position,
    since: Option<Value>,
    restarted: bool,
    pages: u32,
    /// The page being written, and the position after it.
    pending: Option<(Page, Position)>,
    after_finish: Option<AfterFinish>,
    counts: Counts,
    run_counts: Counts,
    rejected: Vec<Rejection>,
    requests: Requests,
}

impl NeoRun {
    /// A call that `begun` (the answer of `edgesync_populate_begin`, one database request
    /// already made) started at `now_ms`, and its first step.
    pub(super) fn start(
        begun: Begun,
        mapping: &Mapping,
        config: &PopulateConfig,
        max_pages: Option<u32>,
        max_subrequests: u32,
        now_ms: u64,
    ) -> (NeoRun, NeoStep) {
        let since: Option<Option<Value>> = match &begun.since {
            None => Some(None),
            Some(text) => serde_json::from_str::<Value>(text).ok().filter(|v| v.is_number() || v.is_string()).map(Some),
        };
        let decoded = Position::decode(begun.cursor.as_deref());
        let run_counts = serde_json::from_value(begun.progress.clone()).unwrap_or_default();
        let mut run = NeoRun {
            tenant: mapping.tenant_property.clone(),
            changed: mapping.changed_property.clone(),
            token: continuation(&begun.run_id),
            begun,
            lease_secs: config.lease_secs(),
            page_size: config.page_size,
            deadline_ms: now_ms + config.time_budget_ms,
            max_pages: max_pages.unwrap_or(u32::MAX),
            max_subrequests,
            started_ms: now_ms,
            pos: Position::start(),
            since: None,
            restarted: false,
            pages: 0,
            pending: None,
            after_finish: None,
            counts: Counts::default(),
            run_counts,
            rejected: Vec::new(),
            requests: Requests { source: 0, database: 1 },
        };
        let step = match (decoded, since) {
            (Some(pos), Some(since)) => {
                run.pos = pos;
                run.since = since;
                run.next(now_ms)
            }
            // A cursor or token we cannot read: start again, fully (as on a 410).
            _ => run.finish("restart", None, None, AfterFinish::Restart),
        };
        (run, step)
    }

    /// The requests made so far.
    pub fn requests(&self) -> Requests {
        self.requests
    }

    /// The run's lease, which every write and `finish` names.
    pub fn lease(&self) -> &str {
        &self.begun.lease_id
    }

    fn finish(
        &mut self,
        outcome: &'static str,
        error: Option<String>,
        retry_after_secs: Option<u64>,
        then: AfterFinish,
    ) -> NeoStep {
        self.requests.database += 1;
        self.after_finish = Some(then);
        NeoStep::Finish { outcome, error, retry_after_secs }
    }

    /// The next page, or the end of the call.
    fn next(&mut self, now_ms: u64) -> NeoStep {
        if self.pos.phase == Phase::Done {
            return self.finish("completed", None, None, AfterFinish::End { completed: true });
        }
        // A page costs two subrequests; keep one for `finish`.
        let spent = self.requests.source + self.requests.database;
        if self.pages >= self.max_pages || spent + 3 > self.max_subrequests || now_ms >= self.deadline_ms {
            return self.finish("paused", None, None, AfterFinish::End { completed: false });
        }
        let statement = if self.pos.phase == Phase::Nodes { NODES_STATEMENT } else { RELS_STATEMENT };
        self.requests.source += 1;
        let params = json!({
            "tenant": self.tenant, "changed": self.changed, "user_id": self.begun.user_id,
            "after": self.pos.after, "since": self.since, "limit": self.page_size,
        });
        NeoStep::Query { statement, params }
    }

    /// Neo4j answered a page.
    pub fn on_rows(&mut self, rows: &Rows, mapping: &Mapping, now_ms: u64) -> NeoStep {
        self.pages += 1;
        let page = if self.pos.phase == Phase::Nodes {
            Page::of_nodes(mapping, rows.records())
        } else {
            Page::of_relationships(mapping, rows.records())
        };
        let next = self.pos.next(page.last_id.as_deref(), page.items, self.page_size);
        if page.items == 0 {
            self.pos = next;
            return self.next(now_ms);
        }
        let args = json!({
            "p_source": "neo4j", "p_lease": self.begun.lease_id, "p_rows": page.rows(), "p_cursor": next.encode(),
            "p_watermark": page.watermark, "p_lease_secs": self.lease_secs,
        });
        self.pending = Some((page, next));
        self.requests.database += 1;
        NeoStep::Apply { args }
    }

    /// Neo4j failed: restart once when it refused the cursor (410), otherwise record the
    /// failure and end the call with it.
    pub fn on_source_failure(&mut self, failure: SourceFailure, _now_ms: u64) -> NeoStep {
        if matches!(failure, SourceFailure::Gone { .. }) && !self.restarted {
            return self.finish("restart", None, None, AfterFinish::Restart);
        }
        let (outcome, retry) = match &failure {
            SourceFailure::RateLimited { retry_after_secs, .. } => ("rate_limited", Some(*retry_after_secs)),
            _ => ("failed", None),
        };
        let error = source_error(&failure, &self.token);
        self.finish(outcome, Some(stored_error(&failure).to_owned()), retry, AfterFinish::Fail(error))
    }

    /// The page was written.
    pub fn on_applied(&mut self, answer: Value, now_ms: u64) -> NeoStep {
        let applied: Applied = serde_json::from_value(answer).unwrap_or_default();
        if let Some((page, next)) = self.pending.take() {
            self.counts.add(applied.counts);
            self.run_counts.add(applied.counts);
            for r in page.rejected.into_iter().chain(applied.rejected) {
                if self.rejected.len() < MAX_LISTED_REJECTIONS {
                    self.rejected.push(r);
                }
            }
            self.pos = next;
        }
        self.next(now_ms)
    }

    /// The page could not be written: finish the call as failed (best effort: the
    /// lease may be gone with the database) and answer the error with the continuation.
    pub fn on_apply_failed(&mut self, e: ApiError) -> NeoStep {
        self.pending = None;
        let message = e.message.clone();
        let error = e.with_details(json!({ "continuation": self.token }));
        self.finish("failed", Some(message), None, AfterFinish::Fail(error))
    }

    /// `finish` answered.
    pub fn on_finished(&mut self, answer: Value, now_ms: u64) -> NeoStep {
        match self.after_finish.take() {
            Some(AfterFinish::Restart) => {
                self.restarted = true;
                self.run_counts = Counts::default();
                self.pos = Position::start();
                self.since = None;
                self.next(now_ms)
            }
            Some(AfterFinish::Fail(e)) => NeoStep::Done(Box::new(Err(e))),
            Some(AfterFinish::End { completed }) => NeoStep::Done(Box::new(self.report(&answer, completed, now_ms))),
            None => NeoStep::Done(Box::new(Err(ApiError::internal("populate: an answer to no finish")))),
        }
    }

    /// `finish` failed: a best-effort one ends with the error it was for; any other
    /// ends with its own.
    pub fn on_finish_failed(&mut self, e: ApiError) -> NeoStep {
        match self.after_finish.take() {
            Some(AfterFinish::Fail(original)) => NeoStep::Done(Box::new(Err(original))),
            _ => NeoStep::Done(Box::new(Err(e))),
        }
    }

    fn report(&mut self, finished: &Value, completed: bool, now_ms: u64) -> Result<Report, ApiError> {
        Ok(Report {
            source: "neo4j",
            user_id: self.begun.user_id.clone(),
            status: if completed { "completed" } else { "partial" },
            run: RunInfo {
                id: self.begun.run_id.clone(),
                mode: self.begun.mode.clone(),
                resumed: self.begun.resumed,
                restarted: self.restarted,
            },
            counts: self.counts,
            run_counts: self.run_counts,
            rejected: std::mem::take(&mut self.rejected),
            continuation: (!completed).then(|| self.token.clone()),
            write_checkpoint: write_checkpoint(finished)?,
            requests: self.requests,
            elapsed_ms: now_ms.saturating_sub(self.started_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: &str = "11111111-1111-4111-8111-111111111111";

    fn config(page_size: u32) -> PopulateConfig {
        PopulateConfig::from_lookup(|k| match k {
            "POPULATE_PAGE_SIZE" => Some(page_size.to_string()),
            _ => None,
        })
        .unwrap()
    }

    fn begun(cursor: Option<&str>) -> Begun {
        Begun {
            user_id: "u".into(),
            run_id: "22222222-2222-4222-8222-222222222222".into(),
            lease_id: LEASE.into(),
            mode: "full".into(),
            cursor: cursor.map(str::to_owned),
            since: None,
            progress: json!({}),
            resumed: cursor.is_some(),
        }
    }

    /// A page of `n` Person nodes, ids `<from>..<from + n>`.
    fn people(from: usize, n: usize) -> Rows {
        Rows {
            fields: vec!["id".into(), "labels".into(), "properties".into()],
            values: (from..from + n)
                .map(|i| {
                    vec![
                        json!(format!("4:s:{i:04}")),
                        json!(["Person"]),
                        json!({"user_id": "u", "email": format!("p{i}@x"), "updated_at": 5}),
                    ]
                })
                .collect(),
        }
    }

    fn none() -> Rows {
        Rows { fields: vec!["id".into()], values: Vec::new() }
    }

    fn finished() -> Value {
        json!({"checkpoint": "41"})
    }

    fn applied(n: u64) -> Value {
        json!({"counts": {"inserted": n}, "rejected": [], "results": []})
    }

    fn outcome(step: &NeoStep) -> &'static str {
        match step {
            NeoStep::Finish { outcome, .. } => outcome,
            other => panic!("expected a finish, got {other:?}"),
        }
    }

    fn report(step: NeoStep) -> Report {
        match step {
            NeoStep::Done(answer) => answer.expect("a report"),
            other => panic!("expected the answer, got {other:?}"),
        }
    }

    #[test]
    fn a_small_graph_is_read_written_and_completed_in_one_call() {
        let mapping = Mapping::default_mapping();
        let (mut run, step) = NeoRun::start(begun(None), &mapping, &config(10), None, 45, 0);
        assert!(matches!(step, NeoStep::Query { statement, .. } if statement == NODES_STATEMENT));
        let step = run.on_rows(&people(0, 3), &mapping, 1);
        let NeoStep::Apply { args } = &step else { panic!("{step:?}") };
        assert_eq!(args["p_lease"], LEASE);
        // Fewer than a page: the nodes are done, relationships next.
        let step = run.on_applied(applied(3), 2);
        assert!(matches!(step, NeoStep::Query { statement, .. } if statement == RELS_STATEMENT));
        let step = run.on_rows(&none(), &mapping, 3);
        assert_eq!(outcome(&step), "completed");
        let r = report(run.on_finished(finished(), 4));
        assert_eq!((r.status, r.counts.inserted, r.continuation.clone()), ("completed", 3, None));
        assert_eq!(r.write_checkpoint, "42");
        // begin, apply, finish; two queries.
        assert_eq!((r.requests.database, r.requests.source), (3, 2));
    }

    #[test]
    fn a_call_pauses_at_its_page_limit_and_answers_a_continuation() {
        let mapping = Mapping::default_mapping();
        let (mut run, _) = NeoRun::start(begun(None), &mapping, &config(2), Some(1), 45, 0);
        run.on_rows(&people(0, 2), &mapping, 1);
        let step = run.on_applied(applied(2), 2);
        assert_eq!(outcome(&step), "paused");
        let r = report(run.on_finished(finished(), 3));
        assert_eq!(r.status, "partial");
        assert!(r.continuation.is_some());
    }

    #[test]
    fn a_call_pauses_before_its_subrequests_or_its_time_run_out() {
        let mapping = Mapping::default_mapping();
        // begin (1) + a page (2) + finish (1) fit in 4; a second page does not.
        let (mut run, _) = NeoRun::start(begun(None), &mapping, &config(2), None, 5, 0);
        run.on_rows(&people(0, 2), &mapping, 1);
        assert_eq!(outcome(&run.on_applied(applied(2), 2)), "paused");
        let deadline = config(2).time_budget_ms;
        let (mut run, _) = NeoRun::start(begun(None), &mapping, &config(2), None, 45, 0);
        run.on_rows(&people(0, 2), &mapping, 1);
        assert_eq!(outcome(&run.on_applied(applied(2), deadline)), "paused");
    }

    #[test]
    fn a_refused_cursor_restarts_the_run_once_then_fails() {
        let mapping = Mapping::default_mapping();
        let (mut run, _) = NeoRun::start(begun(None), &mapping, &config(10), None, 45, 0);
        let gone = || SourceFailure::Gone { message: "410".into() };
        assert_eq!(outcome(&run.on_source_failure(gone(), 1)), "restart");
        let step = run.on_finished(json!({}), 2);
        let NeoStep::Query { params, .. } = &step else { panic!("{step:?}") };
        assert_eq!(params["after"], Value::Null, "from the beginning");
        // A second refusal in the same call is a failure, with the continuation.
        assert_eq!(outcome(&run.on_source_failure(gone(), 3)), "failed");
        let NeoStep::Done(answer) = run.on_finished(json!({}), 4) else { panic!() };
        let e = answer.unwrap_err();
        assert_eq!(e.code, "source_error");
        assert!(e.details.is_some_and(|d| d["continuation"].is_string()));
    }

    #[test]
    fn an_unreadable_cursor_starts_the_run_again_fully() {
        let mapping = Mapping::default_mapping();
        let (mut run, step) = NeoRun::start(begun(Some("not json")), &mapping, &config(10), None, 45, 0);
        assert_eq!(outcome(&step), "restart");
        assert!(matches!(run.on_finished(json!({}), 1), NeoStep::Query { .. }));
        assert!(matches!(run.on_rows(&none(), &mapping, 2), NeoStep::Query { .. }), "relationships next");
        assert_eq!(outcome(&run.on_rows(&none(), &mapping, 3)), "completed");
        let r = report(run.on_finished(finished(), 4));
        assert!(r.run.restarted);
    }

    #[test]
    fn a_rate_limited_source_records_when_to_come_back() {
        let mapping = Mapping::default_mapping();
        let (mut run, _) = NeoRun::start(begun(None), &mapping, &config(10), None, 45, 0);
        let step = run.on_source_failure(SourceFailure::RateLimited { retry_after_secs: 30, message: "429".into() }, 1);
        assert_eq!(
            step,
            NeoStep::Finish {
                outcome: "rate_limited",
                error: Some("the data source is limiting requests".into()),
                retry_after_secs: Some(30)
            }
        );
        let NeoStep::Done(answer) = run.on_finished(json!({}), 2) else { panic!() };
        assert_eq!(answer.unwrap_err().status, 429);
    }

    #[test]
    fn a_write_that_fails_ends_the_call_with_its_error_even_when_finish_fails_too() {
        let mapping = Mapping::default_mapping();
        let (mut run, _) = NeoRun::start(begun(None), &mapping, &config(10), None, 45, 0);
        run.on_rows(&people(0, 3), &mapping, 1);
        let step = run.on_apply_failed(ApiError::unavailable("database_unavailable", "down"));
        assert_eq!(outcome(&step), "failed");
        let NeoStep::Done(answer) = run.on_finish_failed(ApiError::internal("finish failed too")) else { panic!() };
        let e = answer.unwrap_err();
        assert_eq!(e.code, "database_unavailable");
        assert!(e.details.is_some_and(|d| d["continuation"].is_string()));
    }
}
