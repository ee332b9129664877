//! The `slipctl` command line (DESIGN.md "Command line") and the commands that are not a
//! rollout: init, agents, projects, releases, history, show.

pub mod agents;
pub mod args;
pub mod args_agents;
pub mod args_team;
pub mod artifacts;
pub mod console;
pub mod governance;
pub mod output;
pub mod projects;
pub mod quickstart;
pub mod remote;
pub mod state;
pub mod team;

pub use args::{AgentCommand, Cli, Command, ProjectCommand};

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use slipway_common::time::format_utc;

use crate::cli::output::{OutputFormat, Reporter, bytes, millis, table};
use crate::engine::client::Timeouts;
use crate::engine::{self, DeployArgs, RollbackArgs};
use crate::error::{CtlError, Result};
use crate::ops::Core;
use crate::ops::caller::Caller;
use crate::ops::views::deploy_json;
use crate::state::home::Home;
use crate::state::store::{DeployRecord, DeployStatus, Store};

/// What a command is run with, handed to it explicitly: how it prints (`--output`), where its
/// output goes, and — when `slipctl serve` carries it out for a `slipctl` elsewhere — the
/// server's operations and the caller it acts as.
pub struct Cx {
    pub format: OutputFormat,
    pub console: console::Console,
    pub served: Option<Served>,
}

/// The server side of a command that the server carries out ([`crate::server::exec`]).
pub struct Served {
    pub core: Arc<Core>,
    pub caller: Caller,
    /// What the asking `slipctl` read from its stdin (`user add --password-stdin`).
    pub stdin: Option<String>,
}

impl Cx {
    /// A command run here, printing on this terminal.
    pub fn terminal(format: OutputFormat) -> Cx {
        Cx { format, console: console::Console::default(), served: None }
    }

    pub fn is_json(&self) -> bool {
        self.format.is_json()
    }

    /// The result document: pretty for `json`, one line for `jsonl`.
    pub fn print_doc(&self, doc: &serde_json::Value) {
        self.out(self.format.doc_text(doc));
    }

    pub fn out(&self, line: impl std::fmt::Display) {
        self.console.out(line)
    }

    pub fn err(&self, line: impl std::fmt::Display) {
        self.console.err(line)
    }

    /// Who an operation is recorded as: the server's caller (`dev`, `token:ci`, the socket's
    /// declared user) when the server carries this command out, else `None` (the OS user here).
    pub(crate) fn served_caller(&self) -> Option<String> {
        self.served.as_ref().map(|s| s.caller.name.clone())
    }

    /// The state: the server's open store when it carries the command out, else the home's.
    pub(crate) fn store(&self, home: &Home) -> Result<crate::state::store::Store> {
        match &self.served {
            Some(s) => Ok(s.core.store.clone()),
            None => crate::state::store::Store::open(&home.state()),
        }
    }

    /// Who the command acts as, for the audit trail: the server's caller, or the operator here.
    pub(crate) fn actor(&self) -> crate::ops::audit::Actor {
        match &self.served {
            Some(s) => crate::ops::audit::Actor::of(&s.caller),
            None => crate::ops::audit::Actor::local(),
        }
    }
}

/// Run a command on this terminal; the returned code is the process exit status.
pub async fn run(cli: Cli) -> Result<u8> {
    let home = Home::resolve(cli.home.clone())?;
    // While a server runs for this home (or one is named), the command is carried out there.
    if let Some(target) = remote::target(&cli, &home)? {
        // A build to push goes up as bytes: the server never reads this host's paths.
        if let Command::Artifact(cmd @ artifacts::ArtifactCommand::Push { .. }) = cli.command {
            return remote::push_artifact(target, cmd, cli.output.is_json()).await;
        }
        return remote::run(target).await;
    }
    run_with(home, cli.command, &Cx::terminal(cli.output)).await
}

/// Carry out a command for a `slipctl` elsewhere (the server's `POST /api/v1/cli`), as
/// `served`'s caller, its output sent through `console`; the exit status.
pub async fn run_served(cli: Cli, served: Served, console: console::Console) -> u8 {
    let cx = Cx { format: cli.output, console, served: Some(served) };
    let home = cx.served.as_ref().expect("served").core.home.clone();
    match run_with(home, cli.command, &cx).await {
        Ok(code) => code,
        Err(e) => report_error(&cx, &e),
    }
}

