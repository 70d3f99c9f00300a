//! KD³ as a kd-core [`Distiller`].
//!
//! ```text
//! L = fa_weight · L_FA + ia_weight · (NTXent(u_S, ũ_S; τ_c) + NTXent(u_T, ũ_T; τ_c))
//! ```
//!
//! The projector and both embedding heads are built under the trainer's `aux` path (trained
//! with the student, not in `student.safetensors`); the teacher's classifier is copied once,
//! frozen, outside every store. The labels of the batch are never read.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use kd_core::distill::{Distiller, EpochCtx, EpochPlan, LossTerms, StepCtx};
use kd_core::io::checkpoint;
use kd_core::losses::{kd_loss, nt_xent};
use kd_core::models::{Model, ModelOutput};
use kd_core::{KdError, Result};

use crate::config::{Kd3Config, SelectionMode, SelectionViews};
use crate::memorise::{disagreement_weights, gap, pool_down, weighted_feature_mse, Projector, SharedHead};
use crate::mix::{apply_draw, MixDraw};
use crate::selection::{combine, predictions, threshold_keep, top_ratio_keep};

/// File that [`Kd3::save_artifacts`] writes next to the exported student: the projector and
/// the copied teacher head, read back by [`crate::Kd3Student`].
pub const HEAD_FILE: &str = "kd3_head.safetensors";

/// Generator stream of the MixDistribution draws (indexed by global step).
const STREAM_MIX: u64 = 0x006b_6433_5f6d_6978;
/// Generator stream of the top-ρ selection order (indexed by epoch).
const STREAM_ORDER: u64 = 0x006b_6433_5f6f_7264;

/// How the student's last map is brought to the teacher's spatial size: the strides of the two
/// last taps decide, so evaluation (which has no teacher map) pools exactly as training did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub student_stride: i64,
    pub teacher_stride: i64,
}

impl Geometry {
    /// Pools a student map `[B, C_s, H, W]` down when its stride is finer than the teacher's.
    pub fn align_student(&self, f_s: &Tensor) -> Tensor {
        if self.student_stride >= self.teacher_stride || self.student_stride <= 0 {
            return f_s.shallow_clone();
        }
        let s = f_s.size();
        let (h, w) = (
            (s[2] * self.student_stride / self.teacher_stride).max(1),
            (s[3] * self.student_stride / self.teacher_stride).max(1),
        );
        pool_down(f_s, h, w)
    }
}

/// Projector + frozen head: the student's class scores `[B, K]` from its last map.
pub(crate) fn shared_logits(
    geometry: Geometry,
    projector: &Projector,
    head: &SharedHead,
    last_map: &Tensor,
    train: bool,
) -> Result<(Tensor, Tensor)> {
    let p = projector.forward_t(&geometry.align_student(last_map), train)?;
    let pooled = gap(&p);
    let logits = head.forward(&pooled)?;
    Ok((p, logits))
}

/// The KD³ distiller. See the crate docs for the method and its configuration.
pub struct Kd3 {
    cfg: Kd3Config,
    seed: u64,
    n_train: usize,
    geometry: Geometry,
    projector: Projector,
    head: SharedHead,
    student_embed: Option<nn::Linear>,
    teacher_embed: Option<nn::Linear>,
    kept: BTreeMap<usize, Vec<usize>>,
    shares: BTreeMap<usize, f64>,
}

impl std::fmt::Debug for Kd3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kd3")
            .field("cfg", &self.cfg)
            .field("seed", &self.seed)
            .field("n_train", &self.n_train)
            .field("projector", &self.projector)
            .finish()
    }
}

fn last_channels(m: &dyn Model) -> Result<(i64, i64)> {
    m.taps()
        .last()
        .map(|t| (t.channels, t.stride))
        .ok_or_else(|| KdError::invalid(format!("kd3: {} has no feature taps", m.name())))
}

fn pooled(out: &ModelOutput, who: &str) -> Result<Tensor> {
    out.pooled
        .as_ref()
        .map(Tensor::shallow_clone)
        .ok_or_else(|| KdError::invalid(format!("kd3: the {who} returns no pooled embedding")))
}

