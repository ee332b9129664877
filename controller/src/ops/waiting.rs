//! Tickets that start by themselves: a webhook's (or an artifact rule's) ticket that a freeze
//! or a window holds waits, listed with what holds it, and starts once nothing does; an
//! approved ticket scheduled for a time starts then (within its window), unless its expiry
//! passed first. The leader looks each second at the tickets marked waiting (an index in the
//! store, so a restarted or new leader carries on where the last one was).

use std::sync::Arc;
use std::time::Duration;

use slipway_common::time::{format_utc, unix_now};

use crate::error::{CtlError, Result};
use crate::ops::Core;
use crate::ops::caller::{Caller, Via};
use crate::ops::tickets::{self, audit, unknown};
use crate::state::tickets::{AutoStart, TicketRecord, TicketState, Transition};

/// What became of an approved ticket asked to deploy as soon as it may.
pub enum Started {
    Deploy(u64),
    /// Held (a freeze, a window): it waits, and says why.
    Waiting(String),
}

/// Deploy approved ticket `id` now, or leave it waiting for what holds its env.
pub async fn deploy_or_wait(core: &Arc<Core>, caller: &Caller, id: u64) -> Result<Started> {
    let t = core.store.ticket(id)?.ok_or_else(|| unknown(id))?;
    let (_, settings) = crate::engine::scope::env_of(&core.store, &t.project, &t.env)?;
    if let Some(held) = crate::engine::policy::held(&core.store, &settings, unix_now())? {
        let why = held.describe(&t.project, &t.env);
        set_start(core, id, AutoStart { at: None, expires: None, by: audit(caller), waiting: Some(why.clone()) }, "")?;
        return Ok(Started::Waiting(why));
    }
    let (_, n) = tickets::deploy(core, caller, id).await?;
    Ok(Started::Deploy(n))
}

fn set_start(core: &Core, id: u64, start: AutoStart, note: &str) -> Result<TicketRecord> {
    let t = tickets::update(core, id, |t| {
        if t.state != TicketState::Approved {
            return Err(CtlError::busy(format!(
                "ticket #{id} is {}: only an approved ticket starts by itself",
                t.state.word()
            ))
            .fix("approve it first"));
        }
        if !note.is_empty() {
            t.transitions.push(Transition { state: t.state, audit: start.by.clone(), comment: note.to_owned() });
        }
        t.start = Some(start);
        Ok(())
    })?;
    core.store.mark_starting(id, true)?;
    core.ticket_changed("ticket_scheduled", &t, &t.start.as_ref().map(|s| s.by.by.clone()).unwrap_or_default());
    Ok(t)
}

/// Schedule approved ticket `id` to start at `at` (within its env's windows), not after `expires`.
pub fn schedule(core: &Core, caller: &Caller, id: u64, at: i64, expires: Option<i64>) -> Result<TicketRecord> {
    if expires.is_some_and(|e| e <= at.max(unix_now())) {
        return Err(CtlError::bad("the schedule expires before it starts").fix("give --expires a later time"));
    }
    let note = format!(
        "scheduled for {}{}",
        format_utc(at),
        expires.map(|e| format!(", not after {}", format_utc(e))).unwrap_or_default()
    );
    set_start(core, id, AutoStart { at: Some(at), expires, by: audit(caller), waiting: None }, &note)
}

/// Take ticket `id`'s schedule (or its wait) back; recorded on the ticket.
pub fn unschedule(core: &Core, caller: &Caller, id: u64) -> Result<TicketRecord> {
    let t = tickets::update(core, id, |t| {
        if t.start.take().is_none() {
            return Err(CtlError::busy(format!("ticket #{id} is not scheduled")).fix("nothing to cancel"));
        }
        t.transitions.push(Transition { state: t.state, audit: audit(caller), comment: "schedule cancelled".into() });
        Ok(())
    })?;
    core.store.mark_starting(id, false)?;
    core.ticket_changed("ticket_unscheduled", &t, &caller.name);
    Ok(t)
}

/// The caller a ticket's own start deploys as: whoever set it up.
fn starter(start: &AutoStart) -> Caller {
    Caller {
        principal: start.by.by.clone(),
        user: None,
        name: start.by.by.clone(),
        admin: false,
        grants: Vec::new(),
        via: Via::Webhook,
        from: "scheduler".into(),
    }
}

/// One look at every waiting ticket: start those that may, expire those past their expiry,
/// note what holds the rest.
pub async fn tick(core: &Arc<Core>) -> Result<()> {
    for id in core.store.starting_tickets()? {
        let Some(t) = core.store.ticket(id)? else {
            core.store.mark_starting(id, false)?;
            continue;
        };
        let Some(start) = t.start.clone().filter(|_| t.state == TicketState::Approved) else {
            core.store.mark_starting(id, false)?;
            continue;
        };
        let now = unix_now();
        if let Some(expired) = start.expires.filter(|e| now >= *e) {
            let note = format!("its schedule expired at {} before it could start", format_utc(expired));
            let t = tickets::update(core, id, |t| {
                t.start = None;
                t.state = TicketState::Cancelled;
                t.transitions.push(Transition {
                    state: TicketState::Cancelled,
                    audit: tickets::system(),
                    comment: note,
                });
                Ok(())
            })?;
            core.store.mark_starting(id, false)?;
            core.ticket_changed("ticket_cancelled", &t, "slipway");
            continue;
        }
        let waiting = if let Some(at) = start.at.filter(|at| now < *at) {
            Some(format!("scheduled for {}", format_utc(at)))
        } else {
            let (_, settings) = crate::engine::scope::env_of(&core.store, &t.project, &t.env)?;
            crate::engine::policy::held(&core.store, &settings, now)?.map(|h| h.describe(&t.project, &t.env))
        };
        if let Some(why) = waiting {
            if start.waiting.as_deref() != Some(why.as_str()) {
                tickets::update(core, id, |t| {
                    if let Some(s) = t.start.as_mut() {
                        s.waiting = Some(why.clone());
                    }
                    Ok(())
                })?;
            }
            continue;
        }
        match tickets::deploy(core, &starter(&start), id).await {
            Ok(_) => {
                tickets::update(core, id, |t| {
                    t.start = None;
                    Ok(())
                })?;
                core.store.mark_starting(id, false)?;
            }
            // Busy (another deploy holds the env) or refused: it keeps waiting, saying why.
            Err(e) => {
                let why = e.problem.clone();
                tickets::update(core, id, |t| {
                    if let Some(s) = t.start.as_mut() {
                        s.waiting = Some(why.clone());
                    }
                    Ok(())
                })?;
            }
        }
    }
    Ok(())
}

/// The leader's loop over [`tick`], once a second, until the process stops.
pub async fn run(core: Arc<Core>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Err(e) = tick(&core).await {
            tracing::warn!(error = %e, "cannot look at waiting tickets");
        }
    }
}
