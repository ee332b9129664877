//! Operations on one host, as named functions: activate (decided by what the host says when the
//! reply is lost), health-check, abort, roll back, and the bookkeeping of each host's steps and
//! hook output; the deploy's step that runs once (`migrate_once`).
use std::sync::Arc;
use std::time::Instant;

use slipway_common::ReleaseId;
use slipway_common::config::{EnvSettings, HookStage};
use slipway_proto::pb;

use crate::engine::client::{self, AgentClient, Timeouts};
use crate::engine::events::Emitter;
use crate::engine::events::HostEvent;
use crate::engine::host_error::{HostError, Shown, wire_release};
use crate::engine::planner::HostState;
use crate::state::store::{AgentRecord, DeployKind, DeployRecord, HookRecord, HostResult, Step};

use super::fanout::*;
use super::scope::*;

/// Report a hook's live output or result, and keep the result.
pub(crate) fn on_hook_event(
    output: Option<pb::HookOutput>,
    hook: Option<pb::HookResult>,
    result: &mut HostResult,
    events: &Events,
) {
    if let Some(o) = output {
        let _ =
            events.send((result.host.clone(), HostEvent::Output { stage: o.stage, data: o.data, stderr: o.stderr }));
    }
    if let Some(h) = hook {
        let _ = events.send((
            result.host.clone(),
            HostEvent::Hook {
                stage: h.stage.clone(),
                command: h.command.clone(),
                exit_code: h.exit_code,
                timed_out: h.timed_out,
                elapsed_ms: h.elapsed_ms,
            },
        ));
        result.hooks.push(HookRecord::from(h));
    }
}

/// A step recorder relative to the operation's start.
pub(crate) struct Clock(pub(crate) Instant);

impl Clock {
    pub(crate) fn step(
        &self,
        result: &mut HostResult,
        name: &str,
        started: Instant,
        outcome: std::result::Result<String, HostError>,
    ) {
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let started_ms = started.duration_since(self.0).as_millis() as u64;
        // The hooks that ran since the last step ran in this one.
        for hook in result.hooks.iter_mut().filter(|h| h.step.is_empty()) {
            hook.step = name.to_owned();
        }
        let (ok, detail) = match outcome {
            Ok(d) => (true, d),
            Err(e) => {
                // Unreachable: name the address and what to check there.
                let text = match &e {
                    HostError::Connect(why) if !why.contains("certificate") => {
                        let at =
                            if why.contains(&result.addr) { String::new() } else { format!(" (at {})", result.addr) };
                        format!("{e}{at}; {}", HostError::unreachable_fix(&result.addr))
                    }
                    _ => e.to_string(),
                };
                result.error = Some(format!("{name}: {text}"));
                result.refused |= e.is_refused();
                (false, text)
            }
        };
        result.steps.push(Step { name: name.into(), started_ms, elapsed_ms, ok, detail });
    }

    /// A clean-up step after the host already failed (abort, rollback): the host's first error
    /// stays its error, and it counts as failed whatever the clean-up did.
    pub(crate) fn follow_up(
        &self,
        result: &mut HostResult,
        name: &str,
        started: Instant,
        outcome: std::result::Result<String, HostError>,
    ) {
        let first = result.error.take();
        self.step(result, name, started, outcome);
        result.error = first.or(result.error.take());
        result.ok = false;
    }
}

pub(crate) fn new_host_result(agent: &AgentRecord, release: Option<&ReleaseId>) -> HostResult {
    HostResult {
        host: agent.name.clone(),
        addr: agent.addr.clone(),
        ok: false,
        activated: false,
        previous_release: None,
        release: release.cloned(),
        bytes_sent: 0,
        steps: Vec::new(),
        hooks: Vec::new(),
        error: None,
        refused: false,
    }
}

pub(crate) fn activate_request(
    settings: &EnvSettings,
    host: &str,
    record: &DeployRecord,
    release: &ReleaseId,
) -> pb::ActivateRequest {
    let rollback = record.kind == DeployKind::Rollback;
    pb::ActivateRequest {
        target: Some(pb_target(settings, host)),
        release_id: release.to_string(),
        generation: crate::state::leader::generation(record.id),
        deploy_id: record.id,
        deploy_type: if rollback { pb::DeployType::Rollback as i32 } else { pb::DeployType::Deploy as i32 },
        hook_context: Some(hook_context(settings, host, &record.commit, &record.git_ref)),
        // A rollback runs only the stages of `rollback_hooks`, with the lines recorded with the
        // release it restores (today's lines only for a release staged before they were recorded).
        pre_release: (rollback && settings.target.rollback_hooks.contains(&HookStage::PreRelease))
            .then(|| hook_spec(&settings.target.pre_release, settings)),
        post_release: (!rollback || settings.target.rollback_hooks.contains(&HookStage::PostRelease))
            .then(|| hook_spec(&settings.target.post_release, settings)),
        recorded_hooks: rollback,
    }
}

