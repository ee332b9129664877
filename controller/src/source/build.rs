//! Building on the controller: a fresh checkout of the commit per build (never a shared mutable
//! clone), then `pre_deploy` and `post_deploy` run in it (`sh -c`, process group, timeout,
//! bounded output streamed live and stored). What the hooks leave is what gets packaged: the
//! build, env-independent; the env's `config_dir` overlay goes on top of it afterwards
//! (`source::layer`), so the build hooks never see an env's files.

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
    /// The build the overlay goes on, when it is named (a promotion, a pushed artifact) rather
    /// than made from this recipe.
    pub base: Option<String>,
    /// An svn project's repository URL: the tree is exported from it (`commit` is `PATH@NNN`).
    pub svn: Option<String>,
}

impl Recipe {
    /// Build hooks (or an svn export) need a checkout on disk; otherwise the build streams from git.
    pub fn needs_checkout(&self) -> bool {
        !self.pre_deploy.is_empty() || !self.post_deploy.is_empty() || self.svn.is_some()
    }

    /// The recipe of the build alone, without the env layer.
    pub fn build_only(&self) -> Recipe {
        Recipe { overlay: None, base: None, ..self.clone() }
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
        if let Some(url) = &self.svn {
            // `trunk@12` names a tree only within its repository.
            h.update(b"\nsvn\0");
            h.update(url.as_bytes());
        }
        if let Some(base) = &self.base {
            h.update(b"\nbase\0");
            h.update(base.as_bytes());
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

/// A build failed: why, and the hooks that ran (for history).
pub struct BuildFailure {
    pub error: CtlError,
    pub hooks: Vec<HookRecord>,
}

/// Check the commit out into `work` and run the build hooks. Returns the hook records.
pub async fn build(
    mirror: &Path,
    recipe: &Recipe,
    work: &Path,
    env: &BTreeMap<String, String>,
    cache: Option<(&crate::source::build_cache::BuildCache, Option<&Path>)>,
    reporter: &Emitter,
) -> std::result::Result<Vec<HookRecord>, BuildFailure> {
    let fail = |error: CtlError| BuildFailure { error, hooks: Vec::new() };
    std::fs::create_dir_all(work).context(format_args!("cannot create {}", work.display())).map_err(fail)?;
    if let Some(url) = &recipe.svn {
        crate::source::svn::export(url, &recipe.commit, work).await.map_err(fail)?;
    } else {
        let (mirror_owned, commit, work_owned) = (mirror.to_path_buf(), recipe.commit.clone(), work.to_path_buf());
        tokio::task::spawn_blocking(move || {
            let mut sink = DiskSink::new(&work_owned).context(format_args!("cannot open {}", work_owned.display()))?;
            git::walk_commit(&mirror_owned, &commit, &Excludes::default(), &mut sink)
        })
        .await
        .context("checkout task")
        .and_then(|r| r)
        .map_err(fail)?;
    }
    if let Some((cache, home)) = cache {
        let restored = cache.restore(work, home).map_err(fail)?;
        if !restored.paths.is_empty() {
            reporter.say(format!("build cache: {} restored in {} ms", restored.paths.join(", "), restored.ms));
        }
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
    fn the_overlay_digest_follows_contents_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        std::fs::write(dir.path().join("config/app.ini"), "prod").unwrap();
        let before = overlay_digest(dir.path()).unwrap();
        assert_eq!(overlay_digest(dir.path()).unwrap(), before);
        std::fs::write(dir.path().join("config/app.ini"), "staging").unwrap();
        let changed = overlay_digest(dir.path()).unwrap();
        assert_ne!(changed, before);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path().join("config/app.ini"), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(overlay_digest(dir.path()).unwrap(), changed);
    }
}
