"""What an operation can change cheaply: one world run again with its campaign accounts changed as
an operator could change them, the benign accounts untouched.

    python bench/probes.py [--bench-seeds 102] [--bench-scale 0.02] [--sim-seeds ...]
                           [--only own_fingerprints,...] [--work /tmp/linkage-probes] [--config FILE]

Unlike ``bench/ablation.py`` (a column missing from the whole export) a probe needs the labels: it
rewrites only what the campaign accounts send or declare. Probes:

- ``own_fingerprints``: every campaign account gets a client fingerprint nobody else holds (a TLS
  fingerprint is a library setting);
- ``common_client``: every campaign account uses the run's most common benign client build (hides
  among an SDK default's thousands of holders);
- ``declared_org``: each campaign's accounts declare one org of their own and pay nothing (before
  the unpaid-seat rule such a fleet was one customer, shrunk to the background);
- ``thin_volume``: every campaign account keeps one request in four (per file: each file of a
  partitioned log is thinned on its own).

Prints F1, AP, the worst campaign's recall and benign accounts flagged per (world, probe); rows go to
bench/results/probes.jsonl.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import polars as pl
from quality import measure_variant, print_header, rewrite_parquet, variant_arguments, variant_copy, variant_worlds

from linkage.settings import Settings

# (input dir, labels: account_id, label) → rewrites the copied input in place
Probe = Callable[[Path, pl.DataFrame], None]


def _is_campaign(truth: pl.DataFrame) -> pl.Expr:
    campaign = truth.filter(pl.col("label") != "benign")["account_id"]
    return pl.col("account_id").cast(pl.Utf8).is_in(campaign.implode())


def own_fingerprints(inputs: Path, truth: pl.DataFrame) -> None:
    own = pl.concat_str([pl.lit("probe-own-"), pl.col("account_id").cast(pl.Utf8)])
    rewrite_parquet(
        inputs,
        "requests",
        lambda t: t.with_columns(
            pl.when(_is_campaign(truth)).then(own).otherwise(pl.col("device_id")).alias("device_id")
        ),
    )


def common_client(inputs: Path, truth: pl.DataFrame) -> None:
    files = sorted(inputs.glob("requests/**/*.parquet")) or sorted(inputs.glob("requests.parquet"))
    held = (
        pl.concat([pl.read_parquet(f, columns=["account_id", "device_id"], hive_partitioning=False) for f in files])
        .filter(~_is_campaign(truth) & pl.col("device_id").is_not_null())
        .unique()
        .group_by("device_id")
        .len()
        .sort(["len", "device_id"], descending=[True, False])
    )
    common = held["device_id"][0]
    rewrite_parquet(
        inputs,
        "requests",
        lambda t: t.with_columns(
            pl.when(_is_campaign(truth)).then(pl.lit(common)).otherwise(pl.col("device_id")).alias("device_id")
        ),
    )


def declared_org(inputs: Path, truth: pl.DataFrame) -> None:
    org = truth.filter(pl.col("label") != "benign").select(
        "account_id", pl.concat_str([pl.lit("probe-org-"), pl.col("label")]).alias("probe_org")
    )
    rewrite_parquet(
        inputs,
        "accounts",
        lambda t: (
            t.with_columns(pl.col("account_id").cast(pl.Utf8))
            .join(org, on="account_id", how="left")
            .with_columns(pl.coalesce("probe_org", "org_id").alias("org_id"))
            .drop("probe_org")
        ),
    )
    rewrite_parquet(inputs, "payments", lambda t: t.filter(~_is_campaign(truth)))


def thin_volume(inputs: Path, truth: pl.DataFrame) -> None:
    """Keeps one request in four of each campaign account (in its own time order): the harvest spread
    over four times as many accounts would look like this per account."""
    kept = (pl.int_range(pl.len()).over("account_id", order_by="ts") % 4) == 0
    rewrite_parquet(inputs, "requests", lambda t: t.filter(~_is_campaign(truth) | kept))


PROBES: dict[str, Probe] = {
    "own_fingerprints": own_fingerprints,
    "common_client": common_client,
    "declared_org": declared_org,
    "thin_volume": thin_volume,
}


def probed(inputs: Path, labels: Path, target: Path, probe: str) -> Path:
    """A copy of ``inputs`` at ``target`` with the campaign accounts changed by ``probe``."""
    truth = pl.read_parquet(labels).select(pl.col("account_id").cast(pl.Utf8), pl.col("label").cast(pl.Utf8))
    return variant_copy(inputs, target, lambda staging: PROBES[probe](staging, truth))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    variant_arguments(parser, bench_seeds="102", work="/tmp/linkage-probes", only="probes")
    args = parser.parse_args()
    settings = Settings.load(args.config)
    worlds = variant_worlds(args)
    probes = [name for name in args.only.split(",") if name] or list(PROBES)
    print_header("world-probe")
    for name, make in worlds:
        inputs, labels = make()
        for probe in ["none", *probes]:
            # each variant in its own folder: its input, and beside it the run's output (see quality.measure)
            source = (
                inputs if probe == "none" else probed(inputs, labels, inputs.parent / f"probe-{probe}" / "input", probe)
            )
            measure_variant(f"{name}-{probe}", source, labels, settings, "probes", args.config)


if __name__ == "__main__":
    main()
