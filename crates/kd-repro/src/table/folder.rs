//! A run folder is the record of one recipe: it is never overwritten, and `--resume` continues
//! it only under the recipe that started it.
//!
//! Without these rules a second run into the same `--out` silently replaces the first one's
//! students and `results.json`, and a resume with an edited config finishes the unfinished rows
//! under new settings while the finished ones keep the old numbers, so the table mixes two
//! recipes under one `config.toml`.

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::RunArgs;

/// The resolved config saved in every run folder.
pub const CONFIG: &str = "config.toml";

/// Keys of the saved config that say how the run is executed, not what it computes: a resume
/// may change them. (`dataset` describes `run.data` and the experiment, both compared.)
const EXECUTION_KEYS: &[&str] = &[
    "run.resume",
    "run.out",
    "run.device",
    "run.teacher_cache_mb",
    "run.weak_teacher",
    "dataset",
];

/// Keys holding a path: equal when they name the same file, however spelt.
const PATH_KEYS: &[&str] = &["run.data", "run.web", "run.teacher", "run.init"];

/// Whether a difference is one a resume may have: an execution key, the same file spelt
/// another way, or more seeds (seeds are `0..n`, so the finished ones stay what they were).
fn allowed(d: &Difference) -> bool {
    if EXECUTION_KEYS.contains(&d.key.as_str()) {
        return true;
    }
    let unquote = |v: &Option<String>| v.as_deref().map(|s| s.trim_matches('"').to_string());
    if PATH_KEYS.contains(&d.key.as_str()) {
        if let (Some(a), Some(b)) = (unquote(&d.old), unquote(&d.new)) {
            let canon = |p: &str| std::fs::canonicalize(p).ok();
            return canon(&a).is_some() && canon(&a) == canon(&b);
        }
    }
    if d.key == "run.seeds" {
        let n = |v: &Option<String>| v.as_deref().and_then(|s| s.parse::<u64>().ok());
        return matches!((n(&d.old), n(&d.new)), (Some(a), Some(b)) if b > a);
    }
    false
}

/// Checks that `args.out` may be written: without `--resume` it must not exist or be empty;
/// with `--resume` it must hold a run (its `config.toml`).
pub fn claim(args: &RunArgs) -> Result<()> {
    let out = &args.out;
    if args.resume {
        if !out.join(CONFIG).is_file() {
            bail!(
                "--resume --out {}: no run to resume there ({}); start it without --resume",
                out.display(),
                if out.is_dir() {
                    format!("the folder has no {CONFIG}")
                } else {
                    "the folder does not exist".to_string()
                }
            );
        }
        return Ok(());
    }
    if out.exists() {
        if !out.is_dir() {
            bail!("--out {}: exists and is not a folder", out.display());
        }
        let mut entries = std::fs::read_dir(out).with_context(|| format!("reading {}", out.display()))?;
        if entries.next().is_some() {
            bail!(
                "--out {}: the folder is not empty{}; add --resume to continue that run, or choose another --out (a run folder is never overwritten)",
                out.display(),
                if out.join(CONFIG).is_file() {
                    " (it holds a run)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

/// What is saved beside the results: the experiment plus how it was run.
#[derive(Serialize)]
struct SavedConfig<'a, E: Serialize> {
    run: &'a RunArgs,
    dataset: &'a str,
    experiment: &'a E,
}

/// The resolved config as it is saved in the run folder: how the run was invoked, the data it
/// read and the whole experiment, so the results never travel without what produced them. On
/// `--resume` the folder's config must equal this one but for what [`allowed`] lets a resume
/// change: otherwise the error names the differing keys. Writes nothing (see [`write_config`]).
pub fn resolved_config<E: Serialize>(args: &RunArgs, dataset: &str, experiment: &E) -> Result<String> {
    let saved = SavedConfig {
        run: args,
        dataset,
        experiment,
    };
    let text = toml::to_string_pretty(&saved)?;
    let path = args.out.join(CONFIG);
    if args.resume {
        let old_text =
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let old: toml::Value =
            toml::from_str(&old_text).with_context(|| format!("parsing {}", path.display()))?;
        let new: toml::Value = toml::from_str(&text)?;
        let mut diffs = Vec::new();
        differences("", &old, &new, &mut diffs);
        diffs.retain(|d| !allowed(d));
        if !diffs.is_empty() {
            let list: Vec<String> = diffs.iter().take(12).map(ToString::to_string).collect();
            bail!(
                "--resume: the recipe differs from the run in {} at {} key(s): {}{}; resume with the same config and flags, or start a new run with another --out",
                path.display(),
                diffs.len(),
                list.join("; "),
                if diffs.len() > 12 { "; ..." } else { "" }
            );
        }
    }
    Ok(text)
}

/// Removes what [`write_config`] made when nothing else was written since: a run stopped by a
/// check or an error before any row trained leaves the folder as it found it (best effort).
pub fn release_if_unused(args: &RunArgs) {
    let only_config = std::fs::read_dir(&args.out)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .all(|e| e.file_name() == std::ffi::OsStr::new(CONFIG))
        })
        .unwrap_or(false);
    if only_config {
        let _ = std::fs::remove_file(args.out.join(CONFIG));
        let _ = std::fs::remove_dir(&args.out);
    }
}

/// Creates the run folder and writes `text` (from [`resolved_config`]) as its `config.toml`;
/// called once every check has passed, before the first teacher trains.
pub fn write_config(args: &RunArgs, text: &str) -> Result<()> {
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    kd_core::io::write_atomic(&args.out.join(CONFIG), text.as_bytes())?;
    Ok(())
}

/// One key whose value differs between the saved and the new config.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// Dotted key, arrays indexed (`experiment.rows[2].method.tau`).
    pub key: String,
    /// Saved value (`None`: absent).
    pub old: Option<String>,
    /// New value (`None`: absent).
    pub new: Option<String>,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
        write!(f, "{}: {} → {}", self.key, show(&self.old), show(&self.new))
    }
}

