//! The team commands: `serve`, `user`, `token`, `ticket` and `webhook secret`. Users, tokens
//! and secrets work on the store directly (so the first admin can be made before the server
//! ever runs, and through the server's socket while it does); tickets are the server's and
//! need it.

use serde_json::json;
use slipway_common::time::{format_utc, unix_now};

use crate::cli::args_team::{TicketCommand, TokenCommand, UserCommand, WebhookCommand};
use crate::cli::output::{OutputFormat, table};
use crate::cli::{finish_operation, print};
use crate::error::{CtlError, Result};
use crate::server::auth::{hash_password, random_hex, sha256_hex};
use crate::server::error::ApiError;
use crate::server::exec::{self, Context};
use crate::server::tickets::{self, NewTicket, TicketQuery};
use crate::state::home::Home;
use crate::state::store::{DeployStatus, Store};
use crate::state::tickets::{Audit, TicketKind, TicketRecord};
use crate::state::users::{Grant, Role, TokenRecord, UserRecord};

impl From<ApiError> for CtlError {
    fn from(e: ApiError) -> CtlError {
        let code = e.status.as_u16();
        let err = match code {
            409 => CtlError::busy(e.error),
            400..=499 => CtlError::bad(e.error),
            _ => CtlError::failed(e.error),
        };
        if e.fix.is_empty() { err } else { err.fix(e.fix) }
    }
}

fn unknown_user(name: &str) -> CtlError {
    CtlError::bad(format!("unknown user '{name}'")).fix("`slipctl user list` shows them")
}

/// The password for `user add`: stdin's first line, or a new random one.
fn new_password(from_stdin: bool) -> Result<(String, bool)> {
    if !from_stdin {
        return Ok((random_hex()[..20].to_owned(), true));
    }
    let text = match exec::context().and_then(|c| c.stdin) {
        Some(text) => text,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| CtlError::bad(format!("cannot read the password from stdin: {e}")))?;
            line
        }
    };
    let password = text.lines().next().unwrap_or("").to_owned();
    if password.chars().count() < 8 {
        return Err(
            CtlError::bad("the password is shorter than 8 characters").fix("pipe a longer one to --password-stdin")
        );
    }
    Ok((password, false))
}

/// `role` on (project, env): the project and env must exist.
fn grant_of(store: &Store, project: &str, env: &str, role: &str) -> Result<Grant> {
    crate::engine::scope::env_of(store, project, env)?;
    Ok(Grant { project: project.to_owned(), env: env.to_owned(), role: Role::parse(role)? })
}

fn grants_text(u: &UserRecord) -> String {
    let g: Vec<String> = u.grants.iter().map(|g| format!("{}:{}:{}", g.project, g.env, g.role.word())).collect();
    if g.is_empty() { "-".into() } else { g.join(" ") }
}

