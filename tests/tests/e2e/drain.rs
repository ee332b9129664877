//! Taking a host out of the cluster around its flip: a real HAProxy in front of three nginx
//! backends (one per host, serving its `current`), a request loop through HAProxy, and a
//! `post_release` that makes the backend fail for a second (a Tomcat-style restart).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use slipway_tests::{Fleet, Proc, Repo, free_port, hook_user_line, http_get, is_root, nginx, require, wait_for};

/// nginx serving each host's `current` on its own port, and HAProxy (backend `web`, one server
/// per host, named as the host) in front; returns the front port and the admin socket.
struct Cluster {
    front: u16,
    socket: std::path::PathBuf,
    _procs: Vec<Proc>,
}

fn cluster(fleet: &Fleet) -> Cluster {
    let dir = fleet.path().join("lb");
    let roots: Vec<_> = (1..=3).map(|i| fleet.current(&format!("web-{i}"), "site")).collect();
    let (nginx, ports) = nginx(&dir, &roots);
    let servers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let (front, socket, haproxy) = haproxy(&dir, &servers);
    Cluster { front, socket, _procs: vec![nginx, haproxy] }
}

/// HAProxy in front of `servers` (backend `web`, servers web-1, web-2, … in order, TCP-checked,
/// no retries): its front port, admin socket and process.
pub(crate) fn haproxy(dir: &std::path::Path, servers: &[String]) -> (u16, std::path::PathBuf, Proc) {
    std::fs::create_dir_all(dir).unwrap();
    let front = free_port();
    let socket = dir.join("admin.sock");
    let backends: String = servers
        .iter()
        .enumerate()
        .map(|(i, addr)| format!("  server web-{} {addr} check inter 500ms\n", i + 1))
        .collect();
    std::fs::write(
        dir.join("haproxy.cfg"),
        format!(
            "global\n  stats socket {} mode 600 level admin\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 5s\n  timeout server 5s\n  retries 0\n\
             frontend fe\n  bind 127.0.0.1:{front}\n  default_backend web\n\
             backend web\n  balance roundrobin\n  option http-server-close\n{backends}",
            socket.display()
        ),
    )
    .unwrap();
    let haproxy = Command::new("haproxy")
        .args(["-db", "-f", dir.join("haproxy.cfg").to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    let haproxy = Proc(haproxy);
    wait_for("haproxy", || socket.exists() && http_get(front, "/").is_ok());
    (front, socket, haproxy)
}

fn show_stat(socket: &std::path::Path) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.write_all(b"show stat\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Each server's status column.
pub(crate) fn statuses(socket: &std::path::Path) -> Vec<(String, String)> {
    let csv = show_stat(socket);
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().trim_start_matches("# ").split(',').collect();
    let (sv, st) =
        (header.iter().position(|c| *c == "svname").unwrap(), header.iter().position(|c| *c == "status").unwrap());
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > st && f[sv].starts_with("web-"))
        .map(|f| (f[sv].to_owned(), f[st].to_owned()))
        .collect()
}

/// Whether program `bin` runs here.
fn have(bin: &str) -> bool {
    Command::new(bin).arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// Requests through HAProxy until stopped: (failed, bodies seen).
pub(crate) fn request_loop(front: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, u64, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut total, mut failed, mut bodies) = (0u64, 0u64, std::collections::BTreeSet::new());
        while !stop.load(Ordering::Relaxed) {
            total += 1;
            match http_get(front, "/index.html") {
                Ok((200, body)) => {
                    bodies.insert(body);
                }
                _ => failed += 1,
            }
        }
        (total, failed, bodies.into_iter().collect())
    })
}

