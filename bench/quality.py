"""Detection-quality benchmark: simulate → run → eval (and the naive baseline) over seeds and scales.

    python bench/quality.py [--scales 0.01,0.05] [--seeds 11,12,13] [--work /tmp/linkage-quality]

Tuning seeds are 1 and 2; report on others. Prints one table; JSON rows go to
bench/results/quality.jsonl.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from linkage.baseline import run_baseline
from linkage.evaluate import evaluate
from linkage.pipeline import run
from linkage.simulate import SimulationConfig, simulate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scales", default="0.01,0.05")
    parser.add_argument("--seeds", default="11,12,13")
    parser.add_argument("--work", default="/tmp/linkage-quality")
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    header = (f"{'scale':>6} {'seed':>5} {'method':>9} {'F1':>6} {'prec':>6} {'recall':>6} {'AP':>6} {'ARI':>6} "
              f"{'benign%':>8} {'min camp recall':>16} {'run s':>7}")
    print(header)
    for scale in [float(s) for s in args.scales.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            data = Path(args.work) / f"s{scale}-seed{seed}"
            if not (data / "simulation.json").exists():
                simulate(data, SimulationConfig(scale=scale, seed=seed))
            methods = [("linkage", lambda out: run(data / "input", out))]
            if not args.no_baseline:
                methods.append(("baseline", lambda out: run_baseline(data / "input", out)))
            for name, call in methods:
                out = data / f"out-{name}"
                start = time.perf_counter()
                call(out)
                elapsed = time.perf_counter() - start
                report = evaluate(out, data / "labels.parquet")
                worst = min(report["campaigns"].items(), key=lambda kv: kv[1]["recall"])
                print(f"{scale:>6} {seed:>5} {name:>9} {report['f1']:>6.3f} {report['precision']:>6.3f} "
                      f"{report['recall']:>6.3f} {report['average_precision']:>6.3f} "
                      f"{report.get('adjusted_rand_index', 0):>6.3f} {100 * report['benign_flagged_rate']:>7.3f}% "
                      f"{worst[0][9:]:>9}={worst[1]['recall']:.2f} {elapsed:>7.1f}", flush=True)
                with open(results / "quality.jsonl", "a") as fh:
                    fh.write(json.dumps({"scale": scale, "seed": seed, "method": name, "seconds": round(elapsed, 2),
                                         **report}) + "\n")


if __name__ == "__main__":
    main()
