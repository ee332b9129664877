//! Config files: the agent's `agent.toml` and the project file. Both are parsed with
//! `deny_unknown_fields` and validated into typed values before any I/O happens.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::names::{validate_agent_name, validate_name};
use crate::{Error, Result};

mod agent;
mod drain;
pub mod server;
pub mod windows;
pub use agent::*;
pub use drain::*;

/// Names a hook's environment may take from the project's `vars`: letters, digits and `_`, not
/// starting with a digit, and none that Slipway sets itself or that change how programs load.
pub fn check_var_key(key: &str) -> std::result::Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !key.starts_with(|c: char| c.is_ascii_digit());
    let shown = crate::archive::clip(key, 64);
    if !ok || key.starts_with("SLIPWAY_") {
        return Err(format!("vars.{shown}: use letters, digits and '_' (not starting with a digit or SLIPWAY_)"));
    }
    const RESERVED: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "SHELL", "IFS", "ENV", "BASH_ENV"];
    if RESERVED.contains(&key) || key.starts_with("LD_") {
        return Err(format!(
            "vars.{shown}: slipd sets {shown} itself or it changes how programs run; pick another name"
        ));
    }
    Ok(())
}

/// An absolute path with no `.`/`..` components: what every on-host path must be.
pub fn check_clean_absolute(path: &Path) -> std::result::Result<(), String> {
    if !path.is_absolute() {
        return Err(format!("'{}' must be an absolute path", path.display()));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err(format!("'{}' must not contain '.' or '..'", path.display()));
    }
    Ok(())
}

fn toml_message(e: &toml::de::Error) -> String {
    // toml's Display spans several lines with a caret excerpt; keep it, indented for readability.
    e.to_string().trim_end().replace('\n', "\n  ")
}

// ---------------------------------------------------------------------------------------------
// Project file

/// Fields that both the project's top level and every `[env.X]` table may set.
macro_rules! settings_struct {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($extra:tt)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        $vis struct $name {
            $($extra)*
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub repo: Option<String>,
            /// `git` (the default) or `svn`.
            #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
            pub repo_type: Option<RepoType>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub default_ref: Option<String>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub keep_releases: Option<u32>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub exclude: Option<Vec<String>>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub vars: Option<BTreeMap<String, String>>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub build: Option<BuildFile>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub target: Option<TargetFile>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub rollout: Option<RolloutFile>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub hosts: Option<Vec<String>>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub canary: Option<Vec<String>>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub config_dir: Option<String>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub reuse: Option<ReuseMode>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub approval: Option<server::ApprovalFile>,
            /// When deploys may start: `["Mon-Thu 10:00-16:00 Asia/Shanghai"]` (none: always).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub windows: Option<Vec<String>>,
            /// A host that joins (or comes back) and matches `hosts` gets the env's current
            /// release, as a deploy by `join:<name>`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub catch_up: Option<bool>,
        }
    };
}

settings_struct! {
    /// The project file as written (`slipctl project apply -f FILE`).
    pub struct ProjectFile {
        pub name: String,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub env: BTreeMap<String, EnvFile>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub webhook: Vec<server::WebhookRule>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub notify: Vec<server::NotifyFile>,
    }
}

