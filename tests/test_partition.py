"""Leiden's partition, in this process and in a worker process of its own (a real process)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import linkage
from linkage.partition import LeidenGraph, LeidenProcess, leiden
from linkage.settings import Settings

from .conftest import TINY


def _cliques(sizes: list[int], bridge_weight: float) -> LeidenGraph:
    """Cliques of weight-1 links, consecutive ones joined by one link of ``bridge_weight``."""
    a, b, w, first = [], [], [], 0
    for size in sizes:
        for i in range(first, first + size):
            for j in range(i + 1, first + size):
                a.append(i), b.append(j), w.append(1.0)
        if first:
            a.append(first - 1), b.append(first), w.append(bridge_weight)
        first += size
    return LeidenGraph(first, np.array(a), np.array(b), np.array(w))


def _random_graph(seed: int, nodes: int = 400, edges: int = 3000) -> LeidenGraph:
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, nodes, edges), rng.integers(0, nodes, edges)
    keep = a != b
    return LeidenGraph(nodes, a[keep], b[keep], rng.exponential(1.0, int(keep.sum())))


def test_cliques_joined_by_weak_links_are_communities_of_their_own() -> None:
    membership = leiden(_cliques([5, 6, 7], bridge_weight=0.1), resolution=0.5, iterations=2, seed=1)
    assert [len(set(membership[s : s + n])) for s, n in ((0, 5), (5, 6), (11, 7))] == [1, 1, 1]
    assert len(set(membership)) == 3


def test_the_worker_process_gives_the_partition_this_process_gives() -> None:
    graph = _random_graph(3)
    here = leiden(graph, resolution=0.02, iterations=2, seed=7)
    with LeidenProcess() as worker:
        assert worker._process is not None and worker._process.pid is not None  # a process of its own
        elsewhere = worker.run(graph, resolution=0.02, iterations=2, seed=7)()
    np.testing.assert_array_equal(here, elsewhere)
    assert len(set(here)) > 1
    # another seed, another partition: the seed reaches the worker's generator
    assert not np.array_equal(here, leiden(graph, resolution=0.02, iterations=2, seed=8))


def test_without_a_worker_the_partition_is_computed_here_when_asked() -> None:
    graph = _random_graph(4)
    worker = LeidenProcess(start=False)
    assert worker._process is None
    np.testing.assert_array_equal(
        worker.run(graph, resolution=0.02, iterations=2, seed=7)(), leiden(graph, resolution=0.02, iterations=2, seed=7)
    )


def test_a_failure_in_the_worker_is_raised_here_with_its_traceback() -> None:
    graph = _random_graph(5)
    broken = LeidenGraph(graph.n_nodes, graph.a, graph.b, graph.weight[:-1])  # one weight short
    with LeidenProcess() as worker:
        partitioned = worker.run(broken, resolution=0.02, iterations=2, seed=7)
        with pytest.raises(RuntimeError, match="Leiden failed in its worker process") as failure:
            partitioned()
    assert "Traceback" in str(failure.value)


def test_a_worker_still_partitioning_is_ended_when_its_answer_is_no_longer_wanted() -> None:
    worker = LeidenProcess()
    process = worker._process
    worker.run(_random_graph(6, nodes=20_000, edges=400_000), resolution=0.02, iterations=-1, seed=7)
    worker.close()  # (the main process failed meanwhile): no wait for the partition
    assert process is not None and process.returncode == -signal.SIGKILL  # killed, not finished
    assert worker._process is None


def test_a_worker_given_nothing_leaves_when_closed() -> None:
    worker = LeidenProcess()
    process = worker._process
    worker.close()
    assert process is not None and process.returncode == 0


@pytest.mark.parametrize("dies", ["before it is given the graph", "after it is given the graph, before it answers"])
def test_a_worker_that_dies_leaves_the_partition_to_this_process(dies: str, caplog: pytest.LogCaptureFixture) -> None:
    graph = _random_graph(8, nodes=100, edges=600)  # (a pickle smaller than a pipe's buffer: handed over at once)
    expected = leiden(graph, resolution=0.02, iterations=2, seed=7)
    with caplog.at_level(logging.WARNING, logger="linkage.partition"), LeidenProcess() as worker:
        assert worker._process is not None
        if dies == "before it is given the graph":
            worker._process.kill()
            worker._process.wait()
        else:
            # stopped first, so that it cannot answer before it is killed: a small graph is
            # partitioned within milliseconds, and a kill that comes later would find the answer sent
            os.kill(worker._process.pid, signal.SIGSTOP)
        partitioned = worker.run(graph, resolution=0.02, iterations=2, seed=7)
        if dies != "before it is given the graph":
            worker._process.kill()  # (killed for memory, say)
        np.testing.assert_array_equal(partitioned(), expected)
    assert "partitioning in this process" in caplog.text


def test_the_worker_leaves_ctrl_c_to_the_main_process(caplog: pytest.LogCaptureFixture) -> None:
    # a graph larger than a pipe's buffer: once it is handed over, the worker is reading it in _serve
    graph = _random_graph(9, nodes=20_000, edges=200_000)
    with caplog.at_level(logging.WARNING, logger="linkage.partition"), LeidenProcess() as worker:
        assert worker._process is not None
        partitioned = worker.run(graph, resolution=0.02, iterations=2, seed=7)
        os.kill(worker._process.pid, signal.SIGINT)
        membership = partitioned()
    assert "partitioning in this process" not in caplog.text  # the worker answered
    np.testing.assert_array_equal(membership, leiden(graph, resolution=0.02, iterations=2, seed=7))


def test_the_worker_does_not_run_the_callers_script_again(tmp_path: Path) -> None:
    """multiprocessing's spawn would re-run a main script that has no ``__main__`` guard in the child."""
    runs = tmp_path / "runs.txt"
    script = tmp_path / "unguarded.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import numpy as np
            from linkage.partition import LeidenGraph, LeidenProcess
            with open({str(runs)!r}, "a") as runs:
                runs.write("ran\\n")
            graph = LeidenGraph(4, np.array([0, 2]), np.array([1, 3]), np.array([1.0, 1.0]))
            with LeidenProcess() as worker:
                print(sorted(worker.run(graph, 0.1, 2, 1)().tolist()))
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 0, 1, 1]"
    assert runs.read_text() == "ran\n"
    assert "partitioning in this process" not in done.stderr


def test_a_run_partitioned_in_a_worker_process_has_the_same_rings_byte_for_byte(tmp_path: Path) -> None:
    here = linkage.run(TINY, tmp_path / "here")
    settings = Settings.load(overrides={"detect.leiden_process_min_accounts": 0})
    elsewhere = linkage.run(TINY, tmp_path / "elsewhere", settings)
    assert here.rings.height > 0
    for name in ("rings.csv", "ring_members.csv", "ring_evidence.csv", "accounts.csv"):
        assert (tmp_path / "here" / name).read_bytes() == (tmp_path / "elsewhere" / name).read_bytes(), name
    assert "score/accounts" in elsewhere.summary["timings_s"]
