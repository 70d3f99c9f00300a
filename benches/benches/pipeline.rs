//! Criterion bench target `pipeline`: the rows of `kd_benches::cases::for_target("pipeline")`.
//!
//! Run through `cargo xtask bench` to compare with PyTorch; alone, `cargo bench -p kd-benches
//! --bench pipeline [-- FILTER]` times the Rust side only (settings: see `kd_benches::settings`).

#![allow(missing_docs)] // criterion_group! generates an undocumented public fn

use criterion::{criterion_group, criterion_main, Criterion};

fn rows(c: &mut Criterion) {
    kd_benches::criterion_run::bench_target(c, "pipeline");
}

criterion_group!(benches, rows);
criterion_main!(benches);
