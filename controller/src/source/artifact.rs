//! Packaged releases in `<home>/cache/artifacts/<commit>-<settings digest>/`: the tar.zst, its
//! manifest and digest. A deploy packages **once** whatever the host count, and a deploy of the
//! same commit with the same recipe (excludes, build hooks, overlay digest) reuses the package
//! without building again.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use slipway_common::archive::{Manifest, ManifestEntry, Packer};

use crate::error::{Context, CtlError, Result};
use crate::source::build::Recipe;
use crate::source::exclude::Excludes;
use crate::source::git;
use crate::source::tree::{Sink, walk_dir};

/// Bump when the package layout changes, so old cache entries are not reused.
const FORMAT: u32 = 1;
pub(crate) const ZSTD_LEVEL: i32 = 3;

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
    /// A release made of a build and an env layer: the build's manifest digest (hex). `None`:
    /// this artifact is a build itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_sha256: Option<String>,
    #[serde(skip)]
    pub cached: bool,
    #[serde(skip)]
    pub package_ms: u64,
}

pub(crate) fn cache_dir(cache: &Path, recipe: &Recipe) -> PathBuf {
    let settings = format!("format={FORMAT};level={ZSTD_LEVEL};{}", recipe.settings_digest());
    let digest = hex::encode(Sha256::digest(settings.as_bytes()));
    cache.join("artifacts").join(format!("{}-{}", recipe.commit, &digest[..16]))
}

