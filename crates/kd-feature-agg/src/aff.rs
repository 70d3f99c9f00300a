//! Adaptive Features Fusion (AFF): a top-down gated cascade over the student's stages.
//!
//! A single stage's map says little about what the deeper, more semantic stages will make of
//! it, so matching stage by stage pushes each stage towards the teacher in isolation. AFF gives
//! every stage `i` a map `A_i` that also carries everything deeper: the deepest stage is
//! projected on its own, then each shallower stage is blended with the (upsampled) fused map
//! below it through a per-pixel sigmoid gate that decides how much of each to keep. The cost is
//! one 1×1 convolution per stage plus one gate, linear in the number of stages.
//!
//! ```text
//! A_n = BN(E_n(F_n))
//! for i = n−1 … 1:
//!     X   = BN(E_i(F_i))                          E_i: 1×1 conv C_i → C_a(i), no bias
//!     U   = P_i(Up(A_{i+1} → H_i × W_i))         P_i: 1×1 conv C_a(i+1) → C_a(i), if they differ
//!     g   = sigmoid(G_i(concat[X, U]))            G_i: 1×1 conv 2·C_a(i) → 2, [B, 2, H_i, W_i]
//!     A_i = g[:, 0:1] ⊙ X + g[:, 1:2] ⊙ U
//! ```
//!
//! The gate convolution starts at zero (weights and bias), so every gate is exactly 0.5 at
//! initialisation and the cascade starts as an even blend; its gradient is not zero, so the
//! gate learns from the first step.

use tch::nn;
use tch::Tensor;

use kd_core::{KdError, Result};

use crate::config::Upsample;

/// One stage of the cascade.
#[derive(Debug)]
struct AffBlock {
    c_in: i64,
    c_a: i64,
    embed: nn::Conv2D,
    bn: kd_core::models::BatchNorm,
    /// `P_i`, when the deeper fused width differs from this stage's.
    up_proj: Option<nn::Conv2D>,
    /// `G_i`; `None` for the deepest stage, which has nothing below it.
    gate: Option<nn::Conv2D>,
}

fn conv1x1(path: nn::Path<'_>, c_in: i64, c_out: i64, bias: bool) -> nn::Conv2D {
    nn::conv2d(
        path,
        c_in,
        c_out,
        1,
        nn::ConvConfig {
            bias,
            ..Default::default()
        },
    )
}

impl AffBlock {
    fn embed_bn(&self, f: &Tensor, train: bool) -> Tensor {
        f.apply(&self.embed).apply_t(&self.bn, train)
    }
}

/// How the gates are set in a forward pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Gate {
    /// The learned gates (training and inference).
    Learned,
    /// Every gate forced to `(g_own, g_deeper)`: `(1, 0)` keeps only `BN(E_i(F_i))`, `(0, 1)`
    /// only the upsampled deeper map. For analysis and tests.
    Fixed(f64, f64),
}

/// What a cascade returns.
#[derive(Debug)]
pub struct AffOutput {
    /// The fused maps `A_i`, shallow to deep: `[B, C_a(i), H_i, W_i]`, with the spatial size
    /// of the input stage `i`.
    pub fused: Vec<Tensor>,
    /// The gates, shallow to deep: `[B, 2, H_i, W_i]` with values in `(0, 1)`; `None` for the
    /// deepest stage.
    pub gates: Vec<Option<Tensor>>,
}

/// The AFF cascade over `n` stages.
#[derive(Debug)]
pub struct AffCascade {
    blocks: Vec<AffBlock>,
    upsample: Upsample,
}

