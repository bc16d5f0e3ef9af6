"""Stage 4 — detect: project the heterogeneous graph onto accounts and run Leiden.

Evidence is a table of memberships (account, entity). What a pair of accounts shares is
weighed against chance in this run (:mod:`linkage.chance`): per evidence type the surprisal of
the rarest entity they share under a configuration model, less what their own memberships make
expected; correlated types grouped in families; families combined with Fisher's tail; lockstep
activity as one more family; scaled down when both are seats billed as one by a declared org. A pair
links when chance links at that level would stay under ``chance_links_per_account`` per account.

A client build or a scaffold held by a hub's worth of accounts that nearly all act as one beyond it
is one operation's own (:func:`owned_tools`): between two of its workers it is worth the rarest of
its type.

Entities shared by few accounts expand into all their pairs. A hub is never expanded into
its clique: its members are joined by a few random cycles (an expander, which Leiden does not
cut apart) and every such candidate pair is then weighed on *all* it shares. Communities are
Leiden's CPM partition of the linked pairs (no resolution limit, no pull from the run's size).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl

from .behaviour import Profiles, member_alike, profiles
from .chance import (
    entity_surprisal,
    fisher_log_tail,
    link_threshold,
    lockstep_calibration,
    lockstep_surprisal,
    pair_windows,
    shared_days_surprisal,
    window_counts,
)
from .graph import (
    ACTIVITY_SIGNATURE_SIZE,
    Graph,
    in_order,
    mix64,
    position_dtype,
    sorted_unique,
    sorted_values,
    stable_order,
)
from .kernels import kernel
from .partition import LeidenGraph, LeidenProcess
from .progress import StageClock
from .settings import DetectSettings

log = logging.getLogger(__name__)
_NO_BIN_TYPES = ["wallet", "crypto", "invoice"]
_NETWORK_TYPES = ("IP", "Subnet", "ASN")
PARALLEL_MIN_PAIRS = 100_000  # fewer candidate pairs are weighed on one thread
_PREFETCH_BLOCK = 256  # candidate pairs whose memory is loaded ahead at once (see _weigh_pairs)
_ENTITY_SEED = 17


@dataclass
class Detection:
    accounts: pl.DataFrame  # idx, account_id, org_id (the projection's node table)
    memberships: pl.DataFrame  # idx, entity, type, value, degree
    pairs: pl.DataFrame  # a, b (idx), weight, activity (kept edges only)
    communities: pl.DataFrame  # account_id, community (every account in a community of ≥ min size)
    owned: pl.DataFrame | None = None  # entity_key, account_id: owned tools and their workers (owned_tools)


_NO_COMMUNITIES = pl.DataFrame(schema={"account_id": pl.Utf8, "idx": pl.UInt32, "community": pl.Int64})


def one_customer_orgs(graph: Graph) -> pl.DataFrame:
    """``account_id, org_id``: the declared org where its seats are billed as one customer, null for a
    seat paying with an instrument no other seat of its org holds, and for a seat that pays nothing
    in an org none of whose instruments two seats share. Seats of one org legitimately share billing
    (the contract); a seat billed alone is its own customer whatever it declared, and so is one not
    billed at all unless its org shows shared billing (a seat the org's invoice covers), so an
    operation cannot fold a hundred accounts into one customer by declaring an org, paying or not.
    A run without any payment rows cannot tell: there every declared org stands."""
    accounts = graph.nodes["Account"].select("account_id", "org_id")
    paid = graph.rels["PAID_WITH"].select(pl.col("src").alias("account_id"), pl.col("dst").alias("instrument"))
    if paid.height == 0:
        return accounts
    seats = paid.join(accounts.filter(pl.col("org_id").is_not_null()), on="account_id")
    shared = (
        seats.group_by("org_id", "instrument")
        .agg(pl.col("account_id").n_unique().alias("seats"))
        .filter(pl.col("seats") >= 2)
    )
    billed_as_one = seats.join(shared, on=["org_id", "instrument"]).select("account_id").unique()
    orgs_billed_as_one = shared.select("org_id").unique()
    unpaid = accounts.filter(pl.col("org_id").is_not_null()).join(paid, on="account_id", how="anti")
    covered = unpaid.join(orgs_billed_as_one, on="org_id", how="semi").select("account_id")
    one_customer = pl.concat([billed_as_one, covered])
    return accounts.with_columns(
        pl.when(pl.col("account_id").is_in(one_customer["account_id"].implode()))
        .then(pl.col("org_id"))
        .otherwise(None)
        .alias("org_id")
    )


# ---------------------------------------------------------------- evidence
@dataclass
class Part:
    """One evidence type's (account, entity) rows, one row per pair: ``idx`` (the account's index),
    ``entity`` (dense rank of the entity's key hash: equal keys, equal ranks), ``factor``, ``count``
    (uses), and ``key`` (the entity as text) and ``entity_key`` (its 64-bit hash) either on the rows
    or, for large parts, in ``keys`` (one row per entity), joined only to the rows kept."""

    rows: pl.DataFrame
    keys: pl.DataFrame | None = None


def memberships(graph: Graph, settings: DetectSettings) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(accounts with a dense ``idx``, one row per account × shared entity with the entity's value).

    Reads nothing but the graph tables, so it runs the same on the embedded store and on Neo4j."""
    # the org discount applies to seats billed as one customer, not to whatever an account declares
    accounts = (
        graph.nodes["Account"]
        .drop("org_id")
        .join(one_customer_orgs(graph), on="account_id", how="left")
        .sort("account_id")
        .with_row_index("idx")
    )
    rels = graph.rels

    def rel(rel_type: str, rows: pl.DataFrame | None = None) -> pl.DataFrame:
        return (rels[rel_type] if rows is None else rows).select(
            pl.col("src").alias("account_id"), pl.col("dst").alias("key"), pl.lit(1.0).alias("factor"), "count"
        )

    # every part holds one row per (account, entity) and is one evidence type, so rarity and the
    # per-type cap are settled part by part, before any text is built for the survivors
    with ThreadPoolExecutor(max_workers=1) as pool:
        network = pool.submit(_network_parts, graph, position_dtype(accounts["account_id"]), settings)
        instruments = rels["PAID_WITH"].join(graph.nodes["PaymentInstrument"], left_on="dst", right_on="instrument_id")
        parts = {
            "PaymentInstrument": rel("PAID_WITH"),
            "Device": rel("USED_DEVICE"),
            "PromptTemplate": rel(
                "SENT_TEMPLATE", _repeated_templates(rels["SENT_TEMPLATE"], graph.nodes, settings.template_repeated_by)
            ),
            "EmailDomain": rel("HAS_EMAIL_DOMAIN"),
            "SignupIP": rel("SIGNED_UP_FROM"),
            "Email": accounts.filter(pl.col("email").is_not_null()).select(
                "account_id", pl.col("email").alias("key"), pl.lit(1.0).alias("factor"), pl.lit(1).alias("count")
            ),
            "Bin": instruments.filter(
                pl.col("bin").is_not_null() & ~pl.col("instrument_type").fill_null("").is_in(_NO_BIN_TYPES)
            )
            .group_by("src", "bin")
            .agg(pl.len().alias("count"))
            .select(
                pl.col("src").alias("account_id"), pl.col("bin").alias("key"), pl.lit(1.0).alias("factor"), "count"
            ),
            "SignupBurst": _signup_bursts(accounts, settings),
            "ModelSwitch": _model_switches(graph, settings),
        }
        index = accounts.lazy().select("account_id", "idx")
        types = pl.Enum(sorted(set(settings.type_weights) | set(parts) | set(_NETWORK_TYPES)))
        evidence = [_shared_entities(_keyed_part(frame, index), name, types, settings) for name, frame in parts.items()]
        # the network parts (address use: by far the largest) are being worked out meanwhile; then
        # the addresses' evidence on that thread, the networks' here
        network_parts = network.result()
        addresses = pool.submit(_shared_entities, network_parts["IP"], "IP", types, settings)
        networks = [_shared_entities(network_parts[name], name, types, settings) for name in _NETWORK_TYPES[1:]]
        evidence = pl.concat(evidence + [addresses.result()] + networks)
    evidence = evidence.with_columns(accounts["account_id"].gather(evidence["idx"]).alias("account_id"))
    priors = pl.DataFrame(
        {"type": list(settings.type_weights), "type_weight": list(settings.type_weights.values())},
        schema={"type": types, "type_weight": pl.Float64},
    )
    evidence = evidence.join(priors, on="type", how="left")
    surprisal = entity_surprisal(
        evidence["type"].to_physical().to_numpy(),
        evidence["entity_key"].to_numpy(),
        evidence["degree"].to_numpy(),
        evidence["type_memberships"].to_numpy(),
    )
    evidence = evidence.with_columns(
        (pl.col("type_weight").fill_null(0.0) * pl.col("factor") * pl.Series(surprisal)).alias("value")
    )
    evidence = evidence.filter(pl.col("value") > 0).select(
        "idx", "account_id", "entity", "entity_key", pl.col("type").cast(pl.Utf8), "value", "degree", "held"
    )
    return accounts, evidence.sort("entity_key", "idx")


def _keyed_part(frame: pl.DataFrame | pl.LazyFrame, index: pl.LazyFrame) -> Part:
    """A part from (account_id, key, factor, count) rows: accounts indexed, keys hashed and ranked."""
    rows = (
        frame.lazy()
        .select(
            pl.col("account_id").cast(pl.Utf8),
            pl.col("key").cast(pl.Utf8),
            pl.col("factor").cast(pl.Float64),
            pl.col("count").cast(pl.Int64),
        )
        .filter(pl.col("key").is_not_null())
        .join(index, on="account_id", how="inner", maintain_order="left")
        .drop("account_id")
        .with_columns(pl.col("key").hash(_ENTITY_SEED).alias("entity_key"))
        .with_columns(pl.col("entity_key").rank("dense").cast(pl.Int64).alias("entity"))
        .collect()
    )
    return Part(rows)


def _network_parts(graph: Graph, account_index: pl.DataTypeExpr, settings: DetectSettings) -> dict[str, Part]:
    """IP, Subnet and ASN parts from address use, by far the largest table. Everything about an
    address (its hash, subnet, ASN, type factor) is worked out once per address on the IP table and
    gathered; several addresses of one network collapse into one (account, network) row."""
    ips = (
        graph.nodes["IP"]
        .select("ip", "subnet", pl.col("asn").cast(pl.Utf8), "ip_type")
        .with_columns(_ip_type_factor(settings).alias("factor"))
    )
    per_ip = {"ip": _ranked_keys(ips["ip"]), "subnet": _ranked_keys(ips["subnet"]), "asn": _ranked_keys(ips["asn"])}
    # ids → positions through enums of the sorted ids (a lookup, no join of millions of rows); the
    # accounts come in runs (tables of this build are in account order): one lookup per run
    use = graph.rels["USED_IP"]
    account_runs = use.select(pl.col("src").rle()).unnest("src")
    run_of_row = np.repeat(np.arange(account_runs.height), account_runs["len"].to_numpy())
    run_idx = account_runs.select(pl.col("value").cast(account_index, strict=False).to_physical())["value"]
    used = use.select(
        run_idx.gather(run_of_row).alias("idx"),
        pl.col("dst").cast(position_dtype(ips["ip"]), strict=False).to_physical().alias("ip_row"),
        "count",
    ).filter(pl.col("idx").is_not_null() & pl.col("ip_row").is_not_null())
    idx, ip_row, count = (used[c].to_numpy() for c in ("idx", "ip_row", "count"))
    if not _in_runs(idx):  # (tables from this build are in account order; from elsewhere, maybe not)
        order = np.argsort(idx, kind="stable")
        idx, ip_row, count = idx[order], ip_row[order], count[order]
    factor = ips["factor"].to_numpy()[ip_row]
    parts: dict[str, Part] = {}
    for name, level in zip(_NETWORK_TYPES, ("ip", "subnet", "asn")):
        keys = per_ip[level]
        entity = keys["entity"].to_numpy()[ip_row]
        columns = (idx, entity, factor, count)
        known = entity >= 0
        if not known.all():  # addresses without a subnet or ASN
            columns = tuple(column[known] for column in columns)
        if level != "ip":  # several addresses of one network: one (account, network) row
            # (indices widened for the loop, whose one compiled version then serves runs of any size)
            run, *rest = _collapse_runs(
                columns[0].astype(np.int64), *columns[1:], max(int(keys["entity"].max() or 0), 0) + 1
            )
            columns = (run.astype(columns[0].dtype), *rest)
        rows = pl.DataFrame(dict(zip(("idx", "entity", "factor", "count"), columns)))
        parts[name] = Part(rows, keys.filter(pl.col("entity") >= 0).unique("entity"))
    return parts


def _ranked_keys(keys: pl.Series) -> pl.DataFrame:
    """Per row of a (small) node table: key text, its hash and the hash's dense rank (-1 when null)."""
    frame = pl.DataFrame({"key": keys.cast(pl.Utf8)}).with_columns(pl.col("key").hash(_ENTITY_SEED).alias("entity_key"))
    return frame.with_columns(
        pl.when(pl.col("key").is_not_null())
        .then(pl.col("entity_key").rank("dense"))
        .cast(pl.Int64)
        .fill_null(-1)
        .alias("entity")
    )


def _shared_entities(part: Part, type_name: str, types: pl.Enum, settings: DetectSettings) -> pl.DataFrame:
    """One evidence type's (account, entity) rows: entities shared by ≥ 2 accounts (and not past
    ``max_entity_accounts``), and per account only its ``max_entities_per_type`` most used ones —
    a proxy-rotating account's long tail of exit addresses would only multiply the pair arithmetic."""
    rows = part.rows
    entity = rows["entity"].to_numpy()
    degree = np.bincount(entity, minlength=int(entity.max()) + 1 if len(entity) else 0)[entity]
    shared = np.flatnonzero((degree >= 2) & (degree <= settings.max_entity_accounts))
    keep = shared[
        _top_per_account(
            rows["idx"].to_numpy()[shared],
            rows["count"].to_numpy()[shared],
            entity[shared],
            settings.max_entities_per_type,
        )
    ]
    kept = (
        rows[keep] if part.keys is None else rows[keep].join(part.keys, on="entity", how="left", maintain_order="left")
    )
    # the null model counts every membership of the type, held alone or shared (see linkage.chance)
    idx = rows["idx"].to_numpy()
    held = np.bincount(idx, minlength=int(idx.max()) + 1 if len(idx) else 0)
    return kept.select(
        pl.col("idx").cast(pl.UInt32),
        (pl.lit(type_name + "|") + pl.col("key")).alias("entity"),
        (pl.col("entity_key") ^ pl.lit(hash_text(type_name), pl.UInt64)).alias("entity_key"),
        pl.lit(type_name).cast(types).alias("type"),
        "factor",
        "count",
        pl.Series("degree", degree[keep], dtype=pl.UInt32),
        pl.Series("held", held[idx[keep]], dtype=pl.UInt32),
        pl.lit(len(idx), pl.Int64).alias("type_memberships"),
    )


def _top_per_account(account: np.ndarray, count: np.ndarray, entity: np.ndarray, cap: int) -> np.ndarray:
    """Positions (ascending) of the rows kept: per account its ``cap`` most used entities (ties: lowest
    entity rank, i.e. smallest key hash); an account at or under the cap keeps everything."""
    account = account.astype(np.int64, copy=False)  # (one compiled version for runs of any size)
    if _in_runs(account):  # (tables from this build are in account order)
        return np.flatnonzero(_top_of_runs(account, count, entity, cap))
    order = np.argsort(account, kind="stable")
    keep = np.zeros(len(account), bool)
    keep[order] = _top_of_runs(account[order], count[order], entity[order], cap)
    return np.flatnonzero(keep)


def _in_runs(values: np.ndarray) -> bool:
    """Whether the values are in ascending order (so equal values are contiguous)."""
    return len(values) < 2 or bool(np.all(values[1:] >= values[:-1]))


@kernel()
def _top_of_runs(account, count, entity, cap):
    """Mask of the rows kept by :func:`_top_per_account`, in one pass over runs of equal ``account``: a
    run of at most ``cap`` rows is kept whole, a longer one (an account's many exit addresses) keeps
    its ``cap`` smallest keys through a bounded buffer. The key orders most uses first, then the lower
    entity rank; one (account, entity) per row, so keys are distinct within a run."""
    keep = np.zeros(len(account), np.bool_)
    buffer_keys = np.empty(cap, np.uint64)
    buffer_rows = np.empty(cap, np.int64)
    most = np.uint64(0xFFFFFFFF)
    start, n = 0, len(account)
    while start < n:
        end = start + 1
        while end < n and account[end] == account[start]:
            end += 1
        if end - start <= cap:
            keep[start:end] = True
        else:
            filled, largest = 0, 0
            for row in range(start, end):
                uses = min(np.uint64(count[row]), most)
                key = ((most - uses) << np.uint64(32)) | np.uint64(entity[row])
                if filled < cap:
                    buffer_keys[filled], buffer_rows[filled] = key, row
                    filled += 1
                    if filled == cap:
                        largest = np.argmax(buffer_keys)
                elif key < buffer_keys[largest]:
                    buffer_keys[largest], buffer_rows[largest] = key, row
                    largest = np.argmax(buffer_keys)
            for j in range(filled):
                keep[buffer_rows[j]] = True
        start = end
    return keep


@kernel()
def _collapse_runs(run_ids, entity, factor, count, n_entities):
    """Within each run of equal ``run_ids`` (an account's rows), one row per entity: the largest factor
    and the summed count. Rows out in order of first appearance; no sort, no hash table."""
    seen_in = np.full(n_entities, -1, np.int64)
    slot = np.zeros(n_entities, np.int64)
    out_run = np.empty(len(run_ids), run_ids.dtype)
    out_entity = np.empty(len(run_ids), np.int64)
    out_factor = np.empty(len(run_ids), np.float64)
    out_count = np.empty(len(run_ids), np.int64)
    n_out = 0
    for row in range(len(run_ids)):
        e = entity[row]
        if row == 0 or run_ids[row] != run_ids[row - 1]:
            run_start = row
        if seen_in[e] != run_start:
            seen_in[e] = run_start
            slot[e] = n_out
            out_run[n_out], out_entity[n_out] = run_ids[row], e
            out_factor[n_out], out_count[n_out] = factor[row], count[row]
            n_out += 1
        else:
            s = slot[e]
            out_factor[s] = max(out_factor[s], factor[row])
            out_count[s] += count[row]
    return out_run[:n_out], out_entity[:n_out], out_factor[:n_out], out_count[:n_out]


def hash_text(text: str) -> int:
    """A stable 64-bit number for a short string (Python's ``hash`` changes between processes)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _ip_type_factor(settings: DetectSettings) -> pl.Expr:
    mapping = settings.ip_type_factor
    return pl.col("ip_type").replace_strict(mapping, default=mapping.get("unknown", 0.6), return_dtype=pl.Float64)


def _burst_windows(times: pl.DataFrame, window: pl.Expr, settings: DetectSettings) -> pl.DataFrame:
    """Windows whose count is ``burst_min_excess`` times the typical (median non-empty) window."""
    counts = times.group_by(window.alias("window")).len()
    if counts.height == 0:
        return counts.select("window")
    typical = max(float(counts["len"].median()), 1.0)
    return counts.filter(pl.col("len") >= max(settings.burst_min_excess * typical, 3)).select("window")


def _repeated_templates(sent: pl.DataFrame, nodes: dict[str, pl.DataFrame], repeated_by: int) -> pl.DataFrame:
    """The SENT_TEMPLATE rows of templates that at least ``repeated_by`` accounts fill with two or more
    distinct texts (see ``DetectSettings.template_repeated_by``). A graph stored before templates
    were counted so has no ``repeated_by``: every template counts there."""
    templates = nodes.get("PromptTemplate", pl.DataFrame())
    if repeated_by == 0 or templates.get_column("repeated_by", default=pl.Series(dtype=pl.Int64)).count() == 0:
        return sent
    kept = templates.filter(pl.col("repeated_by").fill_null(repeated_by) >= repeated_by).select("template_id")
    return sent.join(kept, left_on="dst", right_on="template_id", how="semi", maintain_order="left")


def _signup_bursts(accounts: pl.DataFrame, settings: DetectSettings) -> pl.DataFrame:
    window = pl.col("created_at").dt.epoch("s") // (settings.signup_window_minutes * 60)
    bursts = _burst_windows(accounts, window, settings)
    return (
        accounts.lazy()
        .with_columns(window.alias("window"))
        .join(bursts.lazy(), on="window")
        .select(
            "account_id",
            pl.col("window").cast(pl.Utf8).alias("key"),
            pl.lit(1.0).alias("factor"),
            pl.lit(1).alias("count"),
        )
    )


def _model_switches(graph: Graph, settings: DetectSettings) -> pl.DataFrame:
    """Accounts that start using a model in the same hour, after having used another one before."""
    firsts = graph.rels["USED_MODEL"].select(
        pl.col("src").alias("account_id"), pl.col("dst").alias("model"), pl.col("first_seen").alias("ts")
    )
    firsts = firsts.with_columns(pl.col("ts").min().over("account_id").alias("account_first"))
    switches = firsts.filter(pl.col("ts") > pl.col("account_first"))
    window = pl.col("ts").dt.epoch("s") // 3600
    bursts = _burst_windows(switches, window, settings)
    return (
        switches.lazy()
        .with_columns(window.alias("window"))
        .join(bursts.lazy(), on="window")
        .select(
            "account_id",
            (pl.col("model") + "@" + pl.col("window").cast(pl.Utf8)).alias("key"),
            pl.lit(1.0).alias("factor"),
            pl.lit(1).alias("count"),
        )
    )


# ---------------------------------------------------------------- candidates
@kernel()
def _clique_contributions(starts, sizes, rows, idx, n):
    """Every pair within each small group of membership rows (``starts``, ``sizes``: the groups'
    positions in ``rows``), as (pair code ``a·n + b`` with ``a < b`` the two accounts, the row of the
    group's earlier member). Groups come by size, then in order; a group's pairs row-major (its
    first member with each later one, then the second…): one pass, no index arrays per size."""
    total = 0
    for g in range(len(sizes)):
        total += sizes[g] * (sizes[g] - 1) // 2
    code = np.empty(total, np.int64)
    first = np.empty(total, np.int64)
    k = 0
    for g in np.argsort(sizes, kind="mergesort"):
        begin, size = starts[g], sizes[g]
        for i in range(size):
            row = rows[begin + i]
            a = idx[row]
            for j in range(i + 1, size):
                b = idx[rows[begin + j]]
                code[k] = min(a, b) * n + max(a, b)
                first[k] = row
                k += 1
    return code, first


def _hub_cycles(
    entity_codes: np.ndarray, idx: np.ndarray, cycles: int, seed: int, n: int, first: int = 0
) -> np.ndarray:
    """Each hub's members joined by ``cycles`` random Hamiltonian cycles (deterministic per seed), as
    codes ``a·n + b`` (``a < b``; a one-member hub gives none), unsorted. ``first``: lay only cycles
    ``first`` … ``cycles − 1`` (each cycle is drawn from its own number, so they can be laid apart).

    Rows come grouped by entity. A cycle visits a hub's members in the order of a per-member hash
    (its top bits; ties in row order), each member to the next and the last back to the first."""
    if len(idx) == 0:
        return np.empty(0, np.int64)
    entity_bits = max(int(entity_codes.max()).bit_length(), 1)
    starts = np.flatnonzero(np.r_[True, entity_codes[1:] != entity_codes[:-1]]).astype(np.int64)
    member_mix = idx.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ entity_codes.astype(np.uint64)
    members = idx.astype(np.int64)
    parts = []
    for r in range(first, cycles):
        key = mix64(member_mix ^ np.uint64((seed * 1_000_003 + r) & 0xFFFFFFFF)) >> np.uint64(entity_bits)
        parts.append(_cycle_pairs(starts, key, members, n))
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


@kernel()
def _cycle_pairs(starts, key, members, n):
    """Per group of rows (``starts``), its members in ascending ``key`` (ties in row order) joined
    each to the next and the last to the first, as pair codes ``a·n + b``, ``a < b``."""
    total = len(key)
    codes = np.empty(total, np.int64)
    out = 0
    for g in range(len(starts)):
        begin = starts[g]
        end = starts[g + 1] if g + 1 < len(starts) else total
        order = np.argsort(key[begin:end]) + begin
        # equal keys (rare: a tie in 40-odd hash bits) in row order, as a stable sort leaves them
        run = 0
        for i in range(1, len(order) + 1):
            if i < len(order) and key[order[i]] == key[order[run]]:
                continue
            if i - run > 1:
                order[run:i] = np.sort(order[run:i])
            run = i
        for i in range(len(order)):
            a = members[order[i]]
            b = members[order[i + 1]] if i + 1 < len(order) else members[order[0]]
            if a != b:
                codes[out] = min(a, b) * n + max(a, b)
                out += 1
    return codes[:out]


def _hub_candidates(entity_codes: np.ndarray, idx: np.ndarray, n: int, partners: int, seed: int) -> np.ndarray:
    """The hubs' candidate pairs (see :func:`_hub_cycles`) as sorted codes ``a·n + b``, ``a < b``. Half
    the cycles are laid on a second thread (the compiled loop releases the GIL); the codes are sorted
    after, so how they were split changes nothing."""
    half = partners // 2
    with ThreadPoolExecutor(max_workers=1) as pool:
        other = pool.submit(_hub_cycles, entity_codes, idx, half, seed, n)
        mine = _hub_cycles(entity_codes, idx, partners, seed, n, first=half)
        return sorted_values(np.concatenate([other.result(), mine]))


# ---------------------------------------------------------------- projection
def project(
    accounts: pl.DataFrame, evidence: pl.DataFrame, settings: DetectSettings, threshold: float | None = None
) -> pl.DataFrame:
    """Account pairs (a < b) whose combined surprisal (``weight``, nats) reaches ``threshold``: by
    default :func:`~linkage.chance.link_threshold`, the level chance links cannot percolate at.
    ``activity`` is the lockstep part of it."""
    n = accounts.height
    type_names = sorted(settings.type_weights)
    type_code = {t: i for i, t in enumerate(type_names)}
    ev = in_entity_order(evidence).with_columns(
        pl.col("type").replace_strict(type_code, return_dtype=pl.Int32).alias("type_code")
    )
    idx = ev["idx"].to_numpy().astype(np.int64)
    key = ev["entity_key"].to_numpy()
    entity_code = np.cumsum(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
    value = ev["value"].to_numpy()
    types = ev["type_code"].to_numpy()
    degree = ev["degree"].to_numpy()

    small = degree <= settings.hub_size
    # hubs: random cycles give candidates; their weight is computed from everything they share
    h_rows = np.flatnonzero(~small)
    # only hubs that could matter propose pairs; weak ones still add weight to pairs proposed by others
    link_at = link_threshold(n, settings.chance_links_per_account) if threshold is None else threshold
    proposing = h_rows[value[h_rows] >= settings.hub_min_share * link_at]
    with ThreadPoolExecutor(max_workers=1) as pool:
        # drawn meanwhile on the other core (numpy's sorts release the GIL)
        hub_candidates = pool.submit(
            _hub_candidates, entity_code[proposing], idx[proposing], n, settings.hub_partners, settings.seed
        )
        # small entities: exact contributions of every pair
        s_rows = np.flatnonzero(small)
        boundaries = np.flatnonzero(np.r_[True, entity_code[s_rows][1:] != entity_code[s_rows][:-1]])
        sizes = np.diff(np.r_[boundaries, len(s_rows)])
        contrib_pair, a_rows = _clique_contributions(boundaries, sizes, s_rows, idx, n)
        # in pair order (stable: a pair's rows keep their order): the candidates' positions are then
        # looked up in one sweep instead of 7M random binary searches, and are already grouped by pair
        by_pair = stable_order(contrib_pair)
        contrib_pair = contrib_pair[by_pair]
        contrib_type = types[a_rows[by_pair]]
        contrib_value = value[a_rows[by_pair]]
        del by_pair
        hub_pairs = hub_candidates.result()
    # two sorted runs merged in one pass, which also places each contribution among the candidates
    candidates, position = _merge_distinct(contrib_pair, hub_pairs)
    log.info("projection: %d small-entity contributions, %d candidate pairs", len(contrib_pair), len(candidates))
    if len(candidates) == 0:
        return pl.DataFrame(schema=PAIR_SCHEMA)

    ca, cb = np.divmod(candidates, n)
    del candidates, hub_pairs, contrib_pair  # the largest arrays of the run: freed before weighing
    family_of = {t: f for f, members in settings.type_families.items() for t in members}
    families = sorted({family_of.get(t, t) for t in type_names})
    family_code = np.array([families.index(family_of.get(t, t)) for t in type_names], dtype=np.int64)
    surprisal, shared_families = pair_weights(
        n,
        ca,
        cb,
        Shared(position, contrib_type, contrib_value),
        Held(idx[h_rows], types[h_rows], entity_code[h_rows], value[h_rows]),
        TypeRules(
            _log_memberships(n, idx, types, ev["held"].to_numpy(), len(type_names)),
            family_code,
            len(families),
            settings.within_type_extra,
        ),
    )
    org = accounts["org_id"].cast(pl.Categorical).to_physical().cast(pl.Int64).fill_null(-1).to_numpy()
    timing_weight = settings.type_weights.get("ActivityWindow", 0.0)
    # the org discount, and what timing would have to add for the pair to link (pairs far short of it
    # need no exact figure): one compiled pass over the candidates, no temporaries over all of them
    discount, needed = _discount_and_needed(org, ca, cb, settings.org_discount, link_at, surprisal, timing_weight)
    timing, days = _lockstep(accounts, ca, cb, settings, needed) if timing_weight > 0 else _no_lockstep(len(ca))
    shared = surprisal
    surprisal = _with_timing(shared, timing, timing_weight, discount, shared_families)
    # Fisher's tail never exceeds the plain sum: only pairs whose sum reaches the threshold can link
    reach = np.flatnonzero(surprisal >= link_at)
    weight = fisher_log_tail(surprisal[reach], shared_families[reach])
    keep = reach[weight >= link_at]
    log.info("projection: %d of %d candidate pairs beyond chance (threshold %.1f nats)", len(keep), len(ca), link_at)
    # every step of a kept pair's weight, so that `linkage explain` shows the numbers used here
    return pl.DataFrame(
        {
            "a": ca[keep],
            "b": cb[keep],
            "weight": weight[weight >= link_at],
            "activity": timing[keep],
            "days": days[keep] * timing_weight,
            "shared": shared[keep],
            "discount": discount[keep],
            "surprisal": surprisal[keep],
            "families": shared_families[keep].astype(np.int64),
        },
        schema=PAIR_SCHEMA,
    )


def _no_lockstep(pairs: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(pairs), np.zeros(pairs)  # (two arrays: the first is weighted in place)


@kernel()
def _discount_and_needed(org, ca, cb, org_discount, link_at, surprisal, timing_weight):
    """Per candidate pair: the declared-org factor (``org_discount`` for two seats of one org, else 1)
    and ``(link_at / factor − surprisal) / timing_weight``, the lockstep that would link it (zeros
    when timing weighs nothing)."""
    discount = np.empty(len(ca))
    needed = np.zeros(len(ca))
    for p in range(len(ca)):
        of_a = org[ca[p]]
        discount[p] = org_discount if of_a >= 0 and of_a == org[cb[p]] else 1.0
        if timing_weight > 0:
            needed[p] = (link_at / max(discount[p], 1e-9) - surprisal[p]) / timing_weight
    return discount, needed


@kernel(writes=("timing", "families"))
def _with_timing(shared, timing, timing_weight, discount, families):
    """``(shared + timing × weight) × discount`` per pair; ``timing`` is weighted in place and a pair
    with any lockstep counts one more evidence family (``families``, in place)."""
    total = np.empty(len(shared))
    for p in range(len(shared)):
        timing[p] *= timing_weight
        total[p] = (shared[p] + timing[p]) * discount[p]
        if timing[p] > 0:
            families[p] += 1
    return total


def in_entity_order(evidence: pl.DataFrame) -> pl.DataFrame:
    """The memberships sorted by entity key, then account: as :func:`memberships` leaves them (checked
    in one pass, not sorted again: 6 M rows at incident scale), or sorted here."""
    return evidence if in_order(evidence, "entity_key", "idx") else evidence.sort("entity_key", "idx")


PAIR_SCHEMA = {
    "a": pl.Int64,  # account indices, a < b
    "b": pl.Int64,
    "weight": pl.Float64,  # Fisher's combined tail of `surprisal` over `families`: the link's weight (nats)
    "activity": pl.Float64,  # the lockstep (timing) part, before the org discount
    "days": pl.Float64,  # the part of `activity` that is the two lifetimes' coincidence
    "shared": pl.Float64,  # what the shared entities add, by type and family, less what chance explains
    "discount": pl.Float64,  # the declared-org factor (1 when the two are not seats of one org)
    "surprisal": pl.Float64,  # (shared + activity) × discount
    "families": pl.Int64,  # independent evidence families behind it (timing counts as one)
}


def _log_memberships(n_accounts: int, idx: np.ndarray, types: np.ndarray, held: np.ndarray, n_types: int) -> np.ndarray:
    """Per account and type, ln of the entities of that type it holds, shared or not (its degree in
    the null model)."""
    counts = np.ones(n_accounts * n_types)
    counts[idx * n_types + types] = held
    return np.log(np.maximum(counts, 1)).reshape(n_accounts, n_types)


@dataclass
class Shared:
    """Small-entity evidence already resolved to pairs: per row the candidate's position, the type, the value."""

    position: np.ndarray
    type_code: np.ndarray
    value: np.ndarray


@dataclass
class Held:
    """Hub memberships: per row the account, the type, the entity, the value."""

    member: np.ndarray
    type_code: np.ndarray
    entity: np.ndarray
    value: np.ndarray


@dataclass
class TypeRules:
    log_memberships: np.ndarray  # per account and type: ln of its memberships (what it meets others by)
    family_code: np.ndarray  # per type: its family (correlated types)
    n_families: int
    extra: float  # within a type or family, what the others add at most, as a share of the strongest


def pair_weights(
    n_accounts: int, ca: np.ndarray, cb: np.ndarray, shared: Shared, held: Held, rules: TypeRules
) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate pair's surprisal (nats) and the number of evidence families it comes from: its
    small-entity contributions plus the hubs both ends hold (at the lower of the two ends' values), combined
    per type (less what the two accounts' memberships make expected, see :mod:`linkage.chance`)
    and per family.

    Never expands a hub into its clique: a pair's shared hubs are found by looking up one end's hub
    list in the other's (see :func:`_weigh_pairs`)."""
    # (contributions usually arrive in pair order already: then neither the sort nor the gathers are needed)
    in_order = bool(np.all(shared.position[1:] >= shared.position[:-1]))
    by_pair = slice(None) if in_order else stable_order(shared.position)
    # each account's hubs as one run sorted by entity (entity codes are unique across types)
    hub_order = _order_by(held.member, held.entity)
    hub_start = np.r_[0, np.cumsum(np.bincount(held.member, minlength=n_accounts))].astype(np.int64)
    ca, cb = ca.astype(np.int64, copy=False), cb.astype(np.int64, copy=False)
    # the hubs numbered densely in entity order, in 32 bits: the kernel's marks then stay in a core's
    # cache (at incident scale 15k hubs among 360k entities: a fifth off the kernel's time)
    is_hub = np.zeros(int(held.entity.max(initial=-1)) + 1, bool)
    is_hub[held.entity] = True
    hub_code = (np.cumsum(is_hub) - 1).astype(np.int32)
    row_hub = hub_code[held.entity[hub_order]]
    row_value = held.value[hub_order].astype(np.float64, copy=False)
    fixed = (
        shared.position[by_pair].astype(np.int64, copy=False),
        shared.type_code[by_pair].astype(np.int64, copy=False),
        shared.value[by_pair].astype(np.float64, copy=False),
        hub_start,
        row_hub,
        row_value,
        *_per_hub(row_hub, held.type_code[hub_order], row_value, int(is_hub.sum())),
        rules.log_memberships,
        rules.family_code.astype(np.int64),
        rules.n_families,
        float(rules.extra),
    )
    # two halves on two threads (the kernel releases the GIL), cut where a group of ``ca`` starts;
    # each pair's weight is computed alone, so the result does not depend on the cut
    cut = int(np.searchsorted(ca, ca[len(ca) // 2])) if len(ca) >= PARALLEL_MIN_PAIRS else len(ca)
    halves = [slice(0, cut), slice(cut, len(ca))]
    # each half written in place: no per-pair index of the contributions, no copies of the halves
    # (arrays of every candidate pair are the projection's largest, and fresh memory costs to touch)
    weight, families = np.empty(len(ca)), np.empty(len(ca), np.int64)
    with ThreadPoolExecutor(max_workers=2) as pool:
        # (numba's stubs type a dispatcher's call with a bounded number of arguments)
        list(pool.map(lambda h: _weigh_pairs(ca[h], cb[h], h.start, *fixed, weight[h], families[h]), halves))  # type: ignore[call-arg]
    return weight, families


def _per_hub(
    row_hub: np.ndarray, row_type: np.ndarray, row_value: np.ndarray, n_hubs: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per hub: its type, its value, and whether its holders' values differ (an owned build is worth
    more between its workers than to the others holding it; every other hub is worth the same to
    all). The kernel then reads a shared hub's worth from these few thousand entries, held in a
    core's cache, and a holder's own value only where they differ: reading it for every shared hub
    cost a cache miss per pair (at incident scale one half of the kernel on one thread took
    6.1-6.5 s that way, 4.0-4.9 s this way)."""
    hub_type = np.zeros(n_hubs, np.int64)
    hub_type[row_hub] = row_type
    hub_value = np.zeros(n_hubs, np.float64)
    hub_value[row_hub] = row_value
    varies = np.zeros(n_hubs, np.bool_)
    varies[row_hub[row_value != hub_value[row_hub]]] = True
    return hub_type, hub_value, varies, n_hubs


@kernel()
def _merge_distinct(a, b):
    """(the distinct values of two ascending arrays, ascending; per value of ``a``, its position
    among them). One pass: at incident scale 29 M candidates from 7.6 M + 25 M values, where a
    stable sort of both, a distinct mask and a binary search per value of ``a`` took 4–5 s."""
    merged = np.empty(len(a) + len(b), np.int64)
    position = np.empty(len(a), np.int64)
    i = j = k = 0
    while i < len(a) or j < len(b):
        if j >= len(b) or (i < len(a) and a[i] <= b[j]):
            value = a[i]
        else:
            value = b[j]
        merged[k] = value
        while i < len(a) and a[i] == value:
            position[i] = k
            i += 1
        while j < len(b) and b[j] == value:
            j += 1
        k += 1
    return merged[:k].copy(), position


def _order_by(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``np.lexsort((second, first))`` for non-negative integers, as one sort of a packed key when both fit."""
    bits = [max(int(values.max(initial=0)).bit_length(), 1) for values in (first, second)]
    if sum(bits) > 64:
        return np.lexsort((second, first))
    return stable_order((first.astype(np.uint64) << np.uint64(bits[1])) | second.astype(np.uint64))


@kernel(writes=("weight", "families"))
def _weigh_pairs(
    ca,
    cb,
    first_pair,
    shared_position,
    shared_type,
    shared_value,
    hub_start,
    hub_code,
    row_value,
    hub_type,
    hub_value,
    hub_varies,
    n_hubs,
    log_memberships,
    family_code,
    n_families,
    extra,
    weight,
    families,
):
    """Compiled loop behind :func:`pair_weights` (arrays prepared there). Shared entities of one type,
    or of types of one family, are correlated (users of one framework share all its templates): in
    each, the strongest counts in full and the rest add at most ``extra`` of it. A type's surprisal
    is reduced by what the two accounts' memberships of that type make expected.

    Candidates come grouped by ``ca``: the hubs of ``ca`` are marked once per group, and each
    partner's hubs are looked up in the marks (its list in entity order, so sums keep one order).
    ``hub_code``: each hub row's hub, numbered densely in entity order (``n_hubs`` of them);
    ``row_value``: each hub row's value; ``hub_type``, ``hub_value``, ``hub_varies``: per hub (see
    :func:`_per_hub`).
    ``first_pair``: the number of the first of these candidates among all (``shared_position``,
    ascending, numbers each contribution's pair so). Fills ``weight`` and ``families``."""
    n_types = len(family_code)
    k = np.searchsorted(shared_position, first_pair)  # the first contribution to these pairs
    sums, maxima = np.zeros(n_types), np.zeros(n_types)
    strongest, total = np.zeros(n_families), np.zeros(n_families)
    marked_at = np.full(n_hubs, -1, np.int32)  # (a hub's row among the marked account's, or -1)
    marked = -1
    # pairs come in blocks: a block's hub lists and membership rows are loaded first, each load
    # independent of the others (many cache misses in flight at once, where weighing a pair waits
    # for its own), then its pairs are weighed. A third off the loop at incident scale
    b_start, b_end = np.empty(_PREFETCH_BLOCK, np.int64), np.empty(_PREFETCH_BLOCK, np.int64)
    touched = 0.0
    for p in range(len(ca)):
        if p % _PREFETCH_BLOCK == 0:
            last = min(p + _PREFETCH_BLOCK, len(ca))
            for q in range(p, last):
                b_start[q - p] = hub_start[cb[q]]
                b_end[q - p] = hub_start[cb[q] + 1]
            for q in range(p, last):
                for j in range(b_start[q - p], b_end[q - p], 16):  # (16 codes to a cache line)
                    touched += hub_code[j]
                touched += log_memberships[cb[q], 0] + log_memberships[cb[q], n_types - 1]
                touched += log_memberships[ca[q], 0]
        if ca[p] != marked:
            if marked >= 0:
                for i in range(hub_start[marked], hub_start[marked + 1]):
                    marked_at[hub_code[i]] = -1
            marked = ca[p]
            for i in range(hub_start[marked], hub_start[marked + 1]):
                marked_at[hub_code[i]] = i
        sums[:] = 0.0
        maxima[:] = 0.0
        weight[p] = 0.0
        families[p] = 0
        while k < len(shared_position) and shared_position[k] == first_pair + p:
            t = shared_type[k]
            sums[t] += shared_value[k]
            maxima[t] = max(maxima[t], shared_value[k])
            k += 1
        for j in range(b_start[p % _PREFETCH_BLOCK], b_end[p % _PREFETCH_BLOCK]):
            h = hub_code[j]
            i = marked_at[h]
            if i >= 0:
                # a hub is worth the same to all its holders, but an owned build only between workers
                t = hub_type[h]
                worth = min(row_value[i], row_value[j]) if hub_varies[h] else hub_value[h]
                sums[t] += worth
                maxima[t] = max(maxima[t], worth)
        strongest[:] = 0.0
        total[:] = 0.0
        for t in range(n_types):
            if maxima[t] <= 0.0:
                continue
            value = (
                maxima[t]
                + extra * min(sums[t] - maxima[t], maxima[t])
                - log_memberships[ca[p], t]
                - log_memberships[cb[p], t]
            )
            if value <= 0.0:
                continue
            f = family_code[t]
            strongest[f] = max(strongest[f], value)
            total[f] += value
        for f in range(n_families):
            if strongest[f] > 0.0:
                weight[p] += strongest[f] + extra * min(total[f] - strongest[f], strongest[f])
                families[p] += 1
    return touched  # (what the loads ahead read: returned, so the compiler keeps them)


def _lockstep(
    accounts: pl.DataFrame, ca: np.ndarray, cb: np.ndarray, settings: DetectSettings, needed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate pair, the surprisal of how alike the two accounts' active time windows are
    (MinHash agreement against what independent accounts of this run would show), and the part of
    it that is their lifetimes' coincidence (the days both lived in, weighed against the run's own
    lifetimes; :func:`~linkage.chance.shared_days_surprisal`)."""
    signatures = accounts["activity_signature"]
    has = signatures.is_not_null().to_numpy()
    width = ACTIVITY_SIGNATURE_SIZE
    matrix = np.zeros((accounts.height, width), dtype=np.int32)
    if not has.any() or len(ca) == 0:
        return _no_lockstep(len(ca))
    matrix[has] = signatures.filter(signatures.is_not_null()).list.to_array(width).to_numpy().astype(np.int32)
    windows = window_counts(matrix, has)
    lifetimes = Lifetimes.of(accounts, has, settings.activity_window_minutes)

    def total_windows_of(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(W, an integer naming it) per pair."""
        if lifetimes is None:
            return np.full(len(a), float(windows.max(initial=1.0))), np.zeros(len(a), np.int64)
        return pair_windows(lifetimes.first_window, lifetimes.last_window, windows, a, b, _LIFETIME_STEPS_PER_OCTAVE)

    def agreement_of(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = a.astype(np.int64, copy=False), b.astype(np.int64, copy=False)
        # two halves on two threads (the loop releases the GIL): 1.7 s of one core for 27M candidates
        agreement, halves = np.empty(len(a)), (slice(0, len(a) // 2), slice(len(a) // 2, len(a)))
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda h: _signature_agreement(matrix, has, a[h], b[h], agreement[h]), halves))
        return agreement

    calibration = lockstep_calibration(
        agreement_of, windows, has, lambda a, b: total_windows_of(a, b)[0], settings.seed
    )
    agreement = agreement_of(ca, cb)
    # pairs agreeing nowhere have no lockstep: only the others are weighed (at incident scale the
    # per-pair temporaries of all 29M candidates were the run's peak memory)
    agreeing = np.flatnonzero(agreement > 0)
    surprisal, days = np.zeros(len(ca)), np.zeros(len(ca))
    if len(agreeing):
        a, b = ca[agreeing], cb[agreeing]
        total, total_step = total_windows_of(a, b)
        if lifetimes is not None:
            days[agreeing] = shared_days_surprisal(lifetimes.first_day, lifetimes.last_day, has, a, b)
        surprisal[agreeing] = days[agreeing] + lockstep_surprisal(
            agreement[agreeing],
            windows[a],
            windows[b],
            total,
            calibration,
            width,
            None if needed is None else needed[agreeing] - days[agreeing],
            _lockstep_classes(agreement[agreeing], width, windows, total_step, a, b),
        )
    return surprisal, days


_LIFETIME_STEPS_PER_OCTAVE = 16  # a pair's W within 2.2 % (pairs of one schedule keep one class)
_MINUTES_A_DAY = 24 * 60


@dataclass(frozen=True)
class Lifetimes:
    """Per account, its first and last active window and day, counted from the run's first request."""

    first_window: np.ndarray
    last_window: np.ndarray
    first_day: np.ndarray
    last_day: np.ndarray

    @classmethod
    def of(cls, accounts: pl.DataFrame, has: np.ndarray, window_minutes: int) -> Lifetimes | None:
        """None without ``first_seen``/``last_seen``, or without activity."""
        if "last_seen" not in accounts.columns or not has.any():
            return None
        start = accounts["first_seen"].min()
        since = accounts.select(
            *[(pl.col(c) - pl.lit(start)).dt.total_minutes().fill_null(0).alias(c) for c in ("first_seen", "last_seen")]
        )
        first, last = (since[c].to_numpy().astype(np.int64) for c in ("first_seen", "last_seen"))
        return cls(first // window_minutes, last // window_minutes, first // _MINUTES_A_DAY, last // _MINUTES_A_DAY)


def _lockstep_classes(
    agreement: np.ndarray, width: int, windows: np.ndarray, total_step: np.ndarray, a: np.ndarray, b: np.ndarray
) -> np.ndarray | None:
    """Per pair, one integer for its agreement, its two ends' window counts and its ``W`` (named by
    its step on :func:`~linkage.chance.pair_windows`' grid; see
    :func:`~linkage.chance.lockstep_surprisal`), or None when they do not fit in 63 bits."""
    window_code = np.unique(windows, return_inverse=True)[1].astype(np.int64)
    total_code = total_step - total_step.min(initial=0)
    agree_bits, code_bits = int(width).bit_length(), max(int(window_code.max(initial=0)).bit_length(), 1)
    total_bits = max(int(total_code.max(initial=0)).bit_length(), 1)
    if agree_bits + 2 * code_bits + total_bits > 63:
        return None
    agree = np.rint(agreement * width).astype(np.int64)
    return (
        agree
        | (window_code[a] << agree_bits)
        | (window_code[b] << (agree_bits + code_bits))
        | (total_code << (agree_bits + 2 * code_bits))
    )


@kernel(writes=("agreement",))
def _signature_agreement(matrix, has, ca, cb, agreement=None):
    """Per pair, the share of signature positions on which both accounts agree (0 unless both have
    a signature): one pass, no gathered copies of the signature rows. Written into ``agreement``
    when given (a slice of a larger result), else into a new array."""
    width = matrix.shape[1]
    if agreement is None:
        agreement = np.empty(len(ca))
    for p in range(len(ca)):
        a, b = ca[p], cb[p]
        agreement[p] = 0.0
        if has[a] and has[b]:
            same = 0
            for k in range(width):
                same += matrix[a, k] == matrix[b, k]
            agreement[p] = same / width
    return agreement


# a build most of whose holders are one org's seats, billed as one customer, is that org's own tool
_ORG_TOOL_SHARE = 0.5
# an operation's own build is mostly its workers': of world B's campaign builds' holders 83-99 % act
# like the others at the mark; a build a campaign shares with customers who act somewhat like it
# (fresh seed 154: 38 % of the holders, at 0.34 on the median) has at most 63 %
_OWNED_SHARE = 0.75
# a worker acts like the build's other holders at least half as alike as the mark: of world B's
# campaign builds' holders 1-27 per build fall under the mark itself, 0-3 under half of it; a
# customer who merely uses the build sits near 0
_WORKER_SHARE = 0.5
# what an operation's tool is read beyond, per entity type: its holders' behaviour without what the
# tool itself makes alike. A client build makes its holders' client alike; a scaffold their templates
# and their clients (one tool sends it) and their input lengths (a long scaffold is a long prompt:
# without that, strangers on one popular agent template read as one operation on the simulator)
TOOLS = {"Device": ("client",), "PromptTemplate": ("client", "template", "input_length")}


def owned_tools(
    evidence: pl.DataFrame,
    beyond_tool: Profiles,
    billed_orgs: pl.DataFrame,
    hub_size: int,
    alike_at_least: float,
    entity_type: str = "Device",
) -> pl.DataFrame:
    """The tools (client builds or scaffolds) one operation runs, and which of their holders are its
    workers: hubs of ``entity_type`` three in four of whose holders each act, beyond the tool they
    share, more like the others than like strangers, and which are not mostly one org's seats; of
    their holders, those who act like the others.

    A hub is weak evidence between any two of its holders: thousands of strangers share an SDK
    default or a popular agent template. At scale the same weakness hides a fleet. World B's
    rotating-proxy workers share nothing rarer than one custom build nobody else uses, so most of
    them were in no ring at all, each riskier on its own than all but 0.1 % of the benign accounts
    in no ring; without client fingerprints the same fleet shares nothing rarer than its scaffolds.
    What tells an operation's tool from a popular one is its holders: strangers who share a client
    or a template act, in everything else, like any two of the run's accounts (``alike`` ≈ 0 on the
    run's own scale, :mod:`~linkage.behaviour`); an operation's workers run one scaffold set on one
    model for answers of one length. A customer who happens to use the operation's tool acts like
    nobody there, and only the holders who act like the others are read as its workers. An org's
    own tooling is shared by right (the contract), so a tool most of whose holders are one
    customer's seats is never owned.

    Parameters
    ----------
    evidence : the memberships (:func:`memberships`): ``account_id, entity_key, type, degree``.
    beyond_tool : the accounts' profiles without what the tool makes alike (:data:`TOOLS`,
        :func:`~linkage.behaviour.profiles`).
    billed_orgs : ``account_id, org_id`` where seats are billed as one customer (:func:`one_customer_orgs`).
    hub_size : tools held by more accounts than this are hubs.
    alike_at_least : how alike (0: strangers of this run, 1: identical) each holder must act with the
        others, three in four holders for the tool to be owned; each worker at least half as alike.
    entity_type : ``Device`` (client builds) or ``PromptTemplate`` (scaffolds).

    Returns
    -------
    ``entity_key, account_id``: each owned tool with each of its workers, sorted.
    """
    # one group per tool, named ring_id as the behaviour functions name their groups (its integer key)
    hubs = _hub_tools(evidence, hub_size, entity_type).select(
        pl.col("entity_key").alias("ring_id"), "entity_key", "account_id"
    )
    seats = (
        hubs.join(billed_orgs.filter(pl.col("org_id").is_not_null()), on="account_id")
        .group_by("ring_id", "org_id")
        .len("seats")
        .group_by("ring_id")
        .agg(pl.col("seats").max())
    )
    each = member_alike(beyond_tool, hubs.select("ring_id", "account_id")).drop_nulls("alike")
    owned = (
        each.group_by("ring_id")
        .agg(
            pl.len().alias("holders"),
            (pl.col("alike") >= alike_at_least).mean().alias("alike_share"),
        )
        .join(seats, on="ring_id", how="left")
        .filter(
            (pl.col("alike_share") >= _OWNED_SHARE)
            & (pl.col("seats").fill_null(0) < _ORG_TOOL_SHARE * pl.col("holders"))
        )
        .select("ring_id")
    )
    return (
        each.join(owned, on="ring_id")
        .filter(pl.col("alike") >= _WORKER_SHARE * alike_at_least)
        .join(hubs, on=["ring_id", "account_id"])
        .select("entity_key", "account_id")
        .sort("entity_key", "account_id")
    )


def _hub_tools(evidence: pl.DataFrame, hub_size: int, entity_type: str) -> pl.DataFrame:
    """The memberships of the ``entity_type`` entities held by more than ``hub_size`` accounts."""
    return evidence.filter((pl.col("degree") > hub_size) & (pl.col("type") == entity_type))


def valued_as_owned(evidence: pl.DataFrame, owned: pl.DataFrame | None) -> pl.DataFrame:
    """The memberships with each worker's membership of its owned tool (:func:`owned_tools`) valued
    as the rarest entity of the type. A hub is worth the lower of its two holders' values
    (:func:`_weigh_pairs`), so the tool is worth that much only between two workers."""
    if owned is None or owned.height == 0:
        return evidence
    # a few tools among millions of memberships: find their rows first, then the workers' among them
    rows = (
        evidence.select("entity_key", "account_id", "type")
        .with_row_index("row")
        .filter(pl.col("entity_key").is_in(owned["entity_key"].unique().implode()))
        .join(owned, on=["entity_key", "account_id"], how="semi")
    )
    rarest = (
        evidence.filter(pl.col("type").is_in(rows["type"].unique().implode()))
        .group_by("type")
        .agg(pl.col("value").max().alias("rarest"))
    )
    rows = rows.join(rarest, on="type")
    value = evidence["value"].to_numpy().copy()
    at = rows["row"].to_numpy()
    value[at] = np.maximum(value[at], rows["rarest"].to_numpy())
    return evidence.with_columns(pl.Series("value", value))


def _owned_tools_of(
    graph: Graph, accounts: pl.DataFrame, evidence: pl.DataFrame, settings: DetectSettings
) -> pl.DataFrame | None:
    """:func:`owned_tools` of the run, builds and scaffolds (the scaffolds' workers no client build
    links, :func:`_carried_by_a_client`), or None when the settings are off or the run has no hub of
    either (the profiles are not built then)."""
    billed = accounts.select("account_id", "org_id")
    scaffold_mark = None if settings.owned_scaffolds is False else settings.owned_scaffold_alike
    # the two readings are independent: one on a second thread (their polars work releases the GIL)
    with ThreadPoolExecutor(max_workers=1) as pool:
        of_scaffolds = pool.submit(_owned_of_type, graph, evidence, billed, settings, "PromptTemplate", scaffold_mark)
        builds = _owned_of_type(graph, evidence, billed, settings, "Device", settings.owned_build_alike)
        scaffolds = of_scaffolds.result()
    if scaffolds is not None and settings.owned_scaffolds is None:
        scaffolds = scaffolds.join(
            _carried_by_a_client(evidence, builds, settings.hub_size), on="account_id", how="anti"
        )
    found = [owned for owned in (builds, scaffolds) if owned is not None and owned.height]
    return pl.concat(found).sort("entity_key", "account_id") if found else None


def _owned_of_type(
    graph: Graph,
    evidence: pl.DataFrame,
    billed: pl.DataFrame,
    settings: DetectSettings,
    entity_type: str,
    mark: float | None,
) -> pl.DataFrame | None:
    """:func:`owned_tools` of one type, or None where its mark is off or the run has no hub of it."""
    if mark is None or _hub_tools(evidence, settings.hub_size, entity_type).height == 0:
        return None
    return owned_tools(
        evidence, profiles(graph, without=TOOLS[entity_type]), billed, settings.hub_size, mark, entity_type
    )


def _carried_by_a_client(evidence: pl.DataFrame, owned_builds: pl.DataFrame | None, hub_size: int) -> pl.DataFrame:
    """``account_id`` of the accounts a client build links to their scaffolds' other workers: a build
    held by a few accounts (not a hub), two or more and at least half of whose holders work one hub
    scaffold with them, or an owned build they work. A scaffold is read for the others only
    (``detect.owned_scaffolds`` unset): an operation whose accounts each have a client of their own,
    or none, shares nothing rarer than its scaffolds; one that shares its build is linked by it, and
    reading its scaffolds as well moved world B by noise only. A build shared mostly with strangers
    links no worker: where every client fingerprint was one of a few shared by ~35 random accounts,
    campaign c of world B 104 lost its owned scaffolds (recall 0.67 in 82 rings, against 0.96 with
    no fingerprints)."""
    rare = evidence.filter((pl.col("type") == "Device") & (pl.col("degree") <= hub_size)).select(
        "account_id", pl.col("entity_key").alias("build"), "degree"
    )
    scaffolds = evidence.filter((pl.col("type") == "PromptTemplate") & (pl.col("degree") > hub_size)).select(
        "account_id", pl.col("entity_key").alias("scaffold")
    )
    both = rare.join(scaffolds, on="account_id")
    # the build's holders are mostly the scaffold's workers: a fleet's build, not a stranger's
    together = (
        both.group_by("build", "scaffold")
        .agg(pl.len().alias("workers"), pl.col("degree").first())
        .filter((pl.col("workers") >= 2) & (2 * pl.col("workers") >= pl.col("degree")))
    )
    linked = both.join(together, on=["build", "scaffold"], how="semi").select("account_id")
    workers = owned_builds.select("account_id") if owned_builds is not None else linked.head(0)
    return pl.concat([linked, workers]).unique()


# ---------------------------------------------------------------- communities
def leiden(
    n: int,
    pairs: pl.DataFrame,
    settings: DetectSettings,
    worker: LeidenProcess | None = None,
    meanwhile: Callable[[], object] | None = None,
) -> np.ndarray:
    """Community per account index (-1 for accounts with no kept link). Seeded: same input, same output.

    ``worker``: where the partition is computed (:class:`~linkage.partition.LeidenProcess`; by
    default in this process); ``meanwhile`` is called while it is."""
    membership = np.full(n, -1, dtype=np.int64)
    if pairs.height == 0:
        if meanwhile is not None:
            meanwhile()
        return membership
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    linked = np.zeros(n, bool)
    linked[a] = linked[b] = True
    nodes = np.flatnonzero(linked)  # linked accounts, numbered densely in index order
    number = np.cumsum(linked) - 1
    # CPM: a community is worth keeping only while its internal link weight beats ``resolution`` per
    # pair of members; weights are in units of the link threshold, so the resolution reads as the
    # least density of minimally significant links a ring must have. Unlike modularity it has no
    # resolution limit (small dense rings are not merged into big sparse ones) and no pull from the
    # graph's total size (a ring does not grow because the run is large)
    weight = pairs["weight"].to_numpy() / link_threshold(n, settings.chance_links_per_account)
    graph = LeidenGraph(len(nodes), number[a], number[b], weight)
    partitioned = (worker or LeidenProcess(start=False)).run(
        graph, settings.resolution, settings.leiden_iterations, settings.seed
    )
    if meanwhile is not None:
        meanwhile()
    membership[nodes] = partitioned()
    return membership


def merge_close_communities(membership: np.ndarray, pairs: pl.DataFrame, ratio: float) -> np.ndarray:
    """Re-join communities that Leiden split although they are about as tied to each other as within.

    Modularity compares a cut with what the whole graph's size makes expected, so in a small
    graph it cuts a ring along its cards; two parts whose mutual weight reaches ``ratio`` × the
    internal weight of the smaller part are one operation."""
    if pairs.height == 0 or ratio <= 0:
        return membership
    a, b, w = pairs["a"].to_numpy(), pairs["b"].to_numpy(), pairs["weight"].to_numpy()
    ca, cb = membership[a], membership[b]
    inside = ca == cb
    internal = np.bincount(ca[inside], weights=w[inside], minlength=membership.max() + 1)
    lo, hi = np.minimum(ca[~inside], cb[~inside]), np.maximum(ca[~inside], cb[~inside])
    if len(lo) == 0:
        return membership
    key = lo * (membership.max() + 1) + hi
    keys = sorted_unique(key)
    inverse = np.searchsorted(keys, key)
    between = np.bincount(inverse, weights=w[~inside])
    left, right = keys // (membership.max() + 1), keys % (membership.max() + 1)
    close = between >= ratio * np.minimum(internal[left], internal[right])
    parent = np.arange(membership.max() + 1)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in zip(left[close], right[close]):  # over community pairs, not accounts: few
        rx, ry = find(int(x)), find(int(y))
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    roots = np.array([find(int(c)) for c in range(len(parent))])
    merged = membership.copy()
    linked = membership >= 0
    merged[linked] = roots[membership[linked]]
    return merged


def prune_weak_members(communities: pl.DataFrame, pairs: pl.DataFrame, min_attachment: float) -> pl.DataFrame:
    """Drop members tied to their community much more weakly than its typical member.

    Leiden must place every linked account somewhere; a bystander whose home address was resold
    as a proxy exit has one modest link into a dense ring and lands in it. Membership should mean
    being tied like the others, so members below ``min_attachment`` × the community's median
    internal strength are let go."""
    if communities.height == 0 or min_attachment <= 0:
        return communities
    ring = communities.select("idx", "community")
    edges = (
        pairs.join(ring.rename({"idx": "a", "community": "ca"}), on="a")
        .join(ring.rename({"idx": "b", "community": "cb"}), on="b")
        .filter(pl.col("ca") == pl.col("cb"))
    )
    ends = pl.concat(
        [edges.select(pl.col("a").alias("idx"), "weight"), edges.select(pl.col("b").alias("idx"), "weight")]
    )
    strength = ends.group_by("idx").agg(pl.col("weight").sum().alias("strength"))
    scored = communities.join(strength, on="idx", how="left").with_columns(pl.col("strength").fill_null(0.0))
    keep = pl.col("strength") >= min_attachment * pl.col("strength").median().over("community")
    return scored.filter(keep).drop("strength")


def detect(
    graph: Graph,
    settings: DetectSettings,
    clock: StageClock | None = None,
    meanwhile: Callable[[Detection], object] | None = None,
) -> Detection:
    """Memberships → projection → Leiden → clean-up; ``clock`` times each as ``detect/…``.

    ``meanwhile`` is called while Leiden runs, with the detection so far (no communities yet): on a
    large run (``leiden_process_min_accounts``) Leiden has a process of its own, started here so
    that it has booted by the time it is needed."""
    clock = clock or StageClock()
    large = graph.nodes["Account"].height >= settings.leiden_process_min_accounts
    with LeidenProcess(start=large) as worker:
        with clock.stage("detect/memberships"):
            accounts, evidence = memberships(graph, settings)
        with clock.stage("detect/projection"):
            owned = _owned_tools_of(graph, accounts, evidence, settings)
            evidence = valued_as_owned(evidence, owned)
            pairs = project(accounts, evidence, settings)
        so_far = Detection(accounts, evidence, pairs, _NO_COMMUNITIES, owned)
        with clock.stage("detect/leiden"):
            community = leiden(
                accounts.height, pairs, settings, worker, None if meanwhile is None else lambda: meanwhile(so_far)
            )
    with clock.stage("detect/clean_up"):
        community = merge_close_communities(community, pairs, settings.merge_ratio)
        frame = accounts.select("idx", "account_id").with_columns(pl.Series("community", community))
        frame = prune_weak_members(frame.filter(pl.col("community") >= 0), pairs, settings.min_attachment)
        sizes = frame.group_by("community").len()
        frame = frame.join(sizes.filter(pl.col("len") >= settings.min_ring_size), on="community").drop("len")
    return Detection(
        accounts=accounts,
        memberships=evidence,
        pairs=pairs,
        communities=frame.select("account_id", "idx", "community").sort("community", "account_id"),
        owned=owned,
    )
