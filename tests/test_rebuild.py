"""Cron rebuilds: incremental equals full, changed files, locking, SIGKILL at any stage, ring identity."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from linkage.cli import main
from linkage.rebuild import RunLock, rebuild
from linkage.settings import Settings

from .conftest import TINY, read_csv


def _partitioned(target: Path, days: int = 4) -> Path:
    """The tiny fixture with requests split into daily partitions."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(TINY / "accounts.csv", target)
    shutil.copy(TINY / "payments.csv", target)
    requests = read_csv(TINY / "requests.csv").with_columns(pl.col("ts").str.slice(0, 10).alias("_day"))
    for day, part in sorted(requests.partition_by("_day", as_dict=True).items()):
        folder = target / "requests" / f"date={day[0]}"
        folder.mkdir(parents=True, exist_ok=True)
        part.drop("_day").write_csv(folder / "part-0.csv")
    return target


def _content(out: Path) -> list[tuple]:
    """Rings as member sets with score and flag: what must not depend on the order of ingestion."""
    members = read_csv(out / "ring_members.csv")
    rings = read_csv(out / "rings.csv")
    grouped = (
        members.group_by("ring_id")
        .agg(pl.col("account_id").sort())
        .join(rings.select("ring_id", "score", "flagged"), on="ring_id")
    )
    return sorted((tuple(a), s, f) for a, s, f in grouped.select("account_id", "score", "flagged").iter_rows())


def test_two_nights_equal_one_full_rebuild(tmp_path: Path) -> None:
    full_input = _partitioned(tmp_path / "all")
    partitions = sorted((full_input / "requests").iterdir())
    nightly = tmp_path / "nightly"
    nightly.mkdir()
    shutil.copy(full_input / "accounts.csv", nightly)
    shutil.copy(full_input / "payments.csv", nightly)
    (nightly / "requests").mkdir()
    half = len(partitions) // 2
    for folder in partitions[:half]:
        shutil.copytree(folder, nightly / "requests" / folder.name)
    first = rebuild(nightly, tmp_path / "out")
    for folder in partitions[half:]:
        shutil.copytree(folder, nightly / "requests" / folder.name)
    second = rebuild(nightly, tmp_path / "out")
    assert second["files"]["new"] == len(partitions) - half and second["files"]["unchanged"] == half + 2
    full = rebuild(full_input, tmp_path / "full", full=True)
    assert _content(tmp_path / "out") == _content(tmp_path / "full")
    assert _sample(tmp_path / "out") == _sample(tmp_path / "full")  # the second night started from the first's
    assert second["tables"]["requests"]["rows_used"] == full["tables"]["requests"]["rows_used"]
    assert first["tables"]["requests"]["rows_read"] < second["tables"]["requests"]["rows_read"]


def test_changed_file_is_reingested_without_double_counting(tmp_path: Path) -> None:
    data = _partitioned(tmp_path / "in")
    rebuild(data, tmp_path / "out")
    victim = sorted((data / "requests").rglob("*.csv"))[0]
    frame = read_csv(victim)
    frame.head(frame.height - 2).write_csv(victim)  # the exporter re-delivered a corrected partition
    summary = rebuild(data, tmp_path / "out")
    assert summary["files"]["changed"] == 1
    total = sum(read_csv(p).height for p in (data / "requests").rglob("*.csv"))
    assert summary["tables"]["requests"]["rows_read"] == total


def test_second_concurrent_run_exits_75_naming_the_holder(tmp_path: Path) -> None:
    data = _partitioned(tmp_path / "in")
    out = tmp_path / "out"
    with RunLock(out / ".lock"):
        outcome = CliRunner().invoke(main, ["rebuild", str(data), "--out", str(out)])
    assert outcome.exit_code == 75
    assert f"pid {os.getpid()}" in outcome.output
    assert json.loads(outcome.output.splitlines()[0])["exit_reason"] == "lock_held"


