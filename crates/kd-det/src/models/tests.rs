//! Tests of the FCOS detector: output layout for non-square inputs, taps, the FPN's extra
//! levels, box scaling, the classification prior, configuration and input errors,
//! `init_student` and checkpoint round-trips.

use tch::nn;
use tch::{Device, Kind, Tensor};

use super::*;
use kd_core::distill::Teacher;
use kd_core::io::checkpoint;
use kd_core::models::Model;
use kd_vision::resnet_v1c::{Layout, OutputStride, ResNetV1c};

/// Width 8, FPN 16 channels, 2 convs per tower, K = 3, levels P3–P7.
fn tiny(backbone: &str) -> DetectorConfig {
    DetectorConfig::fcos(backbone, 3)
        .with_width(8)
        .with_fpn_channels(16)
        .with_stacked_convs(2)
}

fn make(cfg: &DetectorConfig) -> (nn::VarStore, Detector) {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = build(&vs.root(), cfg).unwrap();
    (vs, net)
}

fn var(vs: &nn::VarStore, name: &str) -> Tensor {
    vs.variables()
        .remove(name)
        .unwrap_or_else(|| panic!("no variable {name}"))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn input(h: i64, w: i64) -> Tensor {
    Tensor::randn([2, 3, h, w], (Kind::Float, Device::Cpu))
}

#[test]
fn non_square_input_gives_the_contract_shapes() {
    let (_vs, net) = make(&tiny("r18"));
    let x = input(96, 64);
    net.check_input(&x).unwrap();
    let out = tch::no_grad(|| net.forward_t(&x, false));
    // (H, W) per level for 96 × 64: P3 12×8, P4 6×4, P5 3×2, P6 2×1, P7 1×1.
    let sizes = [(12, 8), (6, 4), (3, 2), (2, 1), (1, 1)];
    let names: Vec<&str> = out.features.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["p3", "p4", "p5", "p6", "p7"]);
    for ((_, f), (h, w)) in out.features.iter().zip(sizes) {
        assert_eq!(f.size(), [2, 16, h, w]);
    }
    let a: i64 = sizes.iter().map(|(h, w)| h * w).sum();
    assert_eq!(a, 129);
    assert_eq!(out.logits.size(), [2, a, 3]);
    assert_eq!(out.head("box").unwrap().size(), [2, a, 4]);
    assert_eq!(out.head("centerness").unwrap().size(), [2, a, 1]);
    let head_names: Vec<&str> = out.heads.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(head_names, ["box", "centerness"]);
    assert!(out.aux_logits.is_none() && out.pooled.is_none());
    assert!(bool::try_from(out.logits.isfinite().all()).unwrap());
}

#[test]
fn taps_name_every_level_with_its_stride_and_channels() {
    let (_vs, net) = make(&tiny("r18"));
    let taps: Vec<(&str, i64, i64)> = net
        .taps()
        .iter()
        .map(|t| (t.name.as_str(), t.channels, t.stride))
        .collect();
    assert_eq!(
        taps,
        [
            ("p3", 16, 8),
            ("p4", 16, 16),
            ("p5", 16, 32),
            ("p6", 16, 64),
            ("p7", 16, 128)
        ]
    );
    let (_vs, net) = make(&tiny("r18").with_levels(3, 5));
    let names: Vec<&str> = net.taps().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["p3", "p4", "p5"]);
    let out = tch::no_grad(|| net.forward_t(&input(64, 96), false));
    assert_eq!(out.logits.size(), [2, 8 * 12 + 4 * 6 + 2 * 3, 3]);
    let (_vs, net) = make(&tiny("r50").with_levels(2, 6));
    let strides: Vec<i64> = net.taps().iter().map(|t| t.stride).collect();
    assert_eq!(strides, [4, 8, 16, 32, 64]);
    let out = tch::no_grad(|| net.forward_t(&input(64, 64), false));
    assert_eq!(out.feature("p2").unwrap().size(), [2, 16, 16, 16]);
    assert_eq!(out.feature("p6").unwrap().size(), [2, 16, 1, 1]);
}

