"""The embedded store: the graph tables as Parquet files in a directory (no server)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ..errors import InputError
from ..export import write_json, write_parquet
from ..graph import NODE_SPECS, REL_SPECS, Graph, with_optional_properties

# written after every table of a graph: its absence means the last write was cut short (a killed
# run), and the tables may be a mix of two graphs or incomplete
GRAPH_COMPLETE = "graph_complete.json"


class EmbeddedStore:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def write_graph(self, graph: Graph) -> None:
        marker = self.directory / GRAPH_COMPLETE
        marker.unlink(missing_ok=True)  # before the first table changes
        for label, frame in graph.nodes.items():
            write_parquet(frame, self.directory / "nodes" / f"{label}.parquet")
        for rel_type, frame in graph.rels.items():
            write_parquet(frame, self.directory / "relationships" / f"{rel_type}.parquet")
        write_json({"nodes": sorted(graph.nodes), "relationships": sorted(graph.rels)}, marker)

    def has_graph(self) -> bool:
        """Whether a whole graph was written here (the last write was not cut short)."""
        return (self.directory / GRAPH_COMPLETE).exists()

    def read_graph(self) -> Graph:
        nodes = {spec.label: self.directory / "nodes" / f"{spec.label}.parquet" for spec in NODE_SPECS}
        rels = {rel.type: self.directory / "relationships" / f"{rel.type}.parquet" for rel in REL_SPECS}
        missing = [str(path) for path in [*nodes.values(), *rels.values()] if not path.exists()]
        if missing:
            raise InputError(f"{self.directory}: not a complete graph ({', '.join(missing[:3])} missing)")
        # (a graph written by an earlier version may lack a property added since: restored as null)
        return with_optional_properties(
            Graph(
                {label: pl.read_parquet(path) for label, path in nodes.items()},
                {rel_type: pl.read_parquet(path) for rel_type, path in rels.items()},
            )
        )

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
