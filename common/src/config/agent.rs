//! `agent.toml`: the agent's name, listen address, state, allowed roots, TLS files, hook policy
//! and limits, resolved relative to the file and checked before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::*;
use crate::archive::Limits;
use crate::names::validate_agent_name;
use crate::{Error, Result};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    name: String,
    listen: String,
    state_dir: PathBuf,
    allowed_roots: Vec<PathBuf>,
    tls: TlsFile,
    #[serde(default)]
    allow_root_hooks: bool,
    /// Hook users accepted although they are in a privileged group.
    #[serde(default)]
    allowed_hook_users: Vec<String>,
    /// Groups whose members may not run hooks (default [`DEFAULT_DENIED_HOOK_GROUPS`]).
    denied_hook_groups: Option<Vec<String>>,
    /// Stages this agent runs at once (default 4); more are refused at once.
    max_concurrent_stages: Option<usize>,
    /// How long one stage may take from its header to staged, hooks excluded (default 3600).
    stage_timeout_secs: Option<u64>,
    #[serde(default)]
    limits: LimitsFile,
    /// Serve Prometheus metrics over plain HTTP here (keep it on loopback or a management
    /// network); none by default.
    metrics_listen: Option<String>,
    /// The controller's agents' endpoint, where this agent renews its certificate (written by
    /// `slipd join`); none: the certificate is not renewed (a bundle from `slipctl agent add`).
    controller: Option<ControllerFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControllerFile {
    url: String,
}

/// Groups that give their members root or its equivalent: hook users in them are refused.
pub const DEFAULT_DENIED_HOOK_GROUPS: &[&str] =
    &["root", "sudo", "wheel", "adm", "disk", "shadow", "docker", "lxd", "libvirt"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_entries: Option<u64>,
    max_bytes: Option<u64>,
}

/// Paths of the PEM files a peer needs for mTLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A validated `agent.toml`. Relative paths are resolved against the file's directory, so a
/// bundle written by `slipctl agent add` runs wherever it is copied.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub allowed_roots: Vec<PathBuf>,
    pub tls: TlsPaths,
    pub allow_root_hooks: bool,
    pub allowed_hook_users: Vec<String>,
    pub denied_hook_groups: Vec<String>,
    pub max_concurrent_stages: usize,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    pub stage_timeout_secs: u64,
    pub limits: Limits,
    /// `[controller] url`: where the certificate is renewed.
    pub controller_url: Option<String>,
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read agent config", path, e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &path.display().to_string(), base)
    }

    pub fn parse(text: &str, file: &str, base_dir: &Path) -> Result<Self> {
        let raw: AgentFile = toml::from_str(text).map_err(|e| Error::config(file, toml_message(&e)))?;
        validate_agent_name(&raw.name).map_err(|e| Error::config(file, format!("name: {e}")))?;
        let listen: SocketAddr = raw.listen.parse().map_err(|_| {
            Error::config(
                file,
                format!("listen: '{}' is not an address; use IP:PORT like \"0.0.0.0:7443\"", raw.listen),
            )
        })?;
        if raw.allowed_roots.is_empty() {
            return Err(Error::config(
                file,
                "allowed_roots is empty: list the directories releases may be written under, e.g. [\"/data\"]",
            ));
        }
        let mut allowed_roots = Vec::new();
        for root in &raw.allowed_roots {
            let root = resolve(base_dir, root);
            check_clean_absolute(&root).map_err(|why| Error::config(file, format!("allowed_roots: {why}")))?;
            if root == Path::new("/") {
                return Err(Error::config(file, "allowed_roots: '/' would allow writing anywhere; name a directory"));
            }
            allowed_roots.push(root);
        }
        let defaults = Limits::default();
        let limits = Limits {
            max_entries: raw.limits.max_entries.unwrap_or(defaults.max_entries),
            max_bytes: raw.limits.max_bytes.unwrap_or(defaults.max_bytes),
        };
        Ok(AgentConfig {
            name: raw.name,
            listen,
            state_dir: resolve(base_dir, &raw.state_dir),
            allowed_roots,
            tls: TlsPaths {
                ca: resolve(base_dir, &raw.tls.ca),
                cert: resolve(base_dir, &raw.tls.cert),
                key: resolve(base_dir, &raw.tls.key),
            },
            allow_root_hooks: raw.allow_root_hooks,
            allowed_hook_users: raw.allowed_hook_users,
            denied_hook_groups: raw
                .denied_hook_groups
                .unwrap_or_else(|| DEFAULT_DENIED_HOOK_GROUPS.iter().map(|g| (*g).to_owned()).collect()),
            max_concurrent_stages: raw.max_concurrent_stages.unwrap_or(4).max(1),
            stage_timeout_secs: raw.stage_timeout_secs.unwrap_or(3600).max(1),
            limits,
            controller_url: match raw.controller {
                None => None,
                Some(c) if c.url.starts_with("https://") => Some(c.url.trim_end_matches('/').to_owned()),
                Some(c) => {
                    return Err(Error::config(
                        file,
                        format!("controller.url = \"{}\" is not an https:// URL (the agents' endpoint)", c.url),
                    ));
                }
            },
            metrics_listen: match &raw.metrics_listen {
                None => None,
                Some(text) => Some(text.parse().map_err(|_| {
                    Error::config(file, format!("metrics_listen = \"{text}\" is not an address like 127.0.0.1:9101"))
                })?),
            },
        })
    }

    /// Whether `path` (clean and absolute) lies under one of `allowed_roots`.
    pub fn is_allowed(&self, path: &Path) -> bool {
        self.allowed_roots.iter().any(|root| path.starts_with(root) && path != root)
    }
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() { path.to_path_buf() } else { base.join(path) }
}
