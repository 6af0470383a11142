//! `cargo xtask deploy [--env NAME] [--dry-run] [--secrets FILE] [--config FILE]`:
//! build, then deploy every function Worker and after them the gateway (its service
//! bindings name them), each with the settings of one environment of `deploy.toml`.
//!
//! - **Settings** come from one place, `deploy.toml`: one `[env.<name>]` table per
//!   environment. Each Worker's wrangler config is generated from its committed
//!   `wrangler.toml` (name, main, compatibility date, service bindings, Cron Triggers,
//!   `[observability]`) plus that table, into `target/deploy/<env>/<worker>.toml`; a
//!   Worker is given only the settings it reads ([`reads`]). The default environment's
//!   Workers keep their committed names; another's are `<name>-<env>`, and the
//!   gateway's bindings name the same environment's Workers.
//! - **Secrets** come from the environment or a dotenv file (`--secrets FILE`); each
//!   Worker gets only the secrets it reads, uploaded with its deployment
//!   (`wrangler deploy --secrets-file`, the same call as the code, so a new version
//!   never runs without its secrets) from a JSON file written with mode 0600 in a
//!   private temporary directory and removed afterwards. A required secret that is
//!   missing is an error before anything is deployed.
//! - **`--dry-run`** runs `wrangler deploy --dry-run --outdir` for every Worker with no
//!   Cloudflare credentials and every HTTP request sent to a closed port, then checks
//!   each bundle against the plan's size limit ([`Plan::limit`]) and each generated
//!   config ([`check_configs`]), and prints a table. `cargo xtask test` runs it for
//!   every environment of `deploy.toml`; a real deploy runs the same checks first.

use edgesync_shared as shared;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use xtask::build;
use xtask::stack::CRON_WORKERS;
use xtask::tools::{Paths, Tools};
use xtask::util::{step, Context, Error, Result};

macro_rules! bail {
    ($($arg:tt)*) => { return Err(Error(format!($($arg)*))) };
}

/// The settings file, at the workspace root.
pub const SETTINGS_FILE: &str = "deploy.toml";

/// Cloudflare's size limits for one Worker after compression: 3 MB on the Free plan
/// (the budget unless an environment says `plan = "paid"`), 10 MB on paid plans.
/// Growth far below these is caught earlier, by the build's per-Worker
/// `GZIP_BUDGETS` (xtask/src/build.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Free,
    Paid,
}

impl Plan {
    pub fn limit(self) -> u64 {
        match self {
            Plan::Free => build::CLOUDFLARE_FREE_LIMIT_BYTES,
            Plan::Paid => 10_000_000,
        }
    }
}

/// The settings a Worker reads: vars (in its generated `[vars]`) and secrets.
#[derive(Debug, Clone, PartialEq)]
pub struct Reads {
    pub vars: Vec<&'static str>,
    pub secrets: Vec<&'static str>,
    /// Secrets it cannot work without (others are optional, or decided by the
    /// Worker's own config parser in [`validate_settings`]).
    pub required: Vec<&'static str>,
}

const CORS_VARS: &[&str] = &["ALLOWED_ORIGINS"];
/// `shared::config::Config`.
const SUPABASE_VARS: &[&str] = &[
    "SUPABASE_URL",
    "POSTGREST_URL",
    "SUPABASE_JWKS_URL",
    "SUPABASE_JWT_ISSUER",
    "JWT_LEEWAY_SECS",
    "UPSTREAM_TIMEOUT_MS",
];
const SUPABASE_SECRETS: &[&str] = &["SUPABASE_JWT_SECRET", "SUPABASE_ANON_KEY"];
const SERVICE_ROLE: &str = "SUPABASE_SERVICE_ROLE_KEY";
/// `shared::embed::EmbeddingsConfig` and the embed_entry function.
const EMBED_VARS: &[&str] = &[
    "EMBEDDINGS_BASE_URL",
    "EMBEDDINGS_MODEL",
    "EMBEDDINGS_DIMENSIONS",
    "EMBEDDINGS_TIMEOUT_MS",
    "EMBEDDINGS_MAX_TOKENS",
    "EMBED_MAX_ATTEMPTS",
    "EMBED_CRON_ROUNDS",
];
const EMBED_SECRETS: &[&str] = &["OPENAI_API_KEY", "EMBED_WEBHOOK_SECRET"];
/// `shared::populate::{PopulateConfig, neo4j::Neo4jConfig, mapping::Mapping}`.
const POPULATE_VARS: &[&str] = &[
    "NEO4J_URL",
    "NEO4J_DATABASE",
    "NEO4J_MAPPING",
    "NEO4J_TIMEOUT_MS",
    "POPULATE_PAGE_SIZE",
    "POPULATE_MAX_SUBREQUESTS",
    "POPULATE_TIME_BUDGET_MS",
    "POPULATE_STALE_AFTER_SECS",
    "POPULATE_CRON_USERS",
];
/// `shared::health::Thresholds` (`THRESHOLD_SETTINGS`).
const HEALTH_VARS: &[&str] = &[
    "HEALTH_MAX_WATERMARK_LAG_SECS",
    "HEALTH_EMBEDDING_OVERDUE_SECS",
    "HEALTH_MAX_OVERDUE_EMBEDDINGS",
    "HEALTH_MAX_FAILED_EMBEDDINGS",
    "HEALTH_MAX_POPULATE_ERRORS",
];
const POPULATE_SECRETS: &[&str] = &["NEO4J_USER", "NEO4J_PASSWORD", "NEO4J_TOKEN"];

