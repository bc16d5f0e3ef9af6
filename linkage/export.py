"""Stage 6 — export: the contract's output files, written atomically.

Every file is written under a temporary name in OUT_DIR and renamed into place, so a
reader (or a run killed half-way) never finds a partial file that looks complete.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import polars as pl


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then rename ``tmp`` over ``path`` (same directory, so the rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv(frame: pl.DataFrame, path: Path) -> None:
    atomic_write(path, lambda tmp: _flat(frame).write_csv(tmp))


def write_parquet(frame: pl.DataFrame, path: Path) -> None:
    atomic_write(path, lambda tmp: frame.write_parquet(tmp, statistics=False))


def write_json(data: Any, path: Path) -> None:
    def dump(tmp: Path) -> None:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    atomic_write(path, dump)


def _flat(frame: pl.DataFrame) -> pl.DataFrame:
    """CSV has no nested types: lists become '|'-joined text."""
    return frame.with_columns([pl.col(c).cast(pl.List(pl.Utf8)).list.join("|")
                               for c, t in frame.schema.items() if isinstance(t, pl.List)])


def write_rings(out_dir: Path, rings: pl.DataFrame, members: pl.DataFrame, evidence: pl.DataFrame,
                accounts: pl.DataFrame) -> None:
    """rings.csv / ring_members.csv (contract) plus Parquet and JSON copies and per-account scores."""
    write_parquet(rings, out_dir / "rings.parquet")
    write_parquet(members, out_dir / "ring_members.parquet")
    write_parquet(evidence, out_dir / "ring_evidence.parquet")
    write_csv(evidence, out_dir / "ring_evidence.csv")
    write_csv(accounts, out_dir / "accounts.csv")
    write_json(rings.to_dicts(), out_dir / "rings.json")
    write_csv(members, out_dir / "ring_members.csv")
    write_csv(rings, out_dir / "rings.csv")  # last: its presence means the ring files are complete


def write_quarantine(out_dir: Path, frames: dict[str, pl.DataFrame]) -> None:
    for table, frame in frames.items():
        write_csv(frame.sort("source_file", "row"), out_dir / "quarantine" / f"{table}.csv")
