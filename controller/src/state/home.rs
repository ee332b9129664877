//! The controller home (`--home`, `SLIPWAY_HOME`, default `~/.local/share/slipway`):
//! `pki/` (CA and controller identity), `state/` (sled), `cache/` (git mirrors, artifacts).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use slipway_common::config::TlsPaths;
use slipway_common::pki::{Ca, Identity};
use slipway_common::tls::{TlsMaterial, controller_client_config};

use crate::error::{Context, CtlError, Result};

#[derive(Debug, Clone)]
pub struct Home {
    pub root: PathBuf,
}

/// The home's `config.toml` (optional): what the controller is set to beyond its flags.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeConfig {
    #[serde(default)]
    pub state: StateConfig,
    /// Artifacts in an S3-compatible store; without it, the controller pushes them to each host.
    pub artifacts: Option<ArtifactsConfig>,
    /// Where the audit trail is shipped (it is always kept in the state).
    #[serde(default)]
    pub audit: AuditConfig,
    /// Company sign-in (LDAP/AD, OpenID Connect) and the groups' grants.
    #[serde(default)]
    pub sign_in: crate::state::sign_in::SignInConfig,
}

/// `[audit]`: ship every audit record, in order, to a syslog server and/or an OTLP collector.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// `tcp://HOST:PORT` or `tls://HOST:PORT`: RFC 5424 messages, octet-counted (RFC 6587).
    pub syslog: Option<String>,
    /// For `tls://`: the CA that signed the syslog server's certificate (else the public roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// `http(s)://HOST:PORT`: OpenTelemetry logs over OTLP/HTTP (JSON) to `<otlp>/v1/logs`.
    pub otlp: Option<String>,
}

/// `[artifacts]`: where artifacts are uploaded once, for hosts to fetch by presigned URL.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsConfig {
    /// `s3://BUCKET[/PREFIX]`.
    pub store: String,
    /// `http(s)://HOST[:PORT]` of the S3 API (MinIO, Ceph RGW, Garage, Aliyun OSS, AWS…).
    pub endpoint: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// Else `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` from the environment.
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    /// Path-style URLs (`endpoint/bucket/key`), which every S3-compatible server speaks; `false`
    /// for virtual-host style (`bucket.endpoint/key`).
    #[serde(default = "yes")]
    pub path_style: bool,
    /// How long a presigned URL lives; each host's stage gets a fresh one.
    #[serde(default = "default_url_ttl")]
    pub url_ttl_secs: u64,
    /// The CA (PEM) the endpoint's certificate chains to, for an https endpoint with its own CA;
    /// sent to the agents with each URL. Else the public roots.
    pub ca_file: Option<PathBuf>,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn yes() -> bool {
    true
}

fn default_url_ttl() -> u64 {
    900
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `postgres://USER:PASSWORD@HOST:PORT/DB`: the state in PostgreSQL instead of sled.
    pub url: Option<String>,
    /// The CA (PEM) that signed the database server's certificate: TLS to the database,
    /// required and verified (the host of `url` must be in its certificate).
    pub ca_file: Option<PathBuf>,
    /// 32 random bytes (hex or base64), the same on every node of the database: the CA is kept
    /// in the database sealed with it, so every node talks to the same agents.
    pub key_file: Option<PathBuf>,
}

/// Where the state is kept when not in sled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Database {
    pub url: String,
    pub ca_file: Option<PathBuf>,
}

impl HomeConfig {
    /// `<home>/config.toml`, or the defaults when there is none.
    pub fn load(home: &Path) -> Result<HomeConfig> {
        let path = home.join("config.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HomeConfig::default()),
            Err(e) => return Err(CtlError::failed(format!("cannot read {}: {e}", path.display()))),
        };
        toml::from_str(&text).map_err(|e| {
            CtlError::bad(format!("{}: {}", path.display(), e.to_string().trim_end().replace('\n', "\n  ")))
                .fix("see ARCHITECTURE.md \"Controller state\" for its keys ([state] url)")
        })
    }
}

