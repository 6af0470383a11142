//! Runs the language-neutral scenarios of `tests/conformance/*.json` (the format is in
//! `tests/conformance/README.md`) against this client, one test per scenario. The engine
//! reaches the network only through `ureq`, so a loopback HTTP listener plays the
//! scenario's server: it checks each request against the step's next exchange and gives
//! the canned answer (or closes the connection, for `network_error`). The engine's clock
//! is frozen, so backoff deadlines are exact and nothing sleeps.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use edgesync_client::{Client, Config, Error, Store};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One `#[test]` per scenario file; `every_scenario_file_has_a_test` keeps this list and
/// the directory in step.
macro_rules! scenarios {
    ($($name:ident)*) => {
        $(#[test]
        fn $name() {
            run(stringify!($name));
        })*
        const SCENARIOS: &[&str] = &[$(stringify!($name)),*];
    };
}

scenarios! {
    acked_writes_stay_on_top backoff conflicts foreign_rows halve_on_413 local_writes no_token
    poke_and_long_poll protocol_errors pull_pages pull_tables rejections resync_410
    resync_cursor_errors sync_pushes_then_pulls token_refresh
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance")
}

#[test]
fn every_scenario_file_has_a_test() {
    let entries = std::fs::read_dir(dir()).unwrap_or_else(|e| panic!("{}: {e}", dir().display()));
    let mut files: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|f| f.strip_suffix(".json").map(str::to_owned))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no scenarios in {}", dir().display());
    let mut listed = SCENARIOS.to_vec();
    listed.sort();
    assert_eq!(files, listed, "each scenario file needs a line in `scenarios!` (and each line a file)");
}

// ---- the scenario ----

fn run(name: &str) {
    let path = dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let scenario: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(scenario["name"], name, "the name matches the file");
    let steps = scenario["steps"].as_array().filter(|s| !s.is_empty()).expect("a list of steps");
    let tokens: BTreeMap<String, String> = (scenario["tokens"].as_object().expect("tokens").iter())
        .map(|(label, claims)| (label.clone(), make_token(claims, label)))
        .collect();
    let token = |label: &Value| -> String {
        let label = label.as_str().expect("a token label");
        tokens.get(label).unwrap_or_else(|| panic!("no token {label:?}")).clone()
    };

    let server = Server::start(tokens.clone());
    let mut client = Client::with_store(Store::open_in_memory().unwrap(), config(&server.url, &scenario["config"]))
        .expect("a client");
    if let Some(label) = scenario.get("token") {
        client.set_token(&token(label)).expect("the scenario's token");
    }
    if let Some(labels) = scenario.get("refresh") {
        let labels = labels.as_array().expect("refresh: a list");
        let mut next: VecDeque<Option<String>> =
            labels.iter().map(|l| if l.is_null() { None } else { Some(token(l)) }).collect();
        client.on_token_refresh(Box::new(move || next.pop_front().flatten().ok_or("the refresh hook refused".into())));
    }
    for (i, step) in steps.iter().enumerate() {
        if let Err(e) = run_step(&mut client, &server, &token, step) {
            panic!("{name} step {} ({}): {e}", i + 1, step["do"].as_str().unwrap_or("?"));
        }
    }
}

/// The scenarios' clock: it never moves.
fn frozen() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

fn config(url: &str, keys: &Value) -> Config {
    let mut cfg = Config::new(url);
    cfg.now = frozen;
    for (key, v) in keys.as_object().into_iter().flatten() {
        let n = || v.as_u64().unwrap_or_else(|| panic!("config.{key}: a number"));
        match key.as_str() {
            "batch_size" => cfg.batch_size = n() as usize,
            "page_limit" => cfg.page_limit = n() as u32,
            "tables" => cfg.tables = serde_json::from_value(v.clone()).expect("config.tables: null or names"),
            "backoff_base_ms" => cfg.backoff_base = Duration::from_millis(n()),
            "backoff_max_ms" => cfg.backoff_max = Duration::from_millis(n()),
            "timeout_ms" => cfg.timeout = Duration::from_millis(n()),
            other => panic!("unknown config key {other:?}"),
        }
    }
    cfg
}

/// An unsigned `alg: none` JWT with these claims plus `jti: label`.
fn make_token(claims: &Value, label: &str) -> String {
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let mut claims = claims.clone();
    claims["jti"] = label.into();
    format!("{}.{}.sig", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims))
}

