#!/usr/bin/env python3
"""python_client_builtin_jobs_per_s: tiny prime jobs through ``drover.Pool.map``;
with ``--python``, python_jobs_per_s and python_apply_p50_us too.

    cargo build --release --bins
    python3 python/bench/bench_pool.py [--jobs 20000] [--runs 3] [--python] [--json]

Starts a release drover-master (``--store memory``) and 2 drover-workers of
one process each on loopback, as drover-bench's tiny_jobs_per_s does, runs an
unmeasured warm-up of 2,000 jobs, then ``--runs`` times
``pool.map(drover.is_prime, range(1000003, 1000003 + jobs))``, timed from the
call to the list in hand: unlike drover-bench, building the requests (the
Python side's encoding) is inside the timer, since that is what a user waits
for. Every answer is checked against a sieve. Prints each run and the median.

With ``--python`` the workers also get ``--python <this interpreter>
--python-modules bench_jobs`` (as many interpreters as ``--processes``, this directory
on PYTHONPATH), and two more figures are measured the same way with the
Python function ``bench_jobs.is_prime`` instead of the built-in kind:
python_jobs_per_s (``--jobs`` calls through ``Pool.map``) and
python_apply_p50_us (the median of ``--applies`` sequential ``Pool.apply``
round trips, after 50 unmeasured ones).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FIRST = 1_000_003
WARMUP_JOBS = 2_000

try:
    import drover
except ImportError:  # run from a checkout without `pip install ./python`
    sys.path.insert(0, str(REPO / "python"))
    import drover


def sieve(n: int) -> bytearray:
    flags = bytearray([1]) * n
    flags[0:2] = b"\x00\x00"
    for p in range(2, int(n**0.5) + 1):
        if flags[p]:
            flags[p * p :: p] = bytearray(len(range(p * p, n, p)))
    return flags


class Cluster:
    """A master and workers, stopped on exit."""

    def __init__(self, bin_dir: Path, workers: int, processes: int, python: bool = False):
        self.procs = []
        self.tmp = tempfile.TemporaryDirectory(prefix="drover-pybench-")
        env = {k: v for k, v in os.environ.items() if not k.startswith("DROVER_")}
        env["DROVER_DATA_DIR"] = str(Path(self.tmp.name) / "data")
        env.setdefault("RUST_LOG", "warn")
        python_flags = []
        if python:
            python_flags = ["--python", sys.executable, "--python-modules", "bench_jobs", "--python-processes", str(processes)]
            env["PYTHONPATH"] = str(HERE)
        log = open(Path(self.tmp.name) / "log", "wb")
        master = subprocess.Popen(
            [str(bin_dir / "drover-master"), "--store", "memory", "--listen", "127.0.0.1:0", "--metrics-listen", "off"],
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
        )
        self.procs.append(master)
        line = master.stdout.readline().decode()
        if not line.startswith("drover-master listening on "):
            self.stop()
            raise SystemExit(f"drover-master did not start: {line!r}; see {log.name}")
        self.url = "http://" + line.split()[-1]
        for i in range(workers):
            self.procs.append(
                subprocess.Popen(
                    [
                        str(bin_dir / "drover-worker"),
                        "--master",
                        self.url,
                        "--processes",
                        str(processes),
                        "--name",
                        f"pybench-{i}",
                        "--metrics-listen",
                        "off",
                        *python_flags,
                    ],
                    stdout=log,
                    stderr=log,
                    env=env,
                )
            )
        client = drover.Client(self.url)
        deadline = time.monotonic() + 30
        while True:
            ready = [w for w in client.stats().workers if len(w.child_pids) == w.cpu_slots + w.python_slots]
            if len(ready) == workers:
                break
            for p in self.procs:
                if p.poll() is not None:
                    self.stop()
                    raise SystemExit(f"a drover process exited with {p.returncode}; see {log.name}")
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit("the workers did not register within 30 s")
            time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.kill()
            p.wait()
        self.tmp.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--processes", type=int, default=1, help="--processes of each worker")
    parser.add_argument("--bin-dir", type=Path, default=REPO / "target" / "release")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--python", action="store_true", help="also measure Python functions as jobs")
    parser.add_argument("--applies", type=int, default=1000, help="apply round trips for python_apply_p50_us")
    args = parser.parse_args()
    for name in ("drover-master", "drover-worker"):
        if not (args.bin_dir / name).is_file():
            raise SystemExit(f"no {args.bin_dir / name}: run `cargo build --release --bins` first")

    expected = [bool(v) for v in sieve(FIRST + args.jobs)[FIRST:]]
    cluster = Cluster(args.bin_dir, args.workers, args.processes, args.python)
    samples = []
    py_samples = []
    apply_us = []
    try:
        with drover.Pool(master=cluster.url) as pool:
            samples = timed_maps(pool, drover.is_prime, args, expected, "")
            if args.python:
                py_samples, apply_us = measure_python(pool, args, expected)
    finally:
        cluster.stop()
    median = statistics.median(samples)
    python_figures = {}
    if args.python:
        python_figures = {
            "python_jobs_per_s": round(statistics.median(py_samples)),
            "python_jobs_samples": [round(s) for s in py_samples],
            "python_apply_p50_us": round(statistics.median(apply_us)),
            "python_apply_p99_us": round(sorted(apply_us)[int(len(apply_us) * 0.99) - 1]),
        }
    if args.json:
        print(
            json.dumps(
                {
                    "python_client_builtin_jobs_per_s": round(median),
                    **python_figures,
                    "samples": [round(s) for s in samples],
                    "jobs": args.jobs,
                    "workers": args.workers,
                    "processes": args.processes,
                    "python": sys.version.split()[0],
                }
            )
        )
    else:
        print(f"python_client_builtin_jobs_per_s: {median:,.0f} (median of {len(samples)})")
        for key, value in python_figures.items():
            if not key.endswith("samples"):
                print(f"{key}: {value:,}")
    return 0


def timed_maps(pool, fn, args, expected, label):
    """A warm-up, then ``--runs`` timed maps of ``fn``: jobs/s of each."""
    warm = pool.map(fn, range(FIRST, FIRST + WARMUP_JOBS))
    assert warm == expected[:WARMUP_JOBS], f"wrong answers in the {label}warm-up"
    samples = []
    for run in range(args.runs):
        started = time.perf_counter()
        results = pool.map(fn, range(FIRST, FIRST + args.jobs))
        elapsed = time.perf_counter() - started
        if results != expected:
            raise SystemExit(f"{label}run {run + 1}: wrong answers")
        samples.append(args.jobs / elapsed)
        if not args.json:
            print(f"{label}run {run + 1}: {args.jobs} jobs in {elapsed * 1000:.0f} ms, {samples[-1]:,.0f} jobs/s")
    return samples


def measure_python(pool, args, expected):
    """python_jobs_per_s samples and apply round trips (us) of the Python
    function bench_jobs.is_prime."""
    sys.path.insert(0, str(HERE))
    import bench_jobs

    samples = timed_maps(pool, bench_jobs.is_prime, args, expected, "python ")
    times = []
    for i in range(50 + args.applies):
        n = FIRST + i % args.jobs
        started = time.perf_counter()
        value = pool.apply(bench_jobs.is_prime, (n,))
        took = time.perf_counter() - started
        if value != expected[i % args.jobs]:
            raise SystemExit(f"apply of {n}: wrong answer")
        if i >= 50:
            times.append(took * 1e6)
    return samples, times


if __name__ == "__main__":
    sys.exit(main())
