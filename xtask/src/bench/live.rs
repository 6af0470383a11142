//! Live updates in the bench: how long a write takes to reach the other devices of
//! its user (the poke on their `/live` sockets), what an idle socket costs in memory,
//! and what a waiting long-poll costs PostgREST.
//!
//! A device "has" the change once its poke arrived: what it then pulls is a normal
//! `/sync` page, measured elsewhere in the bench. The one-listener rows also give the
//! time until that device's pull has the row (`poke + pull`).

use super::load::cpu;
use serde::{Deserialize, Serialize};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;
use xtask::keys;
use xtask::stack::StackInfo;
use xtask::util::{Context, Error, Result};

type Socket = tungstenite::WebSocket<MaybeTlsStream<TcpStream>>;

/// Write-to-other-device latency of one configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyRow {
    /// `upload` (through `/upload`) or `sql` (an INSERT committed on a database connection).
    pub writer: String,
    /// The user's devices listening on `/live`.
    pub listeners: usize,
    pub writes: usize,
    /// One per (write, listener).
    pub samples: usize,
    /// Pokes that did not arrive within 10 s.
    pub missing: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// One listener: until its pull after the poke had the row.
    pub with_pull_p50_ms: Option<f64>,
    pub with_pull_p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LiveFigures {
    pub latency: Vec<LatencyRow>,
    pub idle_sockets: usize,
    /// Resident memory of the gateway's workerd processes per idle socket, KiB.
    pub kib_per_idle_socket: f64,
    pub longpoll_clients: usize,
    pub longpoll_wait_secs: u32,
    /// `edgesync_pull` calls PostgREST served for the waiting clients.
    pub longpoll_pulls: usize,
    pub longpoll_pulls_per_client_per_min: f64,
    /// An unrelated write transaction held open this long (it took its id first)...
    #[serde(default)]
    pub held_secs: u32,
    /// ...delays a write's delivery to a long-polling device this much...
    #[serde(default)]
    pub held_delivery_ms: f64,
    /// ...and `/health` said this while it was open.
    #[serde(default)]
    pub held_health: String,
}

/// What to measure.
pub struct LivePlan {
    pub writes: usize,
    pub listeners: Vec<usize>,
    pub idle_sockets: usize,
    pub longpoll_clients: usize,
    pub longpoll_wait_secs: u32,
    pub held_secs: u32,
}

pub fn measure(info: &StackInfo, plan: &LivePlan) -> Result<LiveFigures> {
    let mut figures = LiveFigures::default();
    for writer in ["upload", "sql"] {
        for &n in &plan.listeners {
            let row = latency(info, writer, n, plan.writes)?;
            xtask::util::step(format!(
                "live: {writer} writes, {n} listening: p50 {:.1} ms, p99 {:.1} ms ({} samples, {} missing)",
                row.p50_ms, row.p99_ms, row.samples, row.missing
            ));
            figures.latency.push(row);
        }
    }
    figures.idle_sockets = plan.idle_sockets;
    figures.kib_per_idle_socket = idle_memory(info, plan.idle_sockets)?;
    figures.longpoll_clients = plan.longpoll_clients;
    figures.longpoll_wait_secs = plan.longpoll_wait_secs;
    figures.longpoll_pulls = longpoll_cost(info, plan.longpoll_clients, plan.longpoll_wait_secs)?;
    figures.longpoll_pulls_per_client_per_min = figures.longpoll_pulls as f64
        / plan.longpoll_clients.max(1) as f64
        / (f64::from(plan.longpoll_wait_secs) / 60.0);
    figures.held_secs = plan.held_secs;
    let (delivery, health) = held_back(info, plan.held_secs)?;
    figures.held_delivery_ms = delivery;
    figures.held_health = health;
    xtask::util::step(format!(
        "live: with an unrelated transaction open {} s, a write reached the other device after {:.0} ms; /health: {}",
        plan.held_secs, delivery, figures.held_health
    ));
    Ok(figures)
}

