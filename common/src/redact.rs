//! Credentials never leave in a message: a repository URL may carry a user and a password or a
//! token (`https://ci:ghp_…@git.example/app.git`), and git echoes the whole command line in
//! its errors. [`redact`] is the one function every message that may hold a URL passes
//! through (the controller's errors, the journal's lines, check results, listings).

/// `text` with the userinfo of every `scheme://userinfo@host` in it replaced by `***`.
pub fn redact(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("://") {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        // The authority runs to the first '/', '?', '#', space, quote or end.
        let end =
            after.find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | '`' | '<' | '>') || c.is_whitespace());
        let authority = &after[..end.unwrap_or(after.len())];
        match authority.rfind('@') {
            Some(i) => {
                out.push_str("***");
                out.push_str(&authority[i..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[authority.len()..];
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::redact;

    fn check(input: &str, expected: &str) {
        assert_eq!(redact(input), expected, "{input}");
    }

    #[test]
    fn userinfo_goes_and_everything_else_stays() {
        check("fetching https://ci:s3cret@git.example/app.git", "fetching https://***@git.example/app.git");
        check("https://ghp_TOKEN@github.com/o/r", "https://***@github.com/o/r");
        check(
            "git clone --mirror -- 'https://u:p@h/x' /tmp/m failed: fatal: unable to access 'https://u:p@h/x/': 403",
            "git clone --mirror -- 'https://***@h/x' /tmp/m failed: fatal: unable to access 'https://***@h/x/': 403",
        );
        check("two: http://a:b@x and ssh://git@y:22/r", "two: http://***@x and ssh://***@y:22/r");
        check("https://user:p%40ss@host", "https://***@host");
        check("no url here", "no url here");
        check("https://git.example/app.git", "https://git.example/app.git");
        check("file:///srv/git/app.git", "file:///srv/git/app.git");
        check("git@github.com:o/r.git", "git@github.com:o/r.git");
        check("https://h/path@not-userinfo", "https://h/path@not-userinfo");
    }
}
