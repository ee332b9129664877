//! Controller state in sled (`<home>/state`): agents, projects, deploys and the deploy counter.
//! sled allows one process at a time, so the store is opened for short transactions only (never
//! across network work) and a second `slipctl` waits briefly, then gets a clear message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use slipway_common::ReleaseId;

use crate::error::{CtlError, Result};
use crate::state::backend::{Backend, Sled, pinned_for, store_err};
use std::sync::Arc;

const OPEN_WAIT: Duration = Duration::from_secs(15);

/// How long to wait for another `slipctl` to release the state (`SLIPWAY_STATE_WAIT_SECS`).
fn open_wait() -> Duration {
    std::env::var("SLIPWAY_STATE_WAIT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(OPEN_WAIT)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub name: String,
    pub addr: String,
    pub labels: BTreeMap<String, String>,
    pub added_at: i64,
    /// The certificates it may present, eviction, joins and renewals (`state::joins`).
    #[serde(default)]
    pub trust: crate::state::joins::AgentTrust,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectRecord {
    pub name: String,
    /// The project file's directory: `config_dir` and relative repo paths resolve against it.
    pub source_dir: PathBuf,
    pub source_file: PathBuf,
    pub text: String,
    pub applied_at: i64,
    /// The revision this text is (`state::revisions`); 0: applied before revisions were kept.
    #[serde(default)]
    pub revision: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployKind {
    Deploy,
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployStatus {
    Running,
    Succeeded,
    Failed,
    /// The rollout stopped and every activated host went back to its previous release.
    RolledBack,
    /// Stopped by the operator (Ctrl-C, SIGTERM).
    Cancelled,
    /// Finished, with failed hosts within `max_failures`.
    Partial,
    /// The controller died while it ran (decided when read: the recorded pid is gone).
    Interrupted,
    /// The rollout stopped and a cleanup (abort or rollback) failed on some host: the fleet is
    /// not where the outcome would say; `show` tells which host is where.
    Incomplete,
    /// `--dry-run`: what would be done; nothing was sent or recorded.
    Planned,
    /// Stopped after its canary batch, holding the lock, until `slipctl promote` or `abort`
    /// (whether or not the process that waited is still there).
    Paused,
}

/// What a person decided for a paused deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Promote,
    Abort,
}

impl DeployStatus {
    pub fn word(self) -> &'static str {
        match self {
            DeployStatus::Running => "running",
            DeployStatus::Succeeded => "succeeded",
            DeployStatus::Failed => "failed",
            DeployStatus::RolledBack => "rolled_back",
            DeployStatus::Cancelled => "cancelled",
            DeployStatus::Partial => "partial",
            DeployStatus::Interrupted => "interrupted",
            DeployStatus::Incomplete => "incomplete",
            DeployStatus::Planned => "planned",
            DeployStatus::Paused => "paused",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    /// Milliseconds since the deploy started.
    pub started_ms: u64,
    pub elapsed_ms: u64,
    pub ok: bool,
    pub detail: String,
}

/// One hook run, on the controller (build) or a host (release), as history keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookRecord {
    pub stage: String,
    pub command: String,
    /// Exit status; -1 when killed (timeout or signal).
    pub exit_code: i32,
    pub timed_out: bool,
    pub elapsed_ms: u64,
    /// The first and last bytes of stdout+stderr, and how many bytes between them were dropped.
    pub output_head: String,
    pub output_tail: String,
    pub output_dropped: u64,
    /// The host step it ran in (stage, activate, rollback); empty for build hooks.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub step: String,
}

impl HookRecord {
    /// A build hook's record from how its process ended.
    pub fn from_shell(stage: &str, command: &str, r: &slipway_common::process::ShellResult) -> Self {
        HookRecord {
            stage: stage.into(),
            command: command.into(),
            exit_code: r.exit_code,
            timed_out: r.timed_out,
            elapsed_ms: r.elapsed_ms,
            output_head: String::from_utf8_lossy(&r.head).into_owned(),
            output_tail: String::from_utf8_lossy(&r.tail).into_owned(),
            output_dropped: r.dropped,
            step: String::new(),
        }
    }
}

impl From<slipway_proto::pb::HookResult> for HookRecord {
    fn from(r: slipway_proto::pb::HookResult) -> Self {
        HookRecord {
            stage: r.stage,
            command: r.command,
            exit_code: r.exit_code,
            timed_out: r.timed_out,
            elapsed_ms: r.elapsed_ms,
            output_head: String::from_utf8_lossy(&r.output_head).into_owned(),
            output_tail: String::from_utf8_lossy(&r.output_tail).into_owned(),
            output_dropped: r.output_dropped,
            step: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostResult {
    pub host: String,
    pub addr: String,
    pub ok: bool,
    pub activated: bool,
    /// What `current` was before this operation's flip (none: the host had no release).
    #[serde(default, with = "opt_release")]
    pub previous_release: Option<ReleaseId>,
    /// The release this operation puts on the host (none: a rollback with nothing to go to).
    #[serde(default, with = "opt_release")]
    pub release: Option<ReleaseId>,
    /// Archive bytes uploaded to this host (a delta is much smaller than the full artifact).
    #[serde(default)]
    pub bytes_sent: u64,
    pub steps: Vec<Step>,
    #[serde(default)]
    pub hooks: Vec<HookRecord>,
    pub error: Option<String>,
    /// The agent refused the target itself (paths outside its rules, a refused user): bad input.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refused: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactSummary {
    pub sha256: String,
    pub compressed_bytes: u64,
    pub file_bytes: u64,
    pub entries: u64,
    pub cached: bool,
    pub package_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployRecord {
    pub id: u64,
    pub kind: DeployKind,
    pub project: String,
    pub env: String,
    pub git_ref: String,
    pub commit: String,
    /// The release shipped (a deploy, once its commit is known) or restored (a rollback to one
    /// release on every host); none before then or when hosts went back to different ones.
    #[serde(default, with = "opt_release")]
    pub release: Option<ReleaseId>,
    pub status: DeployStatus,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// Wall time from the start of the operation (fetch and packaging included) to its end.
    #[serde(default)]
    pub duration_ms: u64,
    pub user: String,
    pub pid: u32,
    pub artifact: Option<ArtifactSummary>,
    /// Build hooks run on the controller.
    #[serde(default)]
    pub build: Vec<HookRecord>,
    /// Digest of the env's config_dir overlay, when it has one: the env layer put on the build.
    #[serde(default)]
    pub overlay_sha256: Option<String>,
    /// The build this release is made of, and where it came from; none before a build is known
    /// (and in records older than builds kept apart from the env layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built: Option<BuildInfo>,
    /// A promotion: the deploy whose build this one ships.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_from: Option<u64>,
    /// Started outside the env's windows or in a freeze, by an admin: who, why, past what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overridden: Option<crate::engine::policy::Overridden>,
    /// The revision of the project file the operation ran with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_revision: Option<u64>,
    pub hosts: Vec<HostResult>,
    pub error: Option<String>,
    /// `--dry-run` only (never stored): what the deploy would do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<DryRunPlan>,
    /// Paused: since when (unix seconds), and what `promote`/`abort` asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// This process's number for the operation (its lock's), never stored.
    #[serde(skip)]
    pub op: u64,
}

/// A build: the env-independent part of a release (DESIGN.md "What ships"), with its provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildInfo {
    /// The build's manifest digest (hex): the same in every env it ships to.
    pub sha256: String,
    pub commit: String,
    /// The commit's time (a pushed artifact's: when it was pushed): the files' mtime.
    #[serde(default)]
    pub commit_time: i64,
    /// The deploy that built it, and that deploy's env; none for a pushed artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// A build pushed by CI (`slipctl artifact push`): its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// The recipe it was built with: where it is in the cache, or how to pack it from git again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_deploy: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_deploy: Vec<String>,
    /// An svn build: the repository it was exported from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub svn: Option<String>,
}

impl BuildInfo {
    /// `built by deploy #12 of test from commit abcdef123456` (or `pushed as 1.4.2 …`).
    pub fn provenance(&self) -> String {
        let commit = if self.commit.is_empty() {
            String::new()
        } else {
            format!(" from commit {}", &self.commit[..self.commit.len().min(12)])
        };
        match (&self.artifact, self.deploy, &self.env) {
            (Some(name), _, _) => format!("pushed as artifact {name}{commit}"),
            (None, Some(n), Some(env)) => format!("built by deploy #{n} of {env}{commit}"),
            _ => format!("built{commit}"),
        }
    }
}

/// What a `--dry-run` found: the rollout order and, per host, where the release would go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DryRunPlan {
    /// Hosts in rollout order, batch by batch (canary first).
    pub batches: Vec<Vec<String>>,
    pub hosts: Vec<PlannedHost>,
    /// The user hooks run as (none: the agent's own).
    pub user: Option<String>,
    pub pre_release: Vec<String>,
    pub post_release: Vec<String>,
    pub shared: Vec<String>,
    pub keep_releases: u32,
    pub files: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedHost {
    pub host: String,
    pub addr: String,
    /// The `current` symlink on the host, and the directory the release would be unpacked to.
    pub current: String,
    pub release_path: String,
}

impl DeployRecord {
    /// Whether the operation failed only because the agents refused the target itself (paths
    /// outside their rules, a refused hook user), with no host activated: the project's
    /// configuration is what needs fixing, like any other bad input (exit 2).
    pub fn refused_by_agents(&self) -> bool {
        let mut failed = self.hosts.iter().filter(|h| h.error.is_some()).peekable();
        failed.peek().is_some() && failed.all(|h| h.refused) && !self.hosts.iter().any(|h| h.activated)
    }

    /// A new operation, `running` from now, by this user and process; numbered when it takes
    /// the lock.
    pub fn start(kind: DeployKind, project: &str, env: &str, user: String) -> Self {
        DeployRecord {
            id: 0,
            kind,
            project: project.to_owned(),
            env: env.to_owned(),
            git_ref: String::new(),
            commit: String::new(),
            release: None,
            status: DeployStatus::Running,
            started_at: slipway_common::time::unix_now(),
            finished_at: None,
            duration_ms: 0,
            user,
            pid: std::process::id(),
            artifact: None,
            build: Vec::new(),
            overlay_sha256: None,
            built: None,
            promoted_from: None,
            overridden: None,
            project_revision: None,
            hosts: Vec::new(),
            error: None,
            plan: None,
            paused_at: None,
            decision: None,
            op: next_op(),
        }
    }

    /// `Running` with a dead controller process reads as `Interrupted`.
    pub fn effective_status(&self) -> DeployStatus {
        // Sharing a database, the leader runs every deploy (and takes over those of a leader
        // that died): a process id of another machine says nothing.
        if crate::state::leader::role() != crate::state::leader::Role::Alone {
            return self.status;
        }
        if self.status == DeployStatus::Running && !process_alive(self.pid) {
            DeployStatus::Interrupted
        } else {
            self.status
        }
    }
}

pub fn process_alive(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// This machine's name, for lock holders.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default()
}

/// Who holds the one-deploy-at-a-time lock of a project+env.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    pub project: String,
    pub env: String,
    pub deploy_id: u64,
    pub user: String,
    pub host: String,
    pub pid: u32,
    pub since: i64,
    /// Which operation of that process holds it (a server runs many at once).
    #[serde(default)]
    pub op: u64,
}

/// A number for a new operation, unique in this process.
pub fn next_op() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Operations of this process that hold a lock now.
fn live_ops() -> &'static std::sync::Mutex<std::collections::HashSet<u64>> {
    static LIVE: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<u64>>> = std::sync::OnceLock::new();
    LIVE.get_or_init(Default::default)
}

/// Operation `op` of this process took a lock.
pub fn op_started(op: u64) {
    live_ops().lock().expect("live ops").insert(op);
}

/// Operation `op` of this process is over (its lock released, or left behind when the state
/// could not be written).
pub fn op_ended(op: u64) {
    live_ops().lock().expect("live ops").remove(&op);
}

impl LockRecord {
    /// A holder on this machine whose process is gone, or an operation of this very process
    /// that is over (it could not release the lock: the state was unreachable): its lock can
    /// be taken over.
    pub fn holder_dead(&self) -> bool {
        let ended_here = self.pid == std::process::id() && !live_ops().lock().expect("live ops").contains(&self.op);
        self.host == hostname() && (!process_alive(self.pid) || ended_here)
    }

    /// `deploy #N by root@vm (pid P) since …`: the host is named once, whether the user names
    /// it (`root@vm`, a local slipctl) or not (`dev` through the server: `dev on vm`).
    pub fn describe(&self) -> String {
        let user = self.user.split(' ').next().unwrap_or("");
        let who = if user.ends_with(&format!("@{}", self.host)) {
            self.user.clone()
        } else {
            format!("{} on {}", self.user, self.host)
        };
        format!(
            "deploy #{} by {who} (pid {}) since {}",
            self.deploy_id,
            self.pid,
            slipway_common::time::format_utc(self.since)
        )
    }
}

/// Open sled at `dir`, waiting while another process holds it.
fn open_sled(dir: &Path) -> Result<sled::Db> {
    crate::state::home::private_dir(dir)?;
    let started = Instant::now();
    let wait = open_wait();
    loop {
        match sled::Config::new().path(dir).open() {
            Ok(db) => {
                // Vars, hook output and history are for the controller's user alone.
                crate::state::home::restrict_tree(dir);
                return Ok(db);
            }
            Err(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock") => {
                if started.elapsed() > wait {
                    return Err(CtlError::failed(format!(
                        "controller state {} is held by another slipctl process (waited {}s); \
                         let it finish, then run the command again",
                        dir.display(),
                        wait.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(store_err(format!("cannot open {}: {e}", dir.display()))),
        }
    }
}

#[derive(Clone)]
pub struct Store {
    db: Arc<dyn Backend>,
}

impl Store {
    /// Open the state, waiting (15 s by default) while another `slipctl` holds it. In a process
    /// that pinned it (the server), the pinned handle.
    pub fn open(dir: &Path) -> Result<Store> {
        if let Some(db) = pinned_for(dir) {
            return Ok(Store { db });
        }
        // `[state] url` in the home's config.toml: PostgreSQL instead of sled.
        if let Some(db) = crate::state::home::database_of(dir)? {
            let store = Store { db: crate::state::postgres::Postgres::open(&db)? };
            // A command line works in the leader's epoch (once per process).
            static ADOPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if !ADOPTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
                crate::state::leader::adopt_current_epoch(&store)?;
                // The CA is the database's (or becomes it), before anything talks to an agent.
                if let Some(home) = dir.parent()
                    && home.join("pki").join("ca.key").exists()
                {
                    crate::state::shared_pki::sync_home(home, &store)?;
                }
            }
            return Ok(store);
        }
        Ok(Store { db: Arc::new(Sled::new(open_sled(dir)?)) })
    }

    /// The sled database at `dir` whatever the home's config says (`slipctl state migrate`).
    pub fn open_sled(dir: &Path) -> Result<Store> {
        Ok(Store { db: Arc::new(Sled::new(open_sled(dir)?)) })
    }

    /// The PostgreSQL database `db` (`slipctl state migrate`).
    pub fn open_postgres(db: &crate::state::home::Database) -> Result<Store> {
        Ok(Store { db: crate::state::postgres::Postgres::open(db)? })
    }

    /// Open the state and keep it open in this process until [`Store::unpin`] (the server).
    pub fn pin(dir: &Path) -> Result<Store> {
        let store = Store::open(dir)?;
        crate::state::backend::pin(dir, store.db.clone());
        Ok(store)
    }

    pub fn unpin(dir: &Path) {
        crate::state::backend::unpin(dir);
    }

    pub(crate) fn backend(&self) -> &dyn Backend {
        &*self.db
    }

    pub(crate) fn get<T: DeserializeOwned>(&self, tree: &str, key: &[u8]) -> Result<Option<T>> {
        match self.db.get(tree, key)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(store_err),
        }
    }

    pub(crate) fn put<T: Serialize>(&self, tree: &str, key: &[u8], value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(store_err)?;
        self.db.put(tree, key, &bytes)?;
        self.db.flush()
    }

    pub(crate) fn remove(&self, tree: &str, key: &[u8]) -> Result<bool> {
        let existed = self.db.remove(tree, key)?.is_some();
        self.db.flush()?;
        Ok(existed)
    }

    pub(crate) fn all<T: DeserializeOwned>(&self, tree: &str) -> Result<Vec<T>> {
        self.db
            .scan(tree, b"", false)?
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v).map_err(store_err))
            .collect()
    }

    pub fn agent(&self, name: &str) -> Result<Option<AgentRecord>> {
        self.get("agents", name.as_bytes())
    }
    pub fn put_agent(&self, agent: &AgentRecord) -> Result<()> {
        self.put("agents", agent.name.as_bytes(), agent)
    }
    pub fn remove_agent(&self, name: &str) -> Result<bool> {
        self.remove("agents", name.as_bytes())
    }
    pub fn agents(&self) -> Result<Vec<AgentRecord>> {
        self.all("agents")
    }

    pub fn project(&self, name: &str) -> Result<Option<ProjectRecord>> {
        self.get("projects", name.as_bytes())
    }
    pub fn put_project(&self, project: &ProjectRecord) -> Result<()> {
        self.put("projects", project.name.as_bytes(), project)
    }
    pub fn remove_project(&self, name: &str) -> Result<bool> {
        self.remove("projects", name.as_bytes())
    }
    pub fn projects(&self) -> Result<Vec<ProjectRecord>> {
        self.all("projects")
    }

    /// The next deploy number: 1, 2, 3…
    pub fn next_deploy_id(&self) -> Result<u64> {
        let next = self.db.increment("next_deploy_id")?;
        self.db.flush()?;
        Ok(next)
    }

    /// Take the lock of `lock.project`/`lock.env`, or say who holds it. A lock whose holder
    /// died on this machine is taken over (returned as the second value).
    pub fn acquire_lock(&self, lock: &LockRecord) -> Result<std::result::Result<Option<LockRecord>, LockRecord>> {
        let key = format!("{}/{}", lock.project, lock.env);
        let new = serde_json::to_vec(lock).map_err(store_err)?;
        loop {
            let old = self.db.get("locks", key.as_bytes())?;
            let holder: Option<LockRecord> = match &old {
                Some(bytes) => Some(serde_json::from_slice(bytes).map_err(store_err)?),
                None => None,
            };
            let ours = holder.as_ref().is_some_and(|h| h.pid == lock.pid && h.host == lock.host && h.op == lock.op);
            // A paused deploy keeps its lock whether or not its process is there; only that
            // deploy itself (carried on by `promote`/`abort`) takes it over.
            let paused_other =
                |h: &LockRecord| -> Result<bool> { Ok(h.deploy_id != lock.deploy_id && self.held_by_paused(h)?) };
            // The leader carries on the deploys of a leader that died, with their locks.
            let taken_over = holder.as_ref().is_some_and(|h| {
                h.deploy_id == lock.deploy_id && crate::state::leader::role() == crate::state::leader::Role::Leader
            });
            if let Some(h) = &holder
                && !ours
                && !taken_over
                && (!h.holder_dead() || paused_other(h)?)
            {
                return Ok(Err(h.clone()));
            }
            if self.db.compare_and_swap("locks", key.as_bytes(), old.as_deref(), Some(&new))? {
                self.db.flush()?;
                return Ok(Ok(holder.filter(|_| !ours)));
            }
        }
    }

    /// Release the lock if `pid` still holds it.
    pub fn release_lock(&self, project: &str, env: &str, pid: u32, op: u64) -> Result<()> {
        let key = format!("{project}/{env}");
        if let Some(bytes) = self.db.get("locks", key.as_bytes())? {
            let holder: LockRecord = serde_json::from_slice(&bytes).map_err(store_err)?;
            if holder.pid == pid && holder.op == op && holder.host == hostname() {
                self.db.compare_and_swap("locks", key.as_bytes(), Some(&bytes), None)?;
                self.db.flush()?;
            }
        }
        Ok(())
    }

    /// Remove a lock whoever holds it (`slipctl unlock`).
    /// Whether `lock` is held by a deploy paused after its canary (it keeps the lock whether or
    /// not its process lives).
    pub fn held_by_paused(&self, lock: &LockRecord) -> Result<bool> {
        Ok(self.deploy(lock.deploy_id)?.is_some_and(|d| d.status == DeployStatus::Paused))
    }

    /// Deploy `id`, which a leader that is gone left running (a new leader carries it on).
    pub fn running_deploy(&self, id: u64) -> Result<DeployRecord> {
        let record = self.deploy(id)?.ok_or_else(|| CtlError::not_found(format!("unknown deploy #{id}")))?;
        if record.status != DeployStatus::Running {
            return Err(CtlError::failed(format!("deploy #{id} is not running (it is {})", record.status.word())));
        }
        Ok(record)
    }

    /// Deploy `id`, which must be paused after its canary (bad input naming it otherwise).
    pub fn paused_deploy(&self, id: u64) -> Result<DeployRecord> {
        let record = self
            .deploy(id)?
            .ok_or_else(|| CtlError::not_found(format!("unknown deploy #{id}")).fix("`slipctl history` lists them"))?;
        if record.status != DeployStatus::Paused {
            return Err(CtlError::bad(format!(
                "deploy #{id} is not paused (it is {})",
                record.effective_status().word()
            ))
            .fix("promote and abort are for a deploy paused after its canary"));
        }
        Ok(record)
    }

    /// Record a person's decision on paused deploy `id` (only that field changes, so the
    /// process that waits keeps its own record); the record as it is now.
    pub fn decide(&self, id: u64, decision: Decision) -> Result<DeployRecord> {
        let mut record = self.paused_deploy(id)?;
        record.decision = Some(decision);
        self.put_deploy(&record)?;
        Ok(record)
    }

    /// Who holds the lock of project+env, if anyone.
    pub fn lock(&self, project: &str, env: &str) -> Result<Option<LockRecord>> {
        self.get("locks", format!("{project}/{env}").as_bytes())
    }

    pub fn remove_lock(&self, project: &str, env: &str) -> Result<Option<LockRecord>> {
        let old = self.db.remove("locks", format!("{project}/{env}").as_bytes())?;
        self.db.flush()?;
        old.map(|b| serde_json::from_slice(&b).map_err(store_err)).transpose()
    }

    pub fn put_deploy(&self, deploy: &DeployRecord) -> Result<()> {
        self.put("deploys", &deploy.id.to_be_bytes(), deploy)?;
        crate::state::journal::changed();
        Ok(())
    }
    pub fn deploy(&self, id: u64) -> Result<Option<DeployRecord>> {
        self.get("deploys", &id.to_be_bytes())
    }
    /// Deploys newest first, filtered, at most `limit`.
    pub fn deploys(&self, project: Option<&str>, env: Option<&str>, limit: usize) -> Result<Vec<DeployRecord>> {
        self.deploys_where(limit, |d| project.is_none_or(|p| p == d.project) && env.is_none_or(|e| e == d.env))
    }

    /// The newest `limit` deploys that `keep` accepts, newest first (records past the last one
    /// needed are not read).
    pub fn deploys_where(&self, limit: usize, keep: impl Fn(&DeployRecord) -> bool) -> Result<Vec<DeployRecord>> {
        let mut out = Vec::new();
        for (_, v) in self.db.scan("deploys", b"", true)? {
            if out.len() >= limit {
                break;
            }
            let d: DeployRecord = serde_json::from_slice(&v).map_err(store_err)?;
            if keep(&d) {
                out.push(d);
            }
        }
        Ok(out)
    }
}

impl Store {
    /// The newest deploy that `keep` accepts among the newest `scan` operations.
    pub fn deploys_scanning(&self, scan: usize, keep: impl Fn(&DeployRecord) -> bool) -> Result<Option<DeployRecord>> {
        for (_, v) in self.db.scan("deploys", b"", true)?.into_iter().take(scan) {
            let d: DeployRecord = serde_json::from_slice(&v).map_err(store_err)?;
            if keep(&d) {
                return Ok(Some(d));
            }
        }
        Ok(None)
    }
}

/// A release id kept as its string, none as `null`; records written before the type read `""`
/// as none.
mod opt_release {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use slipway_common::ReleaseId;

    pub fn serialize<S: Serializer>(id: &Option<ReleaseId>, s: S) -> Result<S::Ok, S::Error> {
        id.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ReleaseId>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => ReleaseId::parse(&s).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_is_dense_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(s.next_deploy_id().unwrap(), 1);
            assert_eq!(s.next_deploy_id().unwrap(), 2);
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.next_deploy_id().unwrap(), 3);
    }

    #[test]
    fn records_from_before_typed_releases_read_empty_as_none() {
        let old = serde_json::json!({
            "host": "web-1", "addr": "127.0.0.1:1", "ok": true, "activated": true,
            "previous_release": "", "release": "20261201-101010-abcdef0", "steps": [], "error": null
        });
        let h: HostResult = serde_json::from_value(old).unwrap();
        assert_eq!(h.previous_release, None);
        assert_eq!(h.release.as_ref().map(ReleaseId::as_str), Some("20261201-101010-abcdef0"));
        let again: HostResult = serde_json::from_value(serde_json::to_value(&h).unwrap()).unwrap();
        assert_eq!(again, h);
        assert_eq!(serde_json::to_value(&h).unwrap()["previous_release"], serde_json::Value::Null);
        let bad = serde_json::json!({
            "host": "web-1", "addr": "a", "ok": true, "activated": true,
            "previous_release": "../etc", "release": "", "steps": [], "error": null
        });
        assert!(serde_json::from_value::<HostResult>(bad).is_err(), "a release id that is not one is refused");
    }
}
