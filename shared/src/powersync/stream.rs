//! The decisions of one `POST /sync/stream` (design §2.7), as a sans-I/O state machine.
//!
//! The Worker drives [`StreamLoop`] like [`crate::live::LongPoll`]: it does what the
//! returned [`Action`] says (an RPC, a wait on the user's Durable Object, a sleep before
//! a retry), reports the result with the matching `on_*` call and the time it read, and
//! writes the bytes of every [`Turn`] to the response, in order. A page's data lines are
//! forwarded by the Worker itself, before it calls [`StreamLoop::on_page`].
//!
//! ```text
//! start → FetchCheckpoint ─on_checkpoint→ send checkpoint (first) or checkpoint_diff
//!   → FetchPage for every bucket whose `last` is above its position ─on_page→ …
//!   → all buckets at `last`, no `needs`: send checkpoint_complete; positions := h
//!       → Wait for a poke newer than W until the next keepalive
//!           poke → FetchCheckpoint (retried 10 ms → 1 s until W passes the poke)
//!           timeout → send token_expires_in; every 3rd: FetchCheckpoint anyway
//!   → a page reported `needs` (or a bucket fell short): no checkpoint_complete;
//!       FetchCheckpoint after 10 ms → 1 s until one covers `needs`, then go on paging
//! at any input: exp - now <= 20 s → token_expires_in, End;  now >= exp → 0, End
//! budget spent (subrequests, bytes) → End
//! ```
//!
//! Invariants: the checkpoint floor passed to the RPC is the largest watermark received
//! (never lower, §2.4); a checkpoint is completed only when every op up to it was sent;
//! every line is whole.

use std::collections::BTreeMap;

use super::lines::{checkpoint_complete_line, checkpoint_diff_line, checkpoint_line, token_expires_in_line};
use super::lines::{Checkpoint, PageTrailer};
use super::request::Resume;

/// A keepalive (`token_expires_in`) goes out when nothing was sent for this long, as
/// the PowerSync Service does (its `KEEPALIVE_INTERVAL`; without its ±10 % jitter).
pub const KEEPALIVE_MS: u64 = 20_000;
/// When the token expires within this, the stream says so and ends: the SDK fetches a
/// new token and reconnects at once, without showing a disconnect (design §1.5).
pub const EXPIRY_WARNING_MS: u64 = 20_000;
/// Every this many keepalives without a checkpoint check, check anyway: a lost poke
/// delays a change by at most about a minute, as with `/sync`.
pub const RECHECK_EVERY_KEEPALIVES: u32 = 3;
/// After a checkpoint that does not cover what the stream waits for (a poke, or a
/// page's `needs`), check again this soon, doubling up to [`MAX_RETRY_MS`].
pub const FIRST_RETRY_MS: u64 = crate::live::FIRST_RETRY_MS;
/// The slowest re-check, and the polling interval when the Durable Object cannot be
/// asked.
pub const MAX_RETRY_MS: u64 = crate::live::MAX_RETRY_MS;
/// The default subrequest budget of one stream (`PS_STREAM_MAX_SUBREQUESTS`); under
/// the 1,000 that older Workers limits pages give per request.
pub const DEFAULT_MAX_SUBREQUESTS: u32 = 900;
/// The default byte budget of one stream. A first sync larger than this ends cleanly
/// and resumes from the client's last op id on the next stream, with nothing sent twice.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// When a stream ends on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Actions that reach out (each RPC, each wait on the Durable Object) the stream
    /// may take. The Worker subtracts what it spent before the stream (a key fetch).
    pub max_subrequests: u32,
    /// Bytes the stream may send, page data included.
    pub max_bytes: u64,
}

/// The setting that caps a stream's subrequests.
pub const MAX_SUBREQUESTS_SETTING: &str = "PS_STREAM_MAX_SUBREQUESTS";

impl StreamLimits {
    /// The limits from the Worker's settings (`PS_STREAM_MAX_SUBREQUESTS`, 10 to 100,000,
    /// default [`DEFAULT_MAX_SUBREQUESTS`]); a malformed one is reported by name.
    pub fn from_settings(get: impl Fn(&str) -> Option<String>) -> Result<StreamLimits, crate::config::ConfigError> {
        let max =
            crate::config::whole_number(get, MAX_SUBREQUESTS_SETTING, u64::from(DEFAULT_MAX_SUBREQUESTS), 10, 100_000)?;
        Ok(StreamLimits { max_subrequests: max as u32, ..StreamLimits::default() })
    }
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits { max_subrequests: DEFAULT_MAX_SUBREQUESTS, max_bytes: DEFAULT_MAX_BYTES }
    }
}

/// What the Worker does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// At `at_ms` (now, or later for a retry), call `edgesync_ps_checkpoint(floor)` and
    /// report the answer with [`StreamLoop::on_checkpoint`].
    FetchCheckpoint { floor: u64, at_ms: u64 },
    /// Call `edgesync_ps_page` for these buckets, each from its position, up to `h`;
    /// forward the data lines; report the trailer with [`StreamLoop::on_page`].
    FetchPage { h: u64, after: BTreeMap<String, u64> },
    /// Ask the user's Durable Object for a poke newer than `after_w`, until `until_ms`;
    /// report with [`StreamLoop::on_wait`] or [`StreamLoop::on_wait_failed`].
    Wait { after_w: u64, until_ms: u64 },
    /// Close the stream: it ended cleanly (the reason is in [`StreamStats::ended`]).
    End,
}

/// The result of one input: bytes to write (zero or more whole lines), then an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub send: Vec<u8>,
    pub action: Action,
}

/// Why a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The token expired: `token_expires_in: 0` was sent.
    TokenExpired,
    /// The token expires within [`EXPIRY_WARNING_MS`]: the client reconnects with a new one.
    TokenExpiring,
    /// [`StreamLimits::max_subrequests`] was reached.
    SubrequestBudget,
    /// [`StreamLimits::max_bytes`] was reached.
    ByteBudget,
    /// The database answered a checkpoint below one already received (a restore while
    /// streaming): the client starts over on a new stream.
    CheckpointWentBack,
    /// An RPC failed ([`StreamLoop::on_fetch_failed`]).
    UpstreamFailed,
}

