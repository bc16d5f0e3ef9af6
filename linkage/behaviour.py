"""How alike the members of a ring act, measured against two unrelated customers of the same run.

An operation cannot make its accounts act like unrelated customers without losing what it came
for: they run one scaffold set, on the same models, through the same client, for answers of the
same length. Unrelated customers who merely share infrastructure (apps on one serverless platform's
egress, subscribers behind one carrier NAT, a campus) act no more alike than any two customers.

Each account's behaviour is a set of *aspects*, each a unit vector:

- the mix of models it called, of prompt templates it sent and of clients it used (request counts);
- which fifth of this run's accounts it falls in by input tokens per request, output tokens per
  request and share of reasoning-style prompts (ties share a fifth).

Two accounts' similarity is the mean of their aspects' cosines (an aspect one of them lacks counts
0; an aspect nobody has in this run is left out). A ring's similarity is the mean over its
member pairs. :func:`alike` puts it on the run's own scale: 0 is the mean similarity of two of the
run's accounts, 1 is identical behaviour. Both means are exact sums (``‖Σu‖² − Σ‖u‖²`` over
``k(k−1)`` pairs), so nothing is sampled.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import polars as pl

from .graph import Graph

_MIX_ASPECTS = {"model": "USED_MODEL", "template": "SENT_TEMPLATE", "client": "USED_DEVICE"}
_LEVELS = 5  # fifths of the run's accounts: coarse enough that one operation's accounts share one
_PART_SCHEMA = {"account_id": pl.Utf8, "aspect": pl.Utf8, "key": pl.Utf8, "u": pl.Float64}
_VECTORS = {"account": pl.UInt32, "feature": pl.UInt64, "u": pl.Float64}
_FEATURE_SEED = 29


@dataclass
class Profiles:
    """Every account's behaviour (``account, feature, u``: its unit vector in each aspect, divided by
    √(aspects in the run); ``account`` is the account's position in ``index``, ``feature`` a hash of
    the (aspect, key) pair) and ``baseline``, the mean similarity of two of the run's
    accounts (None when the run has no behaviour to compare: no request log)."""

    vectors: pl.DataFrame
    baseline: float | None
    index: pl.Enum | None = None  # the account ids, in the order ``account`` numbers them
    # rings already measured, by ring id (ids are content hashes of the members, so a ring that
    # comes back unchanged in a later round of scoring is not measured again)
    known: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema={"ring_id": pl.Utf8, "alike": pl.Float64}))
    # rings already read against their crowd (:func:`alike_against_crowd`), likewise
    crowd_known: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema={"ring_id": pl.Utf8, "crowd_alike": pl.Float64})
    )


def profiles(graph: Graph, without: Collection[str] = ()) -> Profiles:
    """The behaviour profiles of the graph's accounts (see the module docstring), leaving out the
    aspects named in ``without`` (``"client"`` to ask how alike accounts act beyond the client they use)."""
    accounts = graph.nodes["Account"]
    parts = [
        _mix(graph.rels[rel], aspect)
        for aspect, rel in _MIX_ASPECTS.items()
        if rel in graph.rels and aspect not in without
    ]
    active = accounts.filter(pl.col("requests") > 0)
    per_request = pl.col("requests").cast(pl.Float64)
    levels = {
        "input_length": (["input_tokens"], pl.col("input_tokens").cast(pl.Float64) / per_request),
        "output_length": (["output_tokens"], pl.col("output_tokens").cast(pl.Float64) / per_request),
        "reasoning": (
            ["reasoning_requests", "sampled_prompts"],
            pl.col("reasoning_requests").cast(pl.Float64) / pl.col("sampled_prompts").cast(pl.Float64).clip(1, None),
        ),
    }
    parts += [
        _level(active, value, aspect)
        for aspect, (columns, value) in levels.items()
        if all(column in accounts.columns for column in columns) and aspect not in without
    ]
    parts = [part for part in parts if part.height]
    if not parts:
        return Profiles(pl.DataFrame(schema=_VECTORS), None)
    vectors = pl.concat(parts)
    aspects = vectors["aspect"].n_unique()
    # accounts as their position in the account table and (aspect, key) as one 64-bit hash: the
    # sums below group and join on integers instead of texts
    index = pl.Enum(accounts["account_id"])
    vectors = vectors.select(
        pl.col("account_id").cast(index, strict=False).to_physical().alias("account"),
        pl.concat_str("aspect", pl.lit("|"), "key").hash(_FEATURE_SEED).alias("feature"),
        pl.col("u") / aspects**0.5,
    ).filter(pl.col("account").is_not_null())  # (a relationship of an account the table lacks: none)
    return Profiles(vectors, _baseline(vectors, accounts.height), index)


def _baseline(vectors: pl.DataFrame, accounts: int) -> float:
    """The mean similarity of two of the run's accounts: the whole run as one group."""
    if accounts < 2:
        return 0.0
    per_feature = vectors.group_by("feature").agg(pl.col("u").sum().alias("total"))
    pairs = float((per_feature["total"] ** 2).sum()) - float((vectors["u"] ** 2).sum())
    return pairs / (accounts * (accounts - 1))


