//! Live updates against the real stack: the live trigger in Postgres, the relay
//! (the local stand-in for pg_net), the sync Worker's `LiveHub` Durable Object in
//! wrangler dev, `/sync?wait=` and the `/live` WebSocket, through the gateway.

use edgesync_integration::*;
use serde_json::{json, Value};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{client::IntoClientRequest, Message};

type Socket = tungstenite::WebSocket<MaybeTlsStream<TcpStream>>;

fn entry(title: &str) -> Value {
    json!({"title": title, "body_markdown": "", "tags": []})
}

/// A first pull: the cursor a device holds once it is up to date.
fn cursor(info: &StackInfo, token: &str) -> String {
    let a = call("GET", &format!("{}/sync?tables=entries", info.functions_url), Some(token), None);
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["has_more"], false);
    a.body["cursor"].as_str().unwrap().to_owned()
}

/// `GET /sync?wait=` in a thread; the main thread goes on once the Worker has made
/// its first pull (seen in PostgREST's log), so a write after that can only reach
/// the answer through a poke or a re-pull.
fn long_poll(info: &StackInfo, token: &str, since: &str, wait: u32) -> std::thread::JoinHandle<(Answer, Duration)> {
    long_poll_at(info, &info.functions_url, token, since, wait)
}

/// [`long_poll`] of the Worker at `base`.
fn long_poll_at(
    info: &StackInfo,
    base: &str,
    token: &str,
    since: &str,
    wait: u32,
) -> std::thread::JoinHandle<(Answer, Duration)> {
    let log = PostgrestLog::new(info);
    let from = log.mark();
    let url = format!("{base}/sync?tables=entries&since={since}&wait={wait}");
    let token = token.to_owned();
    let handle = std::thread::spawn(move || {
        let started = Instant::now();
        let a = call("GET", &url, Some(&token), None);
        (a, started.elapsed())
    });
    eventually("the long-poll's first pull", Duration::from_secs(20), || {
        log.requests_since(from).iter().any(|l| l.contains("edgesync_pull"))
    });
    handle
}

fn titles(a: &Answer) -> Vec<String> {
    a.body["changes"]["entries"]["upserted"]
        .as_array()
        .map(|rows| rows.iter().map(|r| r["title"].as_str().unwrap_or_default().to_owned()).collect())
        .unwrap_or_default()
}

fn ws_url(info: &StackInfo) -> String {
    format!("{}/live", info.functions_url.replacen("http://", "ws://", 1))
}

/// A socket authenticated the browser's way: the token as a `bearer.` subprotocol.
fn open_socket(info: &StackInfo, token: &str) -> Socket {
    let mut req = ws_url(info).into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", format!("edgesync, bearer.{token}").parse().unwrap());
    let (mut socket, answer) = tungstenite::connect(req).unwrap_or_else(|e| panic!("GET /live: {e}"));
    assert_eq!(answer.status(), 101);
    assert_eq!(answer.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()), Some("edgesync"));
    set_timeout(&mut socket, Duration::from_secs(20));
    // A heartbeat: the socket is open end to end once it is answered.
    socket.send(Message::text("ping")).unwrap();
    assert_eq!(next_text(&mut socket).as_deref(), Some("pong"));
    socket
}

fn set_timeout(socket: &mut Socket, timeout: Duration) {
    if let MaybeTlsStream::Plain(s) = socket.get_mut() {
        s.set_read_timeout(Some(timeout)).unwrap();
    }
}

/// The next text message; `None` when the socket closed or the read timed out.
fn next_text(socket: &mut Socket) -> Option<String> {
    loop {
        match socket.read() {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_) | Message::Binary(_)) => continue,
            Ok(Message::Close(_)) | Err(_) => return None,
        }
    }
}

/// Read pokes until one reaches `checkpoint`; their checkpoints, in order.
fn pokes_until(socket: &mut Socket, checkpoint: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    while seen.last().is_none_or(|c| *c < checkpoint) {
        let text = next_text(socket).unwrap_or_else(|| panic!("no poke reaching {checkpoint}; got {seen:?}"));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "poke", "{text}");
        seen.push(v["checkpoint"].as_str().unwrap().parse().unwrap());
    }
    seen
}

