from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

import linkage
from linkage.cli import main
from linkage.evaluate import adjusted_rand_index, average_precision, evaluate
from linkage.simulate import PERSONAL_MAIL, SimulationConfig, World, simulate, stock_text


def test_average_precision_and_ari() -> None:
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([True, True, False])) == 1.0
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([False, True, True])) < 0.6
    assert adjusted_rand_index(np.array([1, 1, 2, 2]), np.array(["a", "a", "b", "b"])) == 1.0
    assert adjusted_rand_index(np.array([1, 2, 1, 2]), np.array(["a", "a", "b", "b"])) < 0.01


def test_simulate_run_eval_end_to_end(tmp_path: Path) -> None:
    runner = CliRunner()
    simulated = runner.invoke(main, ["simulate", "--out", str(tmp_path / "sim5"), "--scale", "0.005", "--seed", "5"])
    assert simulated.exit_code == 0, simulated.output
    outcome = runner.invoke(main, ["run", str(tmp_path / "sim5" / "input"), "--out", str(tmp_path / "run")])
    assert outcome.exit_code == 0, outcome.output
    report = runner.invoke(main, ["eval", "--labels", str(tmp_path / "sim5" / "labels.parquet"), str(tmp_path / "run")])
    assert report.exit_code == 0 and "average_precision" in report.output
    evaluation = pl.read_json(tmp_path / "run" / "eval.json")
    assert evaluation["f1"][0] > 0.8
    base = runner.invoke(main, ["baseline", str(tmp_path / "sim5" / "input"), "--out", str(tmp_path / "base")])
    assert base.exit_code == 0, base.output
    assert (tmp_path / "base" / "rings.csv").exists()


def test_simulation_is_deterministic(tmp_path: Path) -> None:
    runner = CliRunner()
    for name in ("a", "b"):
        runner.invoke(
            main, ["simulate", "--out", str(tmp_path / name), "--scale", "0.003", "--seed", "9", "--format", "csv"]
        )
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.csv"))
    assert files
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_a_campaign_run_as_small_cells_is_found_whole(tmp_path: Path) -> None:
    """World C's tactic: cells of 3-5 accounts, each behind its own exit with its own client builds,
    nothing but the scaffold shared between cells. Seed 1 draws such a campaign."""
    assert "campaign_cells" in World.draw(1).campaigns
    simulate(tmp_path / "sim", SimulationConfig(scale=0.01, seed=1, world="random"))
    labels = pl.read_parquet(tmp_path / "sim" / "labels.parquet")
    accounts = pl.read_parquet(tmp_path / "sim" / "input" / "accounts.parquet").join(labels, on="account_id")
    cells = accounts.filter(pl.col("label") == "campaign_cells").group_by("signup_ip").len()
    assert cells.height >= 3 and cells["len"].is_between(1, 5).all()  # (the last cell may be cut short)
    result = linkage.run(tmp_path / "sim" / "input")
    found = result.members.join(result.rings.select("ring_id", "flagged"), on="ring_id").join(labels, on="account_id")
    cell_rings = found.filter(pl.col("label") == "campaign_cells")
    assert (
        cell_rings.filter(pl.col("flagged")).height >= 0.9 * accounts.filter(pl.col("label") == "campaign_cells").height
    )
    mixed = found.join(cell_rings.select("ring_id").unique(), on="ring_id").filter(pl.col("label") != "campaign_cells")
    assert mixed.height == 0  # no benign account in a ring of the cells


