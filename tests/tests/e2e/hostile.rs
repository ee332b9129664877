//! Hostile archives sent through the real RPC: each is rejected whole, nothing is written
//! outside staging, and staging is removed.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use slipway_common::archive::Manifest;
use slipway_common::archive::testing::{RawEntry, compress, manifest_for, raw_tar, sha256_hex};
use slipway_controller::client::{self, AgentClient, Timeouts};
use slipway_proto::pb;
use slipway_proto::pb::stage_request::Kind;
use slipway_tests::Fleet;

const RELEASE: &str = "20300101-000000-abcdef0";

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

struct Uploader {
    client: AgentClient,
    target: pb::Target,
}

/// Where the artifact digest travels: in the header, or in a trailer after the chunks (or nowhere).
enum Digest<'a> {
    Header(&'a str),
    Trailer(Option<(&'a str, u64)>),
    Both(&'a str),
}

impl Uploader {
    /// Stage `compressed` (sending only `send` bytes of it) with `manifest` and digest `sha`.
    async fn stage(
        &mut self,
        release: &str,
        manifest: &Manifest,
        compressed: &[u8],
        send: usize,
        sha: &str,
    ) -> Result<pb::Staged, String> {
        self.stage_with(release, manifest, compressed, send, Digest::Header(sha)).await
    }

    async fn stage_with(
        &mut self,
        release: &str,
        manifest: &Manifest,
        compressed: &[u8],
        send: usize,
        digest: Digest<'_>,
    ) -> Result<pb::Staged, String> {
        let (sha, size) = match digest {
            Digest::Header(sha) | Digest::Both(sha) => (slipway_proto::hex_to_bytes(sha), compressed.len() as u64),
            Digest::Trailer(_) => (Vec::new(), 0),
        };
        let header = pb::StageHeader {
            target: Some(self.target.clone()),
            deploy_id: 1,
            release_id: release.into(),
            commit: "abcdef0".repeat(5) + "abcde",
            git_ref: "hostile".into(),
            generation: 1,
            manifest: Some(pb::Manifest::from(manifest)),
            artifact_sha256: sha,
            artifact_size: size,
            ..Default::default()
        };
        let mut messages = vec![pb::StageRequest { kind: Some(Kind::Header(header)) }];
        for chunk in compressed[..send].chunks(64 * 1024) {
            messages.push(pb::StageRequest { kind: Some(Kind::Chunk(chunk.to_vec())) });
        }
        let trailer = match digest {
            Digest::Trailer(Some((sha, size))) => Some((sha, size)),
            Digest::Both(sha) => Some((sha, compressed.len() as u64)),
            _ => None,
        };
        if let Some((sha, size)) = trailer {
            let trailer = pb::StageTrailer { artifact_sha256: slipway_proto::hex_to_bytes(sha), artifact_size: size };
            messages.push(pb::StageRequest { kind: Some(Kind::Trailer(trailer)) });
        }
        let mut events = self.client.stage(tokio_stream::iter(messages)).await.map_err(|s| s.to_string())?.into_inner();
        loop {
            match events.message().await {
                Ok(Some(pb::StageEvent { kind: Some(pb::stage_event::Kind::Staged(s)) })) => return Ok(s),
                Ok(Some(_)) => {}
                Ok(None) => return Err("no result".into()),
                Err(s) => return Err(s.message().to_owned()),
            }
        }
    }
}

#[test]
fn hostile_archives_are_rejected_whole_through_the_rpc() {
    let fleet = Fleet::new(1);
    let tls = fleet.controller_tls();
    let hosts = fleet.path().join("hosts");
    let root = &fleet.agents[0].root;
    let target = pb::Target {
        project: "hostile".into(),
        env: "test".into(),
        deploy_to: root.join("hostile").display().to_string(),
        current: root.join("www/hostile").display().to_string(),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let agent = fleet.agent_record(0);
    let client = rt.block_on(client::connect(tls, &agent, Timeouts::default())).unwrap();
    let mut up = Uploader { client, target };

    let ok = RawEntry::file("ok", 0o644, b"fine");
    let only_ok = manifest_for(std::slice::from_ref(&ok));
    let big = RawEntry::file("big", 0o644, &vec![42u8; 2 << 20]);
    let a = RawEntry::file("a", 0o644, b"one");
    let only_a = manifest_for(std::slice::from_ref(&a));
    let cases: Vec<(&str, Vec<RawEntry>, Option<Manifest>, &str)> = vec![
        ("dot-dot path", vec![RawEntry::file("../../../evil", 0o644, b"x")], Some(only_ok.clone()), "'..'"),
        (
            "absolute path",
            vec![RawEntry::file("/tmp/slipway-hostile-evil", 0o644, b"x")],
            Some(only_ok.clone()),
            "absolute",
        ),
        ("symlink outside", vec![RawEntry::symlink("l", "../../../../etc")], None, "outside"),
        (
            "symlink then a file through it",
            vec![RawEntry::dir("d"), RawEntry::symlink("l", "d"), RawEntry::file("l/x", 0o644, b"x")],
            None,
            "parent",
        ),
        (
            "hardlink",
            vec![a.clone(), RawEntry::other("b", tar::EntryType::Link, "a")],
            Some(only_a.clone()),
            "hard link",
        ),
        ("device", vec![RawEntry::other("dev", tar::EntryType::Char, "")], Some(only_ok.clone()), "device"),
        ("fifo", vec![RawEntry::other("p", tar::EntryType::Fifo, "")], Some(only_ok.clone()), "fifo"),
        ("duplicate path", vec![a.clone(), a.clone()], Some(only_a.clone()), "duplicate"),
        (
            "entry not in manifest",
            vec![a.clone(), RawEntry::file("extra", 0o644, b"")],
            Some(only_a.clone()),
            "not in the manifest",
        ),
        ("size mismatch", vec![RawEntry::file("a", 0o644, b"four")], Some(only_a.clone()), "size"),
        ("content digest mismatch", vec![RawEntry::file("a", 0o644, b"two")], Some(only_a.clone()), "sha256"),
    ];
    for (what, entries, manifest, needle) in cases {
        let manifest = manifest.unwrap_or_else(|| manifest_for(&entries));
        let compressed = compress(&raw_tar(&entries));
        let err = rt.block_on(up.stage(RELEASE, &manifest, &compressed, compressed.len(), &sha256_hex(&compressed)));
        let err = err.expect_err(what);
        assert!(err.contains(needle), "{what}: {err}");
        assert_eq!(tree(&hosts), ["web-1", "web-1/hostile", "web-1/hostile/releases"], "{what}: nothing left behind");
    }
    assert!(!Path::new("/tmp/slipway-hostile-evil").exists());

    // The artifact digest must match, and a truncated stream is refused.
    let compressed = compress(&raw_tar(std::slice::from_ref(&big)));
    let manifest = manifest_for(std::slice::from_ref(&big));
    let err = rt.block_on(up.stage(RELEASE, &manifest, &compressed, compressed.len(), &"00".repeat(32))).unwrap_err();
    assert!(err.contains("artifact digest"), "{err}");
    let incompressible: Vec<u8> = (0..(2u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let noisy = RawEntry::file("noise", 0o644, &incompressible);
    let compressed = compress(&raw_tar(std::slice::from_ref(&noisy)));
    let manifest = manifest_for(std::slice::from_ref(&noisy));
    let err = rt
        .block_on(up.stage(RELEASE, &manifest, &compressed, compressed.len() / 2, &sha256_hex(&compressed)))
        .unwrap_err();
    assert!(err.contains("truncated") || err.contains("malformed"), "{err}");
    assert_eq!(tree(&hosts), ["web-1", "web-1/hostile", "web-1/hostile/releases"]);

    // Streamed while packaged: the digest comes in a trailer, which must be there and must match.
    let sha = sha256_hex(&compressed);
    let n = compressed.len();
    let zeros = "00".repeat(32);
    let trailer_cases: Vec<(&str, Digest<'_>, &str)> = vec![
        ("no trailer", Digest::Trailer(None), "without the trailer"),
        ("wrong digest in the trailer", Digest::Trailer(Some((&zeros, n as u64))), "artifact digest"),
        ("wrong size in the trailer", Digest::Trailer(Some((&sha, n as u64 + 1))), "artifact digest"),
        ("a trailer after a header digest", Digest::Both(&sha), "unexpected message"),
    ];
    for (what, digest, needle) in trailer_cases {
        let err = rt.block_on(up.stage_with(RELEASE, &manifest, &compressed, n, digest)).expect_err(what);
        assert!(err.contains(needle), "{what}: {err}");
        assert_eq!(tree(&hosts), ["web-1", "web-1/hostile", "web-1/hostile/releases"], "{what}: nothing left");
    }
    let staged = rt
        .block_on(up.stage_with(
            "20300101-000001-abcdef0",
            &manifest,
            &compressed,
            n,
            Digest::Trailer(Some((&sha, n as u64))),
        ))
        .unwrap();
    assert_eq!(std::fs::read(Path::new(&staged.release_path).join("noise")).unwrap(), incompressible);

    // setuid and world-writable modes are accepted but normalised.
    let entries = [RawEntry::file("suid", 0o4755, b"x"), RawEntry::file("open", 0o777, b"y")];
    let compressed = compress(&raw_tar(&entries));
    let staged = rt
        .block_on(up.stage(RELEASE, &manifest_for(&entries), &compressed, compressed.len(), &sha256_hex(&compressed)))
        .unwrap();
    let release = Path::new(&staged.release_path);
    for f in ["suid", "open"] {
        assert_eq!(std::fs::metadata(release.join(f)).unwrap().permissions().mode() & 0o7777, 0o755, "{f}");
    }
}

/// The agent's peak resident memory so far (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    rss_field_mib(pid, "VmHWM:")
}

fn rss_field_mib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb >> 10
}

/// `tar` bytes, then `filler` (repeated `count` MiB), zstd-compressed as one stream, without
/// holding the inflated bytes in memory.
fn compress_with_filler(tar: &[u8], filler: u8, count: usize) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    encoder.write_all(tar).unwrap();
    let block = vec![filler; 1 << 20];
    for _ in 0..count {
        encoder.write_all(&block).unwrap();
    }
    encoder.finish().unwrap()
}

#[test]
fn resource_bombs_are_refused_with_memory_bounded() {
    let fleet = Fleet::new(1);
    let tls = fleet.controller_tls();
    let root = &fleet.agents[0].root;
    let target = pb::Target {
        project: "bombs".into(),
        env: "test".into(),
        deploy_to: root.join("bombs").display().to_string(),
        current: root.join("www/bombs").display().to_string(),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = rt.block_on(client::connect(tls, &fleet.agent_record(0), Timeouts::default())).unwrap();
    let mut up = Uploader { client, target };
    let ok = RawEntry::file("ok", 0o644, b"fine");
    let manifest = manifest_for(std::slice::from_ref(&ok));
    let pid = fleet.agents[0].pid();
    let idle = rss_field_mib(pid, "VmRSS:");

    // A GNU long-name header declaring 2 GiB, followed by 512 MiB of name (~ a few KB of zstd).
    let mut long = tar::Header::new_gnu();
    long.set_entry_type(tar::EntryType::GNULongName);
    long.set_size(2 << 30);
    long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    long.set_cksum();
    let bomb = compress_with_filler(long.as_bytes(), b'a', 512);
    assert!(bomb.len() < 3 << 20, "the upload is small: {} bytes", bomb.len());
    let err = rt.block_on(up.stage(RELEASE, &manifest, &bomb, bomb.len(), &sha256_hex(&bomb))).unwrap_err();
    assert!(err.contains("extension header") && err.len() < 1000, "{err}");

    // A pax header of the same kind.
    let mut pax = tar::Header::new_ustar();
    pax.set_entry_type(tar::EntryType::XHeader);
    pax.set_size(2 << 30);
    pax.set_path("pax").unwrap();
    pax.set_cksum();
    let bomb = compress_with_filler(pax.as_bytes(), b'a', 512);
    let err = rt.block_on(up.stage(RELEASE, &manifest, &bomb, bomb.len(), &sha256_hex(&bomb))).unwrap_err();
    assert!(err.contains("extension header"), "{err}");

    // After the end-of-archive marker: garbage is refused, and so is endless padding.
    let honest = raw_tar(std::slice::from_ref(&ok));
    for (what, filler, mib, needle) in
        [("garbage", b'x', 1, "after the end-of-archive"), ("inflating zeros", 0u8, 256, "padding")]
    {
        let compressed = compress_with_filler(&honest, filler, mib);
        let started = std::time::Instant::now();
        let err = rt
            .block_on(up.stage(RELEASE, &manifest, &compressed, compressed.len(), &sha256_hex(&compressed)))
            .expect_err(what);
        assert!(err.contains(needle), "{what}: {err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{what} took {:?}", started.elapsed());
    }
    let releases = root.join("bombs/releases");
    assert!(std::fs::read_dir(&releases).unwrap().next().is_none(), "nothing left behind");
    let peak = peak_rss_mib(pid);
    assert!(peak < 256, "the agent peaked at {peak} MiB");
    let after = rss_field_mib(pid, "VmRSS:");
    eprintln!("agent RSS: idle {idle} MiB, peak {peak} MiB, after the bombs {after} MiB");
    assert!(after <= idle + 32, "the agent kept {after} MiB after the bombs (idle {idle} MiB)");
    // And the honest archive still stages.
    let compressed = compress(&honest);
    rt.block_on(up.stage(RELEASE, &manifest, &compressed, compressed.len(), &sha256_hex(&compressed))).unwrap();
}
