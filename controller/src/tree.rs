//! Walking a release tree into a [`Sink`]: from the git object database (no checkout) or from a
//! directory on disk (after build hooks). The packer is a sink; so is a checkout on disk.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use slipway_common::archive::Packer;

use crate::error::{CtlError, Result};
use crate::exclude::Excludes;

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

/// Writes the tree under a directory (the per-deploy build checkout).
pub struct DiskSink {
    pub root: PathBuf,
}

impl Sink for DiskSink {
    fn dir(&mut self, path: &str) -> io::Result<()> {
        std::fs::create_dir(self.root.join(path))
    }
    fn file(&mut self, path: &str, mode: u32, content: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(self.root.join(path))?;
        f.write_all(content)
    }
    fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        std::os::unix::fs::symlink(target, self.root.join(path))
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
