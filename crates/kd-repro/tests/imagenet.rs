//! The ImageFolder table end to end on a tiny generated tree: files decoded per sample with
//! RandomResizedCrop, a teacher, no KD and KD rows, results and the config beside them; and a
//! broken tree named in the error.

mod common;

use common::*;

const TINY: &str = r#"table = "imagenet"
scale = "quick"
seeds = 1

[data]
synth = { classes = 3, train_per_class = 4, val_per_class = 2, class_colour = 0.5, min_side = [24, 40], seed = 0 }
size = 16

[teacher]
label = "teacher"
net = { arch = "resnet18" }

[teacher.train]
epochs = 1
batch_size = 4
optimizer = { kind = "sgd", momentum = 0.9, weight_decay = 1e-4, nesterov = false }
lr = { lr = 0.01, schedule = { kind = "constant" } }

[[students]]
name = "resnet18"
net = { arch = "resnet18" }

[students.train]
epochs = 2
batch_size = 4
optimizer = { kind = "sgd", momentum = 0.9, weight_decay = 1e-4, nesterov = false }
lr = { lr = 0.01, schedule = { kind = "constant" } }

[[rows]]
label = "no KD"
student = "resnet18"
method = { kind = "none" }

[[rows]]
label = "KD"
student = "resnet18"
method = { kind = "kd", tau = 1.0, ce_weight = 0.5, kd_weight = 0.5 }
"#;

#[test]
fn a_tiny_imagefolder_table_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let out_dir = dir.path().join("run");
    let out = kd(
        &[
            "reproduce",
            "imagenet",
            "--config",
            cfg.to_str().unwrap(),
            "--device",
            "cpu",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("12 train / 6 val images, 3 classes"), "{stderr}");
    let results = json(&out_dir.join("results.json"));
    let rows = results["rows"].as_array().unwrap();
    let labels: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(labels, ["teacher", "no KD", "KD"]);
    for r in rows {
        let v = r["mean"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&v), "{r}");
    }
    assert!(out_dir.join("config.toml").is_file());

    // A tree whose val/ lists other classes than train/ is refused, naming the folder.
    let data = dir.path().join("broken");
    std::fs::create_dir_all(data.join("train/a")).unwrap();
    std::fs::create_dir_all(data.join("val/b")).unwrap();
    let img = image::RgbImage::from_pixel(20, 20, image::Rgb([10, 20, 30]));
    img.save(data.join("train/a/x.png")).unwrap();
    img.save(data.join("val/b/y.png")).unwrap();
    std::fs::create_dir_all(data.join("train/c")).unwrap();
    let out = kd(
        &[
            "reproduce",
            "imagenet",
            "--config",
            cfg.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--device",
            "cpu",
            "--out",
            dir.path().join("run2").to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_clean_error(&out, &["broken", "train/ has 2 classes and val/ has 1"]);
}
