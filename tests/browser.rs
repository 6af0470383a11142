//! CORS in a real browser: headless Chromium (Debian's `chromium`), driven by
//! playwright-core from `tests/browser/cors.mjs`, loads a page from another local
//! origin and calls `/sync`, `/upload` and `/search` with a bearer token, through the
//! gateway and on the embeddings Worker alone, and reads an error's JSON body and its
//! `x-request-id` (exposed). The same calls from a page on a disallowed origin
//! (`blocked.test`, mapped to 127.0.0.1) are blocked by the browser.
//!
//! Chromium and playwright-core are installed by `cargo xtask setup` (and `test`);
//! this test installs them too when they are missing, so it never skips.

use edgesync_integration::*;
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

/// The longest the browser run may take (it takes a few seconds).
const TIMEOUT: Duration = Duration::from_secs(180);

#[test]
fn a_browser_on_an_allowed_origin_can_call_and_a_disallowed_one_is_blocked() {
    let info = stack();
    let paths = xtask::tools::Paths::discover().unwrap();
    let browser = xtask::browser::ensure(&paths).unwrap_or_else(|e| panic!("Chromium / playwright-core: {e}"));
    let (_, token) = new_user(&info);
    let embed = info.cron("embed_entry").expect("the stack serves embed_entry alone");
    let cfg = json!({
        "nodeModules": browser.node_modules,
        "chromium": browser.chromium,
        "args": xtask::browser::CHROMIUM_ARGS,
        "functionsUrl": info.functions_url,
        "embedEntryUrl": format!("http://127.0.0.1:{}", embed.port),
        "token": token,
        "clientId": uuid(),
        "entryId": uuid(),
    });

    let started = Instant::now();
    let Finished { status, stdout, stderr } = run_to_end(
        Command::new(&browser.node)
            .arg(browser.scripts.join("cors.mjs"))
            .arg(cfg.to_string())
            .current_dir(&browser.scripts),
        TIMEOUT,
        "the browser run",
    );
    assert!(status.success(), "cors.mjs failed ({status}):\n{stderr}\n{stdout}");
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    eprintln!(
        "browser: {} ran the page calls in {} ms ({:.1} s with node and the launch)",
        report["chromium"],
        report["elapsed_ms"],
        started.elapsed().as_secs_f64()
    );

    let allowed = &report["allowed"];
    assert!(allowed["origin"].as_str().unwrap().starts_with("http://127.0.0.1:"), "{allowed}");
    assert_ne!(allowed["origin"].as_str().unwrap(), info.functions_url, "the page must be on another origin");
    let call = |name: &str| -> &Value {
        allowed["results"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("{name}"))
    };
    let read = |name: &str, status: u64| -> &Value {
        let r = call(name);
        assert_eq!(r["status"], status, "{name}: {r}");
        assert!(r["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{name}: x-request-id not exposed: {r}");
        r
    };
    assert!(read("sync", 200)["body"]["cursor"].is_string());
    let upload = read("upload", 200);
    assert_eq!(upload["body"]["results"][0]["status"], "applied", "{upload}");
    assert!(read("search", 200)["body"]["results"].is_array());
    assert!(read("search_alone", 200)["body"]["results"].is_array());
    read("health", 200);
    // Error answers are readable: status, JSON body and the exposed request id.
    for (name, status, code) in [("invalid_sync", 400, "invalid_parameter"), ("no_token", 401, "missing_token")] {
        let r = read(name, status);
        assert_eq!(r["body"]["error"]["code"], code, "{r}");
        assert_eq!(r["body"]["error"]["request_id"], r["request_id"], "{r}");
    }

    let blocked = &report["blocked"];
    assert!(blocked["origin"].as_str().unwrap().starts_with("http://blocked.test:"), "{blocked}");
    let results = blocked["results"].as_array().unwrap();
    assert_eq!(results.len(), allowed["results"].as_array().unwrap().len());
    for r in results {
        assert_eq!(r["rejected"], "TypeError", "a disallowed origin must be blocked: {r}");
        assert!(r.get("status").is_none(), "{r}");
    }
}
