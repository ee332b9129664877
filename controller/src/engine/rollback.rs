//! `rollback`: ask every host what it holds, decide the targets under the lock, relink.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use slipway_common::ReleaseId;
use slipway_common::time::unix_now;
use slipway_proto::pb;

use crate::engine::client::{self, AgentClient, Timeouts};
use crate::engine::events::Emitter;
use crate::engine::host_error::HostError;
use crate::engine::select::{RollbackTo, release_named, rollback_targets};
use crate::error::{CtlError, Result};
use crate::state::home::Home;
use crate::state::store::{AgentRecord, DeployKind, DeployRecord, DeployStatus, Store};

use super::fanout::*;
use super::host_ops::*;
use super::lock::*;
use super::scope::*;
use crate::engine::planner::batches;
use crate::state::store::HostResult;

pub struct RollbackArgs {
    pub project: String,
    pub env: String,
    pub to: Option<RollbackTo>,
    pub hosts: Option<Vec<String>>,
    /// Who asks (the server's user); the OS user running `slipctl` when `None`.
    pub user: Option<String>,
}

/// What one host answered to `Releases`, with the connection for what follows.
pub type ReleasesAnswer = std::result::Result<(AgentClient, pb::ReleasesReply), HostError>;

/// Ask every host what it holds, in the scope's order.
pub async fn query_releases(
    scope: &Scope,
    tls: Arc<rustls::ClientConfig>,
    timeouts: Timeouts,
) -> Vec<(AgentRecord, ReleasesAnswer)> {
    let agents: BTreeMap<String, AgentRecord> = scope.hosts.iter().map(|a| (a.name.clone(), a.clone())).collect();
    let names: Vec<String> = scope.hosts.iter().map(|a| a.name.clone()).collect();
    let answers = ask_all(&names, |host| {
        let (tls, agent, target) = (tls.clone(), agents[&host].clone(), pb_target(&scope.settings, &host));
        async move {
            let mut client = client::connect(tls, &agent, timeouts).await?;
            let reply =
                tokio::time::timeout(timeouts.call, client.releases(pb::ReleasesRequest { target: Some(target) }))
                    .await
                    .map_err(|_| HostError::Timeout { what: "no answer", secs: timeouts.call.as_secs(), hint: "" })?
                    .map_err(|s| HostError::from_status(&s))?
                    .into_inner();
            Ok((client, reply))
        }
    })
    .await;
    answers.into_iter().map(|(host, answer)| (agents[&host].clone(), answer)).collect()
}

/// Where a rollback takes each host, decided from what the hosts answer (with the connections,
/// for the relinks that follow).
struct Decided {
    clients: Vec<(AgentRecord, AgentClient)>,
    targets: Vec<(String, ReleaseId)>,
    /// What each host runs now.
    currents: BTreeMap<String, String>,
}

async fn decide(
    home: &Home,
    scope: &Scope,
    args: &RollbackArgs,
    tls: Arc<rustls::ClientConfig>,
    timeouts: Timeouts,
    reporter: &Emitter,
) -> Result<Decided> {
    let settings = &scope.settings;
    let answers = query_releases(scope, tls, timeouts).await;
    let unreachable: Vec<String> =
        answers.iter().filter_map(|(a, r)| r.as_ref().err().map(|e| format!("{}: {e}", a.name))).collect();
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
    // Undoing the last deploy: a host it did not reach (a `--hosts` deploy went to others)
    // already runs what the fleet ran before, and stays there.
    if args.to.is_none() && args.hosts.is_none() {
        let keep = on_newest(&replies);
        for (host, current) in replies.iter().filter(|(h, _)| !keep.contains(h)).map(|(h, r)| (h, &r.current)) {
            reporter.say(format!("{host} runs {current}, not the newest release: nothing to undo there"));
        }
        clients.retain(|(a, _)| keep.contains(&a.name));
        replies.retain(|(h, _)| keep.contains(h));
    }
    let to = match &args.to {
        None => None,
        Some(RollbackTo::Release(id)) => Some(id.clone()),
        Some(RollbackTo::Deploy(n)) => Some(deploy_release(home, settings, *n)?),
        Some(RollbackTo::Name(name)) => {
            let mirror = crate::source::git::mirror_path(&home.cache(), &settings.project);
            let url = repo_url(&scope.project, settings);
            let commit = crate::source::git::resolve(&mirror, name, &url).ok().map(|r| r.commit);
            Some(release_named(&replies, name, commit.as_deref())?)
        }
    };
    if let Some(to) = &to
        && args.to != Some(RollbackTo::Release(to.clone()))
    {
        reporter.say(format!("--to {}: release {to}", shown_to(args.to.as_ref())));
    }
    let targets = rollback_targets(&replies, to.as_ref())
        .map_err(|problems| CtlError::bad(format!("rollback refused, no host touched: {}", problems.join("; "))))?;
    let currents = replies.into_iter().map(|(h, r)| (h, r.current)).collect();
    Ok(Decided { clients, targets, currents })
}

