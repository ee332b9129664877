//! The server's part in leading a shared PostgreSQL state ([`crate::state::leader`]). At start
//! it tries the lock: it leads, or it is a standby that serves reads, answers everything else
//! with `503` and the leader's URL (a browser is sent there), and tries again each second.
//! Leading, it carries on the deploys the last leader left running, and checks its lock session
//! each second: when the session is gone (the database restarted, the network broke), it cannot
//! know that it still leads, so it says why and stops the process at once — a standby takes
//! over, and a supervisor (systemd's `Restart=`) starts this one again, as a standby.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::Result;
use crate::state::leader::{self, Role};
use crate::state::postgres::LockSession;

use super::App;

/// How often a standby tries the lock, and a leader checks its session.
pub const EVERY: Duration = Duration::from_secs(1);

/// The exit status of a leader that lost its session (EX_TEMPFAIL: start it again).
pub const LOST_LEAD: i32 = 75;

/// With a shared database: connect the lock session and try the lock once. `None` with sled.
pub async fn start(app: &Arc<App>) -> Result<Option<Arc<LockSession>>> {
    let Some(db) = crate::state::home::database_of(&app.home.state())? else {
        return Ok(None);
    };
    let session = tokio::task::spawn_blocking(move || LockSession::connect(&db))
        .await
        .map_err(|e| crate::error::CtlError::failed(format!("lock session: {e}")))??;
    let session = Arc::new(session);
    if try_lock(&session).await? {
        lead(app, &session).await?;
    } else {
        leader::set_role(Role::Standby);
        let at = leader::current(&app.store)?.map(|l| l.url).unwrap_or_else(|| "(not recorded)".into());
        println!("slipctl serve: standby; the leader is at {at}");
        let (app, session) = (app.clone(), session.clone());
        tokio::spawn(async move { campaign(app, session).await });
    }
    Ok(Some(session))
}

async fn try_lock(session: &Arc<LockSession>) -> Result<bool> {
    let s = session.clone();
    tokio::task::spawn_blocking(move || s.try_lock(leader::LOCK_KEY))
        .await
        .map_err(|e| crate::error::CtlError::failed(format!("lock session: {e}")))?
}

/// A standby: try the lock each second until it is ours.
async fn campaign(app: Arc<App>, session: Arc<LockSession>) {
    loop {
        tokio::time::sleep(EVERY).await;
        if *app.stopping.borrow() {
            return;
        }
        match try_lock(&session).await {
            Ok(true) => {
                if let Err(e) = lead(&app, &session).await {
                    step_down(&format!("cannot take the lead: {e}"));
                }
                return;
            }
            Ok(false) => {}
            Err(e) => step_down(&format!("the lock session failed: {e}")),
        }
    }
}

/// The lock is ours: a new epoch, the deploys left running carried on, the session watched.
async fn lead(app: &Arc<App>, session: &Arc<LockSession>) -> Result<()> {
    let previous = leader::current(&app.store)?;
    let record = leader::took_lead(&app.store, &app.public_url)?;
    match previous.filter(|p| p.url != record.url || p.pid != record.pid) {
        Some(p) => println!("slipctl serve: leading (epoch {}), after {} (epoch {})", record.epoch, p.url, p.epoch),
        None => println!("slipctl serve: leading (epoch {})", record.epoch),
    }
    let recovered = crate::ops::tickets::recover(&app.core, true)?;
    if recovered > 0 {
        println!("{recovered} ticket(s) whose deploy ended while no one led now read as their deploy");
    }
    let carried = crate::ops::runs::take_over(&app.core).await?;
    if !carried.is_empty() {
        let ids: Vec<String> = carried.iter().map(|n| format!("#{n}")).collect();
        println!("slipctl serve: carrying on deploy {} left running by the last leader", ids.join(", "));
    }
    super::start_leader_loops(app);
    let session = session.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(EVERY).await;
            let s = session.clone();
            let checked = tokio::task::spawn_blocking(move || s.check()).await;
            match checked {
                Ok(Ok(())) => {}
                Ok(Err(e)) => step_down(&e.to_string()),
                Err(e) => step_down(&format!("the session check failed: {e}")),
            }
        }
    });
    Ok(())
}

/// Stop now: this process may no longer lead, and must not touch a host again.
fn step_down(why: &str) -> ! {
    eprintln!(
        "slipctl serve: stepping down: {why}. Without its session it cannot know that it still leads, so it stops \
         now; a standby takes over and carries on its deploys (start this one again: it comes back as a standby)"
    );
    std::process::exit(LOST_LEAD);
}

/// On a standby, only reads are served: anything else is the leader's (`503` naming it; a
/// browser is redirected there).
pub async fn standby_gate(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let reads = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if leader::role() != Role::Standby || reads {
        return next.run(req).await;
    }
    let leader = leader::current(&app.store).ok().flatten().map(|l| l.url);
    let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let browser =
        req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"));
    if let (true, Some(url)) = (browser, &leader)
        && let Ok(location) = HeaderValue::from_str(&format!("{url}{path}"))
    {
        return (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response();
    }
    let at = leader.clone().unwrap_or_else(|| "(not known yet: try again in a moment)".into());
    let body = serde_json::json!({
        "error": format!("this Slipway node is a standby; the leader at {at} runs operations"),
        "fix": format!("send the request to {at} (slipctl --server retries there by itself)"),
        "leader": leader,
    });
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}
