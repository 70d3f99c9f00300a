//! The synchronised BatchNorm between two real processes over loopback: each rank normalises
//! its part of one fixed global batch, and everything a single process computes over the
//! whole batch (outputs, running statistics, the input's gradient, the affine gradients
//! summed over the ranks) must come out the same.

mod common;

use std::rc::Rc;
use std::time::Duration;

use common::{both_pass, launch, rendezvous, role};
use kd_core::models::{batch_norm2d, with_norm, NormMode};
use kd_dist::{BatchNormArgs, Collective, ProcessGroup, ReduceOp};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

const MOMENTUM: f64 = 0.1;
const EPS: f64 = 1e-5;
const TOL: f64 = 1e-5;

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    if a.numel() == 0 {
        return 0.0;
    }
    (a - b).abs().max().double_value(&[])
}

fn close(what: &str, a: &Tensor, b: &Tensor) {
    let d = max_diff(a, b);
    assert!(d < TOL, "{what}: max difference {d:e}");
}

/// One global batch of `shape`, split `shards` between ranks 0 and 1, with or without the
/// affine parameters, against a single process's `batch_norm` over all of it.
fn matches_one_process(pg: &ProcessGroup, shape: &[i64], shards: [i64; 2], affine: bool, seed: i64) {
    assert_eq!(shards[0] + shards[1], shape[0]);
    let rank = pg.rank();
    tch::manual_seed(seed);
    let opts = (Kind::Float, Device::Cpu);
    let c = shape[1];
    let x_all = Tensor::randn(shape, opts) * 2.0 + 3.0;
    let r_all = Tensor::randn(shape, opts);
    let w0 = Tensor::rand([c], opts) + 0.5;
    let b0 = Tensor::randn([c], opts);
    let rm0 = Tensor::randn([c], opts);
    let rv0 = Tensor::rand([c], opts) + 0.5;

    // One process, the whole batch.
    let x_ref = x_all.copy().set_requires_grad(true);
    let w_ref = w0.copy().set_requires_grad(true);
    let b_ref = b0.copy().set_requires_grad(true);
    let (rm_ref, rv_ref) = (rm0.copy(), rv0.copy());
    let y_ref = x_ref.batch_norm(
        affine.then_some(&w_ref),
        affine.then_some(&b_ref),
        Some(&rm_ref),
        Some(&rv_ref),
        true,
        MOMENTUM,
        EPS,
        false,
    );
    (&y_ref * &r_all).sum(Kind::Float).backward();

    // This rank, its part.
    let (start, n) = if rank == 0 {
        (0, shards[0])
    } else {
        (shards[0], shards[1])
    };
    let x = x_all.narrow(0, start, n).copy().set_requires_grad(true);
    let w = w0.copy().set_requires_grad(true);
    let b = b0.copy().set_requires_grad(true);
    let (rm, rv) = (rm0.copy(), rv0.copy());
    let args = BatchNormArgs {
        weight: affine.then_some(&w),
        bias: affine.then_some(&b),
        running_mean: &rm,
        running_var: &rv,
        momentum: MOMENTUM,
        eps: EPS,
    };
    let y = pg.sync_batch_norm(&x, &args).unwrap();
    assert!(y.requires_grad());
    (&y * r_all.narrow(0, start, n)).sum(Kind::Float).backward();

    let tag = format!("{shape:?} split {shards:?}, affine {affine}, rank {rank}");
    close(&format!("output ({tag})"), &y, &y_ref.narrow(0, start, n));
    close(&format!("running mean ({tag})"), &rm, &rm_ref);
    close(&format!("running var ({tag})"), &rv, &rv_ref);
    close(
        &format!("input gradient ({tag})"),
        &x.grad(),
        &x_ref.grad().narrow(0, start, n),
    );
    if affine {
        // Each rank holds its own part of the affine gradients; their sum is the whole's.
        let mut g = vec![w.grad(), b.grad()];
        pg.all_reduce(&mut g, ReduceOp::Sum).unwrap();
        close(&format!("weight gradient ({tag})"), &g[0], &w_ref.grad());
        close(&format!("bias gradient ({tag})"), &g[1], &b_ref.grad());
    } else {
        assert!(!w.grad().defined() && !b.grad().defined());
    }
}

#[test]
fn an_even_split_matches_one_process_over_the_whole_batch() {
    if let Some((rank, port)) = role() {
        let pg = ProcessGroup::gloo(&rendezvous(rank, port, Duration::from_secs(30))).unwrap();
        matches_one_process(&pg, &[6, 3, 4, 4], [3, 3], true, 7);
        pg.barrier().unwrap();
        return;
    }
    both_pass("an_even_split_matches_one_process_over_the_whole_batch");
}

