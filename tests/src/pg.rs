//! A real PostgreSQL server for the tests (Debian's `postgresql`): one cluster per test
//! process, in a temp dir, on a free loopback port, run as the `postgres` user and killed with
//! the test process (its parent thread never ends; `setpriv --pdeathsig`). Each caller gets a
//! database of its own.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::free_port;

pub struct Cluster {
    pub port: u16,
    /// The CA (PEM file) of the server's TLS certificate (for 127.0.0.1); plain connections
    /// are served too.
    pub ca: PathBuf,
    _dir: PathBuf,
}

/// A CA and a server certificate for 127.0.0.1 signed by it: (CA PEM, certificate PEM, key PEM).
pub fn server_tls() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "test database CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// The directory of PostgreSQL's server programs (`initdb`, `postgres`), if installed.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> =
        std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| e.path().join("bin")).collect();
    versions.sort();
    versions.into_iter().rev().find(|b| b.join("initdb").exists() && b.join("postgres").exists())
}

/// Whether PostgreSQL's server, the `postgres` user and `psql` are here.
pub fn available() -> bool {
    bin_dir().is_some()
        && crate::is_root()
        && Command::new("id").arg("postgres").output().is_ok_and(|o| o.status.success())
        && Command::new("psql").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// The test process's cluster, started the first time.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(start)
}

static PRIVATE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn start() -> Cluster {
    // Clusters of test processes that are gone (their data dirs stay in the temp dir).
    for entry in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix("slipway-pg-").and_then(|rest| rest.split('-').next()?.parse::<u32>().ok());
        if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Cluster::init(&format!("slipway-pg-{}", std::process::id()))
}

impl Cluster {
    /// A cluster of the caller's own (one that a test stops and starts again).
    pub fn private() -> Cluster {
        let n = PRIVATE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Cluster::init(&format!("slipway-pg-{}-{n}", std::process::id()))
    }

    fn init(name: &str) -> Cluster {
        let bin = bin_dir().expect("PostgreSQL's server programs in /usr/lib/postgresql/*/bin");
        let dir = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("chown").args(["postgres:postgres"]).arg(&dir).status().unwrap();
        assert!(status.success());
        let data = dir.join("data");
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .args(["--auth=trust", "--username=slipway", "--no-sync", "--encoding=UTF8", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let (ca, cert, key) = server_tls();
        std::fs::write(dir.join("ca.pem"), ca).unwrap();
        std::fs::write(data.join("server.crt"), cert).unwrap();
        std::fs::write(data.join("server.key"), key).unwrap();
        for f in ["server.crt", "server.key"] {
            let status = Command::new("chown").args(["postgres:postgres"]).arg(data.join(f)).status().unwrap();
            assert!(status.success());
        }
        std::fs::set_permissions(data.join("server.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let cluster = Cluster { port: free_port(), ca: dir.join("ca.pem"), _dir: dir };
        cluster.start();
        cluster
    }

    /// Start the server (again) and wait until it answers.
    pub fn start(&self) {
        let bin = bin_dir().expect("PostgreSQL's server programs");
        let dir = self._dir.clone();
        let port = self.port;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("postgres.log")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // The server is a child of a thread that lives as long as the test process: when the
        // process ends, the kernel sends it SIGKILL (pdeathsig follows the parent thread).
        std::thread::spawn(move || {
            let child = Command::new("setpriv")
                .args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--pdeathsig=KILL", "--"])
                .arg(bin.join("postgres"))
                .arg("-D")
                .arg(dir.join("data"))
                .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
                .args(["-c", "max_connections=300", "-c", "ssl=on", "-c"])
                .arg(format!("unix_socket_directories={}", dir.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn();
            let _ = tx.send(child.map(|c| c.id()));
            loop {
                std::thread::park();
            }
        });
        rx.recv().unwrap().expect("start postgres");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "postgres did not start: {}",
                std::fs::read_to_string(self._dir.join("postgres.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the server at once (`pg_ctl stop -m immediate`), as a crash or a failover would.
    pub fn stop(&self) {
        let bin = bin_dir().expect("PostgreSQL's server programs");
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("pg_ctl"))
            .args(["stop", "-m", "immediate", "-D"])
            .arg(self._dir.join("data"))
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn answers(&self) -> bool {
        Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "slipway",
                "-d",
                "postgres",
                "-c",
                "SELECT 1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Cluster {
    /// Run one SQL statement in database `db`; its output.
    pub fn sql(&self, db: &str, statement: &str) -> String {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "slipway", "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", statement])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql {statement}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A new, empty database; its URL.
    pub fn database(&self) -> String {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("slipway_{}_{n}", std::process::id());
        self.sql("postgres", &format!("CREATE DATABASE {name}"));
        format!("postgres://slipway@127.0.0.1:{}/{name}", self.port)
    }
}
