//! The CLI writes to a stdout whose reader has gone (`edgesync-client … | head`) and
//! must stop quietly: no panic message, no backtrace, a successful exit.

use std::process::{Command, Stdio};

#[test]
fn a_closed_stdout_ends_the_cli_quietly() {
    // The read end is closed before the child starts, so its first write fails with
    // EPIPE deterministically (no race with a reader closing later).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_edgesync-client"))
        .arg("help")
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "the CLI panicked on a closed stdout:\n{stderr}");
    assert!(stderr.is_empty(), "expected no output on stderr, got:\n{stderr}");
    assert!(out.status.success(), "exit status {:?}, stderr:\n{stderr}", out.status);
}

#[test]
fn an_open_stdout_still_gets_the_output() {
    let out = Command::new(env!("CARGO_BIN_EXE_edgesync-client")).arg("help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("edgesync-client"), "{out:?}");
}
