//! Driving a [`StreamLoop`]: doing the [`Action`]s it asks for through a [`StreamIo`]
//! (the caller's RPCs, the user's live hub, the clock) and collecting what to send.
//! The PowerSync Worker implements `StreamIo` on the Workers runtime; the tests here
//! on a script.

use std::collections::BTreeMap;

use super::lines::{Checkpoint, PageTrailer};
use super::stream::{Action, StreamLoop, Turn};
use crate::ApiError;

/// What a stream needs from its runtime.
#[allow(async_fn_in_trait)] // One runtime at a time, never sent between threads.
pub trait StreamIo {
    /// Milliseconds on the runtime's clock.
    fn now_ms(&self) -> u64;
    /// Wait until `at_ms` if it is still ahead.
    async fn sleep_until(&self, at_ms: u64);
    /// `edgesync_ps_checkpoint(floor)` as the caller.
    async fn checkpoint(&self, floor: u64) -> Result<Checkpoint, ApiError>;
    /// `edgesync_ps_page` as the caller: the data lines (sent on as they are) and the trailer.
    async fn page(&self, h: u64, after: &BTreeMap<String, u64>) -> Result<(Vec<u8>, PageTrailer), ApiError>;
    /// Ask the user's live hub for a poke newer than `after_w`, for up to `ms`.
    async fn wait(&self, after_w: u64, ms: u64) -> Result<Option<u64>, ApiError>;
    /// A line for the log; `warning` for what went wrong.
    fn log(&self, line: &str, warning: bool);
}

impl StreamLoop {
    /// The stream's first turn, its first checkpoint fetched: before the answer has
    /// started, so a failure is still the answer's JSON error.
    pub async fn first_turn(&mut self, io: &impl StreamIo) -> Result<Turn, ApiError> {
        let turn = self.start(io.now_ms());
        match turn.action {
            Action::FetchCheckpoint { floor, .. } => Ok(self.on_checkpoint(io.checkpoint(floor).await?, io.now_ms())),
            _ => Ok(turn),
        }
    }

    /// Write `turn`'s bytes and do its action: the bytes to send now, and the next turn
    /// (`None` once the stream has ended). Turns with nothing to send are run through,
    /// so every chunk sent before the end holds at least one line.
    pub async fn step(&mut self, io: &impl StreamIo, mut turn: Turn) -> (Vec<u8>, Option<Turn>) {
        let mut out = std::mem::take(&mut turn.send);
        loop {
            turn = match turn.action {
                Action::End => {
                    io.log(&self.stats().end_log(io.now_ms()).to_string(), false);
                    return (out, None);
                }
                Action::FetchCheckpoint { floor, at_ms } => {
                    io.sleep_until(at_ms).await;
                    match io.checkpoint(floor).await {
                        Ok(cp) => self.on_checkpoint(cp, io.now_ms()),
                        Err(e) => self.failed(io, "checkpoint", &e),
                    }
                }
                Action::FetchPage { h, ref after } => match io.page(h, after).await {
                    Ok((lines, trailer)) => {
                        out.extend_from_slice(&lines);
                        self.on_page(trailer, &lines, io.now_ms())
                    }
                    Err(e) => self.failed(io, "page", &e),
                },
                Action::Wait { after_w, until_ms } => {
                    match io.wait(after_w, until_ms.saturating_sub(io.now_ms())).await {
                        Ok(poked) => self.on_wait(poked, io.now_ms()),
                        Err(e) => {
                            io.log(&format!("powersync: the Durable Object could not be asked: {e}"), true);
                            self.on_wait_failed(io.now_ms())
                        }
                    }
                }
            };
            out.append(&mut turn.send);
            if !out.is_empty() {
                return (out, Some(turn));
            }
        }
    }

