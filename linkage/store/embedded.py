"""The embedded store: the graph tables as Parquet files in a directory (no server)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ..export import write_json, write_parquet
from ..graph import NODE_SPECS, REL_SPECS, Graph


class EmbeddedStore:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def write_graph(self, graph: Graph) -> None:
        for label, frame in graph.nodes.items():
            write_parquet(frame, self.directory / "nodes" / f"{label}.parquet")
        for rel_type, frame in graph.rels.items():
            write_parquet(frame, self.directory / "relationships" / f"{rel_type}.parquet")

    def read_graph(self) -> Graph:
        graph = Graph()
        for spec in NODE_SPECS:
            graph.nodes[spec.label] = pl.read_parquet(self.directory / "nodes" / f"{spec.label}.parquet")
        for rel in REL_SPECS:
            graph.rels[rel.type] = pl.read_parquet(self.directory / "relationships" / f"{rel.type}.parquet")
        return graph

    def write_rings(
        self, rings: pl.DataFrame, members: pl.DataFrame, run_id: str, run_props: dict | None = None
    ) -> None:
        write_parquet(members, self.directory / "rings" / "ring_members.parquet")
        write_parquet(rings, self.directory / "rings" / "rings.parquet")
        write_json({"run_id": run_id, **(run_props or {})}, self.directory / "rings" / "run.json")

    def write_explanation(self, links: pl.DataFrame, holdings: pl.DataFrame, detect_settings: str, run_id: str) -> None:
        """The tables `linkage explain` reads, beside the rings (as the Neo4j store keeps them)."""
        write_parquet(links, self.directory / "rings" / "links.parquet")
        write_parquet(holdings, self.directory / "rings" / "holdings.parquet")

    def close(self) -> None:
        pass
