//! The release manifest: every entry of a release tree (path, kind, mode, size, sha256, link
//! target), its rules (paths, parents, symlinks that stay inside, limits), its digest (the same
//! on both sides whatever the entries' order) and the diff between two manifests, so a host that
//! holds the base needs only the changes.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::archive::ArchiveError;

type Result<T, E = ArchiveError> = std::result::Result<T, E>;

pub(crate) const MAX_PATH_LEN: usize = 4096;
const MAX_COMPONENT_LEN: usize = 255;
const MAX_SYMLINK_HOPS: u32 = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

impl EntryKind {
    pub(crate) fn word(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "directory",
            EntryKind::Symlink => "symlink",
        }
    }
}

/// One entry of the release tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Relative, `/`-separated, no `.`/`..`, no trailing slash.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits, normalised (see [`normalise_mode`]).
    pub mode: u32,
    /// File size in bytes (0 for directories and symlinks).
    pub size: u64,
    /// Lowercase hex sha256 of a file's content; empty otherwise.
    pub sha256: String,
    /// A symlink's target; empty otherwise.
    pub link_target: String,
}

impl ManifestEntry {
    pub fn dir(path: &str) -> Self {
        ManifestEntry {
            path: path.to_owned(),
            kind: EntryKind::Dir,
            mode: normalise_mode(EntryKind::Dir, 0o755),
            size: 0,
            sha256: String::new(),
            link_target: String::new(),
        }
    }

    /// `sha256`: lowercase hex of the content.
    pub fn file(path: &str, mode: u32, size: u64, sha256: String) -> Self {
        ManifestEntry {
            path: path.to_owned(),
            kind: EntryKind::File,
            mode: normalise_mode(EntryKind::File, mode),
            size,
            sha256,
            link_target: String::new(),
        }
    }

    pub fn symlink(path: &str, target: &str) -> Self {
        ManifestEntry {
            path: path.to_owned(),
            kind: EntryKind::Symlink,
            mode: 0o777,
            size: 0,
            sha256: String::new(),
            link_target: target.to_owned(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub entries: Vec<ManifestEntry>,
}

/// What the extractor accepts at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_entries: u64,
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_entries: 1_000_000, max_bytes: 64 << 30 }
    }
}

/// Modes kept: permission bits without setuid/setgid/sticky and without group/world write.
/// Directories are always traversable by their owner.
pub fn normalise_mode(kind: EntryKind, mode: u32) -> u32 {
    match kind {
        EntryKind::File => mode & 0o755,
        EntryKind::Dir => (mode & 0o755) | 0o700,
        EntryKind::Symlink => 0o777,
    }
}

/// Check a path from an archive or manifest and return it without a trailing slash.
pub fn check_path(raw: &[u8]) -> Result<String> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| ArchiveError::UnsafePath { path: clip(&String::from_utf8_lossy(raw), CLIP), why: "not UTF-8" })?;
    let unsafe_path = |why| Err(ArchiveError::UnsafePath { path: clip(text, CLIP), why });
    let path = text.strip_suffix('/').unwrap_or(text);
    if path.is_empty() {
        return unsafe_path("empty");
    }
    if path.starts_with('/') {
        return unsafe_path("absolute");
    }
    if path.len() > MAX_PATH_LEN {
        return unsafe_path("too long");
    }
    if path.contains('\0') {
        return unsafe_path("contains NUL");
    }
    for component in path.split('/') {
        match component {
            "" => return unsafe_path("empty component"),
            "." => return unsafe_path("'.' component"),
            ".." => return unsafe_path("'..' component"),
            c if c.len() > MAX_COMPONENT_LEN => return unsafe_path("component too long"),
            _ => {}
        }
    }
    Ok(path.to_owned())
}

pub(crate) fn parent_of(path: &str) -> Option<&str> {
    path.rsplit_once('/').map(|(p, _)| p)
}

pub(crate) fn file_name_of(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, n)| n)
}

/// The manifest's paths as a tree of numbered nodes (0 is the release root), so a symlink is
/// resolved one hash lookup per component: linear in the targets' length, whatever the depth.
struct PathTree<'a> {
    children: HashMap<(u32, &'a str), u32>,
    links: HashMap<u32, &'a str>,
}

