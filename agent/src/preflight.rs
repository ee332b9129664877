//! Checks for `slipctl check` that look at the host as the hook user would: can it reach the
//! release directory, and does each hook's program exist on the fixed `PATH` hooks run with.
//! Pure functions over paths and ids, so they can be tested without a real user.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Shell words that are not programs on `PATH`.
const SHELL_WORDS: &[&str] = &[
    "!", ".", ":", "[", "[[", "alias", "break", "case", "cd", "command", "continue", "echo", "eval", "exec", "exit",
    "export", "false", "for", "if", "printf", "pwd", "read", "return", "set", "shift", "test", "trap", "true",
    "ulimit", "umask", "unset", "until", "wait", "while", "{", "(",
];

/// The program a hook line runs first: its first word after `VAR=value` assignments, or `None`
/// when it starts with a shell builtin or keyword (nothing to look up).
pub fn first_program(line: &str) -> Option<String> {
    let mut words = line.split_whitespace().skip_while(|w| {
        w.split_once('=')
            .is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    });
    let first = words.next()?;
    let first = first.trim_matches(|c| c == '"' || c == '\'');
    if first.is_empty() || SHELL_WORDS.contains(&first) || first.contains(['$', '`', '(', ';', '&', '|']) {
        return None;
    }
    Some(first.to_owned())
}

/// Where `program` is found on `path` (or itself, when it has a `/`), if it is an executable file.
pub fn find_program(program: &str, path: &str, cwd: &Path) -> Option<PathBuf> {
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.starts_with('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    if program.contains('/') {
        // A path into the release, which does not exist before the deploy: not checked.
        return Some(cwd.join(program));
    }
    path.split(':').map(|dir| Path::new(dir).join(program)).find(|p| executable(p))
}

/// The first directory on the way to `target` that user `uid` (with `gids`) cannot search, if
/// any: hooks then cannot even enter the release. Directories that do not exist yet are made by
/// the agent (searchable), so the walk stops at the first missing one.
pub fn unreachable_dir(target: &Path, uid: u32, gids: &[u32]) -> Option<PathBuf> {
    if uid == 0 {
        return None;
    }
    let mut dir = PathBuf::from("/");
    for part in target.components().skip(1) {
        let meta = std::fs::metadata(&dir).ok()?;
        let mode = meta.mode();
        let bit = if meta.uid() == uid {
            0o100
        } else if gids.contains(&meta.gid()) {
            0o010
        } else {
            0o001
        };
        if mode & bit == 0 {
            return Some(dir);
        }
        dir.push(part);
        if !dir.exists() {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_of_a_hook_line() {
        assert_eq!(first_program("composer install --no-dev").as_deref(), Some("composer"));
        assert_eq!(first_program("APP_ENV=prod php artisan migrate").as_deref(), Some("php"));
        assert_eq!(first_program("/usr/bin/env true").as_deref(), Some("/usr/bin/env"));
        assert_eq!(first_program("cd sub && make"), None);
        assert_eq!(first_program("test -f x || exit 1"), None);
        assert_eq!(first_program("$TOOL run"), None);
        assert_eq!(first_program("  "), None);
    }

    #[test]
    fn programs_are_found_on_the_fixed_path() {
        let path = "/usr/local/bin:/usr/bin:/bin";
        assert!(find_program("sh", path, Path::new("/")).is_some());
        assert!(find_program("no-such-program-anywhere", path, Path::new("/")).is_none());
        assert!(find_program("/bin/sh", path, Path::new("/")).is_some());
        assert!(find_program("/no/such/tool", path, Path::new("/")).is_none());
        assert!(find_program("./bin/console", path, Path::new("/x")).is_some(), "inside the release: not checked");
    }

    #[test]
    fn a_private_parent_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("private");
        std::fs::create_dir_all(private.join("app")).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let nobody = 65534;
        // The temp dir's own ancestors are searchable by everyone.
        assert_eq!(unreachable_dir(&private.join("app/releases"), nobody, &[]), Some(private.clone()));
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(unreachable_dir(&private.join("app/releases"), nobody, &[]), None);
        assert_eq!(unreachable_dir(&private.join("app"), 0, &[]), None, "root reaches everything");
    }
}