#[test]
fn draining_each_host_around_its_flip_keeps_every_request_served() {
    if !require("haproxy and nginx (apt-get install haproxy nginx)", have("haproxy") && have("nginx")) {
        return;
    }
    let fleet = Fleet::new(3);
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "v1\n");
    repo.commit("v1");
    fleet.apply_project("site", &repo.path, "");
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    let lb = cluster(&fleet);
    // post_release takes the page away for a second, as an app restart does.
    let restart = "post_release = [\"mv index.html index.off && sleep 1 && mv index.off index.html\"]\n";
    let target = format!("{}{restart}", hook_user_line());
    let drain = format!(
        "[rollout.drain]\nhaproxy = {{ socket = \"{}\", backend = \"web\" }}\ntimeout_secs = 5\n",
        lb.socket.display()
    );
    let top = |drain: &str| format!("[rollout]\nstrategy = \"serial\"\n{drain}");
    fleet.apply_project_full("site", &repo.path, &top(&drain), &target, "");

    // `check` sees the balancer and every host in it.
    let doc = fleet.slipctl(&["--output", "json", "check", "site", "test"]).ok().json();
    let drains: Vec<_> = doc["checks"].as_array().unwrap().iter().filter(|c| c["check"] == "drain").collect();
    assert_eq!(drains.len(), 3, "{doc}");
    assert!(drains.iter().all(|c| c["ok"] == true), "{doc}");

    // A serial deploy with the drain: every request served, each from one release.
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (socket, stop) = (lb.socket.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                for (server, status) in statuses(&socket) {
                    seen.insert((server, status));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            seen
        })
    };
    let requests = request_loop(lb.front, stop.clone());
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).ok().json();
    stop.store(true, Ordering::Relaxed);
    let (total, failed, bodies) = requests.join().unwrap();
    let seen = watcher.join().unwrap();
    eprintln!("with the drain: {failed} of {total} requests failed");
    assert!(total > 50, "the request loop ran ({total})");
    assert_eq!(failed, 0, "{failed} of {total} requests failed with the drain");
    assert!(bodies.iter().all(|b| b == "v1\n" || b == "v2\n"), "{bodies:?}");
    for host in ["web-1", "web-2", "web-3"] {
        assert!(seen.contains(&(host.to_owned(), "DRAIN".to_owned())), "{host} was drained: {seen:?}");
        let steps: Vec<String> = doc["hosts"].as_array().unwrap().iter().find(|h| h["host"] == host).unwrap()["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(steps, ["connect", "stage", "drain", "activate", "undrain", "prune"], "{host}");
    }
    assert!(statuses(&lb.socket).iter().all(|(_, s)| s == "UP"), "all back: {:?}", statuses(&lb.socket));

    // The same deploy without the drain: requests fail during each restart (so the drain is what saves them).
    fleet.apply_project_full("site", &repo.path, &top(""), &target, "");
    repo.write("index.html", "v3\n");
    repo.commit("v3");
    let stop = Arc::new(AtomicBool::new(false));
    let requests = request_loop(lb.front, stop.clone());
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    stop.store(true, Ordering::Relaxed);
    let (total, failed, _) = requests.join().unwrap();
    eprintln!("without the drain: {failed} of {total} requests failed");
    assert!(failed > 0, "without the drain some of {total} requests fail");

    // A health check failing on web-2 (auto_rollback off): web-2 stays drained, web-3 is never touched.
    repo.write("index.html", "v4\n");
    repo.commit("v4");
    let health = "health = { command = \"test \\\"$SLIPWAY_HOST\\\" != web-2\", timeout_secs = 5, retries = 0, interval_secs = 0 }\nauto_rollback = false\n";
    fleet.apply_project_full("site", &repo.path, &top(&format!("{health}{drain}")), &hook_user_line(), "");
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).code(1).json();
    let status_of = |s: &str| statuses(&lb.socket).into_iter().find(|(h, _)| h == s).unwrap().1;
    assert_eq!(status_of("web-2"), "DRAIN", "the failed host stays out");
    assert_eq!(status_of("web-1"), "UP");
    let web3 = doc["hosts"].as_array().unwrap().iter().find(|h| h["host"] == "web-3").unwrap().clone();
    assert!(!web3["steps"].as_array().unwrap().iter().any(|s| s["name"] == "drain"), "{web3}");
    assert!(doc["error"].as_str().unwrap().contains("web-2"), "{doc}");

    // A missing socket: the host fails at its drain, before its current changes.
    let before: Vec<_> = ["web-1", "web-2", "web-3"].iter().map(|h| fleet.current_release(h, "site")).collect();
    let gone = drain.replace(lb.socket.to_str().unwrap(), "/nonexistent/admin.sock");
    fleet.apply_project_full("site", &repo.path, &top(&gone), &hook_user_line(), "");
    repo.write("index.html", "v5\n");
    repo.commit("v5");
    let run = fleet.slipctl(&["deploy", "site", "test"]).code(1);
    assert!(run.stderr.contains("haproxy") && run.stderr.contains("/nonexistent/admin.sock"), "{}", run.stderr);
    let after: Vec<_> = ["web-1", "web-2", "web-3"].iter().map(|h| fleet.current_release(h, "site")).collect();
    assert_eq!(before, after, "no host's current moved");

    // A rollback goes the same way, batch by batch: web-1 and web-2 (on v4) go back to v3, each
    // drained, relinked (its restored post_release restarts it), and put back; web-2, left
    // drained by its failed health check, is back in the balancer too.
    fleet.apply_project_full("site", &repo.path, &top(&drain), &hook_user_line(), "");
    let stop = Arc::new(AtomicBool::new(false));
    let requests = request_loop(lb.front, stop.clone());
    let doc = fleet.slipctl(&["--output", "json", "rollback", "site", "test"]).ok().json();
    stop.store(true, Ordering::Relaxed);
    let (total, failed, _) = requests.join().unwrap();
    eprintln!("rollback with the drain: {failed} of {total} requests failed");
    assert_eq!(failed, 0, "{failed} of {total} requests failed during the rollback");
    for h in doc["hosts"].as_array().unwrap() {
        let steps: Vec<_> = h["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
        assert_eq!(steps, ["drain", "activate", "undrain"], "{h}");
    }
    assert!(statuses(&lb.socket).iter().all(|(_, s)| s == "UP"), "{:?}", statuses(&lb.socket));

    // With auto_rollback, a health check failing on web-2 takes web-1 (already back in the
    // balancer) out again for its relink: both go back to v3 and are put back, no request fails.
    repo.write("index.html", "v4b\n");
    repo.commit("v4b");
    let health2 = "health = { command = \"test \\\"$SLIPWAY_HOST\\\" != web-2\", timeout_secs = 5, retries = 0, interval_secs = 0 }\n";
    fleet.apply_project_full("site", &repo.path, &top(&format!("{health2}{drain}")), &target, "");
    let stop = Arc::new(AtomicBool::new(false));
    let requests = request_loop(lb.front, stop.clone());
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).code(1).json();
    stop.store(true, Ordering::Relaxed);
    let (total, failed, _) = requests.join().unwrap();
    eprintln!("auto-rollback with the drain: {failed} of {total} requests failed");
    assert_eq!(doc["status"], "rolled_back", "{doc}");
    assert_eq!(failed, 0, "{failed} of {total} requests failed during the auto-rollback");
    let web1: Vec<String> = doc["hosts"].as_array().unwrap().iter().find(|h| h["host"] == "web-1").unwrap()["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(web1, ["connect", "stage", "drain", "activate", "health", "undrain", "drain", "rollback", "undrain"]);
    assert!(statuses(&lb.socket).iter().all(|(_, s)| s == "UP"), "{:?}", statuses(&lb.socket));

    // A canary kept out of the balancer while paused (to be tested against production's
    // interfaces), put back at promote.
    let keep = format!("[rollout]\nstrategy = \"serial\"\ncanary_pause = true\ncanary_keep_drained = true\n{drain}");
    fleet.apply_project_full("site", &repo.path, &keep, &hook_user_line(), "canary = [\"web-1\"]\n");
    repo.write("index.html", "v6\n");
    repo.commit("v6");
    let deploy = fleet.spawn_slipctl(&["deploy", "site", "test"]);
    let latest = || fleet.slipctl(&["--output", "json", "history"]).ok().json()[0].clone();
    wait_for("the canary pause", || latest()["status"] == "paused");
    let status_of = |s: &str| statuses(&lb.socket).into_iter().find(|(h, _)| h == s).unwrap().1;
    assert_eq!(status_of("web-1"), "DRAIN", "the paused canary is kept out");
    assert_eq!(std::fs::read_to_string(fleet.current("web-1", "site").join("index.html")).unwrap(), "v6\n");
    fleet.slipctl(&["promote", &latest()["id"].to_string()]).ok();
    assert_eq!(deploy.wait_with_output().unwrap().status.code(), Some(0));
    assert!(statuses(&lb.socket).iter().all(|(_, s)| s == "UP"), "{:?}", statuses(&lb.socket));

    // Taking every host out at once is refused unless allowed.
    fleet.apply_project_full("site", &repo.path, &format!("[rollout]\nstrategy = \"parallel\"\n{drain}"), "", "");
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test"]).code(2).json();
    assert!(doc["fix"].as_str().unwrap().contains("allow_full_drain"), "{doc}");
}

