"""The graph built from the request log: the parts that need no templates, built beside the mining."""

from __future__ import annotations

import polars as pl
from polars.testing import assert_frame_equal

from linkage.graph import build_graph, request_parts
from linkage.ingest import Quarantine
from linkage.pipeline import (
    attach_templates,
    ingest_requests,
    load_inputs,
    prepare_accounts,
    prepare_payments,
    read_rows,
)
from linkage.progress import StageClock
from linkage.schema import ACCOUNTS, PAYMENTS
from linkage.settings import Settings

from .conftest import TINY


def _graphs_equal(first, second) -> None:
    assert first.nodes.keys() == second.nodes.keys() and first.rels.keys() == second.rels.keys()
    for label in first.nodes:
        assert_frame_equal(first.nodes[label], second.nodes[label])
    for rel in first.rels:
        assert_frame_equal(first.rels[rel], second.rels[rel])


def test_parts_built_before_the_templates_give_the_graph_built_after_them() -> None:
    """load_inputs builds the address, client and model relationships and the activity signatures while
    the templates are mined, from the log before they are attached: the graph is the one built from the
    log with its templates, all at once."""
    settings = Settings()
    inputs = load_inputs(TINY, settings, Quarantine(), StageClock())
    assert inputs.parts is not None
    window = settings.detect.activity_window_minutes
    beside = build_graph(inputs.accounts, inputs.payments, inputs.requests, inputs.templates, window, inputs.parts)
    at_once = build_graph(inputs.accounts, inputs.payments, inputs.requests, inputs.templates, window)
    _graphs_equal(beside, at_once)
    assert beside.rels["SENT_TEMPLATE"].height > 0 and beside.rels["USED_IP"].height > 0


def test_request_parts_do_not_depend_on_the_templates() -> None:
    """The same parts from the log before and after its templates are attached (the same rows)."""
    settings = Settings()
    quarantine = Quarantine()
    accounts = prepare_accounts(read_rows(TINY, ACCOUNTS, settings, quarantine), quarantine)
    prepare_payments(read_rows(TINY, PAYMENTS, settings, quarantine), accounts, quarantine)
    requests, miner = ingest_requests(TINY, settings, quarantine)
    before = request_parts(requests)
    after = request_parts(attach_templates(requests, miner)[0])
    for name in ("used_ip", "used_device", "used_model", "per_ip", "signatures"):  # (per_ip: in no set order)
        assert_frame_equal(getattr(before, name), getattr(after, name), check_row_order=name != "per_ip")
    assert before.devices.equals(after.devices) and before.models.equals(after.models)
    assert isinstance(before.used_ip, pl.DataFrame) and before.used_ip.height > 0


def test_sorted_values_and_stable_order_match_numpy() -> None:
    """The polars-backed sorts give numpy's answers: ties keep their positions' order, uint64 keys
    above 2^63 sort as unsigned, and empty input is empty."""
    import numpy as np

    from linkage.graph import sorted_values, stable_order

    rng = np.random.default_rng(11)
    keys = rng.integers(0, 50, 20_000)  # many ties
    assert np.array_equal(stable_order(keys), np.argsort(keys, kind="stable"))
    assert np.array_equal(sorted_values(keys), np.sort(keys))
    wide = rng.integers(0, 2**64 - 1, 5_000, dtype=np.uint64)
    wide[:10] = wide[10:20]
    assert np.array_equal(stable_order(wide), np.argsort(wide, kind="stable"))
    assert np.array_equal(sorted_values(wide), np.sort(wide))
    negative = rng.integers(-5, 5, 2_000)  # (not packed with the positions: the two-column sort)
    assert np.array_equal(stable_order(negative), np.argsort(negative, kind="stable"))
    assert stable_order(np.empty(0, np.int64)).dtype == np.int64
    assert len(sorted_values(np.empty(0, np.int64))) == 0


def test_position_dtype_casts_ids_to_their_positions() -> None:
    """Ids become their place in the given order, reused across casts; an id not among them is null."""
    from linkage.graph import position_dtype

    ids = pl.Series(["c-1", "a-7", "b-3"])
    positions = position_dtype(ids)
    frame = pl.DataFrame({"account_id": ["b-3", "zz", "c-1", None, "a-7"]})
    for _ in range(2):
        got = frame.select(pl.col("account_id").cast(positions, strict=False).to_physical())["account_id"]
        assert got.to_list() == [2, None, 0, None, 1]