impl EndReason {
    /// The name for the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::TokenExpired => "token_expired",
            EndReason::TokenExpiring => "token_expiring",
            EndReason::SubrequestBudget => "subrequest_budget",
            EndReason::ByteBudget => "byte_budget",
            EndReason::CheckpointWentBack => "checkpoint_went_back",
            EndReason::UpstreamFailed => "upstream_failed",
        }
    }
}

/// What a stream did, for its end-of-stream log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub started_ms: u64,
    /// Lines sent, forwarded page lines included.
    pub lines: u64,
    /// Bytes sent, forwarded page lines included.
    pub bytes: u64,
    /// `checkpoint` and `checkpoint_diff` lines sent.
    pub checkpoints: u64,
    /// `checkpoint_complete` lines sent.
    pub completed: u64,
    /// Checkpoints whose completion was withheld: a page stopped before an op it could
    /// not serve (`needs`), or a bucket's pages fell short of its last op id.
    pub invalidated: u64,
    /// Buckets of the first checkpoint the client did not have: missing from the
    /// request, or requested with `after = "0"`. After a client's first full sync,
    /// anything but 0 means it lost a bucket (a checksum failure makes it start over).
    pub fresh_buckets: u64,
    /// Buckets of the request that were not this user's synced tables.
    pub ignored_buckets: u64,
    /// Page RPCs answered.
    pub pages: u64,
    /// Keepalive lines sent (expiry warnings not included).
    pub keepalives: u64,
    /// Subrequests spent (RPCs and waits).
    pub subrequests: u32,
    /// The request's floor was above the database's watermark and was dropped (the
    /// client is ahead of this database: a restore). Its checksums then fail and it
    /// downloads its buckets again, which is the repair.
    pub floor_dropped: bool,
    pub ended: Option<EndReason>,
}

impl StreamStats {
    /// The stream's own log line, written when it ends at `now_ms` (the request's line
    /// was written when its headers went out).
    pub fn end_log(&self, now_ms: u64) -> serde_json::Value {
        serde_json::json!({
            "event": "powersync_stream_end",
            "duration_ms": now_ms.saturating_sub(self.started_ms),
            "ended": self.ended.map(EndReason::as_str),
            "lines": self.lines,
            "bytes": self.bytes,
            "checkpoints": self.checkpoints,
            "completed": self.completed,
            "invalidated": self.invalidated,
            "fresh_buckets": self.fresh_buckets,
            "ignored_buckets": self.ignored_buckets,
            "pages": self.pages,
            "keepalives": self.keepalives,
            "subrequests": self.subrequests,
            "floor_dropped": self.floor_dropped,
        })
    }
}

/// One stream's state; see the module documentation.
#[derive(Debug, Clone)]
pub struct StreamLoop {
    user: String,
    exp_ms: u64,
    limits: StreamLimits,
    /// The request's positions; read at the first checkpoint.
    resume: BTreeMap<String, u64>,
    /// The floor of the next checkpoint: the request's, then the largest `w` received.
    floor: u64,
    /// The last checkpoint sent, and whether it was completed.
    cp: Option<Checkpoint>,
    completed: bool,
    /// Per bucket of `cp`, the last op id the client has (as it tracks it).
    pos: BTreeMap<String, u64>,
    /// A page of `cp` stopped before this op id: no completion before a checkpoint
    /// covers it.
    needs: Option<u64>,
    /// A poke (a write checkpoint position) newer than every checkpoint received.
    poked: Option<u64>,
    retry_ms: u64,
    keepalives_since_check: u32,
    last_sent_ms: u64,
    stats: StreamStats,
}

impl StreamLoop {
    /// A stream for `user` (the token's user id), whose token expires at `exp_secs`
    /// (the `exp` claim), resuming at `resume`.
    pub fn new(user: impl Into<String>, resume: Resume, exp_secs: u64, now_ms: u64, limits: StreamLimits) -> Self {
        StreamLoop {
            user: user.into(),
            exp_ms: exp_secs.saturating_mul(1000),
            limits,
            floor: resume.floor,
            resume: resume.after,
            cp: None,
            completed: false,
            pos: BTreeMap::new(),
            needs: None,
            poked: None,
            retry_ms: FIRST_RETRY_MS,
            keepalives_since_check: 0,
            last_sent_ms: now_ms,
            stats: StreamStats { started_ms: now_ms, ignored_buckets: resume.ignored as u64, ..StreamStats::default() },
        }
    }

    /// What the stream did so far.
    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    /// The floor the next checkpoint RPC gets.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// The first action: the first checkpoint (fetched before the response starts, so
    /// its errors can still be JSON answers).
    pub fn start(&mut self, now_ms: u64) -> Turn {
        match self.open(now_ms, false) {
            Ok(out) => self.act(out, Action::FetchCheckpoint { floor: self.floor, at_ms: now_ms }),
            Err(end) => end,
        }
    }

    /// The checkpoint RPC answered.
    pub fn on_checkpoint(&mut self, new: Checkpoint, now_ms: u64) -> Turn {
        let mut out = match self.open(now_ms, false) {
            Ok(out) => out,
            Err(end) => return end,
        };
        match self.cp.take() {
            None => {
                // The database drops a floor above its sequence (the client is ahead of
                // it); every later checkpoint is then measured from this one.
                self.stats.floor_dropped = new.w < self.floor;
                self.floor = new.w;
                self.pos = new
                    .buckets
                    .iter()
                    .map(|b| (b.table.clone(), self.resume.get(&b.table).copied().unwrap_or(0)))
                    .collect();
                self.stats.fresh_buckets = self.pos.values().filter(|after| **after == 0).count() as u64;
                self.resume = BTreeMap::new();
                self.send(&mut out, &checkpoint_line(&new, &self.user), now_ms);
                self.stats.checkpoints += 1;
                self.cp = Some(new);
                self.completed = false;
            }
            Some(cp) => {
                if new.w < self.floor {
                    self.cp = Some(cp);
                    return self.end(out, EndReason::CheckpointWentBack);
                }
                // A watermark received is valid from now on, sent or not (§2.4).
                self.floor = new.w;
                if self.needs.is_some_and(|needs| new.last_op_id < needs) {
                    // Still below an op a page could not serve: sending it would only
                    // stop the page again.
                    self.cp = Some(cp);
                    return self.retry(out, now_ms);
                }
                self.needs = None;
                if new != cp {
                    self.send(&mut out, &checkpoint_diff_line(&cp, &new, &self.user), now_ms);
                    self.stats.checkpoints += 1;
                    self.pos.retain(|table, _| new.bucket(table).is_some());
                    for b in &new.buckets {
                        self.pos.entry(b.table.clone()).or_insert(0);
                    }
                    self.cp = Some(new);
                    self.completed = false;
                } else {
                    self.cp = Some(cp);
                    if self.completed {
                        self.settle_poke();
                        return self.idle(out, now_ms);
                    }
                    // Not completed yet (its pages fell short): page it again.
                }
            }
        }
        self.settle_poke();
        self.page_or_complete(out, now_ms)
    }

