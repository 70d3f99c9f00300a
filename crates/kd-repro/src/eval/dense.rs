//! mIoU of a segmentor on a Cityscapes tree and box AP of a detector on a COCO root, with the
//! data handling of the paper-scale tables (the `[data]` sections of `configs/cityscapes` and
//! `configs/coco`): the same resizing, inference mode and post-processing a table run reports.

use std::sync::Arc;

use anyhow::{bail, Result};
use kd_core::models::Model;
use kd_det::models::DetectorConfig;
use kd_seg::data::{SegSource, CLASS_NAMES};
use kd_seg::models::SegNetConfig;
use tch::Device;

use super::EvalArgs;
use crate::table::given_teacher;

/// The segmentor names `--arch` takes.
pub const SEG_NAMES: &str =
    "pspnet_r18, pspnet_r34, pspnet_r50, pspnet_r101, deeplabv3_r18, ..., deeplabv3_r101, fcn_r18, ..., fcn_r101";
/// The detector names `--arch` takes.
pub const DET_NAMES: &str = "fcos_r18, fcos_r34, fcos_r50, fcos_r101";

/// A dense architecture named on the command line.
pub enum DenseArch {
    /// MMSeg's `<head>_<backbone>-d8` segmentor for Cityscapes.
    Seg(SegNetConfig),
    /// MMDet's FCOS with this backbone (classes from the annotation file).
    Det(String),
}

impl DenseArch {
    /// `pspnet_r18`-style names; `None` for names that are not dense architectures.
    pub fn parse(name: &str) -> Result<Option<Self>> {
        let Some((head, backbone)) = name.split_once('_') else {
            return Ok(None);
        };
        let known = ["r18", "r34", "r50", "r101"];
        let dense_head = matches!(head, "pspnet" | "deeplabv3" | "fcn" | "fcos");
        if !dense_head {
            return Ok(None);
        }
        if !known.contains(&backbone) {
            bail!(
                "--arch {name}: unknown backbone {backbone:?}; known: {}",
                known.join(", ")
            );
        }
        if head == "fcos" {
            return Ok(Some(Self::Det(backbone.into())));
        }
        // MMSeg's d8 configs: 128/64 head/aux channels for R18 and R34, 512/256 above.
        let basic = matches!(backbone, "r18" | "r34");
        Ok(Some(Self::Seg(SegNetConfig {
            backbone: backbone.into(),
            width: 64,
            head: match head {
                "pspnet" => "psp",
                "deeplabv3" => "aspp",
                _ => "fcn",
            }
            .into(),
            head_channels: if basic { 128 } else { 512 },
            aux_channels: if basic { 64 } else { 256 },
            aspp_dilations: vec![1, 12, 24, 36],
            num_classes: kd_seg::data::NUM_CLASSES as i64,
            dropout: 0.1,
            in_channels: 3,
        })))
    }
}

pub(super) fn run(arch: &DenseArch, a: &EvalArgs, device: Device) -> Result<()> {
    match arch {
        DenseArch::Seg(cfg) => seg(cfg, a, device),
        DenseArch::Det(backbone) => det(backbone, a, device),
    }
}

fn seg(cfg: &SegNetConfig, a: &EvalArgs, device: Device) -> Result<()> {
    let exp: crate::seg::SegExperiment = toml::from_str(crate::tables::find("cityscapes")?.paper)?;
    let split = a.split.as_deref().unwrap_or("val");
    let scale = exp.data.scale;
    let resize = (scale != 1.0).then_some(kd_seg::data::SegResize::Factor(scale));
    let val = kd_seg::data::open_cityscapes(&a.data, split, resize)?;
    let n = val.len();
    let loader = kd_seg::data::seg_loader(Arc::new(val), 1, None, false, 0)?;
    let net = given_teacher(
        |root| kd_seg::models::build(root, cfg).map(|n| Box::new(n) as Box<dyn Model>),
        &a.weights,
        a.weights_key.as_deref(),
        device,
    )?;
    eprintln!(
        "==> {} on Cityscapes {split} ({n} images, inference {:?}), device {device:?}",
        a.arch, exp.data.inference
    );
    let eval = kd_seg::metrics::MeanIou {
        inference: exp.data.inference,
    };
    let cm = eval.confusion(net.model(), None, &loader, device)?;
    let report = cm.report(&CLASS_NAMES);
    for c in &report.classes {
        let iou = c.iou.map_or("   nan".to_string(), |v| format!("{v:6.2}"));
        println!("  {:<14} {iou}", c.name);
    }
    println!("mIoU = {:.2}", report.miou);
    println!("pixel accuracy = {:.2}", report.pixel_acc);
    Ok(())
}

fn det(backbone: &str, a: &EvalArgs, device: Device) -> Result<()> {
    let exp: crate::det::DetExperiment = toml::from_str(crate::tables::find("coco")?.paper)?;
    let split = a.split.as_deref().unwrap_or(&exp.data.val_split);
    let val = kd_det::data::open_coco_root(&a.data, split)?;
    let k = val.num_classes() as i64;
    let gt = kd_det::metrics::CocoGt::from_file(val.ann_file())?;
    let n = val.len();
    let cfg = DetectorConfig::fcos(backbone, k);
    let loader = kd_det::data::det_loader(
        Arc::new(val),
        exp.data.eval_batch,
        exp.data.augment.clone(),
        false,
        0,
    )?;
    let net = given_teacher(
        |root| kd_det::models::build(root, &cfg).map(|n| Box::new(n) as Box<dyn Model>),
        &a.weights,
        a.weights_key.as_deref(),
        device,
    )?;
    eprintln!(
        "==> {} on COCO {split} ({n} images, {k} categories), device {device:?}",
        a.arch
    );
    let (stats, _) = kd_det::metrics::evaluate(net.model(), &loader, &gt, &exp.data.postprocess, device)?;
    print!("{}", stats.summary());
    println!("box AP = {:.2}", 100.0 * stats.ap);
    Ok(())
}
