//! The reference client (`client/`) against the real stack: two devices converge,
//! tokens are refreshed on 401, refused mutations are recorded and skipped, outages
//! keep the outbox, a purge makes a device rebuild without losing its outbox, a
//! pending write is never hidden by a pull, and the `edgesync-client` CLI works.
//!
//! Every test holds the stack lock: one of them stops PostgREST.

use edgesync_client::{Client, Config, Error as ClientError, State};
use edgesync_integration::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct Tmp(PathBuf);

impl Tmp {
    fn new() -> Tmp {
        let dir = std::env::temp_dir().join(format!("edgesync-client-test-{}", uuid()));
        std::fs::create_dir_all(&dir).unwrap();
        Tmp(dir)
    }
    fn db(&self, name: &str) -> PathBuf {
        self.0.join(format!("{name}.db"))
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn device(info: &StackInfo, tmp: &Tmp, name: &str, token: &str) -> Client {
    device_with(info, tmp, name, token, |_| {})
}

fn device_with(info: &StackInfo, tmp: &Tmp, name: &str, token: &str, tweak: impl FnOnce(&mut Config)) -> Client {
    let mut cfg = Config::new(&info.functions_url);
    cfg.backoff_base = Duration::from_millis(10);
    cfg.backoff_max = Duration::from_millis(50);
    tweak(&mut cfg);
    let mut c = Client::open(&tmp.db(name), cfg).unwrap();
    c.set_token(token).unwrap();
    c
}

/// What every test here starts from: the stack to itself, and a fresh directory for
/// the devices' databases.
struct Fixture {
    _guard: std::sync::MutexGuard<'static, ()>,
    info: StackInfo,
    tmp: Tmp,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture { _guard: exclusive(), info: stack(), tmp: Tmp::new() }
    }

    /// A new user (id, token) and two devices of theirs, `a` and `b`.
    fn user_with_two_devices(&self) -> (String, String, Client, Client) {
        let (uid, token) = new_user(&self.info);
        let a = device(&self.info, &self.tmp, "a", &token);
        let b = device(&self.info, &self.tmp, "b", &token);
        (uid, token, a, b)
    }
}

fn titles(c: &Client) -> Vec<(String, Value)> {
    c.list("entries").unwrap().into_iter().map(|r| (r["id"].as_str().unwrap().to_owned(), r["title"].clone())).collect()
}

#[test]
fn two_devices_converge_and_match_the_server() {
    let f = Fixture::new();
    let info = &f.info;
    let (uid, _, mut a, mut b) = f.user_with_two_devices();
    let (x, y) = (uuid(), uuid());
    a.put("entries", &x, json!({"title": "from a", "tags": ["t"]})).unwrap();
    a.put("entries", &y, json!({"title": "doomed"})).unwrap();
    b.put("sync_entities", &uuid(), json!({"type": "tag", "key": "k", "display_name": "K"})).unwrap();
    assert_eq!(a.status().unwrap().outbox_len, 2);
    let r = a.sync().unwrap();
    assert_eq!(r.push.acks.len(), 2);
    assert_eq!(a.status().unwrap().outbox_len, 0);
    assert_eq!(a.status().unwrap().awaiting_checkpoint, 0, "the pull reached the write checkpoint");
    // Another device's writes arrive once the pull watermark passes them, and any write
    // transaction on the server (an embedding write-back the webhook started) holds it
    // for a moment: sync until they are there, as an app would on its next sync.
    eventually("b to see a's entries", Duration::from_secs(30), || {
        b.sync().unwrap();
        titles(&b) == titles(&a)
    });
    b.patch("entries", &x, json!({"title": "edited on b"})).unwrap();
    b.delete("entries", &y).unwrap();
    b.sync().unwrap();
    eventually("a to see b's edit and delete", Duration::from_secs(30), || {
        a.sync().unwrap();
        titles(&a) == vec![(x.clone(), json!("edited on b"))]
    });
    // Both equal the server, column for column.
    let mut db = db(info);
    for t in ["entries", "sync_entities"] {
        let (live, _) = server_state(&mut db, t, &uid);
        for c in [&a, &b] {
            assert_eq!(by_id(c.list(t).unwrap()), live, "{t}");
        }
    }
    let s = a.status().unwrap();
    assert_eq!(s.state, State::Idle);
    assert!(s.last_pull_at_ms.is_some() && s.last_push_at_ms.is_some());
}

#[test]
fn an_expired_token_is_refreshed_through_the_callback() {
    let f = Fixture::new();
    let (info, tmp) = (&f.info, &f.tmp);
    let uid = uuid();
    let expired = keys::sign_hs256(&info.jwt_secret, &keys::user_claims(&uid, &info.jwt_issuer, -60)).unwrap();
    let mut c = device(info, tmp, "d", &expired);
    c.put("entries", &uuid(), json!({"title": "x"})).unwrap();
    // Without a callback: the 401 is an error and nothing leaves the outbox.
    match c.push_outbox() {
        Err(ClientError::Http(h)) => assert_eq!(h.status, 401),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.status().unwrap().outbox_len, 1);
    assert_eq!(c.status().unwrap().state, State::Error);
    c.reset_backoff();
    let calls = Arc::new(AtomicU64::new(0));
    let (n, info2, sub) = (calls.clone(), info.clone(), uid.clone());
    c.on_token_refresh(Box::new(move || {
        n.fetch_add(1, Ordering::SeqCst);
        Ok(user_token(&info2, &sub))
    }));
    let r = c.push_outbox().unwrap();
    assert_eq!((r.token_refreshes, calls.load(Ordering::SeqCst)), (1, 1));
    assert_eq!(c.status().unwrap().outbox_len, 0);
    // A refresh that fails is reported as such; the outbox stays.
    let mut d = device(info, tmp, "e", &expired);
    d.put("entries", &uuid(), json!({})).unwrap();
    d.on_token_refresh(Box::new(|| Err("signed out".into())));
    assert_eq!(d.push_outbox(), Err(ClientError::Refresh("signed out".into())));
    assert_eq!(d.status().unwrap().outbox_len, 1);
    // And a token of another user is refused for this database.
    assert!(d.set_token(&new_user(info).1).is_err());
}

#[test]
fn refused_mutations_are_recorded_and_the_rest_goes_through() {
    let f = Fixture::new();
    let (info, tmp) = (&f.info, &f.tmp);
    let (_, token) = new_user(info);
    let mut c = device(info, tmp, "d", &token);
    let good1 = uuid();
    let bad_column = uuid();
    let bad_value = uuid();
    let dup_key = uuid();
    let good2 = uuid();
    c.put("entries", &good1, json!({"title": "ok"})).unwrap();
    c.put("entries", &bad_column, json!({"title": "x", "no_such_column": 1})).unwrap();
    c.put("entries", &bad_value, json!({"start_at": "not a time"})).unwrap();
    c.put("sync_entities", &uuid(), json!({"type": "tag", "key": "same"})).unwrap();
    c.put("sync_entities", &dup_key, json!({"type": "tag", "key": "same"})).unwrap();
    c.put("entries", &good2, json!({"title": "ok too"})).unwrap();
    // Too big for any request: the batch is halved until it travels alone, then refused.
    let big = uuid();
    c.put("entries", &big, json!({"body_markdown": "x".repeat(5 << 20)})).unwrap();
    let r = c.sync().unwrap();
    let codes: Vec<(String, String)> = r.push.rejected.iter().map(|r| (r.id.clone(), r.code.clone())).collect();
    assert_eq!(codes.len(), 4, "{codes:?}");
    assert!(codes.contains(&(big.clone(), "body_too_large".into())), "{codes:?}");
    assert!(codes.contains(&(bad_column.clone(), "unknown_column".into())), "{codes:?}");
    assert!(codes.contains(&(bad_value.clone(), "invalid_value".into())), "{codes:?}");
    assert!(codes.contains(&(dup_key.clone(), "unique_violation".into())), "{codes:?}");
    // Visible to the app, out of the outbox, and gone from the local view.
    let s = c.status().unwrap();
    assert_eq!((s.rejected, s.outbox_len), (4, 0));
    assert_eq!(c.store().rejections().unwrap().len(), 4);
    for id in [&bad_column, &bad_value, &big] {
        assert_eq!(c.get("entries", id).unwrap(), None);
    }
    assert_eq!(c.get("sync_entities", &dup_key).unwrap(), None);
    assert!(c.get("entries", &good1).unwrap().is_some() && c.get("entries", &good2).unwrap().is_some());
}

#[test]
fn an_outage_keeps_the_outbox_and_a_later_sync_delivers_it() {
    let f = Fixture::new();
    let (info, tmp) = (&f.info, &f.tmp);
    let (uid, token) = new_user(info);
    let mut c = device_with(info, tmp, "d", &token, |cfg| {
        cfg.backoff_base = Duration::from_secs(60);
        cfg.backoff_max = Duration::from_secs(60);
    });
    let id = uuid();
    c.put("entries", &id, json!({"title": "during the outage"})).unwrap();
    let mut info_mut = info.clone();
    info_mut.stop_postgrest().unwrap();
    let during = c.sync();
    info_mut.start_postgrest().unwrap();
    match during {
        Err(ClientError::Http(h)) => assert!(h.status >= 500, "{h:?}"),
        other => panic!("expected a server error, got {other:?}"),
    }
    let s = c.status().unwrap();
    assert_eq!((s.state, s.outbox_len), (State::Error, 1));
    assert!(s.last_error.is_some());
    assert!(matches!(c.sync(), Err(ClientError::BackingOff(_))), "it backs off before trying again");
    c.reset_backoff();
    c.sync().unwrap();
    let (live, _) = server_state(&mut db(info), "entries", &uid);
    assert_eq!(live[&id]["title"], "during the outage");
}

#[test]
fn a_purge_makes_the_device_rebuild_without_losing_its_outbox() {
    let f = Fixture::new();
    let (info, tmp) = (&f.info, &f.tmp);
    let (uid, _, mut a, mut b) = f.user_with_two_devices();
    let ids: Vec<String> = (0..5).map(|_| uuid()).collect();
    for id in &ids {
        a.put("entries", id, json!({"title": "kept"})).unwrap();
    }
    a.sync().unwrap();
    b.sync().unwrap();
    // b deletes one row; a has not pulled since, and has a write queued.
    b.delete("entries", &ids[0]).unwrap();
    b.sync().unwrap();
    let pending = uuid();
    a.put("entries", &pending, json!({"title": "queued before the purge"})).unwrap();
    let mut db = db(info);
    db.execute(
        "update public.entries set deleted_at = now() - interval '40 days' where user_id = $1::text::uuid and deleted_at is not null",
        &[&uid],
    )
    .unwrap();
    db.query_one("select 1 from edgesync.purge_tombstones('30 days') limit 1", &[]).unwrap();
    // a pulls with small pages: 410, then a rebuild through positions below the horizon.
    let mut cfg_pages = Vec::new();
    let mut small = Config::new(&info.functions_url);
    small.page_limit = 1;
    let mut a = Client::open(&tmp.db("a"), small).unwrap();
    let p = a.pull_delta_with(&mut |p| cfg_pages.push(p.pages)).unwrap();
    assert!(p.resynced && p.pages >= 4, "{p:?}");
    assert_eq!(cfg_pages.len() as u32, p.pages, "progress after every page");
    assert_eq!(a.get("entries", &ids[0]).unwrap(), None, "the purged row is gone");
    assert_eq!(a.get("entries", &pending).unwrap().unwrap()["title"], "queued before the purge");
    assert_eq!(a.status().unwrap().outbox_len, 1);
    a.sync().unwrap();
    let (live, _) = server_state(&mut db, "entries", &uid);
    assert!(live.contains_key(&pending) && !live.contains_key(&ids[0]));
    assert_eq!(a.list("entries").unwrap().len(), live.len());
}

#[test]
fn a_pending_write_is_never_hidden_by_a_pull_and_the_conflict_is_reported() {
    let f = Fixture::new();
    let (info, tmp) = (&f.info, &f.tmp);
    let (_, token) = new_user(info);
    let mut a = device(info, tmp, "a", &token);
    let mut b = device(info, tmp, "b", &token);
    let id = uuid();
    a.put("entries", &id, json!({"title": "v1", "body_markdown": "body"})).unwrap();
    a.sync().unwrap();
    b.sync().unwrap();
    a.patch("entries", &id, json!({"title": "a's edit"})).unwrap();
    b.patch("entries", &id, json!({"title": "b's edit"})).unwrap();
    b.sync().unwrap();
    // a pulls b's version but keeps showing its own pending edit on top.
    a.pull_delta().unwrap();
    assert_eq!(a.store().server_row("entries", &id).unwrap().unwrap()["title"], "b's edit");
    assert_eq!(a.get("entries", &id).unwrap().unwrap()["title"], "a's edit");
    assert_eq!(a.get("entries", &id).unwrap().unwrap()["body_markdown"], "body");
    // a's push wins (last write wins) and reports what it overwrote.
    let r = a.push_outbox().unwrap();
    assert!(r.acks[0].conflict, "{r:?}");
    assert_eq!(r.acks[0].server_row.as_ref().unwrap()["title"], "b's edit");
    assert_eq!(a.status().unwrap().conflicts, 1);
    // Until a pull reaches the write checkpoint, the acknowledged edit stays on top.
    assert_eq!(a.status().unwrap().awaiting_checkpoint, 1);
    assert_eq!(a.get("entries", &id).unwrap().unwrap()["title"], "a's edit");
    a.pull_delta().unwrap();
    b.sync().unwrap();
    assert_eq!(a.status().unwrap().awaiting_checkpoint, 0);
    assert_eq!(b.get("entries", &id).unwrap(), a.get("entries", &id).unwrap());
    assert_eq!(b.get("entries", &id).unwrap().unwrap()["title"], "a's edit");
}

fn cli(db: &std::path::Path, url: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(cli_bin());
    cmd.arg("--db").arg(db);
    if let Some(u) = url {
        cmd.args(["--url", u]);
    }
    let out = cmd.args(args).env_remove("EDGESYNC_URL").env_remove("EDGESYNC_TOKEN").output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_drives_two_devices_to_the_same_rows() {
    let f = Fixture::new();
    let (info, tmp) = (&f.info, &f.tmp);
    let (_, token) = new_user(info);
    let (one, two) = (tmp.db("one"), tmp.db("two"));
    for db in [&one, &two] {
        let (ok, out, err) = cli(db, Some(&info.functions_url), &["login", "--token", &token]);
        assert!(ok, "{err}");
        assert!(out.contains("logged in"), "{out}");
    }
    // Local work needs no network: no URL, nothing listening would matter.
    let (ok, id, err) = cli(&one, None, &["put", "entries", r#"{"title":"from the cli"}"#]);
    assert!(ok, "{err}");
    let id = id.trim().to_owned();
    for i in 0..30 {
        assert!(cli(&one, None, &["put", "entries", &format!(r#"{{"title":"bulk {i}"}}"#)]).0);
    }
    let (_, status, _) = cli(&one, None, &["status"]);
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["outbox_len"], 31);
    let (ok, _, err) = cli(&one, None, &["sync"]);
    assert!(ok, "{err}");
    assert!(err.contains("pushed 31"), "{err}");
    // Device two pulls in small pages and shows progress.
    let mut cmd = Command::new(cli_bin());
    let out = cmd.arg("--db").arg(&two).args(["sync"]).env("EDGESYNC_PAGE_LIMIT", "10").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("pulling: page 2"), "progress on a long sync: {err}");
    let (_, list_one, _) = cli(&one, None, &["list", "entries"]);
    let (_, list_two, _) = cli(&two, None, &["list", "entries"]);
    assert_eq!(list_one.lines().count(), 31);
    assert_eq!(list_one, list_two);
    assert!(cli(&two, None, &["delete", "entries", &id]).0);
    assert!(cli(&two, None, &["sync"]).0);
    assert!(cli(&one, None, &["sync"]).0);
    let (found, _, err) = cli(&one, None, &["get", "entries", &id]);
    assert!(!found && err.contains("no row"), "{err}");
    // Bad input is a usage error, and changes nothing.
    let (ok, _, err) = cli(&one, None, &["put", "entries", "{not json"]);
    assert!(!ok && err.contains("not JSON"), "{err}");
    let (ok, _, err) = cli(&one, None, &["put", "Robert'); drop table--", "{}"]);
    assert!(!ok && err.contains("not a table name"), "{err}");
}
