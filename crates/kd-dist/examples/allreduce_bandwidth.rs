//! All-reduce bandwidth of the Gloo path between two processes on this machine.
//!
//! `cargo run --release -p kd-dist --example allreduce_bandwidth` starts itself as ranks 0 and
//! 1 over loopback and prints, per message size, the median time of a sum all-reduce of f32
//! values and the bus bandwidth it implies (2·(n−1)/n × bytes / time, NCCL's convention, which
//! for two ranks is bytes / time).

use std::process::Command;
use std::time::{Duration, Instant};

use kd_dist::{ProcessGroup, ReduceOp, Rendezvous};
use tch::{Kind, Tensor};

fn main() -> kd_core::Result<()> {
    let Ok(rank) = std::env::var("KD_DIST_RANK").map(|r| r.parse::<usize>().unwrap_or(0)) else {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(29500);
        let children: Vec<_> = (0..2)
            .map(|r| {
                Command::new(std::env::current_exe().expect("own path"))
                    .env("KD_DIST_RANK", r.to_string())
                    .env("KD_DIST_PORT", port.to_string())
                    .spawn()
                    .expect("start a rank")
            })
            .collect();
        for mut c in children {
            c.wait().expect("a rank ran");
        }
        return Ok(());
    };
    let port = std::env::var("KD_DIST_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(29500);
    tch::set_num_threads(1);
    let pg = ProcessGroup::gloo(&Rendezvous::new(
        "127.0.0.1",
        port,
        rank,
        2,
        Duration::from_secs(60),
    ))?;
    if rank == 0 {
        println!("| message | median time | bus bandwidth |\n|---|---|---|");
    }
    for mib in [1usize, 4, 16, 64] {
        let n = (mib << 20) / 4;
        let mut ts = vec![Tensor::ones([n as i64], (Kind::Float, tch::Device::Cpu))];
        pg.all_reduce(&mut ts, ReduceOp::Sum)?;
        let mut times = Vec::new();
        for _ in 0..9 {
            pg.barrier()?;
            let t = Instant::now();
            pg.all_reduce(&mut ts, ReduceOp::Sum)?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        if rank == 0 {
            println!(
                "| {mib} MiB | {:.2} ms | {:.2} GB/s |",
                median * 1e3,
                (mib << 20) as f64 / median / 1e9
            );
        }
    }
    Ok(())
}
