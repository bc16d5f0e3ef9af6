"""Periodic rebuilds for cron: incremental, locked, crash-safe, with stable ring identity.

State lives in ``OUT_DIR/state/``:

- ``manifest.json``: every ingested file with its size, mtime, SHA-256 and the staged data it became,
  and the staging format and settings fingerprint (a mismatch stages every file again);
- ``staged/<key>/``: per input file, its validated and normalised rows (requests reduced to
  compact columns plus the file's own prompt sample), its quarantined rows and counts;
- ``sample/``: the prompt sample merged over all staged files, and which staged files it covers
  (a night that only adds files starts from it);
- ``rings.parquet``: the previous run's rings with their persistent ids, for identity matching.

A run stages only files that are new or changed (a changed file replaces its staged data, so
nothing is counted twice), then recomputes rings over *all* staged data — which is why two
nights of partitions give exactly the rings of one full rebuild over the same files. Each
staged file and the manifest are written to a temporary name and renamed; a run killed at any
point leaves either the old or the new version of each, and the next run converges.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from .errors import InputError, LockHeldError
from .export import ensure_writable, write_csv, write_json, write_parquet
from .graph import build_graph, daily_requests, graph_delta, graph_removals
from .ingest import Quarantine, read_table, table_files
from .pipeline import (
    RunResult,
    _empty,
    _empty_compact,
    account_scores,
    analyse,
    attach_templates,
    clean_requests,
    clock_figures,
    export,
    ingest_request_file,
    prepare_accounts,
    prepare_payments,
    store_explanation,
    summarise,
)
from .progress import StageClock
from .report import write_report
from .schema import ACCOUNTS, PAYMENTS, REQUESTS, TableSpec
from .settings import Settings
from .store.embedded import EmbeddedStore
from .templates import TemplateMiner

log = logging.getLogger(__name__)
EXIT_CODES = {"ok": 0, "internal_error": 1, "input_or_config_error": 2, "store_error": 3, "lock_held": 75}


# ---------------------------------------------------------------- locking
class RunLock:
    """An exclusive ``flock`` on ``OUT_DIR/.lock``. The kernel drops it when its holder dies, so a
    lock left by a killed run is simply taken over; the file names the holder for the message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: Any = None
        self.previous_holder: str | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "unknown holder"
            self.handle.close()
            raise LockHeldError(f"another rebuild holds {self.path} ({holder})") from None
        self.handle.seek(0)
        self.previous_holder = self.handle.read().strip() or None
        if self.previous_holder:
            log.warning("taking over the lock left by a run that did not finish (%s)", self.previous_holder)
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(
            f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
        )
        self.handle.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.seek(0)
        self.handle.truncate()  # an empty file: the run finished
        self.handle.flush()
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


# ---------------------------------------------------------------- manifest and staging
def _checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


STAGING_VERSION = 2  # 2: each file's prompt sample (candidates), no longer per-batch mined segments


