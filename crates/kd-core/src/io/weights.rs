//! Weights from any file people hold — our safetensors, a `torch.save` state dict (zip or
//! legacy), a training checkpoint with the weights nested inside — loaded into a model with a
//! full account of what matched.
//!
//! The failure this guards against is the silent one: a teacher whose keys do not match loads
//! nothing, keeps its random initialisation and scores near zero. So a load either fills every
//! variable of the model from a tensor of the same shape, or fails listing the missing,
//! unexpected and shape-mismatched keys with their shapes. A *partial* load (an ImageNet
//! backbone into a detector) fills what matches and lists what it skipped instead.
//!
//! Names are translated by a [`NameMap`] (a prefix to add or strip and per-family renames);
//! `num_batches_tracked` buffers, which PyTorch's BatchNorm keeps and ours does not need, are
//! accepted and ignored on the way in and written as zeros on the way out.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use super::{checkpoint, torch};
use crate::{KdError, Result};

/// The file format a weights file came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// safetensors.
    Safetensors,
    /// `torch.save`, zip container.
    TorchZip,
    /// `torch.save`, legacy container.
    TorchLegacy,
}

/// How to find the weights inside a file.
#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    /// Dotted key of the state dict inside a checkpoint (`"model"`, `"state_dict"`,
    /// `"ema.model"`); `None` auto-detects.
    pub weights_key: Option<String>,
}

/// Named tensors read from a file, with `module.` (DataParallel) prefixes stripped.
#[derive(Debug)]
pub struct Weights {
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// Where the state dict was found (`None`: top level).
    pub key: Option<String>,
    /// `(name, tensor)` on the CPU, in file order.
    pub tensors: Vec<(String, Tensor)>,
    /// Seconds the read took.
    pub read_seconds: f64,
}

impl Weights {
    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Total bytes of the tensors.
    pub fn bytes(&self) -> usize {
        self.tensors
            .iter()
            .map(|(_, t)| t.numel() * t.kind().elt_size_in_bytes())
            .sum()
    }
}

/// Strips every leading `module.` (one per DataParallel/DistributedDataParallel wrap).
pub fn strip_module_prefix(name: &str) -> &str {
    let mut n = name;
    while let Some(rest) = n.strip_prefix("module.") {
        n = rest;
    }
    n
}

/// Reads the weights in `path`, whatever its format.
pub fn read(path: &Path, opts: &ReadOptions) -> Result<Weights> {
    let start = std::time::Instant::now();
    let mut w = read_untimed(path, opts)?;
    w.read_seconds = start.elapsed().as_secs_f64();
    Ok(w)
}

fn read_untimed(path: &Path, opts: &ReadOptions) -> Result<Weights> {
    let mut bytes = std::fs::read(path).map_err(|e| KdError::file(path, format!("cannot read: {e}")))?;
    if bytes.is_empty() {
        return Err(KdError::file(path, "the file is empty"));
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        // A gzip-compressed checkpoint (`model.pth.gz`): read through the compression.
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut out).map_err(|e| {
            KdError::file(
                path,
                format!("a gzip file that cannot be decompressed (truncated?): {e}"),
            )
        })?;
        bytes = out;
    }
    if !torch::looks_like_torch(&bytes) && looks_like_safetensors(&bytes) {
        let ckpt = checkpoint::from_bytes(path, &bytes)?;
        drop(bytes);
        return Ok(Weights {
            path: path.into(),
            format: Format::Safetensors,
            key: None,
            tensors: strip_all(path, ckpt.tensors)?,
            read_seconds: 0.0,
        });
    }
    let file = torch::decode(path, bytes)?;
    let found = torch::find_state_dict(path, &file.root, opts.weights_key.as_deref())?;
    let mut cache = HashMap::new();
    let mut tensors = Vec::with_capacity(found.entries.len());
    for (name, t) in &found.entries {
        tensors.push((name.clone(), file.tensor(path, name, t, &mut cache)?));
    }
    Ok(Weights {
        path: path.into(),
        format: match file.container {
            torch::Container::Zip => Format::TorchZip,
            torch::Container::Legacy => Format::TorchLegacy,
        },
        key: found.key,
        tensors: strip_all(path, tensors)?,
        read_seconds: 0.0,
    })
}

fn looks_like_safetensors(bytes: &[u8]) -> bool {
    bytes.len() >= 9
        && u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) < bytes.len() as u64
        && bytes[8] == b'{'
}

