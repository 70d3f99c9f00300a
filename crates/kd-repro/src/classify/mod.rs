//! The classification task: CIFAR-binary, IDX or the embedded Fashion-MNIST subset, zoo
//! networks, top-1, and rows that train on an unlabelled web pool.
//!
//! Rows with `train_on = "web"` train their student on the web pool ([`webpool`]) instead of
//! the original training set: same recipe, same teacher, same (original) test set. Their
//! teacher's cached outputs, if any, are computed over the pool. A row whose method reports the
//! pool indices it kept per epoch gets the kept share of in-distribution and junk images in its
//! `extra`, and the `[selection_plot]`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Result};
use kd_classify::data::{class_loader, Augment, Dataset};
use kd_classify::{NoKd, Top1};
use kd_core::data::BatchSource;
use kd_core::distill::{Distiller, TaskLoss};
use kd_core::models::{Model, ModelSpec};
use kd_core::train::{Evaluator, TrainReport};
use tch::{nn, Device};

use crate::plot::{self, Curve};
use crate::table::{
    find_name, Header, Plan, RowPlan, RunArgs, Scored, StudentPlan, Task, TeacherPlan, TrainOn,
};

pub mod datasets;
pub mod experiment;
pub mod webpool;

use experiment::{Experiment, KEPT_KEY};
use webpool::WebPool;

/// Evaluation batch size: large, since no gradients are kept.
const EVAL_BATCH: usize = 256;
/// Batch size of the one pass that fills a teacher's output cache.
const CACHE_BATCH: usize = 256;

/// A classification table's opened data.
pub struct Classification {
    head: Header<Experiment>,
    /// The original training set.
    train: Arc<dyn Dataset>,
    /// Its content fingerprint, for the teacher cache (teachers train on it alone).
    fingerprint: String,
    /// The web pool, when some row trains on it.
    web: Option<WebPool>,
    test: Arc<dyn Dataset>,
    augment: Augment,
    spec: ModelSpec,
}

impl Classification {
    /// The training set of rows on `on`.
    fn set(&self, on: TrainOn) -> &Arc<dyn Dataset> {
        match (on, &self.web) {
            (TrainOn::Web, Some(pool)) => &pool.dataset,
            _ => &self.train,
        }
    }
}

impl Task for Classification {
    type Exp = Experiment;
    type Net = String;
    type Eval<'a> = Top1;

    const METRIC: &'static str = "top1";
    const CURVES: &'static str = "accuracy.png";

    fn plan(exp: &Experiment, args: &RunArgs) -> Result<Plan<String>> {
        exp.validate()?;
        let dataset = datasets::kind(args.data.as_deref());
        let teachers = exp
            .all_teachers()
            .into_iter()
            .enumerate()
            .map(|(i, (name, t))| TeacherPlan {
                at: if i == 0 {
                    "[teacher]".into()
                } else {
                    format!("[[teachers]] name = {name:?}")
                },
                label: t.row_label(),
                name,
                net: t.arch,
                train: t.train,
                method: t.method,
                shared: t.shared,
                paper: t.paper,
                always_shown: i > 0 || exp.teacher.paper.is_some() || !exp.teachers.is_empty(),
                init: t.init,
            })
            .collect();
        let mut students = vec![StudentPlan {
            name: experiment::DEFAULT_STUDENT.into(),
            net: exp.student.arch.clone(),
            train: exp.student.train.clone(),
            init: exp.student.init.clone(),
            at: "[student]".into(),
        }];
        students.extend(exp.students.iter().map(|s| StudentPlan {
            name: s.name.clone(),
            net: s.arch.clone(),
            train: s.train.clone().unwrap_or_else(|| exp.student.train.clone()),
            init: s.init.clone(),
            at: match s.train {
                Some(_) => format!("[[students]] name = {:?}", s.name),
                None => "[student]".into(),
            },
        }));
        let rows = exp
            .rows
            .iter()
            .map(|r| {
                let name = r.student.as_deref().unwrap_or(experiment::DEFAULT_STUDENT);
                let student = find_name(
                    "student",
                    &r.label,
                    name,
                    students.iter().map(|s| s.name.as_str()),
                )?;
                Ok(RowPlan {
                    label: r.label.clone(),
                    student,
                    teacher: exp.teacher_of(r)?,
                    method: r.method.clone(),
                    paper: r.paper_for(&dataset),
                    train_on: r.train_on,
                    init_student: false,
                })
            })
            .collect::<Result<_>>()?;
        let plan = Plan {
            table: exp.table.clone(),
            scale: exp.scale.clone(),
            seeds: exp.seeds,
            teachers,
            students,
            rows,
            columns: exp.columns.clone(),
            plots: exp.plots.clone(),
            references: Vec::new(),
        };
        plan.validate(&[])?;
        Ok(plan)
    }

