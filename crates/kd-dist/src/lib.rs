//! Collectives across processes and machines on PyTorch's own engine, c10d.
//!
//! tch has no distributed API, and a collective layer of our own would be one more thing to
//! trust; c10d is what PyTorch users already run. A thin C++ shim (`src/shim.cpp`, compiled by
//! the build script against the libtorch torch-sys links) exposes a TCPStore rendezvous, a
//! Gloo process group and the collectives a data-parallel trainer needs, each waiting with a
//! timeout, so a lost peer is an error and never a hang. Every C++ exception comes back as a
//! [`KdError`] naming the operation. This is the only crate with `unsafe` code: its FFI.

#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::time::Duration;

use kd_core::{KdError, Result};
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn kd_dist_free_str(s: *mut c_char);
    fn kd_dist_gloo(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_ms: c_int,
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
    /// How long the rendezvous and each collective may wait for the others.
    pub timeout: Duration,
}

/// How [`ProcessGroup::all_reduce`] combines the ranks' tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise sum divided by the world size.
    Mean,
    /// Element-wise maximum.
    Max,
    /// Element-wise minimum.
    Min,
}

/// A c10d process group over Gloo (CPU tensors).
pub struct ProcessGroup {
    raw: *mut c_void,
    rank: usize,
    world: usize,
}

// The shim's group is used from one thread at a time (`&mut self` for every collective); c10d
// groups may move between threads.
unsafe impl Send for ProcessGroup {}

/// Turns the shim's status and message into a result naming `op`.
fn check(op: &str, status: c_int, err: *mut c_char) -> Result<()> {
    if status == 0 {
        return Ok(());
    }
    let msg = if err.is_null() {
        "unknown error".to_string()
    } else {
        // SAFETY: the shim returns a NUL-terminated string from malloc, freed here once.
        let s = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
        unsafe { kd_dist_free_str(err) };
        // c10 appends the C++ stack; the first part is the message.
        s.split("\nException raised from")
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    Err(KdError::invalid(format!("c10d {op}: {msg}")))
}

fn checked_tensors(op: &str, ts: &[&Tensor]) -> Result<()> {
    for (i, t) in ts.iter().enumerate() {
        if t.device() != tch::Device::Cpu {
            return Err(KdError::invalid(format!(
                "c10d {op}: tensor {i} is on {:?}; the Gloo group takes CPU tensors",
                t.device()
            )));
        }
        if !t.is_contiguous() {
            return Err(KdError::invalid(format!(
                "c10d {op}: tensor {i} is not contiguous"
            )));
        }
    }
    Ok(())
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
    /// Meets the other `world − 1` processes at `rv.addr:rv.port` and builds a Gloo group.
    /// Fails, naming the address, when they do not all arrive within `rv.timeout`.
    pub fn gloo(rv: &Rendezvous) -> Result<Self> {
        if rv.world == 0 || rv.rank >= rv.world {
            return Err(KdError::invalid(format!(
                "c10d: rank {} is outside a world of {}",
                rv.rank, rv.world
            )));
        }
        let host = CString::new(rv.addr.as_str())
            .map_err(|_| KdError::invalid(format!("c10d: address {:?} holds a NUL byte", rv.addr)))?;
        let timeout_ms = c_int::try_from(rv.timeout.as_millis())
            .unwrap_or(c_int::MAX)
            .max(1);
        let mut err = std::ptr::null_mut();
        // SAFETY: `host` outlives the call; `err` is written only on failure.
        let raw = unsafe {
            kd_dist_gloo(
                host.as_ptr(),
                c_int::from(rv.port),
                rv.rank as c_int,
                rv.world as c_int,
                timeout_ms,
                &mut err,
            )
        };
        if raw.is_null() {
            check(&format!("rendezvous at {}:{}", rv.addr, rv.port), 1, err)?;
        }
        Ok(Self {
            raw,
            rank: rv.rank,
            world: rv.world,
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

    /// Combines each tensor of `ts` across the ranks in place (every rank passes tensors of the
    /// same shapes and kinds, in the same order). Tensors of one kind travel as one flat
    /// bucket: one collective per kind, whatever their number.
    pub fn all_reduce(&mut self, ts: &mut [Tensor], op: ReduceOp) -> Result<()> {
        checked_tensors("all_reduce", &ts.iter().collect::<Vec<_>>())?;
        let code = match op {
            ReduceOp::Sum | ReduceOp::Mean => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        };
        let raw = self.raw;
        bucketed("all_reduce", ts, |bucket| {
            let mut err = std::ptr::null_mut();
            // SAFETY: `bucket` is a live tch tensor for the duration of the call.
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
    pub fn broadcast(&mut self, ts: &mut [Tensor], root: usize) -> Result<()> {
        if root >= self.world {
            return Err(KdError::invalid(format!(
                "c10d broadcast: root {root} outside a world of {}",
                self.world
            )));
        }
        checked_tensors("broadcast", &ts.iter().collect::<Vec<_>>())?;
        let raw = self.raw;
        bucketed("broadcast", ts, |bucket| {
            let mut err = std::ptr::null_mut();
            // SAFETY: as in `all_reduce`.
            let status = unsafe { kd_dist_broadcast(raw, bucket.as_mut_ptr(), root as c_int, &mut err) };
            check("broadcast", status, err)
        })
    }

    /// Every rank's `input`, in rank order (each rank passes the same shape and kind).
    pub fn all_gather(&mut self, input: &Tensor) -> Result<Vec<Tensor>> {
        checked_tensors("all_gather", &[input])?;
        let mut input = input.shallow_clone();
        let mut outs: Vec<Tensor> = (0..self.world).map(|_| input.empty_like()).collect();
        let mut ptrs: Vec<*mut C_tensor> = outs.iter_mut().map(|t| t.as_mut_ptr()).collect();
        let mut err = std::ptr::null_mut();
        // SAFETY: as in `all_reduce`.
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
    pub fn barrier(&mut self) -> Result<()> {
        let mut err = std::ptr::null_mut();
        // SAFETY: the group is live.
        let status = unsafe { kd_dist_barrier(self.raw, &mut err) };
        check("barrier", status, err)
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `kd_dist_gloo` and is dropped once.
        unsafe { kd_dist_drop(self.raw) };
    }
}