fn strip_all(path: &Path, tensors: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(tensors.len());
    for (n, t) in tensors {
        let s = strip_module_prefix(&n).to_string();
        if !seen.insert(s.clone()) {
            return Err(KdError::file(
                path,
                format!("key {s:?} appears twice once `module.` prefixes are removed"),
            ));
        }
        out.push((s, t));
    }
    Ok(out)
}

/// Translates between a file's names and a model's variable names.
pub trait NameMap {
    /// The model variable a file key fills, or `None` when the key has no place in the model.
    fn to_model(&self, file_key: &str) -> Option<String>;
    /// The file key a model variable is written under.
    fn to_file(&self, var: &str) -> String;
}

/// The map of a family whose module tree matches ours name for name: only a prefix differs
/// (`file_prefix` on the file side, `var_prefix` on ours), plus optional renames
/// `(file_suffix, var_suffix)` of whole trailing paths.
#[derive(Clone, Debug, Default)]
pub struct PrefixMap {
    /// Stripped from file keys (e.g. `"backbone."`, `"student."`), added back on export.
    pub file_prefix: String,
    /// Added to model variable names (e.g. the var-store root, `"student."`).
    pub var_prefix: String,
    /// `(file name, model name)` pairs after the prefixes, for the few modules named differently.
    pub renames: Vec<(String, String)>,
}

impl NameMap for PrefixMap {
    fn to_model(&self, file_key: &str) -> Option<String> {
        let rest = file_key.strip_prefix(&self.file_prefix)?;
        let rest = self
            .renames
            .iter()
            .find_map(|(f, m)| rest.strip_prefix(f.as_str()).map(|r| format!("{m}{r}")))
            .unwrap_or_else(|| rest.to_string());
        Some(format!("{}{rest}", self.var_prefix))
    }

    fn to_file(&self, var: &str) -> String {
        let rest = var.strip_prefix(&self.var_prefix).unwrap_or(var);
        let rest = self
            .renames
            .iter()
            .find_map(|(f, m)| rest.strip_prefix(m.as_str()).map(|r| format!("{f}{r}")))
            .unwrap_or_else(|| rest.to_string());
        format!("{}{rest}", self.file_prefix)
    }
}

/// What a load did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    /// Variables filled (for a failed strict load: that would have been filled).
    pub loaded: usize,
    /// Elements in them.
    pub elements: i64,
    /// Model variables with no tensor in the file (model names, shapes).
    pub missing: Vec<(String, Vec<i64>)>,
    /// File keys with no place in the model (file names, shapes).
    pub unexpected: Vec<(String, Vec<i64>)>,
    /// `(model name, model shape, file shape)` of tensors that exist on both sides but differ.
    pub mismatched: Vec<(String, Vec<i64>, Vec<i64>)>,
    /// `num_batches_tracked` buffers accepted and not needed.
    pub ignored: usize,
}

impl LoadReport {
    /// `true` when every variable was filled and every file key used.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }

    /// A multi-line account naming at most `limit` keys per list.
    pub fn describe(&self, limit: usize) -> String {
        fn list<T>(out: &mut String, title: &str, items: &[T], limit: usize, f: impl Fn(&T) -> String) {
            if items.is_empty() {
                return;
            }
            out.push_str(&format!("\n  {title} ({}):", items.len()));
            for it in items.iter().take(limit) {
                out.push_str(&format!("\n    {}", f(it)));
            }
            if items.len() > limit {
                out.push_str(&format!("\n    ... and {} more", items.len() - limit));
            }
        }
        let mut out = format!(
            "{} tensors ({} values) match by name and shape",
            self.loaded, self.elements
        );
        if self.ignored > 0 {
            out.push_str(&format!(", {} num_batches_tracked buffers ignored", self.ignored));
        }
        list(
            &mut out,
            "shape mismatches (model vs file)",
            &self.mismatched,
            limit,
            |(n, m, f)| format!("{n}: model {m:?}, file {f:?}"),
        );
        list(
            &mut out,
            "missing from the file",
            &self.missing,
            limit,
            |(n, s)| format!("{n} {s:?}"),
        );
        list(
            &mut out,
            "in the file but not in the model",
            &self.unexpected,
            limit,
            |(n, s)| format!("{n} {s:?}"),
        );
        out
    }
}

