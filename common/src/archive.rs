//! The release archive: tar + zstd with a manifest (path, type, mode, size, sha256) and a digest
//! of the compressed bytes. [`Packer`] (in `pack`) writes it on the controller; [`extract`]
//! unpacks it on the agent and trusts nothing: every rule of DESIGN.md "Archive rules" is enforced here, and any
//! violation rejects the whole archive.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The largest zstd window the agent accepts (16 MiB): bounds decoder memory.
pub const MAX_WINDOW_LOG: u32 = 24;

use crate::manifest::{CLIP, MAX_PATH_LEN, file_name_of, parent_of};
pub use crate::manifest::{EntryKind, Limits, Manifest, ManifestEntry, check_path, clip, normalise_mode};
pub use crate::pack::{HashingWriter, Packed, Packer};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("unsafe path '{path}': {why}")]
    UnsafePath { path: String, why: &'static str },
    #[error("duplicate path '{0}'")]
    Duplicate(String),
    #[error("'{path}' is a {what}; only regular files, directories and symlinks are allowed")]
    Forbidden { path: String, what: &'static str },
    #[error("symlink '{path}' -> '{target}' points outside the release")]
    SymlinkEscape { path: String, target: String },
    #[error("'{0}' is not in the manifest")]
    NotInManifest(String),
    #[error("'{path}': the archive has a {archive}, the manifest a {manifest}")]
    KindMismatch { path: String, archive: &'static str, manifest: &'static str },
    #[error("'{path}': {what} differs from the manifest (archive {archive}, manifest {manifest})")]
    Mismatch { path: String, what: &'static str, archive: String, manifest: String },
    #[error("'{0}': sha256 of the content differs from the manifest")]
    ContentDigest(String),
    #[error("artifact digest mismatch: received sha256 {actual}, expected {expected}")]
    ArtifactDigest { actual: String, expected: String },
    #[error("'{0}' changed since it was staged (not the same regular file); it is not reused")]
    ReuseChanged(String),
    #[error("'{0}' is in the manifest but missing from the archive")]
    Missing(String),
    #[error("limit exceeded: {0}")]
    Limit(String),
    #[error("'{0}': its parent directory is not an earlier directory entry")]
    Parent(String),
    #[error("invalid manifest: {0}")]
    Manifest(String),
    #[error("malformed or truncated archive: {0}")]
    Malformed(io::Error),
    #[error("cannot write '{path}': {source}")]
    Write { path: String, source: io::Error },
}

impl ArchiveError {
    /// True when the failure is the host's (disk, permissions), not the archive's.
    pub fn is_local_io(&self) -> bool {
        matches!(self, ArchiveError::Write { .. })
    }
}

type Result<T, E = ArchiveError> = std::result::Result<T, E>;
// ---------------------------------------------------------------------------------------------
// Extraction

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Which file a path is, as far as content goes: the device and inode, and what a write changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    /// 0 in manifests kept before the device was recorded: such files are never reused.
    #[serde(default)]
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
}

impl FileIdentity {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }

    pub fn of_stat(stat: &rustix::fs::Stat) -> Self {
        FileIdentity {
            dev: stat.st_dev,
            ino: stat.st_ino,
            size: stat.st_size as u64,
            mtime: stat.st_mtime,
            mtime_nsec: stat.st_mtime_nsec as i64,
        }
    }

    /// The same file (device and inode), whatever has been written to it since.
    pub fn same_file(&self, other: &FileIdentity) -> bool {
        self.dev != 0 && self.dev == other.dev && self.ino == other.ino
    }
}

/// A file in a retained release with content the new release wants.
#[derive(Debug, Clone)]
pub struct ReuseSource {
    /// The retained release's directory, held open: the file is opened beneath it, never through
    /// a symlink, so whoever can write the release cannot point the agent elsewhere.
    pub release: std::sync::Arc<OwnedFd>,
    /// The file's path in the release.
    pub rel: String,
    /// Where it is, for messages.
    pub display: PathBuf,
    /// The file's identity when its content was hashed (at staging). The file must still be that
    /// device and inode. A hard link is made to the opened file, and when that file is protected
    /// (owned by the agent, no write bit: no hook user can write, chmod or replace it in place)
    /// and still has this identity, its content is the hashed content and is not read again.
    /// Anything else is re-hashed.
    pub identity: FileIdentity,
}

