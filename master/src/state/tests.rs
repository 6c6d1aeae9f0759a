use super::*;
use prost::Message;

/// Delivers what a change produced to the sessions' outboxes at once, as
/// the service does once the commit is done.
trait SendNow {
    fn send(self, committed: Option<()>);
}

impl SendNow for Outgoing {
    fn send(self, _committed: Option<()>) {
        for (outbox, msg) in self.messages {
            let _ = outbox.send((self.ticket, msg));
        }
    }
}

fn settings(max_attempts: u32) -> Settings {
    Settings {
        limits: Limits::default(),
        default_max_attempts: max_attempts,
        retry: RetryPolicy {
            base_ms: 0,
            max_ms: 0,
        },
        retention_ms: 3_600_000,
        durable: false,
    }
}

fn spec(kind: JobKind, arg: &str, priority: i32) -> pb::JobSpec {
    pb::JobSpec {
        kind: kind as i32,
        arg: arg.into(),
        priority,
        ..Default::default()
    }
}

fn hello(name: &str) -> pb::Hello {
    pb::Hello {
        name: name.into(),
        cpu_slots: 1,
        io_slots: 1,
        ..Default::default()
    }
}

fn assigned(
    rx: &mut mpsc::UnboundedReceiver<(Option<u64>, pb::MasterMessage)>,
) -> Vec<pb::Assignment> {
    let mut out = Vec::new();
    while let Ok((_, m)) = rx.try_recv() {
        if let Some(pb::master_message::Msg::Assign(a)) = m.msg {
            out.extend(a.jobs);
        }
    }
    out
}

fn ok(a: &pb::Assignment) -> pb::JobResult {
    pb::JobResult {
        job_id: a.job_id.clone(),
        attempt: a.attempt,
        outcome: Some(pb::job_result::Outcome::Output(pb::JobOutput {
            value: Some(pb::job_output::Value::SleptMs(1)),
        })),
        run_us: 1,
        slot: a.slot,
    }
}

#[test]
fn higher_priority_first_then_fifo() {
    let mut st = State::new(settings(3));
    st.submit(vec![spec(JobKind::Fib, "1", 0), spec(JobKind::Fib, "2", 0)])
        .unwrap();
    st.submit(vec![spec(JobKind::Fib, "3", 5)]).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("w"), tx);
    st.add_credit(s, 3, 0).send(None);
    let args: Vec<String> = assigned(&mut rx).into_iter().map(|a| a.arg).collect();
    assert_eq!(args, ["3", "1", "2"]);
}

#[test]
fn a_result_is_recorded_for_its_id_whatever_slot_it_names() {
    let mut st = State::new(settings(3));
    let (_, ids) = st
        .submit(
            (0..3)
                .map(|i| spec(JobKind::Fib, &i.to_string(), 0))
                .collect(),
        )
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("w"), tx);
    st.add_credit(s, 3, 0).send(None);
    let jobs = assigned(&mut rx);
    // Each assignment names the slot that holds its job.
    let slots: Vec<u32> = jobs.iter().map(|a| a.slot.expect("a slot")).collect();
    let mut distinct = slots.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{slots:?}");
    // A result naming another running job's slot, one naming no job's,
    // and one naming none: each ends its own job only.
    let mut wrong = ok(&jobs[0]);
    wrong.slot = jobs[1].slot;
    let mut beyond = ok(&jobs[2]);
    beyond.slot = Some(u32::MAX);
    st.record_results(s, 0, vec![wrong, beyond]).send(None);
    let state = |id: &JobId| st.job(id).unwrap().state;
    assert_eq!(
        [state(&ids[0]), state(&ids[1]), state(&ids[2])],
        [JobState::Succeeded, JobState::Running, JobState::Succeeded]
    );
    assert_eq!(st.count(JobState::Succeeded), 2);
    assert_eq!(st.count(JobState::Running), 1);
    let mut unnamed = ok(&jobs[1]);
    unnamed.slot = None;
    st.record_results(s, 0, vec![unnamed]).send(None);
    assert_eq!(st.count(JobState::Succeeded), 3);
    assert_eq!(st.count(JobState::Running), 0);
    // The first result again, with its own slot: late, dropped.
    st.record_results(s, 0, vec![ok(&jobs[0])]).send(None);
    assert_eq!(st.count(JobState::Succeeded), 3);
}

#[test]
fn credit_bounds_what_a_worker_holds_and_work_is_shared() {
    let mut st = State::new(settings(3));
    st.submit(
        (0..10)
            .map(|i| spec(JobKind::Fib, &i.to_string(), 0))
            .collect(),
    )
    .unwrap();
    let (tx1, mut rx1) = mpsc::unbounded_channel();
    let (tx2, mut rx2) = mpsc::unbounded_channel();
    let a = st.add_session(&hello("a"), tx1);
    let b = st.add_session(&hello("b"), tx2);
    st.add_credit(a, 3, 0).send(None);
    assert_eq!(assigned(&mut rx1).len(), 3);
    st.add_credit(b, 100, 0).send(None);
    assert_eq!(assigned(&mut rx2).len(), 7);
    assert_eq!(st.count(JobState::Running), 10);
}

#[test]
fn lost_session_requeues_with_attempt_counted_and_late_result_is_dropped() {
    let mut st = State::new(settings(3));
    let (_, ids) = st.submit(vec![spec(JobKind::Sleep, "5", 0)]).unwrap();
    let (tx1, mut rx1) = mpsc::unbounded_channel();
    let a = st.add_session(&hello("a"), tx1);
    st.add_credit(a, 0, 1).send(None);
    let first = assigned(&mut rx1).remove(0);
    let (ended, out) = st.end_session(a, "stream closed");
    assert!(ended);
    out.send(None);
    assert_eq!(st.count(JobState::Queued), 1);
    let (tx2, mut rx2) = mpsc::unbounded_channel();
    let b = st.add_session(&hello("b"), tx2);
    st.add_credit(b, 0, 1).send(None);
    let second = assigned(&mut rx2).remove(0);
    assert_eq!(second.attempt, 2);
    // The first worker's result arrives late: dropped and counted.
    st.record_results(a, 0, vec![ok(&first)]).send(None);
    assert_eq!(st.counters.late_results_dropped, 1);
    st.record_results(b, 0, vec![ok(&second)]).send(None);
    let job = st.job(&ids[0]).unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.attempts, 2);
    // A duplicate of the winning result is dropped too.
    st.record_results(b, 0, vec![ok(&second)]).send(None);
    assert_eq!(st.counters.late_results_dropped, 2);
    assert_eq!(st.count(JobState::Succeeded), 1);
}

#[test]
fn retryable_failures_end_failed_after_max_attempts() {
    let mut st = State::new(settings(2));
    let (_, ids) = st.submit(vec![spec(JobKind::Fib, "5", 0)]).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("a"), tx);
    for _ in 0..2 {
        st.add_credit(s, 1, 0).send(None);
        let a = assigned(&mut rx).remove(0);
        st.record_results(
            s,
            0,
            vec![pb::JobResult {
                job_id: a.job_id,
                attempt: a.attempt,
                outcome: Some(pb::job_result::Outcome::Failure(pb::JobFailure {
                    reason: "timed out after 50 ms".into(),
                    retryable: true,
                })),
                run_us: 0,
                slot: a.slot,
            }],
        )
        .send(None);
    }
    let job = st.job(&ids[0]).unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempts, 2);
    assert_eq!(job.x().attempt_errors.len(), 2);
    assert!(job.x().error.as_deref().unwrap().contains("timed out"));
}

