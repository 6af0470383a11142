//! One call of a legacy populate, as a sans-I/O state machine: [`LegacyRun`] says what
//! to do next ([`LegacyStep`]: write a chunk of entries, finish the run, answer) and is
//! told each answer. [`super::Populate::legacy`] drives it with the database; the
//! decisions — the chunks, the counts (refusals counted once, with the first chunk),
//! which outcome a failure records — are tested here, natively.

use serde_json::{json, Value};

use super::legacy::LegacyBatch;
use super::{write_checkpoint, Applied, Begun, Counts, PopulateConfig, Requests};
use crate::ApiError;

/// Legacy entries written per RPC.
pub const LEGACY_CHUNK: usize = 500;

/// What the driver does next.
#[derive(Debug, Clone, PartialEq)]
pub enum LegacyStep {
    /// `edgesync_populate_apply` of chunk `chunk` (from 0) with these arguments (without
    /// `p_user`); report with [`LegacyRun::on_applied`] or [`LegacyRun::on_apply_failed`].
    Apply { chunk: usize, args: Value },
    /// `edgesync_populate_finish` with this outcome (`completed` or `failed`); report with
    /// [`LegacyRun::on_finished`] or [`LegacyRun::on_finish_failed`].
    Finish { outcome: &'static str, error: Option<String> },
    /// The call's answer: the report, or the error.
    Done(Box<Result<Value, ApiError>>),
}

/// Why the pending `Finish` was asked for: what follows its answer.
#[derive(Debug, Clone, PartialEq)]
enum AfterFinish {
    /// Every chunk was written: the call answers its report.
    Report,
    /// A chunk could not be written: the call ends with this error, whatever `finish`
    /// answers (it is best effort).
    Fail(ApiError),
}

/// One call's state; see the module documentation.
#[derive(Debug)]
pub struct LegacyRun {
    batch: LegacyBatch,
    user_id: String,
    lease: String,
    lease_secs: u64,
    started_ms: u64,
    /// Records refused before the database (malformed or duplicate): sent, and counted
    /// by the database again, with the first chunk only.
    refused: u64,
    /// The chunk being written, then the next one.
    chunk: usize,
    counts: Counts,
    requests: Requests,
    after_finish: Option<AfterFinish>,
}

impl LegacyRun {
    /// A call for `batch` that `begun` (the answer of `edgesync_populate_begin`, one
    /// database request already made) started, the call having begun at `started_ms`;
    /// and its first step.
    pub(super) fn start(
        batch: LegacyBatch,
        begun: Begun,
        config: &PopulateConfig,
        started_ms: u64,
    ) -> (LegacyRun, LegacyStep) {
        let (bad, dup) = batch.refused();
        let mut run = LegacyRun {
            batch,
            user_id: begun.user_id,
            lease: begun.lease_id,
            lease_secs: config.lease_secs(),
            started_ms,
            refused: bad + dup,
            chunk: 0,
            counts: Counts { rejected: bad + dup, ..Counts::default() },
            requests: Requests { source: 0, database: 1 },
            after_finish: None,
        };
        let step = run.next();
        (run, step)
    }

    /// The requests made so far.
    pub fn requests(&self) -> Requests {
        self.requests
    }

    /// The run's lease, which every write and `finish` names.
    pub fn lease(&self) -> &str {
        &self.lease
    }

    /// The chunks the batch is written in.
    pub fn chunks(&self) -> usize {
        self.batch.rows.len().div_ceil(LEGACY_CHUNK)
    }

    /// What the database is told was refused with chunk `i`.
    fn refused_with(&self, i: usize) -> u64 {
        if i == 0 {
            self.refused
        } else {
            0
        }
    }

    fn finish(&mut self, outcome: &'static str, error: Option<String>, then: AfterFinish) -> LegacyStep {
        self.requests.database += 1;
        self.after_finish = Some(then);
        LegacyStep::Finish { outcome, error }
    }

    /// The next chunk, or the end of the run.
    fn next(&mut self) -> LegacyStep {
        let i = self.chunk;
        let Some(entries) = self.batch.rows.chunks(LEGACY_CHUNK).nth(i) else {
            return self.finish("completed", None, AfterFinish::Report);
        };
        let args = json!({
            "p_source": "legacy", "p_lease": self.lease, "p_cursor": null,
            "p_rows": { "entries": entries, "rejected": self.refused_with(i) },
            "p_lease_secs": self.lease_secs,
        });
        self.requests.database += 1;
        LegacyStep::Apply { chunk: i, args }
    }