/// What each Worker reads (README "Configuration" documents every setting; a unit test
/// keeps the two equal). A new setting goes here too, or the deploy never sets it.
pub fn reads(worker: &str) -> Option<Reads> {
    let cat = |lists: &[&[&'static str]]| lists.iter().flat_map(|l| l.iter().copied()).collect::<Vec<_>>();
    Some(match worker {
        "gateway" => Reads { vars: cat(&[CORS_VARS]), secrets: vec![], required: vec![] },
        // Only PostgREST's URL: /health reports on it even when the auth settings are broken.
        "health" => Reads {
            vars: cat(&[&["SUPABASE_URL", "POSTGREST_URL"], CORS_VARS, HEALTH_VARS]),
            secrets: vec!["SUPABASE_ANON_KEY"],
            required: vec!["SUPABASE_ANON_KEY"],
        },
        "upload" => Reads {
            vars: cat(&[SUPABASE_VARS, CORS_VARS]),
            secrets: cat(&[SUPABASE_SECRETS]),
            required: vec!["SUPABASE_ANON_KEY"],
        },
        // Without the poke secret, /live/poke answers 503 and live updates fall back to
        // the long-poll's once-a-second pulls; /sync itself works.
        "sync" => Reads {
            vars: cat(&[SUPABASE_VARS, CORS_VARS, &["PS_STREAM_MAX_SUBREQUESTS"]]),
            secrets: cat(&[SUPABASE_SECRETS, &["LIVE_POKE_SECRET"]]),
            required: vec!["SUPABASE_ANON_KEY"],
        },
        "populate" => Reads {
            vars: cat(&[SUPABASE_VARS, CORS_VARS, POPULATE_VARS]),
            secrets: cat(&[SUPABASE_SECRETS, &[SERVICE_ROLE], POPULATE_SECRETS]),
            // The Cron Trigger and service-role calls run as the service role.
            required: vec!["SUPABASE_ANON_KEY", SERVICE_ROLE],
        },
        "embed_entry" => Reads {
            vars: cat(&[SUPABASE_VARS, CORS_VARS, EMBED_VARS]),
            secrets: cat(&[SUPABASE_SECRETS, &[SERVICE_ROLE], EMBED_SECRETS]),
            // Without the webhook secret every database webhook is refused.
            required: vec!["SUPABASE_ANON_KEY", SERVICE_ROLE, "EMBED_WEBHOOK_SECRET"],
        },
        _ => return None,
    })
}

/// Every Worker's reads, in deploy order (the functions, then the gateway).
fn all_reads() -> Vec<(&'static str, Reads)> {
    build::FUNCTIONS.iter().chain(["gateway"].iter()).map(|w| (*w, reads(w).expect("every Worker is listed"))).collect()
}

fn is_secret(name: &str) -> bool {
    all_reads().iter().any(|(_, r)| r.secrets.contains(&name))
}

fn is_var(name: &str) -> bool {
    all_reads().iter().any(|(_, r)| r.vars.contains(&name))
}

/// One environment of `deploy.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct Env {
    pub name: String,
    /// The default environment's Workers keep their committed names.
    pub default: bool,
    pub account_id: Option<String>,
    pub plan: Plan,
    /// The Workers' settings (vars only; secrets never live in the file).
    pub vars: BTreeMap<String, String>,
}

impl Env {
    /// The deployed name of a Worker whose committed name is `base`.
    pub fn worker_name(&self, base: &str) -> String {
        if self.default {
            base.to_owned()
        } else {
            format!("{base}-{}", self.name)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    default_env: String,
    env: BTreeMap<String, toml::Table>,
}

/// Every environment of a settings file's text, checked: names usable in Worker
/// names, only settings some Worker reads, no secrets.
pub fn parse_settings(text: &str) -> Result<(String, Vec<Env>)> {
    let file: SettingsFile = toml::from_str(text).context(format!("{SETTINGS_FILE} is not valid"))?;
    if !file.env.contains_key(&file.default_env) {
        bail!("{SETTINGS_FILE}: default_env = {:?} has no [env.{}] table", file.default_env, file.default_env);
    }
    let mut envs = Vec::new();
    let mut problems = Vec::new();
    for (name, table) in &file.env {
        if name.is_empty()
            || name.len() > 20
            || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            problems.push(format!("[env.{name}]: an environment's name is 1-20 of a-z, 0-9 and -"));
        }
        let mut env = Env {
            name: name.clone(),
            default: *name == file.default_env,
            account_id: None,
            plan: Plan::Free,
            vars: BTreeMap::new(),
        };
        for (key, value) in table {
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    problems
                        .push(format!("[env.{name}] {key}: must be a string or a number, not {}", other.type_str()));
                    continue;
                }
            };
            match key.as_str() {
                "account_id" => env.account_id = Some(text),
                "plan" => match text.as_str() {
                    "free" => env.plan = Plan::Free,
                    "paid" => env.plan = Plan::Paid,
                    _ => problems.push(format!("[env.{name}] plan: \"free\" or \"paid\", not {text:?}")),
                },
                k if is_var(k) => {
                    env.vars.insert(k.to_owned(), text);
                }
                k if is_secret(k) => problems.push(format!(
                    "[env.{name}] {k} is a secret: set it in the environment or the --secrets file, never in {SETTINGS_FILE}"
                )),
                k => problems.push(format!(
                    "[env.{name}] {k}: no Worker reads this setting (README \"Configuration\" lists them)"
                )),
            }
        }
        envs.push(env);
    }
    if !problems.is_empty() {
        bail!("{SETTINGS_FILE}:\n  {}", problems.join("\n  "));
    }
    Ok((file.default_env, envs))
}

/// The environment called `name` (the default one when None).
pub fn select_env(text: &str, name: Option<&str>) -> Result<Env> {
    let (default, envs) = parse_settings(text)?;
    let wanted = name.unwrap_or(&default);
    let known: Vec<&str> = envs.iter().map(|e| e.name.as_str()).collect();
    let known = known.join(", ");
    envs.into_iter()
        .find(|e| e.name == wanted)
        .context(format!("{SETTINGS_FILE} has no [env.{wanted}] (it has: {known})"))
}

/// A Worker's committed wrangler config.
#[derive(Debug, Clone)]
pub struct Committed {
    pub worker: String,
    pub path: PathBuf,
    pub table: toml::Table,
}

/// The committed configs, in deploy order: the functions, then the gateway.
pub fn read_committed(paths: &Paths) -> Result<Vec<Committed>> {
    build::all_workers(paths)
        .into_iter()
        .map(|w| {
            let path = if w.name == "gateway" { paths.root.join("wrangler.toml") } else { w.dir.join("wrangler.toml") };
            let text = fs_err::read_to_string(&path).context(format!("could not read {}", path.display()))?;
            let table = toml::from_str(&text).context(format!("{} is not valid TOML", path.display()))?;
            Ok(Committed { worker: w.name, path, table })
        })
        .collect()
}

