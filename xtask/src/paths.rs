//! Where things live on disk: the workspace root and the per-user cache.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The workspace root (the parent of the `xtask/` folder).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The per-user cache: `$KD_RS_CACHE`, else `$XDG_CACHE_HOME/kd-rs`, else `~/.cache/kd-rs`.
pub fn user_cache() -> Result<PathBuf, String> {
    if let Some(dir) = non_empty_var("KD_RS_CACHE") {
        return Ok(absolute(dir));
    }
    if let Some(dir) = non_empty_var("XDG_CACHE_HOME") {
        return Ok(absolute(dir).join("kd-rs"));
    }
    match non_empty_var("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("kd-rs")),
        None => Err("cannot find a cache folder: set KD_RS_CACHE or HOME".into()),
    }
}

/// An environment variable that is set and not empty (an empty value means unset, as for
/// `PATH`-like variables in most tools; a cache at "" would resolve to the current folder).
pub fn non_empty_var(key: &str) -> Option<OsString> {
    std::env::var_os(key).filter(|v| !v.is_empty())
}

/// `p` against the current folder (the user's shell folder for xtask), without touching the
/// disk; unchanged when that fails.
pub fn absolute(p: impl AsRef<Path>) -> PathBuf {
    let p = p.as_ref();
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
