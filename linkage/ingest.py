"""Stage 1 — ingest: find a table's files, read them in batches, type and validate every row.

A batch comes out as typed good rows; bad rows go to the :class:`Quarantine` with their
source file, 1-based row number (the n-th data record of the file, header excluded), the
field at fault and the reason. Missing tables, missing required columns and corrupt files
are fatal :class:`InputError` s naming the file and column.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from .errors import InputError
from .normalize import TS_DTYPE, parse_ips, parse_timestamps
from .schema import EXTENSIONS, Column, TableSpec
from .settings import IngestSettings

log = logging.getLogger(__name__)
FILE_COL, ROW_COL, REASON_COL, FIELD_COL = "_file", "_row", "_reason", "_field"


# ---------------------------------------------------------------- discovery
def table_files(input_dir: Path, spec: TableSpec) -> list[Path]:
    """The files of one table: ``NAME.ext`` or everything below ``NAME/``, sorted for determinism.

    Partition directories reached through symlinks are followed (a loop is an error); directories
    and files whose names start with ``_`` or ``.`` are skipped, as Spark and Hive do (``_temporary/``,
    ``.staging/``, ``_SUCCESS``). Every file is checked here, before any work: it has a header (or
    schema) naming the table's required columns, and no file symlink dangles."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InputError(f"{input_dir}: input directory does not exist")
    singles = [
        input_dir / f"{spec.name}{ext}"
        for ext in EXTENSIONS
        if (input_dir / f"{spec.name}{ext}").is_file() or (input_dir / f"{spec.name}{ext}").is_symlink()
    ]
    folder = input_dir / spec.name
    nested = _partition_files(folder) if folder.is_dir() else []
    if len(singles) > 1 or (singles and nested):
        found = ", ".join(str(p) for p in singles + ([folder] if nested else []))
        raise InputError(f"{spec.name}: more than one source for the table ({found}); keep one")
    files = singles or nested
    if not files and spec.required_table:
        raise InputError(
            f"{input_dir / spec.name}: required table '{spec.name}' not found "
            f"(expected {spec.name}.csv, .csv.gz, .jsonl, .jsonl.gz, .parquet or a {spec.name}/ directory)"
        )
    for path in files:
        check_file_columns(path, spec)
    return files


