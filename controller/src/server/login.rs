//! Logging in without letting anyone flood it (DESIGN.md "Server", SECURITY.md): a password is
//! checked by argon2id on one of [`verifiers`] threads of its own, with at most a few logins
//! waiting (busy: 429 with `Retry-After`, never a stalled async worker), and failures are budgeted per address, per
//! (user, address) and per user with a back-off that doubles: one address guessing is slowed
//! to a crawl, while the back-off of a user attacked from everywhere is capped at
//! [`USER_CAP`] so that nobody can lock a real user out for long. A login from a page of
//! another site is refused (login CSRF). Every failure is logged and counted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};

use crate::server::error::ApiError;
use crate::server::listen::Peer;

/// Passwords checked at once (argon2id: 19 MiB and tens of milliseconds of a core each): half
/// the cores, at least one, so a flood of logins leaves the rest to everything else.
pub fn verifiers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}
/// Logins that may wait for a verifier; more are told to come back.
const QUEUE: usize = 8;
/// Sign-ins the company directory checks at once.
const DIRECTORY_AT_ONCE: usize = 16;
/// Failures forgiven before the back-off starts, and the longest back-off.
const ADDR_FREE: u32 = 10;
const PAIR_FREE: u32 = 5;
const USER_FREE: u32 = 20;
const ADDR_CAP: Duration = Duration::from_secs(300);
const PAIR_CAP: Duration = Duration::from_secs(300);
pub const USER_CAP: Duration = Duration::from_secs(30);
/// A key with no failure for this long is forgotten.
const FORGET: Duration = Duration::from_secs(900);
/// At most this many keys are kept (the oldest go first).
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Addr(String),
    Pair(String, String),
    User(String),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    until: Instant,
}

/// A password to check against a PHC string, and where to say whether it matched.
type Job = (String, String, tokio::sync::oneshot::Sender<bool>);

pub struct Logins {
    /// The verifier threads' queue: a full queue is a busy server.
    jobs: std::sync::mpsc::SyncSender<Job>,
    failures: Mutex<HashMap<Key, Failures>>,
    /// Checks with the company directory at once (more are told to come back).
    pub directory: tokio::sync::Semaphore,
}

impl Default for Logins {
    /// [`verifiers`] threads of their own check passwords, one at a time each: argon2id takes
    /// 19 MiB a check, and a thread that keeps its memory reuses it (checks on the runtime's
    /// blocking pool left a 19 MiB allocator arena on each of its many threads).
    fn default() -> Self {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..verifiers() {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new().name(format!("verify-{n}")).spawn(move || {
                let mut blocks = Vec::new();
                loop {
                    let job = queue.lock().expect("verifier queue").recv();
                    let Ok((password, phc, answer)) = job else { return };
                    let _ = answer.send(super::auth::verify_password_in(&password, &phc, &mut blocks));
                }
            });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a password verifier thread");
            }
        }
        Logins { jobs, failures: Mutex::default(), directory: tokio::sync::Semaphore::new(DIRECTORY_AT_ONCE) }
    }
}

/// Why a login was refused before its password was looked at, or after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many failures: come back after this long.
    Throttled(Duration),
    /// Every verifier is busy.
    Busy,
    /// Wrong user or password.
    Wrong,
}

impl Refusal {
    pub fn word(self) -> &'static str {
        match self {
            Refusal::Throttled(_) => "throttled",
            Refusal::Busy => "busy",
            Refusal::Wrong => "password",
        }
    }

    pub fn to_api(self) -> ApiError {
        match self {
            Refusal::Wrong => ApiError::unauthorized("wrong user or password"),
            Refusal::Busy => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "the server is checking many logins",
                "try again in a second",
            )
            .retry_after(1),
            Refusal::Throttled(wait) => {
                let secs = wait.as_secs().max(1);
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed logins from here or for this user",
                    format!("wait {secs} s and try again"),
                )
                .retry_after(secs)
            }
        }
    }
}

/// The address a budget counts for: the IP of a TCP peer, else the local socket.
fn addr_of(peer: &Peer) -> String {
    match peer {
        Peer::Tcp(addr) => crate::server::listen::per_address_key(addr.ip()).to_string(),
        other => other.to_string(),
    }
}

fn backoff(count: u32, free: u32, cap: Duration) -> Duration {
    if count < free {
        return Duration::ZERO;
    }
    let doublings = (count - free).min(16);
    Duration::from_secs(1 << doublings).min(cap)
}

impl Logins {
    fn keys(user: &str, addr: &str) -> [(Key, u32, Duration); 3] {
        [
            (Key::Addr(addr.to_owned()), ADDR_FREE, ADDR_CAP),
            (Key::Pair(user.to_owned(), addr.to_owned()), PAIR_FREE, PAIR_CAP),
            (Key::User(user.to_owned()), USER_FREE, USER_CAP),
        ]
    }

