//! Release hooks on the host: who they run as (the project's target user, resolved through NSS;
//! never root unless allowed), the SLIPWAY_* environment, and the bridge from
//! `slipway_common::process` (process groups, timeouts, bounded capture) to the RPC's events.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use slipway_common::process::{Shell, run_shell};
use slipway_proto::pb;
use tokio::sync::mpsc;

use crate::error::AgentError;

const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Who hooks run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

async fn command_output(program: &str, args: &[&str]) -> Result<Option<String>, AgentError> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| AgentError::io("cannot run", program, e))?;
    Ok(out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()))
}

/// Look a user up through NSS (`getent passwd`, `id -G`), so LDAP and sssd users work too.
pub async fn resolve_user(name: &str) -> Result<RunAs, AgentError> {
    let passwd = command_output("getent", &["passwd", name]).await?.ok_or_else(|| {
        AgentError::BadRequest(format!(
            "user '{name}' does not exist on this host; create it (useradd {name}) or change target.user"
        ))
    })?;
    let fields: Vec<&str> = passwd.split(':').collect();
    let parse = |i: usize| fields.get(i).and_then(|f| f.parse::<u32>().ok());
    let (Some(uid), Some(gid)) = (parse(2), parse(3)) else {
        return Err(AgentError::State(format!("unexpected passwd entry for '{name}': {passwd}")));
    };
    let home = PathBuf::from(fields.get(5).copied().unwrap_or("/"));
    let groups = command_output("id", &["-G", name])
        .await?
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    Ok(RunAs { name: name.to_owned(), uid, gid, groups, home })
}

/// The agent's own identity (hooks run as it when the project names no user).
pub fn current_user() -> RunAs {
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let name = std::env::var("USER").unwrap_or_else(|_| if uid == 0 { "root".into() } else { uid.to_string() });
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/".into()));
    RunAs { name, uid, gid, groups: vec![gid], home }
}

/// Decide who runs hooks (and owns release files) for a target user name, enforcing the
/// agent's rules: no root unless allowed, and no switching unless the agent is root.
pub async fn decide_user(user: &str, allow_root: bool) -> Result<RunAs, AgentError> {
    let me = rustix::process::geteuid().as_raw();
    let run_as = if user.is_empty() { current_user() } else { resolve_user(user).await? };
    if run_as.uid == 0 && !allow_root {
        return Err(AgentError::NotAllowed(format!(
            "refusing to run hooks as root{}: set target.user in the project (e.g. \"www\") or allow_root_hooks = true in agent.toml",
            if user.is_empty() { " (the project names no target.user)" } else { "" }
        )));
    }
    if me != 0 && run_as.uid != me {
        return Err(AgentError::NotAllowed(format!(
            "slipd runs as uid {me} and cannot act as user '{}'; run slipd as root or set target.user to its own user",
            run_as.name
        )));
    }
    Ok(run_as)
}

/// The environment of every hook (DESIGN.md "Hooks").
#[derive(Debug, Clone, Default)]
pub struct HookEnv {
    pub vars: BTreeMap<String, String>,
}

impl HookEnv {
    pub fn new(run_as: &RunAs, project_vars: &BTreeMap<String, String>, slipway: &[(&str, String)]) -> Self {
        let mut vars = project_vars.clone();
        for (k, v) in slipway {
            vars.insert(format!("SLIPWAY_{k}"), v.clone());
        }
        vars.insert("HOME".into(), run_as.home.display().to_string());
        vars.insert("USER".into(), run_as.name.clone());
        vars.insert("LOGNAME".into(), run_as.name.clone());
        vars.insert("PATH".into(), SAFE_PATH.into());
        vars.insert("LANG".into(), "C.UTF-8".into());
        HookEnv { vars }
    }
}

/// Where live output goes (the RPC's event stream).
pub type LiveOutput = mpsc::Sender<pb::HookOutput>;

/// Run one hook line as `run_as`. Never fails: the result says how it ended.
pub async fn run_hook(
    stage: &str,
    command: &str,
    cwd: &Path,
    env: &HookEnv,
    run_as: &RunAs,
    timeout: Duration,
    live: Option<LiveOutput>,
) -> pb::HookResult {
    let live_bytes = live.map(|live| {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
        let (stage, command) = (stage.to_owned(), command.to_owned());
        tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                let out = pb::HookOutput { stage: stage.clone(), command: command.clone(), data };
                if live.try_send(out).is_err() && live.is_closed() {
                    break;
                }
            }
        });
        tx
    });
    let switch = run_as.uid != rustix::process::geteuid().as_raw();
    let shell = Shell { command, cwd, env: &env.vars, clear_env: true, timeout };
    let r = run_shell(
        shell,
        |cmd| {
            if switch {
                crate::privdrop::run_as(cmd, run_as.uid, run_as.gid, &run_as.groups);
            }
        },
        live_bytes,
    )
    .await;
    pb::HookResult {
        stage: stage.into(),
        command: command.into(),
        exit_code: r.exit_code,
        timed_out: r.timed_out,
        elapsed_ms: r.elapsed_ms,
        output_head: r.head,
        output_tail: r.tail,
        output_dropped: r.dropped,
    }
}

/// Why a hook failed, in one line for people.
pub fn failure(result: &pb::HookResult, timeout: Duration) -> Option<String> {
    if result.timed_out {
        Some(format!(
            "{} hook `{}` timed out after {}s and was killed",
            result.stage,
            result.command,
            timeout.as_secs()
        ))
    } else if result.exit_code != 0 {
        Some(format!("{} hook `{}` failed with exit status {}", result.stage, result.command, result.exit_code))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hooks_see_the_slipway_environment() {
        let dir = tempfile::tempdir().unwrap();
        let me = current_user();
        let vars = BTreeMap::from([("APP_ENV".to_owned(), "production".to_owned())]);
        let env = HookEnv::new(&me, &vars, &[("PROJECT", "web".into())]);
        let r = run_hook(
            "post_release",
            "echo $SLIPWAY_PROJECT $APP_ENV $USER; exit 3",
            dir.path(),
            &env,
            &me,
            Duration::from_secs(10),
            None,
        )
        .await;
        assert_eq!(r.exit_code, 3);
        let out = String::from_utf8(r.output_head.clone()).unwrap();
        assert_eq!(out, format!("web production {}\n", me.name));
        let why = failure(&r, Duration::from_secs(10)).unwrap();
        assert!(why.contains("post_release") && why.contains("exit status 3"), "{why}");
    }

    #[tokio::test]
    async fn unknown_users_are_named() {
        let err = resolve_user("no-such-user-slipway").await.unwrap_err().to_string();
        assert!(err.contains("no-such-user-slipway"), "{err}");
    }
}
