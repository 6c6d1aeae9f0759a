//! `GetResponse` and `WatchResponse`, written by hand instead of generated:
//! the same fields and the same wire format, plus [`EncodedJobs`], jobs a
//! master wrote straight into their wire form.
//!
//! Every finished job reaches its client in one of these. Built through
//! `pb::JobInfo`, each job cost its ids formatted into two strings, its
//! argument, worker and output copied, a box, three passes to measure it
//! and the frees after (about a quarter of the master's CPU in a run of
//! tiny jobs, bench/README.md). The master now writes each job's bytes
//! once, under the state's lock, and the message carries them as they
//! are. A client decodes these messages as before: what it reads lands in
//! `jobs`, and `encoded` stays empty. The protocol (and every other
//! client's stubs) is unchanged; `build.rs` points the generated code here
//! (`extern_path`).

use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::pb::JobInfo;

/// Jobs in their wire form as field 1 (`repeated JobInfo jobs`) of the
/// message that carries them: each its key, its length and its body.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EncodedJobs {
    bytes: Vec<u8>,
    count: usize,
}

impl std::fmt::Debug for EncodedJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EncodedJobs({} jobs, {} bytes)",
            self.count,
            self.bytes.len()
        )
    }
}

/// Room left before a job's body for its key (1 byte) and its length (a
/// varint of at most 5 bytes for a `u32`).
const HEAD: usize = 6;

impl EncodedJobs {
    /// Appends one job, whose body (a `JobInfo`'s fields) `body` writes to
    /// the end of the buffer it is given. Returns the bytes the job took,
    /// key and length included.
    pub fn push_with(&mut self, body: impl FnOnce(&mut Vec<u8>)) -> usize {
        let start = self.bytes.len();
        self.bytes.resize(start + HEAD, 0);
        body(&mut self.bytes);
        let len = self.bytes.len() - start - HEAD;
        let mut head = [0u8; HEAD];
        let mut at = &mut head[..];
        encoding::encode_key(1, WireType::LengthDelimited, &mut at);
        encoding::encode_varint(len as u64, &mut at);
        let head_len = HEAD - at.len();
        // The key and the length go right before the body.
        let from = start + HEAD - head_len;
        self.bytes[from..start + HEAD].copy_from_slice(&head[..head_len]);
        self.bytes.copy_within(from.., start);
        self.bytes.truncate(start + head_len + len);
        self.count += 1;
        head_len + len
    }

    /// Appends one job as prost encodes it.
    pub fn push(&mut self, job: &JobInfo) -> usize {
        let start = self.bytes.len();
        encoding::message::encode(1, job, &mut self.bytes);
        self.count += 1;
        self.bytes.len() - start
    }

    /// Appends jobs another [`EncodedJobs`] holds, `count` of them in
    /// `bytes` (a run of its [`EncodedJobs::as_bytes`]).
    pub fn extend_from(&mut self, bytes: &[u8], count: usize) {
        self.bytes.extend_from_slice(bytes);
        self.count += count;
    }

    /// The jobs' wire form.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The jobs held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether it holds no job.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The jobs, decoded (for tests, and for a reader in the same process).
    pub fn decode(&self) -> Result<Vec<JobInfo>, DecodeError> {
        // They are a message whose only field is 1.
        Ok(WatchResponse::decode(&self.bytes[..])?.jobs)
    }
}

/// One page of the named jobs, in order, bounded in bytes well under the
/// message limit (the protocol's `GetResponse`).
#[derive(Clone, PartialEq, Default, Debug)]
pub struct GetResponse {
    /// The jobs (of a decoded message; a master's are in `encoded`).
    pub jobs: Vec<JobInfo>,
    /// False when the wait ended by timeout with jobs still unfinished.
    pub complete: bool,
    /// Set when more jobs follow: ask again, the same request with this as
    /// page_token.
    pub next_page_token: String,
    /// Jobs sent before `jobs`, already encoded (a master's reply; always
    /// empty in a decoded message).
    pub encoded: EncodedJobs,
}

/// Messages are bounded in bytes well under the message limit (the
/// protocol's `WatchResponse`).
#[derive(Clone, PartialEq, Default, Debug)]
pub struct WatchResponse {
    /// Finished jobs, each sent once (of a decoded message; a master's
    /// are in `encoded`).
    pub jobs: Vec<JobInfo>,
    /// Jobs of the batch finished so far.
    pub done: u32,
    /// Jobs of the batch in all.
    pub total: u32,
    /// Jobs sent before `jobs`, already encoded (a master's reply; always
    /// empty in a decoded message).
    pub encoded: EncodedJobs,
}

