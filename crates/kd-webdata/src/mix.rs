//! MixDistribution (spec §3.3): new input distributions from the batch itself.
//!
//! Web images differ from the teacher's data in style (contrast, colour, texture) more than in
//! content. Swapping part of one image's per-channel statistics for another's produces an image
//! with the same content under a new "style"; asking each network to embed the clean and the
//! perturbed image alike (NT-Xent) pushes the student towards features that ignore the shift.
//!
//! The mixing weight is Beta(α, α)-distributed, α = 0.1, so most images keep nearly all of
//! their own statistics or take nearly all of their partner's. Random numbers come from kd-core's
//! seeded ChaCha8 generators, never from libtorch's global one; the Beta variate is the ratio
//! `X / (X + Y)` of two Gamma(α) variates (Marsaglia–Tsang with the `U^{1/α}` boost for α < 1).

use rand::seq::SliceRandom;
use rand::Rng as _;
use tch::{Kind, Tensor};

use kd_core::rng::Rng;
use kd_core::{KdError, Result};

/// One standard normal variate (Box–Muller).
fn normal(rng: &mut Rng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>(); // (0, 1]
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// One Gamma(`shape`, 1) variate, `shape > 0`.
pub fn sample_gamma(rng: &mut Rng, shape: f64) -> f64 {
    if shape < 1.0 {
        // Gamma(a) = Gamma(a + 1) · U^{1/a}.
        let u: f64 = 1.0 - rng.gen::<f64>();
        return sample_gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = 1.0 - rng.gen::<f64>();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// One Beta(`a`, `b`) variate in `[0, 1]`.
pub fn sample_beta(rng: &mut Rng, a: f64, b: f64) -> f64 {
    let x = sample_gamma(rng, a);
    let y = sample_gamma(rng, b);
    if x + y > 0.0 {
        x / (x + y)
    } else {
        // Both underflowed (possible for tiny shapes): a fair coin between the two ends.
        f64::from(u8::from(rng.gen::<bool>()))
    }
}

/// The random part of one MixDistribution call: a weight per image and a partner per image.
#[derive(Clone, Debug, PartialEq)]
pub struct MixDraw {
    /// λ_b ∈ [0, 1], one per image (all 1 when the batch is left unperturbed).
    pub lambda: Vec<f64>,
    /// π: a permutation of `0..B`.
    pub perm: Vec<i64>,
}

impl MixDraw {
    /// Draws `b` weights from Beta(`alpha`, `alpha`) and a uniform permutation; with
    /// probability `1 − p` the whole batch is left unperturbed (λ ≡ 1).
    pub fn draw(rng: &mut Rng, b: usize, alpha: f64, p: f64) -> Self {
        let apply = p >= 1.0 || rng.gen::<f64>() < p;
        let lambda = if apply {
            (0..b).map(|_| sample_beta(rng, alpha, alpha)).collect()
        } else {
            vec![1.0; b]
        };
        let mut perm: Vec<i64> = (0..b as i64).collect();
        perm.shuffle(rng);
        Self { lambda, perm }
    }
}

/// Per-image, per-channel mean and `sqrt(var + eps)` of `x [B, C, H, W]` over `H, W`
/// (unbiased variance, as `torch.var`), both `[B, C, 1, 1]` and detached.
pub fn channel_stats(x: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    if x.dim() != 4 {
        return Err(KdError::BadShape {
            op: "kd3 mix_distribution".into(),
            name: "x".into(),
            shape: x.size(),
            expected: "[B, C, H, W]".into(),
        });
    }
    let x = x.detach();
    let dims = [2i64, 3].as_slice();
    let mu = x.mean_dim(dims, true, x.kind());
    let var = x.var_dim(dims, true, true);
    Ok((mu, (var + eps).sqrt()))
}

/// MixDistribution: `x̃ = (x − μ)/σ · (λσ + (1 − λ)σ[π]) + (λμ + (1 − λ)μ[π])`.
///
/// `x`: `[B, C, H, W]` normalised images; `lambda`: `[B]`; `perm`: `[B]` Int64, a permutation.
/// Statistics as in [`channel_stats`] (detached). Returns `[B, C, H, W]`.
pub fn mix_distribution(x: &Tensor, lambda: &Tensor, perm: &Tensor, eps: f64) -> Result<Tensor> {
    let (mu, sig) = channel_stats(x, eps)?;
    let b = x.size()[0];
    for (name, t) in [("lambda", lambda), ("perm", perm)] {
        if t.size() != [b] {
            return Err(KdError::BadShape {
                op: "kd3 mix_distribution".into(),
                name: name.into(),
                shape: t.size(),
                expected: format!("[{b}] (one per image)"),
            });
        }
    }
    let lam = lambda.to_kind(x.kind()).to_device(x.device()).view([b, 1, 1, 1]);
    let perm = perm.to_kind(Kind::Int64).to_device(x.device());
    let mu2 = mu.index_select(0, &perm);
    let sig2 = sig.index_select(0, &perm);
    let one_minus = lam.ones_like() - &lam;
    let mu_mix = &mu * &lam + mu2 * &one_minus;
    let sig_mix = &sig * &lam + sig2 * &one_minus;
    Ok((x - &mu) / &sig * sig_mix + mu_mix)
}

/// [`mix_distribution`] with a [`MixDraw`].
pub fn apply_draw(x: &Tensor, draw: &MixDraw, eps: f64) -> Result<Tensor> {
    let lambda = Tensor::from_slice(&draw.lambda);
    let perm = Tensor::from_slice(&draw.perm);
    mix_distribution(x, &lambda, &perm, eps)
}
