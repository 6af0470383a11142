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

macro_rules! bail {
    ($($arg:tt)*) => { return Err(Error(format!($($arg)*))) };
}

mod live;
mod load;
mod plots;
mod report;
mod schema;
mod servers;
mod startup;
mod workloads;

pub use schema::*;
pub(crate) use servers::*;
use workloads::*;

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
// The Workers' own cursor codec and page limit, not copies.
use edgesync_shared::cursor::NIL_ID;
use edgesync_shared::sync::MAX_PAGE_BYTES;

/// The font plotters draws text with (Debian's `fonts-dejavu-core`).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT_PACKAGE: &str = "fonts-dejavu-core";
/// `match_threshold` of every search.
const SEARCH_THRESHOLD: f64 = 0.3;

/// Install the font the plots are drawn with, if it is missing.
fn ensure_font() -> Result<()> {
    if !Path::new(FONT).is_file() {
        tools::apt_install(&[FONT_PACKAGE])?;
    }
    Ok(())
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
    // The fixed-cost work's before and after (`cargo xtask bench --fixed-cost` on each).
    let fixed_dir = paths.root.join("bench/fixed-cost");
    let fixed = match (read_results(&fixed_dir.join("before.json"))?, read_results(&fixed_dir.join("after.json"))?) {
        (Some(b), Some(a)) => Some((b, a)),
        _ => None,
    };
    let md = report::markdown(results, before.as_ref(), fixed.as_ref(), &plot_files, &out_dir);
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
    let plan = match (opts.smoke, opts.fixed_cost_only) {
        (true, _) => Plan::smoke(),
        (false, true) => Plan::fixed_cost(),
        (false, false) => Plan::full(),
    };
    let t = tools::ensure(paths)?;
    build::build(paths, &t, &[])?;
    ensure_font()?;
    if opts.live_only {
        return live_only(paths, &t, plan, opts.smoke);
    }
    // The run's time, after the tools and the build (which are cached between runs).
    let started = Instant::now();
    let scratch = paths.target().join(match (opts.fixed_cost_only, opts.smoke) {
        (true, true) => "bench-fixed-smoke",
        (true, false) => "bench-fixed",
        (false, true) => "bench-smoke",
        (false, false) => "bench",
    });
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
        let done = if opts.fixed_cost_only { bench.fixed_cost_only() } else { bench.all() };
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
    let raw = scratch.join("results.json");
    fs_err::write(&raw, serde_json::to_vec_pretty(&results)?)?;
    if opts.fixed_cost_only {
        step(format!(
            "fixed-cost bench finished in {:.0}s: {} (copy it to bench/fixed-cost/before.json or after.json)",
            results.total_secs,
            raw.display()
        ));
        return Ok(ExitCode::SUCCESS);
    }
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