impl ReuseSource {
    /// The file `rel` beneath `release` as it is now (for tests and tools).
    pub fn at(release: &Path, rel: &str) -> io::Result<Self> {
        let fd = rustix::fs::open(release, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        let meta = std::fs::symlink_metadata(release.join(rel))?;
        Ok(ReuseSource {
            release: std::sync::Arc::new(fd),
            rel: rel.to_owned(),
            display: release.join(rel),
            identity: FileIdentity::of(&meta),
        })
    }
}

/// Where the files a delta archive leaves out come from.
#[derive(Debug, Clone, Default)]
pub struct Reuse {
    /// Content sha256 (hex) -> a file with that content in a retained release.
    pub sources: HashMap<String, ReuseSource>,
    /// Hard-link instead of copying (the caller makes such files read-only for everyone).
    pub hardlink: bool,
}

/// How to extract.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    pub limits: Limits,
    /// Hex sha256 the compressed stream must have.
    /// `None` when the digest arrives after the stream: the caller compares [`ExtractStats::sha256`].
    pub expected_sha256: Option<String>,
    /// Owner for every entry (the project's target user), when the agent may chown.
    pub owner: Option<(u32, u32)>,
    /// A delta: files the archive leaves out are taken from retained releases and verified.
    pub reuse: Option<Reuse>,
    /// Files stay owned by the agent's user and lose every write bit (`reuse = "hardlink"`), so
    /// no hook can write into a file that other releases share.
    pub read_only_files: bool,
}

impl ExtractOptions {
    /// The mode and owner a file of this release gets.
    fn file_mode_owner(&self, mode: u32) -> (u32, Option<(u32, u32)>) {
        let mode = normalise_mode(EntryKind::File, mode);
        if self.read_only_files { (mode & !0o222, None) } else { (mode, self.owner) }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractStats {
    pub entries: u64,
    pub file_bytes: u64,
    pub compressed_bytes: u64,
    /// Files taken from retained releases instead of the archive, and their bytes.
    pub reused: u64,
    pub reused_bytes: u64,
    /// sha256 of the compressed stream.
    pub sha256: [u8; 32],
}

/// The process umask, read once from `/proc/self/status` (reading it with `umask(2)` would set it
/// for a moment under other threads). All bits when unknown, so every mode is set explicitly.
fn process_umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Umask:").map(|v| v.trim().to_owned())))
            .and_then(|v| u32::from_str_radix(&v, 8).ok())
            .unwrap_or(0o7777)
    })
}

/// Whether an entry created with `mode` needs a chmod: the umask strips some of its bits.
fn needs_chmod(mode: u32) -> bool {
    mode & process_umask() != 0 || mode & 0o7000 != 0
}

fn write_err(path: &str) -> impl Fn(rustix::io::Errno) -> ArchiveError + '_ {
    move |e| ArchiveError::Write { path: path.to_owned(), source: e.into() }
}

/// Opens directories beneath the staging root, never following a symlink, caching the last one.
struct DirCache {
    root: OwnedFd,
    /// Open directories on the way to the last one used, each an ancestor of the next (at most
    /// `MAX_HELD`): entries come in path order, so most lookups are a pop or one component.
    stack: Vec<(String, OwnedFd)>,
}

/// How many directories the extractor holds open at once (a deep tree must not exhaust fds).
const MAX_HELD: usize = 32;

impl DirCache {
    fn new(root: OwnedFd) -> Self {
        DirCache { root, stack: Vec::new() }
    }

