//! Writes the synthetic Cityscapes-format set and, optionally, perturbed predictions for its
//! validation split together with kd-core's evaluation of them.
//!
//! ```text
//! cargo run --release -p kd-core --example synth_cityscapes -- ROOT
//!     [--train N] [--val N] [--width W] [--height H] [--seed S]
//!     [--predictions DIR --report FILE.json]
//! ```
//!
//! `scripts/check_cityscapes_eval.sh` uses it to compare the evaluation with the official
//! `cityscapesscripts` one.

use std::path::PathBuf;
use std::time::Instant;

use kd_core::data::seg::labels::TRAIN_TO_LABEL;
use kd_core::data::seg::{generate_synthetic_cityscapes, open_cityscapes, GrayImage, SegSource, SynthConfig};
use kd_core::metrics::eval_cityscapes_dirs;
use kd_core::{KdError, Result};
use rand::Rng as _;

/// Label ids that are ignored in evaluation, used to perturb predictions.
const IGNORED_IDS: [u8; 4] = [0, 4, 5, 9];

fn perturb(label_ids: &GrayImage, index: usize) -> GrayImage {
    let mut rng = kd_core::rng::derive(7, 1, index as u64);
    let (w, h) = label_ids.dimensions();
    let mut out = label_ids.clone();
    // Shift some images by a pixel or two (boundary errors).
    let (dx, dy) = (rng.gen_range(-2i64..=2), rng.gen_range(-1i64..=1));
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            let (sx, sy) = ((x - dx).clamp(0, w as i64 - 1), (y - dy).clamp(0, h as i64 - 1));
            out.put_pixel(x as u32, y as u32, *label_ids.get_pixel(sx as u32, sy as u32));
        }
    }
    // Rectangles of a wrong evaluated class or of an ignored id.
    for _ in 0..rng.gen_range(1..6) {
        let (rw, rh) = (rng.gen_range(4..w / 3), rng.gen_range(4..h / 3));
        let (x0, y0) = (rng.gen_range(0..w - rw), rng.gen_range(0..h - rh));
        let v = if rng.gen_bool(0.3) {
            IGNORED_IDS[rng.gen_range(0..IGNORED_IDS.len())]
        } else {
            TRAIN_TO_LABEL[rng.gen_range(0..TRAIN_TO_LABEL.len())]
        };
        for y in y0..y0 + rh {
            for x in x0..x0 + rw {
                out.put_pixel(x, y, image::Luma([v]));
            }
        }
    }
    // Salt noise.
    for v in out.iter_mut() {
        if rng.gen_bool(0.03) {
            *v = TRAIN_TO_LABEL[rng.gen_range(0..TRAIN_TO_LABEL.len())];
        }
    }
    out
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut root = None;
    let mut cfg = SynthConfig::default();
    let (mut predictions, mut report) = (None, None);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| KdError::invalid(format!("{name} needs a value")))
        };
        let num = |s: String| {
            s.parse::<u64>()
                .map_err(|e| KdError::invalid(format!("{s}: {e}")))
        };
        match a.as_str() {
            "--train" => cfg.train = num(value("--train")?)? as usize,
            "--val" => cfg.val = num(value("--val")?)? as usize,
            "--width" => cfg.width = num(value("--width")?)? as usize,
            "--height" => cfg.height = num(value("--height")?)? as usize,
            "--seed" => cfg.seed = num(value("--seed")?)?,
            "--predictions" => predictions = Some(PathBuf::from(value("--predictions")?)),
            "--report" => report = Some(PathBuf::from(value("--report")?)),
            _ if root.is_none() && !a.starts_with("--") => root = Some(PathBuf::from(a)),
            _ => return Err(KdError::invalid(format!("unexpected argument {a}"))),
        }
    }
    let root = root.ok_or_else(|| KdError::invalid("usage: synth_cityscapes ROOT [options]"))?;
    let start = Instant::now();
    let generated = generate_synthetic_cityscapes(&root, &cfg)?;
    println!(
        "{} {} train + {} val scenes of {}×{} in {}: {:.2} s",
        if generated { "generated" } else { "found" },
        cfg.train,
        cfg.val,
        cfg.width,
        cfg.height,
        root.display(),
        start.elapsed().as_secs_f64()
    );
    if let Some(dir) = predictions {
        let val = open_cityscapes(&root, "val", None)?;
        std::fs::create_dir_all(&dir)?;
        for i in 0..val.len() {
            let (_, label_file) = val.files(i).expect("index in range");
            let ids = image::open(label_file)
                .map_err(|e| KdError::file(label_file, e))?
                .to_luma8();
            let pred = perturb(&ids, i);
            let path = dir.join(format!("{}_pred_labelIds.png", val.sample_name(i)));
            kd_core::data::seg::write_label_png(&path, &pred)?;
        }
        let r = eval_cityscapes_dirs(&dir, &root.join("gtFine").join("val"))?;
        for c in &r.classes {
            println!(
                "{:<14} {}",
                c.name,
                c.iou.map_or("nan".into(), |v| format!("{v:.6}"))
            );
        }
        println!("mean IoU {:.6} ({:.3} %)", r.mean_iou, r.miou);
        if let Some(p) = report {
            std::fs::write(&p, serde_json::to_string_pretty(&r).map_err(KdError::invalid)?)?;
        }
    }
    Ok(())
}