async fn run_with(home: Home, command: Command, out: &Cx) -> Result<u8> {
    let timeouts = Timeouts::default();
    match command {
        Command::Init => {
            let created = home.init()?;
            print(out, json!({"home": home.root, "ca": home.pki().join("ca.pem"), "created": created}), || {
                if created {
                    format!(
                        "initialised {}: CA and controller identity in {}\nnext: slipctl agent add NAME --addr HOST:PORT --out DIR",
                        home.root.display(),
                        home.pki().display()
                    )
                } else {
                    format!("{} is already initialised (its CA is kept); nothing changed", home.root.display())
                }
            });
            Ok(0)
        }
        Command::Agent(cmd) => agents::agent_command(&home, out, cmd).await,
        Command::Ca(cmd) => agents::ca_command(&home, out, cmd),
        Command::State(cmd) => state::state_command(&home, out, cmd),
        Command::Project(cmd) => projects::project_command(&home, out, cmd),
        Command::Artifact(cmd) => artifacts::artifact_command(&home, out, cmd).await,
        Command::Cache(cmd) => artifacts::cache_command(&home, out, cmd),
        Command::Freeze(cmd) => governance::freeze_command(&home, out, cmd),
        Command::Maintenance(cmd) => governance::maintenance_command(&home, out, cmd).await,
        Command::Deploy {
            project,
            env,
            git_ref,
            hosts,
            dry_run,
            full,
            retry_failed,
            from,
            from_deploy,
            artifact,
            override_reason,
            skip_migrate,
        } => {
            let mut reporter = Reporter::new(out);
            let retry = match retry_failed {
                None => None,
                Some(n) => match engine::retry_of(&home, &project, &env, n)? {
                    Some(retry) => Some(retry),
                    None => {
                        print(out, json!({"retried": n, "hosts": []}), || {
                            format!("nothing to retry: every host of deploy #{n} took its release")
                        });
                        return Ok(0);
                    }
                },
            };
            let hosts = retry.as_ref().map(|r| r.hosts.clone()).or(hosts);
            let args = DeployArgs {
                project,
                env,
                git_ref,
                hosts,
                dry_run,
                full,
                cancel: None,
                retry,
                resume: None,
                takeover: None,
                user: out.served_caller(),
                commit: None,
                origin: match (from, from_deploy, artifact) {
                    (Some(env), _, _) => Some(engine::Origin::Env(env)),
                    (_, Some(n), _) => Some(engine::Origin::Deploy(n)),
                    (_, _, Some(name)) => Some(engine::Origin::Artifact(name)),
                    _ => None,
                },
                override_reason,
                skip_migrate,
            };
            let running = engine::start_deploy(home.clone(), args);
            cancel_on_signals(out, running.canceller());
            let record = finish_served(out, running, &mut reporter).await?;
            Ok(finish_operation(out, &record, dry_run))
        }
        Command::Promote { deploy_id } => decide(&home, out, deploy_id, crate::state::store::Decision::Promote).await,
        Command::Abort { deploy_id } => decide(&home, out, deploy_id, crate::state::store::Decision::Abort).await,
        Command::Rollback { project, env, to, hosts } => {
            let mut reporter = Reporter::new(out);
            let to = to.as_deref().map(crate::engine::select::RollbackTo::parse).transpose()?;
            let running = engine::start_rollback(
                home.clone(),
                RollbackArgs { project, env, to, hosts, user: out.served_caller() },
            );
            let record = finish_served(out, running, &mut reporter).await?;
            Ok(finish_operation(out, &record, false))
        }
        Command::Releases { project, env } => releases(&home, out, &project, &env, timeouts).await,
        Command::Unlock { project, env } => {
            let store = Store::open(&home.state())?;
            if let Some(lock) = store.lock(&project, &env)?
                && store.held_by_paused(&lock)?
            {
                let id = lock.deploy_id;
                return Err(CtlError::bad(format!("{project}/{env} is held by deploy #{id}, paused after its canary"))
                    .fix(format!("`slipctl promote {id}` or `slipctl abort {id}` ends it (and frees the lock)")));
            }
            let removed = store.remove_lock(&project, &env)?;
            print(out, json!({"project": project, "env": env, "removed": removed}), || match &removed {
                Some(lock) => format!("unlocked {project}/{env} (was held by {})", lock.describe()),
                None => format!("{project}/{env} was not locked"),
            });
            Ok(0)
        }
        Command::Check { project, env, git_ref } => {
            let rows = engine::start_check(home.clone(), project.clone(), env.clone(), git_ref, timeouts)
                .finish(|_| {})
                .await?;
            let failed = rows.iter().filter(|r| !r.ok).count();
            let table_rows: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    let status = if r.ok { "ok".to_owned() } else { "FAIL".to_owned() };
                    let detail =
                        if r.fix.is_empty() { r.detail.clone() } else { format!("{}; fix: {}", r.detail, r.fix) };
                    vec![r.host.clone(), r.check.clone(), status, detail]
                })
                .collect();
            print(out, json!({"ok": failed == 0, "checks": rows}), || {
                let mut text = table(&["HOST", "CHECK", "STATUS", "DETAIL"], &table_rows);
                text.push_str(&if failed == 0 {
                    "all checks passed".to_owned()
                } else {
                    format!("{failed} check(s) failed")
                });
                text
            });
            Ok(if failed == 0 { 0 } else { 1 })
        }
        Command::History { project, env, limit } => {
            let store = Store::open(&home.state())?;
            let deploys = store.deploys(project.as_deref(), env.as_deref(), limit)?;
            drop(store);
            let rows: Vec<Vec<String>> = deploys.iter().map(history_row).collect();
            let docs: Vec<_> = deploys.iter().map(deploy_json).collect();
            print(out, json!(docs), || {
                if rows.is_empty() {
                    "no deploys yet".to_owned()
                } else {
                    table(
                        &[
                            "ID", "KIND", "PROJECT", "ENV", "REF", "COMMIT", "RELEASE", "STATUS", "STARTED", "TOOK",
                            "HOSTS",
                        ],
                        &rows,
                    )
                    .trim_end()
                    .to_owned()
                }
            });
            Ok(0)
        }
        Command::Show { deploy_id } => {
            let store = Store::open(&home.state())?;
            let record = store.deploy(deploy_id)?.ok_or_else(|| {
                CtlError::not_found(format!("unknown deploy #{deploy_id}")).fix("`slipctl history` lists them")
            })?;
            let events: Vec<serde_json::Value> = store.events(deploy_id, 0)?.into_iter().map(|(_, e)| e).collect();
            drop(store);
            let mut doc = deploy_json(&record);
            doc["events"] = json!(events);
            print(out, doc, || show_text(&record));
            Ok(0)
        }
        Command::Quickstart { dir, serve, listen } => {
            crate::cli::quickstart::run(dir, out.format, serve.then_some(listen)).await
        }
        Command::Serve(args) => crate::server::serve(home, args).await,
        Command::User(cmd) => team::user_command(&home, out, cmd),
        Command::Token(cmd) => team::token_command(&home, out, cmd),
        Command::Webhook(cmd) => team::webhook_command(&home, out, cmd),
        Command::Ticket(cmd) => team::ticket_command(out, cmd).await,
    }
}

