//! Collectives across processes and machines on PyTorch's own engine, c10d.
//!
//! tch has no distributed API, and a collective layer of our own would be one more thing to
//! trust; c10d is what PyTorch users already run. A thin C++ shim (`src/shim.cpp`, compiled by
//! the build script against the libtorch torch-sys links) exposes a TCPStore rendezvous, a
//! Gloo process group (CPU tensors) or, when that libtorch has CUDA and NCCL, an NCCL one
//! (CUDA tensors), the collectives a data-parallel trainer needs, each waiting with a timeout
//! so that a lost peer is an error and never a hang, and PyTorch's synchronised BatchNorm as
//! a custom autograd function, whose backward pass reduces across the ranks inside libtorch's
//! autograd engine.
//!
//! [`ProcessGroup`] implements kd-core's [`Collective`], the only face of it the trainer and
//! the models see. Every C++ exception comes back as a [`KdError`] naming the operation; when
//! a collective fails because a rank died or stopped answering, the message also names that
//! rank ("c10d all_reduce: rank 1 of 2 is gone (...)"): every rank beats a heartbeat into the
//! group's store, and a failed collective looks for the ranks whose beat stopped.
//!
//! [`Rendezvous::from_env`] reads the variables torchrun (and the runner's launcher) set, so a
//! job launched like a PyTorch job finds its peers the same way.
//!
//! This is the only crate with `unsafe` code: its FFI.

#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::time::Duration;

