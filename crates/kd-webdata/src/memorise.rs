//! Knowledge memorisation (spec §3.2): the shared teacher classifier and the
//! disagreement-weighted feature alignment.
//!
//! On shifted web data the teacher's logits are unreliable targets, but its classifier still
//! encodes how its feature space maps to the original classes. Making the student reuse that
//! frozen classifier (through a small projector into the teacher's feature space) turns
//! distillation into feature regression, and the classifier is never re-learnt from noisy
//! targets. Images on which the two networks disagree most get the largest regression weight,
//! since that is where the student has the most to learn.

use tch::nn::{self, ModuleT};
use tch::Tensor;

use kd_core::{KdError, Result};

/// The SimKD-style bottleneck projector: `1×1 conv C_s → C_t/f` + BN + ReLU, `3×3 conv` +
/// BN + ReLU, `1×1 conv → C_t` + BN + ReLU, convolutions without bias. Maps a student map
/// `[B, C_s, H, W]` to `[B, C_t, H, W]`.
#[derive(Debug)]
pub struct Projector {
    convs: [nn::Conv2D; 3],
    bns: [kd_core::models::BatchNorm; 3],
    c_in: i64,
    c_out: i64,
}

fn conv(p: &nn::Path<'_>, c_in: i64, c_out: i64, k: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        padding: k / 2,
        bias: false,
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

impl Projector {
    /// Builds the projector under `p` (names `conv{1,2,3}`, `bn{1,2,3}`); the inner width is
    /// `c_out / factor`.
    pub fn new(p: &nn::Path<'_>, c_in: i64, c_out: i64, factor: i64) -> Result<Self> {
        let mid = c_out / factor.max(1);
        if c_in < 1 || mid < 1 {
            return Err(KdError::invalid(format!(
                "kd3 projector: {c_in} → {c_out} channels with factor {factor} leaves no inner \
                 channel; lower projector_factor"
            )));
        }
        let bn = |name: &str, c: i64| kd_core::models::batch_norm2d(p / name, c, Default::default());
        Ok(Self {
            convs: [
                conv(&(p / "conv1"), c_in, mid, 1),
                conv(&(p / "conv2"), mid, mid, 3),
                conv(&(p / "conv3"), mid, c_out, 1),
            ],
            bns: [bn("bn1", mid), bn("bn2", mid), bn("bn3", c_out)],
            c_in,
            c_out,
        })
    }

    /// Input channels `C_s`.
    pub fn in_channels(&self) -> i64 {
        self.c_in
    }

    /// Output channels `C_t`.
    pub fn out_channels(&self) -> i64 {
        self.c_out
    }

    /// `[B, C_s, H, W]` → `[B, C_t, H, W]`; `train` selects BatchNorm's mode.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let s = x.size();
        if s.len() != 4 || s[1] != self.c_in {
            return Err(KdError::BadShape {
                op: "kd3 projector".into(),
                name: "student map".into(),
                shape: s,
                expected: format!("[B, {}, H, W]", self.c_in),
            });
        }
        let mut h = x.shallow_clone();
        for (c, bn) in self.convs.iter().zip(&self.bns) {
            h = bn.forward_t(&h.apply(c), train).relu();
        }
        Ok(h)
    }

    /// Every tensor of the projector (weights and BatchNorm buffers), by name relative to the
    /// path it was built under, e.g. `"bn1.running_mean"`.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, (c, bn)) in self.convs.iter().zip(&self.bns).enumerate() {
            let k = i + 1;
            out.push((format!("conv{k}.weight"), c.ws.shallow_clone()));
            if let Some(w) = bn.weight() {
                out.push((format!("bn{k}.weight"), w.shallow_clone()));
            }
            if let Some(b) = bn.bias() {
                out.push((format!("bn{k}.bias"), b.shallow_clone()));
            }
            out.push((format!("bn{k}.running_mean"), bn.running_mean().shallow_clone()));
            out.push((format!("bn{k}.running_var"), bn.running_var().shallow_clone()));
        }
        out
    }
}