#[test]
fn extra_levels_are_convolutions_of_the_p5_output_and_features_are_pre_activation() {
    let (vs, net) = make(&tiny("r18"));
    let out = tch::no_grad(|| net.forward_t(&input(64, 96), false));
    let conv = |x: &Tensor, i: usize| {
        let w = var(&vs, &format!("neck.fpn_convs.{i}.conv.weight"));
        let b = var(&vs, &format!("neck.fpn_convs.{i}.conv.bias"));
        x.conv2d(&w, Some(&b), [2, 2], [1, 1], [1, 1], 1)
    };
    let p5 = out.feature("p5").unwrap();
    let p6 = out.feature("p6").unwrap();
    let p7 = out.feature("p7").unwrap();
    // P6 = fpn_convs.3(P5) without an activation, P7 = fpn_convs.4(relu(P6)).
    assert!(max_abs_diff(p6, &conv(p5, 3)) < 1e-6);
    assert!(max_abs_diff(p7, &conv(&p6.relu(), 4)) < 1e-6);
    assert!(max_abs_diff(p7, &conv(p6, 4)) > 1e-6, "P7 must see relu(P6)");
    for (name, f) in &out.features {
        let neg = f.lt(0.0).any();
        assert!(bool::try_from(neg).unwrap(), "{name} has no negative value");
    }
}

#[test]
fn the_anchor_axis_is_levels_in_order_then_row_major_positions() {
    let (_vs, net) = make(&tiny("r18"));
    let out = tch::no_grad(|| net.forward_t(&input(96, 64), false));
    let mut offset = 0;
    for (l, (t, (_, f))) in net.taps().iter().zip(&out.features).enumerate() {
        let lv = tch::no_grad(|| net.head().forward_level(f, l, t.stride));
        let (h, w) = (f.size()[2], f.size()[3]);
        for (i, j) in [(0, 0), (h - 1, 0), (0, w - 1), (h - 1, w - 1)] {
            let a = offset + i * w + j;
            let got = out.logits.get(1).get(a).get(2).double_value(&[]);
            let want = lv.cls.get(1).get(2).get(i).get(j).double_value(&[]);
            assert!((got - want).abs() < 1e-6, "{} cell ({i}, {j})", t.name);
            let got = out.head("box").unwrap().get(1).get(a).get(3);
            let want = lv.boxes.get(1).get(3).get(i).get(j);
            assert!((got.double_value(&[]) - want.double_value(&[])).abs() < 1e-6);
        }
        offset += h * w;
    }
    assert_eq!(offset, out.logits.size()[1]);
}

#[test]
fn box_distances_are_relu_of_scale_times_reg_times_stride() {
    let (vs, net) = make(&tiny("r18"));
    let x = input(64, 64);
    let out = tch::no_grad(|| net.forward_t(&x, false));
    let boxes = out.head("box").unwrap();
    assert!(bool::try_from(boxes.ge(0.0).all()).unwrap());
    assert!(bool::try_from(boxes.gt(0.0).any()).unwrap());

    let mut w = var(&vs, "bbox_head.conv_reg.weight");
    let mut b = var(&vs, "bbox_head.conv_reg.bias");
    tch::no_grad(|| {
        let _ = w.zero_();
        let _ = b.zero_();
    });
    let out = tch::no_grad(|| net.forward_t(&x, false));
    let zero = out.head("box").unwrap().abs().max().double_value(&[]);
    assert_eq!(zero, 0.0, "zero regression gives zero boxes");

    // reg ≡ (1, −1, 0.5, 2) everywhere, scale of P4 set to 3: boxes = relu(s · reg) · stride.
    tch::no_grad(|| {
        b.copy_(&Tensor::from_slice(&[1.0f32, -1.0, 0.5, 2.0]));
        let _ = var(&vs, "bbox_head.scales.1.scale").fill_(3.0);
    });
    let out = tch::no_grad(|| net.forward_t(&x, false));
    let boxes = out.head("box").unwrap();
    // 64 × 64: P3 8×8 (64 points), P4 4×4 (16), P5 2×2, P6 1×1, P7 1×1.
    let p3 = boxes.get(0).get(0);
    let p4 = boxes.get(1).get(64);
    let p7 = boxes.get(0).get(64 + 16 + 4 + 1);
    let v = |t: &Tensor| Vec::<f32>::try_from(t).unwrap();
    assert_eq!(v(&p3), [8.0, 0.0, 4.0, 16.0]);
    assert_eq!(v(&p4), [48.0, 0.0, 24.0, 96.0]);
    assert_eq!(v(&p7), [128.0, 0.0, 64.0, 256.0]);
}

