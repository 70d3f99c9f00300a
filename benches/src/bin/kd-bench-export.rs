//! Writes the value-check files of the benchmark rows.
//!
//! `kd-bench-export --out DIR [--filter REGEX]`: builds every selected row with the settings
//! from the `KD_BENCH_*` environment and writes `DIR/manifest.json` plus one safetensors file per
//! row, for `benches/python/reference.py` to recompute.

use std::path::PathBuf;
use std::process::ExitCode;

use kd_benches::{case, cases, check, Settings};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut out: Option<PathBuf> = None;
    let mut filter: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = args.next().map(PathBuf::from),
            "--filter" => filter = args.next(),
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: kd-bench-export --out DIR [--filter REGEX]"
                ))
            }
        }
    }
    let out = out.ok_or("--out DIR is required")?;
    let settings = Settings::from_env().map_err(|e| e.to_string())?;
    settings.apply_threads();
    let specs = case::select(cases::all(&settings), filter.as_deref()).map_err(|e| e.to_string())?;
    check::export(&specs, &settings, &out).map_err(|e| e.to_string())?;
    Ok(())
}
