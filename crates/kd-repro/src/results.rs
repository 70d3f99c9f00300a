//! The results format shared by every table.
//!
//! `results.json` is the machine-readable record (schema below); `results.md` is the same table
//! for people. Both sit beside the resolved `config.toml` of the run, so a number never travels
//! without the configuration that produced it.
//!
//! A row's headline (`mean`, `std`, `per_seed`) is the final epoch's number, scored with the
//! task's final protocol: the run never picks an epoch by its test score. Beside it, `best`
//! holds the best of the per-epoch evaluations the trainer made (every `eval_every` epochs and
//! after the last), with the epoch each seed reached it at, for comparison with published code
//! that reports the best test score over epochs. The table's `best_note` says what that best
//! is measured with, and `best_same_protocol` whether that is the final protocol.

use std::path::Path;

use anyhow::{Context, Result};
use kd_core::train::{best_epoch, TrainReport};
use serde::{Deserialize, Serialize};

/// One row: a method's metric over seeds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RowResult {
    /// Row label, e.g. `KD`.
    pub method: String,
    /// Metric name, e.g. `top1`.
    pub metric: String,
    /// Mean over seeds.
    pub mean: f64,
    /// Sample standard deviation over seeds (n − 1 in the denominator; 0 for one seed).
    pub std: f64,
    /// The metric of each seed, in seed order.
    pub per_seed: Vec<f64>,
    /// The published number, when one exists for this setting.
    pub paper: Option<f64>,
    /// The best per-epoch evaluation of each seed (see [`BestEpoch`]); absent when the row
    /// has no training history (a given teacher, a reference row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<BestEpoch>,
    /// Extra per-row numbers (method reports, timings).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub extra: serde_json::Value,
    /// The table's extra columns for this row, in [`TableResult::columns`] order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<ColumnValue>,
    /// Set on a teacher row that is no teacher: near chance, or below a student it teaches
    /// trained without KD (the warning says which).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_warning: Option<String>,
    /// What training each seed got (see [`Budget`]); absent for a row that did not train here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

/// The training a row's seeds got, so runs on data of different sizes can be compared: the
/// recipe's epochs grow on small data when it sets `min_updates`, and a run that stops early
/// ends before them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// Optimiser updates of each seed.
    pub updates_per_seed: Vec<usize>,
    /// Training images (samples) each seed saw, an image seen twice counted twice.
    pub images_per_seed: Vec<usize>,
    /// Epochs each seed ran.
    pub epochs_per_seed: Vec<usize>,
    /// With early stopping, the epoch (1-based) whose weights each seed kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept_epoch_per_seed: Vec<usize>,
}

impl Budget {
    /// The budget of each report (one per seed, in seed order); `None` without reports.
    pub fn of(reports: &[TrainReport]) -> Option<Self> {
        if reports.is_empty() {
            return None;
        }
        let kept: Vec<usize> = reports.iter().filter_map(|r| r.kept_epoch).collect();
        Some(Budget {
            updates_per_seed: reports.iter().map(TrainReport::updates).collect(),
            images_per_seed: reports.iter().map(TrainReport::samples_seen).collect(),
            epochs_per_seed: reports.iter().map(|r| r.history.len()).collect(),
            kept_epoch_per_seed: if kept.len() == reports.len() {
                kept
            } else {
                Vec::new()
            },
        })
    }

    /// The table cell: updates / images seen, one number when every seed got the same and the
    /// range over seeds otherwise, then the kept epochs with early stopping, e.g.
    /// `2,480 / 79,360` or `1,540–1,760 / 49,280–56,320 (kept epochs 23, 25)`.
    pub fn cell(&self) -> String {
        fn span(v: &[usize]) -> String {
            let lo = v.iter().copied().min().unwrap_or(0);
            let hi = v.iter().copied().max().unwrap_or(0);
            if lo == hi {
                thousands(lo as i64)
            } else {
                format!("{}–{}", thousands(lo as i64), thousands(hi as i64))
            }
        }
        let mut s = format!(
            "{} / {}",
            span(&self.updates_per_seed),
            span(&self.images_per_seed)
        );
        if !self.kept_epoch_per_seed.is_empty() {
            let kept: Vec<String> = self.kept_epoch_per_seed.iter().map(|e| e.to_string()).collect();
            s.push_str(&format!(
                " (kept epoch{} {})",
                if kept.len() == 1 { "" } else { "s" },
                kept.join(", ")
            ));
        }
        s
    }
}

