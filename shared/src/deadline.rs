//! Bounded waiting on upstreams. The Workers runtime gives a `fetch` no timeout of its
//! own, so a PostgREST, Neo4j or embeddings API that accepts the connection and never
//! answers would hold the invocation until the runtime kills it. Every upstream call
//! races a timer instead; dropping the losing request aborts its `fetch` (reqwest's
//! wasm client aborts on drop).
//!
//! The timer is the caller's ([`Sleep`]): the Worker passes `worker::Delay`, native
//! tests pass tokio's. This crate never reads a clock itself.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

/// A sleep the caller provides (milliseconds).
pub type Sleep<'a> = &'a dyn Fn(u64) -> Pin<Box<dyn Future<Output = ()>>>;

/// A limit on one upstream exchange.
#[derive(Clone, Copy)]
pub struct Deadline<'a> {
    pub ms: u64,
    pub sleep: Sleep<'a>,
}

impl std::fmt::Debug for Deadline<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Deadline({} ms)", self.ms)
    }
}

/// `fut`'s output, or `None` when `deadline` passes first (then `fut` is dropped).
/// Without a deadline, `fut` is simply awaited.
pub async fn within<T>(deadline: Option<Deadline<'_>>, fut: impl Future<Output = T>) -> Option<T> {
    let Some(d) = deadline else { return Some(fut.await) };
    let mut fut = std::pin::pin!(fut);
    let mut timer = (d.sleep)(d.ms);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKIO_SLEEP: Sleep<'static> = &|ms| Box::pin(tokio::time::sleep(std::time::Duration::from_millis(ms)));

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn the_first_to_finish_wins() {
        let d = Some(Deadline { ms: 100, sleep: TOKIO_SLEEP });
        assert_eq!(within(d, async { 7 }).await, Some(7));
        let slow = async {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            1
        };
        assert_eq!(within(d, slow).await, None);
        assert_eq!(within(None, async { 8 }).await, Some(8));
    }
}
