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
