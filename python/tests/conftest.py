"""Fixtures that run the real drover binaries: a master on an ephemeral
loopback port (``--store memory``) and a worker on it, killed at the end.

The binaries are ``DROVER_MASTER_BIN`` and ``DROVER_WORKER_BIN`` (the Rust
test ``tests/tests/python.rs`` sets them), else ``target/debug`` or
``target/release`` of this repository. Nothing waits for a fixed time: every
wait polls a condition with a deadline and fails at once when a daemon dies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional, TypeVar

import pytest

import drover

REPO = Path(__file__).resolve().parents[2]
# A debug master on a busy two-core machine can be slow to start.
START_TIMEOUT = 30.0
POLL = 0.02

T = TypeVar("T")


def _binary(env: str, name: str) -> str:
    path = os.environ.get(env)
    if path:
        if not os.access(path, os.X_OK):
            raise RuntimeError(f"{env}={path} is not an executable file")
        return path
    for profile in ("debug", "release"):
        candidate = REPO / "target" / profile / name
        if candidate.is_file():
            return str(candidate)
    raise RuntimeError(
        f"no {name} binary: set {env}, or run `cargo build --bins` first (or run the tests "
        "through `cargo test --workspace`, which does both)"
    )


def _clean_env() -> dict:
    """The environment without DROVER_* variables, so only flags count."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROVER_")}
    env.setdefault("RUST_LOG", "info")
    env["NO_COLOR"] = "1"
    return env


def _descendants(pid: int) -> List[int]:
    """Every process below ``pid`` (Linux /proc), deepest last."""
    children: dict = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: List[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Daemon:
    """A started drover daemon: its process and its log."""

    def __init__(self, label: str, args: List[str], pipe_stdout: bool, extra_env: Optional[dict] = None):
        self.label = label
        self._dir = tempfile.TemporaryDirectory(prefix="drover-pytest-")
        self.log_path = Path(self._dir.name) / "log"
        log = open(self.log_path, "wb")
        env = _clean_env()
        env["DROVER_DATA_DIR"] = str(Path(self._dir.name) / "data")
        env.update(extra_env or {})
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe_stdout else log,
            stderr=log,
            env=env,
            # No preexec_fn: Python code run between fork and exec makes
            # subprocess fork for real, and in a process with gRPC threads
            # gRPC's fork handlers can then abort the child before it
            # execs (seen as the "master" dying of SIGABRT). Without it,
            # subprocess uses vfork, which runs no fork handlers; the
            # fixtures' teardown stops every daemon.
        )
        log.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            text = ""
        tail = "\n".join(text.splitlines()[-lines:])
        return f"----- {self.label} (pid {self.proc.pid}): last {lines} lines of its log -----\n{tail}"

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise AssertionError(f"{self.label} exited unexpectedly with {code}\n{self.log_tail()}")

    def kill(self) -> None:
        """Kills the daemon and whatever it started (a worker's children)."""
        if self.proc.poll() is None:
            below = _descendants(self.proc.pid)
            self.proc.kill()
            for pid in below:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._dir.cleanup()


