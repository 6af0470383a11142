//! # edgesync-live-hub
//!
//! `LiveHub`: one Durable Object per user (named by the user id), holding that user's
//! WebSockets (Hibernation API: an idle hub is evicted while its sockets stay open)
//! and the pulls waiting in `/sync?wait=` and PowerSync's streams. It knows nothing
//! but checkpoints: a poke is passed to every socket as
//! `{"type":"poke","checkpoint":"<n>"}` and wakes every waiting pull whose page is
//! older. What a user gets is decided by their next pull.
//!
//! Only I/O: its decisions are `shared::live::hub`'s. The sync Worker exports the
//! class (its namespace is `edgesync-sync`'s); every Worker calls it through
//! `edgesync_edge::hub`.

use std::cell::RefCell;

use edgesync_edge as edge;
use edgesync_edge::edgesync_shared::deadline;
use edgesync_edge::edgesync_shared::live::{
    self,
    hub::{self, Hub, HubCall},
};
use futures_channel::oneshot;
use worker::{
    durable_object, worker_sys::WebSocketRequestResponsePair, Env, Headers, Request, Response, State, WebSocket,
    WebSocketIncomingMessage, WebSocketPair,
};

/// The storage key of the newest checkpoint poked, so an evicted hub remembers it.
const POKED: &str = "poked";

#[durable_object]
pub struct LiveHub {
    state: State,
    /// What pokes and waits decide (`shared::live::hub`): the newest checkpoint poked
    /// (read from storage once, where every poke is kept: a hub evicted while a synced
    /// writer held the watermark still tells the next waiting pull that its change
    /// came), the newest one sent to the sockets, and the waiting pulls.
    hub: RefCell<Hub<oneshot::Sender<u64>>>,
}

/// What a socket remembers across hibernation.
#[derive(serde::Serialize, serde::Deserialize)]
struct Attachment {
    /// The token's `exp` (seconds): the socket closes then.
    expires: u64,
}

impl worker::DurableObject for LiveHub {
    fn new(state: State, _env: Env) -> Self {
        // Heartbeats are answered by the runtime, without waking the object.
        if let Ok(pair) = WebSocketRequestResponsePair::new(live::PING, live::PONG) {
            state.set_websocket_auto_response(&pair);
        }
        LiveHub { state, hub: RefCell::new(Hub::default()) }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        let url = req.url()?;
        match HubCall::parse(url.path(), url.query().unwrap_or_default()) {
            Some(HubCall::Poke { checkpoint }) => {
                self.poked().await;
                let newer = self.hub.borrow().must_store(checkpoint);
                // Wake first: the waiting pulls and sockets of this instance must not
                // depend on the write that only an evicted hub's successor reads.
                self.poke(checkpoint);
                if newer {
                    if let Err(e) = self.state.storage().put(POKED, checkpoint).await {
                        worker::console_warn!("live: the poke was delivered but not stored: {e}");
                    }
                }
                Response::empty().map(|r| r.with_status(204))
            }
            Some(HubCall::Wait { after, ms }) => {
                let poked = self.wait(after, ms).await;
                Response::ok(hub::wait_answer(poked))
            }
            Some(HubCall::Socket { expires, subprotocol }) => self.accept(expires, subprotocol).await,
            None => Response::error("no such hub path", 404),
        }
    }

    async fn alarm(&self) -> worker::Result<Response> {
        // Close every socket whose token has expired; wake again for the next one.
        let sockets = self.state.get_websockets();
        let expires: Vec<u64> = sockets
            .iter()
            .map(|ws| ws.deserialize_attachment::<Attachment>().ok().flatten().map_or(0, |a| a.expires))
            .collect();
        let (close, next) = hub::sweep(edge::now_secs(), &expires);
        for (ws, _) in sockets.iter().zip(close).filter(|(_, close)| *close) {
            let _ = ws.close(Some(live::CLOSE_TOKEN_EXPIRED), Some("token expired"));
        }
        if let Some(at) = next {
            self.state.storage().set_alarm(hub::alarm_offset(at, edge::now_ms())).await?;
        }
        Response::empty()
    }

    async fn websocket_message(&self, ws: WebSocket, message: WebSocketIncomingMessage) -> worker::Result<()> {
        // Pings are answered by the runtime; anything else is not part of the protocol.
        if let WebSocketIncomingMessage::String(text) = message {
            if text == live::PING {
                ws.send_with_str(live::PONG)?;
            }
        }
        Ok(())
    }

    async fn websocket_close(&self, ws: WebSocket, code: usize, _reason: String, _clean: bool) -> worker::Result<()> {
        // Complete the closing handshake the client began (1005 "no code" cannot be sent).
        let _ = ws.close(Some(hub::close_code(code)), Some("closed"));
        Ok(())
    }

    async fn websocket_error(&self, _ws: WebSocket, _error: worker::Error) -> worker::Result<()> {
        Ok(())
    }
}

impl LiveHub {
    /// The newest checkpoint poked, read from storage once per instance.
    async fn poked(&self) -> u64 {
        if let Some(p) = self.hub.borrow().known_poked() {
            return p;
        }
        let stored = self.state.storage().get::<u64>(POKED).await.ok().flatten().unwrap_or(0);
        // A poke may have been handled while storage was read: `loaded` keeps it.
        self.hub.borrow_mut().loaded(stored)
    }

    fn poke(&self, checkpoint: u64) {
        let poked = self.hub.borrow_mut().poke(checkpoint);
        for tx in poked.wake {
            let _ = tx.send(checkpoint);
        }
        if let Some(message) = poked.send {
            for ws in self.state.get_websockets() {
                let _ = ws.send_with_str(&message);
            }
        }
    }

    async fn wait(&self, after: u64, ms: u64) -> Option<u64> {
        self.poked().await;
        let (tx, rx) = oneshot::channel();
        if let Some(poked) = self.hub.borrow_mut().wait(after, tx) {
            return Some(poked);
        }
        let poked = deadline::within(Some(edge::deadline(ms)), rx).await;
        // At the deadline the sender is still listed: drop it.
        self.hub.borrow_mut().forget(oneshot::Sender::is_canceled);
        poked.and_then(Result::ok)
    }

    async fn accept(&self, expires: u64, subprotocol: bool) -> worker::Result<Response> {
        let pair = WebSocketPair::new()?;
        self.state.accept_web_socket(&pair.server);
        pair.server.serialize_attachment(Attachment { expires })?;
        let storage = self.state.storage();
        if hub::alarm_needed(storage.get_alarm().await?, expires) {
            storage.set_alarm(hub::alarm_offset(expires, edge::now_ms())).await?;
        }
        let response = Response::from_websocket(pair.client)?;
        if subprotocol {
            let headers = Headers::new();
            headers.set("sec-websocket-protocol", live::SUBPROTOCOL)?;
            return Ok(response.with_headers(headers));
        }
        Ok(response)
    }
}