fn run_step(c: &mut Client, server: &Server, token: &dyn Fn(&Value) -> String, step: &Value) -> Result<(), String> {
    let text = |key: &str| step[key].as_str().ok_or(format!("`{key}` missing"));
    let number = |key: &str| step[key].as_u64().ok_or(format!("`{key}` missing"));
    match text("do")? {
        "write" => {
            let (table, id) = (text("table")?, text("id")?);
            let data = step.get("data").cloned().unwrap_or(json!({}));
            let result = match text("op")? {
                "PUT" => c.put(table, id, data),
                "PATCH" => c.patch(table, id, data),
                "DELETE" => c.delete(table, id),
                other => return Err(format!("unknown op {other:?}")),
            };
            match (result, step.get("op_id")) {
                (Ok(_), _) if step.get("error").is_some() => Err(format!("expected a {} error", step["error"])),
                (Ok(op_id), Some(want)) if *want != op_id => Err(format!("op_id {op_id}, expected {want}")),
                (Ok(_), _) => Ok(()),
                (Err(e), _) => expect_error(&e, step.get("error").map(|k| json!({ "kind": k }))),
            }
        }
        "set_token" => match c.set_token(&token(&step["token"])) {
            Ok(()) if step.get("error").is_some() => Err(format!("expected a {} error", step["error"])),
            Ok(()) => Ok(()),
            Err(e) => expect_error(&e, step.get("error").map(|k| json!({ "kind": k }))),
        },
        "reset_backoff" => {
            c.reset_backoff();
            Ok(())
        }
        "check" => check(c, step),
        call @ ("push" | "pull" | "sync" | "pull_waiting" | "poke") => {
            server.script(step["exchanges"].as_array().ok_or("`exchanges` must be a list")?);
            let result = match call {
                "push" => c.push_outbox().map(drop),
                "pull" => c.pull_delta().map(drop),
                "sync" => c.sync().map(drop),
                "pull_waiting" => c.pull_waiting(Duration::from_secs(number("wait_secs")?)).map(drop),
                _ => c.handle_poke(number("checkpoint")?).map(drop),
            };
            let (problems, left) = server.outcome();
            if !problems.is_empty() {
                return Err(format!("requests: {}", problems.join(" | ")));
            }
            if left > 0 {
                return Err(format!("{left} exchange(s) not made"));
            }
            match result {
                Ok(()) if step.get("error").is_some() => {
                    Err(format!("expected a {} error, it succeeded", step["error"]))
                }
                Ok(()) => Ok(()),
                Err(e) => expect_error(&e, step.get("error").cloned()),
            }
        }
        other => Err(format!("unknown step {other:?}")),
    }
}

/// The README's error kinds: the `Error` variants in snake case.
fn kind(e: &Error) -> &'static str {
    match e {
        Error::Local(_) => "local",
        Error::NoToken => "no_token",
        Error::Offline(_) => "offline",
        Error::Http(_) => "http",
        Error::Protocol(_) => "protocol",
        Error::ForeignRow { .. } => "foreign_row",
        Error::BackingOff(_) => "backing_off",
        Error::Refresh(_) => "refresh",
    }
}

/// `e` is the expected error (`{kind, status?, code?}`); `None`: none was expected.
fn expect_error(e: &Error, want: Option<Value>) -> Result<(), String> {
    let Some(want) = want else { return Err(format!("expected success, got {}: {e}", kind(e))) };
    let (status, code) = match e {
        Error::Http(h) => (json!(h.status), json!(h.code)),
        _ => (Value::Null, Value::Null),
    };
    for (key, got) in [("kind", json!(kind(e))), ("status", status), ("code", code)] {
        if want.get(key).is_some_and(|w| *w != got) {
            return Err(format!("error {key} {got}, expected {} ({e})", want[key]));
        }
    }
    Ok(())
}

