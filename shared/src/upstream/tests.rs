use super::*;
use crate::ApiError;
use std::io::Write;

use crate::test_server::{raw_server, TOKIO_SLEEP};

fn deadline(ms: u64) -> Option<Deadline<'static>> {
    Some(Deadline { ms, sleep: TOKIO_SLEEP })
}

/// A server answering every connection with `head`, then `chunk` `repeat` times, then
/// (`close`) closing or holding the connection open for a while.
fn server(head: &'static str, chunk: &'static str, repeat: usize, close: bool) -> String {
    let body = move |s: &mut std::net::TcpStream| {
        for _ in 0..repeat {
            if s.write_all(chunk.as_bytes()).is_err() {
                return;
            }
        }
    };
    format!("{}/", raw_server(head, body, close))
}

async fn get(url: &str, limits: Limits<'_>) -> Result<Answer, ExchangeError> {
    exchange(reqwest::Client::new().get(url).send(), limits).await
}

#[test]
fn retry_after_is_whole_seconds_rounded_up() {
    for (header, want) in [
        (Some("2"), Some(2)),
        (Some(" 3 "), Some(3)),
        (Some("0"), Some(0)),
        (Some("0.2"), Some(1)),
        (Some("1.5"), Some(2)),
        (Some("-1"), None),
        (Some("NaN"), None),
        (Some("inf"), None),
        (Some("soon"), None),
        (Some(""), None),
        // The HTTP-date form is not read (no clock here): each caller's default applies.
        (Some("Wed, 21 Oct 2015 07:28:00 GMT"), None),
        (None, None),
    ] {
        assert_eq!(retry_after_secs(header), want, "{header:?}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_answer_keeps_status_retry_after_and_body() {
    let url = server("HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: 4\r\n\r\nbusy", "", 0, true);
    let a = get(&url, Limits::new(deadline(10_000))).await.unwrap();
    assert_eq!((a.status, a.retry_after.as_deref(), a.text().as_ref()), (429, Some("7"), "busy"));
    assert!(!a.is_success());
}

#[tokio::test(flavor = "current_thread")]
async fn a_body_up_to_the_cap_is_read_and_one_past_it_refused() {
    let url = server("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789", "", 0, true);
    let a = get(&url, Limits::new(None).max_body(10)).await.unwrap();
    assert_eq!(a.body, b"0123456789");
    // Refused by its Content-Length, before reading.
    assert_eq!(get(&url, Limits::new(None).max_body(9)).await, Err(ExchangeError::TooLarge { status: 200, limit: 9 }));
    // Without a cap, a large body is read whole.
    let big = server("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n", "0123456789abcdef", 64 * 1024, true);
    assert_eq!(get(&big, Limits::new(deadline(30_000))).await.unwrap().body.len(), 1024 * 1024);
}

#[tokio::test(flavor = "current_thread")]
async fn an_endless_body_is_refused_while_reading() {
    // Chunked: no Content-Length tells the size, only reading can; the server would
    // send 64 MiB and then hold the connection open.
    let url = server(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        "10\r\n0123456789abcdef\r\n",
        4 * 1024 * 1024,
        false,
    );
    let err = get(&url, Limits::new(deadline(30_000)).max_body(64 * 1024)).await.unwrap_err();
    assert_eq!(err, ExchangeError::TooLarge { status: 200, limit: 64 * 1024 });
}

#[tokio::test(flavor = "current_thread")]
async fn an_error_body_is_left_unread_when_asked() {
    // Declares 100 bytes and never sends them: reading would wait for the deadline.
    let url = server("HTTP/1.1 500 Internal Server Error\r\ncontent-length: 100\r\n\r\n{", "", 0, false);
    let a = get(&url, Limits::new(deadline(5_000)).skip_error_bodies()).await.unwrap();
    assert_eq!((a.status, a.body.len()), (500, 0));
    assert_eq!(get(&url, Limits::new(deadline(300))).await, Err(ExchangeError::Timeout(300)));
}

#[tokio::test(flavor = "current_thread")]
async fn a_body_that_breaks_off_is_unreadable_with_its_status() {
    let url = server("HTTP/1.1 503 Service Unavailable\r\nretry-after: 2\r\ncontent-length: 100\r\n\r\n{", "", 0, true);
    for limits in [Limits::new(deadline(10_000)), Limits::new(deadline(10_000)).max_body(1000)] {
        match get(&url, limits).await {
            Err(ExchangeError::Unreadable { status: 503, retry_after: Some(r), .. }) => assert_eq!(r, "2"),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_answer_is_a_timeout_and_no_listener_is_unreachable() {
    let url = server("", "", 0, false);
    assert_eq!(get(&url, Limits::new(deadline(200))).await, Err(ExchangeError::Timeout(200)));
    let err = get("http://127.0.0.1:1/", Limits::new(None)).await.unwrap_err();
    assert!(matches!(err, ExchangeError::Unreachable(_)) && err.status().is_none(), "{err:?}");
}

/// Every transport failure, each with a detail naming a host and a path.
fn failures() -> Vec<ExchangeError> {
    const DETAIL: &str = "error sending request for url (http://10.9.8.7/secret-path)";
    vec![
        ExchangeError::Unreachable(DETAIL.into()),
        ExchangeError::Unreadable { status: 200, retry_after: None, detail: DETAIL.into() },
        ExchangeError::TooLarge { status: 200, limit: 1024 },
        ExchangeError::Timeout(1500),
    ]
}

fn assert_no_leak(e: &ApiError, what: &str) {
    let details = e.details.as_ref().map(|d| d.to_string()).unwrap_or_default();
    for leak in ["10.9.8.7", "secret-path", "error sending request"] {
        assert!(!e.message.contains(leak) && !details.contains(leak), "{what}: {e} leaks {leak}");
    }
}

#[test]
fn transport_details_are_logged_and_never_answered() {
    for f in failures() {
        let what = format!("{f:?}");
        let logged = f.log_detail();
        if let ExchangeError::Unreachable(d) | ExchangeError::Unreadable { detail: d, .. } = &f {
            assert!(logged.contains(d.as_str()), "{logged}");
        }

        // PostgREST.
        let up = crate::data_api::UpstreamError::from(f.clone());
        let api = ApiError::from(up.clone());
        assert_no_leak(&api, &what);
        assert_eq!(api.status, if matches!(f, ExchangeError::Timeout(_)) { 504 } else { 502 }, "{what}");

        // Neo4j: the run's error has the detail; the client's answer does not.
        let source = crate::populate::neo4j::SourceFailure::from(f.clone());
        let api = crate::populate::source_error(&source, "r1.x");
        assert_no_leak(&api, &what);
        assert_eq!((api.status, api.code), (502, "source_error"), "{what}");
        assert_eq!(api.log_detail.as_deref(), Some(source.message()));

        // The embeddings API.
        let failure = crate::embed_jobs::ApiFailure::from(f.clone());
        assert!(failure.charges_an_attempt() && !failure.refuses_input(), "{what}");
        let api = ApiError::from(failure.clone());
        assert_no_leak(&api, &what);
        assert_eq!((api.status, api.code), (502, "embeddings_unavailable"), "{what}");
        assert_eq!(api.log_detail, Some(failure.message));

        // The JWKS endpoint.
        let why = crate::jwt::jwks_failure(f.clone());
        let api = ApiError::from(crate::jwt::AuthError::KeysUnavailable(why.clone()));
        assert_no_leak(&api, &what);
        assert_eq!((api.status, api.code), (503, "jwks_unavailable"), "{what}");
        assert_eq!(api.log_detail, Some(why));
    }
}

#[test]
fn each_upstream_keeps_its_own_timeout_meaning() {
    use crate::populate::neo4j::SourceFailure;
    let t = ExchangeError::Timeout(1500);
    assert_eq!(crate::data_api::UpstreamError::from(t.clone()), crate::data_api::UpstreamError::Timeout(1500));
    assert!(matches!(SourceFailure::from(t.clone()), SourceFailure::TimedOut { ms: 1500, .. }));
    assert_eq!(crate::embed_jobs::ApiFailure::from(t.clone()).status, None);
    assert!(crate::jwt::jwks_failure(t).contains("within 1500 ms"));
    // A broken-off body keeps its status where the upstream's error has one.
    let broken = ExchangeError::Unreadable { status: 429, retry_after: None, detail: "x".into() };
    assert!(matches!(SourceFailure::from(broken.clone()), SourceFailure::Failed { status: Some(429), .. }));
    assert_eq!(crate::embed_jobs::ApiFailure::from(broken).status, Some(429));
}
