//! Packaged releases in `<home>/cache/artifacts/<commit>-<settings digest>/`: the tar.zst, its
//! manifest and digest. A deploy packages **once** whatever the host count, and a deploy of the
//! same commit with the same recipe (excludes, build hooks, overlay digest) reuses the package
//! without building again.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use slipway_common::archive::{Manifest, Packer};

use crate::build::Recipe;
use crate::error::{Context, CtlError, Result};
use crate::exclude::Excludes;
use crate::git;
use crate::tree::walk_dir;

/// Bump when the package layout changes, so old cache entries are not reused.
const FORMAT: u32 = 1;
const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Artifact {
    #[serde(skip)]
    pub path: PathBuf,
    #[serde(skip)]
    pub manifest: Manifest,
    pub sha256: String,
    pub compressed_bytes: u64,
    pub file_bytes: u64,
    pub entries: u64,
    pub submodules_skipped: usize,
    #[serde(skip)]
    pub cached: bool,
    #[serde(skip)]
    pub package_ms: u64,
}

fn cache_dir(cache: &Path, recipe: &Recipe) -> PathBuf {
    let settings = format!("format={FORMAT};level={ZSTD_LEVEL};{}", recipe.settings_digest());
    let digest = hex::encode(Sha256::digest(settings.as_bytes()));
    cache.join("artifacts").join(format!("{}-{}", recipe.commit, &digest[..16]))
}

fn load(dir: &Path) -> Option<Artifact> {
    let meta: Artifact = serde_json::from_slice(&std::fs::read(dir.join("meta.json")).ok()?).ok()?;
    let manifest: Manifest = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).ok()?).ok()?;
    let path = dir.join("artifact.tar.zst");
    let size = std::fs::metadata(&path).ok()?.len();
    (size == meta.compressed_bytes).then_some(Artifact { path, manifest, cached: true, ..meta })
}

/// The cached package for this recipe, if one was built before (and mark it used).
pub fn lookup(cache: &Path, recipe: &Recipe) -> Option<Artifact> {
    let dir = cache_dir(cache, recipe);
    let found = load(&dir)?;
    touch(&dir);
    Some(found)
}

/// Record a use (the LRU clock is the mtime of `used`).
fn touch(dir: &Path) {
    let _ = std::fs::File::create(dir.join("used"));
}

/// Default bound of `cache/artifacts` (`SLIPWAY_CACHE_MAX_BYTES` overrides).
const CACHE_MAX_BYTES: u64 = 10 << 30;

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).into_iter().flatten().flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()
}

/// Keep `cache/artifacts` under its bound, least recently used first out; `keep` stays.
pub fn evict(cache: &Path, keep: &Path) -> Vec<PathBuf> {
    let max = std::env::var("SLIPWAY_CACHE_MAX_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(CACHE_MAX_BYTES);
    evict_with(cache, keep, max)
}

fn evict_with(cache: &Path, keep: &Path, max: u64) -> Vec<PathBuf> {
    let root = cache.join("artifacts");
    let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()) && !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            let dir = e.path();
            let used = std::fs::metadata(dir.join("used")).and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
            (used, dir_bytes(&dir), dir)
        })
        .collect();
    let mut total: u64 = entries.iter().map(|e| e.1).sum();
    entries.sort();
    let mut evicted = Vec::new();
    for (_, bytes, dir) in entries {
        if total <= max {
            break;
        }
        if dir == keep {
            continue;
        }
        if std::fs::remove_dir_all(&dir).is_ok() {
            total = total.saturating_sub(bytes);
            evicted.push(dir);
        }
    }
    evicted
}

/// Package the commit straight from the git object database (no checkout).
pub async fn pack_git(cache: &Path, mirror: &Path, recipe: &Recipe) -> Result<Artifact> {
    let dir = cache_dir(cache, recipe);
    let (mirror, recipe) = (mirror.to_path_buf(), recipe.clone());
    tokio::task::spawn_blocking(move || {
        let excludes = Excludes::new(&recipe.excludes)?;
        build(&dir, recipe.commit_time, |packer| git::walk_commit(&mirror, &recipe.commit, &excludes, packer))
    })
    .await
    .context("packaging task")?
}

