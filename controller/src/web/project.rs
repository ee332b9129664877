//! A project's env: its hosts (reachable, agent version, certificate days left, from the last
//! probe), what each host runs now and what it keeps (asked of the agents as the page renders),
//! Walle's 检测 check with its table of results and fixes, rollback to the previous or a chosen
//! retained release after a confirmation that names what changes on which hosts, and the env's
//! recent deploys and tickets.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{OrShow, PageResult, Viewer, short, status, when};
use crate::engine::RollbackArgs;
use crate::engine::client::Timeouts;
use crate::engine::select::RollbackTo;
use crate::ops::runs::{self, Begun, Op};
use crate::server::App;
use crate::state::users::Role;

/// How long the page waits for an agent's answer about its releases.
const ASK_SECS: u64 = 5;

/// Per host: what it runs and keeps, or why it did not answer.
async fn releases(
    app: &App,
    scope: &crate::engine::Scope,
) -> crate::error::Result<Vec<(String, Result<Value, String>)>> {
    let keep = scope.settings.keep_releases;
    let answers =
        crate::engine::rollback::query_releases(scope, app.home.client_tls()?, Timeouts::host(ASK_SECS)).await;
    Ok(answers
        .into_iter()
        .map(|(agent, answer)| {
            let doc = answer.map_err(|e| e.to_string()).map(|(_, reply)| {
                let mut releases = crate::engine::select::releases_json(&reply, keep);
                releases.reverse(); // newest first
                json!({"current": reply.current, "releases": releases})
            });
            (agent.name, doc)
        })
        .collect())
}

/// `GET /projects/{p}/envs/{e}`.
pub async fn page(State(app): State<Arc<App>>, v: Viewer, Path((p, e)): Path<(String, String)>) -> PageResult {
    view(&app, &v, &p, &e, None).await
}

