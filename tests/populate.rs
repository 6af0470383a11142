//! `/populate` against the real stack: wrangler dev running the populate Worker,
//! PostgREST and Postgres, and — because no Neo4j server can run here — the Neo4j
//! Query API v2 stand-in in `neo4j_standin.rs`, served by this test process on the
//! port the stack gave the Worker as `NEO4J_URL`.
//!
//! Every test holds [`exclusive`]: the Cron test must see only its own user due, and
//! the upstream-outage test stops PostgREST.

use edgesync_integration::neo4j_standin::{Fault, Graph, Node};
use edgesync_integration::*;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

fn populate(info: &StackInfo, token: &str, body: Value) -> Answer {
    call("POST", &format!("{}/populate", info.functions_url), Some(token), Some(&body))
}

/// Call until the run completes, following continuations; the answers, in order.
#[track_caller]
fn populate_to_the_end(info: &StackInfo, token: &str, first: Value) -> Vec<Answer> {
    let mut answers = Vec::new();
    let mut body = first.clone();
    loop {
        let a = populate(info, token, body.clone());
        assert_eq!(a.status, 200, "{}", a.text);
        let next = a.body["continuation"].as_str().map(str::to_owned);
        answers.push(a);
        match next {
            None => return answers,
            Some(c) => {
                assert!(answers.len() < 50, "the run does not end");
                body = json!({"source": "neo4j", "continuation": c});
                for carried in ["max_pages", "user_id"] {
                    if let Some(v) = first.get(carried) {
                        body[carried] = v.clone();
                    }
                }
            }
        }
    }
}

fn counts(a: &Answer, field: &str) -> (u64, u64, u64, u64, u64) {
    let c = &a.body[field];
    let n = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("{field}.{k} in {}", a.text));
    (n("inserted"), n("updated"), n("unchanged"), n("skipped"), n("rejected"))
}

// ---------------------------------------------------------------------------
// The oracle: what the default mapping (shared/src/populate/default_mapping.json)
// makes of the stand-in's generated graphs, written out independently.

/// A node's natural key as "<type>/<key>", or None for a label that is not imported.
fn natural_key(n: &Node) -> Option<String> {
    let p = |k: &str| n.properties[k].as_str().unwrap().to_owned();
    let has = |l: &str| n.labels.iter().any(|x| x == l);
    if has("Event") {
        Some(format!("event/{}", p("google_event_id")))
    } else if has("Person") {
        Some(format!("person/{}", p("email")))
    } else if has("Concept") {
        Some(format!("concept/{}", p("name")))
    } else {
        assert_eq!(n.labels, ["Draft"], "the oracle knows the generator's labels");
        None
    }
}

