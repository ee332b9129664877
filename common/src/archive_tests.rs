//! Extractor tests: a round trip, and every hostile shape from DESIGN.md's archive rules.

use std::os::unix::fs::PermissionsExt;

use std::collections::HashMap;

use super::testing::*;
use super::*;

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("staging")).unwrap();
        Sandbox { dir }
    }

    fn staging(&self) -> std::path::PathBuf {
        self.dir.path().join("staging")
    }

    /// Everything in the sandbox outside `staging`: must stay empty whatever the archive says.
    fn outside(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "staging")
            .collect()
    }
}

fn run(compressed: &[u8], manifest: &Manifest, sandbox: &Sandbox) -> Result<ExtractStats> {
    let options = ExtractOptions {
        limits: Limits::default(),
        expected_sha256: Some(sha256_hex(compressed)),
        owner: None,
        reuse: None,
        read_only_files: false,
    };
    extract(compressed, manifest, &sandbox.staging(), &options, &mut |_, _| {})
}

/// Extract `entries` with `manifest` (the honest one when `None`) and expect a rejection.
fn check_rejected(entries: &[RawEntry], manifest: Option<Manifest>, expected: fn(&ArchiveError) -> bool) {
    let sandbox = Sandbox::new();
    let manifest = manifest.unwrap_or_else(|| manifest_for(entries));
    let compressed = compress(&raw_tar(entries));
    let err = run(&compressed, &manifest, &sandbox).expect_err("hostile archive must be rejected");
    assert!(expected(&err), "unexpected error: {err}");
    assert!(sandbox.outside().is_empty(), "wrote outside staging: {:?}", sandbox.outside());
}

