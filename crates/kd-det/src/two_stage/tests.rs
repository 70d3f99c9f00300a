use std::sync::Mutex;

use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use super::anchors::{base_anchors, level_anchors, pyramid_anchors};
use super::assign::{assign_overlaps, max_iou_assign, random_sample};
use super::bbox_head::{detect_image, rcnn_loss, roi_targets, RoiTargets};
use super::delta::{decode, encode, MAX_LOG_RATIO, RCNN_STDS, RPN_STDS};
use super::roi_align::{extract_multi_level, map_roi_levels, roi_align};
use super::rpn::{proposals, rpn_loss};
use super::*;
use crate::boxes::{ImageSize, PostprocessConfig};
use kd_core::models::Model;

/// Tests that seed libtorch's process-wide generator and depend on its draws.
static SEEDED: Mutex<()> = Mutex::new(());

fn t(v: &[f32], shape: &[i64]) -> Tensor {
    Tensor::from_slice(v).view(shape)
}

fn vals(x: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(x.to_kind(Kind::Double).reshape([-1])).unwrap()
}

fn close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "element {i}: {x} vs {y}");
    }
}

#[test]
fn base_anchors_are_mmdet_s_for_stride_4_scale_8() {
    let a = base_anchors(4, &[8.0], &[0.5, 1.0, 2.0]);
    let r = 2f64.sqrt();
    let want = [
        [-16.0 * r, -8.0 * r, 16.0 * r, 8.0 * r],
        [-16.0, -16.0, 16.0, 16.0],
        [-8.0 * r, -16.0 * r, 8.0 * r, 16.0 * r],
    ];
    for (got, want) in a.iter().zip(&want) {
        close(got, want, 1e-12);
    }
    // Ratios outer, scales inner.
    let two = base_anchors(8, &[1.0, 2.0], &[1.0, 4.0]);
    close(&two[1], &[-8.0, -8.0, 8.0, 8.0], 1e-12);
    close(&two[2], &[-2.0, -8.0, 2.0, 8.0], 1e-12);
}

#[test]
fn level_anchors_are_row_major_positions_with_the_anchors_inner() {
    let a = level_anchors(16, 2, 3, &[1.0], &[1.0, 2.0], Device::Cpu);
    assert_eq!(a.size(), [12, 4]);
    let base = base_anchors(16, &[1.0], &[1.0, 2.0]);
    for y in 0..2 {
        for x in 0..3 {
            for (k, b) in base.iter().enumerate() {
                let row = vals(&a.get((y * 3 + x) * 2 + k as i64));
                let (sx, sy) = (16.0 * x as f64, 16.0 * y as f64);
                close(&row, &[b[0] + sx, b[1] + sy, b[2] + sx, b[3] + sy], 1e-5);
            }
        }
    }
    let (all, counts) =
        pyramid_anchors(&[(4, 4, 4), (8, 2, 2)], &[8.0], &[0.5, 1.0, 2.0], Device::Cpu).unwrap();
    assert_eq!(counts, [48, 12]);
    assert_eq!(all.size(), [60, 4]);
    let err = pyramid_anchors(&[(4, 1, 1)], &[], &[1.0], Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("anchors.scales"), "{err}");
}

