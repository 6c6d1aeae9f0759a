//! The virtualenv the Python client's tests run in: made once in
//! `<target>/python-venv` with the client's dependencies and pytest from
//! PyPI (made again only when `python/pyproject.toml`,
//! `python/tests/requirements.txt` or the interpreter change), with the
//! client installed from a copy of `python/` (never the source tree: stub
//! and runtime mismatches show only in an installed package). The pytest
//! suite (`tests/python.rs`) and the tests that run a Python client script
//! against real masters (`tests/ha.rs`) share it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use crate::bins::{bin, workspace_root};

/// Returns the virtualenv's directory, with the current client installed;
/// made (or brought up to date) once per test process.
///
/// # Panics
///
/// When the venv cannot be made or the client cannot be installed (with
/// the output of the command that failed).
pub fn venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        // <target>/<profile>/drover-master
        let master = bin("drover-master");
        let target = master
            .parent()
            .and_then(Path::parent)
            .expect("the binaries live in <target>/<profile>/");
        prepare_venv(target, &workspace_root().join("python"))
    })
    .clone()
}

/// The interpreter that makes the virtualenv: `DROVER_PYTHON`, else `python3`.
fn python3() -> String {
    std::env::var("DROVER_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs `cmd` to completion, panicking with its output when it fails.
#[track_caller]
fn run(what: &str, cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what} ({cmd:?}): {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What the virtualenv was made from: when any of it changes, the venv is
/// made again.
fn venv_stamp(python_dir: &Path) -> String {
    let version = run(
        "python3 --version",
        Command::new(python3()).args(["-c", "import sys; print(sys.version)"]),
    );
    let mut stamp = String::from_utf8_lossy(&version.stdout).into_owned();
    for file in ["pyproject.toml", "tests/requirements.txt"] {
        let path = python_dir.join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        stamp.push_str(&format!("--- {file}\n{text}"));
    }
    stamp
}

/// Copies what `pip install` needs of `python/` into `to`, so that the build
/// leaves nothing in the source tree.
fn copy_package(python_dir: &Path, to: &Path) {
    if to.exists() {
        std::fs::remove_dir_all(to).expect("cannot clear the package copy");
    }
    copy_dir(&python_dir.join("drover"), &to.join("drover"));
    for file in ["pyproject.toml", "README.md"] {
        std::fs::copy(python_dir.join(file), to.join(file))
            .unwrap_or_else(|e| panic!("cannot copy python/{file}: {e}"));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("cannot create a directory for the package copy");
    for entry in std::fs::read_dir(from).expect("cannot list python/drover") {
        let entry = entry.expect("cannot read python/drover");
        let path = entry.path();
        let name = entry.file_name();
        if name == "__pycache__" {
            continue;
        }
        if path.is_dir() {
            copy_dir(&path, &to.join(&name));
        } else {
            std::fs::copy(&path, to.join(&name))
                .unwrap_or_else(|e| panic!("cannot copy {}: {e}", path.display()));
        }
    }
}

/// Makes (or reuses) the virtualenv and installs the current client in it;
/// returns the venv's directory.
fn prepare_venv(target: &Path, python_dir: &Path) -> PathBuf {
    let venv = target.join("python-venv");
    let stamp_file = venv.join("drover-stamp");
    let stamp = venv_stamp(python_dir);
    let package = target.join("python-package");
    copy_package(python_dir, &package);
    let pip = |args: &[&str]| {
        let mut cmd = Command::new(venv.join("bin/python"));
        cmd.args(["-m", "pip", "--disable-pip-version-check", "--quiet"])
            .args(args);
        cmd
    };
    let fresh = std::fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp);
    if !fresh {
        if venv.exists() {
            std::fs::remove_dir_all(&venv).expect("cannot remove the old virtualenv");
        }
        run(
            "python3 -m venv",
            Command::new(python3()).args(["-m", "venv"]).arg(&venv),
        );
        // The client's dependencies come from its pyproject, the tests' from
        // their requirements; both from PyPI.
        let requirements = python_dir.join("tests/requirements.txt");
        run(
            "pip install (from PyPI)",
            pip(&["install", "-r"]).arg(&requirements).arg(&package),
        );
        std::fs::write(&stamp_file, &stamp).expect("cannot write the virtualenv's stamp");
    }
    // The current source, every run; offline once the venv exists.
    run(
        "pip install ./python",
        pip(&[
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--force-reinstall",
        ])
        .arg(&package),
    );
    venv
}