    /// The directory `dir` (relative to the root), opened beneath the held directories: one
    /// component at a time from the deepest held ancestor, never through a symlink.
    fn open(&mut self, dir: Option<&str>, for_path: &str) -> Result<&OwnedFd> {
        let Some(dir) = dir else { return Ok(&self.root) };
        while let Some((held, _)) = self.stack.last() {
            if dir == held || (dir.starts_with(held.as_str()) && dir.as_bytes().get(held.len()) == Some(&b'/')) {
                break;
            }
            self.stack.pop();
        }
        if self.stack.last().is_some_and(|(held, _)| held == dir) {
            return Ok(&self.stack.last().expect("just checked").1);
        }
        let start = self.stack.last().map_or(0, |(held, _)| held.len() + 1);
        let rest = &dir[start..];
        let open = |parent: &OwnedFd, rel: &str| {
            rustix::fs::openat2(
                parent,
                rel,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            )
            .map_err(|e| match e {
                rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP => {
                    ArchiveError::Parent(for_path.to_owned())
                }
                e => ArchiveError::Write { path: dir.to_owned(), source: e.into() },
            })
        };
        if self.stack.len() + rest.split('/').count() <= MAX_HELD {
            let mut at = start;
            for component in rest.split('/') {
                let fd = open(self.stack.last().map_or(&self.root, |(_, fd)| fd), component)?;
                at += component.len();
                self.stack.push((dir[..at].to_owned(), fd));
                at += 1;
            }
        } else {
            // Deeper than the directories held: the rest in one walk, beneath the deepest one.
            let fd = open(self.stack.last().map_or(&self.root, |(_, fd)| fd), rest)?;
            if self.stack.len() >= MAX_HELD {
                self.stack.pop();
            }
            self.stack.push((dir.to_owned(), fd));
        }
        Ok(&self.stack.last().expect("just pushed").1)
    }
}

fn chown_at(dir: &OwnedFd, name: &str, owner: Option<(u32, u32)>, path: &str) -> Result<()> {
    if let Some((uid, gid)) = owner {
        rustix::fs::chownat(
            dir,
            name,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(write_err(path))?;
    }
    Ok(())
}

/// Make directory `path` (its parent already made) with `mode` and `owner`.
fn make_dir(dirs: &mut DirCache, path: &str, mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    let name = file_name_of(path);
    let parent = dirs.open(parent_of(path), path)?;
    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(mode)).map_err(write_err(path))?;
    if needs_chmod(mode) {
        rustix::fs::chmodat(parent, name, Mode::from_raw_mode(mode), AtFlags::empty()).map_err(write_err(path))?;
    }
    chown_at(parent, name, owner, path)
}

/// Hard-link the file behind an open descriptor (not a path, which could be swapped meanwhile).
fn link_open_file(file: &std::fs::File, dir: &OwnedFd, name: &str) -> rustix::io::Result<()> {
    match rustix::fs::linkat(file, "", dir, name, AtFlags::EMPTY_PATH) {
        // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; /proc names the same open file without it.
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::PERM) => {
            use std::os::fd::AsRawFd;
            let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
            rustix::fs::linkat(rustix::fs::CWD, proc_path.as_str(), dir, name, AtFlags::SYMLINK_FOLLOW)
        }
        other => other,
    }
}

