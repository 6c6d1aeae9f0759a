//! The Python baselines in bench/baselines/: what drover is compared with.
//!
//! Each script prints one JSON object on stdout. They run as children of the
//! bench with a deadline, so a hung baseline cannot hang the bench.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use drover_tests::daemon::die_with_parent;
use serde_json::Value;

/// Where the scripts live: bench/baselines/ in the source tree, unless the
/// user says otherwise.
pub(crate) fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("baselines")
}

/// Runs `python script args...` and parses its stdout as a JSON object.
/// A non-zero exit is an error carrying the script's last stderr line.
pub(crate) fn run_script(
    python: &str,
    script: &Path,
    args: &[String],
    timeout: Duration,
) -> Result<Value> {
    if !script.is_file() {
        bail!("{} not found", script.display());
    }
    // Files rather than pipes: nothing has to drain them while we poll for
    // the exit, and a chatty script cannot block on a full pipe.
    let mut out = tempfile::tempfile().context("temporary file")?;
    let mut err = tempfile::tempfile().context("temporary file")?;
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?);
    // A bench killed outright takes its baseline with it.
    die_with_parent(&mut cmd, libc::SIGTERM);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {python} {}", script.display()))?;

    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} took longer than {timeout:?}", script.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };

    let read = |f: &mut std::fs::File| -> Result<String> {
        let mut s = String::new();
        f.rewind()?;
        f.read_to_string(&mut s)?;
        Ok(s)
    };
    let stdout = read(&mut out)?;
    let stderr = read(&mut err)?;
    if !status.success() {
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        bail!(
            "{} failed ({status}): {}",
            script.display(),
            last.unwrap_or("no message")
        );
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| anyhow!("{} printed no JSON object", script.display()))?;
    serde_json::from_str(line).with_context(|| format!("{} printed {line:?}", script.display()))
}

/// Reads a number from a script's JSON output.
pub(crate) fn number(v: &Value, key: &str) -> Result<f64> {
    v.get(key)
        .and_then(Value::as_f64)
        .ok_or_else(|| anyhow!("no number {key:?} in {v}"))
}

/// Reads a list of numbers (a script's samples) from its JSON output.
pub(crate) fn numbers(v: &Value, key: &str) -> Result<Vec<f64>> {
    v.get(key)
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| anyhow!("no list of numbers {key:?} in the script's output"))
}