impl<'a> PathTree<'a> {
    fn new(entries: &'a [ManifestEntry]) -> Self {
        let mut tree = PathTree { children: HashMap::with_capacity(entries.len()), links: HashMap::new() };
        let mut node_of: HashMap<&'a str, u32> = HashMap::with_capacity(entries.len());
        for e in entries {
            // Parents come first (validated before), so the parent's node exists.
            let (parent, name) = match e.path.rsplit_once('/') {
                Some((p, n)) => (node_of.get(p).copied().unwrap_or(u32::MAX), n),
                None => (0, e.path.as_str()),
            };
            let id = node_of.len() as u32 + 1;
            node_of.insert(e.path.as_str(), id);
            tree.children.insert((parent, name), id);
            if e.kind == EntryKind::Symlink {
                tree.links.insert(id, e.link_target.as_str());
            }
        }
        tree
    }

    /// Walk `target` from the directory `stack` (nodes below the root; `None` for a place not in
    /// the manifest) the way the kernel would, following the release's own symlinks. `Err` when
    /// any step leaves the release.
    fn resolve(&self, stack: &mut Vec<Option<u32>>, target: &str, hops: &mut u32) -> std::result::Result<(), ()> {
        if target.is_empty() || target.starts_with('/') || target.contains('\0') {
            return Err(());
        }
        for component in target.split('/') {
            match component {
                "" | "." => {}
                ".." => {
                    stack.pop().ok_or(())?;
                }
                name => {
                    let here = stack.last().copied().unwrap_or(Some(0));
                    let node = here.and_then(|h| self.children.get(&(h, name)).copied());
                    match node.and_then(|n| self.links.get(&n)) {
                        Some(next) => {
                            *hops += 1;
                            if *hops > MAX_SYMLINK_HOPS {
                                return Err(());
                            }
                            self.resolve(stack, next, hops)?;
                        }
                        None => stack.push(node),
                    }
                }
            }
        }
        Ok(())
    }
}

/// At most `max` bytes of text received from elsewhere, for an error message or a log line.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

/// How much of a received name goes into a message.
pub(crate) const CLIP: usize = 256;

impl Manifest {
    pub fn file_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    /// Check the manifest on its own: paths, uniqueness, parents, symlink targets, limits.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        if self.entries.len() as u64 > limits.max_entries {
            return Err(ArchiveError::Limit(format!(
                "{} entries, at most {} allowed",
                self.entries.len(),
                limits.max_entries
            )));
        }
        let total = self.file_bytes();
        if total > limits.max_bytes {
            return Err(ArchiveError::Limit(format!("{total} bytes, at most {} allowed", limits.max_bytes)));
        }
        let mut kinds: HashMap<&str, EntryKind> = HashMap::with_capacity(self.entries.len());
        let mut links: Vec<(&str, &str)> = Vec::new();
        for e in &self.entries {
            let path = check_path(e.path.as_bytes())?;
            if path != e.path {
                return Err(ArchiveError::Manifest(format!("path '{}' has a trailing slash", e.path)));
            }
            if kinds.insert(&e.path, e.kind).is_some() {
                return Err(ArchiveError::Duplicate(e.path.clone()));
            }
            if let Some(parent) = parent_of(&e.path)
                && kinds.get(parent) != Some(&EntryKind::Dir)
            {
                return Err(ArchiveError::Parent(e.path.clone()));
            }
            match e.kind {
                EntryKind::File => {
                    if e.sha256.len() != 64 || !e.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(ArchiveError::Manifest(format!("'{}' has no valid sha256", e.path)));
                    }
                }
                EntryKind::Dir => {}
                EntryKind::Symlink => {
                    links.push((e.path.as_str(), e.link_target.as_str()));
                }
            }
        }
        let tree = PathTree::new(&self.entries);
        for (path, target) in &links {
            if target.len() > MAX_PATH_LEN {
                return Err(ArchiveError::Limit(format!(
                    "symlink '{}' has a {}-byte target, at most {MAX_PATH_LEN} allowed",
                    clip(path, CLIP),
                    target.len()
                )));
            }
        }
        for (path, target) in &links {
            let mut stack: Vec<Option<u32>> = Vec::new();
            let mut hops = 0;
            let escapes = match parent_of(path) {
                Some(parent) => tree.resolve(&mut stack, parent, &mut hops),
                None => Ok(()),
            }
            .and_then(|()| tree.resolve(&mut stack, target, &mut hops));
            if escapes.is_err() {
                return Err(ArchiveError::SymlinkEscape { path: clip(path, CLIP), target: clip(target, CLIP) });
            }
        }
        Ok(())
    }
}