#[test]
fn cancel_queued_and_running() {
    let mut st = State::new(settings(3));
    let (_, ids) = st
        .submit(vec![spec(JobKind::Fib, "1", 0), spec(JobKind::Fib, "2", 0)])
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("a"), tx);
    st.add_credit(s, 1, 0).send(None);
    assert_eq!(assigned(&mut rx).len(), 1);
    let (resp, out) = st.cancel(&ids).unwrap();
    out.send(None);
    assert_eq!(resp.cancelled, 2);
    let msgs: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert!(matches!(
        msgs[0].1.msg,
        Some(pb::master_message::Msg::Cancel(_))
    ));
    assert_eq!(st.count(JobState::Cancelled), 2);
    assert_eq!(st.count(JobState::Queued), 0);
    assert!(st.sessions[&s].held.is_empty());
}

#[test]
fn idempotency_key_returns_first_id() {
    let mut st = State::new(settings(3));
    let mut a = spec(JobKind::Fib, "1", 0);
    a.idempotency_key = "k".into();
    let (_, first) = st.submit(vec![a.clone()]).unwrap();
    let (_, second) = st.submit(vec![a]).unwrap();
    assert_eq!(first, second);
    assert_eq!(st.jobs.len(), 1);
}

#[test]
fn invalid_batches_enqueue_nothing() {
    let mut st = State::new(Settings {
        limits: Limits {
            max_batch_jobs: 2,
            ..Limits::default()
        },
        ..settings(3)
    });
    let e = st.submit(vec![]).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    let e = st
        .submit(vec![spec(JobKind::Fib, "1", 0); 3])
        .unwrap_err()
        .to_string();
    assert!(e.contains("limit of 2"), "{e}");
    let e = st
        .submit(vec![
            spec(JobKind::Fib, "1", 0),
            spec(JobKind::Prime, "12a", 0),
        ])
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("jobs[1].arg"), "{e}");
    assert_eq!(st.jobs.len(), 0);
}

/// What a store holding these commits would give back.
fn recovered_from(commits: &[Changes]) -> Recovered {
    let mut r = Recovered {
        created_at_ms: 1,
        ..Recovered::default()
    };
    for c in commits {
        for (id, bytes) in &c.batches {
            let (ids, created, request_id) = crate::store::decode_batch(bytes).unwrap();
            r.batches.push((*id, ids, created, request_id));
        }
        for w in &c.jobs {
            r.jobs
                .push(pb::JobRecord::decode(w.record.as_slice()).unwrap());
        }
        r.assignments.push(c.assignments.clone());
    }
    r
}

fn fake_clock(st: &mut State) -> Arc<std::sync::atomic::AtomicU64> {
    let now = Arc::new(std::sync::atomic::AtomicU64::new(1_000_000));
    let c = now.clone();
    st.set_clock(Box::new(move || {
        c.load(std::sync::atomic::Ordering::SeqCst)
    }));
    now
}

fn fail(a: &pb::Assignment) -> pb::JobResult {
    pb::JobResult {
        job_id: a.job_id.clone(),
        attempt: a.attempt,
        outcome: Some(pb::job_result::Outcome::Failure(pb::JobFailure {
            reason: "child process 42 killed by signal 9 while running the job".into(),
            retryable: true,
        })),
        run_us: 0,
        slot: a.slot,
    }
}

#[test]
fn retried_jobs_wait_out_an_exponential_backoff() {
    let mut st = State::new(Settings {
        retry: RetryPolicy {
            base_ms: 1000,
            max_ms: 60_000,
        },
        ..settings(5)
    });
    let now = fake_clock(&mut st);
    st.submit(vec![spec(JobKind::Fib, "5", 0)]).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("a"), tx);
    st.add_credit(s, 10, 0).send(None);
    let mut a = assigned(&mut rx).remove(0);
    for (attempt, full_wait) in [(1u32, 1000u64), (2, 2000), (3, 4000)] {
        assert_eq!(a.attempt, attempt);
        st.record_results(s, 0, vec![fail(&a)]).send(None);
        // Jitter keeps the wait between half and all of it.
        now.fetch_add(full_wait / 2 - 1, std::sync::atomic::Ordering::SeqCst);
        st.promote_due().send(None);
        assert!(assigned(&mut rx).is_empty(), "retried before its backoff");
        assert_eq!(st.count(JobState::Queued), 1);
        now.fetch_add(full_wait / 2 + 1, std::sync::atomic::Ordering::SeqCst);
        st.promote_due().send(None);
        let mut again = assigned(&mut rx);
        assert_eq!(again.len(), 1, "not retried after its backoff");
        a = again.remove(0);
    }
    assert_eq!(a.attempt, 4);
}

#[test]
fn finished_jobs_expire_after_retention_and_say_so() {
    let mut st = State::new(settings(3));
    let now = fake_clock(&mut st);
    now.store(crate::store::now_ms(), std::sync::atomic::Ordering::SeqCst);
    st.created_at_ms = 0;
    let (batch, ids) = st.submit(vec![spec(JobKind::Sleep, "1", 0)]).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("a"), tx);
    st.add_credit(s, 0, 1).send(None);
    let a = assigned(&mut rx).remove(0);
    st.record_results(s, 0, vec![ok(&a)]).send(None);
    assert_eq!(st.purge_expired(), 0);
    let later = now.fetch_add(3_600_001, std::sync::atomic::Ordering::SeqCst) + 3_600_001;
    assert_eq!(st.purge_expired(), 1);
    assert!(!st.batches.contains_key(&batch));
    assert_eq!(st.count(JobState::Succeeded), 0);
    let e = st
        .resolve(&[ids[0].to_string()], "")
        .unwrap_err()
        .to_string();
    assert!(e.contains("expired") && e.contains("--retention"), "{e}");
    // An id made just now was never seen: it cannot have expired.
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, later / 1000, 0);
    let never = uuid::Uuid::new_v7(ts);
    let e = st
        .resolve(&[never.to_string()], "")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not known"), "{e}");
}

#[test]
fn recovery_restores_queue_order_results_and_requeues_running_jobs() {
    let mut st = State::new(Settings {
        durable: true,
        ..settings(3)
    });
    let (_, first) = st
        .submit(vec![
            spec(JobKind::Fib, "10", 0),
            spec(JobKind::Fib, "11", 0),
        ])
        .unwrap();
    let (batch2, second) = st.submit(vec![spec(JobKind::Fib, "12", 7)]).unwrap();
    let mut keyed = spec(JobKind::Fib, "13", 0);
    keyed.idempotency_key = "once".into();
    st.submit(vec![keyed.clone()]).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("a"), tx);
    st.add_credit(s, 2, 0).send(None);
    let running = assigned(&mut rx);
    // Priority 7 went first, then the oldest.
    assert_eq!(running[0].arg, "12");
    assert_eq!(running[1].arg, "10");
    st.record_results(s, 0, vec![ok(&running[0])]).send(None);
    let (number, changes) = st.take_changes().expect("changes to commit");
    assert_eq!(number, 1);

    let recovered = recovered_from(&[changes]);
    let mut back = State::new(settings(3));
    let report = back.recover(recovered).unwrap();
    assert_eq!(report.finished, 1);
    assert_eq!(report.requeued, 1);
    assert_eq!(report.queued, 2);
    assert_eq!(back.job(&second[0]).unwrap().state, JobState::Succeeded);
    assert_eq!(back.batches[&batch2].finished, vec![0]);
    let was_running = back.job(&first[0]).unwrap();
    assert_eq!(was_running.state, JobState::Queued);
    assert_eq!(was_running.attempts, 1);
    assert!(was_running.x().attempt_errors[0].contains("master restarted"));
    // Idempotency survives, and new jobs continue the sequence.
    let (_, again) = back.submit(vec![keyed]).unwrap();
    assert_eq!(back.jobs.len(), 4);
    assert!(back.job(&again[0]).is_some());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = back.add_session(&hello("b"), tx);
    back.add_credit(s, 10, 0).send(None);
    let order: Vec<String> = assigned(&mut rx).into_iter().map(|a| a.arg).collect();
    assert_eq!(order, ["10", "11", "13"]);
}

