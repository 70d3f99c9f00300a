//! `cargo xtask bench`: kd-rs against eager PyTorch, side by side, in one run.
//!
//! xtask only orchestrates; everything that computes lives in the tch-linked `kd-benches`
//! crate and in `benches/python/`:
//!
//! 1. build `kd-benches` (release) and write every selected row's check file
//!    (`kd-bench-export`: inputs, weights, Rust outputs and gradients);
//! 2. start `benches/python/reference.py --serve`, which recomputes each row in PyTorch 2.13.0
//!    (the same libtorch the Rust side links) and compares; a row that does not match is never
//!    timed;
//! 3. time every matching row with criterion and with the reference back to back (see
//!    [`interleave`]);
//! 4. print one table and write `results.json` and `results.md`.
//!
//! Both sides get the same thread count (`--threads`, default one per core: libtorch's own
//! default) for libtorch's intra-op pool, rayon's pool and the DataLoader's workers.

mod args;
mod interleave;
mod json;
mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::SystemTime;

pub use args::BenchArgs;

use crate::libtorch::{self, Flavour};
use crate::{paths, pyenv};

/// The criterion bench targets of `kd-benches`.
const TARGETS: [&str; 3] = ["kernels", "step", "pipeline"];

/// The filter of `--quick` on the CPU when none is given: every row but the GDD and MGD levels
/// at their training shapes (`gdd/*/real`, `mgd/*/real`: two 2048 → 2048 3×3 convolutions at
/// 64×64; `mgd/*/det`: two 256 → 256 at 100×168; seconds per iteration on a CPU, so their ten
/// criterion samples per side alone would take minutes). A regular expression that Rust's
/// `regex` and Python's `re` read alike (no look-ahead).
pub const QUICK_CPU_FILTER: &str = "^([^gm]|g[^d]|gd[^d]|gdd_|m[^g]|mg[^d])|/small$";

