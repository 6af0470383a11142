//! Embeddings end to end against the real stack: the job machinery
//! (`sql/migrations/0004_embeddings.sql`) through PostgREST; the whole path — trigger →
//! job → webhook (the stack's LISTEN/NOTIFY relay) → `embed_entry` in wrangler dev →
//! the local all-MiniLM-L6-v2 server → write-back — with the real model; the Cron
//! Trigger through wrangler dev's scheduled endpoint; an embeddings API that answers
//! 429 or 500 (the local server's planned faults); semantic `/search`.
//!
//! Every test holds [`exclusive`]: some stop the relay, some plan faults on the shared
//! embeddings server, and a Worker embedding in the background must not race the ones
//! that drive the job table by hand.

use edgesync_integration::*;
use edgesync_shared::embed::{content_hash, embedding_text, EntryContent, DEFAULT_MAX_TOKENS};
use serde_json::{json, Value};
use std::time::Duration;

/// How long the whole path may take for one entry on a loaded 2-core machine.
const EMBED_TIMEOUT: Duration = Duration::from_secs(60);

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
    let _x = exclusive();
    let info = stack();
    let _quiet = RelayStopped::new(&info);
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
fn a_write_back_locks_the_entry_before_its_job_as_a_push_does() {
    // A push locks an entry, then its job (the content trigger); a write-back that
    // locked the job first and the entry second could deadlock with it (schema v7).
    let _x = exclusive();
    let info = stack();
    let _quiet = RelayStopped::new(&info);
    let (_, token) = new_user(&info);
    let id = uuid();
    upload(&info, &token, &uuid(), json!([put(1, &id, json!({"title": "t", "body_markdown": "b"}))]));
    let generation = claim(&info, &id)[0]["generation"].as_i64().unwrap();
    // Hold the entry as a push in progress does.
    let mut holder = db(&info);
    let mut tx = holder.transaction().unwrap();
    tx.execute("select 1 from public.entries where id = $1::text::uuid for no key update", &[&id]).unwrap();
    let write_back = {
        let (info, id) = (info.clone(), id.clone());
        std::thread::spawn(move || {
            let zero = format!("[{}]", vec!["0"; 1535].join(",") + ",1");
            complete(&info, &id, generation, &zero, "h")
        })
    };
    let mut probe = db(&info);
    eventually("the write-back to wait for the entry", EMBED_TIMEOUT, || {
        probe
            .query_one(
                "select count(*) > 0 from pg_stat_activity
                  where wait_event_type = 'Lock' and query ilike '%edgesync_complete_embedding_jobs%'",
                &[],
            )
            .unwrap()
            .get(0)
    });
    // While it waits, it holds no lock on the job: a push could take it.
    let free = probe
        .query("select 1 from edgesync.embedding_jobs where entry_id = $1::text::uuid for update skip locked", &[&id])
        .unwrap();
    assert_eq!(free.len(), 1, "the write-back holds the job while it waits for the entry");
    tx.rollback().unwrap();
    let done = write_back.join().unwrap();
    assert_eq!(done.body, json!(1), "{}", done.text);
}

#[test]
fn a_job_is_never_claimed_twice_and_a_change_while_embedding_is_not_lost() {
    let _x = exclusive();
    let info = stack();
    let _quiet = RelayStopped::new(&info);
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
    let _x = exclusive();
    let info = stack();
    let _quiet = RelayStopped::new(&info);
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
    let _x = exclusive();
    let info = stack();
    // The vectors below are written by hand; the Worker must not replace them.
    let _quiet = RelayStopped::new(&info);
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
    let _x = exclusive();
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

    // Refused calls do nothing: a real entry's job stays untouched.
    let _quiet = RelayStopped::new(&info);
    let mut db = db(&info);
    let id = uuid();
    upload(&info, &user, &uuid(), json!([put(1, &id, json!({"title": "untouched"}))]));
    let payload = json!({"type": "INSERT", "table": "entries", "schema": "public",
                         "record": {"id": id}, "old_record": null});
    call("POST", &url, None, Some(&payload)).assert_error(401, "missing_token");
    call_with_headers("POST", &url, &[("x-webhook-secret", "guess".into())], Some(&payload))
        .assert_error(401, "invalid_webhook_secret");
    call_with_headers("POST", &url, &[("x-webhook-secret", String::new())], Some(&payload))
        .assert_error(401, "invalid_webhook_secret");
    call("POST", &format!("{url}/drain"), Some(&user), None).assert_error(403, "forbidden_role");
    assert_eq!(job(&mut db, &id), Some(("pending".into(), 1, 0, None)), "no attempt was made");
    // The right secret does embed it (so the refusals above were about the secret).
    let a = call_with_headers("POST", &url, &[("x-webhook-secret", info.embed_webhook_secret.clone())], Some(&payload));
    assert_eq!(a.status, 202, "{}", a.text);
    eventually("the accepted webhook to embed the entry", EMBED_TIMEOUT, || job(&mut db, &id).is_none());
}

