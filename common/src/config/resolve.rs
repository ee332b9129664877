//! Resolving one env's settings from the project file: the env's keys over the project's,
//! every value checked, so that a bad value anywhere is reported when the file is applied.

use std::path::{Component, Path, PathBuf};

use super::*;

fn merge_opt<T>(over: &Option<T>, base: &Option<T>) -> Option<T>
where
    T: Clone,
{
    over.clone().or_else(|| base.clone())
}

pub(super) fn resolve_env(p: &ProjectFile, env_name: &str, e: &EnvFile) -> std::result::Result<EnvSettings, String> {
    let repo = merge_opt(&e.repo, &p.repo).ok_or("repo is missing: set repo = \"<git url or path>\"")?;
    if repo.trim().is_empty() {
        return Err("repo is empty".into());
    }
    let repo_type = merge_opt(&e.repo_type, &p.repo_type).unwrap_or_default();
    let default_ref = merge_opt(&e.default_ref, &p.default_ref)
        .unwrap_or_else(|| if repo_type == RepoType::Svn { "trunk".into() } else { "main".into() });
    let keep_releases = merge_opt(&e.keep_releases, &p.keep_releases).unwrap_or(5);
    if !(1..=1000).contains(&keep_releases) {
        return Err(format!("keep_releases must be between 1 and 1000, got {keep_releases}"));
    }
    let exclude = merge_opt(&e.exclude, &p.exclude).unwrap_or_default();
    let mut vars = p.vars.clone().unwrap_or_default();
    vars.extend(e.vars.clone().unwrap_or_default());
    for key in vars.keys() {
        check_var_key(key)?;
    }

    let (pb, eb) = (p.build.clone().unwrap_or_default(), e.build.clone().unwrap_or_default());
    let build = BuildSettings {
        pre_deploy: merge_opt(&eb.pre_deploy, &pb.pre_deploy).unwrap_or_default(),
        post_deploy: merge_opt(&eb.post_deploy, &pb.post_deploy).unwrap_or_default(),
        timeout_secs: positive("build.timeout_secs", merge_opt(&eb.timeout_secs, &pb.timeout_secs).unwrap_or(600))?,
        cache: merge_opt(&eb.cache, &pb.cache).unwrap_or_default(),
    };
    for path in &build.cache {
        check_cache_path(path)?;
    }

    let (pt, et) = (p.target.clone().unwrap_or_default(), e.target.clone().unwrap_or_default());
    let deploy_to = merge_opt(&et.deploy_to, &pt.deploy_to)
        .ok_or("target.deploy_to is missing: set it to the directory that holds releases/ on each host")?;
    check_host_path("target.deploy_to", &deploy_to)?;
    let current = merge_opt(&et.current, &pt.current);
    if let Some(c) = &current {
        check_host_path("target.current", c)?;
        let (c_path, d_path) = (PathBuf::from(c), PathBuf::from(&deploy_to));
        if c_path.starts_with(d_path.join("releases")) {
            return Err("target.current must not be inside <deploy_to>/releases".into());
        }
    }
    let shared = merge_opt(&et.shared, &pt.shared).unwrap_or_default();
    for s in &shared {
        let path = Path::new(s);
        if s.is_empty() || path.is_absolute() || path.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(format!("target.shared: '{s}' must be a relative path inside the release, without '..'"));
        }
    }
    let user = merge_opt(&et.user, &pt.user);
    if let Some(u) = &user
        && (u.is_empty() || u.contains(|c: char| c.is_whitespace() || c == ':' || c == '/'))
    {
        return Err(format!("target.user: '{u}' is not a user name"));
    }
    let target = TargetSettings {
        user,
        deploy_to,
        current,
        shared,
        pre_release: merge_opt(&et.pre_release, &pt.pre_release).unwrap_or_default(),
        post_release: merge_opt(&et.post_release, &pt.post_release).unwrap_or_default(),
        hook_timeout_secs: positive(
            "target.hook_timeout_secs",
            merge_opt(&et.hook_timeout_secs, &pt.hook_timeout_secs).unwrap_or(300),
        )?,
        rollback_hooks: {
            let mut stages = merge_opt(&et.rollback_hooks, &pt.rollback_hooks).unwrap_or(vec![HookStage::PostRelease]);
            stages.sort();
            stages.dedup();
            stages
        },
        migrate: merge_opt(&et.migrate, &pt.migrate).unwrap_or_default(),
        migrate_host: merge_opt(&et.migrate_host, &pt.migrate_host),
        maintenance_during_migrate: match merge_opt(&et.maintenance, &pt.maintenance).as_deref() {
            None | Some("off") => false,
            Some("during_migrate") => true,
            Some(other) => {
                return Err(format!("target.maintenance = \"{other}\": write \"during_migrate\" (or \"off\")"));
            }
        },
        maintenance_message: merge_opt(&et.maintenance_message, &pt.maintenance_message)
            .unwrap_or_else(|| "Down for maintenance: a new release is going live. Back in a few minutes.".into()),
    };
    if target.maintenance_during_migrate && target.migrate.is_empty() {
        return Err("target.maintenance = \"during_migrate\" but target.migrate is empty: add the lines to run once \
                    (or put the page up by hand: slipctl maintenance on)"
            .into());
    }
    if let Some(h) = &target.migrate_host {
        validate_agent_name(h).map_err(|why| format!("target.migrate_host: {why}"))?;
        if target.migrate.is_empty() {
            return Err("target.migrate_host is set but target.migrate is empty: add the lines to run once".into());
        }
    }

    let (pr, er) = (p.rollout.clone().unwrap_or_default(), e.rollout.clone().unwrap_or_default());
    let health = match merge_opt(&er.health, &pr.health) {
        None => None,
        Some(h) => Some(resolve_health(&h)?),
    };
    let rollout = RolloutSettings {
        strategy: merge_opt(&er.strategy, &pr.strategy).unwrap_or(Strategy::Parallel),
        batch: merge_opt(&er.batch, &pr.batch).unwrap_or(BatchSize::Percent(25)),
        delay_secs: merge_opt(&er.delay_secs, &pr.delay_secs).unwrap_or(0),
        max_failures: merge_opt(&er.max_failures, &pr.max_failures).unwrap_or(0),
        auto_rollback: merge_opt(&er.auto_rollback, &pr.auto_rollback).unwrap_or(true),
        health,
        host_timeout_secs: positive(
            "rollout.host_timeout_secs",
            merge_opt(&er.host_timeout_secs, &pr.host_timeout_secs).unwrap_or(30),
        )?,
        stage_timeout_secs: positive(
            "rollout.stage_timeout_secs",
            merge_opt(&er.stage_timeout_secs, &pr.stage_timeout_secs).unwrap_or(3600),
        )?,
        drain: merge_opt(&er.drain, &pr.drain).as_ref().map(resolve_drain).transpose()?,
        canary_pause: merge_opt(&er.canary_pause, &pr.canary_pause).unwrap_or(false),
        canary_keep_drained: merge_opt(&er.canary_keep_drained, &pr.canary_keep_drained).unwrap_or(false),
        canary_pause_timeout_secs: positive(
            "rollout.canary_pause_timeout_secs",
            merge_opt(&er.canary_pause_timeout_secs, &pr.canary_pause_timeout_secs).unwrap_or(86_400),
        )?,
    };

    let host_texts = merge_opt(&e.hosts, &p.hosts).unwrap_or_default();
    let mut hosts = Vec::new();
    for h in &host_texts {
        hosts.push(HostSelector::parse(h).map_err(|why| format!("hosts: {why}"))?);
    }
    let canary = merge_opt(&e.canary, &p.canary).unwrap_or_default();
    for c in &canary {
        validate_agent_name(c).map_err(|why| format!("canary: {why}"))?;
    }
    if rollout.canary_pause && canary.is_empty() {
        return Err(
            "rollout.canary_pause needs canary hosts: set canary = [\"web-1\"] (the env's pre-production node)".into(),
        );
    }
    if rollout.canary_keep_drained && rollout.drain.is_none() {
        return Err("rollout.canary_keep_drained needs [rollout.drain]".into());
    }
    let config_dir = merge_opt(&e.config_dir, &p.config_dir);
    let reuse = merge_opt(&e.reuse, &p.reuse).unwrap_or_default();
    let catch_up = merge_opt(&e.catch_up, &p.catch_up).unwrap_or(false);
    Ok(EnvSettings {
        project: p.name.clone(),
        env: env_name.to_owned(),
        repo,
        repo_type,
        default_ref,
        keep_releases,
        exclude,
        vars,
        build,
        target,
        rollout,
        hosts,
        canary,
        config_dir,
        promote_from: e.promote_from.clone(),
        windows: merge_opt(&e.windows, &p.windows)
            .unwrap_or_default()
            .iter()
            .map(|w| windows::Window::parse(w))
            .collect::<std::result::Result<_, _>>()?,
        reuse,
        catch_up,
        approval: server::resolve_approval(&e.approval, &p.approval)?,
    })
}

