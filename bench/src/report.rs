//! The bench's results: one JSON object for machines, a table for people.
//!
//! Every figure is optional: a workload that was not selected, or failed,
//! reports `null` and says why in `notes`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Everything the bench measured, by the keys bench/README.md documents.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) tiny_jobs_per_s: Option<f64>,
    /// The same workload with 20,000 jobs (the figure before the default
    /// became 200,000).
    pub(crate) tiny_20k_jobs_per_s: Option<f64>,
    pub(crate) apply_p50_us: Option<f64>,
    pub(crate) apply_p99_us: Option<f64>,
    /// The same round trips through Python's own tools in the same runs
    /// (baselines/python_apply.py): `multiprocessing.Pool.apply`,
    /// `ProcessPoolExecutor.submit().result()` and the notes' BaseManager
    /// queue.
    pub(crate) pool_apply_p50_us: Option<f64>,
    pub(crate) pool_apply_p99_us: Option<f64>,
    pub(crate) executor_apply_p50_us: Option<f64>,
    pub(crate) manager_apply_p50_us: Option<f64>,
    pub(crate) manager_apply_p99_us: Option<f64>,
    pub(crate) fib_1e6_ms: Option<f64>,
    pub(crate) fib_1e7_ms: Option<f64>,
    pub(crate) gmp_fib_1e6_ms: Option<f64>,
    pub(crate) gmp_fib_1e7_ms: Option<f64>,
    pub(crate) python_manager_jobs_per_s: Option<f64>,
    /// The Python client (python/bench/bench_pool.py): tiny prime jobs of
    /// the built-in kind through `Pool.map`, a Python function's, and one
    /// `apply` of it at a time.
    pub(crate) python_client_builtin_jobs_per_s: Option<f64>,
    pub(crate) python_jobs_per_s: Option<f64>,
    pub(crate) python_apply_p50_us: Option<f64>,
    pub(crate) durable_submit_jobs_per_s: Option<f64>,
    pub(crate) durable_tiny_jobs_per_s: Option<f64>,
    /// The durable submit and the tiny workload on PostgreSQL
    /// (`--store postgres://...`).
    pub(crate) pg_submit_jobs_per_s: Option<f64>,
    pub(crate) pg_tiny_jobs_per_s: Option<f64>,
    /// Failovers on PostgreSQL (the `ha` workload), from the kill -9 of the
    /// leader: until a standby led with the queue recovered, and until the
    /// new leader had accepted a result.
    pub(crate) ha_takeover_p50_ms: Option<f64>,
    pub(crate) ha_failover_p50_ms: Option<f64>,
    pub(crate) ha_failover_p99_ms: Option<f64>,
    pub(crate) recovery_s_1m: Option<f64>,
    pub(crate) master_rss_mb_1m: Option<f64>,
    pub(crate) master_rss_mb_1m_recovered: Option<f64>,
    /// The recovery workload at 10 million queued jobs: how fast they went
    /// in, the master's memory before and after the kill, and the restart.
    pub(crate) queued_10m_submit_jobs_per_s: Option<f64>,
    pub(crate) queued_10m_rss_mb: Option<f64>,
    pub(crate) queued_10m_rss_mb_recovered: Option<f64>,
    pub(crate) queued_10m_recovery_s: Option<f64>,
    /// Queued jobs of that workload, when it ran.
    pub(crate) queued_jobs: Option<usize>,
    pub(crate) lock_acquire_release_p50_us: Option<f64>,
    /// The same round trips on a memory-store master: what the lock costs
    /// without the fsync each durable grant and release waits for.
    pub(crate) lock_memory_acquire_release_p50_us: Option<f64>,
    /// Streamed counter adds (`CounterAddStream`), and the same adds as
    /// unary calls.
    pub(crate) counter_adds_per_s: Option<f64>,
    pub(crate) counter_unary_adds_per_s: Option<f64>,
    pub(crate) kv_puts_per_s: Option<f64>,
    pub(crate) master_rss_mb_5m_finished: Option<f64>,
    pub(crate) recovery_s_5m_finished: Option<f64>,
    /// Reading a closed batch of 100 results of F(10^7) through Get, and
    /// copying the same bytes through loopback TCP in the same runs.
    pub(crate) get_big_batch_mb_per_s: Option<f64>,
    pub(crate) loopback_copy_mb_per_s: Option<f64>,
    /// Extra master CPU per tiny job with five dashboards open, in percent.
    pub(crate) dashboard_overhead_pct: Option<f64>,
    /// How much slower tiny jobs holding a loose concurrency limit run than
    /// the same jobs without, in percent.
    pub(crate) limit_overhead_pct: Option<f64>,
    /// Tiny jobs through a master with `--sim-workers` (1,000) simulated
    /// workers connected, and through one with two; the master's CPU
    /// seconds over each run's jobs, and its memory after them.
    pub(crate) workers_1000_jobs_per_s: Option<f64>,
    pub(crate) workers_2_jobs_per_s: Option<f64>,
    pub(crate) workers_1000_master_cpu_s: Option<f64>,
    pub(crate) workers_2_master_cpu_s: Option<f64>,
    pub(crate) workers_1000_master_rss_mb: Option<f64>,
    pub(crate) workers_2_master_rss_mb: Option<f64>,
    /// Simulated workers of that workload, when it ran.
    pub(crate) sim_workers: Option<usize>,
    /// Measured runs per workload.
    pub(crate) runs: u32,
    /// Cores available to the bench and everything it starts.
    pub(crate) cpus: usize,
    /// Jobs in the tiny-jobs workload and its Python baseline.
    pub(crate) jobs: usize,
    /// Worker daemons, and `--processes` of each.
    pub(crate) workers: usize,
    pub(crate) processes: usize,
    /// Jobs of the durable-submit workload, and its concurrent clients.
    pub(crate) durable_submit_jobs: usize,
    pub(crate) durable_submit_concurrency: usize,
    /// Jobs per Submit in the durable-submit workload.
    pub(crate) durable_submit_batch: usize,
    /// Queued jobs of the recovery workload.
    pub(crate) recovery_jobs: usize,
    /// Each run's figure, so a reader can judge the spread behind a median.
    pub(crate) samples: BTreeMap<&'static str, Vec<f64>>,
    /// How the figures were made, and what went wrong.
    pub(crate) notes: Vec<String>,
    /// Set when drover itself failed (as opposed to a baseline): the bench
    /// then exits non-zero after printing what it has.
    pub(crate) failed: bool,
}

