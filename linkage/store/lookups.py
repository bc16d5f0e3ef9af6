"""The investigators' named queries without a server: the same lookups as ``cypher/queries/*.cypher``,
over the Parquet graph a run writes with ``--graph`` (:class:`~linkage.store.embedded.EmbeddedStore`).

One polars function per named query, each giving the columns and rows, in the order, its Cypher
twin gives on Neo4j loaded from the same run (tested query by query). Parameters arrive typed by
the query's header (:meth:`linkage.cypher.NamedQuery.bind`) and are compared as values, never
spliced into text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from ..errors import ConfigError, InputError
from ..graph import Graph
from .embedded import EmbeddedStore

# relationship types from an account, and the label of what they point at (as Neo4j's labels(e)[0])
_ACCOUNT_RELS = {
    "PAID_WITH": "PaymentInstrument",
    "USED_IP": "IP",
    "SIGNED_UP_FROM": "IP",
    "USED_DEVICE": "Device",
    "SENT_TEMPLATE": "PromptTemplate",
    "IN_ORG": "Org",
    "HAS_EMAIL_DOMAIN": "EmailDomain",
    "USED_MODEL": "Model",
}
_NEIGHBOURHOOD_RELS = ("PAID_WITH", "USED_IP", "USED_DEVICE", "SENT_TEMPLATE", "IN_ORG")
_INFRASTRUCTURE = ("PaymentInstrument", "IP", "Subnet", "Device", "PromptTemplate")


class ParquetGraph:
    """A run's graph directory (``OUT/graph``): nodes, relationships and the rings written with them."""

    def __init__(self, directory: str | Path) -> None:
        directory = Path(directory)
        if not (directory / "nodes").is_dir() or not (directory / "rings" / "rings.parquet").exists():
            raise InputError(f"{directory}: not a graph directory (write one with `linkage run … --graph`)")
        self.graph: Graph = EmbeddedStore(directory).read_graph()
        run_id = json.loads((directory / "rings" / "run.json").read_text()).get("run_id")
        self.rings = pl.read_parquet(directory / "rings" / "rings.parquet").with_columns(pl.lit(run_id).alias("run_id"))
        self.members = pl.read_parquet(directory / "rings" / "ring_members.parquet")

    # ------------------------------------------------------------ helpers
    def touches(self, types: tuple[str, ...] = tuple(_ACCOUNT_RELS)) -> pl.DataFrame:
        """account_id, relationship, label, key, count: every relationship from an account."""
        return pl.concat(
            [
                self.graph.rels[t].select(
                    pl.col("src").alias("account_id"),
                    pl.lit(t).alias("relationship"),
                    pl.lit(_ACCOUNT_RELS[t]).alias("label"),
                    pl.col("dst").cast(pl.Utf8).alias("key"),
                    "count",
                )
                for t in types
            ]
        )

    def ring_of(self) -> pl.DataFrame:
        return self.members.select("account_id", "ring_id").join(
            self.rings.select("ring_id", "flagged"), on="ring_id", how="left"
        )


def _rows(frame: pl.DataFrame) -> tuple[list[str], list[list[Any]]]:
    return frame.columns, [list(row) for row in frame.iter_rows()]


# ---------------------------------------------------------------- the named queries
def flagged_rings(g: ParquetGraph, limit: int) -> pl.DataFrame:
    # (rings written before the content reading have no such column: null, as Neo4j answers)
    reading = pl.col("content_reading") if "content_reading" in g.rings.columns else pl.lit(None, pl.Boolean)
    return (
        g.rings.filter(pl.col("flagged"))
        .select("ring_id", "score", "size", reading.alias("content_reading"), "evidence", "run_id")
        .sort(["score", "ring_id"], descending=[True, False])
        .head(limit)
    )


def ring_members(g: ParquetGraph, ring_id: str) -> pl.DataFrame:
    ring = g.rings.filter(pl.col("ring_id") == ring_id).select(
        "ring_id", pl.col("score").alias("ring_score"), "flagged", "evidence"
    )
    accounts = g.graph.nodes["Account"].select("account_id", "org_id", "requests", "created_at")
    return (
        g.members.join(ring, on="ring_id")
        .join(accounts, on="account_id", how="left")
        .select(
            "ring_id",
            "ring_score",
            "flagged",
            "account_id",
            "account_score",
            "attachment",
            "org_id",
            "requests",
            "created_at",
            "evidence",
        )
        .sort(["account_score", "account_id"], descending=[True, False])
    )


