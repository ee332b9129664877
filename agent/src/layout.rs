//! The on-disk layout of one project+env on a host (DESIGN.md "Layout on a web host") and the
//! operations on it: open it beneath an allowed root, list, flip `current` atomically, remove,
//! clean leftovers, plan pruning. Everything goes through directory handles ([`crate::beneath`])
//! opened once per request, component by component from the allowed root, never through a
//! symlink.

use std::collections::BTreeSet;
use std::io;
use std::path::{Component, Path, PathBuf};

use slipway_common::ReleaseId;

use crate::beneath::{DirHandle, Kind, loosely_writable, nonce};
use crate::error::AgentError;

pub const STAGING_PREFIX: &str = ".staging-";
const TRASH_PREFIX: &str = ".trash-";
/// Moved out of a tree by a bounded-depth removal; removed like trash.
const REMOVING_PREFIX: &str = ".slipway-rm-";

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

/// One target's directories, held open. `None` handles are directories that do not exist yet
/// (only when opened without creating).
#[derive(Debug)]
pub struct Layout {
    pub deploy_to: PathBuf,
    pub current: PathBuf,
    deploy: Option<DirHandle>,
    releases: Option<DirHandle>,
    current_parent: Option<DirHandle>,
    current_name: String,
}

/// The agent's euid/egid when it is root (it then owns what it creates and may hand it over).
pub fn root_owner() -> Option<(u32, u32)> {
    rustix::process::geteuid().is_root().then_some((0, 0))
}

fn refuse_symlink(path: &Path) -> AgentError {
    AgentError::NotAllowed(format!(
        "{} is a symlink; slipd never follows symlinks beneath an allowed root: point the project at the real \
         directory",
        path.display()
    ))
}

fn refuse_loose(path: &Path) -> AgentError {
    AgentError::NotAllowed(format!(
        "{} is writable by group or others without the sticky bit, so anyone could swap what lies beneath it; \
         chmod go-w {0} (or chmod +t)",
        path.display()
    ))
}

/// Check one directory on the way to a target.
fn check_dir(dir: &DirHandle) -> Result<(), AgentError> {
    let stat = dir.fstat().map_err(|e| AgentError::io("cannot inspect", dir.path(), e))?;
    if loosely_writable(&stat) { Err(refuse_loose(dir.path())) } else { Ok(()) }
}

