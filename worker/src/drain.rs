//! Where the worker is in its life: running, or one of the steps of a drain.
//!
//! A drain (SIGTERM or SIGINT, or the master's `Drain`) goes one way:
//! stop granting credit and hand back the jobs not started (and, as soon as
//! they are found, those behind a job whose child is killed later in the
//! drain: a draining worker holds only running jobs); let the running ones
//! finish within `--grace`; once none is held, send the last results
//! and wait a while for the master to acknowledge them; then close our half
//! of the stream and wait a while for the master to close the other; done.
//! [`Phase`] is that path as one value, so no combination of flags can say
//! two things at once; the engine does what each step asks.

use std::time::Duration;

use tokio::time::Instant;

/// Once no job is held, how long to wait for the master to acknowledge the
/// last results. Past it they are given up (the master runs them again).
pub(crate) const ACK_WAIT: Duration = Duration::from_secs(5);

/// Once our half of the stream is closed, how long to wait for the master
/// to close its half (it ends the session cleanly when it does).
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The worker's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Taking jobs and granting credit.
    Running,
    /// No credit; the jobs not started were handed back; the running ones
    /// finish. `grace_until` is when those still running are stopped; it is
    /// `None` once they were, or when the master asked for the drain (no
    /// signal, so no `--grace`).
    Draining {
        /// When the jobs still running are stopped.
        grace_until: Option<Instant>,
    },
    /// No job held: the last results are out, and the master's
    /// acknowledgement is awaited until `until`.
    Acking {
        /// When the engine stops waiting for acknowledgements.
        until: Instant,
    },
    /// Our half of the stream is closed; waiting until `until` for the
    /// master to close its half.
    Closing {
        /// When the engine stops waiting for the master.
        until: Instant,
    },
    /// Drained: the engine stops.
    Done,
}

/// A deadline of the phase that passed, and what the engine must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    /// The grace period is over: stop the jobs still running, each reported
    /// as a retriable failure.
    Grace,
    /// The master did not close the stream in time: stop anyway.
    Close,
}

impl Phase {
    /// Whether the worker takes jobs and grants credit.
    pub(crate) fn is_running(self) -> bool {
        self == Phase::Running
    }

    /// Starts a drain whose running jobs are stopped at `grace_until`
    /// (`None`: never). Returns whether it started now: a drain already
    /// under way goes on as it was.
    pub(crate) fn drain(&mut self, grace_until: Option<Instant>) -> bool {
        if !self.is_running() {
            return false;
        }
        *self = Phase::Draining { grace_until };
        true
    }

    /// When the engine must wake up for this phase, if ever.
    pub(crate) fn deadline(self) -> Option<Instant> {
        match self {
            Phase::Draining { grace_until } => grace_until,
            Phase::Acking { until } | Phase::Closing { until } => Some(until),
            Phase::Running | Phase::Done => None,
        }
    }

    /// Moves on once [`Phase::deadline`] has passed; says what the engine
    /// must do about it. An acknowledgement wait that ran out needs nothing
    /// here: the next [`Phase::settle`] closes the stream.
    pub(crate) fn expire(&mut self) -> Option<Expired> {
        match *self {
            Phase::Draining {
                grace_until: Some(_),
            } => {
                *self = Phase::Draining { grace_until: None };
                Some(Expired::Grace)
            }
            Phase::Closing { .. } => {
                *self = Phase::Done;
                Some(Expired::Close)
            }
            _ => None,
        }
    }

