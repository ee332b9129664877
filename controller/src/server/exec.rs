//! `POST /api/v1/cli`: a `slipctl` command carried out by the server for a `slipctl` that found
//! it (the home's socket) or was sent to it (`--server URL` with a token). The command runs
//! here, on the server's store and engine, as the caller; its output streams back as JSON lines
//! ([`Frame`]s) ending with the exit status. If the asking `slipctl` goes away (Ctrl-C), what it
//! started is cancelled cleanly, as it would have been had it run there. Which command a caller
//! may run is decided in [`authorize`], called by the one authorization middleware.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use clap::Parser;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::cli::args::{AgentCommand, Cli, Command, ProjectCommand};
use crate::cli::args_team::TicketCommand;
use crate::cli::artifacts::{ArtifactCommand, CacheCommand};
use crate::cli::console::{Cancellers, Console, Frame};
use crate::cli::governance::{FreezeCommand, MaintenanceCommand};
use crate::server::App;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult, Body};
use crate::server::listen::Peer;
use crate::state::users::Role;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    /// The arguments after `slipctl`.
    pub argv: Vec<String>,
    /// The asking `slipctl`'s working directory (socket callers: relative paths resolve there).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// What the command reads from stdin (`user add --password-stdin`).
    #[serde(default)]
    pub stdin: Option<String>,
}

pub fn parse(body: &ExecBody) -> ApiResult<Cli> {
    let argv = std::iter::once("slipctl".to_owned()).chain(body.argv.iter().cloned());
    Cli::try_parse_from(argv).map_err(|e| {
        let text = e.render().to_string();
        let first = text.lines().next().unwrap_or("").trim_start_matches("error: ").to_owned();
        ApiError::bad(first, "see `slipctl --help` and `slipctl COMMAND --help`")
    })
}

/// The (project, env) of deploy `id`, if `caller` may see it: one they may not is unknown to them.
fn deploy_pair(app: &App, caller: &Caller, id: u64) -> ApiResult<(String, String)> {
    let d = app.store.deploy(id)?.filter(|d| caller.allows(&d.project, &d.env, Role::Viewer));
    let d = d.ok_or_else(|| super::api::unknown_deploy(id))?;
    Ok((d.project, d.env))
}

/// The (project, env) of ticket `id`, if `caller` may see it.
fn ticket_pair(app: &App, caller: &Caller, id: u64) -> ApiResult<(String, String)> {
    let t = app.store.ticket(id)?.filter(|t| caller.allows(&t.project, &t.env, Role::Viewer));
    let t = t.ok_or_else(|| super::tickets::unknown(id))?;
    Ok((t.project, t.env))
}

fn admin(caller: &Caller) -> ApiResult<()> {
    if caller.admin {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            format!("{} is not an admin", caller.name),
            "users, agents, projects and tokens are for admins",
        ))
    }
}