fn without(props: &Map<String, Value>, keys: &[&str]) -> Value {
    Value::Object(
        props.iter().filter(|(k, _)| !keys.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect(),
    )
}

/// Every row a graph should become, keyed by natural key: entities and events as
/// `{display_name | columns…, properties}`, relationships by "from -type-> to".
#[derive(Debug, PartialEq)]
struct Rows {
    entities: BTreeMap<String, Value>,
    events: BTreeMap<String, Value>,
    relationships: BTreeMap<String, Value>,
}

fn expected(g: &Graph) -> (Rows, u64) {
    let mut rows = Rows { entities: BTreeMap::new(), events: BTreeMap::new(), relationships: BTreeMap::new() };
    let mut skipped = 0;
    let mut keys = BTreeMap::new();
    for n in &g.nodes {
        let Some(k) = natural_key(n) else {
            skipped += 1;
            continue;
        };
        keys.insert(n.element_id.clone(), k.clone());
        let p = &n.properties;
        if k.starts_with("event/") {
            let cols = ["title", "description", "start_time", "end_time", "all_day", "location"];
            let mut v: Map<String, Value> =
                cols.iter().map(|c| (c.to_string(), p.get(*c).cloned().unwrap_or(Value::Null))).collect();
            v.insert(
                "source_id".into(),
                p.get("id")
                    .map(|i| json!(i.as_str().map(str::to_owned).unwrap_or(i.to_string())))
                    .unwrap_or(Value::Null),
            );
            v.insert(
                "properties".into(),
                without(
                    p,
                    &[
                        "user_id",
                        "google_event_id",
                        "id",
                        "title",
                        "description",
                        "start_time",
                        "end_time",
                        "all_day",
                        "location",
                    ],
                ),
            );
            rows.events.insert(k, Value::Object(v));
        } else {
            let key_prop = if k.starts_with("person/") { "email" } else { "name" };
            rows.entities.insert(
                k,
                json!({"display_name": p["name"], "properties": without(p, &["user_id", key_prop, "name"])}),
            );
        }
    }
    for r in &g.rels {
        match (keys.get(&r.start), keys.get(&r.end)) {
            (Some(a), Some(b)) => {
                rows.relationships.insert(format!("{a} -{}-> {b}", r.rel_type), without(&r.properties, &["user_id"]));
            }
            _ => skipped += 1,
        }
    }
    (rows, skipped)
}

/// What the database holds for the user (live rows), in the oracle's shape.
fn stored(db: &mut postgres::Client, user: &str) -> Rows {
    let json = |s: String| -> Value { serde_json::from_str(&s).unwrap() };
    let mut rows = Rows { entities: BTreeMap::new(), events: BTreeMap::new(), relationships: BTreeMap::new() };
    for r in db
        .query(
            "select type || '/' || key, jsonb_build_object('display_name', display_name, 'properties', properties)::text
               from public.sync_entities where user_id = $1::text::uuid and deleted_at is null",
            &[&user],
        )
        .unwrap()
    {
        rows.entities.insert(r.get(0), json(r.get(1)));
    }
    for r in db
        .query(
            r#"select 'event/' || google_event_id, jsonb_build_object(
                 'title', title, 'description', description,
                 'start_time', to_char(start_time at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                 'end_time', to_char(end_time at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                 'all_day', all_day, 'location', location, 'source_id', source_id, 'properties', properties)::text
               from public.sync_events where user_id = $1::text::uuid and deleted_at is null and source = 'neo4j'"#,
            &[&user],
        )
        .unwrap()
    {
        rows.events.insert(r.get(0), json(r.get(1)));
    }
    for r in db
        .query(
            "select coalesce(fe.type || '/' || fe.key, 'event/' || fv.google_event_id) || ' -' || r.type || '-> '
                    || coalesce(te.type || '/' || te.key, 'event/' || tv.google_event_id), r.properties::text
               from public.sync_relationships r
               left join public.sync_entities fe on fe.id = r.from_id left join public.sync_events fv on fv.id = r.from_id
               left join public.sync_entities te on te.id = r.to_id left join public.sync_events tv on tv.id = r.to_id
              where r.user_id = $1::text::uuid and r.deleted_at is null",
            &[&user],
        )
        .unwrap()
    {
        rows.relationships.insert(r.get(0), json(r.get(1)));
    }
    rows
}

/// (status, cursor, last_error, has run, retry_after in the future) of a user's sync state.
fn state(db: &mut postgres::Client, user: &str, source: &str) -> (String, Option<String>, Option<String>, bool, bool) {
    let r = db
        .query_one(
            "select status, cursor, last_error, run_id is not null, coalesce(retry_after > now(), false)
               from public.sync_state where user_id = $1::text::uuid and source = $2",
            &[&user, &source],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
}

/// The newest row version among the user's synced rows.
fn max_txid(db: &mut postgres::Client, user: &str) -> String {
    db.query_one(
        "select greatest((select max(_txid)::text::bigint from public.sync_entities where user_id = $1::text::uuid),
                         (select max(_txid)::text::bigint from public.sync_events where user_id = $1::text::uuid),
                         (select max(_txid)::text::bigint from public.sync_relationships where user_id = $1::text::uuid))::text",
        &[&user],
    )
    .unwrap()
    .get(0)
}

/// A user with a generated graph in the stand-in.
fn user_with_graph(info: &StackInfo, nodes: usize, rels: usize, seed: u64) -> (String, String, Graph) {
    let (user, token) = new_user(info);
    let g = Graph::generate(&user, nodes, rels, seed);
    neo4j(info).put_graph(&user, g.clone());
    (user, token, g)
}

#[test]
fn a_full_populate_equals_the_source_graph_and_a_second_run_changes_nothing() {
    let _x = exclusive();
    let info = stack();
    let (user, token, graph) = user_with_graph(&info, 2_500, 5_000, 1);
    let (want, skipped) = expected(&graph);
    let total = (want.entities.len() + want.events.len() + want.relationships.len()) as u64;

    let answers = populate_to_the_end(&info, &token, json!({"source": "neo4j"}));
    let last = answers.last().unwrap();
    assert_eq!(last.body["status"], "completed");
    assert_eq!(last.body["run"]["mode"], "full");
    assert_eq!(counts(last, "run_counts"), (total, 0, 0, skipped, 0), "{}", last.text);
    let mut db = db(&info);
    assert_eq!(stored(&mut db, &user), want);
    let (status, cursor, error, running, _) = state(&mut db, &user, "neo4j");
    assert_eq!((status.as_str(), cursor, error, running), ("idle", None, None, false));
    // The run's high-water mark is the next incremental run's token.
    let newest = graph.nodes.iter().chain([]).map(|n| n.properties["updated_at"].as_i64().unwrap());
    let newest = newest.chain(graph.rels.iter().map(|r| r.properties["updated_at"].as_i64().unwrap())).max().unwrap();
    let token_text: String = db
        .query_one(
            "select sync_token from public.sync_state where user_id = $1::text::uuid and source = 'neo4j'",
            &[&user],
        )
        .unwrap()
        .get(0);
    assert_eq!(token_text, newest.to_string());

    let before = max_txid(&mut db, &user);
    let again = populate_to_the_end(&info, &token, json!({"source": "neo4j"}));
    let last = again.last().unwrap();
    assert_eq!(counts(last, "run_counts"), (0, 0, total, skipped, 0), "{}", last.text);
    assert_eq!(max_txid(&mut db, &user), before, "a second run wrote rows");
    assert_eq!(stored(&mut db, &user), want);
}

#[test]
fn an_interrupted_run_resumes_from_its_continuation_with_the_same_result() {
    let _x = exclusive();
    let info = stack();
    let server = neo4j(&info);
    let (user, token, graph) = user_with_graph(&info, 1_200, 2_400, 2);
    let (want, skipped) = expected(&graph);
    let mut db = db(&info);

    // One page per call: the first call stops after 1,000 nodes and says where to go on.
    let first = populate(&info, &token, json!({"source": "neo4j", "max_pages": 1}));
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.body["status"], "partial");
    let c1 = first.body["continuation"].as_str().unwrap().to_owned();
    let written = stored(&mut db, &user);
    assert_eq!(
        written.entities.len() + written.events.len(),
        1_000 - graph.nodes[..1_000].iter().filter(|n| natural_key(n).is_none()).count()
    );
    assert!(written.relationships.is_empty());
    let (status, cursor, ..) = state(&mut db, &user, "neo4j");
    assert_eq!(status, "syncing", "between calls the run is in progress");
    assert!(cursor.unwrap().contains(&graph.nodes[999].element_id), "the cursor is after the last written node");

    // The source fails on the next page: the call says so and keeps what was written.
    server.fail(&user, Fault { status: 500, times: 1, after: 1, retry_after: None });
    let failed = populate(&info, &token, json!({"source": "neo4j", "continuation": c1}));
    let err = failed.assert_error(502, "source_error");
    // A fixed text: what Neo4j said, and where it is, stay in the log.
    assert_eq!(
        err["message"], "the data source failed; the run is saved, resume with the continuation",
        "{}",
        failed.text
    );
    assert!(!failed.text.contains("Neo.") && !failed.text.contains(&info.neo4j_url), "{}", failed.text);
    assert_eq!(err["details"]["continuation"], c1.as_str(), "same run");
    let (status, cursor, last_error, running, _) = state(&mut db, &user, "neo4j");
    assert_eq!((status.as_str(), running), ("error", true));
    assert_eq!(last_error.as_deref(), Some("the data source failed"), "the row is the user's to read");
    // The page before the failure (the last 200 nodes) is written and the cursor is past it.
    assert_eq!(cursor.as_deref(), Some(r#"{"after":null,"phase":"relationships"}"#));
    let written = stored(&mut db, &user);
    assert_eq!((written.entities, written.events), (want.entities.clone(), want.events.clone()));
    assert!(written.relationships.is_empty());

    // Resumed with the continuation, it completes with the same result as a run in one go.
    let answers = populate_to_the_end(&info, &token, json!({"source": "neo4j", "continuation": c1, "max_pages": 1}));
    assert!(answers.len() >= 3, "relationships take 3 pages");
    assert!(answers.iter().all(|a| a.body["run"]["resumed"] == true));
    let last = answers.last().unwrap();
    let total = (want.entities.len() + want.events.len() + want.relationships.len()) as u64;
    assert_eq!(counts(last, "run_counts"), (total, 0, 0, skipped, 0), "{}", last.text);
    assert_eq!(stored(&mut db, &user), want);
    assert_eq!(state(&mut db, &user, "neo4j").0, "idle");

    // The run is over: its continuation no longer resumes anything.
    let stale = populate(&info, &token, json!({"source": "neo4j", "continuation": c1}));
    stale.assert_error(410, "continuation_expired");
}

#[test]
fn a_rate_limited_source_marks_rate_limited_and_a_later_call_succeeds() {
    let _x = exclusive();
    let info = stack();
    let server = neo4j(&info);
    let (user, token, graph) = user_with_graph(&info, 300, 500, 3);
    let mut db = db(&info);
    server.fail(&user, Fault { status: 429, times: 1, after: 0, retry_after: Some(2) });

    let a = populate(&info, &token, json!({"source": "neo4j"}));
    let err = a.assert_error(429, "source_rate_limited");
    assert_eq!(a.retry_after.as_deref(), Some("2"));
    assert_eq!(err["details"]["retry_after_secs"], 2);
    let continuation = err["details"]["continuation"].as_str().unwrap().to_owned();
    let (status, _, last_error, running, waiting) = state(&mut db, &user, "neo4j");
    assert_eq!((status.as_str(), running, waiting), ("rate_limited", true, true));
    assert_eq!(last_error.as_deref(), Some("the data source is limiting requests"));

    // Before the retry-after, the source is not asked again.
    let asked = server.requests(&user);
    let early = populate(&info, &token, json!({"source": "neo4j", "continuation": continuation}));
    early.assert_error(429, "source_rate_limited");
    assert!(early.retry_after.as_deref().is_some_and(|s| s.parse::<u64>().unwrap() <= 2));
    assert_eq!(server.requests(&user), asked);

    // Once it has passed, a call resumes the run and completes it.
    let mut done = None;
    eventually("the retry-after to pass", Duration::from_secs(10), || {
        let a = populate(&info, &token, json!({"source": "neo4j", "continuation": continuation}));
        if a.status == 429 {
            return false;
        }
        done = Some(a);
        true
    });
    let done = done.unwrap();
    assert_eq!(done.status, 200, "{}", done.text);
    assert_eq!(done.body["status"], "completed");
    assert_eq!(stored(&mut db, &user), expected(&graph).0);
    assert_eq!(state(&mut db, &user, "neo4j").0, "idle");
}

#[test]
fn a_source_that_refuses_the_credentials_marks_error_and_writes_nothing() {
    let _x = exclusive();
    let info = stack();
    let server = neo4j(&info);
    let (user, token, graph) = user_with_graph(&info, 200, 300, 4);
    let mut db = db(&info);
    server.fail(&user, Fault { status: 401, times: 1, after: 0, retry_after: None });

    let a = populate(&info, &token, json!({"source": "neo4j"}));
    let err = a.assert_error(502, "source_unauthorized");
    let message = err["message"].as_str().unwrap();
    assert!(message.contains("refused the credentials") && message.contains("NEO4J_USER"), "{message}");
    assert!(!message.contains("Neo.ClientError") && !message.contains(&info.neo4j_url), "{message}");
    assert!(!a.text.contains(&info.neo4j_password));
    let (status, cursor, last_error, ..) = state(&mut db, &user, "neo4j");
    assert_eq!((status.as_str(), cursor), ("error", None));
    assert_eq!(last_error.as_deref(), Some("the data source refused the credentials"));
    let written = stored(&mut db, &user);
    assert_eq!(written.entities.len() + written.events.len() + written.relationships.len(), 0);

    // Fixed (the fault is spent): the next call completes.
    let again = populate_to_the_end(&info, &token, json!({"source": "neo4j"}));
    assert_eq!(again.last().unwrap().body["status"], "completed");
    assert_eq!(stored(&mut db, &user), expected(&graph).0);
    let (status, _, last_error, ..) = state(&mut db, &user, "neo4j");
    assert_eq!((status.as_str(), last_error), ("idle", None));
}

#[test]
fn a_source_that_refuses_the_cursor_restarts_the_run_fully() {
    let _x = exclusive();
    let info = stack();
    let server = neo4j(&info);
    let (user, token, graph) = user_with_graph(&info, 1_500, 1_000, 5);
    let mut db = db(&info);
    // The second page is answered 410 Gone: the run clears its cursor and starts again.
    server.fail(&user, Fault { status: 410, times: 1, after: 1, retry_after: None });
    let answers = populate_to_the_end(&info, &token, json!({"source": "neo4j"}));
    let last = answers.last().unwrap();
    assert_eq!(answers[0].body["run"]["restarted"], true, "{}", answers[0].text);
    assert_eq!(server.faulted(&user), 1);
    let (want, skipped) = expected(&graph);
    let total = (want.entities.len() + want.events.len() + want.relationships.len()) as u64;
    // Counted from the restart: the first page is seen again, as unchanged.
    let (ins, upd, unchanged, sk, rej) = counts(last, "run_counts");
    assert_eq!((ins + unchanged, upd, sk, rej), (total, 0, skipped, 0), "{}", last.text);
    assert!(unchanged > 0);
    assert_eq!(stored(&mut db, &user), want);
}

#[test]
fn a_second_call_while_a_populate_runs_gets_409() {
    let _x = exclusive();
    let info = stack();
    let server = neo4j(&info);
    let (user, token, graph) = user_with_graph(&info, 100, 100, 6);
    let mut db = db(&info);
    server.delay(&user, 1_500);
    let running = {
        let (info, token) = (info.clone(), token.clone());
        std::thread::spawn(move || populate(&info, &token, json!({"source": "neo4j"})))
    };
    wait_for_populate_lease(&info, &user, "neo4j");
    let second = populate(&info, &token, json!({"source": "neo4j"}));
    let err = second.assert_error(409, "populate_in_progress");
    assert!(err["details"]["retry_after_secs"].as_u64().is_some_and(|s| s > 0));
    assert!(second.retry_after.is_some());
    // Another source for the same user is independent.
    let legacy =
        populate(&info, &token, json!({"source": "legacy", "records": [{"legacyId": "n1", "legacyType": "note"}]}));
    assert_eq!(legacy.status, 200, "{}", legacy.text);
    server.delay(&user, 0);
    let first = running.join().unwrap();
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.body["status"], "completed");
    assert_eq!(stored(&mut db, &user), expected(&graph).0);
}

#[test]
fn legacy_records_get_a_verdict_each_and_valid_ones_are_imported_once() {
    let _x = exclusive();
    let info = stack();
    let (user, token) = new_user(&info);
    let mut db = db(&info);
    let records = json!([
        {"legacyId": "t-1", "legacyType": "task", "title": "Renew passport", "status": "open", "tags": ["admin"],
         "startAt": "2026-05-01T09:00:00Z", "sourceApp": "desktop"},
        {"legacyId": 42, "legacyType": "note", "rawText": "Ideas for the garden", "people": ["Ann"], "createdAt": 1700000000000u64},
        {"legacyId": "t-1", "legacyType": "task", "title": "a duplicate"},
        {"legacyId": "e-1", "legacyType": "event", "title": "Dentist", "startAt": "2026-02-30T10:00:00Z"},
        {"legacyType": "habit_def", "title": "no id"},
        "not a record",
        {"legacyId": "h-1", "legacyType": "habit_def", "title": "Stretch", "kind": "daily"},
        {"legacyId": "t-1", "legacyType": "note", "title": "same id, other type: another record"}
    ]);
    let a = populate(&info, &token, json!({"source": "legacy", "records": records}));
    assert_eq!(a.status, 200, "{}", a.text);
    let verdicts: Vec<(u64, String)> = a.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["status"].as_str().unwrap().to_owned()))
        .collect();
    let want: Vec<(u64, String)> =
        ["inserted", "inserted", "duplicate", "rejected", "rejected", "rejected", "inserted", "inserted"]
            .iter()
            .enumerate()
            .map(|(i, s)| (i as u64, s.to_string()))
            .collect();
    assert_eq!(verdicts, want);
    let recs = &a.body["records"];
    assert_eq!(recs[2]["duplicate_of"], 0);
    assert!(recs[3]["reason"].as_str().unwrap().contains("not a date in the calendar"));
    assert!(recs[4]["reason"].as_str().unwrap().contains("legacyId"));
    assert_eq!(counts(&a, "counts"), (4, 0, 0, 0, 4));

    let entries = |db: &mut postgres::Client| -> BTreeMap<String, (String, Value, Vec<String>, Option<String>)> {
        db.query(
            "select frontmatter->>'legacyType' || ':' || (frontmatter->>'legacyId'), id::text, frontmatter::text, facets,
                    coalesce(title, body_markdown)
               from public.entries where user_id = $1::text::uuid and deleted_at is null",
            &[&user],
        )
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), (r.get(1), serde_json::from_str(r.get::<_, &str>(2)).unwrap(), r.get(3), r.get(4))))
        .collect()
    };
    let imported = entries(&mut db);
    assert_eq!(imported.keys().collect::<Vec<_>>(), ["habit_def:h-1", "note:42", "note:t-1", "task:t-1"]);
    let task = &imported["task:t-1"];
    assert_eq!(task.1, json!({"legacyId": "t-1", "legacyType": "task", "status": "open", "sourceApp": "desktop"}));
    assert_eq!((task.2.clone(), task.3.as_deref()), (vec!["task".to_owned()], Some("Renew passport")));
    assert_eq!(recs[0]["id"], task.0.as_str());
    let created: String = db
        .query_one("select created_at::text from public.entries where id = $1::text::uuid", &[&imported["note:42"].0])
        .unwrap()
        .get(0);
    assert!(created.starts_with("2023-11-14 22:13:20"), "the legacy createdAt is kept: {created}");

    // The same batch again changes nothing; an edited record updates its entry.
    let again = populate(&info, &token, json!({"source": "legacy", "records": records}));
    assert_eq!(counts(&again, "counts"), (0, 0, 4, 0, 4), "{}", again.text);
    let mut edited = records.clone();
    edited[6]["title"] = json!("Stretch for ten minutes");
    let edit = populate(&info, &token, json!({"source": "legacy", "records": edited}));
    assert_eq!(counts(&edit, "counts"), (0, 1, 3, 0, 4), "{}", edit.text);
    assert_eq!(edit.body["records"][6]["status"], "updated");
    assert_eq!(entries(&mut db)["habit_def:h-1"].0, imported["habit_def:h-1"].0, "same entry, updated in place");

    // An entry the user deleted is not brought back.
    let client = uuid();
    let del = upload(
        &info,
        &token,
        &client,
        json!([{"op_id": 1, "op": "DELETE", "type": "entries", "id": imported["note:42"].0}]),
    );
    assert_eq!(del.status, 200, "{}", del.text);
    let after = populate(&info, &token, json!({"source": "legacy", "records": records}));
    assert_eq!(after.body["records"][1]["status"], "skipped", "{}", after.text);
    assert!(!entries(&mut db).contains_key("note:42"));
    let (status, ..) = state(&mut db, &user, "legacy");
    assert_eq!(status, "idle");
}