#[test]
fn search_needs_a_user_and_a_well_formed_query() {
    let _x = exclusive();
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

// ---------------------------------------------------------------------------------
// The whole path, with the real model.

/// What `entries` holds about an entry's embedding: (embedding, model, hash).
fn stored(db: &mut postgres::Client, id: &str) -> (Option<Vec<f32>>, Option<String>, Option<String>) {
    let r = db
        .query_one(
            "select embedding::text, embedding_model, embedding_hash from public.entries where id = $1::text::uuid",
            &[&id],
        )
        .unwrap();
    let v: Option<String> = r.get(0);
    let v = v.map(|t| t.trim_matches(['[', ']']).split(',').map(|x| x.parse::<f32>().unwrap()).collect());
    (v, r.get(1), r.get(2))
}

/// How many times an embedding of `id` was written (vector or hash; an audit trigger
/// this test binary installs; idempotent).
fn embedding_writes(db: &mut postgres::Client, id: &str) -> i64 {
    db.batch_execute(
        "create schema if not exists edgesync_test;
         create table if not exists edgesync_test.embedding_writes (entry_id uuid not null, at timestamptz default now());
         create or replace function edgesync_test.count_embedding_write() returns trigger
         language plpgsql security definer set search_path = '' as $$
         begin insert into edgesync_test.embedding_writes (entry_id) values (new.id); return null; end $$;
         create or replace trigger edgesync_test_embedding_writes
           after update of embedding, embedding_hash on public.entries for each row
           when (old.embedding is distinct from new.embedding or old.embedding_hash is distinct from new.embedding_hash)
           execute function edgesync_test.count_embedding_write();",
    )
    .unwrap();
    db.query_one("select count(*) from edgesync_test.embedding_writes where entry_id = $1::text::uuid", &[&id])
        .unwrap()
        .get(0)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

/// Wait until the entry's job is gone and an embedding made from `content` is stored.
#[track_caller]
fn wait_embedded(db: &mut postgres::Client, id: &str, content: &EntryContent) -> Vec<f32> {
    let hash = content_hash(stack::LOCAL_EMBEDDINGS_MODEL, 1536, &embedding_text(content, DEFAULT_MAX_TOKENS));
    eventually(&format!("entry {id} to be embedded"), EMBED_TIMEOUT, || {
        job(db, id).is_none() && stored(db, id).2.as_deref() == Some(hash.as_str())
    });
    let (v, model, _) = stored(db, id);
    assert_eq!(model.as_deref(), Some(stack::LOCAL_EMBEDDINGS_MODEL));
    v.expect("an embedding")
}

/// Plan faults on the stack's embeddings server (`None` clears them); returns its report.
fn faults(info: &StackInfo, fault: Option<Value>) -> Value {
    let url = format!("{}/_faults", info.embeddings_url.trim_end_matches("/v1"));
    let a = match &fault {
        Some(f) => call("PUT", &url, None, Some(f)),
        None => call("DELETE", &url, None, None),
    };
    assert_eq!(a.status, 200, "{}", a.text);
    a.body
}

/// Clears planned faults when dropped, so a failing test leaves a working server.
struct NoFaultsAfter<'a>(&'a StackInfo);

impl Drop for NoFaultsAfter<'_> {
    fn drop(&mut self) {
        faults(self.0, None);
    }
}

