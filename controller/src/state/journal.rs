//! Each operation's event journal: every engine event as the JSON of `--output jsonl`,
//! numbered 1, 2, 3… per deploy (the SSE `id:`), ending with an `outcome` event. `show` and the
//! server's event stream read it; a watcher is woken through [`subscribe`], never by polling.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;
use tokio::sync::watch;

use crate::error::Result;
use crate::state::backend::store_err;
use crate::state::store::Store;

const TREE: &str = "events";

fn key(id: u64, seq: u32) -> Vec<u8> {
    let mut k = id.to_be_bytes().to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

impl Store {
    /// Write `events` to deploy `id`'s journal numbered after `last` (its last event, as the
    /// one writer knows); the last number written.
    pub fn append_events(&self, id: u64, last: u32, events: &[Value]) -> Result<u32> {
        let db = self.backend();
        let mut seq = last;
        for event in events {
            seq += 1;
            db.put(TREE, &key(id, seq), &serde_json::to_vec(event).map_err(store_err)?)?;
        }
        Ok(seq)
    }

    /// The number of deploy `id`'s last event (0: none).
    pub fn last_event(&self, id: u64) -> Result<u32> {
        let last = self.backend().last(TREE, &id.to_be_bytes())?;
        Ok(last.and_then(|(k, _)| k[8..].try_into().ok()).map(u32::from_be_bytes).unwrap_or(0))
    }

    /// Deploy `id`'s events numbered after `after`, in order.
    pub fn events(&self, id: u64, after: u32) -> Result<Vec<(u32, Value)>> {
        self.raw_events(id, after)?
            .into_iter()
            .map(|(seq, raw)| serde_json::from_slice(&raw).map(|v| (seq, v)).map_err(store_err))
            .collect()
    }

    /// The same, each event as the JSON text it was written as (an event stream sends it on
    /// without parsing it into a tree and printing it again per watcher).
    pub fn raw_events(&self, id: u64, after: u32) -> Result<Vec<(u32, Vec<u8>)>> {
        let mut out = Vec::new();
        for (k, v) in self.backend().scan_after(TREE, &id.to_be_bytes(), &key(id, after))? {
            let seq = k[8..].try_into().map(u32::from_be_bytes).map_err(store_err)?;
            out.push((seq, v));
        }
        Ok(out)
    }

    pub fn flush(&self) -> Result<()> {
        self.backend().flush()
    }
}

/// Deploys whose journal a running operation of this process still writes.
fn live() -> &'static Mutex<std::collections::HashSet<u64>> {
    static LIVE: OnceLock<Mutex<std::collections::HashSet<u64>>> = OnceLock::new();
    LIVE.get_or_init(Default::default)
}

/// Whether an operation of this process still writes deploy `id`'s journal.
pub fn is_live(id: u64) -> bool {
    live().lock().expect("live journals").contains(&id)
}

/// An operation of this process writes deploy `id`'s journal from now on.
pub fn open(id: u64) {
    live().lock().expect("live journals").insert(id);
}

fn progress_map() -> &'static Mutex<HashMap<u64, (usize, usize)>> {
    static PROGRESS: OnceLock<Mutex<HashMap<u64, (usize, usize)>>> = OnceLock::new();
    PROGRESS.get_or_init(Default::default)
}

/// A running operation of this process has `done` of its `total` hosts done (live or failed).
pub fn set_progress(id: u64, done: usize, total: usize) {
    progress_map().lock().expect("progress").insert(id, (done, total));
}

/// How far a running operation of this process is: (hosts done, hosts in all).
pub fn progress(id: u64) -> Option<(usize, usize)> {
    progress_map().lock().expect("progress").get(&id).copied()
}

/// The operation writing deploy `id`'s journal is over; its watchers are told.
pub fn close(id: u64) {
    progress_map().lock().expect("progress").remove(&id);
    let mut live = live().lock().expect("live journals");
    live.remove(&id);
    if let Some(tx) = watchers().lock().expect("journal watchers").remove(&id) {
        tx.send_modify(|_| {});
    }
    changed();
}

fn watchers() -> &'static Mutex<HashMap<u64, watch::Sender<u32>>> {
    static WATCHERS: OnceLock<Mutex<HashMap<u64, watch::Sender<u32>>>> = OnceLock::new();
    WATCHERS.get_or_init(Default::default)
}

/// Woken with the last event's number each time deploy `id`'s journal grows in this process.
/// Subscribe before reading the journal, then nothing written in between is missed.
/// (For a journal nobody in this process writes, the receiver's sender is already gone.)
pub fn subscribe(id: u64) -> watch::Receiver<u32> {
    let live = live().lock().expect("live journals");
    if !live.contains(&id) {
        return watch::channel(0).1;
    }
    watchers().lock().expect("journal watchers").entry(id).or_insert_with(|| watch::channel(0).0).subscribe()
}

/// Tell this process's watchers of deploy `id` that its journal reached `seq`.
pub fn notify(id: u64, seq: u32) {
    if let Some(tx) = watchers().lock().expect("journal watchers").get(&id) {
        tx.send_replace(seq);
    }
    changed();
}

fn change_signal() -> &'static watch::Sender<u64> {
    static CHANGES: OnceLock<watch::Sender<u64>> = OnceLock::new();
    CHANGES.get_or_init(|| watch::channel(0).0)
}

/// Woken when anything a page shows changed in this process: a deploy's record or journal, a
/// ticket. The web pages' live streams wait on it (and then send at most once a second).
pub fn changes() -> watch::Receiver<u64> {
    change_signal().subscribe()
}

/// How many changes there have been in this process: a page records it when it renders, and
/// its live stream, opened later, sends what changed in between.
pub fn change_count() -> u64 {
    *change_signal().borrow()
}

/// Something a page shows changed.
pub fn changed() {
    change_signal().send_modify(|n| *n = n.wrapping_add(1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn journals_are_numbered_per_deploy_and_read_after_a_number() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.last_event(7).unwrap(), 0);
        let last = s.append_events(7, 0, &[json!({"n": 1}), json!({"n": 2}), json!({"n": 3})]).unwrap();
        assert_eq!(last, 3);
        s.append_events(8, 0, &[json!({"other": true})]).unwrap();
        s.append_events(6, 0, &[json!({"before": true})]).unwrap();
        assert_eq!(s.append_events(7, last, &[json!({"n": 4})]).unwrap(), 4);
        assert_eq!(s.last_event(7).unwrap(), 4);
        let after: Vec<u32> = s.events(7, 2).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(after, vec![3, 4], "only deploy 7's, only after 2");
        assert_eq!(s.events(7, 0).unwrap().len(), 4);
        assert_eq!(s.events(7, 4).unwrap().len(), 0);
        assert_eq!(s.events(8, 0).unwrap()[0].1, json!({"other": true}));
    }
}
