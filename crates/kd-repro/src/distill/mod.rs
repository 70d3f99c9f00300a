//! `kd distill` and `kd train`: one run on the user's own pair and data, outside any table.
//!
//! Most users come with their own teacher, student and data rather than a paper's table. A
//! run is described by flags or a small TOML file (`--config`), resolved against the table of
//! its task (`tasks`), and executed by the one table loop as a one-row table, so a run gets
//! everything a table row gets: run-folder rules and `--resume`, the teacher's strict load and
//! its near-chance check, data-parallel training, checkpoints that survive a NaN, and the
//! curves. On top, it writes what a single run is for: the trained student as one file (this
//! project's names, or PyTorch's with `--naming pytorch`), the log of every epoch, and the
//! resolved description (`run.toml`) that runs the same job again.

mod opts;
mod spec;
mod tasks;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kd_core::io::checkpoint;
use kd_core::train::EPOCH_LOG;

use crate::convert::Naming;

pub use spec::Job;
use spec::{NetSpec, Resolved, RunSpec, TeacherSpec};
pub use tasks::TaskKind;

/// The resolved description saved in the run folder.
pub const RUN_FILE: &str = "run.toml";
/// The trained student (seed 0) at the top of the run folder.
pub const STUDENT_FILE: &str = "student.safetensors";
/// Every epoch of every seed, one JSON object per line.
pub const LOG_FILE: &str = "log.jsonl";

