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
