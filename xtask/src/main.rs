//! `cargo xtask <task>`: see `cargo xtask --help`.

use clap::{Parser, Subcommand};
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

/// Project automation for edgesync: install, build, run the local stack, test, bench,
/// deploy. Everything it installs is pinned and cached outside the clone.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install every tool edgesync needs (pinned, cached outside the clone), the
    /// embedding model's files, and the embeddings server (native build)
    Setup,
    /// Build the Workers' .wasm bundles (all by default)
    Build {
        /// Only these Workers (health, sync, powersync, upload, populate, embed_entry, gateway)
        names: Vec<String>,
    },
    /// setup + build + the whole stack in the foreground; Ctrl-C stops it
    Dev(UpArgs),
    /// setup + build + unit tests + the stack on free ports + integration tests
    Test {
        /// Leave the test stack running afterwards
        #[arg(long)]
        keep: bool,
        /// schemathesis test cases per operation and phase (default 60; also
        /// $EDGESYNC_SCHEMATHESIS_EXAMPLES); 0 skips it. Skipped by default when a test
        /// filter is given after --
        #[arg(long, value_name = "N")]
        schemathesis_examples: Option<u32>,
        /// Passed to the integration tests' harness (e.g. a test name filter)
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The local stack in the background (target/stack/stack.json)
    #[command(subcommand)]
    Stack(StackTask),
    /// Print a token for the running stack
    Token {
        /// The stack's directory (default: target/stack in the checkout)
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The user id (default: a new one)
        #[arg(long)]
        sub: Option<String>,
        /// Sign with the stack's ES256 key (verified through the JWKS) instead of HS256
        #[arg(long)]
        es256: bool,
        /// Lifetime in seconds
        #[arg(long, default_value_t = 3600, allow_negative_numbers = true)]
        ttl: i64,
        /// An API key's token instead of a user's
        #[arg(long, value_parser = ["service_role", "anon"])]
        role: Option<String>,
    },
    /// schemathesis against the running stack's /openapi.json (as in test)
    Schemathesis {
        /// The stack's directory (default: target/stack in the checkout)
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Test cases per operation and phase
        #[arg(long, default_value_t = schemathesis::DEFAULT_EXAMPLES)]
        examples: u32,
    },
    /// Replay fuzz/regressions, then fuzz each cargo-fuzz target in fuzz/ for a while;
    /// fails on any crash
    Fuzz {
        /// Seconds per target
        #[arg(long, default_value_t = fuzz::DEFAULT_SECONDS)]
        seconds: u64,
        /// Only this target (repeatable)
        #[arg(long = "target", value_name = "NAME")]
        targets: Vec<String>,
    },
    /// edgesync against PostgREST direct and the TypeScript Worker on a stack of its own:
    /// BENCHMARKS.md + bench/plots/
    Bench {
        /// Tiny sizes, a few requests, into target/bench-smoke/
        #[arg(long)]
        smoke: bool,
        /// Leave the bench stack running afterwards
        #[arg(long)]
        keep: bool,
        /// Write the report from the last results again, measuring nothing
        #[arg(long)]
        report_only: bool,
        /// Only the live-updates figures, into bench/LIVE.md
        #[arg(long)]
        live: bool,
        /// Only the fixed cost of a request (404, 401, an empty pull, incremental /sync,
        /// /upload of one), into target/bench-fixed/results.json: the before and after
        /// of a change to the Workers' per-request work
        #[arg(long, conflicts_with_all = ["live", "report_only"])]
        fixed_cost: bool,
    },
    /// Build, then deploy every function Worker and then the gateway to Cloudflare
    Deploy {
        /// The [env.NAME] of deploy.toml (default: its default_env)
        #[arg(long)]
        env: Option<String>,
        /// Bundle and check every Worker; no network
        #[arg(long)]
        dry_run: bool,
        /// A dotenv file with the secrets (default: the environment)
        #[arg(long, value_name = "FILE")]
        secrets: Option<PathBuf>,
        /// Another deploy.toml
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Migrations: apply them to a database, or lay them out for the Supabase CLI
    #[command(subcommand)]
    Db(DbTask),
    /// The stack's stand-in for Supabase Auth's JWKS endpoint (started by the stack)
    #[command(hide = true)]
    ServeJwks {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        file: PathBuf,
    },
    /// The stack's database-webhook relay (started by the stack)
    #[command(hide = true)]
    EmbedRelay(RelayArgs),
    /// The stack's live-pokes relay (started by the stack)
    #[command(hide = true)]
    LiveRelay(RelayArgs),
}

#[derive(Subcommand)]
enum StackTask {
    /// Build, then start the stack in the background
    Up(UpArgs),
    /// Stop it
    Down {
        /// The stack's directory (default: target/stack in the checkout)
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// What runs, and where
    Status {
        /// The stack's directory (default: target/stack in the checkout)
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DbTask {
    /// Apply the pending migrations (sql/migrations) as URL's role, e.g. a hosted Supabase
    /// project's `postgres`; prints what it applied
    Push {
        #[arg(long, value_name = "URL")]
        db_url: String,
    },
    /// Write supabase/migrations/ (for `supabase db push`) from sql/migrations
    Layout,
}

/// Where the stack lives and listens (dev and stack up).
#[derive(clap::Args)]
struct UpArgs {
    /// The stack's directory (default: target/stack in the checkout)
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Start from an empty database
    #[arg(long)]
    fresh: bool,
    /// Let the OS pick every port not given
    #[arg(long)]
    free_ports: bool,
    #[arg(long, value_name = "N")]
    port_functions: Option<u16>,
    #[arg(long, value_name = "N")]
    port_postgrest: Option<u16>,
    #[arg(long, value_name = "N")]
    port_postgrest_admin: Option<u16>,
    #[arg(long, value_name = "N")]
    port_postgres: Option<u16>,
    #[arg(long, value_name = "N")]
    port_auth: Option<u16>,
    #[arg(long, value_name = "N")]
    port_inspector: Option<u16>,
    #[arg(long, value_name = "N")]
    port_embeddings: Option<u16>,
    #[arg(long, value_name = "N")]
    port_neo4j: Option<u16>,
}

#[derive(clap::Args)]
struct RelayArgs {
    #[arg(long)]
    database_url: String,
    #[arg(long)]
    target: String,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    match run(cli.task) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The stack directory given, else `target/stack` in the checkout.
fn stack_dir(paths: &Paths, dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(|| paths.root.join("target/stack"))
}

fn up_options(paths: &Paths, a: UpArgs) -> Result<UpOptions> {
    let base = if a.free_ports { Ports::free()? } else { Ports::defaults() };
    let ports = Ports {
        functions: a.port_functions.unwrap_or(base.functions),
        postgrest: a.port_postgrest.unwrap_or(base.postgrest),
        postgrest_admin: a.port_postgrest_admin.unwrap_or(base.postgrest_admin),
        postgres: a.port_postgres.unwrap_or(base.postgres),
        auth: a.port_auth.unwrap_or(base.auth),
        inspector: a.port_inspector.unwrap_or(base.inspector),
        embeddings: a.port_embeddings.unwrap_or(base.embeddings),
        neo4j: a.port_neo4j.unwrap_or(base.neo4j),
    };
    Ok(UpOptions { dir: stack_dir(paths, a.dir), ports, fresh: a.fresh, alone: &[] })
}

fn run(task: Task) -> Result<ExitCode> {
    let paths = Paths::discover()?;
    match task {
        Task::Setup => {
            let t = tools::ensure(&paths)?;
            println!("{}", tools::describe(&t)?);
            println!("{}", xtask::browser::describe(&xtask::browser::ensure(&paths)?)?);
        }
        Task::Build { names } => {
            let t = tools::ensure(&paths)?;
            build::build(&paths, &t, &names)?;
            println!("{:<12} {:>10} {:>10}", "worker", "wasm bytes", "gzip -9");
            for w in build::all_workers(&paths) {
                if let Ok(bytes) = fs_err::read(w.wasm()) {
                    println!(
                        "{:<12} {:>10} {:>10}",
                        w.name,
                        bytes.len(),
                        build::gzipped_len(&bytes).map(|n| n.to_string()).unwrap_or("-".into())
                    );
                }
            }
        }
        Task::Stack(StackTask::Up(a)) => {
            let opts = up_options(&paths, a)?;
            let t = tools::ensure(&paths)?;
            build::build(&paths, &t, &[])?;
            let info = stack::up(&paths, &t, &opts)?;
            print_stack(&info)?;
        }
        Task::Stack(StackTask::Down { dir }) => {
            stack::down(&stack_dir(&paths, dir))?;
            step("stack stopped");
        }
        Task::Stack(StackTask::Status { dir }) => println!("{}", stack::status(&stack_dir(&paths, dir))?),
        Task::Dev(a) => {
            let opts = up_options(&paths, a)?;
            return dev(&paths, opts);
        }
        Task::Test { keep, schemathesis_examples, args } => {
            let from_env = std::env::var(schemathesis::EXAMPLES_ENV).ok().filter(|v| !v.trim().is_empty());
            let examples = match (schemathesis_examples, from_env) {
                (Some(n), _) => n,
                (None, Some(v)) => {
                    v.trim().parse::<u32>().context(format!("{} must be a number", schemathesis::EXAMPLES_ENV))?
                }
                // A filtered run is for one test; fuzzing every endpoint is not asked for.
                (None, None) if !args.is_empty() => 0,
                (None, None) => schemathesis::DEFAULT_EXAMPLES,
            };
            return test(&paths, keep, &args, examples);
        }
        Task::Token { dir, sub, es256, ttl, role } => {
            let info = stack::load(&stack_dir(&paths, dir))?;
            let sub = sub.unwrap_or_else(keys::random_uuid);
            let token = match role.as_deref() {
                Some(r) => keys::sign_hs256(&info.jwt_secret, &keys::api_key_claims(r))?,
                None if es256 => keys::sign_es256(&info.es256_key, &keys::user_claims(&sub, &info.jwt_issuer, ttl))?,
                None => keys::sign_hs256(&info.jwt_secret, &keys::user_claims(&sub, &info.jwt_issuer, ttl))?,
            };
            println!("{token}");
        }
        Task::ServeJwks { port, file } => stack::serve_jwks(port, &file)?,
        Task::EmbedRelay(a) => relay(&xtask::relay::EMBED, a)?,
        Task::LiveRelay(a) => relay(&xtask::relay::LIVE, a)?,
        Task::Fuzz { seconds, targets } => return fuzz::run(&paths, seconds, &targets),
        Task::Schemathesis { dir, examples } => {
            let o = schemathesis::run_all(&paths, &stack::load(&stack_dir(&paths, dir))?, examples)?;
            step(format!("schemathesis: {} test cases in {:.0}s", o.cases, o.elapsed.as_secs_f64()));
            return Ok(if o.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        Task::Bench { smoke, keep, report_only, live, fixed_cost } => {
            let opts = bench::Options { smoke, keep, report_only, live_only: live, fixed_cost_only: fixed_cost };
            return bench::run(&paths, opts);
        }
        Task::Deploy { env, dry_run, secrets, config } => {
            let opts = deploy::Options { env, dry_run, secrets, config };
            return Ok(if deploy::run(&paths, opts)? { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        Task::Db(DbTask::Push { db_url }) => {
            let t = tools::ensure_postgres(&paths)?;
            let applied =
                xtask::db::apply_pending(&paths, &t, &db_url, &mut |m| println!("applying {}", m.file_name()))?;
            let version = xtask::db::schema_version(&t, &db_url)?;
            match applied.len() {
                0 => println!("nothing to apply; schema version {version} (current)"),
                1 => println!("1 migration applied; schema version {version}"),
                n => println!("{n} migrations applied; schema version {version}"),
            }
        }
        Task::Db(DbTask::Layout) => {
            let n = xtask::db::write_supabase_layout(&paths)?;
            println!("wrote {n} migrations to supabase/migrations/");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A relay of the stack's (`embed-relay`, `live-relay`): runs until stopped.
fn relay(relay: &xtask::relay::Relay, a: RelayArgs) -> Result<()> {
    let secret =
        std::env::var(relay.secret_env).context(format!("{} must carry the relay's secret", relay.secret_env))?;
    xtask::relay::run(relay, &a.database_url, &a.target, &secret)
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
                .args(["test", "--profile", tools::NATIVE_PROFILE, "-p", "edgesync-embedder"])
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
