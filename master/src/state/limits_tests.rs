//! Concurrency limits: a job holding a limit runs only while fewer than
//! its permits hold it, and every end of an attempt gives the permit back.

use super::*;

fn limited(arg: &str, name: &str, permits: u32) -> pb::JobSpec {
    pb::JobSpec {
        limits: vec![pb::JobLimit {
            name: name.into(),
            permits,
        }],
        ..spec(JobKind::Sleep, arg, 0)
    }
}

/// (holders, holders running, waiters) of limit `name`.
fn report(st: &State, name: &str) -> (usize, usize, u32) {
    let r = st.limits_report(name);
    match r.limits.as_slice() {
        [] => (0, 0, 0),
        [l] => (
            l.holders.len(),
            l.holders.iter().filter(|h| !h.worker.is_empty()).count(),
            l.waiters,
        ),
        more => panic!("one limit asked for, got {more:?}"),
    }
}

#[test]
fn a_limit_caps_running_jobs_without_holding_back_jobs_behind_them() {
    let mut st = State::new(settings(3));
    let mut specs: Vec<pb::JobSpec> = (0..6).map(|i| limited(&i.to_string(), "db", 2)).collect();
    specs.extend((10..13).map(|i| spec(JobKind::Sleep, &i.to_string(), 0)));
    st.submit(specs).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("w"), tx);
    st.add_credit(s, 0, 100).send(None);
    let first = assigned(&mut rx);
    let args: Vec<&str> = first.iter().map(|a| a.arg.as_str()).collect();
    assert_eq!(args, ["0", "1", "10", "11", "12"]);
    assert_eq!(report(&st, "db"), (2, 2, 4));
    // As each limited job ends, the next one is handed out.
    let mut running: Vec<pb::Assignment> = first.into_iter().take(2).collect();
    for next in ["2", "3", "4", "5"] {
        let done = running.remove(0);
        st.record_results(s, 0, vec![ok(&done)]).send(None);
        let got = assigned(&mut rx);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].arg, next);
        running.extend(got);
        assert_eq!(report(&st, "db").0, 2);
    }
    for done in running {
        st.record_results(s, 0, vec![ok(&done)]).send(None);
    }
    assert!(st.limits_report("").limits.is_empty());
}

#[test]
fn a_job_runs_only_when_every_limit_it_carries_has_room() {
    let mut st = State::new(settings(3));
    let both = pb::JobSpec {
        limits: vec![
            pb::JobLimit {
                name: "db".into(),
                permits: 2,
            },
            pb::JobLimit {
                name: "api".into(),
                permits: 1,
            },
        ],
        ..spec(JobKind::Sleep, "2", 0)
    };
    // Sleeps of 1 (api), 2 (both) and 3 (db) ms.
    st.submit(vec![limited("1", "api", 1), both, limited("3", "db", 2)])
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("w"), tx);
    st.add_credit(s, 0, 10).send(None);
    let got = assigned(&mut rx);
    let args: Vec<&str> = got.iter().map(|a| a.arg.as_str()).collect();
    // "both" waits for api; "db" behind it is not held back.
    assert_eq!(args, ["1", "3"]);
    st.record_results(s, 0, vec![ok(&got[0])]).send(None);
    let next = assigned(&mut rx);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].arg, "2");
    assert_eq!(report(&st, "db").0, 2);
    assert_eq!(report(&st, "api").0, 1);
}

fn with_limits(arg: &str, limits: &[(&str, u32)]) -> pb::JobSpec {
    pb::JobSpec {
        limits: limits
            .iter()
            .map(|(n, p)| pb::JobLimit {
                name: (*n).into(),
                permits: *p,
            })
            .collect(),
        ..spec(JobKind::Sleep, arg, 0)
    }
}