fn write_checkpoint(a: &Answer) -> u64 {
    assert_eq!(a.status, 200, "{}", a.text);
    a.body["write_checkpoint"].as_str().unwrap().parse().unwrap()
}

#[test]
fn an_upload_on_one_device_answers_another_devices_waiting_pull() {
    let _guard = exclusive();
    let info = stack();
    let (_, token) = new_user(&info);
    let since = cursor(&info, &token);
    let waiting = long_poll(&info, &token, &since, 30);
    let id = uuid();
    let wrote = Instant::now();
    let a = upload(&info, &token, &uuid(), json!([put(1, "entries", &id, entry("from the phone"))]));
    let checkpoint = write_checkpoint(&a);
    let (answer, _) = waiting.join().unwrap();
    let latency = wrote.elapsed();
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(titles(&answer), ["from the phone"]);
    let page_checkpoint: u64 = answer.body["checkpoint"].as_str().unwrap().parse().unwrap();
    assert!(page_checkpoint >= checkpoint, "{page_checkpoint} < {checkpoint}");
    // Woken, not timed out: well inside the 30 s it was allowed to wait.
    assert!(latency < Duration::from_secs(25), "the pull answered only after {latency:?}");
    eprintln!("live: write-to-other-device through a waiting pull: {latency:?}");
}

#[test]
fn a_plain_sql_write_wakes_a_waiting_pull() {
    let _guard = exclusive();
    let info = stack();
    let (user, token) = new_user(&info);
    let since = cursor(&info, &token);
    let waiting = long_poll(&info, &token, &since, 30);
    let started = Instant::now();
    db(&info)
        .execute(
            "insert into public.entries (id, user_id, title, body_markdown, tags)
             values ($1::text::uuid, $2::text::uuid, 'from psql', '', '{}')",
            &[&uuid(), &user],
        )
        .unwrap();
    let (answer, _) = waiting.join().unwrap();
    assert_eq!(titles(&answer), ["from psql"], "{}", answer.text);
    assert!(started.elapsed() < Duration::from_secs(25), "answered only after {:?}", started.elapsed());
}

#[test]
fn with_nothing_to_pull_the_wait_ends_with_the_empty_page() {
    // Its pulls would read as another test's long-poll having started (`long_poll`).
    let _guard = exclusive();
    let info = stack();
    let (_, token) = new_user(&info);
    let since = cursor(&info, &token);
    let started = Instant::now();
    let a =
        call("GET", &format!("{}/sync?tables=entries&since={since}&wait=2", info.functions_url), Some(&token), None);
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(titles(&a).is_empty());
    assert_eq!(a.body["has_more"], false);
    assert!(started.elapsed() >= Duration::from_secs(2), "answered after {:?}, before its wait", started.elapsed());
    // And `wait` is checked like every parameter.
    for bad in ["56", "-1", "soon"] {
        let a = call("GET", &format!("{}/sync?wait={bad}", info.functions_url), Some(&token), None);
        assert_eq!((a.status, a.body["error"]["code"].as_str()), (400, Some("invalid_parameter")), "{bad}");
    }
}

#[test]
fn another_users_writes_neither_wake_nor_reach_a_user() {
    let _guard = exclusive();
    let info = stack();
    let (_, token) = new_user(&info);
    let (_, other) = new_user(&info);
    let since = cursor(&info, &token);
    let mut socket = open_socket(&info, &token);
    let waiting = long_poll(&info, &token, &since, 3);
    let started = Instant::now();
    write_checkpoint(&upload(&info, &other, &uuid(), json!([put(1, "entries", &uuid(), entry("not yours"))])));
    let (answer, _) = waiting.join().unwrap();
    assert_eq!(answer.status, 200);
    assert!(titles(&answer).is_empty(), "{}", answer.text);
    assert!(started.elapsed() >= Duration::from_secs(2), "woken by another user's write after {:?}", started.elapsed());
    // The socket heard nothing either: the next thing on it is the answer to a ping.
    socket.send(Message::text("ping")).unwrap();
    assert_eq!(next_text(&mut socket).as_deref(), Some("pong"));
}

