//! The one table loop: data, teachers (trained once into the cache, or given), rows × seeds,
//! resume, `results.json`/`results.md`, the curves and the task's pictures.
//!
//! A table's task (classification, segmentation, detection) is a [`Task`]: it opens the data,
//! builds the nets, loaders, supervised loss and evaluator, and scores a finished network with
//! its final protocol. Everything else — which teachers to train and when, the teacher cache
//! and the teachers' output caches, the row and seed folders, resuming, the method registry,
//! the report columns and plots, the table itself — is written here once, so a new task or
//! table needs no change to this file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kd_core::data::BatchSource;
use kd_core::dist;
use kd_core::distill::{Distiller, TaskLoss, Teacher, TeacherCache};
use kd_core::models::Model;
use kd_core::train::{fit_into, Evaluator, InitFn, Job, TrainReport, CHECKPOINT, REPORT};
use serde::{Deserialize, Serialize};
use tch::{nn, Device};

use crate::columns::{self, RowKind};
use crate::methods::{self, MethodCtx, TeacherRef};
use crate::plot::{self, Curve};
use crate::results::{BestEpoch, Budget, RowResult, TableResult};

mod folder;
mod plan;
mod preflight;
mod pretrained;
mod sanity;
mod single;

pub use plan::{find_name, slug, Plan, RowPlan, StudentPlan, TeacherPlan, TrainOn};
pub use pretrained::{given_teacher, teacher_from};
pub use single::{dense_data_key, NetClasses, PictureRows, SingleTeacherExp};

/// How this invocation runs the table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunArgs {
    /// Dataset folder, or `None` for the embedded default.
    pub data: Option<PathBuf>,
    /// Folder of unlabelled web images, or `None` for the generated pool of the `[web]` section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<PathBuf>,
    /// Number of seeds (seeds are 0..n).
    pub seeds: u64,
    /// Output folder.
    pub out: PathBuf,
    /// Device name.
    pub device: String,
    /// Continue an interrupted run in `out`.
    pub resume: bool,
    /// Memory budget (MiB) for caching a teacher's outputs over the training set when the data
    /// is not augmented at random; 0 disables the cache.
    pub teacher_cache_mb: usize,
    /// Teacher weights to use instead of training the teacher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<PathBuf>,
    /// Pretrained weights every student starts from (overrides the config's `init`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// Where the state dict sits inside `teacher` and `init` files (auto-detected otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_key: Option<String>,
    /// Distil from a given teacher even when it scores near chance.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub weak_teacher: bool,
}

#[cfg(test)]
impl RunArgs {
    /// One seed of a run on the embedded data into `out`, on the CPU, every option off.
    pub fn embedded(out: &Path) -> Self {
        RunArgs {
            data: None,
            web: None,
            seeds: 1,
            out: out.to_path_buf(),
            device: "cpu".into(),
            resume: false,
            teacher_cache_mb: 0,
            teacher: None,
            init: None,
            weights_key: None,
            weak_teacher: false,
        }
    }
}

/// A finished network scored with the task's final protocol: the table's number and what else
/// the task keeps per seed (per-class IoU, the twelve COCO numbers, ...).
pub struct Scored {
    /// The row's number for this seed.
    pub value: f64,
    /// Task-specific numbers for `results.json` (null when none).
    pub extra: serde_json::Value,
}

/// A task's experiment with what it opened, as the table shows and saves it.
pub struct Header<E> {
    /// The experiment.
    pub exp: E,
    /// What the data is, for the table header (with "— not <paper dataset>" on a stand-in).
    pub label: String,
    /// One line of sizes for the log, e.g. `"10000 train / 2000 test samples, 10 classes"`.
    pub sizes: String,
}

/// One task's part of a table. See the module docs for the split.
pub trait Task: Sized {
    /// The experiment file's schema.
    type Exp: Serialize + for<'de> Deserialize<'de>;
    /// A network description (a zoo name, a segmentation or detection config).
    type Net: Serialize + Clone;
    /// The test metric used during training.
    type Eval<'a>: Evaluator
    where
        Self: 'a;

    /// The metric's name in the table (`top1`, `mIoU`, `box AP`).
    const METRIC: &'static str;
    /// File name of the per-epoch curves.
    const CURVES: &'static str;

