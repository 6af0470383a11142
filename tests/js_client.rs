//! The TypeScript client (`clients/js`, npm `@edgesync/client`) against the real stack:
//! its Node integration tests (`clients/js/integration/node.test.mjs`: two devices
//! through the fault proxy of `faults.rs`, live updates, token refresh, a 410 rebuild)
//! and the example app in a real browser (`browser.test.mjs`: Debian's Chromium driven
//! by playwright-core, two profiles as two devices of one user).
//!
//! Node's test runner runs them; this test starts the fault proxy, passes the stack's
//! whereabouts in the environment, and fails unless every one of them passed. The
//! client, the example app, Chromium and playwright-core are installed and built when
//! missing, so it never skips.

use edgesync_integration::faults::{FaultProxy, FaultRates};
use edgesync_integration::*;
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

/// The longest the Node run may take (it takes well under a minute).
const TIMEOUT: Duration = Duration::from_secs(300);

/// How many tests the two files hold at least (subtests included): fewer means some
/// were not run.
const AT_LEAST: usize = 12;

#[test]
fn the_typescript_client_and_the_example_app_sync_against_the_stack() {
    let info = stack();
    let paths = xtask::tools::Paths::discover().unwrap();
    let browser = xtask::browser::ensure(&paths).unwrap_or_else(|e| panic!("Chromium / playwright-core: {e}"));
    let js = xtask::jsclient::ensure(&paths).unwrap_or_else(|e| panic!("clients/js and examples/web: {e}"));
    let rates = FaultRates {
        drop_request: 0.1,
        drop_response: 0.1,
        duplicate: 0.1,
        delay: 0.1,
        max_delay: Duration::from_millis(200),
        cut_stream: 0.0,
    };
    let proxy = FaultProxy::start(&info.functions_url, rates, 19);
    let browser_cfg = json!({
        "nodeModules": browser.node_modules,
        "chromium": browser.chromium,
        "args": xtask::browser::CHROMIUM_ARGS,
        "exampleDist": js.example.join("dist"),
    });

    let started = Instant::now();
    let Finished { status, stdout, stderr } = run_to_end(
        Command::new(&js.node.bin)
            .args(["--disable-warning=ExperimentalWarning", "--test", "--test-reporter=tap", "--test-concurrency=1"])
            .args(["integration/node.test.mjs", "integration/browser.test.mjs"])
            .current_dir(&js.dir)
            .env("PATH", &js.node.path)
            .env("EDGESYNC_STACK_DIR", &info.stack_dir)
            .env("EDGESYNC_FAULT_URL", &proxy.url)
            .env("EDGESYNC_BROWSER", browser_cfg.to_string()),
        TIMEOUT,
        "the Node tests",
    );
    eprintln!("{stdout}\n{stderr}");
    let counts =
        xtask::jsclient::node_counts(&stdout).unwrap_or_else(|| panic!("no test summary from node:\n{stdout}"));
    assert!(status.success() && counts.failed == 0, "the Node tests failed ({status}): {counts:?}");
    assert!(counts.passed >= AT_LEAST, "only {} Node tests ran, expected at least {AT_LEAST}", counts.passed);
    let faults = proxy.counts();
    assert!(
        faults.dropped_requests + faults.dropped_responses + faults.duplicated > 0,
        "no fault was injected: {faults:?}"
    );
    eprintln!(
        "js client: {} Node tests passed in {:.1} s; faults {faults:?}",
        counts.passed,
        started.elapsed().as_secs_f64()
    );
}