/// A path of the home's `config.toml`: relative ones are the home's.
pub fn in_home(home: &Path, path: &Path) -> PathBuf {
    if path.is_relative() { home.join(path) } else { path.to_owned() }
}

/// The text of a file the home's `config.toml` names under `key` (a CA, a secret): an error
/// names the setting and the path it was read at.
pub fn read_in_home(home: &Path, path: &Path, key: &str) -> Result<String> {
    let path = in_home(home, path);
    std::fs::read_to_string(&path).map_err(|e| CtlError::bad(format!("{key} {}: {e}", path.display())))
}

/// `[state] key_file` of this home (relative to it), if set.
pub fn key_file_of(home: &Path) -> Result<Option<PathBuf>> {
    Ok(HomeConfig::load(home)?.state.key_file.map(|p| in_home(home, &p)))
}

/// The PostgreSQL database of the home whose state directory is `state_dir`, if it has one.
pub fn database_of(state_dir: &Path) -> Result<Option<Database>> {
    let Some(home) = state_dir.parent() else { return Ok(None) };
    let state = HomeConfig::load(home)?.state;
    let ca_file = state.ca_file.map(|p| in_home(home, &p));
    Ok(state.url.filter(|u| !u.trim().is_empty()).map(|url| Database { url, ca_file }))
}

/// A certificate's DER as PEM.
pub fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = text.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64")).collect();
    format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
}

/// Replace `path` with `content` at `mode` in one rename (never half-written).
fn replace(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    slipway_common::files::replace(path, content, mode).context(format_args!("cannot replace {}", path.display()))
}

/// Write a file that must not exist yet, with `mode`, and flush it to disk.
pub fn write_new(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .context(format_args!("cannot create {}", path.display()))?;
    f.write_all(content).and_then(|()| f.sync_all()).context(format_args!("cannot write {}", path.display()))
}

/// Make `dir` (and missing parents) a directory only its owner can enter: created 0700, and an
/// existing one narrowed to 0700.
pub fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .context(format_args!("cannot create {}", dir.display()))?;
    let meta = std::fs::metadata(dir).context(format_args!("cannot inspect {}", dir.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .context(format_args!("cannot restrict {}", dir.display()))?;
    }
    Ok(())
}

/// Narrow every file under `dir` to 0600 and every directory to 0700 (best effort; symlinks are
/// left alone).
pub fn restrict_tree(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = entry.path().symlink_metadata() else { continue };
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            if mode != 0o700 {
                let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o700));
            }
            restrict_tree(&entry.path());
        } else if meta.is_file() && mode & 0o077 != 0 {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode & 0o700));
        }
    }
}

impl Home {
    /// Make the home and its directories private to the controller's user (they hold the CA
    /// key, vars, hook output and artifacts with the envs' config overlays).
    pub fn secure(&self) -> Result<()> {
        if !self.root.exists() {
            return Ok(());
        }
        for dir in [self.root.clone(), self.pki(), self.state(), self.cache()] {
            if dir.exists() {
                private_dir(&dir)?;
            }
        }
        Ok(())
    }

