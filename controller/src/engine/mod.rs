//! The deploy engine, one for the command line and the coming server: deploy, rollback and
//! check. Split by job: `scope` (what an operation targets), `package` (what ships, to whom),
//! `transfer` (sending and staging one host), `host_ops` (activate, health, relink as named
//! functions), `fanout` (one fan-out for many hosts), `planner` (pure: what to do next),
//! `executor` (carries the planner's actions out), `deploy` and `rollback` (the operations),
//! `lock` (one at a time per project+env), `select` (pure: hosts and rollback targets),
//! `client` (the mTLS channel to an agent), `check` (Walle's 检测).

pub mod check;
pub mod client;
pub mod deploy;
mod executor;
pub mod fanout;
pub mod host_ops;
pub mod lock;
pub mod package;
pub mod planner;
pub mod rollback;
pub mod scope;
pub mod select;
pub mod transfer;

pub use deploy::{DeployArgs, deploy};
pub use rollback::{RollbackArgs, rollback};
pub use scope::{Scope, load_scope, pb_target};
