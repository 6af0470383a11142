//! PowerSync's sync protocol: `POST /sync/stream` and `GET /write-checkpoint2.json`, so
//! the stock PowerSync SDKs sync against edgesync with no PowerSync Service.
//!
//! Thin: verify the token (`Token` or `Bearer`), parse the request
//! (`shared::powersync`), then do what [`StreamLoop`] decides: checkpoint and page RPCs
//! with the user's own token (RLS applies), waits on the user's `LiveHub` for pokes.
//! Pages are the database's NDJSON lines, passed on as bytes.

use std::collections::BTreeMap;
use std::rc::Rc;

use edgesync_edge::{self as edge, edgesync_shared as shared};
use shared::data_api::{Caller, DataApi};
use shared::powersync::{self as ps, Action, Checkpoint, StreamLimits, StreamLoop, StreamingSyncRequest, Turn};
use shared::ApiError;
use worker::{Delay, Env, Method, Request, Response};

use crate::hub;

/// The verified caller of a PowerSync route.
struct PsCaller {
    token: String,
    user: String,
    exp: u64,
}

async fn verify(req: &Request, config: &shared::config::Config) -> Result<PsCaller, ApiError> {
    let header = req.headers().get("authorization").ok().flatten();
    let token = ps::powersync_token(header.as_deref())?.to_owned();
    let verified = edge::authenticate_header(Some(&format!("Bearer {token}")), config).await?;
    let user = edge::require_user(&verified)?.to_owned();
    let exp = verified.claims.get("exp").and_then(serde_json::Value::as_u64).unwrap_or(0);
    Ok(PsCaller { token, user, exp })
}

/// `GET /write-checkpoint2.json`: the position every acknowledged write of the caller
/// is below, on the protocol's scale. The user's hub is poked with it, so an open
/// stream sends a checkpoint that reaches it as soon as the watermark does, even when
/// no bucket changed (the SDK waits for one before it shows its own writes as synced).
pub async fn write_checkpoint(req: &Request, env: &Env) -> Result<Response, ApiError> {
    edge::require_method(req, &[Method::Get])?;
    let config = edge::config(env)?;
    let caller = verify(req, &config).await?;
    let api = edge::data_api(&config);
    let answer = api.rpc(Caller::User(&caller.token), ps::WRITE_CHECKPOINT_RPC, &serde_json::json!({})).await?;
    let x = answer.as_str().and_then(ps::parse_op_id).ok_or_else(|| {
        ApiError::bad_gateway("upstream_bad_response", "the write checkpoint answer is not a position")
    })?;
    if let Err(e) = hub::poke(env, &caller.user, x).await {
        worker::console_warn!("powersync: write checkpoint poke not delivered: {e}");
    }
    edge::private_json_bytes(ps::write_checkpoint_body(x)?.into_bytes())
}

/// `POST /sync/stream`: the first checkpoint is fetched before the answer starts, so
/// a bad token, body or database is still a JSON error; after that the stream only
/// ends (cleanly) and the client resumes from its last op id.
pub async fn stream(req: &mut Request, env: &Env) -> Result<Response, ApiError> {
    edge::require_method(req, &[Method::Post])?;
    let config = edge::config(env)?;
    let caller = verify(req, &config).await?;
    let body = edge::json_body(req, ps::request::MAX_REQUEST_BYTES, ps::too_large_request).await?;
    let request = StreamingSyncRequest::parse(&body)?;
    let resume = request.resume(&caller.user, None);
    let limits = StreamLimits::from_settings(|k| edge::setting(env, k))?;
    let mut machine = StreamLoop::new(caller.user.clone(), resume, caller.exp, edge::now_ms(), limits);
    let session = Session { api: edge::data_api(&config), env: env.clone(), caller };
    let first = machine.start(edge::now_ms());
    let turn = match first.action {
        Action::FetchCheckpoint { floor, .. } => {
            let cp = session.checkpoint(floor).await?;
            machine.on_checkpoint(cp, edge::now_ms())
        }
        _ => first,
    };
    let lines = futures_util::stream::unfold(Some((machine, session, turn)), |state| async move {
        let (mut machine, mut session, turn) = state?;
        let (bytes, next) = session.step(&mut machine, turn).await;
        let more = next.map(|turn| (machine, session, turn));
        Some((Ok::<Vec<u8>, worker::Error>(bytes), more))
    });
    let mut response = Response::from_stream(lines)
        .map_err(|e| ApiError::internal("could not start the stream").with_log_detail(e.to_string()))?;
    let headers = response.headers_mut();
    for (name, value) in ps::STREAM_HEADERS {
        let _ = headers.set(name, value);
    }
    Ok(response)
}

/// What a stream's steps need besides its state machine.
struct Session {
    api: Rc<DataApi>,
    env: Env,
    caller: PsCaller,
}

impl Session {
    async fn checkpoint(&self, floor: u64) -> Result<Checkpoint, ApiError> {
        let answer = self.api.rpc_raw(
            Caller::User(&self.caller.token),
            ps::CHECKPOINT_RPC,
            ps::checkpoint_args(floor).to_string(),
        );
        Checkpoint::parse(&answer.await?)
    }

    /// The page's lines (to send as they are) and its trailer.
    async fn page(&self, h: u64, after: &BTreeMap<String, u64>) -> Result<(Vec<u8>, ps::PageTrailer), ApiError> {
        let answer = self.api.rpc_raw(Caller::User(&self.caller.token), ps::PAGE_RPC, ps::page_args(h, after));
        ps::page_answer(&answer.await?)
    }

    /// Write `turn`'s bytes and do its action: the bytes to send now, and the next turn
    /// (`None` once the stream has ended). Empty turns are run through, so every chunk
    /// sent holds at least one line.
    async fn step(&mut self, machine: &mut StreamLoop, mut turn: Turn) -> (Vec<u8>, Option<Turn>) {
        let mut out = std::mem::take(&mut turn.send);
        loop {
            let next = match turn.action {
                Action::End => {
                    worker::console_log!("{}", machine.stats().end_log(edge::now_ms()));
                    return (out, None);
                }
                Action::FetchCheckpoint { floor, at_ms } => {
                    let wait = at_ms.saturating_sub(edge::now_ms());
                    if wait > 0 {
                        Delay::from(std::time::Duration::from_millis(wait)).await;
                    }
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
                    match hub::wait(&self.env, &self.caller.user, after_w, ms).await {
                        Ok(poked) => machine.on_wait(poked, edge::now_ms()),
                        Err(e) => {
                            worker::console_warn!("powersync: the Durable Object could not be asked: {e}");
                            machine.on_wait_failed(edge::now_ms())
                        }
                    }
                }
            };
            turn = next;
            out.append(&mut turn.send);
            if !out.is_empty() {
                return (out, Some(turn));
            }
        }
    }
}

fn failed(machine: &mut StreamLoop, what: &str, e: &ApiError) -> Turn {
    worker::console_warn!(
        "powersync: the stream's {what} failed: {} {}",
        e.code,
        e.log_detail.as_deref().unwrap_or(&e.message)
    );
    machine.on_fetch_failed(edge::now_ms())
}