#[test]
fn a_socket_gets_a_poke_for_each_commit_whoever_writes_and_the_pull_after_it_has_the_change() {
    let _guard = exclusive();
    let info = stack();
    let (user, token) = new_user(&info);
    let mut socket = open_socket(&info, &token);
    let since = cursor(&info, &token);

    // Through /upload: the poke's checkpoint is the upload's write_checkpoint.
    let id = uuid();
    let checkpoint = write_checkpoint(&upload(&info, &token, &uuid(), json!([put(1, "entries", &id, entry("one"))])));
    assert_eq!(pokes_until(&mut socket, checkpoint).last(), Some(&checkpoint));
    // The poke may come before the watermark has passed the change (any other open
    // write transaction holds it): the pull after it waits, as clients do, and the
    // Worker answers once the change is visible.
    let a =
        call("GET", &format!("{}/sync?tables=entries&since={since}&wait=10", info.functions_url), Some(&token), None);
    assert_eq!(titles(&a), ["one"]);

    // Plain SQL, one statement for two users: one notice, one poke each.
    let (other, other_token) = new_user(&info);
    let mut other_socket = open_socket(&info, &other_token);
    let mut admin = db(&info);
    let txid = {
        let mut tx = admin.transaction().unwrap();
        tx.execute(
            "insert into public.entries (id, user_id, title, body_markdown, tags)
             values ($1::text::uuid, $3::text::uuid, 'a', '', '{}'), ($2::text::uuid, $4::text::uuid, 'b', '', '{}')",
            &[&uuid(), &uuid(), &user, &other],
        )
        .unwrap();
        let txid = current_position(&mut tx);
        tx.commit().unwrap();
        txid
    };
    assert_eq!(pokes_until(&mut socket, txid + 1).last(), Some(&(txid + 1)));
    assert_eq!(pokes_until(&mut other_socket, txid + 1).last(), Some(&(txid + 1)));
}

#[test]
fn one_writer_wakes_every_listening_device_of_its_user() {
    let _guard = exclusive();
    let info = stack();
    let (_, token) = new_user(&info);
    let mut sockets: Vec<Socket> = (0..10).map(|_| open_socket(&info, &token)).collect();
    let checkpoint =
        write_checkpoint(&upload(&info, &token, &uuid(), json!([put(1, "entries", &uuid(), entry("to all"))])));
    for (i, s) in sockets.iter_mut().enumerate() {
        assert_eq!(pokes_until(s, checkpoint).last(), Some(&checkpoint), "socket {i}");
    }
}

/// The PowerSync Worker pokes through its binding to the sync Worker's `LiveHub`
/// namespace: one hub per user for both Workers, so a socket hears it.
#[test]
fn a_powersync_write_checkpoint_pokes_the_users_socket_held_by_the_sync_worker() {
    let _guard = exclusive();
    let info = stack();
    let (_, token) = new_user(&info);
    let mut socket = open_socket(&info, &token);
    let a = call("GET", &format!("{}/write-checkpoint2.json", info.functions_url), Some(&token), None);
    assert_eq!(a.status, 200, "{}", a.text);
    let op_id: u64 = a.body["data"]["write_checkpoint"].as_str().unwrap().parse().unwrap();
    // The protocol's op ids are positions shifted left by 24 bits; pokes carry positions.
    let checkpoint = op_id >> 24;
    assert_eq!(pokes_until(&mut socket, checkpoint).last(), Some(&checkpoint));
}

