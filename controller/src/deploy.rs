//! Deploy and rollback: resolve, package once, stage every host in parallel, activate only when
//! every host has staged, record the truth. Rollback checks every host holds its target before
//! touching any.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use slipway_common::ReleaseId;
use slipway_common::config::{EnvSettings, ProjectConfig};
use slipway_common::time::unix_now;
use slipway_proto::pb;
use slipway_proto::pb::stage_event::Kind as EventKind;
use slipway_proto::pb::stage_request::Kind as RequestKind;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::artifact::{self, Artifact};
use crate::build::{self, Recipe};
use crate::client::{self, AgentClient, Timeouts, status_text};
use crate::error::{CtlError, Result};
use crate::git;
use crate::home::Home;
use crate::output::{HostEvent, Reporter, bytes, millis};
use crate::plan::{rollback_targets, select_hosts};
use crate::rollout::{Action, HostState, Outcome, Plan, batches, next, set};
use crate::store::{
    AgentRecord, ArtifactSummary, DeployKind, DeployRecord, DeployStatus, HookRecord, HostResult, LockRecord,
    ProjectRecord, Step, Store, hostname,
};

pub struct DeployArgs {
    pub project: String,
    pub env: String,
    pub git_ref: Option<String>,
    pub hosts: Option<Vec<String>>,
    pub dry_run: bool,
    /// Send the whole artifact even to hosts that hold most of it.
    pub full: bool,
    /// Becomes true when the operator cancels (Ctrl-C, SIGTERM).
    pub cancel: Option<watch::Receiver<bool>>,
}

/// What one host is sent: a package file (the full artifact, or a delta), or the full artifact
/// while it is being packaged.
#[derive(Debug, Clone)]
enum Upload {
    File { path: PathBuf, sha256: String, size: u64, delta: bool },
    Streamed { file: Arc<std::fs::File>, progress: watch::Receiver<artifact::PackProgress> },
}

/// What a deploy ships. With a build step (or a cached package) the full artifact exists up
/// front. Without one, nothing is packaged before the hosts say what they hold: when none holds
/// anything the full artifact is packaged once and sent; otherwise the manifest is read from git
/// (blob digests cached), each host group gets a delta packed straight from git, and a host that
/// needs everything gets the full artifact streamed while it is packaged.
pub struct Package {
    /// Read from git before any packaging; once the full artifact exists, its manifest serves.
    manifest: Option<slipway_common::archive::Manifest>,
    pub full: Option<Artifact>,
    /// Without a build step: package (deltas, or the full artifact) straight from git.
    git: Option<(PathBuf, PathBuf, Recipe)>,
    streamed: Option<(Arc<std::fs::File>, watch::Receiver<artifact::PackProgress>)>,
    packing: Option<tokio::task::JoinHandle<Result<Artifact>>>,
}

impl Package {
    fn packaged(full: Artifact) -> Self {
        Package { manifest: None, full: Some(full), git: None, streamed: None, packing: None }
    }

    fn from_git(cache: PathBuf, mirror: PathBuf, recipe: Recipe) -> Self {
        Package { manifest: None, full: None, git: Some((cache, mirror, recipe)), streamed: None, packing: None }
    }

    /// The manifest; known once [`Package::pack`] or [`Package::read_manifest`] ran.
    fn manifest(&self) -> &slipway_common::archive::Manifest {
        self.known_manifest().expect("the manifest is read before anything is sent")
    }

    fn known_manifest(&self) -> Option<&slipway_common::archive::Manifest> {
        self.full.as_ref().map(|a| &a.manifest).or(self.manifest.as_ref())
    }

    /// Package the full artifact now (from git), unless it exists.
    async fn pack(&mut self, reporter: &mut Reporter) -> Result<()> {
        if self.full.is_some() {
            return Ok(());
        }
        let (cache, mirror, recipe) = self.git.as_ref().expect("a package without artifact packs from git");
        let artifact = artifact::pack_git(cache, mirror, recipe).await?;
        if self.manifest.as_ref().is_some_and(|m| *m != artifact.manifest) {
            return Err(CtlError::failed("the packaged tree differs from its manifest (did the mirror change?)"));
        }
        say_packaged(&artifact, reporter);
        self.manifest = None;
        self.full = Some(artifact);
        Ok(())
    }

    /// Start reading the manifest from git when it is unknown and this project's blob digests are
    /// cached (it was packaged here before).
    fn manifest_in_background(&self) -> Option<tokio::task::JoinHandle<Result<slipway_common::archive::Manifest>>> {
        let (_, mirror, recipe) = self.git.as_ref().filter(|_| self.known_manifest().is_none())?;
        if !artifact::BlobDigests::exist(mirror) {
            return None;
        }
        let (mirror, recipe) = (mirror.clone(), recipe.clone());
        Some(tokio::spawn(async move { artifact::manifest_git(&mirror, &recipe).await }))
    }

    /// Read the manifest from git without packaging (or take the one `early` read), unless known.
    async fn read_manifest(
        &mut self,
        early: Option<tokio::task::JoinHandle<Result<slipway_common::archive::Manifest>>>,
        reporter: &mut Reporter,
    ) -> Result<()> {
        if self.known_manifest().is_some() {
            return Ok(());
        }
        let (_, mirror, recipe) = self.git.as_ref().expect("a package without manifest reads it from git");
        let t = Instant::now();
        let manifest = match early {
            Some(task) => task.await.map_err(|e| CtlError::failed(format!("manifest task failed: {e}")))??,
            None => artifact::manifest_git(mirror, recipe).await?,
        };
        reporter.say(format!(
            "manifest: {} entries, {} (read from git; waited {} for it)",
            manifest.entries.len(),
            bytes(manifest.file_bytes()),
            millis(t.elapsed().as_millis() as u64)
        ));
        self.manifest = Some(manifest);
        Ok(())
    }

