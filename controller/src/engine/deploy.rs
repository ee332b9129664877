//! `deploy`: resolve, build and package once, then hand the rollout to the executor and record
//! the truth.
use std::time::Instant;

use slipway_common::ReleaseId;
use slipway_common::time::unix_now;
use tokio::sync::watch;

use crate::engine::client::Timeouts;
use crate::engine::events::Emitter;
use crate::engine::host_error::Shown;
use crate::engine::planner::batches;
use crate::error::{CtlError, Result};
use crate::source::artifact::Artifact;
use crate::source::{git, vcs};
use crate::state::home::Home;
use crate::state::store::{
    BuildInfo, Decision, DeployKind, DeployRecord, DeployStatus, DryRunPlan, PlannedHost, Store,
};

use super::origin::Origin;
use crate::units::{bytes, millis};

use super::executor::*;
use super::host_ops::new_host_result;
use super::lock::*;
use super::package::*;
use super::scope::*;

pub struct DeployArgs {
    pub project: String,
    pub env: String,
    pub git_ref: Option<String>,
    pub hosts: Option<Vec<String>>,
    pub dry_run: bool,
    /// Send the whole artifact even to hosts that hold most of it.
    pub full: bool,
    /// Becomes true when the operator cancels (Ctrl-C, SIGTERM).
    pub cancel: Option<watch::Receiver<bool>>,
    /// `--retry-failed N`: ship deploy N's release again, to the hosts it did not reach.
    pub retry: Option<Retry>,
    /// Carry on paused deploy N in this process (its waiting process is gone), as decided.
    pub resume: Option<(u64, Decision)>,
    /// Carry on deploy N, left running by a leader that is gone, from its journal (the new
    /// leader does, once it leads).
    pub takeover: Option<u64>,
    /// Who asks (the server's user); the OS user running `slipctl` when `None`.
    pub user: Option<String>,
    /// Ship exactly this commit (a ticket's, resolved when it was made); `git_ref` names it.
    pub commit: Option<String>,
    /// Ship an existing build (`--from ENV`, `--from-deploy N`, `--artifact NAME`) with this
    /// env's layer: no checkout, no build.
    pub origin: Option<Origin>,
    /// Go past the env's windows or a freeze, for this reason (an admin's; recorded).
    pub override_reason: Option<String>,
    /// Do not run `[target] migrate` (a re-deploy of what already ran it).
    pub skip_migrate: bool,
}

impl DeployArgs {
    /// A deploy of `project`/`env` at its default ref, every host, nothing else asked.
    pub fn of(project: &str, env: &str) -> DeployArgs {
        DeployArgs {
            project: project.to_owned(),
            env: env.to_owned(),
            git_ref: None,
            hosts: None,
            dry_run: false,
            full: false,
            cancel: None,
            retry: None,
            resume: None,
            takeover: None,
            user: None,
            commit: None,
            origin: None,
            override_reason: None,
            skip_migrate: false,
        }
    }
}

/// Deploy N's release, again, to the hosts of N that failed or were never reached.
#[derive(Debug, Clone)]
pub struct Retry {
    pub of: u64,
    pub release: ReleaseId,
    pub commit: String,
    pub git_ref: String,
    pub hosts: Vec<String>,
    /// Deploy N shipped an existing build: the retry ships that build again.
    pub origin: Option<Origin>,
}

/// The build a deploy shipped, when it shipped an existing one (a promotion, a pushed artifact)
/// rather than building its commit: what carrying it on must ship again.
pub fn shipped_build(record: &DeployRecord) -> Option<Origin> {
    let built = record.built.as_ref()?;
    (record.promoted_from.is_some() || built.artifact.is_some())
        .then(|| Origin::Build(Box::new(built.clone()), record.promoted_from))
}

