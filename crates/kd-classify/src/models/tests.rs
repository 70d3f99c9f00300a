//! Tests of the zoo: shapes, parameter counts, tap re-entry, BatchNorm modes, errors and a
//! short overfitting run.

use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use super::resnet::cifar_resnet;
use super::wrn::wide_resnet;
use super::{zoo, Model, ModelSpec};
use kd_core::KdError;

const RGB100: ModelSpec = ModelSpec {
    in_channels: 3,
    num_classes: 100,
};
const GREY10: ModelSpec = ModelSpec {
    in_channels: 1,
    num_classes: 10,
};

fn build(name: &str, spec: ModelSpec) -> (nn::VarStore, Box<dyn Model>) {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = zoo::build(name, &vs.root(), spec).unwrap();
    (vs, m)
}

fn trainable_params(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}

fn allclose(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.allclose(b, 1e-4, 1e-5, false)
}

/// The documented side of a tap map: `ceil(hw / stride)` for the padded networks; LeNet's
/// unpadded second convolution and its fully connected last stage (see `lenet.rs`).
fn expected_side(name: &str, tap: &str, hw: i64, stride: i64) -> i64 {
    match (name.starts_with("lenet"), tap) {
        (true, "stage2") => (hw / 2 - 4) / 2,
        (true, "stage3") => 1,
        _ => (hw + stride - 1) / stride,
    }
}

/// Logits, every tap and `pooled` have the documented shapes.
fn check_shapes(name: &str, spec: ModelSpec, batch: i64, hw: i64) {
    tch::manual_seed(0);
    let (_vs, m) = build(name, spec);
    assert_eq!(m.name(), name);
    assert_eq!(m.in_channels(), spec.in_channels);
    assert_eq!(m.num_classes(), spec.num_classes);
    let x = Tensor::randn([batch, spec.in_channels, hw, hw], (Kind::Float, Device::Cpu));
    m.check_input(&x).unwrap();
    let out = tch::no_grad(|| m.forward_t(&x, false));
    assert_eq!(out.logits.size(), [batch, spec.num_classes], "{name} logits");
    assert_eq!(out.features.len(), m.taps().len(), "{name} tap count");
    for ((fname, f), tap) in out.features.iter().zip(m.taps()) {
        assert_eq!(fname, &tap.name);
        let side = expected_side(name, &tap.name, hw, tap.stride);
        assert_eq!(
            f.size(),
            [batch, tap.channels, side, side],
            "{name} tap {fname} on {hw}x{hw}"
        );
    }
    let c_last = m.taps().last().unwrap().channels;
    assert_eq!(out.pooled.unwrap().size(), [batch, c_last], "{name} pooled");
}

#[test]
fn every_zoo_model_has_the_documented_shapes() {
    for &name in zoo::names() {
        let batch = if name == "resnet110" { 1 } else { 2 };
        check_shapes(name, RGB100, batch, 32);
        check_shapes(name, GREY10, batch, 28);
    }
}

#[test]
fn tap_names_channels_and_strides() {
    let strides = [1, 1, 2, 4];
    let cases: [(&str, [&str; 4], [i64; 4]); 5] = [
        (
            "resnet20",
            ["stem", "stage1", "stage2", "stage3"],
            [16, 16, 32, 64],
        ),
        (
            "resnet8x4",
            ["stem", "stage1", "stage2", "stage3"],
            [32, 64, 128, 256],
        ),
        (
            "wrn_16_1",
            ["stem", "block1", "block2", "block3"],
            [16, 16, 32, 64],
        ),
        (
            "wrn_40_2",
            ["stem", "block1", "block2", "block3"],
            [16, 32, 64, 128],
        ),
        (
            "wrn_16_2",
            ["stem", "block1", "block2", "block3"],
            [16, 32, 64, 128],
        ),
    ];
    for (name, names, channels) in cases {
        let (_vs, m) = build(name, RGB100);
        let taps = m.taps();
        assert_eq!(taps.len(), 4);
        for (i, t) in taps.iter().enumerate() {
            assert_eq!(
                (t.name.as_str(), t.channels, t.stride),
                (names[i], channels[i], strides[i])
            );
        }
    }
}

