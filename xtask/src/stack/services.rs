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

/// The JWKS stand-in (Supabase Auth's `/auth/v1/.well-known/jwks.json`, and its
/// `/auth/v1/health`), axum on a one-thread tokio runtime. Runs until killed.
pub fn serve_jwks(port: u16, file: &Path) -> Result<()> {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", port)).context(format!("could not listen on 127.0.0.1:{port}"))?;
    let body = fs_err::read_to_string(file).context(format!("could not read {}", file.display()))?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move { axum::serve(tokio::net::TcpListener::from_std(listener)?, jwks_app(body)).await })?;
    Ok(())
}

/// The JWKS at its path, any method; every answer JSON, cacheable for 10 minutes, and
/// logged as `<request line> <status>`.
fn jwks_app(jwks: String) -> axum::Router {
    use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
    use axum::http::StatusCode;
    use axum::routing::any;
    fn answer(status: StatusCode, payload: String) -> impl axum::response::IntoResponse {
        (status, [(CONTENT_TYPE, "application/json"), (CACHE_CONTROL, "max-age=600")], payload)
    }
    let log = |req: axum::extract::Request, next: axum::middleware::Next| async move {
        let line = format!("{} {} {:?}", req.method(), req.uri(), req.version());
        let resp = next.run(req).await;
        eprintln!("{line} {}", resp.status().as_u16());
        resp
    };
    axum::Router::new()
        .route("/auth/v1/.well-known/jwks.json", any(move || async move { answer(StatusCode::OK, jwks) }))
        .route(
            "/auth/v1/health",
            any(|| async { answer(StatusCode::OK, "{\"name\":\"edgesync auth stand-in\"}".into()) }),
        )
        .fallback(|| async { answer(StatusCode::NOT_FOUND, "{\"error\":\"not found\"}".into()) })
        .layer(axum::middleware::from_fn(log))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jwks_standin_serves_the_file_and_its_health() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                axum::serve(tokio::net::TcpListener::from_std(listener).unwrap(), jwks_app("{\"keys\":[]}".into()))
                    .await
            })
        });
        let get = |path: &str| match ureq::get(&format!("http://{addr}{path}")).call() {
            Ok(r) | Err(ureq::Error::Status(_, r)) => {
                let head = (
                    r.status(),
                    r.header("content-type").map(str::to_owned),
                    r.header("cache-control").map(str::to_owned),
                );
                (head, r.into_string().unwrap())
            }
            Err(e) => panic!("{path}: {e}"),
        };
        let json = Some("application/json".to_owned());
        let cached = Some("max-age=600".to_owned());
        assert_eq!(
            get("/auth/v1/.well-known/jwks.json"),
            ((200, json.clone(), cached.clone()), "{\"keys\":[]}".into())
        );
        assert_eq!(get("/auth/v1/health").0, (200, json.clone(), cached.clone()));
        assert_eq!(get("/nope"), ((404, json, cached), "{\"error\":\"not found\"}".into()));
        let posted = ureq::post(&format!("http://{addr}/auth/v1/.well-known/jwks.json")).call().unwrap();
        assert_eq!(posted.status(), 200, "any method, as before");
    }
}
