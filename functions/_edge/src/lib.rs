//! # edgesync-edge
//!
//! The thin adapter between the Workers runtime and `edgesync-shared`, used by every
//! function crate. It knows `worker::Request`/`Response`/`Env`; it decides nothing.
//!
//! Invariant: a handler returns `Result<Response, ApiError>` and [`finish`] is the one
//! place that turns an error into the JSON error response with the request id, adds
//! `x-request-id`, and logs the request line. No handler path can reach the runtime
//! as an `Err` or a panic.

use edgesync_shared::auth::{self, Principal, Verified};
use edgesync_shared::config::{Config, ConfigError};
use edgesync_shared::data_api::DataApi;
use edgesync_shared::deadline::{Deadline, Sleep};
use edgesync_shared::{request_id, ApiError};
use serde_json::Value;
use worker::{console_error, console_log, Date, Env, Method, Request, Response};

pub use edgesync_shared;
pub use worker;

/// Per-request context: the id and the start time.
pub struct RequestCtx {
    pub request_id: String,
    started_ms: u64,
    method: String,
    path: String,
}

/// Start handling a request: install the panic hook (so a bug shows a message in the
/// log, not just "unreachable"), pick the request id, note the start time.
pub fn begin(req: &Request) -> RequestCtx {
    console_error_panic_hook::set_once();
    let incoming = req.headers().get("x-request-id").ok().flatten();
    RequestCtx {
        request_id: request_id::accept_or_generate(incoming.as_deref()),
        started_ms: Date::now().as_millis(),
        method: req.method().to_string(),
        path: req.path(),
    }
}

/// Turn a handler's outcome into the response the client gets, and log it.
pub fn finish(ctx: RequestCtx, outcome: Result<Response, ApiError>) -> worker::Result<Response> {
    let elapsed = Date::now().as_millis().saturating_sub(ctx.started_ms);
    let line = |status: u16| format!("{} {} {} {}ms req={}", ctx.method, ctx.path, status, elapsed, ctx.request_id);
    let response = match outcome {
        Ok(response) => {
            console_log!("{}", line(response.status_code()));
            Ok(response)
        }
        Err(err) => {
            if err.status >= 500 {
                console_error!("{} {}", line(err.status), err);
            } else {
                console_log!("{} {}", line(err.status), err.code);
            }
            error_response(&err, &ctx.request_id)
        }
    };
    response.map(|mut r| {
        let _ = r.headers_mut().set("x-request-id", &ctx.request_id);
        r
    })
}

/// The JSON error response. Falls back to a plain body if JSON cannot be built.
pub fn error_response(err: &ApiError, request_id: &str) -> worker::Result<Response> {
    let mut response = match Response::from_json(&err.body(request_id)) {
        Ok(r) => r.with_status(err.status),
        Err(_) => Response::error(err.message.clone(), err.status)?,
    };
    if err.status == 401 {
        let _ = response.headers_mut().set("www-authenticate", "Bearer");
    }
    if let Some(secs) = err.details.as_ref().and_then(|d| d.get("retry_after_secs")).and_then(Value::as_u64) {
        let _ = response.headers_mut().set("retry-after", &secs.to_string());
    }
    if let Some(Value::Array(allowed)) = err.details.as_ref().and_then(|d| d.get("allowed")) {
        let allow: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
        let _ = response.headers_mut().set("allow", &allow.join(", "));
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

/// The typed config from the Worker's vars and secrets.
pub fn config(env: &Env) -> Result<Config, ConfigError> {
    Config::from_lookup(|name| setting(env, name))
}

/// Unix time in seconds, from the runtime's clock.
pub fn now_secs() -> u64 {
    Date::now().as_millis() / 1000
}

/// Milliseconds since the epoch, for measuring latency.
pub fn now_ms() -> u64 {
    Date::now().as_millis()
}

/// Verify the request's bearer token; every failure is a JSON 401/403/503.
pub async fn authenticate(req: &Request, config: &Config) -> Result<Verified, ApiError> {
    let header = req.headers().get("authorization").ok().flatten();
    auth::authenticate(header.as_deref(), &config.auth, now_secs()).await.map_err(ApiError::from)
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

/// The PostgREST client for this deployment, bounded by `UPSTREAM_TIMEOUT_MS`.
pub fn data_api(config: &Config) -> DataApi {
    DataApi::new(config.postgrest_url.clone(), config.anon_key.clone())
        .with_deadline(deadline(config.upstream_timeout_ms))
}

/// The runtime's timer, for upstream deadlines and waits an upstream asks for.
pub const SLEEP: Sleep<'static> = &|ms: u64| -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
    Box::pin(worker::Delay::from(std::time::Duration::from_millis(ms)))
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
