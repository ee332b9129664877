//! The server under floods (issue #20, findings 2, 3 and 5), loopback only and bounded in count
//! and time: ~1,100 clients that send a webhook's headers and then a byte every two seconds,
//! 64 addresses guessing passwords, and 60 webhook bodies of 16 MiB, all at once, while a
//! legitimate `slipctl deploy` goes through the owner's socket and another through TCP, and
//! `/healthz` must answer within a second. It prints the figures (latency, RSS, CPU) with and
//! without the attack; on the code before the fix `/healthz` went unanswered.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use slipway_tests::{Fleet, Repo, Server, SseReader, connect_from, raise_fd_limit};

const SLOW_CLIENTS: usize = 1_100;
const SLOW_PER_ADDRESS: usize = 61;
const LOGIN_FLOODERS: usize = 64;
const LOGINS_EACH: usize = 60;
const BIG_BODIES: usize = 60;
const BIG_BODY: usize = 16 << 20;

/// `GET path`, answered within `within`: its status and how long it took, or `None`.
fn timed_get(port: u16, path: &str, within: Duration) -> Option<(u16, Duration)> {
    let started = Instant::now();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, within).ok()?;
    stream.set_read_timeout(Some(within)).ok()?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let status = String::from_utf8_lossy(&answer).split_whitespace().nth(1)?.parse().ok()?;
    Some((status, started.elapsed()))
}

/// One wrong login from `from`: its status, or `None` when no answer came within 5 s (the
/// attack stays bounded in time whatever the server does).
fn login_attempt(from: Ipv4Addr, port: u16, body: &str) -> Option<u16> {
    let mut s = connect_from(from, port).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let head = format!(
        "POST /api/v1/session HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body.as_bytes()).ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).ok()?;
    String::from_utf8_lossy(&answer).split_whitespace().nth(1)?.parse().ok()
}

/// Resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// CPU seconds (user + system) process `pid` has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After the command's ')': state is field 0, utime 11, stime 12 (clock ticks of 1/100 s).
    (ticks(11) + ticks(12)) / 100.0
}

/// What a legitimate client saw in one phase.
#[derive(Debug)]
struct Seen {
    healthz_p50: Duration,
    healthz_max: Duration,
    unanswered: usize,
    /// How long a deploy took through the socket and through TCP (`None`: it failed).
    socket_deploy: Option<Duration>,
    tcp_deploy: Option<Duration>,
}

fn legitimate_client(fleet: &Fleet, server: &Server, admin: &str) -> Seen {
    let mut took = Vec::new();
    let mut unanswered = 0;
    for _ in 0..20 {
        match timed_get(server.port, "/healthz", Duration::from_secs(2)) {
            Some((200, t)) => took.push(t),
            _ => unanswered += 1,
        }
    }
    took.sort();
    let started = Instant::now();
    let through_socket = fleet.slipctl(&["--output", "json", "deploy", "a", "test"]);
    let socket_deploy = (through_socket.code == 0).then(|| started.elapsed());
    let started = Instant::now();
    let body = json!({"project": "a", "env": "test"}).to_string();
    let headers = [("Authorization", admin), ("Content-Type", "application/json")];
    let (status, doc) = server.call("POST", "/api/v1/deploys", &headers, Some(&body));
    let tcp_deploy = doc["id"].as_u64().filter(|_| status == 202).and_then(|id| {
        let mut events =
            SseReader::open(server.port, &format!("/api/v1/deploys/{id}/events"), &[("Authorization", admin)]);
        let mut last = Value::Null;
        while let Some(e) = events.next_event() {
            last = e.data;
        }
        (last["status"] == "succeeded").then(|| started.elapsed())
    });
    Seen {
        healthz_p50: took.get(took.len() / 2).copied().unwrap_or_default(),
        healthz_max: took.last().copied().unwrap_or_default(),
        unanswered,
        socket_deploy,
        tcp_deploy,
    }
}

