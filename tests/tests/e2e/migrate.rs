//! The step that runs once (issue #25 item 4): `[target] migrate` runs on exactly one host, in
//! the new release, after every host staged and before any flip (timestamps show it), even in a
//! serial rollout; a failing migrate flips nothing; a rollback does not run it and says so;
//! `--skip-migrate` skips it.

use std::os::unix::fs::PermissionsExt;

use slipway_tests::{Fleet, Repo, hook_user_line};

/// (what, host, nanoseconds, detail) lines the hooks wrote.
fn lines(log: &std::path::Path) -> Vec<(String, String, u128, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0].to_owned(), f[1].to_owned(), f[2].parse().unwrap(), f.get(3).unwrap_or(&"").to_string())
        })
        .collect()
}

/// `n` agents, a repository at v1, and a log file any hook user may append to.
fn fleet_repo_log(n: usize) -> (Fleet, Repo, std::path::PathBuf) {
    let fleet = Fleet::new(n);
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "v1\n");
    repo.commit("v1");
    let logs = fleet.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o777)).unwrap();
    (fleet, repo, logs.join("hooks.log"))
}

fn project(fleet: &Fleet, repo: &Repo, log: &std::path::Path, migrate: &str, host: &str) {
    let target = format!(
        "{}migrate = [\"{migrate}\"]\n{host}post_release = [\"echo flip $SLIPWAY_HOST $(date +%s%N) >> {log}\"]\n",
        hook_user_line(),
        log = log.display()
    );
    fleet.apply_project_full("site", &repo.path, "[rollout]\nstrategy = \"serial\"\n", &target, "");
}

