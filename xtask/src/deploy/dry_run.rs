//! The dry run: `wrangler deploy --dry-run` of every Worker with no credentials and no
//! network, its bundles measured against the plan's limit, and the table it prints.

use super::configs::{check_configs, crons, generate, read_committed, service_field, Generated};
use super::settings::{parse_settings, reads, Env, Plan, Reads, SETTINGS_FILE};
use super::validate::validate_settings;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use xtask::build;
use xtask::tools::{Paths, Tools};
use xtask::util::{Context, Result};

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
pub(super) fn wrangler(tools: &Tools, cwd: &Path) -> Command {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn wranglers_dry_run_output_is_read() {
        let out = "Total Upload: 1234.56 KiB / gzip: 456.78 KiB\nYour Worker has access to the following bindings:\n\
                   Binding                 Resource\nenv.HEALTH (edgesync-health-staging)     Worker\n\
                   env.ALLOWED_ORIGINS (\"https://a.example\")   Environment Variable\n";
        assert_eq!(wrangler_gzip_kib(out), Some(456.78));
        assert_eq!(wrangler_bindings(out), ["ALLOWED_ORIGINS", "HEALTH"].map(String::from).into());
    }
}