def test_lock_left_by_a_killed_run_is_taken_over(tmp_path: Path) -> None:
    data = _partitioned(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").write_text("pid 999999 on somewhere since 2026-01-01T00:00:00Z\n")
    summary = rebuild(data, out)
    assert summary["lock_taken_over"].startswith("pid 999999")
    assert (out / ".lock").read_text() == ""


def test_ring_ids_persist_and_changes_are_recorded(tmp_path: Path) -> None:
    data = _partitioned(tmp_path / "in")
    first = rebuild(data, tmp_path / "out")
    ids_first = sorted(read_csv(tmp_path / "out" / "rings.csv")["ring_id"].to_list())
    assert first["ring_changes"] == {"new": len(ids_first)}
    second = rebuild(data, tmp_path / "out")
    assert sorted(read_csv(tmp_path / "out" / "rings.csv")["ring_id"].to_list()) == ids_first
    assert second["ring_changes"] == {"unchanged": len(ids_first)}
    history = (tmp_path / "out" / "runs.jsonl").read_text().splitlines()
    assert len(history) == 2 and json.loads(history[1])["exit_reason"] == "ok"


def test_stdout_is_one_json_line(tmp_path: Path) -> None:
    data = _partitioned(tmp_path / "in")
    outcome = CliRunner().invoke(main, ["rebuild", str(data), "--out", str(tmp_path / "out")])
    assert outcome.exit_code == 0
    line = json.loads(outcome.stdout.strip())
    assert line["exit_reason"] == "ok" and "ring_changes" in line and "timings_s" in line


def _rebuild_process(data: Path, out: Path, neo4j: bool) -> subprocess.Popen:
    args = [sys.executable, "-m", "linkage.cli", "rebuild", str(data), "--out", str(out)] + (
        ["--neo4j"] if neo4j else []
    )
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())


def _sigkill_then_finish(
    tmp_path: Path, neo4j: bool, delays: list[float], kill_when: Callable[[], bool] | None = None
) -> tuple[Path, Path]:
    """A reference rebuild; then rebuilds of the victim killed after each delay (and one killed as
    soon as ``kill_when()`` holds); then one that must finish."""
    data = _partitioned(tmp_path / "in", days=6)
    reference = tmp_path / "reference"
    assert _rebuild_process(data, reference, neo4j).wait(timeout=600) == 0
    victim = tmp_path / "victim"
    for delay in delays:
        process = _rebuild_process(data, victim, neo4j)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    if kill_when is not None:
        process = _rebuild_process(data, victim, neo4j)
        deadline = time.monotonic() + 300
        while not kill_when() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, "the rebuild finished before the moment it was to be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finisher = _rebuild_process(data, victim, neo4j)
    assert finisher.wait(timeout=600) == 0, finisher.stderr.read().decode()
    return reference, victim


@pytest.mark.slow
def test_sigkill_at_any_stage_then_next_run_completes(tmp_path: Path) -> None:
    reference, victim = _sigkill_then_finish(tmp_path, neo4j=False, delays=[0.3, 1.0, 1.6, 2.2, 2.8, 3.5])
    assert _content(victim) == _content(reference)
    leftovers = [p.name for p in victim.rglob("*.tmp")] + [p.name for p in victim.rglob(".*.tmp")]
    assert not leftovers, leftovers


@pytest.mark.neo4j
@pytest.mark.slow
def test_sigkill_with_neo4j_converges_to_the_same_graph(tmp_path: Path) -> None:
    from .test_neo4j import _connect

    store = _connect()
    with store.driver.session() as session:
        session.run("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS").consume()

    def graph_counts() -> tuple[int, int]:
        # (:Run) nodes are the run history: one per completed run, so they are left out
        records, _, _ = store.driver.execute_query(
            "MATCH (n) WHERE NOT n:Run WITH count(n) AS nodes "
            "MATCH (a)-[r]->(b) WHERE NOT b:Run RETURN nodes, count(r) AS relationships"
        )
        return records[0]["nodes"], records[0]["relationships"]

    reference, _ = _sigkill_then_finish(tmp_path / "a", neo4j=True, delays=[])
    expected = graph_counts()
    with store.driver.session() as session:
        session.run("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS").consume()

    def lock_is_held() -> bool:
        records, _, _ = store.driver.execute_query("MATCH (l:LinkageLock) RETURN count(l) AS n")
        return records[0]["n"] > 0

    # the last victim dies holding the load lock: the finisher takes it over instead of waiting
    started = time.monotonic()
    _, victim = _sigkill_then_finish(tmp_path / "b", neo4j=True, delays=[1.0, 2.5, 4.0, 6.0], kill_when=lock_is_held)
    assert time.monotonic() - started < Settings().neo4j.lock_wait_seconds
    assert graph_counts() == expected
    assert _content(victim) == _content(reference)
    rings, _, _ = store.driver.execute_query("MATCH (r:Ring) RETURN count(r) AS n, count(DISTINCT r.run_id) AS runs")
    assert rings[0]["runs"] == 1 and rings[0]["n"] == len(set(read_csv(victim / "rings.csv")["ring_id"]))
    store.close()


