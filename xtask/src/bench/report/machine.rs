//! The machine and the versions a run was measured on.

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Command;
use xtask::tools::{Paths, Tools};
use xtask::util::{output, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub os: String,
    pub kernel: String,
    pub postgres: String,
    pub pgvector: String,
    pub postgrest: String,
    pub wrangler: String,
    pub workerd: String,
    pub node: String,
    pub rustc: String,
    pub commit: String,
    pub date: String,
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().trim().to_owned()
}

fn try_output(cmd: &mut Command) -> String {
    output(cmd).map(|s| first_line(&s)).unwrap_or_else(|_| "unknown".into())
}

impl Machine {
    pub fn describe(paths: &Paths, t: &Tools) -> Result<Machine> {
        let cpuinfo = fs_err::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
        let mem_kib: f64 = fs_err::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let os = fs_err::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_owned()))
            .unwrap_or_else(|| "unknown".into());
        let kernel = fs_err::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
        let modules = t.wrangler_js.parent().and_then(Path::parent).and_then(Path::parent);
        let workerd = modules
            .map(|m| try_output(Command::new(m.join("@cloudflare/workerd-linux-64/bin/workerd")).arg("--version")))
            .unwrap_or_else(|| "unknown".into());
        // pgvector: the version of the extension files shipped with this Postgres.
        let pgvector = fs_err::read_dir(t.pg_bin.join("../share/extension"))
            .or_else(|_| fs_err::read_dir(t.pg_bin.join("../share/postgresql/extension")))
            .ok()
            .and_then(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter_map(|n| n.strip_prefix("vector--")?.strip_suffix(".sql").map(str::to_owned))
                    .filter(|v| !v.contains("--"))
                    .max_by(|a, b| version_key(a).cmp(&version_key(b)))
            })
            .unwrap_or_else(|| "unknown".into());
        // The bench's own outputs of an earlier run in this checkout are not changes to
        // what is measured.
        let status = [
            "status",
            "--porcelain",
            "--",
            ".",
            ":(exclude)BENCHMARKS.md",
            ":(exclude)bench/LIVE.md",
            ":(exclude)bench/plots",
        ];
        let dirty = output(Command::new("git").args(status).current_dir(&paths.root))
            .map(|s| !s.trim().is_empty())
            .unwrap_or(false);
        let commit = try_output(Command::new("git").args(["rev-parse", "--short", "HEAD"]).current_dir(&paths.root));
        Ok(Machine {
            cpu,
            cores,
            memory_gib: mem_kib / 1024.0 / 1024.0,
            os,
            kernel,
            postgres: try_output(Command::new(t.pg_bin.join("postgres")).arg("--version")),
            pgvector,
            postgrest: try_output(Command::new(&t.postgrest).arg("--version")),
            wrangler: try_output(
                Command::new(&t.node).arg(&t.wrangler_js).arg("--version").env("WRANGLER_SEND_METRICS", "false"),
            ),
            workerd,
            node: try_output(Command::new(&t.node).arg("--version")),
            rustc: try_output(Command::new("rustc").arg("--version")),
            commit: if dirty { format!("{commit} with uncommitted changes") } else { commit },
            date: try_output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
        })
    }
}

fn version_key(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}
