//! A job's store record written straight from the job, and a queued
//! job's read straight back; and a job as its client sees it, written
//! straight from it ([`Job::encode_info`]).
//!
//! Written: the same bytes as `job.record().encode_to_vec()`, without
//! building the `pb::JobRecord` first (its ids, argument, worker, errors
//! and limits copied into owned strings and vectors, about eight
//! allocations a record). The committer encodes every changed job each
//! commit, under the state's lock, so this is on the durable store's hot
//! path (bench/README.md). A test checks the bytes against prost's for
//! randomized jobs.
//!
//! Read ([`decode_bare`]): a record with none of [`JobExtra`]'s fields, as
//! a batch record holds each job it created, straight into the job; any
//! other record goes through prost. Recovery reads millions of these. A
//! test checks the jobs against prost's reading of the same bytes,
//! damaged ones too.
//!
//! A field added to `JobInfo` goes in `Job::info` (the compiler asks for
//! it) and `encode_info`; a test compares the two on random jobs.
//!
//! A field added to `JobRecord` goes in four places: `Job::record` (the
//! compiler asks for it), `encode_record`, `decode_bare` (and
//! [`LAST_FIELD`]), and the tests' generator, with random values, or the
//! tests cannot see it missing.

use prost::Message;
use prost::encoding::{
    WireType, decode_key, decode_varint, encode_key, encode_varint, encoded_len_varint, key_len,
};

use super::job::Fields;
use super::*;

/// A varint field, left out when 0 (proto3).
fn put_varint(tag: u32, value: u64, buf: &mut Vec<u8>) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

/// An `int32` field (a negative one takes ten bytes, as prost writes it),
/// left out when 0.
fn put_int32(tag: u32, value: i32, buf: &mut Vec<u8>) {
    put_varint(tag, value as i64 as u64, buf);
}

/// A `bytes` or `string` field, left out when empty.
fn put_bytes(tag: u32, value: &[u8], buf: &mut Vec<u8>) {
    if !value.is_empty() {
        put_len_delimited(tag, value, buf);
    }
}

/// A length-delimited field, written even when empty (a repeated string or
/// an embedded message).
fn put_len_delimited(tag: u32, value: &[u8], buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.extend_from_slice(value);
}

impl Job {
    /// Appends the job's store record to `buf`, as
    /// `self.record().encode_to_vec()` would write it.
    pub(super) fn encode_record(&self, buf: &mut Vec<u8>) {
        let x = self.x();
        put_bytes(1, self.id.as_bytes(), buf);
        put_bytes(2, self.batch.as_bytes(), buf);
        put_varint(3, self.index.into(), buf);
        put_int32(4, self.kind as i32, buf);
        put_bytes(5, self.arg.as_bytes(), buf);
        put_int32(6, self.priority, buf);
        put_varint(7, self.timeout_ms, buf);
        put_varint(8, self.max_attempts.into(), buf);
        put_int32(9, self.state as i32, buf);
        put_varint(10, self.attempts.into(), buf);
        put_varint(11, self.seq, buf);
        put_bytes(12, x.worker.as_deref().unwrap_or_default().as_bytes(), buf);
        if let Some(output) = &x.output {
            encode_key(13, WireType::LengthDelimited, buf);
            encode_varint(output.encoded_len() as u64, buf);
            output.encode_raw(buf);
        }
        put_bytes(14, x.error.as_deref().unwrap_or_default().as_bytes(), buf);
        for e in &x.attempt_errors {
            put_len_delimited(15, e.as_bytes(), buf);
        }
        put_varint(16, x.run_us, buf);
        put_varint(17, x.finished_at_ms, buf);
        put_varint(18, self.not_before_ms, buf);
        put_bytes(
            19,
            x.idempotency_key.as_deref().unwrap_or_default().as_bytes(),
            buf,
        );
        put_varint(20, u64::from(self.state == JobState::Running), buf);
        // `optional` fields: written even when 0.
        encode_key(21, WireType::Varint, buf);
        encode_varint(self.counted.into(), buf);
        encode_key(22, WireType::Varint, buf);
        encode_varint(self.allowance.into(), buf);
        put_limits(23, &x.limits, buf);
        put_varint(24, x.started_at_ms, buf);
    }
}