/// A figure, its target, and whether a higher value is better.
struct Target {
    key: &'static str,
    limit: f64,
    higher_is_better: bool,
}

impl Target {
    fn met(&self, v: f64) -> bool {
        if self.higher_is_better {
            v >= self.limit
        } else {
            v <= self.limit
        }
    }
}

/// The goals bench/README.md states.
const TARGETS: &[Target] = &[
    Target {
        key: "tiny_jobs_per_s",
        limit: 650_000.0,
        higher_is_better: true,
    },
    Target {
        key: "apply_p50_us",
        limit: 150.0,
        higher_is_better: false,
    },
    Target {
        key: "apply_p99_us",
        limit: 300.0,
        higher_is_better: false,
    },
    Target {
        key: "python_client_builtin_jobs_per_s",
        limit: 100_000.0,
        higher_is_better: true,
    },
    Target {
        key: "python_jobs_per_s",
        limit: 30_000.0,
        higher_is_better: true,
    },
    Target {
        key: "python_apply_p50_us",
        limit: 1_000.0,
        higher_is_better: false,
    },
    Target {
        key: "fib_1e7_vs_gmp",
        limit: 1.0,
        higher_is_better: false,
    },
    Target {
        key: "apply_vs_pool_apply",
        limit: 1.0,
        higher_is_better: false,
    },
    Target {
        key: "durable_submit_jobs_per_s",
        limit: 200_000.0,
        higher_is_better: true,
    },
    Target {
        key: "durable_vs_memory_tiny",
        limit: 0.90,
        higher_is_better: true,
    },
    Target {
        key: "pg_submit_jobs_per_s",
        limit: 100_000.0,
        higher_is_better: true,
    },
    Target {
        key: "pg_tiny_jobs_per_s",
        limit: 40_000.0,
        higher_is_better: true,
    },
    Target {
        key: "ha_failover_p50_ms",
        limit: 2_000.0,
        higher_is_better: false,
    },
    Target {
        key: "ha_failover_p99_ms",
        limit: 5_000.0,
        higher_is_better: false,
    },
    Target {
        key: "recovery_s_1m",
        limit: 5.0,
        higher_is_better: false,
    },
    Target {
        key: "master_rss_mb_1m",
        limit: 400.0,
        higher_is_better: false,
    },
    Target {
        key: "queued_10m_submit_jobs_per_s",
        limit: 300_000.0,
        higher_is_better: true,
    },
    Target {
        key: "queued_10m_rss_mb",
        limit: 3_072.0,
        higher_is_better: false,
    },
    Target {
        key: "queued_10m_recovery_s",
        limit: 20.0,
        higher_is_better: false,
    },
    Target {
        key: "lock_acquire_release_p50_us",
        limit: 200.0,
        higher_is_better: false,
    },
    Target {
        key: "counter_adds_per_s",
        limit: 100_000.0,
        higher_is_better: true,
    },
    Target {
        key: "master_rss_mb_5m_finished",
        limit: 300.0,
        higher_is_better: false,
    },
    Target {
        key: "recovery_s_5m_finished",
        limit: 2.0,
        higher_is_better: false,
    },
    Target {
        key: "workers_1000_vs_2",
        limit: 0.5,
        higher_is_better: true,
    },
    Target {
        key: "dashboard_overhead_pct",
        limit: 2.0,
        higher_is_better: false,
    },
];

