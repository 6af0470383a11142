//! # edgesync-edge
//!
//! The thin adapter between the Workers runtime and `edgesync-shared`, used by every
//! function crate. It knows `worker::Request`/`Response`/`Env`; it decides nothing.
//!
//! Invariant: a handler returns `Result<Response, ApiError>` and [`finish`] is the one
//! place that turns an error into the JSON error response with the request id, adds
//! `x-request-id` and the CORS headers, and logs the request's one JSON line. No
//! handler path can reach the runtime as an `Err` or a panic.
//!
//! Every fetch entry has the same shape:
//!
//! ```ignore
//! let ctx = edge::begin("sync", &req, &env);
//! if ctx.is_preflight() {
//!     return edge::preflight(ctx);
//! }
//! let outcome = ctx.measure(handle(&req, &env)).await;
//! edge::finish(ctx, outcome)
//! ```
//!
//! `upstream_ms` in the log line is the time the request spent on upstream timers:
//! every upstream exchange (PostgREST, the embeddings API, Neo4j) races [`SLEEP`]'s
//! timer (`shared::deadline::within`), which lives exactly as long as the exchange,
//! and so do the waits an upstream asks for (`Retry-After`); the gateway's call to a
//! function is measured with [`upstream`]. The JWKS fetch is not counted.

use edgesync_shared::auth::{self, Principal, Verified};
use edgesync_shared::config::{Config, ConfigError};
use edgesync_shared::cors::{self, Cors, Header};
use edgesync_shared::data_api::DataApi;
use edgesync_shared::deadline::{Deadline, Sleep};
use edgesync_shared::log::{self as request_log, RequestLog};
use edgesync_shared::{request_id, ApiError};
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use worker::{console_error, console_log, Date, Env, Headers, Method, Request, Response};

pub mod hub;

pub use edgesync_shared;
pub use worker;

/// Per-request context: the id, the start time, what the log line and the CORS
/// headers need.
pub struct RequestCtx {
    pub request_id: String,
    function: &'static str,
    started_ms: u64,
    method: String,
    path: String,
    origin: Option<String>,
    preflight: bool,
    cors: Rc<Cors>,
    upstream_ms: Rc<Cell<u64>>,
}

/// Start handling a request to the Worker named `function`: install the panic hook
/// (so a bug shows a message in the log, not just "unreachable"), pick the request
/// id, note the start time, read `ALLOWED_ORIGINS` (on its own, so even an answer
/// about a broken config carries CORS headers).
pub fn begin(function: &'static str, req: &Request, env: &Env) -> RequestCtx {
    console_error_panic_hook::set_once();
    let header = |name: &str| req.headers().get(name).ok().flatten();
    let incoming = header("x-request-id");
    let origin = header("origin");
    // The method as received: `req.method()` reads an unknown one as GET.
    let method = req.inner().method();
    RequestCtx {
        request_id: request_id::accept_or_generate(incoming.as_deref()),
        function,
        started_ms: Date::now().as_millis(),
        preflight: cors::is_preflight(&method, origin.as_deref(), header("access-control-request-method").as_deref()),
        method,
        path: req.path(),
        origin,
        cors: cors_policy(env),
        upstream_ms: Rc::new(Cell::new(0)),
    }
}

impl RequestCtx {
    /// A CORS preflight: answer it with [`preflight`], before any handler (it needs no
    /// token, and `require_method` would refuse `OPTIONS`).
    pub fn is_preflight(&self) -> bool {
        self.preflight
    }

    /// Run the handler, counting the upstream time it spends into this request's
    /// log line. Requests in one isolate interleave at their awaits, so the count
    /// follows whichever request is being polled.
    pub async fn measure<F: Future>(&self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        let counter = self.upstream_ms.clone();
        std::future::poll_fn(move |cx| {
            let previous = CURRENT_UPSTREAM.with(|c| c.replace(Some(counter.clone())));
            let polled = fut.as_mut().poll(cx);
            CURRENT_UPSTREAM.with(|c| *c.borrow_mut() = previous);
            polled
        })
        .await
    }
}

