//! Gloo's C++ headers for kd-dist's c10d shim.
//!
//! The libtorch wheel exports ProcessGroupGloo but ships none of Gloo's headers, which its
//! c10d headers include. Debian packages them (`libgloo-dev`); they are fetched with the
//! ordinary package client, unpacked into a temporary folder of the user cache and renamed
//! into place whole, so a half-finished unpack is never used. `KD_GLOO_INCLUDE` points at a
//! folder holding `gloo/` instead (another distribution's package, a source checkout).
//! `setup`, `test` and every runner command make sure they are there: the runner links kd-dist
//! for data-parallel training (the benches do not).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::paths;

/// The package that holds the headers.
const PACKAGE: &str = "libgloo-dev";

/// A header every Gloo install has.
fn is_gloo_include(dir: &Path) -> bool {
    dir.join("gloo").join("algorithm.h").is_file()
}

/// The folder to pass as `KD_GLOO_INCLUDE` when one is there already (the user's or the
/// cache's); nothing is fetched.
pub fn installed() -> Option<PathBuf> {
    let user = paths::non_empty_var("KD_GLOO_INCLUDE").map(paths::absolute);
    let cache = paths::user_cache().ok().map(|c| c.join("gloo").join("include"));
    user.or(cache).filter(|d| is_gloo_include(d))
}

/// The folder to pass as `KD_GLOO_INCLUDE`: the user's, else the cache's, unpacked first when
/// missing.
pub fn ensure() -> Result<PathBuf, String> {
    if let Some(dir) = paths::non_empty_var("KD_GLOO_INCLUDE") {
        let dir = paths::absolute(dir);
        if !is_gloo_include(&dir) {
            return Err(format!(
                "KD_GLOO_INCLUDE={}: no gloo/algorithm.h under it (point it at the folder that holds gloo/)",
                dir.display()
            ));
        }
        return Ok(dir);
    }
    let root = paths::user_cache()?.join("gloo");
    let include = root.join("include");
    if is_gloo_include(&include) {
        return Ok(include);
    }
    install(&root)?;
    Ok(include)
}

/// Downloads the package and unpacks its headers into `root` (renamed into place whole).
fn install(root: &Path) -> Result<(), String> {
    let parent = root.parent().ok_or("the cache folder has no parent")?;
    fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let tmp = parent.join(format!(".tmp-gloo-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let result = fetch_and_unpack(&tmp);
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if is_gloo_include(&root.join("include")) {
        // Another process finished first.
        let _ = fs::remove_dir_all(&tmp);
        return Ok(());
    }
    let _ = fs::remove_dir_all(root);
    fs::rename(tmp.join("out"), root)
        .map_err(|e| format!("cannot move Gloo's headers into {}: {e}", root.display()))?;
    let _ = fs::remove_dir_all(&tmp);
    eprintln!(
        "Gloo headers ({PACKAGE}) ready at {}",
        root.join("include").display()
    );
    Ok(())
}

fn fetch_and_unpack(tmp: &Path) -> Result<(), String> {
    eprintln!("==> fetching Gloo's C++ headers ({PACKAGE}, which the libtorch wheel lacks)");
    let download = |tmp: &Path| {
        Command::new("apt-get")
            .args(["download", "-qq", PACKAGE])
            .current_dir(tmp)
            .output()
    };
    let mut out = download(tmp).map_err(|e| no_apt(&e.to_string()))?;
    if !out.status.success() {
        // A fresh machine may have no package lists yet.
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        out = download(tmp).map_err(|e| no_apt(&e.to_string()))?;
    }
    if !out.status.success() {
        return Err(no_apt(String::from_utf8_lossy(&out.stderr).trim()));
    }
    let deb = fs::read_dir(tmp)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| no_apt("apt-get download left no .deb"))?;
    let unpacked = tmp.join("deb");
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&unpacked)
        .status()
        .map_err(|e| format!("cannot run dpkg-deb: {e}"))?;
    let include = unpacked.join("usr").join("include");
    if !status.success() || !is_gloo_include(&include) {
        return Err(format!("{} holds no gloo/algorithm.h", deb.display()));
    }
    let out = tmp.join("out");
    fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    fs::rename(&include, out.join("include")).map_err(|e| e.to_string())?;
    let name = deb.file_name().unwrap_or_default().to_string_lossy().into_owned();
    fs::write(out.join("SOURCE"), format!("{name}\n")).map_err(|e| e.to_string())?;
    Ok(())
}

fn no_apt(why: &str) -> String {
    format!(
        "could not fetch {PACKAGE} with apt-get ({why}). kd-dist's c10d shim needs Gloo's C++ headers: \
         install {PACKAGE} (or your distribution's gloo headers) and set KD_GLOO_INCLUDE to the folder \
         that holds gloo/ (e.g. /usr/include)"
    )
}
