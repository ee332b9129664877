//! What one operation targets: the project env's settings and hosts, and the target and hook
//! context every request to a host carries.
use std::path::Path;

use slipway_common::config::{EnvSettings, ProjectConfig};
use slipway_proto::pb;

use crate::engine::select::select_hosts;
use crate::error::{CtlError, Result};
use crate::state::home::Home;
use crate::state::store::{AgentRecord, ProjectRecord, Store};

/// What a deploy or rollback operates on, loaded from state in one short transaction.
pub struct Scope {
    pub project: ProjectRecord,
    pub settings: EnvSettings,
    pub hosts: Vec<AgentRecord>,
    /// Every registered agent (a drain may run on one that is not a host of the env).
    pub registered: Vec<AgentRecord>,
}

/// Load project, env and hosts; every unknown name is bad input naming the fix.
pub fn load_scope(home: &Home, project: &str, env: &str, only: Option<&[String]>) -> Result<Scope> {
    let store = Store::open(&home.state())?;
    let (record, settings) = env_of(&store, project, env)?;
    let agents = store.agents()?;
    let hosts = select_hosts(project, env, &settings.hosts, &agents, only)?;
    Ok(Scope { project: record, settings, hosts, registered: agents })
}

/// A project's record; an unknown name is bad input naming the fix.
pub fn project_of(store: &Store, project: &str) -> Result<ProjectRecord> {
    store.project(project)?.ok_or_else(|| {
        let known: Vec<String> = store.projects().unwrap_or_default().into_iter().map(|p| p.name).collect();
        CtlError::not_found(format!(
            "unknown project '{project}' (projects: {})",
            if known.is_empty() { "none".into() } else { known.join(", ") }
        ))
        .fix("add it with `slipctl project apply -f FILE`")
    })
}

/// A project's record and the settings of one of its envs (hosts not looked at); every unknown
/// name is bad input naming the fix.
pub fn env_of(store: &Store, project: &str, env: &str) -> Result<(ProjectRecord, EnvSettings)> {
    let record = project_of(store, project)?;
    let config = ProjectConfig::parse(&record.text, &record.source_file.display().to_string())?;
    let settings = config.env(env).cloned().ok_or_else(|| {
        CtlError::bad(format!(
            "project '{project}' has no env '{env}' (envs: {})",
            config.envs.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
        .fix(format!("use one of them, or add [env.{env}] to {} and apply it", record.source_file.display()))
    })?;
    Ok((record, settings))
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

pub(crate) fn hook_spec(commands: &[String], settings: &EnvSettings) -> pb::HookSpec {
    pb::HookSpec { commands: commands.to_vec(), timeout_secs: settings.target.hook_timeout_secs }
}

pub fn pb_target(settings: &EnvSettings, host: &str) -> pb::Target {
    pb::Target {
        project: settings.project.clone(),
        env: settings.env.clone(),
        deploy_to: settings.target.deploy_to_for(host).display().to_string(),
        current: settings.target.current_for(host).display().to_string(),
    }
}

/// Who runs this operation, as history shows it: the account's name (from the system's user
/// database, not `$USER`) at this machine's host name, and who ran `sudo` when that was it.
pub fn current_user() -> String {
    let uid = rustix::process::getuid().as_raw();
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid {uid}"));
    let host = rustix::system::uname().nodename().to_string_lossy().into_owned();
    let via = std::env::var("SUDO_USER")
        .ok()
        .filter(|s| !s.is_empty() && *s != name)
        .map(|s| format!(" (sudo by {s})"))
        .unwrap_or_default();
    format!("{name}@{host}{via}")
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

pub(crate) fn health_spec(settings: &EnvSettings) -> Option<pb::HealthSpec> {
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
