//! The deploy engine, one for the command line and the coming server: deploy, rollback and
//! check. Split by job: `scope` (what an operation targets), `package` (what ships, to whom),
//! `transfer` (sending and staging one host), `host_ops` (activate, health, abort, roll back as
//! named functions), `host_error` (why a host failed, typed), `fanout` (one fan-out for many hosts), `planner` (pure: what to do next),
//! `executor` (carries the planner's actions out), `deploy` and `rollback` (the operations),
//! `lock` (one at a time per project+env), `origin` (builds shipped on: promotion, pushed
//! artifacts, the `promote_from` gate), `policy` (windows and freezes), `select` (pure: hosts and rollback targets),
//! `client` (the mTLS channel to an agent), `check` (Walle's 检测).

pub mod check;
pub mod client;
pub mod deploy;
pub mod drain;
pub mod events;
mod executor;
pub mod fanout;
pub mod host_error;
pub mod host_ops;
pub mod journal;
pub mod lock;
pub mod maintenance;
pub mod origin;
pub mod package;
pub mod planner;
pub mod policy;
pub mod rollback;
pub mod scope;
pub mod select;
pub mod store;
pub mod transfer;

pub use deploy::{DeployArgs, Retry, retry_of};
pub use events::{Canceller, Emitter, Event, HostEvent, Running};
pub use host_error::HostError;
pub use origin::Origin;
pub use rollback::RollbackArgs;
pub use scope::{Scope, load_scope, pb_target};

use crate::state::home::Home;
use crate::state::store::DeployRecord;

/// Start a deploy: its events stream as it goes, `Running::canceller` stops it cleanly, and
/// `Running::finish` returns the record (the same one history keeps).
pub fn start_deploy(home: Home, args: DeployArgs) -> Running<DeployRecord> {
    start_deploy_then(home, args, journal::Then::default())
}

/// [`start_deploy`], with `then` told of its number and how it ended, in step with its journal.
pub fn start_deploy_then(home: Home, mut args: DeployArgs, then: journal::Then) -> Running<DeployRecord> {
    journal::start(home.clone(), then, move |events, cancel| async move {
        args.cancel = Some(cancel);
        deploy::deploy(&home, args, &events).await
    })
}

/// Start a check of a project env (Walle's 检测): every host reachable, certificates, users,
/// paths, disk, the ref.
/// Start a check (Walle's 检测) of `git_ref` (the env's default_ref when `None`) and every host.
pub fn start_check(
    home: Home,
    project: String,
    env: String,
    git_ref: Option<String>,
    timeouts: client::Timeouts,
) -> Running<Vec<check::CheckRow>> {
    Running::start(move |_events, _cancel| async move {
        check::run(&home, &project, &env, git_ref.as_deref(), timeouts).await
    })
}

/// Start a rollback (relink to each host's previous release, or to `--to`).
pub fn start_rollback(home: Home, args: RollbackArgs) -> Running<DeployRecord> {
    start_rollback_then(home, args, journal::Then::default())
}

/// [`start_rollback`], with `then` told of its number and how it ended, in step with its journal.
pub fn start_rollback_then(home: Home, args: RollbackArgs, then: journal::Then) -> Running<DeployRecord> {
    journal::start(
        home.clone(),
        then,
        move |events, _cancel| async move { rollback::rollback(&home, args, &events).await },
    )
}
