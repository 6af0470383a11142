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
use shared::powersync::{self as ps, Action, Checkpoint, StreamLimits, StreamLoop, StreamingSyncRequest, Turn};
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

/// The caller (`Authorization: Token <jwt>`, or `Bearer`), verified, and their user id.
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
    let mut turn = machine.start(edge::now_ms());
    if let Action::FetchCheckpoint { floor, .. } = turn.action {
        turn = machine.on_checkpoint(session.checkpoint(floor).await?, edge::now_ms());
    }
    let chunks = futures_util::stream::unfold(Some((machine, session, turn)), |state| async move {
        let (mut machine, session, turn) = state?;
        let (bytes, next) = session.step(&mut machine, turn).await;
        Some((Ok::<Vec<u8>, worker::Error>(bytes), next.map(|turn| (machine, session, turn))))
    });
    ResponseBuilder::new()
        .with_headers(Headers::from_iter(ps::STREAM_HEADERS))
        .from_stream(chunks)
        .map_err(|e| ApiError::internal("could not start the stream").with_log_detail(e.to_string()))
}

/// What a stream's steps need besides its state machine.
struct Session {
    api: Rc<DataApi>,
    env: Env,
    token: String,
    user: String,
}

impl Session {
    async fn checkpoint(&self, floor: u64) -> Result<Checkpoint, ApiError> {
        let args = ps::checkpoint_args(floor).to_string();
        Checkpoint::parse(&self.api.rpc_raw(Caller::User(&self.token), ps::CHECKPOINT_RPC, args).await?)
    }

    /// The page's lines (to send as they are) and its trailer.
    async fn page(&self, h: u64, after: &BTreeMap<String, u64>) -> Result<(Vec<u8>, ps::PageTrailer), ApiError> {
        ps::page_answer(&self.api.rpc_raw(Caller::User(&self.token), ps::PAGE_RPC, ps::page_args(h, after)).await?)
    }

    /// Write `turn`'s bytes and do its action: the bytes to send now, and the next turn
    /// (`None` once the stream has ended). Empty turns are run through, so every chunk
    /// sent holds at least one line.
    async fn step(&self, machine: &mut StreamLoop, mut turn: Turn) -> (Vec<u8>, Option<Turn>) {
        let mut out = std::mem::take(&mut turn.send);
        loop {
            turn = match turn.action {
                Action::End => {
                    worker::console_log!("{}", machine.stats().end_log(edge::now_ms()));
                    return (out, None);
                }
                Action::FetchCheckpoint { floor, at_ms } => {
                    edge::sleep_until(at_ms).await;
                    match self.checkpoint(floor).await {
                        Ok(cp) => machine.on_checkpoint(cp, edge::now_ms()),
                        Err(e) => failed(machine, "checkpoint", &e),
                    }
                }
                Action::FetchPage { h, ref after } => match self.page(h, after).await {
                    Ok((lines, trailer)) => {
                        out.extend_from_slice(&lines);
                        machine.on_page(trailer, &lines, edge::now_ms())
                    }
                    Err(e) => failed(machine, "page", &e),
                },
                Action::Wait { after_w, until_ms } => {
                    let ms = until_ms.saturating_sub(edge::now_ms());
                    match hub::wait(&self.env, &self.user, after_w, ms).await {
                        Ok(poked) => machine.on_wait(poked, edge::now_ms()),
                        Err(e) => {
                            worker::console_warn!("powersync: the Durable Object could not be asked: {e}");
                            machine.on_wait_failed(edge::now_ms())
                        }
                    }
                }
            };
            out.append(&mut turn.send);
            if !out.is_empty() {
                return (out, Some(turn));
            }
        }
    }
}

fn failed(machine: &mut StreamLoop, what: &str, e: &ApiError) -> Turn {
    let detail = e.log_detail.as_deref().unwrap_or(&e.message);
    worker::console_warn!("powersync: the stream's {what} failed: {} {detail}", e.code);
    machine.on_fetch_failed(edge::now_ms())
}
