//! The runner's handling of bad input: each case must end with one clear error message and a
//! non-zero exit code, never a panic or a libtorch exception.

mod common;
use common::*;

#[test]
fn unknown_config_key_names_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    let text = tiny_experiment("[[rows]]\nlabel = \"s\"\nmethod = { kind = \"none\" }\n")
        .replace("hflip = false", "hflip = false\nhflp = true");
    std::fs::write(&cfg, text).unwrap();
    let out = kd(
        &["reproduce", "cifar100", "--config", cfg.to_str().unwrap()],
        dir.path(),
    );
    assert_clean_error(&out, &["bad.toml", "hflp"]);
}

#[test]
fn missing_data_folder_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = kd(
        &["reproduce", "cifar100", "--data", "/no/such/folder"],
        dir.path(),
    );
    assert_clean_error(&out, &["/no/such/folder", "does not exist"]);
}

#[test]
fn truncated_idx_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mnist");
    std::fs::create_dir_all(&data).unwrap();
    // A valid header announcing 100 images of 28×28, followed by only 10 bytes of pixels.
    let mut images = vec![0u8, 0, 8, 3, 0, 0, 0, 100, 0, 0, 0, 28, 0, 0, 0, 28];
    images.extend([0u8; 10]);
    std::fs::write(data.join("train-images-idx3-ubyte"), &images).unwrap();
    std::fs::write(data.join("train-labels-idx1-ubyte"), [0u8, 0, 8, 1, 0, 0, 0, 100]).unwrap();
    std::fs::write(data.join("t10k-images-idx3-ubyte"), &images).unwrap();
    std::fs::write(data.join("t10k-labels-idx1-ubyte"), [0u8, 0, 8, 1, 0, 0, 0, 100]).unwrap();
    let out = kd(
        &[
            "reproduce",
            "cifar100",
            "--data",
            data.to_str().unwrap(),
            "--seeds",
            "1",
        ],
        dir.path(),
    );
    assert_clean_error(&out, &["train-images-idx3-ubyte"]);
}

#[test]
fn student_teacher_shape_mismatch_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fit.toml");
    // The guided layer (stage3, 2×2 at 8×8 input) and the hint (stage1, 8×8) differ spatially:
    // the 1×1 regressor maps channels but not sizes, so the hint loss must refuse the pair.
    let text = tiny_experiment(
        "[[rows]]\nlabel = \"FitNets\"\nmethod = { kind = \"fitnets\", beta = 1.0, student_tap = \"stage3\", teacher_tap = \"stage1\" }\n",
    )
    .replace("[teacher]\narch = \"resnet8\"", "[teacher]\narch = \"resnet8x4\"");
    std::fs::write(&cfg, text).unwrap();
    let out = kd(
        &[
            "reproduce",
            "cifar100",
            "--config",
            cfg.to_str().unwrap(),
            "--seeds",
            "1",
            "--out",
            dir.path().join("o").to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_clean_error(&out, &["2, 2]", "8, 8]"]);
}

#[test]
fn corrupt_checkpoint_on_resume_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    std::fs::write(
        &cfg,
        tiny_experiment("[[rows]]\nlabel = \"s\"\nmethod = { kind = \"none\" }\n"),
    )
    .unwrap();
    let out_dir = dir.path().join("run");
    let args = [
        "reproduce",
        "cifar100",
        "--config",
        cfg.to_str().unwrap(),
        "--seeds",
        "1",
        "--out",
        out_dir.to_str().unwrap(),
    ];
    let ok = kd(&args, dir.path());
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("results.json")).unwrap()).unwrap();
    // No row distils, so no teacher is trained or shown: the only row is the student's.
    assert_eq!(results["rows"].as_array().unwrap().len(), 1);
    assert_eq!(results["rows"][0]["method"], "s");
    assert_eq!(results["rows"][0]["per_seed"].as_array().unwrap().len(), 1);
    assert!(out_dir.join("config.toml").is_file());
    // Simulate a crash mid-row: the report is gone and the checkpoint is garbage.
    let seed_dir = out_dir.join("s").join("seed0");
    std::fs::remove_file(seed_dir.join("report.json")).unwrap();
    std::fs::write(seed_dir.join("checkpoint.safetensors"), b"garbage").unwrap();
    let mut resume = args.to_vec();
    resume.push("--resume");
    let out = kd(&resume, dir.path());
    assert_clean_error(&out, &["checkpoint.safetensors"]);
}