/// What a rollback would do, host by host, as it stands now: (host, its current release, the
/// release it would go to). Nothing is touched; the rollback itself decides again under the
/// lock. For a confirmation that names what changes where.
pub async fn preview(home: &Home, args: &RollbackArgs) -> Result<Vec<(String, String, ReleaseId)>> {
    let scope = load_scope(home, &args.project, &args.env, args.hosts.as_deref())?;
    let timeouts = Timeouts::host(scope.settings.rollout.host_timeout_secs);
    let decided = decide(home, &scope, args, home.client_tls()?, timeouts, &Emitter::discard()).await?;
    Ok(decided
        .targets
        .into_iter()
        .map(|(h, to)| (h.clone(), decided.currents.get(&h).cloned().unwrap_or_default(), to))
        .collect())
}

/// `slipctl rollback`.
pub async fn rollback(home: &Home, args: RollbackArgs, reporter: &Emitter) -> Result<DeployRecord> {
    let started = Instant::now();
    let scope = load_scope(home, &args.project, &args.env, args.hosts.as_deref())?;
    let timeouts = Timeouts::host(scope.settings.rollout.host_timeout_secs);
    let tls = home.client_tls()?;
    let settings = &scope.settings;
    let drainer = crate::engine::drain::Drainer::of(&scope, tls.clone(), timeouts)?;
    let mut record = DeployRecord::start(
        DeployKind::Rollback,
        &settings.project,
        &settings.env,
        args.user.clone().unwrap_or_else(current_user),
    );
    record.project_revision = (scope.project.revision > 0).then_some(scope.project.revision);
    // The targets are decided under the lock: no deploy can change what the hosts hold between
    // asking them and relinking.
    let _lock = take_lock(home, &record, reporter)?;
    let decided = decide(home, &scope, &args, tls.clone(), timeouts, reporter).await;
    // Refused before any host is touched: nothing to record (like any other bad input).
    let Decided { clients, targets, .. } = decided?;
    number(home, &mut record)?;
    reporter.started(record.id);
    let mut distinct: Vec<&ReleaseId> = targets.iter().map(|(_, t)| t).collect();
    distinct.sort();
    distinct.dedup();
    record.release = if distinct.len() == 1 { Some(distinct[0].clone()) } else { None };
    reporter.say(format!(
        "rollback #{} {}/{}: {} host(s) to {}",
        record.id,
        settings.project,
        settings.env,
        targets.len(),
        if distinct.len() == 1 { distinct[0].to_string() } else { "their previous releases".to_owned() }
    ));
    if !settings.target.migrate.is_empty() {
        reporter.say(
            "migrate is not run by a rollback: what the last deploy's migrate did stays (undo it by hand, or with a deploy)",
        );
    }
    let clock = Arc::new(Clock(Instant::now()));
    reporter.hosts(targets.iter().map(|(h, _)| h.as_str()));
    let by_host: BTreeMap<String, (AgentRecord, AgentClient, ReleaseId)> = clients
        .into_iter()
        .zip(&targets)
        .map(|((agent, client), (_, target))| (agent.name.clone(), (agent, client, target.clone())))
        .collect();
    let names: Vec<String> = by_host.keys().cloned().collect();
    let fan = |events| Fanout { tls: tls.clone(), events, clock: clock.clone(), timeouts };
    let mut results: BTreeMap<String, HostResult> = BTreeMap::new();
    match drainer {
        // All at once: a relink is a rename.
        None => {
            results = fan_out(&names, reporter, &mut None, |host, events| {
                let (agent, client, target) = by_host[&host].clone();
                let result = new_host_result(&agent, Some(&target));
                let request = activate_request(settings, &agent.name, &record, &target);
                activate_host(fan(events), client, request, result)
            })
            .await;
            let relinked: Vec<String> = results.iter().filter(|(_, r)| r.activated).map(|(h, _)| h.clone()).collect();
            check_health(&relinked, settings, &record, &by_host, &mut results, reporter, &fan).await;
        }
        // With a balancer: batch by batch as the rollout goes, each host drained, relinked,
        // and put back once relinked (one whose drain fails is not touched).
        Some(drainer) => {
            let rollout = &settings.rollout;
            for batch in batches(&names, &settings.canary, rollout.strategy, rollout.batch) {
                let drained = fan_out(&batch, reporter, &mut None, |host, events| {
                    let (agent, _, target) = by_host[&host].clone();
                    let result = new_host_result(&agent, Some(&target));
                    drain_host(fan(events), drainer.clone(), agent, result)
                })
                .await;
                let ready: Vec<String> = drained.iter().filter(|(_, (_, ok))| *ok).map(|(h, _)| h.clone()).collect();
                let mut partial: BTreeMap<String, HostResult> =
                    drained.into_iter().map(|(h, (result, _))| (h, result)).collect();
                let relinked = fan_out(&ready, reporter, &mut None, |host, events| {
                    let (agent, client, target) = by_host[&host].clone();
                    let request = activate_request(settings, &agent.name, &record, &target);
                    activate_host(fan(events), client, request, partial[&host].clone())
                })
                .await;
                let relinked_ok: Vec<String> =
                    relinked.iter().filter(|(_, r)| r.activated).map(|(h, _)| h.clone()).collect();
                partial.extend(relinked);
                // Back into the balancer only once healthy (seed 004: 移除集群 → 回滚 → 重启和测试
                // → 加入集群): a service still starting after its restart gets no traffic, and a
                // host that fails its check stays out and says so.
                let back = check_health(&relinked_ok, settings, &record, &by_host, &mut partial, reporter, &fan).await;
                let undrained = fan_out(&back, reporter, &mut None, |host, events| {
                    undrain_host(fan(events), drainer.clone(), by_host[&host].0.clone(), partial[&host].clone())
                })
                .await;
                partial.extend(undrained.into_iter().map(|(h, (r, _))| (h, r)));
                let stop = partial.values().any(|r| !r.ok);
                results.extend(partial);
                if stop {
                    reporter.say("a host failed: the remaining batches are not rolled back");
                    break;
                }
            }
        }
    }
    reporter.finish();
    for host in &names {
        results.entry(host.clone()).or_insert_with(|| {
            let (agent, _, target) = &by_host[host];
            let mut r = new_host_result(agent, Some(target));
            r.error = Some("not rolled back: a host of an earlier batch failed".into());
            r
        });
    }
    record.hosts = names.iter().filter_map(|h| results.remove(h)).collect();
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
    let target = format!("{}/{}", record.project, record.env);
    let detail =
        format!("rollback #{}{}", record.id, record.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default());
    crate::ops::audit::record(&store, &record.user, "", "rollback", &target, record.status.word(), &detail);
    Ok(record)
}

