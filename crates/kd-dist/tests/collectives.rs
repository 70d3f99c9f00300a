//! Collectives between real processes over loopback: each test starts copies of this test
//! binary as the ranks, so the rendezvous, the Gloo transport and the failure paths are the
//! ones a launched job goes through.

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::{both_pass, finish, launch, rendezvous, role, spawn};
use kd_dist::{Collective, ProcessGroup, ReduceOp};
use tch::{Kind, Tensor};

fn full(v: f64) -> Tensor {
    Tensor::full([4], v, (Kind::Float, tch::Device::Cpu))
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
}

#[test]
fn two_processes_reduce_broadcast_gather_and_meet() {
    if let Some((rank, port)) = role() {
        let pg = ProcessGroup::gloo(&rendezvous(rank, port, Duration::from_secs(30))).unwrap();
        assert_eq!((pg.rank(), pg.world(), pg.device()), (rank, 2, tch::Device::Cpu));
        let r = rank as f64;
        let mut ts = vec![
            full(r + 1.0),
            Tensor::from_slice(&[r, 10.0 * r]).to_kind(Kind::Double),
        ];
        pg.all_reduce(&mut ts, ReduceOp::Sum).unwrap();
        assert_eq!(values(&ts[0]), [3.0; 4]);
        assert_eq!(Vec::<f64>::try_from(&ts[1]).unwrap(), [1.0, 10.0]);
        let mut m = vec![full(r + 1.0)];
        pg.all_reduce(&mut m, ReduceOp::Mean).unwrap();
        assert_eq!(values(&m[0]), [1.5; 4]);
        let mut mx = vec![full(r)];
        pg.all_reduce(&mut mx, ReduceOp::Max).unwrap();
        assert_eq!(values(&mx[0]), [1.0; 4]);
        let mut b = vec![full(7.0 * r)];
        pg.broadcast(&mut b, 1).unwrap();
        assert_eq!(values(&b[0]), [7.0; 4]);
        let g = pg.all_gather(&full(r)).unwrap();
        assert_eq!(g.iter().map(|t| values(t)[0]).collect::<Vec<_>>(), [0.0, 1.0]);
        pg.barrier().unwrap();
        // The same through kd-core's trait object, as the trainer sees the group.
        let dynamic: &dyn Collective = &pg;
        let mut mn = vec![full(r)];
        dynamic.all_reduce(&mut mn, ReduceOp::Min).unwrap();
        assert_eq!(values(&mn[0]), [0.0; 4]);
        assert_eq!((dynamic.rank(), dynamic.world()), (rank, 2));
        dynamic.barrier().unwrap();
        // A tensor the group cannot take is an error before any exchange.
        let mut strided = vec![Tensor::zeros([4, 4], (Kind::Float, tch::Device::Cpu)).transpose(0, 1)];
        assert!(pg
            .all_reduce(&mut strided, ReduceOp::Sum)
            .unwrap_err()
            .to_string()
            .contains("not contiguous"));
        pg.barrier().unwrap();
        return;
    }
    both_pass("two_processes_reduce_broadcast_gather_and_meet");
}