/// Exact trainable-parameter counts with CIFAR-100 heads, from an independent layer-by-layer
/// count of the reference architectures. The published rounded sizes are resnet8x4 1.23M,
/// resnet32x4 7.43M, resnet56 0.86M, resnet20 0.28M, resnet110 1.74M, wrn_40_2 2.26M and
/// wrn_16_2 0.70M; torchvision's ImageNet ResNets are checked against their exact counts.
#[test]
fn parameter_counts_match_the_reference_architectures() {
    let expected = [
        ("resnet8", 83_892),
        ("resnet14", 181_108),
        ("resnet20", 278_324),
        ("resnet32", 472_756),
        ("resnet44", 667_188),
        ("resnet56", 861_620),
        ("resnet110", 1_736_564),
        ("resnet8x4", 1_233_540),
        ("resnet32x4", 7_433_860),
        ("wrn_16_1", 180_916),
        ("wrn_16_2", 703_284),
        ("wrn_40_1", 569_780),
        ("wrn_40_2", 2_255_156),
        // torchvision's published counts (1000 classes: 11_689_512, 21_797_672, 25_557_032,
        // 44_549_160) with the 1000-way head swapped for a 100-way one.
        ("resnet18", 11_689_512 - 513_000 + 51_300),
        ("resnet34", 21_797_672 - 513_000 + 51_300),
        ("resnet50", 25_557_032 - 2_049_000 + 204_900),
        ("resnet101", 44_549_160 - 2_049_000 + 204_900),
        // conv1 3·6·25 + 6, conv2 6·16·25 + 16, fc1 400·120 + 120, fc2 120·84 + 84, fc 84·100 + 100.
        ("lenet5", 69_656),
        // The same at half width: 228 + 608 + 12_060 + 2_562 + 4_300.
        ("lenet5_half", 19_758),
    ];
    assert_eq!(expected.len(), zoo::names().len());
    for (name, n) in expected {
        let (vs, _m) = build(name, RGB100);
        assert_eq!(trainable_params(&vs), n, "{name}");
    }
    let published = [
        ("resnet8x4", 1.23e6),
        ("resnet32x4", 7.43e6),
        ("resnet56", 0.86e6),
        ("resnet20", 0.28e6),
        ("resnet110", 1.74e6),
        ("wrn_40_2", 2.26e6),
        ("wrn_16_2", 0.70e6),
    ];
    for (name, n) in published {
        let (vs, _m) = build(name, RGB100);
        let got = trainable_params(&vs) as f64;
        assert!((got - n).abs() / n < 0.01, "{name}: {got} vs {n}");
    }
}

#[test]
fn variable_names_follow_the_reference_code() {
    let (vs, _m) = build("resnet8x4", RGB100);
    let vars = vs.variables();
    for k in [
        "conv1.weight",
        "bn1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_mean",
        "layer3.0.bn2.bias",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(vars.contains_key(k), "resnet8x4 lacks {k}");
    }
    // resnet20's first stage keeps its width: no projection shortcut there.
    let (vs, _m) = build("resnet20", RGB100);
    assert!(!vs.variables().contains_key("layer1.0.downsample.0.weight"));

    let (vs, _m) = build("wrn_16_2", RGB100);
    let vars = vs.variables();
    for k in [
        "conv1.weight",
        "block1.layer.0.bn1.weight",
        "block1.layer.0.convShortcut.weight",
        "block3.layer.1.conv2.weight",
        "bn1.running_mean",
        "fc.weight",
    ] {
        assert!(vars.contains_key(k), "wrn_16_2 lacks {k}");
    }
    assert!(!vars.contains_key("block1.layer.1.convShortcut.weight"));
}

#[test]
fn initialisation_is_kaiming_fan_out_with_unit_batchnorm() {
    tch::manual_seed(1);
    let (vs, _m) = build("resnet32x4", RGB100);
    let vars = vs.variables();
    // 256 output channels × 3 × 3: std = sqrt(2 / 2304).
    let w = &vars["layer3.4.conv2.weight"];
    let std = w.std(true).double_value(&[]);
    let want = (2.0f64 / 2304.0).sqrt();
    assert!((std - want).abs() / want < 0.02, "conv std {std} vs {want}");
    assert!(w.mean(Kind::Float).double_value(&[]).abs() < 0.01 * want * 10.0);
    for (k, v) in &vars {
        if k.contains("bn") || k.contains("downsample.1") {
            let want = if k.ends_with("weight") || k.ends_with("running_var") {
                1.0
            } else {
                0.0
            };
            let max_dev = (v - want).abs().max().double_value(&[]);
            assert!(max_dev == 0.0, "{k} not initialised to {want}");
        }
    }
    let bound = 1.0 / 256f64.sqrt();
    let fc = &vars["fc.weight"];
    assert!(fc.abs().max().double_value(&[]) <= bound);
}