impl AffCascade {
    /// Builds the cascade under `path` for stage maps with `in_channels[i]` channels (shallow to
    /// deep) fused to `widths[i]` channels. Fails unless both lists have the same, non-zero
    /// length and positive entries.
    pub fn new(path: &nn::Path<'_>, in_channels: &[i64], widths: &[i64], upsample: Upsample) -> Result<Self> {
        if in_channels.is_empty() || in_channels.len() != widths.len() {
            return Err(KdError::invalid(format!(
                "AFF needs one fused width per stage and at least one stage; got input channels \
                 {in_channels:?} and widths {widths:?}"
            )));
        }
        if in_channels.iter().chain(widths).any(|&c| c < 1) {
            return Err(KdError::invalid(format!(
                "AFF channel counts must be >= 1; got input channels {in_channels:?} and widths {widths:?}"
            )));
        }
        let n = in_channels.len();
        let blocks = (0..n)
            .map(|i| {
                let p = path / format!("stage{i}");
                let (c_in, c_a) = (in_channels[i], widths[i]);
                let deeper = (i + 1 < n).then(|| widths[i + 1]);
                let gate = deeper.map(|_| {
                    let g = conv1x1(&p / "gate", 2 * c_a, 2, true);
                    tch::no_grad(|| {
                        let _ = g.ws.shallow_clone().zero_();
                        if let Some(b) = &g.bs {
                            let _ = b.shallow_clone().zero_();
                        }
                    });
                    g
                });
                AffBlock {
                    c_in,
                    c_a,
                    embed: conv1x1(&p / "embed", c_in, c_a, false),
                    bn: kd_core::models::batch_norm2d(&p / "bn", c_a, Default::default()),
                    up_proj: deeper
                        .filter(|&c| c != c_a)
                        .map(|c| conv1x1(&p / "up_proj", c, c_a, false)),
                    gate,
                }
            })
            .collect();
        Ok(Self { blocks, upsample })
    }

    /// Number of stages `n`.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Always false: a cascade has at least one stage.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Fused widths `C_a(i)`, shallow to deep.
    pub fn widths(&self) -> Vec<i64> {
        self.blocks.iter().map(|b| b.c_a).collect()
    }

    /// Runs the cascade with the learned gates. `feats[i]` is stage `i`'s map
    /// `[B, C_i, H_i, W_i]`, shallow to deep; `train` selects BatchNorm's batch statistics.
    pub fn forward_t(&self, feats: &[&Tensor], train: bool) -> Result<AffOutput> {
        self.forward_gated(feats, train, Gate::Learned)
    }

    /// Runs the cascade with the given gate setting. Shapes as [`AffCascade::forward_t`];
    /// fails with [`KdError::BadShape`] on a wrong stage count, rank, channel count or batch.
    pub fn forward_gated(&self, feats: &[&Tensor], train: bool, gate: Gate) -> Result<AffOutput> {
        self.check(feats)?;
        let n = self.blocks.len();
        let mut fused: Vec<Tensor> = Vec::with_capacity(n);
        let mut gates: Vec<Option<Tensor>> = Vec::with_capacity(n);
        let mut deeper = self.blocks[n - 1].embed_bn(feats[n - 1], train);
        fused.push(deeper.shallow_clone());
        gates.push(None);
        for i in (0..n - 1).rev() {
            let b = &self.blocks[i];
            let x = b.embed_bn(feats[i], train);
            let size = x.size();
            let u = self.lift_unchecked(i, &deeper, size[2], size[3]);
            let g = match (gate, &b.gate) {
                (Gate::Fixed(own, deep), _) => {
                    let shape = [size[0], 1, size[2], size[3]];
                    let opts = (x.kind(), x.device());
                    Tensor::cat(
                        &[Tensor::full(shape, own, opts), Tensor::full(shape, deep, opts)],
                        1,
                    )
                }
                (Gate::Learned, Some(conv)) => Tensor::cat(&[&x, &u], 1).apply(conv).sigmoid(),
                (Gate::Learned, None) => {
                    return Err(KdError::invalid(format!("AFF stage {i} has no gate")));
                }
            };
            let a = g.narrow(1, 0, 1) * &x + g.narrow(1, 1, 1) * &u;
            fused.push(a.shallow_clone());
            gates.push(Some(g));
            deeper = a;
        }
        fused.reverse();
        gates.reverse();
        Ok(AffOutput { fused, gates })
    }

