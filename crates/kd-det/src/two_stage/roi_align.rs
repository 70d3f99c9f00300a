//! RoIAlign (He et al., Mask R-CNN) and the multi-level RoI feature extractor of MMDetection
//! 2.x's `SingleRoIExtractor`.
//!
//! RoIAlign is linear in the feature map, so it is written as a sparse weighted gather: the host
//! places every bin's bilinear taps exactly as the reference kernels (torchvision's
//! `roi_align`, mmcv's `RoIAlign`) do — a bin of an `h × w` RoI is averaged over a
//! `⌈h/P⌉ × ⌈w/P⌉` grid of samples (`sampling_ratio = 0`), a sample lying beyond one pixel
//! outside the map counts as 0, one within that pixel reads the border, and with
//! `aligned = true` pixel centres sit at half-integers (the RoI is shifted by −0.5 map pixels) —
//! and one `embedding_bag` (weighted sum over the flattened `[B·H·W, C]` map) pools all RoIs
//! of a level at once. Its backward is a scatter-add of the same taps, which is what the
//! reference's backward kernel does. A `grid_sampler` formulation, which samples every RoI on the
//! finest RoI's grid, measured 3.4× slower forward and 2× slower backward at the quick
//! `coco-frcnn` shapes (2,048 RoIs, 64 channels).

use tch::{Kind, Tensor};

use kd_core::{KdError, Result};

/// RoIAlign of `rois` `[R, 5]` rows `(batch index, x1, y1, x2, y2)` in input pixels over
/// `feat` `[B, C, H, W]` at `spatial_scale` (map pixels per input pixel, `1/stride`): the
/// pooled features `[R, C, out, out]`.
///
/// `sampling_ratio > 0` fixes the samples per bin side; `0` adapts them to the RoI size.
/// `aligned` selects the half-pixel-corrected variant (what Faster R-CNN FPN configs use);
/// without it RoI sizes are at least one map pixel. Fails on a malformed `rois` or a batch
/// index outside `0..B`.
pub fn roi_align(
    feat: &Tensor,
    rois: &Tensor,
    out: i64,
    spatial_scale: f64,
    sampling_ratio: i64,
    aligned: bool,
) -> Result<Tensor> {
    const OP: &str = "roi_align";
    let fs = feat.size();
    let rs = rois.size();
    if fs.len() != 4 {
        return Err(KdError::BadShape {
            op: OP.into(),
            name: "feat".into(),
            shape: fs,
            expected: "[B, C, H, W]".into(),
        });
    }
    if rs.len() != 2 || rs[1] != 5 {
        return Err(KdError::BadShape {
            op: OP.into(),
            name: "rois".into(),
            shape: rs,
            expected: "[R, 5] rows (batch index, x1, y1, x2, y2)".into(),
        });
    }
    if out < 1 {
        return Err(KdError::invalid(format!(
            "{OP}: output size must be ≥ 1, got {out}"
        )));
    }
    let (b, c, h, w) = (fs[0], fs[1], fs[2], fs[3]);
    let r = rs[0];
    if r == 0 {
        return Ok(Tensor::zeros([0, c, out, out], (feat.kind(), feat.device())));
    }
    let host = Vec::<f64>::try_from(
        rois.to_kind(Kind::Double)
            .to_device(tch::Device::Cpu)
            .reshape([-1]),
    )?;
    for i in 0..r as usize {
        let bi = host[5 * i];
        if bi.fract() != 0.0 || bi < 0.0 || bi >= b as f64 {
            return Err(KdError::invalid(format!(
                "{OP}: RoI {i} has batch index {bi}, but the feature batch has {b} images"
            )));
        }
    }
    let taps = bilinear_taps(&host, out, spatial_scale, sampling_ratio, aligned, (h, w));
    let dev = feat.device();
    // Rows of the flattened map: pixel (b, y, x) is row (b·H + y)·W + x.
    let table = feat.permute([0, 2, 3, 1]).reshape([b * h * w, c]);
    let (pooled, _, _, _) = Tensor::embedding_bag(
        &table,
        &Tensor::from_slice(&taps.index).to_device(dev),
        &Tensor::from_slice(&taps.offsets).to_device(dev),
        false,
        0,
        false,
        Some(
            Tensor::from_slice(&taps.weight)
                .to_device(dev)
                .to_kind(feat.kind()),
        ),
        false,
    );
    Ok(pooled.view([r, out, out, c]).permute([0, 3, 1, 2]).contiguous())
}

/// Every output bin's bilinear taps: for bin `k` (RoI-major, then row, then column) the
/// entries `offsets[k]..offsets[k + 1]` of `index` (flattened map pixels) and `weight`.
struct Taps {
    index: Vec<i64>,
    weight: Vec<f64>,
    offsets: Vec<i64>,
}

