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
