"""The command line as cron and a new user meet it: settings that merge and check, the effective
settings shown, logs a machine can read, quiet runs, bad output folders refused up front, and
ring ids that survive a full rebuild (issue 18)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from linkage.cli import main
from linkage.errors import ConfigError
from linkage.rebuild import rebuild
from linkage.settings import EVIDENCE_TYPES, Settings

from .conftest import read_csv


def _invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env)


# ---------------------------------------------------------------- settings
def test_a_table_overrides_only_the_keys_it_names(tmp_path: Path) -> None:
    config = tmp_path / "s.toml"
    config.write_text("[detect]\ntype_weights = { IP = 0.5 }\nip_type_factor = { mobile = 0.25 }\n")
    settings = Settings.load(config)
    defaults = Settings()
    assert settings.detect.type_weights["IP"] == 0.5
    assert {k: v for k, v in settings.detect.type_weights.items() if k != "IP"} == {
        k: v for k, v in defaults.detect.type_weights.items() if k != "IP"
    }
    assert settings.detect.ip_type_factor["vpn"] == defaults.detect.ip_type_factor["vpn"]
    assert settings.detect.resolution == defaults.detect.resolution


def test_a_misspelt_evidence_type_is_an_error_listing_the_known_ones(tmp_path: Path) -> None:
    config = tmp_path / "s.toml"
    config.write_text("[detect.type_weights]\nPaymentInstrumnet = 2.0\n")
    with pytest.raises(ConfigError) as caught:
        Settings.load(config)
    message = str(caught.value)
    assert str(config) in message and "PaymentInstrumnet" in message
    assert all(name in message for name in EVIDENCE_TYPES)


def test_every_invalid_setting_is_reported_with_its_file(tmp_path: Path) -> None:
    config = tmp_path / "s.toml"
    config.write_text(
        '[detect]\nresolution = "high"\nseed = "x"\n[score]\nflag_background_share = 7\n[nosuch]\na = 1\n'
    )
    result = _invoke("run", str(tmp_path), "--out", str(tmp_path / "out"), "--config", str(config))
    assert result.exit_code == 2
    for key in ("detect.resolution", "detect.seed", "score.flag_background_share", "nosuch"):
        assert key in result.stderr
    assert str(config) in result.stderr and "4 invalid settings" in result.stderr


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("[detect\nresolution = 0.1\n")
    result = _invoke("config", "show", "--config", str(config))
    assert result.exit_code == 2 and f"{config}: not valid TOML" in result.stderr


def test_config_show_prints_effective_settings_with_secrets_masked(tmp_path: Path) -> None:
    config = tmp_path / "s.toml"
    config.write_text('[neo4j]\npassword = "hunter2-secret"\n[detect.type_weights]\nIP = 0.5\n')
    result = _invoke(
        "config", "show", "--config", str(config), env={"NEO4J_URI": "bolt://bob:uri-secret@db.internal:7687"}
    )
    assert result.exit_code == 0, result.stderr
    assert "hunter2-secret" not in result.stdout and "uri-secret" not in result.stdout
    shown = tomllib.loads(result.stdout)
    assert shown["detect"]["type_weights"]["IP"] == 0.5 and shown["detect"]["type_weights"]["Device"] == 1.0
    assert shown["neo4j"]["uri"] == "bolt://db.internal:7687" and shown["neo4j"]["password"] == "********"
    # what is shown is a valid settings file
    del shown["neo4j"]["password"]
    reloaded = tmp_path / "shown.toml"
    import tomli_w

    reloaded.write_text(tomli_w.dumps(shown))
    assert Settings.load(reloaded).detect == Settings.load(config).detect


# ---------------------------------------------------------------- output and logs
def test_bad_out_fails_before_any_work(tiny: Path, tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    (tiny / "accounts.csv").unlink()  # the input is broken too: the out folder is checked first
    result = _invoke("run", str(tiny), "--out", str(tmp_path / "a_file" / "out"))
    assert result.exit_code == 2 and "output directory cannot be written" in result.stderr
    night = _invoke("rebuild", str(tiny), "--out", str(tmp_path / "a_file" / "nightly"))
    assert night.exit_code == 2
    assert json.loads(night.stdout.strip().splitlines()[-1])["exit_reason"] == "input_or_config_error"


def test_json_log_format_gives_one_object_per_line(tiny: Path, tmp_path: Path) -> None:
    result = _invoke("run", str(tiny), "--out", str(tmp_path / "out"), "-v", "--log-format", "json")
    assert result.exit_code == 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("{")]
    entries = [json.loads(line) for line in lines]
    stages = {e["message"].split()[1] for e in entries if e["message"].startswith("stage ")}
    assert {"ingest", "templates", "graph", "export"} <= stages
    assert any(e["message"].startswith("requests: 1/1 files done") for e in entries)  # progress as a log line


def test_quiet_prints_nothing_on_success_but_errors_still(tiny: Path, tmp_path: Path) -> None:
    done = _invoke("run", str(tiny), "--out", str(tmp_path / "out"), "--quiet")
    assert done.exit_code == 0 and done.stderr == ""
    failed = _invoke("run", str(tmp_path / "missing"), "--out", str(tmp_path / "out"), "-q")
    assert failed.exit_code == 2 and failed.stderr.startswith("linkage: error:")


# ---------------------------------------------------------------- ring history
def test_full_rebuild_keeps_ring_ids_unless_history_is_reset(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rebuild(tiny, out, Settings())
    time.sleep(1.1)  # ring ids of new rings carry the run's second
    first = set(read_csv(out / "rings.csv")["ring_id"])
    rebuild(tiny, out, Settings(), full=True)
    assert set(read_csv(out / "rings.csv")["ring_id"]) == first
    reset = _invoke("rebuild", str(tiny), "--out", str(out), "--full", "--reset-history")
    assert reset.exit_code == 0
    assert json.loads(reset.stdout.strip().splitlines()[-1])["ring_changes"].get("unchanged", 0) == 0
    assert not set(read_csv(out / "rings.csv")["ring_id"]) & first  # new ids, new history


def test_python_dash_m_linkage_is_the_command_line(tmp_path: Path) -> None:
    # `python -m linkage run …`, as the benchmark's driver may call it, runs the same pipeline
    tiny = Path(__file__).resolve().parent.parent / "fixtures" / "tiny"
    done = subprocess.run(
        [sys.executable, "-m", "linkage", "run", str(tiny), "--out", str(tmp_path / "out"), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "rings.csv").exists()
    bad = subprocess.run(
        [sys.executable, "-m", "linkage", "run", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]
    )
    assert bad.returncode != 0
