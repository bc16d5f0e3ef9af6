"""Why an account is in its ring, and what links two accounts: ``linkage explain``.

Detection keeps, for every link it used, each step of its weight (:data:`linkage.detect.PAIR_SCHEMA`)
and, for every ring member, the value of each entity it shares (``memberships.parquet``). This
module reads those files back; it never runs detection again. A pair's waterfall attributes the
link's weight to the entities behind it, step by step as :func:`linkage.detect._weigh_pairs`
combines them — the strongest entity of a type in full, the others by the within-type share, less
what the two accounts' numbers of such entities make expected by chance, families of correlated
types, lockstep timing, the declared-org discount and Fisher's combination — and each step ends
on the figure detection recorded (checked: a waterfall that does not meet it is an error).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from .errors import InputError
from .graph import in_order
from .settings import DetectSettings

LINKS_FILE, MEMBERSHIPS_FILE = "links.parquet", "memberships.parquet"
_TOLERANCE = 1e-6


@dataclass
class Step:
    """One bar of a waterfall: what it is, and what it adds (nats; negative takes away)."""

    kind: str  # entity | chance | family | timing | org | fisher
    what: str
    nats: float
    entity: str | None = None


@dataclass
class PairExplanation:
    a: str
    b: str
    linked: bool
    weight: float  # the weight detection used (0 when the two are not linked)
    steps: list[Step] = field(default_factory=list)
    shared: list[dict[str, Any]] = field(default_factory=list)  # every entity both hold, with its value


@dataclass
class AccountExplanation:
    account_id: str
    ring_id: str | None
    attachment: float | None
    strength: float  # summed weight of its links inside its ring
    ring_median_strength: float | None
    links: list[dict[str, Any]] = field(default_factory=list)  # partner, weight, top entity


@dataclass(frozen=True)
class LinkTables:
    """Every kept link with its two accounts' ids and every step of its weight, in (a, b) order, and
    every membership by account and entity: what :func:`explanation_tables` narrows to a run's rings.
    Needing no ring, they are drawn while Leiden runs (:func:`link_tables`)."""

    links: pl.DataFrame
    memberships: pl.DataFrame


def link_tables(accounts: pl.DataFrame, pairs: pl.DataFrame, memberships: pl.DataFrame) -> LinkTables:
    """:class:`LinkTables` of kept links (``pairs``, as detection keeps them) and ``memberships``;
    ``accounts``: the projection's ``idx, account_id``. At incident scale 4.8 M links and 6.3 M
    memberships: about a second of work, which a large run does on the core that Leiden's worker
    process leaves idle."""
    if not in_order(pairs, "a", "b"):  # (the projection's pairs come in (a, b) order: 0.3 s of 4.8 M rows spared)
        pairs = pairs.sort("a", "b")
    # idx is the account's rank in account_id order: sorting the indices sorts the ids, at a fraction
    # of a string sort's cost
    account_of = accounts.select("idx", "account_id").sort("idx")["account_id"]
    links = pairs.select(
        account_of.gather(pairs["a"]).alias("account_a"), account_of.gather(pairs["b"]).alias("account_b"), pl.all()
    )
    kept = memberships.select("idx", "account_id", "entity", "entity_key", "type", "value", "degree", "held")
    return LinkTables(links, by_account_and_entity(kept))


def explanation_tables(
    detection: Any, members: pl.DataFrame, tables: LinkTables | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(links, memberships) to write beside a run's rings: the kept links touching a ring member,
    with account ids and every step of their weight; the memberships of the accounts they join.
    ``tables``: :func:`link_tables` of the whole detection, when already drawn; else they are drawn
    for these members alone."""
    in_rings = (
        members.select("account_id").unique().join(detection.accounts.select("idx", "account_id"), on="account_id")
    )
    ringed = in_rings["idx"].cast(pl.Int64).implode()
    touching = pl.col("a").is_in(ringed) | pl.col("b").is_in(ringed)

    def ends_of(links: pl.DataFrame) -> pl.Expr:  # the members and both ends of their links
        ends = pl.concat([in_rings["idx"].cast(pl.Int64), links["a"], links["b"]]).unique()
        return pl.col("idx").cast(pl.Int64).is_in(ends.implode())

    if tables is None:  # drawn for these members alone
        pairs = detection.pairs.filter(touching)
        drawn = link_tables(detection.accounts, pairs, detection.memberships.filter(ends_of(pairs)))
        links, kept = drawn.links, drawn.memberships
    else:  # narrowed: a filter keeps the order, so the rows are those drawn for these members alone
        links = tables.links.filter(touching)
        kept = tables.memberships.filter(ends_of(links))
    # (rounded here, not when drawn: the pairs' own columns are then shared, not copied, while
    # scoring runs, at the run's peak memory)
    return links.with_columns(pl.col(pl.Float64).round(9)), kept