#[test]
fn an_expired_token_closes_the_socket_with_4001() {
    let info = stack();
    let user = uuid();
    // Valid for 3 more seconds (within the verifier's leeway it is accepted anyway).
    let token = keys::sign_hs256(&info.jwt_secret, &keys::user_claims(&user, &info.jwt_issuer, 3)).unwrap();
    let mut socket = open_socket(&info, &token);
    let started = Instant::now();
    let code = loop {
        match socket.read() {
            Ok(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(e) => panic!("the socket failed before closing: {e}"),
        }
    };
    assert_eq!(code, Some(4001), "closed with {code:?}");
    assert!(started.elapsed() < Duration::from_secs(15), "closed only after {:?}", started.elapsed());
    // And a fresh token opens a new one.
    let fresh = user_token(&info, &user);
    let mut again = open_socket(&info, &fresh);
    again.send(Message::text("ping")).unwrap();
    assert_eq!(next_text(&mut again).as_deref(), Some("pong"));
}

#[test]
fn with_the_relay_stopped_a_change_is_late_but_not_lost() {
    let _guard = exclusive();
    let info = stack();
    let mut stopped = info.clone();
    stopped.stop_live_relay().unwrap();
    struct Restart(StackInfo);
    impl Drop for Restart {
        fn drop(&mut self) {
            if let Err(e) = self.0.start_live_relay() {
                eprintln!("could not restart the live relay: {e}");
            }
        }
    }
    let _restart = Restart(stopped);
    let (_, token) = new_user(&info);
    let since = cursor(&info, &token);
    let waiting = long_poll(&info, &token, &since, 3);
    let started = Instant::now();
    write_checkpoint(&upload(&info, &token, &uuid(), json!([put(1, "entries", &uuid(), entry("unpoked"))])));
    let (answer, _) = waiting.join().unwrap();
    // No poke: the pull at the deadline brings it.
    assert_eq!(titles(&answer), ["unpoked"], "{}", answer.text);
    assert!(started.elapsed() >= Duration::from_secs(2), "answered after {:?} without a poke?", started.elapsed());
}

#[test]
fn a_poke_ahead_of_the_watermark_is_waited_for_not_answered_empty() {
    let _guard = exclusive();
    let info = stack();
    let (user, token) = new_user(&info);
    let since = cursor(&info, &token);
    // Another synced writer takes its position first and stays open: the watermark
    // stays below it, so the user's change, committed after, is not yet pullable.
    let mut holder = db(&info);
    let mut held = holder.transaction().unwrap();
    current_position(&mut held);
    let waiting = long_poll(&info, &token, &since, 20);
    let mut admin = db(&info);
    admin
        .execute(
            "insert into public.entries (id, user_id, title, body_markdown, tags)
             values ($1::text::uuid, $2::text::uuid, 'behind the watermark', '', '{}')",
            &[&uuid(), &user],
        )
        .unwrap();
    // The poke has come and gone; the pull must still be waiting for the change.
    let log = PostgrestLog::new(&info);
    let from = log.mark();
    eventually("the waiting pull to pull again after its poke", Duration::from_secs(10), || {
        log.requests_since(from).iter().filter(|l| l.contains("edgesync_pull")).count() >= 2
    });
    assert!(!waiting.is_finished(), "the pull answered while its change was invisible");
    let released = Instant::now();
    held.commit().unwrap();
    let (answer, _) = waiting.join().unwrap();
    assert_eq!(titles(&answer), ["behind the watermark"], "{}", answer.text);
    assert!(released.elapsed() < Duration::from_secs(5), "answered {:?} after the watermark moved", released.elapsed());
}

#[test]
fn live_endpoints_refuse_what_they_must() {
    let info = stack();
    let (_, token) = new_user(&info);
    let base = &info.functions_url;
    // /live without the upgrade, and without a token.
    let a = call("GET", &format!("{base}/live"), Some(&token), None);
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (426, Some("upgrade_required")), "{}", a.text);
    let req = ws_url(&info).into_client_request().unwrap();
    match tungstenite::connect(req) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("a socket without a token: {:?}", other.map(|(_, r)| r.status())),
    }
    let mut req = ws_url(&info).into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "edgesync, bearer.not.a.jwt".parse().unwrap());
    assert!(matches!(tungstenite::connect(req), Err(tungstenite::Error::Http(r)) if r.status() == 401));
    let mut req = ws_url(&info).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", info.service_role_key).parse().unwrap());
    assert!(matches!(tungstenite::connect(req), Err(tungstenite::Error::Http(r)) if r.status() == 403));

    // /live/poke: only with the secret, only well-formed.
    let poke = json!({"checkpoint": "5", "users": [uuid()]});
    let url = format!("{base}/live/poke");
    let with = |secret: &str| vec![("x-live-secret", secret.to_owned())];
    for headers in [vec![], with("wrong-secret-wrong-secret"), vec![("authorization", format!("Bearer {token}"))]] {
        let a = call_with_headers("POST", &url, &headers, Some(&poke));
        assert_eq!((a.status, a.body["error"]["code"].as_str()), (401, Some("invalid_poke_secret")), "{}", a.text);
    }
    let secret = with(&info.live_poke_secret);
    let a = call_with_headers("POST", &url, &secret, Some(&poke));
    assert_eq!((a.status, &a.body), (202, &json!({"users": 1, "delivered": 1})), "{}", a.text);
    for bad in [json!({"checkpoint": "x", "users": []}), json!({"users": []}), json!([1])] {
        let a = call_with_headers("POST", &url, &secret, Some(&bad));
        assert_eq!((a.status, a.body["error"]["code"].as_str()), (400, Some("invalid_poke")), "{bad}");
    }
    let many: Vec<String> = (0..1001).map(|_| uuid()).collect();
    let a = call_with_headers("POST", &url, &secret, Some(&json!({"checkpoint": "5", "users": many})));
    assert_eq!(a.status, 400, "{}", a.text);
    let huge = format!(r#"{{"checkpoint":"5","users":[],"pad":"{}"}}"#, "x".repeat(70 * 1024));
    let mut headers = secret.clone();
    headers.push(("content-type", "application/json".into()));
    let a = call_raw("POST", &url, &headers, &huge);
    assert_eq!(a.status, 413, "{}", a.text);
    let a = call_raw("POST", &url, &[("x-live-secret", info.live_poke_secret.clone())], "{}");
    assert_eq!(a.status, 415, "{}", a.text);
    assert!(a.request_id.is_some());
}