/// What `--retry-failed N` does, from deploy N's record: its release, commit and ref, and the
/// hosts that did not take it (failed, rolled back, or never reached). `None`: every host did.
pub fn retry_of(home: &Home, project: &str, env: &str, n: u64) -> Result<Option<Retry>> {
    let record = Store::open(&home.state())?
        .deploy(n)?
        .ok_or_else(|| CtlError::not_found(format!("unknown deploy #{n}")).fix("`slipctl history` lists them"))?;
    if record.project != project || record.env != env || record.kind != DeployKind::Deploy {
        return Err(CtlError::bad(format!(
            "#{n} is a {} of {}/{}, not a deploy of {project}/{env}",
            format!("{:?}", record.kind).to_lowercase(),
            record.project,
            record.env
        ))
        .fix(format!("`slipctl history {project} {env}` lists this env's deploys")));
    }
    let release = record.release.clone().ok_or_else(|| {
        CtlError::bad(format!("deploy #{n} never got as far as a release")).fix("deploy the ref again instead")
    })?;
    let hosts: Vec<String> = record.hosts.iter().filter(|h| !(h.ok && h.activated)).map(|h| h.host.clone()).collect();
    if hosts.is_empty() {
        return Ok(None);
    }
    Ok(Some(Retry {
        of: n,
        release,
        commit: record.commit.clone(),
        git_ref: record.git_ref.clone(),
        hosts,
        origin: shipped_build(&record),
    }))
}

