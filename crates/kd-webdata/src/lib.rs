//! KD³ (Tang et al., *Distribution Shift Matters for Knowledge Distillation with Webly
//! Collected Images*, ICCV 2023) as a kd-core [`Distiller`](kd_core::distill::Distiller).
//!
//! When the teacher's training data cannot be shared, a student can still be distilled from
//! unlabelled images collected on the web, but those images are not drawn from the teacher's
//! distribution: some belong to no class (the teacher's output on them is noise), and the rest
//! differ in style. Distilling on everything teaches the student the teacher's mistakes and a
//! representation tied to the web's style. KD³ answers each problem with one component:
//!
//! 1. **Dynamic instance selection** ([`selection`]): before every epoch both networks score
//!    the whole web set; an image is kept when the mixed prediction `a(e)·z_T + (1 − a(e))·z_S`
//!    clears a class-adaptive threshold. The teacher's share `a(e)` decays from ≈ 1 to 0 over
//!    the first half of training, as the student becomes a competent judge.
//! 2. **Knowledge memorisation** ([`memorise`]): the student never trains a classifier of its
//!    own. Its last map goes through a bottleneck projector into the teacher's feature space
//!    and the teacher's frozen head; the projected map regresses onto the teacher's, weighted
//!    per image by `sigmoid(‖z_S − z_T‖₂)` so disagreement counts more.
//! 3. **MixDistribution** ([`mix`]): the batch's per-channel statistics are mixed between
//!    images (λ ~ Beta(0.1, 0.1), a random partner), and an NT-Xent loss (τ = 0.3) inside each
//!    network aligns every clean image with its perturbed copy, so the learnt representation
//!    does not depend on the style shift. The teacher's backbone stays frozen; only its
//!    embedding head trains.
//!
//! ```text
//! L = L_FA + 0.001 · (NTXent(u_S, ũ_S; 0.3) + NTXent(u_T, ũ_T; 0.3))
//! ```
//!
//! The batch's labels are never read (a web pool's labels are −1). The student's class scores
//! everywhere (training, selection, evaluation) are the projector + shared head's, through
//! [`Kd3::student_logits`](kd_core::distill::Distiller::student_logits). After training,
//! [`Kd3::save_artifacts`](kd_core::distill::Distiller::save_artifacts) writes the projector
//! and the copied head to [`HEAD_FILE`] (`kd3_head.safetensors`) next to the exported
//! backbone, and [`Kd3Student`] loads the two back as one inference [`Model`](kd_core::models::Model).
//! Without the shared head (an ablation) nothing is written: the exported backbone with its own
//! classifier is the whole student.
//!
//! # Defaults and knobs
//!
//! [`Kd3Config::default`] is the authors' released setting: combined selection with
//! `a(e) = 1 − exp(−5((e + 1)/160 − 1)²)` for `e < 120` (1-based epochs of 240) and
//! `p_cut = 0.95`; projector factor 2; `L_FA` weight 1; MixDistribution on every batch with
//! Beta(0.1, 0.1) and ε = 1e-6; 128-d embeddings, τ_c = 0.3, `L_IA` weight 0.001. The rows of
//! an ablation table are one field each:
//!
//! | row | setting |
//! | --- | --- |
//! | teacher-only selection (DFND-style) | `selection = "teacher_only"` (a ≡ 1) |
//! | without selection | `selection = "none"` |
//! | per-batch top-ρ (DFND rule), ρ = 0.5 | `selection = "top_ratio"`, `top_ratio` |
//! | without the shared head | `shared_head = false`: own classifier + Hinton KD (`kd_tau` = 4, `kd_weight` = 1) |
//! | without MixDistribution (and `L_IA`) | `mix_distribution = false` |
//!
//! # Reconstructions \[R\]
//!
//! Where neither the released code nor the abstract decides, these are our choices:
//!
//! | \[R\] item | knob | default |
//! | --- | --- | --- |
//! | `a(e)` on runs shorter than 240 epochs: the epoch is rescaled to `e · 240 / E`, so every run goes from teacher to student over the same fraction of training | `teacher_share.reference_epochs` (`None`: absolute epochs) | 240 |
//! | the curve's constants 5, 160, 120 | `teacher_share.{sharpness, ramp_epochs, cutoff_epoch}` | 5, 160, 120 |
//! | views the selection scores: the epoch's training augmentation (see deviations) | `selection_views` | `augmented` |
//! | batch of the selection pass, and the chunk of the top-ρ rule (chunks in a seeded random order) | `selection_batch` | 256 |
//! | an epoch in which nothing clears its threshold trains on the whole set | (fixed) | — |
//! | the ablation without the shared head keeps the projector for `L_FA` and weighs it with the student's own logits | `shared_head` | `true` |
//! | Hinton KD of that ablation | `kd_tau`, `kd_weight` | 4, 1 |
//! | MixDistribution probability p | `mix_p` | 1 |
//! | variance estimator of the statistics: unbiased, as `torch.var` | (fixed) | — |
//! | embeddings L2-normalised before NT-Xent (NT-Xent normalises again, idempotently) | (fixed) | — |
//! | weight of `L_FA` | `fa_weight` | 1 |
//! | whether the report lists every epoch's kept indices (large on big web sets) | `report_kept` | `true` |
//!
//! # Deviations from the spec
//!
//! - **Selection views.** The spec scores random-resized-crop + flip views. kd-core's loaders
//!   offer pad-crop + flip; the selection scores the epoch's training augmentation (the same
//!   draw as that epoch's batches, through kd-core's `EpochCtx::aug_batch`), or clean images
//!   with `selection_views = "clean"`. With an un-augmented loader both are the clean images.
//! - **Stage-level MixDistribution** (the spec's option) is not built: the perturbation acts
//!   on the normalised input batch only.
//! - **Randomness.** λ and π come from kd-core's ChaCha8 generators, derived from
//!   `(seed, stream, global step)`, with the Beta variate as a Gamma ratio (Marsaglia–Tsang;
//!   no sampler crate); set the run's seed with [`Kd3::with_seed`].
//! - The copied teacher head is taken through kd-core's `Model::linear_head`; a teacher whose
//!   head is not a single linear layer is rejected.
//!
//! # Example
//!
//! ```
//! use kd_core::distill::{Distiller, Teacher};
//! use kd_classify::models::build;
//! use kd_core::models::ModelSpec;
//! use kd_core::train::{AUX, STUDENT};
//! use kd_webdata::{Kd3, Kd3Config};
//! use tch::{nn, Device};
//!
//! let spec = ModelSpec { in_channels: 3, num_classes: 10 };
//! let vs = nn::VarStore::new(Device::Cpu);
//! let student = build("resnet8", &(vs.root() / STUDENT), spec).unwrap();
//! let tvs = nn::VarStore::new(Device::Cpu);
//! let t = build("resnet14", &tvs.root(), spec).unwrap();
//! let teacher = Teacher::from_parts(tvs, t);
//! let kd3 = Kd3::new(Kd3Config::default(), &(vs.root() / AUX), student.as_ref(), teacher.model(), 1000)
//!     .unwrap()
//!     .with_seed(7);
//! assert_eq!(kd3.name(), "kd3");
//! ```

pub mod config;
pub mod distiller;
pub mod memorise;
pub mod mix;
pub mod selection;
pub mod student;

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)]
mod tests;

pub use config::{Kd3Config, SelectionMode, SelectionViews, TeacherShare};
pub use distiller::{Kd3, HEAD_FILE};
pub use memorise::{disagreement_weights, weighted_feature_mse, Projector, SharedHead};
pub use mix::{mix_distribution, MixDraw};
pub use student::Kd3Student;
