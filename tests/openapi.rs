//! `openapi.yaml` against the real stack: the gateway serves it as `/openapi.json`
//! (equal to the YAML), and real responses of every endpoint — successes and every
//! error status the stack can be made to give — have a status the operation
//! documents, the documented headers, and a body valid against the documented schema
//! (OpenAPI 3.1 schemas are JSON Schema 2020-12; `$ref`s resolve into `components`).

use edgesync_integration::neo4j_standin::{Fault, Graph};
use edgesync_integration::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// An answer with every header (lowercase names).
#[derive(Debug)]
struct Resp {
    method: String,
    path: String,
    status: u16,
    headers: BTreeMap<String, String>,
    text: String,
    body: Value,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

#[allow(clippy::result_large_err)]
fn send(info: &StackInfo, method: &str, path: &str, headers: &[(&str, String)], body: Option<&[u8]>) -> Resp {
    let url = format!("{}{path}", info.functions_url);
    let agent = xtask::ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
    let mut req = agent.request(method, &url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(xtask::ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: no HTTP answer: {e}"),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .filter_map(|n| resp.header(&n).map(|v| (n.to_ascii_lowercase(), v.to_owned())))
        .collect();
    let text = resp.into_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    let path = path.split('?').next().unwrap_or_default().to_owned();
    Resp { method: method.to_owned(), path, status, headers, text, body }
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

fn json_type() -> (&'static str, String) {
    ("content-type", "application/json".to_owned())
}

/// A JSON request with an optional bearer token.
fn call_json(info: &StackInfo, method: &str, path: &str, token: Option<&str>, body: &Value) -> Resp {
    let mut headers = vec![json_type()];
    headers.extend(token.map(bearer));
    send(info, method, path, &headers, Some(body.to_string().as_bytes()))
}

fn get(info: &StackInfo, path: &str, token: Option<&str>) -> Resp {
    let headers: Vec<_> = token.map(bearer).into_iter().collect();
    send(info, "GET", path, &headers, None)
}

/// The document, and which (method, path, status) were checked against it.
struct Spec {
    doc: Value,
    seen: Mutex<BTreeSet<(String, String, u16)>>,
}

fn spec(info: &StackInfo) -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let yaml_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi.yaml");
        let yaml = std::fs::read_to_string(&yaml_path).unwrap();
        let from_yaml: Value = serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("openapi.yaml: {e}"));
        let served = get(info, "/openapi.json", None);
        assert_eq!(served.status, 200, "{}", served.text);
        assert_eq!(served.header("content-type"), Some("application/json"));
        assert_eq!(served.body, from_yaml, "/openapi.json differs from openapi.yaml: rebuild the gateway");
        assert_eq!(from_yaml["openapi"], "3.1.0");
        let spec = Spec { doc: from_yaml, seen: Mutex::new(BTreeSet::new()) };
        // The validator is not vacuous: `$ref`s resolve and closed objects are closed.
        let error = json!({"$ref": "#/components/schemas/Error"});
        assert!(!spec.validate(&error, &json!({"error": {}})).is_empty());
        assert!(!spec
            .validate(
                &error,
                &json!({"error": {"code": "x", "message": "m", "details": null, "request_id": "r", "extra": 1}})
            )
            .is_empty());
        assert!(spec
            .validate(&error, &json!({"error": {"code": "x", "message": "m", "details": null, "request_id": "r"}}))
            .is_empty());
        // Every request example is valid input.
        for (path, item) in spec.doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for (name, media) in op["requestBody"]["content"].as_object().into_iter().flatten() {
                    for (example, e) in media["examples"].as_object().into_iter().flatten() {
                        let problems = spec.validate(&media["schema"], &e["value"]);
                        assert!(problems.is_empty(), "{method} {path} {name} example {example}: {problems:?}");
                    }
                }
            }
        }
        spec.check(&served);
        spec
    })
}

