//! Windows, freezes and scheduled tickets (issue #25 items 2 and 3): deploys refused outside a
//! window or in a freeze with the window, the reason and who may override; an admin's override
//! recorded; rollbacks never held; a webhook ticket that arrives in a freeze waits, listed, and
//! runs after it; a scheduled ticket starts on time after a server restart; an expired schedule
//! does not start; cancelling a schedule is recorded.

use serde_json::{Value, json};
use slipway_tests::{Fleet, Repo, Server, http, wait_for};

/// A window that is closed now: half an hour, twelve hours away.
fn closed_window() -> String {
    let hour = (slipway_common::time::unix_now() / 3600 + 12) % 24;
    format!("* {hour:02}:00-{hour:02}:30 UTC")
}

fn project(fleet: &Fleet, repo: &Repo, windows: &str, extra: &str) {
    let root = fleet.path().join("hosts");
    let file = fleet.path().join("site.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"site\"\nrepo = \"{}\"\n{extra}\
             [target]\ndeploy_to = \"{root}/{{host}}/site\"\ncurrent = \"{root}/{{host}}/www/site\"\n\
             [env.test]\nhosts = [\"role=web\"]\nwindows = [{windows}]\n",
            repo.path.display(),
            root = root.display()
        ),
    )
    .unwrap();
    fleet.slipctl(&["project", "apply", "-f", file.to_str().unwrap()]).ok();
}

#[test]
fn windows_and_freezes_hold_deploys_an_admin_overrides_with_a_reason_and_rollbacks_go_on() {
    let fleet = Fleet::new(1);
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "v1\n");
    repo.commit("v1");
    let window = closed_window();
    project(&fleet, &repo, &format!("\"{window}\""), "");

    // Outside every window: refused, naming the window, when it opens, and the override.
    let refused = fleet.slipctl(&["deploy", "site", "test"]).code(2);
    assert!(
        refused.stderr.contains(&window) && refused.stderr.contains("the next window opens at"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("an admin deploys anyway") && refused.stderr.contains("--override-reason"),
        "{}",
        refused.stderr
    );
    assert!(fleet.current_release("web-1", "site").is_none(), "nothing moved");
    // An override with a reason goes through, and says so in the record.
    let forced = fleet
        .slipctl(&["--output", "json", "deploy", "site", "test", "--override-reason", "hotfix INC-42"])
        .ok()
        .json();
    assert_eq!(forced["overridden"]["reason"], "hotfix INC-42");
    assert!(forced["overridden"]["held"].as_str().unwrap().contains(&window));
    let shown = fleet.slipctl(&["show", &forced["id"].to_string()]).ok().stdout;
    assert!(shown.contains("overridden by") && shown.contains("hotfix INC-42"), "{shown}");
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    fleet.slipctl(&["deploy", "site", "test", "--override-reason", "second fix"]).ok();
    // A rollback is never held.
    fleet.slipctl(&["rollback", "site", "test"]).ok();
    assert_eq!(std::fs::read_to_string(fleet.current("web-1", "site").join("index.html")).unwrap(), "v1\n");

    // Always open, but frozen: refused with the reason, who froze it and until when.
    project(&fleet, &repo, "\"* 00:00-24:00 UTC\"", "");
    let frozen = fleet
        .slipctl(&[
            "--output",
            "json",
            "freeze",
            "create",
            "site",
            "test",
            "--until",
            "2h",
            "--reason",
            "Double 11 sale",
        ])
        .ok()
        .json();
    let id = frozen["id"].to_string();
    let refused = fleet.slipctl(&["deploy", "site", "test"]).code(2);
    assert!(refused.stderr.contains("frozen until") && refused.stderr.contains("Double 11 sale"), "{}", refused.stderr);
    let listed = fleet.slipctl(&["--output", "json", "freeze", "list"]).ok().json();
    assert_eq!(listed[0]["reason"], "Double 11 sale");
    fleet.slipctl(&["freeze", "rm", &id]).ok();
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    assert_eq!(std::fs::read_to_string(fleet.current("web-1", "site").join("index.html")).unwrap(), "v2\n");

    // Bad input: an end in the past, an unknown env, a window that is not one.
    let past =
        fleet.slipctl(&["freeze", "create", "site", "test", "--until", "2020-01-01 00:00", "--reason", "x"]).code(2);
    assert!(past.stderr.contains("must end after it starts"), "{}", past.stderr);
    fleet.slipctl(&["freeze", "create", "site", "nope", "--until", "1h", "--reason", "x"]).code(2);
    let file = fleet.path().join("bad.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"bad\"\nrepo = \"{}\"\n[target]\ndeploy_to = \"/srv/bad\"\n[env.test]\nhosts = [\"web-1\"]\nwindows = [\"Mon-Fri 10:00-16:00 Mars/Olympus\"]\n",
            repo.path.display()
        ),
    )
    .unwrap();
    let bad = fleet.slipctl(&["project", "apply", "-f", file.to_str().unwrap()]).code(2);
    assert!(bad.stderr.contains("unknown time zone 'Mars/Olympus'"), "{}", bad.stderr);
}

