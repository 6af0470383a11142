//! `embed_entry`: embeddings from a database webhook. Not implemented yet (issue #5):
//! it verifies the token and answers 501, so callers get an honest error.

use edgesync_edge::{self as edge, edgesync_shared::ApiError};
use worker::{event, Context, Env, Method, Request, Response};

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let ctx = edge::begin(&req);
    let outcome = handle(&req, &env).await;
    edge::finish(ctx, outcome)
}

async fn handle(req: &Request, env: &Env) -> Result<Response, ApiError> {
    edge::require_path(req, "/embed_entry")?;
    edge::require_method(req, &[Method::Post])?;
    let config = edge::config(env)?;
    edge::authenticate(req, &config).await?;
    Err(ApiError::not_implemented("/embed_entry"))
}
