"""`linkage explain`: the numbers detection used, read back, never recomputed differently."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

import linkage
from linkage.cli import main
from linkage.errors import InputError
from linkage.explain import (
    LINKS_FILE,
    MEMBERSHIPS_FILE,
    by_account_and_entity,
    explain_account,
    explain_pair,
    explanation_tables,
)

from .conftest import TINY


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, linkage.RunResult]:
    out = tmp_path_factory.mktemp("demo") / "out"
    return out, linkage.run(TINY, out)


def test_a_members_links_sum_to_its_attachment(demo) -> None:
    out, result = demo
    for member in result.members.iter_rows(named=True):
        explained = explain_account(out, member["account_id"])
        assert explained.ring_id == member["ring_id"]
        assert explained.strength == pytest.approx(member["strength"], abs=1e-6)
        median = result.members.filter(pl.col("ring_id") == member["ring_id"])["strength"].median()
        assert min(1.0, explained.strength / median) == pytest.approx(member["attachment"], abs=1e-4)


def test_tables_drawn_while_leiden_runs_narrow_to_what_the_rings_alone_give(demo) -> None:
    """The run draws every link and membership before any ring exists, then keeps what its rings
    touch: the same rows, in the same order, as tables drawn for the rings' members alone."""
    out, result = demo
    drawn = result.link_tables
    assert drawn is not None and drawn.links.height == result.detection.pairs.height
    one_ring = result.members.filter(pl.col("ring_id") == result.members["ring_id"][0])
    for members in (result.members, one_ring):
        alone = explanation_tables(result.detection, members)
        narrowed = explanation_tables(result.detection, members, drawn)
        assert narrowed[0].equals(alone[0]) and narrowed[1].equals(alone[1])
    assert explanation_tables(result.detection, one_ring, drawn)[0].height < drawn.links.height
    assert pl.read_parquet(out / LINKS_FILE).equals(explanation_tables(result.detection, result.members)[0])
    assert pl.read_parquet(out / MEMBERSHIPS_FILE).equals(explanation_tables(result.detection, result.members)[1])


def test_every_pair_waterfall_sums_to_the_weight_detection_used(demo) -> None:
    out, result = demo
    ids = result.detection.accounts["account_id"]
    pairs = result.detection.pairs
    assert pairs.height > 20
    seen: set[str] = set()
    for a, b, weight, days in pairs.select("a", "b", "weight", "days").iter_rows():
        explained = explain_pair(out, ids[a], ids[b])
        if explained.linked:  # links touching a ring member are kept for explain
            assert sum(step.nats for step in explained.steps) == pytest.approx(weight, abs=1e-6)
            assert explained.weight == pytest.approx(weight, abs=1e-8)
            kinds = {step.kind for step in explained.steps}
            assert "entity" in kinds and "fisher" in kinds
            # the lockstep in two steps: the hours, and the days the two lived in
            assert sum(s.nats for s in explained.steps if s.kind == "days") == pytest.approx(days, abs=1e-9)
            seen |= kinds
    assert {"timing", "days"} <= seen


def test_unlinked_pair_and_unringed_account(demo) -> None:
    out, result = demo
    outside = set(result.detection.accounts["account_id"]) - set(result.members["account_id"])
    loner = sorted(outside)[0]
    assert explain_account(out, loner).ring_id is None
    assert not explain_pair(out, loner, result.members["account_id"][0]).linked


def test_files_of_another_run_are_refused(demo, tmp_path: Path) -> None:
    out, _ = demo
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for path in out.iterdir():
        if path.is_file():
            (mixed / path.name).write_bytes(path.read_bytes())
    links = pl.read_parquet(mixed / LINKS_FILE).with_columns(pl.col("shared") + 1.0)
    links.write_parquet(mixed / LINKS_FILE)
    first = links.row(0, named=True)
    with pytest.raises(InputError, match="not of one run"):
        explain_pair(mixed, first["account_a"], first["account_b"])