impl GetResponse {
    /// Every job of the page, in order: the encoded ones decoded, then
    /// `jobs`. What a reader in the master's own process (the dashboard)
    /// calls instead of reading `jobs`, which holds none of a master's.
    pub fn into_jobs(self) -> Result<Vec<JobInfo>, DecodeError> {
        let mut jobs = self.encoded.decode()?;
        jobs.extend(self.jobs);
        Ok(jobs)
    }
}

/// Both messages' field 1, the jobs: the encoded ones, then `jobs`.
fn encode_jobs(encoded: &EncodedJobs, jobs: &[JobInfo], buf: &mut impl BufMut) {
    buf.put_slice(&encoded.bytes);
    for job in jobs {
        encoding::message::encode(1, job, buf);
    }
}

fn jobs_len(encoded: &EncodedJobs, jobs: &[JobInfo]) -> usize {
    encoded.bytes.len() + encoding::message::encoded_len_repeated(1, jobs)
}

/// A decode error of `field` of `message`, as prost's derive reports it.
fn within(message: &'static str, field: &'static str) -> impl FnOnce(DecodeError) -> DecodeError {
    move |mut e| {
        e.push(message, field);
        e
    }
}

impl Message for GetResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encode_jobs(&self.encoded, &self.jobs, buf);
        if self.complete {
            encoding::bool::encode(2, &self.complete, buf);
        }
        if !self.next_page_token.is_empty() {
            encoding::string::encode(3, &self.next_page_token, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        const NAME: &str = "GetResponse";
        match tag {
            1 => encoding::message::merge_repeated(wire_type, &mut self.jobs, buf, ctx)
                .map_err(within(NAME, "jobs")),
            2 => encoding::bool::merge(wire_type, &mut self.complete, buf, ctx)
                .map_err(within(NAME, "complete")),
            3 => encoding::string::merge(wire_type, &mut self.next_page_token, buf, ctx)
                .map_err(within(NAME, "next_page_token")),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        jobs_len(&self.encoded, &self.jobs)
            + if self.complete {
                encoding::bool::encoded_len(2, &self.complete)
            } else {
                0
            }
            + if self.next_page_token.is_empty() {
                0
            } else {
                encoding::string::encoded_len(3, &self.next_page_token)
            }
    }

    fn clear(&mut self) {
        *self = GetResponse::default();
    }
}

impl Message for WatchResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encode_jobs(&self.encoded, &self.jobs, buf);
        if self.done != 0 {
            encoding::uint32::encode(2, &self.done, buf);
        }
        if self.total != 0 {
            encoding::uint32::encode(3, &self.total, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        const NAME: &str = "WatchResponse";
        match tag {
            1 => encoding::message::merge_repeated(wire_type, &mut self.jobs, buf, ctx)
                .map_err(within(NAME, "jobs")),
            2 => encoding::uint32::merge(wire_type, &mut self.done, buf, ctx)
                .map_err(within(NAME, "done")),
            3 => encoding::uint32::merge(wire_type, &mut self.total, buf, ctx)
                .map_err(within(NAME, "total")),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        jobs_len(&self.encoded, &self.jobs)
            + if self.done == 0 {
                0
            } else {
                encoding::uint32::encoded_len(2, &self.done)
            }
            + if self.total == 0 {
                0
            } else {
                encoding::uint32::encoded_len(3, &self.total)
            }
    }

    fn clear(&mut self) {
        *self = WatchResponse::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    /// The messages as prost's derive would generate them from the
    /// protocol: the reference the hand-written ones are checked against.
    mod generated {
        use crate::pb::JobInfo;

        #[derive(Clone, PartialEq, ::prost::Message)]
        pub(super) struct GetResponse {
            #[prost(message, repeated, tag = "1")]
            pub(super) jobs: Vec<JobInfo>,
            #[prost(bool, tag = "2")]
            pub(super) complete: bool,
            #[prost(string, tag = "3")]
            pub(super) next_page_token: String,
        }

        #[derive(Clone, PartialEq, ::prost::Message)]
        pub(super) struct WatchResponse {
            #[prost(message, repeated, tag = "1")]
            pub(super) jobs: Vec<JobInfo>,
            #[prost(uint32, tag = "2")]
            pub(super) done: u32,
            #[prost(uint32, tag = "3")]
            pub(super) total: u32,
        }
    }

    fn job(i: u32, arg_len: usize) -> JobInfo {
        JobInfo {
            job_id: format!("job-{i}"),
            batch_id: "batch".into(),
            index: i,
            arg: "7".repeat(arg_len),
            state: pb::JobState::Succeeded as i32,
            output: Some(pb::JobOutput {
                value: Some(pb::job_output::Value::Fib("13".into())),
            }),
            attempts: 1,
            ..Default::default()
        }
    }

    /// Lengths around every varint boundary of the length prefix, and
    /// empty bodies.
    fn jobs() -> Vec<JobInfo> {
        let mut jobs = vec![JobInfo::default()];
        for (i, len) in [0, 1, 60, 100, 110, 127, 128, 200, 16_300, 16_400, 2_100_000]
            .into_iter()
            .enumerate()
        {
            jobs.push(job(i as u32, len));
        }
        jobs
    }

    #[test]
    fn jobs_pushed_as_bytes_encode_and_decode_as_prost_does() {
        let jobs = jobs();
        for split in [0, 3, jobs.len()] {
            let mut encoded = EncodedJobs::default();
            for j in &jobs[..split] {
                let body = j.encode_to_vec();
                let took = encoded.push_with(|buf| buf.extend_from_slice(&body));
                assert_eq!(took, encoding::message::encoded_len(1, j));
            }
            let rest = jobs[split..].to_vec();
            let ours = WatchResponse {
                jobs: rest.clone(),
                done: 5,
                total: jobs.len() as u32,
                encoded: encoded.clone(),
            };
            let theirs = generated::WatchResponse {
                jobs: jobs.clone(),
                done: 5,
                total: jobs.len() as u32,
            };
            assert_eq!(
                ours.encode_to_vec(),
                theirs.encode_to_vec(),
                "split {split}"
            );
            assert_eq!(ours.encoded_len(), theirs.encoded_len());
            let read = WatchResponse::decode(&ours.encode_to_vec()[..]).unwrap();
            assert_eq!(read.jobs, jobs);
            assert!(read.encoded.is_empty());
            assert_eq!((read.done, read.total), (5, jobs.len() as u32));
            assert_eq!(encoded.decode().unwrap(), jobs[..split]);
            assert_eq!(encoded.len(), split);

            let ours = GetResponse {
                jobs: rest,
                complete: true,
                next_page_token: "12".into(),
                encoded,
            };
            let theirs = generated::GetResponse {
                jobs: jobs.clone(),
                complete: true,
                next_page_token: "12".into(),
            };
            assert_eq!(
                ours.encode_to_vec(),
                theirs.encode_to_vec(),
                "split {split}"
            );
            assert_eq!(ours.encoded_len(), theirs.encoded_len());
            let read = GetResponse::decode(&ours.encode_to_vec()[..]).unwrap();
            assert_eq!(read.jobs, jobs);
            assert!(read.complete);
            assert_eq!(read.next_page_token, "12");
        }
    }

    #[test]
    fn defaults_encode_to_nothing_and_unknown_fields_are_skipped() {
        assert!(WatchResponse::default().encode_to_vec().is_empty());
        assert!(GetResponse::default().encode_to_vec().is_empty());
        // A later field (99, a varint) is skipped, as prost does.
        let mut bytes = generated::WatchResponse {
            jobs: vec![job(1, 3)],
            done: 1,
            total: 2,
        }
        .encode_to_vec();
        encoding::uint64::encode(99, &7, &mut bytes);
        let read = WatchResponse::decode(&bytes[..]).unwrap();
        assert_eq!((read.jobs, read.done, read.total), (vec![job(1, 3)], 1, 2));
        // A damaged message is refused, naming the field.
        let err = GetResponse::decode(&[0x0a, 0x05, 0x01][..]).unwrap_err();
        assert!(err.to_string().contains("GetResponse.jobs"), "{err}");
    }

    #[test]
    fn extend_from_appends_another_buffers_jobs() {
        let mut a = EncodedJobs::default();
        a.push(&job(1, 2));
        let mut b = EncodedJobs::default();
        b.push(&job(2, 2));
        b.push(&job(3, 2));
        a.extend_from(b.as_bytes(), b.len());
        assert_eq!(a.decode().unwrap(), vec![job(1, 2), job(2, 2), job(3, 2)]);
        assert_eq!(a.len(), 3);
    }
}
