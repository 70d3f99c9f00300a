//! PyTorch checkpoints of torchvision's and RepDistiller's own module definitions (written by
//! `scripts/make_torch_fixtures.py`) load into the zoo and give PyTorch's logits.

use std::path::PathBuf;

use kd_classify::models::build;
use kd_core::distill::{sorted_vars, Teacher};
use kd_core::io::weights::{self, Import, PrefixMap, ReadOptions};
use kd_core::models::ModelSpec;
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torch")
        .join(name)
}

/// The gzipped checkpoint (read through the compression like any other file).
fn checkpoint(name: &str) -> PathBuf {
    fixture(&format!("{name}.pt.gz"))
}

fn reference(name: &str) -> (Tensor, Tensor, i64) {
    let w = weights::read(&fixture(&format!("{name}.out.pt")), &ReadOptions::default()).unwrap();
    let keys = w.get("keys").unwrap().int64_value(&[0]);
    (
        w.get("x").unwrap().shallow_clone(),
        w.get("logits").unwrap().shallow_clone(),
        keys,
    )
}

fn max_rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let scale = b.abs().max().double_value(&[]).max(1e-12);
    (a - b).abs().max().double_value(&[]) / scale
}

/// Loads fixture `name` into zoo model `arch` and checks logits and the PyTorch-named export.
fn check(name: &str, arch: &str, classes: i64, key: Option<&str>) {
    let path = checkpoint(name);
    let spec = ModelSpec {
        in_channels: 3,
        num_classes: classes,
    };
    let (teacher, summary) = Teacher::load_with(
        |root| build(arch, root, spec),
        &path,
        Device::Cpu,
        &Import::default(),
    )
    .unwrap();
    assert_eq!(summary.key.as_deref(), key, "{name}");
    assert!(
        summary.report.is_complete(),
        "{name}: {}",
        summary.report.describe(10)
    );
    let (x, want, keys) = reference(name);
    let got = teacher.forward(&x).logits;
    assert_eq!(got.size(), want.size());
    let err = max_rel_err(&got, &want);
    assert!(
        err <= 1e-5,
        "{name}: logits differ from PyTorch's by {err:e} (relative to max |logit|)"
    );

    // Exported with PyTorch names, the weights are the file's state dict again, key for key.
    let vars = sorted_vars(teacher.var_store());
    let exported = weights::to_file_names(&vars, &PrefixMap::default());
    assert_eq!(exported.len() as i64, keys, "{name}: exported key count");
    let original = weights::read(&path, &ReadOptions::default()).unwrap();
    for (k, t) in &exported {
        let o = original
            .get(k)
            .unwrap_or_else(|| panic!("{name}: exported {k} is not in the original"));
        if !k.ends_with("num_batches_tracked") {
            assert!(
                o.to_kind(Kind::Float).equal(&t.to_kind(Kind::Float)),
                "{name}: {k} changed"
            );
        }
    }
}

#[test]
fn torchvision_resnet18_fp16_zip() {
    check("torchvision_resnet18", "resnet18", 10, None);
}

#[test]
fn torchvision_resnet50_zip() {
    check("torchvision_resnet50", "resnet50", 10, None);
}

#[test]
fn repdistiller_resnet8x4_legacy_under_model() {
    check("repdistiller_resnet8x4", "resnet8x4", 100, Some("model"));
}

#[test]
fn repdistiller_wrn_dataparallel_zip() {
    check("repdistiller_wrn_16_2", "wrn_16_2", 100, Some("model"));
}

#[test]
fn another_architecture_is_refused_with_the_keys_and_shapes() {
    let path = checkpoint("torchvision_resnet18");
    let spec = ModelSpec {
        in_channels: 3,
        num_classes: 10,
    };
    let load = |arch: &str| {
        Teacher::load_with(
            |root| build(arch, root, spec),
            &path,
            Device::Cpu,
            &Import::default(),
        )
        .map(|_| ())
        .unwrap_err()
        .to_string()
    };
    let err = load("resnet34");
    assert!(
        err.contains("torchvision_resnet18.pt.gz")
            && err.contains("missing from the file")
            && err.contains("layer1.2.conv1.weight [64, 64, 3, 3]"),
        "{err}"
    );
    let err = load("resnet50");
    assert!(
        err.contains("shape mismatches")
            && err.contains("layer1.0.conv1.weight: model [64, 64, 1, 1], file [64, 64, 3, 3]")
            && err.contains("layer1.0.conv3.weight"),
        "{err}"
    );
    let err = load("resnet8");
    assert!(
        err.contains("conv1.weight: model [16, 3, 3, 3], file [64, 3, 7, 7]")
            && err.contains("in the file but not in the model"),
        "{err}"
    );
    // A partial load takes what matches and says what it skipped.
    let imp = Import {
        partial: true,
        ..Default::default()
    };
    let (_, summary) =
        Teacher::load_with(|root| build("resnet34", root, spec), &path, Device::Cpu, &imp).unwrap();
    assert!(summary.report.loaded > 0 && !summary.report.missing.is_empty());
    assert!(summary.to_string().contains("missing from the file"));
}

#[test]
fn imagenet_evaluation_transform_matches_torchvision() {
    // torchvision's Resize(256) + CenterCrop(224) + ToTensor on PIL images, against ours.
    let expected = weights::read(&fixture("imagenet_eval_inputs.pt.gz"), &ReadOptions::default()).unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kd-repro/tests/fixtures/eval/folder/val");
    assert_eq!(expected.tensors.len(), 6);
    for (rel, want) in &expected.tensors {
        let bytes = kd_classify::data::decode_resize_center_crop(&root.join(rel), 256, 224).unwrap();
        let got = Tensor::from_slice(&bytes).view([3, 224, 224]);
        let diff = (got.to_kind(Kind::Int) - want.to_kind(Kind::Int)).abs();
        let (max, mean) = (
            diff.max().int64_value(&[]),
            diff.to_kind(Kind::Float).mean(Kind::Float).double_value(&[]),
        );
        if rel.ends_with(".png") {
            // Lossless input: resize and crop are Pillow's, byte for byte.
            assert_eq!(
                max, 0,
                "{rel}: differs from torchvision's by up to {max} grey levels"
            );
        } else {
            // JPEG: the decoders differ (image's vs libjpeg-turbo's chroma upsampling and IDCT)
            // by a grey level or two, never more than a few.
            assert!(
                max <= 6 && mean <= 1.0,
                "{rel}: up to {max} grey levels off (mean {mean:.3})"
            );
        }
    }
}