thread_local! {
    /// The upstream-time counter of the request being polled (see [`RequestCtx::measure`]).
    static CURRENT_UPSTREAM: RefCell<Option<Rc<Cell<u64>>>> = const { RefCell::new(None) };
}

/// Adds the time from its start to its drop to the counter of the request that
/// started it.
struct UpstreamWait {
    started_ms: u64,
    counter: Option<Rc<Cell<u64>>>,
}

impl UpstreamWait {
    fn start() -> UpstreamWait {
        UpstreamWait { started_ms: Date::now().as_millis(), counter: CURRENT_UPSTREAM.with(|c| c.borrow().clone()) }
    }
}

impl Drop for UpstreamWait {
    fn drop(&mut self) {
        if let Some(counter) = &self.counter {
            counter.set(counter.get() + Date::now().as_millis().saturating_sub(self.started_ms));
        }
    }
}

/// Await an upstream call (the gateway's call to a function), counting its time as
/// upstream time.
pub async fn upstream<F: Future>(fut: F) -> F::Output {
    let _wait = UpstreamWait::start();
    fut.await
}

/// Answer a preflight: `204` with the CORS headers when the origin is allowed, else
/// the JSON `403 origin_not_allowed` without them.
pub fn preflight(ctx: RequestCtx) -> worker::Result<Response> {
    match ctx.cors.preflight(ctx.origin.as_deref()) {
        Ok(headers) => {
            let response = Response::empty().map(|r| r.with_status(204));
            complete(ctx, response, None, headers)
        }
        Err(err) => finish(ctx, Err(err)),
    }
}

/// Turn a handler's outcome into the response the client gets, and log it.
pub fn finish(ctx: RequestCtx, outcome: Result<Response, ApiError>) -> worker::Result<Response> {
    let cors_headers = ctx.cors.answer_headers(ctx.origin.as_deref());
    match outcome {
        Ok(response) => complete(ctx, Ok(response), None, cors_headers),
        Err(err) => {
            let response = error_response(&err, &ctx.request_id);
            complete(ctx, response, Some(&err), cors_headers)
        }
    }
}

/// Log the request's line; add `x-request-id`, `Vary: Origin` and exactly the CORS
/// headers decided here (ones an answer passed on from another Worker brought are
/// replaced).
fn complete(
    ctx: RequestCtx,
    response: worker::Result<Response>,
    error: Option<&ApiError>,
    cors_headers: Vec<Header>,
) -> worker::Result<Response> {
    let status = match (&response, error) {
        (_, Some(err)) => err.status,
        (Ok(r), None) => r.status_code(),
        (Err(_), None) => 500,
    };
    let warnings: Vec<String> =
        ctx.cors.ignored().iter().map(|e| format!("{}: not an origin, ignored: {e}", cors::SETTING)).collect();
    let line = request_log::line(&RequestLog {
        request_id: &ctx.request_id,
        function: ctx.function,
        method: &ctx.method,
        path: &ctx.path,
        status,
        duration_ms: Date::now().as_millis().saturating_sub(ctx.started_ms),
        upstream_ms: Some(ctx.upstream_ms.get()),
        error,
        warnings: &warnings,
    })
    .to_string();
    if status >= 500 {
        console_error!("{line}");
    } else {
        console_log!("{line}");
    }
    response.map(|mut r| {
        let headers = r.headers_mut();
        let _ = headers.set("x-request-id", &ctx.request_id);
        for name in cors::DECIDED_HEADERS {
            let _ = headers.delete(name);
        }
        for (name, value) in &cors_headers {
            let _ = headers.set(name, value);
        }
        let vary = cors::vary_with_origin(headers.get("vary").ok().flatten().as_deref());
        let _ = headers.set("vary", &vary);
        r
    })
}

