//! The description of one run (`--config run.toml`, or the flags alone), and its resolution
//! into the experiment of the table it borrows from.
//!
//! The resolved description is the same schema with every default written out (the method's
//! settings, the networks' configurations, the whole recipe and data section), so the
//! `run.toml` saved beside the results runs the same job again with `--config`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use super::opts;
use super::tasks::{self, Runner, TaskKind};
use crate::methods::Method;

/// One run, as a file or the flags give it. Paths are relative to the working folder.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// `classification`, `segmentation` or `detection`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskKind>,
    /// The dataset folder; without it, the embedded or generated data of the task's table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// `quick` or `paper`: which of the table's experiments gives the defaults (default: paper
    /// with `data`, quick without).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<String>,
    /// Seeds `0..seeds` (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeds: Option<u64>,
    /// The teacher (distillation only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<TeacherSpec>,
    /// The student.
    #[serde(default)]
    pub student: NetSpec,
    /// The method: `kind` and its options (distillation only; `train` runs `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Table>,
    /// Overrides of the table's student recipe (any `train` key: `epochs`, `batch_size`,
    /// `lr = { lr = 0.1 }`, `optimizer`, `grad_clip`, ...).
    #[serde(default, skip_serializing_if = "Table::is_empty")]
    pub train: Table,
    /// Overrides of the table's `[data]` section (augmentation, generated-data sizes, ...).
    #[serde(default, skip_serializing_if = "Table::is_empty")]
    pub data_config: Table,
}

/// The teacher: a weights file and the network it fills.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSpec {
    /// Safetensors or a `torch.save` checkpoint.
    pub file: PathBuf,
    /// Network name; read from the file when this project exported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Overrides of the named segmentor's or detector's configuration (`width`, ...).
    #[serde(default, skip_serializing_if = "Table::is_empty")]
    pub net: Table,
    /// Where the state dict sits inside the file (dotted key); auto-detected by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_key: Option<String>,
}

/// The student network.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSpec {
    /// Network name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Overrides of the named segmentor's or detector's configuration.
    #[serde(default, skip_serializing_if = "Table::is_empty")]
    pub net: Table,
    /// Pretrained weights it starts from (a partial load into a dense model's backbone, the
    /// whole network for classifiers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
}

/// Which command runs: distillation from a teacher, or the student alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// `distill`: a teacher and a method.
    Distill,
    /// `train`: the no-KD student.
    Train,
}

impl Job {
    /// The command's name.
    pub fn name(self) -> &'static str {
        match self {
            Job::Distill => "distill",
            Job::Train => "train",
        }
    }
}

/// A run resolved: the full description, the runner, and the experiment it runs.
pub struct Resolved {
    /// Every default written out.
    pub spec: RunSpec,
    /// The task's runner.
    pub runner: Runner,
    /// The experiment in the runner's table schema, as TOML.
    pub experiment: String,
    /// The row's label (its folder is its slug).
    pub row: String,
    /// The student's network, as the schema writes it.
    pub student_net: Value,
}

/// What a weights file exported by this project says about its network.
#[derive(Debug, Deserialize)]
struct ExportedNet {
    task: TaskKind,
    arch: String,
    #[serde(default)]
    net: Option<serde_json::Value>,
}

/// The metadata of a file this project exported, when it is one.
fn exported_net(file: &Path) -> Result<Option<ExportedNet>> {
    if file.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return Ok(None);
    }
    let meta = kd_core::io::checkpoint::read_meta(file)?;
    Ok(meta.and_then(|m| serde_json::from_value::<ExportedNet>(m).ok()))
}

