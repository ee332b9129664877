//! Deltas of a package: only the files a host lacks — packed straight from git (`delta_git`)
//! or cut from the full artifact (`delta`) — cached beside the package by the set of paths.

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use slipway_common::archive::Packer;

use crate::error::{Context, Result};
use crate::source::artifact::{Artifact, FilePacker, ZSTD_LEVEL, cache_dir};
use crate::source::build::Recipe;
use crate::source::exclude::Excludes;
use crate::source::git;
use crate::source::tree::Sink;

/// Passes only the files in `ship`, reading no other blob (a delta's directories and symlinks
/// come from the manifest the host is sent).
struct ShipOnly<'a, S> {
    inner: &'a mut S,
    ship: &'a std::collections::BTreeSet<String>,
    files: u64,
}

impl<S: Sink> Sink for ShipOnly<'_, S> {
    fn dir(&mut self, _path: &str) -> std::io::Result<()> {
        Ok(())
    }
    fn file(&mut self, path: &str, mode: u32, content: &[u8]) -> std::io::Result<()> {
        if self.ship.contains(path) {
            self.files += 1;
            self.inner.file(path, mode, content)?;
        }
        Ok(())
    }
    fn symlink(&mut self, _path: &str, _target: &str) -> std::io::Result<()> {
        Ok(())
    }
    fn git_file(&mut self, repo: &git2::Repository, path: &str, mode: u32, oid: git2::Oid) -> std::io::Result<()> {
        if self.ship.contains(path) {
            self.files += 1;
            let blob = repo.find_blob(oid).map_err(std::io::Error::other)?;
            self.inner.file(path, mode, blob.content())?;
        }
        Ok(())
    }
}

fn delta_name(ship: &std::collections::BTreeSet<String>) -> String {
    let mut key = Sha256::new();
    // Deltas carry files only (format 2); one cached in the older form is never reused.
    key.update(b"files-only\0");
    for path in ship {
        key.update(path.as_bytes());
        key.update(b"\0");
    }
    format!("delta-{}", &hex::encode(key.finalize())[..16])
}

fn cached_delta(dir: &Path, name: &str) -> Option<Delta> {
    let (path, meta) = (dir.join(format!("{name}.tar.zst")), dir.join(format!("{name}.json")));
    let (sha256, compressed_bytes, files) =
        serde_json::from_slice::<(String, u64, u64)>(&std::fs::read(&meta).ok()?).ok()?;
    std::fs::metadata(&path).is_ok_and(|m| m.len() == compressed_bytes).then_some(Delta {
        path,
        sha256,
        compressed_bytes,
        files,
    })
}

/// Write a delta package with `fill`, into `dir` under `name`.
fn write_delta(dir: &Path, name: &str, mtime: u64, fill: impl FnOnce(&mut FilePacker) -> Result<u64>) -> Result<Delta> {
    std::fs::create_dir_all(dir).context(format_args!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{name}.tar.zst"));
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let out = std::fs::File::create(&tmp).context("cannot create delta file")?;
    let mut packer = Packer::new(BufWriter::with_capacity(1 << 20, out), ZSTD_LEVEL, 2, mtime).context("compressor")?;
    let files = match fill(&mut packer) {
        Ok(files) => files,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let packed = packer.finish().context("cannot finish delta")?;
    let file = packed.out.into_inner().map_err(|e| e.into_error()).context("flush delta")?;
    file.sync_all().context("sync delta")?;
    std::fs::rename(&tmp, &path).context("cannot move delta in place")?;
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_vec(&(&packed.sha256, packed.compressed_size, files)).context("json")?,
    )
    .context("cannot write delta meta")?;
    Ok(Delta { path, sha256: packed.sha256, compressed_bytes: packed.compressed_size, files })
}

/// A delta packed straight from git: only the files in `ship`.
pub async fn delta_git(
    cache: &Path,
    mirror: &Path,
    recipe: &Recipe,
    ship: std::collections::BTreeSet<String>,
) -> Result<Delta> {
    let dir = cache_dir(cache, recipe);
    let name = delta_name(&ship);
    if let Some(found) = cached_delta(&dir, &name) {
        return Ok(found);
    }
    let (mirror, recipe) = (mirror.to_path_buf(), recipe.clone());
    tokio::task::spawn_blocking(move || {
        let excludes = Excludes::new(&recipe.excludes)?;
        write_delta(&dir, &name, recipe.commit_time.max(0) as u64, |packer| {
            let mut sink = ShipOnly { inner: packer, ship: &ship, files: 0 };
            git::walk_commit(&mirror, &recipe.commit, &excludes, &mut sink)?;
            Ok(sink.files)
        })
    })
    .await
    .context("delta task")?
}

/// A delta of an artifact: only the files a host lacks.
#[derive(Debug, Clone)]
pub struct Delta {
    pub path: PathBuf,
    pub sha256: String,
    pub compressed_bytes: u64,
    pub files: u64,
}

/// Build (or reuse) the delta of `full` that ships only the files in `ship`.
pub async fn delta(full: &Artifact, ship: std::collections::BTreeSet<String>) -> Result<Delta> {
    let name = delta_name(&ship);
    let dir = full.path.parent().expect("artifact dir").to_path_buf();
    if let Some(found) = cached_delta(&dir, &name) {
        return Ok(found);
    }
    let source = full.path.clone();
    tokio::task::spawn_blocking(move || {
        write_delta(&dir, &name, 0, |packer| {
            let input = std::fs::File::open(&source).context("cannot read artifact")?;
            let decoder = zstd::stream::read::Decoder::new(input).context("artifact")?;
            let mut archive = tar::Archive::new(decoder);
            let mut files = 0;
            for entry in archive.entries().context("artifact")? {
                let mut entry = entry.context("artifact")?;
                let path = String::from_utf8_lossy(&entry.path_bytes()).trim_end_matches('/').to_owned();
                let mode = entry.header().mode().context("artifact")?;
                match entry.header().entry_type() {
                    tar::EntryType::Directory | tar::EntryType::Symlink => Ok(()),
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
            Ok(files)
        })
    })
    .await
    .context("delta task")?
}
