//! The agent's gRPC service: stage (receive, unpack, verify), activate (flip + prune), abort,
//! releases, info. Every request names its project+env target; paths are checked against
//! `allowed_roots` before anything is touched, and one lock per target serialises the work.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slipway_common::archive::{ExtractOptions, Manifest, ReuseSource};
use slipway_common::config::{AgentConfig, check_clean_absolute};
use slipway_common::names::validate_name;
use slipway_common::time::unix_now;
use slipway_common::{ReleaseId, VERSION};
use slipway_proto::pb;
use slipway_proto::pb::stage_event::Kind as EventKind;
use slipway_proto::pb::stage_request::Kind as RequestKind;
use tokio::sync::{OwnedMutexGuard, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::error::AgentError;
use crate::hooks::{HookEnv, HookPolicy, LiveOutput, RunAs, decide_user, failure, run_hook};
use crate::kept::KeptManifests;
use crate::layout::{Current, Layout, Open, prune_plan};
use crate::receive::{check_free_space, disk_full, receive_and_extract};
use crate::shared::link_shared;
use crate::state::{AgentState, ReleaseMeta, TargetRecord};

const DEFAULT_KEEP: usize = 5;

/// One project+env as a request names it, checked, with its directories held open.
struct Target {
    key: String,
    project: String,
    env: String,
    layout: Layout,
    kept: KeptManifests,
}

pub struct Inner {
    config: AgentConfig,
    state: AgentState,
    started: Instant,
    cert_not_after: i64,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The reuse map an `Inventory` computed, per target, for the `Stage` that follows it.
    offered: Mutex<HashMap<String, Offered>>,
    /// Targets that could not be reconciled at start, with the reason (reported by `Info`).
    broken: Mutex<HashMap<String, String>>,
    /// Targets with a stage in progress: at most one each.
    staging: Mutex<HashSet<String>>,
    /// Stages in progress on this agent, bounded by `max_concurrent_stages`.
    stages: Arc<tokio::sync::Semaphore>,
}

/// What an `Inventory` offered: the stage of the same deploy uses it instead of stat-ing every
/// retained file again. Nothing writes retained releases between the two calls (the controller
/// holds the project lock, hooks run only inside stage and activate), and every reused file is
/// checked again when it is opened (beneath its release, same inode, content hashed).
struct Offered {
    at: Instant,
    releases: Vec<ReleaseId>,
    sources: HashMap<String, ReuseSource>,
}

/// How long an inventory's reuse map may serve a stage.
const OFFER_FRESH: Duration = Duration::from_secs(60);

/// Marks a target as staging for as long as it lives.
struct StagingSlot<'a> {
    inner: &'a Inner,
    key: String,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for StagingSlot<'_> {
    fn drop(&mut self) {
        self.inner.staging.lock().expect("staging lock").remove(&self.key);
    }
}

/// What a hook's environment is built from.
struct HookSite<'a> {
    target: &'a Target,
    ctx: &'a pb::HookContext,
    run_as: &'a RunAs,
    release: &'a ReleaseId,
    release_path: &'a Path,
    previous: String,
    deploy_type: &'static str,
    deploy_id: u64,
    commit: String,
}

/// Forward live hook output into an RPC's event stream.
fn live_forwarder<E: Send + 'static>(
    events: mpsc::Sender<Result<E, Status>>,
    wrap: fn(pb::HookOutput) -> E,
) -> LiveOutput {
    let (tx, mut rx) = mpsc::channel::<pb::HookOutput>(64);
    tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            if events.send(Ok(wrap(out))).await.is_err() {
                break;
            }
        }
    });
    tx
}

#[derive(Clone)]
pub struct AgentService {
    inner: Arc<Inner>,
}

fn bad(msg: impl std::fmt::Display) -> AgentError {
    AgentError::BadRequest(msg.to_string())
}