def work_units(paths: list[Path], settings: IngestSettings) -> list[list[FilePart]]:
    """The table's files cut into units of work for ``settings.workers`` threads, in file order: a
    large Parquet file one unit per batch of its row groups (:func:`parquet_slices`), so that a
    table in one file still keeps every worker busy; consecutive small files together, in units of
    about ``settings.coalesce_rows`` rows and of no more than a share of the table that keeps every
    worker busy. Rows are counted from a Parquet file's footer and guessed from a text file's size
    (how the work is cut changes nothing it finds: see :func:`read_table`)."""
    parts: list[tuple[FilePart, int]] = []
    for path in paths:
        slices = _parquet_slices_of(path, settings.batch_rows)
        if slices is None:
            parts.append((FilePart(path), _text_rows(path)))
        elif len(slices) > 1:
            parts.extend((FilePart(path, (first, end)), stop - start) for first, end, start, stop in slices)
        else:
            parts.append((FilePart(path), sum(stop - start for *_, start, stop in slices)))
    share = max(1, sum(rows for _, rows in parts) // max(2 * settings.workers, 1))
    limit = min(settings.coalesce_rows, share)
    units: list[list[FilePart]] = []
    held = 0
    for part, rows in parts:
        if not units or held + rows > limit:
            units.append([])
            held = 0
        units[-1].append(part)
        held += rows
    return units


# bytes of a text file taken for one row when grouping (on the small side: too small a guess only
# leaves files ungrouped); a compressed file holds about five times as many
_TEXT_BYTES_PER_ROW = 100


def _parquet_slices_of(path: Path, batch_rows: int) -> list[tuple[int, int, int, int]] | None:
    """:func:`parquet_slices` of a Parquet file; None for other files."""
    if not path.name.endswith(".parquet"):
        return None
    try:
        return parquet_slices(pq.ParquetFile(path).metadata, batch_rows)
    except (OSError, pa.ArrowInvalid):
        return [(0, 1, 0, 1 << 40)]  # unreadable: a unit of its own (reading it reports the error)


def _text_rows(path: Path) -> int:
    size = path.stat().st_size
    return size * 5 // _TEXT_BYTES_PER_ROW if path.name.endswith(".gz") else size // _TEXT_BYTES_PER_ROW


def _partition_files(folder: Path) -> list[Path]:
    """Table files below ``folder``, following directory symlinks once each (by their real path)."""
    found: list[Path] = []
    seen: set[str] = {os.path.realpath(folder)}
    for root, dirs, names in os.walk(folder, followlinks=True):
        kept = []
        for name in sorted(dirs):
            if name.startswith((".", "_")):
                continue
            real = os.path.realpath(os.path.join(root, name))
            if real in seen:
                raise InputError(f"{os.path.join(root, name)}: directory symlink loop (already read as {real})")
            seen.add(real)
            kept.append(name)
        dirs[:] = kept
        found.extend(Path(root, name) for name in names if _has_table_extension(Path(name)))
    return sorted(found)


def _has_table_extension(path: Path) -> bool:
    return path.name.endswith(EXTENSIONS) and not path.name.startswith((".", "_"))


def file_columns(path: Path) -> list[str] | None:
    """The column names a file declares: a CSV's header, a Parquet schema, a JSONL file's first
    record (None when that record is not an object: left to the row-by-row path to quarantine).
    An empty file, or a file symlink that dangles, is an :class:`InputError`."""
    if not path.exists():
        raise InputError(f"{path}: file cannot be read (a symlink to a missing file?)")
    try:
        if path.name.endswith(".parquet"):
            return list(pq.read_schema(path).names)
        # leniently: the reader fills a buffer past the first line, and a bad byte in a later record
        # is that record's problem (quarantined by the readers), not the header's
        with _open_text(path, errors="surrogateescape") as fh:
            if path.name.endswith((".csv", ".csv.gz")):
                header = next(csv.reader(fh), [])
                if not header:
                    raise InputError(f"{path}: empty file: a CSV table starts with its header row")
                if _undecodable_field(header, header) is not None:
                    raise InputError(f"{path}: the header row is not UTF-8 text")
                return header
            first = next((line for line in fh if line.strip()), None)
    except InputError:
        raise
    except (OSError, EOFError, pa.ArrowInvalid, ValueError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: unreadable, truncated or corrupt file ({_first_line(exc)})") from exc
    if first is None:
        raise InputError(f"{path}: empty file: a JSON-lines table has at least one record")
    try:
        record = json.loads(first)
    except ValueError:
        return None
    return list(record) if isinstance(record, dict) else None


def check_file_columns(path: Path, spec: TableSpec) -> None:
    """The file's header names every required column of its table, whether or not rows follow."""
    columns = file_columns(path)
    if columns is None:
        return
    missing = [c for c in spec.required_columns if c not in columns]
    if missing:
        raise InputError(
            f"{path}: required column '{missing[0]}' missing from table '{spec.name}' "
            f"(columns present: {', '.join(columns) or 'none'})"
        )


# ---------------------------------------------------------------- reading
@dataclass(frozen=True)
class FilePart:
    """A table file, or a slice of a large Parquet file's row groups (``row_groups``: first, end),
    read apart from the rest of the file so that two workers share one large file."""

    path: Path
    row_groups: tuple[int, int] | None = None

    @property
    def opens_file(self) -> bool:
        return self.row_groups is None or self.row_groups[0] == 0


def read_file(
    path: Path, batch_rows: int, categorical: frozenset[str] = frozenset(), row_groups: tuple[int, int] | None = None
) -> Iterator[pl.DataFrame]:
    """Raw batches of one file with ``_row`` (1-based record number). Corrupt files raise InputError.

    ``categorical``: columns wanted as categoricals (see :func:`_read_parquet`); ``row_groups``: of a
    Parquet file, only the batches of these row groups (:func:`parquet_slices`)."""
    name = path.name
    try:
        if name.endswith(".parquet"):
            yield from _read_parquet(path, batch_rows, categorical, row_groups)
        elif name.endswith((".csv", ".csv.gz")):
            yield from _read_csv(path, batch_rows)
        else:
            yield from _read_jsonl(path)
    except InputError:
        raise
    except (OSError, EOFError, pa.ArrowInvalid, ValueError, UnicodeDecodeError, pl.exceptions.PolarsError) as exc:
        raise InputError(f"{path}: unreadable, truncated or corrupt file ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _numbered(table: pa.Table | pl.DataFrame, first_row: int) -> pl.DataFrame:
    frame = table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)
    return frame.with_row_index(ROW_COL, offset=first_row).with_columns(pl.col(ROW_COL).cast(pl.Int64))


def parquet_slices(meta: pq.FileMetaData, batch_rows: int) -> list[tuple[int, int, int, int]]:
    """A Parquet file's batches: (first row group, end row group, first row, end row), each of about
    ``batch_rows`` rows, cut at row-group boundaries so that no row group is decoded twice."""
    slices, first_group, start, rows_so_far = [], 0, 0, 0
    for group in range(meta.num_row_groups):
        rows_so_far += meta.row_group(group).num_rows
        if rows_so_far - start >= batch_rows or group == meta.num_row_groups - 1:
            slices.append((first_group, group + 1, start, rows_so_far))
            first_group, start = group + 1, rows_so_far
    return slices


def _read_parquet(
    path: Path, batch_rows: int, categorical: frozenset[str] = frozenset(), row_groups: tuple[int, int] | None = None
) -> Iterator[pl.DataFrame]:
    """polars' native reader (straight into its string layout); a large file is sliced so that only
    the row groups of the slice in hand are decoded.

    String columns named in ``categorical`` are read by Arrow as dictionaries instead: a Parquet
    column is usually dictionary-encoded already, so each distinct value of a row group becomes a
    category once, where casting the decoded strings would look every row up in the category pool."""
    source = pq.ParquetFile(path)
    meta = source.metadata
    schema = source.schema_arrow
    as_dictionary = [
        name
        for name in schema.names
        if name in categorical
        and (pa.types.is_string(schema.field(name).type) or pa.types.is_large_string(schema.field(name).type))
    ]
    if as_dictionary:
        source = pq.ParquetFile(path, read_dictionary=as_dictionary)
    others = [name for name in schema.names if name not in as_dictionary]
    for first_group, end_group, start, end in parquet_slices(meta, batch_rows):
        if row_groups is not None and not row_groups[0] <= first_group < row_groups[1]:
            continue
        frame = pl.scan_parquet(path).select(others).slice(start, end - start).collect() if others else None
        if as_dictionary:
            coded = pl.from_arrow(source.read_row_groups(range(first_group, end_group), columns=as_dictionary))
            frame = coded if frame is None else frame.hstack(coded.get_columns()).select(schema.names)
        yield _numbered(frame, start + 1)


def _open_text(path: Path, errors: str = "strict") -> io.TextIOBase:
    # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", errors=errors, newline="")
    return open(path, encoding="utf-8-sig", errors=errors, newline="")


def _read_csv(path: Path, batch_rows: int) -> Iterator[pl.DataFrame]:
    """Fast path with Arrow's multi-threaded reader (blocks parsed in parallel); a file with malformed
    records, bytes that are not UTF-8 or a record larger than a block is re-read in Python, so that
    each bad record is quarantined under its exact row number and the good ones are kept."""
    header = file_columns(path) or []
    malformed: list[str] = []

    def note_malformed(row: pacsv.InvalidRow) -> str:
        malformed.append(row.text)
        return "skip"

    try:
        table = pacsv.read_csv(
            path,
            # the header as read above (BOM removed), so that every column is typed as text: ids
            # such as 00000950 keep their zeros
            read_options=pacsv.ReadOptions(block_size=8 << 20, use_threads=True, column_names=header, skip_rows=1),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=note_malformed),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in header},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        log.info("%s: re-reading record by record (%s)", path, _first_line(exc))
        malformed.append(str(exc))
    if malformed:
        yield from _read_csv_slow(path, header, batch_rows)
        return
    first = 1
    for start in range(0, max(table.num_rows, 1), batch_rows):
        chunk = table.slice(start, batch_rows)
        if chunk.num_rows:
            yield _numbered(chunk, first)
            first += chunk.num_rows


def _read_csv_slow(path: Path, header: list[str], batch_rows: int) -> Iterator[pl.DataFrame]:
    width = len(header)
    csv.field_size_limit(sys.maxsize)  # an oversized field is judged by validation, like in JSONL/Parquet
    # bytes that are not UTF-8 survive decoding as lone surrogates and mark their record bad
    with _open_text(path, errors="surrogateescape") as fh:
        rows = csv.reader(fh)
        next(rows, None)
        good: list[list[str]] = []
        numbers: list[int] = []
        bad: list[dict[str, object]] = []
        for number, record in enumerate(rows, start=1):
            if len(record) != width:
                reason = f"malformed record: {len(record)} fields, header has {width}"
            else:
                reason = _undecodable_field(record, header)
            if reason is None:
                good.append(record)
                numbers.append(number)
            else:
                raw = ",".join(record)[:2000].encode("utf-8", "backslashreplace").decode("utf-8")
                field_name = "(record)" if reason.startswith("malformed") else reason.rsplit(" ", 1)[-1]
                bad.append({ROW_COL: number, "_raw": raw, REASON_COL: reason, FIELD_COL: field_name})
    frame = (
        pl.DataFrame(good, schema={name: pl.Utf8 for name in header}, orient="row")
        if good
        else pl.DataFrame(schema={name: pl.Utf8 for name in header})
    )
    frame = frame.with_columns(pl.Series(ROW_COL, numbers, dtype=pl.Int64))
    if bad:
        yield pl.DataFrame(bad).with_columns(pl.lit(True).alias("_malformed"))
    for start in range(0, frame.height, batch_rows):
        yield frame.slice(start, batch_rows)


def _undecodable_field(record: list[str], header: list[str]) -> str | None:
    """The reason a record holds bytes that are not UTF-8 (naming the field), or None."""
    for name, value in zip(header, record):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return f"invalid UTF-8 in {name}"
    return None


def _read_jsonl(path: Path) -> Iterator[pl.DataFrame]:
    try:
        table = pajson.read_json(path, read_options=pajson.ReadOptions(block_size=64 << 20))
        # Arrow's JSON reader passes bytes that are not UTF-8 through into its strings, and polars
        # then fails far downstream: such a file takes the record-by-record path, which quarantines
        table.validate(full=True)
        yield _numbered(table, 1)
        return
    except pa.ArrowInvalid:
        log.info("%s: falling back to line-by-line JSON parsing", path)
    records: list[dict[str, object]] = []
    bad: list[dict[str, object]] = []
    with _open_text(path, errors="surrogateescape") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                if not line.isascii():
                    line.encode("utf-8")  # lone surrogates: bytes that were not UTF-8
                value = json.loads(line)
                if not isinstance(value, dict):
                    raise ValueError("not a JSON object")
            except UnicodeEncodeError:
                bad.append(
                    {
                        ROW_COL: number,
                        "_raw": line[:2000].encode("utf-8", "backslashreplace").decode(),
                        REASON_COL: "invalid UTF-8 in record",
                        FIELD_COL: "(record)",
                    }
                )
                continue
            except ValueError as exc:
                bad.append(
                    {ROW_COL: number, "_raw": line[:2000], REASON_COL: f"malformed JSON: {exc}", FIELD_COL: "(record)"}
                )
                continue
            records.append(
                {k: (None if v is None else v if isinstance(v, str) else json.dumps(v)) for k, v in value.items()}
                | {ROW_COL: number}
            )
    if bad:
        yield pl.DataFrame(bad).with_columns(pl.lit(True).alias("_malformed"))
    if records:
        yield pl.DataFrame(records, infer_schema_length=None)


# ---------------------------------------------------------------- quarantine
@dataclass
class TableCounts:
    rows_read: int = 0
    rows_used: int = 0
    rows_quarantined: int = 0
    files: int = 0
    reasons: Counter = field(default_factory=Counter)
    # the part of ``reasons`` that repeats a record already counted (a log delivered twice): quarantined,
    # but nothing was lost
    repeats: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "files": self.files,
            "rows_read": self.rows_read,
            "rows_used": self.rows_used,
            "rows_quarantined": self.rows_quarantined,
            "quarantine_reasons": dict(sorted(self.reasons.items())),
        }


