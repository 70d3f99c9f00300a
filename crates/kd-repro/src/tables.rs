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
    /// Which runner executes it.
    pub kind: TableKind,
}

/// The task of a table, which decides its experiment schema and runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    /// Image classification ([`crate::experiment::Experiment`]).
    Classification,
    /// Image classification from files ([`crate::imagenet::ImageNetExperiment`]).
    ImageFolder,
    /// Semantic segmentation ([`crate::seg::SegExperiment`]).
    Segmentation,
    /// Object detection with FCOS ([`crate::det::DetExperiment`]).
    Detection,
    /// Object detection with Faster R-CNN ([`crate::det::DetExperiment`] of
    /// [`crate::det::FasterRcnn`]).
    TwoStageDetection,
}

/// Every table the runner knows.
pub const TABLES: &[TableDef] = &[
    TableDef {
        name: "cityscapes",
        about: "GDD on Cityscapes (--data DIR, or generated street scenes in its format): teacher, then PSPNet-R18 and DeepLabV3-R18 with no KD, CWD and GDD",
        quick: include_str!("../../../configs/cityscapes.quick.toml"),
        paper: include_str!("../../../configs/cityscapes.paper.toml"),
        kind: TableKind::Segmentation,
    },
    TableDef {
        name: "coco",
        about: "GDD on COCO-format detection data (--data DIR, or generated scenes written as COCO JSON + PNG): FCOS teacher, then the student with no KD, CWD on the FPN levels and GDD on every FPN level",
        quick: include_str!("../../../configs/coco.quick.toml"),
        paper: include_str!("../../../configs/coco.paper.toml"),
        kind: TableKind::Detection,
    },
    TableDef {
        name: "coco-frcnn",
        about: "GDD on COCO-format detection data with the paper's two-stage student: Faster R-CNN teacher, then Faster R-CNN with no KD, CWD on P2–P5, MGD on P2–P6 and GDD on P2–P5",
        quick: include_str!("../../../configs/coco-frcnn.quick.toml"),
        paper: include_str!("../../../configs/coco-frcnn.paper.toml"),
        kind: TableKind::TwoStageDetection,
    },
    TableDef {
        name: "cifar100",
        about: "resnet32x4 → resnet8x4 (and WRN-40-2 → WRN-16-2 at paper scale): no KD, KD, DKD, FitNets, UniKD and its ablations",
        quick: include_str!("../../../configs/cifar100.quick.toml"),
        paper: include_str!("../../../configs/cifar100.paper.toml"),
        kind: TableKind::Classification,
    },
    TableDef {
        name: "imagenet",
        about: "ResNet-34 → ResNet-18 on an ImageFolder root (--data DIR with train/ and val/, or a generated tree in that layout), teacher from --teacher: no KD and KD",
        quick: include_str!("../../../configs/imagenet.quick.toml"),
        paper: include_str!("../../../configs/imagenet.paper.toml"),
        kind: TableKind::ImageFolder,
    },
    TableDef {
        name: "selfreg",
        about: "self-regulated KD: conventional vs self-regulated teachers, KD/SBD/RD/HD students, accuracy vs sample participations",
        quick: include_str!("../../../configs/selfreg.quick.toml"),
        paper: include_str!("../../../configs/selfreg.paper.toml"),
        kind: TableKind::Classification,
    },
    TableDef {
        name: "webdata",
        about: "KD³: teacher on the original labels, students on an unlabelled web pool (--web DIR, or a generated one): KD, DFND-style selection, KD³ and its ablations",
        quick: include_str!("../../../configs/webdata.quick.toml"),
        paper: include_str!("../../../configs/webdata.paper.toml"),
        kind: TableKind::Classification,
    },
];

