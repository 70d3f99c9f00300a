//! The part of a COCO `instances_*.json` file that box evaluation reads.
//!
//! Only image ids, category ids and the annotations' `id`, `image_id`, `category_id`, `bbox`,
//! `area` and `iscrowd` are read; every other key (segmentations, file names, licences, an
//! `ignore` flag, which pycocotools overwrites with `iscrowd` anyway) is skipped. Fields are
//! first read as loose JSON values and checked one by one so that every error names the
//! annotation id.
//!
//! Stricter than pycocotools on purpose: an annotation whose image or category is not listed,
//! a duplicated image, category or annotation id, a negative box side or area, and a
//! non-finite number are errors (pycocotools skips the first, lets a duplicated annotation id
//! shadow the other one, and computes on the rest).

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use kd_core::{KdError, Result};

/// One ground-truth annotation, in original image pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct GtAnnotation {
    /// Annotation id. pycocotools records a match as the matched annotation's id and reads 0 as
    /// "unmatched", so a detection matched to an annotation with id 0 counts as a false
    /// positive; this evaluator reproduces that.
    pub id: i64,
    /// Image id (one of the file's `images`).
    pub image_id: i64,
    /// Category id (one of the file's `categories`).
    pub category_id: i64,
    /// `[x, y, w, h]`: top-left corner and size, pixels, `w, h ≥ 0`.
    pub bbox: [f64; 4],
    /// The annotation's `area` field (pixels²; the segment area in COCO, not `w·h`), which
    /// decides the small / medium / large range.
    pub area: f64,
    /// A crowd region: never a miss, and detections matched to it are ignored.
    pub iscrowd: bool,
}

/// Ground truth for box evaluation: image ids, category ids and annotations.
#[derive(Clone, Debug, PartialEq)]
pub struct CocoGt {
    image_ids: Vec<i64>,
    category_ids: Vec<i64>,
    annotations: Vec<GtAnnotation>,
}

#[derive(Deserialize)]
struct RawFile {
    images: Option<Vec<RawEntry>>,
    categories: Option<Vec<RawEntry>>,
    #[serde(default)]
    annotations: Vec<RawAnn>,
}

#[derive(Deserialize)]
struct RawEntry {
    id: Option<Value>,
}

#[derive(Deserialize)]
struct RawAnn {
    id: Option<Value>,
    image_id: Option<Value>,
    category_id: Option<Value>,
    bbox: Option<Value>,
    area: Option<Value>,
    iscrowd: Option<Value>,
}

fn as_id(v: Option<&Value>) -> std::result::Result<i64, String> {
    match v {
        None | Some(Value::Null) => Err("is missing".into()),
        Some(v) => v.as_i64().ok_or_else(|| format!("must be an integer, got {v}")),
    }
}

fn as_number(v: Option<&Value>) -> std::result::Result<f64, String> {
    match v {
        None | Some(Value::Null) => Err("is missing".into()),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("must be a finite number, got {v}")),
    }
}

/// Checks a `[x, y, w, h]` box: four finite numbers with `w, h ≥ 0`.
pub(crate) fn check_bbox(b: &[f64; 4]) -> std::result::Result<(), String> {
    if b.iter().any(|v| !v.is_finite()) {
        return Err(format!("bbox {b:?} has a non-finite value"));
    }
    if b[2] < 0.0 || b[3] < 0.0 {
        return Err(format!("bbox {b:?} has a negative width or height"));
    }
    Ok(())
}

fn parse_bbox(v: Option<&Value>) -> std::result::Result<[f64; 4], String> {
    let arr = match v {
        None | Some(Value::Null) => return Err("bbox is missing".into()),
        Some(Value::Array(a)) if a.len() == 4 => a,
        Some(other) => return Err(format!("bbox must be [x, y, w, h], got {other}")),
    };
    let mut b = [0.0; 4];
    for (dst, src) in b.iter_mut().zip(arr) {
        *dst = src
            .as_f64()
            .ok_or_else(|| format!("bbox must be four numbers, got {}", Value::Array(arr.clone())))?;
    }
    check_bbox(&b)?;
    Ok(b)
}

fn parse_crowd(v: Option<&Value>) -> std::result::Result<bool, String> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => match v.as_i64() {
            Some(0) => Ok(false),
            Some(1) => Ok(true),
            _ => Err(format!("iscrowd must be 0 or 1, got {v}")),
        },
    }
}

fn ids_of(entries: Option<Vec<RawEntry>>, key: &str, path: &Path) -> Result<Vec<i64>> {
    let entries = entries.ok_or_else(|| KdError::file(path, format!("no \"{key}\" list")))?;
    let mut seen = HashSet::new();
    let mut ids = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let id = as_id(e.id.as_ref()).map_err(|m| KdError::file(path, format!("{key}[{i}]: id {m}")))?;
        if !seen.insert(id) {
            return Err(KdError::file(path, format!("{key}: id {id} is listed twice")));
        }
        ids.push(id);
    }
    ids.sort_unstable();
    Ok(ids)
}

