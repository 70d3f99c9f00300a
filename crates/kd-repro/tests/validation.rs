//! A table that cannot give a meaningful row stops before anything trains: each recipe value
//! outside its range, an empty split, a label that the label table lacks, a crop larger than
//! the images, and a step that cannot fit in memory, each with one error naming the file and
//! the key.

use std::path::Path;

use kd_seg::data::GrayImage;
use kd_vision::image_ops::write_label_png;

mod common;
use common::*;

/// Runs `text` as the cifar100 table in `dir` and returns the output.
fn run_cifar(dir: &Path, text: &str) -> std::process::Output {
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = dir.join("run");
    kd(
        &[
            "reproduce",
            "cifar100",
            "--config",
            cfg.to_str().unwrap(),
            "--seeds",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
        dir,
    )
}

#[test]
fn each_invalid_recipe_value_is_refused_before_training_naming_file_and_key() {
    let base = tiny_experiment(KD_ROW);
    // (the edit, the key the error must name); each edit applies to the student's recipe,
    // written after the teacher's.
    let student = base.find("[student.train]").unwrap();
    let (head, tail) = base.split_at(student);
    let cases = [
        ("epochs = 2", "epochs = 0", "[student] train.epochs = 0"),
        ("lr = 0.05", "lr = -0.05", "[student] train.lr.lr = -0.05"),
        (
            "batch_size = 32",
            "batch_size = 0",
            "[student] train.batch_size = 0",
        ),
        (
            "momentum = 0.9",
            "momentum = 1.0",
            "[student] train.optimizer.momentum = 1",
        ),
        (
            "batch_size = 32",
            "batch_size = 100",
            "larger than the training set",
        ),
        // A method option out of its range, found before the teacher trains.
        ("tau = 4.0", "tau = -4.0", "row \"s + kd\""),
        (
            "epochs = 2",
            "epochs = 2\nmin_updates = 0",
            "[student] train.min_updates = 0",
        ),
        (
            "epochs = 2",
            "epochs = 2\nearly_stop = { held_out = 1.5 }",
            "[student] train.early_stop.held_out = 1.5",
        ),
        (
            "epochs = 2",
            "epochs = 2\nearly_stop = { patience = 0, min_share = 2.0 }",
            "[student] train.early_stop.patience = 0",
        ),
    ];
    for (from, to, key) in cases {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{head}{}", tail.replacen(from, to, 1));
        let out = run_cifar(dir.path(), &text);
        assert_clean_error(&out, &["bad.toml", key]);
        // Nothing trained and no run folder left behind, so the fixed config can use it.
        assert!(
            !dir.path().join("teachers").exists(),
            "{key}: a teacher was trained"
        );
        assert!(
            !dir.path().join("run").exists(),
            "{key}: the run folder was created"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let out = run_cifar(dir.path(), &base.replace("train_subset = 64", "train_subset = 0"));
    assert_clean_error(&out, &["bad.toml", "train_subset = 0"]);
    let dir = tempfile::tempdir().unwrap();
    let out = run_cifar(dir.path(), &format!("seeds = 0\n{base}"));
    assert_clean_error(&out, &["bad.toml", "seeds = 0"]);
}

/// A one-image Cityscapes split under `root`: a 32×16 image and its label ids.
fn write_split(root: &Path, split: &str, stem: &str, label_id: u8, image: bool) {
    let img_dir = root.join("leftImg8bit").join(split).join("city");
    let gt_dir = root.join("gtFine").join(split).join("city");
    std::fs::create_dir_all(&img_dir).unwrap();
    std::fs::create_dir_all(&gt_dir).unwrap();
    if image {
        image::RgbImage::from_pixel(32, 16, image::Rgb([90, 90, 90]))
            .save(img_dir.join(format!("{stem}_leftImg8bit.png")))
            .unwrap();
    }
    let mut ids = vec![7u8; 32 * 16];
    ids[0] = label_id;
    let label = GrayImage::from_raw(32, 16, ids).unwrap();
    write_label_png(&gt_dir.join(format!("{stem}_gtFine_labelIds.png")), &label).unwrap();
}

/// The embedded Cityscapes quick table with another crop and read scale, on 10 + 2 generated
/// scenes.
fn seg_config(dir: &Path, crop: [usize; 2], scale: f64) -> String {
    let text = include_str!("../../../configs/cityscapes.quick.toml")
        .replace("crop = [64, 64]", &format!("crop = [{}, {}]", crop[0], crop[1]))
        .replace("scale = 0.5", &format!("scale = {scale}"))
        .replace("train = 300, val = 60", "train = 10, val = 2");
    let p = dir.join("seg.toml");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn argv(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

#[test]
fn cityscapes_labels_without_images_and_unknown_label_ids_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cs");
    write_split(&root, "train", "city_000000_000001", 7, true);
    write_split(&root, "val", "city_000000_000002", 7, true);
    write_split(&root, "val", "city_000000_000003", 7, false);
    let cfg = seg_config(dir.path(), [16, 16], 1.0);
    let args = |out: &str| {
        vec![
            "reproduce".to_string(),
            "cityscapes".into(),
            "--config".into(),
            cfg.clone(),
            "--data".into(),
            root.to_str().unwrap().into(),
            "--seeds".into(),
            "1".into(),
            "--out".into(),
            dir.path().join(out).to_str().unwrap().into(),
        ]
    };
    let out = kd(&argv(&args("r1")), dir.path());
    assert_clean_error(
        &out,
        &["city_000000_000003_gtFine_labelIds.png", "without its image"],
    );

    // Now a complete val split, but a training label id outside the label table (0..=33).
    std::fs::remove_dir_all(&root).unwrap();
    write_split(&root, "train", "city_000000_000001", 200, true);
    write_split(&root, "val", "city_000000_000002", 7, true);
    let out = kd(&argv(&args("r2")), dir.path());
    assert_clean_error(
        &out,
        &["city_000000_000001_gtFine_labelIds.png", "unknown label id 200"],
    );
}

#[test]
fn a_crop_larger_than_the_images_and_a_step_beyond_memory_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = |cfg: &str, out: &str, memory_mb: Option<&str>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kd"));
        c.args([
            "reproduce",
            "cityscapes",
            "--config",
            cfg,
            "--seeds",
            "1",
            "--out",
        ])
        .arg(dir.path().join(out))
        .env("KD_RS_CACHE", dir.path())
        .env("OMP_NUM_THREADS", "1");
        match memory_mb {
            Some(m) => c.env("KD_RS_MEMORY_MB", m),
            None => c.env_remove("KD_RS_MEMORY_MB"),
        };
        c.output().unwrap()
    };
    // The stand-in is 256×128; at scale 0.5 and ratio 2.0 its largest image is 256×128.
    let huge = seg_config(dir.path(), [4096, 4096], 0.5);
    assert_clean_error(
        &run(&huge, "r1", None),
        &["seg.toml", "augment.crop", "crop [4096, 4096]", "128×256"],
    );
    // A crop the images allow, on a machine of 64 MiB: refused before any training, naming
    // the row, the estimate and the keys to lower.
    let big = seg_config(dir.path(), [128, 256], 0.5);
    let out = run(&big, "r2", Some("64"));
    assert_clean_error(
        &out,
        &[
            "one training step needs at least",
            "KD_RS_MEMORY_MB=64",
            "train.batch_size",
            "seg.toml",
        ],
    );
    assert!(!dir.path().join("teachers").exists());
    let e = run(&big, "r3", Some("lots"));
    assert_clean_error(&e, &["KD_RS_MEMORY_MB=lots"]);
    // A huge crop the images allow (512×256 scenes rescaled up to 16×), against the machine's
    // own memory: batch 8 of 4096×8192 crops cannot fit in any machine this runs on.
    let text = std::fs::read_to_string(&big)
        .unwrap()
        .replace("width = 256, height = 128", "width = 512, height = 256")
        .replace("crop = [128, 256]", "crop = [4096, 8192]")
        .replace("scale = 0.5", "scale = 1.0")
        .replace("ratio_range = [0.5, 2.0]", "ratio_range = [0.5, 16.0]")
        .replace("in_memory = true", "in_memory = false");
    let huge_ok = dir.path().join("huge.toml");
    std::fs::write(&huge_ok, text).unwrap();
    let out = run(huge_ok.to_str().unwrap(), "r4", None);
    assert_clean_error(
        &out,
        &["one training step needs at least", "GiB", "train.batch_size"],
    );
}

/// A COCO root of the quick table's three classes whose train2017 split lists `train` 64×48
/// images and val2017 `val` images.
fn write_coco(root: &Path, train: usize, val: usize) {
    for (split, n) in [("train2017", train), ("val2017", val)] {
        std::fs::create_dir_all(root.join(split)).unwrap();
        let mut images = Vec::new();
        let mut anns = Vec::new();
        for i in 1..=n {
            let name = format!("{i:012}.png");
            image::RgbImage::from_pixel(64, 48, image::Rgb([120, 60, 30]))
                .save(root.join(split).join(&name))
                .unwrap();
            images.push(format!(
                r#"{{"id": {i}, "file_name": "{name}", "width": 64, "height": 48}}"#
            ));
            anns.push(format!(
                r#"{{"id": {i}, "image_id": {i}, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0}}"#
            ));
        }
        std::fs::create_dir_all(root.join("annotations")).unwrap();
        std::fs::write(
            root.join("annotations").join(format!("instances_{split}.json")),
            format!(
                r#"{{"images": [{}], "annotations": [{}], "categories": [{{"id": 1, "name": "a"}}, {{"id": 2, "name": "b"}}, {{"id": 3, "name": "c"}}]}}"#,
                images.join(", "),
                anns.join(", ")
            ),
        )
        .unwrap();
    }
}

#[test]
fn empty_training_and_evaluation_splits_are_refused_naming_the_data() {
    let dir = tempfile::tempdir().unwrap();
    for (train, val, needle) in [
        (2, 0, "the evaluation set coco/instances_val2017 is empty"),
        (0, 2, "the training set coco/instances_train2017 is empty"),
    ] {
        let root = dir.path().join(format!("coco{train}{val}"));
        write_coco(&root, train, val);
        let out = kd(
            &[
                "reproduce",
                "coco",
                "--data",
                root.to_str().unwrap(),
                "--scale",
                "quick",
                "--seeds",
                "1",
                "--out",
                dir.path().join(format!("run{train}{val}")).to_str().unwrap(),
            ],
            dir.path(),
        );
        assert_clean_error(&out, &[root.to_str().unwrap(), needle]);
        assert!(!dir.path().join("teachers").exists());
    }
}

#[test]
fn a_teacher_trained_one_step_is_flagged_above_the_table_and_in_the_results() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_experiment(KD_ROW);
    let student = base.find("[student.train]").unwrap();
    let (head, tail) = base.split_at(student);
    // One step at a negligible rate: the teacher stays at its random start.
    let head = head
        .replace("max_steps_per_epoch = 2", "max_steps_per_epoch = 1")
        .replace("lr = 0.05", "lr = 1e-9");
    let out = run_cifar(dir.path(), &format!("{head}{tail}"));
    let out_dir = dir.path().join("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("warning: the teacher"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("> **Warning:** the teacher"), "{stdout}");
    let results = json(&out_dir.join("results.json"));
    let warnings = results["warnings"].as_array().unwrap();
    assert!(
        warnings[0].as_str().unwrap().contains("near chance"),
        "{warnings:?}"
    );
    assert!(results["rows"][0]["teacher_warning"].is_string());
    assert!(results["rows"][1].get("teacher_warning").is_none());
    let md = std::fs::read_to_string(out_dir.join("results.md")).unwrap();
    assert!(md.contains("> **Warning:**"));
}
