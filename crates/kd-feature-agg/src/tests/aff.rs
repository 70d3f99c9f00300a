//! §7.4 and §7.5: AFF shapes on every stage, gate range, gate limits, and the pairs of the
//! benchmark with different channel widths.

use tch::Tensor;

use super::{max_abs, randn, Pair};
use crate::aff::{AffCascade, Gate};
use crate::config::Upsample;
use tch::{nn, Device};

/// The student's stage maps of a forward pass on a 16×16 batch, without the stem.
fn stage_maps(p: &Pair, b: i64) -> Vec<Tensor> {
    let out = p.student.forward_t(&randn(&[b, 3, 16, 16]), true);
    out.features.into_iter().skip(1).map(|(_, t)| t).collect()
}

#[test]
fn one_fused_map_per_stage_with_the_stage_size_and_fused_width() {
    // resnet8 (16/32/64 channels) fused to resnet32x4's widths (64/128/256), then the standard
    // pairs; the cascade must work for any widths.
    for (student, teacher) in [
        ("resnet8", "resnet32x4"),
        ("resnet8x4", "resnet32x4"),
        ("wrn_16_2", "wrn_40_2"),
    ] {
        let p = Pair::new(student, teacher);
        let s_in: Vec<i64> = p.student.taps()[1..].iter().map(|t| t.channels).collect();
        let widths: Vec<i64> = p.teacher.model().taps()[1..].iter().map(|t| t.channels).collect();
        let aff = AffCascade::new(&(p.aux() / "aff"), &s_in, &widths, Upsample::Nearest).unwrap();
        let maps = stage_maps(&p, 4);
        let refs: Vec<&Tensor> = maps.iter().collect();
        let out = aff.forward_t(&refs, true).unwrap();
        assert_eq!(out.fused.len(), 3, "{student}");
        assert_eq!(out.gates.len(), 3);
        for (i, (a, f)) in out.fused.iter().zip(&maps).enumerate() {
            let (fs, as_) = (f.size(), a.size());
            assert_eq!(
                as_,
                vec![4, widths[i], fs[2], fs[3]],
                "{student}→{teacher} stage {i}"
            );
            match &out.gates[i] {
                Some(g) => {
                    assert_eq!(g.size(), vec![4, 2, fs[2], fs[3]]);
                    assert!(g.min().double_value(&[]) > 0.0 && g.max().double_value(&[]) < 1.0);
                }
                None => assert_eq!(i, 2, "only the deepest stage has no gate"),
            }
        }
        // The gate starts as an even blend.
        let g0 = out.gates[0].as_ref().unwrap();
        assert!((g0 - 0.5).abs().max().double_value(&[]) < 1e-6);
    }
}

#[test]
fn gate_limits_select_the_own_or_the_deeper_map() {
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    // Stage widths differ between stages so the up-projection P_i is exercised.
    let aff = AffCascade::new(&vs.root(), &[4, 6, 8], &[5, 7, 9], Upsample::Nearest).unwrap();
    let maps = [randn(&[2, 4, 8, 8]), randn(&[2, 6, 4, 4]), randn(&[2, 8, 2, 2])];
    let refs: Vec<&Tensor> = maps.iter().collect();
    let own = aff.forward_gated(&refs, false, Gate::Fixed(1.0, 0.0)).unwrap();
    for (i, m) in maps.iter().enumerate() {
        let e = aff.embed(i, m, false).unwrap();
        assert!(max_abs(&(&own.fused[i] - e)) < 1e-6, "stage {i}");
    }
    let deep = aff.forward_gated(&refs, false, Gate::Fixed(0.0, 1.0)).unwrap();
    for (i, m) in maps.iter().enumerate().take(2) {
        let s = m.size();
        let lifted = aff.lift(i, &deep.fused[i + 1], s[2], s[3]).unwrap();
        assert!(max_abs(&(&deep.fused[i] - lifted)) < 1e-6, "stage {i}");
    }
    // With equal widths there is no projection: A_i is the upsampled deeper map itself.
    let same = AffCascade::new(&(vs.root() / "same"), &[4, 6], &[3, 3], Upsample::Nearest).unwrap();
    let maps = [randn(&[2, 4, 8, 8]), randn(&[2, 6, 4, 4])];
    let out = same
        .forward_gated(&[&maps[0], &maps[1]], false, Gate::Fixed(0.0, 1.0))
        .unwrap();
    let up = out.fused[1].upsample_nearest2d([8, 8], None, None);
    assert!(max_abs(&(&out.fused[0] - up)) < 1e-6);
    assert!(
        same.lift(1, &out.fused[1], 4, 4).is_err(),
        "the deepest stage has nothing below"
    );
}

#[test]
fn bad_inputs_are_errors_naming_the_shape() {
    let vs = nn::VarStore::new(Device::Cpu);
    let aff = AffCascade::new(&vs.root(), &[4, 6], &[5, 7], Upsample::Bilinear).unwrap();
    let a = randn(&[2, 4, 8, 8]);
    let wrong = randn(&[2, 5, 4, 4]);
    let err = aff.forward_t(&[&a, &wrong], true).unwrap_err().to_string();
    assert!(
        err.contains("[2, 5, 4, 4]") && err.contains("[B, 6, H, W]"),
        "{err}"
    );
    let other_batch = randn(&[3, 6, 4, 4]);
    assert!(aff.forward_t(&[&a, &other_batch], true).is_err());
    assert!(aff.forward_t(&[&a], true).is_err());
    assert!(AffCascade::new(&vs.root(), &[4], &[5, 7], Upsample::Nearest).is_err());
    assert!(AffCascade::new(&vs.root(), &[0], &[5], Upsample::Nearest).is_err());
}
