//! Deploy freezes (`slipctl freeze create|list|rm`, the env page): a project+env takes no deploy
//! from `from` until `until`, for a reason, set by someone. Lifting one early keeps its record.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::state::joins::Done;
use crate::state::store::Store;

const TREE: &str = "freezes";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    pub id: u64,
    pub project: String,
    pub env: String,
    pub from: i64,
    pub until: i64,
    pub reason: String,
    pub by: String,
    pub created_at: i64,
    /// Lifted before its end: by whom and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifted: Option<Done>,
}

impl Freeze {
    /// Whether it holds `project`/`env` at `now`.
    pub fn holds(&self, project: &str, env: &str, now: i64) -> bool {
        self.lifted.is_none() && self.project == project && self.env == env && self.from <= now && now < self.until
    }
}

impl Store {
    pub fn next_freeze_id(&self) -> Result<u64> {
        let id = self.backend().increment("next_freeze_id")?;
        self.flush()?;
        Ok(id)
    }
    pub fn put_freeze(&self, f: &Freeze) -> Result<()> {
        self.put(TREE, &f.id.to_be_bytes(), f)?;
        crate::state::journal::changed();
        Ok(())
    }
    pub fn freeze(&self, id: u64) -> Result<Option<Freeze>> {
        self.get(TREE, &id.to_be_bytes())
    }
    /// Every freeze, newest first.
    pub fn freezes(&self) -> Result<Vec<Freeze>> {
        let mut all: Vec<Freeze> = self.all(TREE)?;
        all.reverse();
        Ok(all)
    }
}