/// Issue 18's stall: a write transaction that writes nothing synced (a backfill, a
/// cron job) but has taken its id. With the snapshot's xmin as the watermark it held
/// every pull until it ended; with sync positions (migration 0012) it holds nothing,
/// and the write reaches the other device as it would with nothing open.
fn held_back(info: &StackInfo, hold_secs: u32) -> Result<(f64, String)> {
    let sql = |e: postgres::Error| Error(format!("bench: the held transaction: {e}"));
    let mut holder = postgres::Client::connect(&info.database_url, postgres::NoTls).map_err(sql)?;
    let mut held = holder.transaction().map_err(sql)?;
    // The stack ends transactions idle for 60 s; this one is held on purpose.
    held.batch_execute("set local idle_in_transaction_session_timeout = 0").map_err(sql)?;
    held.query_one("select pg_current_xact_id()", &[]).map_err(sql)?;
    let held_at = Instant::now();
    let user = keys::random_uuid();
    let token = token(info, &user)?;
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(90)).build();
    let get = |url: &str| -> Result<serde_json::Value> {
        Ok(agent
            .get(url)
            .set("authorization", &format!("Bearer {token}"))
            .call()
            .map_err(|e| Error(format!("/sync: {e}")))?
            .into_json()?)
    };
    let first = get(&format!("{}/sync?tables=entries", info.functions_url))?;
    let mut cursor = first["cursor"].as_str().unwrap_or_default().to_owned();
    let id = keys::random_uuid();
    let written = Instant::now();
    let body = serde_json::json!({"client_id": keys::random_uuid(), "mutations": [{
        "op_id": 1, "op": "PUT", "type": "entries", "id": id,
        "data": {"title": "held back", "body_markdown": "", "tags": []}}]});
    agent
        .post(&format!("{}/upload", info.functions_url))
        .set("authorization", &format!("Bearer {token}"))
        .send_json(body)
        .map_err(|e| Error(format!("/upload: {e}")))?;
    let device = {
        let (url, agent, token, id) = (info.functions_url.clone(), agent.clone(), token.clone(), id.clone());
        std::thread::spawn(move || -> Option<Duration> {
            for _ in 0..10 {
                let page: serde_json::Value = agent
                    .get(&format!("{url}/sync?tables=entries&since={cursor}&wait=55"))
                    .set("authorization", &format!("Bearer {token}"))
                    .call()
                    .ok()?
                    .into_json()
                    .ok()?;
                let rows = page["changes"]["entries"]["upserted"].as_array().cloned().unwrap_or_default();
                if rows.iter().any(|r| r["id"] == id.as_str()) {
                    return Some(written.elapsed());
                }
                cursor = page["cursor"].as_str().unwrap_or_default().to_owned();
            }
            None
        })
    };
    // The scenario is a transaction that stays open: hold it for its time.
    std::thread::sleep(Duration::from_secs(u64::from(hold_secs)).saturating_sub(held_at.elapsed()));
    // 200 or 503, either way a verdict.
    let health: serde_json::Value = match ureq::get(&format!("{}/health", info.functions_url)).call() {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r.into_json()?,
        Err(e) => return Err(Error(format!("/health: {e}"))),
    };
    let verdict = format!(
        "{} (degraded: {}; oldest write {} ms)",
        health["status"].as_str().unwrap_or("?"),
        health["degraded"],
        health["checks"]["watermark"]["oldest_write_age_ms"]
    );
    held.commit().map_err(sql)?;
    let took = device.join().ok().flatten().context("the held-back write never reached the device")?;
    Ok((took.as_secs_f64() * 1e3, verdict))
}

fn token(info: &StackInfo, user: &str) -> Result<String> {
    keys::sign_hs256(&info.jwt_secret, &keys::user_claims(user, &info.jwt_issuer, 3600))
}

