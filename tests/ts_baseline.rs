//! The TypeScript baseline Worker (`bench/ts-worker`, supabase-js + jose) against the
//! Rust Workers: the same batches give the same upload results, the same data and
//! cursors give identical `/sync` answers (rows, cursor strings, has_more,
//! checkpoint), and bad requests give the same status, code, message and details.
//!
//! `EDGESYNC_TS_BASELINE_URL` names the running TS Worker: `cargo xtask test` serves it
//! against its stack (as the bench does). By hand: `bench/ts-worker/serve.sh STACK_DIR
//! PORT` against the stack in `EDGESYNC_STACK_DIR`, or `--skip ts_baseline`. Without
//! it each test fails: a comparison that did not run is not a pass.
//!
//! Global effects: `conflicts_and_sql_errors_match` registers `public.test_notes`
//! (as `tests/sync.rs` does) and unregisters it at the end; `a_cursor_behind_a_purge_is_410_on_both`
//! purges tombstones older than 30 days (as `tests/sync.rs` does).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use edgesync_integration::*;
use edgesync_shared::cursor::{tables_fingerprint, Cursor, NIL_ID};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// The TS Worker's base URL.
fn ts_url() -> String {
    match std::env::var("EDGESYNC_TS_BASELINE_URL") {
        Ok(url) if !url.trim().is_empty() => url.trim().trim_end_matches('/').to_owned(),
        _ => panic!(
            "EDGESYNC_TS_BASELINE_URL is not set, so the TypeScript baseline cannot be compared: \
             `cargo xtask test` serves it; by hand, run bench/ts-worker/serve.sh STACK_DIR PORT and set \
             the variable, or pass --skip ts_baseline"
        ),
    }
}

/// The two implementations' base URLs.
struct Both {
    info: StackInfo,
    rust: String,
    ts: String,
}

fn both() -> Both {
    let ts = ts_url();
    let info = stack();
    let rust = info.functions_url.clone();
    Both { info, rust, ts }
}

/// `POST {base}/upload`.
fn upload_to(base: &str, token: &str, client_id: &str, mutations: Value) -> Answer {
    let body = json!({ "client_id": client_id, "mutations": mutations });
    call("POST", &format!("{base}/upload"), Some(token), Some(&body))
}

fn statuses(answer: &Answer) -> Vec<String> {
    answer.body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {}", answer.text))
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_owned())
        .collect()
}

fn write_checkpoint(answer: &Answer) -> u64 {
    answer.body["write_checkpoint"].as_str().and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{}", answer.text))
}

/// `GET {base}/sync{query}`.
fn pull(base: &str, token: &str, query: &str) -> Answer {
    call("GET", &format!("{base}/sync{query}"), Some(token), None)
}

