//! Tests of the segmentation nets: shapes for every backbone and head, the stride-8 tap,
//! block counts, parameter counts, the auxiliary head, BatchNorm modes and configuration errors.

use tch::nn;
use tch::{Device, Kind, Tensor};

use super::*;
use kd_core::models::Model;

/// A narrow net: base width 4, head 8, aux 4, K = 5.
fn tiny(backbone: &str, head: &str) -> SegNetConfig {
    SegNetConfig {
        backbone: backbone.into(),
        width: 4,
        head: head.into(),
        head_channels: 8,
        aux_channels: 4,
        aspp_dilations: vec![1, 2, 3],
        num_classes: 5,
        dropout: 0.1,
        in_channels: 3,
    }
}

fn make(cfg: &SegNetConfig) -> (nn::VarStore, SegNet) {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = build(&vs.root(), cfg).unwrap();
    (vs, net)
}

fn params(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}

#[test]
fn every_backbone_and_head_gives_the_documented_shapes() {
    tch::manual_seed(0);
    for backbone in BACKBONES {
        let expansion = if matches!(*backbone, "r18" | "r34") { 1 } else { 4 };
        for head in HEADS {
            let cfg = tiny(backbone, head);
            let (_vs, net) = make(&cfg);
            let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
            net.check_input(&x).unwrap();
            let out = net.forward_t(&x, true);
            let what = format!("{backbone}/{head}");
            assert_eq!(out.logits.size(), [2, 5, 32, 32], "{what} logits");
            let aux = out.aux_logits.as_ref().expect("aux head");
            assert_eq!(aux.size(), [2, 5, 32, 32], "{what} aux");
            assert!(out.pooled.is_none());
            let names: Vec<&str> = out.features.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["stage1", "stage2", "stage3", "stage4"], "{what}");
            for (i, ((_, f), t)) in out.features.iter().zip(net.taps()).enumerate() {
                let c = 4 * expansion * (1 << i);
                assert_eq!(t.channels, c, "{what} tap {i}");
                let side = 32 / t.stride;
                assert_eq!(f.size(), [2, c, side, side], "{what} tap {i}");
            }
            assert!(bool::try_from(out.logits.isfinite().all()).unwrap(), "{what}");
        }
    }
}

#[test]
fn stage4_is_the_stride_8_tap_for_non_square_inputs() {
    tch::manual_seed(1);
    let (_vs, net) = make(&tiny("r18", "psp"));
    let strides: Vec<i64> = net.taps().iter().map(|t| t.stride).collect();
    assert_eq!(strides, [4, 8, 8, 8]);
    let x = Tensor::randn([2, 3, 64, 48], (Kind::Float, Device::Cpu));
    let out = tch::no_grad(|| net.forward_t(&x, false));
    assert_eq!(out.feature("stage4").unwrap().size(), [2, 32, 8, 6]);
    assert_eq!(out.last_feature().unwrap().size(), [2, 32, 8, 6]);
    assert_eq!(out.feature("stage1").unwrap().size(), [2, 4, 16, 12]);
    assert_eq!(out.logits.size(), [2, 5, 64, 48]);
}

#[test]
fn r101_has_23_blocks_in_stage_3() {
    let (vs, net) = make(&tiny("r101", "psp"));
    assert_eq!(net.backbone().blocks(), [3, 4, 23, 3]);
    let vars = vs.variables();
    for (stage, n) in [(1, 3), (2, 4), (3, 23), (4, 3)] {
        let count = vars
            .keys()
            .filter(|k| k.starts_with(&format!("backbone.layer{stage}.")) && k.ends_with(".conv3.weight"))
            .count();
        assert_eq!(count, n, "layer{stage}");
    }
    let (_vs, r50) = make(&tiny("r50", "psp"));
    assert_eq!(r50.backbone().blocks(), [3, 4, 6, 3]);
}

