"""Graph stores behind one interface: the embedded Parquet directory and Neo4j.

Detection never reads a store directly: a store hands back the same :class:`~linkage.graph.Graph`
tables, so ``detect`` and ``score`` run identically on either (Splink-style adapters)."""

from __future__ import annotations

from typing import Protocol

import polars as pl

from ..graph import Graph


class GraphStore(Protocol):
    def write_graph(self, graph: Graph) -> None: ...

    def read_graph(self) -> Graph: ...

    def write_rings(
        self, rings: pl.DataFrame, members: pl.DataFrame, run_id: str, run_props: dict | None = None
    ) -> None: ...

    def write_explanation(
        self, links: pl.DataFrame, holdings: pl.DataFrame, detect_settings: str, run_id: str
    ) -> None: ...

    def close(self) -> None: ...
