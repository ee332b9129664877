//! Faults: an agent down, leftovers after a crash, a non-symlink at `current`.

use slipway_tests::{Fleet, Repo};

fn repo_with(fleet: &Fleet, page: &str) -> Repo {
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", page);
    repo.commit("c1");
    repo
}

#[test]
fn one_agent_down_fails_the_deploy_and_activates_no_host() {
    let mut fleet = Fleet::new(3);
    let repo = repo_with(&fleet, "v1");
    fleet.apply_project("site", &repo.path, "");
    let first = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok().json();
    let r1 = first["release"].as_str().unwrap().to_owned();

    repo.write("index.html", "v2");
    repo.commit("c2");
    fleet.agents[1].kill();
    let run = fleet.slipctl(&["deploy", "site", "test"]).code(1);
    assert!(run.stderr.contains("web-2"), "the error names the host: {}", run.stderr);
    assert!(run.stderr.contains("no host was activated"), "{}", run.stderr);
    for host in ["web-1", "web-3"] {
        assert_eq!(fleet.current_release(host, "site").as_deref(), Some(r1.as_str()), "{host} untouched");
        assert_eq!(fleet.releases_dir_entries(host, "site"), vec![r1.clone()], "{host}: staged release removed");
    }
    let history = fleet.slipctl(&["--output", "json", "history"]).ok().json();
    assert_eq!(history[0]["status"], "failed");
    assert!(history[0]["error"].as_str().unwrap().contains("web-2"));

    // Rollback with a host down is refused before touching any host.
    let run = fleet.slipctl(&["rollback", "site", "test"]).code(1);
    assert!(run.stderr.contains("web-2"), "{}", run.stderr);

    // With the agent back the same deploy goes through.
    fleet.agents[1].start();
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    assert_eq!(std::fs::read_to_string(fleet.current("web-2", "site").join("index.html")).unwrap(), "v2");
}

#[test]
fn agent_start_removes_staging_leftovers_and_trusts_the_symlink() {
    let mut fleet = Fleet::new(1);
    let repo = repo_with(&fleet, "v1");
    fleet.apply_project("site", &repo.path, "");
    let r1 = fleet.deploy_ok("site");
    repo.write("index.html", "v2");
    repo.commit("c2");
    let r2 = fleet.deploy_ok("site");

    // A crash mid-upload leaves a staging dir; someone relinks `current` by hand meanwhile.
    fleet.agents[0].kill();
    let releases = fleet.deploy_to("web-1", "site").join("releases");
    std::fs::create_dir_all(releases.join(".staging-20300101-000000-abcdef0/half")).unwrap();
    let current = fleet.current("web-1", "site");
    std::fs::remove_file(&current).unwrap();
    std::os::unix::fs::symlink(releases.join(&r1), &current).unwrap();
    fleet.agents[0].start();

    assert_eq!(fleet.releases_dir_entries("web-1", "site"), vec![r1.clone(), r2.clone()]);
    let doc = fleet.slipctl(&["--output", "json", "releases", "site", "test"]).ok().json();
    assert_eq!(doc[0]["current"], r1.as_str(), "the symlink is the truth");
    assert!(fleet.agents[0].log().contains("leftover"), "{}", fleet.agents[0].log());
}

#[test]
fn a_directory_at_current_is_never_replaced() {
    let fleet = Fleet::new(1);
    let repo = repo_with(&fleet, "v1");
    fleet.apply_project("site", &repo.path, "");
    let current = fleet.current("web-1", "site");
    std::fs::create_dir_all(&current).unwrap();
    std::fs::write(current.join("index.html"), "hand-made").unwrap();
    let run = fleet.slipctl(&["deploy", "site", "test"]).code(1);
    assert!(run.stderr.contains("not a symlink"), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(current.join("index.html")).unwrap(), "hand-made");
}

#[test]
fn paths_outside_allowed_roots_are_refused() {
    let fleet = Fleet::new(1);
    let repo = repo_with(&fleet, "v1");
    let file = fleet.path().join("escape.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"escape\"\nrepo = \"{}\"\n[target]\ndeploy_to = \"{}/elsewhere/app\"\n[env.test]\nhosts = [\"web-1\"]\n",
            repo.path.display(),
            fleet.path().display()
        ),
    )
    .unwrap();
    fleet.slipctl(&["project", "apply", "-f", file.to_str().unwrap()]).ok();
    let run = fleet.slipctl(&["deploy", "escape", "test"]).code(2); // the agent refused the target: bad input
    assert!(run.stderr.contains("allowed_roots"), "{}", run.stderr);
    assert!(!fleet.path().join("elsewhere").exists());
}

/// Wait for `ok`, up to `secs`.
fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !ok() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn staging_present(fleet: &Fleet, host: &str) -> bool {
    std::fs::read_dir(fleet.deploy_to(host, "site").join("releases"))
        .is_ok_and(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with(".staging-")))
}

