//! `embed_entry`: embeddings for entries (README.md "Embeddings").
//!
//! - `POST /embed_entry` with a Supabase database-webhook payload: a nudge. It answers
//!   202 at once and, in `ctx.wait_until`, claims that entry's job and embeds it.
//! - `POST /embed_entry/drain`: claims and embeds due jobs now and answers with the
//!   report (operators, tests); the Cron Trigger runs the same drain.
//! - Cron Trigger: drains due jobs in batches, so a dropped webhook loses nothing.
//! - `POST /search {query, match_threshold?, match_count?}` with a user's token: embeds
//!   the query here (clients never hold an embeddings key) and calls `search_entries`
//!   with the user's own token, so RLS decides. It lives in this Worker because this
//!   is the Worker that holds the embeddings settings.
//!
//! Callers authenticate with the service-role JWT or the shared secret in
//! `x-webhook-secret` (compared in constant time). All work is in `shared::embed_jobs`.

use edgesync_edge::{self as edge, edgesync_shared as shared};
use serde_json::json;
use shared::config::{Config, ConfigError};
use shared::data_api::Caller;
use shared::embed::{self, EmbeddingsConfig, SearchRequest, WebhookAction, SEARCH_RPC};
use shared::embed_jobs::{embed_query, DrainReport, JobSettings, Route, Sleep};
use shared::ApiError;
use worker::{
    console_error, console_log, event, Context, Env, Method, Request, Response, ScheduleContext, ScheduledEvent,
};

/// The Worker's settings for its drains, checked before a drain starts.
fn settings(env: &Env) -> Result<(std::rc::Rc<Config>, JobSettings), ConfigError> {
    let config = edge::config(env)?;
    let settings = JobSettings::from_lookup(&config, |k| edge::setting(env, k))?;
    Ok((config, settings))
}

/// Drain due jobs: `entry`'s alone in one batch (a nudge), or up to the Cron's batches.
async fn drain(config: &Config, settings: &JobSettings, entry: Option<&str>) -> Result<DrainReport, ApiError> {
    let rounds = if entry.is_some() { 1 } else { settings.drain.cron_rounds };
    settings.drain(&edge::data_api(config), SLEEP).run(entry, rounds).await
}

/// The Worker's timer, for waits the embeddings API asks for and for deadlines.
const SLEEP: Sleep<'static> = edge::SLEEP;

#[event(fetch)]
async fn fetch(mut req: Request, env: Env, ctx: Context) -> worker::Result<Response> {
    let rctx = edge::begin("embed_entry", &req, &env);
    if rctx.is_preflight() {
        return edge::preflight(rctx);
    }
    let outcome = rctx.measure(handle(&mut req, &env, &ctx)).await;
    edge::finish(rctx, outcome)
}

#[event(scheduled)]
async fn scheduled(_event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    match settings(&env) {
        Ok((config, s)) => match drain(&config, &s, None).await {
            Ok(r) => console_log!("embed_entry cron: {}", json!(r)),
            Err(e) => console_error!("embed_entry cron failed: {} {}", e.code, e.message),
        },
        Err(e) => console_error!("embed_entry cron: {e}"),
    }
}

async fn handle(req: &mut Request, env: &Env, ctx: &Context) -> Result<Response, ApiError> {
    let route =
        Route::of(&req.path()).ok_or_else(|| ApiError::not_found(format!("no such endpoint: {}", req.path())))?;
    if route == Route::Search {
        return search(req, env).await;
    }
    edge::require_method(req, &[Method::Post])?;
    // Who is calling, before any other setting is looked at.
    authorize(req, env).await?;
    if route == Route::Drain {
        let (config, settings) = settings(env)?;
        let report = drain(&config, &settings, None).await?;
        return edge::json(200, &json!(report));
    }
    let body = edge::json_body(req, embed::MAX_WEBHOOK_BYTES, embed::too_large_webhook).await?;
    match embed::parse_webhook(&body)? {
        WebhookAction::Ignore { reason } => edge::json(200, &json!({ "ignored": reason })),
        WebhookAction::Embed { entry_id } => {
            let (config, settings) = settings(env)?;
            let id = entry_id.clone();
            ctx.wait_until(async move {
                match drain(&config, &settings, Some(&id)).await {
                    Ok(r) => console_log!("embed_entry {id}: {}", json!(r)),
                    Err(e) => console_error!("embed_entry {id} failed: {} {}", e.code, e.message),
                }
            });
            edge::json(202, &json!({ "accepted": true, "entry_id": entry_id }))
        }
    }
}

/// The shared webhook secret (constant-time) or a service-role token; nothing else.
async fn authorize(req: &Request, env: &Env) -> Result<(), ApiError> {
    if let Some(given) = req.headers().get("x-webhook-secret").ok().flatten() {
        return embed::authorize_webhook_secret(edge::setting(env, "EMBED_WEBHOOK_SECRET").as_deref(), Some(&given));
    }
    embed::require_service_role(&edge::authenticate(req, &*edge::config(env)?).await?.principal)
}

/// `POST /search`: the query is embedded here, the search runs as the user.
async fn search(req: &mut Request, env: &Env) -> Result<Response, ApiError> {
    edge::require_method(req, &[Method::Post])?;
    let config = edge::config(env)?;
    let verified = edge::authenticate(req, &config).await?;
    edge::require_user(&verified)?;
    let body = edge::json_body(req, embed::MAX_SEARCH_BYTES, embed::too_large_search).await?;
    let search = SearchRequest::parse(&body)?;
    let embeddings = EmbeddingsConfig::from_lookup(|k| edge::setting(env, k))?;
    let vector = embed_query(&embeddings, &search.query, SLEEP).await?;
    let results =
        edge::data_api(&config).rpc(Caller::User(&verified.token), SEARCH_RPC, &search.rpc_args(&vector)).await?;
    edge::private_json(&json!({ "results": results }))
}
