//! Test harness for the integration tests: find the running stack, mint tokens,
//! make HTTP requests through the real gateway and functions.
//!
//! The stack is the one `cargo xtask test` starts (its directory is in
//! `EDGESYNC_STACK_DIR`); against `cargo xtask stack up` run
//! `EDGESYNC_STACK_DIR=target/stack cargo test -p edgesync-integration`.

pub mod background;
pub mod faults;
pub mod neo4j_standin;

pub use postgres;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
pub use xtask;
pub use xtask::keys;
pub use xtask::stack::{self, StackInfo};

/// Tests that stop or change shared parts of the stack hold this lock, so the tests
/// of one binary that run in parallel do not see each other's outages.
pub static STACK_LOCK: Mutex<()> = Mutex::new(());

/// Hold the lock even if a previous holder panicked.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    STACK_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The stack's local model's vectors for `texts`, asked directly (1536 wide).
pub fn embed_locally(info: &StackInfo, texts: &[String]) -> Vec<Vec<f32>> {
    let a = call(
        "POST",
        &format!("{}/embeddings", info.embeddings_url),
        None,
        Some(&serde_json::json!({"input": texts, "model": stack::LOCAL_EMBEDDINGS_MODEL})),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    a.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| d["embedding"].as_array().expect("embedding").iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect()
}

/// While alive, the stack's webhook relay is stopped: webhooks are dropped, as when
/// pg_net fails. Tests of the Cron path, and of the job table without a Worker racing
/// them, hold one (with [`exclusive`]). Dropping it starts the relay again.
pub struct RelayStopped(StackInfo);

impl RelayStopped {
    pub fn new(info: &StackInfo) -> RelayStopped {
        let mut info = info.clone();
        info.stop_relay().unwrap_or_else(|e| panic!("stop the relay: {e}"));
        RelayStopped(info)
    }
}

impl Drop for RelayStopped {
    fn drop(&mut self) {
        if let Err(e) = self.0.start_relay() {
            eprintln!("could not restart the webhook relay: {e}");
        }
    }
}

/// The Neo4j Query API stand-in, started once per test process on the port the stack
/// gave the populate Worker as `NEO4J_URL`, with the stack's Neo4j credentials.
pub fn neo4j(info: &StackInfo) -> std::sync::Arc<neo4j_standin::Neo4jStandin> {
    static SERVER: std::sync::OnceLock<std::sync::Arc<neo4j_standin::Neo4jStandin>> = std::sync::OnceLock::new();
    SERVER
        .get_or_init(|| {
            neo4j_standin::Neo4jStandin::start(info.ports.neo4j, &info.neo4j_user, &info.neo4j_password)
                .unwrap_or_else(|e| panic!("serve the Neo4j stand-in on {}: {e}", info.ports.neo4j))
        })
        .clone()
}

/// The running stack. Panics with instructions when there is none: an integration
/// test that silently passed without a stack would prove nothing.
pub fn stack() -> StackInfo {
    let dir = std::env::var_os("EDGESYNC_STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("EDGESYNC_STACK_DIR is not set: run these tests with `cargo xtask test`"));
    // Relative to the workspace root, not to this crate's directory.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    let info = stack::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        info.all_alive(),
        "the stack in {} is not running:\n{}",
        dir.display(),
        stack::status(&dir).unwrap_or_default()
    );
    info
}

/// A valid HS256 user token (like a legacy Supabase project's).
pub fn user_token(info: &StackInfo, sub: &str) -> String {
    keys::sign_hs256(&info.jwt_secret, &keys::user_claims(sub, &info.jwt_issuer, 3600)).unwrap()
}

/// A valid ES256 user token, verified by the functions through the JWKS endpoint.
pub fn user_token_es256(info: &StackInfo, sub: &str) -> String {
    keys::sign_es256(&info.es256_key, &keys::user_claims(sub, &info.jwt_issuer, 3600)).unwrap()
}

/// An HTTP answer: status, parsed JSON body (Null when not JSON), and headers we check.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub request_id: Option<String>,
    pub content_type: Option<String>,
    pub www_authenticate: Option<String>,
    pub allow: Option<String>,
    pub retry_after: Option<String>,
}

