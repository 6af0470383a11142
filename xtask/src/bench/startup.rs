//! Size and start-up of each Worker's `.wasm`: raw and `gzip -9` bytes (what
//! Cloudflare's compressed-size limit counts) against the build's budget, and the time
//! V8 takes to compile and instantiate the module, measured with the tool cache's Node
//! (the same engine as workerd, an older version).
//!
//! Instantiation needs the wasm-bindgen imports, which the generated JS shim builds
//! from `cloudflare:workers` and friends; Node cannot load that shim. So every
//! imported function is a no-op stub (and the exception tag is `WebAssembly.JSTag`):
//! instantiation does all its own work (memory, data and element segments, the import
//! table), but the shim's JS and the Rust start function do not run.

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Command;
use xtask::build::{self, WorkerCrate};
use xtask::util::{output, Context, Result};

/// Fresh Node processes per measurement; the median is reported. (Within one process
/// V8 caches a compiled module by its bytes, so each run gets its own process.)
pub const RUNS: usize = 7;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WasmFigures {
    pub worker: String,
    pub raw_bytes: u64,
    pub gzip_bytes: u64,
    /// The whole upload: the .wasm and the JS shim, gzipped.
    pub bundle_gzip_bytes: u64,
    pub budget_gzip_bytes: Option<u64>,
    pub imports: u64,
    /// `WebAssembly.compile` with V8's defaults (lazy: functions are compiled on first call).
    pub compile_ms: f64,
    /// The same with `--no-wasm-lazy-compilation` (every function compiled up front).
    pub compile_eager_ms: f64,
    pub instantiate_ms: f64,
}

const SCRIPT: &str = r#"
import { readFileSync } from "node:fs";
const bytes = readFileSync(process.argv[2]);
const t0 = performance.now();
const module = await WebAssembly.compile(bytes);
const t1 = performance.now();
const imports = {};
const listed = WebAssembly.Module.imports(module);
for (const i of listed) {
  imports[i.module] ??= {};
  if (i.kind === "function") imports[i.module][i.name] = () => {};
  else if (i.kind === "tag") imports[i.module][i.name] = WebAssembly.JSTag;
  else throw new Error(`cannot stub an import of kind ${i.kind}: ${i.module}.${i.name}`);
}
const t2 = performance.now();
await WebAssembly.instantiate(module, imports);
const t3 = performance.now();
console.log(JSON.stringify({ compile_ms: t1 - t0, instantiate_ms: t3 - t2, imports: listed.length }));
"#;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Measure every Worker that is built.
pub fn measure(node: &Path, workers: &[WorkerCrate], scratch: &Path, runs: usize) -> Result<Vec<WasmFigures>> {
    fs_err::create_dir_all(scratch)?;
    let script = scratch.join("wasm-startup.mjs");
    fs_err::write(&script, SCRIPT)?;
    let mut out = Vec::new();
    for w in workers {
        let wasm = w.wasm();
        let bytes = fs_err::read(&wasm).context(format!("{} is not built", wasm.display()))?;
        let gzip = build::gzipped_len(&bytes).context("gzip is needed to measure compressed sizes")? as u64;
        let mut bundle = bytes.clone();
        if let Ok(js) = fs_err::read(w.dir.join("build/index.js")) {
            bundle.extend_from_slice(&js);
        }
        let bundle_gzip = build::gzipped_len(&bundle).unwrap_or(0) as u64;
        let (mut compile, mut eager, mut inst) = (Vec::new(), Vec::new(), Vec::new());
        let mut imports = 0;
        for run in 0..runs * 2 {
            let lazy = run % 2 == 0;
            let mut cmd = Command::new(node);
            if !lazy {
                cmd.arg("--no-wasm-lazy-compilation");
            }
            let text = output(cmd.arg(&script).arg(&wasm)).context(format!("timing {}'s module", w.name))?;
            let v: serde_json::Value = serde_json::from_str(text.trim()).context("the timing script's answer")?;
            let ms = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            if lazy {
                compile.push(ms("compile_ms"));
                inst.push(ms("instantiate_ms"));
            } else {
                eager.push(ms("compile_ms"));
            }
            imports = v["imports"].as_u64().unwrap_or(0);
        }
        out.push(WasmFigures {
            worker: w.name.clone(),
            raw_bytes: bytes.len() as u64,
            gzip_bytes: gzip,
            bundle_gzip_bytes: bundle_gzip,
            budget_gzip_bytes: build::gzip_budget(&w.name),
            imports,
            compile_ms: median(compile),
            compile_eager_ms: median(eager),
            instantiate_ms: median(inst),
        });
    }
    Ok(out)
}