#[test]
fn round_trip_keeps_content_modes_and_links() {
    let mut packer = Packer::new(Vec::new(), 3, 2, 0).unwrap();
    packer.add_dir("bin").unwrap();
    packer.add_file("bin/run", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
    packer.add_file("index.html", 0o644, b"<h1>v1</h1>").unwrap();
    packer.add_symlink("latest", "bin/run").unwrap();
    let long = format!("{}/{}", "d".repeat(120), "f".repeat(120));
    packer.add_dir(&"d".repeat(120)).unwrap();
    packer.add_file(&long, 0o644, b"long").unwrap();
    let packed = packer.finish().unwrap();
    assert_eq!(packed.compressed_size as usize, packed.out.len());
    assert_eq!(packed.sha256, sha256_hex(&packed.out));

    let sandbox = Sandbox::new();
    let stats = run(&packed.out, &packed.manifest, &sandbox).unwrap();
    assert_eq!(stats.entries, 6);
    let s = sandbox.staging();
    assert_eq!(std::fs::read(s.join("index.html")).unwrap(), b"<h1>v1</h1>");
    assert_eq!(std::fs::metadata(s.join("bin/run")).unwrap().permissions().mode() & 0o7777, 0o755);
    assert_eq!(std::fs::metadata(s.join("index.html")).unwrap().permissions().mode() & 0o7777, 0o644);
    assert_eq!(std::fs::read_link(s.join("latest")).unwrap(), std::path::Path::new("bin/run"));
    assert_eq!(std::fs::read(s.join(&long)).unwrap(), b"long");
}

#[test]
fn dot_dot_and_absolute_paths() {
    let manifest = manifest_for(&[RawEntry::file("ok", 0o644, b"x")]);
    check_rejected(&[RawEntry::file("../evil", 0o644, b"x")], Some(manifest.clone()), |e| {
        matches!(e, ArchiveError::UnsafePath { .. })
    });
    check_rejected(&[RawEntry::file("a/../../evil", 0o644, b"x")], Some(manifest.clone()), |e| {
        matches!(e, ArchiveError::UnsafePath { .. })
    });
    check_rejected(&[RawEntry::file("/tmp/evil", 0o644, b"x")], Some(manifest), |e| {
        matches!(e, ArchiveError::UnsafePath { .. })
    });
    // A manifest that itself lists a `..` path is refused before anything is read.
    check_rejected(&[RawEntry::file("../evil", 0o644, b"x")], None, |e| matches!(e, ArchiveError::UnsafePath { .. }));
}

#[test]
fn symlinks_that_leave_the_release() {
    let escape = |e: &ArchiveError| matches!(e, ArchiveError::SymlinkEscape { .. });
    check_rejected(&[RawEntry::symlink("l", "../../etc")], None, escape);
    check_rejected(&[RawEntry::symlink("l", "/etc/passwd")], None, escape);
    check_rejected(&[RawEntry::dir("d"), RawEntry::symlink("d/l", "../..")], None, escape);
    // Each link alone stays inside, together they climb out: b -> ".", a -> "b/..".
    check_rejected(&[RawEntry::symlink("b", "."), RawEntry::symlink("a", "b/..")], None, escape);
    // A loop never resolves.
    check_rejected(&[RawEntry::symlink("x", "y"), RawEntry::symlink("y", "x")], None, escape);
}

#[test]
fn symlink_then_a_file_through_it() {
    let entries = [RawEntry::dir("d"), RawEntry::symlink("l", "d"), RawEntry::file("l/x", 0o644, b"x")];
    check_rejected(&entries, None, |e| matches!(e, ArchiveError::Parent(_)));
    // The manifest lies that `l` is a directory: the archive's symlink does not match it.
    let mut manifest = manifest_for(&entries);
    manifest.entries[1] =
        ManifestEntry { kind: EntryKind::Dir, mode: 0o755, link_target: String::new(), ..manifest.entries[1].clone() };
    check_rejected(&entries, Some(manifest), |e| matches!(e, ArchiveError::KindMismatch { .. }));
    // An escaping link to an outside directory, then a file through it.
    let entries = [RawEntry::symlink("l", "/tmp"), RawEntry::file("l/x", 0o644, b"x")];
    let mut manifest = manifest_for(&entries);
    manifest.entries.truncate(1);
    manifest.entries[0] = ManifestEntry {
        path: "l".into(),
        kind: EntryKind::Dir,
        mode: 0o755,
        size: 0,
        sha256: String::new(),
        link_target: String::new(),
    };
    check_rejected(&entries, Some(manifest), |e| matches!(e, ArchiveError::KindMismatch { .. }));
}

#[test]
fn special_entries() {
    let forbidden = |e: &ArchiveError| matches!(e, ArchiveError::Forbidden { .. });
    let file = RawEntry::file("a", 0o644, b"x");
    let manifest = manifest_for(std::slice::from_ref(&file));
    check_rejected(&[file.clone(), RawEntry::other("b", tar::EntryType::Link, "a")], Some(manifest.clone()), forbidden);
    check_rejected(&[RawEntry::other("dev", tar::EntryType::Char, "")], Some(manifest.clone()), forbidden);
    check_rejected(&[RawEntry::other("dev", tar::EntryType::Block, "")], Some(manifest.clone()), forbidden);
    check_rejected(&[RawEntry::other("p", tar::EntryType::Fifo, "")], Some(manifest.clone()), forbidden);
    check_rejected(&[RawEntry::other("s", tar::EntryType::GNUSparse, "")], Some(manifest), forbidden);
}

#[test]
fn duplicates_and_manifest_mismatches() {
    let a = RawEntry::file("a", 0o644, b"one");
    let manifest = manifest_for(std::slice::from_ref(&a));
    check_rejected(&[a.clone(), RawEntry::file("a", 0o644, b"one")], Some(manifest.clone()), |e| {
        matches!(e, ArchiveError::Duplicate(_))
    });
    check_rejected(&[a.clone(), a.clone()], None, |e| matches!(e, ArchiveError::Duplicate(_)));
    check_rejected(&[a.clone(), RawEntry::file("extra", 0o644, b"")], Some(manifest.clone()), |e| {
        matches!(e, ArchiveError::NotInManifest(_))
    });
    check_rejected(&[RawEntry::file("a", 0o644, b"two!")], Some(manifest.clone()), |e| {
        matches!(e, ArchiveError::Mismatch { what: "size", .. })
    });
    check_rejected(&[RawEntry::file("a", 0o644, b"two")], Some(manifest.clone()), |e| {
        matches!(e, ArchiveError::ContentDigest(_))
    });
    check_rejected(&[RawEntry::file("a", 0o755, b"one")], Some(manifest.clone()), |e| {
        matches!(e, ArchiveError::Mismatch { what: "mode", .. })
    });
    let two = manifest_for(&[a.clone(), RawEntry::file("b", 0o644, b"")]);
    check_rejected(std::slice::from_ref(&a), Some(two), |e| matches!(e, ArchiveError::Missing(_)));
}

#[test]
fn setuid_and_world_writable_modes_are_normalised() {
    let entries = [
        RawEntry::file("suid", 0o4755, b"x"),
        RawEntry::file("open", 0o777, b"y"),
        RawEntry { mode: 0o1777, ..RawEntry::dir("tmp") },
    ];
    let sandbox = Sandbox::new();
    let compressed = compress(&raw_tar(&entries));
    run(&compressed, &manifest_for(&entries), &sandbox).unwrap();
    let mode = |p: &str| std::fs::metadata(sandbox.staging().join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("suid"), 0o755);
    assert_eq!(mode("open"), 0o755);
    assert_eq!(mode("tmp"), 0o755);
}

#[test]
fn truncated_stream_and_wrong_digest() {
    let entries = [RawEntry::file("big", 0o644, &vec![7u8; 300_000])];
    let manifest = manifest_for(&entries);
    let compressed = compress(&raw_tar(&entries));
    let sandbox = Sandbox::new();
    let cut = &compressed[..compressed.len() / 2];
    let options = ExtractOptions {
        limits: Limits::default(),
        expected_sha256: Some(sha256_hex(cut)),
        owner: None,
        reuse: None,
        read_only_files: false,
    };
    let err = extract(cut, &manifest, &sandbox.staging(), &options, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, ArchiveError::Malformed(_)), "{err}");

    let sandbox = Sandbox::new();
    let options = ExtractOptions {
        limits: Limits::default(),
        expected_sha256: Some("00".repeat(32)),
        owner: None,
        reuse: None,
        read_only_files: false,
    };
    let err = extract(compressed.as_slice(), &manifest, &sandbox.staging(), &options, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, ArchiveError::ArtifactDigest { .. }), "{err}");

    let mut with_garbage = compressed.clone();
    with_garbage.extend_from_slice(b"trailing garbage");
    let sandbox = Sandbox::new();
    let err = run(&with_garbage, &manifest, &sandbox).unwrap_err();
    assert!(matches!(err, ArchiveError::Malformed(_)), "{err}");
}

