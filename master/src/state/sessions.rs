//! Worker sessions, their credit, and dispatch: queued jobs shared among
//! the sessions with room.

use super::*;

impl State {
    /// Registers a worker session.
    pub fn add_session(&mut self, hello: &pb::Hello, outbox: Outbox) -> SessionId {
        let id = SessionId::new(self.next_session).expect("session ids start at 1");
        self.next_session += 1;
        let now = self.now_ms();
        self.sessions.insert(
            id,
            Session {
                name: Arc::from(hello.name.as_str()),
                host: hello.host.clone(),
                pid: hello.pid,
                version: hello.version.clone(),
                cpu_slots: hello.cpu_slots,
                io_slots: hello.io_slots,
                python_slots: hello.python_slots,
                kinds: hello.kinds.clone(),
                // A worker that runs no Python jobs is handed none, whatever
                // its hello lists.
                python_modules: if hello.kinds.contains(&(JobKind::Python as i32)) {
                    hello
                        .python_modules
                        .iter()
                        .map(|m| m.as_str().into())
                        .collect()
                } else {
                    Vec::new()
                },
                credit: [0; JobClass::COUNT],
                held: IdSet::default(),
                outbox,
                last_seen_ms: now,
                connected_at_ms: now,
                completed: 0,
                child_pids: Vec::new(),
                children_restarted: 0,
                draining: false,
            },
        );
        id
    }

    /// Notes that a session was heard from.
    pub fn touch(&mut self, session: SessionId) -> bool {
        let now = self.now_ms();
        match self.sessions.get_mut(&session) {
            Some(s) => {
                s.last_seen_ms = now;
                true
            }
            None => false,
        }
    }

    /// Adds CPU and IO credit to a session and hands out what it can take.
    pub fn add_credit(&mut self, session: SessionId, cpu: u32, io: u32) -> Outgoing {
        self.grant_credit(session, &pb::Credit { cpu, io, python: 0 })
    }