#[test]
fn a_missing_peer_is_an_error_naming_the_address_within_the_timeout() {
    let port = common::free_port();
    let started = Instant::now();
    let e = ProcessGroup::gloo(&rendezvous(0, port, Duration::from_secs(2)))
        .expect_err("a world of 2 with one process cannot meet");
    let e = e.to_string();
    assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_peer_that_dies_makes_the_other_fail_naming_it_instead_of_hanging() {
    if let Some((rank, port)) = role() {
        let pg = ProcessGroup::gloo(&rendezvous(rank, port, Duration::from_secs(5))).unwrap();
        pg.barrier().unwrap();
        if rank == 1 {
            // As a crash would: no goodbye, no destructor.
            std::process::abort();
        }
        let started = Instant::now();
        let mut ts = vec![full(1.0)];
        let e = pg.all_reduce(&mut ts, ReduceOp::Sum).unwrap_err().to_string();
        assert!(e.starts_with("c10d all_reduce: rank 1 of 2 is gone ("), "{e}");
        assert!(started.elapsed() < Duration::from_secs(20));
        eprintln!("rank 0 saw: {e}");
        return;
    }
    let out = launch("a_peer_that_dies_makes_the_other_fail_naming_it_instead_of_hanging");
    assert!(
        out[0].0,
        "rank 0 must see the loss as an error naming rank 1 and finish: {}",
        out[0].1
    );
    assert!(!out[1].0, "rank 1 aborted");
}

#[test]
fn a_peer_killed_while_the_other_waits_is_named_well_within_the_timeout() {
    const TIMEOUT: Duration = Duration::from_secs(60);
    if let Some((rank, port)) = role() {
        let pg = ProcessGroup::gloo(&rendezvous(rank, port, TIMEOUT)).unwrap();
        pg.barrier().unwrap();
        if rank == 1 {
            // The parent kills this rank with SIGKILL once it has said so.
            eprintln!("ready");
            std::thread::sleep(TIMEOUT * 2);
            return;
        }
        let started = Instant::now();
        let mut ts = vec![full(1.0)];
        let e = pg.all_reduce(&mut ts, ReduceOp::Sum).unwrap_err().to_string();
        let waited = started.elapsed();
        assert!(e.starts_with("c10d all_reduce: rank 1 of 2 is gone ("), "{e}");
        assert!(waited < TIMEOUT / 4, "{waited:?}: {e}");
        eprintln!("rank 0 saw after {waited:?}: {e}");
        return;
    }
    let mut children = spawn("a_peer_killed_while_the_other_waits_is_named_well_within_the_timeout");
    let mut lines = BufReader::new(children[1].stderr.take().unwrap()).lines();
    let ready = lines.any(|l| l.map(|l| l.trim() == "ready").unwrap_or(false));
    assert!(ready, "rank 1 never got past the barrier");
    // Rank 0 is in the all-reduce by now, or soon; either way rank 1 never joins it.
    std::thread::sleep(Duration::from_millis(500));
    children[1].kill().unwrap(); // SIGKILL
    let _ = children[1].wait();
    let rank0 = children.remove(0);
    let (ok, log) = finish(rank0);
    assert!(ok, "rank 0 must see the kill as an error naming rank 1: {log}");
}

#[test]
fn a_lost_store_host_is_named_as_rank_0() {
    if let Some((rank, port)) = role() {
        let pg = ProcessGroup::gloo(&rendezvous(rank, port, Duration::from_secs(5))).unwrap();
        pg.barrier().unwrap();
        if rank == 0 {
            std::process::abort();
        }
        let mut ts = vec![full(1.0)];
        let e = pg.all_reduce(&mut ts, ReduceOp::Sum).unwrap_err().to_string();
        assert!(e.starts_with("c10d all_reduce: rank 0 of 2"), "{e}");
        assert!(e.contains("is gone"), "{e}");
        eprintln!("rank 1 saw: {e}");
        return;
    }
    let out = launch("a_lost_store_host_is_named_as_rank_0");
    assert!(!out[0].0, "rank 0 aborted");
    assert!(out[1].0, "rank 1 must name rank 0: {}", out[1].1);
}

#[test]
fn a_late_peer_is_named_as_alive_but_behind_when_the_collective_times_out() {
    if let Some((rank, port)) = role() {
        let pg = ProcessGroup::gloo(&rendezvous(rank, port, Duration::from_secs(2))).unwrap();
        pg.barrier().unwrap();
        if rank == 1 {
            // Alive, beating, but busy far past rank 0's timeout.
            std::thread::sleep(Duration::from_secs(8));
            return;
        }
        let started = Instant::now();
        let mut ts = vec![full(1.0)];
        let e = pg.all_reduce(&mut ts, ReduceOp::Sum).unwrap_err().to_string();
        assert!(
            e.starts_with("c10d all_reduce: rank 1 of 2 is alive but has not reached this collective"),
            "{e}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
        eprintln!("rank 0 saw: {e}");
        return;
    }
    let out = launch("a_late_peer_is_named_as_alive_but_behind_when_the_collective_times_out");
    assert!(out[0].0, "rank 0: {}", out[0].1);
}