#[test]
fn a_waiter_waits_on_the_limit_that_holds_it_back_and_moves_when_that_one_frees() {
    let mut st = State::new(settings(3));
    // "A" fills a, "W" needs a and b, "B" fills b after W queued.
    st.submit(vec![limited("1", "a", 1)]).unwrap();
    st.submit(vec![with_limits("2", &[("a", 1), ("b", 1)])])
        .unwrap();
    st.submit(vec![limited("3", "b", 1)]).unwrap();
    assert_eq!(report(&st, "a"), (1, 0, 1), "W waits on a");
    assert_eq!(
        report(&st, "b"),
        (1, 0, 0),
        "B holds b; W is not b's waiter"
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("w"), tx);
    st.add_credit(s, 0, 10).send(None);
    let got = assigned(&mut rx);
    let args: Vec<&str> = got.iter().map(|a| a.arg.as_str()).collect();
    assert_eq!(args, ["1", "3"]);
    // A ends: W fits a but b is full, so it moves to b's queue.
    st.record_results(s, 0, vec![ok(&got[0])]).send(None);
    assert!(
        assigned(&mut rx).is_empty(),
        "W is not handed out while b is full"
    );
    assert_eq!(report(&st, "a"), (0, 0, 0));
    assert_eq!(report(&st, "b"), (1, 1, 1));
    // B ends: W runs, holding both.
    st.record_results(s, 0, vec![ok(&got[1])]).send(None);
    let w = assigned(&mut rx);
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].arg, "2");
    assert_eq!(report(&st, "a").0, 1);
    assert_eq!(report(&st, "b").0, 1);
}

#[test]
fn waiters_held_back_by_one_limit_are_not_walked_when_another_frees() {
    // The review's case: jobs carrying b=1 and a loose a; each finish
    // frees both, and the next job goes, in order, with every other
    // waiter left on b's queue alone.
    let mut st = State::new(settings(3));
    let specs: Vec<pb::JobSpec> = (0..50)
        .map(|i| with_limits(&i.to_string(), &[("a", 1_000_000), ("b", 1)]))
        .collect();
    st.submit(specs).unwrap();
    assert_eq!(report(&st, "a").2, 0, "nothing waits on a");
    assert_eq!(report(&st, "b"), (1, 0, 49));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = st.add_session(&hello("w"), tx);
    st.add_credit(s, 0, 100).send(None);
    for i in 0..50 {
        let got = assigned(&mut rx);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].arg, i.to_string());
        st.record_results(s, 0, vec![ok(&got[0])]).send(None);
    }
    assert!(st.limits_report("").limits.is_empty());
}

/// Submits two jobs holding `db` (1 permit): the first runs on `a`, the
/// second waits; `b` has room for one job.
struct Two {
    st: State,
    ids: Vec<JobId>,
    a: SessionId,
    first: pb::Assignment,
    b: SessionId,
    rx_b: mpsc::UnboundedReceiver<(Option<u64>, pb::MasterMessage)>,
}

fn two(st: State) -> Two {
    let mut st = st;
    let (_, ids) = st
        .submit(vec![limited("1", "db", 1), limited("2", "db", 1)])
        .unwrap();
    let (tx_a, mut rx_a) = mpsc::unbounded_channel();
    let a = st.add_session(&hello("a"), tx_a);
    st.add_credit(a, 0, 1).send(None);
    let first = assigned(&mut rx_a).remove(0);
    let (tx_b, mut rx_b) = mpsc::unbounded_channel();
    let b = st.add_session(&hello("b"), tx_b);
    st.add_credit(b, 0, 1).send(None);
    assert!(assigned(&mut rx_b).is_empty(), "the second job must wait");
    assert_eq!(report(&st, "db"), (1, 1, 1));
    Two {
        st,
        ids,
        a,
        first,
        b,
        rx_b,
    }
}

/// After the first job's attempt ended, one job runs on `b` and holds
/// the permit.
fn handed_on(mut t: Two, how: &str) {
    let got = assigned(&mut t.rx_b);
    assert_eq!(got.len(), 1, "{how}: {got:?}");
    let (holders, running, _) = report(&t.st, "db");
    assert_eq!((holders, running), (1, 1), "{how}");
}