#[test]
fn a_frozen_agent_is_detected_within_the_host_timeout() {
    let fleet = Fleet::new(2);
    let repo = repo_with(&fleet, "v1");
    fleet.apply_project("site", &repo.path, "[rollout]\nhost_timeout_secs = 3\n");
    let r1 = fleet.deploy_ok("site");
    repo.write("index.html", "v2");
    repo.commit("c2");
    fleet.agents[1].signal(rustix::process::Signal::STOP);
    let started = std::time::Instant::now();
    let run = fleet.slipctl(&["deploy", "site", "test"]).code(1);
    let took = started.elapsed();
    fleet.agents[1].signal(rustix::process::Signal::CONT);
    assert!(took.as_secs() < 15, "a hung host must be given up on within the host timeout, took {took:?}");
    assert!(run.stderr.contains("web-2") && run.stderr.contains("no host was activated"), "{}", run.stderr);
    assert_eq!(fleet.current_release("web-1", "site").as_deref(), Some(r1.as_str()));
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    assert_eq!(std::fs::read_to_string(fleet.current("web-2", "site").join("index.html")).unwrap(), "v2");
}

#[test]
fn a_host_partitioned_mid_upload_fails_alone_and_recovers() {
    if !slipway_tests::require("root and iproute2 (network namespaces)", slipway_tests::netns_available()) {
        return;
    }
    let mut fleet = Fleet::new(1);
    let ns = slipway_tests::NetNs::new(1);
    fleet.add_agent_in("web-2", &ns);
    let repo = repo_with(&fleet, "v1");
    fleet.apply_project("site", &repo.path, "[rollout]\nhost_timeout_secs = 4\n");
    let r1 = fleet.deploy_ok("site");
    assert_eq!(fleet.current_release("web-2", "site").as_deref(), Some(r1.as_str()), "deployed across the veth");

    let noise = slipway_tests::noise(64 << 20);
    std::fs::write(repo.path.join("big.bin"), &noise).unwrap();
    repo.write("index.html", "v2");
    repo.commit("c2");
    let deploy = fleet.spawn_slipctl(&["deploy", "site", "test"]);
    wait_for("web-2 to start receiving", 60, || staging_present(&fleet, "web-2"));
    ns.partition(true);
    let started = std::time::Instant::now();
    let out = deploy.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(started.elapsed().as_secs() < 20, "partition detected in {:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("web-2") && stderr.contains("no host was activated"), "{stderr}");
    assert_eq!(fleet.current_release("web-1", "site").as_deref(), Some(r1.as_str()));
    assert_eq!(fleet.releases_dir_entries("web-1", "site"), vec![r1.clone()]);

    // Healed: the agent notices the dead upload and drops its staging; the next deploy goes through.
    ns.partition(false);
    wait_for("web-2 to drop the broken upload", 90, || !staging_present(&fleet, "web-2"));
    let addr: std::net::SocketAddr = format!("{}:7443", ns.ip_ns).parse().unwrap();
    wait_for("web-2 to be reachable again", 30, || {
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1)).is_ok()
    });
    assert_eq!(fleet.current_release("web-2", "site").as_deref(), Some(r1.as_str()));
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    assert_eq!(std::fs::read_to_string(fleet.current("web-2", "site").join("index.html")).unwrap(), "v2");
    let history = fleet.slipctl(&["--output", "json", "history"]).ok().json();
    let statuses: Vec<_> =
        history.as_array().unwrap().iter().map(|d| d["status"].as_str().unwrap().to_owned()).collect();
    assert_eq!(statuses, ["succeeded", "failed", "succeeded"]);
}

#[test]
fn an_agent_killed_around_the_flip_leaves_old_or_new_never_nothing() {
    let mut fleet = Fleet::new(1);
    let repo = repo_with(&fleet, "v0");
    fleet.apply_project("site", &repo.path, "");
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    let mut served = "v0".to_owned();
    for round in 1..=6u64 {
        repo.write("index.html", &format!("v{round}"));
        repo.commit(&format!("c{round}"));
        let deploy = fleet.spawn_slipctl(&["deploy", "site", "test"]);
        // Kill at a different moment each round: before, during and after staging and the flip.
        std::thread::sleep(std::time::Duration::from_millis(round * 40));
        fleet.agents[0].kill();
        let _ = deploy.wait_with_output();
        fleet.agents[0].start();
        let current = fleet.current("web-1", "site");
        let target = std::fs::read_link(&current).expect("current is always a symlink");
        let page = std::fs::read_to_string(target.join("index.html")).expect("current is a complete release");
        assert!(
            page == format!("v{round}") || page == served,
            "round {round}: {page} is neither new nor old ({served})"
        );
        served = page;
        let leftovers: Vec<_> = std::fs::read_dir(current.parent().unwrap())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "temporary links are cleaned at start");
        assert!(!staging_present(&fleet, "web-1"), "staging is cleaned at start");
        let history = fleet.slipctl(&["--output", "json", "history", "--limit", "1"]).ok().json();
        assert_ne!(history[0]["status"], "running", "history never says running for a finished controller");
    }
    // And the fleet still deploys.
    fleet.slipctl(&["deploy", "site", "test"]).ok();
}