/// A `[build] cache` path: inside the checkout (`node_modules`), or the build's home
/// (`~/.m2/repository`), relative, without `.` or `..`.
fn check_cache_path(path: &str) -> std::result::Result<(), String> {
    let rel = path.strip_prefix("~/").unwrap_or(path);
    let ok = !rel.is_empty()
        && !rel.starts_with('/')
        && !rel.contains('\0')
        && rel.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "build.cache: '{path}' must be a path inside the checkout (node_modules) or the build's home (~/.m2/repository), without '..'"
        ))
    }
}

pub(super) fn positive(key: &str, value: u64) -> std::result::Result<u64, String> {
    if value == 0 { Err(format!("{key} must be at least 1")) } else { Ok(value) }
}

fn check_host_path(key: &str, value: &str) -> std::result::Result<(), String> {
    let without_host = value.replace("{host}", "h");
    if without_host.contains(['{', '}']) {
        return Err(format!("{key}: '{value}' has a placeholder other than {{host}}"));
    }
    check_clean_absolute(Path::new(&without_host)).map_err(|why| format!("{key}: {why}"))?;
    if Path::new(&without_host) == Path::new("/") {
        return Err(format!("{key}: '/' is not a deploy directory"));
    }
    Ok(())
}

fn resolve_health(h: &HealthFile) -> std::result::Result<HealthCheck, String> {
    let timeout_secs = positive("rollout.health.timeout_secs", h.timeout_secs.unwrap_or(5))?;
    let retries = h.retries.unwrap_or(3);
    let interval_secs = h.interval_secs.unwrap_or(1);
    match (&h.http, &h.command) {
        (Some(url), None) => {
            if !url.starts_with("http://") {
                return Err(format!("rollout.health.http: '{url}' must start with http://"));
            }
            Ok(HealthCheck::Http {
                url: url.clone(),
                expect_status: h.expect_status.unwrap_or(200),
                timeout_secs,
                retries,
                interval_secs,
            })
        }
        (None, Some(command)) => {
            Ok(HealthCheck::Command { command: command.clone(), timeout_secs, retries, interval_secs })
        }
        _ => Err("rollout.health: set exactly one of http or command".into()),
    }
}