impl Job {
    /// Appends the job as a client sees it, read at place `index` of a
    /// batch: the bytes of `self.info_at(index).encode_to_vec()`, written
    /// without building the message (its ids formatted into strings, its
    /// argument, worker, output and errors copied). Every finished job
    /// reaches its client this way, through `Get` and `Watch` (see
    /// `drover_common::pages`).
    pub(crate) fn encode_info(&self, index: u32, buf: &mut Vec<u8>) {
        let x = self.x();
        let mut text = uuid::Uuid::encode_buffer();
        put_bytes(
            1,
            self.id
                .uuid()
                .hyphenated()
                .encode_lower(&mut text)
                .as_bytes(),
            buf,
        );
        put_bytes(
            2,
            self.batch
                .uuid()
                .hyphenated()
                .encode_lower(&mut text)
                .as_bytes(),
            buf,
        );
        put_varint(3, index.into(), buf);
        put_int32(4, self.kind as i32, buf);
        put_bytes(5, self.arg.as_bytes(), buf);
        put_int32(6, self.state as i32, buf);
        put_int32(7, self.priority, buf);
        put_varint(8, self.attempts.into(), buf);
        put_varint(9, self.allowance.into(), buf);
        if let Some(output) = &x.output {
            encode_key(10, WireType::LengthDelimited, buf);
            encode_varint(output.encoded_len() as u64, buf);
            output.encode_raw(buf);
        }
        put_bytes(11, x.error.as_deref().unwrap_or_default().as_bytes(), buf);
        put_bytes(12, x.worker.as_deref().unwrap_or_default().as_bytes(), buf);
        for e in &x.attempt_errors {
            put_len_delimited(13, e.as_bytes(), buf);
        }
        put_varint(14, x.run_us, buf);
        put_varint(15, self.counted.into(), buf);
        put_limits(16, &x.limits, buf);
        put_varint(17, x.started_at_ms, buf);
        put_varint(18, x.finished_at_ms, buf);
    }
}

/// A job's limits as repeated `JobLimit` messages (name 1, permits 2),
/// each written even when empty.
fn put_limits(tag: u32, limits: &[(Arc<str>, u32)], buf: &mut Vec<u8>) {
    for (name, permits) in limits {
        let len = if name.is_empty() {
            0
        } else {
            key_len(1) + encoded_len_varint(name.len() as u64) + name.len()
        } + if *permits == 0 {
            0
        } else {
            key_len(2) + encoded_len_varint((*permits).into())
        };
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(len as u64, buf);
        put_bytes(1, name.as_bytes(), buf);
        put_varint(2, (*permits).into(), buf);
    }
}

/// `JobRecord`'s highest field number: [`decode_bare`] skips a field above
/// it as one it does not know, as prost does.
const LAST_FIELD: u32 = 24;

/// `JobRecord` destructured without `..`: a field added to it stops the
/// build here, so whoever adds one also raises [`LAST_FIELD`] and teaches
/// [`decode_bare`], the encoder and the tests' generator (else recovery
/// would skip the new field of every queued job as unknown).
const _: fn(pb::JobRecord) = |record| {
    let pb::JobRecord {
        id: _,
        batch: _,
        index: _,
        kind: _,
        arg: _,
        priority: _,
        timeout_ms: _,
        max_attempts: _,
        state: _,
        attempts: _,
        seq: _,
        worker: _,
        output: _,
        error: _,
        attempt_errors: _,
        run_us: _,
        finished_at_ms: _,
        not_before_ms: _,
        idempotency_key: _,
        running: _,
        counted: _,
        allowance: _,
        limits: _,
        started_at_ms: _, // field 24: LAST_FIELD
    } = record;
};