/// Whether `caller` may run `cli` here (the command's own checks follow when it runs).
pub fn authorize(app: &App, caller: &Caller, cli: &Cli) -> ApiResult<()> {
    let on = |(p, e): (String, String), role: Role| caller.require(&p, &e, role).map_err(ApiError::from);
    match &cli.command {
        Command::Init | Command::Quickstart { .. } | Command::Serve(_) | Command::State(_) => Err(ApiError::bad(
            "this command runs by itself, not through a server",
            "run it on the server's host without the server's home, or stop the server first",
        )),
        Command::Agent(_)
        | Command::Ca(_)
        | Command::Unlock { .. }
        | Command::User(_)
        | Command::Token(_)
        | Command::Webhook(_) => admin(caller),
        Command::Project(ProjectCommand::List) => Ok(()),
        Command::Artifact(ArtifactCommand::Push { .. }) => Err(ApiError::bad(
            "a build is pushed as bytes, not as a path on the server",
            "`slipctl artifact push` uploads it (POST /api/v1/projects/{p}/artifacts)",
        )),
        Command::Cache(CacheCommand::Clear { project }) => caller.require_maintainer(project).map_err(ApiError::from),
        Command::Artifact(ArtifactCommand::List { project }) => {
            caller.require_deployer_in(project).map_err(ApiError::from)
        }
        Command::Project(
            ProjectCommand::History { name } | ProjectCommand::Diff { name, .. } | ProjectCommand::Revert { name, .. },
        ) => caller.require_maintainer(name).map_err(ApiError::from),
        Command::Project(_) => admin(caller),
        Command::Deploy { project, env, override_reason, .. } => {
            on((project.clone(), env.clone()), Role::Deployer)?;
            super::auth::direct_deploy(app, caller, project, env, false)?;
            super::governance::may_override(caller, override_reason.as_deref())
        }
        Command::Freeze(FreezeCommand::List { .. }) => Ok(()),
        Command::Maintenance(
            MaintenanceCommand::On { project, env, .. } | MaintenanceCommand::Off { project, env },
        ) => on((project.clone(), env.clone()), Role::Deployer),
        Command::Freeze(FreezeCommand::Create { project, .. }) => {
            caller.require_maintainer(project).map_err(ApiError::from)
        }
        Command::Freeze(FreezeCommand::Rm { id }) => {
            let project = app.store.freeze(*id)?.map(|f| f.project).unwrap_or_default();
            caller.require_maintainer(&project).map_err(ApiError::from)
        }
        Command::Rollback { project, env, .. } => {
            on((project.clone(), env.clone()), Role::Deployer)?;
            super::auth::direct_deploy(app, caller, project, env, true)
        }
        Command::Promote { deploy_id } | Command::Abort { deploy_id } => {
            on(deploy_pair(app, caller, *deploy_id)?, Role::Deployer)
        }
        Command::Releases { project, env } | Command::Check { project, env, .. } => {
            on((project.clone(), env.clone()), Role::Viewer)
        }
        Command::History { project: Some(p), env: Some(e), .. } => on((p.clone(), e.clone()), Role::Viewer),
        Command::History { .. } => admin(caller),
        Command::Show { deploy_id } => on(deploy_pair(app, caller, *deploy_id)?, Role::Viewer),
        Command::Ticket(t) => match t {
            TicketCommand::Create { project, env, .. } => on((project.clone(), env.clone()), Role::Deployer),
            TicketCommand::List { .. } => Ok(()),
            TicketCommand::Show { id } => on(ticket_pair(app, caller, *id)?, Role::Viewer),
            TicketCommand::Approve { id, .. } | TicketCommand::Reject { id, .. } => {
                on(ticket_pair(app, caller, *id)?, Role::Approver)
            }
            TicketCommand::Deploy { id, override_reason } => {
                on(ticket_pair(app, caller, *id)?, Role::Deployer)?;
                super::governance::may_override(caller, override_reason.as_deref())
            }
            TicketCommand::Cancel { id }
            | TicketCommand::Rollback { id }
            | TicketCommand::Schedule { id, .. }
            | TicketCommand::Unschedule { id } => on(ticket_pair(app, caller, *id)?, Role::Deployer),
        },
    }
}

/// Paths in the command are the asking `slipctl`'s: resolve them against its directory (a
/// socket caller shares this filesystem; a remote one does not, and is refused such commands).
fn localise(cli: &mut Cli, peer: &Peer, cwd: Option<&PathBuf>) -> ApiResult<()> {
    let path = match &mut cli.command {
        Command::Project(ProjectCommand::Apply { file }) => file,
        Command::Agent(AgentCommand::Add { out, .. }) => out,
        _ => return Ok(()),
    };
    match (peer, cwd) {
        (Peer::Socket { .. }, Some(cwd)) => {
            if path.is_relative() {
                *path = cwd.join(&*path);
            }
            Ok(())
        }
        (Peer::Socket { .. }, None) => Ok(()),
        _ => Err(ApiError::bad(
            "this command reads or writes files on the server's host",
            "run it there (it goes through the server's socket), or use the HTTP API",
        )),
    }
}

pub async fn run(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Extension(peer): Extension<Peer>,
    Body(body): Body<ExecBody>,
) -> ApiResult<Response> {
    let mut cli = parse(&body)?;
    localise(&mut cli, &peer, body.cwd.as_ref())?;
    let (tx, rx) = mpsc::unbounded_channel::<Frame>();
    let cancel: Cancellers = Default::default();
    let served = crate::cli::Served { core: app.core.clone(), caller, stdin: body.stdin };
    let (sink, console) = (tx.clone(), Console::remote(tx.clone(), cancel.clone()));
    let task = tokio::spawn(async move {
        let code = crate::cli::run_served(cli, served, console).await;
        let _ = sink.send(Frame::Exit(code));
    });
    app.runs.keep(task, Some(cancel.clone()));
    // The asking slipctl went away before the end: stop what it started, cleanly.
    tokio::spawn(async move {
        tx.closed().await;
        for c in cancel.lock().expect("cancellers").iter() {
            c.cancel();
        }
    });
    let stream = UntilExit { frames: rx, ended: false }.map(|frame| {
        let mut line = serde_json::to_vec(&frame).expect("frames serialise");
        line.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(line))
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], axum::body::Body::from_stream(stream)).into_response())
}

/// A command's frames up to and including its exit status, then the end of the answer: the
/// channel itself stays open as long as anything holds a sender (the watcher for the asking
/// `slipctl` going away does), and a client that reads to the end must not wait for that.
struct UntilExit {
    frames: mpsc::UnboundedReceiver<Frame>,
    ended: bool,
}

impl tokio_stream::Stream for UntilExit {
    type Item = Frame;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Frame>> {
        if self.ended {
            return std::task::Poll::Ready(None);
        }
        let polled = self.frames.poll_recv(cx);
        if let std::task::Poll::Ready(Some(Frame::Exit(_))) = &polled {
            self.ended = true;
        }
        polled
    }
}