    /// The full artifact for a host: the file when there is one, else the stream (started now).
    fn full_upload(&mut self, reporter: &mut Reporter) -> Result<Upload> {
        if let Some(a) = &self.full {
            return Ok(Upload::File {
                path: a.path.clone(),
                sha256: a.sha256.clone(),
                size: a.compressed_bytes,
                delta: false,
            });
        }
        if self.streamed.is_none() {
            let (cache, mirror, recipe) = self.git.as_ref().expect("a package without artifact packs from git");
            let pack = artifact::stream_git(cache, mirror, recipe, self.manifest().clone())?;
            reporter.say("packaging the full artifact while sending it");
            self.streamed = Some((pack.file, pack.progress));
            self.packing = Some(pack.task);
        }
        let (file, progress) = self.streamed.clone().expect("just set");
        Ok(Upload::Streamed { file, progress })
    }

    /// A delta shipping only `ship`.
    async fn delta(&self, ship: std::collections::BTreeSet<String>) -> Result<artifact::Delta> {
        match (&self.full, &self.git) {
            (Some(full), _) => artifact::delta(full, ship).await,
            (None, Some((cache, mirror, recipe))) => artifact::delta_git(cache, mirror, recipe, ship).await,
            (None, None) => Err(CtlError::failed("no package to derive a delta from")),
        }
    }

    /// Wait for a streamed packaging to end; then the full artifact is known (and cached).
    async fn finish(&mut self) -> Option<Result<()>> {
        let task = self.packing.take()?;
        Some(match task.await {
            Ok(Ok(artifact)) => {
                self.full = Some(artifact);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(CtlError::failed(format!("packaging task failed: {e}"))),
        })
    }
}

/// Ask each host what its retained releases hold and derive what it must be sent. Hosts with the
/// same gaps share one delta package; a host that holds nothing useful gets the full artifact.
/// The connections made here are returned so the uploads reuse them.
async fn plan_uploads(
    hosts: &[String],
    agents: &BTreeMap<String, AgentRecord>,
    settings: &EnvSettings,
    package: &mut Package,
    fan: &Fanout,
    reporter: &mut Reporter,
) -> Result<(BTreeMap<String, Upload>, BTreeMap<String, AgentClient>)> {
    let mut tasks = tokio::task::JoinSet::new();
    for host in hosts {
        let (agent, tls, timeouts, target) =
            (agents[host].clone(), fan.tls.clone(), fan.timeouts, pb_target(settings, host));
        tasks.spawn(async move {
            let connection = client::connect(tls, &agent, timeouts).await.ok();
            let inventory = match connection.clone() {
                Some(mut c) => {
                    let call = c.inventory(pb::InventoryRequest { target: Some(target) });
                    tokio::time::timeout(timeouts.call, call).await.ok().and_then(Result::ok).map(|r| r.into_inner())
                }
                None => None,
            };
            (agent.name, connection, inventory)
        });
    }
    // A project packaged here before (its blob digests are cached) likely has hosts holding most of
    // it: read the manifest while they answer.
    let early = package.manifest_in_background();
    let inventories = tasks.join_all().await;
    if inventories.iter().all(|(_, _, i)| i.as_ref().is_none_or(|i| i.digests.is_empty())) {
        // Nobody holds anything: package once, send it whole (no manifest pass of its own).
        if let Some(task) = early {
            task.abort();
        }
        package.pack(reporter).await?;
    } else {
        package.read_manifest(early, reporter).await?;
    }
    // Each file's digest as the inventory states it (bytes), decoded once for all hosts.
    let files: Vec<(Vec<u8>, &str)> = package
        .manifest()
        .entries
        .iter()
        .filter(|e| e.kind == slipway_common::archive::EntryKind::File)
        .map(|e| (slipway_proto::hex_to_bytes(&e.sha256), e.path.as_str()))
        .collect();
    let mut groups: BTreeMap<std::collections::BTreeSet<String>, Vec<String>> = BTreeMap::new();
    let mut full_hosts = Vec::new();
    let mut connections = BTreeMap::new();
    for (host, connection, inventory) in inventories {
        if let Some(c) = connection {
            connections.insert(host.clone(), c);
        }
        let held: std::collections::HashSet<Vec<u8>> =
            inventory.map(|i| i.digests.into_iter().collect()).unwrap_or_default();
        let ship: std::collections::BTreeSet<String> =
            files.iter().filter(|(digest, _)| !held.contains(digest)).map(|(_, path)| (*path).to_owned()).collect();
        if ship.len() == files.len() {
            full_hosts.push(host);
        } else {
            groups.entry(ship).or_default().push(host);
        }
    }
    let mut uploads = BTreeMap::new();
    for (ship, group) in groups {
        let shipped = ship.len();
        match package.delta(ship).await {
            Ok(d) => {
                reporter.say(format!(
                    "delta for {}: {shipped} of {} files changed, {} to send",
                    group.join(", "),
                    files.len(),
                    bytes(d.compressed_bytes)
                ));
                for host in group {
                    let upload = Upload::File {
                        path: d.path.clone(),
                        sha256: d.sha256.clone(),
                        size: d.compressed_bytes,
                        delta: true,
                    };
                    uploads.insert(host, upload);
                }
            }
            Err(e) => {
                reporter.say(format!("cannot build a delta ({e}); sending the full artifact"));
                full_hosts.extend(group);
            }
        }
    }
    for host in full_hosts {
        uploads.insert(host, package.full_upload(reporter)?);
    }
    Ok((uploads, connections))
}

/// Holds the project+env lock; released when dropped (the deploy ended, however it ended).
pub struct LockGuard {
    state: PathBuf,
    project: String,
    env: String,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Ok(store) = Store::open(&self.state) {
            let _ = store.release_lock(&self.project, &self.env, std::process::id());
        }
    }
}

/// Take the one-operation-at-a-time lock of project+env and number the operation.
fn lock_and_number(home: &Home, record: &mut DeployRecord, reporter: &mut Reporter) -> Result<LockGuard> {
    let guard = take_lock(home, record, reporter)?;
    number(home, record)?;
    Ok(guard)
}

