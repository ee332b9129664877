//! The harness for `slipctl serve`: start and stop the real server, HTTP/1.0 requests, and a
//! reader of Server-Sent Events.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{Fleet, bin, terminate};

/// A running `slipctl serve` for a fleet's home, stopped (SIGTERM) on drop.
pub struct Server {
    pub port: u16,
    pub child: Child,
    /// The agents' endpoint's URL (`--join-listen`), when it has one.
    pub join_url: Option<String>,
}

impl Server {
    /// Start `slipctl serve` and wait for the line saying it answers.
    pub fn start(fleet: &Fleet) -> Server {
        Server::start_home(&fleet.home, &bin("slipctl"))
    }

    /// The same, for controller home `home` with this `slipctl`.
    pub fn start_home(home: &std::path::Path, slipctl: &std::path::Path) -> Server {
        Server::start_with(home, slipctl, &[])
    }

    /// The same, with more `serve` arguments (`--public-url …`).
    pub fn start_with(home: &std::path::Path, slipctl: &std::path::Path, args: &[&str]) -> Server {
        Server::start_logging(home, slipctl, args, Stdio::inherit())
    }

    /// The same, its standard error going to `stderr` (a file a test reads).
    pub fn start_logging(home: &std::path::Path, slipctl: &std::path::Path, args: &[&str], stderr: Stdio) -> Server {
        use std::io::BufRead;
        // Port 0: the server picks one and says which (no race with other tests for a port).
        let mut child = Command::new(slipctl)
            .arg("--home")
            .arg(home)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut join_url = None;
        let port = loop {
            let line = lines.next().expect("slipctl serve exited before it listened").unwrap();
            if let Some(rest) = line.strip_prefix("slipctl serve: agents join at ") {
                join_url = rest.split_whitespace().next().map(str::to_owned);
            }
            if let Some(rest) = line.strip_prefix("slipctl serve: listening on http://127.0.0.1:") {
                break rest.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
            }
        };
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Server { port, child, join_url }
    }

    /// SIGTERM, and wait for it to exit; its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        self.child.wait().unwrap()
    }

    /// One request: (status, JSON body or `null`). `auth` is extra header lines.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let (status, _, text) = http(self.port, method, path, headers, body);
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    /// Log in: the `Cookie` header value and the CSRF token.
    pub fn login(&self, user: &str, password: &str) -> (String, String) {
        let body = serde_json::json!({"user": user, "password": password}).to_string();
        let (status, head, text) =
            http(self.port, "POST", "/api/v1/session", &[("Content-Type", "application/json")], Some(&body));
        assert_eq!(status, 200, "login {user}: {text}");
        let cookie = head
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: ").or_else(|| l.strip_prefix("Set-Cookie: ")))
            .and_then(|c| c.split(';').next())
            .expect("a session cookie")
            .to_owned();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        (cookie, doc["csrf_token"].as_str().unwrap().to_owned())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            terminate(&mut self.child);
        }
    }
}

/// A TCP connection to 127.0.0.1:`port` from loopback address `from` (127.0.0.0/8 is all
/// loopback: tests play many clients from many addresses on this machine alone).
pub fn connect_from(from: std::net::Ipv4Addr, port: u16) -> std::io::Result<std::net::TcpStream> {
    if from == std::net::Ipv4Addr::LOCALHOST {
        return std::net::TcpStream::connect(("127.0.0.1", port));
    }
    // (std cannot bind before it connects; tokio can. On a thread of its own, so that callers
    // inside a runtime — the browser tests — may use it too.)
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let rt =
                    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap());
                rt.block_on(async {
                    let socket = tokio::net::TcpSocket::new_v4()?;
                    socket.bind((from, 0).into())?;
                    let stream = socket.connect(([127, 0, 0, 1], port).into()).await?;
                    let stream = stream.into_std()?;
                    stream.set_nonblocking(false)?;
                    Ok(stream)
                })
            })
            .join()
            .expect("the connecting thread")
    })
}

/// Raise this test process's open-file limit to its hard limit (a test holding a thousand
/// connections needs more than 1,024).
pub fn raise_fd_limit() {
    slipway_common::process::raise_fd_limit();
}

/// One HTTP/1.0 request on loopback: (status, head, body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, String) {
    http_from(std::net::Ipv4Addr::LOCALHOST, port, method, path, headers, body)
}

/// [`http`] from loopback address `from`.
pub fn http_from(
    from: std::net::Ipv4Addr,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = connect_from(from, port).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").map(|(h, b)| (h.to_owned(), b.to_owned())).unwrap_or_default();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head, body)
}

