//! `cargo xtask fuzz`: run the cargo-fuzz targets in `fuzz/` (the parsers in `shared`).
//!
//! - cargo-fuzz is installed, pinned, into the tool cache like every other tool
//!   (`<cache>/cargo/cargo-fuzz-<version>`), never onto the PATH.
//! - Rust here is stable only. The targets are built with `--sanitizer none`: `shared`
//!   has no `unsafe`, so AddressSanitizer would find nothing Rust's own bounds and
//!   overflow checks do not, while instrumenting every memory access (typically about
//!   half the executions per second) and needing `-Zsanitizer`. With no sanitizer
//!   cargo-fuzz passes only stable `-C` flags; `RUSTC_BOOTSTRAP=1` is set all the same,
//!   so `-Z` options (`--sanitizer address`, `--build-std`) also work on stable when
//!   reproducing by hand. Debug assertions, and so overflow checks, are on (`-a`): an
//!   arithmetic overflow is a crash too.
//! - Builds go to `target/fuzz`, so they are cached with the rest of the build output;
//!   each target's corpus grows in `target/fuzz/corpus/<target>`, seeded from the
//!   committed `fuzz/corpus/<target>`.
//! - Every crash found so far is kept in `fuzz/regressions/<target>/` and replayed
//!   first (`-runs=0`), so it stays fixed.
//! - The result: executions per target (libFuzzer's final
//!   `stat::number_of_executed_units`) and their total; any crash fails the run, with
//!   the crash file and the command that reproduces it.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;
use xtask::tools::Paths;
use xtask::util::{describe, lock_file, step, Context, Result};

pub const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Seconds of fuzzing per target by default: all seven targets in about two minutes.
pub const DEFAULT_SECONDS: u64 = 15;
const RSS_LIMIT_MB: u32 = 2048;
/// One input taking this long is reported as a hang (libFuzzer's default is 20 minutes).
const INPUT_TIMEOUT_SECS: u32 = 30;

/// What libFuzzer said about one run.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunStats {
    /// Inputs executed (including the corpus replayed at start-up).
    pub executions: Option<u64>,
    /// Coverage points at the end.
    pub coverage: Option<u64>,
    /// The file libFuzzer wrote the failing input to (crash, timeout, oom, leak).
    pub artifact: Option<String>,
    /// Where the target panicked, and the message (the line after), when it did.
    pub panic: Option<String>,
}

/// Read libFuzzer's output (its stderr, as cargo-fuzz passes it through).
pub fn parse_libfuzzer(output: &str) -> RunStats {
    let mut stats = RunStats::default();
    let mut last_pulse = None;
    let mut lines = output.lines().peekable();
    while let Some(line) = lines.next() {
        let line = line.trim_end();
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            stats.executions = n.trim().parse().ok().or(stats.executions);
        } else if let Some(rest) = line.strip_prefix('#') {
            // `#12345\tDONE   cov: 812 ft: 2301 corp: 140/9kb ...`, `#4096\tpulse ...`
            let mut words = rest.split_whitespace();
            let count = words.next().and_then(|n| n.parse::<u64>().ok());
            let kind = words.next();
            if let Some(count) = count {
                last_pulse = Some(count);
                if kind == Some("DONE") && stats.executions.is_none() {
                    stats.executions = Some(count);
                }
            }
            if let Some(cov) = rest.split("cov: ").nth(1).and_then(|c| c.split_whitespace().next()) {
                stats.coverage = cov.parse().ok().or(stats.coverage);
            }
        } else if let Some((_, path)) = line.split_once("Test unit written to ") {
            stats.artifact = Some(path.trim().to_owned());
        } else if line.contains("panicked at") && stats.panic.is_none() {
            let message = lines.peek().map(|m| m.trim_end()).unwrap_or_default();
            stats.panic = Some(format!("{line}\n{message}"));
        } else if let Some(rest) = line.strip_prefix("Done ") {
            // `Done 1234 runs in 15 second(s)`.
            if stats.executions.is_none() {
                stats.executions = rest.split_whitespace().next().and_then(|n| n.parse().ok());
            }
        }
    }
    if stats.executions.is_none() {
        stats.executions = last_pulse;
    }
    stats
}

