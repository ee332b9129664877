//! The `slipd` binary's command line: config errors are exit 2 naming file and key.
//! (Being an integration test, this also makes `cargo test` build `slipd` for the e2e suite.)

use std::process::Command;

fn slipd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_slipd")).args(args).output().unwrap()
}

#[test]
fn bad_config_is_exit_2_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "name = \"web-1\"\nlisten = \"0.0.0.0:7443\"\nstate_dir = \"s\"\nallowed_roots = [\"/data\"]\ncolour = 1\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n").unwrap();
    let out = slipd(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("agent.toml") && stderr.contains("colour"), "{stderr}");

    let out = slipd(&["--config", "/nonexistent/agent.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/agent.toml"));
}

#[test]
fn missing_certificates_fail_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "name = \"web-1\"\nlisten = \"127.0.0.1:0\"\nstate_dir = \"state\"\nallowed_roots = [\"/data\"]\n[tls]\nca = \"ca.pem\"\ncert = \"agent.pem\"\nkey = \"agent.key\"\n").unwrap();
    let out = slipd(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ca.pem"), "{}", String::from_utf8_lossy(&out.stderr));
    let version = slipd(&["--version"]);
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}
