//! The team commands: `serve`, `user`, `token`, `ticket` and `webhook secret`. Users, tokens
//! and secrets work on the store directly (so the first admin can be made before the server
//! ever runs, and through the server's socket while it does); tickets are the server's and
//! need it.

use serde_json::json;
use slipway_common::time::{format_utc, unix_now};

use crate::cli::args_team::{TicketCommand, TokenCommand, UserCommand, WebhookCommand};
use crate::cli::output::{OutputFormat, clean, table};
use crate::cli::{Cx, Served, finish_operation, print};
use crate::error::{CtlError, Result};
use crate::ops::secrets::random_hex;
use crate::ops::tickets::{self, NewTicket, TicketQuery};
use crate::ops::users as admin;
use crate::state::home::Home;
use crate::state::store::{DeployStatus, Store};
use crate::state::tickets::{Audit, TicketKind, TicketRecord};
use crate::state::users::{Grant, Role, UserRecord};

/// The password for `user add`: stdin's first line, or a new random one.
fn new_password(out: &Cx, from_stdin: bool) -> Result<(String, bool)> {
    if !from_stdin {
        return Ok((random_hex()[..20].to_owned(), true));
    }
    let text = match out.served.as_ref().and_then(|s| s.stdin.clone()) {
        Some(text) => text,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| CtlError::bad(format!("cannot read the password from stdin: {e}")))?;
            line
        }
    };
    // Its length is checked where every password is (`admin::add_user`).
    Ok((text.lines().next().unwrap_or("").to_owned(), false))
}

fn grants_text(u: &UserRecord) -> String {
    let g: Vec<String> = u.grants.iter().map(|g| format!("{}:{}:{}", g.project, g.env, g.role.word())).collect();
    if g.is_empty() { "-".into() } else { g.join(" ") }
}

pub fn user_command(home: &Home, out: &Cx, cmd: UserCommand) -> Result<u8> {
    let store = Store::open(&home.state())?;
    match cmd {
        UserCommand::Add { name, admin, password_stdin } => {
            let (password, generated) = new_password(out, password_stdin)?;
            admin::add_user(&store, &out.actor(), &name, admin, &password)?;
            let shown = generated.then(|| password.clone());
            print(out, json!({"user": name, "admin": admin, "password": shown}), || match &shown {
                Some(p) => {
                    format!("added user {name}{}\npassword (shown once): {p}", if admin { " (admin)" } else { "" })
                }
                None => format!("added user {name}{}", if admin { " (admin)" } else { "" }),
            });
        }
        UserCommand::Passwd { name, password_stdin } => {
            let (password, generated) = new_password(out, password_stdin)?;
            admin::set_password(&store, &out.actor(), &name, &password, None)?;
            let shown = generated.then(|| password.clone());
            print(out, json!({"user": name, "password": shown, "sessions_ended": true}), || match &shown {
                Some(p) => format!("new password for {name} (shown once): {p}\ntheir sessions ended"),
                None => format!("new password for {name}; their sessions ended"),
            });
        }
        UserCommand::Grant { name, project, env, role } => {
            let user = admin::grant(&store, &out.actor(), &name, &project, &env, Role::parse(&role)?)?;
            print(out, json!({"user": name, "grants": user.grants}), || format!("{name}: {}", grants_text(&user)));
        }
        UserCommand::Revoke { name, project, env, role } => {
            let user = admin::revoke(&store, &out.actor(), &name, &project, &env, Role::parse(&role)?)?;
            print(out, json!({"user": name, "grants": user.grants}), || format!("{name}: {}", grants_text(&user)));
        }
        UserCommand::List => {
            let users = store.users()?;
            let docs: Vec<_> = users.iter().map(admin::user_json).collect();
            let rows: Vec<Vec<String>> = users
                .iter()
                .map(|u| {
                    vec![
                        u.name.clone(),
                        if u.admin { "admin".into() } else { "-".into() },
                        grants_text(u),
                        u.company.as_ref().map_or_else(|| "local".into(), |c| c.via.clone()),
                        format_utc(u.created_at),
                    ]
                })
                .collect();
            print(out, json!(docs), || {
                if rows.is_empty() {
                    "no users yet: slipctl user add NAME --admin".into()
                } else {
                    table(&["USER", "ADMIN", "GRANTS", "SIGN-IN", "ADDED"], &rows).trim_end().to_owned()
                }
            });
        }
        UserCommand::Rm { name } => {
            admin::remove_user(&store, &out.actor(), &name)?;
            print(out, json!({"removed": name}), || format!("removed user {name} (their sessions ended)"));
        }
    }
    Ok(0)
}

