//! Replacing a small file (a certificate, a key, a config) in one rename: readers see the old
//! content or the new, never a half-written file, and the new one has its mode from the start.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Write `content` to `<path>.tmp` with `mode`, flush it, and rename it over `path`.
pub fn replace(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
    }
    // (The umask may have narrowed the mode asked at creation.)
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)
}