#[test]
fn classification_bias_starts_at_the_focal_prior() {
    let (vs, net) = make(&tiny("r18"));
    let bias = var(&vs, "bbox_head.conv_cls.bias");
    let want = -(99.0f64).ln();
    assert!((bias - want).abs().max().double_value(&[]) < 1e-6);
    let out = tch::no_grad(|| net.forward_t(&input(64, 64), true));
    // Logits are the bias plus N(0, 0.01²)-weighted sums of unit-scale tower features: about
    // 0.1 of spread around −ln 99 for these unseeded weights, so the bounds below are many
    // standard deviations wide, while a missing bias (logits near 0, scores near ½) fails them.
    let logits = &out.logits;
    let mean = logits.mean(Kind::Float).double_value(&[]);
    assert!((mean - want).abs() < 0.25, "mean logit {mean}, want {want}");
    let (lo, hi) = (logits.min().double_value(&[]), logits.max().double_value(&[]));
    assert!(lo > want - 1.5 && hi < want + 1.5, "logits in [{lo}, {hi}]");
    let score = logits.sigmoid().mean(Kind::Float).double_value(&[]);
    assert!((0.007..0.014).contains(&score), "mean score {score}");
}

#[test]
fn group_norm_groups_are_validated_and_defaulted() {
    let err = build(
        &nn::VarStore::new(Device::Cpu).root(),
        &DetectorConfig {
            gn_groups: Some(3),
            ..tiny("r18")
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("gn_groups") && err.contains("16"), "{err}");
    let groups = |c: i64| {
        DetectorConfig::fcos_r50_fpn(80)
            .with_fpn_channels(c)
            .resolved_gn_groups()
    };
    assert_eq!(groups(256), 32);
    assert_eq!(groups(512), 32);
    assert_eq!(groups(64), 8);
    assert_eq!(groups(16), 2);
    assert_eq!(groups(24), 3);
    assert_eq!(groups(4), 1);
    let cfg = DetectorConfig {
        gn_groups: Some(4),
        ..tiny("r18")
    };
    assert_eq!(cfg.resolved_gn_groups(), 4);
    make(&cfg);
}

#[test]
fn bad_configs_name_the_key() {
    let cases = [
        (
            DetectorConfig {
                backbone: "r20".into(),
                ..tiny("r18")
            },
            "backbone",
        ),
        (tiny("r18").with_width(0), "width"),
        (
            DetectorConfig {
                deep_stem: true,
                ..tiny("r18").with_width(7)
            },
            "width",
        ),
        (tiny("r18").with_fpn_channels(0), "fpn_channels"),
        (tiny("r18").with_levels(1, 7), "start_level"),
        (tiny("r18").with_levels(3, 4), "end_level"),
        (tiny("r18").with_levels(3, 8), "end_level"),
        (
            DetectorConfig {
                prior_prob: 1.0,
                ..tiny("r18")
            },
            "prior_prob",
        ),
        (
            DetectorConfig {
                num_classes: 0,
                ..tiny("r18")
            },
            "num_classes",
        ),
        (
            DetectorConfig {
                in_channels: 0,
                ..tiny("r18")
            },
            "in_channels",
        ),
    ];
    for (cfg, key) in cases {
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.starts_with(key), "{key}: {err}");
    }
    let toml_err = toml::from_str::<DetectorConfig>("backbone = \"r18\"\nnum_classes = 3\nfpn = 4\n")
        .unwrap_err()
        .to_string();
    assert!(toml_err.contains("fpn"), "{toml_err}");
    let cfg: DetectorConfig = toml::from_str("backbone = \"r50\"\nnum_classes = 80\n").unwrap();
    assert_eq!(cfg, DetectorConfig::fcos_r50_fpn(80));
}

