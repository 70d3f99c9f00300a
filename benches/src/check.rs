//! The value-check files: what the PyTorch reference recomputes before it times a row.
//!
//! Layout of the check folder: one `<kind>.<label>.safetensors` per row (see
//! [`crate::case::Case::export`] for the tensor names) and `manifest.json` listing the rows with
//! their shapes, parameters and timed modes, plus the settings they were made with. Only
//! safetensors and JSON are used, so the reference needs no package beyond torch to read them.

use std::fs;
use std::path::Path;

use serde_json::{json, Value};
use tch::{Device, Tensor};

use crate::case::Spec;
use crate::settings::Settings;
use kd_core::{KdError, Result};

/// The check file name of a row.
pub fn file_name(spec: &Spec) -> String {
    format!("{}.{}.safetensors", spec.kind, spec.label)
}

/// Builds every spec, writes its check file into `dir` and `dir/manifest.json`; returns the
/// manifest. Tensors are moved to the CPU for writing.
pub fn export(specs: &[Spec], settings: &Settings, dir: &Path) -> Result<Value> {
    fs::create_dir_all(dir).map_err(|e| KdError::file(dir, e))?;
    let mut rows = Vec::new();
    for spec in specs {
        let started = std::time::Instant::now();
        let mut case = (spec.build)(settings)?;
        let tensors = case.export()?;
        let file = file_name(spec);
        write(&dir.join(&file), &tensors)?;
        eprintln!(
            "  check file {file} ({} tensors, {:.1} s)",
            tensors.len(),
            started.elapsed().as_secs_f64()
        );
        rows.push(spec.manifest(&file, settings));
    }
    let manifest = json!({
        "device": settings.device_name(),
        "threads": settings.threads,
        "real_batch": settings.real_batch,
        "rows": rows,
    });
    let path = dir.join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| KdError::file(&path, e))?;
    fs::write(&path, text).map_err(|e| KdError::file(&path, e))?;
    Ok(manifest)
}

/// Writes named tensors (moved to the CPU, made contiguous) as one safetensors file.
pub fn write(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    Tensor::write_safetensors(&cpu, path).map_err(|e| KdError::file(path, e))
}