settings_struct! {
    /// One `[env.X]` table: overrides any key of the project.
    pub struct EnvFile {
        /// This env takes only builds that ran in that env first (a deploy there succeeded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub promote_from: Option<String>,
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildFile {
    pub pre_deploy: Option<Vec<String>>,
    pub post_deploy: Option<Vec<String>>,
    pub timeout_secs: Option<u64>,
    /// Paths kept between builds of the project: inside the checkout (`node_modules`) or the
    /// build's home (`~/.m2/repository`).
    pub cache: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetFile {
    pub user: Option<String>,
    pub deploy_to: Option<String>,
    pub current: Option<String>,
    pub shared: Option<Vec<String>>,
    pub pre_release: Option<Vec<String>>,
    pub post_release: Option<Vec<String>>,
    pub hook_timeout_secs: Option<u64>,
    /// Which release hooks a rollback runs: `["post_release"]` unless set.
    pub rollback_hooks: Option<Vec<HookStage>>,
    /// Lines run once per deploy on one host (the first canary, or `migrate_host`), in the new
    /// release, after every host staged and before any flip (database migrations).
    pub migrate: Option<Vec<String>>,
    pub migrate_host: Option<String>,
}

/// A release hook stage, as `rollback_hooks` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookStage {
    PreRelease,
    PostRelease,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutFile {
    pub strategy: Option<Strategy>,
    pub batch: Option<BatchSize>,
    pub delay_secs: Option<u64>,
    pub max_failures: Option<u32>,
    pub auto_rollback: Option<bool>,
    pub health: Option<HealthFile>,
    /// How long a host may stay silent (connect, calls, HTTP/2 keepalive) before it counts as failed.
    pub host_timeout_secs: Option<u64>,
    /// How long one host's stage (upload, unpack, verify, `pre_release` aside) may take.
    pub stage_timeout_secs: Option<u64>,
    /// Take each host out of its load balancer around its flip.
    pub drain: Option<DrainFile>,
    /// Stop after the canary batch until a person says `slipctl promote` (or `abort`).
    pub canary_pause: Option<bool>,
    /// Keep the canary out of the balancer while paused (to test it against production's
    /// interfaces without serving users).
    pub canary_keep_drained: Option<bool>,
    /// A pause longer than this aborts the deploy.
    pub canary_pause_timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    pub http: Option<String>,
    pub command: Option<String>,
    pub expect_status: Option<u16>,
    pub timeout_secs: Option<u64>,
    pub retries: Option<u32>,
    pub interval_secs: Option<u64>,
}

/// Where a project's tree comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RepoType {
    #[default]
    Git,
    /// Subversion: refs are `trunk`, `branches/X`, `tags/Y`, or a revision `rNNN` (of the
    /// default ref's path), optionally `PATH@rNNN`.
    Svn,
}

/// How a delta deploy puts unchanged files into the new release.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReuseMode {
    /// Copy (a reflink where the filesystem can): releases never share a writable file.
    #[default]
    Copy,
    /// Hard-link; every file of the project's releases is then read-only and agent-owned.
    Hardlink,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Parallel,
    Serial,
    Batch,
}

/// `batch = 2` (hosts) or `batch = "25%"` (of the selected hosts, rounded up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BatchRepr", into = "BatchRepr")]
pub enum BatchSize {
    Hosts(u32),
    Percent(u32),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum BatchRepr {
    Int(i64),
    Text(String),
}

impl TryFrom<BatchRepr> for BatchSize {
    type Error = String;
    fn try_from(value: BatchRepr) -> std::result::Result<Self, String> {
        let bad = || "batch must be a host count like 2 or a percentage like \"25%\"".to_string();
        match value {
            BatchRepr::Int(n) if n >= 1 => u32::try_from(n).map(BatchSize::Hosts).map_err(|_| bad()),
            BatchRepr::Int(_) => Err(bad()),
            BatchRepr::Text(s) => {
                let (digits, percent) = match s.strip_suffix('%') {
                    Some(d) => (d, true),
                    None => (s.as_str(), false),
                };
                let n: u32 = digits.trim().parse().map_err(|_| bad())?;
                match (percent, n) {
                    (true, 1..=100) => Ok(BatchSize::Percent(n)),
                    (false, 1..) => Ok(BatchSize::Hosts(n)),
                    _ => Err(bad()),
                }
            }
        }
    }
}

impl From<BatchSize> for BatchRepr {
    fn from(value: BatchSize) -> Self {
        match value {
            BatchSize::Hosts(n) => BatchRepr::Int(i64::from(n)),
            BatchSize::Percent(p) => BatchRepr::Text(format!("{p}%")),
        }
    }
}

/// How to pick hosts: a registered name, or every agent with a label `key=value`. Shown (and
/// serialised) as it is written: `web-1`, `role=web`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum HostSelector {
    Name(String),
    Label { key: String, value: String },
}

impl HostSelector {
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        match text.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => {
                Ok(HostSelector::Label { key: k.trim().to_owned(), value: v.trim().to_owned() })
            }
            Some(_) => Err(format!("'{text}' is not a label selector; write key=value")),
            None => validate_agent_name(text).map(|()| HostSelector::Name(text.to_owned())).map_err(|e| e.to_string()),
        }
    }
}

