//! Polling with a deadline: the only way a test waits for something.

use std::time::{Duration, Instant};

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `cond` until it holds, failing after `timeout`. Every daemon the
/// test started is checked on each poll, so a crash fails the test at once
/// instead of at the deadline.
///
/// # Panics
///
/// When the deadline passes (naming `what`) or a started process dies.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(timeout, what, || cond().then_some(()));
}

/// Polls `probe` until it returns a value, and returns that value; fails
/// like [`wait_until`].
///
/// # Panics
///
/// When the deadline passes (naming `what`) or a started process dies.
#[track_caller]
pub fn wait_for<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        crate::process::check_started();
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}
