//! Test harness for the integration tests: find the running stack, mint tokens,
//! make HTTP requests through the real gateway and functions.
//!
//! The stack is the one `cargo xtask test` starts (its directory is in
//! `EDGESYNC_STACK_DIR`); against `cargo xtask stack up` run
//! `EDGESYNC_STACK_DIR=target/stack cargo test -p edgesync-integration`.

use serde_json::Value;
pub use xtask;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
pub use xtask::keys;
pub use xtask::stack::{self, StackInfo};

/// Tests that stop or change shared parts of the stack hold this lock, so the tests
/// of one binary that run in parallel do not see each other's outages.
pub static STACK_LOCK: Mutex<()> = Mutex::new(());

/// Hold the lock even if a previous holder panicked.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    STACK_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running stack. Panics with instructions when there is none: an integration
/// test that silently passed without a stack would prove nothing.
pub fn stack() -> StackInfo {
    let dir = std::env::var_os("EDGESYNC_STACK_DIR").map(PathBuf::from).unwrap_or_else(|| {
        panic!("EDGESYNC_STACK_DIR is not set: run these tests with `cargo xtask test`")
    });
    // Relative to the workspace root, not to this crate's directory.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    let info = stack::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert!(info.all_alive(), "the stack in {} is not running:\n{}", dir.display(), stack::status(&dir).unwrap_or_default());
    info
}

/// A valid HS256 user token (like a legacy Supabase project's).
pub fn user_token(info: &StackInfo, sub: &str) -> String {
    keys::sign_hs256(&info.jwt_secret, &keys::user_claims(sub, &info.jwt_issuer, 3600)).unwrap()
}

/// A valid ES256 user token, verified by the functions through the JWKS endpoint.
pub fn user_token_es256(info: &StackInfo, sub: &str) -> String {
    keys::sign_es256(&info.es256_key, &keys::user_claims(sub, &info.jwt_issuer, 3600)).unwrap()
}

/// An HTTP answer: status, parsed JSON body (Null when not JSON), and headers we check.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub request_id: Option<String>,
    pub content_type: Option<String>,
    pub www_authenticate: Option<String>,
    pub allow: Option<String>,
}

impl Answer {
    /// Assert the standard JSON error shape with `status` and `code`, and return it.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> &Value {
        assert_eq!(self.status, status, "body: {}", self.text);
        let err = &self.body["error"];
        assert_eq!(err["code"], code, "body: {}", self.text);
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()), "error without message: {}", self.text);
        let rid = err["request_id"].as_str().expect("error without request_id");
        assert_eq!(Some(rid), self.request_id.as_deref(), "request id in body and header differ");
        assert!(self.content_type.as_deref().is_some_and(|c| c.starts_with("application/json")), "{:?}", self.content_type);
        err
    }
}

/// Make a request; `token` becomes `Authorization: Bearer <token>`.
pub fn call(method: &str, url: &str, token: Option<&str>, body: Option<&Value>) -> Answer {
    call_with_headers(method, url, token.map(|t| ("authorization", format!("Bearer {t}"))).as_slice(), body)
}

pub fn call_with_headers(method: &str, url: &str, headers: &[(&str, String)], body: Option<&Value>) -> Answer {
    let agent = xtask::ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
    let mut req = agent.request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = match body {
        Some(b) => req.send_json(b.clone()),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(xtask::ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: no HTTP answer: {e}"),
    };
    let status = resp.status();
    let header = |name: &str| resp.header(name).map(str::to_owned);
    let (request_id, content_type, www_authenticate, allow) =
        (header("x-request-id"), header("content-type"), header("www-authenticate"), header("allow"));
    let text = resp.into_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer { status, body, text, request_id, content_type, www_authenticate, allow }
}

/// Poll until `check` holds, up to `timeout` (a readiness check, not a sleep).
#[track_caller]
pub fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
