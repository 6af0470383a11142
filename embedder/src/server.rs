//! The routes, answered by [`handle`] (plain data in, plain data out, so the tests
//! drive it with a fake model), served by axum on hyper ([`router`], [`crate::http`]).

use crate::api::{self, ApiError, NATIVE_DIMENSIONS, SERVED_MODEL};
use crate::faults::Faults;
use crate::http::{self, BodyError};
use crate::model::Embed;
use axum::body::Body;
use axum::extract;
use axum::http::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::net::TcpListener;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// What the handlers share. The model arrives once it is loaded; until then
/// `/health` says 503 and embeddings wait for nothing: they get 503 too.
pub struct State<E> {
    pub model: OnceLock<E>,
    pub api_key: Option<String>,
    pub default_dimensions: usize,
    /// Planned failures (`--allow-faults`), for tests of callers; `None`: no `/_faults`.
    pub faults: Option<Faults>,
    /// One inference at a time. The model already uses every core for one batch;
    /// concurrent batches only thrash (measured: 125 concurrent batches of 16 took
    /// 34 s each instead of queueing for ~0.15 s each).
    pub inference: std::sync::Mutex<()>,
}

/// An answer: status, JSON body, and `Allow` for 405s.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub allow: Option<&'static str>,
    pub retry_after: Option<u32>,
}

impl Reply {
    fn json(status: u16, body: String) -> Reply {
        Reply { status, body, allow: None, retry_after: None }
    }
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Reply {
        Reply::json(e.status, e.body())
    }
}

/// One request. `read_body` is called only by routes that take a body (a body left
/// unread closes the connection after the answer).
pub fn handle<E: Embed>(
    state: &State<E>,
    method: &str,
    url: &str,
    authorization: Option<&str>,
    read_body: impl FnOnce() -> Result<Vec<u8>, ApiError>,
) -> Reply {
    let path = url.split('?').next().unwrap_or("");
    let path = if path.len() > 1 { path.trim_end_matches('/') } else { path };
    if let (Some(faults), "/_faults") = (&state.faults, path) {
        return match method {
            "GET" => Reply::json(200, faults.get().to_string()),
            "DELETE" => Reply::json(200, faults.clear().to_string()),
            "PUT" => match read_body().and_then(|b| faults.set(&b)) {
                Ok(v) => Reply::json(200, v.to_string()),
                Err(e) => e.into(),
            },
            _ => Reply {
                allow: Some("GET, PUT, DELETE"),
                ..ApiError::invalid(
                    405,
                    "method_not_allowed",
                    None,
                    format!("Method {method} is not allowed on {path}."),
                )
                .into()
            },
        };
    }
    let allow = match path {
        "/health" | "/v1/models" => "GET",
        "/v1/embeddings" => "POST",
        p if p.strip_prefix("/v1/models/").is_some_and(|id| !id.is_empty()) => "GET",
        _ => {
            return ApiError::invalid(404, "unknown_url", None, format!("Invalid URL ({method} {path})")).into();
        }
    };
    if method != allow && !(allow == "GET" && method == "HEAD") {
        let e = ApiError::invalid(
            405,
            "method_not_allowed",
            None,
            format!("Method {method} is not allowed on {path}; use {allow}."),
        );
        return Reply { allow: Some(allow), ..e.into() };
    }
    if path == "/health" {
        return match state.model.get() {
            Some(_) => Reply::json(
                200,
                serde_json::json!({"ok": true, "model": SERVED_MODEL, "dimensions": NATIVE_DIMENSIONS}).to_string(),
            ),
            None => {
                Reply::json(503, serde_json::json!({"ok": false, "model": SERVED_MODEL, "loading": true}).to_string())
            }
        };
    }
    if let Some(key) = &state.api_key {
        if !api::authorized(authorization, key) {
            return ApiError::invalid(
                401,
                "invalid_api_key",
                None,
                "Incorrect API key provided: send `Authorization: Bearer <key>` with this server's key.",
            )
            .into();
        }
    }
    if path == "/v1/models" {
        return Reply::json(200, serde_json::json!({"object": "list", "data": [api::model_object()]}).to_string());
    }
    if let Some(id) = path.strip_prefix("/v1/models/") {
        return if api::is_served_model(id) {
            Reply::json(200, api::model_object().to_string())
        } else {
            api::model_not_found(id).into()
        };
    }
    // POST /v1/embeddings
    if let Some((error, retry_after)) = state.faults.as_ref().and_then(|f| f.take(None)) {
        return Reply { retry_after, ..error.into() };
    }
    let body = match read_body() {
        Ok(b) => b,
        Err(e) => return e.into(),
    };
    let req = match api::parse_request(&body, state.default_dimensions) {
        Ok(r) => r,
        Err(e) => return e.into(),
    };
    if let Some((error, retry_after)) = state.faults.as_ref().and_then(|f| f.take(Some(&req.inputs))) {
        return Reply { retry_after, ..error.into() };
    }
    let Some(model) = state.model.get() else {
        return ApiError::server(503, "model_loading", "The model is still loading; retry in a few seconds.").into();
    };
    let _turn = state.inference.lock().unwrap_or_else(|e| e.into_inner());
    match model.embed(&req.inputs) {
        Ok(out) => Reply::json(200, api::response_body(&req, out.vectors, out.tokens)),
        Err(e) => ApiError::server(500, "internal_error", format!("The model failed: {e}")).into(),
    }
}