/// Put a file the delta left out in place from a retained release, and verify its content.
fn reuse_file(
    dirs: &mut DirCache,
    e: &ManifestEntry,
    reused: &ReuseSource,
    hardlink: bool,
    options: &ExtractOptions,
    buf: &mut [u8],
) -> Result<()> {
    let path = e.path.as_str();
    let source = reused.display.as_path();
    let name = file_name_of(path).to_owned();
    let from = || format!("{path} (from {})", source.display());
    // Beneath the retained release, no symlink on the way, non-blocking (a fifo put there must not
    // hang the stage), and it must still be the very file that was hashed at staging.
    let src = rustix::fs::openat2(
        &*reused.release,
        reused.rel.as_str(),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|err| ArchiveError::Write { path: from(), source: err.into() })?;
    let stat = rustix::fs::fstat(&src).map_err(|err| ArchiveError::Write { path: from(), source: err.into() })?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile
        || !reused.identity.same_file(&FileIdentity::of_stat(&stat))
    {
        return Err(ArchiveError::ReuseChanged(from()));
    }
    let mut hasher = Sha256::new();
    let (mode, owner) = options.file_mode_owner(e.mode);
    let mut src_file = std::fs::File::from(src);
    let meta = src_file.metadata().map_err(|err| ArchiveError::Write { path: path.into(), source: err })?;
    // Link only a file that is exactly what this release wants: read-only, same mode, agent-owned.
    let linkable = hardlink && options.read_only_files && {
        use std::os::unix::fs::MetadataExt;
        meta.mode() & 0o7777 == mode && meta.uid() == rustix::process::geteuid().as_raw()
    };
    let parent = dirs.open(parent_of(path), path)?;
    if linkable {
        link_open_file(&src_file, parent, &name).map_err(write_err(path))?;
        if reused.identity == FileIdentity::of(&meta) && meta.len() == e.size {
            return Ok(()); // The very inode hashed at staging, which nobody but root can have written.
        }
        loop {
            let n = src_file.read(buf).map_err(|err| ArchiveError::Write { path: path.into(), source: err })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    } else {
        // The copy stays root's and private until its content is verified.
        let fd = rustix::fs::openat(
            parent,
            name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(write_err(path))?;
        let mut dst = std::fs::File::from(fd);
        // A reflink shares blocks until either side writes: as cheap as a link, as safe as a copy.
        let cloned = rustix::fs::ioctl_ficlone(&dst, &src_file).is_ok();
        loop {
            let n = src_file.read(buf).map_err(|err| ArchiveError::Write { path: path.into(), source: err })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            if !cloned {
                dst.write_all(&buf[..n]).map_err(|err| ArchiveError::Write { path: path.into(), source: err })?;
            }
        }
        if hex::encode(hasher.finalize()) != e.sha256 {
            return Err(ArchiveError::ContentDigest(format!("{path} (reused from {})", source.display())));
        }
        rustix::fs::fchmod(&dst, Mode::from_raw_mode(mode)).map_err(write_err(path))?;
        if let Some((uid, gid)) = owner {
            rustix::fs::fchown(&dst, Some(rustix::fs::Uid::from_raw(uid)), Some(rustix::fs::Gid::from_raw(gid)))
                .map_err(write_err(path))?;
        }
        return Ok(());
    }
    if hex::encode(hasher.finalize()) != e.sha256 {
        return Err(ArchiveError::ContentDigest(format!("{path} (reused from {})", source.display())));
    }
    Ok(())
}

/// Starts writeback of what the extraction wrote so far, on a helper thread, so the disk works
/// while the extractor goes on and the final `syncfs` finds little left to flush (with several
/// releases written at once to one filesystem, one final flush each made them wait on each other).
struct EarlyFlush {
    tx: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pending: u64,
}

/// Written bytes between two early flushes.
const EARLY_FLUSH_BYTES: u64 = 8 << 20;

impl EarlyFlush {
    fn start(root: &OwnedFd) -> Self {
        let Ok(fd) = root.try_clone() else { return EarlyFlush { tx: None, thread: None, pending: 0 } };
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("slipway-flush".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    let _ = rustix::fs::syncfs(&fd);
                }
            })
            .ok();
        EarlyFlush { tx: thread.as_ref().map(|_| tx), thread, pending: 0 }
    }

    fn wrote(&mut self, bytes: u64) {
        self.pending += bytes;
        if self.pending >= EARLY_FLUSH_BYTES {
            self.pending = 0;
            if let Some(tx) = &self.tx {
                let _ = tx.try_send(()); // One already queued covers this too.
            }
        }
    }
}

