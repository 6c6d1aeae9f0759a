#!/usr/bin/env python3
"""The Python baseline for drover's tiny-jobs workload.

The distributed master-worker pattern of the Python notes (seed/): a
BaseManager serves a task queue and a result queue over TCP; worker processes
connect to it, take one job per get(), and put one result per put(). The
client puts every job, then reads every result. This is the design drover
replaces, measured on the same work: is_prime(1000003 + i) by trial division,
for i in 0..jobs.

Everything runs on loopback: the manager on an ephemeral port with an
authkey, the workers as local processes that connect to it exactly as a
remote host would. The timer covers first put to last result in hand, with
the workers already connected, as drover-bench times drover.

Prints one JSON object on stdout: {"jobs_per_s": ..., "jobs": ...,
"workers": ..., "seconds": ...}. Exits non-zero when a result is wrong.
"""

import argparse
import json
import math
import multiprocessing as mp
import os
import queue
import sys
import time
from multiprocessing.managers import BaseManager

FIRST = 1000003

# The queues live in the manager's server process. Module-level objects and
# functions (not lambdas) so that registration works with any start method.
_task_queue = queue.Queue()
_result_queue = queue.Queue()


def _get_task_queue():
    return _task_queue


def _get_result_queue():
    return _result_queue


class QueueManager(BaseManager):
    """Serves the two queues; clients register the same names without callables."""


QueueManager.register("get_task_queue", callable=_get_task_queue)
QueueManager.register("get_result_queue", callable=_get_result_queue)


def is_prime(n):
    """Trial division, as in the notes' ProcessPoolExecutor example."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    sqrt_n = int(math.floor(math.sqrt(n)))
    for i in range(3, sqrt_n + 1, 2):
        if n % i == 0:
            return False
    return True


def worker(address, authkey):
    """A worker host: connects to the manager and serves jobs until a None."""
    m = QueueManager(address=address, authkey=authkey)
    m.connect()
    tasks = m.get_task_queue()
    results = m.get_result_queue()
    # Tell the client this worker is connected, so the timer starts with
    # every worker ready, as drover-bench waits for its workers.
    results.put(("ready", os.getpid()))
    while True:
        n = tasks.get()
        if n is None:
            break
        results.put((n, is_prime(n)))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=20000, help="jobs to run (default 20000)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    args = p.parse_args()

    authkey = os.urandom(16)
    # Port 0: the OS picks a free port; manager.address holds the real one.
    manager = QueueManager(address=("127.0.0.1", 0), authkey=authkey)
    manager.start()
    try:
        tasks = manager.get_task_queue()
        results = manager.get_result_queue()
        procs = [
            mp.Process(target=worker, args=(manager.address, authkey), daemon=True)
            for _ in range(args.workers)
        ]
        for proc in procs:
            proc.start()
        for _ in procs:
            tag, _pid = results.get(timeout=60)
            if tag != "ready":
                raise RuntimeError(f"unexpected message before start: {tag!r}")

        numbers = range(FIRST, FIRST + args.jobs)
        start = time.perf_counter()
        for n in numbers:
            tasks.put(n)
        got = {}
        for _ in numbers:
            n, answer = results.get(timeout=120)
            got[n] = answer
        seconds = time.perf_counter() - start

        for _ in procs:
            tasks.put(None)
        for proc in procs:
            proc.join(timeout=30)
    finally:
        manager.shutdown()

    # Checked after the timer: every job answered once, and correctly.
    if len(got) != args.jobs:
        print(f"python_manager: {len(got)} distinct results for {args.jobs} jobs", file=sys.stderr)
        sys.exit(1)
    wrong = [n for n in numbers if got[n] != is_prime(n)]
    if wrong:
        print(f"python_manager: wrong answers, e.g. for {wrong[0]}", file=sys.stderr)
        sys.exit(1)

    print(
        json.dumps(
            {
                "jobs_per_s": args.jobs / seconds,
                "jobs": args.jobs,
                "workers": args.workers,
                "seconds": seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
