//! The load generator: a fixed number of client threads (one blocking `ureq` agent
//! each, keep-alive), each taking the next job from a shared counter until the jobs
//! run out. Every HTTP exchange is timed from the request to the last byte of the
//! answer; any answer that is not 2xx fails the run. CPU time of the servers is read
//! from `/proc` before and after (see [`cpu`]).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use xtask::util::{Error, Result};

/// One client: its HTTP agent, and what it measured.
pub struct Client {
    agent: ureq::Agent,
    /// Which client thread this is (0..clients): per-client state is indexed by it.
    pub index: usize,
    pub latencies_ms: Vec<f64>,
    pub requests: u64,
    /// Rows, mutations, results: what the workload counts.
    pub units: u64,
    /// POSTs sent again because the connection closed without an answer.
    pub resent: u64,
    /// Whether the last POST was sent more than once.
    pub last_resent: bool,
    rng: u64,
}

// The closures passed to `send` return ureq's own (large) error type.
#[allow(clippy::result_large_err)]
impl Client {
    pub fn new(index: usize, seed: u64) -> Client {
        Client {
            agent: ureq::AgentBuilder::new().timeout(Duration::from_secs(120)).max_idle_connections_per_host(4).build(),
            index,
            latencies_ms: Vec::new(),
            requests: 0,
            units: 0,
            resent: 0,
            last_resent: false,
            rng: seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        }
    }

    /// A pseudo-random number (splitmix64), reproducible per client.
    pub fn rand(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.rand() % n.max(1) as u64) as usize
    }

    /// Count the last `n` exchanges as one request (a composite one), their times added.
    pub fn merge_last(&mut self, n: usize) {
        let k = self.latencies_ms.len();
        if n < 2 || k < n {
            return;
        }
        let sum: f64 = self.latencies_ms.drain(k - n..).sum();
        self.latencies_ms.push(sum);
        self.requests -= n as u64 - 1;
    }

    /// `GET url`, timed; the body on 2xx, an error otherwise.
    pub fn get(&mut self, url: &str, headers: &[(&str, &str)]) -> Result<Vec<u8>> {
        self.get_answering(url, headers, None)
    }

    /// `GET url` that must answer exactly `status` (an error answer measured on purpose).
    pub fn get_expecting(&mut self, url: &str, headers: &[(&str, &str)], status: u16) -> Result<Vec<u8>> {
        self.get_answering(url, headers, Some(status))
    }

    fn get_answering(&mut self, url: &str, headers: &[(&str, &str)], expect: Option<u16>) -> Result<Vec<u8>> {
        let agent = self.agent.clone();
        self.send("GET", url, expect, || {
            let mut req = agent.get(url);
            for (k, v) in headers {
                req = req.set(k, v);
            }
            req.call()
        })
    }

    /// `POST url` with a JSON body, timed. Every endpoint posted to is safe to send
    /// again (`/upload` is idempotent by `op_id`).
    pub fn post(&mut self, url: &str, headers: &[(&str, &str)], body: &str) -> Result<Vec<u8>> {
        let agent = self.agent.clone();
        self.send("POST", url, None, || {
            let mut req = agent.post(url).set("content-type", "application/json");
            for (k, v) in headers {
                req = req.set(k, v);
            }
            req.send_string(body)
        })
    }

    /// One request (`attempt` sends it once), timed from the first attempt. A request
    /// that got no answer (the connection closed, or nothing came within the agent's
    /// timeout) is sent again, twice at most, and so is one the local runtime answered
    /// 503 "Your worker restarted mid-request" (it restarted the isolate): ureq resends
    /// only idempotent requests, and only when a kept-alive connection turns out to be
    /// closed, while wrangler dev under load sometimes drops or stalls one. The time
    /// includes the failed attempts; the caller sees a resend in `last_resent`, and the
    /// report counts them.
    fn send(
        &mut self,
        method: &str,
        url: &str,
        expect: Option<u16>,
        attempt: impl Fn() -> std::result::Result<ureq::Response, ureq::Error>,
    ) -> Result<Vec<u8>> {
        let started = Instant::now();
        self.last_resent = false;
        let mut tries = 0;
        loop {
            let outcome = match attempt() {
                Err(ureq::Error::Status(503, r)) if expect != Some(503) => {
                    let text = r.into_string().unwrap_or_default();
                    if text.contains("restarted mid-request") && tries < 2 {
                        tries += 1;
                        self.resent += 1;
                        self.last_resent = true;
                        continue;
                    }
                    let shown = url.split('?').next().unwrap_or(url);
                    return Err(Error(format!("{method} {shown}: HTTP 503: {}", prefix(&text, 400))));
                }
                outcome => outcome,
            };
            if matches!(outcome, Err(ureq::Error::Transport(_))) && tries < 2 {
                tries += 1;
                self.resent += 1;
                self.last_resent = true;
                continue;
            }
            return self.finish(method, url, started, outcome, expect);
        }
    }

    fn finish(
        &mut self,
        method: &str,
        url: &str,
        started: Instant,
        outcome: std::result::Result<ureq::Response, ureq::Error>,
        expect: Option<u16>,
    ) -> Result<Vec<u8>> {
        let shown = url.split('?').next().unwrap_or(url);
        let resp = match outcome {
            Ok(r) if expect.is_none_or(|s| s == r.status()) => r,
            Err(ureq::Error::Status(code, r)) if expect == Some(code) => r,
            Ok(r) => return Err(Error(format!("{method} {shown}: HTTP {}, expected {expect:?}", r.status()))),
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                return Err(Error(format!("{method} {shown}: HTTP {code}: {}", prefix(&text, 400))));
            }
            Err(e) => return Err(Error(format!("{method} {shown}: no answer: {e}"))),
        };
        let mut body = Vec::new();
        resp.into_reader()
            .take(64 * 1024 * 1024)
            .read_to_end(&mut body)
            .map_err(|e| Error(format!("{method} {shown}: reading the answer: {e}")))?;
        self.latencies_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        self.requests += 1;
        Ok(body)
    }
}

