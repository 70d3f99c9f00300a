//! `kd`: the tch-linked runner behind `cargo xtask`.
//!
//! xtask cannot link libtorch (it installs it), so everything that trains, evaluates or plots
//! lives here. Errors are reported as one message and a non-zero exit code; a panic is a bug.

/// `eprintln!` on the process that writes (rank 0, or alone): the other ranks of a
/// data-parallel run do the same work and would only repeat it; their errors still print.
macro_rules! say {
    ($($arg:tt)*) => {
        if kd_core::dist::is_writer() {
            eprintln!($($arg)*);
        }
    };
}

mod cache;
mod classify;
mod columns;
mod convert;
mod det;
mod distill;
mod eval;
mod imagenet;
mod methods;
mod plot;
mod results;
mod seg;
mod table;
mod tables;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kd",
    about = "kd-rs runner: reproduction tables and single runs of knowledge distillation",
    version
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a reproduction table and print it beside the paper's numbers.
    Reproduce(ReproduceArgs),
    /// Distil a teacher checkpoint into a student on your data with one method, outside any
    /// table (see --list-methods).
    Distill(distill::DistillArgs),
    /// Train a student alone (no KD) on your data: the baseline of a distill run, or a
    /// teacher for one.
    Train(distill::DistillArgs),
    /// Evaluate semantic-segmentation predictions saved in Cityscapes format (labelIds PNGs
    /// whose names contain `<city>_<seq>_<frame>`) against `gtFine` ground truth, as the official
    /// pixel-level evaluation does.
    EvalCityscapes(EvalArgs),
    /// Evaluate box detections in the COCO results format (a JSON array of {image_id,
    /// category_id, bbox: [x, y, w, h], score}) against a COCO annotation file, as pycocotools'
    /// COCOeval (iouType "bbox") does: prints its twelve summary lines.
    EvalCoco(EvalCocoArgs),
    /// Score a network with given weights (ours or a PyTorch checkpoint) on a dataset, with the
    /// reference preprocessing: top-1/top-5, mIoU or box AP.
    Eval(eval::EvalArgs),
    /// Rewrite weights as safetensors with PyTorch's state-dict names (loadable into the
    /// original module definitions) or with this project's names.
    Convert(convert::ConvertArgs),
}

