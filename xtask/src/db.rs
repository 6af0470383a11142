//! The migrations: finding them, applying the pending ones to any database as the
//! role its URL names (`cargo xtask db push`, and the local stack as the non-superuser
//! `postgres`), and the Supabase CLI's copy of them (`supabase/migrations/`).
//!
//! `sql/migrations/NNNN_name.sql` is the one source of truth. Each migration records
//! itself in `edgesync.schema_migrations`, so "pending" means "newer than the highest
//! version recorded there", whatever tool applied the older ones.

use crate::tools::Paths;
use crate::util::{bail, output, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A migration file: `sql/migrations/NNNN_name.sql`.
#[derive(Debug, Clone, PartialEq)]
pub struct Migration {
    pub version: i64,
    pub path: PathBuf,
}

impl Migration {
    /// `NNNN_name.sql`.
    pub fn file_name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// Its name in `supabase/migrations/`: the Supabase CLI orders migrations by a
    /// leading timestamp, so version N becomes `20260101` followed by N in six digits
    /// (they sort as the versions do, and before any migration a project writes later).
    pub fn supabase_name(&self) -> String {
        let name = self.file_name();
        let rest = name.split_once('_').map(|(_, r)| r).unwrap_or(&name);
        format!("20260101{:06}_{rest}", self.version)
    }
}

pub fn migrations(paths: &Paths) -> Result<Vec<Migration>> {
    let dir = paths.root.join("sql/migrations");
    let mut v = Vec::new();
    for entry in fs_err::read_dir(&dir).context(format!("could not read {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if !name.ends_with(".sql") {
            continue;
        }
        let version: i64 = name
            .split('_')
            .next()
            .and_then(|n| n.parse().ok())
            .context(format!("migration {name} must be named NNNN_description.sql"))?;
        v.push(Migration { version, path });
    }
    v.sort_by_key(|m| m.version);
    for pair in v.windows(2) {
        if pair[0].version == pair[1].version {
            bail!("two migrations share version {}", pair[0].version);
        }
    }
    Ok(v)
}

/// psql on `url`, stopping at the first error, reading no ~/.psqlrc. The password is
/// passed in `PGPASSWORD`, not on the command line, which error messages and CI logs
/// repeat.
pub fn psql(pg_bin: &Path, url: &str) -> Command {
    let (url, password) = split_password(url);
    let mut cmd = Command::new(pg_bin.join("psql"));
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url]).env("PGCONNECT_TIMEOUT", "10");
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    cmd
}

/// `postgres://user:secret@host/db` → (`postgres://user@host/db`, `secret`), the
/// password percent-decoded as libpq would. Any other string is returned as it is.
fn split_password(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else { return (url.to_owned(), None) };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return (url.to_owned(), None) };
    let Some((user, password)) = rest[..at].split_once(':') else { return (url.to_owned(), None) };
    let bytes = password.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%').then(|| password.get(i + 1..i + 3)).flatten();
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(b) => {
                decoded.push(b);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    (format!("{scheme}://{user}{}", &rest[at..]), Some(String::from_utf8_lossy(&decoded).into_owned()))
}

/// The highest version recorded in `edgesync.schema_migrations` (0 before the first).
pub fn schema_version(pg_bin: &Path, url: &str) -> Result<i64> {
    let exists =
        output(psql(pg_bin, url).args(["-tAc", "select to_regclass('edgesync.schema_migrations') is not null"]))?;
    if exists.trim() != "t" {
        return Ok(0);
    }
    let out =
        output(psql(pg_bin, url).args(["-tAc", "select coalesce(max(version), 0) from edgesync.schema_migrations"]))?;
    out.trim().parse().context(format!("unexpected schema version {out:?}"))
}

