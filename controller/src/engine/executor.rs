//! The executor loop: carries out the pure planner's actions (stage, activate, health-check,
//! abort, roll back) and feeds each host's new state back to it, until the planner says done.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use slipway_common::ReleaseId;
use slipway_proto::pb;
use tokio::sync::{mpsc, watch};

use crate::engine::client::{self, AgentClient, Timeouts};
use crate::engine::events::Emitter;
use crate::engine::host_error::HostError;
use crate::engine::maintenance;
use crate::engine::planner::{Action, HostState, Migrate, Outcome, Plan, batches, next, set};
use crate::error::{CtlError, Result};
use crate::state::store::{AgentRecord, Decision, DeployKind, DeployRecord, DeployStatus, HostResult};

use super::fanout::*;
use super::host_ops::*;
use super::package::*;
use super::scope::*;
use super::transfer::*;

/// How a deploy goes on from where another run left it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Carry {
    /// Paused after its canary, then promoted or aborted.
    Decided(Decision),
    /// Left running by a leader that is gone: from its journal (its events, read once).
    TakenOver(Vec<(u32, serde_json::Value)>),
}

/// Where each host of a deploy is, by its journal: flipped hosts are `Activated` (to be
/// checked again), failed ones `Failed`; staged ones start over (staging again is answered
/// from what the host holds), as do the others.
/// Where each host of a deploy taken over stands, from its journal, with why it failed. A host
/// that failed once its activation had begun counts as (possibly) activated: a `post_release`
/// that failed after the flip says only `failed`, and the rollback that follows relinks a host
/// only if it runs the new release.
fn from_journal(events: &[(u32, serde_json::Value)]) -> BTreeMap<String, (HostState, Option<String>)> {
    let mut out: BTreeMap<String, (HostState, Option<String>)> = BTreeMap::new();
    let mut activating = std::collections::BTreeSet::new();
    for (_, e) in events {
        if e["event"] != "host" {
            continue;
        }
        let Some(host) = e["host"].as_str() else { continue };
        let (now, error) = out.get(host).cloned().unwrap_or((HostState::Pending, None));
        let restored = match (e["kind"].as_str(), now) {
            (Some("activating"), now) => {
                activating.insert(host.to_owned());
                (now, error)
            }
            (Some("activated"), _) => (HostState::Activated, None),
            (Some("failed"), now) => (
                HostState::Failed { activated: now == HostState::Activated || activating.contains(host) },
                Some(e["error"].as_str().unwrap_or("failed").to_owned()),
            ),
            (Some(_), now) => (now, error),
            (None, _) => continue,
        };
        out.insert(host.to_owned(), restored);
    }
    out
}

