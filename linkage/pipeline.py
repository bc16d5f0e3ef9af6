"""The facade: one call from an input directory to ranked, explained rings.

``run()`` is what ``linkage run`` calls and what a notebook calls; each stage lives in its
own module (ingest, normalize/templates, graph, detect, score, export, store) and this
module only wires them together, timing each one.
"""

from __future__ import annotations

import functools
import logging
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from . import __version__
from .detect import Detection, detect
from .errors import InputError
from .explain import (
    LINKS_FILE,
    MEMBERSHIPS_FILE,
    LinkTables,
    explanation_for_store,
    explanation_tables,
    link_tables,
)
from .export import begin_export, ensure_writable, write_json, write_parquet, write_quarantine, write_rings
from .graph import Graph, RequestParts, build_graph, daily_requests, request_parts
from .ingest import (
    FIELD_COL,
    FILE_COL,
    REASON_COL,
    ROW_COL,
    FilePart,
    Quarantine,
    read_table,
    record_json,
    table_files,
    work_units,
)
from .labels import entity_labels
from .normalize import normalize_accounts, normalize_payments, normalize_requests
from .progress import StageClock, peak_rss_mb, progress
from .report import ACTIVITY_FILE, TEMPLATES_FILE, ReportData, report_tables, write_report
from .schema import ACCOUNTS, PAYMENTS, REQUESTS
from .score import AccountReading, ScoredRings, read_accounts, score_rings
from .settings import Settings
from .templates import TemplateMiner

log = logging.getLogger(__name__)


@dataclass
class Inputs:
    """Validated, normalised input: small tables whole, the request log reduced to compact columns."""

    accounts: pl.DataFrame
    payments: pl.DataFrame
    requests: pl.DataFrame  # compact, de-duplicated, with template_id and reasoning_style (null: not sampled)
    templates: Any = None  # TemplateResult
    parts: RequestParts | None = None  # what the graph takes from the log beside its templates


@dataclass
class RunResult:
    rings: pl.DataFrame
    members: pl.DataFrame
    evidence: pl.DataFrame
    account_scores: pl.DataFrame
    graph: Graph
    detection: Detection
    summary: dict[str, Any] = field(default_factory=dict)
    daily: pl.DataFrame | None = None  # requests per account and day (report timelines); None without the log
    link_tables: LinkTables | None = None  # every kept link and membership, drawn while Leiden ran

    def to_pandas(self) -> tuple[Any, Any]:
        """(rings, ring_members) as pandas DataFrames, for notebooks."""
        try:
            return self.rings.to_pandas(), self.members.to_pandas()
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError("to_pandas() needs pandas: pip install 'linkage[pandas]'") from exc


# ---------------------------------------------------------------- stages
def read_rows(
    input_dir: Path, spec, settings: Settings, quarantine: Quarantine, files: list[Path] | None = None
) -> pl.DataFrame:
    """All valid rows of a (small) table, in file and row order."""
    frames = [batch for _, batch in read_table(input_dir, spec, settings.ingest, quarantine, files)]
    return pl.concat(frames, how="diagonal_relaxed") if frames else _empty(spec)


def prepare_accounts(accounts: pl.DataFrame, quarantine: Quarantine) -> pl.DataFrame:
    """Quarantine repeated account_ids (the first occurrence counts) and normalise."""
    first = accounts.with_columns(pl.col("account_id").is_first_distinct().alias("_first"))
    duplicates = first.filter(~pl.col("_first"))
    if duplicates.height:
        origin = first.filter(pl.col("_first")).select(
            "account_id", pl.col(FILE_COL).alias("_f0"), pl.col(ROW_COL).alias("_r0")
        )
        duplicates = duplicates.join(origin, on="account_id")
        _requarantine(
            quarantine,
            "accounts",
            duplicates,
            "account_id",
            pl.format("duplicate account_id (first at {} row {})", pl.col("_f0"), pl.col("_r0")),
            repeats=True,
        )
    return normalize_accounts(first.filter(pl.col("_first")).drop("_first"))


def prepare_payments(payments: pl.DataFrame, known: pl.DataFrame, quarantine: Quarantine) -> pl.DataFrame:
    return normalize_payments(_drop_unknown_accounts(payments, known, quarantine, "payments"))


@dataclass
class RequestFile:
    """One request-log file, validated and reduced: its compact rows, what the template miner
    learnt from it and its quarantine. Files are independent, so they are processed concurrently."""

    rows: pl.DataFrame
    miner_state: dict[str, pl.DataFrame]
    quarantine: Quarantine