/// A frozen copy of a linear classifier: weight `[K, D]`, bias `[K]`, detached and outside any
/// `VarStore`, so no optimiser can move it and no gradient accumulates in it.
#[derive(Debug)]
pub struct SharedHead {
    linear: nn::Linear,
}

impl SharedHead {
    /// Copies `weight [K, D]` and `bias [K]` (the copies do not require grad).
    pub fn copy_of(weight: &Tensor, bias: Option<&Tensor>) -> Self {
        Self {
            linear: nn::Linear {
                ws: weight.detach().copy(),
                bs: bias.map(|b| b.detach().copy()),
            },
        }
    }

    /// Pooled features `[B, D]` → logits `[B, K]`, the same operation as the teacher's own
    /// head, so the logits match the teacher's `classify` bit for bit.
    pub fn forward(&self, pooled: &Tensor) -> Result<Tensor> {
        let d = self.linear.ws.size()[1];
        if pooled.dim() != 2 || pooled.size()[1] != d {
            return Err(KdError::BadShape {
                op: "kd3 shared head".into(),
                name: "pooled".into(),
                shape: pooled.size(),
                expected: format!("[B, {d}]"),
            });
        }
        Ok(pooled.apply(&self.linear))
    }

    /// The weight `[K, D]`.
    pub fn weight(&self) -> &Tensor {
        &self.linear.ws
    }

    /// The bias `[K]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.linear.bs.as_ref()
    }
}

/// Global average pooling: `[B, C, H, W]` → `[B, C]`.
pub fn gap(x: &Tensor) -> Tensor {
    x.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
}

/// Brings `x [B, C, H, W]` down to `h × w` by adaptive average pooling when it is larger;
/// returns it unchanged otherwise.
pub fn pool_down(x: &Tensor, h: i64, w: i64) -> Tensor {
    let s = x.size();
    if s.len() == 4 && (s[2] > h || s[3] > w) {
        x.adaptive_avg_pool2d([h.min(s[2]), w.min(s[3])])
    } else {
        x.shallow_clone()
    }
}

/// `w_b = sigmoid(‖z_S,b − z_T,b‖₂)`, detached: `[B]` in `[0.5, 1)`, 0.5 exactly where the two
/// logit vectors `[B, K]` agree.
pub fn disagreement_weights(z_s: &Tensor, z_t: &Tensor) -> Result<Tensor> {
    if z_s.size() != z_t.size() || z_s.dim() != 2 {
        return Err(KdError::Shape {
            op: "kd3 disagreement_weights".into(),
            left_name: "student logits".into(),
            left: z_s.size(),
            right_name: "teacher logits".into(),
            right: z_t.size(),
        });
    }
    let d = (z_s.detach() - z_t.detach()).norm_scalaropt_dim(2.0, [1i64].as_slice(), false);
    Ok(d.sigmoid())
}

/// `L_FA = mean over (b, c, h, w) of w_b · (p − f_t)²`, a scalar. `p`, `f_t`: `[B, C, H, W]`
/// of the same shape; `w`: `[B]` (used as given: pass detached weights).
pub fn weighted_feature_mse(p: &Tensor, f_t: &Tensor, w: &Tensor) -> Result<Tensor> {
    if p.size() != f_t.size() || p.dim() != 4 {
        return Err(KdError::Shape {
            op: "kd3 weighted_feature_mse".into(),
            left_name: "projected student map".into(),
            left: p.size(),
            right_name: "teacher map".into(),
            right: f_t.size(),
        });
    }
    let b = p.size()[0];
    if w.size() != [b] {
        return Err(KdError::BadShape {
            op: "kd3 weighted_feature_mse".into(),
            name: "weights".into(),
            shape: w.size(),
            expected: format!("[{b}]"),
        });
    }
    let per_sample = (p - f_t.detach())
        .square()
        .mean_dim([1i64, 2, 3].as_slice(), false, p.kind());
    Ok((per_sample * w.to_kind(p.kind())).mean(p.kind()))
}