QUARANTINE_SCHEMA = {
    "table": pl.Utf8,
    "source_file": pl.Utf8,
    "row": pl.Int64,
    "field": pl.Utf8,
    "reason": pl.Utf8,
    "record": pl.Utf8,
}


class Quarantine:
    """Collects rejected rows per table; the pipeline writes them to ``OUT/quarantine/``."""

    def __init__(self) -> None:
        self.frames: dict[str, list[pl.DataFrame]] = {}
        self.counts: dict[str, TableCounts] = {}

    def table_counts(self, table: str) -> TableCounts:
        return self.counts.setdefault(table, TableCounts())

    def add(self, table: str, rows: pl.DataFrame, repeats: bool = False) -> None:
        """``rows`` has _file, _row, _field, _reason and a JSON ``record`` column; ``repeats``: they
        restate records already counted (they do not count towards :meth:`check_share`)."""
        if rows.height == 0:
            return
        frame = rows.select(
            pl.lit(table).alias("table"),
            pl.col(FILE_COL).cast(pl.Utf8).alias("source_file"),
            pl.col(ROW_COL).cast(pl.Int64).alias("row"),
            pl.col(FIELD_COL).cast(pl.Utf8).alias("field"),
            pl.col(REASON_COL).cast(pl.Utf8).alias("reason"),
            pl.col("record").cast(pl.Utf8),
        )
        self.frames.setdefault(table, []).append(frame)
        counts = self.table_counts(table)
        counts.rows_quarantined += frame.height
        for reason, n in frame.group_by("reason").len().iter_rows():
            counts.reasons[f"{reason}"] += n
            if repeats:
                counts.repeats[f"{reason}"] += n

    def merge(self, other: Quarantine) -> None:
        """Take over another quarantine's rows and counts (one file's, processed on its own)."""
        for table, frames in other.frames.items():
            self.frames.setdefault(table, []).extend(frames)
        for table, theirs in other.counts.items():
            mine = self.table_counts(table)
            mine.rows_read += theirs.rows_read
            mine.rows_used += theirs.rows_used
            mine.rows_quarantined += theirs.rows_quarantined
            mine.files += theirs.files
            mine.reasons.update(theirs.reasons)
            mine.repeats.update(theirs.repeats)

    def check_share(self, limit: float, min_rows: int) -> None:
        """Refuse the run (:class:`InputError`, exit 2) when a table lost more than ``limit`` of its rows
        to quarantine (and at least ``min_rows``): a wholesale format change must not read as "no
        campaign". The message names the dominant reason and an example row."""
        for table, counts in sorted(self.counts.items()):
            lost = counts.reasons - counts.repeats  # a repeat of a record already counted loses nothing
            quarantined = sum(lost.values())
            if counts.rows_read == 0 or quarantined < min_rows:
                continue
            share = quarantined / counts.rows_read
            if share <= limit:
                continue
            reason, n = max(lost.items(), key=lambda item: (item[1], item[0]))
            example = ""
            frames = self.frames.get(table)
            if frames:
                first = pl.concat(frames).filter(pl.col("reason") == reason).head(1)
                if first.height:
                    example = f"; e.g. {first['source_file'][0]} row {first['row'][0]}, field {first['field'][0]}"
            raise InputError(
                f"{table}: {quarantined:,} of {counts.rows_read:,} rows quarantined ({share:.1%}, "
                f"limit {limit:.1%}, ingest.max_quarantine_share); mostly '{reason}' ({n:,}){example}"
            )

    def rows(self, table: str) -> pl.DataFrame:
        frames = self.frames.get(table)
        return pl.concat(frames) if frames else pl.DataFrame(schema=QUARANTINE_SCHEMA)