def ingest_request_file(
    path: Path, settings: Settings, bound: tuple[np.ndarray, np.ndarray] | None = None
) -> RequestFile:
    """``bound``: the run's prompt sample so far (:attr:`TemplateMiner.bound`), or None for a
    self-contained sample of this file (staging)."""
    return ingest_request_parts([FilePart(path)], settings, bound)


def ingest_request_parts(
    parts: list[FilePart], settings: Settings, bound: tuple[np.ndarray, np.ndarray] | None = None
) -> RequestFile:
    """:func:`ingest_request_file` of one unit of work (:func:`~linkage.ingest.work_units`): consecutive
    small files, validated together, or a slice of a large file."""
    quarantine = Quarantine()
    miner = TemplateMiner(settings.templates)
    rows = [
        normalize_requests(batch, miner, bound)
        for _, batch in read_table(parts[0].path.parent, REQUESTS, settings.ingest, quarantine, parts=parts)
    ]
    frame = pl.concat(rows, how="vertical_relaxed") if rows else _empty_compact()
    return RequestFile(frame, miner.state(), quarantine)


def ingest_requests(
    input_dir: Path, settings: Settings, quarantine: Quarantine, files: list[Path] | None = None
) -> tuple[pl.DataFrame, TemplateMiner]:
    """Stream the request log unit by unit (:func:`~linkage.ingest.work_units`: a file, small files
    together, or a slice of a large file; several at once: polars releases the GIL); only compact
    columns survive each unit. Results are combined in file order, so the outcome does not depend on
    which unit finished first."""
    paths = table_files(input_dir, REQUESTS) if files is None else files
    groups = work_units(paths, settings.ingest)
    compact: list[pl.DataFrame] = []
    miner = TemplateMiner(settings.templates)
    with ThreadPoolExecutor(max_workers=settings.ingest.workers) as pool:
        # each group reads the sample's bound when it starts: the later the file, the fewer texts it keeps
        done = pool.map(lambda group: ingest_request_parts(group, settings, miner.bound), groups)
        try:
            for part in progress(done, "requests", total=len(groups)):
                compact.append(part.rows)
                miner.absorb(part.miner_state)  # as files arrive: only the sample so far is held
                quarantine.merge(part.quarantine)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    compact = [frame for frame in compact if frame.height]
    # one chunk per file, not copied into one contiguous frame: first-touching gigabytes of new memory
    # costs seconds here, and the group-bys downstream run as fast on a few dozen chunks
    return (pl.concat(compact, how="vertical_relaxed", rechunk=False) if compact else _empty_compact()), miner


def clean_requests(requests: pl.DataFrame, known: pl.DataFrame, quarantine: Quarantine) -> pl.DataFrame:
    """Quarantine requests of unknown accounts and repeats of a request_id (the first one counts)."""
    if requests.height == 0:
        return requests
    requests = _drop_unknown_accounts(requests, known, quarantine, "requests")
    repeated = repeats(requests["request_key"])
    if repeated.any():
        _requarantine(
            quarantine,
            "requests",
            requests.filter(repeated),
            "request_id",
            pl.lit("duplicate request_id (already counted)"),
            repeats=True,
        )
        requests = requests.filter(~repeated)
    return requests


def repeats(keys: pl.Series) -> pl.Series:
    """Per row, whether its (non-null) key was on an earlier row. One sort of the keys finds the few
    values that repeat, and only the rows holding those are compared: hashing all 16 M keys of an
    incident-sized log (``is_first_distinct``) took 3 s, this under a second."""
    values = keys.drop_nulls()
    if not values.dtype.is_integer():
        return keys.is_not_null() & ~keys.is_first_distinct()
    ordered = values.sort().to_numpy()  # (polars: a third of np.sort's time, 0.4 s at incident scale)
    repeated_values = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    mask = np.zeros(keys.len(), bool)
    if len(repeated_values):
        rows = (
            pl.DataFrame({"key": keys})
            .with_row_index("row")
            .filter(pl.col("key").is_in(pl.Series(repeated_values, dtype=keys.dtype).implode()))
        )
        first = rows.group_by("key").agg(pl.col("row").min().alias("first"))
        mask[rows.join(first, on="key").filter(pl.col("row") != pl.col("first"))["row"].to_numpy()] = True
    return pl.Series(keys.name, mask)


