//! What the bench measures and keeps: its options and plans, the targets, one measured
//! row, the run's results (`results.json`, which `--report-only` reads back).

use super::*;

pub struct Options {
    pub smoke: bool,
    /// Only write the report and plots again, from the last run's raw figures
    /// (`target/bench/results.json`): after a change to the report's text or plots.
    pub report_only: bool,
    /// Leave the bench's stack (and the TS Worker) running afterwards.
    pub keep: bool,
    /// Only the live-updates figures, on a stack of their own, into `bench/LIVE.md`.
    pub live_only: bool,
    /// Only the fixed cost of a request, into `target/bench-fixed/results.json` (see
    /// `bench/fixed-cost/`).
    pub fixed_cost_only: bool,
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

    /// `--fixed-cost`: the full plan with five times the requests of the workloads it
    /// runs, so that CPU read in clock ticks (10 ms) resolves a few microseconds per
    /// request.
    pub fn fixed_cost() -> Plan {
        Plan { incremental_jobs: 3000, uploads: vec![(1, 1500)], ..Plan::full() }
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
    /// The floor of the fixed-cost table: a minimal JavaScript Worker as deployed
    /// (`bench/floor-worker`) that checks nothing and passes an empty pull to PostgREST.
    FloorDeployed,
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
            Target::FloorDeployed => "floor Worker as deployed",
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
            Target::FloorDeployed => Some("floor_deployed"),
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
    pub(super) fn new(workload: &str, param: u64, target: Target, unit: &str, m: Measure) -> Row {
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
            "sync_incremental" | "search" | "search_serial" | "fixed" => self.m.requests_per_sec(),
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
pub(super) const WEBHOOK_QUIET: Duration = Duration::from_secs(10);

/// What [`Bench::embedded_by_pipeline`] saw.
pub(super) struct Phases {
    pub(super) by_webhooks: usize,
    pub(super) webhook_secs: f64,
    pub(super) failed_attempts: u64,
    pub(super) last_error: Option<String>,
    pub(super) drain_calls: usize,
    pub(super) drain_secs: f64,
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

/// The raw figures a run wrote (`results.json`), or None when there is no such file.
pub(super) fn read_results(file: &Path) -> Result<Option<Results>> {
    match fs_err::read(file) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error(format!("{} cannot be read as bench results: {e}", file.display()))),
        Err(_) => Ok(None),
    }
}
