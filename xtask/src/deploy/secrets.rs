//! Secrets: collected from the environment or a dotenv file ([`collect_secrets`]) and
//! written for `wrangler deploy --secrets-file` in a private directory.

use super::settings::all_reads;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use xtask::util::{Context, Result};

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

/// A directory only this user can read, removed (with what is in it) when dropped.
pub(super) struct PrivateDir(pub(super) PathBuf);

impl PrivateDir {
    pub(super) fn new() -> Result<PrivateDir> {
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
pub(super) fn write_secrets(dir: &Path, worker: &str, secrets: &BTreeMap<String, String>) -> Result<PathBuf> {
    use fs_err::os::unix::fs::OpenOptionsExt;
    use std::io::Write;
    let path = dir.join(format!("{worker}.json"));
    let mut f = fs_err::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    f.write_all(&serde_json::to_vec(secrets)?)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
