//! History (filtered by project, env, outcome and who), agents (what the last probe found), and
//! users with their grants (admins: grant and revoke here).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Form;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect};
use maud::html;
use serde::Deserialize;

use super::{OrShow, PageResult, Viewer, short, status, when};
use crate::server::App;
use crate::state::users::Role;

#[derive(Default, Deserialize)]
pub struct HistoryQuery {
    #[serde(default)]
    project: String,
    #[serde(default)]
    env: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    who: String,
}

/// Every (project, env) the viewer may see.
fn visible_pairs(app: &App, v: &Viewer) -> Result<Vec<(String, String)>, super::Shown> {
    let visible = crate::ops::views::visible_envs(&app.core, &v.caller).or_show(v)?;
    Ok(visible.into_iter().flat_map(|(p, envs)| envs.into_iter().map(move |e| (p.name.clone(), e))).collect())
}

/// How many deploys the history page lists at most.
const HISTORY_ROWS: usize = 200;

/// `GET /history`.
pub async fn history(State(app): State<Arc<App>>, v: Viewer, Query(q): Query<HistoryQuery>) -> PageResult {
    let pick = |s: &str| Some(s.trim()).filter(|s| !s.is_empty()).map(str::to_owned);
    let (project, env, outcome, who) = (pick(&q.project), pick(&q.env), pick(&q.outcome), pick(&q.who));
    let rows = app
        .store
        .deploys_where(HISTORY_ROWS, |d| {
            v.caller.allows(&d.project, &d.env, Role::Viewer)
                && project.as_ref().is_none_or(|p| *p == d.project)
                && env.as_ref().is_none_or(|e| *e == d.env)
                && outcome.as_ref().is_none_or(|o| o == d.effective_status().word())
                && who.as_ref().is_none_or(|w| *w == d.user)
        })
        .or_show(&v)?;
    // The choices: every project and env the caller may see, whoever appears in the rows shown
    // (tokens and the OS users of local deploys too), and for an admin every user.
    let pairs = visible_pairs(&app, &v)?;
    let projects: BTreeSet<String> = pairs.iter().map(|(p, _)| p.clone()).collect();
    let envs: BTreeSet<String> = pairs.iter().map(|(_, e)| e.clone()).collect();
    let mut people: BTreeSet<String> = if v.caller.admin {
        app.store.users().or_show(&v)?.into_iter().map(|u| u.name).collect()
    } else {
        BTreeSet::new()
    };
    people.extend(rows.iter().map(|d| d.user.clone()));
    people.extend(who.clone());
    let ticket_of: BTreeMap<u64, u64> =
        app.store.tickets().or_show(&v)?.iter().flat_map(|t| t.deploys.iter().map(move |d| (*d, t.id))).collect();
    let outcomes =
        ["succeeded", "failed", "rolled_back", "cancelled", "interrupted", "incomplete", "running", "paused"];
    let select = |name: &str, label: &str, values: &BTreeSet<String>, chosen: &Option<String>| {
        html! {
            label for=(name) { (label) }
            select #(name) name=(name) {
                option value="" { (v.t("any")) }
                @for val in values { option value=(val) selected[chosen.as_deref() == Some(val.as_str())] { (val) } }
            }
        }
    };
    let body = html! {
        h1 { (v.t("history")) }
        form.filters method="get" action="/history" {
            (select("project", v.t("project"), &projects, &project))
            (select("env", v.t("env"), &envs, &env))
            label for="outcome" { (v.t("outcome")) }
            select #outcome name="outcome" {
                option value="" { (v.t("any")) }
                @for o in outcomes { option value=(o) selected[outcome.as_deref() == Some(o)] { (v.t(o)) } }
            }
            (select("who", v.t("who"), &people, &who))
            button type="submit" { (v.t("filter")) }
        }
        @if rows.is_empty() { p.empty { (v.t("no_history")) } }
        div.scroll { table.history {
            thead { tr {
                th scope="col" { "#" } th scope="col" { (v.t("kind")) } th scope="col" { (v.t("env")) }
                th scope="col" { (v.t("ref")) } th scope="col" { (v.t("release")) } th scope="col" { (v.t("status")) }
                th scope="col" { (v.t("hosts")) } th scope="col" { (v.t("who")) } th scope="col" { (v.t("started")) } th scope="col" { (v.t("ticket")) }
            } }
            tbody { @for d in &rows { tr {
                td { (super::deploy_link(v.lang, d.id)) }
                td { (v.t(super::kind_key(d))) }
                td { (d.project) " / " (d.env) }
                td { @if !d.commit.is_empty() { code { (d.git_ref) } " " code { (short(&d.commit)) } } }
                td { @if let Some(r) = &d.release { code { (r.to_string()) } } }
                td { (status(v.lang, d.effective_status().word())) }
                td { (d.hosts.iter().filter(|h| h.ok).count()) "/" (d.hosts.len()) }
                td { (d.user) }
                td { (when(d.started_at)) }
                td { @if let Some(t) = ticket_of.get(&d.id) { (super::ticket_link(v.lang, t)) } }
            } } }
        } }
    };
    Ok(v.page(v.t("history"), body))
}