/// A body that could not be read, as an API error.
pub fn body_error(e: BodyError) -> ApiError {
    match e {
        BodyError::TooLarge => ApiError::invalid(
            400,
            "request_too_large",
            None,
            format!("The request body is larger than {} MiB.", api::MAX_BODY_BYTES / (1024 * 1024)),
        ),
        BodyError::Malformed(m) => {
            ApiError::invalid(400, "invalid_body", None, format!("Could not read the body: {m}"))
        }
    }
}

/// Serve on `listener` until the process ends, logging one line per request (on a
/// tokio runtime of its own: the caller is plain threads).
pub fn serve<E: Embed + 'static>(listener: TcpListener, state: Arc<State<E>>) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(async {
        let listener = listener.set_nonblocking(true).and_then(|_| tokio::net::TcpListener::from_std(listener));
        match listener {
            Ok(listener) => http::serve(listener, router(state)).await,
            Err(e) => eprintln!("edgesync-embedder: could not serve: {e}"),
        }
    })
}

/// Every request goes to [`handle`], which does its own routing (404 and 405 in
/// OpenAI's shape, a trailing slash or a query string ignored).
pub fn router<E: Embed + 'static>(state: Arc<State<E>>) -> Router {
    Router::new().fallback(answer::<E>).with_state(state)
}

