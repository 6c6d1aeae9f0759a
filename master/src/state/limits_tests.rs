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