/// A row's best-epoch metric: per seed, the best of the evaluations the trainer made during
/// training (the highest, as every [`kd_core::train::Evaluator`] is higher-is-better) and the
/// epoch it came from; mean and standard deviation over seeds as for the headline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BestEpoch {
    /// Mean over seeds of `per_seed`.
    pub mean: f64,
    /// Sample standard deviation over seeds (0 for one seed).
    pub std: f64,
    /// The best evaluated metric of each seed, in seed order.
    pub per_seed: Vec<f64>,
    /// The epoch (1-based, as in `epochs.jsonl`) each seed's best comes from; the earliest
    /// on a tie.
    pub epoch_per_seed: Vec<usize>,
}

impl BestEpoch {
    /// The best of each report's history, one report per seed in seed order; `None` when there
    /// is no report or one has no evaluated epoch.
    pub fn of(reports: &[TrainReport]) -> Option<Self> {
        let picks: Vec<(usize, f64)> = reports
            .iter()
            .map(|r| best_epoch(&r.history))
            .collect::<Option<_>>()?;
        if picks.is_empty() {
            return None;
        }
        let per_seed: Vec<f64> = picks.iter().map(|p| p.1).collect();
        let (mean, std) = mean_std(&per_seed);
        Some(Self {
            mean,
            std,
            per_seed,
            epoch_per_seed: picks.iter().map(|p| p.0).collect(),
        })
    }

    /// The table cell: mean ± std, then the epoch of each seed's best, e.g.
    /// `71.20 ± 0.35 (epochs 236, 240)`.
    pub fn cell(&self) -> String {
        let epochs: Vec<String> = self.epoch_per_seed.iter().map(|e| e.to_string()).collect();
        format!(
            "{:.2} ± {:.2} (epoch{} {})",
            self.mean,
            self.std,
            if epochs.len() == 1 { "" } else { "s" },
            epochs.join(", ")
        )
    }
}

/// The line under a table saying what its headline and its best-epoch column are. `differs`
/// describes the per-epoch evaluations when they are not the task's final protocol (e.g.
/// cheaper inference during training); `None` when they are.
pub fn best_note(metric: &str, differs: Option<&str>) -> String {
    let protocol = match differs {
        None => "measured with the same protocol as the final number, so it is never below \
                 *ours*"
            .to_string(),
        Some(d) => format!(
            "measured with {d}, not with the final protocol, so it is not the same measurement \
             as *ours* and may be below it"
        ),
    };
    format!(
        "*ours* is the headline: the final epoch's {metric}, scored with the task's final \
         protocol; no epoch is picked on the evaluation set. *best epoch* is the highest {metric} \
         among the evaluations made during training (every `eval_every` epochs of the row's \
         recipe, and after the last), with the epoch of each seed's best, {protocol}; it is shown \
         for comparison with published code that reports the best test score over epochs."
    )
}

/// How an extra column prints its number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnFormat {
    /// A whole number with thousands separators, e.g. `123,456`.
    #[default]
    Int,
    /// Two decimals.
    Float,
    /// A percentage with one decimal, e.g. `48.5 %`.
    Pct,
}

impl ColumnFormat {
    /// `v` in this format.
    pub fn format(self, v: f64) -> String {
        match self {
            ColumnFormat::Int => thousands(v.round() as i64),
            ColumnFormat::Float => format!("{v:.2}"),
            ColumnFormat::Pct => format!("{v:.1} %"),
        }
    }
}

/// A cell of a column that only some rows fill: nothing when the column is not `shown`, a
/// dash for a row without a value.
fn optional_cell(shown: bool, value: Option<String>) -> String {
    match (shown, value) {
        (false, _) => String::new(),
        (true, None) => " — |".to_string(),
        (true, Some(v)) => format!(" {v} |"),
    }
}