/// Run the Cron Trigger until `done`: it drains due jobs in batches, oldest first, and
/// earlier tests may have left some.
#[track_caller]
fn cron_until(info: &StackInfo, what: &str, mut done: impl FnMut() -> bool) {
    eventually(what, EMBED_TIMEOUT, || {
        run_cron(info);
        done()
    });
}

/// Run `embed_entry`'s Cron Trigger through wrangler dev's scheduled endpoint.
fn run_cron(info: &StackInfo) {
    let cron = info.cron("embed_entry").expect("the stack runs embed_entry's Cron Trigger");
    let a = call("GET", &format!("{}?cron=*+*+*+*+*", cron.scheduled_url()), None, None);
    assert_eq!(a.status, 200, "the scheduled handler: {}", a.text);
}

fn entry(title: &str, body: &str, tags: &[&str]) -> (Value, EntryContent) {
    let content = EntryContent {
        title: Some(title.into()),
        body_markdown: Some(body.into()),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    };
    (json!({"title": title, "body_markdown": body, "tags": tags}), content)
}

#[test]
fn an_uploaded_entry_is_embedded_once_per_content_change_and_the_write_back_does_not_loop() {
    let _x = exclusive();
    let info = stack();
    let (_, token) = new_user(&info);
    let mut db = db(&info);
    let id = uuid();
    let client = uuid();
    let (data, content) = entry("Morning run", "Five kilometres along the river before work.", &["health", "running"]);
    assert_eq!(embedding_writes(&mut db, &id), 0);
    let up = upload(&info, &token, &client, json!([put(1, &id, data)]));
    assert_eq!(up.status, 200, "{}", up.text);
    let txid = entry_txid(&mut db, &id);
    // No manual step: the trigger, the relay's webhook and the Worker do it.
    let v = wait_embedded(&mut db, &id, &content);
    assert_eq!(v.len(), 1536);
    // It is the model's vector for the seed-004 text, not something else's.
    let expected = embed_locally(&info, &[embedding_text(&content, DEFAULT_MAX_TOKENS)]).remove(0);
    assert!(cosine(&v, &expected) > 0.9999, "cosine {}", cosine(&v, &expected));
    assert_eq!(embedding_writes(&mut db, &id), 1);
    // The write-back changed neither the row version (clients do not re-download the
    // entry) nor enqueued another job (it cannot loop).
    assert_eq!(entry_txid(&mut db, &id), txid);
    assert_eq!(job(&mut db, &id), None);

    // A non-content edit: no job, so no embedding (the job is written in the same
    // transaction as the edit, so its absence right after is proof).
    let up = upload(
        &info,
        &token,
        &client,
        json!([{"op_id": 2, "op": "PATCH", "type": "entries", "id": id, "data": {"frontmatter": {"mood": "good"}}}]),
    );
    assert_eq!(up.status, 200, "{}", up.text);
    assert_eq!(job(&mut db, &id), None);

    // A content edit: embedded again, exactly once.
    let (data, edited) = entry("Evening swim", "Thirty lengths at the pool after dinner.", &["health", "swimming"]);
    upload(&info, &token, &client, json!([put(3, &id, data)]));
    let w = wait_embedded(&mut db, &id, &edited);
    assert!(cosine(&v, &w) < 0.99, "a different text gives a different vector");
    assert_eq!(embedding_writes(&mut db, &id), 2);
    assert_eq!(job(&mut db, &id), None, "nothing left to do: no third embedding can follow");
}

