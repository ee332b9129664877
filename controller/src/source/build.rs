//! Building on the controller: a fresh checkout of the commit per deploy (never a shared mutable
//! clone), the env's `config_dir` overlaid onto it, then `pre_deploy` and `post_deploy` run in it
//! (`sh -c`, process group, timeout, bounded output streamed live and stored). What the hooks
//! leave is what gets packaged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use slipway_common::process::{LineSplitter, LiveChunk, Shell, run_shell};
use tokio::sync::mpsc;

use crate::engine::events::Emitter;
use crate::error::{Context, CtlError, Result};
use crate::source::exclude::Excludes;
use crate::source::git;
use crate::source::tree::DiskSink;
use crate::state::store::HookRecord;

/// Everything that decides a package's content besides the commit.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub commit: String,
    pub commit_time: i64,
    pub excludes: Vec<String>,
    pub pre_deploy: Vec<String>,
    pub post_deploy: Vec<String>,
    pub build_timeout_secs: u64,
    /// The overlay directory and its digest.
    pub overlay: Option<(PathBuf, String)>,
}

impl Recipe {
    /// Build hooks or an overlay need a checkout on disk; otherwise the package streams from git.
    pub fn needs_checkout(&self) -> bool {
        !self.pre_deploy.is_empty() || !self.post_deploy.is_empty() || self.overlay.is_some()
    }

