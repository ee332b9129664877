//! A real OpenID Connect provider for the sign-in tests: npm's `oidc-provider` 9 under node
//! (`tests/oidc/provider.mjs`, its packages installed by `.ci/run` with `npm ci`), over https
//! with a certificate from a CA of the test's, on a free loopback port, killed when dropped.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Proc, free_port};

pub const CLIENT_ID: &str = "slipway";
pub const CLIENT_SECRET: &str = "slipway-oidc-client-secret";

pub struct OidcProvider {
    pub port: u16,
    /// The CA (PEM file) of its certificate.
    pub ca: PathBuf,
    _proc: Proc,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// Whether node and the provider's packages are here.
pub fn available() -> bool {
    dir().join("node_modules/oidc-provider").is_dir()
        && Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success())
}

impl OidcProvider {
    /// The port it will listen on, before it starts (Slipway's config names the issuer).
    pub fn port() -> u16 {
        free_port()
    }

    pub fn issuer(port: u16) -> String {
        format!("https://127.0.0.1:{port}")
    }

    /// Its certificate and key in `work`, and the CA that signed them: the CA's file.
    pub fn certificates(work: &Path) -> PathBuf {
        std::fs::create_dir_all(work).unwrap();
        let (ca, cert, key) = crate::pg::server_tls();
        for (name, text) in [("ca.pem", &ca), ("cert.pem", &cert), ("key.pem", &key)] {
            std::fs::write(work.join(name), text).unwrap();
        }
        work.join("ca.pem")
    }

    /// Start on `port` with the [`certificates`](Self::certificates) of `work`, sending
    /// browsers back to `redirect`, with `accounts` (`{"alice": {"groups": [...]}}`).
    pub fn start(work: &Path, port: u16, redirect: &str, accounts: &serde_json::Value) -> OidcProvider {
        let mut child = Command::new("node")
            .current_dir(dir())
            .arg("provider.mjs")
            .arg(port.to_string())
            .arg(work.join("cert.pem"))
            .arg(work.join("key.pem"))
            .arg(redirect)
            .arg(accounts.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            let line = lines.next().expect("the OIDC provider exited before it listened").unwrap();
            if line.trim() == "listening" {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines.by_ref() {});
        OidcProvider { port, ca: work.join("ca.pem"), _proc: Proc(child) }
    }

    /// A `[sign_in.oidc]` section for this provider.
    pub fn config(port: u16, ca: &Path) -> String {
        format!(
            "[sign_in.oidc]\nissuer = \"{}\"\nca_file = \"{}\"\nclient_id = \"{CLIENT_ID}\"\n\
             client_secret = \"{CLIENT_SECRET}\"\nlabel = \"Example SSO\"\n",
            OidcProvider::issuer(port),
            ca.display()
        )
    }
}
