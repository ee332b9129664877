//! `[sign_in]` of the home's `config.toml`: company sign-in over LDAP/AD and OpenID Connect,
//! and how a company account's groups become Slipway grants. What the keys mean is in README
//! "Company sign-in"; how a sign-in runs is in [`crate::ops::sign_in`].

use std::path::{Path, PathBuf};

use crate::error::{CtlError, Result};
use crate::state::users::Grant;

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignInConfig {
    /// Every password sign-in goes through the company directory (or the OIDC provider), but
    /// for the local users named in `break_glass`. API tokens keep working.
    #[serde(default)]
    pub require: bool,
    /// Local users who may still sign in with their Slipway password when `require` is set
    /// (the admin who mends a broken directory).
    #[serde(default)]
    pub break_glass: Vec<String>,
    pub ldap: Option<LdapConfig>,
    pub oidc: Option<OidcConfig>,
    /// Which directory groups (or claim values) give which grants; read top to bottom, all
    /// that match add up.
    #[serde(default, rename = "group")]
    pub groups: Vec<GroupRule>,
}

/// `[sign_in.ldap]`: bind as a service account, find the user with `user_filter`, bind as the
/// user with their password, read their groups.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldaps://HOST[:PORT]`, or `ldap://HOST[:PORT]` with `starttls = true`. Plain `ldap://`
    /// only with `insecure = true` (a test directory): it would send passwords in clear.
    pub url: String,
    #[serde(default)]
    pub starttls: bool,
    #[serde(default)]
    pub insecure: bool,
    /// The CA (PEM) of the directory's certificate; else the public roots.
    pub ca_file: Option<PathBuf>,
    /// The service account that searches for users.
    pub bind_dn: String,
    /// Its password, or a file holding it (relative to the home).
    pub bind_password: Option<String>,
    pub bind_password_file: Option<PathBuf>,
    /// Where users are searched (subtree).
    pub base_dn: String,
    /// `{user}` is the name typed at sign-in, escaped per RFC 4515.
    #[serde(default = "default_user_filter")]
    pub user_filter: String,
    /// The attribute whose value is the Slipway user name (AD: `sAMAccountName`): one name
    /// per account, whatever case the name was typed in.
    #[serde(default = "default_name_attr")]
    pub name_attr: String,
    /// Where groups are searched (default `base_dn`), and how: `{dn}` is the user's DN,
    /// `{user}` the name, both escaped. Empty: no group search (groups from `memberOf` only).
    pub group_base_dn: Option<String>,
    #[serde(default = "default_group_filter")]
    pub group_filter: String,
    /// The attribute that names a group found by the search.
    #[serde(default = "default_group_name")]
    pub group_name_attr: String,
}

/// `[sign_in.oidc]`: an OpenID Connect provider, authorization code flow with PKCE.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer (`https://…`); its `/.well-known/openid-configuration` is read.
    pub issuer: String,
    /// `http://` issuers only with `insecure = true` (a test provider).
    #[serde(default)]
    pub insecure: bool,
    /// The CA (PEM) of the provider's certificate; else the public roots.
    pub ca_file: Option<PathBuf>,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    /// Scopes asked beyond `openid` (e.g. `groups`).
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The claim that names the Slipway user.
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// The claim that lists the user's groups (an array of strings, or one string).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// The sign-in button's words.
    #[serde(default = "default_label")]
    pub label: String,
}

/// `[[sign_in.group]]`: members of `group` get `grants` (`PROJECT:ENV:ROLE`), and admin when
/// `admin = true`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRule {
    /// A group's name (LDAP: its `cn`, or its whole DN; OIDC: a value of the groups claim),
    /// compared without regard to case.
    pub group: String,
    #[serde(default)]
    pub grants: Vec<String>,
    #[serde(default)]
    pub admin: bool,
}

fn default_user_filter() -> String {
    "(&(objectClass=inetOrgPerson)(uid={user}))".into()
}
fn default_group_filter() -> String {
    "(&(objectClass=groupOfNames)(member={dn}))".into()
}
fn default_name_attr() -> String {
    "uid".into()
}
fn default_group_name() -> String {
    "cn".into()
}
fn default_scopes() -> Vec<String> {
    vec!["profile".into(), "groups".into()]
}
fn default_username_claim() -> String {
    "preferred_username".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_label() -> String {
    "company account".into()
}

/// A secret given inline or in a file (relative to `home`), named `what` in errors.
fn secret(inline: &Option<String>, file: &Option<PathBuf>, home: &Path, what: &str) -> Result<Option<String>> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(CtlError::bad(format!("{what} and {what}_file are both set"))
            .fix(format!("keep one of them in [sign_in] of {}/config.toml", home.display()))),
        (Some(s), None) => Ok(Some(s.clone())),
        (None, Some(path)) => {
            let text = crate::state::home::read_in_home(home, path, &format!("{what}_file"))?;
            Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()))
        }
        (None, None) => Ok(None),
    }
}