    /// Digest of everything besides the commit that shapes the package.
    pub fn settings_digest(&self) -> String {
        let mut h = Sha256::new();
        for (label, items) in
            [("exclude", &self.excludes), ("pre_deploy", &self.pre_deploy), ("post_deploy", &self.post_deploy)]
        {
            h.update(label.as_bytes());
            for item in items {
                h.update(b"\0");
                h.update(item.as_bytes());
            }
            h.update(b"\n");
        }
        if let Some((_, digest)) = &self.overlay {
            h.update(b"overlay\0");
            h.update(digest.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// sha256 over the overlay's paths, kinds, modes and contents, sorted.
pub fn overlay_digest(dir: &Path) -> Result<String> {
    fn walk(root: &Path, dir: &Path, h: &mut Sha256) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .and_then(|rd| rd.collect::<std::io::Result<Vec<_>>>())
            .context(format_args!("cannot read {}", dir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap_or(&path).display().to_string();
            let meta = std::fs::symlink_metadata(&path).context(format_args!("cannot stat {}", path.display()))?;
            h.update(rel.as_bytes());
            if meta.is_dir() {
                h.update(b"\0dir\n");
                walk(root, &path, h)?;
            } else if meta.file_type().is_symlink() {
                h.update(b"\0link\0");
                h.update(std::fs::read_link(&path).context("readlink")?.as_os_str().as_encoded_bytes());
                h.update(b"\n");
            } else {
                use std::os::unix::fs::PermissionsExt;
                h.update(format!("\0file\0{:o}\0", meta.permissions().mode() & 0o777).as_bytes());
                h.update(Sha256::digest(std::fs::read(&path).context(format_args!("cannot read {}", path.display()))?));
                h.update(b"\n");
            }
        }
        Ok(())
    }
    let mut h = Sha256::new();
    walk(dir, dir, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Copy the overlay onto the checkout: files and symlinks replace, directories merge.
fn apply_overlay(src: &Path, dst: &Path) -> Result<()> {
    for entry in std::fs::read_dir(src).context(format_args!("cannot read {}", src.display()))? {
        let entry = entry.context("read overlay")?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let meta = std::fs::symlink_metadata(&from).context(format_args!("cannot stat {}", from.display()))?;
        let existing = std::fs::symlink_metadata(&to).ok();
        if meta.is_dir() {
            if existing.as_ref().is_some_and(|m| !m.is_dir()) {
                std::fs::remove_file(&to).context(format_args!("cannot replace {}", to.display()))?;
            }
            std::fs::create_dir_all(&to).context(format_args!("cannot create {}", to.display()))?;
            apply_overlay(&from, &to)?;
            continue;
        }
        match existing {
            Some(m) if m.is_dir() => std::fs::remove_dir_all(&to),
            Some(_) => std::fs::remove_file(&to),
            None => Ok(()),
        }
        .context(format_args!("cannot replace {}", to.display()))?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&from).context("readlink")?;
            std::os::unix::fs::symlink(target, &to).context(format_args!("cannot link {}", to.display()))?;
        } else {
            std::fs::copy(&from, &to).context(format_args!("cannot copy {} to {}", from.display(), to.display()))?;
        }
    }
    Ok(())
}

/// A build failed: why, and the hooks that ran (for history).
pub struct BuildFailure {
    pub error: CtlError,
    pub hooks: Vec<HookRecord>,
}

/// Check the commit out into `work`, overlay, run the build hooks. Returns the hook records.
pub async fn build(
    mirror: &Path,
    recipe: &Recipe,
    work: &Path,
    env: &BTreeMap<String, String>,
    reporter: &Emitter,
) -> std::result::Result<Vec<HookRecord>, BuildFailure> {
    let fail = |error: CtlError| BuildFailure { error, hooks: Vec::new() };
    std::fs::create_dir_all(work).context(format_args!("cannot create {}", work.display())).map_err(fail)?;
    let (mirror_owned, commit, work_owned) = (mirror.to_path_buf(), recipe.commit.clone(), work.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let mut sink = DiskSink::new(&work_owned).context(format_args!("cannot open {}", work_owned.display()))?;
        git::walk_commit(&mirror_owned, &commit, &Excludes::default(), &mut sink)
    })
    .await
    .context("checkout task")
    .and_then(|r| r)
    .map_err(fail)?;
    if let Some((dir, _)) = &recipe.overlay {
        apply_overlay(dir, work).map_err(fail)?;
        reporter.say(format!("overlaid {}", dir.display()));
    }
    let mut hooks = Vec::new();
    let timeout = Duration::from_secs(recipe.build_timeout_secs.max(1));
    let lines = recipe
        .pre_deploy
        .iter()
        .map(|c| ("pre_deploy", c))
        .chain(recipe.post_deploy.iter().map(|c| ("post_deploy", c)));
    for (stage, command) in lines {
        reporter.say(format!("{stage}: {command}"));
        let (tx, mut rx) = mpsc::channel::<LiveChunk>(64);
        let shell = Shell { command, cwd: work, env, clear_env: false, timeout };
        let run = run_shell(shell, |_| {}, Some(tx));
        tokio::pin!(run);
        // Whole lines, stdout's marked `|` and stderr's `!`.
        let mut split = [LineSplitter::default(), LineSplitter::default()];
        let mut say = |chunk: LiveChunk| {
            let mark = if chunk.stderr { '!' } else { '|' };
            for line in split[usize::from(chunk.stderr)].push(&chunk.data) {
                reporter.say(format!("  {stage}{mark} {line}"));
            }
        };
        let result = loop {
            tokio::select! {
                result = &mut run => break result,
                Some(chunk) = rx.recv() => say(chunk),
            }
        };
        while let Ok(chunk) = rx.try_recv() {
            say(chunk);
        }
        for (i, rest) in split.iter_mut().enumerate() {
            if let Some(line) = rest.finish() {
                reporter.say(format!("  {stage}{} {line}", if i == 1 { '!' } else { '|' }));
            }
        }
        let ok = result.ok();
        let why = if result.timed_out {
            format!("{stage} hook `{command}` timed out after {}s and was killed", timeout.as_secs())
        } else {
            format!("{stage} hook `{command}` failed with exit status {}", result.exit_code)
        };
        hooks.push(HookRecord::from_shell(stage, command, &result));
        if !ok {
            return Err(BuildFailure {
                error: CtlError::failed(format!("build failed, nothing was sent: {why}")),
                hooks,
            });
        }
    }
    Ok(hooks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_replaces_files_and_merges_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(src.join("config")).unwrap();
        std::fs::create_dir_all(dst.join("config")).unwrap();
        std::fs::write(src.join("config/app.ini"), "prod").unwrap();
        std::fs::write(src.join(".env"), "APP_ENV=prod").unwrap();
        std::fs::write(dst.join("config/app.ini"), "dev").unwrap();
        std::fs::write(dst.join("config/other.ini"), "kept").unwrap();
        let before = overlay_digest(&src).unwrap();
        apply_overlay(&src, &dst).unwrap();
        assert_eq!(std::fs::read_to_string(dst.join("config/app.ini")).unwrap(), "prod");
        assert_eq!(std::fs::read_to_string(dst.join("config/other.ini")).unwrap(), "kept");
        assert_eq!(std::fs::read_to_string(dst.join(".env")).unwrap(), "APP_ENV=prod");
        std::fs::write(src.join(".env"), "APP_ENV=staging").unwrap();
        assert_ne!(overlay_digest(&src).unwrap(), before);
    }
}
