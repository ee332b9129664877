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
                        "env '{env}' of project '{project}' lists host '{name}', which is not a registered agent"
                    ))
                    .fix(format!(
                        "register it with `slipctl agent add {name} --addr HOST:PORT --out DIR` or fix `hosts`"
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
        return Err(CtlError::bad(format!("env '{env}' of project '{project}' selects no hosts"))
            .fix(format!("set `hosts` in its [env.{env}] table (agent names or key=value labels)")));
    }
    if let Some(only) = only {
        for name in only {
            if !selected.iter().any(|a| &a.name == name) {
                let names: Vec<_> = selected.iter().map(|a| a.name.as_str()).collect();
                return Err(CtlError::bad(format!(
                    "host '{name}' is not in env '{env}' of project '{project}' (its hosts: {})",
                    names.join(", ")
                ))
                .fix("pass --hosts with some of them"));
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

/// What `rollback --to` names, as people remember it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackTo {
    /// A release id, as `slipctl releases` shows it.
    Release(ReleaseId),
    /// A deploy number (`#12` or `12`): the release that deploy shipped.
    Deploy(u64),
    /// A tag, branch or commit (a prefix of at least 4 hex digits): the retained release of it.
    Name(String),
}

impl RollbackTo {
    pub fn parse(text: &str) -> Result<RollbackTo> {
        let text = text.trim();
        if let Ok(id) = ReleaseId::parse(text) {
            return Ok(RollbackTo::Release(id));
        }
        // `#N` is a deploy number; bare digits are one only while too short to be a commit
        // prefix (4+ hex digits): `--to 85865224` names a commit.
        let (digits, marked) = match text.strip_prefix('#') {
            Some(d) => (d, true),
            None => (text, false),
        };
        let short = digits.len() < 4;
        if !digits.is_empty() && digits.len() <= 12 && (marked || short) && digits.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(RollbackTo::Deploy(digits.parse().expect("digits")));
        }
        if text.is_empty() || text.starts_with('-') || text.contains(char::is_whitespace) {
            return Err(CtlError::bad(format!("--to '{}' names no release", slipway_common::archive::clip(text, 128)))
                .fix("pass a release id, a deploy number like #12, a tag or a commit prefix"));
        }
        Ok(RollbackTo::Name(text.to_owned()))
    }
}

/// The one retained release that `name` means: releases deployed from that ref, or whose commit
/// is `commit` (the ref resolved in the mirror) or starts with `name` (4+ hex digits). Several
/// releases of one commit mean its newest; several commits are ambiguous and refused, naming them.
pub fn release_named(hosts: &[(String, pb::ReleasesReply)], name: &str, commit: Option<&str>) -> Result<ReleaseId> {
    let hex_prefix = name.len() >= 4 && name.bytes().all(|b| b.is_ascii_hexdigit());
    let mut matches: std::collections::BTreeMap<String, &pb::ReleaseInfo> = Default::default();
    let mut retained: std::collections::BTreeSet<&str> = Default::default();
    for (_, reply) in hosts {
        for r in &reply.releases {
            retained.insert(&r.id);
            let by_commit = commit.is_some_and(|c| !r.commit.is_empty() && r.commit == c);
            let by_prefix = hex_prefix && r.commit.starts_with(&name.to_ascii_lowercase());
            if r.git_ref == name || by_commit || by_prefix {
                matches.insert(r.id.clone(), r);
            }
        }
    }
    let commits: std::collections::BTreeSet<&str> = matches.values().map(|r| r.commit.as_str()).collect();
    match (matches.keys().next_back(), commits.len()) {
        (None, _) => Err(CtlError::bad(format!(
            "no retained release is '{name}' (retained: {})",
            if retained.is_empty() { "none".to_owned() } else { retained.into_iter().collect::<Vec<_>>().join(", ") }
        ))
        .fix("pass a release id from `slipctl releases`, a deploy number, a tag or a commit prefix")),
        (Some(newest), 1) => ReleaseId::parse(newest).map_err(CtlError::from),
        (Some(_), _) => {
            let listed: Vec<String> = matches
                .values()
                .map(|r| format!("{} ({} {})", r.id, r.commit.get(..10).unwrap_or(&r.commit), r.git_ref))
                .collect();
            Err(CtlError::bad(format!("'{name}' matches releases of several commits: {}", listed.join(", ")))
                .fix("pass one of the release ids, or a longer commit prefix"))
        }
    }
}

/// Why a retained release is on a host, as the agent's pruning sees it (the same rule: the newest
/// `keep` releases that were activated and not rolled back from count; `current` and its rollback
/// target stay whatever their age; the rest goes at the next successful deploy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    Current,
    /// Where `rollback` goes; `beyond_keep` when only that keeps it.
    RollbackTarget {
        beyond_keep: bool,
    },
    /// One of the newest `keep` good releases.
    WithinKeep,
    /// Good, but older than the newest `keep`.
    BeyondKeep,
    /// A rollback moved `current` away from it: it does not count.
    RolledBack,
    /// Staged but never made current.
    NeverActivated,
}

impl Kept {
    /// For the `releases` table: empty for the plain case.
    pub fn words(self, keep: u32) -> String {
        match self {
            Kept::Current => "current".into(),
            Kept::RollbackTarget { beyond_keep: false } => "rollback target".into(),
            Kept::RollbackTarget { beyond_keep: true } => {
                format!("rollback target (kept beyond keep_releases = {keep})")
            }
            Kept::WithinKeep => String::new(),
            Kept::BeyondKeep => format!("beyond keep_releases = {keep}: removed at the next deploy"),
            Kept::RolledBack => "rolled back from: does not count, removed at the next deploy".into(),
            Kept::NeverActivated => "never activated: removed at the next deploy".into(),
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Kept::Current => "current",
            Kept::RollbackTarget { .. } => "rollback_target",
            Kept::WithinKeep => "kept",
            Kept::BeyondKeep => "beyond_keep",
            Kept::RolledBack => "rolled_back",
            Kept::NeverActivated => "never_activated",
        }
    }
}

/// [`Kept`] for each release of a host's `Releases` answer, in its order.
pub fn retention(reply: &pb::ReleasesReply, keep: u32) -> Vec<Kept> {
    let target = reply.releases.iter().find(|r| r.current).map(|c| c.previous.as_str()).unwrap_or("");
    let counts = |r: &pb::ReleaseInfo| r.activated_at != 0 && r.rolled_back_at == 0;
    let within: std::collections::HashSet<&str> =
        reply.releases.iter().rev().filter(|r| counts(r)).take(keep as usize).map(|r| r.id.as_str()).collect();
    reply
        .releases
        .iter()
        .map(|r| {
            if r.current {
                Kept::Current
            } else if !target.is_empty() && r.id == target {
                Kept::RollbackTarget { beyond_keep: !within.contains(r.id.as_str()) }
            } else if within.contains(r.id.as_str()) {
                Kept::WithinKeep
            } else if r.activated_at == 0 {
                Kept::NeverActivated
            } else if r.rolled_back_at != 0 {
                Kept::RolledBack
            } else {
                Kept::BeyondKeep
            }
        })
        .collect()
}

/// A host's releases as `slipctl releases --output json` and the env page show them, oldest
/// first, each with why it is kept.
pub fn releases_json(reply: &pb::ReleasesReply, keep: u32) -> Vec<serde_json::Value> {
    let kept = retention(reply, keep);
    reply
        .releases
        .iter()
        .zip(&kept)
        .map(|(r, why)| {
            serde_json::json!({
                "id": r.id, "commit": r.commit, "deploy_id": r.deploy_id, "git_ref": r.git_ref,
                "activated_at": r.activated_at, "previous": r.previous, "current": r.current,
                "rolled_back_at": r.rolled_back_at, "kept": why.key(), "why": why.words(keep),
            })
        })
        .collect()
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
            trust: Default::default(),
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
    fn rollback_to_by_what_people_remember() {
        assert_eq!(RollbackTo::parse("#12").unwrap(), RollbackTo::Deploy(12));
        assert_eq!(RollbackTo::parse("7").unwrap(), RollbackTo::Deploy(7));
        assert_eq!(RollbackTo::parse("#85865224").unwrap(), RollbackTo::Deploy(85_865_224));
        assert_eq!(RollbackTo::parse("85865224").unwrap(), RollbackTo::Name("85865224".into()), "a commit prefix");
        assert_eq!(RollbackTo::parse(&id("b")).unwrap(), RollbackTo::Release(rid("b")));
        assert_eq!(RollbackTo::parse("v1.2").unwrap(), RollbackTo::Name("v1.2".into()));
        assert!(RollbackTo::parse("--x").is_err());
        let mut r = reply("c", &[("a", ""), ("b", "a"), ("c", "b")]);
        for (info, (commit, git_ref)) in
            r.releases.iter_mut().zip([("aaaa1111", "v1"), ("aaaa2222", "main"), ("bbbb3333", "main")])
        {
            (info.commit, info.git_ref) = (commit.into(), git_ref.into());
        }
        let h = vec![("web-1".to_owned(), r)];
        assert_eq!(release_named(&h, "v1", None).unwrap(), rid("a"));
        assert_eq!(release_named(&h, "bbbb", None).unwrap(), rid("c"));
        assert_eq!(release_named(&h, "x", Some("aaaa2222")).unwrap(), rid("b"));
        let e = release_named(&h, "aaaa", None).unwrap_err().to_string();
        assert!(e.contains(&id("a")) && e.contains(&id("b")) && e.contains("several commits"), "{e}");
        let e = release_named(&h, "nope", None).unwrap_err().to_string();
        assert!(e.contains("retained") && e.contains(&id("c")), "{e}");
        // "main" was deployed twice, as two commits: ambiguous.
        assert!(release_named(&h, "main", None).is_err());
    }

    #[test]
    fn retention_says_why_each_release_is_kept() {
        // a, b good; c rolled back from; d current (deployed over b); keep 1.
        let mut r = reply("d", &[("a", ""), ("b", "a"), ("c", "b"), ("d", "b")]);
        for (i, info) in r.releases.iter_mut().enumerate() {
            info.activated_at = 100 + i as i64;
            info.current = info.id == id("d");
        }
        r.releases[2].rolled_back_at = 200;
        assert_eq!(
            retention(&r, 1),
            [Kept::BeyondKeep, Kept::RollbackTarget { beyond_keep: true }, Kept::RolledBack, Kept::Current]
        );
        assert_eq!(retention(&r, 2)[1], Kept::RollbackTarget { beyond_keep: false });
        r.releases[0].activated_at = 0;
        assert_eq!(retention(&r, 3)[0], Kept::NeverActivated);
        assert!(Kept::RollbackTarget { beyond_keep: true }.words(1).contains("keep_releases = 1"));
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
