//! The `.gitattributes` that `git archive` honours, so a release is exactly `git archive
//! <commit>`: `export-ignore` (the path, or a whole directory, is left out) and `export-subst`
//! (`$Format:<pretty format>$` placeholders expanded for the commit). Attributes come from the
//! `.gitattributes` files of the tree being shipped, as `git archive` reads them: patterns with
//! gitignore syntax relative to the file's directory, a deeper file overrides a shallower one,
//! and within a file the last matching line wins; `attr` sets, `-attr` unsets, `!attr` makes it
//! unspecified. (Macros other than the built-in `binary`, and `eol`/`text`/`filter`
//! conversions, are not applied.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::source::exclude::{match_segments, parse_pattern};

/// One attribute's state on a line: set, unset, or explicitly unspecified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Set,
    Unset,
    Unspecified,
}

#[derive(Debug, Clone)]
struct Line {
    dir_only: bool,
    segments: Vec<String>,
    ignore: Option<State>,
    subst: Option<State>,
}

/// The `.gitattributes` of one directory.
#[derive(Debug, Clone, Default)]
pub struct AttrFile {
    lines: Vec<Line>,
}

fn unquote(pattern: &str) -> String {
    // C-style quoting as git writes it: "a b" with \" and \\ escapes.
    let inner = &pattern[1..pattern.len() - 1];
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(match next {
                    'n' => '\n',
                    't' => '\t',
                    other => other,
                });
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl AttrFile {
    pub fn parse(text: &str) -> AttrFile {
        let mut lines = Vec::new();
        for raw in text.lines() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with("[attr]") {
                continue;
            }
            let (pattern, rest) = if let Some(quoted) = line.strip_prefix('"') {
                match quoted.find('"').map(|i| i + 2) {
                    Some(end) => (unquote(&line[..end]), &line[end..]),
                    None => continue,
                }
            } else {
                let mut split = line.splitn(2, char::is_whitespace);
                (split.next().unwrap_or("").to_owned(), split.next().unwrap_or(""))
            };
            // Negative patterns are not allowed in attributes files (git ignores them).
            if pattern.starts_with('!') {
                continue;
            }
            let Some((dir_only, segments)) = parse_pattern(&pattern) else { continue };
            let (mut ignore, mut subst) = (None, None);
            for attr in rest.split_whitespace() {
                let (state, name) = match attr.as_bytes()[0] {
                    b'-' => (State::Unset, &attr[1..]),
                    b'!' => (State::Unspecified, &attr[1..]),
                    _ => match attr.split_once('=') {
                        // A value is not "set" (git's ATTR_TRUE).
                        Some((name, _)) => (State::Unset, name),
                        None => (State::Set, attr),
                    },
                };
                match name {
                    "export-ignore" => ignore = Some(state),
                    "export-subst" => subst = Some(state),
                    _ => {}
                }
            }
            if ignore.is_some() || subst.is_some() {
                lines.push(Line { dir_only, segments, ignore, subst });
            }
        }
        AttrFile { lines }
    }

    fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// What the attributes say of one path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Export {
    pub ignore: bool,
    pub subst: bool,
}

/// The attribute files in force while walking a tree: one per directory on the way down.
#[derive(Debug, Default)]
pub struct Attributes {
    /// (directory prefix, e.g. "" or "a/b/", its file), shallowest first.
    frames: Vec<(String, AttrFile)>,
}

impl Attributes {
    /// Enter directory `prefix` (`""` for the root, else ending in `/`) whose `.gitattributes`
    /// says `file`.
    pub fn push(&mut self, prefix: &str, file: AttrFile) {
        if !file.is_empty() {
            self.frames.push((prefix.to_owned(), file));
        }
    }

    /// Leave directory `prefix` (pops its frame, if it had one).
    pub fn pop(&mut self, prefix: &str) {
        if self.frames.last().is_some_and(|(p, _)| p == prefix) {
            self.frames.pop();
        }
    }