pub fn prefix(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// What one run (or the sum of several) measured for one target.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Measure {
    pub requests: u64,
    pub units: u64,
    /// Requests sent again after their connection closed without an answer.
    pub resent: u64,
    pub wall_secs: f64,
    #[serde(skip)]
    pub latencies_ms: Vec<f64>,
    /// CPU seconds per process group label (see [`cpu::Group`]).
    pub cpu: BTreeMap<String, f64>,
    /// Resident memory (MiB) of each Worker's workerd processes (`*.runtime`, `*.workerd`)
    /// at the end (the largest of the runs).
    pub rss_mib: BTreeMap<String, f64>,
}

/// The nearest-rank percentile `p` (0 to 1) of sorted, non-empty `v`.
pub fn nearest_rank(v: &[f64], p: f64) -> f64 {
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

impl Measure {
    pub fn add(&mut self, other: Measure) {
        self.requests += other.requests;
        self.units += other.units;
        self.resent += other.resent;
        self.wall_secs += other.wall_secs;
        self.latencies_ms.extend(other.latencies_ms);
        for (k, v) in other.cpu {
            *self.cpu.entry(k).or_default() += v;
        }
        for (k, v) in other.rss_mib {
            let e = self.rss_mib.entry(k).or_default();
            *e = e.max(v);
        }
    }

    /// Latency percentile (nearest rank), milliseconds.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return f64::NAN;
        }
        let mut v = self.latencies_ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        nearest_rank(&v, p)
    }

    pub fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.wall_secs
    }

    pub fn units_per_sec(&self) -> f64 {
        self.units as f64 / self.wall_secs
    }

    /// CPU seconds of `label` per 1,000 requests.
    pub fn cpu_per_1000(&self, label: &str) -> Option<f64> {
        self.cpu.get(label).map(|s| s * 1000.0 / self.requests.max(1) as f64)
    }
}

/// Runs jobs on `clients` threads and measures them.
pub struct Runner {
    pub clients: usize,
    pub groups: Vec<cpu::Group>,
    pub seed: u64,
}

