//! A deploy's journal as one pane per host: steps, upload and unpack progress, every hook line
//! (stderr marked), failures in red with a ✗, the outcome. The same function renders an event
//! for a finished deploy's replay and for the live stream, so both read alike.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::sse::Event as SseEvent;
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::i18n::Lang;
use super::live::{EventStream, stream};
use super::{OrShow, PageResult, Viewer, short, status, when};
use crate::server::App;
use crate::server::api::unknown_deploy;
use axum::Form;
use axum::response::IntoResponse;

use crate::state::store::{Decision, DeployRecord, DeployStatus};
use crate::state::users::Role;

/// What one journal event changes on the page.
#[derive(Debug, Default, PartialEq)]
pub struct Piece {
    /// The host's pane (none: the controller's own pane).
    pub host: Option<String>,
    /// A line (or a chunk of hook output) to append.
    pub line: Option<String>,
    /// The pane's progress bar: percent and what it counts.
    pub progress: Option<(u8, String)>,
    /// The pane's state word, as markup.
    pub state: Option<String>,
    /// The hosts of the deploy, in plan order (panes are made for them).
    pub hosts: Vec<String>,
    /// The outcome, as markup.
    pub outcome: Option<String>,
}

fn secs(ms: &Value) -> String {
    format!("{:.1} s", ms.as_u64().unwrap_or(0) as f64 / 1000.0)
}

fn size(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1048576 => format!("{:.0} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1048576.0),
    }
}

fn pct(done: u64, total: u64) -> u8 {
    (done.min(total) * 100).checked_div(total).map_or(100, |p| p as u8)
}

fn line(class: &str, mark: &str, text: Markup) -> String {
    html! { div class={ "line " (class) } { span.mark aria-hidden="true" { (mark) } " " (text) } }.into_string()
}

fn state(lang: Lang, word: &str) -> String {
    status(lang, word).into_string()
}

