//! The data-parallel launcher: `--nproc N [--nnodes M --node-rank R --master-addr A
//! --master-port P]` on any runner command, like `torchrun`.
//!
//! xtask builds the runner once, then starts N copies of the built binary on this machine, each
//! with the environment c10d's launchers give their workers: `RANK` (R·N + local rank),
//! `WORLD_SIZE` (M·N), `LOCAL_RANK`, `LOCAL_WORLD_SIZE` (N), `MASTER_ADDR` and `MASTER_PORT`.
//! The runner joins a Gloo group when `WORLD_SIZE` > 1; everything else (`KD_DIST_TIMEOUT_S`,
//! ...) is inherited. With one process on one node nothing is set and the runner runs exactly as
//! without the flags.
//!
//! Each worker gets 1/N of the cores as intra-op threads (`OMP_NUM_THREADS`, `MKL_NUM_THREADS`
//! and `KD_RS_THREADS`, from which the runner sets libtorch's pool), unless the user set them.
//! Workers are not pinned to cores (no `taskset`): the machines this runs on are often shared,
//! and pinning N workers to fixed cores that other processes also use would make each wait for
//! its own core instead of taking whichever is free; the thread count alone keeps the workers
//! from oversubscribing each other.
//!
//! The node's local rank 0 keeps the terminal; the other workers' lines go to xtask's stderr
//! prefixed with `[rank K] `. Failures are handled like torchrun: the first worker to fail is
//! noted, the others get a grace period (`KD_LAUNCH_GRACE_S`, default 60 s) to notice the lost
//! peer and stop on their own, and whatever is still running after it is killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::libtorch::Flavour;

/// The port multi-node runs meet on when `--master-port` is not given (torchrun's).
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// How long the other workers may run on after the first failure, unless `KD_LAUNCH_GRACE_S`
/// says otherwise.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

/// The launcher flags as given (`None`: not given).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// `--nproc`: workers on this node.
    pub nproc: Option<usize>,
    /// `--nnodes`: machines taking part.
    pub nnodes: Option<usize>,
    /// `--node-rank`: this machine's index in `0..nnodes`.
    pub node_rank: Option<usize>,
    /// `--master-addr`: address of node 0, where rank 0 serves the rendezvous store.
    pub master_addr: Option<String>,
    /// `--master-port`: the store's port.
    pub master_port: Option<u16>,
}

/// The flags xtask consumes, in the order the errors and the help name them.
const NAMES: [&str; 5] = [
    "--nproc",
    "--nnodes",
    "--node-rank",
    "--master-addr",
    "--master-port",
];

impl Flags {
    /// The first launcher flag that was given, for errors on commands that take none.
    pub fn first_given(&self) -> Option<&'static str> {
        let given = [
            self.nproc.is_some(),
            self.nnodes.is_some(),
            self.node_rank.is_some(),
            self.master_addr.is_some(),
            self.master_port.is_some(),
        ];
        NAMES.iter().zip(given).find(|(_, g)| *g).map(|(n, _)| *n)
    }

    /// The launch these flags ask for, checked; `None` for one process on one node (the
    /// runner then runs as it does without the flags).
    pub fn plan(&self) -> Result<Option<Plan>, String> {
        let nproc = self.nproc.unwrap_or(1);
        let nnodes = self.nnodes.unwrap_or(1);
        let node_rank = self.node_rank.unwrap_or(0);
        if nproc == 0 {
            return Err("--nproc 0: need at least 1 worker per node".into());
        }
        if nnodes == 0 {
            return Err("--nnodes 0: need at least 1 node".into());
        }
        if node_rank >= nnodes {
            return Err(format!(
                "--node-rank {node_rank} is out of range for --nnodes {nnodes} (node ranks are 0..{})",
                nnodes - 1
            ));
        }
        if nproc.checked_mul(nnodes).is_none_or(|w| w > i32::MAX as usize) {
            return Err(format!(
                "--nproc {nproc} × --nnodes {nnodes} is too large a world"
            ));
        }
        if nproc == 1 && nnodes == 1 {
            return Ok(None);
        }
        let (master_addr, master_port) = if nnodes > 1 {
            let addr = self.master_addr.clone().ok_or_else(|| {
                format!(
                    "--nnodes {nnodes} spans machines: --master-addr is required (the address of \
                     node rank 0, reachable from every node)"
                )
            })?;
            (addr, Some(self.master_port.unwrap_or(DEFAULT_MASTER_PORT)))
        } else {
            let addr = self.master_addr.clone().unwrap_or_else(|| "127.0.0.1".into());
            (addr, self.master_port)
        };
        Ok(Some(Plan {
            nproc,
            nnodes,
            node_rank,
            master_addr,
            master_port,
        }))
    }
}