def staging_fingerprint(settings: Settings) -> str:
    """What staged files depend on besides the input: their format and the settings that shape them
    (validation limits, the per-file prompt sample). Settings used only after staging are left out, so
    changing them never re-ingests the input."""
    shaping = {
        "version": STAGING_VERSION,
        "templates": settings.templates.model_dump(include={"max_prompts_per_account", "max_prompt_chars"}),
        "ingest": settings.ingest.model_dump(include={"max_id_chars", "max_text_chars", "max_tokens"}),
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class StateDir:
    root: Path
    fingerprint: str  # staging_fingerprint of this run's settings
    staging_reset: bool = False  # set when staged files of another version or settings were dropped

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def load_manifest(self) -> dict[str, dict[str, Any]]:
        """The staged files, or none when they were written by another version or other ingest or
        template settings: then they are dropped and every file is staged again (ring history stays)."""
        if not self.manifest_path.exists():
            return {}
        manifest = json.loads(self.manifest_path.read_text())
        if manifest.get("staging") != self.fingerprint:
            log.warning(
                "staged files were written by another linkage version or other ingest/template settings; "
                "staging every input file again"
            )
            shutil.rmtree(self.root / "staged", ignore_errors=True)
            self.staging_reset = True
            return {}
        return manifest["files"]

    def save_manifest(self, files: dict[str, dict[str, Any]]) -> None:
        write_json(
            {"version": STAGING_VERSION, "staging": self.fingerprint, "files": dict(sorted(files.items()))},
            self.manifest_path,
        )

    def staged(self, key: str) -> Path:
        return self.root / "staged" / key

    def reset(self, keep_history: bool = True) -> None:
        """Forget everything staged (``--full``); the last rings stay, so ring ids carry over, unless
        ``keep_history`` is false (``--reset-history``)."""
        history = self.root / "rings.parquet"
        kept = history.read_bytes() if keep_history and history.exists() else None
        shutil.rmtree(self.root, ignore_errors=True)
        if kept is not None:
            self.root.mkdir(parents=True)
            history.write_bytes(kept)


def _stage_file(table: TableSpec, path: Path, input_dir: Path, settings: Settings, target: Path) -> dict[str, Any]:
    """Validate and normalise one input file into ``target`` (written under a temporary name)."""
    quarantine = Quarantine()
    miner_state: dict[str, pl.DataFrame] = {}
    if table.name == "requests":
        part = ingest_request_file(path, settings)
        quarantine, miner_state = part.quarantine, part.miner_state
        frame = part.rows.with_columns(pl.col("_file").cast(pl.Utf8))
    else:
        batches = [b for _, b in read_table(input_dir, table, settings.ingest, quarantine, [path])]
        frame = pl.concat(batches, how="diagonal_relaxed") if batches else _empty(table)
    counts = quarantine.table_counts(table.name).as_dict()

    def fill(tmp: Path) -> None:
        for name, state in miner_state.items():
            state.write_parquet(tmp / f"miner_{name}.parquet")
        frame.write_parquet(tmp / "rows.parquet")
        quarantine.rows(table.name).write_parquet(tmp / "quarantine.parquet")
        (tmp / "counts.json").write_text(json.dumps(counts))

    _replace_dir(target, fill)
    return counts


def _replace_dir(target: Path, fill: Callable[[Path], None]) -> None:
    """Fill a new directory and rename it over ``target``: a run killed half-way leaves the old
    directory, none, or the new one, never a partial one under the final name."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fill(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def _file_key(table: str, relative: str) -> str:
    return f"{table}-{hashlib.sha1(relative.encode()).hexdigest()[:16]}"


def sync_staging(input_dir: Path, state: StateDir, settings: Settings) -> dict[str, Any]:
    """Stage new and changed files, forget removed ones; report what changed."""
    manifest = state.load_manifest()
    seen: set[str] = set()
    report: dict[str, Any] = {"new": [], "changed": [], "removed": [], "unchanged": 0}
    for spec in (ACCOUNTS, PAYMENTS, REQUESTS):
        for path in table_files(input_dir, spec):
            relative = str(path.relative_to(input_dir))
            seen.add(relative)
            stat = path.stat()
            entry = manifest.get(relative)
            if (
                entry
                and entry["size"] == stat.st_size
                and entry["mtime_ns"] == stat.st_mtime_ns
                and state.staged(entry["staged"]).exists()
            ):
                report["unchanged"] += 1
                continue
            checksum = _checksum(path)
            if entry and entry["sha256"] == checksum and state.staged(entry["staged"]).exists():
                entry["mtime_ns"] = stat.st_mtime_ns  # touched, not changed
                report["unchanged"] += 1
                continue
            report["changed" if entry else "new"].append(relative)
            if entry:
                log.warning("%s changed since it was ingested; re-ingesting it", relative)
            key = _file_key(spec.name, relative)
            counts = _stage_file(spec, path, input_dir, settings, state.staged(key))
            manifest[relative] = {
                "table": spec.name,
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "sha256": checksum,
                "staged": key,
                "rows_read": counts["rows_read"],
            }
            state.save_manifest(manifest)  # after every file: a kill loses at most the file in hand
    for relative in sorted(set(manifest) - seen):
        report["removed"].append(relative)
        shutil.rmtree(state.staged(manifest.pop(relative)["staged"]), ignore_errors=True)
    state.save_manifest(manifest)
    _remove_orphans(state, manifest)
    return report | {"manifest": manifest}


def _remove_orphans(state: StateDir, manifest: dict[str, dict[str, Any]]) -> None:
    keep = {entry["staged"] for entry in manifest.values()}
    staged_root = state.root / "staged"
    if staged_root.exists():
        for child in staged_root.iterdir():
            if child.name not in keep:
                shutil.rmtree(child, ignore_errors=True)


# ---------------------------------------------------------------- assembly
def merged_sample(
    state: StateDir, manifest: dict[str, dict[str, Any]], staged: list[Path], settings: Settings
) -> TemplateMiner:
    """The prompt sample of all staged request files, saved for the next run as ``state/sample/``.

    The bottom-k of a union is the bottom-k of (an earlier bottom-k ∪ what came since): when every file
    the last saved sample covered is still staged unchanged, only the files staged after it are
    absorbed into it. Otherwise (a file removed or changed, staging redone) every staged file's sample
    is merged again."""
    checksum = {entry["staged"]: entry["sha256"] for entry in manifest.values()}
    covered = {directory.name: checksum[directory.name] for directory in staged}
    miner = TemplateMiner(settings.templates)
    saved, todo = state.root / "sample", staged
    if (saved / "covered.json").exists():
        previous = json.loads((saved / "covered.json").read_text())
        if previous["staging"] == state.fingerprint and all(covered.get(k) == v for k, v in previous["files"].items()):
            miner.absorb({"candidates": pl.read_parquet(saved / "candidates.parquet")})
            todo = [directory for directory in staged if directory.name not in previous["files"]]
    for directory in todo:  # one file's sample at a time, as in a full run
        miner.absorb({name: pl.read_parquet(directory / f"miner_{name}.parquet") for name in TemplateMiner.STATE_PARTS})
    candidates = miner.state()["candidates"]

    def fill(tmp: Path) -> None:
        candidates.write_parquet(tmp / "candidates.parquet")
        (tmp / "covered.json").write_text(json.dumps({"staging": state.fingerprint, "files": covered}))

    # no sample at all after a kill is safe too: then every staged file is merged again
    _replace_dir(saved, fill)
    return miner


def assemble(
    input_dir: Path,
    state: StateDir,
    manifest: dict[str, dict[str, Any]],
    settings: Settings,
    quarantine: Quarantine,
    clock: StageClock,
):
    """All staged data, in sorted file order, through the same cross-file checks as a full run."""
    by_table: dict[str, list[Path]] = {"accounts": [], "payments": [], "requests": []}
    for relative in sorted(manifest):
        by_table[manifest[relative]["table"]].append(state.staged(manifest[relative]["staged"]))
    if not by_table["accounts"] or not by_table["requests"]:
        raise InputError(f"{input_dir}: no accounts or requests files ingested")
    for table, dirs in by_table.items():
        counts = quarantine.table_counts(table)
        for directory in dirs:
            saved = json.loads((directory / "counts.json").read_text())
            counts.files += saved["files"]
            counts.rows_read += saved["rows_read"]
            counts.rows_used += saved["rows_used"]
            counts.rows_quarantined += saved["rows_quarantined"]
            counts.reasons.update(saved["quarantine_reasons"])
            rows = pl.read_parquet(directory / "quarantine.parquet")
            if rows.height:
                quarantine.frames.setdefault(table, []).append(rows)
    with clock.stage("assemble"):
        accounts = prepare_accounts(_concat([d / "rows.parquet" for d in by_table["accounts"]], ACCOUNTS), quarantine)
        payments = prepare_payments(
            _concat([d / "rows.parquet" for d in by_table["payments"]], PAYMENTS), accounts, quarantine
        )
        requests = _concat([d / "rows.parquet" for d in by_table["requests"]], None)
        requests = clean_requests(requests, accounts, quarantine)
        quarantine.check_share(settings.ingest.max_quarantine_share, settings.ingest.quarantine_guard_min_rows)
    with clock.stage("templates"):
        miner = merged_sample(state, manifest, by_table["requests"], settings)
        requests, templates = attach_templates(requests, miner)
    return accounts, payments, requests, templates


def _concat(paths: list[Path], spec: TableSpec | None) -> pl.DataFrame:
    frames = [pl.read_parquet(p) for p in paths]
    frames = [f for f in frames if f.height] or frames[:1]
    if not frames:
        return _empty(spec) if spec else _empty_compact()
    return pl.concat(frames, how="diagonal_relaxed")  # per-file chunks, as in a full run (see ingest_requests)


# ---------------------------------------------------------------- ring identity
def match_rings(previous: pl.DataFrame, current: pl.DataFrame, run_id: str) -> tuple[dict[str, str], pl.DataFrame]:
    """Persistent ids for the current rings, matched to the previous run's by member overlap.

    ``previous``/``current``: ring_id, account_id. A current ring inherits the id of the previous
    ring that gave it most members, provided that is at least half of that previous ring (or of the
    current ring); each previous id passes to one ring at most. Returns (content id → persistent
    id, changes table)."""
    prev_sizes = previous.group_by("ring_id").len("prev_size")
    cur_sizes = current.group_by("ring_id").len("size")
    overlap = (
        current.join(previous.rename({"ring_id": "prev_id"}), on="account_id")
        .group_by("ring_id", "prev_id")
        .len("shared")
        .join(prev_sizes.rename({"ring_id": "prev_id"}), on="prev_id")
        .join(cur_sizes, on="ring_id")
    )
    strong = overlap.filter((2 * pl.col("shared") >= pl.col("prev_size")) | (2 * pl.col("shared") >= pl.col("size")))
    ranked = strong.sort(["shared", "prev_id", "ring_id"], descending=[True, False, False])
    assigned: dict[str, str] = {}
    taken: set[str] = set()
    for ring_id, prev_id in ranked.select("ring_id", "prev_id").iter_rows():  # over ring pairs: few
        if ring_id not in assigned and prev_id not in taken:
            assigned[ring_id] = prev_id
            taken.add(prev_id)
    sources = strong.group_by("ring_id").agg(pl.col("prev_id").sort().alias("from"))
    splits = strong.group_by("prev_id").len("pieces").filter(pl.col("pieces") > 1)["prev_id"].to_list()
    rows = []
    for ring_id, size in cur_sizes.sort("ring_id").iter_rows():
        origin = sources.filter(pl.col("ring_id") == ring_id)["from"].to_list()
        origin = origin[0] if origin else []
        persistent = assigned.get(ring_id) or "L" + hashlib.sha1(f"{run_id}|{ring_id}".encode()).hexdigest()[:12]
        prev_size = (
            int(prev_sizes.filter(pl.col("ring_id") == persistent)["prev_size"].sum()) if ring_id in assigned else None
        )
        if len(origin) > 1:
            change = "merged"
        elif not origin:
            change = "new"
        elif ring_id not in assigned or origin[0] in splits:
            change = "split"
        else:
            change = "grown" if size > prev_size else "shrunk" if size < prev_size else "unchanged"
        assigned[ring_id] = persistent
        rows.append(
            {
                "ring_id": persistent,
                "change": change,
                "previous_size": prev_size,
                "size": size,
                "previous_ring_ids": "|".join(origin),
            }
        )
    for prev_id, prev_size in prev_sizes.sort("ring_id").iter_rows():
        if prev_id not in taken and prev_id not in set(strong["prev_id"].to_list()):
            rows.append(
                {
                    "ring_id": prev_id,
                    "change": "vanished",
                    "previous_size": prev_size,
                    "size": 0,
                    "previous_ring_ids": prev_id,
                }
            )
    changes = pl.DataFrame(
        rows,
        schema={
            "ring_id": pl.Utf8,
            "change": pl.Utf8,
            "previous_size": pl.Int64,
            "size": pl.Int64,
            "previous_ring_ids": pl.Utf8,
        },
    )
    return assigned, changes


# ---------------------------------------------------------------- the job
def rebuild(
    input_dir: str | Path,
    out_dir: str | Path,
    settings: Settings | None = None,
    store: Any = None,
    full: bool = False,
    reset_history: bool = False,
) -> dict[str, Any]:
    settings = settings or Settings()
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    started = time.time()
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    clock = StageClock()
    ensure_writable(out_dir)
    with RunLock(out_dir / ".lock") as lock:
        _remove_temporaries(out_dir)
        state = StateDir(out_dir / "state", staging_fingerprint(settings))
        if full or reset_history:
            state.reset(keep_history=not reset_history)
        with clock.stage("ingest"):
            sync = sync_staging(input_dir, state, settings)
        quarantine = Quarantine()
        accounts, payments, requests, templates = assemble(
            input_dir, state, sync["manifest"], settings, quarantine, clock
        )
        with clock.stage("graph"):
            graph = build_graph(accounts, payments, requests, templates, settings.detect.activity_window_minutes)
            daily = daily_requests(requests)
        del requests
        detection, (rings, members, evidence, alone, cut), tables = analyse(graph, settings, clock)
        previous_path = state.root / "rings.parquet"
        previous = (
            pl.read_parquet(previous_path)
            if previous_path.exists()
            else pl.DataFrame(schema={"ring_id": pl.Utf8, "account_id": pl.Utf8})
        )
        mapping, changes = match_rings(previous, members.select("ring_id", "account_id"), run_id)
        rename = pl.col("ring_id").replace_strict(mapping, default=pl.col("ring_id"))
        rings = rings.with_columns(rename).join(
            changes.select("ring_id", "change", "previous_size"), on="ring_id", how="left"
        )
        members = members.with_columns(rename)
        evidence = evidence.with_columns(rename)
        scores = account_scores(graph, members, alone)
        result = RunResult(rings, members, evidence, scores, graph, detection, daily=daily, link_tables=tables)
        loaded = None
        if store is not None:
            with clock.stage("store"):
                # only what changed since the last completed load goes to the server; the snapshot is
                # replaced after the load, so a run killed mid-load sends the same rows again
                snapshot = EmbeddedStore(state.root / "graph")
                # a snapshot whose write was cut short is not used: the load starts from empty
                previous_graph = snapshot.read_graph() if snapshot.has_graph() else None
                # the database is made equal to a full load of today's input: without a snapshot
                # (first night, --full) it starts empty; otherwise what left the input is deleted
                if previous_graph is None:
                    store.clear_graph()
                    delta = graph
                else:
                    store.remove_graph(graph_removals(graph, previous_graph))
                    delta = graph_delta(graph, previous_graph)
                stats = store.write_graph(delta)
                store.write_rings(
                    rings,
                    members,
                    run_id=run_id,
                    run_props={"new_files": len(sync["new"]), "changed_files": len(sync["changed"]), "flag_cut": cut},
                )
                store_explanation(store, result, settings, run_id)
                snapshot.write_graph(graph)
                loaded = {
                    "nodes": stats.nodes,
                    "relationships": stats.relationships,
                    "seconds": round(stats.seconds, 2),
                }
        summary = summarise(input_dir, settings, quarantine, clock, graph, rings, cut, started)
        with clock.stage("export"):
            report_data = export(out_dir, result, quarantine)
            write_csv(changes, out_dir / "ring_changes.csv")
            write_parquet(members.select("ring_id", "account_id"), previous_path)
        change_counts = {k: int(v) for k, v in changes.group_by("change").len().iter_rows()}
        files = {k: sync[k] if k == "unchanged" else len(sync[k]) for k in ("new", "changed", "removed", "unchanged")}
        summary |= {
            "run_id": run_id,
            "exit_reason": "ok",
            "files": files | {"staging_reset": state.staging_reset},
            "ring_changes": change_counts,
            "lock_taken_over": lock.previous_holder,
            "neo4j_load": loaded,
            **clock_figures(clock),
        }
        write_json(summary, out_dir / "run.json")
        report_data.summary = summary
        write_report(out_dir, report_data)
        _append_history(out_dir / "runs.jsonl", summary)
    return summary


_ATOMIC_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # export.atomic_write's mkstemp names


def _remove_temporaries(out_dir: Path) -> None:
    """Half-written files of a killed run: under the lock no one else can be writing them, so they
    are garbage. Only linkage's own: its temporary names in the output and quarantine folders, and
    anything temporary in its state folder; another tool's ``*.tmp`` beside them is left alone."""
    for folder in (out_dir, out_dir / "quarantine"):
        for leftover in sorted(folder.glob(".*.tmp")):
            if leftover.is_file() and _ATOMIC_TEMPORARY.match(leftover.name):
                leftover.unlink(missing_ok=True)
    for leftover in sorted((out_dir / "state").rglob("*.tmp")):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def nightly(
    input_dir: str | Path,
    out_dir: str | Path,
    config: str | Path | None = None,
    use_neo4j: bool = False,
    full: bool = False,
    reset_history: bool = False,
) -> dict[str, Any]:
    """The cron job: settings, the Neo4j connection (holding its load lock) and :func:`rebuild`.
    Every failure, from a bad settings file to a lost server, is recorded in ``runs.jsonl`` with its
    ``exit_reason`` before it propagates (see :func:`failure_summary`)."""
    started = time.time()
    store = None
    try:
        settings = Settings.load(config)
        if use_neo4j:
            from .store.neo4j import Neo4jStore

            store = Neo4jStore.from_settings(settings.neo4j, writer=True)
        return rebuild(input_dir, out_dir, settings, store=store, full=full, reset_history=reset_history)
    except BaseException as exc:
        _record_failure(Path(out_dir), failure_summary(exc, started))
        raise
    finally:
        if store is not None:
            store.close()


def failure_summary(exc: BaseException, started: float) -> dict[str, Any]:
    """What a failed night prints and records: its exit reason and the one-line error."""
    code = getattr(exc, "exit_code", 1)
    reason = next((name for name, value in EXIT_CODES.items() if value == code), "internal_error")
    if isinstance(exc, KeyboardInterrupt):
        reason = "interrupted"
    message = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else type(exc).__name__
    if reason == "internal_error":
        message = f"{type(exc).__name__}: {message}"
    return {
        "run_id": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started)),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "exit_reason": reason,
        "exit_code": code if reason != "interrupted" else 130,
        "error": message,
    }


