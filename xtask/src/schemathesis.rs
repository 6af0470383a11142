//! Hostile input for `cargo xtask test`: schemathesis (PyPI, pinned) in its own venv in
//! the tool cache, run against the test stack's `/openapi.json`.
//!
//! Bounded runs (see [`plans`]): with a user's token (the user endpoints), with a
//! well-formed token signed with the wrong key (every endpoint), with the service-role
//! key and with the webhook secret (the endpoints that accept them). Checks: no 5xx, status codes,
//! content types, headers and bodies as documented, and a response time limit. While
//! it runs, an empty Neo4j answers on the stack's Neo4j port (nothing else serves it
//! outside the integration tests), so `source: neo4j` completes instead of 502.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xtask::stack::StackInfo;
use xtask::tools::Paths;
use xtask::util::{lock_file, step, Context, Error, Result};
use xtask::{keys, tools};

pub const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// Test cases per operation and phase in `cargo xtask test` (`--schemathesis-examples N`
/// or `EDGESYNC_SCHEMATHESIS_EXAMPLES` for a longer run).
pub const DEFAULT_EXAMPLES: u32 = 60;
pub const EXAMPLES_ENV: &str = "EDGESYNC_SCHEMATHESIS_EXAMPLES";
/// The slowest answer accepted, in seconds.
pub const MAX_RESPONSE_TIME_SECS: u32 = 5;
/// What every response is checked for.
pub const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance";

fn venv(paths: &Paths) -> PathBuf {
    paths.cache.join(format!("venv-schemathesis-{SCHEMATHESIS_VERSION}"))
}

/// The `st` executable, installing schemathesis into its venv first when it is not
/// there. Fast when installed: one marker file is checked.
pub fn ensure(paths: &Paths) -> Result<PathBuf> {
    let venv = venv(paths);
    let st = venv.join("bin/st");
    if venv.join(".installed").is_file() && st.is_file() {
        return Ok(st);
    }
    let _lock = lock_file(&paths.cache.join(".lock"))?;
    if venv.join(".installed").is_file() && st.is_file() {
        return Ok(st);
    }
    step(format!("installing schemathesis {SCHEMATHESIS_VERSION} into {}", venv.display()));
    tools::pip_install(&venv, &format!("schemathesis=={SCHEMATHESIS_VERSION}"))?;
    let version = xtask::util::output(Command::new(&st).arg("--version"))?;
    if !version.contains(SCHEMATHESIS_VERSION) {
        return Err(Error(format!("{} --version says {version:?}, expected {SCHEMATHESIS_VERSION}", st.display())));
    }
    fs_err::write(venv.join(".installed"), "")?;
    Ok(st)
}

/// One schemathesis invocation: which operations, with which credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub name: &'static str,
    /// `--include-path-regex`.
    pub paths: &'static str,
    /// Extra request headers (`-H name: value`).
    pub headers: Vec<(String, String)>,
    /// Let schemathesis make up values for security parameters (`x-webhook-secret`).
    pub generate_auth: bool,
    /// Test cases per operation and phase.
    pub examples: u32,
}

/// The runs: a user, a wrong key, the service role, the webhook secret.
pub fn plans(info: &StackInfo, examples: u32) -> Result<Vec<Plan>> {
    let user = keys::random_uuid();
    let user_token = keys::sign_hs256(&info.jwt_secret, &keys::user_claims(&user, &info.jwt_issuer, 3600))?;
    // Well-formed and unexpired, but signed with another secret.
    let forged = keys::sign_hs256(
        "not-the-stack-secret-not-the-stack-secret",
        &keys::user_claims(&user, &info.jwt_issuer, 3600),
    )?;
    let bearer = |t: &str| vec![("Authorization".to_owned(), format!("Bearer {t}"))];
    let mut plans = vec![
        Plan {
            name: "user token",
            paths: "^/(health|openapi\\.json|sync|live|upload|populate|search|write-checkpoint2\\.json)$",
            headers: bearer(&user_token),
            generate_auth: false,
            examples,
        },
        Plan {
            name: "invalid token",
            paths: ".*",
            headers: bearer(&forged),
            generate_auth: true,
            examples: (examples / 3).max(5),
        },
        Plan {
            name: "service role",
            paths: "^/(populate|embed_entry|embed_entry/drain)$",
            headers: bearer(&info.service_role_key),
            generate_auth: false,
            examples: (examples / 2).max(5),
        },
    ];
    if !info.embed_webhook_secret.is_empty() {
        plans.push(Plan {
            name: "webhook secret",
            paths: "^/(embed_entry|embed_entry/drain)$",
            headers: vec![("x-webhook-secret".to_owned(), info.embed_webhook_secret.clone())],
            generate_auth: false,
            examples: (examples / 3).max(5),
        });
    }
    if !info.live_poke_secret.is_empty() {
        plans.push(Plan {
            name: "live poke secret",
            paths: "^/live/poke$",
            headers: vec![(edgesync_shared::live::POKE_SECRET_HEADER.to_owned(), info.live_poke_secret.clone())],
            generate_auth: false,
            examples: (examples / 3).max(5),
        });
    }
    Ok(plans)
}

