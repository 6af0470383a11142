//! The decisions of a user's live hub (the `LiveHub` Durable Object the sync Worker exports),
//! without its runtime: which waiting pulls a poke wakes, whether the sockets hear
//! about it, whether it must be stored, and which sockets an alarm closes.
//!
//! The hub knows nothing but checkpoints. [`Hub`] holds the newest one poked (read
//! from storage once: `None` until then), the newest one sent to the sockets, and the
//! waiting pulls, each a handle `W` the adapter can complete (a channel's sender).

/// One hub's state; see the module documentation.
#[derive(Debug)]
pub struct Hub<W> {
    poked: Option<u64>,
    sent: u64,
    waiters: Vec<(u64, W)>,
}

impl<W> Default for Hub<W> {
    fn default() -> Self {
        Hub { poked: None, sent: 0, waiters: Vec::new() }
    }
}

/// What a poke asks of the adapter.
#[derive(Debug, PartialEq)]
pub struct Poked<W> {
    /// Complete these waiting pulls with the poke's checkpoint.
    pub wake: Vec<W>,
    /// Send this message to every socket (`None`: a poke no newer than one already
    /// sent is not sent again).
    pub send: Option<String>,
}

impl<W> Hub<W> {
    /// The newest checkpoint poked, if this instance has read it from storage yet.
    pub fn known_poked(&self) -> Option<u64> {
        self.poked
    }

    /// Storage answered `stored` (0 when it held nothing); a poke handled while it was
    /// read is not forgotten. Returns the newest checkpoint poked.
    pub fn loaded(&mut self, stored: u64) -> u64 {
        let p = stored.max(self.poked.unwrap_or(0));
        self.poked = Some(p);
        p
    }

    /// Whether a poke at `checkpoint` is newer than every one stored, so that storage
    /// must keep it (ask after [`Hub::loaded`]).
    pub fn must_store(&self, checkpoint: u64) -> bool {
        checkpoint > self.poked.unwrap_or(0)
    }

    /// A change reached `checkpoint`: wake the pulls whose page is older, and tell the
    /// sockets unless a newer poke was sent already.
    pub fn poke(&mut self, checkpoint: u64) -> Poked<W> {
        self.poked = Some(self.poked.unwrap_or(0).max(checkpoint));
        let waiting = std::mem::take(&mut self.waiters);
        let (wake, keep): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|(after, _)| checkpoint > *after);
        self.waiters = keep;
        let send = (checkpoint > self.sent).then(|| {
            self.sent = checkpoint;
            super::poke_message(checkpoint)
        });
        Poked { wake: wake.into_iter().map(|(_, w)| w).collect(), send }
    }

    /// A pull whose page reached `after` waits for a newer poke: `Some(checkpoint)` if
    /// one already came (before the call, or before the hub was evicted and stored
    /// it), else `waiter` is kept until a poke or [`Hub::forget`]. Ask after
    /// [`Hub::loaded`].
    pub fn wait(&mut self, after: u64, waiter: W) -> Option<u64> {
        match self.poked {
            Some(p) if p > after => Some(p),
            _ => {
                self.waiters.push((after, waiter));
                None
            }
        }
    }

    /// Drop the waiters `gone` says are gone (their pull stopped waiting).
    pub fn forget(&mut self, gone: impl Fn(&W) -> bool) {
        self.waiters.retain(|(_, w)| !gone(w));
    }

    /// How many pulls are waiting.
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }
}

/// An alarm at `now` (seconds) over sockets whose tokens expire at `expires`: which of
/// them to close (in order), and when (seconds) to wake for the next expiry, if any.
/// A socket with no readable expiry (0) is closed.
pub fn sweep(now: u64, expires: &[u64]) -> (Vec<bool>, Option<u64>) {
    let close: Vec<bool> = expires.iter().map(|e| *e <= now).collect();
    let next = expires.iter().copied().filter(|e| *e > now).min();
    (close, next)
}

/// Whether a socket whose token expires at `expires` (seconds) needs the alarm set
/// earlier than `due` (milliseconds, if one is set).
pub fn alarm_needed(due_ms: Option<i64>, expires: u64) -> bool {
    due_ms.is_none_or(|t| t > expires.saturating_mul(1000) as i64)
}

/// Milliseconds from `now_ms` until `at` (seconds since the epoch), at least 1.
pub fn alarm_offset(at: u64, now_ms: u64) -> i64 {
    i64::try_from(at.saturating_mul(1000).saturating_sub(now_ms)).unwrap_or(i64::MAX).max(1)
}