/// Runs the whole comparison.
pub fn run(raw: &[String]) -> Result<ExitCode, String> {
    let mut a = BenchArgs::parse(raw)?;
    let cuda = a.device == "cuda";
    if a.quick && !cuda && a.filter.is_none() {
        eprintln!(
            "note: --quick on the CPU leaves out gdd/*/real, mgd/*/real and mgd/*/det; `--filter 'gdd/|mgd/'` runs them"
        );
        a.filter = Some(QUICK_CPU_FILTER.into());
    }
    if cuda {
        gpu_present()?;
    }
    let flavour = if cuda { Flavour::Cuda } else { Flavour::Cpu };
    libtorch::ensure(flavour)?;
    let pythonpath = pyenv::ensure()?;
    let root = paths::workspace_root();
    let target = if cuda {
        root.join("target").join("cuda")
    } else {
        root.join("target")
    };
    let work = target.join("kd-bench");
    let check = work.join("check");
    let _ = std::fs::remove_dir_all(&check);
    // A relative --out means the folder the user typed it in; the children run in the root.
    let out = a.out.as_ref().map(paths::absolute).unwrap_or_else(|| {
        root.join("runs")
            .join("bench")
            .join(report::timestamp(SystemTime::now()))
    });
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let (warm, measure) = a.times();
    let env = BenchEnv {
        flavour,
        device: a.device.clone(),
        threads,
        data: work.join("data"),
    };

    step("building kd-benches (release)");
    let mut build = env.cargo();
    build.args([
        "bench",
        "--no-run",
        "--quiet",
        "--message-format=json",
        "-p",
        "kd-benches",
    ]);
    for t in TARGETS {
        build.args(["--bench", t]);
    }
    let built = build.output().map_err(|e| format!("cannot start cargo: {e}"))?;
    if !built.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&built.stderr));
        return Err("cargo bench --no-run failed".into());
    }
    let exes = interleave::bench_executables(&String::from_utf8_lossy(&built.stdout));
    let mut build = env.cargo();
    build.args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "kd-benches",
        "--bin",
        "kd-bench-export",
    ]);
    status(build, "cargo build kd-bench-export")?;

    step("writing the value-check files (Rust outputs and gradients)");
    let mut export = env.command(target.join("release").join("kd-bench-export"));
    export.arg("--out").arg(&check);
    if let Some(f) = &a.filter {
        export.args(["--filter", f]);
    }
    status(export, "kd-bench-export")?;

    step("PyTorch reference: value checks");
    let py_json = out.join("pytorch.json");
    let mut py = env.command(PathBuf::from(pyenv::python()));
    py.arg(root.join("benches").join("python").join("reference.py"))
        .arg("--check")
        .arg(&check)
        .arg("--out")
        .arg(&py_json)
        .args([
            "--threads",
            &threads.to_string(),
            "--device",
            &a.device,
            "--serve",
        ])
        .args(["--warm-up", &warm.to_string(), "--measure", &measure.to_string()])
        .env("PYTHONPATH", &pythonpath);
    if let Some(f) = &a.filter {
        py.args(["--filter", f]);
    }
    let mut server = interleave::Reference::start(py)?;
    let checks = read_json(&py_json)?;
    let rows_of = |j: &json::Json| j.get("rows").map(|r| r.arr().to_vec()).unwrap_or_default();
    let (passed, failed): (Vec<_>, Vec<_>) = rows_of(&checks)
        .into_iter()
        .filter_map(|r| {
            let id = r.get("id").and_then(json::Json::str)?.to_string();
            Some((id, r.get("check_ok").and_then(json::Json::bool) == Some(true)))
        })
        .partition(|(_, ok)| *ok);

    step("timing: each row with criterion and with PyTorch, back to back, twice (R P P R / P R R P)");
    let criterion_dir = target.join("criterion");
    let mut timed: BTreeMap<String, interleave::Timed> = BTreeMap::new();
    for (i, (id, _)) in passed.iter().enumerate() {
        let exe = exes
            .get(interleave::target_of(id))
            .ok_or_else(|| format!("no criterion executable for {id}"))?;
        let t0 = std::time::Instant::now();
        let mut t = interleave::Timed::default();
        let order = if i % 2 == 0 {
            [true, false, false, true]
        } else {
            [false, true, true, false]
        };
        for rust_turn in order {
            if rust_turn {
                let cmd = env.command(exe.clone());
                t.rust.push(interleave::time_rust(
                    exe,
                    id,
                    warm,
                    measure,
                    cmd,
                    &criterion_dir,
                )?);
            } else {
                t.torch.push(server.time(id)?);
            }
        }
        let all = |v: &[f64]| {
            v.iter()
                .map(|&x| report::fmt_ns(x))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        eprintln!(
            "  {id}: Rust {}, PyTorch {} ({:.0} s)",
            all(&t.rust),
            all(&t.torch),
            t0.elapsed().as_secs_f64()
        );
        timed.insert(id.clone(), t);
    }
    server.finish()?;
    let reference = read_json(&py_json)?;
    let failed: Vec<String> = failed.into_iter().map(|(id, _)| id).collect();

    let manifest = read_json(&check.join("manifest.json"))?;
    let rows = report::rows(&manifest, &reference, &timed);
    let meta = report::Meta {
        device: a.device.clone(),
        threads,
        quick: a.quick,
        filter: a.filter.clone(),
        warm_up: warm,
        measure,
        reference: reference.clone(),
        omp_wait_policy: std::env::var("OMP_WAIT_POLICY").unwrap_or_else(|_| "unset".into()),
    };
    let table = report::markdown(&rows, &meta);
    println!("\n{table}");
    std::fs::write(out.join("results.md"), &table).map_err(|e| format!("cannot write results.md: {e}"))?;
    std::fs::write(out.join("results.json"), report::json(&rows, &meta).dump())
        .map_err(|e| format!("cannot write results.json: {e}"))?;
    println!("results: {}", out.join("results.md").display());
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What both sides are told, and how to start them.
struct BenchEnv {
    flavour: Flavour,
    device: String,
    threads: usize,
    data: PathBuf,
}

impl BenchEnv {
    fn apply(&self, cmd: &mut Command) {
        cmd.env("KD_BENCH_DEVICE", &self.device)
            .env("KD_BENCH_THREADS", self.threads.to_string())
            .env("KD_BENCH_DATA", &self.data)
            .current_dir(paths::workspace_root());
        // The same allocator settings for both sides (the runner gets them too).
        crate::keep_freed_memory(cmd);
    }

    fn cargo(&self) -> Command {
        let mut cmd = crate::cargo(self.flavour);
        self.apply(&mut cmd);
        cmd
    }

    fn command(&self, program: PathBuf) -> Command {
        let mut cmd = Command::new(program);
        self.apply(&mut cmd);
        cmd
    }
}

fn step(what: &str) {
    eprintln!("==> {what}");
}

fn status(mut cmd: Command, what: &str) -> Result<(), String> {
    let st = cmd.status().map_err(|e| format!("cannot start {what}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({st})"))
    }
}

fn read_json(path: &Path) -> Result<json::Json, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    json::Json::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `--device cuda` needs a GPU; say so before building anything.
fn gpu_present() -> Result<(), String> {
    let out = Command::new("nvidia-smi").arg("-L").output();
    match out {
        Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).contains("GPU") => Ok(()),
        _ => Err(
            "--device cuda: no NVIDIA GPU found (`nvidia-smi -L` lists none); run on a machine \
                  with a GPU, or use --device cpu"
                .into(),
        ),
    }
}
