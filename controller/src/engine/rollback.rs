//! `rollback`: ask every host what it holds, decide the targets under the lock, relink.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use slipway_common::ReleaseId;
use slipway_common::time::unix_now;
use slipway_proto::pb;

use crate::engine::client::{self, AgentClient, Timeouts, status_text};
use crate::engine::events::Emitter;
use crate::engine::select::rollback_targets;
use crate::error::{CtlError, Result};
use crate::state::home::Home;
use crate::state::store::{AgentRecord, DeployKind, DeployRecord, DeployStatus, Store};

use super::fanout::*;
use super::host_ops::*;
use super::lock::*;
use super::scope::*;

pub struct RollbackArgs {
    pub project: String,
    pub env: String,
    pub to: Option<String>,
    pub hosts: Option<Vec<String>>,
}

/// Ask every host what it holds; any unreachable host is an error naming it.
pub async fn query_releases(
    scope: &Scope,
    tls: Arc<rustls::ClientConfig>,
    timeouts: Timeouts,
) -> Vec<(AgentRecord, std::result::Result<(AgentClient, pb::ReleasesReply), String>)> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, agent) in scope.hosts.iter().enumerate() {
        let (tls, agent, target) = (tls.clone(), agent.clone(), pb_target(&scope.settings, &agent.name));
        tasks.spawn(async move {
            let result = async {
                let mut client = client::connect(tls, &agent, timeouts).await?;
                let reply =
                    tokio::time::timeout(timeouts.call, client.releases(pb::ReleasesRequest { target: Some(target) }))
                        .await
                        .map_err(|_| format!("{}: no answer within {}s", agent.name, timeouts.call.as_secs()))?
                        .map_err(|s| format!("{}: {}", agent.name, status_text(&s)))?
                        .into_inner();
                Ok((client, reply))
            }
            .await;
            (i, agent, result)
        });
    }
    let mut out: Vec<_> = tasks.join_all().await;
    out.sort_by_key(|(i, _, _)| *i);
    out.into_iter().map(|(_, a, r)| (a, r)).collect()
}

/// `slipctl rollback`.
pub async fn rollback(home: &Home, args: RollbackArgs, reporter: &Emitter) -> Result<DeployRecord> {
    let started = Instant::now();
    let scope = load_scope(home, &args.project, &args.env, args.hosts.as_deref())?;
    let timeouts = Timeouts::host(scope.settings.rollout.host_timeout_secs);
    if let Some(to) = &args.to {
        ReleaseId::parse(to)?;
    }
    let tls = home.client_tls()?;
    let settings = &scope.settings;
    let mut record = DeployRecord {
        release: args.to.clone().unwrap_or_default(),
        ..DeployRecord::start(DeployKind::Rollback, &settings.project, &settings.env, current_user())
    };
    // The targets are decided under the lock: no deploy can change what the hosts hold between
    // asking them and relinking.
    let _lock = take_lock(home, &record, reporter)?;
    let decided = async {
        let answers = query_releases(&scope, tls.clone(), timeouts).await;
        let unreachable: Vec<String> = answers.iter().filter_map(|(_, r)| r.as_ref().err().cloned()).collect();
        if !unreachable.is_empty() {
            return Err(CtlError::failed(format!("rollback not started, no host touched: {}", unreachable.join("; "))));
        }
        let mut clients = Vec::new();
        let mut replies = Vec::new();
        for (agent, answer) in answers {
            let (client, reply) = answer.expect("checked above");
            replies.push((agent.name.clone(), reply));
            clients.push((agent, client));
        }
        let targets = rollback_targets(&replies, args.to.as_deref())
            .map_err(|problems| CtlError::bad(format!("rollback refused, no host touched: {}", problems.join("; "))))?;
        Ok((clients, targets))
    }
    .await;
    // Refused before any host is touched: nothing to record (like any other bad input).
    let (clients, targets) = decided?;
    number(home, &mut record)?;
    let mut distinct: Vec<&str> = targets.iter().map(|(_, t)| t.as_str()).collect();
    distinct.dedup();
    if distinct.len() == 1 {
        record.release = distinct[0].to_owned();
    }
    reporter.say(format!(
        "rollback #{} {}/{}: {} host(s) to {}",
        record.id,
        settings.project,
        settings.env,
        targets.len(),
        if distinct.len() == 1 { distinct[0].to_owned() } else { "their previous releases".to_owned() }
    ));
    let clock = Arc::new(Clock(Instant::now()));
    reporter.hosts(targets.iter().map(|(h, _)| h.as_str()));
    let by_host: BTreeMap<String, (AgentRecord, AgentClient, String)> = clients
        .into_iter()
        .zip(&targets)
        .map(|((agent, client), (_, target))| (agent.name.clone(), (agent, client, target.clone())))
        .collect();
    let names: Vec<String> = by_host.keys().cloned().collect();
    let relinked = fan_out(&names, reporter, &mut None, |host, events| {
        let (agent, client, target) = by_host[&host].clone();
        let result = new_host_result(&agent, &target);
        let request = activate_request(settings, &agent.name, &record, &target);
        let fan = Fanout { tls: tls.clone(), events, clock: clock.clone(), timeouts };
        activate_host(fan, client, request, result)
    })
    .await;
    reporter.finish();
    record.hosts = relinked.into_values().collect();
    record.finished_at = Some(unix_now());
    record.duration_ms = started.elapsed().as_millis() as u64;
    let failed: Vec<String> = record
        .hosts
        .iter()
        .filter(|h| !h.ok)
        .map(|h| format!("{}: {}", h.host, h.error.clone().unwrap_or_default()))
        .collect();
    if failed.is_empty() {
        record.status = DeployStatus::Succeeded;
    } else {
        record.status = DeployStatus::Failed;
        record.error = Some(format!("rollback failed on {}", failed.join("; ")));
    }
    let store = Store::open(&home.state())?;
    store.put_deploy(&record)?;
    Ok(record)
}
