//! When a deploy may start: the env's `windows` and its freezes (DESIGN.md "Team governance").
//! Outside every window or inside a freeze a deploy is refused, naming the window or the
//! freeze's reason and end, and who may go ahead anyway: an admin, with a reason that the
//! deploy's record keeps. Rollbacks never ask.

use serde::{Deserialize, Serialize};
use slipway_common::config::EnvSettings;
use slipway_common::config::windows;
use slipway_common::time::format_utc;

use crate::error::{CtlError, Result};
use crate::state::freezes::Freeze;
use crate::state::store::Store;

/// Why an env takes no deploy now.
#[derive(Debug, Clone, PartialEq)]
pub enum Held {
    Frozen(Freeze),
    /// Outside every window; when the next one opens.
    Closed {
        windows: Vec<String>,
        next: Option<i64>,
    },
}

impl Held {
    pub fn describe(&self, project: &str, env: &str) -> String {
        match self {
            Held::Frozen(f) => {
                format!("{project}/{env} is frozen until {} by {}: {}", format_utc(f.until), f.by, f.reason)
            }
            Held::Closed { windows, next } => format!(
                "{project}/{env} deploys only within {}{}",
                windows.join(" or "),
                next.map(|n| format!("; the next window opens at {}", format_utc(n))).unwrap_or_default()
            ),
        }
    }

    /// When it stops holding, if that is known (a freeze's end, the next window).
    pub fn until(&self) -> Option<i64> {
        match self {
            Held::Frozen(f) => Some(f.until),
            Held::Closed { next, .. } => *next,
        }
    }
}

/// An admin's override of a window or a freeze, kept with the deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overridden {
    pub by: String,
    pub reason: String,
    /// What it went past.
    pub held: String,
}

/// What holds `settings`' env at `now`, if anything: a freeze first, then the windows.
pub fn held(store: &Store, settings: &EnvSettings, now: i64) -> Result<Option<Held>> {
    if let Some(f) = store.freezes()?.into_iter().find(|f| f.holds(&settings.project, &settings.env, now)) {
        return Ok(Some(Held::Frozen(f)));
    }
    if !windows::open(&settings.windows, now) {
        return Ok(Some(Held::Closed {
            windows: settings.windows.iter().map(|w| w.text.clone()).collect(),
            next: windows::next_open(&settings.windows, now),
        }));
    }
    Ok(None)
}

/// Whether a deploy of `settings`' env may start now: `Ok(None)` when nothing holds it,
/// `Ok(Some(..))` when `override_reason` goes past what does (the caller checked that `by` may),
/// refused otherwise.
pub fn check(
    store: &Store,
    settings: &EnvSettings,
    now: i64,
    override_reason: Option<&str>,
    by: &str,
) -> Result<Option<Overridden>> {
    let Some(held) = held(store, settings, now)? else { return Ok(None) };
    let what = held.describe(&settings.project, &settings.env);
    match override_reason.map(str::trim).filter(|r| !r.is_empty()) {
        Some(reason) => Ok(Some(Overridden { by: by.to_owned(), reason: reason.to_owned(), held: what })),
        None => Err(CtlError::forbidden(what).fix(
            "wait for it, or an admin deploys anyway with a reason that is recorded (--override-reason TEXT); rollbacks are never held",
        )),
    }
}
