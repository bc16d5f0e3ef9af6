from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from linkage.graph import Graph

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "fixtures" / "tiny"
TINY_LABELS = ROOT / "fixtures" / "tiny_labels.csv"


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A private copy of the tiny fixture that a test may damage."""
    target = tmp_path / "tiny"
    shutil.copytree(TINY, target)
    return target


def read_csv(path: Path) -> pl.DataFrame:
    return pl.read_csv(path, infer_schema_length=0)


# ---------------------------------------------------------------- minimal graphs
T0 = datetime(2026, 2, 1, tzinfo=UTC)


def graph_of(
    n: int,
    shares: dict[str, list[tuple[str, list[int]]]],
    orgs: dict[int, str] | None = None,
    domains: dict[int, str] | None = None,
    signup_ips: dict[int, str] | None = None,
) -> Graph:
    """A minimal graph: n accounts and, per relationship type, entities with their member indices;
    ``orgs``, ``domains`` and ``signup_ips``: declared orgs, mail domains and sign-up addresses by
    account index."""
    ids = [f"a{i:04d}" for i in range(n)]
    graph = Graph()
    graph.nodes["Account"] = pl.DataFrame(
        {
            "account_id": ids,
            "created_at": [T0] * n,
            "email": [None] * n,
            "email_domain": [(domains or {}).get(i) for i in range(n)],
            "org_id": [(orgs or {}).get(i) for i in range(n)],
            "signup_ip": [(signup_ips or {}).get(i) for i in range(n)],
            "requests": [10] * n,
            "activity_signature": [None] * n,
        },
        schema_overrides={
            "email": pl.Utf8,
            "email_domain": pl.Utf8,
            "org_id": pl.Utf8,
            "signup_ip": pl.Utf8,
            "activity_signature": pl.List(pl.Int64),
        },
    ).with_columns(pl.col("created_at").dt.replace_time_zone("UTC") + pl.duration(days=pl.int_range(n)))
    empty = pl.DataFrame(
        schema={
            "src": pl.Utf8,
            "dst": pl.Utf8,
            "count": pl.Int64,
            "first_seen": pl.Datetime("ms", "UTC"),
            "last_seen": pl.Datetime("ms", "UTC"),
        }
    )
    for rel in (
        "PAID_WITH",
        "USED_DEVICE",
        "SENT_TEMPLATE",
        "HAS_EMAIL_DOMAIN",
        "SIGNED_UP_FROM",
        "USED_IP",
        "USED_MODEL",
    ):
        rows = [(ids[i], entity) for entity, members in shares.get(rel, []) for i in members]
        graph.rels[rel] = (
            pl.DataFrame(
                {"src": [r[0] for r in rows], "dst": [r[1] for r in rows], "count": [1] * len(rows)},
                schema={"src": pl.Utf8, "dst": pl.Utf8, "count": pl.Int64},
            ).with_columns(first_seen=pl.lit(T0), last_seen=pl.lit(T0))
            if rows
            else empty
        )
    ips = sorted({e for e, _ in shares.get("USED_IP", [])})
    graph.nodes["IP"] = pl.DataFrame(
        {
            "ip": ips,
            "subnet": [None] * len(ips),
            "asn": [None] * len(ips),
            "ip_type": ["mobile" if ip.startswith("100.") else "residential" for ip in ips],
        },
        schema={"ip": pl.Utf8, "subnet": pl.Utf8, "asn": pl.Int64, "ip_type": pl.Utf8},
    )
    graph.nodes["PaymentInstrument"] = pl.DataFrame(
        {"instrument_id": [e for e, _ in shares.get("PAID_WITH", [])]}, schema={"instrument_id": pl.Utf8}
    ).with_columns(pl.lit(None, pl.Utf8).alias("instrument_type"), pl.lit(None, pl.Utf8).alias("bin"))
    return graph


def singly_held(n: int, rel: str, prefix: str, skip: set[int]) -> list[tuple[str, list[int]]]:
    """Every other account holds one entity of its own (the background the null model counts)."""
    return [(f"{prefix}{i}", [i]) for i in range(n) if i not in skip]


def input_tables(inputs: Path) -> dict[str, pl.DataFrame]:
    """The three tables of a linkage input folder in Parquet (requests partitioned), as frames."""
    return {
        "accounts": pl.read_parquet(inputs / "accounts.parquet"),
        "payments": pl.read_parquet(inputs / "payments.parquet"),
        "requests": pl.read_parquet(str(inputs / "requests" / "**" / "*.parquet"), hive_partitioning=False),
    }


def random_world(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A small world of the simulator's random family (seed 2, scale 0.005) with its labels."""
    from linkage.simulate import SimulationConfig, simulate

    root = tmp_path_factory.mktemp(name) / "sim"
    simulate(root, SimulationConfig(scale=0.005, seed=2, world="random"))
    return root