/// Takes the launcher flags out of `args` (`--flag VALUE` or `--flag=VALUE`, anywhere before a
/// `--`), returning them and the arguments left for the runner.
pub fn extract(args: &[String]) -> Result<(Flags, Vec<String>), String> {
    let mut flags = Flags::default();
    let mut rest = Vec::with_capacity(args.len());
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg == "--" {
            rest.extend_from_slice(&args[i..]);
            break;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        let Some(&name) = NAMES.iter().find(|&&n| n == name) else {
            rest.push(arg.clone());
            i += 1;
            continue;
        };
        let value = match inline {
            Some(v) => v,
            None => {
                i += 1;
                args.get(i)
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))?
            }
        };
        i += 1;
        if value.is_empty() {
            return Err(format!("{name} needs a value"));
        }
        let twice = || format!("{name} is given twice");
        match name {
            "--nproc" => set(&mut flags.nproc, count(name, &value)?).ok_or_else(twice)?,
            "--nnodes" => set(&mut flags.nnodes, count(name, &value)?).ok_or_else(twice)?,
            "--node-rank" => set(&mut flags.node_rank, count(name, &value)?).ok_or_else(twice)?,
            "--master-addr" => set(&mut flags.master_addr, value).ok_or_else(twice)?,
            _ => {
                let port = value
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| format!("--master-port {value}: expected a port in 1..=65535"))?;
                set(&mut flags.master_port, port).ok_or_else(twice)?
            }
        }
    }
    Ok((flags, rest))
}

/// Stores `value` in an empty slot; `None` when it was filled already.
fn set<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

/// A whole number (range checks are [`Flags::plan`]'s, so they can name both flags).
fn count(name: &str, value: &str) -> Result<usize, String> {
    value
        .parse::<usize>()
        .map_err(|_| format!("{name} {value}: expected a whole number"))
}

/// A checked launch of more than one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Workers on this node.
    pub nproc: usize,
    /// Nodes in the world.
    pub nnodes: usize,
    /// This node's index.
    pub node_rank: usize,
    /// Rendezvous address.
    pub master_addr: String,
    /// Rendezvous port; `None`: a free loopback port, picked when the workers start (after
    /// the build, so that nothing else is likely to take it in between).
    pub master_port: Option<u16>,
}

impl Plan {
    /// Processes in the world.
    pub fn world(&self) -> usize {
        self.nproc * self.nnodes
    }

    /// The global rank of this node's worker `local_rank`.
    pub fn rank(&self, local_rank: usize) -> usize {
        self.node_rank * self.nproc + local_rank
    }
}

/// A free port on the loopback interface, for a single-node rendezvous. The listener is closed
/// again before the workers start, so another process could take the port in between; rank 0
/// then fails to serve the store and says so (torchrun picks its port the same way).
pub fn free_loopback_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))
}

/// Intra-op threads per worker: the cores split evenly, at least one each.
pub fn threads_per_worker(available: usize, nproc: usize) -> usize {
    (available / nproc.max(1)).max(1)
}

/// The thread variables every worker gets: `OMP_NUM_THREADS`, `MKL_NUM_THREADS` and
/// `KD_RS_THREADS`, each the even split of `available` cores unless `user` (the launcher's own
/// environment) has it already: a variable the user set is inherited and not listed here, and a
/// user's `OMP_NUM_THREADS` (its first number, as libgomp reads a nested list) is the count for
/// the other two as well.
pub fn thread_env(
    available: usize,
    nproc: usize,
    user: impl Fn(&str) -> Option<String>,
) -> (usize, Vec<(String, String)>) {
    let user_omp = user("OMP_NUM_THREADS")
        .and_then(|v| v.split(',').next().and_then(|n| n.trim().parse::<usize>().ok()))
        .filter(|&n| n > 0);
    let n = user_omp.unwrap_or_else(|| threads_per_worker(available, nproc));
    let vars = ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "KD_RS_THREADS"]
        .into_iter()
        .filter(|k| user(k).is_none_or(|v| v.is_empty()))
        .map(|k| (k.to_string(), n.to_string()))
        .collect();
    (n, vars)
}