impl Kd3 {
    /// Builds the projector (`C_s → C_t`) and, with MixDistribution, the two embedding heads
    /// (`Linear(d → embed_dim)`) under `aux / "kd3"`, and copies the teacher's linear head.
    /// `n_train` is the size of the web set (for the kept fractions). Fails, naming the key or
    /// model, on a bad config, a class-count mismatch or a teacher without a linear head.
    pub fn new(
        cfg: Kd3Config,
        aux: &nn::Path<'_>,
        student: &dyn Model,
        teacher: &dyn Model,
        n_train: usize,
    ) -> Result<Self> {
        cfg.validate()?;
        if student.num_classes() != teacher.num_classes() {
            return Err(KdError::invalid(format!(
                "kd3: the student {} has {} classes but the teacher {} has {}",
                student.name(),
                student.num_classes(),
                teacher.name(),
                teacher.num_classes()
            )));
        }
        let (c_s, s_stride) = last_channels(student)?;
        let (c_t, t_stride) = last_channels(teacher)?;
        let (w, b) = teacher.linear_head().ok_or_else(|| {
            KdError::invalid(format!(
                "kd3: the teacher {} has no single linear head to share",
                teacher.name()
            ))
        })?;
        if w.size() != [teacher.num_classes(), c_t] {
            return Err(KdError::BadShape {
                op: "kd3 shared head".into(),
                name: format!("{} head weight", teacher.name()),
                shape: w.size(),
                expected: format!("[{}, {c_t}]", teacher.num_classes()),
            });
        }
        let head = SharedHead::copy_of(
            &w.to_device(aux.device()),
            b.map(|b| b.to_device(aux.device())).as_ref(),
        );
        let root = aux / "kd3";
        let projector = Projector::new(&(&root / "projector"), c_s, c_t, cfg.projector_factor)?;
        let (student_embed, teacher_embed) = if cfg.mix_distribution {
            let lin = |name: &str, d: i64| nn::linear(&root / name, d, cfg.embed_dim, Default::default());
            (Some(lin("student_embed", c_s)), Some(lin("teacher_embed", c_t)))
        } else {
            (None, None)
        };
        Ok(Self {
            cfg,
            seed: 0,
            n_train,
            geometry: Geometry {
                student_stride: s_stride,
                teacher_stride: t_stride,
            },
            projector,
            head,
            student_embed,
            teacher_embed,
            kept: BTreeMap::new(),
            shares: BTreeMap::new(),
        })
    }

