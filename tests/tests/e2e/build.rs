//! Building on the controller, excludes and overlays, dry runs, `check`, concurrent projects,
//! and nginx serving `current` across deploys and a rollback.

use std::process::Child;

use slipway_tests::{Fleet, Repo, hook_user_line, http_get, is_root, require};

fn repo(fleet: &Fleet, name: &str) -> Repo {
    let repo = Repo::new(fleet.path().join(name));
    repo.write("index.html", &format!("{name} v1\n"));
    repo.write("app.log", "noise\n");
    repo.write("logs/old.log", "noise\n");
    repo.write("tests/test_app.py", "assert True\n");
    repo.write("src/tests/keep-me-not.txt", "x\n");
    repo.write("secret.txt", "top secret\n");
    repo.write("docs/secret.txt", "not anchored, kept\n");
    repo.write("config/app.ini", "env=dev\n");
    repo.write("config/db.ini", "host=localhost\n");
    repo.commit("v1");
    repo
}

#[test]
fn build_hooks_excludes_and_overlay_shape_the_release() {
    let fleet = Fleet::new(2);
    let repo = repo(&fleet, "site");
    let commit = repo.git(&["rev-parse", "HEAD"]);
    let overlay = fleet.path().join("config/test");
    std::fs::create_dir_all(overlay.join("config")).unwrap();
    std::fs::write(overlay.join("config/app.ini"), "env=test\n").unwrap();
    std::fs::write(overlay.join(".env"), "APP_ENV=test\n").unwrap();
    let top = "exclude = [\"*.log\", \"tests/\", \"/secret.txt\"]\n\
               [build]\n\
               pre_deploy = [\"test -f index.html\", \"echo checking $SLIPWAY_PROJECT\"]\n\
               post_deploy = [\"mkdir -p dist && echo built-$SLIPWAY_COMMIT > dist/version.txt\", \"cat config/app.ini > dist/env.txt\"]\n";
    fleet.apply_project_full("site", &repo.path, top, "", "config_dir = \"config/test\"\n");
    let run = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok();
    let doc = run.json();
    let current = fleet.current("web-2", "site");
    let read = |p: &str| std::fs::read_to_string(current.join(p)).unwrap();
    assert_eq!(read("dist/version.txt"), format!("built-{commit}\n"), "post_deploy output is what ships");
    assert_eq!(read("dist/env.txt"), "env=dev\n", "the build is env-independent: the overlay goes on after it");
    assert_eq!(read("config/app.ini"), "env=test\n", "overlay replaces");
    assert_eq!(read("config/db.ini"), "host=localhost\n", "overlay leaves other files");
    assert_eq!(read(".env"), "APP_ENV=test\n", "overlay adds");
    assert_eq!(read("docs/secret.txt"), "not anchored, kept\n");
    for gone in ["app.log", "logs/old.log", "tests", "src/tests", "secret.txt", ".git"] {
        assert!(!current.join(gone).exists(), "{gone} should be excluded");
    }
    assert!(current.join("logs").is_dir(), "a directory whose files are all excluded stays");
    // History records the build hooks' output and the overlay digest.
    assert_eq!(doc["build"].as_array().unwrap().len(), 4);
    assert_eq!(doc["build"][1]["output_head"], "checking site\n");
    assert_eq!(doc["overlay_sha256"].as_str().unwrap().len(), 64);
    // The same recipe again: no rebuild, the package is reused.
    let again = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok().json();
    assert_eq!(again["artifact"]["cached"], true);
    assert_eq!(again["build"].as_array().unwrap().len(), 0);
    // A changed overlay is a new recipe.
    std::fs::write(overlay.join(".env"), "APP_ENV=test2\n").unwrap();
    let changed = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok().json();
    assert_eq!(changed["artifact"]["cached"], false);
    assert_eq!(changed["build"].as_array().unwrap().len(), 0, "the build is reused: only the layer is new");
    assert_eq!(changed["built"]["sha256"], doc["built"]["sha256"]);
    assert_ne!(changed["overlay_sha256"], doc["overlay_sha256"]);
    assert_eq!(std::fs::read_to_string(fleet.current("web-1", "site").join(".env")).unwrap(), "APP_ENV=test2\n");
}