def _drop_unknown_accounts(
    frame: pl.DataFrame, known: pl.DataFrame, quarantine: Quarantine, table: str
) -> pl.DataFrame:
    if frame.height == 0:
        return frame
    ids = known["account_id"].cast(frame.schema["account_id"])
    unknown = ~frame["account_id"].is_in(ids.implode())  # a membership test, not a join of the whole frame
    if unknown.any():
        _requarantine(
            quarantine, table, frame.filter(unknown), "account_id", pl.lit("account_id not in accounts table")
        )
        frame = frame.filter(~unknown)
    return frame


def _requarantine(
    quarantine: Quarantine, table: str, rows: pl.DataFrame, field_name: str, reason: pl.Expr, repeats: bool = False
) -> None:
    """Rows that passed row-level checks but fail a cross-row one move from used to quarantined
    (``repeats``: they restate records already counted, see :meth:`Quarantine.add`)."""
    shown = [
        c
        for c in rows.columns
        if not c.startswith("_") and rows[c].dtype != pl.Object and not isinstance(rows[c].dtype, pl.List)
    ][:12]
    quarantine.add(
        table,
        rows.select(
            pl.col(FILE_COL).cast(pl.Utf8),
            ROW_COL,
            pl.lit(field_name).alias(FIELD_COL),
            reason.alias(REASON_COL),
            record_json(shown),
        ),
        repeats=repeats,
    )
    quarantine.table_counts(table).rows_used -= rows.height


def _empty(spec) -> pl.DataFrame:
    from .ingest import _dtype

    schema = {c.name: _dtype(c.kind) for c in spec.columns}
    schema |= {f"{c.name}_subnet": pl.Utf8 for c in spec.columns if c.kind == "ip"}
    return pl.DataFrame(schema=schema | {FILE_COL: pl.Utf8, ROW_COL: pl.Int64})


def attach_templates(requests: pl.DataFrame, miner: TemplateMiner):
    """Mine the sample and give every request whose text is in it the text's template and reasoning
    flag (``reasoning_style`` null: the text was not sampled)."""
    keys = miner.sampled_keys()
    # one lookup of the key column; counts and results then follow by position in the sample
    position = miner.positions(requests["prompt_key"])
    counts = np.bincount(position.drop_nulls().to_numpy(), minlength=len(keys))
    result = miner.finish(pl.DataFrame({"prompt_key": keys, "requests": counts}))
    return requests.with_columns(
        result.assignments["template_id"].gather(position), result.assignments["reasoning_style"].gather(position)
    ), result


def load_inputs(input_dir: Path, settings: Settings, quarantine: Quarantine, clock: StageClock) -> Inputs:
    input_dir = Path(input_dir)
    with clock.stage("ingest"):
        for spec in (ACCOUNTS, PAYMENTS, REQUESTS):
            table_files(input_dir, spec)  # fail fast on a missing table, before any work
        accounts = prepare_accounts(read_rows(input_dir, ACCOUNTS, settings, quarantine), quarantine)
        payments = prepare_payments(read_rows(input_dir, PAYMENTS, settings, quarantine), accounts, quarantine)
        requests, miner = ingest_requests(input_dir, settings, quarantine)
        requests = clean_requests(requests, accounts, quarantine)
        quarantine.check_share(settings.ingest.max_quarantine_share, settings.ingest.quarantine_guard_min_rows)
    # the templates are mined (mostly one core: Python and hashing) while the graph's relationships
    # that need none are built beside them (sorts and group-bys that release the GIL)
    with clock.stage("templates"), ThreadPoolExecutor(max_workers=1) as pool:
        beside = pool.submit(request_parts, requests, settings.detect.activity_window_minutes)
        requests, templates = attach_templates(requests, miner)
        parts = beside.result()
    return Inputs(accounts, payments, requests, templates, parts)


def _empty_compact() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "account_id": pl.Categorical,
            "ts": pl.Datetime("ms", "UTC"),
            "ip": pl.Categorical,
            "subnet": pl.Categorical,
            "asn": pl.Int64,
            "ip_type": pl.Categorical,
            "device_id": pl.Categorical,
            "model": pl.Categorical,
            "input_tokens": pl.Int64,
            "output_tokens": pl.Int64,
            "request_key": pl.UInt64,
            "prompt_key": pl.UInt64,
            FILE_COL: pl.Categorical,
            ROW_COL: pl.Int64,
        }
    )