/// What changes one manifest into another: entries added or changed (whole), and paths removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestDiff {
    pub upsert: Vec<ManifestEntry>,
    pub removed: Vec<String>,
}

impl Manifest {
    /// sha256 of the manifest's entries taken in path order, so it does not depend on the order
    /// they were listed in: the controller's and the agent's copies of one manifest agree.
    pub fn digest(&self) -> [u8; 32] {
        let mut entries: Vec<&ManifestEntry> = self.entries.iter().collect();
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let mut hasher = Sha256::new();
        for e in entries {
            hasher.update(e.kind.word().as_bytes());
            hasher.update(format!("\0{:o}\0{}\0{}\0", e.mode, e.size, e.sha256).as_bytes());
            hasher.update(e.link_target.as_bytes());
            hasher.update(b"\0");
            hasher.update(e.path.as_bytes());
            hasher.update(b"\n");
        }
        hasher.finalize().into()
    }

    /// The changes from `base` to `self`.
    pub fn diff_from(&self, base: &Manifest) -> ManifestDiff {
        let old: HashMap<&str, &ManifestEntry> = base.entries.iter().map(|e| (e.path.as_str(), e)).collect();
        let new: HashMap<&str, &ManifestEntry> = self.entries.iter().map(|e| (e.path.as_str(), e)).collect();
        let upsert = self.entries.iter().filter(|e| old.get(e.path.as_str()) != Some(e)).cloned().collect();
        let removed =
            base.entries.iter().filter(|e| !new.contains_key(e.path.as_str())).map(|e| e.path.clone()).collect();
        ManifestDiff { upsert, removed }
    }

    /// `base` with `diff` applied, entries in path order (parents before children). Refuses a
    /// diff that removes or adds a path twice, or removes what is not there.
    pub fn apply(base: &Manifest, diff: &ManifestDiff) -> Result<Manifest> {
        let mut entries: std::collections::BTreeMap<String, ManifestEntry> =
            base.entries.iter().map(|e| (e.path.clone(), e.clone())).collect();
        for path in &diff.removed {
            if entries.remove(path).is_none() {
                return Err(ArchiveError::Manifest(format!(
                    "the diff removes '{}', which the base manifest does not have",
                    clip(path, CLIP)
                )));
            }
        }
        let mut upserted = std::collections::HashSet::with_capacity(diff.upsert.len());
        for e in &diff.upsert {
            if !upserted.insert(e.path.as_str()) {
                return Err(ArchiveError::Duplicate(clip(&e.path, CLIP)));
            }
            entries.insert(e.path.clone(), e.clone());
        }
        Ok(Manifest { entries: entries.into_values().collect() })
    }
}

#[cfg(test)]
mod diff_tests {
    use super::*;

    fn file(path: &str, content: &str) -> ManifestEntry {
        ManifestEntry::file(path, 0o644, content.len() as u64, hex::encode(Sha256::digest(content)))
    }

    #[test]
    fn a_diff_applied_to_its_base_gives_the_manifest_and_its_digest() {
        let base = Manifest {
            entries: vec![
                ManifestEntry::dir("a"),
                file("a/one", "1"),
                file("a/two", "2"),
                ManifestEntry::symlink("link", "a/one"),
                file("gone", "x"),
            ],
        };
        let new = Manifest {
            entries: vec![
                ManifestEntry::dir("b"),
                file("b/new", "n"),
                ManifestEntry::dir("a"),
                file("a/one", "1 changed"),
                file("a/two", "2"),
                ManifestEntry::symlink("link", "a/two"),
            ],
        };
        let diff = new.diff_from(&base);
        assert_eq!(diff.removed, ["gone"]);
        let upserted: Vec<&str> = diff.upsert.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(upserted, ["b", "b/new", "a/one", "link"]);
        let rebuilt = Manifest::apply(&base, &diff).unwrap();
        assert_eq!(rebuilt.digest(), new.digest(), "order does not matter to the digest");
        assert_ne!(base.digest(), new.digest());
        rebuilt.validate(&Limits::default()).unwrap();
        let bad = ManifestDiff { upsert: vec![], removed: vec!["nope".into()] };
        assert!(Manifest::apply(&base, &bad).is_err());
    }
}