/// The code to complete a closing handshake with: the client's own when it may be
/// sent (1000, or 3000–4999), else 1000 (1005 "no code" and the like cannot be sent).
pub fn close_code(code: usize) -> u16 {
    u16::try_from(code).ok().filter(|c| *c == 1000 || (3000..5000).contains(c)).unwrap_or(1000)
}

/// A call from the Worker to a user's hub. A Durable Object has no URL of its own:
/// the call is a request to `https://hub/<path>?<query>`, made and read here so both
/// ends agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubCall {
    /// A change reaching `checkpoint` was committed.
    Poke { checkpoint: u64 },
    /// Wait up to `ms` for a poke newer than `after`.
    Wait { after: u64, ms: u64 },
    /// Accept a WebSocket whose token expires at `expires` (seconds); `subprotocol`:
    /// the token came as a subprotocol, which the answer must then name.
    Socket { expires: u64, subprotocol: bool },
}

impl HubCall {
    /// The URL the Worker asks.
    pub fn url(&self) -> String {
        match *self {
            HubCall::Poke { checkpoint } => format!("https://hub/poke?checkpoint={checkpoint}"),
            HubCall::Wait { after, ms } => format!("https://hub/wait?after={after}&ms={ms}"),
            HubCall::Socket { expires, subprotocol } => {
                format!("https://hub/socket?expires={expires}&subprotocol={}", u8::from(subprotocol))
            }
        }
    }

    /// The call a hub was asked, from its URL's path and query; `None` for any other
    /// path. A number that is missing or not one reads as 0.
    pub fn parse(path: &str, query: &str) -> Option<HubCall> {
        let pairs = crate::sync::parse_query(query).unwrap_or_default();
        let number =
            |name: &str| pairs.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.parse::<u64>().ok()).unwrap_or(0);
        match path {
            "/poke" => Some(HubCall::Poke { checkpoint: number("checkpoint") }),
            "/wait" => Some(HubCall::Wait { after: number("after"), ms: number("ms") }),
            "/socket" => Some(HubCall::Socket { expires: number("expires"), subprotocol: number("subprotocol") == 1 }),
            _ => None,
        }
    }
}

/// The hub's answer to [`HubCall::Wait`]: the checkpoint poked, or null at the deadline.
pub fn wait_answer(poked: Option<u64>) -> String {
    serde_json::json!({ "poked": poked.map(|p| p.to_string()) }).to_string()
}