/// Recovery fills each batch's slot hints as it loads its jobs, and builds
/// the ready queues at once from what it gathers: a restart of thousands
/// of jobs in several batches, of two classes and mixed priorities, some
/// running and one finished (its own record), queues every unfinished job
/// in its class's order, and every hint names its job.
#[test]
fn a_recovered_queue_is_in_order_and_every_slot_hint_holds_its_job() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(13);
    let mut st = durable(3);
    let mut batches = Vec::new();
    {
        let store = crate::store::RedbStore::open(dir.path()).unwrap();
        for _ in 0..5 {
            let specs = (0..2_000)
                .map(|i| {
                    let kind = if rng.random_bool(0.3) {
                        JobKind::Sleep
                    } else {
                        JobKind::Fib
                    };
                    spec(kind, &(i % 50 + 1).to_string(), rng.random_range(-2..3))
                })
                .collect();
            batches.push(st.submit(specs).unwrap());
            commit_to(&mut st, &store);
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = st.add_session(&hello("a"), tx);
        st.add_credit(s, 300, 100).send(None);
        let running = assigned(&mut rx);
        assert_eq!(running.len(), 400);
        st.record_results(s, 0, vec![ok(&running[0])]).send(None);
        commit_to(&mut st, &store);
    }
    // Every unfinished job, in the order its class's queue must give it.
    let mut want: [Vec<(queues::QueueKey, String)>; 2] = Default::default();
    for job in st.jobs.values().filter(|j| !j.is_finished()) {
        let class = usize::from(job.kind == JobKind::Sleep);
        want[class].push(((Reverse(job.priority), job.seq), job.id.to_string()));
    }
    for queue in &mut want {
        queue.sort();
    }

    let store = crate::store::RedbStore::open(dir.path()).unwrap();
    let mut back = durable(3);
    let mut report = RecoveryReport::default();
    store
        .load(&mut |item| back.recover_item(item, &mut report))
        .unwrap();
    back.finish_recovery(&mut report);
    assert_eq!(
        (report.queued, report.requeued, report.finished),
        (9_600, 399, 1)
    );
    for (batch, ids) in &batches {
        let b = &back.batches[batch];
        assert_eq!(b.slots.len(), ids.len());
        for (slot, id) in b.slots.iter().zip(ids) {
            assert_eq!(back.jobs.at(*slot).map(|j| j.id), Some(*id));
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = back.add_session(&hello("b"), tx);
    back.add_credit(s, 20_000, 20_000).send(None);
    let mut got: [Vec<String>; 2] = Default::default();
    for a in assigned(&mut rx) {
        got[usize::from(a.kind == JobKind::Sleep as i32)].push(a.job_id);
    }
    for (got, want) in got.iter().zip(&want) {
        let want: Vec<&String> = want.iter().map(|(_, id)| id).collect();
        assert_eq!(got.iter().collect::<Vec<_>>(), want);
    }
}

#[test]
fn failed_jobs_can_be_retried() {
    let mut st = State::new(settings(1));
    let (batch, ids) = st.submit(vec![spec(JobKind::Fib, "5", 0)]).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("a"), tx);
    st.add_credit(s, 1, 0).send(None);
    let a = assigned(&mut rx).remove(0);
    st.record_results(s, 0, vec![fail(&a)]).send(None);
    assert_eq!(st.failed_ids(), ids);
    let (n, out) = st.retry_jobs(&ids);
    out.send(None);
    assert_eq!(n, 1);
    assert!(st.batches[&batch].finished.is_empty());
    st.add_credit(s, 1, 0).send(None);
    let a = assigned(&mut rx).remove(0);
    // History is kept: this is the second attempt, and the retry raised
    // the allowance instead of forgetting the first.
    assert_eq!(a.attempt, 2);
    st.record_results(s, 0, vec![ok(&a)]).send(None);
    let job = st.job(&ids[0]).unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!((job.counted, job.allowance), (1, 2));
    assert_eq!(job.x().attempt_errors.len(), 1);
}

#[test]
fn assignments_are_logged_once_per_commit_and_recovered() {
    let mut st = State::new(Settings {
        durable: true,
        ..settings(3)
    });
    let (_, ids) = st
        .submit(vec![
            spec(JobKind::Fib, "10", 0),
            spec(JobKind::Fib, "11", 0),
        ])
        .unwrap();
    let (_, first) = st.take_changes().unwrap();
    // A submit is one batch record holding its jobs, not a record each.
    assert!(first.jobs.is_empty());
    assert_eq!(first.batches.len(), 1);
    let (_, created, _) = crate::store::decode_batch(&first.batches[0].1).unwrap();
    assert_eq!(created.len(), 2);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("a"), tx);
    st.add_credit(s, 1, 0).send(None);
    assert_eq!(assigned(&mut rx).len(), 1);
    let (_, second) = st.take_changes().unwrap();
    // The assignment is one log entry, not a rewritten record.
    assert!(second.jobs.is_empty());
    assert_eq!(second.assignments, vec![(ids[0], 1)]);

    let mut back = State::new(settings(3));
    let report = back.recover(recovered_from(&[first, second])).unwrap();
    assert_eq!((report.queued, report.requeued), (1, 1));
    let was_running = back.job(&ids[0]).unwrap();
    assert_eq!(was_running.state, JobState::Queued);
    assert_eq!(was_running.attempts, 1);
    assert_eq!(back.job(&ids[1]).unwrap().attempts, 0);
    assert_eq!(back.count(JobState::Queued), 2);
}

#[test]
fn a_jobs_own_record_overrides_its_batch_and_batches_expire_whole() {
    let mut st = State::new(Settings {
        durable: true,
        ..settings(3)
    });
    let (batch, ids) = st
        .submit(vec![
            spec(JobKind::Sleep, "1", 0),
            spec(JobKind::Sleep, "2", 0),
        ])
        .unwrap();
    let (_, first) = st.take_changes().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("a"), tx);
    st.add_credit(s, 0, 1).send(None);
    let a = assigned(&mut rx).remove(0);
    st.record_results(s, 0, vec![ok(&a)]).send(None);
    let (_, second) = st.take_changes().unwrap();
    assert_eq!(second.jobs.len(), 1);
    let mut back = State::new(settings(3));
    back.recover(recovered_from(&[first, second])).unwrap();
    assert_eq!(back.job(&ids[0]).unwrap().state, JobState::Succeeded);
    assert_eq!(back.job(&ids[1]).unwrap().state, JobState::Queued);
    assert_eq!(back.batches[&batch].finished, vec![0]);
    // Half finished: the batch is kept, however old its finished job.
    let now = fake_clock(&mut back);
    now.store(u64::MAX / 2, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(back.purge_expired(), 0);
    assert!(back.job(&ids[0]).is_some());
}

