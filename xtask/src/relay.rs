//! The local stand-ins for what Supabase's database sends through pg_net.
//!
//! * **The embedding webhook.** On Supabase, `edgesync.configure_embed_webhook(url,
//!   secret)` makes `pg_net` POST the webhook payload to `embed_entry`. Here the relay
//!   `LISTEN`s on the channel that `edgesync.enqueue_embedding` notifies
//!   (`edgesync_embed`, the same webhook-shaped JSON) and POSTs each payload to
//!   `{functions}/embed_entry` with the shared secret in `x-webhook-secret`.
//! * **Live pokes.** On Supabase, `edgesync.configure_live_pokes(url, secret)` makes
//!   the live trigger POST `{"checkpoint", "users"}` to `/live/poke`. Here the relay
//!   listens on `edgesync_live` and POSTs with `x-live-secret`; notices that arrived
//!   together are coalesced per user first (`shared::live::coalesce`).
//!
//! Like pg_net both are fire-and-forget: a payload that cannot be delivered is logged
//! and dropped. The job table plus the Cron Trigger recover an embedding; a pull at
//! the client's interval (or a long-poll's deadline) recovers a poke.

use crate::util::{Context, Result};
use edgesync_shared::live;
use postgres::fallible_iterator::FallibleIterator;
use std::time::{Duration, Instant};

/// One relay: the channel it listens on and how it delivers.
#[derive(Debug, Clone, Copy)]
pub struct Relay {
    /// The xtask subcommand that runs it; also its log's name.
    pub command: &'static str,
    pub channel: &'static str,
    /// Its `application_name` once listening: how the stack knows it is ready.
    pub application_name: &'static str,
    /// The header that carries the secret.
    pub secret_header: &'static str,
    /// The environment variable that carries the secret (not argv: `ps` shows argv).
    pub secret_env: &'static str,
    /// Coalesce the notices that arrived together (live pokes), or send each (webhooks).
    pub coalesce: bool,
}

/// The embedding webhook's relay (`xtask embed-relay`).
pub const EMBED: Relay = Relay {
    command: "embed-relay",
    channel: "edgesync_embed",
    application_name: "edgesync-embed-relay",
    secret_header: "x-webhook-secret",
    secret_env: "EDGESYNC_EMBED_WEBHOOK_SECRET",
    coalesce: false,
};

/// The live pokes' relay (`xtask live-relay`).
pub const LIVE: Relay = Relay {
    command: "live-relay",
    channel: "edgesync_live",
    application_name: "edgesync-live-relay",
    secret_header: live::POKE_SECRET_HEADER,
    secret_env: "EDGESYNC_LIVE_POKE_SECRET",
    coalesce: true,
};

/// Relay notifications to `target` until the process is killed; reconnect to the
/// database when the connection drops.
pub fn run(relay: &Relay, database_url: &str, target: &str, secret: &str) -> ! {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    let mut delay = Duration::from_millis(200);
    loop {
        let Err(e) = listen(relay, database_url, &agent, target, secret);
        eprintln!("relay: {e}; reconnecting in {delay:?}");
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Deliver until the connection fails (it never ends otherwise).
fn listen(
    relay: &Relay,
    database_url: &str,
    agent: &ureq::Agent,
    target: &str,
    secret: &str,
) -> Result<std::convert::Infallible> {
    let mut db = postgres::Client::connect(database_url, postgres::NoTls).context("relay: connect")?;
    db.batch_execute(&format!("LISTEN {}; SET application_name = '{}'", relay.channel, relay.application_name))
        .context("relay: LISTEN")?;
    eprintln!("relay: listening on {}, delivering to {target}", relay.channel);
    let mut notifications = db.notifications();
    loop {
        let first = match notifications.blocking_iter().next() {
            Ok(Some(n)) => n.payload().to_owned(),
            Ok(None) => return Err(crate::util::Error("the database closed the connection".into())),
            Err(e) => return Err(crate::util::Error(format!("the database connection failed: {e}"))),
        };
        let payloads = if relay.coalesce {
            // Whatever else has arrived meanwhile goes in the same delivery.
            let mut pokes: Vec<live::Poke> = live::parse_poke(first.as_bytes()).into_iter().collect();
            let mut more = notifications.iter();
            while let Ok(Some(n)) = more.next() {
                pokes.extend(live::parse_poke(n.payload().as_bytes()));
            }
            live::coalesce(pokes).iter().map(live::Poke::body).collect()
        } else {
            vec![first]
        };
        for payload in payloads {
            deliver(relay, agent, target, secret, &payload);
        }
    }
}

fn deliver(relay: &Relay, agent: &ureq::Agent, target: &str, secret: &str, payload: &str) {
    let started = Instant::now();
    let outcome = agent
        .post(target)
        .set("content-type", "application/json")
        .set(relay.secret_header, secret)
        .send_string(payload);
    let status = match outcome {
        Ok(r) => r.status().to_string(),
        Err(ureq::Error::Status(code, r)) => format!("{code} {}", r.into_string().unwrap_or_default()),
        Err(e) => format!("not delivered ({e})"),
    };
    eprintln!("relay: {} bytes -> {status} in {:.1}ms", payload.len(), started.elapsed().as_secs_f64() * 1e3);
}