/// The same pull from both, at one database state: Rust, TS, Rust again, until the two
/// Rust answers agree (the watermark only moves forward, so then the TS answer in
/// between saw the same state). Returns (rust, ts).
fn pull_both(b: &Both, token: &str, query: &str) -> (Answer, Answer) {
    for _ in 0..30 {
        let r1 = pull(&b.rust, token, query);
        let t = pull(&b.ts, token, query);
        let r2 = pull(&b.rust, token, query);
        if r1.status == r2.status && r1.body == r2.body {
            return (r1, t);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the database never held still for {query}");
}

/// Wait until both implementations' pulls for `token` have reached `checkpoint` (a
/// test user's rows fit in one page of the largest size).
fn settle(b: &Both, token: &str, checkpoint: u64) {
    for base in [&b.rust, &b.ts] {
        eventually("the pull to reach the write checkpoint", Duration::from_secs(30), || {
            let a = pull(base, token, "?limit=5000");
            a.body["has_more"] == false
                && a.body["checkpoint"].as_str().and_then(|c| c.parse::<u64>().ok()).is_some_and(|c| c >= checkpoint)
        });
    }
}

/// Page through `tables` with `limit` on both implementations, each page asked of both
/// with the same cursor, and require identical answers. Returns the pages.
fn page_through_both(b: &Both, token: &str, tables: Option<&str>, limit: u32) -> Vec<Value> {
    let query_for = |cursor: Option<&str>| {
        let mut query = format!("?limit={limit}");
        if let Some(t) = tables {
            query.push_str(&format!("&tables={t}"));
        }
        if let Some(c) = cursor {
            query.push_str(&format!("&since={c}"));
        }
        query
    };
    let mut cursor: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let query = query_for(cursor.as_deref());
        let (r, t) = pull_both(b, token, &query);
        assert_eq!(r.status, 200, "rust {query}: {}", r.text);
        assert_eq!(t.status, 200, "ts {query}: {}", t.text);
        assert_eq!(t.body, r.body, "{query}:\nrust {}\nts   {}", r.text, t.text);
        assert_eq!(t.content_type.as_deref(), Some("application/json"), "{query}");
        let next = r.body["cursor"].as_str().expect("cursor").to_owned();
        let more = r.body["has_more"].as_bool().expect("has_more");
        pages.push(r.body);
        assert!(pages.len() < 200, "paging does not end");
        if !more {
            // One more pull from the end: an empty delta, the same from both.
            let (r, t) = pull_both(b, token, &query_for(Some(&next)));
            assert_eq!(r.status, 200, "{}", r.text);
            assert_eq!(t.body, r.body, "after the last page:\nrust {}\nts   {}", r.text, t.text);
            return pages;
        }
        cursor = Some(next);
    }
}

/// Rows of every kind the seed tables hold, as a device would send them (SQLite text
/// for arrays, JSON, booleans and times), for one user and one upload path.
fn seed_batch(ids: &[String]) -> Value {
    json!([
        put(
            1,
            "sync_entities",
            &ids[0],
            json!({"type": "person", "key": "ada", "display_name": "Ada Lovelace",
                                               "properties": {"born": 1815, "tags": ["math", "poetry"], "ratio": 0.5}})
        ),
        put(
            2,
            "sync_entities",
            &ids[1],
            json!({"type": "place", "key": "zürich", "display_name": "Zürich ✓ \"quoted\" \\ back",
                                               "properties": "{\"nested\": {\"deep\": [1, 2, {\"x\": null}]}}"})
        ),
        put(
            3,
            "sync_events",
            &ids[2],
            json!({"title": "Meeting", "start_time": 1_700_000_000_000i64, "end_time": "2023-11-14T23:13:20Z",
                                             "all_day": 1, "location": "Room 1", "properties": {}})
        ),
        put(
            4,
            "entries",
            &ids[3],
            json!({"title": "First", "body_markdown": "line 1\nline 2\ttab \u{1F600}",
                                         "tags": "[\"a\",\"b\"]", "contexts": ["work"], "people": [],
                                         "frontmatter": "{\"mood\": \"ok\", \"n\": 3}", "start_at": 1_700_000_000})
        ),
        put(5, "entries", &ids[4], json!({"title": "Second", "body_markdown": "", "facets": ["x"]})),
        put(6, "entries", &ids[5], json!({"title": "to be deleted"})),
        delete(7, "entries", &ids[5]),
        delete(8, "entries", &ids[6]),
        put(
            9,
            "sync_relationships",
            &ids[7],
            json!({"from_id": ids[0], "to_id": ids[1], "type": "visited",
                                                    "properties": {"when": "1833"}})
        ),
    ])
}

fn second_batch(ids: &[String]) -> Value {
    json!([
        patch(10, "sync_entities", &ids[0], json!({"display_name": "Augusta Ada King"})),
        patch(11, "entries", &ids[3], json!({"tags": ["a", "b", "c"], "title": "First, edited"})),
        delete(12, "sync_events", &ids[2]),
        put(13, "sync_entities", &ids[8], json!({"type": "person", "key": "charles"})),
    ])
}

#[test]
fn sync_answers_are_identical_for_the_same_data_and_cursors() {
    let b = both();
    // A's batches go through Rust first, B's through TS first; the second batch the
    // other way round. Then every pull of either user is asked of both.
    let users: Vec<(String, String)> = (0..2).map(|_| new_user(&b.info)).collect();
    for (n, (_, token)) in users.iter().enumerate() {
        let (first, second) = if n == 0 { (&b.rust, &b.ts) } else { (&b.ts, &b.rust) };
        let ids: Vec<String> = (0..9).map(|_| uuid()).collect();
        let client = uuid();
        let one = upload_to(first, token, &client, seed_batch(&ids));
        assert_eq!(one.status, 200, "{}", one.text);
        assert!(statuses(&one).iter().all(|s| s == "applied"), "{}", one.text);
        let two = upload_to(second, token, &client, second_batch(&ids));
        assert_eq!(two.status, 200, "{}", two.text);
        assert!(statuses(&two).iter().all(|s| s == "applied"), "{}", two.text);
        settle(&b, token, write_checkpoint(&two));
    }
    for (_, token) in &users {
        for tables in [None, Some("entries,sync_entities"), Some("sync_events"), Some("sync_relationships,entries")] {
            for limit in [1, 2, 3, 1000] {
                let pages = page_through_both(&b, token, tables, limit);
                if limit == 1 {
                    assert!(pages.len() > 1, "limit 1 should page: {pages:?}");
                }
            }
        }
    }
    // The users see only their own rows, from both.
    let (a_id, a) = &users[0];
    let (r, t) = pull_both(&b, a, "");
    for body in [&r.body, &t.body] {
        for (_, change) in body["changes"].as_object().unwrap() {
            for row in change["upserted"].as_array().unwrap() {
                assert_eq!(row["user_id"], json!(a_id), "{row}");
            }
        }
    }
}

#[test]
fn cursors_from_either_side_and_old_versions_are_accepted_alike() {
    let b = both();
    let (_, token) = new_user(&b.info);
    let ids: Vec<String> = (0..9).map(|_| uuid()).collect();
    let up = upload_to(&b.ts, &token, &uuid(), seed_batch(&ids));
    assert_eq!(up.status, 200, "{}", up.text);
    settle(&b, &token, write_checkpoint(&up));

    // A cursor from the TS Worker's first page, used on both (and the Rust one's, which
    // is the same string).
    let (r, t) = pull_both(&b, &token, "?tables=entries&limit=1");
    assert_eq!(t.body, r.body);
    let cursor = t.body["cursor"].as_str().unwrap().to_owned();
    let (r2, t2) = pull_both(&b, &token, &format!("?tables=entries&limit=1&since={cursor}"));
    assert_eq!(r2.status, 200, "{}", r2.text);
    assert_eq!(t2.body, r2.body);

    // Hand-made cursors: the shared crate's encoding, a version-1 cursor, and fields the
    // Rust parser accepts in unusual spellings.
    let decoded = Cursor::decode(&cursor).unwrap();
    let fp = tables_fingerprint(Some(&["entries".to_string()]));
    let v1 = forge(&format!("1.{}.{}.{fp:08x}", decoded.txid, decoded.id.replace('-', "")));
    let plus = forge(&format!(
        "2.+{}.{}.+{fp:x}.+{}",
        decoded.txid,
        decoded.id.replace('-', "").to_uppercase(),
        decoded.origin
    ));
    let rebuilt = Cursor { txid: decoded.txid, id: decoded.id.clone(), tables: fp, origin: decoded.origin }.encode();
    for since in [rebuilt, v1, plus] {
        let (r, t) = pull_both(&b, &token, &format!("?tables=entries&limit=1&since={since}"));
        assert_eq!(r.status, 200, "{since}: {}", r.text);
        assert_eq!(t.body, r.body, "{since}");
    }
}

/// A cursor with a valid checksum over any payload (the checksum of shared/src/cursor.rs).
fn forge(payload: &str) -> String {
    fn fnv1a64(bytes: &[u8]) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }
    let check = (fnv1a64(format!("edgesync-cursor:{payload}").as_bytes()) >> 16) as u32;
    URL_SAFE_NO_PAD.encode(format!("{payload}.{check:08x}"))
}

