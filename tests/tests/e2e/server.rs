//! `slipctl serve` end to end: the real server and agents over loopback — roles on exact
//! (project, env) pairs, sessions with CSRF, scoped tokens, tickets with approvals, the CLI
//! going through the server's socket, the deploy lock as 409, event streams with late and
//! resuming watchers, bad input, and SIGTERM mid-deploy then a restart.

use std::path::Path;

use serde_json::{Value, json};
use slipway_tests::{Fleet, Repo, Server, SseReader, add_user};

/// Project `name` with envs `test` and `prod` on every role=web agent; `prod` wants approval
/// by two; `pre` is the pre_release hook (a slow one keeps a deploy running).
fn project(fleet: &Fleet, name: &str, repo: &Path, pre: &str) {
    let root = fleet.path().join("hosts");
    let file = fleet.path().join(format!("{name}.toml"));
    let text = format!(
        "name = \"{name}\"\nrepo = \"{}\"\nkeep_releases = 3\n\
         [target]\ndeploy_to = \"{root}/{{host}}/{name}\"\ncurrent = \"{root}/{{host}}/www/{name}\"\npre_release = [{pre}]\n{user}\n\
         [env.test]\nhosts = [\"role=web\"]\n\
         [env.prod]\nhosts = [\"role=web\"]\napproval = {{ required = 2, rollback = true }}\n",
        repo.display(),
        root = root.display(),
        user = slipway_tests::hook_user_line()
    );
    std::fs::write(&file, text).unwrap();
    fleet.slipctl(&["project", "apply", "-f", file.to_str().unwrap()]).ok();
}

fn repo(fleet: &Fleet) -> Repo {
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "v1\n");
    repo.commit("v1");
    repo.git(&["tag", "v1"]);
    repo
}

/// Headers of a cookie session, with the CSRF token.
fn session<'a>(cookie: &'a str, csrf: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![("Cookie", cookie), ("X-CSRF-Token", csrf), ("Content-Type", "application/json")]
}

fn ticket_body(project: &str, env: &str) -> String {
    json!({"project": project, "env": env, "ref": "v1", "title": "ship v1", "description": "the first"}).to_string()
}

/// Read a stream until `n` events or its end.
fn read(reader: &mut SseReader, n: usize) -> Vec<slipway_tests::Sse> {
    let mut out = Vec::new();
    while out.len() < n {
        match reader.next_event() {
            Some(e) => out.push(e),
            None => break,
        }
    }
    out
}

