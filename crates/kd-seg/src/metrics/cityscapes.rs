//! Pixel-level evaluation of predictions saved in the Cityscapes format.
//!
//! This follows the official `cityscapesscripts` evaluation (`evalPixelLevelSemanticLabeling`,
//! class IoU only):
//!
//! - every `*_gtFine_labelIds.png` under the ground-truth folder (recursively) is evaluated;
//! - its prediction is the one `.png` file under the prediction folder (recursively) whose name
//!   starts with `<city>_<seq>_<frame>` (the official pattern `city_seq_frame*.png`); none or
//!   several is an error;
//! - prediction and ground truth must be 8-bit grey maps of label ids (`0..=33`) of one size;
//! - one confusion matrix over label ids is accumulated over all images;
//! - for each of the 19 evaluated labels `l`: `tp = C[l,l]`; `fn` = the rest of row `l`, i.e.
//!   every pixel of `l` predicted as anything else, *including* label ids that are ignored in
//!   evaluation (a prediction of "unlabeled" on a road pixel is a miss); `fp = Σ C[l',l]` over
//!   the other *evaluated* labels `l'` only, so pixels whose ground truth is an ignored id are
//!   never false positives; `IoU = tp / (tp + fp + fn)`, undefined (NaN) when the denominator
//!   is 0;
//! - the mean is taken over the classes with a defined IoU.
//!
//! The official script also reports an instance-weighted iIoU and category scores; they are not
//! computed here.
//!
//! Checked against `cityscapesscripts` 2.3.0 with `scripts/check_cityscapes_eval.sh` on 40
//! synthetic 256×128 validation scenes with perturbed predictions (including pixels predicted
//! as ignored label ids): identical confusion matrices, and every class IoU and the mean
//! (0.386225) equal; see `docs/cityscapes-data.md`.

use std::fs;
use std::path::{Path, PathBuf};

use image::GrayImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::labels::{label_by_id, CLASS_NAMES, MAX_LABEL_ID, TRAIN_TO_LABEL};
use crate::data::{read_label_png, LABEL_SUFFIX};
use kd_core::{KdError, Result};
use kd_vision::image_ops::write_label_png;

/// Size of the label-id confusion matrix (ids `0..=33`).
const N: usize = MAX_LABEL_ID as usize + 1;

/// One evaluated class of an [`EvalReport`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CsClassScore {
    /// Class name.
    pub name: String,
    /// Label id.
    pub label_id: u8,
    /// Training id.
    pub train_id: u8,
    /// IoU as a fraction in `[0, 1]` (the official script's number); `None` where it is NaN.
    pub iou: Option<f64>,
    /// True positives.
    pub tp: u64,
    /// False positives (pixels of other evaluated labels predicted as this one).
    pub fp: u64,
    /// False negatives (pixels of this label predicted as any other label id, ignored ids
    /// included).
    pub fn_: u64,
}

/// The result of [`eval_cityscapes_dirs`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Number of evaluated images.
    pub images: usize,
    /// The 19 classes in training-id order.
    pub classes: Vec<CsClassScore>,
    /// Mean class IoU as a fraction in `[0, 1]`, as the official script prints it
    /// ("Score Average"); NaN when no class has an IoU.
    pub mean_iou: f64,
    /// The same mean in percent (`100 · mean_iou`), the usual "mIoU" of papers.
    pub miou: f64,
    /// Confusion matrix over label ids `0..=33`, `[ground truth][prediction]`.
    pub confusion: Vec<Vec<u64>>,
}

