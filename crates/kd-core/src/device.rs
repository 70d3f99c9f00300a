//! Device selection. Everything works on CPU; CUDA is used when libtorch was built with it and
//! a GPU is present, so one test or one table definition runs on either.

use tch::Device;

use crate::{KdError, Result};

/// Parses `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available, else CPU).
pub fn parse(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available()),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(i) => cuda(i),
            None => Err(KdError::invalid(format!(
                "unknown device {other:?}: use cpu, cuda, cuda:N or auto"
            ))),
        },
    }
}

fn cuda(i: usize) -> Result<Device> {
    if tch::Cuda::is_available() && (i as i64) < tch::Cuda::device_count() {
        Ok(Device::Cuda(i))
    } else {
        Err(KdError::invalid(format!(
            "device cuda:{i} requested but CUDA is not available in this libtorch build or machine \
             (install the CUDA flavour with `cargo xtask setup --cuda`)"
        )))
    }
}

/// Every device a "runs on CPU and CUDA from one definition" test should cover here.
pub fn test_devices() -> Vec<Device> {
    let mut v = vec![Device::Cpu];
    if tch::Cuda::is_available() {
        v.push(Device::Cuda(0));
    }
    v
}
