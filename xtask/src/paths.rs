//! Where things live on disk: the workspace root and the per-user cache.

use std::path::PathBuf;

/// The workspace root (the parent of the `xtask/` folder).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The per-user cache: `$KD_RS_CACHE`, else `$XDG_CACHE_HOME/kd-rs`, else `~/.cache/kd-rs`.
pub fn user_cache() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("KD_RS_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("kd-rs"));
    }
    match std::env::var_os("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("kd-rs")),
        None => Err("cannot find a cache folder: set KD_RS_CACHE or HOME".into()),
    }
}
