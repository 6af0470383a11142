//! The sync core against the real stack: `/sync` and `/upload` through wrangler dev,
//! PostgREST and Postgres. Every test uses its own fresh users, so tests can run in
//! parallel; the ones that change something global (the purge horizon, a registered
//! table) say so.

use edgesync_integration::*;
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;

fn statuses(answer: &Answer) -> Vec<String> {
    answer.body["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap().to_owned()).collect()
}

fn write_checkpoint(answer: &Answer) -> u64 {
    answer.body["write_checkpoint"].as_str().unwrap().parse().unwrap()
}

/// Rows of `user_id` in every synced seed table (live or not).
fn row_count(db: &mut postgres::Client, user_id: &str) -> i64 {
    db.query_one(
        "select (select count(*) from public.entries where user_id = $1::text::uuid)
              + (select count(*) from public.sync_entities where user_id = $1::text::uuid)
              + (select count(*) from public.sync_events where user_id = $1::text::uuid)
              + (select count(*) from edgesync.clients where user_id = $1::text::uuid)",
        &[&user_id],
    )
    .unwrap()
    .get(0)
}

// ---------------------------------------------------------------------------------
// Both directions (seed 003 §7.2)

#[test]
fn upload_reaches_postgres_and_postgrest_writes_reach_sync() {
    let info = stack();
    let (uid, token) = new_user(&info);
    let client = uuid();
    let row = uuid();

    // Client -> server: the row is in Postgres, readable through PostgREST as the user.
    let up = upload(
        &info,
        &token,
        &client,
        json!([put(1, "entries", &row, json!({"title": "from the phone", "tags": ["a"]}))]),
    );
    assert_eq!(up.status, 200, "{}", up.text);
    assert_eq!(statuses(&up), ["applied"]);
    assert_eq!(up.body["last_op_id"], 1);
    let rest = format!("{}/entries?id=eq.{row}&select=title,tags,user_id", info.postgrest_url);
    let got = call("GET", &rest, Some(&token), None);
    assert_eq!(got.body, json!([{"title": "from the phone", "tags": ["a"], "user_id": uid}]), "{}", got.text);

    let mut replica = Replica::new(&info, &token, Some("entries"));
    replica.catch_up(write_checkpoint(&up), 100);
    assert_eq!(replica.table("entries")[&row]["title"], "from the phone");

    // Server -> client: a PostgREST update shows up in the next /sync.
    let patched = call("PATCH", &rest, Some(&token), Some(&json!({"title": "edited on the web"})));
    assert!(patched.status < 300, "{}", patched.text);
    let mut db = db(&info);
    replica.catch_up(entry_txid(&mut db, &row) + 1, 100);
    assert_eq!(replica.table("entries")[&row]["title"], "edited on the web");

    // A PostgREST DELETE becomes a tombstone that the next /sync delivers.
    let deleted = call("DELETE", &rest, Some(&token), None);
    assert!(deleted.status < 300, "{}", deleted.text);
    let (live, dead) = server_state(&mut db, "entries", &uid);
    assert!(live.is_empty() && dead.contains(&row), "a hard delete must become a soft delete");
    let delivered = replica.deliveries;
    replica.catch_up(entry_txid(&mut db, &row) + 1, 100);
    assert_eq!(replica.deliveries, delivered + 1, "the tombstone was not delivered exactly once");
    assert!(replica.table("entries").is_empty());
}

#[test]
fn tombstones_carry_only_the_id_and_sync_never_sends_server_only_columns() {
    let info = stack();
    let (uid, token) = new_user(&info);
    let mut db = db(&info);
    let (keep, gone) = (uuid(), uuid());
    let up = upload(
        &info,
        &token,
        &uuid(),
        json!([
            put(1, "entries", &keep, json!({"title": "keep"})),
            put(2, "entries", &gone, json!({"title": "gone"})),
            delete(3, "entries", &gone),
            delete(4, "entries", &uuid()), // deleting a row that never existed succeeds
        ]),
    );
    assert_eq!(statuses(&up), ["applied"; 4]);
    let mut replica = Replica::new(&info, &token, None);
    replica.catch_up(write_checkpoint(&up), 1000);
    let rows = replica.table("entries");
    assert_eq!(rows.keys().collect::<Vec<_>>(), [&keep]);
    for hidden in ["embedding", "embedding_model", "embedding_hash", "_txid", "_writer"] {
        assert!(rows[&keep].get(hidden).is_none(), "{hidden} was sent: {}", rows[&keep]);
    }

    // Writing only server-only columns keeps the row's version: nothing is re-sent.
    let vector = format!("[{}]", vec!["0.5"; 1536].join(","));
    db.execute(
        "update public.entries set embedding = $1::text::extensions.vector, embedding_model = 'm', embedding_hash = 'h'
          where id = $2::text::uuid",
        &[&vector, &keep],
    )
    .unwrap();
    let marker = current_position(&mut db);
    let before = replica.deliveries;
    replica.catch_up(marker + 1, 1000);
    assert_eq!(replica.deliveries, before, "an embedding-only write re-sent the row");
    // ...while a client-visible change is sent, still without the embedding.
    db.execute("update public.entries set title = 'changed' where id = $1::text::uuid", &[&keep]).unwrap();
    let marker = current_position(&mut db);
    replica.catch_up(marker + 1, 1000);
    assert_eq!(replica.table("entries")[&keep]["title"], "changed");
    assert!(replica.table("entries")[&keep].get("embedding").is_none());
    let (live, _) = server_state(&mut db, "entries", &uid);
    assert_eq!(live[&keep], replica.table("entries")[&keep]);
}

#[test]
fn sqlite_text_values_are_normalised_to_column_types() {
    let info = stack();
    let (uid, token) = new_user(&info);
    let (entry, event) = (uuid(), uuid());
    let up = upload(
        &info,
        &token,
        &uuid(),
        json!([
            put(
                1,
                "entries",
                &entry,
                json!({
                    "title": "t", "tags": "[\"x\",\"y\"]", "frontmatter": "{\"legacyId\":7}", "start_at": 1700000000000u64,
                    "end_at": "2024-01-02T03:04:05Z", "user_id": uid
                })
            ),
            put(2, "sync_events", &event, json!({"title": "e", "all_day": 1, "properties": "[1,2]"})),
            patch(3, "sync_events", &event, json!({"all_day": "0"})),
        ]),
    );
    assert_eq!(statuses(&up), ["applied"; 3], "{}", up.text);
    let mut db = db(&info);
    let row = db
        .query_one(
            "select tags, frontmatter::text, start_at = to_timestamp(1700000000), end_at = '2024-01-02T03:04:05Z'
               from public.entries where id = $1::text::uuid",
            &[&entry],
        )
        .unwrap();
    assert_eq!(row.get::<_, Vec<String>>(0), ["x", "y"]);
    assert_eq!(row.get::<_, String>(1), r#"{"legacyId": 7}"#);
    assert!(row.get::<_, bool>(2) && row.get::<_, bool>(3));
    let row = db
        .query_one("select all_day, properties::text from public.sync_events where id = $1::text::uuid", &[&event])
        .unwrap();
    assert!(!row.get::<_, bool>(0));
    assert_eq!(row.get::<_, String>(1), "[1, 2]");
}

// ---------------------------------------------------------------------------------
// Commit order

/// T1 writes a row and stays open; T2 writes and commits; a pull runs; T1 commits.
/// The next pull must deliver T1's row. The same scenario read with the naive
/// `updated_at > since` query loses it, which shows the scenario can catch the bug.
#[test]
fn a_row_committed_late_by_an_older_transaction_is_not_missed() {
    let info = stack();
    let (uid, token) = new_user(&info);
    let mut replica = Replica::new(&info, &token, Some("entries"));
    replica.drain(100);
    let mut naive_since: String = db(&info).query_one("select now()::text", &[]).unwrap().get(0);

    let (r1, r2) = (uuid(), uuid());
    let mut t1_conn = db(&info);
    let mut t1 = t1_conn.transaction().unwrap();
    t1.execute(
        "insert into public.entries (id, user_id, title) values ($1::text::uuid, $2::text::uuid, 'R1 (T1, slow)')",
        &[&r1, &uid],
    )
    .unwrap();
    let r1_txid = current_position(&mut t1);
    let mut t2 = db(&info);
    t2.execute(
        "insert into public.entries (id, user_id, title) values ($1::text::uuid, $2::text::uuid, 'R2 (T2, quick)')",
        &[&r2, &uid],
    )
    .unwrap();
    let r2_txid = entry_txid(&mut t2, &r2);

    // Pulls while T1 is open, one row per page (so that a page that returned R2 would
    // end with a cursor past R1): R1 is not visible yet, and the cursor must not pass it.
    replica.drain(1);
    assert!(!replica.table("entries").contains_key(&r1));
    assert!(replica.checkpoint <= r1_txid, "the cursor moved past a transaction that is still open");
    // The naive reader, at the same moment, sees R2 and moves its cursor to R2's time.
    let naive = |db: &mut postgres::Client, since: &str| -> Vec<(String, String)> {
        db.query(
            "select id::text, updated_at::text from public.entries
              where user_id = $1::text::uuid and updated_at > $2::text::timestamptz order by updated_at, id",
            &[&uid, &since],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    };
    let mut reader = db(&info);
    let first = naive(&mut reader, &naive_since);
    assert_eq!(first.iter().map(|(id, _)| id).collect::<Vec<_>>(), [&r2]);
    naive_since = first.last().unwrap().1.clone();

    t1.commit().unwrap();
    assert!(r1_txid < r2_txid, "the scenario needs T1 to be the older transaction");

    replica.catch_up(r2_txid + 1, 1);
    let rows = replica.table("entries");
    assert!(rows.contains_key(&r1), "/sync lost the row committed late by the older transaction");
    assert!(rows.contains_key(&r2));
    // The control: the naive cursor has already passed R1's updated_at, so it never sees it.
    let second = naive(&mut reader, &naive_since);
    assert!(second.iter().all(|(id, _)| id != &r1), "the naive query was expected to miss R1");
}

/// A transaction takes its id in a write to a table no one syncs and stays open, as a
/// pg_cron job, a backfill or a migration would. Meanwhile other writes are pulled at
/// once: it holds no one's pull back (with the snapshot's xmin as the watermark, each
/// `catch_up` here would wait for it and time out). Only later does it write a synced
/// row, with its id now far below every cursor handed out meanwhile; while it is open
/// the cursor does not pass that row, and once it commits the row is delivered.
#[test]
fn an_unrelated_long_transaction_holds_no_pull_back_and_its_late_synced_row_is_not_missed() {
    let info = stack();
    let (uid, token) = new_user(&info);
    let client = uuid();
    let mut replica = Replica::new(&info, &token, Some("entries"));
    replica.drain(100);

    let mut long_conn = db(&info);
    let mut long = long_conn.transaction().unwrap();
    long.batch_execute("create temporary table unrelated (x int) on commit drop; insert into unrelated values (1)")
        .unwrap();
    let has_id: bool = long.query_one("select pg_current_xact_id_if_assigned() is not null", &[]).unwrap().get(0);
    assert!(has_id, "the scenario needs the long transaction to hold an id");

    let mut quick = Vec::new();
    for op in 1..=3 {
        let id = uuid();
        let up =
            upload(&info, &token, &client, json!([put(op, "entries", &id, json!({"title": format!("quick {op}")}))]));
        assert_eq!(statuses(&up), ["applied"], "{}", up.text);
        replica.catch_up(write_checkpoint(&up), 100);
        assert!(replica.table("entries").contains_key(&id), "quick write {op} not delivered");
        quick.push(id);
    }

    // Now, late, its synced write.
    let late = uuid();
    long.execute(
        "insert into public.entries (id, user_id, title) values ($1::text::uuid, $2::text::uuid, 'late, from the long transaction')",
        &[&late, &uid],
    )
    .unwrap();
    let late_position = current_position(&mut long);
    // A write committed after it is not pullable past it while it is open.
    let after = uuid();
    let up = upload(&info, &token, &client, json!([put(4, "entries", &after, json!({"title": "after"}))]));
    assert_eq!(statuses(&up), ["applied"], "{}", up.text);
    replica.drain(1);
    assert!(replica.checkpoint <= late_position, "the cursor passed a synced writer that is still open");
    assert!(!replica.table("entries").contains_key(&late));

    long.commit().unwrap();
    replica.catch_up(write_checkpoint(&up).max(late_position + 1), 1);
    let rows = replica.table("entries");
    assert!(rows.contains_key(&late), "/sync missed the row the long transaction wrote late");
    assert!(rows.contains_key(&after) && quick.iter().all(|id| rows.contains_key(id)));
}

/// A pull's page needs a snapshot taken after its watermark is read, which only READ
/// COMMITTED gives (PostgREST's and Supabase's default). A caller of the SQL in another
/// isolation level gets a clear refusal, not a page that could skip a row.
#[test]
fn a_pull_outside_read_committed_is_refused_with_a_clear_error() {
    let info = stack();
    let (uid, _) = new_user(&info);
    let mut pg = db(&info);
    for level in [postgres::IsolationLevel::RepeatableRead, postgres::IsolationLevel::Serializable] {
        let mut tx = pg.build_transaction().isolation_level(level).start().unwrap();
        tx.batch_execute(&format!(
            "set local role authenticated;
             select set_config('request.jwt.claims', '{{\"sub\": \"{uid}\", \"role\": \"authenticated\"}}', true);"
        ))
        .unwrap();
        let err = tx.query_one("select public.edgesync_pull()::text", &[]).unwrap_err();
        let err = err.as_db_error().unwrap_or_else(|| panic!("{level:?}: not a database error: {err}"));
        assert_eq!(err.code().code(), "0A000", "{level:?}: {}", err.message());
        assert!(err.message().contains("READ COMMITTED"), "{level:?}: {}", err.message());
    }
}

/// Several writers commit randomly interleaved transactions (inserts, updates, soft
/// deletes, embedding-only writes, transactions that sleep between statements) while
/// a reader pages through /sync with small pages. At the end the reader's replica
/// equals the database exactly.
#[test]
fn concurrent_writers_and_a_paging_reader_converge_exactly() {
    let info = stack();
    let users: Vec<(String, String)> = (0..2).map(|_| new_user(&info)).collect();
    let writers = 4;
    let txns_per_writer = 120;
    let seed: u64 = std::env::var("EDGESYNC_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("stress seed {seed} (replay with EDGESYNC_SEED={seed})");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));

    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let info = info.clone();
            let users: Vec<String> = users.iter().map(|u| u.0.clone()).collect();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(seed ^ (w as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let mut db = db(&info);
                let mut aborted = 0;
                for _ in 0..txns_per_writer {
                    let uid = users[rng.below(users.len() as u64) as usize].clone();
                    // Interleaved writers can deadlock; Postgres aborts one, which
                    // rolls back like any failed transaction.
                    if let Err(e) = random_transaction(&mut db, &mut rng, w, &uid) {
                        assert!(e.code().is_some(), "writer {w}: {e}");
                        aborted += 1;
                    }
                }
                assert!(aborted < txns_per_writer / 2, "writer {w}: {aborted} transactions aborted");
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
        })
        .collect();

    let mut replicas: Vec<Replica> =
        users.iter().map(|(_, token)| Replica::new(&info, token, Some("entries"))).collect();
    let mut pulls = 0;
    while done.load(std::sync::atomic::Ordering::SeqCst) < writers {
        for r in &mut replicas {
            r.pull(3);
            pulls += 1;
        }
    }
    for h in handles {
        h.join().expect("a writer failed");
    }
    let mut db = db(&info);
    let end = current_position(&mut db);
    let mut total = 0;
    for ((uid, _), replica) in users.iter().zip(&mut replicas) {
        replica.catch_up(end + 1, 3);
        let (live, dead) = server_state(&mut db, "entries", uid);
        let got = replica.table("entries");
        let missing: Vec<_> = live.keys().filter(|id| !got.contains_key(*id)).collect();
        let extra: Vec<_> = got.keys().filter(|id| !live.contains_key(*id)).collect();
        let stale: Vec<_> =
            live.iter().filter(|(id, row)| got.get(*id).is_some_and(|g| g != *row)).map(|(id, _)| id).collect();
        assert!(
            missing.is_empty() && extra.is_empty() && stale.is_empty(),
            "seed {seed}: missing {missing:?}, extra {extra:?}, stale {stale:?}"
        );
        assert!(dead.iter().all(|id| !got.contains_key(id)));
        total += live.len() + dead.len();
    }
    println!(
        "stress: {writers} writers x {txns_per_writer} txns, {total} rows, {pulls} pulls while writing: replicas exact"
    );
    assert!(total > 100, "the stress test wrote too little to mean anything");
}

fn random_transaction(db: &mut postgres::Client, rng: &mut Rng, w: usize, uid: &String) -> Result<(), postgres::Error> {
    let mut tx = db.transaction()?;
    for _ in 0..1 + rng.below(3) {
        let existing: Option<String> = tx
            .query_opt(
                "select id::text from public.entries where user_id = $1::text::uuid order by md5(id::text || $2::text) limit 1",
                &[uid, &rng.next().to_string()],
            )?
            .map(|r| r.get(0));
        match (rng.below(10), existing) {
            (0..=3, _) | (_, None) => {
                tx.execute(
                    "insert into public.entries (id, user_id, title) values ($1::text::uuid, $2::text::uuid, $3)",
                    &[&uuid(), uid, &format!("w{w} {}", rng.next())],
                )?;
            }
            (4..=6, Some(id)) => {
                tx.execute(
                    "update public.entries set title = $2, deleted_at = null where id = $1::text::uuid",
                    &[&id, &format!("w{w} {}", rng.next())],
                )?;
            }
            (7, Some(id)) => {
                tx.execute("delete from public.entries where id = $1::text::uuid", &[&id])?;
            }
            (_, Some(id)) => {
                // Server-only: must not make the row travel again.
                tx.execute(
                    "update public.entries set embedding_model = $2 where id = $1::text::uuid",
                    &[&id, &rng.next().to_string()],
                )?;
            }
        }
    }
    // Every transaction stays open a while after writing, so commits land out of
    // order while the reader, kept near the head, pages past them.
    std::thread::sleep(Duration::from_millis(5 + rng.below(30)));
    tx.commit()
}

/// A small deterministic generator (xorshift), so a failing seed can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn pages_respect_the_limit_and_a_full_pull_is_exact() {
    let info = stack();
    let (uid, token) = new_user(&info);
    let mutations: Vec<Value> = (1..=25)
        .map(|i| {
            put(
                i,
                if i % 2 == 0 { "entries" } else { "sync_entities" },
                &uuid(),
                if i % 2 == 0 { json!({"title": i}) } else { json!({"type": "person", "key": format!("k{i}")}) },
            )
        })
        .collect();
    let up = upload(&info, &token, &uuid(), Value::Array(mutations));
    assert_eq!(up.status, 200, "{}", up.text);
    let mut replica = Replica::new(&info, &token, Some("entries,sync_entities"));
    let mut pages = 0;
    loop {
        let page = replica.pull(4);
        pages += 1;
        let n: usize =
            page.body["changes"].as_object().unwrap().values().map(|c| c["upserted"].as_array().unwrap().len()).sum();
        assert!(n <= 4);
        if !page.body["has_more"].as_bool().unwrap() && replica.checkpoint >= write_checkpoint(&up) {
            break;
        }
        assert!(pages < 50, "paging does not end");
    }
    assert!(pages >= 7, "25 rows in pages of 4 took {pages} pages");
    let mut db = db(&info);
    assert_eq!(replica.table("entries"), server_state(&mut db, "entries", &uid).0);
    assert_eq!(replica.table("sync_entities"), server_state(&mut db, "sync_entities", &uid).0);
    assert_eq!(replica.deliveries, 25, "a row was delivered twice");
}

/// Pages are bounded in bytes as well as rows: ten 1 MiB rows do not come in one page.
#[test]
fn a_page_is_bounded_in_bytes() {
    let info = stack();
    let (uid, token) = new_user(&info);
    let mut db = db(&info);
    let rows = db
        .query(
            "insert into public.entries (user_id, body_markdown)
             select $1::text::uuid, repeat('x', 1024 * 1024) from generate_series(1, 10) returning _txid::text",
            &[&uid],
        )
        .unwrap();
    let txid: u64 = rows[0].get::<_, String>(0).parse().unwrap();
    let mut replica = Replica::new(&info, &token, Some("entries"));
    // The first page from scratch, once the insert is below the watermark.
    eventually("the insert to pass the watermark", Duration::from_secs(30), || {
        replica = Replica::new(&info, &token, Some("entries"));
        let first = replica.pull(1000);
        if replica.checkpoint <= txid && first.body["has_more"] == false {
            return false;
        }
        let n = first.body["changes"]["entries"]["upserted"].as_array().unwrap().len();
        assert!(first.body["has_more"] == true && (1..10).contains(&n), "{n} rows of 1 MiB in one page");
        assert!(first.text.len() < 6 * 1024 * 1024, "a page of {} bytes", first.text.len());
        true
    });
    let pages = 1 + replica.drain(1000);
    assert_eq!(replica.table("entries").len(), 10);
    assert!(pages >= 3, "10 MiB came in {pages} pages");
}

// ---------------------------------------------------------------------------------
// Exactly once

#[test]
fn the_same_batch_three_times_has_one_effect() {
    let info = stack();
    let (uid, token) = new_user(&info);
    let client = uuid();
    let (a, b) = (uuid(), uuid());
    let batch = json!([
        put(1, "entries", &a, json!({"title": "a"})),
        put(2, "entries", &b, json!({"title": "b"})),
        patch(3, "entries", &a, json!({"title": "a2"})),
        delete(4, "entries", &b),
    ]);
    let first = upload(&info, &token, &client, batch.clone());
    assert_eq!(statuses(&first), ["applied"; 4], "{}", first.text);
    let mut db = db(&info);
    let versions = |db: &mut postgres::Client| -> Vec<String> {
        db.query(
            "select id::text || ':' || _txid::text || ':' || coalesce(title, '') || ':' || (deleted_at is null)::text
                    from public.entries where user_id = $1::text::uuid order by id",
            &[&uid],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    let after_first = versions(&mut db);
    for _ in 0..2 {
        let again = upload(&info, &token, &client, batch.clone());
        assert_eq!(statuses(&again), ["duplicate"; 4], "{}", again.text);
        assert_eq!(again.body["last_op_id"], 4);
    }
    assert_eq!(versions(&mut db), after_first, "a retry changed the rows");
    // A replay of old op_ids mixed with a new one applies only the new one.
    let mixed = upload(
        &info,
        &token,
        &client,
        json!([patch(3, "entries", &a, json!({"title": "replayed"})), patch(5, "entries", &a, json!({"title": "a3"}))]),
    );
    assert_eq!(statuses(&mixed), ["duplicate", "applied"]);
    let title: String =
        db.query_one("select title from public.entries where id = $1::text::uuid", &[&a]).unwrap().get(0);
    assert_eq!(title, "a3");
    assert_eq!(last_op_id(&mut db, &client), 5);
}

/// The connection drops halfway through sending the body: nothing is written, and the
/// retry applies the batch once.
#[test]
fn a_batch_cut_off_midway_then_retried_applies_once() {
    let info = stack();
    let (uid, token) = new_user(&info);
    let client = uuid();
    let rows: Vec<String> = (0..50).map(|_| uuid()).collect();
    let batch = json!({"client_id": client, "mutations": rows.iter().enumerate()
        .map(|(i, id)| put(i as u64 + 1, "entries", id, json!({"title": "x".repeat(200)}))).collect::<Vec<_>>()});
    let body = serde_json::to_vec(&batch).unwrap();
    let addr = info.functions_url.trim_start_matches("http://").to_owned();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(conn, "POST /upload HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len()).unwrap();
    conn.write_all(&body[..body.len() / 2]).unwrap();
    conn.flush().unwrap();
    conn.shutdown(std::net::Shutdown::Both).unwrap();
    drop(conn);

    let mut db = db(&info);
    // Whatever the server made of the half body, it must not have written anything.
    // Prove that by a later request on the same path having run to completion first.
    let probe = upload(&info, &token, &uuid(), json!([]));
    assert_eq!(probe.status, 200, "{}", probe.text);
    assert_eq!(row_count(&mut db, &uid), 1, "only the probe's client row may exist");

    let retry = upload(&info, &token, &client, batch["mutations"].clone());
    assert_eq!(statuses(&retry), vec!["applied"; 50]);
    let again = upload(&info, &token, &client, batch["mutations"].clone());
    assert_eq!(statuses(&again), vec!["duplicate"; 50]);
    let n: i64 =
        db.query_one("select count(*) from public.entries where user_id = $1::text::uuid", &[&uid]).unwrap().get(0);
    assert_eq!(n, 50);
}

#[test]
fn the_write_checkpoint_is_reached_by_a_following_sync() {
    let info = stack();
    let (_, token) = new_user(&info);
    let row = uuid();
    let mut replica = Replica::new(&info, &token, None);
    replica.drain(100);
    let up = upload(&info, &token, &uuid(), json!([put(1, "sync_entities", &row, json!({"type": "t", "key": "k"}))]));
    let wc = write_checkpoint(&up);
    assert!(replica.checkpoint < wc, "a checkpoint from before the upload already counts as reaching it");
    replica.catch_up(wc, 100);
    assert!(
        replica.table("sync_entities").contains_key(&row),
        "checkpoint reached but the write is not in the replica"
    );
}

// ---------------------------------------------------------------------------------
// Conflicts

#[test]
fn conflicts_follow_the_table_policy_and_are_reported() {
    let info = stack();
    let (_, token) = new_user(&info);
    let mut db = db(&info);
    // A table of the user's own, made syncable with one call, deciding server-wins.
    // (Unregistered at the end but not dropped: a drop could race with other tests'
    // pulls that already read the registry.)
    let table = "test_notes";
    db.batch_execute(
        "create table if not exists public.test_notes (id uuid primary key, user_id uuid not null, body text);
         select edgesync.enable_sync('public.test_notes', conflict_policy => 'server_wins');",
    )
    .unwrap();
    let (phone, laptop) = (uuid(), uuid());
    let (note, entry) = (uuid(), uuid());
    let seed = upload(
        &info,
        &token,
        &phone,
        json!([put(1, table, &note, json!({"body": "v1"})), put(2, "entries", &entry, json!({"title": "v1"}))]),
    );
    assert_eq!(statuses(&seed), ["applied", "applied"], "{}", seed.text);
    let mut replica = Replica::new(&info, &token, None);
    replica.catch_up(write_checkpoint(&seed), 1000);
    let base = replica.cursor.clone().unwrap();

    // The laptop edits both rows; then the phone edits them based on its older view.
    let other = upload(
        &info,
        &token,
        &laptop,
        json!([
            patch(1, table, &note, json!({"body": "laptop"})),
            patch(2, "entries", &entry, json!({"title": "laptop"}))
        ]),
    );
    assert_eq!(statuses(&other), ["applied", "applied"]);
    let mut stale =
        vec![patch(3, table, &note, json!({"body": "phone"})), patch(4, "entries", &entry, json!({"title": "phone"}))];
    for m in &mut stale {
        m["base_cursor"] = json!(base);
    }
    let answer = upload(&info, &token, &phone, Value::Array(stale));
    let results = answer.body["results"].as_array().unwrap();
    // Server wins: not applied, the server's row comes back.
    assert_eq!(results[0]["status"], "conflict", "{}", answer.text);
    assert_eq!(results[0]["server_row"]["body"], "laptop");
    let body: String =
        db.query_one(&format!("select body from public.{table} where id = $1::text::uuid"), &[&note]).unwrap().get(0);
    assert_eq!(body, "laptop");
    // Last write wins (the default): applied, and the overwritten row is reported.
    assert_eq!(results[1]["status"], "applied");
    assert_eq!(results[1]["conflict"], true);
    assert_eq!(results[1]["server_row"]["title"], "laptop");
    let title: String =
        db.query_one("select title from public.entries where id = $1::text::uuid", &[&entry]).unwrap().get(0);
    assert_eq!(title, "phone");

    // A client's own later write on an old base is not a conflict with itself.
    let own = upload(
        &info,
        &token,
        &phone,
        json!([{"op_id": 5, "op": "PATCH", "type": "entries", "id": entry,
                                                     "data": {"title": "phone again"}, "base_cursor": base}]),
    );
    assert_eq!(own.body["results"][0], json!({"op_id": 5, "status": "applied"}), "{}", own.text);

    // Unregistered again, the table is unknown to /sync and /upload.
    db.batch_execute("select edgesync.disable_sync('public.test_notes')").unwrap();
    let url = format!("{}/sync?tables={table}", info.functions_url);
    call("GET", &url, Some(&token), None).assert_error(400, "unknown_table");
    let after = upload(&info, &token, &phone, json!([patch(6, table, &note, json!({"body": "late"}))]));
    assert_eq!(after.assert_error(400, "invalid_mutations")["details"]["errors"][0]["code"], "unknown_table");
}

// ---------------------------------------------------------------------------------
// Isolation

#[test]
fn another_user_can_neither_read_nor_write_my_rows() {
    let info = stack();
    let (a_id, a) = new_user(&info);
    let (_, b) = new_user(&info);
    let a_client = uuid();
    let row = uuid();
    let up = upload(&info, &a, &a_client, json!([put(1, "entries", &row, json!({"title": "A's secret"}))]));
    assert_eq!(statuses(&up), ["applied"]);
    let mut db = db(&info);
    let a_before = server_state(&mut db, "entries", &a_id);

    // /sync as B: nothing of A's.
    let mut b_view = Replica::new(&info, &b, None);
    b_view.catch_up(write_checkpoint(&up), 1000);
    assert!(b_view.rows.is_empty(), "B received {:?}", b_view.rows.keys().collect::<Vec<_>>());

    // /upload as B: overwrite by id is refused, and nothing of the batch is written.
    let b_client = uuid();
    let over = upload(
        &info,
        &b,
        &b_client,
        json!([
            put(1, "entries", &uuid(), json!({"title": "B's own"})),
            put(2, "entries", &row, json!({"title": "B was here"}))
        ]),
    );
    over.assert_error(403, "forbidden_row");
    // Update and delete of A's row do nothing to it (the row does not exist for B).
    let other = upload(
        &info,
        &b,
        &b_client,
        json!([patch(1, "entries", &row, json!({"title": "B was here"})), delete(2, "entries", &row)]),
    );
    assert_eq!(other.status, 200, "{}", other.text);
    assert_eq!(other.body["results"][0]["status"], "conflict");
    assert_eq!(other.body["results"][0]["server_row"], Value::Null);
    // B cannot use A's client_id (and so cannot touch A's op_id ledger).
    upload(&info, &b, &a_client, json!([put(9, "entries", &uuid(), json!({}))])).assert_error(403, "client_id_taken");
    // Nor through PostgREST directly.
    let rest = format!("{}/entries?id=eq.{row}", info.postgrest_url);
    assert_eq!(call("GET", &rest, Some(&b), None).body, json!([]));
    call("PATCH", &rest, Some(&b), Some(&json!({"title": "B was here"})));
    call("DELETE", &rest, Some(&b), None);
    let direct = call("POST", &format!("{}/rpc/edgesync_pull", info.postgrest_url), Some(&b), Some(&json!({})));
    assert!(!direct.text.contains(&row), "{}", direct.text);

    assert_eq!(server_state(&mut db, "entries", &a_id), a_before, "B changed A's rows");
    assert_eq!(last_op_id(&mut db, &a_client), 1);
}

// ---------------------------------------------------------------------------------
// Bad input: the documented status and JSON error, and nothing written.

#[test]
fn bad_uploads_are_refused_whole_with_precise_errors() {
    let info = stack();
    let (uid, token) = new_user(&info);
    let mut db = db(&info);
    let url = format!("{}/upload", info.functions_url);
    let client = uuid();
    let good = put(1, "entries", &uuid(), json!({"title": "fine"}));

    let raw = |body: &str, content_type: &str| -> Answer {
        let headers = [("authorization", format!("Bearer {token}")), ("content-type", content_type.to_owned())];
        call_raw("POST", &url, &headers, body)
    };
    raw("{\"client_id\": ", "application/json").assert_error(400, "invalid_json");
    raw("{}", "text/plain").assert_error(415, "unsupported_media_type");

    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            json!([good, {"op_id": "2", "op": "PUT", "type": "entries", "id": uuid()}]),
            400,
            "invalid_mutations",
            "invalid_op_id",
        ),
        (
            json!([good, put(2, "entries", &uuid(), json!({"start_at": "not a time"}))]),
            400,
            "invalid_value",
            "invalid_value",
        ),
        (
            json!([good, put(2, "entries", &uuid(), json!({"tags": {"not": "an array"}}))]),
            400,
            "invalid_value",
            "invalid_value",
        ),
        (json!([good, put(2, "no_such_table", &uuid(), json!({}))]), 400, "invalid_mutations", "unknown_table"),
        (
            json!([good, put(2, "entries", &uuid(), json!({"colour": "red"}))]),
            400,
            "invalid_mutations",
            "unknown_column",
        ),
        (
            json!([good, put(2, "entries", &uuid(), json!({"embedding": "[1]"}))]),
            400,
            "invalid_mutations",
            "read_only_column",
        ),
        (
            json!([good, put(2, "entries", &uuid(), json!({"user_id": uuid()}))]),
            403,
            "user_id_mismatch",
            "user_id_mismatch",
        ),
        (json!([good, put(2, "sync_entities", &uuid(), json!({"type": "t"}))]), 400, "invalid_value", "invalid_value"),
    ];
    for (mutations, status, code, inner) in cases {
        let answer = upload(&info, &token, &client, mutations.clone());
        let err = answer.assert_error(status, code);
        assert_eq!(err["details"]["errors"][0]["code"], inner, "{}", answer.text);
        // The op_id is echoed as sent (here a number, or the string of the bad one).
        let op_id = &err["details"]["errors"][0]["op_id"];
        assert!(*op_id == json!(2) || *op_id == json!("2"), "{}", answer.text);
    }
    let unknown = upload(&info, &token, &client, json!([put(1, "entries", &uuid(), json!({"colour": "red"}))]));
    assert!(
        unknown.body["error"]["details"]["errors"][0]["message"].as_str().unwrap().contains("colour"),
        "{}",
        unknown.text
    );
    // Natural keys: a second entity with the same (type, key) is a 409.
    let key = json!({"type": "person", "key": "same"});
    assert_eq!(upload(&info, &token, &uuid(), json!([put(1, "sync_entities", &uuid(), key.clone())])).status, 200);
    let dup = upload(&info, &token, &client, json!([put(1, "sync_entities", &uuid(), key)]));
    dup.assert_error(409, "unique_violation");
    assert_eq!(row_count(&mut db, &uid), 2, "only the first entity and its client may exist");

    // Too many mutations, and too many bytes: 413 before any database work.
    let many: Vec<Value> = (1..=1001).map(|i| delete(i, "entries", &uuid())).collect();
    upload(&info, &token, &client, Value::Array(many)).assert_error(413, "too_many_mutations");
    let huge = vec![put(1, "entries", &uuid(), json!({"body_markdown": "x".repeat(5 * 1024 * 1024)}))];
    upload(&info, &token, &client, Value::Array(huge)).assert_error(413, "body_too_large");

    assert_eq!(row_count(&mut db, &uid), 2, "a rejected batch wrote something");
    let ledger: i64 = db
        .query_one("select count(*) from edgesync.clients where client_id = $1::text::uuid", &[&client])
        .unwrap()
        .get(0);
    assert_eq!(ledger, 0, "a rejected batch claimed the client_id");
}

#[test]
fn bad_pulls_and_bad_tokens_get_the_documented_errors() {
    let info = stack();
    let (uid, token) = new_user(&info);
    let sync =
        |query: &str, token: Option<&str>| call("GET", &format!("{}/sync{query}", info.functions_url), token, None);
    sync("?since=not-a-cursor", Some(&token)).assert_error(400, "invalid_cursor");
    sync("?limit=0", Some(&token)).assert_error(400, "invalid_parameter");
    sync("?limit=100000", Some(&token)).assert_error(400, "invalid_parameter");
    sync("?bogus=1", Some(&token)).assert_error(400, "invalid_parameter");
    let err = sync("?tables=entries,nope", Some(&token)).assert_error(400, "unknown_table").clone();
    assert_eq!(err["details"]["unknown"], json!(["nope"]));
    assert!(err["details"]["available"].as_array().unwrap().contains(&json!("entries")));
    // A cursor for one table set is not accepted for another.
    let first = sync("?tables=entries", Some(&token));
    let cursor = first.body["cursor"].as_str().unwrap();
    sync(&format!("?tables=entries,sync_events&since={cursor}"), Some(&token)).assert_error(400, "cursor_mismatch");
    assert_eq!(sync(&format!("?tables=entries&since={cursor}"), Some(&token)).status, 200);
    call("POST", &format!("{}/sync", info.functions_url), Some(&token), None).assert_error(405, "method_not_allowed");

    // Tokens: missing, expired, forged; and the service role is not a user.
    let expired = keys::sign_hs256(&info.jwt_secret, &keys::user_claims(&uid, &info.jwt_issuer, -120)).unwrap();
    let forged = keys::sign_hs256(&"f".repeat(40), &keys::user_claims(&uid, &info.jwt_issuer, 3600)).unwrap();
    let service = keys::sign_hs256(&info.jwt_secret, &keys::api_key_claims("service_role")).unwrap();
    let mut db = db(&info);
    for (t, status, code) in [
        (None, 401, "missing_token"),
        (Some(&expired), 401, "invalid_token"),
        (Some(&forged), 401, "invalid_token"),
        (Some(&service), 403, "user_required"),
    ] {
        sync("", t.map(String::as_str)).assert_error(status, code);
        let answer = call(
            "POST",
            &format!("{}/upload", info.functions_url),
            t.map(String::as_str),
            Some(&json!({"client_id": uuid(), "mutations": [put(1, "entries", &uuid(), json!({"user_id": uid}))]})),
        );
        answer.assert_error(status, code);
    }
    assert_eq!(row_count(&mut db, &uid), 0);
}

/// Tombstones older than the retention window are purged; a cursor from before the
/// purge gets 410 resync_required instead of silently missing the deletes.
#[test]
fn a_cursor_older_than_the_purge_horizon_must_resync() {
    let info = stack();
    let (uid, token) = new_user(&info);
    let row = uuid();
    let keep = uuid();
    let keep2 = uuid();
    let up = upload(
        &info,
        &token,
        &uuid(),
        json!([
            put(1, "entries", &keep, json!({})),
            put(2, "entries", &row, json!({})),
            put(3, "entries", &keep2, json!({}))
        ]),
    );
    let mut replica = Replica::new(&info, &token, None);
    replica.catch_up(write_checkpoint(&up), 100);
    let old_cursor = replica.cursor.clone().unwrap();
    let del = upload(&info, &token, &uuid(), json!([delete(1, "entries", &row)]));
    assert_eq!(statuses(&del), ["applied"]);

    let mut db = db(&info);
    // Purge this user's tombstones only (the function purges everyone's; age them first
    // so that other tests' fresh tombstones stay).
    db.execute("update public.entries set deleted_at = now() - interval '40 days' where user_id = $1::text::uuid and deleted_at is not null", &[&uid]).unwrap();
    let purged: i64 =
        db.query_one("select sum(purged)::bigint from edgesync.purge_tombstones('30 days')", &[]).unwrap().get(0);
    assert!(purged >= 1);
    let gone: i64 =
        db.query_one("select count(*) from public.entries where id = $1::text::uuid", &[&row]).unwrap().get(0);
    assert_eq!(gone, 0);

    let stale = call("GET", &format!("{}/sync?since={old_cursor}", info.functions_url), Some(&token), None);
    stale.assert_error(410, "resync_required");
    // Starting over works, page by page through positions below the horizon (the
    // rebuild began after the purge), and no longer shows the purged row. A scan's
    // origin is its first watermark, so a synced writer that took its position before
    // the purge and is still running (another test's) would date the rebuild before the
    // purge: wait until the watermark has passed the purge.
    eventually("synced writers older than the purge to end", std::time::Duration::from_secs(30), || {
        db.query_one(
            "select edgesync.watermark() > h.purged_xid from edgesync.purge_horizons h
              where h.user_id = $1::text::uuid",
            &[&uid],
        )
        .unwrap()
        .get(0)
    });
    let mut fresh = Replica::new(&info, &token, None);
    assert!(fresh.drain(1) >= 2);
    let rebuilt = fresh.table("entries");
    assert!(rebuilt.contains_key(&keep) && rebuilt.contains_key(&keep2) && !rebuilt.contains_key(&row));
    // The old cursor still must resync, and so does a scan that began before the purge.
    let again = call("GET", &format!("{}/sync?since={old_cursor}", info.functions_url), Some(&token), None);
    again.assert_error(410, "resync_required");
    // Another user's cursors are unaffected by this user's purge.
    let (_, other) = new_user(&info);
    let mut theirs = Replica::new(&info, &other, None);
    theirs.drain(100);
    assert_eq!(theirs.pull(100).status, 200);
}
