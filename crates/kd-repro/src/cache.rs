//! Where trained teachers are kept between runs.
//!
//! A teacher is expensive and depends only on its recipe, the data and the seed, so it is cached
//! under a hash of exactly those, in the per-user cache shared by every checkout. A teacher is
//! complete only once its `report.json` exists (written last, atomically).

use std::path::PathBuf;

use sha2::{Digest, Sha256};

/// Bump when a change to training code makes cached teachers stale.
const CACHE_VERSION: &str = "teacher-v1";

/// The per-user cache: `$KD_RS_CACHE`, else `$XDG_CACHE_HOME/kd-rs`, else `~/.cache/kd-rs`.
pub fn user_cache() -> PathBuf {
    if let Some(d) = std::env::var_os("KD_RS_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("kd-rs");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("kd-rs")
}

/// Hex SHA-256 (first 16 bytes) of the given parts.
pub fn key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(CACHE_VERSION.as_bytes());
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The folder of the cached teacher with this key.
pub fn teacher_dir(key: &str) -> PathBuf {
    user_cache().join("teachers").join(key)
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_depends_on_every_part_and_boundaries() {
        assert_ne!(super::key(&["ab", "c"]), super::key(&["a", "bc"]));
        assert_eq!(super::key(&["x"]), super::key(&["x"]));
    }
}
