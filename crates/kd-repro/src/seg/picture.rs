//! The validation picture: what the numbers look like.
//!
//! One row per validation image: the input, its ground truth, then the seed-0 prediction of each
//! chosen row (e.g. the student without and with GDD), all in the Cityscapes palette.

use std::path::Path;

use anyhow::{Context, Result};
use kd_core::distill::Teacher;
use kd_seg::data as segdata;
use kd_seg::models::SegNetConfig;
use tch::Device;

use super::experiment::Picture;
use super::Segmentation;
use crate::table::{row_dir, Plan, Task, WEIGHTS};

/// Draws `pic` for the finished run in `out` into `png`.
pub fn draw(
    task: &Segmentation,
    plan: &Plan<SegNetConfig>,
    pic: &Picture,
    out: &Path,
    device: Device,
    png: &Path,
) -> Result<()> {
    let val = &task.val;
    let exp = &task.head.exp;
    let n = pic.images.min(val.len());
    let indices: Vec<usize> = (0..n).collect();
    let loader = task.val_loader()?;
    let mut nets = Vec::new();
    for label in &pic.rows {
        let row = plan
            .rows
            .iter()
            .find(|r| &r.label == label)
            .with_context(|| format!("[picture] row {label:?}"))?;
        let student = &plan.students[row.student];
        let weights = row_dir(out, row, 0).join(WEIGHTS);
        nets.push(
            Teacher::load_built(|p| task.build_net(&student.net, p), &weights, device)
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
