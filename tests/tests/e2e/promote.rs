//! Build once, ship the same bytes on (issue #24): promotion between envs with each env's own
//! layer, the `promote_from` gate, and what is refused.

use slipway_tests::{Fleet, Repo};

/// test on web-1, prod on web-2 and web-3 (taking only what ran in test); each env its own
/// `config_dir`. The build writes a stamp that differs on every build, and counts its builds.
fn setup(fleet: &Fleet) -> (Repo, std::path::PathBuf) {
    let repo = Repo::new(fleet.path().join("site"));
    repo.write("index.html", "v1\n");
    repo.write("config/app.ini", "env=dev\n");
    repo.commit("v1");
    for env in ["test", "prod"] {
        let layer = fleet.path().join("layers").join(env);
        std::fs::create_dir_all(layer.join("config")).unwrap();
        std::fs::write(layer.join("config/app.ini"), format!("env={env}\n")).unwrap();
    }
    let builds = fleet.path().join("builds.log");
    let file = fleet.path().join("site.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"site\"\nrepo = \"{repo}\"\nkeep_releases = 5\n\
             [build]\npost_deploy = [\"echo built >> {builds}\", \"mkdir -p dist && cat /proc/sys/kernel/random/uuid > dist/stamp\", \"cat config/app.ini > dist/seen.ini\"]\n\
             [target]\ndeploy_to = \"{root}/{{host}}/site\"\ncurrent = \"{root}/{{host}}/www/site\"\n\
             [env.test]\nhosts = [\"web-1\"]\nconfig_dir = \"layers/test\"\n\
             [env.prod]\nhosts = [\"web-2\", \"web-3\"]\nconfig_dir = \"layers/prod\"\npromote_from = \"test\"\n",
            repo = repo.path.display(),
            builds = builds.display(),
            root = fleet.path().join("hosts").display(),
        ),
    )
    .unwrap();
    fleet.slipctl(&["project", "apply", "-f", file.to_str().unwrap()]).ok();
    (repo, builds)
}

fn builds(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log).map(|s| s.lines().count()).unwrap_or(0)
}

