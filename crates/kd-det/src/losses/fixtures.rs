//! Hand-made detector outputs and a stand-in detector for the tests, so the losses and the
//! distiller are tested without the network.

use tch::{Device, Kind, Tensor};

use kd_core::models::{Model, ModelOutput, Tap};
use kd_core::{KdError, Result};

/// Taps `p3, p4, …` with the given strides (8 channels each).
pub(crate) fn taps(strides: &[i64]) -> Vec<Tap> {
    strides
        .iter()
        .enumerate()
        .map(|(l, &s)| Tap {
            name: format!("p{}", l + 3),
            channels: 8,
            stride: s,
        })
        .collect()
}

/// A contract-2 output for `b` images with levels of `sizes` and `k` classes: seeded random
/// logits and centre-ness, positive box distances.
pub(crate) fn fake_output(b: i64, sizes: &[(i64, i64)], k: i64, seed: i64) -> ModelOutput {
    let a: i64 = sizes.iter().map(|&(h, w)| h * w).sum();
    let gen = |shape: &[i64], salt: i64| {
        // Deterministic values without touching the global generator.
        let n: i64 = shape.iter().product();
        let v = Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.7 + (seed * 13 + salt) as f64;
        v.sin().view(shape)
    };
    ModelOutput {
        logits: gen(&[b, a, k], 1) * 3.0,
        aux_logits: None,
        features: sizes
            .iter()
            .enumerate()
            .map(|(l, &(h, w))| (format!("p{}", l + 3), gen(&[b, 8, h, w], 10 + l as i64)))
            .collect(),
        pooled: None,
        heads: vec![
            ("box".into(), (gen(&[b, a, 4], 2) * 6.0 + 8.0).abs()),
            ("centerness".into(), gen(&[b, a, 1], 3)),
        ],
    }
}

/// A detector without a network: only its taps and class count are real.
pub(crate) struct FakeDetector {
    taps: Vec<Tap>,
    k: i64,
}

impl FakeDetector {
    pub(crate) fn new(strides: &[i64], k: i64) -> Self {
        Self {
            taps: taps(strides),
            k,
        }
    }
}

impl Model for FakeDetector {
    fn name(&self) -> &str {
        "fake-detector"
    }
    fn forward_t(&self, _x: &Tensor, _train: bool) -> ModelOutput {
        unreachable!("the tests build outputs with fake_output")
    }
    fn forward_from(&self, _tap: usize, _h: &Tensor, _train: bool) -> Result<ModelOutput> {
        Err(KdError::invalid("fake detector"))
    }
    fn taps(&self) -> &[Tap] {
        &self.taps
    }
    fn num_classes(&self) -> i64 {
        self.k
    }
    fn in_channels(&self) -> i64 {
        3
    }
    fn classify(&self, _last_map: &Tensor) -> Result<Tensor> {
        Err(KdError::invalid("fake detector"))
    }
}
