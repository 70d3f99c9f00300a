//! Files on disk: atomic writes, safetensors checkpoints and weights from PyTorch files.
//!
//! Nothing a run writes may be seen half-written: a killed run must leave either the old file or
//! the new one, never a truncated mix. Every writer in the workspace (checkpoints, reports,
//! results, configs, generated data markers) goes through [`write_atomic`]; weights and
//! training state go through [`checkpoint`], which the trainer and the frozen teacher share.

use std::io::Write;
use std::path::Path;

use crate::{KdError, Result};

pub mod checkpoint;
pub mod torch;
pub mod weights;

/// Writes `bytes` to `path` through a temporary sibling and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| KdError::file(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(KdError::file(path, format!("cannot write: {e}")));
    }
    Ok(())
}
