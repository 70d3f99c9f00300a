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
    // An empty variable counts as unset: a cache at "" would be the current folder.
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(absolute);
    if let Some(d) = var("KD_RS_CACHE") {
        return d;
    }
    if let Some(d) = var("XDG_CACHE_HOME") {
        return d.join("kd-rs");
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("kd-rs")
}

/// `p` against the current folder, without touching the disk.
pub fn absolute(p: impl AsRef<std::path::Path>) -> PathBuf {
    let p = p.as_ref();
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
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

/// An exclusive hold on one cache entry, released when dropped (or when the process dies: the
/// operating system drops the lock with the file handle).
pub struct EntryLock {
    _file: std::fs::File,
}

/// Takes the lock of the cache entry `dir` (a sibling file `<dir>.lock`), waiting while another
/// run holds it, so concurrent runs train each teacher once: the second finds it finished.
pub fn lock_entry(dir: &std::path::Path) -> anyhow::Result<EntryLock> {
    use anyhow::Context;
    let parent = dir.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    let path = parent.join(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the lock {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            say!(
                "    waiting for another run that holds the cache entry {}",
                dir.display()
            );
            file.lock()
                .with_context(|| format!("locking {}", path.display()))?;
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    Ok(EntryLock { _file: file })
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
