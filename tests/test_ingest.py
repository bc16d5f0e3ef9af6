"""Every input form of the contract, and every kind of bad input."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import polars.selectors  # noqa: F401  (pl.selectors)
import pytest
from click.testing import CliRunner
from polars.testing import assert_frame_equal

import linkage
from linkage.cli import main
from linkage.errors import InputError
from linkage.ingest import _typed_columns
from linkage.schema import Column, TableSpec
from linkage.settings import IngestSettings

from .conftest import TINY, read_csv


def _rewrite(src: Path, dst_dir: Path, fmt: str, parts: int = 1) -> None:
    """Write the tiny fixture's tables in another format (requests optionally partitioned)."""
    for table in ("accounts", "payments", "requests"):
        frame = read_csv(src / f"{table}.csv")
        if table == "requests" and parts > 1:
            chunks = [frame[i::parts] for i in range(parts)]
            for i, chunk in enumerate(chunks):
                _write(chunk, dst_dir / "requests" / f"date=2026-02-0{i + 1}" / "hour=00" / "part-0", fmt)
        else:
            _write(frame, dst_dir / table, fmt)


def _write(frame: pl.DataFrame, stem: Path, fmt: str) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        frame.write_parquet(stem.with_suffix(".parquet"))
    elif fmt == "csv":
        frame.write_csv(stem.with_suffix(".csv"))
    elif fmt == "csv.gz":
        with gzip.open(stem.with_suffix(".csv.gz"), "wb") as fh:
            fh.write(frame.write_csv().encode())
    elif fmt == "jsonl":
        frame.write_ndjson(stem.with_suffix(".jsonl"))
    elif fmt == "jsonl.gz":
        with gzip.open(stem.with_suffix(".jsonl.gz"), "wb") as fh:
            fh.write(frame.write_ndjson().encode())


def _ring_sets(result) -> set[frozenset[str]]:
    return {frozenset(g["account_id"].to_list()) for _, g in result.members.group_by("ring_id")}


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "jsonl", "jsonl.gz", "parquet"])
@pytest.mark.parametrize("parts", [1, 3])
def test_every_format_gives_the_same_rings(tmp_path: Path, fmt: str, parts: int) -> None:
    reference = linkage.run(TINY)
    _rewrite(TINY, tmp_path / "in", fmt, parts)
    result = linkage.run(tmp_path / "in")
    assert _ring_sets(result) == _ring_sets(reference)
    counts = result.summary["tables"]["requests"]
    assert counts["rows_read"] == read_csv(TINY / "requests.csv").height
    assert counts["files"] == parts


def test_extra_columns_are_not_an_error(tiny: Path) -> None:
    frame = read_csv(tiny / "accounts.csv").with_columns(pl.lit("x").alias("favourite_colour"))
    frame.write_csv(tiny / "accounts.csv")
    result = linkage.run(tiny)
    assert result.summary["tables"]["accounts"]["rows_quarantined"] == 0


def test_missing_table_names_it(tiny: Path, tmp_path: Path) -> None:
    (tiny / "payments.csv").unlink()
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"payments.*required table 'payments' not found"):
        linkage.run(tiny, out)
    assert not out.exists(), "nothing may be written when the run fails"


def test_missing_required_column_names_file_and_column(tiny: Path) -> None:
    read_csv(tiny / "requests.csv").drop("ts").write_csv(tiny / "requests.csv")
    with pytest.raises(InputError, match=r"requests\.csv: required column 'ts' missing"):
        linkage.run(tiny)


def test_cli_error_is_one_line_and_nonzero(tiny: Path, tmp_path: Path) -> None:
    read_csv(tiny / "accounts.csv").drop("created_at").write_csv(tiny / "accounts.csv")
    outcome = CliRunner().invoke(main, ["run", str(tiny), "--out", str(tmp_path / "out")])
    assert outcome.exit_code == 2
    assert "accounts.csv" in outcome.output and "created_at" in outcome.output
    assert len(outcome.output.strip().splitlines()) == 1