/// Collects the leaf keys where `a` and `b` differ.
pub fn differences(prefix: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<Difference>) {
    use toml::Value;
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match (a, b) {
        (Value::Table(x), Value::Table(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => differences(&join(k), u, v, out),
                    (u, v) => out.push(Difference {
                        key: join(k),
                        old: u.map(short),
                        new: v.map(short),
                    }),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                differences(&format!("{prefix}[{i}]"), u, v, out);
            }
        }
        (Value::Float(x), Value::Float(y)) if x.to_bits() == y.to_bits() => {}
        (u, v) if u != v => out.push(Difference {
            key: prefix.to_string(),
            old: Some(short(u)),
            new: Some(short(v)),
        }),
        _ => {}
    }
}

/// A value as one short line.
fn short(v: &toml::Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn diffs(a: &str, b: &str) -> Vec<String> {
        let (a, b): (toml::Value, toml::Value) = (toml::from_str(a).unwrap(), toml::from_str(b).unwrap());
        let mut out = Vec::new();
        differences("", &a, &b, &mut out);
        out.into_iter().map(|d| d.key).collect()
    }

    #[test]
    fn differences_name_every_changed_leaf_with_its_path() {
        assert!(diffs("a = 1\n[t]\nx = [1, 2]", "a = 1\n[t]\nx = [1, 2]").is_empty());
        assert_eq!(diffs("a = 1", "a = 2"), ["a"]);
        assert_eq!(diffs("[t]\nx = [1, 2]", "[t]\nx = [1, 3]"), ["t.x[1]"]);
        assert_eq!(diffs("[t]\nx = [1, 2]", "[t]\nx = [1]"), ["t.x"]);
        assert_eq!(diffs("a = 1", "a = 1\nb = 2"), ["b"]);
        assert_eq!(
            diffs(
                "[[rows]]\nm = { tau = 4.0 }\n[[rows]]\nm = { tau = 1.0 }",
                "[[rows]]\nm = { tau = 4.0 }\n[[rows]]\nm = { tau = 2.0 }"
            ),
            ["rows[1].m.tau"]
        );
    }

    fn args(out: &Path, resume: bool) -> RunArgs {
        RunArgs {
            resume,
            ..RunArgs::embedded(out)
        }
    }

    fn save_config(args: &RunArgs, dataset: &str, exp: &toml::Table) -> Result<()> {
        let text = resolved_config(args, dataset, exp)?;
        write_config(args, &text)
    }

    #[test]
    fn a_used_folder_is_refused_and_a_resume_needs_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        claim(&args(&out, false)).unwrap();
        assert!(claim(&args(&out, true))
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        std::fs::create_dir(&out).unwrap();
        claim(&args(&out, false)).unwrap();
        save_config(&args(&out, false), "d", &toml::toml! { lr = 0.1 }).unwrap();
        assert!(out.join(CONFIG).is_file());
        let e = claim(&args(&out, false)).unwrap_err().to_string();
        assert!(e.contains("not empty") && e.contains("--resume"), "{e}");
        claim(&args(&out, true)).unwrap();
        // The device may change on resume; the recipe may not.
        let mut moved = args(&out, true);
        moved.device = "cuda".into();
        save_config(&moved, "d", &toml::toml! { lr = 0.1 }).unwrap();
        let e = save_config(&args(&out, true), "d", &toml::toml! { lr = 0.2 })
            .unwrap_err()
            .to_string();
        assert!(e.contains("experiment.lr: 0.1 → 0.2"), "{e}");
        // More seeds extend the table; fewer would drop finished ones.
        let mut more = args(&out, true);
        more.seeds = 3;
        save_config(&more, "d", &toml::toml! { lr = 0.1 }).unwrap();
        let e = save_config(&args(&out, true), "d", &toml::toml! { lr = 0.1 })
            .unwrap_err()
            .to_string();
        assert!(e.contains("run.seeds: 3 → 1"), "{e}");
        // The same data folder spelt another way is the same recipe; another folder is not.
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let with_data = |p: std::path::PathBuf, resume| RunArgs {
            data: Some(p),
            seeds: 3,
            ..args(&out, resume)
        };
        std::fs::remove_dir_all(&out).unwrap();
        save_config(&with_data(data.clone(), false), "d", &toml::toml! { lr = 0.1 }).unwrap();
        let respelt = data.join("..").join("data");
        save_config(&with_data(respelt, true), "d", &toml::toml! { lr = 0.1 }).unwrap();
        let e = save_config(
            &with_data(dir.path().to_path_buf(), true),
            "d",
            &toml::toml! { lr = 0.1 },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("run.data"), "{e}");
    }
}