fn files_recursive(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| KdError::file(dir, format!("cannot list folder: {e}")))?;
    for e in entries {
        let p = e
            .map_err(|e| KdError::file(dir, format!("cannot list folder: {e}")))?
            .path();
        if p.is_dir() {
            files_recursive(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `<city>_<seq>_<frame>` of a Cityscapes file name, or `None` when it has fewer parts.
fn cs_key(name: &str) -> Option<String> {
    let parts: Vec<&str> = name.split('_').collect();
    (parts.len() >= 4).then(|| format!("{}_{}_{}", parts[0], parts[1], parts[2]))
}

fn accumulate(pred_path: &Path, gt_path: &Path) -> Result<Vec<u64>> {
    let gt = read_label_png(gt_path)?;
    let pred = read_label_png(pred_path)?;
    if gt.dimensions() != pred.dimensions() {
        return Err(KdError::file(
            pred_path,
            format!(
                "prediction is {}×{} but its ground truth {} is {}×{}",
                pred.width(),
                pred.height(),
                gt_path.display(),
                gt.width(),
                gt.height()
            ),
        ));
    }
    let mut m = vec![0u64; N * N];
    for (&g, &p) in gt.iter().zip(pred.iter()) {
        if g > MAX_LABEL_ID {
            return Err(KdError::file(gt_path, format!("unknown label id {g}")));
        }
        if p > MAX_LABEL_ID {
            return Err(KdError::file(
                pred_path,
                format!("unknown label id {p} (expected 0..=33)"),
            ));
        }
        m[g as usize * N + p as usize] += 1;
    }
    Ok(m)
}

/// Evaluates the predictions under `pred_dir` against the ground truth under `gt_dir` as the
/// official script does; see the module docs. Errors name the file concerned.
pub fn eval_cityscapes_dirs(pred_dir: &Path, gt_dir: &Path) -> Result<EvalReport> {
    for d in [pred_dir, gt_dir] {
        if !d.is_dir() {
            return Err(KdError::file(d, "not a folder (or does not exist)"));
        }
    }
    let mut gts = Vec::new();
    files_recursive(gt_dir, &mut gts)?;
    gts.retain(|p| file_name(p).ends_with(LABEL_SUFFIX));
    gts.sort();
    if gts.is_empty() {
        return Err(KdError::file(
            gt_dir,
            format!("no *{LABEL_SUFFIX} files found (searched recursively)"),
        ));
    }
    let mut preds = Vec::new();
    files_recursive(pred_dir, &mut preds)?;
    preds.retain(|p| file_name(p).ends_with(".png"));
    preds.sort();
    let pairs = gts
        .iter()
        .map(|gt| {
            let key = cs_key(&file_name(gt))
                .ok_or_else(|| KdError::file(gt, "name is not <city>_<seq>_<frame>_gtFine_labelIds.png"))?;
            let found: Vec<&PathBuf> = preds.iter().filter(|p| file_name(p).starts_with(&key)).collect();
            match found.as_slice() {
                [one] => Ok(((*one).clone(), gt.clone())),
                [] => Err(KdError::file(
                    gt,
                    format!("no prediction {key}*.png found under {}", pred_dir.display()),
                )),
                many => Err(KdError::file(
                    gt,
                    format!(
                        "several predictions match {key}*.png: {}",
                        many.iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let total = pairs.par_iter().map(|(p, g)| accumulate(p, g)).try_reduce(
        || vec![0u64; N * N],
        |mut a, b| {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
            Ok(a)
        },
    )?;
    let c = |g: u8, p: u8| total[g as usize * N + p as usize];
    let classes: Vec<CsClassScore> = TRAIN_TO_LABEL
        .iter()
        .enumerate()
        .map(|(t, &l)| {
            let tp = c(l, l);
            let fn_: u64 = (0..N as u8).filter(|&o| o != l).map(|o| c(l, o)).sum();
            let fp: u64 = TRAIN_TO_LABEL.iter().filter(|&&o| o != l).map(|&o| c(o, l)).sum();
            let denom = tp + fp + fn_;
            CsClassScore {
                name: label_by_id(l).map_or(CLASS_NAMES[t], |x| x.name).to_string(),
                label_id: l,
                train_id: t as u8,
                iou: (denom > 0).then(|| tp as f64 / denom as f64),
                tp,
                fp,
                fn_,
            }
        })
        .collect();
    let defined: Vec<f64> = classes.iter().filter_map(|c| c.iou).collect();
    let mean_iou = if defined.is_empty() {
        f64::NAN
    } else {
        defined.iter().sum::<f64>() / defined.len() as f64
    };
    Ok(EvalReport {
        images: pairs.len(),
        classes,
        mean_iou,
        miou: 100.0 * mean_iou,
        confusion: total.chunks(N).map(<[u64]>::to_vec).collect(),
    })
}

/// Turns a training-id map into a label-id map for the official format (ignore → 0,
/// "unlabeled").
pub fn prediction_to_label_ids(train_ids: &GrayImage) -> GrayImage {
    let mut out = train_ids.clone();
    for v in out.iter_mut() {
        *v = TRAIN_TO_LABEL.get(*v as usize).copied().unwrap_or(0);
    }
    out
}

/// Saves a training-id prediction as `dir/<name>_pred_labelIds.png` in label ids (see
/// [`prediction_to_label_ids`]), where `name` is the sample's `<city>_<seq>_<frame>`.
pub fn save_cityscapes_prediction(dir: &Path, name: &str, train_ids: &GrayImage) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(|e| KdError::file(dir, format!("cannot create folder: {e}")))?;
    let path = dir.join(format!("{name}_pred_labelIds.png"));
    write_label_png(&path, &prediction_to_label_ids(train_ids))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gt_file(root: &Path, city: &str, frame: u32, ids: &[u8], w: u32) -> PathBuf {
        let d = root.join("gtFine/val").join(city);
        fs::create_dir_all(&d).unwrap();
        let p = d.join(format!("{city}_000000_{frame:06}{LABEL_SUFFIX}"));
        let img = GrayImage::from_raw(w, ids.len() as u32 / w, ids.to_vec()).unwrap();
        write_label_png(&p, &img).unwrap();
        p
    }

    fn pred_file(root: &Path, name: &str, ids: &[u8], w: u32) {
        fs::create_dir_all(root).unwrap();
        let img = GrayImage::from_raw(w, ids.len() as u32 / w, ids.to_vec()).unwrap();
        write_label_png(&root.join(name), &img).unwrap();
    }

    #[test]
    fn official_counting_rules() {
        let tmp = tempfile::tempdir().unwrap();
        let (gt, pred) = (tmp.path().join("gt"), tmp.path().join("pred"));
        // Image 1: road 7, sidewalk 8, car 26, unlabeled 0.
        //   gt:   7 7 7 8 | 8 26 26 0
        //   pred: 7 7 0 8 | 7 26 13 26
        // Pixel 3 (road predicted as label 0, which is ignored in evaluation) is still a miss
        // for road; pixel 8 (gt unlabeled, predicted car) is no false positive for car; pixel 7
        // (car predicted as fence 13) is a miss for car and a false positive for fence.
        gt_file(&gt, "aachen", 1, &[7, 7, 7, 8, 8, 26, 26, 0], 4);
        pred_file(
            &pred.join("a"),
            "aachen_000000_000001_leftImg8bit.png",
            &[7, 7, 0, 8, 7, 26, 13, 26],
            4,
        );
        // Image 2 (other city, nested folder): all sky, predicted right.
        gt_file(&gt, "bonn", 2, &[23; 4], 2);
        pred_file(&pred.join("x/y"), "bonn_000000_000002_pred.png", &[23; 4], 2);
        let r = eval_cityscapes_dirs(&pred, &gt).unwrap();
        assert_eq!(r.images, 2);
        let by = |name: &str| r.classes.iter().find(|c| c.name == name).unwrap().clone();
        let road = by("road");
        assert_eq!((road.tp, road.fp, road.fn_), (2, 1, 1));
        assert_eq!(road.iou, Some(0.5));
        let sidewalk = by("sidewalk");
        assert_eq!((sidewalk.tp, sidewalk.fp, sidewalk.fn_), (1, 0, 1));
        let car = by("car");
        assert_eq!((car.tp, car.fp, car.fn_), (1, 0, 1));
        let fence = by("fence");
        assert_eq!((fence.tp, fence.fp, fence.fn_, fence.iou), (0, 1, 0, Some(0.0)));
        assert_eq!(by("sky").iou, Some(1.0));
        assert_eq!(by("bus").iou, None);
        let expected = (0.5 + 0.5 + 0.5 + 0.0 + 1.0) / 5.0;
        assert!((r.mean_iou - expected).abs() < 1e-12);
        assert!((r.miou - 100.0 * expected).abs() < 1e-9);
        assert_eq!(r.confusion[0][26], 1);
        assert_eq!(r.classes.len(), 19);
        assert_eq!(r.classes[13].label_id, 26);
    }

    #[test]
    fn matching_and_format_errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let (gt, pred) = (tmp.path().join("gt"), tmp.path().join("pred"));
        gt_file(&gt, "aachen", 1, &[7; 8], 4);
        fs::create_dir_all(&pred).unwrap();
        let msg = eval_cityscapes_dirs(&pred, &gt).unwrap_err().to_string();
        assert!(
            msg.contains("aachen_000000_000001_gtFine_labelIds.png") && msg.contains("no prediction"),
            "{msg}"
        );
        pred_file(&pred, "aachen_000000_000001_a.png", &[7; 8], 4);
        pred_file(&pred.join("sub"), "aachen_000000_000001_b.png", &[7; 8], 4);
        let msg = eval_cityscapes_dirs(&pred, &gt).unwrap_err().to_string();
        assert!(
            msg.contains("several predictions") && msg.contains("_b.png"),
            "{msg}"
        );
        fs::remove_dir_all(pred.join("sub")).unwrap();
        pred_file(&pred, "aachen_000000_000001_a.png", &[7; 4], 2);
        let msg = eval_cityscapes_dirs(&pred, &gt).unwrap_err().to_string();
        assert!(
            msg.contains("aachen_000000_000001_a.png") && msg.contains("2×2"),
            "{msg}"
        );
        pred_file(&pred, "aachen_000000_000001_a.png", &[40; 8], 4);
        let msg = eval_cityscapes_dirs(&pred, &gt).unwrap_err().to_string();
        assert!(
            msg.contains("aachen_000000_000001_a.png") && msg.contains("unknown label id 40"),
            "{msg}"
        );
        fs::write(pred.join("aachen_000000_000001_a.png"), b"junk").unwrap();
        let msg = eval_cityscapes_dirs(&pred, &gt).unwrap_err().to_string();
        assert!(msg.contains("aachen_000000_000001_a.png"), "{msg}");
        let msg = eval_cityscapes_dirs(&pred, &tmp.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("nope"), "{msg}");
    }

    #[test]
    fn saved_predictions_use_label_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let t = GrayImage::from_raw(4, 1, vec![0, 13, 18, 255]).unwrap();
        let p = save_cityscapes_prediction(tmp.path(), "lindau_000001_000019", &t).unwrap();
        assert!(file_name(&p).starts_with("lindau_000001_000019"));
        assert_eq!(read_label_png(&p).unwrap().as_raw(), &vec![7, 26, 33, 0]);
    }
}
