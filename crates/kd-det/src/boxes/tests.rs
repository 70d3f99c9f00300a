use tch::{Device, Kind, Tensor};

use super::*;
use kd_core::losses::gradcheck::assert_shape_error;
use kd_core::models::{ModelOutput, Tap};

fn t2(v: &[f64], cols: i64) -> Tensor {
    Tensor::from_slice(v).view([-1, cols])
}

fn vec64(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

fn veci(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.reshape([-1])).unwrap()
}

fn close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
    }
}

#[test]
fn formats_convert_and_round_trip() {
    let b = t2(&[1.0, 2.0, 4.0, 8.0, -3.0, 0.5, 1.0, 2.5], 4);
    close(
        &vec64(&xyxy_to_xywh(&b).unwrap()),
        &[1.0, 2.0, 3.0, 6.0, -3.0, 0.5, 4.0, 2.0],
    );
    close(
        &vec64(&xyxy_to_cxcywh(&b).unwrap()),
        &[2.5, 5.0, 3.0, 6.0, -1.0, 1.5, 4.0, 2.0],
    );
    close(
        &vec64(&xywh_to_xyxy(&xyxy_to_xywh(&b).unwrap()).unwrap()),
        &vec64(&b),
    );
    close(
        &vec64(&cxcywh_to_xyxy(&xyxy_to_cxcywh(&b).unwrap()).unwrap()),
        &vec64(&b),
    );
    close(&vec64(&box_area(&b).unwrap()), &[18.0, 8.0]);
    // An inverted box has area 0.
    close(&vec64(&box_area(&t2(&[2.0, 0.0, 1.0, 5.0], 4)).unwrap()), &[0.0]);
    let bad = Tensor::zeros([3, 5], (Kind::Float, Device::Cpu));
    let err = xyxy_to_xywh(&bad).unwrap_err().to_string();
    assert!(err.contains("[3, 5]") && err.contains("boxes"), "{err}");
}

#[test]
fn iou_and_giou_hand_computed_cases() {
    let a = t2(&[0.0, 0.0, 2.0, 2.0], 4);
    // disjoint, nested, identical, touching (shared edge), half-overlapping.
    let b = t2(
        &[
            3.0, 3.0, 4.0, 4.0, 0.5, 0.5, 1.5, 1.5, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0, 4.0, 2.0, 1.0, 0.0, 3.0,
            2.0,
        ],
        4,
    );
    let iou = box_iou(&a, &b).unwrap();
    assert_eq!(iou.size(), [1, 5]);
    close(&vec64(&iou), &[0.0, 0.25, 1.0, 0.0, 1.0 / 3.0]);
    // Pairwise is symmetric.
    close(
        &vec64(&box_iou(&b, &a).unwrap()),
        &[0.0, 0.25, 1.0, 0.0, 1.0 / 3.0],
    );
    let a5 = a.expand([5, 4], false).contiguous();
    close(
        &vec64(&iou_aligned(&a5, &b).unwrap()),
        &[0.0, 0.25, 1.0, 0.0, 1.0 / 3.0],
    );
    // GIoU: disjoint C = 16, U = 5 → −11/16; nested C = U → IoU; touching C = U = 8 → 0.
    close(
        &vec64(&giou_aligned(&a5, &b).unwrap()),
        &[-11.0 / 16.0, 0.25, 1.0, 0.0, 1.0 / 3.0],
    );
    // Empty operands and degenerate boxes are fine.
    let e = Tensor::zeros([0, 4], (Kind::Float, Device::Cpu));
    assert_eq!(box_iou(&e, &b).unwrap().size(), [0, 5]);
    let point = t2(&[1.0, 1.0, 1.0, 1.0], 4);
    close(&vec64(&box_iou(&point, &point).unwrap()), &[0.0]);
    close(&vec64(&giou_aligned(&point, &point).unwrap()), &[0.0]);
    let b2 = b.narrow(0, 0, 2);
    assert_shape_error(giou_aligned(&a, &b2), &a, &b2);
}

#[test]
fn clip_keeps_boxes_inside_the_image() {
    let b = t2(&[-5.0, 2.0, 30.0, 50.0, 1.0, 1.0, 3.0, 3.0], 4);
    let c = clip_boxes(&b, ImageSize::new(20.0, 40.0)).unwrap();
    close(&vec64(&c), &[0.0, 2.0, 20.0, 40.0, 1.0, 1.0, 3.0, 3.0]);
}