def analyse(
    graph: Graph, settings: Settings, clock: StageClock, explained: bool = True
) -> tuple[Detection, ScoredRings, LinkTables | None]:
    """Detection and scoring over a graph, whichever store it came from; and, when ``explained``, the
    tables `linkage explain` is written from (:func:`~linkage.explain.link_tables`)."""
    # what scoring reads of the accounts alone, and the explanation's tables, need no ring: drawn
    # while Leiden runs (where it runs in a process of its own, on the core it leaves idle)
    reading = functools.cache(lambda: _read_accounts(graph, clock))
    tables: LinkTables | None = None

    def meanwhile(so_far: Detection) -> None:
        nonlocal tables
        reading()
        if explained:
            with clock.stage("explain/tables"):
                tables = link_tables(so_far.accounts, so_far.pairs, so_far.memberships)

    with clock.stage("detect"):
        detection = detect(graph, settings.detect, clock, meanwhile=meanwhile)
    with clock.stage("score"):
        scored = score_rings(
            detection,
            graph,
            settings.score,
            labels=lambda found: entity_labels(graph, found, settings.detect),
            min_ring_size=settings.detect.min_ring_size,
            reading=reading(),
        )
    return detection, scored, tables


def _read_accounts(graph: Graph, clock: StageClock) -> AccountReading:
    with clock.stage("score/accounts"):
        return read_accounts(graph)


def account_scores(graph: Graph, members: pl.DataFrame, alone: pl.DataFrame) -> pl.DataFrame:
    """Every account ranked: a ring member by its ring's score and its own risk, any other account by
    its own risk against the background (``alone``)."""
    return (
        graph.nodes["Account"]
        .select("account_id", "org_id", "requests")
        .join(members, on="account_id", how="left")
        .join(alone, on="account_id", how="left")
        .with_columns(pl.coalesce("account_score", "alone_score", pl.lit(0.0)).alias("account_score"))
        .select("account_id", "ring_id", "account_score", "risk", "attachment", "org_id", "requests")
        .sort(["account_score", "account_id"], descending=[True, False])
    )


# ---------------------------------------------------------------- facade
def run(
    input_dir: str | Path, out_dir: str | Path | None = None, settings: Settings | None = None, store: Any = None
) -> RunResult:
    """Files in, ranked rings out. ``out_dir=None`` computes without writing (notebooks).

    ``store``: a graph store, or a list of them (Neo4j, the embedded Parquet store), that receive
    the graph and the rings."""
    settings = settings or Settings()
    if out_dir is not None:
        ensure_writable(Path(out_dir))
    started = time.time()
    clock = StageClock()
    quarantine = Quarantine()
    inputs = load_inputs(Path(input_dir), settings, quarantine, clock)
    with clock.stage("graph"):
        graph = build_graph(
            inputs.accounts,
            inputs.payments,
            inputs.requests,
            inputs.templates,
            settings.detect.activity_window_minutes,
            inputs.parts,
        )
        daily = inputs.parts.daily if inputs.parts is not None else daily_requests(inputs.requests)
    del inputs
    explained = out_dir is not None or store is not None
    detection, (rings, members, evidence, alone, cut), tables = analyse(graph, settings, clock, explained)
    scores = account_scores(graph, members, alone)
    result = RunResult(rings, members, evidence, scores, graph, detection, daily=daily, link_tables=tables)
    for target in store if isinstance(store, list) else [store] if store is not None else []:
        with clock.stage("store"):
            target.write_graph(graph)
            target.write_rings(rings, members, run_id=_run_id(started), run_props={"flag_cut": cut})
            store_explanation(target, result, settings, _run_id(started))
    result.summary = summarise(input_dir, settings, quarantine, clock, graph, rings, cut, started)
    if out_dir is not None:
        with clock.stage("export"):
            report_data = export(Path(out_dir), result, quarantine)
        result.summary |= clock_figures(clock)  # export is timed too
        finish_export(Path(out_dir), result, report_data)
    return result


def detect_from_store(store: Any, out_dir: Path | None, settings: Settings, write_back: bool = True) -> RunResult:
    """Detection over the whole graph accumulated in a store (Neo4j, or an embedded graph directory),
    not only one run's files."""
    if out_dir is not None:
        ensure_writable(Path(out_dir))
    started = time.time()
    clock = StageClock()
    with clock.stage("read_store"):
        graph = store.read_graph()
    explained = out_dir is not None or write_back
    detection, (rings, members, evidence, alone, cut), tables = analyse(graph, settings, clock, explained)
    scores = account_scores(graph, members, alone)
    result = RunResult(rings, members, evidence, scores, graph, detection, link_tables=tables)
    if write_back:
        with clock.stage("store"):
            store.write_rings(rings, members, run_id=_run_id(started), run_props={"flag_cut": cut})
            store_explanation(store, result, settings, _run_id(started))
    result.summary = summarise("neo4j", settings, Quarantine(), clock, graph, rings, cut, started)
    if out_dir is not None:
        with clock.stage("export"):
            report_data = export(Path(out_dir), result, Quarantine())
        result.summary |= clock_figures(clock)  # export is timed too
        finish_export(Path(out_dir), result, report_data)
    return result


