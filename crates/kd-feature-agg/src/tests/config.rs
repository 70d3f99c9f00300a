//! Configuration files: spec defaults, snake_case names, unknown keys rejected.

use crate::config::{Direction, TargetMode, UnikdConfig, Upsample, Variant};

#[test]
fn an_empty_table_gives_the_spec_defaults() {
    let c: UnikdConfig = toml::from_str("").unwrap();
    assert_eq!(c, UnikdConfig::default());
    assert_eq!((c.tau, c.alpha, c.beta, c.ce_weight), (4.0, 1.0, 1.0, 1.0));
    assert_eq!(c.warmup_epochs, 20.0);
    assert_eq!(c.direction, Direction::Forward);
    assert_eq!(c.upsample, Upsample::Nearest);
    assert_eq!(c.teacher_var_eps, 1e-4);
    assert_eq!(c.logvar_clamp, 10.0);
    assert_eq!(c.class_space_tau, 4.0);
    assert_eq!(
        c.grad_clip, None,
        "the tables clip every row in the recipe instead"
    );
    assert_eq!(c.prefit.grad_clip, Some(5.0));
    assert!(c.include_last && c.student_taps.is_none() && c.fused_channels.is_none());
    assert_eq!(c.variant, Variant::Full);
    assert_eq!(c.mode, TargetMode::ClassSpaceHeads);
    c.validate().unwrap();
}

#[test]
fn every_knob_parses_by_name() {
    let text = r#"
        mode = "teacher_moments"
        variant = "no_aff"
        tau = 2.0
        ce_weight = 0.5
        alpha = 0.9
        beta = 3.0
        stage_weights = [1.0, 2.0, 0.5]
        warmup_epochs = 1.5
        direction = "reverse"
        student_taps = ["stage1", "stage2", "stage3"]
        teacher_taps = ["stage1", "stage2", "stage3"]
        include_last = false
        fused_channels = [8, 16, 32]
        upsample = "bilinear"
        teacher_var_eps = 1e-3
        logvar_clamp = 5.0
        class_space_tau = 2.0
        grad_clip = 3.0
        prefit = { epochs = 2, batch_size = 32, max_steps_per_epoch = 3, tau = 2.0, ce_weight = 1.0, kd_weight = 0.5, var_weight = 0.1, lr = { lr = 0.1, schedule = { kind = "constant" } }, optimizer = { kind = "adam" } }
    "#;
    let c: UnikdConfig = toml::from_str(text).unwrap();
    assert_eq!(c.mode, TargetMode::TeacherMoments);
    assert_eq!(c.variant, Variant::NoAff);
    assert_eq!(c.direction, Direction::Reverse);
    assert_eq!(c.upsample, Upsample::Bilinear);
    assert_eq!(c.prefit.epochs, 2);
    assert_eq!(c.prefit.max_steps_per_epoch, Some(3));
    assert_eq!((c.class_space_tau, c.grad_clip), (2.0, Some(3.0)));
    c.validate().unwrap();
    let back: UnikdConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}

#[test]
fn unknown_keys_and_bad_values_are_rejected() {
    let e = toml::from_str::<UnikdConfig>("betta = 1.0")
        .unwrap_err()
        .to_string();
    assert!(e.contains("betta"), "{e}");
    let e = toml::from_str::<UnikdConfig>("mode = \"moments\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("moments"), "{e}");
    let e = toml::from_str::<UnikdConfig>("prefit = { epoch = 3 }")
        .unwrap_err()
        .to_string();
    assert!(e.contains("epoch"), "{e}");
    let mut c = UnikdConfig::default();
    c.beta = -1.0;
    assert!(c.validate().unwrap_err().to_string().contains("beta"));
    let mut c = UnikdConfig::default();
    c.prefit.batch_size = 0;
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("prefit.batch_size"));
    let mut c = UnikdConfig::default();
    c.grad_clip = Some(0.0);
    assert!(c.validate().unwrap_err().to_string().contains("grad_clip"));
    let mut c = UnikdConfig::default();
    c.class_space_tau = -1.0;
    assert!(c.validate().unwrap_err().to_string().contains("class_space_tau"));
    let mut c = UnikdConfig::default();
    c.teacher_var_eps = 0.0;
    assert!(c.validate().unwrap_err().to_string().contains("teacher_var_eps"));
}
