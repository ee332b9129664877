//! Walking a release tree into a [`Sink`]: from the git object database (no checkout) or from a
//! directory on disk (after build hooks). The packer is a sink; so is a checkout on disk.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use slipway_common::archive::Packer;

use crate::error::{CtlError, Result};
use crate::source::exclude::Excludes;

/// Receives a tree, parents before children.
pub trait Sink {
    fn dir(&mut self, path: &str) -> io::Result<()>;
    fn file(&mut self, path: &str, mode: u32, content: &[u8]) -> io::Result<()>;
    fn symlink(&mut self, path: &str, target: &str) -> io::Result<()>;
    /// A file from the git object database; sinks that know the blob by its id skip reading it.
    fn git_file(&mut self, repo: &git2::Repository, path: &str, mode: u32, oid: git2::Oid) -> io::Result<()> {
        let blob = repo.find_blob(oid).map_err(io::Error::other)?;
        self.file(path, mode, blob.content())
    }
}

impl<W: Write> Sink for Packer<W> {
    fn dir(&mut self, path: &str) -> io::Result<()> {
        self.add_dir(path)
    }
    fn file(&mut self, path: &str, mode: u32, content: &[u8]) -> io::Result<()> {
        self.add_file(path, mode, content)
    }
    fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.add_symlink(path, target)
    }
}

/// Writes the tree beneath a directory held open (the per-deploy build checkout): every entry is
/// created relative to its parent's descriptor, which is opened beneath the root without
/// following any symlink, so no name in the tree can make the controller write elsewhere.
pub struct DiskSink {
    root: std::os::fd::OwnedFd,
    display: PathBuf,
    last: Option<(String, std::os::fd::OwnedFd)>,
}

impl DiskSink {
    pub fn new(root: &Path) -> io::Result<Self> {
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let root_fd = rustix::fs::open(root, flags, Mode::empty())?;
        Ok(DiskSink { root: root_fd, display: root.to_path_buf(), last: None })
    }

    /// The parent directory of `path`, held open, and the entry's own name.
    fn parent<'a>(&mut self, path: &'a str) -> io::Result<(&std::os::fd::OwnedFd, &'a str)> {
        let Some((dir, name)) = path.rsplit_once('/') else { return Ok((&self.root, path)) };
        if self.last.as_ref().is_none_or(|(p, _)| p != dir) {
            let fd = rustix::fs::openat2(
                &self.root,
                dir,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            )
            .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("{}/{dir}: {e}", self.display.display())))?;
            self.last = Some((dir.to_owned(), fd));
        }
        Ok((&self.last.as_ref().expect("just set").1, name))
    }
}

impl Sink for DiskSink {
    fn dir(&mut self, path: &str) -> io::Result<()> {
        let (parent, name) = self.parent(path)?;
        rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o755)).map_err(io::Error::from)
    }
    fn file(&mut self, path: &str, mode: u32, content: &[u8]) -> io::Result<()> {
        let (parent, name) = self.parent(path)?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(parent, name, flags, Mode::from_raw_mode(mode & 0o777))?;
        std::fs::File::from(fd).write_all(content)
    }
    fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let (parent, name) = self.parent(path)?;
        rustix::fs::symlinkat(target, parent, name).map_err(io::Error::from)
    }
}

/// Check one git tree entry name: a single, ordinary path component.
pub fn check_entry_name(name: &[u8], prefix: &str) -> Result<()> {
    let shown = || slipway_common::archive::clip(&String::from_utf8_lossy(name), 128);
    let why = if name.is_empty() {
        Some("is empty")
    } else if name == b"." || name == b".." {
        Some("is '.' or '..'")
    } else if name.contains(&b'/') {
        Some("contains '/'")
    } else if name.contains(&0) {
        Some("contains NUL")
    } else {
        None
    };
    match why {
        Some(why) => Err(CtlError::bad(format!(
            "the repository's tree entry '{prefix}{}' {why}: a hostile or corrupt commit; nothing was written or \
             packaged",
            shown()
        ))
        .fix("fix the history (or deploy another ref)")),
        None => Ok(()),
    }
}

/// Walk a directory on disk into `sink`, sorted, leaving out what `excludes` says.
pub fn walk_dir(root: &Path, excludes: &Excludes, sink: &mut dyn Sink) -> Result<()> {
    walk_dir_at(root, "", excludes, sink)
}

fn walk_dir_at(dir: &Path, prefix: &str, excludes: &Excludes, sink: &mut dyn Sink) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .and_then(|rd| rd.collect::<io::Result<Vec<_>>>())
        .map_err(|e| CtlError::failed(format!("cannot read {}: {e}", dir.display())))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name
            .to_str()
            .ok_or_else(|| CtlError::failed(format!("{} has a non-UTF-8 name; rename it", entry.path().display())))?;
        let path = format!("{prefix}{name}");
        let full = entry.path();
        let meta = std::fs::symlink_metadata(&full)
            .map_err(|e| CtlError::failed(format!("cannot stat {}: {e}", full.display())))?;
        let kind = meta.file_type();
        if excludes.excluded(&path, kind.is_dir()) {
            continue;
        }
        let fail = |e: io::Error| CtlError::failed(format!("cannot package '{path}': {e}"));
        if kind.is_dir() {
            sink.dir(&path).map_err(fail)?;
            walk_dir_at(&full, &format!("{path}/"), excludes, sink)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&full).map_err(fail)?;
            let target =
                target.to_str().ok_or_else(|| CtlError::failed(format!("symlink '{path}' has a non-UTF-8 target")))?;
            sink.symlink(&path, target).map_err(fail)?;
        } else if kind.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let content = std::fs::read(&full).map_err(fail)?;
            sink.file(&path, meta.permissions().mode(), &content).map_err(fail)?;
        } else {
            return Err(CtlError::failed(format!(
                "the build left '{path}', which is not a file, directory or symlink; remove it in post_deploy or exclude it"
            )));
        }
    }
    Ok(())
}