/// A controller line in the viewer's language. The engine says its lines in English (they are
/// the command line's too); the ones a deploy or rollback always says are put in Chinese here,
/// shape by shape, keeping every name and number; any other line (a build hook's output, a
/// rare message) is shown as it was said.
pub fn said(lang: Lang, line: &str) -> String {
    if lang == Lang::En {
        return line.to_owned();
    }
    let between = |s: &str, a: &str, b: &str| -> Option<(String, String)> {
        let (head, rest) = s.split_once(a)?;
        let (mid, _) = rest.split_once(b)?;
        Some((head.to_owned(), mid.to_owned()))
    };
    let zh = |s: &str| -> Option<String> {
        if let Some(url) = s.strip_prefix("fetching ") {
            return Some(format!("拉取 {url}"));
        }
        if let Some((git_ref, rest)) = s.split_once(" is ")
            && let Some((what, took)) = rest.rsplit_once(" (fetched in ")
        {
            return Some(format!("{git_ref} 指向 {what}（拉取用时 {}）", took.trim_end_matches(')')));
        }
        if s.starts_with("deploy #")
            && let Some((head, rest)) = s.split_once(": release ")
            && let Some((release, hosts)) = rest.rsplit_once(" to ")
        {
            let n = hosts.trim_end_matches(" host(s)");
            return Some(format!("部署 {}：版本 {release}，发往 {n} 台主机", head.trim_start_matches("deploy ")));
        }
        if s.starts_with("rollback #")
            && let Some((head, rest)) = s.split_once(": ")
            && let Some((hosts, to)) = rest.split_once(" host(s) to ")
        {
            return Some(format!("回滚 {}：{hosts} 台主机回到 {to}", head.trim_start_matches("rollback ")));
        }
        if let Some(rest) = s.strip_prefix("packaged ").or_else(|| s.strip_prefix("reusing package: ")) {
            let verb = if s.starts_with("packaged") { "已打包" } else { "复用已有的包：" };
            let rest = rest
                .replacen(" entries, ", " 个文件，", 1)
                .replacen(" (sha256 ", "（sha256 ", 1)
                .replacen(") in ", "），用时 ", 1)
                .replacen(" (cached)", "（已缓存）", 1);
            return Some(format!("{verb} {rest}"));
        }
        if let Some((batches, sizes)) = between(s, "rollout in ", " host(s)").and_then(|(_, m)| {
            let (b, sz) = m.split_once(" batches of ")?;
            Some((b.to_owned(), sz.to_owned()))
        }) {
            return Some(format!("分 {batches} 批发布，每批 {sizes} 台主机"));
        }
        if let Some(rest) = s.strip_prefix("waiting ")
            && let Some((secs, batch)) = rest.split_once("s before batch ")
        {
            return Some(format!("等待 {secs} 秒后发布第 {batch} 批"));
        }
        if let Some(rest) = s.strip_prefix("rolling back ")
            && let Some(n) = rest.strip_suffix(" host(s) to their previous release")
        {
            return Some(format!("将 {n} 台主机回滚到上一个版本"));
        }
        if let Some(rest) = s.strip_prefix("delta for ")
            && let Some((host, rest)) = rest.split_once(": ")
            && let Some((changed, rest)) = rest.split_once(" of ")
            && let Some((total, send)) = rest.split_once(" files changed, ")
        {
            return Some(format!(
                "{host} 的增量：{total} 个文件中 {changed} 个有变化，需发送 {}",
                send.trim_end_matches(" to send")
            ));
        }
        if let Some(rest) = s.strip_prefix("manifest: ")
            && let Some((n, rest)) = rest.split_once(" entries, ")
            && let Some((size, waited)) = rest.split_once(" (read from git; waited ")
        {
            return Some(format!(
                "清单：{n} 个文件，{size}（从 git 读取，等待 {}）",
                waited.trim_end_matches(" for it)")
            ));
        }
        if s.starts_with("paused after the canary: ") {
            return Some(format!("灰度主机已上线，暂停：{}", s.trim_start_matches("paused after the canary: ")));
        }
        match s {
            "packaging the full artifact while sending it" => Some("边打包边发送完整包".to_owned()),
            "a host failed: the remaining batches are not rolled back" => {
                Some("有主机失败：其余批次不再回滚".to_owned())
            }
            _ => None,
        }
    };
    zh(line).unwrap_or_else(|| line.to_owned())
}

