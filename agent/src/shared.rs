//! Shared paths (`target.shared`): kept in `<deploy_to>/shared/<path>` across releases and linked
//! into each release before `pre_release`. On first deploy the shared copy is seeded from the
//! release (a directory, or a file when the release has a file there), otherwise created as an
//! empty directory. Pruning and rollback never touch `shared/`.

use std::path::{Component, Path};

use crate::error::AgentError;

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<(), AgentError> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| AgentError::io("cannot chown", path, e))?;
    }
    Ok(())
}

/// Create the directories leading to `path` inside `root`, refusing to go through symlinks.
fn real_parents(root: &Path, rel: &Path, owner: Option<(u32, u32)>) -> Result<(), AgentError> {
    let mut dir = root.to_path_buf();
    let Some(parent) = rel.parent() else { return Ok(()) };
    for component in parent.components() {
        dir.push(component);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(AgentError::Conflict(format!(
                    "shared path {} crosses {}, which is not a directory in the release",
                    rel.display(),
                    dir.display()
                )));
            }
            Err(_) => {
                std::fs::create_dir(&dir).map_err(|e| AgentError::io("cannot create", &dir, e))?;
                chown(&dir, owner)?;
            }
        }
    }
    Ok(())
}

/// Link every shared path into `release` (a staged release directory).
pub fn link_shared(
    deploy_to: &Path,
    release: &Path,
    shared: &[String],
    owner: Option<(u32, u32)>,
) -> Result<(), AgentError> {
    if shared.is_empty() {
        return Ok(());
    }
    let shared_root = deploy_to.join("shared");
    if !shared_root.exists() {
        std::fs::create_dir_all(&shared_root).map_err(|e| AgentError::io("cannot create", &shared_root, e))?;
        chown(&shared_root, owner)?;
    }
    for entry in shared {
        let rel = Path::new(entry);
        if entry.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(AgentError::BadRequest(format!("shared path '{entry}' must be relative, without '..'")));
        }
        let in_shared = shared_root.join(rel);
        let in_release = release.join(rel);
        real_parents(release, rel, owner)?;
        let release_copy = std::fs::symlink_metadata(&in_release).ok();
        if std::fs::symlink_metadata(&in_shared).is_err() {
            real_parents(&shared_root, rel, owner)?;
            match &release_copy {
                // Seed from the release: its file or directory becomes the shared copy.
                Some(m) if m.is_file() || m.is_dir() => {
                    std::fs::rename(&in_release, &in_shared)
                        .map_err(|e| AgentError::io("cannot move to", &in_shared, e))?;
                }
                _ => {
                    std::fs::create_dir(&in_shared).map_err(|e| AgentError::io("cannot create", &in_shared, e))?;
                    chown(&in_shared, owner)?;
                }
            }
        }
        match std::fs::symlink_metadata(&in_release) {
            Ok(m) if m.is_dir() => {
                std::fs::remove_dir_all(&in_release).map_err(|e| AgentError::io("cannot replace", &in_release, e))?
            }
            Ok(_) => std::fs::remove_file(&in_release).map_err(|e| AgentError::io("cannot replace", &in_release, e))?,
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&in_shared, &in_release)
            .map_err(|e| AgentError::io("cannot link shared path", &in_release, e))?;
        chown(&in_release, owner)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_from_the_first_release_then_links() {
        let dir = tempfile::tempdir().unwrap();
        let deploy_to = dir.path();
        let r1 = deploy_to.join("releases/r1");
        std::fs::create_dir_all(r1.join("storage/logs")).unwrap();
        std::fs::write(r1.join("storage/logs/seed.log"), "seed").unwrap();
        std::fs::write(r1.join(".env"), "APP_KEY=1").unwrap();
        let shared = ["storage/logs".to_owned(), ".env".to_owned(), "uploads".to_owned()];
        link_shared(deploy_to, &r1, &shared, None).unwrap();
        assert_eq!(std::fs::read_to_string(deploy_to.join("shared/.env")).unwrap(), "APP_KEY=1");
        assert_eq!(std::fs::read_to_string(deploy_to.join("shared/storage/logs/seed.log")).unwrap(), "seed");
        assert!(deploy_to.join("shared/uploads").is_dir());
        for p in &shared {
            assert!(std::fs::symlink_metadata(r1.join(p)).unwrap().file_type().is_symlink(), "{p}");
        }
        // A later release's copies are replaced; the shared content stays.
        std::fs::write(deploy_to.join("shared/.env"), "APP_KEY=live").unwrap();
        let r2 = deploy_to.join("releases/r2");
        std::fs::create_dir_all(r2.join("storage/logs")).unwrap();
        std::fs::write(r2.join(".env"), "APP_KEY=from-git").unwrap();
        link_shared(deploy_to, &r2, &shared, None).unwrap();
        assert_eq!(std::fs::read_to_string(r2.join(".env")).unwrap(), "APP_KEY=live");
        assert_eq!(std::fs::read_to_string(r2.join("storage/logs/seed.log")).unwrap(), "seed");
    }

    #[test]
    fn refuses_to_cross_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let r1 = dir.path().join("releases/r1");
        std::fs::create_dir_all(&r1).unwrap();
        std::os::unix::fs::symlink("/tmp", r1.join("storage")).unwrap();
        let err = link_shared(dir.path(), &r1, &["storage/logs".to_owned()], None).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }
}
