"""Stage 4b — communities: Leiden's CPM partition of the account graph, in a process of its own.

python-igraph holds the GIL while it builds the graph and for the whole of Leiden, so run in the
main process it leaves the second core idle: at incident scale the stage kept 1.06-1.14 cores busy
for 7.5-8.6 s. :class:`LeidenProcess` starts a worker process early (it boots and imports igraph
while the projection runs), hands it the links when they are ready, and lets the main process read
the accounts for scoring meanwhile. Small graphs are partitioned in the main process: a process
costs about 0.3 s to start. Same input, same seed, same partition either way (the worker seeds its
own generator exactly as the main process would).
"""

from __future__ import annotations

import multiprocessing
import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import igraph as ig
import numpy as np


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
    partition. Without a worker (``start=False``), or when the worker cannot be started, the
    partition is computed in this process when it is asked for."""

    def __init__(self, start: bool = True) -> None:
        self._process: Any = None
        self._connection: Connection | None = None
        self._waiting = False  # a graph was handed over and its partition not yet received
        if start:
            self._start()

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # (no fork of a process running polars' threads)
        try:
            ours, theirs = context.Pipe()
            process = context.Process(target=_serve, args=(theirs,), name="linkage-leiden", daemon=True)
            process.start()
        except OSError:  # no processes here (a restricted sandbox): Leiden runs in this one
            return
        theirs.close()
        self._process, self._connection = process, ours

    def run(self, graph: LeidenGraph, resolution: float, iterations: int, seed: int) -> Callable[[], np.ndarray]:
        """Start :func:`leiden` on the worker (or defer it to this process); returns what waits for it."""
        arguments = (graph, resolution, iterations, seed)
        if self._connection is None:
            return lambda: leiden(*arguments)
        try:
            self._connection.send(arguments)
        except OSError:
            raise RuntimeError(f"Leiden's worker process ended early (exit code {self._exit_code()})") from None
        self._waiting = True
        return self._received

    def _received(self) -> np.ndarray:
        assert self._connection is not None
        try:
            kind, value = self._connection.recv()
        except (EOFError, OSError):
            raise RuntimeError(
                f"Leiden's worker process ended without a partition (exit code {self._exit_code()})"
            ) from None
        finally:
            self._waiting = False
        if kind == "error":
            raise RuntimeError(f"Leiden failed in its worker process:\n{value}")
        return value

    def _exit_code(self) -> int | None:
        self._process.join(timeout=1)
        return self._process.exitcode

    def close(self) -> None:
        """End the worker: it has answered, or its answer is no longer wanted."""
        if self._process is None:
            return
        assert self._connection is not None
        if self._waiting:  # still partitioning, and the main process failed meanwhile
            self._process.terminate()
        self._connection.close()  # (an idle worker reads the end of its input and leaves)
        self._process.join()
        self._process = self._connection = None
        self._waiting = False

    def __enter__(self) -> LeidenProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(connection: Connection) -> None:
    """The worker: one graph in, one partition (or the error's traceback) out."""
    try:
        arguments = connection.recv()
    except EOFError:  # the main process had no graph for it
        return
    try:
        answer: tuple[str, Any] = ("membership", leiden(*arguments))
    except Exception:
        answer = ("error", traceback.format_exc())
    connection.send(answer)
    connection.close()