pub fn user_command(home: &Home, out: OutputFormat, cmd: UserCommand) -> Result<u8> {
    let store = Store::open(&home.state())?;
    match cmd {
        UserCommand::Add { name, admin, password_stdin } => {
            slipway_common::names::validate_name("user name", &name).map_err(|e| CtlError::bad(e.to_string()))?;
            if store.user(&name)?.is_some() {
                return Err(CtlError::bad(format!("user '{name}' exists"))
                    .fix(format!("`slipctl user rm {name}` first, or pick another name")));
            }
            let (password, generated) = new_password(password_stdin)?;
            store.put_user(&UserRecord {
                name: name.clone(),
                password_hash: hash_password(&password)?,
                admin,
                grants: Vec::new(),
                created_at: unix_now(),
            })?;
            let shown = generated.then(|| password.clone());
            print(out, json!({"user": name, "admin": admin, "password": shown}), || match &shown {
                Some(p) => {
                    format!("added user {name}{}\npassword (shown once): {p}", if admin { " (admin)" } else { "" })
                }
                None => format!("added user {name}{}", if admin { " (admin)" } else { "" }),
            });
        }
        UserCommand::Grant { name, project, env, role } => {
            let mut user = store.user(&name)?.ok_or_else(|| unknown_user(&name))?;
            let grant = grant_of(&store, &project, &env, &role)?;
            if !user.grants.contains(&grant) {
                user.grants.push(grant);
                user.grants.sort();
            }
            store.put_user(&user)?;
            print(out, json!({"user": name, "grants": user.grants}), || format!("{name}: {}", grants_text(&user)));
        }
        UserCommand::Revoke { name, project, env, role } => {
            let role = Role::parse(&role)?;
            let mut user = store.user(&name)?.ok_or_else(|| unknown_user(&name))?;
            let before = user.grants.len();
            user.grants.retain(|g| !(g.project == project && g.env == env && g.role == role));
            if user.grants.len() == before {
                return Err(CtlError::bad(format!("{name} holds no {} role on {project}/{env}", role.word()))
                    .fix("`slipctl user list` shows the grants"));
            }
            store.put_user(&user)?;
            print(out, json!({"user": name, "grants": user.grants}), || format!("{name}: {}", grants_text(&user)));
        }
        UserCommand::List => {
            let users = store.users()?;
            let docs: Vec<_> = users
                .iter()
                .map(|u| json!({"user": u.name, "admin": u.admin, "grants": u.grants, "created_at": u.created_at}))
                .collect();
            let rows: Vec<Vec<String>> = users
                .iter()
                .map(|u| {
                    vec![
                        u.name.clone(),
                        if u.admin { "admin".into() } else { "-".into() },
                        grants_text(u),
                        format_utc(u.created_at),
                    ]
                })
                .collect();
            print(out, json!(docs), || {
                if rows.is_empty() {
                    "no users yet: slipctl user add NAME --admin".into()
                } else {
                    table(&["USER", "ADMIN", "GRANTS", "ADDED"], &rows).trim_end().to_owned()
                }
            });
        }
        UserCommand::Rm { name } => {
            if !store.remove_user(&name)? {
                return Err(unknown_user(&name));
            }
            store.remove_sessions_of(&name)?;
            print(out, json!({"removed": name}), || format!("removed user {name} (their sessions ended)"));
        }
    }
    Ok(0)
}

pub fn token_command(home: &Home, out: OutputFormat, cmd: TokenCommand) -> Result<u8> {
    let store = Store::open(&home.state())?;
    match cmd {
        TokenCommand::Create { name, scopes, admin } => {
            slipway_common::names::validate_name("token name", &name).map_err(|e| CtlError::bad(e.to_string()))?;
            if scopes.is_empty() && !admin {
                return Err(CtlError::bad("a token needs --scope PROJECT:ENV:ROLE (or --admin)")
                    .fix("e.g. --scope web-demo:test:deployer"));
            }
            let mut grants = Vec::new();
            for s in &scopes {
                let g = Grant::parse_scope(s)?;
                grants.push(grant_of(&store, &g.project, &g.env, g.role.word())?);
            }
            let id = random_hex()[..12].to_owned();
            let secret = random_hex();
            let by = exec::context().map(|c| c.caller.name).unwrap_or_else(crate::engine::scope::current_user);
            store.put_token(&TokenRecord {
                id: id.clone(),
                name: name.clone(),
                secret_sha256: sha256_hex(&secret),
                scopes: grants.clone(),
                admin,
                created_by: by,
                created_at: unix_now(),
            })?;
            let token = format!("slw_{id}_{secret}");
            print(out, json!({"id": id, "name": name, "token": token, "scopes": grants, "admin": admin}), || {
                format!(
                    "token {id} ({name}), shown once:\n{token}\nuse it as SLIPWAY_TOKEN, or Authorization: Bearer <token>"
                )
            });
        }
        TokenCommand::List => {
            let tokens = store.tokens()?;
            let docs: Vec<_> = tokens.iter().map(|t| json!({"id": t.id, "name": t.name, "scopes": t.scopes, "admin": t.admin, "created_by": t.created_by, "created_at": t.created_at})).collect();
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
            if !store.remove_token(&id)? {
                return Err(CtlError::bad(format!("unknown token '{id}'")).fix("`slipctl token list` shows them"));
            }
            print(out, json!({"removed": id}), || format!("removed token {id}: it no longer works"));
        }
    }
    Ok(0)
}

