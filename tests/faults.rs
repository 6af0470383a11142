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

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    upstream: String,
    rates: Mutex<FaultRates>,
    seed: u64,
    rngs: Mutex<HashMap<String, u64>>,
    counters: Counters,
    stop: AtomicBool,
}

pub struct FaultProxy {
    pub url: String,
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
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
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            rates: Mutex::new(rates),
            seed,
            rngs: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let s = s.clone();
                    std::thread::spawn(move || handle(&s, conn));
                }
            }
        });
        FaultProxy { url: format!("http://{addr}"), addr, shared, thread: Some(thread) }
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

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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
    stream: Option<Box<dyn Read + Send>>,
}

/// Answers of this type are streamed, not buffered.
const STREAMED: &str = "application/x-ndjson";

fn read_request(conn: &TcpStream) -> Option<Request> {
    let mut r = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut headers = Vec::new();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
        if k == "content-length" {
            len = v.parse().ok()?;
        }
        headers.push((k, v));
    }
    if len > 16 << 20 {
        return None;
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Request { method, path, headers, body })
}

fn forward(upstream: &str, req: &Request) -> Response {
    // No overall deadline (a stream lasts); a silent upstream is given up after 60 s.
    let agent = xtask::ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout_read(Duration::from_secs(60))
        .build();
    let mut call = agent.request(&req.method, &format!("{upstream}{}", req.path));
    for (k, v) in &req.headers {
        if matches!(k.as_str(), "authorization" | "content-type" | "apikey" | "accept") {
            call = call.set(k, v);
        }
    }
    let result = if req.method == "GET" { call.call() } else { call.send_bytes(&req.body) };
    let resp = match result {
        Ok(r) => r,
        Err(xtask::ureq::Error::Status(_, r)) => r,
        Err(e) => {
            return Response {
                status: 502,
                headers: vec![("content-type".into(), "text/plain".into())],
                body: format!("fault proxy: upstream unreachable: {e}").into_bytes(),
                stream: None,
            }
        }
    };
    let status = resp.status();
    let headers = ["content-type", "x-request-id", "retry-after", "www-authenticate", "cache-control"]
        .iter()
        .filter_map(|h| resp.header(h).map(|v| (h.to_string(), v.to_owned())))
        .collect();
    if resp.content_type() == STREAMED {
        return Response { status, headers, body: Vec::new(), stream: Some(Box::new(resp.into_reader())) };
    }
    let mut body = Vec::new();
    let _ = resp.into_reader().take(64 << 20).read_to_end(&mut body);
    Response { status, headers, body, stream: None }
}

fn handle(s: &Shared, mut conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Some(req) = read_request(&conn) else {
        let _ = conn.shutdown(Shutdown::Both);
        return;
    };
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
        std::thread::sleep(rates.max_delay.mul_f64(delay_amount));
    }
    let mut p = pick;
    if p < rates.drop_request {
        c.dropped_requests.fetch_add(1, Ordering::SeqCst);
        let _ = conn.shutdown(Shutdown::Both);
        return;
    }
    p -= rates.drop_request;
    // A stream is not duplicated: two would both stay open.
    let streams = req.path.starts_with("/sync/stream");
    let resp = if p < rates.duplicate && !streams {
        c.duplicated.fetch_add(1, Ordering::SeqCst);
        let (a, b) = std::thread::scope(|scope| {
            let a = scope.spawn(|| forward(&s.upstream, &req));
            let b = scope.spawn(|| forward(&s.upstream, &req));
            (a.join().unwrap(), b.join().unwrap())
        });
        if dup_pick == 0 {
            a
        } else {
            b
        }
    } else {
        forward(&s.upstream, &req)
    };
    if resp.status >= 500 {
        c.server_errors.fetch_add(1, Ordering::SeqCst);
    }
    p -= rates.duplicate;
    if (0.0..rates.drop_response).contains(&p) {
        c.dropped_responses.fetch_add(1, Ordering::SeqCst);
        let _ = conn.shutdown(Shutdown::Both);
        return;
    }
    let length = match resp.stream {
        // Without a length the body ends when the connection closes.
        Some(_) => String::new(),
        None => format!("content-length: {}\r\n", resp.body.len()),
    };
    let mut out = format!("HTTP/1.1 {} X\r\nconnection: close\r\n{length}", resp.status);
    for (k, v) in &resp.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = conn.write_all(out.as_bytes());
    let _ = conn.write_all(&resp.body);
    let _ = conn.flush();
    if let Some(mut stream) = resp.stream {
        c.streams.fetch_add(1, Ordering::SeqCst);
        let cut = (cut_draw < rates.cut_stream).then_some(cut_at as usize);
        if cut.is_some() {
            c.cut_streams.fetch_add(1, Ordering::SeqCst);
        }
        pass_stream(&mut *stream, &mut conn, cut);
    }
    let _ = conn.shutdown(Shutdown::Both);
}

/// Copy a streamed body to the device as it arrives, stopping after `cut` bytes (or
/// when either side closes).
fn pass_stream(from: &mut dyn Read, to: &mut TcpStream, cut: Option<usize>) {
    let mut left = cut.unwrap_or(usize::MAX);
    let mut buf = [0u8; 8192];
    while left > 0 {
        let want = buf.len().min(left);
        let n = match from.read(&mut buf[..want]) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
            return;
        }
        left -= n;
    }
}
