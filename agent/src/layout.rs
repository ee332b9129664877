//! The on-disk layout of one project+env on a host (DESIGN.md "Layout on a web host") and the
//! operations on it: list, flip `current` atomically, remove, clean leftovers, plan pruning.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use slipway_common::ReleaseId;

use crate::error::AgentError;

const STAGING_PREFIX: &str = ".staging-";
const TRASH_PREFIX: &str = ".trash-";

/// Where `current` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Current {
    Absent,
    Release(ReleaseId),
    /// A symlink to something that is not one of our releases (e.g. a Walle release library).
    Elsewhere(PathBuf),
}

impl Current {
    pub fn release(&self) -> Option<&ReleaseId> {
        match self {
            Current::Release(id) => Some(id),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Layout {
    pub deploy_to: PathBuf,
    pub current: PathBuf,
}

fn nonce() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{}-{nanos}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// fsync a directory, so a rename or new entry in it survives a crash.
pub fn fsync_dir(path: &Path) -> io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

impl Layout {
    pub fn releases_dir(&self) -> PathBuf {
        self.deploy_to.join("releases")
    }

    pub fn release_path(&self, id: &ReleaseId) -> PathBuf {
        self.releases_dir().join(id.as_str())
    }

    pub fn staging_path(&self, id: &ReleaseId) -> PathBuf {
        self.releases_dir().join(format!("{STAGING_PREFIX}{id}"))
    }

    /// Complete releases on disk, oldest first.
    pub fn list(&self) -> Result<Vec<ReleaseId>, AgentError> {
        let dir = self.releases_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(AgentError::io("cannot list releases in", dir, e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| AgentError::io("cannot list releases in", &dir, e))?;
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if let (true, Some(name)) = (is_dir, entry.file_name().to_str())
                && let Ok(id) = ReleaseId::parse(name)
            {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    pub fn read_current(&self) -> Result<Current, AgentError> {
        match std::fs::symlink_metadata(&self.current) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Current::Absent),
            Err(e) => return Err(AgentError::io("cannot inspect", &self.current, e)),
            Ok(meta) if !meta.file_type().is_symlink() => {
                return Err(AgentError::Conflict(format!(
                    "{} exists and is not a symlink; move it away (e.g. mv {0} {0}.orig) so slipway can manage it",
                    self.current.display()
                )));
            }
            Ok(_) => {}
        }
        let target =
            std::fs::read_link(&self.current).map_err(|e| AgentError::io("cannot read link", &self.current, e))?;
        let releases = self.releases_dir();
        let id = target
            .strip_prefix(&releases)
            .ok()
            .and_then(|rest| rest.to_str())
            .and_then(|name| ReleaseId::parse(name).ok());
        Ok(match id {
            Some(id) => Current::Release(id),
            None => Current::Elsewhere(target),
        })
    }

    /// Point `current` at release `id`: symlink to a temporary name, rename over `current`,
    /// fsync the parent. Readers see the old or the new target, never nothing.
    pub fn flip(&self, id: &ReleaseId) -> Result<(), AgentError> {
        let target = self.release_path(id);
        let parent = self.current.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(parent).map_err(|e| AgentError::io("cannot create", parent, e))?;
        let mut tmp = self.current.clone().into_os_string();
        tmp.push(format!(".tmp-{}", nonce()));
        let tmp = PathBuf::from(tmp);
        std::os::unix::fs::symlink(&target, &tmp).map_err(|e| AgentError::io("cannot create symlink", &tmp, e))?;
        if let Err(e) = std::fs::rename(&tmp, &self.current) {
            let _ = std::fs::remove_file(&tmp);
            return Err(AgentError::io("cannot rename symlink over", &self.current, e));
        }
        fsync_dir(parent).map_err(|e| AgentError::io("cannot fsync", parent, e))
    }

    /// Remove a release or staging dir: first renamed out of sight, so a crash mid-removal never
    /// leaves something that looks like a complete release.
    pub fn remove(&self, name: &str) -> Result<(), AgentError> {
        let dir = self.releases_dir();
        let from = dir.join(name);
        let trash = dir.join(format!("{TRASH_PREFIX}{}-{name}", nonce()));
        match std::fs::rename(&from, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(AgentError::io("cannot remove", from, e)),
        }
        std::fs::remove_dir_all(&trash).map_err(|e| AgentError::io("cannot remove", trash, e))
    }

    /// Remove staging and trash leftovers of interrupted work; returns their names.
    pub fn clean_leftovers(&self) -> Result<Vec<String>, AgentError> {
        let dir = self.releases_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(AgentError::io("cannot list", dir, e)),
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(STAGING_PREFIX) || name.starts_with(TRASH_PREFIX) {
                let path = entry.path();
                std::fs::remove_dir_all(&path).map_err(|e| AgentError::io("cannot remove leftover", path, e))?;
                removed.push(name);
            }
        }
        // A crash between symlink() and rename() in `flip` leaves a temporary link.
        if let (Some(parent), Some(base)) = (self.current.parent(), self.current.file_name()) {
            let prefix = format!("{}.tmp-", base.to_string_lossy());
            for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) && entry.file_type().map(|t| t.is_symlink()).unwrap_or(false) {
                    let _ = std::fs::remove_file(entry.path());
                    removed.push(name);
                }
            }
        }
        Ok(removed)
    }
}

/// Which releases to delete: keep the newest `keep` releases that were ever activated, plus
/// `current` and the rollback target whatever their age; everything else goes (releases that
/// were staged but never activated count as failed).
pub fn prune_plan(
    on_disk: &[ReleaseId],
    current: Option<&ReleaseId>,
    rollback_target: Option<&ReleaseId>,
    was_activated: &dyn Fn(&ReleaseId) -> bool,
    keep: usize,
) -> Vec<ReleaseId> {
    let mut kept: BTreeSet<&ReleaseId> = on_disk.iter().rev().filter(|id| was_activated(id)).take(keep).collect();
    kept.extend(current);
    kept.extend(rollback_target);
    on_disk.iter().filter(|id| !kept.contains(id)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> ReleaseId {
        ReleaseId::parse(&format!("20260101-0000{n:02}-abcdef0")).unwrap()
    }

    fn check(disk: &[u32], current: Option<u32>, target: Option<u32>, never: &[u32], keep: usize, expected: &[u32]) {
        let disk: Vec<_> = disk.iter().map(|n| id(*n)).collect();
        let never: Vec<_> = never.iter().map(|n| id(*n)).collect();
        let (current, target) = (current.map(id), target.map(id));
        let got = prune_plan(&disk, current.as_ref(), target.as_ref(), &|r| !never.contains(r), keep);
        let expected: Vec<_> = expected.iter().map(|n| id(*n)).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn pruning() {
        check(&[1, 2, 3, 4, 5], Some(5), Some(4), &[], 3, &[1, 2]);
        check(&[1, 2, 3], Some(3), Some(2), &[], 5, &[]);
        // After rolling back to 1, current and its target survive even when old.
        check(&[1, 2, 3, 4, 5], Some(2), Some(1), &[], 2, &[3]);
        // Never-activated releases do not count and are removed.
        check(&[1, 2, 3, 4], Some(3), Some(2), &[4], 2, &[1, 4]);
        check(&[1], Some(1), None, &[], 1, &[]);
    }

    #[test]
    fn flip_is_a_rename_and_current_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout { deploy_to: dir.path().join("app"), current: dir.path().join("www/current") };
        std::fs::create_dir_all(layout.release_path(&id(1))).unwrap();
        std::fs::create_dir_all(layout.release_path(&id(2))).unwrap();
        assert_eq!(layout.read_current().unwrap(), Current::Absent);
        layout.flip(&id(1)).unwrap();
        assert_eq!(layout.read_current().unwrap(), Current::Release(id(1)));
        layout.flip(&id(2)).unwrap();
        assert_eq!(layout.read_current().unwrap(), Current::Release(id(2)));
        assert_eq!(std::fs::read_link(&layout.current).unwrap(), layout.release_path(&id(2)));
        let names: Vec<_> =
            std::fs::read_dir(dir.path().join("www")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary link left: {names:?}");
        assert_eq!(layout.list().unwrap(), vec![id(1), id(2)]);
        layout.remove(id(1).as_str()).unwrap();
        assert_eq!(layout.list().unwrap(), vec![id(2)]);
    }

    #[test]
    fn a_directory_at_current_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout { deploy_to: dir.path().join("app"), current: dir.path().join("www") };
        std::fs::create_dir_all(&layout.current).unwrap();
        let err = layout.read_current().unwrap_err().to_string();
        assert!(err.contains("not a symlink"), "{err}");
    }
}
