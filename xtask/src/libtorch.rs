//! Self-provisioning of libtorch from the PyPI `torch` wheel.
//!
//! The libtorch download site is unreachable from many machines, while PyPI is not, and the
//! `torch` wheel carries a complete libtorch under `torch/lib` + `torch/include`. We install it
//! with pip into a per-user cache, versioned by libtorch version and flavour, so several
//! checkouts share one install. The install is atomic: pip writes into a temporary folder, the
//! version is checked, and only then is the folder renamed into place. A half-finished install
//! therefore never looks like a finished one, and a second run is a no-op.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::paths;

/// The libtorch version tch 0.26 is built against. tch refuses any other.
pub const VERSION: &str = "2.13.0";

/// Shared libraries that the lean CPU install removes: they need the CUDA runtime stack that
/// the lean install leaves out, and nothing on the CPU path loads them.
const CUDA_ONLY_LIBS: [&str; 6] = [
    "libtorch_cuda.so",
    "libtorch_cuda_linalg.so",
    "libtorch_nvshmem.so",
    "libc10_cuda.so",
    "libcaffe2_nvrtc.so",
    "libtorch_python.so",
];

/// Written last into a finished install; its presence is what "installed" means.
const MARKER: &str = "kd-rs-install.txt";

/// Which libtorch build to install.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Flavour {
    /// Lean CPU install (~660 MB).
    Cpu,
    /// Full install with the CUDA 13 runtime wheels (~4.7 GB).
    Cuda,
}

impl Flavour {
    /// `--cuda` or `--device cuda` among the arguments selects CUDA.
    pub fn from_args(args: &[String]) -> Self {
        let cuda = args.iter().any(|a| a == "--cuda" || a == "--device=cuda")
            || args.windows(2).any(|w| w[0] == "--device" && w[1] == "cuda");
        if cuda {
            Flavour::Cuda
        } else {
            Flavour::Cpu
        }
    }

    /// Human-readable name.
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Cpu => "cpu",
            Flavour::Cuda => "cuda",
        }
    }

    /// Folder name of this flavour inside the cache, e.g. `2.13.0-cpu`.
    pub fn dir_name(self) -> String {
        match self {
            Flavour::Cpu => format!("{VERSION}-cpu"),
            Flavour::Cuda => format!("{VERSION}-cu130"),
        }
    }

    fn pip_args(self) -> Vec<String> {
        let mut args: Vec<String> = vec!["--only-binary=:all:".into()];
        match self {
            Flavour::Cpu => {
                args.push("--no-deps".into());
                args.extend([
                    format!("torch=={VERSION}"),
                    "nvidia-cuda-runtime==13.0.96".into(),
                    "nvidia-cuda-cupti==13.0.85".into(),
                ]);
            }
            // The runtime wheels lack the `crt/` and CCCL headers that libtorch's CUDA headers
            // include; kd-dist's NCCL group is compiled against them.
            Flavour::Cuda => args.extend([
                format!("torch=={VERSION}"),
                "nvidia-cuda-crt==13.0.88".into(),
                "nvidia-cuda-cccl==13.0.85".into(),
            ]),
        }
        args
    }
}

/// Makes sure libtorch of this flavour is installed and `.libtorch` points at the cache.
/// Returns the install folder (the one holding `torch/`).
pub fn ensure(flavour: Flavour) -> Result<PathBuf, String> {
    let cache = paths::user_cache()?.join("libtorch");
    let install = ensure_in(flavour, &cache, &python())?;
    link_workspace(&cache)?;
    Ok(install)
}

/// Installs into `cache` with the given Python unless a finished install is already there.
fn ensure_in(flavour: Flavour, cache: &Path, py: &str) -> Result<PathBuf, String> {
    let install = cache.join(flavour.dir_name());
    if !install.join(MARKER).is_file() {
        install_into(flavour, cache, &install, py)?;
    }
    Ok(install)
}

