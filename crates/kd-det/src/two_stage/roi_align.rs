//! RoIAlign (He et al., Mask R-CNN) and the multi-level RoI feature extractor of MMDetection
//! 2.x's `SingleRoIExtractor`.
//!
//! RoIAlign is built from libtorch's bilinear `grid_sampler`, which gives the backward pass for
//! free and matches the reference kernels (torchvision's `roi_align`, mmcv's `RoIAlign`) sample
//! for sample: a bin of an `h × w` RoI is averaged over a `⌈h/P⌉ × ⌈w/P⌉` grid of samples
//! (`sampling_ratio = 0`), a sample lying beyond one pixel outside the map counts as 0, one
//! within that pixel reads the border, and with `aligned = true` pixel centres sit at
//! half-integers (the RoI is shifted by −0.5 map pixels). The RoIs of one image and level are
//! sampled in one call, on a grid as fine as their finest RoI needs; samples a coarser RoI does
//! not have weigh 0.

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
    let mut by_image: Vec<Vec<i64>> = vec![Vec::new(); b as usize];
    for i in 0..r as usize {
        let bi = host[5 * i];
        if bi.fract() != 0.0 || bi < 0.0 || bi >= b as f64 {
            return Err(KdError::invalid(format!(
                "{OP}: RoI {i} has batch index {bi}, but the feature batch has {b} images"
            )));
        }
        by_image[bi as usize].push(i as i64);
    }
    let mut parts = Vec::new();
    let mut order = Vec::new();
    for (bi, idx) in by_image.iter().enumerate() {
        if idx.is_empty() {
            continue;
        }
        let boxes: Vec<[f64; 4]> = idx
            .iter()
            .map(|&i| {
                let o = 5 * i as usize;
                [host[o + 1], host[o + 2], host[o + 3], host[o + 4]]
            })
            .collect();
        let img = feat.narrow(0, bi as i64, 1);
        parts.push(align_one_image(
            &img,
            &boxes,
            out,
            spatial_scale,
            sampling_ratio,
            aligned,
            (h, w),
        )?);
        order.extend_from_slice(idx);
    }
    let pooled = Tensor::cat(&parts, 0);
    let order = Tensor::from_slice(&order).to_device(feat.device());
    // Put the rows back in the RoIs' order: position p of `pooled` holds RoI order[p].
    let inverse = order.argsort(0, false);
    Ok(pooled.index_select(0, &inverse))
}

/// RoIAlign of the RoIs `boxes` of one image `img` `[1, C, H, W]`.
fn align_one_image(
    img: &Tensor,
    boxes: &[[f64; 4]],
    p: i64,
    scale: f64,
    sampling_ratio: i64,
    aligned: bool,
    (h, w): (i64, i64),
) -> Result<Tensor> {
    let n = boxes.len();
    let offset = if aligned { 0.5 } else { 0.0 };
    let pf = p as f64;
    // Per RoI: start, bin size and sample count along y and x.
    let mut geo = Vec::with_capacity(n);
    let (mut gh_max, mut gw_max) = (1i64, 1i64);
    for bx in boxes {
        let (x1, y1) = (bx[0] * scale - offset, bx[1] * scale - offset);
        let (x2, y2) = (bx[2] * scale - offset, bx[3] * scale - offset);
        let (mut rw, mut rh) = (x2 - x1, y2 - y1);
        if !aligned {
            rw = rw.max(1.0);
            rh = rh.max(1.0);
        }
        let (bw, bh) = (rw / pf, rh / pf);
        let gh = if sampling_ratio > 0 {
            sampling_ratio
        } else {
            (rh / pf).ceil() as i64
        };
        let gw = if sampling_ratio > 0 {
            sampling_ratio
        } else {
            (rw / pf).ceil() as i64
        };
        let (gh, gw) = (gh.max(0), gw.max(0));
        gh_max = gh_max.max(gh);
        gw_max = gw_max.max(gw);
        geo.push((y1, bh, gh, x1, bw, gw));
    }
    let (gh_n, gw_n) = (gh_max as usize, gw_max as usize);
    let pu = p as usize;
    // Sample coordinates (map pixels, clamped as the reference clamps them), normalised for
    // `grid_sampler` with align_corners; and each sample's weight (0 outside the RoI's own
    // grid or beyond one pixel off the map, else 1/count).
    let rows = pu * gh_n;
    let cols = pu * gw_n;
    let mut ys = vec![0f64; n * rows];
    let mut wy = vec![0f64; n * rows];
    let mut xs = vec![0f64; n * cols];
    let mut wx = vec![0f64; n * cols];
    let norm = |v: f64, size: i64| -> f64 {
        let v = v.clamp(0.0, (size - 1) as f64);
        if size == 1 {
            0.0
        } else {
            v * 2.0 / (size - 1) as f64 - 1.0
        }
    };
    for (k, &(y1, bh, gh, x1, bw, gw)) in geo.iter().enumerate() {
        let count = (gh * gw).max(1) as f64;
        for ph in 0..pu {
            for iy in 0..gh as usize {
                let y = y1 + ph as f64 * bh + (iy as f64 + 0.5) * bh / gh as f64;
                let at = k * rows + ph * gh_n + iy;
                ys[at] = norm(y, h);
                wy[at] = if y < -1.0 || y > h as f64 {
                    0.0
                } else {
                    1.0 / count
                };
            }
        }
        for pw in 0..pu {
            for ix in 0..gw as usize {
                let x = x1 + pw as f64 * bw + (ix as f64 + 0.5) * bw / gw as f64;
                let at = k * cols + pw * gw_n + ix;
                xs[at] = norm(x, w);
                wx[at] = if x < -1.0 || x > w as f64 { 0.0 } else { 1.0 };
            }
        }
    }
    let dev = img.device();
    let n = n as i64;
    let (rows, cols) = (rows as i64, cols as i64);
    let ys = Tensor::from_slice(&ys)
        .view([n, rows, 1])
        .expand([n, rows, cols], false);
    let xs = Tensor::from_slice(&xs)
        .view([n, 1, cols])
        .expand([n, rows, cols], false);
    let grid = Tensor::stack(&[xs, ys], 3)
        .reshape([1, n * rows, cols, 2])
        .to_device(dev)
        .to_kind(img.kind());
    // bilinear (0), border padding (1), align_corners: pixel i at −1 + 2i/(size − 1).
    let sampled = img.grid_sampler(&grid, 0, 1, true);
    let c = img.size()[1];
    let weight = (Tensor::from_slice(&wy).view([n, rows, 1]) * Tensor::from_slice(&wx).view([n, 1, cols]))
        .to_device(dev)
        .to_kind(img.kind())
        .view([1, n, p, gh_max, p, gw_max]);
    let pooled = (sampled.view([c, n, p, gh_max, p, gw_max]) * weight).sum_dim_intlist(
        [3i64, 5].as_slice(),
        false,
        None,
    );
    Ok(pooled.permute([1, 0, 2, 3]).contiguous())
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