/// Everything the launcher sets for this node's worker `local_rank`: the rendezvous, then the
/// thread variables from [`thread_env`].
pub fn worker_env(
    plan: &Plan,
    port: u16,
    local_rank: usize,
    threads: &[(String, String)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("RANK", plan.rank(local_rank).to_string()),
        ("WORLD_SIZE", plan.world().to_string()),
        ("LOCAL_RANK", local_rank.to_string()),
        ("LOCAL_WORLD_SIZE", plan.nproc.to_string()),
        ("MASTER_ADDR", plan.master_addr.clone()),
        ("MASTER_PORT", port.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    env.extend_from_slice(threads);
    env
}

/// The grace period: `KD_LAUNCH_GRACE_S` (seconds, fractions allowed) or [`DEFAULT_GRACE`].
pub fn grace(value: Option<&str>) -> Result<Duration, String> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(DEFAULT_GRACE);
    };
    v.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("KD_LAUNCH_GRACE_S={v}: expected a number of seconds (e.g. 60)"))
}

/// Builds the runner once and runs this node's share of `plan` with `args`.
pub fn run(flavour: Flavour, plan: &Plan, args: &[String]) -> Result<ExitCode, String> {
    let grace = grace(std::env::var("KD_LAUNCH_GRACE_S").ok().as_deref())?;
    let mut build = crate::cargo(flavour);
    build.arg("build").args(crate::RUNNER_BUILD);
    let status = build
        .status()
        .map_err(|e| format!("could not start cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building the runner failed ({status})"));
    }
    let exe = crate::target_dir(flavour).join("release").join("kd");
    let port = match plan.master_port {
        Some(p) => p,
        None => free_loopback_port()?,
    };
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (threads, thread_vars) = thread_env(available, plan.nproc, |k| std::env::var(k).ok());
    let first = plan.rank(0);
    eprintln!(
        "==> {} workers on this node (ranks {first}..={} of {}), rendezvous {}:{}, {threads} intra-op thread{} each",
        plan.nproc,
        plan.rank(plan.nproc - 1),
        plan.world(),
        plan.master_addr,
        port,
        if threads == 1 { "" } else { "s" },
    );
    let workers = (0..plan.nproc)
        .map(|local| Worker {
            rank: plan.rank(local),
            cmd: worker_command(&exe, args, &worker_env(plan, port, local, &thread_vars)),
            prefixed: local != 0,
        })
        .collect();
    let outcome = supervise(workers, grace)?;
    let Some(failure) = outcome.failure else {
        return Ok(ExitCode::SUCCESS);
    };
    eprintln!("error: {failure}");
    Ok(ExitCode::from(failure.exit.code()))
}

/// One worker: the built runner with the runner's usual environment and the launcher's.
fn worker_command(exe: &Path, args: &[String], env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(exe);
    // Where `cargo run` would have started it; the runner enters KD_RS_CWD first.
    cmd.current_dir(crate::paths::workspace_root());
    cmd.args(args);
    crate::runner_env(&mut cmd);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// A worker process to start.
pub struct Worker {
    /// Its global rank, for messages and the output prefix.
    pub rank: usize,
    /// The command (its environment complete).
    pub cmd: Command,
    /// Whether its stdout and stderr go to xtask's stderr prefixed with `[rank K] ` (else it
    /// inherits xtask's).
    pub prefixed: bool,
}

/// How a worker ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
}

