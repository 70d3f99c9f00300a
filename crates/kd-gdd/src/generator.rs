//! The adapter and generator that GDD shares with its ancestor MGD: both corrupt the adapted
//! student map (GDD with noise, MGD with a spatial mask) and ask the same shallow generator to
//! recover the teacher's map from it. One definition keeps their variables, names and
//! initialisation identical, so the two rows of a table differ only in corruption and loss.

use kd_core::{KdError, Result};
use tch::nn::{self, Init};
use tch::Tensor;

/// A convolution with bias initialised as PyTorch's `Conv2d` (kaiming uniform with `a = √5`):
/// weight and bias uniform in `±1/sqrt(c_in · k²)`.
fn torch_conv(p: &nn::Path<'_>, c_in: i64, c_out: i64, k: i64) -> nn::Conv2D {
    let bound = 1.0 / ((c_in * k * k) as f64).sqrt();
    let uniform = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    let cfg = nn::ConvConfig {
        padding: k / 2,
        bias: true,
        ws_init: uniform,
        bs_init: uniform,
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

/// Adapter `A` and generator `G` of one level, as in the released GDD and MGD code:
///
/// - `A`: 1×1 convolution `C_s → C_t` with bias when `C_s ≠ C_t`, the identity otherwise
///   (variables `align.weight`, `align.bias`);
/// - `G`: 3×3 conv `C_t → C_t` (bias) → ReLU → 3×3 conv `C_t → C_t` (bias), no normalisation
///   (variables `generation.0.*`, `generation.2.*`).
///
/// Convolutions are initialised as PyTorch's `Conv2d` default.
#[derive(Debug)]
pub struct Generator {
    align: Option<nn::Conv2D>,
    gen1: nn::Conv2D,
    gen2: nn::Conv2D,
    c_s: i64,
    c_t: i64,
}

impl Generator {
    /// Builds the adapter (iff `c_s ≠ c_t`) and the generator under `p`; `what` names the
    /// level in errors.
    pub fn new(p: &nn::Path<'_>, what: &str, c_s: i64, c_t: i64) -> Result<Self> {
        if c_s < 1 || c_t < 1 {
            return Err(KdError::invalid(format!(
                "{what}: channel counts must be positive, got student {c_s}, teacher {c_t}"
            )));
        }
        let g = p / "generation";
        Ok(Self {
            align: (c_s != c_t).then(|| torch_conv(&(p / "align"), c_s, c_t, 1)),
            gen1: torch_conv(&(&g / "0"), c_t, c_t, 3),
            gen2: torch_conv(&(&g / "2"), c_t, c_t, 3),
            c_s,
            c_t,
        })
    }

    /// The adapter, when there is one (exactly when `C_s ≠ C_t`).
    pub fn adapter(&self) -> Option<&nn::Conv2D> {
        self.align.as_ref()
    }

    /// The generator's two convolutions.
    pub fn convs(&self) -> (&nn::Conv2D, &nn::Conv2D) {
        (&self.gen1, &self.gen2)
    }

    /// Student channels `C_s`.
    pub fn in_channels(&self) -> i64 {
        self.c_s
    }

    /// Teacher channels `C_t`.
    pub fn out_channels(&self) -> i64 {
        self.c_t
    }

    /// Fails unless `s` is `[B, C_s, H, W]` with no empty dimension.
    pub fn check_student(&self, op: &str, s: &Tensor) -> Result<()> {
        let sz = s.size();
        if sz.len() != 4 || sz[1] != self.c_s || sz.contains(&0) {
            return Err(KdError::BadShape {
                op: op.into(),
                name: "student feature".into(),
                shape: sz,
                expected: format!("[B, {}, H, W] with B, H, W > 0", self.c_s),
            });
        }
        Ok(())
    }

    /// Fails unless `s` is `[B, C_s, H, W]` and `t` is `[B, C_t, H, W]` (same batch and spatial
    /// size), naming both shapes; checked before anything runs.
    pub fn check_pair(&self, op: &str, s: &Tensor, t: &Tensor) -> Result<()> {
        self.check_student(op, s)?;
        let (ss, ts) = (s.size(), t.size());
        if ts.len() != 4 || ts[1] != self.c_t || ts[0] != ss[0] || ts[2..] != ss[2..] {
            return Err(KdError::Shape {
                op: format!(
                    "{op} (expected student [B, {}, H, W] and teacher [B, {}, H, W])",
                    self.c_s, self.c_t
                ),
                left_name: "student feature".into(),
                left: ss,
                right_name: "teacher feature".into(),
                right: ts,
            });
        }
        Ok(())
    }

    /// `A(S)`: `[B, C_s, H, W] → [B, C_t, H, W]` (no shape check).
    pub fn adapt(&self, s: &Tensor) -> Tensor {
        match &self.align {
            Some(a) => s.apply(a),
            None => s.shallow_clone(),
        }
    }

    /// `G(x)`: `[B, C_t, H, W] → [B, C_t, H, W]`.
    pub fn generate(&self, x: &Tensor) -> Tensor {
        x.apply(&self.gen1).relu().apply(&self.gen2)
    }
}
