//! The validation picture: detections drawn on a few images.
//!
//! One row per validation image: the ground-truth boxes, then the seed-0 detections of each
//! chosen row (e.g. the student without and with GDD) scoring at least the picture's
//! `min_score`, coloured by class, in original image pixels.

use std::path::Path;

use anyhow::{Context, Result};
use kd_core::distill::Teacher;
use kd_det::data as detdata;
use kd_det::metrics as eval;
use tch::Device;

use super::experiment::Picture;
use super::{DetArch, Detection};
use crate::table::{row_dir, Plan, Task, WEIGHTS};

/// Small images (the quick-scale scenes are about 120 px) enlarged by a whole factor, pixels
/// repeated, so the boxes stay readable.
fn enlarge(img: image::RgbImage) -> image::RgbImage {
    let factor = (256 / img.width().max(img.height()).max(1)).max(1);
    if factor == 1 {
        return img;
    }
    image::imageops::resize(
        &img,
        img.width() * factor,
        img.height() * factor,
        image::imageops::FilterType::Nearest,
    )
}

/// `[x, y, w, h]` → `[x1, y1, x2, y2]`.
fn xyxy(b: [f64; 4]) -> [f32; 4] {
    [
        b[0] as f32,
        b[1] as f32,
        (b[0] + b[2]) as f32,
        (b[1] + b[3]) as f32,
    ]
}

/// Draws `pic` for the finished run in `out` into `png`.
pub fn draw<A: DetArch>(
    data: &Detection<A>,
    plan: &Plan<A::Net>,
    pic: &Picture,
    out: &Path,
    device: Device,
    png: &Path,
) -> Result<()> {
    let exp = &data.head.exp;
    let n = pic.images.min(data.val.len());
    let loader = &data.val_loader;
    let mut per_row = Vec::new();
    for label in &pic.rows {
        let row = plan
            .rows
            .iter()
            .find(|r| &r.label == label)
            .with_context(|| format!("[picture] row {label:?}"))?;
        let student = &plan.students[row.student];
        let weights = row_dir(out, row, 0).join(WEIGHTS);
        let net = Teacher::load_built(|p| data.build_net(&student.net, p), &weights, device)
            .with_context(|| format!("loading {}", weights.display()))?;
        per_row.push(eval::detect(
            net.model(),
            loader,
            &exp.data.postprocess,
            device,
            pic.min_score,
        )?);
    }
    let coco = data.val.coco();
    let mut grid = Vec::new();
    for i in 0..n {
        let info = coco.image_info(i)?;
        let img = data.val.image(i)?;
        let mut gt = img.clone();
        let (boxes, labels): (Vec<[f32; 4]>, Vec<i64>) = info
            .annotations
            .iter()
            .map(|a| (xyxy(a.bbox), a.class as i64))
            .unzip();
        detdata::draw_boxes(&mut gt, &boxes, &labels, None)?;
        let mut cells = vec![gt];
        for dets in &per_row {
            let mut cell = img.clone();
            let (boxes, labels): (Vec<[f32; 4]>, Vec<i64>) = dets
                .iter()
                .filter(|d| d.image_id == info.id)
                .filter_map(|d| Some((xyxy(d.bbox), coco.class_of(d.category_id)? as i64)))
                .unzip();
            detdata::draw_boxes(&mut cell, &boxes, &labels, None)?;
            cells.push(cell);
        }
        grid.push(cells.into_iter().map(enlarge).collect());
    }
    kd_seg::data::save_seg_grid(png, &grid)?;
    Ok(())
}
