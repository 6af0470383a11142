//! CORS over HTTP, on the gateway and on Workers served alone (the Cron Workers'
//! own wrangler dev, as a function deployed and routed on its own), and the one
//! JSON log line per request. The stack allows `http://localhost:*` and
//! `http://127.0.0.1:*` (`stack::LOCAL_ALLOWED_ORIGINS`). The browser's view of the
//! same rules is `tests/browser.rs`.

use edgesync_integration::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

const ALLOWED: &str = "http://localhost:5173";
const ALLOWED_IP: &str = "http://127.0.0.1:3000";
const DISALLOWED: [&str; 3] = ["https://evil.example", "http://localhost.evil.test:5173", "null"];

/// An answer with every header (lowercase names).
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: BTreeMap<String, String>,
    text: String,
    body: Value,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The CORS headers of a real answer to an allowed origin.
    #[track_caller]
    fn assert_allowed(&self, origin: &str) {
        assert_eq!(self.header("access-control-allow-origin"), Some(origin), "{self:?}");
        assert_eq!(self.header("access-control-expose-headers"), Some("x-request-id, retry-after"), "{self:?}");
        self.assert_varies();
        assert!(self.header("x-request-id").is_some(), "{self:?}");
        assert_eq!(self.header("access-control-allow-credentials"), None);
    }

    /// No CORS headers at all (a disallowed origin, or none).
    #[track_caller]
    fn assert_no_cors(&self) {
        for name in self.headers.keys() {
            assert!(!name.starts_with("access-control-"), "{name} on {self:?}");
        }
        self.assert_varies();
    }

    #[track_caller]
    fn assert_varies(&self) {
        let vary = self.header("vary").unwrap_or_default();
        assert!(vary.split(',').any(|t| t.trim().eq_ignore_ascii_case("origin")), "Vary: {vary:?} on {self:?}");
    }

    #[track_caller]
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.body["error"]["code"], code, "{self:?}");
        assert_eq!(self.body["error"]["request_id"].as_str(), self.header("x-request-id"), "{self:?}");
    }
}