/// Resolves `spec` for `job`: checks what the job needs, fills every default from the task's
/// table at the run's scale, and builds the experiment.
pub fn resolve(spec: &RunSpec, job: Job) -> Result<Resolved> {
    let Some(task) = spec.task else {
        bail!("name the task: --task classification|segmentation|detection (or task = \"...\" in --config)");
    };
    let runner = Runner::of(task, spec.data.as_deref());
    let scale = spec
        .scale
        .clone()
        .unwrap_or_else(|| crate::tables::default_scale(spec.data.is_some()).to_string());
    let mut exp = tasks::table_text(runner.base_table(), &scale)?;
    let seeds = spec.seeds.unwrap_or(1);
    if seeds == 0 {
        bail!("--seeds must be at least 1");
    }

    // The data section, then the class count a detector needs from it.
    let mut data = exp
        .remove("data")
        .and_then(|v| v.as_table().cloned())
        .unwrap_or_default();
    opts::merge(&mut data, &spec.data_config);
    let classes = if runner == Runner::Det {
        tasks::detection_classes(spec.data.as_deref(), &data)?
    } else {
        0
    };

    // The student and its recipe (the table's first student's, with the overrides).
    let Some(student_arch) = spec.student.arch.clone() else {
        bail!(
            "name the student: --student ARCH ({} networks: {})",
            task.name(),
            tasks::arch_names(task)
        );
    };
    let student_net = tasks::resolve_net(runner, "--student", &student_arch, &spec.student.net, classes)?;
    let mut train = table_student_train(&exp)?;
    // The paper's GPU layout belongs to the paper's batch; a run sets its own.
    train.remove("layout");
    train.insert("eval_every".into(), Value::Integer(1));
    rescale_milestones(&mut train, &spec.train);
    opts::merge(&mut train, &spec.train);
    // Its ranges are checked with the table's (`Plan::check_recipes`).
    let recipe: kd_core::train::TrainConfig = opts::from_table("[train]", train)?;
    let train = opts::to_table("the recipe", &recipe)?;

    // The teacher and the method.
    let (teacher, teacher_net, method) = match job {
        Job::Train => {
            if spec.teacher.is_some() {
                bail!("train runs the student alone: it takes no teacher (use distill)");
            }
            if spec
                .method
                .as_ref()
                .is_some_and(|m| m.get("kind").and_then(Value::as_str) != Some("none"))
            {
                bail!("train runs the student alone: it takes no method (use distill)");
            }
            let mut none = Table::new();
            none.insert("kind".into(), Value::String("none".into()));
            (None, None, none)
        }
        Job::Distill => {
            let Some(t) = &spec.teacher else {
                bail!("distill needs the teacher's weights: --teacher FILE");
            };
            let Some(given) = &spec.method else {
                bail!(
                    "distill needs a method: --method NAME ({} methods: {})",
                    task.name(),
                    runner.methods().join(", ")
                );
            };
            let Some(kind) = given.get("kind").and_then(Value::as_str) else {
                bail!("method: no kind (--method NAME)");
            };
            let mut m = tasks::method_defaults(runner, &scale, kind)?;
            opts::merge(&mut m, given);
            let parsed: Method = opts::from_table(&format!("method {kind} (--method-opt)"), m)?;
            if !parsed.needs_teacher() {
                bail!("method {kind} with these options uses no teacher: run it with train");
            }
            let m = opts::to_table("method", &parsed)?;
            // After the method: a typo there is found without reading the teacher.
            let (t, net) = resolve_teacher(runner, t, classes)?;
            (Some(t), Some(net), m)
        }
    };

    let kind = method
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("none")
        .to_string();
    let row = match job {
        Job::Distill => format!("{student_arch} + {kind}"),
        Job::Train => format!("{student_arch} (no KD)"),
    };
    let teacher_label = match &teacher {
        Some(t) => format!("teacher ({})", t.arch.as_deref().unwrap_or("?")),
        None => "teacher (none)".into(),
    };
    // Experiments need a teacher network; a train run's is never built (no row uses it).
    let schema_teacher = teacher_net.clone().unwrap_or_else(|| student_net.clone());
    build_experiment(
        &mut exp,
        runner,
        job,
        data,
        &schema_teacher,
        &teacher_label,
        &student_net,
        spec.student.init.as_deref(),
        &train,
        &row,
        &method,
    )?;
    let experiment = toml::to_string(&exp).context("the run's experiment as TOML")?;

    let mut resolved = spec.clone();
    resolved.task = Some(task);
    resolved.scale = Some(scale);
    resolved.seeds = Some(seeds);
    resolved.teacher = teacher;
    resolved.student.arch = Some(student_arch);
    resolved.student.net = match &student_net {
        Value::Table(t) if matches!(runner, Runner::Seg | Runner::Det) => t.clone(),
        _ => Table::new(),
    };
    resolved.method = (job == Job::Distill).then_some(method);
    resolved.train = train;
    resolved.data_config = exp
        .get("data")
        .and_then(Value::as_table)
        .cloned()
        .unwrap_or_default();
    Ok(Resolved {
        spec: resolved,
        runner,
        experiment,
        row,
        student_net,
    })
}

