//! `BENCHMARKS.md`: the machine, how to reproduce, and every figure with edgesync's
//! ratios to its two baselines.

use super::plots::Plot;
use super::{Results, Row, Target, WorkerCpu};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use xtask::build;
use xtask::tools::{Paths, Tools};
use xtask::util::{output, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub os: String,
    pub kernel: String,
    pub postgres: String,
    pub pgvector: String,
    pub postgrest: String,
    pub wrangler: String,
    pub workerd: String,
    pub node: String,
    pub rustc: String,
    pub commit: String,
    pub date: String,
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().trim().to_owned()
}

fn try_output(cmd: &mut Command) -> String {
    output(cmd).map(|s| first_line(&s)).unwrap_or_else(|_| "unknown".into())
}

impl Machine {
    pub fn describe(paths: &Paths, t: &Tools) -> Result<Machine> {
        let cpuinfo = fs_err::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
        let mem_kib: f64 = fs_err::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let os = fs_err::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_owned()))
            .unwrap_or_else(|| "unknown".into());
        let kernel = fs_err::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
        let modules = t.wrangler_js.parent().and_then(Path::parent).and_then(Path::parent);
        let workerd = modules
            .map(|m| try_output(Command::new(m.join("@cloudflare/workerd-linux-64/bin/workerd")).arg("--version")))
            .unwrap_or_else(|| "unknown".into());
        // pgvector: the version of the extension files shipped with this Postgres.
        let pgvector = fs_err::read_dir(t.pg_bin.join("../share/extension"))
            .or_else(|_| fs_err::read_dir(t.pg_bin.join("../share/postgresql/extension")))
            .ok()
            .and_then(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter_map(|n| n.strip_prefix("vector--")?.strip_suffix(".sql").map(str::to_owned))
                    .filter(|v| !v.contains("--"))
                    .max_by(|a, b| version_key(a).cmp(&version_key(b)))
            })
            .unwrap_or_else(|| "unknown".into());
        let dirty = output(Command::new("git").args(["status", "--porcelain"]).current_dir(&paths.root))
            .map(|s| !s.trim().is_empty())
            .unwrap_or(false);
        let commit = try_output(Command::new("git").args(["rev-parse", "--short", "HEAD"]).current_dir(&paths.root));
        Ok(Machine {
            cpu,
            cores,
            memory_gib: mem_kib / 1024.0 / 1024.0,
            os,
            kernel,
            postgres: try_output(Command::new(t.pg_bin.join("postgres")).arg("--version")),
            pgvector,
            postgrest: try_output(Command::new(&t.postgrest).arg("--version")),
            wrangler: try_output(
                Command::new(&t.node).arg(&t.wrangler_js).arg("--version").env("WRANGLER_SEND_METRICS", "false"),
            ),
            workerd,
            node: try_output(Command::new(&t.node).arg("--version")),
            rustc: try_output(Command::new("rustc").arg("--version")),
            commit: if dirty { format!("{commit} with uncommitted changes") } else { commit },
            date: try_output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
        })
    }
}

