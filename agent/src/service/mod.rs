//! The agent's gRPC service: stage (receive, unpack, verify), activate (flip + prune), abort,
//! releases, info. Every request names its project+env target; paths are checked against
//! `allowed_roots` before anything is touched, and one lock per target serialises the work.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slipway_common::archive::ReuseSource;
use slipway_common::config::AgentConfig;
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
use crate::hooks::{HookEnv, HookPolicy, LiveItem, LiveOutput, RunAs, decide_user, failure, run_hook};
use crate::layout::{Current, Layout, Open};
use crate::state::{AgentState, TargetRecord};

mod activate;
mod maintenance;
mod migrate;
mod stage;
mod target;

use target::Target;

/// Run filesystem work (walks, removals, syncs) without stalling the runtime's other tasks: the
/// worker hands its queue to the others while `work` runs. (slipd runs a multi-threaded runtime.)
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

pub struct Inner {
    config: AgentConfig,
    /// Who may run hooks (from `config`, decided once).
    hook_policy: HookPolicy,
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
    metrics: Arc<crate::metrics::AgentMetrics>,
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
/// One ordered path from the hooks to the RPC's event stream: output chunks and hook results
/// go through the same channel, so a result never arrives before its output.
/// How hook output and results become one RPC's events.
pub(super) struct EventWraps<E> {
    pub(super) output: fn(pb::HookOutput) -> E,
    pub(super) hook: fn(pb::HookResult) -> E,
}

fn live_forwarder<E: Send + 'static>(
    events: mpsc::Sender<Result<E, Status>>,
    wraps: &EventWraps<E>,
) -> (LiveOutput, tokio::task::JoinHandle<()>) {
    let (wrap_output, wrap_hook) = (wraps.output, wraps.hook);
    let (tx, mut rx) = mpsc::channel::<LiveItem>(64);
    let task = tokio::spawn(async move {
        while let Some(item) = rx.recv().await {
            let event = match item {
                LiveItem::Output(o) => wrap_output(o),
                LiveItem::Done(r) => wrap_hook(r),
            };
            if events.send(Ok(event)).await.is_err() {
                break;
            }
        }
    });
    (tx, task)
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
                hook_policy: HookPolicy::from_config(&config),
                config,
                state,
                started: Instant::now(),
                cert_not_after,
                locks: Mutex::new(HashMap::new()),
                offered: Mutex::new(HashMap::new()),
                broken: Mutex::new(HashMap::new()),
                staging: Mutex::new(HashSet::new()),
                stages,
                metrics: Arc::default(),
            }),
        }
    }

    /// The agent's metrics, and what `/metrics` reads besides them (the targets, the roots).
    pub fn metrics(&self) -> (Arc<crate::metrics::AgentMetrics>, AgentState, Vec<std::path::PathBuf>) {
        (self.inner.metrics.clone(), self.inner.state.clone(), self.inner.config.allowed_roots.clone())
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

impl Inner {
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
    /// Run a stage's hook lines in order, streaming their output and results as `events`; stops
    /// at the first that fails. Everything is on `events` when this returns.
    async fn run_hooks<E: Send + 'static>(
        &self,
        stage: &str,
        spec: &pb::HookSpec,
        site: &HookSite<'_>,
        events: &mpsc::Sender<Result<E, Status>>,
        wraps: &EventWraps<E>,
    ) -> Result<(), AgentError> {
        let env = self.hook_env(site);
        let timeout = Duration::from_secs(spec.timeout_secs.max(1));
        let (live, forwarder) = live_forwarder(events.clone(), wraps);
        let mut outcome = Ok(());
        for command in &spec.commands {
            let result =
                run_hook(stage, command, site.release_path, &env, site.run_as, timeout, Some(live.clone())).await;
            let failed = failure(&result, timeout);
            // Waits for room: a hook's result is never dropped.
            let _ = live.send(LiveItem::Done(result)).await;
            if let Some(why) = failed {
                outcome = Err(AgentError::Hook(why));
                break;
            }
        }
        drop(live);
        let _ = forwarder.await;
        outcome
    }

    /// Command lines the controller asks for outside any release (a load-balancer drain run on
    /// this host): as the hook user, under the same policy as hooks, in `/`.
    async fn run_commands(&self, req: pb::RunCommandsRequest) -> Result<pb::RunCommandsReply, AgentError> {
        if req.stage == "migrate" {
            return self.migrate(req).await;
        }
        let ctx = req.hook_context.unwrap_or_default();
        crate::hooks::check_vars(&ctx.vars)?;
        let stage = match req.stage.as_str() {
            s @ ("drain" | "undrain") => s.to_owned(),
            other => return Err(bad(format!("unknown command stage '{other}'"))),
        };
        let run_as = decide_user(&ctx.user, &self.hook_policy).await?;
        let mut slipway: Vec<(String, String)> = vec![
            ("HOST".into(), ctx.host.clone()),
            ("COMMIT".into(), ctx.commit.clone()),
            ("REF".into(), ctx.git_ref.clone()),
            ("DEPLOY_TYPE".into(), stage.clone()),
        ];
        for (k, v) in &req.vars {
            if !k.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') || k.is_empty() {
                return Err(bad(format!(
                    "variable name '{}' is not SLIPWAY_-able",
                    slipway_common::archive::clip(k, 64)
                )));
            }
            slipway.push((k.clone(), v.clone()));
        }
        let pairs: Vec<(&str, String)> = slipway.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let vars: std::collections::BTreeMap<String, String> = ctx.vars.clone().into_iter().collect();
        let env = HookEnv::new(&run_as, &vars, &pairs);
        let spec = req.spec.unwrap_or_default();
        let timeout = Duration::from_secs(spec.timeout_secs.max(1));
        let mut results = Vec::new();
        for command in &spec.commands {
            let result = run_hook(&stage, command, Path::new("/"), &env, &run_as, timeout, None).await;
            let failed = failure(&result, timeout);
            results.push(result);
            if let Some(why) = failed {
                return Ok(pb::RunCommandsReply { results, error: why });
            }
        }
        Ok(pb::RunCommandsReply { results, error: String::new() })
    }

    /// Who runs hooks and owns files, when the request needs either.
    async fn run_as(&self, user: &str, has_hooks: bool) -> Result<Option<RunAs>, AgentError> {
        if user.is_empty() && !has_hooks {
            return Ok(None);
        }
        decide_user(user, &self.hook_policy).await.map(Some)
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
        let target = match blocking(|| self.target(req.target, Open::Existing)) {
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
        let run_as = decide_user(&req.user, &self.hook_policy).await;
        match &run_as {
            Ok(r) => item("user", Ok(format!("hooks run as {} (uid {}, gid {})", r.name, r.uid, r.gid))),
            Err(e) => item("user", Err((e.to_string(), "create the user or set target.user".into()))),
        }
        // The hook user must be able to enter the release: every directory on the way searchable.
        if let Ok(r) = &run_as {
            let releases = target.layout.releases_dir();
            let mut gids = r.groups.clone();
            gids.push(r.gid);
            match crate::preflight::unreachable_dir(&releases, r.uid, &gids) {
                None => item("user can reach", Ok(format!("{} can enter {}", r.name, releases.display()))),
                Some(dir) => item(
                    "user can reach",
                    Err((
                        format!(
                            "{} cannot enter {} (no search permission on {})",
                            r.name,
                            releases.display(),
                            dir.display()
                        ),
                        format!(
                            "allow it (chmod o+x {}, or a group {} is in), or put deploy_to elsewhere",
                            dir.display(),
                            r.name
                        ),
                    )),
                ),
            }
        }
        // Each hook's program on the fixed PATH hooks run with.
        let missing: Vec<String> = req
            .hook_commands
            .iter()
            .filter_map(|line| crate::preflight::first_program(line).map(|p| (line, p)))
            .filter(|(_, p)| crate::preflight::find_program(p, crate::hooks::SAFE_PATH, Path::new("/")).is_none())
            .map(|(line, p)| format!("`{p}` (in `{line}`)"))
            .collect();
        if !req.hook_commands.is_empty() {
            if missing.is_empty() {
                item("hook programs", Ok(format!("{} hook line(s): every program found", req.hook_commands.len())));
            } else {
                item(
                    "hook programs",
                    Err((
                        format!("not on the hooks' PATH ({}): {}", crate::hooks::SAFE_PATH, missing.join(", ")),
                        "install them, or write their full path in the hook line".into(),
                    )),
                );
            }
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
        let target = blocking(|| self.target(req.target, Open::Existing))?;
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
        blocking(|| self.remove_release(&target, id.as_str()))?;
        record.releases.remove(id.as_str());
        self.state.put(&record)?;
        info!(project = %target.project, env = %target.env, release = %id, removed, "aborted");
        Ok(pb::AbortReply { removed })
    }

    async fn releases(&self, req: pb::ReleasesRequest) -> Result<pb::ReleasesReply, AgentError> {
        // Read-only: no target lock, so `slipctl releases` answers during a long upload.
        let target = blocking(|| self.target(req.target, Open::Existing))?;
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
                    rolled_back_at: meta.rolled_back_at.unwrap_or(0),
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

/// Release `id` must be one of the target's releases (staged or retained) on this host.
fn held_release(layout: &crate::layout::Layout, id: &ReleaseId) -> Result<(), AgentError> {
    let on_disk = layout.list()?;
    if on_disk.contains(id) {
        return Ok(());
    }
    Err(AgentError::NotFound(format!("release {id} is not on this host (retained: {})", list_or_none(&on_disk))))
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
            let metrics = inner.metrics.clone();
            let result = inner.stage(header, stream, events_tx.clone()).await;
            if result.is_err() {
                metrics.stage_failed();
            }
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
            let metrics = inner.metrics.clone();
            let result = inner.activate(req, events_tx.clone()).await;
            metrics.activated(result.is_ok(), result.as_ref().map_or(0, |r| r.elapsed_ms));
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
        let req = req.into_inner();
        let (target, listed, sources, retained) = blocking(|| {
            let target = self.inner.target(req.target, Open::Existing)?;
            let listed = target.layout.list()?;
            let (sources, retained) = target.kept.inventory(&target.layout)?;
            Ok::<_, AgentError>((target, listed, sources, retained))
        })?;
        let releases = listed.iter().map(|r| r.to_string()).collect();
        // A digest per file only when asked: the controller knows the manifests it deployed.
        let digests =
            if req.per_file { sources.keys().map(|k| slipway_proto::hex_to_bytes(k)).collect() } else { Vec::new() };
        let retained = retained
            .into_iter()
            .map(|r| pb::RetainedRelease {
                id: r.id.to_string(),
                manifest_sha256: r.manifest_sha256.to_vec(),
                changed: r.changed,
            })
            .collect();
        let offered = Offered { at: Instant::now(), releases: listed, sources };
        self.inner.offered.lock().expect("offered lock").insert(target.key.clone(), offered);
        Ok(Response::new(pb::InventoryReply { digests, releases, retained }))
    }

    async fn check(&self, req: Request<pb::CheckRequest>) -> Result<Response<pb::CheckReply>, Status> {
        Ok(Response::new(self.inner.check(req.into_inner()).await))
    }

    async fn abort(&self, req: Request<pb::AbortRequest>) -> Result<Response<pb::AbortReply>, Status> {
        Ok(Response::new(self.inner.abort(req.into_inner()).await?))
    }

    async fn prune(&self, req: Request<pb::PruneRequest>) -> Result<Response<pb::PruneReply>, Status> {
        Ok(Response::new(self.inner.prune(req.into_inner()).await?))
    }

    async fn run_commands(
        &self,
        req: Request<pb::RunCommandsRequest>,
    ) -> Result<Response<pb::RunCommandsReply>, Status> {
        Ok(Response::new(self.inner.run_commands(req.into_inner()).await?))
    }

    async fn releases(&self, req: Request<pb::ReleasesRequest>) -> Result<Response<pb::ReleasesReply>, Status> {
        Ok(Response::new(self.inner.releases(req.into_inner()).await?))
    }

    async fn maintenance(
        &self,
        req: Request<pb::MaintenanceRequest>,
    ) -> Result<Response<pb::MaintenanceReply>, Status> {
        Ok(Response::new(self.inner.maintenance(req.into_inner()).await?))
    }
}
