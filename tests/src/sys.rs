//! Signals and process lookups through libc and Linux's `/proc`.

use std::collections::HashMap;

/// Sends `sig` to `pid`.
///
/// # Panics
///
/// When the signal cannot be sent (no such process, or not permitted).
pub fn signal(pid: u32, sig: i32) {
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert!(
        rc == 0,
        "kill({pid}, {sig}) failed: {}",
        std::io::Error::last_os_error()
    );
}

/// Sends SIGKILL to `pid` (`kill -9`).
pub fn sigkill(pid: u32) {
    signal(pid, libc::SIGKILL);
}

/// Sends SIGTERM to `pid`.
pub fn sigterm(pid: u32) {
    signal(pid, libc::SIGTERM);
}

/// Sends SIGSTOP to `pid`: it stops until [`sigcont`].
pub fn sigstop(pid: u32) {
    signal(pid, libc::SIGSTOP);
}

/// Sends SIGCONT to `pid`.
pub fn sigcont(pid: u32) {
    signal(pid, libc::SIGCONT);
}

/// The one-letter state of `pid` from `/proc/PID/stat` (`R`, `S`, `Z`, ...),
/// or `None` when there is no such process (it has exited and been reaped).
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself hold spaces or
    // parentheses; the state follows the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

/// Whether `pid` is a live process: it exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// Whether `pid` is gone altogether: exited and reaped by its parent, so
/// neither running nor left as a zombie.
pub fn is_gone(pid: u32) -> bool {
    proc_state(pid).is_none()
}

/// The parent pid of `pid`, or `None` when there is no such process.
pub fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Makes this process the reaper of its orphaned descendants (Linux), so
/// that the children of a daemon the harness killed end as its children and
/// can be reaped, rather than as zombies of an init that may never reap.
pub fn become_subreaper() {
    #[cfg(target_os = "linux")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: prctl with these arguments only sets a flag of this process.
        ONCE.call_once(|| unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
        });
    }
}

/// Waits up to `timeout` for `pid`, a child of this process that was sent
/// SIGKILL, and reaps it. Does nothing when it is not a child of this
/// process.
pub fn reap(pid: u32, timeout: std::time::Duration) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only to `status`, a live local.
        let rc = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
        // Reaped, or not (or no longer) a child of ours.
        if rc != 0 || std::time::Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(crate::wait::POLL);
    }
}

/// The parent pid of every process, read from `/proc`.
fn parents() -> HashMap<u32, u32> {
    let mut map = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return map;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        // After the name: state, then the parent pid.
        if let Some(ppid) = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok())
        {
            map.insert(pid, ppid);
        }
    }
    map
}

/// Every live descendant of `pid` (children, their children, ...).
pub fn descendants(pid: u32) -> Vec<u32> {
    let parents = parents();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (&child, &parent) in &parents {
            if parent == p && !out.contains(&child) {
                out.push(child);
                frontier.push(child);
            }
        }
    }
    out
}

/// The direct children of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let mut kids: Vec<u32> = parents()
        .into_iter()
        .filter(|&(_, parent)| parent == pid)
        .map(|(child, _)| child)
        .collect();
    kids.sort_unstable();
    kids
}
