//! `Stage`: receive an upload into a private staging dir, verify it, link shared paths, hand
//! it to the target user, rename it into place and run `pre_release`; one per target.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slipway_common::ReleaseId;
use slipway_common::archive::{ExtractOptions, Manifest, ReuseSource};
use slipway_common::time::unix_now;
use slipway_proto::pb;
use slipway_proto::pb::stage_event::Kind as EventKind;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use tracing::{info, warn};

use super::*;
use crate::error::AgentError;
use crate::kept::KeptManifests;
use crate::layout::{Layout, Open};
use crate::receive::{Source, check_free_space, disk_full, receive_and_extract};
use crate::shared::link_shared;
use crate::state::{RecordedHooks, ReleaseMeta, TargetRecord};
use slipway_common::names::validate_name;

impl Inner {
    pub(super) async fn stage(
        self: Arc<Self>,
        mut header: pb::StageHeader,
        stream: Streaming<pb::StageRequest>,
        events: mpsc::Sender<Result<pb::StageEvent, Status>>,
    ) -> Result<pb::Staged, AgentError> {
        let started = Instant::now();
        let secs = match header.stage_timeout_secs {
            0 => self.config.stage_timeout_secs,
            asked => asked.min(self.config.stage_timeout_secs),
        };
        let deadline = started + Duration::from_secs(secs.max(1));
        let id = ReleaseId::parse(&header.release_id).map_err(bad)?;
        let target_key = header.target.as_ref().map(|t| TargetRecord::key(&t.project, &t.env)).unwrap_or_default();
        let _slot = self.claim_stage(&target_key)?;
        // Validation is CPU work on attacker-sized input: off the async workers. With a base, the
        // manifest is the base's kept manifest with the diff applied, checked just as strictly.
        // With a store, the manifest is fetched from it and must have the digest the header says.
        let raw = match (header.manifest.take(), header.manifest_url.as_str()) {
            (raw, "") => raw,
            (None, url) => {
                let max = slipway_proto::MAX_MESSAGE_BYTES;
                let fetched = crate::fetch::bytes(url, &header.artifact_ca_pem, max, deadline).await?;
                let manifest = <pb::Manifest as slipway_proto::Message>::decode(fetched.as_slice()).map_err(|e| {
                    bad(format!("the manifest fetched from {} is not one: {e}", crate::fetch::redact(url)))
                })?;
                Some(manifest)
            }
            (Some(_), _) => return Err(bad("stage header has both a manifest and a manifest_url")),
        };
        let fetched_digest = (!header.manifest_url.is_empty()).then(|| header.manifest_sha256.clone());
        let limits = self.config.limits;
        let base = match header.base_release.as_str() {
            "" => None,
            id => {
                let id = ReleaseId::parse(id).map_err(bad)?;
                let t = header.target.as_ref().ok_or_else(|| bad("request has no target"))?;
                validate_name("project name", &t.project).map_err(bad)?;
                validate_name("env name", &t.env).map_err(bad)?;
                let kept = KeptManifests::new(&self.config.state_dir, &t.project, &t.env);
                let diff = header.manifest_diff.take().ok_or_else(|| bad("stage header has a base but no diff"))?;
                Some((id, kept, header.base_manifest_sha256.clone(), diff))
            }
        };
        let manifest: Manifest = tokio::task::spawn_blocking(move || -> Result<Manifest, AgentError> {
            let manifest: Manifest = match base {
                None => raw.ok_or_else(|| bad("stage header has no manifest"))?.try_into().map_err(bad)?,
                Some((id, kept, digest, diff)) => {
                    let base = kept.load(id.as_str()).ok_or_else(|| {
                        AgentError::NotFound(format!("the kept manifest of base release {id} is missing or damaged"))
                    })?;
                    if base.digest().as_slice() != digest.as_slice() {
                        return Err(AgentError::Conflict(format!(
                            "the kept manifest of base release {id} is not the one the controller has"
                        )));
                    }
                    let diff = diff.try_into().map_err(bad)?;
                    Manifest::apply(&base, &diff)?
                }
            };
            if let Some(expected) = fetched_digest
                && manifest.digest().as_slice() != expected.as_slice()
            {
                return Err(AgentError::Upload(
                    "the artifact store returned another manifest than the controller uploaded; nothing was \
                     activated: deploy again (the controller uploads it again)"
                        .into(),
                ));
            }
            manifest.validate(&limits)?;
            Ok(manifest)
        })
        .await
        .map_err(|e| AgentError::State(format!("manifest validation failed: {e}")))??;
        let manifest_bytes = manifest.file_bytes() + manifest.entries.len() as u64 * 4096;
        // No digest in the header: the controller packages while it streams, and a trailer brings it.
        let trailer_digest = header.artifact_sha256.is_empty();
        if !trailer_digest && header.artifact_sha256.len() != 32 {
            return Err(bad("stage header's artifact sha256 is not 32 bytes"));
        }
        if trailer_digest && !header.artifact_url.is_empty() {
            return Err(bad("stage header has an artifact_url but no artifact sha256: a fetched artifact is checked \
                            against the digest the controller sends"));
        }
        let ctx = header.hook_context.clone().unwrap_or_default();
        crate::hooks::check_vars(&ctx.vars)?;
        let pre_release = header.pre_release.clone().unwrap_or_default();
        let has_hooks =
            !pre_release.commands.is_empty() || header.post_release.as_ref().is_some_and(|h| !h.commands.is_empty());
        let run_as = self.run_as(&ctx.user, has_hooks).await?;
        let owner = run_as.as_ref().filter(|r| r.uid != rustix::process::geteuid().as_raw()).map(|r| (r.uid, r.gid));
        let _guard = self.lock(&target_key).await;
        let this = self.clone();
        let target_req = header.target.take();
        let target = tokio::task::spawn_blocking(move || this.target(target_req, Open::Stage))
            .await
            .map_err(|e| AgentError::State(format!("cannot open the target: {e}")))??;
        let mut record = self.record(&target)?;
        self.check_generation(&mut record, header.generation)?;
        let layout = &target.layout;
        // Refuse early when `current` could never be flipped (a directory or file is there).
        let previous = layout.read_current()?.release().map(ToString::to_string).unwrap_or_default();
        let releases_dir = layout.releases_dir();
        let releases = layout.releases()?;
        check_free_space(&releases_dir, releases.fd(), &manifest)?;
        if releases
            .stat(id.as_str())
            .map_err(|e| AgentError::io("cannot inspect", layout.release_path(&id), e))?
            .is_some()
        {
            // Staging a release this host already holds, with the same contents (a retried
            // deploy), is already done: nothing is unpacked or run again.
            let held = blocking(|| Ok::<_, AgentError>(target.kept.load(id.as_str())))?;
            if held.is_some_and(|kept| kept.digest() == manifest.digest()) {
                self.state.put(&record)?;
                info!(project = %target.project, env = %target.env, release = %id, "already staged");
                self.metrics.staged(started.elapsed().as_millis() as u64, 0, manifest.file_bytes());
                let files =
                    manifest.entries.iter().filter(|e| e.kind == slipway_common::archive::EntryKind::File).count()
                        as u64;
                return Ok(pb::Staged {
                    release_path: layout.release_path(&id).display().to_string(),
                    entries: manifest.entries.len() as u64,
                    bytes: manifest.file_bytes(),
                    elapsed_ms: started.elapsed().as_millis() as u64,
                    reused: files,
                });
            }
            return Err(AgentError::Conflict(format!(
                "release {id} already exists on this host with other contents; deploy again for a new release"
            )));
        }
        let staging_name = Layout::staging_name(&id);
        blocking(|| layout.remove(&staging_name))?;
        // Private (root, 0700) until it is complete and its shared paths are linked: nobody else
        // can reach into it while the agent works in it.
        let staging = releases
            .create_private_dir(&staging_name)
            .map_err(|e| AgentError::io("cannot create", releases.display(&staging_name), e))?;
        self.state.put(&record)?;
        info!(project = %target.project, env = %target.env, release = %id, entries = manifest.entries.len(), base = %header.base_release, "staging");

        // Hard links are only safe when no hook can write the shared files: they stay the agent's
        // and read-only, which protects them from a hook user that is someone else.
        let protect = header.reuse_hardlink && owner.is_some();
        let reuse = if header.delta {
            Some(slipway_common::archive::Reuse { sources: self.offered_sources(&target)?, hardlink: protect })
        } else {
            None
        };
        let options = ExtractOptions {
            limits: self.config.limits,
            expected_sha256: (!trailer_digest).then(|| slipway_proto::bytes_to_hex(&header.artifact_sha256)),
            owner,
            reuse,
            read_only_files: protect,
        };
        let manifest = Arc::new(manifest);
        let root_fd =
            staging.fd().try_clone_to_owned().map_err(|e| AgentError::io("cannot open", staging.path(), e))?;
        let display = staging.path().display().to_string();
        let source = if header.artifact_url.is_empty() {
            Ok(Source::Stream(stream))
        } else {
            let url = std::mem::take(&mut header.artifact_url);
            let _ = events.try_send(Ok(progress("fetch")));
            crate::fetch::open(&url, &header.artifact_ca_pem, deadline).await.map(|body| Source::Fetched { body, url })
        };
        let extracted = match source {
            Ok(source) => {
                receive_and_extract(
                    source,
                    manifest.clone(),
                    root_fd,
                    display,
                    options,
                    trailer_digest,
                    events.clone(),
                    deadline,
                )
                .await
            }
            Err(e) => Err(e),
        };
        let outcome = match extracted {
            Ok(stats) => {
                let deploy = layout.deploy().expect("opened with create");
                blocking(|| link_shared(deploy, &staging, &header.shared, owner))
                    .and_then(|()| blocking(|| target.kept.save(&id, &staging, &manifest, &header.shared)))
                    // The release is the target user's, like everything in it, except when its
                    // files are shared read-only hard links: then it stays the agent's.
                    .and_then(|()| {
                        let owner = if protect { None } else { owner };
                        staging
                            .set_owner_mode(owner, 0o755)
                            .map_err(|e| AgentError::io("cannot hand over", staging.path(), e))
                    })
                    .map(|()| stats)
            }
            Err(e) => Err(e),
        };
        let stats = match outcome {
            Ok(stats) => stats,
            Err(e) => {
                let e = disk_full(e, &releases_dir, &manifest_bytes);
                if let Err(cleanup) = blocking(|| layout.remove(&staging_name)) {
                    warn!(error = %cleanup, "cannot remove staging dir");
                }
                target.kept.remove(id.as_str());
                return Err(e);
            }
        };
        let final_path = layout.release_path(&id);
        releases
            .rename(&staging_name, releases, id.as_str(), false)
            .map_err(|e| AgentError::io("cannot rename staging to", &final_path, e))?;
        releases.fsync().map_err(|e| AgentError::io("cannot fsync", &releases_dir, e))?;
        record.releases.insert(
            id.to_string(),
            ReleaseMeta {
                commit: header.commit.clone(),
                git_ref: header.git_ref,
                deploy_id: header.deploy_id,
                staged_at: unix_now(),
                activated_at: None,
                previous: None,
                rolled_back_at: None,
                hooks: Some(RecordedHooks {
                    pre_release: pre_release.commands.clone(),
                    post_release: header.post_release.as_ref().map(|h| h.commands.clone()).unwrap_or_default(),
                    timeout_secs: pre_release.timeout_secs,
                }),
            },
        );
        self.state.put(&record)?;

        if let (Some(run_as), false) = (&run_as, pre_release.commands.is_empty()) {
            let site = HookSite {
                target: &target,
                ctx: &ctx,
                run_as,
                release: &id,
                release_path: &final_path,
                previous,
                deploy_type: "deploy",
                deploy_id: header.deploy_id,
                commit: header.commit.clone(),
            };
            let wraps = EventWraps {
                output: |o| pb::StageEvent { kind: Some(EventKind::Output(o)) },
                hook: |r| pb::StageEvent { kind: Some(EventKind::Hook(r)) },
            };
            // The controller going away (a cancel, a crash) stops pre_release at once: dropping
            // the hook kills its process group, and the release never becomes current.
            let hooks = self.run_hooks("pre_release", &pre_release, &site, &events, &wraps);
            let ran = tokio::select! {
                ran = hooks => ran,
                () = events.closed() => Err(AgentError::Upload("the controller went away during pre_release".into())),
            };
            if let Err(e) = ran {
                // The release never becomes current: remove it.
                blocking(|| self.remove_release(&target, id.as_str()))?;
                record.releases.remove(id.as_str());
                self.state.put(&record)?;
                return Err(e);
            }
            // Whatever the hooks wrote is durable before anything can activate it.
            blocking(|| releases.syncfs()).map_err(|e| AgentError::io("cannot sync", &final_path, e))?;
        }
        let elapsed_ms = started.elapsed().as_millis() as u64;
        info!(release = %id, entries = stats.entries, bytes = stats.file_bytes, elapsed_ms, "staged");
        self.metrics.staged(elapsed_ms, stats.compressed_bytes, stats.reused_bytes);
        Ok(pb::Staged {
            release_path: final_path.display().to_string(),
            entries: stats.entries,
            bytes: stats.file_bytes,
            elapsed_ms,
            reused: stats.reused,
        })
    }