/// What journal event `e` changes on the page.
pub fn piece(lang: Lang, e: &Value) -> Piece {
    let s = |k: &str| e[k].as_str().unwrap_or("").to_owned();
    let n = |k: &str| e[k].as_u64().unwrap_or(0);
    match e["event"].as_str().unwrap_or("") {
        "say" => Piece { line: Some(line("say", "›", html! { (said(lang, &s("line"))) })), ..Piece::default() },
        "hosts" => Piece {
            hosts: e["hosts"].as_array().into_iter().flatten().filter_map(|h| h.as_str()).map(str::to_owned).collect(),
            ..Piece::default()
        },
        "outcome" => Piece { outcome: Some(outcome(lang, e).into_string()), ..Piece::default() },
        "host" => {
            let mut p = Piece { host: Some(s("host")), ..Piece::default() };
            match e["kind"].as_str().unwrap_or("") {
                "connecting" => {
                    p.line = Some(line("step", "→", html! { (lang.t("connecting")) }));
                    p.state = Some(state(lang, "connecting"));
                }
                // (Nothing to send or unpack — the host holds the release already — is no
                // progress: a full bar reading "0 B / 0 B" while hooks run says what is not.)
                "uploading" if n("total") > 0 => {
                    let (sent, total) = (n("sent"), n("total"));
                    p.progress =
                        Some((pct(sent, total), format!("{} {} / {}", lang.t("uploading"), size(sent), size(total))));
                    p.state = Some(state(lang, "uploading"));
                }
                "unpacking" if n("total") > 0 => {
                    let (done, total) = (n("entries"), n("total"));
                    p.progress = Some((pct(done, total), format!("{} {done} / {total}", lang.t("unpacking"))));
                }
                "staged" => {
                    p.line = Some(line("step", "✓", html! { (lang.t("staged")) " · " (secs(&e["elapsed_ms"])) }));
                    p.progress = Some((100, lang.t("staged").to_owned()));
                    p.state = Some(state(lang, "staged"));
                }
                "activating" => p.line = Some(line("step", "→", html! { (lang.t("activating")) })),
                "activated" => {
                    let was = e["previous"].as_str().map(str::to_owned);
                    p.line = Some(line(
                        "ok",
                        "✓",
                        html! {
                            (lang.t("activated")) " · " (secs(&e["elapsed_ms"]))
                            @if let Some(w) = &was { " · " (lang.t("was")) " " code { (w) } }
                        },
                    ));
                    p.state = Some(state(lang, "live"));
                }
                "aborted" => {
                    p.line = Some(line("bad", "✗", html! { (lang.t("aborted")) }));
                    p.state = Some(state(lang, "aborted"));
                }
                "drained" | "undrained" => {
                    let key = if e["kind"] == "drained" { "drained" } else { "undrained" };
                    p.line = Some(line("step", "⇄", html! { (lang.t(key)) " · " (s("detail")) }));
                }
                "failed" => {
                    p.line = Some(line("bad", "✗", html! { strong { (lang.t("failed")) } " " (s("error")) }));
                    p.state = Some(state(lang, "failed"));
                }
                "output" => {
                    let class = if e["stream"] == "stderr" { "out stderr" } else { "out" };
                    p.line = Some(html! { span class=(class) { (s("text")) } }.into_string());
                    p.state = Some(state(lang, "hooks"));
                }
                "hook" => {
                    let ok = e["exit_code"].as_i64() == Some(0) && e["timed_out"] != true;
                    let (class, mark) = if ok { ("ok", "✓") } else { ("bad", "✗") };
                    p.line = Some(line(
                        class,
                        mark,
                        html! {
                            (lang.t("hook")) " " strong { (s("stage")) } " " code { (s("command")) }
                            " · " (lang.t("exit")) " " (e["exit_code"]) @if e["timed_out"] == true { " · " (lang.t("timed_out")) }
                            " · " (secs(&e["elapsed_ms"]))
                        },
                    ));
                }
                _ => {}
            }
            p
        }
        _ => Piece::default(),
    }
}

/// The outcome box of an `outcome` event (or a record's outcome).
pub fn outcome(lang: Lang, e: &Value) -> Markup {
    let word = e["status"].as_str().unwrap_or("");
    html! {
        div class={ "outcome " (if word == "succeeded" { "ok" } else { "bad" }) } role="status" {
            strong { (lang.t("outcome")) } " " (status(lang, word))
            @if let Some(r) = e["release"].as_str() { " · " code { (r) } }
            @if let Some(err) = e["error"].as_str() { p.error { (err) } }
        }
    }
}

/// One host's pane as the replay leaves it.
#[derive(Default)]
struct Pane {
    lines: String,
    progress: Option<(u8, String)>,
    state: Option<String>,
}

fn pane(lang: Lang, host: &str, p: &Pane) -> Markup {
    html! {
        article.pane data-host=(host) {
            header {
                h3 { (host) }
                span.state { @if let Some(s) = &p.state { (PreEscaped(s)) } @else { (status(lang, "waiting")) } }
            }
            div.bar hidden[p.progress.is_none()] {
                @let (n, label) = p.progress.clone().unwrap_or((0, String::new()));
                progress max="100" value=(n) aria-label=(label) {}
                span.label { (label) }
            }
            div.log role="log" aria-live="polite" { (PreEscaped(&p.lines)) }
        }
    }
}

/// An empty pane for `host` (the live stream sends it when the deploy names its hosts).
pub fn empty_pane(lang: Lang, host: &str) -> String {
    pane(lang, host, &Pane::default()).into_string()
}