/// The scale a run takes when it names none: `paper` on the user's data (`--data`), `quick` on
/// the embedded or generated stand-ins.
pub fn default_scale(has_data: bool) -> &'static str {
    if has_data {
        "paper"
    } else {
        "quick"
    }
}

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
    use std::path::Path;

    use kd_core::train::{OptimizerConfig, Schedule};

    use super::*;
    use crate::classify::experiment::Experiment;
    use crate::methods::Method;

    /// The classification plan of `exp` for a run on the embedded data.
    fn plan_of(exp: &Experiment) -> anyhow::Result<crate::table::Plan<String>> {
        use crate::table::Task;
        let args = crate::table::RunArgs::embedded(Path::new("unused"));
        crate::classify::Classification::plan(exp, &args)
    }

    fn parse(name: &str, text: &str) -> Experiment {
        kd_core::config::parse(Path::new(name), text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_embedded_experiment_parses_validates_and_names_its_table() {
        for t in TABLES.iter().filter(|t| t.kind == TableKind::Classification) {
            for (scale, text) in [("quick", t.quick), ("paper", t.paper)] {
                let exp = parse(&format!("configs/{}.{scale}.toml", t.name), text);
                assert_eq!((exp.table.as_str(), exp.scale.as_str()), (t.name, scale));
                assert!(!exp.rows.is_empty());
                exp.validate().unwrap();
            }
        }
    }

    /// The plan of an embedded experiment with its recipes checked.
    fn checked<T: crate::table::Task>(name: &str, text: &str) -> anyhow::Result<()> {
        let args = crate::table::RunArgs::embedded(Path::new("unused"));
        let exp: T::Exp = kd_core::config::parse(Path::new(name), text)?;
        T::plan(&exp, &args)?.check_recipes(Path::new(name))
    }

    #[test]
    fn every_embedded_recipe_is_within_its_ranges() {
        for t in TABLES {
            for (scale, text) in [("quick", t.quick), ("paper", t.paper)] {
                let name = format!("configs/{}.{scale}.toml", t.name);
                let checked = match t.kind {
                    TableKind::Classification => checked::<crate::classify::Classification>(&name, text),
                    TableKind::ImageFolder => checked::<crate::imagenet::ImageNet>(&name, text),
                    TableKind::Segmentation => checked::<crate::seg::Segmentation>(&name, text),
                    TableKind::Detection => checked::<crate::det::Detection>(&name, text),
                    TableKind::TwoStageDetection => {
                        checked::<crate::det::Detection<crate::det::FasterRcnn>>(&name, text)
                    }
                };
                checked.unwrap_or_else(|e| panic!("{e:#}"));
            }
        }
    }

    /// Damaged experiment files (lines dropped, doubled or cut, values swapped for hostile
    /// ones) are parsed, planned and checked: each gives a result or an error, never a panic.
    #[test]
    fn damaged_experiment_files_are_errors_not_panics() {
        use rand::Rng;
        const HOSTILE: [&str; 8] = [
            "0",
            "-1",
            "1e308",
            "nan",
            "\"x\"",
            "[]",
            "{}",
            "18446744073709551615",
        ];
        let mut cases = 0;
        for (k, t) in TABLES.iter().enumerate() {
            for (scale, text) in [("quick", t.quick), ("paper", t.paper)] {
                let lines: Vec<&str> = text.lines().collect();
                let name = format!("configs/{}.{scale}.toml", t.name);
                for i in 0..40u64 {
                    let mut rng = kd_core::rng::derive(k as u64, scale.len() as u64, i);
                    let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
                    let at = rng.gen_range(0..l.len());
                    match rng.gen_range(0..4) {
                        0 => {
                            l.remove(at);
                        }
                        1 => l.insert(at, l[at].clone()),
                        2 => l[at] = l[at].chars().take(rng.gen_range(0..=l[at].len())).collect(),
                        _ => {
                            if let Some(eq) = l[at].find(" = ") {
                                let v = HOSTILE[rng.gen_range(0..HOSTILE.len())];
                                let head = l[at][..eq].to_string();
                                l[at] = format!("{head} = {v}");
                            }
                        }
                    }
                    let damaged = l.join("\n");
                    let result = std::panic::catch_unwind(|| match t.kind {
                        TableKind::Classification => {
                            checked::<crate::classify::Classification>(&name, &damaged)
                        }
                        TableKind::ImageFolder => checked::<crate::imagenet::ImageNet>(&name, &damaged),
                        TableKind::Segmentation => checked::<crate::seg::Segmentation>(&name, &damaged),
                        TableKind::Detection => checked::<crate::det::Detection>(&name, &damaged),
                        TableKind::TwoStageDetection => {
                            checked::<crate::det::Detection<crate::det::FasterRcnn>>(&name, &damaged)
                        }
                    });
                    assert!(result.is_ok(), "{name}, damage {i} panicked:\n{damaged}");
                    cases += 1;
                }
            }
        }
        assert!(cases >= 400);
    }

    #[test]
    fn every_unikd_row_builds_its_distiller_on_its_pair() {
        use kd_classify::models::build;
        use kd_core::models::ModelSpec;
        use kd_feature_agg::Unikd;

        // CIFAR-100 shapes, as with --data; the embedded subset only differs in channels/classes.
        let spec = ModelSpec {
            in_channels: 3,
            num_classes: 100,
        };
        let mut built = 0;
        for t in TABLES.iter().filter(|t| t.kind == TableKind::Classification) {
            for (scale, text) in [("quick", t.quick), ("paper", t.paper)] {
                let exp = parse(t.name, text);
                let teachers = exp.all_teachers();
                for row in &exp.rows {
                    let Method::Unikd(cfg) = &row.method else { continue };
                    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
                    let student = exp.student_of(row).unwrap();
                    let s = build(&student.arch, &(vs.root() / "student"), spec).unwrap();
                    let tv = tch::nn::VarStore::new(tch::Device::Cpu);
                    let teacher = &teachers[exp.teacher_of(row).unwrap()].1;
                    let te = build(&teacher.arch, &tv.root(), spec).unwrap();
                    Unikd::new((**cfg).clone(), &(vs.root() / "aux"), s.as_ref(), te.as_ref())
                        .unwrap_or_else(|e| panic!("{} {scale} row {:?}: {e}", t.name, row.label));
                    built += 1;
                }
            }
        }
        assert!(built >= 8, "only {built} UniKD rows");
    }

    #[test]
    fn cifar100_paper_scale_is_the_standard_recipe_on_both_pairs() {
        let exp = parse("cifar100.paper", find("cifar100").unwrap().paper);
        assert_eq!(
            (exp.teacher.arch.as_str(), exp.student.arch.as_str()),
            ("resnet32x4", "resnet8x4")
        );
        let tr = &exp.student.train;
        assert_eq!((tr.epochs, tr.batch_size), (240, 64));
        assert_eq!(tr.lr.lr, 0.05);
        assert_eq!(
            tr.lr.schedule,
            Schedule::Multistep {
                milestones: vec![150, 180, 210],
                gamma: 0.1
            }
        );
        assert!(
            matches!(tr.optimizer, OptimizerConfig::Sgd { weight_decay, momentum, .. } if weight_decay == 5e-4 && momentum == 0.9)
        );
        assert!(exp.data.resize.is_none() && exp.data.train_subset.is_none() && !exp.teacher.shared);
        let paper = |label: &str| exp.rows.iter().find(|r| r.label == label).and_then(|r| r.paper);
        assert_eq!(
            (paper("student (no KD)"), paper("KD"), paper("FitNets")),
            (Some(72.50), Some(73.33), Some(73.50))
        );
        assert_eq!(exp.teacher.paper, Some(79.42));
        // The second pair: WRN-40-2 → WRN-16-2, same recipe, its own teacher row.
        let teachers = exp.all_teachers();
        let archs: Vec<&str> = teachers.iter().map(|(_, t)| t.arch.as_str()).collect();
        assert_eq!(archs, vec!["resnet32x4", "wrn_40_2"]);
        assert_eq!(teachers[1].1.paper, Some(75.61));
        assert_eq!(teachers[1].1.train, exp.teacher.train);
        let plan = plan_of(&exp).unwrap();
        assert!((0..plan.teachers.len()).all(|t| plan.teacher_needed(t)));
        let wrn_rows: Vec<_> = exp.rows.iter().filter(|r| r.student.is_some()).collect();
        assert!(wrn_rows.len() >= 4);
        for row in wrn_rows {
            assert_eq!(exp.student_of(row).unwrap().arch, "wrn_16_2", "{}", row.label);
            assert_eq!(exp.student_of(row).unwrap().train, exp.student.train);
            assert_eq!(exp.teacher_of(row).unwrap(), 1, "{}", row.label);
        }
    }

    #[test]
    fn every_kd3_row_builds_its_distiller_on_its_pair() {
        use kd_classify::models::build;
        use kd_core::models::ModelSpec;

        let mut built = 0;
        for (channels, classes) in [(1, 10), (3, 100)] {
            let spec = ModelSpec {
                in_channels: channels,
                num_classes: classes,
            };
            for t in TABLES.iter().filter(|t| t.kind == TableKind::Classification) {
                for (scale, text) in [("quick", t.quick), ("paper", t.paper)] {
                    let exp = parse(t.name, text);
                    let teachers = exp.all_teachers();
                    for row in &exp.rows {
                        let Method::Kd3(cfg) = &row.method else { continue };
                        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
                        let student = exp.student_of(row).unwrap();
                        let s = build(&student.arch, &(vs.root() / "student"), spec).unwrap();
                        let tv = tch::nn::VarStore::new(tch::Device::Cpu);
                        let teacher = &teachers[exp.teacher_of(row).unwrap()].1;
                        let te = build(&teacher.arch, &tv.root(), spec).unwrap();
                        kd_webdata::Kd3::new(
                            (**cfg).clone(),
                            &(vs.root() / "aux"),
                            s.as_ref(),
                            te.as_ref(),
                            100,
                        )
                        .unwrap_or_else(|e| panic!("{} {scale} row {:?}: {e}", t.name, row.label));
                        built += 1;
                    }
                }
            }
        }
        assert!(built >= 20, "only {built} KD³ rows");
    }

    #[test]
    fn webdata_has_every_row_of_the_setting_and_paper_numbers_per_dataset() {
        use crate::table::TrainOn;
        use kd_webdata::SelectionMode;

        for (scale, text) in [
            ("quick", find("webdata").unwrap().quick),
            ("paper", find("webdata").unwrap().paper),
        ] {
            let exp = parse(scale, text);
            assert!(exp.uses_web() && exp.web.is_some() && exp.selection_plot.is_some());
            let web = exp.web.as_ref().unwrap();
            assert_eq!(web.junk_fraction, 0.3);
            // The reference trains on labels; every other row on the pool, without labels.
            assert_eq!(exp.rows[0].train_on, TrainOn::Original);
            assert!(matches!(exp.rows[0].method, Method::None));
            for row in &exp.rows[1..] {
                assert_eq!(row.train_on, TrainOn::Web, "{}", row.label);
                assert!(!row.method.reads_labels(), "{}", row.label);
            }
            assert!(matches!(&exp.rows[1].method, Method::Kd(c) if c.ce_weight == 0.0));
            let kd3: Vec<&kd_webdata::Kd3Config> = exp
                .rows
                .iter()
                .filter_map(|r| match &r.method {
                    Method::Kd3(c) => Some(&**c),
                    _ => None,
                })
                .collect();
            let sel: Vec<SelectionMode> = kd3.iter().map(|c| c.selection).collect();
            assert_eq!(
                sel,
                [
                    SelectionMode::TeacherOnly,
                    SelectionMode::Combined,
                    SelectionMode::None,
                    SelectionMode::Combined,
                    SelectionMode::Combined
                ]
            );
            assert!(!kd3[3].shared_head && kd3[3].mix_distribution);
            assert!(kd3[4].shared_head && !kd3[4].mix_distribution);
            let full = exp.rows.iter().find(|r| r.label == "KD³").unwrap();
            assert_eq!(full.paper_for("cifar-10"), Some(95.21));
            assert_eq!(full.paper_for("cifar-100"), Some(78.44));
            assert_eq!(full.paper_for("embedded"), None);
            assert_eq!(full.paper_for("idx"), None);
            assert!(exp
                .rows
                .iter()
                .filter(|r| r.label != "KD³")
                .all(|r| r.paper_for("cifar-10").is_none()));
        }
        let paper = parse("paper", find("webdata").unwrap().paper);
        // Paper-scale reports keep fractions only: the kept indices of a large pool are too big.
        for row in &paper.rows {
            if let Method::Kd3(c) = &row.method {
                assert!(!c.report_kept, "{}", row.label);
            }
        }
        let tr = &paper.student.train;
        assert_eq!((tr.epochs, tr.batch_size, tr.lr.lr), (240, 1024, 0.05));
    }

    #[test]
    fn web_rows_must_read_no_labels_and_need_a_pool() {
        use crate::table::TrainOn;

        let base = parse("webdata.quick.toml", find("webdata").unwrap().quick);
        let mut exp = base.clone();
        exp.rows[0].train_on = TrainOn::Web;
        let msg = exp.validate().unwrap_err().to_string();
        assert!(msg.contains("reads labels"), "{msg}");
        let mut exp = base.clone();
        if let Method::Kd(c) = &mut exp.rows[1].method {
            c.ce_weight = 0.1;
        }
        assert!(exp.validate().unwrap_err().to_string().contains("reads labels"));
        let mut exp = base.clone();
        exp.web = None;
        assert!(exp.validate().unwrap_err().to_string().contains("[web]"));
        let mut exp = base;
        exp.web.as_mut().unwrap().junk_fraction = 2.0;
        assert!(exp.validate().unwrap_err().to_string().contains("junk_fraction"));
    }

    #[test]
    fn selfreg_rows_distil_from_a_self_regulated_teacher() {
        let exp = parse("selfreg.quick.toml", find("selfreg").unwrap().quick);
        let plan = plan_of(&exp).unwrap();
        assert_eq!(plan.teachers.len(), 1 + exp.teachers.len());
        assert!((0..plan.teachers.len()).all(|t| plan.teacher_needed(t)));
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
    fn unknown_or_duplicate_names_are_errors() {
        let base = parse("selfreg.quick.toml", find("selfreg").unwrap().quick);
        let mut exp = base.clone();
        exp.rows[1].teacher = Some("nope".into());
        let msg = plan_of(&exp).unwrap_err().to_string();
        assert!(
            msg.contains("nope") && msg.contains("known teachers: teacher"),
            "{msg}"
        );
        let mut exp = base.clone();
        exp.teachers[0].name = "teacher".into();
        assert!(plan_of(&exp).is_err());
        let mut exp = base.clone();
        exp.rows[1].student = Some("ghost".into());
        let msg = plan_of(&exp).unwrap_err().to_string();
        assert!(
            msg.contains("ghost") && msg.contains("known students: student"),
            "{msg}"
        );
        let mut exp = base.clone();
        exp.rows[2].label = exp.rows[1].label.clone();
        assert!(plan_of(&exp).unwrap_err().to_string().contains("used twice"));
        let mut exp = base;
        exp.rows[2].label = format!("{}!", exp.rows[1].label);
        assert!(plan_of(&exp)
            .unwrap_err()
            .to_string()
            .contains("share the folder name"));
        assert_eq!(crate::table::slug("KD³ w/o selection"), "kd3-w-o-selection");
    }

    #[test]
    fn cityscapes_scales_parse_and_the_paper_scale_is_the_released_recipe() {
        use crate::seg::SegExperiment;
        let t = find("cityscapes").unwrap();
        assert_eq!(t.kind, TableKind::Segmentation);
        let quick: SegExperiment = kd_core::config::parse(Path::new("quick"), t.quick).unwrap();
        let paper: SegExperiment = kd_core::config::parse(Path::new("paper"), t.paper).unwrap();
        crate::seg::plan(&quick).unwrap();
        crate::seg::plan(&paper).unwrap();
        assert_eq!((quick.scale.as_str(), paper.scale.as_str()), ("quick", "paper"));
        assert_eq!(paper.data.augment.crop, [512, 512]);
        assert_eq!(paper.teacher.net.backbone, "r101");
        let paper_numbers: Vec<(String, Option<f64>)> =
            paper.rows.iter().map(|r| (r.label.clone(), r.paper)).collect();
        assert!(paper_numbers.contains(&("PSPNet-R18 + GDD".into(), Some(74.67))));
        assert!(paper_numbers.contains(&("DeepLabV3-R18 (no KD)".into(), Some(73.20))));
        for s in &paper.students {
            assert_eq!((s.net.backbone.as_str(), s.net.width), ("r18", 64));
            let tr = &s.train;
            assert_eq!(tr.batch_size, 8);
            assert_eq!(tr.lr.lr, 0.01);
            assert_eq!(
                tr.lr.schedule,
                Schedule::Poly {
                    power: 0.9,
                    min_lr: 1e-4
                }
            );
            assert!(matches!(
                tr.optimizer,
                OptimizerConfig::Sgd { momentum, weight_decay, .. } if momentum == 0.9 && weight_decay == 5e-4
            ));
            // 40k iterations at 2975 images, batch 8, the last partial batch dropped.
            assert_eq!(tr.epochs * (2975 / 8), 40_068);
        }
        let alphas: Vec<(String, f64, f64)> = paper
            .rows
            .iter()
            .filter_map(|r| match &r.method {
                Method::Gdd(g) => Some((r.student.clone(), g.alpha, g.tau)),
                _ => None,
            })
            .collect();
        assert_eq!(
            alphas,
            [
                ("pspnet_r18".to_string(), 145.0, 4.0),
                ("deeplabv3_r18".to_string(), 175.0, 4.0)
            ]
        );
        // MGD as released for both students: α = 2e-5, λ = 0.75 on stage 4, logit CWD τ 4 w 3.
        let mgd: Vec<_> = paper
            .rows
            .iter()
            .filter_map(|r| match &r.method {
                Method::Mgd(m) => Some((r.student.clone(), m.clone(), r.paper)),
                _ => None,
            })
            .collect();
        assert_eq!(mgd.len(), 2);
        for ((student, m, paper_number), want) in mgd.iter().zip([73.63, 76.31]) {
            assert_eq!(m, &kd_gdd::MgdConfig::segmentation(), "{student}");
            assert_eq!(*paper_number, Some(want), "{student}");
        }
    }

    #[test]
    fn coco_scales_parse_and_the_paper_scale_is_the_released_recipe() {
        use crate::det::DetExperiment;
        let t = find("coco").unwrap();
        assert_eq!(t.kind, TableKind::Detection);
        let quick: DetExperiment = kd_core::config::parse(Path::new("quick"), t.quick).unwrap();
        let paper: DetExperiment = kd_core::config::parse(Path::new("paper"), t.paper).unwrap();
        crate::det::plan::<crate::det::Fcos>(&quick).unwrap();
        crate::det::plan::<crate::det::Fcos>(&paper).unwrap();
        assert_eq!((quick.scale.as_str(), paper.scale.as_str()), ("quick", "paper"));
        assert_eq!(paper.data.augment.img_scale, [1333, 800]);
        assert_eq!(paper.data.augment.flip_prob, 0.5);
        assert_eq!(paper.teacher.net.backbone, "r101");
        let references: Vec<f64> = paper.references.iter().map(|r| r.paper).collect();
        assert_eq!(references, [38.4, 42.1]);
        for s in &paper.students {
            assert_eq!((s.net.backbone.as_str(), s.net.fpn_channels), ("r50", 256));
            assert_eq!(
                (s.net.start_level, s.net.end_level, s.net.num_classes),
                (3, 7, 80)
            );
            let tr = &s.train;
            assert_eq!((tr.epochs, tr.batch_size, tr.grad_clip), (24, 16, Some(35.0)));
            assert_eq!(tr.lr.lr, 0.02);
            assert_eq!(tr.lr.warmup_start, 0.001);
            // 500 warm-up iterations of the 118,287 / 16 = 7,393 an epoch.
            assert!((tr.lr.warmup_epochs * 7393.0 - 500.0).abs() < 1.0);
            assert_eq!(
                tr.lr.schedule,
                Schedule::Multistep {
                    milestones: vec![16, 22],
                    gamma: 0.1
                }
            );
            assert!(matches!(
                tr.optimizer,
                OptimizerConfig::Sgd { momentum, weight_decay, .. } if momentum == 0.9 && weight_decay == 1e-4
            ));
        }
        for exp in [&quick, &paper] {
            let taps: Vec<String> = exp.students[0]
                .net
                .levels()
                .iter()
                .map(|l| format!("p{l}"))
                .collect();
            let gdd = exp
                .rows
                .iter()
                .find_map(|r| match &r.method {
                    Method::Gdd(g) => Some(g.clone()),
                    _ => None,
                })
                .unwrap();
            // GDD on every FPN level the detector has.
            let levels: Vec<String> = gdd.levels.iter().map(|l| l.student_tap.clone()).collect();
            assert_eq!(levels, taps);
            assert_eq!(gdd.tau, 4.0);
        }
        let alphas: Vec<f64> = paper
            .rows
            .iter()
            .filter_map(|r| match &r.method {
                Method::Gdd(g) => Some(g.levels.iter().map(|l| l.alpha).collect::<Vec<_>>()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(alphas, [4.0; 5]);
        // MGD as released for detection: α = 2e-5 and λ = 0.65 on every FPN level, no logit term.
        let mgd = paper
            .rows
            .iter()
            .find_map(|r| match &r.method {
                Method::Mgd(m) => Some(m.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(mgd, kd_gdd::MgdConfig::detection(&["p3", "p4", "p5", "p6", "p7"]));
    }

    #[test]
    fn dkd_rows_carry_mdistillers_settings_and_numbers() {
        use kd_classify::DkdConfig;
        let dkd_rows =
            |exp_rows: Vec<(String, Method, Option<f64>)>| -> Vec<(String, DkdConfig, Option<f64>)> {
                exp_rows
                    .into_iter()
                    .filter_map(|(l, m, p)| match m {
                        Method::Dkd(c) => Some((l, c, p)),
                        _ => None,
                    })
                    .collect()
            };
        let cifar = parse("paper", find("cifar100").unwrap().paper);
        let rows = dkd_rows(
            cifar
                .rows
                .iter()
                .map(|r| (r.label.clone(), r.method.clone(), r.paper))
                .collect(),
        );
        assert_eq!(rows.len(), 2);
        assert_eq!((&rows[0].1, rows[0].2), (&DkdConfig::default(), Some(76.32)));
        assert_eq!((rows[1].1.beta, rows[1].2), (6.0, Some(76.24)));
        // Every student row of a table trains under the same clipping.
        assert_eq!(cifar.student.train.grad_clip, Some(5.0));
        let quick = parse("quick", find("cifar100").unwrap().quick);
        assert_eq!(quick.student.train.grad_clip, Some(5.0));
        let imagenet: crate::imagenet::ImageNetExperiment =
            kd_core::config::parse(Path::new("paper"), find("imagenet").unwrap().paper).unwrap();
        let rows = dkd_rows(
            imagenet
                .rows
                .iter()
                .map(|r| (r.label.clone(), r.method.clone(), r.paper))
                .collect(),
        );
        assert_eq!(rows.len(), 1);
        assert_eq!((&rows[0].1, rows[0].2), (&DkdConfig::imagenet(), Some(71.70)));
    }
}