    fn open(exp: Experiment, _plan: &Plan<String>, args: &RunArgs) -> Result<Self> {
        let datasets::Opened {
            train,
            test,
            mut label,
        } = datasets::open(args.data.as_deref(), exp.data.train_subset, exp.data.resize)?;
        if let (None, Some(paper)) = (&args.data, &exp.paper_dataset) {
            label.push_str(&format!(" — not {paper}"));
        }
        let norm = datasets::channel_stats(train.as_ref())?;
        let augment = Augment {
            pad_crop: (exp.data.pad_crop > 0).then_some(exp.data.pad_crop),
            hflip: exp.data.hflip,
            normalize: Some(norm),
        };
        let spec = ModelSpec {
            in_channels: train.shape()[0] as i64,
            num_classes: train.num_classes() as i64,
        };
        let fingerprint = datasets::fingerprint(train.as_ref())?;
        let web = open_pool(&exp, args, &train)?;
        if let Some(pool) = &web {
            say!(
                "    web pool: {} ({} images at {})",
                pool.label,
                pool.dataset.len(),
                pool.dir.display()
            );
        }
        let sizes = format!(
            "{} train / {} test samples, {} classes",
            train.len(),
            test.len(),
            spec.num_classes
        );
        Ok(Self {
            head: Header { exp, label, sizes },
            train,
            fingerprint,
            web,
            test,
            augment,
            spec,
        })
    }

    fn header(&self) -> &Header<Self::Exp> {
        &self.head
    }

    fn data_key(&self) -> Result<String> {
        Ok(format!(
            "{}\n{}",
            toml::to_string(&self.head.exp.data)?,
            self.fingerprint
        ))
    }

    fn build_net(&self, net: &String, p: &nn::Path<'_>) -> kd_core::Result<Box<dyn Model>> {
        kd_classify::models::build(net, p, self.spec)
    }

    fn loaders(
        &self,
        batch: usize,
        seed: u64,
        on: TrainOn,
    ) -> Result<(Box<dyn BatchSource>, Box<dyn BatchSource>)> {
        let eval_aug = Augment {
            pad_crop: None,
            hflip: false,
            ..self.augment.clone()
        };
        Ok((
            Box::new(class_loader(
                self.set(on).clone(),
                batch,
                self.augment.clone(),
                false,
                seed,
            )?),
            Box::new(class_loader(
                self.test.clone(),
                EVAL_BATCH,
                eval_aug,
                false,
                seed,
            )?),
        ))
    }

    fn train_len(&self, on: TrainOn) -> usize {
        self.set(on).len()
    }

    fn split_name(&self, on: Option<TrainOn>) -> String {
        match on {
            Some(on) => self.set(on).name(),
            None => self.test.name(),
        }
    }

    fn test_len(&self) -> usize {
        self.test.len()
    }

    fn train_input(&self, on: TrainOn) -> [i64; 3] {
        self.set(on).shape().map(|d| d as i64)
    }

    fn evaluator(&self) -> Result<Top1> {
        Ok(Top1)
    }

    fn supervised(&self) -> Result<Box<dyn Distiller>> {
        Ok(Box::new(NoKd))
    }

    fn task_loss(&self) -> Result<Box<dyn TaskLoss>> {
        Ok(Box::new(NoKd))
    }

    fn cache_source(&self, on: TrainOn) -> Result<Option<(Box<dyn BatchSource>, usize)>> {
        let (train, _) = self.loaders(CACHE_BATCH, 0, on)?;
        Ok(Some((train, CACHE_BATCH)))
    }

    fn score(&self, net: &dyn Model, device: Device) -> Result<Scored> {
        let (_, test) = self.loaders(EVAL_BATCH, 0, TrainOn::Original)?;
        Ok(Scored {
            value: Top1.evaluate(net, &NoKd, test.as_ref(), device)?,
            extra: serde_json::Value::Null,
        })
    }

    /// The top-1 of the trainer's evaluation after the last epoch: the final protocol is the
    /// one every epoch is evaluated with (the whole test set, un-augmented, through the
    /// method's student logits).
    fn score_row(
        &self,
        _dir: &Path,
        _net: &String,
        report: &TrainReport,
        _eval: &Top1,
        _device: Device,
    ) -> Result<Scored> {
        Ok(Scored {
            value: report.final_metric,
            extra: serde_json::Value::Null,
        })
    }

    fn row_extra(
        &self,
        row: &RowPlan,
        _scored: &[Scored],
        reports: &[TrainReport],
        extra: &mut serde_json::Value,
    ) {
        if row.train_on != TrainOn::Web {
            return;
        }
        let origins = self.web.as_ref().and_then(|p| p.origins.as_deref());
        if let Some((summary, _)) = selection_summary(&row.label, reports, self.kept_key(), origins) {
            strip_key(extra, self.kept_key());
            extra["kept"] = summary;
        }
    }