impl Report {
    /// How many times slower than GMP F(10^7) is: the fib target.
    pub(crate) fn fib_1e7_vs_gmp(&self) -> Option<f64> {
        Some(self.fib_1e7_ms? / self.gmp_fib_1e7_ms?)
    }

    /// The same for F(10^6), where fixed costs weigh more.
    pub(crate) fn fib_1e6_vs_gmp(&self) -> Option<f64> {
        Some(self.fib_1e6_ms? / self.gmp_fib_1e6_ms?)
    }

    /// How many times the Python BaseManager pattern's throughput drover has.
    pub(crate) fn ratio_vs_python_manager(&self) -> Option<f64> {
        Some(self.tiny_jobs_per_s? / self.python_manager_jobs_per_s?)
    }

    /// drover's apply against `Pool.apply`, at the median: under 1, drover
    /// is faster.
    pub(crate) fn apply_vs_pool_apply(&self) -> Option<f64> {
        Some(self.apply_p50_us? / self.pool_apply_p50_us?)
    }

    /// What the durable store keeps of the memory store's tiny-job
    /// throughput.
    pub(crate) fn durable_vs_memory_tiny(&self) -> Option<f64> {
        Some(self.durable_tiny_jobs_per_s? / self.tiny_jobs_per_s?)
    }

    /// What PostgreSQL keeps of redb's tiny-job throughput.
    pub(crate) fn pg_vs_redb_tiny(&self) -> Option<f64> {
        Some(self.pg_tiny_jobs_per_s? / self.durable_tiny_jobs_per_s?)
    }

    /// What a thousand workers keep of the tiny-job throughput of two.
    pub(crate) fn workers_1000_vs_2(&self) -> Option<f64> {
        Some(self.workers_1000_jobs_per_s? / self.workers_2_jobs_per_s?)
    }

