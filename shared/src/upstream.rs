//! One HTTP exchange with an upstream (PostgREST, Neo4j, the embeddings API, the JWKS
//! endpoint), the same way for each: bounded in time by the caller's [`Deadline`],
//! bounded in size by reading the body chunk by chunk against a cap, `Retry-After`
//! read one way, and every transport failure as one [`ExchangeError`].
//!
//! What an answer *means* is the upstream's own business: each keeps a pure
//! `parse_answer(status, retry_after, body)` and maps [`ExchangeError`] into its own
//! error type. An [`ExchangeError`]'s detail (reqwest's text, which names the URL and
//! the cause) is for the log only: it never goes into a message a client sees.

use crate::deadline::{within, Deadline};
use std::borrow::Cow;
use std::future::Future;

/// How one upstream's exchanges are bounded.
#[derive(Debug, Clone, Copy)]
pub struct Limits<'a> {
    /// Give up on the whole exchange (headers and body) after this.
    pub deadline: Option<Deadline<'a>>,
    /// Refuse a body longer than this many bytes, as soon as that is known (its
    /// Content-Length, or while reading). `None`: read it whole, in one go.
    pub max_body: Option<usize>,
    /// Read the body of a non-2xx answer too; `false` leaves it unread (and empty).
    pub read_error_bodies: bool,
}

impl<'a> Limits<'a> {
    /// Within `deadline`, any body, error bodies read too.
    pub fn new(deadline: Option<Deadline<'a>>) -> Self {
        Limits { deadline, max_body: None, read_error_bodies: true }
    }

    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = Some(bytes);
        self
    }

    /// Leave the body of a non-2xx answer unread.
    pub fn skip_error_bodies(mut self) -> Self {
        self.read_error_bodies = false;
        self
    }
}

/// A complete answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    /// The `Retry-After` header as sent (see [`retry_after_secs`]).
    pub retry_after: Option<String>,
    /// As bytes, not text: in a Worker, text would be decoded into a JavaScript string
    /// and encoded back into Rust's memory, two passes the bytes are spared.
    pub body: Vec<u8>,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as UTF-8, invalid sequences replaced (as `Response::text` does).
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

/// Why an exchange gave no complete answer. The `String`s are for the log only.
#[derive(Debug, Clone, PartialEq)]
pub enum ExchangeError {
    /// No HTTP answer at all (connection refused, DNS, TLS).
    Unreachable(String),
    /// An answer whose body broke off while being read.
    Unreadable { status: u16, retry_after: Option<String>, detail: String },
    /// An answer whose body is longer than the cap of this many bytes.
    TooLarge { status: u16, limit: usize },
    /// No complete answer within this many milliseconds.
    Timeout(u64),
}

impl ExchangeError {
    /// The answer's status, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ExchangeError::Unreadable { status, .. } | ExchangeError::TooLarge { status, .. } => Some(*status),
            ExchangeError::Unreachable(_) | ExchangeError::Timeout(_) => None,
        }
    }

    /// For the log (it may name hosts and URLs): never put it into a client's answer.
    pub fn log_detail(&self) -> String {
        match self {
            ExchangeError::Unreachable(why) => format!("unreachable: {why}"),
            ExchangeError::Unreadable { status, detail, .. } => format!("HTTP {status}, body unreadable: {detail}"),
            ExchangeError::TooLarge { status, limit } => format!("HTTP {status}, body larger than {limit} bytes"),
            ExchangeError::Timeout(ms) => format!("no answer within {ms} ms"),
        }
    }
}

/// Send (`send` is `RequestBuilder::send()` or `postgrest`'s `execute()`) and read the
/// answer within `limits`. When the deadline passes first the request is dropped,
/// which aborts its `fetch` in a Worker.
pub async fn exchange<F>(send: F, limits: Limits<'_>) -> Result<Answer, ExchangeError>
where
    F: Future<Output = Result<reqwest::Response, reqwest::Error>>,
{
    let exchange = async {
        let response = send.await.map_err(|e| ExchangeError::Unreachable(describe_reqwest_error(&e)))?;
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
        if !limits.read_error_bodies && !(200..300).contains(&status) {
            return Ok(Answer { status, retry_after, body: Vec::new() });
        }
        match read_body(response, limits.max_body).await {
            Ok(body) => Ok(Answer { status, retry_after, body }),
            Err(BodyError::TooLarge(limit)) => Err(ExchangeError::TooLarge { status, limit }),
            Err(BodyError::Read(detail)) => Err(ExchangeError::Unreadable { status, retry_after, detail }),
        }
    };
    let ms = limits.deadline.map_or(0, |d| d.ms);
    within(limits.deadline, exchange).await.unwrap_or(Err(ExchangeError::Timeout(ms)))
}

enum BodyError {
    TooLarge(usize),
    Read(String),
}

/// The whole body, or with a cap: at most `cap` bytes, refused as soon as it is known
/// to be longer, by its Content-Length or while reading, chunk by chunk.
async fn read_body(response: reqwest::Response, cap: Option<usize>) -> Result<Vec<u8>, BodyError> {
    let read_error = |e: reqwest::Error| BodyError::Read(describe_reqwest_error(&e));
    let Some(cap) = cap else {
        return response.bytes().await.map(Vec::from).map_err(read_error);
    };
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(BodyError::TooLarge(cap));
    }
    let mut stream = std::pin::pin!(response.bytes_stream());
    let mut body = Vec::new();
    while let Some(chunk) = std::future::poll_fn(|cx| futures_core::Stream::poll_next(stream.as_mut(), cx)).await {
        let chunk = chunk.map_err(read_error)?;
        if body.len() + chunk.len() > cap {
            return Err(BodyError::TooLarge(cap));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// How a failed HTTP exchange is described to operators.
pub(crate) fn describe_reqwest_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else {
        // reqwest's Display names the URL and the cause, which is what an operator needs.
        e.to_string()
    }
}

/// How long to wait before retrying, from `Retry-After`: delay-seconds (a fraction
/// rounded up to whole seconds), or `None` when absent or unreadable. The HTTP-date
/// form is not read (this crate never reads the clock): `None`, and each caller's
/// default applies.
pub fn retry_after_secs(header: Option<&str>) -> Option<u64> {
    header.and_then(|h| h.trim().parse::<f64>().ok()).filter(|s| s.is_finite() && *s >= 0.0).map(|s| s.ceil() as u64)
}

#[cfg(test)]
mod tests;