/// The taps of `rois` (host rows `(batch index, x1, y1, x2, y2)`) on `[B, C, h, w]` maps, as
/// torchvision's `roi_align` kernel places and weighs its samples (`bilinear_interpolate`).
fn bilinear_taps(
    rois: &[f64],
    p: i64,
    scale: f64,
    sampling_ratio: i64,
    aligned: bool,
    (h, w): (i64, i64),
) -> Taps {
    let r = rois.len() / 5;
    let pu = p as usize;
    let offset = if aligned { 0.5 } else { 0.0 };
    let pf = p as f64;
    let mut t = Taps {
        index: Vec::new(),
        weight: Vec::new(),
        offsets: Vec::with_capacity(r * pu * pu),
    };
    for roi in rois.chunks_exact(5) {
        let base = roi[0] as i64 * h * w;
        let (x1, y1) = (roi[1] * scale - offset, roi[2] * scale - offset);
        let (mut rw, mut rh) = (roi[3] * scale - offset - x1, roi[4] * scale - offset - y1);
        if !aligned {
            rw = rw.max(1.0);
            rh = rh.max(1.0);
        }
        let (bw, bh) = (rw / pf, rh / pf);
        let grid = |extent: f64| {
            if sampling_ratio > 0 {
                sampling_ratio
            } else {
                (extent / pf).ceil().max(0.0) as i64
            }
        };
        let (gh, gw) = (grid(rh), grid(rw));
        let count = (gh * gw).max(1) as f64;
        for ph in 0..pu {
            for pw in 0..pu {
                t.offsets.push(t.index.len() as i64);
                for iy in 0..gh {
                    let y = y1 + ph as f64 * bh + (iy as f64 + 0.5) * bh / gh as f64;
                    for ix in 0..gw {
                        let x = x1 + pw as f64 * bw + (ix as f64 + 0.5) * bw / gw as f64;
                        push_sample(&mut t, base, y, x, (h, w), 1.0 / count);
                    }
                }
            }
        }
    }
    t
}

/// One bilinear sample at map position `(y, x)`: none beyond one pixel off the map, the
/// border pixel within that margin, else the four neighbours with their weights times `scale`.
fn push_sample(t: &mut Taps, base: i64, y: f64, x: f64, (h, w): (i64, i64), scale: f64) {
    if y < -1.0 || y > h as f64 || x < -1.0 || x > w as f64 {
        return;
    }
    let corner = |v: f64, size: i64| -> (i64, i64, f64) {
        let v = v.max(0.0);
        let low = v as i64;
        if low >= size - 1 {
            (size - 1, size - 1, 0.0)
        } else {
            (low, low + 1, v - low as f64)
        }
    };
    let (y0, y1, ly) = corner(y, h);
    let (x0, x1, lx) = corner(x, w);
    let (hy, hx) = (1.0 - ly, 1.0 - lx);
    for (yy, xx, wgt) in [
        (y0, x0, hy * hx),
        (y0, x1, hy * lx),
        (y1, x0, ly * hx),
        (y1, x1, ly * lx),
    ] {
        t.index.push(base + yy * w + xx);
        t.weight.push(wgt * scale);
    }
}

/// The pyramid level of each RoI `[R, 5]` as `SingleRoIExtractor.map_roi_levels` chooses it:
/// `⌊log2(√(w·h) / finest_scale + 1e-6)⌋` clamped to `0..num_levels` (a 224-pixel RoI goes to
/// level 2 with `finest_scale = 56`).
pub fn map_roi_levels(rois: &Tensor, num_levels: i64, finest_scale: f64) -> Tensor {
    let w = rois.select(1, 3) - rois.select(1, 1);
    let h = rois.select(1, 4) - rois.select(1, 2);
    let scale = (w * h).to_kind(Kind::Float).sqrt();
    (scale / finest_scale + 1e-6)
        .log2()
        .floor()
        .clamp(0.0, (num_levels - 1) as f64)
        .to_kind(Kind::Int64)
}

/// `SingleRoIExtractor` with RoIAlign: each RoI `[R, 5]` pooled to `[C, out, out]` from the
/// level [`map_roi_levels`] picks among `feats` (`[B, C, H_l, W_l]`, strides `strides`).
pub fn extract_multi_level(
    feats: &[&Tensor],
    strides: &[i64],
    rois: &Tensor,
    out: i64,
    finest_scale: f64,
    sampling_ratio: i64,
) -> Result<Tensor> {
    if feats.is_empty() || feats.len() != strides.len() {
        return Err(KdError::invalid(format!(
            "roi extractor: {} feature maps for {} strides",
            feats.len(),
            strides.len()
        )));
    }
    let levels = map_roi_levels(rois, feats.len() as i64, finest_scale);
    let host = Vec::<i64>::try_from(levels.to_device(tch::Device::Cpu))?;
    let mut parts = Vec::new();
    let mut order = Vec::new();
    for (l, (f, &s)) in feats.iter().zip(strides).enumerate() {
        let idx: Vec<i64> = (0..host.len() as i64)
            .filter(|&i| host[i as usize] == l as i64)
            .collect();
        if idx.is_empty() {
            continue;
        }
        let sel = rois.index_select(0, &Tensor::from_slice(&idx).to_device(rois.device()));
        parts.push(roi_align(f, &sel, out, 1.0 / s as f64, sampling_ratio, true)?);
        order.extend(idx);
    }
    if parts.is_empty() {
        let c = feats[0].size()[1];
        return Ok(Tensor::zeros(
            [0, c, out, out],
            (feats[0].kind(), feats[0].device()),
        ));
    }
    let pooled = Tensor::cat(&parts, 0);
    let inverse = Tensor::from_slice(&order)
        .to_device(pooled.device())
        .argsort(0, false);
    Ok(pooled.index_select(0, &inverse))
}