impl Spec {
    /// Follow a `$ref` (`#/components/...`) to what it names.
    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("only local $refs: {r}"));
                self.resolve(self.doc.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref {r}")))
            }
            None => v,
        }
    }

    /// Problems of `instance` against `schema` (which may `$ref` into the components).
    fn validate(&self, schema: &Value, instance: &Value) -> Vec<String> {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"],
            "allOf": [schema],
        });
        let validator = jsonschema::draft202012::new(&root).unwrap_or_else(|e| panic!("bad schema {schema}: {e}"));
        validator.iter_errors(instance).map(|e| format!("{} (at {})", e, e.instance_path())).collect()
    }

    /// The response object documented for this answer; panics when there is none.
    fn response_for(&self, r: &Resp) -> &Value {
        let op = &self.doc["paths"][&r.path][r.method.to_ascii_lowercase()];
        if op.is_object() {
            let documented = &op["responses"][r.status.to_string()];
            assert!(
                documented.is_object(),
                "{} {} answered {}, which the operation does not document: {}",
                r.method,
                r.path,
                r.status,
                r.text
            );
            self.resolve(documented)
        } else {
            assert!(self.doc["paths"][&r.path].is_object(), "{} is not a documented path", r.path);
            // A method the path does not have: the documented 405.
            assert_eq!(
                r.status, 405,
                "{} {} is not an operation, yet it answered {}: {}",
                r.method, r.path, r.status, r.text
            );
            self.resolve(&self.doc["components"]["responses"]["MethodNotAllowed"])
        }
    }

    /// Check status, headers and body against the document.
    #[track_caller]
    fn check(&self, r: &Resp) {
        let response = self.response_for(r);
        let what = format!("{} {} -> {}", r.method, r.path, r.status);
        for (name, header) in response["headers"].as_object().into_iter().flatten() {
            let header = self.resolve(header);
            match r.header(&name.to_ascii_lowercase()) {
                None => assert!(header["required"] != true, "{what}: header {name} is required but missing"),
                Some(value) => {
                    let problems = self.validate(&header["schema"], &json!(value));
                    assert!(problems.is_empty(), "{what}: header {name}: {value:?}: {problems:?}");
                }
            }
        }
        match response["content"].as_object() {
            Some(content) => {
                let ct = r.header("content-type").unwrap_or_else(|| panic!("{what}: no content-type"));
                let essence = ct.split(';').next().unwrap_or_default().trim();
                let media =
                    content.get(essence).unwrap_or_else(|| panic!("{what}: content-type {ct} is not documented"));
                assert!(!r.body.is_null() || r.text.trim() == "null", "{what}: the body is not JSON: {:?}", r.text);
                let problems = self.validate(&media["schema"], &r.body);
                assert!(problems.is_empty(), "{what}: body {}\ndoes not match the schema: {problems:#?}", r.text);
                if r.status >= 400 {
                    assert_eq!(
                        r.body["error"]["request_id"].as_str(),
                        r.header("x-request-id"),
                        "{what}: request ids of body and header differ"
                    );
                }
            }
            None => assert!(r.text.is_empty(), "{what}: no body is documented, got {:?}", r.text),
        }
        self.seen.lock().unwrap().insert((r.method.clone(), r.path.clone(), r.status));
    }

    /// [`Spec::check`], also asserting the status (and the error code, for errors).
    #[track_caller]
    fn expect(&self, r: Resp, status: u16, code: Option<&str>) -> Resp {
        assert_eq!(r.status, status, "{} {}: {}", r.method, r.path, r.text);
        if let Some(code) = code {
            assert_eq!(r.code(), code, "{} {}: {}", r.method, r.path, r.text);
        }
        self.check(&r);
        r
    }
}

/// Every endpoint's successes and errors, then: every documented operation was
/// exercised with a 2xx answer, and every operation but the public ones with an error.
/// One test, so the record of what was checked is complete when it is judged.
#[test]
fn real_answers_match_the_document() {
    let info = stack();
    let s = spec(&info);
    openapi_document(&info, s);
    health(&info, s);
    sync(&info, s);
    upload(&info, s);
    populate(&info, s);
    embed_entry_and_drain(&info, s);
    search(&info, s);
    live(&info, s);
    powersync(&info, s);

    let seen = s.seen.lock().unwrap().clone();
    let mut missing = Vec::new();
    for (path, item) in s.doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let method = method.to_ascii_uppercase();
            let statuses: Vec<u16> =
                seen.iter().filter(|(m, p, _)| *m == method && p == path).map(|(_, _, st)| *st).collect();
            // A WebSocket's success is 101 Switching Protocols.
            if !statuses.iter().any(|st| (200..300).contains(st) || *st == 101) {
                missing.push(format!("{method} {path}: no 2xx"));
            }
            let public = path == "/health" || path == "/openapi.json";
            if !public && !statuses.iter().any(|st| *st >= 400) {
                missing.push(format!("{method} {path}: no error"));
            }
        }
    }
    assert!(missing.is_empty(), "not exercised: {missing:#?}");
    eprintln!("checked against openapi.yaml: {seen:?}");
}

