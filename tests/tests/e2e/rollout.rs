//! Rollout control and failure safety: batches with health gates, automatic rollback, the
//! deploy lock, stale generations, crashes of either side, a full disk, cancel, and zero
//! downtime under nginx.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use slipway_tests::{Fleet, Repo, free_port, hook_user_line, http_get, is_root, require};

fn repo(fleet: &Fleet) -> Repo {
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "v1\n");
    repo.commit("v1");
    repo
}

fn next_version(repo: &Repo, v: u32) {
    repo.write("index.html", &format!("v{v}\n"));
    repo.commit(&format!("v{v}"));
}

fn page(fleet: &Fleet, host: &str) -> String {
    std::fs::read_to_string(fleet.current(host, "site").join("index.html")).unwrap_or_default()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_health_check_failing_in_the_second_batch_rolls_back_the_first_and_spares_the_third() {
    let fleet = Fleet::new(3);
    let repo = repo(&fleet);
    fleet.apply_project("site", &repo.path, "");
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    next_version(&repo, 2);
    let top = "[rollout]\nstrategy = \"serial\"\n\
               health = { command = \"test \\\"$SLIPWAY_HOST\\\" != web-2\", timeout_secs = 5, retries = 1, interval_secs = 0 }\n";
    fleet.apply_project_full("site", &repo.path, top, &hook_user_line(), "");
    let run = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).code(1);
    let doc = run.json();
    assert_eq!(doc["status"], "rolled_back", "{}", run.stderr);
    for host in ["web-1", "web-2", "web-3"] {
        assert_eq!(page(&fleet, host), "v1\n", "{host} serves the previous release");
    }
    let steps = |host: &str| -> Vec<String> {
        let h = doc["hosts"].as_array().unwrap().iter().find(|h| h["host"] == host).unwrap();
        h["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(steps("web-1"), ["connect", "stage", "activate", "health", "rollback"]);
    assert_eq!(steps("web-2"), ["connect", "stage", "activate", "health", "rollback"]);
    assert!(steps("web-3").is_empty(), "the third batch is never touched: {:?}", steps("web-3"));
    assert_eq!(fleet.releases("web-3", "site").len(), 1);
    assert!(run.stderr.contains("web-2") && run.stderr.contains("unhealthy"), "{}", run.stderr);
}

/// A tiny HTTP server answering every request with `status`; returns its port.
fn http_server(status: u16) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(100) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = write!(s, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    port
}

#[test]
fn http_health_checks_gate_the_rollout() {
    let fleet = Fleet::new(2);
    let repo = repo(&fleet);
    let ok = http_server(200);
    let top = format!(
        "[rollout]\nhealth = {{ http = \"http://127.0.0.1:{ok}/healthz\", expect_status = 200, retries = 0 }}\n"
    );
    fleet.apply_project_full("site", &repo.path, &top, "", "");
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok().json();
    assert!(doc["hosts"][0]["steps"].as_array().unwrap().iter().any(|s| s["name"] == "health" && s["ok"] == true));

    next_version(&repo, 2);
    let bad = http_server(503);
    let top = format!(
        "[rollout]\nhealth = {{ http = \"http://127.0.0.1:{bad}/healthz\", expect_status = 200, retries = 1, interval_secs = 0 }}\n"
    );
    fleet.apply_project_full("site", &repo.path, &top, "", "");
    let run = fleet.slipctl(&["deploy", "site", "test"]).code(1);
    assert!(run.stderr.contains("HTTP 503"), "{}", run.stderr);
    assert_eq!(page(&fleet, "web-1"), "v1\n");
    assert_eq!(page(&fleet, "web-2"), "v1\n");
}

#[test]
fn canary_goes_first_and_batches_follow() {
    let fleet = Fleet::new(4);
    let repo = repo(&fleet);
    let top = "[rollout]\nstrategy = \"batch\"\nbatch = 2\n";
    fleet.apply_project_full("site", &repo.path, top, "", "canary = [\"web-3\"]\n");
    let run = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok();
    let doc = run.json();
    let activated_at = |host: &str| -> u64 {
        let h = doc["hosts"].as_array().unwrap().iter().find(|h| h["host"] == host).unwrap();
        h["steps"].as_array().unwrap().iter().find(|s| s["name"] == "activate").unwrap()["started_ms"].as_u64().unwrap()
    };
    let staged_at = |host: &str| -> u64 {
        let h = doc["hosts"].as_array().unwrap().iter().find(|h| h["host"] == host).unwrap();
        h["steps"].as_array().unwrap().iter().find(|s| s["name"] == "connect").unwrap()["started_ms"].as_u64().unwrap()
    };
    // The canary is activated before anyone else is even contacted.
    for host in ["web-1", "web-2", "web-4"] {
        assert!(activated_at("web-3") <= staged_at(host), "canary first: {host}");
    }
    // Batch 2 (web-1, web-2) is activated before batch 3 (web-4) is contacted.
    assert!(activated_at("web-2") <= staged_at("web-4"));
    for host in ["web-1", "web-2", "web-3", "web-4"] {
        assert_eq!(page(&fleet, host), "v1\n");
    }
}

#[test]
fn a_second_deploy_gets_the_lock_holder_and_a_dead_holder_is_taken_over() {
    let fleet = Fleet::new(1);
    let repo = repo(&fleet);
    fleet.apply_project_full("site", &repo.path, "[build]\npost_deploy = [\"sleep 30\"]\n", "", "");
    let mut first = fleet.spawn_slipctl(&["deploy", "site", "test"]);
    wait_until("the first deploy to be recorded", || {
        fleet.slipctl(&["--output", "json", "history"]).json().as_array().is_some_and(|a| !a.is_empty())
    });
    let run = fleet.slipctl(&["deploy", "site", "test"]).code(3); // busy, answered before fetching
    assert!(
        run.stderr.contains("locked by deploy #1") && run.stderr.contains(&format!("pid {}", first.id())),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("slipctl unlock site test"), "{}", run.stderr);
    assert!(!run.stdout.contains("fetching"), "a busy env is answered before fetching: {}", run.stdout);
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).code(3).json();
    assert_eq!(doc["kind"], "busy");
    assert!(doc["fix"].as_str().unwrap().contains("slipctl unlock site test"), "{doc}");

    // SIGKILL the controller mid-deploy: history says interrupted, never "running" forever.
    first.kill().unwrap();
    first.wait().unwrap();
    let doc = fleet.slipctl(&["--output", "json", "history"]).ok().json();
    assert_eq!(doc[0]["status"], "interrupted");
    // The next deploy takes the dead holder's lock over and goes through.
    fleet.apply_project("site", &repo.path, "");
    let run = fleet.slipctl(&["deploy", "site", "test"]).ok();
    assert!(run.stdout.contains("took over the lock"), "{}", run.stdout);
    assert_eq!(page(&fleet, "web-1"), "v1\n");
    assert_eq!(fleet.slipctl(&["--output", "json", "history"]).ok().json()[0]["status"], "succeeded");
    // unlock on a free lock says so.
    assert!(fleet.slipctl(&["unlock", "site", "test"]).ok().stdout.contains("was not locked"));
}

#[test]
fn a_stale_generation_cannot_activate() {
    use slipway_controller::client::{self, Timeouts};
    use slipway_proto::pb;

    let fleet = Fleet::new(1);
    let repo = repo(&fleet);
    fleet.apply_project("site", &repo.path, "");
    let r1 = fleet.deploy_ok("site");
    next_version(&repo, 2);
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    // A stale controller (generation 1) replays "activate release 1".
    let tls = fleet.controller_tls();
    let agent = fleet.agent_record(0);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let err = rt.block_on(async {
        let mut c = client::connect(tls, &agent, Timeouts::default()).await.unwrap();
        let request = pb::ActivateRequest {
            target: Some(pb::Target {
                project: "site".into(),
                env: "test".into(),
                deploy_to: fleet.deploy_to("web-1", "site").display().to_string(),
                current: fleet.current("web-1", "site").display().to_string(),
            }),
            release_id: r1.clone(),
            generation: 1,
            deploy_id: 1,
            deploy_type: pb::DeployType::Deploy as i32,
            ..Default::default()
        };
        let mut stream = c.activate(request).await.unwrap().into_inner();
        loop {
            match stream.message().await {
                Ok(Some(pb::ActivateEvent { kind: Some(pb::activate_event::Kind::Done(_)) })) => {
                    return String::from("activated");
                }
                Ok(Some(_)) => {}
                Ok(None) => return String::from("ended"),
                Err(s) => return s.message().to_owned(),
            }
        }
    });
    assert!(err.contains("stale generation 1"), "{err}");
    assert_eq!(page(&fleet, "web-1"), "v2\n", "current untouched");
}

#[test]
fn an_agent_killed_mid_upload_leaves_current_untouched_and_recovers() {
    let mut fleet = Fleet::new(2);
    let repo = repo(&fleet);
    fleet.apply_project("site", &repo.path, "");
    let r1 = fleet.deploy_ok("site");
    // A big incompressible tree takes a while to unpack.
    let noise = slipway_tests::noise(96 << 20);
    std::fs::write(repo.path.join("big.bin"), &noise).unwrap();
    next_version(&repo, 2);
    let deploy = fleet.spawn_slipctl(&["deploy", "site", "test"]);
    let releases = fleet.deploy_to("web-2", "site").join("releases");
    wait_until("web-2 to start unpacking", || {
        std::fs::read_dir(&releases)
            .is_ok_and(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with(".staging-")))
    });
    fleet.agents[1].kill();
    let out = deploy.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("web-2") && stderr.contains("no host was activated"), "{stderr}");
    assert_eq!(fleet.current_release("web-1", "site").as_deref(), Some(r1.as_str()));
    assert_eq!(fleet.releases_dir_entries("web-1", "site"), vec![r1.clone()], "web-1's staged release was removed");

    fleet.agents[1].start();
    assert_eq!(fleet.releases_dir_entries("web-2", "site"), vec![r1.clone()], "staging removed at start");
    assert_eq!(fleet.current_release("web-2", "site").as_deref(), Some(r1.as_str()));
    let history = fleet.slipctl(&["--output", "json", "history"]).ok().json();
    assert_eq!(history[0]["status"], "failed");
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    assert_eq!(page(&fleet, "web-2"), "v2\n");
}

