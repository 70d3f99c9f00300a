//! `cargo xtask` — the project's orchestrator.
//!
//! xtask must build on a machine where libtorch does not exist yet, because installing libtorch
//! is its first job. So it is std-only and does no math: it installs libtorch, runs the checks,
//! and hands every other command to the tch-linked runner (`kd`, in `crates/kd-repro`) through
//! `cargo run --release`, forwarding arguments and the exit code. With `--nproc N` (and the
//! other launcher flags, see `launch`) it builds the runner once and starts N data-parallel
//! workers of it instead, like `torchrun`.

mod bench;
mod gloo;
mod launch;
mod libtorch;
mod paths;
mod pyenv;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use libtorch::Flavour;

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  setup [--cuda]          install libtorch 2.13.0 into the user cache (idempotent)
  test                    setup, then fmt check, clippy -D warnings and the whole test suite
  reproduce <table> ...   run a reproduction table (see `cargo xtask reproduce --list`)
  distill --task T --teacher FILE --student ARCH --method NAME [--data DIR] [--config run.toml] ...
                          distil your own teacher into your student (`distill --help`,
                          `distill --task T --list-methods`)
  train --task T --student ARCH [--data DIR] [--config run.toml] ...
                          train a network without a teacher (a no-KD baseline, or a teacher)
  bench [--filter REGEX] [--quick] [--device cpu|cuda] [--threads N] [--out DIR]
                          kd-rs against eager PyTorch 2.13.0: value checks, then one table
  eval --arch A --weights FILE --data DIR [--predictions FILE.csv]
                          score weights (ours or a PyTorch checkpoint): top-1/top-5, mIoU, box AP
  convert IN --arch A --to OUT.safetensors [--naming pytorch|kd]
                          rewrite weights with PyTorch's state-dict names (or ours)
  <other> ...             any other runner command (eval-cityscapes, eval-coco, ...)

data-parallel launch, on commands that train (reproduce, distill, train; taken by xtask, not passed on):
  --nproc N [--nnodes M --node-rank R --master-addr A --master-port P]
                          start N workers here (world M*N, RANK R*N+i), each with 1/N of the
                          cores; rank 0 of the node keeps the terminal, the others' lines are
                          prefixed [rank K]. Single node: a free 127.0.0.1 port; several nodes:
                          --master-addr (node 0) is required, --master-port defaults to 29500.
                          The first failure stops the launch after a grace period
                          (KD_LAUNCH_GRACE_S, default 60 s); its exit code is xtask's.

Pass --cuda (or --device cuda) to use the CUDA build of libtorch.";

/// The runner commands that train, and so take the launcher's flags.
const TRAINING_COMMANDS: &[&str] = &["reproduce", "distill", "train"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let (launch, args) = launch::extract(args)?;
    let Some(cmd) = args.first() else {
        println!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    };
    let rest = &args[1..];
    let flavour = Flavour::from_args(rest);
    // Only commands that train join a group; N copies of an evaluation would each do all
    // of the work and write the same files.
    let takes_no_launch = !TRAINING_COMMANDS.contains(&cmd.as_str());
    if let Some(flag) = launch.first_given().filter(|_| takes_no_launch) {
        return Err(format!(
            "{flag} applies to commands that train ({}), not to `{cmd}`",
            TRAINING_COMMANDS.join(", ")
        ));
    }
    // Checked before anything is installed or built.
    let plan = launch.plan()?;
    match cmd.as_str() {
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        "setup" => {
            let install = libtorch::ensure(flavour)?;
            println!(
                "libtorch {} ({}) ready at {}",
                libtorch::VERSION,
                flavour.name(),
                install.display()
            );
            println!("Gloo headers ready at {}", gloo::ensure()?.display());
            Ok(ExitCode::SUCCESS)
        }
        "test" => {
            libtorch::ensure(flavour)?;
            gloo::ensure()?;
            test(flavour, rest)
        }
        "bench" => bench::run(rest),
        _ => {
            libtorch::ensure(flavour)?;
            // The runner links kd-dist (data-parallel training), whose build needs them.
            gloo::ensure()?;
            let forwarded: Vec<String> = args.iter().filter(|a| a.as_str() != "--cuda").cloned().collect();
            match plan {
                None => runner(flavour, &forwarded),
                Some(plan) => launch::run(flavour, &plan, &forwarded),
            }
        }
    }
}