/// One Worker's generated config.
#[derive(Debug, Clone)]
pub struct Generated {
    pub worker: String,
    /// Its deployed name.
    pub name: String,
    pub table: toml::Table,
}

fn str_field<'a>(table: &'a toml::Table, key: &str) -> Option<&'a str> {
    table.get(key).and_then(|v| v.as_str())
}

/// Each Worker's wrangler config for `env`, from the committed ones.
pub fn generate(committed: &[Committed], env: &Env) -> Result<Vec<Generated>> {
    let mut names = BTreeMap::new();
    for c in committed {
        let base = str_field(&c.table, "name").context(format!("{} has no name", c.path.display()))?;
        names.insert(base.to_owned(), env.worker_name(base));
    }
    let mut out = Vec::new();
    for c in committed {
        let reads =
            reads(&c.worker).context(format!("{}: xtask/src/deploy.rs does not list what it reads", c.worker))?;
        let mut table = c.table.clone();
        let name = names[str_field(&c.table, "name").unwrap_or_default()].clone();
        table.insert("name".into(), name.clone().into());
        let main = str_field(&c.table, "main").context(format!("{} has no main", c.path.display()))?;
        let main = c.path.parent().context("a config file has a directory")?.join(main);
        table.insert("main".into(), main.display().to_string().into());
        // The Workers are built by `cargo xtask build`, never by wrangler.
        table.remove("build");
        let vars: toml::Table = env
            .vars
            .iter()
            .filter(|(k, _)| reads.vars.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), toml::Value::String(v.clone())))
            .collect();
        if vars.is_empty() {
            table.remove("vars");
        } else {
            table.insert("vars".into(), vars.into());
        }
        if let Some(toml::Value::Array(services)) = table.get_mut("services") {
            for s in services.iter_mut() {
                let service = s.get("service").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
                let target = names.get(&service).context(format!(
                    "{}: the binding to {service:?} names no Worker of this repository",
                    c.path.display()
                ))?;
                if let Some(t) = s.as_table_mut() {
                    t.insert("service".into(), target.clone().into());
                }
            }
        }
        // One public URL, the gateway's; the functions are reached through its service
        // bindings (and their Cron Triggers), not on workers.dev of their own.
        table.insert("workers_dev".into(), (c.worker == "gateway").into());
        match &env.account_id {
            Some(id) => table.insert("account_id".into(), id.clone().into()),
            None => table.remove("account_id"),
        };
        out.push(Generated { worker: c.worker.clone(), name, table });
    }
    Ok(out)
}

fn crons(table: &toml::Table) -> Option<Vec<String>> {
    let list = table.get("triggers")?.get("crons")?.as_array()?;
    list.iter().map(|c| c.as_str().map(str::to_owned)).collect()
}

/// What is wrong with the generated configs of `env` (empty when nothing is):
/// names, observability, Cron Triggers, service bindings and vars.
pub fn check_configs(committed: &[Committed], generated: &[Generated], env: &Env) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    let functions: BTreeSet<String> =
        generated.iter().filter(|g| g.worker != "gateway").map(|g| g.name.clone()).collect();
    for worker in committed.iter().map(|c| &c.worker) {
        if !generated.iter().any(|g| &g.worker == worker) {
            problems.push(format!("{worker}: no config generated"));
        }
    }
    for g in generated {
        let w = &g.worker;
        let Some(c) = committed.iter().find(|c| &c.worker == w) else {
            problems.push(format!("{w}: not a Worker of this repository"));
            continue;
        };
        let expected = env.worker_name(str_field(&c.table, "name").unwrap_or_default());
        if str_field(&g.table, "name") != Some(expected.as_str()) || g.name != expected {
            problems.push(format!("{w}: named {:?}, not {expected:?}", str_field(&g.table, "name")));
        }
        if !seen.insert(g.name.clone()) {
            problems.push(format!("{w}: the name {:?} is used twice", g.name));
        }
        if g.name.len() > 63 || !g.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            problems.push(format!("{w}: {:?} is not a Worker name (up to 63 of a-z, 0-9 and -)", g.name));
        }
        if g.table.get("observability").and_then(|o| o.get("enabled")).and_then(|e| e.as_bool()) != Some(true) {
            problems.push(format!("{w}: [observability] enabled = true is missing (Workers Logs)"));
        }
        match (CRON_WORKERS.contains(&w.as_str()), crons(&g.table)) {
            (true, Some(list)) if !list.is_empty() && Some(&list) == crons(&c.table).as_ref() => {}
            (true, got) => problems.push(format!(
                "{w}: its Cron Trigger [triggers] crons is {got:?}, not the committed {:?}",
                crons(&c.table)
            )),
            (false, Some(list)) if !list.is_empty() => problems.push(format!("{w}: has Cron Triggers {list:?}")),
            (false, _) => {}
        }
        let bound: BTreeSet<String> = service_field(&g.table, "service").collect();
        if w == "gateway" {
            if bound != functions {
                problems.push(format!("gateway: binds {bound:?}, not this environment's functions {functions:?}"));
            }
        } else if !bound.is_empty() {
            problems.push(format!("{w}: binds {bound:?}"));
        }
        let Some(reads) = reads(w) else {
            problems.push(format!("{w}: xtask/src/deploy.rs does not list what it reads"));
            continue;
        };
        let vars = g.table.get("vars").and_then(|v| v.as_table()).cloned().unwrap_or_default();
        for (k, v) in &env.vars {
            let wanted = reads.vars.contains(&k.as_str());
            match vars.get(k).and_then(|x| x.as_str()) {
                Some(got) if wanted && got == v => {}
                Some(_) if !wanted => problems.push(format!("{w}: has {k}, which it does not read")),
                got if wanted => problems.push(format!("{w}: {k} is {got:?}, not {v:?}")),
                _ => {}
            }
        }
        for k in vars.keys() {
            if !env.vars.contains_key(k) {
                problems.push(format!("{w}: [vars] {k} is not in [env.{}]", env.name));
            }
            if is_secret(k) {
                problems.push(format!("{w}: the secret {k} is in [vars]"));
            }
        }
    }
    problems
}