    /// The chunk was written. An answer that cannot be read counts nothing and settles
    /// no record (they stay `pending`).
    pub fn on_applied(&mut self, answer: Value) -> LegacyStep {
        let applied: Applied = serde_json::from_value(answer).unwrap_or_default();
        let refused = self.refused_with(self.chunk);
        self.counts.add(Counts { rejected: 0, ..applied.counts });
        // The database counts what it was told was refused; those are counted already.
        self.counts.rejected += applied.counts.rejected.saturating_sub(refused);
        self.batch.settle(&applied.results);
        self.chunk += 1;
        self.next()
    }

    /// The chunk could not be written: finish the run as failed with the error's
    /// message (best effort) and answer the error.
    pub fn on_apply_failed(&mut self, e: ApiError) -> LegacyStep {
        let message = e.message.clone();
        self.finish("failed", Some(message), AfterFinish::Fail(e))
    }

    /// `finish` answered.
    pub fn on_finished(&mut self, answer: Value, now_ms: u64) -> LegacyStep {
        match self.after_finish.take() {
            Some(AfterFinish::Report) => LegacyStep::Done(Box::new(self.report(&answer, now_ms))),
            Some(AfterFinish::Fail(e)) => LegacyStep::Done(Box::new(Err(e))),
            None => LegacyStep::Done(Box::new(Err(ApiError::internal("populate: an answer to no finish")))),
        }
    }

    /// `finish` failed: a best-effort one ends with the error it was for; the last one
    /// with its own.
    pub fn on_finish_failed(&mut self, e: ApiError) -> LegacyStep {
        match self.after_finish.take() {
            Some(AfterFinish::Fail(original)) => LegacyStep::Done(Box::new(Err(original))),
            _ => LegacyStep::Done(Box::new(Err(e))),
        }
    }

