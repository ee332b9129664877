//! `[build] cache = ["node_modules", "~/.m2/repository"]`: paths a project's builds keep on
//! the controller between builds, under `<home>/cache/build/<project>/`. Before the build hooks
//! each kept path is copied into the fresh checkout (or the build's private home, for `~/`
//! paths) — `cp --reflink=auto`: copy-on-write where the filesystem can, a copy otherwise, never
//! a file two builds share — and after a build that succeeded what the build left is moved back
//! in, replacing the old copy. A lock file serialises restoring and keeping across processes, so
//! a build never reads a cache another is replacing. A failed build keeps nothing.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Context, CtlError, Result};

pub struct BuildCache {
    root: PathBuf,
    paths: Vec<String>,
}

/// What a restore or a keep did, for the build's log.
#[derive(Debug, Default)]
pub struct Moved {
    pub paths: Vec<String>,
    pub ms: u64,
}

/// Where a project's kept paths live.
pub fn root(cache: &Path, project: &str) -> PathBuf {
    cache.join("build").join(project)
}

/// One directory name per kept path (`~/.m2/repository` → `~%2F.m2%2Frepository`).
fn key(path: &str) -> String {
    path.replace('%', "%25").replace('/', "%2F")
}

/// Holds the project's cache lock while alive.
struct Locked(#[allow(dead_code)] std::fs::File);

impl BuildCache {
    /// The cache of `project`'s builds, when it keeps any path.
    pub fn of(cache: &Path, project: &str, paths: &[String]) -> Option<BuildCache> {
        (!paths.is_empty()).then(|| BuildCache { root: root(cache, project), paths: paths.to_vec() })
    }

    /// Whether some kept path is in the build's home: the build then gets a private `HOME`.
    pub fn wants_home(&self) -> bool {
        self.paths.iter().any(|p| p.starts_with("~/"))
    }

    fn lock(&self) -> Result<Locked> {
        std::fs::create_dir_all(&self.root).context(format_args!("cannot create {}", self.root.display()))?;
        let file = std::fs::File::create(self.root.join(".lock")).context("build cache lock")?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| CtlError::failed(format!("cannot lock the build cache: {e}")))?;
        Ok(Locked(file))
    }

    /// Where kept path `path` goes in this build.
    fn place(path: &str, work: &Path, home: Option<&Path>) -> Option<PathBuf> {
        match path.strip_prefix("~/") {
            Some(rel) => home.map(|h| h.join(rel)),
            None => Some(work.join(path)),
        }
    }

    /// Copy every kept path into the build (a path the checkout already has is left as it is).
    pub fn restore(&self, work: &Path, home: Option<&Path>) -> Result<Moved> {
        let started = Instant::now();
        let _held = self.lock()?;
        let mut moved = Moved::default();
        for path in &self.paths {
            let (kept, Some(to)) = (self.root.join(key(path)), Self::place(path, work, home)) else { continue };
            if !kept.exists() || std::fs::symlink_metadata(&to).is_ok() {
                continue;
            }
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).context(format_args!("cannot create {}", parent.display()))?;
            }
            let status = std::process::Command::new("cp")
                .args(["-a", "--reflink=auto"])
                .arg(&kept)
                .arg(&to)
                .status()
                .context("cp")?;
            if !status.success() {
                let _ = std::fs::remove_dir_all(&to);
                return Err(CtlError::failed(format!("cannot restore {path} from the build cache {}", kept.display()))
                    .fix("`slipctl cache clear` drops the project's build cache"));
            }
            moved.paths.push(path.clone());
        }
        moved.ms = started.elapsed().as_millis() as u64;
        Ok(moved)
    }

    /// Move what the build left at each kept path into the cache, replacing the old copy.
    pub fn keep(&self, work: &Path, home: Option<&Path>) -> Result<Moved> {
        let started = Instant::now();
        let _held = self.lock()?;
        let mut moved = Moved::default();
        let pid = std::process::id();
        for path in &self.paths {
            let Some(from) = Self::place(path, work, home) else { continue };
            let Ok(meta) = std::fs::symlink_metadata(&from) else { continue };
            if meta.file_type().is_symlink() {
                continue;
            }
            let (kept, new, old) = (
                self.root.join(key(path)),
                self.root.join(format!(".new-{pid}-{}", key(path))),
                self.root.join(format!(".old-{pid}-{}", key(path))),
            );
            if std::fs::rename(&from, &new).is_err() {
                // Another filesystem: copy instead.
                let status =
                    std::process::Command::new("cp").args(["-a", "--reflink=auto"]).arg(&from).arg(&new).status();
                if !status.is_ok_and(|s| s.success()) {
                    let _ = std::fs::remove_dir_all(&new);
                    continue;
                }
            }
            let had = std::fs::rename(&kept, &old).is_ok();
            std::fs::rename(&new, &kept).context(format_args!("cannot keep {path} in {}", kept.display()))?;
            if had {
                let _ = std::fs::remove_dir_all(&old).or_else(|_| std::fs::remove_file(&old));
            }
            moved.paths.push(path.clone());
        }
        moved.ms = started.elapsed().as_millis() as u64;
        Ok(moved)
    }
}

