"""The named queries' traps (issue 16), without a server: typed parameters with defaults, visible
cuts, a bounded neighbourhood, and the files-only query tool."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from linkage.cli import _format_rows, main
from linkage.cypher import queries
from linkage.cypher import query as named_query
from linkage.errors import ConfigError


def test_ids_stay_strings_and_defaults_fill_in() -> None:
    bound = named_query("accounts_by_entity").bind({"value": "00123"})
    assert bound == {"value": "00123", "kind": "any", "limit": 500}
    card = named_query("accounts_by_entity").bind({"value": "4111111111111111"})
    assert card["value"] == "4111111111111111"
    assert named_query("neighbourhood").bind({"account_id": "7", "depth": "3"})["depth"] == 3


@pytest.mark.parametrize(
    "given,message",
    [
        ({"depth": "2"}, "needs --param account_id"),
        ({"account_id": "a", "depth": "two"}, "expected integer"),
        ({"account_id": "a", "hops": "2"}, "no parameter 'hops'"),
    ],
)
def test_parameter_mistakes_are_clear_errors(given: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        named_query("neighbourhood").bind(given)


def test_every_example_binds() -> None:
    for q in queries().values():
        words = shlex.split(q.example)
        given = dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "--param")
        assert q.bind(given).keys() == {p.name for p in q.params}, q.name


def test_table_cells_are_cut_visibly() -> None:
    long = "x" * 100
    assert "…" in _format_rows(["v"], [[long]], "table", 60)
    assert long in _format_rows(["v"], [[long]], "table", 0)
    assert long in _format_rows(["v"], [[long]], "csv", 60)


@pytest.fixture(scope="module")
def graph_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny fixture with all-digit account ids (leading zeros), run with --graph."""
    from .conftest import TINY

    data = tmp_path_factory.mktemp("digits") / "in"
    data.mkdir()
    for table in ("accounts", "payments", "requests"):
        text = (TINY / f"{table}.csv").read_text().replace("ring_", "000009").replace("ben_", "000008")
        (data / f"{table}.csv").write_text(text)
    out = data.parent / "out"
    result = CliRunner().invoke(main, ["run", str(data), "--out", str(out), "--graph", "-q"])
    assert result.exit_code == 0, result.stderr
    return out / "graph"


def _query(graph_dir: Path, *args: str) -> list[dict]:
    result = CliRunner().invoke(main, ["query", *args, "--graph-dir", str(graph_dir), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_files_only_queries_find_numeric_looking_ids(graph_dir: Path) -> None:
    near = _query(graph_dir, "neighbourhood", "--param", "account_id=00000900", "--param", "depth=1")
    assert near and all(row["account_id"].startswith("0000") for row in near)
    shared = _query(graph_dir, "why_linked", "--param", "a=00000900", "--param", "b=00000903")
    assert {"PaymentInstrument", "Device", "IP"} <= {row["kind"] for row in shared}


def test_a_graph_written_before_templates_were_counted_still_answers(graph_dir: Path, tmp_path: Path) -> None:
    """``repeated_by`` came later: an older graph directory reads with it null (every template is
    evidence there, as it was), and the queries that show it still run."""
    old = tmp_path / "graph"
    shutil.copytree(graph_dir, old)
    templates = old / "nodes" / "PromptTemplate.parquet"
    pl.read_parquet(templates).drop("repeated_by").write_parquet(templates)
    ring = pl.read_parquet(old / "rings" / "rings.parquet").sort("score", descending=True)["ring_id"][0]
    rows = _query(old, "ring_templates", "--param", f"ring_id={ring}")
    assert rows and all(row["repeated_by"] is None for row in rows)
    assert _query(graph_dir, "ring_templates", "--param", f"ring_id={ring}")[0]["repeated_by"] is not None


def test_flagged_rings_say_whether_the_content_reading_scored_them(graph_dir: Path, tmp_path: Path) -> None:
    rows = _query(graph_dir, "flagged_rings")
    assert rows and all(isinstance(row["content_reading"], bool) for row in rows)
    # rings written before the content reading: the column reads null, as Neo4j answers a missing property
    old = tmp_path / "graph"
    shutil.copytree(graph_dir, old)
    rings = old / "rings" / "rings.parquet"
    pl.read_parquet(rings).drop("content_reading").write_parquet(rings)
    assert [row["content_reading"] for row in _query(old, "flagged_rings")] == [None] * len(rows)


def test_neighbourhood_is_bounded_per_hop(graph_dir: Path) -> None:
    wide = _query(graph_dir, "neighbourhood", "--param", "account_id=00000900", "--param", "depth=3")
    narrow = _query(
        graph_dir, "neighbourhood", "--param", "account_id=00000900", "--param", "depth=3", "--param", "frontier=2"
    )
    assert len(wide) > 6
    for hop in (1, 2, 3):
        assert sum(1 for row in narrow if row["hops"] == hop) <= 2
    blocked = _query(graph_dir, "neighbourhood", "--param", "account_id=00000900", "--param", "max_shared=1")
    assert blocked == []  # every entity it holds is shared by more than one account: nothing followed
