//! Hosts that join by themselves (issue #22): `slipd join` with one-time tokens against the
//! real `slipctl serve --join-listen`, refusals that change nothing (a used, expired or unknown
//! token; a pin that does not match, refused before the token is sent; a banned name; a host
//! that already has an identity), a request for another name issued with the token's name
//! only, deploys to joined hosts, certificates renewed on their own while a deploy runs, an
//! eviction mid-deploy, a CA rotation that cuts no host off, and a host caught up on joining.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use slipway_tests::{Agent, Fleet, Repo, Server, bin, free_port, wait_for};

/// Wait (at most `secs`) until `ok`, looking every 100 ms: certificates renew on their own
/// schedule (70–90 % of a lifetime the test sets), not on the test's.
fn wait_long(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !ok() {
        assert!(std::time::Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `slipctl agent token create NAME …` through the running server: (token, pin, command).
fn token(fleet: &Fleet, name: &str, extra: &[&str]) -> (String, String, String) {
    let mut args = vec!["--output", "json", "agent", "token", "create", name, "--label", "role=web"];
    args.extend_from_slice(extra);
    let doc = fleet.slipctl(&args).ok().json();
    let s = |k: &str| doc[k].as_str().unwrap_or_else(|| panic!("no {k} in {doc}")).to_owned();
    (s("token"), s("ca_sha256"), s("command"))
}

/// Where a host keeps its agent.toml and pki files, and its deploy root.
struct Host {
    name: String,
    dir: PathBuf,
    root: PathBuf,
    port: u16,
}

impl Host {
    fn new(fleet: &Fleet, name: &str) -> Host {
        let dir = fleet.path().join("joined").join(name);
        let root = fleet.path().join("hosts").join(name);
        std::fs::create_dir_all(&root).unwrap();
        Host { name: name.into(), dir, root, port: free_port() }
    }

    fn config(&self) -> PathBuf {
        self.dir.join("agent.toml")
    }

    /// `slipd join URL --token T --ca-sha256 PIN …` on this host.
    fn join(&self, url: &str, token: &str, pin: &str, force: bool) -> Output {
        let mut c = Command::new(bin("slipd"));
        c.args(["--config", self.config().to_str().unwrap(), "join", url, "--token", token, "--ca-sha256", pin]);
        c.args(["--listen", &format!("127.0.0.1:{}", self.port)]);
        c.args(["--state-dir", self.dir.join("state").to_str().unwrap()]);
        c.args(["--allowed-root", self.root.to_str().unwrap()]);
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    }

    fn agent(&self) -> Agent {
        let mut agent = Agent::joined(&self.name, self.port, self.dir.clone(), self.root.clone());
        agent.start();
        agent
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn metrics(server: &Server) -> String {
    slipway_tests::http(server.port, "GET", "/metrics", &[], None).2
}

fn counter(text: &str, line_start: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(line_start)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

/// A join request made by hand: a CSR asking for another name and extra SANs, sent to the
/// agents' endpoint over a pinned TLS connection. The answer's status and body.
fn join_by_hand(url: &str, pin: &str, token: &str, csr: &str) -> (u16, Value) {
    let addr = url.strip_prefix("https://").unwrap().to_owned();
    let body = serde_json::json!({"token": token, "csr": csr, "port": 7443}).to_string();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let text = runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tls = slipway_common::tls::join_client_config(pin).unwrap();
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut stream = tokio_rustls::TlsConnector::from(tls)
            .connect(slipway_common::tls::controller_server_name(), tcp)
            .await
            .unwrap();
        let request = format!(
            "POST /v1/join HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text).await;
        text
    });
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let json = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // (A chunked answer: the JSON object is the part between the first `{` and the last `}`.)
    let json = json.find('{').zip(json.rfind('}')).map(|(a, b)| &json[a..=b]).unwrap_or("null");
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}

/// A certificate request for `name` asking for extra SANs, made the way an attacker would.
fn hostile_csr() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["evil.example".to_owned(), "web-1.agent.slipway".to_owned()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "controller.slipway");
    params.subject_alt_names.push(rcgen::SanType::URI("spiffe://slipway/controller".try_into().unwrap()));
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn deploy_json(fleet: &Fleet, args: &[&str]) -> Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    fleet.slipctl(&all).json()
}

#[test]
fn hosts_join_renew_are_evicted_banned_and_rotated_and_a_newcomer_catches_up() {
    let fleet = Fleet::new(0);
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "v1\n");
    repo.commit("v1");
    let gate_dir = fleet.path().join("gate");
    std::fs::create_dir_all(&gate_dir).unwrap();
    slipway_tests::traversable(&gate_dir);
    std::fs::set_permissions(&gate_dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let go = gate_dir.join("go");
    // A hook that says it started, then waits for the test's word.
    let target = format!(
        "{}pre_release = [\"touch {gate}/started-$(hostname)-$$ ; while [ ! -e {go} ]; do sleep 0.05; done\"]\n",
        slipway_tests::hook_user_line(),
        gate = gate_dir.display(),
        go = go.display()
    );
    fleet.apply_project_full("site", &repo.path, "", &target, "catch_up = true\n");
    std::fs::write(&go, "").unwrap(); // open while the hosts join
    // Certificates of 12 s: each renews 8.4–10.8 s after it was written.
    let server =
        Server::start_with(&fleet.home, &bin("slipctl"), &["--join-listen", "127.0.0.1:0", "--agent-cert-ttl", "12s"]);
    let url = server.join_url.clone().expect("the server names its agents' endpoint");

    // 1. Three hosts join; the printed command is the one they run.
    let hosts: Vec<Host> = (1..=3).map(|i| Host::new(&fleet, &format!("web-{i}"))).collect();
    let mut tokens = Vec::new();
    for h in &hosts {
        let (t, pin, command) = token(&fleet, &h.name, &[]);
        assert_eq!(command, format!("slipd join {url} --token {t} --ca-sha256 {pin}"));
        tokens.push((t, pin));
    }
    let pin = tokens[0].1.clone();

    // A wrong pin: refused in the handshake, so the server never sees the request (no join
    // is counted, refused or not) and the token stays unused.
    let wrong = "ab".repeat(32);
    let out = hosts[0].join(&url, &tokens[0].0, &wrong, false);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("holds no CA with SHA-256"), "{}", stderr(&out));
    assert!(!hosts[0].config().exists(), "nothing written");
    let m = metrics(&server);
    assert_eq!(counter(&m, "slipway_agent_joins_total{reason=\"refused\"}"), 0.0, "{m}");
    assert_eq!(counter(&m, "slipway_agent_joins_total{reason=\"issued\"}"), 0.0, "{m}");

    // Bad input changes nothing: an unknown token, a malformed pin.
    let out = hosts[0].join(&url, "000000000000.deadbeef", &pin, false);
    assert!(stderr(&out).contains("unknown join token"), "{}", stderr(&out));
    let out = hosts[0].join(&url, &tokens[0].0, "xyz", false);
    assert!(stderr(&out).contains("is not a SHA-256"), "{}", stderr(&out));
    // An unreachable controller.
    let out = hosts[0].join(&format!("https://127.0.0.1:{}", free_port()), &tokens[0].0, &pin, false);
    assert!(!out.status.success() && stderr(&out).contains("cannot reach the controller"), "{}", stderr(&out));

    // web-1 and web-2 join; the same token again (another host) is refused.
    for (h, (t, p)) in hosts.iter().zip(&tokens).take(2) {
        let out = h.join(&url, t, p, false);
        assert!(out.status.success(), "{} did not join: {}", h.name, stderr(&out));
        let toml = read(&h.config());
        assert!(toml.contains(&format!("name = \"{}\"", h.name)) && toml.contains(&url), "{toml}");
        let mode = std::fs::metadata(h.dir.join("agent.key")).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600, "the key is private");
    }
    let intruder = Host::new(&fleet, "intruder");
    let out = intruder.join(&url, &tokens[0].0, &pin, false);
    assert!(stderr(&out).contains("was used at"), "a token is used once: {}", stderr(&out));
    // A host that already has an identity is refused unless --force.
    let out = hosts[0].join(&url, &tokens[2].0, &pin, false);
    assert!(stderr(&out).contains("already has an identity (agent 'web-1')"), "{}", stderr(&out));

    // A withdrawn token.
    let (withdrawn, _, _) = token(&fleet, "web-8", &[]);
    fleet.slipctl(&["agent", "token", "rm", withdrawn.split_once('.').unwrap().0]).ok();
    let out = intruder.join(&url, &withdrawn, &pin, false);
    assert!(stderr(&out).contains("unknown join token"), "{}", stderr(&out));

    // An expired token.
    let (short, _, _) = token(&fleet, "web-9", &["--ttl", "1s"]);
    wait_long("the 1 s token to expire", 10, || {
        fleet.slipctl(&["agent", "token", "list"]).stdout.lines().any(|l| l.contains("web-9") && l.contains("expired"))
    });
    let out = intruder.join(&url, &short, &pin, false);
    assert!(stderr(&out).contains("expired at"), "{}", stderr(&out));

    // A request asking for another name, the controller's identity and extra SANs: issued with
    // the token's name only.
    let (status, issued) = join_by_hand(&url, &pin, &tokens[2].0, &hostile_csr());
    assert_eq!(status, 200, "{issued}");
    let cert = issued["cert"].as_str().unwrap();
    let der = slipway_common::pki::first_cert_der(cert).unwrap();
    let info = slipway_common::pki::cert_info(&der).unwrap();
    assert_eq!(info.identities, vec![slipway_common::pki::Identity::Agent("web-3".into())]);
    let text = String::from_utf8_lossy(&der);
    assert!(!text.contains("evil.example") && !text.contains("web-1.agent"), "no SAN from the request");
    // (That used web-3's token; web-3 joins for real with a new one.)
    let (t3, _, _) = token(&fleet, "web-3", &[]);
    let out = hosts[2].join(&url, &t3, &pin, false);
    assert!(out.status.success(), "{}", stderr(&out));

    // 2. The agents run; `agent list` shows them with their labels and addresses; a deploy
    // reaches all three.
    let mut agents: Vec<Agent> = hosts.iter().map(Host::agent).collect();
    let list = deploy_json(&fleet, &["agent", "list"]);
    for h in &hosts {
        let a = list.as_array().unwrap().iter().find(|a| a["name"] == h.name.as_str()).expect("listed");
        assert_eq!(a["labels"]["role"], "web");
        assert_eq!(a["addr"], format!("127.0.0.1:{}", h.port));
        assert_eq!(a["reachable"], true, "{a}");
    }
    let first = deploy_json(&fleet, &["deploy", "site", "test"]);
    assert_eq!(first["status"], "succeeded", "{first}");

    // 3. Certificates renew on their own while a deploy runs (the hook holds it open).
    std::fs::remove_file(&go).unwrap();
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    let before: Vec<String> = hosts.iter().map(|h| read(&h.dir.join("agent.pem"))).collect();
    let started = |n: usize| {
        std::fs::read_dir(&gate_dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("started"))
            .count()
            >= n
    };
    let running = fleet.spawn_slipctl(&["deploy", "site", "test"]);
    wait_for("the hooks to start", || started(3));
    wait_long("every agent to renew", 30, || agents.iter().all(|a| a.log().contains("certificate renewed")));
    for (h, old) in hosts.iter().zip(&before) {
        assert_ne!(&read(&h.dir.join("agent.pem")), old, "{} has a new certificate", h.name);
    }
    std::fs::write(&go, "").unwrap();
    let out = running.wait_with_output().unwrap();
    assert!(out.status.success(), "the deploy that ran across the renewals: {}", String::from_utf8_lossy(&out.stderr));
    let m = metrics(&server);
    assert!(counter(&m, "slipway_agent_certificate_renewals_total{reason=\"issued\"}") >= 3.0, "{m}");
    // New connections take the renewed certificates.
    assert_eq!(deploy_json(&fleet, &["deploy", "site", "test"])["status"], "succeeded");

    // 4. Evict web-2 mid-deploy: its next call is refused, and the deploy says so.
    for e in std::fs::read_dir(&gate_dir).unwrap().flatten() {
        std::fs::remove_file(e.path()).unwrap();
    }
    repo.write("index.html", "v3\n");
    repo.commit("v3");
    let running = fleet.spawn_slipctl(&["deploy", "site", "test"]);
    wait_for("the hooks to start", || started(3));
    fleet.slipctl(&["agent", "evict", "web-2"]).ok();
    std::fs::write(&go, "").unwrap();
    let out = running.wait_with_output().unwrap();
    assert!(!out.status.success(), "a deploy with an evicted host does not succeed");
    let newest = deploy_json(&fleet, &["history", "site", "test"])[0]["id"].as_u64().unwrap();
    let record = deploy_json(&fleet, &["show", &newest.to_string()]);
    let web2 = record["hosts"].as_array().unwrap().iter().find(|h| h["host"] == "web-2").unwrap().clone();
    assert_eq!(web2["ok"], false, "{record}");
    assert!(web2["error"].as_str().unwrap_or("").contains("evicted"), "{web2}");
    let list = fleet.slipctl(&["agent", "list"]).stdout;
    assert!(list.lines().any(|l| l.starts_with("web-2") && l.contains("evicted by")), "{list}");

    // 5. Ban web-3: evicted, and no join under that name (nor a token for it).
    let (t3b, _, _) = token(&fleet, "web-3", &[]);
    fleet.slipctl(&["agent", "ban", "web-3"]).ok();
    let out = hosts[2].join(&url, &t3b, &pin, true);
    assert!(stderr(&out).contains("banned"), "{}", stderr(&out));
    let refused = fleet.slipctl(&["agent", "token", "create", "web-3"]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("banned"), "{}", refused.stderr);
    agents.truncate(1); // web-2 and web-3 stop
    hosts_only_web1(&fleet);

    // 6. Rotate the CA: web-1 renews onto the new CA; until it has, --finish refuses.
    let rotated = fleet.slipctl(&["--output", "json", "ca", "rotate"]).ok().json();
    let new_pin = rotated["ca_sha256"].as_str().unwrap().to_owned();
    assert_ne!(new_pin, pin);
    let early = fleet.slipctl(&["ca", "rotate", "--finish"]);
    if early.code == 0 {
        panic!("--finish went through before web-1 renewed: {}", early.stdout);
    }
    assert!(early.stderr.contains("web-1"), "{}", early.stderr);
    wait_long("web-1 to renew onto the new CA", 30, || fleet.slipctl(&["ca", "rotate", "--finish"]).code == 0);
    assert!(read(&hosts[0].dir.join("ca.pem")).matches("BEGIN CERTIFICATE").count() == 2, "web-1 trusts both CAs");
    repo.write("index.html", "v4\n");
    repo.commit("v4");
    let after = deploy_json(&fleet, &["deploy", "site", "test"]);
    assert_eq!(after["status"], "succeeded", "no host is cut off by the rotation: {after}");

    // 7. A newcomer joins an env with catch_up: it gets the release web-1 runs, by join:web-4.
    let newcomer = Host::new(&fleet, "web-4");
    let (t4, p4, _) = token(&fleet, "web-4", &[]);
    assert_eq!(p4, new_pin, "after the rotation, join commands pin the new CA");
    let joining = std::time::Instant::now();
    let out = newcomer.join(&url, &t4, &p4, false);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut web4 = newcomer.agent();
    let release = after["release"].as_str().unwrap().to_owned();
    let by_join = || {
        let history = deploy_json(&fleet, &["history", "site", "test"]);
        history.as_array().unwrap().iter().find(|d| d["user"] == "join:web-4").cloned()
    };
    wait_long("the catch-up deploy by join:web-4 to end", 60, || by_join().is_some_and(|d| d["status"] != "running"));
    let caught = by_join().unwrap();
    assert_eq!(caught["status"], "succeeded", "{caught}");
    assert_eq!(fleet.current_release("web-4", "site").as_deref(), Some(release.as_str()));
    assert_eq!(caught["release"], release.as_str());
    assert_eq!(read(&fleet.current("web-4", "site").join("index.html")), "v4\n");
    eprintln!("from `slipd join` to its first release serving: {:.1} s", joining.elapsed().as_secs_f64());

    // 8. A host whose certificate expired while it could not renew (here: its slipd is down)
    // is shown with the fix; nothing else breaks.
    web4.kill();
    wait_long("web-4's certificate to expire", 20, || {
        let list = fleet.slipctl(&["agent", "list"]).stdout;
        list.lines().any(|l| l.starts_with("web-4") && l.contains("certificate expired at"))
    });
    let list = fleet.slipctl(&["agent", "list"]).stdout;
    assert!(list.contains("`slipctl agent token create web-4`, then `slipd join --force`"), "{list}");
    let only = deploy_json(&fleet, &["deploy", "site", "test", "--hosts", "web-1"]);
    assert_eq!(only["status"], "succeeded", "{only}");
    drop(agents);
}

/// After the eviction and the ban, web-2 and web-3 are forgotten: the env deploys to web-1
/// (and web-4 when it joins).
fn hosts_only_web1(fleet: &Fleet) {
    fleet.slipctl(&["agent", "rm", "web-2"]).ok();
    fleet.slipctl(&["agent", "rm", "web-3"]).ok();
}

/// An admin adds a host from the agents page: a one-time join token and the command to run,
/// shown once; the host joins with exactly that command and appears in the list.
#[test]
fn an_admin_makes_a_join_token_on_the_agents_page_and_the_host_joins_with_it() {
    if !slipway_tests::require("chromium and chromium-driver", slipway_tests::browser::have_browser()) {
        return;
    }
    let fleet = Fleet::new(0);
    slipway_tests::add_admin(&fleet, "ops");
    let server = Server::start_with(&fleet.home, &slipway_tests::bin("slipctl"), &["--join-listen", "127.0.0.1:0"]);
    let base = format!("http://127.0.0.1:{}", server.port);
    let driver = slipway_tests::browser::Driver::start();
    let command = crate::web::runtime().block_on(async {
        let c = driver.session("en-US", 1280, 900).await;
        crate::web::log_in(&c, &base, "ops").await;
        c.goto(&format!("{base}/agents")).await.unwrap();
        c.find(fantoccini::Locator::Css("#j-name")).await.unwrap().send_keys("web-5").await.unwrap();
        c.find(fantoccini::Locator::Css("#j-labels")).await.unwrap().send_keys("role=web").await.unwrap();
        crate::web::click(&c, "form[action='/agents/token'] button").await;
        let command =
            c.wait().for_element(fantoccini::Locator::Css("pre.command code")).await.unwrap().text().await.unwrap();
        slipway_tests::browser::screenshot(&c, "agents-join-token").await;
        c.close().await.unwrap();
        command
    });
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(&words[..2], &["slipd", "join"], "{command}");
    assert_eq!(Some(words[2]), server.join_url.as_deref(), "{command}");
    let dir = fleet.path().join("web-5");
    let out = std::process::Command::new(slipway_tests::bin("slipd"))
        .args(["--config", dir.join("agent.toml").to_str().unwrap()])
        .args(&words[1..])
        .args(["--listen", "127.0.0.1:7443", "--state-dir", dir.join("state").to_str().unwrap()])
        .args(["--allowed-root", dir.join("root").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list = fleet.slipctl(&["--output", "json", "agent", "list"]).json();
    assert_eq!(list[0]["name"], "web-5", "{list}");
    assert_eq!(list[0]["labels"]["role"], "web", "{list}");
}
