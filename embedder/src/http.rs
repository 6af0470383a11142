//! Just enough HTTP/1.1 for a local JSON API, on std's TcpListener, one thread per
//! connection: keep-alive, `Content-Length` and chunked bodies read only up to a
//! limit, `Expect: 100-continue`, and a lingering close whenever a body was left
//! unread (so the client still gets the answer instead of a reset).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The request line and headers together may not be longer than this.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Open connections at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 256;
/// How long an idle keep-alive connection is kept.
const IDLE: Duration = Duration::from_secs(60);

/// A parsed request line and headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub method: String,
    pub target: String,
    /// HTTP/1.1 (keep-alive by default) rather than 1.0.
    pub http11: bool,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of a header (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    pub fn chunked(&self) -> bool {
        self.has_token("transfer-encoding", "chunked")
    }

    /// `Content-Length`, or `Err` when it is not a number or repeated differently.
    pub fn content_length(&self) -> Result<Option<u64>, String> {
        let mut found: Option<u64> = None;
        for (_, v) in self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
            let n = v.trim().parse::<u64>().map_err(|_| format!("bad Content-Length {v:?}"))?;
            if found.is_some_and(|f| f != n) {
                return Err("conflicting Content-Length headers".into());
            }
            found = Some(n);
        }
        Ok(found)
    }

    pub fn keep_alive(&self) -> bool {
        if self.has_token("connection", "close") {
            return false;
        }
        self.http11 || self.has_token("connection", "keep-alive")
    }
}

/// Read one request head. `Ok(None)` is a clean end of the connection before a request.
pub fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Head>> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
    let mut budget = MAX_HEAD_BYTES;
    let mut line = String::new();
    let mut next_line = |line: &mut String, budget: &mut usize| -> io::Result<usize> {
        line.clear();
        let n = reader.by_ref().take(*budget as u64 + 1).read_line(line)?;
        if n > *budget {
            return Err(bad("request head too large"));
        }
        *budget -= n;
        Ok(n)
    };
    // Tolerate empty lines before a request (RFC 9112 §2.2).
    loop {
        if next_line(&mut line, &mut budget)? == 0 {
            return Ok(None);
        }
        if !line.trim_end_matches(['\r', '\n']).is_empty() {
            break;
        }
    }
    let mut parts = line.trim_end_matches(['\r', '\n']).split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) if !m.is_empty() && t.starts_with('/') => (m, t, v),
        _ => return Err(bad("malformed request line")),
    };
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(bad("unsupported HTTP version")),
    };
    let (method, target) = (method.to_owned(), target.to_owned());
    let mut headers = Vec::new();
    loop {
        if next_line(&mut line, &mut budget)? == 0 {
            return Err(bad("connection closed inside the request head"));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').ok_or_else(|| bad("malformed header"))?;
        if k.is_empty() || k.ends_with(' ') {
            return Err(bad("malformed header"));
        }
        headers.push((k.to_owned(), v.trim().to_owned()));
    }
    Ok(Some(Head { method, target, http11, headers }))
}

/// Why a body could not be read.
#[derive(Debug, PartialEq)]
pub enum BodyError {
    /// Longer than the limit (the rest is left unread).
    TooLarge,
    Malformed(String),
}

/// Read a body of `length` bytes or, when `chunked`, decode it; either way at most
/// `limit` bytes of payload.
pub fn read_body(reader: &mut impl BufRead, chunked: bool, length: u64, limit: usize) -> Result<Vec<u8>, BodyError> {
    let io_err = |e: io::Error| BodyError::Malformed(format!("could not read the body: {e}"));
    if !chunked {
        if length > limit as u64 {
            return Err(BodyError::TooLarge);
        }
        let mut body = vec![0; length as usize];
        reader.read_exact(&mut body).map_err(io_err)?;
        return Ok(body);
    }
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        reader.by_ref().take(1024).read_line(&mut line).map_err(io_err)?;
        let size = line.trim_end_matches(['\r', '\n']).split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size, 16)
            .map_err(|_| BodyError::Malformed(format!("bad chunk size {:?}", line.trim_end())))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                line.clear();
                let n = reader.by_ref().take(8192).read_line(&mut line).map_err(io_err)?;
                if n == 0 || line.trim_end_matches(['\r', '\n']).is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() as u64 + size > limit as u64 {
            return Err(BodyError::TooLarge);
        }
        let start = body.len();
        body.resize(start + size as usize, 0);
        reader.read_exact(&mut body[start..]).map_err(io_err)?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf).map_err(io_err)?;
        if &crlf != b"\r\n" {
            return Err(BodyError::Malformed("chunk not followed by CRLF".into()));
        }
    }
}