#[test]
fn migrate_runs_once_on_one_host_after_every_stage_and_before_any_flip_and_a_failure_flips_nothing() {
    let (fleet, repo, log) = fleet_repo_log(3);
    let migrate = format!("echo migrate $SLIPWAY_HOST $(date +%s%N) $PWD >> {}", log.display());
    project(&fleet, &repo, &log, &migrate, "");

    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok().json();
    let seen = lines(&log);
    let migrates: Vec<_> = seen.iter().filter(|l| l.0 == "migrate").collect();
    assert_eq!(migrates.len(), 1, "exactly once: {seen:?}");
    assert_eq!(migrates[0].1, "web-1", "on the first host of the first batch");
    let release = doc["release"].as_str().unwrap();
    assert!(migrates[0].3.ends_with(&format!("releases/{release}")), "in the new release: {}", migrates[0].3);
    let flips: Vec<_> = seen.iter().filter(|l| l.0 == "flip").collect();
    assert_eq!(flips.len(), 3);
    assert!(flips.iter().all(|f| f.2 > migrates[0].2), "before any flip: {seen:?}");
    // Every host staged before it (serial as the rollout is): their stage steps ended first.
    let steps = |host: &str| -> Vec<String> {
        doc["hosts"].as_array().unwrap().iter().find(|h| h["host"] == host).unwrap()["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(steps("web-1"), ["connect", "stage", "migrate", "activate", "prune"]);
    assert_eq!(steps("web-2"), ["connect", "stage", "activate", "prune"]);
    let at = |host: &str, step: &str| -> u64 {
        let s = doc["hosts"].as_array().unwrap().iter().find(|h| h["host"] == host).unwrap()["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == step)
            .unwrap()
            .clone();
        s["started_ms"].as_u64().unwrap() + s["elapsed_ms"].as_u64().unwrap()
    };
    let migrate_start =
        doc["hosts"][0]["steps"].as_array().unwrap().iter().find(|s| s["name"] == "migrate").unwrap()["started_ms"]
            .as_u64()
            .unwrap();
    assert!(["web-1", "web-2", "web-3"].iter().all(|h| at(h, "stage") <= migrate_start), "{doc}");
    let shown = fleet.slipctl(&["show", &doc["id"].to_string()]).ok().stdout;
    assert!(shown.contains("migrate") && shown.contains("ran once, in the new release"), "{shown}");

    // On the host named for it.
    project(&fleet, &repo, &log, &migrate, "migrate_host = \"web-3\"\n");
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    let migrates: Vec<_> = lines(&log).into_iter().filter(|l| l.0 == "migrate").collect();
    assert_eq!((migrates.len(), migrates[1].1.as_str()), (2, "web-3"));

    // --skip-migrate: not run.
    repo.write("index.html", "v3\n");
    repo.commit("v3");
    fleet.slipctl(&["deploy", "site", "test", "--skip-migrate"]).ok();
    assert_eq!(lines(&log).iter().filter(|l| l.0 == "migrate").count(), 2);

    // A rollback does not run it, and says so.
    let back = fleet.slipctl(&["rollback", "site", "test"]).ok();
    assert!(format!("{}{}", back.stdout, back.stderr).contains("migrate is not run by a rollback"), "{}", back.stdout);
    assert_eq!(lines(&log).iter().filter(|l| l.0 == "migrate").count(), 2);

    // A failing migrate: nothing flips, the staged releases are gone, the deploy failed.
    let before: Vec<_> = ["web-1", "web-2", "web-3"].iter().map(|h| fleet.current_release(h, "site")).collect();
    let flips_before = lines(&log).iter().filter(|l| l.0 == "flip").count();
    project(&fleet, &repo, &log, "echo the schema is locked >&2; exit 3", "");
    repo.write("index.html", "v4\n");
    repo.commit("v4");
    let failed = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).code(1).json();
    assert!(
        failed["error"].as_str().unwrap_or("").contains("migrate")
            || failed["hosts"][0]["error"].as_str().unwrap_or("").contains("migrate"),
        "{failed}"
    );
    let after: Vec<_> = ["web-1", "web-2", "web-3"].iter().map(|h| fleet.current_release(h, "site")).collect();
    assert_eq!(before, after, "no host flipped");
    assert_eq!(lines(&log).iter().filter(|l| l.0 == "flip").count(), flips_before);
    let new = failed["release"].as_str().unwrap();
    for h in ["web-1", "web-2", "web-3"] {
        assert!(!fleet.releases(h, "site").contains(&new.to_owned()), "{h} keeps no staged release");
    }
}

#[test]
fn maintenance_during_migrate_puts_the_page_up_on_every_host_while_it_runs_and_takes_down_only_its_own() {
    let (fleet, repo, log) = fleet_repo_log(2);
    // The migrate (on web-1) looks at both hosts' pages while it runs.
    let page = |h: &str| fleet.deploy_to(h, "site").join("maintenance.html");
    let migrate = format!(
        "for f in {} {}; do if test -f $f; then echo page-up $SLIPWAY_HOST 0 $(grep -c 'going live' $f) >> {log}; \
         else echo page-down $SLIPWAY_HOST 0 >> {log}; fi; done",
        page("web-1").display(),
        page("web-2").display(),
        log = log.display()
    );
    let target = format!(
        "{}migrate = [\"{migrate}\"]\nmaintenance = \"during_migrate\"\n\
         maintenance_message = \"A new release is going live\"\n",
        hook_user_line()
    );
    fleet.apply_project_full("site", &repo.path, "", &target, "");

    let out = fleet.slipctl(&["deploy", "site", "test"]).ok();
    let seen = lines(&log);
    let up: Vec<_> = seen.iter().filter(|l| l.0 == "page-up").collect();
    assert_eq!(up.len(), 2, "both hosts showed the page while the migrate ran: {seen:?}");
    assert!(up.iter().all(|l| l.3 == "1"), "with the deploy's message: {seen:?}");
    assert!(out.stdout.contains("maintenance page up on 2 host(s) for the migrate"), "{}", out.stdout);
    assert!(out.stdout.contains("maintenance page down on 2 host(s)"), "{}", out.stdout);
    assert!(!page("web-1").exists() && !page("web-2").exists(), "down after the deploy");

    // A page an operator put up before the deploy stays up after it.
    fleet.slipctl(&["maintenance", "on", "site", "test", "--message", "Closed for the audit"]).ok();
    std::fs::remove_file(&log).unwrap();
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    let out = fleet.slipctl(&["deploy", "site", "test"]).ok();
    assert_eq!(lines(&log).iter().filter(|l| l.0 == "page-up").count(), 2);
    assert!(!out.stdout.contains("maintenance page down"), "{}", out.stdout);
    assert!(page("web-1").exists() && page("web-2").exists(), "the operator's page is still up");

    // Without migrate lines, the setting is refused with the fix.
    let file = fleet.path().join("bad.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"bad\"\nrepo = \"{}\"\n[target]\ndeploy_to = \"/srv/bad\"\ncurrent = \"/srv/www/bad\"\n\
             maintenance = \"during_migrate\"\n[env.test]\nhosts = [\"role=web\"]\n",
            repo.path.display()
        ),
    )
    .unwrap();
    let refused = fleet.slipctl(&["project", "apply", "-f", file.to_str().unwrap()]).code(2);
    assert!(refused.stderr.contains("target.migrate is empty"), "{}", refused.stderr);
}
