//! Contrastive losses on embedding batches: InfoNCE and SimCLR's NT-Xent.
//!
//! Both score every anchor against a set of candidates by cosine similarity divided by a
//! temperature τ, and apply a cross-entropy whose target is the anchor's positive. Vectors are
//! L2-normalised here (idempotent for inputs that already are), so the similarity is a cosine in
//! `[−1, 1]` and τ alone sets the sharpness.
//!
//! - [`info_nce`]: `B` queries against `B` keys, the positive of query `i` being key `i`
//!   (one direction, `B` candidates per query, the positive included).
//! - [`nt_xent`]: the two views of a batch are stacked into `2B` vectors; each one's positive is
//!   its other view and the candidates are the other `2B − 1` vectors (self-similarity masked
//!   out). Both directions are averaged, as in SimCLR and in KD³'s MixDistribution block
//!   (τ = 0.3 there). Its value is `log(2B − 1)` when all similarities are equal.
//!
//! Neither loss detaches anything: in their uses both sides come from trainable branches (two
//! views through one network, or a network and its projector). A caller that contrasts against
//! a frozen teacher detaches the teacher's embeddings itself.

use tch::{Kind, Tensor};

use super::check;
use crate::Result;

/// Floor of the L2 norm in normalisation (as in PyTorch's `F.normalize`).
const NORM_EPS: f64 = 1e-12;

fn l2_normalize(x: &Tensor, kind: Kind) -> Tensor {
    let x = x.to_kind(kind);
    let norm = x
        .norm_scalaropt_dim(2.0, [-1i64].as_slice(), true)
        .clamp_min(NORM_EPS);
    x / norm
}

fn check_views(op: &str, a_name: &str, a: &Tensor, b_name: &str, b: &Tensor, tau: f64) -> Result<()> {
    check::pair(op, "[B, D]", 2, a_name, a, b_name, b)?;
    check::non_empty(op, a_name, a)?;
    check::temperature(op, tau)
}

/// InfoNCE with in-batch negatives: `mean_i −log softmax_j(cos(q_i, k_j) / τ)[i]`, a scalar.
///
/// `query`, `keys`: `[B, D]` embeddings (L2-normalised here); row `i` of `keys` is the positive
/// of row `i` of `query`, the other `B − 1` keys its negatives. `tau > 0`. Returns a 0-dim
/// tensor in nats, between 0 and about `log B + 2/τ`. Gradients flow to both inputs.
pub fn info_nce(query: &Tensor, keys: &Tensor, tau: f64) -> Result<Tensor> {
    const OP: &str = "info_nce";
    check_views(OP, "query", query, "keys", keys, tau)?;
    let kind = check::work_kind(&[query, keys]);
    // 1/τ scales the [B, D] queries rather than the [B, B] logits, and libtorch's fused
    // cross-entropy (log-softmax + NLL, one backward node) takes the diagonal as targets.
    let q = l2_normalize(query, kind) * (1.0 / tau);
    let logits = q.matmul(&l2_normalize(keys, kind).transpose(0, 1));
    let target = Tensor::arange(query.size()[0], (Kind::Int64, query.device()));
    Ok(logits.cross_entropy_loss::<Tensor>(&target, None, tch::Reduction::Mean, -100, 0.0))
}

