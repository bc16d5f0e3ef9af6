"""Detection quality over many worlds of two generators: linkage's randomised simulator and an
independently written benchmark (``../shared/benchmark/gen.py``, when it is beside the checkout).

    python bench/quality.py [--sim-seeds 201-220] [--bench-seeds 101,102,103] [--scale 0.01]
                            [--bench-scale 0.02] [--fixed-seeds 11] [--baseline] [--config FILE]

Per world: F1, precision, recall, AP, the worst campaign's recall, benign accounts flagged, the
largest ring and its purity (share of its plurality label); then per generator the median and the
worst. Seeds 1–40 of the simulator and 7, 13, 21–23, 31 of the benchmark were used for tuning;
report on others. JSON rows go to bench/results/quality.jsonl. The benchmark's generator needs
pandas: ``BENCH_PYTHON=/path/to/python`` names an interpreter that has it (default: this one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl

from linkage.baseline import run_baseline
from linkage.evaluate import evaluate
from linkage.pipeline import run
from linkage.settings import Settings
from linkage.simulate import SimulationConfig, simulate

BENCHMARK = Path(__file__).resolve().parents[2] / "shared" / "benchmark"


def seeds(text: str) -> list[int]:
    """'1,2,5-7' → [1, 2, 5, 6, 7]."""
    out: list[int] = []
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        out += list(range(int(low), int(high or low) + 1))
    return out


def simulated_world(work: Path, scale: float, seed: int, world: str) -> tuple[Path, Path]:
    data = work / f"sim-{world}-{scale}-{seed}"
    if not (data / "simulation.json").exists():
        simulate(data, SimulationConfig(scale=scale, seed=seed, world=world))
    return data / "input", data / "labels.parquet"


World = tuple[str, Callable[[], tuple[Path, Path]]]


def variant_arguments(parser: argparse.ArgumentParser, bench_seeds: str, work: str, only: str) -> None:
    """The options every bench that re-runs worlds as variants takes (ablation, probes)."""
    parser.add_argument("--bench-seeds", default=bench_seeds, help="independent benchmark worlds (if present)")
    parser.add_argument("--bench-scale", type=float, default=0.02)
    parser.add_argument("--sim-seeds", default="", help="randomised simulator worlds")
    parser.add_argument("--scale", type=float, default=0.01)
    parser.add_argument("--only", default="", help=f"comma-separated {only} (default: all)")
    parser.add_argument("--work", default=work)
    parser.add_argument("--config", help="settings TOML for linkage")


def run_variants(
    description: str,
    variants: list[str],
    make_variant: Callable[[Path, Path, str], Path],
    *,
    unchanged: str,
    header: str,
    bench_seeds: str,
    work: str,
    log: str,
) -> None:
    """The main of a bench that re-runs worlds as variants (ablation, probes): parse the options, then
    per world run it as generated (``unchanged``) and as each chosen variant, ``make_variant(inputs,
    labels, name)`` giving the variant's input folder; rows are printed and logged to ``log``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    variant_arguments(parser, bench_seeds, work, only=f"{log} variants")
    args = parser.parse_args()
    settings = Settings.load(args.config)
    chosen = [name for name in args.only.split(",") if name] or variants
    print_header(header)
    for world, make in variant_worlds(args):
        inputs, labels = make()
        for name in [unchanged, *chosen]:
            source = inputs if name == unchanged else make_variant(inputs, labels, name)
            measure_variant(f"{world}-{name}", source, labels, settings, log, args.config)


def variant_worlds(args: argparse.Namespace) -> list[World]:
    """``(name, make)`` per world the options name; ``make`` generates it once and returns its input
    and labels."""
    work = Path(args.work)
    worlds: list[World] = [
        (f"sim:{s}", lambda s=s: simulated_world(work, args.scale, s, "random")) for s in seeds(args.sim_seeds)
    ]
    if BENCHMARK.exists():
        worlds += [
            (f"benchmark:{s}", lambda s=s: benchmark_world(work, args.bench_scale, s)) for s in seeds(args.bench_seeds)
        ]
    return worlds


