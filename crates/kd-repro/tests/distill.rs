//! `kd train` and `kd distill` end to end through the binary: one tiny epoch per task, what
//! a run folder holds (the exported student, the epoch log, the resolved `run.toml` that runs
//! the same job again), and the mistakes a user makes first, each ending in one clear error.

mod common;
use common::*;

use std::path::Path;

/// A tiny classification run: the embedded set at 8×8, 64 training samples, two steps.
const TINY_CLASSIFICATION: &str = r#"task = "classification"
student = { arch = "resnet8" }
train = { epochs = 1, batch_size = 32, max_steps_per_epoch = 2 }
data_config = { resize = 8, train_subset = 64, pad_crop = 0, hflip = false }
"#;

/// A tiny segmentation run: 64×32 generated scenes, a narrow PSPNet-R18.
const TINY_SEGMENTATION: &str = r#"task = "segmentation"
student = { arch = "pspnet_r18", net = { width = 4, head_channels = 8, aux_channels = 4 } }
train = { epochs = 1, batch_size = 2, max_steps_per_epoch = 2 }

[data_config]
synth = { width = 64, height = 32, train = 6, val = 2, seed = 3 }
augment = { ratio_range = [0.5, 2.0], crop = [32, 32] }
inference = { mode = "slide", crop = [32, 32], stride = [16, 16] }
"#;

/// A tiny detection run: at most 64×56 generated scenes, a narrow FCOS-R18.
const TINY_DETECTION: &str = r#"task = "detection"
student = { arch = "fcos_r18", net = { width = 8, fpn_channels = 16, stacked_convs = 1 } }
train = { epochs = 1, batch_size = 2, max_steps_per_epoch = 2 }

