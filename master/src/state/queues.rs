//! The queues of jobs ready to run: one per built-in class (CPU, IO), and
//! for Python jobs one per module, so that dispatch hands a worker only the
//! modules it allows without walking past jobs nobody can run.

use super::*;

/// A queue's key: highest priority first, then oldest (by sequence).
pub(crate) type QueueKey = (Reverse<i32>, u64);

/// A queued job, and its slot in the job table as a hint: dispatch reads
/// the job there instead of hashing its id into the table's index (a
/// cache miss a job in a table of hundreds of thousands, bench/README.md).
pub(crate) type Queued = (JobId, u32);

/// Every queued job, by class, and Python jobs by module.
#[derive(Debug, Default)]
pub(crate) struct Queues {
    /// CPU and IO jobs (indexed by [`JobClass::index`]; the Python slot is
    /// unused: those are in `python`).
    builtin: [BTreeMap<QueueKey, Queued>; JobClass::COUNT],
    /// Python jobs by the module their argument names; a module with no
    /// queued job has no entry, so dispatch looks at live modules only.
    python: HashMap<Box<str>, BTreeMap<QueueKey, Queued>>,
    /// Python jobs queued, over every module.
    python_len: usize,
    /// While recovery queues every job it loaded: the built-in classes'
    /// jobs, gathered to build each queue at once from sorted keys. A
    /// B-tree built so has full nodes; filled one key after the other, it
    /// splits each node and leaves it part empty: more nodes, each fresh
    /// memory to fault in (13% of recovering ten million jobs,
    /// bench/README.md).
    gathering: Option<[Vec<(QueueKey, Queued)>; JobClass::COUNT]>,
}

impl Queues {
    /// Queues job `job` (its id and table slot) of `class` with argument
    /// `arg`.
    pub(crate) fn insert(&mut self, class: JobClass, arg: &str, key: QueueKey, job: Queued) {
        match class {
            JobClass::Python => {
                let module = drover_common::python_module(arg);
                let queue = match self.python.get_mut(module) {
                    Some(q) => q,
                    None => self.python.entry(module.into()).or_default(),
                };
                if queue.insert(key, job).is_none() {
                    self.python_len += 1;
                }
            }
            class => match &mut self.gathering {
                Some(gathered) => gathered[class.index()].push((key, job)),
                None => {
                    self.builtin[class.index()].insert(key, job);
                }
            },
        }
    }

    /// Gathers the built-in classes' jobs inserted from now on, until
    /// [`Queues::build_gathered`] queues them. Nothing may be taken out
    /// meanwhile.
    pub(crate) fn gather(&mut self) {
        self.gathering = Some(Default::default());
    }

    /// Queues the jobs gathered since [`Queues::gather`].
    pub(crate) fn build_gathered(&mut self) {
        let Some(gathered) = self.gathering.take() else {
            return;
        };
        for (queue, jobs) in self.builtin.iter_mut().zip(gathered) {
            if jobs.is_empty() {
                continue;
            }
            // Sorts (once, and in one pass when they come in order, as
            // recovery's do) and builds the tree bottom up.
            let mut built: BTreeMap<QueueKey, Queued> = jobs.into_iter().collect();
            if queue.is_empty() {
                *queue = built;
            } else {
                queue.append(&mut built);
            }
        }
    }

    /// Takes job `key` of `class` with argument `arg` out of its queue.
    pub(crate) fn remove(&mut self, class: JobClass, arg: &str, key: &QueueKey) {
        debug_assert!(self.gathering.is_none(), "taken out while gathering");
        match class {
            JobClass::Python => {
                let module = drover_common::python_module(arg);
                if let Some(queue) = self.python.get_mut(module)
                    && queue.remove(key).is_some()
                {
                    self.python_len -= 1;
                    if queue.is_empty() {
                        self.python.remove(module);
                    }
                }
            }
            class => {
                self.builtin[class.index()].remove(key);
            }
        }
    }

    /// Jobs queued in `class`.
    pub(crate) fn len(&self, class: JobClass) -> usize {
        match class {
            JobClass::Python => self.python_len,
            class => {
                self.builtin[class.index()].len()
                    + self
                        .gathering
                        .as_ref()
                        .map_or(0, |g| g[class.index()].len())
            }
        }
    }

    /// Takes the first job of a built-in class.
    pub(crate) fn pop_builtin(&mut self, class: JobClass) -> Option<Queued> {
        debug_assert!(class != JobClass::Python);
        debug_assert!(self.gathering.is_none(), "taken out while gathering");
        self.builtin[class.index()].pop_first().map(|(_, job)| job)
    }

    /// Takes up to `n` Python jobs of the modules `allowed` admits, best
    /// first across those modules.
    pub(crate) fn pop_python(&mut self, allowed: &[Box<str>], n: u64, out: &mut Vec<Queued>) {
        let mut modules: Vec<Box<str>> = self
            .python
            .keys()
            .filter(|m| drover_common::module_allowed(allowed, m))
            .cloned()
            .collect();
        let mut taken = 0;
        while taken < n && !modules.is_empty() {
            // Few modules: a scan of their heads is cheaper than a heap.
            let (best, _) = modules
                .iter()
                .enumerate()
                .filter_map(|(i, m)| Some((i, *self.python[m].first_key_value()?.0)))
                .min_by_key(|(_, key)| *key)
                .expect("every listed module has jobs");
            let queue = self.python.get_mut(&modules[best]).expect("listed");
            let (_, job) = queue.pop_first().expect("not empty");
            out.push(job);
            taken += 1;
            self.python_len -= 1;
            if queue.is_empty() {
                self.python.remove(&modules[best]);
                modules.swap_remove(best);
            }
        }
    }

    /// Python jobs queued for modules `allowed` refuses, and those
    /// modules, sorted.
    pub(crate) fn python_unrunnable(
        &self,
        mut allowed: impl FnMut(&str) -> bool,
    ) -> (u64, Vec<String>) {
        let mut n = 0;
        let mut modules = Vec::new();
        for (module, queue) in &self.python {
            if !allowed(module) {
                n += queue.len() as u64;
                modules.push(module.to_string());
            }
        }
        modules.sort();
        (n, modules)
    }
}
