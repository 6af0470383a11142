//! Test support: a raw HTTP/1.1 server that answers exactly the bytes it is told (a
//! broken, endless or stalled answer included), and a timer for deadlines in tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

/// The tokio timer as a [`crate::deadline::Sleep`].
pub const TOKIO_SLEEP: crate::deadline::Sleep<'static> =
    &|ms| Box::pin(tokio::time::sleep(std::time::Duration::from_millis(ms)));

/// A server on 127.0.0.1 that reads each connection's request, writes `head`, then
/// whatever `body` writes, then closes (`close`) or holds the connection open for up
/// to 10 s. Returns `http://<addr>`.
pub fn raw_server(head: &'static str, body: impl Fn(&mut TcpStream) + Send + Sync + 'static, close: bool) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let body = Arc::new(body);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(head.as_bytes());
                body(&mut s);
                let _ = s.flush();
                if !close {
                    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                    let _ = s.read(&mut buf);
                }
            });
        }
    });
    url
}