#[test]
fn f02_f03_f05_slow_clients_body_floods_and_login_floods_leave_the_server_answering() {
    raise_fd_limit();
    let fleet = Fleet::new(1);
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "v1\n");
    repo.commit("v1");
    fleet.apply_project("a", &repo.path, "");
    fleet.slipctl(&["webhook", "secret", "a"]).ok();
    let admin = format!(
        "Bearer {}",
        fleet.slipctl(&["--output", "json", "token", "create", "root", "--admin"]).ok().json()["token"]
            .as_str()
            .unwrap()
    );
    let server = Server::start(&fleet);
    let pid = server.child.id();
    fleet.slipctl(&["deploy", "a", "test"]).ok(); // (warm: the mirror and the cache exist)

    let (rss0, cpu0, t0) = (rss_mib(pid), cpu_secs(pid), Instant::now());
    let quiet = legitimate_client(&fleet, &server, &admin);
    let quiet_cpu = (cpu_secs(pid) - cpu0) / t0.elapsed().as_secs_f64();

    // The attack.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(rss0 as usize));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_mib(pid) as usize, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50)); // (sampling, not waiting for an event)
            }
        })
    };
    let slow_head = format!(
        "POST /hooks/a HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nX-Hub-Signature-256: sha256={}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{{",
        "ab".repeat(32)
    );
    let mut slow = Vec::new();
    for i in 0..SLOW_CLIENTS {
        let from = Ipv4Addr::new(127, 0, 1, 2 + (i / SLOW_PER_ADDRESS) as u8);
        let mut s = connect_from(from, server.port).expect("a slow client connects");
        s.write_all(slow_head.as_bytes()).unwrap();
        slow.push(s);
    }
    let trickler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held = slow;
            while !stop.load(Ordering::Relaxed) {
                held.retain_mut(|s| s.write_all(b" ").is_ok());
                std::thread::sleep(Duration::from_secs(2)); // (the attacker's pace)
            }
            held.len()
        })
    };
    // One address over its share: the rest are closed at once.
    let mut greedy = Vec::new();
    for _ in 0..100 {
        if let Ok(s) = connect_from(Ipv4Addr::new(127, 0, 2, 1), server.port) {
            greedy.push(s);
        }
    }
    let flooders: Vec<_> = (0..LOGIN_FLOODERS)
        .map(|i| {
            let (stop, port) = (stop.clone(), server.port);
            std::thread::spawn(move || {
                let from = Ipv4Addr::new(127, 0, 3, 1 + i as u8);
                let body = json!({"user": "admin", "password": "guess"}).to_string();
                let mut answers = [0usize; 3]; // 401, 429, other
                for _ in 0..LOGINS_EACH {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match login_attempt(from, port, &body) {
                        Some(401) => answers[0] += 1,
                        Some(429) => answers[1] += 1,
                        _ => answers[2] += 1,
                    }
                }
                answers
            })
        })
        .collect();
    let bodies: Vec<_> = (0..BIG_BODIES)
        .map(|i| {
            let port = server.port;
            std::thread::spawn(move || {
                let from = Ipv4Addr::new(127, 0, 4, 1 + (i / 30) as u8);
                let project = if i % 2 == 0 { "a" } else { "no-such-project" };
                let Ok(mut s) = connect_from(from, port) else { return 0 };
                let head = format!(
                    "POST /hooks/{project} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-GitHub-Event: push\r\n\
                     X-Hub-Signature-256: sha256={}\r\nContent-Length: {BIG_BODY}\r\n\r\n",
                    "cd".repeat(32)
                );
                let chunk = vec![b' '; 1 << 20];
                let _ = s.write_all(head.as_bytes());
                for _ in 0..BIG_BODY / chunk.len() {
                    if s.write_all(&chunk).is_err() {
                        break;
                    }
                }
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                answer.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()).unwrap_or(0)
            })
        })
        .collect();
    // Closed by the server: end of stream or a reset; held: still open after two seconds.
    let greedy_closed = greedy
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let closed = match s.read(&mut [0u8; 1]) {
                    Ok(n) => n == 0,
                    Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
                };
                (closed, s)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect::<Vec<_>>();
    let (closed, greedy): (Vec<_>, Vec<_>) = greedy_closed.into_iter().partition(|(closed, _)| *closed);
    let greedy_closed = closed.len();
    let (cpu1, t1) = (cpu_secs(pid), Instant::now());
    let attacked = legitimate_client(&fleet, &server, &admin);
    let attacked_cpu = (cpu_secs(pid) - cpu1) / t1.elapsed().as_secs_f64();
    let statuses: Vec<u16> = bodies.into_iter().map(|b| b.join().unwrap()).collect();
    let rss_during = peak.load(Ordering::Relaxed) as f64;
    stop.store(true, Ordering::Relaxed);
    let logins: Vec<[usize; 3]> = flooders.into_iter().map(|f| f.join().unwrap()).collect();
    let still_held = trickler.join().unwrap();
    sampler.join().unwrap();
    drop(greedy);
    let after = timed_get(server.port, "/healthz", Duration::from_secs(2));
    let rss_after = rss_mib(pid);

    let sum = |i: usize| logins.iter().map(|a| a[i]).sum::<usize>();
    let count = |code: u16| statuses.iter().filter(|s| **s == code).count();
    eprintln!(
        "server under attack: {SLOW_CLIENTS} slow clients ({still_held} still held at the end), {LOGIN_FLOODERS} login \
         flooders ({} wrong, {} throttled, {} other), {BIG_BODIES} bodies of 16 MiB (404 {}, 401 {}, 503 {}, other {}), \
         {greedy_closed} of 100 connections over one address's share closed\n\
         | phase | /healthz p50 | /healthz max | unanswered | deploy via socket | deploy via TCP | server CPU | RSS |\n\
         | quiet | {:?} | {:?} | {} | {:?} | {:?} | {:.0}% | {rss0:.0} MiB |\n\
         | attacked | {:?} | {:?} | {} | {:?} | {:?} | {:.0}% | peak {rss_during:.0} MiB |\n\
         | after | {:?} | | | | | | {rss_after:.0} MiB |",
        sum(0),
        sum(1),
        sum(2),
        count(404),
        count(401),
        count(503),
        statuses.len() - count(404) - count(401) - count(503),
        quiet.healthz_p50,
        quiet.healthz_max,
        quiet.unanswered,
        quiet.socket_deploy,
        quiet.tcp_deploy,
        quiet_cpu * 100.0,
        attacked.healthz_p50,
        attacked.healthz_max,
        attacked.unanswered,
        attacked.socket_deploy,
        attacked.tcp_deploy,
        attacked_cpu * 100.0,
        after.map(|a| a.1),
    );
    assert!(quiet.socket_deploy.is_some() && quiet.tcp_deploy.is_some(), "{quiet:?}");
    assert!(attacked.socket_deploy.is_some(), "the deploy through the socket failed under the attack");
    assert!(attacked.tcp_deploy.is_some(), "the deploy through TCP failed under the attack");
    assert_eq!(attacked.unanswered, 0, "/healthz went unanswered under the attack: {attacked:?}");
    assert!(attacked.healthz_max < Duration::from_secs(1), "/healthz took over a second: {attacked:?}");
    assert!(greedy_closed >= 100 - 64, "one address held {} connections", 100 - greedy_closed);
    assert!(sum(1) > 0, "no login was throttled");
    assert_eq!(count(404), BIG_BODIES / 2, "bodies to an unknown project: {statuses:?}");
    assert!(rss_during - rss0 < 200.0, "the body flood took the server from {rss0:.0} to {rss_during:.0} MiB");
    assert!(after.is_some_and(|a| a.0 == 200));
}
