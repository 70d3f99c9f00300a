//! MMSeg checkpoints of MMSeg's own module definitions (`ResNetV1c`, `PSPHead`, `ASPPHead`,
//! `FCNHead`; written by `scripts/make_torch_fixtures.py`) load into our segmentation nets and
//! give MMSeg's logits.

use std::path::PathBuf;

use kd_core::distill::{sorted_vars, Teacher};
use kd_core::io::weights::{self, Import, PrefixMap, ReadOptions};
use kd_core::models::Model;
use kd_seg::models::{build, SegNetConfig};
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torch")
        .join(name)
}

fn max_rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let scale = b.abs().max().double_value(&[]).max(1e-12);
    (a - b).abs().max().double_value(&[]) / scale
}

fn check(name: &str, head: &str) {
    let cfg = SegNetConfig {
        backbone: "r18".into(),
        width: 64,
        head: head.into(),
        head_channels: 128,
        aux_channels: 64,
        aspp_dilations: vec![1, 2, 3, 4],
        num_classes: 19,
        dropout: 0.1,
        in_channels: 3,
    };
    let path = fixture(&format!("{name}.pt.gz"));
    let build_net = |root: &tch::nn::Path<'_>| build(root, &cfg).map(|n| Box::new(n) as Box<dyn Model>);
    let (teacher, summary) = Teacher::load_with(build_net, &path, Device::Cpu, &Import::default()).unwrap();
    assert_eq!(summary.key.as_deref(), Some("state_dict"));
    assert!(summary.report.is_complete(), "{}", summary.report.describe(10));
    let r = weights::read(&fixture(&format!("{name}.out.pt")), &ReadOptions::default()).unwrap();
    let out = teacher.forward(r.get("x").unwrap());
    for (what, got, want) in [
        ("logits", &out.logits, r.get("logits").unwrap()),
        (
            "aux logits",
            out.aux_logits.as_ref().unwrap(),
            r.get("aux_logits").unwrap(),
        ),
    ] {
        assert_eq!(got.size(), want.size(), "{name} {what}");
        let err = max_rel_err(got, want);
        assert!(err <= 1e-5, "{name}: {what} differ from MMSeg's by {err:e}");
    }
    // Exported with MMSeg's names, the state dict is the file's again.
    let exported = weights::to_file_names(&sorted_vars(teacher.var_store()), &PrefixMap::default());
    assert_eq!(exported.len() as i64, r.get("keys").unwrap().int64_value(&[0]));
    let original = weights::read(&path, &ReadOptions::default()).unwrap();
    for (k, t) in exported
        .iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
    {
        assert!(original.get(k).unwrap().to_kind(Kind::Float).equal(t), "{k}");
    }
}

#[test]
fn mmseg_pspnet_r18_d8_with_fcn_aux() {
    check("mmseg_psp_r18_d8", "psp");
}

#[test]
fn mmseg_deeplabv3_r18_d8_with_fcn_aux() {
    check("mmseg_aspp_r18_d8", "aspp");
}

#[test]
fn mmseg_fcn_r18_d8_with_fcn_aux() {
    check("mmseg_fcn_r18_d8", "fcn");
}

#[test]
fn an_imagenet_backbone_loads_partially_into_the_segmentor() {
    // The backbone of an MMSeg checkpoint, as an ImageNet `resnet18_v1c` file holds it
    // (no `backbone.` prefix, no heads), fills exactly the backbone of a PSPNet.
    let w = weights::read(&fixture("mmseg_psp_r18_d8.pt.gz"), &ReadOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backbone: Vec<(String, Tensor)> = w
        .tensors
        .iter()
        .filter_map(|(k, t)| {
            k.strip_prefix("backbone.")
                .map(|k| (k.to_string(), t.shallow_clone()))
        })
        .collect();
    let path = dir.path().join("resnet18_v1c.safetensors");
    kd_core::io::checkpoint::save(&path, &backbone, &serde_json::json!({})).unwrap();
    let cfg = SegNetConfig {
        backbone: "r18".into(),
        width: 64,
        head: "psp".into(),
        head_channels: 128,
        aux_channels: 64,
        aspp_dilations: vec![1, 12, 24, 36],
        num_classes: 19,
        dropout: 0.1,
        in_channels: 3,
    };
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let _net = build(&vs.root(), &cfg).unwrap();
    let imp = Import {
        map: PrefixMap {
            var_prefix: "backbone.".into(),
            ..Default::default()
        },
        partial: true,
        ..Default::default()
    };
    let s = weights::import(&path, &sorted_vars(&vs), &imp).unwrap();
    let bn_buffers = backbone
        .iter()
        .filter(|(k, _)| k.ends_with("num_batches_tracked"))
        .count();
    assert_eq!(s.report.loaded, backbone.len() - bn_buffers);
    assert!(s.report.unexpected.is_empty() && s.report.mismatched.is_empty());
    assert!(s.report.missing.iter().all(|(k, _)| !k.starts_with("backbone.")));
}
