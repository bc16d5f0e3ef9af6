"""bench/confounders.py: each confounder changes the benign accounts as it says, and nothing of the
campaign accounts."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from .conftest import ROOT, input_tables, random_world

sys.path.insert(0, str(ROOT / "bench"))
import confounders  # noqa: E402  (a bench script, not a package module)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_world(tmp_path_factory, "confounders")


def _confounded(world: Path, tmp_path: Path, name: str) -> tuple[dict, dict, set[str]]:
    labels = world / "labels.parquet"
    changed = confounders.confounded(world / "input", labels, tmp_path / name / "input", name)
    truth = pl.read_parquet(labels)
    benign = set(truth.filter(pl.col("label") == "benign")["account_id"].to_list())
    return input_tables(world / "input"), input_tables(changed), benign


def _timed(requests: pl.DataFrame) -> pl.DataFrame:
    """``ts`` as a time (a world may write it as ISO text)."""
    text = requests.schema["ts"] == pl.Utf8
    return requests.with_columns(pl.col("ts").str.to_datetime(time_zone="UTC")) if text else requests


def _of(frame: pl.DataFrame, accounts: set[str], inside: bool = True) -> pl.DataFrame:
    chosen = pl.col("account_id").is_in(list(accounts))
    return frame.filter(chosen if inside else ~chosen).sort(frame.columns)


@pytest.mark.parametrize("name", sorted(confounders.CONFOUNDERS))
def test_campaign_accounts_are_untouched_and_benign_ones_changed(world: Path, tmp_path: Path, name: str) -> None:
    before, after, benign = _confounded(world, tmp_path, name)
    assert benign
    for table in before:
        assert _of(after[table], benign, inside=False).equals(_of(before[table], benign, inside=False)), table
    assert not _of(after["requests"], benign).equals(_of(before["requests"], benign))


def test_sdk_default_gives_each_benign_account_one_of_few_builds(world: Path, tmp_path: Path) -> None:
    _, after, benign = _confounded(world, tmp_path, "sdk_default")
    mine = _of(after["requests"], benign)
    assert mine["device_id"].n_unique() <= 20
    assert (mine.group_by("account_id").agg(pl.col("device_id").n_unique())["device_id"] == 1).all()


def test_carrier_nat_puts_most_benign_accounts_behind_shared_addresses(world: Path, tmp_path: Path) -> None:
    _, after, benign = _confounded(world, tmp_path, "carrier_nat")
    mine = _of(after["requests"], benign)
    behind = mine.filter(confounders.behind_nat())  # (the simulator's own NAT is on 100.64/10 too)
    share = behind["account_id"].n_unique() / mine["account_id"].n_unique()
    assert 0.6 < share < 0.8
    # one address per account, its signup's too; an address holds several customers
    assert (behind.group_by("account_id").agg(pl.col("ip").n_unique())["ip"] == 1).all()
    assert behind.group_by("ip").agg(pl.col("account_id").n_unique())["account_id"].max() >= 2
    signups = after["accounts"].join(behind.select("account_id", "ip").unique(), on="account_id")
    assert (signups["signup_ip"] == signups["ip"]).all()
    assert set(behind["ip_type"].unique()) == {"mobile"}


def test_one_rush_squeezes_benign_time_in_order(world: Path, tmp_path: Path) -> None:
    before, after, benign = _confounded(world, tmp_path, "one_rush")
    old, new = _timed(_of(before["requests"], benign)), _timed(_of(after["requests"], benign))
    start = _timed(before["requests"])["ts"].min()
    assert new["ts"].min() >= start
    assert new["ts"].max() - start <= (old["ts"].max() - start) / 15 + timedelta(milliseconds=1)
    # one request's time is moved alone: each account's requests keep their order
    paired = old.select("request_id", "account_id", "ts").join(
        new.select("request_id", pl.col("ts").alias("squeezed")), on="request_id"
    )
    assert paired.height == old.height
    steps = paired.sort("account_id", "ts", "request_id").select(pl.col("squeezed").diff().over("account_id"))
    assert (steps["squeezed"].drop_nulls() >= timedelta(0)).all()


def test_phrasing_confounders_wrap_benign_prompts(world: Path, tmp_path: Path) -> None:
    before, after, benign = _confounded(world, tmp_path, "everyday_phrasing")
    prompts = _of(after["requests"], benign)["prompt"].drop_nulls()
    opens = pl.any_horizontal([prompts.str.starts_with(o) for o in confounders._OPENERS])
    assert pl.select(opens).to_series().all()
    _, templated, _ = _confounded(world, tmp_path, "popular_templates")
    wrapped = _of(templated["requests"], benign)["prompt"].drop_nulls().str.starts_with("You are writing assistant")
    assert 0.4 < wrapped.mean() < 0.6


def test_a_benign_crowd_alive_in_the_same_two_days_is_not_read_as_one_clock(tmp_path: Path) -> None:
    """Simulator world 42 with its benign month squeezed into two days (its campaigns as drawn): an
    org's 298 seats kept "one clock" against a null that spread every account over the month, and
    were flagged. Weighed within the accounts' lifetimes, and their lifetimes against the run's own,
    none is."""
    import linkage
    from linkage.simulate import SimulationConfig, simulate

    simulate(tmp_path / "sim", SimulationConfig(scale=0.01, seed=42, world="random"))
    labels = tmp_path / "sim" / "labels.parquet"
    rushed = confounders.confounded(tmp_path / "sim" / "input", labels, tmp_path / "rushed" / "input", "one_rush")
    result = linkage.run(rushed)
    truth = pl.read_parquet(labels)
    flagged = result.members.join(result.rings.filter(pl.col("flagged")).select("ring_id"), on="ring_id")
    marked = truth.join(flagged.select("account_id"), on="account_id")
    campaign = truth.filter(pl.col("label") != "benign")
    assert marked.filter(pl.col("label") == "benign").height == 0
    assert marked.filter(pl.col("label") != "benign").height >= 0.95 * campaign.height