    fn pictures(
        &self,
        plan: &Plan<String>,
        out: &Path,
        reports: &[Vec<TrainReport>],
        _device: Device,
    ) -> Result<()> {
        let Some(sp) = &self.head.exp.selection_plot else {
            return Ok(());
        };
        let origins = self.web.as_ref().and_then(|p| p.origins.as_deref());
        let png = out.join(&sp.file);
        let mut curves: Vec<Curve> = Vec::new();
        for (row, reports) in plan.rows.iter().zip(reports) {
            if row.train_on == TrainOn::Web {
                if let Some((_, c)) = selection_summary(&row.label, reports, self.kept_key(), origins) {
                    curves.extend(c);
                }
            }
        }
        match self.web.as_ref().map(|p| p.origins.is_some()) {
            Some(true) if !curves.is_empty() => {
                // Each row's pair of curves shares a colour; junk is dashed.
                for (i, c) in curves.iter_mut().enumerate() {
                    c.color = Some(i / 2);
                }
                let drawn = plot::curves(&png, &sp.title, "epoch", "kept (% of its kind)", &curves);
                plot::warn_if_not_drawn(&png, drawn);
            }
            Some(false) => say!(
                "note: the web pool has no {} listing each image's origin, so {} (kept in-distribution vs junk images) is not drawn",
                webpool::ORIGINS_FILE,
                png.display()
            ),
            _ => {}
        }
        Ok(())
    }

    fn data_summary(&self) -> Option<serde_json::Value> {
        self.web.as_ref().map(WebPool::summary)
    }
}

impl Classification {
    /// The report key of the kept pool indices per epoch.
    fn kept_key(&self) -> &str {
        self.head
            .exp
            .selection_plot
            .as_ref()
            .map_or(KEPT_KEY, |p| p.key.as_str())
    }
}

/// Opens the web pool when some row trains on it: the `--web` folder, or the pool generated from
/// the original training images (at their stored size, before any `resize`).
fn open_pool(exp: &Experiment, args: &RunArgs, train: &Arc<dyn Dataset>) -> Result<Option<WebPool>> {
    if !exp.uses_web() {
        return Ok(None);
    }
    let cfg = exp
        .web
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the experiment has rows on the web pool but no [web] section"))?;
    // The generator works from the stored images (before `resize` and `train_subset`); a
    // `--web` folder needs no source.
    let source = match &args.web {
        Some(_) => train.clone(),
        None => kd_classify::data::open_classification(args.data.as_deref())?.0,
    };
    let pool = webpool::open(args.web.as_deref(), cfg, source.as_ref(), train.shape())?;
    if pool.dataset.shape()[0] != train.shape()[0] {
        bail!("web pool and original data differ in channels");
    }
    Ok(Some(pool))
}
/// For a row that reports its kept pool indices per epoch under `key`: the kept share of
/// in-distribution and of junk images per epoch (mean over seeds) as the row's `kept` extra and
/// two plot curves. `None` when the row reports nothing under `key`.
fn selection_summary(
    label: &str,
    reports: &[TrainReport],
    key: &str,
    origins: Option<&[webpool::Origin]>,
) -> Option<(serde_json::Value, Vec<Curve>)> {
    let per_seed: Vec<Vec<Vec<usize>>> = reports
        .iter()
        .filter_map(|r| r.distiller.get(key)?.as_array().cloned())
        .map(|epochs| {
            epochs
                .iter()
                .map(|e| {
                    e.as_array()
                        .map(|ix| ix.iter().filter_map(|v| v.as_u64().map(|v| v as usize)).collect())
                        .unwrap_or_default()
                })
                .collect()
        })
        .collect();
    if per_seed.is_empty() {
        return None;
    }
    let kept_counts: Vec<Vec<usize>> = per_seed
        .iter()
        .map(|s| s.iter().map(Vec::len).collect())
        .collect();
    let Some(origins) = origins else {
        return Some((serde_json::json!({ "count_per_epoch": kept_counts }), Vec::new()));
    };
    let epochs = per_seed.iter().map(Vec::len).min().unwrap_or(0);
    let (mut id, mut junk) = (Vec::new(), Vec::new());
    for e in 0..epochs {
        let fr: Vec<(f64, f64)> = per_seed
            .iter()
            .map(|s| webpool::kept_fractions(origins, &s[e]))
            .collect();
        let n = fr.len() as f64;
        id.push(fr.iter().map(|f| f.0).sum::<f64>() / n);
        junk.push(fr.iter().map(|f| f.1).sum::<f64>() / n);
    }
    let curve = |what: &str, v: &[f64], dashed: bool| Curve {
        dashed,
        ..Curve::new(
            format!("{label}: {what}"),
            v.iter().enumerate().map(|(e, &y)| ((e + 1) as f64, y)).collect(),
        )
    };
    let curves = vec![
        curve("in-distribution kept", &id, false),
        curve("junk kept (dashed)", &junk, true),
    ];
    Some((
        serde_json::json!({
            "count_per_epoch": kept_counts,
            "in_distribution_pct_per_epoch": id,
            "junk_pct_per_epoch": junk,
        }),
        curves,
    ))
}

/// Removes `key` from every per-seed report in a row's `extra` (a long list already summarised).
fn strip_key(extra: &mut serde_json::Value, key: &str) {
    if let Some(seeds) = extra.get_mut("per_seed_report").and_then(|v| v.as_array_mut()) {
        for s in seeds {
            if let Some(o) = s.as_object_mut() {
                o.remove(key);
            }
        }
    }
    if extra.is_null() {
        *extra = serde_json::json!({});
    }
}