    pub fn resolve(explicit: Option<PathBuf>) -> Result<Home> {
        let root = match explicit {
            Some(p) => p,
            None => {
                let base = std::env::var_os("HOME").ok_or_else(|| {
                    CtlError::bad("cannot find the controller home: set --home or SLIPWAY_HOME (HOME is unset)")
                })?;
                PathBuf::from(base).join(".local/share/slipway")
            }
        };
        let root = if root.is_absolute() { root } else { std::env::current_dir().context("current dir")?.join(root) };
        let home = Home { root };
        home.secure()?;
        Ok(home)
    }

    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }
    pub fn state(&self) -> PathBuf {
        self.root.join("state")
    }
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }
    /// Builds pushed by CI (never evicted, unlike `cache/`).
    pub fn artifacts(&self) -> PathBuf {
        self.root.join("artifacts")
    }

    fn ca_paths(&self) -> (PathBuf, PathBuf) {
        (self.pki().join("ca.pem"), self.pki().join("ca.key"))
    }

    pub fn controller_tls(&self) -> TlsPaths {
        TlsPaths {
            ca: self.pki().join("ca.pem"),
            cert: self.pki().join("controller.pem"),
            key: self.pki().join("controller.key"),
        }
    }

    /// `slipctl init`: create the CA and the controller identity; never overwrite a CA.
    /// Create the CA and the controller identity. On a home that already holds a complete,
    /// consistent set it does nothing and says so (`Ok(false)`: safe to run again, as Ansible
    /// does); a partial or mismatched set is refused, never replaced.
    pub fn init(&self) -> Result<bool> {
        let (ca_pem, ca_key) = self.ca_paths();
        if ca_pem.exists() || ca_key.exists() {
            return match self.consistent() {
                Ok(()) => Ok(false),
                Err(why) => Err(CtlError::bad(format!(
                    "the home {} holds a CA that is not usable as it is ({why}): refusing to overwrite it (it \
                     signs every agent's certificate)",
                    self.pki().display()
                ))
                .fix("restore the missing files from a backup, or use another --home for a new fleet")),
            };
        }
        for dir in [self.root.clone(), self.pki(), self.state(), self.cache()] {
            private_dir(&dir)?;
        }
        std::fs::set_permissions(self.pki(), std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .context("cannot restrict pki/")?;
        let (ca, key_pem) = Ca::generate()?;
        let controller = ca.issue(&Identity::Controller)?;
        let tls = self.controller_tls();
        write_new(&ca_key, key_pem.as_bytes(), 0o600)?;
        write_new(&tls.key, controller.key_pem.as_bytes(), 0o600)?;
        write_new(&tls.cert, controller.cert_pem.as_bytes(), 0o644)?;
        write_new(&ca_pem, ca.cert_pem().as_bytes(), 0o644)?;
        Ok(true)
    }

    /// Whether the pki/ files are all there and belong together.
    fn consistent(&self) -> std::result::Result<(), String> {
        let (ca_pem, ca_key) = self.ca_paths();
        let tls = self.controller_tls();
        for p in [&ca_pem, &ca_key, &tls.cert, &tls.key] {
            if !p.exists() {
                return Err(format!("{} is missing", p.display()));
            }
        }
        self.load_ca().map_err(|e| format!("the CA does not load: {e}"))?;
        self.client_tls().map_err(|e| format!("the controller identity does not load: {e}"))?;
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
        let der = |pem: String| slipway_common::pki::first_cert_der(&pem).map_err(|e| e.to_string());
        let controller = der(read(&tls.cert)?)?;
        let bundle = slipway_common::pki::certs_der(&read(&ca_pem)?).map_err(|e| e.to_string())?;
        // (During a CA rotation the controller's certificate is still the old CA's.)
        for ca in &bundle {
            if slipway_common::pki::issued_by(&controller, ca).map_err(|e| e.to_string())? {
                return Ok(());
            }
        }
        Err(format!("{} was not issued by a CA of {}", tls.cert.display(), ca_pem.display()))
    }

    fn require_init(&self) -> Result<()> {
        if !self.ca_paths().0.exists() {
            return Err(CtlError::bad(format!(
                "no CA in {}: run `slipctl init` first (or pass the right --home)",
                self.root.display()
            )));
        }
        Ok(())
    }

    /// The CA that issues certificates now: the first of `pki/ca.pem` (the rest of the file
    /// are CAs still trusted during a rotation), with `pki/ca.key`.
    pub fn load_ca(&self) -> Result<Ca> {
        let first = self.ca_bundle()?.into_iter().next().expect("a bundle holds a certificate");
        let key = self.ca_paths().1;
        let key = std::fs::read_to_string(&key).context(format_args!("cannot read {}", key.display()))?;
        Ok(Ca::from_pem(&pem_of(&first), &key)?)
    }

    /// The CA certificates trusted (DER), the issuing one first.
    pub fn ca_bundle(&self) -> Result<Vec<Vec<u8>>> {
        self.require_init()?;
        let path = self.ca_paths().0;
        let text = std::fs::read_to_string(&path).context(format_args!("cannot read {}", path.display()))?;
        let bundle = slipway_common::pki::certs_der(&text)?;
        if bundle.is_empty() {
            return Err(
                CtlError::failed(format!("{} holds no certificate", path.display())).fix("restore pki/ from a backup")
            );
        }
        Ok(bundle)
    }

    /// The trusted CAs as PEM, what agents are given to trust.
    pub fn ca_bundle_pem(&self) -> Result<String> {
        Ok(self.ca_bundle()?.iter().map(|der| pem_of(der)).collect())
    }

    /// `slipctl ca rotate`: a new CA issues from now on; the old one stays trusted (by the
    /// controller, and by each agent as it renews and gets the two-CA bundle), and the
    /// controller keeps presenting its old-CA certificate, which every agent still trusts.
    /// Returns the new CA's pin.
    pub fn begin_ca_rotation(&self) -> Result<String> {
        let bundle = self.ca_bundle()?;
        if bundle.len() > 1 {
            return Err(CtlError::busy("a CA rotation is under way already")
                .fix("`slipctl ca rotate --finish` once every agent renewed (`slipctl agent list` says)"));
        }
        let (ca, key_pem) = Ca::generate()?;
        let (pem, key) = self.ca_paths();
        // The old CA's key stays while the rotation runs: the agents' endpoint keeps presenting
        // a certificate of the old CA, the one every agent trusts until it renews.
        let old_key = std::fs::read(&key).context(format_args!("cannot read {}", key.display()))?;
        replace(&self.previous_ca_key(), &old_key, 0o600)?;
        replace(&key, key_pem.as_bytes(), 0o600)?;
        let text = format!("{}{}", ca.cert_pem(), pem_of(&bundle[0]));
        replace(&pem, text.as_bytes(), 0o644)?;
        Ok(slipway_common::pki::pin_of(&slipway_common::pki::first_cert_der(ca.cert_pem())?))
    }

    /// `slipctl ca rotate --finish`: the controller takes a certificate of the new CA and the
    /// old CA is no longer trusted.
    pub fn finish_ca_rotation(&self) -> Result<()> {
        let bundle = self.ca_bundle()?;
        if bundle.len() < 2 {
            return Err(CtlError::bad("no CA rotation is under way").fix("`slipctl ca rotate` starts one"));
        }
        let controller = self.load_ca()?.issue(&Identity::Controller)?;
        let tls = self.controller_tls();
        replace(&tls.key, controller.key_pem.as_bytes(), 0o600)?;
        replace(&tls.cert, controller.cert_pem.as_bytes(), 0o644)?;
        replace(&self.ca_paths().0, pem_of(&bundle[0]).as_bytes(), 0o644)?;
        let _ = std::fs::remove_file(self.previous_ca_key());
        Ok(())
    }

    fn previous_ca_key(&self) -> PathBuf {
        self.pki().join("ca-previous.key")
    }

    /// The CA the controller presents itself with — to agents (its client certificate) and on
    /// the agents' endpoint: the old one while a rotation runs, since every agent trusts it.
    pub fn presenting_ca(&self) -> Result<(Ca, Vec<u8>)> {
        let bundle = self.ca_bundle()?;
        if bundle.len() < 2 {
            return Ok((self.load_ca()?, bundle[0].clone()));
        }
        let path = self.previous_ca_key();
        let key = std::fs::read_to_string(&path).context(format_args!("cannot read {}", path.display()))?;
        Ok((Ca::from_pem(&pem_of(&bundle[1]), &key)?, bundle[1].clone()))
    }

    /// The rustls client config the controller dials agents with.
    pub fn client_tls(&self) -> Result<Arc<rustls::ClientConfig>> {
        self.require_init()?;
        let material = TlsMaterial::load(&self.controller_tls())?;
        Ok(controller_client_config(&material)?)
    }
}