impl Answer {
    /// Assert the standard JSON error shape with `status` and `code`, and return it.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> &Value {
        assert_eq!(self.status, status, "body: {}", self.text);
        let err = &self.body["error"];
        assert_eq!(err["code"], code, "body: {}", self.text);
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()), "error without message: {}", self.text);
        let rid = err["request_id"].as_str().expect("error without request_id");
        assert_eq!(Some(rid), self.request_id.as_deref(), "request id in body and header differ");
        assert!(
            self.content_type.as_deref().is_some_and(|c| c.starts_with("application/json")),
            "{:?}",
            self.content_type
        );
        err
    }
}

/// Make a request; `token` becomes `Authorization: Bearer <token>`.
pub fn call(method: &str, url: &str, token: Option<&str>, body: Option<&Value>) -> Answer {
    call_with_headers(method, url, token.map(|t| ("authorization", format!("Bearer {t}"))).as_slice(), body)
}

#[allow(clippy::result_large_err)]
pub fn call_with_headers(method: &str, url: &str, headers: &[(&str, String)], body: Option<&Value>) -> Answer {
    send(method, url, headers, |req| match body {
        Some(b) => req.send_json(b.clone()),
        None => req.call(),
    })
}

/// A request whose body is sent exactly as given (malformed JSON, another content
/// type), with the `content-type` from `headers`.
#[allow(clippy::result_large_err)]
pub fn call_raw(method: &str, url: &str, headers: &[(&str, String)], body: &str) -> Answer {
    send(method, url, headers, |req| req.send_string(body))
}

// ureq's own Result type; its error is large by design.
#[allow(clippy::result_large_err)]
fn send(
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    go: impl FnOnce(xtask::ureq::Request) -> Result<xtask::ureq::Response, xtask::ureq::Error>,
) -> Answer {
    let agent = xtask::ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
    let mut req = agent.request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match go(req) {
        Ok(r) => r,
        Err(xtask::ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: no HTTP answer: {e}"),
    };
    let status = resp.status();
    let header = |name: &str| resp.header(name).map(str::to_owned);
    let (request_id, content_type, www_authenticate, allow, retry_after) = (
        header("x-request-id"),
        header("content-type"),
        header("www-authenticate"),
        header("allow"),
        header("retry-after"),
    );
    let text = resp.into_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer { status, body, text, request_id, content_type, www_authenticate, allow, retry_after }
}

/// Poll until `check` holds, up to `timeout` (a readiness check, not a sleep).
#[track_caller]
pub fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A superuser connection to the stack's Postgres, for what HTTP cannot do (hold a
/// transaction open, look at the server's tables directly).
pub fn db(info: &StackInfo) -> postgres::Client {
    postgres::Client::connect(&info.database_url, postgres::NoTls)
        .unwrap_or_else(|e| panic!("connect to Postgres: {e}"))
}

/// Wait until `user`'s populate from `source` holds its lease (a run is under way), as
/// the database shows it: the readiness check for tests that call while one runs.
pub fn wait_for_populate_lease(info: &StackInfo, user: &str, source: &str) {
    let mut db = db(info);
    eventually("the populate call to take its lease", Duration::from_secs(20), || {
        db.query_one(
            "select coalesce(bool_or(status = 'syncing' and lease_until > now()), false) from public.sync_state
              where user_id = $1::text::uuid and source = $2",
            &[&user, &source],
        )
        .unwrap()
        .get(0)
    });
}

/// A fresh random UUID (a new user, client or row).
pub fn uuid() -> String {
    keys::random_uuid()
}

/// The `edgesync-client` CLI binary (`cargo xtask test` builds it and says where).
pub fn cli_bin() -> PathBuf {
    let path = std::env::var_os("EDGESYNC_CLIENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/edgesync-client"));
    assert!(path.exists(), "{} is missing: build it with `cargo build -p edgesync-client`", path.display());
    path
}