def ring_templates(g: ParquetGraph, ring_id: str, limit: int) -> pl.DataFrame:
    members = g.members.filter(pl.col("ring_id") == ring_id).select("account_id")
    sent = g.graph.rels["SENT_TEMPLATE"].join(members, left_on="src", right_on="account_id")
    used = sent.group_by(pl.col("dst").alias("template_id")).agg(
        pl.col("src").n_unique().cast(pl.Int64).alias("members"), pl.col("count").sum().alias("ring_requests")
    )
    templates = g.graph.nodes["PromptTemplate"].select(
        "template_id",
        pl.col("requests").alias("all_requests"),
        pl.col("accounts").alias("all_accounts"),
        "repeated_by",
        pl.col("text").alias("scaffold"),
        "example",
    )
    return (
        used.join(templates, on="template_id")
        .select(
            "template_id",
            "members",
            "ring_requests",
            "all_requests",
            "all_accounts",
            "repeated_by",
            "scaffold",
            "example",
        )
        .sort(["ring_requests", "template_id"], descending=[True, False])
        .head(limit)
    )


def rings_new_or_grown(g: ParquetGraph, min_growth: int) -> pl.DataFrame:
    rings = g.rings
    if "change" not in rings.columns:
        rings = rings.with_columns(pl.lit(None, pl.Utf8).alias("change"), pl.lit(None, pl.Int64).alias("previous_size"))
    growth = pl.coalesce(pl.col("size") - pl.col("previous_size"), pl.col("size"))
    return (
        rings.filter(pl.col("change").is_in(["new", "grown", "merged"]) & (growth >= min_growth))
        .with_columns(growth.alias("_growth"))
        .sort(["_growth", "ring_id"], descending=[True, False])
        .select("ring_id", "change", "previous_size", "size", "score", "flagged", "run_id")
    )


def rings_sharing_infrastructure(g: ParquetGraph, min_shared: int, limit: int) -> pl.DataFrame:
    touched = (
        g.touches()
        .filter(pl.col("label").is_in(_INFRASTRUCTURE))
        .join(g.members.select("account_id", "ring_id"), on="account_id")
        .select("ring_id", (pl.col("label") + ":" + pl.col("key")).alias("item"))
        .unique()
    )
    pairs = (
        touched.join(touched, on="item", suffix="_b")
        .filter(pl.col("ring_id") < pl.col("ring_id_b"))
        .group_by(pl.col("ring_id").alias("ring_a"), pl.col("ring_id_b").alias("ring_b"))
        .agg(pl.col("item").unique().sort().alias("shared"))
        .filter(pl.col("shared").list.len() >= min_shared)
    )
    flags = g.rings.select("ring_id", "flagged")
    return (
        pairs.join(flags.rename({"ring_id": "ring_a", "flagged": "flagged_a"}), on="ring_a")
        .join(flags.rename({"ring_id": "ring_b", "flagged": "flagged_b"}), on="ring_b")
        .select(
            "ring_a",
            "ring_b",
            "flagged_a",
            "flagged_b",
            pl.col("shared").list.len().cast(pl.Int64).alias("shared_entities"),
            pl.col("shared").list.head(20).alias("examples"),
        )
        .sort(["shared_entities", "ring_a", "ring_b"], descending=[True, False, False])
        .head(limit)
    )


def why_linked(g: ParquetGraph, a: str, b: str, limit: int) -> pl.DataFrame:
    touches = g.touches()
    uses = lambda account, name: (  # noqa: E731 — one line per side
        touches.filter(pl.col("account_id") == account).group_by("label", "key").agg(pl.col("count").sum().alias(name))
    )
    shared_by = touches.group_by("label", "key").agg(pl.col("account_id").n_unique().cast(pl.Int64).alias("shared_by"))
    return (
        uses(a, "uses_a")
        .join(uses(b, "uses_b"), on=["label", "key"])
        .join(shared_by, on=["label", "key"])
        .select(pl.col("label").alias("kind"), pl.col("key").alias("entity"), "uses_a", "uses_b", "shared_by")
        .sort("shared_by", "kind", "entity")
        .head(limit)
    )


@dataclass(frozen=True)
class _Lookup:
    """How one evidence kind is found: the node table and the column matched against the value, the
    column reported as the entity, the node key the accounts' relationships point at, and which
    relationships count (as ``accounts_by_entity.cypher`` reads each kind)."""

    kind: str
    label: str
    match: str
    entity: str
    key: str
    rels: tuple[str, ...]
    lower: bool = False  # the value is compared lower-cased (domains, mailboxes)


_LOOKUPS = (
    _Lookup(
        "PaymentInstrument", "PaymentInstrument", "instrument_id", "instrument_id", "instrument_id", ("PAID_WITH",)
    ),
    _Lookup("Bin", "PaymentInstrument", "bin", "bin", "instrument_id", ("PAID_WITH",)),
    _Lookup("IP", "IP", "ip", "ip", "ip", ("USED_IP", "SIGNED_UP_FROM")),
    _Lookup("Subnet", "IP", "subnet", "subnet", "ip", ("USED_IP", "SIGNED_UP_FROM")),
    _Lookup("ASN", "IP", "asn", "asn", "ip", ("USED_IP",)),
    _Lookup("Device", "Device", "device_id", "device_id", "device_id", ("USED_DEVICE",)),
    _Lookup("Org", "Org", "org_id", "org_id", "org_id", ("IN_ORG",)),
    _Lookup("EmailDomain", "EmailDomain", "domain", "domain", "domain", ("HAS_EMAIL_DOMAIN",), lower=True),
    _Lookup("Model", "Model", "model", "model", "model", ("USED_MODEL",)),
)


