//! pycocotools' `COCOeval` for boxes (`evaluate`, `evaluateImg`, `accumulate`), step by step.
//!
//! The order of every sort, the tie rules and the floating-point formulas follow pycocotools
//! 2.0 so that results agree to rounding; where a choice looks arbitrary (which of two equal
//! IoUs wins, where an ignored detection sits in the precision curve) it is pycocotools' choice.

use std::cmp::Ordering;
use std::collections::HashMap;

use rayon::prelude::*;

use super::gt::{CocoGt, GtAnnotation};
use super::results::CocoDetection;
use super::stats::{summarize, CocoStats};
use kd_core::{KdError, Result};

/// Number of IoU thresholds (0.50, 0.55, …, 0.95).
pub(crate) const T: usize = 10;
/// Number of recall points (0, 0.01, …, 1).
pub(crate) const R: usize = 101;
/// Area ranges: all, small, medium, large.
pub(crate) const A: usize = 4;
/// Detection limits per image and category.
pub(crate) const M: usize = 3;
/// `maxDets`.
pub(crate) const MAX_DETS: [usize; M] = [1, 10, 100];
/// `areaRng` in pixels² (both ends inclusive), compared with the ground truth's `area` field
/// and with a detection's `w·h`.
pub(crate) const AREA_RANGES: [[f64; 2]; A] = [
    [0.0, 1e10],
    [0.0, 32.0 * 32.0],
    [32.0 * 32.0, 96.0 * 96.0],
    [96.0 * 96.0, 1e10],
];

/// `np.linspace(start, stop, n)` as NumPy computes it: `i·step + start`, the last point set to
/// `stop` (so e.g. the recall point 0.35 is `35 · 0.01 = 0.35000000000000003` and the IoU
/// threshold 0.9 is `0.8999999999999999`, which matters when a value lands exactly on one).
fn linspace<const N: usize>(start: f64, stop: f64) -> [f64; N] {
    let step = (stop - start) / (N - 1) as f64;
    let mut out = [0.0; N];
    for (i, v) in out.iter_mut().enumerate() {
        *v = i as f64 * step + start;
    }
    out[N - 1] = stop;
    out
}

/// `iouThrs`: 0.50:0.05:0.95.
pub(crate) fn iou_thresholds() -> [f64; T] {
    linspace(0.5, 0.95)
}

/// `recThrs`: 0:0.01:1.
fn recall_thresholds() -> [f64; R] {
    linspace(0.0, 1.0)
}

/// Descending by score, ties kept in their current order (pycocotools sorts `-score` with a
/// stable merge sort).
fn by_score_desc(a: f64, b: f64) -> Ordering {
    b.partial_cmp(&a).unwrap_or(Ordering::Equal)
}

