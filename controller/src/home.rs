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

impl Home {
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
        Ok(Home { root })
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
        for dir in [self.pki(), self.state(), self.cache()] {
            std::fs::create_dir_all(&dir).context(format_args!("cannot create {}", dir.display()))?;
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
