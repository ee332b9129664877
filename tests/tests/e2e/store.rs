//! Artifacts from an S3-compatible store (`[artifacts]`), against a real `s3s-fs` process: the
//! controller uploads each artifact once and sends nothing to the hosts, which fetch it by a
//! presigned URL and verify it; a store that is missing, refuses, is down or returns other bytes
//! fails hosts before any flip, naming the store and the fix.

use std::io::Write;

use slipway_common::archive::testing::{RawEntry, compress, manifest_for, raw_tar, sha256_hex};
use slipway_controller::client::{self, Timeouts};
use slipway_controller::engine::host_error::HostError;
use slipway_proto::pb;
use slipway_tests::s3::{self, S3};
use slipway_tests::{Fleet, Repo, assert_same_tree, hook_user_line, require};

fn store_available() -> bool {
    require("s3s-fs (cargo install s3s-fs --version 0.14.1 --locked --features binary)", s3::available())
}

/// Add `text` to the home's config.toml (which may already name a database).
fn configure(fleet: &Fleet, text: &str) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(fleet.home.join("config.toml")).unwrap();
    writeln!(f, "{text}").unwrap();
}

fn repo(fleet: &Fleet) -> Repo {
    let repo = Repo::new(fleet.path().join("repo"));
    for i in 0..50 {
        repo.write(&format!("assets/file{i}.txt"), &format!("{i} {}\n", "lorem ipsum ".repeat(i + 10)));
    }
    std::fs::write(repo.path.join("blob.bin"), slipway_tests::noise(1 << 20)).unwrap();
    repo.write("index.html", "v1\n");
    repo.commit("v1");
    repo
}

fn sent(doc: &serde_json::Value) -> Vec<u64> {
    doc["hosts"].as_array().unwrap().iter().map(|h| h["bytes_sent"].as_u64().unwrap()).collect()
}

fn file_sha256(path: &std::path::Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

#[test]
fn hosts_fetch_full_and_delta_artifacts_from_the_store_and_the_controller_sends_none() {
    if !store_available() {
        return;
    }
    let fleet = Fleet::new(2);
    let store = S3::start(&fleet.path().join("s3"));
    store.bucket("artifacts");
    configure(&fleet, &store.config("artifacts", "slipway"));
    let repo = repo(&fleet);
    fleet.apply_project("site", &repo.path, "");

    let out = fleet.slipctl(&["deploy", "site", "test"]).ok();
    assert_eq!(out.stdout.matches("uploaded").count(), 1, "{}", out.stdout);
    let first = fleet.slipctl(&["--output", "json", "show", "1"]).ok().json();
    assert_eq!(sent(&first), [0, 0], "nothing is pushed to the hosts");
    let detail = first["hosts"][0]["steps"].as_array().unwrap().iter().find(|s| s["name"] == "stage").unwrap();
    assert!(detail["detail"].as_str().unwrap().contains("fetched from the store"), "{detail}");
    // The object is the artifact, named by its digest, uploaded once.
    let sha = first["artifact"]["sha256"].as_str().unwrap().to_owned();
    let objects = store.objects("artifacts");
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert_eq!(objects[0].0, format!("slipway/site/{sha}.tar.zst"));
    assert_eq!(file_sha256(&store.root.join("artifacts").join(&objects[0].0)), sha, "the object's bytes");
    let expected = fleet.path().join("expected");
    repo.archive_into("HEAD", &expected);
    for host in ["web-1", "web-2"] {
        assert_same_tree(&expected, &fleet.current(host, "site"));
    }

    // A one-file change: one delta object, shared by both hosts, much smaller than the full one.
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    let second = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok().json();
    assert_eq!(sent(&second), [0, 0]);
    let objects = store.objects("artifacts");
    assert_eq!(objects.len(), 2, "{objects:?}");
    let delta = objects.iter().find(|(name, _)| !name.contains(&sha)).unwrap();
    let full = objects.iter().find(|(name, _)| name.contains(&sha)).unwrap();
    assert!(delta.1 * 20 < full.1, "delta {delta:?} vs full {full:?}");
    std::fs::remove_dir_all(&expected).unwrap();
    repo.archive_into("HEAD", &expected);
    for host in ["web-1", "web-2"] {
        assert_same_tree(&expected, &fleet.current(host, "site"));
    }
    // Rollback is a relink, store or not.
    fleet.slipctl(&["rollback", "site", "test"]).ok();
}

#[test]
fn a_store_that_is_missing_refuses_is_down_or_lies_fails_hosts_before_any_flip() {
    if !store_available() {
        return;
    }
    let fleet = Fleet::new(2);
    let mut store = S3::start(&fleet.path().join("s3"));
    let bucket = store.bucket("artifacts");
    let repo = repo(&fleet);
    // Serial: web-1 is staged and flipped before web-2 fetches. web-1's hook overwrites every
    // object in the bucket once, as a store returning other bytes would.
    let marker = fleet.path().join("s3/tampered");
    let tamper = format!(
        "[ \\\"$SLIPWAY_HOST\\\" != web-1 ] || [ -e {m} ] || {{ for f in $(find {b} -name '*.zst'); do head -c 4096 \
         /dev/urandom > $f; done; touch {m}; }}",
        m = marker.display(),
        b = bucket.display()
    );
    let target = format!("{}post_release = [\"{tamper}\"]\n", hook_user_line());
    fleet.apply_project_full("site", &repo.path, "[rollout]\nstrategy = \"serial\"\n", &target, "");
    let config = fleet.home.join("config.toml");
    let base = std::fs::read_to_string(&config).unwrap_or_default();
    let set = |text: &str| std::fs::write(&config, format!("{base}\n{text}")).unwrap();

    // A bucket that does not exist: nothing is staged anywhere.
    set(&store.config("nobucket", "p"));
    let run = fleet.slipctl(&["deploy", "site", "test"]).code(1);
    assert!(run.stderr.contains("create bucket 'nobucket'"), "{}", run.stderr);
    // Wrong credentials.
    set(&store.config("artifacts", "p").replace(s3::SECRET_KEY, "wrong-secret"));
    let run = fleet.slipctl(&["deploy", "site", "test"]).code(1);
    assert!(run.stderr.contains("refused the bucket check") && run.stderr.contains("secret_key"), "{}", run.stderr);
    // The store down.
    set(&store.config("artifacts", "p"));
    store.stop();
    let run = fleet.slipctl(&["deploy", "site", "test"]).code(1);
    assert!(run.stderr.contains("cannot be reached") && run.stderr.contains("start the store"), "{}", run.stderr);
    for host in ["web-1", "web-2"] {
        assert_eq!(fleet.current_release(host, "site"), None, "{host} was not flipped");
        assert!(fleet.releases(host, "site").is_empty(), "{host} holds nothing");
    }
    store.restart();

    // A store that returns other bytes to web-2: web-1 is on the release, web-2 failed before
    // its flip and says why.
    let run = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).code(1);
    assert!(marker.exists(), "web-1's hook overwrote the objects");
    let doc = run.json();
    let release = doc["release"].as_str().unwrap().to_owned();
    assert_eq!(fleet.current_release("web-1", "site").as_deref(), Some(release.as_str()));
    assert_eq!(fleet.current_release("web-2", "site"), None, "web-2 was not flipped");
    let web2 = doc["hosts"].as_array().unwrap().iter().find(|h| h["host"] == "web-2").unwrap().to_string();
    assert!(web2.contains("the artifact store returned other bytes"), "{web2}");
    assert!(web2.contains("deploy again"), "{web2}");
    // Deploying again uploads it again: both hosts on the new release.
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    assert!(fleet.current_release("web-2", "site").is_some());
}