#[test]
fn prod_ships_the_build_test_ran_with_its_own_layer_and_takes_nothing_else() {
    let fleet = Fleet::new(3);
    let (repo, log) = setup(&fleet);
    let read = |host: &str, p: &str| std::fs::read_to_string(fleet.current(host, "site").join(p)).unwrap();

    // prod takes only builds that ran in test: a deploy from a ref is refused before any build.
    let refused = fleet.slipctl(&["deploy", "site", "prod"]).code(2);
    assert!(
        refused.stderr.contains("promote_from = \"test\"") && refused.stderr.contains("--from test"),
        "{}",
        refused.stderr
    );
    assert_eq!(builds(&log), 0, "nothing was built");
    // Nothing ran in test yet: there is nothing to promote.
    let empty = fleet.slipctl(&["deploy", "site", "prod", "--from", "test"]).code(2);
    assert!(empty.stderr.contains("has no release to promote"), "{}", empty.stderr);

    let test1 = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok().json();
    assert_eq!(builds(&log), 1);
    assert_eq!(read("web-1", "config/app.ini"), "env=test\n", "test's layer");
    assert_eq!(read("web-1", "dist/seen.ini"), "env=dev\n", "the build saw no env's files");
    let stamp = read("web-1", "dist/stamp");

    let prod1 = fleet.slipctl(&["--output", "json", "deploy", "site", "prod", "--from", "test"]).ok().json();
    assert_eq!(builds(&log), 1, "a promotion builds nothing");
    for host in ["web-2", "web-3"] {
        assert_eq!(read(host, "dist/stamp"), stamp, "{host} runs the very bytes test ran");
        assert_eq!(read(host, "config/app.ini"), "env=prod\n", "{host} has prod's layer");
    }
    let sha = |d: &serde_json::Value| d["built"]["sha256"].as_str().unwrap().to_owned();
    assert_eq!(sha(&prod1), sha(&test1), "one build digest in both envs");
    assert_eq!(sha(&test1).len(), 64);
    assert_ne!(prod1["artifact"]["sha256"], test1["artifact"]["sha256"], "the releases differ by their layer");
    assert_ne!(prod1["overlay_sha256"], test1["overlay_sha256"]);
    assert_eq!(prod1["promoted_from"], test1["id"]);
    assert_eq!(prod1["built"]["deploy"], test1["id"], "built by test's deploy");
    assert_eq!(prod1["built"]["env"], "test");
    assert_eq!(prod1["commit"], test1["commit"]);
    assert_eq!(prod1["build"].as_array().unwrap().len(), 0, "no build hooks ran for prod");
    let shown = fleet.slipctl(&["show", &prod1["id"].to_string()]).ok().stdout;
    let provenance =
        format!("built by deploy #{} of test from commit {}", test1["id"], &repo.git(&["rev-parse", "HEAD"])[..12]);
    assert!(shown.contains(&sha(&test1)) && shown.contains(&provenance), "{shown}");
    assert!(shown.contains(&format!("promoted from deploy #{}", test1["id"])), "{shown}");

    // A new commit in test; prod can still take the first build, by its deploy.
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    let test2 = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok().json();
    assert_eq!(builds(&log), 2);
    assert_ne!(sha(&test2), sha(&test1));
    let id1 = test1["id"].to_string();
    let again = fleet.slipctl(&["--output", "json", "deploy", "site", "prod", "--from-deploy", &id1]).ok().json();
    assert_eq!(sha(&again), sha(&test1));
    assert_eq!(read("web-2", "index.html"), "v1\n");
    assert_eq!(read("web-2", "dist/stamp"), stamp);
    // And then the newest: --from test follows what test runs.
    let newest = fleet.slipctl(&["--output", "json", "deploy", "site", "prod", "--from", "test"]).ok().json();
    assert_eq!(sha(&newest), sha(&test2));
    assert_eq!(read("web-3", "index.html"), "v2\n");
    assert_eq!(builds(&log), 2);

    // A build gone from the cache, made by hooks, cannot be made again byte for byte: refused,
    // naming the fix, and prod keeps what it runs.
    std::fs::remove_dir_all(fleet.home.join("cache/artifacts")).unwrap();
    let gone = fleet.slipctl(&["deploy", "site", "prod", "--from-deploy", &id1]).code(1);
    assert!(
        gone.stderr.contains("no longer in the controller's cache")
            && gone.stderr.contains("deploy the commit to the source env again"),
        "{}",
        gone.stderr
    );
    assert_eq!(read("web-2", "index.html"), "v2\n");
}

#[test]
fn a_promotion_names_a_deploy_of_its_own_project() {
    let fleet = Fleet::new(3);
    let (_repo, _log) = setup(&fleet);
    let other = Repo::new(fleet.path().join("other"));
    other.write("index.html", "other\n");
    other.commit("o1");
    fleet.apply_project("other", &other.path, "");
    let deployed = fleet.slipctl(&["--output", "json", "deploy", "other", "test"]).ok().json();
    let id = deployed["id"].to_string();
    let run = fleet.slipctl(&["deploy", "site", "prod", "--from-deploy", &id]).code(2);
    assert!(run.stderr.contains("shipped a build of project other, not of site"), "{}", run.stderr);
    let unknown = fleet.slipctl(&["deploy", "site", "prod", "--from-deploy", "999"]).code(2);
    assert!(unknown.stderr.contains("unknown deploy #999"), "{}", unknown.stderr);
    // A promote_from naming no env of the project is refused when the file is applied.
    let bad = fleet.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "name = \"bad\"\nrepo = \"{}\"\n[target]\ndeploy_to = \"/srv/bad\"\n[env.prod]\nhosts = [\"web-1\"]\npromote_from = \"staging\"\n",
            other.path.display()
        ),
    )
    .unwrap();
    let applied = fleet.slipctl(&["project", "apply", "-f", bad.to_str().unwrap()]).code(2);
    assert!(applied.stderr.contains("promote_from = \"staging\" must name another env"), "{}", applied.stderr);
}