    /// The figures in table order, with the derived ratios.
    fn figures(&self) -> Vec<(&'static str, Option<f64>)> {
        vec![
            ("tiny_jobs_per_s", self.tiny_jobs_per_s),
            ("tiny_20k_jobs_per_s", self.tiny_20k_jobs_per_s),
            ("python_manager_jobs_per_s", self.python_manager_jobs_per_s),
            ("ratio_vs_python_manager", self.ratio_vs_python_manager()),
            (
                "python_client_builtin_jobs_per_s",
                self.python_client_builtin_jobs_per_s,
            ),
            ("python_jobs_per_s", self.python_jobs_per_s),
            ("python_apply_p50_us", self.python_apply_p50_us),
            ("apply_p50_us", self.apply_p50_us),
            ("apply_p99_us", self.apply_p99_us),
            ("pool_apply_p50_us", self.pool_apply_p50_us),
            ("pool_apply_p99_us", self.pool_apply_p99_us),
            ("executor_apply_p50_us", self.executor_apply_p50_us),
            ("manager_apply_p50_us", self.manager_apply_p50_us),
            ("manager_apply_p99_us", self.manager_apply_p99_us),
            ("apply_vs_pool_apply", self.apply_vs_pool_apply()),
            ("fib_1e6_ms", self.fib_1e6_ms),
            ("fib_1e7_ms", self.fib_1e7_ms),
            ("gmp_fib_1e6_ms", self.gmp_fib_1e6_ms),
            ("gmp_fib_1e7_ms", self.gmp_fib_1e7_ms),
            ("fib_1e6_vs_gmp", self.fib_1e6_vs_gmp()),
            ("fib_1e7_vs_gmp", self.fib_1e7_vs_gmp()),
            ("durable_submit_jobs_per_s", self.durable_submit_jobs_per_s),
            ("durable_tiny_jobs_per_s", self.durable_tiny_jobs_per_s),
            ("durable_vs_memory_tiny", self.durable_vs_memory_tiny()),
            ("pg_submit_jobs_per_s", self.pg_submit_jobs_per_s),
            ("pg_tiny_jobs_per_s", self.pg_tiny_jobs_per_s),
            ("pg_vs_redb_tiny", self.pg_vs_redb_tiny()),
            ("ha_takeover_p50_ms", self.ha_takeover_p50_ms),
            ("ha_failover_p50_ms", self.ha_failover_p50_ms),
            ("ha_failover_p99_ms", self.ha_failover_p99_ms),
            ("recovery_s_1m", self.recovery_s_1m),
            ("master_rss_mb_1m", self.master_rss_mb_1m),
            (
                "master_rss_mb_1m_recovered",
                self.master_rss_mb_1m_recovered,
            ),
            (
                "queued_10m_submit_jobs_per_s",
                self.queued_10m_submit_jobs_per_s,
            ),
            ("queued_10m_rss_mb", self.queued_10m_rss_mb),
            (
                "queued_10m_rss_mb_recovered",
                self.queued_10m_rss_mb_recovered,
            ),
            ("queued_10m_recovery_s", self.queued_10m_recovery_s),
            (
                "lock_acquire_release_p50_us",
                self.lock_acquire_release_p50_us,
            ),
            (
                "lock_memory_acquire_release_p50_us",
                self.lock_memory_acquire_release_p50_us,
            ),
            ("counter_adds_per_s", self.counter_adds_per_s),
            ("counter_unary_adds_per_s", self.counter_unary_adds_per_s),
            ("kv_puts_per_s", self.kv_puts_per_s),
            ("master_rss_mb_5m_finished", self.master_rss_mb_5m_finished),
            ("recovery_s_5m_finished", self.recovery_s_5m_finished),
            ("get_big_batch_mb_per_s", self.get_big_batch_mb_per_s),
            ("loopback_copy_mb_per_s", self.loopback_copy_mb_per_s),
            ("dashboard_overhead_pct", self.dashboard_overhead_pct),
            ("limit_overhead_pct", self.limit_overhead_pct),
            ("workers_1000_jobs_per_s", self.workers_1000_jobs_per_s),
            ("workers_2_jobs_per_s", self.workers_2_jobs_per_s),
            ("workers_1000_vs_2", self.workers_1000_vs_2()),
            ("workers_1000_master_cpu_s", self.workers_1000_master_cpu_s),
            ("workers_2_master_cpu_s", self.workers_2_master_cpu_s),
            (
                "workers_1000_master_rss_mb",
                self.workers_1000_master_rss_mb,
            ),
            ("workers_2_master_rss_mb", self.workers_2_master_rss_mb),
        ]
    }