    /// Sets the seed of the MixDistribution draws and the top-ρ order (use the run's seed).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &Kd3Config {
        &self.cfg
    }

    /// The projector.
    pub fn projector(&self) -> &Projector {
        &self.projector
    }

    /// The frozen copy of the teacher's head.
    pub fn shared_head(&self) -> &SharedHead {
        &self.head
    }

    /// The student's and the teacher's embedding heads (absent without MixDistribution).
    pub fn embedding_heads(&self) -> Option<(&nn::Linear, &nn::Linear)> {
        self.student_embed.as_ref().zip(self.teacher_embed.as_ref())
    }

    /// Sorted dataset indices kept at each epoch so far, by 0-based epoch.
    pub fn kept(&self) -> &BTreeMap<usize, Vec<usize>> {
        &self.kept
    }

    /// The teacher share `a` used at each epoch's selection.
    pub fn teacher_shares(&self) -> &BTreeMap<usize, f64> {
        &self.shares
    }

    /// The MixDistribution draw of global step `step` for a batch of `b` images.
    pub fn mix_draw(&self, step: usize, b: usize) -> MixDraw {
        let mut rng = kd_core::rng::derive(self.seed, STREAM_MIX, step as u64);
        MixDraw::draw(&mut rng, b, self.cfg.mix_alpha, self.cfg.mix_p)
    }

    /// The projected student map `P(F_S)` `[B, C_t, h, w]` and the student's class scores
    /// `[B, K]` (through the shared head, or the student's own logits without it).
    pub fn student_side(&self, s_out: &ModelOutput, train: bool) -> Result<(Tensor, Tensor)> {
        let (p, z) = shared_logits(
            self.geometry,
            &self.projector,
            &self.head,
            s_out.last_feature()?,
            train,
        )?;
        Ok(if self.cfg.shared_head {
            (p, z)
        } else {
            (p, s_out.logits.shallow_clone())
        })
    }

    /// `L_FA` (a scalar), the weights it used (`[B]`, detached) and the student's class scores
    /// (`[B, K]`) they were computed from. `s_out`, `t_out`: the two networks' outputs on the
    /// same batch; the teacher's last map is pooled down to the projected map's size if larger.
    pub fn feature_alignment(
        &self,
        s_out: &ModelOutput,
        t_out: &ModelOutput,
        train: bool,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (p, z_s) = self.student_side(s_out, train)?;
        let ps = p.size();
        let f_t = pool_down(t_out.last_feature()?, ps[2], ps[3]);
        let w = disagreement_weights(&z_s, &t_out.logits)?;
        Ok((weighted_feature_mse(&p, &f_t, &w)?, w, z_s))
    }

    /// `L_IA` (unweighted) for a batch `x` `[B, C, H, W]` whose clean outputs are `s_out` and
    /// `t_out`, with the perturbation of global step `step`.
    pub fn instance_alignment(
        &self,
        x: &Tensor,
        student: &dyn Model,
        teacher: &dyn Model,
        s_out: &ModelOutput,
        t_out: &ModelOutput,
        step: usize,
    ) -> Result<Tensor> {
        let (Some(es), Some(et)) = (&self.student_embed, &self.teacher_embed) else {
            return Err(KdError::invalid("kd3: MixDistribution is switched off"));
        };
        let draw = self.mix_draw(step, x.size()[0] as usize);
        let x_mix = apply_draw(x, &draw, self.cfg.mix_eps)?;
        let s_mix = student.forward_t(&x_mix, true);
        let t_mix = tch::no_grad(|| teacher.forward_t(&x_mix, false));
        let embed = |l: &nn::Linear, f: &Tensor| -> Tensor {
            let e = l.forward(f);
            let n = e
                .norm_scalaropt_dim(2.0, [-1i64].as_slice(), true)
                .clamp_min(1e-12);
            e / n
        };
        let tau = self.cfg.contrast_tau;
        let l_s = nt_xent(
            &embed(es, &pooled(s_out, "student")?),
            &embed(es, &pooled(&s_mix, "student")?),
            tau,
        )?;
        let l_t = nt_xent(
            &embed(et, &pooled(t_out, "teacher")?.detach()),
            &embed(et, &pooled(&t_mix, "teacher")?.detach()),
            tau,
        )?;
        Ok(l_s + l_t)
    }

    /// The combined class scores `[N, K]` (CPU, f64) of the samples `idx`, both networks in eval
    /// mode under `no_grad`; a network whose share is 0 is not run.
    fn score(&self, ctx: &EpochCtx<'_>, idx: &[usize], a: f64) -> Result<Tensor> {
        let batch = match self.cfg.selection_views {
            SelectionViews::Augmented => (ctx.aug_batch)(idx)?,
            SelectionViews::Clean => (ctx.eval_batch)(idx)?,
        };
        tch::no_grad(|| -> Result<Tensor> {
            let z_t = if a > 0.0 {
                let t_out = match (self.cfg.selection_views, ctx.teacher) {
                    (SelectionViews::Clean, _) => ctx.teacher_output(&batch)?,
                    (SelectionViews::Augmented, Some(t)) => t.forward_t(&batch.x, false),
                    (_, None) => return Err(KdError::invalid("kd3 selection needs the teacher")),
                };
                Some(t_out.logits)
            } else {
                None
            };
            let z_s = if a < 1.0 {
                let out = ctx.student.forward_t(&batch.x, false);
                Some(self.student_side(&out, false)?.1)
            } else {
                None
            };
            let z = match (z_t, z_s) {
                (Some(t), Some(s)) => combine(&t, &s, a)?,
                (Some(t), None) => t,
                (None, Some(s)) => s,
                (None, None) => unreachable!("a is in [0, 1]"),
            };
            Ok(z.to_kind(Kind::Double).to_device(tch::Device::Cpu))
        })
    }

    /// The selection of one epoch: sorted kept indices of `0..n`.
    fn select(&self, ctx: &EpochCtx<'_>, a: f64) -> Result<Vec<usize>> {
        let n = ctx.train_set.len();
        let chunk = self.cfg.selection_batch;
        let mut order: Vec<usize> = (0..n).collect();
        if self.cfg.selection == SelectionMode::TopRatio {
            use rand::seq::SliceRandom;
            let mut rng = kd_core::rng::derive(self.seed, STREAM_ORDER, ctx.progress.epoch as u64);
            order.shuffle(&mut rng);
        }
        let mut rows = Vec::with_capacity(order.len().div_ceil(chunk.max(1)));
        for part in order.chunks(chunk) {
            rows.push(self.score(ctx, part, a)?);
        }
        // Rows in `order`; put them back in dataset order.
        let z = Tensor::cat(&rows, 0);
        let inv: Vec<i64> = {
            let mut inv = vec![0i64; n];
            for (pos, &i) in order.iter().enumerate() {
                inv[i] = pos as i64;
            }
            inv
        };
        let z = z.index_select(0, &Tensor::from_slice(&inv));
        let keep = match self.cfg.selection {
            SelectionMode::TopRatio => {
                let (_, conf) = predictions(&z)?;
                top_ratio_keep(&conf, &order, chunk, self.cfg.top_ratio)
            }
            _ => threshold_keep(&z, self.cfg.p_cut)?,
        };
        Ok(keep
            .iter()
            .enumerate()
            .filter_map(|(i, &k)| k.then_some(i))
            .collect())
    }

    /// The teacher share of `epoch` (0-based) of a run of `epochs` under this configuration.
    pub fn share_at(&self, epoch: usize, epochs: usize) -> f64 {
        match self.cfg.selection {
            SelectionMode::TeacherOnly => 1.0,
            _ => self.cfg.teacher_share.at(epoch, epochs),
        }
    }

    /// The projector and the copied head, named as [`crate::Kd3Student`] expects.
    fn export_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .projector
            .named_tensors()
            .into_iter()
            .map(|(n, t)| (format!("projector.{n}"), t))
            .collect();
        v.push(("head.weight".into(), self.head.weight().shallow_clone()));
        if let Some(b) = self.head.bias() {
            v.push(("head.bias".into(), b.shallow_clone()));
        }
        v
    }

    /// Metadata of [`HEAD_FILE`].
    fn export_meta(&self) -> serde_json::Value {
        json!({
            "kind": "kd3_head",
            "student_channels": self.projector.in_channels(),
            "teacher_channels": self.projector.out_channels(),
            "projector_factor": self.cfg.projector_factor,
            "num_classes": self.head.weight().size()[0],
            "student_stride": self.geometry.student_stride,
            "teacher_stride": self.geometry.teacher_stride,
            "has_bias": self.head.bias().is_some(),
        })
    }
}

