//! The twelve numbers of pycocotools' `summarize()` and its printout.

use serde::{Deserialize, Serialize};

use super::eval::{CatEval, M, R, T};
use super::gt::CocoGt;

/// AP of one category (area "all", up to 100 detections per image).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CategoryAp {
    /// COCO category id.
    pub category_id: i64,
    /// AP@[.50:.95] as a fraction; −1 when the category has no (non-crowd) ground truth.
    pub ap: f64,
    /// AP at IoU 0.50; −1 likewise.
    pub ap50: f64,
    /// Non-crowd ground-truth boxes of the category.
    pub gt_boxes: usize,
}

/// pycocotools' `stats` for boxes, as fractions in `[0, 1]`; a value is −1 when no category has
/// ground truth in its area range (pycocotools prints `-1.000`). APs average precision over
/// the 101 recall points, the IoU thresholds and the categories with ground truth; ARs average
/// the final recall over the IoU thresholds and those categories.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CocoStats {
    /// AP@[IoU .50:.95], all areas, 100 detections (`stats[0]`, the COCO "box AP").
    pub ap: f64,
    /// AP@IoU .50 (`stats[1]`).
    pub ap50: f64,
    /// AP@IoU .75 (`stats[2]`).
    pub ap75: f64,
    /// AP for ground truth of area ≤ 32² (`stats[3]`).
    pub ap_small: f64,
    /// AP for area in [32², 96²] (`stats[4]`).
    pub ap_medium: f64,
    /// AP for area ≥ 96² (`stats[5]`).
    pub ap_large: f64,
    /// AR with 1 detection per image and category (`stats[6]`).
    pub ar1: f64,
    /// AR with 10 detections (`stats[7]`).
    pub ar10: f64,
    /// AR with 100 detections (`stats[8]`).
    pub ar100: f64,
    /// AR for small ground truth, 100 detections (`stats[9]`).
    pub ar_small: f64,
    /// AR for medium ground truth (`stats[10]`).
    pub ar_medium: f64,
    /// AR for large ground truth (`stats[11]`).
    pub ar_large: f64,
    /// Evaluated images (all images of the ground truth).
    pub images: usize,
    /// Evaluated categories (all categories of the ground truth).
    pub categories: usize,
    /// Detections given (including any of a category absent from the ground truth).
    pub detections: usize,
    /// Per category, ascending id.
    pub per_category: Vec<CategoryAp>,
}

/// Mean of the values above −1, or −1 when there is none (`np.mean(s[s > -1])`).
fn mean_defined(values: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for v in values.filter(|&v| v > -1.0) {
        sum += v;
        n += 1;
    }
    if n == 0 {
        -1.0
    } else {
        sum / n as f64
    }
}

fn ap(cats: &[CatEval], t: Option<usize>, a: usize, m: usize) -> f64 {
    let ts = t.map_or(0..T, |t| t..t + 1);
    mean_defined(cats.iter().flat_map(|c| {
        let base = (a * M + m) * T * R;
        c.precision[base + ts.start * R..base + ts.end * R]
            .iter()
            .copied()
    }))
}

fn ar(cats: &[CatEval], a: usize, m: usize) -> f64 {
    mean_defined(
        cats.iter()
            .flat_map(|c| c.recall[(a * M + m) * T..(a * M + m + 1) * T].iter().copied()),
    )
}

pub(crate) fn summarize(gt: &CocoGt, detections: usize, cats: &[CatEval], gt_boxes: &[usize]) -> CocoStats {
    let last = M - 1;
    let per_category = gt
        .category_ids()
        .iter()
        .zip(cats)
        .zip(gt_boxes)
        .map(|((&category_id, c), &gt_boxes)| {
            let one = std::slice::from_ref(c);
            CategoryAp {
                category_id,
                ap: ap(one, None, 0, last),
                ap50: ap(one, Some(0), 0, last),
                gt_boxes,
            }
        })
        .collect();
    CocoStats {
        ap: ap(cats, None, 0, last),
        ap50: ap(cats, Some(0), 0, last),
        ap75: ap(cats, Some(5), 0, last),
        ap_small: ap(cats, None, 1, last),
        ap_medium: ap(cats, None, 2, last),
        ap_large: ap(cats, None, 3, last),
        ar1: ar(cats, 0, 0),
        ar10: ar(cats, 0, 1),
        ar100: ar(cats, 0, 2),
        ar_small: ar(cats, 1, last),
        ar_medium: ar(cats, 2, last),
        ar_large: ar(cats, 3, last),
        images: gt.image_ids().len(),
        categories: cats.len(),
        detections,
        per_category,
    }
}

impl CocoStats {
    /// The twelve numbers in pycocotools' `stats` order.
    pub fn as_array(&self) -> [f64; 12] {
        [
            self.ap,
            self.ap50,
            self.ap75,
            self.ap_small,
            self.ap_medium,
            self.ap_large,
            self.ar1,
            self.ar10,
            self.ar100,
            self.ar_small,
            self.ar_medium,
            self.ar_large,
        ]
    }

    /// The twelve lines pycocotools' `summarize()` prints, character for character, each ending
    /// in a newline.
    pub fn summary(&self) -> String {
        const ROWS: [(bool, &str, &str, u32); 12] = [
            (true, "0.50:0.95", "all", 100),
            (true, "0.50", "all", 100),
            (true, "0.75", "all", 100),
            (true, "0.50:0.95", "small", 100),
            (true, "0.50:0.95", "medium", 100),
            (true, "0.50:0.95", "large", 100),
            (false, "0.50:0.95", "all", 1),
            (false, "0.50:0.95", "all", 10),
            (false, "0.50:0.95", "all", 100),
            (false, "0.50:0.95", "small", 100),
            (false, "0.50:0.95", "medium", 100),
            (false, "0.50:0.95", "large", 100),
        ];
        ROWS.iter()
            .zip(self.as_array())
            .map(|(&(is_ap, iou, area, max_dets), v)| {
                let (title, kind) = if is_ap {
                    ("Average Precision", "(AP)")
                } else {
                    ("Average Recall", "(AR)")
                };
                format!(" {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6} | maxDets={max_dets:>3} ] = {v:.3}\n")
            })
            .collect()
    }
}
