//! §7.1, §7.2 and §7.8: the stage KL against the closed form and a Monte-Carlo estimate,
//! zero for identical distributions, asymmetry, and finite values at the guards.

use kd_core::losses::KlDirection;
use tch::{Device, Kind, Tensor};

use super::{all_finite, randn};
use crate::fdp::DiagGaussian;
use crate::loss::stage_kl;

fn d(v: &[f64]) -> Tensor {
    Tensor::from_slice(v).view([1, v.len() as i64])
}

fn gauss(mu: &[f64], var: &[f64]) -> DiagGaussian {
    let logvar: Vec<f64> = var.iter().map(|v| v.ln()).collect();
    DiagGaussian {
        mu: d(mu),
        logvar: d(&logvar),
    }
}

#[test]
fn matches_the_one_dimensional_closed_form() {
    // KL(N(0,1) ‖ N(1,2)) = ½(ln 2 + (1 + 1)/2 − 1) = ½ ln 2.
    let kl = stage_kl(
        &d(&[0.0]),
        &d(&[1.0]),
        &gauss(&[1.0], &[2.0]),
        KlDirection::Forward,
    )
    .unwrap();
    assert!((kl.double_value(&[]) - 0.5 * 2f64.ln()).abs() < 1e-12);
    assert!((0.5 * 2f64.ln() - 0.34657).abs() < 1e-5);
}

#[test]
fn is_the_dimension_mean_of_additive_terms() {
    // A diagonal Gaussian's KL is the sum over dimensions; the stage loss is its mean over D.
    let (mp, vp, mq, vq): ([f64; 3], [f64; 3], [f64; 3], [f64; 3]) = (
        [0.5, -1.0, 2.0],
        [0.3, 1.7, 2.5],
        [0.0, 1.0, 1.5],
        [1.2, 0.4, 3.0],
    );
    let mut sum = 0.0;
    for i in 0..3 {
        let one = stage_kl(
            &d(&[mp[i]]),
            &d(&[vp[i]]),
            &gauss(&[mq[i]], &[vq[i]]),
            KlDirection::Forward,
        )
        .unwrap()
        .double_value(&[]);
        let closed = 0.5 * (vq[i].ln() - vp[i].ln() + (vp[i] + (mp[i] - mq[i]).powi(2)) / vq[i] - 1.0);
        assert!((one - closed).abs() < 1e-12);
        sum += one;
    }
    let joint = stage_kl(&d(&mp), &d(&vp), &gauss(&mq, &vq), KlDirection::Forward).unwrap();
    assert!((joint.double_value(&[]) * 3.0 - sum).abs() < 1e-12);
}

#[test]
fn agrees_with_a_monte_carlo_estimate_in_several_dimensions() {
    // E_{x~p}[log p(x) − log q(x)] over 200k seeded draws of a 3-d diagonal Gaussian.
    let (mp, vp, mq, vq): ([f64; 3], [f64; 3], [f64; 3], [f64; 3]) = (
        [0.3, -1.0, 0.0],
        [0.5, 2.0, 0.1],
        [-0.7, 0.0, 0.2],
        [2.0, 1.0, 0.3],
    );
    tch::manual_seed(31);
    let n = 200_000;
    let mut log_ratio = Tensor::zeros([n], (Kind::Double, Device::Cpu));
    for i in 0..3 {
        let x = Tensor::randn([n], (Kind::Double, Device::Cpu)) * vp[i].sqrt() + mp[i];
        log_ratio += (&x - mp[i]).square() * (-0.5 / vp[i]) - 0.5 * vp[i].ln()
            + (&x - mq[i]).square() * (0.5 / vq[i])
            + 0.5 * vq[i].ln();
    }
    // The stage loss is the mean over D = 3 dimensions.
    let estimate = log_ratio.mean(Kind::Double).double_value(&[]) / 3.0;
    let std_err = log_ratio.std(true).double_value(&[]) / (n as f64).sqrt() / 3.0;
    let closed = stage_kl(&d(&mp), &d(&vp), &gauss(&mq, &vq), KlDirection::Forward)
        .unwrap()
        .double_value(&[]);
    assert!(
        (estimate - closed).abs() < 4.0 * std_err,
        "MC {estimate} ± {std_err} vs closed form {closed}"
    );
}

#[test]
fn zero_for_identical_distributions_and_positive_otherwise() {
    tch::manual_seed(32);
    let mu = randn(&[8, 16]);
    let logvar = randn(&[8, 16]);
    for dir in [KlDirection::Forward, KlDirection::Reverse] {
        let same = DiagGaussian {
            mu: mu.shallow_clone(),
            logvar: logvar.shallow_clone(),
        };
        let kl = stage_kl(&mu, &logvar.exp(), &same, dir).unwrap();
        assert!(
            kl.double_value(&[]).abs() < 1e-6,
            "{dir:?}: {}",
            kl.double_value(&[])
        );
        let other = DiagGaussian {
            mu: &mu + 0.3,
            logvar: &logvar * 0.5,
        };
        assert!(
            stage_kl(&mu, &logvar.exp(), &other, dir)
                .unwrap()
                .double_value(&[])
                > 1e-3
        );
    }
}

#[test]
fn forward_and_reverse_differ_and_the_flag_switches_them() {
    let (mu_t, var_t) = (d(&[0.2, 1.0]), d(&[0.5, 0.2]));
    let s = gauss(&[-0.4, 0.5], &[3.0, 1.0]);
    let fwd = stage_kl(&mu_t, &var_t, &s, KlDirection::Forward)
        .unwrap()
        .double_value(&[]);
    let rev = stage_kl(&mu_t, &var_t, &s, KlDirection::Reverse)
        .unwrap()
        .double_value(&[]);
    assert!((fwd - rev).abs() > 0.1, "forward {fwd} reverse {rev}");
    // The reverse KL is the forward formula with the roles swapped.
    let t_as_student = gauss(&[0.2, 1.0], &[0.5, 0.2]);
    let swapped = stage_kl(&s.mu, &s.logvar.exp(), &t_as_student, KlDirection::Forward)
        .unwrap()
        .double_value(&[]);
    assert!((rev - swapped).abs() < 1e-12);
}

#[test]
fn finite_when_the_log_variance_saturates_or_the_teacher_channel_is_zero() {
    let mu_t = d(&[0.0, 0.0, 1.0]);
    let var_t = d(&[0.0, 0.0, 0.0]);
    let pred = DiagGaussian {
        mu: d(&[0.5, -0.5, 0.0]).set_requires_grad(true),
        logvar: d(&[1.0e4, -1.0e4, 0.0]).set_requires_grad(true),
    };
    for dir in [KlDirection::Forward, KlDirection::Reverse] {
        let kl = stage_kl(&mu_t, &var_t, &pred, dir).unwrap();
        assert!(all_finite(&kl));
        kl.backward();
        assert!(all_finite(&pred.mu.grad()) && all_finite(&pred.logvar.grad()));
    }
    let bad = DiagGaussian {
        mu: d(&[0.0, 1.0]),
        logvar: d(&[0.0, 1.0]),
    };
    let err = stage_kl(&d(&[0.0]), &d(&[1.0]), &bad, KlDirection::Forward).unwrap_err();
    assert!(
        err.to_string().contains("[1, 2]") && err.to_string().contains("[1, 1]"),
        "{err}"
    );
}
