//! What a bench run is told through the environment.
//!
//! The benches, the check exporter and the PyTorch reference must agree on threads, device and
//! which rows to skip, and criterion owns the command line. So `cargo xtask bench` passes these
//! as `KD_BENCH_*` variables to every process; run by hand, the defaults apply.

use std::path::PathBuf;

use tch::Device;

/// The bench run's settings; see [`Settings::from_env`].
#[derive(Clone, Debug)]
pub struct Settings {
    /// The device every tensor lives on.
    pub device: Device,
    /// libtorch intra-op threads, which is also the rayon pool size of the data pipelines.
    pub threads: usize,
    /// Batch of the GDD and MGD real-shape rows (`KD_BENCH_REAL_BATCH`).
    pub real_batch: i64,
    /// Where generated data sets live (`KD_BENCH_DATA`).
    pub data_dir: PathBuf,
    /// Row ids to leave out of a criterion run (`KD_BENCH_SKIP`, comma-separated), e.g. rows
    /// whose value check failed when the benches are run by hand.
    pub skip: Vec<String>,
}

/// libtorch's own default thread count (one per core).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Settings {
    /// Reads `KD_BENCH_DEVICE` (`cpu`, default, or `cuda`), `KD_BENCH_THREADS` (default: one per
    /// core), `KD_BENCH_REAL_BATCH` (default 8 on a GPU, 1 on the CPU), `KD_BENCH_DATA`
    /// (default `<temp>/kd-bench-data`) and `KD_BENCH_SKIP`.
    ///
    /// Fails when `cuda` is asked for and libtorch sees no GPU.
    pub fn from_env() -> kd_core::Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let device = match var("KD_BENCH_DEVICE").as_deref() {
            None | Some("cpu") => Device::Cpu,
            Some(name) => kd_core::device::parse(name).map_err(|e| {
                kd_core::KdError::invalid(format!(
                    "KD_BENCH_DEVICE={name}: {e}; `--device cuda` needs an NVIDIA GPU and the CUDA build"
                ))
            })?,
        };
        let threads = var("KD_BENCH_THREADS")
            .and_then(|v| v.parse().ok())
            .filter(|&t: &usize| t > 0)
            .unwrap_or_else(default_threads);
        let real_batch = var("KD_BENCH_REAL_BATCH")
            .and_then(|v| v.parse().ok())
            .filter(|&b: &i64| b > 0)
            .unwrap_or(if device.is_cuda() { 8 } else { 1 });
        let data_dir = var("KD_BENCH_DATA")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("kd-bench-data"));
        let skip = var("KD_BENCH_SKIP")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            device,
            threads,
            real_batch,
            data_dir,
            skip,
        })
    }

    /// Sets libtorch's intra-op threads and builds rayon's global pool with the same count. The
    /// pool can be built once per process; a second call keeps the first pool.
    pub fn apply_threads(&self) {
        tch::set_num_threads(self.threads as i32);
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads)
            .build_global();
    }

    /// The device's name as the results spell it.
    pub fn device_name(&self) -> &'static str {
        if self.device.is_cuda() {
            "cuda"
        } else {
            "cpu"
        }
    }
}
