//! Who leads, when the state is in PostgreSQL. Of the `slipctl serve` processes that share one
//! database, one leads: it holds a session advisory lock on a connection of its own (PostgreSQL
//! releases it when that session ends, however the process died) and alone runs operations.
//! The others are standbys: they serve reads and wait for the lock.
//!
//! Each lead has an epoch, one more than the last (a counter in the state, taken once the lock
//! is held). The generation the agents enforce is `epoch << 40 | deploy id`: a later lead
//! outranks every request of an earlier one, so a leader that lost the lead without knowing it
//! (partitioned, paused) cannot flip a host the new leader has touched. With sled there is one
//! controller, epoch 0, and the generation is the deploy id as before.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::state::store::Store;

/// The advisory lock's key ("slipway" in ASCII, as a number).
pub const LOCK_KEY: i64 = 0x0073_6c69_7077_6179;

const TREE: &str = "meta";
const KEY: &[u8] = b"leader";
const EPOCHS: &str = "leader_epoch";

static EPOCH: AtomicU64 = AtomicU64::new(0);
static ROLE: AtomicU8 = AtomicU8::new(Role::Alone as u8);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// sled, or a command line: no one else to lead.
    Alone = 0,
    Standby = 1,
    Leader = 2,
}

impl Role {
    /// As `GET /healthz` says it: a server alone leads.
    pub fn word(self) -> &'static str {
        match self {
            Role::Alone | Role::Leader => "leader",
            Role::Standby => "standby",
        }
    }
}

pub fn role() -> Role {
    match ROLE.load(Ordering::SeqCst) {
        1 => Role::Standby,
        2 => Role::Leader,
        _ => Role::Alone,
    }
}

pub fn set_role(role: Role) {
    ROLE.store(role as u8, Ordering::SeqCst);
}

/// This process's epoch (0 with sled).
pub fn epoch() -> u64 {
    EPOCH.load(Ordering::SeqCst)
}

/// The generation agents are sent for operation `id`.
pub fn generation(id: u64) -> u64 {
    (epoch() << 40) | (id & ((1 << 40) - 1))
}

/// The deploy number within a generation (what an agent's refusal names).
pub fn id_of(generation: u64) -> u64 {
    generation & ((1 << 40) - 1)
}

/// The lead as recorded by whoever holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaderRecord {
    /// Where people and `slipctl` reach it.
    pub url: String,
    pub epoch: u64,
    pub since: i64,
    pub host: String,
    pub pid: u32,
}

/// Who leads now, as recorded (a leader that died leaves its record until the next one writes).
pub fn current(store: &Store) -> Result<Option<LeaderRecord>> {
    store.get(TREE, KEY)
}

/// The lock is ours: take the next epoch and say so. From now on this process's generations
/// outrank every earlier leader's.
pub fn took_lead(store: &Store, url: &str) -> Result<LeaderRecord> {
    let epoch = store.backend().increment(EPOCHS)?;
    let record = LeaderRecord {
        url: url.to_owned(),
        epoch,
        since: slipway_common::time::unix_now(),
        host: crate::state::store::hostname(),
        pid: std::process::id(),
    };
    store.put(TREE, KEY, &record)?;
    EPOCH.store(epoch, Ordering::SeqCst);
    set_role(Role::Leader);
    Ok(record)
}

/// A command line on a shared database works in the current epoch (its requests are not
/// fenced, but neither are they refused as older than the leader's).
pub fn adopt_current_epoch(store: &Store) -> Result<()> {
    if let Some(record) = current(store)? {
        EPOCH.fetch_max(record.epoch, Ordering::SeqCst);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_epoch_outranks_every_deploy_of_an_earlier_one() {
        EPOCH.store(0, Ordering::SeqCst);
        assert_eq!(generation(41), 41, "sled: the deploy id, as before");
        EPOCH.store(3, Ordering::SeqCst);
        let old = generation(1_000_000);
        EPOCH.store(4, Ordering::SeqCst);
        let new = generation(2);
        assert!(new > old);
        assert_eq!(id_of(new), 2);
        EPOCH.store(0, Ordering::SeqCst);
    }
}
