//! `cargo xtask bench` arguments.

/// What `cargo xtask bench` was asked to do.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchArgs {
    /// Row filter, a regular expression on `kind/mode/label` (criterion's and the reference's).
    pub filter: Option<String>,
    /// Short warm-up and measurement times.
    pub quick: bool,
    /// `cpu` or `cuda`.
    pub device: String,
    /// Threads of both sides (libtorch intra-op, rayon, DataLoader workers); `None`: one per core.
    pub threads: Option<usize>,
    /// Output folder; `None`: `runs/bench/<timestamp>/`.
    pub out: Option<String>,
}

/// The usage line.
pub const USAGE: &str =
    "usage: cargo xtask bench [--filter REGEX] [--quick] [--device cpu|cuda] [--threads N] [--out DIR]";

impl BenchArgs {
    /// Parses the arguments after `bench`.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut a = BenchArgs {
            filter: None,
            quick: false,
            device: "cpu".into(),
            threads: None,
            out: None,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (key, inline) = match arg.split_once('=') {
                Some((k, v)) if k.starts_with("--") => (k, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            let mut value = |name: &str| -> Result<String, String> {
                inline
                    .clone()
                    .or_else(|| it.next().cloned())
                    .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
            };
            match key {
                "--quick" => a.quick = true,
                "--cuda" => a.device = "cuda".into(),
                "--filter" => a.filter = Some(value("--filter")?),
                "--out" => a.out = Some(value("--out")?),
                "--device" => {
                    a.device = value("--device")?;
                    if a.device != "cpu" && a.device != "cuda" {
                        return Err(format!(
                            "--device must be cpu or cuda, got {:?}\n{USAGE}",
                            a.device
                        ));
                    }
                }
                "--threads" => {
                    let v = value("--threads")?;
                    a.threads = Some(
                        v.parse()
                            .ok()
                            .filter(|&t: &usize| t > 0)
                            .ok_or_else(|| format!("--threads must be a positive integer, got {v:?}"))?,
                    );
                }
                "-h" | "--help" => return Err(USAGE.into()),
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        Ok(a)
    }

    /// Warm-up and measurement seconds per side and round: criterion's defaults (3, 5), or
    /// (0.3, 1.0) with `--quick`.
    pub fn times(&self) -> (f64, f64) {
        if self.quick {
            (0.3, 1.0)
        } else {
            (3.0, 5.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<BenchArgs, String> {
        BenchArgs::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn defaults() {
        let a = parse(&[]).unwrap();
        assert_eq!(
            (a.filter, a.quick, a.device.as_str(), a.threads),
            (None, false, "cpu", None)
        );
        assert_eq!(parse(&[]).unwrap().times(), (3.0, 5.0));
    }

    #[test]
    fn every_option_in_both_spellings() {
        let a = parse(&[
            "--filter",
            "kd_loss",
            "--quick",
            "--device",
            "cuda",
            "--threads",
            "4",
            "--out",
            "x",
        ])
        .unwrap();
        assert_eq!(a.filter.as_deref(), Some("kd_loss"));
        assert!(a.quick);
        assert_eq!(
            (a.device.as_str(), a.threads, a.out.as_deref()),
            ("cuda", Some(4), Some("x"))
        );
        assert_eq!(a.times(), (0.3, 1.0));
        let b = parse(&["--filter=cwd/forward", "--threads=2", "--device=cpu"]).unwrap();
        assert_eq!(
            (b.filter.as_deref(), b.threads, b.device.as_str()),
            (Some("cwd/forward"), Some(2), "cpu")
        );
        assert_eq!(parse(&["--cuda"]).unwrap().device, "cuda");
    }

    #[test]
    fn bad_arguments_are_errors_with_the_usage() {
        for bad in [
            &["--threads", "0"][..],
            &["--threads", "x"],
            &["--device", "tpu"],
            &["--filter"],
            &["--bogus"],
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("--"), "{bad:?}: {e}");
        }
        assert!(parse(&["--bogus"]).unwrap_err().contains("usage"));
    }
}
