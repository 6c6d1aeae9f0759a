//! The hidden child mode: a long-lived process of the worker's own binary
//! that runs CPU jobs one at a time, fed over stdin and answering on stdout
//! with length-delimited protobuf frames (a little-endian u32 length, then a
//! `ChildRequest` or `ChildResponse`).
//!
//! A request may carry several jobs, and a response several results: the
//! child flushes its results when a request is done, or when a millisecond
//! has passed since its last flush, so the worker always knows within about
//! a millisecond which job is running (it needs that to enforce timeouts).

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::time::{Duration, Instant};

use drover_common::pb::{self, child_result::Outcome};
use drover_common::{JobArgs, Limits};
use prost::Message;

/// The argument that starts a binary in child mode.
pub const CHILD_ARG: &str = "__drover_child";

/// The largest frame either side accepts: a result holding F(10^7) is about
/// 2 MB; a request never carries more than a few jobs' arguments.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// How long a child may hold finished results before it sends them.
const FLUSH_EVERY: Duration = Duration::from_millis(1);

/// Runs child mode and exits if this process was started as a child; else
/// returns at once. Call it first thing in `main`, before any runtime starts.
pub fn run_if_child() {
    if std::env::args_os().nth(1).is_some_and(|a| a == CHILD_ARG) {
        let code = match serve(io::stdin().lock(), io::stdout().lock()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("drover child {}: {e}", std::process::id());
                2
            }
        };
        std::process::exit(code);
    }
}

/// Serves requests from `input` until it closes.
pub fn serve(input: impl Read, output: impl Write) -> io::Result<()> {
    let mut input = BufReader::with_capacity(64 * 1024, input);
    let mut output = BufWriter::with_capacity(64 * 1024, output);
    let mut frame = Vec::new();
    // Limits were checked by the master; the child parses with none so that
    // a master with raised limits needs no worker flag.
    let limits = Limits {
        max_fib_n: u64::MAX,
        max_prime_digits: usize::MAX,
        max_sleep_ms: u64::MAX,
        max_batch_jobs: usize::MAX,
    };
    while read_frame(&mut input, &mut frame)? {
        let request = pb::ChildRequest::decode(frame.as_slice()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad request frame: {e}"),
            )
        })?;
        let mut pending = pb::ChildResponse::default();
        let mut last_flush = Instant::now();
        for job in request.jobs {
            let started = Instant::now();
            let outcome = run_job(job.kind, &job.arg, &limits);
            pending.results.push(pb::ChildResult {
                slot_id: job.slot_id,
                outcome: Some(outcome),
                run_us: started.elapsed().as_micros() as u64,
            });
            if last_flush.elapsed() >= FLUSH_EVERY {
                write_frame(&mut output, &pending)?;
                output.flush()?;
                pending.results.clear();
                last_flush = Instant::now();
            }
        }
        if !pending.results.is_empty() {
            write_frame(&mut output, &pending)?;
        }
        output.flush()?;
    }
    Ok(())
}

/// Runs one CPU job.
pub fn run_job(kind: i32, arg: &str, limits: &Limits) -> Outcome {
    match JobArgs::parse(kind, arg, limits) {
        Ok(JobArgs::Fib(n)) => Outcome::Output(pb::JobOutput {
            value: Some(pb::job_output::Value::Fib(crate::kinds::fib::fib_decimal(
                n,
            ))),
        }),
        Ok(JobArgs::Prime(n)) => {
            let (is_prime, certainty) = crate::kinds::prime::is_prime_decimal(&n);
            Outcome::Output(pb::JobOutput {
                value: Some(pb::job_output::Value::Prime(pb::PrimeOutput {
                    is_prime,
                    certainty: certainty as i32,
                })),
            })
        }
        Ok(JobArgs::Sleep(_)) => Outcome::Failure(pb::JobFailure {
            reason: "sleep jobs run on the worker's async slots, not in a child".into(),
            retryable: false,
        }),
        Err(reason) => Outcome::Failure(pb::JobFailure {
            reason,
            retryable: false,
        }),
    }
}

/// Reads one frame into `buf`; false at a clean end of input.
pub fn read_frame(input: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit of {MAX_FRAME}"),
        ));
    }
    buf.resize(len, 0);
    input.read_exact(buf)?;
    Ok(true)
}

/// Writes one frame.
pub fn write_frame(output: &mut impl Write, msg: &impl Message) -> io::Result<()> {
    let len = msg.encoded_len();
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit of {MAX_FRAME}"),
        ));
    }
    output.write_all(&(len as u32).to_le_bytes())?;
    output.write_all(&msg.encode_to_vec())
}

/// Encodes one frame into a buffer.
pub fn encode_frame(msg: &impl Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + msg.encoded_len());
    let _ = write_frame(&mut out, msg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_common::pb::JobKind;

    fn job(slot_id: u64, kind: JobKind, arg: &str) -> pb::ChildJob {
        pb::ChildJob {
            slot_id,
            kind: kind as i32,
            arg: arg.into(),
        }
    }

    #[test]
    fn serves_a_batch_and_answers_every_job() {
        let mut input = Vec::new();
        input.extend(encode_frame(&pb::ChildRequest {
            jobs: vec![
                job(1, JobKind::Fib, "20"),
                job(2, JobKind::Prime, "1112582705942171"),
                job(3, JobKind::Prime, "12a"),
            ],
        }));
        let mut output = Vec::new();
        serve(input.as_slice(), &mut output).unwrap();
        let mut reader = output.as_slice();
        let mut buf = Vec::new();
        let mut results = Vec::new();
        while read_frame(&mut reader, &mut buf).unwrap() {
            results.extend(pb::ChildResponse::decode(buf.as_slice()).unwrap().results);
        }
        assert_eq!(results.len(), 3);
        assert_eq!(
            results[0].outcome,
            Some(Outcome::Output(pb::JobOutput {
                value: Some(pb::job_output::Value::Fib("6765".into()))
            }))
        );
        match &results[1].outcome {
            Some(Outcome::Output(pb::JobOutput {
                value: Some(pb::job_output::Value::Prime(p)),
            })) => assert!(p.is_prime),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(&results[2].outcome, Some(Outcome::Failure(f)) if !f.retryable));
    }

    #[test]
    fn refuses_oversized_and_garbage_frames() {
        let mut input = Vec::new();
        input.extend(((MAX_FRAME + 1) as u32).to_le_bytes());
        let err = serve(input.as_slice(), Vec::new()).unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");
        let mut input = 3u32.to_le_bytes().to_vec();
        input.extend([0xff, 0xff, 0xff]);
        assert!(serve(input.as_slice(), Vec::new()).is_err());
    }
}
