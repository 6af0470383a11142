//! A fault-injecting HTTP proxy between simulated devices and the functions.
//!
//! It listens on 127.0.0.1 and forwards each request (one per connection) to the
//! upstream URL, but, at random with configured rates, it
//! - **drops the request**: closes the connection without forwarding it;
//! - **drops the response**: forwards it, lets the server commit, then closes the
//!   connection without answering (the client cannot know it was applied);
//! - **duplicates** it: forwards two copies at the same time and answers with one;
//! - **delays** it before forwarding;
//! - **cuts a stream**: an answer that streams (PowerSync's `application/x-ndjson`) is
//!   passed on as it arrives, and closed after a random number of bytes, mid-line.
//!
//! Decisions come from a seeded generator per device (the `x-sim-device` request
//! header), so one device's fault sequence is the same on every run with the same seed,
//! whatever the other devices' threads do.
//!
//! Served by hyper (HTTP/1.1, one request per connection) on a tokio runtime of its own,
//! forwarding with hyper's client. A service error is how a connection is closed
//! without an answer; a cut stream's body ends after N bytes (its last chunk, then the
//! connection closes), so the device sees the answer end mid-line.

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::background::Background;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// The header that names the device a request comes from (not forwarded).
pub const DEVICE_HEADER: &str = "x-sim-device";

/// Fault rates, each per request (0.0 – 1.0).
#[derive(Clone, Copy, Debug)]
pub struct FaultRates {
    pub drop_request: f64,
    pub drop_response: f64,
    pub duplicate: f64,
    pub delay: f64,
    pub max_delay: Duration,
    /// Of streamed answers: cut after a random number of bytes (up to 64 KiB).
    pub cut_stream: f64,
}

impl FaultRates {
    pub const NONE: FaultRates = FaultRates {
        drop_request: 0.0,
        drop_response: 0.0,
        duplicate: 0.0,
        delay: 0.0,
        max_delay: Duration::ZERO,
        cut_stream: 0.0,
    };
}

/// What the proxy did so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FaultCounts {
    pub requests: u64,
    pub dropped_requests: u64,
    pub dropped_responses: u64,
    pub duplicated: u64,
    pub delayed: u64,
    /// Streamed answers passed on, and those cut short.
    pub streams: u64,
    pub cut_streams: u64,
    /// Answers with a 5xx status that reached (or would have reached) the device.
    pub server_errors: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    dropped_requests: AtomicU64,
    dropped_responses: AtomicU64,
    duplicated: AtomicU64,
    delayed: AtomicU64,
    streams: AtomicU64,
    cut_streams: AtomicU64,
    server_errors: AtomicU64,
}

struct Shared {
    upstream: Upstream,
    rates: Mutex<FaultRates>,
    seed: u64,
    rngs: Mutex<HashMap<String, u64>>,
    counters: Counters,
}

pub struct FaultProxy {
    pub url: String,
    shared: Arc<Shared>,
    /// The proxy's runtime, stopped when the proxy is dropped.
    _server: Background,
}

/// splitmix64: small, seedable, good enough for fault decisions.
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(state: &mut u64) -> f64 {
    (splitmix(state) >> 11) as f64 / (1u64 << 53) as f64
}

impl FaultProxy {
    pub fn start(upstream: &str, rates: FaultRates, seed: u64) -> FaultProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let shared = Arc::new(Shared {
            upstream: Upstream::parse(upstream),
            rates: Mutex::new(rates),
            seed,
            rngs: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        });
        let s = shared.clone();
        let server = Background::start("fault-proxy", listener, move |l| accept(l, s)).expect("start the fault proxy");
        FaultProxy { url: format!("http://{}", server.addr), shared, _server: server }
    }

    pub fn set_rates(&self, rates: FaultRates) {
        *self.shared.rates.lock().unwrap() = rates;
    }

    pub fn counts(&self) -> FaultCounts {
        let c = &self.shared.counters;
        FaultCounts {
            requests: c.requests.load(Ordering::SeqCst),
            dropped_requests: c.dropped_requests.load(Ordering::SeqCst),
            dropped_responses: c.dropped_responses.load(Ordering::SeqCst),
            duplicated: c.duplicated.load(Ordering::SeqCst),
            delayed: c.delayed.load(Ordering::SeqCst),
            streams: c.streams.load(Ordering::SeqCst),
            cut_streams: c.cut_streams.load(Ordering::SeqCst),
            server_errors: c.server_errors.load(Ordering::SeqCst),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Where requests go: `host:port` and a path prefix (from the upstream URL).
struct Upstream {
    authority: String,
    prefix: String,
}

impl Upstream {
    fn parse(url: &str) -> Upstream {
        let rest = url.trim_end_matches('/');
        let rest =
            rest.strip_prefix("http://").unwrap_or_else(|| panic!("the fault proxy forwards to http:// only: {url}"));
        let (authority, prefix) = rest.find('/').map_or((rest, ""), |i| (&rest[..i], &rest[i..]));
        Upstream { authority: authority.to_owned(), prefix: prefix.to_owned() }
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// A streamed answer's body, read as it arrives (then `body` is empty).
    stream: Option<Incoming>,
}

/// Answers of this type are streamed, not buffered.
const STREAMED: &str = "application/x-ndjson";
/// A silent upstream is given up after this long (between reads; a stream lasts).
const UPSTREAM_READ: Duration = Duration::from_secs(60);

/// One connection per device request (`keep-alive` off), each on its own task.
async fn accept(listener: tokio::net::TcpListener, s: Arc<Shared>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else { continue };
        let s = s.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(s.clone(), req));
            // An Err here is a fault closing the connection unanswered, or a broken device.
            let _ = http1::Builder::new()
                .keep_alive(false)
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(conn), service)
                .await;
        });
    }
}

