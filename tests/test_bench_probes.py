"""bench/probes.py: each probe changes the campaign accounts as it says, and nothing of the benign ones."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from .conftest import ROOT, input_tables, random_world

sys.path.insert(0, str(ROOT / "bench"))
import probes  # noqa: E402  (a bench script, not a package module)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_world(tmp_path_factory, "probes")


def _probed(world: Path, tmp_path: Path, name: str) -> tuple[dict, dict, set[str]]:
    labels = world / "labels.parquet"
    changed = probes.probed(world / "input", labels, tmp_path / name / "input", name)
    truth = pl.read_parquet(labels)
    campaign = set(truth.filter(pl.col("label") != "benign")["account_id"].to_list())
    return input_tables(world / "input"), input_tables(changed), campaign


def _benign(frame: pl.DataFrame, campaign: set[str]) -> pl.DataFrame:
    return frame.filter(~pl.col("account_id").is_in(list(campaign))).sort(frame.columns)


@pytest.mark.parametrize("name", sorted(probes.PROBES))
def test_benign_accounts_are_untouched(world: Path, tmp_path: Path, name: str) -> None:
    before, after, campaign = _probed(world, tmp_path, name)
    assert campaign
    for table in before:
        assert _benign(after[table], campaign).equals(_benign(before[table], campaign)), table


def _campaign(frame: pl.DataFrame, campaign: set[str]) -> pl.DataFrame:
    return frame.filter(pl.col("account_id").is_in(list(campaign)))


def test_own_exits_and_separate_everything_leave_each_account_its_own(world: Path, tmp_path: Path) -> None:
    before, after, campaign = _probed(world, tmp_path, "separate_everything")
    requests = after["requests"]
    mine = _campaign(requests, campaign)
    # one residential address per campaign account, which no other account uses
    assert (mine.group_by("account_id").agg(pl.col("ip").n_unique())["ip"] == 1).all()
    holders = requests.group_by("ip").agg(pl.col("account_id").n_unique().alias("n"))
    assert holders.join(mine.select("ip").unique(), on="ip")["n"].max() == 1
    assert set(mine["ip_type"].drop_nulls().unique()) <= {"residential"}
    signups = _campaign(after["accounts"], campaign).join(mine.select("account_id", "ip").unique(), on="account_id")
    assert (signups["signup_ip"] == signups["ip"]).all()
    # a fingerprint and an instrument of its own
    devices = requests.group_by("device_id").agg(pl.col("account_id").n_unique().alias("n"))
    assert devices.join(mine.select("device_id").unique(), on="device_id")["n"].max() == 1
    paid = _campaign(after["payments"], campaign)
    assert paid.height and paid["instrument_id"].n_unique() == paid["account_id"].n_unique()
    assert paid["account_id"].n_unique() == _campaign(before["payments"], campaign)["account_id"].n_unique()


def test_own_clock_shifts_each_account_by_an_offset_of_its_own(world: Path, tmp_path: Path) -> None:
    before, after, campaign = _probed(world, tmp_path, "own_clock")
    key = ["account_id", "request_id"] if "request_id" in before["requests"].columns else ["account_id"]

    def timed(frame: pl.DataFrame) -> pl.DataFrame:
        ts = pl.col("ts").str.to_datetime(time_zone="UTC") if frame["ts"].dtype == pl.Utf8 else pl.col("ts")
        return _campaign(frame, campaign).with_columns(ts.alias("ts")).sort([*key, "ts"])

    old = timed(before["requests"]).select(*key, "ts")
    new = timed(after["requests"]).select(*key, pl.col("ts").alias("shifted"))
    shift = pl.concat([old, new.drop(key)], how="horizontal").with_columns(
        (pl.col("shifted") - pl.col("ts")).alias("shift")
    )
    per_account = shift.group_by("account_id").agg(pl.col("shift").n_unique().alias("kinds"), pl.col("shift").first())
    assert (per_account["kinds"] == 1).all()  # the account keeps its own rhythm
    assert per_account["shift"].n_unique() > 1  # no two keep one clock
    assert timedelta(0) <= per_account["shift"].min() and per_account["shift"].max() < timedelta(days=1)


def test_thin_volume_keeps_one_request_in_four(world: Path, tmp_path: Path) -> None:
    before, after, campaign = _probed(world, tmp_path, "thin_volume")
    kept, had = _campaign(after["requests"], campaign).height, _campaign(before["requests"], campaign).height
    assert had / 4 <= kept <= had / 4 + len(campaign) * 30  # (rounded up per account and file)


def _assert_one_org_per_campaign(world: Path, after: dict, campaign: set[str]) -> None:
    truth = pl.read_parquet(world / "labels.parquet").select("account_id", "label")
    orgs = _campaign(after["accounts"], campaign).join(truth, on="account_id")
    assert (orgs.group_by("label").agg(pl.col("org_id").n_unique())["org_id"] == 1).all()
    assert orgs["org_id"].n_unique() == orgs["label"].n_unique()  # one org per campaign, none shared


def test_declared_org_own_clock_declares_one_org_per_campaign_pays_nothing_and_shifts_clocks(
    world: Path, tmp_path: Path
) -> None:
    before, after, campaign = _probed(world, tmp_path, "declared_org_own_clock")
    _assert_one_org_per_campaign(world, after, campaign)
    assert _campaign(after["payments"], campaign).height == 0
    moved = (
        _campaign(after["requests"], campaign)["ts"].to_list()
        != _campaign(before["requests"], campaign)["ts"].to_list()
    )
    assert moved


def test_declared_org_separate_declares_one_org_per_campaign_and_keeps_a_card_per_seat(
    world: Path, tmp_path: Path
) -> None:
    before, after, campaign = _probed(world, tmp_path, "declared_org_separate")
    _assert_one_org_per_campaign(world, after, campaign)
    # seats that pay one by one, each with a card of its own (unlike `declared_org`, which pays nothing)
    paid = _campaign(after["payments"], campaign)
    assert paid.height and paid["instrument_id"].n_unique() == paid["account_id"].n_unique()
    assert paid["account_id"].n_unique() == _campaign(before["payments"], campaign)["account_id"].n_unique()
    devices = after["requests"].group_by("device_id").agg(pl.col("account_id").n_unique().alias("n"))
    mine = _campaign(after["requests"], campaign)
    assert devices.join(mine.select("device_id").unique(), on="device_id")["n"].max() == 1


def test_academic_mail_puts_each_campaign_on_one_colleges_domain(world: Path, tmp_path: Path) -> None:
    before, after, campaign = _probed(world, tmp_path, "academic_mail_own_clock")
    truth = pl.read_parquet(world / "labels.parquet").select("account_id", "label")
    accounts = _campaign(after["accounts"], campaign).join(truth, on="account_id")
    domains = accounts.select("label", pl.col("email").str.extract(r"@(.+)$").alias("domain"))
    assert (domains.group_by("label").agg(pl.col("domain").n_unique())["domain"] == 1).all()
    assert domains["domain"].str.ends_with(".edu").all()
    assert domains["domain"].n_unique() == domains["label"].n_unique()  # one college per campaign
    local = pl.col("email").str.extract(r"^([^@]*)")
    assert (
        _campaign(after["accounts"], campaign)
        .sort("account_id")
        .select(local)
        .equals(_campaign(before["accounts"], campaign).sort("account_id").select(local))
    )
    assert (
        _campaign(after["requests"], campaign)["ts"].to_list()
        != _campaign(before["requests"], campaign)["ts"].to_list()
    )