/// `slipctl deploy`.
pub async fn deploy(home: &Home, args: DeployArgs, reporter: &Emitter) -> Result<DeployRecord> {
    let started = Instant::now();
    let resumed = match (&args.resume, args.takeover) {
        (Some((n, _)), _) => Some(Store::open(&home.state())?.paused_deploy(*n)?),
        (None, Some(n)) => Some(Store::open(&home.state())?.running_deploy(n)?),
        (None, None) => None,
    };
    // Carried on from its journal: read once, for its hosts and where each of them is.
    let journal = match args.takeover {
        Some(n) => Store::open(&home.state())?.events(n, 0)?,
        None => Vec::new(),
    };
    let only: Option<Vec<String>> = match (&resumed, args.takeover) {
        // Carried on from its journal: the hosts it named when it started.
        (Some(_), Some(_)) => Some(journal_hosts(&journal)).filter(|h| !h.is_empty()),
        (Some(r), None) => Some(r.hosts.iter().map(|h| h.host.clone()).collect()),
        (None, _) => args.hosts.clone(),
    };
    let scope = load_scope(home, &args.project, &args.env, only.as_deref())?;
    let settings = &scope.settings;
    let timeouts = Timeouts::host(settings.rollout.host_timeout_secs);
    let tls = home.client_tls()?;
    let names: Vec<String> = scope.hosts.iter().map(|h| h.name.clone()).collect();
    crate::engine::drain::Drainer::of(&scope, tls.clone(), timeouts)?;
    crate::engine::drain::check_full_drain(
        settings,
        &batches(&names, &settings.canary, settings.rollout.strategy, settings.rollout.batch),
    )?;
    // An existing build to ship, and whether this env may take it (a deploy carried on or
    // retried passed the gate when it started).
    let origin = match (&args.retry, &resumed) {
        (Some(r), _) => r.origin.clone(),
        (_, Some(r)) => shipped_build(r),
        _ => args.origin.clone(),
    };
    let source = origin.as_ref().map(|o| super::origin::resolve(home, &args.project, o)).transpose()?;
    if args.retry.is_none() && resumed.is_none() {
        super::origin::gate(home, settings, source.as_ref().map(|s| &s.build))?;
    }
    // Windows and freezes hold every deploy that starts (a host catching up, and a deploy
    // carried on, started before).
    let catching_up = args.user.as_deref().is_some_and(|u| u.starts_with("join:"));
    let overridden = if resumed.is_none() && !catching_up && !args.dry_run {
        let by = args.user.clone().unwrap_or_else(current_user);
        let store = Store::open(&home.state())?;
        super::policy::check(&store, settings, unix_now(), args.override_reason.as_deref(), &by)?
    } else {
        None
    };
    let git_ref = match (&args.retry, &resumed, &source) {
        (Some(r), _, _) => r.git_ref.clone(),
        (_, Some(r), _) => r.git_ref.clone(),
        (_, _, Some(s)) => s.git_ref.clone(),
        _ => args.git_ref.clone().unwrap_or_else(|| settings.default_ref.clone()),
    };
    let url = repo_url(&scope.project, settings);

    // A busy project+env is answered before anything is fetched (exit 3); the deploy is numbered
    // and recorded once its commit is known.
    let probe = match &resumed {
        Some(r) => DeployRecord { op: crate::state::store::next_op(), ..r.clone() },
        None => DeployRecord::start(
            DeployKind::Deploy,
            &settings.project,
            &settings.env,
            args.user.clone().unwrap_or_else(current_user),
        ),
    };
    let lock = if args.dry_run { None } else { Some(take_lock(home, &probe, reporter)?) };
    let mirror = git::mirror_path(&home.cache(), &settings.project);
    let (resolved, recipe) = match &source {
        // An existing build: nothing is fetched or built (unless it must be packed from git
        // again), and this env's layer goes on top.
        Some(s) => {
            let b = &s.build;
            let from = s.from_deploy.map(|n| format!(", as deploy #{n} shipped it")).unwrap_or_default();
            reporter.say(format!("shipping build {} ({}){from}", &b.sha256[..12], b.provenance()));
            let resolved =
                git::Resolved { commit: b.commit.clone(), commit_time: b.commit_time, summary: String::new() };
            (resolved, super::origin::layered_recipe(b, settings, overlay(&scope)?))
        }
        None => {
            let t = Instant::now();
            reporter.say(format!("fetching {url}"));
            vcs::fetch(settings, &url, &mirror).await?;
            // A retry (or a paused deploy carried on) ships the very commit of the deploy it
            // continues, whatever its ref points at now.
            let exact = args
                .retry
                .as_ref()
                .map(|r| r.commit.as_str())
                .or(resumed.as_ref().map(|r| r.commit.as_str()))
                .or(args.commit.as_deref());
            let resolved = vcs::resolve(settings, &url, &mirror, exact.unwrap_or(git_ref.as_str())).await?;
            reporter.say(format!(
                "{git_ref} is {} \"{}\" (fetched in {})",
                vcs::short(&resolved.commit),
                resolved.summary,
                millis(t.elapsed().as_millis() as u64)
            ));
            let recipe = recipe(&scope, &resolved)?;
            (resolved, recipe)
        }
    };
    // A pushed artifact may name no commit: its release id carries the build's digest instead.
    let id_hex = match &source {
        Some(s) if resolved.commit.is_empty() => s.build.sha256.clone(),
        _ if crate::source::svn::is_svn_commit(&resolved.commit) => crate::source::svn::release_hex(&resolved.commit),
        _ => resolved.commit.clone(),
    };
    let release = match (&args.retry, &resumed) {
        (Some(r), _) => {
            if args.user.as_deref().is_some_and(|u| u.starts_with("join:")) {
                let hosts = r.hosts.join(", ");
                reporter.say(format!("catching up {hosts}: release {} of deploy #{}", r.release, r.of));
            } else {
                reporter.say(format!("retrying deploy #{}: release {} to {}", r.of, r.release, r.hosts.join(", ")));
            }
            r.release.clone()
        }
        (_, Some(r)) => r.release.clone().ok_or_else(|| CtlError::failed("a paused deploy has its release"))?,
        _ => next_release_id(home, &settings.project, &settings.env, &id_hex).await?,
    };
    let mut record = DeployRecord {
        git_ref: git_ref.clone(),
        commit: resolved.commit.clone(),
        release: Some(release.clone()),
        overlay_sha256: recipe.overlay.as_ref().map(|(_, d)| d.clone()),
        built: source.as_ref().map(|s| s.build.clone()).or(probe.built.clone()),
        promoted_from: source.as_ref().and_then(|s| s.from_deploy).or(probe.promoted_from),
        overridden: overridden.or(probe.overridden.clone()),
        project_revision: probe.project_revision.or((scope.project.revision > 0).then_some(scope.project.revision)),
        ..probe
    };
    if resumed.is_some() {
        // The same deploy, carried on by this process.
        record.status = DeployStatus::Running;
        record.pid = std::process::id();
        Store::open(&home.state())?.put_deploy(&record)?;
    } else if !args.dry_run {
        number(home, &mut record)?;
    }
    if !args.dry_run {
        reporter.started(record.id);
    }
    let packaged = match &source {
        Some(s) => match super::origin::build_artifact(home, settings, &s.build, &url, reporter).await {
            Ok(build) => layer(home, build, &recipe, reporter).await,
            Err(e) => Err(e),
        },
        None => package(home, &mirror, &recipe, &mut record, settings, reporter, args.dry_run).await,
    };
    let result = match packaged {
        Ok(mut package) => {
            if let Some(artifact) = &package.full {
                say_packaged(artifact, reporter);
            }
            record.artifact = package.full.as_ref().map(artifact_summary);
            note_build(home, &mut record, &package, &recipe);
            if args.dry_run {
                let artifact = package.full.as_ref().expect("a dry run packages the artifact");
                record.plan = Some(print_plan(&scope, &record, artifact, reporter));
                record.hosts = scope.hosts.iter().map(|a| new_host_result(a, record.release.as_ref())).collect();
                record.status = DeployStatus::Planned;
                record.pid = 0;
                return Ok(record);
            }
            reporter.say(format!(
                "deploy #{} {}/{}: release {release} to {} host(s)",
                record.id,
                settings.project,
                settings.env,
                scope.hosts.len()
            ));
            // A deploy taken over from a leader that is gone ran it already once a host flipped
            // (or a `migrate` hook line finished: its result is in the journal).
            let ran_before = journal.iter().any(|(_, e)| {
                e["event"] == "host"
                    && (e["kind"] == "activated"
                        || (e["kind"] == "hook" && e["stage"] == "migrate" && e["exit_code"] == 0))
            });
            let cancel = (args.cancel.clone(), args.full);
            let carry = match (args.resume, args.takeover) {
                (Some((_, d)), _) => Some(Carry::Decided(d)),
                (None, Some(_)) => Some(Carry::TakenOver(journal)),
                (None, None) => None,
            };
            // The step that runs once: not for a host catching up, a deploy carried on past its
            // canary (it ran), or when asked not to.
            let migrate = if settings.target.migrate.is_empty() {
                super::planner::Migrate::None
            } else if args.skip_migrate || catching_up || args.resume.is_some() || ran_before {
                reporter.say("migrate: not run (--skip-migrate, a host catching up, or a deploy carried on)");
                super::planner::Migrate::None
            } else {
                super::planner::Migrate::Pending
            };
            let result =
                run_deploy(&scope, &mut package, &mut record, tls, reporter, timeouts, cancel, home, carry, migrate)
                    .await;
            // A full artifact packaged while streaming is in the cache once this returns.
            if let Some(Err(e)) = package.finish().await {
                reporter.say(format!("packaging the full artifact failed: {e}"));
            }
            record.artifact = package.full.as_ref().map(artifact_summary);
            note_build(home, &mut record, &package, &recipe);
            result
        }
        Err(e) if args.dry_run => return Err(e),
        Err(e) => Err(e),
    };
    if result.is_ok() && record.status == DeployStatus::Paused {
        // Paused, and this process is going: the deploy keeps its lock for whoever carries it on.
        Store::open(&home.state())?.put_deploy(&record)?;
        std::mem::forget(lock);
        return Ok(record);
    }
    drop(lock);
    record.finished_at = Some(unix_now());
    record.duration_ms = started.elapsed().as_millis() as u64;
    if let Err(e) = &result {
        if record.status == DeployStatus::Running {
            record.status = DeployStatus::Failed;
        }
        record.error = Some(e.to_string());
    }
    let store = Store::open(&home.state())?;
    store.put_deploy(&record)?;
    let target = format!("{}/{}", record.project, record.env);
    let detail = format!(
        "deploy #{} release {} commit {}{}",
        record.id,
        Shown(&record.release),
        record.commit,
        record.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
    );
    crate::ops::audit::record(&store, &record.user, "", "deploy", &target, record.status.word(), &detail);
    if let Some(o) = &record.overridden {
        let detail = format!("deploy #{}: {} (past: {})", record.id, o.reason, o.held);
        crate::ops::audit::record(&store, &o.by, "", "override", &target, "ok", &detail);
    }
    Ok(record)
}

