"""What each optional input field is worth: one world run again with those columns removed (and,
as ``aged_accounts``, with account age made uninformative: every account created at one instant a
year before the log, as bought, aged accounts would be).

    python bench/ablation.py [--bench-seeds 101,102] [--bench-scale 0.02] [--sim-seeds ...]
                             [--work /tmp/linkage-ablation] [--config FILE]

Another provider's export may lack any optional column of the contract. For each world (the
independent benchmark's by default, linkage's simulator with ``--sim-seeds``) and each group of
columns below, the input is copied without them (Parquet files rewritten, the payments table
emptied) and linkage runs on it as it would on such an export. Prints F1, AP, the worst campaign's
recall and benign accounts flagged per (world, removal); rows go to bench/results/ablation.jsonl.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
from quality import rewrite_parquet, run_variants, variant_copy

Change = Callable[[pl.DataFrame], pl.DataFrame]


def drop(*columns: str) -> Change:
    return lambda frame: frame.drop([c for c in columns if c in frame.columns])


def empty(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.head(0)


def aged(frame: pl.DataFrame) -> pl.DataFrame:
    """Every account created at one instant, a year before the earliest signup in the table."""
    created = pl.col("created_at")
    if frame.schema["created_at"] == pl.Utf8:
        created = created.str.to_datetime(time_zone="UTC")
    return frame.with_columns(created.min().dt.offset_by("-365d").alias("created_at"))


# removal → (table, what is done to each of its files)
REMOVALS: dict[str, tuple[str, Change]] = {
    "ip_type": ("requests", drop("ip_type")),
    "device": ("requests", drop("device_id", "user_agent")),
    "asn": ("requests", drop("asn")),
    "model": ("requests", drop("model")),
    "payments": ("payments", empty),
    "identity": ("accounts", drop("email", "org_id", "signup_ip", "country")),
    "prompt": ("requests", drop("prompt")),
    "tokens": ("requests", drop("input_tokens", "output_tokens")),
    "enrichment": ("requests", drop("ip_type", "asn", "device_id", "user_agent")),  # a raw log
    "network_and_billing_only": (
        "requests",
        drop("prompt", "device_id", "user_agent", "model", "input_tokens", "output_tokens"),
    ),
    "aged_accounts": ("accounts", aged),  # required, but it can carry nothing: bought, aged accounts
}


def without(inputs: Path, target: Path, table: str, change: Change) -> Path:
    """A copy of ``inputs`` at ``target`` whose ``table`` files went through ``change``. Parquet only."""
    return variant_copy(inputs, target, lambda staging: rewrite_parquet(staging, table, change))


def main() -> None:
    def variant(inputs: Path, labels: Path, removal: str) -> Path:
        # each variant in its own folder: its input, and beside it the run's output (see quality.measure)
        table, change = REMOVALS[removal]
        return without(inputs, inputs.parent / f"without-{removal}" / "input", table, change)

    run_variants(
        __doc__ or "",
        list(REMOVALS),
        variant,
        unchanged="nothing",
        header="world-removed",
        bench_seeds="101,102",
        work="/tmp/linkage-ablation",
        log="ablation",
    )


if __name__ == "__main__":
    main()