#[test]
fn ltrb_coding_round_trips_and_clips() {
    let p = t2(&[5.0, 5.0, 10.0, 3.0], 2);
    let b = t2(&[0.0, 0.0, 10.0, 10.0, 8.0, 1.0, 20.0, 4.0], 4);
    let d = encode_ltrb(&p, &b).unwrap();
    close(&vec64(&d), &[5.0, 5.0, 5.0, 5.0, 2.0, 2.0, 10.0, 1.0]);
    close(&vec64(&decode_ltrb(&p, &d, None).unwrap()), &vec64(&b));
    let clipped = decode_ltrb(&p, &d, Some(ImageSize::new(12.0, 3.5))).unwrap();
    close(&vec64(&clipped), &[0.0, 0.0, 10.0, 3.5, 8.0, 1.0, 12.0, 3.5]);
    // A point outside its box has a negative distance.
    let out = encode_ltrb(&t2(&[-1.0, 5.0], 2), &t2(&[0.0, 0.0, 10.0, 10.0], 4)).unwrap();
    close(&vec64(&out), &[-1.0, 5.0, 11.0, 5.0]);
    let p3 = t2(&[0.0, 0.0, 1.0, 1.0, 2.0, 2.0], 2);
    assert_shape_error(encode_ltrb(&p3, &b), &p3, &b);
}

#[test]
fn anchor_points_follow_the_head_order() {
    let (p, s, l) = anchor_points(&[(2, 3), (1, 2)], &[8, 16], Device::Cpu).unwrap();
    assert_eq!(p.size(), [8, 2]);
    assert_eq!(p.kind(), Kind::Float);
    close(
        &vec64(&p),
        &[
            4., 4., 12., 4., 20., 4., 4., 12., 12., 12., 20., 12., 8., 8., 24., 8.,
        ],
    );
    close(&vec64(&s), &[8., 8., 8., 8., 8., 8., 16., 16.]);
    assert_eq!(veci(&l), [0, 0, 0, 0, 0, 0, 1, 1]);
    // An odd stride rounds the half-cell down.
    let (p, _, _) = anchor_points(&[(1, 2)], &[3], Device::Cpu).unwrap();
    close(&vec64(&p), &[1., 1., 4., 1.]);
    assert!(anchor_points(&[(2, 2)], &[8, 16], Device::Cpu).is_err());
    assert!(anchor_points(&[(2, 2)], &[0], Device::Cpu).is_err());
}

#[test]
fn nms_suppresses_overlaps_of_one_class_only() {
    // Box 1 overlaps box 0 (IoU 81/119) and has the higher score; box 2 is far away.
    let b = t2(
        &[1.0, 1.0, 11.0, 11.0, 0.0, 0.0, 10.0, 10.0, 20.0, 20.0, 30.0, 30.0],
        4,
    );
    let s = Tensor::from_slice(&[0.8f64, 0.9, 0.7]);
    let keep = nms(&b, &s, 0.5).unwrap();
    assert_eq!(keep.kind(), Kind::Int64);
    assert_eq!(veci(&keep), [1, 2]);
    // With a threshold above their IoU both stay, sorted by score.
    assert_eq!(veci(&nms(&b, &s, 0.7).unwrap()), [1, 0, 2]);
    // Different classes never suppress each other.
    let labels = Tensor::from_slice(&[0i64, 1, 0]);
    assert_eq!(veci(&batched_nms(&b, &s, &labels, 0.5).unwrap()), [1, 0, 2]);
    let same = Tensor::from_slice(&[3i64, 3, 3]);
    assert_eq!(veci(&batched_nms(&b, &s, &same, 0.5).unwrap()), [1, 2]);
}

#[test]
fn nms_threshold_boundary_is_exclusive() {
    // IoU exactly 0.5: kept at threshold 0.5, suppressed below it.
    let b = t2(&[0.0, 0.0, 4.0, 1.0, 0.0, 0.0, 2.0, 1.0], 4);
    let s = Tensor::from_slice(&[0.9f32, 0.6]);
    close(
        &vec64(&box_iou(&b.narrow(0, 0, 1), &b.narrow(0, 1, 1)).unwrap()),
        &[0.5],
    );
    assert_eq!(veci(&nms(&b, &s, 0.5).unwrap()), [0, 1]);
    assert_eq!(veci(&nms(&b, &s, 0.49).unwrap()), [0]);
}