    /// The one JSON object `--json` prints.
    pub(crate) fn to_json(&self) -> Value {
        let mut obj = serde_json::Map::new();
        for (key, value) in self.figures() {
            obj.insert(key.into(), value.map(|v| round(key, v)).into());
        }
        obj.insert("runs".into(), self.runs.into());
        obj.insert("cpus".into(), self.cpus.into());
        obj.insert("jobs".into(), self.jobs.into());
        obj.insert("workers".into(), self.workers.into());
        obj.insert("processes".into(), self.processes.into());
        obj.insert(
            "durable_submit_jobs".into(),
            self.durable_submit_jobs.into(),
        );
        obj.insert(
            "durable_submit_concurrency".into(),
            self.durable_submit_concurrency.into(),
        );
        obj.insert(
            "durable_submit_batch".into(),
            self.durable_submit_batch.into(),
        );
        obj.insert("recovery_jobs".into(), self.recovery_jobs.into());
        obj.insert("queued_jobs".into(), self.queued_jobs.into());
        obj.insert("sim_workers".into(), self.sim_workers.into());
        let samples: serde_json::Map<String, Value> = self
            .samples
            .iter()
            .map(|(k, v)| {
                let rounded: Vec<f64> = v.iter().map(|x| round(k, *x)).collect();
                ((*k).to_string(), json!(rounded))
            })
            .collect();
        obj.insert("samples".into(), samples.into());
        obj.insert("notes".into(), json!(self.notes));
        obj.into()
    }

    /// The table printed without `--json`.
    pub(crate) fn to_table(&self) -> String {
        let mut out = format!(
            "drover-bench: {} runs (medians), {} cpus, {} workers x --processes {}, {} jobs; \
             durable submit: {} jobs by {} from {} clients; recovery: {} jobs\n\n",
            self.runs,
            self.cpus,
            self.workers,
            self.processes,
            self.jobs,
            self.durable_submit_jobs,
            self.durable_submit_batch,
            self.durable_submit_concurrency,
            self.recovery_jobs
        );
        out.push_str(&format!("{:<28} {:>14}   target\n", "figure", "value"));
        for (key, value) in self.figures() {
            let shown = value.map_or_else(|| "-".to_string(), |v| human(key, v));
            let (target, verdict) = match TARGETS.iter().find(|t| t.key == key) {
                Some(t) => {
                    let op = if t.higher_is_better { ">=" } else { "<=" };
                    let verdict = match value {
                        Some(v) if t.met(v) => "met",
                        Some(_) => "MISSED",
                        None => "",
                    };
                    (format!("{op} {}", human(key, t.limit)), verdict)
                }
                None => (String::new(), ""),
            };
            let line = format!("{key:<28} {shown:>14}   {target:<12} {verdict}");
            out.push_str(line.trim_end());
            out.push('\n');
        }
        if !self.notes.is_empty() {
            out.push_str("\nnotes:\n");
            for note in &self.notes {
                out.push_str(&format!("  - {note}\n"));
            }
        }
        out
    }
}

/// Rounds a figure for JSON: ratios and seconds to 3 decimals, the rest
/// to 1.
fn round(key: &str, v: f64) -> f64 {
    let scale = if is_ratio(key) || is_seconds(key) {
        1000.0
    } else {
        10.0
    };
    (v * scale).round() / scale
}