pub use kd_core::dist::{BatchNormArgs, Collective, ReduceOp};
use kd_core::{KdError, Result};
use tch::{Device, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn kd_dist_free_str(s: *mut c_char);
    fn kd_dist_has_nccl() -> c_int;
    fn kd_dist_gloo(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_ms: c_int,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    fn kd_dist_nccl(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_ms: c_int,
        device: c_int,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    fn kd_dist_drop(g: *mut c_void);
    fn kd_dist_all_reduce(g: *mut c_void, t: *mut C_tensor, op: c_int, err: *mut *mut c_char) -> c_int;
    fn kd_dist_broadcast(g: *mut c_void, t: *mut C_tensor, root: c_int, err: *mut *mut c_char) -> c_int;
    fn kd_dist_all_gather(
        g: *mut c_void,
        input: *mut C_tensor,
        outs: *mut *mut C_tensor,
        world: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn kd_dist_barrier(g: *mut c_void, err: *mut *mut c_char) -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn kd_dist_sync_batch_norm(
        g: *mut c_void,
        x: *const C_tensor,
        weight: *const C_tensor,
        bias: *const C_tensor,
        running_mean: *const C_tensor,
        running_var: *const C_tensor,
        momentum: f64,
        eps: f64,
        out: *mut *mut C_tensor,
        err: *mut *mut c_char,
    ) -> c_int;
}

/// Where and how the processes of a group meet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendezvous {
    /// Address of rank 0, which serves the store (`MASTER_ADDR`).
    pub addr: String,
    /// Port of the store (`MASTER_PORT`).
    pub port: u16,
    /// This process's rank in `0..world` (`RANK`).
    pub rank: usize,
    /// Number of processes (`WORLD_SIZE`).
    pub world: usize,
    /// This process's rank among those on its machine (`LOCAL_RANK`): the CUDA device it
    /// drives, by torchrun's convention.
    pub local_rank: usize,
    /// How long the rendezvous and each collective may wait for the others.
    pub timeout: Duration,
}

impl Rendezvous {
    /// The store's port when `MASTER_PORT` is unset (torchrun's).
    pub const DEFAULT_PORT: u16 = 29500;
    /// The store's address when `MASTER_ADDR` is unset.
    pub const DEFAULT_ADDR: &'static str = "127.0.0.1";
    /// How long a collective may wait when `KD_DIST_TIMEOUT_S` is unset: 30 minutes, the
    /// default of torch's Gloo groups.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

    /// Rank `rank` of `world` meeting at `addr:port`, waiting at most `timeout`, with the
    /// local rank equal to the rank (every process on one machine).
    pub fn new(addr: impl Into<String>, port: u16, rank: usize, world: usize, timeout: Duration) -> Self {
        Self {
            addr: addr.into(),
            port,
            rank,
            world,
            local_rank: rank,
            timeout,
        }
    }

    /// The rendezvous the launcher described in this process's environment: `RANK`,
    /// `WORLD_SIZE`, `MASTER_ADDR` (default 127.0.0.1), `MASTER_PORT` (default 29500),
    /// `LOCAL_RANK` (default `RANK`) and `KD_DIST_TIMEOUT_S` (seconds, default 1800).
    /// `None` when `WORLD_SIZE` is unset or 1: the process is alone. A malformed value is an
    /// error naming the variable and its value.
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Rendezvous::from_env`] over any source of variables (`var` returns a variable's
    /// value, `None` when unset); empty values count as unset.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let get = |k: &str| var(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let bad = |k: &str, v: &str, why: &str| KdError::invalid(format!("{k}={v:?}: {why}"));
        let whole = |k: &str| -> Result<Option<usize>> {
            get(k)
                .map(|v| {
                    v.parse::<usize>()
                        .map_err(|_| bad(k, &v, "expected a whole number"))
                })
                .transpose()
        };
        let world = match whole("WORLD_SIZE")? {
            None | Some(1) => return Ok(None),
            Some(0) => return Err(bad("WORLD_SIZE", "0", "a world has at least one process")),
            Some(w) => w,
        };
        let rank = whole("RANK")?.ok_or_else(|| {
            KdError::invalid(format!(
                "RANK is unset while WORLD_SIZE={world}: the launcher names each process's rank"
            ))
        })?;
        if rank >= world {
            return Err(bad(
                "RANK",
                &rank.to_string(),
                &format!("outside WORLD_SIZE={world} (ranks are 0..{world})"),
            ));
        }
        let local_rank = whole("LOCAL_RANK")?.unwrap_or(rank);
        let addr = get("MASTER_ADDR").unwrap_or_else(|| Self::DEFAULT_ADDR.to_string());
        let port = match get("MASTER_PORT") {
            None => Self::DEFAULT_PORT,
            Some(v) => match v.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(bad("MASTER_PORT", &v, "expected a port in 1..=65535")),
            },
        };
        let timeout = match get("KD_DIST_TIMEOUT_S") {
            None => Self::DEFAULT_TIMEOUT,
            Some(v) => match v.parse::<f64>() {
                Ok(s) if s.is_finite() && s > 0.0 && s < 1e9 => Duration::from_secs_f64(s),
                _ => {
                    return Err(bad(
                        "KD_DIST_TIMEOUT_S",
                        &v,
                        "expected a positive number of seconds",
                    ))
                }
            },
        };
        Ok(Some(Self {
            addr,
            port,
            rank,
            world,
            local_rank,
            timeout,
        }))
    }
}

/// Whether the libtorch this crate was built against has CUDA and NCCL, so that
/// [`ProcessGroup::nccl`] can work.
pub fn nccl_available() -> bool {
    // SAFETY: a constant query without arguments.
    unsafe { kd_dist_has_nccl() != 0 }
}

/// A c10d process group: Gloo over CPU tensors, or NCCL over CUDA tensors.
///
/// Every rank must issue the same collectives in the same order with tensors of the same
/// shapes and kinds. A collective that fails (a lost peer, a timeout) returns an error naming
/// the operation and, when it can be told, the rank that went away.
pub struct ProcessGroup {
    raw: *mut c_void,
    rank: usize,
    world: usize,
    device: Device,
}

// SAFETY: the shim's group holds c10d objects that may move between threads (c10d creates
// and uses them from any thread); `ProcessGroup` is not `Sync` (its raw pointer makes it so),
// so its collectives, which take `&self`, are only ever issued from one thread at a time.
unsafe impl Send for ProcessGroup {}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("device", &self.device)
            .finish()
    }
}

/// Takes the shim's message, freeing it.
fn take_message(err: *mut c_char) -> String {
    if err.is_null() {
        return "unknown error".to_string();
    }
    // SAFETY: the shim returns a NUL-terminated string from malloc, read here and freed once.
    let s = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    // SAFETY: as above; `err` is not used after this.
    unsafe { kd_dist_free_str(err) };
    // c10 may append the C++ stack; the first part is the message.
    s.split("\nException raised from")
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Turns the shim's status and message into a result naming `op`.
fn check(op: &str, status: c_int, err: *mut c_char) -> Result<()> {
    if status == 0 {
        return Ok(());
    }
    Err(KdError::invalid(format!("c10d {op}: {}", take_message(err))))
}

/// The rendezvous's numbers as the shim takes them.
fn c_args(rv: &Rendezvous) -> Result<(CString, c_int, c_int, c_int, c_int)> {
    if rv.world == 0 || rv.rank >= rv.world {
        return Err(KdError::invalid(format!(
            "c10d: rank {} is outside a world of {}",
            rv.rank, rv.world
        )));
    }
    let world = c_int::try_from(rv.world)
        .map_err(|_| KdError::invalid(format!("c10d: a world of {} is too large", rv.world)))?;
    let host = CString::new(rv.addr.as_str())
        .map_err(|_| KdError::invalid(format!("c10d: address {:?} holds a NUL byte", rv.addr)))?;
    let timeout_ms = c_int::try_from(rv.timeout.as_millis())
        .unwrap_or(c_int::MAX)
        .max(1);
    Ok((host, c_int::from(rv.port), rv.rank as c_int, world, timeout_ms))
}

/// Runs `collective` on one flat bucket per tensor kind of `ts` (in order of first
/// appearance, the same on every rank) and writes the results back into `ts`.
fn bucketed(
    op: &str,
    ts: &mut [Tensor],
    mut collective: impl FnMut(&mut Tensor) -> Result<()>,
) -> Result<()> {
    let torch = |e: tch::TchError| KdError::invalid(format!("c10d {op}: {e}"));
    let mut kinds: Vec<tch::Kind> = Vec::new();
    for t in ts.iter() {
        if !kinds.contains(&t.kind()) {
            kinds.push(t.kind());
        }
    }
    for kind in kinds {
        let members: Vec<usize> = (0..ts.len()).filter(|&i| ts[i].kind() == kind).collect();
        if let [only] = members[..] {
            let mut flat = ts[only].shallow_clone();
            collective(&mut flat)?;
            continue;
        }
        let parts: Vec<Tensor> = members.iter().map(|&i| ts[i].reshape([-1])).collect();
        let mut bucket = Tensor::f_cat(&parts, 0).map_err(torch)?;
        collective(&mut bucket)?;
        let mut at = 0;
        for &i in &members {
            let n = ts[i].numel() as i64;
            let back = bucket.narrow(0, at, n).view_(ts[i].size());
            ts[i].f_copy_(&back).map_err(torch)?;
            at += n;
        }
    }
    Ok(())
}

impl ProcessGroup {
    /// Meets the other `world − 1` processes at `rv.addr:rv.port` and builds a Gloo group
    /// (CPU tensors). Fails, naming the address, when they do not all arrive within
    /// `rv.timeout`. The transport binds to `GLOO_SOCKET_IFNAME` when it is set, as PyTorch's
    /// does.
    pub fn gloo(rv: &Rendezvous) -> Result<Self> {
        let (host, port, rank, world, timeout_ms) = c_args(rv)?;
        let mut err = std::ptr::null_mut();
        // SAFETY: `host` outlives the call; `err` is written only on failure.
        let raw = unsafe { kd_dist_gloo(host.as_ptr(), port, rank, world, timeout_ms, &mut err) };
        Self::built(rv, raw, err, Device::Cpu)
    }

    /// Meets the other processes as [`ProcessGroup::gloo`] does and builds an NCCL group on
    /// CUDA device `cuda_index` (usually `rv.local_rank`), whose collectives take tensors on
    /// that device. An error when the libtorch this crate was built against has no CUDA and
    /// NCCL ([`nccl_available`]), or the device does not exist. Unless
    /// `TORCH_NCCL_BLOCKING_WAIT` is set, it is set to 1, so that a failed or late collective
    /// is an error on the calling thread, as with Gloo.
    pub fn nccl(rv: &Rendezvous, cuda_index: usize) -> Result<Self> {
        if !nccl_available() {
            return Err(KdError::invalid(
                "c10d nccl: this libtorch has no NCCL: install the CUDA flavour with `cargo xtask setup --cuda`",
            ));
        }
        let (host, port, rank, world, timeout_ms) = c_args(rv)?;
        let device = c_int::try_from(cuda_index)
            .map_err(|_| KdError::invalid(format!("c10d nccl: no CUDA device {cuda_index}")))?;
        let mut err = std::ptr::null_mut();
        // SAFETY: as in `gloo`.
        let raw = unsafe { kd_dist_nccl(host.as_ptr(), port, rank, world, timeout_ms, device, &mut err) };
        Self::built(rv, raw, err, Device::Cuda(cuda_index))
    }

    fn built(rv: &Rendezvous, raw: *mut c_void, err: *mut c_char, device: Device) -> Result<Self> {
        if raw.is_null() {
            check(&format!("rendezvous at {}:{}", rv.addr, rv.port), 1, err)?;
        }
        Ok(Self {
            raw,
            rank: rv.rank,
            world: rv.world,
            device,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of processes.
    pub fn world(&self) -> usize {
        self.world
    }

    /// The device every tensor given to this group must live on: the CPU for Gloo, the
    /// group's CUDA device for NCCL.
    pub fn device(&self) -> Device {
        self.device
    }

    /// An error naming `op` unless every tensor of `ts` is on the group's device.
    fn on_device<'a>(&self, op: &str, ts: impl IntoIterator<Item = &'a Tensor>) -> Result<()> {
        let flavour = if self.device == Device::Cpu {
            "the Gloo group takes CPU tensors"
        } else {
            "the NCCL group takes tensors on its CUDA device"
        };
        for (i, t) in ts.into_iter().enumerate() {
            if t.device() != self.device {
                return Err(KdError::invalid(format!(
                    "c10d {op}: tensor {i} is on {:?}; {flavour} ({:?})",
                    t.device(),
                    self.device
                )));
            }
        }
        Ok(())
    }

    /// Device and layout checks of the flat collectives.
    fn checked(&self, op: &str, ts: &[Tensor]) -> Result<()> {
        self.on_device(op, ts)?;
        for (i, t) in ts.iter().enumerate() {
            if !t.is_contiguous() {
                return Err(KdError::invalid(format!(
                    "c10d {op}: tensor {i} is not contiguous"
                )));
            }
        }
        Ok(())
    }

    /// Combines each tensor of `ts` across the ranks in place (every rank passes tensors of the
    /// same shapes and kinds, in the same order). Tensors of one kind travel as one flat
    /// bucket: one collective per kind, whatever their number.
    pub fn all_reduce(&self, ts: &mut [Tensor], op: ReduceOp) -> Result<()> {
        self.checked("all_reduce", ts)?;
        let code = match op {
            ReduceOp::Sum | ReduceOp::Mean => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        };
        let raw = self.raw;
        bucketed("all_reduce", ts, |bucket| {
            let mut err = std::ptr::null_mut();
            // SAFETY: `raw` is this live group; `bucket` is a live tch tensor for the call.
            let status = unsafe { kd_dist_all_reduce(raw, bucket.as_mut_ptr(), code, &mut err) };
            check("all_reduce", status, err)
        })?;
        if op == ReduceOp::Mean {
            let n = self.world as f64;
            for t in ts.iter_mut() {
                let _ = t
                    .f_div_scalar_(n)
                    .map_err(|e| KdError::invalid(format!("c10d all_reduce mean: {e}")))?;
            }
        }
        Ok(())
    }

    /// Copies `root`'s tensors into every rank's `ts` in place.
    pub fn broadcast(&self, ts: &mut [Tensor], root: usize) -> Result<()> {
        if root >= self.world {
            return Err(KdError::invalid(format!(
                "c10d broadcast: root {root} outside a world of {}",
                self.world
            )));
        }
        self.checked("broadcast", ts)?;
        let raw = self.raw;
        bucketed("broadcast", ts, |bucket| {
            let mut err = std::ptr::null_mut();
            // SAFETY: as in `all_reduce`.
            let status = unsafe { kd_dist_broadcast(raw, bucket.as_mut_ptr(), root as c_int, &mut err) };
            check("broadcast", status, err)
        })
    }

    /// Every rank's `input`, in rank order (each rank passes the same shape and kind).
    pub fn all_gather(&self, input: &Tensor) -> Result<Vec<Tensor>> {
        let mut input = input.shallow_clone();
        self.checked("all_gather", std::slice::from_ref(&input))?;
        let mut outs: Vec<Tensor> = (0..self.world).map(|_| input.empty_like()).collect();
        let mut ptrs: Vec<*mut C_tensor> = outs.iter_mut().map(|t| t.as_mut_ptr()).collect();
        let mut err = std::ptr::null_mut();
        // SAFETY: the group is live; `input` and the `world` tensors behind `ptrs` outlive
        // the call.
        let status = unsafe {
            kd_dist_all_gather(
                self.raw,
                input.as_mut_ptr(),
                ptrs.as_mut_ptr(),
                self.world as c_int,
                &mut err,
            )
        };
        check("all_gather", status, err)?;
        Ok(outs)
    }

    /// Waits until every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        let mut err = std::ptr::null_mut();
        // SAFETY: the group is live.
        let status = unsafe { kd_dist_barrier(self.raw, &mut err) };
        check("barrier", status, err)
    }

    /// BatchNorm in training mode over the union of every rank's batch (PyTorch's
    /// `SyncBatchNorm`): `x` `[N, C, ...]` is normalised with the global per-channel mean and
    /// biased variance (two all-reduces: sums and counts, then squared deviations from the
    /// global mean), `bn`'s running statistics move as one process holding the whole batch
    /// would move them, and the result is differentiable. Its backward pass all-reduces the
    /// per-channel sums of the gradient and of the gradient times the normalised input, so
    /// the input's gradient is the one of the whole batch; the affine parameters get this
    /// rank's own gradients, to be averaged across the ranks with the others (as DDP does).
    /// A collective that fails in the backward pass makes `backward()` fail with a message
    /// naming it. Every rank must call it for the same layers in the same order.
    pub fn sync_batch_norm(&self, x: &Tensor, bn: &BatchNormArgs<'_>) -> Result<Tensor> {
        let op = "sync_batch_norm";
        let mut ts = vec![x, bn.running_mean, bn.running_var];
        ts.extend(bn.weight);
        ts.extend(bn.bias);
        self.on_device(op, ts)?;
        let opt = |t: Option<&Tensor>| t.map_or(std::ptr::null(), |t| t.as_ptr());
        let mut out: *mut C_tensor = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        // SAFETY: the group is live and outlives every backward pass through the autograd
        // node this creates (the group is dropped only when training is over); every tensor
        // pointer is a live tch tensor or null for an absent affine parameter; `out` is
        // written only on success.
        let status = unsafe {
            kd_dist_sync_batch_norm(
                self.raw,
                x.as_ptr(),
                opt(bn.weight),
                opt(bn.bias),
                bn.running_mean.as_ptr(),
                bn.running_var.as_ptr(),
                bn.momentum,
                bn.eps,
                &mut out,
                &mut err,
            )
        };
        check(op, status, err)?;
        // SAFETY: on success the shim hands over a new tensor that nothing else owns.
        Ok(unsafe { Tensor::from_ptr(out) })
    }
}

/// Runs `collective` on `ts` where the group's transport wants them: the trainer's small
/// bookkeeping tensors (counts, flags, lengths) live on the CPU, and an NCCL group takes
/// CUDA tensors only, so those travel to its device and back.
fn on_group_device(
    g: &ProcessGroup,
    ts: &mut [Tensor],
    collective: impl FnOnce(&ProcessGroup, &mut [Tensor]) -> Result<()>,
) -> Result<()> {
    let device = g.device();
    if ts.iter().all(|t| t.device() == device) {
        return collective(g, ts);
    }
    let mut moved: Vec<Tensor> = ts.iter().map(|t| t.to_device(device)).collect();
    collective(g, &mut moved)?;
    for (t, m) in ts.iter_mut().zip(&moved) {
        if t.device() != device {
            t.f_copy_(m)
                .map_err(|e| KdError::invalid(format!("c10d: copying a result back: {e}")))?;
        }
    }
    Ok(())
}

impl Collective for ProcessGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce(&self, ts: &mut [Tensor], op: ReduceOp) -> Result<()> {
        on_group_device(self, ts, |g, moved| ProcessGroup::all_reduce(g, moved, op))
    }

    fn broadcast(&self, ts: &mut [Tensor], root: usize) -> Result<()> {
        on_group_device(self, ts, |g, moved| ProcessGroup::broadcast(g, moved, root))
    }

    fn all_gather(&self, input: &Tensor) -> Result<Vec<Tensor>> {
        let device = self.device();
        if input.device() == device {
            return ProcessGroup::all_gather(self, input);
        }
        let outs = ProcessGroup::all_gather(self, &input.to_device(device))?;
        Ok(outs.into_iter().map(|t| t.to_device(input.device())).collect())
    }

    fn barrier(&self) -> Result<()> {
        ProcessGroup::barrier(self)
    }

    fn sync_batch_norm(&self, x: &Tensor, bn: &BatchNormArgs<'_>) -> Result<Tensor> {
        ProcessGroup::sync_batch_norm(self, x, bn)
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: `raw` came from the shim and is dropped once.
        unsafe { kd_dist_drop(self.raw) };
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Option<Rendezvous>> {
        let env: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Rendezvous::from_vars(|k| env.get(k).cloned())
    }

    fn err(vars: &[(&str, &str)]) -> String {
        parse(vars).unwrap_err().to_string()
    }

    #[test]
    fn alone_without_a_world_or_with_a_world_of_one() {
        assert_eq!(parse(&[]).unwrap(), None);
        assert_eq!(parse(&[("WORLD_SIZE", "1"), ("RANK", "0")]).unwrap(), None);
        assert_eq!(parse(&[("WORLD_SIZE", ""), ("RANK", "3")]).unwrap(), None);
    }

    #[test]
    fn defaults_are_torchruns() {
        let rv = parse(&[("WORLD_SIZE", "4"), ("RANK", "2")]).unwrap().unwrap();
        assert_eq!(
            rv,
            Rendezvous {
                addr: "127.0.0.1".into(),
                port: 29500,
                rank: 2,
                world: 4,
                local_rank: 2,
                timeout: Duration::from_secs(1800),
            }
        );
        assert_eq!(
            rv,
            Rendezvous::new("127.0.0.1", 29500, 2, 4, Duration::from_secs(1800))
        );
    }

    #[test]
    fn every_variable_is_read() {
        let rv = parse(&[
            ("WORLD_SIZE", "8"),
            ("RANK", "5"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0.cluster"),
            ("MASTER_PORT", "1234"),
            ("KD_DIST_TIMEOUT_S", "2.5"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((rv.addr.as_str(), rv.port), ("node0.cluster", 1234));
        assert_eq!((rv.rank, rv.world, rv.local_rank), (5, 8, 1));
        assert_eq!(rv.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn a_bad_value_is_one_error_naming_the_variable_and_its_value() {
        let base = [("WORLD_SIZE", "2"), ("RANK", "1")];
        let with = |k: &'static str, v: &'static str| {
            let mut vars: Vec<(&str, &str)> = base.iter().copied().filter(|(b, _)| *b != k).collect();
            vars.push((k, v));
            err(&vars)
        };
        for (k, v) in [
            ("WORLD_SIZE", "two"),
            ("WORLD_SIZE", "0"),
            ("WORLD_SIZE", "-2"),
            ("RANK", "x"),
            ("LOCAL_RANK", "1.5"),
            ("MASTER_PORT", "70000"),
            ("MASTER_PORT", "0"),
            ("KD_DIST_TIMEOUT_S", "soon"),
            ("KD_DIST_TIMEOUT_S", "-1"),
            ("KD_DIST_TIMEOUT_S", "inf"),
        ] {
            let e = with(k, v);
            assert!(e.contains(&format!("{k}=\"{v}\"")), "{k}={v}: {e}");
        }
    }

    #[test]
    fn the_rank_must_be_given_and_inside_the_world() {
        let e = err(&[("WORLD_SIZE", "2")]);
        assert!(e.contains("RANK is unset") && e.contains("WORLD_SIZE=2"), "{e}");
        let e = err(&[("WORLD_SIZE", "2"), ("RANK", "2")]);
        assert!(
            e.contains("RANK=\"2\"") && e.contains("outside WORLD_SIZE=2"),
            "{e}"
        );
    }

    #[test]
    fn nccl_is_a_clear_error_without_it_or_without_the_device() {
        let rv = Rendezvous::new("127.0.0.1", 1, 0, 2, Duration::from_secs(1));
        let devices = tch::Cuda::device_count();
        if nccl_available() && devices > 0 {
            return;
        }
        // Either way it fails before any rendezvous, so nothing waits at the unserved port.
        let e = ProcessGroup::nccl(&rv, devices as usize).unwrap_err().to_string();
        if nccl_available() {
            assert!(
                e.contains(&format!("CUDA device {devices} does not exist")),
                "{e}"
            );
        } else {
            assert!(
                e.contains("no NCCL") && e.contains("cargo xtask setup --cuda"),
                "{e}"
            );
        }
    }
}