/// A response to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(&'static str, String)>,
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The bytes of a response (no body for HEAD, but its length).
pub fn render(resp: &Response, head_only: bool, close: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        resp.status,
        reason(resp.status),
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if close {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(resp.body.as_bytes());
    }
    bytes
}

/// What a handler is given: the head, and the body on demand.
pub struct Request<'a, R: BufRead, W: Write> {
    pub head: &'a Head,
    reader: &'a mut R,
    writer: &'a mut W,
    limit: usize,
    /// Whether the body has been read completely (so the connection can be reused).
    consumed: bool,
}

impl<R: BufRead, W: Write> Request<'_, R, W> {
    /// Read the body (sending `100 Continue` first if the client waits for it).
    pub fn body(&mut self) -> Result<Vec<u8>, BodyError> {
        let length = self.head.content_length().map_err(BodyError::Malformed)?.unwrap_or(0);
        let chunked = self.head.chunked();
        if !chunked && length > self.limit as u64 {
            return Err(BodyError::TooLarge);
        }
        if self.head.header("expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue")) {
            let _ = self.writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").and_then(|_| self.writer.flush());
        }
        let body = read_body(self.reader, chunked, length, self.limit)?;
        self.consumed = true;
        Ok(body)
    }
}

/// Serve `listener` forever, calling `handler` for each request on a thread per
/// connection.
pub fn serve<F>(listener: TcpListener, limit: usize, handler: F)
where
    F: Fn(&mut Request<BufReader<TcpStream>, TcpStream>) -> Response + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            let busy = Response { status: 503, body: "{\"error\":{\"message\":\"too many connections\",\"type\":\"server_error\",\"param\":null,\"code\":\"overloaded\"}}".into(), headers: vec![] };
            let _ = stream.write_all(&render(&busy, false, true));
            continue;
        }
        let (handler, open) = (handler.clone(), open.clone());
        std::thread::spawn(move || {
            let _ = connection(stream, limit, &*handler);
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

fn connection<F>(stream: TcpStream, limit: usize, handler: &F) -> io::Result<()>
where
    F: Fn(&mut Request<BufReader<TcpStream>, TcpStream>) -> Response,
{
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_write_timeout(Some(IDLE))?;
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let head = match read_head(&mut reader) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let resp = Response {
                    status: 400,
                    body: serde_json::json!({"error": {"message": format!("Malformed HTTP request: {e}"),
                        "type": "invalid_request_error", "param": null, "code": "bad_http"}})
                    .to_string(),
                    headers: vec![],
                };
                writer.write_all(&render(&resp, false, true))?;
                return linger(reader.into_inner());
            }
            Err(e) => return Err(e),
        };
        let has_body = head.chunked() || !matches!(head.content_length(), Ok(None | Some(0)));
        let mut req = Request { head: &head, reader: &mut reader, writer: &mut writer, limit, consumed: !has_body };
        let resp = handler(&mut req);
        let reusable = req.consumed && head.keep_alive();
        writer.write_all(&render(&resp, head.method == "HEAD", !reusable))?;
        writer.flush()?;
        if !reusable {
            return linger(reader.into_inner());
        }
    }
}