/// Deploy `d`'s panes, replayed from its journal, and the number of the last event read (the
/// live stream carries on after it). `expected`: hosts to show a pane for before the journal
/// names them.
pub fn panes(app: &App, lang: Lang, d: &DeployRecord, expected: &[String]) -> crate::error::Result<(Markup, u32)> {
    let events = app.store.events(d.id, 0)?;
    let mut order: Vec<String> = expected.to_vec();
    let mut by_host: BTreeMap<String, Pane> = BTreeMap::new();
    let mut controller = String::new();
    let mut result = None;
    let mut last = 0;
    for (seq, e) in &events {
        last = *seq;
        let p = piece(lang, e);
        for h in &p.hosts {
            if !order.contains(h) {
                order.push(h.clone());
            }
        }
        if p.outcome.is_some() {
            result = p.outcome.clone();
        }
        match &p.host {
            None => controller.push_str(p.line.as_deref().unwrap_or("")),
            Some(h) => {
                if !order.contains(h) {
                    order.push(h.clone());
                }
                let pane = by_host.entry(h.clone()).or_default();
                if let Some(l) = &p.line {
                    pane.lines.push_str(l);
                }
                if p.progress.is_some() {
                    pane.progress = p.progress.clone();
                }
                if p.state.is_some() {
                    pane.state = p.state.clone();
                }
            }
        }
    }
    // A deploy that ended elsewhere (or before journals) still shows its outcome.
    if result.is_none() && d.finished_at.is_some() {
        result = Some(outcome(lang, &crate::engine::journal::outcome_json(d)).into_string());
    }
    let none = Pane::default();
    let markup = html! {
        section.deploy data-deploy=(d.id) data-after=(last) {
            div.outcome-slot { @if let Some(o) = &result { (PreEscaped(o)) } }
            div.panes {
                @for h in &order { (pane(lang, h, by_host.get(h).unwrap_or(&none))) }
            }
            div.pane.controller { header { h3 { (lang.t("controller")) } } div.log role="log" { (PreEscaped(&controller)) } }
        }
    };
    Ok((markup, last))
}

/// A deploy's summary line: kind, ref, commit, who, when, how long.
pub fn summary(lang: Lang, d: &DeployRecord) -> Markup {
    html! {
        dl.facts {
            dt { (lang.t("status")) } dd { (status(lang, d.effective_status().word())) }
            dt { (lang.t("kind")) } dd { (lang.t(super::kind_key(d))) }
            @if !d.git_ref.is_empty() { dt { (lang.t("ref")) } dd { code { (d.git_ref) } " " code { (short(&d.commit)) } } }
            @if let Some(r) = &d.release { dt { (lang.t("release")) } dd { code { (r.to_string()) } } }
            @if let Some(b) = &d.built {
                dt { (lang.t("build")) }
                dd {
                    code.digest { (short(&b.sha256)) } " · " (b.provenance())
                    @if let Some(n) = d.promoted_from { " · " a href={ "/deploys/" (n) } { "#" (n) } }
                }
            }
            @if let Some(o) = &d.overlay_sha256 { dt { (lang.t("env_layer")) } dd { code.digest { (short(o)) } } }
            @if let Some(o) = &d.overridden { dt { (lang.t("overridden")) } dd { (o.by) ": " (o.reason) " — " (o.held) } }
            dt { (lang.t("who")) } dd { (d.user) }
            dt { (lang.t("started")) } dd { (when(d.started_at)) }
            @if d.finished_at.is_some() { dt { (lang.t("took")) } dd { (format!("{:.1} s", d.duration_ms as f64 / 1000.0)) } }
        }
    }
}

/// Promote and abort for deploy `n`, paused after its canary; the page `back` shows the result.
pub fn decide_buttons(v: &Viewer, n: u64, back: &str) -> Markup {
    let field = html! { input type="hidden" name="back" value=(back); };
    html! {
        div.paused role="status" {
            strong { (v.t("paused_canary")) }
            (v.button(&format!("/deploys/{n}/promote"), v.t("promote"), "primary", field.clone()))
            (v.button(&format!("/deploys/{n}/abort"), v.t("abort"), "danger", field))
        }
    }
}