fn openapi_document(info: &StackInfo, s: &Spec) {
    s.expect(get(info, "/openapi.json", None), 200, None);
    s.expect(send(info, "HEAD", "/openapi.json", &[], None), 200, None);
    for method in ["POST", "DELETE", "QUERY"] {
        let r = s.expect(send(info, method, "/openapi.json", &[], None), 405, Some("method_not_allowed"));
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
}

fn health(info: &StackInfo, s: &Spec) {
    let r = s.expect(get(info, "/health", None), 200, None);
    // Degraded when earlier tests left embedding jobs failed; the document covers both.
    assert!(r.body["status"] == "ok" || r.body["status"] == "degraded", "{}", r.text);
    s.expect(send(info, "HEAD", "/health", &[], None), 200, None);
    let r = s.expect(send(info, "GET", "/health", &[("x-request-id", "trace-me_1".into())], None), 200, None);
    assert_eq!(r.header("x-request-id"), Some("trace-me_1"));
    let r = s.expect(send(info, "GET", "/health", &[("x-request-id", "no spaces".into())], None), 200, None);
    assert_ne!(r.header("x-request-id"), Some("no spaces"));
    for method in ["POST", "PUT", "DELETE", "OPTIONS", "QUERY"] {
        let r = s.expect(send(info, method, "/health", &[], None), 405, Some("method_not_allowed"));
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
}

/// `POST /sync/stream` as a PowerSync SDK sends it: a stream that does not end, so
/// only its headers and first line are read (an error answer is read whole).
fn stream_head(info: &StackInfo, headers: &[(&str, String)], body: &[u8]) -> Resp {
    use std::io::BufRead;
    let url = format!("{}/sync/stream", info.functions_url);
    let agent = xtask::ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
    let mut req = agent.post(&url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match req.send_bytes(body) {
        Ok(r) => r,
        Err(xtask::ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST {url}: no HTTP answer: {e}"),
    };
    let status = resp.status();
    let headers: BTreeMap<String, String> = resp
        .headers_names()
        .into_iter()
        .filter_map(|n| resp.header(&n).map(|v| (n.to_ascii_lowercase(), v.to_owned())))
        .collect();
    let mut text = String::new();
    if status == 200 {
        std::io::BufReader::new(resp.into_reader()).read_line(&mut text).unwrap();
    } else {
        text = resp.into_string().unwrap_or_default();
    }
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp { method: "POST".into(), path: "/sync/stream".into(), status, headers, text, body }
}

fn powersync(info: &StackInfo, s: &Spec) {
    let (user, token) = new_user(info);
    let scheme = |t: &str| ("authorization", format!("Token {t}"));
    let body = json!({"buckets": [], "include_checksum": true, "raw_data": true, "client_id": "c"}).to_string();
    let r = s.expect(stream_head(info, &[scheme(&token), json_type()], body.as_bytes()), 200, None);
    assert!(r.body["checkpoint"]["buckets"].as_array().is_some_and(|b| !b.is_empty()), "{}", r.text);
    assert_eq!(r.header("cache-control"), Some("no-store, no-transform"));
    // Bearer works as well; bad credentials are refused before any stream starts.
    s.expect(stream_head(info, &[bearer(&token), json_type()], body.as_bytes()), 200, None);
    s.expect(stream_head(info, &[json_type()], body.as_bytes()), 401, Some("missing_token"));
    s.expect(
        stream_head(info, &[("authorization", format!("Basic {token}")), json_type()], body.as_bytes()),
        401,
        Some("invalid_token"),
    );
    let expired = keys::sign_hs256(&info.jwt_secret, &keys::user_claims(&user, &info.jwt_issuer, -3600)).unwrap();
    s.expect(stream_head(info, &[scheme(&expired), json_type()], body.as_bytes()), 401, Some("invalid_token"));
    s.expect(
        stream_head(info, &[scheme(&info.service_role_key), json_type()], body.as_bytes()),
        403,
        Some("user_required"),
    );
    s.expect(stream_head(info, &[scheme(&info.anon_key), json_type()], body.as_bytes()), 403, Some("forbidden_role"));
    // Malformed, hostile and oversized bodies.
    s.expect(stream_head(info, &[scheme(&token), json_type()], b"{not json"), 400, Some("invalid_json"));
    s.expect(stream_head(info, &[scheme(&token), json_type()], br#"{"buckets": 5}"#), 400, Some("invalid_request"));
    let after = json!({"buckets": [{"name": format!("entries:{user}"), "after": "-1"}]}).to_string();
    s.expect(stream_head(info, &[scheme(&token), json_type()], after.as_bytes()), 400, Some("invalid_request"));
    let many: Vec<Value> = (0..1001).map(|i| json!({"name": format!("t{i}:{user}"), "after": "0"})).collect();
    let many = json!({ "buckets": many }).to_string();
    s.expect(stream_head(info, &[scheme(&token), json_type()], many.as_bytes()), 400, Some("too_many_buckets"));
    let huge = format!(r#"{{"buckets": [], "parameters": {{"x": "{}"}}}}"#, "x".repeat(1024 * 1024));
    s.expect(stream_head(info, &[scheme(&token), json_type()], huge.as_bytes()), 413, Some("body_too_large"));
    s.expect(stream_head(info, &[scheme(&token)], body.as_bytes()), 415, Some("unsupported_media_type"));
    s.expect(send(info, "GET", "/sync/stream", &[scheme(&token)], None), 405, Some("method_not_allowed"));

    let r = s.expect(send(info, "GET", "/write-checkpoint2.json?client_id=c", &[scheme(&token)], None), 200, None);
    let first: u64 = r.body["data"]["write_checkpoint"].as_str().unwrap().parse().unwrap();
    let r = s.expect(send(info, "GET", "/write-checkpoint2.json", &[bearer(&token)], None), 200, None);
    let second: u64 = r.body["data"]["write_checkpoint"].as_str().unwrap().parse().unwrap();
    assert!(second > first, "every write checkpoint is new: {first} then {second}");
    s.expect(get(info, "/write-checkpoint2.json", None), 401, Some("missing_token"));
    s.expect(get(info, "/write-checkpoint2.json", Some(&info.service_role_key)), 403, Some("user_required"));
    s.expect(send(info, "POST", "/write-checkpoint2.json", &[scheme(&token)], None), 405, Some("method_not_allowed"));
}

/// A refused WebSocket handshake of `/live`: an upgrade request over plain HTTP, so the
/// whole error answer is read (a WebSocket client may stop at the headers).
fn live_refused(info: &StackInfo, headers: &[(&str, String)]) -> Resp {
    let mut all = vec![
        ("upgrade", "websocket".to_owned()),
        ("connection", "Upgrade".to_owned()),
        ("sec-websocket-version", "13".to_owned()),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==".to_owned()),
    ];
    all.extend(headers.iter().cloned());
    send(info, "GET", "/live", &all, None)
}

/// An accepted `/live` handshake (ureq cannot upgrade), as a `Resp`.
fn live_accepted(info: &StackInfo, headers: &[(&str, String)]) -> Resp {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("{}/live", info.functions_url.replacen("http://", "ws://", 1)).into_client_request().unwrap();
    for (k, v) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut().insert(name, v.parse().unwrap());
    }
    let (_, r) = tungstenite::connect(req).unwrap_or_else(|e| panic!("GET /live: {e}"));
    let headers = r
        .headers()
        .iter()
        .filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str().to_ascii_lowercase(), v.to_owned())))
        .collect();
    Resp {
        method: "GET".into(),
        path: "/live".into(),
        status: r.status().as_u16(),
        headers,
        text: String::new(),
        body: Value::Null,
    }
}

fn live(info: &StackInfo, s: &Spec) {
    let (user, token) = new_user(info);
    s.expect(get(info, "/live", Some(&token)), 426, Some("upgrade_required"));
    s.expect(live_refused(info, &[]), 401, Some("missing_token"));
    s.expect(live_refused(info, &[bearer("abc")]), 401, Some("invalid_token"));
    s.expect(live_refused(info, &[bearer(&info.service_role_key)]), 403, Some("user_required"));
    let r =
        s.expect(live_accepted(info, &[("sec-websocket-protocol", format!("edgesync, bearer.{token}"))]), 101, None);
    assert_eq!(r.header("sec-websocket-protocol"), Some("edgesync"));
    s.expect(live_accepted(info, &[bearer(&token)]), 101, None);

    let secret = ("x-live-secret", info.live_poke_secret.clone());
    let poke = json!({"checkpoint": "7", "users": [user]});
    let body = poke.to_string();
    s.expect(send(info, "POST", "/live/poke", &[json_type(), secret.clone()], Some(body.as_bytes())), 202, None);
    s.expect(send(info, "POST", "/live/poke", &[json_type()], Some(body.as_bytes())), 401, Some("invalid_poke_secret"));
    s.expect(send(info, "POST", "/live/poke", &[json_type(), secret.clone()], Some(b"{}")), 400, Some("invalid_poke"));
    s.expect(
        send(info, "POST", "/live/poke", std::slice::from_ref(&secret), Some(body.as_bytes())),
        415,
        Some("unsupported_media_type"),
    );
    s.expect(send(info, "GET", "/live/poke", &[secret], None), 405, Some("method_not_allowed"));
    let big = format!(r#"{{"checkpoint":"7","users":[],"x":"{}"}}"#, "y".repeat(70_000));
    s.expect(
        send(
            info,
            "POST",
            "/live/poke",
            &[json_type(), ("x-live-secret", info.live_poke_secret.clone())],
            Some(big.as_bytes()),
        ),
        413,
        Some("payload_too_large"),
    );
}

fn sync(info: &StackInfo, s: &Spec) {
    let (user, token) = new_user(info);
    let r = s.expect(get(info, "/sync", None), 401, Some("missing_token"));
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    s.expect(get(info, "/sync", Some("abc")), 401, Some("invalid_token"));
    let forged =
        keys::sign_hs256("another-secret-another-secret-another", &keys::user_claims(&user, &info.jwt_issuer, 60))
            .unwrap();
    s.expect(get(info, "/sync", Some(&forged)), 401, Some("invalid_token"));
    let expired = keys::sign_hs256(&info.jwt_secret, &keys::user_claims(&user, &info.jwt_issuer, -3600)).unwrap();
    s.expect(get(info, "/sync", Some(&expired)), 401, Some("invalid_token"));
    s.expect(get(info, "/sync", Some(&info.service_role_key)), 403, Some("user_required"));
    s.expect(get(info, "/sync", Some(&info.anon_key)), 403, Some("forbidden_role"));

    let r = s.expect(get(info, "/sync", Some(&token)), 200, None);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.body["has_more"], false);

    // Rows to page through.
    let client = uuid();
    let rows: Vec<String> = (0..3).map(|_| uuid()).collect();
    let muts: Vec<Value> = rows
        .iter()
        .enumerate()
        .map(|(i, id)| json!({"op_id": i + 1, "op": "PUT", "type": "entries", "id": id, "data": {"title": format!("row {i}"), "tags": ["a"]}}))
        .collect();
    let up = s.expect(
        call_json(info, "POST", "/upload", Some(&token), &json!({"client_id": client, "mutations": muts})),
        200,
        None,
    );
    let checkpoint: u64 = up.body["write_checkpoint"].as_str().unwrap().parse().unwrap();
    let mut replica = Replica::new(info, &token, Some("entries"));
    replica.catch_up(checkpoint, 1000);
    let r = s.expect(get(info, "/sync?tables=entries&limit=1", Some(&token)), 200, None);
    assert_eq!(r.body["has_more"], true);
    assert_eq!(r.body["changes"]["entries"]["upserted"].as_array().unwrap().len(), 1);
    let cursor = r.body["cursor"].as_str().unwrap().to_owned();
    let r = s.expect(get(info, &format!("/sync?tables=entries&limit=5000&since={cursor}"), Some(&token)), 200, None);
    assert_eq!(r.body["changes"]["entries"]["upserted"].as_array().unwrap().len(), 2);
    // A delete shows up as a tombstone.
    let del =
        json!({"client_id": client, "mutations": [{"op_id": 4, "op": "DELETE", "type": "entries", "id": rows[0]}]});
    let up = s.expect(call_json(info, "POST", "/upload", Some(&token), &del), 200, None);
    replica.catch_up(up.body["write_checkpoint"].as_str().unwrap().parse().unwrap(), 1000);
    let r = s.expect(get(info, "/sync?tables=entries", Some(&token)), 200, None);
    assert_eq!(r.body["changes"]["entries"]["deleted"], json!([rows[0]]));

    for (query, code) in [
        ("limit=0", "invalid_parameter"),
        ("limit=5001", "invalid_parameter"),
        ("limit=ten", "invalid_parameter"),
        ("sinse=x", "invalid_parameter"),
        ("limit=1&limit=2", "invalid_parameter"),
        ("tables=Entries", "invalid_parameter"),
        ("since=garbage", "invalid_cursor"),
        ("tables=no_such_table", "unknown_table"),
    ] {
        s.expect(get(info, &format!("/sync?{query}"), Some(&token)), 400, Some(code));
    }
    s.expect(get(info, &format!("/sync?since={cursor}"), Some(&token)), 400, Some("cursor_mismatch"));
    for method in ["POST", "DELETE", "QUERY"] {
        let r = s.expect(send(info, method, "/sync", &[bearer(&token)], None), 405, Some("method_not_allowed"));
        assert_eq!(r.header("allow"), Some("GET"));
    }

    // A purge after this cursor: 410 (this user's horizon only).
    let mut db = db(info);
    db.execute(
        "insert into edgesync.purge_horizons (user_id, horizon, purged_xid)
         values ($1::text::uuid, edgesync.sync_position(), edgesync.sync_position())",
        &[&user],
    )
    .unwrap();
    s.expect(get(info, &format!("/sync?tables=entries&since={cursor}"), Some(&token)), 410, Some("resync_required"));
}

fn upload(info: &StackInfo, s: &Spec) {
    let (user, token) = new_user(info);
    let (_, other_token) = new_user(info);
    let (a, b) = (uuid(), uuid());
    let row = uuid();
    let batch = |client: &str, muts: Value| json!({"client_id": client, "mutations": muts});
    let post = |token: Option<&str>, body: &Value| call_json(info, "POST", "/upload", token, body);

    let first = batch(
        &a,
        json!([{"op_id": 1, "op": "PUT", "type": "entries", "id": row, "tx_id": 1, "data": {"title": "first", "user_id": user}}]),
    );
    let r = s.expect(post(Some(&token), &first), 200, None);
    assert_eq!(r.body["results"], json!([{"op_id": 1, "status": "applied"}]));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let r = s.expect(post(Some(&token), &first), 200, None);
    assert_eq!(r.body["results"][0]["status"], "duplicate");

    // A conflict: client b changes the row after the cursor client a based its edit on.
    let mut replica = Replica::new(info, &token, Some("entries"));
    replica.catch_up(r.body["write_checkpoint"].as_str().unwrap().parse().unwrap(), 1000);
    let base = replica.cursor.clone().unwrap();
    s.expect(
        post(
            Some(&token),
            &batch(&b, json!([{"op_id": 1, "op": "PATCH", "type": "entries", "id": row, "opData": {"title": "b"}}])),
        ),
        200,
        None,
    );
    let r = s.expect(
        post(Some(&token), &batch(&a, json!([{"op_id": 2, "op": "PATCH", "type": "entries", "id": row, "data": {"title": "a"}, "base_cursor": base}]))),
        200,
        None,
    );
    assert_eq!(r.body["results"][0]["conflict"], true, "{}", r.text);
    assert_eq!(r.body["results"][0]["server_row"]["title"], "b");
    let r = s.expect(
        post(
            Some(&token),
            &batch(&a, json!([{"op_id": 3, "op": "PATCH", "type": "entries", "id": uuid(), "data": {"title": "x"}}])),
        ),
        200,
        None,
    );
    assert_eq!(r.body["results"][0]["status"], "conflict");

    // Errors.
    let raw = |ct: &str, body: &[u8]| {
        send(info, "POST", "/upload", &[bearer(&token), ("content-type", ct.into())], Some(body))
    };
    s.expect(raw("application/json", b"{"), 400, Some("invalid_json"));
    s.expect(raw("application/json", b"[]"), 400, Some("invalid_request"));
    s.expect(
        raw("application/json; charset=utf-8", br#"{"client_id": "x", "mutations": []}"#),
        400,
        Some("invalid_request"),
    );
    s.expect(raw("text/plain", b"{}"), 415, Some("unsupported_media_type"));
    s.expect(send(info, "POST", "/upload", &[bearer(&token)], None), 415, Some("unsupported_media_type"));
    let r = s.expect(
        post(Some(&token), &batch(&a, json!([{"op_id": 9, "op": "UPSERT", "type": "entries", "id": row}, "x"]))),
        400,
        Some("invalid_mutations"),
    );
    assert_eq!(r.body["error"]["details"]["errors"].as_array().unwrap().len(), 2);
    let r = s.expect(post(Some(&token), &batch(&a, json!([{"op_id": 9, "op": "PUT", "type": "entries", "id": row, "data": {"nope": 1, "embedding": "[1]"}}]))), 400, Some("invalid_mutations"));
    assert_eq!(r.body["error"]["details"]["errors"][0]["column"], "nope");
    s.expect(
        post(Some(&token), &batch(&a, json!([{"op_id": 9, "op": "PUT", "type": "no_such_table", "id": row}]))),
        400,
        Some("invalid_mutations"),
    );
    s.expect(
        post(
            Some(&token),
            &batch(
                &a,
                json!([{"op_id": 9, "op": "PUT", "type": "entries", "id": row, "data": {"start_at": "not a time"}}]),
            ),
        ),
        400,
        Some("invalid_value"),
    );
    s.expect(
        post(
            Some(&token),
            &batch(&a, json!([{"op_id": 9, "op": "PUT", "type": "entries", "id": row, "data": {"user_id": uuid()}}])),
        ),
        403,
        Some("user_id_mismatch"),
    );
    s.expect(post(Some(&other_token), &batch(&a, json!([]))), 403, Some("client_id_taken"));
    s.expect(
        post(Some(&other_token), &batch(&uuid(), json!([{"op_id": 1, "op": "PUT", "type": "entries", "id": row}]))),
        403,
        Some("forbidden_row"),
    );
    let key = format!("k-{}", uuid());
    s.expect(
        post(Some(&token), &batch(&a, json!([
            {"op_id": 10, "op": "PUT", "type": "sync_entities", "id": uuid(), "data": {"type": "person", "key": key}},
            {"op_id": 11, "op": "PUT", "type": "sync_entities", "id": uuid(), "data": {"type": "person", "key": key}}
        ]))),
        409,
        Some("unique_violation"),
    );
    let many: Vec<Value> =
        (1..=1001).map(|i| json!({"op_id": i, "op": "DELETE", "type": "entries", "id": row})).collect();
    s.expect(post(Some(&token), &batch(&a, Value::Array(many))), 413, Some("too_many_mutations"));
    let huge = vec![
        json!({"op_id": 1, "op": "PUT", "type": "entries", "id": row, "data": {"body_markdown": "x".repeat(4 * 1024 * 1024)}}),
    ];
    s.expect(post(Some(&token), &batch(&a, Value::Array(huge))), 413, Some("body_too_large"));
    s.expect(post(None, &batch(&a, json!([]))), 401, Some("missing_token"));
    s.expect(post(Some(&info.service_role_key), &batch(&a, json!([]))), 403, Some("user_required"));
    s.expect(get(info, "/upload", Some(&token)), 405, Some("method_not_allowed"));
    s.expect(
        send(info, "QUERY", "/upload", &[bearer(&token), json_type()], Some(b"{}")),
        405,
        Some("method_not_allowed"),
    );
}

fn populate(info: &StackInfo, s: &Spec) {
    let server = neo4j(info);
    let (user, token) = new_user(info);
    let post = |token: Option<&str>, body: &Value| call_json(info, "POST", "/populate", token, body);

    // Legacy records, each with a verdict.
    let records = json!([
        {"legacyId": "t-1", "legacyType": "task", "title": "Renew passport", "status": "open", "tags": ["admin"]},
        {"legacyId": 7, "legacyType": "note", "body": "a note", "createdAt": 1700000000},
        {"legacyId": "t-1", "legacyType": "task", "title": "again"},
        {"legacyId": "x", "legacyType": "journal"},
        "not a record"
    ]);
    let r = s.expect(post(Some(&token), &json!({"source": "legacy", "records": records})), 200, None);
    let statuses: Vec<&str> =
        r.body["records"].as_array().unwrap().iter().map(|v| v["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["inserted", "inserted", "duplicate", "rejected", "rejected"], "{}", r.text);
    let r = s.expect(post(Some(&token), &json!({"source": "legacy", "records": records, "user_id": user})), 200, None);
    assert_eq!(r.body["records"][0]["status"], "unchanged");
    s.expect(
        post(Some(&info.service_role_key), &json!({"source": "legacy", "records": [], "user_id": user})),
        200,
        None,
    );

    // Neo4j, through the stand-in: complete, and partial with a continuation.
    server.put_graph(&user, Graph::generate(&user, 40, 60, 3));
    let r = s.expect(post(Some(&token), &json!({"source": "neo4j"})), 200, None);
    assert_eq!(r.body["status"], "completed", "{}", r.text);
    let r = s.expect(post(Some(&token), &json!({"source": "neo4j", "mode": "full", "max_pages": 1})), 200, None);
    assert_eq!(r.body["status"], "partial", "{}", r.text);
    let cont = r.body["continuation"].as_str().unwrap().to_owned();
    let r = s.expect(post(Some(&token), &json!({"source": "neo4j", "continuation": cont})), 200, None);
    assert_eq!(r.body["status"], "completed");
    s.expect(post(Some(&token), &json!({"source": "neo4j", "continuation": cont})), 410, Some("continuation_expired"));
    s.expect(
        post(Some(&info.service_role_key), &json!({"source": "neo4j", "user_id": user, "mode": "incremental"})),
        200,
        None,
    );

    // A call while another runs: 409 with Retry-After.
    let (busy, busy_token) = new_user(info);
    server.put_graph(&busy, Graph::generate(&busy, 5, 5, 4));
    server.delay(&busy, 3_000);
    let first = {
        let info = info.clone();
        let busy_token = busy_token.clone();
        std::thread::spawn(move || {
            call_json(&info, "POST", "/populate", Some(&busy_token), &json!({"source": "neo4j"}))
        })
    };
    wait_for_populate_lease(info, &busy, "neo4j");
    let r = s.expect(post(Some(&busy_token), &json!({"source": "neo4j"})), 409, Some("populate_in_progress"));
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    s.expect(first.join().unwrap(), 200, None);
    server.delay(&busy, 0);

    // Neo4j says 429: 429 with Retry-After, now and until the wait is over; a 500: 502.
    let (limited, limited_token) = new_user(info);
    server.fail(&limited, Fault { status: 429, times: 1, after: 0, retry_after: Some(30) });
    let r = s.expect(post(Some(&limited_token), &json!({"source": "neo4j"})), 429, Some("source_rate_limited"));
    assert_eq!(r.header("retry-after"), Some("30"));
    let r = s.expect(post(Some(&limited_token), &json!({"source": "neo4j"})), 429, Some("source_rate_limited"));
    assert!(r.header("retry-after").is_some());
    let (failing, failing_token) = new_user(info);
    server.fail(&failing, Fault { status: 500, times: 1, after: 0, retry_after: None });
    let r = s.expect(post(Some(&failing_token), &json!({"source": "neo4j"})), 502, Some("source_error"));
    assert!(r.body["error"]["details"]["continuation"].is_string());

    // Bad requests.
    for body in [
        json!({"source": "csv"}),
        json!({"records": []}),
        json!({"source": "neo4j", "records": []}),
        json!({"source": "neo4j", "mode": "sometimes"}),
        json!({"source": "neo4j", "max_pages": 0}),
        json!({"source": "neo4j", "extra": 1}),
        json!({"source": "legacy"}),
        json!({"source": "legacy", "records": [], "mode": "full"}),
        json!({"source": "neo4j", "user_id": "not-a-uuid"}),
        json!({"source": "neo4j", "continuation": format!("r1.{}", uuid()), "mode": "full"}),
    ] {
        s.expect(post(Some(&token), &body), 400, Some("invalid_request"));
    }
    s.expect(
        post(Some(&token), &json!({"source": "neo4j", "continuation": "r2.junk"})),
        400,
        Some("invalid_continuation"),
    );
    s.expect(
        post(Some(&info.service_role_key), &json!({"source": "legacy", "records": []})),
        400,
        Some("invalid_request"),
    );
    s.expect(
        post(Some(&token), &json!({"source": "legacy", "records": [], "user_id": uuid()})),
        403,
        Some("user_id_mismatch"),
    );
    let many: Vec<Value> = (0..1001).map(|i| json!({"legacyId": i, "legacyType": "note"})).collect();
    s.expect(post(Some(&token), &json!({"source": "legacy", "records": many})), 413, Some("too_many_records"));
    let big = json!({"source": "legacy", "records": [{"legacyId": "b", "legacyType": "note", "body": "x".repeat(2 * 1024 * 1024)}]});
    s.expect(post(Some(&token), &big), 413, Some("body_too_large"));
    s.expect(
        send(info, "POST", "/populate", &[bearer(&token), ("content-type", "text/csv".into())], Some(b"a,b")),
        415,
        Some("unsupported_media_type"),
    );
    s.expect(post(None, &json!({"source": "neo4j"})), 401, Some("missing_token"));
    s.expect(get(info, "/populate", Some(&token)), 405, Some("method_not_allowed"));
}

fn embed_entry_and_drain(info: &StackInfo, s: &Spec) {
    let (_, token) = new_user(info);
    let secret = ("x-webhook-secret", info.embed_webhook_secret.clone());
    let hook = |headers: &[(&str, String)], body: &Value| {
        let mut h = vec![json_type()];
        h.extend_from_slice(headers);
        send(info, "POST", "/embed_entry", &h, Some(body.to_string().as_bytes()))
    };
    let id = uuid();
    let insert =
        json!({"type": "INSERT", "table": "entries", "schema": "public", "record": {"id": id}, "old_record": null});
    let r = s.expect(hook(std::slice::from_ref(&secret), &insert), 202, None);
    assert_eq!(r.body, json!({"accepted": true, "entry_id": id}));
    s.expect(hook(&[bearer(&info.service_role_key)], &insert), 202, None);
    let r = s.expect(
        hook(std::slice::from_ref(&secret), &json!({"type": "DELETE", "table": "entries", "old_record": {"id": id}})),
        200,
        None,
    );
    assert!(r.body["ignored"].is_string());
    s.expect(
        hook(std::slice::from_ref(&secret), &json!({"type": "UPDATE", "table": "sync_events", "record": {}})),
        200,
        None,
    );
    for bad in [
        json!({"type": "INSERT"}),
        json!({"type": "TRUNCATE", "table": "entries"}),
        json!({"type": "INSERT", "table": "entries", "record": {"id": 5}}),
        json!([1]),
    ] {
        s.expect(hook(std::slice::from_ref(&secret), &bad), 400, Some("invalid_webhook"));
    }
    s.expect(hook(&[("x-webhook-secret", "wrong".into())], &insert), 401, Some("invalid_webhook_secret"));
    s.expect(hook(&[], &insert), 401, Some("missing_token"));
    s.expect(hook(&[bearer("abc")], &insert), 401, Some("invalid_token"));
    s.expect(hook(&[bearer(&token)], &insert), 403, Some("forbidden_role"));
    s.expect(
        send(info, "POST", "/embed_entry", &[secret.clone(), ("content-type", "text/plain".into())], Some(b"x")),
        415,
        Some("unsupported_media_type"),
    );
    let big =
        json!({"type": "INSERT", "table": "entries", "record": {"id": id, "body_markdown": "x".repeat(300 * 1024)}});
    s.expect(hook(std::slice::from_ref(&secret), &big), 413, Some("body_too_large"));
    s.expect(send(info, "GET", "/embed_entry", std::slice::from_ref(&secret), None), 405, Some("method_not_allowed"));

    let drain = |headers: &[(&str, String)]| send(info, "POST", "/embed_entry/drain", headers, None);
    let r = s.expect(drain(&[bearer(&info.service_role_key)]), 200, None);
    assert!(r.body["claimed"].is_u64());
    s.expect(drain(std::slice::from_ref(&secret)), 200, None);
    s.expect(drain(&[bearer(&token)]), 403, Some("forbidden_role"));
    s.expect(drain(&[]), 401, Some("missing_token"));
    s.expect(
        send(info, "PUT", "/embed_entry/drain", std::slice::from_ref(&secret), None),
        405,
        Some("method_not_allowed"),
    );
}

fn search(info: &StackInfo, s: &Spec) {
    let (_, token) = new_user(info);
    let entry = uuid();
    let body = json!({"client_id": uuid(), "mutations": [{"op_id": 1, "op": "PUT", "type": "entries", "id": entry,
        "data": {"title": "Deadlift and squat session at the gym", "tags": ["training"]}}]});
    s.expect(call_json(info, "POST", "/upload", Some(&token), &body), 200, None);
    let search = |token: Option<&str>, body: &Value| call_json(info, "POST", "/search", token, body);
    // The relay's nudge embeds it; drain as well in case it was dropped.
    eventually("the entry to be found", Duration::from_secs(60), || {
        send(info, "POST", "/embed_entry/drain", &[bearer(&info.service_role_key)], None);
        let r = search(Some(&token), &json!({"query": "lifting weights", "match_threshold": 0.1}));
        s.check(&r);
        r.status == 200 && r.body["results"].as_array().is_some_and(|a| a.iter().any(|x| x["id"] == entry.as_str()))
    });
    let r = s.expect(
        search(Some(&token), &json!({"query": "lifting weights", "match_threshold": null, "match_count": 1})),
        200,
        None,
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    for bad in [
        json!({"query": "  "}),
        json!({"query": "x", "match_threshold": 2}),
        json!({"query": "x", "match_count": 0}),
        json!({"query": "x", "other": 1}),
        json!({"query": "x".repeat(2001)}),
        json!("just a string"),
    ] {
        s.expect(search(Some(&token), &bad), 400, Some("invalid_search"));
    }
    s.expect(search(Some(&token), &json!({"query": "x".repeat(17 * 1024)})), 413, Some("body_too_large"));
    s.expect(
        send(info, "POST", "/search", &[bearer(&token), ("content-type", "text/plain".into())], Some(b"q")),
        415,
        Some("unsupported_media_type"),
    );
    s.expect(search(None, &json!({"query": "x"})), 401, Some("missing_token"));
    s.expect(search(Some(&info.service_role_key), &json!({"query": "x"})), 403, Some("user_required"));
    s.expect(get(info, "/search", Some(&token)), 405, Some("method_not_allowed"));
}
