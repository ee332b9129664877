//! Shared paths (`target.shared`): kept in `<deploy_to>/shared/<path>` across releases and linked
//! into each release while it is still staging (private to the agent), before the tree is handed
//! to the target user. On first deploy the shared copy is seeded from the release (a directory,
//! or a file when the release has a file there), otherwise created as an empty directory.
//! Pruning and rollback never touch `shared/`.
//!
//! `shared/` belongs to the app user, who may rename or swap anything in it at any time. So the
//! agent never chowns, chmods or removes anything there: it only opens directories beneath its
//! handle (no symlinks) and renames into them entries it made and owns in the private staging dir.

use std::io;
use std::path::{Component, Path};

use crate::beneath::{DirHandle, Kind, nonce};
use crate::error::AgentError;

fn open_error(dir: &DirHandle, name: &str, e: io::Error) -> AgentError {
    match e.raw_os_error() {
        Some(code) if code == rustix::io::Errno::LOOP.raw_os_error() => AgentError::Conflict(format!(
            "{} is a symlink; slipd does not follow symlinks in shared paths: make it a directory",
            dir.display(name).display()
        )),
        Some(code) if code == rustix::io::Errno::NOTDIR.raw_os_error() => {
            AgentError::Conflict(format!("{} is not a directory; move it away", dir.display(name).display()))
        }
        _ => AgentError::io("cannot open", dir.display(name), e),
    }
}

/// The directory `name` in `parent` (which someone else may write), made when missing: built in
/// the private `scratch` dir with its owner and mode, then renamed into place (never replacing).
fn ensure_dir(
    parent: &DirHandle,
    name: &str,
    scratch: &DirHandle,
    owner: Option<(u32, u32)>,
) -> Result<DirHandle, AgentError> {
    match parent.open_dir(name) {
        Ok(d) => return Ok(d),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(open_error(parent, name, e)),
    }
    let tmp = format!(".slipway-new-{}", nonce());
    let made =
        scratch.create_private_dir(&tmp).map_err(|e| AgentError::io("cannot create", scratch.display(&tmp), e))?;
    made.set_owner_mode(owner, 0o755).map_err(|e| AgentError::io("cannot set owner of", made.path(), e))?;
    match scratch.rename(&tmp, parent, name, false) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let _ = scratch.remove_tree(&tmp); // Made meanwhile by someone else: use theirs.
        }
        Err(e) => return Err(AgentError::io("cannot create", parent.display(name), e)),
    }
    parent.open_dir(name).map_err(|e| open_error(parent, name, e))
}

/// The directory `rel` inside the private staging tree, made (and given to `owner`) when missing.
fn release_dir(
    staging: &DirHandle,
    rel: &[&str],
    entry: &str,
    owner: Option<(u32, u32)>,
) -> Result<DirHandle, AgentError> {
    let mut dir = staging.try_clone().map_err(|e| AgentError::io("cannot open", staging.path(), e))?;
    for name in rel {
        match dir.stat(name).map_err(|e| AgentError::io("cannot inspect", dir.display(name), e))?.map(|s| Kind::of(&s))
        {
            Some(Kind::Dir) => {}
            Some(_) => {
                return Err(AgentError::Conflict(format!(
                    "shared path {entry} crosses {name}, which is not a directory in the release"
                )));
            }
            None => {
                let made = dir.create_dir(name).map_err(|e| AgentError::io("cannot create", dir.display(name), e))?;
                if let Some(owner) = owner {
                    dir.chown_entry(name, owner).map_err(|e| AgentError::io("cannot chown", made.path(), e))?;
                }
            }
        }
        dir = dir.open_dir(name).map_err(|e| AgentError::io("cannot open", dir.display(name), e))?;
    }
    Ok(dir)
}