pub fn token_command(home: &Home, out: &Cx, cmd: TokenCommand) -> Result<u8> {
    let store = Store::open(&home.state())?;
    match cmd {
        TokenCommand::Create { name, scopes, admin } => {
            let grants = scopes.iter().map(|s| Grant::parse_scope(s)).collect::<Result<Vec<_>>>()?;
            let caller = out.served.as_ref().map(|s| s.caller.clone());
            let by = caller.as_ref().map(|c| c.name.clone()).unwrap_or_else(crate::engine::scope::current_user);
            let owner = caller.and_then(|c| c.user);
            let (record, token) = admin::create_token(&store, &name, &grants, admin, &by, owner.as_deref())?;
            let (id, grants) = (record.id, record.scopes);
            print(out, json!({"id": id, "name": name, "token": token, "scopes": grants, "admin": admin}), || {
                format!(
                    "token {id} ({name}), shown once:\n{token}\nuse it as SLIPWAY_TOKEN, or Authorization: Bearer <token>"
                )
            });
        }
        TokenCommand::List => {
            let tokens = store.tokens()?;
            let docs: Vec<_> = tokens.iter().map(admin::token_json).collect();
            let rows: Vec<Vec<String>> = tokens
                .iter()
                .map(|t| {
                    let scopes: Vec<String> =
                        t.scopes.iter().map(|g| format!("{}:{}:{}", g.project, g.env, g.role.word())).collect();
                    vec![
                        t.id.clone(),
                        t.name.clone(),
                        if t.admin { "admin".into() } else { scopes.join(" ") },
                        t.created_by.clone(),
                        format_utc(t.created_at),
                    ]
                })
                .collect();
            print(out, json!(docs), || {
                if rows.is_empty() {
                    "no tokens".into()
                } else {
                    table(&["ID", "NAME", "SCOPES", "BY", "MADE"], &rows).trim_end().to_owned()
                }
            });
        }
        TokenCommand::Rm { id } => {
            admin::remove_token(&store, &out.actor(), &id)?;
            print(out, json!({"removed": id}), || format!("removed token {id}: it no longer works"));
        }
    }
    Ok(0)
}

pub fn webhook_command(home: &Home, out: &Cx, cmd: WebhookCommand) -> Result<u8> {
    let WebhookCommand::Secret { project, rotate } = cmd;
    let store = Store::open(&home.state())?;
    store.project(&project)?.ok_or_else(|| {
        CtlError::not_found(format!("unknown project '{project}'")).fix("`slipctl project list` shows them")
    })?;
    let secret = match store.webhook_secret(&project)? {
        Some(s) if !rotate => s,
        _ => {
            let s = random_hex();
            store.put_webhook_secret(&project, &s)?;
            s
        }
    };
    print(out, json!({"project": project, "secret": secret, "url": format!("/hooks/{project}")}), || {
        format!(
            "webhook secret of {project}: {secret}\nGitHub: Secret (content type application/json); GitLab: Secret token; URL: <server>/hooks/{project}"
        )
    });
    Ok(0)
}

fn ticket_row(t: &TicketRecord) -> Vec<String> {
    vec![
        format!("#{}", t.id),
        format!("{}/{}", t.project, t.env),
        t.state.word().to_owned(),
        format!("{} {}", t.git_ref, &t.commit[..t.commit.len().min(7)]),
        format!("{}/{}", t.approvals.len(), t.required),
        t.requester.clone(),
        t.title.clone(),
    ]
}

fn ticket_text(t: &TicketRecord) -> String {
    // Titles, comments and descriptions are other people's words: no control characters reach
    // the terminal ([`clean`]).
    let mut s = format!(
        "ticket #{} ({}) {}/{}: {}\n  state     {}\n  ref       {} = {} \"{}\"\n  requester {} at {} from {}\n  approvals {}/{}\n",
        t.id,
        if t.kind == TicketKind::Deploy { "deploy" } else { "rollback" },
        t.project,
        t.env,
        clean(&t.title),
        t.state.word(),
        clean(&t.git_ref),
        t.commit,
        clean(&t.commit_summary),
        clean(&t.requester),
        format_utc(t.created.at),
        clean(&t.created.from),
        t.approvals.len(),
        t.required
    );
    if let Some(st) = &t.start {
        let at = st.at.map(|a| format!(" at {}", format_utc(a))).unwrap_or_default();
        let exp = st.expires.map(|e| format!(", not after {}", format_utc(e))).unwrap_or_default();
        let waiting = st.waiting.as_ref().map(|w| format!("; waiting: {}", clean(w))).unwrap_or_default();
        s.push_str(&format!("  starts    by itself{at}{exp}{waiting}\n"));
    }
    if let Some(b) = &t.build {
        let from = t.from_deploy.map(|n| format!(", from deploy #{n}")).unwrap_or_default();
        s.push_str(&format!("  build     {} ({}){from}\n", b.sha256, b.provenance()));
    }
    if !t.description.is_empty() {
        s.push_str(&format!("  about     {}\n", clean(&t.description)));
    }
    if !t.deploys.is_empty() {
        s.push_str(&format!(
            "  deploys   {}\n",
            t.deploys.iter().map(|d| format!("#{d}")).collect::<Vec<_>>().join(" ")
        ));
    }
    for tr in &t.transitions {
        let c = if tr.comment.is_empty() { String::new() } else { format!(": {}", clean(&tr.comment)) };
        s.push_str(&format!(
            "  {} {:<11} by {} from {}{c}\n",
            format_utc(tr.audit.at),
            tr.state.word(),
            clean(&tr.audit.by),
            clean(&tr.audit.from)
        ));
    }
    s.trim_end().to_owned()
}