fn thousands(v: i64) -> String {
    let digits = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// The header of an extra column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnHead {
    /// Header text.
    pub header: String,
    /// Print format.
    pub format: ColumnFormat,
}

/// One row's value in an extra column: the mean over the seeds that report it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnValue {
    /// Header of the column.
    pub header: String,
    /// Mean over `per_seed`, `None` when no seed reports the number.
    pub mean: Option<f64>,
    /// The number of each seed that reports it.
    pub per_seed: Vec<f64>,
}

/// A finished table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableResult {
    /// Table name.
    pub table: String,
    /// What data it ran on.
    pub dataset: String,
    /// `quick` or `paper`.
    pub scale: String,
    /// Seeds used.
    pub seeds: Vec<u64>,
    /// The rows.
    pub rows: Vec<RowResult>,
    /// Extra columns (after "per seed"), when the table defines any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<ColumnHead>,
    /// The web pool the webly-supervised rows trained on: its source, size and make-up
    /// (shares of shifted and junk images, when known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<serde_json::Value>,
    /// Warnings the reader of the table must see, printed above it (a teacher that is no
    /// teacher: the distilled rows' gap is then not distillation's fault).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// What the headline and the rows' `best` are, printed under the table.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub best_note: String,
    /// Whether the per-epoch evaluations behind `best` use the task's final protocol (then
    /// `best` ≥ the headline on every seed); `None` when no row has a `best`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_same_protocol: Option<bool>,
}

impl TableResult {
    /// What a rank other than 0 of a data-parallel run returns: the table is rank 0's, so
    /// this one has no rows.
    pub fn written_elsewhere(table: &str, dataset: &str, scale: &str, seeds: Vec<u64>) -> Self {
        TableResult {
            table: table.to_string(),
            dataset: dataset.to_string(),
            scale: scale.to_string(),
            seeds,
            rows: Vec::new(),
            columns: Vec::new(),
            web: None,
            warnings: Vec::new(),
            best_note: String::new(),
            best_same_protocol: None,
        }
    }
}

/// Mean and sample standard deviation.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

impl RowResult {
    /// A row from per-seed values.
    pub fn new(method: &str, metric: &str, per_seed: Vec<f64>, paper: Option<f64>) -> Self {
        let (mean, std) = mean_std(&per_seed);
        Self {
            method: method.into(),
            metric: metric.into(),
            mean,
            std,
            per_seed,
            paper,
            best: None,
            extra: serde_json::Value::Null,
            columns: Vec::new(),
            teacher_warning: None,
            budget: None,
        }
    }

    /// A row that only lists a published number (another pair or detector, for reference):
    /// nothing is measured, so `per_seed` is empty and "ours" prints as "—".
    pub fn reference(label: &str, metric: &str, paper: f64) -> Self {
        Self::new(label, metric, Vec::new(), Some(paper))
    }
}