def store_explanation(store: Any, result: RunResult, settings: Settings, run_id: str) -> None:
    """What `linkage explain` reads, into a store beside its rings (the members of flagged rings)."""
    links, holdings = explanation_for_store(
        result.detection, result.members, result.rings, result.evidence, result.link_tables
    )
    store.write_explanation(links, holdings, settings.detect.model_dump_json(), run_id)


def export(out_dir: Path, result: RunResult, quarantine: Quarantine) -> ReportData:
    """Every output but ``run.json`` and the report (:func:`finish_export`), ``rings.csv`` last; returns
    what the report is drawn from (the same tables, in memory)."""
    begin_export(out_dir)
    # the tables are drawn and the files written on two threads (polars releases the GIL)
    with ThreadPoolExecutor(max_workers=2) as pool:
        explained = pool.submit(_write_explanation, out_dir, result)
        reported = pool.submit(_write_report_tables, out_dir, result)
        write_quarantine(out_dir, {t: quarantine.rows(t) for t in quarantine.counts})
        write_rings(
            out_dir, result.rings, result.members, result.evidence, result.account_scores, pool, [explained, reported]
        )
        activity, templates = reported.result()
    return ReportData(result.rings, result.members, result.evidence, activity, templates, {})


def _write_explanation(out_dir: Path, result: RunResult) -> None:
    links, kept = explanation_tables(result.detection, result.members, result.link_tables)
    write_parquet(links, out_dir / LINKS_FILE)
    write_parquet(kept, out_dir / MEMBERSHIPS_FILE)


def _write_report_tables(out_dir: Path, result: RunResult) -> tuple[pl.DataFrame, pl.DataFrame]:
    activity, templates = report_tables(result.graph, result.members, result.daily)
    write_parquet(activity, out_dir / ACTIVITY_FILE)
    write_parquet(templates, out_dir / TEMPLATES_FILE)
    return activity, templates


def finish_export(out_dir: Path, result: RunResult, report_data: ReportData) -> None:
    """``run.json``, then the report (the same page ``linkage report OUT`` draws from the files)."""
    write_json(result.summary, out_dir / "run.json")
    report_data.summary = result.summary
    write_report(out_dir, report_data)


def _run_id(started: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))


def summarise(
    input_dir: Any,
    settings: Settings,
    quarantine: Quarantine,
    clock: StageClock,
    graph: Graph,
    rings: pl.DataFrame,
    flag_cut: float | None,
    started: float,
) -> dict[str, Any]:
    counts = {table: c.as_dict() for table, c in quarantine.counts.items()}
    for table, c in counts.items():
        if c["rows_read"] != c["rows_used"] + c["rows_quarantined"]:
            raise InputError(
                f"{table}: internal count mismatch read={c['rows_read']} used={c['rows_used']} "
                f"quarantined={c['rows_quarantined']}"
            )
    return {
        "run_id": _run_id(started),
        "input_dir": str(input_dir),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "tables": counts,
        "graph": graph.counts(),
        "rings": {
            "total": rings.height,
            "flagged": int(rings["flagged"].sum()) if rings.height else 0,
            "accounts_in_flagged": int(rings.filter(pl.col("flagged"))["size"].sum()) if rings.height else 0,
            # the score at which rings were flagged: score.flag_threshold, or calibrated to this run
            "flag_cut": None if flag_cut is None else round(flag_cut, 6),
        },
        **clock_figures(clock),
        "parameters": settings.public_dict(),
        "versions": _versions(),
    }


def clock_figures(clock: StageClock) -> dict[str, Any]:
    """Timings and peak memory per stage (the process's running maximum at the end of each), and overall."""
    return {
        "timings_s": dict(clock.timings),
        "cpu_s": dict(clock.cpu),
        "stage_peak_rss_mb": dict(clock.peak_rss),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def _versions() -> dict[str, str]:
    names = ["polars", "pyarrow", "numpy", "scipy", "igraph", "numba", "neo4j"]
    found = {"linkage": __version__, "python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version("python-igraph" if name == "igraph" else name)
        except metadata.PackageNotFoundError:
            pass
    return found
