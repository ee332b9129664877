//! Users, grants and tokens as operations on the store: what `slipctl user|token`, the admin
//! API (`/api/v1/users`, `/api/v1/tokens`) and the users page all call. Whoever calls them has
//! been checked to be an admin already (a user changing their own password aside).

use serde_json::{Value, json};
use slipway_common::time::unix_now;

use crate::error::{CtlError, Result};
use crate::ops::audit::Actor;
use crate::ops::secrets::{hash_password, random_hex, sha256_hex};
use crate::state::store::Store;
use crate::state::users::{Grant, Role, SessionRecord, TokenRecord, UserRecord};

/// How long a browser session lasts (its cookie's `Max-Age` too).
pub const SESSION_SECS: i64 = 12 * 3600;

/// A new session for `user` (whose password was checked), opened from `from`: the session id
/// (the cookie's secret; only its SHA-256 is stored) and its CSRF token.
pub fn open_session(store: &Store, user: &str, from: &str) -> Result<(String, String)> {
    let (id, csrf) = (random_hex(), random_hex());
    let now = unix_now();
    let record = SessionRecord {
        user: user.to_owned(),
        csrf_token: csrf.clone(),
        created_at: now,
        expires_at: now + SESSION_SECS,
        from: from.to_owned(),
    };
    store.put_session(&sha256_hex(&id), &record)?;
    Ok((id, csrf))
}

/// The session stored under `digest` and its user, if it has not ended (expired, logged out,
/// its user's password changed or the user removed).
pub fn live_session(store: &Store, digest: &str) -> Result<Option<(SessionRecord, UserRecord)>> {
    let Some(session) = store.session(digest)?.filter(|s| s.expires_at > unix_now()) else {
        return Ok(None);
    };
    Ok(store.user(&session.user)?.map(|user| (session, user)))
}

pub fn unknown_user(name: &str) -> CtlError {
    CtlError::not_found(format!("unknown user '{name}'")).fix("`slipctl user list` (GET /api/v1/users) shows them")
}

/// `role` on (project, env): the project and env must exist; a maintainer's is the whole
/// project's (env `*`).
pub fn grant_of(store: &Store, project: &str, env: &str, role: Role) -> Result<Grant> {
    if role == Role::Maintainer || env == "*" {
        if role != Role::Maintainer || env != "*" {
            return Err(CtlError::bad(format!("a {} role is not granted on env '{env}'", role.word()))
                .fix("a maintainer is one of a whole project: PROJECT * maintainer; other roles name an env"));
        }
        store.project(project)?.ok_or_else(|| {
            CtlError::not_found(format!("unknown project '{project}'")).fix("`slipctl project list` shows them")
        })?;
        return Ok(Grant { project: project.to_owned(), env: env.to_owned(), role });
    }
    crate::engine::scope::env_of(store, project, env)?;
    Ok(Grant { project: project.to_owned(), env: env.to_owned(), role })
}

pub fn check_password(password: &str) -> Result<()> {
    if password.chars().count() < 8 {
        return Err(CtlError::bad("the password is shorter than 8 characters").fix("choose one of 8 or more"));
    }
    Ok(())
}

pub fn add_user(store: &Store, by: &Actor, name: &str, admin: bool, password: &str) -> Result<UserRecord> {
    slipway_common::names::validate_name("user name", name).map_err(|e| CtlError::bad(e.to_string()))?;
    if store.user(name)?.is_some() {
        return Err(CtlError::bad(format!("user '{name}' exists"))
            .fix(format!("`slipctl user rm {name}` first, or pick another name")));
    }
    check_password(password)?;
    let user = UserRecord {
        name: name.to_owned(),
        password_hash: hash_password(password)?,
        admin,
        grants: Vec::new(),
        created_at: unix_now(),
        company: None,
    };
    store.put_user(&user)?;
    by.did(store, "user_add", &format!("user {name}"), "ok", if admin { "admin" } else { "" });
    Ok(user)
}

/// A company account's grants and password are its directory's: refuse to set them here.
fn local_only(user: &UserRecord, what: &str) -> Result<()> {
    match &user.company {
        Some(link) => Err(CtlError::bad(format!(
            "'{}' is a company account ({}): its {what} come from the company directory",
            user.name, link.via
        ))
        .fix("change its groups there, or the [[sign_in.group]] table of the server's config.toml")),
        None => Ok(()),
    }
}