    /// Adds credit of every class to a session and hands out what it can
    /// take.
    pub fn grant_credit(&mut self, session: SessionId, credit: &pb::Credit) -> Outgoing {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.credit[JobClass::Cpu.index()] += u64::from(credit.cpu);
            s.credit[JobClass::Io.index()] += u64::from(credit.io);
            s.credit[JobClass::Python.index()] += u64::from(credit.python);
        }
        self.dispatch()
    }

    /// Queued Python jobs that no connected worker may run (their module is
    /// outside every worker's `--python-modules`), and their modules.
    pub(crate) fn waiting_for_capability(&self) -> (u64, Vec<String>) {
        let open: Vec<&Session> = self.sessions.values().filter(|s| !s.draining).collect();
        self.queues.python_unrunnable(|module| {
            open.iter()
                .any(|s| drover_common::module_allowed(&s.python_modules, module))
        })
    }

    /// Records the pool of a session's worker.
    pub fn set_pool(&mut self, session: SessionId, pool: pb::PoolState) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.child_pids = pool.child_pids;
            s.children_restarted = pool.children_restarted;
        }
    }

    /// Stops sending jobs to a draining worker.
    pub fn set_draining(&mut self, session: SessionId) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.draining = true;
            s.credit = [0; JobClass::COUNT];
        }
    }

    /// Assigns queued jobs to sessions with credit, spreading them so that
    /// no worker takes more than its share while others have room.
    pub fn dispatch(&mut self) -> Outgoing {
        let mut plan: HashMap<SessionId, Vec<Queued>> = HashMap::new();
        for class in JobClass::ALL {
            let c = class.index();
            loop {
                let available = self.queues.len(class) as u64;
                if available == 0 {
                    break;
                }
                let open: Vec<SessionId> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.credit[c] > 0 && !s.draining)
                    .map(|(id, _)| *id)
                    .collect();
                if open.is_empty() {
                    break;
                }
                let share = available.div_ceil(open.len() as u64);
                let mut progress = false;
                for sid in open {
                    let Some(s) = self.sessions.get_mut(&sid) else {
                        continue;
                    };
                    let take = share.min(s.credit[c]);
                    let list = plan.entry(sid).or_default();
                    let before = list.len();
                    if class == JobClass::Python {
                        // Only the modules this worker allows; the others
                        // wait for a worker that does.
                        self.queues.pop_python(&s.python_modules, take, list);
                    } else {
                        for _ in 0..take {
                            let Some(job) = self.queues.pop_builtin(class) else {
                                break;
                            };
                            list.push(job);
                        }
                    }
                    let taken = (list.len() - before) as u64;
                    s.credit[c] -= taken;
                    progress |= taken > 0;
                }
                if !progress {
                    // Sessions with credit but no job they may run.
                    break;
                }
            }
        }
        let mut messages = Vec::new();
        let now_ms = if plan.is_empty() { 0 } else { (self.clock)() };
        for (sid, ids) in plan {
            if ids.is_empty() {
                continue;
            }
            let mut assignments = Vec::with_capacity(ids.len());
            for (id, hint) in &ids {
                let session = self.sessions.get_mut(&sid).expect("planned session exists");
                session.held.insert(*id);
                let job = self.jobs.get_mut_hinted(id, Some(hint));
                let job = job.expect("queued job exists");
                self.counts[job.state as usize] -= 1;
                self.counts[JobState::Running as usize] += 1;
                job.state = JobState::Running;
                // An attempt starts: a fact recorded once, never undone.
                job.attempts += 1;
                job.session = Some(sid);
                let x = job.xm();
                x.worker = Some(session.name.clone());
                x.started_at_ms = now_ms;
                if job.attempts == 1 {
                    self.counters.jobs.waited(job.kind, &id.uuid(), now_ms);
                }
                assignments.push(pb::Assignment {
                    job_id: id.to_string(),
                    kind: job.kind as i32,
                    arg: job.arg.to_string(),
                    timeout_ms: job.timeout_ms,
                    attempt: job.attempts,
                    priority: job.priority,
                    slot: Some(*hint),
                });
                let attempt = job.attempts;
                if self.durable {
                    // One log entry per commit records every assignment in
                    // it; the job's own record is rewritten only later.
                    self.assign_log.push((*id, attempt));
                    self.kick();
                }
            }
            let outbox = self.sessions[&sid].outbox.clone();
            messages.push((
                outbox,
                pb::MasterMessage {
                    msg: Some(pb::master_message::Msg::Assign(pb::Assign {
                        jobs: assignments,
                    })),
                },
            ));
        }
        self.outgoing(messages)
    }

    /// Ends a session: the attempts it held fail, counted (a worker that
    /// keeps dying with a job must not take the queue down with it), and
    /// their jobs go back to the queue after their backoff. Returns false if
    /// it had ended already.
    pub fn end_session(&mut self, session: SessionId, reason: &str) -> (bool, Outgoing) {
        let Some(s) = self.sessions.remove(&session) else {
            return (false, self.outgoing(Vec::new()));
        };
        let n = s.held.len();
        for id in s.held {
            let still_running = self
                .jobs
                .get(&id)
                .is_some_and(|j| j.state == JobState::Running && j.session == Some(session));
            if still_running {
                self.fail_attempt(id, format!("worker {} lost: {reason}", s.name), true);
            }
        }
        tracing::info!(worker = %s.name, session = session.get(), jobs = n, reason, "worker session ended");
        (true, self.dispatch())
    }

    /// Sessions not heard from within `lease` (on the state's clock).
    pub fn expired_sessions(&self, lease: Duration) -> Vec<SessionId> {
        let now = self.now_ms();
        let lease_ms = lease.as_millis() as u64;
        self.sessions
            .iter()
            .filter(|(_, s)| now.saturating_sub(s.last_seen_ms) > lease_ms)
            .map(|(id, _)| *id)
            .collect()
    }
}