def test_stock_paragraphs_and_a_campaign_bank_are_drawn_late_and_written(tmp_path: Path) -> None:
    """Seed 8 draws both: benign everyday requests around sentences from a small stock, spread over
    many unrelated people, and a campaign whose scaffold carries a line from its own small bank."""
    world = World.draw(8)
    assert world.stock_sentences == 30 and world.campaign_bank == ("campaign_dc", 12)
    simulate(tmp_path / "sim", SimulationConfig(scale=0.005, seed=8, world="random"))
    labels = pl.read_parquet(tmp_path / "sim" / "labels.parquet")
    requests = pl.read_parquet(tmp_path / "sim" / "input" / "requests").join(labels, on="account_id")
    stock = "|".join(re.escape(line) for line in stock_text(30, 8))
    stocked = requests.filter(pl.col("prompt").str.contains(stock))
    assert stocked.filter(pl.col("label") == "benign")["account_id"].n_unique() >= 20
    banked = requests.filter(pl.col("prompt").str.contains("FAILED tests/", literal=True))
    assert set(banked["label"]) == {"campaign_dc"}
    assert banked["prompt"].str.extract(r"(FAILED tests/[^\n]*)").n_unique() <= 12
    # a world that draws neither writes neither
    plain = World.draw(3)
    assert plain.stock_sentences == 0 and plain.campaign_bank is None


def test_some_students_of_a_class_sign_up_on_a_personal_address(tmp_path: Path) -> None:
    """Seed 1 draws a class, a quarter of whose students sign up on a personal address (drawn last,
    apart from the simulator's stream); the rest on their college's domain."""
    world = World.draw(1)
    assert world.benign["course"] == 1.0 and world.course_personal_mail == pytest.approx(0.243, abs=1e-3)
    simulate(tmp_path / "sim", SimulationConfig(scale=0.005, seed=1, world="random"))
    labels = pl.read_parquet(tmp_path / "sim" / "labels.parquet").filter(pl.col("kind") == "course")
    accounts = pl.read_parquet(tmp_path / "sim" / "input" / "accounts.parquet").join(labels, on="account_id")
    domains = accounts["email"].str.extract(r"@(.+)$")
    personal = domains.is_in(list(PERSONAL_MAIL))
    assert accounts.height == 50 and 5 <= int(personal.sum()) <= 20
    assert set(domains.filter(~personal)) == {"student.college0.edu"}


# optional columns another provider's export may lack → whether the fixed world's campaigns are still
# all found without them (prompts carry the careful campaign's only shared scaffold, and the
# declared org is all that clears the evaluation company: those two lose by design)
_WITHOUT = {
    "ip_type": ("requests", ["ip_type"], True),
    "device": ("requests", ["device_id", "user_agent"], True),
    "asn": ("requests", ["asn"], True),
    "payments": ("payments", None, True),
    "tokens": ("requests", ["input_tokens", "output_tokens"], True),
    "prompt": ("requests", ["prompt"], False),
    "identity": ("accounts", ["email", "org_id", "signup_ip", "country"], False),
}


@pytest.fixture(scope="module")
def fixed_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fixed_world")
    simulate(root, SimulationConfig(scale=0.005, seed=5))
    return root


@pytest.mark.parametrize("removed", sorted(_WITHOUT))
def test_a_run_without_an_optional_column_completes_and_loses_only_what_it_carried(
    fixed_world: Path, tmp_path: Path, removed: str
) -> None:
    table, columns, all_found = _WITHOUT[removed]
    inputs = tmp_path / "input"
    shutil.copytree(fixed_world / "input", inputs)
    for path in sorted(inputs.glob(f"{table}/**/*.parquet")) or sorted(inputs.glob(f"{table}.parquet")):
        frame = pl.read_parquet(path, hive_partitioning=False)
        (frame.head(0) if columns is None else frame.drop(columns)).write_parquet(path)
    result = linkage.run(inputs, tmp_path / "out")
    for counts in result.summary["tables"].values():
        assert counts["rows_read"] == counts["rows_used"] + counts["rows_quarantined"]
    report = evaluate(tmp_path / "out", fixed_world / "labels.parquet", write=False)
    worst = min(campaign["recall"] for campaign in report["campaigns"].values())
    if all_found:
        assert worst == 1.0 and report["precision"] >= 0.95, (removed, report["f1"])
    else:
        assert report["f1"] > 0.5  # what the column carried is lost, the rest is still found
