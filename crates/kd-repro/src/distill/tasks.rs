//! What a one-run job borrows from the tables: for each task, the table whose data section,
//! student recipe and method settings it starts from, the networks it can name, and the
//! methods it can run.
//!
//! A `distill` or `train` run is one row of a table the runner already knows, so it goes
//! through the same table loop (run folder, resume, teacher loading and checks, data-parallel
//! training, results) with nothing written twice. The defaults it documents are that table's:
//! `cifar100` for classification on CIFAR/IDX data or the embedded set, `imagenet` for an
//! ImageFolder root, `cityscapes` for segmentation and `coco` for detection, at the scale the
//! run picks (as for `reproduce`: paper with `--data`, quick without).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use super::opts;
use crate::eval::DenseArch;
use crate::methods::Method;
use crate::tables;

/// The task a run trains for (`--task`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Image classification: CIFAR-10/100 binary, IDX (MNIST-style) or ImageFolder data.
    Classification,
    /// Semantic segmentation on a Cityscapes tree.
    Segmentation,
    /// Object detection on a COCO root.
    Detection,
}

impl TaskKind {
    /// The name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Classification => "classification",
            TaskKind::Segmentation => "segmentation",
            TaskKind::Detection => "detection",
        }
    }
}

/// Which of the runner's tasks executes the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runner {
    /// CIFAR/IDX folders or the embedded set (`cifar100`'s schema).
    Classify,
    /// An ImageFolder root with `train/` and `val/` (`imagenet`'s schema).
    ImageFolder,
    /// `cityscapes`'s schema.
    Seg,
    /// `coco`'s schema.
    Det,
}

impl Runner {
    /// The runner of `task` on `data`: classification data with `train/` and `val/` folders is
    /// an ImageFolder root.
    pub fn of(task: TaskKind, data: Option<&Path>) -> Runner {
        match task {
            TaskKind::Classification => match data {
                Some(d) if d.join("train").is_dir() && d.join("val").is_dir() => Runner::ImageFolder,
                _ => Runner::Classify,
            },
            TaskKind::Segmentation => Runner::Seg,
            TaskKind::Detection => Runner::Det,
        }
    }

    /// The table whose data section and student recipe the run starts from.
    pub fn base_table(self) -> &'static str {
        match self {
            Runner::Classify => "cifar100",
            Runner::ImageFolder => "imagenet",
            Runner::Seg => "cityscapes",
            Runner::Det => "coco",
        }
    }

    /// The tables whose rows give each method's default settings, searched in order.
    fn method_tables(self) -> &'static [&'static str] {
        match self {
            Runner::Classify => &["cifar100", "selfreg", "webdata"],
            Runner::ImageFolder => &["imagenet", "cifar100"],
            Runner::Seg => &["cityscapes"],
            Runner::Det => &["coco"],
        }
    }

    /// The methods this task's schema runs, by `kind`.
    pub fn methods(self) -> &'static [&'static str] {
        match self {
            Runner::Classify => &["none", "kd", "dkd", "fitnets", "unikd", "selfreg", "kd3"],
            Runner::ImageFolder => &["none", "kd", "dkd", "fitnets"],
            Runner::Seg => &["none", "cwd", "mgd", "gdd"],
            Runner::Det => &["none", "cwd", "mgd", "gdd"],
        }
    }

    /// The task's kind.
    pub fn task(self) -> TaskKind {
        match self {
            Runner::Classify | Runner::ImageFolder => TaskKind::Classification,
            Runner::Seg => TaskKind::Segmentation,
            Runner::Det => TaskKind::Detection,
        }
    }
}

/// The embedded experiment of `table` at `scale`, as a TOML table.
pub fn table_text(table: &str, scale: &str) -> Result<Table> {
    let def = tables::find(table)?;
    let text = match scale {
        "quick" => def.quick,
        "paper" => def.paper,
        other => bail!("--scale {other}: use quick or paper"),
    };
    toml::from_str(text).with_context(|| format!("configs/{table}.{scale}.toml"))
}

/// The default settings of method `kind` for `runner` at `scale`: the first row of the
/// runner's tables that uses it to distil (a row with a teacher), so `--method kd` means what
/// the table's KD row means. `none` has no settings.
pub fn method_defaults(runner: Runner, scale: &str, kind: &str) -> Result<Table> {
    if !runner.methods().contains(&kind) {
        bail!(
            "unknown method {kind:?} for {} ({}); known methods: {}",
            runner.task().name(),
            describe(runner),
            runner.methods().join(", ")
        );
    }
    let mut plain = Table::new();
    plain.insert("kind".into(), Value::String(kind.into()));
    if kind == "none" {
        return Ok(plain);
    }
    for table in runner.method_tables() {
        let exp = table_text(table, scale)?;
        let rows = exp
            .get("rows")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for row in rows {
            let Some(m) = row.get("method").and_then(Value::as_table) else {
                continue;
            };
            if m.get("kind").and_then(Value::as_str) != Some(kind) {
                continue;
            }
            let parsed: Method = opts::from_table("method", m.clone())?;
            if parsed.needs_teacher() {
                return Ok(m.clone());
            }
        }
    }
    Ok(plain)
}