#[test]
fn drain_command_lines_run_on_the_host_or_on_a_named_agent() {
    let fleet = Fleet::new(3);
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "v1\n");
    repo.commit("v1");
    let marks = fleet.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    std::fs::set_permissions(&marks, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let vars = format!("vars = {{ MARKS = \"{}\" }}\n", marks.display());
    let drain = |run_on: &str| {
        format!(
            "{vars}[rollout]\nstrategy = \"serial\"\n[rollout.drain]\nrun_on = \"{run_on}\"\n\
             drain = [\"echo drain $SLIPWAY_HOST $SLIPWAY_HOST_ADDR $(id -un) >> $MARKS/$(hostname -s 2>/dev/null || echo x).{run_on}\"]\n\
             undrain = [\"echo undrain $SLIPWAY_HOST >> $MARKS/$(hostname -s 2>/dev/null || echo x).{run_on}\"]\n"
        )
    };
    // On each host itself, as the hook user.
    fleet.apply_project_full("site", &repo.path, &drain("host"), &hook_user_line(), "");
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test", "--hosts", "web-1,web-2"]).ok().json();
    let log: String = std::fs::read_dir(&marks)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".host"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    let user = if is_root() {
        "www".to_owned()
    } else {
        String::from_utf8_lossy(&Command::new("id").arg("-un").output().unwrap().stdout).trim().to_owned()
    };
    for host in ["web-1", "web-2"] {
        assert!(log.contains(&format!("drain {host} 127.0.0.1 {user}")), "{log}");
        assert!(log.contains(&format!("undrain {host}")), "{log}");
        let h = doc["hosts"].as_array().unwrap().iter().find(|h| h["host"] == host).unwrap().clone();
        let drain = h["steps"].as_array().unwrap().iter().find(|s| s["name"] == "drain").unwrap().clone();
        assert!(drain["detail"].as_str().unwrap().contains(&format!("on {host}")), "{drain}");
    }
    // On a named agent (the balancer's host): web-3 runs the lines for web-1 and web-2, in order.
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    fleet.apply_project_full("site", &repo.path, &drain("web-3"), &hook_user_line(), "");
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test", "--hosts", "web-1,web-2"]).ok().json();
    let lines: Vec<String> = std::fs::read_dir(&marks)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".web-3"))
        .flat_map(|e| std::fs::read_to_string(e.path()).unwrap().lines().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let order: Vec<&str> = lines.iter().map(|l| l.split_whitespace().take(2).last().unwrap()).collect();
    assert_eq!(order, ["web-1", "web-1", "web-2", "web-2"], "{lines:?}");
    assert!(lines[0].starts_with("drain web-1") && lines[1].starts_with("undrain web-1"), "{lines:?}");
    assert!(
        doc["hosts"][0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["detail"].as_str().unwrap_or("").contains("on web-3")),
        "{doc}"
    );
    // An agent that is not registered is refused before anything happens.
    fleet.apply_project_full("site", &repo.path, &drain("lb-9"), "", "");
    let doc = fleet.slipctl(&["--output", "json", "deploy", "site", "test", "--hosts", "web-1,web-2"]).code(2).json();
    assert!(doc["error"].as_str().unwrap().contains("lb-9"), "{doc}");
}

