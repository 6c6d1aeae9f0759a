//! dashboard_overhead_pct: what five open dashboards cost the master while
//! it runs the tiny-jobs workload. Each run measures the master's CPU time
//! (utime + stime from /proc) per job twice, side by side: with no
//! dashboard open, then with [`STREAMS`] event streams (`/events`, what an
//! open dashboard page holds) open and read. The figure is the median over
//! the runs of the extra CPU per job, in percent.

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Open dashboards measured.
pub(crate) const STREAMS: usize = 5;

/// The CPU time a process has used, in clock ticks (user + system).
pub(crate) fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("{path} has no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 here.
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("{path}: no field {}", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

/// Opens `n` event streams on the dashboard at `addr` and reads them in the
/// background until the handles are aborted.
pub(crate) async fn open_streams(addr: &str, n: usize) -> Result<Vec<JoinHandle<()>>> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot reach the dashboard at {addr}"))?;
        let request =
            format!("GET /events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        s.write_all(request.as_bytes()).await?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await?;
        if &head != b"HTTP/1.1 200" {
            bail!(
                "the dashboard's /events answered {:?}",
                String::from_utf8_lossy(&head)
            );
        }
        streams.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
        }));
    }
    Ok(streams)
}
