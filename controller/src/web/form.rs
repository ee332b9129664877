//! Walle's 项目配置 in the browser: a project file as a form, grouped as Walle groups it —
//! the project, the build on the controller, the targets on each host, the rollout, each
//! environment's hosts (registered agents to tick, label selectors, and which agents match
//! now), and everything else (webhooks, notifications, drain, health, overrides) as TOML
//! beside them, so every key of the file is reachable. Hooks are one command a line, as in
//! Walle's textareas. Saving goes through `ops::projects::save`, the same validation and
//! revisions as `slipctl project apply` and the API: an error is shown at its field and nothing
//! is saved; a save made on an older revision is refused naming who changed it. A preview shows
//! the change as a diff of the file first; "save and check" runs 检测 with what was saved.
//! Maintainers of the project and admins edit; whoever may see the project reads it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect};
use maud::{Markup, html};
use toml::{Table, Value};

use super::{OrShow, PageResult, Viewer};
use crate::ops::projects;
use crate::server::App;
use crate::state::users::Role;

/// A field of the form: its name (the key's dotted path), its label, and how it is edited.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Text,
    Number,
    /// One value a line (hooks, excludes, shared paths).
    Lines,
    Check,
    Strategy,
}

/// Where the new env's fields are (`env.+new.hosts`…): no env can be named so.
const NEW_ENV: &str = "+new";

/// The structured fields, by group, in the file's terms.
const GROUPS: [(&str, &[(&str, Kind)]); 4] = [
    (
        "group_project",
        &[("repo", Kind::Text), ("default_ref", Kind::Text), ("exclude", Kind::Lines), ("keep_releases", Kind::Number)],
    ),
    ("group_build", &[("build.pre_deploy", Kind::Lines), ("build.post_deploy", Kind::Lines)]),
    (
        "group_target",
        &[
            ("target.user", Kind::Text),
            ("target.deploy_to", Kind::Text),
            ("target.current", Kind::Text),
            ("target.shared", Kind::Lines),
            ("target.pre_release", Kind::Lines),
            ("target.post_release", Kind::Lines),
            ("target.hook_timeout_secs", Kind::Number),
        ],
    ),
    (
        "group_rollout",
        &[
            ("rollout.strategy", Kind::Strategy),
            ("rollout.batch", Kind::Text),
            ("rollout.delay_secs", Kind::Number),
            ("rollout.max_failures", Kind::Number),
            ("rollout.auto_rollback", Kind::Check),
            ("rollout.canary_pause", Kind::Check),
        ],
    ),
];

/// The table at dotted `path` in `table` (made when `make`).
fn table_at<'a>(table: &'a mut Table, path: &[&str], make: bool) -> Option<&'a mut Table> {
    let mut at = table;
    for part in path {
        if make && !at.contains_key(*part) {
            at.insert((*part).to_owned(), Value::Table(Table::new()));
        }
        at = at.get_mut(*part)?.as_table_mut()?;
    }
    Some(at)
}

/// Take the value at dotted `key` out of `table`.
fn take(table: &mut Table, key: &str) -> Option<Value> {
    let parts: Vec<&str> = key.split('.').collect();
    let (last, path) = parts.split_last()?;
    let value = table_at(table, path, false)?.remove(*last);
    // (An emptied table says nothing: leave no `[build]` behind.)
    if let [only] = path
        && table_at(table, path, false).is_some_and(|t| t.is_empty())
    {
        table.remove(*only);
    }
    value
}

fn put(table: &mut Table, key: &str, value: Value) {
    let parts: Vec<&str> = key.split('.').collect();
    let Some((last, path)) = parts.split_last() else { return };
    if let Some(at) = table_at(table, path, true) {
        at.insert((*last).to_owned(), value);
    }
}

/// A value as the form shows it.
fn shown(value: Option<&Value>, kind: Kind) -> String {
    match (value, kind) {
        (None, _) => String::new(),
        (Some(Value::Array(items)), _) => {
            items.iter().map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned)).collect::<Vec<_>>().join("\n")
        }
        (Some(Value::String(s)), _) => s.clone(),
        (Some(v), _) => v.to_string(),
    }
}

