"""The function python_jobs_per_s and python_apply_p50_us call: the bench's
workers run it with ``--python-modules bench_jobs``, this directory on their
PYTHONPATH."""


def is_prime(n):
    """Primality of a small number by trial division (6k +/- 1)."""
    if n < 2:
        return False
    if n < 4:
        return True
    if n % 2 == 0 or n % 3 == 0:
        return False
    d = 5
    while d * d <= n:
        if n % d == 0 or n % (d + 2) == 0:
            return False
        d += 6
    return True
