//! Slipway's shared core: domain types, config parsing and validation, PKI and TLS, the archive
//! format (packer and the hostile-input extractor) and telemetry. Used by `slipd` and `slipctl`.

#![forbid(unsafe_code)]

pub mod archive;
pub mod config;
pub mod error;
pub mod files;
pub mod manifest;
pub mod names;
pub mod pack;
pub mod pki;
pub mod process;
pub mod redact;
pub mod s3;
pub mod tar_guard;
pub mod telemetry;
pub mod time;
pub mod tls;

pub use error::{Error, Result};
pub use names::ReleaseId;

/// The version every binary reports (agent `Info`, `slipctl --version`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
