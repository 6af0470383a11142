//! The report's fixed sections: machine and versions, how to reproduce, the method
//! and the data loaded.

use super::{num, size};
use crate::bench::Results;
use std::fmt::Write as _;

/// `## Machine and versions`, `## Reproduce`, `## Method` and the data loaded.
pub(super) fn setup(md: &mut String, r: &Results) {
    let m = &r.machine;
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
         cargo xtask bench --report-only  # this file and the plots again from the last run's raw figures\n\
         cargo xtask bench --fixed-cost   # only the fixed cost of a request: target/bench-fixed/results.json\n```\n"
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
         per request. Everything else (`/search`, the pipeline, the 404 below but as deployed) goes through the gateway \
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
}