/// An answer with the parts that must agree between the implementations, and the
/// user-specific parts (ids, user, times, checkpoints) replaced by names.
fn normalised(a: &Answer, names: &BTreeMap<String, String>) -> Value {
    fn walk(v: &Value, key: Option<&str>, names: &BTreeMap<String, String>) -> Value {
        match v {
            Value::String(s) => {
                if matches!(key, Some("created_at" | "updated_at" | "deleted_at")) {
                    return json!("<time>");
                }
                if key == Some("write_checkpoint") {
                    assert!(s.parse::<u64>().is_ok(), "write_checkpoint {s}");
                    return json!("<checkpoint>");
                }
                let mut s = s.clone();
                for (id, name) in names {
                    s = s.replace(id.as_str(), name);
                }
                json!(s)
            }
            Value::Array(items) => Value::Array(items.iter().map(|i| walk(i, None, names)).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .filter(|(k, _)| k.as_str() != "request_id")
                    .map(|(k, v)| (k.clone(), walk(v, Some(k), names)))
                    .collect::<Map<String, Value>>(),
            ),
            other => other.clone(),
        }
    }
    json!({"status": a.status, "body": walk(&a.body, None, names)})
}

/// One user's run of uploads with every outcome: applied, duplicates, conflicts under
/// both policies, and the errors only the database can find. Returns the normalised
/// answers.
fn upload_scenario(b: &Both, base: &str) -> Vec<Value> {
    let (uid, token) = new_user(&b.info);
    let (other_id, other) = new_user(&b.info);
    let mut names = BTreeMap::new();
    names.insert(uid.clone(), "<user>".to_owned());
    names.insert(other_id.clone(), "<other user>".to_owned());
    let mut id = |name: &str| {
        let id = uuid();
        names.insert(id.clone(), format!("<{name}>"));
        id
    };
    let ids: Vec<String> = (0..9).map(|i| id(&format!("row{i}"))).collect();
    let (phone, laptop, taken) = (id("phone"), id("laptop"), id("taken client"));
    let (note, missing, theirs) = (id("note"), id("missing"), id("their row"));
    let mut log: Vec<Answer> = Vec::new();

    // Applied, then the same batch again: duplicates.
    log.push(upload_to(base, &token, &phone, seed_batch(&ids)));
    log.push(upload_to(base, &token, &phone, seed_batch(&ids)));
    log.push(upload_to(
        base,
        &token,
        &phone,
        json!([
            put(20, "test_notes", &note, json!({"body": "v1"})),
            patch(21, "entries", &ids[3], json!({"title": "v1"}))
        ]),
    ));
    settle(b, &token, write_checkpoint(log.last().unwrap()));
    let base_cursor = pull(base, &token, "").body["cursor"].as_str().unwrap().to_owned();

    // Another device edits; then the phone edits on its older view.
    log.push(upload_to(
        base,
        &token,
        &laptop,
        json!([
            patch(1, "test_notes", &note, json!({"body": "laptop"})),
            patch(2, "entries", &ids[3], json!({"title": "laptop"}))
        ]),
    ));
    let mut stale = vec![
        patch(30, "test_notes", &note, json!({"body": "phone"})),
        patch(31, "entries", &ids[3], json!({"title": "phone"})),
        patch(32, "entries", &missing, json!({"title": "nobody"})),
        delete(33, "entries", &ids[4]),
    ];
    for m in &mut stale {
        m["base_cursor"] = json!(base_cursor);
    }
    log.push(upload_to(base, &token, &phone, Value::Array(stale)));
    // Old and new op_ids mixed.
    log.push(upload_to(
        base,
        &token,
        &phone,
        json!([
            patch(30, "test_notes", &note, json!({"body": "again"})),
            put(40, "sync_entities", &ids[8], json!({"type": "t", "key": "k"}))
        ]),
    ));

    // What only the database can refuse.
    let their_row = upload_to(base, &other, &taken, json!([put(1, "entries", &theirs, json!({"title": "theirs"}))]));
    assert_eq!(their_row.status, 200, "{}", their_row.text);
    for mutations in [
        json!([put(50, "entries", &theirs, json!({"title": "mine now"}))]),
        json!([put(50, "no_such_table", &id("x"), json!({}))]),
        json!([put(50, "entries", &id("x"), json!({"colour": "red"}))]),
        json!([put(50, "entries", &id("x"), json!({"embedding": "[1]"}))]),
        json!([put(50, "entries", &id("x"), json!({"start_at": "not a time"}))]),
        json!([put(50, "entries", &id("x"), json!({"tags": {"not": "an array"}}))]),
        json!([put(50, "sync_entities", &id("x"), json!({"type": "t"}))]),
        json!([put(50, "sync_entities", &id("x"), json!({"type": "t", "key": "k"}))]),
    ] {
        log.push(upload_to(base, &token, &phone, mutations));
    }
    log.push(upload_to(base, &token, &taken, json!([put(1, "entries", &id("x"), json!({"title": "t"}))])));
    log.iter().map(|a| normalised(a, &names)).collect()
}

