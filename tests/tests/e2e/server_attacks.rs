//! `slipctl serve` against its own users and the open network (issue #20): a viewer, a
//! test-only deployer, an approver, a pusher and nobody at all try what an attacker would,
//! against the real server and agents. One test per finding (`f01`…`f18`, the issue's
//! numbers; the flood findings 2, 3 and 5 are in `server_load.rs`), and each failed on the code
//! before its fix: `SLIPWAY_TEST_BIN_DIR=<older build>` runs them against other binaries.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use slipway_tests::{
    Fleet, Repo, Server, SseReader, add_admin, add_user, bin, have_metrics_parser, http, http_from, parse_metrics,
    require, sample, sink,
};

const SECRET: &str = "TOPSECRET-9f2c";

fn hmac_hex(key: &str, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    hex::encode(ring::hmac::sign(&key, body.as_bytes()).as_ref())
}

fn apply(fleet: &Fleet, name: &str, text: &str) {
    let file = fleet.path().join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    fleet.slipctl(&["project", "apply", "-f", file.to_str().unwrap()]).ok();
}

/// `[target]` lines for project `name` under the fleet's host roots.
fn target(fleet: &Fleet, name: &str) -> String {
    let root = fleet.path().join("hosts");
    format!(
        "[target]\ndeploy_to = \"{root}/{{host}}/{name}\"\ncurrent = \"{root}/{{host}}/www/{name}\"\n",
        root = root.display()
    )
}

fn json_headers<'a>(cookie: &'a str, csrf: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![("Cookie", cookie), ("X-CSRF-Token", csrf), ("Content-Type", "application/json")]
}

fn token(fleet: &Fleet, name: &str, scope: &[&str]) -> String {
    let mut args = vec!["--output", "json", "token", "create", name];
    for s in scope {
        args.extend(["--scope", s]);
    }
    if scope.is_empty() {
        args.push("--admin");
    }
    fleet.slipctl(&args).ok().json()["token"].as_str().unwrap().to_owned()
}

/// Follow deploy `id`'s event stream to its outcome.
fn outcome(server: &Server, id: u64, auth: &str) -> Value {
    let mut events = SseReader::open(server.port, &format!("/api/v1/deploys/{id}/events"), &[("Authorization", auth)]);
    let mut last = Value::Null;
    while let Some(e) = events.next_event() {
        last = e.data;
    }
    last
}