/// `GET /agents`.
pub async fn agents(State(app): State<Arc<App>>, v: Viewer) -> PageResult {
    agents_view(&app, &v, None)
}

#[derive(Deserialize)]
pub struct JoinTokenForm {
    #[serde(default)]
    name: String,
    /// `k=v` pairs, separated by commas or spaces.
    #[serde(default)]
    labels: String,
    #[serde(default)]
    ttl: String,
}

/// `POST /agents/token` (admins): a one-time join token, and the command to run on the host,
/// shown on this page once.
pub async fn join_token(State(app): State<Arc<App>>, v: Viewer, Form(f): Form<JoinTokenForm>) -> PageResult {
    let labels: Vec<String> = f.labels.split([',', ' ']).filter(|l| !l.trim().is_empty()).map(str::to_owned).collect();
    let ttl = slipway_common::time::parse_duration(if f.ttl.is_empty() { "30m" } else { &f.ttl })
        .map_err(crate::error::CtlError::bad)
        .or_show(&v)?;
    let (token, text) =
        crate::ops::joins::create_token(&app.store, f.name.trim(), &labels, None, ttl, &v.caller.name).or_show(&v)?;
    let pin = crate::ops::joins::ca_pin(&app.home).or_show(&v)?;
    let url = app.join.as_ref().map(|j| j.url.clone()).unwrap_or_else(|| "https://CONTROLLER:PORT".into());
    let command = crate::ops::joins::join_command(&url, &text, &pin);
    let notice = html! {
        (v.t("join_token_made")) " " strong { (token.name) } " (" (v.t("expires")) " " (when(token.expires_at)) "). "
        (v.t("run_on_host")) pre.command { code { (command) } }
        @if app.join.is_none() { p.error { (v.t("no_join_listen")) } }
    };
    agents_view(&app, &v, Some(notice))
}

#[derive(Deserialize)]
pub struct NameForm {
    #[serde(default)]
    name: String,
}

/// `POST /agents/evict` (admins).
pub async fn evict(State(app): State<Arc<App>>, v: Viewer, Form(f): Form<NameForm>) -> PageResult {
    crate::ops::joins::evict(&app.store, &f.name, &v.caller.name).or_show(&v)?;
    Ok(Redirect::to("/agents").into_response())
}

fn agents_view(app: &App, v: &Viewer, notice: Option<maud::Markup>) -> PageResult {
    let agents = crate::ops::views::visible_agents(&app.core, &v.caller).or_show(v)?;
    let probes = app.probes.all();
    let now = slipway_common::time::unix_now();
    let body = html! {
        h1 { (v.t("agents")) }
        @if let Some(n) = notice { div.notice role="status" { (n) } }
        div.scroll { table.agents {
            thead { tr {
                th scope="col" { (v.t("host")) } th scope="col" { (v.t("address")) } th scope="col" { (v.t("reachable")) }
                th scope="col" { (v.t("version")) } th scope="col" { (v.t("cert_days")) } th scope="col" { (v.t("checked")) } th scope="col" { (v.t("detail")) }
            } }
            tbody { @for a in &agents {
                @let p = probes.get(&a.name);
                tr {
                    th scope="row" { (a.name) }
                    td { code { (a.addr) } }
                    td { @match p { Some(p) if p.reachable => { (status(v.lang, "reachable")) } Some(_) => { (status(v.lang, "unreachable")) } None => { span.muted { (v.t("not_probed")) } } } }
                    td { (p.and_then(|p| p.version.clone()).unwrap_or_default()) }
                    td { @if let Some(t) = p.and_then(|p| p.cert_not_after) { ((t - now) / 86400) } }
                    td { @if let Some(p) = p { (when(p.checked_at)) } }
                    td {
                        @if let Some(problem) = crate::ops::joins::trust_problem(a) { div.error { (problem) } }
                        @if let Some(e) = p.and_then(|p| p.error.clone()) { span.error { (e) } }
                        @for t in p.map(|p| p.broken_targets.clone()).unwrap_or_default() { div.error { (t) } }
                        @if v.caller.admin && a.trust.evicted.is_none() {
                            (v.button("/agents/evict", v.t("evict"), "small", html! { input type="hidden" name="name" value=(a.name); }))
                        }
                    }
                }
            } }
        } }
        @if v.caller.admin {
            section.panel {
                h2 { (v.t("add_host")) }
                p.muted { (v.t("add_host_help")) }
                (v.button("/agents/token", v.t("make_join_token"), "primary", html! {
                    label for="j-name" { (v.t("host")) }
                    input #j-name name="name" type="text" required pattern="[A-Za-z0-9._-]+" maxlength="63";
                    label for="j-labels" { (v.t("labels")) }
                    input #j-labels name="labels" type="text" placeholder="role=web zone=a";
                    label for="j-ttl" { (v.t("valid_for")) }
                    select #j-ttl name="ttl" { option value="30m" { "30 min" } option value="2h" { "2 h" } option value="1d" { "1 d" } }
                }))
            }
        }
    };
    Ok(v.page(v.t("agents"), body))
}