def record_json(columns: list[str]) -> pl.Expr:
    """The raw row as JSON text, for the quarantine file."""
    return pl.struct([pl.col(c).cast(pl.Utf8) for c in columns]).struct.json_encode().str.slice(0, 4000).alias("record")


# ---------------------------------------------------------------- validation
_TYPED_KINDS = ("timestamp", "int", "asn", "ip")
_MISSING_TOKENS = ["-", "--", "?", "n/a", "na", "none", "null", "nil", "nan", "unknown"]
_MAX_ASN = 4_294_967_295  # AS numbers are 32-bit (RFC 6793); a token limit would refuse real ones


def validate_batch(
    raw: pl.DataFrame, spec: TableSpec, source: str | pl.Series, settings: IngestSettings, quarantine: Quarantine
) -> pl.DataFrame:
    """Typed good rows of one batch; bad ones go to quarantine with file, row, field and reason.

    ``source``: the file the batch came from, or per row its file (small files validated together,
    see :func:`read_table`)."""
    counts = quarantine.table_counts(spec.name)
    if "_malformed" in raw.columns:
        counts.rows_read += raw.height
        quarantine.add(
            spec.name,
            raw.select(
                pl.lit(source).alias(FILE_COL),
                pl.col(ROW_COL),
                pl.col(FIELD_COL),
                pl.col(REASON_COL),
                pl.col("_raw").alias("record"),
            ),
        )
        return pl.DataFrame()
    missing = [c for c in spec.required_columns if c not in raw.columns]
    if missing:
        raise InputError(
            f"{source}: required column '{missing[0]}' missing from table '{spec.name}' "
            f"(columns present: {', '.join(c for c in raw.columns if c != ROW_COL) or 'none'})"
        )
    counts.rows_read += raw.height
    raw_columns = [c for c in raw.columns if c != ROW_COL]
    typed, problems = _typed_columns(raw, spec, settings)
    # the source as a categorical: one string per file, not one copy per row
    file_column = pl.lit(source) if isinstance(source, str) else pl.lit(source.alias(FILE_COL))
    frame = raw.with_columns(typed).with_columns(file_column.cast(pl.Categorical).alias(FILE_COL))
    if problems.width:
        names = problems.columns
        frame = frame.with_columns(
            problems.select(
                pl.coalesce(names).alias(REASON_COL),
                pl.coalesce([pl.when(pl.col(n).is_not_null()).then(pl.lit(n)) for n in names]).alias(FIELD_COL),
            )
        )
    else:
        frame = frame.with_columns(pl.lit(None, pl.Utf8).alias(REASON_COL), pl.lit(None, pl.Utf8).alias(FIELD_COL))
    bad_mask = frame[REASON_COL].is_not_null()
    if bad_mask.any():
        quarantine.add(
            spec.name,
            frame.filter(bad_mask)
            .select(FILE_COL, ROW_COL, FIELD_COL, REASON_COL)
            .with_columns(raw.filter(bad_mask).select(record_json(raw_columns))),
        )
    good = frame.filter(pl.col(REASON_COL).is_null()).drop(REASON_COL, FIELD_COL)
    counts.rows_used += good.height
    return good