/// One Server-Sent Event: its `id:`, `event:` and `data:` (parsed JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct Sse {
    pub id: Option<u32>,
    pub event: String,
    pub data: serde_json::Value,
}

/// A reader of an event stream (`GET …/events`), event by event.
pub struct SseReader {
    lines: std::io::Lines<std::io::BufReader<std::net::TcpStream>>,
    pub status: u16,
}

impl SseReader {
    pub fn open(port: u16, path: &str, headers: &[(&str, &str)]) -> SseReader {
        use std::io::{BufRead, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut req = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).unwrap();
        let mut lines = std::io::BufReader::new(stream).lines();
        let status_line = lines.next().unwrap().unwrap();
        let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        for line in lines.by_ref() {
            if line.unwrap().is_empty() {
                break;
            }
        }
        SseReader { lines, status }
    }

    /// The next event; `None` when the stream ended.
    pub fn next_event(&mut self) -> Option<Sse> {
        let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
        for line in self.lines.by_ref() {
            let line = line.ok()?;
            if line.is_empty() {
                if data.is_empty() {
                    continue;
                }
                return Some(Sse { id, event, data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null) });
            }
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        None
    }
}

/// A metric sample: its name, labels and value.
pub type Sample = (String, std::collections::BTreeMap<String, String>, f64);

/// One sample of a metrics page, as a real Prometheus parser (Python's `prometheus_client`,
/// OpenMetrics) reads it: (name, labels, value). Panics when the page does not parse.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    use std::io::Write;
    let script = "import sys, json\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        out = []\n\
        for family in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in family.samples:\n\
        \x20       out.append([s.name, s.labels, s.value])\n\
        print(json.dumps(out))\n";
    let mut child = Command::new(python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the metrics page does not parse: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    let doc: Vec<(String, std::collections::BTreeMap<String, String>, f64)> =
        serde_json::from_slice(&out.stdout).unwrap();
    doc
}

/// Debian's Python, where `apt-get install python3-prometheus-client` puts the parser (a
/// `python3` earlier in PATH, e.g. pyenv's, may not have it).
fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" }
}

/// Whether Python's Prometheus parser is here.
pub fn have_metrics_parser() -> bool {
    Command::new(python()).args(["-c", "import prometheus_client"]).status().is_ok_and(|s| s.success())
}

/// The value of sample `name` whose labels include all of `labels` (summed over the rest).
pub fn sample(
    samples: &[(String, std::collections::BTreeMap<String, String>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    let matching: Vec<f64> = samples
        .iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, _, v)| *v)
        .collect();
    if matching.is_empty() { None } else { Some(matching.iter().sum()) }
}

/// One request a [`sink`] got: its path, its headers (names lowercased) and its body.
pub type Received = (String, std::collections::BTreeMap<String, String>, String);

/// A small HTTP sink that records every request and answers 200, or 500 on paths starting
/// with `/fail`: (port, the requests as (path, headers lowercased, body)).
pub fn sink() -> (u16, std::sync::mpsc::Receiver<Received>) {
    use std::io::{BufRead, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut reader = std::io::BufReader::new(stream);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
            let mut headers = std::collections::BTreeMap::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.insert(k.trim().to_lowercase(), v.trim().to_owned());
                }
            }
            let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let status = if path.starts_with("/fail") { "500 Internal Server Error" } else { "200 OK" };
            let _ = write!(reader.get_mut(), "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if tx.send((path, headers, String::from_utf8_lossy(&body).into_owned())).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

/// Add user `name` (password `<name>-password`) with `grants` (project, env, role).
pub fn add_user(fleet: &Fleet, name: &str, grants: &[(&str, &str, &str)]) {
    add(fleet, name, false, grants);
}

/// Add admin `name` (password `<name>-password`).
pub fn add_admin(fleet: &Fleet, name: &str) {
    add(fleet, name, true, &[]);
}

fn add(fleet: &Fleet, name: &str, admin: bool, grants: &[(&str, &str, &str)]) {
    let mut cmd = std::process::Command::new(crate::bin("slipctl"));
    cmd.arg("--home").arg(&fleet.home).args(["user", "add", name, "--password-stdin"]);
    if admin {
        cmd.arg("--admin");
    }
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{name}-password").unwrap();
    assert!(child.wait().unwrap().success(), "user add {name}");
    for (p, e, role) in grants {
        fleet.slipctl(&["user", "grant", name, p, e, role]).ok();
    }
}
