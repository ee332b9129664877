//! Project files as numbered revisions. Every save (the page, `PUT /api/v1/projects/{p}`,
//! `slipctl project apply`, a revert) is validated by the same parser as `project apply`,
//! then becomes revision N+1 with who, when and the whole text; a save based on an older
//! revision than the current one is refused, naming who changed it. Notification secrets are
//! never shown back: [`masked`] hides them, and a save that keeps the mask keeps the secret.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use slipway_common::config::ProjectConfig;
use slipway_common::time::{format_utc, unix_now};

use crate::error::{CtlError, Result};
use crate::state::revisions::Revision;
use crate::state::store::{ProjectRecord, Store};

/// What a secret reads as when a project file is shown.
pub const MASK: &str = "********";

/// Saves are read-check-write: one at a time in this process (the server, which every other
/// `slipctl` of its home goes through while it runs).
static SAVING: Mutex<()> = Mutex::new(());

/// One save of a project file.
pub struct Save<'a> {
    pub text: &'a str,
    /// Where the file came from (`config_dir` and a relative repo resolve beside it).
    pub source_file: &'a Path,
    pub by: &'a str,
    /// The revision the change was made on, when the saver says (the API's `If-Match`, the
    /// form's hidden field): refused if the project has moved on since.
    pub base: Option<u64>,
    /// Only a new project (`POST /api/v1/projects`): refused if one of that name exists.
    pub create: bool,
    pub note: &'a str,
}

/// Validate and save `save` as the project's next revision: the project's record and the
/// revision made.
pub fn save(store: &Store, save: Save<'_>) -> Result<(ProjectRecord, Revision)> {
    let _one = SAVING.lock().expect("project saves");
    let current_text_of = |name: &str| store.project(name).map(|p| p.map(|p| p.text));
    let config = ProjectConfig::parse(save.text, &save.source_file.display().to_string())?;
    let name = config.name().to_owned();
    let current = store.project(&name)?;
    let text = unmasked(save.text, current_text_of(&name)?.as_deref())?;
    if save.create && current.is_some() {
        return Err(CtlError::busy(format!("project '{name}' exists"))
            .fix(format!("edit it (PUT /api/v1/projects/{name}), or pick another name")));
    }
    let mut n = current.as_ref().map_or(0, |p| p.revision);
    if let Some(p) = current.as_ref().filter(|p| p.revision == 0) {
        // Applied before revisions were kept: that text is revision 1.
        n = 1;
        store.put_revision(&Revision {
            project: name.clone(),
            n,
            by: "(before revisions)".into(),
            at: p.applied_at,
            text: p.text.clone(),
            note: String::new(),
        })?;
    }
    if let Some(base) = save.base
        && base != n
    {
        let last = store.revision(&name, n)?;
        let (who, when) = last.map_or_else(|| ("someone".to_owned(), String::new()), |r| (r.by, format_utc(r.at)));
        return Err(CtlError::busy(format!(
            "project {name} was changed by {who} {when} (revision {n}) after revision {base}, which this change was made on"
        ))
        .fix(format!("load revision {n}, make the change again and save; `slipctl project diff {name} {base} {n}` shows what changed")));
    }
    let revision = Revision {
        project: name.clone(),
        n: n + 1,
        by: save.by.to_owned(),
        at: unix_now(),
        text: text.clone(),
        note: save.note.to_owned(),
    };
    let source_file = PathBuf::from(save.source_file);
    let record = ProjectRecord {
        name: name.clone(),
        source_dir: source_file.parent().unwrap_or(Path::new("/")).to_path_buf(),
        source_file,
        text,
        applied_at: revision.at,
        revision: revision.n,
    };
    store.put_revision(&revision)?;
    store.put_project(&record)?;
    crate::ops::audit::record(
        store,
        save.by,
        "",
        "project_save",
        &format!("project {name}"),
        "ok",
        &format!("revision {}", revision.n),
    );
    Ok((record, revision))
}

