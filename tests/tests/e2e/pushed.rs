//! Builds made by CI (issue #24 item 3): `slipctl artifact push` of a WAR, a tarball and a
//! directory, shipped with `deploy --artifact` and promoted on; names taken once; a digest that
//! does not match, hostile archives and a foreign token refused with nothing kept.

use slipway_common::archive::testing::{RawEntry, compress, raw_tar, sha256_hex};
use slipway_tests::{Fleet, Repo};

/// Project `site`: test on web-1 (its layer), prod on web-2 (takes only what ran in test).
fn setup(fleet: &Fleet) {
    let repo = Repo::new(fleet.path().join("site"));
    repo.write("index.html", "from git\n");
    repo.commit("v1");
    let layer = fleet.path().join("layers/test");
    std::fs::create_dir_all(&layer).unwrap();
    std::fs::write(layer.join("app.properties"), "env=test\n").unwrap();
    let file = fleet.path().join("site.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"site\"\nrepo = \"{repo}\"\n\
             [target]\ndeploy_to = \"{root}/{{host}}/site\"\ncurrent = \"{root}/{{host}}/www/site\"\n\
             [env.test]\nhosts = [\"web-1\"]\nconfig_dir = \"layers/test\"\n\
             [env.prod]\nhosts = [\"web-2\"]\npromote_from = \"test\"\n\
             [[webhook]]\nartifact = \"1.0.*\"\nenv = \"test\"\n",
            repo = repo.path.display(),
            root = fleet.path().join("hosts").display(),
        ),
    )
    .unwrap();
    fleet.slipctl(&["project", "apply", "-f", file.to_str().unwrap()]).ok();
}