    fn report(&self, finished: &Value, now_ms: u64) -> Result<Value, ApiError> {
        Ok(json!({
            "source": "legacy", "user_id": self.user_id, "status": "completed", "counts": self.counts,
            "records": self.batch.reports, "continuation": null, "write_checkpoint": write_checkpoint(finished)?,
            "requests": self.requests, "elapsed_ms": now_ms.saturating_sub(self.started_ms),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: &str = "11111111-1111-4111-8111-111111111111";

    fn config() -> PopulateConfig {
        PopulateConfig::from_lookup(|_| None).unwrap()
    }

    fn begun() -> Begun {
        Begun {
            user_id: "u".into(),
            run_id: "22222222-2222-4222-8222-222222222222".into(),
            lease_id: LEASE.into(),
            mode: "full".into(),
            cursor: None,
            since: None,
            progress: json!({}),
            resumed: false,
        }
    }

    /// `n` good notes, legacyIds `n0..`.
    fn notes(n: usize) -> Vec<Value> {
        (0..n).map(|i| json!({"legacyId": format!("n{i}"), "legacyType": "note", "title": "t"})).collect()
    }

    fn start(records: &[Value]) -> (LegacyRun, LegacyStep) {
        LegacyRun::start(LegacyBatch::parse(records), begun(), &config(), 1000)
    }

    /// The database's answer to a chunk: every entry inserted, and `rejected` counted
    /// (it includes what it was told was refused).
    fn inserted(args: &Value, rejected: u64) -> Value {
        let entries = args["p_rows"]["entries"].as_array().unwrap();
        let results: Vec<Value> = entries
            .iter()
            .map(|e| json!({"ref": e["ref"], "id": format!("id-{}", e["ref"].as_str().unwrap()), "status": "inserted"}))
            .collect();
        json!({"counts": {"inserted": entries.len(), "rejected": rejected}, "rejected": [], "results": results})
    }

    fn apply(step: &LegacyStep) -> (usize, &Value) {
        match step {
            LegacyStep::Apply { chunk, args } => (*chunk, args),
            other => panic!("expected a write, got {other:?}"),
        }
    }

    fn entries(args: &Value) -> usize {
        args["p_rows"]["entries"].as_array().unwrap().len()
    }

    fn finish(step: &LegacyStep) -> (&'static str, Option<&str>) {
        match step {
            LegacyStep::Finish { outcome, error } => (outcome, error.as_deref()),
            other => panic!("expected a finish, got {other:?}"),
        }
    }

    fn report(step: LegacyStep) -> Value {
        match step {
            LegacyStep::Done(answer) => answer.expect("a report"),
            other => panic!("expected the answer, got {other:?}"),
        }
    }

    /// Write every chunk (the database inserting all), finish, and answer the report.
    fn write_all(run: &mut LegacyRun, mut step: LegacyStep) -> (Vec<usize>, Value) {
        let mut sizes = Vec::new();
        while let LegacyStep::Apply { args, .. } = &step {
            sizes.push(entries(args));
            let rejected = args["p_rows"]["rejected"].as_u64().unwrap();
            step = run.on_applied(inserted(args, rejected));
        }
        assert_eq!(finish(&step), ("completed", None));
        (sizes, report(run.on_finished(json!({"checkpoint": "41"}), 1250)))
    }

    #[test]
    fn a_small_batch_is_written_in_one_chunk_and_reported_record_by_record() {
        let (mut run, step) = start(&notes(2));
        let (chunk, args) = apply(&step);
        assert_eq!(chunk, 0);
        assert_eq!(
            args,
            &json!({
                "p_source": "legacy", "p_lease": LEASE, "p_cursor": null, "p_lease_secs": 50,
                "p_rows": { "entries": LegacyBatch::parse(&notes(2)).rows, "rejected": 0 },
            })
        );
        let answer = inserted(args, 0);
        let step = run.on_applied(answer);
        assert_eq!(finish(&step), ("completed", None));
        assert_eq!(run.requests(), Requests { source: 0, database: 3 });
        let r = report(run.on_finished(json!({"checkpoint": "41"}), 1250));
        assert_eq!(
            r,
            json!({
                "source": "legacy", "user_id": "u", "status": "completed",
                "counts": {"inserted": 2, "updated": 0, "unchanged": 0, "skipped": 0, "rejected": 0},
                "records": [
                    {"index": 0, "legacyType": "note", "legacyId": "n0", "status": "inserted", "id": "id-000000"},
                    {"index": 1, "legacyType": "note", "legacyId": "n1", "status": "inserted", "id": "id-000001"},
                ],
                "continuation": null, "write_checkpoint": "42",
                "requests": {"source": 0, "database": 3}, "elapsed_ms": 250,
            })
        );
    }

    #[test]
    fn an_empty_batch_writes_no_chunk_but_still_begins_and_finishes() {
        let (mut run, step) = start(&[]);
        assert_eq!(run.chunks(), 0);
        assert_eq!(finish(&step), ("completed", None));
        let r = report(run.on_finished(json!({"checkpoint": "7"}), 1000));
        assert_eq!(r["records"], json!([]));
        assert_eq!(r["counts"]["inserted"], 0);
        assert_eq!(r["write_checkpoint"], "8");
        // begin and finish.
        assert_eq!(r["requests"], json!({"source": 0, "database": 2}));
    }

    #[test]
    fn a_batch_of_only_refused_records_writes_nothing_and_counts_them() {
        let (mut run, step) = start(&[json!(1), json!({"legacyId": "a"})]);
        assert_eq!(finish(&step), ("completed", None));
        let r = report(run.on_finished(json!({"checkpoint": "7"}), 1000));
        assert_eq!(r["counts"]["rejected"], 2);
        assert_eq!(r["records"][1]["status"], "rejected");
    }

    #[test]
    fn exactly_a_chunk_of_records_is_one_write() {
        let (mut run, step) = start(&notes(LEGACY_CHUNK));
        assert_eq!(run.chunks(), 1);
        let (sizes, r) = write_all(&mut run, step);
        assert_eq!(sizes, [LEGACY_CHUNK]);
        assert_eq!(r["counts"]["inserted"], LEGACY_CHUNK);
        assert_eq!(r["requests"]["database"], 3);
    }

    #[test]
    fn one_record_more_than_a_chunk_is_two_writes() {
        let (mut run, step) = start(&notes(LEGACY_CHUNK + 1));
        assert_eq!(run.chunks(), 2);
        let (sizes, r) = write_all(&mut run, step);
        assert_eq!(sizes, [LEGACY_CHUNK, 1]);
        assert_eq!(r["counts"]["inserted"], LEGACY_CHUNK + 1);
        assert_eq!(r["records"][LEGACY_CHUNK]["status"], "inserted");
        assert_eq!(r["records"][LEGACY_CHUNK]["id"], format!("id-{:06}", LEGACY_CHUNK));
        assert_eq!(r["requests"]["database"], 4);
    }

    #[test]
    fn refusals_are_sent_and_counted_once_across_several_chunks() {
        let mut records = vec![json!("not an object"), json!({"legacyId": "x", "legacyType": "journal"})];
        records.extend(notes(2 * LEGACY_CHUNK + 10));
        let (mut run, step) = start(&records);
        assert_eq!(run.chunks(), 3);
        let (chunk, args) = apply(&step);
        assert_eq!((chunk, &args["p_rows"]["rejected"]), (0, &json!(2)));
        // The database counts the two it was told of, and nothing else.
        let step = run.on_applied(inserted(args, 2));
        let (chunk, args) = apply(&step);
        assert_eq!((chunk, &args["p_rows"]["rejected"]), (1, &json!(0)));
        // It rejects one row of the second chunk itself.
        let step = run.on_applied(inserted(args, 1));
        let (chunk, args) = apply(&step);
        assert_eq!((chunk, &args["p_rows"]["rejected"]), (2, &json!(0)));
        let step = run.on_applied(inserted(args, 0));
        assert_eq!(finish(&step), ("completed", None));
        let r = report(run.on_finished(json!({"checkpoint": "41"}), 1000));
        assert_eq!(r["counts"]["rejected"], 3, "two refused here, one by the database");
        assert_eq!(r["counts"]["inserted"], 2 * LEGACY_CHUNK + 10);
    }

    #[test]
    fn a_database_that_counts_fewer_refusals_than_it_was_told_takes_none_back() {
        let (mut run, step) = start(&[json!(1), notes(1).remove(0)]);
        let (_, args) = apply(&step);
        let step = run.on_applied(inserted(args, 0));
        finish(&step);
        let r = report(run.on_finished(json!({"checkpoint": "41"}), 1000));
        assert_eq!(r["counts"]["rejected"], 1);
    }

    #[test]
    fn duplicates_are_refused_before_the_database_and_point_at_the_first() {
        let mut records = notes(2);
        records.push(json!({"legacyId": "n0", "legacyType": "note", "title": "again"}));
        records.push(json!({"legacyId": "n0", "legacyType": "task"}));
        let (mut run, step) = start(&records);
        let (_, args) = apply(&step);
        assert_eq!(entries(args), 3, "the duplicate is not sent");
        assert_eq!(args["p_rows"]["rejected"], 1);
        let (sizes, r) = write_all(&mut run, step);
        assert_eq!(sizes, [3]);
        assert_eq!(r["counts"]["rejected"], 1);
        assert_eq!(r["counts"]["inserted"], 3);
        assert_eq!(
            r["records"][2],
            json!({"index": 2, "legacyType": "note", "legacyId": "n0", "status": "duplicate", "duplicate_of": 0,
                   "reason": "record 0 has the same legacyType and legacyId"})
        );
        assert_eq!(r["records"][3]["status"], "inserted");
    }

    #[test]
    fn a_failure_in_the_second_chunk_finishes_the_run_as_failed() {
        let (mut run, step) = start(&notes(LEGACY_CHUNK + 3));
        let (_, args) = apply(&step);
        let step = run.on_applied(inserted(args, 0));
        assert_eq!(apply(&step).0, 1);
        let step = run.on_apply_failed(ApiError::unavailable("database_unavailable", "down"));
        assert_eq!(finish(&step), ("failed", Some("down")));
        assert_eq!(run.requests(), Requests { source: 0, database: 4 });
        let LegacyStep::Done(answer) = run.on_finished(json!({"checkpoint": "41"}), 1000) else { panic!() };
        let e = answer.unwrap_err();
        assert_eq!((e.code, e.message.as_str()), ("database_unavailable", "down"));
        assert!(e.details.is_none(), "a legacy batch has no continuation");
    }

    #[test]
    fn a_failed_write_answers_its_own_error_even_when_finish_fails_too() {
        let (mut run, step) = start(&notes(1));
        apply(&step);
        run.on_apply_failed(ApiError::unavailable("database_unavailable", "down"));
        let LegacyStep::Done(answer) = run.on_finish_failed(ApiError::internal("finish failed too")) else { panic!() };
        assert_eq!(answer.unwrap_err().code, "database_unavailable");
    }

    #[test]
    fn a_last_finish_that_fails_or_answers_no_checkpoint_is_the_calls_error() {
        let (mut run, step) = start(&notes(1));
        let (_, args) = apply(&step);
        run.on_applied(inserted(args, 0));
        let LegacyStep::Done(answer) = run.on_finish_failed(ApiError::internal("finish failed")) else { panic!() };
        assert_eq!(answer.unwrap_err().message, "finish failed");
        let (mut run, _) = start(&[]);
        let LegacyStep::Done(answer) = run.on_finished(json!({}), 1000) else { panic!() };
        assert_eq!(answer.unwrap_err().code, "upstream_bad_response");
    }

    #[test]
    fn an_answer_that_does_not_parse_counts_nothing_and_leaves_the_records_pending() {
        let (mut run, step) = start(&[json!(1), notes(1).remove(0)]);
        apply(&step);
        let step = run.on_applied(json!("not an answer"));
        assert_eq!(finish(&step), ("completed", None));
        let r = report(run.on_finished(json!({"checkpoint": "41"}), 1000));
        assert_eq!(r["counts"], json!({"inserted": 0, "updated": 0, "unchanged": 0, "skipped": 0, "rejected": 1}));
        assert_eq!(r["records"][1]["status"], "pending");
    }
}
