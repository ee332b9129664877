//! The `.deb`s (issue #22): built with `cargo deb` from the binaries under test, installed with
//! `dpkg -i` into a clean Debian root made by `mmdebstrap` from Debian's packages; the binaries
//! run there, the units pass `systemd-analyze verify`, the maintainer scripts make what the code
//! expects (modes, the server's user and home) and start nothing, a removal keeps `/etc/slipway`
//! and a purge removes it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use slipway_tests::{bin, is_root, require};

fn have(program: &[&str]) -> bool {
    Command::new(program[0]).args(&program[1..]).output().is_ok_and(|o| o.status.success())
}

fn run(c: &mut Command) -> Output {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `cargo deb` for `package`, from the binaries the tests run; the path of the `.deb`.
fn build_deb(package: &str, out_dir: &Path) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = bin("slipd");
    let profile = built.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
    let profile = if profile == "debug" { "dev".to_owned() } else { profile };
    let out = run(Command::new("cargo")
        .current_dir(&workspace)
        .args(["deb", "-p", package, "--no-build", "--fast", "--strip", "--profile", &profile, "-o"])
        .arg(out_dir));
    let deb = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").trim().to_owned();
    assert!(deb.ends_with(".deb"), "cargo deb said: {}", text(&out));
    PathBuf::from(deb)
}

fn codename() -> String {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    release.lines().find_map(|l| l.strip_prefix("VERSION_CODENAME=")).unwrap_or("bookworm").trim_matches('"').to_owned()
}

#[test]
fn debs_install_into_a_clean_debian_root_run_and_purge_cleanly() {
    let ok = is_root()
        && have(&["cargo", "deb", "--version"])
        && have(&["mmdebstrap", "--version"])
        && have(&["dpkg", "--version"]);
    if !require("root, cargo-deb, mmdebstrap and dpkg", ok) {
        return;
    }
    let dir = tempfile::Builder::new().prefix("slipway-deb-").tempdir().unwrap();
    let debs = dir.path().join("debs");
    let slipd = build_deb("slipway-agent", &debs);
    let slipctl = build_deb("slipway-controller", &debs);
    for deb in [&slipd, &slipctl] {
        let size = std::fs::metadata(deb).unwrap().len();
        eprintln!("{}: {} KiB", deb.display(), size / 1024);
    }
    if have(&["lintian", "--version"]) {
        let out = Command::new("lintian").args(["--tag-display-limit", "0"]).args([&slipd, &slipctl]).output().unwrap();
        let tags: Vec<String> =
            text(&out).lines().filter(|l| l.starts_with("E: ") || l.starts_with("W: ")).map(str::to_owned).collect();
        assert!(tags.is_empty(), "lintian: {tags:#?}");
    }

    // A clean Debian root from Debian's packages (the host's release), with what the packages
    // depend on beyond the C library.
    let root = dir.path().join("root");
    run(Command::new("mmdebstrap")
        .args(["--quiet", "--variant=minbase", "--include=adduser,git,tzdata"])
        .arg(codename())
        .arg(&root));
    let inside = |args: &[&str]| -> Output { run(Command::new("chroot").arg(&root).args(args)) };
    for deb in [&slipd, &slipctl] {
        std::fs::copy(deb, root.join("tmp").join(deb.file_name().unwrap())).unwrap();
    }
    let name = |p: &Path| format!("/tmp/{}", p.file_name().unwrap().to_string_lossy());
    let installed = inside(&["dpkg", "-i", &name(&slipd), &name(&slipctl)]);
    let said = text(&installed);
    assert!(said.contains("slipd: not configured yet"), "{said}");

    // The binaries run there.
    assert!(text(&inside(&["slipd", "--version"])).starts_with("slipd "));
    assert!(text(&inside(&["slipctl", "--version"])).starts_with("slipctl "));

    // What the code expects: the agent's state 0700 root; the server's user and its home,
    // initialised (the CA), 0700 and its own; the example config a conffile.
    let mode = |p: &str| std::fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("var/lib/slipway"), 0o700);
    assert_eq!(mode("etc/slipway/agent.toml.example"), 0o644);
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let user = passwd.lines().find(|l| l.starts_with("slipctl:")).expect("the slipctl user");
    assert!(user.ends_with(":/var/lib/slipctl:/usr/sbin/nologin"), "{user}");
    let uid: u32 = user.split(':').nth(2).unwrap().parse().unwrap();
    assert_eq!(mode("var/lib/slipctl"), 0o700);
    assert_eq!(std::fs::metadata(root.join("var/lib/slipctl/pki/ca.pem")).unwrap().uid(), uid);
    let conffiles = text(&inside(&["dpkg-query", "-W", "-f=${Conffiles}\n", "slipd", "slipctl"]));
    assert!(conffiles.contains("/etc/slipway/agent.toml.example"), "{conffiles}");
    assert!(conffiles.contains("/etc/default/slipctl"), "{conffiles}");
    // The shipped example loads with the agent's own loader.
    let example = std::fs::read_to_string(root.join("etc/slipway/agent.toml.example")).unwrap();
    slipway_common::config::AgentConfig::parse(&example, "agent.toml.example", Path::new("/etc/slipway")).unwrap();

    // The units pass `systemd-analyze verify` (their binaries pointed at the root's).
    let units = dir.path().join("units");
    std::fs::create_dir_all(&units).unwrap();
    for unit in ["slipd.service", "slipd-hardened.service", "slipctl.service"] {
        let text = std::fs::read_to_string(root.join("lib/systemd/system").join(unit)).unwrap();
        let text = text.replace("/usr/bin/", &format!("{}/", root.join("usr/bin").display()));
        std::fs::write(units.join(unit), text).unwrap();
        run(Command::new("systemd-analyze").arg("verify").arg(units.join(unit)));
    }

    // A removal keeps /etc/slipway (the conffile, and an identity `slipd join` wrote) and the
    // agent's state; a purge removes them.
    std::fs::write(root.join("etc/slipway/agent.toml"), "name = \"web-1\"\n").unwrap();
    inside(&["dpkg", "-r", "slipd"]);
    assert!(!root.join("usr/bin/slipd").exists());
    assert!(root.join("etc/slipway/agent.toml.example").exists(), "a removal keeps the conffile");
    assert!(root.join("etc/slipway/agent.toml").exists());
    assert!(root.join("var/lib/slipway").exists());
    inside(&["dpkg", "-P", "slipd"]);
    assert!(!root.join("etc/slipway").exists(), "a purge removes /etc/slipway");
    assert!(!root.join("var/lib/slipway").exists());
    inside(&["dpkg", "-P", "slipctl"]);
    assert!(!root.join("var/lib/slipctl").exists());
    assert!(!root.join("etc/default/slipctl").exists());
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(!passwd.contains("slipctl:"), "the purge removes the user");
}
