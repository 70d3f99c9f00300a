//! `kd eval` and `kd convert` on PyTorch checkpoints: the predictions PyTorch makes with the
//! references' preprocessing (fixtures from `scripts/make_torch_fixtures.py`), the CSV, the
//! PyTorch-named round trip, and clean failures on bad input.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_clean_error, kd};
use kd_core::io::weights::{self, ReadOptions};
use tch::Kind;

fn here(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn ckpt(name: &str) -> String {
    here(&format!("../kd-classify/tests/fixtures/torch/{name}.pt.gz"))
        .display()
        .to_string()
}

/// `kd eval --arch ARCH --weights WEIGHTS --data DATA`, then `more`.
fn eval_args<'a>(arch: &'a str, weights: &'a Path, data: &'a Path, more: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "eval",
        "--arch",
        arch,
        "--weights",
        weights.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ];
    a.extend_from_slice(more);
    a
}

fn run_ok(args: &[&str], cache: &Path) -> String {
    let out = kd(args, cache);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kd {args:?} failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `(sample, label, prediction)` lines of a predictions CSV, after checking the header.
fn csv(path: &Path) -> Vec<(String, i64, i64)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("sample,label,prediction"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), f[1].parse().unwrap(), f[2].parse().unwrap())
        })
        .collect()
}

fn top1(stdout: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("top1 = "))
        .expect("a top1 line");
    line["top1 = ".len()..].parse().unwrap()
}

#[test]
fn cifar_eval_predicts_what_pytorch_predicts() {
    let dir = tempfile::tempdir().unwrap();
    let pred = dir.path().join("pred.csv");
    let data = here("tests/fixtures/eval/cifar100");
    let stdout = run_ok(
        &[
            "eval",
            "--arch",
            "resnet8x4",
            "--weights",
            &ckpt("repdistiller_resnet8x4"),
            "--data",
            data.to_str().unwrap(),
            "--predictions",
            pred.to_str().unwrap(),
            "--device",
            "cpu",
        ],
        dir.path(),
    );
    let want = csv(&here("tests/fixtures/eval/cifar100_expected.csv"));
    assert_eq!(csv(&pred), want);
    let correct = want.iter().filter(|(_, l, p)| l == p).count();
    let expected = 100.0 * correct as f64 / want.len() as f64;
    assert!((top1(&stdout) - expected).abs() < 0.006, "{stdout}");
    assert!(stdout.contains("top5 = "), "{stdout}");
}

#[test]
fn imagefolder_eval_names_samples_by_relative_path() {
    let dir = tempfile::tempdir().unwrap();
    let pred = dir.path().join("pred.csv");
    let data = here("tests/fixtures/eval/folder");
    run_ok(
        &[
            "eval",
            "--arch",
            "resnet18",
            "--weights",
            &ckpt("torchvision_resnet18"),
            "--data",
            data.to_str().unwrap(),
            "--predictions",
            pred.to_str().unwrap(),
            "--batch-size",
            "4",
            "--device",
            "cpu",
        ],
        dir.path(),
    );
    assert_eq!(csv(&pred), csv(&here("tests/fixtures/eval/folder_expected.csv")));
}

#[test]
fn eval_refuses_bad_input_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = here("tests/fixtures/eval/cifar100");
    let d = data.to_str().unwrap();
    // A checkpoint of another architecture.
    let out = kd(
        &[
            "eval",
            "--arch",
            "resnet32x4",
            "--weights",
            &ckpt("repdistiller_resnet8x4"),
            "--data",
            d,
        ],
        dir.path(),
    );
    assert_clean_error(&out, &["repdistiller_resnet8x4.pt.gz", "missing from the file"]);
    // A file that is not weights at all.
    let junk = dir.path().join("junk.pth");
    std::fs::write(&junk, b"definitely not a checkpoint").unwrap();
    let out = kd(
        &[
            "eval",
            "--arch",
            "resnet8x4",
            "--weights",
            junk.to_str().unwrap(),
            "--data",
            d,
        ],
        dir.path(),
    );
    assert_clean_error(&out, &["junk.pth", "not a torch.save file"]);
    // A truncated one.
    let bytes = std::fs::read(here("../kd-core/tests/fixtures/torch/nested_zip.pt")).unwrap();
    let cut = dir.path().join("cut.pt");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = kd(
        &[
            "eval",
            "--arch",
            "resnet8x4",
            "--weights",
            cut.to_str().unwrap(),
            "--data",
            d,
        ],
        dir.path(),
    );
    assert_clean_error(&out, &["cut.pt"]);
    // A wrong --weights-key names the keys that are there.
    let out = kd(
        &[
            "eval",
            "--arch",
            "resnet8x4",
            "--weights",
            &ckpt("repdistiller_resnet8x4"),
            "--weights-key",
            "state_dict",
            "--data",
            d,
        ],
        dir.path(),
    );
    assert_clean_error(&out, &["\"state_dict\"", "epoch", "model", "accuracy"]);
    let out = kd(
        &[
            "eval",
            "--arch",
            "resnet9000",
            "--weights",
            &ckpt("repdistiller_resnet8x4"),
            "--data",
            d,
        ],
        dir.path(),
    );
    assert_clean_error(&out, &["resnet9000", "resnet8x4", "pspnet_r18", "fcos_r50"]);
}