    /// `BN(E_i(F_i))`: stage `i`'s own contribution, `[B, C_a(i), H_i, W_i]`, from its map
    /// `f: [B, C_i, H_i, W_i]`. What `A_i` is when its gate is forced to `(1, 0)`.
    pub fn embed(&self, stage: usize, f: &Tensor, train: bool) -> Result<Tensor> {
        let b = self.block(stage)?;
        let s = f.size();
        if s.len() != 4 || s[1] != b.c_in {
            return Err(KdError::BadShape {
                op: "AffCascade::embed".into(),
                name: format!("stage {stage} map"),
                shape: s,
                expected: format!("[B, {}, H, W]", b.c_in),
            });
        }
        Ok(b.embed_bn(f, train))
    }

    /// `P_i(Up(A_{i+1} → h × w))`: the deeper fused map `deeper: [B, C_a(i+1), H', W']`
    /// brought to stage `i`'s size and width, `[B, C_a(i), h, w]`. What `A_i` is when its gate
    /// is forced to `(0, 1)`. Fails for the deepest stage, which has nothing below it.
    pub fn lift(&self, stage: usize, deeper: &Tensor, h: i64, w: i64) -> Result<Tensor> {
        self.block(stage)?;
        let below = self
            .block(stage + 1)
            .map_err(|_| KdError::invalid(format!("AFF stage {stage} is the deepest; nothing to lift")))?;
        let s = deeper.size();
        if s.len() != 4 || s[1] != below.c_a || h < 1 || w < 1 {
            return Err(KdError::BadShape {
                op: "AffCascade::lift".into(),
                name: format!("fused map of stage {}", stage + 1),
                shape: s,
                expected: format!("[B, {}, H, W] and a positive target size", below.c_a),
            });
        }
        Ok(self.lift_unchecked(stage, deeper, h, w))
    }

    fn lift_unchecked(&self, stage: usize, deeper: &Tensor, h: i64, w: i64) -> Tensor {
        let u = resize(deeper, h, w, self.upsample);
        match &self.blocks[stage].up_proj {
            Some(p) => u.apply(p),
            None => u,
        }
    }

    fn block(&self, stage: usize) -> Result<&AffBlock> {
        self.blocks.get(stage).ok_or_else(|| {
            KdError::invalid(format!(
                "AFF stage {stage} out of range; the cascade has {} stages",
                self.blocks.len()
            ))
        })
    }

    fn check(&self, feats: &[&Tensor]) -> Result<()> {
        if feats.len() != self.blocks.len() {
            return Err(KdError::invalid(format!(
                "AFF was built for {} stages but got {} feature maps",
                self.blocks.len(),
                feats.len()
            )));
        }
        let batch = feats[0].size().first().copied();
        for (i, (f, b)) in feats.iter().zip(&self.blocks).enumerate() {
            let s = f.size();
            if s.len() != 4 || s[1] != b.c_in || Some(s[0]) != batch || s.iter().any(|&d| d < 1) {
                return Err(KdError::BadShape {
                    op: "AffCascade::forward".into(),
                    name: format!("stage {i} map"),
                    shape: s,
                    expected: format!("[B, {}, H, W] with the batch of stage 0", b.c_in),
                });
            }
        }
        Ok(())
    }
}

/// Resizes `x: [B, C, H, W]` to `[B, C, h, w]` (no-op when it already has that size).
pub fn resize(x: &Tensor, h: i64, w: i64, mode: Upsample) -> Tensor {
    let s = x.size();
    if s[2] == h && s[3] == w {
        return x.shallow_clone();
    }
    match mode {
        Upsample::Nearest => x.upsample_nearest2d([h, w], None, None),
        Upsample::Bilinear => x.upsample_bilinear2d([h, w], false, None, None),
    }
}

/// Global average pooling `[B, C, H, W] → [B, C]`.
pub fn global_avg_pool(x: &Tensor) -> Tensor {
    x.mean_dim(&[2i64, 3][..], false, x.kind())
}
