//! `GET /health`: is this function, PostgREST and the database schema well?
//!
//! Unauthenticated. One RPC to PostgREST as the anonymous role, timed; the verdict
//! (ok, degraded or down) and the report come from `edgesync_shared::health`.

use edgesync_edge::{self as edge, edgesync_shared as shared};
use shared::data_api::{Caller, DataApi};
use shared::health::{self, Probe};
use shared::ApiError;
use worker::{event, Context, Env, Method, Request, Response};

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let ctx = edge::begin("health", &req, &env);
    if ctx.is_preflight() {
        return edge::preflight(ctx);
    }
    let outcome = ctx.measure(handle(&req, &env, &ctx.request_id)).await;
    edge::finish(ctx, outcome)
}

async fn handle(req: &Request, env: &Env, request_id: &str) -> Result<Response, ApiError> {
    edge::require_path(req, "/health")?;
    edge::require_method(req, &[Method::Get, Method::Head])?;

    let lookup = |name: &str| edge::setting(env, name);
    let config = shared::config::postgrest_url_from_lookup(lookup)
        .and_then(|url| Ok((url, health::Thresholds::from_lookup(lookup)?)));
    let report = match &config {
        Err(e) => health::report(Err(e), None, shared::EXPECTED_SCHEMA_VERSION, shared::VERSION),
        Ok((url, thresholds)) => {
            // A probe must answer even when PostgREST hangs.
            let api =
                DataApi::new(url.clone(), edge::setting(env, "SUPABASE_ANON_KEY")).with_deadline(edge::deadline(5_000));
            let started = edge::now_ms();
            let outcome = api.rpc(Caller::Anonymous, health::HEALTH_RPC, &thresholds.rpc_args()).await;
            let probe = Probe { outcome, latency_ms: edge::now_ms().saturating_sub(started) };
            health::report(Ok(thresholds), Some(&probe), shared::EXPECTED_SCHEMA_VERSION, shared::VERSION)
        }
    };
    let mut body = report.body;
    if report.status != 200 {
        // Monitors that only understand the standard error shape still get one.
        let failing: Vec<&str> = body["failing"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
        let err = ApiError::unavailable("dependency_unavailable", format!("not healthy: {}", failing.join(", ")));
        body["error"] = err.body(request_id)["error"].take();
    }
    let mut response = edge::json(report.status, &body)?;
    // Monitoring must never see a cached verdict.
    let _ = response.headers_mut().set("cache-control", "no-store");
    Ok(response)
}