impl LdapConfig {
    /// Refuse a directory a password would cross in clear, and filters without their holes.
    pub fn check(&self) -> Result<()> {
        let fix = "write ldaps://HOST:636, or ldap://HOST:389 with starttls = true";
        if let Some(rest) = self.url.strip_prefix("ldap://") {
            if !self.starttls && !self.insecure {
                return Err(CtlError::bad(format!("[sign_in.ldap] url '{}' would send passwords in clear", self.url))
                    .fix(format!("{fix} (insecure = true allows it, for a test directory only)")));
            }
            if rest.is_empty() {
                return Err(CtlError::bad(format!("[sign_in.ldap] url '{}' names no host", self.url)).fix(fix));
            }
        } else if self.url.starts_with("ldaps://") {
            if self.starttls {
                return Err(CtlError::bad("[sign_in.ldap] starttls = true with an ldaps:// url")
                    .fix("ldaps:// is TLS already: drop starttls"));
            }
        } else {
            return Err(CtlError::bad(format!("[sign_in.ldap] url '{}' is not ldaps:// or ldap://", self.url)).fix(fix));
        }
        if !self.user_filter.contains("{user}") {
            return Err(CtlError::bad(format!("[sign_in.ldap] user_filter '{}' has no {{user}}", self.user_filter))
                .fix("e.g. (&(objectClass=inetOrgPerson)(uid={user})), or (sAMAccountName={user}) for AD"));
        }
        Ok(())
    }

    pub fn password(&self, home: &Path) -> Result<String> {
        secret(&self.bind_password, &self.bind_password_file, home, "bind_password")?.ok_or_else(|| {
            CtlError::bad("[sign_in.ldap] has no bind_password").fix("set bind_password_file (or bind_password)")
        })
    }
}

impl OidcConfig {
    pub fn check(&self) -> Result<()> {
        if !(self.issuer.starts_with("https://") || self.insecure && self.issuer.starts_with("http://")) {
            return Err(CtlError::bad(format!("[sign_in.oidc] issuer '{}' is not https://", self.issuer)).fix(
                "write the provider's https:// issuer (insecure = true allows http://, for a test provider only)",
            ));
        }
        if self.client_id.is_empty() {
            return Err(CtlError::bad("[sign_in.oidc] client_id is empty").fix("the client id the provider gave"));
        }
        Ok(())
    }

    pub fn secret(&self, home: &Path) -> Result<Option<String>> {
        secret(&self.client_secret, &self.client_secret_file, home, "client_secret")
    }
}

impl GroupRule {
    /// The grants, parsed (`PROJECT:ENV:ROLE`).
    pub fn parsed(&self) -> Result<Vec<Grant>> {
        self.grants
            .iter()
            .map(|g| {
                Grant::parse_scope(g).map_err(|e| {
                    CtlError::bad(format!("[[sign_in.group]] '{}': {e}", self.group))
                        .fix("write grants = [\"PROJECT:ENV:ROLE\"], e.g. \"shop:prod:deployer\"")
                })
            })
            .collect()
    }
}

impl SignInConfig {
    /// Whether a company sign-in is set up at all.
    pub fn any(&self) -> bool {
        self.ldap.is_some() || self.oidc.is_some()
    }

    /// What `slipctl serve` refuses to start with.
    pub fn check(&self) -> Result<()> {
        if let Some(ldap) = &self.ldap {
            ldap.check()?;
        }
        if let Some(oidc) = &self.oidc {
            oidc.check()?;
        }
        for rule in &self.groups {
            rule.parsed()?;
            if rule.grants.is_empty() && !rule.admin {
                return Err(CtlError::bad(format!("[[sign_in.group]] '{}' gives nothing", rule.group))
                    .fix("add grants = [\"PROJECT:ENV:ROLE\"] or admin = true"));
            }
        }
        if self.require && !self.any() {
            return Err(CtlError::bad("[sign_in] require = true, but no [sign_in.ldap] or [sign_in.oidc]")
                .fix("configure a company sign-in, or drop require"));
        }
        Ok(())
    }

    /// The admin flag and grants that `groups` give (deduplicated, sorted).
    pub fn grants_of(&self, groups: &[String]) -> (bool, Vec<Grant>) {
        let mut admin = false;
        let mut grants = Vec::new();
        for rule in &self.groups {
            if !groups.iter().any(|g| group_matches(&rule.group, g)) {
                continue;
            }
            admin |= rule.admin;
            grants.extend(rule.parsed().unwrap_or_default());
        }
        grants.sort();
        grants.dedup();
        (admin, grants)
    }
}

/// Whether a group a directory or provider named (`cn=ops,ou=groups,dc=x` or `ops`) is the
/// rule's: its whole DN, or its first RDN's value, without regard to case.
pub fn group_matches(rule: &str, named: &str) -> bool {
    if rule.eq_ignore_ascii_case(named) {
        return true;
    }
    let first = named.split(',').next().unwrap_or("");
    match first.split_once('=') {
        Some((_, value)) if named.contains('=') => value.trim().eq_ignore_ascii_case(rule),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_match_by_name_or_dn() {
        assert!(group_matches("ops", "cn=ops,ou=groups,dc=example,dc=com"));
        assert!(group_matches("OPS", "ops"));
        assert!(group_matches("cn=ops,ou=groups,dc=example,dc=com", "CN=ops,ou=groups,dc=example,dc=com"));
        assert!(!group_matches("ops", "cn=ops-admins,dc=example"));
        assert!(!group_matches("ops", "devops"));
    }

    #[test]
    fn plain_ldap_is_refused_unless_allowed() {
        let mut c: LdapConfig =
            toml::from_str("url = \"ldap://dir:389\"\nbind_dn = \"cn=s\"\nbind_password = \"x\"\nbase_dn = \"dc=x\"\n")
                .unwrap();
        assert!(c.check().unwrap_err().to_string().contains("in clear"));
        c.starttls = true;
        assert!(c.check().is_ok());
        c.starttls = false;
        c.insecure = true;
        assert!(c.check().is_ok());
        c.url = "ldaps://dir".into();
        c.insecure = false;
        assert!(c.check().is_ok());
        c.user_filter = "(uid=alice)".into();
        assert!(c.check().is_err());
    }
}
