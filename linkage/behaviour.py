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

import numpy as np
import polars as pl

from .graph import Graph, position_dtype
from .kernels import kernel

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
    index: pl.DataTypeExpr | None = None  # casts an account id to its ``account`` number (graph.position_dtype)
    rows: _Rows | None = None  # ``vectors`` as each account's run of rows (the compiled sums read these)
    # rings already measured, by ring id (ids are content hashes of the members, so a ring that
    # comes back unchanged in a later round of scoring is not measured again)
    known: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema={"ring_id": pl.Utf8, "alike": pl.Float64}))
    # rings already read against their crowd (:func:`alike_against_crowd`), likewise
    crowd_known: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema={"ring_id": pl.Utf8, "crowd_alike": pl.Float64})
    )


@dataclass
class _Rows:
    """The profile vectors account by account: account ``a``'s features and values are at
    ``start[a]`` … ``start[a + 1]``; features numbered densely (``n_features``)."""

    start: np.ndarray
    feature: np.ndarray
    u: np.ndarray
    n_features: int

    @classmethod
    def of(cls, vectors: pl.DataFrame, n_accounts: int) -> _Rows:
        ordered = vectors.sort("account", maintain_order=True)
        counts = np.bincount(ordered["account"].to_numpy(), minlength=n_accounts)
        feature, n_features = _dense_codes(ordered["feature"].to_numpy())
        return cls(np.r_[0, np.cumsum(counts)].astype(np.int64), feature, ordered["u"].to_numpy(), n_features)


@kernel()
def _dense_codes(hashes):
    """(each hash numbered densely in order of first appearance, how many distinct): one pass over an
    open-addressing table, 0.28 s for 4.5 M hashes where polars' dense rank (a sort) took 0.41-0.55 s.
    The values are hashes already, so their low bits pick the slot."""
    size = 16
    while size < 2 * len(hashes):
        size *= 2
    mask = np.uint64(size - 1)
    slot_hash = np.zeros(size, np.uint64)
    slot_code = np.full(size, -1, np.int64)
    codes = np.empty(len(hashes), np.int64)
    n = 0
    for i in range(len(hashes)):
        slot = hashes[i] & mask
        while slot_code[slot] >= 0 and slot_hash[slot] != hashes[i]:
            slot = (slot + np.uint64(1)) & mask
        if slot_code[slot] < 0:
            slot_hash[slot] = hashes[i]
            slot_code[slot] = n
            n += 1
        codes[i] = slot_code[slot]
    return codes, n


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
    index = position_dtype(accounts["account_id"])
    vectors = vectors.select(
        pl.col("account_id").cast(index, strict=False).to_physical().alias("account"),
        pl.concat_str("aspect", pl.lit("|"), "key").hash(_FEATURE_SEED).alias("feature"),
        pl.col("u") / aspects**0.5,
    ).filter(pl.col("account").is_not_null())  # (a relationship of an account the table lacks: none)
    return Profiles(vectors, _baseline(vectors, accounts.height), index, _Rows.of(vectors, accounts.height))


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
        similarity = _mean_similarity(profile, new)
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
    grouped = _Grouped.of(profile, members)
    _, each, _ = grouped.sums(profile)
    others = grouped.sizes[grouped.group] - 1.0
    similarity = pl.Series("similarity", each / np.maximum(others, 1.0))
    return members.with_columns(similarity).select(
        "ring_id", "account_id", _on_run_scale(pl.col("similarity"), profile.baseline).alias("alike")
    )


def _on_run_scale(similarity: pl.Expr, baseline: float | pl.Expr) -> pl.Expr:
    """``(s − s₀) / (1 − s₀)``: 0 the mean similarity of two of the run's accounts (or of a ring's
    member and one of its crowd), 1 identical."""
    base = pl.lit(baseline, pl.Float64) if isinstance(baseline, float) else baseline
    return ((similarity - base) / (1.0 - base).clip(1e-9, None)).round(6)


def _mean_similarity(profile: Profiles, members: pl.DataFrame) -> pl.DataFrame:
    """Per group (``ring_id``), the mean similarity over its member pairs, ``(‖Σu‖² − Σ‖u‖²) / (k(k−1))``:
    a member without behaviour counts in ``k`` with similarity 0 to everyone."""
    grouped = _Grouped.of(profile, members)
    pairs, _, _ = grouped.sums(profile)
    k = grouped.sizes.astype(np.float64)
    return (
        pl.DataFrame({"ring_id": grouped.ids, "k": k, "pairs": pairs})
        .filter(pl.col("k") >= 2)
        .select("ring_id", (pl.col("pairs") / (pl.col("k") * (pl.col("k") - 1))).alias("similarity"))
    )


