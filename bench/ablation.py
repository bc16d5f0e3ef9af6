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
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl
from quality import BENCHMARK, benchmark_world, measure, print_header, print_row, seeds, simulated_world

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
    if not target.exists():
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(inputs, staging)
        files = sorted(staging.glob(f"{table}/**/*.parquet")) or sorted(staging.glob(f"{table}.parquet"))
        if not files:
            raise SystemExit(f"{inputs}: no Parquet files for table {table!r} (the ablation rewrites Parquet only)")
        for path in files:
            change(pl.read_parquet(path, hive_partitioning=False)).write_parquet(path)
        staging.rename(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench-seeds", default="101,102", help="independent benchmark worlds (if present)")
    parser.add_argument("--bench-scale", type=float, default=0.02)
    parser.add_argument("--sim-seeds", default="", help="randomised simulator worlds")
    parser.add_argument("--scale", type=float, default=0.01)
    parser.add_argument("--only", default="", help="comma-separated removals (default: all)")
    parser.add_argument("--work", default="/tmp/linkage-ablation")
    parser.add_argument("--config", help="settings TOML for linkage")
    args = parser.parse_args()
    settings = Settings.load(args.config)
    work = Path(args.work)
    worlds = [(f"sim:{s}", lambda s=s: simulated_world(work, args.scale, s, "random")) for s in seeds(args.sim_seeds)]
    if BENCHMARK.exists():
        worlds += [
            (f"benchmark:{s}", lambda s=s: benchmark_world(work, args.bench_scale, s)) for s in seeds(args.bench_seeds)
        ]
    removals = {name: REMOVALS[name] for name in filter(None, args.only.split(","))} or REMOVALS
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    print_header("world-removed")
    for name, make in worlds:
        inputs, labels = make()
        for removal, (table, change) in [("nothing", ("", empty))] + list(removals.items()):
            # each variant in its own folder: its input, and beside it the run's output (see quality.measure)
            variant = inputs.parent / f"without-{removal}" / "input"
            source = inputs if removal == "nothing" else without(inputs, variant, table, change)
            row = measure(f"{name}-{removal}", "linkage", source, labels, settings)
            print_row(row)
            with open(results / "ablation.jsonl", "a") as fh:
                fh.write(json.dumps(row | {"config": args.config}) + "\n")


if __name__ == "__main__":
    main()
