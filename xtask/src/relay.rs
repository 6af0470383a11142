//! The local stand-in for Supabase's database webhook on `entries`.
//!
//! On Supabase, `edgesync.configure_embed_webhook(url, secret)` makes `pg_net` POST
//! the webhook payload to `embed_entry`. The local Postgres has no `pg_net`, so the
//! stack runs this relay instead: it `LISTEN`s on the channel that
//! `edgesync.enqueue_embedding` notifies (`edgesync_embed`, the same webhook-shaped
//! JSON) and POSTs each payload to `{functions}/embed_entry` with the shared secret in
//! `x-webhook-secret`, as pg_net would. Like pg_net it is fire-and-forget: a payload
//! that cannot be delivered is logged and dropped, and the job table plus the Cron
//! Trigger recover it.

use crate::util::{Context, Result};
use postgres::fallible_iterator::FallibleIterator;
use std::time::{Duration, Instant};

/// The channel `edgesync.enqueue_embedding` notifies.
pub const CHANNEL: &str = "edgesync_embed";
/// The environment variable that carries the secret (not argv: `ps` shows argv).
pub const SECRET_ENV: &str = "EDGESYNC_EMBED_WEBHOOK_SECRET";
/// The relay's `application_name` once it is listening.
pub const APPLICATION_NAME: &str = "edgesync-embed-relay";

/// Relay notifications to `target` until the process is killed; reconnect to the
/// database when the connection drops.
pub fn run(database_url: &str, target: &str, secret: &str) -> ! {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    let mut delay = Duration::from_millis(200);
    loop {
        let Err(e) = listen(database_url, &agent, target, secret);
        eprintln!("relay: {e}; reconnecting in {delay:?}");
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Deliver until the connection fails (it never ends otherwise).
fn listen(database_url: &str, agent: &ureq::Agent, target: &str, secret: &str) -> Result<std::convert::Infallible> {
    let mut db = postgres::Client::connect(database_url, postgres::NoTls).context("relay: connect")?;
    // The application name, set once listening, is how the stack knows it is ready.
    db.batch_execute(&format!("LISTEN {CHANNEL}; SET application_name = '{APPLICATION_NAME}'"))
        .context("relay: LISTEN")?;
    eprintln!("relay: listening on {CHANNEL}, delivering to {target}");
    let mut notifications = db.notifications();
    let mut it = notifications.blocking_iter();
    loop {
        let n = match it.next() {
            Ok(Some(n)) => n,
            Ok(None) => return Err(crate::util::Error("the database closed the connection".into())),
            Err(e) => return Err(crate::util::Error(format!("the database connection failed: {e}"))),
        };
        let started = Instant::now();
        let outcome = agent
            .post(target)
            .set("content-type", "application/json")
            .set("x-webhook-secret", secret)
            .send_string(n.payload());
        let status = match outcome {
            Ok(r) => r.status().to_string(),
            Err(ureq::Error::Status(code, r)) => format!("{code} {}", r.into_string().unwrap_or_default()),
            Err(e) => format!("not delivered ({e})"),
        };
        eprintln!("relay: {} bytes -> {status} in {:.1}ms", n.payload().len(), started.elapsed().as_secs_f64() * 1e3);
    }
}
