//! The PowerSync op log (migration 0013) in SQL, against the real database: which
//! writes record ops, the fresh-block rule under a real row-lock race, the checkpoint
//! and page RPCs as the caller, and a randomized check that a client running
//! PowerSync's own bucket algorithm (the core's `insert_bucket_operations` and
//! `validate_checkpoint`) never sees a checksum mismatch and ends with the server's rows.

use edgesync_integration::faults::splitmix;
use edgesync_integration::*;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Run `f` in a transaction as `uid` (role `authenticated`, as PostgREST would).
fn as_user<T>(c: &mut postgres::Client, uid: &str, f: impl FnOnce(&mut postgres::Transaction) -> T) -> T {
    let mut t = c.transaction().unwrap();
    t.batch_execute(&format!(
        "set local role authenticated;
         select set_config('request.jwt.claims', '{{\"sub\": \"{uid}\", \"role\": \"authenticated\"}}', true);"
    ))
    .unwrap();
    let out = f(&mut t);
    t.commit().unwrap();
    out
}

/// The ops of one row of `entries` in `user`'s bucket: (op id, kind), in op order.
fn ops_of(db: &mut postgres::Client, user: &str, row: &str) -> Vec<(i64, String)> {
    db.query(
        "select op_id, kind::text from edgesync.ps_ops
          where user_id = $1::text::uuid and tbl = 'entries' and row_id = $2::text::uuid order by op_id",
        &[&user, &row],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn insert_entry(db: &mut impl postgres::GenericClient, user: &str, title: &str) -> String {
    let id = uuid();
    db.execute(
        "insert into public.entries (id, user_id, title, body_markdown, tags)
         values ($1::text::uuid, $2::text::uuid, $3, '', '{}')",
        &[&id, &user, &title],
    )
    .unwrap();
    id
}

fn set_title(db: &mut impl postgres::GenericClient, id: &str, title: &str) {
    db.execute("update public.entries set title = $2 where id = $1::text::uuid", &[&id, &title]).unwrap();
}

#[test]
fn op_checksums_match_the_designs_test_vector() {
    let info = stack();
    let mut db = db(&info);
    let cs: i64 = db
        .query_one(
            "select edgesync.ps_checksum('entries', '00000000-0000-0000-0000-000000000001', 281474976710657)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(cs, 1_770_435_560);
}

#[test]
fn every_change_clients_see_records_one_op_and_nothing_else_does() {
    let info = stack();
    let mut db = db(&info);
    let (u, _) = new_user(&info);
    let (v, _) = new_user(&info);
    let id = insert_entry(&mut db, &u, "first");
    assert_eq!(ops_of(&mut db, &u, &id).iter().map(|o| o.1.as_str()).collect::<Vec<_>>(), ["P"]);

    set_title(&mut db, &id, "second");
    assert_eq!(ops_of(&mut db, &u, &id).len(), 2, "a visible change is a new op");
    set_title(&mut db, &id, "second");
    assert_eq!(ops_of(&mut db, &u, &id).len(), 2, "a write that changes nothing records nothing");
    db.execute("update public.entries set embedding_model = 'm' where id = $1::text::uuid", &[&id]).unwrap();
    assert_eq!(ops_of(&mut db, &u, &id).len(), 2, "a server-only column records nothing");

    // Two writes of the row in one transaction: one op, as the row ends.
    let mut t = db.transaction().unwrap();
    set_title(&mut t, &id, "third");
    set_title(&mut t, &id, "fourth");
    t.execute("delete from public.entries where id = $1::text::uuid", &[&id]).unwrap();
    t.commit().unwrap();
    let ops = ops_of(&mut db, &u, &id);
    assert_eq!(ops.iter().map(|o| o.1.as_str()).collect::<Vec<_>>(), ["P", "P", "R"], "{ops:?}");

    db.execute("update public.entries set deleted_at = null where id = $1::text::uuid", &[&id]).unwrap();
    assert_eq!(ops_of(&mut db, &u, &id).last().unwrap().1, "P", "a row brought back is a PUT");

    // A row given to another user leaves one bucket (REMOVE) and enters the other.
    db.execute("update public.entries set user_id = $2::text::uuid where id = $1::text::uuid", &[&id, &v]).unwrap();
    assert_eq!(ops_of(&mut db, &u, &id).last().unwrap().1, "R");
    assert_eq!(ops_of(&mut db, &v, &id).iter().map(|o| o.1.as_str()).collect::<Vec<_>>(), ["P"]);

    // Op ids increase with each change, and each checksum is the design's function of it.
    let bad: i64 = db
        .query_one(
            "select count(*) from edgesync.ps_ops where row_id = $1::text::uuid
               and checksum <> edgesync.ps_checksum(tbl, row_id, op_id)",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(bad, 0);
}

/// B takes its position first, then waits for A's row lock; A commits a later
/// position's write of the row first. B's op must still sort after A's.
#[test]
fn a_write_that_waited_for_a_row_lock_sorts_after_the_write_it_waited_for() {
    let _guard = exclusive();
    let info = stack();
    let (u, _) = new_user(&info);
    let mut setup = db(&info);
    let row = insert_entry(&mut setup, &u, "contended");
    let mut b = db(&info);
    b.batch_execute("begin").unwrap();
    insert_entry(&mut b, &u, "b takes its position first");
    let b_pos = current_position(&mut b);
    let mut a = db(&info);
    let mut ta = a.transaction().unwrap();
    set_title(&mut ta, &row, "a");
    assert!(current_position(&mut ta) > b_pos);
    let b_pid: i32 = b.query_one("select pg_backend_pid()", &[]).unwrap().get(0);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let row2 = row.clone();
    let waiter = std::thread::spawn(move || {
        b.execute("update public.entries set deleted_at = now() where id = $1::text::uuid", &[&row2]).unwrap();
        b.batch_execute("commit").unwrap();
        done_tx.send(()).unwrap();
    });
    let mut watch = db(&info);
    eventually("B to wait for A's row lock", Duration::from_secs(10), || {
        watch
            .query_one("select wait_event_type = 'Lock' from pg_stat_activity where pid = $1", &[&b_pid])
            .map(|r| r.get::<_, Option<bool>>(0) == Some(true))
            .unwrap_or(false)
    });
    ta.commit().unwrap();
    done_rx.recv_timeout(Duration::from_secs(10)).expect("B's update to finish once A committed");
    waiter.join().unwrap();
    let ops = ops_of(&mut watch, &u, &row);
    assert_eq!(ops.iter().map(|o| o.1.as_str()).collect::<Vec<_>>(), ["P", "P", "R"], "{ops:?}");
    assert!((ops[2].0 >> 24) as u64 > b_pos, "B's REMOVE took a fresh block above its position: {ops:?}");
}

/// PowerSync's client side of one user's buckets, line for line as the core applies
/// them (powersync-sqlite-core `sync/operations.rs`, `checkpoint.rs`).
#[derive(Default)]
struct PsClient {
    buckets: BTreeMap<String, Bucket>,
    floor: u64,
    mismatches: usize,
    completed: usize,
    /// Ops received, of every kind, and CLEARs among them.
    received: usize,
    clears: usize,
}

#[derive(Default, Debug)]
struct Bucket {
    add: u32,
    op: u32,
    last: u64,
    /// object id → (op id, checksum, data): the PUTs in `ps_oplog`.
    rows: HashMap<String, (u64, u32, String)>,
}

struct Checkpoint {
    w: u64,
    buckets: Vec<(String, u32, u64)>,
}

fn checkpoint(db: &mut postgres::Client, uid: &str, floor: u64) -> Checkpoint {
    let text: String = as_user(db, uid, |t| {
        t.query_one("select public.edgesync_ps_checkpoint($1)::text", &[&(floor as i64)]).unwrap().get(0)
    });
    let v: Value = serde_json::from_str(&text).unwrap();
    let n = |v: &Value| -> u64 { v.as_str().map_or_else(|| v.as_u64().unwrap(), |s| s.parse().unwrap()) };
    Checkpoint {
        w: n(&v["w"]),
        buckets: v["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["tbl"].as_str().unwrap().to_owned(), n(&b["checksum"]) as u32, n(&b["last"])))
            .collect(),
    }
}

/// What a sync attempt ended with.
#[derive(Debug, PartialEq)]
enum Outcome {
    Complete,
    /// A page stopped before an op the watermark has not passed.
    Needs,
    /// The client "disconnected" after this many pages.
    Cut,
}

impl PsClient {
    fn apply(&mut self, tbl: &str, ops: &[Value]) {
        self.received += ops.len();
        let b = self.buckets.entry(tbl.to_owned()).or_default();
        for o in ops {
            let id: u64 = o["op_id"].as_str().unwrap().parse().unwrap();
            let cs = o["checksum"].as_u64().unwrap() as u32;
            match o["op"].as_str().unwrap() {
                op @ ("PUT" | "REMOVE") => {
                    let key = o["object_id"].as_str().unwrap().to_owned();
                    if let Some((_, old, _)) = b.rows.remove(&key) {
                        b.op = b.op.wrapping_sub(old);
                        b.add = b.add.wrapping_add(old);
                    }
                    if op == "PUT" {
                        b.rows.insert(key, (id, cs, o["data"].as_str().unwrap().to_owned()));
                        b.op = b.op.wrapping_add(cs);
                    } else {
                        b.add = b.add.wrapping_add(cs);
                    }
                }
                "MOVE" => b.add = b.add.wrapping_add(cs),
                "CLEAR" => {
                    self.clears += 1;
                    b.rows.clear();
                    b.add = cs;
                    b.op = 0;
                }
                other => panic!("unknown op {other}"),
            }
            assert!(id > b.last, "ops arrive in increasing op id: {id} after {}", b.last);
            b.last = id;
        }
    }

    /// One sync: a checkpoint, its pages (at most `max_pages`), `checkpoint_complete`.
    fn sync(&mut self, db: &mut postgres::Client, uid: &str, lim: i32, max_pages: usize) -> Outcome {
        let cp = checkpoint(db, uid, self.floor);
        assert!(cp.w >= self.floor, "a checkpoint never goes below the floor");
        self.floor = cp.w;
        let h = (cp.w << 24) - 1;
        let mut needs = false;
        // First every bucket with ops the client lacks, then those a page left more of.
        let mut todo: Vec<String> = cp
            .buckets
            .iter()
            .filter(|(tbl, _, last)| *last > self.buckets.get(tbl).map_or(0, |b| b.last))
            .map(|(tbl, _, _)| tbl.clone())
            .collect();
        for _ in 0..max_pages {
            if todo.is_empty() {
                if needs {
                    return Outcome::Needs;
                }
                // Every bucket has reached its last op: complete the checkpoint.
                for (tbl, checksum, _) in &cp.buckets {
                    let b = self.buckets.entry(tbl.clone()).or_default();
                    if b.add.wrapping_add(b.op) != *checksum {
                        self.mismatches += 1;
                        eprintln!("checksum mismatch in {tbl}: {} + {} != {checksum}", b.add, b.op);
                    }
                    b.last = b.last.max(h);
                }
                self.completed += 1;
                return Outcome::Complete;
            }
            let after: serde_json::Map<String, Value> = todo
                .iter()
                .map(|tbl| (tbl.clone(), Value::String(self.buckets.get(tbl).map_or(0, |b| b.last).to_string())))
                .collect();
            let text: String = as_user(db, uid, |t| {
                t.query_one(
                    "select public.edgesync_ps_page($1, $2::text::jsonb, $3, 65536)",
                    &[&(h as i64), &Value::Object(after).to_string(), &lim],
                )
                .unwrap()
                .get(0)
            });
            let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            let (trailer, data) = lines.split_last().unwrap();
            for line in data {
                let d = &line["data"];
                let bucket = d["bucket"].as_str().unwrap();
                let (tbl, who) = bucket.split_once(':').unwrap();
                assert_eq!(who, uid, "a bucket of another user: {bucket}");
                self.apply(tbl, d["data"].as_array().unwrap());
            }
            let es = &trailer["_es"];
            needs |= !es["needs"].is_null();
            todo = es["more"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect();
        }
        Outcome::Cut
    }

    /// The client's rows of `entries`: id → title.
    fn titles(&self) -> BTreeMap<String, String> {
        let Some(b) = self.buckets.get("entries") else { return BTreeMap::new() };
        b.rows
            .iter()
            .map(|(id, (_, _, data))| {
                let row: Value = serde_json::from_str(data).unwrap();
                assert!(row.get("embedding").is_none() && row.get("_txid").is_none(), "server-only columns: {row}");
                (id.clone(), row["title"].as_str().unwrap().to_owned())
            })
            .collect()
    }
}

fn server_titles(db: &mut postgres::Client, uid: &str) -> BTreeMap<String, String> {
    db.query(
        "select id::text, title from public.entries where user_id = $1::text::uuid and deleted_at is null",
        &[&uid],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[test]
fn a_page_stops_before_a_put_whose_next_version_is_above_the_checkpoint() {
    let _guard = exclusive();
    let info = stack();
    let (u, _) = new_user(&info);
    let mut db = db(&info);
    let row = insert_entry(&mut db, &u, "v1");
    // A synced writer holds the watermark, then the row gets a newer version above it.
    let mut holder = edgesync_integration::db(&info);
    let mut held = holder.transaction().unwrap();
    current_position(&mut held);
    set_title(&mut db, &row, "v2");
    let mut client = PsClient::default();
    assert_eq!(client.sync(&mut db, &u, 100, 10), Outcome::Needs, "v1's PUT cannot be served, nor as MOVE");
    assert!(client.titles().is_empty(), "{:?}", client.titles());
    held.commit().unwrap();
    assert_eq!(client.sync(&mut db, &u, 100, 10), Outcome::Complete);
    assert_eq!(client.mismatches, 0);
    assert_eq!(client.titles(), BTreeMap::from([(row.clone(), "v2".to_owned())]));
}

#[test]
fn another_users_ops_and_rows_never_reach_a_user() {
    let _guard = exclusive();
    let info = stack();
    let (u, _) = new_user(&info);
    let (v, _) = new_user(&info);
    let mut db = db(&info);
    insert_entry(&mut db, &u, "mine");
    insert_entry(&mut db, &v, "theirs");
    let mut client = PsClient::default();
    assert_eq!(client.sync(&mut db, &u, 100, 10), Outcome::Complete);
    assert_eq!(client.titles().values().collect::<Vec<_>>(), ["mine"]);
    // Naming another user's bucket does not help: the page is the caller's.
    let visible: i64 = as_user(&mut db, &u, |t| {
        t.query_one("select count(*) from edgesync.ps_ops where user_id = $1::text::uuid", &[&v]).unwrap().get(0)
    });
    assert_eq!(visible, 0, "RLS hides other users' ops");
    let anon = db.batch_execute("set role anon; select public.edgesync_ps_write_checkpoint()");
    db.batch_execute("reset role").unwrap();
    assert!(anon.is_err(), "anon cannot ask for a write checkpoint");
}

#[test]
fn an_uploads_write_checkpoint_is_reached_only_by_a_checkpoint_that_has_its_writes() {
    let _guard = exclusive();
    let info = stack();
    let (u, token) = new_user(&info);
    let id = uuid();
    let a =
        upload(&info, &token, &uuid(), serde_json::json!([put(1, "entries", &id, serde_json::json!({"title": "up"}))]));
    assert_eq!(a.status, 200, "{}", a.text);
    let mut db = db(&info);
    let x: String =
        as_user(&mut db, &u, |t| t.query_one("select public.edgesync_ps_write_checkpoint()", &[]).unwrap().get(0));
    let x: u64 = x.parse().unwrap();
    let ops = ops_of(&mut db, &u, &id);
    assert!(ops.iter().all(|(op, _)| ((*op as u64) >> 24) < x), "{ops:?} below {x}");
    let cp = checkpoint(&mut db, &u, 0);
    assert!(cp.w >= x, "with no writer open, the checkpoint reaches the write checkpoint");
}

#[test]
fn enable_sync_gives_existing_rows_ops_and_disable_sync_drops_them() {
    let info = stack();
    let (u, _) = new_user(&info);
    let mut db = db(&info);
    let table = format!("ps_new_{}", &uuid()[..8]);
    db.batch_execute(&format!(
        "create table public.{table} (id uuid primary key, user_id uuid not null, title text);
         insert into public.{table} (id, user_id, title) values (gen_random_uuid(), '{u}', 'a'), (gen_random_uuid(), '{u}', 'b');
         select edgesync.enable_sync('public.{table}');"
    ))
    .unwrap();
    let count = |db: &mut postgres::Client| -> i64 {
        db.query_one("select count(*) from edgesync.ps_ops where tbl = $1 and kind = 'P'", &[&table]).unwrap().get(0)
    };
    assert_eq!(count(&mut db), 2);
    db.batch_execute(&format!("select edgesync.disable_sync('public.{table}'); drop table public.{table};")).unwrap();
    assert_eq!(count(&mut db), 0);
}

/// Random writes of two users, some in transactions held open across syncs (so the
/// watermark lags and pages stop), small pages, disconnects. At every completed
/// checkpoint the client's sums equal the server's; once nothing is held, its rows are
/// the server's.
#[test]
fn a_powersync_client_never_sees_a_checksum_mismatch_and_ends_with_the_servers_rows() {
    let _guard = exclusive();
    let info = stack();
    let seed: u64 = std::env::var("EDGESYNC_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_0013);
    eprintln!("ps_oplog: seed {seed} (replay with EDGESYNC_SEED={seed})");
    let mut rng = seed;
    let (u, _) = new_user(&info);
    let (v, _) = new_user(&info);
    let mut db = db(&info);
    let mut rows: Vec<String> = Vec::new();
    let mut held: Vec<(postgres::Client, Vec<String>)> = Vec::new();
    let mut client = PsClient::default();
    let mut slow = PsClient::default();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for step in 0..600 {
        let dice = splitmix(&mut rng) % 100;
        let pick = |rng: &mut u64, n: usize| (splitmix(rng) % n.max(1) as u64) as usize;
        let who = if splitmix(&mut rng).is_multiple_of(3) { &v } else { &u };
        match dice {
            0..=24 => rows.push(insert_entry(&mut db, who, &format!("t{step}"))),
            25..=44 if !rows.is_empty() => {
                let r = rows[pick(&mut rng, rows.len())].clone();
                set_title(&mut db, &r, &format!("t{step}"));
            }
            45..=52 if !rows.is_empty() => {
                let r = rows[pick(&mut rng, rows.len())].clone();
                db.execute("delete from public.entries where id = $1::text::uuid", &[&r]).unwrap();
            }
            53..=56 if !rows.is_empty() => {
                let r = rows[pick(&mut rng, rows.len())].clone();
                db.execute("update public.entries set deleted_at = null where id = $1::text::uuid", &[&r]).unwrap();
            }
            57..=60 if !rows.is_empty() => {
                let r = rows[pick(&mut rng, rows.len())].clone();
                db.execute("update public.entries set user_id = $2::text::uuid where id = $1::text::uuid", &[&r, who])
                    .unwrap();
            }
            61..=66 if !rows.is_empty() => {
                // Several writes of rows in one transaction.
                let mut t = db.transaction().unwrap();
                for k in 0..3 {
                    let r = rows[pick(&mut rng, rows.len())].clone();
                    set_title(&mut t, &r, &format!("t{step}.{k}"));
                }
                t.commit().unwrap();
            }
            67..=72 if held.len() < 3 => {
                // A writer that stays open: its own new rows only, so nothing blocks.
                let mut c = edgesync_integration::db(&info);
                c.batch_execute("begin").unwrap();
                let id = insert_entry(&mut c, who, &format!("held{step}"));
                held.push((c, vec![id]));
            }
            79..=81 => {
                edgesync_integration::db(&info)
                    .execute("select edgesync.ps_compact_bucket($1::text::uuid, 'entries')", &[&u])
                    .unwrap();
            }
            82..=83 => {
                edgesync_integration::db(&info).execute("select edgesync.ps_defrag(4, 1.5, 10)", &[]).unwrap();
            }
            73..=78 if !held.is_empty() => {
                let i = pick(&mut rng, held.len());
                let (mut c, ids) = held.swap_remove(i);
                set_title(&mut c, &ids[0], &format!("held-final{step}"));
                c.batch_execute("commit").unwrap();
                rows.extend(ids);
            }
            _ => {
                let lim = [1, 2, 5, 50][pick(&mut rng, 4)];
                let pages = if splitmix(&mut rng).is_multiple_of(4) { 1 } else { 100 };
                // Mostly the eager client; now and then the one that lags behind
                // compactions, so CLEARs reach it.
                let c = if splitmix(&mut rng).is_multiple_of(6) { &mut slow } else { &mut client };
                let o = c.sync(&mut db, &u, lim, pages);
                *outcomes.entry(format!("{o:?}")).or_default() += 1;
                if o == Outcome::Complete && held.is_empty() {
                    assert_eq!(c.titles(), server_titles(&mut db, &u), "step {step}, seed {seed}");
                }
            }
        }
        assert_eq!((client.mismatches, slow.mismatches), (0, 0), "step {step}, seed {seed}");
    }
    for (mut c, _) in held.drain(..) {
        c.batch_execute("commit").unwrap();
    }
    for c in [&mut client, &mut slow] {
        let mut last = c.sync(&mut db, &u, 1000, 1000);
        for _ in 0..3 {
            if last == Outcome::Complete {
                break;
            }
            last = c.sync(&mut db, &u, 1000, 1000);
        }
        assert_eq!(last, Outcome::Complete);
        assert_eq!(c.mismatches, 0);
        assert_eq!(c.titles(), server_titles(&mut db, &u), "seed {seed}");
    }
    eprintln!(
        "ps_oplog: {} + {} checkpoints completed, {} CLEARs received; outcomes {outcomes:?}",
        client.completed,
        slow.completed,
        client.clears + slow.clears
    );
    assert!(outcomes.get("Needs").copied().unwrap_or(0) > 0, "no page stopped: the held writers did not bite");
    assert!(client.completed > 20, "too few checkpoints completed: {outcomes:?}");
    assert!(client.clears + slow.clears > 0, "no CLEAR reached a client: compaction did not bite");
}

fn bucket_ops(db: &mut postgres::Client, user: &str) -> i64 {
    db.query_one("select count(*) from edgesync.ps_ops where user_id = $1::text::uuid and tbl = 'entries'", &[&user])
        .unwrap()
        .get(0)
}

/// Churn, then defragmentation and compaction: the bucket's log shrinks to about its
/// live rows, a new client downloads about that many ops, and a client that synced
/// before (and one cut off midway) carry on with valid checksums and the server's rows.
#[test]
fn compaction_keeps_clients_valid_and_the_log_and_first_download_near_the_live_rows() {
    let _guard = exclusive();
    let info = stack();
    let (u, _) = new_user(&info);
    let mut db = db(&info);
    let ids: Vec<String> = (0..60).map(|i| insert_entry(&mut db, &u, &format!("row {i}"))).collect();
    let mut before = PsClient::default();
    assert_eq!(before.sync(&mut db, &u, 1000, 100), Outcome::Complete);
    for i in 0..300 {
        set_title(&mut db, &ids[59], &format!("edit {i}"));
    }
    for id in &ids[40..59] {
        db.execute("delete from public.entries where id = $1::text::uuid", &[id]).unwrap();
    }
    let mut cut = PsClient::default();
    assert_eq!(cut.sync(&mut db, &u, 20, 3), Outcome::Cut, "a client cut off mid-download");
    let churned = bucket_ops(&mut db, &u);
    let churn_top: i64 = db
        .query_one("select max(op_id) from edgesync.ps_ops where user_id = $1::text::uuid and tbl = 'entries'", &[&u])
        .unwrap()
        .get(0);
    let live = 41;
    // Defragmentation skips a row another transaction holds locked (an embedding being
    // written back to one of these new rows, say), and compaction's dead prefix ends at
    // the first live row not re-put: run it until every live row has been re-put.
    let (mut defragged, mut rounds) = (0, 0);
    eventually("defragmentation to re-put every live row", Duration::from_secs(30), || {
        rounds += 1;
        defragged += db.query_one("select edgesync.ps_defrag(50, 2, 1000)", &[]).unwrap().get::<_, i64>(0);
        let reput: i64 = db
            .query_one(
                "select count(distinct row_id) from edgesync.ps_ops
                  where user_id = $1::text::uuid and tbl = 'entries' and kind = 'P' and op_id > $2",
                &[&u, &churn_top],
            )
            .unwrap()
            .get(0);
        reput == live
    });
    // Compaction folds only ops below the watermark, and a synced writer still open
    // (another test's, or an embedding written back) holds it: wait until it has
    // passed every op of the bucket, re-puts included.
    eventually("synced writers open across the defragmentation to end", Duration::from_secs(30), || {
        db.query_one(
            "select (edgesync.watermark()::text::bigint << 24) > max(o.op_id)
               from edgesync.ps_ops o where o.user_id = $1::text::uuid and o.tbl = 'entries'",
            &[&u],
        )
        .unwrap()
        .get(0)
    });
    let removed: i64 =
        db.query_one("select edgesync.ps_compact_bucket($1::text::uuid, 'entries')", &[&u]).unwrap().get(0);
    let after = bucket_ops(&mut db, &u);
    eprintln!(
        "ps_oplog: {churned} ops, {defragged} rows re-put in {rounds} round(s), {removed} removed: \
         {after} ops for {live} live rows"
    );
    assert!(defragged > 0 && removed > 0, "defrag {defragged}, compaction {removed}");
    assert!(after <= 2 * live + 2, "{after} ops left for {live} live rows");
    let mut fresh = PsClient::default();
    assert_eq!(fresh.sync(&mut db, &u, 1000, 100), Outcome::Complete);
    assert!(fresh.received as i64 <= after, "a first download of {} ops", fresh.received);
    for (name, c) in [("before", &mut before), ("cut", &mut cut), ("fresh", &mut fresh)] {
        assert_eq!(c.sync(&mut db, &u, 7, 1000), Outcome::Complete, "{name}");
        assert_eq!(c.mismatches, 0, "{name}");
        assert_eq!(c.titles(), server_titles(&mut db, &u), "{name}");
    }
    // A second compaction with nothing new to fold changes nothing.
    let again: i64 =
        db.query_one("select edgesync.ps_compact_bucket($1::text::uuid, 'entries')", &[&u]).unwrap().get(0);
    assert_eq!((again, bucket_ops(&mut db, &u)), (0, after));
}
