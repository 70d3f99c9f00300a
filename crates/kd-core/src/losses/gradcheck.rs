//! Test helpers for the loss kernels: central finite-difference gradient checks and the
//! shape-error contract.

use tch::{Kind, Tensor};

use crate::{KdError, Result};

/// Step of the central difference; with fp64 the truncation error is O(h²) ≈ 1e-12 and the
/// rounding error O(ε/h) ≈ 1e-10, both far below the tolerance.
const STEP: f64 = 1e-6;
/// Absolute tolerance on each gradient component.
const ATOL: f64 = 1e-6;
/// Relative tolerance on each gradient component.
const RTOL: f64 = 1e-5;

/// Checks the autograd gradient of `f` with respect to each input listed in `wrt` against
/// central finite differences, in fp64.
///
/// `f` may return a tensor of any shape; it is reduced to a scalar with fixed, distinct
/// weights per element so every output component (e.g. each sample of a `[B]` loss) is
/// checked, not only their sum. The check also fails when the numerical gradient is
/// identically zero, because agreement at a stationary point proves nothing.
pub fn assert_gradients(
    name: &str,
    inputs: &[Tensor],
    wrt: &[usize],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let base: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.detach().to_kind(Kind::Double).copy())
        .collect();
    let probe = f(&base).unwrap_or_else(|e| panic!("{name}: {e}"));
    let n_out = probe.numel() as i64;
    let weights =
        Tensor::linspace(0.5, 1.5, n_out, (Kind::Double, probe.device())).view(probe.size().as_slice());
    let scalar = |xs: &[Tensor]| -> Tensor {
        let out = f(xs).unwrap_or_else(|e| panic!("{name}: {e}"));
        (out.to_kind(Kind::Double) * &weights).sum(Kind::Double)
    };

    for &i in wrt {
        let mut xs: Vec<Tensor> = base.iter().map(|t| t.shallow_clone()).collect();
        xs[i] = base[i].copy().set_requires_grad(true);
        let y = scalar(&xs);
        let analytic = Tensor::run_backward(&[&y], &[&xs[i]], false, false).remove(0);
        let analytic = Vec::<f64>::try_from(analytic.flatten(0, -1)).unwrap();

        let values = Vec::<f64>::try_from(base[i].flatten(0, -1)).unwrap();
        let shape = base[i].size();
        let eval_at = |vals: &[f64]| -> f64 {
            let mut xs: Vec<Tensor> = base.iter().map(|t| t.shallow_clone()).collect();
            xs[i] = Tensor::from_slice(vals).view(shape.as_slice());
            tch::no_grad(|| scalar(&xs)).double_value(&[])
        };
        let mut max_numeric = 0f64;
        for j in 0..values.len() {
            let mut v = values.clone();
            v[j] = values[j] + STEP;
            let up = eval_at(&v);
            v[j] = values[j] - STEP;
            let down = eval_at(&v);
            let numeric = (up - down) / (2.0 * STEP);
            max_numeric = max_numeric.max(numeric.abs());
            let a = analytic[j];
            assert!(
                (a - numeric).abs() <= ATOL + RTOL * numeric.abs(),
                "{name}: d/d input {i} element {j}: autograd {a} vs finite difference {numeric}"
            );
        }
        assert!(
            max_numeric > 1e-6,
            "{name}: the gradient wrt input {i} is zero everywhere; pick a non-stationary point"
        );
    }
}

/// Asserts that `res` is a shape error whose message names the shapes of both `a` and `b`.
pub fn assert_shape_error<T>(res: Result<T>, a: &Tensor, b: &Tensor) {
    let err = match res {
        Ok(_) => panic!(
            "expected a shape error for {:?} vs {:?}, got Ok",
            a.size(),
            b.size()
        ),
        Err(e) => e,
    };
    assert!(
        matches!(err, KdError::Shape { .. } | KdError::BadShape { .. }),
        "expected a shape error, got {err}"
    );
    let msg = err.to_string();
    for s in [a.size(), b.size()] {
        assert!(
            msg.contains(&format!("{s:?}")),
            "message {msg:?} does not name the shape {s:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;

    #[test]
    fn accepts_a_correct_gradient() {
        let x = Tensor::from_slice(&[0.3f64, -1.2, 2.0]);
        assert_gradients("x³", &[x], &[0], |v| Ok(v[0].pow_tensor_scalar(3)));
    }

    #[test]
    #[should_panic(expected = "finite difference")]
    fn rejects_a_wrong_gradient() {
        // d/dx (sg(x)·x) is x for autograd but 2x numerically.
        let x = Tensor::from_slice(&[0.3f64, -1.2, 2.0]);
        assert_gradients("sg(x)·x", &[x], &[0], |v| Ok(v[0].detach() * &v[0]));
    }

    #[test]
    #[should_panic(expected = "zero everywhere")]
    fn rejects_a_stationary_point() {
        let x = Tensor::zeros([3], (Kind::Double, Device::Cpu));
        assert_gradients("x²", &[x], &[0], |v| Ok(v[0].square()));
    }

    #[test]
    #[should_panic(expected = "does not name the shape")]
    fn shape_error_must_name_both_shapes() {
        let a = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let only_a: Result<()> = Err(KdError::BadShape {
            op: "op".into(),
            name: "a".into(),
            shape: a.size(),
            expected: "something".into(),
        });
        assert_shape_error(only_a, &a, &b);
    }
}
