//! The registry of reproduction tables. Each table is a pair of TOML experiments (quick and
//! paper scale) compiled into the binary, so `kd reproduce <table>` works from any folder; a
//! `--config FILE` replaces the embedded experiment.

/// A reproduction table.
pub struct TableDef {
    /// Name used on the command line.
    pub name: &'static str,
    /// One line for `--list`.
    pub about: &'static str,
    /// Quick-scale experiment (TOML).
    pub quick: &'static str,
    /// Paper-scale experiment (TOML).
    pub paper: &'static str,
}

/// Every table the runner knows.
pub const TABLES: &[TableDef] = &[
    TableDef {
        name: "cifar100",
        about: "resnet32x4 → resnet8x4: teacher, student (no KD), KD, FitNets (RepDistiller numbers beside ours)",
        quick: include_str!("../../../configs/cifar100.quick.toml"),
        paper: include_str!("../../../configs/cifar100.paper.toml"),
    },
    TableDef {
        name: "selfreg",
        about: "self-regulated KD: conventional vs self-regulated teachers, KD/SBD/RD/HD students, accuracy vs sample participations",
        quick: include_str!("../../../configs/selfreg.quick.toml"),
        paper: include_str!("../../../configs/selfreg.paper.toml"),
    },
];

/// The table called `name`, or an error listing the known ones.
pub fn find(name: &str) -> anyhow::Result<&'static TableDef> {
    TABLES.iter().find(|t| t.name == name).ok_or_else(|| {
        let names: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
        anyhow::anyhow!("unknown table {name:?}; known tables: {}", names.join(", "))
    })
}

/// The `--list` text.
pub fn listing() -> String {
    TABLES
        .iter()
        .map(|t| format!("{:<12} {}\n", t.name, t.about))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::{Experiment, Method};

    fn parse(name: &str, text: &str) -> Experiment {
        kd_core::config::parse(std::path::Path::new(name), text).unwrap()
    }

    #[test]
    fn every_embedded_config_parses_and_validates() {
        for t in TABLES {
            for (scale, text) in [("quick", t.quick), ("paper", t.paper)] {
                let exp = parse(&format!("configs/{}.{scale}.toml", t.name), text);
                assert_eq!((exp.table.as_str(), exp.scale.as_str()), (t.name, scale));
                exp.validate().unwrap();
            }
        }
    }

    #[test]
    fn selfreg_rows_distil_from_a_self_regulated_teacher() {
        let exp = parse("selfreg.quick.toml", find("selfreg").unwrap().quick);
        assert_eq!(exp.teachers_needed().unwrap(), vec![true; 1 + exp.teachers.len()]);
        for row in &exp.rows {
            if let Method::Selfreg(c) = &row.method {
                if c.variant.uses_significance() {
                    let (_, t) = &exp.all_teachers()[exp.teacher_of(row).unwrap()];
                    assert!(!t.method.is_plain(), "{} needs significance", row.label);
                }
            }
        }
    }

    #[test]
    fn unknown_or_duplicate_teacher_names_are_errors() {
        let mut exp = parse("selfreg.quick.toml", find("selfreg").unwrap().quick);
        exp.rows[1].teacher = Some("nope".into());
        let msg = exp.validate().unwrap_err().to_string();
        assert!(
            msg.contains("nope") && msg.contains("known teachers: teacher"),
            "{msg}"
        );
        let mut exp = parse("selfreg.quick.toml", find("selfreg").unwrap().quick);
        exp.teachers[0].name = "teacher".into();
        assert!(exp.validate().is_err());
    }
}
