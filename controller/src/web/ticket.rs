//! Tickets in the browser (Walle's 上线单): the new-ticket page with its ref picker (recent
//! branches, the last 10 tags, the last 50 commits with subject, author and time, and the
//! commit the choice resolves to), the ticket page (state, approvals, the actions the caller's
//! grants allow, the latest deploy's panes, live), and the actions as forms. The actions are
//! the same functions the API calls (`server::tickets`); the middleware has checked the role.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

use super::live::{self, EventStream, Fragments};
use super::{OrShow, PageResult, Viewer, short, status, when};
use crate::ops::tickets::{self as ops, NewTicket};
use crate::server::App;
use crate::state::tickets::{TicketKind, TicketRecord, TicketState};
use crate::state::users::Role;

fn ticket_of(app: &App, v: &Viewer, id: u64) -> Result<TicketRecord, super::Shown> {
    app.store.ticket(id).or_show(v)?.ok_or_else(|| ops::unknown(id)).or_show(v)
}

/// What the caller may do to `t` now.
struct Allowed {
    approve: bool,
    deploy: bool,
    cancel: bool,
    rollback: bool,
}

fn allowed(v: &Viewer, t: &TicketRecord) -> Allowed {
    let c = &v.caller;
    let deployer = c.allows(&t.project, &t.env, Role::Deployer);
    use TicketState::*;
    Allowed {
        approve: c.allows(&t.project, &t.env, Role::Approver)
            && t.state == Pending
            && !t.interested().contains(&c.principal.as_str())
            && !t.approvals.iter().any(|a| a.principal() == c.principal),
        deploy: deployer && matches!(t.state, Approved | Failed | Interrupted),
        cancel: deployer && matches!(t.state, Pending | Approved | Deploying),
        rollback: deployer
            && t.kind == TicketKind::Deploy
            && !t.deploys.is_empty()
            && matches!(t.state, Succeeded | Failed | Interrupted),
    }
}

/// The deploy of `t` that waits for a person after its canary, if any.
fn paused(app: &App, t: &TicketRecord) -> Option<u64> {
    let n = *t.deploys.last()?;
    let d = app.store.deploy(n).ok()??;
    (d.status == crate::state::store::DeployStatus::Paused).then_some(n)
}

/// The ticket's facts, approvals, history and actions (sent again live when any of it changes).
fn head(v: &Viewer, t: &TicketRecord, paused: Option<u64>) -> Markup {
    let may = allowed(v, t);
    let base = format!("/tickets/{}", t.id);
    html! {
        div.ticket-head data-key="head" {
            div.summary {
                (status(v.lang, t.state.word()))
                dl.facts {
                    dt { (v.t("env")) } dd { a href={ "/projects/" (t.project) "/envs/" (t.env) } { (t.project) " / " (t.env) } }
                    @if t.kind == TicketKind::Rollback {
                        dt { (v.t("restores")) }
                        dd { @match &t.restores { Some(r) => { code { (r) } } None => { (v.t("their_previous")) } } }
                    } @else if let Some(b) = &t.build {
                        dt { (v.t("build")) }
                        dd {
                            code.digest { (b.sha256) } " · " (b.provenance())
                            @if let Some(n) = t.from_deploy { " · " a href={ "/deploys/" (n) } { "#" (n) } }
                        }
                    } @else {
                        dt { (v.t("ref")) } dd { code { (t.git_ref) } " → " code.commit { (short(&t.commit)) } " " (t.commit_summary) }
                    }
                    dt { (v.t("requester")) } dd { (t.requester) " · " (when(t.created.at)) }
                    @if let Some(st) = &t.start {
                        dt { (v.t("starts")) }
                        dd {
                            @if let Some(at) = st.at { (when(at)) " " span.countdown data-until=(at) {} }
                            @if let Some(e) = st.expires { " · " (v.t("until")) " " (when(e)) }
                            @if let Some(w) = &st.waiting { p.muted { (v.t("waiting")) ": " (w) } }
                        }
                    }
                    @if let Some(of) = t.rollback_of { dt { (v.t("rolls_back")) } dd { (super::ticket_link(v.lang, of)) } }
                    dt { (v.t("approvals")) }
                    dd { @if t.required == 0 { (v.t("not_required")) } @else { (t.approvals.len()) " / " (t.required) } }
                }
                @if !t.description.is_empty() { p.description { (t.description) } }
            }
            @if !t.approvals.is_empty() {
                ul.approvals {
                    @for a in &t.approvals {
                        li { span.status.ok { "✓ " } strong { (a.audit.by) } " " (when(a.audit.at)) @if !a.comment.is_empty() { " — " (a.comment) } }
                    }
                }
            }
            div.actions {
                @if let Some(n) = paused.filter(|_| v.caller.allows(&t.project, &t.env, Role::Deployer)) {
                    (super::panes::decide_buttons(v, n, &base))
                }
                @if may.approve {
                    form.action.approve method="post" action={ (base) "/approve" } {
                        input type="hidden" name="csrf_token" value=(v.csrf());
                        label for="comment" { (v.t("comment")) }
                        textarea #comment name="comment" rows="2" {}
                        div.buttons {
                            button.primary type="submit" { (v.t("approve")) }
                            button.danger type="submit" formaction={ (base) "/reject" } { (v.t("reject")) }
                        }
                    }
                }
                @if may.deploy { (v.button(&format!("{base}/deploy"), v.t("deploy"), "primary", html! {})) }
                @if may.cancel { (v.button(&format!("{base}/cancel"), v.t("cancel"), "", html! {})) }
                @if may.rollback { (v.button(&format!("{base}/rollback"), v.t("rollback"), "danger", html! {})) }
            }
            details.timeline {
                summary { (v.t("timeline")) " (" (t.transitions.len()) ")" }
                ol {
                    @for tr in &t.transitions {
                        li { (when(tr.audit.at)) " " (status(v.lang, tr.state.word())) " " (tr.audit.by)
                             @if !tr.comment.is_empty() { " — " (tr.comment) } }
                    }
                }
            }
        }
    }
}