/// Number the operation (holding its lock) and record it as running.
fn number(home: &Home, record: &mut DeployRecord) -> Result<()> {
    let store = Store::open(&home.state())?;
    record.id = store.next_deploy_id()?;
    let lock = lock_record(record);
    store.acquire_lock(&lock)?.map_err(|holder| CtlError::failed(format!("lost the lock to {}", holder.describe())))?;
    store.put_deploy(record)?;
    Ok(())
}

fn lock_record(record: &DeployRecord) -> LockRecord {
    LockRecord {
        project: record.project.clone(),
        env: record.env.clone(),
        deploy_id: record.id,
        user: record.user.clone(),
        host: hostname(),
        pid: std::process::id(),
        since: unix_now(),
    }
}

/// Take the lock of project+env (not numbered yet: nothing is recorded until [`number`]).
fn take_lock(home: &Home, record: &DeployRecord, reporter: &mut Reporter) -> Result<LockGuard> {
    let store = Store::open(&home.state())?;
    match store.acquire_lock(&lock_record(record))? {
        Err(holder) => {
            return Err(CtlError::bad(format!(
                "{}/{} is locked by {}; wait for it to finish, or if that process is gone run `slipctl unlock {} {}`",
                record.project,
                record.env,
                holder.describe(),
                record.project,
                record.env
            )));
        }
        Ok(Some(dead)) => reporter.say(format!("took over the lock of {}, whose process is gone", dead.describe())),
        Ok(None) => {}
    }
    Ok(LockGuard { state: home.state(), project: record.project.clone(), env: record.env.clone() })
}

pub struct RollbackArgs {
    pub project: String,
    pub env: String,
    pub to: Option<String>,
    pub hosts: Option<Vec<String>>,
}

/// What a deploy or rollback operates on, loaded from state in one short transaction.
pub struct Scope {
    pub project: ProjectRecord,
    pub settings: EnvSettings,
    pub hosts: Vec<AgentRecord>,
}