/// A service like a JVM: serves its host's `current/index.html`, but answers 503 for two seconds
/// after `current` changes (it restarts with the release and takes that long to answer).
fn slow_starting_backend(addr: std::net::SocketAddr, current: std::path::PathBuf, stop: Arc<AtomicBool>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind(addr).unwrap();
    std::thread::spawn(move || {
        let mut last = std::fs::read_link(&current).ok();
        let mut ready_at = std::time::Instant::now();
        for conn in listener.incoming() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            // The whole request head first (closing with unread bytes would reset the connection).
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            let now = std::fs::read_link(&current).ok();
            if now != last {
                last = now;
                ready_at = std::time::Instant::now() + Duration::from_secs(2);
            }
            let answer = if std::time::Instant::now() < ready_at {
                "HTTP/1.0 503 Service Unavailable\r\nContent-Length: 8\r\n\r\nstarting".to_owned()
            } else {
                let body = std::fs::read_to_string(current.join("index.html")).unwrap_or_default();
                format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            };
            let _ = conn.write_all(answer.as_bytes());
            let _ = conn.shutdown(std::net::Shutdown::Write);
        }
    });
}

/// Seed 004's rollback is 移除集群 → 回滚 → 重启和测试 → 加入集群: each host goes back into
/// the balancer only once the env's health check passes, so a service that takes two seconds to
/// answer after its restart loses no request (before, a rollback put it back right after the
/// relink, and the balancer sent it requests it answered 503).
#[test]
fn a_rollback_puts_each_host_back_only_once_its_service_answers() {
    if !require("haproxy (apt-get install haproxy)", have("haproxy")) {
        return;
    }
    let fleet = Fleet::new(3);
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "v1\n");
    repo.commit("v1");
    fleet.apply_project("site", &repo.path, "");
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    // One backend per host, on 127.0.10.N and one port.
    let port = free_port();
    let (stop, backends_stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let mut servers = Vec::new();
    for i in 1..=3u8 {
        let addr = std::net::SocketAddr::from(([127, 0, 10, i], port));
        slow_starting_backend(addr, fleet.current(&format!("web-{i}"), "site"), backends_stop.clone());
        servers.push(addr.to_string());
    }
    let (front, socket, _haproxy) = haproxy(&fleet.path().join("lb"), &servers);
    // The env's check asks the host's own service, as a deploy's does.
    let check = format!(
        "python3 -c 'import os, urllib.request; urllib.request.urlopen(\\\"http://127.0.10.%s:{port}/index.html\\\" % os.environ[\\\"SLIPWAY_HOST\\\"][-1], timeout=2)'"
    );
    let rollout = format!(
        "[rollout]\nstrategy = \"serial\"\nhealth = {{ command = \"{check}\", timeout_secs = 5, retries = 10, interval_secs = 1 }}\n\
         [rollout.drain]\nhaproxy = {{ socket = \"{}\", backend = \"web\" }}\ntimeout_secs = 5\n",
        socket.display()
    );
    fleet.apply_project_full("site", &repo.path, &rollout, &hook_user_line(), "");
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    let requests = request_loop(front, stop.clone());
    fleet.slipctl(&["deploy", "site", "test"]).ok();
    let doc = fleet.slipctl(&["--output", "json", "rollback", "site", "test"]).ok().json();
    stop.store(true, Ordering::Relaxed);
    let (total, failed, bodies) = requests.join().unwrap();
    backends_stop.store(true, Ordering::Relaxed);
    eprintln!("deploy and rollback of a slow-starting service behind HAProxy: {failed} of {total} requests failed");
    assert!(total > 50, "the request loop ran ({total})");
    assert_eq!(failed, 0, "{failed} of {total} requests failed: a host took traffic before it answered");
    for h in doc["hosts"].as_array().unwrap() {
        let steps: Vec<_> = h["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
        assert_eq!(steps, ["drain", "activate", "health", "undrain"], "{h}");
    }
    assert!(bodies.iter().all(|b| b == "v1\n" || b == "v2\n"), "{bodies:?}");
    for i in 1..=3 {
        let page = std::fs::read_to_string(fleet.current(&format!("web-{i}"), "site").join("index.html")).unwrap();
        assert_eq!(page, "v1\n");
    }
    assert!(statuses(&socket).iter().all(|(_, s)| s == "UP"), "{:?}", statuses(&socket));
}