    /// The export attributes of `path` (relative to the tree's root).
    pub fn of(&self, path: &str, is_dir: bool) -> Export {
        let decide = |pick: fn(&Line) -> Option<State>| -> bool {
            for (prefix, file) in self.frames.iter().rev() {
                let Some(rel) = path.strip_prefix(prefix.as_str()) else { continue };
                let parts: Vec<&str> = rel.split('/').collect();
                let hit = file
                    .lines
                    .iter()
                    .rev()
                    .find(|l| pick(l).is_some() && (!l.dir_only || is_dir) && match_segments(&l.segments, &parts));
                if let Some(line) = hit {
                    return pick(line) == Some(State::Set);
                }
            }
            false
        };
        Export { ignore: decide(|l| l.ignore), subst: decide(|l| l.subst) }
    }
}

/// Expands `$Format:…$` placeholders for one commit with git's own pretty formats (by running
/// `git log` in the mirror, once per distinct format), as `git archive` does for `export-subst`.
pub struct Substituter {
    mirror: PathBuf,
    commit: String,
    cache: HashMap<String, Vec<u8>>,
}

impl Substituter {
    pub fn new(mirror: &Path, commit: &str) -> Self {
        Substituter { mirror: mirror.to_path_buf(), commit: commit.to_owned(), cache: HashMap::new() }
    }

    fn format(&mut self, fmt: &str) -> std::io::Result<Vec<u8>> {
        if let Some(out) = self.cache.get(fmt) {
            return Ok(out.clone());
        }
        let out = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(&self.mirror)
            .args(["log", "-1", "--no-show-signature"])
            .arg(format!("--pretty=format:{fmt}"))
            .arg(&self.commit)
            .arg("--")
            .stdin(std::process::Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "git log --pretty=format:{fmt} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        self.cache.insert(fmt.to_owned(), out.stdout.clone());
        Ok(out.stdout)
    }

    /// `content` with every `$Format:…$` expanded.
    pub fn expand(&mut self, content: &[u8]) -> std::io::Result<Vec<u8>> {
        const OPEN: &[u8] = b"$Format:";
        let mut out = Vec::with_capacity(content.len());
        let mut rest = content;
        while let Some(start) = rest.windows(OPEN.len()).position(|w| w == OPEN) {
            let after = &rest[start + OPEN.len()..];
            let Some(end) = after.iter().position(|b| *b == b'$') else { break };
            let fmt = &after[..end];
            out.extend_from_slice(&rest[..start]);
            match std::str::from_utf8(fmt) {
                Ok(fmt) if !fmt.contains('\n') => out.extend(self.format(fmt)?),
                _ => out.extend_from_slice(&rest[start..start + OPEN.len() + end + 1]),
            }
            rest = &after[end + 1..];
        }
        out.extend_from_slice(rest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(files: &[(&str, &str)]) -> Attributes {
        let mut a = Attributes::default();
        for (prefix, text) in files {
            a.push(prefix, AttrFile::parse(text));
        }
        a
    }

    fn check(a: &Attributes, path: &str, is_dir: bool, ignore: bool, subst: bool) {
        assert_eq!(a.of(path, is_dir), Export { ignore, subst }, "{path} (dir: {is_dir})");
    }

    #[test]
    fn git_attribute_precedence() {
        let a = attrs(&[
            ("", "*.log export-ignore\n/docs/ export-ignore\nVERSION export-subst\n\"with space.txt\" export-ignore\n"),
            ("sub/", "keep.log -export-ignore\nsecret/ export-ignore\n*.txt export-subst\nraw.txt !export-subst\n"),
        ]);
        check(&a, "app.log", false, true, false);
        check(&a, "sub/deep/x.log", false, true, false);
        check(&a, "sub/keep.log", false, false, false);
        check(&a, "docs", true, true, false);
        check(&a, "docs", false, false, false);
        check(&a, "sub/docs", true, false, false);
        check(&a, "VERSION", false, false, true);
        check(&a, "sub/VERSION", false, false, true);
        check(&a, "sub/secret", true, true, false);
        check(&a, "sub/a.txt", false, false, true);
        check(&a, "sub/raw.txt", false, false, false);
        check(&a, "with space.txt", false, true, false);
        check(&a, "other.txt", false, false, false);
    }
}
