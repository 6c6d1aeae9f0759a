//! The hidden child mode: a long-lived process of the worker's own binary
//! that runs CPU jobs one at a time, fed over stdin and answering on stdout
//! with length-delimited protobuf frames (a little-endian u32 length, then a
//! `ChildRequest` or `ChildResponse`).
//!
//! A request may carry several jobs, and a response several results: the
//! child flushes its results when a request is done, or when a millisecond
//! has passed since its last flush, so the worker always knows within about
//! a millisecond which job is running (it needs that to enforce timeouts).
//!
//! Frames are bounded in bytes both ways: they aim at [`FRAME_BYTES`], and
//! only a single job or result larger than that makes one bigger, alone. A
//! result over the worker's `--max-result-bytes` (passed to the child as
//! its second argument) is replaced by a failure before it is written, so
//! no frame is ever over [`MAX_FRAME`].

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use drover_common::pb::{self, child_result::Outcome};
use drover_common::{JobArgs, Limits};
use prost::Message;

/// The argument that starts a binary in child mode.
pub const CHILD_ARG: &str = "__drover_child";

/// The largest frame either side accepts. A frame over [`FRAME_BYTES`]
/// holds one job or one result: a job's argument came in a message under
/// the worker's message limit, and a result is at most `--max-result-bytes`,
/// itself at most half of that limit.
pub const MAX_FRAME: usize = drover_common::net::MAX_MESSAGE_BYTES + 1024 * 1024;

/// The bytes of jobs or results a frame aims at; more only when a single
/// one is larger.
pub const FRAME_BYTES: usize = 1024 * 1024;

/// How long a child may hold finished results before it sends them.
const FLUSH_EVERY: Duration = Duration::from_millis(1);

/// Runs child mode and exits if this process was started as a child; else
/// returns at once. Call it first thing in `main`, before any runtime starts.
pub fn run_if_child() {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == CHILD_ARG) {
        // The pool passes the worker's --max-result-bytes; a child started
        // without it has the default.
        let max_result_bytes = args
            .next()
            .and_then(|a| a.to_str()?.parse().ok())
            .unwrap_or(crate::DEFAULT_MAX_RESULT_BYTES);
        // Frames go to a plain file on fd 1, not through `Stdout`: its
        // line buffering wrote a frame in as many pieces as it held
        // newline bytes, a system call each.
        let output = match io::stdout().as_fd().try_clone_to_owned() {
            Ok(fd) => std::fs::File::from(fd),
            Err(e) => {
                eprintln!(
                    "drover child {}: cannot use stdout: {e}",
                    std::process::id()
                );
                std::process::exit(2);
            }
        };
        let code = match serve_with(io::stdin().lock(), output, max_result_bytes) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("drover child {}: {e}", std::process::id());
                2
            }
        };
        std::process::exit(code);
    }
}

/// Serves requests from `input` until it closes, with the default
/// `--max-result-bytes`.
pub fn serve(input: impl Read, output: impl Write) -> io::Result<()> {
    serve_with(input, output, crate::DEFAULT_MAX_RESULT_BYTES)
}

/// Serves requests from `input` until it closes; a result over
/// `max_result_bytes` is answered as a failure.
pub fn serve_with(input: impl Read, output: impl Write, max_result_bytes: usize) -> io::Result<()> {
    let mut input = BufReader::with_capacity(64 * 1024, input);
    let mut responses = Responses::new(
        BufWriter::with_capacity(64 * 1024, output),
        FRAME_BYTES,
        FLUSH_EVERY,
    );
    let mut frame = Vec::new();
    // Limits were checked by the master; the child parses with none so that
    // a master with raised limits needs no worker flag.
    let limits = Limits::unchecked();
    while read_frame(&mut input, &mut frame)? {
        let request = pb::ChildRequest::decode(frame.as_slice()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad request frame: {e}"),
            )
        })?;
        responses.last_flush = Instant::now();
        for job in request.jobs {
            let started = Instant::now();
            let outcome = limit_result(run_job(job.kind, &job.arg, &limits), max_result_bytes);
            responses.push(pb::ChildResult {
                slot_id: job.slot_id,
                outcome: Some(outcome),
                run_us: started.elapsed().as_micros() as u64,
            })?;
        }
        responses.flush()?;
    }
    Ok(())
}

/// The child's output: results gathered into frames of about
/// `frame_bytes`, sent on when `flush_every` has passed since the last time
/// and when a request is done.
struct Responses<W: Write> {
    output: W,
    /// The next frame.
    pending: pb::ChildResponse,
    /// Its size as encoded.
    pending_bytes: usize,
    /// When results were last sent on.
    last_flush: Instant,
    frame_bytes: usize,
    flush_every: Duration,
}

impl<W: Write> Responses<W> {
    fn new(output: W, frame_bytes: usize, flush_every: Duration) -> Responses<W> {
        Responses {
            output,
            pending: pb::ChildResponse::default(),
            pending_bytes: 0,
            last_flush: Instant::now(),
            frame_bytes,
            flush_every,
        }
    }

