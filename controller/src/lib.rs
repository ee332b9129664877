//! `slipctl`, the Slipway controller: git, packaging, rollout and state. The binary is a thin
//! `main`; everything here is a library so tests and the quickstart call the same code.

#![forbid(unsafe_code)]

pub mod artifact;
pub mod attributes;
pub mod build;
pub mod check;
pub mod cli;
pub mod client;
pub mod deploy;
pub mod error;
pub mod exclude;
pub mod git;
pub mod home;
pub mod output;
pub mod plan;
pub mod quickstart;
pub mod rollout;
pub mod store;
pub mod tree;

pub use cli::{Cli, run};
pub use error::CtlError;