/// fmt check, clippy with warnings denied, then the whole test suite on one intra-op thread
/// (the suite runs test binaries in parallel on 2 cores; libtorch's own pool would oversubscribe).
fn test(flavour: Flavour, extra: &[String]) -> Result<ExitCode, String> {
    let steps: [(&str, Vec<&str>); 3] = [
        ("fmt", vec!["fmt", "--all", "--", "--check"]),
        (
            "clippy",
            vec!["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"],
        ),
        ("test", vec!["test", "--workspace"]),
    ];
    for (name, cargo_args) in steps {
        let mut cmd = cargo(flavour);
        cmd.args(&cargo_args);
        if name == "test" {
            let filters: Vec<&String> = extra.iter().filter(|a| a.as_str() != "--cuda").collect();
            if !filters.is_empty() {
                cmd.arg("--").args(filters);
            }
        }
        cmd.env("OMP_NUM_THREADS", "1").env("MKL_NUM_THREADS", "1");
        eprintln!("==> cargo {}", cargo_args.join(" "));
        let status = cmd.status().map_err(|e| format!("could not start cargo: {e}"))?;
        if !status.success() {
            return Err(format!("`cargo {}` failed ({status})", cargo_args.join(" ")));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `cargo build`/`cargo run` take to build the runner, the tch-linked binary `kd`.
pub(crate) const RUNNER_BUILD: [&str; 6] = ["--release", "--quiet", "--package", "kd-repro", "--bin", "kd"];

/// Runs the tch-linked runner binary in release mode with the given arguments.
fn runner(flavour: Flavour, args: &[String]) -> Result<ExitCode, String> {
    let mut cmd = cargo(flavour);
    cmd.arg("run").args(RUNNER_BUILD).arg("--").args(args);
    runner_env(&mut cmd);
    let status = cmd.status().map_err(|e| format!("could not start cargo: {e}"))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// The environment every runner process gets (the one `cargo run` starts and each launched
/// worker).
pub(crate) fn runner_env(cmd: &mut Command) {
    // cargo runs in the workspace root (its config lives there); the runner goes back to the
    // user's folder first, so relative paths mean what they meant in the user's shell.
    if let Ok(here) = std::env::current_dir() {
        cmd.env("KD_RS_CWD", here);
    }
    // libgomp's default spin-waiting collapses on a shared machine: with more runnable threads
    // than cores, every parallel region waits out other processes' time slices (a 10-20x
    // slowdown measured with small models on a loaded 2-core box). Passive waiting costs about a
    // quarter of the training time on an idle 2-core box (quick cifar100: 20.7 vs 16.8 min), the
    // price of not collapsing under load. libgomp reads this when it is loaded, so it must be set here,
    // for the child, not inside the runner; a value the user set wins.
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        cmd.env("OMP_WAIT_POLICY", "PASSIVE");
    }
    keep_freed_memory(cmd);
}

/// glibc's settings for libtorch's large tensors, unless the user set them.
///
/// By default glibc serves every allocation above a moving threshold with its own `mmap` and
/// trims the heap top back to the OS after frees, so a training loop that allocates and frees
/// the same multi-megabyte activations every step page-faults them in again every step
/// (measured: a FitNets hint forward at batch 64 took 35–50 ms instead of 11 ms until the heap
/// layout happened to change). A fixed 32 MiB mmap threshold (glibc's largest) and a 4 GiB
/// trim threshold keep freed buffers in the heap for the next step. glibc reads these when a
/// process starts, so they are set here, for the child.
pub(crate) fn keep_freed_memory(cmd: &mut Command) {
    for (key, value) in [
        ("MALLOC_MMAP_THRESHOLD_", "33554432"),
        ("MALLOC_TRIM_THRESHOLD_", "4294967296"),
    ] {
        if std::env::var_os(key).is_none() {
            cmd.env(key, value);
        }
    }
}

/// A `cargo` command in the workspace root, pointed at the libtorch flavour in use.
///
/// The CPU flavour is what `.cargo/config.toml` names; the CUDA flavour overrides `LIBTORCH` and
/// builds into its own target folder so the two never invalidate each other's torch-sys build.
pub(crate) fn cargo(flavour: Flavour) -> Command {
    let root = paths::workspace_root();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&root);
    // kd-dist's build script compiles against these (installed by `setup`, `test` and every
    // runner command, since the runner links kd-dist; the benches do not link it).
    if let Some(include) = gloo::installed() {
        cmd.env("KD_GLOO_INCLUDE", include);
    }
    if flavour == Flavour::Cuda {
        cmd.env(
            "LIBTORCH",
            root.join(".libtorch").join(flavour.dir_name()).join("torch"),
        );
        cmd.env("CARGO_TARGET_DIR", target_dir(flavour));
        cmd.env("KD_LIBTORCH_CUDA", "1");
    }
    cmd
}

/// The target folder [`cargo`]'s builds go to: `target/cuda` for the CUDA flavour, else the
/// user's `CARGO_TARGET_DIR` (relative to the workspace root, where cargo runs) or `target`.
pub(crate) fn target_dir(flavour: Flavour) -> PathBuf {
    let root = paths::workspace_root();
    if flavour == Flavour::Cuda {
        return root.join("target").join("cuda");
    }
    match paths::non_empty_var("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}
