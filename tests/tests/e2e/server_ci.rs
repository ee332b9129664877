//! The server's CI side end to end: GitHub and GitLab webhooks (signatures, replays, rules →
//! tickets that deploy by themselves or wait for approval), notifications to real HTTP sinks
//! (signed, and a failing one retried and counted while the deploy succeeds), and `/metrics`
//! of the server and of an agent, read by a real Prometheus parser.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use slipway_tests::{Fleet, Repo, Server, SseReader, have_metrics_parser, http, parse_metrics, require, sample, sink};

fn hmac_hex(key: &str, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    hex::encode(ring::hmac::sign(&key, body.as_bytes()).as_ref())
}

/// Follow deploy `id`'s event stream to its outcome.
fn outcome(server: &Server, id: u64, auth: &str) -> Value {
    let mut events = SseReader::open(server.port, &format!("/api/v1/deploys/{id}/events"), &[("Authorization", auth)]);
    let mut last = Value::Null;
    while let Some(e) = events.next_event() {
        last = e.data;
    }
    assert_eq!(last["event"], "outcome", "{last}");
    last
}

/// Wait (at most 30 s) for `check` to hold.
fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn webhooks_notifications_and_metrics() {
    if !require("python3-prometheus-client", have_metrics_parser()) {
        return;
    }
    let mut fleet = Fleet::new(0);
    fleet.add_agent("web-1", false);
    // Port 0: the agent picks one and says which (no race with other tests for a free port).
    let toml = fleet.agents[0].bundle.join("agent.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, format!("metrics_listen = \"127.0.0.1:0\"\n{text}")).unwrap();
    fleet.agents[0].start();
    let log = fleet.agents[0].log();
    let agent_metrics: u16 = log
        .split("metrics on /metrics addr=127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the agent says where its metrics are:\n{log}"));
    fleet.add_agent("web-2", true);

    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "v1\n");
    repo.commit("v1");
    let (sink_port, received) = sink();
    let root = fleet.path().join("hosts");
    let file = fleet.path().join("a.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"a\"\nrepo = \"{}\"\n\
             [[webhook]]\nbranch = \"main\"\nenv = \"test\"\n\
             [[webhook]]\ntag = \"v*\"\nenv = \"prod\"\n\
             [[notify]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{sink_port}/ok\"\nsecret = \"sink-secret\"\nevents = [\"deploy_started\", \"deploy_succeeded\"]\n\
             [[notify]]\nkind = \"slack\"\nurl = \"http://127.0.0.1:{sink_port}/fail\"\nevents = [\"deploy_succeeded\"]\n\
             [target]\ndeploy_to = \"{root}/{{host}}/a\"\ncurrent = \"{root}/{{host}}/www/a\"\n\
             [env.test]\nhosts = [\"role=web\"]\n\
             [env.prod]\nhosts = [\"role=web\"]\napproval = {{ required = 1 }}\n",
            repo.path.display(),
            root = root.display()
        ),
    )
    .unwrap();
    fleet.slipctl(&["project", "apply", "-f", file.to_str().unwrap()]).ok();
    let secret = fleet.slipctl(&["--output", "json", "webhook", "secret", "a"]).ok().json()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = fleet.slipctl(&["--output", "json", "token", "create", "watch", "--admin"]).ok().json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let auth = format!("Bearer {token}");
    let server = Server::start(&fleet);

    // GitHub: a push to main with a good signature makes a ticket that deploys by itself.
    repo.write("index.html", "v2\n");
    let v2 = repo.commit("v2 from CI");
    let push = json!({"ref": "refs/heads/main", "after": v2, "head_commit": {"message": "v2 from CI"}}).to_string();
    let sig = format!("sha256={}", hmac_hex(&secret, &push));
    let gh = |sig: &str, delivery: &str, event: &str| {
        vec![
            ("Content-Type", "application/json".to_owned()),
            ("X-GitHub-Event", event.to_owned()),
            ("X-GitHub-Delivery", delivery.to_owned()),
            ("X-Hub-Signature-256", sig.to_owned()),
        ]
    };
    let hdrs = |v: &[(&'static str, String)]| v.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>();
    let call = |path: &str, headers: Vec<(&'static str, String)>, body: &str| {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, _, text) = http(server.port, "POST", path, &h, Some(body));
        (status, serde_json::from_str::<Value>(&text).unwrap_or(Value::Null))
    };
    let (status, made) = call("/hooks/a", hdrs(&gh(&sig, "d-1", "push")), &push);
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["env"], "test");
    assert_eq!(made["commit"], json!(v2));
    let deploy = made["deploy"].as_u64().expect("test needs no approval: it deployed");
    assert_eq!(outcome(&server, deploy, &auth)["status"], "succeeded");
    assert_eq!(std::fs::read_to_string(fleet.current("web-1", "a").join("index.html")).unwrap(), "v2\n");
    let ticket = made["ticket"].as_u64().unwrap();
    let (_, t) = server.call("GET", &format!("/api/v1/tickets/{ticket}"), &[("Authorization", &auth)], None);
    assert_eq!(t["requester"], "webhook:github");
    assert_eq!(t["state"], "succeeded", "{t}");

    // The same delivery again: the first ticket, nothing new.
    let (status, again) = call("/hooks/a", hdrs(&gh(&sig, "d-1", "push")), &push);
    assert_eq!((status, again["ticket"].as_u64()), (200, Some(ticket)), "{again}");
    assert_eq!(again["replayed"], true);
    // A bad signature, an unknown project, a branch no rule names.
    let (status, _) = call("/hooks/a", hdrs(&gh("sha256=00", "d-2", "push")), &push);
    assert_eq!(status, 401);
    assert_eq!(call("/hooks/nope", hdrs(&gh(&sig, "d-3", "push")), &push).0, 404);
    let feature = json!({"ref": "refs/heads/feature", "after": v2}).to_string();
    let (status, doc) =
        call("/hooks/a", hdrs(&gh(&format!("sha256={}", hmac_hex(&secret, &feature)), "d-4", "push")), &feature);
    assert_eq!(status, 202, "{doc}");
    assert!(doc["reason"].as_str().unwrap().contains("no [[webhook]] rule"), "{doc}");

    // GitLab: a tag matching v* makes a prod ticket that waits for its approval.
    repo.git(&["tag", "v2"]);
    let tag = json!({"ref": "refs/tags/v2", "checkout_sha": v2, "commits": []}).to_string();
    let gl = |token: &str| {
        vec![
            ("Content-Type", "application/json".to_owned()),
            ("X-Gitlab-Event", "Tag Push Hook".to_owned()),
            ("X-Gitlab-Token", token.to_owned()),
            ("X-Gitlab-Event-UUID", "g-1".to_owned()),
        ]
    };
    assert_eq!(call("/hooks/a", gl("wrong"), &tag).0, 401);
    let (status, prod) = call("/hooks/a", gl(&secret), &tag);
    assert_eq!(status, 201, "{prod}");
    assert_eq!((prod["env"].as_str(), prod["state"].as_str()), (Some("prod"), Some("pending")), "{prod}");
    assert!(prod.get("deploy").is_none(), "a ticket waiting for approval does not deploy");

    // Notifications: the good sink got signed deploy_started and deploy_succeeded; the failing
    // one was tried again and again and counted, and the deploy succeeded all the same.
    let mut seen = Vec::new();
    let mut fail_attempts = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(seen.iter().any(|e: &Value| e["event"] == "deploy_succeeded") && fail_attempts >= 4) {
        let left = deadline.saturating_duration_since(Instant::now());
        let (path, headers, body) = received.recv_timeout(left).expect("notifications arrive");
        if path.starts_with("/fail") {
            fail_attempts += 1;
            continue;
        }
        let expected = format!("sha256={}", hmac_hex("sink-secret", &body));
        assert_eq!(headers.get("x-slipway-signature"), Some(&expected), "signed with the sink's secret");
        seen.push(serde_json::from_str(&body).unwrap());
    }
    assert!(seen.iter().any(|e| e["event"] == "deploy_started" && e["detail"]["deploy"] == json!(deploy)), "{seen:?}");
    assert!(seen.iter().all(|e| e["project"] == "a"));

    // /metrics parses and counts what happened.
    let metrics = || parse_metrics(&http(server.port, "GET", "/metrics", &[], None).2);
    wait_for("the failed notification to be counted", || {
        sample(&metrics(), "slipway_notifications_failed_total", &[("kind", "slack")]) == Some(1.0)
    });
    wait_for("the agent probe", || sample(&metrics(), "slipway_agent_up", &[("agent", "web-1")]) == Some(1.0));
    let m = metrics();
    let ok = [("project", "a"), ("env", "test"), ("kind", "deploy"), ("outcome", "succeeded")];
    assert_eq!(sample(&m, "slipway_deploys_total", &ok), Some(1.0));
    assert_eq!(
        sample(&m, "slipway_hosts_on_release", &[("project", "a"), ("env", "test")]),
        Some(2.0),
        "both hosts on one release"
    );
    assert_eq!(sample(&m, "slipway_deploy_duration_seconds_count", &[("project", "a")]), Some(1.0));
    assert!(sample(&m, "slipway_stage_duration_seconds_count", &[("stage", "activate")]).unwrap() >= 2.0);
    assert!(sample(&m, "slipway_last_switch_skew_seconds", &[("env", "test")]).is_some());
    assert!(sample(&m, "slipway_agent_certificate_expiry_seconds", &[("agent", "web-2")]).unwrap() > 86_400.0 * 300.0);
    assert_eq!(sample(&m, "slipway_webhook_deliveries_total", &[("status", "401")]), Some(2.0));
    assert_eq!(sample(&m, "slipway_webhook_deliveries_total", &[("status", "201")]), Some(2.0));
    assert_eq!(sample(&m, "slipway_notifications_sent_total", &[("kind", "webhook")]), Some(2.0));

    // Admins manage users, grants and tokens over HTTP too; agents carry their last probe.
    let admin = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let (status, carol) =
        server.call("POST", "/api/v1/users", &admin, Some(r#"{"user":"carol","password":"carol-password"}"#));
    assert_eq!(status, 201, "{carol}");
    assert!(carol.get("password_hash").is_none(), "no hash leaves the server: {carol}");
    let (status, doc) = server.call(
        "POST",
        "/api/v1/users/carol/grants",
        &admin,
        Some(r#"{"project":"a","env":"test","role":"deployer","x":1}"#),
    );
    assert_eq!(status, 400, "{doc}");
    let (status, doc) = server.call(
        "POST",
        "/api/v1/users/carol/grants",
        &admin,
        Some(r#"{"project":"a","env":"test","role":"deployer"}"#),
    );
    assert_eq!((status, doc["grants"][0]["role"].as_str()), (200, Some("deployer")), "{doc}");
    let (cookie, csrf) = server.login("carol", "carol-password");
    let carol_h = [("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str())];
    assert_eq!(server.call("GET", "/api/v1/users", &carol_h, None).0, 403, "carol is no admin");
    assert_eq!(server.call("DELETE", "/api/v1/users/carol", &admin, None).0, 204);
    assert_eq!(server.call("GET", "/api/v1/tickets", &carol_h, None).0, 401, "her session ended with her");
    let (status, t) = server.call(
        "POST",
        "/api/v1/tokens",
        &admin,
        Some(r#"{"name":"ci2","scopes":[{"project":"a","env":"test","role":"viewer"}]}"#),
    );
    assert_eq!(status, 201, "{t}");
    let ci2 = format!("Bearer {}", t["token"].as_str().unwrap());
    assert_eq!(server.call("GET", "/api/v1/dashboard", &[("Authorization", ci2.as_str())], None).0, 200);
    assert_eq!(server.call("DELETE", &format!("/api/v1/tokens/{}", t["id"].as_str().unwrap()), &admin, None).0, 204);
    assert_eq!(
        server.call("GET", "/api/v1/dashboard", &[("Authorization", ci2.as_str())], None).0,
        401,
        "a removed token stops at once"
    );
    let (status, failed) = server.call("GET", "/api/v1/notifications/failed", &admin, None);
    assert_eq!((status, failed.as_array().map(Vec::len)), (200, Some(1)), "{failed}");
    assert_eq!((failed[0]["kind"].as_str(), failed[0]["event"].as_str()), (Some("slack"), Some("deploy_succeeded")));
    assert_eq!(failed[0]["attempts"], 4);
    assert!(failed[0]["error"].as_str().unwrap().contains("500"), "{failed}");
    let (_, agents) = server.call("GET", "/api/v1/agents", &admin, None);
    assert!(agents.as_array().unwrap().iter().all(|a| a["probe"]["reachable"] == true), "{agents}");

    // The agent's own metrics.
    let a = parse_metrics(&http(agent_metrics, "GET", "/metrics", &[], None).2);
    assert_eq!(sample(&a, "slipd_stages_total", &[("result", "ok")]), Some(1.0));
    assert_eq!(sample(&a, "slipd_activations_total", &[("result", "ok")]), Some(1.0));
    assert!(sample(&a, "slipd_received_bytes_total", &[]).unwrap() > 0.0);
    assert!(sample(&a, "slipd_disk_free_bytes", &[("project", "a"), ("env", "test")]).unwrap() > 0.0);
}
