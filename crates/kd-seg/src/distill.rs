//! Distillers for semantic segmentation: supervised training alone ([`SegSupervised`], the
//! "no KD" row and how segmentation teachers are trained) and channel-wise distillation of the
//! logits ([`Cwd`], Shu et al., ICCV 2021).
//!
//! Segmentation nets are trained with the per-pixel cross-entropy of the decode head plus,
//! when the net has one, the cross-entropy of an auxiliary head weighted 0.4 (MMSeg's
//! PSPNet/DeepLabV3 recipes). Feature-level methods add their terms to exactly this task loss,
//! so [`SegSupervised::task_terms`] is public and composable.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::losses::seg_cross_entropy;
use kd_core::distill::{Distiller, LossTerms, StepCtx, TaskLoss};
pub use kd_core::losses::cwd::CwdConfig;
use kd_core::losses::IGNORE_INDEX;
use kd_core::models::ModelOutput;
use kd_core::{KdError, Result};

/// Supervised segmentation training: `L = CE(logits, y) + aux_weight · CE(aux_logits, y)`.
///
/// Labels are the batch's label maps `[B, H, W]` Int64 with `ignore_index` marking unlabelled pixels.
/// Terms: `"ce"` and, when the student returns auxiliary logits, `"aux_ce"` (already weighted).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegSupervised {
    /// Weight of the auxiliary head's cross-entropy (default 0.4, MMSeg).
    #[serde(default = "default_aux_weight")]
    pub aux_weight: f64,
    /// Label value that marks unlabelled pixels (default 255, Cityscapes).
    #[serde(default = "default_ignore_index")]
    pub ignore_index: i64,
}

fn default_aux_weight() -> f64 {
    0.4
}
fn default_ignore_index() -> i64 {
    IGNORE_INDEX
}

impl Default for SegSupervised {
    /// `aux_weight = 0.4`, `ignore_index = 255`.
    fn default() -> Self {
        Self {
            aux_weight: default_aux_weight(),
            ignore_index: default_ignore_index(),
        }
    }
}

impl SegSupervised {
    /// Fails unless `aux_weight` is finite and non-negative.
    pub fn validate(&self) -> Result<()> {
        if !(self.aux_weight.is_finite() && self.aux_weight >= 0.0) {
            return Err(KdError::invalid(format!(
                "aux_weight: must be finite and >= 0, got {}",
                self.aux_weight
            )));
        }
        Ok(())
    }

    /// The task terms for the student output `s_out` and labels `[B, H, W]`: `"ce"` on
    /// `s_out.logits` and, when present, `"aux_ce"` on `s_out.aux_logits` times `aux_weight`.
    /// Logits at a lower resolution than the labels are resized bilinearly.
    pub fn terms(&self, s_out: &ModelOutput, labels: &Tensor) -> Result<LossTerms> {
        self.validate()?;
        let ce = seg_cross_entropy(&s_out.logits, labels, self.ignore_index)?;
        // Both are means over the labelled pixels, whose number varies from batch to batch:
        // said so, a data-parallel step weights each rank by its share of them.
        let labelled = labels
            .ne(self.ignore_index)
            .sum(tch::Kind::Int64)
            .int64_value(&[]) as f64;
        let mut terms = LossTerms::new();
        terms.push_mean_over("ce", ce, labelled);
        if let Some(aux) = &s_out.aux_logits {
            let aux_ce = seg_cross_entropy(aux, labels, self.ignore_index)?;
            terms.push_mean_over("aux_ce", aux_ce * self.aux_weight, labelled);
        }
        Ok(terms)
    }

    /// [`SegSupervised::terms`] for a training step (`ctx.s_out`, label maps `ctx.batch.target`).
    pub fn task_terms(&self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        self.terms(ctx.s_out, ctx.batch.target.label_map()?)
    }
}

impl TaskLoss for SegSupervised {
    fn task_terms(&self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        SegSupervised::task_terms(self, ctx)
    }
}

impl Distiller for SegSupervised {
    fn name(&self) -> String {
        "none".into()
    }
    fn needs_teacher(&self) -> bool {
        false
    }
    fn loss(&mut self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        self.task_terms(ctx)
    }
}

