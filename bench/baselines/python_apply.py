#!/usr/bin/env python3
"""The Python baselines for drover's apply workload: one job at a time.

What a user moving to drover did before, each measured the same way: a
round trip is one job sent and its answer in hand, the next sent only
then, on the same number of local worker processes as drover's cluster.

- pool: multiprocessing.Pool(processes).apply(is_prime, (n,))
- executor: concurrent.futures.ProcessPoolExecutor(processes)
  .submit(is_prime, n).result()
- manager: the Python notes' BaseManager pattern (seed/): a manager serves
  a task and a result queue on loopback (ephemeral port, authkey), worker
  processes connect to it as remote hosts would; one put() of the job and
  one get() of its answer.

The job is drover's prime job for 1000003 + i: a deterministic
Miller-Rabin test (bases 2, 3, 5, 7: exact below 3,215,031,751), a few
microseconds, so the figures are the round trips, not the arithmetic.
Each kind does `--warmup` unmeasured round trips first. Every answer is
checked against trial division after the timers.

Prints one JSON object on stdout: {"pool_us": [...], "executor_us": [...],
"manager_us": [...]}, each round trip in microseconds. Exits non-zero when
an answer is wrong.
"""

import argparse
import concurrent.futures
import json
import multiprocessing as mp
import os
import sys
import time

# The notes' manager and its queues, and trial division, from the
# throughput baseline beside this script.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from python_manager import QueueManager  # noqa: E402
from python_manager import is_prime as trial_division  # noqa: E402

FIRST = 1000003


def is_prime(n):
    """Deterministic Miller-Rabin for n < 3,215,031,751."""
    if n < 2:
        return False
    for p in (2, 3, 5, 7):
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in (2, 3, 5, 7):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def manager_worker(address, authkey):
    m = QueueManager(address=address, authkey=authkey)
    m.connect()
    tasks = m.get_task_queue()
    results = m.get_result_queue()
    results.put(("ready", os.getpid()))
    while True:
        n = tasks.get()
        if n is None:
            break
        results.put((n, is_prime(n)))


def timed(call, count, first):
    """Runs call(n) for count numbers from first; (microseconds, answers)."""
    samples, answers = [], []
    for n in range(first, first + count):
        start = time.perf_counter()
        answer = call(n)
        samples.append((time.perf_counter() - start) * 1e6)
        answers.append((n, answer))
    return samples, answers


def run_manager(processes, warmup, round_trips):
    authkey = os.urandom(16)
    manager = QueueManager(address=("127.0.0.1", 0), authkey=authkey)
    manager.start()
    try:
        tasks = manager.get_task_queue()
        results = manager.get_result_queue()
        procs = [
            mp.Process(target=manager_worker, args=(manager.address, authkey), daemon=True)
            for _ in range(processes)
        ]
        for proc in procs:
            proc.start()
        for _ in procs:
            tag, _pid = results.get(timeout=60)
            if tag != "ready":
                raise RuntimeError(f"unexpected message before start: {tag!r}")

        def call(n):
            tasks.put(n)
            got_n, answer = results.get(timeout=60)
            if got_n != n:
                raise RuntimeError(f"asked for {n}, answered {got_n}")
            return answer

        timed(call, warmup, FIRST)
        measured = timed(call, round_trips, FIRST)
        for _ in procs:
            tasks.put(None)
        for proc in procs:
            proc.join(timeout=30)
        return measured
    finally:
        manager.shutdown()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--round-trips", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--processes", type=int, default=2)
    args = p.parse_args()

    out, checked = {}, []
    with mp.Pool(args.processes) as pool:
        call = lambda n: pool.apply(is_prime, (n,))  # noqa: E731
        timed(call, args.warmup, FIRST)
        out["pool_us"], answers = timed(call, args.round_trips, FIRST)
        checked += answers
    with concurrent.futures.ProcessPoolExecutor(args.processes) as ex:
        call = lambda n: ex.submit(is_prime, n).result()  # noqa: E731
        timed(call, args.warmup, FIRST)
        out["executor_us"], answers = timed(call, args.round_trips, FIRST)
        checked += answers
    out["manager_us"], answers = run_manager(args.processes, args.warmup, args.round_trips)
    checked += answers

    wrong = [n for n, answer in checked if answer != trial_division(n)]
    if wrong:
        print(f"python_apply: wrong answer for {wrong[0]}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