#[test]
fn conflicts_and_sql_errors_match() {
    let b = both();
    let mut db = db(&b.info);
    db.batch_execute(
        "create table if not exists public.test_notes (id uuid primary key, user_id uuid not null, body text);
         select edgesync.enable_sync('public.test_notes', conflict_policy => 'server_wins');",
    )
    .unwrap();
    let rust = upload_scenario(&b, &b.rust);
    let ts = upload_scenario(&b, &b.ts);
    db.batch_execute("select edgesync.disable_sync('public.test_notes')").unwrap();

    // The scenario itself did what it should (so equality is not vacuous).
    let status_list = |i: usize| -> Vec<Value> {
        let results = rust[i]["body"]["results"].as_array();
        results.unwrap_or_else(|| panic!("answer {i}: {:#}", rust[i])).iter().map(|r| r["status"].clone()).collect()
    };
    assert!(status_list(0).iter().all(|s| s == "applied"), "{}", rust[0]);
    assert!(status_list(1).iter().all(|s| s == "duplicate"), "{}", rust[1]);
    assert_eq!(status_list(4), ["conflict", "applied", "conflict", "applied"], "{}", rust[4]);
    assert_eq!(rust[4]["body"]["results"][1]["conflict"], true, "{}", rust[4]);
    assert_eq!(status_list(5), ["duplicate", "applied"], "{}", rust[5]);
    let codes: Vec<(u64, String)> = rust[6..]
        .iter()
        .map(|a| (a["status"].as_u64().unwrap(), a["body"]["error"]["code"].as_str().unwrap_or_default().to_owned()))
        .collect();
    let want = [
        (403, "forbidden_row"),
        (400, "invalid_mutations"),
        (400, "invalid_mutations"),
        (400, "invalid_mutations"),
        (400, "invalid_value"),
        (400, "invalid_value"),
        (400, "invalid_value"),
        (409, "unique_violation"),
        (403, "client_id_taken"),
    ];
    assert_eq!(codes, want.map(|(s, c)| (s, c.to_owned())));

    assert_eq!(rust.len(), ts.len());
    for (i, (r, t)) in rust.iter().zip(&ts).enumerate() {
        assert_eq!(t, r, "answer {i}:\nrust {r:#}\nts   {t:#}");
    }
}

