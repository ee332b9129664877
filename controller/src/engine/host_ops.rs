//! Operations on one host, as named functions: activate (decided by what the host says when the
//! reply is lost), health-check, and the bookkeeping of each host's steps and hook output.
use std::time::Instant;

use slipway_common::config::EnvSettings;
use slipway_proto::pb;

use crate::engine::client::{AgentClient, Timeouts, status_text};
use crate::engine::events::HostEvent;
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
        let _ = events.send((result.host.clone(), HostEvent::Output { stage: o.stage, data: o.data }));
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
        outcome: std::result::Result<String, String>,
    ) {
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let started_ms = started.duration_since(self.0).as_millis() as u64;
        let (ok, detail) = match outcome {
            Ok(d) => (true, d),
            Err(e) => {
                result.error = Some(format!("{name}: {e}"));
                (false, e)
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
        outcome: std::result::Result<String, String>,
    ) {
        let first = result.error.take();
        self.step(result, name, started, outcome);
        result.error = first.or(result.error.take());
        result.ok = false;
    }
}

pub(crate) fn new_host_result(agent: &AgentRecord, release: &str) -> HostResult {
    HostResult {
        host: agent.name.clone(),
        addr: agent.addr.clone(),
        ok: false,
        activated: false,
        previous_release: String::new(),
        release: release.into(),
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
    release: &str,
) -> pb::ActivateRequest {
    let rollback = record.kind == DeployKind::Rollback;
    pb::ActivateRequest {
        target: Some(pb_target(settings, host)),
        release_id: release.to_owned(),
        generation: record.id,
        deploy_id: record.id,
        deploy_type: if rollback { pb::DeployType::Rollback as i32 } else { pb::DeployType::Deploy as i32 },
        keep_releases: settings.keep_releases,
        hook_context: Some(hook_context(settings, host, &record.commit, &record.git_ref)),
        pre_release: rollback.then(|| hook_spec(&settings.target.pre_release, settings)),
        post_release: Some(hook_spec(&settings.target.post_release, settings)),
    }
}

/// One Activate call: hook output and results go to `result` and the events; the reply or why not.
pub(crate) async fn call_activate(
    client: &mut AgentClient,
    request: pb::ActivateRequest,
    result: &mut HostResult,
    events: &Events,
    timeouts: Timeouts,
) -> std::result::Result<pb::ActivateReply, String> {
    use pb::activate_event::Kind;
    // Hooks have their own timeouts on the agent; the call's limit leaves room for them.
    let hook_secs: u64 = [&request.pre_release, &request.post_release]
        .iter()
        .filter_map(|h| h.as_ref())
        .map(|h| h.timeout_secs * h.commands.len() as u64)
        .sum();
    let limit = timeouts.call + std::time::Duration::from_secs(hook_secs);
    let call = async {
        let mut stream = client.activate(request).await.map_err(|s| status_text(&s))?.into_inner();
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
                Ok(None) => return Err("the agent ended the activation without a result".to_owned()),
                Err(status) => return Err(status_text(&status)),
            }
        }
    };
    match tokio::time::timeout(limit, call).await {
        Err(_) => Err(format!("no answer within {}s", limit.as_secs())),
        Ok(outcome) => outcome,
    }
}

