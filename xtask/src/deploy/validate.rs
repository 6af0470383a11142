//! One Worker's settings judged by the same parsers the Worker runs
//! ([`validate_settings`]), with placeholders for secrets in a dry run.

use super::settings::reads;
use edgesync_shared as shared;
use std::collections::BTreeMap;

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
    let Some(reads) = reads(worker) else {
        return vec![format!("{worker}: not listed in xtask/src/deploy/settings.rs")];
    };
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
