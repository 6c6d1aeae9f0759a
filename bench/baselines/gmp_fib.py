#!/usr/bin/env python3
"""GMP's time for F(n) in decimal, the reference the fib job is measured against.

Prints one JSON object, {"gmp_fib_1e6_ms": .., "gmp_fib_1e7_ms": ..}: for each
n the median of 3 runs of gmpy2.fib(n) plus str(), in milliseconds, the same
work as the worker's fib job (exact F(n) as a decimal string).

Needs gmpy2 (GMP's Python binding): pip install gmpy2
"""

import json
import statistics
import sys
import time

try:
    import gmpy2
except ImportError:
    sys.exit("gmp_fib.py: gmpy2 is not installed; install it with: pip install gmpy2")

RUNS = 3

# F(10^7) has 2,089,877 digits ending ...86998673686380546875.
CHECKS = {10**7: (2_089_877, "86998673686380546875")}


def time_fib_ms(n):
    """Returns the median time of gmpy2.fib(n) converted to decimal, in ms."""
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        digits = str(gmpy2.fib(n))
        times.append((time.perf_counter() - start) * 1000)
    if n in CHECKS:
        length, tail = CHECKS[n]
        if len(digits) != length or not digits.endswith(tail):
            sys.exit(f"gmp_fib.py: F({n}) from gmpy2 is not the expected value")
    return round(statistics.median(times), 1)


def main():
    result = {
        "gmp_fib_1e6_ms": time_fib_ms(10**6),
        "gmp_fib_1e7_ms": time_fib_ms(10**7),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