/// Sorted indices in `0..n` → a little-endian bit mask of `⌈n / 8⌉` bytes.
pub(crate) fn pack_bits(indices: &[usize], n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n.div_ceil(8)];
    for &i in indices.iter().filter(|&&i| i < n) {
        bytes[i / 8] |= 1 << (i % 8);
    }
    bytes
}

/// The inverse of [`pack_bits`]: the sorted indices whose bit is set.
pub(crate) fn unpack_bits(bytes: &[u8], n: usize) -> Vec<usize> {
    (0..n).filter(|&i| bytes[i / 8] & (1 << (i % 8)) != 0).collect()
}

impl Distiller for Kd3 {
    fn name(&self) -> String {
        "kd3".into()
    }

    fn needs_teacher(&self) -> bool {
        true
    }

    fn loss(&mut self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        let t_out = ctx
            .t_out
            .ok_or_else(|| KdError::invalid("kd3 needs the teacher's outputs"))?;
        let (l_fa, _, _) = self.feature_alignment(ctx.s_out, t_out, true)?;
        let mut terms = LossTerms::new().with("fa", l_fa * self.cfg.fa_weight);
        if !self.cfg.shared_head {
            let kd = kd_loss(&ctx.s_out.logits, &t_out.logits, self.cfg.kd_tau)?;
            terms.push("kd", kd * self.cfg.kd_weight);
        }
        if self.cfg.mix_distribution {
            let teacher = ctx
                .teacher
                .ok_or_else(|| KdError::invalid("kd3's MixDistribution needs the teacher"))?;
            let l_ia = self.instance_alignment(
                &ctx.batch.x,
                ctx.student,
                teacher,
                ctx.s_out,
                t_out,
                ctx.progress.global_step,
            )?;
            terms.push("ia", l_ia * self.cfg.ia_weight);
        }
        Ok(terms)
    }