#[test]
fn convert_to_pytorch_names_round_trips_the_state_dict() {
    let dir = tempfile::tempdir().unwrap();
    for (name, arch) in [
        ("torchvision_resnet18", "resnet18"),
        ("repdistiller_wrn_16_2", "wrn_16_2"),
    ] {
        let kd_out = dir.path().join(format!("{name}.kd.safetensors"));
        let pt_out = dir.path().join(format!("{name}.pytorch.safetensors"));
        run_ok(
            &[
                "convert",
                &ckpt(name),
                "--arch",
                arch,
                "--to",
                kd_out.to_str().unwrap(),
                "--naming",
                "kd",
            ],
            dir.path(),
        );
        // Ours back to PyTorch's names: the original state dict, key for key, value for value.
        run_ok(
            &[
                "convert",
                kd_out.to_str().unwrap(),
                "--arch",
                arch,
                "--to",
                pt_out.to_str().unwrap(),
            ],
            dir.path(),
        );
        let original = weights::read(Path::new(&ckpt(name)), &ReadOptions::default()).unwrap();
        let back = weights::read(&pt_out, &ReadOptions::default()).unwrap();
        let mut a: Vec<&str> = original.tensors.iter().map(|(k, _)| k.as_str()).collect();
        let mut b: Vec<&str> = back.tensors.iter().map(|(k, _)| k.as_str()).collect();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b, "{name}: key sets differ");
        for (k, t) in &back.tensors {
            if !k.ends_with("num_batches_tracked") {
                let o = original.get(k).unwrap().to_kind(Kind::Float);
                assert!(o.equal(&t.to_kind(Kind::Float)), "{name}: {k} changed");
            }
        }
        let kd_names = weights::read(&kd_out, &ReadOptions::default()).unwrap();
        assert!(kd_names
            .tensors
            .iter()
            .all(|(k, _)| !k.ends_with("num_batches_tracked")));
    }
    let out = kd(
        &[
            "convert",
            &ckpt("torchvision_resnet18"),
            "--arch",
            "resnet18",
            "--to",
            "x.pt",
        ],
        dir.path(),
    );
    assert_clean_error(&out, &["x.pt", ".safetensors"]);
}

#[test]
fn segmentor_and_detector_eval_print_their_metric() {
    let dir = tempfile::tempdir().unwrap();
    // MMSeg's PSPNet-R18-d8 checkpoint on a generated Cityscapes-format tree.
    let city = dir.path().join("city");
    let synth = kd_seg::data::SynthConfig {
        width: 64,
        height: 32,
        train: 1,
        val: 2,
        seed: 3,
    };
    kd_seg::data::generate_synthetic_cityscapes(&city, &synth).unwrap();
    let psp = here("../kd-seg/tests/fixtures/torch/mmseg_psp_r18_d8.pt.gz");
    let stdout = run_ok(
        &eval_args("pspnet_r18", &psp, &city, &["--device", "cpu"]),
        dir.path(),
    );
    assert!(
        stdout.contains("mIoU = ") && stdout.contains("road") && stdout.contains("bicycle"),
        "{stdout}"
    );
    // A detector's weights on a generated COCO tree.
    let coco = dir.path().join("coco");
    let synth = kd_det::data::DetSynthConfig {
        train: 1,
        val: 1,
        classes: 2,
        ..Default::default()
    };
    kd_det::data::generate_synthetic_coco(&coco, &synth).unwrap();
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _net = kd_det::models::build(&vs.root(), &kd_det::models::DetectorConfig::fcos("r18", 2)).unwrap();
    let w = dir.path().join("fcos_r18.safetensors");
    kd_core::io::checkpoint::save(&w, &kd_core::distill::sorted_vars(&vs), &serde_json::json!({})).unwrap();
    let stdout = run_ok(
        &eval_args("fcos_r18", &w, &coco, &["--device", "cpu"]),
        dir.path(),
    );
    assert!(
        stdout.contains("box AP = ") && stdout.contains("Average Precision"),
        "{stdout}"
    );
    // The detector's class count comes from the annotations: weights for 80 classes do not fit.
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _net = kd_det::models::build(&vs.root(), &kd_det::models::DetectorConfig::fcos("r18", 80)).unwrap();
    kd_core::io::checkpoint::save(&w, &kd_core::distill::sorted_vars(&vs), &serde_json::json!({})).unwrap();
    let out = kd(&eval_args("fcos_r18", &w, &coco, &[]), dir.path());
    assert_clean_error(&out, &["fcos_r18.safetensors", "bbox_head.conv_cls.weight"]);
}
