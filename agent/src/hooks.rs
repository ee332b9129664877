//! Release hooks on the host: who they run as (the project's target user, resolved through NSS;
//! never root unless allowed), the SLIPWAY_* environment, and the bridge from
//! `slipway_common::process` (process groups, timeouts, bounded capture) to the RPC's events.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use slipway_common::process::{Shell, run_shell};
use slipway_proto::pb;
use tokio::sync::mpsc;

use crate::error::AgentError;

pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Who hooks run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

/// Look a user up through NSS (`getpwnam_r`, `getgrouplist`: LDAP and sssd users work too),
/// without running any program from `PATH`.
pub fn resolve_user(name: &str) -> Result<RunAs, AgentError> {
    let shown = slipway_common::archive::clip(name, 64);
    let user = nix::unistd::User::from_name(name)
        .map_err(|e| AgentError::State(format!("cannot look up user '{shown}': {e}")))?
        .ok_or_else(|| {
            AgentError::BadRequest(format!(
                "user '{shown}' does not exist on this host; create it (useradd {shown}) or change target.user"
            ))
        })?;
    let cname = std::ffi::CString::new(name).map_err(|_| AgentError::BadRequest("user name contains NUL".into()))?;
    let mut groups: Vec<u32> = nix::unistd::getgrouplist(&cname, user.gid)
        .map_err(|e| AgentError::State(format!("cannot list the groups of '{shown}': {e}")))?
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    Ok(RunAs { name: name.to_owned(), uid: user.uid.as_raw(), gid: user.gid.as_raw(), groups, home: user.dir })
}

/// The agent's own identity (hooks run as it when the project names no user).
pub fn current_user() -> RunAs {
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let entry = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten();
    let name =
        entry.as_ref().map_or_else(|| if uid == 0 { "root".into() } else { uid.to_string() }, |u| u.name.clone());
    let home = entry.map_or_else(|| PathBuf::from("/"), |u| u.dir);
    RunAs { name, uid, gid, groups: vec![gid], home }
}

/// Who may run hooks, from `agent.toml`.
#[derive(Debug, Clone, Default)]
pub struct HookPolicy {
    pub allow_root: bool,
    /// Users accepted although they are in a privileged group.
    pub allowed_users: Vec<String>,
    /// Group names whose members are refused.
    pub denied_groups: Vec<String>,
}

impl HookPolicy {
    pub fn from_config(config: &slipway_common::config::AgentConfig) -> Self {
        HookPolicy {
            allow_root: config.allow_root_hooks,
            allowed_users: config.allowed_hook_users.clone(),
            denied_groups: config.denied_hook_groups.clone(),
        }
    }

    /// Refuse a user whose groups give root or its equivalent (gid 0, `sudo`, `docker`, …).
    fn check_groups(&self, run_as: &RunAs) -> Result<(), AgentError> {
        if run_as.uid == 0 || self.allowed_users.iter().any(|u| u == &run_as.name) {
            return Ok(());
        }
        let mut privileged = Vec::new();
        for gid in std::iter::once(run_as.gid).chain(run_as.groups.iter().copied()) {
            let name = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)).ok().flatten().map(|g| g.name);
            let denied = gid == 0 || name.as_ref().is_some_and(|n| self.denied_groups.iter().any(|d| d == n));
            if denied {
                let shown = name.unwrap_or_else(|| gid.to_string());
                if !privileged.contains(&shown) {
                    privileged.push(shown);
                }
            }
        }
        if privileged.is_empty() {
            return Ok(());
        }
        Err(AgentError::NotAllowed(format!(
            "refusing to run hooks as '{}': it is in the privileged group(s) {}, which would hand the app user root; \
             remove it from them (gpasswd -d {} GROUP), use another target.user, or list it in allowed_hook_users in agent.toml",
            run_as.name,
            privileged.join(", "),
            run_as.name
        )))
    }
}