/// The rollout: the planner decides, this loop carries out its actions and records every step.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_deploy(
    scope: &Scope,
    package: &mut Package,
    record: &mut DeployRecord,
    tls: Arc<rustls::ClientConfig>,
    reporter: &Emitter,
    timeouts: Timeouts,
    (mut cancel, full): (Option<watch::Receiver<bool>>, bool),
    home: &crate::state::home::Home,
    carry: Option<Carry>,
    migrate: Migrate,
) -> Result<()> {
    let (resume, journal) = match carry {
        Some(Carry::Decided(d)) => (Some(d), None),
        Some(Carry::TakenOver(journal)) => (None, Some(journal)),
        None => (None, None),
    };
    let cache = &home.cache();
    let settings = &scope.settings;
    // With a store, each artifact goes there once and hosts fetch it: nothing is streamed.
    let store = crate::engine::store::Store::of_home(&home.root)?.map(Arc::new);
    package.no_streaming |= store.is_some();
    let rollout = &settings.rollout;
    let release: ReleaseId =
        record.release.clone().ok_or_else(|| CtlError::failed("a deploy runs with its release id"))?;
    let clock = Arc::new(Clock(Instant::now()));
    let names: Vec<String> = scope.hosts.iter().map(|h| h.name.clone()).collect();
    let mut plan = Plan {
        batches: batches(&names, &settings.canary, rollout.strategy, rollout.batch),
        max_failures: rollout.max_failures,
        // An abort of a paused deploy always takes the canary back.
        auto_rollback: rollout.auto_rollback || resume == Some(Decision::Abort),
        health_check: rollout.health.is_some(),
        pause_after_canary: rollout.canary_pause && resume.is_none(),
        migrate,
    };
    let mut aborting = resume == Some(Decision::Abort);
    if plan.batches.len() > 1 {
        let sizes: Vec<String> = plan.batches.iter().map(|b| b.len().to_string()).collect();
        reporter.say(format!("rollout in {} batches of {} host(s)", plan.batches.len(), sizes.join(", ")));
    }
    reporter.hosts(names.iter().map(String::as_str));
    let agents: BTreeMap<String, AgentRecord> = scope.hosts.iter().map(|a| (a.name.clone(), a.clone())).collect();
    let mut states: BTreeMap<String, HostState> = names.iter().map(|h| (h.clone(), HostState::Pending)).collect();
    let mut results: BTreeMap<String, HostResult> =
        scope.hosts.iter().map(|a| (a.name.clone(), new_host_result(a, Some(&release)))).collect();
    // Carrying on a paused deploy from another process: its canary is where the record says.
    if resume.is_some() {
        for h in &record.hosts {
            if h.ok && h.activated && states.contains_key(&h.host) {
                let state = if plan.health_check { HostState::Healthy } else { HostState::Activated };
                states.insert(h.host.clone(), state);
                results.insert(h.host.clone(), h.clone());
            }
        }
    }
    let mut clients: BTreeMap<String, AgentClient> = BTreeMap::new();
    // The hosts whose maintenance page this deploy put up (`maintenance = "during_migrate"`).
    let mut paged: Vec<String> = Vec::new();
    // Carrying on a deploy whose leader is gone: each host is where its journal says.
    if let Some(journal) = &journal {
        let restored = from_journal(journal);
        // Past the canary already (a host of a later batch was worked on): no pause again.
        if plan.batches.iter().skip(1).flatten().any(|h| restored.contains_key(h)) {
            plan.pause_after_canary = false;
        }
        for (host, (state, error)) in restored {
            if !states.contains_key(&host) {
                continue;
            }
            if let (Some(error), Some(result)) = (error, results.get_mut(&host)) {
                result.ok = false;
                result.activated = state == HostState::Failed { activated: true };
                result.error = Some(format!("{error} (before the leader changed)"));
            }
            // Flipped hosts are checked again (health, when the env has a check) with a
            // connection of this process.
            if state == HostState::Activated && plan.health_check {
                match client::connect(tls.clone(), &agents[&host], timeouts).await {
                    Ok(c) => {
                        clients.insert(host.clone(), c);
                    }
                    Err(e) => {
                        reporter.say(format!("{host}: cannot reach it to check it: {e}"));
                        states.insert(host, HostState::Failed { activated: true });
                        continue;
                    }
                }
            }
            states.insert(host, state);
        }
        let live: Vec<&String> = states.iter().filter(|(_, s)| **s == HostState::Activated).map(|(h, _)| h).collect();
        reporter.say(format!(
            "carrying on deploy #{} from its journal: {} host(s) already flipped{}",
            record.id,
            live.len(),
            if live.is_empty() {
                String::new()
            } else {
                format!(" ({})", live.iter().map(|h| h.as_str()).collect::<Vec<_>>().join(", "))
            }
        ));
    }
    let mut manifest_pb: Option<pb::Manifest> = None;
    // With [rollout.drain]: hosts taken out of the balancer, to be put back once they are healthy
    // (or rolled back); a host that fails stays out.
    let drainer = crate::engine::drain::Drainer::of(scope, tls.clone(), timeouts)?;
    let mut drained: std::collections::BTreeSet<String> = Default::default();
    let fan = |events: Events| Fanout { tls: tls.clone(), events, clock: clock.clone(), timeouts };
    // A canary kept drained for its tests, carried on from another process: it is still out of
    // the balancer; promoting puts it back now (aborting does after its rollback).
    if resume.is_some() && rollout.canary_keep_drained && drainer.is_some() {
        drained.extend(plan.batches[0].iter().cloned());
        if resume == Some(Decision::Promote) {
            let canary = plan.batches[0].clone();
            undrain(&drainer, &mut drained, &canary, &mut results, &mut states, &agents, reporter, &fan).await;
        }
    }
    let outcome = loop {
        let stopping = is_cancelled(&cancel) || aborting;
        match next(&plan, &states, stopping) {
            Action::Done(outcome) => break outcome,
            Action::Pause => {
                let t = Instant::now();
                let decided =
                    pause(home, record, &results, reporter, &mut cancel, rollout.canary_pause_timeout_secs).await?;
                // The pause is a step of each canary host, with how long it lasted and how it ended.
                if let Some(d) = decided {
                    let how = match d {
                        Decision::Promote => "promoted",
                        Decision::Abort => "aborted",
                    };
                    for host in &plan.batches[0] {
                        if let Some(result) = results.get_mut(host) {
                            let ok = result.ok;
                            clock.step(result, "pause", t, Ok(format!("paused after the canary, then {how}")));
                            result.ok = ok;
                        }
                    }
                }
                match decided {
                    Some(Decision::Promote) => {
                        plan.pause_after_canary = false;
                        // A canary kept out of the balancer for its tests goes back in now.
                        let canary: Vec<String> = plan.batches[0].clone();
                        undrain(&drainer, &mut drained, &canary, &mut results, &mut states, &agents, reporter, &fan)
                            .await;
                    }
                    Some(Decision::Abort) => {
                        aborting = true;
                        plan.auto_rollback = true;
                    }
                    // The waiting process stops; the deploy stays paused (and its lock held).
                    None => {
                        // (Paused, the canary is there to be tried: the page comes down.)
                        maintenance::down_after(settings, &clients, &mut paged, timeouts, reporter).await;
                        record.hosts = results.into_values().collect();
                        record.status = DeployStatus::Paused;
                        reporter.finish();
                        return Ok(());
                    }
                }
            }
            Action::Stage { batch, hosts } => {
                if batch > 0 && rollout.delay_secs > 0 {
                    reporter.say(format!("waiting {}s before batch {}", rollout.delay_secs, batch + 1));
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_secs(rollout.delay_secs)) => {}
                        () = cancelled(&mut cancel) => continue,
                    }
                }
                let (planner_events, _) = mpsc::unbounded_channel();
                let planned = async {
                    let (mut uploads, connected) = if full {
                        package.pack(reporter).await?;
                        (BTreeMap::new(), BTreeMap::new())
                    } else {
                        plan_uploads(&hosts, &agents, settings, package, &fan(planner_events), reporter, cache).await?
                    };
                    for host in &hosts {
                        if !uploads.contains_key(host) {
                            uploads.insert(host.clone(), package.full_upload(reporter).await?);
                        }
                    }
                    Ok::<_, CtlError>((uploads, connected))
                }
                .await;
                // Each artifact of the batch into the store, once: a store that fails fails the
                // batch's hosts before any of them is sent anything.
                let planned = match (planned, &store) {
                    (Ok((uploads, connected)), Some(store)) => {
                        let manifest = package.manifest();
                        to_store(store, &settings.project, &uploads, manifest, reporter)
                            .await
                            .map(|()| (uploads, connected))
                    }
                    (planned, _) => planned,
                };
                // Packaging for this batch failed: its hosts failed, and the planner decides what
                // that means for the batches already on the new release.
                let (uploads, connected) = match planned {
                    Ok(planned) => planned,
                    Err(e) => {
                        let t = Instant::now();
                        for host in hosts {
                            let result = results.get_mut(&host).expect("every host has a result");
                            clock.step(result, "package", t, Err(HostError::Local(e.to_string())));
                            set(&mut states, &[host], HostState::Failed { activated: false });
                        }
                        continue;
                    }
                };
                let manifest = manifest_pb.get_or_insert_with(|| pb::Manifest::from(package.manifest())).clone();
                let total_entries = package.manifest().entries.len() as u64;
                let manifest_digest = package.manifest().digest().to_vec();
                let staged = fan_out(&hosts, reporter, &mut cancel, |host, events| {
                    let upload = uploads[&host].clone();
                    let (sha256, size, delta, base) = match &upload {
                        Upload::File { sha256, size, delta, base, .. } => {
                            (slipway_proto::hex_to_bytes(sha256), *size, *delta, base.clone())
                        }
                        Upload::Streamed { .. } => (Vec::new(), 0, false, None),
                    };
                    // Signed now, as this host's stage starts: a late batch gets a fresh URL.
                    let artifact_url = match (&store, &upload) {
                        (Some(store), Upload::File { sha256, .. }) => {
                            store.get_url(&store.key(&settings.project, sha256))
                        }
                        _ => String::new(),
                    };
                    let artifact_ca_pem = store.as_ref().map(|s| s.ca_pem().to_owned()).unwrap_or_default();
                    // A host that holds a known base gets a diff against it, not the manifest.
                    let (manifest, base_release, base_manifest_sha256, manifest_diff) = match base {
                        Some(b) => (None, b.release.to_string(), b.manifest_sha256.clone(), Some(b.diff.clone())),
                        None => (Some(manifest.clone()), String::new(), Vec::new(), None),
                    };
                    // With a store, the whole manifest is fetched from it too (a diff still travels).
                    let (manifest, manifest_url, manifest_sha256) = match (&store, manifest) {
                        (Some(store), Some(_)) => {
                            let url = store.get_url(&store.manifest_key(&settings.project, &manifest_digest));
                            (None, url, manifest_digest.clone())
                        }
                        (_, manifest) => (manifest, String::new(), Vec::new()),
                    };
                    let header = pb::StageHeader {
                        target: Some(pb_target(settings, &host)),
                        deploy_id: record.id,
                        release_id: release.to_string(),
                        commit: record.commit.clone(),
                        git_ref: record.git_ref.clone(),
                        generation: crate::state::leader::generation(record.id),
                        manifest,
                        artifact_sha256: sha256,
                        artifact_size: size,
                        hook_context: Some(hook_context(settings, &host, &record.commit, &record.git_ref)),
                        pre_release: Some(hook_spec(&settings.target.pre_release, settings)),
                        post_release: Some(hook_spec(&settings.target.post_release, settings)),
                        shared: settings.target.shared.clone(),
                        delta,
                        reuse_hardlink: settings.reuse == slipway_common::config::ReuseMode::Hardlink,
                        stage_timeout_secs: settings.rollout.stage_timeout_secs,
                        base_release,
                        base_manifest_sha256,
                        manifest_diff,
                        artifact_url,
                        artifact_ca_pem,
                        manifest_url,
                        manifest_sha256,
                    };
                    let connection = connected.get(&host).cloned();
                    stage_host(fan(events), agents[&host].clone(), header, upload, total_entries, connection)
                })
                .await;
                // The hosts that staged hold this manifest now: keep it, so the next deploy can
                // send them a diff against it.
                if staged.values().any(|(_, client)| client.is_some())
                    && let Err(e) = crate::source::manifests::save(cache, package.manifest())
                {
                    reporter.say(format!("cannot keep the manifest for the next deploy's diff: {e}"));
                }
                for host in hosts {
                    match staged.get(&host) {
                        Some((result, Some(client))) => {
                            results.insert(host.clone(), result.clone());
                            clients.insert(host.clone(), client.clone());
                            set(&mut states, &[host], HostState::Staged);
                        }
                        Some((result, None)) => {
                            results.insert(host.clone(), result.clone());
                            set(&mut states, &[host], HostState::Failed { activated: false });
                        }
                        // Cancelled mid-upload: the agent drops the staging dir when the stream
                        // breaks; an Abort makes sure.
                        None => set(&mut states, &[host], HostState::Interrupted),
                    }
                }
            }
            Action::Migrate => {
                let first = plan.batches[0].clone();
                let page_up = !settings.target.maintenance_during_migrate
                    || maintenance::up_for_migrate(settings, &clients, &states, &mut paged, timeouts, reporter).await;
                let ran = page_up
                    && migrate_once(
                        settings,
                        &first,
                        &states,
                        &clients,
                        record,
                        &release,
                        &mut results,
                        reporter,
                        &fan,
                    )
                    .await;
                plan.migrate = if ran { Migrate::Done } else { Migrate::Failed };
            }
            Action::Activate(hosts) => {
                let hosts = match &drainer {
                    None => hosts,
                    Some(d) => {
                        let out = fan_out(&hosts, reporter, &mut None, |host, events| {
                            drain_host(fan(events), d.clone(), agents[&host].clone(), results[&host].clone())
                        })
                        .await;
                        let mut ready = Vec::new();
                        for (host, (result, ok)) in out {
                            results.insert(host.clone(), result);
                            if ok {
                                drained.insert(host.clone());
                                ready.push(host);
                            } else {
                                set(&mut states, &[host], HostState::Failed { activated: false });
                            }
                        }
                        ready
                    }
                };
                let activated = fan_out(&hosts, reporter, &mut None, |host, events| {
                    let request = activate_request(settings, &host, record, &release);
                    let client = clients[&host].clone();
                    activate_host(fan(events), client, request, results[&host].clone())
                })
                .await;
                for (host, result) in activated {
                    let state = match (result.ok, result.activated) {
                        (true, _) => HostState::Activated,
                        (false, activated) => HostState::Failed { activated },
                    };
                    results.insert(host.clone(), result);
                    set(&mut states, &[host], state);
                }
                // Without a health check, a host goes back into the balancer once activated.
                // A canary kept drained for its tests while paused goes back in at promote.
                let keep_out = |h: &String| kept_drained(rollout, &plan, h);
                if !plan.health_check {
                    let back: Vec<String> =
                        hosts.iter().filter(|h| states[*h] == HostState::Activated && !keep_out(h)).cloned().collect();
                    undrain(&drainer, &mut drained, &back, &mut results, &mut states, &agents, reporter, &fan).await;
                }
            }
            Action::HealthCheck(hosts) => {
                let spec = health_spec(settings);
                let checked = fan_out(&hosts, reporter, &mut None, |host, events| {
                    let request = pb::HealthRequest {
                        target: Some(pb_target(settings, &host)),
                        spec: spec.clone(),
                        hook_context: Some(hook_context(settings, &host, &record.commit, &record.git_ref)),
                        generation: crate::state::leader::generation(record.id),
                        deploy_id: record.id,
                    };
                    let (client, mut result) = (clients[&host].clone(), results[&host].clone());
                    let fan = fan(events);
                    async move {
                        let healthy = health_host(fan, client, request, &mut result).await;
                        (result, healthy)
                    }
                })
                .await;
                for (host, (result, healthy)) in checked {
                    results.insert(host.clone(), result);
                    let state = if healthy { HostState::Healthy } else { HostState::Failed { activated: true } };
                    set(&mut states, &[host], state);
                }
                let keep_out = |h: &String| kept_drained(rollout, &plan, h);
                let back: Vec<String> =
                    hosts.iter().filter(|h| states[*h] == HostState::Healthy && !keep_out(h)).cloned().collect();
                undrain(&drainer, &mut drained, &back, &mut results, &mut states, &agents, reporter, &fan).await;
            }
            Action::Abort(hosts) => {
                let aborted = fan_out(&hosts, reporter, &mut None, |host, events| {
                    let request = pb::AbortRequest {
                        target: Some(pb_target(settings, &host)),
                        release_id: release.to_string(),
                        generation: crate::state::leader::generation(record.id),
                    };
                    let (client, agent) = (clients.get(&host).cloned(), agents[&host].clone());
                    abort_host(fan(events), client, agent, request, results[&host].clone())
                })
                .await;
                for (host, (result, state)) in aborted {
                    results.insert(host.clone(), result);
                    set(&mut states, &[host], state);
                }
            }
            Action::RollBack(hosts) => {
                reporter.say(format!("rolling back {} host(s) to their previous release", hosts.len()));
                // Hosts already back in the balancer (an earlier batch) leave it again for their relink.
                if let Some(d) = &drainer {
                    let serving: Vec<String> = hosts.iter().filter(|h| !drained.contains(*h)).cloned().collect();
                    let out = fan_out(&serving, reporter, &mut None, |host, events| {
                        drain_host(fan(events), d.clone(), agents[&host].clone(), results[&host].clone())
                    })
                    .await;
                    for (host, (result, ok)) in out {
                        let kept_ok = results[&host].ok;
                        results.insert(host.clone(), result);
                        if let Some(r) = results.get_mut(&host) {
                            r.ok = kept_ok && ok;
                        }
                        if ok {
                            drained.insert(host);
                        }
                    }
                }
                let owned_settings = Arc::new(settings.clone());
                let mut back = record.clone();
                back.kind = DeployKind::Rollback;
                let rolled = fan_out(&hosts, reporter, &mut None, |host, events| {
                    let (client, result) = (clients.get(&host).cloned(), results[&host].clone());
                    let (fan, agent) = (fan(events), agents[&host].clone());
                    let (settings, back, release) = (owned_settings.clone(), back.clone(), release.clone());
                    async move {
                        // A host carried on from a paused deploy is connected to only now.
                        let client = match client {
                            Some(c) => c,
                            None => match client::connect(fan.tls.clone(), &agent, fan.timeouts).await {
                                Ok(c) => c,
                                Err(e) => {
                                    let mut result = result;
                                    fan.clock.follow_up(&mut result, "rollback", Instant::now(), Err(e));
                                    return (result, HostState::RollbackFailed);
                                }
                            },
                        };
                        roll_back_host(fan, client, settings, back, release, result).await
                    }
                })
                .await;
                for (host, (result, state)) in rolled {
                    results.insert(host.clone(), result);
                    set(&mut states, &[host], state);
                }
                // Relinked first, and only then back into the balancer.
                let back: Vec<String> = hosts.iter().filter(|h| states[*h] == HostState::RolledBack).cloned().collect();
                undrain(&drainer, &mut drained, &back, &mut results, &mut states, &agents, reporter, &fan).await;
            }
        }
    };
    // The page this deploy put up comes down, whatever the outcome (a page an operator had up
    // before stays).
    maintenance::down_after(settings, &clients, &mut paged, timeouts, reporter).await;
    // Only a rollout that went through prunes: until then every retained release may be needed.
    if matches!(outcome, Outcome::Succeeded | Outcome::Partial) {
        let took: Vec<String> = results
            .values()
            .filter(|r| r.ok && r.activated && clients.contains_key(&r.host))
            .map(|r| r.host.clone())
            .collect();
        let pruned = fan_out(&took, reporter, &mut None, |host, events| {
            let request = pb::PruneRequest {
                target: Some(pb_target(settings, &host)),
                keep_releases: settings.keep_releases,
                generation: crate::state::leader::generation(record.id),
            };
            prune_host(fan(events), clients[&host].clone(), request, results[&host].clone())
        })
        .await;
        results.extend(pruned);
    }
    reporter.finish();
    record.hosts = results.into_values().collect();
    let failed: Vec<String> = record
        .hosts
        .iter()
        .filter(|h| h.error.is_some())
        .map(|h| format!("{}: {}", h.host, h.error.clone().unwrap_or_default()))
        .collect();
    let cause = if failed.is_empty() { "cancelled by the operator".to_owned() } else { failed.join("; ") };
    let (n_failed, n_hosts) = (failed.len(), record.hosts.len());
    let refused = record.refused_by_agents();
    // The planner decided; this only words it.
    let (status, error) = match outcome {
        Outcome::Succeeded => (DeployStatus::Succeeded, None),
        Outcome::Partial => (
            DeployStatus::Partial,
            Some(CtlError::failed(format!("finished with {n_failed} failed host(s), within max_failures: {cause}"))),
        ),
        Outcome::RolledBack => (
            DeployStatus::RolledBack,
            Some(CtlError::failed(format!("rolled back every activated host to its previous release: {cause}"))),
        ),
        Outcome::Cancelled { .. } if aborting => (
            DeployStatus::Cancelled,
            Some(CtlError::failed("aborted after the canary: the canary went back, the other hosts were not touched")),
        ),
        Outcome::Cancelled { activated_any } => {
            let left = if activated_any { " (activated hosts stay on the new release: no auto_rollback)" } else { "" };
            (DeployStatus::Cancelled, Some(CtlError::failed(format!("cancelled{left}: {cause}"))))
        }
        Outcome::Incomplete => (
            DeployStatus::Incomplete,
            Some(CtlError::failed(format!(
                "stopped, and cleaning up failed on some host, so the fleet is mixed (slipctl show {} says which \
                 host runs what; slipctl releases to check, then rollback or deploy again): {cause}",
                record.id
            ))),
        ),
        Outcome::Failed { activated_any: false } if refused => (
            DeployStatus::Failed,
            Some(CtlError::bad(format!(
                "refused by the agent on {n_failed} of {n_hosts} host(s), so no host was activated: {cause}"
            ))),
        ),
        Outcome::Failed { activated_any: false } => (
            DeployStatus::Failed,
            Some(CtlError::failed(format!(
                "failed on {n_failed} of {n_hosts} host(s), so no host was activated: {cause}"
            ))),
        ),
        Outcome::Failed { activated_any: true } => {
            let why = if settings.rollout.auto_rollback {
                "they had no previous release to go back to"
            } else {
                "auto_rollback is off"
            };
            (
                DeployStatus::Failed,
                Some(CtlError::failed(format!(
                    "failed on {n_failed} of {n_hosts} host(s); activated hosts stay on the new release ({why}): {cause}"
                ))),
            )
        }
    };
    record.status = status;
    match error {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// Put the drained ones of `hosts` back into the balancer; one that cannot be put back failed
/// (it does not serve). States of hosts that were already failed stay as they are.
#[allow(clippy::too_many_arguments)]
async fn undrain(
    drainer: &Option<crate::engine::drain::Drainer>,
    drained: &mut std::collections::BTreeSet<String>,
    hosts: &[String],
    results: &mut BTreeMap<String, HostResult>,
    states: &mut BTreeMap<String, HostState>,
    agents: &BTreeMap<String, AgentRecord>,
    reporter: &Emitter,
    fan: &impl Fn(Events) -> Fanout,
) {
    let Some(d) = drainer else { return };
    let back: Vec<String> = hosts.iter().filter(|h| drained.contains(*h)).cloned().collect();
    let out = fan_out(&back, reporter, &mut None, |host, events| {
        undrain_host(fan(events), d.clone(), agents[&host].clone(), results[&host].clone())
    })
    .await;
    for (host, (result, ok)) in out {
        results.insert(host.clone(), result);
        if ok {
            drained.remove(&host);
        } else if matches!(states[&host], HostState::Activated | HostState::Healthy) {
            set(states, &[host], HostState::Failed { activated: true });
        }
    }
}

/// The canary batch went through: record the deploy as paused and wait for a person's
/// decision (set in state by `slipctl promote`/`abort`, from any process). `None`: this process
/// was asked to stop (Ctrl-C) and the deploy stays paused for another one to carry on. A pause
/// longer than `timeout_secs` aborts.
async fn pause(
    home: &crate::state::home::Home,
    record: &mut DeployRecord,
    results: &BTreeMap<String, HostResult>,
    reporter: &Emitter,
    cancel: &mut Option<watch::Receiver<bool>>,
    timeout_secs: u64,
) -> Result<Option<Decision>> {
    let since = slipway_common::time::unix_now();
    record.status = DeployStatus::Paused;
    record.paused_at = Some(since);
    record.decision = None;
    record.hosts = results.values().cloned().collect();
    crate::state::store::Store::open(&home.state())?.put_deploy(record)?;
    reporter.say(format!(
        "paused after the canary: `slipctl promote {id}` goes on with the other hosts, `slipctl abort {id}` \
         rolls the canary back (waiting up to {timeout_secs}s; Ctrl-C leaves it paused)",
        id = record.id
    ));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout_secs);
    let decision = loop {
        let stored = crate::state::store::Store::open(&home.state())?.deploy(record.id)?;
        if let Some(d) = stored.and_then(|r| r.decision) {
            break Some(d);
        }
        if tokio::time::Instant::now() >= deadline {
            reporter.say(format!("the pause passed canary_pause_timeout_secs ({timeout_secs}s): aborting"));
            break Some(Decision::Abort);
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
            () = cancelled(cancel) => break None,
        }
    };
    if let Some(d) = decision {
        reporter.say(match d {
            Decision::Promote => "promoted: going on with the other hosts",
            Decision::Abort => "aborted: rolling the canary back",
        });
        record.status = DeployStatus::Running;
        record.decision = Some(d);
        crate::state::store::Store::open(&home.state())?.put_deploy(record)?;
    }
    Ok(decision)
}