/// Close politely: stop writing, then read and drop what the client still sends (a
/// body we did not want) for a short while, so closing does not reset the connection
/// before the client has read our answer.
fn linger(stream: TcpStream) -> io::Result<()> {
    let _ = stream.shutdown(Shutdown::Write);
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 64 * 1024];
    let mut s = &stream;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> io::Result<Option<Head>> {
        read_head(&mut raw.as_bytes())
    }

    #[test]
    fn heads_parse_with_case_insensitive_headers() {
        let h = head("\r\nPOST /v1/embeddings?x=1 HTTP/1.1\r\nHost: a\r\ncontent-LENGTH: 12\r\nAuthorization:  Bearer k \r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!((h.method.as_str(), h.target.as_str(), h.http11), ("POST", "/v1/embeddings?x=1", true));
        assert_eq!(h.header("authorization"), Some("Bearer k"));
        assert_eq!(h.content_length(), Ok(Some(12)));
        assert!(h.keep_alive() && !h.chunked());
        let h = head("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive());
        let h =
            head("GET / HTTP/1.1\r\nConnection: close\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive() && h.chunked());
        assert_eq!(head("").unwrap(), None);
    }

    #[test]
    fn malformed_heads_are_invalid_data() {
        for raw in [
            "GET\r\n\r\n",
            "GET / HTTP/2\r\n\r\n",
            "GET nopath HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nno colon\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n",
        ] {
            assert_eq!(head(raw).unwrap_err().kind(), io::ErrorKind::InvalidData, "{raw:?}");
        }
        let huge = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(head(&huge).unwrap_err().kind(), io::ErrorKind::InvalidData);
        let h = head("GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n").unwrap().unwrap();
        assert!(h.content_length().is_err());
        let h = head("GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n").unwrap().unwrap();
        assert!(h.content_length().is_err());
    }

    #[test]
    fn bodies_by_length_or_chunks_up_to_the_limit() {
        assert_eq!(read_body(&mut &b"hello world"[..], false, 5, 10).unwrap(), b"hello");
        assert_eq!(read_body(&mut &b"hello"[..], false, 11, 10).unwrap_err(), BodyError::TooLarge);
        assert!(matches!(read_body(&mut &b"hel"[..], false, 5, 10), Err(BodyError::Malformed(_))));
        let chunked = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let mut r = &chunked[..];
        assert_eq!(read_body(&mut r, true, 0, 100).unwrap(), b"hello world");
        assert_eq!(r, b"NEXT", "the reader stops at the end of the body");
        assert_eq!(read_body(&mut &chunked[..], true, 0, 10).unwrap_err(), BodyError::TooLarge);
        assert!(matches!(read_body(&mut &b"zz\r\n"[..], true, 0, 10), Err(BodyError::Malformed(_))));
        assert!(matches!(read_body(&mut &b"2\r\nabXY"[..], true, 0, 10), Err(BodyError::Malformed(_))));
    }

    #[test]
    fn responses_render_with_length_and_extra_headers() {
        let r = Response { status: 405, body: "{}".into(), headers: vec![("allow", "POST".into())] };
        assert_eq!(
            String::from_utf8(render(&r, false, true)).unwrap(),
            "HTTP/1.1 405 Method Not Allowed\r\ncontent-type: application/json\r\ncontent-length: 2\r\nallow: POST\r\nconnection: close\r\n\r\n{}"
        );
        assert!(String::from_utf8(render(&r, true, false)).unwrap().ends_with("allow: POST\r\n\r\n"));
    }

    #[test]
    fn a_real_connection_keeps_alive_and_lingers_after_an_unread_body() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            serve(listener, 16, |req| {
                let body = if req.head.target == "/echo" {
                    match req.body() {
                        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                        Err(e) => format!("{e:?}"),
                    }
                } else {
                    "skipped".into()
                };
                Response { status: 200, body, headers: vec![] }
            })
        });
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Two requests on one connection, the second with Expect: 100-continue.
        s.write_all(b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").unwrap();
        s.write_all(
            b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n2\r\nxy\r\n0\r\n\r\n",
        )
        .unwrap();
        // A body the handler does not read: answered, then the connection is closed.
        s.write_all(b"POST /other HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd").unwrap();
        let mut all = String::new();
        s.read_to_string(&mut all).unwrap();
        let answers: Vec<&str> = all.split("HTTP/1.1 ").skip(1).collect();
        assert_eq!(answers.len(), 4, "{all}");
        assert!(answers[0].ends_with("\r\n\r\nabc"), "{all}");
        assert!(answers[1].starts_with("100 Continue"), "{all}");
        assert!(answers[2].ends_with("\r\n\r\nxy"), "{all}");
        assert!(answers[3].contains("connection: close") && answers[3].ends_with("skipped"), "{all}");
        // Too large: refused without reading, still answered.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nContent-Length: 1000000000000\r\n\r\n").unwrap();
        let mut all = String::new();
        s.read_to_string(&mut all).unwrap();
        assert!(all.ends_with("TooLarge") && all.contains("connection: close"), "{all}");
    }
}
