//! The validation picture: what the numbers look like.
//!
//! One row per validation image: the input, its ground truth, then the seed-0 prediction of each
//! chosen row (e.g. the student without and with GDD), all in the Cityscapes palette.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use kd_core::data::seg::{self as segdata, SegSource};
use kd_core::distill::Teacher;
use tch::Device;

use super::experiment::{Picture, SegExperiment};
use super::run::{build_net, row_dir, val_loader, WEIGHTS};

/// Draws `pic` for the finished run in `out` into `png`.
pub fn draw(
    exp: &SegExperiment,
    pic: &Picture,
    val: &Arc<dyn SegSource>,
    out: &Path,
    device: Device,
    png: &Path,
) -> Result<()> {
    let n = pic.images.min(val.len());
    let indices: Vec<usize> = (0..n).collect();
    let loader = val_loader(val)?;
    let mut nets = Vec::new();
    for label in &pic.rows {
        let row = exp
            .rows
            .iter()
            .find(|r| &r.label == label)
            .with_context(|| format!("[picture] row {label:?}"))?;
        let student = exp.student(&row.student)?;
        let weights = row_dir(out, row, 0).join(WEIGHTS);
        nets.push(
            Teacher::load_built(|p| build_net(&student.net, p), &weights, device)
                .with_context(|| format!("loading {}", weights.display()))?,
        );
    }
    let mut grid = Vec::new();
    for &i in &indices {
        let sample = val.get(i)?;
        let mut cells = vec![sample.image.clone(), segdata::colorize(&sample.label)];
        let batch = loader.batch_of(&[i], 0, false)?;
        let x = batch.x.to_device(device);
        for net in &nets {
            let pred = exp
                .data
                .inference
                .logits(net.model(), &x)?
                .argmax(1, false)
                .get(0);
            cells.push(segdata::colorize(&segdata::label_map(&pred)?));
        }
        grid.push(cells);
    }
    segdata::save_seg_grid(png, &grid)?;
    Ok(())
}