/// A field's text as a TOML value (none: left out of the file). A number that does not read as
/// one is kept as text, so the project file's own check names the key.
fn value_of(text: &str, kind: Kind) -> Option<Value> {
    let text = text.trim();
    match kind {
        Kind::Check => Some(Value::Boolean(text == "yes")),
        _ if text.is_empty() => None,
        Kind::Lines => Some(Value::Array(
            text.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| Value::String(l.to_owned())).collect(),
        )),
        Kind::Number => Some(text.parse::<i64>().map_or_else(|_| Value::String(text.to_owned()), Value::Integer)),
        Kind::Text | Kind::Strategy => Some(match text.parse::<i64>() {
            Ok(n) if kind == Kind::Text && text.chars().all(|c| c.is_ascii_digit()) => Value::Integer(n),
            _ => Value::String(text.to_owned()),
        }),
    }
}

/// What the form edits of one env: the agents ticked, the selectors written, approval, canary.
struct EnvFields {
    hosts: Vec<String>,
    selectors: String,
    approval: String,
    canary: String,
}

/// The form's state: the structured fields, each env's, and the rest as TOML.
struct Fields {
    values: BTreeMap<String, String>,
    envs: BTreeMap<String, EnvFields>,
    advanced: String,
}

/// The form's fields from a project file's text (secrets masked in what is left).
fn fields_of(text: &str, agents: &[String]) -> Fields {
    let mut table: Table = text.parse().unwrap_or_default();
    table.remove("name");
    let mut values = BTreeMap::new();
    for (_, fields) in GROUPS {
        for (key, kind) in fields.iter() {
            values.insert((*key).to_owned(), shown(take(&mut table, key).as_ref(), *kind));
        }
    }
    let mut envs = BTreeMap::new();
    if let Some(Value::Table(env_tables)) = table.get_mut("env") {
        for (name, env) in env_tables.iter_mut() {
            let Some(env) = env.as_table_mut() else { continue };
            let hosts: Vec<String> = match env.remove("hosts") {
                Some(Value::Array(h)) => h.iter().filter_map(|h| h.as_str().map(str::to_owned)).collect(),
                _ => Vec::new(),
            };
            let (picked, selectors): (Vec<String>, Vec<String>) = hosts.into_iter().partition(|h| agents.contains(h));
            let approval = match env.get_mut("approval").and_then(Value::as_table_mut) {
                Some(a) => a.remove("required").map(|r| r.to_string()).unwrap_or_default(),
                None => String::new(),
            };
            if env.get("approval").and_then(Value::as_table).is_some_and(Table::is_empty) {
                env.remove("approval");
            }
            let canary = shown(env.remove("canary").as_ref(), Kind::Lines);
            envs.insert(name.clone(), EnvFields { hosts: picked, selectors: selectors.join("\n"), approval, canary });
        }
        env_tables.retain(|_, e| e.as_table().is_none_or(|t| !t.is_empty()));
    }
    if table.get("env").and_then(Value::as_table).is_some_and(Table::is_empty) {
        table.remove("env");
    }
    let advanced = if table.is_empty() { String::new() } else { projects::masked(&table.to_string()) };
    Fields { values, envs, advanced }
}

/// The project file a submitted form makes: the advanced TOML with every field put in.
fn text_of(name: &str, form: &[(String, String)]) -> Result<String, (String, String)> {
    let get = |k: &str| get(form, k);
    let mut table: Table = get("advanced")
        .parse()
        .map_err(|e: toml::de::Error| ("advanced".to_owned(), format!("advanced: not TOML: {}", e.message())))?;
    table.insert("name".into(), Value::String(name.to_owned()));
    for (_, fields) in GROUPS {
        for (key, kind) in fields.iter() {
            if let Some(v) = value_of(get(key), *kind) {
                put(&mut table, key, v);
            }
        }
    }
    // Each env: the form's hidden `envs` list, and the new env (its fields under `env.+new.`,
    // a name no env can have).
    let mut names: Vec<(String, String)> =
        form.iter().filter(|(k, _)| k == "envs").map(|(_, v)| (v.clone(), v.clone())).collect();
    let new_env = get("new_env").trim().to_owned();
    if !new_env.is_empty() && !names.iter().any(|(_, n)| *n == new_env) {
        names.push((NEW_ENV.to_owned(), new_env));
    }
    for (fields_of_env, env) in names {
        let prefix = |f: &str| format!("env.{fields_of_env}.{f}");
        let mut hosts: Vec<Value> =
            form.iter().filter(|(k, _)| *k == prefix("host")).map(|(_, v)| Value::String(v.clone())).collect();
        hosts.extend(
            value_of(get(&prefix("selectors")), Kind::Lines).and_then(|v| v.as_array().cloned()).unwrap_or_default(),
        );
        put(&mut table, &format!("env.{env}.hosts"), Value::Array(hosts));
        if let Some(v) = value_of(get(&prefix("approval")), Kind::Number) {
            put(&mut table, &format!("env.{env}.approval.required"), v);
        }
        if let Some(v) = value_of(get(&prefix("canary")), Kind::Lines) {
            put(&mut table, &format!("env.{env}.canary"), v);
        }
    }
    Ok(table.to_string())
}

