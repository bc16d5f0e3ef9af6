"""Named-query latency on a real Neo4j: `neighbourhood` (bounded hop by hop) and friends, on a
simulated month loaded through `linkage run --neo4j`, and the same lookups over the Parquet graph.

    python bench/queries.py [--scale 0.05] [--seed 5] [--samples 20]

Needs NEO4J_* (make neo4j-start; set -a; . .neo4j/env). Prints per query the median and worst
wall time over accounts drawn from the run (flagged-ring members and ordinary accounts)."""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import polars as pl

import linkage
from linkage.cypher import query as named_query
from linkage.settings import Settings
from linkage.simulate import SimulationConfig, simulate
from linkage.store.embedded import EmbeddedStore
from linkage.store.lookups import run_lookup
from linkage.store.neo4j import Neo4jStore


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="linkage-queries-"))
    simulate(work / "sim", SimulationConfig(scale=args.scale, seed=args.seed, world="fixed"))
    store = Neo4jStore.from_settings(Settings().neo4j, writer=True)
    store.clear_graph()
    started = time.perf_counter()
    result = linkage.run(work / "sim" / "input", work / "out", store=[EmbeddedStore(work / "out" / "graph"), store])
    print(f"scale {args.scale}: {result.graph.counts()} loaded and detected in {time.perf_counter() - started:.0f} s")
    rng = random.Random(args.seed)
    accounts = result.graph.nodes["Account"]["account_id"].to_list()
    ringed = result.members.filter(pl.col("ring_id").is_in(result.rings.filter(pl.col("flagged"))["ring_id"].implode()))
    picks = rng.sample(accounts, args.samples // 2) + rng.sample(ringed["account_id"].to_list(), args.samples // 2)
    cases = {
        "neighbourhood depth 2": ("neighbourhood", lambda a: {"account_id": a, "depth": "2"}),
        "neighbourhood depth 3": ("neighbourhood", lambda a: {"account_id": a, "depth": "3"}),
        "why_linked": ("why_linked", lambda a: {"a": a, "b": picks[0]}),
        "accounts_by_entity (ip)": ("accounts_by_entity", lambda a: {"value": "45.1.1.10"}),
    }
    print(f"{'query':<26} {'neo4j median':>12} {'worst':>8} {'files median':>13} {'worst':>8}")
    for label, (name, params) in cases.items():
        chosen = named_query(name)
        neo, files = [], []
        for account in picks:
            values = chosen.bind(params(account))
            began = time.perf_counter()
            store.run_read_query(chosen.text, values)
            neo.append(time.perf_counter() - began)
            began = time.perf_counter()
            run_lookup(work / "out" / "graph", name, values)
            files.append(time.perf_counter() - began)
        print(
            f"{label:<26} {statistics.median(neo):>11.3f}s {max(neo):>7.3f}s {statistics.median(files):>12.3f}s "
            f"{max(files):>7.3f}s"
        )
    store.close()


if __name__ == "__main__":
    main()