pub fn grant(store: &Store, by: &Actor, name: &str, project: &str, env: &str, role: Role) -> Result<UserRecord> {
    let mut user = store.user(name)?.ok_or_else(|| unknown_user(name))?;
    local_only(&user, "grants")?;
    let grant = grant_of(store, project, env, role)?;
    if !user.grants.contains(&grant) {
        user.grants.push(grant);
        user.grants.sort();
    }
    store.put_user(&user)?;
    by.did(store, "grant", &format!("user {name}"), "ok", &format!("{project}:{env}:{}", role.word()));
    Ok(user)
}

pub fn revoke(store: &Store, by: &Actor, name: &str, project: &str, env: &str, role: Role) -> Result<UserRecord> {
    let mut user = store.user(name)?.ok_or_else(|| unknown_user(name))?;
    local_only(&user, "grants")?;
    let before = user.grants.len();
    user.grants.retain(|g| !(g.project == project && g.env == env && g.role == role));
    if user.grants.len() == before {
        return Err(CtlError::bad(format!("{name} holds no {} role on {project}/{env}", role.word()))
            .fix("`slipctl user list` shows the grants"));
    }
    store.put_user(&user)?;
    by.did(store, "revoke", &format!("user {name}"), "ok", &format!("{project}:{env}:{}", role.word()));
    Ok(user)
}

/// Give `name` a new password and end their sessions (but `keep`, the session that changed it).
pub fn set_password(store: &Store, by: &Actor, name: &str, password: &str, keep: Option<&str>) -> Result<()> {
    let mut user = store.user(name)?.ok_or_else(|| unknown_user(name))?;
    local_only(&user, "password and grants")?;
    check_password(password)?;
    user.password_hash = hash_password(password)?;
    store.put_user(&user)?;
    by.did(store, "password_change", &format!("user {name}"), "ok", "");
    store.remove_sessions_but(name, keep)
}

/// Remove a user and end their sessions.
pub fn remove_user(store: &Store, by: &Actor, name: &str) -> Result<()> {
    if !store.remove_user(name)? {
        return Err(unknown_user(name));
    }
    by.did(store, "user_remove", &format!("user {name}"), "ok", "");
    store.remove_sessions_of(name)
}

/// A new token: its record and the secret text (shown once).
pub fn create_token(
    store: &Store,
    name: &str,
    scopes: &[Grant],
    admin: bool,
    by: &str,
    owner: Option<&str>,
) -> Result<(TokenRecord, String)> {
    slipway_common::names::validate_name("token name", name).map_err(|e| CtlError::bad(e.to_string()))?;
    if scopes.is_empty() && !admin {
        return Err(CtlError::bad("a token needs a scope PROJECT:ENV:ROLE (or admin)")
            .fix("e.g. --scope web-demo:test:deployer"));
    }
    let scopes = scopes.iter().map(|g| grant_of(store, &g.project, &g.env, g.role)).collect::<Result<Vec<_>>>()?;
    let id = random_hex()[..12].to_owned();
    let secret = random_hex();
    let record = TokenRecord {
        id: id.clone(),
        name: name.to_owned(),
        secret_sha256: sha256_hex(&secret),
        scopes,
        admin,
        created_by: by.to_owned(),
        created_at: unix_now(),
        owner: owner.map(str::to_owned),
    };
    store.put_token(&record)?;
    let scope: Vec<String> =
        record.scopes.iter().map(|g| format!("{}:{}:{}", g.project, g.env, g.role.word())).collect();
    let what = if admin { "admin".to_owned() } else { scope.join(" ") };
    crate::ops::audit::record(store, by, "", "token_create", &format!("token {name} ({id})"), "ok", &what);
    Ok((record, format!("slw_{id}_{secret}")))
}

pub fn remove_token(store: &Store, by: &Actor, id: &str) -> Result<()> {
    if !store.remove_token(id)? {
        return Err(CtlError::not_found(format!("unknown token '{id}'")).fix("`slipctl token list` shows them"));
    }
    by.did(store, "token_remove", &format!("token {id}"), "ok", "");
    Ok(())
}

/// A user as the API and `--output json` show them (never the password hash).
pub fn user_json(u: &UserRecord) -> Value {
    let company = u
        .company
        .as_ref()
        .map(|c| json!({"via": c.via, "subject": c.subject, "groups": c.groups, "signed_in_at": c.signed_in_at}));
    json!({"user": u.name, "admin": u.admin, "grants": u.grants, "created_at": u.created_at, "company": company})
}

/// A token as listed (never its secret or digest).
pub fn token_json(t: &TokenRecord) -> Value {
    json!({"id": t.id, "name": t.name, "scopes": t.scopes, "admin": t.admin, "created_by": t.created_by, "owner": t.owner, "created_at": t.created_at})
}