    /// A page RPC answered, and the Worker forwarded its data lines, `forwarded`.
    pub fn on_page(&mut self, trailer: PageTrailer, forwarded: &[u8], now_ms: u64) -> Turn {
        if self.stats.ended.is_some() {
            return Turn { send: Vec::new(), action: Action::End };
        }
        self.stats.pages += 1;
        if !forwarded.is_empty() {
            self.stats.bytes += forwarded.len() as u64;
            self.stats.lines += memchr::memchr_iter(b'\n', forwarded).count() as u64;
            self.last_sent_ms = self.last_sent_ms.max(now_ms);
        }
        let out = match self.open(now_ms, false) {
            Ok(out) => out,
            Err(end) => return end,
        };
        let Some(cp) = &self.cp else {
            // A page before any checkpoint: nothing to page for.
            return self.act(out, Action::FetchCheckpoint { floor: self.floor, at_ms: now_ms });
        };
        for (table, next) in trailer.next {
            if let Some(pos) = self.pos.get_mut(&table) {
                *pos = (*pos).max(next);
            }
        }
        if let Some(needs) = trailer.needs {
            self.needs = Some(self.needs.map_or(needs, |n| n.max(needs)));
        }
        let more: BTreeMap<String, u64> = trailer
            .more
            .into_iter()
            .filter_map(|table| {
                let pos = self.pos.get(&table).copied()?;
                cp.bucket(&table).filter(|b| b.last > pos).map(|_| (table, pos))
            })
            .collect();
        if !more.is_empty() {
            let h = cp.last_op_id;
            return self.act(out, Action::FetchPage { h, after: more });
        }
        let short = cp.buckets.iter().any(|b| self.pos.get(&b.table).is_some_and(|pos| *pos < b.last));
        if self.needs.is_some() || short {
            self.stats.invalidated += 1;
            return self.retry(out, now_ms);
        }
        self.complete(out, now_ms)
    }

    /// The Durable Object answered: `Some(checkpoint)` for a poke (the writing
    /// transaction's position + 1), `None` when the wait timed out.
    pub fn on_wait(&mut self, poked: Option<u64>, now_ms: u64) -> Turn {
        let out = match self.open(now_ms, poked.is_none()) {
            Ok(out) => out,
            Err(end) => return end,
        };
        match poked {
            Some(c) if c > self.floor => {
                self.poked = self.poked.max(Some(c));
                self.act(out, Action::FetchCheckpoint { floor: self.floor, at_ms: now_ms })
            }
            None if self.keepalives_since_check >= RECHECK_EVERY_KEEPALIVES => {
                self.act(out, Action::FetchCheckpoint { floor: self.floor, at_ms: now_ms })
            }
            // A timeout between rechecks, or a poke the stream already covers.
            _ => self.wait(out),
        }
    }

    /// The Durable Object could not be asked: check the checkpoint once a second
    /// instead (between checks the stream tries the Durable Object again).
    pub fn on_wait_failed(&mut self, now_ms: u64) -> Turn {
        let out = match self.open(now_ms, false) {
            Ok(out) => out,
            Err(end) => return end,
        };
        let at_ms = self.before_warning(now_ms.saturating_add(MAX_RETRY_MS));
        self.act(out, Action::FetchCheckpoint { floor: self.floor, at_ms })
    }

    /// An RPC failed: end the stream. Mid-stream no error can be answered; the client
    /// reconnects and resumes from its last op id.
    pub fn on_fetch_failed(&mut self, _now_ms: u64) -> Turn {
        if self.stats.ended.is_some() {
            return Turn { send: Vec::new(), action: Action::End };
        }
        self.end(Vec::new(), EndReason::UpstreamFailed)
    }

    /// Checks made at every input: the token's expiry first, then a keepalive when one
    /// is due (or `force`d: the wait for a poke timed out). `Err` is the final turn.
    fn open(&mut self, now_ms: u64, force_keepalive: bool) -> Result<Vec<u8>, Turn> {
        if self.stats.ended.is_some() {
            return Err(Turn { send: Vec::new(), action: Action::End });
        }
        let mut out = Vec::new();
        if now_ms >= self.exp_ms {
            self.send(&mut out, &token_expires_in_line(0), now_ms);
            return Err(self.end(out, EndReason::TokenExpired));
        }
        let left_ms = self.exp_ms - now_ms;
        // Rounded up: a positive count makes the SDK refresh, 0 would read as expired.
        let left_secs = i64::try_from(left_ms.div_ceil(1000)).unwrap_or(i64::MAX);
        if left_ms <= EXPIRY_WARNING_MS {
            self.send(&mut out, &token_expires_in_line(left_secs), now_ms);
            return Err(self.end(out, EndReason::TokenExpiring));
        }
        if force_keepalive || now_ms >= self.last_sent_ms.saturating_add(KEEPALIVE_MS) {
            self.send(&mut out, &token_expires_in_line(left_secs), now_ms);
            self.stats.keepalives += 1;
            self.keepalives_since_check += 1;
        }
        Ok(out)
    }

    fn send(&mut self, out: &mut Vec<u8>, line: &str, now_ms: u64) {
        out.extend_from_slice(line.as_bytes());
        self.stats.lines += 1;
        self.stats.bytes += line.len() as u64;
        self.last_sent_ms = self.last_sent_ms.max(now_ms);
    }

    /// Finish a turn with `action`, unless a budget is spent.
    fn act(&mut self, out: Vec<u8>, action: Action) -> Turn {
        if self.stats.bytes >= self.limits.max_bytes {
            return self.end(out, EndReason::ByteBudget);
        }
        if self.stats.subrequests >= self.limits.max_subrequests {
            return self.end(out, EndReason::SubrequestBudget);
        }
        self.stats.subrequests += 1;
        if matches!(action, Action::FetchCheckpoint { .. }) {
            self.keepalives_since_check = 0;
        }
        Turn { send: out, action }
    }

