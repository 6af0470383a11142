//! The limits of `/sync` and `/upload` hold for a caller that skips the Workers and
//! calls the RPCs through PostgREST directly (as anyone with the project URL and a
//! user token can), and they are the same numbers (0009_server_limits.sql).

use edgesync_integration::*;
use edgesync_shared::{sync, upload};
use serde_json::{json, Value};

fn rpc(info: &xtask::stack::StackInfo, token: &str, function: &str, args: &Value) -> Answer {
    call_with_headers(
        "POST",
        &format!("{}/rpc/{function}", info.postgrest_url),
        &[("authorization", format!("Bearer {token}"))],
        Some(args),
    )
}

#[test]
fn the_database_enforces_the_same_limits_as_the_workers() {
    let info = stack();
    let limits: Value = db(&info)
        .query_one("select edgesync.limits()::text", &[])
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
        .unwrap();
    assert_eq!(
        limits,
        json!({
            "pull_max_rows": sync::MAX_LIMIT,
            "pull_max_bytes": sync::MAX_PAGE_BYTES,
            "pull_max_tables": sync::MAX_TABLES,
            "push_max_mutations": upload::MAX_MUTATIONS,
        }),
        "the SQL and the Workers disagree"
    );
}

#[test]
fn pulls_past_the_limits_are_refused_by_the_database() {
    let info = stack();
    let (_user, token) = new_user(&info);
    let ok = rpc(&info, &token, "edgesync_pull", &json!({"lim": sync::MAX_LIMIT, "max_bytes": sync::MAX_PAGE_BYTES}));
    assert_eq!(ok.status, 200, "{}", ok.text);
    for args in [
        json!({"lim": sync::MAX_LIMIT + 1}),
        json!({"lim": 10_000}),
        json!({"lim": 0}),
        json!({"max_bytes": sync::MAX_PAGE_BYTES as u64 + 1}),
        json!({"max_bytes": 2_000_000_000}),
        json!({"tables": (0..=sync::MAX_TABLES).map(|i| format!("t{i}")).collect::<Vec<_>>()}),
    ] {
        let a = rpc(&info, &token, "edgesync_pull", &args);
        assert_eq!(a.status, 400, "{args}: {}", a.text);
        assert_eq!(a.body["hint"], "invalid_parameter", "{args}: {}", a.text);
    }
}

#[test]
fn pushes_past_the_limit_are_refused_by_the_database_and_change_nothing() {
    let info = stack();
    let (user, token) = new_user(&info);
    let a = rpc(
        &info,
        &token,
        "edgesync_push",
        &json!({"client_id": uuid(), "mutations": batch(upload::MAX_MUTATIONS + 1)}),
    );
    assert_eq!(a.status, 413, "{}", a.text);
    assert_eq!(a.body["hint"], "too_many_mutations", "{}", a.text);
    let stored: i64 = db(&info)
        .query_one("select count(*) from public.entries where user_id = $1::text::uuid", &[&user])
        .unwrap()
        .get(0);
    assert_eq!(stored, 0);
    // At the limit it is applied.
    let a =
        rpc(&info, &token, "edgesync_push", &json!({"client_id": uuid(), "mutations": batch(upload::MAX_MUTATIONS)}));
    assert_eq!(a.status, 200, "{}", a.text);
}

/// `n` PUTs of new entries.
fn batch(n: usize) -> Vec<Value> {
    (1..=n as u64).map(|op| put(op, "entries", &uuid(), json!({"title": format!("n{op}")}))).collect()
}