    /// Claim the target's one stage slot and one of the agent's; refuse at once when taken.
    pub(super) fn claim_stage(&self, key: &str) -> Result<StagingSlot<'_>, AgentError> {
        let permit = self.stages.clone().try_acquire_owned().map_err(|_| {
            AgentError::Busy(format!(
                "this agent already runs {} stages (max_concurrent_stages); retry when one finishes",
                self.config.max_concurrent_stages
            ))
        })?;
        if !self.staging.lock().expect("staging lock").insert(key.to_owned()) {
            return Err(AgentError::Busy(format!("a stage of {key} is already in progress on this host")));
        }
        Ok(StagingSlot { inner: self, key: key.to_owned(), _permit: permit })
    }

    /// The reuse map the last inventory of this target offered, when it is fresh and the retained
    /// releases are still the same; else computed now.
    pub(super) fn offered_sources(&self, target: &Target) -> Result<HashMap<String, ReuseSource>, AgentError> {
        let offered = self.offered.lock().expect("offered lock").remove(&target.key);
        match offered {
            Some(o) if o.at.elapsed() < OFFER_FRESH && o.releases == target.layout.list()? => Ok(o.sources),
            _ => target.kept.reuse_sources(&target.layout),
        }
    }
}

/// A step the controller shows while the agent works (no counts yet).
fn progress(step: &str) -> pb::StageEvent {
    pb::StageEvent {
        kind: Some(EventKind::Progress(pb::StageProgress { step: step.into(), bytes_received: 0, entries_written: 0 })),
    }
}