impl Drop for EarlyFlush {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Unpack a compressed archive into `dest` (an empty directory the caller created), checking
/// every entry against `manifest`. On error the caller removes `dest`; nothing is written
/// outside it. Files and directories are flushed to disk (one `syncfs`) before returning.
pub fn extract(
    compressed: impl Read,
    manifest: &Manifest,
    dest: &Path,
    options: &ExtractOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ExtractStats> {
    let root =
        rustix::fs::open(dest, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| ArchiveError::Write { path: dest.display().to_string(), source: e.into() })?;
    extract_into(compressed, manifest, root, &dest.display().to_string(), options, progress)
}

/// The most decompressed bytes an archive for `manifest` may have: every file's bytes and block
/// padding, a header and a long name and link per entry, and the end-of-archive record.
pub fn inflated_budget(manifest: &Manifest) -> u64 {
    let per_entry = 512 + 2 * (512 + MAX_PATH_LEN as u64 + 512);
    manifest.entries.iter().map(|e| e.size.div_ceil(512) * 512 + per_entry).sum::<u64>() + (1 << 20)
}

/// [`extract`] into the directory held open as `root` (`display` names it in messages).
pub fn extract_into(
    compressed: impl Read,
    manifest: &Manifest,
    root: OwnedFd,
    display: &str,
    options: &ExtractOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ExtractStats> {
    manifest.validate(&options.limits)?;
    let index: HashMap<&str, &ManifestEntry> = manifest.entries.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut early = EarlyFlush::start(&root);
    let mut dirs = DirCache::new(root);

    let mut hashing = HashingReader { inner: compressed, hasher: Sha256::new(), bytes: 0 };
    let mut stats = ExtractStats::default();
    let mut seen: HashSet<&str> = HashSet::with_capacity(manifest.entries.len());
    let mut symlinks: Vec<(String, String)> = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    // A delta carries only files: its directories come from the manifest, made first (the
    // manifest lists parents before children), and its symlinks last.
    let delta = options.reuse.is_some();
    if delta {
        for e in manifest.entries.iter().filter(|e| e.kind == EntryKind::Dir) {
            make_dir(&mut dirs, &e.path, normalise_mode(EntryKind::Dir, e.mode), options.owner)?;
            stats.entries += 1;
            seen.insert(e.path.as_str());
        }
    }
    {
        let mut decoder = zstd::stream::read::Decoder::new(&mut hashing).map_err(ArchiveError::Malformed)?;
        decoder.window_log_max(MAX_WINDOW_LOG).map_err(ArchiveError::Malformed)?;
        let mut guarded = crate::tar_guard::TarGuard::new(&mut decoder, inflated_budget(manifest));
        let mut archive = tar::Archive::new(&mut guarded);
        for entry in archive.entries().map_err(ArchiveError::Malformed)? {
            let mut entry = entry.map_err(ArchiveError::Malformed)?;
            let path = check_path(&entry.path_bytes())?;
            let kind = match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
                tar::EntryType::Directory => EntryKind::Dir,
                tar::EntryType::Symlink => EntryKind::Symlink,
                tar::EntryType::Link => return Err(ArchiveError::Forbidden { path, what: "hard link" }),
                tar::EntryType::Char => return Err(ArchiveError::Forbidden { path, what: "character device" }),
                tar::EntryType::Block => return Err(ArchiveError::Forbidden { path, what: "block device" }),
                tar::EntryType::Fifo => return Err(ArchiveError::Forbidden { path, what: "fifo" }),
                tar::EntryType::GNUSparse => return Err(ArchiveError::Forbidden { path, what: "sparse file" }),
                _ => return Err(ArchiveError::Forbidden { path, what: "special entry" }),
            };
            let expected = *index.get(path.as_str()).ok_or_else(|| ArchiveError::NotInManifest(path.clone()))?;
            if delta && kind != EntryKind::File {
                return Err(ArchiveError::Forbidden {
                    path,
                    what: "directory or symlink in a delta (they come from the manifest)",
                });
            }
            if !seen.insert(expected.path.as_str()) {
                return Err(ArchiveError::Duplicate(path));
            }
            stats.entries += 1;
            if stats.entries > options.limits.max_entries {
                return Err(ArchiveError::Limit(format!("more than {} entries", options.limits.max_entries)));
            }
            if expected.kind != kind {
                return Err(ArchiveError::KindMismatch { path, archive: kind.word(), manifest: expected.kind.word() });
            }
            let raw_mode = entry.header().mode().map_err(ArchiveError::Malformed)?;
            let mode = normalise_mode(kind, raw_mode);
            if mode != normalise_mode(kind, expected.mode) {
                return Err(ArchiveError::Mismatch {
                    path,
                    what: "mode",
                    archive: format!("{raw_mode:o}"),
                    manifest: format!("{:o}", expected.mode),
                });
            }
            let name = file_name_of(&path).to_owned();
            match kind {
                EntryKind::Dir => make_dir(&mut dirs, &path, mode, options.owner)?,
                EntryKind::Symlink => {
                    let target =
                        entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned()).unwrap_or_default();
                    if target != expected.link_target {
                        return Err(ArchiveError::Mismatch {
                            path,
                            what: "symlink target",
                            archive: clip(&target, CLIP),
                            manifest: clip(&expected.link_target, CLIP),
                        });
                    }
                    // Created last, so no entry can be written through a link.
                    symlinks.push((path, target));
                }
                EntryKind::File => {
                    let size = entry.size();
                    if size != expected.size {
                        return Err(ArchiveError::Mismatch {
                            path,
                            what: "size",
                            archive: size.to_string(),
                            manifest: expected.size.to_string(),
                        });
                    }
                    stats.file_bytes += size;
                    early.wrote(size + 4096);
                    if stats.file_bytes > options.limits.max_bytes {
                        return Err(ArchiveError::Limit(format!("more than {} bytes", options.limits.max_bytes)));
                    }
                    let parent = dirs.open(parent_of(&path), &path)?;
                    let (mode, owner) = options.file_mode_owner(mode);
                    let fd = rustix::fs::openat(
                        parent,
                        name.as_str(),
                        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::from_raw_mode(mode),
                    )
                    .map_err(write_err(&path))?;
                    let mut file = std::fs::File::from(fd);
                    let mut hasher = Sha256::new();
                    let mut written = 0u64;
                    loop {
                        let n = entry.read(&mut buf).map_err(ArchiveError::Malformed)?;
                        if n == 0 {
                            break;
                        }
                        hasher.update(&buf[..n]);
                        file.write_all(&buf[..n])
                            .map_err(|source| ArchiveError::Write { path: path.clone(), source })?;
                        written += n as u64;
                    }
                    if written != size {
                        return Err(ArchiveError::Malformed(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("'{path}' ends after {written} of {size} bytes"),
                        )));
                    }
                    if hex::encode(hasher.finalize()) != expected.sha256 {
                        return Err(ArchiveError::ContentDigest(path));
                    }
                    if needs_chmod(mode) {
                        rustix::fs::fchmod(&file, Mode::from_raw_mode(mode)).map_err(write_err(&path))?;
                    }
                    if let Some((uid, gid)) = owner {
                        rustix::fs::fchown(
                            &file,
                            Some(rustix::fs::Uid::from_raw(uid)),
                            Some(rustix::fs::Gid::from_raw(gid)),
                        )
                        .map_err(write_err(&path))?;
                    }
                }
            }
            progress(stats.entries, stats.file_bytes);
        }
        // Read to the very end, so the digest covers every byte and trailing garbage is caught.
        io::copy(&mut guarded, &mut io::sink()).map_err(ArchiveError::Malformed)?;
    }
    io::copy(&mut hashing, &mut io::sink()).map_err(ArchiveError::Malformed)?;
    stats.compressed_bytes = hashing.bytes;
    stats.sha256 = hashing.hasher.finalize().into();
    if let Some(expected) = &options.expected_sha256 {
        let actual = hex::encode(stats.sha256);
        if &actual != expected {
            return Err(ArchiveError::ArtifactDigest { actual, expected: expected.clone() });
        }
    }
    for entry in manifest.entries.iter().filter(|e| !seen.contains(e.path.as_str())) {
        match (&options.reuse, entry.kind) {
            (Some(_), EntryKind::Symlink) => {
                stats.entries += 1;
                symlinks.push((entry.path.clone(), entry.link_target.clone()));
            }
            (Some(reuse), EntryKind::File) => {
                let source =
                    reuse.sources.get(&entry.sha256).ok_or_else(|| ArchiveError::Missing(entry.path.clone()))?;
                reuse_file(&mut dirs, entry, source, reuse.hardlink, options, &mut buf)?;
                stats.reused += 1;
                stats.reused_bytes += entry.size;
                stats.file_bytes += entry.size;
            }
            _ => return Err(ArchiveError::Missing(entry.path.clone())),
        }
    }
    for (path, target) in &symlinks {
        let name = file_name_of(path);
        let parent = dirs.open(parent_of(path), path)?;
        rustix::fs::symlinkat(target.as_str(), parent, name).map_err(write_err(path))?;
        chown_at(parent, name, options.owner, path)?;
    }
    drop(early);
    rustix::fs::syncfs(&dirs.root).map_err(|e| ArchiveError::Write { path: display.to_owned(), source: e.into() })?;
    Ok(stats)
}

