"""The naive recipe, for comparison: connected components over any shared payment instrument,
IP address or device. Every component of two or more accounts is a ring, every ring flagged,
scored by its size. Runs on the same graph tables as the real pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from .export import write_csv, write_json
from .graph import build_graph
from .ingest import Quarantine
from .pipeline import load_inputs
from .progress import StageClock
from .settings import Settings


def run_baseline(input_dir: Path, out_dir: Path, settings: Settings | None = None) -> pl.DataFrame:
    settings = settings or Settings()
    clock = StageClock()
    inputs = load_inputs(Path(input_dir), settings, Quarantine(), clock)
    graph = build_graph(inputs.accounts, inputs.payments, inputs.requests, inputs.templates)
    accounts = graph.nodes["Account"].select("account_id").with_row_index("idx")
    links = pl.concat(
        [
            graph.rels[r]
            .select(pl.col("src").alias("account_id"), pl.col("dst").cast(pl.Utf8).alias("entity"))
            .with_columns(pl.lit(r).alias("kind"))
            for r in ("PAID_WITH", "USED_IP", "USED_DEVICE")
        ]
    )
    links = links.join(accounts, on="account_id").with_columns(
        (pl.col("kind") + "|" + pl.col("entity")).rank("dense").cast(pl.Int64).alias("e")
    )
    n, m = accounts.height, int(links["e"].max() or 0) + 1
    incidence = sp.csr_matrix((np.ones(links.height), (links["idx"].to_numpy(), links["e"].to_numpy())), shape=(n, m))
    # accounts joined through an entity ⇔ connected in the bipartite account–entity graph
    bipartite = sp.bmat([[None, incidence], [incidence.T, None]], format="csr")
    _, label = connected_components(bipartite, directed=False)
    members = accounts.with_columns(pl.Series("component", label[:n]))
    sizes = members.group_by("component").len("size").filter(pl.col("size") >= 2)
    members = members.join(sizes, on="component").with_columns(
        (pl.lit("B") + pl.col("component").cast(pl.Utf8)).alias("ring_id")
    )
    rings = (
        sizes.with_columns(
            (pl.lit("B") + pl.col("component").cast(pl.Utf8)).alias("ring_id"),
            pl.col("size").cast(pl.Float64).alias("score"),
            pl.lit(True).alias("flagged"),
        )
        .select("ring_id", "score", "size", "flagged")
        .sort("score", "ring_id", descending=[True, False])
    )
    out_dir = Path(out_dir)
    write_csv(members.select("ring_id", "account_id").sort("ring_id", "account_id"), out_dir / "ring_members.csv")
    write_csv(rings, out_dir / "rings.csv")
    write_json(
        {"method": "baseline: connected components over shared instrument, IP or device", "rings": rings.height},
        out_dir / "run.json",
    )
    return rings