    /// Moves on after a round of events, given whether any job is still
    /// held, whether the master has acknowledged every result, and whether
    /// a session is open. Returns true when the engine must close its half
    /// of the stream now: every result is acknowledged, or the wait for it
    /// is over.
    #[must_use]
    pub(crate) fn settle(
        &mut self,
        now: Instant,
        jobs_held: bool,
        acked: bool,
        connected: bool,
    ) -> bool {
        if matches!(self, Phase::Draining { .. }) && !jobs_held {
            *self = Phase::Acking {
                until: now + ACK_WAIT,
            };
        }
        let mut close = false;
        if let Phase::Acking { until } = *self
            && (acked || now >= until)
        {
            *self = Phase::Closing {
                until: now + CLOSE_WAIT,
            };
            close = true;
        }
        // With no session there is no stream for the master to close.
        if matches!(self, Phase::Closing { .. }) && !connected {
            *self = Phase::Done;
        }
        close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(30);

    #[test]
    fn a_drain_starts_once_and_stops_credit() {
        let now = Instant::now();
        let mut phase = Phase::Running;
        assert!(phase.is_running());
        assert_eq!(phase.deadline(), None);
        assert!(phase.drain(Some(now + GRACE)));
        assert!(!phase.is_running());
        assert_eq!(phase.deadline(), Some(now + GRACE));
        // A second request (the master's drain after a signal) changes
        // nothing: the grace period stays.
        assert!(!phase.drain(None));
        assert_eq!(
            phase,
            Phase::Draining {
                grace_until: Some(now + GRACE)
            }
        );
    }

    #[test]
    fn running_jobs_hold_the_drain_until_the_grace_period_ends() {
        let now = Instant::now();
        let mut phase = Phase::Running;
        phase.drain(Some(now + GRACE));
        assert!(!phase.settle(now, true, true, true));
        assert!(matches!(phase, Phase::Draining { .. }));
        assert_eq!(phase.expire(), Some(Expired::Grace));
        assert_eq!(phase, Phase::Draining { grace_until: None });
        assert_eq!(phase.deadline(), None, "the grace period ends once");
        assert_eq!(phase.expire(), None);
    }

    #[test]
    fn a_master_drain_has_no_grace_deadline() {
        let mut phase = Phase::Running;
        phase.drain(None);
        assert_eq!(phase.deadline(), None);
        assert_eq!(phase.expire(), None);
    }

    #[test]
    fn acknowledged_results_close_the_stream_at_once() {
        let now = Instant::now();
        let mut phase = Phase::Running;
        phase.drain(Some(now + GRACE));
        assert!(phase.settle(now, false, true, true));
        assert_eq!(
            phase,
            Phase::Closing {
                until: now + CLOSE_WAIT
            }
        );
        // The master closes its half: the session ends.
        assert!(!phase.settle(now, false, true, false));
        assert_eq!(phase, Phase::Done);
    }

    #[test]
    fn unacknowledged_results_are_waited_for_then_given_up() {
        let now = Instant::now();
        let mut phase = Phase::Running;
        phase.drain(None);
        assert!(!phase.settle(now, false, false, true));
        assert_eq!(
            phase,
            Phase::Acking {
                until: now + ACK_WAIT
            }
        );
        assert_eq!(phase.deadline(), Some(now + ACK_WAIT));
        // A session lost meanwhile does not end the wait: a new one resends.
        assert!(!phase.settle(now + Duration::from_secs(1), false, false, false));
        assert!(matches!(phase, Phase::Acking { .. }));
        // The wait runs out: expiring does nothing by itself, and the next
        // settle closes the stream without the acknowledgement.
        let later = now + ACK_WAIT;
        assert_eq!(phase.expire(), None);
        assert!(phase.settle(later, false, false, true));
        assert_eq!(
            phase,
            Phase::Closing {
                until: later + CLOSE_WAIT
            }
        );
    }

    #[test]
    fn closing_with_no_session_is_done_at_once() {
        let now = Instant::now();
        let mut phase = Phase::Draining { grace_until: None };
        assert!(phase.settle(now, false, true, false));
        assert_eq!(phase, Phase::Done);
    }

    #[test]
    fn a_master_that_never_closes_is_given_up_on() {
        let now = Instant::now();
        let mut phase = Phase::Closing {
            until: now + CLOSE_WAIT,
        };
        assert_eq!(phase.deadline(), Some(now + CLOSE_WAIT));
        assert_eq!(phase.expire(), Some(Expired::Close));
        assert_eq!(phase, Phase::Done);
        assert_eq!(phase.deadline(), None);
    }
}
