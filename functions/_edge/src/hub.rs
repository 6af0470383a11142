//! Calls to a user's `LiveHub` Durable Object (`functions/_live_hub`), the one place
//! they are made: the sync Worker's long-poll, `/live` and `/live/poke`, and the
//! PowerSync Worker's streams. A Durable Object has no URL of its own: it is reached
//! through the `LIVE` binding at `https://hub/poke`, `/wait` and `/socket`
//! (`shared::live::hub::HubCall`, which also reads them on the hub's side).

use edgesync_shared::live::hub::{self, HubCall};
use edgesync_shared::ApiError;
use worker::{Env, Headers, Method, Request, RequestInit, Response};

/// The binding of the `LiveHub` namespace (each Worker's `wrangler.toml`).
pub const BINDING: &str = "LIVE";

fn stub(env: &Env, user: &str) -> Result<worker::Stub, ApiError> {
    env.durable_object(BINDING).and_then(|ns| ns.get_by_name(user)).map_err(|e| unavailable(e.to_string()))
}

/// One call to `user`'s hub; its answer as it is (a 101 included).
async fn call(env: &Env, user: &str, call: HubCall) -> Result<Response, ApiError> {
    let stub = stub(env, user)?;
    let headers = Headers::new();
    let mut init = RequestInit::new();
    match call {
        HubCall::Poke { .. } => _ = init.with_method(Method::Post),
        HubCall::Wait { .. } => {}
        HubCall::Socket { .. } => _ = headers.set("upgrade", "websocket"),
    }
    init.with_headers(headers);
    let req = Request::new_with_init(&call.url(), &init)
        .map_err(|e| ApiError::internal("could not ask the live hub").with_log_detail(e.to_string()))?;
    crate::upstream(stub.fetch_with_request(req)).await.map_err(|e| unavailable(e.to_string()))
}

fn unavailable(detail: String) -> ApiError {
    ApiError::unavailable("live_unavailable", "live updates are not available right now").with_log_detail(detail)
}

/// Tell `user`'s hub about a change reaching `checkpoint`.
pub async fn poke(env: &Env, user: &str, checkpoint: u64) -> Result<(), ApiError> {
    match call(env, user, HubCall::Poke { checkpoint }).await?.status_code() {
        200..=299 => Ok(()),
        status => Err(unavailable(format!("the live hub answered the poke with {status}"))),
    }
}

/// Wait up to `ms` for a poke newer than `after`: its checkpoint, or `None`.
pub async fn wait(env: &Env, user: &str, after: u64, ms: u64) -> Result<Option<u64>, ApiError> {
    let body =
        call(env, user, HubCall::Wait { after, ms }).await?.bytes().await.map_err(|e| unavailable(e.to_string()))?;
    hub::parse_wait_answer(&body).ok_or_else(|| unavailable("the live hub's wait answer is not valid".into()))
}

/// Open the caller's socket on their hub; the 101 answer is passed back as it is.
pub async fn open_socket(env: &Env, user: &str, expires: u64, subprotocol: bool) -> Result<Response, ApiError> {
    call(env, user, HubCall::Socket { expires, subprotocol }).await
}
