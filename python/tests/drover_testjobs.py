"""Functions the tests run as python jobs. The test workers are started with
``--python-modules drover_testjobs`` and this directory on PYTHONPATH; the
tests import the same module, so the client sends these functions by name."""

import math
from math import isqrt  # for a test: a function of another module, reached by this one's name
import os
import signal
import time


class Boom(Exception):
    """An exception type of this module, to see its full name come back."""


def square(x):
    return x * x


def add(a, b=0, *, scale=1):
    return (a + b) * scale


def is_prime(n):
    """Trial division by odd numbers: the notes' primality test."""
    if n < 4:
        return n >= 2
    if n % 2 == 0:
        return False
    return all(n % d for d in range(3, math.isqrt(n) + 1, 2))


def echo(value):
    return value


def nap(seconds, value=None):
    """Sleeps, then returns value (or seconds)."""
    time.sleep(seconds)
    return seconds if value is None else value


def fail(message):
    raise ValueError(message)


def boom(message):
    _deeper(message)


def _deeper(message):
    raise Boom(message)


def not_json():
    return {1, 2, 3}


def crash(code):
    os._exit(code)


def segfault():
    os.kill(os.getpid(), signal.SIGSEGV)


def pid(_=None):
    return os.getpid()


def chatty(x):
    """Prints to stdout and reads stdin: neither may break the frames."""
    print("noise on stdout", x, flush=True)
    import sys

    sys.stdin.read()
    return x


class Shapes:
    @staticmethod
    def area(w, h):
        return w * h


def int_keys(n):
    """A dict with int keys: JSON would turn them into strings."""
    return {i: i * i for i in range(n)}


# Shared state inside jobs: drover.coord reaches the master through the
# job's worker (DROVER_COORD), with nothing of the master's in the job.


def locked_increment(lock_name, counter_name, log_path, hold_s=0.0):
    """The seed's shared counter: read, add one and write back under a
    lock; appends (fencing token, start, end) of the hold to log_path."""
    import drover

    lock = drover.Lock(lock_name)
    total = drover.Value(counter_name)
    with lock:
        start = time.time()
        total.value = total.value + 1
        time.sleep(hold_s)
        end = time.time()
        token = lock.fencing_token
    with open(log_path, "a") as f:
        f.write("%d %r %r\n" % (token, start, end))
    return token


def record_square(dict_name, lock_name, key):
    """The seed's dict guarded by a lock: d[key] = key**2, and a count of
    the writes, read-modify-write under the lock."""
    import drover

    d = drover.Dict(dict_name)
    with drover.Lock(lock_name):
        d[str(key)] = key * key
        d["writes"] = d.get("writes", 0) + 1
    return key


def grab(lock_name):
    """Takes a lock and returns without releasing it."""
    import drover

    lock = drover.Lock(lock_name)
    lock.acquire()
    return lock.fencing_token


def grab_and_wait(lock_name, event_name, then=None):
    """Takes a lock, sets event_name + '.held', then waits for event_name
    (up to a minute) before returning; with then="crash", exits its
    process instead of returning."""
    import drover

    lock = drover.Lock(lock_name)
    lock.acquire()
    drover.Event(event_name + ".held").set()
    drover.Event(event_name).wait(60)
    if then == "crash":
        os._exit(3)
    return lock.fencing_token


def semaphore_rounds(name, permits, log_path, rounds):
    """Takes a permit of a semaphore `rounds` times; appends (fencing token,
    start, end) of each hold to log_path."""
    import drover

    sem = drover.Semaphore(name, permits)
    lines = []
    for _ in range(rounds):
        with sem:
            start = time.time()
            time.sleep(0.001)
            end = time.time()
            lines.append("%d %r %r\n" % (sem.fencing_token, start, end))
    with open(log_path, "a") as f:
        f.writelines(lines)
    return len(lines)


def hold_until_killed(name, permits, path):
    """Takes a permit, writes "token pid start" to path, and sleeps until
    its process is killed."""
    import drover

    sem = drover.Semaphore(name, permits)
    sem.acquire()
    with open(path + ".tmp", "w") as f:
        f.write("%d %d %r\n" % (sem.fencing_token, os.getpid(), time.time()))
    os.rename(path + ".tmp", path)
    time.sleep(600)


def wait_for_event(event_name):
    """Sets event_name + '.waiting', then waits (up to a minute) for
    event_name; returns whether it was set, and the counter event_name
    read afterwards."""
    import drover

    drover.Event(event_name + ".waiting").set()
    was_set = drover.Event(event_name).wait(60)
    return [was_set, drover.Value(event_name).value]


def wait_in_threads(lock_name, barrier_name, n):
    """n threads wait (up to a minute each) for the lock lock_name, and n
    more at a barrier of n + 1 parties; returns how many got the lock and
    the sorted indexes the barrier gave."""
    import threading

    import drover

    locks, indexes = [], []

    def take():
        lock = drover.Lock(lock_name)
        if lock.acquire(timeout=60):
            lock.release()
            locks.append(True)

    def meet():
        indexes.append(drover.Barrier(barrier_name, n + 1).wait(60))

    threads = [threading.Thread(target=f) for f in [take, meet] for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [len(locks), sorted(indexes)]


def try_lock(lock_name, timeout):
    """Tries a lock without waiting, then for `timeout` seconds; returns
    both answers and how long each try took."""
    import drover

    lock = drover.Lock(lock_name)
    started = time.monotonic()
    now = lock.acquire(blocking=False)
    tried = time.monotonic()
    later = lock.acquire(timeout=timeout)
    return [now, tried - started, later, time.monotonic() - tried]


def add_many(counter_name, n):
    """Adds 1 to a counter n times, one call at a time; returns the last value."""
    import drover

    v = drover.Value(counter_name)
    last = 0
    for _ in range(n):
        last = v.add(1)
    return last
