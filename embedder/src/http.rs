//! The connections under the axum router. hyper does HTTP/1.1 (keep-alive, chunked
//! bodies, `Expect: 100-continue`); this adds what it does not: a cap on open
//! connections (more are answered 503 and closed), a body read only up to a limit, and
//! a lingering close whenever a body was left unread (so the client still gets the
//! answer instead of a reset).

use axum::body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The request line and headers together may not be much longer than this (hyper's
/// read buffer; a longer head is answered 431).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Open connections at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 256;
/// How long an idle keep-alive connection is kept (and a request head may take).
const IDLE: Duration = Duration::from_secs(60);

const BUSY: &str = "{\"error\":{\"message\":\"too many connections\",\"type\":\"server_error\",\"param\":null,\"code\":\"overloaded\"}}";

/// Why a body could not be read.
#[derive(Debug, PartialEq)]
pub enum BodyError {
    /// Longer than the limit (the rest is left unread).
    TooLarge,
    Malformed(String),
}

/// Read a body of at most `limit` bytes. A `Content-Length` over the limit is refused
/// before reading anything.
pub async fn read_body(body: Body, content_length: Option<u64>, limit: usize) -> Result<Vec<u8>, BodyError> {
    if content_length.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(e) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge),
        Err(e) => Err(BodyError::Malformed(format!("could not read the body: {e}"))),
    }
}

/// Serve `app` on `listener` forever, a task per connection.
pub async fn serve(listener: TcpListener, app: axum::Router) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let busy = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BUSY}",
                    BUSY.len()
                );
                let _ = stream.write_all(busy.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
            continue;
        }
        let (app, open) = (app.clone(), open.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(IDLE)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                // hyper would close at once; the socket comes back to linger on.
                .without_shutdown();
            if let Ok(parts) = connection.await {
                linger(parts.io.into_inner()).await;
            }
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Close politely: stop writing, then read and drop what the client still sends (a
/// body we did not want) for a short while, so closing does not reset the connection
/// before the client has read our answer.
async fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut buf = vec![0u8; 64 * 1024];
    let drain = async {
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
}