fn served(out: &Cx) -> Result<&Served> {
    out.served.as_ref().ok_or_else(|| {
        CtlError::bad("tickets are kept by `slipctl serve`, and none runs for this home")
            .fix("start it (systemctl start slipctl, or `slipctl serve`), or pass --server URL with SLIPWAY_TOKEN")
    })
}

fn audit(s: &Served) -> Audit {
    Audit { by: s.caller.name.clone(), at: unix_now(), from: s.caller.from.clone() }
}

pub async fn ticket_command(out: &Cx, cmd: TicketCommand) -> Result<u8> {
    let ctx = served(out)?;
    let (core, caller) = (&ctx.core, &ctx.caller);
    let show = |t: &TicketRecord| print(out, json!(t), || ticket_text(t));
    match cmd {
        TicketCommand::Create { project, env, git_ref, title, description, from, from_deploy, artifact } => {
            let t = tickets::create(
                core,
                caller,
                NewTicket { project, env, git_ref, title, description, from, from_deploy, artifact },
                audit(ctx),
                None,
            )
            .await?;
            show(&t);
        }
        TicketCommand::List { project, env, state } => {
            let list = tickets::list(core, caller, &TicketQuery { project, env, state, limit: None })?;
            let rows: Vec<Vec<String>> = list.iter().map(ticket_row).collect();
            print(out, json!(list), || {
                if rows.is_empty() {
                    "no tickets".into()
                } else {
                    table(&["ID", "WHERE", "STATE", "REF", "APPROVED", "BY", "TITLE"], &rows).trim_end().to_owned()
                }
            });
        }
        TicketCommand::Show { id } => show(&core.store.ticket(id)?.ok_or_else(|| tickets::unknown(id))?),
        TicketCommand::Approve { id, comment } => show(&tickets::approve(core, caller, id, &comment, true)?),
        TicketCommand::Reject { id, comment } => show(&tickets::approve(core, caller, id, &comment, false)?),
        TicketCommand::Cancel { id } => show(&tickets::cancel(core, caller, id)?),
        TicketCommand::Deploy { id, override_reason } => {
            let (_, n) = tickets::deploy_overriding(core, caller, id, override_reason).await?;
            return follow(ctx, out, n).await;
        }
        TicketCommand::Schedule { id, at, expires } => {
            let now = unix_now();
            let at = slipway_common::time::parse_when(&at, now)
                .map_err(|e| CtlError::bad(e).fix("see `slipctl ticket schedule --help`"))?;
            let expires = expires
                .map(|e| slipway_common::time::parse_when(&e, at))
                .transpose()
                .map_err(|e| CtlError::bad(e).fix("see `slipctl ticket schedule --help`"))?;
            show(&crate::ops::waiting::schedule(core, caller, id, at, expires)?);
        }
        TicketCommand::Unschedule { id } => show(&crate::ops::waiting::unschedule(core, caller, id)?),
        TicketCommand::Rollback { id } => {
            let (t, n) = tickets::rollback(core, caller, id).await?;
            match n {
                Some(n) => return follow(ctx, out, n).await,
                None => show(&t),
            }
        }
    }
    Ok(0)
}

/// Follow deploy `n` (run by the server) to its end: its journal as it grows, then its outcome.
async fn follow(ctx: &Served, out: &Cx, n: u64) -> Result<u8> {
    if !out.is_json() {
        crate::outln!(out, "deploy #{n} started; `slipctl show {n}` has every step");
    }
    let mut after = 0;
    loop {
        let mut woken = crate::state::journal::subscribe(n);
        for (seq, event) in ctx.core.store.events(n, after)? {
            after = seq;
            if out.format == OutputFormat::Jsonl {
                crate::outln!(out, "{event}");
            } else if !out.is_json() && event["event"] == "say" {
                crate::outln!(out, "{}", event["line"].as_str().unwrap_or(""));
            }
        }
        let record = ctx.core.store.deploy(n)?.ok_or_else(|| CtlError::failed(format!("deploy #{n} has no record")))?;
        if !crate::state::journal::is_live(n) && record.status != DeployStatus::Running {
            return Ok(finish_operation(out, &record, false));
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), woken.changed()).await;
    }
}
