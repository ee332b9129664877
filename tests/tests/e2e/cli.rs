//! Bad input, state handling, the shipped example configs and the quickstart.

use std::os::unix::fs::PermissionsExt;

use slipway_tests::{Fleet, Repo, bin};

#[test]
fn unknown_names_are_bad_input_naming_the_thing() {
    let fleet = Fleet::new(1);
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "x");
    repo.commit("c1");
    fleet.apply_project("site", &repo.path, "");
    let check = |args: &[&str], needle: &str| {
        let run = fleet.slipctl(args).code(2);
        assert!(run.stderr.contains(needle), "{args:?}: stderr lacks {needle:?}:\n{}", run.stderr);
        // For scripts: the same error as one JSON document on stdout, naming the thing.
        let json_args: Vec<&str> = ["--output", "json"].into_iter().chain(args.iter().copied()).collect();
        let doc = fleet.slipctl(&json_args).code(2).json();
        assert!(doc["error"].as_str().unwrap().contains(needle), "{args:?}: {doc}");
        assert_eq!(doc["exit_code"], 2, "{doc}");
        assert!(doc.get("fix").is_some(), "{doc}");
    };
    check(&["deploy", "nosuch", "test"], "nosuch");
    check(&["deploy", "site", "prod"], "prod");
    check(&["deploy", "site", "test", "--hosts", "web-9"], "web-9");
    check(&["deploy", "site", "test", "--ref", "no-such-branch"], "no-such-branch");
    check(&["rollback", "site", "test", "--to", "20200101-000000-abcdef0"], "20200101-000000-abcdef0");
    check(&["rollback", "site", "test", "--to", "garbage"], "garbage");
    check(&["show", "99"], "99");
    check(&["agent", "rm", "nobody"], "nobody");
    check(&["project", "show", "nosuch"], "nosuch");
    check(&["agent", "add", "Bad_Name", "--addr", "127.0.0.1:1", "--out", "/tmp/x"], "Bad_Name");
    check(&["agent", "add", "web-7", "--addr", "nohostport", "--out", "/tmp/x"], "nohostport");
    check(
        &["agent", "add", "web-1", "--addr", "127.0.0.1:1", "--out", fleet.path().join("dup").to_str().unwrap()],
        "already registered",
    );
    check(&["frobnicate"], "frobnicate");
    // An env that selects a host that is not registered.
    let file = fleet.path().join("bad-hosts.toml");
    std::fs::write(
        &file,
        "name = \"bh\"\nrepo = \"/r\"\n[target]\ndeploy_to = \"/data/x\"\n[env.test]\nhosts = [\"ghost\"]\n",
    )
    .unwrap();
    fleet.slipctl(&["project", "apply", "-f", file.to_str().unwrap()]).ok();
    check(&["deploy", "bh", "test"], "ghost");
    // Nothing was deployed by any of that.
    assert!(fleet.current_release("web-1", "site").is_none());
    assert!(fleet.slipctl(&["history"]).ok().stdout.contains("no deploys yet"));
}

#[test]
fn project_files_are_validated_with_file_and_key_named() {
    let fleet = Fleet::new(0);
    let cases = [
        (
            "unknown-key.toml",
            "name = \"p\"\nrepo = \"/r\"\ncolour = \"blue\"\n[target]\ndeploy_to = \"/d\"\n[env.a]\n",
            "colour",
        ),
        (
            "bad-keep.toml",
            "name = \"p\"\nrepo = \"/r\"\nkeep_releases = 0\n[target]\ndeploy_to = \"/d\"\n[env.a]\n",
            "keep_releases",
        ),
        ("rel-path.toml", "name = \"p\"\nrepo = \"/r\"\n[target]\ndeploy_to = \"data\"\n[env.a]\n", "deploy_to"),
        ("env-key.toml", "name = \"p\"\nrepo = \"/r\"\n[target]\ndeploy_to = \"/d\"\n[env.a]\nhostz = []\n", "hostz"),
        ("syntax.toml", "name = \"p\nrepo", "syntax.toml"),
    ];
    for (name, text, key) in cases {
        let file = fleet.path().join(name);
        std::fs::write(&file, text).unwrap();
        let run = fleet.slipctl(&["project", "apply", "-f", file.to_str().unwrap()]).code(2);
        assert!(run.stderr.contains(name) && run.stderr.contains(key), "{name}: {}", run.stderr);
    }
    fleet.slipctl(&["project", "apply", "-f", "/nonexistent.toml"]).code(2);
    assert!(fleet.slipctl(&["project", "list"]).ok().stdout.contains("no projects"));
}