def variant_copy(inputs: Path, target: Path, rewrite: Callable[[Path], None]) -> Path:
    """A copy of ``inputs`` at ``target`` that ``rewrite`` changed in place (made once: staged, then
    renamed, so an interrupted copy is never taken for a finished one)."""
    if not target.exists():
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(inputs, staging)
        rewrite(staging)
        staging.rename(target)
    return target


def measure_variant(name: str, inputs: Path, labels: Path, settings: Settings, log: str, config: str | None) -> None:
    """One variant run: measured, printed, and appended to ``bench/results/<log>.jsonl``."""
    row = measure(name, "linkage", inputs, labels, settings)
    print_row(row)
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    with open(results / f"{log}.jsonl", "a") as fh:
        fh.write(json.dumps(row | {"config": config}) + "\n")


def read_truth(labels: Path) -> pl.DataFrame:
    """A world's labels (``account_id, label``) as text, as the variants that need them read them."""
    return pl.read_parquet(labels).select(pl.col("account_id").cast(pl.Utf8), pl.col("label").cast(pl.Utf8))


def rewrite_parquet(inputs: Path, table: str, change: Callable[[pl.DataFrame], pl.DataFrame]) -> None:
    """Every Parquet file of ``table`` under ``inputs`` through ``change``."""
    files = sorted(inputs.glob(f"{table}/**/*.parquet")) or sorted(inputs.glob(f"{table}.parquet"))
    if not files:
        raise SystemExit(f"{inputs}: no Parquet files for table {table!r} (the variants rewrite Parquet only)")
    for path in files:
        change(pl.read_parquet(path, hive_partitioning=False)).write_parquet(path)


# the benchmark's generator needs pandas, which linkage does not install: BENCH_PYTHON names an
# interpreter that has it (as the benchmark's own run.sh takes HOLDOUT_PY)
GENERATOR_PYTHON = os.environ.get("BENCH_PYTHON", sys.executable)