/// The same request to both; their answers.
fn ask_both(b: &Both, method: &str, path: &str, headers: &[(&str, String)], body: Option<&str>) -> (Answer, Answer) {
    let go = |base: &str| match body {
        Some(text) => call_raw(method, &format!("{base}{path}"), headers, text),
        None => call_with_headers(method, &format!("{base}{path}"), headers, None),
    };
    (go(&b.rust), go(&b.ts))
}

/// Both answered the same error: status, code, message, details and headers.
#[track_caller]
fn assert_same_error(what: &str, r: &Answer, t: &Answer, same_message: bool) {
    assert!(r.status >= 400, "{what}: rust answered {} {}", r.status, r.text);
    let re = r.assert_error(r.status, r.body["error"]["code"].as_str().unwrap_or("?"));
    let te = t.assert_error(r.status, r.body["error"]["code"].as_str().unwrap_or("?"));
    assert_eq!(te["details"], re["details"], "{what}:\nrust {}\nts   {}", r.text, t.text);
    if same_message {
        // The TypeScript Worker has no long-poll: its list of /sync's parameters has no
        // `wait`. Nothing else in a message may differ.
        let rust = re["message"]
            .as_str()
            .unwrap_or_default()
            .replace("since, tables, limit and wait", "since, tables and limit");
        assert_eq!(te["message"].as_str().unwrap_or_default(), rust, "{what}:\nrust {}\nts   {}", r.text, t.text);
    }
    assert_eq!(t.www_authenticate, r.www_authenticate, "{what}: www-authenticate");
    assert_eq!(t.allow, r.allow, "{what}: allow");
    assert_eq!(t.retry_after, r.retry_after, "{what}: retry-after");
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn bad_tokens_are_refused_alike() {
    let b = both();
    let info = &b.info;
    let sub = uuid();
    let claims = |f: &dyn Fn(&mut Value)| {
        let mut c = keys::user_claims(&sub, &info.jwt_issuer, 3600);
        f(&mut c);
        c
    };
    let hs = |c: Value| keys::sign_hs256(&info.jwt_secret, &c).unwrap();
    let good = hs(claims(&|_| {}));
    let parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let stranger = keys::Es256Key::generate().unwrap();
    let bearer = |t: &str| vec![("authorization", format!("Bearer {t}"))];
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("no header", vec![]),
        ("empty header", vec![("authorization", String::new())]),
        ("basic scheme", vec![("authorization", "Basic dXNlcjpwYXNz".into())]),
        ("bearer without token", vec![("authorization", "Bearer ".into())]),
        ("lower-case scheme, good token", vec![("authorization", format!("bearer {good}"))]),
        ("garbage", bearer("garbage")),
        ("two parts", bearer("a.b")),
        ("not base64", bearer("!!.??.**")),
        ("header not JSON", bearer(&format!("{}.{}.{}", URL_SAFE_NO_PAD.encode("nope"), parts[1], parts[2]))),
        ("oversized", bearer(&"a".repeat(9000))),
        ("expired", bearer(&hs(claims(&|c| c["exp"] = json!(keys::now() - 60))))),
        ("expired within leeway", bearer(&hs(claims(&|c| c["exp"] = json!(keys::now() - 3))))),
        (
            "no exp",
            bearer(&hs(claims(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }))),
        ),
        ("nbf ahead", bearer(&hs(claims(&|c| c["nbf"] = json!(keys::now() + 600))))),
        ("nbf within leeway", bearer(&hs(claims(&|c| c["nbf"] = json!(keys::now() + 3))))),
        ("wrong secret", bearer(&keys::sign_hs256(&"f".repeat(40), &claims(&|_| {})).unwrap())),
        ("wrong aud", bearer(&hs(claims(&|c| c["aud"] = json!("anon"))))),
        ("aud list", bearer(&hs(claims(&|c| c["aud"] = json!(["x", "authenticated"]))))),
        (
            "no aud",
            bearer(&hs(claims(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }))),
        ),
        ("wrong iss", bearer(&hs(claims(&|c| c["iss"] = json!("https://elsewhere/auth/v1"))))),
        ("sub not a uuid", bearer(&hs(claims(&|c| c["sub"] = json!("user-1"))))),
        (
            "no sub",
            bearer(&hs(claims(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            }))),
        ),
        ("upper-case sub", bearer(&hs(claims(&|c| c["sub"] = json!(sub.to_uppercase()))))),
        ("anon key", bearer(&hs(keys::api_key_claims("anon")))),
        ("service role", bearer(&hs(keys::api_key_claims("service_role")))),
        (
            "service role naming a user",
            bearer(&hs({
                let mut c = keys::api_key_claims("service_role");
                c["sub"] = json!(sub);
                c
            })),
        ),
        (
            "service role from the JWKS key",
            bearer(&keys::sign_es256(&info.es256_key, &keys::api_key_claims("service_role")).unwrap()),
        ),
        ("user claims with the service role", bearer(&hs(claims(&|c| c["role"] = json!("service_role"))))),
        (
            "no role",
            bearer(&hs(claims(&|c| {
                c.as_object_mut().unwrap().remove("role");
            }))),
        ),
        ("alg none", bearer(&format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), parts[1]))),
        ("alg HS512", bearer(&format!("{}.{}.{}", b64(&json!({"alg": "HS512", "typ": "JWT"})), parts[1], parts[2]))),
        ("tampered", bearer(&format!("{}.{}.{}", parts[0], b64(&claims(&|c| c["sub"] = json!(uuid()))), parts[2]))),
        ("es256 good", bearer(&user_token_es256(info, &sub))),
        (
            "es256 unknown kid",
            bearer(&keys::sign_es256(&stranger, &keys::user_claims(&sub, &info.jwt_issuer, 3600)).unwrap()),
        ),
        (
            "es256 no kid",
            bearer(&{
                let t = user_token_es256(info, &sub);
                let p: Vec<&str> = t.split('.').collect();
                format!("{}.{}.{}", b64(&json!({"alg": "ES256", "typ": "JWT"})), p[1], p[2])
            }),
        ),
        (
            "es256 header on an HS256 signature",
            bearer(&format!(
                "{}.{}.{}",
                b64(&json!({"alg": "ES256", "typ": "JWT", "kid": info.es256_key.kid})),
                parts[1],
                parts[2]
            )),
        ),
    ];
    let body = json!({"client_id": uuid(), "mutations": []}).to_string();
    for (what, headers) in cases {
        let (r, t) = ask_both(&b, "GET", "/sync?tables=sync_events&limit=1", &headers, None);
        if r.status == 200 {
            assert_eq!(t.status, 200, "{what} /sync: ts {}", t.text);
        } else {
            assert_same_error(&format!("{what} /sync"), &r, &t, true);
        }
        let mut with_type = headers.clone();
        with_type.push(("content-type", "application/json".into()));
        let (r, t) = ask_both(&b, "POST", "/upload", &with_type, Some(&body));
        if r.status == 200 {
            assert_eq!(t.status, 200, "{what} /upload: ts {}", t.text);
            assert_eq!(t.body["results"], json!([]), "{what}");
        } else {
            assert_same_error(&format!("{what} /upload"), &r, &t, true);
        }
    }
}