/// Package a built tree on disk.
pub async fn pack_dir(cache: &Path, tree: &Path, recipe: &Recipe) -> Result<Artifact> {
    let dir = cache_dir(cache, recipe);
    let (tree, recipe) = (tree.to_path_buf(), recipe.clone());
    tokio::task::spawn_blocking(move || {
        let excludes = Excludes::new(&recipe.excludes)?;
        build(&dir, recipe.commit_time, |packer| walk_dir(&tree, &excludes, packer).map(|()| 0))
    })
    .await
    .context("packaging task")?
}

type FilePacker = Packer<BufWriter<std::fs::File>>;

fn build(dir: &Path, mtime: i64, source: impl FnOnce(&mut FilePacker) -> Result<usize>) -> Result<Artifact> {
    let started = Instant::now();
    let parent = dir.parent().expect("artifact dir has a parent");
    std::fs::create_dir_all(parent).context(format_args!("cannot create {}", parent.display()))?;
    let tmp =
        parent.join(format!(".tmp-{}-{}", std::process::id(), dir.file_name().unwrap_or_default().to_string_lossy()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).context(format_args!("cannot create {}", tmp.display()))?;
    let result = build_in(&tmp, dir, mtime, started, source);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn build_in(
    tmp: &Path,
    dir: &Path,
    mtime: i64,
    started: Instant,
    source: impl FnOnce(&mut FilePacker) -> Result<usize>,
) -> Result<Artifact> {
    let file = std::fs::File::create(tmp.join("artifact.tar.zst")).context("cannot create artifact file")?;
    let threads = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1).min(4);
    let mut packer = Packer::new(BufWriter::with_capacity(1 << 20, file), ZSTD_LEVEL, threads, mtime.max(0) as u64)
        .context("cannot start the compressor")?;
    let submodules_skipped = source(&mut packer)?;
    let packed = packer.finish().context("cannot finish the artifact")?;
    // The same rules the agent enforces, checked here so a bad tree fails before anything is sent.
    packed
        .manifest
        .validate(&slipway_common::archive::Limits::default())
        .map_err(|e| CtlError::failed(format!("the tree cannot be shipped: {e}")))?;
    let file = packed.out.into_inner().map_err(|e| e.into_error()).context("cannot flush the artifact")?;
    file.sync_all().context("cannot sync the artifact")?;
    let artifact = Artifact {
        path: dir.join("artifact.tar.zst"),
        sha256: packed.sha256,
        compressed_bytes: packed.compressed_size,
        file_bytes: packed.manifest.file_bytes(),
        entries: packed.manifest.entries.len() as u64,
        manifest: packed.manifest,
        submodules_skipped,
        cached: false,
        package_ms: started.elapsed().as_millis() as u64,
    };
    let write_json = |name: &str, bytes: Vec<u8>| -> Result<()> {
        let mut f = std::fs::File::create(tmp.join(name)).context(format_args!("cannot write {name}"))?;
        f.write_all(&bytes).and_then(|()| f.sync_all()).context(format_args!("cannot write {name}"))
    };
    write_json("manifest.json", serde_json::to_vec(&artifact.manifest).context("manifest")?)?;
    write_json("meta.json", serde_json::to_vec(&artifact).context("meta")?)?;
    match std::fs::rename(tmp, dir) {
        Ok(()) => {
            touch(dir);
            for old in evict(dir.parent().and_then(Path::parent).expect("cache root"), dir) {
                tracing::info!(dir = %old.display(), "evicted from the artifact cache");
            }
            Ok(artifact)
        }
        // Another slipctl packaged the same recipe meanwhile: use theirs.
        Err(_) if load(dir).is_some() => {
            let _ = std::fs::remove_dir_all(tmp);
            Ok(Artifact { cached: false, package_ms: artifact.package_ms, ..load(dir).expect("checked") })
        }
        Err(e) => Err(e).context(format_args!("cannot move artifact to {}", dir.display())),
    }
}

/// A delta of an artifact: every directory and symlink, and only the files a host lacks.
#[derive(Debug, Clone)]
pub struct Delta {
    pub path: PathBuf,
    pub sha256: String,
    pub compressed_bytes: u64,
    pub files: u64,
}

/// Build (or reuse) the delta of `full` that ships only the files in `ship`.
pub async fn delta(full: &Artifact, ship: std::collections::BTreeSet<String>) -> Result<Delta> {
    let mut key = Sha256::new();
    for path in &ship {
        key.update(path.as_bytes());
        key.update(b"\0");
    }
    let name = format!("delta-{}", &hex::encode(key.finalize())[..16]);
    let dir = full.path.parent().expect("artifact dir").to_path_buf();
    let (path, meta) = (dir.join(format!("{name}.tar.zst")), dir.join(format!("{name}.json")));
    if let Ok(bytes) = std::fs::read(&meta)
        && let Ok((sha256, compressed_bytes, files)) = serde_json::from_slice::<(String, u64, u64)>(&bytes)
        && std::fs::metadata(&path).is_ok_and(|m| m.len() == compressed_bytes)
    {
        return Ok(Delta { path, sha256, compressed_bytes, files });
    }
    let source = full.path.clone();
    tokio::task::spawn_blocking(move || -> Result<Delta> {
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let out = std::fs::File::create(&tmp).context("cannot create delta file")?;
        let mut packer = Packer::new(BufWriter::with_capacity(1 << 20, out), ZSTD_LEVEL, 2, 0).context("compressor")?;
        let input = std::fs::File::open(&source).context("cannot read artifact")?;
        let decoder = zstd::stream::read::Decoder::new(input).context("artifact")?;
        let mut archive = tar::Archive::new(decoder);
        let mut files = 0;
        for entry in archive.entries().context("artifact")? {
            let mut entry = entry.context("artifact")?;
            let path = String::from_utf8_lossy(&entry.path_bytes()).trim_end_matches('/').to_owned();
            let mode = entry.header().mode().context("artifact")?;
            match entry.header().entry_type() {
                tar::EntryType::Directory => packer.add_dir(&path),
                tar::EntryType::Symlink => {
                    let target =
                        entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned()).unwrap_or_default();
                    packer.add_symlink(&path, &target)
                }
                _ if ship.contains(&path) => {
                    files += 1;
                    let mut content = Vec::with_capacity(entry.size() as usize);
                    std::io::Read::read_to_end(&mut entry, &mut content).context("artifact")?;
                    packer.add_file(&path, mode, &content)
                }
                _ => Ok(()),
            }
            .context("cannot write delta")?;
        }
        let packed = packer.finish().context("cannot finish delta")?;
        let file = packed.out.into_inner().map_err(|e| e.into_error()).context("flush delta")?;
        file.sync_all().context("sync delta")?;
        std::fs::rename(&tmp, &path).context("cannot move delta in place")?;
        std::fs::write(&meta, serde_json::to_vec(&(&packed.sha256, packed.compressed_size, files)).context("json")?)
            .context("cannot write delta meta")?;
        Ok(Delta { path, sha256: packed.sha256, compressed_bytes: packed.compressed_size, files })
    })
    .await
    .context("delta task")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_drops_least_recently_used_first() {
        let cache = tempfile::tempdir().unwrap();
        let root = cache.path().join("artifacts");
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("artifact.tar.zst"), vec![0u8; 1000]).unwrap();
            touch(&dir);
            let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + i as u64);
            std::fs::File::options().write(true).open(dir.join("used")).unwrap().set_modified(when).unwrap();
        }
        // Oldest use is "a", but "a" is the one in use now: "b" goes.
        let evicted = evict_with(cache.path(), &root.join("a"), 2500);
        assert_eq!(evicted, vec![root.join("b")]);
        assert!(root.join("a").exists() && root.join("c").exists());
    }
}
