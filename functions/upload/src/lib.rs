//! `POST /upload`: apply the client's outbox batch exactly once (SPEC §6, §6a).
//!
//! Thin: verify the token, read and validate the body (`shared::upload`), one RPC to
//! `edgesync_push` with the user's own token (RLS applies; the whole batch and the
//! client's last op_id commit in one transaction), shape the answer.

use edgesync_edge::{self as edge, edgesync_shared as shared};
use shared::data_api::Caller;
use shared::upload::{too_large_body, UploadBatch, MAX_BODY_BYTES, PUSH_RPC};
use shared::ApiError;
use worker::{event, Context, Env, Method, Request, Response};

#[event(fetch)]
async fn fetch(mut req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let ctx = edge::begin("upload", &req, &env);
    if ctx.is_preflight() {
        return edge::preflight(ctx);
    }
    let outcome = ctx.measure(handle(&mut req, &env)).await;
    edge::finish(ctx, outcome)
}

async fn handle(req: &mut Request, env: &Env) -> Result<Response, ApiError> {
    edge::require_path(req, "/upload")?;
    edge::require_method(req, &[Method::Post])?;
    let config = edge::config(env)?;
    let verified = edge::authenticate(req, &config).await?;
    let user_id = edge::require_user(&verified)?;
    let body = edge::json_body(req, MAX_BODY_BYTES, too_large_body).await?;
    let batch = UploadBatch::parse(&body, user_id)?;
    let answer =
        edge::data_api(&config).rpc_raw(Caller::User(&verified.token), PUSH_RPC, batch.into_rpc_args()).await?;
    edge::private_json_bytes(UploadBatch::response(&answer)?)
}
