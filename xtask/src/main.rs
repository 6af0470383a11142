//! `cargo xtask <task>`: see `cargo xtask help`.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use xtask::stack::{self, Ports, UpOptions};
use xtask::tools::{self, Paths};
use xtask::util::{step, Context, Result};

macro_rules! bail {
    ($($arg:tt)*) => { return Err(xtask::util::Error(format!($($arg)*))) };
}
use xtask::{build, keys};

mod schemathesis;

mod fuzz;

mod bench;

mod deploy;

const HELP: &str = "\
cargo xtask <task>

  setup                 install every tool edgesync needs (pinned, cached outside the clone),
                        the embedding model's files, and the embeddings server (native build)
  build [NAME...]       build the Workers (.wasm bundles); all by default
  dev                   setup + build + the whole stack in the foreground; Ctrl-C stops it
  test                  setup + build + unit tests + the stack on free ports + integration tests
  stack up|down|status  the local stack in the background (target/stack/stack.json)
  token [--sub UUID] [--es256] [--ttl SECS] [--role service_role|anon]
                        print a token for the running stack
  schemathesis [--dir DIR] [--examples N]
                        schemathesis against the running stack's /openapi.json (as in test)
  fuzz [--seconds N] [--target NAME]
                        replay fuzz/regressions, then fuzz each cargo-fuzz target in fuzz/
                        (or only NAME) for N seconds (default 15); fails on any crash
  bench [--smoke] [--keep] [--report-only]
                        edgesync against PostgREST direct and the TypeScript Worker on a stack
                        of its own: BENCHMARKS.md + bench/plots/ (--smoke: tiny, into target/)
  deploy [--env NAME] [--dry-run] [--secrets FILE] [--config FILE]
                        build, then deploy every function Worker and then the gateway to
                        Cloudflare with the settings of [env.NAME] in deploy.toml (default:
                        its default_env) and the secrets from the environment or FILE
                        (dotenv); --dry-run: bundle and check every Worker, no network
  db push --db-url URL  apply the pending migrations (sql/migrations) as URL's role, e.g. a
                        hosted Supabase project's `postgres`; prints what it applied
  db layout             write supabase/migrations/ (for `supabase db push`) from sql/migrations

Options for dev and stack up:
  --dir DIR             stack directory (default target/stack)
  --fresh               start from an empty database
  --port-functions N --port-postgrest N --port-postgrest-admin N
  --port-postgres N --port-auth N --port-inspector N --port-embeddings N --port-neo4j N
  --free-ports          let the OS pick every port
Options for test:
  --keep                leave the test stack running afterwards
  --schemathesis-examples N
                        schemathesis test cases per operation and phase (default 60; also
                        EDGESYNC_SCHEMATHESIS_EXAMPLES); 0 skips it. Skipped by default when
                        a test filter is given after --
  -- ARGS               passed to the integration tests' harness (e.g. a test name filter)
";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Flags {
    rest: Vec<String>,
    passthrough: Vec<String>,
}

impl Flags {
    fn parse(args: &[String]) -> Flags {
        let (mine, passthrough) = match args.iter().position(|a| a == "--") {
            Some(i) => (args[..i].to_vec(), args[i + 1..].to_vec()),
            None => (args.to_vec(), Vec::new()),
        };
        Flags { rest: mine, passthrough }
    }
    fn flag(&mut self, name: &str) -> bool {
        match self.rest.iter().position(|a| a == name) {
            Some(i) => {
                self.rest.remove(i);
                true
            }
            None => false,
        }
    }
    fn value(&mut self, name: &str) -> Result<Option<String>> {
        match self.rest.iter().position(|a| a == name) {
            Some(i) if i + 1 < self.rest.len() => {
                let v = self.rest.remove(i + 1);
                self.rest.remove(i);
                Ok(Some(v))
            }
            Some(_) => bail!("{name} needs a value"),
            None => Ok(None),
        }
    }
    fn port(&mut self, name: &str, default: u16) -> Result<u16> {
        match self.value(name)? {
            Some(v) => v.parse().context(format!("{name} must be a port number")),
            None => Ok(default),
        }
    }
    fn done(&self) -> Result<()> {
        if let Some(extra) = self.rest.first() {
            bail!("unexpected argument {extra:?}; see `cargo xtask help`");
        }
        Ok(())
    }
}