def _typed_columns(
    raw: pl.DataFrame, spec: TableSpec, settings: IngestSettings
) -> tuple[list[pl.Series], pl.DataFrame]:
    """Typed replacement columns, and a frame with one column per field giving the row's problem (or
    null; a field with no problem in the batch has no column)."""
    typed: list[pl.Series] = []
    problems: dict[str, pl.Series] = {}
    for column in spec.columns:
        if column.name not in raw.columns:
            typed.append(pl.Series(column.name, [None] * raw.height, dtype=_dtype(column.kind)))
            if column.kind == "ip":
                typed.append(pl.Series(f"{column.name}_subnet", [None] * raw.height, dtype=pl.Utf8))
            continue
        if column.name in spec.categorical_columns:
            value, subnet, problem = _category_cleaner(column, settings).clean(raw[column.name])
        else:
            value, subnet, problem = _clean_rows(raw[column.name], column, settings)
        if subnet is not None:
            typed.append(subnet.alias(f"{column.name}_subnet"))
        typed.append(value.alias(column.name))
        if problem is not None:
            problems[column.name] = problem.alias(column.name)
    return typed, pl.DataFrame(problems) if problems else pl.DataFrame()


def _clean_rows(
    original: pl.Series, column: Column, settings: IngestSettings, distinct: bool = False
) -> tuple[pl.Series, pl.Series | None, pl.Series | None]:
    """(typed value, the address's subnet for an IP column, per row the problem or null; None: no problem).
    ``distinct``: the values are distinct already (nothing to de-duplicate before parsing)."""
    if original.dtype == pl.Utf8:
        # an empty CSV/JSON field is a missing value, whatever the reader made of it; outside
        # free text, surrounding blanks are not part of a value (stripped once, here)
        text = original if column.kind == "text" else original.str.strip_chars()
        kept = text.str.len_bytes() > 0
        if not column.required and column.kind in _TYPED_KINDS:
            # an optional address, number or time written as "-", "N/A" or "unknown" is missing, not
            # bad: quarantining the row would lose an account (and its requests) over an optional field
            kept = kept & ~text.str.to_lowercase().is_in(_MISSING_TOKENS)
        original = pl.select(pl.when(kept).then(text)).to_series().alias(column.name)
    present = original.is_not_null()
    value, problem = _convert(original, column.kind, column.name, settings, distinct)
    if column.required:
        problem = pl.when(~present).then(pl.lit(f"empty {column.name}")).otherwise(problem)
    subnet = None
    if column.kind == "ip":
        subnet, value = value.struct.field("subnet"), value.struct.field("ip")
    problem = pl.select(problem.cast(pl.Utf8)).to_series()
    return value, subnet, (problem if problem.null_count() < len(problem) else None)


