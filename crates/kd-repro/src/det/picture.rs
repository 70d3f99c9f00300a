//! The validation picture: detections drawn on a few images.
//!
//! One row per validation image: the ground-truth boxes, then the seed-0 detections of each
//! chosen row (e.g. the student without and with GDD), coloured by class.

use std::path::Path;

use anyhow::{Context, Result};
use kd_core::data::det as detdata;
use kd_core::distill::Teacher;
use tch::Device;

use super::eval;
use super::experiment::{DetExperiment, Picture};
use super::run::{build_net, row_dir, val_loader, DetRunData, WEIGHTS};

/// Draws `pic` for the finished run in `out` into `png`.
pub fn draw(
    exp: &DetExperiment,
    pic: &Picture,
    data: &DetRunData,
    out: &Path,
    device: Device,
    png: &Path,
) -> Result<()> {
    let n = pic.images.min(data.val.len());
    let loader = val_loader(exp, data)?;
    let mut per_row = Vec::new();
    for label in &pic.rows {
        let row = exp
            .rows
            .iter()
            .find(|r| &r.label == label)
            .with_context(|| format!("[picture] row {label:?}"))?;
        let student = exp.student(&row.student)?;
        let weights = row_dir(out, row, 0).join(WEIGHTS);
        let net = Teacher::load_built(|p| build_net(&student.net, p), &weights, device)
            .with_context(|| format!("loading {}", weights.display()))?;
        per_row.push(eval::detect(net.model(), &loader, &exp.postprocess, device, pic.min_score)?);
    }
    let mut grid = Vec::new();
    for i in 0..n {
        let sample = data.val.get(i)?;
        let id = sample.image_id;
        let mut cells = vec![detdata::draw_annotations(&sample)];
        for dets in &per_row {
            let mine: Vec<_> = dets.iter().filter(|d| d.image_id == id).cloned().collect();
            cells.push(detdata::draw_detections(&sample, &mine, loader.category_ids()));
        }
        grid.push(cells);
    }
    kd_core::data::seg::save_seg_grid(png, &grid)?;
    Ok(())
}
