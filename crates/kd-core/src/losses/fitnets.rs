//! FitNets hint learning (Romero et al., ICLR 2015) as run by modern benchmarks.
//!
//! A student "guided" map `F_S ∈ [B, C_s, H, W]` is regressed onto a teacher "hint" map
//! `F_T ∈ [B, C_t, H, W]` through a small learned regressor `r`. The student is usually thinner
//! than the teacher, so `r` is needed to map `C_s` channels to `C_t`; following the CRD
//! benchmark, `r` is a 1×1 convolution without bias followed by BatchNorm ([`HintAdapter`]) and
//! the loss is the element-mean squared error, without the original ½ and sum (which make the
//! value grow with the map size):
//!
//! ```text
//! L_hint = mean_{b,c,h,w} (r(F_S) − F_T)²
//! ```
//!
//! When the student map is spatially larger than the teacher's by an integer factor (e.g. a
//! tap one stage earlier), [`HintAdapter::with_stride`] builds a 3×3 convolution with that
//! stride and padding 1 instead, which maps `H` to `⌈H / s⌉`, as CRD's regressor does for the
//! 2× case. Any remaining spatial mismatch is reported by [`hint_loss`] as an error: maps are
//! never silently resized.

use tch::{nn, Tensor};

use super::check;
use crate::{KdError, Result};

/// BatchNorm momentum of the adapter (PyTorch's default).
const BN_MOMENTUM: f64 = 0.1;
/// BatchNorm epsilon of the adapter (PyTorch's default).
const BN_EPS: f64 = 1e-5;

/// The FitNets regressor `r`: convolution (no bias) then BatchNorm, mapping `C_s` student
/// channels to `C_t` teacher channels.
///
/// Its parameters live under the `path` it was built with (`conv.weight`, `bn.weight`,
/// `bn.bias`, `bn.running_mean`, `bn.running_var`), so a method creates it under its auxiliary
/// path and it trains with the student without being exported.
#[derive(Debug)]
pub struct HintAdapter {
    conv_weight: Tensor,
    bn: crate::models::BatchNorm,
    c_s: i64,
    c_t: i64,
    stride: i64,
}

impl HintAdapter {
    /// A 1×1 conv + BN adapter `[B, C_s, H, W] → [B, C_t, H, W]`.
    pub fn new(path: &nn::Path<'_>, c_s: i64, c_t: i64) -> Self {
        Self::build(path, c_s, c_t, 1)
    }

    /// An adapter that also divides the spatial size by `stride`: `[B, C_s, H, W] →
    /// [B, C_t, ⌈H/s⌉, ⌈W/s⌉]`. `stride = 1` is [`HintAdapter::new`]; `stride > 1` uses a 3×3
    /// convolution with padding 1 so every student position contributes. Fails for
    /// `stride < 1` or non-positive channel counts.
    pub fn with_stride(path: &nn::Path<'_>, c_s: i64, c_t: i64, stride: i64) -> Result<Self> {
        if stride < 1 || c_s < 1 || c_t < 1 {
            return Err(KdError::invalid(format!(
                "HintAdapter: channels and stride must be >= 1, got c_s = {c_s}, c_t = {c_t}, stride = {stride}"
            )));
        }
        Ok(Self::build(path, c_s, c_t, stride))
    }

    /// An adapter only where one is needed: `Some` when `c_s != c_t` or `force` is set, `None`
    /// when the student map can be compared with the teacher's as it is.
    pub fn maybe_new(path: &nn::Path<'_>, c_s: i64, c_t: i64, force: bool) -> Option<HintAdapter> {
        (force || c_s != c_t).then(|| Self::new(path, c_s, c_t))
    }

    fn build(path: &nn::Path<'_>, c_s: i64, c_t: i64, stride: i64) -> Self {
        let ksize = if stride == 1 { 1 } else { 3 };
        let conv = nn::conv2d(
            path / "conv",
            c_s,
            c_t,
            ksize,
            nn::ConvConfig {
                bias: false,
                ..Default::default()
            },
        );
        let bn = crate::models::batch_norm2d(
            path / "bn",
            c_t,
            nn::BatchNormConfig {
                ws_init: nn::Init::Const(1.0),
                momentum: BN_MOMENTUM,
                eps: BN_EPS,
                ..Default::default()
            },
        );
        Self {
            conv_weight: conv.ws,
            bn,
            c_s,
            c_t,
            stride,
        }
    }

