from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from linkage.kernels import kernel
from linkage.simulate import SimulationConfig, simulate

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@kernel(writes=("out",))
def _doubled(values, out):
    for i in range(len(values)):
        out[i] = 2 * values[i]


def test_a_kernel_has_one_version_for_writable_and_read_only_arrays() -> None:
    writable = np.arange(4, dtype=np.int64)
    read_only = np.arange(4, dtype=np.int64)
    read_only.flags.writeable = False
    for values in (writable, read_only, writable[1:]):
        out = np.zeros(len(values), np.int64)
        _doubled(values, out)
        assert (out == 2 * values).all()
    _doubled(values=writable, out=np.zeros(4, np.int64))  # (by name too)
    assert len(_doubled.compiled.overloads) == 1
    assert writable.flags.writeable  # the caller's array is not touched: the loop got a view


def test_writes_must_name_arguments() -> None:
    with pytest.raises(TypeError, match="outs"):
        kernel(writes=("outs",))(lambda values, out: None)


def test_a_world_of_another_shape_compiles_nothing_again(tmp_path: Path) -> None:
    # tiny: under 256 accounts (one-byte positions); the simulated world: more, and other columns come
    # out of polars writable or read-only. Before the kernels passed read-only views and the callers
    # widened positions, the second world compiled 7 loops again (about 11 s on this machine). In a
    # fresh interpreter: the versions counted are those this process loaded or compiled
    simulate(tmp_path, SimulationConfig(scale=0.002, seed=3, world="fixed"))
    script = (
        "import json, sys\n"
        "from linkage import kernels\n"
        "from linkage.pipeline import run\n"
        "from linkage.settings import Settings\n"
        "run(sys.argv[1], None, Settings())\n"
        "before = kernels.versions()\n"
        "run(sys.argv[2], None, Settings())\n"
        "print(json.dumps([before, kernels.versions()]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(FIXTURES / "tiny"), str(tmp_path / "input")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    before, after = json.loads(done.stdout.strip().splitlines()[-1])
    grown = {name: (before[name], after[name]) for name in before if before[name] and after[name] > before[name]}
    assert grown == {}
    assert sum(1 for n in after.values() if n) >= len(after) - 1  # the world reached (nearly) every loop
