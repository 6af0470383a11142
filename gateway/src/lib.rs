//! # edgesync-gateway
//!
//! Serves every function on one URL for local development (`cargo xtask dev`), and
//! optionally in production: the first path segment picks the function's Worker,
//! reached through a service binding. It adds an `x-request-id` so one id follows
//! the request into the function's logs, and answers unknown paths with the JSON
//! error. It never reads bodies or tokens. It answers `GET|HEAD /openapi.json` itself
//! with `openapi.yaml` (converted to JSON by `build.rs`), and CORS preflights by its
//! own `ALLOWED_ORIGINS`, which also decides the CORS headers of every answer it
//! passes on.

use edgesync_edge::{self as edge, edgesync_shared::ApiError};
use worker::{event, web_sys, Context, Env, Method, Request, RequestInit, Response};

/// `openapi.yaml` as JSON, converted by `build.rs` at build time.
const OPENAPI_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));
/// Where the gateway serves it itself (no function Worker is called).
const OPENAPI_PATH: &str = "/openapi.json";

/// Path → service binding name (see the top-level `wrangler.toml`).
const ROUTES: &[(&str, &str)] = &[
    ("/health", "HEALTH"),
    // PowerSync's protocol. Before `/sync`: the first prefix that matches wins.
    ("/sync/stream", "POWERSYNC"),
    ("/write-checkpoint2.json", "POWERSYNC"),
    ("/sync", "SYNC"),
    // Live updates are the sync Worker's: it exports the Durable Object holding sockets.
    ("/live", "SYNC"),
    ("/upload", "UPLOAD"),
    ("/populate", "POPULATE"),
    ("/embed_entry", "EMBED_ENTRY"),
    // The embeddings Worker serves search too: it holds the embeddings settings.
    ("/search", "EMBED_ENTRY"),
];

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let ctx = edge::begin("gateway", &req, &env);
    // The gateway answers preflights itself: its own ALLOWED_ORIGINS decides for its URL.
    if ctx.is_preflight() {
        return edge::preflight(ctx);
    }
    let outcome =
        if req.path() == OPENAPI_PATH { openapi(&req) } else { ctx.measure(forward(req, &env, &ctx.request_id)).await };
    edge::finish(ctx, outcome)
}

/// `GET|HEAD /openapi.json`: the API description, served from the bundle.
fn openapi(req: &Request) -> Result<Response, ApiError> {
    edge::require_method(req, &[Method::Get, Method::Head])?;
    let mut response =
        Response::ok(OPENAPI_JSON).map_err(|e| ApiError::internal(format!("could not build the response: {e}")))?;
    let _ = response.headers_mut().set("content-type", "application/json");
    Ok(response)
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
    let headers = edge::mutable_headers(req.headers());
    let _ = headers.set("x-request-id", request_id);
    let mut init = RequestInit::new();
    init.with_method(req.method()).with_headers(headers);
    let method = req.inner().method();
    // fetch refuses a GET or HEAD with a body; such a body means nothing, so drop it.
    if let Some(body) = req.inner().body().filter(|_| edgesync_shared::error::method_allows_body(&method)) {
        init.with_body(Some(body.into()));
    }
    let url = req.url().map_err(|e| ApiError::bad_request("bad_url", format!("request URL: {e}")))?;
    // The method as received: worker's `Method` reads one it does not know (`QUERY`)
    // as GET, so forwarding `req.method()` would turn it into a GET. The function
    // answers 405 for it.
    let init = web_sys::RequestInit::from(&init);
    init.set_method(&method);
    let forwarded = web_sys::Request::new_with_str_and_init(url.as_str(), &init)
        .map(Request::from)
        .map_err(|e| ApiError::internal(format!("could not forward the request: {e:?}")))?;
    let answer = edge::upstream(service.fetch_request(forwarded)).await.map_err(|e| {
        ApiError::bad_gateway("function_unreachable", format!("the {binding} function did not answer"))
            .with_log_detail(e.to_string())
    })?;
    // Its headers are immutable; `finish` sets the CORS headers on a copy.
    let headers = edge::mutable_headers(answer.headers());
    let (builder, body) = answer.into_parts();
    Ok(builder.with_headers(headers).body(body))
}
