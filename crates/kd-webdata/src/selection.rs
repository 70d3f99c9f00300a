//! Teacher–student dynamic instance selection (spec §3.1), as pure functions of logits.
//!
//! Web images that belong to no class, or that the teacher mislabels, teach the student the
//! teacher's mistakes. Early in training only the teacher's opinion is worth anything; later
//! the student (which reads the teacher's own classifier) has learnt enough to vote, so the
//! two predictions are mixed with a teacher share `a(e)` that decays to 0. An image is kept
//! when its mixed confidence clears a threshold that is lower for rarely predicted classes
//! (FlexMatch's class-adaptive rule), so selection does not wipe out the hard classes.

use tch::{Kind, Tensor};

use kd_core::{KdError, Result};

/// `a·z_T + (1 − a)·z_S`, both `[N, K]`; `a = 1` returns the teacher's logits exactly and
/// `a = 0` the student's.
pub fn combine(z_t: &Tensor, z_s: &Tensor, a: f64) -> Result<Tensor> {
    if z_t.size() != z_s.size() || z_t.dim() != 2 {
        return Err(KdError::Shape {
            op: "kd3 combine".into(),
            left_name: "teacher logits".into(),
            left: z_t.size(),
            right_name: "student logits".into(),
            right: z_s.size(),
        });
    }
    Ok(if a >= 1.0 {
        z_t.shallow_clone()
    } else if a <= 0.0 {
        z_s.shallow_clone()
    } else {
        z_t * a + z_s * (1.0 - a)
    })
}

/// Pseudo-label and confidence of every row of `z [N, K]`: `(argmax softmax, max softmax)`.
pub fn predictions(z: &Tensor) -> Result<(Vec<i64>, Vec<f64>)> {
    if z.dim() != 2 {
        return Err(KdError::BadShape {
            op: "kd3 selection".into(),
            name: "combined logits".into(),
            shape: z.size(),
            expected: "[N, K]".into(),
        });
    }
    let p = z.to_kind(Kind::Double).softmax(-1, Kind::Double);
    let (conf, pred) = p.max_dim(-1, false);
    let conf = Vec::<f64>::try_from(&conf.contiguous())?;
    let pred = Vec::<i64>::try_from(&pred.contiguous())?;
    Ok((pred, conf))
}

/// The class-adaptive thresholds `θ_k = p_cut · σ_k / (2 − σ_k)`, `σ_k = n_k / max_j n_j`,
/// where `n_k` counts the pseudo-labels equal to `k` among `pred` (values in `0..k`). The most
/// frequent class gets `p_cut`; a class nobody predicts gets 0.
pub fn class_thresholds(pred: &[i64], k: usize, p_cut: f64) -> Vec<f64> {
    let mut n = vec![0usize; k];
    for &c in pred {
        if let Some(slot) = usize::try_from(c).ok().and_then(|c| n.get_mut(c)) {
            *slot += 1;
        }
    }
    let max = n.iter().copied().max().unwrap_or(0).max(1) as f64;
    n.iter()
        .map(|&nk| {
            let s = nk as f64 / max;
            p_cut * s / (2.0 - s)
        })
        .collect()
}

/// The threshold rule over a whole set: keep row `i` of `z [N, K]` iff its confidence is
/// strictly above the threshold of its pseudo-class. Returns one flag per row.
pub fn threshold_keep(z: &Tensor, p_cut: f64) -> Result<Vec<bool>> {
    let (pred, conf) = predictions(z)?;
    let k = z.size()[1] as usize;
    let theta = class_thresholds(&pred, k, p_cut);
    Ok(pred
        .iter()
        .zip(&conf)
        .map(|(&c, &p)| p > theta[c as usize])
        .collect())
}

/// The per-batch top-ρ rule: `order` lists row positions in the order the rows were drawn; each
/// consecutive chunk of `chunk` positions keeps its `⌈ρ · len⌉` most confident rows (ties by
/// position). Returns one flag per row of `conf`.
pub fn top_ratio_keep(conf: &[f64], order: &[usize], chunk: usize, rho: f64) -> Vec<bool> {
    let mut keep = vec![false; conf.len()];
    for part in order.chunks(chunk.max(1)) {
        let n = ((rho * part.len() as f64).ceil() as usize).min(part.len());
        let mut ranked = part.to_vec();
        ranked.sort_by(|&a, &b| conf[b].total_cmp(&conf[a]).then(a.cmp(&b)));
        for &i in &ranked[..n] {
            keep[i] = true;
        }
    }
    keep
}
