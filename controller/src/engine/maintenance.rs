//! Maintenance mode for an env (`slipctl maintenance on|off`, the env page, the API): every host
//! of the env is asked to put up (or take down) its maintenance page, each answer kept.

use std::collections::BTreeMap;

use slipway_common::config::EnvSettings;
use slipway_proto::pb;

use crate::engine::client::{self, AgentClient, Timeouts};
use crate::engine::events::Emitter;
use crate::engine::fanout::ask_all;
use crate::engine::host_error::HostError;
use crate::engine::planner::HostState;
use crate::engine::scope::{load_scope, pb_target};
use crate::error::Result;
use crate::state::home::Home;
use crate::state::store::AgentRecord;

/// What each host said: the page's path (on), whether it was up before.
pub type Answers = Vec<(String, std::result::Result<pb::MaintenanceReply, HostError>)>;

/// What the hosts answered, as the CLI's `--output json` and the API show it.
pub fn answers_json(project: &str, env: &str, on: bool, answers: &Answers) -> serde_json::Value {
    let hosts: Vec<serde_json::Value> = answers
        .iter()
        .map(|(host, a)| match a {
            Ok(r) => serde_json::json!({"host": host, "ok": true, "path": r.path, "was_on": r.was_on}),
            Err(e) => serde_json::json!({"host": host, "ok": false, "error": e.to_string()}),
        })
        .collect();
    serde_json::json!({"project": project, "env": env, "on": on, "hosts": hosts})
}

/// Turn `project`/`env`'s maintenance page on (with `message`) or off on every host.
pub async fn set(
    home: &Home,
    by: &crate::ops::audit::Actor,
    project: &str,
    env: &str,
    on: bool,
    message: &str,
) -> Result<Answers> {
    let scope = load_scope(home, project, env, None)?;
    let tls = home.client_tls()?;
    let timeouts = Timeouts::host(scope.settings.rollout.host_timeout_secs);
    let agents: BTreeMap<String, AgentRecord> = scope.hosts.iter().map(|a| (a.name.clone(), a.clone())).collect();
    let names: Vec<String> = scope.hosts.iter().map(|a| a.name.clone()).collect();
    let answers = ask_all(&names, |host| {
        let (tls, agent, target) = (tls.clone(), agents[&host].clone(), pb_target(&scope.settings, &host));
        let message = message.to_owned();
        async move {
            let mut c = client::connect(tls, &agent, timeouts).await?;
            let request = pb::MaintenanceRequest { target: Some(target), on, message };
            tokio::time::timeout(timeouts.call, c.maintenance(request))
                .await
                .map_err(|_| HostError::Timeout { what: "no answer", secs: timeouts.call.as_secs(), hint: "" })?
                .map_err(|s| HostError::from_status(&s))
                .map(tonic::Response::into_inner)
        }
    })
    .await;
    let failed = answers.iter().filter(|(_, a)| a.is_err()).count();
    let store = crate::state::store::Store::open(&home.state())?;
    let (action, outcome) =
        (if on { "maintenance_on" } else { "maintenance_off" }, if failed > 0 { "failed" } else { "ok" });
    let detail = format!(
        "{} of {} host(s){}",
        answers.len() - failed,
        answers.len(),
        if on { format!(": {message}") } else { String::new() }
    );
    by.did(&store, action, &format!("{project}/{env}"), outcome, &detail);
    Ok(answers)
}

/// `[target] maintenance = "during_migrate"`: the page up (`on`) or down on `hosts` through
/// the deploy's own connections. What each host answered: whether its page was up before.
pub(crate) async fn through_deploy(
    settings: &EnvSettings,
    clients: &BTreeMap<String, AgentClient>,
    hosts: &[String],
    on: bool,
    timeouts: Timeouts,
) -> Vec<(String, std::result::Result<bool, HostError>)> {
    let message = settings.target.maintenance_message.clone();
    ask_all(hosts, |host| {
        let (client, target, message) = (clients.get(&host).cloned(), pb_target(settings, &host), message.clone());
        async move {
            let mut c = client.ok_or_else(|| HostError::Local("no connection to this host".into()))?;
            let request = pb::MaintenanceRequest { target: Some(target), on, message };
            tokio::time::timeout(timeouts.call, c.maintenance(request))
                .await
                .map_err(|_| HostError::Timeout { what: "no answer", secs: timeouts.call.as_secs(), hint: "" })?
                .map_err(|s| HostError::from_status(&s))
                .map(|r| r.into_inner().was_on)
        }
    })
    .await
}

/// `maintenance = "during_migrate"`: the page up on every staged host before the migrate runs.
/// True when every one put it up; else the ones that did take it down again and the migrate
/// does not run (so nothing flips).
pub(crate) async fn up_for_migrate(
    settings: &EnvSettings,
    clients: &BTreeMap<String, AgentClient>,
    states: &BTreeMap<String, HostState>,
    paged: &mut Vec<String>,
    timeouts: Timeouts,
    reporter: &Emitter,
) -> bool {
    let hosts: Vec<String> = states
        .iter()
        .filter(|(h, s)| **s == HostState::Staged && clients.contains_key(*h))
        .map(|(h, _)| h.clone())
        .collect();
    let answers = through_deploy(settings, clients, &hosts, true, timeouts).await;
    let mut failed = Vec::new();
    for (host, answer) in answers {
        match answer {
            Ok(false) => paged.push(host),
            Ok(true) => {}
            Err(e) => failed.push(format!("{host}: {e}")),
        }
    }
    if failed.is_empty() {
        reporter.say(format!("maintenance page up on {} host(s) for the migrate", hosts.len()));
        return true;
    }
    reporter.say(format!(
        "migrate: the maintenance page did not go up ({}), so the migrate does not run and nothing flips",
        failed.join("; ")
    ));
    false
}

/// The page this deploy put up comes down (a page an operator had up before stays).
pub(crate) async fn down_after(
    settings: &EnvSettings,
    clients: &BTreeMap<String, AgentClient>,
    paged: &mut Vec<String>,
    timeouts: Timeouts,
    reporter: &Emitter,
) {
    if paged.is_empty() {
        return;
    }
    let hosts = std::mem::take(paged);
    let answers = through_deploy(settings, clients, &hosts, false, timeouts).await;
    let left: Vec<String> = answers.iter().filter_map(|(h, a)| a.as_ref().err().map(|e| format!("{h}: {e}"))).collect();
    if left.is_empty() {
        reporter.say(format!("maintenance page down on {} host(s)", hosts.len()));
    } else {
        reporter.say(format!(
            "maintenance page still up ({}): `slipctl maintenance off {} {}` takes it down",
            left.join("; "),
            settings.project,
            settings.env
        ));
    }
}