fn install_into(flavour: Flavour, cache: &Path, install: &Path, py: &str) -> Result<(), String> {
    fs::create_dir_all(cache)
        .map_err(|e| format!("cannot create the cache folder {}: {e}", cache.display()))?;
    let tmp = cache.join(format!(".tmp-{}-{}", flavour.dir_name(), std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    eprintln!(
        "==> installing libtorch {VERSION} ({}) from the PyPI torch wheel into {} (one-off, {})",
        flavour.name(),
        install.display(),
        if flavour == Flavour::Cpu {
            "~700 MB"
        } else {
            "~4.7 GB"
        }
    );
    let result = pip_install(flavour, &tmp, py).and_then(|()| finish(flavour, &tmp));
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if install.exists() {
        // Another process finished first; an install is only ever renamed into place whole.
        if install.join(MARKER).is_file() {
            let _ = fs::remove_dir_all(&tmp);
            return Ok(());
        }
        fs::remove_dir_all(install)
            .map_err(|e| format!("cannot replace the incomplete install {}: {e}", install.display()))?;
    }
    fs::rename(&tmp, install).map_err(|e| {
        let _ = fs::remove_dir_all(&tmp);
        format!("cannot move the finished install into {}: {e}", install.display())
    })
}

fn python() -> String {
    std::env::var("KD_RS_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn pip_install(flavour: Flavour, tmp: &Path, py: &str) -> Result<(), String> {
    let probe = Command::new(py).args(["-m", "pip", "--version"]).output();
    match probe {
        Ok(out) if out.status.success() => {}
        _ => {
            return Err(format!(
                "libtorch is installed with pip, but `{py} -m pip` does not run.\n\
                 Install Python 3 with pip (e.g. `apt-get install python3-pip`), or point KD_RS_PYTHON at a \
                 Python that has pip, then run `cargo xtask setup` again."
            ))
        }
    }
    let out = Command::new(py)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "--no-compile",
            "--target",
        ])
        .arg(tmp)
        .args(flavour.pip_args())
        .output()
        .map_err(|e| format!("cannot start {py}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(6)..].join("\n  ");
    let hint = if stderr.contains("No space left") {
        "The disk is full: free a few GB (or set KD_RS_CACHE to a bigger disk) and retry."
    } else if stderr.contains("Could not find a version")
        || stderr.contains("connection")
        || stderr.contains("Connection")
    {
        "PyPI could not be reached or has no matching wheel: check the network (or a PIP_INDEX_URL mirror) and retry."
    } else {
        "Fix the cause above and run `cargo xtask setup` again."
    };
    Err(format!(
        "pip could not install torch=={VERSION}:\n  {tail}\n{hint} Nothing was left half-installed."
    ))
}

/// Checks the version, trims the lean install, writes the marker.
fn finish(flavour: Flavour, tmp: &Path) -> Result<(), String> {
    let torch = tmp.join("torch");
    let version_file = torch.join("version.py");
    let text = fs::read_to_string(&version_file)
        .map_err(|e| format!("the wheel has no {}: {e}", version_file.display()))?;
    let found = text
        .lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| v.trim().trim_matches('\'').trim_matches('"').to_string())
        .unwrap_or_default();
    if !(found == VERSION || found.starts_with(&format!("{VERSION}+"))) {
        return Err(format!(
            "pip installed torch {found:?}, but tch 0.26 needs exactly {VERSION}"
        ));
    }
    for must in [
        "lib/libtorch_cpu.so",
        "include/torch/csrc/api/include/torch/torch.h",
    ] {
        if !torch.join(must).exists() {
            return Err(format!("the torch wheel lacks {must}: not a usable libtorch"));
        }
    }
    if flavour == Flavour::Cpu {
        for lib in CUDA_ONLY_LIBS {
            let path = torch.join("lib").join(lib);
            if path.exists() {
                fs::remove_file(&path).map_err(|e| format!("cannot trim {}: {e}", path.display()))?;
            }
        }
    }
    fs::write(
        tmp.join(MARKER),
        format!("libtorch {found} flavour={}\n", flavour.name()),
    )
    .map_err(|e| format!("cannot write the install marker: {e}"))
}

/// Points the workspace's `.libtorch` at the cache folder that holds every flavour, so the
/// relative `LIBTORCH` in `.cargo/config.toml` resolves.
fn link_workspace(cache: &Path) -> Result<(), String> {
    let link = paths::workspace_root().join(".libtorch");
    if let Ok(target) = fs::read_link(&link) {
        if target == cache {
            return Ok(());
        }
    }
    if link.is_dir()
        && fs::symlink_metadata(&link)
            .map(|m| !m.file_type().is_symlink())
            .unwrap_or(false)
    {
        return Err(format!(
            "{} is a real folder, not a link: remove it so setup can link the cache",
            link.display()
        ));
    }
    let _ = fs::remove_file(&link);
    symlink(cache, &link).map_err(|e| format!("cannot link {} -> {}: {e}", link.display(), cache.display()))
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::windows::fs::symlink_dir(target, link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flavour_follows_the_arguments() {
        assert_eq!(Flavour::from_args(&args(&["reproduce", "x"])), Flavour::Cpu);
        assert_eq!(Flavour::from_args(&args(&["--cuda"])), Flavour::Cuda);
        assert_eq!(Flavour::from_args(&args(&["--device", "cuda"])), Flavour::Cuda);
        assert_eq!(Flavour::from_args(&args(&["--device", "cpu"])), Flavour::Cpu);
        assert_eq!(Flavour::Cpu.dir_name(), "2.13.0-cpu");
    }

    #[test]
    fn missing_pip_is_one_clear_error_and_leaves_nothing_behind() {
        let cache = std::env::temp_dir().join(format!("kd-xtask-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&cache);
        let err = ensure_in(Flavour::Cpu, &cache, "/nonexistent/python3").unwrap_err();
        assert!(err.contains("pip") && err.contains("KD_RS_PYTHON"), "{err}");
        let left: Vec<_> = fs::read_dir(&cache)
            .map(|d| d.flatten().collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "half-installed leftovers: {left:?}");
        let _ = fs::remove_dir_all(&cache);
    }

    #[test]
    fn a_finished_install_is_not_touched_again() {
        let cache = std::env::temp_dir().join(format!("kd-xtask-done-{}", std::process::id()));
        let install = cache.join(Flavour::Cpu.dir_name());
        fs::create_dir_all(&install).unwrap();
        fs::write(install.join(MARKER), "libtorch 2.13.0 flavour=cpu\n").unwrap();
        // A Python that cannot run proves pip is never called.
        assert_eq!(
            ensure_in(Flavour::Cpu, &cache, "/nonexistent/python3").unwrap(),
            install
        );
        let _ = fs::remove_dir_all(&cache);
    }

    #[test]
    fn a_wrong_torch_version_is_refused() {
        let tmp = std::env::temp_dir().join(format!("kd-xtask-ver-{}", std::process::id()));
        fs::create_dir_all(tmp.join("torch")).unwrap();
        fs::write(tmp.join("torch/version.py"), "__version__ = '2.5.1+cpu'\n").unwrap();
        let err = finish(Flavour::Cpu, &tmp).unwrap_err();
        assert!(err.contains("2.5.1") && err.contains(VERSION), "{err}");
        let _ = fs::remove_dir_all(&tmp);
    }
}