/// `forward_from(i, features[i])` and `classify(last tap)` reproduce the full forward pass.
#[test]
fn re_entry_and_classify_reproduce_the_forward_pass() {
    for (name, spec, hw) in [
        ("resnet8", RGB100, 32),
        ("resnet8x4", GREY10, 28),
        ("wrn_16_2", RGB100, 32),
        ("wrn_16_1", GREY10, 28),
        ("lenet5", GREY10, 28),
        ("lenet5_half", RGB100, 32),
    ] {
        tch::manual_seed(2);
        let (_vs, m) = build(name, spec);
        let x = Tensor::randn([3, spec.in_channels, hw, hw], (Kind::Float, Device::Cpu));
        tch::no_grad(|| {
            let full = m.forward_t(&x, false);
            for (i, (_, f)) in full.features.iter().enumerate() {
                let out = m.forward_from(i, f, false).unwrap();
                assert!(allclose(&out.logits, &full.logits), "{name} tap {i} logits");
                assert_eq!(out.features.len(), full.features.len() - i - 1);
                for ((n1, a), (n2, b)) in out.features.iter().zip(&full.features[i + 1..]) {
                    assert_eq!(n1, n2);
                    assert!(allclose(a, b), "{name} tap {i} -> {n1}");
                }
                assert!(allclose(
                    out.pooled.as_ref().unwrap(),
                    full.pooled.as_ref().unwrap()
                ));
            }
            let last = full.last_feature().unwrap();
            assert!(
                allclose(&m.classify(last).unwrap(), &full.logits),
                "{name} classify"
            );
        });
    }
}