/// Builders for archives that break the rules, for the extractor's tests here and end to end.
pub mod testing {
    use super::*;

    /// One raw tar entry, written exactly as given (no path checks).
    #[derive(Debug, Clone)]
    pub struct RawEntry {
        pub path: Vec<u8>,
        pub kind: tar::EntryType,
        pub mode: u32,
        pub data: Vec<u8>,
        pub link: Vec<u8>,
    }

    impl RawEntry {
        pub fn file(path: &str, mode: u32, data: &[u8]) -> Self {
            RawEntry { path: path.into(), kind: tar::EntryType::Regular, mode, data: data.to_vec(), link: vec![] }
        }
        pub fn dir(path: &str) -> Self {
            RawEntry { path: path.into(), kind: tar::EntryType::Directory, mode: 0o755, data: vec![], link: vec![] }
        }
        pub fn symlink(path: &str, target: &str) -> Self {
            RawEntry {
                path: path.into(),
                kind: tar::EntryType::Symlink,
                mode: 0o777,
                data: vec![],
                link: target.into(),
            }
        }
        pub fn other(path: &str, kind: tar::EntryType, link: &str) -> Self {
            RawEntry { path: path.into(), kind, mode: 0o644, data: vec![], link: link.into() }
        }
    }

    /// An uncompressed tar of `entries`, names written byte for byte (so at most 100 bytes).
    pub fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..e.path.len()].copy_from_slice(&e.path);
            h.as_old_mut().linkname[..e.link.len()].copy_from_slice(&e.link);
            h.set_entry_type(e.kind);
            h.set_mode(e.mode);
            h.set_size(e.data.len() as u64);
            if let Some(gnu) = h.as_gnu_mut() {
                gnu.set_real_size(e.data.len() as u64);
            }
            h.set_cksum();
            builder.append(&h, e.data.as_slice()).expect("append to Vec");
        }
        builder.into_inner().expect("finish tar")
    }

    pub fn compress(tar: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(tar, 3).expect("zstd")
    }

    pub fn sha256_hex(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// The manifest an honest packer would have written for these entries (lossy paths,
    /// modes as given).
    pub fn manifest_for(entries: &[RawEntry]) -> Manifest {
        let entries = entries
            .iter()
            .map(|e| {
                let kind = match e.kind {
                    tar::EntryType::Directory => EntryKind::Dir,
                    tar::EntryType::Symlink => EntryKind::Symlink,
                    _ => EntryKind::File,
                };
                let path = String::from_utf8_lossy(&e.path);
                ManifestEntry {
                    path: path.strip_suffix('/').unwrap_or(&path).to_owned(),
                    kind,
                    mode: e.mode,
                    size: e.data.len() as u64,
                    sha256: if kind == EntryKind::File { sha256_hex(&e.data) } else { String::new() },
                    link_target: String::from_utf8_lossy(&e.link).into_owned(),
                }
            })
            .collect();
        Manifest { entries }
    }
}

#[cfg(test)]
#[path = "archive_tests.rs"]
mod tests;