fn durable(max_attempts: u32) -> State {
    State::new(Settings {
        durable: true,
        ..settings(max_attempts)
    })
}

/// Commits what changed, as the committer does.
fn commit(st: &mut State, log: &mut Vec<Changes>) {
    if let Some((_, c)) = st.take_changes() {
        log.push(c);
    }
}

fn restart(log: &[Changes], max_attempts: u32) -> State {
    let mut back = State::new(settings(max_attempts));
    back.recover(recovered_from(log)).unwrap();
    back
}

#[test]
fn a_retried_dead_letter_is_queued_not_failed_after_a_restart() {
    let mut st = durable(1);
    let mut log = Vec::new();
    let (_, ids) = st.submit(vec![spec(JobKind::Fib, "5", 0)]).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("a"), tx);
    st.add_credit(s, 1, 0).send(None);
    let a = assigned(&mut rx).remove(0);
    commit(&mut st, &mut log);
    st.record_results(s, 0, vec![fail(&a)]).send(None);
    commit(&mut st, &mut log);
    assert_eq!(st.job(&ids[0]).unwrap().state, JobState::Failed);
    let (_, out) = st.end_session(s, "stream closed");
    out.send(None);
    let (n, out) = st.retry_jobs(&ids);
    out.send(None);
    assert_eq!(n, 1);
    commit(&mut st, &mut log);

    let back = restart(&log, 1);
    let job = back.job(&ids[0]).unwrap();
    assert_eq!(job.state, JobState::Queued, "{:?}", job.x().attempt_errors);
    assert_eq!((job.attempts, job.counted, job.allowance), (1, 1, 2));
    assert_eq!(job.x().attempt_errors.len(), 1);
}

#[test]
fn jobs_returned_on_drain_are_not_failed_by_a_restart() {
    for return_committed in [true, false] {
        let mut st = durable(1);
        let mut log = Vec::new();
        let (_, ids) = st
            .submit(vec![spec(JobKind::Fib, "5", 0), spec(JobKind::Fib, "6", 0)])
            .unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = st.add_session(&hello("a"), tx);
        st.add_credit(s, 2, 0).send(None);
        assert_eq!(assigned(&mut rx).len(), 2);
        commit(&mut st, &mut log);
        st.set_draining(s);
        st.return_jobs(s, &ids).send(None);
        if return_committed {
            commit(&mut st, &mut log);
        }
        let back = restart(&log, 1);
        for id in &ids {
            let job = back.job(id).unwrap();
            assert_eq!(job.state, JobState::Queued, "{:?}", job.x().attempt_errors);
            assert_eq!((job.attempts, job.counted), (1, 0));
        }
    }
}

#[test]
fn a_stale_result_leaves_the_newer_attempt_held() {
    let mut st = State::new(settings(3));
    let (_, ids) = st.submit(vec![spec(JobKind::Fib, "5", 0)]).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("a"), tx);
    st.add_credit(s, 1, 0).send(None);
    let first = assigned(&mut rx).remove(0);
    st.record_results(s, 1, vec![fail(&first)]).send(None);
    st.add_credit(s, 1, 0).send(None);
    let second = assigned(&mut rx).remove(0);
    assert_eq!(second.attempt, 2);
    // The first attempt's result again, and a success for it: both stale.
    st.record_results(s, 2, vec![fail(&first), ok(&first)])
        .send(None);
    assert_eq!(st.counters.late_results_dropped, 2);
    assert!(st.sessions[&s].held.contains(&ids[0]));
    let (_, out) = st.end_session(s, "stream closed");
    out.send(None);
    let job = st.job(&ids[0]).unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.counted, 2);
}

#[test]
fn a_failure_resent_on_a_new_session_is_applied_once() {
    let mut st = State::new(settings(3));
    let (_, ids) = st.submit(vec![spec(JobKind::Fib, "5", 0)]).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = st.add_session(&hello("w"), tx);
    st.add_credit(a, 1, 0).send(None);
    let attempt = assigned(&mut rx).remove(0);
    st.record_results(a, 1, vec![fail(&attempt)]).send(None);
    let (_, out) = st.end_session(a, "stream closed");
    out.send(None);
    // The ack was lost with the stream: the worker sends it again.
    let (tx, _rx) = mpsc::unbounded_channel();
    let b = st.add_session(&hello("w"), tx);
    st.record_results(b, 1, vec![fail(&attempt)]).send(None);
    let job = st.job(&ids[0]).unwrap();
    assert_eq!(job.x().attempt_errors.len(), 1);
    assert_eq!((job.counted, st.counters.retried), (1, 1));
    // A success for that attempt is still taken: nobody runs it now.
    st.record_results(b, 2, vec![ok(&attempt)]).send(None);
    assert_eq!(st.job(&ids[0]).unwrap().state, JobState::Succeeded);
    assert_eq!(st.count(JobState::Queued), 0);
}

#[test]
fn a_read_waits_for_the_commit_being_written() {
    let mut st = durable(3);
    assert_eq!(st.ticket(), Some(0));
    st.submit(vec![spec(JobKind::Fib, "5", 0)]).unwrap();
    assert_eq!(st.ticket(), Some(1));
    // Commit 1 is taken and being written: what the state shows now is
    // still only as safe as that commit.
    let (number, _) = st.take_changes().unwrap();
    assert_eq!((number, st.ticket()), (1, Some(1)));
}

#[test]
fn a_batch_that_names_a_running_job_again_hears_of_its_finish() {
    let mut st = State::new(settings(3));
    let keyed = |k: &str| pb::JobSpec {
        idempotency_key: k.into(),
        ..spec(JobKind::Sleep, "1", 0)
    };
    let (first, ids) = st.submit(vec![keyed("k0"), keyed("k1")]).unwrap();
    let (again, same) = st
        .submit(vec![keyed("k1"), keyed("k0"), keyed("k1")])
        .unwrap();
    assert_eq!(same, vec![ids[1], ids[0], ids[1]]);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("a"), tx);
    st.add_credit(s, 0, 2).send(None);
    let results: Vec<_> = assigned(&mut rx).iter().map(ok).collect();
    st.record_results(s, 0, results).send(None);
    let mut finished = st.batches[&again].finished.clone();
    finished.sort_unstable();
    assert_eq!(finished, vec![0, 1, 2]);
    assert_eq!(st.batches[&first].finished.len(), 2);
}

#[test]
fn an_overlong_idempotency_key_is_refused_naming_the_field() {
    let mut st = State::new(settings(3));
    let mut long = spec(JobKind::Fib, "5", 0);
    long.idempotency_key = "k".repeat(MAX_KEY_BYTES + 1);
    let e = st
        .submit(vec![spec(JobKind::Fib, "5", 0), long])
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "jobs[1].idempotency_key: 1025 bytes is over the limit of 1024"
    );
    assert_eq!(st.count(JobState::Queued), 0);
}