#[test]
fn inputs_must_be_multiples_of_32() {
    let (_vs, net) = make(&tiny("r18"));
    let err = net.check_input(&input(70, 64)).unwrap_err().to_string();
    assert!(
        err.contains("[2, 3, 70, 64]") && err.contains("multiples of 32"),
        "{err}"
    );
    let err = net.check_input(&input(64, 48)).unwrap_err().to_string();
    assert!(err.contains("[2, 3, 64, 48]"), "{err}");
    let err = net
        .check_input(&Tensor::zeros([2, 1, 64, 64], (Kind::Float, Device::Cpu)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("[2, 1, 64, 64]"), "{err}");
    let err = net
        .check_input(&Tensor::zeros([2, 3, 64, 64], (Kind::Double, Device::Cpu)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("Double"), "{err}");
    assert!(net.classify(&input(64, 64)).is_err());
    let err = net
        .forward_from(0, &input(64, 64), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("forward_from is not supported"), "{err}");
}

#[test]
fn init_student_copies_neck_and_head_and_leaves_the_backbone() {
    // R34 and R18 at the same width have the same stage channels, so neck and head match.
    let (t_vs, _teacher) = make(&tiny("r34"));
    let s_vs = nn::VarStore::new(Device::Cpu);
    let _student = build(&(s_vs.root() / "student"), &tiny("r18")).unwrap();
    let n = copy_neck_and_head(&t_vs, "", &s_vs, "student.").unwrap();
    let expected = t_vs
        .variables()
        .keys()
        .filter(|k| !k.starts_with(BACKBONE_SCOPE))
        .count();
    // Neck: 3 lateral + 5 output convs (weight, bias); head: 2 towers × 2 layers × (conv, gn
    // weight, gn bias), 3 final convs × 2, 5 scales.
    assert_eq!(expected, 16 + 12 + 6 + 5);
    assert_eq!(n, expected);
    for name in [
        "neck.lateral_convs.0.conv.weight",
        "neck.fpn_convs.4.conv.bias",
        "bbox_head.cls_convs.1.gn.weight",
        "bbox_head.conv_cls.weight",
        "bbox_head.conv_centerness.weight",
    ] {
        let d = max_abs_diff(&var(&t_vs, name), &var(&s_vs, &format!("student.{name}")));
        assert_eq!(d, 0.0, "{name}");
    }
    let d = max_abs_diff(
        &var(&t_vs, "backbone.conv1.weight"),
        &var(&s_vs, "student.backbone.conv1.weight"),
    );
    assert!(d > 0.0, "the backbone must not be copied");
}

#[test]
fn init_student_refuses_mismatched_shapes_and_levels_without_copying() {
    let (t_vs, _teacher) = make(&tiny("r18"));
    let (s_vs, _student) = make(&tiny("r18").with_width(16));
    let before = var(&s_vs, "neck.fpn_convs.0.conv.weight").copy();
    let err = copy_neck_and_head(&t_vs, "", &s_vs, "").unwrap_err().to_string();
    assert!(err.contains("neck.lateral_convs.0.conv.weight"), "{err}");
    // C3 has 2w channels: 16 in the teacher, 32 in the student.
    assert!(
        err.contains("[16, 16, 1, 1]") && err.contains("[16, 32, 1, 1]"),
        "{err}"
    );
    let after = var(&s_vs, "neck.fpn_convs.0.conv.weight");
    assert_eq!(max_abs_diff(&before, &after), 0.0, "nothing is copied on error");

    let (s_vs, _student) = make(&tiny("r18").with_levels(3, 5));
    let err = copy_neck_and_head(&t_vs, "", &s_vs, "").unwrap_err().to_string();
    assert!(err.contains("fpn_convs.3") || err.contains("scales.3"), "{err}");
    let (s_vs, _student) = make(&tiny("r18").with_stacked_convs(3));
    let err = copy_neck_and_head(&t_vs, "", &s_vs, "").unwrap_err().to_string();
    assert!(err.contains("convs.2"), "{err}");
    let err = copy_neck_and_head(&t_vs, "teacher.", &s_vs, "")
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"teacher.\""), "{err}");
}