/// The first Ctrl-C or SIGTERM cancels the operation cleanly; a second one exits at once. For a
/// `slipctl` elsewhere, its going away cancels instead.
fn cancel_on_signals(out: &Cx, canceller: engine::Canceller) {
    use tokio::signal::unix::{SignalKind, signal};
    if out.console.register(&canceller) {
        return;
    }
    let console = out.console.clone();
    tokio::spawn(async move {
        let Ok(mut term) = signal(SignalKind::terminate()) else { return };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        console.err("cancelling: removing staged releases and rolling back activated hosts (again to quit at once)");
        canceller.cancel();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        std::process::exit(130);
    });
}

/// Say what went wrong (one JSON document too, with `--output json`); the exit status.
pub fn report_error(out: &Cx, e: &CtlError) -> u8 {
    if out.is_json() {
        let mut doc = e.to_json();
        if out.format == OutputFormat::Jsonl {
            doc["event"] = json!("error");
        }
        out.print_doc(&doc);
    }
    out.err(format!("error: {e}"));
    e.exit_code()
}

pub(crate) fn print(out: &Cx, doc: serde_json::Value, text: impl FnOnce() -> String) {
    if out.is_json() { out.print_doc(&doc) } else { out.out(text()) }
}

fn took(d: &DeployRecord) -> String {
    if d.finished_at.is_some() { millis(d.duration_ms) } else { "-".into() }
}

