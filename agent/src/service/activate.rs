//! `Activate` (flip `current`, `post_release`, prune) and `Health` (HTTP or a command, from
//! the host itself).

use std::sync::Arc;
use std::time::{Duration, Instant};

use slipway_common::ReleaseId;
use slipway_common::time::unix_now;
use slipway_proto::pb;
use tokio::sync::mpsc;
use tonic::Status;
use tracing::{info, warn};

use super::*;
use crate::error::AgentError;
use crate::hooks::{decide_user, failure, run_hook};
use crate::layout::{Current, Open, prune_plan};
use crate::state::RecordedHooks;

impl Inner {
    pub(super) async fn activate(
        self: Arc<Self>,
        req: pb::ActivateRequest,
        events: mpsc::Sender<Result<pb::ActivateEvent, Status>>,
    ) -> Result<pb::ActivateReply, AgentError> {
        use pb::activate_event::Kind as ActKind;
        let started = Instant::now();
        let target = blocking(|| self.target(req.target, Open::Activate))?;
        let id = ReleaseId::parse(&req.release_id).map_err(bad)?;
        let is_rollback = req.deploy_type == pb::DeployType::Rollback as i32;
        let ctx = req.hook_context.clone().unwrap_or_default();
        // What a rollback runs is what the restored release was deployed with, when recorded.
        let recorded = if is_rollback && req.recorded_hooks {
            self.record(&target)?.releases.get(id.as_str()).and_then(|m| m.hooks.clone())
        } else {
            None
        };
        let stage_spec =
            |asked: &Option<pb::HookSpec>, pick: fn(&RecordedHooks) -> &Vec<String>| match (asked, &recorded) {
                (None, _) => pb::HookSpec::default(),
                (Some(spec), None) => spec.clone(),
                (Some(spec), Some(r)) => pb::HookSpec {
                    commands: pick(r).clone(),
                    timeout_secs: if r.timeout_secs == 0 { spec.timeout_secs } else { r.timeout_secs },
                },
            };
        let pre_release =
            if is_rollback { stage_spec(&req.pre_release, |r| &r.pre_release) } else { pb::HookSpec::default() };
        let post_release = if is_rollback {
            stage_spec(&req.post_release, |r| &r.post_release)
        } else {
            req.post_release.clone().unwrap_or_default()
        };
        let has_hooks = !pre_release.commands.is_empty() || !post_release.commands.is_empty();
        let run_as = if has_hooks { self.run_as(&ctx.user, true).await? } else { None };
        let _guard = self.lock(&target.key).await;
        let mut record = self.record(&target)?;
        self.check_generation(&mut record, req.generation)?;
        let layout = &target.layout;
        held_release(layout, &id)?;
        let before = layout.read_current()?;
        let previous = before.release().map(ToString::to_string).unwrap_or_default();
        let release_path = layout.release_path(&id);
        let commit = record.releases.get(id.as_str()).map(|m| m.commit.clone()).filter(|c| !c.is_empty());
        let wraps = EventWraps {
            output: |o| pb::ActivateEvent { kind: Some(ActKind::Output(o)) },
            hook: |r| pb::ActivateEvent { kind: Some(ActKind::Hook(r)) },
        };
        let site = run_as.as_ref().map(|run_as| HookSite {
            target: &target,
            ctx: &ctx,
            run_as,
            release: &id,
            release_path: &release_path,
            previous: previous.clone(),
            deploy_type: if is_rollback { "rollback" } else { "deploy" },
            deploy_id: req.deploy_id,
            commit: commit.clone().unwrap_or_else(|| ctx.commit.clone()),
        });
        if let (Some(site), false) = (&site, pre_release.commands.is_empty()) {
            self.run_hooks("pre_release", &pre_release, site, &events, &wraps).await?;
        }

        if before.release() != Some(&id) {
            layout.flip(&id)?;
        }
        let flip_ms = started.elapsed().as_millis() as u64;
        let meta = record.releases.entry(id.to_string()).or_default();
        if !is_rollback && before.release() != Some(&id) {
            meta.previous = before.release().map(ToString::to_string);
        }
        meta.activated_at = Some(unix_now());
        meta.rolled_back_at = None;
        // The release a rollback moved away from stops counting toward keep_releases.
        if is_rollback
            && let Some(left) = before.release().filter(|b| **b != id)
            && let Some(m) = record.releases.get_mut(left.as_str())
        {
            m.rolled_back_at = Some(unix_now());
        }
        record.current_release = Some(id.to_string());
        // The flip happened: whatever the bookkeeping does, the reply says so.
        if let Err(e) = self.state.put(&record) {
            warn!(release = %id, error = %e, "activated, but the agent state could not be written");
        }
        info!(project = %target.project, env = %target.env, release = %id, rollback = is_rollback, "activated");

        let mut post_release_error = String::new();
        if let (Some(site), false) = (&site, post_release.commands.is_empty())
            && let Err(e) = self.run_hooks("post_release", &post_release, site, &events, &wraps).await
        {
            warn!(release = %id, error = %e, "post_release failed");
            post_release_error = e.to_string();
        }

        let previous = match before {
            Current::Release(p) => p.to_string(),
            Current::Elsewhere(path) => path.display().to_string(),
            Current::Absent => String::new(),
        };
        Ok(pb::ActivateReply { previous_release: previous, elapsed_ms: flip_ms, post_release_error })
    }