/// A canary kept out of the balancer for its tests while the deploy pauses (put back at promote).
fn kept_drained(rollout: &slipway_common::config::RolloutSettings, plan: &Plan, host: &String) -> bool {
    rollout.canary_keep_drained && plan.pause_after_canary && plan.batches[0].contains(host)
}

/// Upload each distinct artifact of these uploads to the store (once per deploy).
async fn to_store(
    store: &crate::engine::store::Store,
    project: &str,
    uploads: &BTreeMap<String, Upload>,
    manifest: &slipway_common::archive::Manifest,
    reporter: &Emitter,
) -> Result<()> {
    let key = store.manifest_key(project, &manifest.digest());
    store.put_bytes_once(&key, slipway_proto::Message::encode_to_vec(&pb::Manifest::from(manifest))).await?;
    let mut seen = std::collections::BTreeSet::new();
    for upload in uploads.values() {
        let Upload::File { path, sha256, size, .. } = upload else {
            return Err(CtlError::failed("an artifact for the store was streamed instead of packaged"));
        };
        if !seen.insert(sha256.clone()) {
            continue;
        }
        let key = store.key(project, sha256);
        let t = Instant::now();
        if store.put_once(&key, path, *size).await? {
            reporter.say(format!(
                "uploaded {} to the artifact store ({}) in {}",
                crate::units::bytes(*size),
                key,
                crate::units::millis(t.elapsed().as_millis() as u64)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(host: &str, kind: &str, error: Option<&str>) -> (u32, serde_json::Value) {
        let mut e = serde_json::json!({"event": "host", "host": host, "kind": kind});
        if let Some(error) = error {
            e["error"] = serde_json::json!(error);
        }
        (0, e)
    }

    #[test]
    fn a_host_that_failed_after_its_activation_began_is_carried_on_as_activated_with_its_error() {
        let journal = [
            host("web-1", "staged", None),
            host("web-1", "activating", None),
            host("web-1", "activated", None),
            host("web-2", "staged", None),
            host("web-2", "activating", None),
            host("web-2", "failed", Some("post_release hook `x` timed out after 300s")),
            host("web-3", "failed", Some("stage: disk full")),
            host("web-4", "staged", None),
        ];
        let restored = from_journal(&journal);
        assert_eq!(restored["web-1"], (HostState::Activated, None));
        assert_eq!(
            restored["web-2"],
            (HostState::Failed { activated: true }, Some("post_release hook `x` timed out after 300s".into()))
        );
        assert_eq!(restored["web-3"], (HostState::Failed { activated: false }, Some("stage: disk full".into())));
        assert_eq!(restored["web-4"], (HostState::Pending, None));
    }
}
