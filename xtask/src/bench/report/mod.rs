//! `BENCHMARKS.md`: the machine, how to reproduce, and every figure with edgesync's
//! ratios to its two baselines.

mod machine;
mod method;
mod sections;

pub use machine::Machine;
pub use sections::live_markdown;
use sections::*;

use super::plots::Plot;
use super::{Results, Row, Target, WorkerCpu};
use std::fmt::Write as _;
use std::path::Path;
use xtask::build;

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
        "search" | "search_serial" => format!("{} entries", size(p)),
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

pub fn markdown(
    r: &Results,
    before: Option<&Results>,
    fixed: Option<&(Results, Results)>,
    plots: &[Plot],
    out_dir: &Path,
) -> String {
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

    method::setup(&mut md, r);

    if !params(r, "fixed").is_empty() {
        let _ = writeln!(
            md,
            "## The fixed cost of a request\n\nThe cheapest answers, to show what every request costs before \
             any work: a path no Worker serves (as deployed, the sync Worker answers the 404 itself: the \
             cost of an invocation that does nothing; in wrangler dev and via the gateway, the local \
             gateway answers it alone: what the gateway adds to every request routed through it; the \
             TypeScript Worker answers its own), \
             `/sync` without a token (the sync Worker answers 401 without calling PostgREST), and \
             `/sync` of a user with no rows (the whole path: token check, one RPC, the answer). \
             *Floor Worker as deployed* (`bench/floor-worker`, plain JavaScript) is the least a Worker \
             in front of PostgREST can do: it checks nothing, answers 404 and 401 from constants and \
             passes the empty pull to PostgREST with the caller's token; its CPU is the runtime's own \
             cost of an invocation and one subrequest, which no Worker can go below.\n"
        );
        figures_table(&mut md, r, "fixed", "requests");
        ratios_table(&mut md, r, "fixed", &[Target::TsDeployed, Target::FloorDeployed, Target::Ts]);
    }
    if let Some((before, after)) = fixed {
        fixed_cost_work(&mut md, before, after);
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
            crate::bench::SEARCH_THRESHOLD
        );
        let _ = writeln!(
            md,
            "### {} at a time\n\nEvery client searching at once: the local model computes one request at a time, so \
             queries wait for it and its queue is part of each latency.\n",
            r.plan.clients
        );
        figures_table(&mut md, r, "search", "results");
        ratios_table(&mut md, r, "search", &[Target::DirectModel, Target::Direct]);
        if !params(r, "search_serial").is_empty() {
            let _ = writeln!(
                md,
                "### One at a time\n\nOne client, one search in flight: what a search itself costs, with no \
                 queue at the model.\n"
            );
            figures_table(&mut md, r, "search_serial", "results");
            ratios_table(&mut md, r, "search_serial", &[Target::DirectModel, Target::Direct]);
        }
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
                "- Requests sent again because no answer came (the server closed a kept-alive connection \
                 without answering, or a local `wrangler dev` stalled past the client's 120 s timeout), or \
                 because the local runtime answered 503 \"Your worker restarted mid-request\" (it restarted \
                 an isolate); the latency includes the failed attempt: {}.",
                resent.join("; ")
            );
        }
        md.push('\n');
    }
    md
}
