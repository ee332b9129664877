//! Git: a bare mirror per project in `<home>/cache/git/` fetched with the `git` command (so every
//! URL and credential helper ops use works), refs resolved and trees read with git2.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use git2::{ObjectType, Oid, Repository};

use crate::error::{Context, CtlError, Result};
use crate::source::attributes::{AttrFile, Attributes, Substituter};
use crate::source::exclude::Excludes;
use crate::source::tree::Sink;

const FETCH_TIMEOUT: Duration = Duration::from_secs(900);

/// A resolved ref.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub commit: String,
    pub commit_time: i64,
    pub summary: String,
}

/// Where the mirror of `project` lives.
pub fn mirror_path(cache: &Path, project: &str) -> PathBuf {
    cache.join("git").join(format!("{project}.git"))
}

async fn run_git(args: &[&str], cwd: Option<&Path>) -> Result<()> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let child = cmd
        .spawn()
        .map_err(|e| CtlError::failed(format!("cannot run git: {e}; install git (e.g. apt-get install git)")))?;
    let output = tokio::time::timeout(FETCH_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| CtlError::failed(format!("git {} timed out after {}s", args.join(" "), FETCH_TIMEOUT.as_secs())))?
        .context("git")?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(CtlError::failed(format!("git {} failed: {}", args.join(" "), stderr.trim())))
    }
}

/// Clone the mirror on first use, fetch incrementally afterwards. Serialised per mirror by a
/// lock file, so concurrent deploys of one project share it safely.
pub async fn fetch(repo_url: &str, mirror: &Path) -> Result<()> {
    let parent = mirror.parent().expect("mirror has a parent");
    std::fs::create_dir_all(parent).context(format_args!("cannot create {}", parent.display()))?;
    let lock_path = mirror.with_extension("lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .context(format_args!("cannot open {}", lock_path.display()))?;
    let lock_file = tokio::task::spawn_blocking(move || {
        rustix::fs::flock(&lock_file, rustix::fs::FlockOperation::LockExclusive).map(|()| lock_file)
    })
    .await
    .context("lock task")?
    .context("cannot lock the git mirror")?;

    let result = if mirror.join("HEAD").exists() {
        let mirror_str = mirror.to_string_lossy().into_owned();
        run_git(&["-C", &mirror_str, "remote", "set-url", "--", "origin", repo_url], None).await?;
        run_git(&["-C", &mirror_str, "-c", "transfer.fsckObjects=true", "fetch", "--prune", "--quiet", "origin"], None)
            .await
    } else {
        let tmp = mirror.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        let tmp_str = tmp.to_string_lossy().into_owned();
        run_git(&["-c", "transfer.fsckObjects=true", "clone", "--mirror", "--quiet", "--", repo_url, &tmp_str], None)
            .await?;
        std::fs::rename(&tmp, mirror).context("cannot move the new mirror in place")
    };
    drop(lock_file);
    result.map_err(|e| CtlError::failed(format!("cannot fetch {repo_url}: {e}")))
}

/// Resolve a branch, tag or commit (full or abbreviated) in the mirror.
pub fn resolve(mirror: &Path, reference: &str, repo_url: &str) -> Result<Resolved> {
    if reference.starts_with('-') || reference.is_empty() || reference.contains('\0') {
        return Err(CtlError::bad(format!(
            "ref '{}' is not a branch, tag or commit name",
            slipway_common::archive::clip(reference, 128)
        ))
        .fix("pass --ref with one"));
    }
    let repo = Repository::open_bare(mirror).context(format_args!("cannot open mirror {}", mirror.display()))?;
    let candidates = [format!("refs/heads/{reference}"), format!("refs/tags/{reference}"), reference.to_owned()];
    let object = candidates.iter().find_map(|c| repo.revparse_single(c).ok());
    let commit = object.and_then(|o| o.peel_to_commit().ok()).ok_or_else(|| {
        let names = |prefix: &str| -> Vec<String> {
            repo.references_glob(&format!("{prefix}*"))
                .map(|mut refs| {
                    refs.names().flatten().map(|n| n.trim_start_matches(prefix).to_owned()).take(10).collect()
                })
                .unwrap_or_default()
        };
        CtlError::bad(format!(
            "ref '{reference}' not found in {repo_url}: no such branch, tag or commit (branches: {}; tags: {})",
            join_or_none(&names("refs/heads/")),
            join_or_none(&names("refs/tags/"))
        ))
        .fix("pass --ref with one of them")
    })?;
    Ok(Resolved {
        commit: commit.id().to_string(),
        commit_time: commit.time().seconds(),
        summary: commit.summary().ok().flatten().unwrap_or("").to_owned(),
    })
}

/// Whether commit `older` is an ancestor of commit `newer` (and not the same commit).
pub fn is_ancestor(mirror: &Path, older: &str, newer: &str) -> Result<bool> {
    let repo = Repository::open_bare(mirror).context(format_args!("cannot open mirror {}", mirror.display()))?;
    let oid = |c: &str| git2::Oid::from_str(c).map_err(|e| CtlError::bad(format!("'{c}' is not a commit id: {e}")));
    let (older, newer) = (oid(older)?, oid(newer)?);
    Ok(older != newer && repo.graph_descendant_of(newer, older).unwrap_or(false))
}

fn join_or_none(items: &[String]) -> String {
    if items.is_empty() { "none".into() } else { items.join(", ") }
}

/// Stream the commit's tree straight from the object database into `sink` (no checkout),
/// leaving out what `excludes` says. Returns the number of submodules skipped.
pub fn walk_commit(mirror: &Path, commit: &str, excludes: &Excludes, sink: &mut dyn Sink) -> Result<usize> {
    // The mirror is ours and `git fetch` checked every object it received; re-hashing each blob with
    // collision detection on every read was ~3% of a 16-host deploy's CPU. The package carries its
    // own sha256 per file. (A process-wide libgit2 option: set once.)
    static NO_REHASH: std::sync::Once = std::sync::Once::new();
    NO_REHASH.call_once(|| git2::opts::strict_hash_verification(false));
    let repo = Repository::open_bare(mirror).context(format_args!("cannot open mirror {}", mirror.display()))?;
    let oid = Oid::from_str(commit).context("commit id")?;
    let tree = repo.find_commit(oid).and_then(|c| c.tree()).context(format_args!("cannot read commit {commit}"))?;
    // Every name in the whole tree is checked before anything is written or packaged.
    check_tree(&repo, &tree, "")?;
    let mut skipped = 0;
    let mut walk = Walk {
        repo: &repo,
        excludes,
        attrs: Attributes::default(),
        subst: Substituter::new(mirror, commit),
        skipped: &mut skipped,
    };
    walk.tree(&tree, "", sink)?;
    Ok(skipped)
}

/// One walk of a commit's tree: what is excluded (the project's patterns, and `export-ignore`)
/// and what is expanded (`export-subst`), as `git archive` would.
struct Walk<'a> {
    repo: &'a Repository,
    excludes: &'a Excludes,
    attrs: Attributes,
    subst: Substituter,
    skipped: &'a mut usize,
}

