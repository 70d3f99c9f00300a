//! The comparison table: criterion's medians, the reference's medians and checks, one row per
//! `kind/mode/label`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::interleave::Timed;
use super::json::Json;

/// One line of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// `kind/mode/label`.
    pub id: String,
    /// The shape in words.
    pub shape: String,
    /// Images per iteration, for the data pipelines.
    pub throughput: Option<f64>,
    /// Rust median, ns.
    pub rust_ns: Option<f64>,
    /// PyTorch median, ns.
    pub torch_ns: Option<f64>,
    /// Whether the value check passed (`None`: the reference did not run this row).
    pub check_ok: Option<bool>,
    /// The check's largest error and where.
    pub check_note: String,
    /// The ratio this row should reach.
    pub target: f64,
    /// Least bytes one iteration moves (for a bandwidth figure on a GPU).
    pub min_bytes: Option<f64>,
    /// Every median taken, per side.
    pub rounds: Timed,
}

impl Row {
    /// PyTorch median over Rust median: above 1, kd-rs is faster.
    pub fn ratio(&self) -> Option<f64> {
        Some(self.torch_ns? / self.rust_ns?)
    }
}

/// Run-wide facts printed above the table.
pub struct Meta {
    /// `cpu` or `cuda`.
    pub device: String,
    /// Threads of both sides.
    pub threads: usize,
    /// `--quick`.
    pub quick: bool,
    /// `--filter`.
    pub filter: Option<String>,
    /// Warm-up seconds.
    pub warm_up: f64,
    /// Measurement seconds.
    pub measure: f64,
    /// The reference's results (versions, machine).
    pub reference: Json,
    /// The `OMP_WAIT_POLICY` both sides ran with.
    pub omp_wait_policy: String,
}

/// The ratio a row should reach: 2 for data pipelines, 1.1 for the training step, 1.3 for
/// kernels at small shapes (per-call overhead), 1 at real shapes.
pub fn target(id: &str) -> f64 {
    if id.starts_with("cifar_pipeline/") || id.starts_with("seg_pipeline/") {
        2.0
    } else if id.starts_with("kd_step/") {
        1.1
    } else if id.ends_with("/small") {
        1.3
    } else {
        1.0
    }
}

/// Joins the manifest (shapes), the reference's checks and both sides' medians.
pub fn rows(manifest: &Json, reference: &Json, timed: &BTreeMap<String, Timed>) -> Vec<Row> {
    let by_id: BTreeMap<&str, &Json> = reference
        .get("rows")
        .map(|r| r.arr())
        .unwrap_or_default()
        .iter()
        .filter_map(|r| Some((r.get("id")?.str()?, r)))
        .collect();
    let mut out = Vec::new();
    for spec in manifest.get("rows").map(Json::arr).unwrap_or_default() {
        let shape = spec.get("shape").and_then(Json::str).unwrap_or("").to_string();
        let throughput = spec.get("throughput").and_then(Json::num);
        for m in spec.get("modes").map(Json::arr).unwrap_or_default() {
            let Some(id) = m.get("id").and_then(Json::str) else {
                continue;
            };
            let r = by_id.get(id);
            let check_ok = r.and_then(|r| r.get("check_ok")).and_then(Json::bool);
            let t = timed.get(id).filter(|_| check_ok == Some(true));
            out.push(Row {
                id: id.to_string(),
                shape: shape.clone(),
                throughput,
                rust_ns: t.and_then(Timed::rust_best),
                torch_ns: t.and_then(Timed::torch_best),
                rounds: t.cloned().unwrap_or_default(),
                check_ok,
                check_note: r
                    .and_then(|r| r.get("check_note"))
                    .and_then(Json::str)
                    .unwrap_or("")
                    .to_string(),
                target: target(id),
                min_bytes: m.get("min_bytes").and_then(Json::num),
            });
        }
    }
    out
}

/// A duration in ns, in the unit that reads best.
pub fn fmt_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.1} µs", ns / 1e3)
    }
}

