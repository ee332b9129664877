//! Builds pushed by CI, for `slipctl artifact push|list` and `POST|GET
//! /api/v1/projects/{p}/artifacts` alike: checked (name, commit, the digest the pusher
//! declared), made into a package by the agents' rules (`source::pushed`), kept under
//! `<home>/artifacts/<project>/<name>/` and recorded once (`state::artifacts`).

use std::path::Path;

use sha2::{Digest, Sha256};
use slipway_common::time::unix_now;

use crate::error::{Context, CtlError, Result};
use crate::source::{artifact, pushed};
use crate::state::artifacts::{self as records, PushedArtifact};
use crate::state::home::Home;
use crate::state::store::Store;

/// What a push names besides the bytes.
#[derive(Debug, Clone, Default)]
pub struct Push {
    pub project: String,
    pub name: String,
    /// The commit CI built (7 to 40 hex digits), or empty.
    pub commit: String,
    /// A single file's name in the release (a WAR's, a JAR's).
    pub file_name: String,
    /// sha256 (hex) the pusher says the bytes have: checked before anything is kept.
    pub sha256: Option<String>,
    pub by: String,
}

/// An artifact's name: a version or a build number (`1.4.2`, `build-812`).
pub fn check_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if !ok {
        return Err(CtlError::bad(format!("'{}' is not an artifact name", slipway_common::archive::clip(name, 64)))
            .fix("use up to 64 letters, digits, '.', '_', '+' and '-', starting with a letter or digit (e.g. 1.4.2)"));
    }
    Ok(())
}

fn check_commit(commit: &str) -> Result<()> {
    let hex = (7..=40).contains(&commit.len()) && commit.bytes().all(|b| b.is_ascii_hexdigit());
    if !commit.is_empty() && !hex {
        return Err(CtlError::bad(format!(
            "--commit '{}' is not a commit id",
            slipway_common::archive::clip(commit, 64)
        ))
        .fix("give the commit CI built, 7 to 40 hex digits (git rev-parse HEAD)"));
    }
    Ok(())
}

/// The sha256 of bytes (hex).
pub fn bytes_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The sha256 of a file (hex).
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).context(format_args!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut file, &mut h).context(format_args!("cannot read {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// Keep the build at `input` (a file, a tar archive, or a directory) as artifact `push.name`.
/// Refused, with nothing kept: a bad name or commit, a taken name, bytes that do not have the
/// declared digest, an archive the agents would refuse.
pub async fn push(home: &Home, store: &Store, push: Push, input: &Path) -> Result<PushedArtifact> {
    check_name(&push.name)?;
    check_commit(&push.commit)?;
    crate::engine::scope::project_of(store, &push.project)?;
    // One push at a time in this process: a directory without a record is then a leftover.
    static PUSHES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = PUSHES.lock().await;
    if records::get(store, &push.project, &push.name)?.is_some() {
        return Err(records::taken(&push.project, &push.name));
    }
    let (home_owned, input) = (home.clone(), input.to_path_buf());
    let record = tokio::task::spawn_blocking(move || keep(&home_owned, push, &input)).await.context("push task")??;
    // Recorded once: a push of the same name meanwhile took it first.
    records::insert(store, &record)?;
    let target = format!("project {} artifact {}", record.project, record.name);
    crate::ops::audit::record(store, &record.pushed_by, "", "artifact_push", &target, "ok", &record.sha256);
    Ok(record)
}

fn keep(home: &Home, push: Push, input: &Path) -> Result<PushedArtifact> {
    let pushed_sha256 = if input.is_dir() { String::new() } else { file_sha256(input)? };
    if let Some(declared) = &push.sha256
        && !input.is_dir()
        && !declared.eq_ignore_ascii_case(&pushed_sha256)
    {
        return Err(CtlError::bad(format!(
            "the bytes pushed have sha256 {pushed_sha256}, not the {declared} declared: nothing was kept"
        ))
        .fix("push the file again (it was changed or cut short on the way)"));
    }
    let dir = records::dir(home, &push.project, &push.name);
    // A directory without a record is what a push that died left: not anyone's artifact.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).context(format_args!("cannot clear {}", dir.display()))?;
    }
    let pushed_at = unix_now();
    let mut kind = pushed::Kind::File;
    let made = artifact::pack_into(&dir, pushed_at, |packer| {
        kind = pushed::pack(input, &push.file_name, packer)?;
        Ok(0)
    })
    .map_err(|e| match e.problem.strip_prefix("the tree cannot be shipped: ") {
        // The agents' rules, checked on the whole tree: the archive's fault.
        Some(why) => pushed::refused(why),
        None => e,
    })?;
    let scratch = home.artifacts();
    if let Err(e) = pushed::check_with_extractor(&made.path, &made.manifest, &made.sha256, &scratch) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    let record = PushedArtifact {
        project: push.project,
        name: push.name,
        commit: push.commit.to_ascii_lowercase(),
        sha256: made.manifest_sha256(),
        pushed_sha256,
        kind: kind.word().to_owned(),
        source: push.file_name,
        entries: made.entries,
        file_bytes: made.file_bytes,
        compressed_bytes: made.compressed_bytes,
        pushed_by: push.by,
        pushed_at,
    };
    Ok(record)
}

/// A project's artifacts, newest first.
pub fn list(store: &Store, project: &str) -> Result<Vec<PushedArtifact>> {
    crate::engine::scope::project_of(store, project)?;
    records::list(store, project)
}