    /// Adds a result; one that would take the frame over its size goes in
    /// the next frame.
    fn push(&mut self, result: pb::ChildResult) -> io::Result<()> {
        let bytes = repeated_len(&result);
        if !self.pending.results.is_empty() && self.pending_bytes + bytes > self.frame_bytes {
            self.write()?;
        }
        self.pending.results.push(result);
        self.pending_bytes += bytes;
        if self.last_flush.elapsed() >= self.flush_every {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the pending results, if any, as one frame.
    fn write(&mut self) -> io::Result<()> {
        if !self.pending.results.is_empty() {
            write_frame(&mut self.output, &self.pending)?;
            self.pending.results.clear();
            self.pending_bytes = 0;
        }
        Ok(())
    }

    /// Writes the pending results and sends everything written on.
    fn flush(&mut self) -> io::Result<()> {
        self.write()?;
        self.output.flush()?;
        self.last_flush = Instant::now();
        Ok(())
    }
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
        Ok(JobArgs::Python) => Outcome::Failure(pb::JobFailure {
            reason: "python jobs run in the worker's Python processes, not in a child".into(),
            retryable: false,
        }),
        Err(reason) => Outcome::Failure(pb::JobFailure {
            reason,
            retryable: false,
        }),
    }
}

/// Replaces an output over `max_result_bytes` (encoded) with a failure
/// that names both sizes and the flag. Not retriable: every attempt would
/// make the same result. Whoever runs the job is not at fault, so nothing
/// is killed for it.
pub fn limit_result(outcome: Outcome, max_result_bytes: usize) -> Outcome {
    match outcome {
        Outcome::Output(output) if output.encoded_len() > max_result_bytes => {
            Outcome::Failure(pb::JobFailure {
                reason: format!(
                    "result is {} bytes, over the worker's limit of {max_result_bytes} (--max-result-bytes)",
                    output.encoded_len()
                ),
                retryable: false,
            })
        }
        other => other,
    }
}

/// The bytes `item` adds to a message as one element of a repeated field
/// (a tag, a length, the item).
pub fn repeated_len(item: &impl Message) -> usize {
    let len = item.encoded_len();
    1 + prost::length_delimiter_len(len) + len
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

/// Encodes one frame into a buffer; an error if it is over [`MAX_FRAME`].
pub fn encode_frame(msg: &impl Message) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(4 + msg.encoded_len());
    write_frame(&mut out, msg)?;
    Ok(out)
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
        input.extend(
            encode_frame(&pb::ChildRequest {
                jobs: vec![
                    job(1, JobKind::Fib, "20"),
                    job(2, JobKind::Prime, "1112582705942171"),
                    job(3, JobKind::Prime, "12a"),
                ],
            })
            .unwrap(),
        );
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

    fn read_all(mut output: &[u8]) -> Vec<pb::ChildResponse> {
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        while read_frame(&mut output, &mut buf).unwrap() {
            frames.push(pb::ChildResponse::decode(buf.as_slice()).unwrap());
        }
        frames
    }

    #[test]
    fn a_result_over_the_limit_is_answered_as_a_failure_naming_the_flag() {
        let request = pb::ChildRequest {
            jobs: vec![job(1, JobKind::Fib, "20"), job(2, JobKind::Fib, "30")],
        };
        let mut output = Vec::new();
        // F(20) = 6765 encodes to 6 bytes, F(30) = 832040 to 8.
        serve_with(encode_frame(&request).unwrap().as_slice(), &mut output, 7).unwrap();
        let results: Vec<_> = read_all(&output)
            .into_iter()
            .flat_map(|f| f.results)
            .collect();
        assert!(matches!(results[0].outcome, Some(Outcome::Output(_))));
        assert_eq!(
            results[1].outcome,
            Some(Outcome::Failure(pb::JobFailure {
                reason: "result is 8 bytes, over the worker's limit of 7 (--max-result-bytes)"
                    .into(),
                retryable: false,
            }))
        );
    }

    #[test]
    fn frames_are_bounded_in_bytes_and_a_larger_result_goes_alone() {
        let result = |slot_id, digits: usize| pb::ChildResult {
            slot_id,
            outcome: Some(Outcome::Output(pb::JobOutput {
                value: Some(pb::job_output::Value::Fib("3".repeat(digits))),
            })),
            run_us: 1,
        };
        let mut output = Vec::new();
        // Never flushed by time: only the size splits frames.
        let mut responses = Responses::new(&mut output, 1000, Duration::MAX);
        for (slot_id, digits) in [(1, 300), (2, 300), (3, 300), (4, 300), (5, 4000), (6, 10)] {
            responses.push(result(slot_id, digits)).unwrap();
        }
        responses.flush().unwrap();
        let frames = read_all(&output);
        let shape: Vec<Vec<u64>> = frames
            .iter()
            .map(|f| f.results.iter().map(|r| r.slot_id).collect())
            .collect();
        assert_eq!(shape, [vec![1, 2, 3], vec![4], vec![5], vec![6]]);
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