/// In the database: one notice per statement, naming each user once; a change to
/// server-only columns (the embedding write-back) and a no-op update notify no one.
#[test]
fn the_live_trigger_notifies_once_per_statement_and_not_for_server_only_columns() {
    let info = stack();
    let mut listener = db(&info);
    listener.batch_execute("listen edgesync_live").unwrap();
    let (a, b) = (uuid(), uuid());
    let ids: Vec<String> = (0..3).map(|_| uuid()).collect();
    let mut admin = db(&info);
    admin
        .execute(
            "insert into public.entries (id, user_id, title, body_markdown, tags)
             values ($1::text::uuid, $4::text::uuid, 't', '', '{}'), ($2::text::uuid, $4::text::uuid, 't', '', '{}'),
                    ($3::text::uuid, $5::text::uuid, 't', '', '{}')",
            &[&ids[0], &ids[1], &ids[2], &a, &b],
        )
        .unwrap();
    // Server-only columns, then an update that changes nothing: no new version.
    admin
        .execute(
            "update public.entries set embedding_model = 'm', embedding_hash = 'h' where id = $1::text::uuid",
            &[&ids[0]],
        )
        .unwrap();
    admin.execute("update public.entries set title = title where id = $1::text::uuid", &[&ids[1]]).unwrap();
    // A marker: the next notice after the insert's must be this one.
    let marker = uuid();
    admin
        .execute(
            "insert into public.entries (id, user_id, title, body_markdown, tags)
             values ($1::text::uuid, $1::text::uuid, 'marker', '', '{}')",
            &[&marker],
        )
        .unwrap();
    let mut got: Vec<Value> = Vec::new();
    let mut notes = listener.notifications();
    let mut it = notes.timeout_iter(Duration::from_secs(10));
    while got.len() < 2 {
        use postgres::fallible_iterator::FallibleIterator;
        let n = it.next().unwrap().expect("a notice within 10 s");
        let v: Value = serde_json::from_str(n.payload()).unwrap();
        let users = v["users"].as_array().unwrap();
        if users.iter().any(|u| [&a, &b, &marker].contains(&&u.as_str().unwrap().to_owned())) {
            got.push(v);
        }
    }
    let mut first: Vec<String> =
        got[0]["users"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_owned()).collect();
    first.sort();
    let mut expected = vec![a.clone(), b.clone()];
    expected.sort();
    assert_eq!(first, expected, "one notice for the statement, each user once: {got:?}");
    assert_eq!(got[1]["users"], json!([marker]), "the server-only and no-op updates notified: {got:?}");
}

