//! The agent's gRPC service: stage (receive, unpack, verify), activate (flip + prune), abort,
//! releases, info. Every request names its project+env target; paths are checked against
//! `allowed_roots` before anything is touched, and one lock per target serialises the work.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slipway_common::archive::{ExtractOptions, Manifest, extract};
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
use crate::layout::{Current, Layout, fsync_dir, prune_plan};
use crate::state::{AgentState, ReleaseMeta, TargetRecord};

const PROGRESS_EVERY: Duration = Duration::from_millis(250);
const DEFAULT_KEEP: usize = 5;

/// One project+env as a request names it, checked.
struct Target {
    key: String,
    project: String,
    env: String,
    layout: Layout,
}

pub struct Inner {
    config: AgentConfig,
    state: AgentState,
    started: Instant,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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
        AgentService {
            inner: Arc::new(Inner { config, state, started: Instant::now(), locks: Mutex::new(HashMap::new()) }),
        }
    }

    /// At start: remove staging and trash leftovers and take `current` from the filesystem.
    pub fn reconcile(&self) -> Result<(), AgentError> {
        for mut record in self.inner.state.all()? {
            let layout = Layout { deploy_to: record.deploy_to.clone(), current: record.current.clone() };
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
            self.inner.state.put(&record)?;
        }
        Ok(())
    }
}

impl Inner {
    fn check_allowed(&self, what: &str, path: &Path) -> Result<(), AgentError> {
        check_clean_absolute(path).map_err(|why| bad(format!("{what}: {why}")))?;
        let refuse = || {
            AgentError::NotAllowed(format!(
                "{what} {} is outside this agent's allowed_roots ({}); add a root to agent.toml or change the project",
                path.display(),
                self.config.allowed_roots.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ))
        };
        if !self.config.is_allowed(path) {
            return Err(refuse());
        }
        // Symlinks in existing ancestors must not lead outside either.
        let mut existing = path;
        while !existing.exists() {
            existing = existing.parent().unwrap_or(Path::new("/"));
        }
        let real = existing.canonicalize().map_err(|e| AgentError::io("cannot resolve", existing, e))?;
        let inside = self.config.allowed_roots.iter().any(|root| {
            let root = root.canonicalize().unwrap_or_else(|_| root.clone());
            real.starts_with(&root)
        });
        if inside { Ok(()) } else { Err(refuse()) }
    }

