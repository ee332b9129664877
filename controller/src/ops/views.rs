//! What the pages and the API show without walking history: what each host of each env runs
//! (as this controller's records say) and each env's last operation, fed by every operation
//! that ends here and seeded from history at start (`Views`); and the read models built on
//! them — the envs and agents a caller may see, the dashboard's cells.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use serde_json::{Value, json};
use slipway_common::config::ProjectConfig;

use crate::error::Result;
use crate::ops::Core;
use crate::ops::caller::Caller;
use crate::state::store::{DeployRecord, DeployStatus};
use crate::state::users::Role;

type PerEnv<T> = Mutex<BTreeMap<(String, String), T>>;

#[derive(Default)]
pub struct Views {
    /// What each host of each env runs, as the records say: (project, env) → host → release.
    runs: PerEnv<BTreeMap<String, String>>,
    /// The last operation that ended (or paused) per env, as the dashboard shows it.
    last: PerEnv<Value>,
}

impl Views {
    /// An operation ended (or paused) as `record` says.
    pub fn observe(&self, record: &DeployRecord) {
        if matches!(record.status, DeployStatus::Running | DeployStatus::Planned) {
            return;
        }
        let pair = (record.project.clone(), record.env.clone());
        self.last.lock().expect("views").insert(
            pair.clone(),
            json!({"id": record.id, "kind": record.kind, "status": record.effective_status().word(), "release": record.release}),
        );
        if record.status == DeployStatus::Paused {
            return;
        }
        let mut runs = self.runs.lock().expect("views");
        let hosts = runs.entry(pair).or_default();
        for h in record.hosts.iter().filter(|h| h.ok && h.activated) {
            if let Some(release) = &h.release {
                hosts.insert(h.host.clone(), release.to_string());
            }
        }
    }

    /// What each host of (project, env) runs, as this controller's records say.
    pub fn hosts_of(&self, project: &str, env: &str) -> BTreeMap<String, String> {
        self.runs.lock().expect("views").get(&(project.to_owned(), env.to_owned())).cloned().unwrap_or_default()
    }

    /// The last operation of (project, env) that ended or paused: id, kind, status, release.
    pub fn last_of(&self, project: &str, env: &str) -> Option<Value> {
        self.last.lock().expect("views").get(&(project.to_owned(), env.to_owned())).cloned()
    }

    /// Every env's hosts and their releases.
    pub fn all_hosts(&self) -> Vec<((String, String), BTreeMap<String, String>)> {
        self.runs.lock().expect("views").iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// A stored project's file, parsed.
pub fn config_of(record: &crate::state::store::ProjectRecord) -> Result<ProjectConfig> {
    Ok(ProjectConfig::parse(&record.text, &record.source_file.display().to_string())?)
}

/// Every project with the envs `caller` may see, in order (a project with none is left out):
/// the projects list, the dashboard and the pages' choices alike.
pub fn visible_envs(core: &Core, caller: &Caller) -> Result<Vec<(crate::state::store::ProjectRecord, Vec<String>)>> {
    let mut out = Vec::new();
    for p in core.store.projects()? {
        let config = config_of(&p)?;
        let envs: Vec<String> = config.envs.into_keys().filter(|e| caller.allows(&p.name, e, Role::Viewer)).collect();
        if !envs.is_empty() {
            out.push((p, envs));
        }
    }
    Ok(out)
}

/// The registered agents `caller` may know of: all of them for an admin, else those that an env
/// the caller may see selects now (a prod host's name, address and labels are inventory).
pub fn visible_agents(core: &Core, caller: &Caller) -> Result<Vec<crate::state::store::AgentRecord>> {
    let agents = core.store.agents()?;
    if caller.admin {
        return Ok(agents);
    }
    let mut seen = BTreeSet::new();
    for (p, envs) in visible_envs(core, caller)? {
        let config = config_of(&p)?;
        for env in envs {
            let Some(settings) = config.envs.get(&env) else { continue };
            if let Ok(hosts) = crate::engine::select::select_hosts(&p.name, &env, &settings.hosts, &agents, None) {
                seen.extend(hosts.into_iter().map(|a| a.name));
            }
        }
    }
    Ok(agents.into_iter().filter(|a| seen.contains(&a.name)).collect())
}

/// The dashboard's cells (the API's `GET /dashboard` and the web page alike), from what the
/// server keeps in memory (what each host runs, each env's last operation, the operations
/// running here) and the tickets: no walk through deploy history, however long it is.
pub fn dashboard_cells(core: &Core, caller: &Caller) -> Result<Vec<Value>> {
    let mut running: BTreeMap<(String, String), Value> = BTreeMap::new();
    for id in core.runs.ids() {
        if let Some(d) = core.store.deploy(id)? {
            // The record's hosts fill in at the end; the journal's writer counts as it goes.
            let (done, hosts) = crate::state::journal::progress(id).unwrap_or((0, 0));
            running.insert(
                (d.project.clone(), d.env.clone()),
                json!({"id": d.id, "status": d.effective_status().word(), "hosts": hosts, "done": done}),
            );
        }
    }
    let mut last_ticket: BTreeMap<(String, String), Value> = BTreeMap::new();
    for t in core.store.tickets()? {
        last_ticket
            .entry((t.project, t.env))
            .or_insert_with(|| json!({"id": t.id, "title": t.title, "state": t.state}));
    }
    let mut cells = Vec::new();
    for (p, envs) in visible_envs(core, caller)? {
        for env in &envs {
            let pair = (p.name.clone(), env.clone());
            let hosts = core.views.hosts_of(&p.name, env);
            let mut spread: BTreeMap<&str, usize> = BTreeMap::new();
            for r in hosts.values() {
                *spread.entry(r).or_default() += 1;
            }
            cells.push(json!({
                "project": p.name, "env": env, "hosts": hosts, "releases": spread,
                "last_deploy": core.views.last_of(&p.name, env), "last_ticket": last_ticket.get(&pair),
                "running": running.get(&pair),
            }));
        }
    }
    Ok(cells)
}

/// A deploy's record as the API and `--output json` show it: its effective status, and no
/// number for a dry run.
pub fn deploy_json(d: &DeployRecord) -> Value {
    let mut doc = serde_json::to_value(d).expect("record serialises");
    doc["status"] = json!(d.effective_status().word());
    if d.status == DeployStatus::Planned {
        doc["id"] = Value::Null; // a dry run is not numbered
    }
    doc
}
