//! Release hooks on the hosts: user, environment, timeouts, big output, failure semantics,
//! shared paths and ownership.

use std::os::unix::fs::MetadataExt;

use slipway_tests::{Fleet, Repo, ensure_www, hook_user_line, is_root, require};

fn repo(fleet: &Fleet) -> Repo {
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "v1\n");
    repo.write(".env", "APP_KEY=from-git\n");
    repo.write("storage/logs/.gitkeep", "");
    repo.commit("v1");
    repo
}

fn hook_outputs(fleet: &Fleet, deploy: u64, host: &str) -> Vec<serde_json::Value> {
    let doc = fleet.slipctl(&["--output", "json", "show", &deploy.to_string()]).ok().json();
    let h = doc["hosts"].as_array().unwrap().iter().find(|h| h["host"] == host).unwrap().clone();
    h["hooks"].as_array().unwrap().clone()
}

#[test]
fn hooks_run_as_the_target_user_with_the_slipway_environment() {
    let fleet = Fleet::new(2);
    let repo = repo(&fleet);
    let commit = repo.git(&["rev-parse", "HEAD"]);
    let env_dump = "echo user=$(id -un) home=$HOME; env | grep -E '^(SLIPWAY_|APP_ENV=)' | sort";
    let target =
        format!("{}pre_release = [\"{env_dump}\"]\npost_release = [\"{env_dump}\", \"pwd\"]\n", hook_user_line());
    fleet.apply_project_full("site", &repo.path, "vars = { APP_ENV = \"production\" }\n", &target, "");
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok().json();
    let (id, release) = (doc["id"].as_u64().unwrap(), doc["release"].as_str().unwrap().to_owned());
    let hooks = hook_outputs(&fleet, id, "web-2");
    let stages: Vec<_> = hooks.iter().map(|h| h["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["pre_release", "post_release", "post_release"]);
    let pre = hooks[0]["output_head"].as_str().unwrap();
    let user = if is_root() { "www".to_owned() } else { std::env::var("USER").unwrap_or_else(|_| "root".into()) };
    let deploy_to = fleet.deploy_to("web-2", "site");
    let expected = [
        format!("user={user}"),
        "APP_ENV=production".to_owned(),
        format!("SLIPWAY_COMMIT={commit}"),
        format!("SLIPWAY_CURRENT={}", fleet.current("web-2", "site").display()),
        format!("SLIPWAY_DEPLOY_ID={id}"),
        format!("SLIPWAY_DEPLOY_TO={}", deploy_to.display()),
        "SLIPWAY_DEPLOY_TYPE=deploy".to_owned(),
        "SLIPWAY_ENV=test".to_owned(),
        "SLIPWAY_HOST=web-2".to_owned(),
        "SLIPWAY_PREVIOUS_RELEASE=".to_owned(),
        "SLIPWAY_PROJECT=site".to_owned(),
        "SLIPWAY_REF=main".to_owned(),
        format!("SLIPWAY_RELEASE={release}"),
        format!("SLIPWAY_RELEASE_PATH={}", deploy_to.join("releases").join(&release).display()),
    ];
    for line in &expected {
        assert!(pre.lines().any(|l| l.starts_with(line.as_str())), "pre_release output lacks {line}:\n{pre}");
    }
    assert!(hooks[2]["output_head"].as_str().unwrap().contains(&release), "post_release runs in the release");

    // A rollback tells hooks it is one.
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    let doc = fleet.slipctl(&["--output", "json", "rollback", "site", "test"]).ok().json();
    let hooks = hook_outputs(&fleet, doc["id"].as_u64().unwrap(), "web-1");
    let stages: Vec<_> = hooks.iter().map(|h| h["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["post_release", "post_release"], "a rollback runs post_release only: {hooks:?}");
    assert!(hooks[0]["output_head"].as_str().unwrap().contains("SLIPWAY_DEPLOY_TYPE=rollback"));
    assert!(hooks[0]["output_head"].as_str().unwrap().contains(&format!("SLIPWAY_RELEASE={release}")));

    if is_root() {
        // Release files belong to the target user.
        let www = ensure_www();
        let current = fleet.current("web-1", "site");
        for f in ["index.html", "storage/logs"] {
            assert_eq!(std::fs::metadata(current.join(f)).unwrap().uid(), www, "{f}");
        }
    }
}

#[test]
fn hooks_never_run_as_root_unless_allowed() {
    if !require("root", is_root()) {
        return;
    }
    let fleet = Fleet::new(1);
    let repo = repo(&fleet);
    fleet.apply_project_full("site", &repo.path, "", "post_release = [\"true\"]\n", "");
    let run = fleet.slipctl(&["deploy", "site", "test"]).code(2); // refused by the agent: bad input
    assert!(run.stderr.contains("refusing to run hooks as root"), "{}", run.stderr);
    assert!(fleet.current_release("web-1", "site").is_none());
    assert_eq!(fleet.releases_dir_entries("web-1", "site"), Vec::<String>::new());
}

#[test]
fn a_hook_that_hangs_is_killed_with_its_children() {
    let fleet = Fleet::new(1);
    let repo = repo(&fleet);
    fleet.apply_project("site", &repo.path, "");
    let r1 = fleet.deploy_ok("site");
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    let marker = format!("1000.{}", std::process::id());
    let target = format!("{}pre_release = [\"sleep {marker} & sleep 600\"]\nhook_timeout_secs = 1\n", hook_user_line());
    fleet.apply_project_full("site", &repo.path, "", &target, "");
    let started = std::time::Instant::now();
    let run = fleet.slipctl(&["deploy", "site", "test"]).code(1);
    assert!(started.elapsed().as_secs() < 30, "took {:?}", started.elapsed());
    assert!(run.stderr.contains("timed out"), "{}", run.stderr);
    // The hook's whole process group is killed: its background child (sleeping 1000 s) is gone.
    assert!(slipway_tests::processes_gone(&marker), "the hook's background child survived the timeout");
    // The host still serves the complete previous release, and history says what happened.
    assert_eq!(fleet.current_release("web-1", "site").as_deref(), Some(r1.as_str()));
    assert_eq!(fleet.releases_dir_entries("web-1", "site"), vec![r1]);
    let history = fleet.slipctl(&["--output", "json", "history"]).ok().json();
    assert_eq!(history[0]["status"], "failed");
    assert!(history[0]["error"].as_str().unwrap().contains("timed out"));
}

#[test]
fn a_hook_printing_100_mb_completes_and_keeps_head_and_tail() {
    let fleet = Fleet::new(1);
    let repo = repo(&fleet);
    let target = format!(
        "{}post_release = [\"echo BEGIN; yes xxxxxxxxxxxxxxx | head -c 100000000; echo; echo END >&2\"]\n",
        hook_user_line()
    );
    fleet.apply_project_full("site", &repo.path, "", &target, "");
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok().json();
    let hooks = hook_outputs(&fleet, doc["id"].as_u64().unwrap(), "web-1");
    let h = &hooks[0];
    assert_eq!(h["exit_code"], 0);
    let head = h["output_head"].as_str().unwrap();
    let tail = h["output_tail"].as_str().unwrap();
    assert!(head.starts_with("BEGIN\nxxxx"), "{}", &head[..20]);
    assert_eq!(head.len(), 64 * 1024);
    // stdout and stderr are separate pipes: END (stderr) is in the tail, not necessarily last.
    assert!(tail.contains("END\n"), "{}", &tail[tail.len() - 40..]);
    let dropped = h["output_dropped"].as_u64().unwrap();
    assert!(dropped > 99_000_000 && dropped < 100_000_000, "{dropped}");
    // `show` prints the kept output with the gap marked.
    let show = fleet.slipctl(&["show", &doc["id"].to_string()]).ok();
    assert!(show.stdout.contains("dropped") && show.stdout.contains("END"), "{}", &show.stdout[..200]);
}

#[test]
fn a_failing_pre_release_on_one_host_activates_none() {
    let fleet = Fleet::new(3);
    let repo = repo(&fleet);
    fleet.apply_project("site", &repo.path, "");
    let first = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok().json();
    let r1 = first["release"].as_str().unwrap().to_owned();
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    let target = format!("{}pre_release = [\"test \\\"$SLIPWAY_HOST\\\" != web-2\"]\n", hook_user_line());
    fleet.apply_project_full("site", &repo.path, "", &target, "");
    let run = fleet.slipctl(&["deploy", "site", "test"]).code(1);
    for needle in ["web-2", "pre_release", "test \"$SLIPWAY_HOST\" != web-2", "exit status 1", "no host was activated"]
    {
        assert!(run.stderr.contains(needle), "stderr lacks {needle:?}: {}", run.stderr);
    }
    for host in ["web-1", "web-2", "web-3"] {
        assert_eq!(fleet.current_release(host, "site").as_deref(), Some(r1.as_str()), "{host}");
        assert_eq!(fleet.releases_dir_entries(host, "site"), vec![r1.clone()], "{host}: staged release removed");
        assert_eq!(std::fs::read_to_string(fleet.current(host, "site").join("index.html")).unwrap(), "v1\n");
    }
}

#[test]
fn a_failing_post_release_is_reported_per_host_or_rolled_back() {
    let fleet = Fleet::new(2);
    let repo = repo(&fleet);
    fleet.apply_project("site", &repo.path, "");
    let r1 = fleet.deploy_ok("site");
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    let target = format!("{}post_release = [\"test \\\"$SLIPWAY_HOST\\\" != web-1\"]\n", hook_user_line());

    // Without auto_rollback the flip stands and the failure is reported for that host.
    fleet.apply_project_full("site", &repo.path, "[rollout]\nauto_rollback = false\n", &target, "");
    let run = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).code(1);
    let doc = run.json();
    assert_eq!(doc["status"], "failed");
    let hosts = doc["hosts"].as_array().unwrap();
    assert_eq!(
        (hosts[0]["host"].as_str(), hosts[0]["ok"].as_bool(), hosts[0]["activated"].as_bool()),
        (Some("web-1"), Some(false), Some(true))
    );
    assert_eq!(hosts[1]["ok"], true);
    assert!(run.stderr.contains("web-1") && run.stderr.contains("post_release"), "{}", run.stderr);
    let r2 = doc["release"].as_str().unwrap().to_owned();
    assert_eq!(fleet.current_release("web-1", "site").as_deref(), Some(r2.as_str()));

    // With auto_rollback (the default) every activated host goes back and runs post_release there.
    fleet.apply_project("site", &repo.path, "");
    fleet.slipctl(&["rollback", "site", "test", "--to", &r1]).ok();
    repo.write("index.html", "v3\n");
    repo.commit("v3");
    fleet.apply_project_full("site", &repo.path, "", &target, "");
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).code(1).json();
    assert_eq!(doc["status"], "rolled_back");
    for host in ["web-1", "web-2"] {
        assert_eq!(fleet.current_release(host, "site").as_deref(), Some(r1.as_str()), "{host} is back");
        assert_eq!(std::fs::read_to_string(fleet.current(host, "site").join("index.html")).unwrap(), "v1\n");
    }
    let web2 = &doc["hosts"][1];
    assert!(web2["steps"].as_array().unwrap().iter().any(|s| s["name"] == "rollback" && s["ok"] == true), "{web2}");
}

#[test]
fn shared_paths_survive_deploys_pruning_and_rollback() {
    let fleet = Fleet::new(2);
    let repo = repo(&fleet);
    let target = format!("{}shared = [\"storage/logs\", \".env\"]\n", hook_user_line());
    fleet.apply_project_full("site", &repo.path, "", &target, "keep_releases = 2\n");
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    let shared = fleet.deploy_to("web-1", "site").join("shared");
    assert_eq!(std::fs::read_to_string(shared.join(".env")).unwrap(), "APP_KEY=from-git\n", "seeded from the release");
    std::fs::write(shared.join(".env"), "APP_KEY=live\n").unwrap();
    std::fs::write(shared.join("storage/logs/app.log"), "line 1\n").unwrap();
    for v in 2..=4 {
        repo.write("index.html", &format!("v{v}\n"));
        repo.commit(&format!("v{v}"));
        fleet.slipctl(&["deploy", "site", "test"]).ok();
        let current = fleet.current("web-1", "site");
        assert_eq!(std::fs::read_to_string(current.join(".env")).unwrap(), "APP_KEY=live\n");
        assert_eq!(std::fs::read_to_string(current.join("storage/logs/app.log")).unwrap(), "line 1\n");
        assert!(std::fs::symlink_metadata(current.join(".env")).unwrap().file_type().is_symlink());
    }
    assert_eq!(fleet.releases("web-1", "site").len(), 2, "pruned to keep_releases");
    fleet.slipctl(&["rollback", "site", "test"]).ok();
    let current = fleet.current("web-1", "site");
    assert_eq!(std::fs::read_to_string(current.join("index.html")).unwrap(), "v3\n");
    assert_eq!(std::fs::read_to_string(current.join(".env")).unwrap(), "APP_KEY=live\n");
    assert_eq!(std::fs::read_to_string(shared.join("storage/logs/app.log")).unwrap(), "line 1\n");
}

#[test]
fn a_rollback_runs_post_release_only_with_the_lines_recorded_with_the_restored_release() {
    let fleet = Fleet::new(1);
    let repo = repo(&fleet);
    let hooks = |tag: &str, extra: &str| {
        format!(
            "{}pre_release = [\"echo {tag} pre $SLIPWAY_DEPLOY_TYPE\"]\npost_release = [\"echo {tag} post $SLIPWAY_DEPLOY_TYPE $SLIPWAY_RELEASE\"]\n{extra}",
            hook_user_line()
        )
    };
    fleet.apply_project_full("site", &repo.path, "", &hooks("one", ""), "");
    let r1 = fleet.deploy_ok("site");
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    // Today's project file has other lines; the rollback to r1 must run r1's.
    fleet.apply_project_full("site", &repo.path, "", &hooks("two", ""), "");
    fleet.deploy_ok("site");
    let doc = fleet.slipctl(&["--output", "json", "rollback", "site", "test"]).ok().json();
    assert_eq!(fleet.current_release("web-1", "site").as_deref(), Some(r1.as_str()));
    let ran = hook_outputs(&fleet, doc["id"].as_u64().unwrap(), "web-1");
    let stages: Vec<_> = ran.iter().map(|h| h["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["post_release"], "a rollback relinks first and runs post_release only: {ran:?}");
    assert_eq!(ran[0]["command"], "echo one post $SLIPWAY_DEPLOY_TYPE $SLIPWAY_RELEASE");
    assert_eq!(ran[0]["output_head"].as_str().unwrap().trim(), format!("one post rollback {r1}"));

    // rollback_hooks chooses the stages: both, pre_release first (in the restored release, before
    // the flip), or none at all.
    let r3 = fleet.deploy_ok("site");
    fleet.apply_project_full(
        "site",
        &repo.path,
        "",
        &hooks("two", "rollback_hooks = [\"post_release\", \"pre_release\"]\n"),
        "",
    );
    let doc = fleet.slipctl(&["--output", "json", "rollback", "site", "test"]).ok().json();
    let ran = hook_outputs(&fleet, doc["id"].as_u64().unwrap(), "web-1");
    let lines: Vec<_> = ran.iter().map(|h| h["output_head"].as_str().unwrap().trim().to_owned()).collect();
    // r3 was deployed over r1 (the rollback had put r1 back), so it goes to r1, with r1's lines.
    assert_eq!(lines, ["one pre rollback".to_owned(), format!("one post rollback {r1}")]);
    assert_eq!(fleet.current_release("web-1", "site").as_deref(), Some(r1.as_str()));
    fleet.apply_project_full("site", &repo.path, "", &hooks("two", "rollback_hooks = []\n"), "");
    let doc = fleet.slipctl(&["--output", "json", "rollback", "site", "test", "--to", &r3]).ok().json();
    assert!(hook_outputs(&fleet, doc["id"].as_u64().unwrap(), "web-1").is_empty(), "rollback_hooks = [] runs none");
    assert_eq!(fleet.current_release("web-1", "site").as_deref(), Some(r3.as_str()));
}

#[test]
fn output_is_readable_whole_lines_marked_grouped_and_named() {
    let fleet = Fleet::new(2);
    let repo = repo(&fleet);
    // A line cut by the hook across two writes, and a line on stderr.
    let target = format!(
        "{}pre_release = [\"echo staging\"]\npost_release = [\"printf 'cp: cannot '; sleep 0.3; printf 'create x\\\\n'; echo oops >&2\"]\n",
        hook_user_line()
    );
    fleet.apply_project_full("site", &repo.path, "", &target, "");
    let run = fleet.slipctl(&["deploy", "site", "test"]).ok();
    for host in ["web-1", "web-2"] {
        assert!(
            run.stdout.lines().any(|l| l.contains(host) && l.ends_with("post_release| cp: cannot create x")),
            "whole lines:\n{}",
            run.stdout
        );
        assert!(run.stdout.lines().any(|l| l.contains(host) && l.ends_with("post_release! oops")), "{}", run.stdout);
    }
    assert!(!run.stdout.lines().any(|l| l.ends_with("| cp: cannot ")), "no fragments:\n{}", run.stdout);

    // `show`: each hook under the step it ran in, and the operator by name and machine.
    let show = fleet.slipctl(&["show", "1"]).ok().stdout;
    let lines: Vec<&str> = show.lines().collect();
    let at =
        |needle: &str| lines.iter().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle}:\n{show}"));
    let (stage, activate) = (at("    stage "), at("    activate "));
    let (pre, post) = (at("pre_release `echo staging`"), at("post_release `printf"));
    assert!(stage < pre && pre < activate && activate < post, "hooks under their steps:\n{show}");
    let me = std::process::Command::new("id").arg("-un").output().unwrap();
    let me = String::from_utf8_lossy(&me.stdout).trim().to_owned();
    assert!(show.contains(&format!("by {me}@")), "the operator by name:\n{show}");
    assert!(!show.contains("by uid "), "{show}");

    // `project show`: hosts by name, as a person reads them.
    let text = fleet.slipctl(&["project", "show", "site"]).ok().stdout;
    assert!(text.contains("# env test: 2 host(s): web-1, web-2"), "{text}");
    assert!(text.contains("role=web") && !text.contains("Name") && !text.contains("Label"), "{text}");
}

#[test]
fn a_rollback_whose_hook_exits_127_is_a_failure_that_says_where_the_hosts_are() {
    let fleet = Fleet::new(2);
    let repo = repo(&fleet);
    // r1 is deployed with a post_release whose program does not exist (exit 127).
    let bad = format!("{}post_release = [\"no-such-restart-tool\"]\n", hook_user_line());
    fleet.apply_project_full("site", &repo.path, "[rollout]\nauto_rollback = false\n", &bad, "");
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).code(1).json();
    let r1 = doc["release"].as_str().unwrap().to_owned();
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    fleet.apply_project_full("site", &repo.path, "", &hook_user_line(), "");
    fleet.deploy_ok("site");
    // Going back to r1 runs r1's recorded post_release: 127 on both hosts. Both are on r1, and
    // the outcome says failed, and says so in one voice: summary, exit status, history, show.
    let run = fleet.slipctl(&["rollback", "site", "test", "--to", &r1]).code(1);
    assert!(
        run.stdout.contains("failed: 2/2 host(s) on") && run.stdout.contains("2 of them failed a hook"),
        "{}",
        run.stdout
    );
    for host in ["web-1", "web-2"] {
        assert_eq!(fleet.current_release(host, "site").as_deref(), Some(r1.as_str()));
    }
    let history = fleet.slipctl(&["--output", "json", "history"]).ok().json();
    assert_eq!(history[0]["status"], "failed");
    let show = fleet.slipctl(&["show", &history[0]["id"].to_string()]).ok().stdout;
    assert!(show.contains("exit 127") && show.contains("FAILED"), "{show}");
}