#[test]
fn nms_handles_empty_input_and_ties() {
    let e = Tensor::zeros([0, 4], (Kind::Float, Device::Cpu));
    let es = Tensor::zeros([0], (Kind::Float, Device::Cpu));
    let keep = nms(&e, &es, 0.5).unwrap();
    assert_eq!(keep.size(), [0]);
    assert_eq!(keep.kind(), Kind::Int64);
    // Three identical boxes of equal score: the first index survives.
    let same = t2(&[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0], 4);
    let tie = Tensor::from_slice(&[0.5f32, 0.5, 0.5]);
    assert_eq!(veci(&nms(&same, &tie, 0.5).unwrap()), [0]);
    // Disjoint boxes of equal score keep their input order.
    let apart = t2(&[5.0, 5.0, 6.0, 6.0, 0.0, 0.0, 1.0, 1.0, 9.0, 9.0, 10.0, 10.0], 4);
    let s = Tensor::from_slice(&[0.5f32, 0.5, 0.7]);
    assert_eq!(veci(&nms(&apart, &s, 0.5).unwrap()), [2, 0, 1]);
    // Errors: mismatched scores, NaN, bad threshold.
    let s2 = Tensor::from_slice(&[0.5f32, 0.5]);
    assert_shape_error(nms(&apart, &s2, 0.5), &apart, &s2);
    let nan = Tensor::from_slice(&[0.5f32, f32::NAN, 0.1]);
    assert!(nms(&apart, &nan, 0.5).unwrap_err().to_string().contains("NaN"));
    assert!(nms(&apart, &s, 1.5).unwrap_err().to_string().contains("iou_thr"));
}

/// One level of 1×4 points at stride 8 (x = 4, 12, 20, 28; y = 4), K = 2, two images.
fn head_case() -> (Tensor, Tensor, Tensor, Tensor) {
    let (points, _, _) = anchor_points(&[(1, 4)], &[8], Device::Cpu).unwrap();
    #[rustfmt::skip]
    let logits = Tensor::from_slice(&[
        2.0f32, -9.0,  // p0: class 0 (0.881)
        1.0, 1.5,      // p1: class 0 (0.731, overlaps p0's box) and class 1 (0.818)
        -4.0, -4.0,    // p2: 0.018 < score_thr
        -9.0, 0.0,     // p3: class 1 (0.5)
        // image 2: nothing above the threshold
        -5.0, -5.0, -5.0, -5.0, -5.0, -5.0, -5.0, -5.0,
    ]).view([2, 4, 2]);
    #[rustfmt::skip]
    let dist = Tensor::from_slice(&[
        4.0f32, 4.0, 4.0, 4.0,   // [0, 0, 8, 8]
        12.0, 4.0, 0.0, 4.0,     // [0, 0, 12, 8]: IoU 2/3 with p0's box
        4.0, 4.0, 4.0, 4.0,
        4.0, 4.0, 10.0, 9.0,     // [24, 0, 38, 13] → clipped to [24, 0, 32, 10]
        4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0,
    ]).view([2, 4, 4]);
    let ctr = Tensor::zeros([2, 4, 1], (Kind::Float, Device::Cpu));
    (logits, dist, ctr, points)
}

fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[test]
fn postprocess_thresholds_suppresses_and_caps() {
    let (logits, dist, ctr, points) = head_case();
    let valid = [ImageSize::new(32.0, 10.0), ImageSize::new(32.0, 32.0)];
    let cfg = PostprocessConfig::default();
    let dets = postprocess(&logits, &dist, &ctr, &points, &[4], &valid, &cfg).unwrap();
    assert_eq!(dets.len(), 2);
    let d = &dets[0];
    // (p0, class 0), (p1, class 1), (p3, class 1); p1's class-0 box is suppressed by p0's.
    assert_eq!(veci(&d.labels), [0, 1, 1]);
    close(&vec64(&d.scores), &[sig(2.0) * 0.5, sig(1.5) * 0.5, 0.25]);
    close(
        &vec64(&d.boxes),
        &[0.0, 0.0, 8.0, 8.0, 0.0, 0.0, 12.0, 8.0, 24.0, 0.0, 32.0, 10.0],
    );
    assert_eq!(d.scores.kind(), Kind::Float);
    assert_eq!(d.labels.kind(), Kind::Int64);
    assert!(dets[1].is_empty());
    assert_eq!(dets[1].boxes.size(), [0, 4]);

    // At most max_per_img detections, the best ones.
    let capped = PostprocessConfig {
        max_per_img: 2,
        ..PostprocessConfig::default()
    };
    let dets = postprocess(&logits, &dist, &ctr, &points, &[4], &valid, &capped).unwrap();
    assert_eq!(veci(&dets[0].labels), [0, 1]);
    close(&vec64(&dets[0].scores), &[sig(2.0) * 0.5, sig(1.5) * 0.5]);

    // nms_pre keeps the best points of the level before anything else: p0 and p1.
    let pre = PostprocessConfig {
        nms_pre: 2,
        ..PostprocessConfig::default()
    };
    let dets = postprocess(&logits, &dist, &ctr, &points, &[4], &valid, &pre).unwrap();
    assert_eq!(veci(&dets[0].labels), [0, 1]);

    // The threshold applies to σ(cls) alone, not to σ(cls)·σ(ctr): 0.25 survives 0.3 only
    // through the classification score 0.5.
    let thr = PostprocessConfig {
        score_thr: 0.3,
        ..PostprocessConfig::default()
    };
    let dets = postprocess(&logits, &dist, &ctr, &points, &[4], &valid, &thr).unwrap();
    assert_eq!(dets[0].len(), 3);
}

