//! Collectives between real processes over loopback: each test starts copies of this test
//! binary as the ranks, so the rendezvous, the Gloo transport and the failure paths are the
//! ones a launched job goes through.

use std::process::Command;
use std::time::{Duration, Instant};

use kd_dist::{ProcessGroup, ReduceOp, Rendezvous};
use tch::{Kind, Tensor};

const ROLE: &str = "KD_DIST_TEST_RANK";
const PORT: &str = "KD_DIST_TEST_PORT";

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rendezvous(rank: usize, port: u16, timeout: Duration) -> Rendezvous {
    Rendezvous {
        addr: "127.0.0.1".into(),
        port,
        rank,
        world: 2,
        timeout,
    }
}

/// This rank's part when the test runs as a child; `None` in the parent.
fn role() -> Option<(usize, u16)> {
    let rank = std::env::var(ROLE).ok()?.parse().ok()?;
    let port = std::env::var(PORT).ok()?.parse().ok()?;
    Some((rank, port))
}

/// Runs `test` as ranks 0 and 1 in two child processes; returns their exit status and stderr.
fn launch(test: &str) -> Vec<(bool, String)> {
    let port = free_port();
    let children: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .args([test, "--exact", "--nocapture", "--test-threads=1"])
                .env(ROLE, rank.to_string())
                .env(PORT, port.to_string())
                .env("OMP_NUM_THREADS", "1")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .collect()
}

fn full(v: f64) -> Tensor {
    Tensor::full([4], v, (Kind::Float, tch::Device::Cpu))
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
}

#[test]
fn two_processes_reduce_broadcast_gather_and_meet() {
    if let Some((rank, port)) = role() {
        let mut pg = ProcessGroup::gloo(&rendezvous(rank, port, Duration::from_secs(30))).unwrap();
        assert_eq!((pg.rank(), pg.world()), (rank, 2));
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
    for (ok, log) in launch("two_processes_reduce_broadcast_gather_and_meet") {
        assert!(ok, "{log}");
    }
}

#[test]
fn a_missing_peer_is_an_error_naming_the_address_within_the_timeout() {
    let port = free_port();
    let started = Instant::now();
    let e = ProcessGroup::gloo(&rendezvous(0, port, Duration::from_secs(2)))
        .err()
        .expect("a world of 2 with one process cannot meet");
    let e = e.to_string();
    assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_peer_that_dies_makes_the_other_fail_instead_of_hanging() {
    if let Some((rank, port)) = role() {
        let mut pg = ProcessGroup::gloo(&rendezvous(rank, port, Duration::from_secs(5))).unwrap();
        pg.barrier().unwrap();
        if rank == 1 {
            // As a SIGKILL would: no goodbye, no destructor.
            std::process::abort();
        }
        let started = Instant::now();
        let mut ts = vec![full(1.0)];
        let e = pg.all_reduce(&mut ts, ReduceOp::Sum).unwrap_err().to_string();
        assert!(e.contains("all_reduce"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(20));
        eprintln!("rank 0 saw: {e}");
        return;
    }
    let out = launch("a_peer_that_dies_makes_the_other_fail_instead_of_hanging");
    assert!(
        out[0].0,
        "rank 0 must see the loss as an error and finish: {}",
        out[0].1
    );
    assert!(!out[1].0, "rank 1 aborted");
}
