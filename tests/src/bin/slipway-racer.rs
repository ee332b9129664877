//! An attacker for the end-to-end tests, run as the unprivileged app user: it races the agent
//! until its standard input closes (the test drops the pipe when the deploys are done).
//!
//! * `exchange A B`: swap the two names with `renameat2(RENAME_EXCHANGE)` over and over.
//! * `swap PATH link TARGET` / `swap PATH fifo`: keep `PATH.evil` a symlink to TARGET (or a fifo)
//!   and swap it with PATH over and over; PATH is resolved afresh each time (through `current`).
//! * `scan DIR NEEDLE`: read every file it can under DIR over and over; print each path whose
//!   content holds NEEDLE (a secret that must never reach this user).
//! * `flood ADDR FROM N`: open N TCP connections to ADDR from address FROM, say nothing, print
//!   `connected K`, and hold them.
//!
//! Prints `rounds N` (and `found PATH` lines) on exit.

#![forbid(unsafe_code)]

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

fn scan(dir: &Path, needle: &[u8], found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            scan(&path, needle, found);
        } else if kind.is_file()
            && let Ok(mut f) = std::fs::File::open(&path)
        {
            let mut buf = Vec::new();
            if f.read_to_end(&mut buf).is_ok() && buf.windows(needle.len()).any(|w| w == needle) {
                found.push(path.display().to_string());
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        flag.store(true, Ordering::Relaxed);
    });
    let mut rounds: u64 = 0;
    let mut found = Vec::new();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["exchange", a, b] => {
            while !stop.load(Ordering::Relaxed) {
                let _ = rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    *a,
                    rustix::fs::CWD,
                    *b,
                    rustix::fs::RenameFlags::EXCHANGE,
                );
                rounds += 1;
            }
        }
        ["swap", path, kind, rest @ ..] => {
            let evil = format!("{path}.evil");
            while !stop.load(Ordering::Relaxed) {
                match (*kind, rest) {
                    ("link", [target]) => {
                        let _ = std::os::unix::fs::symlink(target, &evil);
                    }
                    ("fifo", []) => {
                        let _ = rustix::fs::mknodat(
                            rustix::fs::CWD,
                            evil.as_str(),
                            rustix::fs::FileType::Fifo,
                            rustix::fs::Mode::from_raw_mode(0o644),
                            0,
                        );
                    }
                    _ => {
                        eprintln!("usage: slipway-racer swap PATH link TARGET | swap PATH fifo");
                        std::process::exit(2);
                    }
                }
                let _ = rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    *path,
                    rustix::fs::CWD,
                    evil.as_str(),
                    rustix::fs::RenameFlags::EXCHANGE,
                );
                rounds += 1;
            }
        }
        ["flood", addr, from, n] => {
            let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
            let max = limit.maximum.unwrap_or(65536);
            let _ = rustix::process::setrlimit(
                rustix::process::Resource::Nofile,
                rustix::process::Rlimit { current: Some(max), maximum: Some(max) },
            );
            let n: usize = n.parse().expect("count");
            let addr: std::net::SocketAddr = addr.parse().expect("address");
            let from: std::net::IpAddr = from.parse().expect("from address");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let conns = rt.block_on(async {
                let mut conns = Vec::new();
                for _ in 0..n {
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    socket.bind(std::net::SocketAddr::new(from, 0)).unwrap();
                    let connect = tokio::time::timeout(std::time::Duration::from_secs(1), socket.connect(addr));
                    if let Ok(Ok(c)) = connect.await {
                        conns.push(c);
                    }
                }
                conns
            });
            println!("connected {}", conns.len());
            use std::io::Write;
            let _ = std::io::stdout().flush();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            rounds = conns.len() as u64;
        }
        ["scan", dir, needle] => {
            while !stop.load(Ordering::Relaxed) {
                scan(Path::new(dir), needle.as_bytes(), &mut found);
                rounds += 1;
            }
        }
        _ => {
            eprintln!("usage: slipway-racer exchange A B | scan DIR NEEDLE");
            std::process::exit(2);
        }
    }
    found.sort();
    found.dedup();
    println!("rounds {rounds}");
    for f in &found {
        println!("found {f}");
    }
}
