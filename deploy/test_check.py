#!/usr/bin/env python3
"""Checks for deploy/test.sh: reads the drover CLI's JSON output.

  test_check.py map FILE KIND ARG... [--lost NAME]
      FILE holds the JSON lines of `drover --output json map KIND ARG...` (or
      of `get BATCH`). Checks one line per ARG, in submission order, each
      SUCCEEDED exactly once with the right result: fib against F(n) computed
      here, prime against trial division, sleep against its ms. With --lost
      NAME: at least one job's earlier attempt was lost with worker NAME and
      the job then succeeded on another worker.
      Prints a one-line summary; exits 1 with the reason on a failure.

  test_check.py status FILE EXPR
      FILE holds `drover --output json status`. Prints EXPR evaluated with
      `s` the status document and `w(host)` the newest worker on that host
      (None if none).

ARG may be a range A..B or A..=B, as the CLI takes it.
"""

import json
import sys


def expand(args):
    out = []
    for a in args:
        if "..=" in a:
            lo, hi = a.split("..=")
            out += [str(i) for i in range(int(lo), int(hi) + 1)]
        elif ".." in a:
            lo, hi = a.split("..")
            out += [str(i) for i in range(int(lo), int(hi))]
        else:
            out.append(a)
    return out


def fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def is_prime(n):
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def expected(kind, arg):
    n = int(arg)
    if kind == "fib":
        return str(fib(n))
    if kind == "prime":
        return is_prime(n)
    if kind == "sleep":
        return n
    raise SystemExit(f"unknown kind {kind}")


def fail(msg):
    print(msg)
    sys.exit(1)


def check_map(path, kind, args, lost):
    try:
        rows = [json.loads(line) for line in open(path) if line.strip()]
    except (OSError, ValueError) as e:
        fail(f"cannot read the results in {path}: {e}")
    if len(rows) != len(args):
        fail(f"{len(rows)} results for {len(args)} jobs")
    ids = set()
    retried = 0
    moved = 0
    for i, (row, arg) in enumerate(zip(rows, args)):
        where = f"result {i} (arg {arg})"
        if row.get("index") != i:
            fail(f"{where}: index {row.get('index')}: not in submission order")
        if row.get("kind") != kind or str(row.get("arg")) != arg:
            fail(f"{where}: is {row.get('kind')} {row.get('arg')}")
        if row.get("state") != "succeeded":
            fail(f"{where}: state {row.get('state')}, error {row.get('error')!r}")
        want = expected(kind, arg)
        if row.get("result") != want:
            fail(f"{where}: result {row.get('result')!r}, expected {want!r}")
        if kind == "prime" and row.get("certainty") != "proven":
            fail(f"{where}: certainty {row.get('certainty')!r}")
        if row["job_id"] in ids:
            fail(f"{where}: job {row['job_id']} reported twice")
        ids.add(row["job_id"])
        if row.get("attempts", 1) > 1:
            retried += 1
        if lost and any(lost in e for e in row.get("attempt_errors") or []):
            if row.get("worker") == lost:
                fail(f"{where}: lost with {lost} but recorded from it")
            moved += 1
    summary = f"{len(rows)} {kind} results in order and correct, {len(ids)} distinct jobs"
    if retried:
        summary += f", {retried} retried"
    if lost:
        if moved == 0:
            fail(summary + f"; but no job was lost with {lost} and rerun elsewhere")
        summary += f", {moved} lost with {lost} and rerun elsewhere"
    print(summary)


def status(path, expr):
    s = json.load(open(path))

    def w(host):
        on_host = [x for x in s.get("workers", []) if x.get("host") == host]
        # The newest session: a restarted worker may briefly appear twice.
        return min(on_host, key=lambda x: x.get("connected_s", 0)) if on_host else None

    print(eval(expr, {"s": s, "w": w, "len": len, "sorted": sorted, "all": all, "any": any}))


def main(argv):
    if len(argv) >= 4 and argv[1] == "map":
        rest = argv[4:]
        lost = None
        if "--lost" in rest:
            k = rest.index("--lost")
            lost = rest[k + 1]
            rest = rest[:k] + rest[k + 2 :]
        check_map(argv[2], argv[3], expand(rest), lost)
    elif len(argv) == 4 and argv[1] == "status":
        status(argv[2], argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