    fn end(&mut self, out: Vec<u8>, reason: EndReason) -> Turn {
        self.stats.ended = Some(reason);
        Turn { send: out, action: Action::End }
    }

    /// Forget a poke the floor covers.
    fn settle_poke(&mut self) {
        if self.poked.is_some_and(|c| c <= self.floor) {
            self.poked = None;
        }
    }

    /// Page every bucket whose last op id is above the client's position; with nothing
    /// to page, complete the checkpoint.
    fn page_or_complete(&mut self, out: Vec<u8>, now_ms: u64) -> Turn {
        let Some(cp) = &self.cp else {
            return self.act(out, Action::FetchCheckpoint { floor: self.floor, at_ms: now_ms });
        };
        let after: BTreeMap<String, u64> = cp
            .buckets
            .iter()
            .filter_map(|b| {
                let pos = self.pos.get(&b.table).copied().unwrap_or(0);
                (b.last > pos).then(|| (b.table.clone(), pos))
            })
            .collect();
        if after.is_empty() {
            self.complete(out, now_ms)
        } else {
            let h = cp.last_op_id;
            self.act(out, Action::FetchPage { h, after })
        }
    }

    fn complete(&mut self, mut out: Vec<u8>, now_ms: u64) -> Turn {
        let Some(h) = self.cp.as_ref().map(|cp| cp.last_op_id) else {
            return self.act(out, Action::FetchCheckpoint { floor: self.floor, at_ms: now_ms });
        };
        self.send(&mut out, &checkpoint_complete_line(h), now_ms);
        self.stats.completed += 1;
        self.completed = true;
        // The client sets every bucket's last op id to the checkpoint's.
        for pos in self.pos.values_mut() {
            *pos = h;
        }
        self.idle(out, now_ms)
    }

    /// The checkpoint is complete: wait for a poke, or keep checking while a poke the
    /// watermark has not passed is pending.
    fn idle(&mut self, out: Vec<u8>, now_ms: u64) -> Turn {
        if self.poked.is_some() {
            return self.retry(out, now_ms);
        }
        self.retry_ms = FIRST_RETRY_MS;
        self.wait(out)
    }

    fn wait(&mut self, out: Vec<u8>) -> Turn {
        let until_ms = self.before_warning(self.last_sent_ms.saturating_add(KEEPALIVE_MS));
        self.act(out, Action::Wait { after_w: self.floor, until_ms })
    }

    /// Check the checkpoint again after the current backoff, which then doubles.
    fn retry(&mut self, out: Vec<u8>, now_ms: u64) -> Turn {
        let at_ms = self.before_warning(now_ms.saturating_add(self.retry_ms));
        self.retry_ms = (self.retry_ms * 2).min(MAX_RETRY_MS);
        self.act(out, Action::FetchCheckpoint { floor: self.floor, at_ms })
    }