#[test]
fn a_dropped_webhook_is_recovered_by_the_cron_trigger() {
    let _x = exclusive();
    let info = stack();
    let (_, token) = new_user(&info);
    let mut db = db(&info);
    let id = uuid();
    let (data, content) = entry("Dentist", "Check-up on Tuesday at nine.", &["appointments"]);
    {
        let _dropped = RelayStopped::new(&info);
        upload(&info, &token, &uuid(), json!([put(1, &id, data)]));
        assert_eq!(job(&mut db, &id).map(|j| j.0), Some("pending".into()));
        assert_eq!(stored(&mut db, &id).0, None, "no webhook, no embedding yet");
        cron_until(&info, "the cron to embed the entry", || job(&mut db, &id).is_none());
        wait_embedded(&mut db, &id, &content);
    }
}

#[test]
fn a_rate_limited_embeddings_api_is_waited_for_and_the_entry_embedded() {
    let _x = exclusive();
    let info = stack();
    let _clean = NoFaultsAfter(&info);
    let (_, token) = new_user(&info);
    let mut db = db(&info);
    let id = uuid();
    let (data, content) = entry("Groceries", "Eggs, flour, milk and lemons.", &["shopping"]);
    // The next request gets 429 with Retry-After: 1; the Worker waits and asks again.
    faults(&info, Some(json!({"status": 429, "times": 1, "retry_after": 1})));
    upload(&info, &token, &uuid(), json!([put(1, &id, data)]));
    wait_embedded(&mut db, &id, &content);
    assert_eq!(faults(&info, None)["answered"], 1, "the 429 was really answered");
}

/// An entry whose embeddings API answers `status` to every request, its job tried
/// through the Cron Trigger one run at a time, the clock moved on between tries
/// (backoff itself is checked in failures_back_off_and_end_in_a_visible_failed_state).
struct FailingApi<'a> {
    info: &'a StackInfo,
    db: postgres::Client,
    id: String,
    content: EntryContent,
}