#[test]
fn every_end_of_an_attempt_gives_the_permit_back() {
    // Finished.
    let mut t = two(State::new(settings(3)));
    t.st.record_results(t.a, 0, vec![ok(&t.first)]).send(None);
    handed_on(t, "finish");

    // Failed for good.
    let mut t = two(State::new(settings(1)));
    t.st.record_results(t.a, 0, vec![fail(&t.first)]).send(None);
    assert_eq!(t.st.job(&t.ids[0]).unwrap().state, JobState::Failed);
    handed_on(t, "fail");

    // Failed and queued again: it waits behind the other.
    let mut t = two(State::new(settings(3)));
    t.st.record_results(t.a, 0, vec![fail(&t.first)]).send(None);
    assert_eq!(report(&t.st, "db").2, 1);
    handed_on(t, "retry");

    // Cancelled while running.
    let mut t = two(State::new(settings(3)));
    let (_, out) = t.st.cancel(&t.ids[..1]).unwrap();
    out.send(None);
    handed_on(t, "cancel");

    // Its worker lost.
    let mut t = two(State::new(settings(3)));
    let (_, out) = t.st.end_session(t.a, "stream closed");
    out.send(None);
    handed_on(t, "lost worker");

    // Returned by a draining worker.
    let mut t = two(State::new(settings(3)));
    t.st.set_draining(t.a);
    let id = t.ids[0];
    t.st.return_jobs(t.a, &[id]).send(None);
    handed_on(t, "drain return");
}

#[test]
fn a_cancelled_waiter_stops_waiting() {
    let mut t = two(State::new(settings(3)));
    let (_, out) = t.st.cancel(&t.ids[1..]).unwrap();
    out.send(None);
    assert_eq!(report(&t.st, "db"), (1, 1, 0));
    t.st.record_results(t.a, 0, vec![ok(&t.first)]).send(None);
    assert!(t.st.limits_report("").limits.is_empty());
}

#[test]
fn limits_survive_a_restart_and_the_running_jobs_permit_is_given_back() {
    let mut log = Vec::new();
    let mut t = two(durable(3));
    commit(&mut t.st, &mut log);
    let mut back = restart(&log, 3);
    // One job holds the permit again (queued), the other waits.
    assert_eq!(report(&back, "db"), (1, 0, 1));
    let job = back.job(&t.ids[1]).unwrap();
    assert_eq!(job.x().limits.len(), 1);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = back.add_session(&hello("c"), tx);
    back.add_credit(s, 0, 5).send(None);
    let got = assigned(&mut rx);
    assert_eq!(got.len(), 1);
    back.record_results(s, 0, vec![ok(&got[0])]).send(None);
    assert_eq!(assigned(&mut rx).len(), 1);
    let _ = (&mut t.rx_b, t.b);
}

#[test]
fn bad_limits_are_refused_naming_the_field_and_the_limit() {
    let mut st = State::new(settings(3));
    let cases: Vec<(Vec<pb::JobLimit>, &str)> = vec![
        (
            vec![pb::JobLimit {
                name: "x".repeat(129),
                permits: 1,
            }],
            "jobs[1].limits[0].name: 129 bytes",
        ),
        (
            vec![pb::JobLimit {
                name: String::new(),
                permits: 1,
            }],
            "jobs[1].limits[0].name: 0 bytes",
        ),
        (
            vec![pb::JobLimit {
                name: "db".into(),
                permits: 0,
            }],
            "jobs[1].limits[0].permits: 0 is out of range 1 to 1000000",
        ),
        (
            vec![pb::JobLimit {
                name: " db".into(),
                permits: 1,
            }],
            "jobs[1].limits[0].name: \" db\" starts or ends with white space",
        ),
        (
            vec![pb::JobLimit {
                name: "a=b".into(),
                permits: 1,
            }],
            "jobs[1].limits[0].name",
        ),
        (
            (0..9)
                .map(|i| pb::JobLimit {
                    name: format!("l{i}"),
                    permits: 1,
                })
                .collect(),
            "jobs[1].limits: 9 limits is over the limit of 8 per job",
        ),
        (
            vec![
                pb::JobLimit {
                    name: "db".into(),
                    permits: 1,
                },
                pb::JobLimit {
                    name: "db".into(),
                    permits: 2,
                },
            ],
            "jobs[1].limits[1].name: \"db\" is named twice",
        ),
    ];
    for (limits, want) in cases {
        let bad = pb::JobSpec {
            limits,
            ..spec(JobKind::Sleep, "1", 0)
        };
        let err = st
            .submit(vec![spec(JobKind::Sleep, "1", 0), bad])
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains(want)),
            "{err:?} should say {want:?}"
        );
    }
    assert_eq!(st.count(JobState::Queued), 0);
}

