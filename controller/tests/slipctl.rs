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

/// `--help` of every command, against the snapshots in `tests/help/` (so a changed or missing
/// description shows in review). `SLIPWAY_UPDATE_HELP=1 cargo test -p slipway-controller` rewrites them.
#[test]
fn help_of_every_command_matches_its_snapshot() {
    use clap::CommandFactory;
    fn paths(cmd: &clap::Command, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(prefix.clone());
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let mut p = prefix.clone();
            p.push(sub.get_name().to_owned());
            paths(sub, p, out);
        }
    }
    let mut all = Vec::new();
    paths(&slipway_controller::Cli::command(), Vec::new(), &mut all);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/help");
    let update = std::env::var_os("SLIPWAY_UPDATE_HELP").is_some();
    let mut differ = Vec::new();
    for path in &all {
        let out = Command::new(env!("CARGO_BIN_EXE_slipctl"))
            .args(path)
            .arg("--help")
            .env_remove("SLIPWAY_HOME")
            .env("COLUMNS", "100")
            .output()
            .unwrap();
        assert!(out.status.success(), "{path:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("Example"), "slipctl {} --help has no example:\n{text}", path.join(" "));
        let name = if path.is_empty() { "slipctl".to_owned() } else { format!("slipctl-{}", path.join("-")) };
        let file = dir.join(format!("{name}.txt"));
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&file, &text).unwrap();
        } else if std::fs::read_to_string(&file).ok().as_deref() != Some(text.as_str()) {
            differ.push(format!("{name}:\n{text}"));
        }
    }
    assert!(
        differ.is_empty(),
        "help differs from tests/help/ (SLIPWAY_UPDATE_HELP=1 to accept):\n{}",
        differ.join("\n")
    );
}
