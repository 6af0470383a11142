//! `GET /health` through the real gateway and health Worker under wrangler dev.

use edgesync_integration::{call, db, eventually, exclusive, stack};
use serde_json::json;
use std::time::Duration;

/// The schema version the code expects.
fn expected_schema_version() -> i64 {
    xtask::stack::expected_schema_version(&xtask::tools::Paths::discover().unwrap()).unwrap()
}

#[test]
fn health_is_200_when_postgrest_and_schema_are_well() {
    let _guard = exclusive();
    let info = stack();
    let a = call("GET", &format!("{}/health", info.functions_url), None, None);
    assert_eq!(a.status, 200, "{}", a.text);
    // Earlier tests leave embedding jobs failed for good, so this stack may be degraded;
    // the verdict must follow the checks either way.
    let degraded: Vec<&str> = a.body["degraded"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(a.body["status"], if degraded.is_empty() { "ok" } else { "degraded" }, "{}", a.text);
    for check in ["watermark", "embeddings", "populate"] {
        assert_eq!(a.body["checks"][check]["ok"], !degraded.contains(&check), "{}", a.text);
    }
    // The counts are the database's.
    let failed: i64 = db(&info)
        .query_one("select count(*) from edgesync.embedding_jobs where status = 'failed'", &[])
        .unwrap()
        .get(0);
    assert_eq!(a.body["checks"]["embeddings"]["failed"], failed, "{}", a.text);
    assert_eq!(a.body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(a.body["checks"]["postgrest"]["ok"], true);
    assert!(a.body["checks"]["postgrest"]["latency_ms"].is_u64(), "{}", a.text);
    assert_eq!(
        a.body["checks"]["schema"],
        json!({"ok": true, "expected": expected_schema_version(), "actual": expected_schema_version()})
    );
    assert_eq!(a.body["failing"], json!([]));
    assert!(a.request_id.is_some());
    // No secrets in the report.
    for secret in [
        &info.jwt_secret,
        &info.service_role_key,
        &info.anon_key,
        &info.postgres_password,
        &info.authenticator_password,
    ] {
        assert!(!a.text.contains(secret.as_str()), "health leaks a secret");
    }
}

#[test]
fn health_is_503_naming_postgrest_while_it_is_stopped_and_recovers() {
    let _guard = exclusive();
    let mut info = stack();
    let url = format!("{}/health", info.functions_url);
    info.stop_postgrest().unwrap();
    let down = call("GET", &url, None, None);
    // Restart before asserting, so a failure here does not break the other tests.
    info.start_postgrest().unwrap();

    let err = down.assert_error(503, "dependency_unavailable");
    assert!(err["message"].as_str().unwrap().contains("postgrest"), "{}", down.text);
    assert_eq!(down.body["status"], "down");
    assert_eq!(down.body["failing"], json!(["postgrest"]));
    assert_eq!(down.body["checks"]["postgrest"]["ok"], false);

    eventually("health to be 200 again", Duration::from_secs(30), || call("GET", &url, None, None).status == 200);
}

#[test]
fn health_is_503_when_the_schema_is_behind_the_code() {
    let _guard = exclusive();
    let info = stack();
    let url = format!("{}/health", info.functions_url);
    let expected = expected_schema_version();
    let run_sql = |sql: &str| {
        let out = xtask::stack::psql(&info).args(["-c", sql]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    // Pretend the newest migration was never applied.
    run_sql(&format!(
        "create table edgesync.held_back as select * from edgesync.schema_migrations where version = {expected}; \
                      delete from edgesync.schema_migrations where version = {expected}"
    ));
    let behind = call("GET", &url, None, None);
    run_sql("insert into edgesync.schema_migrations select * from edgesync.held_back; drop table edgesync.held_back");

    behind.assert_error(503, "dependency_unavailable");
    assert_eq!(behind.body["failing"], json!(["schema"]));
    assert_eq!(behind.body["checks"]["schema"]["actual"], expected - 1);
    assert!(behind.body["checks"]["schema"]["error"].as_str().unwrap().contains("migrations"));
    assert_eq!(call("GET", &url, None, None).status, 200);
}

#[test]
fn health_rejects_other_methods_with_405() {
    // Another test here stops PostgREST; stack() would see it down.
    let _guard = exclusive();
    let info = stack();
    let a = call("POST", &format!("{}/health", info.functions_url), None, Some(&json!({})));
    a.assert_error(405, "method_not_allowed");
    assert_eq!(a.allow.as_deref(), Some("GET, HEAD"));
}

#[test]
fn unknown_paths_are_404_json_from_the_gateway() {
    // Another test here stops PostgREST; stack() would see it down.
    let _guard = exclusive();
    let info = stack();
    for path in ["/", "/nope", "/healthz", "/sync2", "/../etc/passwd"] {
        let a = call("GET", &format!("{}{}", info.functions_url, path), None, None);
        a.assert_error(404, "not_found");
    }
}

#[test]
fn request_id_from_the_caller_is_kept_when_plain_and_replaced_when_hostile() {
    // Another test here stops PostgREST; stack() would see it down.
    let _guard = exclusive();
    let info = stack();
    let url = format!("{}/health", info.functions_url);
    let a = edgesync_integration::call_with_headers("GET", &url, &[("x-request-id", "trace-abc_123".into())], None);
    assert_eq!(a.request_id.as_deref(), Some("trace-abc_123"));
    let b = edgesync_integration::call_with_headers("GET", &url, &[("x-request-id", "a\"b<script>".into())], None);
    let rid = b.request_id.unwrap();
    assert!(rid.len() == 32 && rid.chars().all(|c| c.is_ascii_hexdigit()), "{rid}");
}

#[test]
fn health_is_degraded_while_a_synced_write_is_held_open_and_only_then() {
    let _guard = exclusive();
    let info = stack();
    let url = format!("{}/health", info.functions_url);
    let watermark_ok = || call("GET", &url, None, None).body["checks"]["watermark"]["ok"] == true;
    eventually("no synced write to be open", Duration::from_secs(30), watermark_ok);

    // A write transaction that touches no synced table (it has an id) and stays open,
    // as a forgotten psql session or a pg_cron job would: it holds no one's pull back,
    // so /health does not count it.
    let mut unrelated = db(&info);
    let mut other = unrelated.transaction().unwrap();
    other.query_one("select pg_current_xact_id()::text", &[]).unwrap();
    // A synced writer (it has a sync position) that stays open, as a long backfill of
    // synced rows would: it holds the watermark.
    let mut writer = db(&info);
    let mut tx = writer.transaction().unwrap();
    tx.execute("insert into public.entries (user_id, title) values (gen_random_uuid(), 'held open')", &[]).unwrap();
    let max_lag_ms = 5_000; // HEALTH_MAX_WATERMARK_LAG_SECS on the local stack
    let mut held = None;
    eventually("health to report the open transaction", Duration::from_secs(30), || {
        let a = call("GET", &url, None, None);
        let past = a.body["checks"]["watermark"]["ok"] == false;
        held = Some(a);
        past
    });
    let held = held.unwrap();
    tx.rollback().unwrap();
    // Only the unrelated transaction is left open now, and the watermark is well.
    eventually(
        "the watermark to be well with only the unrelated transaction open",
        Duration::from_secs(30),
        watermark_ok,
    );
    other.rollback().unwrap();

    assert_eq!(held.status, 200, "lag is degraded, not down: {}", held.text);
    assert_eq!(held.body["status"], "degraded", "{}", held.text);
    assert!(held.body["degraded"].as_array().unwrap().contains(&json!("watermark")), "{}", held.text);
    assert_eq!(held.body["failing"], json!([]));
    let w = &held.body["checks"]["watermark"];
    assert!(w["writers"].as_u64().unwrap() >= 1, "{w}");
    assert!(w["oldest_write_age_ms"].as_u64().unwrap() > max_lag_ms, "{w}");
    assert!(w["oldest_write_xid_distance"].as_u64().unwrap() >= 1, "{w}");
    assert_eq!(w["max_lag_ms"], max_lag_ms);
    assert!(w["error"].as_str().unwrap().contains("writing synced rows"), "{w}");
    println!("/health while a synced write is held open: {}", held.text);

    eventually("the watermark to be well once it ends", Duration::from_secs(30), watermark_ok);
}
