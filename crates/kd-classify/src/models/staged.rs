//! The shape shared by every zoo classifier: a chain of segments, each ending at a tap, then
//! global average pooling and a linear head.
//!
//! Writing `forward_t`, `forward_from` and `classify` once, over a list of segments, keeps the
//! tap bookkeeping (which map is returned, where re-entry starts, what the head sees) identical
//! across architectures, so a distiller that works on one zoo model works on all of them.

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::blocks::{global_avg_pool, linear};
use super::{check_input_shape, Model, ModelOutput, ModelSpec, Tap};
use kd_core::{KdError, Result};

/// A classifier made of segments that each end at a tap, followed by global average pooling
/// and a linear layer. Segment `i` maps tap `i - 1` (the input, for `i = 0`) to tap `i`; the
/// last tap feeds the head, so it is the map [`Model::classify`] expects.
#[derive(Debug)]
pub struct StagedNet {
    name: String,
    spec: ModelSpec,
    taps: Vec<Tap>,
    segments: Vec<Box<dyn ModuleT>>,
    fc: nn::Linear,
}

impl StagedNet {
    /// Assembles a network from its segments and builds the head `fc` (PyTorch `nn.Linear`
    /// initialisation) under `fc_path`, sized from the last tap's channel count.
    pub fn new(
        name: impl Into<String>,
        spec: ModelSpec,
        segments: Vec<(Tap, Box<dyn ModuleT>)>,
        fc_path: &nn::Path<'_>,
    ) -> Result<Self> {
        let name = name.into();
        check_spec(&name, spec)?;
        let (taps, segments): (Vec<Tap>, Vec<_>) = segments.into_iter().unzip();
        let last = taps
            .last()
            .ok_or_else(|| KdError::invalid(format!("{name}: a network needs one segment")))?;
        let fc = linear(fc_path, last.channels, spec.num_classes);
        Ok(Self {
            name,
            spec,
            taps,
            segments,
            fc,
        })
    }

    /// Runs segments `start..` on `x` and the head on the result.
    fn run(&self, start: usize, x: &Tensor, train: bool) -> ModelOutput {
        let mut features = Vec::with_capacity(self.segments.len().saturating_sub(start));
        let mut h = x.shallow_clone();
        for (seg, tap) in self.segments.iter().zip(&self.taps).skip(start) {
            h = seg.forward_t(&h, train);
            features.push((tap.name.clone(), h.shallow_clone()));
        }
        let pooled = global_avg_pool(&h);
        let logits = pooled.apply(&self.fc);
        ModelOutput {
            logits,
            aux_logits: None,
            features,
            pooled: Some(pooled),
            heads: Vec::new(),
        }
    }

    /// Fails unless `h` is `[B, channels, H, W]`.
    fn check_map(&self, op: &str, name: &str, h: &Tensor, channels: i64) -> Result<()> {
        let s = h.size();
        if s.len() != 4 || s[1] != channels {
            return Err(KdError::BadShape {
                op: format!("{}.{op}", self.name),
                name: name.into(),
                shape: s,
                expected: format!("[B, {channels}, H, W]"),
            });
        }
        Ok(())
    }
}

/// Rejects specs no network can be built for.
pub(crate) fn check_spec(name: &str, spec: ModelSpec) -> Result<()> {
    if spec.in_channels < 1 || spec.num_classes < 1 {
        return Err(KdError::invalid(format!(
            "{name}: in_channels and num_classes must be at least 1, got {spec:?}"
        )));
    }
    Ok(())
}

impl Model for StagedNet {
    fn name(&self) -> &str {
        &self.name
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> ModelOutput {
        self.run(0, x, train)
    }

    fn forward_from(&self, tap: usize, h: &Tensor, train: bool) -> Result<ModelOutput> {
        let Some(t) = self.taps.get(tap) else {
            let names: Vec<&str> = self.taps.iter().map(|t| t.name.as_str()).collect();
            return Err(KdError::invalid(format!(
                "{}.forward_from: tap index {tap} out of range; this model has {} taps {names:?}",
                self.name,
                self.taps.len()
            )));
        };
        self.check_map("forward_from", &format!("tap {:?} map", t.name), h, t.channels)?;
        Ok(self.run(tap + 1, h, train))
    }

    fn taps(&self) -> &[Tap] {
        &self.taps
    }

    fn num_classes(&self) -> i64 {
        self.spec.num_classes
    }

    fn in_channels(&self) -> i64 {
        self.spec.in_channels
    }

    fn classify(&self, last_map: &Tensor) -> Result<Tensor> {
        let c = self.taps.last().map_or(0, |t| t.channels);
        self.check_map("classify", "last_map", last_map, c)?;
        Ok(global_avg_pool(last_map).apply(&self.fc))
    }

    fn linear_head(&self) -> Option<(Tensor, Option<Tensor>)> {
        Some((
            self.fc.ws.shallow_clone(),
            self.fc.bs.as_ref().map(Tensor::shallow_clone),
        ))
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        check_input_shape(&self.name, self.spec.in_channels, x)?;
        let (kind, device) = (self.fc.ws.kind(), self.fc.ws.device());
        if x.kind() != kind || x.device() != device {
            return Err(KdError::invalid(format!(
                "{} input: x is {:?} on {:?}, but the model's weights are {kind:?} on {device:?}",
                self.name,
                x.kind(),
                x.device()
            )));
        }
        Ok(())
    }
}