/// Logit CWD: a task loss (for segmentation [`SegSupervised`]) plus `"cwd"`
/// ([`CwdConfig::term`] on the student's and teacher's dense logits at the decode head's own
/// resolution, `[B, K, h, w]`: [`ModelOutput::dense_logits`], MMRazor's recorder on
/// `decode_head.conv_seg`). The task loss still reads the logits resized to the labels.
#[derive(Debug)]
pub struct Cwd {
    cfg: CwdConfig,
    task: Box<dyn TaskLoss>,
}

impl Cwd {
    /// A CWD distiller on top of `task`; fails on an invalid config.
    pub fn new(cfg: CwdConfig, task: Box<dyn TaskLoss>) -> Result<Self> {
        cfg.validate()?;
        Ok(Self { cfg, task })
    }

    /// The CWD settings.
    pub fn config(&self) -> &CwdConfig {
        &self.cfg
    }
}

impl Distiller for Cwd {
    fn name(&self) -> String {
        "cwd".into()
    }
    fn loss(&mut self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        let t = ctx.t_out.ok_or_else(|| KdError::invalid("cwd needs a teacher"))?;
        let mut terms = self.task.task_terms(ctx)?;
        terms.push("cwd", self.cfg.term(ctx.s_out.dense_logits(), t.dense_logits())?);
        Ok(terms)
    }
}

#[cfg(test)]
mod tests {
    use tch::{nn, Device, Kind, Tensor};

    use super::*;
    use crate::models::{build, SegNet, SegNetConfig};
    use kd_core::data::Batch;
    use kd_core::distill::Progress;
    use kd_core::models::Model;

    const PROGRESS: Progress = Progress {
        epoch: 0,
        epochs: 1,
        global_step: 0,
        steps_per_epoch: 1,
    };

    fn net(width: i64, aux: i64) -> (nn::VarStore, SegNet) {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut cfg = SegNetConfig::pspnet_r18(4).with_width(width);
        cfg.head_channels = 8;
        cfg.aux_channels = aux;
        cfg.dropout = 0.0;
        let m = build(&vs.root(), &cfg).unwrap();
        (vs, m)
    }

    fn batch() -> Batch {
        let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let y = Tensor::randint(4, [2, 16, 16], (Kind::Int64, Device::Cpu));
        let _ = y.narrow(1, 0, 2).fill_(IGNORE_INDEX);
        Batch {
            x,
            target: kd_core::data::Target::LabelMap(y),
            index: Tensor::from_slice(&[0i64, 1]),
            indices: vec![0, 1],
        }
    }