/// Arguments of `kd distill` (and, without the teacher and method, `kd train`).
#[derive(clap::Args, Debug)]
pub struct DistillArgs {
    /// The task: classification, segmentation or detection.
    #[arg(long, value_enum)]
    pub task: Option<TaskKind>,
    /// Dataset folder: CIFAR-10/100 binary, IDX (MNIST-style) or an ImageFolder root (`train/`,
    /// `val/`) for classification; a Cityscapes root (`leftImg8bit/`, `gtFine/`); a COCO root
    /// (`annotations/`, `train2017/`, `val2017/`). Without it, the task's embedded or
    /// generated data.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The teacher's weights: a safetensors file (a run's `student.safetensors` names its own
    /// network) or a PyTorch `torch.save` checkpoint.
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// The teacher's network (as for `--student`), when its file does not name it.
    #[arg(long)]
    pub teacher_arch: Option<String>,
    /// `key=value` on the teacher's segmentor or detector configuration (repeatable).
    #[arg(long = "teacher-opt", value_name = "KEY=VALUE")]
    pub teacher_opts: Vec<String>,
    /// The student's network: a classification zoo name (`resnet8x4`, `resnet18`, ...),
    /// `pspnet_r18` / `deeplabv3_r50` / `fcn_r101` / ... (MMSeg's d8 segmentors) or `fcos_r50`
    /// / ... (MMDet's FCOS).
    #[arg(long)]
    pub student: Option<String>,
    /// `key=value` on the student's segmentor or detector configuration (`width=16`,
    /// `head_channels=32`, ...; repeatable).
    #[arg(long = "student-opt", value_name = "KEY=VALUE")]
    pub student_opts: Vec<String>,
    /// Pretrained weights the student starts from (a partial load into a dense model's
    /// backbone, the whole network for classifiers).
    #[arg(long)]
    pub student_init: Option<PathBuf>,
    /// The method (see --list-methods).
    #[arg(long)]
    pub method: Option<String>,
    /// `key=value` on the method's settings (repeatable; dotted keys reach nested ones).
    #[arg(long = "method-opt", value_name = "KEY=VALUE")]
    pub method_opts: Vec<String>,
    /// `key=value` on the training recipe (`grad_clip=5`, `optimizer.weight_decay=1e-4`,
    /// `max_steps_per_epoch=50`, ...; repeatable; `--epochs`, `--batch-size`, `--lr` win).
    #[arg(long = "train-opt", value_name = "KEY=VALUE")]
    pub train_opts: Vec<String>,
    /// `key=value` on the data section of the task's table (`resize=16`, `train_subset=5000`,
    /// `synth.train=100` for generated scenes, `augment.crop=[64, 64]`, ...; repeatable).
    #[arg(long = "data-opt", value_name = "KEY=VALUE")]
    pub data_opts: Vec<String>,
    /// Training epochs (default: the task table's student recipe).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Batch size (default: the recipe's).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate (default: the recipe's).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Seeds 0..N (default 1).
    #[arg(long)]
    pub seeds: Option<u64>,
    /// quick or paper: which scale of the task's table gives the defaults (default: paper with
    /// --data, quick without).
    #[arg(long)]
    pub scale: Option<String>,
    /// A run description (TOML; see the README); the flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output folder. Default: runs/<command>/<timestamp>.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue an interrupted run (needs --out).
    #[arg(long)]
    pub resume: bool,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Names in the exported student: kd (this project's) or pytorch (the original module
    /// definitions' state-dict names, with `num_batches_tracked`).
    #[arg(long, value_enum, default_value = "kd")]
    pub naming: Naming,
    /// Where the state dict sits inside the --teacher file (dotted key); auto-detected.
    #[arg(long)]
    pub weights_key: Option<String>,
    /// Distil from a teacher that scores near chance instead of stopping.
    #[arg(long)]
    pub weak_teacher: bool,
    /// Memory budget (MiB) for the teacher's outputs over un-augmented training data; 0 off.
    #[arg(long, default_value_t = 4096)]
    pub teacher_cache_mb: usize,
    /// Print the task's methods with their default settings, and exit.
    #[arg(long)]
    pub list_methods: bool,
}

/// Runs `kd distill` or `kd train`.
pub fn run(job: Job, mut a: DistillArgs) -> Result<()> {
    for p in [
        &mut a.data,
        &mut a.teacher,
        &mut a.student_init,
        &mut a.config,
        &mut a.out,
    ]
    .into_iter()
    .flatten()
    {
        *p = crate::cache::absolute(&*p);
    }
    let spec = spec_of(job, &a)?;
    if a.list_methods {
        return list_methods(&spec);
    }
    if a.resume && a.out.is_none() {
        bail!("--resume needs --out DIR pointing at the interrupted run");
    }
    if let Some(d) = &spec.data {
        if !d.is_dir() {
            bail!("--data {}: folder does not exist", d.display());
        }
    }
    if let Some(f) = &spec.student.init {
        if !f.is_file() {
            bail!("--student-init {}: file does not exist", f.display());
        }
    }
    let resolved = spec::resolve(&spec, job)?;
    let out = a.out.clone().unwrap_or_else(|| {
        crate::cache::absolute(PathBuf::from("runs").join(job.name()).join(crate::timestamp()))
    });
    let out = crate::shared_path(&out)?;
    let teacher = resolved.spec.teacher.as_ref();
    let args = crate::table::RunArgs {
        data: resolved.spec.data.clone(),
        web: None,
        seeds: resolved.spec.seeds.unwrap_or(1),
        out: out.clone(),
        device: a.device.clone(),
        resume: a.resume,
        teacher_cache_mb: a.teacher_cache_mb,
        teacher: teacher.map(|t| t.file.clone()),
        init: None,
        weights_key: teacher.and_then(|t| t.weights_key.clone()),
        weak_teacher: a.weak_teacher,
    };
    let seeds = args.seeds;
    let file = a
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("the {} flags", job.name())));
    let text = &resolved.experiment;
    use crate::table::reproduce;
    use tasks::Runner;
    let result = match resolved.runner {
        Runner::Classify => reproduce::<crate::classify::Classification>(&file, text, args, true)?,
        Runner::ImageFolder => reproduce::<crate::imagenet::ImageNet>(&file, text, args, true)?,
        Runner::Seg => reproduce::<crate::seg::Segmentation>(&file, text, args, true)?,
        Runner::Det => reproduce::<crate::det::Detection>(&file, text, args, true)?,
    };
    if !kd_core::dist::is_writer() {
        return Ok(());
    }
    let naming = a.naming;
    let files = kd_core::dist::alone(|| finish(&resolved, job, &out, seeds, naming))?;
    println!("\n{}", result.markdown());
    for f in files {
        println!("wrote {}", f.display());
    }
    println!("results, config, log and curves: {}", out.display());
    Ok(())
}

