//! Optimisers written over plain tensors.
//!
//! libtorch's C++ optimisers hide their state, so a checkpoint could not capture momentum
//! buffers and `--resume` would not continue exactly. These follow PyTorch's update rules
//! (`torch.optim.SGD`, `torch.optim.Adam` with L2 weight decay) and expose every buffer by name.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::{KdError, Result};

/// Optimiser settings. The learning rate itself comes from the schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// SGD with momentum, L2 weight decay and optional Nesterov momentum.
    Sgd {
        /// Momentum factor (0.9 in the CIFAR recipes).
        momentum: f64,
        /// L2 weight decay, added to the gradient.
        weight_decay: f64,
        /// Nesterov momentum.
        #[serde(default)]
        nesterov: bool,
    },
    /// Adam (Kingma & Ba) with L2 weight decay added to the gradient.
    Adam {
        /// β₁.
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// β₂.
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// ε added to the denominator.
        #[serde(default = "default_eps")]
        eps: f64,
        /// L2 weight decay.
        #[serde(default)]
        weight_decay: f64,
    },
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}

impl OptimizerConfig {
    /// State tensors the optimiser keeps per parameter tensor (SGD's momentum buffer, Adam's
    /// two moments), for memory estimates.
    pub fn buffers_per_parameter(&self) -> usize {
        match self {
            OptimizerConfig::Sgd { momentum, .. } => usize::from(*momentum != 0.0),
            OptimizerConfig::Adam { .. } => 2,
        }
    }
}

/// An optimiser over named parameters.
pub struct Optimizer {
    cfg: OptimizerConfig,
    params: Vec<(String, Tensor)>,
    /// Per parameter: SGD momentum buffer, or Adam's (m, v). Undefined until first use.
    bufs: Vec<Vec<Tensor>>,
    steps: i64,
}

impl Optimizer {
    /// An optimiser over `params` (name, trainable tensor).
    pub fn new(cfg: OptimizerConfig, params: Vec<(String, Tensor)>) -> Self {
        let n = match cfg {
            OptimizerConfig::Sgd { .. } => 1,
            OptimizerConfig::Adam { .. } => 2,
        };
        let bufs = params
            .iter()
            .map(|(_, p)| (0..n).map(|_| p.zeros_like()).collect())
            .collect();
        Self {
            cfg,
            params,
            bufs,
            steps: 0,
        }
    }

    /// Number of steps taken.
    pub fn steps(&self) -> i64 {
        self.steps
    }

    /// The parameters, by name.
    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// Clears every gradient.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// Global L2 norm of all gradients.
    pub fn grad_norm(&self) -> f64 {
        tch::no_grad(|| {
            let sq: Vec<Tensor> = self
                .params
                .iter()
                .filter_map(|(_, p)| {
                    let g = p.grad();
                    g.defined().then(|| g.pow_tensor_scalar(2).sum(tch::Kind::Float))
                })
                .collect();
            if sq.is_empty() {
                return 0.0;
            }
            Tensor::stack(&sq, 0)
                .sum(tch::Kind::Float)
                .sqrt()
                .double_value(&[])
        })
    }

    /// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm before.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let norm = self.grad_norm();
        if norm.is_finite() && norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            tch::no_grad(|| {
                for (_, p) in &self.params {
                    let mut g = p.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(scale);
                    }
                }
            });
        }
        norm
    }

    /// One update with learning rate `lr`. Parameters without a gradient are left alone.
    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let t = self.steps;
        let cfg = self.cfg.clone();
        tch::no_grad(|| {
            for ((_, p), bufs) in self.params.iter_mut().zip(self.bufs.iter_mut()) {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                match cfg {
                    OptimizerConfig::Sgd {
                        momentum,
                        weight_decay,
                        nesterov,
                    } => {
                        let mut d = if weight_decay != 0.0 {
                            &grad + &*p * weight_decay
                        } else {
                            grad.shallow_clone()
                        };
                        if momentum != 0.0 {
                            let buf = &mut bufs[0];
                            if t == 1 {
                                buf.copy_(&d);
                            } else {
                                let _ = buf.g_mul_scalar_(momentum);
                                let _ = buf.g_add_(&d);
                            }
                            d = if nesterov {
                                d + &*buf * momentum
                            } else {
                                buf.shallow_clone()
                            };
                        }
                        let _ = p.g_sub_(&(d * lr));
                    }
                    OptimizerConfig::Adam {
                        beta1,
                        beta2,
                        eps,
                        weight_decay,
                    } => {
                        let d = if weight_decay != 0.0 {
                            &grad + &*p * weight_decay
                        } else {
                            grad.shallow_clone()
                        };
                        let (m, v) = bufs.split_at_mut(1);
                        let (m, v) = (&mut m[0], &mut v[0]);
                        let _ = m.g_mul_scalar_(beta1);
                        let _ = m.g_add_(&(&d * (1.0 - beta1)));
                        let _ = v.g_mul_scalar_(beta2);
                        let _ = v.g_add_(&(&d * &d * (1.0 - beta2)));
                        let bc1 = 1.0 - beta1.powi(t as i32);
                        let bc2 = 1.0 - beta2.powi(t as i32);
                        let denom = (&*v / bc2).sqrt() + eps;
                        let _ = p.g_sub_(&(&*m / denom * (lr / bc1)));
                    }
                }
            }
        });
    }

    /// Every buffer as `optim/<param>/<k>` plus the step count, for checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("optim/steps".to_string(), Tensor::from_slice(&[self.steps]))];
        for ((name, _), bufs) in self.params.iter().zip(&self.bufs) {
            for (k, b) in bufs.iter().enumerate() {
                out.push((format!("optim/{name}/{k}"), b.shallow_clone()));
            }
        }
        out
    }

    /// Restores what [`Optimizer::state`] produced. Every buffer must be present.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let find = |key: &str| state.iter().find(|(n, _)| n == key).map(|(_, t)| t);
        let steps = find("optim/steps").ok_or_else(|| KdError::invalid("checkpoint lacks optim/steps"))?;
        self.steps = steps.int64_value(&[0]);
        for ((name, _), bufs) in self.params.iter().zip(self.bufs.iter_mut()) {
            for (k, b) in bufs.iter_mut().enumerate() {
                let key = format!("optim/{name}/{k}");
                let src = find(&key).ok_or_else(|| KdError::invalid(format!("checkpoint lacks {key}")))?;
                crate::shape::same("optimizer state", &key, src, "parameter buffer", b)?;
                tch::no_grad(|| b.copy_(src));
            }
        }
        Ok(())
    }
}