#[test]
fn a_full_disk_is_refused_with_bytes_needed_and_free() {
    if !require("root (to mount a tiny tmpfs)", is_root()) {
        return;
    }
    let fleet = Fleet::new(2);
    let repo = repo(&fleet);
    fleet.apply_project("site", &repo.path, "");
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    std::fs::write(repo.path.join("big.bin"), vec![7u8; 4 << 20]).unwrap();
    next_version(&repo, 2);
    // web-2's releases live on a 2 MiB filesystem.
    let releases = fleet.deploy_to("web-2", "site").join("releases");
    let saved = fleet.path().join("saved-releases");
    std::fs::rename(&releases, &saved).unwrap();
    std::fs::create_dir(&releases).unwrap();
    let _tmpfs = slipway_tests::Tmpfs::mount(&releases, "2m");
    let old = std::fs::read_dir(&saved).unwrap().next().unwrap().unwrap().file_name();
    let status = Command::new("cp").arg("-a").arg(saved.join(&old)).arg(&releases).status().unwrap();
    assert!(status.success());

    let run = fleet.slipctl(&["deploy", "site", "test"]).code(1);
    assert!(
        run.stderr.contains("not enough disk space") && run.stderr.contains("need") && run.stderr.contains("free"),
        "{}",
        run.stderr
    );
    assert_eq!(page(&fleet, "web-1"), "v1\n");
    assert_eq!(page(&fleet, "web-2"), "v1\n");
    assert_eq!(std::fs::read_dir(&releases).unwrap().count(), 1, "nothing left in the full filesystem");
}

