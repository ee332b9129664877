//! The agent's own state in sled (`state_dir/agent.sled`): per project+env, where it lives, the
//! highest generation seen, and what is known about each release. The filesystem stays the
//! truth for which releases exist and which is current; see `reconcile`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::AgentError;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReleaseMeta {
    pub commit: String,
    pub git_ref: String,
    pub deploy_id: u64,
    pub staged_at: i64,
    /// Set the first time the release is made current.
    pub activated_at: Option<i64>,
    /// What was current when a deploy activated this release: where rollback goes from here.
    pub previous: Option<String>,
    /// When a rollback moved `current` away from this release: it no longer counts toward
    /// `keep_releases` (cleared if it is made current again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_at: Option<i64>,
    /// The release hooks this release was deployed with: a rollback to it runs these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<RecordedHooks>,
}

/// The hook lines a release was staged with, kept for a rollback to it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordedHooks {
    pub pre_release: Vec<String>,
    pub post_release: Vec<String>,
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetRecord {
    pub project: String,
    pub env: String,
    pub deploy_to: PathBuf,
    pub current: PathBuf,
    pub generation: u64,
    pub current_release: Option<String>,
    pub releases: BTreeMap<String, ReleaseMeta>,
}

impl TargetRecord {
    pub fn key(project: &str, env: &str) -> String {
        format!("{project}/{env}")
    }
}

/// sled behind a small interface, so the store can be swapped.
#[derive(Clone)]
pub struct AgentState {
    db: sled::Db,
    targets: sled::Tree,
}

fn state_err(e: impl std::fmt::Display) -> AgentError {
    AgentError::State(e.to_string())
}

impl AgentState {
    pub fn open(state_dir: &Path) -> Result<Self, AgentError> {
        std::fs::create_dir_all(state_dir).map_err(|e| AgentError::io("cannot create state dir", state_dir, e))?;
        let path = state_dir.join("agent.sled");
        let db = sled::open(&path).map_err(|e| {
            AgentError::State(format!("cannot open {}: {e} (is another slipd using this state_dir?)", path.display()))
        })?;
        let targets = db.open_tree("targets").map_err(state_err)?;
        Ok(AgentState { db, targets })
    }

    pub fn get(&self, key: &str) -> Result<Option<TargetRecord>, AgentError> {
        match self.targets.get(key).map_err(state_err)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(state_err),
        }
    }

    /// Write a record and flush it to disk before returning.
    pub fn put(&self, record: &TargetRecord) -> Result<(), AgentError> {
        let key = TargetRecord::key(&record.project, &record.env);
        let bytes = serde_json::to_vec(record).map_err(state_err)?;
        self.targets.insert(key, bytes).map_err(state_err)?;
        self.db.flush().map_err(state_err)?;
        Ok(())
    }

    /// Every record that can be read, and (key, why) for each that cannot: one damaged record
    /// never hides the others.
    pub fn all_lenient(&self) -> (Vec<TargetRecord>, Vec<(String, String)>) {
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for item in self.targets.iter() {
            match item {
                Ok((key, value)) => match serde_json::from_slice::<TargetRecord>(&value) {
                    Ok(record) => good.push(record),
                    Err(e) => bad.push((String::from_utf8_lossy(&key).into_owned(), e.to_string())),
                },
                Err(e) => bad.push(("?".into(), e.to_string())),
            }
        }
        (good, bad)
    }
}
