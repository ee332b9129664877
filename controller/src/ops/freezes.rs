//! Freezes, for `slipctl freeze create|list|rm`, the API and the env page alike: made by a
//! maintainer of the project (or an admin) with a reason and an end, lifted early by the same.
//! What a freeze holds is `engine::policy`'s to say.

use slipway_common::time::unix_now;

use crate::error::{CtlError, Result};
use crate::state::freezes::Freeze;
use crate::state::joins::Done;
use crate::state::store::Store;

/// Longest reason kept (characters).
pub const REASON_MAX: usize = 500;

/// Freeze `project`/`env` from `from` (now when `None`) until `until`.
pub fn create(
    store: &Store,
    by: &str,
    project: &str,
    env: &str,
    from: Option<i64>,
    until: i64,
    reason: &str,
) -> Result<Freeze> {
    crate::engine::scope::env_of(store, project, env)?;
    let now = unix_now();
    let from = from.unwrap_or(now);
    if until <= from.max(now) {
        return Err(CtlError::bad("a freeze must end after it starts, and in the future")
            .fix("give --until a later time (a duration like 4h, or 2026-12-24 18:00 Asia/Shanghai)"));
    }
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > REASON_MAX {
        return Err(CtlError::bad(format!("a freeze needs a reason of 1 to {REASON_MAX} characters"))
            .fix("say why, e.g. --reason \"Double 11 sale\""));
    }
    let freeze = Freeze {
        id: store.next_freeze_id()?,
        project: project.to_owned(),
        env: env.to_owned(),
        from,
        until,
        reason: reason.to_owned(),
        by: by.to_owned(),
        created_at: now,
        lifted: None,
    };
    store.put_freeze(&freeze)?;
    let target = format!("{project}/{env}");
    let detail = format!("until {}: {reason}", slipway_common::time::format_utc(until));
    crate::ops::audit::record(store, by, "", "freeze_create", &target, "ok", &detail);
    Ok(freeze)
}

/// Freezes not yet over (of one project, or all), newest first.
pub fn list(store: &Store, project: Option<&str>) -> Result<Vec<Freeze>> {
    let now = unix_now();
    Ok(store
        .freezes()?
        .into_iter()
        .filter(|f| project.is_none_or(|p| p == f.project) && f.lifted.is_none() && f.until > now)
        .collect())
}

/// Lift freeze `id` now (its record stays, marked lifted).
pub fn lift(store: &Store, by: &str, id: u64) -> Result<Freeze> {
    let mut freeze = store
        .freeze(id)?
        .ok_or_else(|| CtlError::not_found(format!("unknown freeze {id}")).fix("`slipctl freeze list` lists them"))?;
    if freeze.lifted.is_some() || freeze.until <= unix_now() {
        return Err(CtlError::busy(format!("freeze {id} of {}/{} is already over", freeze.project, freeze.env))
            .fix("nothing to lift"));
    }
    freeze.lifted = Some(Done { by: by.to_owned(), at: unix_now() });
    store.put_freeze(&freeze)?;
    let target = format!("{}/{}", freeze.project, freeze.env);
    crate::ops::audit::record(store, by, "", "freeze_lift", &target, "ok", &format!("freeze {id}"));
    Ok(freeze)
}
