//! The invariants, checked after every step: the state against the model,
//! against itself, and against what clients were told. Each check has a
//! name in `SWITCHES`; one that is off is not reported.

use drover_common::ids::{BatchId, JobId};
use drover_common::pb::JobState;

use super::model::{Final, MJob, is_finished};
use super::sut::{BatchView, JobView, SessionView};
use super::world::{Ctx, World};
use super::{Map, Set, Violation, bad};

/// Returns the violation of `$check` unless `$ok` holds or the check is
/// off (looked up only when it fails).
macro_rules! ensure {
    ($world:expr, $ok:expr, $check:expr, $($msg:tt)*) => {
        if !$ok && $world.sw.on($check) {
            return bad($check, format!($($msg)*));
        }
    };
}

/// Returns the violation of `$check` unless the check is off.
macro_rules! broken {
    ($world:expr, $check:expr, $($msg:tt)*) => {
        ensure!($world, false, $check, $($msg)*)
    };
}

const STATES: [JobState; 5] = [
    JobState::Queued,
    JobState::Running,
    JobState::Succeeded,
    JobState::Failed,
    JobState::Cancelled,
];

impl World<'_> {
    /// Checks every invariant, and records in the model what the step
    /// finished or purged.
    pub(super) fn check(&mut self, ctx: &Ctx) -> Result<(), Violation> {
        let views = self.sut.jobs();
        let sessions = self.sut.sessions();
        // Jobs by their number in the history.
        let mut by_n: Vec<Option<&JobView>> = vec![None; self.names.len()];
        for v in &views {
            let Some(&n) = self.names.get(&v.id) else {
                broken!(self, "table", "unknown job {} in the table", v.id);
                continue;
            };
            ensure!(
                self,
                by_n[n].replace(v).is_none(),
                "table",
                "j{n} is in the table twice"
            );
        }
        for s in STATES {
            let recount = views.iter().filter(|v| v.state == s).count() as u64;
            let count = self.sut.count(s);
            ensure!(
                self,
                count == recount,
                "counts",
                "count({s:?}) = {count}, the table has {recount}"
            );
        }
        self.check_held(&views, &by_n, &sessions)?;
        self.check_legal(&views)?;
        let purged = self.check_jobs(&by_n, ctx)?;
        // Record what this step finished.
        let now = self.now();
        for (&n, m) in self.model.jobs.iter_mut() {
            if m.fin.is_none()
                && is_finished(m.state)
                && let Some(v) = by_n[n]
            {
                m.fin = Final::of(v);
                m.finished_at = now;
            }
        }
        let batches = self.sut.batches();
        let listed: Map<BatchId, &BatchView> = batches.iter().map(|b| (b.id, b)).collect();
        self.check_batches(&batches, &listed, &by_n, ctx, purged)?;
        self.check_finished_lists(&batches, &by_n)?;
        self.check_told(&listed, &by_n)?;
        self.check_queues(&views, &sessions, ctx)
    }

    /// RUNNING iff held by exactly one live session, the one it names.
    fn check_held(
        &self,
        views: &[JobView],
        by_n: &[Option<&JobView>],
        sessions: &[SessionView],
    ) -> Result<(), Violation> {
        let mut holders: Map<JobId, Vec<u64>> = Map::default();
        for s in sessions {
            for id in &s.held {
                holders.entry(*id).or_default().push(s.id);
                let v = self.names.get(id).and_then(|n| by_n[*n]);
                let ok = v.is_some_and(|v| v.state == JobState::Running && v.session == Some(s.id));
                ensure!(
                    self,
                    ok,
                    "held",
                    "s{} holds {} which is {:?}",
                    s.id,
                    self.j(id),
                    v.map(|v| (v.state, v.session))
                );
            }
        }
        for v in views {
            let h = holders.get(&v.id).map_or(&[][..], |h| h.as_slice());
            ensure!(
                self,
                v.state != JobState::Running || h.len() == 1,
                "held",
                "{} is RUNNING (session {:?}, attempt {}) but held by sessions {h:?}",
                self.j(&v.id),
                v.session,
                v.attempts
            );
        }
        Ok(())
    }

    /// Each job's fields fit its state.
    fn check_legal(&self, views: &[JobView]) -> Result<(), Violation> {
        for v in views {
            let ok = match v.state {
                JobState::Queued => v.session.is_none(),
                JobState::Running => v.session.is_some(),
                JobState::Succeeded => v.session.is_none() && v.output.is_some(),
                JobState::Failed | JobState::Cancelled => v.session.is_none() && v.error.is_some(),
                JobState::Unspecified => false,
            };
            ensure!(
                self,
                ok,
                "legal",
                "{} is {:?} with session {:?}, output {:?}, error {:?}",
                self.j(&v.id),
                v.state,
                v.session,
                v.output,
                v.error
            );
        }
        Ok(())
    }

    /// Every job of the model against the state; returns the jobs this
    /// step purged.
    fn check_jobs(&self, by_n: &[Option<&JobView>], ctx: &Ctx) -> Result<Vec<usize>, Violation> {
        // After a crash, a difference is recovery's.
        let after = |check: &'static str| -> &'static str {
            if ctx.recovered {
                "recovered-matches"
            } else {
                check
            }
        };
        let mut purged = Vec::new();
        for (&n, m) in &self.model.jobs {
            let Some(v) = by_n[n] else {
                match ctx.purge {
                    Some(cutoff) => {
                        ensure!(
                            self,
                            m.fin.is_some() && m.finished_at < cutoff,
                            "purge",
                            "j{n} was purged while {:?}, finished at {} (cutoff {cutoff})",
                            m.state,
                            m.finished_at
                        );
                        purged.push(n);
                    }
                    None => broken!(self, after("table"), "j{n} ({:?}) is missing", m.state),
                }
                continue;
            };
            ensure!(
                self,
                v.batch == m.batch && v.max_attempts == m.max_attempts,
                after("table"),
                "j{n} changed batch or max_attempts"
            );
            self.check_job(n, m, v, ctx)?;
        }
        Ok(purged)
    }

    /// One job against the model: state, attempts, history, result.
    fn check_job(&self, n: usize, m: &MJob, v: &JobView, ctx: &Ctx) -> Result<(), Violation> {
        let after = |check: &'static str| -> &'static str {
            if ctx.recovered {
                "recovered-matches"
            } else {
                check
            }
        };
        ensure!(
            self,
            !ctx.recovered || m.state != JobState::Queued || v.state == JobState::Queued,
            "recovered-queued",
            "j{n} was queued or running at the last commit, recovery made it {:?} ({:?}); attempts {}, counted {} of {}",
            v.state,
            v.error,
            v.attempts,
            v.counted,
            v.allowance
        );
        ensure!(
            self,
            v.state == m.state && v.session == m.holder,
            after("state"),
            "j{n} is {:?} on {:?}, the model has {:?} on {:?}; attempt_errors {:?}",
            v.state,
            v.session,
            m.state,
            m.holder,
            v.attempt_errors
        );
        ensure!(
            self,
            v.counted <= v.allowance,
            "attempts",
            "j{n} ({:?}) has counted {} over its allowance {}",
            v.state,
            v.counted,
            v.allowance
        );
        ensure!(
            self,
            (v.attempts, v.counted, v.allowance) == (m.attempts, m.counted, m.allowance),
            after("attempts"),
            "j{n} ({:?}) has attempts {}, counted {}, allowance {}; the model {}, {}, {}; attempt_errors {:?}",
            v.state,
            v.attempts,
            v.counted,
            v.allowance,
            m.attempts,
            m.counted,
            m.allowance,
            v.attempt_errors
        );
        ensure!(
            self,
            v.state != JobState::Failed || m.fatal || v.counted == v.allowance,
            "exhausted",
            "j{n} FAILED ({:?}) after {} counted attempts of {}, without a fatal failure",
            v.error,
            v.counted,
            v.allowance
        );
        let numbers: Vec<u32> = v.errors.iter().map(|(a, _)| *a).collect();
        ensure!(
            self,
            numbers.windows(2).all(|w| w[0] < w[1])
                && numbers.iter().all(|a| (1..=v.attempts).contains(a)),
            "errors-once",
            "j{n} (attempts {}) has attempt_errors {:?}",
            v.attempts,
            v.attempt_errors
        );
        let counted = v.errors.iter().filter(|(_, c)| *c).count() as u32;
        ensure!(
            self,
            v.errors == m.errors && counted == v.counted,
            after("attempt-errors"),
            "j{n} (counted {}) has attempt_errors {:?}; the model's (attempt, counted): {:?}",
            v.counted,
            v.attempt_errors,
            m.errors
        );
        if v.state == JobState::Succeeded {
            let from = |o: Option<u64>| {
                o.map_or("nothing".into(), |o| match self.nonces.get(&o) {
                    Some((id, a)) => format!("n{o} ({}@{a})", self.j(id)),
                    None => format!("n{o} (unknown)"),
                })
            };
            ensure!(
                self,
                v.output == m.output,
                after("result-attempt"),
                "j{n} SUCCEEDED with the result of {}, the model took {}",
                from(v.output),
                from(m.output)
            );
        }
        if let Some(fin) = &m.fin {
            let now_fin = Final::of(v);
            ensure!(
                self,
                now_fin.as_ref() == Some(fin),
                after("finality"),
                "j{n} finished as {fin:?}, is now {:?}: {now_fin:?}",
                v.state
            );
        }
        Ok(())
    }

    /// Batches against the model: what they list, and which were purged.
    fn check_batches(
        &mut self,
        batches: &[BatchView],
        listed: &Map<BatchId, &BatchView>,
        by_n: &[Option<&JobView>],
        ctx: &Ctx,
        purged_jobs: Vec<usize>,
    ) -> Result<(), Violation> {
        let check = if ctx.recovered {
            "recovered-matches"
        } else {
            "batches"
        };
        let mut purged = Vec::new();
        for (&b, (id, ids)) in &self.model.batches {
            match listed.get(id) {
                Some(listed) => ensure!(
                    self,
                    listed.jobs == *ids,
                    check,
                    "b{b} lists other jobs than its submit returned"
                ),
                None => match ctx.purge {
                    Some(cutoff) => {
                        let early: Vec<String> = ids
                            .iter()
                            .filter_map(|j| {
                                let n = self.names.get(j)?;
                                let m = self.model.jobs.get(n)?;
                                let gone = by_n[*n].is_none();
                                let expired = m.fin.is_some() && m.finished_at < cutoff;
                                (!gone && !expired).then(|| format!("j{n} {:?}", m.state))
                            })
                            .collect();
                        ensure!(
                            self,
                            early.is_empty(),
                            "batch-retention",
                            "b{b} was purged while it lists {}",
                            early.join(", ")
                        );
                        purged.push(b);
                    }
                    None => broken!(self, check, "b{b} is missing"),
                },
            }
        }
        ensure!(
            self,
            batches.len() <= self.model.batches.len() - purged.len(),
            check,
            "the state has batches no submit made"
        );
        for n in purged_jobs {
            if let Some(m) = self.model.jobs.remove(&n)
                && let Some(k) = m.key
                && self.model.keys.get(&k) == Some(&m.id)
            {
                self.model.keys.remove(&k);
            }
            self.told.jobs.remove(&n);
            self.told.results.remove(&n);
            self.told.cancels.remove(&n);
            self.told.retries.remove(&n);
        }
        for b in purged {
            self.model.batches.remove(&b);
            self.told.batches.remove(&b);
        }
        Ok(())
    }

    /// A batch's finished list names each finished job it lists, its own
    /// and those it named again by key, once, and no job that is not
    /// finished. (A listed job purged with its own batch may be either.)
    fn check_finished_lists(
        &self,
        batches: &[BatchView],
        by_n: &[Option<&JobView>],
    ) -> Result<(), Violation> {
        for b in batches {
            let name = self
                .bnames
                .get(&b.id)
                .map_or(b.id.to_string(), |n| format!("b{n}"));
            let mut seen = Set::default();
            let dup = b.finished.iter().find(|i| !seen.insert(**i));
            ensure!(
                self,
                dup.is_none(),
                "finished-lists",
                "{name} lists index {dup:?} as finished twice: {:?}",
                b.finished
            );
            for (i, id) in b.jobs.iter().enumerate() {
                let Some(v) = self.names.get(id).and_then(|n| by_n[*n]) else {
                    continue;
                };
                ensure!(
                    self,
                    seen.contains(&(i as u32)) == is_finished(v.state),
                    "finished-lists",
                    "{name}'s job {i} ({}) is {:?}, its finished list is {:?}",
                    self.j(id),
                    v.state,
                    b.finished
                );
            }
        }
        Ok(())
    }

    /// Nothing a client was told is lost, even after a crash.
    fn check_told(
        &self,
        listed: &Map<BatchId, &BatchView>,
        by_n: &[Option<&JobView>],
    ) -> Result<(), Violation> {
        for (b, ids) in &self.told.batches {
            let Some((id, _)) = self.model.batches.get(b) else {
                broken!(self, "told", "acknowledged b{b} is gone from the model");
                continue;
            };
            ensure!(
                self,
                listed.get(id).is_some_and(|l| l.jobs == *ids),
                "told",
                "acknowledged b{b} is missing or lists other jobs"
            );
        }
        for n in &self.told.jobs {
            ensure!(
                self,
                by_n[*n].is_some(),
                "told",
                "acknowledged j{n} is missing"
            );
        }
        for (n, fin) in &self.told.results {
            let seen = by_n[*n].and_then(Final::of);
            ensure!(
                self,
                seen.as_ref() == Some(fin),
                "told",
                "a client read j{n} as {fin:?}; it is now {:?}: {seen:?}",
                by_n[*n].map(|v| v.state)
            );
        }
        for n in &self.told.cancels {
            let state = by_n[*n].map(|v| v.state);
            ensure!(
                self,
                state == Some(JobState::Cancelled),
                "told",
                "a client was told j{n} is cancelled; it is {state:?}"
            );
        }
        for (n, errors) in &self.told.retries {
            let again =
                by_n[*n].is_some_and(|v| v.state == JobState::Failed && v.errors.len() <= *errors);
            ensure!(
                self,
                !again,
                "told",
                "a client was told j{n} is retried; it is FAILED as before"
            );
        }
        Ok(())
    }

    /// No ready job waits while a session has credit for it; no due retry
    /// stays delayed after `promote_due`.
    fn check_queues(
        &self,
        views: &[JobView],
        sessions: &[SessionView],
        ctx: &Ctx,
    ) -> Result<(), Violation> {
        for s in sessions.iter().filter(|s| !s.draining) {
            for (c, credit) in s.credit.iter().enumerate() {
                if *credit == 0 {
                    continue;
                }
                let waiting = views.iter().find(|v| {
                    usize::from(v.io) == c && v.state == JobState::Queued && v.not_before_ms == 0
                });
                ensure!(
                    self,
                    waiting.is_none(),
                    "idle-credit",
                    "s{} has {credit} credit of class {c} while {} is ready",
                    s.id,
                    waiting.map_or(String::new(), |v| self.j(&v.id))
                );
            }
        }
        if ctx.promoted {
            let now = self.now();
            for v in views {
                ensure!(
                    self,
                    v.state != JobState::Queued || v.not_before_ms == 0 || v.not_before_ms > now,
                    "delayed-due",
                    "{} is due since {} but still delayed",
                    self.j(&v.id),
                    v.not_before_ms
                );
            }
        }
        Ok(())
    }
}