/// `POST /api/v1/cli` as `auth` with `argv`, read to its end within `within`: (whether the
/// answer ended by itself, the frames).
fn cli(server: &Server, auth: &str, argv: &[&str], within: Duration) -> (bool, Vec<Value>) {
    let body = json!({"argv": argv}).to_string();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream.set_read_timeout(Some(within)).unwrap();
    write!(
        stream,
        "POST /api/v1/cli HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut got = Vec::new();
    let ended = stream.read_to_end(&mut got).is_ok();
    let text = String::from_utf8_lossy(&got).into_owned();
    // (Chunk sizes between the lines are numbers, not frames.)
    let frames = text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(Value::is_object).collect();
    (ended, frames)
}

fn out_text(frames: &[Value]) -> String {
    frames.iter().filter_map(|f| f["out"].as_str().or(f["err"].as_str())).collect::<Vec<_>>().join("\n")
}

/// One agent (web-1), a repository with `v1` (tag v1), project `a` with env `test` (no
/// approval) and `prod` (`prod` lines added), `extra` at its top, and the server.
struct Setup {
    fleet: Fleet,
    repo: Repo,
    server: Server,
    /// An admin token's `Authorization` value.
    admin: String,
}

impl Setup {
    fn new(extra: &str, prod: &str, users: impl FnOnce(&Fleet)) -> Setup {
        Setup::with_args(extra, prod, users, &[])
    }

    fn with_args(extra: &str, prod: &str, users: impl FnOnce(&Fleet), args: &[&str]) -> Setup {
        let fleet = Fleet::new(1);
        let repo = Repo::new(fleet.path().join("repo"));
        repo.write("index.html", "v1\n");
        repo.commit("v1");
        repo.git(&["tag", "v1"]);
        apply(
            &fleet,
            "a",
            &format!(
                "name = \"a\"\nrepo = \"{}\"\n{extra}\n{}[env.test]\nhosts = [\"role=web\"]\n\
                 [env.prod]\nhosts = [\"role=web\"]\n{prod}\n",
                repo.path.display(),
                target(&fleet, "a")
            ),
        );
        users(&fleet);
        let admin = format!("Bearer {}", token(&fleet, "root", &[]));
        let server = Server::start_with(&fleet.home, &bin("slipctl"), args);
        Setup { fleet, repo, server, admin }
    }

    fn login(&self, user: &str) -> (String, String) {
        self.server.login(user, &format!("{user}-password"))
    }

    fn call(&self, method: &str, path: &str, who: &(String, String), body: Option<&str>) -> (u16, Value) {
        self.server.call(method, path, &json_headers(&who.0, &who.1), body)
    }

    fn webhook_secret(&self) -> String {
        self.fleet.slipctl(&["--output", "json", "webhook", "secret", "a"]).ok().json()["secret"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A GitHub push delivery signed with `secret`: (status, answer).
    fn github(&self, secret: &str, body: &str, delivery: &str) -> (u16, Value) {
        let sig = format!("sha256={}", hmac_hex(secret, body));
        let headers = [
            ("Content-Type", "application/json"),
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", delivery),
            ("X-Hub-Signature-256", sig.as_str()),
        ];
        let (status, _, text) = http(self.server.port, "POST", "/hooks/a", &headers, Some(body));
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

fn push_body(branch_or_tag: &str, commit: &str, message: &str, who: &str) -> String {
    json!({"ref": branch_or_tag, "after": commit, "head_commit": {"message": message}, "sender": {"login": who}})
        .to_string()
}

#[test]
fn f01_a_viewer_lists_only_their_projects_and_no_message_shows_credentials() {
    let s = Setup::new("", "", |fleet| add_user(fleet, "viewer", &[("a", "test", "viewer")]));
    let b_url = format!("https://ci:{SECRET}@127.0.0.1:9/b.git");
    apply(
        &s.fleet,
        "b",
        &format!("name = \"b\"\nrepo = \"{b_url}\"\n{}[env.prod]\nhosts = [\"web-1\"]\n", target(&s.fleet, "b")),
    );
    let viewer = format!("Bearer {}", token(&s.fleet, "v", &["a:test:viewer"]));

    // The viewer's `project list` through the server: their project and env, no file paths.
    let (_, frames) = cli(&s.server, &viewer, &["--output", "json", "project", "list"], Duration::from_secs(30));
    let listed: Value = serde_json::from_str(&out_text(&frames)).unwrap_or(Value::Null);
    assert_eq!(
        listed,
        json!([{"name": "a", "repo": s.repo.path.display().to_string(), "envs": ["test"]}]),
        "{frames:?}"
    );
    // The admin sees b, without its password.
    let all = s.fleet.slipctl(&["project", "list"]).ok().stdout;
    assert!(all.contains("https://***@127.0.0.1:9/b.git") && !all.contains(SECRET), "{all}");
    // The fetch of b fails: git's error echoes its command line, URL and all.
    let failed = s.fleet.slipctl(&["--output", "jsonl", "deploy", "b", "prod"]);
    assert_ne!(failed.code, 0);
    let seen = format!("{}{}", failed.stdout, failed.stderr);
    assert!(!seen.contains(SECRET), "the deploy's output shows the repo's password:\n{seen}");
    assert!(seen.contains("fetching https://***@127.0.0.1:9/b.git"), "{seen}");
    let (_, checked) = s.server.call(
        "POST",
        "/api/v1/projects/b/envs/prod/check",
        &[("Authorization", &s.admin), ("Content-Type", "application/json")],
        Some("{}"),
    );
    assert!(checked.to_string().contains("127.0.0.1:9") && !checked.to_string().contains(SECRET), "{checked}");
}

#[test]
fn f04_a_project_name_in_a_webhook_url_forges_no_metric() {
    if !require("python3-prometheus-client", have_metrics_parser()) {
        return;
    }
    let s = Setup::new("", "", |_| {});
    let forged = "/hooks/x%22%7D%201%0Aslipway_agent_up%7Bagent%3D%22forged%22%7D%201%0Aslipway_y%7Bz%3D%22";
    let gh = [("X-GitHub-Event", "push"), ("X-Hub-Signature-256", "sha256=00")];
    assert_eq!(http(s.server.port, "POST", forged, &gh, Some("{}")).0, 404);
    for i in 0..20 {
        assert_eq!(http(s.server.port, "POST", &format!("/hooks/random-{i}"), &gh, Some("{}")).0, 404);
    }
    let text = http(s.server.port, "GET", "/metrics", &[], None).2;
    let samples = parse_metrics(&text);
    assert!(samples.iter().all(|(_, labels, _)| labels.get("agent").is_none_or(|a| a != "forged")), "{text}");
    assert!(!text.contains("random-"), "every made-up project got its own series");
    let unknown = sample(&samples, "slipway_webhook_deliveries_total", &[("project", "_unknown"), ("status", "404")]);
    assert_eq!(unknown, Some(21.0), "{text}");
}

#[test]
fn f06_a_replayed_or_late_push_does_not_move_an_env_back() {
    let rules = "[[webhook]]\nbranch = \"main\"\nenv = \"test\"\n";
    let s = Setup::new(rules, "", |_| {});
    let secret = s.webhook_secret();
    let c1 = s.repo.git(&["rev-parse", "HEAD"]).trim().to_owned();
    let served = || std::fs::read_to_string(s.fleet.current("web-1", "a").join("index.html")).unwrap();
    let first = push_body("refs/heads/main", &c1, "v1", "carol");
    let (status, made) = s.github(&secret, &first, "d-1");
    assert_eq!(status, 201, "{made}");
    assert_eq!(outcome(&s.server, made["deploy"].as_u64().unwrap(), &s.admin)["status"], "succeeded");
    s.repo.write("index.html", "v2\n");
    let c2 = s.repo.commit("v2");
    let (status, made) = s.github(&secret, &push_body("refs/heads/main", &c2, "v2", "carol"), "d-2");
    assert_eq!(status, 201, "{made}");
    assert_eq!(outcome(&s.server, made["deploy"].as_u64().unwrap(), &s.admin)["status"], "succeeded");
    assert_eq!(served(), "v2\n");

    // A captured push sent again under a new delivery id: the same signed body, used once.
    let (status, replay) = s.github(&secret, &first, "d-forged-3");
    assert_eq!((status, replay["replayed"].as_bool()), (200, Some(true)), "{replay}");
    assert_eq!(served(), "v2\n", "the replay moved test back");
    // A genuine but late push of the older commit: a ticket, and no deploy moving test back.
    let (status, late) = s.github(&secret, &push_body("refs/heads/main", &c1, "v1 (late)", "carol"), "d-4");
    assert_eq!(status, 201, "{late}");
    assert!(late.get("deploy").is_none(), "an older commit deployed by itself: {late}");
    assert!(late["not_deployed"].as_str().unwrap().contains("older than what test runs"), "{late}");
    assert_eq!(served(), "v2\n");
}

#[test]
fn f07_who_pushed_a_tag_cannot_approve_its_ticket() {
    let rules = "[[webhook]]\ntag = \"v*\"\nenv = \"prod\"\n";
    let s = Setup::new(rules, "approval = { required = 1 }", |fleet| {
        add_user(fleet, "alice", &[("a", "prod", "approver")]);
        add_user(fleet, "bob", &[("a", "prod", "approver")]);
    });
    let secret = s.webhook_secret();
    let c1 = s.repo.git(&["rev-parse", "HEAD"]).trim().to_owned();
    let (status, prod) = s.github(&secret, &push_body("refs/tags/v1", &c1, "v1", "alice"), "d-1");
    assert_eq!((status, prod["state"].as_str()), (201, Some("pending")), "{prod}");
    let id = prod["ticket"].as_u64().unwrap();
    let (_, t) = s.server.call("GET", &format!("/api/v1/tickets/{id}"), &[("Authorization", &s.admin)], None);
    assert_eq!((t["pushed_by"].as_str(), t["pusher_user"].as_str()), (Some("github:alice"), Some("alice")), "{t}");
    let approve = format!("/api/v1/tickets/{id}/approve");
    let (status, doc) = s.call("POST", &approve, &s.login("alice"), Some(r#"{"comment":"mine"}"#));
    assert_eq!(status, 403, "the pusher approved their own tag: {doc}");
    let (status, doc) = s.call("POST", &approve, &s.login("bob"), Some(r#"{"comment":"ok"}"#));
    assert_eq!((status, doc["state"].as_str()), (200, Some("approved")), "{doc}");
}

#[test]
fn f08_actions_carry_their_real_caller_and_approvals_count_people() {
    let s = Setup::new("", "approval = { required = 2 }", |fleet| {
        add_admin(fleet, "alice");
        add_user(fleet, "dev", &[("a", "test", "deployer"), ("a", "prod", "deployer")]);
        add_user(fleet, "bob", &[("a", "prod", "approver")]);
    });
    let alice = s.login("alice");
    let make_token = |name: &str, env: &str, role: &str| -> String {
        let body = json!({"name": name, "scopes": [{"project": "a", "env": env, "role": role}]}).to_string();
        let (status, doc) = s.call("POST", "/api/v1/tokens", &alice, Some(&body));
        assert_eq!(status, 201, "{doc}");
        format!("Bearer {}", doc["token"].as_str().unwrap())
    };
    let ci = make_token("ci", "test", "deployer");

    // Through the CLI-over-HTTP by a token: recorded as the token, not the server's OS user.
    let (_, frames) = cli(&s.server, &ci, &["deploy", "a", "test"], Duration::from_secs(60));
    assert!(frames.iter().any(|f| f["exit"] == 0), "{frames:?}");
    let (_, deploys) = s.call("GET", "/api/v1/deploys?project=a", &alice, None);
    assert_eq!(deploys[0]["user"], "token:ci", "{}", deploys[0]);
    // The socket's operator says who they are (SLIPWAY_USER); the record names that person.
    s.fleet.slipctl_env(&["deploy", "a", "test"], &[("SLIPWAY_USER", "alice")]).ok();
    let (_, deploys) = s.call("GET", "/api/v1/deploys?project=a", &alice, None);
    assert_eq!(deploys[0]["user"], "alice", "{}", deploys[0]);
    let refused = s.fleet.slipctl_env(&["deploy", "a", "test"], &[("SLIPWAY_USER", "mallory")]);
    assert_eq!(refused.code, 2, "an unknown declared user: {}", refused.stderr);

    // Four eyes are two people: alice's session and alice's token are one approver.
    let body = json!({"project": "a", "env": "prod", "ref": "v1", "title": "ship"}).to_string();
    let (_, t) = s.call("POST", "/api/v1/tickets", &s.login("dev"), Some(&body));
    let approve = format!("/api/v1/tickets/{}/approve", t["id"]);
    assert_eq!(s.call("POST", &approve, &alice, Some("{}")).0, 200);
    let alice_token = make_token("alice-approves", "prod", "approver");
    let headers = [("Authorization", alice_token.as_str()), ("Content-Type", "application/json")];
    let (status, doc) = s.server.call("POST", &approve, &headers, Some("{}"));
    assert_eq!(status, 409, "alice's token counted as a second approver: {doc}");
    let (status, doc) = s.call("POST", &approve, &s.login("bob"), Some("{}"));
    assert_eq!((status, doc["state"].as_str()), (200, Some("approved")), "{doc}");

    // An admin's own ticket, approved through the socket as `root`: refused unless the operator
    // names themselves, and then refused as theirs.
    let (_, t) = s.call("POST", "/api/v1/tickets", &alice, Some(&body));
    let mine = t["id"].as_u64().unwrap().to_string();
    let as_root = s.fleet.slipctl(&["ticket", "approve", &mine]);
    assert_eq!(as_root.code, 2, "approved through the socket by nobody in particular: {}", as_root.stdout);
    assert!(as_root.stderr.contains("SLIPWAY_USER"), "{}", as_root.stderr);
    let as_alice = s.fleet.slipctl_env(&["ticket", "approve", &mine], &[("SLIPWAY_USER", "alice")]);
    assert_eq!(as_alice.code, 2, "alice approved her own ticket: {}", as_alice.stdout);
    assert!(as_alice.stderr.contains("alice made ticket"), "{}", as_alice.stderr);
}

/// Read `reader`'s events on a thread; `true` when the stream ends within `within`.
fn ends_within(mut reader: SseReader, within: Duration) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        while reader.next_event().is_some() {}
        let _ = tx.send(());
    });
    rx.recv_timeout(within).is_ok()
}

#[test]
fn f09_an_event_stream_ends_when_its_watcher_may_no_longer_see() {
    let gate_dir = tempfile::tempdir().unwrap();
    slipway_tests::traversable(gate_dir.path());
    let gate = gate_dir.path().join("go");
    let hook = format!(
        "{}pre_release = [\"while [ ! -e {} ]; do sleep 0.05; done\"]\n",
        slipway_tests::hook_user_line(),
        gate.display()
    );
    let s = Setup::new("", "", |fleet| add_user(fleet, "viewer", &[("a", "test", "viewer")]));
    // (The hook goes into [target]: apply the project again with it.)
    apply(
        &s.fleet,
        "a",
        &format!(
            "name = \"a\"\nrepo = \"{}\"\n{}{hook}[env.test]\nhosts = [\"role=web\"]\n",
            s.repo.path.display(),
            target(&s.fleet, "a")
        ),
    );
    let watcher = token(&s.fleet, "watcher", &["a:test:viewer"]);
    let deploy = json!({"project": "a", "env": "test"}).to_string();
    let headers = [("Authorization", s.admin.as_str()), ("Content-Type", "application/json")];
    let (status, started) = s.server.call("POST", "/api/v1/deploys", &headers, Some(&deploy));
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_u64().unwrap();
    let events = format!("/api/v1/deploys/{id}/events");
    let (cookie, _) = s.login("viewer");
    let mut by_viewer = SseReader::open(s.server.port, &events, &[("Cookie", &cookie)]);
    assert_eq!(by_viewer.status, 200);
    assert!(by_viewer.next_event().is_some());
    let by_token = SseReader::open(s.server.port, &events, &[("Authorization", &format!("Bearer {watcher}"))]);
    assert_eq!(by_token.status, 200);
    s.fleet.slipctl(&["user", "revoke", "viewer", "a", "test", "viewer"]).ok();
    assert!(ends_within(by_viewer, Duration::from_secs(10)), "the viewer's stream went on after the revoke");
    let token_id = watcher.strip_prefix("slw_").unwrap().split('_').next().unwrap();
    s.fleet.slipctl(&["token", "rm", token_id]).ok();
    assert!(ends_within(by_token, Duration::from_secs(10)), "the token's stream went on after its removal");
    std::fs::write(&gate, "").unwrap();
    assert_eq!(outcome(&s.server, id, &s.admin)["status"], "succeeded");
}

#[test]
fn f10_a_page_on_another_site_cannot_log_its_visitor_in() {
    let s = Setup::new("", "", |fleet| add_user(fleet, "dev", &[("a", "test", "deployer")]));
    let cross = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Origin", "https://evil.example"),
        ("Sec-Fetch-Site", "cross-site"),
    ];
    let (status, head, _) = http(s.server.port, "POST", "/login", &cross, Some("user=dev&password=dev-password"));
    assert_eq!(status, 403, "{head}");
    assert!(!head.to_lowercase().contains("set-cookie"), "{head}");
    let body = json!({"user": "dev", "password": "dev-password"}).to_string();
    let cross_api = [("Content-Type", "application/json"), ("Origin", "https://evil.example")];
    assert_eq!(http(s.server.port, "POST", "/api/v1/session", &cross_api, Some(&body)).0, 403);
    // The server's own login page still works.
    let own = [("Content-Type", "application/x-www-form-urlencoded"), ("Sec-Fetch-Site", "same-origin")];
    assert_eq!(http(s.server.port, "POST", "/login", &own, Some("user=dev&password=dev-password")).0, 303);
}

#[test]
fn f11_behind_a_tls_proxy_cookies_are_secure_and_pages_carry_security_headers() {
    let s = Setup::with_args(
        "",
        "",
        |fleet| add_user(fleet, "dev", &[("a", "test", "deployer")]),
        &["--public-url", "https://ops.example"],
    );
    let body = json!({"user": "dev", "password": "dev-password"}).to_string();
    let (status, head, _) =
        http(s.server.port, "POST", "/api/v1/session", &[("Content-Type", "application/json")], Some(&body));
    assert_eq!(status, 200);
    let head = head.to_lowercase();
    let cookie = head.lines().find(|l| l.starts_with("set-cookie:")).unwrap();
    assert!(cookie.contains("; secure"), "{cookie}");
    let (_, page, _) = http(s.server.port, "GET", "/login", &[], None);
    for h in [&head, &page.to_lowercase()] {
        for want in [
            "strict-transport-security: max-age=",
            "content-security-policy: default-src 'none'; script-src 'self'",
            "frame-ancestors 'none'",
            "x-content-type-options: nosniff",
            "x-frame-options: deny",
            "referrer-policy: same-origin",
        ] {
            assert!(h.contains(want), "no {want}\n{h}");
        }
    }
}

#[test]
fn f12_a_viewer_sees_neither_other_hosts_nor_other_envs_ids() {
    let s = Setup::new("", "", |fleet| add_user(fleet, "viewer", &[("a", "test", "viewer")]));
    let fleet = &s.fleet;
    let bundle = fleet.path().join("db-1");
    fleet
        .slipctl(&[
            "agent",
            "add",
            "db-1",
            "--addr",
            "127.0.0.1:9",
            "--label",
            "role=db",
            "--out",
            bundle.to_str().unwrap(),
        ])
        .ok();
    apply(
        fleet,
        "c",
        &format!(
            "name = \"c\"\nrepo = \"{}\"\n{}[env.prod]\nhosts = [\"web-1\", \"db-1\"]\n",
            s.repo.path.display(),
            target(fleet, "c")
        ),
    );
    let (cookie, _) = s.server.login("viewer", "viewer-password");
    let viewer = [("Cookie", cookie.as_str())];
    let (_, agents) = s.server.call("GET", "/api/v1/agents", &viewer, None);
    let names: Vec<&str> = agents.as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["web-1"], "{agents}");
    let (_, _, page) = http(s.server.port, "GET", "/agents", &viewer, None);
    assert!(page.contains("web-1") && !page.contains("db-1"), "the agents page lists db-1 to a viewer of a/test");
    // A deploy and a ticket of c/prod are unknown to the viewer, not a 403 naming c/prod.
    let c_deploy = fleet.slipctl(&["--output", "json", "deploy", "c", "prod", "--hosts", "web-1"]).json()["id"].clone();
    assert!(c_deploy.is_u64(), "c/prod deployed to web-1");
    let c_ticket =
        fleet.slipctl(&["--output", "json", "ticket", "create", "c", "prod", "--title", "t"]).ok().json()["id"].clone();
    for path in [
        format!("/api/v1/deploys/{c_deploy}"),
        format!("/api/v1/deploys/{c_deploy}/events"),
        format!("/api/v1/tickets/{c_ticket}"),
        format!("/tickets/{c_ticket}"),
    ] {
        let (status, _, text) = http(s.server.port, "GET", &path, &viewer, None);
        assert_eq!(status, 404, "{path}: {text}");
        assert!(!text.contains("prod"), "{path}: {text}");
    }
    let viewer_token = format!("Bearer {}", token(fleet, "v", &["a:test:viewer"]));
    let (_, frames) = cli(&s.server, &viewer_token, &["show", &c_deploy.to_string()], Duration::from_secs(30));
    assert!(!format!("{frames:?}").contains("prod") && frames.iter().all(|f| f["exit"] != 0), "{frames:?}");
}

#[test]
fn f13_a_ticket_title_cannot_ping_everyone_or_disguise_a_link_in_chat() {
    let (sink_port, received) = sink();
    let notify = format!(
        "[[notify]]\nkind = \"slack\"\nurl = \"http://127.0.0.1:{sink_port}/slack\"\nevents = [\"ticket_created\"]\n"
    );
    let s = Setup::new(&notify, "", |fleet| add_user(fleet, "dev", &[("a", "test", "deployer")]));
    let title = "<!channel> urgent, see <https://evil.example|the release notes>";
    let body = json!({"project": "a", "env": "test", "title": title}).to_string();
    assert_eq!(s.call("POST", "/api/v1/tickets", &s.login("dev"), Some(&body)).0, 201);
    let (_, _, said) = received.recv_timeout(Duration::from_secs(30)).expect("the ticket reaches Slack");
    let text = serde_json::from_str::<Value>(&said).unwrap()["text"].as_str().unwrap().to_owned();
    assert!(text.contains("&lt;!channel&gt;") && !text.contains("<!channel>"), "{text}");
    assert!(!text.contains("<https://evil.example|"), "{text}");
}

#[test]
fn f14_control_characters_in_titles_and_comments_never_reach_a_terminal() {
    let s = Setup::new("", "approval = { required = 1 }", |fleet| {
        add_user(fleet, "dev", &[("a", "prod", "deployer")]);
        add_user(fleet, "bob", &[("a", "prod", "approver")]);
    });
    let title = "fix \u{1b}]0;owned\u{7}\u{1b}[2J\rtitle";
    let body =
        json!({"project": "a", "env": "prod", "ref": "v1", "title": title, "description": "x\u{1b}[31my"}).to_string();
    let (_, t) = s.call("POST", "/api/v1/tickets", &s.login("dev"), Some(&body));
    let approve = format!("/api/v1/tickets/{}/reject", t["id"]);
    s.call("POST", &approve, &s.login("bob"), Some(&json!({"comment": "no\u{1b}[8m"}).to_string()));
    let listed = s.fleet.slipctl(&["ticket", "list"]).ok().stdout;
    let shown = s.fleet.slipctl(&["ticket", "show", &t["id"].to_string()]).ok().stdout;
    for text in [&listed, &shown] {
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        assert!(text.contains("fix"), "{text}");
    }
}

#[test]
fn f15_titles_descriptions_and_comments_have_server_side_limits() {
    let s = Setup::new("", "approval = { required = 1 }", |fleet| {
        add_user(fleet, "dev", &[("a", "prod", "deployer")]);
        add_user(fleet, "bob", &[("a", "prod", "approver")]);
    });
    let dev = s.login("dev");
    let huge = json!({"project": "a", "env": "prod", "title": "x".repeat(900 * 1024)}).to_string();
    let (status, doc) = s.call("POST", "/api/v1/tickets", &dev, Some(&huge));
    assert_eq!(status, 400, "a 900 KiB title was kept");
    assert!(doc["error"].as_str().unwrap().contains("title"), "{doc}");
    let long = json!({"project": "a", "env": "prod", "title": "t", "description": "d".repeat(20_000)}).to_string();
    assert_eq!(s.call("POST", "/api/v1/tickets", &dev, Some(&long)).0, 400);
    let ok = json!({"project": "a", "env": "prod", "title": "t"}).to_string();
    let (_, t) = s.call("POST", "/api/v1/tickets", &dev, Some(&ok));
    let comment = json!({"comment": "c".repeat(5_000)}).to_string();
    let (status, doc) =
        s.call("POST", &format!("/api/v1/tickets/{}/approve", t["id"]), &s.login("bob"), Some(&comment));
    assert_eq!(status, 400, "{doc}");
}

#[test]
fn f16_a_cli_answer_ends_after_its_exit_status() {
    let s = Setup::new("", "", |_| {});
    let started = Instant::now();
    let (ended, frames) = cli(&s.server, &s.admin, &["history"], Duration::from_secs(10));
    assert!(ended, "the answer never ended after its exit frame ({:?}): {frames:?}", started.elapsed());
    assert_eq!(frames.last().map(|f| f["exit"].clone()), Some(json!(0)), "{frames:?}");
}

#[test]
fn f17_users_change_their_password_and_admins_reset_one() {
    let s = Setup::new("", "", |fleet| {
        add_user(fleet, "dev", &[("a", "test", "deployer")]);
        add_admin(fleet, "boss");
    });
    let dev = s.login("dev");
    let (other, _) = s.login("dev");
    let change = json!({"current": "dev-password", "new": "dev-new-password"}).to_string();
    let wrong = json!({"current": "not-it", "new": "whatever-else"}).to_string();
    assert_eq!(s.call("POST", "/api/v1/me/password", &dev, Some(&wrong)).0, 403);
    let (status, doc) = s.call("POST", "/api/v1/me/password", &dev, Some(&change));
    assert_eq!(status, 204, "{doc}");
    assert_eq!(s.server.call("GET", "/api/v1/me", &[("Cookie", &other)], None).0, 401, "the other session ended");
    assert_eq!(s.server.call("GET", "/api/v1/me", &[("Cookie", &dev.0)], None).0, 200, "this one goes on");
    s.server.login("dev", "dev-new-password");
    let reset = s.fleet.slipctl(&["--output", "json", "user", "passwd", "dev"]).ok().json();
    let new = reset["password"].as_str().unwrap().to_owned();
    assert_eq!(s.server.call("GET", "/api/v1/me", &[("Cookie", &dev.0)], None).0, 401, "a reset ends the sessions");
    s.server.login("dev", &new);
    let headers = [("Authorization", s.admin.as_str()), ("Content-Type", "application/json")];
    let (status, doc) = s.server.call("POST", "/api/v1/users/dev/password", &headers, Some("{}"));
    assert_eq!(status, 200, "{doc}");
    let (cookie, csrf) = s.server.login("dev", doc["password"].as_str().unwrap());

    // The same on the pages: the account form, and an admin's reset button.
    let form = [("Cookie", cookie.as_str()), ("Content-Type", "application/x-www-form-urlencoded")];
    let body = format!("csrf_token={csrf}&current={}&new=from-the-page", doc["password"].as_str().unwrap());
    let (status, _, page) = http(s.server.port, "POST", "/account/password", &form, Some(&body));
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Password changed"), "{page}");
    s.server.login("dev", "from-the-page");
    let (cookie, csrf) = s.server.login("boss", "boss-password");
    let form = [("Cookie", cookie.as_str()), ("Content-Type", "application/x-www-form-urlencoded")];
    let (status, _, page) =
        http(s.server.port, "POST", "/users/password", &form, Some(&format!("csrf_token={csrf}&user=dev")));
    assert_eq!(status, 200, "{page}");
    let shown = page
        .split("<code class=\"password\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .expect("the new password, once");
    s.server.login("dev", shown);
}

#[test]
fn f18_the_language_switch_never_returns_to_another_site() {
    let s = Setup::new("", "", |_| {});
    for referer in ["https://ops.example/\t/evil.example/x", "/\t/evil.example", "https://ops.example/\n/evil.example"]
    {
        let (status, head, _) = http(s.server.port, "GET", "/lang/zh", &[("Referer", referer)], None);
        if status == 400 {
            continue; // (a newline is no header value: the server refuses the request itself)
        }
        assert_eq!(status, 303, "{head}");
        assert!(head.lines().any(|l| l.eq_ignore_ascii_case("location: /")), "{referer:?}: {head}");
    }
}

#[test]
fn f05_failed_logins_from_one_address_are_throttled_and_counted() {
    if !require("python3-prometheus-client", have_metrics_parser()) {
        return;
    }
    let s = Setup::new("", "", |fleet| add_user(fleet, "dev", &[("a", "test", "deployer")]));
    let flooder = Ipv4Addr::new(127, 0, 0, 77);
    let wrong = json!({"user": "dev", "password": "guess"}).to_string();
    let mut throttled = 0;
    for _ in 0..15 {
        let (status, head, _) = http_from(
            flooder,
            s.server.port,
            "POST",
            "/api/v1/session",
            &[("Content-Type", "application/json")],
            Some(&wrong),
        );
        if status == 429 {
            assert!(head.to_lowercase().contains("retry-after:"), "{head}");
            throttled += 1;
        } else {
            assert_eq!(status, 401);
        }
    }
    assert!(throttled >= 4, "{throttled} of 15 wrong logins from one address were throttled");
    // The real user, from their own address, is not locked out.
    s.login("dev");
    let m = parse_metrics(&http(s.server.port, "GET", "/metrics", &[], None).2);
    assert!(sample(&m, "slipway_login_failures_total", &[("reason", "password")]).unwrap_or(0.0) >= 5.0);
    assert!(sample(&m, "slipway_login_failures_total", &[("reason", "throttled")]).unwrap_or(0.0) >= 4.0);
}
