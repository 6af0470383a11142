//! Live updates: the long-poll's decisions (`GET /sync?wait=`), the poke the database
//! sends (`POST /live/poke`), the WebSocket's token (`GET /live`) and its messages.
//!
//! A poke is a hint, never data: it names users and a `checkpoint` (the writing
//! transaction's sync position + 1, like `write_checkpoint`), and the woken client pulls, so RLS
//! decides what it gets. A lost poke delays a change until the next pull; it can
//! never lose one, because the pull's cursor is the only source of truth.
//!
//! Sans-I/O: the sync Worker drives [`LongPoll`] with pages and the answers of the
//! user's Durable Object, and the clock it reads itself.

pub mod hub;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::ApiError;

/// The longest `wait` a pull may ask for, in seconds (below the 60 s after which
/// proxies and load balancers commonly cut an idle response).
pub const MAX_WAIT_SECS: u32 = 55;
/// After a poke whose change the watermark has not passed yet, pull again this soon,
/// doubling up to [`MAX_RETRY_MS`].
pub const FIRST_RETRY_MS: u64 = 10;
/// The slowest re-pull while a poked change stays invisible (a write transaction
/// elsewhere holds the watermark back), or while the Durable Object cannot be asked.
pub const MAX_RETRY_MS: u64 = 1000;
/// The most users one poke may name (the database sends at most 100 a notice).
pub const MAX_POKE_USERS: usize = 1000;
/// A poke body larger than this is refused.
pub const MAX_POKE_BYTES: usize = 64 * 1024;
/// The header that carries the poke secret (`LIVE_POKE_SECRET`).
pub const POKE_SECRET_HEADER: &str = "x-live-secret";
/// The WebSocket subprotocol edgesync speaks, and answers with.
pub const SUBPROTOCOL: &str = "edgesync";
/// A browser cannot set `Authorization` on a WebSocket: it offers the token as a
/// second subprotocol, `bearer.<jwt>` (a JWT's characters are all token characters).
pub const BEARER_PROTOCOL_PREFIX: &str = "bearer.";
/// The close code sent when the socket's token expires: reconnect with a fresh one.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// What a client sends to keep the socket open, and what it gets back (answered by
/// the runtime without waking the Durable Object).
pub const PING: &str = "ping";
pub const PONG: &str = "pong";

/// `wait` of `/sync`: absent or 0 is no waiting.
pub fn parse_wait(value: &str) -> Result<u32, ApiError> {
    match value.parse::<u32>() {
        Ok(n) if n <= MAX_WAIT_SECS => Ok(n),
        _ => Err(ApiError::bad_request(
            "invalid_parameter",
            format!("`wait` must be a whole number of seconds from 0 to {MAX_WAIT_SECS}"),
        )),
    }
}

/// What the long-poll needs from an `edgesync_pull` answer: is the page empty, and
/// its checkpoint (`next_txid`: below it every change has been delivered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSummary {
    pub empty: bool,
    pub checkpoint: u64,
}

/// Read the RPC's answer. Anything unexpected reads as "not empty", so the answer is
/// passed on at once and `sync::PullRequest::response` judges it.
pub fn summarize(answer: &[u8]) -> PageSummary {
    #[derive(Deserialize)]
    struct Table<'a> {
        #[serde(borrow)]
        upserted: &'a RawValue,
        #[serde(borrow)]
        deleted: &'a RawValue,
    }
    #[derive(Deserialize)]
    struct Page<'a> {
        #[serde(borrow)]
        changes: std::collections::HashMap<&'a str, Table<'a>>,
        has_more: bool,
        next_txid: &'a str,
    }
    match serde_json::from_slice::<Page>(answer) {
        Ok(p) => PageSummary {
            empty: !p.has_more
                && p.changes.values().all(|t| is_empty_array(t.upserted.get()) && is_empty_array(t.deleted.get())),
            checkpoint: p.next_txid.parse().unwrap_or(0),
        },
        Err(_) => PageSummary { empty: false, checkpoint: 0 },
    }
}