impl Exit {
    fn of(status: ExitStatus) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            if let Some(s) = status.signal() {
                return Exit::Signal(s);
            }
        }
        Exit::Code(status.code().unwrap_or(1))
    }

    /// The launcher's own exit status for this failure: the worker's code when it fits in
    /// 1..=255, else 1 (a signal, or a code a shell could not show).
    pub fn code(self) -> u8 {
        match self {
            Exit::Code(c) => u8::try_from(c).ok().filter(|&c| c != 0).unwrap_or(1),
            Exit::Signal(_) => 1,
        }
    }
}

/// The first worker to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Its global rank.
    pub rank: usize,
    /// How it ended.
    pub exit: Exit,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.exit {
            Exit::Code(c) => write!(f, "rank {} exited with code {c}", self.rank),
            Exit::Signal(s) => write!(f, "rank {} exited with signal {s}", self.rank),
        }
    }
}

/// What became of a launch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The first worker to exit unsuccessfully; `None` when all succeeded.
    pub failure: Option<Failure>,
    /// Ranks still running when the grace period after the failure ran out, killed then.
    pub killed: Vec<usize>,
}

/// How often the supervisor looks at its workers.
const POLL: Duration = Duration::from_millis(50);

/// How long the output of finished workers may take to drain (a pipe held open by something
/// a worker started is not waited for beyond this).
const DRAIN: Duration = Duration::from_secs(2);