#[test]
fn weights_round_trip_through_a_checkpoint_with_stable_names() {
    let (vs, net) = make(&tiny("r18"));
    let vars = kd_core::distill::sorted_vars(&vs);
    let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    for name in [
        "backbone.conv1.weight",
        "backbone.bn1.running_mean",
        "backbone.layer1.0.conv1.weight",
        "backbone.layer2.0.downsample.0.weight",
        "neck.lateral_convs.2.conv.weight",
        "neck.fpn_convs.4.conv.weight",
        "bbox_head.cls_convs.0.conv.weight",
        "bbox_head.reg_convs.1.gn.bias",
        "bbox_head.conv_reg.bias",
        "bbox_head.scales.4.scale",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    // A few train-mode steps move the BatchNorm statistics away from their initial values.
    let x = input(64, 64);
    tch::no_grad(|| {
        for _ in 0..2 {
            net.forward_t(&x, true);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fcos.safetensors");
    checkpoint::save(&path, &vars, &serde_json::json!({"kind": "teacher"})).unwrap();
    let cfg = tiny("r18");
    let teacher = Teacher::load_built(
        |p| Ok(Box::new(build(p, &cfg)?) as Box<dyn Model>),
        &path,
        Device::Cpu,
    )
    .unwrap();
    let want = tch::no_grad(|| net.forward_t(&x, false));
    let got = teacher.forward(&x);
    assert_eq!(max_abs_diff(&want.logits, &got.logits), 0.0);
    assert_eq!(
        max_abs_diff(want.head("box").unwrap(), got.head("box").unwrap()),
        0.0
    );
}

#[test]
fn os32_backbones_have_strides_4_to_32_and_the_documented_channels() {
    let vs = nn::VarStore::new(Device::Cpu);
    let os32 = Layout {
        output_stride: OutputStride::Os32,
        deep_stem: false,
    };
    let x = Tensor::randn([1, 3, 64, 96], (Kind::Float, Device::Cpu));
    for (name, w, channels, blocks) in [
        ("r18", 8, [8, 16, 32, 64], [2, 2, 2, 2]),
        ("r34", 8, [8, 16, 32, 64], [3, 4, 6, 3]),
        ("r50", 4, [16, 32, 64, 128], [3, 4, 6, 3]),
    ] {
        let net = ResNetV1c::with_layout(&(vs.root() / name), name, w, 3, os32).unwrap();
        assert_eq!(net.strides(), [4, 8, 16, 32]);
        assert_eq!(net.channels(), channels);
        assert_eq!(net.blocks(), blocks);
        let outs = tch::no_grad(|| net.forward_t(&x, false));
        for ((o, s), c) in outs.iter().zip([4, 8, 16, 32]).zip(channels) {
            assert_eq!(o.size(), [1, c, 64 / s, 96 / s], "{name} stride {s}");
        }
    }
    // The deep stem keeps the V1c names in the detection layout.
    let deep = Layout {
        deep_stem: true,
        ..os32
    };
    let net = ResNetV1c::with_layout(&(vs.root() / "deep"), "r18", 8, 3, deep).unwrap();
    assert_eq!(net.strides(), [4, 8, 16, 32]);
    let names = vs.variables();
    assert!(names.contains_key("deep.stem.6.weight"));
    assert!(names.contains_key("r18.conv1.weight") && !names.contains_key("deep.conv1.weight"));
    assert_eq!(var(&vs, "r18.conv1.weight").size(), [8, 3, 7, 7]);
}

#[test]
fn fcos_r50_fpn_has_the_mmdet_parameter_count() {
    // ResNet-50 without its classifier 23,508,032; FPN laterals (512 + 1024 + 2048)·256 + 3·256
    // = 918,272 and five 3×3 output convs 5 · 590,080; head: 8 tower convs + GN 8 · 590,336,
    // conv_cls 256·80·9 + 80, conv_reg 256·4·9 + 4, conv_centerness 256·9 + 1, 5 scales.
    let cfg = DetectorConfig::fcos_r50_fpn(80);
    assert_eq!(cfg.name(), "fcos_r50_fpn");
    let (vs, _net) = make(&cfg);
    let params: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    let want = 23_508_032 + 918_272 + 5 * 590_080 + 8 * 590_336 + 184_400 + 9_220 + 2_305 + 5;
    assert_eq!(params, want);
    assert_eq!(tiny("r18").name(), "fcos_r18_fpn_w8_c16");
    assert_eq!(tiny("r18").with_levels(3, 5).name(), "fcos_r18_fpn_w8_c16_p35");
}

#[test]
fn gradients_reach_backbone_neck_head_and_scales() {
    let (vs, net) = make(&tiny("r18"));
    let out = net.forward_t(&input(64, 64), true);
    let loss = out.logits.sum(Kind::Float)
        + out.head("box").unwrap().sum(Kind::Float)
        + out.head("centerness").unwrap().sum(Kind::Float);
    loss.backward();
    let vars = vs.variables();
    for name in [
        "backbone.conv1.weight",
        "backbone.layer4.1.conv2.weight",
        "neck.lateral_convs.0.conv.weight",
        "neck.fpn_convs.4.conv.weight",
        "bbox_head.cls_convs.0.conv.weight",
        "bbox_head.reg_convs.1.gn.weight",
        "bbox_head.conv_centerness.weight",
        "bbox_head.scales.0.scale",
        "bbox_head.scales.4.scale",
    ] {
        let g = vars[name].grad();
        assert!(
            g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
            "{name}"
        );
    }
}
