//! The embedding job machinery (`sql/migrations/0004_embeddings.sql`) through the real
//! PostgREST, and the `embed_entry` / `/search` Worker's refusals through wrangler dev.

use edgesync_integration::*;
use serde_json::{json, Value};

fn rpc(info: &StackInfo, name: &str, token: &str, args: Value) -> Answer {
    call("POST", &format!("{}/rpc/{name}", info.postgrest_url), Some(token), Some(&args))
}

fn put(op_id: u64, id: &str, data: Value) -> Value {
    json!({"op_id": op_id, "op": "PUT", "type": "entries", "id": id, "data": data})
}

/// (status, generation, attempts, last_error) of an entry's job, if it has one.
fn job(db: &mut postgres::Client, entry: &str) -> Option<(String, i64, i32, Option<String>)> {
    db.query_opt(
        "select status, generation, attempts, last_error from edgesync.embedding_jobs where entry_id = $1::text::uuid",
        &[&entry],
    )
    .unwrap()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
}

fn claim(info: &StackInfo, entry: &str) -> Vec<Value> {
    let a = rpc(
        info,
        "edgesync_claim_embedding_jobs",
        &info.service_role_key,
        json!({"p_max": 16, "p_lease_secs": 60, "p_entry": entry}),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    a.body.as_array().unwrap().clone()
}

/// Finish `entry`'s job at `generation` with `embedding`.
fn complete(info: &StackInfo, entry: &str, generation: i64, embedding: &str, hash: &str) -> Answer {
    rpc(
        info,
        "edgesync_complete_embedding_jobs",
        &info.service_role_key,
        json!({"p_results": [{"entry_id": entry, "generation": generation, "embedding": embedding, "model": "m", "hash": hash}]}),
    )
}

#[test]
fn content_changes_enqueue_a_job_and_other_edits_do_not() {
    let info = stack();
    let (_, token) = new_user(&info);
    let mut db = db(&info);
    let id = uuid();
    let client = uuid();
    let up = upload(&info, &token, &client, json!([put(1, &id, json!({"title": "first", "tags": ["a"]}))]));
    assert_eq!(up.status, 200, "{}", up.text);
    assert_eq!(job(&mut db, &id), Some(("pending".into(), 1, 0, None)));
    // A non-content column: no new generation.
    let up = upload(
        &info,
        &token,
        &client,
        json!([{"op_id": 2, "op": "PATCH", "type": "entries", "id": id,
                                                      "data": {"frontmatter": {"mood": "ok"}}}]),
    );
    assert_eq!(up.status, 200, "{}", up.text);
    assert_eq!(job(&mut db, &id).unwrap().1, 1);
    // A PUT that rewrites the same content: still nothing new.
    upload(
        &info,
        &token,
        &client,
        json!([put(3, &id, json!({"title": "first", "tags": ["a"], "frontmatter": {"mood": "ok"}}))]),
    );
    assert_eq!(job(&mut db, &id).unwrap().1, 1);
    // The content changes: the same job, next generation.
    upload(&info, &token, &client, json!([put(4, &id, json!({"title": "second", "tags": ["a"]}))]));
    assert_eq!(job(&mut db, &id).unwrap().1, 2);
    // Deleted entries are not embedded.
    upload(&info, &token, &client, json!([{"op_id": 5, "op": "DELETE", "type": "entries", "id": id}]));
    assert_eq!(job(&mut db, &id), None);
    // Users can read their own job rows, nobody else's, and cannot claim.
    let other = uuid();
    upload(&info, &token, &client, json!([put(6, &other, json!({"title": "mine"}))]));
    let a = rpc(&info, "edgesync_claim_embedding_jobs", &token, json!({}));
    assert!(a.status == 401 || a.status == 403 || a.status == 404, "{} {}", a.status, a.text);
    assert_eq!(job(&mut db, &other).map(|j| j.0), Some("pending".into()), "a user's call claims nothing");
}

#[test]
fn a_job_is_never_claimed_twice_and_a_change_while_embedding_is_not_lost() {
    let info = stack();
    let (_, token) = new_user(&info);
    let mut db = db(&info);
    let id = uuid();
    upload(&info, &token, &uuid(), json!([put(1, &id, json!({"title": "v1", "body_markdown": "b"}))]));
    let first = claim(&info, &id);
    assert_eq!(first.len(), 1);
    assert_eq!((first[0]["title"].as_str(), first[0]["generation"].as_i64()), (Some("v1"), Some(1)));
    assert!(claim(&info, &id).is_empty(), "a claimed job is leased to its run");
    // The entry changes while run 1 computes its embedding.
    db.execute("update public.entries set title = 'v2' where id = $1::text::uuid", &[&id]).unwrap();
    let zero = format!("[{}]", vec!["0"; 1535].join(",") + ",1");
    let done = complete(&info, &id, 1, &zero, "h1");
    assert_eq!(done.body, json!(0), "a stale result is not written: {}", done.text);
    let (status, generation, _, _) = job(&mut db, &id).unwrap();
    assert_eq!((status.as_str(), generation), ("pending", 2));
    let second = claim(&info, &id);
    assert_eq!(second[0]["title"], "v2");
    let done = complete(&info, &id, 2, &zero, "h2");
    assert_eq!(done.body, json!(1), "{}", done.text);
    assert_eq!(job(&mut db, &id), None);
    let (hash, txid_changed): (Option<String>, bool) = {
        let r = db
            .query_one(
                "select embedding_hash, _txid <> (select _txid from public.entries where id = $1::text::uuid) from public.entries where id = $1::text::uuid",
                &[&id],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(hash.as_deref(), Some("h2"));
    assert!(!txid_changed);
    // The write-back enqueued nothing (it touches only server-only columns).
    assert_eq!(job(&mut db, &id), None);
}

#[test]
fn failures_back_off_and_end_in_a_visible_failed_state() {
    let info = stack();
    let (_, token) = new_user(&info);
    let mut db = db(&info);
    let id = uuid();
    upload(&info, &token, &uuid(), json!([put(1, &id, json!({"title": "x"}))]));
    for attempt in 1..=3 {
        assert_eq!(claim(&info, &id).len(), 1, "attempt {attempt}");
        let a = rpc(
            &info,
            "edgesync_fail_embedding_jobs",
            &info.service_role_key,
            json!({"p_entries": [id], "p_error": format!("boom {attempt}"), "p_retry_after_secs": 30, "p_max_attempts": 3}),
        );
        assert!(a.status == 200 || a.status == 204, "{}", a.text);
        let (status, _, attempts, error) = job(&mut db, &id).unwrap();
        assert_eq!(attempts, attempt);
        assert_eq!(error.as_deref(), Some(format!("boom {attempt}").as_str()));
        if attempt < 3 {
            assert_eq!(status, "pending");
            // Backed off by at least the Retry-After: not claimable now.
            assert!(claim(&info, &id).is_empty());
            db.execute(
                "update edgesync.embedding_jobs set next_attempt_at = now() where entry_id = $1::text::uuid",
                &[&id],
            )
            .unwrap();
        } else {
            assert_eq!(status, "failed");
        }
    }
    assert!(claim(&info, &id).is_empty(), "a failed job is not retried");
    // Editing the entry gives it a fresh start.
    db.execute("update public.entries set title = 'y' where id = $1::text::uuid", &[&id]).unwrap();
    assert_eq!(job(&mut db, &id).map(|j| (j.0, j.2)), Some(("pending".into(), 0)));
}

#[test]
fn search_entries_runs_as_the_caller_best_first_without_deleted_rows() {
    let info = stack();
    let (me, token) = new_user(&info);
    let (them, their_token) = new_user(&info);
    let mut db = db(&info);
    // Unit vectors along the first axes, written directly (no model needed for the SQL).
    let axis = |i: usize, w: f32| {
        let mut v = vec![0f32; 1536];
        v[i] = w;
        v[(i + 1) % 1536] = (1.0 - w * w).sqrt();
        format!("[{}]", v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","))
    };
    let rows = [
        (&me, "exact", axis(0, 1.0), false),
        (&me, "close", axis(0, 0.9), false),
        (&me, "far", axis(5, 1.0), false),
        (&me, "deleted", axis(0, 1.0), true),
        (&them, "theirs", axis(0, 1.0), false),
    ];
    for (user, title, emb, deleted) in rows {
        db.execute(
            "insert into public.entries (id, user_id, title, embedding, deleted_at)
             values ($1::text::uuid, $2::text::uuid, $3, $4::text::extensions.vector, case when $5 then now() end)",
            &[&uuid(), user, &title, &emb, &deleted],
        )
        .unwrap();
    }
    let q = axis(0, 1.0);
    let a = rpc(&info, "search_entries", &token, json!({"query_embedding": q, "match_threshold": 0.5}));
    assert_eq!(a.status, 200, "{}", a.text);
    let titles: Vec<&str> = a.body.as_array().unwrap().iter().map(|r| r["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["exact", "close"]);
    assert!((a.body[0]["similarity"].as_f64().unwrap() - 1.0).abs() < 1e-6);
    let theirs = rpc(&info, "search_entries", &their_token, json!({"query_embedding": q}));
    let titles: Vec<&str> = theirs.body.as_array().unwrap().iter().map(|r| r["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["theirs"]);
    let anon =
        call("POST", &format!("{}/rpc/search_entries", info.postgrest_url), None, Some(&json!({"query_embedding": q})));
    assert!(anon.status == 401 || anon.status == 404, "{}", anon.text);
    let _ = them;
}

#[test]
fn embed_entry_refuses_everyone_but_the_database_and_the_service_role() {
    let info = stack();
    let (_, user) = new_user(&info);
    let url = format!("{}/embed_entry", info.functions_url);
    let payload =
        json!({"type": "INSERT", "table": "entries", "schema": "public", "record": {"id": uuid()}, "old_record": null});
    call("POST", &url, None, Some(&payload)).assert_error(401, "missing_token");
    call("POST", &url, Some(&user), Some(&payload)).assert_error(403, "forbidden_role");
    call_with_headers("POST", &url, &[("x-webhook-secret", "guess".into())], Some(&payload))
        .assert_error(401, "invalid_webhook_secret");
    let service = info.service_role_key.clone();
    call("POST", &url, Some(&service), Some(&json!({"type": "INSERT", "table": "entries"})))
        .assert_error(400, "invalid_webhook");
    call_raw(
        "POST",
        &url,
        &[("authorization", format!("Bearer {service}")), ("content-type", "application/json".into())],
        "{",
    )
    .assert_error(400, "invalid_webhook");
    let ignored = call(
        "POST",
        &url,
        Some(&service),
        Some(&json!({"type": "DELETE", "table": "entries", "schema": "public",
                                                                   "old_record": {"id": uuid()}})),
    );
    assert_eq!(ignored.status, 200, "{}", ignored.text);
    assert!(ignored.body["ignored"].is_string());
    call("GET", &url, Some(&service), None).assert_error(405, "method_not_allowed");
}

#[test]
fn search_needs_a_user_and_a_well_formed_query() {
    let info = stack();
    let (_, user) = new_user(&info);
    let url = format!("{}/search", info.functions_url);
    call("POST", &url, None, Some(&json!({"query": "gym"}))).assert_error(401, "missing_token");
    call("POST", &url, Some(&info.service_role_key), Some(&json!({"query": "gym"}))).assert_error(403, "user_required");
    for bad in [
        json!({}),
        json!({"query": ""}),
        json!({"query": "q", "match_count": 0}),
        json!({"query": "q", "user_id": "x"}),
    ] {
        call("POST", &url, Some(&user), Some(&bad)).assert_error(400, "invalid_search");
    }
    call("GET", &url, Some(&user), None).assert_error(405, "method_not_allowed");
}