#[test]
fn re_entry_accepts_other_spatial_sizes_and_keeps_gradients() {
    tch::manual_seed(3);
    let (_vs, m) = build("resnet8", RGB100);
    let h = Tensor::randn([2, 32, 5, 5], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let out = m.forward_from(2, &h, true).unwrap();
    assert_eq!(out.logits.size(), [2, 100]);
    assert_eq!(out.features[0].0, "stage3");
    assert_eq!(out.features[0].1.size(), [2, 64, 3, 3]);
    out.logits.sum(Kind::Float).backward();
    assert!(h.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

#[test]
fn batchnorm_train_and_eval_modes_differ() {
    for name in ["resnet8", "wrn_16_1"] {
        tch::manual_seed(4);
        let (vs, m) = build(name, RGB100);
        let x = Tensor::randn([4, 3, 16, 16], (Kind::Float, Device::Cpu)) * 3.0 + 1.0;
        let running = vs.variables()["bn1.running_mean"].copy();
        let eval1 = tch::no_grad(|| m.forward_t(&x, false).logits);
        let eval2 = tch::no_grad(|| m.forward_t(&x, false).logits);
        assert!(allclose(&eval1, &eval2), "{name}: eval mode is deterministic");
        assert!(allclose(&vs.variables()["bn1.running_mean"], &running));
        let train = tch::no_grad(|| m.forward_t(&x, true).logits);
        assert!(
            !allclose(&train, &eval1),
            "{name}: train mode uses batch statistics"
        );
        let moved = (&vs.variables()["bn1.running_mean"] - &running).abs().max();
        assert!(
            moved.double_value(&[]) > 0.0,
            "{name}: train mode updates running stats"
        );
    }
}

fn expect_bad_shape(r: kd_core::Result<impl std::fmt::Debug>, shape: &[i64]) -> String {
    match r {
        Err(e @ KdError::BadShape { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&format!("{shape:?}")), "{msg}");
            msg
        }
        other => panic!("expected BadShape, got {other:?}"),
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let (_vs, m) = build("resnet8", GREY10);
    let opts = (Kind::Float, Device::Cpu);
    let msg = expect_bad_shape(
        m.check_input(&Tensor::zeros([2, 3, 28, 28], opts)),
        &[2, 3, 28, 28],
    );
    assert!(msg.contains("[B, 1, H, W]"), "{msg}");
    expect_bad_shape(m.check_input(&Tensor::zeros([1, 28, 28], opts)), &[1, 28, 28]);
    expect_bad_shape(
        m.check_input(&Tensor::zeros([0, 1, 28, 28], opts)),
        &[0, 1, 28, 28],
    );
    let ints = Tensor::zeros([2, 1, 28, 28], (Kind::Int64, Device::Cpu));
    assert!(matches!(m.check_input(&ints), Err(KdError::Invalid(_))));
    let doubles = Tensor::zeros([2, 1, 28, 28], (Kind::Double, Device::Cpu));
    assert!(matches!(m.check_input(&doubles), Err(KdError::Invalid(_))));
    m.check_input(&Tensor::zeros([2, 1, 28, 28], opts)).unwrap();

    let h = Tensor::zeros([2, 16, 14, 14], opts);
    match m.forward_from(4, &h, false) {
        Err(KdError::Invalid(msg)) => assert!(msg.contains("out of range"), "{msg}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    // Tap 1 ("stage1") has 16 channels, tap 2 ("stage2") 32.
    m.forward_from(1, &h, false).unwrap();
    let msg = expect_bad_shape(m.forward_from(2, &h, false), &[2, 16, 14, 14]);
    assert!(msg.contains("stage2") && msg.contains("[B, 32, H, W]"), "{msg}");
    expect_bad_shape(
        m.forward_from(0, &Tensor::zeros([16, 7, 7], opts), false),
        &[16, 7, 7],
    );
    expect_bad_shape(m.classify(&h), &[2, 16, 14, 14]);
    assert_eq!(
        m.classify(&Tensor::zeros([2, 64, 7, 7], opts)).unwrap().size(),
        [2, 10]
    );
}

#[test]
fn bad_names_specs_and_depths_are_invalid() {
    let vs = nn::VarStore::new(Device::Cpu);
    match zoo::build("resnet9", &vs.root(), RGB100) {
        Err(KdError::Invalid(msg)) => {
            assert!(
                msg.contains("resnet9") && msg.contains("resnet32x4") && msg.contains("wrn_40_2"),
                "{msg}"
            )
        }
        other => panic!("expected Invalid, got {:?}", other.map(|m| m.name().to_string())),
    }
    for spec in [
        ModelSpec {
            in_channels: 0,
            num_classes: 10,
        },
        ModelSpec {
            in_channels: 3,
            num_classes: 0,
        },
    ] {
        assert!(matches!(
            zoo::build("resnet8", &vs.root(), spec),
            Err(KdError::Invalid(_))
        ));
    }
    let r = cifar_resnet(&vs.root(), "resnet9", 9, [16, 16, 32, 64], RGB100);
    assert!(matches!(r, Err(KdError::Invalid(_))));
    let r = wide_resnet(&vs.root(), "wrn_15_2", 15, 2, 0.0, RGB100);
    assert!(matches!(r, Err(KdError::Invalid(_))));
    let r = wide_resnet(&vs.root(), "wrn_16_2", 16, 2, 1.0, RGB100);
    assert!(matches!(r, Err(KdError::Invalid(_))));
}

#[test]
fn wrn_dropout_is_active_only_in_train_mode() {
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let m = wide_resnet(&vs.root(), "wrn_10_1_drop", 10, 1, 0.5, RGB100).unwrap();
    let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    tch::no_grad(|| {
        let e1 = m.forward_t(&x, false).logits;
        let e2 = m.forward_t(&x, false).logits;
        assert!(allclose(&e1, &e2));
        let t1 = m.forward_t(&x, true).logits;
        let t2 = m.forward_t(&x, true).logits;
        assert!(!allclose(&t1, &t2), "dropout draws a new mask each call");
    });
}

/// resnet8 memorises 16 random images with random labels: the loss falls well below its
/// starting value within 30 SGD steps.
#[test]
fn resnet8_overfits_a_tiny_random_set() {
    tch::manual_seed(6);
    let vs = nn::VarStore::new(Device::Cpu);
    let m = zoo::build("resnet8", &vs.root(), GREY10).unwrap();
    let x = Tensor::randn([16, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [16], (Kind::Int64, Device::Cpu));
    let mut opt = nn::Sgd {
        momentum: 0.9,
        ..Default::default()
    }
    .build(&vs, 0.05)
    .unwrap();
    let mut losses = Vec::new();
    for _ in 0..30 {
        let loss = m.forward_t(&x, true).logits.cross_entropy_for_logits(&y);
        losses.push(loss.double_value(&[]));
        opt.backward_step(&loss);
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(last < 0.5 * first, "loss {first} -> {last}");
}

#[test]
fn linear_head_is_the_layer_inside_classify() {
    for name in ["resnet8", "wrn_16_2", "lenet5"] {
        let spec = if name == "lenet5" { GREY10 } else { RGB100 };
        let (_vs, m) = build(name, spec);
        let c = m.taps().last().unwrap().channels;
        let (w, b) = m.linear_head().expect("zoo models have a linear head");
        assert_eq!(w.size(), [spec.num_classes, c], "{name}");
        let b = b.expect("zoo heads have a bias");
        assert_eq!(b.size(), [spec.num_classes], "{name}");
        let map = Tensor::randn([2, c, 3, 3], (Kind::Float, Device::Cpu));
        let pooled = map.mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        let want = pooled.matmul(&w.transpose(0, 1)) + &b;
        assert!(allclose(&m.classify(&map).unwrap(), &want), "{name}");
    }
}