/// A new epoch count without a new schedule keeps the recipe's shape: a step schedule's
/// milestones move with the epochs (MMDet's 1x schedule at 12 epochs steps at 8 and 11; at 6
/// epochs, at 4 and 6), each at least 1 and at most the new count.
fn rescale_milestones(recipe: &mut Table, overrides: &Table) {
    // An epoch count given is the run's length: the recipe's floor in updates (written for its
    // own data) no longer stretches it, unless the overrides set one too.
    if overrides.contains_key("epochs") && !overrides.contains_key("min_updates") {
        recipe.remove("min_updates");
    }
    let new_epochs = overrides.get("epochs").and_then(Value::as_integer);
    let old_epochs = recipe.get("epochs").and_then(Value::as_integer);
    let sets_schedule = overrides
        .get("lr")
        .and_then(Value::as_table)
        .is_some_and(|lr| lr.contains_key("schedule"));
    let (Some(new), Some(old)) = (new_epochs, old_epochs) else {
        return;
    };
    if sets_schedule || new == old || old <= 0 || new <= 0 {
        return;
    }
    let Some(Value::Table(schedule)) = recipe
        .get_mut("lr")
        .and_then(Value::as_table_mut)
        .and_then(|lr| lr.get_mut("schedule"))
    else {
        return;
    };
    let Some(Value::Array(milestones)) = schedule.get_mut("milestones") else {
        return;
    };
    for m in milestones.iter_mut() {
        if let Some(e) = m.as_integer() {
            let scaled = ((e * new) as f64 / old as f64).round() as i64;
            *m = Value::Integer(scaled.clamp(1, new));
        }
    }
}

/// The recipe of the table's student: `[student] train` or the first `[[students]]`'s.
fn table_student_train(exp: &Table) -> Result<Table> {
    let student = match exp.get("student") {
        Some(s) => s.clone(),
        None => exp
            .get("students")
            .and_then(Value::as_array)
            .and_then(|s| s.first())
            .cloned()
            .context("the table has no student")?,
    };
    student
        .get("train")
        .and_then(Value::as_table)
        .cloned()
        .context("the table's student has no recipe")
}

/// The teacher with its network named (from the flag, or the exported file's metadata) and
/// checked to be of the run's task, and its network as the schema writes it.
fn resolve_teacher(runner: Runner, t: &TeacherSpec, classes: i64) -> Result<(TeacherSpec, Value)> {
    let task = runner.task();
    if !t.file.is_file() {
        bail!("--teacher {}: file does not exist", t.file.display());
    }
    let exported = exported_net(&t.file)?;
    let mut t = t.clone();
    let mut net_overrides = t.net.clone();
    match (&t.arch, &exported) {
        (Some(_), _) => {}
        (None, Some(e)) => {
            if e.task != task {
                bail!(
                    "--teacher {}: a {} network ({}), but this run is {}",
                    t.file.display(),
                    e.task.name(),
                    e.arch,
                    task.name()
                );
            }
            t.arch = Some(e.arch.clone());
            // The file's own configuration, under any overrides given (classifiers have
            // none: their name is their configuration).
            let dense = matches!(runner, Runner::Seg | Runner::Det);
            if let (true, Some(serde_json::Value::Object(_))) = (dense, &e.net) {
                let mut from_file: Table = serde_json::from_value(e.net.clone().unwrap_or_default())
                    .with_context(|| {
                        format!("--teacher {}: the network in its metadata", t.file.display())
                    })?;
                opts::merge(&mut from_file, &net_overrides);
                net_overrides = from_file;
            }
        }
        (None, None) => bail!(
            "--teacher {}: name its network with --teacher-arch (the file does not say; {} networks: {})",
            t.file.display(),
            task.name(),
            tasks::arch_names(task)
        ),
    }
    let arch = t.arch.clone().unwrap_or_default();
    // A checkpoint of another task fails the load with long key lists; its names say it first.
    if exported.is_none() {
        let read = kd_core::io::weights::ReadOptions {
            weights_key: t.weights_key.clone(),
        };
        let w = kd_core::io::weights::read(&t.file, &read)
            .with_context(|| format!("--teacher {}", t.file.display()))?;
        if let Some((found, key)) = tasks::task_of_keys(w.tensors.iter().map(|(n, _)| n.as_str())) {
            if found != task {
                bail!(
                    "--teacher {}: holds a {} network (key {key:?}), but this run is {}",
                    t.file.display(),
                    found.name(),
                    task.name()
                );
            }
        }
    }
    let net = tasks::resolve_net(runner, "--teacher-arch", &arch, &net_overrides, classes)?;
    t.net = match &net {
        Value::Table(n) if matches!(runner, Runner::Seg | Runner::Det) => n.clone(),
        _ => Table::new(),
    };
    Ok((t, net))
}

