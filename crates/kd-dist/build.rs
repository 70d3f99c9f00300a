//! Compiles the C++ shim over c10d against the libtorch that torch-sys links, with Gloo's
//! headers from `cargo xtask setup` (`KD_GLOO_INCLUDE`, else `<user cache>/gloo/include`), and
//! bakes libtorch's folder into the rpath (see build-support/).

use std::path::PathBuf;

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
    cc::Build::new()
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
