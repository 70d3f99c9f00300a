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
        }
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
        s.push_str("| method | metric | ours (mean ± std) | per seed | paper |\n|---|---|---|---|---|\n");
        for r in &self.rows {
            let per: Vec<String> = r.per_seed.iter().map(|v| format!("{v:.2}")).collect();
            let paper = r.paper.map_or("n/a".to_string(), |p| format!("{p:.2}"));
            s.push_str(&format!(
                "| {} | {} | {:.2} ± {:.2} | {} | {} |\n",
                r.method,
                r.metric,
                r.mean,
                r.std,
                per.join(", "),
                paper
            ));
        }
        s
    }

    /// Writes `results.json` and `results.md` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        kd_core::train::checkpoint::write_atomic(&dir.join("results.json"), json.as_bytes())?;
        kd_core::train::checkpoint::write_atomic(&dir.join("results.md"), self.markdown().as_bytes())
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
            table: "t".into(),
            dataset: "d".into(),
            scale: "quick".into(),
            seeds: vec![0, 1],
            rows: vec![RowResult::new("KD", "top1", vec![1.0, 3.0], Some(73.33))],
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
    }
}