/// The run's description: the `--config` file, with the flags on top.
fn spec_of(job: Job, a: &DistillArgs) -> Result<RunSpec> {
    let mut spec: RunSpec = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            kd_core::config::parse(p, &text)?
        }
        None => RunSpec::default(),
    };
    let absolute = |p: &mut PathBuf| *p = crate::cache::absolute(&*p);
    spec.data.as_mut().map(absolute);
    spec.student.init.as_mut().map(absolute);
    if let Some(t) = spec.teacher.as_mut() {
        absolute(&mut t.file);
    }
    if let Some(t) = a.task {
        spec.task = Some(t);
    }
    if let Some(d) = &a.data {
        spec.data = Some(d.clone());
    }
    if let Some(s) = &a.scale {
        spec.scale = Some(s.clone());
    }
    if let Some(n) = a.seeds {
        spec.seeds = Some(n);
    }
    let refuse = |flag: &str, given: bool| -> Result<()> {
        if given && job == Job::Train {
            bail!("train runs the student alone: {flag} belongs to distill");
        }
        Ok(())
    };
    refuse("--teacher", a.teacher.is_some())?;
    refuse("--teacher-arch", a.teacher_arch.is_some())?;
    refuse("--teacher-opt", !a.teacher_opts.is_empty())?;
    refuse("--method", a.method.is_some())?;
    refuse("--method-opt", !a.method_opts.is_empty())?;
    refuse("--weights-key", a.weights_key.is_some())?;
    refuse("--weak-teacher", a.weak_teacher)?;
    if a.teacher.is_some()
        || a.teacher_arch.is_some()
        || !a.teacher_opts.is_empty()
        || a.weights_key.is_some()
    {
        let t = spec.teacher.get_or_insert_with(TeacherSpec::default);
        if let Some(f) = &a.teacher {
            t.file = f.clone();
        }
        if let Some(arch) = &a.teacher_arch {
            t.arch = Some(arch.clone());
        }
        opts::merge(&mut t.net, &opts::parse_pairs("--teacher-opt", &a.teacher_opts)?);
        if let Some(k) = &a.weights_key {
            t.weights_key = Some(k.clone());
        }
        if t.file.as_os_str().is_empty() {
            bail!("--teacher FILE: the teacher's weights are missing");
        }
    }
    let s: &mut NetSpec = &mut spec.student;
    if let Some(arch) = &a.student {
        s.arch = Some(arch.clone());
    }
    opts::merge(&mut s.net, &opts::parse_pairs("--student-opt", &a.student_opts)?);
    if let Some(f) = &a.student_init {
        s.init = Some(f.clone());
    }
    if let Some(m) = &a.method {
        // Another method than the file's drops the file's options.
        let same = spec
            .method
            .as_ref()
            .and_then(|t| t.get("kind"))
            .and_then(|k| k.as_str())
            == Some(m.as_str());
        if !same {
            spec.method = Some(toml::Table::from_iter([(
                "kind".to_string(),
                toml::Value::String(m.clone()),
            )]));
        }
    }
    if !a.method_opts.is_empty() {
        let Some(m) = spec.method.as_mut() else {
            bail!("--method-opt needs --method NAME");
        };
        let given = opts::parse_pairs("--method-opt", &a.method_opts)?;
        if given.contains_key("kind") {
            bail!("--method-opt kind=...: name the method with --method");
        }
        opts::merge(m, &given);
    }
    opts::merge(
        &mut spec.data_config,
        &opts::parse_pairs("--data-opt", &a.data_opts)?,
    );
    let mut train = opts::parse_pairs("--train-opt", &a.train_opts)?;
    if let Some(e) = a.epochs {
        train.insert("epochs".into(), toml::Value::Integer(e as i64));
    }
    if let Some(b) = a.batch_size {
        train.insert("batch_size".into(), toml::Value::Integer(b as i64));
    }
    if let Some(lr) = a.lr {
        let mut t = toml::Table::new();
        t.insert("lr".into(), toml::Value::Float(lr));
        opts::merge(
            &mut train,
            &toml::Table::from_iter([("lr".to_string(), toml::Value::Table(t))]),
        );
    }
    opts::merge(&mut spec.train, &train);
    Ok(spec)
}