/// Apply every migration newer than the database's schema version, each in its own
/// transaction, as the role `url` names; `progress` hears of each before it runs.
/// Returns the ones applied (none when the database is current).
pub fn apply_pending(
    paths: &Paths,
    pg_bin: &Path,
    url: &str,
    progress: &mut dyn FnMut(&Migration),
) -> Result<Vec<Migration>> {
    let current = schema_version(pg_bin, url)?;
    let mut applied = Vec::new();
    for m in migrations(paths)?.into_iter().filter(|m| m.version > current) {
        progress(&m);
        output(psql(pg_bin, url).arg("--single-transaction").arg("-f").arg(&m.path))
            .context(format!("migration {} failed", m.file_name()))?;
        if schema_version(pg_bin, url)? < m.version {
            bail!("migration {} did not record itself in edgesync.schema_migrations", m.file_name());
        }
        applied.push(m);
    }
    Ok(applied)
}

/// The files `supabase/migrations/` must hold: each migration under its Supabase name,
/// byte for byte.
fn supabase_layout(paths: &Paths) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let dir = paths.root.join("supabase/migrations");
    migrations(paths)?.into_iter().map(|m| Ok((dir.join(m.supabase_name()), fs_err::read(&m.path)?))).collect()
}

/// Where `supabase/migrations/` differs from `sql/migrations/`: files missing, stale or
/// extra (empty when it is current).
pub fn supabase_layout_drift(paths: &Paths) -> Result<Vec<String>> {
    let want = supabase_layout(paths)?;
    let mut drift = Vec::new();
    for (path, bytes) in &want {
        match fs_err::read(path) {
            Ok(have) if &have == bytes => {}
            Ok(_) => drift.push(format!("{} is stale", path.display())),
            Err(_) => drift.push(format!("{} is missing", path.display())),
        }
    }
    if let Ok(entries) = fs_err::read_dir(paths.root.join("supabase/migrations")) {
        for e in entries.flatten() {
            if !want.iter().any(|(p, _)| *p == e.path()) {
                drift.push(format!("{} has no migration in sql/migrations", e.path().display()));
            }
        }
    }
    Ok(drift)
}

/// Write `supabase/migrations/` from `sql/migrations/` (`cargo xtask db layout`).
pub fn write_supabase_layout(paths: &Paths) -> Result<usize> {
    let dir = paths.root.join("supabase/migrations");
    if dir.exists() {
        fs_err::remove_dir_all(&dir)?;
    }
    fs_err::create_dir_all(&dir)?;
    let want = supabase_layout(paths)?;
    for (path, bytes) in &want {
        fs_err::write(path, bytes)?;
    }
    Ok(want.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_taken_out_of_urls() {
        assert_eq!(
            split_password("postgres://postgres:s%40cr%3At@db.x.supabase.co:5432/postgres?sslmode=require"),
            ("postgres://postgres@db.x.supabase.co:5432/postgres?sslmode=require".into(), Some("s@cr:t".into()))
        );
        assert_eq!(split_password("postgres://u@h/d"), ("postgres://u@h/d".into(), None));
        assert_eq!(split_password("host=h dbname=d"), ("host=h dbname=d".into(), None));
        // An '@' after the host is not the userinfo's.
        assert_eq!(split_password("postgres://h/d?x=a@b"), ("postgres://h/d?x=a@b".into(), None));
    }

    #[test]
    fn supabase_names_keep_the_order_and_the_name() {
        let m = Migration { version: 7, path: PathBuf::from("sql/migrations/0007_lock_order.sql") };
        assert_eq!(m.supabase_name(), "20260101000007_lock_order.sql");
        let later = Migration { version: 12, path: PathBuf::from("0012_x.sql") };
        assert!(m.supabase_name() < later.supabase_name());
    }

    /// `supabase db push` reads supabase/migrations/; it must be what sql/migrations/ says.
    #[test]
    fn supabase_layout_is_current() {
        let paths = Paths::discover().unwrap();
        let drift = supabase_layout_drift(&paths).unwrap();
        assert!(drift.is_empty(), "run `cargo xtask db layout`:\n{}", drift.join("\n"));
    }
}