/// A randomized check of the limits against their rules: random submits
/// (random limits and priorities), credit, successes, failures with
/// backoff, cancels, lost workers, drain returns, retries and master
/// restarts; after every step no limit has more running jobs or holders
/// than its permits, every holder is queued or running and every running
/// limited job holds its permits; at the end every job finishes and no
/// permit is left.
mod model {
    use super::*;
    use std::sync::atomic::Ordering::SeqCst;

    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    const NAMES: [(&str, u32); 3] = [("a", 2), ("b", 1), ("c", 3)];

    type Rx = mpsc::UnboundedReceiver<(Option<u64>, pb::MasterMessage)>;

    struct W {
        sid: SessionId,
        rx: Rx,
        held: Vec<pb::Assignment>,
    }

    fn drain(ws: &mut [W]) {
        for w in ws.iter_mut() {
            while let Ok((_, m)) = w.rx.try_recv() {
                match m.msg {
                    Some(pb::master_message::Msg::Assign(a)) => w.held.extend(a.jobs),
                    Some(pb::master_message::Msg::Cancel(c)) => {
                        w.held.retain(|a| !c.job_ids.contains(&a.job_id))
                    }
                    _ => {}
                }
            }
        }
    }

    fn check(st: &State, step: usize, op: &str) {
        for (name, permits) in NAMES {
            let running = st
                .jobs
                .values()
                .filter(|j| j.state == JobState::Running)
                .filter(|j| j.x().limits.iter().any(|(n, _)| &**n == name))
                .count();
            assert!(
                running <= permits as usize,
                "step {step} {op}: {running} running with {name}={permits}"
            );
            let r = st.limits_report(name);
            let holders: Vec<String> = r
                .limits
                .first()
                .map(|l| l.holders.iter().map(|h| h.job_id.clone()).collect())
                .unwrap_or_default();
            assert!(
                holders.len() <= permits as usize,
                "step {step} {op}: {} holders of {name}",
                holders.len()
            );
            for h in &holders {
                let id = JobId::parse("h", h).unwrap();
                let j = st.jobs.get(&id);
                assert!(
                    j.is_some_and(|j| matches!(j.state, JobState::Queued | JobState::Running)),
                    "step {step} {op}: holder {h} of {name} is {:?}",
                    j.map(|j| j.state)
                );
            }
            for j in st.jobs.values() {
                if j.state == JobState::Running && j.x().limits.iter().any(|(n, _)| &**n == name) {
                    assert!(
                        holders.contains(&j.id.to_string()),
                        "step {step} {op}: running job {} not a holder of {name}",
                        j.id
                    );
                }
            }
        }
    }

    fn new_worker(st: &mut State, n: usize) -> W {
        let (tx, rx) = mpsc::unbounded_channel();
        let sid = st.add_session(&hello(&format!("w{n}")), tx);
        W {
            sid,
            rx,
            held: Vec::new(),
        }
    }