/// Reads a job's store record straight into a job, with whether it was
/// running (`JobRecord.running`), as `Job::from_record` of prost's
/// decoding would: one allocation, the argument, where prost made a
/// message and an allocation per string and bytes field. Only for a
/// record with none of [`JobExtra`]'s fields, as the batch record holds
/// a queued job's (recovery reads millions of them, bench/README.md):
/// `None` for one with any of them, and for anything unusual (a wire type
/// or value prost would refuse, a group, a bad id), which the caller then
/// decodes with prost, getting prost's answer and error.
pub(super) fn decode_bare(mut buf: &[u8]) -> Option<(Job, bool)> {
    let mut f = Fields::default();
    let mut arg = "";
    let mut running = false;
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf).ok()?;
        match wire_type {
            WireType::Varint => {
                let v = decode_varint(&mut buf).ok()?;
                // As prost converts them: truncated to the field's width.
                match tag {
                    3 => f.index = v as u32,
                    4 => f.kind = v as i32,
                    6 => f.priority = v as i32,
                    7 => f.timeout_ms = v,
                    8 => f.max_attempts = v as u32,
                    9 => f.state = v as i32,
                    10 => f.attempts = v as u32,
                    11 => f.seq = v,
                    18 => f.not_before_ms = v,
                    20 => running = v != 0,
                    21 => f.counted = Some(v as u32),
                    22 => f.allowance = Some(v as u32),
                    // JobExtra's, and varints where prost wants bytes.
                    _ if tag <= LAST_FIELD => return None,
                    _ => {}
                }
            }
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                if len > buf.len() {
                    return None;
                }
                let (value, rest) = buf.split_at(len);
                buf = rest;
                match tag {
                    1 => f.id = value,
                    2 => f.batch = value,
                    // Each one must be UTF-8, as prost checks each.
                    5 => arg = std::str::from_utf8(value).ok()?,
                    _ if tag <= LAST_FIELD => return None,
                    _ => {}
                }
            }
            WireType::SixtyFourBit if tag > LAST_FIELD && buf.len() >= 8 => buf = &buf[8..],
            WireType::ThirtyTwoBit if tag > LAST_FIELD && buf.len() >= 4 => buf = &buf[4..],
            _ => return None,
        }
    }
    let job = Job::from_fields(&f, arg.into()).ok()?;
    Some((job, running))
}