/// Record the build this deploy ships once its digest is known: the deploy that first shipped
/// that build (of the newest 500 operations) made it; otherwise this one did.
fn note_build(home: &Home, record: &mut DeployRecord, package: &Package, recipe: &crate::source::build::Recipe) {
    if record.built.is_some() || record.id == 0 {
        return;
    }
    let Some(sha256) = package.build_sha256() else { return };
    let earlier = Store::open(&home.state()).ok().and_then(|store| {
        store
            .deploys_scanning(500, |d| {
                d.id != record.id
                    && d.project == record.project
                    && d.built.as_ref().is_some_and(|b| b.sha256 == sha256 && b.artifact.is_none())
            })
            .ok()
            .flatten()
    });
    record.built = Some(match earlier.and_then(|d| d.built) {
        Some(built) => built,
        None => BuildInfo {
            sha256,
            commit: record.commit.clone(),
            commit_time: recipe.commit_time,
            deploy: Some(record.id),
            env: Some(record.env.clone()),
            artifact: None,
            excludes: recipe.excludes.clone(),
            pre_deploy: recipe.pre_deploy.clone(),
            post_deploy: recipe.post_deploy.clone(),
            svn: recipe.svn.clone(),
        },
    });
}

/// The hosts a deploy named when it started (its journal's `hosts` event).
fn journal_hosts(events: &[(u32, serde_json::Value)]) -> Vec<String> {
    events
        .iter()
        .rev()
        .find(|(_, e)| e["event"] == "hosts")
        .and_then(|(_, e)| e["hosts"].as_array())
        .map(|hosts| hosts.iter().filter_map(|h| h.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// `--dry-run`: what would happen, per host, and nothing else.
pub(crate) fn print_plan(scope: &Scope, record: &DeployRecord, artifact: &Artifact, reporter: &Emitter) -> DryRunPlan {
    let settings = &scope.settings;
    let t = &settings.target;
    let names: Vec<String> = scope.hosts.iter().map(|h| h.name.clone()).collect();
    let batches = batches(&names, &settings.canary, settings.rollout.strategy, settings.rollout.batch);
    let files = artifact.manifest.entries.iter().filter(|e| e.kind == slipway_common::archive::EntryKind::File).count();
    let plan = DryRunPlan {
        batches: batches.clone(),
        hosts: scope
            .hosts
            .iter()
            .map(|h| PlannedHost {
                host: h.name.clone(),
                addr: h.addr.clone(),
                current: t.current_for(&h.name).display().to_string(),
                release_path: t
                    .deploy_to_for(&h.name)
                    .join("releases")
                    .join(Shown(&record.release).to_string())
                    .display()
                    .to_string(),
            })
            .collect(),
        user: t.user.clone(),
        pre_release: t.pre_release.clone(),
        post_release: t.post_release.clone(),
        shared: t.shared.clone(),
        keep_releases: settings.keep_releases,
        files: files as u64,
    };
    reporter.say(format!(
        "dry run: release {} ({} files, {} -> {}) would go to {} host(s); nothing was sent",
        Shown(&record.release),
        artifact.manifest.entries.iter().filter(|e| e.kind == slipway_common::archive::EntryKind::File).count(),
        bytes(artifact.file_bytes),
        bytes(artifact.compressed_bytes),
        scope.hosts.len()
    ));
    for h in &scope.hosts {
        reporter.say(format!(
            "  {:<16} {} -> {}",
            h.name,
            t.current_for(&h.name).display(),
            t.deploy_to_for(&h.name).join("releases").join(Shown(&record.release).to_string()).display()
        ));
    }
    let list = |v: &[String]| if v.is_empty() { "none".to_owned() } else { v.join(" && ") };
    reporter.say(format!(
        "  hooks as {}: pre_release: {}; post_release: {}",
        t.user.as_deref().unwrap_or("(agent user)"),
        list(&t.pre_release),
        list(&t.post_release)
    ));
    if !t.shared.is_empty() {
        reporter.say(format!("  shared: {}", t.shared.join(", ")));
    }
    if !t.migrate.is_empty() {
        let on =
            t.migrate_host.clone().or_else(|| batches.first().and_then(|b| b.first().cloned())).unwrap_or_default();
        reporter.say(format!("  migrate once on {on}, after every host staged, before any flip: {}", list(&t.migrate)));
    }
    reporter.say(
        format!("  strategy {:?}, keep {} releases", settings.rollout.strategy, settings.keep_releases).to_lowercase(),
    );
    if batches.len() > 1 {
        let order: Vec<String> = batches.iter().map(|b| b.join(", ")).collect();
        reporter.say(format!("  rollout order: {}", order.join(" | ")));
    }
    plan
}