fn is_ratio(key: &str) -> bool {
    key.starts_with("ratio") || key.contains("_vs_")
}

fn is_seconds(key: &str) -> bool {
    key.starts_with("recovery_s") || key.ends_with("recovery_s") || key.ends_with("_cpu_s")
}

/// Formats a figure for the table: thousands separators, units implied by
/// the key's suffix.
fn human(key: &str, v: f64) -> String {
    if is_ratio(key) {
        return format!("{v:.2}x");
    }
    if is_seconds(key) {
        return format!("{v:.2} s");
    }
    if key.ends_with("_ms") && v < 100.0 {
        return format!("{v:.1}");
    }
    let whole = v.round() as i64;
    let digits = whole.unsigned_abs().to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if whole < 0 {
        grouped.insert(0, '-');
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unselected_figures_are_null() {
        let r = Report {
            tiny_jobs_per_s: Some(60_000.0),
            ..Default::default()
        };
        let v = r.to_json();
        assert_eq!(v["tiny_jobs_per_s"], json!(60_000.0));
        assert!(v["ratio_vs_python_manager"].is_null());
        assert!(v["fib_1e7_vs_gmp"].is_null());
    }

    #[test]
    fn ratios() {
        let r = Report {
            tiny_jobs_per_s: Some(90_000.0),
            python_manager_jobs_per_s: Some(4_500.0),
            fib_1e7_ms: Some(600.0),
            gmp_fib_1e7_ms: Some(200.0),
            ..Default::default()
        };
        assert_eq!(r.ratio_vs_python_manager(), Some(20.0));
        assert_eq!(r.fib_1e7_vs_gmp(), Some(3.0));
        assert_eq!(r.fib_1e6_vs_gmp(), None);
        assert_eq!(r.durable_vs_memory_tiny(), None);
        assert_eq!(r.apply_vs_pool_apply(), None);
        let r = Report {
            apply_p50_us: Some(150.0),
            pool_apply_p50_us: Some(200.0),
            ..r
        };
        assert_eq!(r.apply_vs_pool_apply(), Some(0.75));
        let r = Report {
            durable_tiny_jobs_per_s: Some(63_000.0),
            ..r
        };
        assert_eq!(r.durable_vs_memory_tiny(), Some(0.7));
        assert_eq!(r.pg_vs_redb_tiny(), None);
        let r = Report {
            pg_tiny_jobs_per_s: Some(31_500.0),
            ..r
        };
        assert_eq!(r.pg_vs_redb_tiny(), Some(0.5));
        assert_eq!(r.workers_1000_vs_2(), None);
        let r = Report {
            workers_1000_jobs_per_s: Some(60_000.0),
            workers_2_jobs_per_s: Some(150_000.0),
            ..r
        };
        assert_eq!(r.workers_1000_vs_2(), Some(0.4));
        assert!(r.to_table().contains("MISSED"));
        assert!(r.to_table().contains("met"));
    }

    #[test]
    fn human_numbers() {
        assert_eq!(human("tiny_jobs_per_s", 1_234_567.4), "1,234,567");
        assert_eq!(human("apply_p50_us", 123.0), "123");
        assert_eq!(human("fib_1e6_ms", 12.34), "12.3");
        assert_eq!(human("ratio_vs_python_manager", 12.5), "12.50x");
        assert_eq!(human("recovery_s_1m", 1.234), "1.23 s");
        assert_eq!(human("queued_10m_recovery_s", 12.3456), "12.35 s");
        assert_eq!(round("recovery_s_1m", 1.23456), 1.235);
        assert_eq!(human("master_rss_mb_1m", 301.6), "302");
        assert_eq!(human("workers_1000_master_cpu_s", 3.456), "3.46 s");
        assert_eq!(human("workers_1000_vs_2", 0.5), "0.50x");
    }
}