    /// `at_ms`, but not after the expiry warning is due.
    fn before_warning(&self, at_ms: u64) -> u64 {
        at_ms.min(self.exp_ms.saturating_sub(EXPIRY_WARNING_MS))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn the_end_log_names_why_and_how_long_and_every_count() {
        let stats = StreamStats {
            started_ms: 1_000,
            lines: 7,
            bytes: 700,
            pages: 2,
            subrequests: 5,
            ended: Some(EndReason::TokenExpiring),
            ..StreamStats::default()
        };
        let log = stats.end_log(4_500);
        assert_eq!(log["event"], "powersync_stream_end");
        assert_eq!(log["duration_ms"], 3_500);
        assert_eq!(log["ended"], "token_expiring");
        assert_eq!((log["lines"].as_u64(), log["bytes"].as_u64()), (Some(7), Some(700)));
        assert_eq!((log["pages"].as_u64(), log["subrequests"].as_u64()), (Some(2), Some(5)));
        assert_eq!(log["floor_dropped"], false);
        assert_eq!(log.as_object().unwrap().len(), 14);
        // A clock that went back gives 0, and a stream still open has no reason.
        let open = StreamStats { started_ms: 9, ..StreamStats::default() }.end_log(1);
        assert_eq!((open["duration_ms"].as_u64(), open["ended"].is_null()), (Some(0), true));
    }
    use crate::powersync::lines::BucketChecksum;
    use crate::powersync::op_id::{last_op_id, op_id};
    use serde_json::{json, Value};

    pub(in crate::powersync) const U: &str = "6f1c0000-0000-4000-8000-000000000001";
    /// The stream starts at T; the token has an hour left.
    pub(in crate::powersync) const T: u64 = 1_000_000;
    const EXP: u64 = T / 1000 + 3600;

    pub(in crate::powersync) fn b(table: &str, checksum: u32, count: u64, last: u64) -> BucketChecksum {
        BucketChecksum { table: table.into(), checksum, count, last }
    }

    pub(in crate::powersync) fn cp(w: u64, buckets: Vec<BucketChecksum>) -> Checkpoint {
        Checkpoint::new(w, buckets).unwrap()
    }

    pub(in crate::powersync) fn h(w: u64) -> u64 {
        last_op_id(w).unwrap()
    }

    pub(in crate::powersync) fn op(block: u64, seq: u64) -> u64 {
        op_id(block, seq).unwrap()
    }

    fn resume(after: &[(&str, u64)], floor: u64) -> Resume {
        Resume { after: after.iter().map(|(t, a)| (t.to_string(), *a)).collect(), floor, ignored: 0 }
    }

    pub(in crate::powersync) fn stream(after: &[(&str, u64)], floor: u64) -> StreamLoop {
        StreamLoop::new(U, resume(after, floor), EXP, T, StreamLimits::default())
    }

    fn trailer(next: &[(&str, u64)], more: &[&str], needs: Option<u64>) -> PageTrailer {
        PageTrailer {
            next: next.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
            more: more.iter().map(|t| t.to_string()).collect(),
            needs,
        }
    }

    fn lines(turn: &Turn) -> Vec<Value> {
        let text = std::str::from_utf8(&turn.send).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'), "whole lines only: {text:?}");
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn page(h: u64, after: &[(&str, u64)]) -> Action {
        Action::FetchPage { h, after: after.iter().map(|(t, a)| (t.to_string(), *a)).collect() }
    }

    fn complete(w: u64) -> Value {
        json!({"checkpoint_complete": {"last_op_id": h(w).to_string()}})
    }

    /// A stream whose first checkpoint (at `w`, with `buckets`) had nothing to page and
    /// was completed at T, now waiting.
    fn waiting(w: u64, buckets: Vec<BucketChecksum>) -> StreamLoop {
        let after: Vec<(String, u64)> = buckets.iter().map(|b| (b.table.clone(), h(w))).collect();
        let after: Vec<(&str, u64)> = after.iter().map(|(t, a)| (t.as_str(), *a)).collect();
        let mut s = stream(&after, w);
        s.start(T);
        let turn = s.on_checkpoint(cp(w, buckets), T);
        assert_eq!(lines(&turn)[1], complete(w));
        assert_eq!(turn.action, Action::Wait { after_w: w, until_ms: T + KEEPALIVE_MS });
        s
    }

    #[test]
    fn the_first_checkpoint_is_sent_whole_and_pages_resume_from_the_requested_positions() {
        let mut s = stream(&[("entries", h(100)), ("gone", h(100))], 100);
        assert_eq!(s.start(T), Turn { send: Vec::new(), action: Action::FetchCheckpoint { floor: 100, at_ms: T } });
        let first = cp(105, vec![b("entries", 7, 3, op(103, 2)), b("notes", 8, 1, op(101, 1)), b("tags", 0, 0, 0)]);
        let turn = s.on_checkpoint(first, T);
        assert_eq!(
            lines(&turn),
            [json!({"checkpoint": {
                "last_op_id": h(105).to_string(),
                "write_checkpoint": (105u64 << 24).to_string(),
                "buckets": [
                    {"bucket": format!("entries:{U}"), "checksum": 7, "count": 3, "priority": 3},
                    {"bucket": format!("notes:{U}"), "checksum": 8, "count": 1, "priority": 3},
                    {"bucket": format!("tags:{U}"), "checksum": 0, "count": 0, "priority": 3},
                ]
            }})]
        );
        // `tags` has no op: nothing to page. `notes` is new to the client: from 0.
        assert_eq!(turn.action, page(h(105), &[("entries", h(100)), ("notes", 0)]));
        assert_eq!(s.stats().fresh_buckets, 2, "notes and tags were not in the request");
        assert_eq!(s.stats().checkpoints, 1);
    }

    #[test]
    fn pages_follow_more_then_complete_sets_every_position_to_the_checkpoint() {
        let mut s = stream(&[("entries", h(100))], 100);
        s.start(T);
        s.on_checkpoint(cp(105, vec![b("entries", 7, 3, op(103, 2)), b("notes", 8, 2, op(101, 1))]), T);
        let data = b"{\"data\":{\"bucket\":\"entries\"}}\n{\"data\":{\"bucket\":\"notes\"}}\n";
        let turn = s.on_page(trailer(&[("entries", op(103, 2)), ("notes", op(100, 5))], &["notes"], None), data, T + 5);
        assert_eq!(turn, Turn { send: Vec::new(), action: page(h(105), &[("notes", op(100, 5))]) });
        let turn = s.on_page(trailer(&[("notes", op(101, 1))], &[], None), b"{\"data\":{}}\n", T + 9);
        assert_eq!(lines(&turn), [complete(105)]);
        assert_eq!(turn.action, Action::Wait { after_w: 105, until_ms: T + 9 + KEEPALIVE_MS });
        assert_eq!((s.stats().lines, s.stats().pages, s.stats().completed), (5, 2, 1));
        // Every bucket is now at h(105), as the client has it: the next checkpoint
        // pages only what is above it.
        s.on_wait(Some(107), T + 100);
        let turn =
            s.on_checkpoint(cp(107, vec![b("entries", 9, 4, op(106, 1)), b("notes", 8, 2, op(101, 1))]), T + 101);
        assert_eq!(turn.action, page(h(107), &[("entries", h(105))]));
    }

    #[test]
    fn later_checkpoints_are_sent_as_diffs_even_without_a_bucket_change() {
        let mut s = waiting(100, vec![b("entries", 7, 3, op(99, 1))]);
        assert_eq!(s.on_wait(Some(101), T + 50).action, Action::FetchCheckpoint { floor: 100, at_ms: T + 50 });
        let turn = s.on_checkpoint(cp(101, vec![b("entries", 7, 3, op(99, 1))]), T + 60);
        assert_eq!(
            lines(&turn),
            [
                json!({"checkpoint_diff": {"last_op_id": h(101).to_string(), "write_checkpoint": (101u64 << 24).to_string(),
                                           "updated_buckets": [], "removed_buckets": []}}),
                complete(101),
            ]
        );
        assert_eq!(turn.action, Action::Wait { after_w: 101, until_ms: T + 60 + KEEPALIVE_MS });
    }

    #[test]
    fn a_diff_drops_removed_buckets_and_pages_new_ones_from_zero() {
        let mut s = waiting(100, vec![b("a", 1, 1, op(99, 1)), b("b", 2, 1, op(99, 2))]);
        s.on_wait(Some(101), T + 1);
        let turn = s.on_checkpoint(cp(101, vec![b("a", 1, 1, op(99, 1)), b("c", 5, 1, op(100, 1))]), T + 2);
        let diff = &lines(&turn)[0]["checkpoint_diff"];
        assert_eq!(
            diff["updated_buckets"],
            json!([{"bucket": format!("c:{U}"), "checksum": 5, "count": 1, "priority": 3}])
        );
        assert_eq!(diff["removed_buckets"], json!([format!("b:{U}")]));
        assert_eq!(turn.action, page(h(101), &[("c", 0)]));
    }

    #[test]
    fn an_unchanged_checkpoint_sends_nothing_and_waits_again() {
        let mut s = waiting(100, vec![b("entries", 7, 3, op(99, 1))]);
        let subrequests = s.stats().subrequests;
        s.on_wait(None, T + KEEPALIVE_MS);
        s.on_wait(None, T + 2 * KEEPALIVE_MS);
        let turn = s.on_wait(None, T + 3 * KEEPALIVE_MS);
        assert_eq!(turn.action, Action::FetchCheckpoint { floor: 100, at_ms: T + 3 * KEEPALIVE_MS });
        let turn = s.on_checkpoint(cp(100, vec![b("entries", 7, 3, op(99, 1))]), T + 3 * KEEPALIVE_MS + 5);
        assert!(turn.send.is_empty());
        assert_eq!(turn.action, Action::Wait { after_w: 100, until_ms: T + 4 * KEEPALIVE_MS });
        assert_eq!(s.stats().subrequests, subrequests + 4, "two waits, a checkpoint, a wait");
        assert_eq!(s.stats().checkpoints, 1);
    }

    #[test]
    fn keepalives_go_out_every_20_seconds_and_every_third_rechecks_the_checkpoint() {
        let mut s = waiting(100, vec![]);
        let turn = s.on_wait(None, T + KEEPALIVE_MS);
        assert_eq!(lines(&turn), [json!({"token_expires_in": 3580})]);
        assert_eq!(turn.action, Action::Wait { after_w: 100, until_ms: T + 2 * KEEPALIVE_MS });
        let turn = s.on_wait(None, T + 2 * KEEPALIVE_MS);
        assert_eq!(lines(&turn), [json!({"token_expires_in": 3560})]);
        assert!(matches!(turn.action, Action::Wait { .. }));
        let turn = s.on_wait(None, T + 3 * KEEPALIVE_MS);
        assert_eq!(lines(&turn), [json!({"token_expires_in": 3540})]);
        assert_eq!(turn.action, Action::FetchCheckpoint { floor: 100, at_ms: T + 3 * KEEPALIVE_MS });
        // The count starts over after a check.
        s.on_checkpoint(cp(100, vec![]), T + 3 * KEEPALIVE_MS);
        assert!(matches!(s.on_wait(None, T + 4 * KEEPALIVE_MS).action, Action::Wait { .. }));
        assert_eq!(s.stats().keepalives, 4);
    }

    #[test]
    fn a_page_that_needs_a_later_watermark_withholds_checkpoint_complete() {
        let mut s = stream(&[], 0);
        s.start(T);
        s.on_checkpoint(cp(100, vec![b("entries", 7, 3, op(99, 3))]), T);
        // The page stopped before op (99, 2): that row has a newer version in block 101.
        let turn = s.on_page(trailer(&[("entries", op(99, 1))], &[], Some(op(101, 1))), b"{\"data\":{}}\n", T + 1);
        assert!(turn.send.is_empty(), "no checkpoint_complete");
        assert_eq!(turn.action, Action::FetchCheckpoint { floor: 100, at_ms: T + 1 + 10 });
        assert_eq!(s.stats().invalidated, 1);
        // Checkpoints that do not cover the op yet are not sent; the checks back off,
        // and the floor follows the watermarks received.
        let turn = s.on_checkpoint(cp(101, vec![b("entries", 7, 3, op(99, 3))]), T + 11);
        assert_eq!((turn.send.len(), turn.action), (0, Action::FetchCheckpoint { floor: 101, at_ms: T + 11 + 20 }));
        let turn = s.on_checkpoint(cp(101, vec![b("entries", 7, 3, op(99, 3))]), T + 31);
        assert_eq!(turn.action, Action::FetchCheckpoint { floor: 101, at_ms: T + 31 + 40 });
        // One that covers it: a diff, and the pages go on from where they stopped.
        let turn = s.on_checkpoint(cp(102, vec![b("entries", 9, 4, op(101, 1))]), T + 71);
        let sent = lines(&turn);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0]["checkpoint_diff"]["last_op_id"], h(102).to_string());
        assert_eq!(turn.action, page(h(102), &[("entries", op(99, 1))]));
        let turn = s.on_page(trailer(&[("entries", op(101, 1))], &[], None), b"{\"data\":{}}\n", T + 72);
        assert_eq!(lines(&turn), [complete(102)]);
        assert_eq!((s.stats().invalidated, s.stats().completed), (1, 1));
    }

