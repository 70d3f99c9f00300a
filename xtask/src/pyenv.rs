//! The Python side of `cargo xtask bench`: torch importable from Python, plus numpy and Pillow.
//!
//! The lean CPU libtorch cannot be imported (its `libtorch_python.so` is removed), so the
//! reference runs on the full CUDA-flavour install, which `setup --cuda` provides and which
//! imports fine on a machine without a GPU. numpy and Pillow go into their own folder next to
//! it, installed like libtorch: pip into a temporary sibling, import check, marker, rename. Both
//! are reached through `PYTHONPATH`, so nothing touches the user's Python.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::libtorch::{self, Flavour};
use crate::paths;

/// Pinned versions of the data-pipeline dependencies.
pub const EXTRAS: [&str; 2] = ["numpy==2.3.5", "pillow==12.0.0"];

const MARKER: &str = "kd-rs-install.txt";

/// The Python interpreter (`KD_RS_PYTHON`, else `python3`).
pub fn python() -> String {
    std::env::var("KD_RS_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Ensures the torch install and the extras; returns the `PYTHONPATH` that imports them.
pub fn ensure() -> Result<String, String> {
    let torch = libtorch::ensure(Flavour::Cuda)?;
    let extras = ensure_extras(&paths::user_cache()?.join("python"), &python())?;
    let sep = if cfg!(windows) { ";" } else { ":" };
    Ok(format!("{}{sep}{}", torch.display(), extras.display()))
}

/// The folder name of this set of extras.
pub fn extras_dir_name() -> String {
    let tag: String = EXTRAS
        .join("-")
        .replace("==", "-")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("bench-{tag}")
}

fn ensure_extras(cache: &Path, py: &str) -> Result<PathBuf, String> {
    let dir = cache.join(extras_dir_name());
    if dir.join(MARKER).is_file() {
        return Ok(dir);
    }
    fs::create_dir_all(cache).map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    let tmp = cache.join(format!(".tmp-{}-{}", extras_dir_name(), std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    eprintln!(
        "==> installing {} for the PyTorch reference into {} (one-off)",
        EXTRAS.join(", "),
        dir.display()
    );
    let result = pip(py, &tmp).and_then(|()| {
        fs::write(tmp.join(MARKER), format!("{}\n", EXTRAS.join("\n")))
            .map_err(|e| format!("cannot write the install marker: {e}"))
    });
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.join(MARKER).is_file() {
        let _ = fs::remove_dir_all(&tmp);
        return Ok(dir);
    }
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir).map_err(|e| {
        let _ = fs::remove_dir_all(&tmp);
        format!("cannot move the finished install into {}: {e}", dir.display())
    })?;
    Ok(dir)
}

fn pip(py: &str, target: &Path) -> Result<(), String> {
    let out = Command::new(py)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "--only-binary=:all:",
            "--target",
        ])
        .arg(target)
        .args(EXTRAS)
        .output()
        .map_err(|e| format!("cannot start `{py} -m pip` (set KD_RS_PYTHON to a Python 3 with pip): {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(6).collect();
        return Err(format!(
            "pip could not install {}:\n  {}\nNothing was left half-installed.",
            EXTRAS.join(", "),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
        ));
    }
    let check = Command::new(py)
        .args(["-c", "import numpy, PIL"])
        .env("PYTHONPATH", target)
        .output()
        .map_err(|e| format!("cannot start {py}: {e}"))?;
    if !check.status.success() {
        return Err(format!(
            "numpy / Pillow installed but do not import:\n{}",
            String::from_utf8_lossy(&check.stderr)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_extras_install_is_not_touched_again() {
        let cache = std::env::temp_dir().join(format!("kd-xtask-py-{}", std::process::id()));
        let dir = cache.join(extras_dir_name());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(MARKER), "done").unwrap();
        assert_eq!(ensure_extras(&cache, "/nonexistent/python3").unwrap(), dir);
        let _ = fs::remove_dir_all(&cache);
    }

    #[test]
    fn a_failed_extras_install_leaves_nothing() {
        let cache = std::env::temp_dir().join(format!("kd-xtask-pyfail-{}", std::process::id()));
        let err = ensure_extras(&cache, "/nonexistent/python3").unwrap_err();
        assert!(err.contains("KD_RS_PYTHON"), "{err}");
        let left: Vec<_> = fs::read_dir(&cache)
            .map(|d| d.flatten().collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{left:?}");
        let _ = fs::remove_dir_all(&cache);
    }

    #[test]
    fn the_folder_name_carries_the_pins() {
        assert_eq!(extras_dir_name(), "bench-numpy-2.3.5-pillow-12.0.0");
    }
}
