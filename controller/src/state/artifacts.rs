//! Builds pushed by CI (`slipctl artifact push`, `POST /api/v1/projects/{p}/artifacts`): the
//! package under `<home>/artifacts/<project>/<name>/` (laid out as a cache entry, but never
//! evicted) and its record in the `artifacts` tree. A name is taken once: records are written
//! by compare-and-swap from nothing and never changed.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{CtlError, Result};
use crate::state::home::Home;
use crate::state::store::{BuildInfo, Store};

const TREE: &str = "artifacts";

/// A build pushed by CI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushedArtifact {
    pub project: String,
    pub name: String,
    /// The commit CI built it from, as CI said (may be empty).
    pub commit: String,
    /// The build's manifest digest (hex): what deploys of it record.
    pub sha256: String,
    /// sha256 of the bytes pushed (hex).
    pub pushed_sha256: String,
    /// `file` (a WAR, a JAR: a release holding that one file), `tar` (an archive unpacked) or
    /// `dir` (a directory, from the command line).
    pub kind: String,
    /// The name of what was pushed (a file's name; the release holds it under this name).
    pub source: String,
    pub entries: u64,
    pub file_bytes: u64,
    pub compressed_bytes: u64,
    pub pushed_by: String,
    pub pushed_at: i64,
}

impl PushedArtifact {
    /// The build a deploy of it records.
    pub fn build(&self) -> BuildInfo {
        BuildInfo {
            sha256: self.sha256.clone(),
            commit: self.commit.clone(),
            commit_time: self.pushed_at,
            deploy: None,
            env: None,
            artifact: Some(self.name.clone()),
            excludes: Vec::new(),
            pre_deploy: Vec::new(),
            post_deploy: Vec::new(),
            svn: None,
        }
    }
}

fn key(project: &str, name: &str) -> Vec<u8> {
    format!("{project}\0{name}").into_bytes()
}

/// Where artifact `name` of `project` is kept.
pub fn dir(home: &Home, project: &str, name: &str) -> PathBuf {
    home.artifacts().join(project).join(name)
}

pub fn get(store: &Store, project: &str, name: &str) -> Result<Option<PushedArtifact>> {
    store.get(TREE, &key(project, name))
}

/// A project's artifacts, newest first.
pub fn list(store: &Store, project: &str) -> Result<Vec<PushedArtifact>> {
    let mut all: Vec<PushedArtifact> = store
        .backend()
        .scan(TREE, format!("{project}\0").as_bytes(), false)?
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
        .collect();
    all.sort_by(|a, b| b.pushed_at.cmp(&a.pushed_at).then(b.name.cmp(&a.name)));
    Ok(all)
}

/// Record a new artifact; refused (busy) when the name is taken, whoever took it first.
pub fn insert(store: &Store, artifact: &PushedArtifact) -> Result<()> {
    let bytes = serde_json::to_vec(artifact).map_err(|e| CtlError::failed(format!("artifact record: {e}")))?;
    let swapped =
        store.backend().compare_and_swap(TREE, &key(&artifact.project, &artifact.name), None, Some(&bytes))?;
    store.backend().flush()?;
    if !swapped {
        return Err(taken(&artifact.project, &artifact.name));
    }
    Ok(())
}

/// The refusal for a name that exists (artifacts are immutable).
pub fn taken(project: &str, name: &str) -> CtlError {
    CtlError::busy(format!("project {project} already has an artifact named '{name}', and artifacts never change"))
        .fix("push it under a new name (a version, e.g. 1.4.3)")
}
