//! Company sign-in (README "Company sign-in", SECURITY.md): a password checked by the company
//! directory over LDAP/AD ([`ldap`]), or an OpenID Connect provider's authorization code
//! flow with PKCE ([`oidc`]). Either way the account proved who it is, and [`admit`] makes it a
//! Slipway user: its name, its link to the account (DN, or issuer and `sub`), and the admin
//! flag and grants its groups give by `[[sign_in.group]]` — set again at every sign-in, so a
//! group taken away in the directory is a grant gone at the next sign-in.
//!
//! A company account never takes over a local user of the same name, and a local user never
//! becomes a company account: the two kinds stay apart by construction.

pub mod ldap;
pub mod oidc;

use std::path::{Path, PathBuf};

use slipway_common::time::unix_now;

use crate::error::{CtlError, Result};
use crate::state::sign_in::SignInConfig;
use crate::state::store::Store;
use crate::state::users::{CompanyLink, UserRecord};

/// An account the directory or the provider vouched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// `ldap` or `oidc`.
    pub via: &'static str,
    /// Its stable id there: the DN, or `ISSUER SUB`.
    pub subject: String,
    /// The Slipway user name it signs in as.
    pub name: String,
    pub groups: Vec<String>,
}

/// The server's company sign-in: the config, read once at start, and the OIDC flows under way.
pub struct SignIn {
    pub config: SignInConfig,
    pub home: PathBuf,
    pub oidc: Option<oidc::Provider>,
}

impl SignIn {
    /// `[sign_in]` of `home`'s config.toml, checked (a bad one stops `serve` with the fix).
    pub fn load(home: &Path, config: SignInConfig) -> Result<SignIn> {
        config.check()?;
        if let Some(ldap) = &config.ldap {
            ldap.password(home)?;
        }
        let oidc = match &config.oidc {
            Some(c) => Some(oidc::Provider::new(c.clone(), home)?),
            None => None,
        };
        Ok(SignIn { config, home: home.to_owned(), oidc })
    }

    /// Whether `name`, a local user, may sign in with a Slipway password.
    pub fn local_password_allowed(&self, name: &str) -> bool {
        !self.config.require || self.config.break_glass.iter().any(|b| b == name)
    }

    /// Why a local user with the right password is still turned away.
    pub fn local_refusal(&self, name: &str) -> CtlError {
        CtlError::forbidden(format!("company sign-in is required here; '{name}' is a local user")).fix(
            "sign in with your company account; an admin removes the local user, or names it in [sign_in] break_glass",
        )
    }
}

/// The user `account` signs in as: made at its first sign-in, and its admin flag, grants and
/// groups set again from `[[sign_in.group]]` each time. Refused: a name that is a local user's
/// or another account's, a name Slipway cannot take, an account in none of the groups.
pub fn admit(store: &Store, config: &SignInConfig, account: &Account) -> Result<UserRecord> {
    slipway_common::names::validate_name("user name", &account.name).map_err(|e| {
        CtlError::bad(format!("the company account's name '{}' cannot be a Slipway user: {e}", account.name))
            .fix("use a short name of letters, digits, '-', '_' or '.' (OIDC: set username_claim)")
    })?;
    let existing = store.user(&account.name)?;
    match existing.as_ref().map(|u| &u.company) {
        Some(None) => {
            return Err(CtlError::forbidden(format!(
                "'{}' is a local Slipway user; a company account of that name cannot take it over",
                account.name
            ))
            .fix(format!(
                "an admin removes the local user (`slipctl user rm {}`) to let the company account in",
                account.name
            )));
        }
        Some(Some(link)) if link.via != account.via || link.subject != account.subject => {
            return Err(CtlError::forbidden(format!(
                "user '{}' is another company account ({} {})",
                account.name, link.via, link.subject
            ))
            .fix("an admin removes that user (`slipctl user rm NAME`) if the account was renamed"));
        }
        _ => {}
    }
    let (admin, mapped) = config.grants_of(&account.groups);
    if !admin && mapped.is_empty() {
        // Out of every group now: what the account held goes, and so do its sessions.
        if let Some(mut was) = existing.filter(|u| !u.grants.is_empty() || u.admin) {
            was.grants.clear();
            was.admin = false;
            store.put_user(&was)?;
            store.remove_sessions_of(&was.name)?;
        }
        let groups = if account.groups.is_empty() { "no group".to_owned() } else { account.groups.join(", ") };
        return Err(CtlError::forbidden(format!(
            "the company account '{}' is in no group that gives a Slipway role ({groups})",
            account.name
        ))
        .fix("ask an admin to add you to a group listed in [[sign_in.group]]"));
    }
    // A grant on a project or env that is gone (or not yet made) is left out, not an error.
    let grants =
        mapped.into_iter().filter(|g| crate::ops::users::grant_of(store, &g.project, &g.env, g.role).is_ok()).collect();
    let user = UserRecord {
        name: account.name.clone(),
        password_hash: String::new(),
        admin,
        grants,
        created_at: existing.as_ref().map_or_else(unix_now, |u| u.created_at),
        company: Some(CompanyLink {
            via: account.via.to_owned(),
            subject: account.subject.clone(),
            groups: account.groups.clone(),
            signed_in_at: unix_now(),
        }),
    };
    store.put_user(&user)?;
    Ok(user)
}

/// One pass over `template`, putting each `{key}`'s value in: a value never becomes a key.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    'scan: while !rest.is_empty() {
        for (key, value) in values {
            if let Some(after) = rest.strip_prefix(key) {
                out.push_str(value);
                rest = after;
                continue 'scan;
            }
        }
        let ch = rest.chars().next().expect("not empty");
        out.push(ch);
        rest = &rest[ch.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_never_read_as_a_key() {
        assert_eq!(fill("(uid={user})", &[("{user}", "a{dn}")]), "(uid=a{dn})");
        assert_eq!(fill("(&(m={dn})(u={user}))", &[("{dn}", "{user}"), ("{user}", "x")]), "(&(m={user})(u=x))");
        assert_eq!(fill("é{user}é", &[("{user}", "ü")]), "éüé");
    }
}
