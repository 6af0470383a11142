//! Small helpers: errors with context, running commands, hashing, waiting.

use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// xtask's error: a message that says what failed and what to do.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error(e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error(e.to_string())
    }
}

/// `Err(Error(format!(..)))`.
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::util::Error(format!($($arg)*))) };
}
pub(crate) use bail;

/// Add context to any error.
pub trait Context<T> {
    fn context(self, what: impl std::fmt::Display) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| Error(format!("{what}: {e}")))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl std::fmt::Display) -> Result<T> {
        self.ok_or_else(|| Error(what.to_string()))
    }
}

/// Print a step to stderr, so stdout stays for data (tokens, JSON).
pub fn step(msg: impl std::fmt::Display) {
    eprintln!("xtask: {msg}");
}

/// Run a command to completion, inheriting stdout/stderr; fail with its description.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = describe(cmd);
    let status = cmd.status().context(format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Run a command and capture stdout; stderr is included in the error.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = describe(cmd);
    let out = cmd.stdin(Stdio::null()).output().context(format!("could not start `{shown}`"))?;
    if !out.status.success() {
        bail!("`{shown}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Poll `check` until it returns `Some`, or fail after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(20);
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {:?} waiting for {what}", timeout);
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs_err::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Random bytes as lowercase hex.
pub fn random_hex(len_bytes: usize) -> String {
    let mut buf = vec![0u8; len_bytes];
    getrandom::getrandom(&mut buf).expect("the OS has no entropy source");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Take an exclusive advisory lock on `path` for as long as the returned file lives,
/// so two xtask runs never install into the same cache at once.
pub fn lock_file(path: &Path) -> Result<fs_err::File> {
    use std::os::unix::io::AsRawFd;
    if let Some(dir) = path.parent() {
        fs_err::create_dir_all(dir)?;
    }
    let f = fs_err::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    // SAFETY: flock on a valid fd.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("could not lock {}", path.display());
    }
    Ok(f)
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for entry in fs_err::read_dir(dir).context(format!("could not read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(files_under(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

/// The hash of `files` (sorted here: names and contents) and `extra`: what a build's
/// inputs were, to skip it when they are unchanged.
pub fn hash_files(files: &mut [std::path::PathBuf], extra: &[u8]) -> Result<String> {
    files.sort();
    let mut input = Vec::new();
    for f in files.iter() {
        input.extend_from_slice(f.to_string_lossy().as_bytes());
        input.extend_from_slice(&fs_err::read(f).context(format!("could not read {}", f.display()))?);
    }
    input.extend_from_slice(extra);
    Ok(sha256_hex(&input))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn wait_for_returns_value_or_times_out() {
        let mut n = 0;
        assert_eq!(
            wait_for("n", Duration::from_secs(5), || {
                n += 1;
                Ok((n == 3).then_some(n))
            })
            .unwrap(),
            3
        );
        let err = wait_for::<()>("never", Duration::from_millis(50), || Ok(None)).unwrap_err();
        assert!(err.0.contains("never"));
    }
}
