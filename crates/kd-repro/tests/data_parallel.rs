//! Data-parallel runs of the runner, as a launcher starts them: each rank is a `kd` process
//! told its place by `RANK`, `WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT`, meeting the others
//! over loopback through c10d's Gloo. What a user relies on: two processes with global batch
//! B train the same network as one process with batch B (with synchronised or frozen
//! BatchNorm), and a rank that dies takes the others down with an error naming it, after
//! which `--resume` finishes the run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::KD_ROW;
use kd_core::io::checkpoint;
use tch::Kind;

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `kd reproduce` of `config` into `out` as rank `rank` of `world` (alone when `world` is 1).
fn rank_cmd(
    config: &Path,
    out: &Path,
    cache: &Path,
    rank: usize,
    world: usize,
    port: u16,
    extra: &[&str],
) -> Command {
    let text = std::fs::read_to_string(config).unwrap();
    let table = text
        .lines()
        .find_map(|l| l.strip_prefix("table = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap()
        .to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kd"));
    cmd.args(["reproduce", &table, "--seeds", "1", "--device", "cpu", "--config"])
        .arg(config)
        .arg("--out")
        .arg(out)
        .args(extra)
        .env("KD_RS_CACHE", cache)
        .env("OMP_NUM_THREADS", "1")
        .env("KD_RS_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if world > 1 {
        cmd.env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("KD_DIST_TIMEOUT_S", "120");
    }
    cmd
}

/// Runs the table as `world` processes and waits for them all.
fn run(config: &Path, out: &Path, cache: &Path, world: usize, extra: &[&str]) -> Vec<Output> {
    let port = free_port();
    let children: Vec<Child> = (0..world)
        .map(|r| {
            rank_cmd(config, out, cache, r, world, port, extra)
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

fn assert_ok(outs: &[Output]) {
    for (r, o) in outs.iter().enumerate() {
        assert!(
            o.status.success(),
            "rank {r} failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// The tiny experiment with the BatchNorm mode `norm` everywhere, `epochs` student epochs of
/// one step each (so each epoch's loss is one step's), evaluated every `eval_every` epochs.
fn experiment(dir: &Path, norm: &str, epochs: usize, eval_every: usize) -> PathBuf {
    let text = common::tiny_experiment(KD_ROW)
        .replace(
            "max_steps_per_epoch = 2\n",
            &format!("max_steps_per_epoch = 1\nnorm = \"{norm}\"\n"),
        )
        .replace(
            "[student.train]\nepochs = 2",
            &format!("[student.train]\nepochs = {epochs}\neval_every = {eval_every}"),
        );
    let path = dir.join(format!("{norm}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Every trained row of the run in `out`: (row folder, per-epoch losses, method report,
/// student weights).
type Row = (String, Vec<f64>, serde_json::Value, Vec<(String, tch::Tensor)>);

fn outcome(out: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path().join("seed0"))
        .filter(|d| d.join("report.json").is_file())
        .collect();
    dirs.sort();
    for dir in dirs {
        let report = common::json(&dir.join("report.json"));
        let losses = report["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["loss"].as_f64().unwrap())
            .collect();
        let weights = checkpoint::load(&dir.join("student.safetensors"))
            .unwrap()
            .tensors;
        let name = dir
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut method = report["distiller"].clone();
        drop_timings(&mut method);
        rows.push((name, losses, method, weights));
    }
    assert!(!rows.is_empty(), "no finished row in {}", out.display());
    rows
}

/// Removes wall-clock times (`seconds`) from a method report, wherever they are.
fn drop_timings(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("seconds");
            m.values_mut().for_each(drop_timings);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(drop_timings),
        _ => {}
    }
}

/// Two method reports alike: counts, lists and names equal, measured numbers (a pre-fit's
/// loss) within 1e-5 of their size.
fn same_report(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-5 * x.abs().max(1.0)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(u, v)| same_report(u, v))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, u)| y.get(k).is_some_and(|v| same_report(u, v)))
        }
        _ => a == b,
    }
}

/// Largest differences between two runs' losses (relative to the loss, at least 1) and final
/// weights (the L2 norm of the difference over every tensor of a row, relative to the
/// weights' norm), over every row; the method reports (participation counts, selections)
/// must agree.
///
/// The weights are compared as a whole, not element by element: two processes sum in another
/// order, and once in a while (most likely an activation within rounding of a ReLU's kink
/// landing on the other side) some elements move by more than the rounding (seen once, on one
/// CPU, for one seed of the SBD row: 2.5e-5 at most, 6e-6 over the whole network, against 1e-8
/// without such a flip; frozen BatchNorm or another seed, 1e-7 at most). A step that differs
/// moves the whole network by far more: per-rank BatchNorm statistics, 7e-3.
fn max_gap(a: &[Row], b: &[Row]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let (mut loss, mut weights) = (0.0f64, 0.0f64);
    for ((na, la, ra, wa), (nb, lb, rb, wb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        assert_eq!(la.len(), lb.len(), "{na}");
        // Relative to the loss's size: a term weighted by α = 175 carries α times the
        // rounding of its float32 kernel.
        for (x, y) in la.iter().zip(lb) {
            loss = loss.max((x - y).abs() / x.abs().max(1.0));
        }
        assert!(
            same_report(ra, rb),
            "{na}: the method's report differs:\n{ra}\n{rb}"
        );
        assert_eq!(wa.len(), wb.len(), "{na}");
        let (mut diff, mut norm) = (0.0f64, 0.0f64);
        for ((ka, ta), (kb, tb)) in wa.iter().zip(wb) {
            assert_eq!(ka, kb);
            let (ta, tb) = (ta.to_kind(Kind::Double), tb.to_kind(Kind::Double));
            diff += (&ta - &tb).square().sum(Kind::Double).double_value(&[]);
            norm += ta.square().sum(Kind::Double).double_value(&[]);
        }
        weights = weights.max((diff / norm.max(f64::MIN_POSITIVE)).sqrt());
    }
    (loss, weights)
}

/// `config` trained by one process and by two; returns the gaps.
fn compare(dir: &Path, config: &Path) -> (f64, f64) {
    let (one, two) = (dir.join("one"), dir.join("two"));
    assert_ok(&run(config, &one, &dir.join("cache1"), 1, &[]));
    let outs = run(config, &two, &dir.join("cache2"), 2, &[]);
    assert_ok(&outs);
    // Rank 0 prints the table; the other rank trains and writes nothing.
    assert!(String::from_utf8_lossy(&outs[0].stdout).contains("| ours (mean ± std) |"));
    assert!(String::from_utf8_lossy(&outs[1].stdout).is_empty());
    max_gap(&outcome(&one), &outcome(&two))
}

/// One process against two, the tiny KD table with BatchNorm mode `norm`.
fn one_vs_two(norm: &str) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let config = experiment(dir.path(), norm, 3, 1);
    compare(dir.path(), &config)
}

#[test]
fn two_processes_with_sync_bn_train_what_one_process_trains() {
    let (loss, weights) = one_vs_two("sync");
    assert!(loss <= 1e-5, "per-step losses differ by {loss}");
    assert!(weights <= 1e-5, "final weights differ by {weights} (relative L2)");
}

#[test]
fn two_processes_with_frozen_bn_train_what_one_process_trains() {
    let (loss, weights) = one_vs_two("frozen");
    assert!(loss <= 1e-5, "per-step losses differ by {loss}");
    assert!(weights <= 1e-5, "final weights differ by {weights} (relative L2)");
}

/// Per-rank statistics (DDP's default) normalise each half-batch by itself: the run trains,
/// and it is not the single-process run, as the docs say.
#[test]
fn per_rank_bn_runs_and_differs_from_one_process() {
    let (loss, weights) = one_vs_two("per_rank");
    assert!(loss.is_finite() && weights.is_finite());
    assert!(
        loss > 1e-5 || weights > 1e-5,
        "per-rank BatchNorm matched the single process ({loss}, {weights})"
    );
}

/// A rank killed mid-run: the other stops with an error naming it, well inside the timeout,
/// and `--resume` with two processes finishes the run from the last checkpoint.
#[test]
fn a_killed_rank_stops_the_other_and_resume_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let config = experiment(dir.path(), "sync", 150, 150);
    let (out, cache) = (dir.path().join("run"), dir.path().join("cache"));
    let port = free_port();
    let mut ranks: Vec<Child> = (0..2)
        .map(|r| rank_cmd(&config, &out, &cache, r, 2, port, &[]).spawn().unwrap())
        .collect();
    // Wait until the student has a checkpoint with finished epochs, then kill rank 1.
    let ckpt = out.join("s-kd/seed0/checkpoint.safetensors");
    let started = Instant::now();
    loop {
        let done = checkpoint::load(&ckpt)
            .ok()
            .and_then(|c| c.meta["epochs_done"].as_u64())
            .unwrap_or(0);
        if done >= 3 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the student never checkpointed"
        );
        if let Some(status) = ranks[0].try_wait().unwrap() {
            panic!("rank 0 ended early: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ranks[1].kill().unwrap();
    let killed_at = Instant::now();
    let rank1 = ranks.pop().unwrap().wait_with_output().unwrap();
    assert!(!rank1.status.success());
    let rank0 = ranks.pop().unwrap().wait_with_output().unwrap();
    let waited = killed_at.elapsed();
    assert!(
        waited < Duration::from_secs(60),
        "rank 0 took {waited:?} to notice (timeout 120 s)"
    );
    common::assert_clean_error(&rank0, &["rank 1"]);
    assert!(!out.join("s-kd/seed0/report.json").exists());

    let outs = run(&config, &out, &cache, 2, &["--resume"]);
    assert_ok(&outs);
    let report = common::json(&out.join("s-kd/seed0/report.json"));
    assert_eq!(report["history"].as_array().unwrap().len(), 150);
    assert!(out.join("results.json").is_file());
}

/// Every method crate's distiller, two processes against one, synchronised BatchNorm: UniKD
/// (mode B, its teacher-side heads pre-fitted at the first epoch), self-regulated KD (a gated
/// teacher whose per-sample counters each rank fills with its own samples, then a
/// significance-weighted and a gated student), KD³ (selection over a web pool) and GDD on
/// segmentation (whose cross-entropy is a mean over labelled pixels, weighted per rank by its
/// share of them). Draws that a half-batch cannot repeat are off: KD³'s MixDistribution and
/// its contrastive term mix samples within each rank's part of the batch, and GDD's noise and
/// the heads' dropout are drawn per batch from libtorch's generator, as under PyTorch's DDP.
#[test]
fn every_method_crate_trains_the_same_on_two_processes() {
    let dir = tempfile::tempdir().unwrap();
    let classify = common::tiny_experiment(
        r#"[[rows]]
label = "unikd"
method = { kind = "unikd" }

[[rows]]
label = "sbd"
method = { kind = "selfreg", variant = "sbd", tau = 4.0, alpha = 0.9, s_min = 0.0 }

[[rows]]
label = "rd"
method = { kind = "selfreg", variant = "rd", tau = 4.0, alpha = 0.9, gate = { threshold = { kind = "fixed", beta = 0.12 } } }
"#,
    )
    .replace(
        "shared = true\n",
        "shared = true\nmethod = { kind = \"selfreg\", counting_start = 0, gate = { threshold = { kind = \"fixed\", beta = 0.12 } } }\n",
    )
    .replace("max_steps_per_epoch = 2\n", "max_steps_per_epoch = 2\nnorm = \"sync\"\n");
    let web = common::tiny_experiment(
        r#"[web]
size = 40
junk_fraction = 0.25

[[rows]]
label = "kd3"
train_on = "web"
method = { kind = "kd3", selection_views = "clean", selection_batch = 16, mix_distribution = false }
"#,
    )
    .replace("table = \"cifar100\"", "table = \"webdata\"")
    .replace(
        "max_steps_per_epoch = 2\n",
        "max_steps_per_epoch = 2\nnorm = \"sync\"\n",
    );
    let seg = common::tiny_seg_experiment("[[rows]]\nlabel = \"gdd\"\nstudent = \"s\"\nmethod = { kind = \"gdd\", alpha = 175.0, noise = { kind = \"none\" } }\n")
        .replace("max_steps_per_epoch = 2\n", "max_steps_per_epoch = 2\nnorm = \"sync\"\n")
        .replace("ratio_range = [0.5, 2.0]", "ratio_range = [1.0, 1.0]")
        .replace("num_classes = 19 }", "num_classes = 19, dropout = 0.0 }");
    for (name, text) in [("classify", classify), ("web", web), ("seg", seg)] {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let config = sub.join("table.toml");
        std::fs::write(&config, text).unwrap();
        let (loss, weights) = compare(&sub, &config);
        assert!(loss <= 1e-5, "{name}: per-epoch losses differ by {loss}");
        assert!(
            weights <= 1e-5,
            "{name}: final weights differ by {weights} (relative L2)"
        );
    }
    // The gate did gate: the regulated student skipped samples, so the ranks' weighted means
    // were over different numbers of participants.
    let rd = common::json(&dir.path().join("classify/two/rd/seed0/report.json"));
    let (took, seen) = (
        rd["distiller"]["participations"].as_i64().unwrap(),
        rd["distiller"]["visited"].as_i64().unwrap(),
    );
    assert!(0 < took && took < seen, "rd took part {took} of {seen} times");
}
