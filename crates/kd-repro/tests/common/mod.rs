//! What every CLI test of the runner needs: running the `kd` binary with its own cache, the
//! contract of a clean failure, and reading a JSON result.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs the `kd` binary with `args`, its cache at `cache`, on one intra-op thread.
pub fn kd(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kd"))
        .args(args)
        .env("KD_RS_CACHE", cache)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("run kd")
}

/// Asserts a clean failure (no panic, non-zero exit) whose last `error:` line contains every
/// `needle`.
pub fn assert_clean_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "panic:\n{stderr}"
    );
    let last = stderr.rfind("error:").map(|i| &stderr[i..]).unwrap_or_default();
    for n in needles {
        assert!(
            last.contains(n),
            "error line lacks {n:?}: {last}\nfull stderr:\n{stderr}"
        );
    }
}

/// The JSON file at `path`.
pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}
