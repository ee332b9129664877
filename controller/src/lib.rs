//! `slipctl`, the Slipway controller: git, packaging, rollout and state. The binary is a thin
//! `main`; everything here is a library so tests, the quickstart and (later) the server drive
//! the same engine.
//!
//! * [`source`]: where a release's tree comes from — the git mirror, tree walks, excludes and
//!   `.gitattributes`, builds, and the packaged artifacts.
//! * [`engine`]: deploy, rollback and check — scope, packaging per host, transfer, host
//!   operations, the fan-out, the pure rollout planner and its executor — reporting typed
//!   [`engine::events::Event`]s.
//! * [`state`]: the controller home and its sled store.
//! * [`cli`]: the command line, one consumer of the engine's events (`output`), and the
//!   quickstart.

#![forbid(unsafe_code)]

pub mod cli;
pub mod engine;
pub mod error;
pub mod http_client;
mod layering;
pub mod ops;
pub mod server;
pub mod source;
pub mod state;
pub mod units;
pub mod web;

pub use cli::{Cli, run};
pub use engine::client;
pub use error::CtlError;
pub use state::store;
