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

/// `reproduce <table> --config <config> --seeds 1 --out <out>`: one seed of a tiny experiment
/// file, the start of most CLI runs; callers add their flags.
pub fn one_seed<'a>(table: &'a str, config: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "reproduce",
        table,
        "--config",
        config,
        "--seeds",
        "1",
        "--out",
        out,
    ]
}

/// Writes `text` as `<dir>/experiment.toml` and runs it as `table` with `seeds` seeds into
/// `<dir>/run`, the cache at `dir`; returns the output and the run folder.
pub fn reproduce_text(dir: &Path, table: &str, text: &str, seeds: u64) -> (Output, std::path::PathBuf) {
    let cfg = dir.join("experiment.toml");
    std::fs::write(&cfg, text).unwrap();
    let out_dir = dir.join("run");
    let seeds = seeds.to_string();
    let args = [
        "reproduce",
        table,
        "--config",
        cfg.to_str().unwrap(),
        "--seeds",
        &seeds,
        "--out",
        out_dir.to_str().unwrap(),
    ];
    (kd(&args, dir), out_dir)
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

/// A row distilling with KD from the tiny experiment's teacher.
pub const KD_ROW: &str =
    "[[rows]]\nlabel = \"s + kd\"\nmethod = { kind = \"kd\", tau = 4.0, ce_weight = 0.1, kd_weight = 0.9 }\n";

/// A tiny experiment: 8×8 images, 64 training samples, resnet8 everywhere, two steps an epoch.
pub fn tiny_experiment(rows: &str) -> String {
    format!(
        r#"table = "cifar100"
scale = "quick"

[data]
pad_crop = 0
hflip = false
resize = 8
train_subset = 64

[teacher]
arch = "resnet8"
shared = true

[teacher.train]
epochs = 1
batch_size = 32
max_steps_per_epoch = 2
optimizer = {{ kind = "sgd", momentum = 0.9, weight_decay = 5e-4 }}
lr = {{ lr = 0.05, schedule = {{ kind = "constant" }} }}

[student]
arch = "resnet8"

[student.train]
epochs = 2
batch_size = 32
max_steps_per_epoch = 2
optimizer = {{ kind = "sgd", momentum = 0.9, weight_decay = 5e-4 }}
lr = {{ lr = 0.05, schedule = {{ kind = "constant" }} }}

{rows}
"#
    )
}

/// The recipe of every network of [`tiny_seg_experiment`]: two epochs of two steps.
pub const TINY_SEG_TRAIN: &str = r#"epochs = 2
batch_size = 2
max_steps_per_epoch = 2
optimizer = { kind = "sgd", momentum = 0.9, weight_decay = 5e-4 }
lr = { lr = 0.01, schedule = { kind = "poly", power = 0.9, min_lr = 1e-4 } }"#;

/// A tiny segmentation table: 64×32 generated scenes, a narrow PSP teacher and `body` (the
/// students and rows); without `[[students]]` in `body`, one student `s` (a narrow PSP).
pub fn tiny_seg_experiment(body: &str) -> String {
    let student = if body.contains("[[students]]") {
        String::new()
    } else {
        format!(
            "[[students]]\nname = \"s\"\nnet = {{ backbone = \"r18\", width = 4, head = \"psp\", head_channels = 8, aux_channels = 4, num_classes = 19 }}\n\n[students.train]\n{TINY_SEG_TRAIN}\n\n"
        )
    };
    format!(
        r#"table = "cityscapes"
scale = "quick"
paper_dataset = "Cityscapes val"

[data]
synth = {{ width = 64, height = 32, train = 6, val = 2, seed = 3 }}
augment = {{ ratio_range = [0.5, 2.0], crop = [32, 32] }}
inference = {{ mode = "slide", crop = [32, 32], stride = [16, 16] }}

[teacher]
label = "teacher (tiny)"
net = {{ backbone = "r18", width = 8, head = "psp", head_channels = 8, aux_channels = 8, num_classes = 19 }}

[teacher.train]
{TINY_SEG_TRAIN}

{student}{body}"#
    )
}