fn history_row(d: &DeployRecord) -> Vec<String> {
    let ok = d.hosts.iter().filter(|h| h.ok).count();
    vec![
        d.id.to_string(),
        format!("{:?}", d.kind).to_lowercase(),
        d.project.clone(),
        d.env.clone(),
        if d.git_ref.is_empty() { "-".into() } else { d.git_ref.clone() },
        d.commit.get(..7).unwrap_or("-").to_owned(),
        d.release.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string),
        d.effective_status().word().to_owned(),
        format_utc(d.started_at),
        took(d),
        format!("{ok}/{}", d.hosts.len()),
    ]
}

fn show_text(d: &DeployRecord) -> String {
    let mut s = format!(
        "{} #{}  {}/{}  {}\n",
        format!("{:?}", d.kind).to_lowercase(),
        d.id,
        d.project,
        d.env,
        d.effective_status().word()
    );
    if !d.commit.is_empty() {
        s.push_str(&format!("  ref {}  commit {}\n", d.git_ref, d.commit));
    }
    s.push_str(&format!("  release {}\n", d.release.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string)));
    s.push_str(&format!("  by {} (pid {})  started {}  took {}\n", d.user, d.pid, format_utc(d.started_at), took(d)));
    if let Some(a) = &d.artifact {
        s.push_str(&format!(
            "  artifact {} entries, {} -> {} tar.zst, sha256 {}{}\n",
            a.entries,
            bytes(a.file_bytes),
            bytes(a.compressed_bytes),
            a.sha256,
            if a.cached { " (cached)".to_owned() } else { format!(" (packaged in {})", millis(a.package_ms)) }
        ));
    }
    if let Some(e) = &d.error {
        s.push_str(&format!("  error: {e}\n"));
    }
    if let Some(b) = &d.built {
        let promoted = d.promoted_from.map(|n| format!(", promoted from deploy #{n}")).unwrap_or_default();
        s.push_str(&format!("  build sha256 {}  {}{promoted}\n", b.sha256, b.provenance()));
    }
    if let Some(o) = &d.overlay_sha256 {
        s.push_str(&format!("  env layer (config_dir) sha256 {o}\n"));
    }
    if let Some(o) = &d.overridden {
        s.push_str(&format!("  overridden by {}: {} (past: {})\n", o.by, o.reason, o.held));
    }
    if let Some(r) = d.project_revision {
        s.push_str(&format!("  project revision {r} (slipctl project history {})\n", d.project));
    }
    for hook in &d.build {
        s.push_str(&hook_text("  ", hook));
    }
    // Steps of every host in one set of columns; each hook under the step it ran in.
    let rows: Vec<[String; 3]> = d
        .hosts
        .iter()
        .flat_map(|h| &h.steps)
        .map(|st| [st.name.clone(), format!("+{}", millis(st.started_ms)), millis(st.elapsed_ms)])
        .collect();
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
    let (w0, w1, w2) = (width(0), width(1), width(2));
    for h in &d.hosts {
        s.push_str(&format!("  {} ({})  {}\n", h.host, h.addr, if h.ok { "ok" } else { "FAILED" }));
        let mut shown = vec![false; h.hooks.len()];
        for step in &h.steps {
            s.push_str(&format!(
                "    {:<w0$}  {:>w1$}  {:>w2$}  {}  {}\n",
                step.name,
                format!("+{}", millis(step.started_ms)),
                millis(step.elapsed_ms),
                if step.ok { "ok  " } else { "FAIL" },
                step.detail
            ));
            for (i, hook) in h.hooks.iter().enumerate() {
                if !shown[i] && hook.step == step.name {
                    shown[i] = true;
                    s.push_str(&hook_text("      ", hook));
                }
            }
        }
        for (i, hook) in h.hooks.iter().enumerate() {
            if !shown[i] {
                s.push_str(&hook_text("    ", hook));
            }
        }
    }
    s.trim_end().to_owned()
}

/// A hook run and its kept output, indented.
fn hook_text(indent: &str, h: &crate::state::store::HookRecord) -> String {
    let how = if h.timed_out { "timed out, killed".to_owned() } else { format!("exit {}", h.exit_code) };
    let mut s = format!("{indent}{} `{}`: {how} in {}\n", h.stage, h.command, millis(h.elapsed_ms));
    let mut out = h.output_head.clone();
    if h.output_dropped > 0 {
        out.push_str(&format!("\n[... {} dropped ...]\n", bytes(h.output_dropped)));
    }
    out.push_str(&h.output_tail);
    for line in out.lines() {
        s.push_str(&format!("{indent}  | {line}\n"));
    }
    s
}

