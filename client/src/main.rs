//! `edgesync-client`: a device on the command line. Each database file is one device;
//! run two with different `--db` files and watch them converge.

use clap::{Parser, Subcommand};
use edgesync_client::{live::LONG_POLL, store::random_uuid, Client, Config, LiveEvent, PullProgress};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// A device on the command line: a local SQLite store, an outbox and a sync engine.
#[derive(Parser)]
#[command(
    name = "edgesync-client",
    version,
    after_help = "Local commands never need the network. The URL is --url, $EDGESYNC_URL, the one saved at \
                  login, or http://127.0.0.1:8787 (`cargo xtask dev`)."
)]
struct Cli {
    /// The device's local database (one file per device)
    #[arg(long, env = "EDGESYNC_DB", default_value = "edgesync-client.db", global = true)]
    db: PathBuf,
    /// The functions' base URL
    #[arg(long, env = "EDGESYNC_URL", global = true)]
    url: Option<String>,
    /// Rows per /sync page
    #[arg(long, env = "EDGESYNC_PAGE_LIMIT", global = true)]
    page_limit: Option<u32>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Keep a token and the URL for this device
    Login {
        /// The user's access token
        #[arg(long, env = "EDGESYNC_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// A file holding the token (read instead of --token)
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Create or replace a row locally and queue it; prints the id
    Put {
        table: String,
        /// The row's columns, as a JSON object
        json: String,
        /// The row's id (default: a new UUID)
        #[arg(long)]
        id: Option<String>,
    },
    /// Change some columns of a row
    Patch {
        table: String,
        id: String,
        /// The changed columns, as a JSON object
        json: String,
    },
    /// Delete a row
    Delete { table: String, id: String },
    /// One row as the app sees it
    Get { table: String, id: String },
    /// Every row of a table
    List { table: String },
    /// The tables this device mirrors
    Tables,
    /// Push the outbox, then pull until caught up
    Sync {
        /// Sync again every SECS seconds
        #[arg(long, value_name = "SECS", conflicts_with = "live")]
        watch: Option<u64>,
        /// Sync again on every change (the /live WebSocket; long-polling /sync?wait= when no
        /// socket can be had)
        #[arg(long)]
        live: bool,
    },
    /// State, outbox length, last push and pull (JSON)
    Status,
    /// Mutations the server refused, with the reason
    Rejected,
    /// Conflicts the server reported
    Conflicts,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to stdout (quietly, if its reader is gone) and
        // succeed; usage errors go to stderr with exit code 2.
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail::Usage(m)) => {
            eprintln!("edgesync-client: {m}\n\nFor more information, try '--help'.");
            ExitCode::from(2)
        }
        Err(Fail::Run(m)) => {
            eprintln!("edgesync-client: {m}");
            ExitCode::FAILURE
        }
        // The reader went away (`edgesync-client list entries | head`): stop quietly, as
        // command-line tools do.
        Err(Fail::Closed) => ExitCode::SUCCESS,
    }
}

/// `println!` that reports a closed stdout as [`Fail::Closed`] instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(Fail::from_write)?
    }};
}

enum Fail {
    Usage(String),
    Run(String),
    /// stdout was closed by its reader.
    Closed,
}

impl Fail {
    fn from_write(e: std::io::Error) -> Fail {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Fail::Closed
        } else {
            Fail::Run(format!("could not write to stdout: {e}"))
        }
    }
}

impl<E: std::fmt::Display> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail::Run(e.to_string())
    }
}

fn json_arg(text: &str) -> Result<Value, Fail> {
    serde_json::from_str(text).map_err(|e| Fail::Usage(format!("not JSON ({e}): {text}")))
}