#[test]
fn a_ticket_promotes_the_build_test_runs_and_shows_it() {
    let fleet = Fleet::new(3);
    let (repo, log) = setup(&fleet);
    let test1 = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok().json();
    let token = fleet.slipctl(&["--output", "json", "token", "create", "ci", "--admin"]).ok().json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    slipway_tests::add_admin(&fleet, "ops");
    let server = slipway_tests::Server::start(&fleet);
    let (cookie, _) = server.login("ops", "ops-password");
    let page = |path: &str| {
        let (status, _, text) = slipway_tests::http(server.port, "GET", path, &[("Cookie", cookie.as_str())], None);
        assert_eq!(status, 200, "{path}: {text}");
        text
    };
    // The env page offers the promotion; the new-ticket page lists test's build (no ref picker).
    assert!(page("/projects/site/envs/prod").contains("promote the build of"));
    let form = page("/projects/site/envs/prod/tickets/new");
    let sha = test1["built"]["sha256"].as_str().unwrap();
    assert!(form.contains("<option value=\"test\"") && form.contains(&sha[..7]), "{form}");
    assert!(!form.contains("name=\"ref\""), "prod takes no ref: {form}");
    let bearer = format!("Bearer {token}");
    let auth = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];

    // prod takes no ref: the ticket is refused when it is made, naming the fix.
    let by_ref = serde_json::json!({"project": "site", "env": "prod", "ref": "main", "title": "ship main"}).to_string();
    let (status, doc) = server.call("POST", "/api/v1/tickets", &auth, Some(&by_ref));
    assert_eq!(status, 403, "{doc}");
    assert!(doc["fix"].as_str().unwrap().contains("--from test"), "{doc}");
    let both =
        serde_json::json!({"project": "site", "env": "prod", "ref": "main", "from": "test", "title": "x"}).to_string();
    assert_eq!(server.call("POST", "/api/v1/tickets", &auth, Some(&both)).0, 400);

    // A promotion ticket pins test's build when it is made, and shows it.
    let promote = serde_json::json!({"project": "site", "env": "prod", "from": "test", "title": "promote"}).to_string();
    let (status, t) = server.call("POST", "/api/v1/tickets", &auth, Some(&promote));
    assert_eq!(status, 201, "{t}");
    assert_eq!(t["build"]["sha256"], test1["built"]["sha256"], "{t}");
    assert_eq!(t["from_deploy"], test1["id"]);
    assert_eq!(t["commit"], test1["commit"]);
    let ticket = t["id"].as_u64().unwrap();
    // test moves on meanwhile: the ticket still ships what it pinned.
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    let (status, started) = server.call("POST", &format!("/api/v1/tickets/{ticket}/deploy"), &auth, Some(""));
    assert_eq!(status, 202, "{started}");
    let id = started["deploy"].as_u64().unwrap();
    let mut events = slipway_tests::SseReader::open(server.port, &format!("/api/v1/deploys/{id}/events"), &auth[..1]);
    while events.next_event().is_some() {}
    let (_, record) = server.call("GET", &format!("/api/v1/deploys/{id}"), &auth, None);
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["built"]["sha256"], test1["built"]["sha256"]);
    assert_eq!(record["promoted_from"], test1["id"]);
    assert_eq!(builds(&log), 2, "one build per test deploy, none for prod");
    let current = |h: &str| std::fs::read_to_string(fleet.current(h, "site").join("index.html")).unwrap();
    assert_eq!((current("web-2"), current("web-3")), ("v1\n".to_owned(), "v1\n".to_owned()));
    let (_, after) = server.call("GET", &format!("/api/v1/tickets/{ticket}"), &auth, None);
    assert_eq!(after["state"], "succeeded", "{after}");
    let shown = page(&format!("/tickets/{ticket}"));
    assert!(shown.contains(sha) && shown.contains(&format!("built by deploy #{} of test", test1["id"])), "{shown}");
}