fn deploys_key(t: &TicketRecord) -> String {
    t.deploys.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// `GET /tickets/{id}`.
pub async fn page(State(app): State<Arc<App>>, v: Viewer, Path(id): Path<u64>) -> PageResult {
    let live = live::url(&format!("/tickets/{id}/live"));
    let t = ticket_of(&app, &v, id)?;
    let latest = match t.deploys.last() {
        Some(&n) => app.store.deploy(n).or_show(&v)?,
        None => None,
    };
    let hosts: Vec<String> = crate::engine::load_scope(&app.home, &t.project, &t.env, None)
        .map(|s| s.hosts.iter().map(|a| a.name.clone()).collect())
        .unwrap_or_default();
    let panes = match &latest {
        Some(d) => Some(super::panes::panes(&app, v.lang, d, &hosts).or_show(&v)?.0),
        None => None,
    };
    let body = html! {
        div data-live=(live) data-deploys=(deploys_key(&t)) {
            p.crumbs { a href={ "/projects/" (t.project) "/envs/" (t.env) } { (t.project) " / " (t.env) } }
            h1 { (title(&v, &t)) }
            @if latest.is_none() && !hosts.is_empty() {
                p.will-touch { (v.t("will_touch")) ": " @for (i, h) in hosts.iter().enumerate() { @if i > 0 { ", " } code { (h) } } }
            }
            (head(&v, &t, paused(&app, &t)))
            @if let Some(d) = &latest {
                h2 { @if d.kind == crate::state::store::DeployKind::Rollback { (v.t("rollback")) " · " } (super::deploy_link(v.lang, d.id)) }
                @if t.deploys.len() > 1 {
                    p.muted { (v.t("earlier")) ": "
                        @for n in &t.deploys[..t.deploys.len() - 1] { (super::deploy_link(v.lang, *n)) " " } }
                }
            }
            @if let Some(p) = panes { (p) }
        }
    };
    Ok(v.page(&format!("#{} {}", t.id, t.title), body))
}

/// `GET /tickets/{id}/live`: the ticket's head when it changes; `reload` when it starts
/// another deploy (its panes are new).
pub async fn live(
    State(app): State<Arc<App>>,
    v: Viewer,
    Path(id): Path<u64>,
    Query(q): Query<live::Since>,
) -> EventStream {
    let caller = v.caller.clone();
    live::fragments(app, &caller, q.since, move |app| {
        // As the viewer stands now: a grant revoked since the page opened ends the stream.
        let caller = crate::server::auth::refreshed(&app.store, &v.caller)?;
        let v = Viewer { lang: v.lang, caller };
        let t = app.store.ticket(id).ok()??;
        if !v.caller.allows(&t.project, &t.env, Role::Viewer) {
            return None;
        }
        let mut f = Fragments::new();
        f.insert("head".into(), head(&v, &t, paused(app, &t)).into_string());
        f.insert(format!("deploys:{}", deploys_key(&t)), String::new());
        Some(f)
    })
}

/// `GET /projects/{p}/envs/{e}/tickets/new`: title, description, and the ref picker.
pub async fn new_page(State(app): State<Arc<App>>, v: Viewer, Path((p, e)): Path<(String, String)>) -> PageResult {
    let scope = crate::engine::load_scope(&app.home, &p, &e, None).or_show(&v)?;
    let url = crate::engine::scope::repo_url(&scope.project, &scope.settings);
    let mirror = crate::source::git::mirror_path(&app.home.cache(), &p);
    crate::source::vcs::fetch(&scope.settings, &url, &mirror).await.or_show(&v)?;
    let picker = crate::source::vcs::picker(&scope.settings, &url, &mirror).await.or_show(&v)?;
    let default_ref = scope.settings.default_ref.clone();
    // The builds the other envs run, to promote instead of building a ref (only those, when
    // this env takes only what ran in its promote_from env).
    let config = slipway_common::config::ProjectConfig::parse(&scope.project.text, "project")
        .map_err(crate::error::CtlError::from)
        .or_show(&v)?;
    let promote_from = scope.settings.promote_from.clone();
    let store = crate::state::store::Store::open(&app.home.state()).or_show(&v)?;
    let sources: Vec<(String, crate::state::store::DeployRecord)> = config
        .envs
        .keys()
        .filter(|other| **other != e && promote_from.as_ref().is_none_or(|f| f == *other))
        .filter_map(|other| {
            let d = crate::engine::origin::running_deploy(&store, &p, other).ok()??;
            d.built.is_some().then(|| (other.clone(), d))
        })
        .collect();
    let body = html! {
        p.crumbs { a href={ "/projects/" (p) "/envs/" (e) } { (p) " / " (e) } }
        h1 { (v.t("new_ticket")) }
        form.panel.ticket-form method="post" action={ "/projects/" (p) "/envs/" (e) "/tickets" } {
            input type="hidden" name="csrf_token" value=(v.csrf());
            label for="title" { (v.t("title_field")) }
            input #title name="title" type="text" required maxlength="200";
            label for="description" { (v.t("description")) }
            textarea #description name="description" rows="3" {}
            @if let Some(from) = &promote_from {
                p.muted { (v.t("promote_only")) " " strong { (from) } }
            } @else {
                label for="ref" { (v.t("ref_pick")) }
                select #ref name="ref" {
                    (options(&v, &picker, &default_ref))
                }
                p.resolves aria-live="polite" { (v.t("resolves")) " " code #resolved {} " " span #resolved-subject {} }
            }
            @if !sources.is_empty() {
                label for="from" { (v.t(if promote_from.is_some() { "promote_pick" } else { "promote_from" })) }
                select #from name="from" {
                    @if promote_from.is_none() { option value="" selected { (v.t("build_the_ref")) } }
                    @for (other, d) in &sources {
                        @let b = d.built.as_ref().expect("filtered");
                        option value=(other) {
                            (other) " — #" (d.id) " · " (short(&b.sha256)) " · " (b.provenance())
                        }
                    }
                }
            } @else if let Some(from) = &promote_from {
                p.problem { (v.t("nothing_to_promote")) " " (from) }
            }
            @if scope.settings.approval.required > 0 {
                p.muted { (v.t("needs_approval")) " " (scope.settings.approval.required) }
            }
            button.primary type="submit" { (v.t("create")) }
        }
    };
    Ok(v.page(v.t("new_ticket"), body))
}