/// The request as the device sent it (a body over 16 MiB: `None`, closed unanswered).
async fn read_request(req: hyper::Request<Incoming>) -> Option<Request> {
    let (parts, body) = req.into_parts();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).trim().to_owned()))
        .collect();
    let body = Limited::new(body, 16 << 20).collect().await.ok()?.to_bytes().to_vec();
    let path = parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    Some(Request { method: parts.method.to_string(), path, headers, body })
}

async fn forward(upstream: &Upstream, req: &Request) -> Response {
    match send(upstream, req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let header = |h: &str| resp.headers().get(h).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let headers = ["content-type", "x-request-id", "retry-after", "www-authenticate", "cache-control"]
                .iter()
                .filter_map(|h| header(h).map(|v| (h.to_string(), v)))
                .collect();
            let streamed = header("content-type").is_some_and(|t| t.split(';').next().unwrap_or("").trim() == STREAMED);
            let body = resp.into_body();
            if streamed {
                return Response { status, headers, body: Vec::new(), stream: Some(body) };
            }
            // Up to 64 MiB; a body that breaks off is passed on as far as it came.
            let body = read_to_end(body, 64 << 20).await;
            Response { status, headers, body, stream: None }
        }
        Err(e) => Response {
            status: 502,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: format!("fault proxy: upstream unreachable: {e}").into_bytes(),
            stream: None,
        },
    }
}

/// The request upstream, on a connection of its own; the answer's head.
async fn send(upstream: &Upstream, req: &Request) -> Result<hyper::Response<Incoming>, String> {
    let timed_out = |what: &str| format!("{what} timed out");
    let conn = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(&upstream.authority))
        .await
        .map_err(|_| timed_out("connecting"))?
        .map_err(|e| format!("{}: {e}", upstream.authority))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(conn)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut call = hyper::Request::builder()
        .method(Method::from_bytes(req.method.as_bytes()).map_err(|e| e.to_string())?)
        .uri(format!("{}{}", upstream.prefix, req.path))
        .header("host", &upstream.authority);
    for (k, v) in &req.headers {
        if matches!(k.as_str(), "authorization" | "content-type" | "apikey" | "accept") {
            call = call.header(k, v);
        }
    }
    if !req.headers.iter().any(|(k, _)| k == "accept") {
        call = call.header("accept", "*/*");
    }
    let body = if req.method == "GET" {
        Full::new(Bytes::new())
    } else {
        call = call.header("content-length", req.body.len());
        Full::new(Bytes::from(req.body.clone()))
    };
    let call = call.body(body).map_err(|e| e.to_string())?;
    tokio::time::timeout(UPSTREAM_READ, sender.send_request(call))
        .await
        .map_err(|_| timed_out("waiting for the answer"))?
        .map_err(|e| e.to_string())
}

/// A body's bytes, up to `limit`, or as many as arrived before it broke off or went
/// silent.
async fn read_to_end(mut body: Incoming, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < limit {
        match tokio::time::timeout(UPSTREAM_READ, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data[..data.len().min(limit - out.len())]);
                }
            }
            _ => break,
        }
    }
    out
}

