//! Background processes: start them in their own process group, find out whether
//! they are alive (a zombie is not), and stop the whole group.

use crate::util::{Context, Result};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A system user to run a server as, when we are root.
#[derive(Debug, Clone, Copy)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// Start `cmd` detached in a new process group, output appended to `log`.
pub fn spawn(mut cmd: Command, log: &Path, run_as: Option<RunAs>) -> Result<u32> {
    let out =
        File::options().create(true).append(true).open(log).context(format!("could not open {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
    if let Some(user) = run_as {
        // std drops supplementary groups (setgroups) before setuid when root.
        cmd.uid(user.uid).gid(user.gid);
    }
    let shown = crate::util::describe(&cmd);
    let child = cmd.spawn().context(format!("could not start `{shown}`"))?;
    Ok(child.id())
}

/// Alive and not a zombie. Processes we started and then left are reparented to
/// init, which in a container may never reap them; `kill(pid, 0)` would still
/// succeed on such a zombie, so read its state from /proc.
pub fn alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    match fs_err::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // Format: "pid (comm) S ..."; comm may contain spaces and parens.
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// Any live process in process group `pgid`?
pub fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = fs_err::read_dir("/proc") else { return false };
    entries.flatten().any(|e| {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { return false };
        let Ok(stat) = fs_err::read_to_string(format!("/proc/{pid}/stat")) else { return false };
        let Some((_, rest)) = stat.rsplit_once(')') else { return false };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // fields[0] = state, fields[2] = pgrp
        fields.len() > 2 && fields[0] != "Z" && fields[0] != "X" && fields[2].parse::<u32>().ok() == Some(pgid)
    })
}

/// Send `signal` to the process group, wait up to `grace` for it to go, then SIGKILL.
/// Returns an error only when something survives SIGKILL.
pub fn stop_group(pgid: u32, signal: i32, grace: Duration) -> Result<()> {
    if pgid == 0 || !group_alive(pgid) {
        return Ok(());
    }
    // SAFETY: kill with a negative pid signals the process group.
    unsafe { libc::kill(-(pgid as i32), signal) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !group_alive(pgid) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !group_alive(pgid) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    crate::util::bail!("process group {pgid} survived SIGKILL")
}

/// Look up a user's uid and gid.
pub fn lookup_user(name: &str) -> Option<RunAs> {
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; we copy out at once.
    let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Some(RunAs { uid, gid })
}

/// A free TCP port on 127.0.0.1 for a server we are about to start, never one this
/// process handed out before.
///
/// It is picked below the kernel's ephemeral range (`ip_local_port_range`), where
/// nothing gets a port by binding port 0 or by connecting out. A port from that range
/// (what `bind(127.0.0.1:0)` returns) is free only for the moment it is released:
/// workerd binding its own port 0, or any outgoing connection, may take it before our
/// server does, and a readiness probe on it then reaches someone else.
pub fn free_port() -> Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let (low, high) = listen_range(&ephemeral_range());
    let span = u32::from(high - low) + 1;
    // A random start, so two stacks started at once rarely try the same ports.
    let start = u32::from_str_radix(&crate::util::random_hex(4), 16).unwrap_or(0) % span;
    for i in 0..span {
        let port = low + ((start + i) % span) as u16;
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() && !port_open(port) {
            given.push(port);
            return Ok(port);
        }
    }
    crate::util::bail!("no free port on 127.0.0.1 in {low}..={high}")
}

/// The kernel's ephemeral port range (Linux's default when it cannot be read).
fn ephemeral_range() -> (u16, u16) {
    fs_err::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// Where servers' ports are picked: below the ephemeral range and above the stack's
/// documented defaults (≤ 9799) and the registered ports most services use; or, when
/// the ephemeral range leaves too little room below it, above it.
fn listen_range(&(eph_low, eph_high): &(u16, u16)) -> (u16, u16) {
    const LOW: u16 = 20000;
    if eph_low > LOW + 1000 {
        (LOW, eph_low - 1)
    } else {
        (eph_high.saturating_add(1).max(LOW), u16::MAX)
    }
}

/// Is something accepting connections on 127.0.0.1:port?
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawned_group_is_alive_until_stopped() {
        let log = std::env::temp_dir().join(format!("xtask-procs-{}.log", crate::util::random_hex(4)));
        let mut cmd = Command::new("sh");
        // A parent with a child, like wrangler and workerd: both must go.
        cmd.args(["-c", "sleep 30 & sleep 30"]);
        let pid = spawn(cmd, &log, None).unwrap();
        assert!(crate::util::wait_for("group", Duration::from_secs(5), || Ok(alive(pid).then_some(()))).is_ok());
        assert!(group_alive(pid));
        stop_group(pid, libc::SIGTERM, Duration::from_secs(5)).unwrap();
        assert!(!group_alive(pid));
        let _ = fs_err::remove_file(log);
    }

    #[test]
    fn ports_are_picked_outside_the_ephemeral_range() {
        let eph = ephemeral_range();
        let (low, high) = listen_range(&eph);
        assert!(high < eph.0 || low > eph.1, "{low}..={high} overlaps {eph:?}");
        for _ in 0..20 {
            let p = free_port().unwrap();
            assert!((low..=high).contains(&p), "{p} is not in {low}..={high}");
        }
        // A range that leaves no room below it puts the ports above it.
        assert_eq!(listen_range(&(1024, 40000)), (40001, u16::MAX));
        assert_eq!(listen_range(&(32768, 60999)), (20000, 32767));
    }

    #[test]
    fn free_ports_are_distinct_and_closed() {
        let ports: Vec<u16> = (0..200).map(|_| free_port().unwrap()).collect();
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        assert!(!port_open(ports[0]));
        assert!(!alive(0));
    }
}
