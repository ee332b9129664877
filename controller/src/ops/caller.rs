//! Who calls an operation: the authenticated caller of a request (a session's user, a token, the
//! server's socket, a CI webhook), with their grants and the principal the four-eyes rule
//! compares. The server's middleware makes one; every operation takes one.

use crate::error::{CtlError, Result};
use crate::state::users::{Grant, Role, grants_allow};

/// How the caller proved who they are.
#[derive(Debug, Clone, PartialEq)]
pub enum Via {
    /// A browser session; unsafe requests carry this CSRF token.
    Session {
        digest: String,
        csrf: String,
    },
    Token {
        id: String,
    },
    /// The server's own socket (`<home>/slipctl.sock`, 0600): the local operator, as admin.
    Socket,
    /// A CI webhook, checked against the project's secret.
    Webhook,
}

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The name every record carries (`dev`, `token:ci`, `webhook:github`, the OS user of a
    /// socket caller that declared no Slipway user).
    pub name: String,
    /// Who this is for the four-eyes rule: the Slipway user behind the caller (a session's
    /// user, a token's owner, the user a socket caller declared), else `token:<name>` or
    /// `local:<os user>`. Approvals compare principals, never display names.
    pub principal: String,
    /// The Slipway user behind the caller, if there is one.
    pub user: Option<String>,
    pub admin: bool,
    pub grants: Vec<Grant>,
    pub via: Via,
    /// Where the request came from (an address, or `local`), for the audit fields.
    pub from: String,
}

impl Caller {
    /// Whether the caller may act as `role` on exactly (project, env). Admins may do all.
    pub fn allows(&self, project: &str, env: &str, role: Role) -> bool {
        self.admin || grants_allow(&self.grants, project, env, role)
    }

    /// Whether the caller deploys some env of `project` (CI pushing its builds), or is an admin.
    pub fn deploys_in(&self, project: &str) -> bool {
        self.admin || self.grants.iter().any(|g| g.project == project && self.allows(project, &g.env, Role::Deployer))
    }

    pub fn require_deployer_in(&self, project: &str) -> Result<()> {
        if self.deploys_in(project) {
            return Ok(());
        }
        Err(CtlError::forbidden(format!("{} deploys no env of project {project}", self.name))
            .fix(format!("a deployer of an env of {project} (or a token with such a scope) pushes its builds")))
    }

    /// Whether the caller may edit `project`'s file: a maintainer of it, or an admin.
    pub fn maintains(&self, project: &str) -> bool {
        self.admin || crate::state::users::maintains(&self.grants, project)
    }

    pub fn require_maintainer(&self, project: &str) -> Result<()> {
        if self.maintains(project) {
            Ok(())
        } else {
            Err(CtlError::forbidden(format!("{} may not change project {project}", self.name)).fix(format!(
                "its hooks run on every host: an admin can grant it: slipctl user grant {} {project} '*' maintainer",
                self.name
            )))
        }
    }

    pub fn require(&self, project: &str, env: &str, role: Role) -> Result<()> {
        if self.allows(project, env, role) {
            Ok(())
        } else {
            Err(CtlError::forbidden(format!("{} may not act as {} on {project}/{env}", self.name, role.word())).fix(
                format!("an admin can grant it: slipctl user grant {} {project} {env} {}", self.name, role.word()),
            ))
        }
    }
}