#[test]
fn init_keeps_keys_private_is_idempotent_and_refuses_to_overwrite() {
    let fleet = Fleet::new(1);
    let pki = fleet.home.join("pki");
    for key in ["ca.key", "controller.key"] {
        let mode = std::fs::metadata(pki.join(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let agent_key = fleet.agents[0].bundle.join("agent.key");
    assert_eq!(std::fs::metadata(agent_key).unwrap().permissions().mode() & 0o777, 0o600);
    let before = std::fs::read(pki.join("ca.pem")).unwrap();
    // Again on a complete home: a no-op, exit 0 (safe for Ansible), the CA untouched.
    let run = fleet.slipctl(&["--output", "json", "init"]).ok();
    assert_eq!(run.json()["created"], false, "{}", run.stdout);
    assert_eq!(std::fs::read(pki.join("ca.pem")).unwrap(), before);
    // A home whose controller key is gone is refused, never replaced.
    let key = std::fs::read(pki.join("controller.key")).unwrap();
    std::fs::remove_file(pki.join("controller.key")).unwrap();
    let run = fleet.slipctl(&["init"]).code(2);
    assert!(run.stderr.contains("refusing to overwrite") && run.stderr.contains("controller.key"), "{}", run.stderr);
    assert_eq!(std::fs::read(pki.join("ca.pem")).unwrap(), before);
    std::fs::write(pki.join("controller.key"), key).unwrap();
    std::fs::set_permissions(pki.join("controller.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    // A CA that is not the one the controller identity came from: refused too.
    let other = fleet.path().join("other-home");
    std::process::Command::new(bin("slipctl")).arg("--home").arg(&other).arg("init").output().unwrap();
    std::fs::copy(other.join("pki/ca.pem"), pki.join("ca.pem")).unwrap();
    let run = fleet.slipctl(&["init"]).code(2);
    assert!(run.stderr.contains("was not issued by"), "{}", run.stderr);
    std::fs::write(pki.join("ca.pem"), &before).unwrap();
    fleet.slipctl(&["init"]).ok();
    // The bundle `agent add` wrote is what slipd runs with; check-config agrees.
    let out = std::process::Command::new(bin("slipd"))
        .args(["check-config", "--config"])
        .arg(fleet.agents[0].bundle.join("agent.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // agent list: reachable, with version and uptime.
    let doc = fleet.slipctl(&["--output", "json", "agent", "list"]).ok().json();
    assert_eq!(doc[0]["reachable"], true);
    assert_eq!(doc[0]["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn a_second_slipctl_waits_then_gets_a_clear_message() {
    let fleet = Fleet::new(0);
    fleet.slipctl(&["history"]).ok();
    // Hold the state's lock as a long-running slipctl would.
    let db = std::fs::OpenOptions::new().read(true).write(true).open(fleet.home.join("state/db")).unwrap();
    rustix::fs::flock(&db, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    let run = fleet.slipctl_env(&["history"], &[("SLIPWAY_STATE_WAIT_SECS", "1")]).code(1);
    assert!(run.stderr.contains("held by another slipctl"), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    drop(db);
    fleet.slipctl(&["history"]).ok();
}

#[test]
fn concurrent_slipctl_processes_share_the_state() {
    let fleet = Fleet::new(2);
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "x");
    repo.commit("c1");
    fleet.apply_project("one", &repo.path, "");
    fleet.apply_project("two", &repo.path, "");
    let spawn = |project: &str| fleet.spawn_slipctl(&["deploy", project, "test"]);
    let (a, b) = (spawn("one"), spawn("two"));
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let doc = fleet.slipctl(&["--output", "json", "history"]).ok().json();
    let mut ids: Vec<u64> = doc.as_array().unwrap().iter().map(|d| d["id"].as_u64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, [1, 2]);
    assert!(fleet.current_release("web-2", "one").is_some() && fleet.current_release("web-2", "two").is_some());
}

#[test]
fn shipped_example_configs_load_with_the_real_loaders() {
    let deploy_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let agent = slipway_common::config::AgentConfig::load(&deploy_dir.join("agent.toml")).unwrap();
    assert_eq!(agent.name, "web-1");
    assert!(agent.tls.key.is_absolute());
    let project = slipway_common::config::ProjectConfig::load(&deploy_dir.join("web-demo.toml")).unwrap();
    let prod = project.env("prod").unwrap();
    assert_eq!(prod.target.deploy_to_for("web-1"), std::path::PathBuf::from("/data/release/web-demo"));
    assert!(!prod.hosts.is_empty());
    // The README's Java project file is deploy/shop-java.toml, word for word, and it loads.
    let java = std::fs::read_to_string(deploy_dir.join("shop-java.toml")).unwrap();
    let readme = std::fs::read_to_string(deploy_dir.join("../README.md")).unwrap();
    assert!(
        readme.contains(&format!("```toml\n{java}```")),
        "README's Java example differs from deploy/shop-java.toml"
    );
    let shop = slipway_common::config::ProjectConfig::load(&deploy_dir.join("shop-java.toml")).unwrap();
    let prod = shop.env("prod").unwrap();
    assert_eq!(prod.promote_from.as_deref(), Some("test"));
    assert_eq!(prod.build.cache, ["~/.m2/repository"]);
    assert!(prod.rollout.drain.is_some() && prod.rollout.health.is_some());
    let unit = std::fs::read_to_string(deploy_dir.join("slipd.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/slipd --config /etc/slipway/agent.toml"));
}

#[test]
fn quickstart_runs_a_real_demo() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let out = std::process::Command::new(bin("slipctl"))
        .args(["quickstart", "--dir"])
        .arg(&demo)
        .env_remove("SLIPWAY_HOME")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("rolled back"), "{stdout}");
    for host in ["web-1", "web-2", "web-3"] {
        let page = std::fs::read_to_string(demo.join("hosts").join(host).join("www/current/index.html")).unwrap();
        assert_eq!(page, "<h1>web-demo v1</h1>\n", "{host} serves v1 after the rollback");
        assert_eq!(std::fs::read_dir(demo.join("hosts").join(host).join("app/releases")).unwrap().count(), 2);
    }
}

#[test]
fn scripts_get_json_for_every_outcome_and_jsonl_events_as_they_happen() {
    let fleet = Fleet::new(2);
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "v1\n");
    repo.commit("c1");
    fleet.apply_project("site", &repo.path, "");

    // The fix is said apart from the problem.
    let doc = fleet.slipctl(&["--output", "json", "deploy", "nosuch", "test"]).code(2).json();
    assert_eq!(doc["kind"], "bad_input");
    assert!(doc["fix"].as_str().unwrap().contains("slipctl project apply"), "{doc}");
    assert!(!doc["error"].as_str().unwrap().contains("project apply"), "problem and fix apart: {doc}");
    // A usage error too.
    let run = fleet.slipctl(&["--output", "json", "deploy"]).code(2);
    assert_eq!(run.json()["kind"], "usage", "{}", run.stdout);

    // A dry run reports the real plan: hosts, release, batches; nothing sent or recorded.
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test", "--dry-run"]).ok().json();
    assert_eq!(doc["status"], "planned");
    assert_eq!(doc["id"], serde_json::Value::Null, "a dry run has no deploy number");
    let release = doc["release"].as_str().unwrap().to_owned();
    let hosts: Vec<_> = doc["hosts"].as_array().unwrap().iter().map(|h| h["host"].as_str().unwrap()).collect();
    assert_eq!(hosts, ["web-1", "web-2"]);
    assert_eq!(doc["plan"]["batches"], serde_json::json!([["web-1", "web-2"]]));
    assert!(doc["plan"]["hosts"][0]["release_path"].as_str().unwrap().ends_with(&release), "{doc}");
    assert_eq!(fleet.slipctl(&["--output", "json", "history"]).ok().json(), serde_json::json!([]));
    assert!(fleet.releases("web-1", "site").is_empty());

    // jsonl: the engine's events as they happen, one object a line, then the result.
    let run = fleet.slipctl(&["--output", "jsonl", "deploy", "site", "test"]).ok();
    let lines: Vec<serde_json::Value> =
        run.stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert!(events.contains(&"say") && events.contains(&"hosts"), "{events:?}");
    let activated: Vec<_> =
        lines.iter().filter(|l| l["event"] == "host" && l["kind"] == "activated").map(|l| l["host"].clone()).collect();
    assert_eq!(activated.len(), 2, "{}", run.stdout);
    let last = lines.last().unwrap();
    assert_eq!((last["event"].as_str(), last["status"].as_str()), (Some("result"), Some("succeeded")));
    assert_eq!(last["exit_code"], 0);

    // A failed outcome: the record, its fix and the exit status, on stdout.
    repo.write("index.html", "v2\n");
    repo.commit("c2");
    let target = format!("{}post_release = [\"exit 3\"]\n", slipway_tests::hook_user_line());
    fleet.apply_project_full("site", &repo.path, "[rollout]\nauto_rollback = false\n", &target, "");
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).code(1).json();
    assert_eq!((doc["status"].as_str(), doc["exit_code"].as_i64()), (Some("failed"), Some(1)));
    assert!(doc["fix"].as_str().unwrap().contains("slipctl show"), "{doc}");
}

/// A newcomer sees it in a minute: `quickstart --serve` runs the demo, keeps its agents
/// running, serves it with a printed one-time admin password and says which URL to open.
#[test]
fn quickstart_serve_keeps_the_demo_running_for_a_browser() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let mut child = std::process::Command::new(bin("slipctl"))
        .args(["quickstart", "--serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&demo)
        .env_remove("SLIPWAY_HOME")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // (Stopped whatever happens below: a failed assertion must not leave the demo running.)
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                slipway_tests::terminate(&mut self.0);
            }
        }
    }
    let mut child = Stop(child);
    let open = loop {
        let line = lines.next().expect("quickstart --serve says which URL to open").unwrap();
        if line.starts_with("open http://") {
            break line;
        }
    };
    // Then the server's own line: it answers from now on.
    for line in lines.by_ref() {
        if line.unwrap().starts_with("slipctl serve: listening on") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines.by_ref() {});
    // "open http://127.0.0.1:PORT/ and log in as admin with password PW (shown once)"
    let port: u16 = open.split(':').nth(2).unwrap().split('/').next().unwrap().parse().unwrap();
    let password = open.split("with password ").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    assert!(open.contains("log in as admin"), "{open}");
    let body = serde_json::json!({"user": "admin", "password": password}).to_string();
    let (status, head, _) =
        slipway_tests::http(port, "POST", "/api/v1/session", &[("Content-Type", "application/json")], Some(&body));
    assert_eq!(status, 200, "the printed password logs in: {head}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: ").or_else(|| l.strip_prefix("Set-Cookie: ")))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_owned();
    // The agents are still running: the server's probe reaches all three.
    let mut agents = serde_json::Value::Null;
    slipway_tests::wait_for("the agents' probe", || {
        let (_, _, text) = slipway_tests::http(port, "GET", "/api/v1/agents", &[("Cookie", &cookie)], None);
        agents = serde_json::from_str(&text).unwrap_or_default();
        agents.as_array().is_some_and(|a| a.len() == 3 && a.iter().all(|a| a["probe"]["reachable"] == true))
    });
    let (_, _, text) = slipway_tests::http(port, "GET", "/api/v1/dashboard", &[("Cookie", &cookie)], None);
    let cells: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(cells[0]["project"], "web-demo", "{cells}");
    assert_eq!(cells[0]["hosts"].as_object().map(|h| h.len()), Some(3), "{cells}");
    // Ctrl-C (SIGTERM here) stops the server and the agents.
    if let Some(pid) = rustix::process::Pid::from_raw(child.0.id() as i32) {
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    }
    assert!(child.0.wait().unwrap().success());
    let addr = agents[0]["addr"].as_str().unwrap().to_owned();
    assert!(std::net::TcpStream::connect(&addr).is_err(), "the demo's agent at {addr} stopped with it");
}