/// Secrets for the deploy: every secret some Worker reads, from the environment, else
/// from the dotenv file. Returns them and the file's keys that no Worker reads.
pub fn collect_secrets(
    file: Option<&Path>,
    from_env: impl Fn(&str) -> Option<String>,
) -> Result<(BTreeMap<String, String>, Vec<String>)> {
    let mut from_file = BTreeMap::new();
    if let Some(path) = file {
        for item in dotenvy::from_path_iter(path).context(format!("could not read {}", path.display()))? {
            let (k, v) = item.context(format!("{} is not a dotenv file", path.display()))?;
            from_file.insert(k, v);
        }
    }
    let names: BTreeSet<&str> = all_reads().into_iter().flat_map(|(_, r)| r.secrets).collect();
    let mut out = BTreeMap::new();
    for name in &names {
        if let Some(v) = from_env(name).or_else(|| from_file.get(*name).cloned()).filter(|v| !v.trim().is_empty()) {
            out.insert((*name).to_owned(), v);
        }
    }
    let unused = from_file.keys().filter(|k| !names.contains(k.as_str())).cloned().collect();
    Ok((out, unused))
}

/// A stand-in for a secret that was not given, so a dry run still checks every var
/// with the Worker's own parser (long enough for a JWT secret).
const PLACEHOLDER_SECRET: &str = "dry-run-placeholder-secret-0123456789abcdef";

/// Check one Worker's settings with the same parsers the Worker runs (shared::config,
/// shared::embed, shared::populate), plus its required secrets. With `placeholders`
/// (a dry run), a secret that was not given is stood in for, so only vars are judged.
pub fn validate_settings(
    worker: &str,
    vars: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
    placeholders: bool,
) -> Vec<String> {
    let Some(reads) = reads(worker) else { return vec![format!("{worker}: not listed in xtask/src/deploy.rs")] };
    let mut problems = Vec::new();
    if !placeholders {
        for s in &reads.required {
            // A bare PostgREST (POSTGREST_URL without Supabase's gateway) needs no anon key.
            let bare =
                *s == "SUPABASE_ANON_KEY" && vars.contains_key("POSTGREST_URL") && !vars.contains_key("SUPABASE_URL");
            if !secrets.contains_key(*s) && !bare {
                problems.push(format!("{worker}: the secret {s} is not set"));
            }
        }
    }
    let given = |name: &str| -> Option<String> {
        if reads.vars.contains(&name) {
            return vars.get(name).cloned();
        }
        if !reads.secrets.contains(&name) {
            return None;
        }
        let real = secrets.get(name).cloned();
        let neo4j_token = secrets.contains_key("NEO4J_TOKEN");
        match (real, placeholders, name) {
            (Some(v), _, _) => Some(v),
            (None, false, _) => None,
            // Either a token or a user and password: stand in for the pair.
            (None, true, "NEO4J_TOKEN") => None,
            (None, true, "NEO4J_USER" | "NEO4J_PASSWORD") if neo4j_token => None,
            (None, true, _) => Some(PLACEHOLDER_SECRET.to_owned()),
        }
    };
    let mut check = |r: std::result::Result<(), shared::config::ConfigError>| {
        if let Err(e) = r {
            problems.push(format!("{worker}: {e}"));
        }
    };
    use shared::config::{postgrest_url_from_lookup, Config};
    match worker {
        "gateway" => {}
        "health" => check(postgrest_url_from_lookup(given).map(drop)),
        _ => check(Config::from_lookup(given).map(drop)),
    }
    if worker == "embed_entry" {
        check(shared::embed::EmbeddingsConfig::from_lookup(given).map(drop));
        for name in ["EMBED_MAX_ATTEMPTS", "EMBED_CRON_ROUNDS"] {
            // As functions/embed_entry reads them.
            if let Some(v) = given(name) {
                if !v.trim().parse::<u32>().is_ok_and(|n| (1..=100).contains(&n)) {
                    problems.push(format!("{worker}: setting {name}: must be a whole number from 1 to 100"));
                }
            }
        }
    }
    let mut check = |r: std::result::Result<(), shared::config::ConfigError>| {
        if let Err(e) = r {
            problems.push(format!("{worker}: {e}"));
        }
    };
    if worker == "populate" {
        check(shared::populate::PopulateConfig::from_lookup(given).map(drop));
        check(shared::populate::neo4j::Neo4jConfig::from_lookup(given).map(drop));
        check(shared::populate::mapping::Mapping::from_setting(given("NEO4J_MAPPING")).map(drop));
    }
    problems
}

/// A bundle written by `wrangler deploy --dry-run --outdir`: what would be uploaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    pub raw: u64,
    pub gzip: u64,
    /// The gzip size wrangler itself printed ("Total Upload: … / gzip: … KiB").
    pub wrangler_gzip_kib: Option<f64>,
}

/// Whether a bundle is within the plan's limit.
pub fn check_bundle(worker: &str, bundle: &Bundle, plan: Plan) -> Option<String> {
    (bundle.gzip > plan.limit() || bundle.raw == 0).then(|| {
        format!(
            "{worker}: the bundle is {} bytes gzipped ({} raw), over the {plan:?} plan's {} bytes",
            bundle.gzip,
            bundle.raw,
            plan.limit()
        )
    })
}

/// The bindings wrangler says the Worker has (`env.NAME (…)` lines of its dry run).
fn wrangler_bindings(output: &str) -> BTreeSet<String> {
    output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("env."))
        .filter_map(|l| l.split([' ', '(']).next())
        .map(str::to_owned)
        .collect()
}

fn wrangler_gzip_kib(output: &str) -> Option<f64> {
    let rest = output.lines().find_map(|l| l.split("Total Upload:").nth(1))?;
    rest.split("gzip:").nth(1)?.trim().trim_end_matches("KiB").trim().parse().ok()
}