/// `GET /users` (admins): users, their grants with a revoke button each, a grant form, and
/// adding and removing users.
pub async fn users(State(app): State<Arc<App>>, v: Viewer) -> PageResult {
    users_view(&app, &v, None)
}

fn users_view(app: &App, v: &Viewer, notice: Option<maud::Markup>) -> PageResult {
    let users = app.store.users().or_show(v)?;
    // Each env, and each project's `*` (every env: where a maintainer is granted).
    let mut pairs = visible_pairs(app, v)?;
    let projects: std::collections::BTreeSet<String> = pairs.iter().map(|(p, _)| p.clone()).collect();
    pairs.extend(projects.into_iter().map(|p| (p, "*".to_owned())));
    pairs.sort();
    let body = html! {
        h1 { (v.t("users")) }
        @if let Some(n) = notice { div.notice role="status" { (n) } }
        div.scroll { table.users {
            thead { tr { th scope="col" { (v.t("user")) } th scope="col" { (v.t("admin")) } th scope="col" { (v.t("grants")) } th scope="col" { span.sr { (v.t("remove")) } } } }
            tbody { @for u in &users { tr data-user=(u.name) {
                th scope="row" { (u.name) @if let Some(c) = &u.company { " " span.badge title=(c.subject) { (c.via) } } }
                td { @if u.admin { (status(v.lang, "yes")) } }
                td { ul.grants { @for g in &u.grants { li {
                    code { (g.project) "/" (g.env) } " " (v.t(g.role.word()))
                    @if u.company.is_none() {
                        (v.button("/users/revoke", v.t("revoke"), "small", html! {
                            input type="hidden" name="user" value=(u.name);
                            input type="hidden" name="pair" value={ (g.project) "/" (g.env) };
                            input type="hidden" name="role" value=(g.role.word());
                        }))
                    }
                } } } }
                td {
                    @if u.company.is_none() {
                        (v.button("/users/password", v.t("reset_password"), "small", html! { input type="hidden" name="user" value=(u.name); }))
                    }
                    @if u.name != v.caller.name {
                        (v.button("/users/remove", v.t("remove"), "small", html! { input type="hidden" name="user" value=(u.name); }))
                    }
                }
            } } }
        } }
        section.panel {
            h2 { (v.t("add_user")) }
            (v.button("/users/add", v.t("add_user"), "primary", html! {
                label for="u-name" { (v.t("user")) }
                input #u-name name="name" type="text" required pattern="[A-Za-z0-9._-]+" maxlength="64";
                label for="u-admin" { input #u-admin name="admin" type="checkbox" value="yes"; " " (v.t("admin")) }
            }))
        }
        section.panel {
            h2 { (v.t("grant")) }
            (v.button("/users/grant", v.t("grant"), "primary", html! {
                label for="g-user" { (v.t("user")) }
                select #g-user name="user" { @for u in &users { option value=(u.name) { (u.name) } } }
                label for="g-pair" { (v.t("env")) }
                select #g-pair name="pair" { @for (p, e) in &pairs {
                    option value={ (p) "/" (e) } { (p) " / " @if e == "*" { (v.t("all_envs")) } @else { (e) } }
                } }
                label for="g-role" { (v.t("role")) }
                select #g-role name="role" { @for r in ["viewer", "deployer", "approver", "maintainer"] { option value=(r) { (v.t(r)) } } }
            }))
        }
    };
    Ok(v.page(v.t("users"), body))
}

#[derive(Deserialize)]
pub struct AddUserForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    admin: String,
}

