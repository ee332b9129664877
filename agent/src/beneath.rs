//! The one way the agent touches the filesystem beneath an allowed root: directories held open as
//! handles, every operation a `*at` call relative to a held handle, nothing resolved through a
//! symlink (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, `AT_SYMLINK_NOFOLLOW`), and
//! owners and modes set on opened descriptors, never on names. A path string is kept next to each
//! handle for messages only.
//!
//! The app user may own directories on the way (`/data/release` chowned to `www`, `shared/`, the
//! releases themselves): because nothing is resolved by path again once a handle is held, renaming
//! or swapping those directories can only move where the agent's own new entries land, never make
//! root write, chown or read something that is not the agent's.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags, Stat};

/// Directory levels held open at once while removing a tree; deeper directories are moved up
/// to the top of the tree being removed and removed from there, so any depth needs this many fds.
const REMOVE_DEPTH: usize = 32;
/// How often a directory that keeps refilling (a process still writing into it) is rescanned.
const REMOVE_RESCANS: usize = 8;

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS).union(ResolveFlags::NO_MAGICLINKS);
const DIR_FLAGS: OFlags = OFlags::DIRECTORY.union(OFlags::RDONLY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);
/// For `openat2`: `RESOLVE_NO_SYMLINKS` refuses a trailing symlink too, with `ELOOP` (which
/// `O_NOFOLLOW | O_DIRECTORY` would turn into `ENOTDIR`).
const DIR_FLAGS2: OFlags = OFlags::DIRECTORY.union(OFlags::RDONLY).union(OFlags::CLOEXEC);

/// A unique suffix for temporary names.
pub fn nonce() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{}-{nanos}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A directory held open.
#[derive(Debug)]
pub struct DirHandle {
    fd: OwnedFd,
    path: PathBuf,
}

/// What an entry is, read without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

impl Kind {
    pub fn of(stat: &Stat) -> Kind {
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory => Kind::Dir,
            FileType::RegularFile => Kind::File,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        }
    }
}

fn io_err(e: rustix::io::Errno) -> io::Error {
    e.into()
}

/// A single path component: not empty, no `/`, not `.` or `..`.
fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("'{name}' is not a single path component")));
    }
    Ok(())
}

