//! A real S3-compatible server for the tests: `s3s-fs` (crates.io, Apache-2.0), a separate
//! process serving the S3 API (SigV4, presigned URLs) over a directory, installed by `.ci/run`
//! with `cargo install s3s-fs --version 0.14.1 --locked --features binary`. One per caller, on a
//! free loopback port, killed when dropped. Buckets are directories under its root; objects are
//! files in them (which lets a test play a store that returns other bytes).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Proc, free_port, wait_for};

pub const ACCESS_KEY: &str = "slipway-test";
pub const SECRET_KEY: &str = "slipway-test-secret-key";

pub struct S3 {
    pub port: u16,
    pub root: PathBuf,
    proc: Option<Proc>,
}

/// The `s3s-fs` binary: on PATH, or where `cargo install` put it.
fn binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file());
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    on_path.or_else(|| cargo_home.map(|c| c.join("bin/s3s-fs")).filter(|p| p.is_file()))
}

pub fn available() -> bool {
    binary().is_some()
}

impl S3 {
    /// Start a server over `root` (created; world-writable, and so are the objects it writes, so
    /// that a hook running as the app user can play the part of a store that lies).
    pub fn start(root: &Path) -> S3 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(root).unwrap();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut s3 = S3 { port: free_port(), root: root.to_path_buf(), proc: None };
        s3.run();
        s3
    }

    fn run(&mut self) {
        let binary = binary().expect("s3s-fs is installed (cargo install s3s-fs --version 0.14.1 --features binary)");
        let script = format!(
            "umask 000; exec '{}' --host 127.0.0.1 --port {} --access-key {ACCESS_KEY} --secret-key {SECRET_KEY} '{}'",
            binary.display(),
            self.port,
            self.root.display()
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.proc = Some(Proc(child));
        let port = self.port;
        wait_for("s3s-fs to listen", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    }

    /// Stop the server (a store that is down); `restart` brings it back on the same port.
    pub fn stop(&mut self) {
        self.proc = None;
        let port = self.port;
        wait_for("s3s-fs to stop", || std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }

    pub fn restart(&mut self) {
        self.run();
    }

    /// Create a bucket (a directory of the server's root).
    pub fn bucket(&self, name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        dir
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An `[artifacts]` section for this server, bucket and prefix.
    pub fn config(&self, bucket: &str, prefix: &str) -> String {
        format!(
            "[artifacts]\nstore = \"s3://{bucket}/{prefix}\"\nendpoint = \"{}\"\naccess_key = \"{ACCESS_KEY}\"\n\
             secret_key = \"{SECRET_KEY}\"\n",
            self.endpoint()
        )
    }

    /// Every object file under a bucket's prefix: (path relative to the bucket, size).
    pub fn objects(&self, bucket: &str) -> Vec<(String, u64)> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, u64)>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, base, out);
                } else if path.extension().is_some_and(|e| e == "zst") {
                    let rel = path.strip_prefix(base).unwrap().display().to_string();
                    out.push((rel, entry.metadata().unwrap().len()));
                }
            }
        }
        let mut out = Vec::new();
        let base = self.root.join(bucket);
        walk(&base, &base, &mut out);
        out.sort();
        out
    }
}