/// Print a deploy/rollback result; the exit status is 0 only when every host succeeded.
/// The one line after an operation, computed from what each host reports: how many run the
/// release, how many of those failed a hook or check after the flip, how many went back.
fn summary_line(record: &DeployRecord) -> String {
    let on = record.hosts.iter().filter(|h| h.activated).count();
    let failed_after = record.hosts.iter().filter(|h| h.activated && !h.ok).count();
    let back =
        record.hosts.iter().filter(|h| !h.activated && h.steps.iter().any(|s| s.name == "rollback" && s.ok)).count();
    let mut extra = String::new();
    if failed_after > 0 {
        extra.push_str(&format!(" ({failed_after} of them failed a hook or check after the flip)"));
    }
    if back > 0 {
        extra.push_str(&format!(", {back} back on their previous release"));
    }
    format!(
        "{} #{} {}/{} {}: {on}/{} host(s) on {}{extra} in {}; details: slipctl show {}",
        format!("{:?}", record.kind).to_lowercase(),
        record.id,
        record.project,
        record.env,
        record.status.word(),
        record.hosts.len(),
        record.release.as_ref().map_or_else(|| "their previous release".to_owned(), ToString::to_string),
        took(record),
        record.id
    )
}

/// `promote`/`abort`: the decision goes into state; the process that waits (if it is still there)
/// carries the deploy on and this one follows it to its end; otherwise this one carries it on.
/// Inside the server the waiter may be the server itself (same pid): its journal being live
/// says so, and then the server's own waiter takes the decision — it is never resumed twice.
async fn decide(home: &Home, out: &Cx, id: u64, decision: crate::state::store::Decision) -> Result<u8> {
    use crate::state::store::{Decision, process_alive};
    let record = Store::open(&home.state())?.decide(id, decision)?;
    let finish = |record: &DeployRecord| match decision {
        Decision::Abort => finish_abort(out, record),
        Decision::Promote => finish_operation(out, record, false),
    };
    let mut reporter = Reporter::new(out);
    let waiter = record.pid;
    let waited_here = out.served.is_some() && crate::state::journal::is_live(id);
    let waiter_is_live = |pid: u32| {
        if waited_here { crate::state::journal::is_live(id) } else { process_alive(pid) && pid != std::process::id() }
    };
    if waiter_is_live(waiter) {
        let whom =
            if waited_here { "the server".to_owned() } else { format!("the slipctl that waits for it (pid {waiter})") };
        reporter.say(format!("deploy #{id}: {decision:?} sent to {whom}").to_lowercase());
        // Follow it to its end; if the waiter dies before it takes the decision, carry on here.
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = Store::open(&home.state())?.deploy(id)?.expect("the record stays");
            if !matches!(now.effective_status(), DeployStatus::Running | DeployStatus::Paused) {
                return Ok(finish(&now));
            }
            if now.status == DeployStatus::Paused && !waiter_is_live(now.pid) {
                break;
            }
        }
    }
    let args = DeployArgs {
        resume: Some((id, decision)),
        user: out.served_caller(),
        ..DeployArgs::of(&record.project, &record.env)
    };
    let running = engine::start_deploy(home.clone(), args);
    cancel_on_signals(out, running.canceller());
    let record = finish_served(out, running, &mut reporter).await?;
    Ok(finish(&record))
}

/// Follow an operation to its end, showing its events. In the server (a command through its
/// socket or `--server`), the operation is one of the server's runs while it lasts: the API's
/// cancel reaches it, the dashboard and `/healthz` count it.
async fn finish_served(
    out: &Cx,
    running: engine::Running<DeployRecord>,
    reporter: &mut Reporter,
) -> Result<DeployRecord> {
    let Some(served) = &out.served else {
        return running.finish(|event| reporter.on(event)).await;
    };
    let canceller = running.canceller();
    let mut started = None;
    let result = running
        .finish(|event| {
            if let engine::Event::Started { id } = &event {
                started = Some(*id);
                served.core.runs.track(*id, canceller.clone());
            }
            reporter.on(event)
        })
        .await;
    if let Some(id) = started {
        served.core.runs.untrack(id);
    }
    result
}