#[test]
fn bad_pulls_are_refused_alike() {
    let b = both();
    let (_, token) = new_user(&b.info);
    let auth = vec![("authorization", format!("Bearer {token}"))];
    let (r, _) = pull_both(&b, &token, "?tables=entries");
    let entries_cursor = r.body["cursor"].as_str().unwrap().to_owned();
    let huge = Cursor { txid: u64::MAX, id: NIL_ID.into(), tables: 0, origin: 1 }.encode();
    let queries = [
        "?since=not-a-cursor".to_owned(),
        format!("?since={}", "A".repeat(300)),
        format!("?since={entries_cursor}="),
        format!("?since={}", &entries_cursor[..entries_cursor.len() - 1]),
        format!("?since={}", URL_SAFE_NO_PAD.encode("2.1.00000000000000000000000000000000.00000000.1")),
        format!("?since={}", forge("3.1.00000000000000000000000000000000.00000000.1")),
        format!("?since={}", forge("2.1.00000000000000000000000000000000.00000000")),
        format!("?since={}", forge("2.1.00000000000000000000000000000000.00000000.x")),
        format!("?since={}", forge("2.1.zz000000000000000000000000000000.00000000.1")),
        format!("?since={}", forge("2.1.00000000000000000000000000000000.0000000g.1")),
        format!("?since={huge}"),
        format!("?since={entries_cursor}"),
        format!("?tables=entries,sync_events&since={entries_cursor}"),
        "?limit=0".into(),
        "?limit=-1".into(),
        "?limit=5001".into(),
        "?limit=ten".into(),
        "?limit=1.5".into(),
        "?limit=".into(),
        "?limit=1&limit=2".into(),
        "?bogus=1".into(),
        format!("?{}=1", "k".repeat(100)),
        "?tables=Entries".into(),
        "?tables=a;drop".into(),
        "?tables=%2C".into(),
        "?tables=x%zz".into(),
        "?tables=%ff".into(),
        "?tables=entries,nope,zzz".into(),
        format!("?tables={}", (0..65).map(|i| format!("t{i}")).collect::<Vec<_>>().join(",")),
        format!("?tables={}", "x".repeat(9000)),
    ];
    for q in &queries {
        let (r, t) = ask_both(&b, "GET", &format!("/sync{q}"), &auth, None);
        assert_same_error(&format!("GET /sync{}", &q[..q.len().min(80)]), &r, &t, true);
    }
    // Unusual but valid: the same answers.
    for q in ["?limit=%2B7&tables=+entries+,entries,", "?tables=", "?since=&limit=0010", "?&&limit=3&"] {
        let (r, t) = pull_both(&b, &token, q);
        assert_eq!(r.status, 200, "{q}: {}", r.text);
        assert_eq!(t.body, r.body, "{q}");
    }
    for (method, path) in [
        ("POST", "/sync"),
        ("DELETE", "/sync"),
        ("PATCH", "/sync"),
        ("QUERY", "/sync"),
        ("GET", "/upload"),
        ("PUT", "/upload"),
        ("OPTIONS", "/upload"),
    ] {
        let (r, t) = ask_both(&b, method, path, &auth, None);
        assert_same_error(&format!("{method} {path}"), &r, &t, true);
    }
    // HEAD: no body, the same status and Allow.
    let (r, t) = ask_both(&b, "HEAD", "/upload", &auth, None);
    assert_eq!((r.status, r.allow.as_deref()), (405, Some("POST")));
    assert_eq!((t.status, &t.allow), (r.status, &r.allow));
}