fn listed(fleet: &Fleet) -> Vec<String> {
    let list = fleet.slipctl(&["--output", "json", "artifact", "list", "site"]).ok().json();
    list.as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn a_war_a_tarball_and_a_directory_ship_as_pushed_and_names_are_taken_once() {
    let fleet = Fleet::new(2);
    setup(&fleet);
    let war = fleet.path().join("shop.war");
    let war_bytes: Vec<u8> =
        b"PK\x03\x04 a WAR is a zip".iter().copied().chain((0..5000u32).map(|i| (i * 7) as u8)).collect();
    std::fs::write(&war, &war_bytes).unwrap();
    let commit = "3f2a91c0ffee";
    let pushed = fleet
        .slipctl(&[
            "--output",
            "json",
            "artifact",
            "push",
            "site",
            war.to_str().unwrap(),
            "--name",
            "1.4.2",
            "--commit",
            commit,
        ])
        .ok()
        .json();
    assert_eq!(pushed["kind"], "file");
    assert_eq!(pushed["pushed_sha256"], sha256_hex(&war_bytes));
    let deployed = fleet.slipctl(&["--output", "json", "deploy", "site", "test", "--artifact", "1.4.2"]).ok().json();
    let current = fleet.current("web-1", "site");
    assert_eq!(std::fs::read(current.join("shop.war")).unwrap(), war_bytes, "the release holds the WAR as pushed");
    assert_eq!(std::fs::read_to_string(current.join("app.properties")).unwrap(), "env=test\n", "with test's layer");
    assert!(!current.join("index.html").exists(), "nothing from git");
    assert_eq!(deployed["built"]["artifact"], "1.4.2");
    assert_eq!(deployed["built"]["sha256"], pushed["sha256"]);
    assert_eq!(deployed["commit"], commit);
    assert!(deployed["release"].as_str().unwrap().ends_with(&commit[..7]), "{deployed}");
    // It ran in test, so prod takes it, by name or as test's.
    let prod = fleet.slipctl(&["--output", "json", "deploy", "site", "prod", "--artifact", "1.4.2"]).ok().json();
    assert_eq!(prod["built"]["sha256"], pushed["sha256"]);
    assert_eq!(std::fs::read(fleet.current("web-2", "site").join("shop.war")).unwrap(), war_bytes);

    // The name is taken: a second push is refused (busy), whatever it holds.
    std::fs::write(&war, b"PK\x03\x04 another").unwrap();
    let again = fleet.slipctl(&["artifact", "push", "site", war.to_str().unwrap(), "--name", "1.4.2"]).code(3);
    assert!(again.stderr.contains("already has an artifact named '1.4.2'"), "{}", again.stderr);
    assert_eq!(std::fs::read(current.join("shop.war")).unwrap(), war_bytes);

    // A tarball (CI's `tar czf dist.tgz -C dist .`) unpacks as a tree; so does a directory.
    let dist = fleet.path().join("dist");
    std::fs::create_dir_all(dist.join("static")).unwrap();
    std::fs::write(dist.join("index.html"), "built by CI\n").unwrap();
    std::fs::write(dist.join("static/app.js"), "console.log(1)\n").unwrap();
    std::os::unix::fs::symlink("static/app.js", dist.join("app.js")).unwrap();
    let tgz = fleet.path().join("dist.tgz");
    let tar = std::process::Command::new("tar")
        .args(["czf", tgz.to_str().unwrap(), "-C", dist.to_str().unwrap(), "."])
        .status()
        .unwrap();
    assert!(tar.success());
    let from_tgz = fleet
        .slipctl(&["--output", "json", "artifact", "push", "site", tgz.to_str().unwrap(), "--name", "build-812"])
        .ok()
        .json();
    assert_eq!(from_tgz["kind"], "tar");
    let from_dir = fleet
        .slipctl(&["--output", "json", "artifact", "push", "site", dist.to_str().unwrap(), "--name", "build-813"])
        .ok()
        .json();
    assert_eq!(from_dir["kind"], "dir");
    assert_eq!(from_tgz["sha256"], from_dir["sha256"], "the same tree, the same build digest");
    fleet.slipctl(&["deploy", "site", "test", "--artifact", "build-812"]).ok();
    assert_eq!(std::fs::read_to_string(current.join("index.html")).unwrap(), "built by CI\n");
    assert_eq!(std::fs::read_link(current.join("app.js")).unwrap().to_str(), Some("static/app.js"));
    assert_eq!(listed(&fleet), ["build-813", "build-812", "1.4.2"]);

    // Bad input, nothing kept: a digest that does not match, a name that is not one, a commit
    // that is not one, an unknown artifact.
    let bad_sha = fleet
        .slipctl(&["artifact", "push", "site", tgz.to_str().unwrap(), "--name", "x1", "--sha256", &"0".repeat(64)])
        .code(2);
    assert!(bad_sha.stderr.contains("not the 0000"), "{}", bad_sha.stderr);
    let bad_name = fleet.slipctl(&["artifact", "push", "site", tgz.to_str().unwrap(), "--name", "../x"]).code(2);
    assert!(bad_name.stderr.contains("is not an artifact name"), "{}", bad_name.stderr);
    let bad_commit =
        fleet.slipctl(&["artifact", "push", "site", tgz.to_str().unwrap(), "--name", "x2", "--commit", "main"]).code(2);
    assert!(bad_commit.stderr.contains("is not a commit id"), "{}", bad_commit.stderr);
    let unknown = fleet.slipctl(&["deploy", "site", "test", "--artifact", "9.9.9"]).code(2);
    assert!(unknown.stderr.contains("no artifact named '9.9.9'"), "{}", unknown.stderr);
    assert_eq!(listed(&fleet).len(), 3);
}

#[test]
fn hostile_archives_are_refused_at_push_with_nothing_kept() {
    let fleet = Fleet::new(1);
    setup(&fleet);
    let cases: Vec<(&str, Vec<RawEntry>, &str)> = vec![
        ("dotdot", vec![RawEntry::file("../evil", 0o644, b"x")], "'..' component"),
        ("absolute", vec![RawEntry::file("/etc/cron.d/evil", 0o644, b"x")], "absolute"),
        (
            "hardlink",
            vec![RawEntry::file("a", 0o644, b"x"), RawEntry::other("b", tar::EntryType::Link, "a")],
            "hard link",
        ),
        ("device", vec![RawEntry::other("null", tar::EntryType::Char, "")], "device"),
        (
            "escape",
            vec![RawEntry::symlink("out", "../../../etc"), RawEntry::file("out/passwd", 0o644, b"x")],
            "refused",
        ),
        ("dup", vec![RawEntry::file("a", 0o644, b"x"), RawEntry::file("a", 0o644, b"y")], "refused"),
    ];
    for (name, entries, why) in cases {
        let path = fleet.path().join(format!("{name}.tar.zst"));
        std::fs::write(&path, compress(&raw_tar(&entries))).unwrap();
        let run = fleet.slipctl(&["artifact", "push", "site", path.to_str().unwrap(), "--name", name]);
        assert_ne!(run.code, 0, "{name} was taken");
        assert!(
            run.stderr.contains("the pushed archive is refused") && run.stderr.contains(why),
            "{name}: {}",
            run.stderr
        );
        assert!(!fleet.home.join("artifacts/site").join(name).exists(), "{name}: nothing kept");
    }
    assert!(listed(&fleet).is_empty());
    // The scratch space the extractor checked in is gone too.
    let left: Vec<_> =
        std::fs::read_dir(fleet.home.join("artifacts")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|n| n == "site"), "{left:?}");
}

