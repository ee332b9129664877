//! One CA for the nodes of a shared database: the home's `pki/` (the CA and the controller's
//! identity the agents trust) is kept in the state, sealed with AES-256-GCM under a key from the
//! service's config (`[state] key_file`), so a standby on another machine talks to the same
//! agents. The first node to start puts its own; the others adopt it (their `pki/` is written
//! over, the files they had kept beside as `*.local`).

use std::path::Path;

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::error::{CtlError, Result};
use crate::state::store::Store;

const TREE: &str = "meta";
const KEY: &[u8] = b"pki";
const AAD: &[u8] = b"slipway-pki-v1";
/// What is shared: the CA and the controller's client identity (rotation leftovers stay local).
const FILES: [&str; 4] = ["ca.pem", "ca.key", "controller.pem", "controller.key"];

#[derive(Serialize, Deserialize)]
struct Sealed {
    nonce: String,
    sealed: String,
}

/// What [`sync`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Synced {
    /// The state had none: this home's pki is the shared one now.
    Shared,
    /// The state's pki was written into this home (it differed).
    Adopted,
    /// This home already had it.
    Same,
}

/// Read the key: 32 bytes, as 64 hex digits or base64 (`openssl rand -hex 32 > key`).
pub fn read_key(path: &Path) -> Result<[u8; 32]> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CtlError::bad(format!("cannot read [state] key_file {}: {e}", path.display()))
            .fix("write 32 random bytes there: openssl rand -hex 32 > FILE (the same file on every node)")
    })?;
    let text = text.trim();
    let bytes = hex::decode(text)
        .ok()
        .or_else(|| base64::engine::general_purpose::STANDARD.decode(text).ok())
        .filter(|b| b.len() == 32)
        .ok_or_else(|| {
            CtlError::bad(format!("[state] key_file {} does not hold a 32-byte key", path.display()))
                .fix("write one with: openssl rand -hex 32 > FILE")
        })?;
    Ok(bytes.try_into().expect("32 bytes"))
}

fn sealing_key(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte AES key"))
}

fn seal(key: &[u8; 32], plain: &[u8]) -> Result<Sealed> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| CtlError::failed("no randomness for the pki's nonce"))?;
    let mut data = plain.to_vec();
    sealing_key(key)
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(AAD), &mut data)
        .map_err(|_| CtlError::failed("cannot seal the pki"))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(Sealed { nonce: b64.encode(nonce), sealed: b64.encode(data) })
}

fn open(key: &[u8; 32], sealed: &Sealed, key_file: &Path) -> Result<Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let wrong = || {
        CtlError::bad(format!(
            "the shared CA in the database cannot be opened with [state] key_file {}",
            key_file.display()
        ))
        .fix("use the key file the other nodes use")
    };
    let nonce: [u8; NONCE_LEN] = b64.decode(&sealed.nonce).ok().and_then(|n| n.try_into().ok()).ok_or_else(wrong)?;
    let mut data = b64.decode(&sealed.sealed).map_err(|_| wrong())?;
    let plain = sealing_key(key)
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(AAD), &mut data)
        .map_err(|_| wrong())?;
    Ok(plain.to_vec())
}

/// With `[state] key_file` in the home's config: share its pki, or adopt the one in the state
/// (every process on a shared database does, the first time it opens it, so the home that
/// registers the first agents shares its CA before any other node starts).
pub fn sync_home(home: &Path, store: &Store) -> Result<Option<Synced>> {
    let Some(path) = crate::state::home::key_file_of(home)? else { return Ok(None) };
    let key = read_key(&path)?;
    sync(&home.join("pki"), store, &key, &path).map(Some)
}

/// Share this home's pki through the state, or adopt the one there.
pub fn sync(pki: &Path, store: &Store, key: &[u8; 32], key_file: &Path) -> Result<Synced> {
    let mine = serde_json::to_vec(&read_files(pki)?).expect("json");
    let existing: Option<Sealed> = store.get(TREE, KEY)?;
    let Some(sealed) = existing else {
        let sealed = serde_json::to_vec(&seal(key, &mine)?).expect("json");
        if store.backend().compare_and_swap(TREE, KEY, None, Some(&sealed))? {
            return Ok(Synced::Shared);
        }
        // Another node put its own meanwhile: take that one.
        return sync(pki, store, key, key_file);
    };
    let theirs = open(key, &sealed, key_file)?;
    if theirs == mine {
        return Ok(Synced::Same);
    }
    let files: Vec<(String, String)> = serde_json::from_slice(&theirs)
        .map_err(|e| CtlError::failed(format!("the shared pki in the database is damaged: {e}")))?;
    for (name, content) in files {
        if !FILES.contains(&name.as_str()) {
            continue;
        }
        let path = pki.join(&name);
        if path.exists() {
            let _ = std::fs::rename(&path, pki.join(format!("{name}.local")));
        }
        slipway_common::files::replace(&path, content.as_bytes(), 0o600)
            .map_err(|e| CtlError::failed(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(Synced::Adopted)
}

fn read_files(pki: &Path) -> Result<Vec<(String, String)>> {
    FILES
        .iter()
        .map(|name| {
            let path = pki.join(name);
            std::fs::read_to_string(&path)
                .map(|c| (name.to_string(), c))
                .map_err(|e| CtlError::failed(format!("cannot read {}: {e}", path.display())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_pki_opens_only_with_its_key() {
        let key = [7u8; 32];
        let sealed = seal(&key, b"the ca key").unwrap();
        assert_eq!(open(&key, &sealed, Path::new("k")).unwrap(), b"the ca key");
        assert!(open(&[8u8; 32], &sealed, Path::new("k")).is_err());
        assert!(!sealed.sealed.contains("the ca key"));
    }
}