#[test]
fn delta_coding_round_trips_and_has_the_closed_form() {
    let refs = t(&[0.0, 0.0, 10.0, 20.0, 5.0, 5.0, 9.0, 7.0], &[2, 4]);
    let gt = t(&[2.0, 4.0, 14.0, 16.0, 1.0, 2.0, 21.0, 12.0], &[2, 4]);
    let d = encode(&refs, &gt, &RPN_STDS).unwrap();
    // First pair: centres (5, 10) → (8, 10), sizes 10×20 → 12×12.
    close(&vals(&d.get(0)), &[0.3, 0.0, (1.2f64).ln(), (0.6f64).ln()], 1e-6);
    for stds in [RPN_STDS, RCNN_STDS] {
        let d = encode(&refs, &gt, &stds).unwrap();
        let back = decode(&refs, &d, &stds, None).unwrap();
        close(&vals(&back), &vals(&gt), 1e-4);
    }
    let d = encode(&refs, &gt, &RCNN_STDS).unwrap();
    let raw = encode(&refs, &gt, &RPN_STDS).unwrap();
    close(&vals(&(d * t(&[0.1, 0.1, 0.2, 0.2], &[1, 4]))), &vals(&raw), 1e-6);
    // Log-sizes clamp at ln(62.5); corners clip to the image.
    let big = t(&[0.0, 0.0, 100.0, -100.0], &[1, 4]);
    let r1 = t(&[10.0, 10.0, 12.0, 12.0], &[1, 4]);
    let out = vals(&decode(&r1, &big, &RPN_STDS, None).unwrap());
    close(&[out[2] - out[0]], &[2.0 * MAX_LOG_RATIO.exp()], 1e-3);
    close(&[out[3] - out[1]], &[2.0 * (-MAX_LOG_RATIO).exp()], 1e-5);
    let clipped = vals(&decode(&r1, &big, &RPN_STDS, Some(ImageSize::new(50.0, 40.0))).unwrap());
    assert_eq!(clipped[0], 0.0);
    assert_eq!(clipped[2], 50.0);
    // One box per class: [N, 4K].
    let per_class = decode(
        &r1,
        &Tensor::zeros([1, 8], (Kind::Float, Device::Cpu)),
        &RCNN_STDS,
        None,
    )
    .unwrap();
    close(
        &vals(&per_class),
        &[10.0, 10.0, 12.0, 12.0, 10.0, 10.0, 12.0, 12.0],
        1e-6,
    );
    assert!(decode(
        &r1,
        &Tensor::zeros([1, 3], (Kind::Float, Device::Cpu)),
        &RPN_STDS,
        None
    )
    .is_err());
}

#[test]
fn max_iou_assignment_follows_mmdet_on_a_hand_made_case() {
    let cfg = AssignerConfig::rpn();
    // Overlaps of 2 ground-truth boxes (rows) with 5 boxes (columns).
    let iou = [
        0.80, 0.50, 0.10, 0.00, 0.35, //
        0.75, 0.20, 0.29, 0.00, 0.35,
    ];
    let a = assign_overlaps(&iou, 2, 5, &cfg);
    // Box 0 is positive for gt 0 (0.8 ≥ 0.7), then low-quality matching hands it to gt 1, whose
    // best box it also is (0.75; later gts overwrite earlier ones); box 1 is ignored (0.5);
    // boxes 2 and 3 are negative (< 0.3); box 4 is ignored (0.35, nobody's best).
    assert_eq!(a, [2, -1, 0, 0, -1]);
    let no_low = AssignerConfig {
        match_low_quality: false,
        ..cfg
    };
    assert_eq!(assign_overlaps(&iou, 2, 5, &no_low), [1, -1, 0, 0, -1]);
    // Low-quality: a gt whose best is below pos_iou_thr but ≥ min_pos_iou claims all its ties.
    let iou = [0.4, 0.4, 0.1];
    assert_eq!(assign_overlaps(&iou, 1, 3, &cfg), [1, 1, 0]);
    assert_eq!(assign_overlaps(&[0.25, 0.1], 1, 2, &cfg), [0, 0]);
    // Through box_iou, and with no ground truth every box is negative.
    let gt = t(&[0.0, 0.0, 10.0, 10.0], &[1, 4]);
    let boxes = t(
        &[0.0, 0.0, 10.0, 10.0, 0.0, 0.0, 10.0, 5.0, 20.0, 20.0, 30.0, 30.0],
        &[3, 4],
    );
    assert_eq!(
        max_iou_assign(&gt, &boxes, &AssignerConfig::rcnn()).unwrap(),
        [1, 1, 0]
    );
    let none = Tensor::zeros([0, 4], (Kind::Float, Device::Cpu));
    assert_eq!(max_iou_assign(&none, &boxes, &cfg).unwrap(), [0, 0, 0]);
}