#[test]
fn cancel_removes_staged_releases_and_rolls_back() {
    let fleet = Fleet::new(2);
    let repo = repo(&fleet);
    fleet.apply_project("site", &repo.path, "");
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    next_version(&repo, 2);
    // web-1 goes first (serial) and is activated; web-2's pre_release says it started, then
    // hangs until we cancel.
    let marks = fleet.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    std::fs::set_permissions(&marks, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let started = marks.join("web-2-pre-release");
    let marker = format!("300.{}", std::process::id());
    let target = format!(
        "{}pre_release = [\"test \\\"$SLIPWAY_HOST\\\" != web-2 || {{ touch {}; sleep {marker}; }}\"]\n",
        hook_user_line(),
        started.display()
    );
    fleet.apply_project_full("site", &repo.path, "[rollout]\nstrategy = \"serial\"\n", &target, "");
    let deploy = fleet.spawn_slipctl(&["deploy", "site", "test"]);
    wait_until("web-2's pre_release to start", || started.exists());
    assert_eq!(page(&fleet, "web-1"), "v2\n", "web-1 was activated first");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(deploy.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let out = deploy.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // The controller going away stopped web-2's pre_release: its hook is killed, not left to
    // finish its 300 s while the target stays locked.
    assert!(slipway_tests::processes_gone(&marker), "web-2's pre_release hook outlived the cancel");
    assert_eq!(page(&fleet, "web-1"), "v1\n", "activated host rolled back");
    assert_eq!(page(&fleet, "web-2"), "v1\n");
    assert_eq!(fleet.releases("web-2", "site").len(), 1, "web-2's staged release removed");
    let history = fleet.slipctl(&["--output", "json", "history"]).ok().json();
    assert_eq!(history[0]["status"], "cancelled");
}

#[test]
fn zero_downtime_under_nginx_through_20_deploys_and_rollbacks() {
    if !require("nginx (apt-get install nginx)", slipway_tests::have_nginx()) {
        return;
    }
    let fleet = Fleet::new(1);
    let repo = repo(&fleet);
    fleet.apply_project("site", &repo.path, "[rollout]\nauto_rollback = true\n");
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    let port = free_port();
    let dir = fleet.path().join("nginx");
    std::fs::create_dir_all(&dir).unwrap();
    let user = if is_root() { "user root;\n" } else { "" };
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "{user}daemon off;\nworker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 256; }}\n\
             http {{ access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
             server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n",
            d = dir.display(),
            root = fleet.current("web-1", "site").display()
        ),
    )
    .unwrap();
    let mut nginx = Command::new("nginx")
        .args(["-p", dir.to_str().unwrap(), "-c", dir.join("nginx.conf").to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("nginx", || http_get(port, "/index.html").is_ok());

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(240);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline && seen.len() < 200_000
            {
                seen.push(http_get(port, "/index.html").map_err(|e| e.to_string()));
            }
            seen
        })
    };
    for v in 2..=11 {
        next_version(&repo, v);
        fleet.slipctl(&["deploy", "site", "test"]).ok();
        fleet.slipctl(&["rollback", "site", "test"]).ok();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = load.join().unwrap();
    slipway_tests::terminate(&mut nginx);
    assert!(seen.len() > 50, "only {} requests", seen.len());
    let versions: Vec<String> = (1..=11).map(|v| format!("v{v}\n")).collect();
    for response in &seen {
        let (status, body) = response.as_ref().unwrap_or_else(|e| panic!("request failed: {e}"));
        assert_eq!(*status, 200, "every response is 200");
        assert!(versions.contains(body), "every body comes from exactly one release: {body:?}");
    }
}