/// The command line of one run (tokens are passed as they are; they are the test
/// stack's own, valid for an hour).
pub fn command(st: &Path, schema: &Path, functions_url: &str, plan: &Plan) -> Command {
    let mut cmd = Command::new(st);
    cmd.arg("run")
        .arg(schema)
        .args(["--url", functions_url])
        .args(["--checks", CHECKS])
        .args(["--max-response-time", &MAX_RESPONSE_TIME_SECS.to_string()])
        .args(["--max-examples", &plan.examples.to_string()])
        .args(["--include-path-regex", plan.paths])
        .args(["--generation-with-security-parameters", if plan.generate_auth { "true" } else { "false" }])
        .args(["--generation-database", "none", "--request-timeout", "30", "--continue-on-failure", "--no-color"])
        .args(["--suppress-health-check", "too_slow,filter_too_much"]);
    for (name, value) in &plan.headers {
        cmd.args(["-H", &format!("{name}: {value}")]);
    }
    cmd
}

/// The command as printed: credentials elided.
pub fn shown(cmd: &Command) -> String {
    let mut out = cmd.get_program().to_string_lossy().into_owned();
    let mut after_header = false;
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        let a = if after_header {
            match a.split_once(':') {
                Some((name, _)) => format!("'{name}: …'"),
                None => a.into_owned(),
            }
        } else if a.contains(['*', '(', '|', '^', '$', ' ']) {
            format!("'{a}'")
        } else {
            a.into_owned()
        };
        after_header = a == "-H";
        out.push(' ');
        out.push_str(&a);
    }
    out
}

/// `N generated` from schemathesis' summary (`Test cases:\n  N generated, ...`).
pub fn cases_generated(output: &str) -> Option<u64> {
    output.lines().find_map(|line| {
        let (n, rest) = line.trim().split_once(' ')?;
        rest.starts_with("generated").then(|| n.parse().ok()).flatten()
    })
}

/// The API description as fuzzed: the served `/openapi.json`, with `/sync`'s `wait`
/// bounded to 1 s. Each generated long-poll of a user with nothing to pull would
/// otherwise hold its answer for up to 55 s, past the response time limit; the waits
/// themselves are tested in `tests/live.rs`.
pub fn fuzzed_schema(served: &str) -> Result<String> {
    let mut doc: serde_json::Value = serde_json::from_str(served).context("/openapi.json is not JSON")?;
    let params = doc
        .pointer_mut("/paths/~1sync/get/parameters")
        .and_then(|p| p.as_array_mut())
        .context("/openapi.json has no parameters for GET /sync")?;
    let wait =
        params.iter_mut().find(|p| p["name"] == "wait").context("/openapi.json documents no `wait` for GET /sync")?;
    wait["schema"]["maximum"] = serde_json::json!(1);
    Ok(doc.to_string())
}

/// What the runs found.
pub struct Outcome {
    pub ok: bool,
    pub cases: u64,
    pub elapsed: Duration,
}

/// Every plan against the running stack; their output passes through.
pub fn run_all(paths: &Paths, info: &StackInfo, examples: u32) -> Result<Outcome> {
    let st = ensure(paths)?;
    let started = Instant::now();
    let _neo4j = EmptyNeo4j::serve(info)?;
    let dir = info.stack_dir.join("schemathesis");
    fs_err::create_dir_all(&dir)?;
    let served = ureq::get(&format!("{}/openapi.json", info.functions_url))
        .call()
        .map_err(|e| Error(format!("GET /openapi.json: {e}")))?
        .into_string()?;
    let schema = dir.join("openapi.json");
    fs_err::write(&schema, fuzzed_schema(&served)?)?;
    let mut ok = true;
    let mut cases = 0;
    for plan in plans(info, examples)? {
        let mut cmd = command(&st, &schema, &info.functions_url, &plan);
        cmd.current_dir(&dir);
        step(format!("schemathesis ({}): {}", plan.name, shown(&cmd)));
        let (success, output) = pass_through(&mut cmd)?;
        let n = cases_generated(&output);
        step(format!(
            "schemathesis ({}): {} test cases, {}",
            plan.name,
            n.map_or("an unknown number of".into(), |n| n.to_string()),
            if success { "no failures" } else { "FAILED" }
        ));
        cases += n.unwrap_or(0);
        ok &= success && n.is_some();
    }
    Ok(Outcome { ok, cases, elapsed: started.elapsed() })
}

