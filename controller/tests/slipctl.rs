//! The `slipctl` binary's command line: usage errors are exit 2, commands need `init` first.
//! (Being an integration test, this also makes `cargo test` build `slipctl` for the e2e suite.)

use std::process::Command;

fn slipctl(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_slipctl")).arg("--home").arg(home).args(args).output().unwrap()
}

#[test]
fn usage_errors_are_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(slipctl(dir.path(), &["deploy"]).status.code(), Some(2));
    assert_eq!(slipctl(dir.path(), &["--output", "yaml", "history"]).status.code(), Some(2));
    assert_eq!(slipctl(dir.path(), &["--help"]).status.code(), Some(0));
}

#[test]
fn commands_before_init_say_to_run_init() {
    let dir = tempfile::tempdir().unwrap();
    let out = slipctl(dir.path(), &["agent", "add", "web-1", "--addr", "127.0.0.1:7443", "--out", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("slipctl init"));
    let out = slipctl(dir.path(), &["init"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("pki/ca.pem").exists());
}
