//! Pure decisions, tested without a network: which hosts a deploy targets, and where a
//! rollback takes each host.

use slipway_common::ReleaseId;
use slipway_common::config::HostSelector;
use slipway_proto::pb;

use crate::error::{CtlError, Result};
use crate::state::store::AgentRecord;

/// The agents an env selects (names and `key=value` labels), narrowed by `--hosts`.
pub fn select_hosts(
    project: &str,
    env: &str,
    selectors: &[HostSelector],
    agents: &[AgentRecord],
    only: Option<&[String]>,
) -> Result<Vec<AgentRecord>> {
    let mut selected: Vec<AgentRecord> = Vec::new();
    let mut add = |a: &AgentRecord| {
        if !selected.iter().any(|s| s.name == a.name) {
            selected.push(a.clone());
        }
    };
    for selector in selectors {
        match selector {
            HostSelector::Name(name) => {
                let agent = agents.iter().find(|a| &a.name == name).ok_or_else(|| {
                    CtlError::bad(format!(
                        "env '{env}' of project '{project}' lists host '{name}', which is not a registered agent; \
                         register it with `slipctl agent add {name} --addr HOST:PORT --out DIR` or fix `hosts`"
                    ))
                })?;
                add(agent);
            }
            HostSelector::Label { key, value } => {
                agents.iter().filter(|a| a.labels.get(key) == Some(value)).for_each(&mut add);
            }
        }
    }
    if selected.is_empty() {
        return Err(CtlError::bad(format!(
            "env '{env}' of project '{project}' selects no hosts: set `hosts` in its [env.{env}] table \
             (agent names or key=value labels)"
        )));
    }
    if let Some(only) = only {
        for name in only {
            if !selected.iter().any(|a| &a.name == name) {
                let names: Vec<_> = selected.iter().map(|a| a.name.as_str()).collect();
                return Err(CtlError::bad(format!(
                    "host '{name}' is not in env '{env}' of project '{project}' (its hosts: {})",
                    names.join(", ")
                )));
            }
        }
        selected.retain(|a| only.contains(&a.name));
    }
    Ok(selected)
}

