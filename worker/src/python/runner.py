"""drover's Python job runner, embedded in drover-worker and started by it
as `INTERPRETER -c <this file> MAX_RESULT_BYTES MODULE_PREFIXES`.

It is a long-lived child of the worker's pool, like the Rust children: it
reads ChildRequest frames on stdin and writes ChildResponse frames on
stdout (a little-endian u32 length, then the protobuf message), with a
small protobuf codec of its own so the interpreter needs nothing installed
but the jobs' modules. A job's argument is `module:qualname`, then
optionally a space and a JSON object {"args": [...], "kwargs": {...}}; its
result goes back as JSON. A module outside MODULE_PREFIXES (comma-separated)
is refused before anything is imported.
"""

import importlib
import json
import os
import struct
import sys
import time
import traceback
import types

# A frame aims at this many bytes of results; results are also sent on when
# a millisecond has passed since the last write, so the worker knows which
# job is running (it enforces timeouts with that).
FRAME_BYTES = 1 << 20
FLUSH_EVERY = 0.001
# The longest exception message and traceback a failure carries (the end
# of a traceback is kept: it is where the error is).
MAX_MESSAGE = 4096
MAX_TRACEBACK = 32768
JOB_KIND_PYTHON = 4


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varint(buf, i):
    result = 0
    shift = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def fields(buf):
    """Yields (field number, value) of a protobuf message: an int for a
    varint, bytes for a length-delimited field; others are skipped."""
    i = 0
    n = len(buf)
    while i < n:
        tag, i = read_varint(buf, i)
        wire = tag & 7
        if wire == 0:
            value, i = read_varint(buf, i)
        elif wire == 2:
            length, i = read_varint(buf, i)
            value = buf[i : i + length]
            i += length
        elif wire == 1:
            i += 8
            continue
        elif wire == 5:
            i += 4
            continue
        else:
            raise ValueError("unsupported wire type %d" % wire)
        yield tag >> 3, value


def bytes_field(number, data):
    return varint(number << 3 | 2) + varint(len(data)) + data


def varint_field(number, value):
    return varint(number << 3) + varint(value)


def output(slot_id, json_text, run_us):
    # ChildResult{slot_id=1, output=2: JobOutput{json=4}, run_us=4}
    return (
        varint_field(1, slot_id)
        + bytes_field(2, bytes_field(4, json_text))
        + varint_field(4, run_us)
    )


def failure(slot_id, reason, retryable, run_us):
    # ChildResult{slot_id=1, failure=3: JobFailure{reason=1, retryable=2}, run_us=4}
    body = bytes_field(1, reason.encode("utf-8", "replace")) + varint_field(2, 1 if retryable else 0)
    return varint_field(1, slot_id) + bytes_field(3, body) + varint_field(4, run_us)


def str_keys_only(value):
    """Raises TypeError for a dict key that is not a str anywhere in
    ``value``: json.dumps would turn 1 into "1" without a word."""
    if isinstance(value, (str, int, float)) or value is None:
        return
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    raise TypeError("a dict key %r is of type %s, not str" % (k, type(k).__name__))
                stack.append(x)
        elif isinstance(v, (list, tuple)):
            stack.extend(v)


def allowed(prefixes, module):
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def job_ended(slot_id):
    """The job in ``slot_id`` has returned: drover.coord, if the job used
    it, stops renewing the session the worker is closing."""
    slot = os.environ.pop("DROVER_JOB_SLOT", None) or str(slot_id)
    coord = sys.modules.get("drover.coord")
    if coord is not None:
        try:
            coord._job_ended(slot)
        except Exception:  # an older client without it: its lease ends it
            pass


class Refused(Exception):
    """A job the runner will not run, with the reason it says."""


def type_name(t):
    module = getattr(t, "__module__", None)
    name = getattr(t, "__qualname__", t.__name__)
    return name if module in (None, "builtins") else "%s.%s" % (module, name)


def describe(exc, skip_frames):
    """The reason of a job that raised: `Type: message`, a blank line,
    then the formatted traceback (the runner's own frames left out)."""
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None:
            tb = tb.tb_next
    try:
        message = str(exc)
    except BaseException:  # a __str__ that raises
        message = "<unprintable %s>" % type(exc).__name__
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "... (%d characters)" % len(message)
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    if not text.startswith("Traceback"):
        # Raised by the call itself (wrong arguments): no frame of the
        # function's, but the reason keeps its shape.
        text = "Traceback (most recent call last):\n" + text
    if len(text) > MAX_TRACEBACK:
        text = "Traceback (most recent call last):\n  ... (cut)\n" + text[-MAX_TRACEBACK:]
    head = type_name(type(exc)) + (": " + message if message else "")
    return head + "\n\n" + text


