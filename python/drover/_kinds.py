"""The job kinds a worker runs, as objects you pass to ``Pool.map``,
``Executor.submit`` and the rest: :data:`fib`, :data:`is_prime` and
:data:`sleep`.

Each is a :class:`BuiltinKind`: callable locally like the function it stands
for (``drover.fib(20) == 6765``), and recognised by the client, which sends
its argument as the wire's decimal text and turns the worker's answer back
into a Python value. Any other function becomes a :class:`PythonFunction`:
a ``python`` job naming it ``module:qualname``, with its arguments and result
as JSON, run by workers started with ``--python`` whose ``--python-modules``
allow its module. :func:`job_kind` is the one place that decides what a
callable becomes on the wire.
"""

from __future__ import annotations

import json
import math
import operator
import sys
import time
from typing import Any, Callable, Dict, Tuple

from .v1 import drover_pb2 as pb

# Python refuses int(str) past this many digits (sys.int_info); fib results
# up to F(10^7) have 2.1 million.
_INT_STR_LIMIT = 4000
_SMALL_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)


class BuiltinKind:
    """A job kind the workers run natively. Call it to compute locally; pass
    it to a Pool or an Executor to run it on the workers."""

    def __init__(
        self,
        name: str,
        kind: int,
        local: Callable[[Any], Any],
        encode: Callable[[Any], str],
        decode: Callable[[Any], Any],
        doc: str,
    ):
        #: The kind's name, as the CLI spells it (``fib``, ``prime``, ``sleep``).
        self.name = name
        #: The wire's ``JobKind`` value.
        self.kind = kind
        self._local = local
        self._encode = encode
        self._decode = decode
        self.__doc__ = doc

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._local(self._one_arg(args, kwargs))

    def __repr__(self) -> str:
        return f"drover.{self._public_name()}"

    def __reduce__(self):
        # Pickles as a reference to the module attribute, so the kinds stay
        # singletons across processes.
        return self._public_name()

    def _public_name(self) -> str:
        return {"fib": "fib", "prime": "is_prime", "sleep": "sleep"}[self.name]

    def _one_arg(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        if kwargs or len(args) != 1:
            shown = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
            raise TypeError(f"{self!r} takes exactly one positional argument, got ({shown})")
        return args[0]

    def encode(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> str:
        """Returns the wire argument of a call with ``args`` and ``kwargs``,
        raising TypeError or ValueError for what the kind cannot take."""
        return self._encode(self._one_arg(args, kwargs))

    def encode_one(self, value: Any) -> str:
        """Returns the wire argument of a call with the one argument ``value``
        (the map path: no argument tuple to build)."""
        return self._encode(value)

    def decode(self, output: Any) -> Any:
        """Returns the Python value of a succeeded job's ``JobOutput``."""
        return self._decode(output)


def _non_negative_int(what: str, value: Any) -> int:
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}") from None
    if n < 0:
        raise ValueError(f"{what} must be non-negative, got {n}")
    return n


def decimal_to_int(s: str) -> int:
    """Converts decimal text of any length to an int, past Python's
    4300-digit limit on ``int(str)``, by halves (subquadratic, unlike
    ``int()``): F(10^7)'s 2.1 million digits take seconds, not a minute."""
    if len(s) <= _INT_STR_LIMIT:
        return int(s)
    powers: Dict[int, int] = {}

    def convert(lo: int, hi: int) -> int:
        if hi - lo <= _INT_STR_LIMIT:
            return int(s[lo:hi])
        mid = hi - (hi - lo) // 2
        k = hi - mid
        p = powers.get(k)
        if p is None:
            p = powers[k] = 10**k
        return convert(lo, mid) * p + convert(mid, hi)

    return convert(0, len(s))


# ---- fib ----


def _fib_local(n: Any) -> int:
    n = _non_negative_int("drover.fib: n", n)
    # Fast doubling: F(2k) = F(k)(2F(k+1) - F(k)), F(2k+1) = F(k)^2 + F(k+1)^2.
    a, b = 0, 1
    for bit in bin(n)[2:]:
        a, b = a * (2 * b - a), a * a + b * b
        if bit == "1":
            a, b = b, a + b
    return a


def _fib_encode(n: Any) -> str:
    if type(n) is int and n >= 0:  # the common case, without the checks' calls
        return str(n)
    return str(_non_negative_int("drover.fib: n", n))


def _fib_decode(output: Any) -> int:
    return decimal_to_int(output.fib)


# ---- is_prime ----


def _is_prime_local(n: Any) -> bool:
    n = _non_negative_int("drover.is_prime: n", n)
    if n < 2:
        return False
    for p in _SMALL_PRIMES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    # Strong probable-prime tests to the first 13 prime bases: exact below
    # 3.3 * 10^24, probable above (the workers use Baillie-PSW there).
    for a in _SMALL_PRIMES:
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


def _is_prime_encode(n: Any) -> str:
    if type(n) is not int or n < 0:
        n = _non_negative_int("drover.is_prime: n", n)
    try:
        return str(n)
    except ValueError:
        # str() itself refuses past 4300 digits; the master's limit is lower.
        raise ValueError(
            f"drover.is_prime: n has about {int(n.bit_length() * math.log10(2))} digits, over the "
            "master's limit (--max-prime-digits, 4000 by default)"
        ) from None


def _is_prime_decode(output: Any) -> bool:
    return output.prime.is_prime


# ---- sleep ----


def _sleep_ms(seconds: Any) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(
            f"drover.sleep: seconds must be an int or a float, got {type(seconds).__name__} {seconds!r}"
        )
    if not seconds >= 0 or math.isinf(seconds):
        raise ValueError(f"drover.sleep: seconds must be a finite non-negative number, got {seconds!r}")
    return round(seconds * 1000)


def _sleep_local(seconds: Any) -> None:
    _sleep_ms(seconds)
    time.sleep(seconds)


def _sleep_encode(seconds: Any) -> str:
    return str(_sleep_ms(seconds))


def _sleep_decode(output: Any) -> None:
    return None


fib = BuiltinKind(
    "fib",
    pb.JOB_KIND_FIB,
    _fib_local,
    _fib_encode,
    _fib_decode,
    """fib(n) -> int: the exact Fibonacci number F(n), with F(0) = 0 and F(1) = 1.

    On the workers n may go up to the master's --max-fib-n (10,000,000 by
    default); the result travels as decimal text and comes back as an int.""",
)

is_prime = BuiltinKind(
    "prime",
    pb.JOB_KIND_PRIME,
    _is_prime_local,
    _is_prime_encode,
    _is_prime_decode,
    """is_prime(n) -> bool: whether the non-negative int n is prime.

    On the workers: proven below 2^64, Baillie-PSW above, n up to the master's
    --max-prime-digits (4,000 by default).""",
)

sleep = BuiltinKind(
    "sleep",
    pb.JOB_KIND_SLEEP,
    _sleep_local,
    _sleep_encode,
    _sleep_decode,
    """sleep(seconds) -> None: like time.sleep, on a worker's async slots
    (not in a process), to the millisecond.""",
)


class PythonFunction:
    """A Python function sent to the workers as a ``python`` job: its
    importable name (``module:qualname``), its arguments as JSON
    (``{"args": [...], "kwargs": {...}}``), and its result back from JSON.
    Workers run it only if started with ``--python`` and a
    ``--python-modules`` prefix that covers its module. Made by
    :func:`job_kind`, which checks the function is importable."""

    kind = pb.JOB_KIND_PYTHON

    def __init__(self, fn: Callable[..., Any], name: str):
        #: The function, for local calls.
        self.fn = fn
        #: Its name on the wire, ``module:qualname``.
        self.name = name
        self._prefix = name + ' {"args":['

    def __repr__(self) -> str:
        return f"drover.PythonFunction({self.name})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def _dumps(self, value: Any) -> str:
        try:
            _str_keys_only(value)
            return json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"the arguments of {self.name} must be JSON (lists, dicts with str keys, str, int, "
                f"float, bool, None): {e}"
            ) from None

    def encode(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> str:
        """Returns the wire argument of a call with ``args`` and ``kwargs``;
        TypeError for arguments JSON cannot carry."""
        call: Dict[str, Any] = {"args": list(args)}
        if kwargs:
            call["kwargs"] = kwargs
        return f"{self.name} {self._dumps(call)}"

    def encode_one(self, value: Any) -> str:
        """Returns the wire argument of a call with the one argument ``value``."""
        return self._prefix + self._dumps(value) + "]}"

    def decode(self, output: Any) -> Any:
        """Returns the function's return value from a succeeded job's output."""
        return json.loads(output.json)

    _decode = decode


def _str_keys_only(value: Any) -> None:
    """Raises TypeError for a dict key that is not a str anywhere in
    ``value``: ``json.dumps`` would turn ``1`` into ``"1"`` without a word,
    and the function on the worker would see another dict."""
    if isinstance(value, (str, int, float)) or value is None:
        return
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    raise TypeError(f"a dict key {k!r} is of type {type(k).__name__}, not str")
                stack.append(x)
        elif isinstance(v, (list, tuple)):
            stack.extend(v)


def _python_function(fn: Any) -> PythonFunction:
    """Checks that ``fn`` can be imported by name on the workers, and returns
    it as a job kind; TypeError, saying why, if it cannot."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    shown = qualname or repr(fn)
    must = "a Python job's function must be importable on the workers, as module:qualname"
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(f"cannot run {fn!r} as a drover job: it has no module and qualified name; {must}")
    if "<lambda>" in qualname:
        raise TypeError(
            f"cannot run the lambda {module}.{qualname} as a drover job: {must}; "
            "define it with def in a module the workers can import"
        )
    if "<locals>" in qualname:
        raise TypeError(
            f"cannot run the nested function {module}.{qualname} as a drover job: {must}; "
            "define it at the top level of a module the workers can import"
        )
    if module == "__main__":
        raise TypeError(
            f"cannot run {shown} as a drover job: it is defined in __main__ (the script you ran), "
            f"which the workers cannot import; {must}. Move it into a module (e.g. tasks.py), import "
            "it from there, and start the workers with --python-modules covering that module"
        )
    target: Any = sys.modules.get(module)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    if target is not fn and getattr(target, "__func__", None) is not fn:
        raise TypeError(
            f"cannot run {shown} as a drover job: {module}:{qualname} does not name it "
            f"(a bound method, a decorated or a replaced function?); {must}"
        )
    return PythonFunction(fn, f"{module}:{qualname}")


# Functions already checked: a map of one function checks it once.
_PYTHON_KINDS: Dict[Any, PythonFunction] = {}


def job_kind(fn: Any) -> Any:
    """Returns what ``fn`` runs as on the workers, or raises TypeError.

    This is the one place that maps callables to job kinds: the built-in
    kinds (:data:`fib`, :data:`is_prime`, :data:`sleep`) run natively; any
    other function becomes a :class:`PythonFunction` if it can be imported by
    name on the workers (not a lambda, a nested function, or a function of
    ``__main__``)."""
    if isinstance(fn, (BuiltinKind, PythonFunction)):
        return fn
    if not callable(fn):
        raise TypeError(
            f"{fn!r} is not callable; pass a function, or drover.fib, drover.is_prime or drover.sleep"
        )
    try:
        kind = _PYTHON_KINDS.get(fn)
    except TypeError:  # unhashable
        return _python_function(fn)
    if kind is None:
        kind = _PYTHON_KINDS[fn] = _python_function(fn)
    return kind
