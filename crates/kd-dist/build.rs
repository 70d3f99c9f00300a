//! Compiles the C++ shim over c10d against the libtorch that torch-sys links, with Gloo's
//! headers from `cargo xtask setup` (`KD_GLOO_INCLUDE`, else `<user cache>/gloo/include`), and
//! bakes libtorch's folder into the rpath (see build-support/).
//!
//! The NCCL group is compiled in only when that libtorch is a CUDA build with c10d's NCCL
//! backend (`ProcessGroupNCCL.hpp` among its headers and `libtorch_cuda.so` among its
//! libraries) and the CUDA runtime's and NCCL's headers can be found: under `CUDA_HOME` /
//! `CUDA_PATH`, `/usr/local/cuda`, `/usr/include`, or the NVIDIA wheels installed beside torch
//! (`nvidia/*/include`, as `cargo xtask setup --cuda` leaves them). The runtime wheel alone
//! lacks two header sets that libtorch's CUDA headers include, the compiler's `crt/` and CCCL's
//! `nv/`; they come with a CUDA toolkit, or as the wheels `nvidia-cuda-crt` and
//! `nvidia-cuda-cccl`. Otherwise the shim says it has no NCCL and `ProcessGroup::nccl` is an
//! error saying how to get it; the CPU build is unchanged by all this.

use std::path::{Path, PathBuf};

fn cache() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("KD_RS_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("kd-rs")))
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("kd-rs")))
}

fn main() {
    println!("cargo:rerun-if-changed=src/shim.cpp");
    for k in [
        "KD_GLOO_INCLUDE",
        "CUDA_HOME",
        "CUDA_PATH",
        "KD_RS_CACHE",
        "XDG_CACHE_HOME",
        "DEP_TCH_LIBTORCH_LIB",
    ] {
        println!("cargo:rerun-if-env-changed={k}");
    }
    let lib =
        PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys names libtorch's lib folder"));
    let torch = lib
        .parent()
        .expect("libtorch's lib folder has a parent")
        .to_path_buf();
    let gloo = std::env::var_os("KD_GLOO_INCLUDE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| cache().map(|c| c.join("gloo").join("include")))
        .filter(|d| d.join("gloo").join("algorithm.h").is_file());
    let Some(gloo) = gloo else {
        panic!(
            "kd-dist needs Gloo's C++ headers, which the libtorch wheel does not ship: run `cargo xtask setup` \
             (it unpacks Debian's libgloo-dev into the user cache), or point KD_GLOO_INCLUDE at a folder holding gloo/"
        );
    };
    let nccl = nccl_includes(&torch, &lib);
    let mut build = cc::Build::new();
    if let Some(dirs) = &nccl {
        build.define("USE_C10D_NCCL", None).define("USE_CUDA", None);
        for d in dirs {
            build.include(d);
        }
        // The NCCL group's symbols live in libtorch_cuda (which torch-sys links) and c10_cuda.
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    build
        .cpp(true)
        .std("c++20")
        .file("src/shim.cpp")
        .include(torch.join("include"))
        .include(
            torch
                .join("include")
                .join("torch")
                .join("csrc")
                .join("api")
                .join("include"),
        )
        .include(&gloo)
        .define("USE_C10D_GLOO", None)
        .define("USE_DISTRIBUTED", None)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .flag_if_supported("-w")
        .opt_level(1)
        .compile("kd_dist_shim");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}

/// The include folders the NCCL part of the shim needs, or `None` (with a warning when this
/// libtorch has CUDA) when it cannot be compiled.
fn nccl_includes(torch: &Path, lib: &Path) -> Option<Vec<PathBuf>> {
    let header = torch
        .join("include")
        .join("torch")
        .join("csrc")
        .join("distributed")
        .join("c10d")
        .join("ProcessGroupNCCL.hpp");
    if !header.is_file() || !lib.join("libtorch_cuda.so").is_file() {
        return None;
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    let mut toolkits: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
        .into_iter()
        .filter_map(|k| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from))
        .collect();
    toolkits.push(PathBuf::from("/usr/local/cuda"));
    for t in toolkits {
        // CUDA 13 keeps CCCL (nv/target, cuda/std) in include/cccl.
        candidates.push(t.join("include"));
        candidates.push(t.join("include").join("cccl"));
    }
    // The NVIDIA wheels beside torch/ (pip's layout): nvidia/cu13/include, nvidia/nccl/include...
    if let Some(site) = torch.parent() {
        if let Ok(entries) = std::fs::read_dir(site.join("nvidia")) {
            let mut wheels: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("include"))
                .filter(|d| d.is_dir())
                .collect();
            wheels.sort();
            candidates.extend(wheels);
        }
    }
    candidates.push(PathBuf::from("/usr/include"));
    let has = |name: &str| candidates.iter().any(|d| d.join(name).is_file());
    let missing: Vec<&str> = ["cuda_runtime_api.h", "crt/host_config.h", "nv/target", "nccl.h"]
        .into_iter()
        .filter(|h| !has(h))
        .collect();
    if !missing.is_empty() {
        println!(
            "cargo:warning=kd-dist: libtorch has CUDA but {} not found (looked in CUDA_HOME, CUDA_PATH, \
             /usr/local/cuda, the NVIDIA wheels beside torch and /usr/include): building without NCCL. \
             Point CUDA_HOME at a CUDA 13 toolkit, or add the wheels nvidia-cuda-crt==13.0.* and \
             nvidia-cuda-cccl==13.0.* beside torch (pip install --no-deps --target <the folder holding torch/>)",
            missing.join(", ")
        );
        return None;
    }
    // /usr/include is searched anyway; naming it would reorder the system headers.
    Some(
        candidates
            .into_iter()
            .filter(|d| d.is_dir() && d != Path::new("/usr/include"))
            .collect(),
    )
}
