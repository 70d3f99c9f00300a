//! A run folder is a record that nothing silently replaces: a rerun into it is refused, a
//! resume continues only the recipe that started it, paths mean the user's folder, and
//! concurrent runs train a cached teacher once.

use std::path::Path;
use std::process::Command;

mod common;
use common::*;

fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn a_used_run_folder_is_never_overwritten_and_resume_keeps_its_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "t.toml",
        &tiny_experiment("[[rows]]\nlabel = \"s\"\nmethod = { kind = \"none\" }\n"),
    );
    let out = dir.path().join("run");
    let out_s = out.to_str().unwrap();
    let run = |cfg: &str, extra: &[&str]| {
        let mut a = vec![
            "reproduce",
            "cifar100",
            "--config",
            cfg,
            "--seeds",
            "1",
            "--out",
            out_s,
        ];
        a.extend_from_slice(extra);
        kd(&a, dir.path())
    };
    let first = run(&cfg, &[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let results = std::fs::read(out.join("results.json")).unwrap();
    let config = std::fs::read(out.join("config.toml")).unwrap();
    assert_best_beside_final(&json(&out.join("results.json")), &out, &first);

    // A second run with another recipe into the same folder is refused; nothing changes.
    let changed = write_config(
        dir.path(),
        "t2.toml",
        &std::fs::read_to_string(&cfg)
            .unwrap()
            .replacen("epochs = 2", "epochs = 3", 1),
    );
    assert_clean_error(&run(&changed, &[]), &[out_s, "not empty", "--resume"]);
    assert_eq!(std::fs::read(out.join("results.json")).unwrap(), results);
    assert_eq!(std::fs::read(out.join("config.toml")).unwrap(), config);

    // A resume under a changed recipe names the changed keys and writes nothing.
    let e = run(&changed, &["--resume"]);
    assert_clean_error(&e, &["config.toml", "epochs: 2 → 3"]);
    // So does a flag that changes results, such as a pretrained start.
    let e = run(&cfg, &["--resume", "--init", &cfg]);
    assert_clean_error(&e, &["run.init: (absent) → "]);
    assert_eq!(std::fs::read(out.join("results.json")).unwrap(), results);
    assert_eq!(std::fs::read(out.join("config.toml")).unwrap(), config);

    // The same recipe resumes (here: a finished run, re-read as it is).
    let again = run(&cfg, &["--resume"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        json(&out.join("results.json")),
        serde_json::from_slice::<serde_json::Value>(&results).unwrap()
    );

    // --resume needs a run to resume.
    let nowhere = dir.path().join("nowhere");
    let e = kd(
        &[
            "reproduce",
            "cifar100",
            "--config",
            &cfg,
            "--out",
            nowhere.to_str().unwrap(),
            "--resume",
        ],
        dir.path(),
    );
    assert_clean_error(&e, &["no run to resume", "does not exist"]);
    assert!(!nowhere.exists());
}

/// Every row of a classification table has its best epoch beside the final one: the best of
/// the evaluations in its seeds' `epochs.jsonl`, never below the headline (the per-epoch
/// evaluation is the final protocol, so the headline is the last of them); the table says so.
fn assert_best_beside_final(results: &serde_json::Value, out: &Path, run: &std::process::Output) {
    assert_eq!(results["best_same_protocol"], true, "{results}");
    assert!(results["best_note"]
        .as_str()
        .unwrap()
        .contains("*ours* is the headline"));
    for row in results["rows"].as_array().unwrap() {
        let finals = row["per_seed"].as_array().unwrap();
        let best = &row["best"];
        let bests = best["per_seed"].as_array().unwrap();
        let epochs = best["epoch_per_seed"].as_array().unwrap();
        assert!(best["mean"].is_number() && best["std"].is_number(), "{row}");
        assert_eq!((bests.len(), epochs.len()), (finals.len(), finals.len()), "{row}");
        let slug = row["method"].as_str().unwrap().to_lowercase().replace(' ', "-");
        for (seed, ((f, b), e)) in finals.iter().zip(bests).zip(epochs).enumerate() {
            let (f, b, e) = (f.as_f64().unwrap(), b.as_f64().unwrap(), e.as_u64().unwrap());
            assert!(b >= f, "{row}");
            let log =
                std::fs::read_to_string(out.join(&slug).join(format!("seed{seed}/epochs.jsonl"))).unwrap();
            let tests: Vec<(u64, f64)> = log
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .filter_map(|v| Some((v["epoch"].as_u64()?, v["test"].as_f64()?)))
                .collect();
            assert_eq!(tests.last().unwrap().1, f, "the headline is the last evaluation");
            assert!(
                tests.contains(&(e, b)) && tests.iter().all(|t| t.1 <= b),
                "{tests:?}"
            );
        }
    }
    let printed = String::from_utf8_lossy(&run.stdout);
    assert!(
        printed.contains("| ours (mean ± std) | best epoch (mean ± std) |"),
        "{printed}"
    );
    assert!(printed.contains("*best epoch* is the highest top1"), "{printed}");
}

#[test]
fn a_run_killed_before_any_row_resumes_and_a_failed_check_leaves_no_folder() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "t.toml", &tiny_experiment(KD_ROW));
    let out = dir.path().join("run");
    let args = [
        "reproduce",
        "cifar100",
        "--config",
        &cfg,
        "--seeds",
        "1",
        "--out",
        out.to_str().unwrap(),
    ];
    let first = kd(&args, dir.path());
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let results = json(&out.join("results.json"));
    // What a kill while the teacher trains leaves: the config, nothing else.
    for e in std::fs::read_dir(&out).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap() != "config.toml" {
            if p.is_dir() {
                std::fs::remove_dir_all(&p).unwrap();
            } else {
                std::fs::remove_file(&p).unwrap();
            }
        }
    }
    assert_clean_error(&kd(&args, dir.path()), &["not empty", "--resume"]);
    let mut resume = args.to_vec();
    resume.push("--resume");
    let again = kd(&resume, dir.path());
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(json(&out.join("results.json")), results);

    // A given teacher near chance stops the run after the checks: the folder is released.
    let given = dir.path().join("given.safetensors");
    let exported = out.join("s-kd").join("seed0").join("student.safetensors");
    std::fs::copy(&exported, &given).unwrap();
    let out2 = dir.path().join("run2");
    let e = kd(
        &[
            "reproduce",
            "cifar100",
            "--config",
            &cfg,
            "--out",
            out2.to_str().unwrap(),
            "--teacher",
            given.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_clean_error(&e, &["near chance"]);
    assert!(!out2.exists());
}

#[test]
fn relative_paths_mean_the_users_folder_and_an_empty_cache_variable_is_unset() {
    let dir = tempfile::tempdir().unwrap();
    let user = dir.path().join("user");
    std::fs::create_dir(&user).unwrap();
    std::fs::write(user.join("t.toml"), tiny_experiment(KD_ROW)).unwrap();
    let home = dir.path().join("home");
    // As `cargo xtask` starts it: in another folder, told the user's folder.
    let out = Command::new(env!("CARGO_BIN_EXE_kd"))
        .args([
            "reproduce",
            "cifar100",
            "--config",
            "t.toml",
            "--seeds",
            "1",
            "--out",
            "run",
        ])
        .current_dir(dir.path())
        .env("KD_RS_CWD", &user)
        .env("KD_RS_CACHE", "")
        .env_remove("XDG_CACHE_HOME")
        .env("HOME", &home)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(user.join("run").join("results.json").is_file());
    assert!(!dir.path().join("run").exists());
    // The saved config names absolute paths, so a resume from elsewhere reads the same files.
    let saved = std::fs::read_to_string(user.join("run").join("config.toml")).unwrap();
    assert!(
        saved.contains(&format!("out = {:?}", user.join("run").to_str().unwrap())),
        "{saved}"
    );
    // The teacher is cached under HOME, not in a folder named "" (the current folder).
    assert!(home.join(".cache").join("kd-rs").join("teachers").is_dir());
    assert!(!user.join("teachers").exists() && !dir.path().join("teachers").exists());
}

#[test]
fn concurrent_runs_train_a_cached_teacher_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "t.toml", &tiny_experiment(KD_ROW));
    let start = |out: &str| {
        Command::new(env!("CARGO_BIN_EXE_kd"))
            .args(["reproduce", "cifar100", "--config", &cfg, "--seeds", "1", "--out"])
            .arg(dir.path().join(out))
            .env("KD_RS_CACHE", dir.path().join("cache"))
            .env("OMP_NUM_THREADS", "1")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let (a, b) = (start("a"), start("b"));
    let logs: Vec<String> = [a, b]
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            let log = String::from_utf8_lossy(&o.stderr).into_owned();
            assert!(o.status.success(), "{log}");
            log
        })
        .collect();
    let trained = logs
        .iter()
        .filter(|l| l.contains("training (cached afterwards"))
        .count();
    assert_eq!(trained, 1, "{logs:#?}");
    assert_eq!(
        logs.iter().filter(|l| l.contains("cached at")).count(),
        1,
        "{logs:#?}"
    );
    // Both tables distilled from the same weights.
    let row = |run: &str| json(&dir.path().join(run).join("results.json"))["rows"][0]["per_seed"].clone();
    assert_eq!(row("a"), row("b"));
}