impl TableResult {
    /// The table as Markdown: a header line saying what ran, then one row per method.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "### `{}` — {} ({} scale, {} seed{})\n\n",
            self.table,
            self.dataset,
            self.scale,
            self.seeds.len(),
            if self.seeds.len() == 1 { "" } else { "s" }
        );
        for w in &self.warnings {
            s.push_str(&format!("> **Warning:** {w}\n\n"));
        }
        if let Some(w) = &self.web {
            s.push_str(&format!("Web pool: {}", w["source"].as_str().unwrap_or("?")));
            if let (Some(sp), Some(jp)) = (w["shifted_pct"].as_f64(), w["junk_pct"].as_f64()) {
                s.push_str(&format!(" ({sp:.0} % shifted in-distribution, {jp:.0} % junk)"));
            } else {
                s.push_str(" (origins unknown)");
            }
            s.push_str(". The students of the rows that train on it never read a label; every row is tested on the original test set.\n\n");
        }
        let extra_head: String = self.columns.iter().map(|c| format!(" {} |", c.header)).collect();
        let extra_rule = "---|".repeat(self.columns.len());
        // The best-epoch column stands beside the headline when any row has one.
        let with_best = self.rows.iter().any(|r| r.best.is_some());
        let (best_head, best_rule) = if with_best {
            (" best epoch (mean ± std) |", "---|")
        } else {
            ("", "")
        };
        // The budget column says what training each row got, so runs on data of different
        // sizes can be compared; absent when no row trained here.
        let with_budget = self.rows.iter().any(|r| r.budget.is_some());
        let (budget_head, budget_rule) = if with_budget {
            (" budget (updates / images seen) |", "---|")
        } else {
            ("", "")
        };
        s.push_str(&format!(
            "| method | metric | ours (mean ± std) |{best_head} per seed |{budget_head}{extra_head} paper |\n|---|---|---|{best_rule}---|{budget_rule}{extra_rule}---|\n"
        ));
        for r in &self.rows {
            let per: Vec<String> = r.per_seed.iter().map(|v| format!("{v:.2}")).collect();
            let paper = r.paper.map_or("n/a".to_string(), |p| format!("{p:.2}"));
            let extra: String = self
                .columns
                .iter()
                .map(|c| {
                    let v = r
                        .columns
                        .iter()
                        .find(|v| v.header == c.header)
                        .and_then(|v| v.mean);
                    format!(" {} |", v.map_or("—".to_string(), |v| c.format.format(v)))
                })
                .collect();
            let ours = if r.per_seed.is_empty() {
                "—".to_string()
            } else {
                format!("{:.2} ± {:.2}", r.mean, r.std)
            };
            let best = optional_cell(with_best, r.best.as_ref().map(BestEpoch::cell));
            let budget = optional_cell(with_budget, r.budget.as_ref().map(Budget::cell));
            s.push_str(&format!(
                "| {} | {} | {ours} |{best} {} |{budget}{extra} {} |\n",
                r.method,
                r.metric,
                per.join(", "),
                paper
            ));
        }
        if with_best && !self.best_note.is_empty() {
            s.push_str(&format!("\n{}\n", self.best_note));
        }
        s
    }

    /// Writes `results.json` and `results.md` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        kd_core::io::write_atomic(&dir.join("results.json"), json.as_bytes())?;
        kd_core::io::write_atomic(&dir.join("results.md"), self.markdown().as_bytes())
            .with_context(|| format!("writing results into {}", dir.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kd_core::train::EpochRecord;

    /// A history of `metrics.len()` epochs, `None` where the epoch was not evaluated.
    fn history(metrics: &[Option<f64>]) -> Vec<EpochRecord> {
        metrics
            .iter()
            .enumerate()
            .map(|(epoch, m)| EpochRecord {
                epoch,
                lr: 0.1,
                loss: 1.0,
                terms: Default::default(),
                train_acc: 50.0,
                test_metric: *m,
                held_metric: None,
                samples: 64,
                updates: 2,
                skipped: 0,
                seconds: 0.1,
            })
            .collect()
    }

    fn report(metrics: &[Option<f64>]) -> TrainReport {
        let history = history(metrics);
        let last = history
            .iter()
            .rev()
            .find_map(|r| r.test_metric)
            .unwrap_or(f64::NAN);
        TrainReport {
            metric: "top1".into(),
            history,
            final_metric: last,
            best_metric: last,
            distiller: serde_json::Value::Null,
            kept_epoch: None,
        }
    }

    #[test]
    fn the_best_epoch_is_the_highest_evaluated_one_not_the_last() {
        // eval_every = 2 over 6 epochs: epochs 2, 4 and 6 (1-based) carry a metric.
        let h = history(&[None, Some(40.0), None, Some(55.0), None, Some(50.0)]);
        assert_eq!(best_epoch(&h), Some((4, 55.0)));
        // The headline's epoch is the last evaluated one, 6, below the best.
        assert_eq!(h.last().unwrap().test_metric, Some(50.0));
        // A tie keeps the earliest epoch; a rising curve's best is its last epoch.
        assert_eq!(
            best_epoch(&history(&[Some(3.0), Some(7.0), Some(7.0)])),
            Some((2, 7.0))
        );
        assert_eq!(best_epoch(&history(&[Some(1.0), Some(2.0)])), Some((2, 2.0)));
        assert_eq!(best_epoch(&history(&[None, None])), None);
        assert_eq!(best_epoch(&[]), None);
    }

    #[test]
    fn a_rows_best_is_per_seed_with_mean_std_and_epochs() {
        let seeds = [
            report(&[None, Some(40.0), None, Some(55.0), None, Some(50.0)]),
            report(&[None, Some(45.0), None, Some(52.0), None, Some(57.0)]),
        ];
        let b = BestEpoch::of(&seeds).unwrap();
        assert_eq!(b.per_seed, vec![55.0, 57.0]);
        assert_eq!(b.epoch_per_seed, vec![4, 6]);
        assert!((b.mean - 56.0).abs() < 1e-12 && (b.std - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(b.cell(), "56.00 ± 1.41 (epochs 4, 6)");
        for (r, best) in seeds.iter().zip(&b.per_seed) {
            assert!(*best >= r.final_metric);
        }
        // No report (a given teacher), or a seed without an evaluation: no best.
        assert_eq!(BestEpoch::of(&[]), None);
        assert_eq!(BestEpoch::of(&[seeds[0].clone(), report(&[None])]), None);
        assert_eq!(
            BestEpoch::of(&seeds[..1]).unwrap().cell(),
            "55.00 ± 0.00 (epoch 4)"
        );
    }

    #[test]
    fn the_best_column_stands_beside_the_headline_with_its_note() {
        let mut kd = RowResult::new("KD", "top1", vec![50.0, 57.0], None);
        kd.best = BestEpoch::of(&[
            report(&[None, Some(40.0), None, Some(55.0), None, Some(50.0)]),
            report(&[None, Some(45.0), None, Some(52.0), None, Some(57.0)]),
        ]);
        let t = TableResult {
            warnings: Vec::new(),
            table: "t".into(),
            dataset: "d".into(),
            scale: "quick".into(),
            seeds: vec![0, 1],
            rows: vec![kd, RowResult::new("teacher (given)", "top1", vec![70.0], None)],
            columns: Vec::new(),
            web: None,
            best_note: best_note("top1", None),
            best_same_protocol: Some(true),
        };
        let md = t.markdown();
        assert!(
            md.contains("| method | metric | ours (mean ± std) | best epoch (mean ± std) | per seed | paper |\n|---|---|---|---|---|---|"),
            "{md}"
        );
        assert!(
            md.contains("| KD | top1 | 53.50 ± 4.95 | 56.00 ± 1.41 (epochs 4, 6) | 50.00, 57.00 | n/a |"),
            "{md}"
        );
        assert!(
            md.contains("| teacher (given) | top1 | 70.00 ± 0.00 | — | 70.00 | n/a |"),
            "{md}"
        );
        assert!(
            md.contains("*ours* is the headline: the final epoch's top1"),
            "{md}"
        );
        assert!(md.contains("same protocol as the final number"), "{md}");
        let other = best_note("mIoU", Some("whole-image inference"));
        assert!(other.contains("measured with whole-image inference, not with the final protocol"));

        // New keys beside the old ones; a file written before them still reads.
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["best_same_protocol"], true);
        assert!(v["best_note"].as_str().unwrap().contains("best epoch"));
        let best = &v["rows"][0]["best"];
        assert_eq!(best["per_seed"], serde_json::json!([55.0, 57.0]));
        assert_eq!(best["epoch_per_seed"], serde_json::json!([4, 6]));
        assert_eq!(best["mean"], 56.0);
        assert!(best["std"].is_number());
        assert_eq!(v["rows"][0]["per_seed"], serde_json::json!([50.0, 57.0]));
        assert!(v["rows"][1].get("best").is_none());
        let mut old = v.clone();
        for row in old["rows"].as_array_mut().unwrap() {
            row.as_object_mut().unwrap().remove("best");
        }
        old.as_object_mut().unwrap().remove("best_note");
        old.as_object_mut().unwrap().remove("best_same_protocol");
        let read: TableResult = serde_json::from_value(old).unwrap();
        assert!(read.rows[0].best.is_none() && read.best_same_protocol.is_none());
        assert!(!read.markdown().contains("best epoch"));
    }

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (s - 1.0).abs() < 1e-12);
        assert_eq!(mean_std(&[5.0]), (5.0, 0.0));
    }

    #[test]
    fn json_schema_has_the_agreed_keys() {
        let t = TableResult {
            warnings: Vec::new(),
            table: "t".into(),
            dataset: "d".into(),
            scale: "quick".into(),
            seeds: vec![0, 1],
            rows: vec![RowResult::new("KD", "top1", vec![1.0, 3.0], Some(73.33))],
            columns: Vec::new(),
            web: None,
            best_note: String::new(),
            best_same_protocol: None,
        };
        let v = serde_json::to_value(&t).unwrap();
        for k in ["table", "dataset", "scale", "seeds", "rows"] {
            assert!(v.get(k).is_some(), "{k}");
        }
        let row = &v["rows"][0];
        for k in ["method", "metric", "mean", "std", "per_seed", "paper"] {
            assert!(row.get(k).is_some(), "{k}");
        }
        assert!(t
            .markdown()
            .contains("| KD | top1 | 2.00 ± 1.41 | 1.00, 3.00 | 73.33 |"));
        assert!(v.get("columns").is_none() && row.get("columns").is_none());
    }

    #[test]
    fn extra_columns_print_in_their_format_and_missing_values_as_a_dash() {
        let mut row = RowResult::new("SBD", "top1", vec![80.0], None);
        row.columns = vec![
            ColumnValue {
                header: "participations".into(),
                mean: Some(1_234_567.4),
                per_seed: vec![1_234_567.4],
            },
            ColumnValue {
                header: "budget".into(),
                mean: Some(48.26),
                per_seed: vec![48.26],
            },
        ];
        let t = TableResult {
            warnings: Vec::new(),
            table: "t".into(),
            dataset: "d".into(),
            scale: "quick".into(),
            seeds: vec![0],
            rows: vec![row],
            columns: vec![
                ColumnHead {
                    header: "participations".into(),
                    format: ColumnFormat::Int,
                },
                ColumnHead {
                    header: "teacher".into(),
                    format: ColumnFormat::Int,
                },
                ColumnHead {
                    header: "budget".into(),
                    format: ColumnFormat::Pct,
                },
            ],
            web: None,
            best_note: String::new(),
            best_same_protocol: None,
        };
        let md = t.markdown();
        assert!(
            md.contains("| per seed | participations | teacher | budget | paper |"),
            "{md}"
        );
        assert!(md.contains("| 80.00 | 1,234,567 | — | 48.3 % | n/a |"), "{md}");
        assert_eq!(thousands(-1000), "-1,000");
        assert_eq!(thousands(999), "999");
    }

    #[test]
    fn the_budget_column_gives_updates_and_images_per_row_and_their_range_over_seeds() {
        let mut teacher = RowResult::new("teacher", "top1", vec![82.0, 83.0], None);
        teacher.budget = Some(Budget {
            updates_per_seed: vec![1_540, 1_760],
            images_per_seed: vec![49_280, 56_320],
            epochs_per_seed: vec![7, 8],
            kept_epoch_per_seed: vec![5, 6],
        });
        let mut kd = RowResult::new("KD", "top1", vec![76.0, 77.0], None);
        kd.budget = Some(Budget {
            updates_per_seed: vec![2_480, 2_480],
            images_per_seed: vec![79_360, 79_360],
            epochs_per_seed: vec![10, 10],
            kept_epoch_per_seed: Vec::new(),
        });
        let given = RowResult::new("teacher (given)", "top1", vec![90.0], None);
        let t = TableResult {
            rows: vec![teacher, kd, given],
            ..TableResult::written_elsewhere("t", "d", "quick", vec![0, 1])
        };
        let md = t.markdown();
        assert!(
            md.contains("| per seed | budget (updates / images seen) | paper |"),
            "{md}"
        );
        assert!(
            md.contains("| 82.00, 83.00 | 1,540–1,760 / 49,280–56,320 (kept epochs 5, 6) | n/a |"),
            "{md}"
        );
        assert!(md.contains("| 76.00, 77.00 | 2,480 / 79,360 | n/a |"), "{md}");
        assert!(md.contains("| 90.00 | — | n/a |"), "{md}");
        // Without any trained row there is no budget column.
        let mut bare = t.clone();
        bare.rows.iter_mut().for_each(|r| r.budget = None);
        assert!(!bare.markdown().contains("budget"));
    }
}