/// SimCLR NT-Xent between two views, a scalar (mean over the `2B` anchors).
///
/// `z1`, `z2`: `[B, D]` embeddings of the same `B` samples under two views (L2-normalised
/// here). With `z = [z1; z2]` (`2B` rows) and `s_ij = cos(z_i, z_j) / τ`, anchor `i`'s loss is
/// `−log( exp(s_{i,pos(i)}) / Σ_{j≠i} exp(s_ij) )` with `pos(i) = i ± B`. `tau > 0` (KD³
/// uses 0.3). Returns a 0-dim tensor in nats, `≥ 0`; for `B = 1` it is 0 (the positive is the
/// only candidate). Gradients flow to both inputs.
pub fn nt_xent(z1: &Tensor, z2: &Tensor, tau: f64) -> Result<Tensor> {
    const OP: &str = "nt_xent";
    check_views(OP, "z1", z1, "z2", z2, tau)?;
    let kind = check::work_kind(&[z1, z2]);
    let b = z1.size()[0];
    let device = z1.device();
    // One normalisation of the stacked views; 1/τ on the [2B, D] side of the product, not on
    // the [2B, 2B] logits; the self-similarity masked in place; libtorch's fused cross-entropy
    // (log-softmax + NLL, one backward node).
    let z = l2_normalize(&Tensor::cat(&[z1, z2], 0), kind);
    let self_mask = Tensor::eye(2 * b, (Kind::Bool, device));
    let mut logits = (&z * (1.0 / tau)).matmul(&z.transpose(0, 1));
    let _ = logits.masked_fill_(&self_mask, f64::NEG_INFINITY);
    // Anchor i in the first half has its positive at i + B, anchor B + i at i.
    let positive = (Tensor::arange(2 * b, (Kind::Int64, device)) + b).remainder(2 * b);
    Ok(logits.cross_entropy_loss::<Tensor>(&positive, None, tch::Reduction::Mean, -100, 0.0))
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;
    use crate::losses::gradcheck::{assert_gradients, assert_shape_error};

    fn m(rows: &[[f64; 2]]) -> Tensor {
        let flat: Vec<f64> = rows.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, 2])
    }

    fn randn(shape: &[i64]) -> Tensor {
        Tensor::randn(shape, (Kind::Double, Device::Cpu))
    }

    #[test]
    fn info_nce_hand_computed() {
        // q = [e0, e1]; k = [e0, (1,1)/√2] after normalisation (k1 is given as (2,2)); τ = 1.
        // Row 0 logits [1, 1/√2], positive 0: ln(1 + e^{1/√2 − 1}).
        // Row 1 logits [0, 1/√2], positive 1: ln(1 + e^{−1/√2}).
        let q = m(&[[1.0, 0.0], [0.0, 3.0]]);
        let k = m(&[[1.0, 0.0], [2.0, 2.0]]);
        let r = std::f64::consts::FRAC_1_SQRT_2;
        let want = 0.5 * ((1.0 + (r - 1.0).exp()).ln() + (1.0 + (-r).exp()).ln());
        let got = info_nce(&q, &k, 1.0).unwrap().double_value(&[]);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // τ = 0.5 doubles every logit: row 0 → ln(1 + e^{2(1/√2 − 1)}), row 1 → ln(1 + e^{−2/√2}).
        let want = 0.5 * ((1.0 + (2.0 * (r - 1.0)).exp()).ln() + (1.0 + (-2.0 * r).exp()).ln());
        assert!((info_nce(&q, &k, 0.5).unwrap().double_value(&[]) - want).abs() < 1e-12);
    }

    #[test]
    fn nt_xent_hand_computed() {
        // z1 = z2 = [e0, e1], τ = 1. Anchor e0 (row 0) sees, besides itself: row 1 = e1 (cos 0),
        // row 2 = e0 (cos 1, the positive), row 3 = e1 (cos 0): loss = −ln(e / (e + 2)).
        // All four anchors are symmetric, so the mean is ln(1 + 2/e) ≈ 0.551445.
        let z = m(&[[1.0, 0.0], [0.0, 1.0]]);
        let want = (1.0 + 2.0 / std::f64::consts::E).ln();
        assert!((nt_xent(&z, &z, 1.0).unwrap().double_value(&[]) - want).abs() < 1e-12);
        // Swapped second view: the positive now has cos 0 and one negative cos 1:
        // −ln(1 / (1 + 1 + e)) = ln(2 + e) for every anchor.
        let z2 = m(&[[0.0, 1.0], [1.0, 0.0]]);
        let want = (2.0 + std::f64::consts::E).ln();
        assert!((nt_xent(&z, &z2, 1.0).unwrap().double_value(&[]) - want).abs() < 1e-12);
        // τ = 0.3 on the aligned case: ln(1 + 2·e^{−1/0.3}).
        let want = (1.0 + 2.0 * (-1.0f64 / 0.3).exp()).ln();
        assert!((nt_xent(&z, &z, 0.3).unwrap().double_value(&[]) - want).abs() < 1e-12);
    }

    #[test]
    fn nt_xent_equal_similarities_give_log_2b_minus_1() {
        // All 2B vectors identical: every similarity is 1/τ, the softmax over the 2B − 1
        // candidates is uniform and the loss is ln(2B − 1) for every τ.
        let b = 5;
        let z = Tensor::ones([b, 3], (Kind::Double, Device::Cpu));
        for tau in [0.3, 1.0] {
            let got = nt_xent(&z, &(&z * 2.0), tau).unwrap().double_value(&[]);
            assert!((got - ((2 * b - 1) as f64).ln()).abs() < 1e-12);
        }
        // B = 1: the positive is the only candidate.
        let one = randn(&[1, 4]);
        assert!(
            nt_xent(&one, &randn(&[1, 4]), 0.3)
                .unwrap()
                .double_value(&[])
                .abs()
                < 1e-12
        );
    }

    #[test]
    fn aligned_views_score_lower_than_random() {
        tch::manual_seed(40);
        let z = randn(&[16, 32]);
        let noisy = &z + randn(&[16, 32]) * 0.05;
        let unrelated = randn(&[16, 32]);
        let aligned = nt_xent(&z, &noisy, 0.3).unwrap().double_value(&[]);
        let random = nt_xent(&z, &unrelated, 0.3).unwrap().double_value(&[]);
        assert!(aligned >= 0.0 && aligned < random, "{aligned} vs {random}");
        let aligned = info_nce(&z, &noisy, 0.3).unwrap().double_value(&[]);
        let random = info_nce(&z, &unrelated, 0.3).unwrap().double_value(&[]);
        assert!(aligned < random, "{aligned} vs {random}");
    }

    #[test]
    fn nt_xent_symmetric_in_views_and_scale_invariant() {
        tch::manual_seed(41);
        let (a, b) = (randn(&[4, 6]), randn(&[4, 6]));
        let ab = nt_xent(&a, &b, 0.5).unwrap().double_value(&[]);
        let ba = nt_xent(&b, &a, 0.5).unwrap().double_value(&[]);
        let scaled = nt_xent(&(&a * 7.0), &b, 0.5).unwrap().double_value(&[]);
        assert!((ab - ba).abs() < 1e-12 && (ab - scaled).abs() < 1e-12);
    }

    #[test]
    fn gradients_match_finite_differences() {
        tch::manual_seed(42);
        let (a, b) = (randn(&[3, 4]), randn(&[3, 4]));
        assert_gradients("nt_xent", &[a.shallow_clone(), b.shallow_clone()], &[0, 1], |x| {
            nt_xent(&x[0], &x[1], 0.3)
        });
        assert_gradients("info_nce", &[a, b], &[0, 1], |x| info_nce(&x[0], &x[1], 0.5));
    }

    #[test]
    fn shape_errors_name_both_shapes() {
        let a = Tensor::zeros([4, 128], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([5, 128], (Kind::Float, Device::Cpu));
        let c = Tensor::zeros([4, 128, 1], (Kind::Float, Device::Cpu));
        assert_shape_error(nt_xent(&a, &b, 0.3), &a, &b);
        assert_shape_error(info_nce(&a, &b, 0.3), &a, &b);
        assert_shape_error(nt_xent(&c, &c, 0.3), &c, &c);
        assert!(matches!(info_nce(&a, &a, -0.3), Err(crate::KdError::Invalid(_))));
    }
}