#[test]
fn limits_are_enforced() {
    let entries = [RawEntry::file("a", 0o644, b"12345"), RawEntry::file("b", 0o644, b"12345")];
    let compressed = compress(&raw_tar(&entries));
    let sandbox = Sandbox::new();
    let options = ExtractOptions {
        limits: Limits { max_entries: 1, max_bytes: 1 << 20 },
        expected_sha256: Some(sha256_hex(&compressed)),
        owner: None,
        reuse: None,
        read_only_files: false,
    };
    let err = extract(compressed.as_slice(), &manifest_for(&entries), &sandbox.staging(), &options, &mut |_, _| {})
        .unwrap_err();
    assert!(matches!(err, ArchiveError::Limit(_)), "{err}");
    let options = ExtractOptions { limits: Limits { max_entries: 10, max_bytes: 9 }, ..options };
    let err = extract(compressed.as_slice(), &manifest_for(&entries), &sandbox.staging(), &options, &mut |_, _| {})
        .unwrap_err();
    assert!(matches!(err, ArchiveError::Limit(_)), "{err}");
}

#[test]
fn a_delta_takes_left_out_files_from_retained_releases_and_verifies_them() {
    use std::os::unix::fs::MetadataExt;
    let sandbox = Sandbox::new();
    let base = sandbox.dir.path().join("base");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::write(base.join("a"), b"one").unwrap();
    let full = [RawEntry::dir("d"), RawEntry::file("a", 0o644, b"one"), RawEntry::file("d/b", 0o644, b"two")];
    let manifest = manifest_for(&full);
    // The delta ships the changed file only; the directory comes from the manifest.
    let delta = compress(&raw_tar(&[full[2].clone()]));
    let mut sources: HashMap<String, ReuseSource> = [(sha256_hex(b"one"), ReuseSource::at(&base, "a").unwrap())].into();
    let mut options = ExtractOptions {
        limits: Limits::default(),
        expected_sha256: Some(sha256_hex(&delta)),
        owner: None,
        reuse: Some(Reuse { sources: sources.clone(), hardlink: false }),
        read_only_files: false,
    };
    let stats = extract(delta.as_slice(), &manifest, &sandbox.staging(), &options, &mut |_, _| {}).unwrap();
    assert_eq!(stats.reused, 1);
    assert_eq!(std::fs::read(sandbox.staging().join("a")).unwrap(), b"one");
    assert_eq!(std::fs::read(sandbox.staging().join("d/b")).unwrap(), b"two");
    // Writing the new release's copy never changes the retained file.
    std::fs::write(sandbox.staging().join("a"), b"changed").unwrap();
    assert_eq!(std::fs::read(base.join("a")).unwrap(), b"one");

    // A retained file that no longer has the content the inventory promised is refused.
    let sandbox2 = Sandbox::new();
    std::fs::write(base.join("a"), b"tampered").unwrap();
    let err = extract(delta.as_slice(), &manifest, &sandbox2.staging(), &options, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, ArchiveError::ContentDigest(_)), "{err}");

    // No source at all: the entry is missing.
    let sandbox3 = Sandbox::new();
    options.reuse = Some(Reuse::default());
    let err = extract(delta.as_slice(), &manifest, &sandbox3.staging(), &options, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, ArchiveError::Missing(_)), "{err}");

    // Hard links only to read-only files: the same inode, and nobody can write it.
    std::fs::write(base.join("a"), b"one").unwrap();
    std::fs::set_permissions(base.join("a"), std::fs::Permissions::from_mode(0o444)).unwrap();
    let sandbox4 = Sandbox::new();
    options.reuse = Some(Reuse { sources: sources.clone(), hardlink: true });
    options.read_only_files = true;
    extract(delta.as_slice(), &manifest, &sandbox4.staging(), &options, &mut |_, _| {}).unwrap();
    let (linked, original) =
        (std::fs::metadata(sandbox4.staging().join("a")).unwrap(), std::fs::metadata(base.join("a")).unwrap());
    assert_eq!(linked.ino(), original.ino());
    assert_eq!(std::fs::metadata(sandbox4.staging().join("d/b")).unwrap().permissions().mode() & 0o777, 0o444);

    // The identity recorded at staging spares re-reading a protected file that still has it...
    let identity = FileIdentity::of(&original);
    sources.get_mut(&sha256_hex(b"one")).unwrap().identity = identity;
    options.reuse = Some(Reuse { sources: sources.clone(), hardlink: true });
    let sandbox5 = Sandbox::new();
    extract(delta.as_slice(), &manifest, &sandbox5.staging(), &options, &mut |_, _| {}).unwrap();
    assert_eq!(std::fs::metadata(sandbox5.staging().join("a")).unwrap().ino(), original.ino());
    // ...but a file written since (new mtime) is read again and its new content refused.
    std::fs::set_permissions(base.join("a"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(base.join("a"), b"two").unwrap();
    std::fs::set_permissions(base.join("a"), std::fs::Permissions::from_mode(0o444)).unwrap();
    assert_ne!(FileIdentity::of(&std::fs::metadata(base.join("a")).unwrap()), identity);
    let err = extract(delta.as_slice(), &manifest, &Sandbox::new().staging(), &options, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, ArchiveError::ContentDigest(_)), "{err}");
    // A writable file is never trusted by identity, even one forged to match it: it is copied and
    // hashed (and here refused).
    std::fs::set_permissions(base.join("a"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let file = std::fs::File::options().write(true).open(base.join("a")).unwrap();
    file.set_modified(
        std::time::UNIX_EPOCH + std::time::Duration::new(identity.mtime as u64, identity.mtime_nsec as u32),
    )
    .unwrap();
    drop(file);
    let forged = FileIdentity::of(&std::fs::metadata(base.join("a")).unwrap());
    sources.get_mut(&sha256_hex(b"one")).unwrap().identity = forged;
    options.reuse = Some(Reuse { sources, hardlink: true });
    let err = extract(delta.as_slice(), &manifest, &Sandbox::new().staging(), &options, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, ArchiveError::ContentDigest(_)), "{err}");
}

#[test]
fn reuse_sources_are_opened_beneath_their_release_and_must_be_the_hashed_file() {
    let sandbox = Sandbox::new();
    let base = sandbox.dir.path().join("base");
    std::fs::create_dir_all(base.join("d")).unwrap();
    std::fs::write(base.join("d/a"), b"one").unwrap();
    let source = ReuseSource::at(&base, "d/a").unwrap();
    let full = [RawEntry::file("a", 0o644, b"one")];
    let manifest = manifest_for(&full);
    let delta = compress(&raw_tar(&[]));
    let options = |source: ReuseSource| ExtractOptions {
        limits: Limits::default(),
        expected_sha256: Some(sha256_hex(&delta)),
        owner: None,
        reuse: Some(Reuse { sources: [(sha256_hex(b"one"), source)].into(), hardlink: false }),
        read_only_files: false,
    };
    let run = |source: ReuseSource| {
        let s = Sandbox::new();
        let r = extract(delta.as_slice(), &manifest, &s.staging(), &options(source), &mut |_, _| {});
        (r, s)
    };
    let (ok, s) = run(source.clone());
    ok.unwrap();
    assert_eq!(std::fs::read(s.staging().join("a")).unwrap(), b"one");
    // The directory on the way swapped for a symlink to a place with the same name: refused.
    let elsewhere = sandbox.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("a"), b"one").unwrap();
    std::fs::rename(base.join("d"), base.join("d.orig")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, base.join("d")).unwrap();
    let (err, s) = run(source.clone());
    assert!(err.is_err(), "followed a symlink in the retained release");
    assert!(!s.staging().join("a").exists());
    // A fifo in place of the file: refused at once, no hang.
    std::fs::remove_file(base.join("d")).unwrap();
    std::fs::create_dir(base.join("d")).unwrap();
    rustix::fs::mknodat(rustix::fs::CWD, base.join("d/a"), rustix::fs::FileType::Fifo, Mode::from_raw_mode(0o644), 0)
        .unwrap();
    let (err, _) = run(source.clone());
    assert!(matches!(err, Err(ArchiveError::ReuseChanged(_))), "{err:?}");
    // Another regular file with the same content at that path: not the hashed inode, refused.
    std::fs::remove_file(base.join("d/a")).unwrap();
    std::fs::write(base.join("d/a"), b"one").unwrap();
    let (err, _) = run(source);
    assert!(matches!(err, Err(ArchiveError::ReuseChanged(_))), "{err:?}");
}

#[test]
fn symlink_targets_are_bounded_and_resolved_in_linear_time() {
    // A long chain of links through deep directories validates quickly.
    let mut entries = vec![ManifestEntry::dir("d")];
    let mut dir = "d".to_owned();
    for _ in 0..1000 {
        dir.push_str("/d");
        entries.push(ManifestEntry::dir(&dir));
    }
    for i in 0..2_000 {
        entries.push(ManifestEntry::symlink(&format!("{dir}/l{i}"), &"../".repeat(1000)));
    }
    let started = std::time::Instant::now();
    Manifest { entries: entries.clone() }.validate(&Limits::default()).unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    entries.push(ManifestEntry::symlink("escape", &"../".repeat(1001)));
    assert!(matches!(
        Manifest { entries: entries.clone() }.validate(&Limits::default()),
        Err(ArchiveError::SymlinkEscape { .. })
    ));
    let long = ManifestEntry::symlink("long", &"a/".repeat(3000));
    let err = Manifest { entries: vec![long] }.validate(&Limits::default()).unwrap_err();
    assert!(matches!(err, ArchiveError::Limit(_)), "{err}");
}
