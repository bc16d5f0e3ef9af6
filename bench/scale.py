"""Scale benchmark: simulate → embedded run (per-stage wall time and peak RSS) → Neo4j load, against
the floor of merely scanning the same request log with pyarrow.

    python bench/scale.py [--scales 0.05,0.25,1.0] [--work /tmp/linkage-scale] [--neo4j-scales 0.05]
    python bench/scale.py --inputs DIR[,DIR] --scales "" [--repeat 3]

Each run is a separate process (peak RSS per run); the Neo4j load needs NEO4J_* in the environment
(`make neo4j-start; set -a; . .neo4j/env`). Results are printed and appended to bench/results/scale.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def scan_floor(input_dir: Path) -> float:
    """Seconds to read every request partition with pyarrow, all columns, and nothing else."""
    code = (
        "import glob,sys,pyarrow.parquet as pq\n"
        "n=0\n"
        "for f in sorted(glob.glob(sys.argv[1] + '/requests/**/*.parquet', recursive=True)):\n"
        "    n += pq.read_table(f).num_rows\n"
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(input_dir)], check=True)
    return time.perf_counter() - start


def timed(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB of the child)."""
    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def neo4j_load(out_dir: Path) -> dict:
    """Load the run's graph (its Parquet copy) into Neo4j and measure relationships per second."""
    code = (
        "import json,sys,linkage\n"
        "from linkage.store.neo4j import Neo4jStore\n"
        "from linkage.settings import Settings\n"
        "store = Neo4jStore.from_settings(Settings().neo4j)\n"
        "with store.driver.session() as s:\n"
        "    s.run('MATCH ()-[r]->() CALL (r) { DELETE r } IN TRANSACTIONS OF 50000 ROWS').consume()\n"
        "    s.run('MATCH (n) CALL (n) { DELETE n } IN TRANSACTIONS OF 50000 ROWS').consume()\n"
        "result = linkage.run(sys.argv[1])\n"
        "stats = store.write_graph(result.graph)\n"
        "again = store.write_graph(result.graph)\n"
        "print(json.dumps({'nodes': stats.nodes, 'relationships': stats.relationships, 'seconds': round(stats.seconds, 1),\n"
        "                  'rel_per_s': round(stats.relationships_per_second), 'reload_seconds': round(again.seconds, 1),\n"
        "                  'batch_size': store.settings.batch_size}))\n"
    )
    output = subprocess.run([sys.executable, "-c", code, str(out_dir)], check=True, capture_output=True, text=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def bulk_load(input_dir: Path, out_dir: Path) -> dict:
    """Full rebuild through neo4j-admin: write the graph (a separate run), stop the server, import."""
    linkage_cli = [sys.executable, "-m", "linkage.cli"]
    subprocess.run(
        linkage_cli + ["run", str(input_dir), "--out", str(out_dir), "--graph"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = str(Path(__file__).resolve().parent.parent / "scripts" / "neo4j.sh")
    subprocess.run([server, "stop"], check=True, env=os.environ | {"PYTHON": sys.executable})
    done = subprocess.run(
        linkage_cli + ["bulk-import", str(out_dir / "graph")], check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _count_requests(input_dir: Path) -> int:
    code = (
        "import glob,sys,pyarrow.parquet as pq\n"
        "print(sum(pq.ParquetFile(f).metadata.num_rows for f in "
        "glob.glob(sys.argv[1] + '/requests/**/*.parquet', recursive=True)))\n"
    )
    output = subprocess.run([sys.executable, "-c", code, str(input_dir)], check=True, capture_output=True, text=True)
    return int(output.stdout)


def _print_stages(run: dict) -> None:
    peaks, cpu = run.get("stage_peak_rss_mb") or {}, run.get("cpu_s") or {}
    for stage, seconds in run["timings_s"].items():  # detect/… are parts of detect
        print(
            f"{'':>6}   {stage:<20} {seconds:>7.2f} s   cpu {cpu.get(stage, 0):>6.2f} s"
            f"   peak RSS so far {peaks.get(stage, 0):>7.0f} MB",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scales", default="0.05,0.25,1.0")
    parser.add_argument("--neo4j-scales", default="0.05", help="transactional MERGE load (server running)")
    parser.add_argument("--bulk-scales", default="", help="neo4j-admin full import (stops the project's server)")
    parser.add_argument("--work", default="/tmp/linkage-scale")
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument(
        "--inputs",
        default="",
        help="existing input dirs (comma-separated, e.g. another generator's worlds) instead of simulating",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each --inputs dir, each after its own floor")
    args = parser.parse_args()
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    linkage_cli = [sys.executable, "-m", "linkage.cli"]
    print(f"{'scale':>6} {'requests':>10} {'scan s':>7} {'run s':>7} {'x scan':>7} {'s/M req':>8} {'peak MB':>8}")
    for input_dir in [Path(d) for d in args.inputs.split(",") if d]:
        requests = _count_requests(input_dir)
        out = Path(args.work) / f"out-{input_dir.parent.name}-{input_dir.name}"
        ratios = []
        # the host's speed drifts by a tenth within minutes: each run is set against a floor read just before it
        for _ in range(args.repeat):
            floor = scan_floor(input_dir)
            wall, _ = timed(linkage_cli + ["run", str(input_dir), "--out", str(out)])
            run = json.loads((out / "run.json").read_text())
            ratios.append(wall / floor)
            print(
                f"{str(input_dir):>6} {requests:>10} {floor:>7.1f} {wall:>7.1f} {wall / floor:>7.1f} "
                f"{wall / requests * 1e6:>8.2f} {run['peak_rss_mb']:>8.0f}",
                flush=True,
            )
            _print_stages(run)
            with open(results / "scale.jsonl", "a") as fh:
                row = {
                    "input": str(input_dir),
                    "requests": requests,
                    "scan_s": round(floor, 2),
                    "run_s": round(wall, 1),
                }
                fh.write(json.dumps(row | {"x_scan": round(wall / floor, 1), "peak_rss_mb": run["peak_rss_mb"]}) + "\n")
        if len(ratios) > 1:
            print(
                f"{str(input_dir):>6} x scan over {len(ratios)} runs: median {statistics.median(ratios):.1f}, "
                f"{min(ratios):.1f}-{max(ratios):.1f}",
                flush=True,
            )
    for scale in [float(s) for s in args.scales.split(",") if s]:
        data = Path(args.work) / f"s{scale}"
        if not (data / "simulation.json").exists():
            subprocess.run(
                linkage_cli
                + ["simulate", "--out", str(data), "--scale", str(scale), "--seed", str(args.seed), "--world", "fixed"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        requests = json.loads((data / "simulation.json").read_text())["requests"]
        floor = scan_floor(data / "input")
        out = data / "out"
        wall, _ = timed(linkage_cli + ["run", str(data / "input"), "--out", str(out)])
        run = json.loads((out / "run.json").read_text())
        row = {
            "scale": scale,
            "requests": requests,
            "scan_s": round(floor, 2),
            "run_s": round(wall, 1),
            "x_scan": round(wall / floor, 1),
            "s_per_million": round(wall / requests * 1e6, 2),
            "peak_rss_mb": run["peak_rss_mb"],
            "stages_s": run["timings_s"],
            "stage_cpu_s": run.get("cpu_s"),
            "stage_peak_rss_mb": run.get("stage_peak_rss_mb"),
        }
        if str(scale) in args.neo4j_scales.split(",") and os.environ.get("NEO4J_URI"):
            row["neo4j"] = neo4j_load(data / "input")
        if str(scale) in args.bulk_scales.split(","):
            row["neo4j_bulk"] = bulk_load(data / "input", data / "out-graph")
        print(
            f"{scale:>6} {requests:>10} {floor:>7.1f} {wall:>7.1f} {wall / floor:>7.1f} "
            f"{row['s_per_million']:>8.2f} {run['peak_rss_mb']:>8.0f}"
            + (f"  neo4j: {row['neo4j']}" if "neo4j" in row else "")
            + (f"  neo4j bulk: {row['neo4j_bulk']}" if "neo4j_bulk" in row else ""),
            flush=True,
        )
        _print_stages(run)
        with open(results / "scale.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
