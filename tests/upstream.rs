//! Upstreams that accept a request and never answer, or answer only after the
//! database gave up: the Workers answer with a JSON error instead of hanging the
//! invocation, and nothing is lost.
//!
//! - PostgREST frozen (SIGSTOP): the kernel accepts the connection, nothing answers;
//!   the Worker gives up after `UPSTREAM_TIMEOUT_MS` (10 s) with 504 `upstream_timeout`.
//! - A statement waiting on a lock past the role's `statement_timeout` (8 s for
//!   `authenticated`, as on Supabase): 504 `database_timeout`; the retry applies once.
//! - Neo4j: the stand-in holds its answer longer than `NEO4J_TIMEOUT_MS` (the stack
//!   sets 5 s).
//!
//! Each test holds [`exclusive`]: a frozen PostgREST would fail the others.

use edgesync_integration::neo4j_standin::Graph;
use edgesync_integration::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// PostgREST stopped with SIGSTOP while alive; SIGCONT on drop.
struct Frozen(u32);

impl Frozen {
    fn new(pid: u32) -> Frozen {
        signal("-STOP", pid);
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

fn signal(sig: &str, pid: u32) {
    let ok = std::process::Command::new("kill").args([sig, &pid.to_string()]).status().map(|s| s.success());
    assert!(matches!(ok, Ok(true)), "kill {sig} {pid}");
}

#[test]
fn a_database_api_that_never_answers_is_504_after_the_deadline() {
    let _x = exclusive();
    let info = stack();
    let (_, token) = new_user(&info);
    let url = format!("{}/sync", info.functions_url);
    assert_eq!(call("GET", &url, Some(&token), None).status, 200);
    let started = Instant::now();
    let hung = {
        let _frozen = Frozen::new(info.pids.postgrest);
        call("GET", &url, Some(&token), None)
    };
    let waited = started.elapsed();
    hung.assert_error(504, "upstream_timeout");
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(20)).contains(&waited),
        "answered after {waited:?}; the deadline is 10 s"
    );
    // Thawed, it answers again.
    eventually("PostgREST to answer again", Duration::from_secs(30), || {
        call("GET", &url, Some(&token), None).status == 200
    });
}

#[test]
fn a_statement_cancelled_by_the_database_is_504_and_the_retried_batch_applies_once() {
    let _x = exclusive();
    let info = stack();
    let (user, token) = new_user(&info);
    let client = uuid();
    let id = uuid();
    let put = |op_id: u64, title: &str| json!([{"op_id": op_id, "op": "PUT", "type": "entries", "id": id, "data": {"title": title}}]);
    let first = upload(&info, &token, &client, put(1, "before"));
    assert_eq!(first.status, 200, "{}", first.text);

    // Hold the client's ledger row: the next push waits for it until the role's
    // statement_timeout cancels it.
    let mut db = db(&info);
    let mut tx = db.transaction().unwrap();
    tx.execute("select 1 from edgesync.clients where client_id = $1::text::uuid for update", &[&client]).unwrap();
    let hung = upload(&info, &token, &client, put(2, "after"));
    hung.assert_error(504, "database_timeout");
    tx.rollback().unwrap();

    let retry = upload(&info, &token, &client, put(2, "after"));
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert_eq!(retry.body["results"][0]["status"], "applied", "the cancelled push applied nothing: {}", retry.text);
    assert_eq!(last_op_id(&mut db, &client), 2);
    let rows: Vec<(String, String)> = db
        .query("select id::text, title from public.entries where user_id = $1::text::uuid", &[&user])
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, [(id.clone(), "after".to_owned())]);
}

#[test]
fn a_hanging_neo4j_fails_the_call_with_its_continuation_and_the_run_resumes() {
    let _x = exclusive();
    let info = stack();
    let server = neo4j(&info);
    let (user, token) = new_user(&info);
    server.put_graph(&user, Graph::generate(&user, 50, 50, 21));
    server.delay(&user, 8_000);
    let started = Instant::now();
    let a = call("POST", &format!("{}/populate", info.functions_url), Some(&token), Some(&json!({"source": "neo4j"})));
    let waited = started.elapsed();
    let err = a.assert_error(502, "source_error");
    assert!(err["message"].as_str().unwrap().contains("did not answer within 5000 ms"), "{}", a.text);
    assert!(waited < Duration::from_secs(8), "the Worker waited for the whole delay: {waited:?}");
    let continuation = err["details"]["continuation"].as_str().unwrap().to_owned();
    let status: String = db(&info)
        .query_one("select status from public.sync_state where user_id = $1::text::uuid and source = 'neo4j'", &[&user])
        .unwrap()
        .get(0);
    assert_eq!(status, "error");

    server.delay(&user, 0);
    let done = call(
        "POST",
        &format!("{}/populate", info.functions_url),
        Some(&token),
        Some(&json!({"source": "neo4j", "continuation": continuation})),
    );
    assert_eq!(done.status, 200, "{}", done.text);
    assert_eq!(done.body["status"], "completed");
}