/// A fresh user: (user id, HS256 token).
pub fn new_user(info: &StackInfo) -> (String, String) {
    let id = uuid();
    let token = user_token(info, &id);
    (id, token)
}

/// The sync position of the current transaction, the version its synced rows get
/// (taken now if it has none; on a plain connection: of a new transaction, which is
/// above every position committed before it). A transaction holding one holds the
/// pull watermark until it ends.
pub fn current_position(db: &mut impl postgres::GenericClient) -> u64 {
    db.query_one("select edgesync.sync_position()::text", &[]).unwrap().get::<_, String>(0).parse().unwrap()
}

/// The version (`_txid`) of a row of `entries`.
pub fn entry_txid(db: &mut impl postgres::GenericClient, id: &str) -> u64 {
    db.query_one("select _txid::text from public.entries where id = $1::text::uuid", &[&id])
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap()
}

/// The last op_id `/upload` applied for `client_id`.
pub fn last_op_id(db: &mut postgres::Client, client_id: &str) -> i64 {
    db.query_one("select last_op_id from edgesync.clients where client_id = $1::text::uuid", &[&client_id])
        .unwrap()
        .get(0)
}

/// Columns `/sync` never sends.
pub const HIDDEN_COLUMNS: &str = "{_txid,_writer,embedding,embedding_model,embedding_hash}";

/// What the server holds for `user_id` in `table`: live rows as `/sync` would send
/// them, and the ids of tombstones.
pub fn server_state(
    db: &mut postgres::Client,
    table: &str,
    user_id: &str,
) -> (BTreeMap<String, Value>, BTreeSet<String>) {
    let sql = format!(
        "select id::text, (to_jsonb(t) - '{HIDDEN_COLUMNS}'::text[])::text, deleted_at is not null
           from public.{table} t where user_id = $1::text::uuid"
    );
    let mut live = BTreeMap::new();
    let mut dead = BTreeSet::new();
    for row in db.query(sql.as_str(), &[&user_id]).unwrap() {
        let id: String = row.get(0);
        if row.get::<_, bool>(2) {
            dead.insert(id);
        } else {
            live.insert(id, serde_json::from_str(row.get::<_, &str>(1)).unwrap());
        }
    }
    (live, dead)
}

/// Rows keyed by their `id` (to compare a device's table with `server_state`).
pub fn by_id(rows: Vec<Value>) -> BTreeMap<String, Value> {
    rows.into_iter().map(|r| (r["id"].as_str().expect("a row without id").to_owned(), r)).collect()
}

/// A client's replica built only from `/sync` pages, the way a device builds it.
pub struct Replica {
    pub functions_url: String,
    pub token: String,
    /// `tables=` value, or None for every table.
    pub tables: Option<String>,
    pub cursor: Option<String>,
    /// The last page's `checkpoint`.
    pub checkpoint: u64,
    /// (table, id) -> row.
    pub rows: BTreeMap<(String, String), Value>,
    /// Every (table, id) a page ever delivered as upserted or deleted, with how often.
    pub deliveries: u64,
}

impl Replica {
    pub fn new(info: &StackInfo, token: &str, tables: Option<&str>) -> Replica {
        Replica {
            functions_url: info.functions_url.clone(),
            token: token.to_owned(),
            tables: tables.map(str::to_owned),
            cursor: None,
            checkpoint: 0,
            rows: BTreeMap::new(),
            deliveries: 0,
        }
    }