/// The package kept in `dir` (a cache entry, or a pushed artifact's directory), if complete.
pub fn load_dir(dir: &Path) -> Option<Artifact> {
    load(dir)
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
    tokio::task::spawn_blocking(move || build(&dir, recipe.commit_time, |packer| pack_commit(&mirror, &recipe, packer)))
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

/// The release of `recipe` (whose overlay is set): the packaged `build` with the env's overlay on
/// top, cached like any package.
pub async fn pack_layered(cache: &Path, build: &Artifact, recipe: &Recipe) -> Result<Artifact> {
    let dir = cache_dir(cache, recipe);
    let (overlay, _) = recipe.overlay.clone().expect("a layered recipe has an overlay");
    let (source, build_sha256) = (build.path.clone(), build.manifest_sha256());
    let mtime = recipe.commit_time;
    let mut artifact = tokio::task::spawn_blocking(move || {
        build_with(&dir, mtime, Some(build_sha256), true, |packer| {
            crate::source::layer::compose_into(&source, &overlay, packer)
        })
    })
    .await
    .context("packaging task")??;
    artifact.cached = false;
    Ok(artifact)
}

impl Artifact {
    /// The digest of what this artifact holds (its manifest's, hex): the same whatever the
    /// compression, and what a host reports for the release.
    pub fn manifest_sha256(&self) -> String {
        hex::encode(self.manifest.digest())
    }

    /// The build this artifact is, or was layered on (hex manifest digest).
    pub fn build_sha256(&self) -> String {
        self.build_sha256.clone().unwrap_or_else(|| self.manifest_sha256())
    }
}

pub type FilePacker = Packer<BufWriter<std::fs::File>>;

/// An empty temporary directory beside the cache entry `dir`, renamed onto it when complete.
fn fresh_tmp_dir(dir: &Path) -> Result<PathBuf> {
    let parent = dir.parent().expect("artifact dir has a parent");
    std::fs::create_dir_all(parent).context(format_args!("cannot create {}", parent.display()))?;
    let tmp =
        parent.join(format!(".tmp-{}-{}", std::process::id(), dir.file_name().unwrap_or_default().to_string_lossy()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).context(format_args!("cannot create {}", tmp.display()))?;
    Ok(tmp)
}

fn build(dir: &Path, mtime: i64, source: impl FnOnce(&mut FilePacker) -> Result<usize>) -> Result<Artifact> {
    build_with(dir, mtime, None, true, source)
}

/// Package into `dir` (a pushed artifact's place: laid out as a cache entry, never evicted).
pub fn pack_into(dir: &Path, mtime: i64, source: impl FnOnce(&mut FilePacker) -> Result<usize>) -> Result<Artifact> {
    build_with(dir, mtime, None, false, source)
}

fn build_with(
    dir: &Path,
    mtime: i64,
    build_sha256: Option<String>,
    cached: bool,
    source: impl FnOnce(&mut FilePacker) -> Result<usize>,
) -> Result<Artifact> {
    let started = Instant::now();
    let tmp = fresh_tmp_dir(dir)?;
    let result = std::fs::File::create(tmp.join("artifact.tar.zst"))
        .context("cannot create artifact file")
        .and_then(|file| build_into(&tmp, dir, mtime, started, file, Kept { build_sha256, cached }, source));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Something the artifact is written to, and the file underneath (synced at the end).
trait ArtifactOut: Write {
    fn file(&self) -> &std::fs::File;
}

impl ArtifactOut for std::fs::File {
    fn file(&self) -> &std::fs::File {
        self
    }
}

impl ArtifactOut for Announcing {
    fn file(&self) -> &std::fs::File {
        &self.file
    }
}

/// What a package being made is, besides its bytes: the build it layers on (none: it is a
/// build), and whether it lives in the bounded cache (a pushed artifact does not).
struct Kept {
    build_sha256: Option<String>,
    cached: bool,
}

fn build_into<O: ArtifactOut>(
    tmp: &Path,
    dir: &Path,
    mtime: i64,
    started: Instant,
    out: O,
    kept: Kept,
    source: impl FnOnce(&mut Packer<BufWriter<O>>) -> Result<usize>,
) -> Result<Artifact> {
    let Kept { build_sha256, cached } = kept;
    let threads = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1).min(4);
    let mut packer = Packer::new(BufWriter::with_capacity(1 << 20, out), ZSTD_LEVEL, threads, mtime.max(0) as u64)
        .context("cannot start the compressor")?;
    let submodules_skipped = source(&mut packer)?;
    let packed = packer.finish().context("cannot finish the artifact")?;
    // The same rules the agent enforces, checked here so a bad tree fails before anything is sent.
    packed
        .manifest
        .validate(&slipway_common::archive::Limits::default())
        .map_err(|e| CtlError::failed(format!("the tree cannot be shipped: {e}")))?;
    let out = packed.out.into_inner().map_err(|e| e.into_error()).context("cannot flush the artifact")?;
    out.file().sync_all().context("cannot sync the artifact")?;
    let artifact = Artifact {
        path: dir.join("artifact.tar.zst"),
        sha256: packed.sha256,
        compressed_bytes: packed.compressed_size,
        file_bytes: packed.manifest.file_bytes(),
        entries: packed.manifest.entries.len() as u64,
        manifest: packed.manifest,
        submodules_skipped,
        build_sha256,
        cached: false,
        package_ms: started.elapsed().as_millis() as u64,
    };
    let write_json = |name: &str, bytes: Vec<u8>| -> Result<()> {
        let mut f = std::fs::File::create(tmp.join(name)).context(format_args!("cannot write {name}"))?;
        f.write_all(&bytes).and_then(|()| f.sync_all()).context(format_args!("cannot write {name}"))
    };
    write_json("manifest.json", serde_json::to_vec(&artifact.manifest).context("manifest")?)?;
    write_json("meta.json", serde_json::to_vec(&artifact).context("meta")?)?;
    let placed = match std::fs::rename(tmp, dir) {
        // The directory holds deltas of this recipe (packed from git before the full artifact was
        // needed): move the package in, meta.json last, as `load` requires it.
        Err(_) if dir.is_dir() && load(dir).is_none() => ["artifact.tar.zst", "manifest.json", "meta.json"]
            .iter()
            .try_for_each(|f| std::fs::rename(tmp.join(f), dir.join(f)))
            .map(|()| {
                let _ = std::fs::remove_dir_all(tmp);
            }),
        other => other,
    };
    match placed {
        Ok(()) => {
            touch(dir);
            // Only the cache is bounded: a pushed artifact's directory is kept.
            let root = dir.parent().and_then(Path::parent).expect("cache root");
            for old in if cached { evict(root, dir) } else { Vec::new() } {
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

// ---------------------------------------------------------------------------------------------
// Manifest first, package later: with no build step the manifest comes straight from the tree
// (blob digests cached by object id), deltas are packed from git with only the files a host
// lacks, and the full artifact is packaged only when some host needs it, streamed to those hosts
// while it is written.

/// sha256 and size of git blobs by object id, for the last tree walked in a mirror: the next
/// commit's manifest hashes only the blobs that changed. Kept beside the mirror, 60 bytes a blob.
pub struct BlobDigests {
    path: PathBuf,
    known: HashMap<[u8; 20], ([u8; 32], u64)>,
    used: HashMap<[u8; 20], ([u8; 32], u64)>,
}

const DIGEST_RECORD: usize = 20 + 32 + 8;

impl BlobDigests {
    /// Whether digests were kept for this mirror (it was packaged here before).
    pub fn exist(mirror: &Path) -> bool {
        mirror.with_extension("digests").is_file()
    }

    pub fn load(mirror: &Path) -> Self {
        let path = mirror.with_extension("digests");
        let bytes = std::fs::read(&path).unwrap_or_default();
        // Records, then the sha256 of the records: a torn or damaged file counts as empty.
        let records = match bytes.len().checked_sub(32) {
            Some(n) if n % DIGEST_RECORD == 0 && Sha256::digest(&bytes[..n]).as_slice() == &bytes[n..] => &bytes[..n],
            _ => &[][..],
        };
        let known = records
            .chunks_exact(DIGEST_RECORD)
            .map(|r| {
                let oid: [u8; 20] = r[..20].try_into().expect("20 bytes");
                let sha: [u8; 32] = r[20..52].try_into().expect("32 bytes");
                (oid, (sha, u64::from_le_bytes(r[52..].try_into().expect("8 bytes"))))
            })
            .collect();
        BlobDigests { path, known, used: HashMap::new() }
    }

    fn get(&mut self, repo: &git2::Repository, oid: git2::Oid) -> std::io::Result<([u8; 32], u64)> {
        let key: [u8; 20] = oid.as_bytes().try_into().map_err(|_| std::io::Error::other("not a SHA-1 object id"))?;
        let found = match self.known.get(&key) {
            Some(d) => *d,
            None => {
                let blob = repo.find_blob(oid).map_err(std::io::Error::other)?;
                (Sha256::digest(blob.content()).into(), blob.size() as u64)
            }
        };
        self.used.insert(key, found);
        Ok(found)
    }

    /// Keep what the last walk used (so the file stays the size of one tree).
    pub fn save(&self) {
        let mut out = Vec::with_capacity(self.used.len() * DIGEST_RECORD);
        for (oid, (sha, size)) in &self.used {
            out.extend_from_slice(oid);
            out.extend_from_slice(sha);
            out.extend_from_slice(&size.to_le_bytes());
        }
        let check = Sha256::digest(&out);
        out.extend_from_slice(&check);
        static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.path.with_extension(format!("digests.tmp-{}-{n}", std::process::id()));
        if std::fs::write(&tmp, &out).and_then(|()| std::fs::rename(&tmp, &self.path)).is_err() {
            let _ = std::fs::remove_file(&tmp); // Only a cache: the next walk hashes again.
        }
    }

    /// Remember a blob's digest learnt while packaging.
    fn learn(&mut self, oid: git2::Oid, sha256_hex: &str, size: u64) {
        let (Ok(key), Ok(sha)) = (<[u8; 20]>::try_from(oid.as_bytes()), hex::decode(sha256_hex)) else { return };
        if let Ok(sha) = <[u8; 32]>::try_from(sha.as_slice()) {
            self.used.insert(key, (sha, size));
        }
    }
}

/// Packs, and records each blob's digest from the packer's manifest (no second hash).
struct Recording<'a, W: Write> {
    packer: &'a mut Packer<W>,
    digests: &'a mut BlobDigests,
}

impl<W: Write> Sink for Recording<'_, W> {
    fn dir(&mut self, path: &str) -> std::io::Result<()> {
        self.packer.add_dir(path)
    }
    fn file(&mut self, path: &str, mode: u32, content: &[u8]) -> std::io::Result<()> {
        self.packer.add_file(path, mode, content)
    }
    fn symlink(&mut self, path: &str, target: &str) -> std::io::Result<()> {
        self.packer.add_symlink(path, target)
    }
    fn git_file(&mut self, repo: &git2::Repository, path: &str, mode: u32, oid: git2::Oid) -> std::io::Result<()> {
        let blob = repo.find_blob(oid).map_err(std::io::Error::other)?;
        self.packer.add_file(path, mode, blob.content())?;
        if let Some(e) = self.packer.last_entry() {
            let (sha, size) = (e.sha256.clone(), e.size);
            self.digests.learn(oid, &sha, size);
        }
        Ok(())
    }
}

/// Walk the commit into `packer`, keeping the blob digests for the next manifest.
fn pack_commit<W: Write>(mirror: &Path, recipe: &Recipe, packer: &mut Packer<W>) -> Result<usize> {
    let excludes = Excludes::new(&recipe.excludes)?;
    let mut digests = BlobDigests::load(mirror);
    let skipped =
        git::walk_commit(mirror, &recipe.commit, &excludes, &mut Recording { packer, digests: &mut digests })?;
    digests.save();
    Ok(skipped)
}

/// Builds the manifest of a tree without packing it.
struct ManifestSink<'a> {
    entries: Vec<ManifestEntry>,
    digests: &'a mut BlobDigests,
}

impl Sink for ManifestSink<'_> {
    fn dir(&mut self, path: &str) -> std::io::Result<()> {
        self.entries.push(ManifestEntry::dir(path));
        Ok(())
    }
    fn file(&mut self, path: &str, mode: u32, content: &[u8]) -> std::io::Result<()> {
        let sha = hex::encode(Sha256::digest(content));
        self.entries.push(ManifestEntry::file(path, mode, content.len() as u64, sha));
        Ok(())
    }
    fn symlink(&mut self, path: &str, target: &str) -> std::io::Result<()> {
        self.entries.push(ManifestEntry::symlink(path, target));
        Ok(())
    }
    fn git_file(&mut self, repo: &git2::Repository, path: &str, mode: u32, oid: git2::Oid) -> std::io::Result<()> {
        let (sha, size) = self.digests.get(repo, oid)?;
        self.entries.push(ManifestEntry::file(path, mode, size, hex::encode(sha)));
        Ok(())
    }
}

/// The manifest of the commit's tree, as [`pack_git`] would package it, without packaging.
pub async fn manifest_git(mirror: &Path, recipe: &Recipe) -> Result<Manifest> {
    let (mirror, recipe) = (mirror.to_path_buf(), recipe.clone());
    tokio::task::spawn_blocking(move || {
        let excludes = Excludes::new(&recipe.excludes)?;
        let mut digests = BlobDigests::load(&mirror);
        let mut sink = ManifestSink { entries: Vec::new(), digests: &mut digests };
        git::walk_commit(&mirror, &recipe.commit, &excludes, &mut sink)?;
        let manifest = Manifest { entries: sink.entries };
        manifest
            .validate(&slipway_common::archive::Limits::default())
            .map_err(|e| CtlError::failed(format!("the tree cannot be shipped: {e}")))?;
        digests.save();
        Ok(manifest)
    })
    .await
    .context("manifest task")?
}

/// How far the packaging of a streamed artifact got.
#[derive(Debug, Clone)]
pub enum PackProgress {
    /// Compressed bytes written so far (readable from the file).
    Writing(u64),
    /// Finished: the digest and size, or why it failed.
    Done(std::result::Result<(String, u64), String>),
}

/// Counts bytes into the file and tells the readers.
struct Announcing {
    file: std::fs::File,
    written: u64,
    progress: tokio::sync::watch::Sender<PackProgress>,
}

impl Write for Announcing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        self.progress.send_replace(PackProgress::Writing(self.written));
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The full artifact of a git commit, packaged while hosts already receive it.
pub struct StreamedPack {
    /// The artifact file, open from before its first byte (its directory is renamed when done).
    pub file: std::sync::Arc<std::fs::File>,
    pub progress: tokio::sync::watch::Receiver<PackProgress>,
    pub task: tokio::task::JoinHandle<Result<Artifact>>,
}

/// Start packaging the commit into the cache; `expected` is the manifest the hosts were promised.
pub fn stream_git(cache: &Path, mirror: &Path, recipe: &Recipe, expected: Manifest) -> Result<StreamedPack> {
    let dir = cache_dir(cache, recipe);
    let tmp = fresh_tmp_dir(&dir)?;
    let path = tmp.join("artifact.tar.zst");
    let file = std::fs::File::create(&path).context("cannot create artifact file")?;
    let reader = std::fs::File::open(&path).context("cannot open artifact file")?;
    let (progress, rx) = tokio::sync::watch::channel(PackProgress::Writing(0));
    let (mirror, recipe) = (mirror.to_path_buf(), recipe.clone());
    let task = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let out = Announcing { file, written: 0, progress: progress.clone() };
        let result = (|| {
            let artifact = build_into(
                &tmp,
                &dir,
                recipe.commit_time,
                started,
                out,
                Kept { build_sha256: None, cached: true },
                |packer| pack_commit(&mirror, &recipe, packer),
            )?;
            if artifact.manifest != expected {
                return Err(CtlError::failed("the packaged tree differs from its manifest (did the mirror change?)"));
            }
            Ok(artifact)
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        progress.send_replace(PackProgress::Done(match &result {
            Ok(a) => Ok((a.sha256.clone(), a.compressed_bytes)),
            Err(e) => Err(e.to_string()),
        }));
        result
    });
    Ok(StreamedPack { file: std::sync::Arc::new(reader), progress: rx, task })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::delta::delta_git;

    /// A bare repository with one commit per tree given (path -> content; "->x" makes a symlink).
    fn repo_with(dir: &Path, trees: &[&[(&str, &str)]]) -> (PathBuf, Vec<String>) {
        let bare = dir.join("mirror.git");
        let repo = git2::Repository::init_bare(&bare).unwrap();
        let sig = git2::Signature::new("t", "t@example.com", &git2::Time::new(1_700_000_000, 0)).unwrap();
        let mut commits = Vec::new();
        let mut parent: Option<git2::Oid> = None;
        for files in trees {
            let mut index = git2::Index::new().unwrap();
            for (path, content) in *files {
                let (mode, data) = match content.strip_prefix("->") {
                    Some(target) => (0o120000, target.as_bytes()),
                    None => (0o100644, content.as_bytes()),
                };
                let oid = repo.blob(data).unwrap();
                let mut entry = git2::IndexEntry {
                    ctime: git2::IndexTime::new(0, 0),
                    mtime: git2::IndexTime::new(0, 0),
                    dev: 0,
                    ino: 0,
                    mode,
                    uid: 0,
                    gid: 0,
                    file_size: data.len() as u32,
                    id: oid,
                    flags: 0,
                    flags_extended: 0,
                    path: path.as_bytes().to_vec(),
                };
                entry.flags = path.len().min(0xfff) as u16;
                index.add(&entry).unwrap();
            }
            let tree = repo.find_tree(index.write_tree_to(&repo).unwrap()).unwrap();
            let parents: Vec<git2::Commit<'_>> = parent.iter().map(|p| repo.find_commit(*p).unwrap()).collect();
            let refs: Vec<&git2::Commit<'_>> = parents.iter().collect();
            let oid = repo.commit(None, &sig, &sig, "c", &tree, &refs).unwrap();
            parent = Some(oid);
            commits.push(oid.to_string());
        }
        (bare, commits)
    }

    fn recipe(commit: &str) -> Recipe {
        Recipe {
            commit: commit.to_owned(),
            commit_time: 1_700_000_000,
            excludes: vec!["*.log".into()],
            pre_deploy: vec![],
            post_deploy: vec![],
            build_timeout_secs: 60,
            overlay: None,
            base: None,
            svn: None,
        }
    }

    #[tokio::test]
    async fn manifest_from_git_equals_the_packaged_one_and_deltas_ship_only_what_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let v1: &[(&str, &str)] = &[("a.txt", "one"), ("d/b.txt", "two"), ("d/l", "->b.txt"), ("x.log", "no")];
        let v2: &[(&str, &str)] = &[("a.txt", "one!"), ("d/b.txt", "two"), ("d/l", "->b.txt"), ("x.log", "no")];
        let (mirror, commits) = repo_with(dir.path(), &[v1, v2]);
        let cache = dir.path().join("cache");
        // Cold: every blob read and hashed.
        let manifest = manifest_git(&mirror, &recipe(&commits[0])).await.unwrap();
        let packed = pack_git(&cache, &mirror, &recipe(&commits[0])).await.unwrap();
        assert_eq!(manifest, packed.manifest);
        assert!(!manifest.entries.iter().any(|e| e.path == "x.log"), "excludes apply");
        // Warm: unchanged blobs come from the digest cache, changed ones are hashed.
        let warm = manifest_git(&mirror, &recipe(&commits[1])).await.unwrap();
        let packed2 = pack_git(&cache, &mirror, &recipe(&commits[1])).await.unwrap();
        assert_eq!(warm, packed2.manifest);
        let mut digests = BlobDigests::load(&mirror);
        assert_eq!(digests.known.len(), 2, "one record per file blob of the last tree (links are read)");
        // The cache is what is consulted for known blobs: a doctored record for b.txt shows up.
        let repo = git2::Repository::open_bare(&mirror).unwrap();
        let b = repo.revparse_single(&format!("{}:d/b.txt", commits[1])).unwrap().id();
        let key: [u8; 20] = b.as_bytes().try_into().unwrap();
        digests.known.insert(key, ([0u8; 32], 3));
        digests.used = digests.known.clone();
        digests.save();
        let doctored = manifest_git(&mirror, &recipe(&commits[1])).await.unwrap();
        let sha = |m: &Manifest, p: &str| m.entries.iter().find(|e| e.path == p).unwrap().sha256.clone();
        assert_eq!(sha(&doctored, "d/b.txt"), "00".repeat(32));
        assert_eq!(sha(&doctored, "a.txt"), sha(&warm, "a.txt"));
        // A damaged file is ignored whole (here only its checksum is off, so the doctored record
        // would still be found if it were read): everything is hashed again.
        let file = mirror.with_extension("digests");
        let mut raw = std::fs::read(&file).unwrap();
        *raw.last_mut().unwrap() ^= 1;
        std::fs::write(&file, raw).unwrap();
        assert_eq!(manifest_git(&mirror, &recipe(&commits[1])).await.unwrap(), warm);

        // A delta from git: all directories and links, only the files asked for.
        let ship: std::collections::BTreeSet<String> = ["a.txt".to_owned()].into();
        let delta = delta_git(&cache, &mirror, &recipe(&commits[1]), ship.clone()).await.unwrap();
        assert_eq!(delta.files, 1);
        let bytes = std::fs::read(&delta.path).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), delta.sha256);
        let mut archive = tar::Archive::new(zstd::stream::read::Decoder::new(bytes.as_slice()).unwrap());
        let mut names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string().trim_end_matches('/').to_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a.txt"], "only the asked files: directories and links come from the manifest");
        // The same delta from the packaged artifact has the same entries; and it is cached by name.
        let again = delta_git(&cache, &mirror, &recipe(&commits[1]), ship).await.unwrap();
        assert_eq!(again.sha256, delta.sha256);
    }

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