@pytest.mark.neo4j
def test_nightly_neo4j_load_sends_only_what_changed(tmp_path: Path) -> None:
    from .test_neo4j import _connect

    store = _connect()
    with store.driver.session() as session:
        session.run("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS").consume()
    data = _partitioned(tmp_path / "in")
    partitions = sorted((data / "requests").iterdir())
    held_back = tmp_path / "later"
    shutil.move(str(partitions[-1]), held_back)
    first = rebuild(data, tmp_path / "out", store=store)
    shutil.move(str(held_back), partitions[-1])
    second = rebuild(data, tmp_path / "out", store=store)
    again = rebuild(data, tmp_path / "out", store=store)
    assert 0 < second["neo4j_load"]["relationships"] < first["neo4j_load"]["relationships"]
    assert again["neo4j_load"]["relationships"] == 0 and again["neo4j_load"]["nodes"] == 0
    full_counts = store.counts()
    with store.driver.session() as session:
        session.run("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS").consume()
    rebuild(data, tmp_path / "fresh", store=store, full=True)
    assert store.counts()["relationships"] == full_counts["relationships"]
    store.close()


def test_staged_files_of_another_format_or_settings_are_staged_again(tmp_path: Path) -> None:
    """After an upgrade (another staging format) or a change of template settings, every file is
    staged again instead of merging stale staged data; rings and their ids come out as before."""
    data = _partitioned(tmp_path / "in")
    out = tmp_path / "out"
    first = rebuild(data, out)
    assert first["files"]["staging_reset"] is False
    before = _content(out)
    manifest_path = out / "state" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["staging"] = "written-by-an-older-version"
    manifest_path.write_text(json.dumps(manifest))
    upgraded = rebuild(data, out)
    assert upgraded["files"]["staging_reset"] is True
    assert upgraded["files"]["new"] == len(manifest["files"]) and upgraded["files"]["unchanged"] == 0
    assert _content(out) == before and upgraded["ring_changes"] == {"unchanged": first["rings"]["total"]}
    again = rebuild(data, out)
    assert again["files"]["staging_reset"] is False and again["files"]["new"] == 0
    after_staging = rebuild(data, out, Settings.load(overrides={"templates.near_duplicate_jaccard": 0.8}))
    assert after_staging["files"]["staging_reset"] is False  # used only after staging: nothing re-ingested
    changed = rebuild(data, out, Settings.load(overrides={"templates.max_prompts_per_account": 3}))
    assert changed["files"]["staging_reset"] is True


def test_nights_that_remove_or_change_files_equal_a_full_rebuild(tmp_path: Path) -> None:
    """Nights that only add files start from the last night's merged prompt sample; a night that removes
    or changes a file must not (its texts would linger or be missed): each equals a full rebuild."""
    data = _partitioned(tmp_path / "in")
    out = tmp_path / "out"
    rebuild(data, out, Settings.load(overrides={"templates.max_prompts_per_account": 1}))
    assert (out / "state" / "sample" / "covered.json").exists()
    partitions = sorted((data / "requests").iterdir())
    shutil.rmtree(partitions[0])  # removed
    victim = sorted(partitions[-1].rglob("*.csv"))[0]
    frame = read_csv(victim)
    frame.head(frame.height // 2).write_csv(victim)  # changed
    for night, settings in enumerate([Settings.load(overrides={"templates.max_prompts_per_account": 1})] * 2):
        summary = rebuild(data, out, settings)
        full = rebuild(data, tmp_path / f"full{night}", settings, full=True)
        assert _content(out) == _content(tmp_path / f"full{night}")
        assert summary["tables"]["requests"]["rows_used"] == full["tables"]["requests"]["rows_used"]
        assert _sample(out) == _sample(tmp_path / f"full{night}")


def _sample(out: Path) -> set[tuple[str, int]]:
    """The merged prompt sample a rebuild saved: (account, text hash) pairs."""
    frame = pl.read_parquet(out / "state" / "sample" / "candidates.parquet")
    return set(zip(frame["account_id"].cast(pl.Utf8).to_list(), frame["prompt_key"].to_list()))


def test_a_graph_snapshot_whose_write_was_cut_short_is_not_used(tmp_path: Path, monkeypatch) -> None:
    """The snapshot rebuild diffs against: a run killed while writing it left some tables new, some
    old or missing; the next run must load from empty instead of crashing or diffing against a mix."""
    import linkage
    from linkage.errors import InputError
    from linkage.store import embedded

    graph = linkage.run(TINY).graph
    store = embedded.EmbeddedStore(tmp_path / "graph")
    store.write_graph(graph)
    assert store.has_graph() and store.read_graph().nodes["Account"].equals(graph.nodes["Account"])

    written: list[Path] = []

    def killed_after_three(frame: pl.DataFrame, path: Path) -> None:
        if len(written) == 3:
            raise KeyboardInterrupt("killed")
        written.append(path)

    monkeypatch.setattr(embedded, "write_parquet", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        store.write_graph(graph)
    assert not store.has_graph()
    monkeypatch.undo()
    (tmp_path / "graph" / "relationships" / "USED_MODEL.parquet").unlink()
    with pytest.raises(InputError, match="not a complete graph"):
        store.read_graph()