fn print_json(v: &impl serde::Serialize) -> Result<(), Fail> {
    out!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn run(cli: Cli) -> Result<(), Fail> {
    let store = edgesync_client::Store::open(&cli.db)?;
    let url = cli.url.clone().or(store.meta("url")?).unwrap_or_else(|| "http://127.0.0.1:8787".into());
    let mut cfg = Config::new(&url);
    if let Some(n) = cli.page_limit {
        cfg.page_limit = n;
    }
    let mut client = Client::with_store(store, cfg)?;
    match cli.command {
        Cmd::Login { token, token_file } => {
            let token = match (token, token_file) {
                (_, Some(f)) => std::fs::read_to_string(&f)
                    .map_err(|e| Fail::Run(format!("could not read {}: {e}", f.display())))?
                    .trim()
                    .to_owned(),
                (Some(t), None) => t,
                (None, None) => return Err(Fail::Usage("give --token, --token-file or $EDGESYNC_TOKEN".into())),
            };
            client.set_token(token.trim())?;
            client.store().set_meta("url", &url)?;
            let s = client.status()?;
            out!("logged in as {} on {url} (device {})", s.user_id.unwrap_or_default(), s.client_id);
        }
        Cmd::Put { table, json, id } => {
            let id = id.unwrap_or_else(random_uuid);
            let op_id = client.put(&table, &id, json_arg(&json)?)?;
            out!("{id}");
            eprintln!("queued op {op_id}");
        }
        Cmd::Patch { table, id, json } => {
            let op_id = client.patch(&table, &id, json_arg(&json)?)?;
            eprintln!("queued op {op_id}");
        }
        Cmd::Delete { table, id } => {
            let op_id = client.delete(&table, &id)?;
            eprintln!("queued op {op_id}");
        }
        Cmd::Get { table, id } => match client.get(&table, &id)? {
            Some(row) => print_json(&row)?,
            None => return Err(Fail::Run(format!("no row {id} in {table}"))),
        },
        Cmd::List { table } => {
            for row in client.list(&table)? {
                out!("{row}");
            }
        }
        Cmd::Tables => {
            for t in client.store().tables()? {
                out!("{t}");
            }
        }
        Cmd::Sync { live: true, .. } => return sync_live(&mut client),
        Cmd::Sync { watch: None, .. } => return sync_once(&mut client),
        Cmd::Sync { watch: Some(secs), .. } => loop {
            if let Err(Fail::Run(m) | Fail::Usage(m)) = sync_once(&mut client) {
                eprintln!("sync failed: {m}");
            }
            std::thread::sleep(Duration::from_secs(secs).max(client.retry_in()));
        },
        Cmd::Status => print_json(&client.status()?)?,
        Cmd::Rejected => {
            for r in client.store().rejections()? {
                out!("op {} {} {}/{}: {} — {}", r.op_id, r.op.as_str(), r.table, r.id, r.code, r.message);
            }
        }
        Cmd::Conflicts => {
            for c in client.store().conflicts()? {
                out!(
                    "op {} {}{}: server row {}",
                    c.op_id,
                    c.status,
                    c.reason.map(|r| format!(" ({r})")).unwrap_or_default(),
                    c.server_row.map(|r| r.to_string()).unwrap_or_else(|| "none".into())
                );
            }
        }
    }
    Ok(())
}

/// One push + pull, with progress on stderr for long pulls.
/// How long a live device goes without pulling, pokes or not (a poke is a hint).
const LIVE_SAFETY_PULL: Duration = Duration::from_secs(60);

/// `sync --live`: sync, then on every poke; long-poll while the socket cannot be had.
fn sync_live(client: &mut Client) -> Result<(), Fail> {
    loop {
        report(sync_once(client));
        match client.open_live() {
            Ok(mut live) => {
                eprintln!("live: connected; syncing on every change");
                let mut last_pull = std::time::Instant::now();
                loop {
                    match live.next(Duration::from_secs(25)) {
                        LiveEvent::Poke(checkpoint) => {
                            if client.status()?.checkpoint < checkpoint {
                                report(sync_once(client));
                                // The poke can come before the watermark has passed its
                                // change: then the next pull waits for it.
                                if client.status()?.checkpoint < checkpoint {
                                    report(pull_waiting(client));
                                }
                                last_pull = std::time::Instant::now();
                            }
                        }
                        LiveEvent::Quiet if last_pull.elapsed() >= LIVE_SAFETY_PULL => {
                            report(sync_once(client));
                            last_pull = std::time::Instant::now();
                        }
                        LiveEvent::Quiet => {}
                        LiveEvent::TokenExpired => {
                            eprintln!("live: the token expired (4001); log in again with a fresh one");
                            break;
                        }
                        LiveEvent::Closed(why) => {
                            eprintln!("live: {why}; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                eprintln!("live: no socket ({e}); long-polling instead");
                report(client.push_outbox().map(|_| ()).map_err(Fail::from));
                report(pull_waiting(client));
                std::thread::sleep(client.retry_in());
            }
        }
    }
}

/// A long-poll, reported like a sync.
fn pull_waiting(client: &mut Client) -> Result<(), Fail> {
    let p = client.pull_waiting(LONG_POLL)?;
    eprintln!("pulled {} rows and {} deletions (waited); checkpoint {}", p.upserted, p.deleted, p.checkpoint);
    Ok(())
}

fn report(outcome: Result<(), Fail>) {
    if let Err(Fail::Run(m) | Fail::Usage(m)) = outcome {
        eprintln!("sync failed: {m}");
    }
}

fn sync_once(client: &mut Client) -> Result<(), Fail> {
    let started = std::time::Instant::now();
    let mut progress = |p: &PullProgress| {
        if p.has_more || p.pages > 1 {
            eprintln!(
                "pulling: page {} · {} rows · {} deletions · checkpoint {}{}",
                p.pages,
                p.upserted,
                p.deleted,
                p.checkpoint,
                if p.has_more { " …" } else { "" }
            );
        }
    };
    let report = client.sync_with(&mut progress)?;
    let s = client.status()?;
    eprintln!(
        "synced in {} ms: pushed {} ({} rejected), pulled {} rows and {} deletions{}; outbox {}, checkpoint {}",
        started.elapsed().as_millis(),
        report.push.acks.len(),
        report.push.rejected.len(),
        report.pull.upserted,
        report.pull.deleted,
        if report.pull.resynced { " (rebuilt from scratch)" } else { "" },
        s.outbox_len,
        s.checkpoint
    );
    for r in &report.push.rejected {
        eprintln!("rejected op {} ({}/{}): {} — {}", r.op_id, r.table, r.id, r.code, r.message);
    }
    Ok(())
}