impl AgentService {
    pub fn new(config: AgentConfig, state: AgentState) -> Self {
        let cert_not_after = std::fs::read_to_string(&config.tls.cert)
            .ok()
            .and_then(|pem| slipway_common::pki::first_cert_der(&pem).ok())
            .and_then(|der| slipway_common::pki::cert_info(&der).ok())
            .map_or(0, |info| info.not_after);
        let stages = Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_stages.max(1)));
        AgentService {
            inner: Arc::new(Inner {
                config,
                state,
                started: Instant::now(),
                cert_not_after,
                locks: Mutex::new(HashMap::new()),
                offered: Mutex::new(HashMap::new()),
                broken: Mutex::new(HashMap::new()),
                staging: Mutex::new(HashSet::new()),
                stages,
            }),
        }
    }

    /// At start: for each known target, remove staging and trash leftovers and take `current`
    /// from the filesystem. Best effort per target: one that fails (an undecodable record, an
    /// unreadable or hostile directory) is logged and reported by `Info`; the others go on.
    pub fn reconcile(&self) {
        let (records, undecodable) = self.inner.state.all_lenient();
        let mut broken = self.inner.broken.lock().expect("broken lock");
        for (key, why) in undecodable {
            warn!(target = %key, error = %why, "agent state record cannot be read; the target is skipped");
            broken.insert(key, format!("its state record cannot be read: {why}"));
        }
        for record in records {
            let key = TargetRecord::key(&record.project, &record.env);
            if let Err(e) = self.reconcile_one(record) {
                warn!(target = %key, error = %e, "cannot reconcile target; other targets are unaffected");
                broken.insert(key, e.to_string());
            }
        }
    }

    fn reconcile_one(&self, mut record: TargetRecord) -> Result<(), AgentError> {
        let layout =
            Layout::open(&self.inner.config.allowed_roots, &record.deploy_to, &record.current, Open::Existing)?;
        for name in layout.clean_leftovers()? {
            info!(project = %record.project, env = %record.env, %name, "removed leftover of interrupted work");
        }
        let on_disk = layout.list()?;
        record.releases.retain(|id, _| on_disk.iter().any(|d| d.as_str() == id));
        record.current_release = match layout.read_current() {
            Ok(current) => current.release().map(ToString::to_string),
            Err(e) => {
                warn!(project = %record.project, env = %record.env, error = %e, "cannot read current");
                None
            }
        };
        self.inner.state.put(&record)
    }
}

fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

impl Inner {
    /// Check a request's target and open its directories (creating them when `create`).
    fn target(&self, target: Option<pb::Target>, open: Open) -> Result<Target, AgentError> {
        let t = target.ok_or_else(|| bad("request has no target"))?;
        validate_name("project name", &t.project).map_err(bad)?;
        validate_name("env name", &t.env).map_err(bad)?;
        let deploy_to = PathBuf::from(&t.deploy_to);
        let current = PathBuf::from(&t.current);
        let key = TargetRecord::key(&t.project, &t.env);
        self.check_paths(&key, &deploy_to, &current)?;
        let layout = Layout::open(&self.config.allowed_roots, &deploy_to, &current, open)?;
        Ok(Target {
            kept: KeptManifests::new(&self.config.state_dir, &t.project, &t.env),
            key,
            project: t.project,
            env: t.env,
            layout,
        })
    }

    /// Lexical checks of a target's paths: clean, absolute, under an allowed root, and clear of
    /// the agent's own files and of every other target.
    fn check_paths(&self, key: &str, deploy_to: &Path, current: &Path) -> Result<(), AgentError> {
        let roots = || self.config.allowed_roots.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        for (what, path) in [("deploy_to", deploy_to), ("current", current)] {
            if path.as_os_str().len() > 4096 {
                return Err(bad(format!("{what} is longer than 4096 bytes")));
            }
            check_clean_absolute(path).map_err(|why| bad(format!("{what}: {why}")))?;
            if !self.config.is_allowed(path) {
                return Err(AgentError::NotAllowed(format!(
                    "{what} {} is outside this agent's allowed_roots ({}); add a root to agent.toml or change the project",
                    path.display(),
                    roots()
                )));
            }
        }
        if current.starts_with(deploy_to.join("releases")) {
            return Err(bad("current must not be inside <deploy_to>/releases"));
        }
        let own = [
            ("state_dir", &self.config.state_dir),
            ("tls.ca", &self.config.tls.ca),
            ("tls.cert", &self.config.tls.cert),
            ("tls.key", &self.config.tls.key),
        ];
        for (name, path) in own {
            if overlaps(deploy_to, path) || current.starts_with(path) || path.starts_with(current) {
                return Err(AgentError::NotAllowed(format!(
                    "deploy_to {} / current {} overlaps this agent's {name} {}; give the project a directory of its own",
                    deploy_to.display(),
                    current.display(),
                    path.display()
                )));
            }
        }
        let (others, _) = self.state.all_lenient();
        for other in others.iter().filter(|o| TargetRecord::key(&o.project, &o.env) != key) {
            if overlaps(deploy_to, &other.deploy_to) || current == other.current {
                return Err(AgentError::NotAllowed(format!(
                    "deploy_to {} / current {} overlaps those of {}/{} ({}, {}); give each project+env its own directories",
                    deploy_to.display(),
                    current.display(),
                    other.project,
                    other.env,
                    other.deploy_to.display(),
                    other.current.display()
                )));
            }
        }
        Ok(())
    }

