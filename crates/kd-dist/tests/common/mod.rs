//! The harness of the multi-process tests: a test starts copies of its own test binary as the
//! ranks, so the rendezvous, the transport and the failure paths are the ones a launched job
//! goes through. In a child, [`role`] says which rank it plays.

// Each test binary uses part of the harness.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kd_dist::Rendezvous;

const ROLE: &str = "KD_DIST_TEST_RANK";
const PORT: &str = "KD_DIST_TEST_PORT";

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Rank `rank` of 2 on loopback.
pub fn rendezvous(rank: usize, port: u16, timeout: Duration) -> Rendezvous {
    Rendezvous::new("127.0.0.1", port, rank, 2, timeout)
}

/// This rank and the store's port when the test runs as a child; `None` in the parent.
pub fn role() -> Option<(usize, u16)> {
    let rank = std::env::var(ROLE).ok()?.parse().ok()?;
    let port = std::env::var(PORT).ok()?.parse().ok()?;
    Some((rank, port))
}

/// Starts `test` as ranks 0 and 1 in two child processes, their stderr piped.
pub fn spawn(test: &str) -> Vec<Child> {
    let port = free_port();
    (0..2)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .args([test, "--exact", "--nocapture", "--test-threads=1"])
                .env(ROLE, rank.to_string())
                .env(PORT, port.to_string())
                .env("OMP_NUM_THREADS", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

/// The exit status and stderr of a finished child.
pub fn finish(child: Child) -> (bool, String) {
    let o = child.wait_with_output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs `test` as ranks 0 and 1; returns their exit status and stderr.
pub fn launch(test: &str) -> Vec<(bool, String)> {
    spawn(test).into_iter().map(finish).collect()
}

/// Asserts that both ranks of `test` succeeded.
pub fn both_pass(test: &str) {
    for (rank, (ok, log)) in launch(test).into_iter().enumerate() {
        assert!(ok, "rank {rank} failed:\n{log}");
    }
}
