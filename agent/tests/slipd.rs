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

#[test]
fn check_config_creates_nothing_and_refuses_a_certificate_of_another_agent() {
    use slipway_common::pki::{Ca, Identity};
    let dir = tempfile::tempdir().unwrap();
    let (ca, _key) = Ca::generate().unwrap();
    let issued = ca.issue(&Identity::Agent("web-2".into())).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(dir.path().join("agent.pem"), &issued.cert_pem).unwrap();
    std::fs::write(dir.path().join("agent.key"), &issued.key_pem).unwrap();
    let write = |name: &str| {
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "name = \"{name}\"\nlisten = \"127.0.0.1:0\"\nstate_dir = \"state/deeper\"\nallowed_roots = [\"{}\"]\n\
                 [tls]\nca = \"ca.pem\"\ncert = \"agent.pem\"\nkey = \"agent.key\"\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        config
    };
    let out = slipd(&["check-config", "--config", write("web-1").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("'web-1' does not match") && stderr.contains("agent/web-2"), "{stderr}");
    let out = slipd(&["check-config", "--config", write("web-2").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.path().join("state").exists(), "check-config created the state dir");
    assert!(!dir.path().join("data").exists(), "check-config created an allowed root");
    // A key that is not the certificate's: one message naming the files, no doubled prefix.
    let other = ca.issue(&Identity::Agent("web-2".into())).unwrap();
    std::fs::write(dir.path().join("agent.key"), &other.key_pem).unwrap();
    let out = slipd(&["check-config", "--config", write("web-2").to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("tls.cert") && !stderr.contains("tls: tls:"), "{stderr}");
}
