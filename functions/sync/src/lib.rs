//! `GET /sync`: delta pull of the signed-in user's rows, and live updates:
//! `GET /sync?wait=` (long-poll), `GET /live` (WebSocket of pokes) and
//! `POST /live/poke` (the database's notice of a commit).
//!
//! Thin: verify the token, parse the query (`shared::sync`), one RPC to
//! `edgesync_pull` with the user's own token (RLS applies), shape the answer. The
//! long-poll's decisions are `shared::live::LongPoll`'s. This Worker exports the
//! per-user Durable Object `LiveHub` (`functions/_live_hub`), which only holds sockets
//! and waiting pulls and passes pokes on.

use edgesync_edge::{self as edge, edgesync_shared as shared, hub};
use shared::data_api::Caller;
use shared::live::{self, LongPoll, Step};
use shared::sync::{PullRequest, PULL_RPC};
use shared::ApiError;
use worker::{event, Context, Env, Method, Request, Response};

pub use edgesync_live_hub::LiveHub;

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let ctx = edge::begin("sync", &req, &env);
    if ctx.is_preflight() {
        return edge::preflight(ctx);
    }
    let outcome = ctx.measure(route(req, &env)).await;
    edge::finish(ctx, outcome)
}

async fn route(mut req: Request, env: &Env) -> Result<Response, ApiError> {
    match req.path().trim_end_matches('/') {
        "/live" => socket(&req, env).await,
        "/live/poke" => poke(&mut req, env).await,
        _ => pull(&req, env).await,
    }
}

async fn pull(req: &Request, env: &Env) -> Result<Response, ApiError> {
    edge::require_path(req, "/sync")?;
    edge::require_method(req, &[Method::Get])?;
    let config = edge::config(env)?;
    let verified = edge::authenticate(req, &config).await?;
    let user = edge::require_user(&verified)?;
    let url = req.url().map_err(|e| ApiError::bad_request("invalid_url", e.to_string()))?;
    let pull = PullRequest::from_query(url.query().unwrap_or_default())?;
    let api = edge::data_api(&config);
    let args = pull.rpc_args().to_string();
    let mut answer = api.rpc_raw(Caller::User(&verified.token), PULL_RPC, args.clone()).await?;
    if pull.wait > 0 {
        let mut poll = LongPoll::new(edge::now_ms(), pull.wait);
        let mut step = poll.on_page(live::summarize(&answer), edge::now_ms());
        loop {
            match step {
                Step::Answer => break,
                Step::Wait { after, until_ms } => {
                    let ms = until_ms.saturating_sub(edge::now_ms());
                    step = match hub::wait(env, user, after, ms).await {
                        Ok(poked) => poll.on_wait(poked, edge::now_ms()),
                        Err(e) => {
                            worker::console_warn!("live: the Durable Object could not be asked: {e}");
                            poll.on_wait_failed(edge::now_ms())
                        }
                    };
                }
                Step::Pull { at_ms } => {
                    edge::sleep_until(at_ms).await;
                    answer = api.rpc_raw(Caller::User(&verified.token), PULL_RPC, args.clone()).await?;
                    step = poll.on_page(live::summarize(&answer), edge::now_ms());
                }
            }
        }
    }
    edge::private_json_bytes(pull.response(&answer)?)
}

/// `GET /live`: the caller's WebSocket of pokes, held by their Durable Object.
async fn socket(req: &Request, env: &Env) -> Result<Response, ApiError> {
    edge::require_method(req, &[Method::Get])?;
    let upgrade = req.headers().get("upgrade").ok().flatten().unwrap_or_default();
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return Err(ApiError::new(426, "upgrade_required", "GET /live is a WebSocket: send Upgrade: websocket"));
    }
    let config = edge::config(env)?;
    let headers = req.headers();
    let (authorization, subprotocol) = live::socket_credentials(
        headers.get("authorization").ok().flatten().as_deref(),
        headers.get("sec-websocket-protocol").ok().flatten().as_deref(),
    );
    let verified = edge::authenticate_header(authorization.as_deref(), &config).await?;
    let user = edge::require_user(&verified)?;
    hub::open_socket(env, user, verified.expires(), subprotocol).await
}

/// `POST /live/poke`: from the database (pg_net, or the local relay), with the shared
/// secret. Wakes each named user's sockets and waiting pulls.
async fn poke(req: &mut Request, env: &Env) -> Result<Response, ApiError> {
    edge::require_method(req, &[Method::Post])?;
    let given = req.headers().get(live::POKE_SECRET_HEADER).ok().flatten();
    live::authorize_poke(edge::setting(env, "LIVE_POKE_SECRET").as_deref(), given.as_deref())?;
    let body = edge::json_body(req, live::MAX_POKE_BYTES, live::too_large_poke).await?;
    let poke = live::parse_poke(&body)?;
    let mut delivered = 0;
    for user in &poke.users {
        match hub::poke(env, user, poke.checkpoint).await {
            Ok(()) => delivered += 1,
            // A hint: a user whose object cannot be reached pulls at its next interval.
            Err(e) => worker::console_warn!("live: poke for one user not delivered: {e}"),
        }
    }
    edge::json(202, &serde_json::json!({ "users": poke.users.len(), "delivered": delivered }))
}
