//! The masters a command may talk to (`--master a,b,c`: the masters of one
//! database, one of them the leader), and how a command moves between
//! them.
//!
//! A command connects to the first master that accepts a connection and
//! sends its calls there. A call that fails because that master is away
//! (a connection that fails or breaks, UNAVAILABLE, which a standby
//! answers every call with) goes on to the next master, wrapping around,
//! if it is safe to send again ([`Resend`]); the master that answers is
//! the one the command's later calls go to. With one master, a call is
//! made once, as it always was.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use drover_common::net::{self, AuthChannel, ClientOptions};

/// When a call that failed may be sent to the next master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resend {
    /// On any sign that the master went away: for reads, submits named by
    /// their request id, cancels, and writes whose second application
    /// changes nothing a first did not (a put, a set).
    Safe,
    /// Only when no master applied it: the connection could not be made,
    /// or a standby refused it ([`net::from_standby`]). For calls that
    /// must not be applied twice (an add, a compare-and-set, a delete, a
    /// barrier, a session) and `retry` (a job that failed again between
    /// the two would get a second allowance).
    Unapplied,
}

impl Resend {
    /// Whether a call that failed with `status` may go to another master.
    pub(crate) fn allows(self, status: &tonic::Status) -> bool {
        match self {
            Resend::Safe => transient(status),
            Resend::Unapplied => net::never_connected(status) || net::from_standby(status),
        }
    }
}

/// Whether a failed call may succeed if made again: the master went away
/// or the connection broke, as opposed to an answer that will not change.
pub(crate) fn transient(s: &tonic::Status) -> bool {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => true,
        // A connection cut mid-stream surfaces as an h2 error.
        tonic::Code::Internal => s.message().contains("h2 protocol error"),
        _ => false,
    }
}

/// The masters of a command and the one it talks to now. Clones share
/// which one that is.
#[derive(Clone)]
pub(crate) struct Masters {
    /// Their URLs, in the order given; never empty.
    urls: Arc<[String]>,
    /// A channel to each (with the same TLS and token); the one found at
    /// connect is connected, the others connect on their first call.
    channels: Arc<[AuthChannel]>,
    /// The index of the master calls go to now.
    current: Arc<AtomicUsize>,
}

impl Masters {
    /// Connects to the first of `urls` that accepts a connection, with the
    /// TLS and token `options` ask for. One URL that cannot be reached
    /// fails with the error it always did; several, naming each.
    pub(crate) async fn connect(
        urls: &[String],
        options: &ClientOptions,
    ) -> anyhow::Result<Masters> {
        anyhow::ensure!(!urls.is_empty(), "--master: no address");
        let mut channels = urls
            .iter()
            .map(|url| net::connect_lazy_with(url, options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?;
        let mut errors = Vec::new();
        for (i, url) in urls.iter().enumerate() {
            match net::connect_with(url, options).await {
                Ok(channel) => {
                    channels[i] = channel;
                    return Ok(Masters {
                        urls: urls.into(),
                        channels: channels.into(),
                        current: Arc::new(AtomicUsize::new(i)),
                    });
                }
                Err(e) => errors.push(e),
            }
        }
        if let [one] = errors.as_slice() {
            anyhow::bail!("{one}");
        }
        anyhow::bail!(
            "none of the {} masters could be reached: {}",
            urls.len(),
            errors.join("; ")
        )
    }

    /// How many masters there are.
    pub(crate) fn len(&self) -> usize {
        self.urls.len()
    }

    /// The URL of the master `i` in the list.
    pub(crate) fn url(&self, i: usize) -> &str {
        &self.urls[i]
    }

    /// The index of the master calls go to now, and a channel to it.
    pub(crate) fn current(&self) -> (usize, AuthChannel) {
        let i = self.current.load(Ordering::Relaxed);
        (i, self.channels[i].clone())
    }

    /// Moves on from the master `at`, whose call failed: the next one in
    /// the list is current, unless another call moved on already. Returns
    /// the current one's index.
    pub(crate) fn move_on(&self, at: usize) -> usize {
        let next = (at + 1) % self.len();
        match self
            .current
            .compare_exchange(at, next, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => next,
            Err(now) => now,
        }
    }

    /// Makes `call` on the current master and, while its failure allows it
    /// (`resend`), on each next one, once around the list. Returns the
    /// first answer, or the last failure.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        resend: Resend,
        mut call: F,
    ) -> Result<T, tonic::Status>
    where
        F: FnMut(AuthChannel) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let mut tries = 1;
        loop {
            let (at, channel) = self.current();
            match call(channel).await {
                Err(status) if tries < self.len() && resend.allows(&status) => {
                    let next = self.move_on(at);
                    eprintln!(
                        "drover: the master at {} is unavailable ({}); trying {}",
                        self.url(at),
                        status.message(),
                        self.url(next)
                    );
                    tries += 1;
                }
                done => return done,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masters(n: usize) -> Masters {
        let urls: Vec<String> = (0..n)
            .map(|i| format!("http://127.0.0.1:{}", i + 1))
            .collect();
        let channels: Vec<AuthChannel> = urls
            .iter()
            .map(|u| net::connect_lazy_with(u, &ClientOptions::default()).unwrap())
            .collect();
        Masters {
            urls: urls.into(),
            channels: channels.into(),
            current: Arc::default(),
        }
    }

    #[tokio::test]
    async fn a_call_goes_around_the_masters_once_while_its_failure_allows() {
        let m = masters(3);
        let mut seen = Vec::new();
        let standby = || {
            let mut s = tonic::Status::unavailable("standby; the leader is elsewhere");
            s.metadata_mut()
                .insert(net::STANDBY_METADATA, "".parse().unwrap());
            s
        };
        let r: Result<(), _> = m
            .call(Resend::Unapplied, |_| {
                seen.push(m.current().0);
                std::future::ready(Err(standby()))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(seen, [0, 1, 2]);
        // The last one tried stays current; the next call starts there.
        assert_eq!(m.current().0, 2);
        // A bare UNAVAILABLE (a master shutting down, maybe after applying
        // the call) moves a safe call on, and not an unsafe one.
        seen.clear();
        let r: Result<(), _> = m
            .call(Resend::Unapplied, |_| {
                seen.push(m.current().0);
                std::future::ready(Err(tonic::Status::unavailable("shutting down")))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(seen, [2]);
        seen.clear();
        let r = m
            .call(Resend::Safe, |_| {
                seen.push(m.current().0);
                std::future::ready(if seen.len() < 2 {
                    Err(tonic::Status::unavailable("shutting down"))
                } else {
                    Ok(7)
                })
            })
            .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(seen, [2, 0]);
        // An answer that will not change is not sent again.
        seen.clear();
        let r: Result<(), _> = m
            .call(Resend::Safe, |_| {
                seen.push(m.current().0);
                std::future::ready(Err(tonic::Status::invalid_argument("no")))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(seen, [0]);
    }

    #[tokio::test]
    async fn one_master_is_called_once() {
        let m = masters(1);
        let mut tries = 0;
        let r: Result<(), _> = m
            .call(Resend::Safe, |_| {
                tries += 1;
                std::future::ready(Err(tonic::Status::unavailable("gone")))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(tries, 1);
    }

    #[tokio::test]
    async fn moving_on_twice_from_one_failure_skips_nobody() {
        let m = masters(3);
        assert_eq!(m.move_on(0), 1);
        // Another call that failed on master 0 finds 1 current already.
        assert_eq!(m.move_on(0), 1);
        assert_eq!(m.move_on(1), 2);
        assert_eq!(m.move_on(2), 0);
    }
}
