//! The manifests the controller staged on hosts, kept by digest in `cache/manifests/`: a host's
//! inventory names its retained releases by manifest digest, and the controller works out from
//! these what the host holds and sends it a diff against one of them instead of a full manifest.
//! A file that is missing or does not hash to its name counts as unknown (the host is then asked
//! for a digest per file).

use std::path::{Path, PathBuf};

use slipway_common::archive::Manifest;

use crate::error::{Context, Result};

/// How many manifests are kept (the oldest go first).
const KEEP: usize = 256;

fn dir(cache: &Path) -> PathBuf {
    cache.join("manifests")
}

fn path_of(cache: &Path, digest: &[u8]) -> PathBuf {
    dir(cache).join(format!("{}.json", hex::encode(digest)))
}

/// Keep `manifest` (once; a later save of the same digest only refreshes its age).
pub fn save(cache: &Path, manifest: &Manifest) -> Result<()> {
    let digest = manifest.digest();
    let path = path_of(cache, &digest);
    if path.exists() {
        let _ =
            std::fs::File::options().write(true).open(&path).and_then(|f| f.set_modified(std::time::SystemTime::now()));
        return Ok(());
    }
    let dir = dir(cache);
    std::fs::create_dir_all(&dir).context(format_args!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".{}-{}.tmp", hex::encode(digest), std::process::id()));
    let bytes = serde_json::to_vec(manifest).context("manifest")?;
    std::fs::write(&tmp, bytes).context(format_args!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).context(format_args!("cannot write {}", path.display()))?;
    evict(&dir);
    Ok(())
}

/// The manifest with this digest, if it is kept and intact.
pub fn load(cache: &Path, digest: &[u8]) -> Option<Manifest> {
    let bytes = std::fs::read(path_of(cache, digest)).ok()?;
    let manifest: Manifest = serde_json::from_slice(&bytes).ok()?;
    (manifest.digest().as_slice() == digest).then_some(manifest)
}

fn evict(dir: &Path) {
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() > KEEP {
        files.sort();
        for (_, path) in &files[..files.len() - KEEP] {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_common::archive::ManifestEntry;

    #[test]
    fn kept_by_digest_and_a_damaged_one_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let m = Manifest { entries: vec![ManifestEntry::dir("a"), ManifestEntry::symlink("a/l", "x")] };
        save(dir.path(), &m).unwrap();
        assert_eq!(load(dir.path(), &m.digest()), Some(m.clone()));
        std::fs::write(path_of(dir.path(), &m.digest()), b"{\"entries\":[]}").unwrap();
        assert_eq!(load(dir.path(), &m.digest()), None, "content that does not hash to its name is unknown");
        assert_eq!(load(dir.path(), &[0; 32]), None);
    }
}