/// The fuzz targets: `fuzz/fuzz_targets/*.rs`, by name.
pub fn targets(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("fuzz/fuzz_targets");
    let mut names = Vec::new();
    for entry in fs_err::read_dir(&dir).context(format!("could not read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                names.push(stem.to_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// cargo-fuzz, pinned, in the tool cache; installed once (a minute or two).
pub fn ensure_cargo_fuzz(paths: &Paths) -> Result<PathBuf> {
    let root = paths.cache.join("cargo").join(format!("cargo-fuzz-{CARGO_FUZZ_VERSION}"));
    let exe = root.join("bin/cargo-fuzz");
    if exe.is_file() {
        return Ok(exe);
    }
    fs_err::create_dir_all(&paths.cache)
        .context(format!("could not create the tool cache {}", paths.cache.display()))?;
    let _lock = lock_file(&paths.cache.join(".lock"))?;
    if exe.is_file() {
        return Ok(exe);
    }
    step(format!("installing cargo-fuzz {CARGO_FUZZ_VERSION} into {} (a minute or two, once)", root.display()));
    let mut cmd = Command::new("cargo");
    cmd.args(["install", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION, "--locked", "--root"])
        .arg(&root)
        .env_remove("CARGO_TARGET_DIR")
        .current_dir(&paths.cache);
    xtask::util::run(&mut cmd)?;
    if !exe.is_file() {
        return Err(xtask::Error(format!("cargo install cargo-fuzz did not produce {}", exe.display())));
    }
    Ok(exe)
}

struct Fuzz {
    exe: PathBuf,
    root: PathBuf,
    target_dir: PathBuf,
}

impl Fuzz {
    /// `cargo-fuzz fuzz <sub> -a --sanitizer none --target-dir target/fuzz`, from the root.
    fn command(&self, sub: &str) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.args(["fuzz", sub, "-a", "--sanitizer", "none", "--target-dir"])
            .arg(&self.target_dir)
            .env("RUSTC_BOOTSTRAP", "1")
            .current_dir(&self.root);
        cmd
    }

    /// Run `cargo fuzz run <target> <corpus> -- <args>`, its output into `log`.
    fn run(&self, target: &str, corpus: &Path, libfuzzer_args: &[String], log: &Path) -> Result<(bool, RunStats)> {
        let mut cmd = self.command("run");
        cmd.arg(target).arg(corpus).arg("--").args(libfuzzer_args);
        let out = std::fs::File::create(log).context(format!("could not create {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        let shown = describe(&cmd);
        let status = cmd.status().context(format!("could not start `{shown}`"))?;
        let text = String::from_utf8_lossy(&fs_err::read(log)?).into_owned();
        Ok((status.success(), parse_libfuzzer(&text)))
    }

    fn reproduce(&self, target: &str, artifact: &str) -> String {
        format!(
            "RUSTC_BOOTSTRAP=1 {} fuzz run -a --sanitizer none --target-dir {} {target} {artifact}",
            self.exe.display(),
            self.target_dir.display()
        )
    }
}

/// Copy the committed seeds into the scratch corpus (files already there are kept).
fn seed(from: &Path, to: &Path) -> Result<usize> {
    fs_err::create_dir_all(to)?;
    let mut copied = 0;
    if let Ok(entries) = fs_err::read_dir(from) {
        for entry in entries {
            let entry = entry?;
            let dest = to.join(entry.file_name());
            if entry.file_type()?.is_file() && !dest.exists() {
                fs_err::copy(entry.path(), dest)?;
                copied += 1;
            }
        }
    }
    Ok(copied)
}

fn files_in(dir: &Path) -> usize {
    fs_err::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).filter(|e| e.file_type().is_ok_and(|t| t.is_file())).count())
        .unwrap_or(0)
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

struct Outcome {
    target: String,
    replayed: usize,
    /// It failed on a committed regression input, before fuzzing.
    regressed: bool,
    stats: RunStats,
    ok: bool,
    log: PathBuf,
}

/// `cargo xtask fuzz [--seconds N] [--target NAME]...`.
pub fn run(paths: &Paths, seconds: u64, only: &[String]) -> Result<ExitCode> {
    if seconds == 0 {
        return Err(xtask::Error("--seconds must be at least 1 (libFuzzer reads 0 as \"forever\")".into()));
    }
    let all = targets(&paths.root)?;
    for name in only {
        if !all.contains(name) {
            return Err(xtask::Error(format!("no fuzz target {name:?}; the targets are {}", all.join(", "))));
        }
    }
    let chosen: Vec<String> = if only.is_empty() { all } else { only.to_vec() };
    let fuzz =
        Fuzz { exe: ensure_cargo_fuzz(paths)?, root: paths.root.clone(), target_dir: paths.target().join("fuzz") };
    let logs = fuzz.target_dir.join("logs");
    fs_err::create_dir_all(&logs)?;

    // One build of every chosen target (cargo's output shown); `run` then finds it built.
    let started = Instant::now();
    step(format!("building the fuzz targets into {} (the first build takes minutes)", fuzz.target_dir.display()));
    let mut build = fuzz.command("build");
    if chosen.len() == 1 {
        build.arg(&chosen[0]);
    }
    xtask::util::run(&mut build)?;
    step(format!("fuzz targets built in {:.0}s", started.elapsed().as_secs_f64()));

    let mut outcomes = Vec::new();
    for target in &chosen {
        // 1. Every input that ever crashed this target, once.
        let regressions = paths.root.join("fuzz/regressions").join(target);
        let replayed = files_in(&regressions);
        if replayed > 0 {
            let log = logs.join(format!("{target}.regressions.log"));
            let args = ["-runs=0".to_owned(), format!("-rss_limit_mb={RSS_LIMIT_MB}")];
            let (ok, stats) = fuzz.run(target, &regressions, &args, &log)?;
            if !ok {
                outcomes.push(Outcome { target: target.clone(), replayed, regressed: true, stats, ok, log });
                continue;
            }
        }
        // 2. Fuzz for the budget, from the grown corpus.
        let corpus = fuzz.target_dir.join("corpus").join(target);
        seed(&paths.root.join("fuzz/corpus").join(target), &corpus)?;
        step(format!("fuzzing {target} for {seconds}s ({} inputs in its corpus)", files_in(&corpus)));
        let log = logs.join(format!("{target}.log"));
        let args = [
            format!("-max_total_time={seconds}"),
            format!("-rss_limit_mb={RSS_LIMIT_MB}"),
            format!("-timeout={INPUT_TIMEOUT_SECS}"),
            "-print_final_stats=1".to_owned(),
        ];
        let (ok, stats) = fuzz.run(target, &corpus, &args, &log)?;
        outcomes.push(Outcome { target: target.clone(), replayed, regressed: false, stats, ok, log });
    }

    println!("\n{:<16} {:>11} {:>14} {:>9}  result", "target", "regressions", "executions", "coverage");
    let mut total = 0u64;
    let mut failed = 0;
    for o in &outcomes {
        let execs = o.stats.executions.unwrap_or(0);
        total += execs;
        let result = match (&o.stats.artifact, o.ok) {
            (_, true) => "ok",
            (Some(_), false) if o.regressed => "CRASH on a committed regression input",
            (Some(_), false) => "CRASH",
            (None, false) => "FAILED",
        };
        println!(
            "{:<16} {:>11} {:>14} {:>9}  {result}",
            o.target,
            o.replayed,
            execs,
            o.stats.coverage.map(|c| c.to_string()).unwrap_or_else(|| "-".into())
        );
    }
    for o in outcomes.iter().filter(|o| !o.ok) {
        failed += 1;
        let text = String::from_utf8_lossy(&fs_err::read(&o.log).unwrap_or_default()).into_owned();
        eprintln!("\n── {} failed (full log: {}) ──", o.target, o.log.display());
        if let Some(panic) = &o.stats.panic {
            eprintln!("{panic}");
        }
        match &o.stats.artifact {
            Some(artifact) => {
                eprintln!("crash input: {artifact}");
                eprintln!("reproduce:   {}", fuzz.reproduce(&o.target, artifact));
                if o.regressed {
                    eprintln!("this input is in fuzz/regressions/{}/: a bug fixed before is back", o.target);
                } else {
                    eprintln!(
                        "then fix it in shared, add a unit test there, and keep the input in fuzz/regressions/{}/",
                        o.target
                    );
                }
            }
            None => eprintln!("{}", tail(&text, 30)),
        }
    }
    println!(
        "fuzz: {total} executions in total over {} target(s), {seconds}s each; {failed} failed; {:.0}s in all",
        outcomes.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The output of a real run (`cargo xtask fuzz --target cursor`), its pulse lines cut.
    const CLEAN: &str = "\
     Running `target/fuzz/x86_64-unknown-linux-gnu/release/cursor -artifact_prefix=/work/main/fuzz/artifacts/cursor/ -max_total_time=15 -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 /work/main/target/fuzz/corpus/cursor`
WARNING: Failed to find function \"__sanitizer_acquire_crash_state\".
INFO: Running with entropic power schedule (0xFF, 100).
INFO: Seed: 4044610821
INFO: Loaded 1 modules   (1369 inline 8-bit counters): 1369 [0x564eafb9e098, 0x564eafb9e5f1),
INFO:      251 files found in /work/main/target/fuzz/corpus/cursor
INFO: seed corpus: files: 251 min: 1b max: 1020b total: 12428b rss: 68Mb
#252\tINITED cov: 446 ft: 864 corp: 224/11230b exec/s: 0 rss: 68Mb
#524288\tpulse  cov: 448 ft: 868 corp: 228/10995b lim: 4096 exec/s: 32768 rss: 68Mb
#926128\tDONE   cov: 448 ft: 868 corp: 228/10995b lim: 4096 exec/s: 57883 rss: 68Mb
###### Recommended dictionary. ######
\"\\377\\017\" # Uses: 15166
###### End of recommended dictionary. ######
Done 926128 runs in 16 second(s)
stat::number_of_executed_units: 926128
stat::average_exec_per_sec:     57883
stat::new_units_added:          141
stat::slowest_unit_time_sec:    0
stat::peak_rss_mb:              68
";

    /// The crash the `sync_query` target found (fuzz/regressions/sync_query/), trimmed.
    const CRASH: &str = "\
#1024\tpulse  cov: 1702 ft: 3630 corp: 971/31kb lim: 14 exec/s: 512 rss: 47Mb
thread '<unnamed>' (19769) panicked at fuzz_targets/sync_query.rs:116:55:
the page's cursor is refused (the cursor is not valid (bad origin); pull again without `since`): {\"changes\":{}}
stack backtrace:
==19769== ERROR: libFuzzer: deadly signal
NOTE: libFuzzer has rudimentary signal handlers.
SUMMARY: libFuzzer: deadly signal
MS: 2 ChangeByte-InsertRepeatedBytes-; base unit: 8ae6dfbd
artifact_prefix='/work/main/fuzz/artifacts/sync_query/'; Test unit written to /work/main/fuzz/artifacts/sync_query/crash-fbef28dda7e85dd1e975982b5aa6f08f01c5ce72
Base64: c2luY2U9TWk0M04GKgEAemPp6enp6enp6Wk=
stat::number_of_executed_units: 1380
";

    #[test]
    fn a_clean_run_reports_its_final_executions_and_coverage() {
        let s = parse_libfuzzer(CLEAN);
        assert_eq!(s.executions, Some(926_128));
        assert_eq!(s.coverage, Some(448));
        assert_eq!((s.artifact, s.panic), (None, None));
    }

    #[test]
    fn a_crash_reports_its_input_and_panic() {
        let s = parse_libfuzzer(CRASH);
        assert_eq!(s.executions, Some(1380));
        assert_eq!(
            s.artifact.as_deref(),
            Some("/work/main/fuzz/artifacts/sync_query/crash-fbef28dda7e85dd1e975982b5aa6f08f01c5ce72")
        );
        let panic = s.panic.unwrap();
        assert!(panic.contains("sync_query.rs:116") && panic.contains("the page's cursor is refused"), "{panic}");
    }

    #[test]
    fn without_final_stats_the_done_line_or_last_pulse_counts() {
        let done = "#10\tINITED cov: 5\n#4242\tDONE   cov: 9 ft: 1\nDone 4242 runs in 1 second(s)\n";
        assert_eq!(parse_libfuzzer(done).executions, Some(4242));
        assert_eq!(parse_libfuzzer(done).coverage, Some(9));
        let pulses = "#10\tINITED cov: 5\n#512\tpulse  cov: 7\n";
        assert_eq!(parse_libfuzzer(pulses).executions, Some(512));
        assert_eq!(parse_libfuzzer("").executions, None);
        assert_eq!(parse_libfuzzer("Done 77 runs in 0 second(s)\n").executions, Some(77));
    }

    #[test]
    fn every_target_has_seeds() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let names = targets(root).unwrap();
        assert!(names.len() >= 7, "{names:?}");
        for name in &names {
            assert!(files_in(&root.join("fuzz/corpus").join(name)) > 0, "fuzz/corpus/{name} has no seeds");
        }
    }
}