/// Link every shared path into `staging` (a private staging dir of the target at `deploy`).
pub fn link_shared(
    deploy: &DirHandle,
    staging: &DirHandle,
    shared: &[String],
    owner: Option<(u32, u32)>,
) -> Result<(), AgentError> {
    if shared.is_empty() {
        return Ok(());
    }
    let shared_root = ensure_dir(deploy, "shared", staging, owner)?;
    for entry in shared {
        let rel = Path::new(entry);
        if entry.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(AgentError::BadRequest(format!("shared path '{entry}' must be relative, without '..'")));
        }
        let parts: Vec<&str> = entry.split('/').collect();
        let (name, parents) = parts.split_last().expect("non-empty path");
        let in_release = release_dir(staging, parents, entry, owner)?;
        let mut in_shared =
            shared_root.try_clone().map_err(|e| AgentError::io("cannot open", shared_root.path(), e))?;
        for part in parents {
            in_shared = ensure_dir(&in_shared, part, staging, owner)?;
        }
        let shared_stat =
            in_shared.stat(name).map_err(|e| AgentError::io("cannot inspect", in_shared.display(name), e))?;
        if shared_stat.is_none() {
            let release_copy = in_release.stat(name).ok().flatten().map(|s| Kind::of(&s));
            match release_copy {
                // Seed from the release: its file or directory becomes the shared copy.
                Some(Kind::File | Kind::Dir) => match in_release.rename(name, &in_shared, name, false) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(AgentError::io("cannot move to", in_shared.display(name), e)),
                },
                _ => {
                    ensure_dir(&in_shared, name, staging, owner)?;
                }
            }
        }
        in_release.remove_tree(name).map_err(|e| AgentError::io("cannot replace", in_release.display(name), e))?;
        let target = deploy.path().join("shared").join(rel);
        in_release
            .symlink(&target, name)
            .map_err(|e| AgentError::io("cannot link shared path", in_release.display(name), e))?;
        if let Some(owner) = owner {
            in_release
                .chown_entry(name, owner)
                .map_err(|e| AgentError::io("cannot chown", in_release.display(name), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handles(deploy_to: &Path, release: &Path) -> (DirHandle, DirHandle) {
        (DirHandle::open_path(deploy_to).unwrap(), DirHandle::open_path(release).unwrap())
    }

    #[test]
    fn seeds_from_the_first_release_then_links() {
        let dir = tempfile::tempdir().unwrap();
        let deploy_to = dir.path();
        let r1 = deploy_to.join("releases/r1");
        std::fs::create_dir_all(r1.join("storage/logs")).unwrap();
        std::fs::write(r1.join("storage/logs/seed.log"), "seed").unwrap();
        std::fs::write(r1.join(".env"), "APP_KEY=1").unwrap();
        let shared = ["storage/logs".to_owned(), ".env".to_owned(), "uploads".to_owned()];
        let (deploy, release) = handles(deploy_to, &r1);
        link_shared(&deploy, &release, &shared, None).unwrap();
        assert_eq!(std::fs::read_to_string(deploy_to.join("shared/.env")).unwrap(), "APP_KEY=1");
        assert_eq!(std::fs::read_to_string(deploy_to.join("shared/storage/logs/seed.log")).unwrap(), "seed");
        assert!(deploy_to.join("shared/uploads").is_dir());
        for p in &shared {
            assert!(std::fs::symlink_metadata(r1.join(p)).unwrap().file_type().is_symlink(), "{p}");
        }
        let names: Vec<_> = std::fs::read_dir(&r1).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 3, "no scratch dirs left in the release: {names:?}");
        // A later release's copies are replaced; the shared content stays.
        std::fs::write(deploy_to.join("shared/.env"), "APP_KEY=live").unwrap();
        let r2 = deploy_to.join("releases/r2");
        std::fs::create_dir_all(r2.join("storage/logs")).unwrap();
        std::fs::write(r2.join(".env"), "APP_KEY=from-git").unwrap();
        let (deploy, release) = handles(deploy_to, &r2);
        link_shared(&deploy, &release, &shared, None).unwrap();
        assert_eq!(std::fs::read_to_string(r2.join(".env")).unwrap(), "APP_KEY=live");
        assert_eq!(std::fs::read_to_string(r2.join("storage/logs/seed.log")).unwrap(), "seed");
    }

    #[test]
    fn refuses_to_cross_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let r1 = dir.path().join("releases/r1");
        std::fs::create_dir_all(&r1).unwrap();
        std::os::unix::fs::symlink("/tmp", r1.join("storage")).unwrap();
        let (deploy, release) = handles(dir.path(), &r1);
        let err = link_shared(&deploy, &release, &["storage/logs".to_owned()], None).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        // A symlink in shared/ is refused too, and nothing is made through it.
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(dir.path().join("shared")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.path().join("shared/var")).unwrap();
        let r2 = dir.path().join("releases/r2");
        std::fs::create_dir_all(&r2).unwrap();
        let (deploy, release) = handles(dir.path(), &r2);
        let err = link_shared(&deploy, &release, &["var/log".to_owned()], None).unwrap_err();
        assert!(err.to_string().contains("is a symlink"), "{err}");
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
    }
}