/// Open the allowed root `root` (creating it when `create`): the root and its ancestors are the
/// administrator's, so they are opened by path, but each must be a real directory that only its
/// owner can write (or sticky).
fn open_root(root: &Path, create: bool) -> Result<Option<DirHandle>, AgentError> {
    let mut ancestor = PathBuf::from("/");
    for component in root.components().skip(1) {
        ancestor.push(component);
        match std::fs::symlink_metadata(&ancestor) {
            Ok(m) if m.file_type().is_symlink() && ancestor != root => {
                // A symlinked ancestor of the root (e.g. /data -> /srv/data) is the admin's choice;
                // where it leads is checked like any other directory.
            }
            Ok(m) if m.file_type().is_symlink() => return Err(refuse_symlink(&ancestor)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                std::fs::create_dir(&ancestor)
                    .or_else(|e| if e.kind() == io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
                    .map_err(|e| AgentError::io("cannot create allowed root", &ancestor, e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(AgentError::io("cannot inspect", &ancestor, e)),
        }
        let stat = rustix::fs::stat(&ancestor).map_err(|e| AgentError::io("cannot inspect", &ancestor, e.into()))?;
        if loosely_writable(&stat) {
            return Err(refuse_loose(&ancestor));
        }
        // Whoever owns a directory can rename what is in it: the root and its ancestors must be
        // root's (or the agent's own, when it does not run as root).
        let me = rustix::process::geteuid().as_raw();
        if stat.st_uid != 0 && stat.st_uid != me {
            return Err(AgentError::NotAllowed(format!(
                "{} (an allowed root or one of its parents) belongs to uid {}, who could swap what lies beneath \
                 it; chown root {0}, or allow a directory below it instead",
                ancestor.display(),
                stat.st_uid
            )));
        }
    }
    let handle = DirHandle::open_path(root).map_err(|e| match e.raw_os_error() {
        Some(code) if code == rustix::io::Errno::LOOP.raw_os_error() => refuse_symlink(root),
        _ => AgentError::io("cannot open allowed root", root, e),
    })?;
    Ok(Some(handle))
}

/// Open `rel` (relative, clean) beneath `root` one component at a time, creating missing
/// directories when `create`; a symlink or a loosely writable directory on the way is refused.
fn walk(root: DirHandle, rel: &Path, create: bool) -> Result<Option<DirHandle>, AgentError> {
    let mut dir = root;
    check_dir(&dir)?;
    for component in rel.components() {
        let Component::Normal(name) = component else {
            return Err(AgentError::BadRequest(format!("'{}' must be a clean relative path", rel.display())));
        };
        let name = name.to_str().ok_or_else(|| AgentError::BadRequest(format!("'{}' is not UTF-8", rel.display())))?;
        let next = if create { dir.create_dir(name) } else { dir.open_dir(name) };
        dir = match next {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                return Err(refuse_symlink(&dir.display(name)));
            }
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) => {
                return Err(AgentError::Conflict(format!(
                    "{} is not a directory; move it away or change the project's paths",
                    dir.display(name).display()
                )));
            }
            Err(e) => return Err(AgentError::io("cannot open", dir.display(name), e)),
        };
        check_dir(&dir)?;
    }
    Ok(Some(dir))
}

/// Open the directory `path` beneath whichever allowed root holds it.
pub fn open_beneath(roots: &[PathBuf], path: &Path, create: bool) -> Result<Option<DirHandle>, AgentError> {
    let root =
        roots.iter().filter(|r| path.starts_with(r)).max_by_key(|r| r.components().count()).ok_or_else(|| {
            AgentError::NotAllowed(format!("{} is outside this agent's allowed_roots", path.display()))
        })?;
    let rel = path.strip_prefix(root).expect("starts_with checked");
    match open_root(root, create)? {
        Some(root) => walk(root, rel, create),
        None => Ok(None),
    }
}

/// What opening a target may create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// Nothing: missing directories read as empty.
    Existing,
    /// `deploy_to` and `releases/` (a stage).
    Stage,
    /// The directory `current` lives in (an activation).
    Activate,
}

impl Layout {
    /// Open a target's directories: `deploy_to`, `deploy_to/releases` and the parent of `current`
    /// (created as `open` says; missing ones are `None` and read as empty).
    pub fn open(roots: &[PathBuf], deploy_to: &Path, current: &Path, open: Open) -> Result<Layout, AgentError> {
        let create = open == Open::Stage;
        let deploy = open_beneath(roots, deploy_to, create)?;
        let releases = match &deploy {
            Some(d) => walk(
                d.try_clone().map_err(|e| AgentError::io("cannot open", deploy_to, e))?,
                Path::new("releases"),
                create,
            )?,
            None => None,
        };
        let parent = current.parent().unwrap_or(Path::new("/"));
        let current_parent = open_beneath(roots, parent, open == Open::Activate)?;
        let current_name = current
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| AgentError::BadRequest(format!("current '{}' has no file name", current.display())))?
            .to_owned();
        Ok(Layout {
            deploy_to: deploy_to.to_path_buf(),
            current: current.to_path_buf(),
            deploy,
            releases,
            current_parent,
            current_name,
        })
    }

    pub fn releases_dir(&self) -> PathBuf {
        self.deploy_to.join("releases")
    }

    /// `deploy_to` itself, held open (the agent's: no symlink, not loosely writable).
    pub fn deploy_dir(&self) -> Result<&DirHandle, AgentError> {
        self.deploy
            .as_ref()
            .ok_or_else(|| AgentError::NotFound(format!("{} does not exist yet", self.deploy_to.display())))
    }

    pub fn release_path(&self, id: &ReleaseId) -> PathBuf {
        self.releases_dir().join(id.as_str())
    }

    pub fn staging_name(id: &ReleaseId) -> String {
        format!("{STAGING_PREFIX}{id}")
    }

    /// `deploy_to`, held open (`None` before the first deploy created it).
    pub fn deploy(&self) -> Option<&DirHandle> {
        self.deploy.as_ref()
    }

    /// `releases/`, held open.
    pub fn releases(&self) -> Result<&DirHandle, AgentError> {
        self.releases
            .as_ref()
            .ok_or_else(|| AgentError::NotFound(format!("{} does not exist", self.releases_dir().display())))
    }

    /// A retained release, held open.
    pub fn open_release(&self, id: &ReleaseId) -> Result<DirHandle, AgentError> {
        self.releases()?
            .open_dir(id.as_str())
            .map_err(|e| AgentError::io("cannot open release", self.release_path(id), e))
    }

    /// Complete releases on disk, oldest first.
    pub fn list(&self) -> Result<Vec<ReleaseId>, AgentError> {
        let Some(releases) = &self.releases else { return Ok(Vec::new()) };
        let entries = releases.entries().map_err(|e| AgentError::io("cannot list releases in", releases.path(), e))?;
        let mut ids: Vec<ReleaseId> = entries
            .into_iter()
            .filter(|(_, kind)| *kind == Kind::Dir)
            .filter_map(|(name, _)| ReleaseId::parse(&name).ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    pub fn read_current(&self) -> Result<Current, AgentError> {
        let Some(parent) = &self.current_parent else { return Ok(Current::Absent) };
        let stat = parent.stat(&self.current_name).map_err(|e| AgentError::io("cannot inspect", &self.current, e))?;
        match stat.map(|s| Kind::of(&s)) {
            None => return Ok(Current::Absent),
            Some(Kind::Symlink) => {}
            Some(_) => {
                return Err(AgentError::Conflict(format!(
                    "{} exists and is not a symlink; move it away (e.g. mv {0} {0}.orig) so slipway can manage it",
                    self.current.display()
                )));
            }
        }
        let Some(target) =
            parent.read_link(&self.current_name).map_err(|e| AgentError::io("cannot read link", &self.current, e))?
        else {
            return Ok(Current::Absent);
        };
        let id = target
            .strip_prefix(self.releases_dir())
            .ok()
            .and_then(|rest| rest.to_str())
            .and_then(|name| ReleaseId::parse(name).ok());
        Ok(match id {
            Some(id) => Current::Release(id),
            None => Current::Elsewhere(target),
        })
    }

    /// Point `current` at release `id`: `symlinkat` to a temporary name and `renameat` over
    /// `current`, both in the held parent, then fsync it. Readers see the old or the new target,
    /// never nothing.
    pub fn flip(&self, id: &ReleaseId) -> Result<(), AgentError> {
        let parent = self.current_parent.as_ref().ok_or_else(|| {
            AgentError::NotFound(format!("the directory of {} does not exist", self.current.display()))
        })?;
        let target = self.release_path(id);
        let tmp = format!("{}.tmp-{}", self.current_name, nonce());
        parent.symlink(&target, &tmp).map_err(|e| AgentError::io("cannot create symlink", parent.display(&tmp), e))?;
        if let Err(e) = parent.rename(&tmp, parent, &self.current_name, true) {
            let _ = parent.unlink(&tmp);
            return Err(AgentError::io("cannot rename symlink over", &self.current, e));
        }
        parent.fsync().map_err(|e| AgentError::io("cannot fsync", parent.path(), e))
    }

    /// Remove a release or staging dir: first renamed out of sight (so a crash mid-removal never
    /// leaves something that looks like a complete release), made the agent's and private (so
    /// nobody can keep filling it), then removed with bounded file descriptors.
    pub fn remove(&self, name: &str) -> Result<(), AgentError> {
        let Some(releases) = &self.releases else { return Ok(()) };
        let trash = format!("{TRASH_PREFIX}{}-{name}", nonce());
        match releases.rename(name, releases, &trash, false) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(AgentError::io("cannot remove", releases.display(name), e)),
        }
        remove_trash(releases, &trash)
    }

    /// Remove staging and trash leftovers of interrupted work; returns their names.
    pub fn clean_leftovers(&self) -> Result<Vec<String>, AgentError> {
        let mut removed = Vec::new();
        if let Some(releases) = &self.releases {
            let entries = releases.entries().map_err(|e| AgentError::io("cannot list", releases.path(), e))?;
            for (name, _) in entries {
                if [STAGING_PREFIX, TRASH_PREFIX, REMOVING_PREFIX].iter().any(|p| name.starts_with(p)) {
                    remove_trash(releases, &name)?;
                    removed.push(name);
                }
            }
        }
        // A crash between symlinkat() and renameat() in `flip` leaves a temporary link.
        if let Some(parent) = &self.current_parent {
            let prefix = format!("{}.tmp-", self.current_name);
            for (name, kind) in parent.entries().into_iter().flatten() {
                if name.starts_with(&prefix) && kind == Kind::Symlink {
                    let _ = parent.unlink(&name);
                    removed.push(name);
                }
            }
        }
        Ok(removed)
    }
}

/// Remove `name` in `releases` (already out of sight): made the agent's and private first, so a
/// process of the app user still inside cannot keep filling it.
fn remove_trash(releases: &DirHandle, name: &str) -> Result<(), AgentError> {
    if let Ok(dir) = releases.open_dir(name) {
        let _ = dir.set_owner_mode(root_owner(), 0o700);
    }
    releases.remove_tree(name).map_err(|e| AgentError::io("cannot remove", releases.display(name), e))
}

/// Which releases to delete: keep the newest `keep` releases that count (activated, and not
/// rolled back from), plus `current` and the rollback target whatever their age; everything else
/// goes (releases that were staged but never activated, or rolled back from, count as failed).
pub fn prune_plan(
    on_disk: &[ReleaseId],
    current: Option<&ReleaseId>,
    rollback_target: Option<&ReleaseId>,
    counts: &dyn Fn(&ReleaseId) -> bool,
    keep: usize,
) -> Vec<ReleaseId> {
    let mut kept: BTreeSet<&ReleaseId> = on_disk.iter().rev().filter(|id| counts(id)).take(keep).collect();
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

    fn layout(dir: &Path, current: &str) -> Layout {
        let roots = [dir.to_path_buf()];
        Layout::open(&roots, &dir.join("app"), &dir.join(current), Open::Stage).unwrap();
        Layout::open(&roots, &dir.join("app"), &dir.join(current), Open::Activate).unwrap()
    }

    #[test]
    fn flip_is_a_rename_and_current_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let layout = layout(dir.path(), "www/current");
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
        std::fs::create_dir_all(dir.path().join("www")).unwrap();
        let layout = layout(dir.path(), "www");
        let err = layout.read_current().unwrap_err().to_string();
        assert!(err.contains("not a symlink"), "{err}");
    }

    #[test]
    fn symlinks_and_loose_directories_on_the_way_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("link")).unwrap();
        let roots = [root.clone()];
        let err =
            Layout::open(&roots, &root.join("link/app"), &root.join("www/app"), Open::Stage).unwrap_err().to_string();
        assert!(err.contains("is a symlink"), "{err}");
        let err = Layout::open(&roots, &root.join("real/app"), &root.join("link/app"), Open::Activate)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a symlink"), "{err}");
        assert!(std::fs::read_dir(dir.path().join("outside")).unwrap().next().is_none(), "nothing created outside");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("real"), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err =
            Layout::open(&roots, &root.join("real/app"), &root.join("www/app"), Open::Stage).unwrap_err().to_string();
        assert!(err.contains("without the sticky bit"), "{err}");
        std::fs::set_permissions(root.join("real"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        Layout::open(&roots, &root.join("real/app"), &root.join("www/app"), Open::Stage).unwrap();
    }
}