def alike(profile: Profiles, members: pl.DataFrame) -> pl.DataFrame:
    """``ring_id, alike``: each ring's mean pairwise similarity on the run's scale, ``(s − s₀) / (1 − s₀)``
    with ``s₀`` the mean similarity of two accounts of the run (``members``: ``ring_id, account_id``).
    Null when the run has no behaviour to compare."""
    rings = members.select("ring_id").unique()
    if profile.baseline is None:
        return rings.with_columns(pl.lit(None, pl.Float64).alias("alike"))
    new = members.select("ring_id", "account_id").join(profile.known, on="ring_id", how="anti")
    if new.height:
        assert profile.index is not None  # (set whenever there is a baseline)
        similarity = _mean_similarity(
            profile.vectors,
            new.select(
                "ring_id", pl.col("account_id").cast(profile.index, strict=False).to_physical().alias("account")
            ),
        )
        measured = (
            new.select("ring_id")
            .unique()
            .join(similarity, on="ring_id", how="left")
            .select("ring_id", _on_run_scale(pl.col("similarity").fill_null(0.0), profile.baseline).alias("alike"))
        )
        profile.known = pl.concat([profile.known, measured])
    return rings.join(profile.known, on="ring_id", how="left")


def member_alike(profile: Profiles, members: pl.DataFrame) -> pl.DataFrame:
    """``ring_id, account_id, alike``: how alike each member acts to the ring's other members, its mean
    similarity to them on the run's scale (as :func:`alike`; the ring's ``alike`` is the mean of its
    members'). Null when the run has no behaviour to compare."""
    members = members.select("ring_id", "account_id")
    if profile.baseline is None:
        return members.with_columns(pl.lit(None, pl.Float64).alias("alike"))
    assert profile.index is not None  # (set whenever there is a baseline)
    placed = members.with_columns(pl.col("account_id").cast(profile.index, strict=False).to_physical().alias("account"))
    # grouped by the account's integer position, not its id text (millions of rows at scale)
    rows = profile.vectors.join(placed.filter(pl.col("account").is_not_null()).drop("account_id"), on="account")
    totals = rows.group_by("ring_id", "feature").agg(pl.col("u").sum().alias("total"))
    others = (
        rows.join(totals, on=["ring_id", "feature"])
        .group_by("ring_id", "account")
        .agg(((pl.col("u") * pl.col("total")).sum() - (pl.col("u") ** 2).sum()).alias("pairs"))
    )
    sizes = members.group_by("ring_id").agg(pl.len().cast(pl.Float64).alias("k"))
    similarity = pl.col("pairs").fill_null(0.0) / (pl.col("k") - 1.0).clip(1.0, None)
    return (
        placed.join(sizes, on="ring_id")
        .join(others, on=["ring_id", "account"], how="left")
        .select("ring_id", "account_id", _on_run_scale(similarity, profile.baseline).alias("alike"))
    )


def _on_run_scale(similarity: pl.Expr, baseline: float | pl.Expr) -> pl.Expr:
    """``(s − s₀) / (1 − s₀)``: 0 the mean similarity of two of the run's accounts (or of a ring's
    member and one of its crowd), 1 identical."""
    base = pl.lit(baseline, pl.Float64) if isinstance(baseline, float) else baseline
    return ((similarity - base) / (1.0 - base).clip(1e-9, None)).round(6)


def _mean_similarity(vectors: pl.DataFrame, members: pl.DataFrame) -> pl.DataFrame:
    """Per group (``ring_id``), the mean similarity over its member pairs, ``(‖Σu‖² − Σ‖u‖²) / (k(k−1))``:
    a member without behaviour counts in ``k`` with similarity 0 to everyone."""
    sizes = members.group_by("ring_id").agg(pl.len().cast(pl.Float64).alias("k"))
    summed = (
        vectors.join(members.filter(pl.col("account").is_not_null()), on="account")
        .group_by("ring_id", "feature")
        .agg(pl.col("u").sum().alias("total"), (pl.col("u") ** 2).sum().alias("own"))
        .group_by("ring_id")
        .agg(((pl.col("total") ** 2).sum() - pl.col("own").sum()).alias("pairs"))
    )
    return (
        sizes.join(summed, on="ring_id", how="left")
        .filter(pl.col("k") >= 2)
        .select("ring_id", (pl.col("pairs").fill_null(0.0) / (pl.col("k") * (pl.col("k") - 1))).alias("similarity"))
    )