#[test]
fn bad_uploads_are_refused_alike() {
    let b = both();
    let (uid, token) = new_user(&b.info);
    let client = uuid();
    let row = uuid();
    let json_headers = vec![("authorization", format!("Bearer {token}")), ("content-type", "application/json".into())];
    let good = put(1, "entries", &row, json!({"title": "fine"}));
    let raw_cases: Vec<(&str, String, bool)> = vec![
        ("truncated JSON", "{\"client_id\": ".into(), false),
        ("not JSON", "hello".into(), false),
        ("BOM", format!("\u{feff}{}", json!({"client_id": client, "mutations": []})), false),
        ("empty body", String::new(), false),
        ("an array", "[]".into(), true),
        ("bad client_id", json!({"client_id": "x", "mutations": []}).to_string(), true),
        ("no mutations", json!({"client_id": client}).to_string(), true),
        ("mutations not an array", json!({"client_id": client, "mutations": {}}).to_string(), true),
        (
            "every shape error",
            json!({"client_id": client, "mutations": [
                {"op_id": 0, "op": "PUT", "type": "t", "id": row},
                {"op_id": 2, "op": "UPSERT", "type": "t", "id": row},
                {"op_id": 3, "op": "PUT", "type": "Bad-Name", "id": row},
                {"op_id": 4, "op": "PUT", "type": "t", "id": "not-a-uuid"},
                {"op_id": 5, "op": "PUT", "type": "t", "id": row, "data": [1]},
                {"op_id": 5, "op": "PUT", "type": "t", "id": row},
                {"op_id": "6", "op": "PUT", "type": "t", "id": row},
                {"op_id": 7, "op": "PUT", "type": "t", "id": row, "data": {"id": uuid()}},
                "nope",
                {"op_id": 9, "op": "PUT", "type": "t", "id": row, "base_cursor": "junk"},
                {"op_id": 10, "op": "PUT", "type": "t", "id": row, "base_cursor": 5},
                {"op_id": -1, "op": "PUT", "type": "t", "id": row},
                {"op_id": 11, "op": 5, "type": "t", "id": row},
                {"op_id": 12, "op": "put", "type": "", "id": row},
                {"op_id": 13, "op": "delete", "type": "t", "id": row.to_uppercase(), "data": "x"},
                {"op_id": 14, "op": "PUT", "type": "t", "id": row, "data": null, "opData": [1]},
                {"op_id": 15, "op": "PUT", "type": "t", "id": row, "opData": 7},
                {"op_id": 16, "op": "PUT", "type": "t", "id": row, "data": {"id": row.to_uppercase(), "user_id": uid.to_uppercase()}},
                {"op_id": 17, "op": "PUT", "type": "t", "id": row, "data": {"title": "a\u{0}b"}},
                {"op_id": 18, "op": "PUT", "type": "t", "id": row, "data": {"tags": ["ok", {"k\u{0}": 1}]}},
                {"op_id": 19, "op": "PUT", "type": "t", "id": row, "data": {"title": "fine", "n": [1, {"k": "\u{1}"}]}},
                [1, 2],
                null
            ]})
            .to_string(),
            true,
        ),
        (
            "another user's id",
            json!({"client_id": client, "mutations": [good, put(2, "entries", &uuid(), json!({"user_id": uuid()})),
                                                      {"op_id": 3, "op": "PUT", "type": "Bad", "id": row},
                                                      put(4, "entries", &uuid(), json!({"user_id": null}))]})
            .to_string(),
            true,
        ),
        (
            "too many mutations",
            json!({"client_id": client, "mutations": (1..=1001).map(|i| delete(i, "entries", &row)).collect::<Vec<_>>()})
                .to_string(),
            true,
        ),
        (
            "too many bytes",
            json!({"client_id": client, "mutations": [put(1, "entries", &row, json!({"body_markdown": "x".repeat(5 * 1024 * 1024)}))]})
                .to_string(),
            true,
        ),
        (
            "exactly too many bytes",
            format!("{}{}", " ".repeat(4 * 1024 * 1024 + 1 - 2), "{}"),
            true,
        ),
        (
            "unknown table, from the database",
            json!({"client_id": client, "mutations": [good, put(2, "no_such_table", &uuid(), json!({}))]}).to_string(),
            true,
        ),
    ];
    for (what, body, same_message) in &raw_cases {
        let (r, t) = ask_both(&b, "POST", "/upload", &json_headers, Some(body));
        assert_same_error(what, &r, &t, *same_message);
    }
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "application/jsonx", ""] {
        let headers = vec![("authorization", format!("Bearer {token}")), ("content-type", content_type.to_owned())];
        let (r, t) = ask_both(&b, "POST", "/upload", &headers, Some("{}"));
        assert_same_error(&format!("content-type {content_type:?}"), &r, &t, true);
    }
    // Accepted content-type spellings, and an empty batch.
    for (n, content_type) in ["application/json; charset=utf-8", "Application/JSON"].iter().enumerate() {
        let headers = vec![("authorization", format!("Bearer {token}")), ("content-type", (*content_type).to_owned())];
        let body = json!({"client_id": uuid(), "mutations": []}).to_string();
        let (r, t) = ask_both(&b, "POST", "/upload", &headers, Some(&body));
        assert_eq!((r.status, t.status), (200, 200), "{n}: {} / {}", r.text, t.text);
        assert_eq!(t.body["results"], r.body["results"]);
        assert_eq!(t.body["last_op_id"], r.body["last_op_id"]);
    }
    // Nothing of it was written.
    let mut db = db(&b.info);
    let n: i64 =
        db.query_one("select count(*) from public.entries where user_id = $1::text::uuid", &[&uid]).unwrap().get(0);
    assert_eq!(n, 0);
}