#[allow(clippy::result_large_err)]
fn send(method: &str, url: &str, headers: &[(&str, String)], body: Option<&[u8]>) -> Resp {
    let agent = xtask::ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
    let mut req = agent.request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let resp = match resp {
        Ok(r) => r,
        Err(xtask::ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: no HTTP answer: {e}"),
    };
    let status = resp.status();
    let mut headers = BTreeMap::new();
    for name in resp.headers_names() {
        // Repeated headers (Vary) joined as a browser would read them.
        let values = resp.all(&name).join(", ");
        headers.insert(name.to_ascii_lowercase(), values);
    }
    let text = resp.into_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp { status, headers, text, body }
}

fn origin(o: &str) -> (&'static str, String) {
    ("origin", o.to_owned())
}

fn preflight(url: &str, from: &str, method: &str) -> Resp {
    send(
        "OPTIONS",
        url,
        &[
            origin(from),
            ("access-control-request-method", method.to_owned()),
            ("access-control-request-headers", "authorization, content-type, x-client-info, apikey".to_owned()),
        ],
        None,
    )
}

/// The Workers served alone (each a function as deployed without the gateway).
fn alone(info: &StackInfo, worker: &str) -> String {
    format!("http://127.0.0.1:{}", info.cron(worker).unwrap_or_else(|| panic!("{worker} is not served alone")).port)
}

/// Every (url, method) a browser would preflight: through the gateway and alone.
fn endpoints(info: &StackInfo) -> Vec<(String, &'static str)> {
    let g = &info.functions_url;
    let mut v: Vec<(String, &str)> = [
        ("/sync", "GET"),
        ("/upload", "POST"),
        ("/search", "POST"),
        ("/populate", "POST"),
        ("/embed_entry", "POST"),
        ("/embed_entry/drain", "POST"),
        ("/health", "GET"),
        ("/openapi.json", "GET"),
    ]
    .into_iter()
    .map(|(p, m)| (format!("{g}{p}"), m))
    .collect();
    v.push((format!("{}/search", alone(info, "embed_entry")), "POST"));
    v.push((format!("{}/embed_entry", alone(info, "embed_entry")), "POST"));
    v.push((format!("{}/populate", alone(info, "populate")), "POST"));
    v
}

#[test]
fn a_preflight_from_an_allowed_origin_gets_204_with_no_token_on_every_endpoint() {
    let info = stack();
    for (url, method) in endpoints(&info) {
        for from in [ALLOWED, ALLOWED_IP, "http://localhost:1", "http://127.0.0.1:65535"] {
            let r = preflight(&url, from, method);
            assert_eq!(r.status, 204, "{url} from {from}: {r:?}");
            assert!(r.text.is_empty(), "{url}: {r:?}");
            assert_eq!(r.header("access-control-allow-origin"), Some(from), "{url}: {r:?}");
            let methods: Vec<&str> = r.header("access-control-allow-methods").unwrap().split(", ").collect();
            assert!(methods.contains(&method) && methods.contains(&"POST"), "{url}: {r:?}");
            let allowed: Vec<&str> = r.header("access-control-allow-headers").unwrap().split(", ").collect();
            for h in ["authorization", "content-type", "apikey", "x-client-info", "x-request-id", "x-user-agent"] {
                assert!(allowed.contains(&h), "{url}: {h} not allowed: {r:?}");
            }
            assert_eq!(r.header("access-control-max-age"), Some("7200"), "{url}");
            assert!(r.header("x-request-id").is_some(), "{url}");
            r.assert_varies();
        }
    }
}

#[test]
fn a_preflight_from_another_origin_is_a_json_403_without_cors_headers() {
    let info = stack();
    for (url, method) in endpoints(&info) {
        for from in DISALLOWED {
            let r = preflight(&url, from, method);
            r.assert_error(403, "origin_not_allowed");
            r.assert_no_cors();
        }
    }
    // Schemes and hosts are matched exactly: https and other loopback names are others.
    for from in ["https://localhost:5173", "http://127.0.0.2:3000", "http://LOCALHOST:5173"] {
        preflight(&format!("{}/sync", info.functions_url), from, "GET").assert_error(403, "origin_not_allowed");
    }
}

#[test]
fn a_plain_options_is_still_405_with_cors_headers_for_an_allowed_origin() {
    let info = stack();
    let url = format!("{}/sync", info.functions_url);
    let r = send("OPTIONS", &url, &[origin(ALLOWED)], None);
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET"));
    r.assert_allowed(ALLOWED);
    let r = send("OPTIONS", &url, &[("access-control-request-method", "GET".into())], None);
    r.assert_error(405, "method_not_allowed");
    r.assert_no_cors();
}

#[test]
fn every_answer_to_an_allowed_origin_carries_the_cors_headers_errors_included() {
    let info = stack();
    let (_, token) = new_user(&info);
    let g = &info.functions_url;
    let o = || origin(ALLOWED);
    let bearer = || ("authorization", format!("Bearer {token}"));
    let json_type = || ("content-type", "application/json".to_owned());

    let r = send("GET", &format!("{g}/health"), &[o()], None);
    assert_eq!(r.status, 200, "{r:?}");
    r.assert_allowed(ALLOWED);
    let r = send("GET", &format!("{g}/openapi.json"), &[o()], None);
    assert_eq!(r.status, 200);
    r.assert_allowed(ALLOWED);
    let r = send("GET", &format!("{g}/sync"), &[o(), bearer()], None);
    assert_eq!(r.status, 200, "{r:?}");
    r.assert_allowed(ALLOWED);

    let cases: Vec<(Resp, u16, &str)> = vec![
        (send("GET", &format!("{g}/sync"), &[o()], None), 401, "missing_token"),
        (send("GET", &format!("{g}/sync?limit=lots"), &[o(), bearer()], None), 400, "invalid_parameter"),
        (send("GET", &format!("{g}/no-such-thing"), &[o()], None), 404, "not_found"),
        (send("GET", &format!("{}/no-such-thing", alone(&info, "populate")), &[o()], None), 404, "not_found"),
        (send("GET", &format!("{g}/upload"), &[o(), bearer()], None), 405, "method_not_allowed"),
        (send("POST", &format!("{g}/upload"), &[o(), bearer()], Some(b"{}")), 415, "unsupported_media_type"),
        (
            send("POST", &format!("{g}/upload"), &[o(), bearer(), json_type()], Some(&vec![b' '; 4 * 1024 * 1024 + 1])),
            413,
            "body_too_large",
        ),
        (send("POST", &format!("{}/search", alone(&info, "embed_entry")), &[o()], Some(b"{}")), 401, "missing_token"),
    ];
    for (r, status, code) in cases {
        assert_eq!(r.status, status, "{r:?}");
        if r.body["error"]["code"] != code {
            panic!("expected {code}: {r:?}");
        }
        r.assert_allowed(ALLOWED);
    }
}

#[test]
fn a_5xx_carries_the_cors_headers_and_logs_the_upstream_detail_the_client_never_sees() {
    let info = stack();
    let _only_me = exclusive();
    let (_, token) = new_user(&info);
    let faults_url = format!("{}/_faults", info.embeddings_url.trim_end_matches("/v1"));
    let planned = send(
        "PUT",
        &faults_url,
        &[("content-type", "application/json".into())],
        Some(json!({"status": 500, "times": 20}).to_string().as_bytes()),
    );
    assert_eq!(planned.status, 200, "{planned:?}");
    let id = format!("cors-5xx-{}", uuid());
    let r = send(
        "POST",
        &format!("{}/search", info.functions_url),
        &[
            origin(ALLOWED_IP),
            ("authorization", format!("Bearer {token}")),
            ("content-type", "application/json".into()),
            ("x-request-id", id.clone()),
        ],
        Some(br#"{"query": "anything"}"#),
    );
    let cleared = send("DELETE", &faults_url, &[], None);
    assert_eq!(cleared.status, 200, "{cleared:?}");
    assert!(r.status >= 500, "{r:?}");
    assert_eq!(r.header("x-request-id"), Some(id.as_str()));
    r.assert_allowed(ALLOWED_IP);
    assert!(!r.text.contains(&info.embeddings_url), "the upstream's URL reached the client: {}", r.text);

    let lines = log_lines(&info.logs_dir.join("wrangler.log"), &id, 2);
    let function = lines.iter().find(|l| l["function"] == "embed_entry").unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(function["status"], r.status);
    assert_eq!(function["error_code"], r.body["error"]["code"]);
    assert!(function["error_message"].is_string(), "a 5xx logs its detail: {function}");
    assert!(function.get("error_details").is_some(), "{function}");
}

#[test]
fn a_disallowed_origin_gets_no_cors_headers_on_real_answers() {
    let info = stack();
    let g = &info.functions_url;
    for from in DISALLOWED {
        for (method, url, status) in [
            ("GET", format!("{g}/health"), 200),
            ("GET", format!("{g}/sync"), 401),
            ("GET", format!("{g}/nope"), 404),
            ("OPTIONS", format!("{g}/health"), 405),
            ("POST", format!("{}/search", alone(&info, "embed_entry")), 401),
        ] {
            let r = send(method, &url, &[origin(from)], None);
            assert_eq!(r.status, status, "{method} {url}: {r:?}");
            r.assert_no_cors();
        }
    }
    // No Origin (curl, a server): no CORS headers either, and the same answer.
    let r = send("GET", &format!("{g}/health"), &[], None);
    assert_eq!(r.status, 200);
    r.assert_no_cors();
}

/// Lines of `log` that carry request id `id`, parsed as JSON, once at least `n` are
/// there (wrangler writes them as the Workers log them; polled with a deadline).
fn log_lines(log: &std::path::Path, id: &str, n: usize) -> Vec<Value> {
    let mut found = Vec::new();
    eventually(&format!("{n} log lines with request id {id} in {}", log.display()), Duration::from_secs(20), || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        found = text
            .lines()
            .filter(|l| l.contains(id))
            .map(|l| {
                // wrangler wraps the logged text in a level prefix and colour codes.
                let (start, end) = (l.find('{'), l.rfind('}'));
                let (Some(start), Some(end)) = (start, end) else {
                    panic!("a log line with the id that is not JSON: {l}")
                };
                serde_json::from_str::<Value>(&l[start..=end])
                    .unwrap_or_else(|e| panic!("the log line is not one JSON object ({e}): {l}"))
            })
            .collect();
        found.len() >= n
    });
    found
}

#[test]
fn each_request_is_one_json_log_line_per_worker_with_every_field() {
    let info = stack();
    let (_, token) = new_user(&info);
    let log = info.logs_dir.join("wrangler.log");
    let fields = ["request_id", "function", "method", "path", "status", "duration_ms", "upstream_ms", "error_code"];
    let check = |line: &Value, function: &str, method: &str, path: &str, status: u16, code: Option<&str>| {
        for f in fields {
            assert!(line.get(f).is_some(), "{f} missing: {line}");
        }
        assert_eq!(line["function"], function, "{line}");
        assert_eq!(line["method"], method, "{line}");
        assert_eq!(line["path"], path, "{line}");
        assert_eq!(line["status"], status, "{line}");
        assert_eq!(line["error_code"].as_str(), code, "{line}");
        let duration = line["duration_ms"].as_u64().unwrap_or_else(|| panic!("{line}"));
        let upstream = line["upstream_ms"].as_u64().unwrap_or_else(|| panic!("{line}"));
        assert!(upstream <= duration, "upstream time within the request's: {line}");
        assert!(line.get("error_message").is_none(), "a 4xx or success logs no detail: {line}");
    };
    let call = |method: &str, path_query: &str, headers: &[(&str, String)], body: Option<&[u8]>| -> (Resp, String) {
        let id = format!("cors-log-{}", uuid());
        let mut h = headers.to_vec();
        h.push(("x-request-id", id.clone()));
        (send(method, &format!("{}{path_query}", info.functions_url), &h, body), id)
    };
    let bearer = ("authorization", format!("Bearer {token}"));

    // A success: the gateway's line and the function's, the same id; the query is not logged.
    let (r, id) = call("GET", "/sync?tables=entries", std::slice::from_ref(&bearer), None);
    assert_eq!(r.status, 200, "{r:?}");
    let lines = log_lines(&log, &id, 2);
    assert_eq!(lines.len(), 2, "one line per Worker: {lines:?}");
    let by = |f: &str| lines.iter().find(|l| l["function"] == f).unwrap_or_else(|| panic!("no {f} line: {lines:?}"));
    check(by("gateway"), "gateway", "GET", "/sync", 200, None);
    check(by("sync"), "sync", "GET", "/sync", 200, None);
    // The gateway's upstream is the function, which took at least its own duration.
    assert!(by("gateway")["upstream_ms"].as_u64() >= by("sync")["duration_ms"].as_u64(), "{lines:?}");

    // An error: its code, no detail.
    let (r, id) = call("GET", "/sync", &[], None);
    assert_eq!(r.status, 401);
    let lines = log_lines(&log, &id, 2);
    // The function refused it; the gateway passed the answer on (no error of its own).
    let by = |f: &str| lines.iter().find(|l| l["function"] == f).unwrap_or_else(|| panic!("no {f} line: {lines:?}"));
    check(by("sync"), "sync", "GET", "/sync", 401, Some("missing_token"));
    check(by("gateway"), "gateway", "GET", "/sync", 401, None);

    // A preflight is a request too (answered by the gateway alone).
    let (r, id) =
        call("OPTIONS", "/upload", &[origin(ALLOWED), ("access-control-request-method", "POST".into())], None);
    assert_eq!(r.status, 204);
    let lines = log_lines(&log, &id, 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    check(&lines[0], "gateway", "OPTIONS", "/upload", 204, None);

    // Upstream time is measured: a search waits on the embeddings server and PostgREST.
    let (r, id) = call(
        "POST",
        "/search",
        &[bearer.clone(), ("content-type", "application/json".into())],
        Some(br#"{"query": "how long does this take"}"#),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let lines = log_lines(&log, &id, 2);
    let search = lines.iter().find(|l| l["function"] == "embed_entry").unwrap_or_else(|| panic!("{lines:?}"));
    check(search, "embed_entry", "POST", "/search", 200, None);
    assert!(search["upstream_ms"].as_u64().unwrap() > 0, "an embedding takes a while: {search}");
}
