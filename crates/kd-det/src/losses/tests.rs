use tch::{Device, Kind, Tensor};

use super::fixtures::{fake_output, taps};
use super::*;
use crate::boxes::anchor_points;
use kd_core::losses::gradcheck::assert_shape_error;
use kd_core::models::ModelOutput;
use kd_core::KdError;

const K: i64 = 3;

fn veci(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.reshape([-1])).unwrap()
}

fn vecf(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

fn rows(v: &[f32]) -> Tensor {
    Tensor::from_slice(v).view([-1, 6])
}

/// A 128×128 input with levels P3–P5 (strides 8, 16, 32; maps 16², 8², 4²).
fn pyramid() -> (Tensor, Tensor, Tensor, Vec<(f64, f64)>) {
    let (p, s, l) = anchor_points(&[(16, 16), (8, 8), (4, 4)], &[8, 16, 32], Device::Cpu).unwrap();
    (p, s, l, default_regress_ranges(&[8, 16, 32]))
}

/// Index of the P3 point at column j, row i (x = 8j + 4, y = 8i + 4).
fn p3(i: i64, j: i64) -> i64 {
    i * 16 + j
}

/// Index of the P4 point at column j, row i (x = 16j + 8, y = 16i + 8).
fn p4(i: i64, j: i64) -> i64 {
    256 + i * 8 + j
}

#[test]
fn default_ranges_are_mmdetections_for_p3_to_p7() {
    let inf = f64::INFINITY;
    assert_eq!(
        default_regress_ranges(&[8, 16, 32, 64, 128]),
        [
            (-1.0, 64.0),
            (64.0, 128.0),
            (128.0, 256.0),
            (256.0, 512.0),
            (512.0, inf)
        ]
    );
    assert_eq!(
        default_regress_ranges(&[8, 16, 32]),
        [(-1.0, 64.0), (64.0, 128.0), (128.0, inf)]
    );
    assert_eq!(default_regress_ranges(&[8]), [(-1.0, inf)]);
}

#[test]
fn rows_drop_padding_and_crowd_and_name_bad_rows() {
    let r = rows(&[
        1.0, 2.0, 3.0, 4.0, 2.0, 0.0, //
        0.0, 0.0, 9.0, 9.0, 1.0, 1.0, // crowd
        -1.0, -1.0, -1.0, -1.0, -1.0, 0.0, // padding
    ]);
    let (b, l) = gt_from_rows(&r, K).unwrap();
    assert_eq!(vecf(&b), [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(veci(&l), [2]);
    let (b, l) = gt_from_rows(&rows(&[-1.0; 6]), K).unwrap();
    assert_eq!((b.size(), l.size()), (vec![0, 4], vec![0]));
    let err = gt_from_rows(
        &rows(&[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 3.0, 0.0]),
        K,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("row 1") && err.to_string().contains("class 3"),
        "{err}"
    );
    let err = gt_from_rows(&rows(&[0.0, 0.0, 1.0, 1.0, 1.5, 0.0]), K).unwrap_err();
    assert!(err.to_string().contains("1.5"), "{err}");
    let err = gt_from_rows(&rows(&[0.0, 0.0, f32::NAN, 1.0, 1.0, 0.0]), K).unwrap_err();
    assert!(err.to_string().contains("non-finite"), "{err}");
    assert!(gt_from_rows(&rows(&[0.0, 0.0, 1.0, 1.0, 1.0, 2.0]), K).is_err());
}

#[test]
fn assignment_on_a_hand_made_image() {
    let (p, s, l, ranges) = pyramid();
    let r = rows(&[
        10.0, 10.0, 42.0, 42.0, 0.0, 0.0, // A: 32×32, P3, centre (26, 26)
        20.0, 20.0, 60.0, 60.0, 1.0, 0.0, // B: 40×40, P3, centre (40, 40), overlaps A
        0.0, 0.0, 128.0, 128.0, 2.0, 0.0, // C: large, P4
        80.0, 0.0, 120.0, 40.0, 1.0, 1.0, // crowd: no target
        -1.0, -1.0, -1.0, -1.0, -1.0, 0.0, // padding
    ]);
    let (gb, gl) = gt_from_rows(&r, K).unwrap();
    let (labels, targets) = fcos_targets(&p, &s, &l, &ranges, &gb, &gl, K, Some(1.5)).unwrap();
    assert_eq!(labels.size(), [336]);
    assert_eq!(targets.size(), [336, 4]);
    let labels = veci(&labels);
    let mut expected = vec![K; 336];
    // A's centre region at P3 is [14, 38]²: columns/rows 2, 3, 4 (x = 20, 28, 36); the box's
    // border points at x = 12 are outside it.
    for i in 2..=4 {
        for j in 2..=4 {
            expected[p3(i, j) as usize] = 0;
        }
    }
    // B's centre region is [28, 52]²: columns/rows 4, 5; (4, 4) is also A's and goes to the
    // smaller A.
    for (i, j) in [(4, 5), (5, 4), (5, 5)] {
        expected[p3(i, j) as usize] = 1;
    }
    // C's distances exceed 64 everywhere, so it lives on P4 (range (64, 128]): its centre
    // region there is [40, 88]², points x = 56, 72. The P5 points' largest distance is at most
    // 80, below P5's range.
    for i in 3..=4 {
        for j in 3..=4 {
            expected[p4(i, j) as usize] = 2;
        }
    }
    assert_eq!(labels, expected);
    let t = |a: i64| vecf(&targets.get(a));
    assert_eq!(t(p3(2, 2)), [10.0, 10.0, 22.0, 22.0]);
    assert_eq!(t(p3(4, 4)), [26.0, 26.0, 6.0, 6.0]);
    assert_eq!(t(p3(5, 5)), [24.0, 24.0, 16.0, 16.0]);
    assert_eq!(t(p4(3, 3)), [56.0, 56.0, 72.0, 72.0]);
    assert_eq!(t(p3(0, 0)), [0.0; 4]);
}

#[test]
fn without_centre_sampling_the_whole_box_is_positive() {
    let (p, s, l, ranges) = pyramid();
    let (gb, gl) = gt_from_rows(&rows(&[10.0, 10.0, 42.0, 42.0, 0.0, 0.0]), K).unwrap();
    let (labels, _) = fcos_targets(&p, &s, &l, &ranges, &gb, &gl, K, None).unwrap();
    // Columns/rows 1..=4 (x = 12 … 36) lie strictly inside [10, 42].
    let pos: Vec<i64> = veci(&labels.lt(K).nonzero().view([-1]));
    let expected: Vec<i64> = (1..=4).flat_map(|i| (1..=4).map(move |j| p3(i, j))).collect();
    assert_eq!(pos, expected);
}

#[test]
fn equal_areas_resolve_to_the_first_box_and_empty_images_are_background() {
    let (p, s, l, ranges) = pyramid();
    let (gb, gl) = gt_from_rows(
        &rows(&[10.0, 10.0, 42.0, 42.0, 2.0, 0.0, 10.0, 10.0, 42.0, 42.0, 1.0, 0.0]),
        K,
    )
    .unwrap();
    let (labels, _) = fcos_targets(&p, &s, &l, &ranges, &gb, &gl, K, Some(1.5)).unwrap();
    let labels = veci(&labels);
    assert_eq!(labels.iter().filter(|&&c| c == 2).count(), 9);
    assert!(!labels.contains(&1));

    for r in [rows(&[-1.0; 6]), rows(&[0.0, 0.0, 128.0, 128.0, 0.0, 1.0])] {
        let (gb, gl) = gt_from_rows(&r, K).unwrap();
        let (labels, targets) = fcos_targets(&p, &s, &l, &ranges, &gb, &gl, K, Some(1.5)).unwrap();
        assert!(veci(&labels).iter().all(|&c| c == K));
        assert_eq!(targets.abs().sum(Kind::Double).double_value(&[]), 0.0);
    }
    assert!(fcos_targets(&p, &s, &l, &ranges[..2], &gb, &gl, K, None).is_err());
}

/// An output for one 128×128 image at P3–P5 whose box head predicts `dist` at every point.
fn output_with(dist: &Tensor, logits: &Tensor) -> ModelOutput {
    let mut out = fake_output(1, &[(16, 16), (8, 8), (4, 4)], K, 3);
    out.logits = logits.shallow_clone();
    out.heads[0].1 = dist.shallow_clone();
    out
}

#[test]
fn fcos_loss_terms_match_their_definitions() {
    let taps = taps(&[8, 16, 32]);
    let y = rows(&[10.0, 10.0, 42.0, 42.0, 0.0, 0.0, 0.0, 0.0, 128.0, 128.0, 2.0, 0.0]).view([1, 2, 6]);
    let loss = FcosLoss::default();
    let out = fake_output(1, &[(16, 16), (8, 8), (4, 4)], K, 3);
    let (labels, box_t, _) = loss.targets(&out, &taps, &y).unwrap();
    assert_eq!(labels.size(), [1, 336]);
    let labels = labels.view([-1]);
    let pos = labels.lt(K).nonzero().view([-1]);
    assert_eq!(pos.size()[0], 9 + 4);

    // Perfect distances: the box term vanishes, the others do not.
    let perfect = output_with(&box_t.shallow_clone(), &out.logits);
    let terms = loss.terms(&perfect, &taps, &y).unwrap();
    let v: Vec<f64> = terms.terms().iter().map(|(_, t)| t.double_value(&[])).collect();
    assert!(v[1].abs() < 1e-6, "{v:?}");

    // cls: focal sum over all points and classes / #positives.
    let terms = loss.terms(&out, &taps, &y).unwrap();
    let onehot = labels.one_hot(K + 1).narrow(1, 0, K).to_kind(Kind::Float);
    let focal = sigmoid_focal_loss(&out.logits.view([-1, K]), &onehot, 0.25, 2.0)
        .unwrap()
        .double_value(&[])
        / 13.0;
    let got: Vec<f64> = terms.terms().iter().map(|(_, t)| t.double_value(&[])).collect();
    assert!((got[0] - focal).abs() < 1e-5 * focal, "{got:?} vs {focal}");
    // ctr: mean BCE over the positives against their centre-ness targets.
    let ctr_t = centerness_targets(&box_t.view([-1, 4]).index_select(0, &pos)).unwrap();
    let ctr_logits = out.heads[1].1.view([-1]).index_select(0, &pos);
    let ctr = centerness_loss(&ctr_logits, &ctr_t).unwrap().double_value(&[]);
    assert!((got[2] - ctr).abs() < 1e-6, "{got:?} vs {ctr}");
    assert!(got[1] > 0.0 && got[1] <= 2.0);

    // Weights scale their term.
    let heavy = FcosLoss {
        box_weight: 2.0,
        ..FcosLoss::default()
    };
    let b2 = heavy.terms(&out, &taps, &y).unwrap().terms()[1]
        .1
        .double_value(&[]);
    assert!((b2 - 2.0 * got[1]).abs() < 1e-6);
}

#[test]
fn fcos_loss_without_positives_is_finite_and_differentiable() {
    let taps = taps(&[8, 16, 32]);
    let y = rows(&[-1.0, -1.0, -1.0, -1.0, -1.0, 0.0]).view([1, 1, 6]);
    let out = fake_output(1, &[(16, 16), (8, 8), (4, 4)], K, 4);
    let logits = out.logits.copy().set_requires_grad(true);
    let dist = out.heads[0].1.copy().set_requires_grad(true);
    let out = output_with(&dist, &logits);
    let terms = FcosLoss::default().terms(&out, &taps, &y).unwrap();
    let v: Vec<f64> = terms.terms().iter().map(|(_, t)| t.double_value(&[])).collect();
    assert!(v[0] > 0.0 && v[1] == 0.0 && v[2] == 0.0, "{v:?}");
    terms.total().unwrap().backward();
    assert!(logits.grad().abs().sum(Kind::Double).double_value(&[]) > 0.0);
    assert!(dist.grad().defined());
}

#[test]
fn fcos_loss_names_bad_shapes() {
    let taps = taps(&[8, 16, 32]);
    let sizes = [(16, 16), (8, 8), (4, 4)];
    let y = rows(&[10.0, 10.0, 42.0, 42.0, 0.0, 0.0]).view([1, 1, 6]);
    let loss = FcosLoss::default();

    // Logits with one point too many for the feature maps.
    let mut out = fake_output(1, &sizes, K, 5);
    out.logits = Tensor::zeros([1, 337, K], (Kind::Float, Device::Cpu));
    let err = loss.terms(&out, &taps, &y).unwrap_err();
    assert!(
        matches!(err, KdError::BadShape { .. }) && err.to_string().contains("[1, 337, 3]"),
        "{err}"
    );

    // A box head of the wrong width.
    let mut out = fake_output(1, &sizes, K, 5);
    out.heads[0].1 = Tensor::zeros([1, 336, 2], (Kind::Float, Device::Cpu));
    let (l, b) = (out.logits.shallow_clone(), out.heads[0].1.shallow_clone());
    assert_shape_error(loss.terms(&out, &taps, &y), &l, &b);

    // Labels of another batch size or layout.
    let out = fake_output(1, &sizes, K, 5);
    let y2 = Tensor::zeros([2, 1, 6], (Kind::Float, Device::Cpu));
    assert_shape_error(loss.terms(&out, &taps, &y2), &out.logits, &y2);
    let y5 = Tensor::zeros([1, 1, 5], (Kind::Float, Device::Cpu));
    assert_shape_error(loss.terms(&out, &taps, &y5), &out.logits, &y5);

    // A missing head, mismatched taps, a class out of range, ranges for the wrong level count.
    let mut out = fake_output(1, &sizes, K, 5);
    out.heads.pop();
    assert!(loss
        .terms(&out, &taps, &y)
        .unwrap_err()
        .to_string()
        .contains("centerness"));
    let out = fake_output(1, &sizes, K, 5);
    assert!(loss
        .terms(&out, &taps[..2], &y)
        .unwrap_err()
        .to_string()
        .contains("taps"));
    let bad = rows(&[10.0, 10.0, 42.0, 42.0, 7.0, 0.0]).view([1, 1, 6]);
    let err = loss.terms(&out, &taps, &bad).unwrap_err().to_string();
    assert!(err.contains("image 0") && err.contains("row 0"), "{err}");
    let two = FcosLoss {
        regress_ranges: Some(vec![[-1.0, 64.0], [64.0, f64::INFINITY]]),
        ..FcosLoss::default()
    };
    assert!(two
        .terms(&out, &taps, &y)
        .unwrap_err()
        .to_string()
        .contains("regress_ranges"));
}

#[test]
fn prior_bias_gives_the_prior_probability() {
    let b = prior_bias(0.01);
    assert!((b + 99f64.ln()).abs() < 1e-12);
    assert!((1.0 / (1.0 + (-b).exp()) - 0.01).abs() < 1e-12);
}