/// A copy of `headers` that can be changed (the headers of an answer from `fetch` or
/// a service binding cannot).
pub fn mutable_headers(headers: &Headers) -> Headers {
    let copy = Headers::new();
    for (name, value) in headers.entries() {
        let _ = copy.append(&name, &value);
    }
    copy
}

/// The JSON error response. Falls back to a plain body if JSON cannot be built.
pub fn error_response(err: &ApiError, request_id: &str) -> worker::Result<Response> {
    let mut response = match Response::from_json(&err.body(request_id)) {
        Ok(r) => r.with_status(err.status),
        Err(_) => Response::error(err.message.clone(), err.status)?,
    };
    for (name, value) in err.headers() {
        let _ = response.headers_mut().set(name, &value);
    }
    Ok(response)
}

/// A JSON response with `status`.
pub fn json(status: u16, body: &Value) -> Result<Response, ApiError> {
    Response::from_json(body)
        .map(|r| r.with_status(status))
        .map_err(|e| ApiError::internal(format!("could not build the response: {e}")))
}

/// Look up a var or secret (both are plain strings to the Worker).
pub fn setting(env: &Env, name: &str) -> Option<String> {
    env.var(name).ok().map(|v| v.to_string())
}

thread_local! {
    /// This isolate's config, read on its first request: a Worker's vars and secrets
    /// are fixed for the life of its isolate (a new deployment is a new isolate).
    static CONFIG: RefCell<Option<Result<Rc<Config>, ConfigError>>> = const { RefCell::new(None) };
}

/// The typed config from the Worker's vars and secrets, parsed once per isolate (its
/// error too: a broken setting stays broken until the next deployment).
pub fn config(env: &Env) -> Result<Rc<Config>, ConfigError> {
    CONFIG.with(|cached| {
        cached.borrow_mut().get_or_insert_with(|| Config::from_lookup(|name| setting(env, name)).map(Rc::new)).clone()
    })
}

thread_local! {
    /// This isolate's `ALLOWED_ORIGINS`, parsed on its first request (see [`CONFIG`]).
    static CORS: RefCell<Option<Rc<Cors>>> = const { RefCell::new(None) };
    /// This isolate's PostgREST client, built on its first use (see [`CONFIG`]).
    static DATA_API: RefCell<Option<Rc<DataApi>>> = const { RefCell::new(None) };
}

/// The CORS policy, read apart from [`config`] so that even an answer about a broken
/// config carries CORS headers; parsed once per isolate.
fn cors_policy(env: &Env) -> Rc<Cors> {
    CORS.with(|cached| {
        cached
            .borrow_mut()
            .get_or_insert_with(|| Rc::new(Cors::from_setting(setting(env, cors::SETTING).as_deref())))
            .clone()
    })
}

/// Unix time in seconds, from the runtime's clock.
pub fn now_secs() -> u64 {
    Date::now().as_millis() / 1000
}

/// Milliseconds since the epoch, for measuring latency.
pub fn now_ms() -> u64 {
    Date::now().as_millis()
}

/// Wait until `at_ms` (the runtime's clock, as [`now_ms`]) if it is still ahead.
pub async fn sleep_until(at_ms: u64) {
    let ms = at_ms.saturating_sub(now_ms());
    if ms > 0 {
        worker::Delay::from(std::time::Duration::from_millis(ms)).await;
    }
}

/// Verify the request's bearer token; every failure is a JSON 401/403/503.
pub async fn authenticate(req: &Request, config: &Config) -> Result<Verified, ApiError> {
    let header = req.headers().get("authorization").ok().flatten();
    authenticate_header(header.as_deref(), config).await
}

/// As [`authenticate`], for a token that did not come in `Authorization` (a
/// WebSocket's subprotocol).
pub async fn authenticate_header(header: Option<&str>, config: &Config) -> Result<Verified, ApiError> {
    auth::authenticate(header, &config.auth, now_secs(), Some(deadline(config.upstream_timeout_ms)))
        .await
        .map_err(ApiError::from)
}