#[test]
fn another_user_can_neither_populate_nor_read_this_users_data() {
    let _x = exclusive();
    let info = stack();
    let server = neo4j(&info);
    let (alice, alice_token, graph) = user_with_graph(&info, 150, 200, 7);
    let (_bob, bob_token) = new_user(&info);

    // Bob naming Alice is refused before anything is asked of the source or the database.
    let asked = server.requests(&alice);
    let a = populate(&info, &bob_token, json!({"source": "neo4j", "user_id": alice}));
    a.assert_error(403, "user_id_mismatch");
    let a = populate(
        &info,
        &bob_token,
        json!({"source": "legacy", "user_id": alice, "records": [{"legacyId": "x", "legacyType": "note"}]}),
    );
    a.assert_error(403, "user_id_mismatch");
    assert_eq!(server.requests(&alice), asked);
    // Nor can Bob go around the Worker: the RPC checks the caller too.
    let direct = call(
        "POST",
        &format!("{}/rpc/edgesync_populate_begin", info.postgrest_url),
        Some(&bob_token),
        Some(&json!({"p_source": "neo4j", "p_user": alice})),
    );
    assert_eq!((direct.status, direct.body["hint"].as_str()), (403, Some("user_id_mismatch")), "{}", direct.text);

    // Alice's partial run: Bob cannot continue it with her continuation.
    let first = populate(&info, &alice_token, json!({"source": "neo4j", "max_pages": 1}));
    let c = first.body["continuation"].as_str().unwrap().to_owned();
    let stolen = populate(&info, &bob_token, json!({"source": "neo4j", "continuation": c}));
    stolen.assert_error(410, "continuation_expired");
    // Bob's own populate loads Bob's graph (empty), nothing of Alice's.
    let own = populate(&info, &bob_token, json!({"source": "neo4j"}));
    assert_eq!(counts(&own, "run_counts"), (0, 0, 0, 0, 0), "{}", own.text);
    let mut bob = Replica::new(&info, &bob_token, None);
    bob.drain(1000);
    let tables = ["sync_entities", "sync_events", "sync_relationships", "entries"];
    assert!(tables.iter().all(|t| bob.table(t).is_empty()), "Bob sees another user's rows");

    // The service role may populate a named user (and must name one).
    let service = populate(&info, &info.service_role_key, json!({"source": "neo4j"}));
    service.assert_error(400, "invalid_request");
    let done = populate_to_the_end(
        &info,
        &info.service_role_key,
        json!({"source": "neo4j", "user_id": alice, "continuation": c}),
    );
    assert_eq!(done.last().unwrap().body["user_id"], alice.as_str());
    assert_eq!(stored(&mut db(&info), &alice), expected(&graph).0);
}