impl std::fmt::Display for HostSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostSelector::Name(name) => f.write_str(name),
            HostSelector::Label { key, value } => write!(f, "{key}={value}"),
        }
    }
}

impl From<HostSelector> for String {
    fn from(value: HostSelector) -> String {
        value.to_string()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildSettings {
    pub pre_deploy: Vec<String>,
    pub post_deploy: Vec<String>,
    pub timeout_secs: u64,
    /// Kept between builds (checked: relative, or `~/` and relative, never `..`).
    pub cache: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetSettings {
    pub user: Option<String>,
    /// May contain `{host}`; see [`TargetSettings::deploy_to_for`].
    pub deploy_to: String,
    pub current: Option<String>,
    pub shared: Vec<String>,
    pub pre_release: Vec<String>,
    pub post_release: Vec<String>,
    pub hook_timeout_secs: u64,
    /// The hooks a rollback runs, with the lines recorded with the release it restores.
    pub rollback_hooks: Vec<HookStage>,
    /// Run once per deploy, on one host, before any flip (never by a rollback).
    pub migrate: Vec<String>,
    /// Where `migrate` runs; the first host of the first batch when unset.
    pub migrate_host: Option<String>,
}

impl TargetSettings {
    pub fn deploy_to_for(&self, host: &str) -> PathBuf {
        PathBuf::from(self.deploy_to.replace("{host}", host))
    }

    /// The `current` symlink; `<deploy_to>/current` unless set.
    pub fn current_for(&self, host: &str) -> PathBuf {
        match &self.current {
            Some(c) => PathBuf::from(c.replace("{host}", host)),
            None => self.deploy_to_for(host).join("current"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HealthCheck {
    Http { url: String, expect_status: u16, timeout_secs: u64, retries: u32, interval_secs: u64 },
    Command { command: String, timeout_secs: u64, retries: u32, interval_secs: u64 },
}

#[derive(Debug, Clone, Serialize)]
pub struct RolloutSettings {
    pub strategy: Strategy,
    pub batch: BatchSize,
    pub delay_secs: u64,
    pub max_failures: u32,
    pub auto_rollback: bool,
    pub health: Option<HealthCheck>,
    pub host_timeout_secs: u64,
    pub stage_timeout_secs: u64,
    pub drain: Option<DrainSettings>,
    pub canary_pause: bool,
    pub canary_keep_drained: bool,
    pub canary_pause_timeout_secs: u64,
}

/// Everything one environment of a project resolves to, validated.
#[derive(Debug, Clone, Serialize)]
pub struct EnvSettings {
    pub project: String,
    pub env: String,
    pub repo: String,
    pub repo_type: RepoType,
    pub default_ref: String,
    pub keep_releases: u32,
    pub exclude: Vec<String>,
    pub vars: BTreeMap<String, String>,
    pub build: BuildSettings,
    pub target: TargetSettings,
    pub rollout: RolloutSettings,
    pub hosts: Vec<HostSelector>,
    pub canary: Vec<String>,
    pub config_dir: Option<String>,
    /// Only builds that ran in this env first (`--from ENV`, a deploy or an artifact that did).
    pub promote_from: Option<String>,
    /// When deploys may start (empty: always); rollbacks are never held.
    pub windows: Vec<windows::Window>,
    pub reuse: ReuseMode,
    pub approval: server::Approval,
    pub catch_up: bool,
}

/// A parsed, validated project file. Every env is resolved at parse time so that a bad value
/// anywhere is reported by `project apply`, not at deploy time.
#[derive(Debug, Clone)]
pub struct ProjectConfig {
    pub file: ProjectFile,
    pub envs: BTreeMap<String, EnvSettings>,
}

impl ProjectConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read project file", path, e))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, file: &str) -> Result<Self> {
        let parsed: ProjectFile = toml::from_str(text).map_err(|e| Error::config(file, toml_message(&e)))?;
        validate_name("project name", &parsed.name).map_err(|e| Error::config(file, format!("name: {e}")))?;
        if parsed.env.is_empty() {
            return Err(Error::config(
                file,
                "no environments: add at least one table like [env.prod] with hosts = [...]",
            ));
        }
        let mut envs = BTreeMap::new();
        for (env_name, env) in &parsed.env {
            validate_name("env name", env_name).map_err(|e| Error::config(file, format!("env.{env_name}: {e}")))?;
            let settings = resolve_env(&parsed, env_name, env)
                .map_err(|why| Error::config(file, format!("env '{env_name}': {why}")))?;
            envs.insert(env_name.clone(), settings);
        }
        let names: Vec<&str> = parsed.env.keys().map(String::as_str).collect();
        for (env_name, settings) in &envs {
            if let Some(from) = &settings.promote_from
                && (from == env_name || !names.contains(&from.as_str()))
            {
                return Err(Error::config(
                    file,
                    format!(
                        "env '{env_name}': promote_from = \"{from}\" must name another env of the project (it has: {})",
                        names.join(", ")
                    ),
                ));
            }
        }
        for rule in &parsed.webhook {
            rule.validate(&names).map_err(|why| Error::config(file, why))?;
        }
        for sink in &parsed.notify {
            sink.validate().map_err(|why| Error::config(file, why))?;
        }
        Ok(ProjectConfig { file: parsed, envs })
    }

    pub fn name(&self) -> &str {
        &self.file.name
    }

    /// The env's settings, or `None` when the project has no such env.
    pub fn env(&self, name: &str) -> Option<&EnvSettings> {
        self.envs.get(name)
    }
}

fn merge_opt<T>(over: &Option<T>, base: &Option<T>) -> Option<T>
where
    T: Clone,
{
    over.clone().or_else(|| base.clone())
}

fn resolve_env(p: &ProjectFile, env_name: &str, e: &EnvFile) -> std::result::Result<EnvSettings, String> {
    let repo = merge_opt(&e.repo, &p.repo).ok_or("repo is missing: set repo = \"<git url or path>\"")?;
    if repo.trim().is_empty() {
        return Err("repo is empty".into());
    }
    let repo_type = merge_opt(&e.repo_type, &p.repo_type).unwrap_or_default();
    let default_ref = merge_opt(&e.default_ref, &p.default_ref)
        .unwrap_or_else(|| if repo_type == RepoType::Svn { "trunk".into() } else { "main".into() });
    let keep_releases = merge_opt(&e.keep_releases, &p.keep_releases).unwrap_or(5);
    if !(1..=1000).contains(&keep_releases) {
        return Err(format!("keep_releases must be between 1 and 1000, got {keep_releases}"));
    }
    let exclude = merge_opt(&e.exclude, &p.exclude).unwrap_or_default();
    let mut vars = p.vars.clone().unwrap_or_default();
    vars.extend(e.vars.clone().unwrap_or_default());
    for key in vars.keys() {
        check_var_key(key)?;
    }

    let (pb, eb) = (p.build.clone().unwrap_or_default(), e.build.clone().unwrap_or_default());
    let build = BuildSettings {
        pre_deploy: merge_opt(&eb.pre_deploy, &pb.pre_deploy).unwrap_or_default(),
        post_deploy: merge_opt(&eb.post_deploy, &pb.post_deploy).unwrap_or_default(),
        timeout_secs: positive("build.timeout_secs", merge_opt(&eb.timeout_secs, &pb.timeout_secs).unwrap_or(600))?,
        cache: merge_opt(&eb.cache, &pb.cache).unwrap_or_default(),
    };
    for path in &build.cache {
        check_cache_path(path)?;
    }

    let (pt, et) = (p.target.clone().unwrap_or_default(), e.target.clone().unwrap_or_default());
    let deploy_to = merge_opt(&et.deploy_to, &pt.deploy_to)
        .ok_or("target.deploy_to is missing: set it to the directory that holds releases/ on each host")?;
    check_host_path("target.deploy_to", &deploy_to)?;
    let current = merge_opt(&et.current, &pt.current);
    if let Some(c) = &current {
        check_host_path("target.current", c)?;
        let (c_path, d_path) = (PathBuf::from(c), PathBuf::from(&deploy_to));
        if c_path.starts_with(d_path.join("releases")) {
            return Err("target.current must not be inside <deploy_to>/releases".into());
        }
    }
    let shared = merge_opt(&et.shared, &pt.shared).unwrap_or_default();
    for s in &shared {
        let path = Path::new(s);
        if s.is_empty() || path.is_absolute() || path.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(format!("target.shared: '{s}' must be a relative path inside the release, without '..'"));
        }
    }
    let user = merge_opt(&et.user, &pt.user);
    if let Some(u) = &user
        && (u.is_empty() || u.contains(|c: char| c.is_whitespace() || c == ':' || c == '/'))
    {
        return Err(format!("target.user: '{u}' is not a user name"));
    }
    let target = TargetSettings {
        user,
        deploy_to,
        current,
        shared,
        pre_release: merge_opt(&et.pre_release, &pt.pre_release).unwrap_or_default(),
        post_release: merge_opt(&et.post_release, &pt.post_release).unwrap_or_default(),
        hook_timeout_secs: positive(
            "target.hook_timeout_secs",
            merge_opt(&et.hook_timeout_secs, &pt.hook_timeout_secs).unwrap_or(300),
        )?,
        rollback_hooks: {
            let mut stages = merge_opt(&et.rollback_hooks, &pt.rollback_hooks).unwrap_or(vec![HookStage::PostRelease]);
            stages.sort();
            stages.dedup();
            stages
        },
        migrate: merge_opt(&et.migrate, &pt.migrate).unwrap_or_default(),
        migrate_host: merge_opt(&et.migrate_host, &pt.migrate_host),
    };
    if let Some(h) = &target.migrate_host {
        validate_agent_name(h).map_err(|why| format!("target.migrate_host: {why}"))?;
        if target.migrate.is_empty() {
            return Err("target.migrate_host is set but target.migrate is empty: add the lines to run once".into());
        }
    }

    let (pr, er) = (p.rollout.clone().unwrap_or_default(), e.rollout.clone().unwrap_or_default());
    let health = match merge_opt(&er.health, &pr.health) {
        None => None,
        Some(h) => Some(resolve_health(&h)?),
    };
    let rollout = RolloutSettings {
        strategy: merge_opt(&er.strategy, &pr.strategy).unwrap_or(Strategy::Parallel),
        batch: merge_opt(&er.batch, &pr.batch).unwrap_or(BatchSize::Percent(25)),
        delay_secs: merge_opt(&er.delay_secs, &pr.delay_secs).unwrap_or(0),
        max_failures: merge_opt(&er.max_failures, &pr.max_failures).unwrap_or(0),
        auto_rollback: merge_opt(&er.auto_rollback, &pr.auto_rollback).unwrap_or(true),
        health,
        host_timeout_secs: positive(
            "rollout.host_timeout_secs",
            merge_opt(&er.host_timeout_secs, &pr.host_timeout_secs).unwrap_or(30),
        )?,
        stage_timeout_secs: positive(
            "rollout.stage_timeout_secs",
            merge_opt(&er.stage_timeout_secs, &pr.stage_timeout_secs).unwrap_or(3600),
        )?,
        drain: merge_opt(&er.drain, &pr.drain).as_ref().map(resolve_drain).transpose()?,
        canary_pause: merge_opt(&er.canary_pause, &pr.canary_pause).unwrap_or(false),
        canary_keep_drained: merge_opt(&er.canary_keep_drained, &pr.canary_keep_drained).unwrap_or(false),
        canary_pause_timeout_secs: positive(
            "rollout.canary_pause_timeout_secs",
            merge_opt(&er.canary_pause_timeout_secs, &pr.canary_pause_timeout_secs).unwrap_or(86_400),
        )?,
    };

    let host_texts = merge_opt(&e.hosts, &p.hosts).unwrap_or_default();
    let mut hosts = Vec::new();
    for h in &host_texts {
        hosts.push(HostSelector::parse(h).map_err(|why| format!("hosts: {why}"))?);
    }
    let canary = merge_opt(&e.canary, &p.canary).unwrap_or_default();
    for c in &canary {
        validate_agent_name(c).map_err(|why| format!("canary: {why}"))?;
    }
    if rollout.canary_pause && canary.is_empty() {
        return Err(
            "rollout.canary_pause needs canary hosts: set canary = [\"web-1\"] (the env's pre-production node)".into(),
        );
    }
    if rollout.canary_keep_drained && rollout.drain.is_none() {
        return Err("rollout.canary_keep_drained needs [rollout.drain]".into());
    }
    let config_dir = merge_opt(&e.config_dir, &p.config_dir);
    let reuse = merge_opt(&e.reuse, &p.reuse).unwrap_or_default();
    let catch_up = merge_opt(&e.catch_up, &p.catch_up).unwrap_or(false);
    Ok(EnvSettings {
        project: p.name.clone(),
        env: env_name.to_owned(),
        repo,
        repo_type,
        default_ref,
        keep_releases,
        exclude,
        vars,
        build,
        target,
        rollout,
        hosts,
        canary,
        config_dir,
        promote_from: e.promote_from.clone(),
        windows: merge_opt(&e.windows, &p.windows)
            .unwrap_or_default()
            .iter()
            .map(|w| windows::Window::parse(w))
            .collect::<std::result::Result<_, _>>()?,
        reuse,
        catch_up,
        approval: server::resolve_approval(&e.approval, &p.approval)?,
    })
}

/// A `[build] cache` path: inside the checkout (`node_modules`), or the build's home
/// (`~/.m2/repository`), relative, without `.` or `..`.
fn check_cache_path(path: &str) -> std::result::Result<(), String> {
    let rel = path.strip_prefix("~/").unwrap_or(path);
    let ok = !rel.is_empty()
        && !rel.starts_with('/')
        && !rel.contains('\0')
        && rel.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "build.cache: '{path}' must be a path inside the checkout (node_modules) or the build's home (~/.m2/repository), without '..'"
        ))
    }
}

fn positive(key: &str, value: u64) -> std::result::Result<u64, String> {
    if value == 0 { Err(format!("{key} must be at least 1")) } else { Ok(value) }
}

fn check_host_path(key: &str, value: &str) -> std::result::Result<(), String> {
    let without_host = value.replace("{host}", "h");
    if without_host.contains(['{', '}']) {
        return Err(format!("{key}: '{value}' has a placeholder other than {{host}}"));
    }
    check_clean_absolute(Path::new(&without_host)).map_err(|why| format!("{key}: {why}"))?;
    if Path::new(&without_host) == Path::new("/") {
        return Err(format!("{key}: '/' is not a deploy directory"));
    }
    Ok(())
}

fn resolve_health(h: &HealthFile) -> std::result::Result<HealthCheck, String> {
    let timeout_secs = positive("rollout.health.timeout_secs", h.timeout_secs.unwrap_or(5))?;
    let retries = h.retries.unwrap_or(3);
    let interval_secs = h.interval_secs.unwrap_or(1);
    match (&h.http, &h.command) {
        (Some(url), None) => {
            if !url.starts_with("http://") {
                return Err(format!("rollout.health.http: '{url}' must start with http://"));
            }
            Ok(HealthCheck::Http {
                url: url.clone(),
                expect_status: h.expect_status.unwrap_or(200),
                timeout_secs,
                retries,
                interval_secs,
            })
        }
        (None, Some(command)) => {
            Ok(HealthCheck::Command { command: command.clone(), timeout_secs, retries, interval_secs })
        }
        _ => Err("rollout.health: set exactly one of http or command".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = r#"
name = "web-demo"
repo = "/srv/git/web-demo.git"
keep_releases = 3
vars = { APP_ENV = "production" }

[target]
deploy_to = "/data/release/{host}/web-demo"

[rollout]
batch = "50%"

[env.prod]
hosts = ["web-1", "role=web"]
keep_releases = 7
target = { current = "/data/nginx/{host}/website" }

[env.test]
hosts = ["web-1"]
"#;

    #[test]
    fn env_overrides_and_defaults() {
        let p = ProjectConfig::parse(DEMO, "demo.toml").unwrap();
        let prod = p.env("prod").unwrap();
        assert_eq!(prod.keep_releases, 7);
        assert_eq!(prod.default_ref, "main");
        assert_eq!(prod.target.deploy_to_for("web-1"), PathBuf::from("/data/release/web-1/web-demo"));
        assert_eq!(prod.target.current_for("web-1"), PathBuf::from("/data/nginx/web-1/website"));
        assert_eq!(prod.hosts[1], HostSelector::Label { key: "role".into(), value: "web".into() });
        assert_eq!(prod.rollout.batch, BatchSize::Percent(50));
        let test = p.env("test").unwrap();
        assert_eq!(test.keep_releases, 3);
        assert_eq!(test.target.current_for("web-1"), PathBuf::from("/data/release/web-1/web-demo/current"));
    }

    fn check_err(text: &str, expected: &[&str]) {
        let err = ProjectConfig::parse(text, "p.toml").unwrap_err().to_string();
        for e in expected {
            assert!(err.contains(e), "error {err:?} should contain {e:?}");
        }
    }

    #[test]
    fn bad_project_files_name_file_and_key() {
        let base = "name = \"x\"\nrepo = \"/r\"\n[target]\ndeploy_to = \"/d\"\n";
        check_err(&format!("{base}colour = 1\n[env.a]\nhosts=[\"h\"]\n"), &["p.toml", "colour"]);
        check_err(&format!("{base}[env.a]\nhosts=[\"h\"]\nbogus = 2\n"), &["p.toml", "bogus"]);
        check_err(&format!("{base}keep_releases = 0\n[env.a]\nhosts=[\"h\"]\n"), &["p.toml", "keep_releases"]);
        check_err(
            "name = \"x\"\nrepo = \"/r\"\n[target]\ndeploy_to = \"rel\"\n[env.a]\n",
            &["target.deploy_to", "absolute"],
        );
        check_err("name = \"x\"\nrepo = \"/r\"\n[target]\ndeploy_to = \"/a/../b\"\n[env.a]\n", &["target.deploy_to"]);
        check_err(&format!("{base}[rollout]\nstrategy = \"yolo\"\n[env.a]\n"), &["p.toml", "yolo"]);
        check_err(&format!("{base}[rollout]\nbatch = \"0%\"\n[env.a]\n"), &["batch"]);
        check_err(&format!("{base}[env.a]\nhosts = [\"Bad_Name\"]\n"), &["hosts", "Bad_Name"]);
        check_err(base, &["no environments"]);
        check_err("name = \"Web Demo\"\nrepo=\"/r\"\n[env.a]\n", &["name", "Web Demo"]);
        check_err(&format!("{base}[target2]\n[env.a]\n"), &["target2"]);
        check_err("name = \"x\"\n[target]\ndeploy_to = \"/d\"\n[env.a]\n", &["repo is missing"]);
        check_err(
            "name = \"x\"\nrepo = \"/r\"\n[target]\ndeploy_to = \"/d\"\nrollback_hooks = [\"restart\"]\n[env.a]\n",
            &["p.toml", "restart", "pre_release", "post_release"],
        );
    }

    #[test]
    fn drain_settings_resolve_or_name_the_key() {
        let base = "name = \"x\"\nrepo = \"/r\"\n[target]\ndeploy_to = \"/d\"\n[env.a]\n";
        let c = ProjectConfig::parse(
            &format!(
                "{base}[rollout.drain]\nhaproxy = {{ socket = \"/run/haproxy/admin.sock\", backend = \"web\" }}\n"
            ),
            "p",
        )
        .unwrap();
        let d = c.envs["a"].rollout.drain.clone().unwrap();
        assert_eq!((d.timeout_secs, d.allow_full_drain), (30, false));
        assert_eq!(d.server_for("web-1").as_deref(), Some("web-1"));
        let bad = |drain: &str, needle: &str| check_err(&format!("{base}[rollout.drain]\n{drain}"), &[needle]);
        bad("haproxy = { socket = \"/s\" }\n", "backend");
        bad("haproxy = { socket = \"rel.sock\", backend = \"b\" }\n", "absolute");
        bad("haproxy = { addr = \"nohost\", backend = \"b\" }\n", "HOST:PORT");
        bad("haproxy = { socket = \"/s\", backend = \"b\" }\ndrain = [\"x\"]\n", "not both");
        bad("drain = [\"lb-out\"]\n", "undrain");
        bad("drain = [\"a\"]\nundrain = [\"b\"]\nrun_on = \"Bad_Name\"\n", "run_on");
        bad("haproxy = { socket = \"/s\", backend = \"b\" }\nrun_on = \"host\"\n", "run_on");
        check_err(&format!("{base}[rollout]\ncanary_pause = true\n"), &["canary_pause", "canary ="]);
        check_err(&format!("{base}[rollout]\ncanary_keep_drained = true\n"), &["canary_keep_drained", "drain"]);
    }

    #[test]
    fn rollback_hooks_default_to_post_release() {
        let base = "name = \"x\"\nrepo = \"/r\"\n[target]\ndeploy_to = \"/d\"\n";
        let c = ProjectConfig::parse(&format!("{base}[env.a]\n[env.b.target]\nrollback_hooks = []\n"), "p").unwrap();
        assert_eq!(c.envs["a"].target.rollback_hooks, [HookStage::PostRelease]);
        assert!(c.envs["b"].target.rollback_hooks.is_empty());
    }

    #[test]
    fn agent_config_resolves_relative_paths() {
        let text = "name = \"web-1\"\nlisten = \"127.0.0.1:7443\"\nstate_dir = \"state\"\nallowed_roots = [\"/data\"]\n[tls]\nca = \"ca.pem\"\ncert = \"/etc/a.pem\"\nkey = \"a.key\"\n";
        let c = AgentConfig::parse(text, "agent.toml", Path::new("/etc/slipway")).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/etc/slipway/state"));
        assert_eq!(c.tls.ca, PathBuf::from("/etc/slipway/ca.pem"));
        assert_eq!(c.tls.cert, PathBuf::from("/etc/a.pem"));
        assert!(c.is_allowed(Path::new("/data/x")));
        assert!(!c.is_allowed(Path::new("/data")));
        assert!(!c.is_allowed(Path::new("/database/x")));
        let bad = text.replace("127.0.0.1:7443", "localhost");
        let err = AgentConfig::parse(&bad, "agent.toml", Path::new("/")).unwrap_err().to_string();
        assert!(err.contains("listen"), "{err}");
        let bad = text.replace("[\"/data\"]", "[\"/\"]");
        assert!(AgentConfig::parse(&bad, "agent.toml", Path::new("/")).is_err());
    }
}
