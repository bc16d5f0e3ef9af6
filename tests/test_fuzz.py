"""Fuzzing the input contract: malformed variants of the tiny fixture, in every format.

Random cells are replaced by hostile values (non-finite numbers, control and escape characters,
formulas, other scripts' digits, huge and empty values, broken dates and addresses). Whatever the
variant, linkage never fails with an internal error (exit 1), every row read is used or
quarantined, and a run that refuses its input (exit 2) writes no ring files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from linkage.cli import main

from .conftest import TINY, read_csv

HOSTILE = [
    "",
    " ",
    "NaN",
    "nan",
    "inf",
    "-Infinity",
    "1e400",
    "-1",
    "0",
    "9" * 40,
    "18446744073709551616",
    "\x00",
    "\x1b[2J\x1b]0;x\x07",
    '=HYPERLINK("http://x")',
    "@SUM(A1)",
    "+1",
    "-2",
    "\t",
    "a\nb",
    "a\r\nb",
    "١.٢.٣.٤",
    "１２３",
    "2026-13-45T99:99:99Z",
    "2026-02-30",
    "0000-00-00",
    "::ffff:1.2.3.4",
    "999.1.1.1",
    "fe80::1%eth0",
    "' OR 1=1 --",
    '"}) DETACH DELETE n //',
    "null",
    "None",
    "☃" * 50,
    "x" * 5000,
    "‮override",
    "\ufeff",
    "%s%n",
    "../../etc/passwd",
]
TABLES = ("accounts", "payments", "requests")


def _variant(target: Path, fmt: str, seed: int) -> None:
    """The tiny fixture in ``fmt`` with about 3 % of cells (and some whole columns' cells) replaced."""
    rng = random.Random(seed * 7919 + len(fmt))
    target.mkdir(parents=True)
    for table in TABLES:
        frame = read_csv(TINY / f"{table}.csv")
        columns = {}
        for name in frame.columns:
            values = frame[name].to_list()
            for row in range(len(values)):
                if rng.random() < 0.03:
                    values[row] = rng.choice(HOSTILE)
            columns[name] = values
        frame = pl.DataFrame(columns, schema={name: pl.Utf8 for name in frame.columns})
        if seed % 5 == 4 and table == TABLES[seed % 3]:  # now and then a structural fault: a required column gone
            frame = frame.drop("account_id")
        if fmt == "csv":
            frame.write_csv(target / f"{table}.csv")
        elif fmt == "jsonl":
            frame.write_ndjson(target / f"{table}.jsonl")
        else:
            frame.write_parquet(target / f"{table}.parquet")


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_hostile_cells_never_crash_and_nothing_is_lost(tmp_path: Path, fmt: str, seed: int) -> None:
    data, out = tmp_path / "in", tmp_path / "out"
    _variant(data, fmt, seed)
    tolerant = tmp_path / "tolerant.toml"  # every bad row quarantined, however many: the row path is under test
    tolerant.write_text("[ingest]\nmax_quarantine_share = 1.0\n")
    result = CliRunner().invoke(main, ["run", str(data), "--out", str(out), "--config", str(tolerant)])
    assert result.exit_code in (0, 2), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (result.exit_code == 2) == (seed % 5 == 4)
    if result.exit_code == 2:
        assert not (out / "rings.csv").exists() and not (out / "run.json").exists()
        return
    tables = json.loads((out / "run.json").read_text())["tables"]
    for table in TABLES:
        counts = tables[table]
        assert counts["rows_read"] == counts["rows_used"] + counts["rows_quarantined"], table
        quarantined = out / "quarantine" / f"{table}.csv"
        listed = read_csv(quarantined).height if quarantined.exists() else 0
        assert listed == counts["rows_quarantined"], table


def test_a_run_that_loses_many_rows_fails_and_writes_nothing(tmp_path: Path) -> None:
    data, out = tmp_path / "in", tmp_path / "out"
    _variant(data, "csv", 0)
    result = CliRunner().invoke(main, ["run", str(data), "--out", str(out)])
    assert result.exit_code == 2
    assert "rows quarantined" in result.stderr and "e.g." in result.stderr and "row" in result.stderr
    assert not (out / "rings.csv").exists()
