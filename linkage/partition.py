"""Stage 4b — communities: Leiden's CPM partition of the account graph, in a process of its own.

python-igraph holds the GIL while it builds the graph and for the whole of Leiden, so run in the
main process it leaves the second core idle: at incident scale the stage kept 1.06-1.14 cores busy
for 8.2-8.6 s (two runs). :class:`LeidenProcess` starts a worker process early (it boots and imports igraph
while the projection runs), hands it the links when they are ready, and lets the main process read
the accounts for scoring meanwhile. Small graphs are partitioned in the main process: a process
costs about 0.3 s to start. Same input, same seed, same partition either way (the worker seeds its
own generator exactly as the main process would).
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import igraph as ig
import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeidenGraph:
    """A weighted undirected graph on nodes ``0..n_nodes-1``: edge ``i`` joins ``a[i]`` and ``b[i]``."""

    n_nodes: int
    a: np.ndarray
    b: np.ndarray
    weight: np.ndarray


def leiden(graph: LeidenGraph, resolution: float, iterations: int, seed: int) -> np.ndarray:
    """Leiden's partition under the Constant Potts Model.

    Parameters
    ----------
    graph
        The nodes and weighted edges.
    resolution
        CPM's resolution: a community is worth keeping while its internal weight beats
        ``resolution`` per pair of members.
    iterations
        Leiden's iterations (negative: until the partition no longer changes).
    seed
        Seeds the random generator igraph draws from: the same graph and seed give the same partition.

    Returns
    -------
    np.ndarray
        The community of each node, ``0..k-1``.
    """
    network = ig.Graph(n=graph.n_nodes, directed=False)
    # (python-igraph's limited-API build reads any edge list item by item: pairs zipped from two
    # lists of ints are read fastest, 2.0 s for 4.7 M edges against 2.4-3.0 s from an array)
    network.add_edges(zip(graph.a.tolist(), graph.b.tolist()))
    random.seed(seed)
    ig.set_random_number_generator(random)
    partition = network.community_leiden(
        objective_function="CPM", weights=graph.weight, resolution=resolution, n_iterations=iterations
    )
    return np.asarray(partition.membership)


class LeidenProcess:
    """A worker process that runs :func:`leiden` once; a context manager that ends it.

    ``with LeidenProcess(start=big) as worker: … result = worker.run(graph, …); …; result()``:
    ``run`` hands the graph over and returns at once; calling what it returns waits for the
    partition. Without a worker (``start=False``), the partition is computed in this process when
    it is asked for, and so it is, with a warning, when the worker cannot be started or dies
    (killed for memory, say): the worker saves time, it is never a reason for a run to fail. An
    error inside Leiden is raised here with the worker's traceback.

    The worker is this interpreter running :func:`_serve` (``python -P -c …``: no current folder on
    its path), not multiprocessing's spawn: that re-runs the caller's main script in the child when
    it has no ``if __name__ == "__main__"`` guard (a user's script calling ``linkage.run``)."""

    def __init__(self, start: bool = True) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._waiting = False  # a graph was handed over and its partition not yet received
        if start:
            self._start()

    def _start(self) -> None:
        # the interpreter's own path first (so that nothing shadows its standard library), then the
        # folder this copy of linkage came from, in case the caller put it on sys.path by hand
        package_root = str(Path(__file__).resolve().parent.parent)
        serve = f"import sys; sys.path.append({package_root!r}); from linkage.partition import _serve; _serve()"
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-P", "-c", serve], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
        except OSError as exc:  # no processes here (a restricted sandbox): Leiden runs in this one
            log.warning("Leiden's worker process could not start (%s): partitioning in this process", exc)
            return
        log.info("Leiden's worker process started (pid %d)", self._process.pid)

    def run(self, graph: LeidenGraph, resolution: float, iterations: int, seed: int) -> Callable[[], np.ndarray]:
        """Start :func:`leiden` on the worker (or defer it to this process); returns what waits for it."""
        arguments = (graph, resolution, iterations, seed)
        here: Callable[[], np.ndarray] = lambda: leiden(*arguments)  # noqa: E731
        if self._process is None:
            return here
        try:
            pickle.dump(arguments, self._pipe("stdin"), protocol=pickle.HIGHEST_PROTOCOL)
            self._pipe("stdin").close()
        except OSError:
            self._abandon("ended before it was given the graph")
            return here
        self._waiting = True
        return lambda: self._received(here)

    def _received(self, here: Callable[[], np.ndarray]) -> np.ndarray:
        try:
            kind, value = pickle.load(self._pipe("stdout"))
        except (EOFError, OSError, pickle.UnpicklingError):
            self._abandon("ended without a partition")
            return here()
        finally:
            self._waiting = False
        if kind == "error":
            raise RuntimeError(f"Leiden failed in its worker process:\n{value}")
        return np.asarray(value)

    def _abandon(self, what: str) -> None:
        assert self._process is not None
        self._process.kill()
        self.close()
        log.warning("Leiden's worker process %s: partitioning in this process", what)

    def _pipe(self, name: str) -> IO[bytes]:
        assert self._process is not None
        pipe = getattr(self._process, name)
        assert pipe is not None
        return pipe

    def close(self) -> None:
        """End the worker: it has answered, or its answer is no longer wanted."""
        if self._process is None:
            return
        if self._waiting:  # still partitioning, and the main process failed meanwhile
            self._process.kill()
            self._waiting = False
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()  # (an idle worker reads the end of its input and leaves)
        self._process.wait()
        self._process = None

    def __enter__(self) -> LeidenProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve() -> None:
    """The worker: one graph in on stdin, one partition (or the error's traceback) out on stdout."""
    # Ctrl-C reaches the whole process group: the main process decides, and ends the worker itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # (anything printed goes to stderr, not into the answer)
    try:
        arguments = pickle.load(sys.stdin.buffer)
    except EOFError:  # the main process had no graph for it
        return
    try:
        answer: tuple[str, Any] = ("membership", leiden(*arguments))
    except Exception:
        answer = ("error", traceback.format_exc())
    pickle.dump(answer, answers, protocol=pickle.HIGHEST_PROTOCOL)
    answers.close()