/// IoU of two `[x, y, w, h]` boxes as pycocotools' `bbIou`; for a crowd ground truth the union
/// is the detection's area alone.
fn bb_iou(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let w = (d[2] + d[0]).min(g[2] + g[0]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[3] + d[1]).min(g[3] + g[1]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let (da, ga) = (d[2] * d[3], g[2] * g[3]);
    let i = w * h;
    let u = if crowd { da } else { da + ga - i };
    i / u
}

/// `evaluateImg` for one image, category and area range.
struct ImgEval {
    /// Scores of the kept detections, descending (at most 100).
    scores: Vec<f64>,
    /// `[T, D]`, row-major: matched at threshold `t` (to an annotation whose id is not 0).
    matched: Vec<bool>,
    /// `[T, D]`: ignored at threshold `t` (matched to an ignored annotation, or unmatched and
    /// outside the area range).
    ignored: Vec<bool>,
    /// Ground truth inside the area range and not crowd.
    positives: usize,
}

/// Evaluates one (image, category) pair for every area range. `dts` in results-file order.
fn eval_image(gts: &[&GtAnnotation], dts: &[&CocoDetection], iou_thr: &[f64; T]) -> [ImgEval; A] {
    let mut dts = dts.to_vec();
    dts.sort_by(|a, b| by_score_desc(a.score, b.score));
    dts.truncate(MAX_DETS[M - 1]);
    let (nd, ng) = (dts.len(), gts.len());
    // `ious[d * ng + g]` with the ground truth in its original order.
    let ious: Vec<f64> = dts
        .iter()
        .flat_map(|d| gts.iter().map(move |g| bb_iou(&d.bbox, &g.bbox, g.iscrowd)))
        .collect();
    std::array::from_fn(|a| {
        let [lo, hi] = AREA_RANGES[a];
        let outside = |area: f64| area < lo || area > hi;
        let gt_ignored: Vec<bool> = gts.iter().map(|g| g.iscrowd || outside(g.area)).collect();
        // Ground truth that counts first, ignored last, each group in its original order.
        let mut order: Vec<usize> = (0..ng).collect();
        order.sort_by_key(|&g| gt_ignored[g]);
        let mut matched = vec![false; T * nd];
        let mut ignored = vec![false; T * nd];
        for (t, &thr) in iou_thr.iter().enumerate() {
            let mut gt_taken = vec![false; ng];
            for (d, det) in dts.iter().enumerate() {
                let mut best = thr.min(1.0 - 1e-10);
                let mut m: Option<usize> = None;
                for &g in &order {
                    if gt_taken[g] && !gts[g].iscrowd {
                        continue;
                    }
                    // Once a counted annotation is matched, ignored ones cannot take over.
                    if m.is_some_and(|m| !gt_ignored[m]) && gt_ignored[g] {
                        break;
                    }
                    let iou = ious[d * ng + g];
                    if iou < best {
                        continue;
                    }
                    best = iou;
                    m = Some(g);
                }
                if let Some(g) = m {
                    ignored[t * nd + d] = gt_ignored[g];
                    matched[t * nd + d] = gts[g].id != 0;
                    gt_taken[g] = true;
                }
                if !matched[t * nd + d] && outside(det.bbox[2] * det.bbox[3]) {
                    ignored[t * nd + d] = true;
                }
            }
        }
        ImgEval {
            scores: dts.iter().map(|d| d.score).collect(),
            matched,
            ignored,
            positives: gt_ignored.iter().filter(|&&i| !i).count(),
        }
    })
}

/// One category's `precision` `[A, M, T, R]` and `recall` `[A, M, T]`, row-major, −1 where
/// undefined (no image with ground truth or detections, or no counted ground truth).
pub(crate) struct CatEval {
    pub(crate) precision: Vec<f64>,
    pub(crate) recall: Vec<f64>,
}

/// `accumulate` for one category, area range and detection limit.
fn accumulate(
    evals: &[ImgEval],
    max_det: usize,
    rec_thr: &[f64; R],
    precision: &mut [f64],
    recall: &mut [f64],
) {
    let positives: usize = evals.iter().map(|e| e.positives).sum();
    if evals.is_empty() || positives == 0 {
        return;
    }
    // (score, image, detection) in image order, then stably by descending score.
    let mut order: Vec<(f64, usize, usize)> = evals
        .iter()
        .enumerate()
        .flat_map(|(e, ev)| (0..ev.scores.len().min(max_det)).map(move |d| (ev.scores[d], e, d)))
        .collect();
    order.sort_by(|a, b| by_score_desc(a.0, b.0));
    let nd = order.len();
    let npig = positives as f64;
    let mut rc = Vec::with_capacity(nd);
    let mut pr = Vec::with_capacity(nd);
    for t in 0..T {
        rc.clear();
        pr.clear();
        let (mut tp, mut fp) = (0u64, 0u64);
        for &(_, e, d) in &order {
            let ev = &evals[e];
            let k = t * ev.scores.len() + d;
            if !ev.ignored[k] {
                if ev.matched[k] {
                    tp += 1;
                } else {
                    fp += 1;
                }
            }
            let (tpf, fpf) = (tp as f64, fp as f64);
            rc.push(tpf / npig);
            pr.push(tpf / (fpf + tpf + f64::EPSILON));
        }
        recall[t] = rc.last().copied().unwrap_or(0.0);
        for i in (1..nd).rev() {
            if pr[i] > pr[i - 1] {
                pr[i - 1] = pr[i];
            }
        }
        for (r, &thr) in rec_thr.iter().enumerate() {
            let i = rc.partition_point(|&x| x < thr);
            precision[t * R + r] = if i < nd { pr[i] } else { 0.0 };
        }
    }
}

/// All images of one category: `gts` and `dts` are `(image index, item)` in file order.
fn eval_category(
    gts: &[(usize, &GtAnnotation)],
    dts: &[(usize, &CocoDetection)],
    iou_thr: &[f64; T],
    rec_thr: &[f64; R],
) -> CatEval {
    let mut gts = gts.to_vec();
    let mut dts = dts.to_vec();
    gts.sort_by_key(|x| x.0);
    dts.sort_by_key(|x| x.0);
    let mut per_area: [Vec<ImgEval>; A] = std::array::from_fn(|_| Vec::new());
    let (mut gi, mut di) = (0, 0);
    while gi < gts.len() || di < dts.len() {
        let img = match (gts.get(gi), dts.get(di)) {
            (Some(g), Some(d)) => g.0.min(d.0),
            (Some(g), None) => g.0,
            (None, Some(d)) => d.0,
            (None, None) => unreachable!(),
        };
        let g_end = gi + gts[gi..].iter().take_while(|x| x.0 == img).count();
        let d_end = di + dts[di..].iter().take_while(|x| x.0 == img).count();
        let g: Vec<&GtAnnotation> = gts[gi..g_end].iter().map(|x| x.1).collect();
        let d: Vec<&CocoDetection> = dts[di..d_end].iter().map(|x| x.1).collect();
        for (dst, ev) in per_area.iter_mut().zip(eval_image(&g, &d, iou_thr)) {
            dst.push(ev);
        }
        (gi, di) = (g_end, d_end);
    }
    let mut precision = vec![-1.0; A * M * T * R];
    let mut recall = vec![-1.0; A * M * T];
    for (a, evals) in per_area.iter().enumerate() {
        for (m, &max_det) in MAX_DETS.iter().enumerate() {
            let am = a * M + m;
            accumulate(
                evals,
                max_det,
                rec_thr,
                &mut precision[am * T * R..(am + 1) * T * R],
                &mut recall[am * T..(am + 1) * T],
            );
        }
    }
    CatEval { precision, recall }
}

/// Evaluates `dets` against `gt` exactly as pycocotools'
/// `COCOeval(gt, gt.loadRes(dets), "bbox")` with default parameters followed by `evaluate()`,
/// `accumulate()` and `summarize()`: every ground-truth image and category is evaluated, a
/// detection's area is its `w·h`, at most 100 detections per image and category are kept by
/// score. Detections of a category absent from the ground truth are skipped (as pycocotools
/// does); an empty `dets` gives 0 wherever ground truth exists (pycocotools cannot load an
/// empty results list).
///
/// Errors: a detection on an image that is not in the ground truth (pycocotools asserts), a
/// non-finite number or a negative box side; the message names the detection's position and
/// image id.
pub fn evaluate_bbox(gt: &CocoGt, dets: &[CocoDetection]) -> Result<CocoStats> {
    let img_index: HashMap<i64, usize> = gt
        .image_ids()
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i))
        .collect();
    let cat_index: HashMap<i64, usize> = gt
        .category_ids()
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i))
        .collect();
    let k = cat_index.len();
    let mut gt_by_cat: Vec<Vec<(usize, &GtAnnotation)>> = vec![Vec::new(); k];
    for a in gt.annotations() {
        // `CocoGt` guarantees both ids are listed.
        gt_by_cat[cat_index[&a.category_id]].push((img_index[&a.image_id], a));
    }
    let mut dt_by_cat: Vec<Vec<(usize, &CocoDetection)>> = vec![Vec::new(); k];
    for (i, d) in dets.iter().enumerate() {
        d.check(i).map_err(KdError::invalid)?;
        let Some(&img) = img_index.get(&d.image_id) else {
            return Err(KdError::invalid(format!(
                "detection #{i}: image_id {} is not among the ground truth's images",
                d.image_id
            )));
        };
        if let Some(&c) = cat_index.get(&d.category_id) {
            dt_by_cat[c].push((img, d));
        }
    }
    let (iou_thr, rec_thr) = (iou_thresholds(), recall_thresholds());
    let per_cat: Vec<CatEval> = (0..k)
        .into_par_iter()
        .map(|c| eval_category(&gt_by_cat[c], &dt_by_cat[c], &iou_thr, &rec_thr))
        .collect();
    let gt_counts: Vec<usize> = gt_by_cat
        .iter()
        .map(|v| v.iter().filter(|(_, a)| !a.iscrowd).count())
        .collect();
    Ok(summarize(gt, dets.len(), &per_cat, &gt_counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_numpys() {
        let t = iou_thresholds();
        assert_eq!(t[0], 0.5);
        assert_eq!(t[5], 0.75);
        assert_eq!(t[8], 0.899_999_999_999_999_9);
        assert_eq!(t[9], 0.95);
        let r = recall_thresholds();
        assert_eq!(r[35], 0.350_000_000_000_000_03);
        assert_ne!(r[35], 0.35);
        assert_eq!(r[50], 0.5);
        assert_eq!(r[100], 1.0);
    }

    #[test]
    fn crowd_iou_divides_by_the_detection_area() {
        let g = [0.0, 0.0, 10.0, 10.0];
        let d = [5.0, 0.0, 10.0, 10.0];
        assert!((bb_iou(&d, &g, false) - 50.0 / 150.0).abs() < 1e-15);
        assert!((bb_iou(&d, &g, true) - 0.5).abs() < 1e-15);
        assert_eq!(bb_iou(&[10.0, 0.0, 5.0, 5.0], &g, false), 0.0);
    }
}
