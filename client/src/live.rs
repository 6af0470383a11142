//! Live updates for the reference client: the `/live` WebSocket of pokes, and the
//! long-poll (`/sync?wait=`) when a socket cannot be had.
//!
//! A poke names a checkpoint and nothing else: on each one the client pulls, and the
//! pull decides what arrives. A missed poke only delays a change until the next pull,
//! so a live client still pulls at a long interval.

use std::net::TcpStream;
use std::time::Duration;

use edgesync_shared::live::{CLOSE_TOKEN_EXPIRED, PING, SUBPROTOCOL};
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

use crate::{Client, Error, PullProgress, Result};

/// How long a waiting pull waits for a change (after a poke that a sync did not reach,
/// and when long-polling without a socket).
pub const LONG_POLL: Duration = Duration::from_secs(25);

/// An open `/live` socket.
pub struct Live {
    socket: tungstenite::WebSocket<MaybeTlsStream<TcpStream>>,
}

/// What [`Live::next`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveEvent {
    /// A change reaching this checkpoint was committed: pull.
    Poke(u64),
    /// Nothing within the timeout; a heartbeat was sent.
    Quiet,
    /// The server closed the socket because the token expired (code 4001): refresh
    /// it and open a new one.
    TokenExpired,
    /// The socket closed or failed otherwise: open a new one, or long-poll.
    Closed(String),
}

impl Client {
    /// Open the `/live` socket with the current token (as a native client, in
    /// `Authorization`). Refused sockets are `Error::Http` like any answer.
    pub fn open_live(&mut self) -> Result<Live> {
        let token = self.token.clone().ok_or(Error::NoToken)?;
        let base = self.cfg.live_url.as_deref().unwrap_or(&self.cfg.url).trim_end_matches('/');
        let url = format!("{}/live", base.replacen("http", "ws", 1));
        let mut req = url.into_client_request().map_err(|e| Error::Protocol(format!("the /live URL: {e}")))?;
        let headers = req.headers_mut();
        let value = |v: String| v.parse().map_err(|_| Error::Protocol("a header value is not valid".into()));
        headers.insert("authorization", value(format!("Bearer {token}"))?);
        headers.insert("sec-websocket-protocol", value(SUBPROTOCOL.to_owned())?);
        for (k, v) in &self.cfg.headers {
            if let Ok(name) = tungstenite::http::HeaderName::from_bytes(k.as_bytes()) {
                headers.insert(name, value(v.clone())?);
            }
        }
        match tungstenite::connect(req) {
            Ok((socket, _)) => Ok(Live { socket }),
            Err(tungstenite::Error::Http(answer)) => {
                let status = answer.status().as_u16();
                let body = answer.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
                Err(Error::Http(Box::new(crate::http_error_from(status, &body))))
            }
            Err(e) => Err(Error::Offline(format!("GET /live: {e}"))),
        }
    }

    /// Pull as [`Client::pull_delta`] does, but let the first request wait up to `wait`
    /// (1-55 s, and 5 s below the request timeout) for a change. Only an up-to-date
    /// device (one with a cursor) waits: a fresh device's pull never does.
    pub fn pull_waiting(&mut self, wait: Duration) -> Result<PullProgress> {
        let most = self.cfg.timeout.saturating_sub(Duration::from_secs(5)).as_secs().min(55);
        let secs = wait.as_secs().clamp(1, most.max(1)) as u32;
        self.pull_wait = Some(secs);
        let result = self.pull_delta();
        self.pull_wait = None;
        result
    }

    /// What a live client does on a poke naming `checkpoint`: nothing when the local
    /// checkpoint is already there; otherwise sync, then, when the pull still fell short
    /// (the poke came before the server's watermark passed its change), a waiting pull
    /// for it. The first failure is returned. `Ok(true)`: it synced.
    pub fn handle_poke(&mut self, checkpoint: u64) -> Result<bool> {
        if self.store.checkpoint()? >= checkpoint {
            return Ok(false);
        }
        self.sync()?;
        if self.store.checkpoint()? < checkpoint {
            self.pull_waiting(LONG_POLL)?;
        }
        Ok(true)
    }
}

impl Live {
    /// The next poke, or what happened instead within `timeout`.
    pub fn next(&mut self, timeout: Duration) -> LiveEvent {
        if let MaybeTlsStream::Plain(s) = self.socket.get_mut() {
            let _ = s.set_read_timeout(Some(timeout));
        }
        loop {
            match self.socket.read() {
                Ok(Message::Text(text)) => {
                    let poke: Option<u64> = serde_json::from_str::<serde_json::Value>(&text)
                        .ok()
                        .filter(|v| v["type"] == "poke")
                        .and_then(|v| v["checkpoint"].as_str().and_then(|c| c.parse().ok()));
                    if let Some(c) = poke {
                        return LiveEvent::Poke(c);
                    }
                    // `pong`, or a message of a newer server: not a poke.
                }
                Ok(Message::Close(frame)) => {
                    return match frame {
                        Some(f) if u16::from(f.code) == CLOSE_TOKEN_EXPIRED => LiveEvent::TokenExpired,
                        other => LiveEvent::Closed(format!("closed by the server: {other:?}")),
                    };
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    return match self.socket.send(Message::text(PING)) {
                        Ok(()) => LiveEvent::Quiet,
                        Err(e) => LiveEvent::Closed(format!("heartbeat failed: {e}")),
                    };
                }
                Err(e) => return LiveEvent::Closed(e.to_string()),
            }
        }
    }
}