/// One Activate call: hook output and results go to `result` and the events; the reply or why not.
pub(crate) async fn call_activate(
    client: &mut AgentClient,
    request: pb::ActivateRequest,
    result: &mut HostResult,
    events: &Events,
    timeouts: Timeouts,
) -> std::result::Result<pb::ActivateReply, HostError> {
    use pb::activate_event::Kind;
    // Hooks have their own timeouts on the agent; the call's limit leaves room for them.
    let hook_secs: u64 = [&request.pre_release, &request.post_release]
        .iter()
        .filter_map(|h| h.as_ref())
        .map(|h| h.timeout_secs * h.commands.len() as u64)
        .sum();
    let limit = timeouts.call + std::time::Duration::from_secs(hook_secs);
    let call = async {
        let mut stream = client.activate(request).await.map_err(|s| HostError::from_status(&s))?.into_inner();
        loop {
            match stream.message().await {
                Ok(Some(pb::ActivateEvent { kind: Some(Kind::Done(reply)) })) => return Ok(reply),
                Ok(Some(pb::ActivateEvent { kind: Some(Kind::Output(o)) })) => {
                    on_hook_event(Some(o), None, result, events)
                }
                Ok(Some(pb::ActivateEvent { kind: Some(Kind::Hook(h)) })) => {
                    on_hook_event(None, Some(h), result, events)
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err(HostError::Ended("activation")),
                Err(status) => return Err(HostError::from_status(&status)),
            }
        }
    };
    match tokio::time::timeout(limit, call).await {
        Err(_) => Err(HostError::Timeout { what: "no answer", secs: limit.as_secs(), hint: "" }),
        Ok(outcome) => outcome,
    }
}

/// What a host runs, as it says itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OnHost {
    pub(crate) current: Option<ReleaseId>,
    /// What was current before `current` was activated.
    pub(crate) previous: Option<ReleaseId>,
}