#[test]
fn a_cursor_behind_a_purge_is_410_on_both() {
    let b = both();
    let (uid, token) = new_user(&b.info);
    let row = uuid();
    let up = upload_to(&b.ts, &token, &uuid(), json!([put(1, "entries", &row, json!({"title": "gone soon"}))]));
    assert_eq!(up.status, 200, "{}", up.text);
    settle(&b, &token, write_checkpoint(&up));
    let (r, _) = pull_both(&b, &token, "?tables=entries");
    let cursor = r.body["cursor"].as_str().unwrap().to_owned();
    let del = upload_to(&b.rust, &token, &uuid(), json!([delete(1, "entries", &row)]));
    assert_eq!(del.status, 200, "{}", del.text);
    settle(&b, &token, write_checkpoint(&del));
    let mut db = db(&b.info);
    // Purge this user's tombstones only (the function purges everyone's; age them first
    // so that other tests' fresh tombstones stay), as tests/sync.rs does.
    db.execute(
        "update public.entries set deleted_at = now() - interval '40 days'
          where user_id = $1::text::uuid and deleted_at is not null",
        &[&uid],
    )
    .unwrap();
    db.batch_execute("select * from edgesync.purge_tombstones('30 days')").unwrap();
    let auth = vec![("authorization", format!("Bearer {token}"))];
    let (r, t) = ask_both(&b, "GET", &format!("/sync?tables=entries&since={cursor}"), &auth, None);
    assert_eq!(r.status, 410, "{}", r.text);
    assert_same_error("resync", &r, &t, true);
}