#[test]
fn roles_tickets_approvals_tokens_and_bad_input_through_the_api() {
    let fleet = Fleet::new(1);
    let repo = repo(&fleet);
    project(&fleet, "a", &repo.path, "");
    project(&fleet, "b", &repo.path, "");
    add_user(&fleet, "dev", &[("a", "test", "deployer"), ("b", "prod", "deployer")]);
    add_user(&fleet, "viewer", &[("a", "test", "viewer")]);
    add_user(&fleet, "req", &[("a", "prod", "deployer"), ("a", "prod", "approver")]);
    add_user(&fleet, "ap1", &[("a", "prod", "approver")]);
    add_user(&fleet, "ap2", &[("a", "prod", "approver")]);
    let token = fleet.slipctl(&["--output", "json", "token", "create", "ci", "--scope", "a:test:deployer"]).ok().json()
        ["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let server = Server::start(&fleet);
    let json_h = [("Content-Type", "application/json")];

    // Nobody logged in: 401. A cookie without its CSRF token on an unsafe request: 403.
    assert_eq!(server.call("GET", "/api/v1/tickets", &[], None).0, 401);
    let (cookie, csrf) = server.login("dev", "dev-password");
    let (status, doc) = server.call(
        "POST",
        "/api/v1/tickets",
        &[("Cookie", &cookie), ("Content-Type", "application/json")],
        Some(&ticket_body("a", "test")),
    );
    assert_eq!(status, 403, "{doc}");
    assert!(doc["error"].as_str().unwrap().contains("CSRF"), "{doc}");
    assert_eq!(server.call("POST", "/api/v1/session", &json_h, Some(r#"{"user":"dev","password":"wrong"}"#)).0, 401);

    // (a, test) + (b, prod) never make (a, prod).
    let dev = session(&cookie, &csrf);
    let (status, doc) = server.call("POST", "/api/v1/tickets", &dev, Some(&ticket_body("a", "prod")));
    assert_eq!(status, 403, "{doc}");
    let (status, t) = server.call("POST", "/api/v1/tickets", &dev, Some(&ticket_body("a", "test")));
    assert_eq!(status, 201, "{t}");
    assert_eq!(t["state"], "approved", "test needs no approval: {t}");
    assert_eq!(t["commit"].as_str().unwrap().len(), 40, "the ref resolved when the ticket was made: {t}");
    assert_eq!(t["created"]["by"], "dev");
    assert_eq!(t["created"]["from"], "127.0.0.1");
    let test_ticket = t["id"].as_u64().unwrap();

    // Nor can they deploy (a, prod) directly or see the events of a deploy there (the local
    // admin deploys it through the server's socket).
    let prod_deploy = fleet.slipctl(&["--output", "json", "deploy", "a", "prod"]).ok().json()["id"].as_u64().unwrap();
    let prod_body = json!({"project": "a", "env": "prod"}).to_string();
    assert_eq!(server.call("POST", "/api/v1/deploys", &dev, Some(&prod_body)).0, 403);
    // (b, prod) asks approval for rollbacks too: its deployer goes through a ticket.
    let b_prod = json!({"project": "b", "env": "prod"}).to_string();
    let (status, doc) = server.call("POST", "/api/v1/rollbacks", &dev, Some(&b_prod));
    assert_eq!(status, 403, "{doc}");
    assert!(doc["error"].as_str().unwrap().contains("rolls back by approved ticket"), "{doc}");
    // A deploy they may not see is one that does not exist, for them (a 403 would name its
    // project and env).
    let (status, doc) = server.call("GET", &format!("/api/v1/deploys/{prod_deploy}/events"), &dev, None);
    assert_eq!(status, 404, "{doc}");
    assert!(!doc.to_string().contains("prod"), "{doc}");
    assert_eq!(server.call("GET", &format!("/api/v1/deploys/{prod_deploy}"), &dev, None).0, 404);
    let (_, listed) = server.call("GET", "/api/v1/deploys", &dev, None);
    assert!(listed.as_array().unwrap().iter().all(|d| d["env"] != "prod" || d["project"] != "a"), "{listed}");

    // A viewer sees the ticket but cannot deploy it.
    let (vc, vt) = server.login("viewer", "viewer-password");
    assert_eq!(server.call("GET", &format!("/api/v1/tickets/{test_ticket}"), &session(&vc, &vt), None).0, 200);
    let (status, doc) =
        server.call("POST", &format!("/api/v1/tickets/{test_ticket}/deploy"), &session(&vc, &vt), Some(""));
    assert_eq!(status, 403, "{doc}");

    // A token scoped to (a, test) cannot touch (a, prod).
    let bearer = format!("Bearer {token}");
    let tok = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
    assert_eq!(server.call("POST", "/api/v1/tickets", &tok, Some(&ticket_body("a", "prod"))).0, 403);
    assert_eq!(server.call("POST", "/api/v1/tickets", &tok, Some(&ticket_body("a", "test"))).0, 201);
    let bad = format!("Bearer slw_{}_0000", &token[4..16]);
    assert_eq!(server.call("GET", "/api/v1/tickets", &[("Authorization", bad.as_str())], None).0, 401);

    // prod wants two approvals from people other than the requester.
    let (rc, rt) = server.login("req", "req-password");
    let (status, p) = server.call("POST", "/api/v1/tickets", &session(&rc, &rt), Some(&ticket_body("a", "prod")));
    assert_eq!(status, 201, "{p}");
    assert_eq!(p["state"], "pending");
    let prod = p["id"].as_u64().unwrap();
    let approve = format!("/api/v1/tickets/{prod}/approve");
    let (status, doc) = server.call("POST", &approve, &session(&rc, &rt), Some(r#"{"comment":"mine"}"#));
    assert_eq!(status, 403, "a requester cannot approve their own ticket: {doc}");
    let (status, doc) = server.call("POST", &format!("/api/v1/tickets/{prod}/deploy"), &session(&rc, &rt), Some(""));
    assert_eq!(status, 409, "a pending ticket does not deploy: {doc}");
    let (a1, t1) = server.login("ap1", "ap1-password");
    let (status, doc) = server.call("POST", &approve, &session(&a1, &t1), Some(r#"{"comment":"ok"}"#));
    assert_eq!((status, doc["state"].as_str()), (200, Some("pending")), "one of two: {doc}");
    assert_eq!(
        server.call("POST", &approve, &session(&a1, &t1), Some(r#"{"comment":"again"}"#)).0,
        409,
        "the same approver twice"
    );
    let (a2, t2) = server.login("ap2", "ap2-password");
    let (status, doc) = server.call("POST", &approve, &session(&a2, &t2), Some(r#"{"comment":"ok too"}"#));
    assert_eq!((status, doc["state"].as_str()), (200, Some("approved")), "{doc}");
    assert_eq!(doc["approvals"].as_array().unwrap().len(), 2);
    assert!(
        doc["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["by"].is_string() && t["at"].is_number() && t["from"].is_string())
    );

    // Bad input: the field named, oversized 413, unknown ids 404 — and nothing written.
    let before = server.call("GET", "/api/v1/tickets", &dev, None).1.as_array().unwrap().len();
    let (status, doc) = server.call(
        "POST",
        "/api/v1/tickets",
        &dev,
        Some(r#"{"project":"a","env":"test","title":"x","colour":"red"}"#),
    );
    assert_eq!(status, 400, "{doc}");
    assert!(doc["error"].as_str().unwrap().contains("colour"), "names the field: {doc}");
    let huge = json!({"project": "a", "env": "test", "title": "x", "description": "y".repeat(2 << 20)}).to_string();
    assert_eq!(server.call("POST", "/api/v1/tickets", &dev, Some(&huge)).0, 413);
    assert_eq!(server.call("GET", "/api/v1/tickets/999", &dev, None).0, 404);
    assert_eq!(server.call("GET", "/api/v1/deploys/999", &dev, None).0, 404);
    assert_eq!(
        server.call("GET", "/api/v1/tickets", &dev, None).1.as_array().unwrap().len(),
        before,
        "nothing half-written"
    );

    // Admin-only: a developer cannot run `slipctl user add` through the API.
    let argv = json!({"argv": ["user", "add", "mallory"]}).to_string();
    assert_eq!(server.call("POST", "/api/v1/cli", &dev, Some(&argv)).0, 403);
}

#[test]
fn the_cli_goes_through_the_server_events_stream_to_late_and_resuming_watchers_and_the_lock_is_409() {
    let fleet = Fleet::new(2);
    let repo = repo(&fleet);
    // Each host's pre_release prints lines over a second: the deploy is still going while
    // watchers join and leave.
    project(&fleet, "a", &repo.path, r#""for i in 1 2 3 4 5; do echo step $i; sleep 0.2; done""#);
    add_user(&fleet, "dev", &[("a", "test", "deployer"), ("a", "prod", "viewer")]);
    let server = Server::start(&fleet);

    // A CLI deploy while the server runs goes through it: the server's history shows it.
    let cli = fleet.slipctl(&["--output", "json", "deploy", "a", "test"]).ok().json();
    let first = cli["id"].as_u64().unwrap();
    let (cookie, csrf) = server.login("dev", "dev-password");
    let dev = session(&cookie, &csrf);
    let (_, history) = server.call("GET", "/api/v1/deploys?project=a&env=test", &dev, None);
    assert_eq!(history[0]["id"].as_u64(), Some(first), "{history}");
    assert_eq!(history[0]["status"], "succeeded");

    // A deploy through a ticket; a second one of the same env meanwhile is 409 naming it.
    let (_, t) = server.call("POST", "/api/v1/tickets", &dev, Some(&ticket_body("a", "test")));
    let ticket = t["id"].as_u64().unwrap();
    let (status, started) = server.call("POST", &format!("/api/v1/tickets/{ticket}/deploy"), &dev, Some(""));
    assert_eq!(status, 202, "{started}");
    let id = started["deploy"].as_u64().unwrap();
    let events = format!("/api/v1/deploys/{id}/events");
    let auth = [("Cookie", cookie.as_str())];
    let mut resuming = SseReader::open(server.port, &events, &auth);
    assert_eq!(resuming.status, 200);
    let early = read(&mut resuming, 3);
    assert_eq!(early.len(), 3);
    drop(resuming);
    let body = json!({"project": "a", "env": "test"}).to_string();
    let (status, doc) = server.call("POST", "/api/v1/deploys", &dev, Some(&body));
    assert_eq!(status, 409, "{doc}");
    assert!(doc["error"].as_str().unwrap().contains(&format!("#{id}")), "names the running deploy: {doc}");
    let cli_busy = fleet.slipctl(&["deploy", "a", "test"]);
    assert_eq!(cli_busy.code, 3, "the CLI hears busy too: {}", cli_busy.stderr);

    // One watcher reconnects where it left off, another joins late; both see it all.
    let last = early.last().unwrap().id.unwrap().to_string();
    let mut resumed =
        SseReader::open(server.port, &events, &[("Cookie", cookie.as_str()), ("Last-Event-ID", last.as_str())]);
    let mut late = SseReader::open(server.port, &events, &auth);
    let mut a: Vec<_> = early.clone();
    a.extend(read(&mut resumed, usize::MAX));
    let b = read(&mut late, usize::MAX);
    assert_eq!(a.last().unwrap().event, "outcome", "the last event is the outcome");
    let shown = fleet.slipctl(&["--output", "json", "show", &id.to_string()]).ok().json();
    let recorded: Vec<Value> = shown["events"].as_array().unwrap().clone();
    let data = |v: &[slipway_tests::Sse]| v.iter().map(|e| e.data.clone()).collect::<Vec<_>>();
    assert_eq!(data(&a), recorded, "resumed watcher = show --output json");
    assert_eq!(data(&b), recorded, "late watcher = show --output json");
    let ids: Vec<u32> = a.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, (1..=recorded.len() as u32).collect::<Vec<_>>(), "numbered 1, 2, 3…");
    assert!(
        recorded.iter().any(|e| e["kind"] == "output" && e["text"].as_str().unwrap().contains("step 5")),
        "hook lines are events"
    );
    assert_eq!(recorded.last().unwrap()["status"], "succeeded");

    // The ticket followed its deploy; a finished deploy replays from the start.
    let (_, t) = server.call("GET", &format!("/api/v1/tickets/{ticket}"), &dev, None);
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(t["deploys"], json!([id]));
    assert_eq!(data(&read(&mut SseReader::open(server.port, &events, &auth), usize::MAX)), recorded);

    // Rollback from the ticket: a rollback ticket, started at once (test asks no approval); when
    // it has gone through, the ticket it took back reads rolled_back.
    let (status, back) = server.call("POST", &format!("/api/v1/tickets/{ticket}/rollback"), &dev, Some(""));
    assert_eq!(status, 201, "{back}");
    assert_eq!(
        (back["ticket"]["kind"].as_str(), back["ticket"]["rollback_of"].as_u64()),
        (Some("rollback"), Some(ticket))
    );
    let rollback = back["deploy"].as_u64().expect("started at once");
    let ended =
        read(&mut SseReader::open(server.port, &format!("/api/v1/deploys/{rollback}/events"), &auth), usize::MAX);
    assert_eq!(ended.last().unwrap().data["status"], "succeeded", "{:?}", ended.last());
    assert_eq!(ended.last().unwrap().data["kind"], "rollback");
    let (_, t) = server.call("GET", &format!("/api/v1/tickets/{ticket}"), &dev, None);
    assert_eq!(t["state"], "rolled_back", "{t}");
    let (_, rb) = server.call("GET", &format!("/api/v1/tickets/{}", back["ticket"]["id"]), &dev, None);
    assert_eq!(rb["state"], "succeeded", "{rb}");

    // (a, prod) is only viewable: its events are, a deploy is not.
    let prod = json!({"project": "a", "env": "prod"}).to_string();
    assert_eq!(server.call("POST", "/api/v1/deploys", &dev, Some(&prod)).0, 403);
}

#[test]
fn sigterm_mid_deploy_then_restart_leaves_nothing_deploying() {
    let fleet = Fleet::new(1);
    let repo = repo(&fleet);
    project(&fleet, "a", &repo.path, r#""echo begin; sleep 30""#);
    add_user(&fleet, "dev", &[("a", "test", "deployer")]);
    let mut server = Server::start(&fleet);
    let (cookie, csrf) = server.login("dev", "dev-password");
    let dev = session(&cookie, &csrf);
    let (_, t) = server.call("POST", "/api/v1/tickets", &dev, Some(&ticket_body("a", "test")));
    let ticket = t["id"].as_u64().unwrap();
    let (status, started) = server.call("POST", &format!("/api/v1/tickets/{ticket}/deploy"), &dev, Some(""));
    assert_eq!(status, 202, "{started}");
    let id = started["deploy"].as_u64().unwrap();
    // Wait for the hook to be running on the host.
    let mut watch =
        SseReader::open(server.port, &format!("/api/v1/deploys/{id}/events"), &[("Cookie", cookie.as_str())]);
    while let Some(e) = watch.next_event() {
        if e.data["kind"] == "output" && e.data["text"].as_str().unwrap_or("").contains("begin") {
            break;
        }
    }
    assert!(server.stop().success(), "a clean stop");
    assert!(fleet.current_release("web-1", "a").is_none(), "the cancelled deploy never flipped");

    // Without the server the CLI reads the state itself: the truth, not `running`.
    let shown = fleet.slipctl(&["--output", "json", "show", &id.to_string()]).ok().json();
    assert_eq!(shown["status"], "cancelled", "{shown}");
    let server = Server::start(&fleet);
    let (cookie, csrf) = server.login("dev", "dev-password");
    let (_, t) = server.call("GET", &format!("/api/v1/tickets/{ticket}"), &session(&cookie, &csrf), None);
    assert_eq!(t["state"], "interrupted", "{t}");
}
