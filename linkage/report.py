"""Stage 7 — report: ``OUT/report.html``, one self-contained page per run for investigators.

An overview of every ring (flagged first, by score and size, with what changed since the last
rebuild where there is history) and a card per ring: a force-directed drawing of its members and
the entities they share (vis-network, vendored: no network at view time), the evidence table with
readable labels, example prompts of its templates, a timeline of signups and daily requests, and
its score broken into the behaviours behind it. Huge rings are drawn capped, and the cap is stated.

The page is built from the run's own files (:func:`load_report_data`), so ``linkage report OUT``
renders any finished run again. Data travels as JSON in a ``<script type="application/json">``
block and the page sets it with ``textContent`` only: an id cannot become markup.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import polars as pl

from .errors import InputError
from .export import atomic_write
from .score import RISK_FEATURES

REPORT_FILE = "report.html"
ACTIVITY_FILE, TEMPLATES_FILE = "ring_activity.parquet", "ring_templates.parquet"
VIS_NETWORK = "vis-network-9.1.13.min.js"
MAX_DRAWN_MEMBERS = 60  # members drawn per ring (the most attached); the card states the cap
MAX_DRAWN_ENTITIES = 40  # shared entities drawn per ring (the weightiest)
MAX_TABLE_ROWS = 30  # evidence rows listed per ring
MAX_RINGS = 300  # ring cards per page (flagged first); the overview lists them all


@dataclass
class ReportData:
    rings: pl.DataFrame
    members: pl.DataFrame
    evidence: pl.DataFrame
    activity: pl.DataFrame  # account_id, day (date), requests; signups as kind == "signup"
    templates: pl.DataFrame  # template_id, text, example, requests, accounts
    summary: dict[str, Any]


def report_tables(graph: Any, members: pl.DataFrame, daily: pl.DataFrame | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(activity, templates) of ring members, written beside the rings for the report: per member and
    day its requests, plus its signup; the templates its ring shares, with an example prompt."""
    ringed = members.select("account_id").unique()
    signups = (
        graph.nodes["Account"]
        .join(ringed, on="account_id")
        .filter(pl.col("created_at").is_not_null())
        .select(
            "account_id",
            pl.col("created_at").dt.date().alias("day"),
            pl.lit(1, pl.Int64).alias("requests"),
            pl.lit("signup").alias("kind"),
        )
    )
    parts = [signups]
    if daily is not None and daily.height:
        parts.append(
            daily.join(ringed, on="account_id").select(
                "account_id", "day", pl.col("requests").cast(pl.Int64), pl.lit("requests").alias("kind")
            )
        )
    activity = pl.concat(parts).sort("account_id", "day", "kind")
    used = graph.rels["SENT_TEMPLATE"].join(ringed, left_on="src", right_on="account_id").select("dst").unique()
    templates = graph.nodes["PromptTemplate"].join(used, left_on="template_id", right_on="dst")
    return activity, templates.select("template_id", "text", "example", "requests", "accounts").sort("template_id")


def load_report_data(out_dir: str | Path) -> ReportData:
    """A finished run's files, as the report needs them."""
    out_dir = Path(out_dir)
    needed = [
        "rings.parquet",
        "ring_members.parquet",
        "ring_evidence.parquet",
        "run.json",
        ACTIVITY_FILE,
        TEMPLATES_FILE,
    ]
    missing = [name for name in needed if not (out_dir / name).exists()]
    if missing:
        raise InputError(f"{out_dir}: not a complete linkage run ({', '.join(missing)} missing)")
    return ReportData(
        rings=pl.read_parquet(out_dir / "rings.parquet"),
        members=pl.read_parquet(out_dir / "ring_members.parquet"),
        evidence=pl.read_parquet(out_dir / "ring_evidence.parquet"),
        activity=pl.read_parquet(out_dir / ACTIVITY_FILE),
        templates=pl.read_parquet(out_dir / TEMPLATES_FILE),
        summary=json.loads((out_dir / "run.json").read_text()),
    )


def write_report(out_dir: str | Path, data: ReportData | None = None) -> Path:
    """Write ``OUT/report.html`` (from ``data``, or from the run's files) and return its path."""
    out_dir = Path(out_dir)
    data = data or load_report_data(out_dir)
    page = render(data)
    path = out_dir / REPORT_FILE
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return path


def render(data: ReportData) -> str:
    assets = files("linkage.report_assets")
    template = assets.joinpath("report.html").read_text(encoding="utf-8")
    vis = assets.joinpath(VIS_NETWORK).read_text(encoding="utf-8")
    payload = json.dumps(_page_data(data), default=str, separators=(",", ":"))
    # inside <script>, only "</" can end the block early; JSON allows "<\/" for it
    payload = payload.replace("</", "<\\/")
    vis = vis.replace("</script", "<\\/script")
    return template.replace("/*VIS_NETWORK*/", vis).replace("/*REPORT_DATA*/", payload)


