//! One operation at a time per project+env: the lock in controller state, and the dense
//! deploy numbers (the generation agents enforce).
use std::path::PathBuf;

use slipway_common::ReleaseId;
use slipway_common::time::unix_now;

use crate::engine::events::Emitter;
use crate::error::{CtlError, Result};
use crate::state::home::Home;
use crate::state::store::{DeployKind, DeployRecord, LockRecord, Store, hostname};

/// Holds the project+env lock; released when dropped (the deploy ended, however it ended).
pub struct LockGuard {
    pub(crate) state: PathBuf,
    pub(crate) project: String,
    pub(crate) env: String,
    pub(crate) op: u64,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // The operation is over whether or not the release below can be written (the database
        // down): a lock it leaves behind is then known, in this process, to hold nothing.
        crate::state::store::op_ended(self.op);
        if let Ok(store) = Store::open(&self.state) {
            let _ = store.release_lock(&self.project, &self.env, std::process::id(), self.op);
        }
    }
}

/// Number the operation (holding its lock) and record it as running.
pub(crate) fn number(home: &Home, record: &mut DeployRecord) -> Result<()> {
    let store = Store::open(&home.state())?;
    record.id = store.next_deploy_id()?;
    let lock = lock_record(record);
    store.acquire_lock(&lock)?.map_err(|holder| CtlError::failed(format!("lost the lock to {}", holder.describe())))?;
    store.put_deploy(record)?;
    Ok(())
}

pub(crate) fn lock_record(record: &DeployRecord) -> LockRecord {
    LockRecord {
        project: record.project.clone(),
        env: record.env.clone(),
        deploy_id: record.id,
        user: record.user.clone(),
        host: hostname(),
        pid: std::process::id(),
        since: unix_now(),
        op: record.op,
    }
}

/// Take the lock of project+env (not numbered yet: nothing is recorded until [`number`]).
pub(crate) fn take_lock(home: &Home, record: &DeployRecord, reporter: &Emitter) -> Result<LockGuard> {
    let store = Store::open(&home.state())?;
    match store.acquire_lock(&lock_record(record))? {
        Err(holder) => {
            let fix = if store.held_by_paused(&holder)? {
                format!(
                    "deploy #{id} is paused after its canary: `slipctl promote {id}` or `slipctl abort {id}`",
                    id = holder.deploy_id
                )
            } else {
                format!(
                    "wait for it to finish, or if that process is gone run `slipctl unlock {} {}`",
                    record.project, record.env
                )
            };
            return Err(CtlError::busy(format!(
                "{}/{} is locked by {}",
                record.project,
                record.env,
                holder.describe()
            ))
            .fix(fix));
        }
        Ok(Some(dead)) => reporter.say(format!("took over the lock of {}, whose process is gone", dead.describe())),
        Ok(None) => {}
    }
    crate::state::store::op_started(record.op);
    Ok(LockGuard { state: home.state(), project: record.project.clone(), env: record.env.clone(), op: record.op })
}

/// A release id newer than any this project+env has used, so ids stay unique and sortable.
pub(crate) async fn next_release_id(home: &Home, project: &str, env: &str, commit: &str) -> Result<ReleaseId> {
    let last = {
        let store = Store::open(&home.state())?;
        store
            .deploys(Some(project), Some(env), 50)?
            .into_iter()
            .filter(|d| d.kind == DeployKind::Deploy)
            .filter_map(|d| d.release)
            .max()
    };
    loop {
        let id = ReleaseId::new(unix_now(), commit)?;
        // Compared by time only: a new id must be newer than the last, whatever the commits.
        if last.as_ref().is_none_or(|l| id.as_str()[..15] > l.as_str()[..15]) {
            return Ok(id);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
