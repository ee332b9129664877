//! Two `slipctl serve` on two homes sharing one PostgreSQL database (and, through it, one CA):
//! one leads, the other stands by; killed mid-deploy, the leader's deploy is carried on by the
//! standby from its journal, watchers pick up the same event numbers, and the agents refuse the
//! dead leader's generation.

use std::time::{Duration, Instant};

use slipway_controller::client::{self, Timeouts};
use slipway_proto::pb;
use slipway_tests::{Fleet, Repo, Server, SseReader, bin, pg, require, wait_for};

/// A second home of its own (its own `init`: its own CA until it adopts the shared one).
fn second_home(fleet: &Fleet, config: &str) -> std::path::PathBuf {
    let home = fleet.path().join("home-b");
    let out = std::process::Command::new(bin("slipctl")).arg("--home").arg(&home).arg("init").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(home.join("config.toml"), config).unwrap();
    home
}

fn health(server: &Server) -> serde_json::Value {
    server.call("GET", "/healthz", &[], None).1
}

#[test]
fn the_standby_carries_on_the_deploy_of_a_leader_killed_mid_deploy() {
    if !require("PostgreSQL (Debian's postgresql) and root", pg::available()) {
        return;
    }
    let url = pg::cluster().database();
    let mut fleet = Fleet::new(0);
    let key = fleet.path().join("state.key");
    std::fs::write(&key, "7".repeat(64)).unwrap();
    let config = format!("[state]\nurl = \"{url}\"\nkey_file = \"{}\"\n", key.display());
    std::fs::write(fleet.home.join("config.toml"), &config).unwrap();
    let home_b = second_home(&fleet, &config);
    for i in 1..=3 {
        fleet.add_agent(&format!("web-{i}"), true);
    }
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "v1\n");
    repo.commit("v1");
    // web-2's post_release waits for the test's word, after its flip: the leader dies there.
    let (started, go) = slipway_tests::gate(&fleet);
    let target = format!(
        "{}post_release = [\"[ \\\"$SLIPWAY_HOST\\\" != web-2 ] || {{ touch {}; while [ ! -e {} ]; do sleep 0.05; done; }}\"]\n",
        slipway_tests::hook_user_line(),
        started.display(),
        go.display()
    );
    fleet.apply_project_full("site", &repo.path, "[rollout]\nstrategy = \"serial\"\n", &target, "");
    let token = fleet.slipctl(&["--output", "json", "token", "create", "root", "--admin"]).ok().json()["token"]
        .as_str()
        .unwrap()
        .to_owned();

    // Two servers started at once: one leads, by construction (the lock), never two.
    let slipctl = bin("slipctl");
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Server::start_home(&fleet.home, &slipctl));
        let b = s.spawn(|| Server::start_home(&home_b, &slipctl));
        (a.join().unwrap(), b.join().unwrap())
    });
    let roles: Vec<String> = [&a, &b].iter().map(|s| health(s)["role"].as_str().unwrap().to_owned()).collect();
    let mut sorted = roles.clone();
    sorted.sort();
    assert_eq!(sorted, ["leader", "standby"], "{roles:?}");
    let (mut leader, standby) = if roles[0] == "leader" { (a, b) } else { (b, a) };
    let leader_url = format!("http://127.0.0.1:{}", leader.port);
    let standby_health = health(&standby);
    assert_eq!(standby_health["leader"], leader_url, "{standby_health}");
    let old_epoch = health(&leader)["epoch"].as_u64().unwrap();
    assert!(old_epoch >= 1);

    // The standby serves reads and sends the rest to the leader: 503 naming it, and a slipctl
    // given the standby's URL sends its command there.
    let auth = format!("Bearer {token}");
    let (status, doc) = standby.call("GET", "/api/v1/deploys", &[("Authorization", &auth)], None);
    assert_eq!(status, 200, "{doc}");
    let body = r#"{"project":"site","env":"test"}"#;
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let (status, doc) = standby.call("POST", "/api/v1/deploys", &headers, Some(body));
    assert_eq!((status, doc["leader"].as_str()), (503, Some(leader_url.as_str())), "{doc}");
    std::fs::write(&go, "").unwrap();
    let standby_url = format!("http://127.0.0.1:{}", standby.port);
    let run = fleet.slipctl_env(
        &["--server", &standby_url, "--output", "json", "deploy", "site", "test"],
        &[("SLIPWAY_TOKEN", &token)],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("standby"), "{}", run.stderr);
    let first = run.json()["id"].as_u64().unwrap();

    // A deploy through the leader; it dies in web-2's post_release, after web-2's flip.
    std::fs::remove_file(&started).ok();
    std::fs::remove_file(&go).unwrap();
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    let (status, doc) = leader.call("POST", "/api/v1/deploys", &headers, Some(body));
    assert_eq!(status, 202, "{doc}");
    let id = doc["id"].as_u64().unwrap();
    assert!(id > first);
    let mut watcher =
        SseReader::open(leader.port, &format!("/api/v1/deploys/{id}/events"), &[("Authorization", &auth)]);
    // The watcher reads up to web-2's activation (its hook runs in it, and says nothing until it
    // ends: reading on would block until then); the hook itself is seen by its file.
    let mut last_seen = 0;
    while let Some(e) = watcher.next_event() {
        last_seen = e.id.unwrap_or(last_seen);
        if e.data["host"] == "web-2" && e.data["kind"] == "activating" {
            break;
        }
    }
    assert!(last_seen > 0);
    wait_for("web-2's hook to start", || started.exists());
    leader.child.kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    leader.child.wait().unwrap();
    wait_for("the standby to lead", || health(&standby)["role"] == "leader");
    let failover = killed.elapsed();
    assert!(failover < Duration::from_secs(10), "failover took {failover:?}");
    let new_epoch = health(&standby)["epoch"].as_u64().unwrap();
    assert!(new_epoch > old_epoch);
    eprintln!("failover: the standby led {} ms after the leader was killed", failover.as_millis());

    // A watcher that reconnects to the new leader goes on from the number it had.
    let mut watcher = SseReader::open(
        standby.port,
        &format!("/api/v1/deploys/{id}/events"),
        &[("Authorization", &auth), ("Last-Event-ID", &last_seen.to_string())],
    );
    std::fs::write(&go, "").unwrap();
    let mut ids = Vec::new();
    let mut outcome = None;
    while let Some(e) = watcher.next_event() {
        if let Some(n) = e.id {
            ids.push(n);
        }
        if e.event == "outcome" || e.event == "end" || e.data.get("status").is_some() && e.event != "host" {
            outcome = Some(e);
        }
    }
    assert!(!ids.is_empty() && ids[0] == last_seen + 1, "numbers go on from {last_seen}: {ids:?}");
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "no gap, no repeat: {ids:?}");
    assert!(outcome.is_some(), "the stream ends with the outcome");

    // Recorded once, as succeeded, with every host on the release.
    let history = fleet.slipctl(&["--output", "json", "history", "site", "test"]).ok().json();
    let records: Vec<&serde_json::Value> =
        history.as_array().unwrap().iter().filter(|d| d["id"].as_u64() == Some(id)).collect();
    assert_eq!(records.len(), 1, "{history}");
    if records[0]["status"] != "succeeded" {
        // (Seen once in CI under the full suite's load, not reproduced alone: the whole journal,
        // so that a next time says what the carried-on deploy did.)
        let mut replay =
            SseReader::open(standby.port, &format!("/api/v1/deploys/{id}/events"), &[("Authorization", &auth)]);
        let mut journal = Vec::new();
        while let Some(e) = replay.next_event() {
            journal.push(format!("{:?} {} {}", e.id, e.event, e.data));
        }
        panic!("deploy #{id} ended {}: {}\njournal:\n{}", records[0]["status"], records[0], journal.join("\n"));
    }
    let release = records[0]["release"].as_str().unwrap().to_owned();
    for host in ["web-1", "web-2", "web-3"] {
        assert_eq!(fleet.current_release(host, "site").as_deref(), Some(release.as_str()), "{host}");
    }

    // Fencing: a request of the dead leader's generation is refused by a host the new leader
    // has touched, so a leader that was only cut off cannot flip it.
    let tls = fleet.controller_tls();
    let agent = fleet.agent_record(1);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let refused = rt.block_on(async {
        let mut c = client::connect(tls, &agent, Timeouts::default()).await.unwrap();
        let request = pb::ActivateRequest {
            target: Some(pb::Target {
                project: "site".into(),
                env: "test".into(),
                deploy_to: fleet.deploy_to("web-2", "site").display().to_string(),
                current: fleet.current("web-2", "site").display().to_string(),
            }),
            release_id: release.clone(),
            generation: (old_epoch << 40) | id,
            deploy_id: id,
            deploy_type: pb::DeployType::Deploy as i32,
            ..Default::default()
        };
        match c.activate(request).await {
            Ok(mut stream) => loop {
                match stream.get_mut().message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => break String::new(),
                    Err(s) => break s.message().to_owned(),
                }
            },
            Err(s) => s.message().to_owned(),
        }
    });
    assert!(refused.contains("stale generation"), "{refused}");
    // The standby's own home took the shared CA (it reached the agents with it).
    assert!(home_b.join("pki/ca.key.local").exists());
    drop(standby);
}

