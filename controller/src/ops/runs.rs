//! The operations this server carries out: started for a ticket or an API call, watched to
//! their end (the ticket follows the deploy's outcome), and stopped cleanly on SIGTERM.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::engine::{self, Canceller, DeployArgs, Event, RollbackArgs};
use crate::error::{CtlError, Result};
use crate::ops::Core;
use crate::ops::tickets;
use crate::state::store::DeployRecord;

/// The operations a remotely run command started, for whoever has to stop them (the asking
/// `slipctl` went away, or the server is stopping).
pub type Cancellers = std::sync::Arc<std::sync::Mutex<Vec<crate::engine::Canceller>>>;

/// One running operation.
#[derive(Clone)]
pub struct Run {
    pub canceller: Canceller,
}

#[derive(Default)]
pub struct Runs {
    running: Mutex<HashMap<u64, Run>>,
    /// Cancel handles of commands run here for a `slipctl` (socket or `--server`).
    commands: Mutex<Vec<Cancellers>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Runs {
    pub fn get(&self, id: u64) -> Option<Run> {
        self.running.lock().expect("runs").get(&id).cloned()
    }

    /// The deploys running here now.
    pub fn ids(&self) -> Vec<u64> {
        self.running.lock().expect("runs").keys().copied().collect()
    }

    pub fn count(&self) -> usize {
        self.running.lock().expect("runs").len()
    }

    /// An operation a command run here started (`slipctl deploy` through the socket): running
    /// here like any other until [`Runs::untrack`].
    pub fn track(&self, id: u64, canceller: Canceller) {
        self.running.lock().expect("runs").insert(id, Run { canceller });
    }

    pub fn untrack(&self, id: u64) {
        self.running.lock().expect("runs").remove(&id);
    }

    /// Keep a task SIGTERM waits for, and the cancel handles of what it runs.
    pub fn keep(&self, task: JoinHandle<()>, cancel: Option<Cancellers>) {
        let mut tasks = self.tasks.lock().expect("runs");
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        if let Some(c) = cancel {
            let mut commands = self.commands.lock().expect("runs");
            commands.retain(|c| Arc::strong_count(c) > 1);
            commands.push(c);
        }
    }
}

pub enum Op {
    Deploy(Box<DeployArgs>),
    Rollback(RollbackArgs),
}

/// How a start went: numbered and running, or (a dry run) already done.
pub enum Begun {
    Started(u64),
    Planned(Box<DeployRecord>),
}

/// Start `op` (for `ticket`, if any); answers once it is numbered, or with why it did not start
/// (a busy lock: 409 naming the deploy that holds it).
pub async fn begin(app: &Arc<Core>, op: Op, for_ticket: Option<(u64, crate::state::tickets::Audit)>) -> Result<Begun> {
    // The ticket follows its deploy in step with the journal: deploying once it is numbered,
    // and its end before the outcome is published.
    let mut then = engine::journal::Then::default();
    if let Some((t, by)) = &for_ticket {
        let (started, ended, t, by) = (app.clone(), app.clone(), *t, by.clone());
        then.on_start = Some(Box::new(move |n| tickets::on_started(&started, t, n, by)));
        then.on_end = Some(Box::new(move |record: &DeployRecord| tickets::on_finished(&ended, t, record)));
    }
    let running = match op {
        Op::Deploy(args) => engine::start_deploy_then(app.home.clone(), *args, then),
        Op::Rollback(args) => engine::start_rollback_then(app.home.clone(), args, then),
    };
    let canceller = running.canceller();
    let (tx, rx) = oneshot::channel::<Result<Begun>>();
    let this = app.clone();
    let task = tokio::spawn(async move {
        let mut tx = Some(tx);
        let mut id = None;
        let result = running
            .finish(|event| {
                if let Event::Started { id: n } = event {
                    id = Some(n);
                    this.runs.running.lock().expect("runs").insert(n, Run { canceller: canceller.clone() });
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Ok(Begun::Started(n)));
                    }
                }
            })
            .await;
        if let Some(n) = id {
            this.runs.running.lock().expect("runs").remove(&n);
        }
        if let Some(tx) = tx.take() {
            let _ = tx.send(match &result {
                Ok(record) => Ok(Begun::Planned(Box::new(record.clone()))),
                Err(e) => Err(e.clone()),
            });
        }
    });
    app.runs.keep(task, None);
    rx.await.map_err(|_| CtlError::failed("the operation ended before it started"))?
}