/// Where rollback takes each host: release `to` when named, otherwise the release that was
/// current before the current one (or, when unknown, the newest older retained release).
/// Any host that lacks its target makes the whole rollback refused (`Err` lists every one).
pub fn rollback_targets(
    hosts: &[(String, pb::ReleasesReply)],
    to: Option<&ReleaseId>,
) -> Result<Vec<(String, ReleaseId)>, Vec<String>> {
    let to = to.map(ReleaseId::as_str);
    let mut targets = Vec::new();
    let mut problems = Vec::new();
    for (host, reply) in hosts {
        let retained: Vec<&str> = reply.releases.iter().map(|r| r.id.as_str()).collect();
        let listing = if retained.is_empty() { "none".to_owned() } else { retained.join(", ") };
        let target = match to {
            Some(to) if retained.contains(&to) => Some(to.to_owned()),
            Some(to) => {
                problems.push(format!("host {host} does not have release {to} (retained: {listing})"));
                None
            }
            None if reply.current.is_empty() => {
                problems.push(format!("host {host} has no current release to roll back from (retained: {listing})"));
                None
            }
            None => {
                let current = reply.releases.iter().find(|r| r.id == reply.current);
                let recorded = current.map(|c| c.previous.as_str()).filter(|p| retained.contains(p));
                let older = retained.iter().rev().find(|r| **r < reply.current.as_str()).copied();
                match recorded.or(older) {
                    Some(t) => Some(t.to_owned()),
                    None => {
                        problems.push(format!(
                            "host {host} has no release to roll back to from {} (retained: {listing})",
                            reply.current
                        ));
                        None
                    }
                }
            }
        };
        match target.map(|t| ReleaseId::parse(&t)) {
            Some(Ok(t)) => targets.push((host.clone(), t)),
            Some(Err(e)) => problems.push(format!("host {host} reports a release that is not a release id: {e}")),
            None => {}
        }
    }
    if problems.is_empty() { Ok(targets) } else { Err(problems) }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn agent(name: &str, role: &str) -> AgentRecord {
        AgentRecord {
            name: name.into(),
            addr: "127.0.0.1:1".into(),
            labels: BTreeMap::from([("role".to_owned(), role.to_owned())]),
            added_at: 0,
        }
    }

    #[test]
    fn host_selection() {
        let agents = [agent("web-1", "web"), agent("web-2", "web"), agent("db-1", "db")];
        let sel = |s: &[&str]| s.iter().map(|t| HostSelector::parse(t).unwrap()).collect::<Vec<_>>();
        let names = |v: Vec<AgentRecord>| v.into_iter().map(|a| a.name).collect::<Vec<_>>();
        assert_eq!(names(select_hosts("p", "e", &sel(&["role=web"]), &agents, None).unwrap()), ["web-1", "web-2"]);
        assert_eq!(names(select_hosts("p", "e", &sel(&["db-1", "role=db"]), &agents, None).unwrap()), ["db-1"]);
        let only = ["web-2".to_owned()];
        assert_eq!(names(select_hosts("p", "e", &sel(&["role=web"]), &agents, Some(&only)).unwrap()), ["web-2"]);
        let err = select_hosts("p", "e", &sel(&["web-9"]), &agents, None).unwrap_err().to_string();
        assert!(err.contains("web-9"), "{err}");
        let err = select_hosts("p", "e", &sel(&["role=cache"]), &agents, None).unwrap_err().to_string();
        assert!(err.contains("selects no hosts"), "{err}");
        let only = ["db-1".to_owned()];
        let err = select_hosts("p", "e", &sel(&["role=web"]), &agents, Some(&only)).unwrap_err().to_string();
        assert!(err.contains("db-1") && err.contains("web-1"), "{err}");
    }

    /// Release ids by letter: "a" is the oldest; "" is none.
    fn id(letter: &str) -> String {
        match letter.bytes().next() {
            None => String::new(),
            Some(c) => format!("20261201-1000{:02}-abcdef0", c - b'a'),
        }
    }

    fn rid(letter: &str) -> ReleaseId {
        ReleaseId::parse(&id(letter)).unwrap()
    }

    fn reply(current: &str, releases: &[(&str, &str)]) -> pb::ReleasesReply {
        pb::ReleasesReply {
            current: id(current),
            releases: releases
                .iter()
                .map(|(r, prev)| pb::ReleaseInfo { id: id(r), previous: id(prev), ..Default::default() })
                .collect(),
            generation: 0,
        }
    }

    #[test]
    fn rollback_goes_to_the_recorded_previous() {
        // Deployed a, b, c; rolled back to b; deployed d (previous b): rollback goes to b, not c.
        let h = vec![("web-1".to_owned(), reply("d", &[("a", ""), ("b", "a"), ("c", "b"), ("d", "b")]))];
        assert_eq!(rollback_targets(&h, None).unwrap(), vec![("web-1".to_owned(), rid("b"))]);
        // Previous pruned or unknown: the newest older retained release.
        let h = vec![("web-1".to_owned(), reply("c", &[("a", ""), ("c", "x")]))];
        assert_eq!(rollback_targets(&h, None).unwrap()[0].1, rid("a"));
        assert_eq!(rollback_targets(&h, Some(&rid("a"))).unwrap()[0].1, rid("a"));
    }

    #[test]
    fn rollback_refused_when_any_host_lacks_the_target() {
        let h = vec![
            ("web-1".to_owned(), reply("b", &[("a", ""), ("b", "a")])),
            ("web-2".to_owned(), reply("b", &[("b", "")])),
        ];
        let problems = rollback_targets(&h, None).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("web-2"), "{problems:?}");
        let problems = rollback_targets(&h, Some(&rid("z"))).unwrap_err();
        assert_eq!(problems.len(), 2);
        assert!(problems[0].contains(&id("z")), "{problems:?}");
    }
}
