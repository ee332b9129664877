//! Deploy, redeploy, rollback and pruning on three agents.

use slipway_tests::{Fleet, Repo, assert_same_tree};

/// A repository with nested dirs, an executable, in-tree symlinks and an excluded `.gitignore`d
/// build output, so the tree exercises every entry kind.
fn sample_repo(fleet: &Fleet) -> Repo {
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "<h1>v1</h1>\n");
    repo.write("assets/css/site.css", "body{}\n");
    repo.write("bin/run.sh", "#!/bin/sh\necho run\n");
    std::fs::set_permissions(repo.path.join("bin/run.sh"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap();
    std::os::unix::fs::symlink("index.html", repo.path.join("home.html")).unwrap();
    std::os::unix::fs::symlink("../assets", repo.path.join("bin/assets")).unwrap();
    repo.write("deep/a/b/c/d/file.txt", &"x".repeat(200_000));
    repo.commit("v1");
    repo
}

#[test]
fn deploy_matches_git_archive_on_every_host() {
    let fleet = Fleet::new(3);
    let repo = sample_repo(&fleet);
    let commit = repo.git(&["rev-parse", "HEAD"]);
    fleet.apply_project("site", &repo.path, "");
    let run = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok();
    let doc = run.json();
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["commit"], commit.as_str());
    assert_eq!(doc["hosts"].as_array().unwrap().len(), 3);
    let release = doc["release"].as_str().unwrap().to_owned();
    assert!(release.ends_with(&commit[..7]), "{release}");

    let expected = fleet.path().join("expected");
    repo.archive_into(&commit, &expected);
    for host in ["web-1", "web-2", "web-3"] {
        assert_eq!(fleet.current_release(host, "site").as_deref(), Some(release.as_str()));
        assert_same_tree(&expected, &fleet.current(host, "site"));
        assert_eq!(fleet.releases_dir_entries(host, "site"), vec![release.clone()], "no staging left on {host}");
    }
    // The symlink is an absolute path to the release directory.
    let target = std::fs::read_link(fleet.current("web-1", "site")).unwrap();
    assert_eq!(target, fleet.deploy_to("web-1", "site").join("releases").join(&release));
}

#[test]
fn full_artifact_packaged_once_then_cached() {
    let fleet = Fleet::new(2);
    let repo = sample_repo(&fleet);
    fleet.apply_project("site", &repo.path, "");
    // Empty hosts need everything: the artifact is packaged once and sent to both.
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok().json();
    assert_eq!(doc["artifact"]["cached"], false);
    let size = doc["artifact"]["compressed_bytes"].as_u64().unwrap();
    assert!(doc["hosts"].as_array().unwrap().iter().all(|h| h["bytes_sent"] == size), "{}", doc["hosts"]);
    let release = doc["release"].as_str().unwrap().to_owned();
    // The same commit with --full: sent whole again, from the cache, not packaged again.
    let again = fleet.slipctl(&["--output", "json", "deploy", "site", "test", "--full"]).ok().json();
    assert_eq!(again["artifact"]["cached"], true);
    assert_eq!(again["artifact"]["sha256"], doc["artifact"]["sha256"]);
    assert!(again["hosts"].as_array().unwrap().iter().all(|h| h["bytes_sent"] == size), "{}", again["hosts"]);
    for host in ["web-1", "web-2"] {
        let current = fleet.current(host, "site");
        assert_ne!(fleet.current_release(host, "site").as_deref(), Some(release.as_str()));
        assert_eq!(std::fs::read_to_string(current.join("index.html")).unwrap(), "<h1>v1</h1>\n");
    }
}