    /// How long `user` from `peer` must wait before trying again (zero: go on). The user's own
    /// back-off holds only for addresses that failed for that user: the real user, from an
    /// address that never guessed wrong, is not held out by what others do.
    fn wait(&self, user: &str, addr: &str, now: Instant) -> Duration {
        let failures = self.failures.lock().expect("logins");
        let guessed_here = failures.contains_key(&Key::Pair(user.to_owned(), addr.to_owned()));
        Self::keys(user, addr)
            .iter()
            .filter(|(k, _, _)| guessed_here || !matches!(k, Key::User(_)))
            .filter_map(|(k, _, _)| failures.get(k))
            .map(|f| f.until.saturating_duration_since(now))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    fn failed(&self, user: &str, addr: &str, now: Instant) {
        let mut failures = self.failures.lock().expect("logins");
        if failures.len() >= MAX_KEYS {
            failures.retain(|_, f| now.duration_since(f.last) < FORGET);
            if failures.len() >= MAX_KEYS {
                let oldest = failures.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    failures.remove(&k);
                }
            }
        }
        for (key, free, cap) in Self::keys(user, addr) {
            let f = failures.entry(key).or_insert(Failures { count: 0, last: now, until: now });
            if now.duration_since(f.last) >= FORGET {
                f.count = 0;
            }
            f.count += 1;
            f.last = now;
            f.until = now + backoff(f.count, free, cap);
        }
    }

    fn succeeded(&self, user: &str, addr: &str) {
        self.failures.lock().expect("logins").remove(&Key::Pair(user.to_owned(), addr.to_owned()));
    }

    /// Check `password` for `user` against `phc` (a dummy hash when the user does not exist:
    /// the same work and the same answer), within the budgets.
    pub async fn verify(
        &self,
        user: &str,
        exists: bool,
        phc: String,
        password: &str,
        peer: &Peer,
    ) -> Result<(), Refusal> {
        self.held(user, peer)?;
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.jobs.try_send((password.to_owned(), phc, answer)).map_err(|_| Refusal::Busy)?;
        let ok = answered.await.unwrap_or(false) && exists;
        self.outcome(user, peer, ok);
        if ok { Ok(()) } else { Err(Refusal::Wrong) }
    }

    /// Refused when the budgets say wait (a password here, or the company directory's check).
    pub fn held(&self, user: &str, peer: &Peer) -> Result<(), Refusal> {
        let wait = self.wait(user, &addr_of(peer), Instant::now());
        if wait.is_zero() { Ok(()) } else { Err(Refusal::Throttled(wait)) }
    }

    /// What a check found, counted in the budgets.
    pub fn outcome(&self, user: &str, peer: &Peer, ok: bool) {
        let addr = addr_of(peer);
        if ok {
            self.succeeded(user, &addr);
        } else {
            self.failed(user, &addr, Instant::now());
        }
    }
}

/// A login must come from this server's own pages (or a client that is no browser): a page of
/// another site that posts a login form would sign its visitor in as the attacker (login CSRF).
/// Browsers say where a request comes from in `Sec-Fetch-Site` and `Origin`.
pub fn same_origin(headers: &HeaderMap, public_url: &str) -> Result<(), ApiError> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let refused = |why: String| {
        ApiError::forbidden(
            format!("a login from another site is refused ({why})"),
            "log in from this server's own page",
        )
    };
    if let Some(site) = text("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return Err(refused(format!("Sec-Fetch-Site: {site}")));
    }
    if let Some(origin) = text(header::ORIGIN.as_str()) {
        let host = text(header::HOST.as_str()).unwrap_or("");
        let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
        let public = public_url.trim_end_matches('/');
        if origin != public && origin_host != host {
            return Err(refused(format!("Origin: {origin}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_and_is_capped() {
        assert_eq!(backoff(4, 5, PAIR_CAP), Duration::ZERO);
        assert_eq!(backoff(5, 5, PAIR_CAP), Duration::from_secs(1));
        assert_eq!(backoff(7, 5, PAIR_CAP), Duration::from_secs(4));
        assert_eq!(backoff(60, 5, PAIR_CAP), PAIR_CAP);
        assert_eq!(backoff(1000, USER_FREE, USER_CAP), USER_CAP, "a user is never held out longer than the cap");
    }

    #[test]
    fn one_address_guessing_is_held_back_but_the_user_elsewhere_is_not_for_long() {
        let logins = Logins::default();
        let now = Instant::now();
        for _ in 0..12 {
            logins.failed("alice", "203.0.113.9", now);
        }
        assert!(logins.wait("alice", "203.0.113.9", now) >= Duration::from_secs(4), "the guessing address waits");
        assert!(logins.wait("bob", "203.0.113.9", now) >= Duration::from_secs(2), "whoever it tries next");
        assert_eq!(logins.wait("alice", "198.51.100.1", now), Duration::ZERO, "alice from her own address");
        for i in 0..200 {
            logins.failed("alice", &format!("198.18.0.{i}"), now);
        }
        assert_eq!(logins.wait("alice", "198.18.0.7", now), USER_CAP, "spread over addresses: at most the cap");
        assert_eq!(logins.wait("alice", "198.18.0.7", now + USER_CAP), Duration::ZERO);
        assert_eq!(logins.wait("alice", "192.0.2.1", now), Duration::ZERO, "alice, who never guessed wrong");
    }

    #[test]
    fn logins_from_other_sites_are_refused() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
            }
            m
        };
        let url = "https://ops.example";
        assert!(same_origin(&h(&[]), url).is_ok(), "curl and slipctl send neither");
        assert!(same_origin(&h(&[("sec-fetch-site", "same-origin"), ("origin", url)]), url).is_ok());
        assert!(same_origin(&h(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080")]), url).is_ok());
        assert!(same_origin(&h(&[("sec-fetch-site", "cross-site")]), url).is_err());
        assert!(same_origin(&h(&[("sec-fetch-site", "same-site")]), url).is_err());
        assert!(same_origin(&h(&[("host", "ops.example"), ("origin", "https://evil.example")]), url).is_err());
        assert!(same_origin(&h(&[("host", "ops.example"), ("origin", "null")]), url).is_err());
    }
}