/// Whether a load may leave variables unfilled and file keys unused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strictness {
    /// Every variable filled, every key used, every shape equal — or an error.
    Strict,
    /// Fill what matches by name and shape; report the rest.
    Partial,
}

/// Copies `weights` into the model variables `vars` (`(name, tensor)`, e.g. from
/// `VarStore::variables()`), translating names with `map`. Floating-point tensors are cast to
/// the variable's kind and moved to its device. Strict loads fail unless the match is complete;
/// nothing is written to the variables in that case.
pub fn load_into(
    weights: &Weights,
    vars: &[(String, Tensor)],
    map: &dyn NameMap,
    strictness: Strictness,
) -> Result<LoadReport> {
    let by_var: HashMap<&str, &Tensor> = vars.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut report = LoadReport::default();
    let mut plan: Vec<(&Tensor, &Tensor)> = Vec::new();
    let mut used: HashSet<&str> = HashSet::new();
    for (key, src) in &weights.tensors {
        if key.ends_with("num_batches_tracked") {
            report.ignored += 1;
            continue;
        }
        let target = map
            .to_model(key)
            .and_then(|v| by_var.get_key_value(v.as_str()).map(|(k, t)| (*k, *t)));
        match target {
            Some((name, var)) => {
                used.insert(name);
                if var.size() != src.size() {
                    report.mismatched.push((name.to_string(), var.size(), src.size()));
                } else {
                    report.loaded += 1;
                    report.elements += src.numel() as i64;
                    plan.push((var, src));
                }
            }
            None => report.unexpected.push((key.clone(), src.size())),
        }
    }
    for (n, t) in vars {
        if !used.contains(n.as_str()) {
            report.missing.push((n.clone(), t.size()));
        }
    }
    if strictness == Strictness::Strict && !report.is_complete() {
        return Err(KdError::file(
            &weights.path,
            format!(
                "does not match the model (pass a partial load to fill only what matches):\n  {}",
                report.describe(20)
            ),
        ));
    }
    for (var, src) in plan {
        let src = if src.kind() != var.kind() && is_float(src.kind()) && is_float(var.kind()) {
            src.to_kind(var.kind())
        } else if src.kind() != var.kind() {
            return Err(KdError::file(
                &weights.path,
                format!(
                    "a tensor of kind {:?} cannot fill a variable of kind {:?}",
                    src.kind(),
                    var.kind()
                ),
            ));
        } else {
            src.shallow_clone()
        };
        let mut var = var.shallow_clone();
        tch::no_grad(|| var.copy_(&src));
    }
    Ok(report)
}

fn is_float(k: Kind) -> bool {
    matches!(k, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16)
}

/// Model variables renamed to a file's naming with `map`, plus a zero `num_batches_tracked`
/// (int64 scalar) beside every BatchNorm's `running_mean`, as PyTorch's strict
/// `load_state_dict` expects; sorted by name.
pub fn to_file_names(vars: &[(String, Tensor)], map: &dyn NameMap) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = Vec::with_capacity(vars.len());
    for (n, t) in vars {
        let f = map.to_file(n);
        if let Some(module) = f.strip_suffix("running_mean") {
            out.push((format!("{module}num_batches_tracked"), Tensor::from(0i64)));
        }
        out.push((f, t.detach().to_device(tch::Device::Cpu)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// How to bring a weights file into a model: where the weights sit, how names translate,
/// whether a partial match is acceptable.
#[derive(Clone, Debug, Default)]
pub struct Import {
    /// Where the state dict sits inside the file.
    pub read: ReadOptions,
    /// File names ↔ model names.
    pub map: PrefixMap,
    /// `true`: fill what matches and report the rest (a backbone into a bigger model).
    pub partial: bool,
}

/// What an import did, printable as one line plus the lists of skipped keys.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// Where the state dict was found (`None`: top level).
    pub key: Option<String>,
    /// The load's account.
    pub report: LoadReport,
    /// Seconds spent reading the file and filling the variables.
    pub seconds: f64,
}

impl std::fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let format = match self.format {
            Format::Safetensors => "safetensors",
            Format::TorchZip => "torch.save, zip",
            Format::TorchLegacy => "torch.save, legacy",
        };
        let key = self
            .key
            .as_ref()
            .map(|k| format!(", under {k:?}"))
            .unwrap_or_default();
        write!(
            f,
            "{} ({format}{key}, {:.2} s): {}",
            self.path.display(),
            self.seconds,
            self.report.describe(8)
        )
    }
}

