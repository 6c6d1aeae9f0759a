#!/usr/bin/env python3
"""Regenerates the checked-in gRPC stubs of the Python client from the proto.

    python3 python/scripts/gen_stubs.py           # rewrite python/drover/v1/
    python3 python/scripts/gen_stubs.py --check   # exit 1 when they are stale

Only ``proto/drover/v1/drover.proto`` is compiled: ``store.proto`` holds the
master's on-disk records and never travels. The generator is grpcio-tools at
the version pinned in ``requirements-stubs.txt``; when the running Python
lacks it, the script makes a virtualenv for it under ``target/`` (the
workspace's build directory) and runs itself again there, so this is one
command on a fresh clone.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PYTHON_DIR = Path(__file__).resolve().parent.parent
REPO = PYTHON_DIR.parent
PROTO_ROOT = REPO / "proto"
PROTO = "drover/v1/drover.proto"
REQUIREMENTS = Path(__file__).resolve().parent / "requirements-stubs.txt"
# The files protoc writes, relative to the output directory; they land in
# the package as ``drover.v1``, which is also the proto's package, so the
# generated ``from drover.v1 import drover_pb2`` resolves inside the package.
OUTPUTS = ("drover/v1/drover_pb2.py", "drover/v1/drover_pb2.pyi", "drover/v1/drover_pb2_grpc.py")
VENV = REPO / "target" / "python-stubgen"


def pinned_version() -> str:
    """Returns the grpcio-tools version requirements-stubs.txt pins."""
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("grpcio-tools=="):
            return line.split("==", 1)[1]
    raise SystemExit(f"{REQUIREMENTS}: no grpcio-tools==VERSION line")


def generator_problem() -> str | None:
    """Says why this interpreter cannot generate the stubs, or None."""
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8
        return "importlib.metadata is missing"
    try:
        have = version("grpcio-tools")
    except PackageNotFoundError:
        return "grpcio-tools is not installed"
    want = pinned_version()
    if have != want:
        return f"grpcio-tools is {have}, not the pinned {want}"
    return None


def generate(out_dir: Path) -> list[Path]:
    """Compiles the proto into ``out_dir`` and returns the files written."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        PROTO,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {PROTO_ROOT / PROTO}")
    return [out_dir / o for o in OUTPUTS]


def stale_files() -> list[str]:
    """Regenerates into a temporary directory and lists the checked-in files
    that differ from what the generator writes now."""
    with tempfile.TemporaryDirectory(prefix="drover-stubs-") as tmp:
        generate(Path(tmp))
        return [
            o
            for o in OUTPUTS
            if not (PYTHON_DIR / o).is_file()
            or not filecmp.cmp(Path(tmp) / o, PYTHON_DIR / o, shallow=False)
        ]


def reexec_in_venv() -> None:
    """Runs this script again in a virtualenv holding the pinned generator."""
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"gen_stubs: making a virtualenv for grpcio-tools in {VENV}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
        check=True,
    )
    env = dict(os.environ, DROVER_STUBGEN_REEXEC="1")
    os.execve(str(python), [str(python), __file__, *sys.argv[1:]], env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the stubs are stale")
    args = parser.parse_args()
    problem = generator_problem()
    if problem is not None:
        if os.environ.get("DROVER_STUBGEN_REEXEC"):
            raise SystemExit(f"gen_stubs: {problem}, even in {VENV}")
        print(f"gen_stubs: {problem} here", file=sys.stderr)
        reexec_in_venv()
    if args.check:
        stale = stale_files()
        if stale:
            print(
                "gen_stubs: stale: " + ", ".join(stale) + "; run python3 python/scripts/gen_stubs.py",
                file=sys.stderr,
            )
            return 1
        print("gen_stubs: the stubs match the proto")
        return 0
    for f in generate(PYTHON_DIR):
        print(f"gen_stubs: wrote {f.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