#[test]
fn postprocess_reads_a_model_output_and_checks_shapes() {
    let (logits, dist, ctr, points) = head_case();
    let out = ModelOutput {
        logits: logits.shallow_clone(),
        aux_logits: None,
        features: vec![(
            "p3".into(),
            Tensor::zeros([2, 4, 1, 4], (Kind::Float, Device::Cpu)),
        )],
        pooled: None,
        heads: vec![
            ("box".into(), dist.shallow_clone()),
            ("centerness".into(), ctr.shallow_clone()),
        ],
    };
    let taps = [Tap {
        name: "p3".into(),
        channels: 4,
        stride: 8,
    }];
    let valid = [ImageSize::new(32.0, 10.0), ImageSize::new(32.0, 32.0)];
    let cfg = PostprocessConfig::default();
    let dets = postprocess_output(&out, &taps, &valid, &cfg).unwrap();
    assert_eq!(veci(&dets[0].labels), [0, 1, 1]);

    let short = logits.narrow(1, 0, 3);
    let err = postprocess(&short, &dist, &ctr, &points, &[4], &valid, &cfg).unwrap_err();
    assert!(err.to_string().contains("[2, 3, 2]"), "{err}");
    let bad_box = dist.narrow(2, 0, 3);
    assert_shape_error(
        postprocess(&logits, &bad_box, &ctr, &points, &[4], &valid, &cfg),
        &logits,
        &bad_box,
    );
    assert!(postprocess(&logits, &dist, &ctr, &points, &[4], &valid[..1], &cfg).is_err());
    let wrong_taps = [Tap {
        name: "p4".into(),
        channels: 4,
        stride: 8,
    }];
    assert!(postprocess_output(&out, &wrong_taps, &valid, &cfg)
        .unwrap_err()
        .to_string()
        .contains("p4"));
}

#[test]
fn postprocess_config_defaults_are_mmdetection_fcos() {
    let c: PostprocessConfig = toml::from_str("").unwrap();
    assert_eq!(c, PostprocessConfig::default());
    assert_eq!(
        (c.nms_pre, c.score_thr, c.iou_thr, c.max_per_img),
        (1000, 0.05, 0.5, 100)
    );
    assert!(toml::from_str::<PostprocessConfig>("nms_thr = 0.5").is_err());
    let bad = PostprocessConfig {
        iou_thr: 2.0,
        ..PostprocessConfig::default()
    };
    assert!(bad.validate().unwrap_err().to_string().contains("iou_thr"));
}

#[test]
fn truncated_nms_is_the_prefix_of_the_full_result() {
    tch::manual_seed(3);
    let xy = Tensor::rand([400, 2], (Kind::Float, Device::Cpu)) * 60.0;
    let wh = Tensor::rand([400, 2], (Kind::Float, Device::Cpu)) * 30.0 + 2.0;
    let b = Tensor::cat(&[&xy, &(&xy + &wh)], 1);
    let s = Tensor::rand([400], (Kind::Float, Device::Cpu));
    let labels = Tensor::randint(3, [400], (Kind::Int64, Device::Cpu));
    let full = veci(&batched_nms(&b, &s, &labels, 0.5).unwrap());
    assert!(full.len() > 20, "{}", full.len());
    for k in [0, 1, 7, 20, full.len(), full.len() + 5] {
        let top = veci(&batched_nms_top(&b, &s, &labels, 0.5, k).unwrap());
        assert_eq!(top, full[..k.min(full.len())], "max_keep {k}");
    }
}