/// Health-check `hosts` with the env's check, as a deploy does after a flip (none set: every host
/// passes); the healthy ones. A host that fails keeps its failure in `results` (its step and an
/// error saying it stays out of the balancer).
async fn check_health(
    hosts: &[String],
    settings: &slipway_common::config::EnvSettings,
    record: &DeployRecord,
    by_host: &BTreeMap<String, (AgentRecord, AgentClient, ReleaseId)>,
    results: &mut BTreeMap<String, HostResult>,
    reporter: &Emitter,
    fan: &impl Fn(Events) -> Fanout,
) -> Vec<String> {
    let Some(spec) = health_spec(settings) else { return hosts.to_vec() };
    let checked = fan_out(hosts, reporter, &mut None, |host, events| {
        let request = pb::HealthRequest {
            target: Some(pb_target(settings, &host)),
            spec: Some(spec.clone()),
            hook_context: Some(hook_context(settings, &host, &record.commit, &record.git_ref)),
            generation: crate::state::leader::generation(record.id),
            deploy_id: record.id,
        };
        let (client, mut result) = (by_host[&host].1.clone(), results[&host].clone());
        let fan = fan(events);
        async move {
            let healthy = health_host(fan, client, request, &mut result).await;
            if !healthy {
                result.error.get_or_insert_with(|| {
                    "rolled back but unhealthy: kept out of the balancer (`slipctl show` has the check's answer)".into()
                });
            }
            (result, healthy)
        }
    })
    .await;
    let mut healthy = Vec::new();
    for (host, (result, ok)) in checked {
        if ok {
            healthy.push(host.clone());
        }
        results.insert(host, result);
    }
    healthy
}

/// The release deploy #`n` of this project+env shipped.
fn deploy_release(home: &Home, settings: &slipway_common::config::EnvSettings, n: u64) -> Result<ReleaseId> {
    let store = Store::open(&home.state())?;
    let record = store
        .deploy(n)?
        .ok_or_else(|| CtlError::not_found(format!("unknown deploy #{n}")).fix("`slipctl history` lists them"))?;
    if record.project != settings.project || record.env != settings.env {
        return Err(CtlError::bad(format!(
            "deploy #{n} was of {}/{}, not {}/{}",
            record.project, record.env, settings.project, settings.env
        ))
        .fix(format!("`slipctl history {} {}` lists this env's deploys", settings.project, settings.env)));
    }
    record.release.ok_or_else(|| {
        CtlError::bad(format!("deploy #{n} shipped no single release")).fix("pass a release id from `slipctl releases`")
    })
}

fn shown_to(to: Option<&RollbackTo>) -> String {
    match to {
        Some(RollbackTo::Deploy(n)) => format!("#{n}"),
        Some(RollbackTo::Name(name)) => name.clone(),
        Some(RollbackTo::Release(id)) => id.to_string(),
        None => String::new(),
    }
}

/// The hosts on the newest release any host of the env runs (release ids sort by time): the
/// ones the last deploy reached. Hosts with no release count as reached (nothing to skip them for).
fn on_newest(replies: &[(String, pb::ReleasesReply)]) -> Vec<String> {
    let newest = replies.iter().map(|(_, r)| r.current.as_str()).max().unwrap_or("");
    replies.iter().filter(|(_, r)| r.current == newest || r.current.is_empty()).map(|(h, _)| h.clone()).collect()
}
