//! A build made elsewhere (CI) turned into a release package: a single file (a WAR, a JAR:
//! the release holds that one file), a tar archive (plain, gzip or zstd: unpacked by the same
//! rules as everything the agents receive), or a directory. The archive is untrusted input: its
//! headers go through [`TarGuard`], every name through [`check_path`], only directories,
//! files and symlinks are taken, and the package made from it is then run through the agents'
//! own extractor ([`archive::extract`]) before it is kept, so an archive the agents would refuse
//! is refused here, at push time, with the agents' words.

use std::io::{BufReader, Read, Write};
use std::path::Path;

use slipway_common::archive::{self, ExtractOptions, Limits, Packer, check_path};
use slipway_common::tar_guard::TarGuard;

use crate::error::{Context, CtlError, Result};

/// What was pushed, as found from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Tar,
    Dir,
}

impl Kind {
    pub fn word(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Tar => "tar",
            Kind::Dir => "dir",
        }
    }
}

enum Compression {
    None,
    Gzip,
    Zstd,
}

/// A tar archive (maybe compressed) or a single file, from its first bytes.
fn sniff(path: &Path) -> Result<(Kind, Compression)> {
    let mut head = [0u8; 512];
    let mut file = std::fs::File::open(path).context(format_args!("cannot read {}", path.display()))?;
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]).context(format_args!("cannot read {}", path.display()))? {
            0 => break,
            k => n += k,
        }
    }
    Ok(match head {
        _ if n >= 2 && head[..2] == [0x1f, 0x8b] => (Kind::Tar, Compression::Gzip),
        _ if n >= 4 && head[..4] == [0x28, 0xb5, 0x2f, 0xfd] => (Kind::Tar, Compression::Zstd),
        _ if n >= 262 && &head[257..262] == b"ustar" => (Kind::Tar, Compression::None),
        _ => (Kind::File, Compression::None),
    })
}

/// A pushed file's name as the release holds it: one plain name.
pub fn check_file_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('\0') || name.len() > 255 {
        return Err(CtlError::bad(format!("'{}' cannot be a file name in a release", archive::clip(name, 64)))
            .fix("name the file plainly, e.g. app.war"));
    }
    Ok(())
}

/// Pack what `input` holds into `packer`: `file_name` is a single file's name in the release.
pub fn pack<W: Write>(input: &Path, file_name: &str, packer: &mut Packer<W>) -> Result<Kind> {
    let meta = std::fs::metadata(input).context(format_args!("cannot read {}", input.display()))?;
    if meta.is_dir() {
        crate::source::tree::walk_dir(input, &crate::source::exclude::Excludes::default(), packer)?;
        return Ok(Kind::Dir);
    }
    let (kind, compression) = sniff(input)?;
    let file = std::fs::File::open(input).context(format_args!("cannot read {}", input.display()))?;
    if kind == Kind::File {
        check_file_name(file_name)?;
        let mut content = Vec::with_capacity(meta.len() as usize);
        BufReader::new(file).read_to_end(&mut content).context(format_args!("cannot read {}", input.display()))?;
        packer.add_file(file_name, 0o644, &content).context("cannot write the package")?;
        return Ok(Kind::File);
    }
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(BufReader::new(file)),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(BufReader::new(file))),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(file).context("zstd")?;
            d.window_log_max(archive::MAX_WINDOW_LOG).context("zstd")?;
            Box::new(d)
        }
    };
    unpack_tar(reader, packer)?;
    Ok(Kind::Tar)
}

pub fn refused(why: impl std::fmt::Display) -> CtlError {
    CtlError::bad(format!("the pushed archive is refused: {why}"))
        .fix("build it with plain files, directories and relative symlinks (tar czf app.tgz -C dist .)")
}

/// Entries of an untrusted tar into `packer`: names checked, a leading `./` dropped, missing
/// parent directories added, anything but a directory, file or symlink refused.
fn unpack_tar<W: Write>(reader: impl Read, packer: &mut Packer<W>) -> Result<()> {
    let limits = Limits::default();
    let mut guarded = TarGuard::new(reader, limits.max_bytes + (1 << 30));
    let mut tar = tar::Archive::new(&mut guarded);
    let mut dirs = std::collections::HashSet::new();
    // Every path taken, so a missing parent is added only where nothing else stands.
    let mut seen = std::collections::HashSet::new();
    for entry in tar.entries().map_err(refused)? {
        let mut entry = entry.map_err(refused)?;
        let raw = entry.path_bytes().into_owned();
        let raw = raw.strip_prefix(b"./").unwrap_or(&raw);
        if raw.is_empty() || raw == b"." || raw == b"./" {
            continue;
        }
        let path = check_path(raw).map_err(refused)?;
        let kind = entry.header().entry_type();
        let shipped = matches!(
            kind,
            tar::EntryType::Directory | tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Symlink
        );
        if !shipped {
            return Err(refused(format!(
                "'{}' is a {} (only directories, files and symlinks ship)",
                archive::clip(&path, 128),
                match kind {
                    tar::EntryType::Link => "hard link",
                    tar::EntryType::Char | tar::EntryType::Block => "device",
                    tar::EntryType::Fifo => "fifo",
                    _ => "special entry",
                }
            )));
        }
        // Parents first, as a release lists them.
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let parent = &path[..at + i];
            if !seen.contains(parent) && dirs.insert(parent.to_owned()) {
                seen.insert(parent.to_owned());
                packer.add_dir(parent).context("cannot write the package")?;
            }
            at += i + 1;
        }
        let mode = entry.header().mode().map_err(refused)?;
        if kind != tar::EntryType::Directory {
            seen.insert(path.clone());
        }
        match kind {
            tar::EntryType::Directory => {
                // A directory listed twice (or made as a parent first) is one directory.
                if dirs.insert(path.clone()) {
                    seen.insert(path.clone());
                    packer.add_dir(&path).context("cannot write the package")?;
                }
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| refused(format!("the symlink '{}' has no target", archive::clip(&path, 128))))?;
                let target = std::str::from_utf8(&target)
                    .map_err(|_| {
                        refused(format!("the symlink '{}' has a non-UTF-8 target", archive::clip(&path, 128)))
                    })?
                    .to_owned();
                packer.add_symlink(&path, &target).context("cannot write the package")?;
            }
            _ => {
                let mut content = Vec::with_capacity(entry.size().min(1 << 30) as usize);
                entry.read_to_end(&mut content).map_err(refused)?;
                packer.add_file(&path, mode, &content).context("cannot write the package")?;
            }
        }
    }
    Ok(())
}

/// Run the package at `package` through the agents' extractor into a scratch directory under
/// `scratch`: what it refuses is refused now, with its words.
pub fn check_with_extractor(package: &Path, manifest: &archive::Manifest, sha256: &str, scratch: &Path) -> Result<()> {
    let dir = scratch.join(format!(".check-{}-{}", std::process::id(), &sha256[..12]));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).context(format_args!("cannot create {}", dir.display()))?;
    let options = ExtractOptions {
        limits: Limits::default(),
        expected_sha256: Some(sha256.to_owned()),
        owner: None,
        reuse: None,
        read_only_files: false,
    };
    let file = std::fs::File::open(package).context("cannot read the package")?;
    let result = archive::extract(BufReader::new(file), manifest, &dir, &options, &mut |_, _| {});
    let _ = std::fs::remove_dir_all(&dir);
    result.map(|_| ()).map_err(refused)
}