/// Rewrites the table's experiment `exp` into the run's: its data section, the one teacher,
/// the one student and the one row; everything else of the table (its other rows, students,
/// columns, plots, references, web pool) is dropped.
#[allow(clippy::too_many_arguments)]
fn build_experiment(
    exp: &mut Table,
    runner: Runner,
    job: Job,
    data: Table,
    teacher_net: &Value,
    teacher_label: &str,
    student_net: &Value,
    init: Option<&Path>,
    train: &Table,
    row: &str,
    method: &Table,
) -> Result<()> {
    for key in [
        "rows",
        "student",
        "students",
        "teachers",
        "columns",
        "plots",
        "references",
        "web",
        "selection_plot",
        "paper_dataset",
        "seeds",
    ] {
        exp.remove(key);
    }
    exp.insert("table".into(), Value::String(job.name().into()));
    exp.insert("data".into(), Value::Table(data));
    let mut teacher = Table::new();
    teacher.insert("label".into(), Value::String(teacher_label.into()));
    teacher.insert("train".into(), Value::Table(train.clone()));
    let mut student = Table::new();
    student.insert("train".into(), Value::Table(train.clone()));
    if let Some(f) = init {
        student.insert("init".into(), Value::String(f.to_string_lossy().into_owned()));
    }
    let mut r = Table::new();
    r.insert("label".into(), Value::String(row.into()));
    r.insert("method".into(), Value::Table(method.clone()));
    match runner {
        Runner::Classify => {
            teacher.insert("arch".into(), teacher_net.clone());
            teacher.insert("shared".into(), Value::Boolean(true));
            student.insert("arch".into(), student_net.clone());
            exp.insert("student".into(), Value::Table(student));
        }
        Runner::ImageFolder | Runner::Seg | Runner::Det => {
            teacher.insert("net".into(), teacher_net.clone());
            if job == Job::Train {
                teacher.insert("shown".into(), Value::Boolean(false));
            }
            student.insert("name".into(), Value::String("student".into()));
            student.insert("net".into(), student_net.clone());
            exp.insert("students".into(), Value::Array(vec![Value::Table(student)]));
            r.insert("student".into(), Value::String("student".into()));
            // The picture shows the run's own row.
            if let Some(Value::Table(p)) = exp.get_mut("picture") {
                p.insert("rows".into(), Value::Array(vec![Value::String(row.into())]));
            }
        }
    }
    exp.insert("teacher".into(), Value::Table(teacher));
    exp.insert("rows".into(), Value::Array(vec![Value::Table(r)]));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(text: &str) -> Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn step_milestones_follow_a_new_epoch_count() {
        let base =
            "epochs = 12\nlr = { lr = 0.01, schedule = { kind = \"multistep\", milestones = [8, 11] } }";
        let mut r = recipe(base);
        rescale_milestones(&mut r, &recipe("epochs = 6"));
        assert_eq!(r["lr"]["schedule"]["milestones"], recipe("m = [4, 6]")["m"]);
        let mut r = recipe(base);
        rescale_milestones(&mut r, &recipe("epochs = 1"));
        assert_eq!(r["lr"]["schedule"]["milestones"], recipe("m = [1, 1]")["m"]);
        // A schedule of the user's own is theirs.
        let mut r = recipe(base);
        rescale_milestones(
            &mut r,
            &recipe("epochs = 6\nlr = { schedule = { kind = \"multistep\", milestones = [5] } }"),
        );
        assert_eq!(r["lr"]["schedule"]["milestones"], recipe("m = [8, 11]")["m"]);
    }
}
