//! Project revisions: every saved change of a project file (page, API, `slipctl project apply`,
//! a revert), numbered per project, with who, when and the whole text.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::state::store::Store;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    pub project: String,
    /// 1, 2, 3… per project.
    pub n: u64,
    pub by: String,
    pub at: i64,
    /// The whole project file as saved.
    pub text: String,
    /// What the change was, when it says (`revert to revision 1`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

fn key(project: &str, n: u64) -> Vec<u8> {
    let mut k = format!("{project}/").into_bytes();
    k.extend_from_slice(&n.to_be_bytes());
    k
}

impl Store {
    pub fn revision(&self, project: &str, n: u64) -> Result<Option<Revision>> {
        self.get("project_revisions", &key(project, n))
    }

    pub fn put_revision(&self, revision: &Revision) -> Result<()> {
        self.put("project_revisions", &key(&revision.project, revision.n), revision)
    }

    /// A project's revisions, oldest first.
    pub fn revisions(&self, project: &str) -> Result<Vec<Revision>> {
        self.backend()
            .scan("project_revisions", format!("{project}/").as_bytes(), false)?
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v).map_err(crate::state::backend::store_err))
            .collect()
    }
}