    /// Pull one page and apply it; returns the raw answer.
    #[track_caller]
    pub fn pull(&mut self, limit: u32) -> Answer {
        let mut url = format!("{}/sync?limit={limit}", self.functions_url);
        if let Some(t) = &self.tables {
            url.push_str(&format!("&tables={t}"));
        }
        if let Some(c) = &self.cursor {
            url.push_str(&format!("&since={c}"));
        }
        let answer = call("GET", &url, Some(&self.token), None);
        assert_eq!(answer.status, 200, "{}", answer.text);
        for (table, change) in answer.body["changes"].as_object().expect("changes") {
            for row in change["upserted"].as_array().expect("upserted") {
                let id = row["id"].as_str().expect("id").to_owned();
                self.rows.insert((table.clone(), id), row.clone());
                self.deliveries += 1;
            }
            for id in change["deleted"].as_array().expect("deleted") {
                self.rows.remove(&(table.clone(), id.as_str().expect("deleted id").to_owned()));
                self.deliveries += 1;
            }
        }
        self.cursor = Some(answer.body["cursor"].as_str().expect("cursor").to_owned());
        self.checkpoint = answer.body["checkpoint"].as_str().and_then(|c| c.parse().ok()).expect("checkpoint");
        answer
    }

    /// Pull until a page says there is no more; returns the number of pages.
    pub fn drain(&mut self, limit: u32) -> usize {
        let mut pages = 0;
        loop {
            pages += 1;
            if !self.pull(limit).body["has_more"].as_bool().expect("has_more") {
                return pages;
            }
        }
    }

    /// Pull until the replica has caught up with `checkpoint` (a write checkpoint from
    /// `/upload`, or one past a sync position).
    pub fn catch_up(&mut self, checkpoint: u64, limit: u32) {
        eventually("the pull to reach the checkpoint", Duration::from_secs(30), || {
            self.drain(limit);
            self.checkpoint >= checkpoint
        });
    }

    /// The replica's live rows of `table`.
    pub fn table(&self, table: &str) -> BTreeMap<String, Value> {
        self.rows.iter().filter(|((t, _), _)| t == table).map(|((_, id), row)| (id.clone(), row.clone())).collect()
    }
}

/// A PUT mutation (PowerSync `CrudEntry` shape; `tx_id` = `op_id`).
pub fn put(op_id: u64, table: &str, id: &str, data: Value) -> Value {
    serde_json::json!({"op_id": op_id, "op": "PUT", "type": table, "id": id, "tx_id": op_id, "data": data})
}

/// A PATCH mutation.
pub fn patch(op_id: u64, table: &str, id: &str, data: Value) -> Value {
    serde_json::json!({"op_id": op_id, "op": "PATCH", "type": table, "id": id, "data": data})
}

/// A DELETE mutation.
pub fn delete(op_id: u64, table: &str, id: &str) -> Value {
    serde_json::json!({"op_id": op_id, "op": "DELETE", "type": table, "id": id})
}

/// `POST /upload` of `mutations` for `client_id`.
pub fn upload(info: &StackInfo, token: &str, client_id: &str, mutations: Value) -> Answer {
    call(
        "POST",
        &format!("{}/upload", info.functions_url),
        Some(token),
        Some(&serde_json::json!({ "client_id": client_id, "mutations": mutations })),
    )
}

