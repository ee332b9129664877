//! Kept manifests: for each retained release, the manifest it was staged with and the identity
//! (device, inode, size, mtime) of every file as staged, in `state_dir/manifests/`. A later delta
//! reuses only files whose identity is unchanged, opened beneath the retained release's handle.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use slipway_common::ReleaseId;
use slipway_common::archive::{EntryKind, FileIdentity, Manifest, ReuseSource};

use crate::beneath::{DirHandle, Kind};
use crate::error::AgentError;
use crate::layout::Layout;

/// What the agent keeps about a release for later deltas.
#[derive(serde::Deserialize)]
struct KeptRelease {
    manifest: Manifest,
    stamps: HashMap<String, FileIdentity>,
}

/// [`KeptRelease`] as it is written (borrowing what the stage already holds).
#[derive(serde::Serialize)]
struct KeptReleaseRef<'a> {
    manifest: &'a Manifest,
    stamps: &'a HashMap<String, FileIdentity>,
}

/// Whether `path` is a shared path or lies under one: its content is live, never reused.
pub fn under_shared(path: &str, shared: &[String]) -> bool {
    shared.iter().any(|s| path == s || path.strip_prefix(s.as_str()).is_some_and(|rest| rest.starts_with('/')))
}

/// A regular file's identity beneath `dir`, without following symlinks.
fn stamp(dir: &DirHandle, rel: &str) -> Option<FileIdentity> {
    dir.stat(rel).ok().flatten().filter(|s| Kind::of(s) == Kind::File).map(|s| FileIdentity::of_stat(&s))
}

/// Where kept manifests of one target live.
pub struct KeptManifests {
    pub dir: PathBuf,
}

impl KeptManifests {
    pub fn new(state_dir: &Path, project: &str, env: &str) -> Self {
        KeptManifests { dir: state_dir.join("manifests").join(project).join(env) }
    }

    fn path(&self, release: &str) -> PathBuf {
        self.dir.join(format!("{release}.json"))
    }

    /// Keep `manifest` for `release`, with the identity of each of its files in `root` (the
    /// staged tree) — streamed to the file, no second copy of a large manifest in memory.
    pub fn save(
        &self,
        release: &ReleaseId,
        root: &DirHandle,
        manifest: &Manifest,
        shared: &[String],
    ) -> Result<(), AgentError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| AgentError::io("cannot create", &self.dir, e))?;
        let stamps: HashMap<String, FileIdentity> = manifest
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::File && !under_shared(&e.path, shared))
            .filter_map(|e| stamp(root, &e.path).map(|s| (e.path.clone(), s)))
            .collect();
        let path = self.path(release.as_str());
        let kept = KeptReleaseRef { manifest, stamps: &stamps };
        let file = std::fs::File::create(&path).map_err(|e| AgentError::io("cannot write", &path, e))?;
        let mut out = std::io::BufWriter::new(file);
        serde_json::to_writer(&mut out, &kept)
            .map_err(io::Error::from)
            .and_then(|()| std::io::Write::flush(&mut out))
            .map_err(|e| AgentError::io("cannot write", &path, e))
    }

    pub fn remove(&self, release: &str) {
        let _ = std::fs::remove_file(self.path(release));
    }

    /// The kept manifest of `release`, if it can be read.
    pub fn load(&self, release: &str) -> Option<Manifest> {
        let bytes = std::fs::read(self.path(release)).ok()?;
        serde_json::from_slice::<KeptRelease>(&bytes).ok().map(|k| k.manifest)
    }

    /// Content sha256 -> a file holding it, over the retained releases (newest first). Only
    /// regular files whose identity is unchanged since staging are offered.
    pub fn reuse_sources(&self, layout: &Layout) -> Result<HashMap<String, ReuseSource>, AgentError> {
        self.inventory(layout).map(|(sources, _)| sources)
    }

    /// The reuse map, and for each retained release whose kept manifest reads: its manifest's
    /// digest and the files of it whose content no retained file can provide any more (a hook
    /// wrote them since staging). That is what the controller needs to know what a host holds
    /// without a digest per file on the wire.
    pub fn inventory(&self, layout: &Layout) -> Result<(HashMap<String, ReuseSource>, Vec<Retained>), AgentError> {
        let mut sources = HashMap::new();
        let mut retained = Vec::new();
        let mut files_of: Vec<Vec<(String, String)>> = Vec::new();
        for id in layout.list()?.iter().rev() {
            let Ok(bytes) = std::fs::read(self.path(id.as_str())) else { continue };
            let Ok(kept) = serde_json::from_slice::<KeptRelease>(&bytes) else { continue };
            let Ok(release) = layout.open_release(id) else { continue };
            retained.push(Retained { id: id.clone(), manifest_sha256: kept.manifest.digest(), changed: Vec::new() });
            let display = release.path().to_path_buf();
            let fd =
                Arc::new(release.fd().try_clone_to_owned().map_err(|e| AgentError::io("cannot open", &display, e))?);
            let mut files = Vec::new();
            for e in kept.manifest.entries.into_iter().filter(|e| e.kind == EntryKind::File) {
                files.push((e.path.clone(), e.sha256.clone()));
                if sources.contains_key(&e.sha256) {
                    continue;
                }
                let Some(identity) = kept.stamps.get(&e.path) else { continue };
                if identity.dev != 0 && stamp(&release, &e.path).as_ref() == Some(identity) {
                    let source = ReuseSource {
                        release: fd.clone(),
                        display: display.join(&e.path),
                        rel: e.path,
                        identity: *identity,
                    };
                    sources.insert(e.sha256, source);
                }
            }
            files_of.push(files);
        }
        for (r, files) in retained.iter_mut().zip(files_of) {
            r.changed = files.into_iter().filter(|(_, sha)| !sources.contains_key(sha)).map(|(p, _)| p).collect();
        }
        Ok((sources, retained))
    }
}

/// A retained release as the inventory reports it.
#[derive(Debug, Clone)]
pub struct Retained {
    pub id: ReleaseId,
    pub manifest_sha256: [u8; 32],
    /// Its files whose content no retained file can provide.
    pub changed: Vec<String>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn shared_prefixes() {
        let shared = ["storage/logs".to_owned(), ".env".to_owned()];
        assert!(super::under_shared("storage/logs/app.log", &shared));
        assert!(super::under_shared(".env", &shared));
        assert!(!super::under_shared("storage/logs2/x", &shared));
        assert!(!super::under_shared(".envrc", &shared));
    }
}
