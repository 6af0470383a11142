//! # edgesync-gateway
//!
//! Serves every function on one URL for local development (`cargo xtask dev`), and
//! optionally in production: the first path segment picks the function's Worker,
//! reached through a service binding. It adds an `x-request-id` so one id follows
//! the request into the function's logs, and answers unknown paths with the JSON
//! error. It never reads bodies or tokens.

use edgesync_edge::{self as edge, edgesync_shared::ApiError};
use worker::{event, Context, Env, Headers, Request, RequestInit, Response};

/// Path → service binding name (see the top-level `wrangler.toml`).
const ROUTES: &[(&str, &str)] = &[
    ("/health", "HEALTH"),
    ("/sync", "SYNC"),
    ("/upload", "UPLOAD"),
    ("/populate", "POPULATE"),
    ("/embed_entry", "EMBED_ENTRY"),
    // The embeddings Worker serves search too: it holds the embeddings settings.
    ("/search", "EMBED_ENTRY"),
];

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let ctx = edge::begin(&req);
    let outcome = forward(req, &env, &ctx.request_id).await;
    edge::finish(ctx, outcome)
}

fn binding_for(path: &str) -> Option<&'static str> {
    ROUTES
        .iter()
        .find(|(prefix, _)| path == *prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/')))
        .map(|(_, binding)| *binding)
}

async fn forward(req: Request, env: &Env, request_id: &str) -> Result<Response, ApiError> {
    let path = req.path();
    let binding = binding_for(&path).ok_or_else(|| ApiError::not_found(format!("no such endpoint: {path}")))?;
    let service =
        env.service(binding).map_err(|e| ApiError::internal(format!("service binding {binding} is missing: {e}")))?;

    // The incoming request's headers are immutable; build a copy that carries the id.
    let headers = Headers::new();
    for (name, value) in req.headers().entries() {
        let _ = headers.append(&name, &value);
    }
    let _ = headers.set("x-request-id", request_id);
    let mut init = RequestInit::new();
    init.with_method(req.method()).with_headers(headers);
    if let Some(body) = req.inner().body() {
        init.with_body(Some(body.into()));
    }
    let url = req.url().map_err(|e| ApiError::bad_request("bad_url", format!("request URL: {e}")))?;
    let forwarded = Request::new_with_init(url.as_str(), &init)
        .map_err(|e| ApiError::internal(format!("could not forward the request: {e}")))?;
    service.fetch_request(forwarded).await.map_err(|e| {
        ApiError::bad_gateway("function_unreachable", format!("the {binding} function did not answer: {e}"))
    })
}
