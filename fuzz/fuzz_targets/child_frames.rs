//! Fuzzes the child process's frame decoder: `child::serve` on arbitrary
//! bytes must never panic; it answers every job of every frame it reads,
//! or stops with an error.

#![no_main]

use drover_common::pb;
use drover_worker::child::{read_frame, serve};
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// Whether the frames in `data` ask only for cheap jobs (the child trusts
/// the master's limits, so F(10^18) would run for ever), and how many jobs
/// the well-formed prefix holds.
fn cheap_jobs(mut data: &[u8]) -> Option<usize> {
    let mut buf = Vec::new();
    let mut jobs = 0;
    while let Ok(true) = read_frame(&mut data, &mut buf) {
        let Ok(request) = pb::ChildRequest::decode(buf.as_slice()) else {
            break;
        };
        for j in &request.jobs {
            let cheap = match j.kind {
                1 => j.arg.parse::<u64>().map_or(true, |n| n <= 2_000),
                2 => j.arg.len() <= 30,
                _ => true,
            };
            if !cheap {
                return None;
            }
        }
        jobs += request.jobs.len();
    }
    Some(jobs)
}

fuzz_target!(|data: &[u8]| {
    let Some(jobs) = cheap_jobs(data) else {
        return;
    };
    let mut output = Vec::new();
    if serve(data, &mut output).is_ok() {
        let mut out = output.as_slice();
        let mut buf = Vec::new();
        let mut answered = 0;
        while read_frame(&mut out, &mut buf).expect("the child's own frames read back") {
            let response =
                pb::ChildResponse::decode(buf.as_slice()).expect("the child's own frames decode");
            answered += response.results.len();
        }
        assert_eq!(answered, jobs, "every job is answered once");
    }
});