#[test]
fn random_sampling_caps_positives_fills_with_negatives_and_is_seeded() {
    let _g = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    let mut assigned = vec![0i64; 40];
    for i in 0..10 {
        assigned[i * 4] = 1 + (i % 2) as i64;
    }
    assigned[1] = -1;
    let cfg = SamplerConfig {
        num: 16,
        pos_fraction: 0.25,
        add_gt_as_proposals: false,
    };
    tch::manual_seed(3);
    let s = random_sample(&assigned, &cfg);
    assert_eq!(s.pos.len(), 4);
    assert_eq!(s.neg.len(), 12);
    assert!(s.pos.iter().all(|&p| assigned[p as usize] > 0));
    assert!(s.neg.iter().all(|&n| assigned[n as usize] == 0));
    assert!(s.pos.windows(2).all(|w| w[0] < w[1]) && s.neg.windows(2).all(|w| w[0] < w[1]));
    tch::manual_seed(3);
    assert_eq!(random_sample(&assigned, &cfg), s);
    // Few positives: all of them, negatives fill the rest.
    let few: Vec<i64> = (0..30).map(|i| i64::from(i == 7)).collect();
    let s = random_sample(&few, &cfg);
    assert_eq!((s.pos.clone(), s.neg.len()), (vec![7], 15));
}

#[derive(serde::Deserialize)]
struct RoiFixture {
    made_by: String,
    feat_shape: Vec<i64>,
    feat: Vec<f64>,
    rois: Vec<[f64; 5]>,
    output_size: i64,
    cases: Vec<RoiCase>,
}

#[derive(serde::Deserialize)]
struct RoiCase {
    spatial_scale: f64,
    sampling_ratio: i64,
    aligned: bool,
    out: Vec<f64>,
    grad: Vec<f64>,
}

/// Largest absolute difference over the largest magnitude of the reference.
fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    got.iter().zip(want).fold(0f64, |m, (a, b)| m.max((a - b).abs())) / scale
}

#[test]
fn roi_align_matches_torchvision_values_and_gradients() {
    let fx: RoiFixture = serde_json::from_str(include_str!("fixtures/roi_align.json")).unwrap();
    assert!(fx.made_by.starts_with("torchvision"));
    let flat: Vec<f64> = fx.rois.iter().flatten().copied().collect();
    let rois = Tensor::from_slice(&flat).view([-1, 5]);
    let n = fx.rois.len() as i64;
    let p = fx.output_size;
    for case in &fx.cases {
        for kind in [Kind::Float, Kind::Double] {
            let feat = Tensor::from_slice(&fx.feat)
                .view(fx.feat_shape.as_slice())
                .to_kind(kind)
                .set_requires_grad(true);
            let out = roi_align(
                &feat,
                &rois.to_kind(kind),
                p,
                case.spatial_scale,
                case.sampling_ratio,
                case.aligned,
            )
            .unwrap();
            assert_eq!(out.size(), [n, fx.feat_shape[1], p, p]);
            let w = (Tensor::arange(out.numel() as i64, (Kind::Double, Device::Cpu)).remainder(13) - 6)
                .view(out.size().as_slice())
                .to_kind(kind);
            (&out * w).sum(kind).backward();
            let tol = if kind == Kind::Float { 1e-5 } else { 1e-8 };
            let what = format!(
                "scale {} ratio {} aligned {} {kind:?}",
                case.spatial_scale, case.sampling_ratio, case.aligned
            );
            let e = rel_err(&vals(&out), &case.out);
            assert!(e <= tol, "{what}: values differ by {e:e}");
            let e = rel_err(&vals(&feat.grad()), &case.grad);
            assert!(e <= tol, "{what}: gradients differ by {e:e}");
        }
    }
}

#[test]
fn roi_align_rejects_bad_rois_and_handles_none() {
    let feat = Tensor::zeros([1, 2, 4, 4], (Kind::Float, Device::Cpu));
    let empty = roi_align(
        &feat,
        &Tensor::zeros([0, 5], (Kind::Float, Device::Cpu)),
        7,
        1.0,
        0,
        true,
    )
    .unwrap();
    assert_eq!(empty.size(), [0, 2, 7, 7]);
    let err = roi_align(&feat, &t(&[1.0, 0.0, 0.0, 2.0, 2.0], &[1, 5]), 7, 1.0, 0, true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("batch index 1"), "{err}");
    assert!(roi_align(&feat, &t(&[0.0, 0.0, 2.0, 2.0], &[1, 4]), 7, 1.0, 0, true).is_err());
}