#[test]
fn a_batch_of_jobs_named_again_is_kept_while_they_run() {
    let mut st = State::new(settings(3));
    let now = fake_clock(&mut st);
    let keyed = pb::JobSpec {
        idempotency_key: "k".into(),
        ..spec(JobKind::Sleep, "1", 0)
    };
    st.submit(vec![keyed.clone()]).unwrap();
    let (again, _) = st.submit(vec![keyed]).unwrap();
    now.fetch_add(10 * 3_600_000, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(st.purge_expired(), 0);
    assert!(st.batches.contains_key(&again));
}

#[test]
fn a_submit_sent_again_gets_its_first_batch_even_after_a_restart() {
    let mut st = durable(3);
    let mut log = Vec::new();
    let specs = vec![spec(JobKind::Fib, "5", 0), spec(JobKind::Fib, "6", 0)];
    let (batch, ids) = st.submit_request("r1", specs.clone()).unwrap();
    assert_eq!(
        st.submit_request("r1", specs.clone()).unwrap(),
        (batch, ids.clone())
    );
    assert_eq!(st.count(JobState::Queued), 2);
    commit(&mut st, &mut log);
    let mut back = restart(&log, 3);
    assert_eq!(back.submit_request("r1", specs).unwrap(), (batch, ids));
    assert_eq!(back.count(JobState::Queued), 2);
    let e = back
        .submit_request(&"r".repeat(200), vec![spec(JobKind::Fib, "5", 0)])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("request_id: 200 bytes is over the limit"),
        "{e}"
    );
}

/// Runs the next queued CPU job on a new session, reporting `result`.
fn run_one(st: &mut State, result: fn(&pb::Assignment) -> pb::JobResult) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("w"), tx);
    st.add_credit(s, 1, 0).send(None);
    let a = assigned(&mut rx).remove(0);
    st.record_results(s, 0, vec![result(&a)]).send(None);
}

#[test]
fn a_retried_job_leaves_the_finished_list_of_every_batch_that_names_it() {
    let mut st = durable(1);
    let mut log = Vec::new();
    let keyed = pb::JobSpec {
        idempotency_key: "k".into(),
        ..spec(JobKind::Fib, "5", 0)
    };
    let (own, ids) = st.submit(vec![keyed.clone()]).unwrap();
    // Named again by key while it is queued, and once it has failed.
    let (before, _) = st.submit(vec![keyed.clone()]).unwrap();
    run_one(&mut st, fail);
    assert_eq!(st.job(&ids[0]).unwrap().state, JobState::Failed);
    let (after, _) = st.submit(vec![keyed]).unwrap();
    commit(&mut st, &mut log);
    let lists = |st: &State| [own, before, after].map(|b| st.batches[&b].finished.clone());
    const EMPTY: Vec<u32> = Vec::new();
    assert_eq!(lists(&st), [[0], [0], [0]]);
    // The same before and after a restart.
    for mut st in [st, restart(&log, 1)] {
        let (n, out) = st.retry_jobs(&ids);
        out.send(None);
        assert_eq!(n, 1);
        assert_eq!(lists(&st), [EMPTY; 3], "a queued job is listed as finished");
        run_one(&mut st, ok);
        assert_eq!(
            lists(&st),
            [[0], [0], [0]],
            "its finish is heard once by each"
        );
    }
}

#[test]
fn a_job_named_again_by_a_kept_batch_is_not_purged_with_its_own() {
    let mut st = State::new(settings(3));
    let now = fake_clock(&mut st);
    let keyed = pb::JobSpec {
        idempotency_key: "k".into(),
        ..spec(JobKind::Sleep, "1", 0)
    };
    let (first, ids) = st.submit(vec![keyed.clone()]).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("a"), tx);
    st.add_credit(s, 0, 1).send(None);
    let a = assigned(&mut rx).remove(0);
    st.record_results(s, 0, vec![ok(&a)]).send(None);
    // A later batch names the finished job again, beside one still queued.
    let (later, _) = st
        .submit(vec![keyed, spec(JobKind::Sleep, "2", 0)])
        .unwrap();
    now.fetch_add(10 * 3_600_000, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(st.purge_expired(), 0);
    assert!(st.batches.contains_key(&first) && st.batches.contains_key(&later));
    assert!(st.job(&ids[0]).is_some());
}

/// Commits to a real store and tells the state, as the committer does.
fn commit_to(st: &mut State, store: &crate::store::RedbStore) {
    if let Some((n, c)) = st.take_changes() {
        store.write(c).unwrap();
        st.committed(n, store.closed_counts().unwrap());
    }
}

#[test]
fn a_finished_batch_leaves_memory_once_committed_and_comes_back_for_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::store::RedbStore::open(dir.path()).unwrap());
    let mut st = durable(1);
    st.set_archive(store.clone());
    let mut keyed = spec(JobKind::Fib, "5", 0);
    keyed.idempotency_key = "k".into();
    let (batch, ids) = st
        .submit_request("r", vec![keyed.clone(), spec(JobKind::Fib, "6", 0)])
        .unwrap();
    commit_to(&mut st, &store);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("w"), tx);
    st.add_credit(s, 2, 0).send(None);
    let a = assigned(&mut rx);
    st.record_results(s, 0, vec![ok(&a[0]), fail(&a[1])])
        .send(None);
    assert_eq!(
        st.jobs.len(),
        2,
        "finished, not yet committed: still in memory"
    );
    commit_to(&mut st, &store);
    assert_eq!(st.jobs.len(), 0, "committed: out of memory");
    assert!(st.batches.is_empty());
    assert_eq!(
        (st.count(JobState::Succeeded), st.count(JobState::Failed)),
        (1, 1)
    );
    // Read from the store: the batch, the key, the request id.
    assert_eq!(st.resolve(&[], &batch.to_string()).unwrap(), ids);
    assert_eq!(
        st.submit_request("r", vec![]).unwrap(),
        (batch, ids.clone())
    );
    let (again, again_ids) = st.submit(vec![keyed]).unwrap();
    assert_eq!(again_ids, vec![ids[0]], "the key names the finished job");
    commit_to(&mut st, &store);
    assert!(
        !st.batches.contains_key(&again),
        "a batch of finished jobs closes at once"
    );
    // A retry of the failed job brings its batch back, and it runs again.
    let (n, out) = st.retry_jobs(&[ids[1]]);
    out.send(None);
    assert_eq!(n, 1);
    assert_eq!(st.job(&ids[1]).unwrap().state, JobState::Queued);
    assert_eq!(st.count(JobState::Failed), 0);
    commit_to(&mut st, &store);
    // A restart now reads the batch back as open, the job queued.
    let mut back = durable(1);
    let mut report = RecoveryReport::default();
    store
        .load(&mut |item| back.recover_item(item, &mut report))
        .unwrap();
    back.finish_recovery(&mut report);
    assert_eq!(back.job(&ids[1]).unwrap().state, JobState::Queued);
    assert_eq!(back.job(&ids[0]).unwrap().state, JobState::Succeeded);
    st.add_credit(s, 1, 0).send(None);
    let a = assigned(&mut rx);
    st.record_results(s, 0, vec![ok(&a[0])]).send(None);
    commit_to(&mut st, &store);
    assert_eq!(st.jobs.len(), 0);
    assert_eq!(
        (st.count(JobState::Succeeded), st.count(JobState::Failed)),
        (2, 0)
    );
    let record = store.read_job(&ids[1]).unwrap().unwrap();
    assert_eq!(record.state, JobState::Succeeded as i32);
}

