//! Finds drover's binaries, building them once per test process.
//!
//! Cargo builds the test binaries of this crate but not the binaries of the
//! other packages, so on a fresh clone `cargo test --workspace` would find
//! nothing to run. The first test that needs a binary runs
//! `cargo build --bins` for the workspace, with the profile the tests were
//! built with; the others wait for it behind a [`OnceLock`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Returns the workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

/// Returns the path of the binary `name` (`drover-master`, `drover-worker`
/// or `drover`), building the workspace's binaries first if this process has
/// not done so yet.
///
/// # Panics
///
/// When the build fails (with cargo's output) or the binary is missing.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = match BUILT.get_or_init(build) {
        Ok(dir) => dir,
        Err(e) => panic!("{e}"),
    };
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} does not exist after `cargo build --bins`",
        path.display()
    );
    path
}

/// The directory holding this profile's binaries: the test executable lives
/// in `<target>/<profile>/deps/`, so its grandparent is where cargo puts the
/// binaries of the same profile, wherever CARGO_TARGET_DIR points.
fn profile_dir() -> Result<PathBuf, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the test executable: {e}"))?;
    let dir = exe
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", exe.display()))?;
    Ok(if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    })
}

/// A `cargo` command for a build of the workspace from inside a process
/// that cargo started (a test, `cargo run -p drover-bench`).
///
/// Cargo gives such a process the variables of its package
/// (`CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR`, ...). A nested build must not
/// inherit them: build scripts watch some of them (ring's watches
/// `CARGO_PKG_*`), so the nested build would rebuild ring and everything
/// above it, and the next plain `cargo build` would rebuild it all again.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let per_package = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_BIN_",
            "CARGO_CRATE_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
        ]
        .iter()
        .any(|p| key.starts_with(p));
        if per_package || key == "OUT_DIR" {
            cmd.env_remove(&*key);
        }
    }
    cmd.current_dir(workspace_root());
    cmd
}

fn build() -> Result<PathBuf, String> {
    let mut cmd = cargo();
    cmd.args(["build", "--bins", "--quiet"]);
    // The same profile as this test: `cargo test --release` runs release
    // binaries.
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run `cargo build --bins`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`cargo build --bins` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    profile_dir()
}
