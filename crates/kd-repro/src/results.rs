//! The results format shared by every table.
//!
//! `results.json` is the machine-readable record (schema below); `results.md` is the same table
//! for people. Both sit beside the resolved `config.toml` of the run, so a number never travels
//! without the configuration that produced it.

use std::path::Path;

use anyhow::{Context, Result};
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
            extra: serde_json::Value::Null,
            columns: Vec::new(),
            teacher_warning: None,
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
        s.push_str(&format!(
            "| method | metric | ours (mean ± std) | per seed |{extra_head} paper |\n|---|---|---|---|{extra_rule}---|\n"
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
            s.push_str(&format!(
                "| {} | {} | {ours} | {} |{extra} {} |\n",
                r.method,
                r.metric,
                per.join(", "),
                paper
            ));
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
}
