//! Slipway's gRPC protocol (`proto/slipway.proto`, compiled without a system `protoc`) and the
//! conversions between its messages and `slipway-common`'s domain types.

#![forbid(unsafe_code)]

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("slipway.v1");
}

/// Encoding and decoding messages outside a call (a manifest kept in an artifact store).
pub use prost::Message;
use slipway_common::archive::{EntryKind, Manifest, ManifestEntry};

/// Largest message either side accepts (a manifest of many files travels in one message).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;
/// Archive bytes per `StageRequest` chunk: with two chunks queued per host, the controller holds
/// well under a MiB of artifact per host, whatever the artifact size.
pub const CHUNK_BYTES: usize = 256 << 10;

/// A message that does not convert into a domain type.
#[derive(Debug, thiserror::Error)]
#[error("invalid {field}: {why}")]
pub struct ConvertError {
    pub field: &'static str,
    pub why: String,
}

impl From<EntryKind> for pb::EntryKind {
    fn from(kind: EntryKind) -> Self {
        match kind {
            EntryKind::File => pb::EntryKind::File,
            EntryKind::Dir => pb::EntryKind::Dir,
            EntryKind::Symlink => pb::EntryKind::Symlink,
        }
    }
}

impl From<&ManifestEntry> for pb::ManifestEntry {
    fn from(e: &ManifestEntry) -> Self {
        pb::ManifestEntry {
            path: e.path.clone(),
            kind: pb::EntryKind::from(e.kind) as i32,
            mode: e.mode,
            size: e.size,
            sha256: hex_to_bytes(&e.sha256),
            link_target: e.link_target.clone(),
        }
    }
}

impl From<&Manifest> for pb::Manifest {
    fn from(m: &Manifest) -> Self {
        pb::Manifest { entries: m.entries.iter().map(pb::ManifestEntry::from).collect() }
    }
}

impl TryFrom<pb::ManifestEntry> for ManifestEntry {
    type Error = ConvertError;
    fn try_from(e: pb::ManifestEntry) -> Result<Self, ConvertError> {
        let kind = match pb::EntryKind::try_from(e.kind) {
            Ok(pb::EntryKind::File) => EntryKind::File,
            Ok(pb::EntryKind::Dir) => EntryKind::Dir,
            Ok(pb::EntryKind::Symlink) => EntryKind::Symlink,
            _ => {
                return Err(ConvertError { field: "manifest entry kind", why: format!("{} for '{}'", e.kind, e.path) });
            }
        };
        if kind == EntryKind::File && e.sha256.len() != 32 {
            return Err(ConvertError {
                field: "manifest sha256",
                why: format!("'{}' has {} bytes", e.path, e.sha256.len()),
            });
        }
        Ok(ManifestEntry {
            path: e.path,
            kind,
            mode: e.mode,
            size: e.size,
            sha256: if kind == EntryKind::File { bytes_to_hex(&e.sha256) } else { String::new() },
            link_target: e.link_target,
        })
    }
}

impl TryFrom<pb::Manifest> for Manifest {
    type Error = ConvertError;
    fn try_from(m: pb::Manifest) -> Result<Self, ConvertError> {
        Ok(Manifest { entries: m.entries.into_iter().map(ManifestEntry::try_from).collect::<Result<_, _>>()? })
    }
}

impl From<&slipway_common::manifest::ManifestDiff> for pb::ManifestDiff {
    fn from(d: &slipway_common::manifest::ManifestDiff) -> Self {
        pb::ManifestDiff { upsert: d.upsert.iter().map(pb::ManifestEntry::from).collect(), removed: d.removed.clone() }
    }
}

impl TryFrom<pb::ManifestDiff> for slipway_common::manifest::ManifestDiff {
    type Error = ConvertError;
    fn try_from(d: pb::ManifestDiff) -> Result<Self, ConvertError> {
        let upsert = d.upsert.into_iter().map(ManifestEntry::try_from).collect::<Result<_, _>>()?;
        Ok(slipway_common::manifest::ManifestDiff { upsert, removed: d.removed })
    }
}

/// Lowercase hex of bytes (digests travel as bytes, live as hex).
pub fn bytes_to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Bytes of a hex string; empty for anything that is not hex.
pub fn hex_to_bytes(text: &str) -> Vec<u8> {
    hex::decode(text).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips() {
        let m = Manifest {
            entries: vec![
                ManifestEntry {
                    path: "a".into(),
                    kind: EntryKind::File,
                    mode: 0o644,
                    size: 3,
                    sha256: "ab".repeat(32),
                    link_target: String::new(),
                },
                ManifestEntry {
                    path: "l".into(),
                    kind: EntryKind::Symlink,
                    mode: 0o777,
                    size: 0,
                    sha256: String::new(),
                    link_target: "a".into(),
                },
            ],
        };
        assert_eq!(Manifest::try_from(pb::Manifest::from(&m)).unwrap(), m);
        let mut bad = pb::Manifest::from(&m);
        bad.entries[0].kind = 42;
        assert!(Manifest::try_from(bad).is_err());
    }
}