fn open(info: &StackInfo, token: &str) -> Result<Socket> {
    let url = format!("{}/live", info.functions_url.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().map_err(|e| Error(format!("/live URL: {e}")))?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().map_err(|_| Error("token header".into()))?);
    let (mut socket, _) = tungstenite::connect(req).map_err(|e| Error(format!("GET /live: {e}")))?;
    // Open end to end once a heartbeat is answered.
    socket.send(Message::text("ping")).map_err(|e| Error(format!("ping: {e}")))?;
    if let MaybeTlsStream::Plain(s) = socket.get_mut() {
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
    }
    loop {
        match socket.read() {
            Ok(Message::Text(t)) if t.as_str() == "pong" => return Ok(socket),
            Ok(_) => continue,
            Err(e) => return Err(Error(format!("no pong on /live: {e}"))),
        }
    }
}

/// A thread per socket, sending (socket, checkpoint, when) for each poke.
fn listen(sockets: Vec<Socket>, tx: mpsc::Sender<(usize, u64, Instant)>) {
    for (i, mut s) in sockets.into_iter().enumerate() {
        let tx = tx.clone();
        if let MaybeTlsStream::Plain(t) = s.get_mut() {
            let _ = t.set_read_timeout(None);
        }
        std::thread::spawn(move || {
            while let Ok(m) = s.read() {
                if let Message::Text(t) = m {
                    let at = Instant::now();
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    if let Some(c) = v["checkpoint"].as_str().and_then(|c| c.parse::<u64>().ok()) {
                        if tx.send((i, c, at)).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    super::load::nearest_rank(sorted, p / 100.0)
}

fn latency(info: &StackInfo, writer: &str, listeners: usize, writes: usize) -> Result<LatencyRow> {
    let user = keys::random_uuid();
    let token = token(info, &user)?;
    let sockets = (0..listeners).map(|_| open(info, &token)).collect::<Result<Vec<_>>>()?;
    let (tx, rx) = mpsc::channel();
    listen(sockets, tx);
    let mut db = postgres::Client::connect(&info.database_url, postgres::NoTls).context("bench: connect")?;
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
    let client_id = keys::random_uuid();
    let mut cursor = String::new();
    let mut samples = Vec::new();
    let mut with_pull = Vec::new();
    let mut missing = 0;
    for i in 0..writes {
        let id = keys::random_uuid();
        let started = Instant::now();
        let checkpoint: u64 = match writer {
            "upload" => {
                let body = serde_json::json!({"client_id": client_id, "mutations": [{
                    "op_id": i + 1, "op": "PUT", "type": "entries", "id": id,
                    "data": {"title": format!("live {i}"), "body_markdown": "", "tags": []}}]});
                let answer: serde_json::Value = agent
                    .post(&format!("{}/upload", info.functions_url))
                    .set("authorization", &format!("Bearer {token}"))
                    .send_json(body)
                    .map_err(|e| Error(format!("/upload: {e}")))?
                    .into_json()?;
                answer["write_checkpoint"].as_str().and_then(|c| c.parse().ok()).context("no write_checkpoint")?
            }
            _ => {
                let sql = |e: postgres::Error| Error(format!("bench: the SQL write: {e}"));
                let mut tx = db.transaction().map_err(sql)?;
                tx.execute(
                    "insert into public.entries (id, user_id, title, body_markdown, tags)
                     values ($1::text::uuid, $2::text::uuid, 'live sql', '', '{}')",
                    &[&id, &user],
                )
                .map_err(sql)?;
                let position: String = tx.query_one("select edgesync.sync_position()::text", &[]).map_err(sql)?.get(0);
                tx.commit().map_err(sql)?;
                position.parse::<u64>().context("sync position")? + 1
            }
        };
        let mut seen = vec![false; listeners];
        let deadline = started + Duration::from_secs(10);
        while seen.iter().any(|s| !s) {
            let Ok((s, c, at)) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
                missing += seen.iter().filter(|s| !**s).count();
                break;
            };
            if c >= checkpoint && !seen[s] {
                seen[s] = true;
                samples.push(at.duration_since(started).as_secs_f64() * 1e3);
            }
        }
        if listeners == 1 {
            // The device pulls after its poke: until it has the row.
            let url = format!("{}/sync?tables=entries{}", info.functions_url, cursor);
            let page: serde_json::Value = agent
                .get(&url)
                .set("authorization", &format!("Bearer {token}"))
                .call()
                .map_err(|e| Error(format!("/sync: {e}")))?
                .into_json()?;
            let has = page["changes"]["entries"]["upserted"]
                .as_array()
                .is_some_and(|rows| rows.iter().any(|r| r["id"] == id.as_str()));
            if has {
                with_pull.push(started.elapsed().as_secs_f64() * 1e3);
            }
            cursor = format!("&since={}", page["cursor"].as_str().unwrap_or_default());
        }
    }
    samples.sort_by(f64::total_cmp);
    with_pull.sort_by(f64::total_cmp);
    Ok(LatencyRow {
        writer: writer.to_owned(),
        listeners,
        writes,
        samples: samples.len(),
        missing,
        p50_ms: percentile(&samples, 50.0),
        p90_ms: percentile(&samples, 90.0),
        p99_ms: percentile(&samples, 99.0),
        max_ms: samples.last().copied().unwrap_or(0.0),
        with_pull_p50_ms: (!with_pull.is_empty()).then(|| percentile(&with_pull, 50.0)),
        with_pull_p99_ms: (!with_pull.is_empty()).then(|| percentile(&with_pull, 99.0)),
    })
}

/// Resident memory of the gateway's `wrangler dev` (its workerd processes).
fn workerd_mib(info: &StackInfo) -> f64 {
    let group = cpu::Group { only: Some("workerd"), ..cpu::Group::new("live", info.pids.wrangler) };
    cpu::rss_mib(&cpu::snapshot(), &group)
}

fn idle_memory(info: &StackInfo, n: usize) -> Result<f64> {
    let before = workerd_mib(info);
    let user = keys::random_uuid();
    let token = token(info, &user)?;
    let sockets = (0..n).map(|_| open(info, &token)).collect::<Result<Vec<_>>>()?;
    let after = workerd_mib(info);
    drop(sockets);
    Ok((after - before) * 1024.0 / n.max(1) as f64)
}

/// `edgesync_pull` requests PostgREST logged while `clients` long-polls of users with
/// nothing to pull each waited `wait` seconds once.
fn longpoll_cost(info: &StackInfo, clients: usize, wait: u32) -> Result<usize> {
    let log = info.logs_dir.join("postgrest.log");
    let pulls = || -> Result<usize> {
        Ok(String::from_utf8_lossy(&fs_err::read(&log)?).lines().filter(|l| l.contains("edgesync_pull")).count())
    };
    let users: Vec<String> = (0..clients).map(|_| keys::random_uuid()).collect();
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(u64::from(wait) + 30)).build();
    // Each an up-to-date device: a cursor first (not counted).
    let mut cursors = Vec::new();
    for u in &users {
        let t = token(info, u)?;
        let page: serde_json::Value = agent
            .get(&format!("{}/sync?tables=entries", info.functions_url))
            .set("authorization", &format!("Bearer {t}"))
            .call()
            .map_err(|e| Error(format!("/sync: {e}")))?
            .into_json()?;
        cursors.push((t, page["cursor"].as_str().unwrap_or_default().to_owned()));
    }
    let settle = |expected_at_least: usize| -> Result<usize> {
        // PostgREST logs a request as it answers it: wait until the count holds still.
        let mut last = pulls()?;
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = pulls()?;
            if now == last && now >= expected_at_least {
                return Ok(now);
            }
            last = now;
        }
    };
    let before = settle(0)?;
    let handles: Vec<_> = cursors
        .into_iter()
        .map(|(t, c)| {
            let agent = agent.clone();
            let url = format!("{}/sync?tables=entries&since={c}&wait={wait}", info.functions_url);
            std::thread::spawn(move || agent.get(&url).set("authorization", &format!("Bearer {t}")).call().is_ok())
        })
        .collect();
    let ok = handles.into_iter().map(|h| h.join().unwrap_or(false)).filter(|ok| *ok).count();
    if ok != clients {
        return Err(Error(format!("{} of {clients} long-polls failed", clients - ok)));
    }
    Ok(settle(before + clients)? - before)
}
