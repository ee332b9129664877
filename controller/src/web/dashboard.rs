//! The dashboard: the projects × envs grid the caller may see. Each cell shows the release
//! the hosts run (the spread when they differ), a deploy under way with its progress, the last
//! deploy and the last ticket; cells update live (one `fragment` event per changed cell).

use std::sync::Arc;

use axum::extract::{Query, State};
use maud::{Markup, html};
use serde_json::Value;

use super::i18n::Lang;
use super::live::{self, EventStream, Fragments};
use super::{OrShow, PageResult, Viewer, status};
use crate::server::App;
use crate::server::auth::Caller;

pub async fn page(State(app): State<Arc<App>>, v: Viewer) -> PageResult {
    let live = live::url("/live/dashboard");
    let cells = crate::ops::views::dashboard_cells(&app.core, &v.caller).or_show(&v)?;
    let body = html! {
        h1 { (v.t("dashboard")) }
        @if v.caller.admin { p.actions { a.button href="/projects/new" { (v.t("new_project")) } } }
        @if cells.is_empty() { p.empty { (v.t("no_projects")) } }
        div.grid data-live=(live) {
            @for cell in &cells { (cell_view(v.lang, &v.caller, cell)) }
        }
    };
    Ok(v.page(v.t("dashboard"), body))
}

/// `GET /live/dashboard`: a cell's new markup each time it changes.
pub async fn live(State(app): State<Arc<App>>, v: Viewer, Query(q): Query<live::Since>) -> EventStream {
    let caller = v.caller.clone();
    live::fragments(app, &caller, q.since, move |app| cells(app, &v))
}

/// The cells as the viewer may see them now (grants revoked since the page opened count).
fn cells(app: &App, v: &Viewer) -> Option<Fragments> {
    let caller = crate::server::auth::refreshed(&app.store, &v.caller)?;
    let cells = crate::ops::views::dashboard_cells(&app.core, &caller).ok()?;
    Some(cells.iter().map(|c| (key(c), cell_view(v.lang, &caller, c).into_string())).collect())
}

fn key(cell: &Value) -> String {
    format!("{}/{}", cell["project"].as_str().unwrap_or(""), cell["env"].as_str().unwrap_or(""))
}

pub fn cell_view(lang: Lang, caller: &Caller, cell: &Value) -> Markup {
    let releases = cell["releases"].as_object().cloned().unwrap_or_default();
    let (project, env) = (cell["project"].as_str().unwrap_or(""), cell["env"].as_str().unwrap_or(""));
    let href = format!("/projects/{project}/envs/{env}");
    let deployer = caller.allows(project, env, crate::state::users::Role::Deployer);
    html! {
        article.cell data-key=(key(cell)) data-project=(project) data-env=(env) {
            header {
                h2 { a href=(href) { (project) } }
                span.env { (env) }
            }
            dl {
                dt { (lang.t("release")) }
                dd.releases {
                    @if releases.is_empty() { span.muted { (lang.t("no_hosts")) } }
                    @for (release, n) in &releases {
                        div.release { strong { (n) } " " (lang.t("hosts_on")) " " code { (release) } }
                    }
                }
                @if let Some(r) = cell["running"].as_object() {
                    @let (done, hosts) = (r["done"].as_u64().unwrap_or(0), r["hosts"].as_u64().unwrap_or(0));
                    dt { (lang.t("running")) }
                    dd.running {
                        (super::deploy_link(lang, &r["id"])) " " (status(lang, r["status"].as_str().unwrap_or("")))
                        " " (done) "/" (hosts)
                        progress max=(hosts.max(1)) value=(done) aria-label=(lang.t("running")) {}
                    }
                }
                @if let Some(d) = cell["last_deploy"].as_object() {
                    dt { (lang.t("last_deploy")) }
                    dd {
                        (super::deploy_link(lang, &d["id"]))
                        @if d["kind"] == "rollback" { " " (lang.t("rollback")) }
                        " " (status(lang, d["status"].as_str().unwrap_or("")))
                    }
                }
                @if let Some(t) = cell["last_ticket"].as_object() {
                    dt { (lang.t("last_ticket")) }
                    dd { (super::ticket_link(lang, &t["id"])) " " (t["title"].as_str().unwrap_or("")) " " (status(lang, t["state"].as_str().unwrap_or(""))) }
                }
            }
            @if deployer {
                p.cell-actions { a.button href={ (href) "/tickets/new" } { (lang.t("new_ticket")) } }
            }
        }
    }
}
