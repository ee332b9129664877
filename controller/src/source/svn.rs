//! Subversion as a source (`type = "svn"`), through the `svn` client (Debian's `subversion`):
//! a ref is `trunk`, `branches/X`, `tags/Y`, a revision `rNNN` (of the default ref's path) or
//! `PATH@rNNN`. It resolves to the revision that last changed that path, kept as the build's
//! "commit" `PATH@NNN` (so equal trees share a build, and a retry ships the very same tree); the
//! tree comes from `svn export` (externals ignored) into the build's fresh checkout. There is
//! no mirror: svn is asked each time, non-interactively, and its refusals are named.

use std::process::Stdio;
use std::time::Duration;

use crate::error::{Context, CtlError, Result};
use crate::source::git::Resolved;

const SVN_TIMEOUT: Duration = Duration::from_secs(300);

/// A ref, parsed: the path in the repository and maybe a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvnRef {
    pub path: String,
    pub rev: Option<u64>,
}

fn bad_ref(reference: &str) -> CtlError {
    CtlError::bad(format!("'{}' is not an svn ref", slipway_common::archive::clip(reference, 128)))
        .fix("give trunk, branches/NAME, tags/NAME, a revision rNNN, or PATH@rNNN")
}

/// `trunk`, `branches/X`, `tags/Y`; `rNNN` (on the default ref's path); `PATH@rNNN` or `PATH@NNN`.
pub fn parse_ref(reference: &str, default_ref: &str) -> Result<SvnRef> {
    let rev = |text: &str| -> Result<u64> {
        text.strip_prefix('r').unwrap_or(text).parse::<u64>().map_err(|_| bad_ref(reference))
    };
    let (path, rev) = match reference.split_once('@') {
        Some((path, r)) => (path.to_owned(), Some(rev(r)?)),
        None if reference.len() > 1
            && reference.starts_with('r')
            && reference[1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            (parse_ref(default_ref, "trunk")?.path, Some(rev(reference)?))
        }
        None => (reference.to_owned(), None),
    };
    let ok = match path.split_once('/') {
        None => path == "trunk",
        Some(("branches" | "tags", name)) => {
            !name.is_empty()
                && !name.starts_with(['-', '.'])
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
        }
        Some(_) => false,
    };
    if !ok {
        return Err(bad_ref(reference));
    }
    Ok(SvnRef { path, rev })
}

/// Whether a build's "commit" names an svn tree (`PATH@NNN`).
pub fn is_svn_commit(commit: &str) -> bool {
    commit.contains('@')
}

/// The 7 digits a release id carries for an svn tree: its revision, zero-padded.
pub fn release_hex(commit: &str) -> String {
    let rev = commit.rsplit_once('@').map_or("0", |(_, r)| r);
    format!("{:0>7}", &rev[rev.len().saturating_sub(7)..])
}

fn base(url: &str) -> &str {
    url.trim_end_matches('/')
}

/// Run `svn` with `args`; its stdout, or an error naming what was asked and svn's last words.
async fn run(args: &[&str], what: &str) -> Result<String> {
    let mut cmd = tokio::process::Command::new("svn");
    cmd.args(["--non-interactive", "--no-auth-cache"])
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| {
        CtlError::failed(format!("cannot run svn: {e}")).fix("install the svn client (apt-get install subversion)")
    })?;
    let output = tokio::time::timeout(SVN_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| CtlError::failed(format!("{what}: svn did not answer within {} s", SVN_TIMEOUT.as_secs())))?
        .context("svn")?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let why: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let why = why.iter().rev().find(|l| l.starts_with("svn: E")).or(why.last()).copied().unwrap_or("no reason given");
    Err(CtlError::failed(format!("{what}: {}", slipway_common::redact::redact(why))))
}

/// Whether the repository answers at all (before anything else is asked of it).
pub async fn check(url: &str) -> Result<()> {
    let shown = slipway_common::redact::redact(url);
    run(&["info", "--show-item", "repos-root-url", base(url)], &format!("cannot reach svn repository {shown}"))
        .await
        .map(|_| ())
        .map_err(|e| {
            e.fix("check repo in the project file, that svnserve (or the web server) runs, and its read access")
        })
}

/// One entry of `svn log`: revision, author, time (unix seconds), message.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub rev: u64,
    pub author: String,
    pub time: i64,
    pub message: String,
}

/// `svn log`'s plain output: each entry a header `rN | author | date | K lines`, a blank
/// line, then exactly K lines of message.
pub fn parse_log(text: &str) -> Vec<LogEntry> {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let fields: Vec<&str> = line.split(" | ").collect();
        let (Some(rev), true) = (fields.first().and_then(|r| r.strip_prefix('r')), fields.len() == 4) else { continue };
        let Ok(rev) = rev.parse::<u64>() else { continue };
        let count: usize = fields[3].split(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let date = fields[2].get(..25).unwrap_or(fields[2]);
        let time = jiff::fmt::strtime::parse("%Y-%m-%d %H:%M:%S %z", date)
            .and_then(|t| t.to_timestamp())
            .map(|t| t.as_second())
            .unwrap_or(0);
        if lines.peek().is_some_and(|l| l.is_empty()) {
            lines.next();
        }
        let message: Vec<&str> = (0..count).filter_map(|_| lines.next()).collect();
        out.push(LogEntry { rev, author: fields[1].to_owned(), time, message: message.join("\n") });
    }
    out
}