#[test]
fn redeploy_rollback_and_pruning() {
    let fleet = Fleet::new(3);
    let repo = sample_repo(&fleet);
    fleet.apply_project("site", &repo.path, "");
    let mut releases = Vec::new();
    for v in 1..=4 {
        if v > 1 {
            repo.write("index.html", &format!("<h1>v{v}</h1>\n"));
            repo.commit(&format!("v{v}"));
        }
        let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok().json();
        releases.push(doc["release"].as_str().unwrap().to_owned());
        let page = std::fs::read_to_string(fleet.current("web-2", "site").join("index.html")).unwrap();
        assert_eq!(page, format!("<h1>v{v}</h1>\n"));
    }
    // keep_releases = 3: exactly the newest three remain on every host.
    for host in ["web-1", "web-2", "web-3"] {
        assert_eq!(fleet.releases(host, "site"), releases[1..].to_vec(), "{host}");
    }

    // Redeploying the same commit makes a new release from what the hosts hold: no file is sent,
    // and no full artifact is packaged (none was needed since v1).
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok().json();
    assert!(doc["artifact"].is_null(), "{}", doc["artifact"]);
    for h in doc["hosts"].as_array().unwrap() {
        assert!(h["bytes_sent"].as_u64().unwrap() < 1024, "{h}");
    }
    let r5 = doc["release"].as_str().unwrap().to_owned();
    assert_ne!(r5, releases[3]);
    assert_eq!(fleet.releases("web-1", "site").len(), 3);

    // Rollback goes to the release that was current before.
    let doc = fleet.slipctl(&["--output", "json", "rollback", "site", "test"]).ok().json();
    assert_eq!(doc["kind"], "rollback");
    for host in ["web-1", "web-2", "web-3"] {
        assert_eq!(fleet.current_release(host, "site").as_deref(), Some(releases[3].as_str()));
    }
    // --to a retained older release.
    fleet.slipctl(&["rollback", "site", "test", "--to", &releases[2]]).ok();
    for host in ["web-1", "web-2", "web-3"] {
        assert_eq!(fleet.current_release(host, "site").as_deref(), Some(releases[2].as_str()));
        let page = std::fs::read_to_string(fleet.current(host, "site").join("index.html")).unwrap();
        assert_eq!(page, "<h1>v3</h1>\n");
    }
    // A pruned release cannot be rolled back to: exit 2 naming the host and the release, nothing touched.
    let run = fleet.slipctl(&["rollback", "site", "test", "--to", &releases[0]]).code(2);
    assert!(run.stderr.contains(&releases[0]) && run.stderr.contains("web-1"), "{}", run.stderr);
    assert_eq!(fleet.current_release("web-3", "site").as_deref(), Some(releases[2].as_str()));

    // `releases` shows each host's releases and which is current.
    let doc = fleet.slipctl(&["--output", "json", "releases", "site", "test"]).ok().json();
    let hosts = doc.as_array().unwrap();
    assert_eq!(hosts.len(), 3);
    assert_eq!(hosts[0]["current"], releases[2].as_str());
    assert_eq!(hosts[0]["releases"].as_array().unwrap().len(), 3);

    // History tells the truth: 5 deploys, 2 rollbacks, newest first.
    let doc = fleet.slipctl(&["--output", "json", "history", "site"]).ok().json();
    let kinds: Vec<_> = doc.as_array().unwrap().iter().map(|d| d["kind"].as_str().unwrap().to_owned()).collect();
    assert_eq!(kinds, ["rollback", "rollback", "deploy", "deploy", "deploy", "deploy", "deploy"]);
    let show = fleet.slipctl(&["show", "1"]).ok();
    for step in ["connect", "stage", "activate", "web-1", "web-3"] {
        assert!(show.stdout.contains(step), "show lacks {step}:\n{}", show.stdout);
    }
}

#[test]
fn deploy_to_some_hosts_and_by_tag() {
    let fleet = Fleet::new(3);
    let repo = sample_repo(&fleet);
    repo.git(&["tag", "v1"]);
    repo.write("index.html", "<h1>v2</h1>\n");
    repo.commit("v2");
    fleet.apply_project("site", &repo.path, "");
    fleet.slipctl(&["deploy", "site", "test", "--ref", "v1", "--hosts", "web-1,web-3"]).ok();
    assert!(fleet.current_release("web-2", "site").is_none());
    let page = std::fs::read_to_string(fleet.current("web-1", "site").join("index.html")).unwrap();
    assert_eq!(page, "<h1>v1</h1>\n");
    // Text output names every host. web-1 and web-3 hold v1 and get a delta; web-2 holds nothing
    // and gets the full artifact, streamed while it is packaged.
    let run = fleet.slipctl(&["deploy", "site", "test"]).ok();
    for host in ["web-1", "web-2", "web-3"] {
        assert!(run.stdout.contains(host), "{}", run.stdout);
        let page = std::fs::read_to_string(fleet.current(host, "site").join("index.html")).unwrap();
        assert_eq!(page, "<h1>v2</h1>\n", "{host}");
    }
    assert!(run.stdout.contains("packaging the full artifact while sending it"), "{}", run.stdout);
    let doc = fleet.slipctl(&["--output", "json", "show", "2"]).ok().json();
    let size = doc["artifact"]["compressed_bytes"].as_u64().unwrap();
    assert_eq!(doc["artifact"]["cached"], false);
    for h in doc["hosts"].as_array().unwrap() {
        let sent = h["bytes_sent"].as_u64().unwrap();
        if h["host"] == "web-2" { assert_eq!(sent, size, "{h}") } else { assert!(sent < size, "{h}") }
    }
}