def test_daily_requests_counts_each_account_day() -> None:
    """Per account and UTC day the number of requests, as a group-by of the whole log gives it, in
    account and day order; a day before 1970 is its own day, not the one after."""
    from datetime import UTC, datetime

    from linkage.graph import daily_requests

    utc = UTC
    times = [
        datetime(2026, 2, 1, 23, 59, tzinfo=utc),
        datetime(2026, 2, 2, 0, 1, tzinfo=utc),
        datetime(2026, 2, 1, 8, 0, tzinfo=utc),
        datetime(1969, 12, 31, 12, 0, tzinfo=utc),
        datetime(2026, 2, 2, 5, 0, tzinfo=utc),
        datetime(2026, 2, 1, 1, 0, tzinfo=utc),
    ]
    requests = pl.DataFrame(
        {"account_id": ["b", "b", "a", "a", "b", "b"], "ts": times},
        schema={"account_id": pl.Categorical, "ts": pl.Datetime("ms", "UTC")},
    )
    expected = (
        requests.group_by(pl.col("account_id").cast(pl.Utf8), pl.col("ts").dt.date().alias("day"))
        .agg(pl.len().cast(pl.UInt32).alias("requests"))
        .sort("account_id", "day")
    )
    got = daily_requests(requests)
    assert_frame_equal(got, expected)
    assert got["requests"].to_list() == [1, 1, 2, 2]


def test_in_order_tells_sorted_pairs_from_others() -> None:
    """Rows sorted by the first column, then the second, are taken as they are; a row out of order,
    or a pair twice, is not in order."""
    from linkage.graph import in_order

    def pairs(a: list[int], b: list[int]) -> pl.DataFrame:
        return pl.DataFrame({"a": a, "b": b}, schema={"a": pl.Int64, "b": pl.Int64})

    assert in_order(pairs([0, 0, 1, 3], [1, 5, 2, 4]), "a", "b")
    assert in_order(pairs([], []), "a", "b")
    assert not in_order(pairs([0, 1, 0], [1, 2, 5]), "a", "b")
    assert not in_order(pairs([0, 0, 1], [5, 1, 2]), "a", "b")
    assert not in_order(pairs([0, 0], [1, 1]), "a", "b")


def test_per_address_modes_equal_a_plain_group_by() -> None:
    """One row per address with its most frequent ASN and type (ties: the smallest, the type by name;
    nulls not counted), subnet and first and last use, whether an address came with one (ASN, type)
    or several: the same as a per-address group-by of the whole log."""
    from datetime import UTC, datetime, timedelta

    from linkage.graph import _per_ip

    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [  # (ip, asn, type)
        *[("10.0.0.1", 7, "residential")] * 3,  # one variant
        ("10.0.0.2", 7, "datacenter"),  # ASN tie 7/9 (smallest), type 2 × mobile against 1 × datacenter
        ("10.0.0.2", 9, "mobile"),
        ("10.0.0.2", None, "mobile"),
        ("10.0.0.3", None, None),  # nothing known
        ("10.0.0.4", None, "vpn"),  # an ASN only sometimes: the known one is the mode
        ("10.0.0.4", 5, "vpn"),
        ("10.0.0.5", 3, "mobile"),  # a type tie: by name
        ("10.0.0.5", 3, "datacenter"),
        (None, 1, "mobile"),  # no address: no row
    ]
    requests = pl.DataFrame(
        {
            "ip": [r[0] for r in rows],
            "subnet": [r[0] and r[0].rsplit(".", 1)[0] + ".0/24" for r in rows],
            "asn": [r[1] for r in rows],
            "ip_type": [r[2] for r in rows],
            "ts": [start + timedelta(hours=h) for h in (5, 1, 9, 2, 3, 4, 6, 7, 8, 0, 11, 10)],
        },
        schema_overrides={"asn": pl.Int64},
    ).with_columns(pl.col("ip", "subnet", "ip_type").cast(pl.Categorical), pl.col("ts").dt.cast_time_unit("ms"))

    got = _per_ip(requests, requests["ts"].to_physical().to_numpy()).sort("ip")
    assert got.columns == ["ip", "subnet", "asn", "ip_type", "first_seen", "last_seen"]
    assert got["ip"].to_list() == [f"10.0.0.{i}" for i in range(1, 6)]
    assert got["asn"].to_list() == [7, 7, None, 5, 3]
    assert got["ip_type"].to_list() == ["residential", "mobile", None, "vpn", "datacenter"]
    assert got["subnet"].to_list() == ["10.0.0.0/24"] * 5
    expected_times = (
        requests.filter(pl.col("ip").is_not_null())
        .group_by(pl.col("ip").cast(pl.Utf8))
        .agg(pl.col("ts").min().alias("first_seen"), pl.col("ts").max().alias("last_seen"))
        .sort("ip")
    )
    assert_frame_equal(got.select("ip", "first_seen", "last_seen"), expected_times)