    /// `[B, K]`: the projector (eval mode) and the copied teacher head on the student's last
    /// map, or the student's own logits without the shared head.
    fn student_logits(&self, _student: &dyn Model, s_out: &ModelOutput) -> Result<Tensor> {
        if self.cfg.shared_head {
            Ok(self.student_side(s_out, false)?.1)
        } else {
            Ok(s_out.logits.shallow_clone())
        }
    }

    fn on_epoch_start(&mut self, ctx: &EpochCtx<'_>) -> Result<EpochPlan> {
        let epoch = ctx.progress.epoch;
        let n = ctx.train_set.len();
        if self.cfg.selection == SelectionMode::None {
            self.kept.insert(epoch, (0..n).collect());
            return Ok(EpochPlan::All);
        }
        let a = self.share_at(epoch, ctx.progress.epochs);
        let mut kept = self.select(ctx, a)?;
        if kept.is_empty() {
            // Nothing clears its threshold: train on everything rather than on nothing.
            tracing::warn!("kd3 epoch {epoch}: no image kept, training on all {n}");
            kept = (0..n).collect();
        }
        self.shares.insert(epoch, a);
        self.kept.insert(epoch, kept.clone());
        Ok(EpochPlan::Subset(kept))
    }

    /// Each epoch's kept set as a bit mask over the web set (`⌈n / 8⌉` bytes, `kept/<epoch>`)
    /// and its teacher share (`share/<epoch>`), so a resumed run reports every epoch.
    fn state(&self) -> Vec<(String, Tensor)> {
        let mut v = Vec::new();
        for (e, k) in &self.kept {
            v.push((
                format!("kept/{e:06}"),
                Tensor::from_slice(&pack_bits(k, self.n_train)),
            ));
        }
        for (e, a) in &self.shares {
            v.push((format!("share/{e:06}"), Tensor::from_slice(&[*a])));
        }
        v
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        self.kept.clear();
        self.shares.clear();
        for (name, t) in state {
            let parse = |s: &str| {
                s.parse::<usize>()
                    .map_err(|_| KdError::invalid(format!("kd3 state: bad entry {name:?}")))
            };
            if let Some(e) = name.strip_prefix("kept/") {
                let bytes = Vec::<u8>::try_from(&t.to_kind(Kind::Uint8).contiguous())?;
                if bytes.len() != self.n_train.div_ceil(8) {
                    return Err(KdError::invalid(format!(
                        "kd3 state: {name:?} holds {} bytes, but a web set of {} needs {}",
                        bytes.len(),
                        self.n_train,
                        self.n_train.div_ceil(8)
                    )));
                }
                self.kept.insert(parse(e)?, unpack_bits(&bytes, self.n_train));
            } else if let Some(e) = name.strip_prefix("share/") {
                self.shares.insert(parse(e)?, t.double_value(&[0]));
            } else {
                return Err(KdError::invalid(format!("kd3 state: unknown entry {name:?}")));
            }
        }
        Ok(())
    }

    /// `selection`, `shared_head`, `mix_distribution`, `n_train`, and per epoch (in order):
    /// `teacher_share_per_epoch` (null where no share applied), `kept_fraction_per_epoch` and,
    /// unless `report_kept` is off, `kept_per_epoch` (sorted dataset indices).
    fn report(&self) -> serde_json::Value {
        let n = self.n_train.max(1) as f64;
        let kept: Vec<&Vec<usize>> = self.kept.values().collect();
        let fractions: Vec<f64> = self.kept.values().map(|k| k.len() as f64 / n).collect();
        let shares: Vec<Option<f64>> = self.kept.keys().map(|e| self.shares.get(e).copied()).collect();
        let mut r = json!({
            "selection": self.cfg.selection,
            "shared_head": self.cfg.shared_head,
            "mix_distribution": self.cfg.mix_distribution,
            "n_train": self.n_train,
            "teacher_share_per_epoch": shares,
            "kept_fraction_per_epoch": fractions,
        });
        if self.cfg.report_kept {
            r["kept_per_epoch"] = json!(kept);
        }
        r
    }

    /// Writes [`HEAD_FILE`] (projector + copied head) into `dir`; nothing without the shared
    /// head.
    fn save_artifacts(&self, dir: &Path) -> Result<()> {
        if !self.cfg.shared_head {
            return Ok(());
        }
        checkpoint::save(&dir.join(HEAD_FILE), &self.export_tensors(), &self.export_meta())
    }
}