/// What `current` is on a host now, asked after an `Activate` that failed or timed out: the flip
/// may have happened all the same. Asked again until `timeouts.call` has passed: an agent that
/// was restarted answers once it is back.
pub(crate) async fn current_on_host(
    client: &mut AgentClient,
    target: Option<pb::Target>,
    timeouts: Timeouts,
) -> Option<OnHost> {
    let deadline = tokio::time::Instant::now() + timeouts.call;
    loop {
        let call = client.releases(pb::ReleasesRequest { target: target.clone() });
        if let Ok(Ok(reply)) = tokio::time::timeout_at(deadline, call).await {
            let reply = reply.into_inner();
            let previous =
                reply.releases.iter().find(|r| r.id == reply.current).and_then(|r| wire_release(&r.previous));
            return Some(OnHost { current: wire_release(&reply.current), previous });
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// An `Activate` whose outcome is decided by what the host says, not by whether its reply came.
pub(crate) enum Activation {
    Replied(pb::ActivateReply),
    /// The call failed or timed out (why), but the host's `current` is the release asked for
    /// (and this was current before it).
    FlippedUnconfirmed {
        why: HostError,
        previous: Option<ReleaseId>,
    },
    /// The call failed and the host could not be asked afterwards: it may have flipped.
    Unknown(HostError),
}

/// [`call_activate`], and when it fails, ask the host what `current` is before deciding.
pub(crate) async fn activate_verified(
    client: &mut AgentClient,
    request: pb::ActivateRequest,
    result: &mut HostResult,
    events: &Events,
    timeouts: Timeouts,
) -> std::result::Result<Activation, HostError> {
    let (target, release) = (request.target.clone(), wire_release(&request.release_id));
    let e = match call_activate(client, request, result, events, timeouts).await {
        Ok(reply) => return Ok(Activation::Replied(reply)),
        Err(e) => e,
    };
    match current_on_host(client, target, timeouts).await {
        Some(on) if on.current == release => Ok(Activation::FlippedUnconfirmed { why: e, previous: on.previous }),
        Some(on) => Err(HostError::NotFlipped { why: Box::new(e), current: on.current }),
        None => Ok(Activation::Unknown(HostError::Unanswered(Box::new(e)))),
    }
}

pub(crate) async fn activate_host(
    fan: Fanout,
    mut client: AgentClient,
    request: pb::ActivateRequest,
    mut result: HostResult,
) -> HostResult {
    let Fanout { events, clock, timeouts, .. } = fan;
    let _ = events.send((result.host.clone(), HostEvent::Activating));
    let t = Instant::now();
    let target = request.release_id.clone();
    let failed = |result: &mut HostResult, step: &str, e: HostError| {
        clock.step(result, step, t, Err(e.clone()));
        result.ok = false;
        let _ = events.send((result.host.clone(), HostEvent::Failed(e)));
    };
    match activate_verified(&mut client, request, &mut result, &events, timeouts).await {
        Ok(Activation::Unknown(why)) => {
            // Maybe on the new release: counted as activated, so the rollout stops and cleans up
            // (a rollback that cannot reach the host then leaves the deploy `incomplete`).
            result.activated = true;
            failed(&mut result, "activate", HostError::Local(format!("{why}: counted as possibly activated")));
        }
        Ok(Activation::FlippedUnconfirmed { why, previous }) => {
            // The host runs the new release; what its hooks did is unknown: activated, and failed.
            result.activated = true;
            result.previous_release = previous;
            let e = format!("{why}; but current -> {target} on the host: counted as activated and failed");
            failed(&mut result, "activate", HostError::Local(e));
        }
        Ok(Activation::Replied(reply)) => {
            let previous = wire_release(&reply.previous_release);
            let detail = format!("current -> {target} (was {})", Shown(&previous));
            clock.step(&mut result, "activate", t, Ok(detail));
            result.activated = true;
            result.previous_release = previous.clone();
            if reply.post_release_error.is_empty() {
                result.ok = true;
                let _ =
                    events.send((result.host.clone(), HostEvent::Activated { previous, elapsed_ms: reply.elapsed_ms }));
            } else {
                failed(&mut result, "post_release", HostError::PostRelease(reply.post_release_error));
            }
        }
        Err(e) => failed(&mut result, "activate", e),
    }
    result
}

pub(crate) async fn health_host(
    fan: Fanout,
    mut client: AgentClient,
    request: pb::HealthRequest,
    result: &mut HostResult,
) -> bool {
    let t = Instant::now();
    let spec = request.spec.clone().unwrap_or_default();
    let limit = fan.timeouts.call
        + std::time::Duration::from_secs((spec.timeout_secs + spec.interval_secs) * (u64::from(spec.retries) + 1));
    let outcome = match tokio::time::timeout(limit, client.health(request)).await {
        Err(_) => Err(HostError::Timeout { what: "no answer", secs: limit.as_secs(), hint: "" }),
        Ok(Err(s)) => Err(HostError::from_status(&s)),
        Ok(Ok(r)) => {
            let r = r.into_inner();
            if r.healthy {
                Ok(format!("{} (attempt {})", r.detail, r.attempts))
            } else {
                Err(HostError::Unhealthy { attempts: r.attempts, detail: r.detail })
            }
        }
    };
    let healthy = outcome.is_ok();
    if let Err(e) = &outcome {
        let _ = fan.events.send((result.host.clone(), HostEvent::Failed(e.clone())));
    }
    fan.clock.step(result, "health", t, outcome);
    if !healthy {
        result.ok = false;
    }
    healthy
}

/// Drop a staged release that will not be activated (connecting again when the stage broke the
/// connection). The host failed already; `Aborted` or `AbortFailed` says whether its staging is
/// gone.
pub(crate) async fn abort_host(
    fan: Fanout,
    client: Option<AgentClient>,
    agent: AgentRecord,
    request: pb::AbortRequest,
    mut result: HostResult,
) -> (HostResult, HostState) {
    let t = Instant::now();
    let outcome = async {
        let mut client = match client {
            Some(c) => c,
            None => client::connect(fan.tls.clone(), &agent, fan.timeouts).await?,
        };
        match tokio::time::timeout(fan.timeouts.call, client.abort(request)).await {
            Ok(Ok(_)) => Ok("staged release removed".to_owned()),
            Ok(Err(s)) => Err(HostError::from_status(&s)),
            Err(_) => Err(HostError::Timeout { what: "no answer", secs: fan.timeouts.call.as_secs(), hint: "" }),
        }
    }
    .await;
    let state = if outcome.is_ok() { HostState::Aborted } else { HostState::AbortFailed };
    if outcome.is_ok() {
        let _ = fan.events.send((result.host.clone(), HostEvent::Aborted));
    }
    fan.clock.follow_up(&mut result, "abort", t, outcome);
    (result, state)
}

/// Put a host that activated `new_release` back on the release it ran before: the one its
/// activation reported, else the one the host itself recorded (asked now). Says which of
/// `RolledBack`, `RollbackFailed` or `NoRollbackTarget` the host ended in.
pub(crate) async fn roll_back_host(
    fan: Fanout,
    mut client: AgentClient,
    settings: Arc<EnvSettings>,
    back: DeployRecord,
    new_release: ReleaseId,
    mut result: HostResult,
) -> (HostResult, HostState) {
    let t = Instant::now();
    let target = pb_target(&settings, &result.host);
    let previous = match result.previous_release.clone() {
        Some(previous) => Ok(Some(previous)),
        None => match current_on_host(&mut client, Some(target), fan.timeouts).await {
            Some(on) if on.current.as_ref() == Some(&new_release) => Ok(on.previous),
            Some(on) => Err(Some(format!(
                "the host is not on the new release (current is {}); nothing to undo",
                Shown(&on.current)
            ))),
            None => Err(None),
        },
    };
    let (outcome, state) = match previous {
        Err(Some(detail)) => (Ok(detail), HostState::RolledBack),
        Err(None) => (
            Err(HostError::Connect("cannot reach the host to roll it back; it may still run the new release".into())),
            HostState::RollbackFailed,
        ),
        Ok(None) => (Err(HostError::NoPrevious(None)), HostState::NoRollbackTarget),
        Ok(Some(previous)) => {
            let request = activate_request(&settings, &result.host, &back, &previous);
            let outcome = activate_verified(&mut client, request, &mut result, &fan.events, fan.timeouts)
                .await
                .and_then(|a| match a {
                    Activation::Replied(_) => Ok(format!("current -> {previous}")),
                    Activation::FlippedUnconfirmed { why, .. } => {
                        Ok(format!("current -> {previous} (confirmed by asking the host after: {why})"))
                    }
                    Activation::Unknown(why) => Err(why),
                });
            if outcome.is_ok() {
                let _ = fan.events.send((
                    result.host.clone(),
                    HostEvent::Activated { previous: Some(previous.clone()), elapsed_ms: 0 },
                ));
            }
            let state = if outcome.is_ok() { HostState::RolledBack } else { HostState::RollbackFailed };
            (outcome, state)
        }
    };
    if state == HostState::RolledBack {
        result.activated = false;
    }
    fan.clock.follow_up(&mut result, "rollback", t, outcome);
    (result, state)
}

/// Remove what `keep_releases` does not keep on a host that took the release. Sent only once the
/// rollout succeeded; a prune that fails is noted in the host's steps and fails nothing.
pub(crate) async fn prune_host(
    fan: Fanout,
    mut client: AgentClient,
    request: pb::PruneRequest,
    mut result: HostResult,
) -> HostResult {
    let t = Instant::now();
    let outcome = match tokio::time::timeout(fan.timeouts.call, client.prune(request)).await {
        Ok(Ok(reply)) => {
            let pruned = reply.into_inner().pruned;
            Ok(if pruned.is_empty() {
                "nothing to remove".to_owned()
            } else {
                format!("removed {}", pruned.join(", "))
            })
        }
        Ok(Err(s)) => Err(HostError::from_status(&s)),
        Err(_) => Err(HostError::Timeout { what: "no answer", secs: fan.timeouts.call.as_secs(), hint: "" }),
    };
    let (ok, error) = (result.ok, result.error.take());
    fan.clock.step(&mut result, "prune", t, outcome);
    // Old releases left behind are no failure of the deploy.
    result.ok = ok;
    result.error = error;
    result.refused = false;
    result
}

/// Take a host out of its load balancer right before its flip. A drain that fails changed
/// nothing on the host: it fails there, before its `current` moves.
pub(crate) async fn drain_host(
    fan: Fanout,
    drainer: crate::engine::drain::Drainer,
    agent: AgentRecord,
    mut result: HostResult,
) -> (HostResult, bool) {
    let t = Instant::now();
    let outcome = drainer.drain(&agent).await;
    announce(&fan, &result.host, "drained", &outcome);
    let ok = outcome.is_ok();
    fan.clock.step(&mut result, "drain", t, outcome);
    if !ok {
        result.ok = false;
    }
    (result, ok)
}

/// Tell the event stream how a balancer step went.
fn announce(fan: &Fanout, host: &str, action: &'static str, outcome: &std::result::Result<String, HostError>) {
    let event = match outcome {
        Ok(detail) => HostEvent::Balancer { action, detail: detail.clone() },
        Err(e) => HostEvent::Failed(e.clone()),
    };
    let _ = fan.events.send((host.to_owned(), event));
}

/// Put a host back into its load balancer (after its health check, or after its rollback). A
/// host that is failed already keeps its first error.
pub(crate) async fn undrain_host(
    fan: Fanout,
    drainer: crate::engine::drain::Drainer,
    agent: AgentRecord,
    mut result: HostResult,
) -> (HostResult, bool) {
    let t = Instant::now();
    let outcome = drainer.undrain(&agent).await;
    let ok = outcome.is_ok();
    announce(&fan, &result.host, "undrained", &outcome);
    if result.ok {
        fan.clock.step(&mut result, "undrain", t, outcome);
        result.ok = ok;
    } else {
        fan.clock.follow_up(&mut result, "undrain", t, outcome);
    }
    (result, ok)
}

/// `[target] migrate`: once per deploy, on `migrate_host` (or the first host of the first
/// batch), in the release it staged, before any host flips. True when every line went
/// through; recorded as that host's `migrate` step with its lines' output.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn migrate_once(
    settings: &EnvSettings,
    first_batch: &[String],
    states: &std::collections::BTreeMap<String, HostState>,
    clients: &std::collections::BTreeMap<String, AgentClient>,
    record: &DeployRecord,
    release: &ReleaseId,
    results: &mut std::collections::BTreeMap<String, HostResult>,
    reporter: &Emitter,
    fan: &impl Fn(Events) -> Fanout,
) -> bool {
    let lines = settings.target.migrate.clone();
    let Some(host) = settings.target.migrate_host.clone().or_else(|| first_batch.first().cloned()) else {
        return false;
    };
    if states.get(&host) != Some(&HostState::Staged) || !clients.contains_key(&host) {
        reporter.say(format!(
            "migrate: {host} did not stage the release, so the step that runs once cannot run; nothing flips"
        ));
        return false;
    }
    reporter.say(format!("migrate on {host}: {} line(s), once, before any host flips", lines.len()));
    let spec = hook_spec(&lines, settings);
    let request = pb::RunCommandsRequest {
        stage: "migrate".into(),
        spec: Some(spec.clone()),
        hook_context: Some(hook_context(settings, &host, &record.commit, &record.git_ref)),
        vars: Default::default(),
        target: Some(pb_target(settings, &host)),
        release_id: release.to_string(),
        generation: crate::state::leader::generation(record.id),
        deploy_id: record.id,
    };
    let out = fan_out(std::slice::from_ref(&host), reporter, &mut None, |h, events| {
        let (mut client, mut result, fan, request) =
            (clients[&h].clone(), results[&h].clone(), fan(events), request.clone());
        let limit = fan.timeouts.call + std::time::Duration::from_secs(spec.timeout_secs * lines.len().max(1) as u64);
        async move {
            let t = Instant::now();
            let outcome = match tokio::time::timeout(limit, client.run_commands(request)).await {
                Err(_) => Err(HostError::Timeout { what: "no answer", secs: limit.as_secs(), hint: "" }),
                Ok(Err(s)) => Err(HostError::from_status(&s)),
                Ok(Ok(reply)) => {
                    let reply = reply.into_inner();
                    let n = reply.results.len();
                    for r in reply.results {
                        on_hook_event(None, Some(r), &mut result, &fan.events);
                    }
                    if reply.error.is_empty() {
                        Ok(format!("{n} line(s) ran once, in the new release"))
                    } else {
                        Err(HostError::Local(format!("migrate failed, so no host flips: {}", reply.error)))
                    }
                }
            };
            let ok = outcome.is_ok();
            if let Err(e) = &outcome {
                let _ = fan.events.send((h.clone(), HostEvent::Failed(e.clone())));
            }
            fan.clock.step(&mut result, "migrate", t, outcome);
            if !ok {
                result.ok = false;
            }
            (result, ok)
        }
    })
    .await;
    let mut went = false;
    for (h, (result, ok)) in out {
        results.insert(h, result);
        went = ok;
    }
    went
}
