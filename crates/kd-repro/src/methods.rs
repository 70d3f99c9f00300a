//! From a configured method to a distiller: the one place where the runner knows every method.

use anyhow::{bail, Context, Result};
use kd_core::distill::{Distiller, FitNets, HintonKd, KdConfig, LossTerms, NoKd, StepCtx};
use kd_core::losses::kd::kd_loss;
use kd_core::models::Model;
use kd_feature_agg::Unikd;
use kd_selfreg::{SelfRegKd, SelfRegTeacher, Significance, SIGNIFICANCE_FILE};
use tch::nn;

use crate::experiment::{Method, TeacherMethod};
use crate::teachers::TrainedTeacher;

/// The distiller of a student row. `aux` is where auxiliary modules are built; `n_train` is the
/// training-set size (for per-sample state); `seed` the run's seed (for a method's own draws).
pub fn student_distiller(
    method: &Method,
    aux: &nn::Path<'_>,
    student: &dyn Model,
    teacher: Option<&TrainedTeacher>,
    n_train: usize,
    seed: u64,
) -> Result<Box<dyn Distiller>> {
    let need = |what: &str| -> Result<&TrainedTeacher> {
        match teacher {
            Some(t) => Ok(t),
            None => bail!("{what} needs a teacher"),
        }
    };
    Ok(match method {
        Method::None => Box::new(NoKd),
        // Without a cross-entropy term the labels are never read: unlabelled data works.
        Method::Kd(c) if c.ce_weight == 0.0 => Box::new(LabelFreeKd(c.clone())),
        Method::Kd(c) => Box::new(HintonKd::new(c.clone())),
        Method::Fitnets(c) => Box::new(FitNets::new(
            c.clone(),
            aux,
            student,
            need("fitnets")?.teacher.model(),
        )?),
        Method::Unikd(c) => Box::new(Unikd::new(
            (**c).clone(),
            aux,
            student,
            need("unikd")?.teacher.model(),
        )?),
        Method::Kd3(c) => Box::new(
            kd_webdata::Kd3::new((**c).clone(), aux, student, need("kd3")?.teacher.model(), n_train)?
                .with_seed(seed),
        ),
        Method::Selfreg(c) => {
            let significance = if c.variant.uses_significance() {
                let t = need(&format!("selfreg {}", c.variant.as_str()))?;
                let path = t.dir.join(SIGNIFICANCE_FILE);
                if !path.is_file() {
                    bail!(
                        "selfreg {} needs the significance vector of a self-regulated teacher, but \
                         teacher {:?} has none at {} (give it method = {{ kind = \"selfreg\" }})",
                        c.variant.as_str(),
                        t.name,
                        path.display()
                    );
                }
                Some(Significance::load(&path).with_context(|| format!("teacher {:?}", t.name))?)
            } else {
                None
            };
            Box::new(SelfRegKd::new((**c).clone(), n_train, significance)?)
        }
    })
}

/// The distiller that trains a teacher.
pub fn teacher_distiller(method: &TeacherMethod, n_train: usize) -> Result<Box<dyn Distiller>> {
    Ok(match method {
        TeacherMethod::None => Box::new(NoKd),
        TeacherMethod::Selfreg(c) => Box::new(SelfRegTeacher::new(c.clone(), n_train)?),
    })
}

/// Hinton KD with no cross-entropy term: `kd_weight·τ²·KL(p_T^τ ‖ p_S^τ)`. Unlike
/// [`HintonKd`] at `ce_weight = 0`, it never touches the labels, so it trains on unlabelled
/// (label −1) data such as the web pool.
#[derive(Debug)]
pub struct LabelFreeKd(pub KdConfig);

impl Distiller for LabelFreeKd {
    fn name(&self) -> String {
        "kd".into()
    }
    fn loss(&mut self, ctx: &StepCtx<'_>) -> kd_core::Result<LossTerms> {
        let t = ctx
            .t_out
            .ok_or_else(|| kd_core::KdError::invalid("kd needs a teacher"))?;
        let kd = kd_loss(&ctx.s_out.logits, &t.logits, self.0.tau)?;
        Ok(LossTerms::new().with("kd", kd * self.0.kd_weight))
    }
}