/// What the runner is, for messages.
fn describe(runner: Runner) -> &'static str {
    match runner {
        Runner::Classify => "CIFAR/IDX data or the embedded set",
        Runner::ImageFolder => "an ImageFolder root",
        Runner::Seg => "Cityscapes-format data",
        Runner::Det => "COCO-format data",
    }
}

/// The task a network name belongs to, or `None` for a name nobody knows.
pub fn task_of_arch(arch: &str) -> Result<Option<TaskKind>> {
    Ok(match DenseArch::parse(arch)? {
        Some(DenseArch::Seg(_)) => Some(TaskKind::Segmentation),
        Some(DenseArch::Det(_)) => Some(TaskKind::Detection),
        None if kd_classify::models::zoo::names().contains(&arch) => Some(TaskKind::Classification),
        None => None,
    })
}

/// Every name `--student` and `--teacher-arch` take for `task`.
pub fn arch_names(task: TaskKind) -> String {
    match task {
        TaskKind::Classification => kd_classify::models::zoo::names().join(", "),
        TaskKind::Segmentation => crate::eval::SEG_NAMES.into(),
        TaskKind::Detection => crate::eval::DET_NAMES.into(),
    }
}

/// A network of `runner` resolved: `arch` (checked to be of the run's task) with `overrides`
/// on the named architecture's configuration, as the table's schema writes it: a zoo name for
/// CIFAR-style classifiers, `{ arch }` for ImageFolder ones, the whole segmentor or detector
/// configuration for dense tasks. `classes` is the detector's class count (from the data).
/// `flag` names the option in errors.
pub fn resolve_net(runner: Runner, flag: &str, arch: &str, overrides: &Table, classes: i64) -> Result<Value> {
    let task = runner.task();
    match task_of_arch(arch)? {
        Some(t) if t == task => {}
        Some(t) => bail!(
            "{flag} {arch}: a {} network, but this run is {}; {} networks: {}",
            t.name(),
            task.name(),
            task.name(),
            arch_names(task)
        ),
        None => bail!(
            "{flag} {arch}: unknown network; {} networks: {}",
            task.name(),
            arch_names(task)
        ),
    }
    let base = match (runner, DenseArch::parse(arch)?) {
        (Runner::Classify | Runner::ImageFolder, _) => {
            if !overrides.is_empty() {
                let keys: Vec<&str> = overrides.keys().map(String::as_str).collect();
                bail!(
                    "{flag} {arch}: classifiers are named, not configured; no network options ({}) apply",
                    keys.join(", ")
                );
            }
            return Ok(match runner {
                Runner::ImageFolder => Value::Table(Table::from_iter([(
                    "arch".to_string(),
                    Value::String(arch.into()),
                )])),
                _ => Value::String(arch.into()),
            });
        }
        (Runner::Seg, Some(DenseArch::Seg(cfg))) => opts::to_table("segmentor", &cfg)?,
        (Runner::Det, Some(DenseArch::Det(backbone))) => opts::to_table(
            "detector",
            &kd_det::models::DetectorConfig::fcos(&backbone, classes),
        )?,
        _ => unreachable!("the task of {arch} was checked above"),
    };
    let mut net = base;
    opts::merge(&mut net, overrides);
    // Checked here, so a typo names the flag rather than a row of a generated table.
    let what = format!("{flag} {arch} network options");
    match runner {
        Runner::Seg => {
            let cfg: kd_seg::models::SegNetConfig = opts::from_table(&what, net)?;
            Ok(Value::Table(opts::to_table("segmentor", &cfg)?))
        }
        _ => {
            let cfg: kd_det::models::DetectorConfig = opts::from_table(&what, net)?;
            Ok(Value::Table(opts::to_table("detector", &cfg)?))
        }
    }
}