class CategoryCleaner:
    """:func:`_clean_rows` of one repeated column of the request log, worked out once per distinct value
    for the whole process: a value's cleaned form, subnet and problem are kept by its code in
    polars' process-wide categorical pool, so each file's rows only look their codes up. An address
    seen in every daily file is stripped and parsed once, not once per file, and no row is stripped.
    Thread-safe (request files are validated concurrently). Values come out as categoricals."""

    def __init__(self, column: Column, settings: IngestSettings) -> None:
        self.column, self.settings = column, settings
        self._lock = threading.Lock()
        self._slot_of = np.full(0, -1, np.int64)  # category code → slot (-1: not seen yet)
        # per slot, slot 0 standing for null: cleaned value, subnet, problem; whether the value is the raw one
        self._value = pl.Series([None], dtype=pl.Categorical)
        self._subnet = pl.Series([None], dtype=pl.Categorical)
        self._problem = pl.Series([self._null_problem()], dtype=pl.Utf8)
        self._has_problem = self._problem.is_not_null().to_numpy()
        self._unchanged = np.ones(1, bool)  # (a null row is null either way)

    def _null_problem(self) -> str | None:
        return f"empty {self.column.name}" if self.column.required else None

    def clean(self, original: pl.Series) -> tuple[pl.Series, pl.Series | None, pl.Series | None]:
        category = _as_category(original)
        codes = category.to_physical()
        nulls = codes.is_null().to_numpy() if codes.null_count() else None
        codes = codes.fill_null(0).to_numpy().astype(np.int64)
        slot_of, value, subnet, problem, has_problem, unchanged = self._learn(category, codes, nulls)
        slots = slot_of[codes]
        if nulls is not None:
            slots[nulls] = 0
        name = self.column.name
        cleaned = category if unchanged[slots].all() else value.gather(slots)
        row_problem = problem.gather(slots) if has_problem[slots].any() else None
        return cleaned.alias(name), (subnet.gather(slots) if self.column.kind == "ip" else None), row_problem

    def _learn(self, category: pl.Series, codes: np.ndarray, nulls: np.ndarray | None):
        """The tables, after cleaning the codes of this batch not seen before."""
        with self._lock:
            if len(codes) and codes.max() >= len(self._slot_of):
                grown = np.full(max(int(codes.max()) + 1, 2 * len(self._slot_of)), -1, np.int64)
                grown[: len(self._slot_of)] = self._slot_of
                self._slot_of = grown
            unseen = self._slot_of[codes] < 0
            if nulls is not None:
                unseen &= ~nulls
            if unseen.any():
                self._add(category, codes, np.flatnonzero(unseen))
            return self._slot_of, self._value, self._subnet, self._problem, self._has_problem, self._unchanged

    def _add(self, category: pl.Series, codes: np.ndarray, rows: np.ndarray) -> None:
        new_codes, first = np.unique(codes[rows], return_index=True)
        raw = category.gather(rows[first])
        value, subnet, problem = _clean_rows(raw.cast(pl.Utf8), self.column, self.settings, distinct=True)
        value = _as_category(value)
        self._slot_of[new_codes] = np.arange(len(self._value), len(self._value) + len(new_codes))
        self._value = pl.concat([self._value, value])
        self._subnet = pl.concat(
            [
                self._subnet,
                subnet.cast(pl.Categorical)
                if subnet is not None
                else pl.Series([None] * len(raw), dtype=pl.Categorical),
            ]
        )
        problem = problem if problem is not None else pl.Series([None] * len(raw), dtype=pl.Utf8)
        self._problem = pl.concat([self._problem, problem])
        self._has_problem = np.r_[self._has_problem, problem.is_not_null().to_numpy()]
        same = (value.to_physical() == raw.to_physical()).fill_null(False).to_numpy()
        self._unchanged = np.r_[self._unchanged, same]