/// What to do after an operation that did not succeed, for people and for JSON.
fn outcome_fix(record: &DeployRecord) -> Option<String> {
    let (id, p, e) = (record.id, &record.project, &record.env);
    Some(match record.status {
        DeployStatus::Succeeded | DeployStatus::Running | DeployStatus::Planned => return None,
        DeployStatus::Paused => {
            format!("`slipctl promote {id}` goes on with the other hosts; `slipctl abort {id}` rolls the canary back")
        }
        DeployStatus::Failed if record.refused_by_agents() => format!(
            "change the project's paths or hook user to what the agents allow (`slipctl show {id}` says which), \
             `slipctl project apply` it and deploy again"
        ),
        DeployStatus::Failed | DeployStatus::Partial => {
            format!("`slipctl show {id}` says what each host did; fix that and deploy again")
        }
        DeployStatus::RolledBack => {
            format!(
                "the hosts are back on their previous release; `slipctl show {id}` says why; fix it and deploy again"
            )
        }
        DeployStatus::Incomplete => {
            format!("`slipctl releases {p} {e}` shows what each host runs; then rollback or deploy again")
        }
        DeployStatus::Cancelled | DeployStatus::Interrupted => {
            format!("`slipctl releases {p} {e}` shows what each host runs; deploy again when ready")
        }
    })
}

pub(crate) fn finish_operation(out: &Cx, record: &DeployRecord, dry_run: bool) -> u8 {
    let done = matches!(record.status, DeployStatus::Succeeded | DeployStatus::Planned | DeployStatus::Paused);
    finish_with(out, record, dry_run, done)
}

/// After `slipctl abort`: it did what was asked when the deploy stopped with no host left on the
/// new release (the canary went back, the others were never touched): exit 0 then, 1 only
/// when a host could not be taken back.
fn finish_abort(out: &Cx, record: &DeployRecord) -> u8 {
    let back = record.status == DeployStatus::Cancelled && record.hosts.iter().all(|h| !h.activated);
    finish_with(out, record, false, back)
}

fn finish_with(out: &Cx, record: &DeployRecord, dry_run: bool, done: bool) -> u8 {
    let code = if done {
        0
    } else if record.refused_by_agents() {
        2
    } else {
        1
    };
    if out.is_json() {
        let mut doc = deploy_json(record);
        if code != 0 {
            doc["fix"] = json!(outcome_fix(record));
        }
        doc["exit_code"] = json!(code);
        if out.format == OutputFormat::Jsonl {
            doc["event"] = json!("result");
        }
        out.print_doc(&doc);
    } else if !dry_run {
        crate::outln!(out, "{}", summary_line(record));
    }
    if code != 0 {
        crate::errln!(out, "error: {}", record.error.clone().unwrap_or_else(|| "the operation failed".into()));
    }
    code
}

async fn releases(home: &Home, out: &Cx, project: &str, env: &str, timeouts: Timeouts) -> Result<u8> {
    let scope = engine::load_scope(home, project, env, None)?;
    let tls = home.client_tls()?;
    let answers = crate::engine::rollback::query_releases(&scope, tls, timeouts).await;
    let mut rows = Vec::new();
    let mut docs = Vec::new();
    let mut all_ok = true;
    for (agent, answer) in &answers {
        match answer {
            Ok((_, reply)) => {
                let keep = scope.settings.keep_releases;
                let kept = crate::engine::select::retention(reply, keep);
                for (r, why) in reply.releases.iter().zip(&kept).rev() {
                    let state = why.words(keep);
                    rows.push(vec![
                        agent.name.clone(),
                        r.id.clone(),
                        r.commit.get(..7).unwrap_or(r.id.get(16..).unwrap_or("")).to_owned(),
                        if r.deploy_id == 0 { "-".into() } else { format!("#{}", r.deploy_id) },
                        if r.activated_at == 0 { "never".into() } else { format_utc(r.activated_at) },
                        state,
                    ]);
                }
                if reply.releases.is_empty() {
                    rows.push(vec![agent.name.clone(), "(none)".into(), "".into(), "".into(), "".into(), "".into()]);
                }
                docs.push(json!({"host": agent.name, "current": reply.current, "keep_releases": keep,
                    "releases": crate::engine::select::releases_json(reply, keep)}));
            }
            Err(e) => {
                all_ok = false;
                rows.push(vec![
                    agent.name.clone(),
                    format!("unreachable: {e}"),
                    "".into(),
                    "".into(),
                    "".into(),
                    "".into(),
                ]);
                docs.push(json!({"host": agent.name, "error": e.to_string()}));
            }
        }
    }
    print(out, json!(docs), || {
        table(&["HOST", "RELEASE", "COMMIT", "DEPLOY", "ACTIVATED", ""], &rows).trim_end().to_owned()
    });
    Ok(if all_ok { 0 } else { 1 })
}
