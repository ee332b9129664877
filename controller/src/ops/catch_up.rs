//! `catch_up = true` (DESIGN.md "Joining hosts"): a host that joins, or answers again after it
//! did not, and that an env with `catch_up` selects, gets what the env's other hosts run — the
//! same release, shipped again by the deploy that made it — as a recorded deploy by
//! `join:<name>`, with the env's hooks, drain and health check. It waits while another
//! operation holds the env's lock, and does nothing when the host runs it already.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use slipway_common::config::ProjectConfig;

use crate::engine::{DeployArgs, Retry};
use crate::error::Result;
use crate::ops::Core;
use crate::ops::runs::{Begun, Op, begin};
use crate::state::store::DeployKind;

/// Host `name` joined or came back: catch it up in every env that asks for it.
pub fn host_arrived(core: Arc<Core>, name: String) {
    // A standby runs nothing: the leader's probe sees the host arrive and catches it up.
    if crate::state::leader::role() == crate::state::leader::Role::Standby {
        return;
    }
    tokio::spawn(async move {
        let envs = match envs_catching_up(&core, &name) {
            Ok(envs) => envs,
            Err(e) => return tracing::warn!(host = %name, "catch-up: {e}"),
        };
        for (project, env) in envs {
            if let Err(e) = catch_up(&core, &project, &env, &name).await {
                tracing::warn!(host = %name, %project, %env, "catch-up: {e}");
            }
        }
    });
}

/// The (project, env) pairs with `catch_up = true` whose `hosts` select agent `name`.
fn envs_catching_up(core: &Core, name: &str) -> Result<Vec<(String, String)>> {
    let agents = core.store.agents()?;
    let mut out = Vec::new();
    for p in core.store.projects()? {
        let Ok(config) = ProjectConfig::parse(&p.text, &p.source_file.display().to_string()) else { continue };
        for (env, s) in &config.envs {
            let selected = crate::engine::select::select_hosts(&p.name, env, &s.hosts, &agents, None);
            if s.catch_up && selected.is_ok_and(|hosts| hosts.iter().any(|a| a.name == name)) {
                out.push((p.name.clone(), env.clone()));
            }
        }
    }
    Ok(out)
}

/// What the env's other hosts run (the release most of the hosts it selects now run, as the
/// records say; the newest of a tie), and the deploy that made it.
fn target(core: &Core, project: &str, env: &str, name: &str) -> Result<Option<Retry>> {
    let selected: Vec<String> = match core.store.project(project)? {
        Some(p) => {
            let config = ProjectConfig::parse(&p.text, &p.source_file.display().to_string())?;
            let Some(s) = config.env(env) else { return Ok(None) };
            let agents = core.store.agents()?;
            let hosts = crate::engine::select::select_hosts(project, env, &s.hosts, &agents, None)?;
            hosts.into_iter().filter(|a| a.trust.evicted.is_none()).map(|a| a.name).collect()
        }
        None => return Ok(None),
    };
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (host, release) in core.views.hosts_of(project, env) {
        if host != name && selected.contains(&host) {
            *counts.entry(release).or_default() += 1;
        }
    }
    let Some((release, _)) = counts.into_iter().max_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0))) else {
        return Ok(None);
    };
    let made = core.store.deploys_where(1, |d| {
        d.project == project
            && d.env == env
            && d.kind == DeployKind::Deploy
            && d.release.as_ref().is_some_and(|r| r.to_string() == release)
            && d.hosts.iter().any(|h| h.ok && h.activated)
    })?;
    Ok(made.into_iter().next().and_then(|d| {
        Some(Retry {
            of: d.id,
            origin: crate::engine::deploy::shipped_build(&d),
            release: d.release?,
            commit: d.commit,
            git_ref: d.git_ref,
            hosts: vec![name.to_owned()],
        })
    }))
}

/// How long a host that joined has to start answering (`systemctl enable --now slipd` comes
/// after `slipd join`) before its catch-up is given up on; the next time it comes back after
/// being unreachable, the probe starts another.
const ANSWER_WITHIN: Duration = Duration::from_secs(15 * 60);

/// Wait until agent `name` answers, looking again after 0.5 s, then less and less often.
async fn answers(core: &Core, name: &str) -> Result<bool> {
    let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
    let mut pause = Duration::from_millis(500);
    loop {
        let Some(agent) = core.store.agent(name)? else { return Ok(false) };
        let answer = crate::ops::agents::ask_info(&core.home, vec![agent]).await;
        if answer.first().is_some_and(|(_, a)| a.is_ok()) {
            return Ok(true);
        }
        if core.is_stopping() || tokio::time::Instant::now() + pause > deadline {
            return Ok(false);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

async fn catch_up(core: &Arc<Core>, project: &str, env: &str, name: &str) -> Result<()> {
    if !answers(core, name).await? {
        tracing::warn!(host = %name, %project, %env, "catch-up given up: the host did not answer");
        return Ok(());
    }
    let mut changes = crate::state::journal::changes();
    loop {
        if core.is_stopping() {
            return Ok(());
        }
        let Some(retry) = target(core, project, env, name)? else {
            tracing::info!(host = %name, %project, %env, "catch-up: the env runs nothing yet");
            return Ok(());
        };
        if core.views.hosts_of(project, env).get(name) == Some(&retry.release.to_string()) {
            return Ok(());
        }
        // Never while another operation holds the env: wait for it to end.
        if core.store.lock(project, env)?.is_none() {
            let args = DeployArgs {
                hosts: Some(vec![name.to_owned()]),
                user: Some(format!("join:{name}")),
                retry: Some(retry),
                ..DeployArgs::of(project, env)
            };
            match begin(core, Op::Deploy(Box::new(args)), None).await {
                Ok(Begun::Started(id)) => {
                    tracing::info!(host = %name, %project, %env, deploy = id, "catching up");
                    return Ok(());
                }
                Ok(Begun::Planned(_)) => return Ok(()),
                Err(e) if e.kind == crate::error::Kind::Busy => {}
                Err(e) => return Err(e),
            }
        }
        // (The change signal fires when an operation ends; the timeout covers a lock whose
        // holder died without a word.)
        let _ = tokio::time::timeout(Duration::from_secs(10), changes.changed()).await;
    }
}