/// Revision `n` of `project` saved again as its newest (its hooks, hosts and rules are what
/// the next deploy runs with).
pub fn revert(store: &Store, project: &str, n: u64, by: &str) -> Result<(ProjectRecord, Revision)> {
    let old = revision(store, project, n)?;
    let current = store.project(project)?.ok_or_else(|| unknown(project))?;
    save(
        store,
        Save {
            text: &old.text,
            source_file: &current.source_file,
            by,
            base: None,
            create: false,
            note: &format!("revert to revision {n}"),
        },
    )
}

/// Revision `n` of `project`, or an error naming the ones there are.
pub fn revision(store: &Store, project: &str, n: u64) -> Result<Revision> {
    store.revision(project, n)?.ok_or_else(|| {
        let have = store.revisions(project).map(|r| r.len()).unwrap_or(0);
        CtlError::bad(format!("project {project} has no revision {n} (it has {have})"))
            .fix(format!("`slipctl project history {project}` lists them"))
    })
}

fn unknown(project: &str) -> CtlError {
    CtlError::not_found(format!("unknown project '{project}'")).fix("`slipctl project list` shows them")
}

/// A unified diff of two texts, `a` and `b` named as given.
pub fn diff(a: &str, b: &str, a_name: &str, b_name: &str) -> String {
    similar::TextDiff::from_lines(a, b).unified_diff().context_radius(3).header(a_name, b_name).to_string()
}

/// Is this line a secret's (`secret = "…"`, `token = "…"`)?
fn secret_value(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.split_once('=')?;
    let k = key.trim();
    (matches!(k, "secret" | "token" | "password")).then_some((key, value))
}

/// `text` with every secret's value shown as [`MASK`].
pub fn masked(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        match secret_value(line) {
            Some((key, value)) => {
                let end = if value.ends_with('\n') { "\n" } else { "" };
                out.push_str(&format!("{key}= \"{MASK}\"{end}"));
            }
            None => out.push_str(line),
        }
    }
    out
}

/// `text` with each masked secret given back its value from `current` (in order); a masked
/// secret with no value to give back is refused.
fn unmasked(text: &str, current: Option<&str>) -> Result<String> {
    if !text.contains(MASK) {
        return Ok(text.to_owned());
    }
    let mut kept = current.unwrap_or("").lines().filter_map(secret_value).map(|(_, v)| v.trim().to_owned());
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        match secret_value(line) {
            Some((key, value)) if value.trim() == format!("\"{MASK}\"") => {
                let old = kept.next().ok_or_else(|| {
                    CtlError::bad(format!("{} is {MASK}, and there is no saved secret to keep", key.trim()))
                        .fix("write the secret itself")
                })?;
                let end = if line.ends_with('\n') { "\n" } else { "" };
                out.push_str(&format!("{key}= {old}{end}"));
            }
            Some(_) => {
                kept.next();
                out.push_str(line);
            }
            None => out.push_str(line),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_and_a_kept_mask_keeps_the_secret() {
        let text = "name = \"a\"\n[[notify]]\nkind = \"slack\"\nurl = \"https://x\"\nsecret = \"s3cret\"\n";
        let shown = masked(text);
        assert!(!shown.contains("s3cret") && shown.contains(MASK), "{shown}");
        assert_eq!(unmasked(&shown, Some(text)).unwrap(), text);
        let changed = shown.replace(MASK, "new-one");
        assert_eq!(unmasked(&changed, Some(text)).unwrap(), changed, "a new secret replaces it");
        assert!(unmasked(&shown, None).is_err(), "nothing to keep");
    }

    #[test]
    fn a_diff_shows_the_lines_that_changed() {
        let d = diff("a\nb\nc\n", "a\nB\nc\n", "revision 1", "revision 2");
        assert!(d.contains("-b\n") && d.contains("+B\n") && d.contains("revision 1"), "{d}");
    }
}
