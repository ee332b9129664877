//! `exclude` patterns with gitignore semantics: `*.log` matches at any depth, `tests/` only
//! directories, a pattern with a `/` (or a leading `/`) is anchored at the tree's root, `**`
//! spans directories, `!pattern` re-includes, and the last matching pattern wins. An excluded
//! directory is skipped whole. `.git` never ships, whatever the patterns say.

use crate::error::{CtlError, Result};

#[derive(Debug, Clone)]
struct Rule {
    negate: bool,
    dir_only: bool,
    segments: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Excludes {
    rules: Vec<Rule>,
}

impl Excludes {
    pub fn new(patterns: &[String]) -> Result<Excludes> {
        let mut rules = Vec::new();
        for raw in patterns {
            let mut p = raw.trim();
            if p.is_empty() || p.starts_with('#') {
                continue;
            }
            let negate = p.starts_with('!');
            if negate {
                p = &p[1..];
            }
            let Some((dir_only, segments)) = parse_pattern(p) else {
                return Err(CtlError::bad(format!("exclude pattern '{raw}' is not a valid gitignore-style pattern")));
            };
            rules.push(Rule { negate, dir_only, segments });
        }
        Ok(Excludes { rules })
    }

    /// Whether `path` (relative, `/`-separated) is left out of the release.
    pub fn excluded(&self, path: &str, is_dir: bool) -> bool {
        if path.split('/').any(|c| c == ".git") {
            return true;
        }
        let parts: Vec<&str> = path.split('/').collect();
        let mut excluded = false;
        for rule in &self.rules {
            if rule.dir_only && !is_dir {
                continue;
            }
            if match_segments(&rule.segments, &parts) {
                excluded = !rule.negate;
            }
        }
        excluded
    }
}

/// A gitignore-style pattern split into segments (`**` first when unanchored), and whether it
/// only matches directories. `None` for an empty or invalid pattern.
pub(crate) fn parse_pattern(p: &str) -> Option<(bool, Vec<String>)> {
    let dir_only = p.ends_with('/');
    let p = p.trim_end_matches('/');
    let anchored = p.starts_with('/') || p.contains('/');
    let p = p.trim_start_matches('/');
    if p.is_empty() || p.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return None;
    }
    let mut segments: Vec<String> = p.split('/').map(str::to_owned).collect();
    if !anchored {
        segments.insert(0, "**".into());
    }
    Some((dir_only, segments))
}

pub(crate) fn match_segments(pats: &[String], parts: &[&str]) -> bool {
    match pats.split_first() {
        None => parts.is_empty(),
        Some((first, rest)) if first == "**" => (0..=parts.len()).any(|i| match_segments(rest, &parts[i..])),
        Some((first, rest)) => parts
            .split_first()
            .is_some_and(|(part, others)| glob(first.as_bytes(), part.as_bytes()) && match_segments(rest, others)),
    }
}

/// `*`, `?`, `[abc]`, `[a-z]`, `[!a]` and `\` escapes within one path component.
fn glob(pat: &[u8], name: &[u8]) -> bool {
    match pat.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| glob(rest, &name[i..])),
        Some((b'?', rest)) => !name.is_empty() && glob(rest, &name[1..]),
        Some((b'[', rest)) => {
            let Some(end) = rest.iter().skip(1).position(|c| *c == b']').map(|p| p + 1) else {
                return name.first() == Some(&b'[') && glob(rest, &name[1..]);
            };
            let (class, after) = (&rest[..end], &rest[end + 1..]);
            let Some((&c, name_rest)) = name.split_first() else { return false };
            let (negated, class) = match class.first() {
                Some(b'!') | Some(b'^') => (true, &class[1..]),
                _ => (false, class),
            };
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    hit |= (class[i]..=class[i + 2]).contains(&c);
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            hit != negated && glob(after, name_rest)
        }
        Some((b'\\', rest)) if !rest.is_empty() => name.first() == Some(&rest[0]) && glob(&rest[1..], &name[1..]),
        Some((c, rest)) => name.first() == Some(c) && glob(rest, &name[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(patterns: &[&str], path: &str, is_dir: bool, expected: bool) {
        let ex = Excludes::new(&patterns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        assert_eq!(ex.excluded(path, is_dir), expected, "{patterns:?} on {path} (dir: {is_dir})");
    }

    #[test]
    fn gitignore_semantics() {
        check(&["*.log"], "app.log", false, true);
        check(&["*.log"], "storage/logs/app.log", false, true);
        check(&["*.log"], "app.log.txt", false, false);
        check(&["tests/"], "tests", true, true);
        check(&["tests/"], "src/tests", true, true);
        check(&["tests/"], "tests", false, false);
        check(&["/build"], "build", true, true);
        check(&["/build"], "src/build", true, false);
        check(&["docs/*.md"], "docs/a.md", false, true);
        check(&["docs/*.md"], "x/docs/a.md", false, false);
        check(&["**/cache"], "a/b/cache", true, true);
        check(&["a/**/z"], "a/z", false, true);
        check(&["a/**/z"], "a/b/c/z", false, true);
        check(&["*.log", "!keep.log"], "keep.log", false, false);
        check(&["*.log", "!keep.log"], "other.log", false, true);
        check(&["file[0-9].txt"], "file7.txt", false, true);
        check(&["file[!0-9].txt"], "file7.txt", false, false);
        check(&["?.txt"], "a.txt", false, true);
        check(&[], ".git", true, true);
        check(&[], "sub/.git", true, true);
        check(&[], ".gitignore", false, false);
    }

    #[test]
    fn bad_patterns_are_named() {
        let err = Excludes::new(&["a/../b".to_owned()]).unwrap_err().to_string();
        assert!(err.contains("a/../b"), "{err}");
    }
}
