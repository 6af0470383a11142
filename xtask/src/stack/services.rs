//! The stand-ins the stack runs beside Postgres and the Workers: Supabase Auth's JWKS
//! endpoint and the local embeddings server.

use super::*;

/// The auth stand-in: this xtask binary serving the JWKS at Supabase Auth's path.
pub(super) fn start_auth_standin(info: &mut StackInfo) -> Result<()> {
    let jwks_file = info.stack_dir.join("jwks.json");
    fs_err::write(&jwks_file, keys::public_jwks(&info.es256_key).to_string())?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["serve-jwks", "--port", &info.ports.auth.to_string(), "--file"]).arg(&jwks_file);
    info.pids.auth = procs::spawn(cmd, &info.logs_dir.join("auth.log"), None)?;
    let url = info.jwks_url.clone();
    wait_for("the JWKS endpoint", Duration::from_secs(10), || Ok(http_status(&url).filter(|s| *s == 200).map(|_| ())))
}

/// Start the embeddings server (it listens at once and loads the model in the background).
pub(super) fn spawn_embedder(info: &mut StackInfo) -> Result<()> {
    let mut cmd = Command::new(&info.embedder_bin);
    cmd.arg("--model-dir")
        .arg(&info.model_dir)
        .args(["--port", &info.ports.embeddings.to_string()])
        // Tests plan 429s and 500s through PUT /_faults (loopback only, like everything here).
        .arg("--allow-faults")
        .env_remove("EDGESYNC_EMBEDDER_API_KEY");
    info.pids.embedder = procs::spawn(cmd, &info.logs_dir.join("embedder.log"), None)?;
    Ok(())
}

/// Wait until the embeddings server says its model is loaded.
pub(super) fn wait_for_embedder(info: &StackInfo) -> Result<()> {
    let pid = info.pids.embedder;
    let log = info.logs_dir.join("embedder.log");
    let url = format!("http://127.0.0.1:{}/health", info.ports.embeddings);
    wait_for("the embeddings server to load its model", Duration::from_secs(60), || {
        if !procs::alive(pid) {
            bail!("the embeddings server exited:\n{}", tail(&log, 20));
        }
        Ok(http_status(&url).filter(|s| *s == 200).map(|_| ()))
    })
}

/// Minimal HTTP server for the JWKS (the stand-in for Supabase Auth's
/// `/auth/v1/.well-known/jwks.json`). Runs until killed.
pub fn serve_jwks(port: u16, file: &Path) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", port)).context(format!("could not listen on 127.0.0.1:{port}"))?;
    let body = fs_err::read_to_string(file).context(format!("could not read {}", file.display()))?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut reader = BufReader::new(match stream.try_clone() {
            Ok(s) => s,
            Err(_) => continue,
        });
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).is_err() {
            continue;
        }
        // Drain the headers.
        let mut line = String::new();
        while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
            line.clear();
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("");
        let (status, payload) = if path == "/auth/v1/.well-known/jwks.json" {
            ("200 OK", body.as_str())
        } else if path == "/auth/v1/health" {
            ("200 OK", "{\"name\":\"edgesync auth stand-in\"}")
        } else {
            ("404 Not Found", "{\"error\":\"not found\"}")
        };
        eprintln!("{} {}", request_line.trim(), &status[..3]);
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncache-control: max-age=600\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{payload}",
            payload.len()
        );
    }
    Ok(())
}
