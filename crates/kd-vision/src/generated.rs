//! Generated stand-in datasets are written once, atomically, and recognised afterwards.
//!
//! A stand-in tree (synthetic Cityscapes, synthetic COCO) takes seconds to minutes to draw and
//! is read by the real reader afterwards, so it must never be seen half-written and must be
//! redrawn when the generator or its configuration changes. The tree is filled in a temporary
//! sibling folder, a marker holding the generator's configuration is written last, and the
//! folder is renamed into place; a matching marker means "already done".

use std::fs;
use std::path::{Path, PathBuf};

use kd_core::{KdError, Result};

/// File inside a finished tree that records what made it.
pub const MARKER: &str = ".kd-synth-complete.json";

/// Whether `root` holds a finished tree whose marker reads exactly `text`.
pub fn marker_matches(root: &Path, text: &str) -> bool {
    fs::read_to_string(root.join(MARKER)).is_ok_and(|m| m == text)
}

/// Makes `root` a finished tree described by `text`, filling it with `fill` (given the
/// temporary folder to write into) unless it already is one. Returns whether it generated
/// anything. A tree with another marker is replaced; a non-empty folder without a marker is an
/// error naming it and `what` (e.g. "generated synthetic COCO tree"), and is left alone.
pub fn write_tree_once(
    root: &Path,
    text: &str,
    what: &str,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<bool> {
    if marker_matches(root, text) {
        return Ok(false);
    }
    if root.exists() {
        let ours = root.join(MARKER).is_file();
        let empty = fs::read_dir(root)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !(ours || empty) {
            return Err(KdError::file(
                root,
                format!("exists and is not a {what}; refusing to overwrite it"),
            ));
        }
    }
    let name = root
        .file_name()
        .ok_or_else(|| KdError::file(root, "not a folder path"))?
        .to_string_lossy()
        .into_owned();
    let parent = root
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    fs::create_dir_all(&parent).map_err(|e| KdError::file(&parent, format!("cannot create folder: {e}")))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = parent.join(format!(".{name}.tmp-{}-{nanos}", std::process::id()));
    let result = (|| {
        fill(&tmp)?;
        fs::write(tmp.join(MARKER), text).map_err(|e| KdError::file(tmp.join(MARKER), e))?;
        if root.exists() {
            fs::remove_dir_all(root).map_err(|e| KdError::file(root, format!("cannot replace: {e}")))?;
        }
        fs::rename(&tmp, root)
            .map_err(|e| KdError::file(root, format!("cannot move the generated tree into place: {e}")))
    })();
    match result {
        Ok(()) => Ok(true),
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            // Another process may have finished the same tree first.
            if marker_matches(root, text) {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}
