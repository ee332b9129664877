//! The secrets of sign-in: random tokens, their SHA-256 digests, constant-time comparison, and
//! argon2id password hashes (checked in memory a verifier thread keeps).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

use crate::error::{CtlError, Result};

/// 32 random bytes, hex.
pub fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).expect("the system's random source");
    hex::encode(bytes)
}

pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Equal bytes, in time that does not depend on where they differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// argon2id with the crate's default cost (19 MiB, 2 passes), as a PHC string.
pub fn hash_password(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    SystemRandom::new().fill(&mut salt).map_err(|_| CtlError::failed("no random source for a salt"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| CtlError::failed(format!("salt: {e}")))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| CtlError::failed(format!("cannot hash the password: {e}")))
}

/// The most memory a stored hash may ask a check for (64 MiB): a hash is ours, but a check is
/// never a way to make the server allocate without bound.
const MAX_BLOCKS: usize = 64 * 1024;

/// [`verify_password`] in `blocks`, kept by the caller between checks: argon2id's 19 MiB are
/// allocated once per verifier thread, not once per check (a fresh allocation per check left
/// the allocator holding tens of MiB after a login flood).
pub fn verify_password_in(password: &str, phc: &str, blocks: &mut Vec<argon2::Block>) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else { return false };
    let (Ok(params), Ok(algorithm)) = (argon2::Params::try_from(&hash), argon2::Algorithm::try_from(hash.algorithm))
    else {
        return false;
    };
    let version = match hash.version.map(argon2::Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else { return false };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else { return false };
    let needed = params.block_count();
    if needed > MAX_BLOCKS {
        return false;
    }
    if blocks.len() < needed {
        blocks.resize(needed, argon2::Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    argon2::Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut blocks[..])
        .is_ok()
        && same(&out, expected.as_bytes())
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_checks_the_same_in_kept_memory() {
        let phc = hash_password("correct horse").unwrap();
        let mut blocks = Vec::new();
        assert!(verify_password_in("correct horse", &phc, &mut blocks));
        assert!(!verify_password_in("correct hors", &phc, &mut blocks));
        assert!(verify_password_in("correct horse", &phc, &mut blocks), "again, in the same memory");
        assert!(!verify_password_in("correct horse", "not a hash", &mut blocks));
        assert_eq!(blocks.len(), 19 * 1024, "19 MiB of 1 KiB blocks, kept");
    }
}