    /// The experiment resolved to teachers, students and rows; checks the task's own rules.
    /// `dataset` is the kind of data `--data` holds (for per-dataset paper numbers).
    fn plan(exp: &Self::Exp, args: &RunArgs) -> Result<Plan<Self::Net>>;
    /// Opens the data of `exp` for this invocation.
    fn open(exp: Self::Exp, plan: &Plan<Self::Net>, args: &RunArgs) -> Result<Self>;
    /// The experiment and what the opened data is.
    fn header(&self) -> &Header<Self::Exp>;
    /// What identifies the training data and its handling (augmentation, task loss) for the
    /// teacher cache; the loop adds the teacher's network, recipe, training method and seed.
    fn data_key(&self) -> Result<String>;
    /// Builds `net` under `p`.
    fn build_net(&self, net: &Self::Net, p: &nn::Path<'_>) -> kd_core::Result<Box<dyn Model>>;
    /// Training and test batches for a recipe's batch size and a seed.
    fn loaders(
        &self,
        batch: usize,
        seed: u64,
        on: TrainOn,
    ) -> Result<(Box<dyn BatchSource>, Box<dyn BatchSource>)>;
    /// Size of the training set rows on `on` train on.
    fn train_len(&self, on: TrainOn) -> usize;
    /// Size of the evaluation set.
    fn test_len(&self) -> usize;
    /// The name of the training set of rows on `on` (`Some`) or of the evaluation set
    /// (`None`) for errors, e.g. `"cityscapes/train"`.
    fn split_name(&self, on: Option<TrainOn>) -> String {
        match on {
            Some(TrainOn::Original) => "the training split".into(),
            Some(TrainOn::Web) => "the web pool".into(),
            None => "the evaluation split".into(),
        }
    }
    /// The largest input `[C, H, W]` one training sample of rows on `on` feeds the network
    /// (after cropping and padding), for the memory estimate.
    fn train_input(&self, on: TrainOn) -> [i64; 3];
    /// The test metric for training curves.
    fn evaluator(&self) -> Result<Self::Eval<'_>>;
    /// The supervised distiller (teachers and the no-KD row).
    fn supervised(&self) -> Result<Box<dyn Distiller>>;
    /// The supervised loss that feature methods add their terms to.
    fn task_loss(&self) -> Result<Box<dyn TaskLoss>>;
    /// The batches a teacher's outputs are cached over for rows on `on`, and the batch size of
    /// that pass, when training inputs never change (`None`: no cache).
    fn cache_source(&self, on: TrainOn) -> Result<Option<(Box<dyn BatchSource>, usize)>>;
    /// A hook on the fresh student store before training (e.g. copying the teacher's neck and
    /// head), for rows with `init_student`.
    fn init<'a>(&'a self, row: &'a RowPlan, teacher: &'a Teacher) -> Result<Option<Box<InitFn<'a>>>> {
        if row.init_student {
            bail!(
                "row {:?}: init_student is not supported by this table's task",
                row.label
            );
        }
        let _ = teacher;
        Ok(None)
    }
    /// A frozen network (a teacher) scored with the final protocol.
    fn score(&self, net: &dyn Model, device: Device) -> Result<Scored>;

    /// How the evaluations made during training (by [`Task::evaluator`], every `eval_every`
    /// epochs and after the last: each row's best epoch is the best of them) differ from the
    /// final protocol of [`Task::score`] and [`Task::score_row`], as a phrase for the table's
    /// note (`"whole-image inference (...)"`); `None`, the default, when they are that
    /// protocol. Top-1 (classification, ImageNet) and box AP (detection) evaluate during
    /// training exactly as at the end, and their final number is the last of those
    /// evaluations; segmentation evaluates whole images during training, which is its final
    /// protocol only when the table's inference mode is whole-image.
    fn per_epoch_protocol(&self) -> Option<String> {
        None
    }

    /// The score of guessing, in the table's unit (default: 100 / classes, as top-1 and mIoU
    /// of a constant prediction are at most that); a given teacher scoring near it stops the run.
    fn chance(&self, net: &dyn Model) -> f64 {
        100.0 / net.num_classes().max(1) as f64
    }

    /// Where pretrained weights (`init`) go in this task's networks, as a variable-name prefix
    /// (`"backbone."`); `""` loads into the whole network.
    fn pretrained_prefix(&self) -> &'static str {
        ""
    }
    /// A row's finished seed in `dir` scored with the final protocol; `eval` is the evaluator
    /// that trained it (holding its last evaluation), `report` its training report.
    fn score_row(
        &self,
        dir: &Path,
        student: &Self::Net,
        report: &TrainReport,
        eval: &Self::Eval<'_>,
        device: Device,
    ) -> Result<Scored>;
    /// Adds what the task summarises over a row's seeds to its `extra` (e.g. class means).
    fn row_extra(
        &self,
        row: &RowPlan,
        scored: &[Scored],
        reports: &[TrainReport],
        extra: &mut serde_json::Value,
    ) {
        let _ = (row, scored, reports, extra);
    }
    /// Draws the task's pictures of the finished table in `out`.
    fn pictures(
        &self,
        plan: &Plan<Self::Net>,
        out: &Path,
        reports: &[Vec<TrainReport>],
        device: Device,
    ) -> Result<()>;
    /// A summary of extra data the table used (the web pool), for `results.json`.
    fn data_summary(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Weights file of a trained network inside its folder.
pub const WEIGHTS: &str = "student.safetensors";
/// The teacher's weights inside its cache folder.
const TEACHER_WEIGHTS: &str = "teacher.safetensors";

/// The folder of one row's seed.
pub fn row_dir(out: &Path, row: &RowPlan, seed: u64) -> PathBuf {
    out.join(slug(&row.label)).join(format!("seed{seed}"))
}

/// A teacher ready to distil from.
struct Ready {
    teacher: Teacher,
    /// Its cache folder, when trained here.
    dir: Option<PathBuf>,
    /// Its training report, when trained here.
    report: Option<TrainReport>,
    /// Its outputs over the training set of rows on each kind of data.
    caches: Vec<(TrainOn, TeacherCache)>,
}

/// Parses the experiment at `path`, runs the table and returns it.
pub fn reproduce<T: Task>(path: &Path, text: &str, args: RunArgs, seeds_given: bool) -> Result<TableResult> {
    let exp: T::Exp = kd_core::config::parse(path, text)?;
    let plan = T::plan(&exp, &args).with_context(|| path.display().to_string())?;
    if let Some(w) = &args.web {
        if !plan.rows.iter().any(|r| r.train_on == TrainOn::Web) {
            bail!(
                "--web {}: table {:?} has no row that trains on a web pool",
                w.display(),
                plan.table
            );
        }
    }
    plan.check_recipes(path)?;
    let args = RunArgs {
        seeds: if seeds_given {
            args.seeds
        } else {
            plan.seeds.unwrap_or(args.seeds)
        },
        ..args
    };
    run::<T>(path, exp, plan, &args)
}

/// Runs the whole table of the experiment file `file`.
fn run<T: Task>(file: &Path, exp: T::Exp, plan: Plan<T::Net>, args: &RunArgs) -> Result<TableResult> {
    let device = kd_core::device::parse(&args.device)?;
    let needed: Vec<bool> = (0..plan.teachers.len()).map(|t| plan.teacher_needed(t)).collect();
    if let Some(file) = &args.teacher {
        if needed.iter().filter(|n| **n).count() != 1 {
            bail!(
                "--teacher {}: table {:?} uses {} teachers; --teacher replaces a table's only teacher",
                file.display(),
                plan.table,
                needed.iter().filter(|n| **n).count()
            );
        }
    }
    // The run folder is rank 0's: in a data-parallel run the other ranks never touch it.
    on_writer(|| folder::claim(args))?;
    let task =
        T::open(exp, &plan, args).with_context(|| format!("opening the data of {}", file.display()))?;
    preflight::check(&task, &plan, args, file, &needed, device)?;
    let head = task.header();
    on_writer(|| {
        let config = folder::resolved_config(args, &head.label, &head.exp)?;
        // Written before the first teacher trains, so a run killed at any point can be resumed;
        // a run that fails before any row trained leaves the folder as it found it.
        folder::write_config(args, &config)
    })?;
    let result = train_table(&task, &plan, args, &needed, device);
    if dist::is_writer() && result.is_err() && !args.resume {
        folder::release_if_unused(args);
    }
    result
}

/// Runs `f` on rank 0 alone (the others wait) and gives every rank its outcome: when rank 0's
/// check fails, every rank stops with its message instead of the others reporting that rank 0
/// went away. Alone, `f()`.
fn on_writer(f: impl FnOnce() -> Result<()>) -> Result<()> {
    if dist::world().is_none() {
        return f();
    }
    let outcome = if dist::is_writer() { dist::alone(f) } else { Ok(()) };
    let message = match &outcome {
        Ok(()) => Vec::new(),
        Err(e) => std::iter::once(b'!')
            .chain(format!("{e:#}").into_bytes())
            .collect(),
    };
    let shared = dist::share_bytes(message)?;
    match (outcome, shared.split_first()) {
        (Err(e), _) => Err(e),
        (Ok(()), Some((_, text))) => bail!("{}", String::from_utf8_lossy(text)),
        (Ok(()), None) => Ok(()),
    }
}

/// Trains and scores the teachers and rows of an opened, checked table into its run folder.
fn train_table<T: Task>(
    task: &T,
    plan: &Plan<T::Net>,
    args: &RunArgs,
    needed: &[bool],
    device: Device,
) -> Result<TableResult> {
    let head = task.header();
    say!(
        "==> {} ({} scale) on {}: {}, device {device:?}; writing {}",
        plan.table,
        plan.scale,
        head.label,
        head.sizes,
        args.out.display()
    );
    let eval = task.evaluator()?;
    let seeds: Vec<u64> = (0..args.seeds).collect();
    let mut ready: Vec<Option<Ready>> = plan.teachers.iter().map(|_| None).collect();
    let mut teacher_scores: Vec<Vec<Scored>> = plan.teachers.iter().map(|_| Vec::new()).collect();
    let mut teacher_reports: Vec<Vec<TrainReport>> = plan.teachers.iter().map(|_| Vec::new()).collect();
    let mut row_scores: Vec<Vec<Scored>> = plan.rows.iter().map(|_| Vec::new()).collect();
    let mut row_reports: Vec<Vec<TrainReport>> = plan.rows.iter().map(|_| Vec::new()).collect();
    let mut teacher_chance: Vec<f64> = plan.teachers.iter().map(|_| 0.0).collect();
    for &seed in &seeds {
        for (i, t) in plan.teachers.iter().enumerate() {
            let given = args.teacher.is_some();
            if !needed[i] || ((t.shared || given) && ready[i].is_some()) {
                continue;
            }
            let teacher_seed = if t.shared { 0 } else { seed };
            let mut r = ensure_teacher(task, t, teacher_seed, args, device)?;
            // Scoring, the table and the pictures are rank 0's; the others go on training.
            let scored = if dist::is_writer() {
                dist::alone(|| task.score(r.teacher.model(), device))?
            } else {
                Scored {
                    value: f64::NAN,
                    extra: serde_json::Value::Null,
                }
            };
            say!("    {}: {} {:.2}", t.label, T::METRIC, scored.value);
            teacher_chance[i] = task.chance(r.teacher.model());
            if let (Some(file), false) = (&args.teacher, args.weak_teacher) {
                let net = r.teacher.model();
                on_writer(|| {
                    pretrained::check_above_chance(
                        file,
                        T::METRIC,
                        scored.value,
                        task.chance(net),
                        net.num_classes(),
                    )
                })?;
            }
            for on in [TrainOn::Original, TrainOn::Web] {
                let distils = plan
                    .rows
                    .iter()
                    .any(|row| row.teacher == i && row.train_on == on && row.method.needs_teacher());
                if distils && args.teacher_cache_mb > 0 {
                    if let Some(c) =
                        output_cache(task, &r.teacher, &t.name, on, args.teacher_cache_mb, device)?
                    {
                        r.caches.push((on, c));
                    }
                }
            }
            if let Some(rep) = &r.report {
                teacher_reports[i].push(rep.clone());
            }
            teacher_scores[i].push(scored);
            ready[i] = Some(r);
        }
        for (i, row) in plan.rows.iter().enumerate() {
            let dir = row_dir(&args.out, row, seed);
            let student = &plan.students[row.student];
            // The row's teacher whenever it is trained: the trainer runs it only for methods
            // that need it, and a detector row may start from its weights either way.
            let teacher = ready[row.teacher].as_ref();
            let t_name = &plan.teachers[row.teacher].name;
            let report = train_row(
                task,
                row,
                student,
                teacher.map(|t| (t, t_name.as_str())),
                &eval,
                seed,
                device,
                &dir,
                args,
            )?;
            if !dist::is_writer() {
                continue;
            }
            let scored = dist::alone(|| task.score_row(&dir, &student.net, &report, &eval, device))?;
            say!("    {} seed {seed}: {} {:.2}", row.label, T::METRIC, scored.value);
            row_reports[i].push(report);
            row_scores[i].push(scored);
        }
    }

    if !dist::is_writer() {
        return Ok(TableResult::written_elsewhere(
            &plan.table,
            &head.label,
            &plan.scale,
            seeds,
        ));
    }
    dist::alone(|| {
        assemble(
            task,
            plan,
            args,
            needed,
            seeds,
            teacher_scores,
            teacher_reports,
            row_scores,
            row_reports,
            teacher_chance,
            device,
        )
    })
}

/// The table of a finished run: rows, warnings, `results.*`, curves and pictures (rank 0).
#[allow(clippy::too_many_arguments)]
fn assemble<T: Task>(
    task: &T,
    plan: &Plan<T::Net>,
    args: &RunArgs,
    needed: &[bool],
    seeds: Vec<u64>,
    teacher_scores: Vec<Vec<Scored>>,
    teacher_reports: Vec<Vec<TrainReport>>,
    row_scores: Vec<Vec<Scored>>,
    row_reports: Vec<Vec<TrainReport>>,
    teacher_chance: Vec<f64>,
    device: Device,
) -> Result<TableResult> {
    let head = task.header();
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    let mut labelled: Vec<(String, &[TrainReport])> = Vec::new();
    let row_means: Vec<f64> = row_scores
        .iter()
        .map(|s| crate::results::mean_std(&s.iter().map(|x| x.value).collect::<Vec<_>>()).0)
        .collect();
    let mut warnings = Vec::new();
    for (i, t) in plan.teachers.iter().enumerate() {
        if !needed[i] {
            continue;
        }
        let values: Vec<f64> = teacher_scores[i].iter().map(|s| s.value).collect();
        let standing = sanity::Standing {
            mean: crate::results::mean_std(&values).0,
            chance: teacher_chance[i],
        };
        let found = sanity::teacher_warnings(plan, i, &standing, &row_means, T::METRIC);
        for w in &found {
            say!("warning: {w}");
        }
        let label = match &args.teacher {
            Some(file) => format!("{} (given: {})", t.label, file.display()),
            None => t.label.clone(),
        };
        let reports = &teacher_reports[i];
        let mut r = RowResult::new(
            &label,
            T::METRIC,
            teacher_scores[i].iter().map(|s| s.value).collect(),
            t.paper,
        );
        r.best = BestEpoch::of(reports);
        r.budget = Budget::of(reports);
        r.extra = per_seed_extra(reports);
        if let [one] = teacher_scores[i].as_slice() {
            merge(&mut r.extra, &one.extra);
        }
        r.columns = columns::values(&plan.columns, RowKind::Teacher, reports, &[]);
        if !found.is_empty() {
            r.teacher_warning = Some(found.join("; "));
        }
        warnings.extend(found);
        rows.push(r);
        if !reports.is_empty() {
            curves.push(mean_curve(&t.label, reports));
            labelled.push((t.label.clone(), reports));
        }
    }
    for (i, row) in plan.rows.iter().enumerate() {
        let reports = &row_reports[i];
        let mut r = RowResult::new(
            &row.label,
            T::METRIC,
            row_scores[i].iter().map(|s| s.value).collect(),
            row.paper,
        );
        r.best = BestEpoch::of(reports);
        r.budget = Budget::of(reports);
        r.extra = per_seed_extra(reports);
        task.row_extra(row, &row_scores[i], reports, &mut r.extra);
        let teacher: &[TrainReport] = if row.method.needs_teacher() {
            &teacher_reports[row.teacher]
        } else {
            &[]
        };
        r.columns = columns::values(&plan.columns, RowKind::Student, reports, teacher);
        rows.push(r);
        curves.push(mean_curve(&row.label, reports));
        labelled.push((row.label.clone(), reports));
    }
    for reference in &plan.references {
        rows.push(RowResult::reference(&reference.label, T::METRIC, reference.paper));
    }
    // The headline is the final epoch's; the best epoch is shown beside it, and the note says
    // which evaluations it is the best of.
    let with_best = rows.iter().any(|r| r.best.is_some());
    let differs = task.per_epoch_protocol();
    let table = TableResult {
        table: plan.table.clone(),
        dataset: head.label.clone(),
        scale: plan.scale.clone(),
        seeds,
        rows,
        columns: columns::heads(&plan.columns),
        web: task.data_summary(),
        warnings,
        best_note: if with_best {
            crate::results::best_note(T::METRIC, differs.as_deref())
        } else {
            String::new()
        },
        best_same_protocol: with_best.then_some(differs.is_none()),
    };
    table.write(&args.out)?;
    let png = args.out.join(T::CURVES);
    let title = format!(
        "{}: {} on the evaluation set per epoch (mean over seeds)",
        plan.table,
        T::METRIC
    );
    plot::warn_if_not_drawn(
        &png,
        plot::curves(&png, &title, "epoch", &format!("{} %", T::METRIC), &curves),
    );
    for spec in &plan.plots {
        let curves: Vec<Curve> = labelled
            .iter()
            .map(|(label, reports)| columns::report_curve(label, reports, spec))
            .filter(|c| !c.points.is_empty())
            .collect();
        let png = args.out.join(&spec.file);
        plot::warn_if_not_drawn(
            &png,
            plot::curves(
                &png,
                &spec.title,
                &spec.x_label,
                &format!("{} %", T::METRIC),
                &curves,
            ),
        );
    }
    if let Err(e) = task.pictures(plan, &args.out, &row_reports, device) {
        say!(
            "warning: the pictures of {} were not drawn: {e:#}",
            args.out.display()
        );
    }
    Ok(table)
}

/// Adds the keys of `more` (an object) to `extra`.
fn merge(extra: &mut serde_json::Value, more: &serde_json::Value) {
    if let serde_json::Value::Object(m) = more {
        if extra.is_null() {
            *extra = serde_json::json!({});
        }
        for (k, v) in m {
            extra[k] = v.clone();
        }
    }
}

/// The teacher `t` of `seed`: the given weights, or trained (resumably) into the cache first
/// unless a finished one is cached there.
fn ensure_teacher<T: Task>(
    task: &T,
    t: &TeacherPlan<T::Net>,
    seed: u64,
    args: &RunArgs,
    device: Device,
) -> Result<Ready> {
    if let Some(file) = &args.teacher {
        let key = args.weights_key.as_deref();
        let teacher = pretrained::given_teacher(|p| task.build_net(&t.net, p), file, key, device)?;
        return Ok(Ready {
            teacher,
            dir: None,
            report: None,
            caches: Vec::new(),
        });
    }
    pretrained::check_exists(&t.label, t.init.as_deref())?;
    let (train, test) = task.loaders(t.train.batch_size, seed, TrainOn::Original)?;
    // The recipe as it runs on this data: a `min_updates` floor already met changes nothing,
    // so such a teacher keeps the key (and the cached weights) it had without one.
    let recipe = t.train.resolved(t.train.steps_per_epoch_on(train.as_ref()));
    let key = teacher_key(t, &recipe, &task.data_key()?, seed)?;
    let dir = crate::cache::teacher_dir(&key);
    // Held until the teacher is finished (or found finished): a concurrent run of the same
    // table waits here instead of training the same teacher a second time.
    let _lock = if dist::is_writer() {
        Some(crate::cache::lock_entry(&dir)?)
    } else {
        None
    };
    let report_path = dir.join(REPORT);
    let report = if dist::is_file_shared(&report_path)? {
        say!("    {} seed {seed}: cached at {}", t.label, dir.display());
        kd_core::train::read_report_shared(&report_path)?
    } else {
        say!(
            "    {} seed {seed}: training (cached afterwards at {})",
            t.label,
            dir.display()
        );
        let eval = task.evaluator()?;
        let n_train = task.train_len(TrainOn::Original);
        let factor = recipe.epochs as f64 / t.train.epochs.max(1) as f64;
        let supervised = || task.supervised();
        let init = t.init.as_deref().map(|f| {
            pretrained::init_from(f, task.pretrained_prefix(), args.weights_key.as_deref(), &t.label)
        });
        let job = Job {
            train: &recipe,
            seed,
            device,
            teacher: None,
            teacher_cache: None,
            train_data: train.as_ref(),
            test_data: test.as_ref(),
            evaluator: &eval,
            resume: true,
            label: &t.name,
            init: init.as_deref(),
        };
        let report = train_job_into(
            &job,
            |p| task.build_net(&t.net, p),
            |_, _| methods::teacher_distiller(&t.method.with_epochs_scaled(factor), &supervised, n_train),
            &dir,
            TEACHER_WEIGHTS,
        )?;
        if dist::is_writer() {
            let _ = std::fs::remove_file(dir.join(CHECKPOINT));
            let _ = std::fs::remove_file(dir.join(kd_core::train::BEST));
        }
        report
    };
    let weights = dir.join(TEACHER_WEIGHTS);
    let teacher = load_teacher(|p| task.build_net(&t.net, p), &weights, device)
        .with_context(|| format!("loading the teacher from {}", weights.display()))?;
    Ok(Ready {
        teacher,
        dir: Some(dir),
        report: Some(report),
        caches: Vec::new(),
    })
}

/// The teacher in `weights` on every rank: rank 0 reads the file and the others receive its
/// weights, so the ranks need not share the cache folder.
fn load_teacher(
    build: impl FnOnce(&nn::Path<'_>) -> kd_core::Result<Box<dyn Model>>,
    weights: &Path,
    device: Device,
) -> kd_core::Result<Teacher> {
    if dist::world().is_none() {
        return Teacher::load_built(build, weights, device);
    }
    let teacher = if dist::is_writer() {
        Teacher::load_built(build, weights, device)?
    } else {
        let vs = nn::VarStore::new(device);
        let model = build(&vs.root())?;
        Teacher::from_parts(vs, model)
    };
    dist::broadcast_vars(&kd_core::distill::sorted_vars(teacher.var_store()))?;
    Ok(teacher)
}

/// The teacher cache key: what decides the weights (network, recipe, training method when not
/// plain, the task's data key, the seed); the label, the paper number and whether the teacher
/// is shared do not.
/// `recipe` is the teacher's recipe resolved for the data ([`TrainConfig::resolved`]).
fn teacher_key<N: Serialize>(
    t: &TeacherPlan<N>,
    recipe: &kd_core::train::TrainConfig,
    data_key: &str,
    seed: u64,
) -> Result<String> {
    let method = if t.method.is_plain() {
        String::new()
    } else {
        toml::to_string(&t.method)?
    };
    // The paper's GPU layout is a note for the reader: it decides no weight; alone,
    // synchronised BatchNorm is per-process BatchNorm.
    let world = dist::world_size();
    let norm = match recipe.norm {
        kd_core::models::NormMode::Sync if world == 1 => kd_core::models::NormMode::PerRank,
        other => other,
    };
    let recipe = kd_core::train::TrainConfig {
        layout: None,
        norm,
        ..recipe.clone()
    };
    let (net, train, seed) = (
        toml::to_string(&Wrapped { net: &t.net })?,
        toml::to_string(&recipe)?,
        seed.to_string(),
    );
    let mut parts: Vec<&str> = vec![&net, &train, &method, data_key, &seed];
    // A pretrained start is part of the key only when there is one, so keys of teachers
    // trained from scratch are the same as before pretrained starts existed.
    let init = pretrained::key_part(t.init.as_deref())?;
    if !init.is_empty() {
        parts.push(&init);
    }
    // Processes split the batch (per-rank statistics and draws), so N > 1 is another teacher;
    // single-process keys are as they always were.
    let processes = format!("processes={world}");
    if world > 1 {
        parts.push(&processes);
    }
    Ok(crate::cache::key(&parts))
}

/// A network description as a TOML document (a bare string or table needs a key).
#[derive(Serialize)]
struct Wrapped<'a, N> {
    net: &'a N,
}

/// The teacher's outputs over the training set of rows on `on`, when the task allows it and
/// they fit in `budget_mb` MiB.
fn output_cache<T: Task>(
    task: &T,
    teacher: &Teacher,
    name: &str,
    on: TrainOn,
    budget_mb: usize,
    device: Device,
) -> Result<Option<TeacherCache>> {
    let Some((source, batch)) = task.cache_source(on)? else {
        return Ok(None);
    };
    let started = std::time::Instant::now();
    let cache = TeacherCache::build(teacher.model(), source.as_ref(), device, batch, budget_mb << 20)?;
    if let Some(c) = &cache {
        say!(
            "    {name}: outputs over {} cached ({} MiB, {:.1}s)",
            source.name(),
            c.bytes() >> 20,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(cache)
}

/// Trains (or, with `resume`, reloads) one row's student of one seed into `dir`.
#[allow(clippy::too_many_arguments)]
fn train_row<T: Task>(
    task: &T,
    row: &RowPlan,
    student: &StudentPlan<T::Net>,
    teacher: Option<(&Ready, &str)>,
    eval: &T::Eval<'_>,
    seed: u64,
    device: Device,
    dir: &Path,
    args: &RunArgs,
) -> Result<TrainReport> {
    let (train, test) = task.loaders(student.train.batch_size, seed, row.train_on)?;
    let cache = teacher.and_then(|(t, _)| {
        t.caches
            .iter()
            .find(|(on, _)| *on == row.train_on)
            .map(|(_, c)| c)
    });
    let from_teacher = match teacher {
        Some((t, _)) => task.init(row, &t.teacher)?,
        None if row.init_student => bail!("row {:?}: init_student needs a teacher", row.label),
        None => None,
    };
    let pretrained = args.init.as_deref().or(student.init.as_deref());
    pretrained::check_exists(&row.label, pretrained)?;
    let pretrained = pretrained.map(|f| {
        pretrained::init_from(
            f,
            task.pretrained_prefix(),
            args.weights_key.as_deref(),
            &row.label,
        )
    });
    let init = pretrained::chain(pretrained, from_teacher);
    let supervised = || task.supervised();
    let task_loss = || task.task_loss();
    let n_train = task.train_len(row.train_on);
    // On data too small for the recipe's epochs to give its `min_updates`, the trainer runs
    // more epochs; lengths the method counts in epochs stretch with them.
    let method = row.method.with_epochs_scaled(
        student
            .train
            .epoch_factor(student.train.steps_per_epoch_on(train.as_ref())),
    );
    let job = Job {
        train: &student.train,
        seed,
        device,
        teacher: teacher.map(|(t, _)| t.teacher.model()),
        teacher_cache: cache,
        train_data: train.as_ref(),
        test_data: test.as_ref(),
        evaluator: eval,
        resume: args.resume,
        label: &row.label,
        init: init.as_deref(),
    };
    train_job_into(
        &job,
        |p| task.build_net(&student.net, p),
        |aux, s| {
            let ctx = MethodCtx {
                aux,
                student: s,
                teacher: teacher.map(|(t, name)| TeacherRef {
                    name,
                    teacher: &t.teacher,
                    dir: t.dir.as_ref(),
                }),
                supervised: &supervised,
                task_loss: &task_loss,
                n_train,
                seed,
            };
            methods::build(&method, &ctx)
        },
        dir,
        WEIGHTS,
    )
}

/// [`fit_into`] with the run's label and seed on its errors.
fn train_job_into(
    job: &Job<'_>,
    model: impl FnOnce(&nn::Path<'_>) -> kd_core::Result<Box<dyn Model>>,
    build: impl FnOnce(&nn::Path<'_>, &dyn Model) -> Result<Box<dyn Distiller>>,
    dir: &Path,
    weights: &str,
) -> Result<TrainReport> {
    let build = |aux: &nn::Path<'_>, s: &dyn Model| {
        build(aux, s).map_err(|e| kd_core::KdError::invalid(format!("{e:#}")))
    };
    fit_into(job, model, build, dir, weights).with_context(|| format!("{}, seed {}", job.label, job.seed))
}

/// The distillers' per-seed reports as a row's `extra`, or null when they report nothing.
pub fn per_seed_extra(reports: &[TrainReport]) -> serde_json::Value {
    let extras: Vec<&serde_json::Value> = reports
        .iter()
        .map(|r| &r.distiller)
        .filter(|v| !v.is_null())
        .collect();
    if extras.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::json!({ "per_seed_report": extras })
    }
}

/// Mean test-metric curve over seeds (epochs where every seed was evaluated).
pub fn mean_curve(label: &str, reports: &[TrainReport]) -> Curve {
    let mut points = Vec::new();
    if let Some(first) = reports.first() {
        for (e, rec) in first.history.iter().enumerate() {
            let vals: Vec<f64> = reports
                .iter()
                .filter_map(|r| r.history.get(e).and_then(|h| h.test_metric))
                .collect();
            if rec.test_metric.is_some() && vals.len() == reports.len() {
                points.push(((e + 1) as f64, vals.iter().sum::<f64>() / vals.len() as f64));
            }
        }
    }
    Curve::new(label, points)
}

#[cfg(test)]
mod tests {
    use kd_core::train::TrainConfig;

    use crate::methods::TeacherMethod;

    use super::*;

    fn teacher() -> TeacherPlan<String> {
        TeacherPlan {
            name: "teacher".into(),
            label: "teacher (resnet8)".into(),
            net: "resnet8".into(),
            train: TrainConfig::sgd_cosine(2, 32, 0.05),
            method: TeacherMethod::None,
            shared: false,
            paper: None,
            always_shown: false,
            init: None,
            at: "[teacher]".into(),
        }
    }

    /// Labels, paper numbers and sharing leave the cache key alone; the network, the recipe,
    /// the training method, the data, the seed and a pretrained start change it.
    #[test]
    fn the_cache_key_covers_what_decides_the_weights() {
        let t = teacher();
        let key = |t: &TeacherPlan<String>, data: &str, seed| teacher_key(t, &t.train, data, seed).unwrap();
        let base = key(&t, "data", 0);
        let relabelled = TeacherPlan {
            label: "x".into(),
            paper: Some(1.0),
            shared: true,
            always_shown: true,
            ..t.clone()
        };
        assert_eq!(key(&relabelled, "data", 0), base);
        let selfreg = TeacherPlan {
            method: TeacherMethod::Selfreg(kd_selfreg::TeacherConfig::default()),
            ..t.clone()
        };
        assert_ne!(key(&selfreg, "data", 0), base);
        let other = TeacherPlan {
            net: "resnet14".into(),
            ..t.clone()
        };
        assert_ne!(key(&other, "data", 0), base);
        let longer = TeacherPlan {
            train: TrainConfig::sgd_cosine(3, 32, 0.05),
            ..t.clone()
        };
        assert_ne!(key(&longer, "data", 0), base);
        assert_ne!(key(&t, "other data", 0), base);
        assert_ne!(key(&t, "data", 1), base);
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.pth"), dir.path().join("b.pth"));
        std::fs::write(&a, b"12345").unwrap();
        std::fs::write(&b, b"123456").unwrap();
        let from = |p: &Path| TeacherPlan {
            init: Some(p.to_path_buf()),
            ..t.clone()
        };
        assert_ne!(key(&from(&a), "data", 0), base);
        assert_ne!(key(&from(&a), "data", 0), key(&from(&b), "data", 0));
    }
}