    /// Remove what `keep_releases` does not keep: the newest releases that were activated and
    /// not rolled back from count; `current` and its rollback target stay whatever their age.
    pub(super) async fn prune(&self, req: pb::PruneRequest) -> Result<pb::PruneReply, AgentError> {
        let target = blocking(|| self.target(req.target, Open::Existing))?;
        let _guard = self.lock(&target.key).await;
        let mut record = self.record(&target)?;
        self.check_generation(&mut record, req.generation)?;
        let layout = &target.layout;
        // Pruning needs to know what is live: when `current` is not one of the releases (absent,
        // or pointing elsewhere), nothing is removed.
        let current = match layout.read_current()? {
            Current::Release(id) => Some(id),
            Current::Absent if record.current_release.is_none() => None,
            other => {
                warn!(project = %target.project, env = %target.env, current = ?other, "current is not a release: nothing pruned");
                return Ok(pb::PruneReply { pruned: Vec::new() });
            }
        };
        let rollback_target = current
            .as_ref()
            .and_then(|c| record.releases.get(c.as_str()))
            .and_then(|m| m.previous.as_deref())
            .and_then(|p| ReleaseId::parse(p).ok());
        let keep = (req.keep_releases as usize).max(1);
        let counts = |r: &ReleaseId| {
            record.releases.get(r.as_str()).is_none_or(|m| m.activated_at.is_some() && m.rolled_back_at.is_none())
        };
        let plan = prune_plan(&layout.list()?, current.as_ref(), rollback_target.as_ref(), &counts, keep);
        let mut pruned = Vec::new();
        for old in &plan {
            match blocking(|| self.remove_release(&target, old.as_str())) {
                Ok(()) => {
                    record.releases.remove(old.as_str());
                    pruned.push(old.to_string());
                }
                Err(e) => warn!(release = %old, error = %e, "cannot prune"),
            }
        }
        self.state.put(&record)?;
        info!(project = %target.project, env = %target.env, pruned = pruned.len(), keep, "pruned");
        Ok(pb::PruneReply { pruned })
    }

    pub(super) async fn health(&self, req: pb::HealthRequest) -> Result<pb::HealthReply, AgentError> {
        let target = blocking(|| self.target(req.target, Open::Existing))?;
        let spec = req.spec.unwrap_or_default();
        let ctx = req.hook_context.unwrap_or_default();
        self.check_generation(&mut self.record(&target)?, req.generation)?;
        let timeout = Duration::from_secs(spec.timeout_secs.max(1));
        let release = target
            .layout
            .read_current()?
            .release()
            .cloned()
            .ok_or_else(|| AgentError::NotFound("no current release to health-check".into()))?;
        let release_path = target.layout.release_path(&release);
        let run_as =
            if spec.command.is_empty() { None } else { Some(decide_user(&ctx.user, &self.hook_policy).await?) };
        let mut last = String::new();
        let attempts = spec.retries + 1;
        for attempt in 1..=attempts {
            let outcome = match &run_as {
                None => match crate::health::http_status(&spec.http_url, timeout).await {
                    Ok(code) if u32::from(code) == spec.expect_status => {
                        Ok(format!("HTTP {code} from {}", spec.http_url))
                    }
                    Ok(code) => Err(format!("HTTP {code} from {}, expected {}", spec.http_url, spec.expect_status)),
                    Err(e) => Err(format!("{}: {e}", spec.http_url)),
                },
                Some(run_as) => {
                    let site = HookSite {
                        target: &target,
                        ctx: &ctx,
                        run_as,
                        release: &release,
                        release_path: &release_path,
                        previous: String::new(),
                        deploy_type: "deploy",
                        deploy_id: req.deploy_id,
                        commit: ctx.commit.clone(),
                    };
                    let env = self.hook_env(&site);
                    let r = run_hook("health", &spec.command, &release_path, &env, run_as, timeout, None).await;
                    match failure(&r, timeout) {
                        None => Ok(format!("`{}` exited 0", spec.command)),
                        Some(why) => {
                            let out = String::from_utf8_lossy(&r.output_tail).trim().to_owned();
                            let out = if out.is_empty() {
                                String::from_utf8_lossy(&r.output_head).trim().to_owned()
                            } else {
                                out
                            };
                            Err(if out.is_empty() {
                                why
                            } else {
                                format!("{why}: {}", out.lines().last().unwrap_or(""))
                            })
                        }
                    }
                }
            };
            match outcome {
                Ok(detail) => return Ok(pb::HealthReply { healthy: true, detail, attempts: attempt }),
                Err(e) => last = e,
            }
            if attempt < attempts {
                tokio::time::sleep(Duration::from_secs(spec.interval_secs)).await;
            }
        }
        info!(project = %target.project, env = %target.env, release = %release, detail = %last, "unhealthy");
        Ok(pb::HealthReply { healthy: false, detail: last, attempts })
    }
}