#[test]
fn rois_go_to_the_level_of_their_scale_and_keep_their_order() {
    let rois = t(
        &[
            0.0, 0.0, 0.0, 224.0, 224.0, // 224 → level 2
            0.0, 0.0, 0.0, 20.0, 20.0, // small → 0
            0.0, 0.0, 0.0, 111.9, 111.9, // just below 112 → 0
            0.0, 0.0, 0.0, 112.0, 112.0, // 112 → 1
            0.0, 0.0, 0.0, 2000.0, 2000.0, // huge → clamped to 3
        ],
        &[5, 5],
    );
    assert_eq!(
        Vec::<i64>::try_from(map_roi_levels(&rois, 4, 56.0)).unwrap(),
        [2, 0, 0, 1, 3]
    );
    // Each RoI reads its own level: constant maps of value l + 1 give back l + 1.
    let maps: Vec<Tensor> = (0..4)
        .map(|l| {
            Tensor::full(
                [1, 1, 256 >> l, 256 >> l],
                (l + 1) as f64,
                (Kind::Float, Device::Cpu),
            )
        })
        .collect();
    let refs: Vec<&Tensor> = maps.iter().collect();
    let small = t(
        &[
            0.0, 8.0, 8.0, 232.0, 232.0, 0.0, 4.0, 4.0, 24.0, 24.0, 0.0, 10.0, 10.0, 130.0, 130.0,
        ],
        &[3, 5],
    );
    let out = extract_multi_level(&refs, &[4, 8, 16, 32], &small, 7, 56.0, 0).unwrap();
    let means = vals(&out.mean_dim([1i64, 2, 3].as_slice(), false, Kind::Float));
    close(&means, &[3.0, 1.0, 2.0], 1e-6);
}