[data_config]
synth = { train = 8, val = 4, width = [48, 64], height = [40, 56], object_size = [6.0, 36.0], seed = 3 }
augment = { img_scale = [64, 64], flip_prob = 0.5 }
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn ok(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The safetensors header's `kd_rs` metadata and its tensor names.
fn header(path: &Path) -> (serde_json::Value, Vec<String>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = h["__metadata__"]["kd_rs"].as_str().unwrap();
    let names = h
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    (serde_json::from_str(meta).unwrap(), names)
}

/// The log's lines as JSON.
fn log_lines(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Trains the no-KD network of `config` into `out` and returns its exported file.
fn train(config: &str, out: &Path, cache: &Path) -> std::path::PathBuf {
    ok(&kd(
        &["train", "--config", config, "--out", out.to_str().unwrap()],
        cache,
    ));
    let file = out.join("student.safetensors");
    let (meta, _) = header(&file);
    assert_eq!(meta["command"], "train");
    assert_eq!(meta["method"], "none");
    file
}

/// `distill --config <config> --teacher <teacher> --method <method> --weak-teacher --out
/// <out>` plus `extra`, which must succeed.
fn distil(config: &str, teacher: &Path, method: &str, out: &Path, extra: &[&str], cache: &Path) {
    let mut args = vec![
        "distill",
        "--config",
        config,
        "--teacher",
        teacher.to_str().unwrap(),
        "--method",
        method,
        "--weak-teacher",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    ok(&kd(&args, cache));
}

/// Checks what every run folder holds after one epoch of `method`, with `term` in the log.
fn assert_run_folder(run: &Path, task: &str, method: &str, term: &str, curve: &str) {
    let (meta, _) = header(&run.join("student.safetensors"));
    assert_eq!(meta["task"], task);
    assert_eq!(meta["method"], method);
    let lines = log_lines(run);
    assert_eq!(lines.len(), 1, "one epoch, one line: {lines:?}");
    let l = &lines[0];
    assert_eq!(l["epoch"], 1);
    assert_eq!(l["seed"], 0);
    assert!(l["lr"].as_f64().unwrap() > 0.0, "{l}");
    assert!(l["test"].as_f64().is_some(), "{l}");
    assert!(l["terms"][term].as_f64().unwrap().is_finite(), "{l}");
    assert!(run.join(curve).is_file(), "the metric curve {curve}");
    assert!(run.join("run.toml").is_file());
    assert!(run.join("config.toml").is_file());
}

#[test]
fn classification_trains_a_teacher_distils_it_and_the_saved_run_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = write(d, "run.toml", TINY_CLASSIFICATION);
    let teacher = train(&cfg, &d.join("teacher"), d);

    // The exported teacher names its network: no --teacher-arch.
    let run = d.join("kd");
    let opts = ["--method-opt", "tau=2", "--naming", "pytorch"];
    distil(&cfg, &teacher, "kd", &run, &opts, d);
    assert_run_folder(&run, "classification", "kd", "kd", "accuracy.png");
    let (meta, names) = header(&run.join("student.safetensors"));
    assert_eq!(meta["naming"], "pytorch");
    assert_eq!(meta["arch"], "resnet8");
    assert!(
        names.iter().any(|n| n.ends_with("num_batches_tracked")),
        "PyTorch's names carry num_batches_tracked: {names:?}"
    );
    let saved = std::fs::read_to_string(run.join("run.toml")).unwrap();
    assert!(saved.contains("tau = 2.0"), "the option given:\n{saved}");
    assert!(
        saved.contains("kd_weight"),
        "and the defaults written out:\n{saved}"
    );

    // The saved description runs the same job, epoch for epoch.
    let saved = run.join("run.toml");
    let rerun = |out: &Path, extra: &[&str]| {
        let mut args = vec!["distill", "--config", saved.to_str().unwrap(), "--weak-teacher"];
        args.extend(extra);
        args.extend(["--out", out.to_str().unwrap()]);
        kd(&args, d)
    };
    let again = d.join("again");
    ok(&rerun(&again, &[]));
    let (a, b) = (log_lines(&run), log_lines(&again));
    for key in ["loss", "test", "lr"] {
        assert_eq!(a[0][key], b[0][key], "{key}");
    }

    // A finished run folder is never overwritten; --resume completes it as it was.
    assert_clean_error(&rerun(&run, &[]), &["not empty", "--resume"]);
    ok(&rerun(&run, &["--resume"]));
    assert_eq!(log_lines(&run), a);
}

#[test]
fn segmentation_distils_with_gdd_for_one_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = write(d, "seg.toml", TINY_SEGMENTATION);
    let teacher = train(&cfg, &d.join("teacher"), d);
    let run = d.join("gdd");
    distil(&cfg, &teacher, "gdd", &run, &[], d);
    assert_run_folder(&run, "segmentation", "gdd", "gdd", "miou.png");
    let (meta, _) = header(&run.join("student.safetensors"));
    assert_eq!(
        meta["net"]["width"], 4,
        "the network's configuration travels: {meta}"
    );

    // The segmentor is refused by a classification run, by what its file says it is.
    let out = kd(
        &[
            "distill",
            "--task",
            "classification",
            "--student",
            "resnet8",
            "--teacher",
            teacher.to_str().unwrap(),
            "--method",
            "kd",
        ],
        d,
    );
    assert_clean_error(
        &out,
        &[
            "--teacher",
            "a segmentation network (pspnet_r18)",
            "this run is classification",
        ],
    );
}

#[test]
fn detection_distils_with_cwd_for_one_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = write(d, "det.toml", TINY_DETECTION);
    let teacher = train(&cfg, &d.join("teacher"), d);
    let run = d.join("cwd");
    distil(&cfg, &teacher, "cwd", &run, &[], d);
    assert_run_folder(&run, "detection", "cwd", "cwd_feat", "box_ap.png");
}

#[test]
fn a_typo_in_a_method_option_lists_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = write(d, "run.toml", TINY_CLASSIFICATION);
    let teacher = write(d, "t.safetensors", "");
    let out = kd(
        &[
            "distill",
            "--config",
            &cfg,
            "--teacher",
            &teacher,
            "--method",
            "kd",
            "--method-opt",
            "taau=4",
        ],
        d,
    );
    assert_clean_error(&out, &["method kd", "taau", "tau", "kd_weight"]);
    let out = kd(
        &[
            "distill",
            "--config",
            &cfg,
            "--teacher",
            &teacher,
            "--method",
            "gdd",
        ],
        d,
    );
    assert_clean_error(
        &out,
        &["unknown method \"gdd\" for classification", "kd, fitnets, unikd"],
    );
    let out = kd(&["train", "--config", &cfg, "--student", "resnet9"], d);
    assert_clean_error(&out, &["--student resnet9", "unknown network", "resnet8x4"]);
}