fn pass_through(cmd: &mut Command) -> Result<(bool, String)> {
    let mut child = cmd.stdout(Stdio::piped()).spawn().context("could not start schemathesis")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut all = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        all.push_str(&line);
        all.push('\n');
    }
    Ok((child.wait()?.success(), all))
}

/// A Neo4j Query API that has no nodes: every query answers 202 with no rows. Served on
/// the stack's Neo4j port while schemathesis runs, when the stack points there.
struct EmptyNeo4j {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The answer to every query.
pub const EMPTY_NEO4J_ANSWER: &str = r#"{"data":{"fields":["id"],"values":[]},"bookmarks":[]}"#;

impl EmptyNeo4j {
    fn serve(info: &StackInfo) -> Result<Option<EmptyNeo4j>> {
        if info.neo4j_url != format!("http://127.0.0.1:{}", info.ports.neo4j) {
            return Ok(None); // a real Neo4j (EDGESYNC_NEO4J_URL)
        }
        let listener = TcpListener::bind(("127.0.0.1", info.ports.neo4j))
            .context(format!("could not serve an empty Neo4j on port {}", info.ports.neo4j))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        std::thread::spawn(move || {
                            let _ = answer_empty(conn);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Some(EmptyNeo4j { stop, thread: Some(thread) }))
    }
}

impl Drop for EmptyNeo4j {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Read one HTTP request (head and `Content-Length` body) and answer it.
fn answer_empty(mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    write!(
        conn,
        "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{EMPTY_NEO4J_ANSWER}",
        EMPTY_NEO4J_ANSWER.len()
    )?;
    conn.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_number_of_cases_is_read_from_the_summary() {
        let out = "Test cases:\n  253 generated, 8 found 8 unique failures\n\nSeed: 1\n";
        assert_eq!(cases_generated(out), Some(253));
        assert_eq!(cases_generated("Test cases:\n  1204 generated, 1204 passed\n"), Some(1204));
        assert_eq!(cases_generated("nothing here"), None);
    }

    #[test]
    fn printed_commands_hide_credentials() {
        let plan = Plan {
            name: "t",
            paths: "^/(sync)$",
            headers: vec![("Authorization".into(), "Bearer secret.token.here".into())],
            generate_auth: false,
            examples: 7,
        };
        let cmd = command(Path::new("/x/st"), Path::new("/x/openapi.json"), "http://127.0.0.1:1", &plan);
        let s = shown(&cmd);
        assert!(!s.contains("secret.token"), "{s}");
        assert!(s.contains("'Authorization: …'"), "{s}");
        assert!(s.contains("--max-examples 7") && s.contains("--checks not_a_server_error"), "{s}");
        assert!(s.contains("--max-response-time 5"), "{s}");
    }

    #[test]
    fn the_fuzzed_schema_bounds_the_long_poll_and_nothing_else() {
        let served = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.yaml"));
        let served: serde_json::Value = serde_yaml::from_str(served).unwrap();
        let fuzzed: serde_json::Value = serde_json::from_str(&fuzzed_schema(&served.to_string()).unwrap()).unwrap();
        let wait = |doc: &serde_json::Value| {
            doc.pointer("/paths/~1sync/get/parameters")
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "wait")
                .cloned()
                .unwrap()
        };
        assert_eq!(wait(&served)["schema"]["maximum"], 55);
        assert_eq!(wait(&fuzzed)["schema"]["maximum"], 1);
        let mut back = fuzzed.clone();
        *back.pointer_mut("/paths/~1sync/get/parameters").unwrap() =
            served.pointer("/paths/~1sync/get/parameters").unwrap().clone();
        assert_eq!(back, served, "only `wait` changes");
        assert!(fuzzed_schema("{}").is_err());
    }

    #[test]
    fn the_empty_neo4j_answers_a_query() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || answer_empty(listener.accept().unwrap().0).unwrap());
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let body = r#"{"statement":"MATCH (n) RETURN n","parameters":{}}"#;
        write!(c, "POST /db/neo4j/query/v2 HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            .unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        server.join().unwrap();
        assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
        assert!(answer.ends_with(EMPTY_NEO4J_ANSWER), "{answer}");
    }
}
