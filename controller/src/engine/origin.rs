//! Builds made once and shipped on (DESIGN.md "What ships"): where a deploy's build comes from
//! when it is not built from a ref — the build another env runs (`--from test`), the one a deploy
//! shipped (`--from-deploy 12`), or one CI pushed (`--artifact 1.4.2`) — finding its bytes, and
//! the `promote_from` gate.

use slipway_common::config::EnvSettings;

use crate::engine::events::Emitter;
use crate::error::{CtlError, Result};
use crate::source::artifact::{self, Artifact};
use crate::source::build::Recipe;
use crate::source::git;
use crate::state::home::Home;
use crate::state::store::{BuildInfo, DeployKind, DeployRecord, DeployStatus, Store};

/// A deploy that ships an existing build.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// The build this env runs now.
    Env(String),
    /// The build deploy N shipped.
    Deploy(u64),
    /// A build pushed by CI, by name.
    Artifact(String),
    /// Exactly this build (a retry or a resumed deploy of one that shipped an existing build).
    Build(Box<BuildInfo>, Option<u64>),
}

/// The build to ship, and the deploy it is taken from (none for a pushed artifact).
pub struct Source {
    pub build: BuildInfo,
    pub from_deploy: Option<u64>,
    /// What the new deploy's record names as its ref.
    pub git_ref: String,
}

/// The deploy whose release `env` runs now: its newest succeeded deploy, or the deploy that made
/// the release its newest succeeded rollback went back to.
pub fn running_deploy(store: &Store, project: &str, env: &str) -> Result<Option<DeployRecord>> {
    let newest = store.deploys_where(1, |d| {
        d.project == project
            && d.env == env
            && d.effective_status() == DeployStatus::Succeeded
            && matches!(d.kind, DeployKind::Deploy | DeployKind::Rollback)
    })?;
    let Some(newest) = newest.into_iter().next() else { return Ok(None) };
    if newest.kind == DeployKind::Deploy {
        return Ok(Some(newest));
    }
    let Some(release) = newest.release.clone() else { return Ok(None) };
    Ok(store
        .deploys_where(1, |d| {
            d.project == project && d.env == env && d.kind == DeployKind::Deploy && d.release.as_ref() == Some(&release)
        })?
        .into_iter()
        .next())
}

/// What `origin` names, for a deploy of `project`.
pub fn resolve(home: &Home, project: &str, origin: &Origin) -> Result<Source> {
    let store = Store::open(&home.state())?;
    let record = match origin {
        Origin::Build(build, from) => {
            return Ok(Source {
                build: (**build).clone(),
                from_deploy: *from,
                git_ref: build.artifact.as_ref().map_or_else(String::new, |n| format!("artifact:{n}")),
            });
        }
        Origin::Artifact(name) => {
            let pushed = crate::state::artifacts::get(&store, project, name)?.ok_or_else(|| {
                CtlError::not_found(format!("project {project} has no artifact named '{name}'"))
                    .fix(format!("`slipctl artifact list {project}` lists them; `slipctl artifact push` adds one"))
            })?;
            return Ok(Source { build: pushed.build(), from_deploy: None, git_ref: format!("artifact:{name}") });
        }
        Origin::Env(env) => running_deploy(&store, project, env)?.ok_or_else(|| {
            CtlError::not_found(format!("{project}/{env} has no release to promote: no deploy of it succeeded"))
                .fix(format!("deploy {env} first: `slipctl deploy {project} {env}`"))
        })?,
        Origin::Deploy(n) => store.deploy(*n)?.ok_or_else(|| {
            CtlError::not_found(format!("unknown deploy #{n}")).fix(format!("`slipctl history {project}` lists them"))
        })?,
    };
    if record.project != project {
        return Err(CtlError::bad(format!(
            "deploy #{} shipped a build of project {}, not of {project}",
            record.id, record.project
        ))
        .fix(format!("`slipctl history {project}` lists this project's deploys")));
    }
    if record.kind != DeployKind::Deploy {
        return Err(CtlError::bad(format!("#{} is a rollback, which ships no build", record.id))
            .fix("name the deploy that made the release (`slipctl show` gives it)"));
    }
    let build = record.built.clone().ok_or_else(|| {
        CtlError::bad(format!(
            "deploy #{} of {}/{} has no build on record (it failed before packaging, or was made before builds were kept apart from the env layer)",
            record.id, record.project, record.env
        ))
        .fix(format!("deploy {} again, then promote that deploy", record.env))
    })?;
    Ok(Source { build, from_deploy: Some(record.id), git_ref: record.git_ref })
}