/// The class count of a detection run's data: the generated scenes' `synth.classes`, or the
/// categories of the validation annotation file under `data` (the reader checks that the
/// training file lists the same ones).
pub fn detection_classes(data: Option<&Path>, data_section: &Table) -> Result<i64> {
    match data {
        None => {
            let synth = data_section.get("synth").and_then(Value::as_table);
            let classes = synth
                .and_then(|s| s.get("classes"))
                .and_then(Value::as_integer)
                .unwrap_or(kd_det::data::DetSynthConfig::default().classes as i64);
            Ok(classes)
        }
        Some(root) => {
            let split = data_section
                .get("val_split")
                .and_then(Value::as_str)
                .unwrap_or("val2017");
            let file = root.join("annotations").join(format!("instances_{split}.json"));
            let text = std::fs::read(&file).with_context(|| format!("--data: reading {}", file.display()))?;
            #[derive(Deserialize)]
            struct Categories {
                categories: Vec<serde_json::Value>,
            }
            let c: Categories = serde_json::from_slice(&text)
                .with_context(|| format!("{}: not a COCO annotation file with categories", file.display()))?;
            if c.categories.is_empty() {
                bail!("{}: lists no categories", file.display());
            }
            Ok(c.categories.len() as i64)
        }
    }
}

/// The task a weights file's tensor names belong to, when they say: MMSeg's `decode_head`,
/// MMDet's `bbox_head`/`rpn_head`/`roi_head`, or a classifier's `fc`/`linear`/`classifier`.
pub fn task_of_keys<'a>(names: impl Iterator<Item = &'a str>) -> Option<(TaskKind, String)> {
    let mut found = None;
    for n in names {
        let n = kd_core::io::weights::strip_module_prefix(n);
        let task = if n.starts_with("decode_head.") || n.starts_with("auxiliary_head.") {
            TaskKind::Segmentation
        } else if ["bbox_head.", "rpn_head.", "roi_head.", "neck."]
            .iter()
            .any(|p| n.starts_with(p))
        {
            TaskKind::Detection
        } else if ["fc.", "linear.", "classifier."].iter().any(|p| n.starts_with(p)) {
            TaskKind::Classification
        } else {
            continue;
        };
        // A head decides: a segmentor or detector holds no classifier keys.
        if task != TaskKind::Classification {
            return Some((task, n.to_string()));
        }
        found.get_or_insert((task, n.to_string()));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_runner_has_defaults_for_its_methods() {
        for runner in [Runner::Classify, Runner::ImageFolder, Runner::Seg, Runner::Det] {
            for scale in ["quick", "paper"] {
                for kind in runner.methods() {
                    let t = method_defaults(runner, scale, kind).unwrap();
                    let m: Method =
                        opts::from_table("method", t).unwrap_or_else(|e| panic!("{runner:?} {kind}: {e}"));
                    assert_eq!(m.kind(), *kind);
                    assert_eq!(m.needs_teacher(), *kind != "none", "{runner:?} {scale} {kind}");
                }
            }
        }
    }

    #[test]
    fn a_method_of_another_task_lists_the_known_ones() {
        let e = method_defaults(Runner::Seg, "quick", "kd")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown method \"kd\" for segmentation") && e.contains("none, cwd, mgd, gdd"),
            "{e}"
        );
        let e = method_defaults(Runner::Classify, "quick", "kdd")
            .unwrap_err()
            .to_string();
        assert!(e.contains("none, kd, dkd, fitnets, unikd, selfreg, kd3"), "{e}");
    }

    #[test]
    fn networks_are_checked_against_the_task() {
        let none = Table::new();
        let e = resolve_net(Runner::Classify, "--student", "pspnet_r18", &none, 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a segmentation network, but this run is classification"),
            "{e}"
        );
        let e = resolve_net(Runner::Seg, "--student", "resnet99", &none, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown network") && e.contains("pspnet_r18"), "{e}");
        let mut o = Table::new();
        o.insert("width".into(), Value::Integer(16));
        let net = resolve_net(Runner::Seg, "--student", "pspnet_r18", &o, 0).unwrap();
        assert_eq!(net["width"].as_integer(), Some(16));
        assert_eq!(net["head"].as_str(), Some("psp"));
        let det = resolve_net(Runner::Det, "--student", "fcos_r18", &Table::new(), 3).unwrap();
        assert_eq!(det["num_classes"].as_integer(), Some(3));
        o.insert("widht".into(), Value::Integer(16));
        let e = resolve_net(Runner::Seg, "--student", "pspnet_r18", &o, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("widht") && e.contains("width"), "{e}");
        let e = resolve_net(Runner::Classify, "--student", "resnet8", &o, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no network options"), "{e}");
    }

    #[test]
    fn key_names_tell_the_task() {
        let seg = ["backbone.conv1.weight", "decode_head.conv_seg.weight"];
        assert_eq!(task_of_keys(seg.into_iter()).unwrap().0, TaskKind::Segmentation);
        let det = ["module.backbone.conv1.weight", "module.bbox_head.conv_cls.bias"];
        assert_eq!(task_of_keys(det.into_iter()).unwrap().0, TaskKind::Detection);
        let cls = ["conv1.weight", "fc.weight"];
        assert_eq!(task_of_keys(cls.into_iter()).unwrap().0, TaskKind::Classification);
        assert!(task_of_keys(["conv1.weight"].into_iter()).is_none());
    }
}