fn check(c: &Client, step: &Value) -> Result<(), String> {
    let local = |e: edgesync_client::StoreError| e.to_string();
    let store = c.store();
    let counts = store.counts().map_err(local)?;
    let status = c.status().map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    for (key, want) in step.as_object().into_iter().flatten().filter(|(k, _)| *k != "do") {
        let mut expect = |what: String, got: Value, want: &Value| {
            if got != *want {
                problems.push(format!("{what}: expected {want}, got {got}"));
            }
        };
        match key.as_str() {
            "rows" => {
                for (table, rows) in want.as_object().ok_or("rows: an object")? {
                    expect(format!("rows of {table}"), Value::Array(c.list(table).map_err(|e| e.to_string())?), rows);
                }
            }
            "server_rows" => {
                for (table, by_id) in want.as_object().ok_or("server_rows: an object")? {
                    for (id, row) in by_id.as_object().ok_or("server_rows: objects")? {
                        let got = store.server_row(table, id).map_err(local)?.unwrap_or(Value::Null);
                        expect(format!("server row {table}/{id}"), got, row);
                    }
                }
            }
            "outbox" => expect(key.clone(), json!(counts.outbox), want),
            "awaiting_checkpoint" => expect(key.clone(), json!(counts.awaiting_checkpoint), want),
            "rejected" => {
                let got = store.rejections().map_err(local)?.into_iter().map(|r| {
                    json!({ "op_id": r.op_id, "table": r.table, "op": r.op.as_str(), "id": r.id,
                            "data": r.data, "code": r.code, "message": r.message })
                });
                problems.extend(mismatch(want, Some(&got.collect()), "rejected"));
            }
            "conflicts" => {
                let got = store.conflicts().map_err(local)?.into_iter().map(
                    |a| json!({ "op_id": a.op_id, "status": a.status, "reason": a.reason, "server_row": a.server_row }),
                );
                problems.extend(mismatch(want, Some(&got.collect()), "conflicts"));
            }
            "cursor" => expect(key.clone(), json!(store.cursor().map_err(local)?), want),
            "checkpoint" => expect(key.clone(), json!(store.checkpoint().map_err(local)?), want),
            "resyncing" => expect(key.clone(), json!(status.resyncing), want),
            "state" => expect(format!("state (last error: {:?})", status.last_error), json!(status.state), want),
            "backing_off" => expect(key.clone(), json!(c.retry_in() > Duration::ZERO), want),
            "retry_in_ms" => {
                let ms = c.retry_in().as_millis() as u64;
                let (min, max) =
                    (want["min"].as_u64().ok_or("retry_in_ms.min")?, want["max"].as_u64().ok_or("retry_in_ms.max")?);
                if !(min..=max).contains(&ms) {
                    problems.push(format!("retry_in_ms {ms} not in [{min}, {max}]"));
                }
            }
            other => return Err(format!("unknown check key {other:?}")),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The README's pattern rules: objects by the keys listed (`$absent`, `$any`), arrays
/// element by element, anything else equal (numbers as numbers). The first mismatch.
fn mismatch(pattern: &Value, value: Option<&Value>, at: &str) -> Option<String> {
    let got = || value.map_or("nothing".to_owned(), Value::to_string);
    match pattern {
        Value::Object(p) => {
            let Some(Value::Object(v)) = value else { return Some(format!("{at}: expected an object, got {}", got())) };
            p.iter().find_map(|(k, p)| match (p.as_str(), v.get(k)) {
                (Some("$absent"), Some(x)) => Some(format!("{at}.{k}: expected absent, got {x}")),
                (Some("$absent"), None) | (Some("$any"), Some(_)) => None,
                (Some("$any"), None) => Some(format!("{at}.{k}: expected present")),
                (_, x) => mismatch(p, x, &format!("{at}.{k}")),
            })
        }
        Value::Array(p) => match value {
            Some(Value::Array(v)) if v.len() == p.len() => {
                p.iter().zip(v).enumerate().find_map(|(i, (p, v))| mismatch(p, Some(v), &format!("{at}[{i}]")))
            }
            _ => Some(format!("{at}: expected {} items, got {}", p.len(), got())),
        },
        Value::Number(n) if value.and_then(Value::as_f64) == n.as_f64() => None,
        _ if value == Some(pattern) => None,
        _ => Some(format!("{at}: expected {pattern}, got {}", got())),
    }
}

// ---- the scripted server ----

/// A loopback HTTP listener answering each request with the current step's next exchange.
struct Server {
    url: String,
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Script {
    exchanges: VecDeque<Value>,
    problems: Vec<String>,
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Server {
    fn start(tokens: BTreeMap<String, String>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(Script::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, halt) = (script.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(stream) = conn {
                    serve(stream, &s, &tokens);
                }
            }
        });
        Server { url: format!("http://{addr}"), addr, script, stop, thread: Some(thread) }
    }

    /// The exchanges of the next step.
    fn script(&self, exchanges: &[Value]) {
        *self.script.lock().unwrap() = Script { exchanges: exchanges.iter().cloned().collect(), problems: Vec::new() };
    }

    /// The step's problems, and how many of its exchanges were not made.
    fn outcome(&self) -> (Vec<String>, usize) {
        let s = self.script.lock().unwrap();
        (s.problems.clone(), s.exchanges.len())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection, one exchange. Every answer closes the connection (so ureq never
/// reuses one, nor retries on one); a mismatch or `network_error` closes it unanswered.
fn serve(mut stream: TcpStream, script: &Mutex<Script>, tokens: &BTreeMap<String, String>) {
    let request = read_request(&stream);
    let mut s = script.lock().unwrap();
    let request = match request {
        Ok(r) => r,
        Err(e) => return s.problems.push(format!("an unreadable request: {e}")),
    };
    let what = format!("{} {}", request.method, request.target);
    let Some(exchange) = s.exchanges.pop_front() else { return s.problems.push(format!("unexpected request {what}")) };
    let problems = compare(&exchange["request"], &request, tokens);
    if !problems.is_empty() {
        return s.problems.push(format!("{what}: {}", problems.join("; ")));
    }
    drop(s);
    let res = &exchange["response"];
    if res.get("network_error").is_some() {
        return; // dropping the stream: no answer at all
    }
    let (content_type, body) = match res["body_text"].as_str() {
        Some(text) => ("text/plain", text.to_owned()),
        None => ("application/json", res["body"].to_string()),
    };
    let mut head = format!(
        "HTTP/1.1 {} Scripted\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n",
        res["status"],
        body.len()
    );
    for (name, v) in res["headers"].as_object().into_iter().flatten() {
        head.push_str(&format!("{name}: {}\r\n", v.as_str().unwrap_or_default()));
    }
    let _ = stream.write_all(format!("{head}\r\n{body}").as_bytes());
}

fn read_request(stream: &TcpStream) -> std::io::Result<Request> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace().map(str::to_owned);
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let Some((name, v)) = line.trim_end().split_once(':') else { break };
        headers.push((name.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len = headers.iter().find(|(n, _)| n == "content-length").map_or(Ok(0), |(_, v)| v.parse());
    let mut body = vec![0; len.map_err(|e| std::io::Error::other(format!("content-length: {e}")))?];
    r.read_exact(&mut body)?;
    Ok(Request { method, target, headers, body })
}

/// How `got` differs from the exchange's `request` (README, "what the engine must send").
fn compare(want: &Value, got: &Request, tokens: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    if want["method"] != got.method.as_str() {
        problems.push(format!("method {}, expected {}", got.method, want["method"]));
    }
    let (path, query) = got.target.split_once('?').unwrap_or((&got.target, ""));
    if want["path"] != path {
        problems.push(format!("path {path}, expected {}", want["path"]));
    }
    let mut params = Map::new();
    for (name, v) in form_urlencoded::parse(query.as_bytes()) {
        if params.insert(name.to_string(), v.into_owned().into()).is_some() {
            problems.push(format!("query parameter {name} given twice"));
        }
    }
    let params = Value::Object(params);
    if params != *want.get("query").unwrap_or(&json!({})) {
        problems.push(format!("query {params}, expected {}", want.get("query").unwrap_or(&json!({}))));
    }
    if let Some(label) = want.get("token") {
        let bearer = |t: &String| format!("Bearer {t}");
        let auth = got.headers.iter().find(|(n, _)| n == "authorization").map(|(_, v)| v.clone());
        if auth != label.as_str().and_then(|l| tokens.get(l)).map(bearer) {
            let sent = tokens.iter().find(|(_, t)| auth == Some(bearer(t))).map(|(l, _)| l.clone());
            problems.push(format!("token {}, expected {label}", sent.or(auth).unwrap_or("none".into())));
        }
    }
    if let Some(pattern) = want.get("body") {
        let body = (!got.body.is_empty()).then(|| serde_json::from_slice::<Value>(&got.body));
        match body.transpose() {
            Ok(body) => problems.extend(mismatch(pattern, body.as_ref(), "body")),
            Err(e) => problems.push(format!("the body is not JSON: {e}")),
        }
    }
    problems
}