fn python_hello(name: &str, modules: &[&str]) -> pb::Hello {
    pb::Hello {
        kinds: vec![JobKind::Python as i32],
        python_modules: modules.iter().map(|m| m.to_string()).collect(),
        python_slots: 1,
        ..hello(name)
    }
}

fn python_credit(n: u32) -> pb::Credit {
    pb::Credit {
        python: n,
        ..Default::default()
    }
}

#[test]
fn python_jobs_go_only_to_workers_allowing_their_module() {
    let mut st = State::new(settings(3));
    st.submit(vec![
        spec(JobKind::Python, "secret.tasks:run", 9),
        spec(JobKind::Python, "app.tasks:f {\"args\":[1]}", 0),
        spec(JobKind::Python, "app:g", 0),
        spec(JobKind::Fib, "5", 0),
    ])
    .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&python_hello("w", &["app"]), tx);
    // The job nobody may run waits, and does not hold up the others.
    st.grant_credit(s, &python_credit(10)).send(None);
    let args: Vec<String> = assigned(&mut rx).into_iter().map(|a| a.arg).collect();
    assert_eq!(args, ["app.tasks:f {\"args\":[1]}", "app:g"]);
    assert_eq!(st.count(JobState::Queued), 2);
    assert_eq!(
        st.waiting_for_capability(),
        (1, vec!["secret.tasks".to_string()])
    );
    // The fib job is CPU work: the Python credit does not take it.
    st.add_credit(s, 1, 0).send(None);
    let kinds: Vec<i32> = assigned(&mut rx).into_iter().map(|a| a.kind).collect();
    assert_eq!(kinds, [JobKind::Fib as i32]);
    // A worker allowing it comes: it runs there.
    let (tx2, mut rx2) = mpsc::unbounded_channel();
    let s2 = st.add_session(&python_hello("w2", &["secret"]), tx2);
    // Queued still, but a worker may run it: it waits for credit only.
    assert_eq!(st.waiting_for_capability(), (0, vec![]));
    assert_eq!(st.count(JobState::Queued), 1);
    st.grant_credit(s2, &python_credit(1)).send(None);
    let args: Vec<String> = assigned(&mut rx2).into_iter().map(|a| a.arg).collect();
    assert_eq!(args, ["secret.tasks:run"]);
    assert_eq!(st.count(JobState::Queued), 0);
}

#[test]
fn a_worker_without_the_python_kind_gets_no_python_job() {
    let mut st = State::new(settings(3));
    st.submit(vec![spec(JobKind::Python, "app:f", 0)]).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Modules listed, but the kind not: nothing is allowed.
    let h = pb::Hello {
        python_modules: vec!["app".into()],
        ..hello("w")
    };
    let s = st.add_session(&h, tx);
    st.grant_credit(s, &python_credit(5)).send(None);
    assert!(assigned(&mut rx).is_empty());
    assert_eq!(st.waiting_for_capability(), (1, vec!["app".to_string()]));
    // A cancel takes it out of its module's queue.
    let id = st.jobs.values().next().unwrap().id;
    let _ = st.cancel(&[id]);
    assert_eq!(st.waiting_for_capability(), (0, vec![]));
}

#[test]
fn closed_jobs_are_listed_newest_first_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::store::RedbStore::open(dir.path()).unwrap());
    let (st, _, ids) = closed_batch_with_a_failed_job(&store);
    assert_eq!(st.jobs.len(), 0, "committed: out of memory");
    let mut seen = Vec::new();
    store
        .scan_closed_jobs_newest(&mut |r| {
            seen.push((JobId::from_slice(&r.id).unwrap(), r.state));
            true
        })
        .unwrap();
    assert_eq!(
        seen,
        vec![
            (ids[1], JobState::Failed as i32),
            (ids[0], JobState::Succeeded as i32)
        ]
    );
    let filter = super::dashboard_queries::JobFilter {
        state: JobState::Failed,
        limit: 50,
        ..Default::default()
    };
    let page = st.dashboard_jobs(&filter).unwrap().finish().unwrap();
    assert_eq!(page.matched, 1);
    assert_eq!(page.jobs.len(), 1);
    assert_eq!(page.jobs[0].job_id, ids[1].to_string());
    let (batches, total) = st.dashboard_batches(0, 10).finish().unwrap();
    assert_eq!(total, 1);
    assert_eq!(batches[0].total, 2);
}

/// Runs the two jobs just submitted on a new worker: the first succeeds,
/// the second fails.
fn run_one_ok_one_failed(st: &mut State) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("w"), tx);
    st.add_credit(s, 2, 0).send(None);
    let a = assigned(&mut rx);
    st.record_results(s, 0, vec![ok(&a[0]), fail(&a[1])])
        .send(None);
}

/// Retries the failed job of a batch `run_one_ok_one_failed` ran, and
/// checks that a restart finds it queued and the other still succeeded.
fn retry_keeps_the_succeeded_job(st: &mut State, store: &crate::store::RedbStore, ids: &[JobId]) {
    let (retried, out) = st.retry_jobs(&[ids[1]]);
    out.send(None);
    assert_eq!(retried, 1);
    commit_to(st, store);
    let back = reload(store);
    assert_eq!(back.job(&ids[1]).unwrap().state, JobState::Queued);
    assert_eq!(back.job(&ids[0]).unwrap().state, JobState::Succeeded);
    assert_eq!(
        store.read_job(&ids[0]).unwrap().unwrap().state,
        JobState::Succeeded as i32
    );
}

/// A state with one closed batch of two jobs (one failed) on a real
/// store, out of memory.
fn closed_batch_with_a_failed_job(
    store: &Arc<crate::store::RedbStore>,
) -> (State, BatchId, Vec<JobId>) {
    let mut st = durable(1);
    st.set_archive(store.clone());
    let (batch, ids) = st
        .submit(vec![spec(JobKind::Fib, "5", 0), spec(JobKind::Fib, "6", 0)])
        .unwrap();
    commit_to(&mut st, store);
    run_one_ok_one_failed(&mut st);
    commit_to(&mut st, store);
    assert!(st.batches.is_empty(), "closed and out of memory");
    (st, batch, ids)
}

/// What a restart on the store reads back.
fn reload(store: &crate::store::RedbStore) -> State {
    let mut back = durable(1);
    let mut report = RecoveryReport::default();
    let created = store
        .load(&mut |item| back.recover_item(item, &mut report))
        .expect("the store opens");
    back.set_created_at(created);
    back.finish_recovery(&mut report);
    back
}

#[test]
fn a_retry_calls_off_a_pending_retention_purge_of_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::store::RedbStore::open(dir.path()).unwrap());
    let (mut st, batch, ids) = closed_batch_with_a_failed_job(&store);
    // The purge is decided, then a retry comes before the commit.
    st.purge_closed(&[batch], false);
    retry_keeps_the_succeeded_job(&mut st, &store, &ids);
}

#[test]
fn a_retry_calls_off_a_pending_retention_purge_of_its_jobs_taken_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::store::RedbStore::open(dir.path()).unwrap());
    let mut st = durable(1);
    st.set_archive(store.clone());
    let now = fake_clock(&mut st);
    let (_, ids) = st
        .submit(vec![spec(JobKind::Fib, "5", 0), spec(JobKind::Fib, "6", 0)])
        .unwrap();
    commit_to(&mut st, &store);
    run_one_ok_one_failed(&mut st);
    // The commit closing the batch is taken; while it is written the batch
    // is still in memory, and expires: the purge takes it and its jobs out.
    let (n, closing) = st.take_changes().unwrap();
    now.fetch_add(3_600_001, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(st.purge_expired(), 2);
    store.write(closing).unwrap();
    st.committed(n, store.closed_counts().unwrap());
    // A retry before the purge's commit brings the batch back.
    retry_keeps_the_succeeded_job(&mut st, &store, &ids);
}

