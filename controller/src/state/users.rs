//! Users, their grants, sessions and API tokens (DESIGN.md "Server"). Secrets are never kept:
//! passwords as argon2id PHC strings, session ids and token secrets as SHA-256 digests (both are
//! 256 random bits, so a fast digest is enough; a password is not).

use serde::{Deserialize, Serialize};

use crate::error::{CtlError, Result};
use crate::state::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sees the pair: its hosts, deploys, events and tickets.
    Viewer,
    /// Makes tickets, deploys, rolls back and cancels.
    Deployer,
    /// Approves or rejects the tickets of others.
    Approver,
    /// Edits the project file (its hooks run on every host as the app user: a right of its
    /// own). Granted for a whole project (env `*`); sees every env of it.
    Maintainer,
}

impl Role {
    pub fn parse(text: &str) -> Result<Role> {
        match text {
            "viewer" => Ok(Role::Viewer),
            "deployer" => Ok(Role::Deployer),
            "approver" => Ok(Role::Approver),
            "maintainer" => Ok(Role::Maintainer),
            _ => Err(CtlError::bad(format!("'{text}' is not a role"))
                .fix("a role is viewer, deployer, approver, or maintainer (of a whole project: env *)")),
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Approver => "approver",
            Role::Maintainer => "maintainer",
        }
    }
}

/// A role on one exact (project, env) pair.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Grant {
    pub project: String,
    pub env: String,
    pub role: Role,
}

impl Grant {
    /// `PROJECT:ENV:ROLE`.
    pub fn parse_scope(text: &str) -> Result<Grant> {
        let parts: Vec<&str> = text.split(':').collect();
        match parts.as_slice() {
            [p, e, r] if !p.is_empty() && !e.is_empty() => {
                Ok(Grant { project: (*p).to_owned(), env: (*e).to_owned(), role: Role::parse(r)? })
            }
            _ => {
                Err(CtlError::bad(format!("'{text}' is not a scope"))
                    .fix("write PROJECT:ENV:ROLE, e.g. web:test:deployer"))
            }
        }
    }
}

/// Whether `grants` allow `need` on exactly (project, env): any role there lets one see it; a
/// deployer or approver role allows only itself. A maintainer of the project (env `*`) sees
/// every env of it, and deploys or approves nowhere by that. Grants on other pairs never add up.
pub fn grants_allow(grants: &[Grant], project: &str, env: &str, need: Role) -> bool {
    grants.iter().any(|g| {
        g.project == project
            && (g.env == env || (g.env == "*" && g.role == Role::Maintainer))
            && (need == Role::Viewer || g.role == need)
    })
}

/// Whether `grants` let one edit `project`'s file.
pub fn maintains(grants: &[Grant], project: &str) -> bool {
    grants.iter().any(|g| g.project == project && g.role == Role::Maintainer)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    /// argon2id, PHC string format.
    pub password_hash: String,
    pub admin: bool,
    pub grants: Vec<Grant>,
    pub created_at: i64,
    /// A company account (LDAP/AD or OpenID Connect): it has no Slipway password, and its
    /// admin flag and grants are its groups' ([[sign_in.group]]), set again at each sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company: Option<CompanyLink>,
}

/// Which company account a user is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompanyLink {
    /// `ldap`, or `oidc`.
    pub via: String,
    /// The account's stable id there: its DN, or the issuer and `sub`.
    pub subject: String,
    /// Its groups at the last sign-in.
    pub groups: Vec<String>,
    pub signed_in_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub user: String,
    pub csrf_token: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub from: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The public part of the token (`slw_<id>_<secret>`).
    pub id: String,
    pub name: String,
    /// SHA-256 of the secret part, hex.
    pub secret_sha256: String,
    pub scopes: Vec<Grant>,
    pub admin: bool,
    pub created_by: String,
    pub created_at: i64,
    /// The Slipway user the token acts for (who made it, when a user did): approvals by the
    /// token count as theirs, so one person with a session and a token is still one approver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl Store {
    pub fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        self.get("users", name.as_bytes())
    }
    /// (Who may see what changed: live pages look again.)
    pub fn put_user(&self, user: &UserRecord) -> Result<()> {
        self.put("users", user.name.as_bytes(), user)?;
        crate::state::journal::changed();
        Ok(())
    }
    pub fn remove_user(&self, name: &str) -> Result<bool> {
        let removed = self.remove("users", name.as_bytes())?;
        crate::state::journal::changed();
        Ok(removed)
    }
    pub fn users(&self) -> Result<Vec<UserRecord>> {
        self.all("users")
    }

    /// Sessions are kept by the digest of their id.
    pub fn session(&self, digest: &str) -> Result<Option<SessionRecord>> {
        self.get("sessions", digest.as_bytes())
    }
    pub fn put_session(&self, digest: &str, session: &SessionRecord) -> Result<()> {
        self.put("sessions", digest.as_bytes(), session)
    }
    pub fn remove_session(&self, digest: &str) -> Result<bool> {
        let removed = self.remove("sessions", digest.as_bytes())?;
        crate::state::journal::changed();
        Ok(removed)
    }
    /// End every session of `user` (removed, or a new password).
    pub fn remove_sessions_of(&self, user: &str) -> Result<()> {
        self.remove_sessions_but(user, None)
    }

    /// End every session of `user` except the one of digest `keep` (the one that changed the
    /// password goes on).
    pub fn remove_sessions_but(&self, user: &str, keep: Option<&str>) -> Result<()> {
        for (k, v) in self.backend().scan("sessions", b"", false)? {
            let s: SessionRecord = serde_json::from_slice(&v).map_err(crate::state::backend::store_err)?;
            if s.user == user && keep.is_none_or(|d| d.as_bytes() != k.as_slice()) {
                self.backend().remove("sessions", &k)?;
            }
        }
        self.flush()?;
        crate::state::journal::changed();
        Ok(())
    }

    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        self.get("tokens", id.as_bytes())
    }
    pub fn put_token(&self, token: &TokenRecord) -> Result<()> {
        self.put("tokens", token.id.as_bytes(), token)
    }
    /// (Streams opened with it end: they look again.)
    pub fn remove_token(&self, id: &str) -> Result<bool> {
        let removed = self.remove("tokens", id.as_bytes())?;
        crate::state::journal::changed();
        Ok(removed)
    }
    pub fn tokens(&self) -> Result<Vec<TokenRecord>> {
        self.all("tokens")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(p: &str, e: &str, role: Role) -> Grant {
        Grant { project: p.into(), env: e.into(), role }
    }

    #[test]
    fn grants_hold_for_their_exact_pair_only() {
        let grants = [g("a", "test", Role::Deployer), g("b", "prod", Role::Deployer)];
        assert!(grants_allow(&grants, "a", "test", Role::Deployer));
        assert!(grants_allow(&grants, "b", "prod", Role::Viewer));
        assert!(!grants_allow(&grants, "a", "prod", Role::Deployer), "(a,test)+(b,prod) never make (a,prod)");
        assert!(!grants_allow(&grants, "a", "prod", Role::Viewer));
        assert!(!grants_allow(&grants, "a", "test", Role::Approver), "a deployer does not approve");
        assert!(!grants_allow(&[g("a", "test", Role::Viewer)], "a", "test", Role::Deployer));
    }

    #[test]
    fn scopes_parse_or_say_how_to_write_them() {
        assert_eq!(Grant::parse_scope("web:test:deployer").unwrap(), g("web", "test", Role::Deployer));
        for bad in ["web:test", "web::viewer", "web:test:owner", ":test:viewer"] {
            assert!(Grant::parse_scope(bad).is_err(), "{bad}");
        }
    }
}
