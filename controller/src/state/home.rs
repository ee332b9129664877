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
        let (ca, controller) = (der(read(&ca_pem)?)?, der(read(&tls.cert)?)?);
        match slipway_common::pki::issued_by(&controller, &ca) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("{} was not issued by {}", tls.cert.display(), ca_pem.display())),
            Err(e) => Err(e.to_string()),
        }
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

    pub fn load_ca(&self) -> Result<Ca> {
        self.require_init()?;
        let (cert, key) = self.ca_paths();
        let cert = std::fs::read_to_string(&cert).context(format_args!("cannot read {}", cert.display()))?;
        let key = std::fs::read_to_string(&key).context(format_args!("cannot read {}", key.display()))?;
        Ok(Ca::from_pem(&cert, &key)?)
    }

    /// The rustls client config the controller dials agents with.
    pub fn client_tls(&self) -> Result<Arc<rustls::ClientConfig>> {
        self.require_init()?;
        let material = TlsMaterial::load(&self.controller_tls())?;
        Ok(controller_client_config(&material)?)
    }
}