/// One device request: decide its faults, forward it, answer (or not). An `Err` closes
/// the connection without an answer.
async fn handle(s: Arc<Shared>, req: hyper::Request<Incoming>) -> Result<hyper::Response<ProxyBody>, BoxError> {
    let Some(req) = read_request(req).await else { return Err("fault proxy: unreadable request".into()) };
    let device = req.headers.iter().find(|(k, _)| k == DEVICE_HEADER).map(|(_, v)| v.clone()).unwrap_or_default();
    let rates = *s.rates.lock().unwrap();
    // Draw every decision up front, from this device's own sequence.
    let (pick, delay_draw, delay_amount, dup_pick, cut_draw, cut_at) = {
        let mut rngs = s.rngs.lock().unwrap();
        let state = rngs.entry(device.clone()).or_insert_with(|| {
            let mut h = s.seed;
            for b in device.bytes() {
                h = (h ^ b as u64).wrapping_mul(0x100_0000_01B3);
            }
            h
        });
        (unit(state), unit(state), unit(state), splitmix(state) & 1, unit(state), splitmix(state) % (64 << 10))
    };
    let c = &s.counters;
    c.requests.fetch_add(1, Ordering::SeqCst);
    if delay_draw < rates.delay {
        c.delayed.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(rates.max_delay.mul_f64(delay_amount)).await;
    }
    let mut p = pick;
    if p < rates.drop_request {
        c.dropped_requests.fetch_add(1, Ordering::SeqCst);
        return Err("fault proxy: request dropped".into());
    }
    p -= rates.drop_request;
    // A stream is not duplicated: two would both stay open.
    let streams = req.path.starts_with("/sync/stream");
    let resp = if p < rates.duplicate && !streams {
        c.duplicated.fetch_add(1, Ordering::SeqCst);
        let (a, b) = tokio::join!(forward(&s.upstream, &req), forward(&s.upstream, &req));
        if dup_pick == 0 {
            a
        } else {
            b
        }
    } else {
        forward(&s.upstream, &req).await
    };
    if resp.status >= 500 {
        c.server_errors.fetch_add(1, Ordering::SeqCst);
    }
    p -= rates.duplicate;
    if (0.0..rates.drop_response).contains(&p) {
        c.dropped_responses.fetch_add(1, Ordering::SeqCst);
        return Err("fault proxy: response dropped".into());
    }
    let mut answer = hyper::Response::builder().status(StatusCode::from_u16(resp.status)?);
    for (k, v) in &resp.headers {
        answer = answer.header(k, v);
    }
    let answer = match resp.stream {
        None => answer.body(Full::new(Bytes::from(resp.body)).map_err(|never| match never {}).boxed_unsync())?,
        Some(stream) => {
            c.streams.fetch_add(1, Ordering::SeqCst);
            let cut = (cut_draw < rates.cut_stream).then_some(cut_at as usize);
            if cut.is_some() {
                c.cut_streams.fetch_add(1, Ordering::SeqCst);
            }
            // Chunked; a cut ends the body after `cut` bytes, mid-line.
            answer.body(Passed::new(stream, cut).boxed_unsync())?
        }
    };
    Ok(answer)
}

/// A streamed body passed on as it arrives, ending after `left` bytes (or when the
/// upstream ends, breaks off or goes silent for [`UPSTREAM_READ`]).
struct Passed {
    from: Incoming,
    left: usize,
    silent: Pin<Box<tokio::time::Sleep>>,
}

impl Passed {
    fn new(from: Incoming, cut: Option<usize>) -> Passed {
        Passed { from, left: cut.unwrap_or(usize::MAX), silent: Box::pin(tokio::time::sleep(UPSTREAM_READ)) }
    }
}