/// Reject methods other than `allowed` with 405 and an `Allow` header. Judged by the
/// method as received: `req.method()` reads an unknown method (`QUERY`) as GET.
pub fn require_method(req: &Request, allowed: &[Method]) -> Result<(), ApiError> {
    let names: Vec<&str> = allowed.iter().map(|m| m.as_ref()).collect();
    edgesync_shared::error::require_method(&req.inner().method(), &names)
}

/// The common shape of a function that is routed at one path.
pub fn require_path(req: &Request, path: &str) -> Result<(), ApiError> {
    let actual = req.path();
    if actual == path || actual.strip_prefix(path) == Some("/") {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no such endpoint: {actual}")))
    }
}

/// The signed-in user's id; the service role has no user and is refused (403) by the
/// per-user endpoints.
pub fn require_user(verified: &Verified) -> Result<&str, ApiError> {
    match &verified.principal {
        Principal::User { user_id } => Ok(user_id),
        Principal::ServiceRole => {
            Err(ApiError::forbidden("user_required", "this endpoint acts for a user; call it with a user's token"))
        }
    }
}

/// The body of a JSON request, refusing (415) other content types and (413) bodies
/// over `max` bytes, judged first by `Content-Length` so an oversized upload is not
/// read at all.
pub async fn json_body(
    req: &mut Request,
    max: usize,
    too_large: impl Fn(usize) -> ApiError,
) -> Result<Vec<u8>, ApiError> {
    let content_type = req.headers().get("content-type").ok().flatten().unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if essence != "application/json" {
        return Err(ApiError::new(415, "unsupported_media_type", "send the body as application/json"));
    }
    let declared = req.headers().get("content-length").ok().flatten().and_then(|v| v.trim().parse::<usize>().ok());
    if let Some(len) = declared.filter(|len| *len > max) {
        return Err(too_large(len));
    }
    let body = req
        .bytes()
        .await
        .map_err(|e| ApiError::bad_request("unreadable_body", format!("the request body could not be read: {e}")))?;
    if body.len() > max {
        return Err(too_large(body.len()));
    }
    Ok(body)
}

/// The PostgREST client for this deployment, bounded by `UPSTREAM_TIMEOUT_MS`: built
/// once per isolate from its [`config`] (which is fixed for the isolate's life) and
/// shared by every request after that.
pub fn data_api(config: &Config) -> Rc<DataApi> {
    DATA_API.with(|cached| {
        cached
            .borrow_mut()
            .get_or_insert_with(|| {
                Rc::new(
                    DataApi::new(config.postgrest_url.clone(), config.anon_key.clone())
                        .with_deadline(deadline(config.upstream_timeout_ms)),
                )
            })
            .clone()
    })
}

/// The runtime's timer, for upstream deadlines and waits an upstream asks for.
/// Its time counts as the request's upstream time (see the crate docs).
pub const SLEEP: Sleep<'static> = &|ms: u64| -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
    let wait = UpstreamWait::start();
    Box::pin(async move {
        let _wait = wait;
        worker::Delay::from(std::time::Duration::from_millis(ms)).await
    })
};

/// A deadline of `ms` on the runtime's timer.
pub fn deadline(ms: u64) -> Deadline<'static> {
    Deadline { ms, sleep: SLEEP }
}

/// A JSON response that no cache may keep (per-user data).
pub fn private_json(body: &Value) -> Result<Response, ApiError> {
    private_json_bytes(
        serde_json::to_vec(body).map_err(|e| ApiError::internal(format!("could not build the response: {e}")))?,
    )
}

/// [`private_json`] for a body that is already JSON.
pub fn private_json_bytes(body: Vec<u8>) -> Result<Response, ApiError> {
    let mut response =
        Response::from_bytes(body).map_err(|e| ApiError::internal(format!("could not build the response: {e}")))?;
    let headers = response.headers_mut();
    let _ = headers.set("content-type", "application/json");
    let _ = headers.set("cache-control", "no-store");
    Ok(response)
}
