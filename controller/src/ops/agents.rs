//! The agents as the controller sees them: each one's `Info` asked of it (`slipctl agent list`
//! asks now; the server asks every 30 s and keeps what it found in [`Probes`] for the API, the
//! pages and `/metrics`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use slipway_proto::pb::{InfoReply, InfoRequest};

use crate::engine::client::{self, Timeouts, status_text};
use crate::engine::fanout::ask_all;
use crate::ops::Core;
use crate::state::home::Home;
use crate::state::store::AgentRecord;

/// How long one agent gets to answer: a probe must not wait on a host that is down.
const QUICK: Timeouts = Timeouts { connect: Duration::from_secs(3), call: Duration::from_secs(5) };

/// Ask each of `agents` for its info, all at once; the answers in the order of `agents`.
pub async fn ask_info(home: &Home, agents: Vec<AgentRecord>) -> Vec<(AgentRecord, Result<InfoReply, String>)> {
    let tls = match home.client_tls() {
        Ok(tls) => tls,
        Err(e) => return agents.into_iter().map(|a| (a, Err(e.to_string()))).collect(),
    };
    let names: Vec<String> = agents.iter().map(|a| a.name.clone()).collect();
    let mut by_name: HashMap<String, AgentRecord> = agents.into_iter().map(|a| (a.name.clone(), a)).collect();
    let answers = ask_all(&names, |name| {
        let (tls, agent) = (tls.clone(), by_name[&name].clone());
        async move {
            let mut c = client::connect(tls, &agent, QUICK).await.map_err(|e| e.to_string())?;
            let info = tokio::time::timeout(QUICK.call, c.info(InfoRequest {}))
                .await
                .map_err(|_| "no answer".to_owned())?
                .map_err(|s| status_text(&s))?;
            Ok::<_, String>(info.into_inner())
        }
    })
    .await;
    answers.into_iter().filter_map(|(name, answer)| by_name.remove(&name).map(|a| (a, answer))).collect()
}

/// What the last probe of an agent found (`GET /api/v1/agents`, the agents page).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Probe {
    pub reachable: bool,
    pub checked_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_not_after: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub broken_targets: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Probe {
    fn of(answer: Result<InfoReply, String>) -> Probe {
        let checked_at = slipway_common::time::unix_now();
        match answer {
            Ok(i) => Probe {
                reachable: true,
                checked_at,
                version: Some(i.version),
                cert_not_after: (i.cert_not_after > 0).then_some(i.cert_not_after),
                broken_targets: i.broken_targets,
                error: None,
            },
            Err(e) => Probe {
                reachable: false,
                checked_at,
                version: None,
                cert_not_after: None,
                broken_targets: Vec::new(),
                error: Some(e),
            },
        }
    }
}

/// The last probe's findings, by agent (agents removed since drop out at the next probe).
#[derive(Default)]
pub struct Probes(Mutex<BTreeMap<String, Probe>>);

impl Probes {
    pub fn all(&self) -> BTreeMap<String, Probe> {
        self.0.lock().expect("probes").clone()
    }
}

/// Probe every registered agent now, keep what was found, and return it.
pub async fn probe(core: &Core) -> BTreeMap<String, Probe> {
    let agents = core.store.agents().unwrap_or_default();
    let found: BTreeMap<String, Probe> =
        ask_info(&core.home, agents).await.into_iter().map(|(a, answer)| (a.name, Probe::of(answer))).collect();
    *core.probes.0.lock().expect("probes") = found.clone();
    found
}

/// Probe every `every` until the process stops, telling `observe` each time.
pub async fn probe_every(core: std::sync::Arc<Core>, every: Duration, observe: impl Fn(&BTreeMap<String, Probe>)) {
    let mut stopping = core.stopping.subscribe();
    loop {
        let before = core.probes.all();
        let found = probe(&core).await;
        // A host that answers again after it did not: envs with `catch_up` bring it up to date.
        for (name, p) in &found {
            if p.reachable && before.get(name).is_some_and(|b| !b.reachable) {
                crate::ops::catch_up::host_arrived(core.clone(), name.clone());
            }
        }
        observe(&found);
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}