def _as_category(values: pl.Series) -> pl.Series:
    if isinstance(values.dtype, pl.Categorical):
        return values
    return (values if values.dtype == pl.Utf8 else values.cast(pl.Utf8)).cast(pl.Categorical)


_cleaners: dict[tuple, CategoryCleaner] = {}
_cleaners_lock = threading.Lock()


def _category_cleaner(column: Column, settings: IngestSettings) -> CategoryCleaner:
    """The process's cleaner for a column under these limits (codes are process-wide, so is what they map to)."""
    key = (column, settings.max_id_chars, settings.max_text_chars, settings.max_tokens)
    with _cleaners_lock:
        if key not in _cleaners:
            _cleaners[key] = CategoryCleaner(column, settings)
        return _cleaners[key]


def _dtype(kind: str) -> pl.DataType:
    return {"timestamp": TS_DTYPE, "int": pl.Int64, "asn": pl.Int64}.get(kind, pl.Utf8)


def _convert(
    original: pl.Series, kind: str, name: str, settings: IngestSettings, distinct: bool = False
) -> tuple[pl.Series, pl.Expr]:
    """(typed value, problem text or null) for one column (``distinct``: as :func:`_clean_rows`)."""
    present = original.is_not_null()
    if kind == "timestamp":
        value = parse_timestamps(original)
        problem = pl.when(present & value.is_null()).then(pl.lit(f"unparseable timestamp in {name}"))
        return value, problem
    if kind in ("int", "asn"):
        if original.dtype == pl.Utf8:
            if kind == "asn":  # "AS15169", as IP-intelligence feeds write it, is 15169
                original = original.str.replace(r"^\s*(?i:as)\s*", "")
            as_float = original.cast(pl.Float64, strict=False)
            value = (
                pl.select(pl.when(as_float == as_float.round(0)).then(as_float))
                .to_series()
                .cast(pl.Int64, strict=False)
            )
        else:
            value = original.cast(pl.Int64, strict=False)
        unparseable = present & value.is_null()
        limit = _MAX_ASN if kind == "asn" else settings.max_tokens
        problem = (
            pl.when(unparseable)
            .then(pl.lit(f"unparseable integer in {name}"))
            .when(value < 0)
            .then(pl.lit(f"negative {name}"))
            .when(value > limit)
            .then(pl.lit(f"{name} above {limit}"))
        )
        return value, problem
    text = original.cast(pl.Utf8)  # (blank values are already null: see _typed_columns)
    if kind == "ip":
        parsed = parse_ips(text, distinct)
        problem = pl.when(present & parsed["ip"].is_null()).then(pl.lit(f"unparseable IP address in {name}"))
        # the subnet rides along as a struct field so that normalisation need not parse again
        return parsed.select(pl.struct("ip", "subnet")).to_series(), problem
    limit = settings.max_text_chars if kind == "text" else settings.max_id_chars
    # a text has at least as many bytes as characters: count characters only where bytes exceed the limit
    too_long = text.str.len_bytes() > limit
    if too_long.any():
        too_long = too_long & (text.str.len_chars() > limit)
    problem = pl.when(too_long).then(pl.lit(f"{name} longer than {limit} characters"))
    return text, problem


