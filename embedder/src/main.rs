//! `edgesync-embedder --model-dir DIR [--port N] [--dimensions N] [--api-key K]`

use edgesync_embedder::api::{DEFAULT_DIMENSIONS, MAX_DIMENSIONS, NATIVE_DIMENSIONS, SERVED_MODEL};
use edgesync_embedder::faults::Faults;
use edgesync_embedder::model::MiniLm;
use edgesync_embedder::server::{serve, State};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

const USAGE: &str = "\
edgesync-embedder: an OpenAI-compatible embeddings server (all-MiniLM-L6-v2) on 127.0.0.1

  --model-dir DIR   the model files (config.json, model.safetensors, tokenizer.json, ...)
  --port N          port on 127.0.0.1 (default 54325; 0 lets the OS pick)
  --dimensions N    default width of answers, zero-padded (default 1536, at least 384)
  --api-key K       require `Authorization: Bearer K` (also EDGESYNC_EMBEDDER_API_KEY)
  --allow-faults    serve PUT/GET/DELETE /_faults: plan 429/5xx answers (for tests)

  POST /v1/embeddings   GET /v1/models   GET /health
";

struct Args {
    model_dir: PathBuf,
    port: u16,
    dimensions: usize,
    api_key: Option<String>,
    allow_faults: bool,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut model_dir = None;
    let mut port = 54325;
    let mut dimensions = DEFAULT_DIMENSIONS;
    let mut allow_faults = false;
    let mut api_key = std::env::var("EDGESYNC_EMBEDDER_API_KEY").ok().filter(|k| !k.is_empty());
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--model-dir" => model_dir = Some(PathBuf::from(value()?)),
            "--port" => port = value()?.parse().map_err(|_| "--port must be a port number")?,
            "--dimensions" => {
                dimensions = value()?
                    .parse()
                    .ok()
                    .filter(|d| (NATIVE_DIMENSIONS..=MAX_DIMENSIONS).contains(d))
                    .ok_or(format!("--dimensions must be from {NATIVE_DIMENSIONS} to {MAX_DIMENSIONS}"))?
            }
            "--api-key" => api_key = Some(value()?).filter(|k| !k.is_empty()),
            "--allow-faults" => allow_faults = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let model_dir = model_dir.ok_or("--model-dir is required")?;
    Ok(Args { model_dir, port, dimensions, api_key, allow_faults })
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("edgesync-embedder: {e}\n\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    // Listen first (the port is ours at once; /health says 503 while loading).
    let listener = match std::net::TcpListener::bind(("127.0.0.1", args.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("edgesync-embedder: could not listen on 127.0.0.1:{}: {e}", args.port);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let state = Arc::new(State {
        model: OnceLock::new(),
        api_key: args.api_key,
        default_dimensions: args.dimensions,
        faults: args.allow_faults.then(Faults::default),
        inference: Default::default(),
    });
    let serving = {
        let state = state.clone();
        std::thread::spawn(move || serve(listener, state))
    };
    eprintln!("edgesync-embedder: listening on http://{addr}/v1, loading {}", args.model_dir.display());
    let started = Instant::now();
    match MiniLm::load(&args.model_dir) {
        Ok(model) => {
            let _ = state.model.set(model);
            eprintln!(
                "edgesync-embedder: {SERVED_MODEL} loaded in {:.1}s; answers are {} wide{}",
                started.elapsed().as_secs_f64(),
                args.dimensions,
                if state.api_key.is_some() { "; an API key is required" } else { "" }
            );
        }
        Err(e) => {
            eprintln!("edgesync-embedder: {e}");
            return ExitCode::FAILURE;
        }
    }
    let _ = serving.join();
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn options() {
        let a = parse(&["--model-dir", "/m", "--port", "0", "--dimensions", "384", "--api-key", "k"]).unwrap();
        assert_eq!((a.model_dir, a.port, a.dimensions, a.api_key.as_deref()), ("/m".into(), 0, 384, Some("k")));
        assert!(!a.allow_faults);
        let a = parse(&["--model-dir", "/m", "--allow-faults"]).unwrap();
        assert_eq!((a.port, a.dimensions, a.allow_faults), (54325, 1536, true));
        assert!(parse(&[]).is_err());
        assert!(parse(&["--model-dir", "/m", "--dimensions", "100"]).is_err());
        assert!(parse(&["--model-dir"]).is_err());
        assert!(parse(&["--model-dir", "/m", "--bogus"]).is_err());
    }
}