fn cell(ns: Option<f64>, row: &Row) -> String {
    match (ns, row.throughput) {
        (Some(t), Some(n)) => format!("{} ({:.0} img/s)", fmt_ns(t), n / (t / 1e9)),
        (Some(t), None) => fmt_ns(t),
        (None, _) => "—".into(),
    }
}

fn bandwidth(ns: Option<f64>, row: &Row, peak: Option<f64>) -> String {
    match (ns, row.min_bytes) {
        (Some(t), Some(b)) => {
            let gbs = b / t;
            match peak {
                Some(p) => format!("{gbs:.0} GB/s ({:.0} %)", 100.0 * gbs * 1e9 / p),
                None => format!("{gbs:.0} GB/s"),
            }
        }
        _ => String::new(),
    }
}

/// The table as Markdown, with the run's facts above it.
pub fn markdown(rows: &[Row], meta: &Meta) -> String {
    let r = &meta.reference;
    let s = |k: &str| r.get(k).and_then(Json::str).unwrap_or("?").to_string();
    let cuda = meta.device == "cuda";
    let peak = r.get("peak_copy_bandwidth").and_then(Json::num);
    let mut md = String::new();
    md.push_str(&format!(
        "device: {}{} · machine: {} ({} threads available) · threads (libtorch intra-op = rayon = DataLoader workers): {} · \
         torch {} (Python {}) · libtorch 2.13.0 · OMP_WAIT_POLICY {} · glibc MALLOC_MMAP_THRESHOLD_ 32 MiB, MALLOC_TRIM_THRESHOLD_ 4 GiB (both sides) · warm-up {} s, measurement {} s, {}{}{}\n\n",
        meta.device,
        r.get("gpu").and_then(Json::str).map(|g| format!(" ({g})")).unwrap_or_default(),
        s("cpu"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        meta.threads,
        s("torch"),
        s("python"),
        meta.omp_wait_policy,
        meta.warm_up,
        meta.measure,
        "two medians per side, the lower kept",
        if meta.quick { " (--quick)" } else { "" },
        meta.filter.as_ref().map(|f| format!(" · filter {f:?}")).unwrap_or_default(),
    ));
    md.push_str("| row | shape | Rust median | PyTorch median | PyTorch / Rust | target | check |");
    if cuda {
        md.push_str(" Rust bandwidth | PyTorch bandwidth |");
    }
    md.push_str("\n|---|---|---|---|---|---|---|");
    if cuda {
        md.push_str("---|---|");
    }
    md.push('\n');
    for row in rows {
        let ratio = row.ratio().map_or("—".into(), |x| {
            let mark = if x >= row.target { "" } else { " (miss)" };
            format!("{x:.2}×{mark}")
        });
        let check = match row.check_ok {
            Some(true) => "ok".to_string(),
            Some(false) => format!("MISMATCH: {}", row.check_note),
            None => "not run".to_string(),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | ≥ {} | {} |",
            row.id,
            row.shape,
            cell(row.rust_ns, row),
            cell(row.torch_ns, row),
            ratio,
            row.target,
            check
        ));
        if cuda {
            md.push_str(&format!(
                " {} | {} |",
                bandwidth(row.rust_ns, row, peak),
                bandwidth(row.torch_ns, row, peak)
            ));
        }
        md.push('\n');
    }
    if let (true, Some(p)) = (cuda, peak) {
        md.push_str(&format!(
            "\nPeak: a device-to-device copy reaches {:.0} GB/s on this GPU; bandwidth = least bytes the \
             loss must move / median time.\n",
            p / 1e9
        ));
    }
    md
}