#[test]
fn a_first_deploy_whose_post_release_fails_says_the_hosts_stay_on_the_new_release() {
    let fleet = Fleet::new(2);
    let repo = repo(&fleet);
    let target = format!("{}post_release = [\"exit 7\"]\n", hook_user_line());
    fleet.apply_project_full("site", &repo.path, "", &target, "");
    let run = fleet.slipctl(&["deploy", "site", "test"]).code(1);
    assert!(
        run.stderr.contains("stay on the new release") && run.stderr.contains("no previous release"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("rolled back every"), "{}", run.stderr);
    for host in ["web-1", "web-2"] {
        assert_eq!(page(&fleet, host), "v1\n", "{host} serves the new release");
    }
    let shown = fleet.slipctl(&["--output", "json", "show", "1"]).ok().json();
    assert_eq!(shown["status"], "failed", "{shown}");
    assert!(shown["hosts"].as_array().unwrap().iter().all(|h| h["activated"] == true), "{shown}");
}

#[test]
fn a_rollback_that_cannot_reach_its_host_leaves_the_deploy_incomplete() {
    if !require("root", is_root()) {
        return;
    }
    let mut fleet = Fleet::new(1);
    let repo = repo(&fleet);
    let marker = fleet.path().join("gate");
    std::fs::create_dir_all(&marker).unwrap();
    std::fs::set_permissions(&marker, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let (armed, flag) = (marker.join("armed"), marker.join("now"));
    let hook = format!(
        "[ -e {0} ] || exit 0; rm -f {0}; touch {1}; while [ -e {1} ]; do sleep 0.05; done",
        armed.display(),
        flag.display()
    );
    let target = format!("user = \"www\"\npost_release = [\"{hook}\"]\n");
    fleet.apply_project_full("site", &repo.path, "", &target, "[env.test.rollout]\nhost_timeout_secs = 3\n");
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    next_version(&repo, 2);
    std::fs::write(&armed, "").unwrap();
    let mut deploy = fleet.spawn_slipctl(&["deploy", "site", "test"]);
    wait_until("post_release to start", || flag.exists());
    // The host goes away after its flip, and stays away for the rollback.
    fleet.agents[0].kill();
    let _ = std::fs::remove_file(&flag);
    assert_eq!(deploy.wait().unwrap().code(), Some(1));
    let shown = fleet.slipctl(&["--output", "json", "show", "2"]).ok().json();
    assert_eq!(shown["status"], "incomplete", "{shown:#}");
    let text = shown.to_string();
    assert!(text.contains("possibly activated"), "{text}");
    // What the host really runs: the new release (the flip happened before it went away).
    fleet.agents[0].start();
    assert_eq!(page(&fleet, "web-1"), "v2\n");
}

#[test]
fn packaging_failing_for_a_later_batch_fails_its_hosts_and_rolls_back_the_first() {
    if !require("root (to mount a tiny tmpfs)", is_root()) {
        return;
    }
    let fleet = Fleet::new(2);
    let repo = repo(&fleet);
    std::fs::write(repo.path.join("big.bin"), slipway_tests::noise(3 << 20)).unwrap();
    repo.commit("big");
    fleet.apply_project("site", &repo.path, "");
    // Only web-1 holds v1: in the next deploy it gets a small delta, web-2 needs the whole tree.
    let r1 = fleet.slipctl(&["--output", "json", "deploy", "site", "test", "--hosts", "web-1"]).ok().json()["release"]
        .as_str()
        .unwrap()
        .to_owned();
    next_version(&repo, 2);
    // The controller's package cache is a 1 MiB filesystem from now on: the delta fits, the
    // full artifact for the second batch does not.
    let artifacts = fleet.home.join("cache").join("artifacts");
    std::fs::rename(&artifacts, fleet.path().join("saved-artifacts")).unwrap();
    std::fs::create_dir(&artifacts).unwrap();
    let _tmpfs = slipway_tests::Tmpfs::mount(&artifacts, "1m");
    fleet.apply_project_full("site", &repo.path, "[rollout]\nstrategy = \"serial\"\n", "", "canary = [\"web-1\"]\n");

    let run = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).code(1);
    let doc = run.json();
    assert_eq!(doc["status"], "rolled_back", "{}", run.stderr);
    let host = |name: &str| doc["hosts"].as_array().unwrap().iter().find(|h| h["host"] == name).unwrap().clone();
    let steps = |name: &str| -> Vec<String> {
        host(name)["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(steps("web-1"), ["connect", "stage", "activate", "rollback"], "{doc}");
    assert_eq!(steps("web-2"), ["package"], "{doc}");
    assert_eq!(host("web-2")["activated"], false);
    assert_eq!(host("web-1")["previous_release"], r1.as_str());
    assert!(run.stderr.contains("web-2") && run.stderr.contains("package"), "{}", run.stderr);
    assert_eq!(page(&fleet, "web-1"), "v1\n", "web-1 went back to v1");
    assert_eq!(fleet.current_release("web-1", "site").as_deref(), Some(r1.as_str()));
    assert_eq!(page(&fleet, "web-2"), "", "web-2 was never given anything");
}

#[test]
fn retention_prunes_only_after_success_and_rolled_back_releases_do_not_count() {
    let fleet = Fleet::new(1);
    let repo = repo(&fleet);
    let keep = |n: u32| format!("keep_releases = {n}\n");
    fleet.apply_project_full("site", &repo.path, "", "", &keep(2));
    let mut r = vec![fleet.deploy_ok("site")];
    for v in 2..=3 {
        next_version(&repo, v);
        r.push(fleet.deploy_ok("site"));
    }
    assert_eq!(fleet.releases("web-1", "site"), [r[1].clone(), r[2].clone()], "two kept, pruned after success");

    // r4 fails its health check and is rolled back: nothing is pruned by a rollout that did not
    // go through (r2 would have gone when r4 was activated), and r4 stops counting.
    next_version(&repo, 4);
    let health = "[rollout]\nhealth = { command = \"false\", timeout_secs = 5, retries = 0, interval_secs = 0 }\n";
    fleet.apply_project_full("site", &repo.path, health, &hook_user_line(), &keep(2));
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).code(1).json();
    assert_eq!(doc["status"], "rolled_back");
    let r4 = doc["release"].as_str().unwrap().to_owned();
    assert_eq!(fleet.releases("web-1", "site"), [r[1].clone(), r[2].clone(), r4.clone()]);
    let kept = |fleet: &Fleet| -> Vec<(String, String)> {
        let doc = fleet.slipctl(&["--output", "json", "releases", "site", "test"]).ok().json();
        doc[0]["releases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| (x["id"].as_str().unwrap().to_owned(), x["kept"].as_str().unwrap().to_owned()))
            .collect()
    };
    assert_eq!(
        kept(&fleet),
        [
            (r[1].clone(), "rollback_target".into()),
            (r[2].clone(), "current".into()),
            (r4.clone(), "rolled_back".into())
        ]
    );
    // The next good deploy prunes: r5 and r3 are the two that count; r4 and r2 go.
    next_version(&repo, 5);
    fleet.apply_project_full("site", &repo.path, "", "", &keep(2));
    let r5 = fleet.deploy_ok("site");
    assert_eq!(fleet.releases("web-1", "site"), [r[2].clone(), r5.clone()]);

    // A rollback target older than the newest keep_releases good ones is kept, and `releases` says so.
    fleet.apply_project_full("site", &repo.path, "", "", &keep(3));
    next_version(&repo, 6);
    let r6 = fleet.deploy_ok("site");
    fleet.slipctl(&["rollback", "site", "test", "--to", &r[2]]).ok(); // r6 rolled back from
    next_version(&repo, 7);
    fleet.apply_project_full("site", &repo.path, "", "", &keep(2));
    let r7 = fleet.deploy_ok("site"); // previous: r3; good, newest first: r7, r5, r3
    assert_eq!(fleet.releases("web-1", "site"), [r[2].clone(), r5.clone(), r7.clone()], "r6 went");
    assert!(!fleet.releases("web-1", "site").contains(&r6));
    assert_eq!(kept(&fleet)[0], (r[2].clone(), "rollback_target".into()));
    let text = fleet.slipctl(&["releases", "site", "test"]).ok().stdout;
    assert!(text.contains("rollback target (kept beyond keep_releases = 2)"), "{text}");
}

#[test]
fn retry_failed_ships_the_same_release_to_the_hosts_that_did_not_take_it() {
    let fleet = Fleet::new(3);
    let repo = repo(&fleet);
    fleet.apply_project("site", &repo.path, "");
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    next_version(&repo, 2);
    // web-2's post_release fails after its flip; web-3's pre_release fails before it.
    let target = format!(
        "{}pre_release = [\"test \\\"$SLIPWAY_HOST\\\" != web-3\"]\npost_release = [\"test \\\"$SLIPWAY_HOST\\\" != web-2\"]\n",
        hook_user_line()
    );
    let top = "[rollout]\nmax_failures = 2\nauto_rollback = false\n";
    fleet.apply_project_full("site", &repo.path, top, &target, "");
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).code(1).json();
    assert_eq!(doc["status"], "partial", "{doc}");
    let (n, release) = (doc["id"].as_u64().unwrap(), doc["release"].as_str().unwrap().to_owned());
    // Meanwhile main moves on: the retry ships deploy n's commit, not main's.
    next_version(&repo, 3);
    fleet.apply_project_full("site", &repo.path, "", &hook_user_line(), "");

    let doc =
        fleet.slipctl(&["--output", "json", "deploy", "site", "test", "--retry-failed", &n.to_string()]).ok().json();
    assert_eq!(doc["release"], release.as_str(), "the same release");
    let hosts: Vec<_> = doc["hosts"].as_array().unwrap().iter().map(|h| h["host"].as_str().unwrap()).collect();
    assert_eq!(hosts, ["web-2", "web-3"], "only the hosts that did not take it");
    for host in ["web-1", "web-2", "web-3"] {
        assert_eq!(fleet.current_release(host, "site").as_deref(), Some(release.as_str()), "{host}");
        assert_eq!(page(&fleet, host), "v2\n", "{host} serves deploy #{n}'s commit");
    }
    // web-2 held the release already: it was not unpacked again.
    let web2 = &doc["hosts"][0];
    let stage = web2["steps"].as_array().unwrap().iter().find(|s| s["name"] == "stage").unwrap();
    assert!(stage["ok"].as_bool().unwrap(), "{web2}");
    let again = fleet.slipctl(&["deploy", "site", "test", "--retry-failed", &doc["id"].to_string()]).ok();
    assert!(again.stdout.contains("nothing to retry"), "{}", again.stdout);
    let run = fleet.slipctl(&["deploy", "site", "test", "--retry-failed", "999"]).code(2);
    assert!(run.stderr.contains("#999"), "{}", run.stderr);
}

#[test]
fn a_canary_pause_waits_for_promote_or_abort_and_outlives_its_process() {
    let fleet = Fleet::new(3);
    let repo = repo(&fleet);
    fleet.apply_project("site", &repo.path, "");
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    fleet.apply_project_full(
        "site",
        &repo.path,
        "[rollout]\nstrategy = \"serial\"\ncanary_pause = true\n",
        "",
        "canary = [\"web-1\"]\n",
    );
    let latest = |fleet: &Fleet| fleet.slipctl(&["--output", "json", "history"]).ok().json()[0].clone();
    let pages = |fleet: &Fleet| -> Vec<String> { ["web-1", "web-2", "web-3"].iter().map(|h| page(fleet, h)).collect() };
    let pause = |fleet: &Fleet, v: u32| {
        next_version(&repo, v);
        let deploy = fleet.spawn_slipctl(&["deploy", "site", "test"]);
        wait_until("the deploy to pause after its canary", || latest(fleet)["status"] == "paused");
        (deploy, latest(fleet)["id"].as_u64().unwrap())
    };

    // Paused: the canary is on v2, the rest on v1; the lock is held; promote carries it on.
    let (deploy, n) = pause(&fleet, 2);
    assert_eq!(pages(&fleet), ["v2\n", "v1\n", "v1\n"]);
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).code(3).json();
    assert!(doc["fix"].as_str().unwrap().contains(&format!("slipctl promote {n}")), "{doc}");
    let run = fleet.slipctl(&["promote", &n.to_string()]).ok();
    assert!(run.stdout.contains("succeeded"), "{}", run.stdout);
    assert_eq!(deploy.wait_with_output().unwrap().status.code(), Some(0));
    assert_eq!(pages(&fleet), ["v2\n", "v2\n", "v2\n"]);
    let steps = |doc: &serde_json::Value, host: &str| -> usize {
        doc["hosts"].as_array().unwrap().iter().find(|h| h["host"] == host).unwrap()["steps"].as_array().unwrap().len()
    };

    // Abort: the canary goes back, the others are never touched.
    let (deploy, n) = pause(&fleet, 3);
    assert_eq!(pages(&fleet), ["v3\n", "v2\n", "v2\n"]);
    // (It did what was asked: exit 0; 1 only when a host could not be taken back.)
    fleet.slipctl(&["abort", &n.to_string()]).ok();
    assert_eq!(deploy.wait_with_output().unwrap().status.code(), Some(1));
    assert_eq!(pages(&fleet), ["v2\n", "v2\n", "v2\n"]);
    let doc = fleet.slipctl(&["--output", "json", "show", &n.to_string()]).ok().json();
    assert_eq!(doc["status"], "cancelled");
    assert_eq!(steps(&doc, "web-2"), 0, "web-2 was never touched: {doc}");

    // The waiting process dies: the deploy stays paused (not interrupted), keeps its lock, and
    // promote from another process carries it on.
    let (mut deploy, n) = pause(&fleet, 4);
    deploy.kill().unwrap();
    deploy.wait().unwrap();
    assert_eq!(latest(&fleet)["status"], "paused");
    fleet.slipctl(&["deploy", "site", "test"]).code(3);
    fleet.slipctl(&["unlock", "site", "test"]).code(2);
    let run = fleet.slipctl(&["promote", &n.to_string()]).ok();
    assert!(run.stdout.contains("succeeded"), "{}", run.stdout);
    assert_eq!(pages(&fleet), ["v4\n", "v4\n", "v4\n"]);
    fleet.slipctl(&["promote", &n.to_string()]).code(2);
    let doc = fleet.slipctl(&["--output", "json", "show", &n.to_string()]).ok().json();
    assert_eq!(
        steps(&doc, "web-1"),
        3,
        "the canary keeps its connect, stage and activate; it is not staged again: {doc}"
    );

    // Nobody decides within canary_pause_timeout_secs: the deploy aborts by itself, and the
    // pause is a step of the canary with its timing.
    fleet.apply_project_full(
        "site",
        &repo.path,
        "[rollout]\nstrategy = \"serial\"\ncanary_pause = true\ncanary_pause_timeout_secs = 1\n",
        "",
        "canary = [\"web-1\"]\n",
    );
    next_version(&repo, 5);
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).code(1).json();
    assert_eq!(doc["status"], "cancelled", "{doc}");
    assert_eq!(pages(&fleet), ["v4\n", "v4\n", "v4\n"]);
    let web1 = doc["hosts"].as_array().unwrap().iter().find(|h| h["host"] == "web-1").unwrap().clone();
    let pause = web1["steps"].as_array().unwrap().iter().find(|s| s["name"] == "pause").unwrap().clone();
    assert!(
        pause["elapsed_ms"].as_u64().unwrap() >= 1000 && pause["detail"].as_str().unwrap().contains("aborted"),
        "{pause}"
    );
}
