//! FitNets hint learning (Romero et al., ICLR 2015) as run by modern benchmarks.
//!
//! A student "guided" map `F_S ∈ [B, C_s, H, W]` is regressed onto a teacher "hint" map
//! `F_T ∈ [B, C_t, H, W]` through a small learned regressor `r`. The student is usually thinner
//! than the teacher, so `r` is needed to map `C_s` channels to `C_t`; following the CRD
//! benchmark's `ConvReg`, `r` is a 1×1 convolution, then BatchNorm, then (by default) a ReLU
//! ([`HintAdapter`]), and the loss is the element-mean squared error, without the original ½
//! and sum (which make the value grow with the map size):
//!
//! ```text
//! r(x)   = ReLU(BN(conv(x)))          (BN(conv(x)) with the ReLU switched off)
//! L_hint = mean_{b,c,h,w} (r(F_S) − F_T)²
//! ```
//!
//! The ReLU is `ConvReg`'s `use_relu`, on by default there as here, so the regressor's output
//! is non-negative; [`HintAdapter::with_relu`] switches it off (CRD itself builds `ConvReg`
//! with `use_relu=False` for its AB connector).
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

/// The FitNets regressor `r`: convolution, BatchNorm, then a ReLU (on unless
/// [`HintAdapter::with_relu`] turns it off), mapping `C_s` student channels to `C_t` teacher
/// channels, as CRD's `ConvReg`.
///
/// The convolution has no bias: `ConvReg`'s has one, but the BatchNorm right after subtracts a
/// per-channel mean, and in training that batch mean contains the bias, which therefore cancels
/// exactly (output and gradients alike; the running mean merely absorbs it for evaluation). It
/// would be a parameter with no effect on the training loss.
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
    relu: bool,
}

impl HintAdapter {
    /// A 1×1 conv + BN + ReLU adapter `[B, C_s, H, W] → [B, C_t, H, W]`.
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
    /// when the student map can be compared with the teacher's as it is. The ReLU is on, as
    /// for [`HintAdapter::new`].
    pub fn maybe_new(path: &nn::Path<'_>, c_s: i64, c_t: i64, force: bool) -> Option<HintAdapter> {
        (force || c_s != c_t).then(|| Self::new(path, c_s, c_t))
    }

