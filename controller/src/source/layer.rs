//! The env layer: an env's `config_dir` overlay put on top of a build (DESIGN.md "What ships").
//! The build is env-independent — one manifest, one digest in every env — and the layer is
//! applied to its packaged bytes, never to a checkout the build hooks saw: a release is the
//! build's entries with the overlay's files and links replacing theirs and its directories
//! merged in.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use slipway_common::archive::Packer;

use crate::error::{Context, CtlError, Result};
use crate::source::exclude::Excludes;
use crate::source::tree::{Sink, walk_dir};

/// One entry of the overlay, in walk order (parents first).
enum Item {
    Dir(String),
    File(String, u32, Vec<u8>),
    Link(String, String),
}

impl Item {
    fn path(&self) -> &str {
        match self {
            Item::Dir(p) | Item::File(p, ..) | Item::Link(p, _) => p,
        }
    }
}

#[derive(Default)]
struct Collect(Vec<Item>);

impl Sink for Collect {
    fn dir(&mut self, path: &str) -> std::io::Result<()> {
        self.0.push(Item::Dir(path.to_owned()));
        Ok(())
    }
    fn file(&mut self, path: &str, mode: u32, content: &[u8]) -> std::io::Result<()> {
        self.0.push(Item::File(path.to_owned(), mode, content.to_vec()));
        Ok(())
    }
    fn symlink(&mut self, path: &str, target: &str) -> std::io::Result<()> {
        self.0.push(Item::Link(path.to_owned(), target.to_owned()));
        Ok(())
    }
}

/// Write the build's packaged entries (`build`, a tar.zst made here) with the overlay directory
/// on top into `packer`. Files and links of the overlay replace the build's entry at their path
/// (a whole directory of the build included); its directories merge with the build's.
pub fn compose_into<W: Write>(build: &Path, overlay: &Path, packer: &mut Packer<W>) -> Result<usize> {
    let mut layer = Collect::default();
    walk_dir(overlay, &Excludes::default(), &mut layer)?;
    let layer = layer.0;
    let dirs: HashSet<&str> = layer.iter().filter(|i| matches!(i, Item::Dir(_))).map(Item::path).collect();
    let leaves: HashSet<&str> = layer.iter().filter(|i| !matches!(i, Item::Dir(_))).map(Item::path).collect();
    // A build entry is replaced when the overlay has a file or link at it or above it.
    let shadowed = |path: &str| {
        let mut at = path;
        loop {
            if leaves.contains(at) {
                return true;
            }
            match at.rfind('/') {
                Some(i) => at = &at[..i],
                None => return false,
            }
        }
    };
    let mut kept_dirs: HashSet<String> = HashSet::new();
    let input = std::fs::File::open(build).context(format_args!("cannot read the build {}", build.display()))?;
    let decoder = zstd::stream::read::Decoder::new(input).context("the build's archive")?;
    let mut archive = tar::Archive::new(decoder);
    for entry in archive.entries().context("the build's archive")? {
        let mut entry = entry.context("the build's archive")?;
        let path = String::from_utf8_lossy(&entry.path_bytes()).trim_end_matches('/').to_owned();
        if shadowed(&path) {
            continue;
        }
        let mode = entry.header().mode().context("the build's archive")?;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                packer.add_dir(&path).context("cannot write the release")?;
                kept_dirs.insert(path);
            }
            // The overlay puts a directory where the build has a file or link.
            _ if dirs.contains(path.as_str()) => {}
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .ok_or_else(|| CtlError::failed(format!("the build's link '{path}' has no target")))?;
                packer.add_symlink(&path, &target).context("cannot write the release")?;
            }
            _ => {
                let mut content = Vec::with_capacity(entry.size() as usize);
                std::io::Read::read_to_end(&mut entry, &mut content).context("the build's archive")?;
                packer.add_file(&path, mode, &content).context("cannot write the release")?;
            }
        }
    }
    for item in &layer {
        match item {
            Item::Dir(p) if kept_dirs.contains(p) => Ok(()),
            Item::Dir(p) => packer.add_dir(p),
            Item::File(p, mode, content) => packer.add_file(p, *mode, content),
            Item::Link(p, target) => packer.add_symlink(p, target),
        }
        .context("cannot write the release")?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_common::archive::EntryKind;

    fn pack(dir: &Path, out: &Path) {
        let file = std::fs::File::create(out).unwrap();
        let mut packer = Packer::new(file, 3, 1, 0).unwrap();
        walk_dir(dir, &Excludes::default(), &mut packer).unwrap();
        packer.finish().unwrap();
    }

    #[test]
    fn the_overlay_replaces_files_and_links_merges_directories_and_shadows_what_it_replaces() {
        let t = tempfile::tempdir().unwrap();
        let (build, overlay) = (t.path().join("build"), t.path().join("overlay"));
        std::fs::create_dir_all(build.join("config")).unwrap();
        std::fs::create_dir_all(build.join("cache/deep")).unwrap();
        std::fs::write(build.join("config/app.ini"), "env=dev\n").unwrap();
        std::fs::write(build.join("config/db.ini"), "host=localhost\n").unwrap();
        std::fs::write(build.join("cache/deep/x"), "x").unwrap();
        std::fs::write(build.join("logs"), "a file in the build").unwrap();
        std::os::unix::fs::symlink("config/app.ini", build.join("app.ini")).unwrap();
        std::fs::create_dir_all(overlay.join("config")).unwrap();
        std::fs::create_dir_all(overlay.join("logs")).unwrap();
        std::fs::write(overlay.join("config/app.ini"), "env=prod\n").unwrap();
        std::fs::write(overlay.join(".env"), "APP_ENV=prod\n").unwrap();
        std::fs::write(overlay.join("cache"), "a file over a directory").unwrap();
        std::fs::write(overlay.join("app.ini"), "a file over a link").unwrap();
        let packed = t.path().join("build.tar.zst");
        pack(&build, &packed);
        let mut packer = Packer::new(Vec::new(), 3, 1, 0).unwrap();
        compose_into(&packed, &overlay, &mut packer).unwrap();
        let manifest = packer.finish().unwrap().manifest;
        manifest.validate(&slipway_common::archive::Limits::default()).unwrap();
        let kind = |p: &str| manifest.entries.iter().find(|e| e.path == p).map(|e| e.kind);
        let size = |p: &str| manifest.entries.iter().find(|e| e.path == p).unwrap().size;
        assert_eq!(size("config/app.ini"), 9, "the overlay's file replaces the build's");
        assert_eq!(size("config/db.ini"), 15, "the build's other files stay");
        assert_eq!(kind(".env"), Some(EntryKind::File), "the overlay adds");
        assert_eq!(kind("cache"), Some(EntryKind::File));
        assert_eq!(kind("cache/deep"), None, "a directory the overlay replaced is gone, whole");
        assert_eq!(kind("cache/deep/x"), None);
        assert_eq!(kind("logs"), Some(EntryKind::Dir), "a directory replaces a file");
        assert_eq!(kind("app.ini"), Some(EntryKind::File), "a file replaces a link");
        let paths: Vec<&str> = manifest.entries.iter().map(|e| e.path.as_str()).collect();
        let unique: HashSet<&str> = paths.iter().copied().collect();
        assert_eq!(paths.len(), unique.len(), "each path once: {paths:?}");
    }
}