def _mix(rel: pl.DataFrame, aspect: str) -> pl.DataFrame:
    """An account's use of models, templates or clients as a unit vector of request counts."""
    counts = rel.select(
        pl.col("src").alias("account_id"), pl.col("dst").cast(pl.Utf8).alias("key"), pl.col("count").cast(pl.Float64)
    ).filter(pl.col("key").is_not_null() & (pl.col("count") > 0))
    return counts.select(
        "account_id",
        pl.lit(aspect).alias("aspect"),
        "key",
        (pl.col("count") / (pl.col("count") ** 2).sum().over("account_id").sqrt()).alias("u"),
    )


def _level(accounts: pl.DataFrame, value: pl.Expr, aspect: str) -> pl.DataFrame:
    """Which fifth of the run's active accounts each one falls in by ``value`` (a one-hot vector)."""
    values = accounts.select("account_id", value.alias("value")).filter(
        pl.col("value").is_not_null() & pl.col("value").is_not_nan()
    )
    if values.height == 0 or values["value"].n_unique() < 2:
        return pl.DataFrame(schema=_PART_SCHEMA)
    fifth = ((pl.col("value").rank("min") - 1) * _LEVELS / pl.len()).floor().cast(pl.Int64)
    return values.select(
        "account_id", pl.lit(aspect).alias("aspect"), fifth.cast(pl.Utf8).alias("key"), pl.lit(1.0).alias("u")
    )


def alike_against_crowd(profile: Profiles, members: pl.DataFrame, crowd: pl.DataFrame) -> pl.DataFrame:
    """``ring_id, crowd_alike``: how much more alike a ring's members act with each other than with its
    crowd (``crowd``: ``ring_id, account_id``, the customers outside any ring who share its
    infrastructure), ``(s − s_c) / (1 − s_c)`` with ``s_c`` the mean similarity of a member and one of
    the crowd. Rings without a crowd are left out."""
    if profile.baseline is None or crowd.height == 0:
        return pl.DataFrame(schema={"ring_id": pl.Utf8, "crowd_alike": pl.Float64})
    assert profile.index is not None  # (set whenever there is a baseline)
    index = profile.index
    # rings as integer codes and accounts as positions: the sums below group millions of rows
    codes = members.select("ring_id").unique(maintain_order=True).with_row_index("ring")

    def placed(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.join(codes, on="ring_id").select(
            pl.col("ring").cast(pl.UInt32),
            pl.col("account_id").cast(index, strict=False).to_physical().alias("account"),
        )

    def summed(frame: pl.DataFrame, name: str) -> pl.DataFrame:
        return (
            profile.vectors.join(frame.filter(pl.col("account").is_not_null()), on="account")
            .group_by("ring", "feature")
            .agg(pl.col("u").sum().alias(name), (pl.col("u") ** 2).sum().alias(f"{name}_own"))
        )

    ring, outside = placed(members), placed(crowd)
    sizes = ring.group_by("ring").agg(pl.len().cast(pl.Float64).alias("k"))
    crowd_sizes = outside.group_by("ring").agg(pl.len().cast(pl.Float64).alias("c"))
    # one sum per ring and feature gives both the members' pairs (as in _mean_similarity) and the
    # member-crowd pairs
    sums = (
        summed(ring, "inside")
        .join(summed(outside, "outside").drop("outside_own"), on=["ring", "feature"], how="left")
        .group_by("ring")
        .agg(
            ((pl.col("inside") ** 2).sum() - pl.col("inside_own").sum()).alias("pairs"),
            (pl.col("inside") * pl.col("outside").fill_null(0.0)).sum().alias("dot"),
        )
    )
    within = pl.col("pairs").fill_null(0.0) / (pl.col("k") * (pl.col("k") - 1.0))
    s_c = pl.col("dot").fill_null(0.0) / (pl.col("k") * pl.col("c"))
    return (
        sizes.join(crowd_sizes, on="ring")
        .join(sums, on="ring", how="left")
        .filter((pl.col("k") >= 2) & (pl.col("c") >= pl.col("k")))
        .join(codes.with_columns(pl.col("ring").cast(pl.UInt32)), on="ring")
        .select("ring_id", _on_run_scale(within, s_c).alias("crowd_alike"))
    )
