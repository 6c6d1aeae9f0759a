//! A worker played by the test: it speaks the `Workers.Connect` protocol
//! message by message, so a test can send what a real worker sends only in
//! a rare race (a stale result, a resend after a lost acknowledgement) at
//! exactly the moment it wants.

use std::time::Duration;

use drover_common::pb::workers_client::WorkersClient;
use drover_common::pb::{self, master_message, worker_message};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::UnboundedReceiverStream;

use crate::grpc::block_on;

/// How long a fake worker waits for the master's next message.
const RECV_TIMEOUT: Duration = Duration::from_secs(30);

/// One `Workers.Connect` session driven by the test.
pub struct FakeWorker {
    /// The name in its hello, which jobs show as their worker.
    name: String,
    /// Our half of the stream; dropping it closes the stream as a worker
    /// does at the end of a drain.
    tx: Option<mpsc::UnboundedSender<pb::WorkerMessage>>,
    /// The master's half.
    inbound: tonic::Streaming<pb::MasterMessage>,
    /// Acknowledged results, up to this sequence number.
    acked: u64,
}

impl FakeWorker {
    /// Connects to the master at `url` with a hello for one CPU and one IO
    /// slot, and waits for its welcome. No credit is granted yet.
    ///
    /// # Panics
    ///
    /// When the master refuses the session or sends no welcome.
    pub fn connect(url: &str, name: &str) -> FakeWorker {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(pb::WorkerMessage {
            msg: Some(worker_message::Msg::Hello(pb::Hello {
                protocol: drover_common::PROTOCOL_VERSION,
                name: name.into(),
                host: "test".into(),
                cpu_slots: 1,
                io_slots: 1,
                version: drover_common::VERSION.into(),
                pid: std::process::id(),
                ..Default::default()
            })),
        })
        .expect("the channel is open");
        let mut inbound = block_on(async {
            let channel = drover_common::net::connect(url)
                .await
                .unwrap_or_else(|e| panic!("cannot reach {url}: {e}"));
            WorkersClient::new(channel)
                .max_decoding_message_size(drover_common::net::MAX_MESSAGE_BYTES)
                .connect(UnboundedReceiverStream::new(rx))
                .await
                .unwrap_or_else(|s| panic!("the master refused worker {name:?}: {s:?}"))
                .into_inner()
        });
        match block_on(async { tokio::time::timeout(RECV_TIMEOUT, inbound.message()).await }) {
            Ok(Ok(Some(pb::MasterMessage {
                msg: Some(master_message::Msg::Welcome(_)),
            }))) => {}
            other => panic!("worker {name:?} got no welcome: {other:?}"),
        }
        FakeWorker {
            name: name.into(),
            tx: Some(tx),
            inbound,
            acked: 0,
        }
    }

    /// The name it registered under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends one message to the master.
    ///
    /// # Panics
    ///
    /// When the session is closed.
    pub fn send(&self, msg: worker_message::Msg) {
        self.tx
            .as_ref()
            .expect("the session is open")
            .send(pb::WorkerMessage { msg: Some(msg) })
            .expect("the stream to the master is open");
    }

    /// Grants the master credit for `cpu` more CPU jobs.
    pub fn credit(&self, cpu: u32) {
        self.send(worker_message::Msg::Credit(pb::Credit {
            cpu,
            io: 0,
            python: 0,
        }));
    }

    /// Sends `results` as the `Results` message numbered `seq`.
    pub fn results(&self, seq: u64, results: Vec<pb::JobResult>) {
        self.send(worker_message::Msg::Results(pb::Results { results, seq }));
    }

    /// The next message from the master, or `None` once it has ended the
    /// stream. Acknowledgements are noted on the way.
    ///
    /// # Panics
    ///
    /// When nothing comes within 30 s, or the stream fails.
    fn next(&mut self) -> Option<master_message::Msg> {
        // The timer is made inside the runtime, which it needs.
        let inbound = &mut self.inbound;
        let got = block_on(async { tokio::time::timeout(RECV_TIMEOUT, inbound.message()).await })
            .unwrap_or_else(|_| {
                panic!(
                    "worker {:?} heard nothing from the master within {RECV_TIMEOUT:?}",
                    self.name
                )
            })
            .unwrap_or_else(|s| panic!("worker {:?}: stream error {s:?}", self.name))?;
        let msg = got.msg;
        if let Some(master_message::Msg::Ack(a)) = &msg {
            self.acked = self.acked.max(a.seq);
        }
        msg
    }

    /// Waits for the next assignment and returns its jobs, skipping other
    /// messages.
    ///
    /// # Panics
    ///
    /// When none comes within 30 s or the master ends the stream.
    pub fn assigned(&mut self) -> Vec<pb::Assignment> {
        loop {
            match self.next() {
                Some(master_message::Msg::Assign(a)) => return a.jobs,
                Some(_) => {}
                None => panic!("the master ended worker {:?}'s stream", self.name),
            }
        }
    }

    /// Waits until the master has acknowledged the results numbered `seq`.
    ///
    /// # Panics
    ///
    /// When it does not within 30 s, or the master ends the stream first.
    pub fn wait_ack(&mut self, seq: u64) {
        while self.acked < seq {
            match self.next() {
                Some(_) => {}
                None => panic!(
                    "the master ended worker {:?}'s stream before acknowledging results {seq}",
                    self.name
                ),
            }
        }
    }

    /// Closes our half of the stream, as a worker does at the end of a
    /// drain, and waits until the master ends the session (closes its half).
    ///
    /// # Panics
    ///
    /// When the master does not within 30 s.
    pub fn close(mut self) {
        self.tx = None;
        while self.next().is_some() {}
    }
}

/// A result for attempt `a` that failed with `reason`.
pub fn failure(a: &pb::Assignment, reason: &str, retryable: bool) -> pb::JobResult {
    pb::JobResult {
        job_id: a.job_id.clone(),
        attempt: a.attempt,
        outcome: Some(pb::job_result::Outcome::Failure(pb::JobFailure {
            reason: reason.into(),
            retryable,
        })),
        run_us: 0,
        slot: a.slot,
    }
}