    fn value(terms: &LossTerms, name: &str) -> Option<f64> {
        terms
            .terms()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.double_value(&[]))
    }

    #[test]
    fn supervised_terms_are_ce_and_weighted_aux_ce() {
        tch::manual_seed(20);
        let (_vs, s) = net(4, 4);
        let b = batch();
        let out = s.forward_t(&b.x, true);
        let ctx = StepCtx {
            batch: &b,
            student: &s,
            teacher: None,
            s_out: &out,
            t_out: None,
            progress: PROGRESS,
        };
        let mut d = SegSupervised::default();
        assert!(!d.needs_teacher());
        let terms = d.loss(&ctx).unwrap();
        let names: Vec<&str> = terms.terms().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["ce", "aux_ce"]);
        let ce = seg_cross_entropy(&out.logits, b.target.tensor(), 255)
            .unwrap()
            .double_value(&[]);
        let aux = seg_cross_entropy(out.aux_logits.as_ref().unwrap(), b.target.tensor(), 255)
            .unwrap()
            .double_value(&[]);
        assert!((value(&terms, "ce").unwrap() - ce).abs() < 1e-6);
        assert!((value(&terms, "aux_ce").unwrap() - 0.4 * aux).abs() < 1e-6);

        let (_vs, no_aux) = net(4, 0);
        let out = no_aux.forward_t(&b.x, true);
        let terms = SegSupervised::default().terms(&out, b.target.tensor()).unwrap();
        assert_eq!(terms.terms().len(), 1);
    }

    #[test]
    fn cwd_adds_the_weighted_channel_kl_of_the_logits() {
        tch::manual_seed(21);
        let (_svs, s) = net(4, 4);
        let (mut tvs, t) = net(8, 4);
        tvs.freeze();
        let b = batch();
        let s_out = s.forward_t(&b.x, true);
        let t_out = tch::no_grad(|| t.forward_t(&b.x, false));
        let ctx = StepCtx {
            batch: &b,
            student: &s,
            teacher: Some(&t),
            s_out: &s_out,
            t_out: Some(&t_out),
            progress: PROGRESS,
        };
        for cfg in [CwdConfig::mmrazor(), CwdConfig::paper()] {
            let mut d = Cwd::new(cfg, Box::new(SegSupervised::default())).unwrap();
            assert!(d.needs_teacher());
            let terms = d.loss(&ctx).unwrap();
            let names: Vec<&str> = terms.terms().iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["ce", "aux_ce", "cwd"]);
            // MMRazor records `decode_head.conv_seg`: the head's 1/8-resolution output (2×2
            // for a 16×16 input), not the logits resized to the labels.
            let (s_native, t_native) = (s_out.dense_logits(), t_out.dense_logits());
            assert_eq!(s_native.size(), [2, 4, 2, 2]);
            assert_eq!(s_out.logits.size(), [2, 4, 16, 16]);
            let expected = kd_core::losses::cwd_loss(s_native, t_native, cfg.tau)
                .unwrap()
                .double_value(&[])
                * cfg.weight;
            let got = value(&terms, "cwd").unwrap();
            assert!(got > 0.0 && (got - expected).abs() <= 1e-6 * expected.max(1.0));
            let resized = kd_core::losses::cwd_loss(&s_out.logits, &t_out.logits, cfg.tau)
                .unwrap()
                .double_value(&[])
                * cfg.weight;
            assert!(
                (resized - got).abs() > 1e-3 * got,
                "the term reads the resized logits"
            );
        }
        assert_eq!(
            (CwdConfig::mmrazor().tau, CwdConfig::mmrazor().weight),
            (1.0, 5.0)
        );
        assert_eq!((CwdConfig::paper().tau, CwdConfig::paper().weight), (4.0, 3.0));
    }

    #[test]
    fn cwd_rejects_a_spatial_mismatch_and_bad_settings() {
        let cfg = CwdConfig::paper();
        let s = Tensor::zeros([2, 4, 16, 16], (Kind::Float, Device::Cpu));
        let t = Tensor::zeros([2, 4, 8, 8], (Kind::Float, Device::Cpu));
        let err = cfg.term(&s, &t).unwrap_err();
        assert!(matches!(err, KdError::Shape { .. }));
        assert!(err.to_string().contains("[2, 4, 8, 8]"));
        assert!(Cwd::new(
            CwdConfig {
                tau: 0.0,
                weight: 1.0
            },
            Box::new(SegSupervised::default())
        )
        .unwrap_err()
        .to_string()
        .contains("tau"));
        assert!(Cwd::new(
            CwdConfig {
                tau: 1.0,
                weight: -1.0
            },
            Box::new(SegSupervised::default())
        )
        .unwrap_err()
        .to_string()
        .contains("weight"));
        let bad_task = SegSupervised {
            aux_weight: f64::NAN,
            ignore_index: 255,
        };
        assert!(bad_task
            .validate()
            .unwrap_err()
            .to_string()
            .contains("aux_weight"));
    }

    #[test]
    fn configs_read_from_toml() {
        let s: SegSupervised = toml::from_str("").unwrap();
        assert_eq!(s, SegSupervised::default());
        let c: CwdConfig = toml::from_str("tau = 4.0\nweight = 3.0").unwrap();
        assert_eq!(c, CwdConfig::paper());
        assert!(toml::from_str::<CwdConfig>("tau = 4.0\nweight = 3.0\nlambda = 1.0").is_err());
    }
}