#[test]
fn ci_pushes_through_the_server_with_a_token_scoped_to_its_project() {
    let fleet = Fleet::new(1);
    setup(&fleet);
    let token = |scope: &str| {
        fleet
            .slipctl(&[
                "--output",
                "json",
                "token",
                "create",
                &format!("ci-{}", scope.replace(':', "-")),
                "--scope",
                scope,
            ])
            .ok()
            .json()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (site_ci, other_ci) = (token("site:test:deployer"), token("site:test:viewer"));
    let server = slipway_tests::Server::start(&fleet);
    let url = format!("http://127.0.0.1:{}", server.port);
    let war = fleet.path().join("shop.war");
    std::fs::write(&war, b"PK\x03\x04 war").unwrap();
    let push = |token: &str, name: &str| {
        let mut cmd = std::process::Command::new(slipway_tests::bin("slipctl"));
        cmd.args([
            "--server",
            &url,
            "--output",
            "json",
            "artifact",
            "push",
            "site",
            war.to_str().unwrap(),
            "--name",
            name,
        ]);
        cmd.env("SLIPWAY_TOKEN", token).env_remove("SLIPWAY_HOME");
        cmd.output().unwrap()
    };
    let refused = push(&other_ci, "1.0.0");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("deploys no env of project site"), "{refused:?}");
    let ok = push(&site_ci, "1.0.0");
    assert!(ok.status.success(), "{ok:?}");
    let doc: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(doc["pushed_by"], "token:ci-site-test-deployer");
    assert_eq!(doc["source"], "shop.war");
    // The project's `[[webhook]] artifact = "1.0.*"` rule made a ticket for test, deployed at
    // once (test asks no approval).
    assert_eq!(doc["tickets"][0]["env"], "test", "{doc}");
    let deploy = doc["tickets"][0]["deploy"].as_u64().unwrap_or_else(|| panic!("{doc}"));
    // Straight to the API: bytes that are not what the header says are refused, nothing kept.
    let bearer = format!("Bearer {site_ci}");
    let (status, _, text) = slipway_tests::http(
        server.port,
        "POST",
        "/api/v1/projects/site/artifacts?name=1.0.1&file=shop.war",
        &[("Authorization", bearer.as_str()), ("X-Slipway-Sha256", &"1".repeat(64))],
        Some("PK\u{3}\u{4} changed on the way"),
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("nothing was kept"), "{text}");
    let (status, list) =
        server.call("GET", "/api/v1/projects/site/artifacts", &[("Authorization", bearer.as_str())], None);
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let mut events = slipway_tests::SseReader::open(
        server.port,
        &format!("/api/v1/deploys/{deploy}/events"),
        &[("Authorization", bearer.as_str())],
    );
    while events.next_event().is_some() {}
    let (_, record) =
        server.call("GET", &format!("/api/v1/deploys/{deploy}"), &[("Authorization", bearer.as_str())], None);
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["built"]["artifact"], "1.0.0");
    assert_eq!(std::fs::read(fleet.current("web-1", "site").join("shop.war")).unwrap(), b"PK\x03\x04 war");
}
