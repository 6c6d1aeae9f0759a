//! Durations, ranges, shutdown signals and tracing set-up.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Parses a duration such as `500ms`, `2s`, `1.5s`, `3m`, `1h` or `250`
/// (milliseconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "ms"),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?}: expected e.g. 500ms, 2s, 1m, 1h"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        _ => {
            return Err(format!(
                "bad duration unit {unit:?} in {s:?}: use ms, s, m, h or d"
            ));
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a size in bytes such as `500MB`, `2GiB`, `64k` or `1000000`.
/// Decimal units are powers of 1000 (`k`, `KB`, `M`, `MB`, `G`, `GB`,
/// `T`, `TB`), binary ones powers of 1024 (`KiB`, `MiB`, `GiB`, `TiB`).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&t[..i], t[i..].trim()),
        None => (t, ""),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?}: expected e.g. 500MB, 2GiB or 1000000"))?;
    let scale: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "bad size unit {unit:?} in {s:?}: use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
            ));
        }
    };
    let bytes = value * scale;
    if !bytes.is_finite() || !(1.0..=1e18).contains(&bytes) {
        return Err(format!(
            "size {s:?} is out of range: at least 1 byte, at most 10^18"
        ));
    }
    Ok(bytes as u64)
}

/// Expands job arguments: `A..B` (exclusive, like Python's range), `A..=B`,
/// or a single value kept as it is. At most `max` values come out.
pub fn expand_args(args: &[String], max: usize) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for arg in args {
        if let Some((a, b, inclusive)) = split_range(arg) {
            let a: u64 = a
                .parse()
                .map_err(|_| format!("range {arg:?}: start {a:?} is not a non-negative integer"))?;
            let b: u64 = b
                .parse()
                .map_err(|_| format!("range {arg:?}: end {b:?} is not a non-negative integer"))?;
            let end = if inclusive { b.checked_add(1) } else { Some(b) }
                .ok_or_else(|| format!("range {arg:?} ends past the largest integer"))?;
            if end < a {
                return Err(format!("range {arg:?} runs backwards"));
            }
            let count = end - a;
            // Compared without adding: a range of 2^64 values must not wrap.
            if count > (max as u64).saturating_sub(out.len() as u64) {
                return Err(format!(
                    "range {arg:?} makes {count} jobs; at most {max} fit in one request"
                ));
            }
            out.extend((a..end).map(|v| v.to_string()));
        } else {
            if out.len() >= max {
                return Err(format!("more than {max} jobs in one request"));
            }
            out.push(arg.clone());
        }
    }
    Ok(out)
}

fn split_range(arg: &str) -> Option<(&str, &str, bool)> {
    if let Some((a, b)) = arg.split_once("..=") {
        Some((a, b, true))
    } else {
        arg.split_once("..").map(|(a, b)| (a, b, false))
    }
}

/// The most threads a daemon's `--runtime-threads` may ask for.
pub const MAX_RUNTIME_THREADS: u16 = 1024;

/// The tokio runtime of a daemon started with `--runtime-threads threads`:
/// 1, a current-thread runtime (every task on the thread that calls
/// `block_on`, so a hand-off between tasks wakes no other thread); 0, a
/// thread per core (or `TOKIO_WORKER_THREADS`); N, N threads.
pub fn runtime(threads: u16) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 1 {
                b.worker_threads(n.into());
            }
            b
        }
    };
    builder.enable_all().build()
}

/// Returns a token cancelled on the first SIGINT or SIGTERM; a second signal
/// exits the process at once with status 130.
///
/// The signals are watched on a thread of their own, and their handlers
/// are in place when this returns: a daemon whose runtime is one busy
/// thread still hears a second signal (two signals that arrive before a
/// busy thread looks are one), and a signal during its start-up stops it
/// cleanly rather than killing it.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    let watcher = std::thread::Builder::new()
        .name("drover-signals".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let streams = signal(SignalKind::terminate())
                    .and_then(|term| Ok((term, signal(SignalKind::interrupt())?)));
                let (mut term, mut int) = match streams {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                tracing::info!("signal received, shutting down (a second signal stops at once)");
                cancel.cancel();
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                tracing::warn!("second signal, exiting now");
                std::process::exit(130);
            });
        });
    let ready = match watcher {
        Ok(_) => ready_rx
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the signal thread ended"))),
        Err(e) => Err(e),
    };
    if let Err(e) = ready {
        tracing::warn!(error = %e, "cannot watch for SIGTERM and SIGINT; they stop the process at once");
    }
    token
}

/// Sets up tracing to stderr with RUST_LOG (default `default_level`), as
/// text or as JSON lines.
pub fn init_tracing(json: bool, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    use std::io::IsTerminal;
    // Colours only for a person at a terminal, never in a log file.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr);
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_bad_ones_say_why() {
        assert_eq!(parse_bytes("1000000"), Ok(1_000_000));
        assert_eq!(parse_bytes("500MB"), Ok(500_000_000));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("1.5k"), Ok(1500));
        assert!(parse_bytes("0").unwrap_err().contains("at least 1 byte"));
        assert!(parse_bytes("12 parsecs").unwrap_err().contains("unit"));
        assert!(parse_bytes("lots").unwrap_err().contains("bad size"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("250"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("2 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn ranges_like_python() {
        let v = |s: &[&str]| expand_args(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>(), 100);
        assert_eq!(v(&["2..5"]).unwrap(), ["2", "3", "4"]);
        assert_eq!(v(&["2..=4"]).unwrap(), ["2", "3", "4"]);
        assert_eq!(v(&["3..3"]).unwrap(), Vec::<String>::new());
        assert_eq!(v(&["7", "1..=2"]).unwrap(), ["7", "1", "2"]);
        assert!(v(&["5..2"]).unwrap_err().contains("backwards"));
        assert!(v(&["0..1000"]).unwrap_err().contains("at most 100"));
        assert!(v(&["a..3"]).unwrap_err().contains("start"));
        // Found by fuzzing: the count of a huge range after other values
        // overflowed the limit check.
        let e = v(&["1", "0..18446744073709551615"]).unwrap_err();
        assert!(e.contains("at most 100"), "{e}");
        assert_eq!(v(&["1..=0"]).unwrap(), Vec::<String>::new());
    }
}