#[test]
fn a_failing_build_stops_before_anything_is_sent() {
    let fleet = Fleet::new(1);
    let repo = repo(&fleet, "site");
    let top = "[build]\npost_deploy = [\"echo compiling; echo 'syntax error' >&2; exit 7\"]\n";
    fleet.apply_project_full("site", &repo.path, top, "", "");
    let run = fleet.slipctl(&["deploy", "site", "test"]).code(1);
    assert!(run.stderr.contains("post_deploy") && run.stderr.contains("exit status 7"), "{}", run.stderr);
    assert!(run.stdout.contains("syntax error"), "build output is shown live: {}", run.stdout);
    assert!(fleet.current_release("web-1", "site").is_none());
    assert!(!fleet.deploy_to("web-1", "site").exists(), "nothing reached the host");
    let show = fleet.slipctl(&["show", "1"]).ok();
    assert!(show.stdout.contains("syntax error") && show.stdout.contains("exit 7"), "{}", show.stdout);
    // The per-deploy checkout is gone.
    let work = fleet.home.join("cache/work");
    assert_eq!(std::fs::read_dir(&work).map(|d| d.count()).unwrap_or(0), 0);
}

#[test]
fn dry_run_changes_nothing() {
    let fleet = Fleet::new(2);
    let repo = repo(&fleet, "site");
    let target = format!("{}post_release = [\"echo reload\"]\nshared = [\"storage\"]\n", hook_user_line());
    fleet.apply_project_full("site", &repo.path, "[build]\npost_deploy = [\"echo built\"]\n", &target, "");
    let run = fleet.slipctl(&["deploy", "site", "test", "--dry-run"]).ok();
    for needle in ["dry run", "web-1", "web-2", "post_release: echo reload", "shared: storage", "nothing was sent"] {
        assert!(run.stdout.contains(needle), "plan lacks {needle:?}:\n{}", run.stdout);
    }
    assert!(!fleet.deploy_to("web-1", "site").exists());
    assert!(fleet.slipctl(&["history"]).ok().stdout.contains("no deploys yet"));
}

#[test]
fn check_reports_each_host_and_the_fix() {
    let mut fleet = Fleet::new(2);
    let repo = repo(&fleet, "site");
    fleet.apply_project_full("site", &repo.path, "", &hook_user_line(), "");
    let run = fleet.slipctl(&["check", "site", "test"]).ok();
    for needle in
        ["reachable", "certificate", "version", "user", "deploy_to", "current", "disk", "ref", "all checks passed"]
    {
        assert!(run.stdout.contains(needle), "check lacks {needle:?}:\n{}", run.stdout);
    }
    fleet.agents[1].kill();
    let run = fleet.slipctl(&["--output", "json", "check", "site", "test"]).code(1);
    let doc = run.json();
    assert_eq!(doc["ok"], false);
    let failed: Vec<_> = doc["checks"].as_array().unwrap().iter().filter(|c| c["ok"] == false).collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["host"], "web-2");
    assert!(failed[0]["fix"].as_str().unwrap().contains("start slipd"));
    // A user that does not exist is named, with the fix.
    fleet.agents[1].start();
    fleet.apply_project_full("site", &repo.path, "", "user = \"no-such-user\"\n", "");
    let run = fleet.slipctl(&["check", "site", "test"]).code(1);
    assert!(run.stdout.contains("no-such-user"), "{}", run.stdout);
}