    /// The same adapter with its final ReLU on (`true`, the default of every constructor and of
    /// CRD's `ConvReg`, whose `use_relu` this is) or off (`false`: conv + BN only). Creates no
    /// parameters: the ReLU has none.
    pub fn with_relu(mut self, relu: bool) -> Self {
        self.relu = relu;
        self
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
            relu: true,
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

    /// Whether the output goes through the final ReLU.
    pub fn relu(&self) -> bool {
        self.relu
    }

    /// Maps a student map `x: [B, C_s, H, W]` to `[B, C_t, ⌈H/s⌉, ⌈W/s⌉]`, non-negative when the
    /// ReLU is on. `train` selects BatchNorm's batch statistics (and updates its running
    /// statistics) or the running ones.
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
        let y = nn::ModuleT::forward_t(&self.bn, &y, train);
        Ok(if self.relu { y.relu() } else { y })
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

    /// Overwrites a parameter in place, outside autograd.
    fn set(param: &Tensor, values: &[f64]) {
        let src = Tensor::from_slice(values)
            .view(param.size().as_slice())
            .to_kind(param.kind());
        tch::no_grad(|| param.shallow_clone().copy_(&src));
    }

    #[test]
    fn adapter_then_hint_loss_hand_computed() {
        // x of shape [1, 2, 1, 2]: channel 0 = [1, 2], channel 1 = [3, −1]; conv weight [1, −1]
        // → y = [1 − 3, 2 + 1] = [−2, 3].
        // BN (train): mean 0.5, biased variance ((−2.5)² + 2.5²)/2 = 6.25, so the normalised map
        // is ±k with k = 2.5/√(6.25 + 1e-5) ≈ 1; γ = 2, β = 0.5 → [0.5 − 2k, 0.5 + 2k] ≈ [−1.5, 2.5].
        // ReLU → [0, 0.5 + 2k]. Teacher [1, 2]:
        //   with ReLU:    ((0 − 1)² + (2k − 1.5)²)/2 ≈ (1 + 0.25)/2 = 0.625;
        //   without ReLU: ((−0.5 − 2k)² + (2k − 1.5)²)/2 ≈ (6.25 + 0.25)/2 = 3.25.
        let mut vs = nn::VarStore::new(Device::Cpu);
        let on = HintAdapter::new(&(vs.root() / "on"), 2, 1);
        let off = HintAdapter::new(&(vs.root() / "off"), 2, 1).with_relu(false);
        vs.double();
        for a in [&on, &off] {
            set(&a.conv_weight, &[1.0, -1.0]);
            set(a.bn.weight().unwrap(), &[2.0]);
            set(a.bn.bias().unwrap(), &[0.5]);
        }
        let x = Tensor::from_slice(&[1.0f64, 2.0, 3.0, -1.0]).view([1, 2, 1, 2]);
        let t = Tensor::from_slice(&[1.0f64, 2.0]).view([1, 1, 1, 2]);
        let k = 2.5 / (6.25f64 + BN_EPS).sqrt();
        let got_on = on.forward_t(&x, true).unwrap();
        assert!((got_on.double_value(&[0, 0, 0, 0])).abs() < 1e-12);
        assert!((got_on.double_value(&[0, 0, 0, 1]) - (0.5 + 2.0 * k)).abs() < 1e-12);
        let want_on = (1.0 + (2.0 * k - 1.5).powi(2)) / 2.0;
        let loss_on = hint_loss(&got_on, &t).unwrap().double_value(&[]);
        assert!(
            (loss_on - want_on).abs() < 1e-12 && (loss_on - 0.625).abs() < 1e-5,
            "{loss_on}"
        );
        let got_off = off.forward_t(&x, true).unwrap();
        assert!((got_off.double_value(&[0, 0, 0, 0]) - (0.5 - 2.0 * k)).abs() < 1e-12);
        let want_off = ((0.5 + 2.0 * k).powi(2) + (2.0 * k - 1.5).powi(2)) / 2.0;
        let loss_off = hint_loss(&got_off, &t).unwrap().double_value(&[]);
        assert!(
            (loss_off - want_off).abs() < 1e-12 && (loss_off - 3.25).abs() < 1e-4,
            "{loss_off}"
        );
    }

    #[test]
    fn relu_is_on_by_default_and_matches_conv_bn_relu_by_hand() {
        tch::manual_seed(30);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let on = HintAdapter::new(&(vs.root() / "on"), 3, 4);
        let off = HintAdapter::new(&(vs.root() / "off"), 3, 4).with_relu(false);
        let strided = HintAdapter::with_stride(&(vs.root() / "s"), 3, 4, 2).unwrap();
        assert!(on.relu() && !off.relu() && strided.relu());
        assert!(HintAdapter::maybe_new(&(vs.root() / "m"), 3, 4, false)
            .unwrap()
            .relu());
        vs.double();
        for a in [&on, &off] {
            set(a.bn.weight().unwrap(), &[0.5, 1.5, -1.0, 2.0]);
            set(a.bn.bias().unwrap(), &[0.1, -0.2, 0.3, 0.0]);
        }
        let x = Tensor::randn([2, 3, 4, 4], (Kind::Double, Device::Cpu));
        // conv 1×1 as a channel contraction, then BatchNorm with the batch statistics (biased
        // variance, ε = 1e-5), then the affine map.
        let by_hand = |a: &HintAdapter| -> Tensor {
            let w = a.conv_weight.view([4, 3]);
            let y = Tensor::einsum("oc,bchw->bohw", &[&w, &x], None::<i64>);
            let mean = y.mean_dim([0, 2, 3].as_slice(), true, Kind::Double);
            let centred = &y - &mean;
            let var = centred
                .square()
                .mean_dim([0, 2, 3].as_slice(), true, Kind::Double);
            let g = a.bn.weight().unwrap().view([1, 4, 1, 1]);
            let b = a.bn.bias().unwrap().view([1, 4, 1, 1]);
            centred / (var + BN_EPS).sqrt() * g + b
        };
        let max_abs = |t: Tensor| t.abs().max().double_value(&[]);
        let got_on = on.forward_t(&x, true).unwrap();
        assert!(got_on.min().double_value(&[]) >= 0.0);
        assert!(got_on.max().double_value(&[]) > 0.0);
        assert!(max_abs(&got_on - by_hand(&on).clamp_min(0.0)) < 1e-10);
        let got_off = off.forward_t(&x, true).unwrap();
        assert!(got_off.min().double_value(&[]) < 0.0);
        assert!(max_abs(&got_off - by_hand(&off)) < 1e-10);
        // The strided adapter ends with the ReLU too.
        assert!(strided.forward_t(&x, true).unwrap().min().double_value(&[]) >= 0.0);
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
