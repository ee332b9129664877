//! Delta deploys: only what a host lacks crosses the network; the release is verified against the
//! full manifest; a hook writing a reused file never changes a retained release.

use std::os::unix::fs::MetadataExt;

use slipway_tests::{Fleet, Repo, assert_same_tree, hook_user_line, is_root, require};

fn big_repo(fleet: &Fleet) -> Repo {
    let repo = Repo::new(fleet.path().join("repo"));
    for i in 0..300 {
        repo.write(
            &format!("assets/{:02}/file{i}.txt", i % 17),
            &format!("{i} {}\n", "lorem ipsum ".repeat(i % 50 + 20)),
        );
    }
    std::fs::write(repo.path.join("blob.bin"), slipway_tests::noise(2 << 20)).unwrap();
    repo.write("unchanged.txt", "original\n");
    repo.write("index.html", "v1\n");
    repo.commit("v1");
    repo
}

fn sent(doc: &serde_json::Value) -> Vec<u64> {
    doc["hosts"].as_array().unwrap().iter().map(|h| h["bytes_sent"].as_u64().unwrap()).collect()
}

#[test]
fn a_one_file_change_sends_a_small_delta_and_verifies_the_whole_tree() {
    let fleet = Fleet::new(2);
    let repo = big_repo(&fleet);
    let target = format!("{}post_release = [\"echo changed-by-hook >> unchanged.txt\"]\n", hook_user_line());
    fleet.apply_project_full("site", &repo.path, "", &target, "");
    let first = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok().json();
    let r1 = first["release"].as_str().unwrap().to_owned();
    let full = sent(&first);

    repo.write("index.html", "v2\n");
    repo.commit("v2");
    let second = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok().json();
    let delta = sent(&second);
    for (f, d) in full.iter().zip(&delta) {
        assert!(*d * 100 <= *f, "a one-file change sends at most 1% of the full deploy: {d} vs {f}");
    }
    let stage = &second["hosts"][0]["steps"][1]["detail"];
    assert!(stage.as_str().unwrap().contains("files reused"), "{stage}");

    // The delta release is exactly the commit (plus what the hook appended in the new release).
    let expected = fleet.path().join("expected");
    repo.archive_into("HEAD", &expected);
    std::fs::write(expected.join("unchanged.txt"), "original\nchanged-by-hook\n").unwrap();
    for host in ["web-1", "web-2"] {
        assert_same_tree(&expected, &fleet.current(host, "site"));
        // The retained release was not touched by the hook writing the reused file.
        let old = fleet.deploy_to(host, "site").join("releases").join(&r1).join("unchanged.txt");
        assert_eq!(std::fs::read_to_string(old).unwrap(), "original\nchanged-by-hook\n", "r1's own hook run only");
    }
    // --full sends everything again.
    repo.write("index.html", "v3\n");
    repo.commit("v3");
    let third = fleet.slipctl(&["--output", "json", "deploy", "site", "test", "--full"]).ok().json();
    assert!(sent(&third)[0] >= full[0] / 2, "{:?} vs {:?}", sent(&third), full);
    // Rollback is a relink: nothing is sent.
    let back = fleet.slipctl(&["--output", "json", "rollback", "site", "test"]).ok().json();
    assert_eq!(sent(&back), [0, 0]);
}

#[test]
fn hardlinked_releases_share_read_only_files_that_hooks_cannot_change() {
    if !require("root (hooks as www, files owned by root)", is_root()) {
        return;
    }
    let fleet = Fleet::new(1);
    let repo = big_repo(&fleet);
    let target = format!("{}post_release = [\"echo hacked >> unchanged.txt || true\"]\n", hook_user_line());
    fleet.apply_project_full("site", &repo.path, "reuse = \"hardlink\"\n", &target, "");
    let r1 = fleet.deploy_ok("site");
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok().json();
    let r2 = doc["release"].as_str().unwrap().to_owned();
    let releases = fleet.deploy_to("web-1", "site").join("releases");
    let (old, new) = (releases.join(&r1).join("unchanged.txt"), releases.join(&r2).join("unchanged.txt"));
    assert_eq!(std::fs::metadata(&old).unwrap().ino(), std::fs::metadata(&new).unwrap().ino(), "hard-linked");
    assert_eq!(std::fs::read_to_string(&old).unwrap(), "original\n", "no hook could write the shared file");
    assert_eq!(std::fs::metadata(&new).unwrap().mode() & 0o222, 0, "read-only");
    assert_eq!(std::fs::read_to_string(releases.join(&r2).join("index.html")).unwrap(), "v2\n");
    // Links and prunes do not spoil later deltas.
    for v in 3..=5 {
        repo.write("index.html", &format!("v{v}\n"));
        repo.commit(&format!("v{v}"));
        let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok().json();
        assert!(sent(&doc)[0] < 64 * 1024, "deploy v{v} sent {:?}", sent(&doc));
    }
}

#[test]
fn the_manifest_travels_as_a_diff_and_an_unknown_or_damaged_one_falls_back_to_the_full_exchange() {
    let fleet = Fleet::new(2);
    let repo = big_repo(&fleet);
    fleet.apply_project("site", &repo.path, "");
    let r1 = fleet.deploy_ok("site");
    let expected = fleet.path().join("expected");
    let check_trees = |round: &str| {
        let dest = expected.join(round);
        repo.archive_into("HEAD", &dest);
        for host in ["web-1", "web-2"] {
            assert_same_tree(&dest, &fleet.current(host, "site"));
        }
    };

    // The host's kept manifest of r1 is damaged: it no longer offers r1, so it gets everything.
    let kept = fleet.agents[0].bundle.join("state/manifests/site/test").join(format!("{r1}.json"));
    assert!(kept.is_file(), "{}", kept.display());
    std::fs::write(&kept, b"{ damaged").unwrap();
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok().json();
    let bytes = sent(&doc);
    assert!(bytes[0] > 50 * bytes[1], "web-1 (damaged) got the full artifact, web-2 a delta: {bytes:?}");
    check_trees("v2");
    // The healthy host was sent a diff against r1, not the manifest.
    let log = fleet.agents[1].log();
    assert!(log.contains(&format!("base={r1}")), "{log}");

    // The controller lost the manifests it deployed: hosts are asked for a digest per file, and
    // still get only what they lack.
    std::fs::remove_dir_all(fleet.home.join("cache/manifests")).unwrap();
    repo.write("index.html", "v3\n");
    repo.commit("v3");
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok().json();
    let bytes = sent(&doc);
    assert!(bytes.iter().all(|b| *b < 64 * 1024), "deltas after the per-file exchange: {bytes:?}");
    check_trees("v3");
    // And with the manifests kept again, the next deploy is back to diffs.
    repo.write("index.html", "v4\n");
    repo.commit("v4");
    fleet.deploy_ok("site");
    check_trees("v4");
    assert!(fleet.agents[0].log().matches("base=2").count() >= 1, "{}", fleet.agents[0].log());
}