def _record_failure(out_dir: Path, summary: dict[str, Any]) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _append_history(out_dir / "runs.jsonl", summary)
    except OSError as exc:  # the output folder itself is the problem: stdout still gets the line
        log.warning("could not record the failed run in %s: %s", out_dir / "runs.jsonl", exc)


# what a night reports, on stdout and in runs.jsonl (failed nights carry exit_code and error)
_NIGHT_KEYS = ("run_id", "exit_reason", "exit_code", "error", "files", "rings", "ring_changes", "timings_s", "tables")


def _night(summary: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    entry = {k: summary[k] for k in keys if k in summary}
    if "tables" in entry:
        entry["tables"] = _table_counts(entry["tables"])
    return entry


def _append_history(path: Path, summary: dict[str, Any]) -> None:
    line = json.dumps(_night(summary, ("started_at", *_NIGHT_KEYS, "peak_rss_mb")))
    with open(path, "a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def summary_line(summary: dict[str, Any]) -> str:
    """The one JSON line a cron job prints on stdout."""
    return json.dumps(_night(summary, (*_NIGHT_KEYS, "neo4j_load")), separators=(",", ":"))


def _table_counts(tables: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    return {t: {k: c[k] for k in ("rows_read", "rows_used", "rows_quarantined")} for t, c in tables.items()}
