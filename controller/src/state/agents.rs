//! The agent registry's one write path: `slipctl agent add` and the quickstart register an
//! agent and write its ready-to-run bundle (certificate, key, CA, `agent.toml`) here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use slipway_common::names::validate_agent_name;
use slipway_common::pki::Identity;
use slipway_common::time::unix_now;

use crate::error::{Context, CtlError, Result};
use crate::state::home::{Home, write_new};
use crate::state::store::{AgentRecord, Store};

/// Register an agent and write its bundle: `slipctl agent add` and the quickstart.
#[allow(clippy::too_many_arguments)]
pub fn register_agent(
    home: &Home,
    name: &str,
    addr: &str,
    labels: &[String],
    dir: &Path,
    listen: Option<String>,
    state_dir: &Path,
    allowed_roots: &[PathBuf],
) -> Result<AgentRecord> {
    validate_agent_name(name)?;
    let port = parse_addr(addr)?;
    let label_map = parse_labels(labels)?;
    let listen = listen.unwrap_or_else(|| format!("0.0.0.0:{port}"));
    let ca = home.load_ca()?;
    {
        let store = Store::open(&home.state())?;
        if store.agent(name)?.is_some() {
            return Err(CtlError::bad(format!("agent '{name}' is already registered"))
                .fix(format!("`slipctl agent rm {name}` first to replace it")));
        }
    }
    if dir.join("agent.key").exists() {
        return Err(CtlError::bad(format!("{} already holds an agent.key", dir.display()))
            .fix("choose an empty --out directory"));
    }
    std::fs::create_dir_all(dir).context(format_args!("cannot create {}", dir.display()))?;
    let issued = ca.issue(&Identity::Agent(name.to_owned()))?;
    let roots: Vec<String> = allowed_roots.iter().map(|r| toml_str(&r.display().to_string())).collect();
    let config = format!(
        "# slipd config for agent '{name}', written by `slipctl agent add`\n\
         name = {}\nlisten = {}\nstate_dir = {}\nallowed_roots = [{}]\n\n\
         [tls]\nca = \"ca.pem\"\ncert = \"agent.pem\"\nkey = \"agent.key\"\n",
        toml_str(name),
        toml_str(&listen),
        toml_str(&state_dir.display().to_string()),
        roots.join(", ")
    );
    // Check what we wrote with the agent's own loader before anyone copies it.
    slipway_common::config::AgentConfig::parse(&config, "agent.toml", dir)?;
    write_new(&dir.join("agent.key"), issued.key_pem.as_bytes(), 0o600)?;
    write_new(&dir.join("agent.pem"), issued.cert_pem.as_bytes(), 0o644)?;
    write_new(&dir.join("ca.pem"), ca.cert_pem().as_bytes(), 0o644)?;
    write_new(&dir.join("agent.toml"), config.as_bytes(), 0o644)?;
    let record = AgentRecord {
        name: name.to_owned(),
        addr: addr.to_owned(),
        labels: label_map,
        added_at: unix_now(),
        trust: Default::default(),
    };
    Store::open(&home.state())?.put_agent(&record)?;
    Ok(record)
}

/// `--label k=v` arguments (an agent's labels, at `agent add` or in a join token).
pub(crate) fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for l in labels {
        let (k, v) = l
            .split_once('=')
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
            .ok_or_else(|| CtlError::bad(format!("--label '{l}' is not key=value")).fix("e.g. --label role=web"))?;
        map.insert(k.to_owned(), v.to_owned());
    }
    Ok(map)
}

pub(crate) fn parse_addr(addr: &str) -> Result<u16> {
    let bad = || CtlError::bad(format!("--addr '{addr}' is not HOST:PORT (e.g. 10.0.0.5:7443)"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok(port)
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}