#[test]
fn populated_rows_reach_the_users_client_through_sync() {
    let _x = exclusive();
    let info = stack();
    let (user, token, _graph) = user_with_graph(&info, 400, 600, 8);
    let answers = populate_to_the_end(&info, &token, json!({"source": "neo4j"}));
    assert_eq!(answers.last().unwrap().body["status"], "completed");
    let mut replica = Replica::new(&info, &token, None);
    replica.drain(500);
    let mut db = db(&info);
    for table in ["sync_entities", "sync_events", "sync_relationships"] {
        let (live, _) = server_state(&mut db, table, &user);
        assert!(!live.is_empty(), "{table} is empty");
        assert_eq!(replica.table(table), live, "{table} on the device differs from the server");
    }
    // The client also sees how its populate went.
    let states: Vec<Value> = replica.table("sync_state").into_values().collect();
    assert_eq!(states.len(), 1);
    assert_eq!((states[0]["source"].as_str(), states[0]["status"].as_str()), (Some("neo4j"), Some("idle")));
}

/// Run the populate Worker's Cron Trigger through wrangler dev's scheduled endpoint.
fn run_cron(info: &StackInfo) {
    let cron = info.cron("populate").expect("the stack runs populate's Cron Trigger");
    let a = call("GET", &format!("{}?cron=*/15+*+*+*+*", cron.scheduled_url()), None, None);
    assert_eq!(a.status, 200, "the scheduled handler: {}", a.text);
}