#[test]
fn variables_follow_mmseg_names() {
    let (vs, _net) = make(&tiny("r50", "aspp"));
    let vars = vs.variables();
    for name in [
        "backbone.stem.0.weight",
        "backbone.stem.4.running_var",
        "backbone.stem.7.weight",
        "backbone.layer1.0.downsample.0.weight",
        "backbone.layer3.0.downsample.1.running_mean",
        "backbone.layer4.2.conv2.weight",
        "decode_head.image_pool.1.conv.weight",
        "decode_head.aspp_modules.2.bn.bias",
        "decode_head.bottleneck.conv.weight",
        "decode_head.conv_seg.weight",
        "decode_head.conv_seg.bias",
        "auxiliary_head.convs.0.conv.weight",
        "auxiliary_head.conv_seg.weight",
    ] {
        assert!(vars.contains_key(name), "missing {name}");
    }
    // The dilation-1 ASPP branch is a 1×1 conv, the others 3×3; stage 4 keeps its own stride.
    assert_eq!(
        vars["decode_head.aspp_modules.0.conv.weight"].size(),
        [8, 128, 1, 1]
    );
    assert_eq!(
        vars["decode_head.aspp_modules.1.conv.weight"].size(),
        [8, 128, 3, 3]
    );
    assert!(!vars.contains_key("backbone.layer2.1.downsample.0.weight"));
    let (vs, _net) = make(&tiny("r18", "psp"));
    let vars = vs.variables();
    assert!(vars.contains_key("decode_head.psp_modules.3.1.conv.weight"));
    // R18's stage 1 keeps the width, so it has no shortcut convolution.
    assert!(!vars.contains_key("backbone.layer1.0.downsample.0.weight"));
    assert!(vars.contains_key("backbone.layer3.0.downsample.0.weight"));
}

#[test]
fn pspnet_r18_at_full_width_has_the_expected_size() {
    let (vs, net) = make(&SegNetConfig::pspnet_r18(19));
    assert_eq!(net.name(), "pspnet_r18");
    assert_eq!(net.taps()[3].channels, 512);
    // ResNet-18-V1c without its classifier is about 11.2 M, the PSP head (1×1 convs 4·512·128,
    // bottleneck 3×3 1024 → 128) about 1.44 M and the auxiliary head (3×3 256 → 64) 0.15 M.
    let n = params(&vs);
    assert!((12_500_000..13_200_000).contains(&n), "{n} parameters");
    let (vs, net) = make(&SegNetConfig::deeplabv3_r18(19));
    assert_eq!(net.name(), "deeplabv3_r18");
    let n = params(&vs);
    assert!((13_000_000..16_000_000).contains(&n), "{n} parameters");
}

#[test]
fn the_auxiliary_head_is_optional() {
    tch::manual_seed(2);
    let mut cfg = tiny("r18", "aspp");
    cfg.aux_channels = 0;
    let (vs, net) = make(&cfg);
    assert!(!net.has_aux_head());
    assert!(vs.variables().keys().all(|k| !k.starts_with("auxiliary_head")));
    let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
    let out = net.forward_t(&x, true);
    assert!(out.aux_logits.is_none());
    assert_eq!(out.logits.size(), [2, 5, 16, 16]);
    let (_vs, with_aux) = make(&tiny("r18", "aspp"));
    assert!(with_aux.has_aux_head());
}

#[test]
fn batchnorm_and_dropout_follow_the_train_flag() {
    tch::manual_seed(3);
    let mut cfg = tiny("r18", "psp");
    cfg.dropout = 0.0;
    let (_vs, net) = make(&cfg);
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu)) * 3.0 + 1.0;
    let eval = tch::no_grad(|| net.forward_t(&x, false));
    let eval2 = tch::no_grad(|| net.forward_t(&x, false));
    let train = tch::no_grad(|| net.forward_t(&x, true));
    assert!(eval.logits.equal(&eval2.logits));
    let gap = (&train.logits - &eval.logits).abs().max().double_value(&[]);
    assert!(gap > 1e-4, "train and eval logits agree ({gap})");
    let tap_gap = (train.feature("stage4").unwrap() - eval.feature("stage4").unwrap())
        .abs()
        .max()
        .double_value(&[]);
    assert!(tap_gap > 1e-4);

    // With dropout, two train passes differ and eval passes do not.
    // (Other tests re-seed libtorch's process-wide generator concurrently; one re-seeding to the
    // same value before each pass of a pair would give equal masks, so several pairs are drawn.)
    let (_vs, net) = make(&tiny("r18", "psp"));
    let pair_differs = || {
        let a = tch::no_grad(|| net.forward_t(&x, true)).logits;
        let b = tch::no_grad(|| net.forward_t(&x, true)).logits;
        !a.equal(&b)
    };
    assert!((0..5).any(|_| pair_differs()));
    let a = tch::no_grad(|| net.forward_t(&x, false)).logits;
    let b = tch::no_grad(|| net.forward_t(&x, false)).logits;
    assert!(a.equal(&b));
}