def _page_data(data: ReportData) -> dict[str, Any]:
    rings = data.rings.sort(["flagged", "score", "size"], descending=[True, True, True])
    overview_columns = [
        c
        for c in (
            "ring_id",
            "score",
            "size",
            "flagged",
            "background_percentile",
            "alike",
            "org_id",
            "requests",
            "change",
            "previous_size",
        )
        if c in rings.columns
    ]
    shown = rings.head(MAX_RINGS)
    # each table sorted and cut by ring once, then handed out as rows: not a query per card
    ids = shown.select("ring_id")
    members = data.members.join(ids, on="ring_id").sort(
        "ring_id", "attachment", "account_id", descending=[False, True, False]
    )
    evidence = data.evidence.join(ids, on="ring_id").sort(
        "ring_id", "value_total", "entity", descending=[False, True, False]
    )
    by_ring = {
        "members": _rows_by_ring(members, MAX_DRAWN_MEMBERS),
        "evidence": _rows_by_ring(evidence, max(MAX_DRAWN_ENTITIES, MAX_TABLE_ROWS)),
        "templates": _rows_by_ring(_ring_templates(evidence, data.templates), None),
        "timeline": _rows_by_ring(
            data.activity.join(members.select("account_id", "ring_id"), on="account_id")
            .group_by("ring_id", "day", "kind")
            .agg(pl.col("requests").sum())
            .sort("day", "kind")  # (a day's kinds in one order: the page is the same run after run)
            .select("ring_id", "day", "kind", "requests"),
            None,
        ),
        "members_total": dict(members.group_by("ring_id").len().iter_rows()),
        "evidence_total": dict(evidence.group_by("ring_id").len().iter_rows()),
    }
    return {
        "run": {
            "run_id": data.summary.get("run_id"),
            "started_at": data.summary.get("started_at"),
            "input": data.summary.get("input_dir"),
            "rings": data.summary.get("rings", {}),
        },
        "overview": rings.select(overview_columns).to_dicts(),
        "cards_shown": shown.height,
        "risk_features": [f for f in RISK_FEATURES if f"risk_{f}" in rings.columns],
        "cards": [_card(ring, by_ring) for ring in shown.iter_rows(named=True)],
    }


def _rows_by_ring(frame: pl.DataFrame, first: int | None) -> dict[str, list[dict[str, Any]]]:
    """Per ring id, its rows in the frame's order (the first ``first`` of them), as dicts without ``ring_id``."""
    if first is not None:
        frame = frame.group_by("ring_id", maintain_order=True).head(first)
    rows: dict[str, list[dict[str, Any]]] = {}
    for row in frame.to_dicts():
        rows.setdefault(row.pop("ring_id"), []).append(row)
    return rows


def _ring_templates(evidence: pl.DataFrame, templates: pl.DataFrame) -> pl.DataFrame:
    """Per ring, the first five of ``templates`` (in their order) that its evidence names."""
    named = evidence.filter(pl.col("type") == "PromptTemplate").select(
        "ring_id", pl.col("entity").str.split_exact("|", 1).struct.field("field_1").alias("template_id")
    )
    return (
        templates.with_row_index("_row")
        .join(named, on="template_id")
        .sort("ring_id", "_row")
        .group_by("ring_id", maintain_order=True)
        .head(5)
        .drop("_row")
        .select("ring_id", "text", "example", "requests", "accounts")
    )


def _card(ring: dict[str, Any], by_ring: dict[str, dict]) -> dict[str, Any]:
    ring_id = ring["ring_id"]
    drawn_members = by_ring["members"].get(ring_id, [])
    evidence = by_ring["evidence"].get(ring_id, [])
    drawn_ids = {m["account_id"] for m in drawn_members}
    drawn_entities = evidence[:MAX_DRAWN_ENTITIES]
    edges = [
        {"from": member, "to": row["entity"]}
        for row in drawn_entities
        for member in (row["shared_by"] or [])
        if member in drawn_ids
    ]
    return {
        "ring": {k: v for k, v in ring.items() if k != "evidence"},
        "summary": ring.get("evidence", ""),
        "members_total": by_ring["members_total"].get(ring_id, 0),
        "entities_total": by_ring["evidence_total"].get(ring_id, 0),
        "nodes": (
            [
                {"id": m["account_id"], "group": "Account", "label": m["account_id"], "attachment": m["attachment"]}
                for m in drawn_members
            ]
            + [
                {"id": e["entity"], "group": e["type"], "label": e["label"], "members": e["members"]}
                for e in drawn_entities
            ]
        ),
        "edges": edges,
        "evidence": [
            {k: e[k] for k in ("type", "label", "members", "degree", "value")} for e in evidence[:MAX_TABLE_ROWS]
        ],
        "templates": by_ring["templates"].get(ring_id, []),
        "timeline": by_ring["timeline"].get(ring_id, []),
        "risk": {f: ring.get(f"risk_{f}") for f in RISK_FEATURES if f"risk_{f}" in ring},
    }