def test_console_script_flushes_everything_before_leaving(tiny: Path, tmp_path: Path) -> None:
    """The console entry leaves with os._exit (no interpreter teardown): output files, stdout and
    stderr must be complete, and the exit status that of the command."""
    command = [sys.executable, "-m", "linkage.cli"]
    done = subprocess.run(command + ["run", str(tiny), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().endswith(f"→ {tmp_path / 'out'}")
    summary = json.loads((tmp_path / "out" / "run.json").read_text())
    assert summary["rings"]["total"] == len(read_csv(tmp_path / "out" / "rings.csv"))
    listed = subprocess.run(command + ["query", "--list"], capture_output=True, text=True)
    assert listed.returncode == 0 and "required" in listed.stdout and "e.g. linkage query" in listed.stdout
    read_csv(tiny / "accounts.csv").drop("created_at").write_csv(tiny / "accounts.csv")
    failed = subprocess.run(
        command + ["run", str(tiny), "--out", str(tmp_path / "bad")], capture_output=True, text=True
    )
    assert failed.returncode == 2
    assert "created_at" in failed.stderr and failed.stdout == ""


def test_truncated_gzip_is_a_clear_error(tmp_path: Path) -> None:
    _rewrite(TINY, tmp_path / "in", "csv.gz")
    data = (tmp_path / "in" / "requests.csv.gz").read_bytes()
    (tmp_path / "in" / "requests.csv.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"requests\.csv\.gz: unreadable, truncated or corrupt"):
        linkage.run(tmp_path / "in")


BAD_REQUESTS = [
    # (column, bad value, expected field, reason fragment)
    ("ts", "not-a-time", "ts", "unparseable timestamp"),
    ("ip", "999.1.1.1", "ip", "unparseable IP"),
    ("account_id", "", "account_id", "empty account_id"),
    ("account_id", "nobody", "account_id", "not in accounts table"),
    ("output_tokens", "-5", "output_tokens", "negative output_tokens"),
    ("input_tokens", "lots", "input_tokens", "unparseable integer"),
    ("device_id", "x" * 300, "device_id", "longer than 256"),
]


@pytest.mark.parametrize("column,value,field,reason", BAD_REQUESTS)
def test_bad_request_rows_are_quarantined_with_file_row_field(
    tiny: Path, tmp_path: Path, column: str, value: str, field: str, reason: str
) -> None:
    frame = read_csv(tiny / "requests.csv")
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 4).then(pl.lit(value)).otherwise(pl.col(column)).alias(column)
    )
    frame.write_csv(tiny / "requests.csv")
    out = tmp_path / "out"
    result = linkage.run(tiny, out)
    quarantined = read_csv(out / "quarantine" / "requests.csv")
    assert quarantined.height == 1
    row = quarantined.row(0, named=True)
    assert row["source_file"].endswith("requests.csv")
    assert row["row"] == "5"  # the fifth data record
    assert row["field"] == field
    assert reason in row["reason"]
    counts = result.summary["tables"]["requests"]
    assert counts["rows_read"] == frame.height
    assert counts["rows_used"] + counts["rows_quarantined"] == counts["rows_read"]
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["tables"]["requests"]["rows_quarantined"] == 1


def test_duplicate_account_and_request_ids(tiny: Path, tmp_path: Path) -> None:
    accounts = read_csv(tiny / "accounts.csv")
    pl.concat([accounts, accounts.head(2)]).write_csv(tiny / "accounts.csv")
    requests = read_csv(tiny / "requests.csv")
    pl.concat([requests, requests.head(3)]).write_csv(tiny / "requests.csv")
    out = tmp_path / "out"
    result = linkage.run(tiny, out)
    acc = result.summary["tables"]["accounts"]
    req = result.summary["tables"]["requests"]
    assert (acc["rows_read"], acc["rows_used"], acc["rows_quarantined"]) == (accounts.height + 2, accounts.height, 2)
    assert (req["rows_read"], req["rows_used"], req["rows_quarantined"]) == (requests.height + 3, requests.height, 3)
    reasons = read_csv(out / "quarantine" / "accounts.csv")["reason"].to_list()
    assert all("duplicate account_id (first at" in r for r in reasons)
    assert int(result.graph.nodes["Account"]["requests"].sum()) == requests.height


def test_malformed_csv_record_keeps_exact_row_number(tiny: Path, tmp_path: Path) -> None:
    lines = (tiny / "payments.csv").read_text().splitlines()
    lines.insert(3, "broken,line")  # becomes data record 3
    (tiny / "payments.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    linkage.run(tiny, out)
    q = read_csv(out / "quarantine" / "payments.csv")
    assert q["row"].to_list() == ["3"]
    assert "malformed record" in q["reason"][0]


def test_malformed_json_line_is_quarantined(tmp_path: Path) -> None:
    _rewrite(TINY, tmp_path / "in", "jsonl")
    path = tmp_path / "in" / "accounts.jsonl"
    lines = path.read_text().splitlines()
    lines.insert(1, '{"account_id": "half')
    path.write_text("\n".join(lines) + "\n")
    result = linkage.run(tmp_path / "in", tmp_path / "out")
    q = read_csv(tmp_path / "out" / "quarantine" / "accounts.csv")
    assert q["row"].to_list() == ["2"] and "malformed JSON" in q["reason"][0]
    assert result.summary["tables"]["accounts"]["rows_quarantined"] == 1


def test_timestamp_forms(tiny: Path) -> None:
    frame = read_csv(tiny / "accounts.csv")
    forms = ["2026-02-01T00:00:00Z", "2026-02-01 00:00:00", "2026-02-01T02:00:00+02:00", "1769904000"]
    frame = frame.with_columns(pl.Series("created_at", [forms[i % 4] for i in range(frame.height)]))
    frame.write_csv(tiny / "accounts.csv")
    result = linkage.run(tiny)
    created = result.graph.nodes["Account"]["created_at"].dt.epoch("s").unique().to_list()
    assert created == [1769904000]


def _typed_as_text(raw: pl.DataFrame, spec: TableSpec, settings: IngestSettings) -> tuple[pl.DataFrame, pl.DataFrame]:
    typed, problems = _typed_columns(raw, spec, settings)
    values = pl.DataFrame(typed).with_columns(pl.selectors.categorical().cast(pl.Utf8))
    names = [c.name for c in spec.columns]
    problems = problems.with_columns([pl.lit(None, pl.Utf8).alias(n) for n in names if n not in problems.columns])
    return values.select(sorted(values.columns)), problems.select(names)


def test_request_columns_validated_per_distinct_value_match_the_row_path() -> None:
    """The request log's repeated columns are cleaned once per distinct value for the whole process
    (values, subnets and problems kept by category code): the result must be the row-by-row one,
    for clean and dirty values alike, and still be so for a later batch that repeats some values."""
    spec = TableSpec(
        "requests_test",
        (
            Column("account_id", "id", True),
            Column("ip", "ip", True),
            Column("device_id", "string"),
            Column("model", "string"),
        ),
        categorical_columns=frozenset({"account_id", "ip", "device_id", "model"}),
    )
    by_row = TableSpec(spec.name, spec.columns)
    settings = IngestSettings(max_id_chars=12)
    first = pl.DataFrame(
        {
            "account_id": ["a1", " a1", "a2 ", "   ", "", None, "a-very-long-account", "a3"],
            "ip": ["10.1.2.3", " 10.1.2.3", "2001:DB8::1", "999.1.1.1", "", None, "010.1.2.3", "::ffff:10.9.9.9"],
            "device_id": ["d1", "d1", None, "d2\t", "x" * 20, "d1", "", "d3"],
            "model": ["m", "m", "m", "m", "m", "m", "m", None],
        }
    )
    second = pl.DataFrame(
        {
            "account_id": ["a1", "a9", " a9", None],
            "ip": ["10.1.2.3", "10.7.7.7", "2001:db8::1", "zz"],
            "device_id": ["d1", "d9 ", "x" * 20, None],
            "model": ["m", "m2", None, "m"],
        }
    )
    for raw in (first, second, first):
        cached_values, cached_problems = _typed_as_text(raw, spec, settings)
        row_values, row_problems = _typed_as_text(raw, by_row, settings)
        assert cached_values.equals(row_values)
        assert cached_problems.equals(row_problems)
    values, problems = _typed_as_text(first, spec, settings)
    assert values["account_id"].to_list()[:3] == ["a1", "a1", "a2"]
    assert values["ip_subnet"].to_list()[2] == "2001:db8::/64"
    assert problems["account_id"].to_list()[3:7] == ["empty account_id"] * 3 + ["account_id longer than 12 characters"]
    assert problems["ip"].to_list()[3] == "unparseable IP address in ip"
    typed, _ = _typed_columns(first, spec, settings)
    assert all(isinstance(series.dtype, pl.Categorical) for series in typed)


def test_parquet_columns_read_as_categories_equal_the_plain_read(tmp_path: Path) -> None:
    """The request log's repeated string columns are read from Parquet as dictionaries (categoricals);
    values, nulls, row numbers and slicing by row group must be those of the plain read, and a column
    that is not text (an integer device id) is read as it is."""
    from linkage.ingest import read_file

    frame = pl.DataFrame(
        {
            "account_id": [f"a{i % 7}" for i in range(1000)],
            "ip": [None if i % 11 == 0 else f"10.0.{i % 5}.{i % 3}" for i in range(1000)],
            "device_id": [i % 13 for i in range(1000)],
            "ts": [f"2026-02-01T00:00:{i % 60:02d}Z" for i in range(1000)],
        }
    )
    path = tmp_path / "requests.parquet"
    frame.write_parquet(path, row_group_size=128)
    wanted = frozenset({"account_id", "ip", "device_id", "model"})
    plain, coded = list(read_file(path, 300)), list(read_file(path, 300, wanted))
    assert [b.height for b in coded] == [b.height for b in plain] and len(coded) > 1
    for p, c in zip(plain, coded):
        assert c.columns == p.columns
        assert c.schema["account_id"] == pl.Categorical and c.schema["ip"] == pl.Categorical
        assert c.schema["device_id"] == p.schema["device_id"] == pl.Int64 and c.schema["ts"] == pl.Utf8
        assert c.with_columns(pl.col("account_id", "ip").cast(pl.Utf8)).equals(p)
    assert pl.concat(coded)["_row"].to_list() == list(range(1, 1001))
    only_coded = tmp_path / "only.parquet"
    frame.select("account_id").write_parquet(only_coded)
    assert next(read_file(only_coded, 300, wanted))["account_id"].cast(pl.Utf8).equals(frame["account_id"])


@pytest.mark.parametrize("dtype", [pl.UInt64, pl.Utf8])
def test_repeated_request_keys_are_the_later_rows_holding_a_key(dtype) -> None:
    """The sort-based repeat test agrees with polars' own first-occurrence flags, nulls never repeat."""
    import numpy as np

    from linkage.pipeline import repeats

    rng = np.random.default_rng(3)
    raw = rng.integers(0, 400, 2_000).astype(object)
    raw[rng.random(2_000) < 0.1] = None
    keys = pl.Series("request_key", [None if v is None else (str(v) if dtype == pl.Utf8 else v) for v in raw], dtype)
    expected = keys.is_not_null() & ~keys.is_first_distinct()
    assert repeats(keys).to_list() == expected.to_list()
    assert not repeats(pl.Series("request_key", [1, 2, None, None, 3], pl.UInt64)).any()


def test_asn_numbers_are_read_with_or_without_an_as_prefix() -> None:
    """IP-intelligence feeds write "AS15169"; 4-byte AS numbers exceed any token limit but are valid."""
    from linkage.schema import REQUESTS

    raw = pl.DataFrame(
        {
            "account_id": ["a"] * 7,
            "ts": ["2026-02-01T00:00:00Z"] * 7,
            "ip": ["1.2.3.4"] * 7,
            "asn": ["15169", "AS15169", " as 7018", "4200000000", "ASX", "-3", "4294967296"],
        }
    )
    typed, problems = _typed_columns(raw, REQUESTS, IngestSettings())
    asn = next(s for s in typed if s.name == "asn")
    assert asn.to_list()[:4] == [15169, 15169, 7018, 4_200_000_000]
    assert problems["asn"].to_list() == [
        None,
        None,
        None,
        None,
        "unparseable integer in asn",
        "negative asn",
        "asn above 4294967295",
    ]


def _small_daily_files(tiny: Path, target: Path) -> list[Path]:
    """The tiny fixture's requests in six daily files: Parquet and CSV, one without ``device_id``,
    and a bad row (an unparseable time, an unparseable address) in two of them."""
    frame = read_csv(tiny / "requests.csv")
    paths = []
    for day, part in enumerate(frame[i::6] for i in range(6)):
        if day in (1, 4):
            broken = {1: ("ts", "yesterday"), 4: ("ip", "10.0.0")}[day]
            part = part.with_columns(
                pl.when(pl.int_range(pl.len()) == 2)
                .then(pl.lit(broken[1]))
                .otherwise(pl.col(broken[0]))
                .alias(broken[0])
            )
        if day == 3:
            part = part.drop("device_id")
        stem = target / "requests" / f"date=2026-02-0{day + 1}" / "part-0"
        _write(part, stem, "csv" if day == 5 else "parquet")
        paths.append(stem.with_suffix(".csv" if day == 5 else ".parquet"))
    for table in ("accounts", "payments"):
        _write(read_csv(tiny / f"{table}.csv"), target / table, "parquet")
    return paths


def test_small_files_validated_together_keep_every_row_and_its_file(tiny: Path, tmp_path: Path) -> None:
    from linkage.ingest import FilePart, Quarantine, _small_parquet_run, read_table
    from linkage.schema import REQUESTS

    paths = _small_daily_files(tiny, tmp_path / "in")

    def read(coalesce_rows: int) -> tuple[pl.DataFrame, pl.DataFrame, int]:
        quarantine, settings = Quarantine(), IngestSettings(coalesce_rows=coalesce_rows)
        batches = [batch for _, batch in read_table(tmp_path / "in", REQUESTS, settings, quarantine, paths)]
        rows = pl.concat(batches, how="diagonal_relaxed").with_columns(pl.col("_file").cast(pl.Utf8))
        return rows, quarantine.rows("requests"), len(batches)

    alone, alone_bad, files = read(0)
    together, together_bad, batches = read(1_000_000)
    assert files == 6 and batches < files
    # the first three files, Parquet of one schema, are also read in one go
    assert _small_parquet_run([FilePart(path) for path in paths], 0, 1_000_000) == [FilePart(p) for p in paths[:3]]
    assert_frame_equal(together.select(sorted(together.columns)), alone.select(sorted(alone.columns)))
    assert_frame_equal(together_bad, alone_bad)
    assert sorted(Path(f).parent.name for f in together_bad["source_file"]) == ["date=2026-02-02", "date=2026-02-05"]
    assert together_bad["row"].to_list() == [3, 3]  # each file's own third record


def test_work_units_group_small_files_and_share_a_large_one_between_workers(tmp_path: Path) -> None:
    from linkage.ingest import FilePart, work_units

    def parquet(name: str, rows: int, row_group_size: int | None = None) -> Path:
        path = tmp_path / f"{name}.parquet"
        frame = pl.DataFrame({"account_id": [f"a{i}" for i in range(rows)]})
        frame.write_parquet(path, row_group_size=row_group_size)
        return path

    small = [parquet(f"s{i}", 100) for i in range(8)]
    large = parquet("large", 5_000)

    def units(paths: list[Path], **settings: int) -> list[list[Path]]:
        found = work_units(paths, IngestSettings(**settings))
        assert all(part.row_groups is None for unit in found for part in unit)
        return [[part.path for part in unit] for unit in found]

    # units of at most 1_000 rows (a quarter of the table, 1_450, is more), in file order
    assert units([*small[:4], large, *small[4:]], coalesce_rows=1_000) == [small[:4], [large], small[4:]]
    # at most a quarter of the table (200 rows): two workers get two units each
    assert units(small, coalesce_rows=250) == [small[0:2], small[2:4], small[4:6], small[6:8]]
    assert units(small, coalesce_rows=0) == [[path] for path in small]
    # one large file of ten row groups, batches of 3 000 rows: two units, cut between row groups
    sliced = parquet("sliced", 5_000, row_group_size=500)
    found = work_units([sliced], IngestSettings(batch_rows=3_000))
    assert found == [[FilePart(sliced, (0, 6))], [FilePart(sliced, (6, 10))]]
    assert [unit[0].opens_file for unit in found] == [True, False]


def test_a_large_file_read_in_slices_is_read_whole(tmp_path: Path) -> None:
    from linkage.ingest import Quarantine, read_table, work_units
    from linkage.schema import REQUESTS

    frame = read_csv(TINY / "requests.csv")
    path = tmp_path / "requests.parquet"
    frame.write_parquet(path, row_group_size=100)
    settings = IngestSettings(batch_rows=250)
    whole_quarantine, sliced_quarantine = Quarantine(), Quarantine()
    whole = pl.concat([b for _, b in read_table(tmp_path, REQUESTS, settings, whole_quarantine, [path])])
    units = work_units([path], settings)
    assert len(units) > 2
    sliced = pl.concat(
        [b for unit in units for _, b in read_table(tmp_path, REQUESTS, settings, sliced_quarantine, parts=unit)]
    )
    assert_frame_equal(sliced, whole)
    assert sliced["_row"].to_list() == list(range(1, frame.height + 1))
    assert sliced_quarantine.table_counts("requests").as_dict() == whole_quarantine.table_counts("requests").as_dict()