impl CocoGt {
    /// Reads a COCO detection ground-truth file (`instances_*.json` layout); see the module
    /// docs for what is read and checked. Errors name the file and the annotation id.
    pub fn from_file(path: &Path) -> Result<CocoGt> {
        let text =
            std::fs::read_to_string(path).map_err(|e| KdError::file(path, format!("cannot read: {e}")))?;
        let raw: RawFile = serde_json::from_str(&text)
            .map_err(|e| KdError::file(path, format!("not a COCO annotation file: {e}")))?;
        let image_ids = ids_of(raw.images, "images", path)?;
        let category_ids = ids_of(raw.categories, "categories", path)?;
        let annotations = raw
            .annotations
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let id = as_id(a.id.as_ref())
                    .map_err(|m| KdError::file(path, format!("annotations[{i}]: id {m}")))?;
                let ctx = |m: String| KdError::file(path, format!("annotation id {id}: {m}"));
                Ok(GtAnnotation {
                    id,
                    image_id: as_id(a.image_id.as_ref()).map_err(|m| ctx(format!("image_id {m}")))?,
                    category_id: as_id(a.category_id.as_ref())
                        .map_err(|m| ctx(format!("category_id {m}")))?,
                    bbox: parse_bbox(a.bbox.as_ref()).map_err(ctx)?,
                    area: as_number(a.area.as_ref()).map_err(|m| ctx(format!("area {m}")))?,
                    iscrowd: parse_crowd(a.iscrowd.as_ref()).map_err(ctx)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        CocoGt::from_parts(image_ids, category_ids, annotations).map_err(|e| match e {
            KdError::Invalid(m) => KdError::file(path, m),
            other => other,
        })
    }

    /// Ground truth from its parts (for evaluating data held in memory). Checks what
    /// [`CocoGt::from_file`] checks: unique ids, annotations on listed images and categories,
    /// valid boxes and areas; errors name the annotation id.
    pub fn from_parts(
        mut image_ids: Vec<i64>,
        mut category_ids: Vec<i64>,
        annotations: Vec<GtAnnotation>,
    ) -> Result<CocoGt> {
        for (ids, what) in [(&mut image_ids, "image"), (&mut category_ids, "category")] {
            ids.sort_unstable();
            if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
                return Err(KdError::invalid(format!("{what} id {} is listed twice", w[0])));
            }
        }
        let mut seen = HashSet::with_capacity(annotations.len());
        for a in &annotations {
            let bad = |m: String| Err(KdError::invalid(format!("annotation id {}: {m}", a.id)));
            if !seen.insert(a.id) {
                return bad("the id is used twice".into());
            }
            if image_ids.binary_search(&a.image_id).is_err() {
                return bad(format!("image_id {} is not among the images", a.image_id));
            }
            if category_ids.binary_search(&a.category_id).is_err() {
                return bad(format!(
                    "category_id {} is not among the categories",
                    a.category_id
                ));
            }
            if let Err(m) = check_bbox(&a.bbox) {
                return bad(m);
            }
            if !(a.area.is_finite() && a.area >= 0.0) {
                return bad(format!("area {} must be a finite number ≥ 0", a.area));
            }
        }
        Ok(CocoGt {
            image_ids,
            category_ids,
            annotations,
        })
    }

    /// Image ids, ascending (every one is evaluated, with or without annotations).
    pub fn image_ids(&self) -> &[i64] {
        &self.image_ids
    }

    /// Category ids, ascending (every one is evaluated; one without annotations has no AP).
    pub fn category_ids(&self) -> &[i64] {
        &self.category_ids
    }

    /// The annotations, in file order.
    pub fn annotations(&self) -> &[GtAnnotation] {
        &self.annotations
    }

    /// The ground truth of the images `image_ids` alone (every category kept): what a split
    /// of these images is scored against. Fails on an id that is not among the images.
    pub fn subset(&self, image_ids: &[i64]) -> Result<CocoGt> {
        let mut ids = image_ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        if let Some(bad) = ids.iter().find(|i| self.image_ids.binary_search(i).is_err()) {
            return Err(KdError::invalid(format!(
                "image id {bad} is not among the ground truth's images"
            )));
        }
        let annotations = self
            .annotations
            .iter()
            .filter(|a| ids.binary_search(&a.image_id).is_ok())
            .cloned()
            .collect();
        Ok(CocoGt {
            image_ids: ids,
            category_ids: self.category_ids.clone(),
            annotations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(id: i64, image_id: i64, category_id: i64) -> GtAnnotation {
        GtAnnotation {
            id,
            image_id,
            category_id,
            bbox: [1.0, 2.0, 3.0, 4.0],
            area: 12.0,
            iscrowd: false,
        }
    }

    #[test]
    fn a_subset_keeps_its_images_annotations_and_every_category() {
        let gt = CocoGt::from_parts(
            vec![3, 1, 2],
            vec![7, 5],
            vec![ann(10, 1, 5), ann(11, 2, 7), ann(12, 3, 5), ann(13, 2, 5)],
        )
        .unwrap();
        let sub = gt.subset(&[2, 3, 2]).unwrap();
        assert_eq!(sub.image_ids(), [2, 3]);
        assert_eq!(sub.category_ids(), [5, 7]);
        let ids: Vec<i64> = sub.annotations().iter().map(|a| a.id).collect();
        assert_eq!(ids, [11, 12, 13]);
        // An image without annotations stays an image to evaluate.
        let empty = CocoGt::from_parts(vec![1, 4], vec![5], vec![ann(1, 1, 5)]).unwrap();
        let only4 = empty.subset(&[4]).unwrap();
        assert_eq!(only4.image_ids(), [4]);
        assert!(only4.annotations().is_empty());
        let err = gt.subset(&[9]).unwrap_err().to_string();
        assert!(err.contains("image id 9"), "{err}");
    }
}
