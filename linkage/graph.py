"""Stage 3 — graph: the heterogeneous graph as typed columnar tables.

Nodes per label and relationships per type (``src``, ``dst``, ``count``, ``first_seen``,
``last_seen``). These are the tables the embedded store writes as Parquet and the Neo4j
store loads, so both stores hold exactly the same graph.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numba
import numpy as np
import polars as pl

from .kernels import kernel
from .schema import PROXY_IP_TYPES
from .templates import TemplateResult

ACTIVITY_SIGNATURE_SIZE = 16


@dataclass(frozen=True)
class NodeSpec:
    label: str
    key: str


@dataclass(frozen=True)
class RelSpec:
    type: str
    src: NodeSpec
    dst: NodeSpec


ACCOUNT = NodeSpec("Account", "account_id")
INSTRUMENT = NodeSpec("PaymentInstrument", "instrument_id")
IP = NodeSpec("IP", "ip")
SUBNET = NodeSpec("Subnet", "subnet")
ASN = NodeSpec("ASN", "asn")
DEVICE = NodeSpec("Device", "device_id")
TEMPLATE = NodeSpec("PromptTemplate", "template_id")
ORG = NodeSpec("Org", "org_id")
EMAIL_DOMAIN = NodeSpec("EmailDomain", "domain")
MODEL = NodeSpec("Model", "model")
NODE_SPECS = (ACCOUNT, INSTRUMENT, IP, SUBNET, ASN, DEVICE, TEMPLATE, ORG, EMAIL_DOMAIN, MODEL)

_UTC_MS = pl.Datetime("ms", "UTC")
# Node properties an input may leave null on every node (its optional columns: a run without org_id,
# ASN, IP type or token counts). A store that keeps no nulls (Neo4j drops a property set to null)
# gives such a column back absent; :func:`with_optional_properties` restores it, typed.
OPTIONAL_PROPERTIES: dict[str, dict[str, pl.DataType]] = {
    "Account": {
        "email": pl.Utf8(),
        "email_domain": pl.Utf8(),
        "org_id": pl.Utf8(),
        "country": pl.Utf8(),
        "signup_ip": pl.Utf8(),
        "first_seen": _UTC_MS,
        "last_seen": _UTC_MS,
        "input_tokens": pl.Int64(),
        "output_tokens": pl.Int64(),
        "activity_signature": pl.List(pl.Int64),
    },
    "IP": {"subnet": pl.Utf8(), "asn": pl.Int64(), "ip_type": pl.Utf8()},
    "PaymentInstrument": {"instrument_type": pl.Utf8(), "bin": pl.Utf8(), "issuer_country": pl.Utf8()},
    "PromptTemplate": {"repeated_by": pl.Int64()},
}

REL_SPECS = (
    RelSpec("PAID_WITH", ACCOUNT, INSTRUMENT),
    RelSpec("USED_IP", ACCOUNT, IP),
    RelSpec("SIGNED_UP_FROM", ACCOUNT, IP),
    RelSpec("USED_DEVICE", ACCOUNT, DEVICE),
    RelSpec("SENT_TEMPLATE", ACCOUNT, TEMPLATE),
    RelSpec("IN_ORG", ACCOUNT, ORG),
    RelSpec("HAS_EMAIL_DOMAIN", ACCOUNT, EMAIL_DOMAIN),
    RelSpec("USED_MODEL", ACCOUNT, MODEL),
    RelSpec("IN_SUBNET", IP, SUBNET),
    RelSpec("ROUTED_BY", IP, ASN),
)
REL_BY_TYPE = {r.type: r for r in REL_SPECS}
REL_COLUMNS = ("src", "dst", "count", "first_seen", "last_seen")


@dataclass
class Graph:
    nodes: dict[str, pl.DataFrame] = field(default_factory=dict)
    rels: dict[str, pl.DataFrame] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            "nodes": {k: v.height for k, v in self.nodes.items()},
            "relationships": {k: v.height for k, v in self.rels.items()},
        }


def daily_requests(requests: pl.DataFrame, keys: RequestKeys | None = None) -> pl.DataFrame:
    """Requests per account and UTC day (the report's timelines): one small table, not the log, in
    account and day order. ``keys``: the log's :class:`RequestKeys`, when already made; the days are
    then grouped account by account as every relationship is, not by a group-by of the whole log."""
    if requests.height == 0:
        return pl.DataFrame(schema={"account_id": pl.Utf8, "day": pl.Date, "requests": pl.UInt32})
    keys = RequestKeys.of(requests) if keys is None else keys
    unit = requests.schema["ts"]
    per_day = {"ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}[getattr(unit, "time_unit", "ms")]
    day = keys.ts_by_account // per_day  # (floor: a day before 1970 is negative)
    first = int(day.min()) if len(day) else 0
    offset = day - first
    account, offset, count, _, _ = _pair_groups_by_account(
        keys.account_starts, offset, keys.ts_by_account, int(offset.max(initial=0)) + 1
    )
    return pl.DataFrame(
        {
            "account_id": keys.accounts.text.gather(account),
            "day": (offset + first).astype(np.int32),
            "requests": count.astype(np.uint32),
        }
    ).with_columns(pl.col("day").cast(pl.Date))


def graph_delta(current: Graph, previous: Graph) -> Graph:
    """Rows of ``current`` that ``previous`` lacks or held with other values: what an incremental
    load must write (MERGE makes writing them again harmless, so any superset is also correct)."""
    delta = Graph()
    for kind in ("nodes", "rels"):
        for name, frame in getattr(current, kind).items():
            old = getattr(previous, kind).get(name)
            if old is None or old.columns != frame.columns:
                getattr(delta, kind)[name] = frame
                continue
            row_hash = pl.struct(pl.all()).hash(3).alias("_row_hash")
            seen = old.select(row_hash)
            getattr(delta, kind)[name] = (
                frame.with_columns(row_hash).join(seen, on="_row_hash", how="anti").drop("_row_hash")
            )
    return delta


def graph_removals(current: Graph, previous: Graph) -> Graph:
    """Keys that ``previous`` held and ``current`` no longer does: nodes by their key, relationships by
    (src, dst). With :func:`graph_delta`, what turns a store holding ``previous`` into ``current``."""
    removed = Graph()
    for spec in NODE_SPECS:
        old, new = previous.nodes.get(spec.label), current.nodes.get(spec.label)
        if old is not None and old.height:
            keys = old.select(spec.key)
            removed.nodes[spec.label] = (
                keys if new is None else keys.join(new.select(spec.key), on=spec.key, how="anti")
            )
    for rel in REL_SPECS:
        old, new = previous.rels.get(rel.type), current.rels.get(rel.type)
        if old is not None and old.height:
            pairs = old.select("src", "dst")
            removed.rels[rel.type] = (
                pairs if new is None else pairs.join(new.select("src", "dst"), on=["src", "dst"], how="anti")
            )
    return removed


def _text(frame: pl.DataFrame) -> pl.DataFrame:
    """Categorical columns back to text, for the (small, aggregated) graph tables."""
    return frame.with_columns(
        [pl.col(c).cast(pl.Utf8) for c, t in frame.schema.items() if isinstance(t, pl.Categorical)]
    )


def _rel(frame: pl.DataFrame, src: str, dst: str, ts: str | None = None) -> pl.DataFrame:
    """Aggregate (src, dst) pairs with count and first/last time, ordered by (src, dst)."""
    time = pl.col(ts) if ts else pl.lit(None, pl.Datetime("ms", "UTC"))
    grouped = (
        frame.lazy()
        .filter(pl.col(src).is_not_null() & pl.col(dst).is_not_null())
        .group_by(pl.col(src).alias("src"), pl.col(dst).alias("dst"))
        .agg(pl.len().cast(pl.Int64).alias("count"), time.min().alias("first_seen"), time.max().alias("last_seen"))
        .collect(engine="streaming")
    )
    return _text(grouped).sort("src", "dst")


@dataclass(frozen=True)
class TextRanks:
    """A categorical column's distinct values in text order: ``rank[code]`` is a value's place
    (:data:`NO_RANK` for codes not in the column, and for null), ``text`` the values in that order."""

    rank: np.ndarray
    text: pl.Series

    @classmethod
    def of(cls, values: pl.Series) -> TextRanks:
        distinct = _coded(values).unique(maintain_order=True).drop_nulls()  # (any order: sorted by text below)
        text = distinct.cast(pl.Utf8)
        order = text.arg_sort().to_numpy()
        codes = distinct.to_physical().to_numpy()
        rank = np.full(int(codes.max(initial=0)) + 2, NO_RANK, np.uint32)  # (last slot: null)
        rank[codes[order]] = np.arange(len(codes), dtype=np.uint32)
        return cls(rank, text.gather(order))

    def of_rows(self, values: pl.Series) -> np.ndarray:
        return self.rank[_coded(values).to_physical().fill_null(len(self.rank) - 1).to_numpy()]


NO_RANK = np.iinfo(np.uint32).max


def _coded(values: pl.Series) -> pl.Series:
    """Categorical as it is (the request log's identifiers); anything else through the same categories."""
    return values if isinstance(values.dtype, (pl.Categorical, pl.Enum)) else values.cast(pl.Utf8).cast(pl.Categorical)


@dataclass(frozen=True)
class RequestKeys:
    """Per request (as contiguous arrays, whatever the log's chunking): its account's text rank and
    its time in ms — what every account-to-entity relationship of the request log groups on — and
    the rows grouped by account (``by_account``, account ``r``'s rows at ``account_starts[r]`` …
    ``account_starts[r + 1]``, in row order), which every such relationship starts from: a
    relationship's column gathered once in that order is then read in runs, not at random."""

    accounts: TextRanks
    account_rank: np.ndarray
    ts: np.ndarray
    by_account: np.ndarray
    account_starts: np.ndarray
    ts_by_account: np.ndarray  # ts[by_account]: gathered once for every relationship

    @classmethod
    def of(cls, requests: pl.DataFrame) -> RequestKeys:
        accounts = TextRanks.of(requests["account_id"])
        rank = accounts.of_rows(requests["account_id"])
        ts = requests["ts"].to_physical().fill_null(0).to_numpy()
        by_account, starts = _rows_by_account(rank, len(accounts.text))
        return cls(accounts, rank, ts, by_account, starts, ts[by_account])


@kernel()
def _rows_by_account(rank, n_accounts):
    """A counting sort of the rows by account rank (rows without one left out): the rows in account
    order, row order within an account, and where each account's rows start."""
    starts = np.zeros(n_accounts + 1, np.int64)
    for row in range(len(rank)):
        if rank[row] < n_accounts:
            starts[rank[row] + 1] += 1
    for r in range(n_accounts):
        starts[r + 1] += starts[r]
    fill = starts[:-1].copy()
    rows = np.empty(starts[n_accounts], np.int64)
    for row in range(len(rank)):
        if rank[row] < n_accounts:
            rows[fill[rank[row]]] = row
            fill[rank[row]] += 1
    return rows, starts


def _request_rel(requests: pl.DataFrame, keys: RequestKeys, dst: str) -> tuple[pl.DataFrame, pl.Series]:
    """:func:`_rel` of (account, ``dst``) over the request log, and the distinct ``dst`` values in text
    order. Rows are grouped account by account on the text ranks (so the groups come in text
    order), and only the groups are turned into text — not a two-column group-by of millions of
    rows and a sort of their strings. (Requests have a time: ingest quarantines those without.)"""
    values = requests[dst]
    targets = TextRanks.of(values)
    account, target, count, first, last = _pair_groups_by_account(
        keys.account_starts, targets.of_rows(values)[keys.by_account], keys.ts_by_account, len(targets.text)
    )
    rel = pl.DataFrame(
        {
            "src": keys.accounts.text.gather(account),
            "dst": targets.text.gather(target),
            "count": count,
            "first_seen": first,
            "last_seen": last,
        }
    ).with_columns(pl.col("first_seen", "last_seen").cast(pl.Datetime("ms", "UTC")))
    return rel, targets.text.alias(dst)


@kernel()
def _pair_groups_by_account(account_starts, target, ts, n_targets):
    """Per distinct (account, target) pair, in pair order: count and first and last time.
    ``target`` (``0 … n_targets − 1``) and ``ts`` per row in account order (:class:`RequestKeys`);
    other targets (:data:`NO_RANK`: no value, or a text not sampled) are left out.

    Each account's rows are counted into dense per-target arrays, reset through the targets the
    account touched, and only those few are sorted, instead of sorting every row of an account on
    its own (14.5 M requests: clients 0.56 → 0.10 s, models 0.69 → 0.12 s, addresses 1.33 → 1.04 s)."""
    count_of = np.zeros(n_targets, np.int64)
    first_of, last_of = np.empty(n_targets, ts.dtype), np.empty(n_targets, ts.dtype)
    touched = np.empty(n_targets, np.int64)
    capacity = max(1024, len(target) // 8)
    account, group_target = np.empty(capacity, np.int64), np.empty(capacity, np.int64)
    count, first, last = np.empty(capacity, np.int64), np.empty(capacity, ts.dtype), np.empty(capacity, ts.dtype)
    n = 0
    for r in range(len(account_starts) - 1):
        seen = 0
        for i in range(account_starts[r], account_starts[r + 1]):
            value, time = target[i], ts[i]
            if value >= n_targets:
                continue
            if count_of[value] == 0:
                touched[seen] = value
                seen += 1
                first_of[value], last_of[value] = time, time
            else:
                first_of[value] = min(first_of[value], time)
                last_of[value] = max(last_of[value], time)
            count_of[value] += 1
        held = np.sort(touched[:seen])
        if n + seen > capacity:
            capacity = max(2 * capacity, n + seen)
            account, group_target = _grown(account, capacity), _grown(group_target, capacity)
            count, first, last = _grown(count, capacity), _grown(first, capacity), _grown(last, capacity)
        for j in range(seen):
            value = held[j]
            account[n], group_target[n] = r, value
            count[n], first[n], last[n] = count_of[value], first_of[value], last_of[value]
            count_of[value] = 0
            n += 1
    return account[:n].copy(), group_target[:n].copy(), count[:n].copy(), first[:n].copy(), last[:n].copy()


@numba.njit(cache=True, nogil=True)
def _grown(values, capacity):
    out = np.empty(capacity, values.dtype)
    out[: len(values)] = values
    return out


def with_optional_properties(graph: Graph) -> Graph:
    """The graph with every optional node property present (null where a store left it out)."""
    for label, properties in OPTIONAL_PROPERTIES.items():
        frame = graph.nodes.get(label)
        if frame is not None:
            missing = [
                pl.lit(None, dtype).alias(name) for name, dtype in properties.items() if name not in frame.columns
            ]
            graph.nodes[label] = frame.with_columns(missing) if missing else frame
    return graph


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a cheap, well-spread, deterministic hash of uint64 values."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def position_dtype(ids: pl.Series) -> pl.DataTypeExpr:
    """What casts an id to its position in ``ids`` (distinct strings): ``.cast(it, strict=False)
    .to_physical()`` on an expression; an id not among them becomes null.

    An enum of the ids, handed to polars once: a cast given the ``pl.Enum`` itself hands over all its
    categories again at every call (0.07-0.1 s for 324k account ids; about 1.4 s of a run at incident
    scale, where scoring's rounds cast ring members to positions a dozen times)."""
    return pl.Enum(ids).to_dtype_expr()


def in_order(frame: pl.DataFrame, first: str, second: str) -> bool:
    """Whether ``frame``'s rows are sorted by ``first``, then ``second``, each pair of values once: a
    check in one pass, for tables that usually come sorted already (the projection's pairs, the
    memberships by entity), so that millions of rows are not sorted again."""
    a, b = frame[first].to_numpy(), frame[second].to_numpy()
    return bool(np.all((a[1:] > a[:-1]) | ((a[1:] == a[:-1]) & (b[1:] > b[:-1]))))


def sorted_values(values: np.ndarray) -> np.ndarray:
    """``np.sort(values)`` of an integer array, by polars: a third of numpy's time on tens of millions
    of int64 (27M hub candidates at incident scale: 1.9 s against 0.6 s), and off the GIL. Read-only."""
    return pl.Series(values).sort().to_numpy()


def stable_order(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` of an integer array: equal keys keep their positions' order.

    Non-negative keys that leave room for the position in 64 bits are sorted as one packed value
    each (key, then position: all distinct, so any sort keeps the order), half the time of polars'
    order-keeping sort of two columns; other keys by that sort (itself half numpy's time)."""
    bits = max(len(keys).bit_length(), 1)
    if len(keys) and int(keys.min()) >= 0 and int(keys.max()).bit_length() + bits <= 64:
        packed = (keys.astype(np.uint64) << np.uint64(bits)) | np.arange(len(keys), dtype=np.uint64)
        return (sorted_values(packed) & np.uint64((1 << bits) - 1)).astype(np.int64)
    frame = pl.DataFrame({"key": keys}).with_row_index("position")
    return frame.sort("key", maintain_order=True)["position"].cast(pl.Int64).to_numpy()


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer array. (numpy 2's hash-based ``np.unique`` is ~50× slower
    on 20M int64.)"""
    ordered = sorted_values(values)
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]] if len(ordered) else ordered


def activity_signatures(keys: RequestKeys, window_minutes: int) -> pl.DataFrame:
    """Per account, a MinHash of the set of time windows it was active in (lockstep detection).

    Stored on the Account node so that detection from the store needs no request log."""
    valid = keys.account_rank != NO_RANK
    if not valid.any():
        return pl.DataFrame(schema={"account_id": pl.Utf8, "activity_signature": pl.List(pl.Int64)})
    # the minimum over a multiset is the minimum over its set: one pass over the requests, no
    # de-duplication of (account, window) pairs first; accounts by text rank (dense, few)
    windows = keys.ts // (window_minutes * 60_000)
    signature, first_row = _window_minhash(
        keys.account_rank.astype(np.int64), windows, valid, len(keys.accounts.text), ACTIVITY_SIGNATURE_SIZE
    )
    active = np.flatnonzero(first_row >= 0)
    return pl.DataFrame(
        {"account_id": keys.accounts.text.gather(active), "activity_signature": signature[active]}
    ).with_columns(pl.col("activity_signature").cast(pl.List(pl.Int64)))


@kernel()
def _window_minhash(codes, windows, valid, n_codes, size):
    """Per account code, ``size`` minima of splitmix64 hashes of its windows (31-bit values: exact in
    Neo4j integers and half the memory of pair comparisons downstream); and a row of each account."""
    signature = np.full((n_codes, size), np.int64(1) << 62)
    first_row = np.full(n_codes, -1, np.int64)
    last_window = np.zeros(n_codes, np.int64)
    for row in range(len(codes)):
        if not valid[row]:
            continue
        code = codes[row]
        if first_row[code] < 0:
            first_row[code] = row
        elif last_window[code] == windows[row]:  # the same window again: nothing new (a log in time order)
            continue
        last_window[code] = windows[row]
        window = np.uint64(windows[row])
        for k in range(size):
            x = window * np.uint64(2 * k + 1) + np.uint64((k * 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFF)
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            value = np.int64((x ^ (x >> np.uint64(31))) >> np.uint64(33))
            if value < signature[code, k]:
                signature[code, k] = value
    return signature, first_row


def _account_activity(requests: pl.DataFrame, keys: RequestKeys) -> pl.DataFrame:
    """Per account of the log: requests, first and last time, token totals, requests over proxy-like
    networks, reasoning-style and sampled prompts — one compiled pass over the account ranks."""

    def numbers(column: str) -> np.ndarray:
        return requests[column].fill_null(0).to_numpy()

    proxy = requests["ip_type"].is_in(list(PROXY_IP_TYPES)).fill_null(False).to_numpy()
    reasoning = requests["reasoning_style"]
    totals = _per_account_totals(
        keys.account_rank,
        len(keys.accounts.text),
        keys.ts,
        numbers("input_tokens"),
        numbers("output_tokens"),
        proxy,
        reasoning.fill_null(False).to_numpy(),
        reasoning.is_not_null().to_numpy(),
    )
    names = (
        "requests",
        "first_seen",
        "last_seen",
        "input_tokens",
        "output_tokens",
        "proxy_requests",
        "reasoning_requests",
        "sampled_prompts",
    )
    return pl.DataFrame({"account_id": keys.accounts.text, **dict(zip(names, totals))}).with_columns(
        pl.col("first_seen", "last_seen").cast(pl.Datetime("ms", "UTC"))
    )


@kernel()
def _per_account_totals(rank, n_ranks, ts, input_tokens, output_tokens, proxy, reasoning, sampled):
    requests = np.zeros(n_ranks, np.int64)
    first = np.full(n_ranks, np.iinfo(np.int64).max)
    last = np.full(n_ranks, np.iinfo(np.int64).min)
    tokens_in, tokens_out = np.zeros(n_ranks, np.int64), np.zeros(n_ranks, np.int64)
    proxied, reasoned, sampled_total = (
        np.zeros(n_ranks, np.int64),
        np.zeros(n_ranks, np.int64),
        np.zeros(n_ranks, np.int64),
    )
    for row in range(len(rank)):
        r = rank[row]
        if r >= n_ranks:  # (no account)
            continue
        requests[r] += 1
        first[r] = min(first[r], ts[row])
        last[r] = max(last[r], ts[row])
        tokens_in[r] += input_tokens[row]
        tokens_out[r] += output_tokens[row]
        proxied[r] += proxy[row]
        reasoned[r] += reasoning[row]
        sampled_total[r] += sampled[row]
    return requests, first, last, tokens_in, tokens_out, proxied, reasoned, sampled_total


def _per_ip(requests: pl.DataFrame, ts: np.ndarray) -> pl.DataFrame:
    """One row per address: subnet, its most frequent ASN and IP type (ties: the smallest; the type by
    name), first and last use.

    Nearly every address comes with one ASN and one type. One compiled pass over the log keeps each
    address's first row and times and notes the addresses seen with more than one (ASN, type); only
    those few addresses' requests are counted by (address, ASN, type) for their modes. A group-by of
    the whole log by (address, ASN, type) took 2.5-2.8 s at incident scale. ``ts``: the requests'
    times as integers (:attr:`RequestKeys.ts`)."""
    codes = requests["ip"].to_physical()  # (categorical codes: process-wide, an index per address)
    asn, kind = requests["asn"], requests["ip_type"].to_physical()
    none = np.iinfo(np.uint32).max
    code_of = codes.fill_null(none).to_numpy()
    first_row, first_seen, last_seen, mixed = _address_rows(
        code_of,
        asn.fill_null(0).to_numpy(),
        asn.is_not_null().to_numpy(),
        kind.fill_null(none).to_numpy(),
        ts,
        int(np.max(code_of, where=code_of != none, initial=0)) + 1 if codes.null_count() < len(codes) else 0,
    )
    alone = np.flatnonzero((first_row >= 0) & ~mixed)
    single = requests.select("ip", "subnet", "asn", "ip_type")[first_row[alone]].with_columns(
        pl.Series("first_seen", first_seen[alone]).cast(requests.schema["ts"]),
        pl.Series("last_seen", last_seen[alone]).cast(requests.schema["ts"]),
    )
    if not mixed.any():
        return _text(single)
    several = requests.filter(pl.Series(mixed).gather(codes.fill_null(0)) & codes.is_not_null())
    by_variant = (
        several.group_by("ip", "asn", "ip_type")
        .agg(
            pl.len().alias("n"),
            pl.col("subnet").first(),
            pl.col("ts").min().alias("first_seen"),
            pl.col("ts").max().alias("last_seen"),
        )
        # (the type as text: its ties go to the smallest by name)
        .with_columns(pl.col("ip").to_physical().alias("code"), pl.col("ip_type").cast(pl.Utf8))
    )
    per_ip = by_variant.group_by("code").agg(
        pl.col("ip").first(), pl.col("subnet").first(), pl.col("first_seen").min(), pl.col("last_seen").max()
    )
    per_ip = per_ip.join(_modes(by_variant, "code", ["asn", "ip_type"], weight="n"), on="code", how="left")
    return pl.concat([_text(single), _text(per_ip).select(single.columns)])


@kernel()
def _address_rows(codes, asn, has_asn, kind, ts, n_codes):
    """Per address code: its first row (-1: no request), first and last time, and whether its rows
    differ in ASN (or its presence) or type."""
    first_row = np.full(n_codes, -1, np.int64)
    first_seen, last_seen = np.empty(n_codes, ts.dtype), np.empty(n_codes, ts.dtype)
    mixed = np.zeros(n_codes, np.bool_)
    for row in range(len(codes)):
        code = codes[row]
        if code >= n_codes:
            continue
        seen = first_row[code]
        if seen < 0:
            first_row[code] = row
            first_seen[code], last_seen[code] = ts[row], ts[row]
            continue
        first_seen[code] = min(first_seen[code], ts[row])
        last_seen[code] = max(last_seen[code], ts[row])
        if has_asn[row] != has_asn[seen] or (has_asn[row] and asn[row] != asn[seen]) or kind[row] != kind[seen]:
            mixed[code] = True
    return first_row, first_seen, last_seen, mixed


def _modes(frame: pl.DataFrame, key: str, columns: list[str], weight: str | None = None) -> pl.DataFrame:
    """Per key, each column's most frequent non-null value (ties: the smallest; null when none), counting
    rows or summing ``weight``. Group-bys and a sort instead of per-group ``mode()``, which is slow."""
    result = frame.select(key).unique()
    for column in columns:
        counts = (
            frame.filter(pl.col(column).is_not_null())
            .group_by(key, column)
            .agg((pl.col(weight).sum() if weight else pl.len()).alias("_n"))
        )
        mode = counts.sort([key, "_n", column], descending=[False, True, False]).unique(key, keep="first")
        result = result.join(mode.select(key, column), on=key, how="left")
    return result


@dataclass
class RequestParts:
    """What the graph takes from the request log that does not depend on its prompt templates: the
    keys every relationship groups on, the address, client and model relationships (with the clients
    and models used, in text order), one row per address and each account's activity signature.
    :func:`linkage.pipeline.load_inputs` builds them while the templates are mined."""

    keys: RequestKeys
    used_ip: pl.DataFrame
    used_device: pl.DataFrame
    devices: pl.Series
    used_model: pl.DataFrame
    models: pl.Series
    per_ip: pl.DataFrame
    signatures: pl.DataFrame
    daily: pl.DataFrame  # requests per account and day (:func:`daily_requests`)


def request_parts(requests: pl.DataFrame, activity_window_minutes: int = 10) -> RequestParts:
    """:class:`RequestParts` of a compact request log (with or without its templates attached)."""
    # group on the (categorical) identifiers and turn only the aggregates back into text
    keys = RequestKeys.of(requests)
    # the address-use edges on one thread, the other two on another (the sorts release the GIL)
    with ThreadPoolExecutor(max_workers=2) as pool:
        by_address = pool.submit(_request_rel, requests, keys, "ip")
        used_device, devices = _request_rel(requests, keys, "device_id")
        used_model, models = _request_rel(requests, keys, "model")
        used_ip, _ = by_address.result()
    return RequestParts(
        keys,
        used_ip,
        used_device,
        devices,
        used_model,
        models,
        _per_ip(requests, keys.ts),
        activity_signatures(keys, activity_window_minutes),
        daily_requests(requests, keys),
    )


def build_graph(
    accounts: pl.DataFrame,
    payments: pl.DataFrame,
    requests: pl.DataFrame,
    templates: TemplateResult,
    activity_window_minutes: int = 10,
    parts: RequestParts | None = None,
) -> Graph:
    """accounts: normalised account rows; payments: valid rows; requests: compact, de-duplicated requests
    with template_id already attached; ``parts``: :func:`request_parts` of the same requests, when
    already built (the same rows in the same order, before or after the templates were attached)."""
    graph = Graph()
    parts = request_parts(requests, activity_window_minutes) if parts is None else parts
    keys = parts.keys
    activity = _account_activity(requests, keys).join(parts.signatures, on="account_id", how="left")
    sent_template, _ = _request_rel(requests, keys, "template_id")
    used_ip, used_device, used_model = parts.used_ip, parts.used_device, parts.used_model
    devices, models = parts.devices, parts.models
    graph.nodes["Account"] = (
        accounts.select("account_id", "created_at", "email", "email_domain", "org_id", "country", "signup_ip")
        .join(activity, on="account_id", how="left")
        .with_columns(pl.col("requests", "proxy_requests", "reasoning_requests", "sampled_prompts").fill_null(0))
        .sort("account_id")
    )
    graph.nodes["PaymentInstrument"] = _modes(
        payments, "instrument_id", ["instrument_type", "bin", "issuer_country"]
    ).sort("instrument_id")
    per_ip = parts.per_ip
    signup = (
        accounts.filter(pl.col("signup_ip").is_not_null())
        .group_by("signup_ip")
        .agg(
            pl.col("signup_subnet").first().alias("subnet"),
            pl.col("created_at").min().alias("first_seen"),
            pl.col("created_at").max().alias("last_seen"),
        )
        .rename({"signup_ip": "ip"})
    )
    ips = pl.concat(
        [
            per_ip,
            signup.with_columns(pl.lit(None, pl.Int64).alias("asn"), pl.lit(None, pl.Utf8).alias("ip_type")).select(
                per_ip.columns
            ),
        ]
    )
    ips = ips.group_by("ip").agg(
        pl.col("subnet").first(),
        pl.col("asn").drop_nulls().first(),
        pl.col("ip_type").drop_nulls().first(),
        pl.col("first_seen").min(),
        pl.col("last_seen").max(),
    )
    ips = ips.sort("ip")  # (one row per address: the address relationships below come in (src, dst) order)
    graph.nodes["IP"] = ips.select("ip", "subnet", "asn", "ip_type")
    graph.nodes["Subnet"] = graph.nodes["IP"].select("subnet").drop_nulls().unique().sort("subnet")
    graph.nodes["ASN"] = graph.nodes["IP"].select("asn").drop_nulls().unique().sort("asn")
    graph.nodes["Device"] = pl.DataFrame({"device_id": devices})  # (every device and model used, in text order)
    # (one SENT_TEMPLATE row per account and template: its requests and accounts without the log)
    usage = sent_template.group_by(pl.col("dst").alias("template_id")).agg(
        pl.col("count").sum().alias("requests"), pl.len().cast(pl.Int64).alias("accounts")
    )
    graph.nodes["PromptTemplate"] = templates.templates.join(usage, on="template_id", how="inner").sort("template_id")
    graph.nodes["Org"] = accounts.select("org_id").drop_nulls().unique().sort("org_id")
    graph.nodes["Model"] = pl.DataFrame({"model": models})
    graph.nodes["EmailDomain"] = (
        accounts.select(pl.col("email_domain").alias("domain")).drop_nulls().unique().sort("domain")
    )

    graph.rels["PAID_WITH"] = _rel(payments, "account_id", "instrument_id", "added_at")
    graph.rels["USED_IP"] = used_ip
    graph.rels["SIGNED_UP_FROM"] = _rel(accounts, "account_id", "signup_ip", "created_at")
    graph.rels["USED_DEVICE"] = used_device
    graph.rels["SENT_TEMPLATE"] = sent_template
    graph.rels["IN_ORG"] = _rel(accounts, "account_id", "org_id", "created_at")
    graph.rels["HAS_EMAIL_DOMAIN"] = _rel(accounts, "account_id", "email_domain", "created_at")
    graph.rels["USED_MODEL"] = used_model
    structural = ips.select(pl.col("ip").alias("src"), pl.lit(1, pl.Int64).alias("count"), "first_seen", "last_seen")
    graph.rels["IN_SUBNET"] = (
        structural.with_columns(ips["subnet"].alias("dst")).filter(pl.col("dst").is_not_null()).select(REL_COLUMNS)
    )
    graph.rels["ROUTED_BY"] = (
        structural.with_columns(ips["asn"].alias("dst")).filter(pl.col("dst").is_not_null()).select(REL_COLUMNS)
    )
    return graph