/// Starts `workers` and waits for all of them. When one fails (a non-zero code or a signal),
/// the others get `grace` to exit on their own; those still running then are killed. A worker
/// that cannot be started stops the ones already started and is an error.
pub fn supervise(workers: Vec<Worker>, grace: Duration) -> Result<Outcome, String> {
    let (drained_tx, drained) = mpsc::channel::<()>();
    let mut readers = 0;
    let mut running: Vec<(usize, Child)> = Vec::with_capacity(workers.len());
    for mut w in workers {
        if w.prefixed {
            w.cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        let mut child = match w.cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                for (_, c) in &mut running {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(format!(
                    "could not start rank {} ({}): {e}",
                    w.rank,
                    w.cmd.get_program().to_string_lossy()
                ));
            }
        };
        let prefix = format!("[rank {}] ", w.rank);
        let pipes: [Option<Box<dyn Read + Send>>; 2] = [
            child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
            child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        ];
        for pipe in pipes.into_iter().flatten() {
            let prefix = prefix.clone();
            let tx = drained_tx.clone();
            readers += 1;
            std::thread::spawn(move || {
                let _ = prefix_lines(pipe, &prefix, &mut std::io::stderr());
                let _ = tx.send(());
            });
        }
        running.push((w.rank, child));
    }
    drop(drained_tx);

    let mut failure: Option<Failure> = None;
    let mut deadline: Option<Instant> = None;
    let mut killed = Vec::new();
    while !running.is_empty() {
        let mut i = 0;
        while i < running.len() {
            let status = match running[i].1.try_wait() {
                Ok(s) => s,
                Err(e) => {
                    let rank = running[i].0;
                    for (_, c) in &mut running {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    return Err(format!("cannot wait for rank {rank}: {e}"));
                }
            };
            let Some(status) = status else {
                i += 1;
                continue;
            };
            let (rank, _) = running.swap_remove(i);
            if !status.success() && failure.is_none() {
                let f = Failure {
                    rank,
                    exit: Exit::of(status),
                };
                if !running.is_empty() {
                    eprintln!(
                        "launch: {f}; waiting up to {} s for the other {} worker{} to stop",
                        grace.as_secs_f64(),
                        running.len(),
                        if running.len() == 1 { "" } else { "s" }
                    );
                }
                failure = Some(f);
                deadline = Some(Instant::now() + grace);
            }
        }
        if running.is_empty() {
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            running.sort_by_key(|(rank, _)| *rank);
            for (rank, child) in &mut running {
                // SIGKILL (std has no other signal without libc); a worker still running after
                // the grace period is stuck, not cleaning up.
                let _ = child.kill();
                let _ = child.wait();
                killed.push(*rank);
            }
            let ranks: Vec<String> = killed.iter().map(|r| r.to_string()).collect();
            eprintln!(
                "launch: killed rank{} {} after the {} s grace period",
                if killed.len() == 1 { "" } else { "s" },
                ranks.join(", "),
                grace.as_secs_f64()
            );
            running.clear();
            break;
        }
        std::thread::sleep(POLL);
    }
    // Let the prefixed output finish before the caller reports the outcome.
    let until = Instant::now() + DRAIN;
    for _ in 0..readers {
        let left = until.saturating_duration_since(Instant::now());
        if drained.recv_timeout(left).is_err() {
            break;
        }
    }
    Ok(Outcome { failure, killed })
}

/// Copies `from` to `to` line by line, each line prefixed, a last line without a newline given
/// one. Bytes are copied as they are (a worker's output need not be UTF-8); each line is one
/// write, so lines from several workers do not mix.
pub fn prefix_lines(from: impl Read, prefix: &str, to: &mut impl Write) -> std::io::Result<()> {
    let mut from = BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        line.extend_from_slice(prefix.as_bytes());
        if from.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        to.write_all(&line)?;
        to.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn extract_takes_the_flags_out_wherever_they_are() {
        let (f, rest) = extract(&strs(&[
            "reproduce",
            "--nproc",
            "2",
            "cifar100",
            "--seeds=3",
            "--nnodes=2",
            "--node-rank",
            "1",
            "--master-addr=10.0.0.1",
            "--master-port",
            "1234",
            "--out",
            "x",
        ]))
        .unwrap();
        assert_eq!(
            f,
            Flags {
                nproc: Some(2),
                nnodes: Some(2),
                node_rank: Some(1),
                master_addr: Some("10.0.0.1".into()),
                master_port: Some(1234),
            }
        );
        assert_eq!(rest, strs(&["reproduce", "cifar100", "--seeds=3", "--out", "x"]));
        assert_eq!(f.first_given(), Some("--nproc"));
    }

    #[test]
    fn extract_leaves_other_arguments_alone() {
        let args = strs(&[
            "reproduce",
            "coco",
            "--nprocs",
            "2",
            "--seeds",
            "2",
            "--",
            "--nproc",
            "4",
        ]);
        let (f, rest) = extract(&args).unwrap();
        assert_eq!(f, Flags::default());
        assert_eq!(f.first_given(), None);
        assert_eq!(rest, args);
        // Before the command too.
        let (f, rest) = extract(&strs(&["--nproc=3", "reproduce", "coco"])).unwrap();
        assert_eq!(f.nproc, Some(3));
        assert_eq!(rest, strs(&["reproduce", "coco"]));
    }

    #[test]
    fn extract_errors_name_the_flag() {
        let err = |a: &[&str]| extract(&strs(a)).unwrap_err();
        assert_eq!(err(&["reproduce", "--nproc"]), "--nproc needs a value");
        assert_eq!(err(&["reproduce", "--nproc="]), "--nproc needs a value");
        assert_eq!(err(&["--nproc", "two"]), "--nproc two: expected a whole number");
        assert_eq!(err(&["--nnodes=-1"]), "--nnodes -1: expected a whole number");
        assert_eq!(
            err(&["--node-rank", "x"]),
            "--node-rank x: expected a whole number"
        );
        assert_eq!(err(&["--master-addr"]), "--master-addr needs a value");
        assert_eq!(
            err(&["--master-port", "0"]),
            "--master-port 0: expected a port in 1..=65535"
        );
        assert_eq!(
            err(&["--master-port=70000"]),
            "--master-port 70000: expected a port in 1..=65535"
        );
        assert_eq!(err(&["--nproc", "2", "--nproc=2"]), "--nproc is given twice");
    }

    fn flags(a: &[&str]) -> Flags {
        extract(&strs(a)).unwrap().0
    }

    #[test]
    fn one_process_on_one_node_is_the_plain_runner() {
        assert_eq!(flags(&[]).plan().unwrap(), None);
        assert_eq!(flags(&["--nproc", "1"]).plan().unwrap(), None);
        assert_eq!(
            flags(&["--nproc=1", "--nnodes=1", "--node-rank=0", "--master-port=5"])
                .plan()
                .unwrap(),
            None
        );
    }

    #[test]
    fn single_node_meets_on_a_free_loopback_port() {
        let plan = flags(&["--nproc", "2"]).plan().unwrap().unwrap();
        assert_eq!(
            plan,
            Plan {
                nproc: 2,
                nnodes: 1,
                node_rank: 0,
                master_addr: "127.0.0.1".into(),
                master_port: None,
            }
        );
        let plan = flags(&["--nproc", "2", "--master-port", "777"])
            .plan()
            .unwrap()
            .unwrap();
        assert_eq!(
            (plan.master_addr.as_str(), plan.master_port),
            ("127.0.0.1", Some(777))
        );
        let port = free_loopback_port().unwrap();
        assert_ne!(port, 0);
    }

    #[test]
    fn multi_node_needs_an_address_and_defaults_the_port() {
        let err = flags(&["--nnodes", "2"]).plan().unwrap_err();
        assert!(err.contains("--master-addr is required"), "{err}");
        let plan = flags(&["--nnodes=2", "--node-rank=1", "--master-addr=node0"])
            .plan()
            .unwrap()
            .unwrap();
        assert_eq!(
            plan,
            Plan {
                nproc: 1,
                nnodes: 2,
                node_rank: 1,
                master_addr: "node0".into(),
                master_port: Some(DEFAULT_MASTER_PORT),
            }
        );
        assert_eq!((plan.world(), plan.rank(0)), (2, 1));
    }

    #[test]
    fn plan_errors_name_the_flag() {
        let err = |a: &[&str]| flags(a).plan().unwrap_err();
        assert!(err(&["--nproc", "0"]).starts_with("--nproc 0"));
        assert!(err(&["--nnodes", "0"]).starts_with("--nnodes 0"));
        let e = err(&["--nnodes", "2", "--node-rank", "2", "--master-addr", "a"]);
        assert!(
            e.starts_with("--node-rank 2 is out of range for --nnodes 2"),
            "{e}"
        );
        let e = err(&["--node-rank", "1"]);
        assert!(
            e.starts_with("--node-rank 1 is out of range for --nnodes 1"),
            "{e}"
        );
    }

    #[test]
    fn threads_split_the_cores() {
        assert_eq!(threads_per_worker(2, 2), 1);
        assert_eq!(threads_per_worker(2, 4), 1);
        assert_eq!(threads_per_worker(16, 3), 5);
        assert_eq!(threads_per_worker(1, 1), 1);
        let (n, vars) = thread_env(8, 2, |_| None);
        assert_eq!(n, 4);
        assert_eq!(
            vars,
            vec![
                ("OMP_NUM_THREADS".to_string(), "4".to_string()),
                ("MKL_NUM_THREADS".to_string(), "4".to_string()),
                ("KD_RS_THREADS".to_string(), "4".to_string()),
            ]
        );
    }

    #[test]
    fn a_user_thread_count_wins() {
        let user = |k: &str| (k == "OMP_NUM_THREADS").then(|| "3,1".to_string());
        let (n, vars) = thread_env(8, 2, user);
        assert_eq!(n, 3);
        assert_eq!(
            vars,
            vec![
                ("MKL_NUM_THREADS".to_string(), "3".to_string()),
                ("KD_RS_THREADS".to_string(), "3".to_string()),
            ]
        );
        let user = |k: &str| (k == "MKL_NUM_THREADS").then(|| "7".to_string());
        let (n, vars) = thread_env(2, 2, user);
        assert_eq!(n, 1);
        let keys: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["OMP_NUM_THREADS", "KD_RS_THREADS"]);
    }

    #[test]
    fn each_worker_gets_its_ranks_and_the_rendezvous() {
        let plan = Plan {
            nproc: 2,
            nnodes: 3,
            node_rank: 1,
            master_addr: "10.1.2.3".into(),
            master_port: None,
        };
        let threads = vec![("KD_RS_THREADS".to_string(), "1".to_string())];
        let env = |local| {
            worker_env(&plan, 29500, local, &threads)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            env(0),
            [
                "RANK=2",
                "WORLD_SIZE=6",
                "LOCAL_RANK=0",
                "LOCAL_WORLD_SIZE=2",
                "MASTER_ADDR=10.1.2.3",
                "MASTER_PORT=29500",
                "KD_RS_THREADS=1",
            ]
        );
        assert_eq!(env(1)[..3], ["RANK=3", "WORLD_SIZE=6", "LOCAL_RANK=1"]);
    }

    #[test]
    fn grace_reads_seconds() {
        assert_eq!(grace(None).unwrap(), DEFAULT_GRACE);
        assert_eq!(grace(Some("")).unwrap(), DEFAULT_GRACE);
        assert_eq!(grace(Some("0.5")).unwrap(), Duration::from_millis(500));
        assert_eq!(grace(Some("10")).unwrap(), Duration::from_secs(10));
        assert!(grace(Some("-1")).unwrap_err().starts_with("KD_LAUNCH_GRACE_S=-1"));
        assert!(grace(Some("soon")).is_err());
    }

    #[test]
    fn exit_codes() {
        assert_eq!(Exit::Code(3).code(), 3);
        assert_eq!(Exit::Code(256).code(), 1);
        assert_eq!(Exit::Code(-2).code(), 1);
        assert_eq!(Exit::Signal(9).code(), 1);
        let f = Failure {
            rank: 1,
            exit: Exit::Code(3),
        };
        assert_eq!(f.to_string(), "rank 1 exited with code 3");
        let f = Failure {
            rank: 2,
            exit: Exit::Signal(9),
        };
        assert_eq!(f.to_string(), "rank 2 exited with signal 9");
    }

    #[test]
    fn lines_are_prefixed() {
        let mut out = Vec::new();
        prefix_lines(&b"one\ntwo\n\nlast \xff"[..], "[rank 1] ", &mut out).unwrap();
        assert_eq!(
            out,
            b"[rank 1] one\n[rank 1] two\n[rank 1] \n[rank 1] last \xff\n"
        );
        let mut out = Vec::new();
        prefix_lines(&b""[..], "[rank 1] ", &mut out).unwrap();
        assert!(out.is_empty());
    }

    fn sh(rank: usize, script: &str, prefixed: bool) -> Worker {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        Worker { rank, cmd, prefixed }
    }

    #[test]
    fn all_workers_succeeding_is_success() {
        let workers = vec![sh(0, "exit 0", false), sh(1, "echo from rank one; exit 0", true)];
        let outcome = supervise(workers, Duration::from_secs(5)).unwrap();
        assert_eq!(
            outcome,
            Outcome {
                failure: None,
                killed: vec![]
            }
        );
    }

    #[test]
    fn a_failure_kills_the_stragglers_after_the_grace_period() {
        let start = Instant::now();
        let workers = vec![
            sh(0, "exec sleep 30", false),
            sh(1, "echo failing >&2; exit 3", true),
            sh(2, "exec sleep 30", true),
        ];
        let outcome = supervise(workers, Duration::from_millis(300)).unwrap();
        assert_eq!(
            outcome,
            Outcome {
                failure: Some(Failure {
                    rank: 1,
                    exit: Exit::Code(3)
                }),
                killed: vec![0, 2],
            }
        );
        assert_eq!(outcome.failure.unwrap().exit.code(), 3);
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    }

    #[test]
    fn workers_that_stop_within_the_grace_period_are_not_killed() {
        let start = Instant::now();
        let workers = vec![sh(0, "sleep 0.3; exit 1", false), sh(1, "exit 4", true)];
        let outcome = supervise(workers, Duration::from_secs(20)).unwrap();
        assert_eq!(
            outcome,
            Outcome {
                failure: Some(Failure {
                    rank: 1,
                    exit: Exit::Code(4)
                }),
                killed: vec![],
            }
        );
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    }

    #[test]
    fn a_signal_is_a_failure() {
        let workers = vec![sh(0, "kill -9 $$", false)];
        let outcome = supervise(workers, Duration::from_secs(1)).unwrap();
        assert_eq!(
            outcome.failure,
            Some(Failure {
                rank: 0,
                exit: Exit::Signal(9)
            })
        );
    }

    #[test]
    fn a_worker_that_cannot_start_stops_the_others() {
        let start = Instant::now();
        let missing = Worker {
            rank: 1,
            cmd: Command::new("/nonexistent/kd-launch-test"),
            prefixed: true,
        };
        let err = supervise(
            vec![sh(0, "exec sleep 30", false), missing],
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(err.starts_with("could not start rank 1"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