#[test]
fn two_projects_deploy_at_once_without_interfering() {
    let fleet = Fleet::new(2);
    let (a, b) = (repo(&fleet, "alpha"), repo(&fleet, "beta"));
    for (name, repo) in [("alpha", &a), ("beta", &b)] {
        let top = format!("[build]\npost_deploy = [\"sleep 1; echo {name} > built.txt\"]\n");
        fleet.apply_project_full(name, &repo.path, &top, "shared = [\"data\"]\n", "");
    }
    let spawn = |project: &str| fleet.spawn_slipctl(&["deploy", project, "test"]);
    let children: Vec<Child> = vec![spawn("alpha"), spawn("beta")];
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for host in ["web-1", "web-2"] {
        for name in ["alpha", "beta"] {
            let current = fleet.current(host, name);
            assert_eq!(std::fs::read_to_string(current.join("built.txt")).unwrap(), format!("{name}\n"));
            assert_eq!(std::fs::read_to_string(current.join("index.html")).unwrap(), format!("{name} v1\n"));
        }
    }
}

#[test]
fn nginx_serves_the_new_page_after_deploy_and_the_old_after_rollback() {
    if !require("nginx (apt-get install nginx)", slipway_tests::have_nginx()) {
        return;
    }
    let fleet = Fleet::new(1);
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "<h1>v1</h1>\n");
    repo.commit("v1");
    fleet.apply_project("site", &repo.path, "");
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    let (_nginx, ports) = slipway_tests::nginx(&fleet.path().join("nginx"), &[fleet.current("web-1", "site")]);
    assert_eq!(http_get(ports[0], "/index.html").unwrap(), (200, "<h1>v1</h1>\n".to_owned()));

    repo.write("index.html", "<h1>v2</h1>\n");
    repo.commit("v2");
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    assert_eq!(http_get(ports[0], "/index.html").unwrap(), (200, "<h1>v2</h1>\n".to_owned()));

    fleet.slipctl(&["rollback", "site", "test"]).ok();
    assert_eq!(http_get(ports[0], "/index.html").unwrap(), (200, "<h1>v1</h1>\n".to_owned()));
    assert_eq!(http_get(ports[0], "/missing.html").unwrap().0, 404);
}

#[test]
fn check_takes_a_ref_and_catches_missing_programs_and_unreachable_releases() {
    let fleet = Fleet::new(1);
    let repo = repo(&fleet, "site");
    repo.git(&["tag", "v1"]);
    let target = format!(
        "{}post_release = [\"no-such-tool --restart\", \"APP=1 sh -c true\", \"cd . && true\"]\n",
        hook_user_line()
    );
    fleet.apply_project_full("site", &repo.path, "", &target, "");
    let doc = fleet.slipctl(&["--output", "json", "check", "site", "test", "--ref", "v1"]).code(1).json();
    let rows = doc["checks"].as_array().unwrap();
    let find = |name: &str| rows.iter().find(|r| r["check"] == name).unwrap_or_else(|| panic!("{name}: {doc}")).clone();
    assert_eq!(find("ref")["ok"], true, "{doc}");
    assert!(find("ref")["detail"].as_str().unwrap().starts_with("v1 is "), "{doc}");
    let programs = find("hook programs");
    assert_eq!(programs["ok"], false);
    let detail = programs["detail"].as_str().unwrap();
    assert!(detail.contains("`no-such-tool`") && !detail.contains("`sh`"), "{detail}");
    assert!(programs["fix"].as_str().unwrap().contains("full path"), "{programs}");
    // A ref that does not exist fails the ref check, naming it.
    let doc = fleet.slipctl(&["--output", "json", "check", "site", "test", "--ref", "no-such-tag"]).code(1).json();
    let r = doc["checks"].as_array().unwrap().iter().find(|r| r["check"] == "ref").unwrap().clone();
    assert!(r["ok"] == false && r["detail"].as_str().unwrap().contains("no-such-tag"), "{r}");

    if !require("root (a private parent the hook user cannot enter)", is_root()) {
        return;
    }
    // deploy_to beneath a root-only directory: www could never enter its release.
    let private = fleet.path().join("hosts").join("web-1").join("private");
    std::fs::create_dir_all(&private).unwrap();
    std::fs::set_permissions(&private, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let file = fleet.path().join("private.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"priv\"\nrepo = \"{}\"\n[target]\n{}deploy_to = \"{}/{{host}}/private/app\"\n[env.test]\nhosts = [\"role=web\"]\n",
            repo.path.display(),
            hook_user_line(),
            fleet.path().join("hosts").display()
        ),
    )
    .unwrap();
    fleet.slipctl(&["project", "apply", "-f", file.to_str().unwrap()]).ok();
    let doc = fleet.slipctl(&["--output", "json", "check", "priv", "test"]).code(1).json();
    let reach = doc["checks"].as_array().unwrap().iter().find(|r| r["check"] == "user can reach").unwrap().clone();
    assert_eq!(reach["ok"], false, "{doc}");
    assert!(reach["detail"].as_str().unwrap().contains(private.to_str().unwrap()), "{reach}");
}