def by_account_and_entity(memberships: pl.DataFrame) -> pl.DataFrame:
    """Membership rows sorted by account index, then entity text, without ``entity_key``. Each entity's
    text is ranked once, and the rows are sorted on (index, rank) as one integer: at incident scale
    360k texts instead of 5.7 M rows' (0.8-0.9 s against 1.4-1.7 s)."""
    ranks = (
        memberships.select("entity_key", "entity")
        .unique("entity_key")
        .select("entity_key", pl.col("entity").rank("ordinal").cast(pl.UInt64).alias("_rank"))
    )
    return (
        memberships.join(ranks, on="entity_key", how="left", maintain_order="left")
        .sort(pl.col("idx").cast(pl.UInt64) * (1 << 32) + pl.col("_rank"))
        .drop("entity_key", "_rank")
    )


@dataclass
class RunTables:
    """A run's rings, links and memberships, as ``linkage explain`` reads them: from a run directory
    (:meth:`from_files`) or from Neo4j (:meth:`from_store`, the members of flagged rings)."""

    source: str
    links: pl.DataFrame
    memberships: pl.DataFrame
    members: pl.DataFrame
    labels: pl.DataFrame  # entity, label
    settings: DetectSettings

    @classmethod
    def from_files(cls, out_dir: str | Path) -> RunTables:
        out_dir = Path(out_dir)
        needed = (LINKS_FILE, MEMBERSHIPS_FILE, "ring_members.parquet", "ring_evidence.parquet", "run.json")
        missing = [name for name in needed if not (out_dir / name).exists()]
        if missing:
            raise InputError(f"{out_dir}: not a complete linkage run ({', '.join(missing)} missing)")
        parameters = json.loads((out_dir / "run.json").read_text())["parameters"]["detect"]
        return cls(
            str(out_dir),
            pl.read_parquet(out_dir / LINKS_FILE),
            pl.read_parquet(out_dir / MEMBERSHIPS_FILE),
            pl.read_parquet(out_dir / "ring_members.parquet"),
            pl.read_parquet(out_dir / "ring_evidence.parquet").select("entity", "label").unique("entity"),
            DetectSettings.model_validate(parameters),
        )

    @classmethod
    def from_store(cls, store: Any) -> RunTables:
        tables = store.read_explanation()
        if not tables["detect_settings"]:
            raise InputError("neo4j: no explanation stored (load a run with `linkage run … --neo4j`)")
        links = (
            pl.DataFrame(tables["links"], schema=_LINK_SCHEMA)
            if tables["links"]
            else (pl.DataFrame(schema=_LINK_SCHEMA))
        )
        holdings = (
            pl.DataFrame(tables["holdings"], schema=_HOLDING_SCHEMA)
            if tables["holdings"]
            else (pl.DataFrame(schema=_HOLDING_SCHEMA))
        )
        members = (
            pl.DataFrame(tables["members"], schema=_MEMBER_SCHEMA)
            if tables["members"]
            else (pl.DataFrame(schema=_MEMBER_SCHEMA))
        )
        return cls(
            "neo4j",
            links,
            holdings.drop("label"),
            members,
            holdings.select("entity", "label").unique("entity"),
            DetectSettings.model_validate_json(tables["detect_settings"]),
        )

    @property
    def out_dir(self) -> str:
        return self.source

    def label(self, entity: str) -> str:
        found = self.labels.filter(pl.col("entity") == entity)["label"]
        return found[0] if found.len() and found[0] is not None else entity

    def link(self, a: str, b: str) -> dict[str, Any] | None:
        first, second = sorted((a, b))
        row = self.links.filter(
            ((pl.col("account_a") == first) & (pl.col("account_b") == second))
            | ((pl.col("account_a") == second) & (pl.col("account_b") == first))
        )
        return row.row(0, named=True) if row.height else None