impl Walk<'_> {
    fn tree(&mut self, tree: &git2::Tree<'_>, prefix: &str, sink: &mut dyn Sink) -> Result<()> {
        let attr_file = tree
            .get_name(".gitattributes")
            .filter(|e| e.kind() == Some(ObjectType::Blob) && e.filemode() != 0o120000)
            .and_then(|e| self.repo.find_blob(e.id()).ok())
            .map(|b| AttrFile::parse(&String::from_utf8_lossy(b.content())));
        if let Some(file) = attr_file {
            self.attrs.push(prefix, file);
        }
        let result = self.entries(tree, prefix, sink);
        self.attrs.pop(prefix);
        result
    }

    fn entries(&mut self, tree: &git2::Tree<'_>, prefix: &str, sink: &mut dyn Sink) -> Result<()> {
        let repo = self.repo;
        for entry in tree.iter() {
            let name = entry.name().map_err(|_| {
                CtlError::failed(format!("a path under '{prefix}' is not UTF-8; rename it in the repository"))
            })?;
            let path = format!("{prefix}{name}");
            let is_dir = entry.kind() == Some(ObjectType::Tree);
            let export = self.attrs.of(&path, is_dir);
            if export.ignore || self.excludes.excluded(&path, is_dir) {
                continue;
            }
            let pack_err = |e: std::io::Error| CtlError::failed(format!("cannot write '{path}': {e}"));
            match entry.kind() {
                Some(ObjectType::Tree) => {
                    sink.dir(&path).map_err(pack_err)?;
                    let sub = repo.find_tree(entry.id()).context(format_args!("tree {path}"))?;
                    self.tree(&sub, &format!("{path}/"), sink)?;
                }
                Some(ObjectType::Blob) => match entry.filemode() {
                    0o120000 => {
                        let blob = repo.find_blob(entry.id()).context(format_args!("blob {path}"))?;
                        let target = std::str::from_utf8(blob.content())
                            .map_err(|_| CtlError::failed(format!("symlink '{path}' has a non-UTF-8 target")))?;
                        sink.symlink(&path, target).map_err(pack_err)?;
                    }
                    mode => {
                        let mode = if mode == 0o100755 { 0o755 } else { 0o644 };
                        if export.subst {
                            let blob = repo.find_blob(entry.id()).context(format_args!("blob {path}"))?;
                            let expanded = self
                                .subst
                                .expand(blob.content())
                                .map_err(|e| CtlError::failed(format!("export-subst in '{path}': {e}")))?;
                            sink.file(&path, mode, &expanded).map_err(pack_err)?;
                        } else {
                            sink.git_file(repo, &path, mode, entry.id()).map_err(pack_err)?;
                        }
                    }
                },
                Some(ObjectType::Commit) => {
                    tracing::warn!(%path, "submodule skipped: Slipway ships the repository's own tree");
                    *self.skipped += 1;
                }
                _ => return Err(CtlError::failed(format!("'{path}' has an unexpected git object type"))),
            }
        }
        Ok(())
    }
}