/// Decide who runs hooks (and owns release files) for a target user name, enforcing the
/// agent's rules: no root unless allowed, no privileged groups unless allowed, and no switching
/// unless the agent is root.
pub async fn decide_user(user: &str, policy: &HookPolicy) -> Result<RunAs, AgentError> {
    let me = rustix::process::geteuid().as_raw();
    let (user_name, policy) = (user.to_owned(), policy.clone());
    let (run_as, policy) = tokio::task::spawn_blocking(move || {
        let run_as = if user_name.is_empty() { Ok(current_user()) } else { resolve_user(&user_name) };
        run_as.and_then(|r| policy.check_groups(&r).map(|()| (r, policy)))
    })
    .await
    .map_err(|e| AgentError::State(format!("user lookup failed: {e}")))??;
    if run_as.uid == 0 && !policy.allow_root {
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

/// The project's `vars`, checked again on the host: the controller is not the only one who can
/// send a request, and a name like `LD_PRELOAD` must never reach a hook.
pub fn check_vars(vars: &std::collections::HashMap<String, String>) -> Result<(), AgentError> {
    for key in vars.keys() {
        slipway_common::config::check_var_key(key).map_err(AgentError::BadRequest)?;
    }
    Ok(())
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
pub type LiveOutput = mpsc::Sender<LiveItem>;

/// What goes to the RPC's event stream, in order: a hook's output, then its result.
#[derive(Debug)]
pub enum LiveItem {
    Output(pb::HookOutput),
    Done(pb::HookResult),
}

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
    let (live_bytes, forwarder) = match live {
        None => (None, None),
        Some(live) => {
            let (tx, mut rx) = mpsc::channel::<slipway_common::process::LiveChunk>(64);
            let (stage, command) = (stage.to_owned(), command.to_owned());
            let forwarder = tokio::spawn(async move {
                while let Some(chunk) = rx.recv().await {
                    let out = pb::HookOutput {
                        stage: stage.clone(),
                        command: command.clone(),
                        data: chunk.data,
                        stderr: chunk.stderr,
                    };
                    // Never block the hook on a slow reader: output is dropped when it is full.
                    if live.try_send(LiveItem::Output(out)).is_err() && live.is_closed() {
                        break;
                    }
                }
            });
            (Some(tx), Some(forwarder))
        }
    };
    let switch = run_as.uid != rustix::process::geteuid().as_raw();
    // When switching users, the child changes directory only after it dropped root, so the path
    // is resolved with the user's own rights (a symlink it planted leads nowhere it could not go).
    let shell_cwd = if switch { Path::new("/") } else { cwd };
    let shell = Shell { command, cwd: shell_cwd, env: &env.vars, clear_env: true, timeout };
    let r = run_shell(
        shell,
        |cmd| {
            if switch {
                crate::privdrop::run_as(cmd, run_as.uid, run_as.gid, &run_as.groups, cwd);
            }
        },
        live_bytes,
    )
    .await;
    // Every output chunk is queued before the result is: the result never overtakes its output.
    if let Some(forwarder) = forwarder {
        let _ = tokio::time::timeout(Duration::from_secs(2), forwarder).await;
    }
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

    #[test]
    fn unknown_users_are_named() {
        let err = resolve_user("no-such-user-slipway").unwrap_err().to_string();
        assert!(err.contains("no-such-user-slipway"), "{err}");
    }

    #[test]
    fn privileged_groups_are_refused_unless_allowed() {
        let root = resolve_user("root").unwrap();
        let mut fake = root.clone();
        fake.uid = 4242;
        fake.name = "fake".into();
        let policy = HookPolicy { denied_groups: vec!["root".into()], ..HookPolicy::default() };
        let err = policy.check_groups(&fake).unwrap_err().to_string();
        assert!(err.contains("privileged group") && err.contains("root"), "{err}");
        let allowed = HookPolicy { allowed_users: vec!["fake".into()], ..policy };
        allowed.check_groups(&fake).unwrap();
    }
}