/// `slipctl cache clear`: drop everything a project's builds keep; the bytes freed.
pub fn clear(cache: &Path, project: &str) -> Result<u64> {
    let dir = root(cache, project);
    if !dir.exists() {
        return Ok(0);
    }
    let lock = BuildCache { root: dir.clone(), paths: Vec::new() }.lock()?;
    let bytes = du(&dir);
    for entry in std::fs::read_dir(&dir).context(format_args!("cannot read {}", dir.display()))? {
        let entry = entry.context("build cache")?;
        if entry.file_name() == ".lock" {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.context(format_args!("cannot remove {}", path.display()))?;
    }
    drop(lock);
    Ok(bytes)
}

fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(_) => total += entry.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_paths_come_back_as_copies_and_go_back_replacing_the_old() {
        let t = tempfile::tempdir().unwrap();
        let cache = BuildCache::of(t.path(), "app", &["node_modules".into(), "~/.m2/repository".into()]).unwrap();
        assert!(cache.wants_home());
        let (work, home) = (t.path().join("w1"), t.path().join("h1"));
        std::fs::create_dir_all(work.join("node_modules/left-pad")).unwrap();
        std::fs::write(work.join("node_modules/left-pad/index.js"), "v1").unwrap();
        std::fs::create_dir_all(home.join(".m2/repository/junit")).unwrap();
        std::fs::write(home.join(".m2/repository/junit/junit.jar"), "jar").unwrap();
        assert_eq!(cache.keep(&work, Some(&home)).unwrap().paths.len(), 2);
        assert!(!work.join("node_modules").exists(), "moved, not copied");
        // The next build gets a copy of its own: changing it leaves the cache as it was.
        let (work2, home2) = (t.path().join("w2"), t.path().join("h2"));
        std::fs::create_dir_all(&work2).unwrap();
        assert_eq!(cache.restore(&work2, Some(&home2)).unwrap().paths.len(), 2);
        std::fs::write(work2.join("node_modules/left-pad/index.js"), "changed by the build").unwrap();
        let kept = root(t.path(), "app").join(key("node_modules")).join("left-pad/index.js");
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "v1");
        assert_eq!(std::fs::read_to_string(home2.join(".m2/repository/junit/junit.jar")).unwrap(), "jar");
        // What the build left replaces the old copy.
        cache.keep(&work2, Some(&home2)).unwrap();
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "changed by the build");
        // A checkout that has the path itself keeps its own.
        let work3 = t.path().join("w3");
        std::fs::create_dir_all(work3.join("node_modules")).unwrap();
        assert_eq!(cache.restore(&work3, None).unwrap().paths, Vec::<String>::new());
        assert!(clear(t.path(), "app").unwrap() > 0);
        assert!(!kept.exists());
    }
}
