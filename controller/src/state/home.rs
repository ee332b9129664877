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
    pub fn init(&self) -> Result<()> {
        let (ca_pem, ca_key) = self.ca_paths();
        if ca_pem.exists() || ca_key.exists() {
            return Err(CtlError::bad(format!(
                "a CA already exists in {}: refusing to overwrite it (it signs every agent's certificate); \
                 use another --home for a new fleet",
                self.pki().display()
            )));
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
        Ok(())
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
