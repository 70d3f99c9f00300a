//! Shape checks done in Rust before a tensor reaches libtorch, so a mismatch is an error that
//! names both operands instead of a C++ exception turned into a panic.

use tch::Tensor;

use crate::{KdError, Result};

/// Fails unless `a` and `b` have identical shapes.
pub fn same(op: &str, a_name: &str, a: &Tensor, b_name: &str, b: &Tensor) -> Result<()> {
    let (sa, sb) = (a.size(), b.size());
    if sa != sb {
        return Err(KdError::Shape {
            op: op.into(),
            left_name: a_name.into(),
            left: sa,
            right_name: b_name.into(),
            right: sb,
        });
    }
    Ok(())
}

/// Fails unless `t` has exactly `rank` dimensions.
pub fn rank(op: &str, name: &str, t: &Tensor, rank: usize) -> Result<()> {
    let s = t.size();
    if s.len() != rank {
        return Err(KdError::BadShape {
            op: op.into(),
            name: name.into(),
            shape: s,
            expected: format!("{rank} dimensions"),
        });
    }
    Ok(())
}

/// Fails unless dimension `dim` of `a` equals dimension `dim_b` of `b`.
pub fn dim_eq(
    op: &str,
    a_name: &str,
    a: &Tensor,
    dim: usize,
    b_name: &str,
    b: &Tensor,
    dim_b: usize,
) -> Result<()> {
    let (sa, sb) = (a.size(), b.size());
    if sa.get(dim) != sb.get(dim_b) || sa.get(dim).is_none() {
        return Err(KdError::Shape {
            op: format!("{op} (dim {dim} vs dim {dim_b})"),
            left_name: a_name.into(),
            left: sa,
            right_name: b_name.into(),
            right: sb,
        });
    }
    Ok(())
}

/// Fails unless `labels` is a `[B]` integer vector matching the batch of `logits` `[B, ...]`.
pub fn labels_for(op: &str, logits: &Tensor, labels: &Tensor) -> Result<()> {
    rank(op, "labels", labels, 1)?;
    dim_eq(op, "logits", logits, 0, "labels", labels, 0)
}
