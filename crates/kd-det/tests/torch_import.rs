//! An MMDet FCOS checkpoint of MMDet's own module definitions (`ResNet`, `FPN`, `FCOSHead`;
//! written by `scripts/make_torch_fixtures.py`, DataParallel-prefixed under `state_dict`) loads
//! into our detector and gives MMDet's head outputs.

use std::path::PathBuf;

use kd_core::distill::{sorted_vars, Teacher};
use kd_core::io::weights::{self, Import, PrefixMap, ReadOptions};
use kd_core::models::Model;
use kd_det::models::{build, DetectorConfig};
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

#[test]
fn mmdet_fcos_r18_fpn_gn_head() {
    let cfg = DetectorConfig::fcos("r18", 8)
        .with_fpn_channels(64)
        .with_stacked_convs(2);
    let path = fixture("mmdet_fcos_r18_fpn.pt.gz");
    let build_net = |root: &tch::nn::Path<'_>| build(root, &cfg).map(|n| Box::new(n) as Box<dyn Model>);
    let (teacher, summary) = Teacher::load_with(build_net, &path, Device::Cpu, &Import::default()).unwrap();
    assert_eq!(summary.key.as_deref(), Some("state_dict"));
    assert!(summary.report.is_complete(), "{}", summary.report.describe(10));
    let r = weights::read(&fixture("mmdet_fcos_r18_fpn.out.pt"), &ReadOptions::default()).unwrap();
    let out = teacher.forward(r.get("x").unwrap());
    let head = |n: &str| {
        out.heads
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, t)| t.shallow_clone())
            .unwrap()
    };
    for (what, got, want) in [
        (
            "classification",
            out.logits.shallow_clone(),
            r.get("cls").unwrap(),
        ),
        ("boxes", head("box"), r.get("box").unwrap()),
        ("centerness", head("centerness"), r.get("centerness").unwrap()),
    ] {
        assert_eq!(got.size(), want.size(), "{what}");
        let err = max_rel_err(&got, want);
        assert!(err <= 1e-5, "{what} differ from MMDet's by {err:e}");
    }
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

/// Loads torchvision's ResNet-18 into `vs` as MMDet's `torchvision://resnet18` start does (the
/// classifier's keys under `backbone.`, partial) and checks that it fills the whole backbone,
/// leaves out only `fc` and touches nothing outside `backbone.`. Returns the unfilled keys.
fn load_torchvision_backbone(vs: &tch::nn::VarStore) -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../kd-classify/tests/fixtures/torch/torchvision_resnet18.pt.gz");
    let imp = Import {
        map: PrefixMap {
            var_prefix: "backbone.".into(),
            ..Default::default()
        },
        partial: true,
        ..Default::default()
    };
    let vars = sorted_vars(vs);
    let s = weights::import(&path, &vars, &imp).unwrap();
    let backbone = vars.iter().filter(|(k, _)| k.starts_with("backbone.")).count();
    assert!(backbone > 0);
    assert_eq!(s.report.loaded, backbone);
    let unexpected: Vec<&str> = s.report.unexpected.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(unexpected, ["fc.weight", "fc.bias"]);
    assert!(s.report.mismatched.is_empty());
    let rest: Vec<String> = s.report.missing.iter().map(|(k, _)| k.clone()).collect();
    assert!(rest.iter().all(|k| !k.starts_with("backbone.")), "{rest:?}");
    rest
}

#[test]
fn a_torchvision_resnet_loads_as_the_detector_backbone() {
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let _net = build(&vs.root(), &DetectorConfig::fcos("r18", 8)).unwrap();
    load_torchvision_backbone(&vs);
}

#[test]
fn a_torchvision_resnet_loads_as_the_faster_rcnn_backbone() {
    // The two-stage detector keeps the same backbone scope, so MMDet's `torchvision://` start
    // fills all of it and nothing in the neck, the RPN or the box head.
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let cfg = kd_det::two_stage::FasterRcnnConfig::with_backbone("r18", 8);
    let _net = kd_det::two_stage::build(&vs.root(), &cfg).unwrap();
    let rest = load_torchvision_backbone(&vs);
    assert!(
        rest.iter().any(|k| k.starts_with("roi_head.bbox_head.")),
        "{rest:?}"
    );
}