pub fn webhook_command(home: &Home, out: OutputFormat, cmd: WebhookCommand) -> Result<u8> {
    let WebhookCommand::Secret { project, rotate } = cmd;
    let store = Store::open(&home.state())?;
    store.project(&project)?.ok_or_else(|| {
        CtlError::bad(format!("unknown project '{project}'")).fix("`slipctl project list` shows them")
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
    let mut s = format!(
        "ticket #{} ({}) {}/{}: {}\n  state     {}\n  ref       {} = {} \"{}\"\n  requester {} at {} from {}\n  approvals {}/{}\n",
        t.id,
        if t.kind == TicketKind::Deploy { "deploy" } else { "rollback" },
        t.project,
        t.env,
        t.title,
        t.state.word(),
        t.git_ref,
        t.commit,
        t.commit_summary,
        t.requester,
        format_utc(t.created.at),
        t.created.from,
        t.approvals.len(),
        t.required
    );
    if !t.description.is_empty() {
        s.push_str(&format!("  about     {}\n", t.description));
    }
    if !t.deploys.is_empty() {
        s.push_str(&format!(
            "  deploys   {}\n",
            t.deploys.iter().map(|d| format!("#{d}")).collect::<Vec<_>>().join(" ")
        ));
    }
    for tr in &t.transitions {
        let c = if tr.comment.is_empty() { String::new() } else { format!(": {}", tr.comment) };
        s.push_str(&format!(
            "  {} {:<11} by {} from {}{c}\n",
            format_utc(tr.audit.at),
            tr.state.word(),
            tr.audit.by,
            tr.audit.from
        ));
    }
    s.trim_end().to_owned()
}

fn server_context() -> Result<Context> {
    exec::context().ok_or_else(|| {
        CtlError::bad("tickets are kept by `slipctl serve`, and none runs for this home")
            .fix("start it (systemctl start slipctl, or `slipctl serve`), or pass --server URL with SLIPWAY_TOKEN")
    })
}

fn audit(c: &Context) -> Audit {
    Audit { by: c.caller.name.clone(), at: unix_now(), from: c.caller.from.clone() }
}

pub async fn ticket_command(out: OutputFormat, cmd: TicketCommand) -> Result<u8> {
    let ctx = server_context()?;
    let (app, caller) = (&ctx.app, &ctx.caller);
    let show = |t: &TicketRecord| print(out, json!(t), || ticket_text(t));
    match cmd {
        TicketCommand::Create { project, env, git_ref, title, description } => {
            let t = tickets::create(app, caller, NewTicket { project, env, git_ref, title, description }, audit(&ctx))
                .await?;
            show(&t);
        }
        TicketCommand::List { project, env, state } => {
            let list = tickets::list(app, caller, &TicketQuery { project, env, state, limit: None })?;
            let rows: Vec<Vec<String>> = list.iter().map(ticket_row).collect();
            print(out, json!(list), || {
                if rows.is_empty() {
                    "no tickets".into()
                } else {
                    table(&["ID", "WHERE", "STATE", "REF", "APPROVED", "BY", "TITLE"], &rows).trim_end().to_owned()
                }
            });
        }
        TicketCommand::Show { id } => show(&app.store.ticket(id)?.ok_or_else(|| CtlError::from(tickets::unknown(id)))?),
        TicketCommand::Approve { id, comment } => show(&tickets::approve(app, caller, id, &comment, true)?),
        TicketCommand::Reject { id, comment } => show(&tickets::approve(app, caller, id, &comment, false)?),
        TicketCommand::Cancel { id } => show(&tickets::cancel(app, caller, id)?),
        TicketCommand::Deploy { id } => {
            let (_, n) = tickets::deploy(app, caller, id).await?;
            return follow(&ctx, out, n).await;
        }
        TicketCommand::Rollback { id } => {
            let (t, n) = tickets::rollback(app, caller, id).await?;
            match n {
                Some(n) => return follow(&ctx, out, n).await,
                None => show(&t),
            }
        }
    }
    Ok(0)
}

/// Follow deploy `n` (run by the server) to its end: its journal as it grows, then its outcome.
async fn follow(ctx: &Context, out: OutputFormat, n: u64) -> Result<u8> {
    if !out.is_json() {
        crate::outln!("deploy #{n} started; `slipctl show {n}` has every step");
    }
    let mut after = 0;
    loop {
        let mut woken = crate::state::journal::subscribe(n);
        for (seq, event) in ctx.app.store.events(n, after)? {
            after = seq;
            if out == OutputFormat::Jsonl {
                crate::outln!("{event}");
            } else if !out.is_json() && event["event"] == "say" {
                crate::outln!("{}", event["line"].as_str().unwrap_or(""));
            }
        }
        let record = ctx.app.store.deploy(n)?.ok_or_else(|| CtlError::failed(format!("deploy #{n} has no record")))?;
        if !crate::state::journal::is_live(n) && record.status != DeployStatus::Running {
            return Ok(finish_operation(out, &record, false));
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), woken.changed()).await;
    }
}