#[test]
fn an_expired_url_is_refused_clearly_and_a_fresh_one_works() {
    if !store_available() {
        return;
    }
    let fleet = Fleet::new(1);
    let store = S3::start(&fleet.path().join("s3"));
    store.bucket("artifacts");
    configure(&fleet, &store.config("artifacts", "p"));
    let signer = slipway_controller::engine::store::Store::of_home(&fleet.home).unwrap().unwrap();
    // An artifact of one file, uploaded as the controller does.
    let entries = [RawEntry::file("index.html", 0o644, b"hello\n")];
    let manifest = manifest_for(&entries);
    let compressed = compress(&raw_tar(&entries));
    let packed = fleet.path().join("a.tar.zst");
    std::fs::write(&packed, &compressed).unwrap();
    let sha = sha256_hex(&compressed);
    let size = compressed.len() as u64;
    let key = signer.key("site", &sha);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    assert!(rt.block_on(signer.put_once(&key, &packed, size)).unwrap());

    let root = &fleet.agents[0].root;
    let target = pb::Target {
        project: "site".into(),
        env: "test".into(),
        deploy_to: root.join("site").display().to_string(),
        current: root.join("www/site").display().to_string(),
    };
    let agent = fleet.agent_record(0);
    let tls = fleet.controller_tls();
    let stage = |release: &str, url: String| {
        let header = pb::StageHeader {
            target: Some(target.clone()),
            deploy_id: 1,
            release_id: release.into(),
            commit: "abcdef0".repeat(5) + "abcde",
            git_ref: "main".into(),
            generation: 1,
            manifest: Some(pb::Manifest::from(&manifest)),
            artifact_sha256: slipway_proto::hex_to_bytes(&sha),
            artifact_size: size,
            artifact_url: url,
            ..Default::default()
        };
        rt.block_on(async {
            let mut client = client::connect(tls.clone(), &agent, Timeouts::default()).await?;
            let messages = vec![pb::StageRequest { kind: Some(pb::stage_request::Kind::Header(header)) }];
            let mut events =
                client.stage(tokio_stream::iter(messages)).await.map_err(|s| HostError::from_status(&s))?.into_inner();
            loop {
                match events.message().await {
                    Ok(Some(pb::StageEvent { kind: Some(pb::stage_event::Kind::Staged(s)) })) => return Ok(s),
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(HostError::Ended("stage")),
                    Err(s) => return Err(HostError::from_status(&s)),
                }
            }
        })
    };
    // Signed two hours ago, valid for 15 minutes: the store refuses it, the agent says what to do.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    let expired = stage("20261207-000001-aaaaaaa", signer.get_url_signed_at(&key, old)).unwrap_err().to_string();
    assert!(expired.contains("answered 403"), "{expired}");
    assert!(expired.contains("expired") && expired.contains("deploy again"), "{expired}");
    assert!(!expired.contains("X-Amz-Signature"), "the signature stays out of messages: {expired}");
    // Signed now (as the controller does for each host's stage, and again on a retry): staged.
    let staged = stage("20261207-000002-aaaaaaa", signer.get_url(&key)).unwrap();
    assert_eq!(staged.entries, manifest.entries.len() as u64);
}
