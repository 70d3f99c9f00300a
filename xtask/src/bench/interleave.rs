//! Times each row on both sides back to back.
//!
//! On a shared machine the background load drifts over minutes; timing every Rust row and then
//! every PyTorch row would fold that drift into the ratios. So the reference runs as a server
//! (`reference.py --serve`) and every row is timed twice per side, in the order Rust, PyTorch,
//! PyTorch, Rust (or the mirror image, alternating from row to row); each side keeps the lower
//! of its two medians, so a burst of load during one measurement does not decide the ratio. Criterion's bootstrap is cut
//! to 1000 resamples: only its median is used, and the default 100 000 cost a second per row.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use super::json::Json;

/// The criterion executables of `kd-benches`, by target name, from cargo's JSON messages.
pub fn bench_executables(messages: &str) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for line in messages.lines() {
        let Ok(msg) = Json::parse(line) else {
            continue;
        };
        if msg.get("reason").and_then(Json::str) != Some("compiler-artifact") {
            continue;
        }
        let target = msg.get("target");
        let is_bench = target
            .and_then(|t| t.get("kind"))
            .is_some_and(|k| k.arr().iter().any(|v| v.str() == Some("bench")));
        let name = target.and_then(|t| t.get("name")).and_then(Json::str);
        let exe = msg.get("executable").and_then(Json::str);
        if let (true, Some(name), Some(exe)) = (is_bench, name, exe) {
            out.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    out
}

/// The bench target that holds a row.
pub fn target_of(id: &str) -> &'static str {
    if id.starts_with("kd_step/") {
        "step"
    } else if id.starts_with("cifar_pipeline/") || id.starts_with("seg_pipeline/") {
        "pipeline"
    } else {
        "kernels"
    }
}

/// The running reference server.
pub struct Reference {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Reference {
    /// Starts `cmd` (the reference with `--serve`) and waits until its checks are done.
    pub fn start(mut cmd: Command) -> Result<Self, String> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the PyTorch reference: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout from the reference")?);
        let mut r = Reference { child, stdin, stdout };
        match r.line()?.as_str() {
            "ready" => Ok(r),
            other => Err(format!(
                "the PyTorch reference did not get ready (said {other:?})"
            )),
        }
    }

    fn line(&mut self) -> Result<String, String> {
        let mut s = String::new();
        let n = self.stdout.read_line(&mut s).map_err(|e| e.to_string())?;
        if n == 0 {
            let st = self.child.wait().map_err(|e| e.to_string())?;
            return Err(format!("the PyTorch reference exited ({st})"));
        }
        Ok(s.trim().to_string())
    }

    /// Times one row; returns the median in ns.
    pub fn time(&mut self, id: &str) -> Result<f64, String> {
        let stdin = self.stdin.as_mut().ok_or("reference closed")?;
        writeln!(stdin, "time {id}")
            .and_then(|()| stdin.flush())
            .map_err(|e| e.to_string())?;
        let reply = self.line()?;
        let parts: Vec<&str> = reply.split_whitespace().collect();
        match parts.as_slice() {
            ["median", got, ns] if *got == id => ns.parse().map_err(|_| format!("bad reply {reply:?}")),
            _ => Err(format!("unexpected reply {reply:?} to `time {id}`")),
        }
    }

    /// Ends the session; the reference writes its results file and exits.
    pub fn finish(mut self) -> Result<(), String> {
        drop(self.stdin.take());
        let st = self.child.wait().map_err(|e| e.to_string())?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("the PyTorch reference failed ({st})"))
        }
    }
}

/// Runs criterion on exactly one row (`cmd` is the bench executable with its environment) and
/// returns its median in ns, read from `<criterion_dir>/<id>/new/estimates.json`. Criterion's
/// own report is kept quiet.
pub fn time_rust(
    exe: &Path,
    id: &str,
    warm: f64,
    measure: f64,
    mut cmd: Command,
    criterion_dir: &Path,
) -> Result<f64, String> {
    let out = cmd
        .arg(format!("^{id}$"))
        .args([
            "--bench",
            "--noplot",
            "--warm-up-time",
            &warm.to_string(),
            "--measurement-time",
            &measure.to_string(),
        ])
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    if !out.status.success() {
        return Err(format!(
            "criterion failed on {id} ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let path = criterion_dir.join(id).join("new").join("estimates.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Json::parse(&text)?
        .get("median")
        .and_then(|m| m.get("point_estimate"))
        .and_then(Json::num)
        .ok_or_else(|| format!("{}: no median", path.display()))
}

/// Both sides' medians of one row, two each.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timed {
    /// Rust medians, ns.
    pub rust: Vec<f64>,
    /// PyTorch medians, ns.
    pub torch: Vec<f64>,
}

impl Timed {
    /// The lower Rust median.
    pub fn rust_best(&self) -> Option<f64> {
        self.rust.iter().copied().reduce(f64::min)
    }

    /// The lower PyTorch median.
    pub fn torch_best(&self) -> Option<f64> {
        self.torch.iter().copied().reduce(f64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bench_executables_in_cargo_messages() {
        let msgs = concat!(
            r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"kd_benches"},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"kind":["bench"],"name":"kernels"},"executable":"/t/release/deps/kernels-1"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        let exes = bench_executables(msgs);
        assert_eq!(exes.len(), 1);
        assert_eq!(exes["kernels"], PathBuf::from("/t/release/deps/kernels-1"));
    }

    #[test]
    fn each_side_keeps_its_lower_median() {
        let t = Timed {
            rust: vec![3.0, 2.0],
            torch: vec![5.0, 7.0],
        };
        assert_eq!((t.rust_best(), t.torch_best()), (Some(2.0), Some(5.0)));
        assert_eq!(Timed::default().rust_best(), None);
    }

    #[test]
    fn rows_map_to_their_targets() {
        assert_eq!(target_of("kd_step/step/real"), "step");
        assert_eq!(target_of("seg_pipeline/epoch/half"), "pipeline");
        assert_eq!(target_of("cwd/forward/small"), "kernels");
    }
}