/// Encodes a batch's record with the records of the jobs it created (those
/// of `jobs` that `created` says to include), as `encode_batch` would with
/// their `pb::JobRecord`s. `scratch` is reused between records.
pub(super) fn encode_batch_of<'a>(
    ids: &[JobId],
    created: impl Iterator<Item = &'a Job>,
    request_id: &str,
    scratch: &mut Vec<u8>,
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(ids.len() * (16 + 64) + 16);
    if !ids.is_empty() {
        encode_key(1, WireType::LengthDelimited, &mut buf);
        encode_varint((ids.len() * 16) as u64, &mut buf);
        for id in ids {
            buf.extend_from_slice(id.as_bytes());
        }
    }
    for job in created {
        scratch.clear();
        job.encode_record(scratch);
        put_len_delimited(2, scratch, &mut buf);
    }
    put_bytes(3, request_id.as_bytes(), &mut buf);
    buf
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::encode_batch;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn text(rng: &mut StdRng, max: usize) -> String {
        let n = rng.random_range(0..=max);
        (0..n)
            .map(|_| match rng.random_range(0..4) {
                0 => 'é',
                1 => '"',
                _ => char::from(rng.random_range(b'a'..=b'z')),
            })
            .collect()
    }

    /// Small values most of the time (0 is left out, so it must be hit),
    /// sometimes any.
    fn num(rng: &mut StdRng) -> u64 {
        match rng.random_range(0..4) {
            0 => 0,
            1 => rng.random_range(1..200),
            2 => rng.random(),
            _ => rng.random_range(0..1 << 40),
        }
    }

    fn output(rng: &mut StdRng) -> Option<pb::JobOutput> {
        use pb::job_output::Value;
        let value = match rng.random_range(0..6) {
            0 => return None,
            1 => Value::Fib(text(rng, 40)),
            2 => Value::SleptMs(num(rng)),
            3 => Value::Json(text(rng, 300)),
            4 => Value::Prime(pb::PrimeOutput {
                is_prime: rng.random(),
                certainty: rng.random_range(0..3),
            }),
            _ => return Some(pb::JobOutput { value: None }),
        };
        Some(pb::JobOutput { value: Some(value) })
    }

    /// A job with every field random.
    pub(in crate::state) fn job(rng: &mut StdRng) -> Job {
        let kinds = [
            JobKind::Unspecified,
            JobKind::Fib,
            JobKind::Sleep,
            JobKind::Python,
            JobKind::Prime,
        ];
        let states = [
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
        ];
        let extra = rng.random_bool(0.7).then(|| {
            Box::new(JobExtra {
                worker: rng
                    .random_bool(0.5)
                    .then(|| Arc::from(text(rng, 20).as_str())),
                output: output(rng),
                error: rng.random_bool(0.5).then(|| text(rng, 200)),
                attempt_errors: (0..rng.random_range(0..3)).map(|_| text(rng, 30)).collect(),
                run_us: num(rng),
                finished_at_ms: num(rng),
                idempotency_key: rng.random_bool(0.3).then(|| text(rng, 20).into_boxed_str()),
                limits: (0..rng.random_range(0..3))
                    .map(|_| (Arc::from(text(rng, 12).as_str()), num(rng) as u32))
                    .collect(),
                started_at_ms: num(rng),
            })
        });
        Job {
            id: JobId::new(),
            batch: BatchId::new(),
            arg: text(rng, 50).into_boxed_str(),
            seq: num(rng),
            timeout_ms: num(rng),
            not_before_ms: num(rng),
            session: None,
            extra,
            index: num(rng) as u32,
            priority: match rng.random_range(0..3) {
                0 => 0,
                1 => -(rng.random_range(1..1000)),
                _ => rng.random(),
            },
            max_attempts: num(rng) as u32,
            allowance: num(rng) as u32,
            attempts: num(rng) as u32,
            counted: num(rng) as u32,
            kind: kinds[rng.random_range(0..kinds.len())],
            state: states[rng.random_range(0..states.len())],
            dirty: false,
            record_len: 0,
        }
    }

    #[test]
    fn a_record_encoded_from_the_job_is_prosts_encoding_of_its_record() {
        let mut rng = StdRng::seed_from_u64(0x6a0b);
        for _ in 0..20_000 {
            let job = job(&mut rng);
            let mut buf = Vec::new();
            job.encode_record(&mut buf);
            assert_eq!(buf, job.record().encode_to_vec(), "{job:?}");
        }
    }

    #[test]
    fn a_job_encoded_for_a_client_is_prosts_encoding_of_its_info() {
        let mut rng = StdRng::seed_from_u64(0x1f0e);
        for _ in 0..20_000 {
            let job = job(&mut rng);
            let index = num(&mut rng) as u32;
            let mut buf = Vec::new();
            job.encode_info(index, &mut buf);
            assert_eq!(buf, job.info_at(index as usize).encode_to_vec(), "{job:?}");
        }
    }

    /// A job read straight from its record, as prost's decoding of it
    /// gives it to `Job::from_record`.
    fn prosts(bytes: &[u8]) -> Option<(Job, bool)> {
        let r = pb::JobRecord::decode(bytes).ok()?;
        let running = r.running;
        Some((Job::from_record(r).ok()?, running))
    }

    #[test]
    fn a_bare_record_read_straight_is_the_job_prost_reads() {
        let mut rng = StdRng::seed_from_u64(0x4e05);
        let mut read = 0;
        for round in 0..40_000 {
            let mut job = job(&mut rng);
            if round % 2 == 0 {
                job.extra = None;
            }
            let mut bytes = Vec::new();
            job.encode_record(&mut bytes);
            // What prost also takes: a field it does not know, and one
            // given again (the last one wins).
            if round % 3 == 1 {
                encode_key(25 + round % 7, WireType::Varint, &mut bytes);
                encode_varint(num(&mut rng), &mut bytes);
            }
            if round % 5 == 2 {
                put_int32(6, rng.random(), &mut bytes);
                put_bytes(5, b"again", &mut bytes);
            }
            // And damage, which either reads as prost reads it, or is
            // left to prost.
            if round % 4 == 3 && !bytes.is_empty() {
                let at = rng.random_range(0..bytes.len());
                bytes[at] = rng.random();
            }
            let Some((got, running)) = decode_bare(&bytes) else {
                // Only a job with extra fields, or damage, is left to prost.
                assert!(job.extra.is_some() || round % 4 == 3, "{job:?}");
                continue;
            };
            let (want, want_running) = prosts(&bytes).unwrap_or_else(|| {
                let prost = pb::JobRecord::decode(bytes.as_slice());
                panic!("read straight, not by prost ({prost:?}): {bytes:?}")
            });
            assert_eq!(got.record(), want.record());
            assert_eq!(running, want_running);
            assert!(got.extra.is_none() && want.extra.is_none());
            read += 1;
        }
        assert!(read > 15_000, "{read}");
    }

    #[test]
    fn a_batch_read_with_its_records_left_encoded_is_what_prost_reads() {
        use crate::store::decode_batch;
        let mut rng = StdRng::seed_from_u64(0xdec0);
        for round in 0..500 {
            let jobs: Vec<Job> = (0..rng.random_range(0..20))
                .map(|_| job(&mut rng))
                .collect();
            let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
            let closed = rng.random_bool(0.3);
            let mut bytes = pb::BatchRecord {
                job_ids: ids.iter().flat_map(|id| *id.as_bytes()).collect(),
                created: if closed {
                    Vec::new()
                } else {
                    jobs.iter().map(Job::record).collect()
                },
                request_id: text(&mut rng, 10),
                closed_at_ms: if closed { num(&mut rng) } else { 0 },
                finished: (0..rng.random_range(0..4u32))
                    .flat_map(u32::to_le_bytes)
                    .collect(),
            }
            .encode_to_vec();
            // What prost also accepts: a field it does not know, and a
            // field given again (the last one wins).
            if round % 3 == 1 {
                encode_key(9, WireType::Varint, &mut bytes);
                encode_varint(num(&mut rng), &mut bytes);
            }
            if round % 5 == 2 {
                put_len_delimited(3, b"again", &mut bytes);
            }
            let want = pb::BatchRecord::decode(bytes.as_slice()).unwrap();
            let (got_ids, created, request_id) = decode_batch(&bytes).unwrap();
            let want_ids: Vec<u8> = got_ids.iter().flat_map(|id| *id.as_bytes()).collect();
            assert_eq!(want_ids, want.job_ids);
            assert_eq!(created.len(), want.created.len());
            assert_eq!(created.decode().unwrap(), want.created);
            let own: Vec<JobId> = want
                .created
                .iter()
                .filter_map(|r| JobId::from_slice(&r.id))
                .collect();
            assert_eq!(created.ids().unwrap(), own);
            assert_eq!(request_id, want.request_id);
        }
        // What prost refuses, so does this.
        let refused: [&[u8]; 6] = [
            &[0x0a, 0x05, 1, 2],
            &[0x08, 1],
            &[0x1a, 1, 0xff],
            &[0x22, 0],
            &[0x28, 1],
            // A request id twice, the first not UTF-8: prost checks every copy.
            &[0x1a, 1, 0xff, 0x1a, 2, b'o', b'k'],
        ];
        for bad in refused {
            assert!(pb::BatchRecord::decode(bad).is_err());
            assert!(decode_batch(bad).is_err(), "{bad:?}");
        }
        // And a job list that is not whole ids, as before.
        assert!(decode_batch(&[0x0a, 0x01, 7]).is_err());
    }

    #[test]
    fn a_batch_encoded_from_its_jobs_is_prosts_encoding_of_its_record() {
        let mut rng = StdRng::seed_from_u64(0xba7c);
        let mut scratch = Vec::new();
        for _ in 0..500 {
            let jobs: Vec<Job> = (0..rng.random_range(0..20))
                .map(|_| job(&mut rng))
                .collect();
            let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
            // Some jobs of a batch were created by another (named by key).
            let created: Vec<&Job> = jobs.iter().filter(|_| rng.random_bool(0.8)).collect();
            let request_id = text(&mut rng, 10);
            let ours = encode_batch_of(&ids, created.iter().copied(), &request_id, &mut scratch);
            let prosts = encode_batch(
                &ids,
                created.iter().map(|j| j.record()).collect(),
                &request_id,
            );
            assert_eq!(ours, prosts);
        }
    }
}