@dataclass
class _Grouped:
    """Accounts in groups (``ring_id, account_id``), as the compiled sums take them: per row its group's
    number (``group``, groups numbered in order of first appearance: ``ids``) and account position
    (-1: not in the profiles), and the rows in group order (``order``, ``starts``)."""

    ids: pl.Series
    group: np.ndarray
    account: np.ndarray
    order: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray

    @classmethod
    def of(cls, profile: Profiles, frame: pl.DataFrame, ids: pl.Series | None = None) -> _Grouped:
        """``ids``: number the groups as these (rows of other groups are left out)."""
        assert profile.index is not None  # (set whenever there is a baseline)
        ids = frame["ring_id"].unique(maintain_order=True) if ids is None else ids
        numbered = frame.select(
            pl.col("ring_id")
            .replace_strict(ids, np.arange(ids.len()), default=-1, return_dtype=pl.Int64)
            .alias("group"),
            pl.col("account_id").cast(profile.index, strict=False).to_physical().cast(pl.Int64).fill_null(-1),
        ).filter(pl.col("group") >= 0)
        group = numbered["group"].to_numpy()
        sizes = np.bincount(group, minlength=ids.len())
        return cls(
            ids,
            group,
            numbered["account_id"].to_numpy(),
            np.argsort(group, kind="stable"),
            np.r_[0, np.cumsum(sizes)].astype(np.int64),
            sizes,
        )

    def sums(self, profile: Profiles, crowd: _Grouped | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(per group ‖Σu‖² − Σ‖u‖², the sum over its pairs of members; per row, in ``frame``'s order,
        the member's dot product with the others' sum; per group, the dot product of its sum with
        ``crowd``'s sum for the same group number)."""
        rows = profile.rows
        assert rows is not None
        if crowd is None:
            crowd_starts, crowd_members = np.zeros(len(self.starts), np.int64), np.empty(0, np.int64)
        else:
            crowd_starts, crowd_members = crowd.starts, crowd.account[crowd.order]
        pairs, each, dot = _group_sums(
            self.starts,
            self.account[self.order],
            crowd_starts,
            crowd_members,
            rows.start,
            rows.feature,
            rows.u,
            rows.n_features,
        )
        in_rows = np.empty_like(each)
        in_rows[self.order] = each
        return pairs, in_rows, dot


@kernel()
def _group_sums(starts, members, crowd_starts, crowd, start, feature, u, n_features):
    """Compiled loop behind :meth:`_Grouped.sums`: each group's members summed into one dense vector
    (reset through the features it touched), then read against each member and the group's crowd.
    Values are positive, so a zero total marks an untouched feature."""
    n_groups = len(starts) - 1
    total = np.zeros(n_features)
    touched = np.empty(n_features, np.int64)
    pairs, dot = np.zeros(n_groups), np.zeros(n_groups)
    each = np.zeros(len(members))
    for g in range(n_groups):
        n_touched = 0
        own = 0.0
        for i in range(starts[g], starts[g + 1]):
            a = members[i]
            if a < 0:
                continue
            for j in range(start[a], start[a + 1]):
                f = feature[j]
                if total[f] == 0.0:
                    touched[n_touched] = f
                    n_touched += 1
                total[f] += u[j]
                own += u[j] * u[j]
        square = 0.0
        for t in range(n_touched):
            square += total[touched[t]] * total[touched[t]]
        pairs[g] = square - own
        for i in range(starts[g], starts[g + 1]):
            a = members[i]
            if a < 0:
                continue
            for j in range(start[a], start[a + 1]):
                each[i] += u[j] * total[feature[j]] - u[j] * u[j]
        for i in range(crowd_starts[g], crowd_starts[g + 1]):
            a = crowd[i]
            if a < 0:
                continue
            for j in range(start[a], start[a + 1]):
                dot[g] += u[j] * total[feature[j]]
        for t in range(n_touched):
            total[touched[t]] = 0.0
    return pairs, each, dot


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
    ring = _Grouped.of(profile, members)
    outside = _Grouped.of(profile, crowd, ids=ring.ids)
    pairs, _, dot = ring.sums(profile, outside)
    k, c = ring.sizes.astype(np.float64), outside.sizes.astype(np.float64)
    within = pl.col("pairs") / (pl.col("k") * (pl.col("k") - 1.0))
    s_c = pl.col("dot") / (pl.col("k") * pl.col("c"))
    return (
        pl.DataFrame({"ring_id": ring.ids, "k": k, "c": c, "pairs": pairs, "dot": dot})
        .filter((pl.col("k") >= 2) & (pl.col("c") >= pl.col("k")))
        .select("ring_id", _on_run_scale(within, s_c).alias("crowd_alike"))
    )
