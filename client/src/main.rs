//! `edgesync-client`: a device on the command line. Each database file is one device;
//! run two with different `--db` files and watch them converge.

use edgesync_client::{live::LONG_POLL, store::random_uuid, Client, Config, LiveEvent, PullProgress};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const HELP: &str = "\
edgesync-client [--db FILE] [--url URL] [--page-limit N] <command>

  login [--token TOKEN | --token-file FILE]   keep a token (default: $EDGESYNC_TOKEN) and the URL
  put TABLE JSON [--id UUID]     create or replace a row locally and queue it; prints the id
  patch TABLE ID JSON            change some columns of a row
  delete TABLE ID                delete a row
  get TABLE ID                   one row as the app sees it
  list TABLE                     every row of a table
  tables                         the tables this device mirrors
  sync [--watch SECS]            push the outbox, then pull until caught up (again every SECS)
  sync --live                    sync, then again on every change (the /live WebSocket;
                                 long-polling /sync?wait= when no socket can be had)
  status                         state, outbox length, last push and pull (JSON)
  rejected                       mutations the server refused, with the reason
  conflicts                      conflicts the server reported

Local commands never need the network. --db defaults to $EDGESYNC_DB or
edgesync-client.db; --url to $EDGESYNC_URL, the URL saved at login, or
http://127.0.0.1:8787 (`cargo xtask dev`).
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail::Usage(m)) => {
            eprintln!("edgesync-client: {m}\n\n{HELP}");
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

/// Remove `--name VALUE` from `args`.
fn take(args: &mut Vec<String>, name: &str) -> Result<Option<String>, Fail> {
    match args.iter().position(|a| a == name) {
        Some(i) if i + 1 < args.len() => {
            let v = args.remove(i + 1);
            args.remove(i);
            Ok(Some(v))
        }
        Some(_) => Err(Fail::Usage(format!("{name} needs a value"))),
        None => Ok(None),
    }
}

/// Remove the flag `name` from `args`; was it there?
fn take_flag(args: &mut Vec<String>, name: &str) -> bool {
    let before = args.len();
    args.retain(|a| a != name);
    args.len() != before
}

/// The remaining arguments, which must be exactly `n` plain values.
fn positional(command: &str, args: &mut Vec<String>, n: usize) -> Result<Vec<String>, Fail> {
    if args.iter().any(|a| a.starts_with("--")) || args.len() != n {
        return Err(Fail::Usage(format!("{command} takes {n} argument(s), got {args:?}")));
    }
    Ok(std::mem::take(args))
}

fn json_arg(text: &str) -> Result<Value, Fail> {
    serde_json::from_str(text).map_err(|e| Fail::Usage(format!("not JSON ({e}): {text}")))
}

fn print_json(v: &impl serde::Serialize) -> Result<(), Fail> {
    out!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn run(mut args: Vec<String>) -> Result<(), Fail> {
    if args.is_empty() || args.iter().any(|a| a == "--help" || a == "-h" || a == "help") {
        out!("{}", HELP.trim_end());
        return Ok(());
    }
    let db = take(&mut args, "--db")?
        .or_else(|| std::env::var("EDGESYNC_DB").ok())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("edgesync-client.db"));
    let url_flag = take(&mut args, "--url")?.or_else(|| std::env::var("EDGESYNC_URL").ok());
    let store = edgesync_client::Store::open(&db)?;
    let url = url_flag.clone().or(store.meta("url")?).unwrap_or_else(|| "http://127.0.0.1:8787".into());
    let mut cfg = Config::new(&url);
    if let Some(n) = take(&mut args, "--page-limit")?.or_else(|| std::env::var("EDGESYNC_PAGE_LIMIT").ok()) {
        cfg.page_limit = n.parse().map_err(|_| Fail::Usage("--page-limit takes a number of rows".into()))?;
    }
    let mut client = Client::with_store(store, cfg)?;
    let command = args.remove(0);
    match command.as_str() {
        "login" => {
            let token = match (take(&mut args, "--token")?, take(&mut args, "--token-file")?) {
                (Some(t), None) => t,
                (None, Some(f)) => std::fs::read_to_string(&f)?.trim().to_owned(),
                (None, None) => std::env::var("EDGESYNC_TOKEN")
                    .map_err(|_| Fail::Usage("give --token, --token-file or $EDGESYNC_TOKEN".into()))?,
                _ => return Err(Fail::Usage("give one of --token and --token-file".into())),
            };
            positional(&command, &mut args, 0)?;
            client.set_token(token.trim())?;
            client.store().set_meta("url", &url)?;
            let s = client.status()?;
            out!("logged in as {} on {url} (device {})", s.user_id.unwrap_or_default(), s.client_id);
        }
        "put" => {
            let id = take(&mut args, "--id")?.unwrap_or_else(random_uuid);
            let a = positional(&command, &mut args, 2)?;
            let op_id = client.put(&a[0], &id, json_arg(&a[1])?)?;
            out!("{id}");
            eprintln!("queued op {op_id}");
        }
        "patch" => {
            let a = positional(&command, &mut args, 3)?;
            let op_id = client.patch(&a[0], &a[1], json_arg(&a[2])?)?;
            eprintln!("queued op {op_id}");
        }
        "delete" => {
            let a = positional(&command, &mut args, 2)?;
            let op_id = client.delete(&a[0], &a[1])?;
            eprintln!("queued op {op_id}");
        }
        "get" => {
            let a = positional(&command, &mut args, 2)?;
            match client.get(&a[0], &a[1])? {
                Some(row) => print_json(&row)?,
                None => return Err(Fail::Run(format!("no row {} in {}", a[1], a[0]))),
            }
        }
        "list" => {
            let a = positional(&command, &mut args, 1)?;
            for row in client.list(&a[0])? {
                out!("{row}");
            }
        }
        "tables" => {
            positional(&command, &mut args, 0)?;
            for t in client.store().tables()? {
                out!("{t}");
            }
        }
        "sync" => {
            let watch = take(&mut args, "--watch")?
                .map(|s| s.parse::<u64>().map_err(|_| Fail::Usage("--watch takes seconds".into())))
                .transpose()?;
            let live = take_flag(&mut args, "--live");
            positional(&command, &mut args, 0)?;
            if live {
                return sync_live(&mut client);
            }
            loop {
                let outcome = sync_once(&mut client);
                match watch {
                    None => return outcome,
                    Some(secs) => {
                        if let Err(Fail::Run(m) | Fail::Usage(m)) = outcome {
                            eprintln!("sync failed: {m}");
                        }
                        std::thread::sleep(Duration::from_secs(secs).max(client.retry_in()));
                    }
                }
            }
        }
        "status" => {
            positional(&command, &mut args, 0)?;
            print_json(&client.status()?)?;
        }
        "rejected" => {
            positional(&command, &mut args, 0)?;
            for r in client.store().rejections()? {
                out!("op {} {} {}/{}: {} — {}", r.op_id, r.op.as_str(), r.table, r.id, r.code, r.message);
            }
        }
        "conflicts" => {
            positional(&command, &mut args, 0)?;
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
        other => return Err(Fail::Usage(format!("unknown command {other:?}"))),
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
