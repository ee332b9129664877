//! `slipctl` commands carried out by the server (through its socket) behave as their API
//! twins (issue #21's defects on that path): a deploy through the socket is one of the server's
//! runs (the API cancels it, `/healthz` counts it), a promote through the socket of a deploy the
//! server itself waits on is taken by that waiter (never resumed twice), an abort that did what
//! was asked exits 0, and a lock's holder names its host once.

use serde_json::Value;
use slipway_tests::{Fleet, Repo, Server, wait_for};

fn repo(fleet: &Fleet) -> Repo {
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "v1\n");
    repo.commit("v1");
    repo
}

/// A `pre_release` that waits for the returned file to exist.
fn gate(fleet: &Fleet) -> (String, std::path::PathBuf) {
    let dir = fleet.path().join("gate");
    std::fs::create_dir_all(&dir).unwrap();
    slipway_tests::traversable(&dir);
    let file = dir.join("go");
    let target = format!(
        "{}pre_release = [\"while [ ! -e {} ]; do sleep 0.05; done\"]\n",
        slipway_tests::hook_user_line(),
        file.display()
    );
    (target, file)
}

fn admin_token(fleet: &Fleet) -> String {
    let doc = fleet.slipctl(&["--output", "json", "token", "create", "root", "--admin"]).ok().json();
    format!("Bearer {}", doc["token"].as_str().unwrap())
}

fn get(server: &Server, auth: &str, path: &str) -> Value {
    server.call("GET", path, &[("Authorization", auth)], None).1
}

#[test]
fn a_deploy_through_the_socket_is_one_of_the_servers_runs() {
    let fleet = Fleet::new(1);
    let repo = repo(&fleet);
    let (target, go) = gate(&fleet);
    fleet.apply_project_full("site", &repo.path, "", &target, "");
    let auth = admin_token(&fleet);
    let server = Server::start(&fleet);
    let deploy = fleet.spawn_slipctl(&["deploy", "site", "test"]);
    let mut id = 0;
    // (The record reads running a moment before the server counts the run: wait for both.)
    wait_for("the deploy through the socket to run, and /healthz to count it", || {
        let list = get(&server, &auth, "/api/v1/deploys?status=running");
        id = list[0]["id"].as_u64().unwrap_or(0);
        id > 0 && get(&server, &auth, "/healthz")["running"] == 1
    });
    let cells = get(&server, &auth, "/api/v1/dashboard");
    assert_eq!(cells[0]["running"]["id"], id, "the dashboard shows it running: {cells}");
    let (status, doc) =
        server.call("POST", &format!("/api/v1/deploys/{id}/cancel"), &[("Authorization", auth.as_str())], None);
    assert_eq!(status, 200, "the API could not cancel a deploy the socket started: {doc}");
    let out = deploy.wait_with_output().unwrap();
    assert_ne!(out.status.code(), Some(0), "a cancelled deploy");
    assert_eq!(get(&server, &auth, &format!("/api/v1/deploys/{id}"))["status"], "cancelled");
    std::fs::write(&go, "").unwrap();
    assert!(fleet.current_release("web-1", "site").is_none(), "nothing was flipped");
}

#[test]
fn a_promote_through_the_socket_is_taken_by_the_servers_own_waiter() {
    let fleet = Fleet::new(2);
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
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    let auth = admin_token(&fleet);
    let server = Server::start(&fleet);
    let body = r#"{"project": "site", "env": "test"}"#;
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let (status, doc) = server.call("POST", "/api/v1/deploys", &headers, Some(body));
    assert_eq!(status, 202, "{doc}");
    let id = doc["id"].as_u64().unwrap();
    wait_for("the canary pause", || get(&server, &auth, &format!("/api/v1/deploys/{id}"))["status"] == "paused");

    let run = fleet.slipctl(&["promote", &id.to_string()]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("sent to the server"), "{}", run.stdout);
    let doc = get(&server, &auth, &format!("/api/v1/deploys/{id}"));
    assert_eq!(doc["status"], "succeeded", "{doc}");
    let outcomes = doc["events"].as_array().unwrap().iter().filter(|e| e["event"] == "outcome").count();
    assert_eq!(outcomes, 1, "one carrier, one outcome: {doc}");
    for host in ["web-1", "web-2"] {
        let page = std::fs::read_to_string(fleet.current(host, "site").join("index.html")).unwrap();
        assert_eq!(page, "v2\n", "{host}");
    }
}

/// Deploy `site`/`test` in the background until it holds the lock (its hook waits for the
/// gate): the refusal a second deploy gets then. A first deploy that ends instead fails the test
/// with what it said (a probe never becomes a deploy of its own that would wait on the gate).
fn busy_while_held(fleet: &Fleet) -> (std::process::Child, String) {
    let first = fleet.spawn_slipctl(&["deploy", "site", "test"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut first = first;
    loop {
        let history = fleet.slipctl(&["--output", "json", "history", "site", "test"]).ok().json();
        if history[0]["status"] == "running" {
            break;
        }
        if let Ok(Some(_)) = first.try_wait() {
            let out = first.wait_with_output().unwrap();
            panic!("the first deploy ended: {}", String::from_utf8_lossy(&out.stderr));
        }
        assert!(std::time::Instant::now() < deadline, "the first deploy did not start: {history}");
        std::thread::sleep(std::time::Duration::from_millis(50)); // (polling the history, no event to wait on)
    }
    let run = fleet.slipctl(&["deploy", "site", "test"]);
    assert_eq!(run.code, 3, "a second deploy while the first holds the lock: {}", run.stderr);
    (first, run.stderr)
}

#[test]
fn a_lock_holder_names_its_host_once() {
    let fleet = Fleet::new(1);
    let repo = repo(&fleet);
    let (target, go) = gate(&fleet);
    fleet.apply_project_full("site", &repo.path, "", &target, "");
    let host = rustix::system::uname().nodename().to_string_lossy().into_owned();
    let (first, busy) = busy_while_held(&fleet);
    assert!(busy.contains(&format!("@{host} (pid")), "{busy}");
    assert!(!busy.contains(&format!("@{host}@{host}")), "the host named twice: {busy}");
    std::fs::write(&go, "").unwrap();
    assert_eq!(first.wait_with_output().unwrap().status.code(), Some(0));
    // (Through the server, the holder is the caller, on the server's host.)
    let server = Server::start(&fleet);
    std::fs::remove_file(&go).unwrap();
    let (first, busy) = busy_while_held(&fleet);
    assert!(busy.contains(&format!(" on {host} (pid")) || busy.contains(&format!("@{host} (pid")), "{busy}");
    std::fs::write(&go, "").unwrap();
    assert_eq!(first.wait_with_output().unwrap().status.code(), Some(0));
    drop(server);
}