/// The field an error is about: the longest form key the message names.
fn field_of(error: &str) -> Option<String> {
    let mut keys: Vec<String> = GROUPS.iter().flat_map(|(_, f)| f.iter().map(|(k, _)| (*k).to_owned())).collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
    keys.into_iter().find(|k| {
        let last = k.rsplit('.').next().unwrap_or(k);
        error.contains(k.as_str()) || error.contains(&format!("{last}:")) || error.contains(&format!("`{last}`"))
    })
}

/// What to show beside the form: a saved revision, an error at a field, a preview, a check.
#[derive(Default)]
struct Extras {
    notice: Option<Markup>,
    error: Option<(Option<String>, String, String)>,
    preview: Option<String>,
    check: Option<Markup>,
    /// A new project's name as it was typed (shown again with an error).
    new_name: String,
}

fn label_key(key: &str) -> String {
    format!("f_{}", key.replace('.', "_"))
}

#[allow(clippy::too_many_arguments)]
fn form_view(
    v: &Viewer,
    name: Option<&str>,
    revision: u64,
    fields: &Fields,
    agents: &[crate::state::store::AgentRecord],
    editable: bool,
    shown: Extras,
) -> Markup {
    let action = match name {
        Some(p) => format!("/projects/{p}/edit"),
        None => "/projects/new".to_owned(),
    };
    let err_at = |key: &str| {
        shown.error.as_ref().filter(|(f, _, _)| f.as_deref() == Some(key)).map(|(_, e, fix)| (e.clone(), fix.clone()))
    };
    let field = |key: &str, kind: Kind| -> Markup {
        let value = fields.values.get(key).cloned().unwrap_or_default();
        let id = key.replace('.', "-");
        let error = err_at(key);
        html! {
            div class=(if error.is_some() { "field invalid" } else { "field" }) {
                label for=(id) { (v.t(&label_key(key))) " " code.key { (key) } }
                @match kind {
                    Kind::Lines => { textarea id=(id) name=(key) rows="3" disabled[!editable] aria-invalid=[error.as_ref().map(|_| "true")] { (value) } }
                    Kind::Check => { input id=(id) name=(key) type="checkbox" value="yes" checked[value == "true"] disabled[!editable]; }
                    Kind::Strategy => {
                        select id=(id) name=(key) disabled[!editable] {
                            option value="" { "–" }
                            @for s in ["parallel", "serial", "batch"] { option value=(s) selected[value == s] { (v.t(s)) } }
                        }
                    }
                    _ => { input id=(id) name=(key) type="text" value=(value) disabled[!editable] aria-invalid=[error.as_ref().map(|_| "true")]; }
                }
                @if let Some((e, fix)) = error { p.error role="alert" { (e) @if !fix.is_empty() { " — " (fix) } } }
            }
        }
    };
    html! {
        @if let Some(n) = shown.notice { div.notice role="status" { (n) } }
        @if let Some((None, e, fix)) = &shown.error { div.error role="alert" { (e) @if !fix.is_empty() { " — " (fix) } } }
        @if !editable { p.muted.readonly { (v.t("read_only")) } }
        form.panel.project-form method="post" action=(action) {
            input type="hidden" name="csrf_token" value=(v.csrf());
            input type="hidden" name="revision" value=(revision);
            @if name.is_none() {
                div.field { label for="name" { (v.t("f_name")) " " code.key { "name" } } input #name name="name" type="text" required value=(shown.new_name); }
            }
            @for (group, fs) in GROUPS {
                fieldset { legend { (v.t(group)) } @for (key, kind) in fs.iter() { (field(key, *kind)) } }
            }
            @for (env, e) in &fields.envs {
                fieldset.env data-env=(env) {
                    legend { (v.t("group_env")) " " code { (env) } }
                    input type="hidden" name="envs" value=(env);
                    (env_fields(v, env, e, agents, editable))
                }
            }
            @if editable {
                fieldset.env {
                    legend { (v.t("new_env")) }
                    div.field { label for="new_env" { (v.t("f_env_name")) } input #new_env name="new_env" type="text" pattern="[a-z0-9_-]*"; }
                    (env_fields(v, NEW_ENV, &EnvFields { hosts: vec![], selectors: String::new(), approval: String::new(), canary: String::new() }, agents, true))
                }
            }
            fieldset {
                legend { (v.t("group_more")) }
                @let error = err_at("advanced");
                div class=(if error.is_some() { "field invalid" } else { "field" }) {
                    label for="advanced" { (v.t("f_advanced")) }
                    textarea #advanced name="advanced" rows="10" disabled[!editable] { (fields.advanced) }
                    @if let Some((e, _)) = error { p.error role="alert" { (e) } }
                }
            }
            @if editable {
                div.buttons {
                    button type="submit" name="action" value="preview" { (v.t("preview")) }
                    button.primary type="submit" name="action" value="save" { (v.t("save")) }
                    @if name.is_some() { button type="submit" name="action" value="save_check" { (v.t("save_check")) } }
                }
            }
        }
        @if let Some(diff) = shown.preview {
            section.panel.preview { h2 { (v.t("preview")) } pre.diff { (diff) } }
        }
        @if let Some(check) = shown.check { (check) }
    }
}

/// One env's hosts (agents to tick, selectors, and the agents they match now), approvals, canary.
fn env_fields(
    v: &Viewer,
    env: &str,
    e: &EnvFields,
    agents: &[crate::state::store::AgentRecord],
    editable: bool,
) -> Markup {
    use slipway_common::config::HostSelector;
    let selectors: Vec<HostSelector> = e
        .selectors
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter_map(|l| HostSelector::parse(l).ok())
        .collect();
    let matched: Vec<&str> = agents
        .iter()
        .filter(|a| {
            selectors.iter().any(|s| match s {
                HostSelector::Name(n) => *n == a.name,
                HostSelector::Label { key, value } => a.labels.get(key) == Some(value),
            })
        })
        .map(|a| a.name.as_str())
        .collect();
    let key = |f: &str| format!("env.{env}.{f}");
    html! {
        div.field {
            span.label { (v.t("f_hosts")) }
            ul.agents-pick { @for a in agents { li {
                label { input type="checkbox" name=(key("host")) value=(a.name) checked[e.hosts.contains(&a.name)] disabled[!editable];
                    " " (a.name) " " span.muted { (a.addr) " " (a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")) } }
            } } }
        }
        div.field {
            label for=(key("selectors")) { (v.t("f_selectors")) }
            textarea id=(key("selectors")) name=(key("selectors")) rows="2" disabled[!editable] { (e.selectors) }
            @if !e.selectors.is_empty() { p.muted.matches { (v.t("matches_now")) ": " @if matched.is_empty() { "–" } @else { (matched.join(", ")) } } }
        }
        div.field {
            label for=(key("approval")) { (v.t("f_approval")) }
            input id=(key("approval")) name=(key("approval")) type="text" value=(e.approval) disabled[!editable];
        }
        div.field {
            label for=(key("canary")) { (v.t("f_canary")) }
            textarea id=(key("canary")) name=(key("canary")) rows="1" disabled[!editable] { (e.canary) }
        }
    }
}

fn agents_of(app: &App, v: &Viewer) -> Result<Vec<crate::state::store::AgentRecord>, super::Shown> {
    app.store.agents().or_show(v)
}

/// `GET /projects/{p}/edit`: the form, read-only to whoever may only see the project.
pub async fn edit_page(State(app): State<Arc<App>>, v: Viewer, Path(p): Path<String>) -> PageResult {
    let record = app
        .store
        .project(&p)
        .or_show(&v)?
        .ok_or_else(|| {
            crate::server::error::ApiError::not_found(format!("unknown project '{p}'"), "the dashboard lists them")
        })
        .or_show(&v)?;
    let config = slipway_common::config::ProjectConfig::parse(&record.text, &p)
        .map_err(crate::error::CtlError::from)
        .or_show(&v)?;
    if !v.caller.maintains(&p) && !config.envs.keys().any(|e| v.caller.allows(&p, e, Role::Viewer)) {
        return Err(v.fail(crate::server::error::ApiError::not_found(
            format!("unknown project '{p}'"),
            "the dashboard lists them",
        )));
    }
    let agents = agents_of(&app, &v)?;
    let names: Vec<String> = agents.iter().map(|a| a.name.clone()).collect();
    let fields = fields_of(&record.text, &names);
    let revisions = app.store.revisions(&p).or_show(&v)?;
    Ok(page(&v, &p, record.revision, &fields, &agents, Extras::default(), &revisions))
}

/// The project's revisions, newest first: who, when, what; each one's change as a diff, and
/// (maintainers) a revert to it.
fn history(v: &Viewer, p: &str, revisions: &[crate::state::revisions::Revision], editable: bool) -> Markup {
    html! {
        section.panel.revisions {
            h2 { (v.t("revisions")) }
            ol.revisions reversed {
                @for r in revisions.iter().rev() {
                    li data-revision=(r.n) {
                        strong { (v.t("revision")) " " (r.n) } " · " (r.by) " · " (super::when(r.at))
                        @if !r.note.is_empty() { " · " em { (r.note) } }
                        @if r.n > 1 { " " a href={ "/projects/" (p) "/revisions/" (r.n) } { (v.t("what_changed")) } }
                        @if editable && Some(r.n) != revisions.last().map(|l| l.n) {
                            (v.button(&format!("/projects/{p}/revert"), v.t("revert_to"), "small", html! {
                                input type="hidden" name="revision" value=(r.n);
                            }))
                        }
                    }
                }
            }
        }
    }
}

/// `GET /projects/{p}/revisions/{n}`: what revision N changed (a diff from N-1; secrets masked).
pub async fn revision_page(State(app): State<Arc<App>>, v: Viewer, Path((p, n)): Path<(String, u64)>) -> PageResult {
    let this = projects::revision(&app.store, &p, n).or_show(&v)?;
    let before = match n.checked_sub(1).filter(|b| *b > 0) {
        Some(b) => projects::revision(&app.store, &p, b).or_show(&v)?.text,
        None => String::new(),
    };
    let diff = projects::diff(
        &projects::masked(&before),
        &projects::masked(&this.text),
        &format!("revision {}", n.saturating_sub(1)),
        &format!("revision {n}"),
    );
    let body = html! {
        p.crumbs { a href={ "/projects/" (p) "/edit" } { (v.t("project_settings")) " " (p) } }
        h1 { (v.t("revision")) " " (n) " · " (this.by) " · " (super::when(this.at)) }
        @if !this.note.is_empty() { p { em { (this.note) } } }
        section.panel.preview { pre.diff { (diff) } }
    };
    Ok(v.page(&format!("{p} {} {n}", v.t("revision")), body))
}

#[derive(serde::Deserialize)]
pub struct RevertForm {
    #[serde(default)]
    revision: u64,
}

/// `POST /projects/{p}/revert` (maintainers): revision N saved again as the newest.
pub async fn revert(
    State(app): State<Arc<App>>,
    v: Viewer,
    Path(p): Path<String>,
    Form(f): Form<RevertForm>,
) -> PageResult {
    projects::revert(&app.store, &p, f.revision, &v.caller.name).or_show(&v)?;
    Ok(Redirect::to(&format!("/projects/{p}/edit")).into_response())
}

fn page(
    v: &Viewer,
    p: &str,
    revision: u64,
    fields: &Fields,
    agents: &[crate::state::store::AgentRecord],
    shown: Extras,
    revisions: &[crate::state::revisions::Revision],
) -> axum::response::Response {
    let editable = v.caller.maintains(p);
    let body = html! {
        p.crumbs { a href="/" { (v.t("dashboard")) } }
        h1 { (v.t("project_settings")) " " code { (p) } " " span.muted { (v.t("revision")) " " (revision) } }
        (form_view(v, Some(p), revision, fields, agents, editable, shown))
        (history(v, p, revisions, editable))
    };
    v.page(&format!("{} {p}", v.t("project_settings")), body)
}

/// `GET /projects/new` (admins): an empty form.
pub async fn new_page(State(app): State<Arc<App>>, v: Viewer) -> PageResult {
    let agents = agents_of(&app, &v)?;
    let fields = Fields { values: BTreeMap::new(), envs: BTreeMap::new(), advanced: String::new() };
    let body = html! {
        p.crumbs { a href="/" { (v.t("dashboard")) } }
        h1 { (v.t("new_project")) }
        (form_view(&v, None, 0, &fields, &agents, true, Extras::default()))
    };
    Ok(v.page(v.t("new_project"), body))
}

fn get<'a>(form: &'a [(String, String)], key: &str) -> &'a str {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).unwrap_or("")
}

/// `POST /projects/{p}/edit` (maintainers): preview, save, or save and check.
pub async fn edit(
    State(app): State<Arc<App>>,
    v: Viewer,
    Path(p): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> PageResult {
    let record = app
        .store
        .project(&p)
        .or_show(&v)?
        .ok_or_else(|| {
            crate::server::error::ApiError::not_found(format!("unknown project '{p}'"), "the dashboard lists them")
        })
        .or_show(&v)?;
    submit(&app, &v, Some(record), &p, &form).await
}

/// `POST /projects/new` (admins).
pub async fn create(State(app): State<Arc<App>>, v: Viewer, Form(form): Form<Vec<(String, String)>>) -> PageResult {
    let name = get(&form, "name").trim().to_owned();
    submit(&app, &v, None, &name, &form).await
}

async fn submit(
    app: &Arc<App>,
    v: &Viewer,
    record: Option<crate::state::store::ProjectRecord>,
    name: &str,
    form: &[(String, String)],
) -> PageResult {
    let agents = agents_of(app, v)?;
    let names: Vec<String> = agents.iter().map(|a| a.name.clone()).collect();
    let base: u64 = get(form, "revision").parse().unwrap_or(0);
    let action = get(form, "action");
    let revisions = app.store.revisions(name).unwrap_or_default();
    let again = |text: &str, shown: Extras| -> axum::response::Response {
        let fields = fields_of(text, &names);
        match &record {
            Some(r) => page(v, name, r.revision.max(base), &fields, &agents, shown, &revisions),
            None => {
                let shown = Extras { new_name: name.to_owned(), ..shown };
                let body = html! { h1 { (v.t("new_project")) } (form_view(v, None, 0, &fields, &agents, true, shown)) };
                v.page(v.t("new_project"), body)
            }
        }
    };
    let text = match text_of(name, form) {
        Ok(t) => t,
        Err((field, e)) => {
            let fields = Fields { advanced: get(form, "advanced").to_owned(), ..fields_of("", &names) };
            let shown =
                Extras { error: Some((Some(field), e, String::new())), new_name: name.to_owned(), ..Extras::default() };
            let body = html! { (form_view(v, record.as_ref().map(|_| name), base, &fields, &agents, true, shown)) };
            return Ok((axum::http::StatusCode::BAD_REQUEST, v.page(v.t("project_settings"), body)).into_response());
        }
    };
    if action == "preview" {
        let before = record.as_ref().map(|r| projects::masked(&r.text)).unwrap_or_default();
        let diff = projects::diff(&before, &projects::masked(&text), &format!("revision {base}"), "this change");
        return Ok(again(&text, Extras { preview: Some(diff), ..Extras::default() }));
    }
    let source = match &record {
        Some(r) => r.source_file.clone(),
        None => app.home.root.join("projects").join(format!("{name}.toml")),
    };
    let save = projects::Save {
        text: &text,
        source_file: &source,
        by: &v.caller.name,
        base: record.as_ref().map(|_| base),
        create: record.is_none(),
        note: "",
    };
    match projects::save(&app.store, save) {
        Err(e) => {
            let status = crate::server::error::ApiError::from(e.clone()).status;
            let shown = Extras {
                error: Some((field_of(&e.problem), e.problem.clone(), e.fix.clone().unwrap_or_default())),
                ..Extras::default()
            };
            Ok((status, again(&text, shown)).into_response())
        }
        Ok((saved, _)) if action == "save_check" => {
            let env = slipway_common::config::ProjectConfig::parse(&saved.text, name)
                .ok()
                .and_then(|c| c.envs.keys().next().cloned())
                .unwrap_or_default();
            let rows = crate::engine::start_check(app.home.clone(), name.to_owned(), env, None, Default::default())
                .finish(|_| {})
                .await
                .or_show(v)?;
            let shown = Extras {
                notice: Some(html! { (v.t("saved_as")) " " (saved.revision) }),
                check: Some(super::project::check_table(v, &rows)),
                ..Extras::default()
            };
            let revisions = app.store.revisions(name).or_show(v)?;
            Ok(page(v, name, saved.revision, &fields_of(&saved.text, &names), &agents, shown, &revisions))
        }
        Ok((saved, _)) => Ok(Redirect::to(&format!("/projects/{}/edit", saved.name)).into_response()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_file_round_trips_through_the_form() {
        let text = "name = \"a\"\nrepo = \"/srv/a.git\"\nkeep_releases = 3\n\
                    [target]\ndeploy_to = \"/d/{host}\"\npre_release = [\"one\", \"two\"]\n\
                    [rollout]\nstrategy = \"serial\"\ncanary_pause = true\n[rollout.drain]\ncommand = { drain = [\"x\"], undrain = [\"y\"] }\n\
                    [env.test]\nhosts = [\"web-1\", \"role=web\"]\napproval = { required = 2 }\nconfig_dir = \"c\"\n\
                    [[notify]]\nkind = \"slack\"\nurl = \"https://h\"\nsecret = \"s\"\n";
        let fields = fields_of(text, &["web-1".to_owned()]);
        assert_eq!(fields.values["target.pre_release"], "one\ntwo");
        assert_eq!(fields.values["rollout.canary_pause"], "true");
        assert_eq!(fields.envs["test"].hosts, ["web-1"]);
        assert_eq!(fields.envs["test"].selectors, "role=web");
        assert_eq!(fields.envs["test"].approval, "2");
        assert!(
            fields.advanced.contains("config_dir") && fields.advanced.contains("[[notify]]"),
            "{}",
            fields.advanced
        );
        assert!(
            !fields.advanced.contains("secret = \"s\"") && !fields.advanced.contains("pre_release"),
            "{}",
            fields.advanced
        );
        // Submitted back as it was shown: the same file (the masked secret is restored on save).
        let mut form: Vec<(String, String)> = fields.values.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        form.retain(|(k, v)| !(k.starts_with("rollout.") && k.ends_with("pause") && v != "true"));
        form.iter_mut().filter(|(k, _)| k == "rollout.canary_pause").for_each(|(_, v)| *v = "yes".into());
        form.push(("advanced".into(), fields.advanced.clone()));
        form.push(("envs".into(), "test".into()));
        form.push(("env.test.host".into(), "web-1".into()));
        form.push(("env.test.selectors".into(), "role=web".into()));
        form.push(("env.test.approval".into(), "2".into()));
        let back = text_of("a", &form).unwrap();
        let again: Table = back.parse().unwrap();
        let original: Table = projects::masked(text).parse().unwrap();
        assert_eq!(again.get("target"), original.get("target"));
        assert_eq!(again["env"]["test"]["hosts"], original["env"]["test"]["hosts"]);
        assert_eq!(again["env"]["test"]["approval"], original["env"]["test"]["approval"]);
        assert_eq!(again.get("notify"), original.get("notify"));
        assert_eq!(again["rollout"]["canary_pause"], Value::Boolean(true));
    }

    #[test]
    fn every_field_and_group_has_both_languages() {
        use crate::web::i18n::Lang;
        for (group, fields) in GROUPS {
            for key in std::iter::once(group.to_owned()).chain(fields.iter().map(|(k, _)| label_key(k))) {
                assert!(Lang::En.t(&key) != "?" && Lang::Zh.t(&key) != "?", "{key}");
            }
        }
    }

    #[test]
    fn an_error_is_placed_at_the_field_it_names() {
        assert_eq!(field_of("a.toml: keep_releases: invalid type").as_deref(), Some("keep_releases"));
        assert_eq!(field_of("target.hook_timeout_secs: invalid value").as_deref(), Some("target.hook_timeout_secs"));
        assert_eq!(field_of("something else entirely"), None);
    }
}
