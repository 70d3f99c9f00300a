//! Self-regulated, significance-weighted knowledge distillation (Mishra & Sundaram, "Self
//! Regulated Learning Mechanism for Data Efficient Knowledge Distillation", arXiv 2102.07125).
//!
//! The method is about *data efficiency*: how many sample-level backward contributions
//! ("participations") a teacher and a student need. It has two stages.
//!
//! 1. **Self-regulated teacher** ([`SelfRegTeacher`]): the teacher trains on labels, but a
//!    sample reaches the gradient only while the teacher misclassifies it or is not confident
//!    about it ([`gate`]). How often each sample took part is its **significance**
//!    ([`Significance`]), saved next to the teacher's weights ([`SIGNIFICANCE_FILE`]) so that
//!    distillation can run later without retraining. Samples that never took part are dropped:
//!    the rest form `D_sig`, iterated through kd-core's epoch plan.
//! 2. **Student variants** ([`SelfRegKd`], [`Variant`]): standard KD; SBD (KD weighted by
//!    significance, over `D_sig`); RD (the student gates itself, over all data); HD (both).
//!
//! Both stages count participations and distinct samples ([`ParticipationCounter`],
//! [`Accounting`]) against the conventional budget `epochs × N`, and report them through
//! [`kd_core::distill::Distiller::report`].
//!
//! # Reconstructions
//!
//! Only the abstract of the paper could be read, so these choices are ours. Each is a config
//! knob whose default is the spec's:
//!
//! | knob | default | alternatives |
//! |---|---|---|
//! | [`GateConfig::measure`] | true-class probability `p_y` | max-probability, top-1 − top-2 margin |
//! | [`GateConfig::threshold`] | fixed β = 0.9 | [`Threshold::EpochSchedule`] `η(e) = 1 − exp(−α·e)` (the authors' follow-up work; the more likely reading) |
//! | [`GateConfig::warmup_epochs`] `E_w` | 0 | any |
//! | [`TeacherConfig::counting_start`] `E_c` | 1 (epoch 0 is not counted) | any below the epoch count |
//! | [`TeacherConfig::significance`] | `s = n / (E_T − E_c)` | `n / max n`, raw `n` |
//! | [`TeacherConfig::normalisation`], [`StudentConfig::normalisation`] | weighted mean `Σ w ℓ / Σ w` | per batch `Σ w ℓ / B` |
//! | [`StudentConfig::s_min`] | 0 (`D_sig` = samples that ever took part) | any |
//! | [`StudentConfig::tau`], [`StudentConfig::alpha`] | τ = 4, α = 0.9 | any |
//! | [`StudentConfig::gate`] (`β_S` of RD and HD) | as the teacher's default | any gate |
//!
//! A threshold of 1 is treated as "never confident", so β = 1 is ordinary training even where
//! fp32 rounds a probability to exactly 1. When nobody in a batch takes part, the optimiser does
//! not step but the learning-rate schedule advances (kd-core's `LossTerms::skip_update`).
//!
//! Not implemented: the spec's optional `skip_forward_after_epochs`. The gate needs the forward
//! pass, and skipping forwards would change BatchNorm statistics, so it could not be the
//! result-preserving shortcut the spec asks for.

mod counter;
mod gate;
mod reduce;
mod significance;
mod student;
mod teacher;

pub use counter::{Accounting, ParticipationCounter};
pub use gate::{confidence, gate, participation_mask, ConfidenceMeasure, GateConfig, Threshold};
pub use reduce::{reduce, Normalisation};
pub use significance::{Significance, SignificanceNorm, SIGNIFICANCE_FILE};
pub use student::{variant_weights, weighted_kd_terms, SelfRegKd, StudentConfig, Variant};
pub use teacher::{SelfRegTeacher, TeacherConfig};
