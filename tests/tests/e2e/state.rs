//! Controller state in a real PostgreSQL (issue #23, item 1): a home's sled state moves with
//! `slipctl state migrate` (counts checked), the server and the CLI then run on the database
//! with the same history, users and tickets, and bad input changes nothing: a database already
//! holding state, a schema from a newer version, an unreachable server.

use slipway_tests::{Fleet, Repo, Server, pg, require};

#[test]
fn a_sled_home_migrates_to_postgres_and_runs_on_it() {
    if !require("PostgreSQL (Debian's postgresql) and root", pg::available()) {
        return;
    }
    if std::env::var("SLIPWAY_TEST_STATE").as_deref() == Ok("postgres") {
        return; // (It starts from sled and moves to PostgreSQL: the sled pass runs it.)
    }
    let cluster = pg::cluster();
    let fleet = Fleet::new(2);
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "v1\n");
    repo.commit("v1");
    fleet.apply_project_full("site", &repo.path, "", "", "");
    let first = fleet.deploy_ok("site");
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    fleet.deploy_ok("site");
    slipway_tests::add_user(&fleet, "dev", &[("site", "test", "deployer")]);
    let before = fleet.slipctl(&["--output", "json", "history"]).ok().json();
    let users = fleet.slipctl(&["--output", "json", "user", "list"]).ok().json();

    // Into an empty database: every tree copied and counted.
    let url = cluster.database();
    let moved = fleet.slipctl(&["--output", "json", "state", "migrate", "--from", "sled", "--to", &url]).ok().json();
    assert!(moved["trees"]["deploys"].as_u64().unwrap() >= 2, "{moved}");
    // Into a database that holds state already: refused, nothing changed.
    let again = fleet.slipctl(&["state", "migrate", "--from", "sled", "--to", &url]);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(again.stderr.contains("already holds Slipway state"), "{}", again.stderr);

    // The home now reads the database: the same history and users, and it carries on.
    std::fs::write(fleet.home.join("config.toml"), format!("[state]\nurl = \"{url}\"\n")).unwrap();
    std::fs::rename(fleet.home.join("state"), fleet.path().join("state-sled")).unwrap();
    assert_eq!(fleet.slipctl(&["--output", "json", "history"]).ok().json(), before);
    assert_eq!(fleet.slipctl(&["--output", "json", "user", "list"]).ok().json(), users);
    let server = Server::start(&fleet);
    let (cookie, csrf) = server.login("dev", "dev-password");
    let body = serde_json::json!({"project": "site", "env": "test", "title": "on postgres"}).to_string();
    let auth = [("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str()), ("Content-Type", "application/json")];
    let (status, ticket) = server.call("POST", "/api/v1/tickets", &auth, Some(&body));
    assert_eq!(status, 201, "{ticket}");
    repo.write("index.html", "v3\n");
    repo.commit("v3");
    let third = fleet.deploy_ok("site");
    assert_ne!(third, first);
    let rows = cluster.sql(url.rsplit('/').next().unwrap(), "SELECT count(*) FROM kv WHERE tree = 'deploys'");
    assert_eq!(rows, "3", "the third deploy is a row of the database");
    drop(server);

    // TLS to the database when the config names its CA: required and verified.
    let db = url.rsplit('/').next().unwrap();
    let config = |ca: &std::path::Path| format!("[state]\nurl = \"{url}\"\nca_file = \"{}\"\n", ca.display());
    std::fs::write(fleet.home.join("config.toml"), config(&cluster.ca)).unwrap();
    let server = Server::start(&fleet);
    let encrypted = cluster.sql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = '{db}' AND s.ssl"
        ),
    );
    assert_ne!(encrypted, "0", "the server's connection to the database is TLS");
    drop(server);
    // A CA that did not sign the database's certificate: refused, nothing read.
    std::fs::write(fleet.home.join("config.toml"), config(&fleet.home.join("pki/ca.pem"))).unwrap();
    let untrusted = fleet.slipctl(&["history"]);
    assert_eq!(untrusted.code, 1, "{}", untrusted.stderr);
    assert!(untrusted.stderr.contains("cannot reach PostgreSQL at"), "{}", untrusted.stderr);
    std::fs::write(fleet.home.join("config.toml"), config(&cluster.ca)).unwrap();

    // A schema from a newer slipctl is refused, naming both versions.
    cluster.sql(db, "UPDATE slipway_schema SET version = 99");
    let refused = fleet.slipctl(&["history"]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("schema version 99, newer than this slipctl's 1"), "{}", refused.stderr);
    cluster.sql(db, "UPDATE slipway_schema SET version = 1");

    // An unreachable database: a clear error, naming it (without a password) and the fix.
    let port = slipway_tests::free_port();
    std::fs::write(
        fleet.home.join("config.toml"),
        format!("[state]\nurl = \"postgres://slipway:secret@127.0.0.1:{port}/nothing\"\n"),
    )
    .unwrap();
    let down = fleet.slipctl(&["history"]);
    assert_eq!(down.code, 1, "{}", down.stderr);
    assert!(down.stderr.contains("cannot reach PostgreSQL at"), "{}", down.stderr);
    assert!(!down.stderr.contains("secret"), "no password in messages: {}", down.stderr);
}