/// Reads `path` and loads it into `vars` as `imp` says (see [`load_into`]).
pub fn import(path: &Path, vars: &[(String, Tensor)], imp: &Import) -> Result<ImportSummary> {
    import_read(&read(path, &imp.read)?, vars, imp)
}

/// [`import`] of weights already read (`imp.read` is not used).
pub fn import_read(w: &Weights, vars: &[(String, Tensor)], imp: &Import) -> Result<ImportSummary> {
    let start = std::time::Instant::now();
    let path = w.path.as_path();
    let strictness = if imp.partial {
        Strictness::Partial
    } else {
        Strictness::Strict
    };
    let report = load_into(w, vars, &imp.map, strictness)?;
    if report.loaded == 0 {
        return Err(KdError::file(
            path,
            format!(
                "no tensor in the file matches the model:\n  {}",
                report.describe(12)
            ),
        ));
    }
    Ok(ImportSummary {
        path: w.path.clone(),
        format: w.format,
        key: w.key.clone(),
        report,
        seconds: w.read_seconds + start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vec<(String, Tensor)> {
        vec![
            (
                "backbone.conv.weight".into(),
                Tensor::zeros([2, 3], (Kind::Float, tch::Device::Cpu)),
            ),
            (
                "backbone.bn.running_mean".into(),
                Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)),
            ),
            (
                "head.weight".into(),
                Tensor::zeros([4], (Kind::Float, tch::Device::Cpu)),
            ),
        ]
    }

    fn weights(tensors: Vec<(&str, Tensor)>) -> Weights {
        Weights {
            path: "w.pt".into(),
            format: Format::TorchZip,
            key: None,
            tensors: tensors.into_iter().map(|(n, t)| (n.to_string(), t)).collect(),
            read_seconds: 0.0,
        }
    }

    #[test]
    fn strict_load_lists_missing_unexpected_and_mismatched_and_writes_nothing() {
        let v = vars();
        let w = weights(vec![
            (
                "conv.weight",
                Tensor::ones([3, 2], (Kind::Float, tch::Device::Cpu)),
            ),
            (
                "bn.running_mean",
                Tensor::ones([2], (Kind::Half, tch::Device::Cpu)),
            ),
            ("bn.num_batches_tracked", Tensor::from(5i64)),
            ("fc.weight", Tensor::ones([10], (Kind::Float, tch::Device::Cpu))),
        ]);
        let map = PrefixMap {
            var_prefix: "backbone.".into(),
            ..Default::default()
        };
        let err = load_into(&w, &v, &map, Strictness::Strict)
            .unwrap_err()
            .to_string();
        for needle in [
            "w.pt",
            "missing from the file (1)",
            "head.weight [4]",
            "in the file but not in the model (1)",
            "fc.weight [10]",
            "backbone.conv.weight: model [2, 3], file [3, 2]",
        ] {
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
        assert_eq!(
            v[1].1.sum(Kind::Float).double_value(&[]),
            0.0,
            "a failed strict load writes nothing"
        );
        let r = load_into(&w, &v, &map, Strictness::Partial).unwrap();
        assert_eq!(
            (
                r.loaded,
                r.ignored,
                r.missing.len(),
                r.unexpected.len(),
                r.mismatched.len()
            ),
            (1, 1, 1, 1, 1)
        );
        assert_eq!(
            v[1].1.sum(Kind::Float).double_value(&[]),
            2.0,
            "fp16 cast into the f32 variable"
        );
    }

    #[test]
    fn prefix_maps_run_both_ways_and_export_adds_num_batches_tracked() {
        let map = PrefixMap {
            file_prefix: "student.".into(),
            var_prefix: "backbone.".into(),
            renames: vec![("fcos_cls".into(), "conv_cls".into())],
        };
        assert_eq!(
            map.to_model("student.fcos_cls.weight").as_deref(),
            Some("backbone.conv_cls.weight")
        );
        assert_eq!(map.to_model("teacher.x"), None);
        assert_eq!(map.to_file("backbone.conv_cls.weight"), "student.fcos_cls.weight");
        let out = to_file_names(&vars(), &map);
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "student.bn.num_batches_tracked",
                "student.bn.running_mean",
                "student.conv.weight",
                "student.head.weight"
            ]
        );
    }
}