#[test]
fn gradients_reach_every_part() {
    tch::manual_seed(4);
    let (vs, net) = make(&tiny("r18", "aspp"));
    let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
    let out = net.forward_t(&x, true);
    (out.logits.square().mean(Kind::Float) + out.aux_logits.unwrap().square().mean(Kind::Float)).backward();
    let vars = vs.variables();
    for name in [
        "backbone.stem.0.weight",
        "backbone.layer4.1.conv2.weight",
        "decode_head.image_pool.1.conv.weight",
        "decode_head.conv_seg.weight",
        "auxiliary_head.convs.0.conv.weight",
    ] {
        let g = vars[name].grad();
        assert!(
            g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
            "{name}"
        );
    }
}

#[test]
fn errors_name_the_key() {
    let root = nn::VarStore::new(Device::Cpu);
    let err = |cfg: SegNetConfig| build(&root.root(), &cfg).unwrap_err().to_string();
    let mut cfg = tiny("r20", "psp");
    assert!(err(cfg.clone()).contains("backbone") && err(cfg.clone()).contains("r20"));
    cfg = tiny("r18", "fpn");
    let msg = err(cfg);
    assert!(
        msg.contains("head") && msg.contains("fpn") && msg.contains("aspp"),
        "{msg}"
    );
    cfg = tiny("r18", "psp");
    cfg.width = 3;
    assert!(err(cfg).contains("width"));
    cfg = tiny("r18", "aspp");
    cfg.aspp_dilations = vec![1, 0];
    assert!(err(cfg).contains("aspp_dilations"));
    cfg = tiny("r18", "psp");
    cfg.num_classes = 0;
    assert!(err(cfg).contains("num_classes"));
    cfg = tiny("r18", "psp");
    cfg.dropout = 1.0;
    assert!(err(cfg).contains("dropout"));
    cfg = tiny("r18", "psp");
    cfg.aux_channels = -1;
    assert!(err(cfg).contains("aux_channels"));

    let (_vs, net) = make(&tiny("r18", "psp"));
    let h = Tensor::zeros([1, 32, 2, 2], (Kind::Float, Device::Cpu));
    assert!(net
        .forward_from(3, &h, false)
        .unwrap_err()
        .to_string()
        .contains("not supported"));
    assert!(net
        .classify(&h)
        .unwrap_err()
        .to_string()
        .contains("not supported"));
    let bad = Tensor::zeros([2, 1, 8, 8], (Kind::Float, Device::Cpu));
    assert!(matches!(
        net.check_input(&bad),
        Err(kd_core::KdError::BadShape { .. })
    ));
    let wrong_kind = Tensor::zeros([2, 3, 8, 8], (Kind::Double, Device::Cpu));
    assert!(net.check_input(&wrong_kind).is_err());
}

#[test]
fn config_reads_from_toml_with_defaults_and_rejects_unknown_keys() {
    let cfg: SegNetConfig = toml::from_str(
        r#"
        backbone = "r18"
        head = "aspp"
        head_channels = 128
        aux_channels = 64
        num_classes = 19
        "#,
    )
    .unwrap();
    assert_eq!(cfg, SegNetConfig::deeplabv3_r18(19));
    let err = toml::from_str::<SegNetConfig>(
        r#"
        backbone = "r18"
        head = "psp"
        head_channels = 128
        aux_channels = 64
        num_classes = 19
        depth = 18
        "#,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("depth"), "{err}");
    assert_eq!(
        SegNetConfig::pspnet_r101(19).with_width(16).name(),
        "pspnet_r101_w16"
    );
    let r101 = SegNetConfig::pspnet_r101(19);
    assert_eq!((r101.head_channels, r101.aux_channels), (512, 256));
}
