//! Load for `bench/server.sh`: starts a deploy through a running `slipctl serve` while
//! `--pollers` clients poll the dashboard back to back and `--watchers` clients follow the
//! deploy's event stream, then prints one JSON line: the deploy's wall time, the pollers'
//! latency percentiles, and whether every watcher saw the complete event list. Each poller
//! waits `POLL_MS` between its requests (0: back to back).
//!
//!   slipway-load PORT TOKEN PROJECT ENV REF POLLERS WATCHERS POLL_MS

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use slipway_tests::{SseReader, http};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [port, token, project, env, git_ref, pollers, watchers, poll_ms] = args.as_slice() else {
        eprintln!("usage: slipway-load PORT TOKEN PROJECT ENV REF POLLERS WATCHERS POLL_MS");
        std::process::exit(2);
    };
    let port: u16 = port.parse().expect("port");
    let (pollers, watchers): (usize, usize) = (pollers.parse().expect("pollers"), watchers.parse().expect("watchers"));
    let pause = Duration::from_millis(poll_ms.parse().expect("poll_ms"));
    let auth = format!("Bearer {token}");
    let stop = Arc::new(AtomicBool::new(false));

    let poll_threads: Vec<_> = (0..pollers)
        .map(|_| {
            let (stop, auth) = (stop.clone(), auth.clone());
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let (status, _, _) = http(port, "GET", "/api/v1/dashboard", &[("Authorization", &auth)], None);
                    assert_eq!(status, 200, "dashboard");
                    latencies.push(t.elapsed());
                    std::thread::sleep(pause);
                }
                latencies
            })
        })
        .collect();

    let body = json!({"project": project, "env": env, "ref": git_ref, "full": true}).to_string();
    let started = Instant::now();
    let (status, _, text) = http(
        port,
        "POST",
        "/api/v1/deploys",
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        Some(&body),
    );
    assert_eq!(status, 202, "deploy: {text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["id"].as_u64().unwrap();
    let path = format!("/api/v1/deploys/{id}/events");
    let watch_threads: Vec<_> = (0..watchers)
        .map(|_| {
            let (path, auth) = (path.clone(), auth.clone());
            std::thread::spawn(move || {
                let mut reader = SseReader::open(port, &path, &[("Authorization", &auth)]);
                let mut events = Vec::new();
                while let Some(e) = reader.next_event() {
                    events.push(e.data);
                }
                events
            })
        })
        .collect();
    // The deploy's end, from its record.
    let record = loop {
        let (_, _, text) = http(port, "GET", &format!("/api/v1/deploys/{id}"), &[("Authorization", &auth)], None);
        let doc: Value = serde_json::from_str(&text).unwrap();
        if doc["status"] != "running" {
            break doc;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let observed = started.elapsed();
    let seen: Vec<Vec<Value>> = watch_threads.into_iter().map(|t| t.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    let mut latencies: Vec<Duration> = poll_threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
    };
    // The journal's outcome is written just after the record turns final: read it again now
    // that every watcher has its outcome.
    let (_, _, text) = http(port, "GET", &format!("/api/v1/deploys/{id}"), &[("Authorization", &auth)], None);
    let recorded = serde_json::from_str::<Value>(&text).unwrap()["events"].as_array().cloned().unwrap_or_default();
    println!(
        "{}",
        json!({
            "deploy": id,
            "status": record["status"],
            "deploy_ms": record["duration_ms"],
            "observed_ms": observed.as_millis() as u64,
            "polls": latencies.len(),
            "poll_p50_ms": pct(0.50),
            "poll_p99_ms": pct(0.99),
            "watchers": seen.len(),
            "watchers_complete": seen.iter().filter(|s| **s == recorded).count(),
            "events": recorded.len(),
        })
    );
}
