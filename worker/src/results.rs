//! The results outbox: every result the worker owes the master, until the
//! master says it has stored it.
//!
//! Finished results wait here until a session can take them; then they go
//! out together as one numbered `Results` message, and a copy is kept until
//! a `ResultsAck` of that number (or a later one) arrives. A stream that
//! breaks may lose what was sent on it, so a new session sends every
//! unacknowledged message again; the master drops what it already has.

use std::collections::VecDeque;

use drover_common::pb;

/// Results not yet sent, and results sent but not yet acknowledged.
#[derive(Debug, Default)]
pub(crate) struct ResultsOutbox {
    /// Finished and not yet handed to a session: the next message.
    unsent: Vec<pb::JobResult>,
    /// Sent and not yet acknowledged, oldest first, to send again on the
    /// next session.
    unacked: VecDeque<pb::Results>,
    /// The number of the last message made; the master acknowledges by it.
    seq: u64,
}

impl ResultsOutbox {
    /// Adds a finished result to the next message.
    pub(crate) fn push(&mut self, result: pb::JobResult) {
        self.unsent.push(result);
    }

    /// Takes every unsent result as one message with the next number,
    /// keeping a copy until it is acknowledged; `None` if nothing waits.
    pub(crate) fn next_message(&mut self) -> Option<pb::Results> {
        if self.unsent.is_empty() {
            return None;
        }
        self.seq += 1;
        let message = pb::Results {
            results: std::mem::take(&mut self.unsent),
            seq: self.seq,
        };
        self.unacked.push_back(message.clone());
        Some(message)
    }

    /// The messages sent and not acknowledged, oldest first: what a new
    /// session sends before anything else.
    pub(crate) fn to_resend(&self) -> impl Iterator<Item = pb::Results> + '_ {
        self.unacked.iter().cloned()
    }

    /// Drops every message numbered `seq` or lower: the master has stored
    /// them.
    pub(crate) fn ack(&mut self, seq: u64) {
        while self.unacked.front().is_some_and(|m| m.seq <= seq) {
            self.unacked.pop_front();
        }
    }

    /// Whether the master has stored every result: none unsent, none
    /// unacknowledged.
    pub(crate) fn is_settled(&self) -> bool {
        self.unsent.is_empty() && self.unacked.is_empty()
    }

    /// How many results the master has not acknowledged, sent or not.
    pub(crate) fn pending(&self) -> usize {
        self.unsent.len() + self.unacked.iter().map(|m| m.results.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(job_id: &str) -> pb::JobResult {
        pb::JobResult {
            job_id: job_id.into(),
            attempt: 1,
            ..Default::default()
        }
    }

    fn ids(message: &pb::Results) -> Vec<&str> {
        message.results.iter().map(|r| r.job_id.as_str()).collect()
    }

    #[test]
    fn results_ready_together_go_in_one_numbered_message() {
        let mut outbox = ResultsOutbox::default();
        assert!(outbox.next_message().is_none(), "nothing to send yet");
        outbox.push(result("a"));
        outbox.push(result("b"));
        let first = outbox.next_message().expect("two results wait");
        assert_eq!((first.seq, ids(&first)), (1, vec!["a", "b"]));
        assert!(outbox.next_message().is_none(), "both went in the first");
        outbox.push(result("c"));
        let second = outbox.next_message().expect("one result waits");
        assert_eq!((second.seq, ids(&second)), (2, vec!["c"]));
    }

    #[test]
    fn unacknowledged_messages_are_resent_whole_until_acked() {
        let mut outbox = ResultsOutbox::default();
        for id in ["a", "b", "c"] {
            outbox.push(result(id));
            outbox.next_message();
        }
        outbox.push(result("d"));
        assert_eq!(outbox.pending(), 4);
        assert!(!outbox.is_settled());
        // A new session sends the three messages as they were, numbers and
        // all; "d" was never sent and goes in the next message instead.
        let resent: Vec<_> = outbox.to_resend().collect();
        let seqs: Vec<u64> = resent.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(ids(&resent[1]), ["b"]);
        // An ack covers its number and every lower one.
        outbox.ack(2);
        let seqs: Vec<u64> = outbox.to_resend().map(|m| m.seq).collect();
        assert_eq!(seqs, [3]);
        let last = outbox.next_message().expect("d waits");
        assert_eq!((last.seq, ids(&last)), (4, vec!["d"]));
        // A stale ack changes nothing.
        outbox.ack(1);
        assert_eq!(outbox.pending(), 2);
        outbox.ack(4);
        assert!(outbox.is_settled());
        assert_eq!(outbox.pending(), 0);
        assert_eq!(outbox.to_resend().count(), 0);
    }
}