/// `promote_from = "test"`: this env takes only a build that ran in `test` first (a deploy
/// there succeeded with it). `None`: a build from a ref, which never ran anywhere.
pub fn gate(home: &Home, settings: &EnvSettings, build: Option<&BuildInfo>) -> Result<()> {
    let Some(from) = &settings.promote_from else { return Ok(()) };
    let (project, env) = (&settings.project, &settings.env);
    let fix = format!("`slipctl deploy {project} {env} --from {from}` ships the build {from} runs");
    let Some(build) = build else {
        return Err(CtlError::forbidden(format!(
            "{project}/{env} takes only builds that ran in {from} first (promote_from = \"{from}\"), not a build from a ref"
        ))
        .fix(fix));
    };
    let store = Store::open(&home.state())?;
    let ran = store.deploys_where(1, |d| {
        d.project == *project
            && d.env == *from
            && d.kind == DeployKind::Deploy
            && d.effective_status() == DeployStatus::Succeeded
            && d.built.as_ref().is_some_and(|b| b.sha256 == build.sha256)
    })?;
    if ran.is_empty() {
        return Err(CtlError::forbidden(format!(
            "build {} ({}) has not run in {from}, and {project}/{env} takes only builds that did (promote_from = \"{from}\")",
            &build.sha256[..12],
            build.provenance()
        ))
        .fix(format!("deploy it to {from} first, or {fix}")));
    }
    Ok(())
}

/// The recipe `build` was made with.
pub fn recipe_of(build: &BuildInfo, timeout_secs: u64) -> Recipe {
    Recipe {
        // A pushed artifact is found by name, never in the cache: its layered releases are keyed
        // by its digest.
        commit: if build.artifact.is_some() { format!("build-{}", build.sha256) } else { build.commit.clone() },
        commit_time: build.commit_time,
        excludes: build.excludes.clone(),
        pre_deploy: build.pre_deploy.clone(),
        post_deploy: build.post_deploy.clone(),
        build_timeout_secs: timeout_secs,
        overlay: None,
        base: None,
        svn: build.svn.clone(),
    }
}

/// The recipe of `build` with `settings`' env layer on top (its cache key names the build).
pub fn layered_recipe(
    build: &BuildInfo,
    settings: &EnvSettings,
    overlay: Option<(std::path::PathBuf, String)>,
) -> Recipe {
    Recipe { base: Some(build.sha256.clone()), overlay, ..recipe_of(build, settings.build.timeout_secs) }
}

/// The packaged bytes of `build`: a pushed artifact's, the cache's, or — a build without hooks
/// — packed from the commit in git again; each checked against the build's digest.
pub async fn build_artifact(
    home: &Home,
    settings: &EnvSettings,
    build: &BuildInfo,
    url: &str,
    reporter: &Emitter,
) -> Result<Artifact> {
    let check = |a: Artifact, from: &str| -> Result<Artifact> {
        if a.manifest_sha256() != build.sha256 {
            return Err(CtlError::failed(format!(
                "the build {from} is not build {} ({}): its digest is {}",
                &build.sha256[..12],
                build.provenance(),
                &a.manifest_sha256()[..12]
            ))
            .fix("deploy the commit again to make a new build"));
        }
        Ok(a)
    };
    if let Some(name) = &build.artifact {
        let dir = crate::state::artifacts::dir(home, &settings.project, name);
        let found = artifact::load_dir(&dir).ok_or_else(|| {
            CtlError::failed(format!("artifact {name} of {} is missing from {}", settings.project, dir.display()))
                .fix("push it again under a new name")
        })?;
        return check(found, &format!("kept as artifact {name}"));
    }
    let cache = home.cache();
    // Its recipe finds it in the cache whatever the commit's time.
    if let Some(found) = artifact::lookup(&cache, &recipe_of(build, settings.build.timeout_secs)) {
        reporter.say(format!("build {} ({}) found in the cache", &build.sha256[..12], build.provenance()));
        return check(found, "in the cache");
    }
    if !build.pre_deploy.is_empty() || !build.post_deploy.is_empty() || build.svn.is_some() {
        return Err(CtlError::failed(format!(
            "build {} ({}) is no longer in the controller's cache ({}), and it was made by build hooks (or exported from svn), so it is not made again here",
            &build.sha256[..12],
            build.provenance(),
            cache.join("artifacts").display()
        ))
        .fix("deploy the commit to the source env again (a new build), or push CI's build with `slipctl artifact push`"));
    }
    // Without build hooks the build is the commit's tree: pack it from git again.
    let mirror = git::mirror_path(&cache, &settings.project);
    git::fetch(url, &mirror).await?;
    git::resolve(&mirror, &build.commit, url)?;
    reporter.say(format!(
        "build {} packed again from commit {}",
        &build.sha256[..12],
        crate::source::vcs::short(&build.commit)
    ));
    let packed = artifact::pack_git(&cache, &mirror, &recipe_of(build, 1)).await?;
    check(packed, "packed from git again")
}