    #[test]
    fn a_reported_need_withholds_completion_even_when_every_bucket_reached_its_last_op() {
        let mut s = stream(&[], 0);
        s.start(T);
        s.on_checkpoint(cp(100, vec![b("entries", 7, 3, op(99, 3))]), T);
        let turn = s.on_page(trailer(&[("entries", op(99, 3))], &[], Some(op(100, 1))), b"{\"data\":{}}\n", T + 1);
        assert!(turn.send.is_empty(), "no checkpoint_complete");
        assert_eq!(turn.action, Action::FetchCheckpoint { floor: 100, at_ms: T + 11 });
        let turn = s.on_checkpoint(cp(101, vec![b("entries", 7, 3, op(99, 3))]), T + 11);
        assert_eq!(lines(&turn).len(), 2, "a diff and, with nothing left to page, its completion");
        assert_eq!(lines(&turn)[1], complete(101));
    }

    #[test]
    fn pages_that_fall_short_of_a_buckets_last_op_withhold_completion_and_are_retried() {
        let mut s = stream(&[], 0);
        s.start(T);
        s.on_checkpoint(cp(100, vec![b("entries", 7, 3, op(99, 3))]), T);
        let turn = s.on_page(trailer(&[("entries", op(99, 1))], &[], None), b"", T + 1);
        assert!(turn.send.is_empty());
        assert_eq!(turn.action, Action::FetchCheckpoint { floor: 100, at_ms: T + 11 });
        assert_eq!(s.stats().invalidated, 1);
        // The same checkpoint again: not re-sent, but paged again from the position.
        let turn = s.on_checkpoint(cp(100, vec![b("entries", 7, 3, op(99, 3))]), T + 11);
        assert!(turn.send.is_empty());
        assert_eq!(turn.action, page(h(100), &[("entries", op(99, 1))]));
        let turn = s.on_page(trailer(&[("entries", op(99, 3))], &[], None), b"", T + 12);
        assert_eq!(lines(&turn), [complete(100)]);
    }

    #[test]
    fn a_page_that_needs_a_later_watermark_still_sends_the_other_buckets_pages() {
        let mut s = stream(&[], 0);
        s.start(T);
        s.on_checkpoint(cp(100, vec![b("a", 1, 1, op(99, 1)), b("b", 2, 9, op(99, 9))]), T);
        let turn = s.on_page(trailer(&[("a", 0), ("b", op(99, 4))], &["b"], Some(op(103, 1))), b"", T + 1);
        assert_eq!(turn.action, page(h(100), &[("b", op(99, 4))]));
        let turn = s.on_page(trailer(&[("b", op(99, 9))], &[], None), b"", T + 2);
        assert!(turn.send.is_empty(), "the `needs` of an earlier page still withholds completion");
        assert!(matches!(turn.action, Action::FetchCheckpoint { .. }));
    }