fn up_options(paths: &Paths, flags: &mut Flags, default_dir: &str) -> Result<UpOptions> {
    let dir = flags.value("--dir")?.map(PathBuf::from).unwrap_or_else(|| paths.root.join(default_dir));
    let fresh = flags.flag("--fresh");
    let base = if flags.flag("--free-ports") { Ports::free()? } else { Ports::defaults() };
    let ports = Ports {
        functions: flags.port("--port-functions", base.functions)?,
        postgrest: flags.port("--port-postgrest", base.postgrest)?,
        postgrest_admin: flags.port("--port-postgrest-admin", base.postgrest_admin)?,
        postgres: flags.port("--port-postgres", base.postgres)?,
        auth: flags.port("--port-auth", base.auth)?,
        inspector: flags.port("--port-inspector", base.inspector)?,
        embeddings: flags.port("--port-embeddings", base.embeddings)?,
        neo4j: flags.port("--port-neo4j", base.neo4j)?,
    };
    Ok(UpOptions { dir, ports, fresh, alone: &[] })
}

fn run(args: Vec<String>) -> Result<ExitCode> {
    let paths = Paths::discover()?;
    let task = args.first().cloned().unwrap_or_else(|| "help".into());
    let mut flags = Flags::parse(&args[1.min(args.len())..]);
    match task.as_str() {
        "setup" => {
            flags.done()?;
            let t = tools::ensure(&paths)?;
            println!("{}", tools::describe(&t)?);
            println!("{}", xtask::browser::describe(&xtask::browser::ensure(&paths)?)?);
        }
        "build" => {
            let only = std::mem::take(&mut flags.rest);
            let t = tools::ensure(&paths)?;
            build::build(&paths, &t, &only)?;
            println!("{:<12} {:>10} {:>10}", "worker", "wasm bytes", "gzip -9");
            for w in build::all_workers(&paths) {
                if let Ok(bytes) = std::fs::read(w.wasm()) {
                    println!(
                        "{:<12} {:>10} {:>10}",
                        w.name,
                        bytes.len(),
                        build::gzipped_len(&bytes).map(|n| n.to_string()).unwrap_or("-".into())
                    );
                }
            }
        }
        "stack" => {
            let sub = if flags.rest.is_empty() { String::new() } else { flags.rest.remove(0) };
            match sub.as_str() {
                "up" => {
                    let opts = up_options(&paths, &mut flags, "target/stack")?;
                    flags.done()?;
                    let t = tools::ensure(&paths)?;
                    build::build(&paths, &t, &[])?;
                    let info = stack::up(&paths, &t, &opts)?;
                    print_stack(&info)?;
                }
                "down" => {
                    let dir =
                        flags.value("--dir")?.map(PathBuf::from).unwrap_or_else(|| paths.root.join("target/stack"));
                    flags.done()?;
                    stack::down(&dir)?;
                    step("stack stopped");
                }
                "status" => {
                    let dir =
                        flags.value("--dir")?.map(PathBuf::from).unwrap_or_else(|| paths.root.join("target/stack"));
                    flags.done()?;
                    println!("{}", stack::status(&dir)?);
                }
                _ => bail!("usage: cargo xtask stack up|down|status"),
            }
        }
        "dev" => {
            let opts = up_options(&paths, &mut flags, "target/stack")?;
            flags.done()?;
            return dev(&paths, opts);
        }
        "test" => {
            let keep = flags.flag("--keep");
            let examples = match flags
                .value("--schemathesis-examples")?
                .or_else(|| std::env::var(schemathesis::EXAMPLES_ENV).ok().filter(|v| !v.trim().is_empty()))
            {
                Some(v) => Some(v.trim().parse::<u32>().context("--schemathesis-examples must be a number")?),
                // A filtered run is for one test; fuzzing every endpoint is not asked for.
                None if !flags.passthrough.is_empty() => Some(0),
                None => None,
            };
            flags.done()?;
            return test(&paths, keep, &flags.passthrough, examples.unwrap_or(schemathesis::DEFAULT_EXAMPLES));
        }
        "token" => {
            let dir = flags.value("--dir")?.map(PathBuf::from).unwrap_or_else(|| paths.root.join("target/stack"));
            let sub = flags.value("--sub")?.unwrap_or_else(keys::random_uuid);
            let ttl: i64 =
                flags.value("--ttl")?.map(|v| v.parse().context("--ttl must be seconds")).transpose()?.unwrap_or(3600);
            let es256 = flags.flag("--es256");
            let role = flags.value("--role")?;
            flags.done()?;
            let info = stack::load(&dir)?;
            let token = match role.as_deref() {
                Some(r @ ("service_role" | "anon")) => keys::sign_hs256(&info.jwt_secret, &keys::api_key_claims(r))?,
                Some(other) => bail!("--role must be service_role or anon, not {other}"),
                None if es256 => keys::sign_es256(&info.es256_key, &keys::user_claims(&sub, &info.jwt_issuer, ttl))?,
                None => keys::sign_hs256(&info.jwt_secret, &keys::user_claims(&sub, &info.jwt_issuer, ttl))?,
            };
            println!("{token}");
        }
        "serve-jwks" => {
            let port: u16 = flags.value("--port")?.context("--port is required")?.parse().context("--port")?;
            let file = flags.value("--file")?.context("--file is required")?;
            stack::serve_jwks(port, std::path::Path::new(&file))?;
        }
        "embed-relay" | "live-relay" => {
            let relay = if task == xtask::relay::LIVE.command { &xtask::relay::LIVE } else { &xtask::relay::EMBED };
            let database_url = flags.value("--database-url")?.context("--database-url is required")?;
            let target = flags.value("--target")?.context("--target is required")?;
            flags.done()?;
            let secret = std::env::var(relay.secret_env)
                .context(format!("{} must carry the relay's secret", relay.secret_env))?;
            xtask::relay::run(relay, &database_url, &target, &secret);
        }
        "fuzz" => {
            let seconds = match flags.value("--seconds")? {
                Some(v) => v.parse().context("--seconds must be a whole number of seconds")?,
                None => fuzz::DEFAULT_SECONDS,
            };
            let mut only = Vec::new();
            while let Some(name) = flags.value("--target")? {
                only.push(name);
            }
            flags.done()?;
            return fuzz::run(&paths, seconds, &only);
        }
        "schemathesis" => {
            let dir = flags.value("--dir")?.map(PathBuf::from).unwrap_or_else(|| paths.root.join("target/stack"));
            let examples = match flags.value("--examples")? {
                Some(v) => v.parse().context("--examples must be a number")?,
                None => schemathesis::DEFAULT_EXAMPLES,
            };
            flags.done()?;
            let o = schemathesis::run_all(&paths, &stack::load(&dir)?, examples)?;
            step(format!("schemathesis: {} test cases in {:.0}s", o.cases, o.elapsed.as_secs_f64()));
            return Ok(if o.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        "bench" => {
            let opts = bench::Options {
                smoke: flags.flag("--smoke"),
                keep: flags.flag("--keep"),
                report_only: flags.flag("--report-only"),
                live_only: flags.flag("--live"),
            };
            flags.done()?;
            return bench::run(&paths, opts);
        }
        "deploy" => {
            let opts = deploy::Options {
                env: flags.value("--env")?,
                dry_run: flags.flag("--dry-run"),
                secrets: flags.value("--secrets")?.map(PathBuf::from),
                config: flags.value("--config")?.map(PathBuf::from),
            };
            flags.done()?;
            return Ok(if deploy::run(&paths, opts)? { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        "db" => {
            let sub = if flags.rest.is_empty() { String::new() } else { flags.rest.remove(0) };
            match sub.as_str() {
                "push" => {
                    let url = flags.value("--db-url")?.context("db push needs --db-url URL")?;
                    flags.done()?;
                    let t = tools::ensure_postgres(&paths)?;
                    let applied =
                        xtask::db::apply_pending(&paths, &t, &url, &mut |m| println!("applying {}", m.file_name()))?;
                    let version = xtask::db::schema_version(&t, &url)?;
                    match applied.len() {
                        0 => println!("nothing to apply; schema version {version} (current)"),
                        1 => println!("1 migration applied; schema version {version}"),
                        n => println!("{n} migrations applied; schema version {version}"),
                    }
                }
                "layout" => {
                    flags.done()?;
                    let n = xtask::db::write_supabase_layout(&paths)?;
                    println!("wrote {n} migrations to supabase/migrations/");
                }
                other => bail!("unknown db task {other:?} (push or layout)"),
            }
        }
        "help" | "--help" | "-h" => print!("{HELP}"),
        other => bail!("unknown task {other:?}\n\n{HELP}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_stack(info: &stack::StackInfo) -> Result<()> {
    let user = keys::random_uuid();
    let token = keys::sign_hs256(&info.jwt_secret, &keys::user_claims(&user, &info.jwt_issuer, 24 * 3600))?;
    println!(
        "\nedgesync is up (in {:.1}s)\n\n  functions   {url}   (/health /sync /upload /populate /embed_entry)\n  postgrest   {}\n  database    {}   (postgres, not a superuser, as on Supabase)\n  superuser   {}\n  embeddings  {}/embeddings   (OpenAI-compatible, model {})\n  neo4j       {}   (the populate source: NEO4J_URL, user {})\n  stack file  {}\n\n\
         A user token (user {user}, valid 24 h):\n\n  export TOKEN={token}\n  curl -s {url}/health\n  curl -s -H \"Authorization: Bearer $TOKEN\" {url}/sync\n\n\
         More tokens: cargo xtask token [--sub UUID] [--es256]\n",
        info.started_in_secs,
        info.postgrest_url,
        info.postgres_url,
        info.database_url,
        info.embeddings_url,
        stack::LOCAL_EMBEDDINGS_MODEL,
        info.neo4j_url,
        info.neo4j_user,
        stack::stack_file(&info.stack_dir).display(),
        url = info.functions_url,
    );
    Ok(())
}

fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

fn dev(paths: &Paths, opts: UpOptions) -> Result<ExitCode> {
    let t = tools::ensure(paths)?;
    build::build(paths, &t, &[])?;
    install_signal_handlers();
    let info = stack::up(paths, &t, &opts)?;
    print_stack(&info)?;
    eprintln!("Logs: {}   Press Ctrl-C to stop.", info.logs_dir.display());
    while !INTERRUPTED.load(Ordering::SeqCst) {
        if !info.all_alive() {
            // PostgREST may have been restarted by hand; re-read before judging.
            let now = stack::load(&info.stack_dir)?;
            if !now.all_alive() {
                eprintln!("xtask: a stack process stopped; shutting down\n{}", stack::status(&info.stack_dir)?);
                stack::down(&info.stack_dir)?;
                return Ok(ExitCode::FAILURE);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!("\nxtask: stopping the stack");
    stack::down(&info.stack_dir)?;
    Ok(ExitCode::SUCCESS)
}

/// Every test: native unit tests, then the integration tests against a fresh stack on
/// free ports. The stack is always stopped afterwards (unless --keep).
fn test(paths: &Paths, keep: bool, passthrough: &[String], st_examples: u32) -> Result<ExitCode> {
    let started = Instant::now();
    let t = tools::ensure(paths)?;
    // Chromium and playwright-core, for tests/browser.rs.
    xtask::browser::ensure(paths)?;
    if st_examples > 0 {
        schemathesis::ensure(paths)?;
    }
    step("unit tests (native)");
    let mut counts = Counts::default();
    let unit = cargo_test(
        Command::new("cargo")
            .args(["test", "--workspace", "--exclude", "edgesync-integration", "--exclude", "edgesync-embedder"])
            .args(build::all_workers(paths).iter().flat_map(|w| ["--exclude".to_owned(), crate_name(&w.name)]))
            .current_dir(&paths.root),
        &mut counts,
    )?;
    // The embeddings server's tests in the profile its binary was built with (by
    // tools::ensure), so candle is compiled once, optimised.
    let unit = unit
        && cargo_test(
            Command::new("cargo")
                .args(["test", "--profile", build::NATIVE_PROFILE, "-p", "edgesync-embedder"])
                .env("CARGO_TARGET_DIR", paths.target())
                .current_dir(&paths.root),
            &mut counts,
        )?;
    // The TypeScript client: its unit tests and the conformance scenarios, in Node.
    let js = xtask::jsclient::ensure(paths)?;
    let (js_counts, js_ok) = xtask::jsclient::unit_tests(&js)?;
    counts.passed += js_counts.passed;
    counts.failed += js_counts.failed;
    let unit = unit && js_ok;
    if !unit {
        counts.summary(false);
        eprintln!("xtask: unit tests failed");
        return Ok(ExitCode::FAILURE);
    }
    build::build(paths, &t, &[])?;
    // `cargo xtask deploy --dry-run` of every environment of deploy.toml: the bundles
    // against the size limit and the generated configs (no network, no credentials).
    step("deploy --dry-run of every environment of deploy.toml");
    let deployable = deploy::dry_run_all(paths, &t)?;
    if deployable {
        counts.passed += 1
    } else {
        counts.failed += 1
    }
    // Build the integration tests before the stack is up, so compile time is not
    // spent with servers waiting.
    xtask::util::run(
        Command::new("cargo").args(["test", "-p", "edgesync-integration", "--no-run"]).current_dir(&paths.root),
    )?;
    // The CLI tests run the real `edgesync-client` binary.
    xtask::util::run(
        Command::new("cargo")
            .args(["build", "-p", "edgesync-client", "--bin", "edgesync-client"])
            .current_dir(&paths.root),
    )?;

    install_signal_handlers();
    let dir = paths.root.join("target/stack-test");
    stack::down(&dir)?;
    // The sync Worker is also served alone, as deployed: tests/live.rs long-polls it there.
    let opts = UpOptions { dir: dir.clone(), ports: Ports::free()?, fresh: true, alone: &["sync"] };
    let info = stack::up(paths, &t, &opts)?;
    step(format!("test stack up in {:.1}s at {}", info.started_in_secs, info.functions_url));
    // The TypeScript baseline Worker, which tests/ts_baseline.rs compares with ours.
    let ts = match bench::start_ts_worker(paths, &info) {
        Ok(Some(ts)) => ts,
        other => {
            let _ = stack::down(&dir);
            other?;
            bail!("bench/ts-worker is missing: tests/ts_baseline.rs compares against it");
        }
    };
    let integration = cargo_test(
        Command::new("cargo")
            // Every test binary runs even when one fails, so one failure does not hide others.
            .args(["test", "-p", "edgesync-integration", "--no-fail-fast", "--"])
            .args(passthrough)
            .env("EDGESYNC_STACK_DIR", &dir)
            .env("EDGESYNC_CLIENT_BIN", paths.root.join("target/debug/edgesync-client"))
            .env("EDGESYNC_TS_BASELINE_URL", &ts.url)
            .current_dir(&paths.root),
        &mut counts,
    );
    // Hostile input while the stack is still up: schemathesis against /openapi.json.
    let fuzzed = match st_examples {
        0 => Ok(true),
        n => schemathesis::run_all(paths, &info, n).map(|o| {
            step(format!(
                "schemathesis: {} test cases in {:.0}s, {}",
                o.cases,
                o.elapsed.as_secs_f64(),
                if o.ok { "no failures" } else { "FAILURES (see above)" }
            ));
            if o.ok {
                counts.passed += 1
            } else {
                counts.failed += 1
            }
            o.ok
        }),
    };
    bench::stop_ts_worker(&dir);
    let stopped = if keep { Ok(()) } else { stack::down(&dir) };
    let integration = integration?;
    let integration = fuzzed? && integration && deployable;
    stopped?;
    step(format!("all tests finished in {:.0}s", started.elapsed().as_secs_f64()));
    counts.summary(integration);
    if !integration || INTERRUPTED.load(Ordering::SeqCst) {
        eprintln!("xtask: integration tests failed (logs in {})", info.logs_dir.display());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Default)]
struct Counts {
    passed: usize,
    failed: usize,
}

impl Counts {
    /// One closing line for humans and CI: the sum over every test binary. A run that
    /// failed without a failing test (a crash, a build error) still counts one failure.
    fn summary(&self, ok: bool) {
        let failed = if ok { self.failed } else { self.failed.max(1) };
        println!("tests: {} passed, {failed} failed", self.passed);
    }
}

/// Run `cargo test`, passing its output through while adding up its
/// `test result: ok. N passed; M failed` lines. Returns whether it succeeded.
fn cargo_test(cmd: &mut Command, counts: &mut Counts) -> Result<bool> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().context("could not start cargo test")?;
    let stdout = child.stdout.take().context("no stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let number = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim().strip_suffix(word).and_then(|n| n.trim().rsplit(' ').next()?.parse::<usize>().ok())
                    })
                    .unwrap_or(0)
            };
            counts.passed += number("passed");
            counts.failed += number("failed");
        }
    }
    Ok(child.wait()?.success())
}

fn crate_name(worker: &str) -> String {
    match worker {
        "gateway" => "edgesync-gateway".into(),
        "embed_entry" => "edgesync-embed-entry".into(),
        other => format!("edgesync-{other}"),
    }
}