    fn failed(&mut self, io: &impl StreamIo, what: &str, e: &ApiError) -> Turn {
        let detail = e.log_detail.as_deref().unwrap_or(&e.message);
        io.log(&format!("powersync: the stream's {what} failed: {} {detail}", e.code), true);
        self.on_fetch_failed(io.now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::powersync::stream::tests::{b, cp, h, op, stream, T};
    use serde_json::{json, Value};
    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;

    /// A runtime that answers from a script and keeps what it was asked and logged.
    #[derive(Default)]
    struct Script {
        now: Cell<u64>,
        checkpoints: RefCell<VecDeque<Result<Checkpoint, ApiError>>>,
        pages: RefCell<VecDeque<Result<(Vec<u8>, PageTrailer), ApiError>>>,
        waits: RefCell<VecDeque<Result<Option<u64>, ApiError>>>,
        asked: RefCell<Vec<String>>,
        logged: RefCell<Vec<(String, bool)>>,
    }

    impl StreamIo for Script {
        fn now_ms(&self) -> u64 {
            self.now.get()
        }
        async fn sleep_until(&self, at_ms: u64) {
            self.now.set(self.now.get().max(at_ms));
        }
        async fn checkpoint(&self, floor: u64) -> Result<Checkpoint, ApiError> {
            self.asked.borrow_mut().push(format!("checkpoint {floor} at {}", self.now.get()));
            self.checkpoints.borrow_mut().pop_front().expect("a scripted checkpoint")
        }
        async fn page(&self, h: u64, _after: &BTreeMap<String, u64>) -> Result<(Vec<u8>, PageTrailer), ApiError> {
            self.asked.borrow_mut().push(format!("page {h}"));
            self.pages.borrow_mut().pop_front().expect("a scripted page")
        }
        async fn wait(&self, after_w: u64, ms: u64) -> Result<Option<u64>, ApiError> {
            self.asked.borrow_mut().push(format!("wait {after_w} {ms}"));
            self.waits.borrow_mut().pop_front().expect("a scripted wait")
        }
        fn log(&self, line: &str, warning: bool) {
            self.logged.borrow_mut().push((line.to_owned(), warning));
        }
    }

    fn script() -> Script {
        Script { now: Cell::new(T), ..Script::default() }
    }

    /// A stream resuming `entries` at the end of position 100, token valid for an hour.
    fn resuming_entries() -> StreamLoop {
        stream(&[("entries", h(100))], 100)
    }

    /// Position 105 with three ops of `entries`, the last in block 103.
    fn checkpoint_105() -> Checkpoint {
        cp(105, vec![b("entries", 7, 3, op(103, 2))])
    }

    fn lines(bytes: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(bytes).unwrap();
        assert!(text.ends_with('\n'), "whole lines: {text:?}");
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn upstream_down() -> ApiError {
        ApiError::bad_gateway("upstream_unavailable", "down").with_log_detail("connect refused")
    }

    #[tokio::test]
    async fn a_failed_first_checkpoint_is_the_answers_error_before_any_byte() {
        let io = script();
        io.checkpoints.borrow_mut().push_back(Err(upstream_down()));
        let e = resuming_entries().first_turn(&io).await.unwrap_err();
        assert_eq!((e.status, e.code), (502, "upstream_unavailable"));
        assert!(io.logged.borrow().is_empty(), "the answer reports it");
    }

    #[tokio::test]
    async fn pages_pass_through_whole_and_a_failure_mid_stream_ends_it_with_the_end_log() {
        let io = script();
        io.checkpoints.borrow_mut().extend([Ok(checkpoint_105()), Err(upstream_down())]);
        let page = b"{\"data\":{\"bucket\":\"entries:u\"}}\n".to_vec();
        let trailer = PageTrailer { next: [("entries".to_owned(), op(103, 2))].into(), ..Default::default() };
        io.pages.borrow_mut().push_back(Ok((page.clone(), trailer)));
        io.waits.borrow_mut().push_back(Err(ApiError::internal("no hub")));
        let mut s = resuming_entries();

        let first = s.first_turn(&io).await.unwrap();
        assert_eq!(lines(&first.send)[0]["checkpoint"]["last_op_id"], h(105).to_string());
        // The checkpoint line, the page's lines as they came, and its completion: one chunk.
        let (sent, next) = s.step(&io, first).await;
        let sent_lines = lines(&sent);
        assert_eq!(sent_lines[1], json!({"data": {"bucket": "entries:u"}}));
        assert_eq!(sent_lines[2], json!({"checkpoint_complete": {"last_op_id": h(105).to_string()}}));
        assert_eq!(sent_lines.len(), 3);
        // Then the hub cannot be asked: the stream checks the checkpoint a second later
        // instead, which fails too; nothing more can be answered, so the stream ends.
        let (sent, next) = s.step(&io, next.unwrap()).await;
        assert!(sent.is_empty() && next.is_none(), "it ends without a line: the client resumes");
        let asked = io.asked.borrow().clone();
        assert_eq!(asked[..2], ["checkpoint 100 at 1000000".to_owned(), format!("page {}", h(105))]);
        assert!(asked[2].starts_with("wait 105 "), "{asked:?}");
        assert_eq!(asked[3], format!("checkpoint 105 at {}", T + 1000), "{asked:?}");
        let logged = io.logged.borrow().clone();
        assert_eq!(logged.len(), 3, "{logged:?}");
        assert!(logged[0].1 && logged[0].0.contains("could not be asked"), "{logged:?}");
        assert!(logged[1].1 && logged[1].0.contains("checkpoint failed: upstream_unavailable connect refused"));
        let end: Value = serde_json::from_str(&logged[2].0).unwrap();
        assert_eq!(
            (end["event"].as_str(), end["ended"].as_str(), logged[2].1),
            (Some("powersync_stream_end"), Some("upstream_failed"), false)
        );
    }

    #[tokio::test]
    async fn turns_with_nothing_to_send_are_run_through_to_the_next_line() {
        let io = script();
        io.checkpoints.borrow_mut().push_back(Ok(Checkpoint::new(100, vec![]).unwrap()));
        // A poke the stream already covers sends nothing; the timeout after it, a keepalive.
        io.waits.borrow_mut().extend([Ok(Some(50)), Ok(None)]);
        let mut s = resuming_entries();
        let first = s.first_turn(&io).await.unwrap();
        let (_, next) = s.step(&io, first).await;
        let (sent, next) = s.step(&io, next.unwrap()).await;
        assert_eq!(io.asked.borrow().iter().filter(|a| a.starts_with("wait")).count(), 2);
        assert_eq!(lines(&sent), [json!({"token_expires_in": 3600})]);
        assert!(matches!(next.unwrap().action, Action::Wait { after_w: 100, .. }));
    }
}