impl<'a> FailingApi<'a> {
    fn upload(info: &'a StackInfo, status: u16, title: &str, body: &str) -> FailingApi<'a> {
        let (_, token) = new_user(info);
        let id = uuid();
        let (data, content) = entry(title, body, &["admin"]);
        faults(info, Some(json!({ "status": status })));
        upload(info, &token, &uuid(), json!([put(1, &id, data)]));
        FailingApi { info, db: db(info), id, content }
    }

    /// Run the Cron until try `attempt` is made; the job's (status, error) then.
    fn attempt(&mut self, attempt: i32) -> (String, String) {
        let (db, id) = (&mut self.db, &self.id);
        cron_until(self.info, &format!("attempt {attempt}"), || job(db, id).is_some_and(|j| j.2 >= attempt));
        let (status, _, attempts, error) = job(db, id).unwrap();
        assert_eq!(attempts, attempt);
        (status, error.unwrap_or_default())
    }

    /// Make the backed-off job due now.
    fn due_now(&mut self) {
        self.db
            .execute(
                "update edgesync.embedding_jobs set next_attempt_at = now() where entry_id = $1::text::uuid",
                &[&self.id],
            )
            .unwrap();
    }
}

/// A busy embeddings API (503 overloaded, as the local one answers a burst; or 429)
/// backs a job off without using up its attempts: past EMBED_MAX_ATTEMPTS tries it is
/// still pending, and it is embedded once the API has room. (A bulk insert of 10,000
/// entries failed about half of their jobs for good before.)
#[test]
fn a_busy_embeddings_api_backs_jobs_off_but_never_fails_them_for_good() {
    let _x = exclusive();
    let info = stack();
    let _clean = NoFaultsAfter(&info);
    let _quiet = RelayStopped::new(&info);
    let mut api = FailingApi::upload(&info, 503, "Groceries", "Milk, eggs and bread.");
    // EMBED_MAX_ATTEMPTS is 5 (the default): one try more.
    for attempt in 1..=6 {
        let (status, error) = api.attempt(attempt);
        assert_eq!(status, "pending", "{error}");
        assert!(error.contains("503"), "the error is recorded: {error}");
        api.due_now();
    }
    faults(&info, None);
    let FailingApi { mut db, id, content, .. } = api;
    cron_until(&info, "the job to be embedded once the API has room", || job(&mut db, &id).is_none());
    wait_embedded(&mut db, &id, &content);
}

#[test]
fn an_embeddings_api_failing_for_good_ends_in_the_failed_state_with_its_error() {
    let _x = exclusive();
    let info = stack();
    let _clean = NoFaultsAfter(&info);
    // Attempts are driven by the Cron Trigger here, one per run.
    let _quiet = RelayStopped::new(&info);
    let mut api = FailingApi::upload(&info, 500, "Taxes", "File the return before the deadline.");
    // EMBED_MAX_ATTEMPTS is 5 (the default).
    for attempt in 1..=5 {
        let (status, error) = api.attempt(attempt);
        assert!(error.contains("500"), "the error is recorded: {error}");
        if attempt < 5 {
            assert_eq!(status, "pending");
            api.due_now();
        } else {
            assert_eq!(status, "failed");
        }
    }
    let FailingApi { mut db, id, content, .. } = api;
    assert_eq!(stored(&mut db, &id).0, None);
    // Once the API works again, a failed job stays failed until its entry changes (or
    // an operator re-enqueues it): run the cron to show it is not retried.
    faults(&info, None);
    run_cron(&info);
    assert_eq!(job(&mut db, &id).map(|j| j.0), Some("failed".into()));
    db.execute(
        "select edgesync.enqueue_embedding($1::text::uuid, user_id) from public.entries where id = $1::text::uuid",
        &[&id],
    )
    .unwrap();
    cron_until(&info, "the re-enqueued job to be embedded", || job(&mut db, &id).is_none());
    wait_embedded(&mut db, &id, &content);
}

#[test]
fn semantic_search_ranks_the_paraphrased_entry_first_for_its_owner_only() {
    let _x = exclusive();
    let info = stack();
    let (_, token) = new_user(&info);
    let (_, their_token) = new_user(&info);
    let mut db = db(&info);
    let mine = [
        ("Leg day", "Squats and deadlifts at the gym, three sets of five.", "fitness"),
        ("Sourdough", "Fed the starter and baked two loaves of bread.", "cooking"),
        ("Quarterly taxes", "Sent the VAT return to the accountant.", "finance"),
        ("Mia's birthday", "Booked the bowling alley for the party on Saturday.", "family"),
        ("Car service", "The mechanic replaced the brake pads and the oil.", "car"),
    ];
    let client = uuid();
    let mut ids = Vec::new();
    let mut ops = Vec::new();
    for (i, (title, body, tag)) in mine.iter().enumerate() {
        let id = uuid();
        ops.push(put(i as u64 + 1, &id, entry(title, body, &[tag]).0));
        ids.push((id, entry(title, body, &[tag]).1));
    }
    // A deleted entry that would match best, and another user's near-copy.
    let deleted = uuid();
    ops.push(put(10, &deleted, entry("Gym", "Weight training session: squats and deadlifts.", &["fitness"]).0));
    assert_eq!(upload(&info, &token, &client, json!(ops)).status, 200);
    let theirs = uuid();
    let (their_data, their_content) = entry("Gym session", "Squats and deadlifts, heavy.", &["fitness"]);
    assert_eq!(upload(&info, &their_token, &uuid(), json!([put(1, &theirs, their_data)])).status, 200);
    for (id, content) in &ids {
        wait_embedded(&mut db, id, content);
    }
    wait_embedded(&mut db, &theirs, &their_content);
    upload(&info, &token, &client, json!([{"op_id": 11, "op": "DELETE", "type": "entries", "id": deleted}]));

    let search = |token: &str, query: &str| -> Vec<(String, f64)> {
        // MiniLM's similarities for paraphrases sit well below OpenAI's; 0.7 (the
        // default, tuned for text-embedding-3-small) would hide them. See README.
        let a = call(
            "POST",
            &format!("{}/search", info.functions_url),
            Some(token),
            Some(&json!({"query": query, "match_threshold": 0.1, "match_count": 10})),
        );
        assert_eq!(a.status, 200, "{}", a.text);
        a.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["id"].as_str().unwrap().to_owned(), r["similarity"].as_f64().unwrap()))
            .collect()
    };
    for (query, want) in [
        ("lifting weights workout", 0),
        ("making bread at home", 1),
        ("paying tax to the government", 2),
        ("planning a kid's celebration", 3),
        ("vehicle maintenance at the garage", 4),
    ] {
        let results = search(&token, query);
        assert_eq!(results.first().map(|r| r.0.as_str()), Some(ids[want].0.as_str()), "{query}: {results:?}");
        assert!(results.windows(2).all(|w| w[0].1 >= w[1].1), "best first: {results:?}");
        assert!(results.iter().all(|(id, _)| *id != theirs && *id != deleted), "{query}: {results:?}");
    }
    // The other user finds their own entry, and none of mine.
    let results = search(&their_token, "lifting weights workout");
    assert_eq!(results.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), [theirs.as_str()]);
}

