from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "fixtures" / "tiny"
TINY_LABELS = ROOT / "fixtures" / "tiny_labels.csv"


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A private copy of the tiny fixture that a test may damage."""
    target = tmp_path / "tiny"
    shutil.copytree(TINY, target)
    return target


def read_csv(path: Path) -> pl.DataFrame:
    return pl.read_csv(path, infer_schema_length=0)