    /// Student channel count `C_s` this adapter accepts.
    pub fn c_s(&self) -> i64 {
        self.c_s
    }

    /// Teacher channel count `C_t` this adapter produces.
    pub fn c_t(&self) -> i64 {
        self.c_t
    }

    /// Spatial stride (1 for the plain 1×1 adapter).
    pub fn stride(&self) -> i64 {
        self.stride
    }

    /// Maps a student map `x: [B, C_s, H, W]` to `[B, C_t, ⌈H/s⌉, ⌈W/s⌉]`. `train` selects
    /// BatchNorm's batch statistics (and updates its running statistics) or the running ones.
    ///
    /// Fails with [`KdError::BadShape`] when `x` is not 4-d or has the wrong channel count; a
    /// dtype or device mismatch with the parameters comes back as [`KdError::Torch`].
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let s = x.size();
        if s.len() != 4 || s[1] != self.c_s {
            return Err(KdError::BadShape {
                op: "HintAdapter::forward_t".into(),
                name: "student feature".into(),
                shape: s,
                expected: format!(
                    "[B, {}, H, W] (the adapter maps {} → {} channels)",
                    self.c_s, self.c_s, self.c_t
                ),
            });
        }
        let pad = if self.stride == 1 { 0 } else { 1 };
        let y = x.f_conv2d::<Tensor>(&self.conv_weight, None, [self.stride; 2], [pad; 2], [1, 1], 1)?;
        // The layer, not a bare batch_norm call, so the recipe's BatchNorm mode applies.
        Ok(nn::ModuleT::forward_t(&self.bn, &y, train))
    }
}

/// Hint loss: the element-mean squared error `mean((adapted_student − teacher)²)`, a scalar.
///
/// `adapted_student`: `r(F_S)`, e.g. `[B, C_t, H, W]`; `teacher`: `F_T`, the same shape (any
/// mismatch, spatial included, is an error). Returns a 0-dim tensor in squared feature units,
/// fp32 (fp64 if an input is fp64). The teacher is detached.
pub fn hint_loss(adapted_student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    const OP: &str = "hint_loss";
    check::pair(
        OP,
        "identical shapes",
        adapted_student.dim(),
        "adapted_student",
        adapted_student,
        "teacher",
        teacher,
    )?;
    check::non_empty(OP, "adapted_student", adapted_student)?;
    let kind = check::work_kind(&[adapted_student, teacher]);
    // libtorch's fused MSE: one kernel forward and one backward, instead of sub, square, mean.
    let t = super::kl::constant(teacher).to_kind(kind);
    Ok(adapted_student.to_kind(kind).mse_loss(&t, tch::Reduction::Mean))
}

#[cfg(test)]
mod tests {
    use tch::{nn, Device, Kind, Tensor};

    use super::*;
    use crate::losses::gradcheck::{assert_gradients, assert_shape_error};

    #[test]
    fn hand_computed_value() {
        // (1 − 0)², (2 − 0)², (0 − 1)², (3 − 3)² → mean = (1 + 4 + 1 + 0)/4 = 1.5.
        let a = Tensor::from_slice(&[1.0f64, 2.0, 0.0, 3.0]).view([1, 1, 2, 2]);
        let t = Tensor::from_slice(&[0.0f64, 0.0, 1.0, 3.0]).view([1, 1, 2, 2]);
        assert_eq!(hint_loss(&a, &t).unwrap().double_value(&[]), 1.5);
    }