#[test]
fn a_retry_behind_a_purge_being_written_leaves_a_store_that_opens() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::store::RedbStore::open(dir.path()).unwrap());
    let (mut st, batch, ids) = closed_batch_with_a_failed_job(&store);
    // The purge's commit is taken (being written) when the retry reads
    // the batch back; it lands before the retry's commit.
    st.purge_closed(&[batch], false);
    let (n, purge) = st.take_changes().unwrap();
    let (retried, out) = st.retry_jobs(&[ids[1]]);
    out.send(None);
    assert_eq!(retried, 0, "a batch being purged has expired");
    store.write(purge).unwrap();
    st.committed(n, store.closed_counts().unwrap());
    commit_to(&mut st, &store);
    let back = reload(&store);
    assert!(back.job(&ids[1]).is_none() && back.job(&ids[0]).is_none());
    assert!(store.read_job(&ids[1]).unwrap().is_none(), "purged");
    // Once written, the batch is told expired or unknown, not half there.
    assert!(st.retry_jobs(&[ids[1]]).0 == 0);
}

#[test]
fn a_retry_and_a_cancel_in_one_commit_leave_the_batch_closed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::store::RedbStore::open(dir.path()).unwrap());
    let (mut st, batch, ids) = closed_batch_with_a_failed_job(&store);
    let (n, out) = st.retry_jobs(&[ids[1]]);
    out.send(None);
    assert_eq!(n, 1);
    let (_, out) = st.cancel(&[ids[1]]).unwrap();
    out.send(None);
    commit_to(&mut st, &store);
    assert!(st.batches.is_empty(), "closed again and out of memory");
    assert_eq!(
        (st.count(JobState::Succeeded), st.count(JobState::Cancelled)),
        (1, 1),
        "the batch's jobs are counted"
    );
    let back = reload(&store);
    assert!(back.job(&ids[1]).is_none(), "a restart reads no open batch");
    assert_eq!(
        store.closed_counts().unwrap(),
        [1, 0, 1],
        "the store counts the closed batch's jobs"
    );
    let (batches, total) = st.dashboard_batches(0, 10).finish().unwrap();
    assert_eq!((batches.len(), total), (1, 1));
    assert_eq!(batches[0].id, batch);
}

#[test]
fn the_memory_store_counts_what_it_evicted() {
    let mut st = State::new(settings(1));
    st.set_keep_finished(2);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("w"), tx);
    for round in 0..3 {
        let (_, ids) = st
            .submit(vec![spec(JobKind::Fib, "5", 0), spec(JobKind::Fib, "6", 0)])
            .unwrap();
        st.add_credit(s, 2, 0).send(None);
        let a = assigned(&mut rx);
        st.record_results(s, 0, vec![ok(&a[0]), fail(&a[1])])
            .send(None);
        st.evict_over_bound();
        assert!(st.job(&ids[0]).is_some(), "the newest batch is kept");
        assert_eq!(
            (st.count(JobState::Succeeded), st.count(JobState::Failed)),
            (round + 1, round + 1),
            "evicted jobs still count"
        );
    }
    assert!(st.jobs.len() <= 2);
}

/// Submits one job, runs it to success and commits: its batch closes.
fn close_one(
    st: &mut State,
    store: &crate::store::RedbStore,
    rx: &mut mpsc::UnboundedReceiver<(Option<u64>, pb::MasterMessage)>,
    s: SessionId,
) -> (BatchId, JobId) {
    let (batch, ids) = st.submit(vec![spec(JobKind::Fib, "7", 0)]).unwrap();
    st.add_credit(s, 1, 0).send(None);
    let a = assigned(rx);
    st.record_results(s, 0, vec![ok(&a[0])]).send(None);
    commit_to(st, store);
    (batch, ids[0])
}

#[test]
fn closed_batches_over_the_byte_budget_are_purged_oldest_first_and_said_purged() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::store::RedbStore::open(dir.path()).unwrap());
    let mut st = durable(1);
    st.set_archive(store.clone());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("w"), tx);
    let (old, old_job) = close_one(&mut st, &store, &mut rx, s);
    let one = store.closed_bytes().unwrap();
    assert!(one > 0, "a closed batch's bytes are counted");
    let (new, new_job) = close_one(&mut st, &store, &mut rx, s);
    let both = store.closed_bytes().unwrap();
    assert!(both > one);
    assert!(st.batches.is_empty(), "both closed and out of memory");
    // A budget one byte short: the oldest batch alone brings it under.
    let budget = both - 1;
    st.set_retention_bytes(budget, 0);
    let over = store.oldest_closed(both - budget, 10_000).unwrap();
    assert_eq!(over, vec![old]);
    st.purge_closed(&over, true);
    commit_to(&mut st, &store);
    assert!(store.read_job(&old_job).unwrap().is_none(), "purged");
    assert!(
        store.read_job(&new_job).unwrap().is_some(),
        "the newest kept"
    );
    assert_eq!(store.closed_bytes().unwrap(), both - one);
    let said = |st: &State| st.batch_not_found(old).to_string();
    for st in [&st, &{
        // After a restart, from what the store saved.
        let mut back = reload(&store);
        back.set_retention_bytes(budget, store.budget_purged_upto_ms().unwrap());
        back
    }] {
        let msg = said(st);
        assert!(
            msg.contains("was purged") && msg.contains("--retention-bytes"),
            "{msg}"
        );
    }
    assert!(store.read_batch(&new).unwrap().is_some());
}

#[test]
fn a_retry_calls_off_a_pending_budget_purge_and_the_store_stops_counting_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::store::RedbStore::open(dir.path()).unwrap());
    let (mut st, batch, ids) = closed_batch_with_a_failed_job(&store);
    let held = store.closed_bytes().unwrap();
    assert!(held > 0);
    st.set_retention_bytes(1, 0);
    st.purge_closed(&store.oldest_closed(held - 1, 10).unwrap(), true);
    let (n, out) = st.retry_jobs(&[ids[1]]);
    out.send(None);
    assert_eq!(n, 1);
    commit_to(&mut st, &store);
    assert!(
        store.read_batch(&batch).unwrap().is_some(),
        "kept: open again"
    );
    assert_eq!(
        store.closed_bytes().unwrap(),
        0,
        "an open batch is not counted"
    );
    assert!(store.oldest_closed(1, 10).unwrap().is_empty());
}