/// The files of a bundle that are uploaded (not wrangler's README or source maps).
fn bundle_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs_err::read_dir(dir).context(format!("could not read {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if path.is_dir() {
            bundle_files(&path, out)?;
        } else if name != "README.md" && !name.ends_with(".map") {
            out.push(path);
        }
    }
    Ok(())
}

fn measure(dir: &Path, output: &str) -> Result<Bundle> {
    let mut files = Vec::new();
    bundle_files(dir, &mut files)?;
    let (mut raw, mut gzip) = (0, 0);
    for f in files {
        let bytes = fs_err::read(&f)?;
        raw += bytes.len() as u64;
        gzip += build::gzipped_len(&bytes).context("gzip is needed to measure the bundles")? as u64;
    }
    Ok(Bundle { raw, gzip, wrangler_gzip_kib: wrangler_gzip_kib(output) })
}

/// wrangler from the tool cache, quiet and without telemetry.
fn wrangler(tools: &Tools, cwd: &Path) -> Command {
    let mut cmd = Command::new(&tools.node);
    cmd.arg(&tools.wrangler_js)
        .current_dir(cwd)
        .env("WRANGLER_SEND_METRICS", "false")
        .env("NO_COLOR", "1")
        .env("FORCE_COLOR", "0")
        .env("CI", "true");
    cmd
}

/// Where an environment's generated configs and bundles go.
pub fn out_dir(paths: &Paths, env: &Env) -> PathBuf {
    paths.target().join("deploy").join(&env.name)
}

/// One Worker's line of the dry run's table.
#[derive(Debug)]
pub struct Row {
    pub worker: String,
    pub name: String,
    pub bundle: Bundle,
    pub vars: usize,
    pub secrets: String,
    pub crons: String,
}

/// What a dry run found.
pub struct DryRun {
    pub env: Env,
    pub generated: Vec<Generated>,
    pub rows: Vec<Row>,
    pub problems: Vec<String>,
}

/// Generate the configs of `env`, bundle every Worker with `wrangler deploy --dry-run`
/// (no credentials, no network) and check bundles and configs. The Workers must be
/// built. `secrets` are only counted and checked with the Workers' parsers; missing
/// ones are stood in for.
pub fn dry_run(paths: &Paths, tools: &Tools, env: &Env, secrets: &BTreeMap<String, String>) -> Result<DryRun> {
    let committed = read_committed(paths)?;
    let generated = generate(&committed, env)?;
    let mut problems = check_configs(&committed, &generated, env);
    let dir = out_dir(paths, env);
    if dir.exists() {
        fs_err::remove_dir_all(&dir).context(format!("could not empty {}", dir.display()))?;
    }
    // An empty wrangler home: no `wrangler login` token is found.
    let home = dir.join("wrangler-home");
    fs_err::create_dir_all(&home)?;
    let mut rows = Vec::new();
    for g in &generated {
        problems.extend(validate_settings(&g.worker, &env.vars, secrets, true));
        let config = dir.join(format!("{}.toml", g.worker));
        fs_err::write(&config, toml::to_string(&g.table).context("could not write TOML")?)?;
        let outdir = dir.join("bundles").join(&g.worker);
        let mut cmd = wrangler(tools, &dir);
        cmd.args(["deploy", "--dry-run", "--outdir"]).arg(&outdir).arg("-c").arg(&config);
        for k in [
            "CLOUDFLARE_API_TOKEN",
            "CLOUDFLARE_API_KEY",
            "CLOUDFLARE_EMAIL",
            "CLOUDFLARE_ACCOUNT_ID",
            "NO_PROXY",
            "no_proxy",
        ] {
            cmd.env_remove(k);
        }
        // Anything wrangler would fetch goes to a closed port and fails the run.
        for k in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
            cmd.env(k, "http://127.0.0.1:9");
        }
        cmd.env("XDG_CONFIG_HOME", &home).env("WRANGLER_LOG_PATH", dir.join("logs"));
        let out = cmd.stdin(std::process::Stdio::null()).output().context("could not start wrangler")?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        fs_err::write(dir.join(format!("{}.dry-run.log", g.worker)), &text)?;
        if !out.status.success() {
            problems.push(format!("{}: wrangler deploy --dry-run failed ({}):\n{}", g.worker, out.status, text.trim()));
            continue;
        }
        // wrangler must have read the bindings as generated.
        let seen = wrangler_bindings(&text);
        let vars =
            g.table.get("vars").and_then(|v| v.as_table()).map(|v| v.keys().cloned().collect()).unwrap_or_default();
        let services: Vec<String> = service_field(&g.table, "binding").collect();
        // Durable Object namespaces (the sync Worker's LIVE) are bindings too.
        let objects: Vec<String> = g
            .table
            .get("durable_objects")
            .and_then(|d| d.get("bindings"))
            .and_then(|b| b.as_array())
            .into_iter()
            .flatten()
            .filter_map(|b| b.get("name").and_then(|n| n.as_str()).map(str::to_owned))
            .collect();
        let expected: BTreeSet<String> = services.iter().cloned().chain(objects).chain::<Vec<String>>(vars).collect();
        if seen != expected {
            problems.push(format!("{}: wrangler shows the bindings {seen:?}, not {expected:?}", g.worker));
        }
        let bundle = measure(&outdir, &text)?;
        problems.extend(check_bundle(&g.worker, &bundle, env.plan));
        let reads = reads(&g.worker).unwrap_or(Reads { vars: vec![], secrets: vec![], required: vec![] });
        let given = reads.secrets.iter().filter(|s| secrets.contains_key(**s)).count();
        rows.push(Row {
            worker: g.worker.clone(),
            name: g.name.clone(),
            vars: g.table.get("vars").and_then(|v| v.as_table()).map_or(0, |v| v.len()),
            secrets: format!("{given}/{}", reads.secrets.len()),
            crons: crons(&g.table).map(|c| c.join(" ")).unwrap_or_else(|| "-".into()),
            bundle,
        });
    }
    Ok(DryRun { env: env.clone(), generated, rows, problems })
}

