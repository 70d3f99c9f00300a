//! From a configured method to a distiller: the one place where the runner knows every method.

use anyhow::{bail, Context, Result};
use kd_core::distill::{Distiller, FitNets, HintonKd, NoKd};
use kd_core::models::Model;
use kd_feature_agg::Unikd;
use kd_selfreg::{SelfRegKd, SelfRegTeacher, Significance, SIGNIFICANCE_FILE};
use tch::nn;

use crate::experiment::{Method, TeacherMethod};
use crate::teachers::TrainedTeacher;

/// The distiller of a student row. `aux` is where auxiliary modules are built; `n_train` is the
/// training-set size (for per-sample state).
pub fn student_distiller(
    method: &Method,
    aux: &nn::Path<'_>,
    student: &dyn Model,
    teacher: Option<&TrainedTeacher>,
    n_train: usize,
) -> Result<Box<dyn Distiller>> {
    let need = |what: &str| -> Result<&TrainedTeacher> {
        match teacher {
            Some(t) => Ok(t),
            None => bail!("{what} needs a teacher"),
        }
    };
    Ok(match method {
        Method::None => Box::new(NoKd),
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
