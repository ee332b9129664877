//! One front for the two kinds of source (`type = "git"` or `"svn"`): what deploys, checks,
//! tickets and the ref picker ask of a project's repository.

use std::path::Path;

use slipway_common::config::{EnvSettings, RepoType};

use crate::error::Result;
use crate::source::git::{self, Resolved};
use crate::source::svn;

/// Bring the repository up to date (git: the mirror is fetched) or make sure it answers (svn).
pub async fn fetch(settings: &EnvSettings, url: &str, mirror: &Path) -> Result<()> {
    match settings.repo_type {
        RepoType::Git => git::fetch(url, mirror).await,
        RepoType::Svn => svn::check(url).await,
    }
}

/// What `reference` names now (a branch, tag or commit; an svn path and revision).
pub async fn resolve(settings: &EnvSettings, url: &str, mirror: &Path, reference: &str) -> Result<Resolved> {
    match settings.repo_type {
        RepoType::Git => git::resolve(mirror, reference, url),
        RepoType::Svn => svn::resolve(url, reference, &settings.default_ref).await,
    }
}

/// The ref picker: branches, tags and recent commits (svn: revisions) with author and subject.
pub async fn picker(settings: &EnvSettings, url: &str, mirror: &Path) -> Result<serde_json::Value> {
    match settings.repo_type {
        RepoType::Git => git::picker(mirror, &settings.default_ref),
        RepoType::Svn => svn::picker(url, &settings.default_ref).await,
    }
}

/// A commit as people read it: git's first 12 hex digits, svn's `PATH@NNN` whole.
pub fn short(commit: &str) -> &str {
    if svn::is_svn_commit(commit) { commit } else { commit.get(..12).unwrap_or(commit) }
}