impl DryRun {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The table, then every problem.
    pub fn print(&self) {
        let limit = self.env.plan.limit();
        println!(
            "deploy dry run, env {} ({:?} plan: {} bytes gzipped per Worker), configs in target/deploy/{}/",
            self.env.name, self.env.plan, limit, self.env.name
        );
        println!(
            "{:<12} {:<30} {:>10} {:>10} {:>8} {:>5} {:>7}  crons",
            "worker", "name", "raw bytes", "gzip -9", "of limit", "vars", "secrets"
        );
        for r in &self.rows {
            println!(
                "{:<12} {:<30} {:>10} {:>10} {:>7.1}% {:>5} {:>7}  {}",
                r.worker,
                r.name,
                r.bundle.raw,
                r.bundle.gzip,
                r.bundle.gzip as f64 * 100.0 / limit as f64,
                r.vars,
                r.secrets,
                r.crons
            );
        }
        if self.ok() {
            println!("deploy dry run of {}: every bundle and config checked, no problems", self.env.name);
        } else {
            println!("deploy dry run of {}: {} problem(s):", self.env.name, self.problems.len());
            for p in &self.problems {
                println!("  - {p}");
            }
        }
    }
}

/// Every environment of the committed settings file, dry-run (for `cargo xtask test`).
/// Returns whether all passed.
pub fn dry_run_all(paths: &Paths, tools: &Tools) -> Result<bool> {
    let text =
        fs_err::read_to_string(paths.root.join(SETTINGS_FILE)).context(format!("could not read {SETTINGS_FILE}"))?;
    let (_, envs) = parse_settings(&text)?;
    let mut ok = true;
    for env in &envs {
        let run = dry_run(paths, tools, env, &BTreeMap::new())?;
        run.print();
        ok &= run.ok();
    }
    Ok(ok)
}

/// Options of `cargo xtask deploy`.
pub struct Options {
    pub env: Option<String>,
    pub dry_run: bool,
    pub secrets: Option<PathBuf>,
    pub config: Option<PathBuf>,
}

/// A directory only this user can read, removed (with what is in it) when dropped.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new() -> Result<PrivateDir> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("edgesync-deploy-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()?;
        // Kept past the TempDir; removed by this guard's Drop.
        Ok(PrivateDir(dir.keep()))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = fs_err::remove_dir_all(&self.0);
    }
}