impl Body for Passed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.left == 0 {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.from).poll_frame(cx) {
                Poll::Pending => {
                    return match this.silent.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(None),
                        Poll::Pending => Poll::Pending,
                    }
                }
                Poll::Ready(None | Some(Err(_))) => return Poll::Ready(None),
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = tokio::time::Instant::now() + UPSTREAM_READ;
                    this.silent.as_mut().reset(deadline);
                    // Trailers are not passed on (a close-delimited body has none).
                    let Ok(mut data) = frame.into_data() else { continue };
                    data.truncate(this.left);
                    this.left -= data.len();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use xtask::ureq;

    /// An upstream on a runtime of its own: `POST /count` counts and answers JSON,
    /// `GET /sync/stream` answers 128 KiB of ndjson lines.
    fn upstream() -> (String, Arc<AtomicU64>, Vec<u8>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let lines: Vec<u8> = (0..2048)
            .flat_map(|i| format!("{{\"line\":{i:05},\"pad\":\"{}\"}}\n", "x".repeat(40)).into_bytes())
            .collect();
        let (n, body) = (count.clone(), lines.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let app = axum::Router::new()
                    .route(
                        "/count",
                        axum::routing::post(move || async move {
                            let seen = n.fetch_add(1, Ordering::SeqCst) + 1;
                            ([("content-type", "application/json")], format!("{{\"n\":{seen}}}"))
                        }),
                    )
                    .route(
                        "/sync/stream",
                        axum::routing::get(move || async move { ([("content-type", STREAMED)], body) }),
                    );
                axum::serve(tokio::net::TcpListener::from_std(listener).unwrap(), app).await
            })
        });
        (url, count, lines)
    }

    fn post(proxy: &FaultProxy) -> Result<String, String> {
        match ureq::post(&format!("{}/count", proxy.url)).set(DEVICE_HEADER, "d1").send_string("{}") {
            Ok(r) => Ok(r.into_string().unwrap()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The head and the (de-chunked) body of a streamed answer, read to the connection's end.
    fn stream(proxy: &FaultProxy, device: &str) -> (String, Vec<u8>) {
        let mut c = std::net::TcpStream::connect(proxy.url.trim_start_matches("http://")).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(c, "GET /sync/stream HTTP/1.1\r\nhost: x\r\n{DEVICE_HEADER}: {device}\r\n\r\n").unwrap();
        let mut raw = Vec::new();
        c.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("an answer head") + 4;
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        let (mut rest, mut body) = (&raw[split..], Vec::new());
        loop {
            let line = rest.windows(2).position(|w| w == b"\r\n").expect("a chunk size");
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..line]).unwrap(), 16).unwrap();
            if size == 0 {
                assert_eq!(&rest[line..], b"\r\n\r\n", "the last chunk, then the end");
                return (head, body);
            }
            body.extend_from_slice(&rest[line + 2..line + 2 + size]);
            rest = &rest[line + 2 + size + 2..];
        }
    }

    #[test]
    fn each_fault_as_planned() {
        let (url, upstream_count, lines) = upstream();
        let proxy = FaultProxy::start(&url, FaultRates::NONE, 7);
        assert_eq!(post(&proxy).unwrap(), "{\"n\":1}");
        let (head, body) = stream(&proxy, "d1");
        assert!(head.contains("application/x-ndjson") && !head.contains("content-length"), "{head}");
        assert_eq!(body, lines, "passed on whole");

        // Closed unanswered, never forwarded.
        proxy.set_rates(FaultRates { drop_request: 1.0, ..FaultRates::NONE });
        assert!(post(&proxy).is_err());
        assert_eq!(upstream_count.load(Ordering::SeqCst), 1);
        // Forwarded (the upstream counts it), then closed unanswered.
        proxy.set_rates(FaultRates { drop_response: 1.0, ..FaultRates::NONE });
        assert!(post(&proxy).is_err());
        assert_eq!(upstream_count.load(Ordering::SeqCst), 2);
        // Two copies upstream, one answer.
        proxy.set_rates(FaultRates { duplicate: 1.0, ..FaultRates::NONE });
        let answer = post(&proxy).unwrap();
        assert!(answer == "{\"n\":3}" || answer == "{\"n\":4}", "{answer}");
        assert_eq!(upstream_count.load(Ordering::SeqCst), 4);
        // A delay holds the request.
        proxy.set_rates(FaultRates { delay: 1.0, max_delay: Duration::from_millis(1), ..FaultRates::NONE });
        assert!(post(&proxy).is_ok());

        // A cut stream: a prefix of the answer, then the end, mid-line.
        proxy.set_rates(FaultRates { cut_stream: 1.0, ..FaultRates::NONE });
        let (_, cut) = stream(&proxy, "d2");
        assert!(cut.len() < lines.len() && lines.starts_with(&cut), "{} bytes", cut.len());
        assert_eq!(
            proxy.counts(),
            FaultCounts {
                requests: 7,
                dropped_requests: 1,
                dropped_responses: 1,
                duplicated: 1,
                delayed: 1,
                streams: 2,
                cut_streams: 1,
                server_errors: 0
            }
        );
        // The same seed cuts the same device's stream at the same byte.
        let again = FaultProxy::start(&url, FaultRates { cut_stream: 1.0, ..FaultRates::NONE }, 7);
        assert_eq!(stream(&again, "d2").1.len(), cut.len());
        // An upstream that is not there: 502, counted as a server error.
        drop(again);
        let nowhere = FaultProxy::start("http://127.0.0.1:9", FaultRates::NONE, 7);
        match ureq::get(&format!("{}/x", nowhere.url)).call() {
            Err(ureq::Error::Status(502, r)) => {
                assert!(r.into_string().unwrap().starts_with("fault proxy: upstream unreachable"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(nowhere.counts().server_errors, 1);
    }
}
