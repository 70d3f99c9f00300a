//! Detections in the standard COCO results format, a JSON array of
//! `{"image_id", "category_id", "bbox": [x, y, w, h], "score"}` objects.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::gt::check_bbox;
use kd_core::{KdError, Result};

/// One detected box in the COCO results format. Other keys of a results file (e.g.
/// `segmentation`) are ignored when reading.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CocoDetection {
    /// Image id of the ground truth.
    pub image_id: i64,
    /// COCO category id (not the contiguous class index).
    pub category_id: i64,
    /// `[x, y, w, h]` in original image pixels: top-left corner and size, `w, h ≥ 0`.
    pub bbox: [f64; 4],
    /// Confidence; higher ranks first. Finite.
    pub score: f64,
}

impl CocoDetection {
    /// Checks the box and score; the message names the detection by its position and image.
    pub(crate) fn check(&self, index: usize) -> std::result::Result<(), String> {
        let ctx = |m: String| format!("detection #{index} (image_id {}): {m}", self.image_id);
        check_bbox(&self.bbox).map_err(ctx)?;
        if !self.score.is_finite() {
            return Err(ctx(format!("score {} is not finite", self.score)));
        }
        Ok(())
    }
}

/// Reads a results file: a JSON array of [`CocoDetection`]s, boxes and scores checked. Errors
/// name the file and the detection's position in the array.
pub fn read_detections(path: &Path) -> Result<Vec<CocoDetection>> {
    let text = std::fs::read_to_string(path).map_err(|e| KdError::file(path, format!("cannot read: {e}")))?;
    let dets: Vec<CocoDetection> = serde_json::from_str(&text).map_err(|e| {
        KdError::file(
            path,
            format!("not a COCO results file (an array of {{image_id, category_id, bbox, score}}): {e}"),
        )
    })?;
    for (i, d) in dets.iter().enumerate() {
        d.check(i).map_err(|m| KdError::file(path, m))?;
    }
    Ok(dets)
}

/// Writes `dets` as a COCO results file (through a temporary file and a rename, so a reader
/// never sees half a file). Numbers are written in their shortest exact form.
/// A non-finite number or negative box side is an error (JSON cannot carry it back).
pub fn write_detections(path: &Path, dets: &[CocoDetection]) -> Result<()> {
    for (i, d) in dets.iter().enumerate() {
        d.check(i).map_err(|m| KdError::file(path, m))?;
    }
    let bytes = serde_json::to_vec(dets).map_err(|e| KdError::file(path, format!("cannot encode: {e}")))?;
    kd_core::io::write_atomic(path, &bytes)
}