fn version_key(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

pub fn size(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn num(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v >= 100.0 {
        size(v.round() as u64)
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(num).unwrap_or_else(|| "–".into())
}

fn find<'a>(r: &'a Results, workload: &str, param: u64, t: Target) -> Option<&'a Row> {
    r.rows.iter().find(|row| row.workload == workload && row.param == param && row.target == t)
}

/// The params of a workload, in the order measured.
fn params(r: &Results, workload: &str) -> Vec<u64> {
    let mut v: Vec<u64> = Vec::new();
    for row in r.rows.iter().filter(|row| row.workload == workload) {
        if !v.contains(&row.param) {
            v.push(row.param);
        }
    }
    v
}

fn describe_param(workload: &str, p: u64) -> String {
    match workload {
        "sync_full" | "sync_page" => format!("{} rows", size(p)),
        "sync_incremental" => format!("{} users", size(p)),
        "upload" => format!("batch of {p}"),
        "search" => format!("{} entries", size(p)),
        "model" => format!("batches of {p}"),
        "fixed" => match p {
            1 => "unknown path (404)".into(),
            2 => "`/sync`, no token (401)".into(),
            _ => "`/sync`, a user with no rows".into(),
        },
        _ => p.to_string(),
    }
}

/// The table of absolute figures of one workload.
fn figures_table(md: &mut String, r: &Results, workload: &str, unit: &str) {
    // Requests are their own unit in some workloads: no second column for them.
    let units = unit != "requests";
    let _ = writeln!(
        md,
        "| | target | requests | {}requests/s | p50 ms | p90 ms | p99 ms | Worker CPU s / 1k req (runtime / + proxy / all) | PostgREST | Postgres | all servers |",
        if units { format!("{unit}/s | ") } else { String::new() }
    );
    let _ = writeln!(md, "|---|---|---:|{}---:|---:|---:|---:|---:|---:|---:|---:|", if units { "---:|" } else { "" });
    for p in params(r, workload) {
        for row in r.rows.iter().filter(|row| row.workload == workload && row.param == p) {
            let worker = match (
                row.worker_cpu_per_1000(WorkerCpu::Runtime),
                row.worker_cpu_per_1000(WorkerCpu::Workerd),
                row.worker_cpu_per_1000(WorkerCpu::All),
            ) {
                (Some(r), Some(w), Some(a)) => format!("{} / {} / {}", num(r), num(w), num(a)),
                _ => "–".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {}{} | {} | {} | {} | {} | {} | {} | {} |",
                describe_param(workload, p),
                row.target.title(),
                size(row.m.requests),
                if units { format!("{} | ", num(row.m.units_per_sec())) } else { String::new() },
                num(row.m.requests_per_sec()),
                num(row.p50_ms),
                num(row.p90_ms),
                num(row.p99_ms),
                worker,
                opt(row.m.cpu_per_1000("postgrest")),
                opt(row.m.cpu_per_1000("postgres")),
                num(row.stack_cpu_per_1000()),
            );
        }
    }
    md.push('\n');
}

/// edgesync's figures as ratios to `bases`.
fn ratios_table(md: &mut String, r: &Results, workload: &str, bases: &[Target]) {
    let bases: Vec<Target> = bases.iter().copied().filter(|b| r.rows.iter().any(|row| row.target == *b)).collect();
    if bases.is_empty() {
        return;
    }
    let mut head = String::from("| edgesync ÷ |");
    let mut rule = String::from("|---|");
    for b in &bases {
        for what in ["throughput", "p50", "p99", "Worker CPU", "all servers' CPU"] {
            if what == "Worker CPU" && b.worker_group().is_none() {
                continue;
            }
            let _ = write!(head, " {what} ÷ {} |", b.title());
            rule.push_str("---:|");
        }
    }
    let _ = writeln!(md, "{head}\n{rule}");
    let variants = [Target::EdgesyncDeployed, Target::Edgesync, Target::EdgesyncGateway];
    let with_deployed = r.rows.iter().any(|row| row.workload == workload && row.target == Target::EdgesyncDeployed);
    for (p, variant) in params(r, workload).into_iter().flat_map(|p| variants.map(|v| (p, v))) {
        let Some(e) = find(r, workload, p, variant) else { continue };
        let via = match variant {
            Target::EdgesyncGateway => " (via gateway)",
            Target::Edgesync if with_deployed => " (wrangler dev)",
            _ => "",
        };
        let mut line = format!("| {}{via} |", describe_param(workload, p));
        for b in &bases {
            let base = find(r, workload, p, *b);
            let get = |f: &dyn Fn(&Row) -> f64| base.map(f).unwrap_or(f64::NAN);
            let _ = write!(line, " {} |", ratio(e.throughput(), get(&|x| x.throughput())));
            let _ = write!(line, " {} |", ratio(e.p50_ms, get(&|x| x.p50_ms)));
            let _ = write!(line, " {} |", ratio(e.p99_ms, get(&|x| x.p99_ms)));
            if b.worker_group().is_some() {
                let _ = write!(
                    line,
                    " {} |",
                    ratio(
                        e.worker_cpu_per_1000(WorkerCpu::Runtime).unwrap_or(f64::NAN),
                        get(&|x| x.worker_cpu_per_1000(WorkerCpu::Runtime).unwrap_or(f64::NAN))
                    )
                );
            }
            let _ = write!(line, " {} |", ratio(e.stack_cpu_per_1000(), get(&|x| x.stack_cpu_per_1000())));
        }
        let _ = writeln!(md, "{line}");
    }
    md.push('\n');
}

fn relative(path: &Path, base: &Path) -> String {
    path.strip_prefix(base).map(|p| p.display().to_string()).unwrap_or_else(|_| path.display().to_string())
}

pub fn markdown(r: &Results, before: Option<&Results>, plots: &[Plot], out_dir: &Path) -> String {
    let m = &r.machine;
    let mut md = String::new();
    let _ = writeln!(md, "# edgesync benchmarks\n");
    let _ = writeln!(
        md,
        "Generated by `cargo xtask bench{}` on {} from commit {}; the whole run after the build (stack start, \
         loads, every workload) took {:.1} minutes. Do not edit by hand: run the command again.\n",
        if r.smoke { " --smoke" } else { "" },
        m.date,
        m.commit,
        r.total_secs / 60.0
    );
    if r.smoke {
        let _ = writeln!(
            md,
            "> **Smoke run**: tiny sizes and a few requests, to prove the bench works end to end. \
             The figures mean nothing; see the repository's `BENCHMARKS.md` for a real run.\n"
        );
    }

    let _ = writeln!(md, "## Summary\n");
    summary(&mut md, r);
    if let Some(before) = before {
        before_after(&mut md, r, before);
    }

    let _ = writeln!(md, "## Machine and versions\n");
    let _ = writeln!(md, "| | |\n|---|---|");
    for (k, v) in [
        ("CPU", format!("{} ({} cores)", m.cpu, m.cores)),
        ("Memory", format!("{:.1} GiB", m.memory_gib)),
        ("OS", format!("{} (Linux {})", m.os, m.kernel)),
        ("Postgres", format!("{} (pgvector {})", m.postgres, m.pgvector)),
        ("PostgREST", m.postgrest.clone()),
        ("wrangler / workerd", format!("{} / {}", m.wrangler, m.workerd)),
        ("Node (compile timings)", m.node.clone()),
        ("rustc", m.rustc.clone()),
        ("Load average (1, 5, 15 min) before / after", format!("{} / {}", r.load_avg_before, r.load_avg_after)),
    ] {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    let _ = writeln!(
        md,
        "\nEverything (Postgres, PostgREST, wrangler dev, the embeddings server and the load \
         generator's {} client threads) shares these {} cores, so throughput is bounded by the \
         machine, not by any one component; compare the targets with each other, not with a \
         production deployment. CPU seconds per request are read from the kernel per process and \
         are much less sensitive to the rest of the machine's load than wall-clock figures.\n",
        r.plan.clients, m.cores
    );

    let _ = writeln!(md, "## Reproduce\n");
    let full_time =
        if r.smoke { String::new() } else { format!(" (about {:.0} minutes here)", (r.total_secs / 60.0).ceil()) };
    let _ = writeln!(
        md,
        "```sh\ncargo xtask bench           # BENCHMARKS.md and bench/plots/*.png{full_time}\n\
         cargo xtask bench --smoke   # tiny sizes, a few requests: target/bench-smoke/BENCHMARKS.md (for CI)\n\
         cargo xtask bench --keep    # leave the bench's stack and the TypeScript Worker running afterwards\n\
         cargo xtask bench --report-only  # this file and the plots again from the last run's raw figures\n```\n"
    );
    let _ = writeln!(
        md,
        "The bench installs what is missing like every xtask command, builds the Workers, starts \
         a stack of its own on free ports (`target/stack-bench`), serves the TypeScript Worker \
         (`bench/ts-worker/serve.sh`, after `npm ci` of its lockfile) in a wrangler dev of its own, \
         loads the data, measures, stops everything and writes this file. Raw figures: \
         `target/{}/results.json`.\n",
        if r.smoke { "bench-smoke" } else { "bench" }
    );

    let _ = writeln!(md, "## Method\n");
    let _ = writeln!(
        md,
        "- **Targets.** *edgesync as deployed* (the headline figures): `/sync` and `/upload` each run as \
         they are deployed: the bundle `wrangler deploy --dry-run` writes (what would be uploaded) served \
         by the workerd binary wrangler ships, alone, with a config generated from the Worker's wrangler \
         config (its `[vars]` as text bindings, its compatibility date, its Durable Object with SQLite \
         storage; `xtask/src/deployed.rs`): no wrangler, no proxy in front, no inspector. One request is \
         one invocation in one process, as on Cloudflare. *TypeScript Worker as deployed*: the TS Worker \
         served the same way. \
         *edgesync in wrangler dev*: the Rust Workers (.wasm) in `wrangler dev`; `/sync` and `/upload` \
         each served alone (a wrangler dev of its own), one Worker invocation \
         per request. Everything else (`/search`, the pipeline, the 404 below) goes through the gateway \
         Worker, the local-development router, which makes a request two invocations (gateway, then the \
         function through a service binding); its cost is the 404 row of the fixed-cost table. \
         *edgesync via gateway*: `/sync` and `/upload` through the gateway too, as the bench measured them \
         before the optimisation pass. In `wrangler dev` a Worker served alone (the first Worker of its own \
         wrangler dev) costs the runtime more CPU for a large answer than the same Worker reached through a \
         service binding (a 1,000-row page: ~2.4× with the same .wasm, measured apart from this bench; a \
         large upload about 2×, as the two columns show). **Why a Worker served alone in wrangler dev \
         pays more:** wrangler attaches its inspector proxy to the runtime of every wrangler dev and \
         enables the `Network` domain; the runtime then reports \
         every subrequest of the Worker to the inspector, its body included (a 1,000-row page's \
         PostgREST answer, ~0.6 MB, is serialised into inspector messages on every request). Measured \
         apart from this bench (one client, 200 `/sync` pages of 1,000 rows, 607 kB each, workerd \
         2026-04-26): the runtime's CPU per page is 2.0–2.25 ms in plain workerd; 2.45–2.65 ms with \
         `--inspector-addr` and a client that sent only `Runtime.enable`; 6.1 ms once the client also \
         sent `Network.enable` (it then received ~520 kB of messages per page); 5.4–5.7 ms for the \
         runtime of `wrangler dev` (served alone), whose other processes add 20 ms (the proxy workerd, \
         which also relays the inspector's messages) and 29 ms (Node) per page. So the inspector's \
         `Network` domain accounts for the runtime's ~2.5× on a large answer (that the same Worker behind \
         the gateway's service binding pays less fits this, but was not measured apart). The TypeScript \
         Worker in wrangler dev pays the same, so those two columns compare like with like; \
         *as deployed* has neither, and is the figure to read. \
         *PostgREST direct*: the same RPC (`edgesync_pull`, `edgesync_push`, `search_entries`) \
         called on PostgREST with the same user token: the floor, no Worker at all. \
         *TypeScript Worker*: `bench/ts-worker` (supabase-js), `/sync` and `/upload`, calling the same RPCs, \
         in a wrangler dev of its own{} (and as deployed, above). In `wrangler dev` every request to a Worker first passes wrangler's \
         proxy Worker (a workerd process of its own): both Workers' figures include that local hop, \
         which production does not have.\n\
         - **Load.** {} client threads, each a blocking HTTP client with keep-alive, taking jobs from a \
         shared counter. Latency runs from sending a request to the last byte of its answer. Each \
         workload runs in {} round(s); within a round the targets take turns, starting with a different \
         one each round, and figures are summed over the rounds. Any answer that is not 2xx, or is wrong \
         (a pull missing rows, a mutation not applied, a search finding nothing), fails the run.\n\
         - **CPU.** utime + stime of every process of a server's process group and its descendants, \
         plus cutime + cstime (what they used in children that ended), from `/proc/<pid>/stat`, before \
         and after each run. *Worker CPU* has three figures: *runtime*, the workerd process \
         that runs the Workers (what Cloudflare would bill as CPU time; the figure compared and \
         plotted); *+ proxy*, both workerd processes (wrangler's local proxy forwards every request and \
         answer); *all*, the whole `wrangler dev` (also its Node processes, which print the request \
         logs, and esbuild). *All servers*: the target's whole `wrangler dev` (if any) + PostgREST + \
         Postgres + the embeddings server. Idle Worker CPU (nothing asked) was {}.\n\
         - **Data.** Rows are inserted with SQL (`insert … select generate_series`) through the real \
         triggers (row versions, embedding jobs), with the webhook relay stopped; the embedding jobs \
         they create are deleted, then the tables are vacuumed and analysed. The big user's rows are \
         ~0.5 kB of JSON each; `/sync` pages are {} rows.",
        if r.ts_worker.is_some() { "" } else { " (**not available in this run**)" },
        r.plan.clients,
        r.plan.rounds,
        if r.idle_cpu_per_sec.is_empty() {
            "not measured".to_owned()
        } else {
            r.idle_cpu_per_sec.iter().map(|(k, v)| format!("{k} {:.3} CPU-s/s", v)).collect::<Vec<_>>().join(", ")
        },
        r.plan.page_limit
    );
    md.push('\n');
    if !r.loads.is_empty() {
        let _ = writeln!(md, "Data loaded (through the triggers, before measuring):\n");
        let _ = writeln!(md, "| what | rows | seconds | rows/s |\n|---|---:|---:|---:|");
        for l in &r.loads {
            let _ = writeln!(md, "| {} | {} | {:.1} | {} |", l.what, size(l.rows), l.secs, num(l.rows as f64 / l.secs));
        }
        md.push('\n');
    }

    if !params(r, "fixed").is_empty() {
        let _ = writeln!(
            md,
            "## The fixed cost of a request\n\nThe cheapest answers, to show what every request costs before \
             any work: a path no Worker serves (for edgesync the local gateway answers the 404 alone: what \
             the gateway adds to every request routed through it; the TypeScript Worker answers its own), \
             `/sync` without a token (the sync Worker answers 401 without calling PostgREST), and \
             `/sync` of a user with no rows (the whole path: token check, one RPC, the answer).\n"
        );
        figures_table(&mut md, r, "fixed", "requests");
        ratios_table(&mut md, r, "fixed", &[Target::TsDeployed, Target::Ts]);
    }
    let sync_bases = [Target::Direct, Target::TsDeployed, Target::Ts];
    let sections: [(&str, &str, &str, String); 4] = [
        (
            "sync_full",
            "`/sync`: full initial pull of one user",
            "rows",
            format!(
                "Each of the {} clients pulls the big user's whole table from the beginning (pages of {}, \
                 following `has_more`); every pull must deliver exactly the table's rows. A request is one \
                 page; throughput is rows delivered per second over all clients.",
                r.plan.clients, r.plan.page_limit
            ),
        ),
        (
            "sync_page",
            "`/sync`: page latency as the table grows",
            "rows",
            format!(
                "One full page of {} rows from a random position in the big user's table (cursors spread \
                 over the whole table). The cost is per page, so the figures should not depend on the \
                 table's size.",
                r.plan.page_limit
            ),
        ),
        (
            "sync_incremental",
            "`/sync`: incremental pulls with few changes",
            "rows",
            "Each request is one of the many users pulling from their own latest cursor, while a writer \
             changes a few of their rows a second: most pulls bring nothing or a row or two. This is the \
             steady state of a synced device."
                .to_owned(),
        ),
        (
            "upload",
            "`/upload`: batches of new entries",
            "mutations",
            "Each client is a device (its own `client_id`) of its own user, sending `PUT`s of new entries; \
             every mutation must come back `applied`."
                .to_owned(),
        ),
    ];
    for (workload, title, unit, text) in &sections {
        if params(r, workload).is_empty() {
            continue;
        }
        let _ = writeln!(md, "## {title}\n\n{text}\n");
        figures_table(&mut md, r, workload, unit);
        ratios_table(&mut md, r, workload, &sync_bases);
    }
    if !params(r, "search").is_empty() {
        let _ = writeln!(
            md,
            "## `/search`\n\nOne user's entries carry real all-MiniLM-L6-v2 vectors of 200 texts (with a \
             little noise each, so every point is distinct); each request searches for one of the texts \
             (`match_threshold` {}). *edgesync*: `POST /search` (the Worker embeds the query with the \
             local model, then calls `search_entries` as the user). *model + PostgREST*: the same two \
             steps from the client. *PostgREST direct*: `search_entries` with the query's vector given \
             (the floor: no model). The TypeScript Worker has no search.\n",
            super::SEARCH_THRESHOLD
        );
        figures_table(&mut md, r, "search", "results");
        ratios_table(&mut md, r, "search", &[Target::DirectModel, Target::Direct]);
    }
    pipeline(&mut md, r);
    live(&mut md, r);
    memory(&mut md, r);
    sizes(&mut md, r);

    if !plots.is_empty() {
        let _ = writeln!(md, "## Plots\n");
        for p in plots {
            let _ = writeln!(md, "### {}\n\n![{}]({})\n", p.title, p.title, relative(&p.file, out_dir));
        }
    }
    let resent: Vec<String> = r
        .rows
        .iter()
        .filter(|row| row.m.resent > 0)
        .map(|row| {
            format!(
                "{} ({}, {}): {}",
                row.workload,
                describe_param(&row.workload, row.param),
                row.target.title(),
                row.m.resent
            )
        })
        .collect();
    if !r.notes.is_empty() || !resent.is_empty() {
        let _ = writeln!(md, "## Notes\n");
        for n in &r.notes {
            let _ = writeln!(md, "- {n}");
        }
        if !resent.is_empty() {
            let _ = writeln!(
                md,
                "- POSTs sent again because the connection closed without an answer (the server \
                 closed a kept-alive connection without answering), or because the local runtime answered 503 \
                 \"Your worker restarted mid-request\" (it restarted an isolate); the latency includes the failed attempt: {}.",
                resent.join("; ")
            );
        }
        md.push('\n');
    }
    md
}

/// A summary figure: its label, workload, parameter and how it is read from a row.
type Figure = (String, &'static str, u64, fn(&Row) -> Option<f64>);

/// The figures of the summary (and of the before/after comparison).
fn summary_figures(r: &Results) -> Vec<Figure> {
    let mut v: Vec<Figure> = Vec::new();
    let rows_per_sec: fn(&Row) -> Option<f64> = |x| Some(x.m.units_per_sec());
    let p50: fn(&Row) -> Option<f64> = |x| Some(x.p50_ms);
    let cpu: fn(&Row) -> Option<f64> = |x| x.worker_cpu_per_1000(WorkerCpu::Runtime);
    if let Some(p) = params(r, "sync_full").into_iter().max() {
        v.push((format!("`/sync` full pull of {} rows: rows/s", size(p)), "sync_full", p, rows_per_sec));
        v.push((format!("`/sync` full pull of {} rows: page p50 ms", size(p)), "sync_full", p, p50));
    }
    for p in params(r, "sync_page") {
        v.push((format!("`/sync` page at {} rows: p50 ms", size(p)), "sync_page", p, p50));
    }
    if let Some(p) = params(r, "sync_page").into_iter().max() {
        v.push((format!("`/sync` page at {} rows: p99 ms", size(p)), "sync_page", p, |x| Some(x.p99_ms)));
        v.push((format!("`/sync` page at {} rows: rows/s", size(p)), "sync_page", p, rows_per_sec));
    }
    for p in params(r, "sync_incremental") {
        v.push(("`/sync` incremental: p50 ms".into(), "sync_incremental", p, p50));
    }
    for p in params(r, "upload") {
        v.push((format!("`/upload` batch of {p}: mutations/s"), "upload", p, rows_per_sec));
    }
    for p in params(r, "search") {
        v.push((
            format!("`/search` at {} entries: p50 ms (direct: the vector given, no model)", size(p)),
            "search",
            p,
            p50,
        ));
    }
    if let Some(p) = params(r, "sync_page").into_iter().max() {
        v.push(("`/sync` page: Worker CPU s per 1,000 requests".into(), "sync_page", p, cpu));
    }
    if let Some(p) = params(r, "sync_incremental").first().copied() {
        v.push(("`/sync` incremental: Worker CPU s per 1,000 requests".into(), "sync_incremental", p, cpu));
    }
    for p in params(r, "upload") {
        v.push((format!("`/upload` batch of {p}: Worker CPU s per 1,000 requests"), "upload", p, cpu));
    }
    v
}

fn summary(md: &mut String, r: &Results) {
    let _ = writeln!(
        md,
        "| figure | edgesync (as deployed) | in wrangler dev | via gateway | PostgREST direct | TS as deployed | TS in wrangler dev | edgesync ÷ direct | ÷ TS as deployed | in wrangler dev: edgesync ÷ TS |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let nan = f64::NAN;
    for (label, workload, p, f) in summary_figures(r) {
        let get = |t| find(r, workload, p, t).and_then(f);
        // The headline: as deployed where measured (`/sync`, `/upload`), else the gateway's.
        let e = get(Target::EdgesyncDeployed).or_else(|| get(Target::Edgesync));
        let (w, g, d) = (get(Target::Edgesync), get(Target::EdgesyncGateway), get(Target::Direct));
        let (td, t) = (get(Target::TsDeployed), get(Target::Ts));
        let v = |x: Option<f64>| x.unwrap_or(nan);
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            opt(e),
            opt(w),
            opt(g),
            opt(d),
            opt(td),
            opt(t),
            ratio(v(e), v(d)),
            ratio(v(e), v(td)),
            ratio(v(w), v(t))
        );
    }
    md.push('\n');
    wrangler_dev_cost(md, r);
    // The per-page cost, at the smallest and the largest table.
    let pages = params(r, "sync_page");
    if let (Some(lo), Some(hi)) = (pages.iter().min(), pages.iter().max()) {
        if lo != hi {
            let headline = |p: u64| {
                find(r, "sync_page", p, Target::EdgesyncDeployed).or_else(|| find(r, "sync_page", p, Target::Edgesync))
            };
            if let (Some(a), Some(b)) = (headline(*lo), headline(*hi)) {
                let _ = writeln!(
                    md,
                    "edgesync's `/sync` page p50 at {} rows is {} its p50 at {} rows ({} the table).\n",
                    size(*hi),
                    ratio(b.p50_ms, a.p50_ms),
                    size(*lo),
                    ratio(*hi as f64, *lo as f64)
                );
            }
        }
    }
    if let Some(w) = r.wasm.iter().map(|w| w.gzip_bytes).max() {
        let _ = writeln!(
            md,
            "The largest Worker is {} bytes gzipped: {:.1}% of Cloudflare's 3 MB free-plan limit (see \"Size and start-up\").\n",
            size(w),
            w as f64 * 100.0 / build::CLOUDFLARE_FREE_LIMIT_BYTES as f64
        );
    }
}

/// What serving a Worker alone in `wrangler dev` costs its runtime over serving the same
/// bundle as deployed (a plain workerd), in this run: Worker CPU per request of both.
fn wrangler_dev_cost(md: &mut String, r: &Results) {
    let mut parts = Vec::new();
    for (workload, what) in [("sync_page", "a `/sync` page"), ("upload", "an `/upload`")] {
        let Some(p) = params(r, workload).into_iter().max() else { continue };
        let cpu = |t| find(r, workload, p, t).and_then(|x| x.worker_cpu_per_1000(WorkerCpu::Runtime));
        if let (Some(dev), Some(dep)) = (cpu(Target::Edgesync), cpu(Target::EdgesyncDeployed)) {
            parts.push(format!(
                "{what} ({}) costs the runtime {} ms of CPU in wrangler dev and {} ms as deployed ({})",
                describe_param(workload, p),
                num(dev),
                num(dep),
                ratio(dev, dep)
            ));
        }
    }
    if !parts.is_empty() {
        let _ = writeln!(
            md,
            "The same bundle served alone in `wrangler dev` and as deployed (plain workerd, no inspector): {}. \
             Why: see \"Method\".\n",
            parts.join("; ")
        );
    }
}

/// The summary's edgesync figures against an earlier run's (`bench/before/results.json`:
/// the run before the optimisation pass), each also as a ratio to that run's baselines,
/// so a change in the machine's load shows in the baselines too.
fn before_after(md: &mut String, r: &Results, before: &Results) {
    let _ = writeln!(
        md,
        "## Before and after the optimisation pass\n\nThe same figures from the run recorded in \
         `bench/before/results.json` (commit {}, {}), the code before the optimisation pass. That run \
         measured `/sync` and `/upload` through the local gateway, so *now* here is the *via gateway* \
         figure where there is one. The ratios to \
         PostgREST direct and to the TypeScript Worker are each taken within their own run, so they hold \
         up better than the raw figures if the machine was busier in one run than in the other.\n",
        before.machine.commit, before.machine.date
    );
    let _ = writeln!(
        md,
        "| figure | edgesync before | edgesync now | now ÷ before | ÷ direct before | ÷ direct now | ÷ TS before | ÷ TS now |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let nan = f64::NAN;
    for (label, workload, p, f) in summary_figures(r) {
        let get = |run: &Results, t| find(run, workload, p, t).and_then(f).unwrap_or(nan);
        // Before, /sync and /upload went through the gateway: compare like with like.
        let now = if find(r, workload, p, Target::EdgesyncGateway).is_some() {
            Target::EdgesyncGateway
        } else {
            Target::Edgesync
        };
        let (eb, en) = (get(before, Target::Edgesync), get(r, now));
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} | {} | {} |",
            num(eb),
            num(en),
            ratio(en, eb),
            ratio(eb, get(before, Target::Direct)),
            ratio(en, get(r, Target::Direct)),
            ratio(eb, get(before, Target::Ts)),
            ratio(en, get(r, Target::Ts))
        );
    }
    let gz = |run: &Results| {
        run.wasm.iter().map(|w| (w.worker.clone(), w.gzip_bytes)).collect::<std::collections::BTreeMap<_, _>>()
    };
    let (b, n) = (gz(before), gz(r));
    let sizes: Vec<String> = n
        .iter()
        .map(|(name, now)| match b.get(name) {
            Some(was) => format!("{name} {} → {}", size(*was), size(*now)),
            None => format!("{name} {}", size(*now)),
        })
        .collect();
    let _ = writeln!(md, "\nGzipped .wasm bytes, before → now: {}.\n", sizes.join("; "));
}

fn pipeline(md: &mut String, r: &Results) {
    let model = r.rows.iter().find(|row| row.workload == "model");
    let Some(p) = &r.pipeline else { return };
    let _ = writeln!(
        md,
        "## Embedding pipeline\n\n{} entries are uploaded through `/upload` (batches of 50, one client: a \
         device sending its outbox), then embedded by the real pipeline: trigger → job → the webhook relay \
         (one `POST /embed_entry` per entry) → the local model (all-MiniLM-L6-v2 on the CPU) → write-back. \
         When the webhooks stop making progress (nothing new for {} s), the rest is drained the way the \
         Cron Trigger does it (`POST /embed_entry/drain`, back to back, as if the cron fired at once; \
         `wrangler dev` runs no cron by itself). Timed from the first upload to the last embedding stored. \
         *Model alone*: the embeddings server asked directly with batches of 16 texts (what the Worker \
         sends), one client.\n",
        p.entries,
        super::WEBHOOK_QUIET.as_secs()
    );
    let _ = writeln!(
        md,
        "| | entries | seconds | entries/s | CPU s per 1,000 entries: Worker (all) / embeddings server / Postgres / PostgREST |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---|");
    let per = |label: &str| p.cpu.get(label).map(|s| s * 1000.0 / p.entries as f64);
    let _ = writeln!(
        md,
        "| pipeline (upload + embed) | {} | {:.1} | {} | {} / {} / {} / {} |",
        size(p.entries as u64),
        p.total_secs,
        num(p.entries as f64 / p.total_secs),
        opt(per("edge.all")),
        opt(per("embedder")),
        opt(per("postgres")),
        opt(per("postgrest"))
    );
    let _ = writeln!(
        md,
        "| … of which: the uploads | {} | {:.1} | {} | |",
        size(p.entries as u64),
        p.upload_secs,
        num(p.entries as f64 / p.upload_secs)
    );
    let _ = writeln!(
        md,
        "| … of which: embedded by the webhooks | {} | {:.1} | {} | |",
        size(p.by_webhooks as u64),
        p.webhook_secs,
        num(p.by_webhooks as f64 / p.webhook_secs)
    );
    if p.drain_calls > 0 {
        let rest = p.entries.saturating_sub(p.by_webhooks);
        let _ = writeln!(
            md,
            "| … of which: embedded by the drain ({} calls) | {} | {:.1} | {} | |",
            p.drain_calls,
            size(rest as u64),
            p.drain_secs,
            num(rest as f64 / p.drain_secs)
        );
    }
    if let Some(m) = model {
        let per_m = |label: &str| m.m.cpu.get(label).map(|s| s * 1000.0 / m.m.units.max(1) as f64);
        let _ = writeln!(
            md,
            "| model alone (batches of 16) | {} | {:.1} | {} | – / {} / – / – |",
            size(m.m.units),
            m.m.wall_secs,
            num(m.m.units_per_sec()),
            opt(per_m("embedder"))
        );
        let _ = writeln!(
            md,
            "\nThe pipeline as a whole runs at {} the model's own rate.",
            ratio(p.entries as f64 / p.total_secs, m.m.units_per_sec())
        );
    }
    if p.failed_attempts > 0 {
        let _ = writeln!(
            md,
            "\nDuring the webhook phase {} job(s) failed an attempt (last error: \"{}\") and waited for the drain.",
            size(p.failed_attempts),
            p.last_error.as_deref().unwrap_or("?")
        );
    }
    md.push('\n');
}

/// The Workers' resident memory after each workload: the runtime, and wrangler's proxy.
/// `bench/LIVE.md`: the live-updates figures of `cargo xtask bench --live`.
pub fn live_markdown(r: &Results, plot: &Plot, out_dir: &Path) -> String {
    let m = &r.machine;
    let mut md = String::new();
    let _ = writeln!(md, "# edgesync live updates: benchmarks\n");
    let _ = writeln!(
        md,
        "Generated by `cargo xtask bench --live{}` on {} from commit {} in {:.1} minutes, on its own stack \
         (the gateway and every Worker in one wrangler dev, as `cargo xtask dev`); {} cores, {}, load \
         average before {} and after {}. Do not edit by hand: run the command again. The full \
         `cargo xtask bench` has the same section in BENCHMARKS.md.\n",
        if r.smoke { " --smoke" } else { "" },
        m.date,
        m.commit,
        r.total_secs / 60.0,
        m.cores,
        m.cpu,
        r.load_avg_before.trim(),
        r.load_avg_after.trim()
    );
    live(&mut md, r);
    let _ = writeln!(md, "![{}]({})\n", plot.title, relative(&plot.file, out_dir));
    md
}

fn live(md: &mut String, r: &Results) {
    let Some(l) = &r.live else { return };
    let _ = writeln!(
        md,
        "## Live updates\n\nWrite-to-other-device latency: from the start of a write to the poke's arrival \
         on each of the user's `/live` sockets (through the gateway: trigger → NOTIFY → the stack's relay → \
         `/live/poke` → the user's Durable Object → the sockets), one write at a time. *upload*: one \
         mutation through `/upload`; *sql*: an INSERT committed on a database connection. With one \
         listener the device also pulls after the poke: *+ pull* is until that page has the row. \
         Targets for `/upload` writes (recorded, not asserted): p50 ≤ 30 ms, p99 ≤ 150 ms.\n"
    );
    let _ = writeln!(
        md,
        "| writer | listeners | writes | samples | missing | p50 ms | p90 ms | p99 ms | max ms | + pull p50 / p99 ms |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in &l.latency {
        let pull = match (row.with_pull_p50_ms, row.with_pull_p99_ms) {
            (Some(a), Some(b)) => format!("{} / {}", num(a), num(b)),
            _ => "–".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.writer,
            row.listeners,
            row.writes,
            row.samples,
            row.missing,
            num(row.p50_ms),
            num(row.p90_ms),
            num(row.p99_ms),
            num(row.max_ms),
            pull
        );
    }
    let _ = writeln!(
        md,
        "\n- Memory per idle socket: {} KiB (resident memory of the gateway's workerd processes with {} \
         idle sockets open, less before, divided by {}).\n\
         - The long-poll's cost on PostgREST while idle: {} waiting clients, `wait={}`, made {} \
         `edgesync_pull` calls: {} per waiting client per minute (the first pull and the one at the \
         deadline; pokes would add one per change).\n",
        num(l.kib_per_idle_socket),
        l.idle_sockets,
        l.idle_sockets,
        l.longpoll_clients,
        l.longpoll_wait_secs,
        l.longpoll_pulls,
        num(l.longpoll_pulls_per_client_per_min)
    );
    if l.held_secs > 0 {
        let _ = writeln!(
            md,
            "- **An unrelated write transaction holds no one back.** With one held open for {} s (it took \
             its id first and wrote nothing synced), a write through `/upload` reached a long-polling device \
             of its user after {} ms. Only a transaction that has written synced rows (taken a sync \
             position) holds the watermark, until it ends. `/health` meanwhile: {}.\n",
            l.held_secs,
            num(l.held_delivery_ms),
            l.held_health
        );
    }
}

fn memory(md: &mut String, r: &Results) {
    let rss = |row: &Row, which: &str| {
        row.target.worker_group().and_then(|g| row.m.rss_mib.get(&format!("{g}.{which}")).copied())
    };
    // (runtime, proxy = both workerd processes - runtime)
    let both = |row: Option<&Row>| {
        let row = row?;
        let runtime = rss(row, "runtime")?;
        Some((runtime, rss(row, "workerd").map(|w| w - runtime)))
    };
    let cell = |v: Option<(f64, Option<f64>)>| match v {
        Some((r, Some(p))) => format!("{} / {}", num(r), num(p)),
        Some((r, None)) => num(r),
        None => "–".into(),
    };
    let mut lines = Vec::new();
    for w in ["fixed", "sync_full", "sync_page", "sync_incremental", "upload"] {
        for p in params(r, w) {
            let e = both(find(r, w, p, Target::Edgesync));
            let t = both(find(r, w, p, Target::Ts));
            if e.is_some() || t.is_some() {
                lines.push(format!("| {} | {} | {} | {} |", w, describe_param(w, p), cell(e), cell(t)));
            }
        }
    }
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## Worker memory\n\nResident memory (MiB) at the end of each workload (the largest over its rounds) \
         of the workerd process that runs the Workers, and of wrangler's proxy in front of it. edgesync's \
         figure is the sum over its three runtimes: the gateway's (which holds all six Workers) and those \
         of `/sync` and `/upload` served alone; the TypeScript Worker's holds one. \
         The proxy in front of the TypeScript Worker grows with every `/sync` page it forwards and also \
         uses several times the Worker's own CPU (the *+ proxy* CPU figures); in earlier runs of this bench \
         it ran out of JavaScript heap (\"Reached heap limit … JavaScript heap out of memory\") after a few \
         minutes and dropped connections. That is local tooling, not the Worker: so the TypeScript Worker is \
         served afresh (a new `wrangler dev`) before each workload it takes part in, and the Workers are \
         compared by their *runtime* CPU.\n"
    );
    let _ = writeln!(
        md,
        "| workload | | edgesync: runtime / proxy | TypeScript Worker: runtime / proxy |\n|---|---|---:|---:|"
    );
    for l in lines {
        let _ = writeln!(md, "{l}");
    }
    md.push('\n');
}

fn sizes(md: &mut String, r: &Results) {
    if r.wasm.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## Size and start-up\n\nEach Worker's `.wasm` (after `wasm-opt`), raw and `gzip -9`, against its budget in \
         `xtask/src/build.rs` (`GZIP_BUDGETS`: `cargo xtask build`, and so CI, fails above it) and against \
         Cloudflare's 3 MB compressed limit of the free plan (which counts the whole upload: the bundle column \
         adds the JS shim). Compile and instantiate times are medians of {} fresh Node {} processes each \
         (V8, as in workerd): *compile* is `WebAssembly.compile` with V8's defaults (lazy: a function \
         is compiled when first called), *eager* compiles every function up front \
         (`--no-wasm-lazy-compilation`). *Instantiate* is `WebAssembly.instantiate` with every import \
         stubbed (a no-op function; the exception tag is `WebAssembly.JSTag`): Node cannot load the \
         wasm-bindgen shim (it imports `cloudflare:workers`), so the shim's JS and the Rust start \
         function are not included.\n",
        r.plan.startup_runs, r.machine.node
    );
    let _ = writeln!(
        md,
        "| Worker | .wasm bytes | gzip -9 | budget | of budget | bundle gzip | of 3 MB | imports | compile ms | eager compile ms | instantiate ms |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for w in &r.wasm {
        let budget = w.budget_gzip_bytes.map(size).unwrap_or_else(|| "none".into());
        let of_budget =
            w.budget_gzip_bytes.map(|b| format!("{:.0}%", w.gzip_bytes as f64 * 100.0 / b as f64)).unwrap_or_default();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {:.1}% | {} | {:.1} | {:.1} | {:.2} |",
            w.worker,
            size(w.raw_bytes),
            size(w.gzip_bytes),
            budget,
            of_budget,
            size(w.bundle_gzip_bytes),
            w.bundle_gzip_bytes as f64 * 100.0 / build::CLOUDFLARE_FREE_LIMIT_BYTES as f64,
            w.imports,
            w.compile_ms,
            w.compile_eager_ms,
            w.instantiate_ms
        );
    }
    md.push('\n');
}
