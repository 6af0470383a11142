//! `deploy.toml`: its environments ([`Env`], [`Plan`]), parsed and checked, and what
//! each Worker reads ([`reads`]), which decides the settings it is given.

use serde::Deserialize;
use std::collections::BTreeMap;
use xtask::build;
use xtask::util::{Context, Error, Result};

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
            vars: cat(&[SUPABASE_VARS, CORS_VARS]),
            secrets: cat(&[SUPABASE_SECRETS, &["LIVE_POKE_SECRET"]]),
            required: vec!["SUPABASE_ANON_KEY"],
        },
        "powersync" => Reads {
            vars: cat(&[SUPABASE_VARS, CORS_VARS, &["PS_STREAM_MAX_SUBREQUESTS"]]),
            secrets: cat(&[SUPABASE_SECRETS]),
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
pub(super) fn all_reads() -> Vec<(&'static str, Reads)> {
    build::FUNCTIONS.iter().chain(["gateway"].iter()).map(|w| (*w, reads(w).expect("every Worker is listed"))).collect()
}

pub(super) fn is_secret(name: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use xtask::tools::Paths;

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