impl DirHandle {
    /// Open a directory by absolute path (for the agent's own configured roots only): the last
    /// component must be a directory, not a symlink.
    pub fn open_path(path: &Path) -> io::Result<DirHandle> {
        let fd = rustix::fs::open(path, DIR_FLAGS, Mode::empty()).map_err(io_err)?;
        Ok(DirHandle { fd, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in this directory, for messages.
    pub fn display(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn try_clone(&self) -> io::Result<DirHandle> {
        Ok(DirHandle { fd: self.fd.try_clone()?, path: self.path.clone() })
    }

    /// Open `rel` (one or more components) beneath this directory; a symlink anywhere fails with
    /// `ELOOP`, a missing component with `NotFound`.
    pub fn open_dir(&self, rel: &str) -> io::Result<DirHandle> {
        let fd = rustix::fs::openat2(&self.fd, rel, DIR_FLAGS2, Mode::empty(), RESOLVE).map_err(io_err)?;
        Ok(DirHandle { fd, path: self.path.join(rel) })
    }

    /// [`Self::open_dir`], `None` when it does not exist.
    pub fn open_dir_if_exists(&self, rel: &str) -> io::Result<Option<DirHandle>> {
        match self.open_dir(rel) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Open (creating when missing, mode 0755, owned by the agent) the directory `name` here.
    pub fn create_dir(&self, name: &str) -> io::Result<DirHandle> {
        check_name(name)?;
        match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        self.open_dir(name)
    }

    /// Create the directory `name` here, failing if it exists; mode 0700 until the caller opens it up.
    pub fn create_private_dir(&self, name: &str) -> io::Result<DirHandle> {
        check_name(name)?;
        rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o700)).map_err(io_err)?;
        self.open_dir(name)
    }

    /// `stat` of `rel` beneath this directory without following any symlink; `None` when missing.
    pub fn stat(&self, rel: &str) -> io::Result<Option<Stat>> {
        let fd = match rustix::fs::openat2(
            &self.fd,
            rel,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        rustix::fs::fstat(&fd).map(Some).map_err(io_err)
    }

    /// The stat of this directory itself.
    pub fn fstat(&self) -> io::Result<Stat> {
        rustix::fs::fstat(&self.fd).map_err(io_err)
    }

    /// The entries of this directory (names and kinds, without `.` and `..`).
    pub fn entries(&self) -> io::Result<Vec<(String, Kind)>> {
        let fd = rustix::fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty()).map_err(io_err)?;
        let mut dir = rustix::fs::Dir::new(fd).map_err(io_err)?;
        let mut out = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(io_err)?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let Ok(name) = std::str::from_utf8(name) else { continue };
            let kind = match entry.file_type() {
                FileType::Directory => Kind::Dir,
                FileType::RegularFile => Kind::File,
                FileType::Symlink => Kind::Symlink,
                FileType::Unknown => self.stat(name)?.map_or(Kind::Other, |s| Kind::of(&s)),
                _ => Kind::Other,
            };
            out.push((name.to_owned(), kind));
        }
        Ok(out)
    }

    /// The target of the symlink `name`; `None` when missing, an error when it is not a symlink.
    pub fn read_link(&self, name: &str) -> io::Result<Option<PathBuf>> {
        match rustix::fs::readlinkat(&self.fd, name, Vec::new()) {
            Ok(target) => Ok(Some(PathBuf::from(OsStr::from_bytes(target.as_bytes())))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn symlink(&self, target: &Path, name: &str) -> io::Result<()> {
        check_name(name)?;
        rustix::fs::symlinkat(target, &self.fd, name).map_err(io_err)
    }

    /// Rename `from` here to `to` in `dir` (replacing it when `replace`, else failing if it exists).
    pub fn rename(&self, from: &str, dir: &DirHandle, to: &str, replace: bool) -> io::Result<()> {
        check_name(from)?;
        check_name(to)?;
        let flags = if replace { RenameFlags::empty() } else { RenameFlags::NOREPLACE };
        rustix::fs::renameat_with(&self.fd, from, &dir.fd, to, flags).map_err(io_err)
    }

    /// Put `content` at `name` here in one rename: written to a new file (never following or
    /// opening anything that exists), synced, mode `mode`, then renamed over `name`.
    pub fn replace_file(&self, name: &str, content: &[u8], mode: u32) -> io::Result<()> {
        use std::io::Write;
        check_name(name)?;
        let tmp = format!(".{name}.{}", nonce());
        let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, tmp.as_str(), flags, Mode::from_raw_mode(mode)).map_err(io_err)?;
        let mut file = std::fs::File::from(fd);
        let written = file
            .write_all(content)
            .and_then(|()| rustix::fs::fchmod(&file, Mode::from_raw_mode(mode)).map_err(io_err))
            .and_then(|()| file.sync_all())
            .and_then(|()| rustix::fs::renameat(&self.fd, tmp.as_str(), &self.fd, name).map_err(io_err));
        if written.is_err() {
            let _ = rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty());
        }
        written
    }

    /// Remove the file or symlink `name`.
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        check_name(name)?;
        rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()).map_err(io_err)
    }

    /// Change the owner of the entry `name` itself (a symlink is not followed).
    pub fn chown_entry(&self, name: &str, owner: (u32, u32)) -> io::Result<()> {
        check_name(name)?;
        let (uid, gid) = (rustix::fs::Uid::from_raw(owner.0), rustix::fs::Gid::from_raw(owner.1));
        rustix::fs::chownat(&self.fd, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW).map_err(io_err)
    }

    /// Set this directory's owner and mode through its descriptor.
    pub fn set_owner_mode(&self, owner: Option<(u32, u32)>, mode: u32) -> io::Result<()> {
        if let Some((uid, gid)) = owner {
            rustix::fs::fchown(&self.fd, Some(rustix::fs::Uid::from_raw(uid)), Some(rustix::fs::Gid::from_raw(gid)))
                .map_err(io_err)?;
        }
        rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(mode)).map_err(io_err)
    }

    pub fn fsync(&self) -> io::Result<()> {
        rustix::fs::fsync(&self.fd).map_err(io_err)
    }

    pub fn syncfs(&self) -> io::Result<()> {
        rustix::fs::syncfs(&self.fd).map_err(io_err)
    }

