// Shared body of the build scripts of every crate that links tch (included with `include!`).
//
// torch-sys exports the folder holding libtorch's shared libraries as DEP_TCH_LIBTORCH_LIB.
// Baking it into the rpath means binaries, tests and benches run without LD_LIBRARY_PATH.
// When that folder holds the CUDA libraries, `--no-as-needed -ltorch` keeps libtorch_cuda
// linked even though no symbol of it is referenced directly, so CUDA is found at run time.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-ltorch");
            println!("cargo:rustc-link-arg=-ltorch_cuda");
        }
    }
}