async fn view(app: &App, v: &Viewer, p: &str, e: &str, check: Option<Markup>) -> PageResult {
    let scope = crate::engine::load_scope(&app.home, p, e, None).or_show(v)?;
    let hosts = releases(app, &scope).await.or_show(v)?;
    let settings = &scope.settings;
    let probes = app.probes.all();
    let now = slipway_common::time::unix_now();
    let deployer = v.caller.allows(p, e, Role::Deployer);
    let direct_rollback =
        deployer && (settings.approval.required == 0 || !settings.approval.rollback || v.caller.admin);
    let base = format!("/projects/{p}/envs/{e}");
    let mut retained = BTreeSet::new();
    for (_, r) in &hosts {
        if let Ok(doc) = r {
            for rel in doc["releases"].as_array().into_iter().flatten() {
                if rel["current"] != true {
                    let label = format!(
                        "{} · {} {}",
                        rel["id"].as_str().unwrap_or(""),
                        rel["git_ref"].as_str().unwrap_or(""),
                        short(rel["commit"].as_str().unwrap_or(""))
                    );
                    retained.insert((rel["id"].as_str().unwrap_or("").to_owned(), label));
                }
            }
        }
    }
    let deploys = app.store.deploys(Some(p), Some(e), 10).or_show(v)?;
    let frozen: Vec<_> =
        crate::ops::freezes::list(&app.store, Some(p)).or_show(v)?.into_iter().filter(|f| f.env == e).collect();
    let maintainer = v.caller.maintains(p);
    let tickets: Vec<_> =
        app.store.tickets().or_show(v)?.into_iter().filter(|t| t.project == p && t.env == e).take(10).collect();
    let body = html! {
        p.crumbs { a href="/" { (v.t("dashboard")) } }
        h1 { (p) " / " (e) }
        dl.facts.inline {
            dt { (v.t("default_ref")) } dd { code { (settings.default_ref) } }
            dt { (v.t("strategy")) } dd { (v.t(strategy_key(settings.rollout.strategy))) }
            dt { (v.t("keep")) } dd { (settings.keep_releases) }
            dt { (v.t("approvals")) } dd { (settings.approval.required) }
            @if let Some(from) = &settings.promote_from { dt { (v.t("promote_only")) } dd { (from) } }
        }
        div.actions {
            @if deployer {
                a.button.primary href={ (base) "/tickets/new" } {
                    @match &settings.promote_from {
                        Some(from) => { (v.t("promote_button")) " " (from) }
                        None => { (v.t("new_ticket")) }
                    }
                }
            }
            (v.button(&format!("{base}/check"), v.t("check"), "", html! {}))
            a.button href={ "/projects/" (p) "/edit" } { (v.t("edit_project")) }
            @if deployer {
                form.action.maintenance method="post" action={ (base) "/maintenance" } {
                    input type="hidden" name="csrf_token" value=(v.csrf());
                    input type="text" name="message" aria-label=(v.t("maintenance_message")) placeholder=(v.t("maintenance_message"));
                    button type="submit" name="on" value="1" { (v.t("maintenance_on")) }
                    button type="submit" name="on" value="0" { (v.t("maintenance_off")) }
                }
            }
        }
        @if let Some(c) = check { (c) }
        @if !settings.windows.is_empty() || !frozen.is_empty() || maintainer {
            section.panel.freezes {
                h2 { (v.t("freezes")) }
                @if !settings.windows.is_empty() {
                    p { (v.t("windows")) ": " @for w in &settings.windows { code { (w.text) } " " } }
                }
                @if !frozen.is_empty() {
                    ul {
                        @for f in &frozen {
                            li {
                                strong { (when(f.from)) " → " (when(f.until)) } " " (f.reason) " — " (v.t("frozen_by")) " " (f.by)
                                @if maintainer { (v.button(&format!("{base}/freezes/{}/lift", f.id), v.t("lift"), "", html! {})) }
                            }
                        }
                    }
                }
                @if maintainer {
                    form.action.freeze method="post" action={ (base) "/freezes" } {
                        input type="hidden" name="csrf_token" value=(v.csrf());
                        label for="until" { (v.t("until")) }
                        input #until name="until" type="text" required placeholder="3d | 2026-12-26 00:00 Asia/Shanghai";
                        label for="reason" { (v.t("reason")) }
                        input #reason name="reason" type="text" required maxlength="500";
                        button.danger type="submit" { (v.t("freeze_env")) }
                    }
                }
            }
        }
        section.panel {
            h2 { (v.t("hosts")) }
            div.scroll {
                table.hosts {
                    thead { tr {
                        th scope="col" { (v.t("host")) } th scope="col" { (v.t("reachable")) } th scope="col" { (v.t("version")) }
                        th scope="col" { (v.t("cert_days")) } th scope="col" { (v.t("current")) } th scope="col" { (v.t("retained")) }
                    } }
                    tbody {
                        @for (host, r) in &hosts {
                            @let probe = probes.get(host);
                            tr data-host=(host) {
                                th scope="row" { (host) }
                                td { @match probe {
                                    Some(pr) if pr.reachable => { (status(v.lang, "reachable")) }
                                    Some(_) => { (status(v.lang, "unreachable")) }
                                    None => { span.muted { (v.t("not_probed")) } }
                                } }
                                td { (probe.and_then(|pr| pr.version.clone()).unwrap_or_else(|| "–".into())) }
                                td { @match probe.and_then(|pr| pr.cert_not_after) {
                                    Some(t) => { @let days = (t - now) / 86400; span class=(if days < 14 { "status bad" } else { "" }) { (days) } }
                                    None => { "–" }
                                } }
                                @match r {
                                    Ok(doc) => {
                                        td { code { (doc["current"].as_str().filter(|c| !c.is_empty()).unwrap_or("–")) } }
                                        td { ul.releases {
                                            @for rel in doc["releases"].as_array().into_iter().flatten().filter(|r| r["current"] != true) {
                                                li { code { (rel["id"].as_str().unwrap_or("")) } " " span.muted { (why_kept(v, rel)) } }
                                            }
                                        } }
                                    }
                                    Err(err) => { td colspan="2" { span.status.bad { "✗ " } (err) } }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if direct_rollback {
            section.panel {
                h2 { (v.t("rollback")) }
                form.action.rollback method="post" action={ (base) "/rollback" } {
                    input type="hidden" name="csrf_token" value=(v.csrf());
                    label for="to" { (v.t("rollback_to")) }
                    select #to name="to" {
                        option value="" { (v.t("previous")) }
                        @for (id, label) in &retained { option value=(id) { (label) } }
                    }
                    button.danger type="submit" { (v.t("rollback")) "…" }
                }
            }
        }
        section.panel {
            h2 { (v.t("recent")) }
            div.scroll { table {
                thead { tr { th scope="col" { "#" } th scope="col" { (v.t("kind")) } th scope="col" { (v.t("ref")) } th scope="col" { (v.t("status")) } th scope="col" { (v.t("who")) } th scope="col" { (v.t("started")) } } }
                tbody { @for d in &deploys { tr {
                    td { (super::deploy_link(v.lang, d.id)) }
                    td { (v.t(super::kind_key(d))) }
                    td { @if !d.commit.is_empty() { code { (d.git_ref) } " " code { (short(&d.commit)) } } }
                    td { (status(v.lang, d.effective_status().word())) }
                    td { (d.user) } td { (when(d.started_at)) }
                } } }
            } }
            @if !tickets.is_empty() {
                h3 { (v.t("tickets")) }
                ul.tickets { @for t in &tickets { li { (super::ticket_link(v.lang, t.id)) " " (t.title) " " (status(v.lang, t.state.word())) } } }
            }
        }
    };
    Ok(v.page(&format!("{p} / {e}"), body))
}

#[derive(Default, Deserialize)]
pub struct CheckForm {
    #[serde(rename = "ref", default)]
    git_ref: String,
}

/// `POST /projects/{p}/envs/{e}/check`: Walle's 检测, its table on the env's page.
pub async fn check(
    State(app): State<Arc<App>>,
    v: Viewer,
    Path((p, e)): Path<(String, String)>,
    Form(f): Form<CheckForm>,
) -> PageResult {
    let git_ref = Some(f.git_ref.trim().to_owned()).filter(|r| !r.is_empty());
    let rows = crate::engine::start_check(app.home.clone(), p.clone(), e.clone(), git_ref, Default::default())
        .finish(|_| {})
        .await
        .or_show(&v)?;
    view(&app, &v, &p, &e, Some(check_table(&v, &rows))).await
}

/// 检测's table: one row per host and item, with the result, the detail and the fix.
pub fn check_table(v: &Viewer, rows: &[crate::engine::check::CheckRow]) -> Markup {
    let ok = rows.iter().all(|r| r.ok);
    html! {
        section.panel.check #check {
            h2 { (v.t("check")) " " (status(v.lang, if ok { "passed" } else { "failed" })) }
            div.scroll { table {
                thead { tr { th scope="col" { (v.t("host")) } th scope="col" { (v.t("check_item")) } th scope="col" { (v.t("result")) } th scope="col" { (v.t("detail")) } th scope="col" { (v.t("fix_col")) } } }
                tbody { @for r in rows { tr class=(if r.ok { "" } else { "bad" }) {
                    td { (r.host) } td { (r.check) }
                    td { (status(v.lang, if r.ok { "ok" } else { "failed" })) }
                    td { (r.detail) } td { (r.fix) }
                } } }
            } }
        }
    }
}

#[derive(Default, Deserialize)]
pub struct RollbackForm {
    #[serde(default)]
    to: String,
    #[serde(default)]
    confirm: String,
}

/// `POST /projects/{p}/envs/{e}/rollback`: the confirmation first; confirmed, the rollback
/// starts and its page shows it.
pub async fn rollback(
    State(app): State<Arc<App>>,
    v: Viewer,
    Path((p, e)): Path<(String, String)>,
    Form(f): Form<RollbackForm>,
) -> PageResult {
    let to = f.to.trim();
    if f.confirm != "yes" {
        let question = format!("{} {p} / {e}", v.t("rollback"));
        let to = Some(to).filter(|t| !t.is_empty());
        return confirm(&app, &v, &p, &e, to, &format!("/projects/{p}/envs/{e}/rollback"), &question).await;
    }
    let to = Some(to).filter(|t| !t.is_empty()).map(RollbackTo::parse).transpose().or_show(&v)?;
    let args = RollbackArgs { project: p, env: e, to, hosts: None, user: Some(v.caller.name.clone()) };
    match runs::begin(&app.core, Op::Rollback(args), None).await.or_show(&v)? {
        Begun::Started(n) => Ok(Redirect::to(&format!("/deploys/{n}")).into_response()),
        Begun::Planned(d) => Ok(Redirect::to(&format!("/deploys/{}", d.id)).into_response()),
    }
}

#[derive(Deserialize)]
pub struct MaintenanceForm {
    on: String,
    #[serde(default)]
    message: String,
}

/// `POST /projects/{p}/envs/{e}/maintenance`: every host's page up or down, then the env page.
pub async fn maintenance(
    State(app): State<Arc<App>>,
    v: Viewer,
    Path((p, e)): Path<(String, String)>,
    Form(f): Form<MaintenanceForm>,
) -> PageResult {
    let by = crate::ops::audit::Actor::of(&v.caller);
    let answers = crate::engine::maintenance::set(&app.home, &by, &p, &e, f.on == "1", &f.message).await.or_show(&v)?;
    if let Some((host, Err(why))) = answers.iter().find(|(_, a)| a.is_err()) {
        return Err(crate::error::CtlError::failed(format!("maintenance on {host}: {why}"))).or_show(&v);
    }
    Ok(Redirect::to(&format!("/projects/{p}/envs/{e}")).into_response())
}

#[derive(Deserialize)]
pub struct FreezeForm {
    until: String,
    reason: String,
}

/// `POST /projects/{p}/envs/{e}/freezes`: freeze the env, then show its page.
pub async fn freeze(
    State(app): State<Arc<App>>,
    v: Viewer,
    Path((p, e)): Path<(String, String)>,
    Form(f): Form<FreezeForm>,
) -> PageResult {
    let now = slipway_common::time::unix_now();
    let until = slipway_common::time::parse_when(&f.until, now)
        .map_err(|why| crate::error::CtlError::bad(why).fix("3d, or 2026-12-26 00:00 Asia/Shanghai"))
        .or_show(&v)?;
    crate::ops::freezes::create(&app.store, &v.caller.name, &p, &e, None, until, &f.reason).or_show(&v)?;
    Ok(Redirect::to(&format!("/projects/{p}/envs/{e}")).into_response())
}

/// `POST /projects/{p}/envs/{e}/freezes/{id}/lift`.
pub async fn lift(State(app): State<Arc<App>>, v: Viewer, Path((p, e, id)): Path<(String, String, u64)>) -> PageResult {
    let ours = app.store.freeze(id).or_show(&v)?.is_some_and(|f| f.project == p && f.env == e);
    if !ours {
        return Err(crate::error::CtlError::not_found(format!("{p}/{e} has no freeze {id}"))).or_show(&v);
    }
    crate::ops::freezes::lift(&app.store, &v.caller.name, id).or_show(&v)?;
    Ok(Redirect::to(&format!("/projects/{p}/envs/{e}")).into_response())
}

/// The confirmation of a rollback of (p, e) to `to` (none: each host's previous release):
/// what changes on which hosts, as the hosts answer now, and the button that posts `confirm`.
pub async fn confirm(
    app: &App,
    v: &Viewer,
    p: &str,
    e: &str,
    to: Option<&str>,
    action: &str,
    question: &str,
) -> PageResult {
    let target = to.map(RollbackTo::parse).transpose().or_show(v)?;
    let args = RollbackArgs { project: p.to_owned(), env: e.to_owned(), to: target, hosts: None, user: None };
    let changes = crate::engine::rollback::preview(&app.home, &args).await.or_show(v)?;
    let body = html! {
        section.panel.confirm {
            h1 { (question) }
            p { (v.t("confirm_changes")) }
            table {
                thead { tr { th scope="col" { (v.t("host")) } th scope="col" { (v.t("current")) } th scope="col" { "→" } } }
                tbody { @for (host, from, goes) in &changes { tr {
                    th scope="row" { (host) } td { code { (from) } } td { code { (goes.to_string()) } }
                } } }
            }
            (v.button(action, v.t("confirm_rollback"), "danger", html! {
                input type="hidden" name="confirm" value="yes";
                input type="hidden" name="to" value=(to.unwrap_or(""));
            }))
            p { a href={ "/projects/" (p) "/envs/" (e) } { (v.t("back")) } }
        }
    };
    Ok(v.page(question, body))
}

/// The label of a rollout strategy.
fn strategy_key(strategy: slipway_common::config::Strategy) -> &'static str {
    use slipway_common::config::Strategy;
    match strategy {
        Strategy::Parallel => "parallel",
        Strategy::Serial => "serial",
        Strategy::Batch => "batch",
    }
}

/// Why a retained release is kept, in the viewer's language: English has the engine's words
/// (with the numbers in them), other languages the label of its reason.
fn why_kept(v: &Viewer, rel: &serde_json::Value) -> String {
    let words = rel["why"].as_str().unwrap_or("");
    match (v.lang, rel["kept"].as_str()) {
        (crate::web::i18n::Lang::En, _) | (_, None | Some("kept" | "current")) => words.to_owned(),
        (_, Some(key)) => {
            let label = v.t(match key {
                "rollback_target" => "why_rollback_target",
                "beyond_keep" => "why_beyond_keep",
                "rolled_back" => "why_rolled_back",
                _ => "why_never_activated",
            });
            label.to_owned()
        }
    }
}