#[test]
fn the_memory_store_evicts_over_the_byte_budget_oldest_first() {
    let mut st = State::new(settings(1));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("w"), tx);
    let mut batches = Vec::new();
    for _ in 0..4 {
        let (batch, _) = st.submit(vec![spec(JobKind::Fib, "5", 0)]).unwrap();
        st.add_credit(s, 1, 0).send(None);
        let a = assigned(&mut rx);
        st.record_results(s, 0, vec![ok(&a[0])]).send(None);
        batches.push(batch);
    }
    // One finished batch is about 100 bytes here: a budget for two.
    let one = st.jobs.values().next().unwrap().stored_bytes() + 16;
    st.set_retention_bytes(2 * one, 0);
    st.evict_over_bound();
    assert!(st.batches.contains_key(&batches[3]) && st.batches.contains_key(&batches[2]));
    assert!(!st.batches.contains_key(&batches[1]) && !st.batches.contains_key(&batches[0]));
    let msg = st.batch_not_found(batches[0]).to_string();
    assert!(
        msg.contains("was evicted") && msg.contains("--retention-bytes"),
        "{msg}"
    );
    assert_eq!(st.count(JobState::Succeeded), 4, "evicted jobs still count");
}

/// The ids the store's state index lists for `state`.
fn indexed_ids(store: &crate::store::RedbStore, state: JobState) -> Vec<JobId> {
    let mut ids = Vec::new();
    store
        .scan_jobs_in_state(state, None, &mut |r| {
            ids.push(JobId::from_slice(&r.id).unwrap());
            true
        })
        .unwrap();
    ids
}

#[test]
fn the_store_indexes_failed_and_cancelled_jobs_through_retries_and_purges() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::store::RedbStore::open(dir.path()).unwrap());
    let (mut st, batch, ids) = closed_batch_with_a_failed_job(&store);
    assert_eq!(indexed_ids(&store, JobState::Failed), vec![ids[1]]);
    assert!(indexed_ids(&store, JobState::Cancelled).is_empty());
    // Other states are found by a scan.
    assert_eq!(indexed_ids(&store, JobState::Succeeded), vec![ids[0]]);

    // Retried: out of the index; cancelled while queued: in the other.
    let (n, out) = st.retry_jobs(&[ids[1]]);
    out.send(None);
    assert_eq!(n, 1);
    commit_to(&mut st, &store);
    assert!(indexed_ids(&store, JobState::Failed).is_empty());
    let (_, out) = st.cancel(&[ids[1]]).unwrap();
    out.send(None);
    commit_to(&mut st, &store);
    assert_eq!(indexed_ids(&store, JobState::Cancelled), vec![ids[1]]);
    assert!(st.batches.is_empty(), "closed again");

    // A second batch fails a job; the first is purged: only the second's
    // stays indexed.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("w2"), tx);
    let (_, more) = st.submit(vec![spec(JobKind::Fib, "8", 0)]).unwrap();
    st.add_credit(s, 1, 0).send(None);
    let a = assigned(&mut rx);
    st.record_results(s, 0, vec![fail(&a[0])]).send(None);
    commit_to(&mut st, &store);
    st.purge_closed(&[batch], false);
    commit_to(&mut st, &store);
    assert_eq!(indexed_ids(&store, JobState::Failed), more);
    assert!(indexed_ids(&store, JobState::Cancelled).is_empty());
}

#[path = "limits_tests.rs"]
mod limits;

#[test]
fn a_batch_naming_its_own_new_job_twice_counts_it_once() {
    let keyed = pb::JobSpec {
        idempotency_key: "k".into(),
        ..spec(JobKind::Sleep, "1", 0)
    };
    let run = |st: &mut State| {
        let (_, ids) = st.submit(vec![keyed.clone(), keyed.clone()]).unwrap();
        assert_eq!(ids[0], ids[1], "the key names the job just made");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = st.add_session(&hello("w"), tx);
        st.add_credit(s, 0, 2).send(None);
        let a = assigned(&mut rx);
        assert_eq!(a.len(), 1);
        st.record_results(s, 0, vec![ok(&a[0])]).send(None);
    };
    // The memory store, evicting it.
    let mut st = State::new(settings(1));
    st.set_keep_finished(0);
    run(&mut st);
    assert_eq!(st.evict_over_bound(), 1);
    assert_eq!(st.count(JobState::Succeeded), 1);
    // The store, closing it.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::store::RedbStore::open(dir.path()).unwrap());
    let mut st = durable(1);
    st.set_archive(store.clone());
    run(&mut st);
    commit_to(&mut st, &store);
    assert!(st.batches.is_empty(), "closed and out of memory");
    assert_eq!(store.closed_counts().unwrap(), [1, 0, 0]);
    assert_eq!(st.count(JobState::Succeeded), 1);
}

#[test]
fn an_evicted_job_is_told_evicted_however_long_its_submit_took() {
    let mut st = State::new(settings(1));
    st.set_keep_finished(0);
    // Enough jobs that making their ids spans milliseconds: each id must
    // be covered by what is kept of the evicted batches (their batch id's
    // time), or the job is told "not known".
    let (batch, ids) = st
        .submit((0..3000).map(|_| spec(JobKind::Sleep, "1", 0)).collect())
        .unwrap();
    let newest = ids.iter().filter_map(|id| id.made_ms()).max().unwrap();
    assert!(newest <= batch.made_ms().unwrap());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("w"), tx);
    st.add_credit(s, 0, 3000).send(None);
    let results = assigned(&mut rx).iter().map(ok).collect();
    st.record_results(s, 0, results).send(None);
    assert_eq!(st.evict_over_bound(), 3000);
    for id in [ids[0], ids[2999]] {
        let e = st.resolve(&[id.to_string()], "").unwrap_err().to_string();
        assert!(e.contains("was evicted"), "{e}");
    }
}

#[test]
fn a_retry_while_the_commit_closing_its_batches_is_written_counts_each_job_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::store::RedbStore::open(dir.path()).unwrap());
    let mut st = durable(1);
    st.set_archive(store.clone());
    let keyed = pb::JobSpec {
        idempotency_key: "k".into(),
        ..spec(JobKind::Fib, "5", 0)
    };
    // Batch A makes J, which fails; batch B names J again and makes K,
    // which succeeds: both batches are finished.
    let (_, first) = st.submit(vec![keyed.clone()]).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("w"), tx);
    st.add_credit(s, 1, 0).send(None);
    let a = assigned(&mut rx);
    st.record_results(s, 0, vec![fail(&a[0])]).send(None);
    let (_, second) = st.submit(vec![keyed, spec(JobKind::Fib, "6", 0)]).unwrap();
    assert_eq!(second[0], first[0]);
    st.add_credit(s, 1, 0).send(None);
    let a = assigned(&mut rx);
    st.record_results(s, 0, vec![ok(&a[0])]).send(None);
    // The committer takes the commit closing both, and a retry of J comes
    // while it is written.
    let (n, changes) = st.take_changes().unwrap();
    let (retried, out) = st.retry_jobs(&first);
    out.send(None);
    assert_eq!(retried, 1);
    store.write(changes).unwrap();
    st.committed(n, store.closed_counts().unwrap());
    let counts = |st: &State| {
        (
            st.count(JobState::Queued),
            st.count(JobState::Succeeded),
            st.count(JobState::Failed),
        )
    };
    assert_eq!(counts(&st), (1, 1, 0), "the store counts both closed");
    commit_to(&mut st, &store);
    assert_eq!(counts(&st), (1, 1, 0));
    assert_eq!(
        store.closed_counts().unwrap(),
        [0, 0, 0],
        "both batches are open again in the store"
    );
    let back = reload(&store);
    assert_eq!(back.job(&first[0]).unwrap().state, JobState::Queued);
    assert_eq!(back.job(&second[1]).unwrap().state, JobState::Succeeded);
    assert_eq!(counts(&back), (1, 1, 0));
}

#[path = "model_tests.rs"]
mod model;