def benchmark_world(work: Path, scale: float, seed: int) -> tuple[Path, Path]:
    data = work / f"bench-{scale}-{seed}"
    if not (data / "truth" / "labels.parquet").exists():
        done = subprocess.run(
            [
                GENERATOR_PYTHON,
                str(BENCHMARK / "gen.py"),
                "--out",
                str(data),
                "--scale",
                str(scale),
                "--seed",
                str(seed),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(
                f"{BENCHMARK / 'gen.py'} failed for seed {seed} under {GENERATOR_PYTHON}:\n{done.stderr[-600:]}"
                "(the generator needs pandas: set BENCH_PYTHON to a Python that has it)"
            )
    return data / "input", data / "truth" / "labels.parquet"


def largest_ring(out: Path, labels: Path) -> tuple[int, float]:
    """Size of the largest ring and the share of its plurality label."""
    members = pl.read_csv(
        out / "ring_members.csv", columns=["ring_id", "account_id"], schema_overrides={"account_id": pl.Utf8}
    )
    if members.height == 0:
        return 0, 1.0
    truth = read_truth(labels)
    biggest = members.group_by("ring_id").len().sort("len", "ring_id", descending=[True, False])["ring_id"][0]
    labelled = members.filter(pl.col("ring_id") == biggest).join(truth, on="account_id", how="left")
    counts = labelled["label"].value_counts(sort=True)
    return labelled.height, float(counts["count"][0] / labelled.height)


def measure(name: str, method: str, inputs: Path, labels: Path, settings: Settings) -> dict:
    out = inputs.parent / f"out-{method}"
    start = time.perf_counter()
    if method == "linkage":
        run(inputs, out, settings)
    else:
        run_baseline(inputs, out)
    seconds = time.perf_counter() - start
    report = evaluate(out, labels, write=False)
    size, purity = largest_ring(out, labels)
    worst = (
        min(report["campaigns"].items(), key=lambda kv: kv[1]["recall"])
        if report["campaigns"]
        else ("-", {"recall": 0})
    )
    benign = pl.read_parquet(labels).filter(pl.col("label") == "benign").height
    return {
        "world": name,
        "method": method,
        "f1": report["f1"],
        "precision": report["precision"],
        "recall": report["recall"],
        "ap": report["average_precision"],
        "worst_campaign": worst[0],
        "worst_recall": worst[1]["recall"],
        "benign_flagged": report["benign_flagged"],
        "benign_flagged_pct": 100 * report["benign_flagged"] / max(benign, 1),
        "largest_ring": size,
        "largest_purity": purity,
        "seconds": round(seconds, 1),
    }


def print_header(first: str = "world") -> None:
    """Column titles for :func:`print_row`."""
    print(
        f"{first:>28} {'method':>8} {'F1':>6} {'prec':>6} {'recall':>6} {'AP':>6} {'worst campaign':>15} "
        f"{'benign':>6} {'benign%':>8} {'ring':>6} {'pure':>5} {'s':>6}"
    )


def print_row(row: dict) -> None:
    print(
        f"{row['world']:>28} {row['method']:>8} {row['f1']:6.3f} {row['precision']:6.3f} {row['recall']:6.3f} "
        f"{row['ap']:6.3f} {row['worst_campaign'][-12:]:>12}={row['worst_recall']:.2f} {row['benign_flagged']:6d} "
        f"{row['benign_flagged_pct']:7.3f}% {row['largest_ring']:6d} {row['largest_purity']:5.2f} {row['seconds']:6.1f}",
        flush=True,
    )


def summarise(rows: list[dict]) -> None:
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["world"].split(":")[0], row["method"]), []).append(row)
    print("\nper generator (median / worst over worlds)")
    for (generator, method), members in groups.items():

        def both(key: str, worst=min, members=members) -> str:
            values = [m[key] for m in members]
            return f"{statistics.median(values):.3f} / {worst(values):.3f}"

        print(
            f"  {generator:>10} {method:>8} worlds={len(members):3d}  F1 {both('f1')}  AP {both('ap')}  "
            f"worst campaign recall {both('worst_recall')}  benign flagged % {both('benign_flagged_pct', max)}  "
            f"largest ring purity {both('largest_purity')}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sim-seeds", default="201-220", help="randomised simulator worlds")
    parser.add_argument("--fixed-seeds", default="", help="seeds of the original fixed world")
    parser.add_argument("--bench-seeds", default="101,102,103", help="independent benchmark worlds (if present)")
    parser.add_argument("--scale", type=float, default=0.01)
    parser.add_argument("--bench-scale", type=float, default=0.02)
    parser.add_argument("--work", default="/tmp/linkage-quality")
    parser.add_argument("--baseline", action="store_true", help="also the naive connected-components baseline")
    parser.add_argument("--config", help="settings TOML for linkage (sensitivity runs)")
    args = parser.parse_args()
    settings = Settings.load(args.config)
    work = Path(args.work)
    worlds = [(f"sim:{s}", lambda s=s: simulated_world(work, args.scale, s, "random")) for s in seeds(args.sim_seeds)]
    worlds += [
        (f"fixed:{s}", lambda s=s: simulated_world(work, args.scale, s, "fixed")) for s in seeds(args.fixed_seeds)
    ]
    if BENCHMARK.exists():
        worlds += [
            (f"benchmark:{s}", lambda s=s: benchmark_world(work, args.bench_scale, s)) for s in seeds(args.bench_seeds)
        ]
    print_header()
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    rows = []
    for name, make in worlds:
        inputs, labels = make()
        for method in ["linkage"] + (["baseline"] if args.baseline else []):
            row = measure(name, method, inputs, labels, settings)
            print_row(row)
            rows.append(row)
            with open(results / "quality.jsonl", "a") as fh:
                fh.write(json.dumps(row | {"config": args.config}) + "\n")
    summarise(rows)


if __name__ == "__main__":
    main()