fn is_empty_array(text: &str) -> bool {
    text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).is_some_and(|inner| inner.trim().is_empty())
}

/// The next thing the long-poll does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Answer the page just pulled.
    Answer,
    /// Ask the user's Durable Object for a poke newer than `after`, until `until_ms`.
    Wait { after: u64, until_ms: u64 },
    /// Pull again at `at_ms`.
    Pull { at_ms: u64 },
}

/// One `/sync?wait=` request's loop: pull; answer a page with changes; otherwise wait
/// for a poke and pull again, until the deadline. A poke whose change is not yet
/// below the watermark is followed by re-pulls (10 ms, doubling to 1 s), so it never
/// makes the answer empty while the change is on its way.
#[derive(Debug, Clone)]
pub struct LongPoll {
    deadline_ms: u64,
    /// The newest poke the Durable Object reported, not yet seen on a page.
    poked: Option<u64>,
    retry_ms: u64,
}

impl LongPoll {
    pub fn new(now_ms: u64, wait_secs: u32) -> LongPoll {
        LongPoll { deadline_ms: now_ms + u64::from(wait_secs) * 1000, poked: None, retry_ms: FIRST_RETRY_MS }
    }

    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// A page was pulled.
    pub fn on_page(&mut self, page: PageSummary, now_ms: u64) -> Step {
        if !page.empty || now_ms >= self.deadline_ms {
            return Step::Answer;
        }
        match self.poked {
            // A change this user was poked for is committed but not yet below the
            // watermark (or not in the tables pulled: then the watermark passes it,
            // and waiting resumes).
            Some(p) if page.checkpoint < p => self.retry(now_ms),
            _ => {
                self.poked = None;
                self.retry_ms = FIRST_RETRY_MS;
                Step::Wait { after: page.checkpoint, until_ms: self.deadline_ms }
            }
        }
    }

    /// The Durable Object answered: `Some(checkpoint)` for a poke, `None` at the deadline.
    pub fn on_wait(&mut self, poked: Option<u64>, now_ms: u64) -> Step {
        self.poked = poked.max(self.poked);
        Step::Pull { at_ms: now_ms }
    }

    /// The Durable Object could not be asked (evicted, unreachable): fall back to
    /// pulling once a second, so a change still arrives within the wait.
    pub fn on_wait_failed(&mut self, now_ms: u64) -> Step {
        Step::Pull { at_ms: (now_ms + MAX_RETRY_MS).min(self.deadline_ms) }
    }

    fn retry(&mut self, now_ms: u64) -> Step {
        let at_ms = (now_ms + self.retry_ms).min(self.deadline_ms);
        self.retry_ms = (self.retry_ms * 2).min(MAX_RETRY_MS);
        Step::Pull { at_ms }
    }
}

/// `POST /live/poke`: which users, and the checkpoint their change reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poke {
    pub checkpoint: u64,
    pub users: Vec<String>,
}

/// 413 for a poke body over [`MAX_POKE_BYTES`] (also before reading it).
pub fn too_large_poke(len: usize) -> ApiError {
    ApiError::new(413, "payload_too_large", format!("a poke is at most {MAX_POKE_BYTES} bytes; this one is {len}"))
}

/// May this `POST /live/poke` in? `configured` is `LIVE_POKE_SECRET` (unset or blank:
/// pokes are off, a 503), `given` the request's [`POKE_SECRET_HEADER`]; both are
/// trimmed and compared in constant time.
pub fn authorize_poke(configured: Option<&str>, given: Option<&str>) -> Result<(), ApiError> {
    match crate::secret::check(configured, given) {
        crate::secret::SecretCheck::Valid => Ok(()),
        crate::secret::SecretCheck::Unset => {
            Err(ApiError::unavailable("live_pokes_unconfigured", "live pokes are not configured (LIVE_POKE_SECRET)"))
        }
        crate::secret::SecretCheck::Invalid => {
            Err(ApiError::unauthorized("invalid_poke_secret", "the poke secret is not valid"))
        }
    }
}

