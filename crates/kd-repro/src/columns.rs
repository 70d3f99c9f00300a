//! Extra table columns and plots fed by the methods' own reports.
//!
//! A method reports what only it knows (participation counts, selected subsets) through
//! `Distiller::report`, which the trainer stores in each run's report. Tables pick numbers out
//! of those reports by key, so a new per-row number needs a config entry, not runner code.

use kd_core::train::TrainReport;

use serde::{Deserialize, Serialize};

use crate::plot::Curve;
use crate::results::{mean_std, ColumnFormat, ColumnHead, ColumnValue};

/// Which network's report a column reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnOf {
    /// The teacher: a teacher row's own report, a student row's teacher's report.
    Teacher,
    /// A student row's own report (empty for teacher rows).
    Student,
    /// The row's own report, teacher or student.
    Row,
}

/// An extra column: the mean over seeds of a number in the methods' reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    /// Column header.
    pub header: String,
    /// Key of the number in the report; dots descend into objects (`"a.b"`).
    pub key: String,
    /// Whose report.
    pub of: ColumnOf,
    /// How the number is printed.
    #[serde(default)]
    pub format: ColumnFormat,
}

/// A plot of the test metric (mean over seeds) against a per-epoch quantity of each row's report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlotSpec {
    /// PNG file name in the run folder.
    pub file: String,
    /// Title.
    pub title: String,
    /// Key of an array with one number per epoch in each row's report.
    pub x_key: String,
    /// Plot the running sum of that array (e.g. cumulative participations).
    #[serde(default)]
    pub cumulative: bool,
    /// x-axis label.
    pub x_label: String,
}

/// Whether a table row is a teacher or a student row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowKind {
    /// One of the teachers.
    Teacher,
    /// A student row.
    Student,
}

/// The number at `key` (dots descend into objects) of a report, if it is a number.
pub fn lookup(report: &serde_json::Value, key: &str) -> Option<f64> {
    key.split('.')
        .try_fold(report, |v, k| v.get(k))
        .and_then(serde_json::Value::as_f64)
}

/// The headers of `columns`.
pub fn heads(columns: &[Column]) -> Vec<ColumnHead> {
    columns
        .iter()
        .map(|c| ColumnHead {
            header: c.header.clone(),
            format: c.format,
        })
        .collect()
}

/// A row's values in `columns`. `own`: the row's per-seed reports; `teacher`: the per-seed
/// reports of the teacher it distils from (empty when it uses none).
pub fn values(
    columns: &[Column],
    kind: RowKind,
    own: &[TrainReport],
    teacher: &[TrainReport],
) -> Vec<ColumnValue> {
    columns
        .iter()
        .map(|c| {
            let source: &[TrainReport] = match (c.of, kind) {
                (ColumnOf::Row, _) | (ColumnOf::Teacher, RowKind::Teacher) => own,
                (ColumnOf::Teacher, RowKind::Student) => teacher,
                (ColumnOf::Student, RowKind::Student) => own,
                (ColumnOf::Student, RowKind::Teacher) => &[],
            };
            let per_seed: Vec<f64> = source
                .iter()
                .filter_map(|r| lookup(&r.distiller, &c.key))
                .collect();
            ColumnValue {
                header: c.header.clone(),
                mean: (!per_seed.is_empty()).then(|| mean_std(&per_seed).0),
                per_seed,
            }
        })
        .collect()
}

/// Test accuracy (mean over seeds) against the per-epoch quantity `spec.x_key` of each epoch
/// (running sum when `spec.cumulative`, mean over seeds), at the epochs every seed evaluated.
/// Empty when the reports lack the quantity.
pub fn report_curve(label: &str, reports: &[TrainReport], spec: &PlotSpec) -> Curve {
    let series: Vec<Vec<f64>> = reports
        .iter()
        .map(|r| {
            let v: Vec<f64> = r.distiller[&spec.x_key]
                .as_array()
                .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
                .unwrap_or_default();
            if spec.cumulative {
                v.iter()
                    .scan(0.0, |acc, x| {
                        *acc += x;
                        Some(*acc)
                    })
                    .collect()
            } else {
                v
            }
        })
        .collect();
    let mut points = Vec::new();
    if let Some(first) = reports.first() {
        for e in 0..first.history.len() {
            let xs: Vec<f64> = series.iter().filter_map(|s| s.get(e).copied()).collect();
            let ys: Vec<f64> = reports
                .iter()
                .filter_map(|r| r.history.get(e).and_then(|h| h.test_metric))
                .collect();
            if xs.len() == reports.len() && ys.len() == reports.len() {
                points.push((mean_std(&xs).0, mean_std(&ys).0));
            }
        }
    }
    Curve::new(label, points)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::ColumnFormat;
    use kd_core::train::EpochRecord;

    fn report(acc: &[f64], distiller: serde_json::Value) -> TrainReport {
        TrainReport {
            metric: "top1".into(),
            history: acc
                .iter()
                .enumerate()
                .map(|(e, &a)| EpochRecord {
                    epoch: e,
                    lr: 0.1,
                    loss: 1.0,
                    terms: Default::default(),
                    train_acc: a,
                    test_metric: Some(a),
                    held_metric: None,
                    samples: 10,
                    updates: 1,
                    skipped: 0,
                    seconds: 0.0,
                })
                .collect(),
            final_metric: *acc.last().unwrap(),
            best_metric: *acc.last().unwrap(),
            distiller,
            kept_epoch: None,
        }
    }

    fn col(header: &str, key: &str, of: ColumnOf) -> Column {
        Column {
            header: header.into(),
            key: key.into(),
            of,
            format: ColumnFormat::Int,
        }
    }

    #[test]
    fn columns_read_the_right_report() {
        let t = [report(
            &[50.0],
            serde_json::json!({"participations": 100, "x": {"y": 2}}),
        )];
        let s = [
            report(&[40.0], serde_json::json!({"participations": 30})),
            report(&[41.0], serde_json::json!({"participations": 50})),
        ];
        let cols = [
            col("teacher", "participations", ColumnOf::Teacher),
            col("student", "participations", ColumnOf::Student),
            col("nested", "x.y", ColumnOf::Row),
        ];
        let tv = values(&cols, RowKind::Teacher, &t, &[]);
        assert_eq!(
            tv.iter().map(|v| v.mean).collect::<Vec<_>>(),
            [Some(100.0), None, Some(2.0)]
        );
        let sv = values(&cols, RowKind::Student, &s, &t);
        assert_eq!(
            sv.iter().map(|v| v.mean).collect::<Vec<_>>(),
            [Some(100.0), Some(40.0), None]
        );
        assert_eq!(sv[1].per_seed, [30.0, 50.0]);
    }

    #[test]
    fn cumulative_curve_averages_over_seeds() {
        let r = [
            report(&[10.0, 20.0], serde_json::json!({"p": [4, 2]})),
            report(&[30.0, 40.0], serde_json::json!({"p": [6, 4]})),
        ];
        let spec = PlotSpec {
            file: "f.png".into(),
            title: "t".into(),
            x_key: "p".into(),
            cumulative: true,
            x_label: "x".into(),
        };
        assert_eq!(report_curve("a", &r, &spec).points, [(5.0, 20.0), (8.0, 30.0)]);
        let none = [report(&[1.0], serde_json::Value::Null)];
        assert!(report_curve("b", &none, &spec).points.is_empty());
    }
}
