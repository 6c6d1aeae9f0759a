//! `drover demo`: the lessons of the Python multiprocessing notes, run on a
//! master and a worker embedded in this process, on free loopback ports.
//!
//! The embedded master and worker are the same libraries the daemons run,
//! and the worker's children are processes of this binary in child mode.

use std::time::{Duration, Instant};

use drover_common::pb::{JobKind, job_output};
use tokio_util::sync::CancellationToken;

use crate::client::{Client, JobOptions};

/// The numbers of the notes' `ProcessPoolExecutor` lesson.
const PRIMES: [&str; 6] = [
    "1112272535095293",
    "1112582705942171",
    "1112272535095291",
    "1115280095190773",
    "1115797848077099",
    "11099726899285419",
];

/// Runs the demo; the exit code is 0 when every lesson gave its answer.
pub(crate) async fn run(processes: Option<usize>) -> anyhow::Result<i32> {
    let shutdown = CancellationToken::new();
    let (listener, addr) = drover_master::bind("127.0.0.1:0").await?;
    let config = drover_master::Config::default();
    let store = drover_master::open_store(&config.store)?;
    let master = tokio::spawn(drover_master::run(
        config,
        store,
        listener,
        shutdown.child_token(),
    ));
    let url = format!("http://{addr}");
    let worker_args = drover_worker::WorkerArgs {
        master: url.clone(),
        processes,
        io_slots: 1024,
        name: Some("demo-worker".into()),
        host: None,
        prefetch: drover_worker::DEFAULT_PREFETCH,
        max_jobs_per_child: 0,
        python: None,
        python_modules: Vec::new(),
        python_processes: None,
        max_result_bytes: drover_worker::DEFAULT_MAX_RESULT_BYTES,
        grace: Duration::from_secs(5),
        client: drover_common::net::ClientArgs::default(),
        metrics_listen: Some("off".into()),
    };
    let worker_config = worker_args.config()?;
    let procs = worker_config.processes;
    let worker_stop = shutdown.child_token();
    let worker = tokio::spawn(drover_worker::run(worker_config, worker_stop.clone()));
    println!("drover demo: master on {addr}, one worker with {procs} child processes\n");

    let result = lessons(&url).await;
    worker_stop.cancel();
    let _ = worker.await;
    shutdown.cancel();
    let _ = master.await;
    result
}

async fn lessons(url: &str) -> anyhow::Result<i32> {
    let client = Client::connect(&[url.to_string()], &Default::default()).await?;
    let opts = JobOptions::default();

    println!("1. Pool.map(fib, range(2, 21)) -> drover map fib 2..=20, in order:");
    let batch = client
        .submit(
            JobKind::Fib,
            (2..=20).map(|n| n.to_string()).collect(),
            0,
            &opts,
        )
        .await?;
    let mut fibs = Vec::new();
    client
        .watch(&batch.batch_id, true, |jobs, _, _| {
            for j in jobs {
                fibs.push(match j.output.as_ref().and_then(|o| o.value.as_ref()) {
                    Some(job_output::Value::Fib(v)) => v.clone(),
                    _ => format!("<{}>", crate::output::result_text(j)),
                });
            }
        })
        .await?;
    println!("   [{}]\n", fibs.join(", "));

    println!("2. ProcessPoolExecutor.map(is_prime, PRIMES) -> drover map prime ...:");
    let batch = client
        .submit(
            JobKind::Prime,
            PRIMES.iter().map(|s| s.to_string()).collect(),
            0,
            &opts,
        )
        .await?;
    client
        .watch(&batch.batch_id, true, |jobs, _, _| {
            for j in jobs {
                println!("   {} is prime: {}", j.arg, crate::output::result_text(j));
            }
        })
        .await?;
    println!();

    println!("3. apply (one at a time) versus apply_async (all at once): 8 sleep jobs of 500 ms");
    let started = Instant::now();
    for _ in 0..8 {
        let b = client
            .submit(JobKind::Sleep, vec!["500".into()], 0, &opts)
            .await?;
        client.get(vec![], Some(b.batch_id), true, None).await?;
    }
    let sync_wall = started.elapsed();
    let started = Instant::now();
    let b = client
        .submit(JobKind::Sleep, vec!["500".to_string(); 8], 0, &opts)
        .await?;
    let got = client.get(vec![], Some(b.batch_id), true, None).await?;
    let async_wall = started.elapsed();
    println!(
        "   apply, one after another: {:.2} s\n   submit, then get --wait:  {:.2} s ({} jobs, {:.1}x faster)\n",
        sync_wall.as_secs_f64(),
        async_wall.as_secs_f64(),
        got.jobs.len(),
        sync_wall.as_secs_f64() / async_wall.as_secs_f64()
    );

    println!(
        "4. as_completed / imap_unordered -> drover watch: sleeps of different lengths, in the order they finish"
    );
    let lengths = [800u64, 100, 700, 200, 600, 300, 500, 400];
    let b = client
        .submit(
            JobKind::Sleep,
            lengths.iter().map(|ms| ms.to_string()).collect(),
            0,
            &opts,
        )
        .await?;
    let started = Instant::now();
    client
        .watch(&b.batch_id, false, |jobs, done, total| {
            for j in jobs {
                println!(
                    "   [{done}/{total}] at {:>4} ms: job {} ({} ms) done",
                    started.elapsed().as_millis(),
                    j.index,
                    j.arg
                );
            }
        })
        .await?;
    println!(
        "\nThe same commands run against a real master: drover-master, drover-worker, drover map/submit/watch."
    );
    Ok(0)
}