    #[test]
    fn the_checkpoint_floor_never_goes_down() {
        let mut s = stream(&[("entries", h(100))], 100);
        assert_eq!(s.start(T).action, Action::FetchCheckpoint { floor: 100, at_ms: T });
        s.on_checkpoint(cp(120, vec![b("entries", 1, 1, op(99, 1))]), T);
        assert_eq!(s.floor(), 120);
        // Poked for 130; the watermark is at 125, then steps back to 119.
        assert_eq!(s.on_wait(Some(130), T + 5).action, Action::FetchCheckpoint { floor: 120, at_ms: T + 5 });
        let turn = s.on_checkpoint(cp(125, vec![b("entries", 1, 1, op(99, 1))]), T + 6);
        assert_eq!(lines(&turn)[1], complete(125));
        assert_eq!(turn.action, Action::FetchCheckpoint { floor: 125, at_ms: T + 16 });
        let turn = s.on_checkpoint(cp(119, vec![b("entries", 1, 1, op(99, 1))]), T + 16);
        assert_eq!(turn, Turn { send: Vec::new(), action: Action::End });
        assert_eq!(s.stats().ended, Some(EndReason::CheckpointWentBack));
    }

    #[test]
    fn a_request_floor_the_database_does_not_reach_is_dropped_at_the_first_checkpoint() {
        let mut s = stream(&[("entries", h(500))], 500);
        s.start(T);
        let turn = s.on_checkpoint(cp(120, vec![b("entries", 1, 1, op(99, 1))]), T);
        assert_eq!(lines(&turn).len(), 2, "checkpoint and complete: the client's checksums fail and it starts over");
        assert!(s.stats().floor_dropped);
        assert_eq!(s.floor(), 120);
        assert_eq!(s.on_wait(Some(121), T + 1).action, Action::FetchCheckpoint { floor: 120, at_ms: T + 1 });
    }

    #[test]
    fn a_poke_ahead_of_the_watermark_is_rechecked_with_backoff_until_it_is_covered() {
        let mut s = waiting(100, vec![b("entries", 7, 3, op(99, 1))]);
        s.on_wait(Some(105), T + 100);
        // The watermark moved to 102 (others' writes) but not past the poke.
        let turn = s.on_checkpoint(cp(102, vec![b("entries", 7, 3, op(99, 1))]), T + 101);
        assert_eq!(lines(&turn).len(), 2, "a diff and its completion");
        assert_eq!(turn.action, Action::FetchCheckpoint { floor: 102, at_ms: T + 111 });
        let turn = s.on_checkpoint(cp(102, vec![b("entries", 7, 3, op(99, 1))]), T + 111);
        assert!(turn.send.is_empty());
        assert_eq!(turn.action, Action::FetchCheckpoint { floor: 102, at_ms: T + 131 });
        let mut at = T + 131;
        for _ in 0..20 {
            match s.on_checkpoint(cp(102, vec![b("entries", 7, 3, op(99, 1))]), at).action {
                Action::FetchCheckpoint { at_ms, .. } => {
                    assert!(at_ms > at && at_ms - at <= MAX_RETRY_MS);
                    at = at_ms;
                }
                other => panic!("{other:?}"),
            }
        }
        let turn = s.on_checkpoint(cp(105, vec![b("entries", 8, 4, op(104, 1))]), at);
        assert_eq!(turn.action, page(h(105), &[("entries", h(102))]));
        let turn = s.on_page(trailer(&[("entries", op(104, 1))], &[], None), b"{\"data\":{}}\n", at + 1);
        assert_eq!(lines(&turn), [complete(105)]);
        assert_eq!(turn.action, Action::Wait { after_w: 105, until_ms: at + 1 + KEEPALIVE_MS });
        // A poke the stream has covered already goes back to waiting, and the backoff
        // starts over for the next one.
        assert_eq!(s.on_wait(Some(104), at + 2).action, Action::Wait { after_w: 105, until_ms: at + 1 + KEEPALIVE_MS });
        s.on_wait(Some(106), at + 3);
        s.on_checkpoint(cp(105, vec![b("entries", 8, 4, op(104, 1))]), at + 4);
        let turn = s.on_checkpoint(cp(105, vec![b("entries", 8, 4, op(104, 1))]), at + 5);
        assert_eq!(turn.action, Action::FetchCheckpoint { floor: 105, at_ms: at + 5 + 20 });
    }

    #[test]
    fn a_long_stall_still_sends_keepalives() {
        let mut s = stream(&[], 0);
        s.start(T);
        s.on_checkpoint(cp(100, vec![b("entries", 7, 3, op(99, 3))]), T);
        s.on_page(trailer(&[], &[], Some(op(150, 1))), b"", T);
        let mut now = T;
        let mut keepalives = Vec::new();
        while now < T + 45_000 {
            let turn = s.on_checkpoint(cp(100, vec![b("entries", 7, 3, op(99, 3))]), now);
            keepalives.extend(lines(&turn).into_iter().map(|l| (now, l)));
            let Action::FetchCheckpoint { at_ms, .. } = turn.action else { panic!("{:?}", turn.action) };
            now = at_ms;
        }
        let times: Vec<u64> = keepalives.iter().map(|(t, _)| t - T).collect();
        assert_eq!(times.len(), 2, "{times:?}");
        assert!(times[0] >= KEEPALIVE_MS && times[0] < KEEPALIVE_MS + MAX_RETRY_MS, "{times:?}");
        assert!(times[1] - times[0] >= KEEPALIVE_MS && times[1] - times[0] < KEEPALIVE_MS + MAX_RETRY_MS);
        assert!(keepalives.iter().all(|(_, l)| l.get("token_expires_in").is_some()));
    }