#[derive(clap::Args)]
struct EvalCocoArgs {
    /// Ground truth: a COCO `instances_*.json` file.
    #[arg(long)]
    gt: PathBuf,
    /// Detections: a COCO results file.
    #[arg(long)]
    dt: PathBuf,
    /// Print the statistics (and per-category AP) as JSON instead of the summary lines.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// Folder of predictions (searched recursively).
    #[arg(long)]
    pred: PathBuf,
    /// Ground-truth folder, e.g. `gtFine/val` (searched recursively for `*_gtFine_labelIds.png`).
    #[arg(long)]
    gt: PathBuf,
    /// Also write the per-class report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ReproduceArgs {
    /// Table name (see --list).
    table: Option<String>,
    /// List the tables and exit.
    #[arg(long)]
    list: bool,
    /// Dataset folder (e.g. CIFAR-100 binary). Without it, the embedded default runs.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Folder of unlabelled web images (any size, searched recursively, resized on load) for the
    /// rows that train on a web pool. Without it, those rows use a pool generated from the
    /// original training images (see the table's [web] section).
    #[arg(long)]
    web: Option<PathBuf>,
    /// quick or paper. Default: paper with --data, quick without.
    #[arg(long)]
    scale: Option<String>,
    /// Number of seeds (seeds 0..N). Default: the table's (`seeds` in its config), else 3.
    #[arg(long)]
    seeds: Option<u64>,
    /// Output folder. Default: runs/<table>/<timestamp>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Use this experiment TOML instead of the embedded one.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue an interrupted run (needs --out).
    #[arg(long)]
    resume: bool,
    /// Memory budget (MiB) for caching each teacher's outputs over the training set, used when
    /// the data is not augmented at random (the outputs are then identical every epoch); 0
    /// disables it.
    #[arg(long, default_value_t = 4096)]
    teacher_cache_mb: usize,
    /// Use these teacher weights instead of training the table's teacher (any table that uses
    /// one teacher): safetensors as a run exports them, or a PyTorch `torch.save` checkpoint
    /// (zip or legacy; the state dict at the top level or nested, `module.` prefixes removed).
    /// The file must fill the network exactly.
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Start every student from these pretrained weights (same formats as --teacher; a partial
    /// load into the backbone of dense models, the whole network for classifiers), overriding
    /// the config's `init`.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Where the state dict sits inside --teacher / --init files, as a dotted key
    /// (`state_dict`, `model`, `ema.model`); auto-detected by default.
    #[arg(long)]
    weights_key: Option<String>,
    /// Distil from a --teacher that scores near chance on the test set instead of stopping.
    #[arg(long)]
    weak_teacher: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // `cargo xtask` runs the runner from the workspace root and names the user's folder here,
    // so that relative paths mean what they meant in the user's shell.
    if let Some(dir) = std::env::var_os("KD_RS_CWD").filter(|d| !d.is_empty()) {
        if let Err(e) = std::env::set_current_dir(&dir) {
            eprintln!("error: cannot enter {}: {e}", PathBuf::from(dir).display());
            return ExitCode::FAILURE;
        }
    }
    // A failed synchronised BatchNorm unwinds out of a forward pass with the collective's
    // error, which the trainer reports; the default hook would print it as a bug first.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.payload().is::<kd_core::models::SyncBnFailed>() {
            default_hook(info);
        }
    }));
    let result = match cli.cmd {
        Cmd::Reproduce(mut a) => join_group(&mut a.device).and_then(|()| reproduce(a)),
        Cmd::Distill(mut a) => {
            join_group(&mut a.device).and_then(|()| distill::run(distill::Job::Distill, a))
        }
        Cmd::Train(mut a) => join_group(&mut a.device).and_then(|()| distill::run(distill::Job::Train, a)),
        Cmd::EvalCityscapes(a) => eval_cityscapes(a),
        Cmd::EvalCoco(a) => eval_coco(a),
        Cmd::Eval(a) => eval::run(&a),
        Cmd::Convert(a) => convert::run(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Joins the data-parallel group the environment describes (`RANK`, `WORLD_SIZE`,
/// `MASTER_ADDR`, `MASTER_PORT`, as torchrun and `cargo xtask … --nproc N` set them) and uses
/// the intra-op thread count the launcher gave this worker (`KD_RS_THREADS`). Gloo carries CPU
/// training, NCCL CUDA training. Without the variables the process is alone, as always.
///
/// Sets `device` to the device this rank trains on when the group decides it: `cuda` and
/// `auto` (with a GPU) mean the GPU of the worker's `LOCAL_RANK`, as under torchrun, so the
/// ranks of one machine never share a GPU.
fn join_group(device: &mut String) -> Result<()> {
    if let Some(n) = std::env::var("KD_RS_THREADS").ok().filter(|v| !v.is_empty()) {
        let n: i32 = n
            .parse()
            .ok()
            .filter(|&n| n >= 1)
            .with_context(|| format!("KD_RS_THREADS={n}: a thread count of at least 1"))?;
        tch::set_num_threads(n);
    }
    let Some(rv) = kd_dist::Rendezvous::from_env()? else {
        return Ok(());
    };
    let (group, chosen) = match kd_core::device::parse(device)? {
        tch::Device::Cuda(i) => {
            let index = if device == "cuda" || device == "auto" {
                rv.local_rank
            } else {
                i
            };
            let name = format!("cuda:{index}");
            kd_core::device::parse(&name)
                .with_context(|| format!("rank {} (LOCAL_RANK {})", rv.rank, rv.local_rank))?;
            (kd_dist::ProcessGroup::nccl(&rv, index)?, Some(name))
        }
        _ => (kd_dist::ProcessGroup::gloo(&rv)?, None),
    };
    kd_core::dist::set_world(Some(std::rc::Rc::new(group)));
    if let Some(chosen) = chosen {
        *device = chosen;
    }
    Ok(())
}

fn reproduce(mut a: ReproduceArgs) -> Result<()> {
    // Absolute paths in the saved config, so it says which files the run read whatever the
    // folder it was started from (paths inside an experiment file stay as written).
    for p in [
        &mut a.data,
        &mut a.web,
        &mut a.out,
        &mut a.config,
        &mut a.teacher,
        &mut a.init,
    ]
    .into_iter()
    .flatten()
    {
        *p = cache::absolute(&*p);
    }
    if a.list {
        print!("{}", tables::listing());
        return Ok(());
    }
    let Some(name) = a.table.as_deref() else {
        bail!("name a table (see `cargo xtask reproduce --list`)")
    };
    let table = tables::find(name)?;
    if let Some(d) = &a.data {
        if !d.is_dir() {
            bail!("--data {}: folder does not exist", d.display());
        }
    }
    if let Some(w) = &a.web {
        if !w.is_dir() {
            bail!("--web {}: folder does not exist", w.display());
        }
    }
    let scale = a
        .scale
        .clone()
        .unwrap_or_else(|| tables::default_scale(a.data.is_some()).into());
    let (path, text) = match (&a.config, scale.as_str()) {
        (Some(p), _) => (
            p.clone(),
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        ),
        (None, "quick") => (
            PathBuf::from(format!("configs/{name}.quick.toml")),
            table.quick.to_string(),
        ),
        (None, "paper") => (
            PathBuf::from(format!("configs/{name}.paper.toml")),
            table.paper.to_string(),
        ),
        (None, other) => bail!("--scale {other}: use quick or paper"),
    };
    if a.seeds == Some(0) {
        bail!("--seeds must be at least 1");
    }
    if a.resume && a.out.is_none() {
        bail!("--resume needs --out DIR pointing at the interrupted run");
    }
    for (flag, f) in [("--teacher", &a.teacher), ("--init", &a.init)] {
        if let Some(f) = f {
            if !f.is_file() {
                bail!("{flag} {}: file does not exist", f.display());
            }
        }
    }
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| cache::absolute(PathBuf::from("runs").join(name).join(timestamp())));
    let out = shared_path(&out)?;
    let args = table::RunArgs {
        data: a.data.clone(),
        web: a.web.clone(),
        seeds: a.seeds.unwrap_or(DEFAULT_SEEDS),
        out: out.clone(),
        device: a.device.clone(),
        resume: a.resume,
        teacher_cache_mb: a.teacher_cache_mb,
        teacher: a.teacher.clone(),
        init: a.init.clone(),
        weights_key: a.weights_key.clone(),
        weak_teacher: a.weak_teacher,
    };
    let given = a.seeds.is_some();
    let result = match table.kind {
        tables::TableKind::Classification => {
            table::reproduce::<classify::Classification>(&path, &text, args, given)?
        }
        tables::TableKind::Segmentation => table::reproduce::<seg::Segmentation>(&path, &text, args, given)?,
        tables::TableKind::ImageFolder => table::reproduce::<imagenet::ImageNet>(&path, &text, args, given)?,
        tables::TableKind::Detection => table::reproduce::<det::Detection>(&path, &text, args, given)?,
        tables::TableKind::TwoStageDetection => {
            table::reproduce::<det::Detection<det::FasterRcnn>>(&path, &text, args, given)?
        }
    };
    if kd_core::dist::is_writer() {
        println!("\n{}", result.markdown());
        println!("results, config and plots: {}", out.display());
    }
    Ok(())
}

/// Rank 0's `path` on every rank (a default folder's time stamp may differ between ranks).
fn shared_path(path: &std::path::Path) -> Result<PathBuf> {
    let bytes = kd_core::dist::share_bytes(path.to_string_lossy().into_owned().into_bytes())?;
    Ok(PathBuf::from(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Seeds of a table that does not name its own number.
const DEFAULT_SEEDS: u64 = 3;

fn eval_cityscapes(a: EvalArgs) -> Result<()> {
    let report = kd_seg::metrics::eval_cityscapes_dirs(&a.pred, &a.gt)?;
    println!(
        "{} images; IoU per class (as the official pixel-level evaluation computes it):",
        report.images
    );
    for c in &report.classes {
        let iou = c.iou.map_or("   nan".to_string(), |v| format!("{v:.4}"));
        println!("  {:<14} {iou}", c.name);
    }
    println!(
        "Score Average: {:.4}  (mIoU {:.2} %)",
        report.mean_iou, report.miou
    );
    if let Some(p) = &a.json {
        kd_core::io::write_atomic(p, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    Ok(())
}

fn eval_coco(a: EvalCocoArgs) -> Result<()> {
    use kd_det::metrics as coco;
    let gt = coco::CocoGt::from_file(&a.gt)?;
    let dets = coco::read_detections(&a.dt)?;
    let stats = coco::evaluate_bbox(&gt, &dets)
        .with_context(|| format!("evaluating {} against {}", a.dt.display(), a.gt.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        println!(
            "{} images, {} categories, {} detections (bbox)",
            stats.images, stats.categories, stats.detections
        );
        print!("{}", stats.summary());
    }
    Ok(())
}

/// UTC `YYYYmmdd-HHMMSS` from the system clock.
fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil-from-days (proleptic Gregorian), after H. Hinnant's public-domain algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}
