"""Compiled loops: numba's ``njit`` with its on-disk cache, one machine-code version per loop whatever
the data.

numba compiles a loop once for each combination of argument types it is called with, and caches each
combination on disk (beside the source, in ``__pycache__``). Whether an array is writable is part of
its type, and polars hands out read-only arrays or writable copies depending on the data; a narrow
integer array's width depends on how many accounts a run has. A run on a world of another shape then
compiled again what runs before it had already compiled: world B at scale 0.02 took 14.3 s after a
run of ``fixtures/tiny`` instead of 3.5 s, 11 s of it in the compiler (the whole set compiles in about
25 s). :func:`kernel` passes each array a loop only reads as a read-only view, and the callers widen
the integer arrays whose width follows the data, so each loop has one version: ``make install``
compiles it once (:func:`warm_up`), and no run compiles again.
"""

from __future__ import annotations

import functools
import inspect
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np

_KERNELS: list[Any] = []  # the numba dispatchers behind every kernel (tests count their versions)


def kernel(*, writes: tuple[str, ...] = (), nogil: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``numba.njit(cache=True)`` of a loop called from Python, every array argument not named in
    ``writes`` passed as a read-only view (free: no copy).

    Parameters
    ----------
    writes
        The arguments the loop writes into (its outputs, filled in place).
    nogil
        Release the GIL while the loop runs (the callers run loops on two threads).

    Returns
    -------
    A decorator; the decorated function's ``compiled`` is numba's dispatcher. A loop called only from
    other compiled loops stays a plain ``numba.njit``: compiled code cannot call back into Python.
    """

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        compiled = numba.njit(cache=True, nogil=nogil)(function)
        names = list(inspect.signature(function).parameters)
        unknown = set(writes) - set(names)
        if unknown:
            raise TypeError(f"{function.__name__}: writes names no argument: {sorted(unknown)}")
        read_only = [name not in writes for name in names]

        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            args = tuple(_read_only(v) if i < len(read_only) and read_only[i] else v for i, v in enumerate(args))
            kwargs = {name: value if name in writes else _read_only(value) for name, value in kwargs.items()}
            return compiled(*args, **kwargs)

        call.compiled = compiled  # type: ignore[attr-defined]
        _KERNELS.append(compiled)
        return call

    return decorate


def _read_only(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.flags.writeable:
        value = value.view()
        value.flags.writeable = False
    return value


def versions() -> dict[str, int]:
    """Per kernel of the imported modules (``module.name``), how many versions numba has compiled or
    loaded in this process."""
    return {f"{k.py_func.__module__}.{k.py_func.__name__}": len(k.overloads) for k in _KERNELS}


def warm_up() -> dict[str, int]:
    """Compile every kernel, or load it from numba's cache: one run over a small simulated world (the
    simulator's fixed world at scale 0.002: IPv6 exits, hubs, lockstep) reaches all of them but the
    lockstep's class numbering, which only large runs reach and which is called here directly.
    About 25 s the first time after an install or an upgrade, a second or two after that.

    Returns
    -------
    :func:`versions`.
    """
    from .chance import _class_representatives
    from .pipeline import run
    from .settings import Settings
    from .simulate import SimulationConfig, simulate

    with tempfile.TemporaryDirectory(prefix="linkage-warm-up-") as scratch:
        simulate(Path(scratch), SimulationConfig(scale=0.002, seed=1, world="fixed"))
        run(Path(scratch) / "input", None, Settings())
    _class_representatives(np.zeros(4, np.int64), np.zeros(4))
    return versions()
