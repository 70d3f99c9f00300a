//! Registers rows with criterion.
//!
//! Every bench target (`kernels`, `step`, `pipeline`) is this one function over its rows, so
//! ids, sample sizes and throughputs come from the [`Spec`]s and match the check manifest.

use criterion::{BenchmarkId, Criterion, Throughput};

use crate::case::Spec;
use crate::cases;
use crate::settings::Settings;

/// Benches the rows of `target` (see [`cases::for_target`]) with the settings from the
/// environment; rows listed in `KD_BENCH_SKIP` are left out. Criterion's command-line filter
/// selects rows by id, `kind/mode/label` (`cargo xtask bench` runs one exact id at a time).
///
/// # Panics
/// When the settings are invalid (e.g. `KD_BENCH_DEVICE=cuda` without a GPU) or a row fails to
/// build or run: a benchmark that cannot run has no number to report.
pub fn bench_target(c: &mut Criterion, target: &str) {
    let settings = Settings::from_env().unwrap_or_else(|e| panic!("bench settings: {e}"));
    settings.apply_threads();
    for spec in cases::for_target(target, &settings) {
        bench_spec(c, &spec, &settings);
    }
}

fn bench_spec(c: &mut Criterion, spec: &Spec, settings: &Settings) {
    let ids: Vec<_> = spec
        .modes
        .iter()
        .map(|&m| (m, spec.id(m)))
        .filter(|(_, id)| !settings.skip.contains(id))
        .collect();
    // Build only what criterion's filter will run (building a row may allocate gigabytes).
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted: Vec<_> = ids
        .into_iter()
        .filter(|(_, id)| match &filter {
            Some(f) => regex::Regex::new(f).map_or(true, |re| re.is_match(id)),
            None => true,
        })
        .collect();
    if wanted.is_empty() {
        return;
    }
    let mut case = (spec.build)(settings).unwrap_or_else(|e| panic!("{}: cannot build: {e}", spec.kind));
    let mut group = c.benchmark_group(spec.kind);
    group.sample_size(spec.sample_size);
    if let Some(n) = spec.throughput {
        group.throughput(Throughput::Elements(n));
    }
    for (mode, id) in wanted {
        group.bench_function(BenchmarkId::new(mode.name(), spec.label), |b| {
            b.iter(|| case.run(mode).unwrap_or_else(|e| panic!("{id}: {e}")))
        });
    }
    group.finish();
}
