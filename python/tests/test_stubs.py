"""The checked-in gRPC stubs match the proto, and the tests run the installed
package."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import drover

PYTHON_DIR = Path(__file__).resolve().parents[1]


def load_gen_stubs():
    path = PYTHON_DIR / "scripts" / "gen_stubs.py"
    spec = importlib.util.spec_from_file_location("gen_stubs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_checked_in_stubs_match_the_proto():
    gen = load_gen_stubs()
    problem = gen.generator_problem()
    assert problem is None, f"cannot regenerate the stubs: {problem} (pip install -r python/scripts/requirements-stubs.txt)"
    stale = gen.stale_files()
    assert not stale, (
        f"the stubs in python/drover/v1 are stale ({', '.join(stale)}): proto/drover/v1/drover.proto "
        "changed; run `python3 python/scripts/gen_stubs.py` and commit the result"
    )


def test_the_installed_stubs_are_the_checked_in_ones():
    installed = Path(drover.v1.__file__).parent
    for name in ("drover_pb2.py", "drover_pb2_grpc.py"):
        assert (installed / name).read_bytes() == (PYTHON_DIR / "drover" / "v1" / name).read_bytes(), name


def test_the_package_under_test_is_the_installed_one():
    # Run through `cargo test`, the tests must exercise `pip install ./python`,
    # not the source tree (stub and runtime mismatches show only there).
    if os.environ.get("DROVER_TEST_INSTALLED") != "1":
        return
    where = Path(drover.__file__).resolve()
    assert "site-packages" in where.parts, f"drover was imported from {where}, not an installed copy"
