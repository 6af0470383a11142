//! PowerSync's sync protocol: `POST /sync/stream` and `GET /write-checkpoint2.json`, so
//! the stock PowerSync SDKs sync against edgesync with no PowerSync Service.
//!
//! Thin: verify the token (`Token` or `Bearer`), parse the request
//! (`shared::powersync`), then do what [`StreamLoop`] decides: checkpoint and page RPCs
//! with the user's own token (RLS applies), waits for pokes on the user's `LiveHub`
//! (the sync Worker's, through the `LIVE` binding). Pages are the database's NDJSON
//! lines, passed on as bytes.

use std::collections::BTreeMap;
use std::rc::Rc;

use edgesync_edge::{self as edge, edgesync_shared as shared, hub};
use shared::auth::Verified;
use shared::data_api::{Caller, DataApi};
use shared::powersync::{self as ps, Checkpoint, StreamIo, StreamLimits, StreamLoop, StreamingSyncRequest};
use shared::ApiError;
use worker::{event, Context, Env, Headers, Method, Request, Response, ResponseBuilder};

#[event(fetch)]
async fn fetch(mut req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let ctx = edge::begin("powersync", &req, &env);
    if ctx.is_preflight() {
        return edge::preflight(ctx);
    }
    let outcome = ctx.measure(route(&mut req, &env)).await;
    edge::finish(ctx, outcome)
}

async fn route(req: &mut Request, env: &Env) -> Result<Response, ApiError> {
    match req.path().trim_end_matches('/') {
        "/sync/stream" => stream(req, env).await,
        "/write-checkpoint2.json" => write_checkpoint(req, env).await,
        path => Err(ApiError::not_found(format!("no such endpoint: {path}"))),
    }
}

/// The caller (`Authorization: Token <jwt>`, or `Bearer`) verified, their user id, and
/// the PostgREST client to call as them.
async fn verify(req: &Request, env: &Env) -> Result<(Verified, String, Rc<DataApi>), ApiError> {
    let config = edge::config(env)?;
    let header = req.headers().get("authorization").ok().flatten();
    let token = ps::powersync_token(header.as_deref())?;
    let verified = edge::authenticate_header(Some(&format!("Bearer {token}")), &config).await?;
    let user = edge::require_user(&verified)?.to_owned();
    Ok((verified, user, edge::data_api(&config)))
}

/// `GET /write-checkpoint2.json`: the position every acknowledged write of the caller
/// is below. The user's hub is poked with it, so an open stream sends a checkpoint
/// reaching it as soon as the watermark does, even when no bucket changed (the SDK
/// waits for one before it shows its own writes as synced).
async fn write_checkpoint(req: &Request, env: &Env) -> Result<Response, ApiError> {
    edge::require_method(req, &[Method::Get])?;
    let (verified, user, api) = verify(req, env).await?;
    let answer = api.rpc(Caller::User(&verified.token), ps::WRITE_CHECKPOINT_RPC, &serde_json::json!({})).await?;
    let (x, body) = ps::write_checkpoint_answer(&answer)?;
    if let Err(e) = hub::poke(env, &user, x).await {
        worker::console_warn!("powersync: write checkpoint poke not delivered: {e}");
    }
    edge::private_json_bytes(body.into_bytes())
}

/// `POST /sync/stream`: the first checkpoint is fetched before the answer starts, so
/// a bad token, body or database is still a JSON error; after that the stream only
/// ends (cleanly) and the client resumes from its last op id.
async fn stream(req: &mut Request, env: &Env) -> Result<Response, ApiError> {
    edge::require_method(req, &[Method::Post])?;
    let (verified, user, api) = verify(req, env).await?;
    let body = edge::json_body(req, ps::request::MAX_REQUEST_BYTES, ps::too_large_request).await?;
    let resume = StreamingSyncRequest::parse(&body)?.resume(&user, None);
    let limits = StreamLimits::from_settings(|k| edge::setting(env, k))?;
    let mut machine = StreamLoop::new(user.clone(), resume, verified.expires(), edge::now_ms(), limits);
    let session = Session { api, env: env.clone(), token: verified.token, user };
    let turn = machine.first_turn(&session).await?;
    let chunks = futures_util::stream::unfold(Some((machine, session, turn)), |state| async move {
        let (mut machine, session, turn) = state?;
        let (bytes, next) = machine.step(&session, turn).await;
        Some((Ok::<Vec<u8>, worker::Error>(bytes), next.map(|turn| (machine, session, turn))))
    });
    ResponseBuilder::new()
        .with_headers(Headers::from_iter(ps::STREAM_HEADERS))
        .from_stream(chunks)
        .map_err(|e| ApiError::internal("could not start the stream").with_log_detail(e.to_string()))
}

/// A stream's runtime: the caller's RPCs and the user's hub.
struct Session {
    api: Rc<DataApi>,
    env: Env,
    token: String,
    user: String,
}

impl StreamIo for Session {
    fn now_ms(&self) -> u64 {
        edge::now_ms()
    }

    async fn sleep_until(&self, at_ms: u64) {
        edge::sleep_until(at_ms).await
    }

    async fn checkpoint(&self, floor: u64) -> Result<Checkpoint, ApiError> {
        let args = ps::checkpoint_args(floor).to_string();
        Checkpoint::parse(&self.api.rpc_raw(Caller::User(&self.token), ps::CHECKPOINT_RPC, args).await?)
    }

    async fn page(&self, h: u64, after: &BTreeMap<String, u64>) -> Result<(Vec<u8>, ps::PageTrailer), ApiError> {
        ps::page_answer(&self.api.rpc_raw(Caller::User(&self.token), ps::PAGE_RPC, ps::page_args(h, after)).await?)
    }

    async fn wait(&self, after_w: u64, ms: u64) -> Result<Option<u64>, ApiError> {
        hub::wait(&self.env, &self.user, after_w, ms).await
    }

    fn log(&self, line: &str, warning: bool) {
        if warning {
            worker::console_warn!("{line}");
        } else {
            worker::console_log!("{line}");
        }
    }
}