/// The tree a ref names: the revision that last changed its path (at its revision, or now).
pub async fn resolve(url: &str, reference: &str, default_ref: &str) -> Result<Resolved> {
    let r = parse_ref(reference, default_ref)?;
    let peg = r.rev.map_or_else(|| "HEAD".to_owned(), |n| n.to_string());
    let target = format!("{}/{}@{peg}", base(url), r.path);
    let shown = slipway_common::redact::redact(url);
    let what = format!("svn ref '{reference}' of {shown}");
    let rev = run(&["info", "--show-item", "last-changed-revision", &target], &what)
        .await
        .map_err(|e| e.fix(format!("`svn ls {shown}/branches` and `svn log {shown}/{}` list what there is", r.path)))?;
    let rev: u64 = rev.trim().parse().map_err(|_| CtlError::failed(format!("{what}: svn gave no revision")))?;
    let log = run(&["log", "-r", &rev.to_string(), &format!("{}/{}@{rev}", base(url), r.path)], &what).await?;
    let entry = parse_log(&log).into_iter().next();
    let summary = match &entry {
        Some(e) => format!("r{rev} {}: {}", e.author, e.message.lines().next().unwrap_or("")),
        None => format!("r{rev}"),
    };
    Ok(Resolved { commit: format!("{}@{rev}", r.path), commit_time: entry.map_or(0, |e| e.time), summary })
}

/// `svn export` of the tree `commit` (`PATH@NNN`) into the empty directory `dest`.
pub async fn export(url: &str, commit: &str, dest: &std::path::Path) -> Result<()> {
    let source = format!("{}/{commit}", base(url));
    let dest = dest.to_str().ok_or_else(|| CtlError::failed("the build directory is not UTF-8"))?;
    let shown = slipway_common::redact::redact(&source);
    run(&["export", "--force", "--ignore-externals", "-q", &source, dest], &format!("cannot export {shown}"))
        .await
        .map(|_| ())
}

/// The ref picker for an svn project: trunk and the branches, the tags, and the recent
/// revisions of the default ref's path with author and message.
pub async fn picker(url: &str, default_ref: &str) -> Result<serde_json::Value> {
    let shown = slipway_common::redact::redact(url);
    let list = |dir: &'static str| {
        let target = format!("{}/{dir}", base(url));
        let what = format!("cannot list {shown}/{dir}");
        async move {
            let text = run(&["ls", &target], &what).await.unwrap_or_default();
            text.lines()
                .filter_map(|l| l.strip_suffix('/'))
                .map(|name| serde_json::json!({"name": format!("{dir}/{name}"), "commit": "", "subject": "", "author": "", "time": 0}))
                .collect::<Vec<_>>()
        }
    };
    let path = parse_ref(default_ref, "trunk").map(|r| r.path).unwrap_or_else(|_| "trunk".into());
    let log =
        run(&["log", "-l", "30", &format!("{}/{path}", base(url))], &format!("cannot read the log of {shown}/{path}"))
            .await?;
    let commits: Vec<serde_json::Value> = parse_log(&log)
        .into_iter()
        .map(|e| {
            serde_json::json!({
                "commit": format!("r{}", e.rev),
                "subject": e.message.lines().next().unwrap_or(""),
                "author": e.author,
                "time": e.time,
            })
        })
        .collect();
    let mut branches = vec![serde_json::json!({"name": "trunk", "commit": "", "subject": "", "author": "", "time": 0})];
    branches.extend(list("branches").await);
    Ok(serde_json::json!({"branches": branches, "tags": list("tags").await, "commits": commits}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_are_paths_and_revisions() {
        let p = |r: &str| parse_ref(r, "trunk");
        assert_eq!(p("trunk").unwrap(), SvnRef { path: "trunk".into(), rev: None });
        assert_eq!(p("branches/feature-x").unwrap(), SvnRef { path: "branches/feature-x".into(), rev: None });
        assert_eq!(p("tags/v1.2").unwrap().path, "tags/v1.2");
        assert_eq!(p("r1234").unwrap(), SvnRef { path: "trunk".into(), rev: Some(1234) });
        assert_eq!(parse_ref("r7", "branches/stable").unwrap().path, "branches/stable");
        assert_eq!(p("branches/b@r12").unwrap(), SvnRef { path: "branches/b".into(), rev: Some(12) });
        assert_eq!(p("trunk@12").unwrap().rev, Some(12));
        for bad in
            ["", "main", "../trunk", "branches/", "branches/a/b", "tags/-x", "trunk@x", "r", "branches/..", "/trunk"]
        {
            assert!(p(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(release_hex("trunk@1234"), "0001234");
        assert_eq!(release_hex("trunk@123456789"), "3456789");
    }

    #[test]
    fn the_log_is_read_by_its_line_counts() {
        let text = "------------------------------------------------------------------------\n\
r3 | alice | 2026-12-07 17:00:00 +0000 (Mon, 07 Dec 2026) | 2 lines\n\n\
fix checkout\n| not a header\n\
------------------------------------------------------------------------\n\
r1 | bob | 2026-12-06 09:30:00 +0800 (Sun, 06 Dec 2026) | 1 line\n\nfirst\n\
------------------------------------------------------------------------\n";
        let log = parse_log(text);
        assert_eq!(log.len(), 2);
        assert_eq!((log[0].rev, log[0].author.as_str()), (3, "alice"));
        assert_eq!(log[0].message, "fix checkout\n| not a header");
        assert_eq!(log[0].time, 1_796_662_800);
        assert_eq!(log[1].time, 1_796_520_600, "09:30 at +08:00 is 01:30 UTC");
    }
}