#[test]
fn releases_are_exactly_git_archive_with_export_ignore_and_export_subst() {
    let fleet = Fleet::new(1);
    let repo = Repo::with_files(
        fleet.path(),
        &[
            (".gitattributes", "*.log export-ignore\n/docs/ export-ignore\nVERSION export-subst\n"),
            ("sub/.gitattributes", "secret.txt export-ignore\n*.txt export-subst\nraw.txt -export-subst\n"),
            ("index.html", "v1\n"),
            ("app.log", "log\n"),
            ("docs/guide.md", "docs\n"),
            ("sub/docs/kept.md", "not the top-level docs/\n"),
            ("VERSION", "commit $Format:%H$ by $Format:%an$: $Format:%s$ ($Format:%h$)\nplain $ sign\n"),
            ("sub/secret.txt", "s3cr3t\n"),
            ("sub/info.txt", "$Format:%ci$\n"),
            ("sub/raw.txt", "$Format:%H$\n"),
            ("sub/deep/x.log", "deep log\n"),
        ],
    );
    fleet.apply_project("plain", &repo.path, "");
    fleet.apply_project("built", &repo.path, "[build]\npost_deploy = [\"true\"]\n");
    for round in 1..=2 {
        if round == 2 {
            // A second commit: the manifest is read from git and only a delta is sent.
            repo.write("index.html", "v2\n");
            repo.commit("v2: $Format:%H$ is not expanded in messages");
        }
        let expected = fleet.path().join(format!("expected-{round}"));
        repo.archive_into("HEAD", &expected);
        let version = std::fs::read_to_string(expected.join("VERSION")).unwrap();
        assert!(!version.starts_with("commit $Format"), "git archive expanded it: {version}");
        for project in ["plain", "built"] {
            let release = fleet.deploy_ok(project);
            let dir = fleet.deploy_to("web-1", project).join("releases").join(&release);
            assert_same_tree(&expected, &dir);
        }
    }
}

#[test]
fn rollback_to_takes_a_deploy_number_a_tag_or_a_commit_prefix() {
    let fleet = Fleet::new(2);
    let repo = Repo::new(fleet.path().join("repo"));
    fleet.apply_project("site", &repo.path, "");
    let mut releases = Vec::new();
    let mut ids = Vec::new();
    for v in 1..=3 {
        repo.write("index.html", &format!("v{v}\n"));
        repo.commit(&format!("v{v}"));
        repo.git(&["tag", &format!("release-{v}")]);
        let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok().json();
        releases.push(doc["release"].as_str().unwrap().to_owned());
        ids.push(doc["id"].as_u64().unwrap());
    }
    let on = |fleet: &Fleet| -> Vec<Option<String>> {
        ["web-1", "web-2"].iter().map(|h| fleet.current_release(h, "site")).collect()
    };
    let rollback_to = |to: &str| fleet.slipctl(&["--output", "json", "rollback", "site", "test", "--to", to]);
    rollback_to("release-1").ok();
    assert_eq!(on(&fleet), [Some(releases[0].clone()), Some(releases[0].clone())], "by tag");
    rollback_to(&format!("#{}", ids[1])).ok();
    assert_eq!(on(&fleet), [Some(releases[1].clone()), Some(releases[1].clone())], "by deploy number");
    let commit = repo.git(&["rev-parse", "release-3"]);
    rollback_to(&commit[..8]).ok();
    assert_eq!(on(&fleet), [Some(releases[2].clone()), Some(releases[2].clone())], "by commit prefix");
    // Three commits were deployed from main: naming the branch is ambiguous, refused naming them.
    let doc = rollback_to("main").code(2).json();
    let error = doc["error"].as_str().unwrap();
    assert!(releases.iter().all(|r| error.contains(r.as_str())), "{error}");
    let doc = rollback_to("#999").code(2).json();
    assert!(doc["error"].as_str().unwrap().contains("#999"), "{doc}");
    assert_eq!(on(&fleet), [Some(releases[2].clone()), Some(releases[2].clone())], "refusals touch nothing");
}

#[test]
fn after_a_hosts_deploy_rollback_takes_every_host_to_what_the_fleet_ran_before() {
    let fleet = Fleet::new(2);
    let repo = Repo::new(fleet.path().join("repo"));
    fleet.apply_project("site", &repo.path, "");
    let mut r = Vec::new();
    for v in 1..=2 {
        repo.write("index.html", &format!("v{v}\n"));
        repo.commit(&format!("v{v}"));
        r.push(fleet.deploy_ok("site"));
    }
    // A hand-made canary: v3 on web-1 only.
    repo.write("index.html", "v3\n");
    repo.commit("v3");
    fleet.slipctl(&["deploy", "site", "test", "--hosts", "web-1"]).ok();
    let run = fleet.slipctl(&["rollback", "site", "test"]).ok();
    for host in ["web-1", "web-2"] {
        assert_eq!(fleet.current_release(host, "site").as_deref(), Some(r[1].as_str()), "{host}: {}", run.stdout);
    }
    assert!(run.stdout.contains("web-2 runs") && run.stdout.contains("nothing to undo"), "{}", run.stdout);
}
