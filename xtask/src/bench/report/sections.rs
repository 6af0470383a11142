//! The report's derived sections: the summary, before and after, the pipeline, live
//! updates, memory and sizes.

use super::*;

/// A summary figure: its label, workload, parameter and how it is read from a row.
type Figure = (String, &'static str, u64, fn(&Row) -> Option<f64>);

/// The figures of the summary (and of the before/after comparison).
pub(super) fn summary_figures(r: &Results) -> Vec<Figure> {
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
            format!(
                "`/search` at {} entries, {} at a time: p50 ms (direct: the vector given, no model)",
                size(p),
                r.plan.clients
            ),
            "search",
            p,
            p50,
        ));
    }
    for p in params(r, "search_serial") {
        v.push((
            format!("`/search` at {} entries, one at a time: p50 ms (direct: the vector given, no model)", size(p)),
            "search_serial",
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

pub(super) fn summary(md: &mut String, r: &Results) {
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
pub(super) fn wrangler_dev_cost(md: &mut String, r: &Results) {
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
pub(super) fn before_after(md: &mut String, r: &Results, before: &Results) {
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

pub(super) fn pipeline(md: &mut String, r: &Results) {
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
        crate::bench::WEBHOOK_QUIET.as_secs()
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

pub(super) fn live(md: &mut String, r: &Results) {
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

pub(super) fn memory(md: &mut String, r: &Results) {
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
         figure is the sum over its three runtimes: the gateway's (which holds every Worker) and those \
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

pub(super) fn sizes(md: &mut String, r: &Results) {
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

/// Milliseconds to the microsecond (the fixed costs are fractions of a millisecond).
fn micro(ms: f64) -> String {
    if ms.is_finite() {
        format!("{ms:.3}")
    } else {
        "–".into()
    }
}

/// The before and after of the work on the fixed cost of a request (issue 22): two
/// `cargo xtask bench --fixed-cost` runs, committed in `bench/fixed-cost/`. Worker CPU
/// is the runtime's, as deployed; each run's ratio to the TypeScript Worker as deployed
/// is taken within that run.
pub(super) fn fixed_cost_work(md: &mut String, before: &Results, after: &Results) {
    let _ = writeln!(
        md,
        "### The fixed-cost work: before and after\n\nTwo runs of `cargo xtask bench --fixed-cost`, \
         committed in `bench/fixed-cost/`: *before* ({}, {}) is the code with the fixed-cost work reverted \
         (the config parsed, the CORS policy parsed and the PostgREST client built on every request); \
         *after* ({}, {}) parses and builds each once per isolate. Edgesync as deployed; Worker CPU is the \
         runtime's, per request.\n",
        before.machine.commit, before.machine.date, after.machine.commit, after.machine.date
    );
    let _ = writeln!(
        md,
        "| request | Worker CPU ms before | after | after ÷ before | p50 ms before | after | ÷ TS as deployed before | after | floor Worker CPU ms | after ÷ floor |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut figures: Vec<(String, &str, u64)> =
        params(after, "fixed").into_iter().map(|p| (describe_param("fixed", p), "fixed", p)).collect();
    for p in params(after, "sync_incremental") {
        figures.push(("`/sync` incremental".into(), "sync_incremental", p));
    }
    for p in params(after, "upload") {
        figures.push((format!("`/upload` batch of {p}"), "upload", p));
    }
    let nan = f64::NAN;
    for (label, workload, p) in figures {
        let cpu = |run: &Results, t| {
            find(run, workload, p, t).and_then(|x| x.worker_cpu_per_1000(WorkerCpu::Runtime)).unwrap_or(nan)
        };
        let p50 = |run: &Results| find(run, workload, p, Target::EdgesyncDeployed).map_or(nan, |x| x.p50_ms);
        let (cb, ca) = (cpu(before, Target::EdgesyncDeployed), cpu(after, Target::EdgesyncDeployed));
        let floor = cpu(after, Target::FloorDeployed);
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            micro(cb),
            micro(ca),
            ratio(ca, cb),
            num(p50(before)),
            num(p50(after)),
            ratio(cb, cpu(before, Target::TsDeployed)),
            ratio(ca, cpu(after, Target::TsDeployed)),
            micro(floor),
            ratio(ca, floor)
        );
    }
    md.push('\n');
}
