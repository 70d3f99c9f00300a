//! Input validation shared by the loss kernels.
//!
//! Every loss validates shapes, dtypes, devices and hyper-parameters here, in Rust, before any
//! libtorch call: a wrong input must surface as a [`KdError`] that names both operands, never
//! as a C++ exception turned into a panic (or, on CUDA, a device-side assert that poisons the
//! context). The helpers also fix the working precision of every kernel.

use tch::{Kind, Tensor};

use crate::{shape, KdError, Result};

/// The floating kind the loss math runs in: `Double` when any input is `Double` (so gradient
/// checks can run in double precision), `Float` otherwise. Half and bfloat16 inputs are promoted
/// to `Float`, so softmax, log and exp never run in reduced precision.
pub fn work_kind(ts: &[&Tensor]) -> Kind {
    if ts.iter().any(|t| t.kind() == Kind::Double) {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// A `Shape` error naming both operands, with the expectation that failed in the `op` field.
pub fn mismatch(op: &str, expected: &str, a_name: &str, a: &Tensor, b_name: &str, b: &Tensor) -> KdError {
    KdError::Shape {
        op: format!("{op} (expected {expected})"),
        left_name: a_name.into(),
        left: a.size(),
        right_name: b_name.into(),
        right: b.size(),
    }
}

/// Fails unless `a` and `b` have identical shapes of rank `rank`, and live on one device.
/// `layout` describes the expected layout in words, e.g. `"[B, K]"`; it appears in the message.
pub fn pair(
    op: &str,
    layout: &str,
    rank: usize,
    a_name: &str,
    a: &Tensor,
    b_name: &str,
    b: &Tensor,
) -> Result<()> {
    shape::same(op, a_name, a, b_name, b)?;
    if a.dim() != rank {
        return Err(mismatch(op, &format!("both {layout}"), a_name, a, b_name, b));
    }
    same_device(op, a_name, a, b_name, b)
}

/// Fails unless the two tensors live on one device.
pub fn same_device(op: &str, a_name: &str, a: &Tensor, b_name: &str, b: &Tensor) -> Result<()> {
    if a.device() != b.device() {
        return Err(KdError::invalid(format!(
            "{op}: {a_name} is on {:?} but {b_name} is on {:?}",
            a.device(),
            b.device()
        )));
    }
    Ok(())
}

/// Fails unless every dimension of `t` is non-zero (a mean over nothing is NaN).
pub fn non_empty(op: &str, name: &str, t: &Tensor) -> Result<()> {
    let s = t.size();
    if s.contains(&0) {
        return Err(KdError::BadShape {
            op: op.into(),
            name: name.into(),
            shape: s,
            expected: "no empty dimension".into(),
        });
    }
    Ok(())
}

/// Fails unless `tau` is a finite, strictly positive temperature.
pub fn temperature(op: &str, tau: f64) -> Result<()> {
    if !(tau.is_finite() && tau > 0.0) {
        return Err(KdError::invalid(format!(
            "{op}: temperature tau must be finite and > 0, got {tau}"
        )));
    }
    Ok(())
}

/// Fails unless `labels` is an `Int64` tensor whose values are class indices in `[0, K)` or
/// equal `ignore`. Reads two scalars back from the device (min and max), which is cheap next
/// to the out-of-range failure it prevents (on CUDA an out-of-range target is a device assert).
pub fn label_values(op: &str, labels: &Tensor, num_classes: i64, ignore: Option<i64>) -> Result<()> {
    if labels.kind() != Kind::Int64 {
        return Err(KdError::invalid(format!(
            "{op}: labels must be Int64 class indices, got {:?}",
            labels.kind()
        )));
    }
    if labels.numel() == 0 {
        return Ok(());
    }
    let valid = match ignore {
        Some(ig) => labels.where_scalarother(&labels.ne(ig), 0),
        None => labels.shallow_clone(),
    };
    let (lo, hi) = (valid.min().int64_value(&[]), valid.max().int64_value(&[]));
    if lo < 0 || hi >= num_classes {
        let ignored = ignore
            .map(|ig| format!(" (or the ignore index {ig})"))
            .unwrap_or_default();
        return Err(KdError::invalid(format!(
            "{op}: labels must lie in [0, {num_classes}){ignored}, found values in [{lo}, {hi}]"
        )));
    }
    Ok(())
}
