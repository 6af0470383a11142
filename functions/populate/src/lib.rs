//! `POST /populate`: bulk load from Neo4j or legacy records (README.md "Populate").
//!
//! Thin: verify the token, decide whose data it is (a user populates their own; the
//! service role names a user), parse the body, and hand over to
//! `shared::populate::Populate`, which talks to Neo4j and to PostgREST — with the
//! user's own token, so RLS applies, or with the service role for a named user.
//!
//! The Cron Trigger refreshes the users whose Neo4j sync is due
//! (`edgesync_populate_due`): incrementally, resuming unfinished runs, within one
//! invocation's subrequest and time budget.

use edgesync_edge::{self as edge, edgesync_shared as shared};
use serde_json::json;
use shared::config::ConfigError;
use shared::data_api::{Caller, DataApi};
use shared::populate::mapping::Mapping;
use shared::populate::neo4j::Neo4jConfig;
use shared::populate::{
    due_args, due_users, too_large_body, whose, CronBudget, Mode, Populate, PopulateConfig, PopulateRequest, Whose,
    DUE_RPC, MAX_BODY_BYTES,
};
use shared::ApiError;
use worker::{
    console_error, console_log, event, Context, Env, Method, Request, Response, ScheduleContext, ScheduledEvent,
};

#[event(fetch)]
async fn fetch(mut req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let ctx = edge::begin("populate", &req, &env);
    if ctx.is_preflight() {
        return edge::preflight(ctx);
    }
    let outcome = ctx.measure(handle(&mut req, &env)).await;
    edge::finish(ctx, outcome)
}

fn settings(env: &Env) -> Result<PopulateConfig, ConfigError> {
    PopulateConfig::from_lookup(|k| edge::setting(env, k))
}

fn neo4j_settings(env: &Env) -> Result<(Neo4jConfig, Mapping), ApiError> {
    let neo = Neo4jConfig::from_lookup(|k| edge::setting(env, k))?.ok_or_else(|| {
        ApiError::unavailable("source_not_configured", "the neo4j source is not configured here (NEO4J_URL)")
    })?;
    Ok((neo, Mapping::from_setting(edge::setting(env, "NEO4J_MAPPING"))?))
}

/// A run for `user_id` (`None`: the caller's own) on the Worker's clock and timer.
fn runner<'a>(
    api: &'a DataApi,
    caller: Caller<'a>,
    user_id: Option<&'a str>,
    config: &'a PopulateConfig,
) -> Populate<'a> {
    Populate { api, caller, user_id, config, now_ms: &edge::now_ms, sleep: edge::SLEEP }
}

async fn handle(req: &mut Request, env: &Env) -> Result<Response, ApiError> {
    edge::require_path(req, "/populate")?;
    edge::require_method(req, &[Method::Post])?;
    let config = edge::config(env)?;
    let verified = edge::authenticate(req, &config).await?;
    let body = edge::json_body(req, MAX_BODY_BYTES, too_large_body).await?;
    let request = PopulateRequest::parse(&body)?;
    let (caller, user_id) = match whose(&verified.principal, request.user_id())? {
        Whose::Own => (Caller::User(&verified.token), None),
        Whose::Named(user) => (Caller::ServiceRole(config.require_service_role_key()?), Some(user)),
    };
    let populate_config = settings(env)?;
    let api = edge::data_api(&config);
    let populate = runner(&api, caller, user_id, &populate_config);
    match &request {
        PopulateRequest::Neo4j { run, mode, max_pages, .. } => {
            let (neo, mapping) = neo4j_settings(env)?;
            let report = populate
                .neo4j(&neo, &mapping, run.as_deref(), *mode, *max_pages, populate_config.max_subrequests)
                .await?;
            edge::private_json(&json!(report))
        }
        PopulateRequest::Legacy { records, .. } => edge::private_json(&populate.legacy(records).await?),
    }
}

#[event(scheduled)]
async fn scheduled(_event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    match cron(&env).await {
        Ok(summary) => console_log!("populate cron: {summary}"),
        Err(e) => console_error!("populate cron failed: {} {}", e.code, e.message),
    }
}

/// Refresh due users one after another until the invocation's budget is spent.
async fn cron(env: &Env) -> Result<serde_json::Value, ApiError> {
    let config = edge::config(env)?;
    let service_key = config.require_service_role_key()?.to_owned();
    let populate_config = settings(env)?;
    let (neo, mapping) = neo4j_settings(env)?;
    let api = edge::data_api(&config);
    let due = api.rpc(Caller::ServiceRole(&service_key), DUE_RPC, &due_args(&populate_config)).await?;
    let users = due_users(&due);
    let mut budget = CronBudget::new(populate_config.max_subrequests);
    let mut results = Vec::new();
    for user in &users {
        if !budget.room_for_a_user() {
            break;
        }
        let populate = runner(&api, Caller::ServiceRole(&service_key), Some(user), &populate_config);
        match populate.neo4j(&neo, &mapping, None, Mode::Auto, None, budget.left()).await {
            Ok(r) => {
                budget.spend(&r.requests);
                results.push(json!({ "user_id": user, "status": r.status, "counts": r.counts }));
            }
            Err(e) => {
                // The failure is recorded in sync_state.
                budget.spend_failed();
                results.push(json!({ "user_id": user, "error": e.code, "message": e.message }));
            }
        }
    }
    Ok(json!({ "due": users.len(), "refreshed": results }))
}