    /// Remove `name` here and everything below it, whatever its depth, with at most
    /// [`REMOVE_DEPTH`] directories open. Symlinks are removed, never followed. A missing `name`
    /// is not an error.
    pub fn remove_tree(&self, name: &str) -> io::Result<()> {
        check_name(name)?;
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(rustix::io::Errno::ISDIR | rustix::io::Errno::PERM) => {}
            Err(e) => return Err(e.into()),
        }
        // Directories too deep to descend into are moved up here and removed in turn.
        let mut pending = vec![name.to_owned()];
        while let Some(top) = pending.pop() {
            self.remove_dir_bounded(&top, &mut pending)?;
        }
        Ok(())
    }

    fn remove_dir_bounded(&self, top: &str, pending: &mut Vec<String>) -> io::Result<()> {
        struct Level {
            dir: rustix::fs::Dir,
            fd: OwnedFd,
            name: String,
            rescans: usize,
        }
        let open = |parent: BorrowedFd<'_>, name: &str| -> io::Result<Option<(OwnedFd, rustix::fs::Dir)>> {
            match rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => {
                    let dir = rustix::fs::Dir::read_from(&fd).map_err(io_err)?;
                    Ok(Some((fd, dir)))
                }
                Err(rustix::io::Errno::NOENT) => Ok(None),
                Err(e) => Err(e.into()),
            }
        };
        let Some((fd, dir)) = open(self.fd.as_fd(), top)? else { return Ok(()) };
        let mut stack = vec![Level { dir, fd, name: top.to_owned(), rescans: 0 }];
        while let Some(level) = stack.last_mut() {
            let next = level.dir.read().transpose().map_err(io_err)?;
            let Some(entry) = next else {
                // Directory empty (as far as this scan saw): remove it from its parent.
                let done = stack.pop().expect("non-empty stack");
                let parent = stack.last().map_or(self.fd.as_fd(), |l| l.fd.as_fd());
                match rustix::fs::unlinkat(parent, done.name.as_str(), AtFlags::REMOVEDIR) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                    Err(rustix::io::Errno::NOTEMPTY) if done.rescans < REMOVE_RESCANS => {
                        let mut again = done;
                        again.rescans += 1;
                        again.dir.rewind();
                        stack.push(again);
                    }
                    Err(e) => return Err(e.into()),
                }
                continue;
            };
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsStr::from_bytes(name).to_owned();
            let Some(name) = name.to_str().map(str::to_owned) else {
                // Not UTF-8: remove it through its raw name.
                let raw = entry.file_name().to_owned();
                match rustix::fs::unlinkat(&level.fd, raw.as_c_str(), AtFlags::empty()) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => continue,
                    Err(rustix::io::Errno::ISDIR) => {
                        let moved = format!(".slipway-rm-{}", nonce());
                        rustix::fs::renameat(&level.fd, raw.as_c_str(), &self.fd, moved.as_str()).map_err(io_err)?;
                        pending.push(moved);
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            let is_dir = match entry.file_type() {
                FileType::Directory => true,
                FileType::Unknown => rustix::fs::statat(&level.fd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory),
                _ => false,
            };
            if !is_dir {
                match rustix::fs::unlinkat(&level.fd, name.as_str(), AtFlags::empty()) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => continue,
                    Err(rustix::io::Errno::ISDIR) => {} // Replaced by a directory meanwhile.
                    Err(e) => return Err(e.into()),
                }
            }
            if stack.len() >= REMOVE_DEPTH {
                let moved = format!(".slipway-rm-{}", nonce());
                let from = &stack.last().expect("non-empty stack").fd;
                rustix::fs::renameat(from, name.as_str(), &self.fd, moved.as_str()).map_err(io_err)?;
                pending.push(moved);
                continue;
            }
            let parent = stack.last().expect("non-empty stack").fd.as_fd();
            if let Some((fd, dir)) = open(parent, &name)? {
                stack.push(Level { dir, fd, name, rescans: 0 });
            }
        }
        Ok(())
    }
}

/// Whether a directory may lie on the way to a release: not writable by group or others unless
/// sticky (like `/tmp`), so nobody but its owner can swap its entries.
pub fn loosely_writable(stat: &Stat) -> bool {
    let mode = stat.st_mode;
    mode & 0o022 != 0 && mode & 0o1000 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_tree_handles_any_depth_with_few_fds() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = dir.path().join("deep");
        std::fs::create_dir(&p).unwrap();
        for i in 0..300 {
            std::fs::write(p.join("f"), b"x").unwrap();
            if i % 50 == 0 {
                std::os::unix::fs::symlink("/etc", p.join("link")).unwrap();
            }
            p = p.join("d");
            std::fs::create_dir(&p).unwrap();
        }
        let handle = DirHandle::open_path(dir.path()).unwrap();
        handle.remove_tree("deep").unwrap();
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "everything removed, nothing left");
        assert!(Path::new("/etc").is_dir());
        handle.remove_tree("deep").unwrap();
    }

    #[test]
    fn symlinks_are_refused_on_the_way() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        let handle = DirHandle::open_path(dir.path()).unwrap();
        assert!(handle.open_dir("real").is_ok());
        let err = handle.open_dir("link").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(rustix::io::Errno::LOOP.raw_os_error()), "{err}");
        assert!(handle.open_dir("../").is_err());
        assert_eq!(handle.stat("link").unwrap().map(|s| Kind::of(&s)), Some(Kind::Symlink));
        assert!(handle.create_dir("link").is_err());
    }
}