#[test]
fn build_caches_survive_between_builds_in_a_home_of_each_build_and_clear() {
    let fleet = Fleet::new(1);
    let repo = repo(&fleet, "site");
    let log = fleet.path().join("fetches.log");
    // A dependency step that fetches only what is missing, in the checkout and in ~.
    let top = format!(
        "[build]\ncache = [\"node_modules\", \"~/.m2/repository\"]\n\
         pre_deploy = [\"test -f node_modules/dep/index.js || (echo npm >> {log}; mkdir -p node_modules/dep; echo dep > node_modules/dep/index.js)\", \
                       \"test -f ~/.m2/repository/lib.jar || (echo maven >> {log}; mkdir -p ~/.m2/repository; echo jar > ~/.m2/repository/lib.jar)\", \
                       \"echo $HOME > home.txt\"]\n",
        log = log.display()
    );
    fleet.apply_project_full("site", &repo.path, &top, "", "");
    let fetches = || std::fs::read_to_string(&log).unwrap_or_default();
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    assert_eq!(fetches(), "npm\nmaven\n", "cold: everything fetched");
    let current = fleet.current("web-1", "site");
    assert_eq!(std::fs::read_to_string(current.join("node_modules/dep/index.js")).unwrap(), "dep\n", "it ships");
    let home = std::fs::read_to_string(current.join("home.txt")).unwrap();
    assert!(home.trim().ends_with(".home") && home.contains("/cache/work/"), "a home of the build's own: {home}");
    // A new commit builds again, warm: nothing fetched.
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    let warm = fleet.slipctl(&["deploy", "site", "test"]).ok();
    assert_eq!(fetches(), "npm\nmaven\n", "warm: nothing fetched again");
    let said = format!("{}{}", warm.stdout, warm.stderr);
    assert!(said.contains("build cache: node_modules, ~/.m2/repository restored"), "{said}");
    // Cleared, the next build starts cold.
    let cleared = fleet.slipctl(&["--output", "json", "cache", "clear", "site"]).ok().json();
    assert!(cleared["freed_bytes"].as_u64().unwrap() > 0);
    repo.write("index.html", "v3\n");
    repo.commit("v3");
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    assert_eq!(fetches(), "npm\nmaven\nnpm\nmaven\n");
    // A cache path outside the checkout or the build's home is refused when the file is applied.
    for bad in ["../up", "/etc", "~/../x", "a/./b"] {
        let file = fleet.path().join("bad.toml");
        std::fs::write(
            &file,
            format!(
                "name = \"bad\"\nrepo = \"{}\"\n[build]\ncache = [\"{bad}\"]\n[target]\ndeploy_to = \"/srv/bad\"\n[env.test]\nhosts = [\"web-1\"]\n",
                repo.path.display()
            ),
        )
        .unwrap();
        let run = fleet.slipctl(&["project", "apply", "-f", file.to_str().unwrap()]).code(2);
        assert!(run.stderr.contains("build.cache") && run.stderr.contains("without '..'"), "{bad}: {}", run.stderr);
    }
}
