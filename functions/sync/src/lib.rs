//! `GET /sync`: delta pull of the signed-in user's rows (SPEC §5, §6a).
//!
//! Thin: verify the token, parse the query (`shared::sync`), one RPC to
//! `edgesync_pull` with the user's own token (RLS applies), shape the answer.

use edgesync_edge::{self as edge, edgesync_shared as shared};
use shared::data_api::Caller;
use shared::sync::{PullRequest, PULL_RPC};
use shared::ApiError;
use worker::{event, Context, Env, Method, Request, Response};

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let ctx = edge::begin("sync", &req, &env);
    if ctx.is_preflight() {
        return edge::preflight(ctx);
    }
    let outcome = ctx.measure(handle(&req, &env)).await;
    edge::finish(ctx, outcome)
}

async fn handle(req: &Request, env: &Env) -> Result<Response, ApiError> {
    edge::require_path(req, "/sync")?;
    edge::require_method(req, &[Method::Get])?;
    let config = edge::config(env)?;
    let verified = edge::authenticate(req, &config).await?;
    edge::require_user(&verified)?;
    let url = req.url().map_err(|e| ApiError::bad_request("invalid_url", e.to_string()))?;
    let pull = PullRequest::from_query(url.query().unwrap_or_default())?;
    let answer =
        edge::data_api(&config).rpc_raw(Caller::User(&verified.token), PULL_RPC, pull.rpc_args().to_string()).await?;
    edge::private_json_bytes(pull.response(&answer)?)
}
