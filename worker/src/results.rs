//! The results outbox: every result the worker owes the master, until the
//! master says it has stored it.
//!
//! Finished results wait here until a session can take them; then they go
//! out in numbered `Results` messages of at most [`MESSAGE_BYTES`] each (a
//! larger result goes alone), and a copy of each is kept until a
//! `ResultsAck` of its number (or a later one) arrives. A stream that
//! breaks may lose what was sent on it, so a new session sends every
//! unacknowledged message again, as it was; the master drops what it
//! already has. Since a message never grows past its bound, however many
//! results are ready, one that fits under the master's message limit once
//! fits on every later session too.

use std::collections::VecDeque;

use drover_common::pb;

/// The bytes of results one `Results` message aims at: far under the
/// master's message limit (`--max-message-bytes`, 64 MiB by default), so
/// that only a single result as large as `--max-result-bytes` makes a
/// message bigger, and then it goes alone.
pub(crate) const MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Results not yet sent, and results sent but not yet acknowledged.
#[derive(Debug)]
pub(crate) struct ResultsOutbox {
    /// Finished and not yet handed to a session, oldest first: the next
    /// messages.
    unsent: VecDeque<pb::JobResult>,
    /// Sent and not yet acknowledged, oldest first, to send again on the
    /// next session.
    unacked: VecDeque<pb::Results>,
    /// The number of the last message made; the master acknowledges by it.
    seq: u64,
    /// The most bytes of results a message holds, unless one result alone
    /// is larger.
    message_bytes: usize,
}

impl Default for ResultsOutbox {
    fn default() -> ResultsOutbox {
        ResultsOutbox::with_message_bytes(MESSAGE_BYTES)
    }
}

impl ResultsOutbox {
    /// An empty outbox whose messages hold at most `message_bytes` of
    /// results each (tests use small ones).
    pub(crate) fn with_message_bytes(message_bytes: usize) -> ResultsOutbox {
        ResultsOutbox {
            unsent: VecDeque::new(),
            unacked: VecDeque::new(),
            seq: 0,
            message_bytes,
        }
    }

    /// Adds a finished result to the next message.
    pub(crate) fn push(&mut self, result: pb::JobResult) {
        self.unsent.push_back(result);
    }

    /// Takes the oldest unsent results, as many as fit in the message bound
    /// and always at least one, as one message with the next number,
    /// keeping a copy until it is acknowledged; `None` if nothing waits.
    /// Call it until it gives `None` to send everything ready.
    pub(crate) fn next_message(&mut self) -> Option<pb::Results> {
        let mut results = Vec::new();
        let mut bytes = 0;
        while let Some(next) = self.unsent.front() {
            let size = crate::child::repeated_len(next);
            if !results.is_empty() && bytes + size > self.message_bytes {
                break;
            }
            bytes += size;
            results.extend(self.unsent.pop_front());
        }
        if results.is_empty() {
            return None;
        }
        self.seq += 1;
        let message = pb::Results {
            results,
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
    use prost::Message;

    use super::*;

    fn result(job_id: &str) -> pb::JobResult {
        pb::JobResult {
            job_id: job_id.into(),
            attempt: 1,
            ..Default::default()
        }
    }

    fn fib_result(job_id: &str, digits: usize) -> pb::JobResult {
        pb::JobResult {
            job_id: job_id.into(),
            attempt: 1,
            outcome: Some(pb::job_result::Outcome::Output(pb::JobOutput {
                value: Some(pb::job_output::Value::Fib("7".repeat(digits))),
            })),
            run_us: 1,
            slot: None,
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
    fn messages_are_bounded_in_bytes_and_a_larger_result_goes_alone() {
        let mut outbox = ResultsOutbox::with_message_bytes(1000);
        // Each result encodes to a little over 300 bytes: three fit, not four.
        for id in ["a", "b", "c", "d"] {
            outbox.push(fib_result(id, 300));
        }
        // Over the bound by itself: it goes, alone, in order.
        outbox.push(fib_result("big", 5000));
        outbox.push(fib_result("e", 300));
        let mut sent = Vec::new();
        while let Some(message) = outbox.next_message() {
            sent.push(message);
        }
        let shape: Vec<(u64, Vec<&str>)> = sent.iter().map(|m| (m.seq, ids(m))).collect();
        assert_eq!(
            shape,
            [
                (1, vec!["a", "b", "c"]),
                (2, vec!["d"]),
                (3, vec!["big"]),
                (4, vec!["e"]),
            ]
        );
        for message in &sent {
            let only_one = message.results.len() == 1;
            assert!(
                only_one || message.encoded_len() <= 1000 + 8,
                "message {} is {} bytes",
                message.seq,
                message.encoded_len()
            );
        }
        // Resent as they were: the same bounds, the same numbers.
        let resent: Vec<_> = outbox.to_resend().collect();
        assert_eq!(resent, sent);
        assert_eq!(outbox.pending(), 6);
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