/// The database goes away under a running server, mid-deploy: the server steps down (it cannot
/// know that it still leads), the deploy in flight is not said to have succeeded, and the server
/// started again leads, carries that deploy on from its journal, and the next deploy goes through.
#[test]
fn the_server_steps_down_when_its_database_goes_and_carries_the_deploy_on_once_started_again() {
    if !require("PostgreSQL (Debian's postgresql) and root", pg::available()) {
        return;
    }
    let cluster = pg::Cluster::private();
    let mut fleet = Fleet::new(0);
    let url = cluster.database();
    std::fs::write(fleet.home.join("config.toml"), format!("[state]\nurl = \"{url}\"\n")).unwrap();
    fleet.add_agent("web-1", true);
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "v1\n");
    repo.commit("v1");
    let (started, go) = slipway_tests::gate(&fleet);
    let target = format!(
        "{}pre_release = [\"touch {}; while [ ! -e {} ]; do sleep 0.05; done\"]\n",
        slipway_tests::hook_user_line(),
        started.display(),
        go.display()
    );
    fleet.apply_project_full("site", &repo.path, "", &target, "");
    std::fs::write(&go, "").unwrap();
    let server = Server::start(&fleet);
    fleet.deploy_ok("site");

    std::fs::remove_file(&go).unwrap();
    std::fs::remove_file(&started).unwrap();
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    let running = fleet.spawn_slipctl(&["deploy", "site", "test"]);
    slipway_tests::wait_for("the hook to start", || started.exists());
    let mut server = server;
    cluster.stop();
    // Without its lock session it cannot know that it still leads: it stops at once (exit 75,
    // start me again), and the deploy in flight is not said to have succeeded.
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(75));
    let out = running.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "a deploy whose server went away does not say it succeeded: {said}");

    // Started again, it leads and carries the deploy on from its journal.
    cluster.start();
    std::fs::write(&go, "").unwrap();
    let server = Server::start(&fleet);
    slipway_tests::wait_for("the deploy carried on to end", || {
        let history = fleet.slipctl(&["--output", "json", "history", "site", "test"]).ok().json();
        history[0]["status"] == "succeeded" && history[0]["id"] == 2
    });
    assert_eq!(std::fs::read_to_string(fleet.current("web-1", "site").join("index.html")).unwrap(), "v2\n");
    repo.write("index.html", "v3\n");
    repo.commit("v3");
    fleet.deploy_ok("site");
    assert_eq!(std::fs::read_to_string(fleet.current("web-1", "site").join("index.html")).unwrap(), "v3\n");
    drop(server);
}