#[test]
fn a_checkpoint_of_another_task_is_refused_by_its_key_names() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = write(d, "run.toml", TINY_CLASSIFICATION);
    // A segmentor's state dict without this project's metadata, as MMSeg saves it.
    let file = d.join("pspnet.safetensors");
    let w = tch::Tensor::zeros([19, 8, 1, 1], (tch::Kind::Float, tch::Device::Cpu));
    kd_core::io::checkpoint::save(
        &file,
        &[("decode_head.conv_seg.weight".to_string(), w)],
        &serde_json::json!({}),
    )
    .unwrap();
    let out = kd(
        &[
            "distill",
            "--config",
            &cfg,
            "--teacher",
            file.to_str().unwrap(),
            "--teacher-arch",
            "resnet8",
            "--method",
            "kd",
        ],
        d,
    );
    assert_clean_error(
        &out,
        &[
            "pspnet.safetensors",
            "segmentation network",
            "decode_head.conv_seg.weight",
        ],
    );
}

#[test]
fn a_tap_the_networks_lack_is_named_with_the_ones_they_have() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = write(d, "run.toml", TINY_CLASSIFICATION);
    let teacher = train(&cfg, &d.join("teacher"), d);
    let out = kd(
        &[
            "distill",
            "--config",
            &cfg,
            "--teacher",
            teacher.to_str().unwrap(),
            "--method",
            "fitnets",
            "--method-opt",
            "teacher_tap=stage4",
            "--weak-teacher",
            "--out",
            d.join("fit").to_str().unwrap(),
        ],
        d,
    );
    assert_clean_error(&out, &["stage4", "stage1", "stage3"]);
}

#[test]
fn train_takes_no_teacher_and_distill_needs_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = write(d, "run.toml", TINY_CLASSIFICATION);
    let out = kd(&["train", "--config", &cfg, "--teacher", &cfg], d);
    assert_clean_error(&out, &["--teacher belongs to distill"]);
    let out = kd(&["distill", "--config", &cfg, "--method", "kd"], d);
    assert_clean_error(&out, &["--teacher FILE"]);
    let out = kd(&["distill", "--student", "resnet8"], d);
    assert_clean_error(&out, &["--task classification|segmentation|detection"]);
}

#[test]
fn every_method_is_listed_with_its_settings() {
    let dir = tempfile::tempdir().unwrap();
    for (task, methods) in [
        (
            "classification",
            &["kd", "fitnets", "unikd", "selfreg", "kd3"][..],
        ),
        ("segmentation", &["cwd", "gdd"][..]),
        ("detection", &["cwd", "gdd"][..]),
    ] {
        let out = ok(&kd(&["distill", "--task", task, "--list-methods"], dir.path()));
        for m in methods {
            assert!(out.lines().any(|l| l == *m), "{task}: {m} missing:\n{out}");
        }
        // Defaults are written out in full, not only the table's keys.
        assert!(out.contains("tau = "), "{out}");
    }
}

#[test]
fn an_imagefolder_root_trains_and_distils_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = d.join("tree");
    let synth = kd_classify::data::FolderSynthConfig {
        classes: 3,
        train_per_class: 4,
        val_per_class: 2,
        class_colour: 0.5,
        min_side: [24, 40],
        seed: 0,
    };
    kd_classify::data::generate_image_folder(&root, &synth).unwrap();
    let common = [
        "--task",
        "classification",
        "--data",
        root.to_str().unwrap(),
        "--scale",
        "quick",
        "--data-opt",
        "size=16",
        "--epochs",
        "1",
        "--batch-size",
        "4",
    ];
    let teacher_run = d.join("teacher");
    let mut args = vec![
        "train",
        "--student",
        "resnet18",
        "--out",
        teacher_run.to_str().unwrap(),
    ];
    args.extend(common);
    ok(&kd(&args, d));
    let teacher = teacher_run.join("student.safetensors");
    let run = d.join("kd");
    let mut args = vec![
        "distill",
        "--student",
        "resnet18",
        "--teacher",
        teacher.to_str().unwrap(),
        "--method",
        "kd",
        "--weak-teacher",
        "--out",
        run.to_str().unwrap(),
    ];
    args.extend(common);
    ok(&kd(&args, d));
    assert_run_folder(&run, "classification", "kd", "kd", "accuracy.png");
    let saved = std::fs::read_to_string(run.join("run.toml")).unwrap();
    assert!(saved.contains("size = 16"), "{saved}");
}