#[test]
fn a_leader_that_loses_its_database_steps_down_and_a_database_without_history_is_refused() {
    if !require("PostgreSQL (Debian's postgresql) and root", pg::available()) {
        return;
    }
    let cluster = pg::Cluster::private();
    let fleet = Fleet::new(1);
    // This home has history in sled; a URL to an empty database is refused, naming the fix.
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "v1\n");
    repo.commit("v1");
    fleet.apply_project("site", &repo.path, "");
    fleet.deploy_ok("site");
    let url = cluster.database();
    let key = fleet.path().join("state.key");
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    std::fs::write(
        fleet.home.join("config.toml"),
        format!("[state]\nurl = \"{url}\"\nkey_file = \"{}\"\n", key.display()),
    )
    .unwrap();
    let out = std::process::Command::new(bin("slipctl"))
        .arg("--home")
        .arg(&fleet.home)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("holds no history") && said.contains("state migrate"), "{said}");

    // Migrated, it serves and leads; when PostgreSQL goes, it steps down, saying why.
    fleet.slipctl(&["state", "migrate", "--from", "sled", "--to", &url]).ok();
    let log = fleet.path().join("serve.err");
    let mut server =
        Server::start_logging(&fleet.home, &bin("slipctl"), &[], std::fs::File::create(&log).unwrap().into());
    assert_eq!(health(&server)["role"], "leader");
    cluster.stop();
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(75), "the leader stops with EX_TEMPFAIL");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("stepping down") && said.contains("a standby takes over"), "{said}");
    cluster.start();
    // Started again, it leads again.
    let mut again = Server::start(&fleet);
    assert_eq!(health(&again)["role"], "leader");
    again.stop();
    let _ = server.stop();
}
