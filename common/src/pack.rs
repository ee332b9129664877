//! Writing a release archive: tar + zstd (multi-threaded) and its manifest in one pass, with the
//! sha256 of the compressed bytes. The agent's side is `archive::extract`.

use std::io::{self, Write};

use sha2::{Digest, Sha256};

use crate::manifest::{Manifest, ManifestEntry};

/// Counts and hashes what passes through.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What [`Packer::finish`] returns.
pub struct Packed<W> {
    pub manifest: Manifest,
    /// Hex sha256 of the compressed bytes.
    pub sha256: String,
    pub compressed_size: u64,
    pub out: W,
}

/// Writes a release archive and its manifest in one pass. Entries must come parents first.
///
/// Levels up to 19 keep the zstd window within [`crate::archive::MAX_WINDOW_LOG`], which the agent enforces.
pub struct Packer<W: Write> {
    builder: tar::Builder<zstd::stream::write::Encoder<'static, HashingWriter<W>>>,
    entries: Vec<ManifestEntry>,
    mtime: u64,
}

impl<W: Write> Packer<W> {
    /// `threads` > 1 compresses on that many worker threads.
    pub fn new(out: W, level: i32, threads: u32, mtime: u64) -> io::Result<Self> {
        let hashing = HashingWriter { inner: out, hasher: Sha256::new(), bytes: 0 };
        let mut encoder = zstd::stream::write::Encoder::new(hashing, level)?;
        if threads > 1 {
            encoder.multithread(threads)?;
        }
        let mut builder = tar::Builder::new(encoder);
        builder.mode(tar::HeaderMode::Deterministic);
        Ok(Packer { builder, entries: Vec::new(), mtime })
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(self.mtime);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    pub fn add_dir(&mut self, path: &str) -> io::Result<()> {
        let entry = ManifestEntry::dir(path);
        let mut h = self.header(tar::EntryType::Directory, entry.mode, 0);
        self.builder.append_data(&mut h, path, io::empty())?;
        self.entries.push(entry);
        Ok(())
    }

    pub fn add_file(&mut self, path: &str, mode: u32, content: &[u8]) -> io::Result<()> {
        let entry = ManifestEntry::file(path, mode, content.len() as u64, hex::encode(Sha256::digest(content)));
        let mut h = self.header(tar::EntryType::Regular, entry.mode, entry.size);
        self.builder.append_data(&mut h, path, content)?;
        self.entries.push(entry);
        Ok(())
    }

    pub fn add_symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let entry = ManifestEntry::symlink(path, target);
        let mut h = self.header(tar::EntryType::Symlink, entry.mode, 0);
        self.builder.append_link(&mut h, path, target)?;
        self.entries.push(entry);
        Ok(())
    }

    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// The manifest entry of what was added last.
    pub fn last_entry(&self) -> Option<&ManifestEntry> {
        self.entries.last()
    }

    pub fn finish(self) -> io::Result<Packed<W>> {
        let encoder = self.builder.into_inner()?;
        let hashing = encoder.finish()?;
        Ok(Packed {
            manifest: Manifest { entries: self.entries },
            sha256: hex::encode(hashing.hasher.finalize()),
            compressed_size: hashing.bytes,
            out: hashing.inner,
        })
    }
}
