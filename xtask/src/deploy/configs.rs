//! Each Worker's wrangler config: the committed `wrangler.toml`s, the ones generated
//! for an environment ([`generate`]) and what is wrong with those ([`check_configs`]).

use super::settings::{is_secret, reads, Env};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use xtask::build;
use xtask::stack::CRON_WORKERS;
use xtask::tools::Paths;
use xtask::util::{Context, Result};

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
        let reads = reads(&c.worker)
            .context(format!("{}: xtask/src/deploy/settings.rs does not list what it reads", c.worker))?;
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
        // A Durable Object namespace of another Worker: that Worker of this environment.
        for b in do_bindings_mut(&mut table) {
            let Some(script) = b.get("script_name").and_then(|v| v.as_str()).map(str::to_owned) else { continue };
            let target = names.get(&script).context(format!(
                "{}: the Durable Object binding to {script:?} names no Worker of this repository",
                c.path.display()
            ))?;
            b.insert("script_name".into(), target.clone().into());
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

pub(super) fn crons(table: &toml::Table) -> Option<Vec<String>> {
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
        // A Durable Object of another Worker: this environment's, deployed before this one.
        let earlier: BTreeSet<&str> =
            generated.iter().take_while(|x| &x.worker != w).map(|x| x.name.as_str()).collect();
        for script in do_script_names(&g.table) {
            if !earlier.contains(script.as_str()) {
                problems.push(format!("{w}: binds the Durable Objects of {script:?}, not a Worker deployed before it"));
            }
        }
        let Some(reads) = reads(w) else {
            problems.push(format!("{w}: xtask/src/deploy/settings.rs does not list what it reads"));
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

/// The `[[durable_objects.bindings]]` of a config.
fn do_bindings_mut(table: &mut toml::Table) -> impl Iterator<Item = &mut toml::Table> {
    let bindings = table.get_mut("durable_objects").and_then(|d| d.get_mut("bindings"));
    bindings.and_then(|b| b.as_array_mut()).into_iter().flatten().filter_map(|b| b.as_table_mut())
}

/// The Workers whose Durable Object namespaces a config binds (`script_name`).
fn do_script_names(table: &toml::Table) -> Vec<String> {
    let bindings = table.get("durable_objects").and_then(|d| d.get("bindings")).and_then(|b| b.as_array());
    let script = |b: &toml::Value| b.get("script_name").and_then(|v| v.as_str()).map(str::to_owned);
    bindings.into_iter().flatten().filter_map(script).collect()
}

/// One field (`binding` or `service`) of each entry of a config's `services` array.
pub(super) fn service_field<'a>(table: &'a toml::Table, field: &'a str) -> impl Iterator<Item = String> + 'a {
    table
        .get("services")
        .and_then(|s| s.as_array())
        .into_iter()
        .flatten()
        .filter_map(move |s| s.get(field).and_then(|v| v.as_str()).map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::super::settings::{parse_settings, Plan, SETTINGS_FILE};
    use super::super::validate::validate_settings;
    use super::*;
    use std::path::Path;

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
        // The PowerSync Worker binds this environment's LiveHub namespace, the sync Worker's.
        assert_eq!(do_script_names(&by("powersync").table), ["edgesync-sync-staging"]);
        assert!(do_script_names(&by("sync").table).is_empty(), "the sync Worker's own namespace");
        assert_eq!(by("embed_entry").name, "edgesync-embed-entry-staging");
        let gw = &by("gateway").table;
        let services = gw["services"].as_array().unwrap();
        assert_eq!(services.len(), 6);
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

        // A staging Worker bound to production's Durable Objects, or to a later Worker's.
        for (script, what) in [("edgesync-sync", "\"edgesync-sync\""), ("edgesync-upload-staging", "upload-staging")] {
            let mut g = fresh();
            let i = idx(&g, "powersync");
            do_bindings_mut(&mut g[i].table).next().unwrap().insert("script_name".into(), script.into());
            let p = problems(&g);
            assert!(p.contains("powersync: binds the Durable Objects of") && p.contains(what), "{p}");
        }

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
}