    fn target(&self, target: Option<pb::Target>) -> Result<Target, AgentError> {
        let t = target.ok_or_else(|| bad("request has no target"))?;
        validate_name("project name", &t.project).map_err(bad)?;
        validate_name("env name", &t.env).map_err(bad)?;
        let deploy_to = PathBuf::from(&t.deploy_to);
        let current = PathBuf::from(&t.current);
        self.check_allowed("deploy_to", &deploy_to)?;
        self.check_allowed("current", &current)?;
        if current.starts_with(deploy_to.join("releases")) {
            return Err(bad("current must not be inside <deploy_to>/releases"));
        }
        Ok(Target {
            key: TargetRecord::key(&t.project, &t.env),
            project: t.project,
            env: t.env,
            layout: Layout { deploy_to, current },
        })
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

    async fn stage(
        self: Arc<Self>,
        header: pb::StageHeader,
        stream: Streaming<pb::StageRequest>,
        events: mpsc::Sender<Result<pb::StageEvent, Status>>,
    ) -> Result<pb::Staged, AgentError> {
        let started = Instant::now();
        let target = self.target(header.target)?;
        let id = ReleaseId::parse(&header.release_id).map_err(bad)?;
        let manifest: Manifest =
            header.manifest.ok_or_else(|| bad("stage header has no manifest"))?.try_into().map_err(bad)?;
        manifest.validate(&self.config.limits)?;
        if header.artifact_sha256.len() != 32 {
            return Err(bad("stage header has no artifact sha256"));
        }
        let _guard = self.lock(&target.key).await;
        let mut record = self.record(&target)?;
        self.check_generation(&mut record, header.generation)?;
        let layout = &target.layout;
        // Refuse early when `current` could never be flipped (a directory or file is there).
        layout.read_current()?;
        let releases_dir = layout.releases_dir();
        std::fs::create_dir_all(&releases_dir).map_err(|e| AgentError::io("cannot create", &releases_dir, e))?;
        check_free_space(&releases_dir, &manifest)?;
        if layout.release_path(&id).exists() {
            return Err(AgentError::Conflict(format!("release {id} already exists on this host")));
        }
        let staging = layout.staging_path(&id);
        layout.remove(&staging.file_name().expect("staging name").to_string_lossy())?;
        std::fs::create_dir(&staging).map_err(|e| AgentError::io("cannot create", &staging, e))?;
        self.state.put(&record)?;
        info!(project = %target.project, env = %target.env, release = %id, entries = manifest.entries.len(), "staging");

        let options = ExtractOptions {
            limits: self.config.limits,
            expected_sha256: slipway_proto::bytes_to_hex(&header.artifact_sha256),
            owner: None,
        };
        let outcome = receive_and_extract(stream, manifest, staging.clone(), options, events).await;
        let stats = match outcome {
            Ok(stats) => stats,
            Err(e) => {
                if let Err(cleanup) = layout.remove(&staging.file_name().expect("staging name").to_string_lossy()) {
                    warn!(error = %cleanup, "cannot remove staging dir");
                }
                return Err(e);
            }
        };
        let final_path = layout.release_path(&id);
        std::fs::rename(&staging, &final_path)
            .map_err(|e| AgentError::io("cannot rename staging to", &final_path, e))?;
        fsync_dir(&releases_dir).map_err(|e| AgentError::io("cannot fsync", &releases_dir, e))?;
        record.releases.insert(
            id.to_string(),
            ReleaseMeta {
                commit: header.commit,
                git_ref: header.git_ref,
                deploy_id: header.deploy_id,
                staged_at: unix_now(),
                activated_at: None,
                previous: None,
            },
        );
        self.state.put(&record)?;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        info!(release = %id, entries = stats.entries, bytes = stats.file_bytes, elapsed_ms, "staged");
        Ok(pb::Staged {
            release_path: final_path.display().to_string(),
            entries: stats.entries,
            bytes: stats.file_bytes,
            elapsed_ms,
        })
    }

    async fn activate(&self, req: pb::ActivateRequest) -> Result<pb::ActivateReply, AgentError> {
        let started = Instant::now();
        let target = self.target(req.target)?;
        let id = ReleaseId::parse(&req.release_id).map_err(bad)?;
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
        let is_rollback = req.deploy_type == pb::DeployType::Rollback as i32;
        if before.release() != Some(&id) {
            layout.flip(&id)?;
        }
        let meta = record.releases.entry(id.to_string()).or_default();
        if !is_rollback && before.release() != Some(&id) {
            meta.previous = before.release().map(ToString::to_string);
        }
        meta.activated_at = Some(unix_now());
        let rollback_target = meta.previous.as_deref().and_then(|p| ReleaseId::parse(p).ok());
        record.current_release = Some(id.to_string());
        info!(project = %target.project, env = %target.env, release = %id, rollback = is_rollback, "activated");

        let keep = if req.keep_releases == 0 { DEFAULT_KEEP } else { req.keep_releases as usize };
        let was_activated = |r: &ReleaseId| record.releases.get(r.as_str()).is_none_or(|m| m.activated_at.is_some());
        let pruned = prune_plan(&on_disk, Some(&id), rollback_target.as_ref(), &was_activated, keep);
        let mut pruned_names = Vec::new();
        for old in &pruned {
            match layout.remove(old.as_str()) {
                Ok(()) => {
                    record.releases.remove(old.as_str());
                    pruned_names.push(old.to_string());
                }
                Err(e) => warn!(release = %old, error = %e, "cannot prune"),
            }
        }
        self.state.put(&record)?;
        let previous = match before {
            Current::Release(p) => p.to_string(),
            Current::Elsewhere(path) => path.display().to_string(),
            Current::Absent => String::new(),
        };
        Ok(pb::ActivateReply {
            previous_release: previous,
            pruned: pruned_names,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }

    async fn abort(&self, req: pb::AbortRequest) -> Result<pb::AbortReply, AgentError> {
        let target = self.target(req.target)?;
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
        layout.remove(id.as_str())?;
        record.releases.remove(id.as_str());
        self.state.put(&record)?;
        info!(project = %target.project, env = %target.env, release = %id, removed, "aborted");
        Ok(pb::AbortReply { removed })
    }

    async fn releases(&self, req: pb::ReleasesRequest) -> Result<pb::ReleasesReply, AgentError> {
        // Read-only: no target lock, so `slipctl releases` answers during a long upload.
        let target = self.target(req.target)?;
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

fn check_free_space(dir: &Path, manifest: &Manifest) -> Result<(), AgentError> {
    let stat = rustix::fs::statvfs(dir).map_err(|e| AgentError::io("cannot stat filesystem of", dir, e.into()))?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    // File bytes, plus a block per entry for small files and directories.
    let needed = manifest.file_bytes() + manifest.entries.len() as u64 * 4096;
    if free < needed { Err(AgentError::DiskFull { path: dir.to_path_buf(), needed, free }) } else { Ok(()) }
}

/// Reads archive chunks that the async side pushes through a bounded channel.
struct ChunkReader {
    rx: mpsc::Receiver<Result<Vec<u8>, String>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Some(Err(why)) => return Err(io::Error::other(why)),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Pump the upload into the extractor (on a blocking thread) with bounded buffering, so neither
/// side holds the whole artifact; forward progress to the caller.
async fn receive_and_extract(
    mut stream: Streaming<pb::StageRequest>,
    manifest: Manifest,
    staging: PathBuf,
    options: ExtractOptions,
    events: mpsc::Sender<Result<pb::StageEvent, Status>>,
) -> Result<slipway_common::archive::ExtractStats, AgentError> {
    let (chunk_tx, chunk_rx) = mpsc::channel::<Result<Vec<u8>, String>>(8);
    let progress_events = events.clone();
    let extractor = tokio::task::spawn_blocking(move || {
        let reader = ChunkReader { rx: chunk_rx, buf: Vec::new(), pos: 0 };
        let mut last = Instant::now();
        let mut progress = |entries: u64, bytes: u64| {
            if last.elapsed() >= PROGRESS_EVERY {
                last = Instant::now();
                let event = pb::StageEvent {
                    kind: Some(EventKind::Progress(pb::StageProgress {
                        step: "unpack".into(),
                        bytes_received: bytes,
                        entries_written: entries,
                    })),
                };
                let _ = progress_events.try_send(Ok(event));
            }
        };
        extract(reader, &manifest, &staging, &options, &mut progress)
    });
    let mut upload_error = None;
    loop {
        match stream.message().await {
            Ok(Some(pb::StageRequest { kind: Some(RequestKind::Chunk(chunk)) })) => {
                if chunk_tx.send(Ok(chunk)).await.is_err() {
                    break; // The extractor stopped early; its result says why.
                }
            }
            Ok(Some(_)) => {
                let why = "unexpected message after the header: only archive chunks may follow".to_string();
                let _ = chunk_tx.send(Err(why.clone())).await;
                upload_error = Some(AgentError::BadRequest(why));
                break;
            }
            Ok(None) => break,
            Err(status) => {
                let why = format!("the upload stream broke: {}", status.message());
                let _ = chunk_tx.send(Err(why.clone())).await;
                upload_error = Some(AgentError::Upload(why));
                break;
            }
        }
    }
    drop(chunk_tx);
    let result = extractor.await.map_err(|e| AgentError::State(format!("extractor task failed: {e}")))?;
    match (result, upload_error) {
        (Ok(stats), None) => Ok(stats),
        (_, Some(upload)) => Err(upload),
        (Err(e), None) => Err(e.into()),
    }
}

type StageStream = Pin<Box<dyn Stream<Item = Result<pb::StageEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    async fn info(&self, _req: Request<pb::InfoRequest>) -> Result<Response<pb::InfoReply>, Status> {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned();
        Ok(Response::new(pb::InfoReply {
            name: self.inner.config.name.clone(),
            version: VERSION.to_owned(),
            uptime_secs: self.inner.started.elapsed().as_secs(),
            hostname,
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

    async fn activate(&self, req: Request<pb::ActivateRequest>) -> Result<Response<pb::ActivateReply>, Status> {
        Ok(Response::new(self.inner.activate(req.into_inner()).await?))
    }

    async fn abort(&self, req: Request<pb::AbortRequest>) -> Result<Response<pb::AbortReply>, Status> {
        Ok(Response::new(self.inner.abort(req.into_inner()).await?))
    }

    async fn releases(&self, req: Request<pb::ReleasesRequest>) -> Result<Response<pb::ReleasesReply>, Status> {
        Ok(Response::new(self.inner.releases(req.into_inner()).await?))
    }
}