_LINK_SCHEMA = {
    "account_a": pl.Utf8,
    "account_b": pl.Utf8,
    "weight": pl.Float64,
    "activity": pl.Float64,
    "days": pl.Float64,
    "shared": pl.Float64,
    "discount": pl.Float64,
    "surprisal": pl.Float64,
    "families": pl.Int64,
}
_HOLDING_SCHEMA = {
    "idx": pl.Int64,
    "account_id": pl.Utf8,
    "entity": pl.Utf8,
    "type": pl.Utf8,
    "value": pl.Float64,
    "degree": pl.Int64,
    "held": pl.Int64,
    "label": pl.Utf8,
}
_MEMBER_SCHEMA = {
    "ring_id": pl.Utf8,
    "account_id": pl.Utf8,
    "account_score": pl.Float64,
    "attachment": pl.Float64,
    "strength": pl.Float64,
}


def _tables(source: str | Path | RunTables) -> RunTables:
    return source if isinstance(source, RunTables) else RunTables.from_files(source)


def explanation_for_store(
    detection: Any,
    members: pl.DataFrame,
    rings: pl.DataFrame,
    evidence: pl.DataFrame,
    tables: LinkTables | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """What the Neo4j store keeps for `linkage explain --neo4j`: the links and values of the members
    of flagged rings (all of them would be millions of rows at incident scale), entity values labelled.
    ``tables``: :func:`link_tables` of the detection, when already drawn."""
    flagged = members.join(rings.filter(pl.col("flagged")).select("ring_id"), on="ring_id")
    links, kept = explanation_tables(detection, flagged, tables)
    labels = evidence.select("entity", "label").unique("entity")
    return links, kept.join(labels, on="entity", how="left")


def explain_account(out_dir: str | Path | RunTables, account_id: str) -> AccountExplanation:
    """An account's ring, its attachment, and every link inside the ring that holds it there (they sum
    to its strength; attachment = strength / the ring's median strength, at most 1)."""
    run = _tables(out_dir)
    mine = run.members.filter(pl.col("account_id") == account_id)
    if mine.height == 0:
        return AccountExplanation(account_id, None, None, 0.0, None)
    ring_id = mine["ring_id"][0]
    ring = run.members.filter(pl.col("ring_id") == ring_id)
    mates = set(ring["account_id"].to_list()) - {account_id}
    links = run.links.filter(
        ((pl.col("account_a") == account_id) & pl.col("account_b").is_in(mates))
        | ((pl.col("account_b") == account_id) & pl.col("account_a").is_in(mates))
    ).with_columns(
        pl.when(pl.col("account_a") == account_id)
        .then(pl.col("account_b"))
        .otherwise(pl.col("account_a"))
        .alias("partner")
    )
    rows = []
    for link in links.sort("weight", "partner", descending=[True, False]).iter_rows(named=True):
        top = _shared_entities(run, account_id, link["partner"])
        rows.append(
            {
                "partner": link["partner"],
                "weight": link["weight"],
                "strongest": run.label(top[0]["entity"]) if top else "lockstep timing",
            }
        )
    return AccountExplanation(
        account_id=account_id,
        ring_id=ring_id,
        attachment=float(mine["attachment"][0]),
        strength=float(sum(r["weight"] for r in rows)),
        ring_median_strength=float(ring.select(pl.col("strength").median()).item())
        if "strength" in ring.columns
        else None,
        links=rows,
    )


def explain_pair(out_dir: str | Path | RunTables, a: str, b: str) -> PairExplanation:
    """The waterfall of the link between ``a`` and ``b``: each shared entity's contribution and what the
    null model, correlated families, timing, the org discount and Fisher's combination did to it."""
    run = _tables(out_dir)
    shared = _shared_entities(run, a, b)
    link = run.link(a, b)
    explanation = PairExplanation(a, b, link is not None, link["weight"] if link else 0.0, shared=shared)
    if link is None:
        return explanation
    steps, shared_total = _shared_steps(run, shared, a, b)
    if abs(shared_total - link["shared"]) > _TOLERANCE * max(1.0, link["shared"]):
        raise InputError(
            f"{run.out_dir}: the memberships give {shared_total:.6f} nats for {a}–{b}, detection used "
            f"{link['shared']:.6f}: the files are not of one run"
        )
    hours = link["activity"] - link["days"]
    if hours > 0:
        steps.append(Step("timing", "lockstep: active in the same hours beyond chance", hours))
    if link["days"] > 0:
        steps.append(Step("days", "alive in the same days, as few of the run's accounts were", link["days"]))
    before_org = link["shared"] + link["activity"]
    if link["discount"] < 1:
        steps.append(
            Step("org", "seats of one declared org (detect.org_discount)", before_org * (link["discount"] - 1))
        )
    steps.append(
        Step(
            "fisher",
            f"combined over {link['families']} independent families (Fisher's method)",
            link["weight"] - link["surprisal"],
        )
    )
    explanation.steps = steps
    return explanation


def _shared_entities(run: RunTables, a: str, b: str) -> list[dict[str, Any]]:
    """Entities both accounts hold, valued as detection valued them (the lower of the two holders'
    values: they differ only for an owned build or scaffold, worth the most between two of its workers)."""
    both = run.memberships.filter(pl.col("account_id").is_in([a, b]))
    pairs = both.filter(pl.col("account_id") == a).join(
        both.filter(pl.col("account_id") == b).select(
            "entity", pl.col("idx").alias("idx_b"), pl.col("value").alias("value_b")
        ),
        on="entity",
    )
    valued = pairs.with_columns(pl.min_horizontal("value", "value_b").alias("value"))
    return (
        valued.sort("value", "entity", descending=[True, False]).select("entity", "type", "value", "degree").to_dicts()
    )


def _held(run: RunTables, account: str) -> dict[str, int]:
    rows = run.memberships.filter(pl.col("account_id") == account).unique("type")
    return dict(zip(rows["type"].to_list(), rows["held"].to_list()))


def _shared_steps(run: RunTables, shared: list[dict[str, Any]], a: str, b: str) -> tuple[list[Step], float]:
    """Entity, chance and family steps; their sum is what detection recorded as ``shared``."""
    extra = run.settings.within_type_extra
    family_of = {t: f for f, members in run.settings.type_families.items() for t in members}
    held_a, held_b = _held(run, a), _held(run, b)
    steps: list[Step] = []
    by_family: dict[str, list[tuple[str, float]]] = {}
    for type_name in sorted({row["type"] for row in shared}):
        rows = [row for row in shared if row["type"] == type_name]
        strongest, total = rows[0]["value"], sum(r["value"] for r in rows)
        others = total - strongest
        added = extra * min(others, strongest)
        type_steps = [Step("entity", run.label(rows[0]["entity"]), strongest, rows[0]["entity"])]
        for row in rows[1:]:
            type_steps.append(Step("entity", run.label(row["entity"]), added * row["value"] / others, row["entity"]))
        expected = math.log(max(held_a.get(type_name, 1), 1)) + math.log(max(held_b.get(type_name, 1), 1))
        if expected > 0:
            type_steps.append(
                Step(
                    "chance",
                    f"expected of two accounts holding {held_a.get(type_name, 1)} and {held_b.get(type_name, 1)} "
                    f"{type_name} entities",
                    -expected,
                )
            )
        value = strongest + added - expected
        if value <= 0:
            type_steps.append(Step("chance", f"{type_name}: no more than chance, not counted", -value))
        else:
            by_family.setdefault(family_of.get(type_name, type_name), []).append((type_name, value))
        steps.extend(type_steps)
    shared_total = 0.0
    for family, values in sorted(by_family.items()):
        strongest = max(v for _, v in values)
        total = sum(v for _, v in values)
        family_value = strongest + extra * min(total - strongest, strongest)
        if len(values) > 1:
            steps.append(
                Step("family", f"{family}: {', '.join(t for t, _ in values)} are correlated", family_value - total)
            )
        shared_total += family_value
    return steps, shared_total


def format_pair(explanation: PairExplanation) -> str:
    if not explanation.linked:
        lines = [f"{explanation.a} and {explanation.b} are not linked (no link beyond chance)."]
        if explanation.shared:
            lines.append(
                "They share: " + "; ".join(f"{r['entity']} ({r['value']:.2f} nats)" for r in explanation.shared)
            )
        return "\n".join(lines)
    what = [_short(step.what) for step in explanation.steps]
    width = max(len(text) for text in what)
    lines = [f"link {explanation.a} — {explanation.b}: weight {explanation.weight:.3f} nats", ""]
    running = 0.0
    for step, text in zip(explanation.steps, what):
        running += step.nats
        lines.append(f"  {text:<{width}}  {step.nats:+9.3f}  = {running:9.3f}")
    return "\n".join(lines)


def _short(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_account(explanation: AccountExplanation) -> str:
    if explanation.ring_id is None:
        return f"{explanation.account_id} is in no ring."
    lines = [
        f"{explanation.account_id} in ring {explanation.ring_id}: attachment {explanation.attachment:.3f} "
        f"(strength {explanation.strength:.3f} nats over {len(explanation.links)} links"
        + (f", ring median {explanation.ring_median_strength:.3f})" if explanation.ring_median_strength else ")"),
        "",
    ]
    for link in explanation.links:
        lines.append(f"  {link['partner']:<24} {link['weight']:9.3f}  strongest: {link['strongest']}")
    return "\n".join(lines)
