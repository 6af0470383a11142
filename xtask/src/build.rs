//! `cargo xtask build`: every function (and the gateway) to its own .wasm Worker
//! bundle with `worker-build`, skipping bundles whose inputs have not changed.

use crate::tools::{Paths, Tools};
use crate::util::{files_under, hash_files, run, step, Context, Result};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// The Workers, by name, in deploy order; each lives in `functions/<name>` except the
/// gateway. `sync` comes before `powersync`, which binds its `LiveHub` namespace.
pub const FUNCTIONS: &[&str] = &["health", "sync", "powersync", "upload", "populate", "embed_entry"];

/// A Worker crate to build.
#[derive(Debug, Clone)]
pub struct WorkerCrate {
    pub name: String,
    pub dir: PathBuf,
}

impl WorkerCrate {
    pub fn wasm(&self) -> PathBuf {
        self.dir.join("build/index_bg.wasm")
    }
    pub fn main_module(&self) -> PathBuf {
        self.dir.join("build/worker/shim.mjs")
    }
}

pub fn all_workers(paths: &Paths) -> Vec<WorkerCrate> {
    let mut v: Vec<WorkerCrate> = FUNCTIONS
        .iter()
        .map(|n| WorkerCrate { name: (*n).to_owned(), dir: paths.root.join("functions").join(n) })
        .collect();
    v.push(WorkerCrate { name: "gateway".into(), dir: paths.root.join("gateway") });
    v
}

/// Hash of everything that goes into a Worker's bundle.
fn fingerprint(paths: &Paths, krate: &WorkerCrate, tools: &Tools) -> Result<String> {
    let mut files = Vec::new();
    for dir in ["shared/src", "functions/_edge/src", "functions/_live_hub/src"] {
        files.extend(files_under(&paths.root.join(dir))?);
    }
    files.extend(files_under(&krate.dir.join("src"))?);
    for f in [
        "Cargo.lock",
        "Cargo.toml",
        "shared/Cargo.toml",
        "functions/_edge/Cargo.toml",
        "functions/_live_hub/Cargo.toml",
    ] {
        files.push(paths.root.join(f));
    }
    files.push(krate.dir.join("Cargo.toml"));
    if krate.dir.join("build.rs").is_file() {
        files.push(krate.dir.join("build.rs"));
    }
    if krate.name == "gateway" {
        // Baked into the gateway by its build.rs (served at /openapi.json).
        files.push(paths.root.join("openapi.yaml"));
    }
    hash_files(&mut files, format!("{:?}", tools.toolchain).as_bytes())
}

/// Build the named Workers (all when `only` is empty). Returns how many were rebuilt.
pub fn build(paths: &Paths, tools: &Tools, only: &[String]) -> Result<usize> {
    let mut rebuilt = 0;
    for krate in all_workers(paths) {
        if !only.is_empty() && !only.contains(&krate.name) {
            continue;
        }
        let stamp = krate.dir.join("build/.edgesync-fingerprint");
        let print = fingerprint(paths, &krate, tools)?;
        let fresh = krate.wasm().is_file()
            && krate.main_module().is_file()
            && fs_err::read_to_string(&stamp).ok().as_deref() == Some(print.as_str());
        if fresh {
            continue;
        }
        step(format!("building {} (worker-build --release)", krate.name));
        let started = Instant::now();
        let mut cmd = Command::new(&tools.worker_build);
        cmd.arg("--release").current_dir(&krate.dir).envs(tools.build_env());
        // One target dir for the workspace, wherever the user's CARGO_TARGET_DIR points.
        cmd.env("CARGO_TARGET_DIR", paths.target());
        run(&mut cmd).context(format!("building {}", krate.name))?;
        fs_err::write(&stamp, &print)?;
        step(format!(
            "built {} in {:.1}s: {} bytes",
            krate.name,
            started.elapsed().as_secs_f64(),
            fs_err::metadata(krate.wasm())?.len()
        ));
        rebuilt += 1;
    }
    check_budgets(paths, only)?;
    Ok(rebuilt)
}

/// The size budgets: the most each Worker's `.wasm` may weigh after `gzip -9`, in
/// bytes. `cargo xtask build` (and so `dev`, `test` and CI) fails when a Worker is
/// over its budget.
///
/// Cloudflare's own limit is 3 MB per Worker after compression on the free plan
/// (10 MB on paid plans); these budgets are far below it on purpose: each is about 10%
/// above the Worker's size when it was set, so growth is a decision, not an accident.
/// To raise one, change it here in the same commit as the growth, and say why.
/// `cargo xtask bench` reports every Worker's size against its budget.
pub const GZIP_BUDGETS: &[(&str, u64)] = &[
    // name          budget      size when set (gzip -9; opt-level 3, see Cargo.toml)
    ("health", 248_000),      // 224,808
    ("sync", 562_000),        // 511,221 (+ LiveHub and its WebSocket bindings)
    ("powersync", 562_000),   // 511,237 (its own Worker since the design pass)
    ("upload", 478_000),      // 434,346
    ("populate", 576_000),    // 523,463
    ("embed_entry", 535_000), // 486,669
    ("gateway", 213_000),     // 194,041 (176,035 at first; + CORS, /openapi.json, the PowerSync route)
];

/// Cloudflare's compressed-size limit for one Worker on the free plan (3 MB).
pub const CLOUDFLARE_FREE_LIMIT_BYTES: u64 = 3_000_000;

/// The gzip budget of a Worker, if it has one.
pub fn gzip_budget(worker: &str) -> Option<u64> {
    GZIP_BUDGETS.iter().find(|(name, _)| *name == worker).map(|(_, b)| *b)
}

/// Fail when a built Worker (of `only`, or any) is over its gzip budget.
pub fn check_budgets(paths: &Paths, only: &[String]) -> Result<()> {
    let mut over = Vec::new();
    for krate in all_workers(paths) {
        if !only.is_empty() && !only.contains(&krate.name) {
            continue;
        }
        let Ok(bytes) = fs_err::read(krate.wasm()) else { continue };
        let budget = gzip_budget(&krate.name)
            .context(format!("{} has no size budget: add it to GZIP_BUDGETS in xtask/src/build.rs", krate.name))?;
        let gzipped = gzipped_len(&bytes).context("gzip is needed to check the Workers' size budgets")? as u64;
        if gzipped > budget {
            over.push(format!("{} is {gzipped} bytes gzipped, over its budget of {budget}", krate.name));
        }
    }
    if !over.is_empty() {
        crate::util::bail!(
            "size budget exceeded: {}. Make it smaller, or raise the budget in GZIP_BUDGETS \
             (xtask/src/build.rs) and say why",
            over.join("; ")
        );
    }
    Ok(())
}

/// Size after `gzip -9` (what Cloudflare's compressed-size limit counts), using the
/// system's gzip; None when it is not installed.
pub fn gzipped_len(bytes: &[u8]) -> Option<usize> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .arg("-9c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let data = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().ok()?;
    writer.join().ok()?.ok()?;
    out.status.success().then_some(out.stdout.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_worker_has_a_budget_below_cloudflares_limit() {
        let paths = Paths::discover().unwrap();
        for w in all_workers(&paths) {
            let budget = gzip_budget(&w.name).unwrap_or_else(|| panic!("{} has no size budget", w.name));
            assert!(budget < CLOUDFLARE_FREE_LIMIT_BYTES, "{}", w.name);
        }
        assert_eq!(GZIP_BUDGETS.len(), all_workers(&paths).len());
    }
}