    fn run(seed: u64, restarts: bool) {
        let mut rng = Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1);
        let mk = || Settings {
            retry: RetryPolicy {
                base_ms: 50,
                max_ms: 200,
            },
            durable: true,
            ..settings(3)
        };
        let mut st = State::new(mk());
        let mut now = fake_clock(&mut st);
        let mut log: Vec<Changes> = Vec::new();
        let mut ids: Vec<JobId> = Vec::new();
        let mut wn = 0;
        let mut ws: Vec<W> = (0..3)
            .map(|_| {
                wn += 1;
                new_worker(&mut st, wn)
            })
            .collect();
        for step in 0..400 {
            let op = rng.below(12);
            let opname;
            match op {
                0 | 1 => {
                    opname = "submit";
                    let n = 1 + rng.below(4);
                    let specs = (0..n)
                        .map(|_| {
                            let mut limits = Vec::new();
                            for (name, p) in NAMES {
                                if rng.below(2) == 0 {
                                    limits.push(pb::JobLimit {
                                        name: name.into(),
                                        permits: p,
                                    });
                                }
                            }
                            pb::JobSpec {
                                limits,
                                ..spec(JobKind::Sleep, "5", rng.below(3) as i32)
                            }
                        })
                        .collect();
                    let (_, new) = st.submit(specs).unwrap();
                    ids.extend(new);
                    st.dispatch().send(None);
                }
                2 | 3 => {
                    opname = "credit";
                    let w = rng.below(ws.len() as u64) as usize;
                    let k = 1 + rng.below(3) as u32;
                    st.add_credit(ws[w].sid, 0, k).send(None);
                }
                4..=6 => {
                    let w = rng.below(ws.len() as u64) as usize;
                    if ws[w].held.is_empty() {
                        continue;
                    }
                    let i = rng.below(ws[w].held.len() as u64) as usize;
                    let a = ws[w].held.remove(i);
                    let r = if rng.below(3) == 0 {
                        opname = "fail";
                        fail(&a)
                    } else {
                        opname = "ok";
                        ok(&a)
                    };
                    st.record_results(ws[w].sid, 0, vec![r]).send(None);
                }
                7 => {
                    opname = "cancel";
                    if ids.is_empty() {
                        continue;
                    }
                    let id = ids[rng.below(ids.len() as u64) as usize];
                    if let Ok((_, out)) = st.cancel(&[id]) {
                        out.send(None);
                    }
                }
                8 => {
                    opname = "lost";
                    let w = rng.below(ws.len() as u64) as usize;
                    let old = ws.remove(w);
                    st.end_session(old.sid, "test").1.send(None);
                    wn += 1;
                    ws.push(new_worker(&mut st, wn));
                }
                9 => {
                    opname = "return";
                    let w = rng.below(ws.len() as u64) as usize;
                    if ws[w].held.is_empty() {
                        continue;
                    }
                    let a = ws[w].held.remove(0);
                    let id = JobId::parse("a", &a.job_id).unwrap();
                    st.return_jobs(ws[w].sid, &[id]).send(None);
                }
                10 => {
                    opname = "retry";
                    let failed: Vec<JobId> = ids
                        .iter()
                        .copied()
                        .filter(|id| st.jobs.get(id).is_some_and(|j| j.state == JobState::Failed))
                        .collect();
                    st.retry_jobs(&failed).1.send(None);
                }
                _ => {
                    if restarts && rng.below(4) == 0 {
                        opname = "restart";
                        if let Some((_, c)) = st.take_changes() {
                            log.push(c);
                        }
                        let mut back = State::new(mk());
                        now = fake_clock(&mut back);
                        back.recover(recovered_from(&log)).unwrap();
                        st = back;
                        ws.clear();
                        ws = (0..3)
                            .map(|_| {
                                wn += 1;
                                new_worker(&mut st, wn)
                            })
                            .collect();
                    } else {
                        opname = "tick";
                        now.fetch_add(100, SeqCst);
                        st.promote_due().send(None);
                    }
                }
            }
            if let Some((_, c)) = st.take_changes() {
                log.push(c);
            }
            drain(&mut ws);
            check(&st, step, opname);
        }
        // Liveness: with credit and successes, everything ends.
        for round in 0..10_000 {
            now.fetch_add(1000, SeqCst);
            st.promote_due().send(None);
            for w in &ws {
                st.add_credit(w.sid, 0, 2).send(None);
            }
            drain(&mut ws);
            check(&st, 100_000 + round, "drain");
            let mut any = false;
            for w in &mut ws {
                for a in std::mem::take(&mut w.held) {
                    any = true;
                    st.record_results(w.sid, 0, vec![ok(&a)]).send(None);
                }
            }
            drain(&mut ws);
            let open = st
                .jobs
                .values()
                .filter(|j| matches!(j.state, JobState::Queued | JobState::Running))
                .count();
            if open == 0 {
                break;
            }
            if !any && round > 50 {
                let stuck: Vec<String> = st
                    .jobs
                    .values()
                    .filter(|j| matches!(j.state, JobState::Queued | JobState::Running))
                    .map(|j| {
                        format!(
                            "{} {:?} {:?} prio {}",
                            j.id,
                            j.state,
                            j.x().limits,
                            j.priority
                        )
                    })
                    .collect();
                panic!(
                    "seed {seed}: stuck jobs: {stuck:#?}\nlimits: {:#?}",
                    st.limits_report("")
                );
            }
        }
        assert!(
            st.limits_report("").limits.is_empty(),
            "seed {seed}: permits left: {:#?}",
            st.limits_report("")
        );
    }

    #[test]
    fn random_histories_keep_every_limit() {
        for seed in 1..120 {
            run(seed, false);
        }
    }

    #[test]
    fn random_histories_keep_every_limit_across_restarts() {
        for seed in 1..120 {
            run(seed, true);
        }
    }
}