    #[test]
    fn the_expiry_warning_ends_the_stream_and_waits_never_pass_it() {
        let exp_ms = EXP * 1000;
        let mut s = waiting(100, vec![]);
        let warn = exp_ms - EXPIRY_WARNING_MS;
        let mut now = T;
        let turn = loop {
            let turn = s.on_wait(None, now);
            match turn.action {
                Action::Wait { until_ms, .. } => {
                    assert!(until_ms <= warn);
                    now = until_ms;
                }
                Action::FetchCheckpoint { .. } => {
                    let turn = s.on_checkpoint(cp(100, vec![]), now);
                    assert!(matches!(turn.action, Action::Wait { .. }), "{turn:?}");
                }
                _ => break turn,
            }
        };
        assert_eq!(now, warn, "the last wait ends when the warning is due");
        assert_eq!(lines(&turn), [json!({"token_expires_in": 20})]);
        assert_eq!(turn.action, Action::End);
        assert_eq!(s.stats().ended, Some(EndReason::TokenExpiring));
        // After the end, every input ends again, saying nothing.
        assert_eq!(s.on_wait(Some(200), now + 1), Turn { send: Vec::new(), action: Action::End });
        assert_eq!(s.on_page(trailer(&[], &[], None), b"x\n", now + 1).action, Action::End);
        assert_eq!(s.on_fetch_failed(now + 1).send, Vec::<u8>::new());
        assert_eq!(s.stats().ended, Some(EndReason::TokenExpiring));
    }

    #[test]
    fn the_warning_rounds_the_seconds_left_up() {
        let mut s = StreamLoop::new(U, Resume::default(), EXP, T, StreamLimits::default());
        let turn = s.start(EXP * 1000 - 19_500);
        assert_eq!(lines(&turn), [json!({"token_expires_in": 20})]);
        let mut s = StreamLoop::new(U, Resume::default(), EXP, T, StreamLimits::default());
        let turn = s.start(EXP * 1000 - 1);
        assert_eq!(lines(&turn), [json!({"token_expires_in": 1})], "never 0 before the expiry");
        assert_eq!(turn.action, Action::End);
    }

    #[test]
    fn at_expiry_the_stream_sends_zero_and_ends() {
        let mut s = stream(&[], 0);
        s.start(T);
        let turn = s.on_checkpoint(cp(100, vec![]), EXP * 1000);
        assert_eq!(lines(&turn), [json!({"token_expires_in": 0})]);
        assert_eq!(turn.action, Action::End);
        assert_eq!(s.stats().ended, Some(EndReason::TokenExpired));
        assert_eq!(s.stats().checkpoints, 0);
    }

    #[test]
    fn the_subrequest_budget_ends_the_stream_cleanly() {
        let limits = StreamLimits { max_subrequests: 3, ..StreamLimits::default() };
        let mut s = StreamLoop::new(U, Resume::default(), EXP, T, limits);
        s.start(T);
        let turn = s.on_checkpoint(cp(100, vec![b("entries", 1, 9, op(99, 9))]), T);
        assert!(matches!(turn.action, Action::FetchPage { .. }));
        let turn = s.on_page(trailer(&[("entries", op(99, 3))], &["entries"], None), b"{}\n", T);
        assert!(matches!(turn.action, Action::FetchPage { .. }));
        let turn = s.on_page(trailer(&[("entries", op(99, 6))], &["entries"], None), b"{}\n", T);
        assert_eq!(turn, Turn { send: Vec::new(), action: Action::End });
        assert_eq!(s.stats().ended, Some(EndReason::SubrequestBudget));
        assert_eq!(s.stats().subrequests, 3);
    }

    #[test]
    fn the_byte_budget_counts_forwarded_pages_and_ends_the_stream_cleanly() {
        let limits = StreamLimits { max_bytes: 1000, ..StreamLimits::default() };
        let mut s = StreamLoop::new(U, Resume::default(), EXP, T, limits);
        s.start(T);
        s.on_checkpoint(cp(100, vec![b("entries", 1, 9, op(99, 9))]), T);
        let data = format!("{}\n{}\n", "x".repeat(600), "y".repeat(600));
        let turn = s.on_page(trailer(&[("entries", op(99, 3))], &["entries"], None), data.as_bytes(), T);
        assert_eq!(turn.action, Action::End);
        assert_eq!(s.stats().ended, Some(EndReason::ByteBudget));
        assert!(s.stats().bytes > 1200);
        assert_eq!(s.stats().lines, 3, "the checkpoint and two forwarded lines");
    }

    #[test]
    fn without_the_durable_object_the_checkpoint_is_checked_once_a_second() {
        let mut s = waiting(100, vec![]);
        assert_eq!(s.on_wait_failed(T + 5).action, Action::FetchCheckpoint { floor: 100, at_ms: T + 5 + MAX_RETRY_MS });
        let turn = s.on_checkpoint(cp(100, vec![]), T + 5 + MAX_RETRY_MS);
        assert!(matches!(turn.action, Action::Wait { .. }), "then the Durable Object is tried again");
    }

    #[test]
    fn a_failed_rpc_ends_the_stream() {
        let mut s = stream(&[], 0);
        s.start(T);
        assert_eq!(s.on_fetch_failed(T + 1), Turn { send: Vec::new(), action: Action::End });
        assert_eq!(s.stats().ended, Some(EndReason::UpstreamFailed));
        assert_eq!(EndReason::UpstreamFailed.as_str(), "upstream_failed");
    }

    #[test]
    fn a_returning_client_with_every_bucket_is_not_fresh() {
        let mut s = stream(&[("a", h(90)), ("b", op(95, 3))], 96);
        s.start(T);
        s.on_checkpoint(cp(100, vec![b("a", 1, 1, op(89, 1)), b("b", 2, 2, op(99, 1))]), T);
        assert_eq!(s.stats().fresh_buckets, 0);
        let mut s = stream(&[("a", h(90)), ("b", 0)], 90);
        s.start(T);
        s.on_checkpoint(cp(100, vec![b("a", 1, 1, op(89, 1)), b("b", 2, 2, op(99, 1))]), T);
        assert_eq!(s.stats().fresh_buckets, 1, "requested with after = 0");
    }

    #[test]
    fn the_subrequest_budget_is_read_from_its_setting_and_a_bad_one_is_named() {
        let limits = |v: Option<&str>| StreamLimits::from_settings(|_| v.map(str::to_owned));
        assert_eq!(limits(None).unwrap(), StreamLimits::default());
        assert_eq!(limits(Some(" 40 ")).unwrap().max_subrequests, 40);
        for bad in ["9", "abc", "-1", "100001"] {
            assert_eq!(limits(Some(bad)).unwrap_err().setting, MAX_SUBREQUESTS_SETTING, "{bad}");
        }
    }
}
