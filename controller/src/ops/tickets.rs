//! Deploy tickets (上线单): made with a ref that resolves to a commit there and then, approved by
//! people other than the requester as the env asks (`approval = { required = N }`), deployed,
//! cancelled, and taken back by a rollback ticket. Every change is a transition with who, when
//! and from where. The functions here serve the API and `slipctl ticket` alike; who may call
//! them is decided before (the authorization middleware, `exec::authorize`), what a ticket's
//! state allows is decided here.

use std::sync::Arc;

use serde::Deserialize;
use slipway_common::time::unix_now;

use crate::engine::{DeployArgs, RollbackArgs};
use crate::error::{CtlError, Result};
use crate::ops::Core;
use crate::ops::caller::Caller;
use crate::ops::runs::{self, Begun, Op};
use crate::source::git::Resolved;
use crate::state::store::{DeployRecord, DeployStatus};
use crate::state::tickets::{Approval, Audit, TicketKind, TicketRecord, TicketState, Transition};
use crate::state::users::Role;

pub fn unknown(id: u64) -> CtlError {
    CtlError::not_found(format!("unknown ticket #{id}"))
        .fix("GET /api/v1/tickets (or `slipctl ticket list`) lists them")
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTicket {
    pub project: String,
    pub env: String,
    #[serde(rename = "ref", default)]
    pub git_ref: Option<String>,
    pub title: String,
    #[serde(default)]
    pub description: String,
    /// Ship the build this env runs (a promotion), not a ref.
    #[serde(default)]
    pub from: Option<String>,
    /// Ship the build this deploy shipped.
    #[serde(default)]
    pub from_deploy: Option<u64>,
    /// Ship this pushed artifact.
    #[serde(default)]
    pub artifact: Option<String>,
}

impl NewTicket {
    /// The existing build it asks for, if it asks for one (never together with a ref).
    pub fn origin(&self) -> Result<Option<crate::engine::Origin>> {
        use crate::engine::Origin;
        let origin = match (&self.from, self.from_deploy, &self.artifact) {
            (None, None, None) => return Ok(None),
            (Some(env), None, None) => Origin::Env(env.clone()),
            (None, Some(n), None) => Origin::Deploy(n),
            (None, None, Some(name)) => Origin::Artifact(name.clone()),
            _ => {
                return Err(CtlError::bad("a ticket ships one build: give one of from, from_deploy and artifact")
                    .fix("drop the others"));
            }
        };
        if self.git_ref.is_some() {
            return Err(CtlError::bad("a ticket ships a ref or an existing build, not both")
                .fix("drop ref to promote a build, or drop from/from_deploy/artifact to build the ref"));
        }
        Ok(Some(origin))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Comment {
    #[serde(default)]
    pub comment: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketQuery {
    pub project: Option<String>,
    pub env: Option<String>,
    pub state: Option<String>,
    pub limit: Option<usize>,
}

/// Longest title, description and comment the server keeps (in characters).
pub const TITLE_MAX: usize = 200;
pub const DESCRIPTION_MAX: usize = 10_000;
pub const COMMENT_MAX: usize = 2_000;

/// `text` (the ticket's `field`) fits in `max` characters, or a 400 that says so.
pub fn within(field: &str, text: &str, max: usize) -> Result<()> {
    let n = text.chars().count();
    if n > max {
        return Err(CtlError::bad(format!("the {field} has {n} characters; at most {max} are kept"))
            .fix(format!("shorten the {field} to {max} characters or fewer")));
    }
    Ok(())
}

pub fn audit(caller: &Caller) -> Audit {
    Audit { by: caller.name.clone(), at: unix_now(), from: caller.from.clone() }
}

pub(crate) fn system() -> Audit {
    Audit { by: "slipway".into(), at: unix_now(), from: "server".into() }
}

fn move_to(t: &mut TicketRecord, state: TicketState, audit: Audit, comment: &str) {
    t.state = state;
    t.transitions.push(Transition { state, audit, comment: comment.to_owned() });
}

/// Make a ticket; approved at once when its env needs no approval. `exact`: the commit it ships
/// (a webhook's pushed commit), else what the ref points at now.
pub async fn create(
    app: &Arc<Core>,
    caller: &Caller,
    new: NewTicket,
    created: Audit,
    exact: Option<&str>,
) -> Result<TicketRecord> {
    create_pushed(app, caller, new, created, exact, None).await
}

/// Who pushed the commit a webhook's ticket ships: the name in the payload and the Slipway
/// user of that name, if any.
#[derive(Debug, Clone, Default)]
pub struct Pusher {
    pub named: String,
    pub user: Option<String>,
}

/// [`create`], for a webhook's push by `pusher`.
pub async fn create_pushed(
    app: &Arc<Core>,
    caller: &Caller,
    new: NewTicket,
    created: Audit,
    exact: Option<&str>,
    pusher: Option<Pusher>,
) -> Result<TicketRecord> {
    if new.title.trim().is_empty() {
        return Err(CtlError::bad("a ticket needs a title").fix("say in a line what it ships"));
    }
    within("title", &new.title, TITLE_MAX)?;
    within("description", &new.description, DESCRIPTION_MAX)?;
    let (project, settings) = crate::engine::scope::env_of(&app.store, &new.project, &new.env)?;
    // A promotion pins the build now (the ticket shows it, and ships it whatever the source env
    // runs by then); a ref resolves to its commit now. Either way the env must take it.
    let (git_ref, resolved, build) = match new.origin()? {
        Some(origin) => {
            let source = crate::engine::origin::resolve(&app.home, &project.name, &origin)?;
            crate::engine::origin::gate(&app.home, &settings, Some(&source.build))?;
            let b = &source.build;
            let summary = format!("build {} ({})", &b.sha256[..12], b.provenance());
            let resolved = Resolved { commit: b.commit.clone(), commit_time: b.commit_time, summary };
            (source.git_ref.clone(), resolved, Some((source.build, source.from_deploy)))
        }
        None => {
            crate::engine::origin::gate(&app.home, &settings, None)?;
            let git_ref = new.git_ref.clone().unwrap_or_else(|| settings.default_ref.clone());
            let url = crate::engine::scope::repo_url(&project, &settings);
            let mirror = crate::source::git::mirror_path(&app.home.cache(), &project.name);
            crate::source::vcs::fetch(&settings, &url, &mirror).await?;
            let resolved = crate::source::vcs::resolve(&settings, &url, &mirror, exact.unwrap_or(&git_ref)).await?;
            (git_ref.clone(), resolved, None)
        }
    };
    let (build, from_deploy) = build.map_or((None, None), |(b, from)| (Some(b), from));
    let mut ticket = TicketRecord {
        id: app.store.next_ticket_id()?,
        kind: TicketKind::Deploy,
        project: new.project,
        env: new.env,
        git_ref,
        commit: resolved.commit,
        commit_summary: resolved.summary,
        title: new.title,
        description: new.description,
        state: TicketState::Pending,
        requester: caller.name.clone(),
        requester_principal: Some(caller.principal.clone()),
        pushed_by: None,
        pusher_user: None,
        created: created.clone(),
        required: settings.approval.required,
        approvals: Vec::new(),
        deploys: Vec::new(),
        rollback_of: None,
        restores: None,
        build,
        from_deploy,
        start: None,
        transitions: vec![Transition { state: TicketState::Pending, audit: created.clone(), comment: String::new() }],
    };
    if let Some(p) = pusher {
        ticket.pushed_by = Some(p.named);
        ticket.pusher_user = p.user;
    }
    if ticket.required == 0 {
        move_to(&mut ticket, TicketState::Approved, created, "no approval required");
    }
    app.store.put_ticket(&ticket)?;
    app.ticket_changed("ticket_created", &ticket, &caller.name);
    crate::ops::audit::Actor::of(caller).did(
        &app.store,
        "ticket_create",
        &format!("ticket #{} {}/{}", ticket.id, ticket.project, ticket.env),
        "ok",
        &format!("{} {}", ticket.git_ref, ticket.commit),
    );
    Ok(ticket)
}

/// Change ticket `id` under the ticket lock: `change` sees the record as it is now.
pub(crate) fn update(
    app: &Core,
    id: u64,
    change: impl FnOnce(&mut TicketRecord) -> Result<()>,
) -> Result<TicketRecord> {
    let _held = app.ticket_lock.lock().expect("ticket lock");
    let mut ticket = app.store.ticket(id)?.ok_or_else(|| unknown(id))?;
    change(&mut ticket)?;
    app.store.put_ticket(&ticket)?;
    Ok(ticket)
}

fn not_in(t: &TicketRecord, what: &str, states: &[TicketState]) -> Result<()> {
    if states.contains(&t.state) {
        Ok(())
    } else {
        Err(CtlError::busy(format!("ticket #{} is {}: it cannot be {what}", t.id, t.state.word())).fix(format!(
            "only a ticket that is {} can be",
            states.iter().map(|s| s.word()).collect::<Vec<_>>().join(" or ")
        )))
    }
}

/// What a person asks of a ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Approve,
    Reject,
    Deploy,
    Cancel,
}

/// The state `action` by `principal` takes ticket `t` to, or why it may not: the workflow's
/// rules in one pure function (the callers record who, when and the comment).
pub fn transition(t: &TicketRecord, action: Action, principal: &str) -> Result<TicketState> {
    use TicketState::*;
    let id = t.id;
    match action {
        Action::Approve | Action::Reject => {
            let (what, verb) = if action == Action::Approve { ("approved", "approve") } else { ("rejected", "reject") };
            not_in(t, what, &[Pending])?;
            if t.interested().contains(&principal) {
                let why = if t.pusher_user.as_deref() == Some(principal) { "pushed" } else { "made" };
                return Err(CtlError::forbidden(format!("{principal} {why} ticket #{id} and cannot {verb} it"))
                    .fix("another approver of this project and env has to"));
            }
            if t.approvals.iter().any(|a| a.principal() == principal) {
                return Err(
                    CtlError::busy(format!("{principal} already approved ticket #{id}")).fix("another approver has to")
                );
            }
            Ok(match action {
                Action::Reject => Rejected,
                _ if t.approvals.len() as u32 + 1 >= t.required => Approved,
                _ => Pending,
            })
        }
        Action::Deploy => not_in(t, "deployed", &[Approved, Failed, Interrupted]).map(|()| Deploying),
        Action::Cancel => {
            not_in(t, "cancelled", &[Pending, Approved, Deploying])?;
            // (A deploying ticket is cancelled when its deploy has stopped.)
            Ok(if t.state == Deploying { Deploying } else { Cancelled })
        }
    }
}

pub fn approve(app: &Arc<Core>, caller: &Caller, id: u64, comment: &str, yes: bool) -> Result<TicketRecord> {
    within("comment", comment, COMMENT_MAX)?;
    if caller.via == crate::ops::caller::Via::Socket && caller.user.is_none() {
        return Err(CtlError::forbidden(format!(
            "the socket's caller ({}) names no Slipway user, and an approval is a person's",
            caller.name
        ))
        .fix("say who you are: SLIPWAY_USER=<your slipway user> slipctl ticket approve …"));
    }
    let decided = update(app, id, |t| {
        let action = if yes { Action::Approve } else { Action::Reject };
        transition(t, action, &caller.principal)?;
        let audit = audit(caller);
        if yes {
            t.approvals.push(Approval {
                audit: audit.clone(),
                comment: comment.to_owned(),
                principal: Some(caller.principal.clone()),
            });
            if t.approvals.len() as u32 >= t.required {
                move_to(t, TicketState::Approved, audit, comment);
            } else {
                t.transitions.push(Transition {
                    state: TicketState::Pending,
                    audit,
                    comment: format!("approval {} of {}: {comment}", t.approvals.len(), t.required),
                });
            }
        } else {
            move_to(t, TicketState::Rejected, audit, comment);
        }
        Ok(())
    });
    let (actor, what) = (crate::ops::audit::Actor::of(caller), if yes { "ticket_approve" } else { "ticket_reject" });
    match &decided {
        Ok(t) => actor.did(&app.store, what, &format!("ticket #{id} {}/{}", t.project, t.env), "ok", comment),
        Err(e) => actor.did(&app.store, what, &format!("ticket #{id}"), "refused", &e.problem),
    }
    let ticket = decided?;
    match ticket.state {
        TicketState::Approved => app.ticket_changed("ticket_approved", &ticket, &caller.name),
        TicketState::Rejected => app.ticket_changed("ticket_rejected", &ticket, &caller.name),
        _ => {}
    }
    Ok(ticket)
}

/// Deploy a ticket's commit; answers once the deploy is numbered.
pub async fn deploy(app: &Arc<Core>, caller: &Caller, id: u64) -> Result<(TicketRecord, u64)> {
    deploy_overriding(app, caller, id, None).await
}

/// [`deploy`], past the env's windows or a freeze for `override_reason` (the caller is an
/// admin: the front ends check).
pub async fn deploy_overriding(
    app: &Arc<Core>,
    caller: &Caller,
    id: u64,
    override_reason: Option<String>,
) -> Result<(TicketRecord, u64)> {
    let ticket = app.store.ticket(id)?.ok_or_else(|| unknown(id))?;
    transition(&ticket, Action::Deploy, "")?;
    let op = match ticket.kind {
        TicketKind::Deploy => Op::Deploy(Box::new(match &ticket.build {
            // The build pinned when the ticket was made.
            Some(build) => DeployArgs {
                origin: Some(crate::engine::Origin::Build(Box::new(build.clone()), ticket.from_deploy)),
                user: Some(caller.name.clone()),
                override_reason,
                ..DeployArgs::of(&ticket.project, &ticket.env)
            },
            None => DeployArgs {
                git_ref: Some(ticket.git_ref.clone()),
                commit: Some(ticket.commit.clone()),
                user: Some(caller.name.clone()),
                override_reason,
                ..DeployArgs::of(&ticket.project, &ticket.env)
            },
        })),
        TicketKind::Rollback => Op::Rollback(RollbackArgs {
            project: ticket.project.clone(),
            env: ticket.env.clone(),
            to: None,
            hosts: None,
            user: Some(caller.name.clone()),
        }),
    };
    match runs::begin(app, op, Some((id, audit(caller)))).await? {
        Begun::Started(n) => Ok((app.store.ticket(id)?.ok_or_else(|| unknown(id))?, n)),
        Begun::Planned(_) => Err(CtlError::failed("a ticket's deploy is never a dry run")),
    }
}

/// Cancel a ticket: before it deploys, it is simply cancelled; while it deploys, the deploy is
/// stopped cleanly (and the ticket reads cancelled when it has).
pub fn cancel(app: &Core, caller: &Caller, id: u64) -> Result<TicketRecord> {
    let running = update(app, id, |t| {
        if transition(t, Action::Cancel, "")? == TicketState::Cancelled {
            move_to(t, TicketState::Cancelled, audit(caller), "");
        }
        Ok(())
    })?;
    if running.state == TicketState::Deploying
        && let Some(&n) = running.deploys.last()
    {
        match app.runs.get(n) {
            Some(run) => run.canceller.cancel(),
            None => {
                if app.store.deploy(n)?.is_some_and(|d| d.status == DeployStatus::Paused) {
                    app.store.decide(n, crate::state::store::Decision::Abort)?;
                }
            }
        }
    }
    Ok(running)
}

/// Take a ticket's deploy back with a rollback ticket, started at once unless the env asks
/// approval for rollbacks too.
pub async fn rollback(app: &Arc<Core>, caller: &Caller, id: u64) -> Result<(TicketRecord, Option<u64>)> {
    let original = app.store.ticket(id)?.ok_or_else(|| unknown(id))?;
    if original.kind != TicketKind::Deploy || original.deploys.is_empty() {
        return Err(CtlError::busy(format!("ticket #{id} has deployed nothing to take back")).fix("deploy it first"));
    }
    not_in(&original, "rolled back", &[TicketState::Succeeded, TicketState::Failed, TicketState::Interrupted])?;
    let (_, settings) = crate::engine::scope::env_of(&app.store, &original.project, &original.env)?;
    let created = audit(caller);
    let required = if settings.approval.rollback { settings.approval.required } else { 0 };
    // What the hosts ran before the deploy it takes back (one release, when they agree).
    let before: std::collections::BTreeSet<String> = match original.deploys.last() {
        Some(&n) => app.store.deploy(n)?.map(|d| d.hosts).unwrap_or_default(),
        None => Vec::new(),
    }
    .into_iter()
    .filter(|h| h.activated)
    .filter_map(|h| h.previous_release.map(|r| r.to_string()))
    .collect();
    let restores = (before.len() == 1).then(|| before.into_iter().next().unwrap_or_default());
    let mut ticket = TicketRecord {
        id: app.store.next_ticket_id()?,
        kind: TicketKind::Rollback,
        restores,
        title: format!("roll back #{id}: {}", original.title),
        description: String::new(),
        state: TicketState::Pending,
        requester: caller.name.clone(),
        requester_principal: Some(caller.principal.clone()),
        pushed_by: None,
        pusher_user: None,
        created: created.clone(),
        required,
        approvals: Vec::new(),
        deploys: Vec::new(),
        rollback_of: Some(id),
        start: None,
        transitions: vec![Transition { state: TicketState::Pending, audit: created.clone(), comment: String::new() }],
        ..original
    };
    if required == 0 {
        move_to(&mut ticket, TicketState::Approved, created, "a rollback needs no approval");
    }
    app.store.put_ticket(&ticket)?;
    if ticket.state != TicketState::Approved {
        return Ok((ticket, None));
    }
    let (ticket, n) = deploy(app, caller, ticket.id).await?;
    Ok((ticket, Some(n)))
}

/// The ticket's deploy was numbered: it is deploying.
pub fn on_started(app: &Core, id: u64, deploy: u64, by: Audit) {
    let r = update(app, id, |t| {
        // A paused deploy carried on by this server (after a restart) is the same deploy.
        if t.deploys.last() != Some(&deploy) {
            t.deploys.push(deploy);
        }
        if t.state != TicketState::Deploying {
            move_to(t, TicketState::Deploying, by, &format!("deploy #{deploy}"));
        }
        Ok(())
    });
    if let Err(e) = r {
        tracing::warn!("ticket #{id}: cannot record deploy #{deploy}: {}", e.problem);
    }
}

/// What a ticket reads once its deploy ended as `status`.
fn settled(status: DeployStatus, stopping: bool) -> Option<TicketState> {
    Some(match status {
        DeployStatus::Succeeded => TicketState::Succeeded,
        DeployStatus::Cancelled if stopping => TicketState::Interrupted,
        DeployStatus::Cancelled => TicketState::Cancelled,
        DeployStatus::Interrupted | DeployStatus::Running => TicketState::Interrupted,
        DeployStatus::Paused | DeployStatus::Planned => return None,
        _ => TicketState::Failed,
    })
}

/// The ticket's deploy ended: the ticket follows its outcome (a rollback ticket's success
/// marks the ticket it took back `rolled_back`).
pub fn on_finished(app: &Core, id: u64, record: &DeployRecord) {
    let (deploy, status) = (record.id, record.effective_status());
    let Some(state) = settled(status, app.is_stopping()) else { return };
    let ticket = update(app, id, |t| {
        if t.state == TicketState::Deploying {
            move_to(t, state, system(), &format!("deploy #{deploy} {}", status.word()));
        }
        Ok(())
    });
    if let Ok(t) = ticket
        && t.kind == TicketKind::Rollback
        && state == TicketState::Succeeded
        && let Some(of) = t.rollback_of
    {
        let _ = update(app, of, |o| {
            move_to(o, TicketState::RolledBack, system(), &format!("rolled back by ticket #{id}"));
            Ok(())
        });
    }
}

/// At start: deploys the last server left running read interrupted, and so do their tickets.
/// A leader of a shared database (`carried_on`) carries running deploys on instead
/// ([`crate::ops::runs::take_over`]): their tickets follow them.
pub fn recover(app: &Core, carried_on: bool) -> Result<usize> {
    for mut d in app.store.deploys(None, None, usize::MAX)? {
        if d.status == DeployStatus::Running && !carried_on {
            d.status = DeployStatus::Interrupted;
            d.error.get_or_insert_with(|| "the controller stopped while it ran".into());
            app.store.put_deploy(&d)?;
        }
    }
    let mut recovered = 0;
    for t in app.store.tickets()? {
        if t.state != TicketState::Deploying {
            continue;
        }
        let status = match t.deploys.last() {
            Some(&n) => app.store.deploy(n)?.map(|d| d.status).unwrap_or(DeployStatus::Interrupted),
            None => DeployStatus::Interrupted,
        };
        if carried_on && status == DeployStatus::Running {
            continue;
        }
        if let Some(state) = settled(status, true) {
            let _ = update(app, t.id, |t| {
                move_to(t, state, system(), "the server restarted");
                Ok(())
            });
            recovered += usize::from(state == TicketState::Interrupted);
        }
    }
    Ok(recovered)
}

/// Tickets the caller may see, newest first, filtered.
pub fn list(app: &Core, caller: &Caller, q: &TicketQuery) -> Result<Vec<TicketRecord>> {
    let mut out: Vec<TicketRecord> = app
        .store
        .tickets()?
        .into_iter()
        .filter(|t| caller.allows(&t.project, &t.env, Role::Viewer))
        .filter(|t| q.project.as_ref().is_none_or(|p| *p == t.project))
        .filter(|t| q.env.as_ref().is_none_or(|e| *e == t.env))
        .filter(|t| q.state.as_ref().is_none_or(|s| s == t.state.word()))
        .collect();
    out.truncate(q.limit.unwrap_or(100));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tickets::Approval;

    fn ticket(state: TicketState, required: u32, approved_by: &[&str], pusher: Option<&str>) -> TicketRecord {
        let audit = Audit { by: "dev".into(), at: 0, from: "x".into() };
        TicketRecord {
            id: 7,
            kind: TicketKind::Deploy,
            project: "a".into(),
            env: "prod".into(),
            git_ref: "v1".into(),
            commit: "c".repeat(40),
            commit_summary: String::new(),
            title: "t".into(),
            description: String::new(),
            state,
            requester: "dev".into(),
            requester_principal: Some("dev".into()),
            pushed_by: pusher.map(|p| format!("github:{p}")),
            pusher_user: pusher.map(str::to_owned),
            created: audit.clone(),
            required,
            approvals: approved_by
                .iter()
                .map(|p| Approval { audit: audit.clone(), comment: String::new(), principal: Some((*p).to_owned()) })
                .collect(),
            deploys: Vec::new(),
            rollback_of: None,
            restores: None,
            build: None,
            from_deploy: None,
            start: None,
            transitions: Vec::new(),
        }
    }

    /// (ticket state, approvals needed, approved by, pusher, action, principal) → new state or
    /// the refusal's kind.
    type Case = (
        TicketState,
        u32,
        &'static [&'static str],
        Option<&'static str>,
        Action,
        &'static str,
        std::result::Result<TicketState, crate::error::Kind>,
    );

    #[test]
    fn the_workflow_as_a_table() {
        use crate::error::Kind::{Busy, Forbidden};
        use Action::*;
        use TicketState::*;
        let cases: &[Case] = &[
            (Pending, 1, &[], None, Approve, "ann", Ok(Approved)),
            (Pending, 2, &[], None, Approve, "ann", Ok(Pending)),
            (Pending, 2, &["bob"], None, Approve, "ann", Ok(Approved)),
            (Pending, 2, &["ann"], None, Approve, "ann", Err(Busy)),
            (Pending, 1, &[], None, Approve, "dev", Err(Forbidden)),
            (Pending, 1, &[], None, Reject, "dev", Err(Forbidden)),
            (Pending, 1, &[], Some("eve"), Approve, "eve", Err(Forbidden)),
            (Pending, 1, &[], None, Reject, "ann", Ok(Rejected)),
            (Approved, 1, &["ann"], None, Approve, "bob", Err(Busy)),
            (Rejected, 1, &[], None, Deploy, "dev", Err(Busy)),
            (Pending, 1, &[], None, Deploy, "dev", Err(Busy)),
            (Approved, 1, &["ann"], None, Deploy, "dev", Ok(Deploying)),
            (Failed, 1, &["ann"], None, Deploy, "dev", Ok(Deploying)),
            (Interrupted, 1, &["ann"], None, Deploy, "dev", Ok(Deploying)),
            (Succeeded, 1, &["ann"], None, Deploy, "dev", Err(Busy)),
            (Pending, 1, &[], None, Cancel, "dev", Ok(Cancelled)),
            (Approved, 1, &["ann"], None, Cancel, "dev", Ok(Cancelled)),
            (Deploying, 1, &["ann"], None, Cancel, "dev", Ok(Deploying)),
            (Succeeded, 1, &["ann"], None, Cancel, "dev", Err(Busy)),
        ];
        for (i, (state, required, approved, pusher, action, principal, expected)) in cases.iter().enumerate() {
            let t = ticket(*state, *required, approved, *pusher);
            let got = transition(&t, *action, principal).map_err(|e| e.kind);
            assert_eq!(got, *expected, "case {i}: {state:?} {action:?} by {principal}");
        }
    }
}