/// `--list-methods`: every method of the run's task with the settings `--method NAME` uses.
fn list_methods(spec: &RunSpec) -> Result<()> {
    let Some(task) = spec.task else {
        bail!("--list-methods: name the task with --task");
    };
    let runner = tasks::Runner::of(task, spec.data.as_deref());
    let scale = spec
        .scale
        .clone()
        .unwrap_or_else(|| crate::tables::default_scale(spec.data.is_some()).into());
    println!(
        "methods for {} (defaults from the {} table at {scale} scale; change them with --method-opt key=value):",
        task.name(),
        runner.base_table()
    );
    for kind in runner.methods() {
        // Every setting, the ones the table leaves at their defaults too.
        let given = tasks::method_defaults(runner, &scale, kind)?;
        let parsed: crate::methods::Method = opts::from_table("method", given)?;
        let mut t = opts::to_table("method", &parsed)?;
        t.remove("kind");
        let text = toml::to_string(&t)?;
        println!("\n{kind}");
        for line in text.lines().filter(|l| !l.is_empty()) {
            println!("    {line}");
        }
    }
    Ok(())
}

/// The run's own outputs once the table loop finished: the student of each seed as one file
/// at the top of the folder, the log of every epoch, and the resolved description.
fn finish(resolved: &Resolved, job: Job, out: &Path, seeds: u64, naming: Naming) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut log = String::new();
    for seed in 0..seeds {
        let dir = out
            .join(crate::table::slug(&resolved.row))
            .join(format!("seed{seed}"));
        let src = dir.join(crate::table::WEIGHTS);
        let ckpt = checkpoint::load(&src)?;
        let tensors = naming.apply(ckpt.tensors);
        let meta = serde_json::json!({
            "kind": "student",
            "task": resolved.runner.task(),
            "arch": resolved.spec.student.arch,
            "net": resolved.student_net,
            "naming": naming.name(),
            "command": job.name(),
            "method": resolved.spec.method.as_ref().and_then(|m| m.get("kind")).and_then(|k| k.as_str()).unwrap_or("none"),
            "seed": seed,
        });
        let name = if seed == 0 {
            STUDENT_FILE.to_string()
        } else {
            format!("student-seed{seed}.safetensors")
        };
        let to = out.join(name);
        checkpoint::save(&to, &tensors, &meta)?;
        written.push(to);
        let epochs = dir.join(EPOCH_LOG);
        let text =
            std::fs::read_to_string(&epochs).with_context(|| format!("reading {}", epochs.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}: a line is not JSON", epochs.display()))?;
            v["seed"] = serde_json::json!(seed);
            log.push_str(&v.to_string());
            log.push('\n');
        }
    }
    let log_path = out.join(LOG_FILE);
    kd_core::io::write_atomic(&log_path, log.as_bytes())?;
    written.push(log_path);
    let run_path = out.join(RUN_FILE);
    let header = format!(
        "# The resolved `{}` run: every default written out. `cargo xtask {} --config {}` runs it again\n# (with another --out).\n",
        job.name(),
        job.name(),
        run_path.display()
    );
    let body = toml::to_string(&resolved.spec).context("the run as TOML")?;
    kd_core::io::write_atomic(&run_path, format!("{header}{body}").as_bytes())?;
    written.push(run_path);
    Ok(written)
}