impl Runner {
    /// Run `jobs` jobs (`job(client, index)`) on the client threads. The first error
    /// stops every client and is returned.
    pub fn run<F>(&self, jobs: usize, job: F) -> Result<Measure>
    where
        F: Fn(&mut Client, usize) -> Result<()> + Sync,
    {
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let first_error: Mutex<Option<Error>> = Mutex::new(None);
        let before = cpu::snapshot();
        let started = Instant::now();
        let clients: Vec<Client> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..self.clients)
                .map(|i| {
                    let (next, failed, first_error, job) = (&next, &failed, &first_error, &job);
                    s.spawn(move || {
                        let mut c = Client::new(i, self.seed);
                        while !failed.load(Ordering::SeqCst) {
                            let j = next.fetch_add(1, Ordering::SeqCst);
                            if j >= jobs {
                                break;
                            }
                            if let Err(e) = job(&mut c, j) {
                                failed.store(true, Ordering::SeqCst);
                                first_error.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                                break;
                            }
                        }
                        c
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let wall_secs = started.elapsed().as_secs_f64();
        let after = cpu::snapshot();
        if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        if clients.len() != self.clients {
            return Err(Error("a client thread panicked".into()));
        }
        let mut m = Measure { wall_secs, ..Measure::default() };
        for c in clients {
            m.requests += c.requests;
            m.units += c.units;
            m.resent += c.resent;
            m.latencies_ms.extend(c.latencies_ms);
        }
        for g in &self.groups {
            m.cpu.insert(g.label.clone(), cpu::seconds(&after, g) - cpu::seconds(&before, g));
            if g.label.ends_with(".runtime") || g.label.ends_with(".workerd") {
                m.rss_mib.insert(g.label.clone(), cpu::rss_mib(&after, g));
            }
        }
        Ok(m)
    }

    /// The same workload against several targets, in `rounds` rounds of
    /// `jobs_per_round` jobs each; within a round the targets take turns, starting
    /// with a different one each round, so a noisy neighbour or a slow drift hits
    /// them alike. `job(target, client, job)` gets a job number unique per target.
    pub fn interleaved<F>(&self, targets: usize, rounds: usize, jobs_per_round: usize, job: F) -> Result<Vec<Measure>>
    where
        F: Fn(usize, &mut Client, usize) -> Result<()> + Sync,
    {
        let mut out = vec![Measure::default(); targets];
        for round in 0..rounds.max(1) {
            for k in 0..targets {
                let t = (round + k) % targets;
                let m = self.run(jobs_per_round, |c, j| job(t, c, round * jobs_per_round + j))?;
                out[t].add(m);
            }
        }
        Ok(out)
    }
}

/// Small readers of the JSON answers that avoid parsing megabytes on the client
/// (the client shares the machine with the servers it measures).
pub mod scan {
    /// The scalar value of the *last* `"key":` in `body` (top-level keys of our answers
    /// come after the rows): a string's contents, or a literal such as `true`.
    pub fn last_value<'a>(body: &'a [u8], key: &str) -> Option<&'a str> {
        let text = std::str::from_utf8(body).ok()?;
        let needle = format!("\"{key}\"");
        let at = text.rfind(&needle)? + needle.len();
        let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
        if let Some(s) = rest.strip_prefix('"') {
            return s.find('"').map(|end| &s[..end]);
        }
        let end = rest.find([',', '}', ']']).unwrap_or(rest.len());
        Some(rest[..end].trim())
    }

    /// How often `needle` occurs in `body`.
    pub fn count(body: &[u8], needle: &[u8]) -> u64 {
        if needle.is_empty() || body.len() < needle.len() {
            return 0;
        }
        let first = needle[0];
        let mut n = 0;
        let mut i = 0;
        while i + needle.len() <= body.len() {
            if body[i] == first && &body[i..i + needle.len()] == needle {
                n += 1;
                i += needle.len();
            } else {
                i += 1;
            }
        }
        n
    }

    /// Rows in a `/sync` page or an `edgesync_pull` answer: each row object starts
    /// with its `id` (the first column of every synced table).
    pub fn rows(body: &[u8]) -> u64 {
        count(body, b"{\"id\":")
    }
}

/// CPU time of process groups, from `/proc/<pid>/stat` (utime + stime + cutime + cstime).
pub mod cpu {
    use std::collections::HashMap;

    /// Process groups (pids the stack started with `process_group(0)`, so each pid is
    /// its group's id) and every descendant of their members; optionally only
    /// processes whose command name is `only`, and not those with any of `not_args`.
    #[derive(Debug, Clone)]
    pub struct Group {
        pub label: String,
        pub pgids: Vec<u32>,
        pub only: Option<&'static str>,
        pub not_args: Vec<String>,
    }

    impl Group {
        pub fn new(label: &str, pgid: u32) -> Group {
            Group { label: label.into(), pgids: vec![pgid], only: None, not_args: Vec::new() }
        }
    }

    /// Does process `pid` have the argument `arg`?
    fn has_arg(pid: u32, arg: &str) -> bool {
        fs_err::read(format!("/proc/{pid}/cmdline"))
            .map(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
            .unwrap_or(false)
    }

    #[derive(Debug, Clone)]
    pub struct Proc {
        pub ppid: u32,
        pub pgrp: u32,
        pub comm: String,
        pub ticks: u64,
    }

    pub type Snapshot = HashMap<u32, Proc>;

    /// Every process's parent, group, name and CPU ticks.
    pub fn snapshot() -> Snapshot {
        let mut out = HashMap::new();
        let Ok(entries) = fs_err::read_dir("/proc") else { return out };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let Ok(stat) = fs_err::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            if let Some(p) = parse_stat(&stat) {
                out.insert(pid, p);
            }
        }
        out
    }

