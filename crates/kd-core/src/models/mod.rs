//! Models with named feature taps.
//!
//! Distillation needs intermediate features from both networks. Running a network twice (once
//! for logits, once with hooks) doubles the cost and, with BatchNorm in train mode, changes the
//! statistics, so every model returns its logits and its taps from one forward pass.

use tch::Tensor;

mod norm;
pub use norm::{batch_norm2d, with_norm, BatchNorm, NormMode, SyncBnFailed};

use crate::{KdError, Result};

/// Static description of one feature tap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tap {
    /// Name, e.g. `"stage2"`.
    pub name: String,
    /// Channel count of the tapped map.
    pub channels: i64,
    /// Down-sampling factor of the tapped map relative to the input (1, 2, 4, ...).
    pub stride: i64,
}

impl Tap {
    /// A tap called `name` with `channels` channels at `stride`.
    pub fn new(name: &str, channels: i64, stride: i64) -> Self {
        Tap {
            name: name.into(),
            channels,
            stride,
        }
    }
}

/// What one forward pass returns.
#[derive(Debug)]
pub struct ModelOutput {
    /// Class scores: `[B, K]` for classifiers, `[B, K, H, W]` for dense prediction.
    pub logits: Tensor,
    /// Logits of an auxiliary head `[B, K, h, w]` (e.g. the FCN head on stage 3 of a
    /// segmentation net), when the model has one; trained with the task loss, never used at
    /// inference.
    pub aux_logits: Option<Tensor>,
    /// The taps in network order, `(name, [B, C, H, W])`, matching [`Model::taps`].
    pub features: Vec<(String, Tensor)>,
    /// The penultimate embedding `[B, D]` (after global pooling), when the model has one.
    pub pooled: Option<Tensor>,
    /// Further named head outputs that the task loss needs, e.g. a detector's box regression
    /// `[B, A, 4]` and centre-ness `[B, A, 1]` over its `A` anchor points, or a dense
    /// model's logits at its head's own resolution ([`NATIVE_LOGITS`]); empty for classifiers.
    pub heads: Vec<(String, Tensor)>,
}

/// The head output holding a dense model's logits at the resolution its head computes them,
/// `[B, K, h, w]`, before they are resized to the input for the task loss and inference (MMSeg's
/// `decode_head.conv_seg` output, at output stride 8). Logit distillation reads this map, as
/// MMRazor's CWD recorder and GDD's and MGD's released code do: the spatial softmax then runs
/// over the head's own positions, and no gradient passes through the resize.
pub const NATIVE_LOGITS: &str = "native_logits";

impl ModelOutput {
    /// The tap called `name`, or an error listing the available taps.
    pub fn feature(&self, name: &str) -> Result<&Tensor> {
        self.features
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| {
                let names: Vec<&str> = self.features.iter().map(|(n, _)| n.as_str()).collect();
                KdError::invalid(format!("no feature tap {name:?}; this model has {names:?}"))
            })
    }

    /// The logits logit distillation compares: the [`NATIVE_LOGITS`] head output when the model
    /// returns one, else `logits`.
    pub fn dense_logits(&self) -> &Tensor {
        self.heads
            .iter()
            .find(|(n, _)| n == NATIVE_LOGITS)
            .map_or(&self.logits, |(_, t)| t)
    }

    /// The head output called `name`, or an error listing the available ones.
    pub fn head(&self, name: &str) -> Result<&Tensor> {
        self.heads
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| {
                let names: Vec<&str> = self.heads.iter().map(|(n, _)| n.as_str()).collect();
                KdError::invalid(format!("no head output {name:?}; this model has {names:?}"))
            })
    }

    /// The last tap (the deepest stage).
    pub fn last_feature(&self) -> Result<&Tensor> {
        self.features
            .last()
            .map(|(_, t)| t)
            .ok_or_else(|| KdError::invalid("model has no feature taps"))
    }
}

/// A network usable as student or teacher.
pub trait Model {
    /// Architecture name, e.g. `"resnet8x4"`.
    fn name(&self) -> &str;

    /// One forward pass. `x` is `[B, C_in, H, W]`; `train` selects BatchNorm/Dropout mode.
    /// A malformed `x` makes libtorch panic: validate untrusted input with
    /// [`Model::check_input`] first.
    fn forward_t(&self, x: &Tensor, train: bool) -> ModelOutput;