class Cluster:
    """A master and its workers, for one test module or the session."""

    def __init__(self) -> None:
        self.daemons: List[Daemon] = []
        self.url = ""
        #: The master's client token, if it was started with one.
        self.token: Optional[str] = None
        #: The CA of the master's certificate, if it serves TLS.
        self.ca: Optional[str] = None

    def client(self) -> drover.Client:
        """A client with the cluster's token and CA."""
        return drover.Client(self.url, token=self.token, ca=self.ca)

    def wait_for(self, what: str, probe: Callable[[], Optional[T]], timeout: float = START_TIMEOUT) -> T:
        """Polls ``probe`` until it returns a value, checking the daemons."""
        deadline = time.monotonic() + timeout
        while True:
            for d in self.daemons:
                d.check_alive()
            value = probe()
            if value is not None and value is not False:
                return value
            if time.monotonic() > deadline:
                tails = "\n".join(d.log_tail() for d in self.daemons)
                raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tails}")
            time.sleep(POLL)

    def start_master(self, *flags: str, token: Optional[str] = None, tls: Optional[dict] = None) -> str:
        """Starts the master; ``token`` is its client token, ``tls`` the
        paths of its ``cert``, ``key`` and the ``ca`` that signed them."""
        if token is not None:
            flags += ("--client-token", token)
            self.token = token
        if tls is not None:
            flags += ("--tls-cert", tls["cert"], "--tls-key", tls["key"])
            self.ca = tls["ca"]
        self._master_flags = flags
        d = Daemon(
            "drover-master",
            [
                _binary("DROVER_MASTER_BIN", "drover-master"),
                "--store",
                "memory",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "off",
                *flags,
            ],
            pipe_stdout=True,
        )
        self.daemons.append(d)
        self.master = d
        # The master prints `drover-master listening on ADDR` once it serves;
        # read it on a thread so that this one can watch for an early exit.
        lines: List[str] = []
        reader = threading.Thread(target=lambda: lines.append(d.proc.stdout.readline().decode()), daemon=True)
        reader.start()
        line = self.wait_for("the master's `listening on` line", lambda: lines[0] if lines else None)
        prefix = "drover-master listening on "
        if not line.startswith(prefix):
            raise AssertionError(f"the master's first line is {line!r}\n{d.log_tail()}")
        # Drain the rest so the master never blocks on a full pipe.
        threading.Thread(target=d.proc.stdout.read, daemon=True).start()
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://{line[len(prefix):].strip()}"
        return self.url

    def restart_master(self) -> None:
        """Kills the master with SIGKILL and starts it again with the same
        flags on the same address (give it --store redb and --data-dir)."""
        self.master.kill()
        self.daemons.remove(self.master)
        address = self.url.split("://", 1)[1]
        # The later --listen wins; the token and TLS flags are in the flags.
        token, ca = self.token, self.ca
        self.start_master(*self._master_flags, "--listen", address)
        self.token, self.ca = token, ca
        if ca is not None:
            self.url = "https://" + address

    def start_worker(self, processes: int = 2, *flags: str, env: Optional[dict] = None) -> Daemon:
        """Starts a worker with ``processes`` CPU children, extra ``flags``
        and extra ``env``, and waits until it has registered with every
        process of its pool (Python ones too) started."""
        name = f"pytest-{os.getpid()}-{len(self.daemons)}"
        d = Daemon(
            f"drover-worker {name}",
            [
                _binary("DROVER_WORKER_BIN", "drover-worker"),
                "--master",
                self.url,
                "--processes",
                str(processes),
                "--name",
                name,
                "--metrics-listen",
                "off",
                *(("--ca", self.ca) if self.ca else ()),
                *flags,
            ],
            pipe_stdout=False,
            extra_env=env,
        )
        self.daemons.append(d)
        client = self.client()

        def registered() -> bool:
            for w in client.stats().workers:
                if w.name == name and len(w.child_pids) == w.cpu_slots + w.python_slots:
                    return True
            return False

        self.wait_for(f"worker {name} to register with its pool started", registered)
        client.close()
        return d

    def stop(self) -> None:
        for d in reversed(self.daemons):
            d.kill()
        self.daemons.clear()


@pytest.fixture(scope="session")
def cluster():
    """A master and one worker with two processes, shared by the session."""
    c = Cluster()
    try:
        c.start_master()
        c.start_worker(processes=2)
        yield c
    finally:
        c.stop()


@pytest.fixture
def new_cluster():
    """Starts masters (with extra flags) and workers for one test."""
    made: List[Cluster] = []

    def make(
        *master_flags: str, workers: int = 1, processes: int = 2, token: Optional[str] = None, tls: Optional[dict] = None
    ) -> Cluster:
        c = Cluster()
        made.append(c)
        c.start_master(*master_flags, token=token, tls=tls)
        for _ in range(workers):
            c.start_worker(processes)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.stop()


@pytest.fixture
def client(cluster):
    """A client of the cluster (with its token and CA, if it has them)."""
    c = cluster.client()
    yield c
    c.close()


@pytest.fixture
def pool(client):
    with drover.Pool(client=client) as p:
        yield p


@pytest.fixture
def executor(client):
    ex = drover.Executor(client=client)
    yield ex
    ex.shutdown(wait=False, cancel_futures=True)


def wait_until(what, cond, timeout=30.0):
    """Polls ``cond`` until it holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