/// What `current` is on a host now (its release id, empty for none), asked after an `Activate`
/// that failed or timed out: the flip may have happened all the same.
/// Asked again until `timeouts.call` has passed: an agent that was restarted answers once it is back.
/// Also returns the release that was current before `current` was activated.
pub(crate) async fn current_on_host(
    client: &mut AgentClient,
    target: Option<pb::Target>,
    timeouts: Timeouts,
) -> Option<(String, String)> {
    let deadline = tokio::time::Instant::now() + timeouts.call;
    loop {
        let call = client.releases(pb::ReleasesRequest { target: target.clone() });
        if let Ok(Ok(reply)) = tokio::time::timeout_at(deadline, call).await {
            let reply = reply.into_inner();
            let previous =
                reply.releases.iter().find(|r| r.id == reply.current).map(|r| r.previous.clone()).unwrap_or_default();
            return Some((reply.current, previous));
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
        why: String,
        previous: String,
    },
    /// The call failed and the host could not be asked afterwards: it may have flipped.
    Unknown(String),
}

/// [`call_activate`], and when it fails, ask the host what `current` is before deciding.
pub(crate) async fn activate_verified(
    client: &mut AgentClient,
    request: pb::ActivateRequest,
    result: &mut HostResult,
    events: &Events,
    timeouts: Timeouts,
) -> std::result::Result<Activation, String> {
    let (target, release) = (request.target.clone(), request.release_id.clone());
    let e = match call_activate(client, request, result, events, timeouts).await {
        Ok(reply) => return Ok(Activation::Replied(reply)),
        Err(e) => e,
    };
    match current_on_host(client, target, timeouts).await {
        Some((current, previous)) if current == release => Ok(Activation::FlippedUnconfirmed { why: e, previous }),
        Some((current, _)) => Err(format!("{e}; current on the host is {}", or_none(&current))),
        None => Ok(Activation::Unknown(format!("{e}; the host did not say what current is now"))),
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
    match activate_verified(&mut client, request, &mut result, &events, timeouts).await {
        Ok(Activation::Unknown(why)) => {
            // Maybe on the new release: counted as activated, so the rollout stops and cleans up
            // (a rollback that cannot reach the host then leaves the deploy `incomplete`).
            let e = format!("{why}: counted as possibly activated");
            clock.step(&mut result, "activate", t, Err(e.clone()));
            result.activated = true;
            result.ok = false;
            let _ = events.send((result.host.clone(), HostEvent::Failed(e)));
        }
        Ok(Activation::FlippedUnconfirmed { why, previous }) => {
            // The host runs the new release; what its hooks did is unknown: activated, and failed.
            let e = format!("{why}; but current -> {target} on the host: counted as activated and failed");
            clock.step(&mut result, "activate", t, Err(e.clone()));
            result.activated = true;
            result.previous_release = previous;
            result.ok = false;
            let _ = events.send((result.host.clone(), HostEvent::Failed(e)));
        }
        Ok(Activation::Replied(reply)) => {
            let mut detail = format!("current -> {target} (was {})", or_none(&reply.previous_release));
            if !reply.pruned.is_empty() {
                detail.push_str(&format!("; pruned {}", reply.pruned.join(", ")));
            }
            clock.step(&mut result, "activate", t, Ok(detail));
            result.activated = true;
            result.previous_release = reply.previous_release.clone();
            if reply.post_release_error.is_empty() {
                result.ok = true;
                let _ = events.send((
                    result.host.clone(),
                    HostEvent::Activated { previous: reply.previous_release, elapsed_ms: reply.elapsed_ms },
                ));
            } else {
                let e = reply.post_release_error;
                clock.step(&mut result, "post_release", t, Err(e.clone()));
                result.ok = false;
                let _ = events.send((result.host.clone(), HostEvent::Failed(e)));
            }
        }
        Err(e) => {
            result.ok = false;
            clock.step(&mut result, "activate", t, Err(e.clone()));
            let _ = events.send((result.host.clone(), HostEvent::Failed(e)));
        }
    }
    result
}

pub(crate) fn or_none(s: &str) -> &str {
    if s.is_empty() { "none" } else { s }
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
        Err(_) => Err(format!("no answer within {}s", limit.as_secs())),
        Ok(Err(s)) => Err(status_text(&s)),
        Ok(Ok(r)) => {
            let r = r.into_inner();
            if r.healthy {
                Ok(format!("{} (attempt {})", r.detail, r.attempts))
            } else {
                Err(format!("unhealthy after {} attempt(s): {}", r.attempts, r.detail))
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
