//! The narrow interface the typed [`Store`](super::store::Store) is built on: named trees of
//! byte keys and JSON values, with compare-and-swap and a counter. sled implements it (the
//! embedded default), and so does PostgreSQL (`state::postgres`: one table `(tree, key, value)`),
//! chosen by `[state] url` in the home's `config.toml`; nothing above this file changes.
//!
//! sled lets one process open a database. A process that serves (`slipctl serve`) [`pin`]s the
//! state open for its lifetime, so every `Store::open` in it (the engine opens the store for
//! short transactions) shares that handle instead of waiting for a lock it holds itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{CtlError, Result};

pub fn store_err(e: impl std::fmt::Display) -> CtlError {
    CtlError::failed(format!("controller state: {e}"))
}

/// What the typed store needs from a database.
pub trait Backend: Send + Sync {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Insert or replace; the previous value.
    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>>;
    fn remove(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Set `key` to `new` only if it is `old` now (`None`: absent); whether it was.
    fn compare_and_swap(&self, tree: &str, key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) -> Result<bool>;
    /// Entries whose key starts with `prefix`, in key order (or reversed).
    fn scan(&self, tree: &str, prefix: &[u8], reverse: bool) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Entries whose key starts with `prefix` and sorts after `after`, in key order.
    fn scan_after(&self, tree: &str, prefix: &[u8], after: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// The last entry whose key starts with `prefix`.
    fn last(&self, tree: &str, prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>>;
    /// Add one to the counter `name` and return it (1, 2, 3…).
    fn increment(&self, name: &str) -> Result<u64>;
    /// Make every write so far durable.
    fn flush(&self) -> Result<()>;
    /// The names of the trees that hold entries (`slipctl state migrate` copies them all).
    fn tree_names(&self) -> Result<Vec<String>>;
}

pub struct Sled {
    db: sled::Db,
}

impl Sled {
    pub fn new(db: sled::Db) -> Sled {
        Sled { db }
    }

    fn tree(&self, name: &str) -> Result<sled::Tree> {
        self.db.open_tree(name).map_err(store_err)
    }
}

fn owned(v: Option<sled::IVec>) -> Option<Vec<u8>> {
    v.map(|b| b.to_vec())
}

impl Backend for Sled {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(owned(self.tree(tree)?.get(key).map_err(store_err)?))
    }

    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(owned(self.tree(tree)?.insert(key, value).map_err(store_err)?))
    }

    fn remove(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(owned(self.tree(tree)?.remove(key).map_err(store_err)?))
    }

    fn compare_and_swap(&self, tree: &str, key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) -> Result<bool> {
        Ok(self.tree(tree)?.compare_and_swap(key, old, new).map_err(store_err)?.is_ok())
    }

    fn scan(&self, tree: &str, prefix: &[u8], reverse: bool) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let tree = self.tree(tree)?;
        let iter = tree.scan_prefix(prefix);
        let pairs =
            |r: sled::Result<(sled::IVec, sled::IVec)>| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(store_err);
        if reverse { iter.rev().map(pairs).collect() } else { iter.map(pairs).collect() }
    }

    fn scan_after(&self, tree: &str, prefix: &[u8], after: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        use std::ops::Bound;
        self.tree(tree)?
            .range::<&[u8], _>((Bound::Excluded(after), Bound::Unbounded))
            .take_while(|r| r.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(store_err))
            .collect()
    }

    fn last(&self, tree: &str, prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.tree(tree)?
            .scan_prefix(prefix)
            .next_back()
            .transpose()
            .map(|o| o.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .map_err(store_err)
    }

    fn increment(&self, name: &str) -> Result<u64> {
        self.tree("meta")?
            .update_and_fetch(name, |old| {
                let n = old.and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0) + 1;
                Some(n.to_be_bytes().to_vec())
            })
            .map_err(store_err)?
            .and_then(|b| b.as_ref().try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| store_err(format!("counter {name}")))
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map(|_| ()).map_err(store_err)
    }

    fn tree_names(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .db
            .tree_names()
            .into_iter()
            .map(|n| String::from_utf8_lossy(&n).into_owned())
            .filter(|n| n != "__sled__default")
            .collect();
        names.sort();
        Ok(names)
    }
}

fn pinned() -> &'static Mutex<HashMap<PathBuf, Arc<dyn Backend>>> {
    static PINNED: OnceLock<Mutex<HashMap<PathBuf, Arc<dyn Backend>>>> = OnceLock::new();
    PINNED.get_or_init(Default::default)
}

/// The backend this process holds open for `dir`, if it pinned one.
pub fn pinned_for(dir: &Path) -> Option<Arc<dyn Backend>> {
    pinned().lock().expect("pinned stores").get(dir).cloned()
}

/// Keep `backend` open for `dir` in this process until [`unpin`].
pub fn pin(dir: &Path, backend: Arc<dyn Backend>) {
    pinned().lock().expect("pinned stores").insert(dir.to_owned(), backend);
}

pub fn unpin(dir: &Path) {
    pinned().lock().expect("pinned stores").remove(dir);
}
