//! The harness for `slipctl serve`: start and stop the real server, HTTP/1.0 requests, and a
//! reader of Server-Sent Events.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{Fleet, bin, free_port, terminate};

/// A running `slipctl serve` for a fleet's home, stopped (SIGTERM) on drop.
pub struct Server {
    pub port: u16,
    pub child: Child,
}

impl Server {
    /// Start `slipctl serve` and wait for the line saying it answers.
    pub fn start(fleet: &Fleet) -> Server {
        use std::io::BufRead;
        let port = free_port();
        let mut child = Command::new(bin("slipctl"))
            .arg("--home")
            .arg(&fleet.home)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            let line = lines.next().expect("slipctl serve exited before it listened").unwrap();
            if line.starts_with("slipctl serve: listening") {
                break;
            }
        }
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Server { port, child }
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

/// One HTTP/1.0 request on loopback: (status, head, body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
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
