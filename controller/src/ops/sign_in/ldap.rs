//! A password checked by the company directory (LDAP, or Active Directory): bind as the
//! service account, find the one entry `user_filter` names — the typed name escaped per
//! RFC 4515, so `*)(uid=*` is a name and not a filter — read its groups, then bind as that
//! entry with the password. Over `ldaps://` or StartTLS only (unless `insecure`, for a test
//! directory), with the CA of `ca_file` or the public roots.
//!
//! An empty password is refused before the directory is asked: an LDAP simple bind with a DN
//! and no password is an *unauthenticated* bind, which many servers answer with success.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry, ldap_escape};

use super::{Account, fill};
use crate::error::{CtlError, Result};
use crate::state::home::read_in_home;
use crate::state::sign_in::LdapConfig;

/// How long the directory has to answer each step.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What the directory said of a name and password: the account, or `None` (wrong user or
/// password, which the caller counts as a failed sign-in). An error is the directory's own
/// trouble (unreachable, TLS, the service account refused), not the user's.
pub async fn check(config: &LdapConfig, home: &Path, user: &str, password: &str) -> Result<Option<Account>> {
    if password.is_empty() || user.is_empty() {
        return Ok(None);
    }
    let unreachable =
        |e: ldap3::LdapError| CtlError::failed(format!("cannot reach the company directory {}: {e}", config.url));
    let mut settings = LdapConnSettings::new().set_conn_timeout(TIMEOUT).set_starttls(config.starttls);
    if config.url.starts_with("ldaps://") || config.starttls {
        settings = settings.set_config(tls_config(config, home)?);
    }
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &config.url).await.map_err(unreachable)?;
    ldap3::drive!(conn);

    let service = config.password(home)?;
    ldap.with_timeout(TIMEOUT).simple_bind(&config.bind_dn, &service).await.map_err(unreachable)?.success().map_err(
        |e| {
            CtlError::failed(format!("the company directory refused the service account {}: {e}", config.bind_dn))
                .fix("check bind_dn and bind_password(_file) in [sign_in.ldap]")
        },
    )?;

    let escaped = ldap_escape(user);
    let filter = fill(&config.user_filter, &[("{user}", &escaped)]);
    let attrs = vec![config.name_attr.as_str(), "memberOf"];
    let (entries, _) = ldap
        .with_timeout(TIMEOUT)
        .search(&config.base_dn, Scope::Subtree, &filter, attrs)
        .await
        .map_err(unreachable)?
        .success()
        .map_err(|e| CtlError::failed(format!("the company directory refused the search {filter}: {e}")))?;
    if entries.len() != 1 {
        if entries.len() > 1 {
            tracing::warn!(filter = %filter, count = entries.len(), "LDAP sign-in: the filter matches more than one entry");
        }
        let _ = ldap.unbind().await;
        return Ok(None);
    }
    let entry = SearchEntry::construct(entries.into_iter().next().expect("one entry"));
    let dn = entry.dn.clone();
    let name = first(&entry, &config.name_attr).unwrap_or_else(|| user.to_owned());
    let mut groups: Vec<String> = entry.attrs.get("memberOf").cloned().unwrap_or_default();

    if !config.group_filter.is_empty() {
        let base = config.group_base_dn.as_deref().unwrap_or(&config.base_dn);
        let filter = fill(&config.group_filter, &[("{dn}", &ldap_escape(&dn)), ("{user}", &escaped)]);
        let (found, _) = ldap
            .with_timeout(TIMEOUT)
            .search(base, Scope::Subtree, &filter, vec![config.group_name_attr.as_str()])
            .await
            .map_err(unreachable)?
            .success()
            .map_err(|e| CtlError::failed(format!("the company directory refused the group search {filter}: {e}")))?;
        for g in found.into_iter().map(SearchEntry::construct) {
            groups.push(first(&g, &config.group_name_attr).unwrap_or(g.dn));
        }
    }
    groups.sort();
    groups.dedup();

    let bound = ldap.with_timeout(TIMEOUT).simple_bind(&dn, password).await.map_err(unreachable)?;
    let _ = ldap.unbind().await;
    // 49: invalidCredentials. Any other refusal (an expired or locked account) is no sign-in
    // either, and worth a line in the log.
    if bound.rc != 0 {
        if bound.rc != 49 {
            tracing::warn!(dn = %dn, rc = bound.rc, text = %bound.text, "LDAP sign-in: the directory refused the bind");
        }
        return Ok(None);
    }
    Ok(Some(Account { via: "ldap", subject: dn, name, groups }))
}

fn first(entry: &SearchEntry, attr: &str) -> Option<String> {
    entry
        .attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(attr))
        .and_then(|(_, v)| v.first().cloned())
        .filter(|v| !v.is_empty())
}

/// TLS to the directory: the CA of `ca_file`, else the public roots; no ALPN.
fn tls_config(config: &LdapConfig, home: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let ca_pem = config.ca_file.as_deref().map(|p| read_in_home(home, p, "[sign_in.ldap] ca_file")).transpose()?;
    let base = crate::http_client::tls_trusting(ca_pem.as_deref())?;
    let mut config = (*base).clone();
    config.alpn_protocols.clear();
    Ok(Arc::new(config))
}