fn client_device(info: &StackInfo, dir: &std::path::Path, name: &str, token: &str) -> edgesync_client::Client {
    let mut c = edgesync_client::Client::open(
        &dir.join(format!("{name}.db")),
        edgesync_client::Config::new(&info.functions_url),
    )
    .unwrap();
    c.set_token(token).unwrap();
    c
}

#[test]
fn the_reference_client_pulls_on_a_poke_and_long_polls_without_a_socket() {
    let _guard = exclusive();
    let info = stack();
    let dir = std::env::temp_dir().join(format!("edgesync-live-{}", uuid()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_, token) = new_user(&info);
    let mut phone = client_device(&info, &dir, "phone", &token);
    let mut laptop = client_device(&info, &dir, "laptop", &token);
    laptop.sync().unwrap();
    let mut live = laptop.open_live().unwrap();

    phone
        .queue_mutation(edgesync_client::Mutation {
            table: "entries".into(),
            op: edgesync_client::Op::Put,
            id: uuid(),
            data: entry("poked").as_object().cloned(),
        })
        .unwrap();
    phone.push_outbox().unwrap();
    let checkpoint = match live.next(Duration::from_secs(20)) {
        edgesync_client::LiveEvent::Poke(c) => c,
        edgesync_client::LiveEvent::Quiet => panic!("no poke within 20 s"),
        other => panic!("the socket ended: {other:?}"),
    };
    // After the poke: pull, waiting if the watermark has not passed the change yet.
    let pulled = laptop.pull_waiting(Duration::from_secs(10)).unwrap();
    assert_eq!(pulled.upserted, 1);
    assert!(pulled.checkpoint >= checkpoint);

    // The long-poll: the laptop's pull waits, the phone writes, the pull brings it.
    let waiting = std::thread::spawn(move || {
        let started = Instant::now();
        let p = laptop.pull_waiting(Duration::from_secs(20)).unwrap();
        (p, started.elapsed(), laptop)
    });
    // No readiness signal from inside the client: whether the write lands before or
    // during the wait, the pull must bring exactly it.
    phone
        .queue_mutation(edgesync_client::Mutation {
            table: "entries".into(),
            op: edgesync_client::Op::Put,
            id: uuid(),
            data: entry("long-polled").as_object().cloned(),
        })
        .unwrap();
    phone.push_outbox().unwrap();
    let (p, took, laptop) = waiting.join().unwrap();
    assert_eq!(p.upserted, 1, "{p:?}");
    assert!(took < Duration::from_secs(18), "the wait ran out ({took:?}): the write did not wake it");
    let titles: Vec<Value> = laptop.list("entries").unwrap().iter().map(|r| r["title"].clone()).collect();
    assert_eq!(titles.len(), 2, "{titles:?}");
    std::fs::remove_dir_all(&dir).ok();
}

/// README "Live updates": two terminals, each seeing the other's writes at once.
#[test]
fn two_terminals_with_sync_live_see_each_others_writes() {
    use std::io::BufRead;
    let _guard = exclusive();
    let info = stack();
    let dir = std::env::temp_dir().join(format!("edgesync-live-cli-{}", uuid()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_, token) = new_user(&info);
    let cli = |db: &str, args: &[&str]| {
        let out = std::process::Command::new(cli_bin())
            .arg("--db")
            .arg(dir.join(db))
            .args(["--url", &info.functions_url])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    cli("a.db", &["login", "--token", &token]);
    cli("b.db", &["login", "--token", &token]);
    let mut watcher = std::process::Command::new(cli_bin())
        .arg("--db")
        .arg(dir.join("b.db"))
        .args(["--url", &info.functions_url, "sync", "--live"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = watcher.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |what: &str| -> Duration {
        let started = Instant::now();
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(20).saturating_sub(started.elapsed()))
                .unwrap_or_else(|_| panic!("`sync --live` never printed {what:?}"));
            if line.contains(what) {
                return started.elapsed();
            }
        }
    };
    wait_for("live: connected");
    cli("a.db", &["put", "entries", r#"{"title":"typed in terminal a"}"#]);
    let written = Instant::now();
    cli("a.db", &["sync"]);
    wait_for("pulled 1 rows");
    eprintln!("live: terminal a's sync to terminal b's pull: {:?}", written.elapsed());
    watcher.kill().ok();
    watcher.wait().ok();
    std::fs::remove_dir_all(&dir).ok();
}

/// The sync Worker served alone, as deployed without the gateway: its own Durable
/// Objects, poked the way pg_net would poke a deployment (here: this test forwards
/// the database's notice to it, since the stack's relay pokes the gateway).
#[test]
fn a_sync_worker_served_alone_long_polls_and_takes_pokes() {
    let _guard = exclusive();
    let info = stack();
    let Some(alone) = info.cron("sync") else {
        panic!("the test stack serves sync alone (`cargo xtask test`); this stack does not")
    };
    let base = format!("http://127.0.0.1:{}", alone.port);
    let (user, token) = new_user(&info);
    let a = call("GET", &format!("{base}/sync?tables=entries"), Some(&token), None);
    assert_eq!(a.status, 200, "{}", a.text);
    let since = a.body["cursor"].as_str().unwrap().to_owned();
    let mut listener = db(&info);
    listener.batch_execute("listen edgesync_live").unwrap();
    let waiting = long_poll_at(&info, &base, &token, &since, 20);
    db(&info)
        .execute(
            "insert into public.entries (id, user_id, title, body_markdown, tags)
             values ($1::text::uuid, $2::text::uuid, 'served alone', '', '{}')",
            &[&uuid(), &user],
        )
        .unwrap();
    let notice = {
        use postgres::fallible_iterator::FallibleIterator;
        let mut notes = listener.notifications();
        let mut it = notes.timeout_iter(Duration::from_secs(10));
        loop {
            let n = it.next().unwrap().expect("the insert's notice");
            if n.payload().contains(&user) {
                break n.payload().to_owned();
            }
        }
    };
    let headers = [("x-live-secret", info.live_poke_secret.clone()), ("content-type", "application/json".into())];
    let poked = call_raw("POST", &format!("{base}/live/poke"), &headers, &notice);
    assert_eq!((poked.status, &poked.body["delivered"]), (202, &json!(1)), "{}", poked.text);
    let (answer, took) = waiting.join().unwrap();
    assert_eq!(titles(&answer), ["served alone"], "{}", answer.text);
    assert!(took < Duration::from_secs(18), "the wait ran out ({took:?}) instead of the poke waking it");
}

/// Writes through PostgREST directly and through `/populate` poke too: the trigger is
/// in the database, not in any Worker.
#[test]
fn postgrest_and_populate_writes_poke_as_well() {
    let _guard = exclusive();
    let info = stack();
    let (_, token) = new_user(&info);
    let mut socket = open_socket(&info, &token);
    let mut admin = db(&info);
    let before = current_position(&mut admin);
    let a = call_with_headers(
        "POST",
        &format!("{}/entries", info.postgrest_url),
        &[("authorization", format!("Bearer {token}")), ("apikey", info.anon_key.clone())],
        Some(&json!({"title": "through PostgREST", "body_markdown": "", "tags": []})),
    );
    assert_eq!(a.status, 201, "{}", a.text);
    let first = pokes_until(&mut socket, before + 1);
    let a = call(
        "POST",
        &format!("{}/populate", info.functions_url),
        Some(&token),
        Some(
            &json!({"source": "legacy", "records": [{"legacyId": "l-1", "legacyType": "note", "rawText": "imported"}]}),
        ),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let after = *first.last().unwrap();
    let second = pokes_until(&mut socket, after + 1);
    assert!(second.last().unwrap() > &after, "{first:?} then {second:?}");
    let a = call("GET", &format!("{}/sync?tables=entries&wait=10", info.functions_url), Some(&token), None);
    let mut got = titles(&a);
    got.sort();
    assert!(got.contains(&"through PostgREST".to_owned()) && got.len() == 2, "{got:?}");
}