class Runner:
    def __init__(self, prefixes, max_result_bytes):
        self.prefixes = prefixes
        self.max_result_bytes = max_result_bytes
        self.functions = {}

    def resolve(self, name):
        fn = self.functions.get(name)
        if fn is not None:
            return fn
        module, sep, qualname = name.partition(":")
        if not sep:
            raise Refused("python function %r has no ':'; expected module:qualname" % name)
        if not allowed(self.prefixes, module):
            raise Refused(
                "module %s is not allowed on this worker (--python-modules %s)"
                % (module, ",".join(self.prefixes) or "<none>")
            )
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            if part.startswith("__"):
                raise Refused("%s names %s: a dunder attribute is not a function to run" % (name, part))
            obj = getattr(obj, part)
            # The allow-list is of modules: a name must not reach through
            # an allowed module into another one it imported
            # (mytasks:os.system), nor run what such a module defines.
            if isinstance(obj, types.ModuleType):
                raise Refused(
                    "%s reaches module %s through %s: only functions of the allowed modules run "
                    "(--python-modules %s)" % (name, obj.__name__, module, ",".join(self.prefixes))
                )
        owner = getattr(obj, "__module__", None)
        if not isinstance(owner, str) or not allowed(self.prefixes, owner):
            raise Refused(
                "%s is defined in module %s, which is not allowed on this worker (--python-modules %s)"
                % (name, owner, ",".join(self.prefixes))
            )
        if not callable(obj):
            raise Refused("%s is a %s, not a function" % (name, type(obj).__name__))
        self.functions[name] = obj
        return obj

    def run(self, slot_id, kind, arg):
        started = time.perf_counter()

        def took():
            return int((time.perf_counter() - started) * 1e6)

        if kind != JOB_KIND_PYTHON:
            return failure(slot_id, "the Python runner runs python jobs only, not kind %d" % kind, False, 0)
        name, _, js = arg.partition(" ")
        try:
            fn = self.resolve(name)
        except Refused as e:
            return failure(slot_id, str(e), False, took())
        except BaseException as e:
            return failure(slot_id, "cannot load %s: %s" % (name, describe(e, 0)), False, took())
        try:
            call = json.loads(js) if js else {}
            args = call.get("args", [])
            kwargs = call.get("kwargs", {})
        except ValueError as e:
            return failure(slot_id, "the arguments are not valid JSON: %s" % e, False, took())
        # drover.coord ties the sessions a job opens to its attempt by
        # this slot; the worker closes them when the job ends.
        os.environ["DROVER_JOB_SLOT"] = str(slot_id)
        try:
            value = fn(*args, **kwargs)
        except BaseException as e:
            # The user's exception: not retried (another attempt would
            # raise it again); the client shows it with its traceback.
            return failure(slot_id, describe(e, 1), False, took())
        finally:
            job_ended(slot_id)
        run_us = took()
        try:
            str_keys_only(value)
            text = json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError) as e:
            return failure(
                slot_id,
                "the result of %s, of type %s, cannot be sent as JSON: %s"
                % (name, type_name(type(value)), e),
                False,
                run_us,
            )
        data = text.encode("utf-8")
        # JobOutput{json=4}: a tag, a length and the text.
        size = 1 + len(varint(len(data))) + len(data)
        if size > self.max_result_bytes:
            return failure(
                slot_id,
                "result is %d bytes, over the worker's limit of %d (--max-result-bytes)"
                % (size, self.max_result_bytes),
                False,
                run_us,
            )
        return output(slot_id, data, run_us)


def read_exact(f, n):
    data = f.read(n)
    if len(data) < n:
        if data:
            raise EOFError("the worker closed the pipe inside a frame")
        return None
    return data


def serve(fin, fout, runner):
    pending = []
    pending_bytes = [0]
    last_flush = [time.perf_counter()]

    def write():
        if pending:
            body = b"".join(pending)
            fout.write(struct.pack("<I", len(body)) + body)
            del pending[:]
            pending_bytes[0] = 0

    def flush():
        write()
        fout.flush()
        last_flush[0] = time.perf_counter()

    while True:
        head = read_exact(fin, 4)
        if head is None:
            return
        (length,) = struct.unpack("<I", head)
        frame = read_exact(fin, length)
        if frame is None:
            raise EOFError("the worker closed the pipe inside a frame")
        last_flush[0] = time.perf_counter()
        for number, job in fields(frame):
            if number != 1:
                continue
            slot_id = kind = 0
            arg = ""
            for n, v in fields(job):
                if n == 1:
                    slot_id = v
                elif n == 2:
                    kind = v
                elif n == 3:
                    arg = bytes(v).decode("utf-8")
            result = bytes_field(1, runner.run(slot_id, kind, arg))
            if pending and pending_bytes[0] + len(result) > FRAME_BYTES:
                write()
            pending.append(result)
            pending_bytes[0] += len(result)
            if time.perf_counter() - last_flush[0] >= FLUSH_EVERY:
                flush()
        flush()


def main():
    if sys.version_info < (3, 6):
        sys.stderr.write("drover: the Python runner needs Python 3.6 or newer\n")
        sys.exit(3)
    max_result_bytes = int(sys.argv[1])
    prefixes = [p for p in sys.argv[2].split(",") if p]
    # The frames keep private copies of the pipes; what a job prints goes
    # to the worker's stderr, and what it reads is empty, so neither can
    # break a frame.
    fin = os.fdopen(os.dup(0), "rb", buffering=1 << 16)
    fout = os.fdopen(os.dup(1), "wb", buffering=1 << 16)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    # Modules are found on PYTHONPATH and the working directory, like
    # `python -c` does.
    serve(fin, fout, Runner(prefixes, max_result_bytes))


if __name__ == "__main__":
    main()