/// Read [`wait_answer`]'s body: `Some(poked)`, or `None` when it is not one.
pub fn parse_wait_answer(body: &[u8]) -> Option<Option<u64>> {
    match serde_json::from_slice::<serde_json::Value>(body).ok()?.get("poked")? {
        serde_json::Value::Null => Some(None),
        serde_json::Value::String(p) => p.parse().ok().map(Some),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hub_call_reads_back_as_the_call_that_was_made() {
        let calls = [
            HubCall::Poke { checkpoint: 0 },
            HubCall::Poke { checkpoint: u64::MAX },
            HubCall::Wait { after: 17, ms: 55_000 },
            HubCall::Socket { expires: 1_900_000_000, subprotocol: true },
            HubCall::Socket { expires: 5, subprotocol: false },
        ];
        for call in calls {
            let url = call.url();
            let rest = url.strip_prefix("https://hub").unwrap();
            let (path, query) = rest.split_once('?').unwrap();
            assert_eq!(HubCall::parse(path, query), Some(call), "{url}");
        }
    }

    #[test]
    fn a_hub_call_with_an_unknown_path_or_bad_numbers_is_read_safely() {
        assert_eq!(HubCall::parse("/", ""), None);
        assert_eq!(HubCall::parse("/pokes", "checkpoint=1"), None);
        assert_eq!(HubCall::parse("/poke", ""), Some(HubCall::Poke { checkpoint: 0 }));
        assert_eq!(HubCall::parse("/wait", "after=-1&ms=x&ms=9"), Some(HubCall::Wait { after: 0, ms: 0 }));
        assert_eq!(
            HubCall::parse("/socket", "expires=9&subprotocol=2"),
            Some(HubCall::Socket { expires: 9, subprotocol: false })
        );
    }

    #[test]
    fn a_wait_answer_carries_the_checkpoint_as_a_string_or_null() {
        assert_eq!(wait_answer(Some(u64::MAX)), format!("{{\"poked\":\"{}\"}}", u64::MAX));
        assert_eq!(parse_wait_answer(wait_answer(Some(u64::MAX)).as_bytes()), Some(Some(u64::MAX)));
        assert_eq!(wait_answer(None), "{\"poked\":null}");
        assert_eq!(parse_wait_answer(wait_answer(None).as_bytes()), Some(None));
        for bad in [&b""[..], b"{}", b"{\"poked\":7}", b"{\"poked\":\"x\"}", b"<html>"] {
            assert_eq!(parse_wait_answer(bad), None);
        }
    }

    #[test]
    fn a_poke_wakes_only_the_pulls_whose_page_is_older() {
        let mut hub = Hub::default();
        hub.loaded(0);
        assert_eq!(hub.wait(5, "at 5"), None);
        assert_eq!(hub.wait(9, "at 9"), None);
        assert_eq!(hub.wait(7, "at 7"), None);
        let p = hub.poke(8);
        assert_eq!(p.wake, vec!["at 5", "at 7"]);
        assert_eq!(hub.waiting(), 1);
        assert_eq!(hub.poke(10).wake, vec!["at 9"]);
        assert_eq!(hub.waiting(), 0);
    }

    #[test]
    fn a_pull_that_missed_a_poke_is_answered_at_once() {
        let mut hub = Hub::default();
        hub.loaded(0);
        hub.poke(12);
        assert_eq!(hub.wait(11, ()), Some(12));
        assert_eq!(hub.wait(12, ()), None, "the same checkpoint is not newer than the page");
        assert_eq!(hub.waiting(), 1);
    }

    #[test]
    fn an_evicted_hubs_stored_poke_answers_the_next_pull() {
        let mut hub: Hub<()> = Hub::default();
        assert_eq!(hub.known_poked(), None);
        assert_eq!(hub.loaded(40), 40);
        assert_eq!(hub.wait(39, ()), Some(40));
    }

    #[test]
    fn a_poke_handled_while_storage_was_read_is_not_forgotten() {
        let mut hub: Hub<()> = Hub::default();
        hub.poke(50);
        assert_eq!(hub.loaded(30), 50, "storage held an older poke");
        assert!(!hub.must_store(45));
        assert!(hub.must_store(51));
    }

    #[test]
    fn sockets_hear_each_checkpoint_once_and_never_an_older_one() {
        let mut hub: Hub<()> = Hub::default();
        hub.loaded(0);
        assert_eq!(hub.poke(3).send, Some(crate::live::poke_message(3)));
        assert_eq!(hub.poke(3).send, None);
        assert_eq!(hub.poke(2).send, None);
        assert_eq!(hub.poke(4).send, Some(crate::live::poke_message(4)));
    }

    #[test]
    fn an_older_poke_still_wakes_older_pulls_but_is_not_stored() {
        let mut hub = Hub::default();
        hub.loaded(0);
        hub.poke(10);
        assert_eq!(hub.wait(10, "late"), None);
        let p = hub.poke(9);
        assert!(p.wake.is_empty() && p.send.is_none());
        assert!(!hub.must_store(9));
    }

    #[test]
    fn forgotten_waiters_are_dropped() {
        let mut hub = Hub::default();
        hub.loaded(0);
        hub.wait(1, 1);
        hub.wait(1, 2);
        hub.forget(|w| *w == 1);
        assert_eq!(hub.poke(5).wake, vec![2]);
    }

    #[test]
    fn an_alarm_closes_expired_sockets_and_wakes_for_the_next() {
        assert_eq!(sweep(100, &[90, 100, 150, 120, 0]), (vec![true, true, false, false, true], Some(120)));
        assert_eq!(sweep(100, &[50]), (vec![true], None));
        assert_eq!(sweep(100, &[]), (vec![], None));
    }

    #[test]
    fn the_alarm_moves_only_earlier() {
        assert!(alarm_needed(None, 10));
        assert!(alarm_needed(Some(20_000), 10));
        assert!(!alarm_needed(Some(10_000), 10));
        assert!(!alarm_needed(Some(5_000), 10));
        assert_eq!(alarm_offset(10, 4_000), 6_000);
        assert_eq!(alarm_offset(10, 12_000), 1, "an expiry in the past fires at once");
        assert_eq!(alarm_offset(u64::MAX, 0), i64::MAX, "no overflow into the past");
    }

    #[test]
    fn a_closing_handshake_echoes_only_codes_that_may_be_sent() {
        assert_eq!(close_code(1000), 1000);
        assert_eq!(close_code(4001), 4001);
        assert_eq!(close_code(3000), 3000);
        assert_eq!(close_code(1005), 1000);
        assert_eq!(close_code(1001), 1000);
        assert_eq!(close_code(5000), 1000);
        assert_eq!(close_code(70_000), 1000);
    }
}