#[test]
fn the_cron_trigger_refreshes_a_stale_user_incrementally() {
    let _x = exclusive();
    let info = stack();
    let server = neo4j(&info);
    let (user, token, _) = user_with_graph(&info, 300, 400, 9);
    let mut db = db(&info);
    populate_to_the_end(&info, &token, json!({"source": "neo4j"}));

    // In the source: three nodes and one relationship change, one node and one relationship appear.
    server.update_graph(&user, |g| {
        let newer = 1_800_000_000_000i64;
        for (i, n) in g.nodes.iter_mut().filter(|n| n.labels == ["Concept"]).take(3).enumerate() {
            n.properties.insert("weight".into(), json!(1000 + i));
            n.properties.insert("updated_at".into(), json!(newer + i as i64));
        }
        // Relationships between imported nodes (not drafts).
        let drafts: Vec<String> =
            g.nodes.iter().filter(|n| natural_key(n).is_none()).map(|n| n.element_id.clone()).collect();
        let mut between = g.rels.iter_mut().filter(|r| !drafts.contains(&r.start) && !drafts.contains(&r.end));
        let changed = between.next().unwrap();
        changed.properties.insert("weight".into(), json!(99.5));
        changed.properties.insert("updated_at".into(), json!(newer));
        let mut r = between.next().unwrap().clone();
        let mut n = g.nodes.iter().find(|n| n.labels == ["Concept"]).unwrap().clone();
        n.element_id = "4:standin:9999999999".into();
        n.properties.insert("name".into(), json!("a new concept"));
        n.properties.insert("updated_at".into(), json!(newer + 10));
        r.element_id = "5:standin:9999999999".into();
        r.end = n.element_id.clone();
        r.properties.insert("updated_at".into(), json!(newer + 11));
        g.nodes.push(n);
        g.rels.push(r);
    });
    // Not stale yet: the Cron Trigger leaves the user alone.
    let asked = server.requests(&user);
    run_cron(&info);
    assert_eq!(server.requests(&user), asked, "a fresh user was refreshed");

    // Stale: it reads only what changed since the last run.
    db.execute(
        "update public.sync_state set last_completed_at = now() - interval '7 hours'
          where user_id = $1::text::uuid and source = 'neo4j'",
        &[&user],
    )
    .unwrap();
    let due = call(
        "POST",
        &format!("{}/rpc/edgesync_populate_due", info.postgrest_url),
        Some(&info.service_role_key),
        Some(&json!({"p_source": "neo4j", "p_stale_after_secs": 21600, "p_limit": 100})),
    );
    let due_users: Vec<&str> = due.body.as_array().unwrap().iter().map(|r| r["user_id"].as_str().unwrap()).collect();
    assert!(due_users.contains(&user.as_str()), "the user is due: {}", due.text);
    // A run takes a bounded number of users (other tests' may be due too): run it until
    // this user's refresh has completed.
    eventually("the Cron Trigger to refresh the user", Duration::from_secs(60), || {
        run_cron(&info);
        db.query_one(
            "select last_completed_at > now() - interval '1 hour' from public.sync_state
              where user_id = $1::text::uuid and source = 'neo4j'",
            &[&user],
        )
        .unwrap()
        .get(0)
    });
    let (status, progress, mode, fresh): (String, String, String, bool) = {
        let r = db
            .query_one(
                "select status, progress::text, coalesce(run_mode, ''), last_completed_at > now() - interval '1 minute'
                   from public.sync_state where user_id = $1::text::uuid and source = 'neo4j'",
                &[&user],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert_eq!((status.as_str(), fresh), ("idle", true));
    assert_eq!(mode, "incremental");
    let progress: Value = serde_json::from_str(&progress).unwrap();
    assert_eq!(
        (&progress["inserted"], &progress["updated"], &progress["unchanged"]),
        (&json!(2), &json!(4), &json!(0)),
        "only the changed items were read: {progress}"
    );
    assert_eq!(server.requests(&user) - asked, 2, "one page of nodes, one of relationships");
    assert_eq!(stored(&mut db, &user), expected(&server.graph(&user)).0);
}

#[test]
fn the_due_list_follows_the_sync_state_lifecycle() {
    let _x = exclusive();
    let info = stack();
    let mut db = db(&info);
    let users: Vec<String> = (0..7).map(|_| uuid()).collect();
    // These made-up states are removed however the test ends (the Cron test must not meet them).
    struct Cleanup(StackInfo, Vec<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = edgesync_integration::db(&self.0)
                .execute("delete from public.sync_state where user_id = any($1::text[]::uuid[])", &[&self.1]);
        }
    }
    let _cleanup = Cleanup(info.clone(), users.clone());
    // (status, last completed, run, retry_after, lease_until, updated) per user.
    let rows = [
        ("idle", "now() - interval '7 hours'", "null", "null", "null", "now()"), // stale → due
        ("idle", "now() - interval '1 hour'", "null", "null", "null", "now()"),  // fresh
        ("syncing", "null", "gen_random_uuid()", "null", "now() + interval '1 minute'", "now()"), // running
        ("syncing", "null", "gen_random_uuid()", "null", "null", "now() - interval '10 minutes'"), // abandoned → due
        ("syncing", "null", "gen_random_uuid()", "null", "null", "now()"),       // a client between two calls
        (
            "rate_limited",
            "now() - interval '7 hours'",
            "gen_random_uuid()",
            "now() + interval '1 hour'",
            "null",
            "now() - interval '10 minutes'",
        ),
        ("error", "now() - interval '1 hour'", "gen_random_uuid()", "null", "null", "now() - interval '7 hours'"), // failed long ago → due
    ];
    for (u, (status, completed, run, retry, lease, updated)) in users.iter().zip(rows) {
        // Written as the superuser, with triggers off so updated_at is the one given.
        db.batch_execute(&format!(
            "set session_replication_role = replica;
             insert into public.sync_state (user_id, source, status, last_completed_at, run_id, retry_after, lease_until, updated_at)
             values ('{u}', 'neo4j', '{status}', {completed}, {run}, {retry}, {lease}, {updated});
             reset session_replication_role;"
        ))
        .unwrap();
    }
    let due = call(
        "POST",
        &format!("{}/rpc/edgesync_populate_due", info.postgrest_url),
        Some(&info.service_role_key),
        Some(&json!({"p_source": "neo4j", "p_stale_after_secs": 21600, "p_limit": 1000})),
    );
    assert_eq!(due.status, 200, "{}", due.text);
    let listed: Vec<usize> = due
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| users.iter().position(|u| r["user_id"] == u.as_str()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(listed, [0, 3, 6]);
    // Users cannot list other users.
    let (_, token) = new_user(&info);
    let denied = call(
        "POST",
        &format!("{}/rpc/edgesync_populate_due", info.postgrest_url),
        Some(&token),
        Some(&json!({"p_source": "neo4j", "p_stale_after_secs": 0, "p_limit": 10})),
    );
    assert!(matches!(denied.status, 401 | 403 | 404), "{} {}", denied.status, denied.text);
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let _x = exclusive();
    let info = stack();
    let server = neo4j(&info);
    let (user, token, _) = user_with_graph(&info, 10, 10, 10);
    let url = format!("{}/populate", info.functions_url);
    let json_headers =
        |t: &str| vec![("authorization", format!("Bearer {t}")), ("content-type", "application/json".into())];

    call("POST", &url, None, Some(&json!({"source": "neo4j"}))).assert_error(401, "missing_token");
    call("POST", &url, Some("not.a.jwt"), Some(&json!({"source": "neo4j"}))).assert_error(401, "invalid_token");
    call("GET", &url, Some(&token), None).assert_error(405, "method_not_allowed");
    call_raw("POST", &url, &json_headers(&token), "{\"source\": ").assert_error(400, "invalid_request");
    call_raw(
        "POST",
        &url,
        &[("authorization", format!("Bearer {token}")), ("content-type", "text/plain".into())],
        "{}",
    )
    .assert_error(415, "unsupported_media_type");
    populate(&info, &token, json!({"source": "neo4j", "continuation": "r1.garbage"}))
        .assert_error(400, "invalid_continuation");
    populate(&info, &token, json!({"source": "neo4j", "max_pages": 100000})).assert_error(400, "invalid_request");
    populate(&info, &token, json!({"source": "neo4j", "cypher": "MATCH (n) DETACH DELETE n"}))
        .assert_error(400, "invalid_request");
    let many: Vec<Value> = (0..1001).map(|i| json!({"legacyId": i, "legacyType": "note"})).collect();
    populate(&info, &token, json!({"source": "legacy", "records": many})).assert_error(413, "too_many_records");
    let huge = format!(
        "{{\"source\":\"legacy\",\"records\":[{{\"legacyId\":\"1\",\"legacyType\":\"note\",\"title\":\"{}\"}}]}}",
        "x".repeat(3 << 20)
    );
    call_raw("POST", &url, &json_headers(&token), &huge).assert_error(413, "body_too_large");
    // A hostile legacy record is data, not SQL.
    let hostile = populate(
        &info,
        &token,
        json!({"source": "legacy", "records": [{"legacyId": "x'); drop table public.entries; --", "legacyType": "note",
                                               "title": "\u{0000}nul", "tags": ["a\"b"]}]}),
    );
    assert_eq!(hostile.status, 200, "{}", hostile.text);
    assert_eq!(hostile.body["records"][0]["status"], "rejected", "Postgres cannot store NUL: {}", hostile.text);
    let hostile = populate(
        &info,
        &token,
        json!({"source": "legacy", "records": [{"legacyId": "x'); drop table public.entries; --", "legacyType": "note",
                                               "title": "Robert'); --", "tags": ["a\"b"], "meta": {"$where": "1"}}]}),
    );
    assert_eq!(hostile.body["records"][0]["status"], "inserted", "{}", hostile.text);
    let mut db = db(&info);
    let stored: String = db
        .query_one("select frontmatter->>'legacyId' from public.entries where user_id = $1::text::uuid", &[&user])
        .unwrap()
        .get(0);
    assert_eq!(stored, "x'); drop table public.entries; --");
    assert_eq!(server.requests(&user), 0, "no bad request reached the source");
    assert!(db
        .query_opt("select 1 from public.sync_state where user_id = $1::text::uuid and source = 'neo4j'", &[&user])
        .unwrap()
        .is_none());
}

#[test]
fn with_the_database_api_down_populate_answers_502_and_resumes_later() {
    let _x = exclusive();
    let mut info = stack();
    let server = neo4j(&info);
    let (user, token, graph) = user_with_graph(&info, 50, 50, 11);
    info.stop_postgrest().unwrap();
    let a = populate(&info, &token, json!({"source": "neo4j"}));
    info.start_postgrest().unwrap();
    a.assert_error(502, "upstream_unreachable");
    assert_eq!(server.requests(&user), 0, "the source is not read when nothing can be written");
    let done = populate_to_the_end(&info, &token, json!({"source": "neo4j"}));
    assert_eq!(done.last().unwrap().body["status"], "completed");
    assert_eq!(stored(&mut db(&info), &user), expected(&graph).0);
}

#[test]
fn a_populate_answers_a_write_checkpoint_that_a_pull_reaches_with_its_rows() {
    let _x = exclusive();
    let info = stack();
    let (_user, token) = new_user(&info);
    // Another synced write in flight, begun before the populate: the pull watermark
    // stays below it, so the populated rows cannot be pulled yet, and the answer must
    // say so.
    let mut other = db(&info);
    let mut in_flight = other.transaction().unwrap();
    current_position(&mut in_flight);

    let records = json!([
        {"legacyId": "wc-1", "legacyType": "task", "title": "Loaded while another write was open"},
        {"legacyId": "wc-2", "legacyType": "note", "rawText": "Me too"}
    ]);
    let a = populate(&info, &token, json!({"source": "legacy", "records": records}));
    assert_eq!(a.status, 200, "{}", a.text);
    let wc: u64 = a.body["write_checkpoint"].as_str().and_then(|c| c.parse().ok()).expect(&a.text);

    let mut replica = Replica::new(&info, &token, Some("entries"));
    replica.drain(100);
    assert!(replica.checkpoint < wc, "checkpoint {} passed {wc} while a write was in flight", replica.checkpoint);
    assert!(replica.table("entries").is_empty(), "the rows were delivered before the checkpoint");

    in_flight.rollback().unwrap();
    replica.catch_up(wc, 100);
    let titles: Vec<String> =
        replica.table("entries").values().map(|r| r["title"].as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(titles.len(), 2, "{titles:?}");
    assert!(titles.iter().any(|t| t == "Loaded while another write was open"), "{titles:?}");

    // The Neo4j source answers with one too.
    let (_user, token, _graph) = user_with_graph(&info, 5, 2, 11);
    let answers = populate_to_the_end(&info, &token, json!({"source": "neo4j"}));
    let wc: u64 = answers.last().unwrap().body["write_checkpoint"].as_str().and_then(|c| c.parse().ok()).unwrap();
    let mut replica = Replica::new(&info, &token, Some("sync_entities"));
    replica.catch_up(wc, 100);
    assert_eq!(replica.table("sync_entities").len(), 5);
}

#[test]
fn a_user_cannot_write_the_populate_scheduling_columns() {
    let _x = exclusive();
    let info = stack();
    let server = neo4j(&info);
    let (user, token, _graph) = user_with_graph(&info, 5, 2, 12);
    // A 429 leaves retry_after set: the Worker must not call Neo4j again before it.
    server.fail(&user, Fault { status: 429, times: 1, after: 0, retry_after: Some(600) });
    populate(&info, &token, json!({"source": "neo4j"})).assert_error(429, "source_rate_limited");
    let mut db = db(&info);
    let columns = "status, cursor, sync_token, last_started_at, last_completed_at, last_error, retry_after, \
                   run_id, run_mode, progress, lease_id, lease_until";
    let scheduling = |db: &mut postgres::Client| -> String {
        db.query_one(
            &format!(
                "select row_to_json(s)::text from (select {columns} from public.sync_state
                       where user_id = $1::text::uuid and source = 'neo4j') s"
            ),
            &[&user],
        )
        .unwrap()
        .get(0)
    };
    let before = scheduling(&mut db);
    assert!(before.contains("rate_limited"), "{before}");
    let id: String = db
        .query_one(
            "select id::text from public.sync_state where user_id = $1::text::uuid and source = 'neo4j'",
            &[&user],
        )
        .unwrap()
        .get(0);
    let hostile = json!({
        "status": "idle", "retry_after": null, "last_completed_at": "2000-01-01T00:00:00Z", "last_error": null,
        "lease_id": uuid(), "lease_until": "2099-01-01T00:00:00Z", "run_id": uuid(), "run_mode": "full",
        "cursor": "x", "sync_token": "x", "progress": {}, "last_started_at": null,
    });
    // Straight to PostgREST, as anyone with the project URL and a token can.
    let bearer = [("authorization", format!("Bearer {token}"))];
    let direct =
        call_with_headers("PATCH", &format!("{}/sync_state?id=eq.{id}", info.postgrest_url), &bearer, Some(&hostile));
    assert!(direct.status < 300, "{}", direct.text);
    assert_eq!(scheduling(&mut db), before, "a PATCH through PostgREST changed them");
    // Through /upload.
    let up = upload(&info, &token, &uuid(), json!([patch(1, "sync_state", &id, hostile.clone())]));
    assert_eq!(up.status, 200, "{}", up.text);
    assert_eq!(scheduling(&mut db), before, "an /upload PATCH changed them");
    // A new row gets their defaults, whatever it says.
    let mut row = hostile.clone();
    row["source"] = json!("legacy");
    row["status"] = json!("syncing");
    let made = call_with_headers("POST", &format!("{}/sync_state", info.postgrest_url), &bearer, Some(&row));
    assert!(made.status < 300, "{}", made.text);
    let (status, lease, retry): (String, Option<String>, Option<String>) = db
        .query_one(
            "select status, lease_until::text, retry_after::text from public.sync_state
              where user_id = $1::text::uuid and source = 'legacy'",
            &[&user],
        )
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!((status.as_str(), lease, retry), ("idle", None, None));
    // Still readable and synced: the client sees the server's values.
    let mut replica = Replica::new(&info, &token, Some("sync_state"));
    replica.drain(100);
    let synced = replica.table("sync_state");
    assert_eq!(synced[&id]["status"], "rate_limited", "{synced:?}");
    assert!(synced[&id]["retry_after"].is_string(), "{synced:?}");
    // And the populate itself still writes them: the wait is honoured, then a call succeeds.
    populate(&info, &token, json!({"source": "neo4j"})).assert_error(429, "source_rate_limited");
    db.execute(
        "update public.sync_state set retry_after = now() - interval '1 second'
          where user_id = $1::text::uuid and source = 'neo4j'",
        &[&user],
    )
    .unwrap();
    let done = populate(&info, &token, json!({"source": "neo4j"}));
    assert_eq!(done.status, 200, "{}", done.text);
    assert!(scheduling(&mut db).contains("\"status\":\"idle\""));
}