/// Refuse a tree with a name that is not a single ordinary component, or a name twice.
fn check_tree(repo: &Repository, tree: &git2::Tree<'_>, prefix: &str) -> Result<()> {
    let mut seen = std::collections::HashSet::with_capacity(tree.len());
    for entry in tree.iter() {
        let name = entry.name_bytes();
        crate::source::tree::check_entry_name(name, prefix)?;
        if !seen.insert(name.to_vec()) {
            return Err(CtlError::bad(format!(
                "the repository's tree has '{prefix}{}' twice: a hostile or corrupt commit; nothing was written or \
                 packaged",
                slipway_common::archive::clip(&String::from_utf8_lossy(name), 128)
            ))
            .fix("fix the history (or deploy another ref)"));
        }
        if entry.kind() == Some(ObjectType::Tree) {
            let sub =
                repo.find_tree(entry.id()).context(format_args!("tree {prefix}{}", String::from_utf8_lossy(name)))?;
            check_tree(repo, &sub, &format!("{prefix}{}/", String::from_utf8_lossy(name)))?;
        }
    }
    Ok(())
}

/// Walle's ref picker: branches (newest commit first), the last 10 tags, and the last 50
/// commits of `default_ref`, each with its subject, author and time.
pub fn picker(mirror: &Path, default_ref: &str) -> Result<serde_json::Value> {
    use serde_json::json;
    let repo = Repository::open_bare(mirror).context(format_args!("cannot open mirror {}", mirror.display()))?;
    let describe = |c: &git2::Commit<'_>| {
        json!({
            "commit": c.id().to_string(),
            "subject": c.summary().ok().flatten().unwrap_or(""),
            "author": c.author().name().unwrap_or(""),
            "time": c.time().seconds(),
        })
    };
    let named = |prefix: &str| -> Vec<(String, serde_json::Value, i64)> {
        let mut out = Vec::new();
        if let Ok(refs) = repo.references_glob(&format!("{prefix}*")) {
            for r in refs.flatten() {
                let (Some(name), Ok(commit)) = (r.name().ok().map(str::to_owned), r.peel_to_commit()) else { continue };
                let mut doc = describe(&commit);
                let short = name.trim_start_matches(prefix).to_owned();
                doc["name"] = json!(short);
                out.push((short, doc, commit.time().seconds()));
            }
        }
        out.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
        out
    };
    let branches: Vec<_> = named("refs/heads/").into_iter().take(30).map(|(_, d, _)| d).collect();
    let tags: Vec<_> = named("refs/tags/").into_iter().take(10).map(|(_, d, _)| d).collect();
    let mut commits = Vec::new();
    let head = [format!("refs/heads/{default_ref}"), format!("refs/tags/{default_ref}"), default_ref.to_owned()]
        .iter()
        .find_map(|c| repo.revparse_single(c).ok())
        .and_then(|o| o.peel_to_commit().ok());
    if let Some(head) = head {
        let mut walk = repo.revwalk().context("git revwalk")?;
        walk.push(head.id()).context("git revwalk")?;
        for oid in walk.flatten().take(50) {
            if let Ok(c) = repo.find_commit(oid) {
                commits.push(describe(&c));
            }
        }
    }
    Ok(json!({"default_ref": default_ref, "branches": branches, "tags": tags, "commits": commits}))
}