async fn answer<E: Embed + 'static>(
    extract::State(state): extract::State<Arc<State<E>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let target = uri.path_and_query().map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    let authorization = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let length = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    // The model is CPU-bound and synchronous: the whole request runs on the blocking
    // pool, reading its body (only if the route wants it) back on the runtime.
    let runtime = tokio::runtime::Handle::current();
    let reply = {
        let (method, target) = (method.clone(), target.clone());
        tokio::task::spawn_blocking(move || {
            handle(&state, method.as_str(), &target, authorization.as_deref(), || {
                runtime.block_on(http::read_body(body, length, api::MAX_BODY_BYTES)).map_err(body_error)
            })
        })
        .await
        .unwrap_or_else(|e| ApiError::server(500, "internal_error", format!("The server failed: {e}")).into())
    };
    eprintln!(
        "{} {} {} {:.1}ms",
        method,
        target.split('?').next().unwrap_or(""),
        reply.status,
        started.elapsed().as_secs_f64() * 1000.0
    );
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, [(CONTENT_TYPE, "application/json")], reply.body).into_response();
    if let Some(allow) = reply.allow {
        response.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    }
    if let Some(secs) = reply.retry_after {
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Embedded;
    use serde_json::{json, Value};

    /// A model that embeds a text as a one-hot vector at (length mod 384).
    struct Fake;

    impl Embed for Fake {
        fn embed(&self, texts: &[String]) -> Result<Embedded, String> {
            if texts.iter().any(|t| t == "boom") {
                return Err("kaput".into());
            }
            let vectors = texts
                .iter()
                .map(|t| {
                    let mut v = vec![0.0; NATIVE_DIMENSIONS];
                    v[t.len() % NATIVE_DIMENSIONS] = 1.0;
                    v
                })
                .collect();
            Ok(Embedded { vectors, tokens: texts.iter().map(|t| t.split_whitespace().count() + 2).sum() })
        }
    }

    fn state(key: Option<&str>) -> State<Fake> {
        let s = State {
            model: OnceLock::new(),
            api_key: key.map(str::to_owned),
            default_dimensions: 1536,
            faults: Some(Faults::default()),
            inference: Default::default(),
        };
        let _ = s.model.set(Fake);
        s
    }

    fn post(s: &State<Fake>, auth: Option<&str>, body: Value) -> (Reply, Value) {
        let r = handle(s, "POST", "/v1/embeddings", auth, || Ok(body.to_string().into_bytes()));
        let v = serde_json::from_str(&r.body).unwrap();
        (r, v)
    }

    #[track_caller]
    fn assert_error(r: &Reply, status: u16, code: &str) {
        assert_eq!(r.status, status, "{}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["error"]["code"], code, "{}", r.body);
        assert!(v["error"]["type"].is_string() && v["error"]["message"].is_string(), "{}", r.body);
        assert!(v["error"].as_object().unwrap().contains_key("param"), "{}", r.body);
    }

    #[test]
    fn embeddings_are_padded_to_the_default_or_requested_width() {
        let s = state(None);
        let (r, v) = post(&s, None, json!({"input": ["hello world", "hi"], "model": SERVED_MODEL}));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(v["object"], "list");
        assert_eq!(v["model"], SERVED_MODEL);
        assert_eq!(v["usage"], json!({"prompt_tokens": 7, "total_tokens": 7}));
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        for (i, d) in data.iter().enumerate() {
            assert_eq!((d["object"].as_str(), d["index"].as_u64()), (Some("embedding"), Some(i as u64)));
            assert_eq!(d["embedding"].as_array().unwrap().len(), 1536);
        }
        assert_eq!(data[0]["embedding"][11], 1.0);
        assert_eq!(data[1]["embedding"][2], 1.0);
        let (_, v) = post(&s, None, json!({"input": "hello", "model": "all-MiniLM-L6-v2", "dimensions": 384}));
        assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 384);
    }

    #[test]
    fn health_is_503_until_the_model_is_loaded() {
        let s: State<Fake> = State {
            model: OnceLock::new(),
            api_key: None,
            default_dimensions: 1536,
            faults: None,
            inference: Default::default(),
        };
        let r = handle(&s, "GET", "/health", None, || unreachable!());
        assert_eq!(r.status, 503);
        let (r, _) = post(&s, None, json!({"input": "x", "model": SERVED_MODEL}));
        assert_error(&r, 503, "model_loading");
        let _ = s.model.set(Fake);
        let r = handle(&s, "GET", "/health", None, || unreachable!());
        assert_eq!(r.status, 200);
        assert_eq!(
            serde_json::from_str::<Value>(&r.body).unwrap(),
            json!({"ok": true, "model": SERVED_MODEL, "dimensions": 384})
        );
    }

    #[test]
    fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
        let s = state(None);
        for (method, url) in
            [("POST", "/v1/embedding"), ("GET", "/"), ("POST", "/v2/embeddings"), ("GET", "/v1/modelsx")]
        {
            assert_error(&handle(&s, method, url, None, || unreachable!()), 404, "unknown_url");
        }
        let r = handle(&s, "GET", "/v1/embeddings", None, || unreachable!());
        assert_error(&r, 405, "method_not_allowed");
        assert_eq!(r.allow, Some("POST"));
        let r = handle(&s, "POST", "/health", None, || unreachable!());
        assert_error(&r, 405, "method_not_allowed");
        assert_eq!(r.allow, Some("GET"));
        // A query string or a trailing slash does not change the route.
        assert_eq!(handle(&s, "GET", "/health?x=1", None, || unreachable!()).status, 200);
        let r =
            handle(&s, "POST", "/v1/embeddings/", None, || Ok(br#"{"input":"a","model":"all-MiniLM-L6-v2"}"#.to_vec()));
        assert_eq!(r.status, 200);
    }

    #[test]
    fn models_lists_the_served_model() {
        let s = state(None);
        let r = handle(&s, "GET", "/v1/models", None, || unreachable!());
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["data"][0]["id"], SERVED_MODEL);
        let r = handle(&s, "GET", "/v1/models/all-MiniLM-L6-v2", None, || unreachable!());
        assert_eq!(r.status, 200);
        assert_error(&handle(&s, "GET", "/v1/models/gpt-4", None, || unreachable!()), 404, "model_not_found");
    }

    #[test]
    fn an_api_key_is_required_when_configured() {
        let s = state(Some("sk-local"));
        let body = json!({"input": "x", "model": SERVED_MODEL});
        for auth in [None, Some("Bearer nope"), Some("sk-local")] {
            assert_error(&post(&s, auth, body.clone()).0, 401, "invalid_api_key");
        }
        assert_eq!(post(&s, Some("Bearer sk-local"), body).0.status, 200);
        // Health stays open, so the stack can wait for it without the key.
        assert_eq!(handle(&s, "GET", "/health", None, || unreachable!()).status, 200);
        assert_error(&handle(&s, "GET", "/v1/models", None, || unreachable!()), 401, "invalid_api_key");
    }

    #[test]
    fn bad_requests_and_model_failures_keep_openais_error_shape() {
        let s = state(None);
        let r = handle(&s, "POST", "/v1/embeddings", None, || Ok(b"{oops".to_vec()));
        assert_error(&r, 400, "invalid_json");
        assert_error(
            &post(&s, None, json!({"input": "x", "model": "text-embedding-3-small"})).0,
            404,
            "model_not_found",
        );
        assert_error(&post(&s, None, json!({"input": "boom", "model": SERVED_MODEL})).0, 500, "internal_error");
        let too_large = || Err(body_error(BodyError::TooLarge));
        assert_error(&handle(&s, "POST", "/v1/embeddings", None, too_large), 400, "request_too_large");
        let cut = || Err(body_error(BodyError::Malformed("eof".into())));
        assert_error(&handle(&s, "POST", "/v1/embeddings", None, cut), 400, "invalid_body");
    }

    #[test]
    fn planned_faults_answer_embeddings_requests_in_openais_shape() {
        let s = state(None);
        let body = json!({"input": "x", "model": SERVED_MODEL});
        let r =
            handle(&s, "PUT", "/_faults", None, || Ok(br#"{"status": 429, "times": 1, "retry_after": 2}"#.to_vec()));
        assert_eq!(r.status, 200, "{}", r.body);
        let (r, _) = post(&s, None, body.clone());
        assert_error(&r, 429, "rate_limit_exceeded");
        assert_eq!(r.retry_after, Some(2));
        assert_eq!(post(&s, None, body.clone()).0.status, 200, "one request only");
        handle(&s, "PUT", "/_faults", None, || Ok(br#"{"status": 500}"#.to_vec()));
        assert_error(&post(&s, None, body.clone()).0, 500, "server_error");
        let r = handle(&s, "GET", "/_faults", None, || unreachable!());
        assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap()["answered"], 1);
        handle(&s, "DELETE", "/_faults", None, || unreachable!());
        assert_eq!(post(&s, None, body).0.status, 200);
        assert_error(&handle(&s, "POST", "/_faults", None, || unreachable!()), 405, "method_not_allowed");
        // Without --allow-faults the route does not exist.
        let plain = State { faults: None, ..state(None) };
        assert_error(&handle(&plain, "GET", "/_faults", None, || unreachable!()), 404, "unknown_url");
    }

    /// The router on a real socket: keep-alive, chunked bodies, `Expect: 100-continue`,
    /// an answer then a close when a body is left unread, and a body over the limit
    /// refused (with the answer still arriving while the client sends it).
    #[test]
    fn a_real_connection_keeps_alive_and_lingers_after_an_unread_body() {
        use std::io::{Read, Write};
        use std::net::TcpStream;
        use std::time::Duration;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let s = Arc::new(state(None));
        std::thread::spawn(move || serve(listener, s));
        let embed = br#"{"input":"abc","model":"all-MiniLM-L6-v2","dimensions":384}"#;
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Two requests on one connection, the second chunked with Expect: 100-continue.
        let mut first =
            format!("POST /v1/embeddings HTTP/1.1\r\nhost: x\r\nContent-Length: {}\r\n\r\n", embed.len()).into_bytes();
        first.extend_from_slice(embed);
        c.write_all(&first).unwrap();
        let mut second = format!(
            "POST /v1/embeddings HTTP/1.1\r\nhost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n{:x}\r\n",
            embed.len()
        )
        .into_bytes();
        second.extend_from_slice(embed);
        second.extend_from_slice(b"\r\n0\r\n\r\n");
        c.write_all(&second).unwrap();
        // A body the route does not read (hyper drains a small one), then the end.
        c.write_all(b"POST /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\nContent-Length: 4\r\n\r\nabcd").unwrap();
        let mut all = String::new();
        c.read_to_string(&mut all).unwrap();
        let answers: Vec<&str> = all.split("HTTP/1.1 ").skip(1).collect();
        let statuses: Vec<&str> = answers.iter().map(|a| &a[..3]).collect();
        assert!(statuses == ["200", "200", "405"] || statuses == ["200", "100", "200", "405"], "{all}");
        assert!(answers[0].contains("content-type: application/json") && answers[0].ends_with("}"), "{all}");
        assert!(answers.last().unwrap().contains("allow: GET"), "{all}");
        // Over the limit (8 MiB): refused without reading, and answered while the
        // client is still sending.
        let huge = vec![b'a'; 10 * 1024 * 1024];
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!("POST /v1/embeddings HTTP/1.1\r\nhost: x\r\nContent-Length: {}\r\n\r\n", huge.len());
        let mut writer = c.try_clone().unwrap();
        let sending =
            std::thread::spawn(move || writer.write_all(head.as_bytes()).and_then(|_| writer.write_all(&huge)));
        let mut all = String::new();
        c.read_to_string(&mut all).unwrap();
        assert!(all.starts_with("HTTP/1.1 400 ") && all.contains("request_too_large"), "{all}");
        sending.join().unwrap().unwrap();
    }
}