/// `POST /users/add`: a new user with a generated password, shown on this page once.
pub async fn add_user(State(app): State<Arc<App>>, v: Viewer, Form(f): Form<AddUserForm>) -> PageResult {
    let password = crate::ops::secrets::random_hex()[..20].to_owned();
    let admin = f.admin == "yes";
    crate::ops::users::add_user(&app.store, &crate::ops::audit::Actor::of(&v.caller), f.name.trim(), admin, &password)
        .or_show(&v)?;
    let notice = html! { (v.t("added")) " " strong { (f.name.trim()) } ". " (v.t("password_once")) " " code.password { (password) } };
    users_view(&app, &v, Some(notice))
}

#[derive(Deserialize)]
pub struct UserForm {
    #[serde(default)]
    user: String,
}

/// `POST /users/remove`: the user and their sessions go (not oneself: that is the CLI's job).
pub async fn remove_user(State(app): State<Arc<App>>, v: Viewer, Form(f): Form<UserForm>) -> PageResult {
    if f.user == v.caller.name {
        return Err(v.fail(crate::server::error::ApiError::conflict(
            format!("{} cannot remove themselves here", f.user),
            format!("another admin can, or `slipctl user rm {}` on the server", f.user),
        )));
    }
    crate::ops::users::remove_user(&app.store, &crate::ops::audit::Actor::of(&v.caller), &f.user).or_show(&v)?;
    Ok(Redirect::to("/users").into_response())
}

#[derive(Deserialize)]
pub struct GrantForm {
    #[serde(default)]
    user: String,
    /// `project/env`.
    #[serde(default)]
    pair: String,
    #[serde(default)]
    role: String,
}

fn grant_parts(v: &Viewer, f: &GrantForm) -> Result<(String, String, Role), super::Shown> {
    let role = Role::parse(&f.role).or_show(v)?;
    let (p, e) = f
        .pair
        .split_once('/')
        .ok_or_else(|| {
            crate::server::error::ApiError::bad(format!("'{}' is not project/env", f.pair), "pick an env from the list")
        })
        .or_show(v)?;
    Ok((p.to_owned(), e.to_owned(), role))
}

pub async fn grant(State(app): State<Arc<App>>, v: Viewer, Form(f): Form<GrantForm>) -> PageResult {
    let (p, e, role) = grant_parts(&v, &f)?;
    crate::ops::users::grant(&app.store, &crate::ops::audit::Actor::of(&v.caller), &f.user, &p, &e, role)
        .or_show(&v)?;
    Ok(Redirect::to("/users").into_response())
}

pub async fn revoke(State(app): State<Arc<App>>, v: Viewer, Form(f): Form<GrantForm>) -> PageResult {
    let (p, e, role) = grant_parts(&v, &f)?;
    crate::ops::users::revoke(&app.store, &crate::ops::audit::Actor::of(&v.caller), &f.user, &p, &e, role)
        .or_show(&v)?;
    Ok(Redirect::to("/users").into_response())
}

/// `POST /users/password` (admins): a generated password for a user, shown once; their
/// sessions end.
pub async fn reset_password(State(app): State<Arc<App>>, v: Viewer, Form(f): Form<UserForm>) -> PageResult {
    let password = crate::ops::secrets::random_hex()[..20].to_owned();
    crate::ops::users::set_password(&app.store, &crate::ops::audit::Actor::of(&v.caller), &f.user, &password, None)
        .or_show(&v)?;
    let notice = html! { (v.t("password_reset")) " " strong { (f.user) } ". " (v.t("password_once")) " " code.password { (password) } };
    users_view(&app, &v, Some(notice))
}

/// `GET /account`: who is logged in, and a form to change one's password.
pub async fn account(v: Viewer) -> PageResult {
    account_view(&v, None)
}

fn account_view(v: &Viewer, notice: Option<maud::Markup>) -> PageResult {
    let body = html! {
        h1 { (v.t("account")) " · " (v.caller.name) }
        @if let Some(n) = notice { div.notice role="status" { (n) } }
        section.panel {
            h2 { (v.t("change_password")) }
            (v.button("/account/password", v.t("change_password"), "primary", html! {
                label for="pw-current" { (v.t("current_password")) }
                input #pw-current name="current" type="password" autocomplete="current-password" required;
                label for="pw-new" { (v.t("new_password")) }
                input #pw-new name="new" type="password" autocomplete="new-password" required minlength="8";
            }))
        }
    };
    Ok(v.page(v.t("account"), body))
}

#[derive(Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    current: String,
    #[serde(default)]
    new: String,
}

/// `POST /account/password`: the logged-in user's new password; their other sessions end.
pub async fn change_password(State(app): State<Arc<App>>, v: Viewer, Form(f): Form<PasswordForm>) -> PageResult {
    crate::server::admin::change_own_password(&app, &v.caller, &f.current, &f.new).await.or_show(&v)?;
    account_view(&v, Some(html! { (v.t("password_changed")) }))
}