def accounts_by_entity(g: ParquetGraph, value: str, kind: str, limit: int) -> pl.DataFrame:
    touches = g.touches()
    columns = ["kind", "entity", "account_id", "relationship", "uses"]
    found: list[pl.DataFrame] = []
    for lookup in _LOOKUPS + (
        _Lookup("PromptTemplate", "PromptTemplate", "", "template_id", "template_id", ("SENT_TEMPLATE",)),
    ):
        if kind not in ("any", lookup.kind):
            continue
        nodes = g.graph.nodes[lookup.label]
        if lookup.kind == "PromptTemplate":  # by id, or by words of its scaffold text
            hit = (pl.col("template_id") == value) | pl.col("text").str.contains(value.lower(), literal=True)
        else:
            hit = pl.col(lookup.match).cast(pl.Utf8) == (value.lower() if lookup.lower else value)
        keys = nodes.filter(hit).select(
            pl.col(lookup.key).cast(pl.Utf8).alias("key"), pl.col(lookup.entity).cast(pl.Utf8).alias("entity")
        )
        rows = touches.filter((pl.col("label") == lookup.label) & pl.col("relationship").is_in(lookup.rels))
        found.append(
            rows.join(keys, on="key").select(
                pl.lit(lookup.kind).alias("kind"),
                "entity",
                "account_id",
                "relationship",
                pl.col("count").cast(pl.Int64).alias("uses"),
            )
        )
    if kind in ("any", "Email"):  # a mailbox is a property of the account itself
        found.append(
            g.graph.nodes["Account"]
            .filter(pl.col("email") == value.lower())
            .select(
                pl.lit("Email").alias("kind"),
                pl.col("email").alias("entity"),
                "account_id",
                pl.lit(None, pl.Utf8).alias("relationship"),
                pl.lit(None, pl.Int64).alias("uses"),
            )
        )
    frame = pl.concat(found) if found else pl.DataFrame(schema=dict.fromkeys(columns, pl.Utf8) | {"uses": pl.Int64})
    return (
        frame.join(g.ring_of(), on="account_id", how="left")
        .unique()
        .sort(["kind", "entity", "account_id", "relationship", "uses"], nulls_last=True)
        .head(limit)
    )


def neighbourhood(
    g: ParquetGraph, account_id: str, depth: int, max_shared: int, frontier: int, limit: int
) -> pl.DataFrame:
    touches = g.touches(_NEIGHBOURHOOD_RELS).select("account_id", "label", "key")
    degree = touches.group_by("label", "key").agg(pl.len().alias("degree"))
    followed = touches.join(degree.filter(pl.col("degree") <= max_shared), on=["label", "key"]).select(
        "account_id", "label", "key"
    )
    known = {account_id}
    hops: list[pl.DataFrame] = []
    current = [account_id] if g.graph.nodes["Account"].filter(pl.col("account_id") == account_id).height else []
    for hop in range(1, 4):
        if hop > depth or not current:
            break
        entities = followed.filter(pl.col("account_id").is_in(current)).select("label", "key").unique()
        reached = (
            followed.join(entities, on=["label", "key"])
            .select("account_id")
            .unique()
            .filter(~pl.col("account_id").is_in(list(known)))
            .sort("account_id")
            .head(frontier)
        )
        hops.append(reached.with_columns(pl.lit(hop, pl.Int64).alias("hops")))
        current = reached["account_id"].to_list()
        known.update(current)
    frame = pl.concat(hops) if hops else pl.DataFrame(schema={"account_id": pl.Utf8, "hops": pl.Int64})
    return (
        frame.join(g.ring_of(), on="account_id", how="left")
        .select("account_id", "hops", "ring_id", "flagged")
        .sort("hops", "account_id")
        .head(limit)
    )


LOOKUPS: dict[str, Callable[..., pl.DataFrame]] = {
    f.__name__: f
    for f in (
        flagged_rings,
        ring_members,
        ring_templates,
        rings_new_or_grown,
        rings_sharing_infrastructure,
        why_linked,
        accounts_by_entity,
        neighbourhood,
    )
}


def run_lookup(directory: str | Path, name: str, params: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """A named query over a graph directory: (column names, rows), as Neo4j would give them."""
    if name not in LOOKUPS:
        raise ConfigError(f"query '{name}' has no files-only form (known: {', '.join(sorted(LOOKUPS))})")
    return _rows(LOOKUPS[name](ParquetGraph(directory), **params))