/// Hunting the window in which a rollback once left hosts without `current`: deploy, deploy,
/// rollback in a loop on two agents with pruning at its tightest, an agent restart (reconcile)
/// every few rounds, and a reader on each host that opens `current/index.html` all the while.
/// After every operation `current` must be a symlink to a release that exists, and the readers
/// must never have found nothing.
#[test]
fn current_never_vanishes_through_deploys_rollbacks_prunes_and_restarts() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let mut fleet = Fleet::new(2);
    let repo = repo_with(&fleet, "v0");
    fleet.apply_project_full("site", &repo.path, "", "", "keep_releases = 1\n");
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = ["web-1", "web-2"]
        .iter()
        .map(|host| {
            let (page, stop) = (fleet.current(host, "site").join("index.html"), stop.clone());
            let (reads, misses) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
            let (r, m) = (reads.clone(), misses.clone());
            let handle = std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if std::fs::read(&page).is_err() {
                        m.fetch_add(1, Ordering::Relaxed);
                    }
                    r.fetch_add(1, Ordering::Relaxed);
                }
            });
            (host.to_string(), handle, reads, misses)
        })
        .collect();
    let check = |fleet: &Fleet, what: &str| {
        for host in ["web-1", "web-2"] {
            let link = fleet.current(host, "site");
            let target = std::fs::read_link(&link).unwrap_or_else(|e| panic!("{what}: {host} has no current: {e}"));
            assert!(target.join("index.html").is_file(), "{what}: {host}'s current points at nothing: {target:?}");
        }
    };
    for round in 1..=6u32 {
        for step in 0..2 {
            repo.write("index.html", &format!("v{round}.{step}"));
            repo.commit(&format!("r{round}.{step}"));
            fleet.slipctl(&["deploy", "site", "test"]).ok();
            check(&fleet, &format!("round {round}, deploy {step}"));
        }
        fleet.slipctl(&["rollback", "site", "test"]).ok();
        check(&fleet, &format!("round {round}, rollback"));
        if round % 3 == 0 {
            fleet.agents[(round as usize / 3) % 2].kill();
            fleet.agents[(round as usize / 3) % 2].start();
            check(&fleet, &format!("round {round}, after an agent restart"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for (host, handle, reads, misses) in readers {
        handle.join().unwrap();
        let (reads, misses) = (reads.load(Ordering::Relaxed), misses.load(Ordering::Relaxed));
        eprintln!("{host}: {reads} reads of current/index.html, {misses} found nothing");
        assert!(reads > 100, "{host}: the reader ran ({reads} reads)");
        assert_eq!(misses, 0, "{host}: {misses} of {reads} reads of current/index.html found nothing");
    }
}

#[test]
fn messages_name_the_host_its_address_and_the_fix() {
    let mut fleet = Fleet::new(2);
    let repo = repo_with(&fleet, "v1");
    fleet.apply_project("site", &repo.path, "");
    // An agent that is down: its name, its address, and what to check there.
    fleet.agents[1].kill();
    let addr = fleet.agents[1].addr();
    let run = fleet.slipctl(&["deploy", "site", "test"]).code(1);
    assert!(run.stderr.contains("web-2") && run.stderr.contains(&addr), "{}", run.stderr);
    assert!(run.stderr.contains("systemctl status slipd"), "{}", run.stderr);
    fleet.agents[1].start();

    // The registry sends web-2's name to web-1's address: the error says whose certificate it is.
    let web1 = fleet.agents[0].addr();
    fleet.slipctl(&["agent", "rm", "web-2"]).ok();
    let bundle = fleet.path().join("web-2-again");
    fleet
        .slipctl(&["agent", "add", "web-2", "--addr", &web1, "--label", "role=web", "--out", bundle.to_str().unwrap()])
        .ok();
    let run = fleet.slipctl(&["deploy", "site", "test"]).code(1);
    assert!(run.stderr.contains("agent 'web-1''s, not agent 'web-2''s"), "{}", run.stderr);
    assert!(run.stderr.contains("slipctl agent rm web-2"), "{}", run.stderr);
    assert!(!run.stderr.contains("tls: tls:"), "{}", run.stderr);

    // Removing an agent a project still selects warns and names the project; applying a project
    // that names an unregistered host warns too.
    let run = fleet.slipctl(&["agent", "rm", "web-2"]).ok();
    assert!(run.stderr.contains("warning") && run.stderr.contains("site/test"), "{}", run.stderr);
    let file = fleet.path().join("ghost.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"ghost\"\nrepo = \"{}\"\n[target]\ndeploy_to = \"/data/g\"\n[env.test]\nhosts = [\"web-9\"]\n",
            repo.path.display()
        ),
    )
    .unwrap();
    let run = fleet.slipctl(&["project", "apply", "-f", file.to_str().unwrap()]).ok();
    assert!(run.stderr.contains("warning") && run.stderr.contains("web-9"), "{}", run.stderr);
}