/// Write `secrets` as JSON readable only by this user.
fn write_secrets(dir: &Path, worker: &str, secrets: &BTreeMap<String, String>) -> Result<PathBuf> {
    use fs_err::os::unix::fs::OpenOptionsExt;
    use std::io::Write;
    let path = dir.join(format!("{worker}.json"));
    let mut f = fs_err::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    f.write_all(&serde_json::to_vec(secrets)?)?;
    Ok(path)
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

/// One field (`binding` or `service`) of each entry of a config's `services` array.
fn service_field<'a>(table: &'a toml::Table, field: &'a str) -> impl Iterator<Item = String> + 'a {
    table
        .get("services")
        .and_then(|s| s.as_array())
        .into_iter()
        .flatten()
        .filter_map(move |s| s.get(field).and_then(|v| v.as_str()).map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed() -> Vec<Committed> {
        read_committed(&Paths::discover().unwrap()).unwrap()
    }

    fn envs() -> (String, Vec<Env>) {
        let paths = Paths::discover().unwrap();
        parse_settings(&fs_err::read_to_string(paths.root.join(SETTINGS_FILE)).unwrap()).unwrap()
    }

    fn env(name: &str, default: bool) -> Env {
        Env {
            name: name.into(),
            default,
            account_id: None,
            plan: Plan::Free,
            vars: [
                ("SUPABASE_URL", "https://abc.supabase.co"),
                ("ALLOWED_ORIGINS", "https://app.example.com"),
                ("EMBEDDINGS_MODEL", "text-embedding-3-small"),
                ("NEO4J_URL", "https://x.databases.neo4j.io"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        }
    }

    #[test]
    fn every_worker_is_listed_and_the_committed_configs_have_what_a_deploy_needs() {
        let c = committed();
        assert_eq!(c.len(), build::all_workers(&Paths::discover().unwrap()).len());
        for c in &c {
            assert!(reads(&c.worker).is_some(), "{}", c.worker);
            // The settings live in deploy.toml, not repeated per Worker.
            assert!(c.table.get("vars").is_none(), "{} still has [vars]", c.path.display());
            assert_eq!(
                c.table.get("observability").and_then(|o| o.get("enabled")).and_then(|v| v.as_bool()),
                Some(true),
                "{}",
                c.path.display()
            );
            assert_eq!(crons(&c.table).is_some_and(|l| !l.is_empty()), CRON_WORKERS.contains(&c.worker.as_str()));
        }
    }

    #[test]
    fn the_committed_settings_file_generates_configs_without_problems() {
        let (default, envs) = envs();
        assert!(envs.iter().any(|e| e.name == default && e.default));
        assert!(envs.len() >= 2, "an example of a second environment");
        for e in &envs {
            let c = committed();
            let g = generate(&c, e).unwrap();
            assert_eq!(check_configs(&c, &g, e), Vec::<String>::new(), "{}", e.name);
            for w in &g {
                assert_eq!(validate_settings(&w.worker, &e.vars, &BTreeMap::new(), true), Vec::<String>::new());
            }
        }
    }

    #[test]
    fn names_bindings_vars_and_crons_per_environment() {
        let c = committed();
        let g = generate(&c, &env("staging", false)).unwrap();
        let order: Vec<&str> = g.iter().map(|g| g.worker.as_str()).collect();
        assert_eq!(order.last(), Some(&"gateway"), "the gateway is deployed last");
        let by = |w: &str| g.iter().find(|g| g.worker == w).unwrap();
        assert_eq!(by("sync").name, "edgesync-sync-staging");
        assert_eq!(by("embed_entry").name, "edgesync-embed-entry-staging");
        let gw = &by("gateway").table;
        let services = gw["services"].as_array().unwrap();
        assert_eq!(services.len(), 5);
        for s in services {
            assert!(s["service"].as_str().unwrap().ends_with("-staging"), "{s}");
        }
        assert_eq!(gw["workers_dev"].as_bool(), Some(true));
        assert_eq!(by("sync").table["workers_dev"].as_bool(), Some(false));
        // Each Worker gets the settings it reads, and only those.
        assert_eq!(by("populate").table["vars"]["NEO4J_URL"].as_str(), Some("https://x.databases.neo4j.io"));
        assert!(by("sync").table["vars"].get("NEO4J_URL").is_none());
        assert!(by("health").table["vars"].get("EMBEDDINGS_MODEL").is_none());
        assert_eq!(by("embed_entry").table["vars"]["EMBEDDINGS_MODEL"].as_str(), Some("text-embedding-3-small"));
        assert_eq!(gw["vars"].as_table().unwrap().keys().collect::<Vec<_>>(), ["ALLOWED_ORIGINS"]);
        assert_eq!(crons(&by("populate").table), crons(&c.iter().find(|c| c.worker == "populate").unwrap().table));
        assert!(Path::new(by("health").table["main"].as_str().unwrap()).is_absolute());

        let prod = generate(&c, &env("production", true)).unwrap();
        assert_eq!(prod.iter().find(|g| g.worker == "sync").unwrap().name, "edgesync-sync");
        let mut with_account = env("production", true);
        with_account.account_id = Some("abc123".into());
        assert_eq!(generate(&c, &with_account).unwrap()[0].table["account_id"].as_str(), Some("abc123"));
    }

    #[test]
    fn a_wrong_config_is_reported() {
        let c = committed();
        let e = env("staging", false);
        let fresh = || generate(&c, &e).unwrap();
        let idx = |g: &[Generated], w: &str| g.iter().position(|x| x.worker == w).unwrap();
        let problems = |g: &[Generated]| check_configs(&c, g, &e).join("\n");

        let mut g = fresh();
        let i = idx(&g, "sync");
        g[i].table.remove("observability");
        assert!(problems(&g).contains("sync: [observability]"), "{}", problems(&g));

        let mut g = fresh();
        let i = idx(&g, "embed_entry");
        g[i].table.remove("triggers");
        assert!(problems(&g).contains("embed_entry: its Cron Trigger"), "{}", problems(&g));

        // A staging gateway bound to a production Worker.
        let mut g = fresh();
        let i = idx(&g, "gateway");
        g[i].table["services"].as_array_mut().unwrap()[0]["service"] = "edgesync-health".into();
        assert!(problems(&g).contains("gateway: binds"), "{}", problems(&g));

        let mut g = fresh();
        let i = idx(&g, "populate");
        g[i].table["vars"].as_table_mut().unwrap().remove("NEO4J_URL");
        assert!(problems(&g).contains("populate: NEO4J_URL is None"), "{}", problems(&g));

        let mut g = fresh();
        let i = idx(&g, "upload");
        g[i].table["vars"].as_table_mut().unwrap().insert("SUPABASE_ANON_KEY".into(), "k".into());
        assert!(problems(&g).contains("upload: the secret SUPABASE_ANON_KEY is in [vars]"), "{}", problems(&g));

        let mut g = fresh();
        let i = idx(&g, "health");
        g[i].table.insert("name".into(), "edgesync-health".into());
        assert!(problems(&g).contains("health: named"), "{}", problems(&g));

        let mut g = fresh();
        g.pop();
        assert!(problems(&g).contains("gateway: no config generated"), "{}", problems(&g));
    }

    #[test]
    fn a_bundle_over_the_plans_limit_is_reported() {
        let b = |gzip| Bundle { raw: gzip * 3, gzip, wrangler_gzip_kib: None };
        assert_eq!(check_bundle("sync", &b(500_000), Plan::Free), None);
        assert!(check_bundle("sync", &b(3_000_001), Plan::Free).unwrap().contains("over the Free plan's 3000000"));
        assert_eq!(check_bundle("sync", &b(3_000_001), Plan::Paid), None);
        assert!(check_bundle("sync", &b(10_000_001), Plan::Paid).is_some());
        assert!(check_bundle("sync", &Bundle { raw: 0, gzip: 0, wrangler_gzip_kib: None }, Plan::Free).is_some());
    }

    #[test]
    fn the_settings_file_is_checked() {
        let ok = "default_env = \"prod\"\n[env.prod]\nSUPABASE_URL = \"https://a.supabase.co\"\nPOPULATE_CRON_USERS = 5\nplan = \"paid\"\n[env.dev-2]\n";
        let (default, envs) = parse_settings(ok).unwrap();
        assert_eq!(default, "prod");
        let prod = envs.iter().find(|e| e.name == "prod").unwrap();
        assert!(prod.default && prod.plan == Plan::Paid);
        assert_eq!(prod.vars["POPULATE_CRON_USERS"], "5");
        assert_eq!(select_env(ok, Some("dev-2")).unwrap().worker_name("edgesync-sync"), "edgesync-sync-dev-2");
        assert!(select_env(ok, Some("nope")).unwrap_err().0.contains("no [env.nope]"));
        for (bad, says) in [
            ("default_env = \"x\"\n[env.prod]\n", "has no [env.x]"),
            ("default_env = \"p\"\n[env.p]\nSUPABASE_ANON_KEY = \"k\"\n", "is a secret"),
            ("default_env = \"p\"\n[env.p]\nSUPABASE_UR = \"k\"\n", "no Worker reads this setting"),
            ("default_env = \"p\"\n[env.p]\nplan = \"pro\"\n", "plan"),
            ("default_env = \"P\"\n[env.P]\n", "an environment's name"),
            ("default_env = \"p\"\n[env.p]\nNEO4J_URL = [1]\n", "must be a string"),
            ("default_env = \"p\"\nextra = 1\n[env.p]\n", "unknown field"),
        ] {
            let e = parse_settings(bad).unwrap_err().0;
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn settings_are_checked_with_the_workers_own_parsers() {
        let vars = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let base = vars(&[("SUPABASE_URL", "https://a.supabase.co")]);
        let none = BTreeMap::new();
        // A dry run stands in for secrets; a deploy needs them, all named at once.
        assert_eq!(validate_settings("embed_entry", &base, &none, true), Vec::<String>::new());
        let missing = validate_settings("embed_entry", &base, &none, false).join("\n");
        for s in ["SUPABASE_ANON_KEY", "SUPABASE_SERVICE_ROLE_KEY", "EMBED_WEBHOOK_SECRET", "OPENAI_API_KEY"] {
            assert!(missing.contains(s), "{missing}");
        }
        let secrets = vars(&[
            ("SUPABASE_ANON_KEY", "a"),
            ("SUPABASE_SERVICE_ROLE_KEY", "s"),
            ("EMBED_WEBHOOK_SECRET", "w"),
            ("OPENAI_API_KEY", "sk"),
        ]);
        assert_eq!(validate_settings("embed_entry", &base, &secrets, false), Vec::<String>::new());
        // A JWT secret too short for HS256, by shared::config's rule.
        let mut short = secrets.clone();
        short.insert("SUPABASE_JWT_SECRET".into(), "short".into());
        assert!(validate_settings("sync", &base, &short, false).join("").contains("SUPABASE_JWT_SECRET"));
        // Vars are judged in a dry run too.
        let bad = vars(&[("SUPABASE_URL", "ftp://a"), ("POPULATE_PAGE_SIZE", "0")]);
        assert!(validate_settings("sync", &bad, &none, true).join("").contains("SUPABASE_URL"));
        let bad = vars(&[("SUPABASE_URL", "https://a.supabase.co"), ("POPULATE_PAGE_SIZE", "0")]);
        assert!(validate_settings("populate", &bad, &none, true).join("").contains("POPULATE_PAGE_SIZE"));
        let bad = vars(&[("SUPABASE_URL", "https://a.supabase.co"), ("EMBED_CRON_ROUNDS", "0")]);
        assert!(validate_settings("embed_entry", &bad, &none, true).join("").contains("EMBED_CRON_ROUNDS"));
        // Neo4j: a token or a user and password, as the populate Worker decides.
        let neo = vars(&[("SUPABASE_URL", "https://a.supabase.co"), ("NEO4J_URL", "https://x.databases.neo4j.io")]);
        let mut s = vars(&[("SUPABASE_ANON_KEY", "a"), ("SUPABASE_SERVICE_ROLE_KEY", "s")]);
        assert!(validate_settings("populate", &neo, &s, false).join("").contains("NEO4J_USER"));
        assert_eq!(validate_settings("populate", &neo, &s, true), Vec::<String>::new());
        s.insert("NEO4J_TOKEN".into(), "t".into());
        assert_eq!(validate_settings("populate", &neo, &s, false), Vec::<String>::new());
        assert_eq!(validate_settings("populate", &neo, &s, true), Vec::<String>::new());
        // The gateway reads no secret.
        assert_eq!(validate_settings("gateway", &BTreeMap::new(), &none, false), Vec::<String>::new());
    }

    #[test]
    fn secrets_come_from_the_environment_then_the_dotenv_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secrets.env");
        fs_err::write(&file, "SUPABASE_ANON_KEY=from-file\nOPENAI_API_KEY=\"sk-file\"\n# a comment\nDATABASE_URL=x\n")
            .unwrap();
        let (s, unused) =
            collect_secrets(Some(&file), |k| (k == "SUPABASE_ANON_KEY").then(|| "from-env".to_owned())).unwrap();
        assert_eq!(s["SUPABASE_ANON_KEY"], "from-env");
        assert_eq!(s["OPENAI_API_KEY"], "sk-file");
        assert_eq!(unused, ["DATABASE_URL"]);
        assert!(collect_secrets(Some(&dir.path().join("missing")), |_| None).is_err());
    }

    #[test]
    fn the_secrets_file_is_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let private = PrivateDir::new().unwrap();
        let dir = private.0.clone();
        assert_eq!(fs_err::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let f = write_secrets(&dir, "sync", &[("A".to_owned(), "b".to_owned())].into()).unwrap();
        assert_eq!(fs_err::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs_err::read_to_string(&f).unwrap(), r#"{"A":"b"}"#);
        drop(private);
        assert!(!dir.exists());
    }

    #[test]
    fn wranglers_dry_run_output_is_read() {
        let out = "Total Upload: 1234.56 KiB / gzip: 456.78 KiB\nYour Worker has access to the following bindings:\n\
                   Binding                 Resource\nenv.HEALTH (edgesync-health-staging)     Worker\n\
                   env.ALLOWED_ORIGINS (\"https://a.example\")   Environment Variable\n";
        assert_eq!(wrangler_gzip_kib(out), Some(456.78));
        assert_eq!(wrangler_bindings(out), ["ALLOWED_ORIGINS", "HEALTH"].map(String::from).into());
    }

    /// README "Configuration" and [`reads`] name the same settings, each as a var or a
    /// secret alike: a setting added to one is added to the other.
    #[test]
    fn every_documented_setting_is_deployed_and_every_deployed_one_documented() {
        let readme = fs_err::read_to_string(Paths::discover().unwrap().root.join("README.md")).unwrap();
        let section = readme.split("\n## Configuration").nth(1).unwrap().split("\n## ").next().unwrap();
        let mut documented = BTreeSet::new();
        for line in section.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line.split('|').collect();
            let kind = if cells[2].contains("secret") { "secret" } else { "var" };
            for name in cells[1].split('`').skip(1).step_by(2) {
                documented.insert((name.to_owned(), kind));
            }
        }
        let mut deployed = BTreeSet::new();
        for (_, r) in all_reads() {
            deployed.extend(r.vars.iter().map(|v| ((*v).to_owned(), "var")));
            deployed.extend(r.secrets.iter().map(|s| ((*s).to_owned(), "secret")));
        }
        let undeployed: Vec<_> = documented.difference(&deployed).collect();
        let undocumented: Vec<_> = deployed.difference(&documented).collect();
        assert!(
            undeployed.is_empty() && undocumented.is_empty(),
            "README \"Configuration\" documents {undeployed:?}, which no Worker reads in deploy::reads; \
             deploy::reads has {undocumented:?}, which README does not document (or as the other kind)"
        );
    }
}