/// How [`call_raw_http`] sends a body.
#[derive(Debug, Clone, Copy)]
pub enum RawBody<'a> {
    None,
    /// With a truthful `Content-Length`.
    Sized(&'a [u8]),
    /// `Transfer-Encoding: chunked`, no `Content-Length`.
    Chunked(&'a [u8]),
}

/// A request written on a fresh connection exactly as given — repeated headers, huge
/// headers, a chunked body — which ureq will not send. `Host` and `Connection: close`
/// are added. Err when the server closed the connection without a whole answer.
pub fn call_raw_http(method: &str, url: &str, headers: &[(&str, String)], body: RawBody) -> Result<Answer, String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("not an http:// URL: {url}"))?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let mut stream = std::net::TcpStream::connect(authority).map_err(|e| format!("connect {authority}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;

    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let mut payload = Vec::new();
    match body {
        RawBody::None => {}
        RawBody::Sized(b) => {
            head.push_str(&format!("content-length: {}\r\n", b.len()));
            payload.extend_from_slice(b);
        }
        RawBody::Chunked(b) => {
            head.push_str("transfer-encoding: chunked\r\n");
            for chunk in b.chunks(64 * 1024) {
                payload.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                payload.extend_from_slice(chunk);
                payload.extend_from_slice(b"\r\n");
            }
            payload.extend_from_slice(b"0\r\n\r\n");
        }
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(&payload);

    // Write from another thread: a server may answer (413, 431) before reading it all.
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let sending = std::thread::spawn(move || {
        let _ = writer.write_all(&request);
        let _ = writer.flush();
    });
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let answer = loop {
        if let Some(answer) = parse_raw_answer(&received) {
            break Ok(answer);
        }
        match stream.read(&mut buf) {
            Ok(0) => break Err(format!("{method} {url}: connection closed after {} bytes", received.len())),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) => break Err(format!("{method} {url}: {e} after {} bytes", received.len())),
        }
    };
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = sending.join();
    answer
}

/// A whole HTTP/1.1 answer from the bytes received so far, or None if more must come.
fn parse_raw_answer(bytes: &[u8]) -> Option<Answer> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]);
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let rest = &bytes[end + 4..];
    let body = if header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let line_end = at + rest[at..].windows(2).position(|w| w == b"\r\n")?;
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[at..line_end]).trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                break out;
            }
            out.extend_from_slice(rest.get(at..at + size)?);
            at += size + 2;
        }
    } else {
        match header("content-length").and_then(|l| l.parse::<usize>().ok()) {
            Some(len) => rest.get(..len)?.to_vec(),
            None => return None,
        }
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    Some(Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
        request_id: header("x-request-id"),
        content_type: header("content-type"),
        www_authenticate: header("www-authenticate"),
        allow: header("allow"),
        retry_after: header("retry-after"),
    })
}

/// PostgREST's request log (`<logs_dir>/postgrest.log`; the stack runs it at `info`,
/// one line per request), read between markers: requests only the marker makes (a
/// fresh path, answered 404), so a count does not depend on how soon a line is
/// written. Only meaningful while no other test of the binary talks to PostgREST
/// (hold [`exclusive`]) and the webhook relay is stopped ([`RelayStopped`]).
pub struct PostgrestLog {
    path: PathBuf,
    postgrest_url: String,
}

impl PostgrestLog {
    pub fn new(info: &StackInfo) -> PostgrestLog {
        PostgrestLog { path: info.logs_dir.join("postgrest.log"), postgrest_url: info.postgrest_url.clone() }
    }

    fn lines(&self) -> Vec<String> {
        let bytes = std::fs::read(&self.path).unwrap_or_else(|e| panic!("read {}: {e}", self.path.display()));
        String::from_utf8_lossy(&bytes).lines().map(str::to_owned).collect()
    }

    /// Make a marker request, wait until PostgREST has logged it, and return the
    /// number of log lines up to and including it: a position for [`Self::requests_since`].
    pub fn mark(&self) -> usize {
        let marker = format!("edgesync_log_marker_{}", uuid().replace('-', ""));
        let a = call("GET", &format!("{}/{marker}", self.postgrest_url), None, None);
        assert!(a.status < 500, "PostgREST answered the marker with {}: {}", a.status, a.text);
        let mut at = None;
        eventually("PostgREST to log the marker request", Duration::from_secs(10), || {
            at = self.lines().iter().position(|l| l.contains(&marker));
            at.is_some()
        });
        at.unwrap() + 1
    }

    /// The request lines PostgREST logged after position `from` (from [`Self::mark`]),
    /// up to a new marker; marker requests themselves are left out.
    pub fn requests_since(&self, from: usize) -> Vec<String> {
        let to = self.mark();
        self.lines()[from..to]
            .iter()
            .filter(|l| l.contains(" HTTP/1.") && !l.contains("edgesync_log_marker_"))
            .cloned()
            .collect()
    }
}

/// What a finished child process said.
pub struct Finished {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run `cmd` to its end with its output captured (read while it runs, so a full pipe
/// never stalls it); past `timeout`, kill it and fail, naming `what`.
pub fn run_to_end(cmd: &mut std::process::Command, timeout: Duration, what: &str) -> Finished {
    use std::io::Read;
    use std::process::Stdio;
    let started = std::time::Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} took longer than {timeout:?}; stderr:\n{}", err.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Finished { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}