def read_table(
    input_dir: Path,
    spec: TableSpec,
    settings: IngestSettings,
    quarantine: Quarantine,
    files: list[Path] | None = None,
    parts: list[FilePart] | None = None,
) -> Iterator[tuple[Path, pl.DataFrame]]:
    """Typed, validated batches of a table, in file and row order, each with the last file it holds:
    of ``parts`` (:func:`work_units`) when given, else of ``files``, else of every file of the table.

    Consecutive small batches of one layout (the same columns and types) are validated together, up
    to ``settings.coalesce_rows`` rows: validation costs about 40 ms a batch whatever its size, so a
    table in many small daily files cost a small world a third of its run. Each row keeps its own
    file and row number, and the good rows are the same either way."""
    pending: list[tuple[str | pl.Series, pl.DataFrame]] = []

    def validated() -> Iterator[tuple[Path, pl.DataFrame]]:
        if not pending:
            return
        if len(pending) == 1:
            good = validate_batch(pending[0][1], spec, pending[0][0], settings, quarantine)
        else:
            sources = pl.concat(
                [
                    pl.repeat(source, raw.height, eager=True) if isinstance(source, str) else source
                    for source, raw in pending
                ]
            )
            good = validate_batch(pl.concat([raw for _, raw in pending]), spec, sources, settings, quarantine)
        last = pending[-1][0]
        pending.clear()
        if good.height:
            yield Path(last if isinstance(last, str) else last[-1]), good

    if parts is None:
        parts = [FilePart(path) for path in (table_files(input_dir, spec) if files is None else files)]
    for source, raw in _raw_batches(parts, spec, settings, quarantine):
        joins = _joins_others(raw, spec, settings)
        held = sum(frame.height for _, frame in pending)
        if pending and (not joins or held + raw.height > settings.coalesce_rows or raw.schema != pending[0][1].schema):
            yield from validated()
        pending.append((source, raw))
        if not joins:
            yield from validated()
    yield from validated()


def _raw_batches(
    parts: list[FilePart], spec: TableSpec, settings: IngestSettings, quarantine: Quarantine
) -> Iterator[tuple[str | pl.Series, pl.DataFrame]]:
    """The parts' raw batches, each with its file (or per row its file): small Parquet files of one
    layout in one read (:func:`_read_parquet_together`), anything else file by file."""
    counts = quarantine.table_counts(spec.name)
    at = 0
    while at < len(parts):
        run = _small_parquet_run(parts, at, settings.coalesce_rows)
        together = _read_parquet_together([part.path for part in run], spec.categorical_columns) if run else None
        if together is not None:
            counts.files += len(run)
            at += len(run)
            yield together[1], together[0]
            continue
        part = parts[at]
        if part.opens_file:
            counts.files += 1
        for raw in read_file(part.path, settings.batch_rows, spec.categorical_columns, part.row_groups):
            yield str(part.path), raw
        at += 1


def _small_parquet_run(parts: list[FilePart], at: int, coalesce_rows: int) -> list[FilePart]:
    """From ``parts[at]``, the longest run (two files or more, else none) of whole Parquet files with
    one schema and, together, fewer than ``coalesce_rows`` rows."""
    run: list[FilePart] = []
    schema, rows = None, 0
    for part in parts[at:]:
        if part.row_groups is not None or not part.path.name.endswith(".parquet"):
            break
        try:
            meta = pq.ParquetFile(part.path).metadata
        except (OSError, pa.ArrowInvalid):
            break  # (read alone: reading it reports the error)
        if rows + meta.num_rows >= coalesce_rows or (schema is not None and not meta.schema.equals(schema)):
            break
        schema, rows = meta.schema, rows + meta.num_rows
        run.append(part)
    return run if len(run) > 1 else []


def _read_parquet_together(paths: list[Path], categorical: frozenset[str]) -> tuple[pl.DataFrame, pl.Series] | None:
    """Small Parquet files of one schema in one read (polars reads them together: 2.3 ms a file of
    world B's hourly partitions, against 6.1 ms one by one), as :func:`_read_parquet` reads each:
    ``_row`` numbers each file's records, ``categorical`` string columns become categories; and per
    row its file. None when the files cannot be read together (each is then read alone, and a
    corrupt one reported)."""
    try:
        frame = pl.scan_parquet(
            [str(path) for path in paths], hive_partitioning=False, include_file_paths=_PATH_COL
        ).collect()
    except (OSError, pl.exceptions.PolarsError):
        return None
    strings = [name for name in frame.columns if name in categorical and frame.schema[name] == pl.String]
    frame = frame.with_columns(
        [pl.col(name).cast(pl.Categorical) for name in strings]
        + [(pl.int_range(pl.len()).over(_PATH_COL) + 1).cast(pl.Int64).alias(ROW_COL)]
    )
    return frame.select(ROW_COL, pl.exclude(ROW_COL, _PATH_COL)), frame[_PATH_COL]


_PATH_COL = "_path"


def _joins_others(raw: pl.DataFrame, spec: TableSpec, settings: IngestSettings) -> bool:
    """Whether a raw batch may be validated together with the next ones: a small batch of whole
    records that has the table's required columns (a batch without is an error naming its file)."""
    return (
        raw.height < settings.coalesce_rows
        and "_malformed" not in raw.columns
        and all(c in raw.columns for c in spec.required_columns)
    )
