//! The app user (`www`, most likely to be compromised on a web host) and a hostile repository
//! against the real binaries: nothing they do gives them more than they had. Each test plays the
//! attacker as a real unprivileged process or a real hostile input.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use slipway_tests::{Fleet, Racer, Repo, is_root, require, traversable, www_ids};

const SECRET: &str = "ROOT-ONLY-SECRET-7f3a";

/// Every path under `dir` with its owner uid, sorted.
fn owners(dir: &Path) -> Vec<(String, u32)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u32)>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            out.push((p.strip_prefix(root).unwrap().display().to_string(), meta.uid()));
            if meta.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Every regular file under `dir` (not following symlinks) whose content holds `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            found.extend(files_containing(&p, needle));
        } else if meta.is_file() && std::fs::read(&p).unwrap().windows(needle.len()).any(|w| w == needle.as_bytes()) {
            found.push(p);
        }
    }
    found
}

/// A root-only directory holding a root-only file that starts with [`SECRET`] (and is large, so
/// a copy of it takes long enough to be seen).
fn root_only(dir: &Path, file: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let mut content = format!("{SECRET}\n").into_bytes();
    content.extend(std::iter::repeat_n(b'.', 16 << 20));
    std::fs::write(dir.join(file), content).unwrap();
    std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// Run `slipctl deploy` and wait for it at most `limit`; `None` if it did not finish.
fn deploy_within(fleet: &Fleet, project: &str, limit: Duration) -> Option<i32> {
    let mut child = fleet.spawn_slipctl(&["deploy", project, "test"]);
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status.code().unwrap_or(-1));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn www_racing_shared_paths_and_retained_releases_gets_nothing_more() {
    if !require("root", is_root()) {
        return;
    }
    let (www, _) = www_ids();
    let fleet = Fleet::new(1);
    traversable(&fleet.agents[0].root);
    let repo = Repo::with_files(
        fleet.path(),
        &[("app/conf/app.txt", "one\n"), ("app/index.html", "v1\n"), ("storage/logs/.keep", "")],
    );
    fleet.apply_project_full("race", &repo.path, "", "user = \"www\"\nshared = [\"storage/logs\"]\n", "");
    fleet.deploy_ok("race");

    // Root's: a directory like /var/log that must stay root's, and a secret www must never read.
    let victim = fleet.path().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("keep"), "root's\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o700)).unwrap();
    let secret = fleet.path().join("secret/conf");
    root_only(&secret, "app.txt");
    std::fs::set_permissions(fleet.path().join("secret"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let before = owners(&victim);

    let deploy_to = fleet.deploy_to("web-1", "race");
    let current = fleet.current("web-1", "race");
    let shared = deploy_to.join("shared/storage");
    let racers = [
        Racer::start(&["swap", shared.to_str().unwrap(), "link", victim.to_str().unwrap()]),
        Racer::start(&["swap", current.join("app/conf").to_str().unwrap(), "link", secret.to_str().unwrap()]),
        Racer::start(&["scan", deploy_to.join("releases").to_str().unwrap(), SECRET]),
    ];
    let mut outcomes = Vec::new();
    for i in 2..=11 {
        repo.write("app/index.html", &format!("v{i}\n"));
        repo.commit(&format!("v{i}"));
        outcomes.push(deploy_within(&fleet, "race", Duration::from_secs(60)).expect("a deploy hung"));
    }
    let mut rounds = Vec::new();
    let mut leaked = Vec::new();
    for racer in racers {
        let (n, found) = racer.finish();
        rounds.push(n);
        leaked.extend(found);
    }
    assert!(rounds.iter().all(|n| *n > 100), "the racers ran: {rounds:?}");
    assert!(leaked.is_empty(), "www read root-only bytes: {leaked:?}");
    assert_eq!(owners(&victim), before, "root's directory was changed (outcomes {outcomes:?})");
    assert!(owners(&victim).iter().all(|(_, uid)| *uid != www));
    assert!(files_containing(&deploy_to, SECRET).is_empty(), "a root-only byte was copied into a release");
    assert!(std::fs::read(secret.join("app.txt")).unwrap().starts_with(SECRET.as_bytes()));
    // With the racers gone, the next deploy works and serves the right content.
    for dir in [&shared, &current.join("app/conf")] {
        let evil = PathBuf::from(format!("{}.evil", dir.display()));
        if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::rename(dir, format!("{}.tmp", evil.display())).unwrap();
            std::fs::rename(&evil, dir).unwrap();
        }
    }
    repo.write("app/index.html", "final\n");
    repo.commit("final");
    fleet.deploy_ok("race");
    assert_eq!(std::fs::read_to_string(current.join("app/index.html")).unwrap(), "final\n");
    assert_eq!(std::fs::read_to_string(current.join("app/conf/app.txt")).unwrap(), "one\n");
}

#[test]
fn a_fifo_raced_into_a_retained_release_fails_the_deploy_in_time() {
    if !require("root", is_root()) {
        return;
    }
    let fleet = Fleet::new(1);
    let repo = Repo::with_files(fleet.path(), &[("app/data.bin", "payload\n"), ("app/index.html", "v1\n")]);
    fleet.apply_project_full("fifo", &repo.path, "", "user = \"www\"\n", "");
    fleet.deploy_ok("fifo");
    let current = fleet.current("web-1", "fifo");
    let racer = Racer::start(&["swap", current.join("app/data.bin").to_str().unwrap(), "fifo"]);
    for i in 2..=5 {
        repo.write("app/index.html", &format!("v{i}\n"));
        repo.commit(&format!("v{i}"));
        assert!(deploy_within(&fleet, "fifo", Duration::from_secs(60)).is_some(), "deploy {i} hung on a fifo");
    }
    let (rounds, _) = racer.finish();
    assert!(rounds > 100);
    // The agent still answers.
    fleet.slipctl(&["releases", "fifo", "test"]).ok();
}

#[test]
fn symlinked_and_loosely_writable_paths_are_refused_and_nothing_is_created_outside() {
    let fleet = Fleet::new(1);
    let root = fleet.agents[0].root.clone();
    let outside = fleet.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    std::fs::create_dir_all(root.join("open")).unwrap();
    std::fs::set_permissions(root.join("open"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let repo = Repo::with_files(fleet.path(), &[("index.html", "v1\n")]);
    let project = |name: &str, deploy_to: &Path, current: &Path| {
        let file = fleet.path().join(format!("{name}.toml"));
        let text = format!(
            "name = \"{name}\"\nrepo = \"{}\"\n[target]\ndeploy_to = \"{}\"\ncurrent = \"{}\"\n[env.test]\nhosts = [\"web-1\"]\n",
            repo.path.display(),
            deploy_to.display(),
            current.display()
        );
        std::fs::write(&file, text).unwrap();
        fleet.slipctl(&["project", "apply", "-f", file.to_str().unwrap()]).ok();
    };
    project("viasymlink", &root.join("link/app"), &root.join("www/app"));
    let run = fleet.slipctl(&["deploy", "viasymlink", "test"]).code(2);
    assert!(run.stderr.contains("link is a symlink") && run.stderr.contains("real directory"), "{}", run.stderr);
    project("currentlink", &root.join("app"), &root.join("link/current"));
    let run = fleet.slipctl(&["deploy", "currentlink", "test"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("is a symlink"), "{}", run.stderr);
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none(), "something was created through the symlink");
    project("loose", &root.join("open/app"), &root.join("www/loose"));
    let run = fleet.slipctl(&["deploy", "loose", "test"]).code(2);
    assert!(run.stderr.contains("without the sticky bit") && run.stderr.contains("chmod go-w"), "{}", run.stderr);
    assert!(!root.join("open/app").exists());
    // Sticky like /tmp: allowed.
    std::fs::set_permissions(root.join("open"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    fleet.slipctl(&["deploy", "loose", "test"]).ok();
    // A target overlapping another's is refused.
    project("overlap", &root.join("open/app/releases"), &root.join("www/overlap"));
    let run = fleet.slipctl(&["deploy", "overlap", "test"]).code(2);
    assert!(run.stderr.contains("overlaps"), "{}", run.stderr);
}

#[test]
fn the_seed_layout_with_www_owned_parents_deploys_and_swapping_them_redirects_nothing() {
    if !require("root", is_root()) {
        return;
    }
    let (www, gid) = www_ids();
    let fleet = Fleet::new(1);
    let root = fleet.agents[0].root.clone();
    // The walkthrough: chown www /data/release, chown www /data/nginx.
    for d in ["data/release", "data/nginx"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
        std::os::unix::fs::chown(root.join(d), Some(www), Some(gid)).unwrap();
    }
    // Root's directory beneath the same allowed root (another project's, say).
    let victim = root.join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o700)).unwrap();
    let repo = Repo::with_files(fleet.path(), &[("index.html", "<h3>第一次测试</h3>\n")]);
    let file = fleet.path().join("seed.toml");
    let text = format!(
        "name = \"web-demo\"\nrepo = \"{}\"\n[target]\nuser = \"www\"\ndeploy_to = \"{}\"\ncurrent = \"{}\"\n\
         shared = [\"storage\"]\n[env.test]\nhosts = [\"web-1\"]\n",
        repo.path.display(),
        root.join("data/release/web-demo").display(),
        root.join("data/nginx/website").display()
    );
    std::fs::write(&file, text).unwrap();
    fleet.slipctl(&["project", "apply", "-f", file.to_str().unwrap()]).ok();
    fleet.deploy_ok("web-demo");
    let website = root.join("data/nginx/website");
    assert_eq!(std::fs::read_to_string(website.join("index.html")).unwrap(), "<h3>第一次测试</h3>\n");

    // www owns /data/release and /data/nginx, so it can rename and swap what is in them: the
    // deploy_to dir itself (root's) for a symlink to root's directory, and the webroot link.
    let racers = [
        Racer::start(&["swap", root.join("data/release/web-demo").to_str().unwrap(), "link", victim.to_str().unwrap()]),
        Racer::start(&["swap", website.to_str().unwrap(), "link", victim.to_str().unwrap()]),
    ];
    for i in 2..=6 {
        repo.write("index.html", &format!("<h3>增加一个很牛逼的功能 {i}</h3>\n"));
        repo.commit(&format!("v{i}"));
        assert!(deploy_within(&fleet, "web-demo", Duration::from_secs(60)).is_some(), "deploy {i} hung");
    }
    for r in racers {
        assert!(r.finish().0 > 100);
    }
    assert!(std::fs::read_dir(&victim).unwrap().next().is_none(), "something was written into root's directory");
    assert_eq!(std::fs::metadata(&victim).unwrap().uid(), 0);
}

#[test]
fn a_deep_tree_is_pruned_under_the_fd_limit_and_a_broken_target_does_not_stop_the_agent() {
    if !require("root", is_root()) {
        return;
    }
    let mut fleet = Fleet::new(0);
    fleet.add_agent("web-1", false);
    fleet.agents[0].nofile = Some(1024);
    fleet.agents[0].start();
    let repo = Repo::with_files(fleet.path(), &[("app/index.html", "v1\n")]);
    // The app user leaves a 1,500-deep tree in its release (more levels than the agent has fds).
    let deep = "[ \\\"$SLIPWAY_DEPLOY_TYPE\\\" = deploy ] && cd app && mkdir -p $(printf 'd/%.0s' $(seq 1500)) || true";
    let target = format!("user = \"www\"\npost_release = [\"{deep}\"]\n");
    fleet.apply_project_full("deep", &repo.path, "", &target, "keep_releases = 1\n");
    fleet.apply_project_full("other", &repo.path, "", "user = \"www\"\n", "");
    let first = fleet.deploy_ok("deep");
    assert!(fleet.deploy_to("web-1", "deep").join("releases").join(&first).join("app/d/d/d").is_dir());
    for i in 2..=3 {
        repo.write("app/index.html", &format!("v{i}\n"));
        repo.commit(&format!("v{i}"));
        fleet.deploy_ok("deep");
    }
    let entries = fleet.releases_dir_entries("web-1", "deep");
    assert!(!entries.contains(&first), "the deep release was pruned: {entries:?}");
    assert!(entries.iter().all(|e| !e.starts_with('.')), "no trash left behind: {entries:?}");
    fleet.deploy_ok("other");

    // The app user (owner of a parent directory) turns one target's deploy_to into a symlink.
    let deploy_to = fleet.deploy_to("web-1", "other");
    std::fs::rename(&deploy_to, deploy_to.with_extension("moved")).unwrap();
    std::os::unix::fs::symlink(deploy_to.with_extension("moved"), &deploy_to).unwrap();
    fleet.agents[0].kill();
    fleet.agents[0].start();
    // Every other target keeps deploying; the broken one is reported with the reason.
    repo.write("app/index.html", "v4\n");
    repo.commit("v4");
    fleet.deploy_ok("deep");
    let check = fleet.slipctl(&["check", "other", "test"]);
    assert_ne!(check.code, 0);
    assert!(check.stdout.contains("symlink") || check.stderr.contains("symlink"), "{}\n{}", check.stdout, check.stderr);
    let log = fleet.agents[0].log();
    assert!(log.contains("cannot reconcile target"), "{log}");
    let agents = fleet.slipctl(&["--output", "json", "agent", "list"]).ok().json();
    let broken = agents[0]["broken_targets"].to_string();
    assert!(broken.contains("other/test") && broken.contains("symlink"), "{broken}");
}

#[test]
fn a_hostile_tree_entry_is_refused_by_name_and_nothing_is_written_outside() {
    let fleet = Fleet::new(1);
    let repo = Repo::with_files(fleet.path(), &[("index.html", "v1\n")]);
    // A tree whose entry is named `../../../../escaped`, made with git's plumbing.
    let blob = repo.git(&["hash-object", "-w", "index.html"]);
    let mut tree = b"100644 ../../../../escaped\0".to_vec();
    tree.extend(hex::decode(&blob).unwrap());
    tree.extend(b"100644 index.html\0");
    tree.extend(hex::decode(&blob).unwrap());
    let raw = fleet.path().join("tree.raw");
    std::fs::write(&raw, &tree).unwrap();
    let tree_id = repo.git(&["hash-object", "-w", "-t", "tree", "--literally", raw.to_str().unwrap()]);
    let commit = repo.git(&["commit-tree", &tree_id, "-m", "hostile", "-p", "HEAD"]);
    repo.git(&["update-ref", "refs/heads/main", &commit]);
    // A build step makes the controller check the tree out to disk.
    fleet.apply_project("hostile", &repo.path, "[build]\npost_deploy = [\"true\"]\n");
    let run = fleet.slipctl(&["deploy", "hostile", "test"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("../../../../escaped") || run.stderr.contains("fsck"), "{}", run.stderr);
    let escaped: Vec<_> = [fleet.path().to_path_buf(), fleet.home.clone(), fleet.home.join("cache")]
        .iter()
        .flat_map(|d| (0..6).map(move |up| d.ancestors().nth(up).map(|a| a.join("escaped"))))
        .flatten()
        .filter(|p| p.exists())
        .collect();
    assert!(escaped.is_empty(), "the controller wrote outside its work dir: {escaped:?}");
    assert!(fleet.current_release("web-1", "hostile").is_none(), "nothing was deployed");
}

#[test]
fn a_hook_user_in_a_privileged_group_is_refused() {
    if !require("root", is_root()) {
        return;
    }
    let _ = Command::new("groupadd").args(["-f", "sudo"]).status();
    let exists = Command::new("id").arg("wwwsudo").output().unwrap().status.success();
    if !exists {
        let status = Command::new("useradd")
            .args(["--system", "--no-create-home", "--home-dir", "/nonexistent", "-G", "sudo", "wwwsudo"])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let fleet = Fleet::new(1);
    let repo = Repo::with_files(fleet.path(), &[("index.html", "v1\n")]);
    fleet.apply_project_full("sudoer", &repo.path, "", "user = \"wwwsudo\"\npost_release = [\"true\"]\n", "");
    let run = fleet.slipctl(&["deploy", "sudoer", "test"]).code(2);
    assert!(run.stderr.contains("privileged group") && run.stderr.contains("sudo"), "{}", run.stderr);
    assert!(fleet.current_release("web-1", "sudoer").is_none());
}

#[test]
fn a_flood_of_idle_connections_does_not_stall_the_controller() {
    let mut fleet = Fleet::new(0);
    fleet.add_agent("web-1", false);
    fleet.agents[0].nofile = Some(1024);
    fleet.agents[0].start();
    // The flood comes from another address than the controller (another host, or the app on
    // the web host itself), and never says a word.
    let port = fleet.agents[0].port;
    let mut flood = Racer::start_as(&["flood", &format!("127.0.0.1:{port}"), "127.0.0.2", "1100"], None);
    let connected: usize = flood.wait_line("connected ").parse().unwrap();
    assert!(connected > 1000, "only {connected} connections were made");
    let started = Instant::now();
    let run = fleet.slipctl(&["--output", "json", "agent", "list"]).ok();
    let took = started.elapsed();
    assert!(run.stdout.contains("\"reachable\": true") || run.stdout.contains("\"reachable\":true"), "{}", run.stdout);
    assert!(took < Duration::from_secs(2), "agent list took {took:?} under the flood");
    flood.finish();
}

#[test]
fn an_activation_whose_reply_is_lost_after_the_flip_is_recorded_activated_and_rolled_back() {
    if !require("root", is_root()) {
        return;
    }
    let mut fleet = Fleet::new(1);
    let repo = Repo::with_files(fleet.path(), &[("index.html", "v1\n")]);
    let marker = fleet.path().join("flipped");
    std::fs::create_dir_all(&marker).unwrap();
    std::fs::set_permissions(&marker, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (armed, flag) = (marker.join("armed"), marker.join("now"));
    // On an armed deploy (not a rollback) post_release tells the test the flip happened, then
    // waits for the test to take the agent down mid-call.
    let hook = format!(
        "[ \\\"$SLIPWAY_DEPLOY_TYPE\\\" = deploy ] && [ -e {0} ] || exit 0; rm -f {0}; touch {1}; \
         while [ -e {1} ]; do sleep 0.05; done",
        armed.display(),
        flag.display()
    );
    let target = format!("user = \"www\"\npost_release = [\"{hook}\"]\n");
    fleet.apply_project_full("lost", &repo.path, "", &target, "[env.test.rollout]\nhost_timeout_secs = 10\n");
    let doc = fleet.slipctl(&["--output", "json", "deploy", "lost", "test"]).ok().json();
    let (first, first_id) = (doc["release"].as_str().unwrap().to_owned(), doc["id"].as_u64().unwrap());
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    std::fs::write(&armed, "").unwrap();
    let mut deploy = fleet.spawn_slipctl(&["deploy", "lost", "test"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !flag.exists() {
        assert!(Instant::now() < deadline, "post_release never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    let flipped = fleet.current_release("web-1", "lost").unwrap();
    assert_ne!(flipped, first, "current was flipped before post_release");
    // The reply is lost: the agent dies mid-call, and comes back.
    fleet.agents[0].kill();
    let _ = std::fs::remove_file(&flag);
    fleet.agents[0].start();
    let status = deploy.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    // Recorded as activated, and rolled back: the host is on the first release again.
    let shown = fleet.slipctl(&["--output", "json", "show", &(first_id + 1).to_string()]).ok().json();
    assert_eq!(fleet.current_release("web-1", "lost").unwrap(), first, "{shown:#}");
    assert_eq!(shown["status"], "rolled_back", "{shown}");
    let text = shown.to_string();
    assert!(text.contains("counted as activated"), "{text}");
    assert!(text.contains("rollback"), "{text}");
}

#[test]
fn the_controller_home_is_private() {
    let fleet = Fleet::new(1);
    let repo = Repo::with_files(fleet.path(), &[("index.html", "v1\n")]);
    fleet.apply_project("home", &repo.path, "vars = { DB_PASSWORD = \"hunter2\" }\n");
    fleet.deploy_ok("home");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for dir in ["", "pki", "state", "cache"] {
        assert_eq!(mode(&fleet.home.join(dir)), 0o700, "{dir}/");
    }
    for e in std::fs::read_dir(fleet.home.join("state")).unwrap().flatten() {
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        if m.is_file() {
            assert_eq!(m.permissions().mode() & 0o077, 0, "{} is readable by others", e.path().display());
        }
    }
    assert_eq!(mode(&fleet.home.join("pki/ca.key")), 0o600);
}

#[test]
fn a_pre_release_hook_can_create_files_at_the_top_of_its_release() {
    if !require("root", is_root()) {
        return;
    }
    let (www, _) = www_ids();
    let fleet = Fleet::new(1);
    let repo = Repo::with_files(fleet.path(), &[(".env.example", "APP_ENV=prod\n")]);
    let target = "user = \"www\"\npre_release = [\"cp .env.example .env\", \"echo made > marker.txt\"]\n";
    fleet.apply_project_full("laravel", &repo.path, "", target, "");
    let release = fleet.deploy_ok("laravel");
    let top = fleet.deploy_to("web-1", "laravel").join("releases").join(&release);
    assert_eq!(std::fs::read_to_string(top.join("marker.txt")).unwrap(), "made\n");
    assert_eq!(std::fs::metadata(&top).unwrap().uid(), www, "the release root is the target user's");
    assert_eq!(std::fs::read_to_string(top.join(".env")).unwrap(), "APP_ENV=prod\n");
}
