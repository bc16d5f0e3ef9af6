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

import argparse
from collections.abc import Callable
from pathlib import Path

import polars as pl
from quality import measure_variant, print_header, rewrite_parquet, variant_arguments, variant_copy, variant_worlds

from linkage.settings import Settings

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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    variant_arguments(parser, bench_seeds="101,102", work="/tmp/linkage-ablation", only="removals")
    args = parser.parse_args()
    settings = Settings.load(args.config)
    worlds = variant_worlds(args)
    removals = {name: REMOVALS[name] for name in filter(None, args.only.split(","))} or REMOVALS
    print_header("world-removed")
    for name, make in worlds:
        inputs, labels = make()
        for removal, (table, change) in [("nothing", ("", empty))] + list(removals.items()):
            # each variant in its own folder: its input, and beside it the run's output (see quality.measure)
            variant = inputs.parent / f"without-{removal}" / "input"
            source = inputs if removal == "nothing" else without(inputs, variant, table, change)
            measure_variant(f"{name}-{removal}", source, labels, settings, "ablation", args.config)


if __name__ == "__main__":
    main()