#[test]
fn a_recheck_re_embeds_only_entries_whose_stored_hash_is_stale() {
    let _x = exclusive();
    let info = stack();
    let (user, token) = new_user(&info);
    let mut db = db(&info);
    let (a, b) = (uuid(), uuid());
    let (data_a, content_a) = entry("Piano", "Practised scales for twenty minutes.", &["music"]);
    let (data_b, content_b) = entry("Garden", "Planted tulip bulbs by the fence.", &["home"]);
    upload(&info, &token, &uuid(), json!([put(1, &a, data_a), put(2, &b, data_b)]));
    wait_embedded(&mut db, &a, &content_a);
    wait_embedded(&mut db, &b, &content_b);
    let (writes_a, writes_b) = (embedding_writes(&mut db, &a), embedding_writes(&mut db, &b));
    // A's stored hash no longer matches (as after text changed with the triggers off).
    db.execute("update public.entries set embedding_hash = 'stale' where id = $1::text::uuid", &[&a]).unwrap();
    assert_eq!(job(&mut db, &a), None, "a server-only column does not enqueue");
    let _quiet = RelayStopped::new(&info);
    let queued: i64 =
        db.query_one("select edgesync.enqueue_embedding_recheck($1::text::uuid)", &[&user]).unwrap().get(0);
    assert_eq!(queued, 2);
    cron_until(&info, "the recheck to be drained", || job(&mut db, &a).is_none() && job(&mut db, &b).is_none());
    wait_embedded(&mut db, &a, &content_a);
    assert_eq!(embedding_writes(&mut db, &a), writes_a + 2, "A: the test's write, then the re-embedding");
    assert_eq!(embedding_writes(&mut db, &b), writes_b, "B was current: not written");
}

#[test]
fn upstream_outages_get_a_json_error_and_lose_no_job() {
    let _x = exclusive();
    let info = stack();
    let _clean = NoFaultsAfter(&info);
    let (_, token) = new_user(&info);
    let mut db = db(&info);
    let search = format!("{}/search", info.functions_url);
    let query = json!({"query": "anything", "match_threshold": 0.1});
    // The embeddings API failing: /search says so (502), no Worker error page.
    faults(&info, Some(json!({"status": 500})));
    let failed = call("POST", &search, Some(&token), Some(&query));
    let err = failed.assert_error(502, "embeddings_unavailable");
    // A fixed text: the API's body ("... a planned fault") and its URL go to the log only.
    assert_eq!(err["message"], "the embeddings service could not embed the query", "{}", failed.text);
    assert!(!failed.text.contains("planned fault") && !failed.text.contains(&info.embeddings_url), "{}", failed.text);
    faults(&info, None);

    // PostgREST down: the drain and /search answer 502; the webhook is still accepted
    // (its work happens after the answer) and the job waits, untouched.
    let _quiet = RelayStopped::new(&info);
    let id = uuid();
    let (data, content) = entry("Outage", "Written just before the database API went away.", &["ops"]);
    upload(&info, &token, &uuid(), json!([put(1, &id, data)]));
    // A copy drives PostgREST (the guards above hold `info`).
    let mut admin = info.clone();
    admin.stop_postgrest().unwrap();
    let drain = call("POST", &format!("{}/embed_entry/drain", info.functions_url), Some(&info.service_role_key), None);
    let searched = call("POST", &search, Some(&token), Some(&query));
    let payload =
        json!({"type": "INSERT", "table": "entries", "schema": "public", "record": {"id": id}, "old_record": null});
    let nudged = call_with_headers(
        "POST",
        &format!("{}/embed_entry", info.functions_url),
        &[("x-webhook-secret", info.embed_webhook_secret.clone())],
        Some(&payload),
    );
    // Restart before asserting, so a failure here does not break the other tests.
    admin.start_postgrest().unwrap();
    drain.assert_error(502, "upstream_unreachable");
    searched.assert_error(502, "upstream_unreachable");
    assert_eq!(nudged.status, 202, "{}", nudged.text);
    assert_eq!(job(&mut db, &id), Some(("pending".into(), 1, 0, None)), "nothing was claimed");
    // Once it is back, the Cron Trigger embeds it.
    cron_until(&info, "the job to be embedded after the outage", || job(&mut db, &id).is_none());
    wait_embedded(&mut db, &id, &content);
}