def test_cli_explain(demo) -> None:
    out, result = demo
    member = result.members["account_id"][0]
    shown = CliRunner().invoke(main, ["explain", str(out), member])
    assert shown.exit_code == 0 and "attachment" in shown.stdout
    partner = explain_account(out, member).links[0]["partner"]
    waterfall = CliRunner().invoke(main, ["explain", str(out), member, partner])
    assert waterfall.exit_code == 0 and "Fisher" in waterfall.stdout


def test_every_entity_carries_a_readable_label(demo) -> None:
    _, result = demo
    labels = dict(result.evidence.select("entity", "label").iter_rows())
    assert labels["PaymentInstrument|card_ring_0"] == "card card_ring_0 (virtual_card, BIN 53999901, issued in US)"
    assert labels["IP|45.1.1.10"].startswith("address 45.1.1.10 (proxy, AS16000")
    template = next(label for entity, label in labels.items() if entity.startswith("PromptTemplate|"))
    assert template.startswith("template «") and "step-by-step" in template
    burst = next(label for entity, label in labels.items() if entity.startswith("SignupBurst|"))
    assert burst.startswith("signup burst 2026-02-01") and burst.endswith("accounts)")
    assert all(label != entity for entity, label in labels.items())


def test_an_owned_build_is_explained_at_the_worth_detection_gave_it() -> None:
    """Two workers of an owned build are explained by the build at the rarest build's worth, the
    waterfall summing to the weight detection used; a customer on the same build meets a worker at
    the hub's plain worth."""
    from linkage.detect import detect
    from linkage.explain import RunTables, explanation_tables
    from linkage.settings import DetectSettings

    from .test_detect import _builds_graph

    settings = DetectSettings()
    detection = detect(_builds_graph(), settings)
    members = detection.communities.select("account_id")
    links, memberships = explanation_tables(detection, members)
    # every holder's memberships, so that the customer's side is there too
    memberships = detection.memberships.select("idx", "account_id", "entity", "type", "value", "degree", "held")
    run = RunTables(
        "test", links, memberships, members, pl.DataFrame(schema={"entity": pl.Utf8, "label": pl.Utf8}), settings
    )
    worth = dict(
        memberships.filter(pl.col("type") == "Device").group_by("entity").agg(pl.col("value").min()).iter_rows()
    )
    fleet = [f"a{i:04d}" for i in range(60)]
    first = links.filter(pl.col("account_a").is_in(fleet) & pl.col("account_b").is_in(fleet)).row(0, named=True)
    workers = explain_pair(run, first["account_a"], first["account_b"])
    assert workers.linked
    assert sum(step.nats for step in workers.steps) == pytest.approx(workers.weight, abs=1e-6)
    assert workers.shared[0]["entity"] == "Device|fleet-build"
    assert workers.shared[0]["value"] == pytest.approx(worth["Device|pair-build"])
    customer = explain_pair(run, first["account_a"], "a0190")
    assert not customer.linked
    assert customer.shared[0]["value"] == pytest.approx(worth["Device|fleet-build"])
    assert worth["Device|fleet-build"] < worth["Device|pair-build"] / 2


def test_memberships_are_ordered_by_account_then_entity_text() -> None:
    rows = pl.DataFrame(
        {
            "idx": pl.Series([2, 0, 2, 1, 0, 2], dtype=pl.UInt32),
            "entity": ["IP|9", "Subnet|b", "Device|z", "IP|9", "IP|10", "Bin|4"],
            "value": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        }
    ).with_columns(pl.col("entity").hash(3).alias("entity_key"))
    ordered = by_account_and_entity(rows)
    assert ordered.columns == ["idx", "entity", "value"]
    assert ordered.rows() == rows.drop("entity_key").sort("idx", "entity").rows()
    assert ordered["entity"].to_list() == ["IP|10", "Subnet|b", "IP|9", "Bin|4", "Device|z", "IP|9"]