fn options(v: &Viewer, picker: &Value, default_ref: &str) -> Markup {
    let list = |k: &str| picker[k].as_array().cloned().unwrap_or_default();
    // (The time is the server's UTC in the text, and its seconds in `data-ts`: the script
    // shows it in the viewer's zone, as every other time on the pages.)
    let ts = |c: &Value| c["time"].as_i64().unwrap_or(0);
    let utc = |c: &Value| slipway_common::time::format_utc(ts(c));
    let label = |c: &Value| {
        let time = utc(c);
        format!(
            "{} · {} · {} · {}",
            short(c["commit"].as_str().unwrap_or("")),
            c["subject"].as_str().unwrap_or(""),
            c["author"].as_str().unwrap_or(""),
            time
        )
    };
    html! {
        optgroup label=(v.t("branches")) {
            @for b in list("branches") {
                @let name = b["name"].as_str().unwrap_or("");
                option value=(name) selected[name == default_ref] data-commit=(b["commit"].as_str().unwrap_or("")) data-subject=(b["subject"].as_str().unwrap_or("")) data-ts=(ts(&b)) data-utc=(utc(&b)) {
                    (name) " — " (label(&b))
                }
            }
        }
        optgroup label=(v.t("tags")) {
            @for t in list("tags") {
                option value=(t["name"].as_str().unwrap_or("")) data-commit=(t["commit"].as_str().unwrap_or("")) data-subject=(t["subject"].as_str().unwrap_or("")) data-ts=(ts(&t)) data-utc=(utc(&t)) {
                    (t["name"].as_str().unwrap_or("")) " — " (label(&t))
                }
            }
        }
        optgroup label=(v.t("commits")) {
            @for c in list("commits") {
                option value=(c["commit"].as_str().unwrap_or("")) data-commit=(c["commit"].as_str().unwrap_or("")) data-subject=(c["subject"].as_str().unwrap_or("")) data-ts=(ts(&c)) data-utc=(utc(&c)) {
                    (label(&c))
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct TicketForm {
    #[serde(default)]
    title: String,
    #[serde(default)]
    description: String,
    #[serde(rename = "ref", default)]
    git_ref: String,
    /// An env whose build to promote (empty: build the ref).
    #[serde(default)]
    from: String,
}

/// `POST /projects/{p}/envs/{e}/tickets`: make the ticket, then show it.
pub async fn create(
    State(app): State<Arc<App>>,
    v: Viewer,
    Path((p, e)): Path<(String, String)>,
    Form(f): Form<TicketForm>,
) -> PageResult {
    let from = Some(f.from.trim().to_owned()).filter(|r| !r.is_empty());
    let git_ref = Some(f.git_ref.trim().to_owned()).filter(|r| !r.is_empty() && from.is_none());
    let new = NewTicket {
        project: p,
        env: e,
        git_ref,
        title: f.title,
        description: f.description,
        from,
        ..Default::default()
    };
    let t = ops::create(&app.core, &v.caller, new, ops::audit(&v.caller), None).await.or_show(&v)?;
    Ok(Redirect::to(&format!("/tickets/{}", t.id)).into_response())
}

#[derive(Deserialize)]
pub struct CommentForm {
    #[serde(default)]
    comment: String,
}

fn back(id: u64) -> axum::response::Response {
    Redirect::to(&format!("/tickets/{id}")).into_response()
}

pub async fn approve(
    State(app): State<Arc<App>>,
    v: Viewer,
    Path(id): Path<u64>,
    Form(f): Form<CommentForm>,
) -> PageResult {
    ops::approve(&app.core, &v.caller, id, &f.comment, true).or_show(&v)?;
    Ok(back(id))
}

pub async fn reject(
    State(app): State<Arc<App>>,
    v: Viewer,
    Path(id): Path<u64>,
    Form(f): Form<CommentForm>,
) -> PageResult {
    ops::approve(&app.core, &v.caller, id, &f.comment, false).or_show(&v)?;
    Ok(back(id))
}

pub async fn deploy(State(app): State<Arc<App>>, v: Viewer, Path(id): Path<u64>) -> PageResult {
    ops::deploy(&app.core, &v.caller, id).await.or_show(&v)?;
    Ok(back(id))
}

pub async fn cancel(State(app): State<Arc<App>>, v: Viewer, Path(id): Path<u64>) -> PageResult {
    ops::cancel(&app.core, &v.caller, id).or_show(&v)?;
    Ok(back(id))
}

#[derive(Deserialize)]
pub struct ConfirmForm {
    #[serde(default)]
    confirm: String,
}

/// `POST /tickets/{id}/rollback`: first a confirmation naming what changes on which hosts;
/// confirmed, the rollback ticket is made (and started unless the env asks approval for it).
pub async fn rollback(
    State(app): State<Arc<App>>,
    v: Viewer,
    Path(id): Path<u64>,
    Form(f): Form<ConfirmForm>,
) -> PageResult {
    let t = ticket_of(&app, &v, id)?;
    if f.confirm != "yes" {
        let action = format!("/tickets/{id}/rollback");
        let question = format!("{} #{} {}", v.t("rollback"), t.id, t.title);
        return super::project::confirm(&app, &v, &t.project, &t.env, None, &action, &question).await;
    }
    let (rollback, _) = ops::rollback(&app.core, &v.caller, id).await.or_show(&v)?;
    Ok(back(rollback.id))
}

/// A ticket's heading in the viewer's language: `Ticket #5 ship v2`, and for a rollback
/// ticket `Roll back ticket #6: #5 ship v2` (its stored title is the English one).
fn title(v: &Viewer, t: &TicketRecord) -> String {
    match t.rollback_of {
        Some(of) if t.kind == TicketKind::Rollback => {
            let original = t.title.strip_prefix(&format!("roll back #{of}: ")).unwrap_or(&t.title);
            format!("{} #{}: #{of} {original}", v.t("roll_back_ticket"), t.id)
        }
        _ => format!("{} #{} {}", v.t("ticket"), t.id, t.title),
    }
}