    #[test]
    fn zero_when_adapter_output_equals_teacher() {
        tch::manual_seed(30);
        let vs = nn::VarStore::new(Device::Cpu);
        let adapter = HintAdapter::new(&vs.root(), 3, 5);
        let x = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu));
        let adapted = adapter.forward_t(&x, false).unwrap();
        assert_eq!(adapted.size(), vec![2, 5, 4, 4]);
        let teacher = adapted.detach().copy();
        assert_eq!(hint_loss(&adapted, &teacher).unwrap().double_value(&[]), 0.0);
    }

    #[test]
    fn gradient_reaches_adapter_and_student_but_not_teacher() {
        tch::manual_seed(31);
        let vs = nn::VarStore::new(Device::Cpu);
        let adapter = HintAdapter::new(&(vs.root() / "hint"), 3, 5);
        let x = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let teacher = Tensor::randn([2, 5, 4, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        hint_loss(&adapter.forward_t(&x, true).unwrap(), &teacher)
            .unwrap()
            .backward();
        assert!(x.grad().defined() && x.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
        assert!(!teacher.grad().defined());
        let vars = vs.variables();
        for name in ["hint.conv.weight", "hint.bn.weight", "hint.bn.bias"] {
            let g = vars[name].grad();
            assert!(
                g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "{name}"
            );
        }
    }

    #[test]
    fn adapter_exists_only_when_needed_unless_forced() {
        let vs = nn::VarStore::new(Device::Cpu);
        assert!(HintAdapter::maybe_new(&(vs.root() / "a"), 8, 8, false).is_none());
        assert_eq!(
            vs.variables().len(),
            0,
            "no parameters are created when no adapter is needed"
        );
        let forced = HintAdapter::maybe_new(&(vs.root() / "b"), 8, 8, true).unwrap();
        assert_eq!((forced.c_s(), forced.c_t(), forced.stride()), (8, 8, 1));
        let needed = HintAdapter::maybe_new(&(vs.root() / "c"), 4, 8, false).unwrap();
        assert_eq!((needed.c_s(), needed.c_t()), (4, 8));
    }

    #[test]
    fn strided_adapter_halves_spatial_size() {
        let vs = nn::VarStore::new(Device::Cpu);
        let adapter = HintAdapter::with_stride(&vs.root(), 3, 6, 2).unwrap();
        for (h, w, oh, ow) in [(8, 8, 4, 4), (7, 5, 4, 3)] {
            let x = Tensor::randn([2, 3, h, w], (Kind::Float, Device::Cpu));
            assert_eq!(adapter.forward_t(&x, true).unwrap().size(), vec![2, 6, oh, ow]);
        }
        assert!(HintAdapter::with_stride(&vs.root(), 3, 6, 0).is_err());
    }

    #[test]
    fn gradients_match_finite_differences() {
        tch::manual_seed(32);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let adapter = HintAdapter::new(&vs.root(), 2, 3);
        vs.double();
        let x = Tensor::randn([2, 2, 2, 2], (Kind::Double, Device::Cpu));
        let t = Tensor::randn([2, 3, 2, 2], (Kind::Double, Device::Cpu));
        // Through the adapter (BatchNorm in train mode) down to the student map.
        assert_gradients("hint_loss(adapter(x))", &[x, t.shallow_clone()], &[0], |v| {
            hint_loss(&adapter.forward_t(&v[0], true)?, &v[1])
        });
        let a = Tensor::randn([2, 3, 2, 2], (Kind::Double, Device::Cpu));
        assert_gradients("hint_loss", &[a, t], &[0], |v| hint_loss(&v[0], &v[1]));
    }

    #[test]
    fn shape_errors() {
        let a = Tensor::zeros([2, 5, 4, 4], (Kind::Float, Device::Cpu));
        let t = Tensor::zeros([2, 5, 8, 8], (Kind::Float, Device::Cpu));
        assert_shape_error(hint_loss(&a, &t), &a, &t);
        let vs = nn::VarStore::new(Device::Cpu);
        let adapter = HintAdapter::new(&vs.root(), 3, 5);
        let x = Tensor::zeros([2, 4, 4, 4], (Kind::Float, Device::Cpu));
        let err = adapter.forward_t(&x, false).unwrap_err();
        assert!(matches!(err, KdError::BadShape { .. }));
        assert!(err.to_string().contains("[2, 4, 4, 4]") && err.to_string().contains("[B, 3, H, W]"));
        // A dtype mismatch with the parameters is an error, not a panic.
        let x64 = Tensor::zeros([2, 3, 4, 4], (Kind::Double, Device::Cpu));
        assert!(matches!(adapter.forward_t(&x64, false), Err(KdError::Torch(_))));
    }
}