/// The tiny experiment with a small generated web pool and two rows trained on it.
fn tiny_web_experiment() -> String {
    tiny_experiment(
        r#"[web]
size = 40
junk_fraction = 0.25

[[rows]]
label = "KD on the pool"
train_on = "web"
method = { kind = "kd", tau = 4.0, ce_weight = 0.0, kd_weight = 1.0 }

[[rows]]
label = "KD3"
train_on = "web"
paper_by_dataset = { "cifar-10" = 95.21 }
method = { kind = "kd3", selection_views = "clean", selection_batch = 16 }

[selection_plot]
file = "selection.png"
title = "kept"
"#,
    )
    .replace("table = \"cifar100\"", "table = \"webdata\"")
}

#[test]
fn empty_web_folder_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("empty-web");
    std::fs::create_dir_all(&web).unwrap();
    std::fs::write(web.join("notes.txt"), "not an image").unwrap();
    let cfg = dir.path().join("web.toml");
    std::fs::write(&cfg, tiny_web_experiment()).unwrap();
    let out = kd(
        &[
            "reproduce",
            "webdata",
            "--config",
            cfg.to_str().unwrap(),
            "--web",
            web.to_str().unwrap(),
            "--seeds",
            "1",
            "--out",
            dir.path().join("o").to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_clean_error(&out, &["empty-web", "no png/jpg/jpeg images"]);
}

#[test]
fn missing_web_folder_and_web_without_web_rows_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = kd(&["reproduce", "webdata", "--web", "/no/such/web"], dir.path());
    assert_clean_error(&out, &["--web /no/such/web", "does not exist"]);
    let cfg = dir.path().join("plain.toml");
    std::fs::write(
        &cfg,
        tiny_experiment("[[rows]]\nlabel = \"s\"\nmethod = { kind = \"none\" }\n"),
    )
    .unwrap();
    let out = kd(
        &[
            "reproduce",
            "cifar100",
            "--config",
            cfg.to_str().unwrap(),
            "--web",
            dir.path().to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_clean_error(&out, &["--web", "no row that trains on a web pool"]);
}

#[test]
fn web_rows_train_on_the_generated_pool_and_report_what_they_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("web.toml");
    std::fs::write(&cfg, tiny_web_experiment()).unwrap();
    let out_dir = dir.path().join("run");
    let out = kd(
        &[
            "reproduce",
            "webdata",
            "--config",
            cfg.to_str().unwrap(),
            "--seeds",
            "1",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("results.json")).unwrap()).unwrap();
    // The pool's make-up is in the results: 30 shifted + 10 junk images.
    let web = &results["web"];
    assert_eq!((web["size"].as_u64(), web["junk"].as_u64()), (Some(40), Some(10)));
    assert_eq!(web["junk_pct"].as_f64(), Some(25.0));
    let rows = results["rows"].as_array().unwrap();
    let labels: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(labels, ["teacher (resnet8, one shared)", "KD on the pool", "KD3"]);
    // Not CIFAR-10: no paper number.
    assert!(rows[2]["paper"].is_null());
    let kept = &rows[2]["extra"]["kept"];
    assert_eq!(kept["junk_pct_per_epoch"].as_array().unwrap().len(), 2);
    assert_eq!(kept["in_distribution_pct_per_epoch"].as_array().unwrap().len(), 2);
    assert!(rows[2]["extra"]["per_seed_report"][0]
        .get("kept_per_epoch")
        .is_none());
    assert!(out_dir.join("selection.png").is_file());
    assert!(std::fs::read_to_string(out_dir.join("results.md"))
        .unwrap()
        .contains("Web pool: generated from"));
    // The pool was written once into the cache as PNGs with the origins sidecar.
    let pools: Vec<_> = std::fs::read_dir(dir.path().join("webpool"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(pools.len(), 1, "{pools:?}");
    assert!(pools[0].join("origins.csv").is_file() && pools[0].join("000039.png").is_file());
}

#[test]
fn xtask_help_lists_only_commands_that_exist() {
    // xtask cannot link the runner, so its usage text is checked here against the binary.
    let source = include_str!("../../../xtask/src/main.rs");
    let start = source
        .find("commands:\n")
        .expect("xtask's usage has a commands section");
    let section = &source[start..];
    let section = &section[..section.find("\n\n").unwrap()];
    let named: Vec<&str> = section
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for cmd in ["reproduce", "distill", "train", "eval", "convert"] {
        assert!(named.contains(&cmd), "xtask's help lacks {cmd}: {named:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    for cmd in named {
        // xtask's own commands, and the placeholder for the rest.
        if ["setup", "test", "bench", "<other>"].contains(&cmd) {
            continue;
        }
        let out = kd(&[cmd, "--help"], dir.path());
        assert!(
            out.status.success(),
            "xtask's help names `{cmd}`, which the runner does not have:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
