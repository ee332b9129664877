//! `[rollout.drain]`: how a host leaves and rejoins its load balancer around its flip.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::resolve::positive;
use crate::names::validate_agent_name;

/// `[rollout.drain]`: HAProxy's runtime API, or command lines.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainFile {
    pub haproxy: Option<HAProxyFile>,
    pub drain: Option<Vec<String>>,
    pub undrain: Option<Vec<String>>,
    /// Where `drain`/`undrain` lines run: `controller` (default), `host` (the host being
    /// drained, as its hook user), or the name of an agent (the balancer's host may run one).
    pub run_on: Option<String>,
    /// How long to wait for the server's sessions to reach 0.
    pub timeout_secs: Option<u64>,
    /// Allow a rollout that takes every host out at once.
    pub allow_full_drain: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HAProxyFile {
    /// The runtime API's unix socket (`stats socket … level admin`).
    pub socket: Option<String>,
    /// Or its TCP address, HOST:PORT.
    pub addr: Option<String>,
    pub backend: Option<String>,
    /// The server name in the backend; `{host}` expands to the host's name (the default).
    pub server: Option<String>,
}

/// How a host leaves and rejoins its load balancer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DrainDriver {
    HAProxy {
        endpoint: HAProxyEndpoint,
        backend: String,
        server: String,
    },
    /// Command lines with the SLIPWAY_* variables and SLIPWAY_HOST_ADDR, run where `run_on` says.
    Commands {
        drain: Vec<String>,
        undrain: Vec<String>,
        run_on: RunOn,
    },
}

/// Where drain command lines run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOn {
    Controller,
    /// The host being drained, through its agent, as the target's hook user.
    Host,
    /// A named agent (e.g. on the balancer's host), as the target's hook user.
    Agent(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HAProxyEndpoint {
    Socket(PathBuf),
    Tcp(String),
}

impl std::fmt::Display for HAProxyEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HAProxyEndpoint::Socket(p) => write!(f, "socket {}", p.display()),
            HAProxyEndpoint::Tcp(a) => write!(f, "{a}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrainSettings {
    pub driver: DrainDriver,
    pub timeout_secs: u64,
    pub allow_full_drain: bool,
}

impl DrainSettings {
    /// The HAProxy server name of `host`.
    pub fn server_for(&self, host: &str) -> Option<String> {
        match &self.driver {
            DrainDriver::HAProxy { server, .. } => Some(server.replace("{host}", host)),
            DrainDriver::Commands { .. } => None,
        }
    }
}

pub(super) fn resolve_drain(d: &DrainFile) -> std::result::Result<DrainSettings, String> {
    let timeout_secs = d.timeout_secs.unwrap_or(30);
    let driver = match (&d.haproxy, &d.drain, &d.undrain) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err("rollout.drain: set either haproxy or drain/undrain command lines, not both".into());
        }
        (Some(h), None, None) => {
            let endpoint = match (&h.socket, &h.addr) {
                (Some(s), None) if Path::new(s).is_absolute() => HAProxyEndpoint::Socket(PathBuf::from(s)),
                (Some(s), None) => return Err(format!("rollout.drain.haproxy.socket '{s}' must be an absolute path")),
                (None, Some(a))
                    if a.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) =>
                {
                    HAProxyEndpoint::Tcp(a.clone())
                }
                (None, Some(a)) => return Err(format!("rollout.drain.haproxy.addr '{a}' is not HOST:PORT")),
                _ => {
                    return Err(
                        "rollout.drain.haproxy: set socket = \"/run/haproxy/admin.sock\" or addr = \"HOST:PORT\""
                            .into(),
                    );
                }
            };
            let backend = h
                .backend
                .clone()
                .filter(|b| !b.trim().is_empty())
                .ok_or("rollout.drain.haproxy.backend is missing: the backend the hosts are servers of")?;
            let server = h.server.clone().unwrap_or_else(|| "{host}".into());
            if server.trim().is_empty() || server.contains(char::is_whitespace) || backend.contains(char::is_whitespace)
            {
                return Err("rollout.drain.haproxy: backend and server names have no spaces".into());
            }
            DrainDriver::HAProxy { endpoint, backend, server }
        }
        (None, drain, undrain) => {
            let (drain, undrain) = (drain.clone().unwrap_or_default(), undrain.clone().unwrap_or_default());
            if drain.is_empty() || undrain.is_empty() {
                return Err("rollout.drain: set haproxy = { … }, or both drain = [...] and undrain = [...]".into());
            }
            let run_on = match d.run_on.as_deref() {
                None | Some("controller") => RunOn::Controller,
                Some("host") => RunOn::Host,
                Some(agent) => {
                    validate_agent_name(agent).map_err(|e| {
                        format!("rollout.drain.run_on: \"controller\", \"host\" or an agent's name: {e}")
                    })?;
                    RunOn::Agent(agent.to_owned())
                }
            };
            DrainDriver::Commands { drain, undrain, run_on }
        }
    };
    if d.run_on.is_some() && d.haproxy.is_some() {
        return Err("rollout.drain.run_on is for drain/undrain command lines, not haproxy".into());
    }
    Ok(DrainSettings {
        driver,
        timeout_secs: positive("rollout.drain.timeout_secs", timeout_secs)?,
        allow_full_drain: d.allow_full_drain.unwrap_or(false),
    })
}