#[test]
fn uneven_splits_flat_inputs_and_no_affine_match_one_process() {
    if let Some((rank, port)) = role() {
        let pg = ProcessGroup::gloo(&rendezvous(rank, port, Duration::from_secs(30))).unwrap();
        matches_one_process(&pg, &[6, 3, 4, 4], [4, 2], true, 11);
        matches_one_process(&pg, &[6, 3, 4, 4], [5, 1], false, 12);
        matches_one_process(&pg, &[10, 5], [7, 3], true, 13);
        // A rank with no sample at all still takes part.
        matches_one_process(&pg, &[3, 2, 2, 2], [3, 0], true, 14);

        // A bad affine parameter is an error on every rank, before any exchange.
        let opts = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([2, 3], opts);
        let (rm, rv, w) = (
            Tensor::zeros([3], opts),
            Tensor::ones([3], opts),
            Tensor::ones([4], opts),
        );
        let bad = BatchNormArgs {
            weight: Some(&w),
            bias: None,
            running_mean: &rm,
            running_var: &rv,
            momentum: MOMENTUM,
            eps: EPS,
        };
        let e = pg.sync_batch_norm(&x, &bad).unwrap_err().to_string();
        assert!(
            e.starts_with("c10d sync_batch_norm: ") && e.contains("4 values for 3 channels"),
            "{e}"
        );
        // One value per channel in the whole batch is an error on every rank too.
        let one = Tensor::randn([1 - rank as i64, 3], opts);
        let args = BatchNormArgs { weight: None, ..bad };
        let e = pg.sync_batch_norm(&one, &args).unwrap_err().to_string();
        assert!(e.contains("more than 1 value per channel"), "{e}");
        pg.barrier().unwrap();
        return;
    }
    both_pass("uneven_splits_flat_inputs_and_no_affine_match_one_process");
}

#[test]
fn kd_cores_batchnorm_in_sync_mode_runs_through_the_group() {
    if let Some((rank, port)) = role() {
        let pg = ProcessGroup::gloo(&rendezvous(rank, port, Duration::from_secs(30))).unwrap();
        let group: Rc<dyn Collective> = Rc::new(pg);
        kd_core::dist::set_world(Some(group.clone()));
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = nn::BatchNormConfig {
            ws_init: nn::Init::Const(1.0),
            ..Default::default()
        };
        let bn = batch_norm2d(vs.root() / "bn", 2, cfg);
        // Rank 0 holds zeros, rank 1 ones: the global mean is 0.5 on every rank.
        let x = Tensor::full([2, 2, 3, 3], rank as f64, (Kind::Float, Device::Cpu));
        let y = with_norm(NormMode::Sync, || bn.forward_t(&x, true));
        let want = if rank == 0 { -1.0 } else { 1.0 };
        assert!((y.mean(Kind::Float).double_value(&[]) - want).abs() < 1e-3, "{y}");
        let rm = Vec::<f32>::try_from(bn.running_mean()).unwrap();
        assert!(rm.iter().all(|&m| (m - 0.05).abs() < 1e-6), "{rm:?}");
        group.barrier().unwrap();
        kd_core::dist::set_world(None);
        return;
    }
    both_pass("kd_cores_batchnorm_in_sync_mode_runs_through_the_group");
}

#[test]
fn a_peer_lost_before_the_backward_pass_makes_backward_fail_naming_it() {
    if let Some((rank, port)) = role() {
        let pg = ProcessGroup::gloo(&rendezvous(rank, port, Duration::from_secs(5))).unwrap();
        let opts = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([3, 2, 2, 2], opts).set_requires_grad(true);
        let (rm, rv) = (Tensor::zeros([2], opts), Tensor::ones([2], opts));
        let args = BatchNormArgs {
            weight: None,
            bias: None,
            running_mean: &rm,
            running_var: &rv,
            momentum: MOMENTUM,
            eps: EPS,
        };
        let y = pg.sync_batch_norm(&x, &args).unwrap();
        pg.barrier().unwrap();
        if rank == 1 {
            std::process::abort();
        }
        let e = (&y * &y).sum(Kind::Float).f_backward().unwrap_err().to_string();
        assert!(
            e.contains("c10d sync_batch_norm backward: rank 1 of 2 is gone ("),
            "{e}"
        );
        eprintln!("rank 0 saw: {e}");
        return;
    }
    let out = launch("a_peer_lost_before_the_backward_pass_makes_backward_fail_naming_it");
    assert!(
        out[0].0,
        "rank 0 must see the loss as an error from backward: {}",
        out[0].1
    );
    assert!(!out[1].0, "rank 1 aborted");
}