    /// Re-enters the network right after tap `tap` (an index into [`Model::taps`]) with a
    /// replacement for that tap's map `h` `[B, C, H, W]`, and runs the rest. The returned
    /// features hold only the taps after `tap`. An optional capability (staged classifiers have
    /// it, for methods such as UniKD that feed aggregated features onwards); the default is an
    /// error naming the model.
    fn forward_from(&self, tap: usize, h: &Tensor, train: bool) -> Result<ModelOutput> {
        let _ = (tap, h, train);
        Err(KdError::invalid(format!(
            "{} cannot be re-entered at a tap (forward_from is not supported by this model)",
            self.name()
        )))
    }

    /// The taps this model returns, in order.
    fn taps(&self) -> &[Tap];

    /// Number of output classes K.
    fn num_classes(&self) -> i64;

    /// Number of input channels `C_in` the model was built for.
    fn in_channels(&self) -> i64;

    /// Checks that `x` is a valid input for [`Model::forward_t`]: a non-empty floating-point
    /// `[B, C_in, H, W]` tensor. `forward_t` cannot return an error, so callers (the trainer,
    /// evaluation) run this first and turn bad data into a [`KdError::BadShape`] instead of a
    /// libtorch panic. Implementations may check more (dtype, device).
    fn check_input(&self, x: &Tensor) -> Result<()> {
        check_input_shape(self.name(), self.in_channels(), x)?;
        if !x.is_floating_point() {
            return Err(KdError::invalid(format!(
                "{} input: x has dtype {:?}, expected a floating-point tensor",
                self.name(),
                x.kind()
            )));
        }
        Ok(())
    }

    /// The classifier head alone: global average pooling then the linear layer, applied to a
    /// last-stage map `[B, C_last, H, W]`, giving `[B, K]`. Lets a method reuse a (frozen)
    /// teacher head on projected student features. An optional capability of classifiers; the
    /// default is an error naming the model.
    fn classify(&self, last_map: &Tensor) -> Result<Tensor> {
        let _ = last_map;
        Err(KdError::invalid(format!(
            "{} has no pooled classifier head (classify is not supported by this model)",
            self.name()
        )))
    }

    /// The parameters of the linear layer inside [`Model::classify`]: weight `[K, D]` and bias
    /// `[K]` (shallow handles onto the live variables), when the head is one linear layer after
    /// global average pooling. Lets a method copy a (frozen) teacher head into a model of its
    /// own, e.g. to export it with a student. `None` (the default) for other heads.
    fn linear_head(&self) -> Option<(Tensor, Option<Tensor>)> {
        None
    }

    /// The concrete model, for task code that needs more than this trait: a two-stage
    /// detector's second stage samples its regions from the batch's boxes, so its task loss and
    /// its inference reach the network's own methods through a downcast. `None` (the default)
    /// for models that the trait describes completely.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// The student tap `s_name` and the teacher tap `t_name`, for a method that compares the two
/// maps position by position: fails, naming the side and listing its taps, when a tap does not
/// exist, and, naming `what` (e.g. `"gdd level 2"`), when the two taps have different strides.
pub fn paired_taps<'a>(
    what: &str,
    student: &'a [Tap],
    s_name: &str,
    teacher: &'a [Tap],
    t_name: &str,
) -> Result<(&'a Tap, &'a Tap)> {
    let find = |side: &str, taps: &'a [Tap], name: &str| {
        taps.iter().find(|t| t.name == name).ok_or_else(|| {
            let names: Vec<&str> = taps.iter().map(|t| t.name.as_str()).collect();
            KdError::invalid(format!(
                "{side}_tap: the {side} has no tap {name:?}; its taps are {names:?}"
            ))
        })
    };
    let (s, t) = (
        find("student", student, s_name)?,
        find("teacher", teacher, t_name)?,
    );
    if s.stride != t.stride {
        return Err(KdError::invalid(format!(
            "{what}: student tap {:?} has stride {} but teacher tap {:?} has stride {}; \
             the maps must have one spatial size",
            s.name, s.stride, t.name, t.stride
        )));
    }
    Ok((s, t))
}

/// Fails unless `x` is `[B, in_channels, H, W]` with no empty dimension; the error names `model`.
pub fn check_input_shape(model: &str, in_channels: i64, x: &Tensor) -> Result<()> {
    let s = x.size();
    if s.len() != 4 || s[1] != in_channels || s.iter().any(|&d| d <= 0) {
        return Err(KdError::BadShape {
            op: format!("{model} input"),
            name: "x".into(),
            shape: s,
            expected: format!("[B, {in_channels}, H, W] with B, H, W > 0"),
        });
    }
    Ok(())
}

/// What a model is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelSpec {
    /// Input channels (3 for RGB, 1 for grey 28×28 images).
    pub in_channels: i64,
    /// Number of classes K.
    pub num_classes: i64,
}
