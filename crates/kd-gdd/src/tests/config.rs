//! Configuration: defaults, presets, TOML forms and errors that name the key.

use kd_core::losses::CwdConfig;

use crate::{GddConfig, GddLevelSpec, NoiseKind, NoiseShape};

#[test]
fn defaults_and_presets_match_the_released_configs() {
    let c = GddConfig::default();
    assert_eq!((c.tau, c.alpha), (4.0, 145.0));
    assert_eq!(c.noise, NoiseKind::Gaussian { std: 1.0 });
    assert_eq!(c.noise_shape, NoiseShape::SharedAcrossChannels);
    assert_eq!(
        (c.student_tap.as_str(), c.teacher_tap.as_str()),
        ("stage4", "stage4")
    );
    assert!(c.logit_cwd.is_none() && c.levels.is_empty());
    assert_eq!(GddConfig::pspnet_r18(), c);
    assert_eq!(GddConfig::deeplabv3_r18().alpha, 175.0);
    let levels = c.resolved_levels().unwrap();
    assert_eq!(
        levels,
        [GddLevelSpec {
            student_tap: "stage4".into(),
            teacher_tap: "stage4".into(),
            alpha: 145.0
        }]
    );
}

#[test]
fn reads_from_toml() {
    let c: GddConfig = toml::from_str("").unwrap();
    assert_eq!(c, GddConfig::default());
    let c: GddConfig = toml::from_str(
        r#"
        alpha = 175.0
        noise = { kind = "uniform", low = -1.0, high = 1.0 }
        noise_shape = "per_channel"
        logit_cwd = { tau = 4.0, weight = 3.0 }
        "#,
    )
    .unwrap();
    assert_eq!(c.noise, NoiseKind::Uniform { low: -1.0, high: 1.0 });
    assert_eq!(c.noise_shape, NoiseShape::PerChannel);
    assert_eq!(c.logit_cwd, Some(CwdConfig::paper()));
    let c: GddConfig = toml::from_str("noise = { kind = \"none\" }").unwrap();
    assert_eq!(c.noise, NoiseKind::None);
    let c: GddConfig = toml::from_str(
        r#"
        [[levels]]
        student_tap = "p2"
        teacher_tap = "p2"
        alpha = 4.0
        [[levels]]
        student_tap = "p3"
        teacher_tap = "p3"
        alpha = 4.0
        "#,
    )
    .unwrap();
    assert_eq!(c.resolved_levels().unwrap().len(), 2);

    for (text, key) in [
        ("temperature = 4.0", "temperature"),
        ("noise = { kind = \"gaussian\", sigma = 1.0 }", "sigma"),
        ("noise = { kind = \"poisson\" }", "poisson"),
        ("noise_shape = \"per_pixel\"", "per_pixel"),
    ] {
        let err = toml::from_str::<GddConfig>(text).unwrap_err().to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn invalid_values_name_the_key() {
    let check = |c: GddConfig, key: &str| {
        let err = c.resolved_levels().unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
    };
    check(
        GddConfig {
            tau: 0.0,
            ..GddConfig::default()
        },
        "tau",
    );
    check(
        GddConfig {
            alpha: -1.0,
            ..GddConfig::default()
        },
        "alpha",
    );
    check(
        GddConfig {
            noise: NoiseKind::Gaussian { std: -1.0 },
            ..GddConfig::default()
        },
        "noise.std",
    );
    check(
        GddConfig {
            noise: NoiseKind::Uniform { low: 1.0, high: 0.0 },
            ..GddConfig::default()
        },
        "noise.low",
    );
    check(
        GddConfig {
            logit_cwd: Some(CwdConfig {
                tau: -1.0,
                weight: 1.0,
            }),
            ..GddConfig::default()
        },
        "logit_cwd.tau",
    );
    let level = |alpha: f64| GddLevelSpec {
        student_tap: "stage3".into(),
        teacher_tap: "stage3".into(),
        alpha,
    };
    check(
        GddConfig {
            levels: vec![level(1.0)],
            alpha: 3.0,
            ..GddConfig::default()
        },
        "levels",
    );
    check(
        GddConfig {
            levels: vec![level(1.0), level(f64::INFINITY)],
            ..GddConfig::default()
        },
        "levels[1].alpha",
    );
}