    /// `pid (comm) state ppid pgrp ... utime stime cutime cstime ...` (fields 14 to 17
    /// of proc(5)). `cutime`/`cstime` hold the CPU of children that exited and were
    /// waited for (a Postgres backend, an autovacuum worker): counting them keeps a
    /// group's total from dropping when a process ends between two snapshots.
    pub fn parse_stat(stat: &str) -> Option<Proc> {
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat[open + 1..close].to_owned();
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // f[0] = state (field 3), so field n is f[n - 3].
        let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        Some(Proc {
            ppid: num(4)? as u32,
            pgrp: num(5)? as u32,
            comm,
            ticks: num(14)? + num(15)? + num(16)? + num(17)?,
        })
    }

    pub fn ticks_per_second() -> f64 {
        // SAFETY: sysconf has no preconditions.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 {
            t as f64
        } else {
            100.0
        }
    }

    /// The pids of the group: its members and all their descendants.
    pub fn members(snap: &Snapshot, pgid: u32) -> Vec<u32> {
        if pgid == 0 {
            return Vec::new();
        }
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for (pid, p) in snap {
            children.entry(p.ppid).or_default().push(*pid);
        }
        let mut seen: Vec<u32> = snap.iter().filter(|(_, p)| p.pgrp == pgid).map(|(pid, _)| *pid).collect();
        let mut i = 0;
        while i < seen.len() {
            for c in children.get(&seen[i]).into_iter().flatten() {
                if !seen.contains(c) {
                    seen.push(*c);
                }
            }
            i += 1;
        }
        seen
    }

    /// Resident memory of the group's (filtered) processes, MiB (`VmRSS`).
    pub fn rss_mib(snap: &Snapshot, g: &Group) -> f64 {
        selected(snap, g)
            .iter()
            .filter_map(|pid| fs_err::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            })
            .sum::<f64>()
            / 1024.0
    }

    /// The group's processes that pass its filters.
    fn selected(snap: &Snapshot, g: &Group) -> Vec<u32> {
        g.pgids
            .iter()
            .flat_map(|pgid| members(snap, *pgid))
            .filter(|pid| snap.get(pid).is_some_and(|p| g.only.is_none_or(|only| p.comm == only)))
            .filter(|pid| g.not_args.iter().all(|arg| !has_arg(*pid, arg)))
            .collect()
    }

    /// CPU seconds used so far by the group's live processes and the children they
    /// have reaped.
    pub fn seconds(snap: &Snapshot, g: &Group) -> f64 {
        let ticks: u64 = selected(snap, g).iter().filter_map(|pid| snap.get(pid)).map(|p| p.ticks).sum();
        ticks as f64 / ticks_per_second()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let p = cpu::parse_stat("42 (work (er) d) S 7 40 40 0 -1 4194560 1 0 0 0 150 25 3 2 20 0 9 0 1 2 3").unwrap();
        assert_eq!((p.ppid, p.pgrp, p.comm.as_str(), p.ticks), (7, 40, "work (er) d", 180));
    }

    #[test]
    fn our_own_process_uses_cpu() {
        let snap = cpu::snapshot();
        let me = std::process::id();
        assert!(snap.contains_key(&me));
    }

    #[test]
    fn scanning_answers() {
        let page = br#"{"changes":{"entries":{"upserted":[{"id":"a","t":"x \"cursor\""},{"id":"b"}],"deleted":[]}},"cursor":"Q1","has_more":true,"checkpoint":"9"}"#;
        assert_eq!(scan::last_value(page, "cursor"), Some("Q1"));
        assert_eq!(scan::last_value(page, "has_more"), Some("true"));
        assert_eq!(scan::rows(page), 2);
        let pg = br#"{"changes" : {}, "has_more" : false, "next_txid" : "12", "next_id" : "0000", "origin" : "7"}"#;
        assert_eq!(scan::last_value(pg, "has_more"), Some("false"));
        assert_eq!(scan::last_value(pg, "origin"), Some("7"));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let m = Measure { latencies_ms: (1..=100).map(f64::from).collect(), ..Measure::default() };
        assert_eq!(m.percentile(0.5), 50.0);
        assert_eq!(m.percentile(0.99), 99.0);
        assert_eq!(m.percentile(1.0), 100.0);
    }
}