/// `results.json`.
pub fn json(rows: &[Row], meta: &Meta) -> Json {
    let num = |v: Option<f64>| v.map_or(Json::Null, Json::Num);
    let rows = rows
        .iter()
        .map(|r| {
            Json::Obj(vec![
                ("id".into(), Json::Str(r.id.clone())),
                ("shape".into(), Json::Str(r.shape.clone())),
                ("rust_median_ns".into(), num(r.rust_ns)),
                ("pytorch_median_ns".into(), num(r.torch_ns)),
                ("ratio".into(), num(r.ratio())),
                ("target".into(), Json::Num(r.target)),
                ("images_per_iteration".into(), num(r.throughput)),
                ("check_ok".into(), r.check_ok.map_or(Json::Null, Json::Bool)),
                ("check_note".into(), Json::Str(r.check_note.clone())),
                ("min_bytes".into(), num(r.min_bytes)),
                (
                    "rust_medians_ns".into(),
                    Json::Arr(r.rounds.rust.iter().map(|&v| Json::Num(v)).collect()),
                ),
                (
                    "pytorch_medians_ns".into(),
                    Json::Arr(r.rounds.torch.iter().map(|&v| Json::Num(v)).collect()),
                ),
            ])
        })
        .collect();
    let r = &meta.reference;
    let pick = |k: &str| r.get(k).cloned().unwrap_or(Json::Null);
    Json::Obj(vec![
        ("device".into(), Json::Str(meta.device.clone())),
        ("threads".into(), Json::Num(meta.threads as f64)),
        ("quick".into(), Json::Bool(meta.quick)),
        ("filter".into(), meta.filter.clone().map_or(Json::Null, Json::Str)),
        ("warm_up_s".into(), Json::Num(meta.warm_up)),
        ("measurement_s".into(), Json::Num(meta.measure)),
        ("omp_wait_policy".into(), Json::Str(meta.omp_wait_policy.clone())),
        ("libtorch".into(), Json::Str("2.13.0".into())),
        ("torch".into(), pick("torch")),
        ("python".into(), pick("python")),
        ("cpu".into(), pick("cpu")),
        ("gpu".into(), pick("gpu")),
        ("peak_copy_bandwidth".into(), pick("peak_copy_bandwidth")),
        ("check_tolerance".into(), pick("tolerance")),
        ("rows".into(), Json::Arr(rows)),
    ])
}

/// `YYYYMMDD-HHMMSS` (UTC) of `t`.
pub fn timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_the_row_kind() {
        assert_eq!(target("kd_loss/forward/small"), 1.3);
        assert_eq!(target("cwd/forward_backward/real"), 1.0);
        assert_eq!(target("kd_step/step/real"), 1.1);
        assert_eq!(target("seg_pipeline/epoch/quick"), 2.0);
    }

    #[test]
    fn timestamps_are_utc_civil_dates() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        assert_eq!(timestamp(t), "20231114-221320");
    }

    #[test]
    fn rows_join_both_sides_and_drop_failed_checks() {
        let manifest = Json::parse(
            r#"{"rows": [{"shape": "[64, 100]", "throughput": null, "modes": [
                {"id": "kd_loss/forward/small", "min_bytes": null},
                {"id": "kd_loss/forward_backward/small", "min_bytes": null}]}]}"#,
        )
        .unwrap();
        let reference = Json::parse(
            r#"{"rows": [{"id": "kd_loss/forward/small", "check_ok": true, "median_ns": 300.0, "check_note": ""},
                {"id": "kd_loss/forward_backward/small", "check_ok": false, "median_ns": null, "check_note": "grad.s"}]}"#,
        )
        .unwrap();
        let timed: BTreeMap<String, Timed> = [
            (
                "kd_loss/forward/small".to_string(),
                Timed {
                    rust: vec![100.0, 120.0],
                    torch: vec![330.0, 300.0],
                },
            ),
            (
                "kd_loss/forward_backward/small".to_string(),
                Timed {
                    rust: vec![50.0],
                    torch: vec![60.0],
                },
            ),
        ]
        .into();
        let rows = rows(&manifest, &reference, &timed);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].ratio(), Some(3.0));
        assert_eq!(rows[1].rust_ns, None, "a failed check is not timed");
        assert_eq!(rows[1].check_ok, Some(false));
    }
}