#[test]
fn a_user_with_thousands_of_entries_is_searched_through_the_hnsw_index_and_sees_only_their_own() {
    let _x = exclusive();
    let info = stack();
    // Vectors are written by hand here; the Worker must not replace them.
    let _quiet = RelayStopped::new(&info);
    let (me, token) = new_user(&info);
    let (them, _) = new_user(&info);
    let mut db = db(&info);
    // A unit vector along axis `a` (1-based), tilted towards axis 1 by `w`.
    let insert = |db: &mut postgres::Client, user: &str, n: i32, axis: &str, w: f64, title: &str, deleted: bool| {
        db.execute(
            &format!(
                "insert into public.entries (user_id, title, embedding, deleted_at)
                 select $1::text::uuid, $2 || g,
                        ('[' || array_to_string(array(select case when d = 1 then $3::float8
                                                                 when d = {axis} then sqrt(1 - $3::float8 * $3::float8)
                                                                 else 0 end
                                                        from generate_series(1, 1536) d), ',') || ']')::extensions.vector,
                        case when $5 then now() end
                   from generate_series(1, $4) g"
            ),
            &[&user, &title, &w, &n, &deleted],
        )
        .unwrap();
    };
    // 2,000 of mine far from the query, one close, one deleted that matches exactly;
    // 50 of theirs that match exactly.
    insert(&mut db, &me, 2000, "2 + g % 500", 0.0, "far ", false);
    insert(&mut db, &me, 1, "2", 0.95, "close ", false);
    insert(&mut db, &me, 1, "2", 1.0, "deleted ", true);
    insert(&mut db, &them, 50, "2", 1.0, "theirs ", false);
    db.execute(
        "delete from edgesync.embedding_jobs where user_id = any($1::text[]::uuid[])",
        &[&vec![me.clone(), them.clone()]],
    )
    .unwrap();
    db.batch_execute("analyze public.entries").unwrap();
    let index_scans = |db: &mut postgres::Client| -> i64 {
        db.query_one("select idx_scan from pg_stat_user_indexes where indexrelname = 'entries_embedding_idx'", &[])
            .unwrap()
            .get(0)
    };
    let before = index_scans(&mut db);
    let mut q = vec!["0"; 1536];
    q[0] = "1";
    let a = rpc(
        &info,
        "search_entries",
        &token,
        json!({"query_embedding": format!("[{}]", q.join(",")), "match_threshold": -1, "match_count": 5}),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let titles: Vec<&str> = a.body.as_array().unwrap().iter().map(|r| r["title"].as_str().unwrap()).collect();
    assert_eq!(titles.len(), 5, "{titles:?}");
    assert_eq!(titles[0], "close 1", "{titles:?}");
    assert!(titles[1..].iter().all(|t| t.starts_with("far ")), "only my live entries: {titles:?}");
    let sims: Vec<f64> = a.body.as_array().unwrap().iter().map(|r| r["similarity"].as_f64().unwrap()).collect();
    assert!(sims.windows(2).all(|w| w[0] >= w[1]), "best first: {sims:?}");
    // The answer came through the HNSW index (statistics reach the view within a second
    // or so of PostgREST's connection going idle).
    eventually("the HNSW index scan to be counted", Duration::from_secs(10), || index_scans(&mut db) > before);
}

/// `POST /embed_entry/drain` as the service role: its report.
fn drain_now(info: &StackInfo) -> Value {
    let a = call("POST", &format!("{}/embed_entry/drain", info.functions_url), Some(&info.service_role_key), None);
    assert_eq!(a.status, 200, "{}", a.text);
    a.body
}

#[test]
fn one_users_refused_entry_fails_only_itself_and_a_blank_entry_needs_no_request() {
    let _x = exclusive();
    let info = stack();
    let _clean = NoFaultsAfter(&info);
    let _quiet = RelayStopped::new(&info);
    let mut db = db(&info);
    let (_, token_a) = new_user(&info);
    let (_, token_b) = new_user(&info);

    // A's entry that will be made blank, embedded first.
    let blanked = uuid();
    let (data, content) = entry("Soon blank", "This text goes away.", &["x"]);
    upload(&info, &token_a, &uuid(), json!([put(1, &blanked, data)]));
    drain_now(&info);
    wait_embedded(&mut db, &blanked, &content);

    // One batch: A's blank entry, A's entry the API refuses, B's twelve entries.
    let poison = format!("POISON-{}", uuid());
    faults(&info, Some(json!({"status": 400, "input_contains": poison})));
    let refused = uuid();
    upload(
        &info,
        &token_a,
        &uuid(),
        json!([
            put(1, &blanked, json!({"title": " ", "body_markdown": "", "tags": []})),
            put(2, &refused, json!({"title": poison})),
        ]),
    );
    let b: Vec<(String, EntryContent)> = (0..12)
        .map(|i| {
            let (data, content) = entry(&format!("B's entry {i}"), "Mine, and fine.", &["b"]);
            let id = uuid();
            upload(&info, &token_b, &uuid(), json!([put(1, &id, data)]));
            (id, content)
        })
        .collect();
    let report = drain_now(&info);
    assert!(report["claimed"].as_u64().unwrap() >= 14, "{report}");
    assert_eq!(report["failed"], 1, "only the refused entry is charged: {report}");
    assert!(report["cleared"].as_u64().unwrap() >= 1, "{report}");
    for (id, content) in &b {
        wait_embedded(&mut db, id, content);
        assert_eq!(job(&mut db, id), None, "B's job is done");
    }
    assert_eq!(stored(&mut db, &blanked).0, None, "the blank entry's stale embedding is cleared");
    assert_eq!(job(&mut db, &blanked), None, "and its job finished, with no failure");
    let (status, _, attempts, last_error) = job(&mut db, &refused).expect("the refused entry's job stays");
    assert_eq!((status.as_str(), attempts), ("pending", 1));
    assert!(last_error.unwrap().contains("400"));

    // Refused until its attempts run out: it alone ends failed; B's entries are untouched.
    for _ in 0..10 {
        if job(&mut db, &refused).is_some_and(|j| j.0 == "failed") {
            break;
        }
        db.execute(
            "update edgesync.embedding_jobs set next_attempt_at = now() where entry_id = $1::text::uuid",
            &[&refused],
        )
        .unwrap();
        drain_now(&info);
    }
    assert_eq!(job(&mut db, &refused).map(|j| j.0).as_deref(), Some("failed"));
    for (id, _) in &b {
        assert!(stored(&mut db, id).0.is_some() && job(&mut db, id).is_none());
    }
    // Blank again: no request at all.
    let before = faults(&info, None);
    upload(&info, &token_a, &uuid(), json!([put(3, &blanked, json!({"title": ""}))]));
    let report = drain_now(&info);
    assert_eq!(report["api_requests"], 0, "{report} {before}");
    // The failed job is this test's doing: remove it with its entry, so /health of the
    // shared stack is not degraded by it.
    db.execute("delete from edgesync.embedding_jobs where entry_id = $1::text::uuid", &[&refused]).unwrap();
}
