"""Full rebuilds of the Neo4j graph with ``neo4j-admin database import full``.

Transactional MERGE loads top out near 15k relationships/s on this class of machine; the offline
importer writes store files directly. The graph tables become CSV files with Neo4j's typed
headers, the importer replaces the database (the server must be stopped, the importer refuses a
database in use), and the next ``Neo4jStore.from_settings`` re-creates the constraints and
indexes of ``cypher/schema.cypher`` on the imported data. Incremental nightly loads keep using
the transactional path.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl

from ..cypher import CYPHER_DIR
from ..errors import StoreError
from ..graph import NODE_SPECS, REL_SPECS, Graph
from .neo4j import LoadStats

log = logging.getLogger(__name__)
_DATETIME_FORMAT = "%Y-%m-%dT%H:%M:%S%.fZ"  # whole seconds without a fraction: the importer parses datetimes slowly


def _csv_type(dtype: Any) -> str:
    if isinstance(dtype, pl.Datetime):
        return "datetime"
    if dtype.is_integer():
        return "long"
    if dtype.is_float():
        return "double"
    if dtype == pl.Boolean:
        return "boolean"
    if isinstance(dtype, pl.List):
        return _csv_type(dtype.inner) + "[]"
    return "string"


def _typed(frame: pl.DataFrame) -> pl.DataFrame:
    """Columns renamed to ``name:type`` and lists flattened to ``;``-joined text."""
    renamed = {
        name: f"{name}:{_csv_type(dtype)}" for name, dtype in frame.schema.items() if _csv_type(dtype) != "string"
    }
    lists = [
        pl.col(name).cast(pl.List(pl.Utf8)).list.join(";")
        for name, dtype in frame.schema.items()
        if isinstance(dtype, pl.List)
    ]
    categoricals = [
        pl.col(name).cast(pl.Utf8)
        for name, dtype in frame.schema.items()
        if isinstance(dtype, (pl.Categorical, pl.Enum))
    ]
    return frame.with_columns(lists + categoricals).rename(renamed)


def _has_newlines(frame: pl.DataFrame) -> bool:
    text = [name for name, dtype in frame.schema.items() if dtype == pl.Utf8]
    return bool(text) and bool(
        frame.select(pl.any_horizontal([pl.col(c).str.contains("\n", literal=True).any() for c in text])).item()
    )


def write_import_files(graph: Graph, directory: Path) -> tuple[list[str], int, int]:
    """CSV files for the importer; returns its ``--nodes``/``--relationships`` arguments and the counts.

    Files with line breaks inside values (template texts) are named to the importer, which then
    parses only those slowly."""
    directory.mkdir(parents=True, exist_ok=True)
    arguments: list[str] = []
    multiline: list[str] = []
    nodes = relationships = 0
    positions: dict[str, pl.DataFrame] = {}
    for spec in NODE_SPECS:
        frame = graph.nodes.get(spec.label)
        if frame is None or frame.height == 0:
            continue
        frame = frame.filter(pl.col(spec.key).is_not_null()).unique(spec.key, keep="first").sort(spec.key)
        # the importer's id is the row number (an integer id space per label, cheaper for it than
        # text); the key stays a property of its own type
        positions[spec.label] = frame.select(
            pl.col(spec.key).cast(pl.Utf8).alias("key"), pl.int_range(pl.len(), dtype=pl.Int64).alias("id")
        )
        out = _typed(frame).with_columns(positions[spec.label]["id"].alias(f":ID({spec.label})"))
        path = directory / f"node_{spec.label}.csv"
        out.select(f":ID({spec.label})", pl.exclude(f":ID({spec.label})")).write_csv(
            path, datetime_format=_DATETIME_FORMAT
        )
        arguments.append(f"--nodes={spec.label}={path}")
        if _has_newlines(frame):
            multiline.append(str(path))
        nodes += frame.height
    for rel in REL_SPECS:
        frame = graph.rels.get(rel.type)
        if frame is None or frame.height == 0 or rel.src.label not in positions or rel.dst.label not in positions:
            continue
        start, end = f":START_ID({rel.src.label})", f":END_ID({rel.dst.label})"
        ends = (
            frame.with_columns(pl.col("src").cast(pl.Utf8), pl.col("dst").cast(pl.Utf8))
            .join(
                positions[rel.src.label].rename({"key": "src", "id": start}),
                on="src",
                how="inner",
                maintain_order="left",
            )
            .join(
                positions[rel.dst.label].rename({"key": "dst", "id": end}), on="dst", how="inner", maintain_order="left"
            )
        )
        if ends.height < frame.height:
            log.warning(
                "%s: %d relationships name a node the graph lacks; not imported", rel.type, frame.height - ends.height
            )
        out = _typed(ends.select("count", "first_seen", "last_seen")).with_columns(ends[start], ends[end])
        path = directory / f"rel_{rel.type}.csv"
        out.select(start, end, pl.exclude("^:.*$")).write_csv(path, datetime_format=_DATETIME_FORMAT)
        arguments.append(f"--relationships={rel.type}={path}")
        relationships += ends.height
    if multiline:
        arguments += ["--multiline-fields-format=v2", f"--multiline-fields={','.join(multiline)}"]
    return arguments, nodes, relationships


def _resolve(command: list[str]) -> list[str]:
    """A relative program path is taken from the project checkout (``scripts/neo4j.sh``), wherever cron runs."""
    if command and not Path(command[0]).is_absolute() and "/" in command[0]:
        project_file = CYPHER_DIR.parent / command[0]
        if project_file.exists():
            return [str(project_file), *command[1:]]
    return command


def bulk_import(graph: Graph, admin_command: str, database: str = "neo4j", work_dir: Path | None = None) -> LoadStats:
    """Replace ``database`` with ``graph`` through neo4j-admin (the server must be stopped)."""
    work = Path(tempfile.mkdtemp(prefix="linkage-import-", dir=work_dir))
    stats = LoadStats()
    start = time.perf_counter()
    try:
        arguments, stats.nodes, stats.relationships = write_import_files(graph, work / "csv")
        stats.per_type["write_csv"] = round(time.perf_counter() - start, 3)
        command = _resolve(shlex.split(admin_command)) + [
            # the database name first: --nodes/--relationships take several values and would swallow it
            "database",
            "import",
            "full",
            database,
            "--overwrite-destination=true",
            "--skip-duplicate-nodes=false",
            "--id-type=integer",
            "--array-delimiter=;",
            f"--report-file={work / 'import.report'}",
            *arguments,
        ]
        log.info("neo4j bulk import: %s", " ".join(command[:6]))
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        stats.per_type["neo4j_admin_import"] = round(time.perf_counter() - began, 3)
        if done.returncode != 0:
            detail = [
                line for line in (done.stderr + done.stdout).splitlines() if "Exception" in line or "rror" in line
            ][:6]
            raise StoreError(
                f"neo4j-admin import of database '{database}' failed (exit {done.returncode}; is the "
                f"server stopped?): " + " | ".join(detail)
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stats.seconds = time.perf_counter() - start
    log.info(
        "neo4j bulk import: %d nodes, %d relationships in %.1fs (%.0f rel/s)",
        stats.nodes,
        stats.relationships,
        stats.seconds,
        stats.relationships_per_second,
    )
    return stats
