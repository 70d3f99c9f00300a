//! A table whose teacher is no teacher says so above its rows.
//!
//! A quick recipe run on other data, a short schedule or a wrong checkpoint can leave a teacher
//! near chance or below the student it teaches; the distilled rows then fall below the no-KD
//! row for reasons that have nothing to do with the methods, and a table that prints them
//! without a word misleads its reader. The rows still run; the warning and the flag say why
//! their gaps mean little.

use super::Plan;
use crate::methods::Method;

/// A teacher's standing after the table ran.
pub struct Standing {
    /// Mean of its score over the seeds it was scored on.
    pub mean: f64,
    /// The task's chance level for its network, in the table's unit.
    pub chance: f64,
}

/// The warnings of teacher `t` (`standing`) given the rows' means over seeds (`row_means`, in
/// plan order): near chance (at most twice the chance level, the bar a given teacher must
/// clear), and below a student it teaches trained without KD.
pub fn teacher_warnings<N>(
    plan: &Plan<N>,
    t: usize,
    standing: &Standing,
    row_means: &[f64],
    metric: &str,
) -> Vec<String> {
    let label = &plan.teachers[t].label;
    let mut out = Vec::new();
    let Standing { mean, chance } = *standing;
    if mean <= 2.0 * chance {
        out.push(format!(
            "the teacher \"{label}\" scores {metric} {mean:.2}, near chance ({chance:.2}): it has learnt next to nothing, \
             so the distilled rows measure its noise, not the methods"
        ));
    }
    let taught: Vec<usize> = plan
        .rows
        .iter()
        .filter(|r| r.teacher == t && r.method.needs_teacher())
        .map(|r| r.student)
        .collect();
    for (row, &student_mean) in plan.rows.iter().zip(row_means) {
        if matches!(row.method, Method::None) && taught.contains(&row.student) && mean < student_mean {
            out.push(format!(
                "the teacher \"{label}\" ({metric} {mean:.2}) is below its student trained without KD, \"{}\" ({student_mean:.2}): \
                 a distilled row below the no-KD row is not distillation's fault here",
                row.label
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use kd_core::train::TrainConfig;

    use super::*;
    use crate::methods::TeacherMethod;
    use crate::table::{RowPlan, StudentPlan, TeacherPlan, TrainOn};

    fn plan() -> Plan<String> {
        let row = |label: &str, method: Method| RowPlan {
            label: label.into(),
            student: 0,
            teacher: 0,
            method,
            paper: None,
            train_on: TrainOn::Original,
            init_student: false,
        };
        let kd = kd_classify::KdConfig {
            tau: 4.0,
            ce_weight: 0.1,
            kd_weight: 0.9,
        };
        Plan {
            table: "t".into(),
            scale: "quick".into(),
            seeds: None,
            teachers: vec![TeacherPlan {
                name: "teacher".into(),
                label: "T".into(),
                net: "resnet8".into(),
                train: TrainConfig::sgd_cosine(1, 8, 0.1),
                method: TeacherMethod::None,
                shared: true,
                paper: None,
                always_shown: false,
                init: None,
                at: "[teacher]".into(),
            }],
            students: vec![StudentPlan {
                name: "s".into(),
                net: "resnet8".into(),
                train: TrainConfig::sgd_cosine(1, 8, 0.1),
                init: None,
                at: "[student]".into(),
            }],
            rows: vec![row("S", Method::None), row("S + KD", Method::Kd(kd))],
            columns: Vec::new(),
            plots: Vec::new(),
            references: Vec::new(),
        }
    }

    #[test]
    fn a_teacher_near_chance_or_below_its_no_kd_student_is_named() {
        let p = plan();
        let good = Standing {
            mean: 80.0,
            chance: 10.0,
        };
        assert!(teacher_warnings(&p, 0, &good, &[70.0, 72.0], "top1").is_empty());
        let below = teacher_warnings(&p, 0, &good, &[85.0, 72.0], "top1");
        assert_eq!(below.len(), 1);
        assert!(below[0].contains("below its student trained without KD, \"S\" (85.00)"));
        let weak = Standing {
            mean: 19.0,
            chance: 10.0,
        };
        let w = teacher_warnings(&p, 0, &weak, &[15.0, 14.0], "top1");
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("near chance (10.00)"), "{w:?}");
        assert_eq!(teacher_warnings(&p, 0, &weak, &[30.0, 14.0], "top1").len(), 2);
    }
}
