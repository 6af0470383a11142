//! `cargo xtask deploy [--env NAME] [--dry-run] [--secrets FILE] [--config FILE]`:
//! build, then deploy every function Worker and after them the gateway (its service
//! bindings name them), each with the settings of one environment of `deploy.toml`.
//!
//! - **Settings** come from one place, `deploy.toml`: one `[env.<name>]` table per
//!   environment. Each Worker's wrangler config is generated from its committed
//!   `wrangler.toml` (name, main, compatibility date, service bindings, Cron Triggers,
//!   `[observability]`) plus that table, into `target/deploy/<env>/<worker>.toml`; a
//!   Worker is given only the settings it reads ([`reads`](settings::reads)). The
//!   default environment's Workers keep their committed names; another's are
//!   `<name>-<env>`, and the gateway's bindings name the same environment's Workers.
//! - **Secrets** come from the environment or a dotenv file (`--secrets FILE`); each
//!   Worker gets only the secrets it reads, uploaded with its deployment
//!   (`wrangler deploy --secrets-file`, the same call as the code, so a new version
//!   never runs without its secrets) from a JSON file written with mode 0600 in a
//!   private temporary directory and removed afterwards. A required secret that is
//!   missing is an error before anything is deployed.
//! - **`--dry-run`** runs `wrangler deploy --dry-run --outdir` for every Worker with no
//!   Cloudflare credentials and every HTTP request sent to a closed port, then checks
//!   each bundle against the plan's size limit
//!   ([`Plan::limit`](settings::Plan::limit)) and each generated config
//!   ([`check_configs`](configs::check_configs)), and prints a table. `cargo xtask test`
//!   runs it for every environment of `deploy.toml`; a real deploy runs the same checks
//!   first.
//!
//! Layout: [`settings`] (`deploy.toml` and what each Worker reads), [`configs`] (the
//! generated wrangler configs and their checks), [`validate`] (settings judged by the
//! Workers' own parsers), [`secrets`] (collected, written privately for wrangler),
//! [`dry_run`](mod@dry_run) (bundles, the table); this file holds `cargo xtask deploy`.
use std::collections::BTreeMap;
use std::path::PathBuf;
use xtask::build;
use xtask::tools::Paths;
use xtask::util::{step, Context, Error, Result};

macro_rules! bail {
    ($($arg:tt)*) => { return Err(Error(format!($($arg)*))) };
}

mod configs;
mod dry_run;
mod secrets;
mod settings;
mod validate;

pub use dry_run::dry_run_all;

use dry_run::{dry_run, out_dir, wrangler};
use secrets::{collect_secrets, write_secrets, PrivateDir};
use settings::{all_reads, reads, select_env, SETTINGS_FILE};
use validate::validate_settings;

/// Options of `cargo xtask deploy`.
pub struct Options {
    pub env: Option<String>,
    pub dry_run: bool,
    pub secrets: Option<PathBuf>,
    pub config: Option<PathBuf>,
}

/// `cargo xtask deploy`.
pub fn run(paths: &Paths, opts: Options) -> Result<bool> {
    let file = opts.config.clone().unwrap_or_else(|| paths.root.join(SETTINGS_FILE));
    let text = fs_err::read_to_string(&file).context(format!("could not read {}", file.display()))?;
    let env = select_env(&text, opts.env.as_deref())?;
    let (secrets, unused) = collect_secrets(opts.secrets.as_deref(), |k| std::env::var(k).ok())?;
    if !unused.is_empty() {
        step(format!("ignoring {} in the secrets file: no Worker reads them", unused.join(", ")));
    }
    if !opts.dry_run {
        // Everything that can be known before building.
        let mut problems = Vec::new();
        for (k, v) in &env.vars {
            if v.contains("YOUR-") {
                problems.push(format!("[env.{}] {k} is still the example value {v:?}", env.name));
            }
        }
        for (w, _) in all_reads() {
            problems.extend(validate_settings(w, &env.vars, &secrets, false));
        }
        if !problems.is_empty() {
            bail!(
                "nothing was deployed: {} (settings: {}; secrets: the environment or --secrets FILE)\n  {}",
                env.name,
                file.display(),
                problems.join("\n  ")
            );
        }
    }
    let tools = xtask::tools::ensure(paths)?;
    build::build(paths, &tools, &[])?;
    let checked = dry_run(paths, &tools, &env, &secrets)?;
    checked.print();
    if !checked.ok() {
        if !opts.dry_run {
            eprintln!("xtask: nothing was deployed");
        }
        return Ok(false);
    }
    if opts.dry_run {
        return Ok(true);
    }
    let dir = out_dir(paths, &env);
    let private = PrivateDir::new()?;
    // The functions first: the gateway's service bindings must name deployed Workers.
    for g in &checked.generated {
        let reads = reads(&g.worker).context("listed")?;
        let mine: BTreeMap<String, String> = secrets
            .iter()
            .filter(|(k, _)| reads.secrets.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        step(format!("deploying {} as {} ({} secrets)", g.worker, g.name, mine.len()));
        let mut cmd = wrangler(&tools, &dir);
        cmd.arg("deploy").arg("-c").arg(dir.join(format!("{}.toml", g.worker)));
        let secrets_file = if mine.is_empty() { None } else { Some(write_secrets(&private.0, &g.worker, &mine)?) };
        if let Some(f) = &secrets_file {
            cmd.arg("--secrets-file").arg(f);
        }
        let result = xtask::util::run(&mut cmd);
        if let Some(f) = &secrets_file {
            let _ = fs_err::remove_file(f);
        }
        result.context(format!("deploying {} (the Workers before it are deployed)", g.worker))?;
    }
    drop(private);
    step(format!(
        "deployed env {}: check it with `curl -s https://{}.<your-subdomain>.workers.dev/health` (the URL wrangler printed above)",
        env.name,
        env.worker_name("edgesync-gateway")
    ));
    Ok(true)
}