/// Load project, env and hosts; every unknown name is bad input naming the fix.
pub fn load_scope(home: &Home, project: &str, env: &str, only: Option<&[String]>) -> Result<Scope> {
    let store = Store::open(&home.state())?;
    let record = store.project(project)?.ok_or_else(|| {
        let known: Vec<String> = store.projects().unwrap_or_default().into_iter().map(|p| p.name).collect();
        CtlError::bad(format!(
            "unknown project '{project}' (projects: {}); add it with `slipctl project apply -f FILE`",
            if known.is_empty() { "none".into() } else { known.join(", ") }
        ))
    })?;
    let config = ProjectConfig::parse(&record.text, &record.source_file.display().to_string())?;
    let settings = config.env(env).cloned().ok_or_else(|| {
        CtlError::bad(format!(
            "project '{project}' has no env '{env}' (envs: {})",
            config.envs.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    let agents = store.agents()?;
    let hosts = select_hosts(project, env, &settings.hosts, &agents, only)?;
    Ok(Scope { project: record, settings, hosts })
}

pub fn hook_context(settings: &EnvSettings, host: &str, commit: &str, git_ref: &str) -> pb::HookContext {
    pb::HookContext {
        user: settings.target.user.clone().unwrap_or_default(),
        vars: settings.vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        commit: commit.to_owned(),
        git_ref: git_ref.to_owned(),
        host: host.to_owned(),
    }
}

fn hook_spec(commands: &[String], settings: &EnvSettings) -> pb::HookSpec {
    pb::HookSpec { commands: commands.to_vec(), timeout_secs: settings.target.hook_timeout_secs }
}

/// Report a hook's live output or result, and keep the result.
fn on_hook_event(
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

pub fn pb_target(settings: &EnvSettings, host: &str) -> pb::Target {
    pb::Target {
        project: settings.project.clone(),
        env: settings.env.clone(),
        deploy_to: settings.target.deploy_to_for(host).display().to_string(),
        current: settings.target.current_for(host).display().to_string(),
    }
}

fn current_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid {}", rustix::process::getuid().as_raw()))
}

/// A step recorder relative to the operation's start.
struct Clock(Instant);

impl Clock {
    fn step(
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
    fn follow_up(
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

fn new_host_result(agent: &AgentRecord, release: &str) -> HostResult {
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

type Events = mpsc::UnboundedSender<(String, HostEvent)>;

/// What every per-host task of one phase shares.
#[derive(Clone)]
struct Fanout {
    tls: Arc<rustls::ClientConfig>,
    events: Events,
    clock: Arc<Clock>,
    timeouts: Timeouts,
}

/// Send a package file in chunks; the header carried its digest.
async fn send_file(
    path: &Path,
    total: u64,
    req_tx: mpsc::Sender<pb::StageRequest>,
    mut report: impl FnMut(u64, u64),
) -> std::result::Result<u64, String> {
    let mut file = tokio::fs::File::open(path).await.map_err(|e| format!("cannot read artifact: {e}"))?;
    let mut sent = 0u64;
    report(0, total);
    loop {
        let mut chunk = Vec::with_capacity(slipway_proto::CHUNK_BYTES);
        while chunk.len() < slipway_proto::CHUNK_BYTES {
            let n = (&mut file)
                .take((slipway_proto::CHUNK_BYTES - chunk.len()) as u64)
                .read_to_end(&mut chunk)
                .await
                .map_err(|e| format!("cannot read artifact: {e}"))?;
            if n == 0 {
                break;
            }
        }
        if chunk.is_empty() {
            return Ok(sent);
        }
        sent += chunk.len() as u64;
        if req_tx.send(pb::StageRequest { kind: Some(RequestKind::Chunk(chunk)) }).await.is_err() {
            return Ok(sent); // The call ended; its status says why.
        }
        report(sent, total);
    }
}

/// Send the full artifact while it is being packaged: what is written so far, then the rest as it
/// comes, then a trailer with the digest (the header had none).
async fn send_streamed(
    file: Arc<std::fs::File>,
    mut progress: watch::Receiver<artifact::PackProgress>,
    req_tx: mpsc::Sender<pb::StageRequest>,
    mut report: impl FnMut(u64, u64),
) -> std::result::Result<u64, String> {
    let mut sent = 0u64;
    report(0, 0);
    loop {
        let state = progress.borrow_and_update().clone();
        let (available, digest) = match state {
            artifact::PackProgress::Writing(n) => (n, None),
            artifact::PackProgress::Done(Ok((sha256, size))) => (size, Some(sha256)),
            artifact::PackProgress::Done(Err(e)) => return Err(format!("packaging failed: {e}")),
        };
        while sent < available {
            let len = (available - sent).min(slipway_proto::CHUNK_BYTES as u64) as usize;
            let (f, offset) = (file.clone(), sent);
            let chunk = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; len];
                f.read_exact_at(&mut buf, offset).map(|()| buf)
            })
            .await
            .map_err(|e| format!("artifact reader failed: {e}"))?
            .map_err(|e| format!("cannot read artifact: {e}"))?;
            sent += len as u64;
            if req_tx.send(pb::StageRequest { kind: Some(RequestKind::Chunk(chunk)) }).await.is_err() {
                return Ok(sent); // The call ended; its status says why.
            }
            report(sent, if digest.is_some() { available } else { 0 });
        }
        if let Some(sha256) = digest {
            let trailer =
                pb::StageTrailer { artifact_sha256: slipway_proto::hex_to_bytes(&sha256), artifact_size: sent };
            let _ = req_tx.send(pb::StageRequest { kind: Some(RequestKind::Trailer(trailer)) }).await;
            return Ok(sent);
        }
        tokio::select! {
            changed = progress.changed() => {
                if changed.is_err() {
                    return Err("packaging stopped without a result".into());
                }
            }
            () = req_tx.closed() => return Ok(sent), // The call ended; its status says why.
        }
    }
}

/// Connect, upload the artifact and wait for the agent to verify and stage it.
async fn stage_host(
    fan: Fanout,
    agent: AgentRecord,
    header: pb::StageHeader,
    upload: Upload,
    total_entries: u64,
    connected: Option<AgentClient>,
) -> (HostResult, Option<AgentClient>) {
    let Fanout { tls, events, clock, timeouts } = fan;
    let mut result = new_host_result(&agent, &header.release_id);
    let name = agent.name.clone();
    let send = |e: HostEvent| {
        let _ = events.send((name.clone(), e));
    };
    send(HostEvent::Connecting);
    let t = Instant::now();
    let connection = match connected {
        Some(c) => Ok(c),
        None => client::connect(tls, &agent, timeouts).await,
    };
    let mut client = match connection {
        Ok(c) => {
            clock.step(&mut result, "connect", t, Ok(agent.addr.clone()));
            c
        }
        Err(e) => {
            clock.step(&mut result, "connect", t, Err(e.clone()));
            send(HostEvent::Failed(e));
            return (result, None);
        }
    };

    let t = Instant::now();
    let total = header.artifact_size;
    let stage_secs = if header.stage_timeout_secs == 0 { 3600 } else { header.stage_timeout_secs };
    let header_hooks_secs =
        header.pre_release.as_ref().map_or(0, |h| h.timeout_secs.saturating_mul(h.commands.len() as u64));
    let result_refused = std::sync::atomic::AtomicBool::new(false);
    let (req_tx, req_rx) = mpsc::channel::<pb::StageRequest>(2);
    let _ = req_tx.send(pb::StageRequest { kind: Some(RequestKind::Header(header)) }).await;
    let upload_events = events.clone();
    let upload_name = agent.name.clone();
    let uploader = tokio::spawn(async move {
        let mut last = Instant::now();
        let report = move |sent: u64, total: u64| {
            if sent == 0 || sent == total || last.elapsed().as_millis() >= 200 {
                last = Instant::now();
                let _ = upload_events.send((upload_name.clone(), HostEvent::Uploading { sent, total }));
            }
        };
        match upload {
            Upload::File { path, .. } => send_file(&path, total, req_tx, report).await,
            Upload::Streamed { file, progress } => send_streamed(file, progress, req_tx, report).await,
        }
    });

    // The agent refusing the target itself (paths, users) is the project's configuration to fix.
    let refused = |s: &tonic::Status| {
        if s.code() == tonic::Code::PermissionDenied {
            result_refused.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        status_text(s)
    };
    // The stage's deadline, the same the agent keeps, plus its pre_release hooks and a call's slack.
    let deadline = std::time::Duration::from_secs(stage_secs.saturating_add(header_hooks_secs)) + timeouts.call;
    let outcome = async {
        let mut stream = client.stage(ReceiverStream::new(req_rx)).await.map_err(|s| refused(&s))?.into_inner();
        loop {
            match stream.message().await {
                Ok(Some(pb::StageEvent { kind: Some(EventKind::Progress(p)) })) => {
                    send(HostEvent::Unpacking { entries: p.entries_written, total: total_entries });
                }
                Ok(Some(pb::StageEvent { kind: Some(EventKind::Staged(s)) })) => return Ok(s),
                Ok(Some(pb::StageEvent { kind: Some(EventKind::Output(o)) })) => {
                    on_hook_event(Some(o), None, &mut result, &events);
                }
                Ok(Some(pb::StageEvent { kind: Some(EventKind::Hook(h)) })) => {
                    on_hook_event(None, Some(h), &mut result, &events);
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err("the agent ended the upload without a result".to_owned()),
                Err(status) => return Err(refused(&status)),
            }
        }
    };
    let outcome = match tokio::time::timeout(deadline, outcome).await {
        Ok(outcome) => outcome,
        Err(_) => {
            uploader.abort();
            Err(format!("the stage did not finish within {}s (rollout.stage_timeout_secs)", deadline.as_secs()))
        }
    };
    let upload = match uploader.await {
        Ok(sent) => sent,
        Err(e) if e.is_cancelled() => Err("the upload was stopped at the stage deadline".to_owned()),
        Err(e) => Err(format!("upload task failed: {e}")),
    };
    match (outcome, upload) {
        (Ok(staged), Ok(sent)) => {
            result.bytes_sent = sent;
            let reused = if staged.reused > 0 { format!(" ({} files reused)", staged.reused) } else { String::new() };
            let detail =
                format!("{} sent, {} entries verified{reused} in {}", bytes(sent), staged.entries, staged.release_path);
            clock.step(&mut result, "stage", t, Ok(detail));
            send(HostEvent::Staged { elapsed_ms: t.elapsed().as_millis() as u64 });
            result.ok = true;
            (result, Some(client))
        }
        // What the controller could not send explains the agent's complaint about it.
        (_, Err(e)) | (Err(e), Ok(_)) => {
            result.refused = result_refused.load(std::sync::atomic::Ordering::Relaxed);
            clock.step(&mut result, "stage", t, Err(e.clone()));
            send(HostEvent::Failed(e));
            (result, None)
        }
    }
}

fn activate_request(settings: &EnvSettings, host: &str, record: &DeployRecord, release: &str) -> pb::ActivateRequest {
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
async fn call_activate(
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
async fn current_on_host(
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
enum Activation {
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
async fn activate_verified(
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

async fn activate_host(
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

fn or_none(s: &str) -> &str {
    if s.is_empty() { "none" } else { s }
}

/// Drain host events into the reporter until every sender is gone.
async fn pump(mut rx: mpsc::UnboundedReceiver<(String, HostEvent)>, reporter: &mut Reporter) {
    while let Some((host, event)) = rx.recv().await {
        reporter.host(&host, event);
    }
}

/// A release id newer than any this project+env has used, so ids stay unique and sortable.
async fn next_release_id(home: &Home, project: &str, env: &str, commit: &str) -> Result<ReleaseId> {
    let last = {
        let store = Store::open(&home.state())?;
        store
            .deploys(Some(project), Some(env), 50)?
            .into_iter()
            .filter(|d| d.kind == DeployKind::Deploy)
            .map(|d| d.release)
            .max()
    };
    loop {
        let id = ReleaseId::new(unix_now(), commit)?;
        if last.as_deref().is_none_or(|l| id.as_str()[..15] > l[..15.min(l.len())]) {
            return Ok(id);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

pub fn repo_url(project: &ProjectRecord, settings: &EnvSettings) -> String {
    let repo = &settings.repo;
    let looks_local = !repo.contains("://") && !repo.contains(':');
    if looks_local && !Path::new(repo).is_absolute() {
        project.source_dir.join(repo).display().to_string()
    } else {
        repo.clone()
    }
}

fn say_packaged(artifact: &Artifact, reporter: &mut Reporter) {
    reporter.say(format!(
        "{} {} entries, {} -> {} tar.zst (sha256 {}){}",
        if artifact.cached { "reusing package:" } else { "packaged" },
        artifact.entries,
        bytes(artifact.file_bytes),
        bytes(artifact.compressed_bytes),
        &artifact.sha256[..12],
        if artifact.cached { String::new() } else { format!(" in {}", millis(artifact.package_ms)) }
    ));
}

fn artifact_summary(artifact: &Artifact) -> ArtifactSummary {
    ArtifactSummary {
        sha256: artifact.sha256.clone(),
        compressed_bytes: artifact.compressed_bytes,
        file_bytes: artifact.file_bytes,
        entries: artifact.entries,
        cached: artifact.cached,
        package_ms: artifact.package_ms,
    }
}

/// The recipe of this deploy's package: commit, excludes, build hooks, overlay.
fn recipe(scope: &Scope, resolved: &git::Resolved) -> Result<Recipe> {
    let settings = &scope.settings;
    let overlay = match &settings.config_dir {
        None => None,
        Some(dir) => {
            let path = scope.project.source_dir.join(dir);
            if !path.is_dir() {
                return Err(CtlError::bad(format!(
                    "config_dir '{dir}' of env '{}' is not a directory on the controller (looked in {}); \
                     create it or fix config_dir in {}",
                    settings.env,
                    path.display(),
                    scope.project.source_file.display()
                )));
            }
            let digest = build::overlay_digest(&path)?;
            Some((path, digest))
        }
    };
    crate::exclude::Excludes::new(&settings.exclude)?;
    Ok(Recipe {
        commit: resolved.commit.clone(),
        commit_time: resolved.commit_time,
        excludes: settings.exclude.clone(),
        pre_deploy: settings.build.pre_deploy.clone(),
        post_deploy: settings.build.post_deploy.clone(),
        build_timeout_secs: settings.build.timeout_secs,
        overlay,
    })
}

/// The package for this deploy: cached, streamed from git, or built in a fresh checkout.
async fn package(
    home: &Home,
    mirror: &Path,
    recipe: &Recipe,
    record: &mut DeployRecord,
    settings: &EnvSettings,
    reporter: &mut Reporter,
    dry_run: bool,
) -> Result<Package> {
    if let Some(found) = artifact::lookup(&home.cache(), recipe) {
        return Ok(Package::packaged(found));
    }
    if !recipe.needs_checkout() {
        if dry_run {
            return artifact::pack_git(&home.cache(), mirror, recipe).await.map(Package::packaged);
        }
        return Ok(Package::from_git(home.cache(), mirror.to_path_buf(), recipe.clone()));
    }
    let work = home.cache().join("work").join(format!(
        "{}-{}-{}",
        settings.project,
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    ));
    let mut env: std::collections::BTreeMap<String, String> = settings.vars.clone();
    for (k, v) in [
        ("PROJECT", settings.project.clone()),
        ("ENV", settings.env.clone()),
        ("DEPLOY_ID", record.id.to_string()),
        ("RELEASE", record.release.clone()),
        ("COMMIT", record.commit.clone()),
        ("REF", record.git_ref.clone()),
        ("DEPLOY_TYPE", "deploy".to_owned()),
        ("BUILD_DIR", work.display().to_string()),
    ] {
        env.insert(format!("SLIPWAY_{k}"), v);
    }
    let built = build::build(mirror, recipe, &work, &env, reporter).await;
    let result = match built {
        Ok(hooks) => {
            record.build = hooks;
            artifact::pack_dir(&home.cache(), &work, recipe).await.map(Package::packaged)
        }
        Err(failure) => {
            record.build = failure.hooks;
            Err(failure.error)
        }
    };
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// `slipctl deploy`.
pub async fn deploy(home: &Home, args: DeployArgs, reporter: &mut Reporter) -> Result<DeployRecord> {
    let started = Instant::now();
    let scope = load_scope(home, &args.project, &args.env, args.hosts.as_deref())?;
    let settings = &scope.settings;
    let timeouts = Timeouts::host(settings.rollout.host_timeout_secs);
    let tls = home.client_tls()?;
    let git_ref = args.git_ref.clone().unwrap_or_else(|| settings.default_ref.clone());
    let url = repo_url(&scope.project, settings);

    let mirror = git::mirror_path(&home.cache(), &settings.project);
    let t = Instant::now();
    reporter.say(format!("fetching {url}"));
    git::fetch(&url, &mirror).await?;
    let resolved = git::resolve(&mirror, &git_ref, &url)?;
    reporter.say(format!(
        "{git_ref} is {} \"{}\" (fetched in {})",
        &resolved.commit[..12],
        resolved.summary,
        millis(t.elapsed().as_millis() as u64)
    ));
    let recipe = recipe(&scope, &resolved)?;
    let release = next_release_id(home, &settings.project, &settings.env, &resolved.commit).await?;
    let mut record = DeployRecord {
        git_ref: git_ref.clone(),
        commit: resolved.commit.clone(),
        release: release.to_string(),
        overlay_sha256: recipe.overlay.as_ref().map(|(_, d)| d.clone()),
        ..DeployRecord::start(DeployKind::Deploy, &settings.project, &settings.env, current_user())
    };
    let _lock = if args.dry_run { None } else { Some(lock_and_number(home, &mut record, reporter)?) };
    let packaged = package(home, &mirror, &recipe, &mut record, settings, reporter, args.dry_run).await;
    let result = match packaged {
        Ok(mut package) => {
            if let Some(artifact) = &package.full {
                say_packaged(artifact, reporter);
            }
            record.artifact = package.full.as_ref().map(artifact_summary);
            if args.dry_run {
                let artifact = package.full.as_ref().expect("a dry run packages the artifact");
                print_plan(&scope, &record, artifact, reporter);
                record.status = DeployStatus::Succeeded;
                record.pid = 0;
                return Ok(record);
            }
            reporter.say(format!(
                "deploy #{} {}/{}: release {release} to {} host(s)",
                record.id,
                settings.project,
                settings.env,
                scope.hosts.len()
            ));
            let cancel = (args.cancel.clone(), args.full);
            let result = run_deploy(&scope, &mut package, &mut record, tls, reporter, timeouts, cancel).await;
            // A full artifact packaged while streaming is in the cache once this returns.
            if let Some(Err(e)) = package.finish().await {
                reporter.say(format!("packaging the full artifact failed: {e}"));
            }
            record.artifact = package.full.as_ref().map(artifact_summary);
            result
        }
        Err(e) if args.dry_run => return Err(e),
        Err(e) => Err(e),
    };
    record.finished_at = Some(unix_now());
    record.duration_ms = started.elapsed().as_millis() as u64;
    if let Err(e) = &result {
        if record.status == DeployStatus::Running {
            record.status = DeployStatus::Failed;
        }
        record.error = Some(e.to_string());
    }
    let store = Store::open(&home.state())?;
    store.put_deploy(&record)?;
    Ok(record)
}

/// `--dry-run`: what would happen, per host, and nothing else.
fn print_plan(scope: &Scope, record: &DeployRecord, artifact: &Artifact, reporter: &mut Reporter) {
    let settings = &scope.settings;
    let t = &settings.target;
    reporter.say(format!(
        "dry run: release {} ({} files, {} -> {}) would go to {} host(s); nothing was sent",
        record.release,
        artifact.manifest.entries.iter().filter(|e| e.kind == slipway_common::archive::EntryKind::File).count(),
        bytes(artifact.file_bytes),
        bytes(artifact.compressed_bytes),
        scope.hosts.len()
    ));
    for h in &scope.hosts {
        reporter.say(format!(
            "  {:<16} {} -> {}",
            h.name,
            t.current_for(&h.name).display(),
            t.deploy_to_for(&h.name).join("releases").join(&record.release).display()
        ));
    }
    let list = |v: &[String]| if v.is_empty() { "none".to_owned() } else { v.join(" && ") };
    reporter.say(format!(
        "  hooks as {}: pre_release: {}; post_release: {}",
        t.user.as_deref().unwrap_or("(agent user)"),
        list(&t.pre_release),
        list(&t.post_release)
    ));
    if !t.shared.is_empty() {
        reporter.say(format!("  shared: {}", t.shared.join(", ")));
    }
    reporter.say(
        format!("  strategy {:?}, keep {} releases", settings.rollout.strategy, settings.keep_releases).to_lowercase(),
    );
}

/// Resolves when the operator cancels (never when there is no cancel channel).
async fn cancelled(cancel: &mut Option<watch::Receiver<bool>>) {
    match cancel {
        Some(rx) => {
            while !*rx.borrow() {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
        None => std::future::pending().await,
    }
}

fn is_cancelled(cancel: &Option<watch::Receiver<bool>>) -> bool {
    cancel.as_ref().is_some_and(|rx| *rx.borrow())
}

/// Run `op` on every host in parallel, pumping their events into the reporter. With a cancel
/// channel, a cancel aborts what is still running (those hosts are missing from the result).
async fn fan_out<T, F, Fut>(
    hosts: &[String],
    reporter: &mut Reporter,
    cancel: &mut Option<watch::Receiver<bool>>,
    op: F,
) -> BTreeMap<String, T>
where
    T: Send + 'static,
    F: Fn(String, Events) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    for host in hosts {
        let fut = op(host.clone(), tx.clone());
        let host = host.clone();
        tasks.spawn(async move { (host, fut.await) });
    }
    drop(tx);
    let collect = async {
        let mut out = BTreeMap::new();
        let mut aborted = false;
        loop {
            tokio::select! {
                joined = tasks.join_next() => match joined {
                    Some(Ok((host, value))) => { out.insert(host, value); }
                    Some(Err(_)) => {}
                    None => break,
                },
                () = cancelled(cancel), if !aborted => {
                    aborted = true;
                    tasks.abort_all();
                }
            }
        }
        out
    };
    let (out, ()) = tokio::join!(collect, pump(rx, reporter));
    out
}

async fn health_host(
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

fn health_spec(settings: &EnvSettings) -> Option<pb::HealthSpec> {
    use slipway_common::config::HealthCheck;
    settings.rollout.health.as_ref().map(|h| match h {
        HealthCheck::Http { url, expect_status, timeout_secs, retries, interval_secs } => pb::HealthSpec {
            http_url: url.clone(),
            expect_status: u32::from(*expect_status),
            command: String::new(),
            timeout_secs: *timeout_secs,
            retries: *retries,
            interval_secs: *interval_secs,
        },
        HealthCheck::Command { command, timeout_secs, retries, interval_secs } => pb::HealthSpec {
            http_url: String::new(),
            expect_status: 0,
            command: command.clone(),
            timeout_secs: *timeout_secs,
            retries: *retries,
            interval_secs: *interval_secs,
        },
    })
}

/// The rollout: the planner decides, this loop carries out its actions and records every step.
async fn run_deploy(
    scope: &Scope,
    package: &mut Package,
    record: &mut DeployRecord,
    tls: Arc<rustls::ClientConfig>,
    reporter: &mut Reporter,
    timeouts: Timeouts,
    (mut cancel, full): (Option<watch::Receiver<bool>>, bool),
) -> Result<()> {
    let settings = &scope.settings;
    let rollout = &settings.rollout;
    let clock = Arc::new(Clock(Instant::now()));
    let names: Vec<String> = scope.hosts.iter().map(|h| h.name.clone()).collect();
    let plan = Plan {
        batches: batches(&names, &settings.canary, rollout.strategy, rollout.batch),
        max_failures: rollout.max_failures,
        auto_rollback: rollout.auto_rollback,
        health_check: rollout.health.is_some(),
    };
    if plan.batches.len() > 1 {
        let sizes: Vec<String> = plan.batches.iter().map(|b| b.len().to_string()).collect();
        reporter.say(format!("rollout in {} batches of {} host(s)", plan.batches.len(), sizes.join(", ")));
    }
    reporter.hosts(names.iter().map(String::as_str));
    let agents: BTreeMap<String, AgentRecord> = scope.hosts.iter().map(|a| (a.name.clone(), a.clone())).collect();
    let mut states: BTreeMap<String, HostState> = names.iter().map(|h| (h.clone(), HostState::Pending)).collect();
    let mut results: BTreeMap<String, HostResult> =
        scope.hosts.iter().map(|a| (a.name.clone(), new_host_result(a, &record.release))).collect();
    let mut clients: BTreeMap<String, AgentClient> = BTreeMap::new();
    let mut manifest_pb: Option<pb::Manifest> = None;
    let fan = |events: Events| Fanout { tls: tls.clone(), events, clock: clock.clone(), timeouts };
    let outcome = loop {
        let stopping = is_cancelled(&cancel);
        match next(&plan, &states, stopping) {
            Action::Done(outcome) => break outcome,
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
                        plan_uploads(&hosts, &agents, settings, package, &fan(planner_events), reporter).await?
                    };
                    for host in &hosts {
                        if !uploads.contains_key(host) {
                            uploads.insert(host.clone(), package.full_upload(reporter)?);
                        }
                    }
                    Ok::<_, CtlError>((uploads, connected))
                }
                .await;
                // Packaging for this batch failed: its hosts failed, and the planner decides what
                // that means for the batches already on the new release.
                let (uploads, connected) = match planned {
                    Ok(planned) => planned,
                    Err(e) => {
                        let t = Instant::now();
                        for host in hosts {
                            let result = results.get_mut(&host).expect("every host has a result");
                            clock.step(result, "package", t, Err(e.to_string()));
                            set(&mut states, &[host], HostState::Failed { activated: false });
                        }
                        continue;
                    }
                };
                let manifest = manifest_pb.get_or_insert_with(|| pb::Manifest::from(package.manifest())).clone();
                let total_entries = package.manifest().entries.len() as u64;
                let staged = fan_out(&hosts, reporter, &mut cancel, |host, events| {
                    let upload = uploads[&host].clone();
                    let (sha256, size, delta) = match &upload {
                        Upload::File { sha256, size, delta, .. } => {
                            (slipway_proto::hex_to_bytes(sha256), *size, *delta)
                        }
                        Upload::Streamed { .. } => (Vec::new(), 0, false),
                    };
                    let header = pb::StageHeader {
                        target: Some(pb_target(settings, &host)),
                        deploy_id: record.id,
                        release_id: record.release.clone(),
                        commit: record.commit.clone(),
                        git_ref: record.git_ref.clone(),
                        generation: record.id,
                        manifest: Some(manifest.clone()),
                        artifact_sha256: sha256,
                        artifact_size: size,
                        hook_context: Some(hook_context(settings, &host, &record.commit, &record.git_ref)),
                        pre_release: Some(hook_spec(&settings.target.pre_release, settings)),
                        post_release: Some(hook_spec(&settings.target.post_release, settings)),
                        shared: settings.target.shared.clone(),
                        delta,
                        reuse_hardlink: settings.reuse == slipway_common::config::ReuseMode::Hardlink,
                        stage_timeout_secs: settings.rollout.stage_timeout_secs,
                    };
                    let connection = connected.get(&host).cloned();
                    stage_host(fan(events), agents[&host].clone(), header, upload, total_entries, connection)
                })
                .await;
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
            Action::Activate(hosts) => {
                let activated = fan_out(&hosts, reporter, &mut None, |host, events| {
                    let request = activate_request(settings, &host, record, &record.release);
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
            }
            Action::HealthCheck(hosts) => {
                let spec = health_spec(settings);
                let checked = fan_out(&hosts, reporter, &mut None, |host, events| {
                    let request = pb::HealthRequest {
                        target: Some(pb_target(settings, &host)),
                        spec: spec.clone(),
                        hook_context: Some(hook_context(settings, &host, &record.commit, &record.git_ref)),
                        generation: record.id,
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
            }
            Action::Abort(hosts) => {
                let aborted = fan_out(&hosts, reporter, &mut None, |host, events| {
                    let request = pb::AbortRequest {
                        target: Some(pb_target(settings, &host)),
                        release_id: record.release.clone(),
                        generation: record.id,
                    };
                    let (client, agent, mut result) =
                        (clients.get(&host).cloned(), agents[&host].clone(), results[&host].clone());
                    let fan = fan(events);
                    async move {
                        let t = Instant::now();
                        let outcome = async {
                            let mut client = match client {
                                Some(c) => c,
                                None => client::connect(fan.tls.clone(), &agent, fan.timeouts).await?,
                            };
                            match tokio::time::timeout(fan.timeouts.call, client.abort(request)).await {
                                Ok(Ok(_)) => Ok("staged release removed".to_owned()),
                                Ok(Err(s)) => Err(status_text(&s)),
                                Err(_) => Err("no answer".to_owned()),
                            }
                        }
                        .await;
                        let ok = outcome.is_ok();
                        if ok {
                            let _ = fan.events.send((result.host.clone(), HostEvent::Aborted));
                        }
                        fan.clock.follow_up(&mut result, "abort", t, outcome);
                        (result, ok)
                    }
                })
                .await;
                for (host, (result, ok)) in aborted {
                    results.insert(host.clone(), result);
                    set(&mut states, &[host], if ok { HostState::Aborted } else { HostState::AbortFailed });
                }
            }
            Action::RollBack(hosts) => {
                reporter.say(format!("rolling back {} host(s) to their previous release", hosts.len()));
                let owned_settings = Arc::new(settings.clone());
                let rolled = fan_out(&hosts, reporter, &mut None, |host, events| {
                    let settings = owned_settings.clone();
                    let mut result = results[&host].clone();
                    let known_previous = result.previous_release.clone();
                    let mut back = record.clone();
                    back.kind = DeployKind::Rollback;
                    let (new_release, target) = (record.release.clone(), pb_target(&settings, &host));
                    let client = clients[&host].clone();
                    let fan = fan(events);
                    async move {
                        let t = Instant::now();
                        let mut client = client;
                        // Where to go back to: what the activation reported, else what the host
                        // itself recorded for its current release (asked now).
                        let previous = if known_previous.is_empty() {
                            match current_on_host(&mut client, Some(target), fan.timeouts).await {
                                Some((current, previous)) if current == new_release => Ok(previous),
                                Some((current, _)) => Err(Some(format!(
                                    "the host is not on the new release (current is {}); nothing to undo",
                                    or_none(&current)
                                ))),
                                None => Err(None),
                            }
                        } else {
                            Ok(known_previous)
                        };
                        let (outcome, state) = match previous {
                            Err(Some(detail)) => (Ok(detail), HostState::RolledBack),
                            Err(None) => (
                                Err("cannot reach the host to roll it back; it may still run the new release"
                                    .to_owned()),
                                HostState::RollbackFailed,
                            ),
                            Ok(previous) if ReleaseId::parse(&previous).is_err() => (
                                Err(format!(
                                    "no previous release to go back to (was {}); it stays on the new one",
                                    or_none(&previous)
                                )),
                                HostState::NoRollbackTarget,
                            ),
                            Ok(previous) => {
                                let request = activate_request(&settings, &result.host, &back, &previous);
                                let outcome =
                                    activate_verified(&mut client, request, &mut result, &fan.events, fan.timeouts)
                                        .await
                                        .and_then(|a| match a {
                                            Activation::Replied(_) => Ok(format!("current -> {previous}")),
                                            Activation::FlippedUnconfirmed { why, .. } => Ok(format!(
                                                "current -> {previous} (confirmed by asking the host after: {why})"
                                            )),
                                            Activation::Unknown(why) => Err(why),
                                        });
                                if outcome.is_ok() {
                                    let _ = fan.events.send((
                                        result.host.clone(),
                                        HostEvent::Activated { previous: previous.clone(), elapsed_ms: 0 },
                                    ));
                                }
                                let state =
                                    if outcome.is_ok() { HostState::RolledBack } else { HostState::RollbackFailed };
                                (outcome, state)
                            }
                        };
                        if state == HostState::RolledBack {
                            result.activated = false;
                        }
                        fan.clock.follow_up(&mut result, "rollback", t, outcome);
                        (result, state)
                    }
                })
                .await;
                for (host, (result, state)) in rolled {
                    results.insert(host.clone(), result);
                    set(&mut states, &[host], state);
                }
            }
        }
    };
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
    let refused = n_failed > 0 && record.hosts.iter().filter(|h| h.error.is_some()).all(|h| h.refused);
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
pub async fn rollback(home: &Home, args: RollbackArgs, reporter: &mut Reporter) -> Result<DeployRecord> {
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
    let (tx, rx) = mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    for ((agent, client), (_, target)) in clients.into_iter().zip(&targets) {
        let result = new_host_result(&agent, target);
        let request = activate_request(settings, &agent.name, &record, target);
        let fan = Fanout { tls: tls.clone(), events: tx.clone(), clock: clock.clone(), timeouts };
        tasks.spawn(activate_host(fan, client, request, result));
    }
    drop(tx);
    let collect = async {
        let mut out = Vec::new();
        while let Some(r) = tasks.join_next().await {
            if let Ok(r) = r {
                out.push(r);
            }
        }
        out
    };
    let (hosts, ()) = tokio::join!(collect, pump(rx, reporter));
    reporter.finish();
    record.hosts = hosts;
    record.hosts.sort_by(|a, b| a.host.cmp(&b.host));
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
