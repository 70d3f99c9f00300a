//! Weights from outside a run in a table: a PyTorch teacher file (`--teacher`), pretrained
//! starts (`init`, `--init`), and the stop when a given teacher scores near chance.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use kd_core::models::ModelSpec;

fn here(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn experiment(teacher: &str, student: &str, init: &str, method: &str) -> String {
    format!(
        r#"table = "cifar100"
scale = "quick"

[data]
pad_crop = 0
hflip = false

[teacher]
arch = "{teacher}"
shared = true

[teacher.train]
epochs = 1
batch_size = 8
max_steps_per_epoch = 1
optimizer = {{ kind = "sgd", momentum = 0.9, weight_decay = 5e-4 }}
lr = {{ lr = 0.01, schedule = {{ kind = "constant" }} }}

[student]
arch = "{student}"
{init}

[student.train]
epochs = 1
batch_size = 8
max_steps_per_epoch = 2
optimizer = {{ kind = "sgd", momentum = 0.9, weight_decay = 5e-4 }}
lr = {{ lr = 0.01, schedule = {{ kind = "constant" }} }}

[[rows]]
label = "student"
method = {{ kind = "{method}"{extra} }}
"#,
        extra = if method == "kd" {
            ", tau = 4.0, ce_weight = 0.1, kd_weight = 0.9"
        } else {
            ""
        }
    )
}

/// A CIFAR-100 binary folder whose train and test files are the eval fixture's 24 images.
fn cifar100(dir: &Path) -> PathBuf {
    let data = dir.join("cifar100");
    std::fs::create_dir_all(&data).unwrap();
    let test = here("tests/fixtures/eval/cifar100/test.bin");
    std::fs::copy(&test, data.join("train.bin")).unwrap();
    std::fs::copy(&test, data.join("test.bin")).unwrap();
    data
}

#[test]
fn a_pytorch_teacher_that_scores_near_chance_stops_the_table() {
    // RepDistiller's resnet8x4 with the fixture's synthetic weights: it loads completely (a
    // legacy torch.save file, weights under "model") but knows nothing about these images.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    std::fs::write(&cfg, experiment("resnet8x4", "resnet8", "", "kd")).unwrap();
    let data = cifar100(dir.path());
    let teacher = here("../kd-classify/tests/fixtures/torch/repdistiller_resnet8x4.pt.gz");
    let out = kd(
        &[
            "reproduce",
            "cifar100",
            "--config",
            cfg.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--teacher",
            teacher.to_str().unwrap(),
            "--seeds",
            "1",
            "--device",
            "cpu",
            "--out",
            dir.path().join("run").to_str().unwrap(),
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("torch.save, legacy, under \"model\", "),
        "{stderr}"
    );
    assert!(
        stderr.contains("52 tensors") && stderr.contains("10 num_batches_tracked"),
        "the load is reported: {stderr}"
    );
    assert_clean_error(
        &out,
        &[
            "repdistiller_resnet8x4.pt.gz",
            "near chance",
            "1.00 for 100 classes",
        ],
    );
}

#[test]
fn students_start_from_init_weights_and_a_file_that_fits_nothing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Pretrained resnet8 weights for the embedded data (1 channel, 10 classes).
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let spec = ModelSpec {
        in_channels: 1,
        num_classes: 10,
    };
    let _net = kd_classify::models::build("resnet8", &vs.root(), spec).unwrap();
    let init = dir.path().join("resnet8-pretrained.safetensors");
    let vars = kd_core::distill::sorted_vars(&vs);
    kd_core::io::checkpoint::save(&init, &vars, &serde_json::json!({})).unwrap();

    let cfg = dir.path().join("t.toml");
    let line = format!("init = {:?}", init.display().to_string());
    std::fs::write(&cfg, experiment("resnet8", "resnet8", &line, "none")).unwrap();
    let run = dir.path().join("run");
    let out = kd(
        &[
            "reproduce",
            "cifar100",
            "--config",
            cfg.to_str().unwrap(),
            "--seeds",
            "1",
            "--device",
            "cpu",
            "--out",
            run.to_str().unwrap(),
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let want = format!("student: starts from {}", init.display());
    assert!(stderr.contains(&want), "{stderr}");
    assert!(stderr.contains(&format!("{} tensors", vars.len())), "{stderr}");
    assert!(std::fs::read_to_string(run.join("config.toml"))
        .unwrap()
        .contains("resnet8-pretrained.safetensors"));

    // --init overrides the config; torchvision's ResNet-18 fills nothing of a CIFAR resnet8.
    let tv = here("../kd-classify/tests/fixtures/torch/torchvision_resnet18.pt.gz");
    let out = kd(
        &[
            "reproduce",
            "cifar100",
            "--config",
            cfg.to_str().unwrap(),
            "--seeds",
            "1",
            "--device",
            "cpu",
            "--out",
            dir.path().join("run2").to_str().unwrap(),
            "--init",
            tv.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_clean_error(
        &out,
        &[
            "torchvision_resnet18.pt.gz",
            "fills only 1 of the",
            "not pretrained weights for this network",
        ],
    );
    // A missing init file is named before anything trains.
    std::fs::write(
        &cfg,
        experiment("resnet8", "resnet8", "init = \"nope/missing.pth\"", "none"),
    )
    .unwrap();
    let out = kd(
        &[
            "reproduce",
            "cifar100",
            "--config",
            cfg.to_str().unwrap(),
            "--seeds",
            "1",
            "--device",
            "cpu",
            "--out",
            dir.path().join("run3").to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_clean_error(&out, &["nope/missing.pth", "does not exist"]);
}