#[derive(Deserialize)]
pub struct DecideForm {
    #[serde(default)]
    back: String,
}

async fn decide(app: Arc<App>, v: Viewer, id: u64, decision: Decision, back: &str) -> PageResult {
    crate::ops::runs::decide_paused(&app.core, &v.caller, id, decision).await.or_show(&v)?;
    let back = super::back_to(Some(back));
    let back = if back == "/" { format!("/deploys/{id}") } else { back.to_owned() };
    Ok(axum::response::Redirect::to(&back).into_response())
}

/// `POST /deploys/{id}/promote`: carry a paused deploy on past its canary.
pub async fn promote(
    State(app): State<Arc<App>>,
    v: Viewer,
    Path(id): Path<u64>,
    Form(f): Form<DecideForm>,
) -> PageResult {
    decide(app, v, id, Decision::Promote, &f.back).await
}

/// `POST /deploys/{id}/abort`: take the canary back; the other hosts stay untouched.
pub async fn abort(
    State(app): State<Arc<App>>,
    v: Viewer,
    Path(id): Path<u64>,
    Form(f): Form<DecideForm>,
) -> PageResult {
    decide(app, v, id, Decision::Abort, &f.back).await
}

/// `GET /deploys/{id}`: one deploy or rollback (those started without a ticket have this page).
pub async fn deploy_page(State(app): State<Arc<App>>, v: Viewer, Path(id): Path<u64>) -> PageResult {
    let d = app.store.deploy(id).or_show(&v)?.ok_or_else(|| unknown_deploy(id)).or_show(&v)?;
    let (panes, _) = panes(&app, v.lang, &d, &[]).or_show(&v)?;
    let title = format!("#{id} {}/{}", d.project, d.env);
    Ok(v.page(
        &title,
        html! {
            p.crumbs { a href={ "/projects/" (d.project) "/envs/" (d.env) } { (d.project) " / " (d.env) } }
            h1 { (v.t(super::kind_key(&d))) " #" (id) }
            (summary(v.lang, &d))
            @if d.status == DeployStatus::Paused && v.caller.allows(&d.project, &d.env, Role::Deployer) {
                (decide_buttons(&v, id, &format!("/deploys/{id}")))
            }
            (panes)
        },
    ))
}

#[derive(Deserialize)]
pub struct After {
    #[serde(default)]
    after: u32,
}