/// Parse and check a poke body.
pub fn parse_poke(body: &[u8]) -> Result<Poke, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wire {
        checkpoint: String,
        users: Vec<String>,
    }
    if body.len() > MAX_POKE_BYTES {
        return Err(too_large_poke(body.len()));
    }
    let bad = |m: String| ApiError::bad_request("invalid_poke", m);
    let wire: Wire = serde_json::from_slice(body)
        .map_err(|_| bad("expected {\"checkpoint\": \"<n>\", \"users\": [\"<uuid>\", …]}".into()))?;
    let checkpoint = wire
        .checkpoint
        .parse::<u64>()
        .ok()
        .filter(|c| *c > 0 && *c <= i64::MAX as u64)
        .ok_or_else(|| bad("`checkpoint` must be a positive sync position, as a string".into()))?;
    if wire.users.len() > MAX_POKE_USERS {
        return Err(bad(format!("at most {MAX_POKE_USERS} users a poke")));
    }
    let mut users = Vec::with_capacity(wire.users.len());
    for u in &wire.users {
        users.push(crate::auth::parse_uuid(u).ok_or_else(|| bad("every user must be a UUID".into()))?);
    }
    users.sort();
    users.dedup();
    Ok(Poke { checkpoint, users })
}

/// The message a socket gets for a poke.
pub fn poke_message(checkpoint: u64) -> String {
    format!(r#"{{"type":"poke","checkpoint":"{checkpoint}"}}"#)
}

/// The bearer token of a WebSocket upgrade: `Authorization: Bearer …` (native
/// clients), else a `bearer.<jwt>` subprotocol beside `edgesync` (browsers). Returns
/// the `Authorization` value to verify and whether to answer with the subprotocol.
pub fn socket_credentials(authorization: Option<&str>, protocols: Option<&str>) -> (Option<String>, bool) {
    let offered: Vec<&str> =
        protocols.unwrap_or_default().split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    let speaks = offered.contains(&SUBPROTOCOL);
    if let Some(a) = authorization {
        return (Some(a.to_owned()), speaks);
    }
    let token = offered.iter().find_map(|p| p.strip_prefix(BEARER_PROTOCOL_PREFIX)).filter(|t| !t.is_empty());
    (token.map(|t| format!("Bearer {t}")), speaks)
}

/// Coalesce pokes: per user, only the newest checkpoint matters; users with the same
/// one share a poke. Order: by checkpoint, users sorted.
pub fn coalesce(pokes: impl IntoIterator<Item = Poke>) -> Vec<Poke> {
    let mut newest: std::collections::BTreeMap<String, u64> = Default::default();
    for p in pokes {
        for u in p.users {
            let c = newest.entry(u).or_insert(0);
            *c = (*c).max(p.checkpoint);
        }
    }
    let mut by_checkpoint: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    for (u, c) in newest {
        by_checkpoint.entry(c).or_default().push(u);
    }
    by_checkpoint
        .into_iter()
        .flat_map(|(checkpoint, users)| {
            users.chunks(MAX_POKE_USERS).map(|c| Poke { checkpoint, users: c.to_vec() }).collect::<Vec<_>>()
        })
        .collect()
}

impl Poke {
    /// The wire body.
    pub fn body(&self) -> String {
        serde_json::json!({ "checkpoint": self.checkpoint.to_string(), "users": self.users }).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poke_needs_the_configured_secret_and_none_is_configured_by_a_blank() {
        for unset in [None, Some(""), Some("  \n")] {
            let e = authorize_poke(unset, Some("")).unwrap_err();
            assert_eq!((e.status, e.code), (503, "live_pokes_unconfigured"));
        }
        assert_eq!(authorize_poke(Some(" s3cret\n"), Some("s3cret ")), Ok(()));
        for wrong in [None, Some(""), Some("s3cre"), Some("s3cret2"), Some("S3CRET")] {
            let e = authorize_poke(Some("s3cret"), wrong).unwrap_err();
            assert_eq!((e.status, e.code), (401, "invalid_poke_secret"), "{wrong:?}");
        }
    }

    const A: &str = "11111111-1111-4111-8111-111111111111";
    const B: &str = "22222222-2222-4222-8222-222222222222";

    fn page(empty: bool, checkpoint: u64) -> PageSummary {
        PageSummary { empty, checkpoint }
    }

    #[test]
    fn wait_is_bounded() {
        assert_eq!(parse_wait("0").unwrap(), 0);
        assert_eq!(parse_wait("55").unwrap(), 55);
        for bad in ["56", "-1", "1.5", "", "ten", "99999999999"] {
            assert_eq!(parse_wait(bad).unwrap_err().code, "invalid_parameter", "{bad}");
        }
    }

    #[test]
    fn a_page_is_empty_only_without_rows_tombstones_or_more() {
        let empty = br#"{"changes":{"entries":{"upserted":[],"deleted":[ ]}},"has_more":false,"next_txid":"77","next_id":"x","origin":"1"}"#;
        assert_eq!(summarize(empty), page(true, 77));
        let row = br#"{"changes":{"entries":{"upserted":[{"id":1}],"deleted":[]}},"has_more":false,"next_txid":"78"}"#;
        assert_eq!(summarize(row), page(false, 78));
        let tomb = br#"{"changes":{"a":{"upserted":[],"deleted":[]},"b":{"upserted":[],"deleted":["x"]}},"has_more":false,"next_txid":"9"}"#;
        assert!(!summarize(tomb).empty);
        let more = br#"{"changes":{},"has_more":true,"next_txid":"9"}"#;
        assert!(!summarize(more).empty);
        assert!(!summarize(b"not json").empty, "unreadable answers are passed on, not waited on");
    }

    #[test]
    fn a_page_with_changes_is_answered_at_once() {
        let mut lp = LongPoll::new(1_000, 30);
        assert_eq!(lp.on_page(page(false, 5), 1_000), Step::Answer);
    }

    #[test]
    fn an_empty_page_waits_for_a_poke_after_its_checkpoint_then_pulls() {
        let mut lp = LongPoll::new(1_000, 30);
        assert_eq!(lp.on_page(page(true, 50), 1_001), Step::Wait { after: 50, until_ms: 31_000 });
        assert_eq!(lp.on_wait(Some(51), 2_000), Step::Pull { at_ms: 2_000 });
        assert_eq!(lp.on_page(page(false, 52), 2_001), Step::Answer);
    }

    #[test]
    fn a_poke_ahead_of_the_watermark_is_pulled_for_with_backoff_not_answered_empty() {
        let mut lp = LongPoll::new(0, 30);
        lp.on_page(page(true, 50), 0);
        lp.on_wait(Some(60), 100);
        // The watermark (checkpoint 55) has not passed the poked change (60) yet.
        assert_eq!(lp.on_page(page(true, 55), 101), Step::Pull { at_ms: 111 });
        assert_eq!(lp.on_page(page(true, 55), 111), Step::Pull { at_ms: 131 });
        assert_eq!(lp.on_page(page(true, 55), 131), Step::Pull { at_ms: 171 });
        let mut at = 171;
        for _ in 0..20 {
            match lp.on_page(page(true, 55), at) {
                Step::Pull { at_ms } => {
                    assert!(at_ms - at <= MAX_RETRY_MS);
                    at = at_ms;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(lp.on_page(page(false, 61), at), Step::Answer);
    }

    #[test]
    fn a_poke_for_tables_not_pulled_goes_back_to_waiting() {
        let mut lp = LongPoll::new(0, 30);
        lp.on_page(page(true, 50), 0);
        lp.on_wait(Some(60), 10);
        // The watermark passed 60 and the page is still empty: not a change of ours.
        assert_eq!(lp.on_page(page(true, 61), 20), Step::Wait { after: 61, until_ms: 30_000 });
    }

    #[test]
    fn the_deadline_answers_the_empty_page_and_retries_never_pass_it() {
        let mut lp = LongPoll::new(0, 1);
        lp.on_page(page(true, 50), 0);
        assert_eq!(lp.on_wait(None, 1_000), Step::Pull { at_ms: 1_000 });
        assert_eq!(lp.on_page(page(true, 50), 1_000), Step::Answer);
        let mut lp = LongPoll::new(0, 1);
        lp.on_page(page(true, 50), 0);
        lp.on_wait(Some(70), 995);
        assert_eq!(lp.on_page(page(true, 55), 995), Step::Pull { at_ms: 1_000 });
        assert_eq!(lp.on_wait_failed(400), Step::Pull { at_ms: 1_000 });
    }

    #[test]
    fn without_the_durable_object_it_pulls_once_a_second() {
        let mut lp = LongPoll::new(0, 30);
        lp.on_page(page(true, 50), 0);
        assert_eq!(lp.on_wait_failed(5), Step::Pull { at_ms: 1_005 });
    }

    #[test]
    fn pokes_are_checked() {
        let p = parse_poke(format!(r#"{{"checkpoint":"42","users":["{B}","{A}","{A}"]}}"#).as_bytes()).unwrap();
        assert_eq!(p, Poke { checkpoint: 42, users: vec![A.into(), B.into()] });
        for bad in [
            r#"{"checkpoint":"0","users":[]}"#.to_string(),
            r#"{"checkpoint":42,"users":[]}"#.to_string(),
            r#"{"checkpoint":"9223372036854775808","users":[]}"#.to_string(),
            r#"{"checkpoint":"1","users":["not-a-uuid"]}"#.to_string(),
            r#"{"checkpoint":"1","users":[],"extra":1}"#.to_string(),
            "[]".to_string(),
        ] {
            assert_eq!(parse_poke(bad.as_bytes()).unwrap_err().code, "invalid_poke", "{bad}");
        }
        let many: Vec<String> = (0..=MAX_POKE_USERS).map(|i| format!("{i:08x}-0000-4000-8000-000000000000")).collect();
        let body = serde_json::json!({"checkpoint": "1", "users": many}).to_string();
        assert_eq!(parse_poke(body.as_bytes()).unwrap_err().code, "invalid_poke");
        assert_eq!(parse_poke(&vec![b' '; MAX_POKE_BYTES + 1]).unwrap_err().status, 413);
    }

    #[test]
    fn pokes_coalesce_to_each_users_newest_checkpoint() {
        let p = |c, users: &[&str]| Poke { checkpoint: c, users: users.iter().map(|u| u.to_string()).collect() };
        let out = coalesce([p(5, &[A, B]), p(9, &[A]), p(7, &[B]), p(3, &[A])]);
        assert_eq!(out, vec![p(7, &[B]), p(9, &[A])]);
        assert_eq!(coalesce([p(4, &[A]), p(4, &[B])]), vec![p(4, &[A, B])]);
        assert!(coalesce(Vec::new()).is_empty());
        let round = parse_poke(p(9, &[A]).body().as_bytes()).unwrap();
        assert_eq!(round, p(9, &[A]));
    }

    #[test]
    fn a_socket_token_comes_from_the_header_or_the_bearer_subprotocol() {
        assert_eq!(socket_credentials(Some("Bearer x.y.z"), None), (Some("Bearer x.y.z".into()), false));
        assert_eq!(socket_credentials(None, Some("edgesync, bearer.aa.bb.cc")), (Some("Bearer aa.bb.cc".into()), true));
        assert_eq!(socket_credentials(None, Some("edgesync")), (None, true));
        assert_eq!(socket_credentials(None, Some("bearer.")), (None, false));
        assert_eq!(socket_credentials(None, None), (None, false));
    }

    #[test]
    fn a_poke_message_names_its_checkpoint() {
        let v: serde_json::Value = serde_json::from_str(&poke_message(12)).unwrap();
        assert_eq!(v, serde_json::json!({"type": "poke", "checkpoint": "12"}));
    }
}