    async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        let lock = self.locks.lock().expect("lock map poisoned").entry(key.to_owned()).or_default().clone();
        lock.lock_owned().await
    }

    fn record(&self, target: &Target) -> Result<TargetRecord, AgentError> {
        let mut record = self.state.get(&target.key)?.unwrap_or_else(|| TargetRecord {
            project: target.project.clone(),
            env: target.env.clone(),
            ..TargetRecord::default()
        });
        record.deploy_to = target.layout.deploy_to.clone();
        record.current = target.layout.current.clone();
        Ok(record)
    }

    /// Remove a release and its kept manifest.
    fn remove_release(&self, target: &Target, release: &str) -> Result<(), AgentError> {
        target.layout.remove(release)?;
        target.kept.remove(release);
        Ok(())
    }

    /// The reuse map the last inventory of this target offered, when it is fresh and the retained
    /// releases are still the same; else computed now.
    fn offered_sources(&self, target: &Target) -> Result<HashMap<String, ReuseSource>, AgentError> {
        let offered = self.offered.lock().expect("offered lock").remove(&target.key);
        match offered {
            Some(o) if o.at.elapsed() < OFFER_FRESH && o.releases == target.layout.list()? => Ok(o.sources),
            _ => target.kept.reuse_sources(&target.layout),
        }
    }

    /// Claim the target's one stage slot and one of the agent's; refuse at once when taken.
    fn claim_stage(&self, key: &str) -> Result<StagingSlot<'_>, AgentError> {
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

    fn check_generation(&self, record: &mut TargetRecord, generation: u64) -> Result<(), AgentError> {
        if generation < record.generation {
            return Err(AgentError::Stale {
                target: TargetRecord::key(&record.project, &record.env),
                got: generation,
                seen: record.generation,
            });
        }
        record.generation = generation;
        Ok(())
    }

    fn hook_env(&self, site: &HookSite<'_>) -> HookEnv {
        let vars: std::collections::BTreeMap<String, String> =
            site.ctx.vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let layout = &site.target.layout;
        HookEnv::new(
            site.run_as,
            &vars,
            &[
                ("PROJECT", site.target.project.clone()),
                ("ENV", site.target.env.clone()),
                ("HOST", self.config.name.clone()),
                ("DEPLOY_ID", site.deploy_id.to_string()),
                ("RELEASE", site.release.to_string()),
                ("RELEASE_PATH", site.release_path.display().to_string()),
                ("PREVIOUS_RELEASE", site.previous.clone()),
                ("COMMIT", site.commit.clone()),
                ("REF", site.ctx.git_ref.clone()),
                ("DEPLOY_TO", layout.deploy_to.display().to_string()),
                ("CURRENT", layout.current.display().to_string()),
                ("DEPLOY_TYPE", site.deploy_type.to_owned()),
            ],
        )
    }

    /// Run a stage's hook lines in order; stop at the first failure. Each line's result goes to
    /// `events` (waiting for room: a result is never dropped, and it arrives before the reply).
    async fn run_hooks<E: Send + 'static>(
        &self,
        stage: &str,
        spec: &pb::HookSpec,
        site: &HookSite<'_>,
        live: &LiveOutput,
        events: &mpsc::Sender<Result<E, Status>>,
        wrap: fn(pb::HookResult) -> E,
    ) -> Result<(), AgentError> {
        let env = self.hook_env(site);
        let timeout = Duration::from_secs(spec.timeout_secs.max(1));
        for command in &spec.commands {
            let result =
                run_hook(stage, command, site.release_path, &env, site.run_as, timeout, Some(live.clone())).await;
            let failed = failure(&result, timeout);
            let _ = events.send(Ok(wrap(result))).await;
            if let Some(why) = failed {
                return Err(AgentError::Hook(why));
            }
        }
        Ok(())
    }

    /// Who runs hooks and owns files, when the request needs either.
    async fn run_as(&self, user: &str, has_hooks: bool) -> Result<Option<RunAs>, AgentError> {
        if user.is_empty() && !has_hooks {
            return Ok(None);
        }
        decide_user(user, &HookPolicy::from_config(&self.config)).await.map(Some)
    }

    async fn stage(
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
        // Validation is CPU work on attacker-sized input: off the async workers.
        let (raw, limits) = (header.manifest.take(), self.config.limits);
        let manifest: Manifest = tokio::task::spawn_blocking(move || -> Result<Manifest, AgentError> {
            let manifest: Manifest = raw.ok_or_else(|| bad("stage header has no manifest"))?.try_into().map_err(bad)?;
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
            return Err(AgentError::Conflict(format!("release {id} already exists on this host")));
        }
        let staging_name = Layout::staging_name(&id);
        layout.remove(&staging_name)?;
        // Private (root, 0700) until it is complete and its shared paths are linked: nobody else
        // can reach into it while the agent works in it.
        let staging = releases
            .create_private_dir(&staging_name)
            .map_err(|e| AgentError::io("cannot create", releases.display(&staging_name), e))?;
        self.state.put(&record)?;
        info!(project = %target.project, env = %target.env, release = %id, entries = manifest.entries.len(), "staging");

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
        let extracted = receive_and_extract(
            stream,
            manifest.clone(),
            root_fd,
            display,
            options,
            trailer_digest,
            events.clone(),
            deadline,
        )
        .await;
        let outcome = match extracted {
            Ok(stats) => {
                let deploy = layout.deploy().expect("opened with create");
                link_shared(deploy, &staging, &header.shared, owner)
                    .and_then(|()| target.kept.save(&id, &staging, &manifest, &header.shared))
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
                if let Err(cleanup) = layout.remove(&staging_name) {
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
            let live = live_forwarder(events.clone(), |o| pb::StageEvent { kind: Some(EventKind::Output(o)) });
            let wrap = |r: pb::HookResult| pb::StageEvent { kind: Some(EventKind::Hook(r)) };
            if let Err(e) = self.run_hooks("pre_release", &pre_release, &site, &live, &events, wrap).await {
                // The release never becomes current: remove it.
                self.remove_release(&target, id.as_str())?;
                record.releases.remove(id.as_str());
                self.state.put(&record)?;
                return Err(e);
            }
            // Whatever the hooks wrote is durable before anything can activate it.
            releases.syncfs().map_err(|e| AgentError::io("cannot sync", &final_path, e))?;
        }
        let elapsed_ms = started.elapsed().as_millis() as u64;
        info!(release = %id, entries = stats.entries, bytes = stats.file_bytes, elapsed_ms, "staged");
        Ok(pb::Staged {
            release_path: final_path.display().to_string(),
            entries: stats.entries,
            bytes: stats.file_bytes,
            elapsed_ms,
            reused: stats.reused,
        })
    }

    async fn activate(
        self: Arc<Self>,
        req: pb::ActivateRequest,
        events: mpsc::Sender<Result<pb::ActivateEvent, Status>>,
    ) -> Result<pb::ActivateReply, AgentError> {
        use pb::activate_event::Kind as ActKind;
        let started = Instant::now();
        let target = self.target(req.target, Open::Activate)?;
        let id = ReleaseId::parse(&req.release_id).map_err(bad)?;
        let is_rollback = req.deploy_type == pb::DeployType::Rollback as i32;
        let ctx = req.hook_context.clone().unwrap_or_default();
        let pre_release =
            if is_rollback { req.pre_release.clone().unwrap_or_default() } else { pb::HookSpec::default() };
        let post_release = req.post_release.clone().unwrap_or_default();
        let has_hooks = !pre_release.commands.is_empty() || !post_release.commands.is_empty();
        let run_as = if has_hooks { self.run_as(&ctx.user, true).await? } else { None };
        let _guard = self.lock(&target.key).await;
        let mut record = self.record(&target)?;
        self.check_generation(&mut record, req.generation)?;
        let layout = &target.layout;
        let on_disk = layout.list()?;
        if !on_disk.contains(&id) {
            return Err(AgentError::NotFound(format!(
                "release {id} is not on this host (retained: {})",
                list_or_none(&on_disk)
            )));
        }
        let before = layout.read_current()?;
        let previous = before.release().map(ToString::to_string).unwrap_or_default();
        let release_path = layout.release_path(&id);
        let commit = record.releases.get(id.as_str()).map(|m| m.commit.clone()).filter(|c| !c.is_empty());
        let live = live_forwarder(events.clone(), |o| pb::ActivateEvent { kind: Some(ActKind::Output(o)) });
        let wrap = |r: pb::HookResult| pb::ActivateEvent { kind: Some(ActKind::Hook(r)) };
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
            self.run_hooks("pre_release", &pre_release, site, &live, &events, wrap).await?;
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
        let rollback_target = meta.previous.as_deref().and_then(|p| ReleaseId::parse(p).ok());
        record.current_release = Some(id.to_string());
        // The flip happened: whatever the bookkeeping does, the reply says so.
        if let Err(e) = self.state.put(&record) {
            warn!(release = %id, error = %e, "activated, but the agent state could not be written");
        }
        info!(project = %target.project, env = %target.env, release = %id, rollback = is_rollback, "activated");

        let mut post_release_error = String::new();
        if let (Some(site), false) = (&site, post_release.commands.is_empty())
            && let Err(e) = self.run_hooks("post_release", &post_release, site, &live, &events, wrap).await
        {
            warn!(release = %id, error = %e, "post_release failed");
            post_release_error = e.to_string();
        }

        let keep = if req.keep_releases == 0 { DEFAULT_KEEP } else { req.keep_releases as usize };
        let was_activated = |r: &ReleaseId| record.releases.get(r.as_str()).is_none_or(|m| m.activated_at.is_some());
        let pruned = prune_plan(&layout.list()?, Some(&id), rollback_target.as_ref(), &was_activated, keep);
        let mut pruned_names = Vec::new();
        for old in &pruned {
            match self.remove_release(&target, old.as_str()) {
                Ok(()) => {
                    record.releases.remove(old.as_str());
                    pruned_names.push(old.to_string());
                }
                Err(e) => warn!(release = %old, error = %e, "cannot prune"),
            }
        }
        if let Err(e) = self.state.put(&record) {
            warn!(release = %id, error = %e, "activated, but the agent state could not be written");
        }
        let previous = match before {
            Current::Release(p) => p.to_string(),
            Current::Elsewhere(path) => path.display().to_string(),
            Current::Absent => String::new(),
        };
        Ok(pb::ActivateReply {
            previous_release: previous,
            pruned: pruned_names,
            elapsed_ms: flip_ms,
            post_release_error,
        })
    }

    async fn health(&self, req: pb::HealthRequest) -> Result<pb::HealthReply, AgentError> {
        let target = self.target(req.target, Open::Existing)?;
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
        let run_as = if spec.command.is_empty() {
            None
        } else {
            Some(decide_user(&ctx.user, &HookPolicy::from_config(&self.config)).await?)
        };
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

    async fn check(&self, req: pb::CheckRequest) -> pb::CheckReply {
        let mut items = Vec::new();
        let mut item = |name: &str, result: Result<String, (String, String)>| {
            let (ok, detail, fix) = match result {
                Ok(detail) => (true, detail, String::new()),
                Err((detail, fix)) => (false, detail, fix),
            };
            items.push(pb::CheckItem { name: name.into(), ok, detail, fix });
        };
        let target = match self.target(req.target, Open::Existing) {
            Ok(t) => {
                item("allowed_roots", Ok(format!("{} is allowed", t.layout.deploy_to.display())));
                t
            }
            Err(e) => {
                item(
                    "allowed_roots",
                    Err((
                        e.to_string(),
                        "add the directory to allowed_roots in agent.toml, or change target.deploy_to".into(),
                    )),
                );
                return pb::CheckReply { items };
            }
        };
        match decide_user(&req.user, &HookPolicy::from_config(&self.config)).await {
            Ok(r) => item("user", Ok(format!("hooks run as {} (uid {}, gid {})", r.name, r.uid, r.gid))),
            Err(e) => item("user", Err((e.to_string(), "create the user or set target.user".into()))),
        }
        if let Some(why) = self.broken.lock().expect("broken lock").get(&target.key) {
            item(
                "target",
                Err((
                    format!("could not be reconciled at agent start: {why}"),
                    "fix the cause, then restart slipd".into(),
                )),
            );
        }
        // Writability and free space where the release will go: deploy_to when it exists, else
        // the allowed root it will be created beneath.
        let (place, fd) = match target.layout.deploy() {
            Some(d) => (d.path().to_path_buf(), d.try_clone().ok()),
            None => {
                let root = self.config.allowed_roots.iter().find(|r| target.layout.deploy_to.starts_with(r));
                let root = root.cloned().unwrap_or_default();
                let fd = crate::beneath::DirHandle::open_path(&root).ok();
                (root, fd)
            }
        };
        let writable = fd.as_ref().is_some_and(|d| {
            rustix::fs::accessat(d.fd(), ".", rustix::fs::Access::WRITE_OK, rustix::fs::AtFlags::empty()).is_ok()
                && rustix::fs::fstatvfs(d.fd()).is_ok_and(|s| !s.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
        });
        if writable {
            item("deploy_to", Ok(format!("{} writable (via {})", target.layout.deploy_to.display(), place.display())));
        } else {
            item(
                "deploy_to",
                Err((format!("{} is not writable", place.display()), "fix permissions or the mount".into())),
            );
        }
        match target.layout.read_current() {
            Ok(Current::Absent) => item("current", Ok("absent; the first deploy creates it".into())),
            Ok(Current::Release(r)) => item("current", Ok(format!("-> release {r}"))),
            Ok(Current::Elsewhere(p)) => {
                item("current", Ok(format!("symlink to {} (a deploy replaces it)", p.display())))
            }
            Err(e) => item("current", Err((e.to_string(), "move it away so slipway can manage the symlink".into()))),
        }
        match fd.as_ref().map(|d| rustix::fs::fstatvfs(d.fd())) {
            Some(Ok(s)) => {
                let free = s.f_bavail.saturating_mul(s.f_frsize);
                let text = format!("{} MiB free under {}", free >> 20, place.display());
                if free < 256 << 20 {
                    item("disk", Err((text, "free some space (old releases, logs) before deploying".into())));
                } else {
                    item("disk", Ok(text));
                }
            }
            Some(Err(e)) => item("disk", Err((format!("cannot stat {}: {e}", place.display()), String::new()))),
            None => item("disk", Err((format!("cannot open {}", place.display()), String::new()))),
        }
        pb::CheckReply { items }
    }

    async fn abort(&self, req: pb::AbortRequest) -> Result<pb::AbortReply, AgentError> {
        let target = self.target(req.target, Open::Existing)?;
        let id = ReleaseId::parse(&req.release_id).map_err(bad)?;
        let _guard = self.lock(&target.key).await;
        let mut record = self.record(&target)?;
        self.check_generation(&mut record, req.generation)?;
        let layout = &target.layout;
        let current = layout.read_current()?;
        let activated = record.releases.get(id.as_str()).is_some_and(|m| m.activated_at.is_some());
        if current.release() == Some(&id) || activated {
            return Ok(pb::AbortReply { removed: false });
        }
        let removed = layout.list()?.contains(&id);
        self.remove_release(&target, id.as_str())?;
        record.releases.remove(id.as_str());
        self.state.put(&record)?;
        info!(project = %target.project, env = %target.env, release = %id, removed, "aborted");
        Ok(pb::AbortReply { removed })
    }

    async fn releases(&self, req: pb::ReleasesRequest) -> Result<pb::ReleasesReply, AgentError> {
        // Read-only: no target lock, so `slipctl releases` answers during a long upload.
        let target = self.target(req.target, Open::Existing)?;
        let record = self.record(&target)?;
        let layout = &target.layout;
        let current = layout.read_current()?;
        let releases = layout
            .list()?
            .into_iter()
            .map(|id| {
                let meta = record.releases.get(id.as_str()).cloned().unwrap_or_default();
                pb::ReleaseInfo {
                    current: current.release() == Some(&id),
                    id: id.to_string(),
                    commit: meta.commit,
                    deploy_id: meta.deploy_id,
                    git_ref: meta.git_ref,
                    activated_at: meta.activated_at.unwrap_or(0),
                    previous: meta.previous.unwrap_or_default(),
                }
            })
            .collect();
        Ok(pb::ReleasesReply {
            releases,
            current: current.release().map(ToString::to_string).unwrap_or_default(),
            generation: record.generation,
        })
    }
}

fn list_or_none(ids: &[ReleaseId]) -> String {
    if ids.is_empty() { "none".into() } else { ids.iter().map(ReleaseId::as_str).collect::<Vec<_>>().join(", ") }
}

type StageStream = Pin<Box<dyn Stream<Item = Result<pb::StageEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    async fn info(&self, _req: Request<pb::InfoRequest>) -> Result<Response<pb::InfoReply>, Status> {
        let hostname = rustix::system::uname().nodename().to_string_lossy().into_owned();
        Ok(Response::new(pb::InfoReply {
            name: self.inner.config.name.clone(),
            version: VERSION.to_owned(),
            uptime_secs: self.inner.started.elapsed().as_secs(),
            hostname,
            cert_not_after: self.inner.cert_not_after,
            broken_targets: {
                let broken = self.inner.broken.lock().expect("broken lock");
                let mut list: Vec<String> = broken.iter().map(|(k, why)| format!("{k}: {why}")).collect();
                list.sort();
                list
            },
        }))
    }

    type StageStream = StageStream;

    async fn stage(&self, req: Request<Streaming<pb::StageRequest>>) -> Result<Response<Self::StageStream>, Status> {
        let mut stream = req.into_inner();
        let header = match stream.message().await? {
            Some(pb::StageRequest { kind: Some(RequestKind::Header(h)) }) => h,
            _ => return Err(bad("the first stage message must be the header").into()),
        };
        let (events_tx, events_rx) = mpsc::channel(16);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let result = inner.stage(header, stream, events_tx.clone()).await;
            let last = result.map(|s| pb::StageEvent { kind: Some(EventKind::Staged(s)) }).map_err(Status::from);
            let _ = events_tx.send(last).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(events_rx))))
    }

    type ActivateStream = Pin<Box<dyn Stream<Item = Result<pb::ActivateEvent, Status>> + Send>>;

    async fn activate(&self, req: Request<pb::ActivateRequest>) -> Result<Response<Self::ActivateStream>, Status> {
        let (events_tx, events_rx) = mpsc::channel(64);
        let inner = self.inner.clone();
        let req = req.into_inner();
        tokio::spawn(async move {
            let result = inner.activate(req, events_tx.clone()).await;
            let last = result
                .map(|r| pb::ActivateEvent { kind: Some(pb::activate_event::Kind::Done(r)) })
                .map_err(Status::from);
            let _ = events_tx.send(last).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(events_rx))))
    }

    async fn health(&self, req: Request<pb::HealthRequest>) -> Result<Response<pb::HealthReply>, Status> {
        Ok(Response::new(self.inner.health(req.into_inner()).await?))
    }

    async fn inventory(&self, req: Request<pb::InventoryRequest>) -> Result<Response<pb::InventoryReply>, Status> {
        let target = self.inner.target(req.into_inner().target, Open::Existing)?;
        let listed = target.layout.list()?;
        let sources = target.kept.reuse_sources(&target.layout)?;
        let releases = listed.iter().map(|r| r.to_string()).collect();
        let digests = sources.keys().map(|k| slipway_proto::hex_to_bytes(k)).collect();
        let offered = Offered { at: Instant::now(), releases: listed, sources };
        self.inner.offered.lock().expect("offered lock").insert(target.key.clone(), offered);
        Ok(Response::new(pb::InventoryReply { digests, releases }))
    }

    async fn check(&self, req: Request<pb::CheckRequest>) -> Result<Response<pb::CheckReply>, Status> {
        Ok(Response::new(self.inner.check(req.into_inner()).await))
    }

    async fn abort(&self, req: Request<pb::AbortRequest>) -> Result<Response<pb::AbortReply>, Status> {
        Ok(Response::new(self.inner.abort(req.into_inner()).await?))
    }

    async fn releases(&self, req: Request<pb::ReleasesRequest>) -> Result<Response<pb::ReleasesReply>, Status> {
        Ok(Response::new(self.inner.releases(req.into_inner()).await?))
    }
}