/// `GET /deploys/{id}/live?after=N`: the deploy's pieces after event N, as SSE `piece` events
/// (`{"host", "line", "progress", "state", "panes", "outcome"}`, markup rendered here); the
/// stream ends after the outcome.
pub async fn live(
    State(app): State<Arc<App>>,
    v: Viewer,
    Path(id): Path<u64>,
    Query(q): Query<After>,
    headers: axum::http::HeaderMap,
) -> EventStream {
    // A reconnecting browser says what it has seen (`Last-Event-ID`), past the page's `after`.
    let seen = headers.get("last-event-id").and_then(|h| h.to_str().ok()).and_then(|h| h.trim().parse().ok());
    let after = seen.unwrap_or(0).max(q.after);
    let slot = match crate::server::sse::open_stream(&app, &v.caller) {
        Ok(slot) => slot,
        Err(e) => return axum::response::IntoResponse::into_response(e),
    };
    let watcher = crate::server::sse::Watcher { caller: v.caller.clone(), slot };
    let (tx, rx) = mpsc::channel::<SseEvent>(64);
    let lang = v.lang;
    tokio::spawn(crate::server::sse::tail(app, id, after, watcher, tx, move |seq, _kind, raw| {
        let e: Value = serde_json::from_slice(&raw).ok()?;
        let p = piece(lang, &e);
        if p == Piece::default() {
            return None;
        }
        let panes: Vec<(String, String)> = p.hosts.iter().map(|h| (h.clone(), empty_pane(lang, h))).collect();
        let doc = json!({
            "host": p.host, "line": p.line, "state": p.state, "outcome": p.outcome,
            "progress": p.progress.map(|(n, label)| json!({"pct": n, "label": label})),
            "panes": panes,
        });
        let sse = SseEvent::default().event("piece").data(doc.to_string());
        Some(if seq == 0 { sse } else { sse.id(seq.to_string()) })
    }));
    stream(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controller_lines_a_deploy_always_says_read_in_chinese() {
        let check = |en: &str, zh: &str| assert_eq!(said(Lang::Zh, en), zh, "{en}");
        check("fetching /srv/git/shop.git", "拉取 /srv/git/shop.git");
        check(
            "main is 87c499167512 \"the new page\" (fetched in 13 ms)",
            "main 指向 87c499167512 \"the new page\"（拉取用时 13 ms）",
        );
        check(
            "deploy #2 shop/test: release 20261207-085533-87c4991 to 2 host(s)",
            "部署 #2 shop/test：版本 20261207-085533-87c4991，发往 2 台主机",
        );
        check(
            "rollback #3 shop/test: 2 host(s) to 20261207-085528-2ae1d56",
            "回滚 #3 shop/test：2 台主机回到 20261207-085528-2ae1d56",
        );
        check(
            "packaged 1 entries, 3 B -> 92 B tar.zst (sha256 398e159c3631) in 3 ms",
            "已打包 1 个文件，3 B -> 92 B tar.zst（sha256 398e159c3631），用时 3 ms",
        );
        check("rollout in 3 batches of 1, 1, 1 host(s)", "分 3 批发布，每批 1, 1, 1 台主机");
        check("waiting 5s before batch 2", "等待 5 秒后发布第 2 批");
        check("rolling back 2 host(s) to their previous release", "将 2 台主机回滚到上一个版本");
        check(
            "delta for web-1: 1 of 2000 files changed, 12 KiB to send",
            "web-1 的增量：2000 个文件中 1 个有变化，需发送 12 KiB",
        );
        check("  pre_deploy| npm ci", "  pre_deploy| npm ci");
        assert_eq!(said(Lang::En, "fetching x"), "fetching x");
    }

    #[test]
    fn events_become_pieces_of_the_host_pane() {
        let lang = Lang::En;
        let up =
            piece(lang, &json!({"event": "host", "host": "web-1", "kind": "uploading", "sent": 512, "total": 2048}));
        assert_eq!(up.host.as_deref(), Some("web-1"));
        assert_eq!(up.progress.as_ref().map(|p| p.0), Some(25));
        let nothing =
            piece(lang, &json!({"event": "host", "host": "web-1", "kind": "uploading", "sent": 0, "total": 0}));
        assert_eq!(nothing.progress, None, "nothing to send is no bar reading 0 B / 0 B");
        let out = piece(
            lang,
            &json!({"event": "host", "host": "web-1", "kind": "output", "stage": "pre_activate", "stream": "stderr", "text": "<b>warn</b>\n"}),
        );
        let text = out.line.unwrap();
        assert!(text.contains("stderr") && text.contains("&lt;b&gt;warn"), "escaped and marked: {text}");
        let failed =
            piece(lang, &json!({"event": "host", "host": "web-2", "kind": "failed", "error": "health check: 502"}));
        assert!(failed.line.unwrap().contains("line bad"), "failures are red and marked");
        let hook = piece(
            lang,
            &json!({"event": "host", "host": "web-2", "kind": "hook", "stage": "post_activate", "command": "false", "exit_code": 1, "timed_out": false, "elapsed_ms": 20}),
        );
        assert!(hook.line.unwrap().contains("line bad"), "a failed hook is a failure");
        let hosts = piece(lang, &json!({"event": "hosts", "hosts": ["a", "b"]}));
        assert_eq!(hosts.hosts, ["a", "b"]);
        assert_eq!(piece(lang, &json!({"event": "started", "id": 3})), Piece::default());
    }
}