fn hmac_hex(key: &str, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    hex::encode(ring::hmac::sign(&key, body.as_bytes()).as_ref())
}

#[test]
fn a_webhook_ticket_waits_out_a_freeze_and_a_scheduled_ticket_starts_on_time_after_a_restart() {
    let fleet = Fleet::new(1);
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "v1\n");
    repo.commit("v1");
    project(&fleet, &repo, "", "[[webhook]]\nbranch = \"main\"\nenv = \"test\"\n");
    slipway_tests::add_user(&fleet, "dev", &[("site", "test", "deployer")]);
    let secret = fleet.slipctl(&["--output", "json", "webhook", "secret", "site"]).ok().json()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = fleet.slipctl(&["--output", "json", "token", "create", "ops", "--admin"]).ok().json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let auth = format!("Bearer {token}");
    let admin = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let mut server = Server::start(&fleet);
    let ticket = |server: &Server, id: u64| server.call("GET", &format!("/api/v1/tickets/{id}"), &admin, None).1;

    // A freeze, through the API; then CI pushes.
    let body = json!({"until": "1h", "reason": "release freeze"}).to_string();
    let (status, freeze) = server.call("POST", "/api/v1/projects/site/envs/test/freezes", &admin, Some(&body));
    assert_eq!(status, 201, "{freeze}");
    repo.write("index.html", "v2\n");
    let v2 = repo.commit("v2 from CI");
    let push = json!({"ref": "refs/heads/main", "after": v2, "head_commit": {"message": "v2 from CI"}}).to_string();
    let sig = format!("sha256={}", hmac_hex(&secret, &push));
    let headers = [
        ("Content-Type", "application/json"),
        ("X-GitHub-Event", "push"),
        ("X-GitHub-Delivery", "d-1"),
        ("X-Hub-Signature-256", sig.as_str()),
    ];
    let (status, _, text) = http(server.port, "POST", "/hooks/site", &headers, Some(&push));
    assert_eq!(status, 201, "{text}");
    let made: Value = serde_json::from_str(&text).unwrap();
    assert!(made["waiting"].as_str().unwrap().contains("release freeze"), "it waits, saying why: {made}");
    let waiting = made["ticket"].as_u64().unwrap();
    let t = ticket(&server, waiting);
    assert_eq!(t["state"], "approved", "listed, not lost: {t}");
    assert!(t["start"]["waiting"].as_str().unwrap().contains("frozen until"), "{t}");
    assert!(fleet.current_release("web-1", "site").is_none());
    // The freeze is lifted: the ticket starts by itself and ships v2.
    let lift = format!("/api/v1/projects/site/envs/test/freezes/{}", freeze["id"]);
    assert_eq!(server.call("DELETE", &lift, &admin, None).0, 200);
    wait_for("the waiting ticket to deploy", || ticket(&server, waiting)["state"] == "succeeded");
    assert_eq!(std::fs::read_to_string(fleet.current("web-1", "site").join("index.html")).unwrap(), "v2\n");

    // A deployer cannot go past a freeze; an admin can, with a reason.
    let body = json!({"until": "1h", "reason": "audit week"}).to_string();
    let (_, freeze) = server.call("POST", "/api/v1/projects/site/envs/test/freezes", &admin, Some(&body));
    let (cookie, csrf) = server.login("dev", "dev-password");
    let dev = [("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str()), ("Content-Type", "application/json")];
    let forced = json!({"project": "site", "env": "test", "override_reason": "I say so"}).to_string();
    let (status, doc) = server.call("POST", "/api/v1/deploys", &dev, Some(&forced));
    assert_eq!(status, 403, "{doc}");
    assert!(doc["error"].as_str().unwrap().contains("not an admin"), "{doc}");
    let plain = json!({"project": "site", "env": "test"}).to_string();
    let (status, doc) = server.call("POST", "/api/v1/deploys", &dev, Some(&plain));
    assert_eq!(status, 403, "{doc}");
    assert!(doc["error"].as_str().unwrap().contains("audit week"), "{doc}");
    server.call("DELETE", &format!("/api/v1/projects/site/envs/test/freezes/{}", freeze["id"]), &admin, None);

    // A ticket scheduled 3 s ahead; the server restarts meanwhile; it starts on time.
    let new = json!({"project": "site", "env": "test", "ref": "main", "title": "scheduled"}).to_string();
    let (_, t) = server.call("POST", "/api/v1/tickets", &admin, Some(&new));
    let scheduled = t["id"].as_u64().unwrap();
    let (status, t) = server.call(
        "POST",
        &format!("/api/v1/tickets/{scheduled}/schedule"),
        &admin,
        Some(r#"{"at": "3s", "expires": "1h"}"#),
    );
    assert_eq!(status, 200, "{t}");
    let at = t["start"]["at"].as_i64().unwrap();
    assert!(
        t["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["comment"].as_str().unwrap_or("").starts_with("scheduled for"))
    );
    server.stop();
    let server = Server::start(&fleet);
    wait_for("the scheduled ticket to deploy", || ticket(&server, scheduled)["state"] == "succeeded");
    let t = ticket(&server, scheduled);
    let n = t["deploys"][0].as_u64().unwrap();
    let (_, d) = server.call("GET", &format!("/api/v1/deploys/{n}"), &admin, None);
    assert!(d["started_at"].as_i64().unwrap() >= at, "not before its time: {d}");

    // Expired before it could start (a freeze holds it past its expiry): cancelled, saying so.
    let body = json!({"until": "1h", "reason": "holding"}).to_string();
    server.call("POST", "/api/v1/projects/site/envs/test/freezes", &admin, Some(&body));
    let (_, t) = server.call("POST", "/api/v1/tickets", &admin, Some(&new));
    let late = t["id"].as_u64().unwrap();
    server.call("POST", &format!("/api/v1/tickets/{late}/schedule"), &admin, Some(r#"{"at": "1s", "expires": "2s"}"#));
    wait_for("the schedule to expire", || ticket(&server, late)["state"] == "cancelled");
    let t = ticket(&server, late);
    assert!(
        t["transitions"].as_array().unwrap().iter().any(|x| x["comment"].as_str().unwrap_or("").contains("expired")),
        "{t}"
    );
    assert!(t["deploys"].as_array().unwrap().is_empty());
    // Cancelling a schedule is recorded, and the ticket stays approved.
    let (_, t) = server.call("POST", "/api/v1/tickets", &admin, Some(&new));
    let kept = t["id"].as_u64().unwrap();
    server.call("POST", &format!("/api/v1/tickets/{kept}/schedule"), &admin, Some(r#"{"at": "1h"}"#));
    let (status, t) = server.call("DELETE", &format!("/api/v1/tickets/{kept}/schedule"), &admin, None);
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["state"], "approved");
    assert!(t["start"].is_null());
    assert!(t["transitions"].as_array().unwrap().iter().any(|x| x["comment"] == "schedule cancelled"), "{t}");
}

#[test]
fn maintenance_mode_is_served_by_nginx_instead_of_the_app_and_lifted() {
    use slipway_tests::{Proc, free_port, http_get, is_root, require};
    use std::process::{Command, Stdio};
    if !require("nginx (apt-get install nginx)", slipway_tests::have_nginx()) {
        return;
    }
    let fleet = Fleet::new(1);
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "the app\n");
    repo.commit("v1");
    project(&fleet, &repo, "", "");
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    // nginx as README shows it: the page in <deploy_to> wins while it exists.
    let (dir, port) = (fleet.path().join("nginx"), free_port());
    std::fs::create_dir_all(&dir).unwrap();
    let (current, deploy_to) = (fleet.current("web-1", "site"), fleet.deploy_to("web-1", "site"));
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "{user}daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
             http {{ access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
             server {{ listen 127.0.0.1:{port}; root {current};\n\
               location / {{ if (-f {deploy_to}/maintenance.html) {{ return 503; }} try_files $uri $uri/index.html =404; }}\n\
               error_page 503 /maintenance.html;\n\
               location = /maintenance.html {{ internal; root {deploy_to}; }}\n\
             }} }}\n",
            user = if is_root() { "user root;\n" } else { "" },
            d = dir.display(),
            current = current.display(),
            deploy_to = deploy_to.display(),
        ),
    )
    .unwrap();
    let nginx = Command::new("nginx")
        .args(["-p", dir.to_str().unwrap(), "-c", dir.join("nginx.conf").to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _nginx = Proc(nginx);
    wait_for("nginx", || http_get(port, "/").is_ok());
    assert_eq!(http_get(port, "/").unwrap(), (200, "the app\n".to_owned()));

    let on = fleet
        .slipctl(&["--output", "json", "maintenance", "on", "site", "test", "--message", "Back at 22:00 <b>soon</b>"])
        .ok()
        .json();
    assert_eq!(on["hosts"][0]["ok"], true, "{on}");
    let (status, body) = http_get(port, "/").unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("Back at 22:00 &lt;b&gt;soon&lt;/b&gt;"), "the message, escaped: {body}");
    assert_eq!(http_get(port, "/index.html").unwrap().0, 503, "every path");
    // The page is the agent's, in <deploy_to> (not the app's shared dir).
    let page = deploy_to.join("maintenance.html");
    assert!(std::fs::metadata(&page).unwrap().len() > 0);
    fleet.slipctl(&["maintenance", "off", "site", "test"]).ok();
    assert_eq!(http_get(port, "/").unwrap(), (200, "the app\n".to_owned()));
    assert!(!page.exists());
    // Off again is fine and says it was off.
    let again = fleet.slipctl(&["--output", "json", "maintenance", "off", "site", "test"]).ok().json();
    assert_eq!(again["hosts"][0]["was_on"], false);
    // An env with no deploy yet: the host says so, and the command fails.
    let other = fleet.path().join("other.toml");
    std::fs::write(
        &other,
        format!(
            "name = \"other\"\nrepo = \"{}\"\n[target]\ndeploy_to = \"{}/{{host}}/other\"\n[env.test]\nhosts = [\"role=web\"]\n",
            repo.path.display(),
            fleet.path().join("hosts").display()
        ),
    )
    .unwrap();
    fleet.slipctl(&["project", "apply", "-f", other.to_str().unwrap()]).ok();
    let run = fleet.slipctl(&["maintenance", "on", "other", "test"]).code(1);
    assert!(run.stdout.contains("FAILED") || run.stderr.contains("FAILED"), "{}{}", run.stdout, run.stderr);
}

/// A syslog server for the test: octet-counted RFC 5424 frames over TCP (or TLS with this
/// server config), the messages in order.
fn syslog_listener_on(
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut bytes = Vec::new();
            let _ = match &tls {
                None => {
                    let mut stream = stream;
                    stream.read_to_end(&mut bytes)
                }
                Some(config) => {
                    let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                    rustls::StreamOwned::new(conn, stream).read_to_end(&mut bytes)
                }
            };
            let mut rest = bytes.as_slice();
            while let Some(space) = rest.iter().position(|b| *b == b' ') {
                let Some(len) = std::str::from_utf8(&rest[..space]).ok().and_then(|n| n.parse::<usize>().ok()) else {
                    break;
                };
                let msg = &rest[space + 1..space + 1 + len];
                sink.lock().unwrap().push(String::from_utf8_lossy(msg).into_owned());
                rest = &rest[space + 1 + len..];
            }
        }
    });
    (port, got)
}

#[test]
fn every_security_relevant_action_is_an_audit_record_shipped_in_order_to_syslog_and_otlp() {
    let fleet = Fleet::new(1);
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "v1\n");
    repo.commit("v1");
    project(&fleet, &repo, "", "");
    let (syslog_port, received) = syslog_listener_on(None);
    let (otlp_port, otlp) = slipway_tests::sink();
    let config = fleet.home.join("config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap_or_default();
    text.push_str(&format!(
        "\n[audit]\nsyslog = \"tcp://127.0.0.1:{syslog_port}\"\notlp = \"http://127.0.0.1:{otlp_port}\"\n"
    ));
    std::fs::write(&config, text).unwrap();
    slipway_tests::add_admin(&fleet, "ops");
    slipway_tests::add_user(&fleet, "dev", &[("site", "test", "viewer")]);
    let mut server = Server::start(&fleet);

    // A small flood of wrong passwords, then the right one.
    let bad = json!({"user": "dev", "password": "not-it"}).to_string();
    for _ in 0..3 {
        assert_eq!(server.call("POST", "/api/v1/session", &[("Content-Type", "application/json")], Some(&bad)).0, 401);
    }
    let (cookie, csrf) = server.login("ops", "ops-password");
    let ops = [("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str()), ("Content-Type", "application/json")];
    // A grant, a token and its use, a freeze and an admin's override, a rollback.
    let grant = json!({"project": "site", "env": "test", "role": "deployer"}).to_string();
    assert_eq!(server.call("POST", "/api/v1/users/dev/grants", &ops, Some(&grant)).0, 200);
    let body = json!({"name": "ci", "scopes": [{"project": "site", "env": "test", "role": "deployer"}]}).to_string();
    let (status, token) = server.call("POST", "/api/v1/tokens", &ops, Some(&body));
    assert_eq!(status, 201, "{token}");
    let bearer = format!("Bearer {}", token["token"].as_str().unwrap());
    let ci = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
    let deploy = json!({"project": "site", "env": "test"}).to_string();
    let (status, started) = server.call("POST", "/api/v1/deploys", &ci, Some(&deploy));
    assert_eq!(status, 202, "{started}");
    let first = started["id"].as_u64().unwrap();
    wait_for("the deploy", || {
        server.call("GET", &format!("/api/v1/deploys/{first}"), &ops, None).1["status"] == "succeeded"
    });
    let freeze = json!({"until": "1h", "reason": "audit week"}).to_string();
    assert_eq!(server.call("POST", "/api/v1/projects/site/envs/test/freezes", &ops, Some(&freeze)).0, 201);
    let forced = json!({"project": "site", "env": "test", "override_reason": "INC-7"}).to_string();
    let (status, started) = server.call("POST", "/api/v1/deploys", &ops, Some(&forced));
    assert_eq!(status, 202, "{started}");
    let second = started["id"].as_u64().unwrap();
    wait_for("the forced deploy", || {
        server.call("GET", &format!("/api/v1/deploys/{second}"), &ops, None).1["status"] == "succeeded"
    });
    let back = json!({"project": "site", "env": "test"}).to_string();
    let (status, started) = server.call("POST", "/api/v1/rollbacks", &ops, Some(&back));
    assert_eq!(status, 202, "{started}");

    let expected = [
        "sign_in_failed",
        "sign_in_failed",
        "sign_in_failed",
        "sign_in",
        "grant",
        "token_create",
        "token_use",
        "deploy",
        "freeze_create",
        "deploy",
        "override",
        "rollback",
    ];
    let action = |msg: &str| msg.split(' ').nth(5).unwrap_or("").to_owned();
    wait_for("the records at the syslog server", || received.lock().unwrap().iter().any(|m| action(m) == "rollback"));
    let msgs = received.lock().unwrap().clone();
    let start = msgs.iter().position(|m| action(m) == "sign_in_failed").unwrap();
    let flow: Vec<String> =
        msgs[start..].iter().map(|m| action(m)).filter(|a| expected.contains(&a.as_str())).collect();
    assert_eq!(flow, expected, "every record of the flow, in order: {msgs:#?}");
    // Numbered without a gap, each with who, from where, on what, the outcome.
    let seqs: Vec<u64> =
        msgs.iter().map(|m| m.split("seq=\"").nth(1).unwrap().split('"').next().unwrap().parse().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let failed = msgs.iter().find(|m| action(m) == "sign_in_failed").unwrap();
    assert!(
        failed.starts_with("<108>1 ")
            && failed.contains("who=\"dev\"")
            && failed.contains("from=\"127.0.0.1\"")
            && failed.contains("outcome=\"refused\""),
        "{failed}"
    );
    let used = msgs.iter().find(|m| action(m) == "token_use").unwrap();
    assert!(used.contains("who=\"token:ci\"") && used.contains("POST /api/v1/deploys"), "{used}");
    let over = msgs.iter().find(|m| action(m) == "override").unwrap();
    assert!(over.contains("who=\"ops\"") && over.contains("INC-7") && over.contains("audit week"), "{over}");

    // The same trail through the API (admins only), and OTLP got it too.
    let (status, trail) = server.call("GET", "/api/v1/audit?after=0&limit=1000", &ops, None);
    assert_eq!(status, 200);
    assert_eq!(trail.as_array().unwrap().len(), msgs.len(), "{trail}");
    let (dc, dt) = server.login("dev", "dev-password");
    let dev = [("Cookie", dc.as_str()), ("X-CSRF-Token", dt.as_str())];
    assert_eq!(server.call("GET", "/api/v1/audit", &dev, None).0, 403);
    let mut shipped = String::new();
    while !shipped.contains("\"rollback\"") {
        let (path, _, body) = otlp.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(path, "/v1/logs");
        assert!(body.contains("\"resourceLogs\""), "{body}");
        shipped.push_str(&body);
    }
    assert!(shipped.contains("\"sign_in_failed\"") && shipped.contains("\"override\""), "{shipped}");
    // The failed sign-ins are in /metrics too.
    let (_, _, metrics) = http(server.port, "GET", "/metrics", &[], None);
    assert!(metrics.lines().any(|l| l.starts_with("slipway_login_failures_total") && !l.ends_with(" 0")), "{metrics}");
    // A restart ships nothing twice: the cursor is kept.
    let before = received.lock().unwrap().len();
    server.stop();
    let server = Server::start(&fleet);
    let (c2, t2) = server.login("ops", "ops-password");
    let _ = (c2, t2);
    wait_for("the next record", || received.lock().unwrap().len() > before);
    let after = received.lock().unwrap().clone();
    assert_eq!(action(&after[before]), "sign_in", "only what is new: {:?}", &after[before..]);
}

/// `[audit] ca_file` is read relative to the home, like every path of its config.toml (it was
/// read relative to the server's working directory, so the README's `ca_file = "siem-ca.pem"`
/// never shipped a record); one that does not read stops the server at start, naming it.
#[test]
fn the_audit_trail_goes_to_syslog_over_tls_checked_against_a_ca_file_in_the_home() {
    use rustls::pki_types::pem::PemObject;
    let fleet = Fleet::new(0);
    let (ca, cert, key) = slipway_tests::pg::server_tls();
    let certs: Vec<_> =
        rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes()).map(Result::unwrap).collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let server_config = rustls::ServerConfig::builder_with_provider(slipway_common::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let (port, received) = syslog_listener_on(Some(std::sync::Arc::new(server_config)));
    let config = fleet.home.join("config.toml");
    let base = std::fs::read_to_string(&config).unwrap_or_default();
    let with = |ca_file: &str| {
        std::fs::write(
            &config,
            format!("{base}\n[audit]\nsyslog = \"tls://127.0.0.1:{port}\"\nca_file = \"{ca_file}\"\n"),
        )
        .unwrap()
    };

    // In the home, named relative to it: records arrive over TLS.
    with("siem-ca.pem");
    let in_home = fleet.home.join("siem-ca.pem");
    std::fs::write(&in_home, &ca).unwrap();
    slipway_tests::add_admin(&fleet, "ops");
    let mut server = Server::start(&fleet);
    let bad = json!({"user": "ops", "password": "not-it"}).to_string();
    assert_eq!(server.call("POST", "/api/v1/session", &[("Content-Type", "application/json")], Some(&bad)).0, 401);
    wait_for("the failed sign-in at the syslog server over TLS", || {
        received.lock().unwrap().iter().any(|m| m.contains("sign_in_failed") && m.contains("who=\"ops\""))
    });
    server.stop();

    // A CA file that is not there: the server does not start, and says which file.
    with("gone-ca.pem");
    let mut serve = slipway_tests::Proc(
        std::process::Command::new(slipway_tests::bin("slipctl"))
            .arg("--home")
            .arg(&fleet.home)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut status = None;
    wait_for("serve to refuse a CA file that is not there", || {
        status = serve.0.try_wait().unwrap();
        status.is_some()
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut serve.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.unwrap().code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("[audit] ca_file {}", fleet.home.join("gone-ca.pem").display())), "{stderr}");
}