/// Cancel everything running and wait (at most `wait`) for it to reach a safe point and be
/// recorded; whether it all did.
pub async fn stop_all(app: &Core, wait: Duration) -> bool {
    for run in app.runs.running.lock().expect("runs").values() {
        run.canceller.cancel();
    }
    for cancellers in app.runs.commands.lock().expect("runs").iter() {
        for c in cancellers.lock().expect("cancellers").iter() {
            c.cancel();
        }
    }
    let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *app.runs.tasks.lock().expect("runs"));
    tokio::time::timeout(wait, async {
        for t in tasks {
            let _ = t.await;
        }
    })
    .await
    .is_ok()
}

/// Promote or abort a paused deploy: its waiter here takes the decision (`None`); with none
/// (the server restarted since), this server carries it on, for its ticket if it has one.
pub async fn decide_paused(
    core: &Arc<Core>,
    caller: &crate::ops::caller::Caller,
    id: u64,
    decision: crate::state::store::Decision,
) -> Result<Option<Begun>> {
    let record = core.store.decide(id, decision)?;
    if crate::state::journal::is_live(id) {
        return Ok(None);
    }
    let args = DeployArgs {
        resume: Some((id, decision)),
        user: Some(caller.name.clone()),
        ..DeployArgs::of(&record.project, &record.env)
    };
    let ticket = core.store.tickets()?.into_iter().find(|t| t.deploys.last() == Some(&id));
    let for_ticket = ticket.map(|t| (t.id, tickets::audit(caller)));
    Ok(Some(begin(core, Op::Deploy(Box::new(args)), for_ticket).await?))
}

/// This process now leads (state::leader): carry on every deploy the last leader left running,
/// from its journal, for its ticket if it has one. A rollback left running cannot be carried on:
/// it reads interrupted (`slipctl rollback` again). The deploys carried on, by number.
pub async fn take_over(core: &Arc<Core>) -> Result<Vec<u64>> {
    let mut carried = Vec::new();
    for d in core.store.deploys(None, None, usize::MAX)? {
        if d.status != crate::state::store::DeployStatus::Running || core.runs.get(d.id).is_some() {
            continue;
        }
        if d.kind != crate::state::store::DeployKind::Deploy {
            let mut d = d;
            d.status = crate::state::store::DeployStatus::Interrupted;
            d.error.get_or_insert_with(|| "the leader that ran it stopped; roll back again".into());
            core.store.put_deploy(&d)?;
            continue;
        }
        let args =
            DeployArgs { takeover: Some(d.id), user: Some(d.user.clone()), ..DeployArgs::of(&d.project, &d.env) };
        let ticket = core.store.tickets()?.into_iter().find(|t| t.deploys.last() == Some(&d.id));
        let for_ticket = ticket.map(|t| (t.id, crate::ops::tickets::system()));
        match begin(core, Op::Deploy(Box::new(args)), for_ticket).await {
            Ok(_) => carried.push(d.id),
            Err(e) => {
                tracing::error!("cannot carry on deploy #{}: {e}", d.id);
                let mut d = d;
                d.status = crate::state::store::DeployStatus::Interrupted;
                d.error = Some(format!("the new leader could not carry it on: {e}"));
                core.store.put_deploy(&d)?;
            }
        }
    }
    Ok(carried)
}