#[test]
fn rpn_loss_has_its_closed_form_on_zero_outputs() {
    let _g = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    // Three anchors: one matches the ground truth exactly, one half-overlaps, one is far away.
    let anchors = t(
        &[0.0, 0.0, 10.0, 10.0, 0.0, 0.0, 10.0, 20.0, 50.0, 50.0, 60.0, 60.0],
        &[3, 4],
    );
    let gt = t(&[0.0, 0.0, 10.0, 10.0], &[1, 4]);
    let logits = Tensor::zeros([1, 3, 1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let deltas = Tensor::zeros([1, 3, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let (cls, bx, units) = rpn_loss(
        &logits,
        &deltas,
        &anchors,
        &[gt.shallow_clone()],
        &AssignerConfig::rpn(),
        &SamplerConfig::rpn(),
    )
    .unwrap();
    // Anchor 0 positive (IoU 1); anchor 1 ignored (IoU 0.5); anchor 2 negative.
    assert_eq!(units, 2.0);
    close(&[cls.double_value(&[])], &[std::f64::consts::LN_2], 1e-6);
    // The positive's target is zero (the anchor is the box): L1 of zero outputs is 0.
    close(&[bx.double_value(&[])], &[0.0], 1e-7);
    (cls + bx).backward();
    close(&vals(&logits.grad().view([-1])), &[-0.25, 0.0, 0.25], 1e-6);
    // A shifted ground truth gives the L1 of its encoded offsets over the 2 samples.
    let gt2 = t(&[1.0, 0.0, 11.0, 10.0], &[1, 4]);
    let (_, bx, _) = rpn_loss(
        &logits,
        &deltas,
        &anchors,
        &[gt2],
        &AssignerConfig::rpn(),
        &SamplerConfig::rpn(),
    )
    .unwrap();
    close(&[bx.double_value(&[])], &[0.1 / 2.0], 1e-6);
}

#[test]
fn proposals_rank_decode_clip_and_suppress_per_level() {
    let anchors = t(
        &[
            0.0, 0.0, 10.0, 10.0, 1.0, 0.0, 11.0, 10.0, 30.0, 30.0, 50.0, 50.0, //
            0.0, 0.0, 10.0, 10.0,
        ],
        &[4, 4],
    );
    let logits = t(&[3.0, 2.0, 1.0, 0.5], &[4, 1]);
    let deltas = Tensor::zeros([4, 4], (Kind::Float, Device::Cpu));
    let cfg = ProposalConfig {
        nms_pre: 2,
        max_per_img: 10,
        iou_thr: 0.7,
        min_bbox_size: 0.0,
    };
    // Level 0 holds anchors 0–2 (nms_pre keeps the best two, which overlap: one survives);
    // level 1 holds anchor 3, identical to anchor 0 but suppressed only within its own level.
    let (boxes, scores) = proposals(
        &logits,
        &deltas,
        &anchors,
        &[3, 1],
        ImageSize::new(40.0, 40.0),
        &cfg,
    )
    .unwrap();
    close(&vals(&scores), &[sig(3.0), sig(0.5)], 1e-6);
    close(&vals(&boxes), &[0.0, 0.0, 10.0, 10.0, 0.0, 0.0, 10.0, 10.0], 1e-6);
    let one = ProposalConfig {
        max_per_img: 1,
        ..cfg
    };
    let (boxes, _) = proposals(
        &logits,
        &deltas,
        &anchors,
        &[3, 1],
        ImageSize::new(40.0, 40.0),
        &one,
    )
    .unwrap();
    assert_eq!(boxes.size(), [1, 4]);
}

fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[test]
fn box_head_targets_put_ground_truth_first_and_label_background_k() {
    let _g = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    let gt = t(&[0.0, 0.0, 10.0, 10.0], &[1, 4]);
    let labels = Tensor::from_slice(&[2i64]);
    let props = t(&[0.0, 0.0, 10.0, 12.0, 40.0, 40.0, 50.0, 50.0], &[2, 4]);
    let cfg = RcnnConfig::default();
    let tg = roi_targets(&[props], &[gt], &[labels], 3, &cfg).unwrap();
    // Candidates: the gt itself (positive), proposal 0 (IoU 10/12 ≥ 0.5, positive), proposal 1
    // (negative).
    assert_eq!(Vec::<i64>::try_from(&tg.labels).unwrap(), [2, 2, 3]);
    assert_eq!(Vec::<i64>::try_from(&tg.pos_rows).unwrap(), [0, 1]);
    close(&vals(&tg.rois.get(0)), &[0.0, 0.0, 0.0, 10.0, 10.0], 1e-6);
    // Targets of the gt against itself are 0; proposal 0's height offset is ln(10/12)/0.2.
    let tv = vals(&tg.pos_targets);
    close(&tv[..4], &[0.0; 4], 1e-6);
    close(
        &[tv[5], tv[7]],
        &[(-1.0 / 12.0) / 0.1, (10.0f64 / 12.0).ln() / 0.2],
        1e-5,
    );
}

#[test]
fn box_head_loss_has_its_closed_form() {
    let k = 3;
    let targets = RoiTargets {
        rois: Tensor::zeros([3, 5], (Kind::Float, Device::Cpu)),
        labels: Tensor::from_slice(&[1i64, 0, 3]),
        pos_rows: Tensor::from_slice(&[0i64, 1]),
        pos_targets: t(&[1.0, -1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 2.0], &[2, 4]),
    };
    let cls = Tensor::zeros([3, k + 1], (Kind::Float, Device::Cpu));
    let reg = Tensor::zeros([3, 4 * k], (Kind::Float, Device::Cpu));
    let (lc, lb) = rcnn_loss(&cls, &reg, &targets, k).unwrap();
    close(&[lc.double_value(&[])], &[(4f64).ln()], 1e-6);
    close(&[lb.double_value(&[])], &[4.5 / 3.0], 1e-6);
    // Only each positive's own class block counts: fill class 1 of RoI 0 with its target.
    let mut r = vec![0f32; 12 * 3];
    r[4..8].copy_from_slice(&[1.0, -1.0, 0.5, 0.0]);
    let (_, lb) = rcnn_loss(&cls, &t(&r, &[3, 12]), &targets, k).unwrap();
    close(&[lb.double_value(&[])], &[2.0 / 3.0], 1e-6);
}

#[test]
fn detection_scores_every_class_above_the_threshold_and_suppresses_per_class() {
    let rois = t(
        &[0.0, 0.0, 10.0, 10.0, 1.0, 0.0, 11.0, 10.0, 30.0, 30.0, 40.0, 40.0],
        &[3, 4],
    );
    // Logits so that softmax gives clear class scores; background last.
    let cls = t(
        &[
            4.0, 0.0, 0.0, //
            3.0, 0.0, 0.0, //
            0.0, 2.0, 2.0,
        ],
        &[3, 3],
    );
    let reg = Tensor::zeros([3, 8], (Kind::Float, Device::Cpu));
    let post = PostprocessConfig::default();
    let d = detect_image(&rois, &cls, &reg, ImageSize::new(35.0, 35.0), &post).unwrap();
    // RoI 1 is suppressed by RoI 0 (same class, IoU 0.82); RoI 2 gives class 1 (score 0.4688)
    // and class 0 (0.0634), clipped to the 35-pixel image.
    let s0 = 4f64.exp() / (4f64.exp() + 2.0);
    let s2 = 2f64.exp() / (1.0 + 2.0 * 2f64.exp());
    let s2b = 1.0 / (1.0 + 2.0 * 2f64.exp());
    close(&vals(&d.scores), &[s0, s2, s2b], 1e-6);
    assert_eq!(Vec::<i64>::try_from(&d.labels).unwrap(), [0, 1, 0]);
    close(&vals(&d.boxes.get(1)), &[30.0, 30.0, 35.0, 35.0], 1e-6);
    let strict = PostprocessConfig {
        score_thr: 0.1,
        ..post
    };
    assert_eq!(
        detect_image(&rois, &cls, &reg, ImageSize::new(35.0, 35.0), &strict)
            .unwrap()
            .len(),
        2
    );
}

fn tiny_cfg(classes: i64) -> FasterRcnnConfig {
    let mut cfg = FasterRcnnConfig::with_backbone("r18", classes);
    cfg.width = 8;
    cfg.fpn_channels = 16;
    cfg.anchors.scales = vec![2.0];
    cfg.rcnn.fc_channels = 32;
    cfg.rcnn.finest_scale = 14.0;
    cfg.rcnn.sampler.num = 64;
    cfg.rpn.sampler.num = 64;
    cfg.rpn.train.nms_pre = 300;
    cfg.rpn.train.max_per_img = 100;
    cfg.rpn.test = cfg.rpn.train;
    cfg
}

#[test]
fn the_network_has_mmdet_names_taps_p2_to_p6_and_the_contract_shapes() {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = build(&vs.root(), &tiny_cfg(3)).unwrap();
    let names: Vec<String> = vs.variables().into_keys().collect();
    for want in [
        "neck.lateral_convs.0.conv.weight",
        "neck.fpn_convs.3.conv.weight",
        "rpn_head.rpn_conv.weight",
        "rpn_head.rpn_cls.bias",
        "rpn_head.rpn_reg.weight",
        "roi_head.bbox_head.shared_fcs.0.weight",
        "roi_head.bbox_head.shared_fcs.1.bias",
        "roi_head.bbox_head.fc_cls.weight",
        "roi_head.bbox_head.fc_reg.weight",
    ] {
        assert!(names.iter().any(|n| n == want), "missing {want}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("neck.fpn_convs.4")),
        "P6 is pooled, not a conv"
    );
    assert_eq!(
        vs.variables()["roi_head.bbox_head.fc_reg.weight"].size(),
        [12, 32]
    );
    let strides: Vec<i64> = net.taps().iter().map(|t| t.stride).collect();
    assert_eq!(strides, [4, 8, 16, 32, 64]);
    let x = Tensor::zeros([2, 3, 64, 96], (Kind::Float, Device::Cpu));
    net.check_input(&x).unwrap();
    let out = net.forward_t(&x, false);
    let n = 3 * (16 * 24 + 8 * 12 + 4 * 6 + 2 * 3 + 2); // P2..P6 cells × 3 ratios
    assert_eq!(out.logits.size(), [2, n, 1]);
    assert_eq!(out.head("rpn_box").unwrap().size(), [2, n, 4]);
    let p6 = out.feature("p6").unwrap();
    let p5 = out.feature("p5").unwrap();
    // P6 is every second row and column of P5.
    let sub = p5.slice(2, 0, 2, 2).slice(3, 0, 3, 2);
    assert_eq!(vals(p6), vals(&sub));
    assert!(net
        .check_input(&Tensor::zeros([1, 3, 60, 64], (Kind::Float, Device::Cpu)))
        .is_err());
    assert!(FasterRcnn::of(&net).is_ok());
    let fake = crate::losses::fixtures::FakeDetector::new(&[8], 3);
    let err = FasterRcnn::of(&fake).unwrap_err().to_string();
    assert!(err.contains("not a Faster R-CNN"), "{err}");
}

#[test]
fn configs_read_from_toml_with_partial_sections_and_name_bad_keys() {
    let cfg: FasterRcnnConfig = toml::from_str(
        "backbone = 'r50'\nnum_classes = 80\n[rcnn.sampler]\nnum = 128\npos_fraction = 0.25\nadd_gt_as_proposals = true",
    )
    .unwrap();
    assert_eq!(cfg.rcnn.sampler.num, 128);
    assert_eq!(cfg.rcnn.assigner, AssignerConfig::rcnn());
    assert_eq!(cfg.rpn, RpnConfig::default());
    assert_eq!(cfg.name(), "faster_rcnn_r50_fpn");
    assert_eq!(
        FasterRcnnConfig::r50_fpn(80),
        FasterRcnnConfig {
            rcnn: RcnnConfig::default(),
            ..cfg.clone()
        }
    );
    assert!(
        toml::from_str::<FasterRcnnConfig>("backbone = 'r50'\nnum_classes = 80\nfpn_chanels = 3").is_err()
    );
    let mut bad = cfg.clone();
    bad.rpn.assigner.neg_iou_thr = 0.9;
    assert!(bad.validate().unwrap_err().to_string().contains("rpn.assigner"));
    let mut bad = cfg.clone();
    bad.anchors.ratios = vec![];
    assert!(bad.validate().unwrap_err().to_string().contains("anchors.ratios"));
    let mut bad = cfg;
    bad.backbone = "vgg".into();
    assert!(bad.validate().unwrap_err().to_string().contains("backbone"));
}

/// Two images of 64×64 with one bright square each (class 0) and one dark disc-like square
/// (class 1), as box rows `[2, 2, 6]`.
fn toy_batch() -> (Tensor, Tensor) {
    let x = Tensor::zeros([2, 3, 64, 64], (Kind::Float, Device::Cpu));
    let boxes = [
        [8.0f32, 8.0, 28.0, 28.0, 0.0, 0.0],
        [36.0, 30.0, 60.0, 58.0, 1.0, 0.0],
    ];
    let boxes2 = [
        [30.0f32, 4.0, 54.0, 24.0, 0.0, 0.0],
        [4.0, 36.0, 20.0, 60.0, 1.0, 0.0],
    ];
    for (i, bs) in [boxes, boxes2].iter().enumerate() {
        for b in bs {
            let v = if b[4] == 0.0 { 2.0 } else { -2.0 };
            let _ = x
                .get(i as i64)
                .slice(1, b[1] as i64, b[3] as i64, 1)
                .slice(2, b[0] as i64, b[2] as i64, 1)
                .fill_(v);
        }
    }
    let rows: Vec<f32> = [boxes, boxes2].iter().flatten().flatten().copied().collect();
    (x, Tensor::from_slice(&rows).view([2, 2, 6]))
}

#[test]
fn a_tiny_faster_rcnn_learns_the_toy_scenes() {
    let _g = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = build(&vs.root(), &tiny_cfg(2)).unwrap();
    let mut opt = nn::Sgd {
        momentum: 0.9,
        ..Default::default()
    }
    .build(&vs, 0.02)
    .unwrap();
    let (x, y) = toy_batch();
    let input = ImageSize::new(64.0, 64.0);
    let w = FrcnnLoss::default();
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..40 {
        let out = net.forward_t(&x, true);
        let terms = net.loss_terms(&out, &y, input, &w).unwrap();
        let names: Vec<&str> = terms.terms().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["rpn_cls", "rpn_box", "cls", "box"]);
        let total = terms.total().unwrap();
        last = total.double_value(&[]);
        first.get_or_insert(last);
        opt.backward_step_clip_norm(&total, 35.0);
    }
    let first = first.unwrap();
    assert!(last < 0.5 * first, "the loss went from {first} to {last}");
    let out = tch::no_grad(|| net.forward_t(&x, false));
    let dets = net
        .detect(&out, &[input, input], &PostprocessConfig::default())
        .unwrap();
    assert_eq!(dets.len(), 2);
    // Bad labels are named.
    let bad = y.copy();
    let _ = bad.get(1).get(0).get(4).fill_(7.0);
    let out = net.forward_t(&x, true);
    let err = net.loss_terms(&out, &bad, input, &w).unwrap_err().to_string();
    assert!(err.contains("image 1"), "{err}");
}
