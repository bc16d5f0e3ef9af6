"""Against the real Neo4j server started by `make neo4j-start` (CI: `make test`). Never a mock."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

import linkage
from linkage.cli import main
from linkage.cypher import queries
from linkage.errors import LockHeldError, StoreError
from linkage.pipeline import detect_from_store
from linkage.settings import Settings

from .conftest import TINY, read_csv

pytestmark = pytest.mark.neo4j


def _connect():
    from linkage.store.neo4j import Neo4jStore

    if not os.environ.get("NEO4J_URI"):
        if os.environ.get("LINKAGE_REQUIRE_NEO4J"):
            pytest.fail("NEO4J_URI is not set but the Neo4j tests are required (CI)")
        pytest.skip("no Neo4j server: run `make neo4j-start` and source .neo4j/env")
    return Neo4jStore.from_settings(Settings().neo4j)


@pytest.fixture
def store():
    store = _connect()
    with store.driver.session() as session:  # CALL … IN TRANSACTIONS needs an auto-commit transaction
        session.run("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS").consume()
    yield store
    store.close()


@pytest.fixture(scope="module")
def tiny_result():
    return linkage.run(TINY)


def _snapshot(store) -> tuple[dict, list]:
    counts = store.counts()
    props, _, _ = store.driver.execute_query(
        "MATCH (a:Account) OPTIONAL MATCH (a)-[r]->(x) WHERE NOT x:Ring "
        "RETURN a.account_id AS a, a.requests AS n, type(r) AS t, r.count AS c ORDER BY a, t, c"
    )
    return counts, [tuple(r.values()) for r in props]


def test_schema_is_idempotent(store) -> None:
    store.apply_schema()
    store.apply_schema()
    constraints, _, _ = store.driver.execute_query("SHOW CONSTRAINTS YIELD name RETURN count(*) AS n")
    assert constraints[0]["n"] == 13  # one per node label, Ring, Run and the load lock


def test_reload_leaves_the_graph_identical(store, tiny_result) -> None:
    store.write_graph(tiny_result.graph)
    first = _snapshot(store)
    store.write_graph(tiny_result.graph)
    assert _snapshot(store) == first
    assert first[0]["nodes"] == sum(f.height for f in tiny_result.graph.nodes.values())


def test_parallel_loads_neither_deadlock_nor_duplicate(store, tiny_result) -> None:
    errors: list[BaseException] = []

    def load() -> None:
        try:
            other = _connect()
            other.write_graph(tiny_result.graph)
            other.close()
        except BaseException as exc:  # noqa: BLE001 — reported below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    counts = store.counts()
    assert counts["nodes"] == sum(f.height for f in tiny_result.graph.nodes.values())
    assert counts["relationships"] == sum(f.height for f in tiny_result.graph.rels.values())


def test_detection_from_the_store_equals_the_embedded_run(store, tiny_result, tmp_path: Path) -> None:
    store.write_graph(tiny_result.graph)
    from_store = detect_from_store(store, tmp_path / "out", Settings())
    assert from_store.rings.drop("evidence").equals(tiny_result.rings.drop("evidence"))
    assert from_store.members.equals(tiny_result.members)
    assert (tmp_path / "out" / "rings.csv").exists()


def test_detection_from_the_store_when_optional_columns_are_null_everywhere(store, tmp_path: Path) -> None:
    """Neo4j keeps no null properties: a run whose input has no org_id, ASN, IP type, instrument type
    or token counts reads back without those columns, and detection from the store still equals
    the embedded run (it crashed on the missing org_id)."""
    data = tmp_path / "in"
    data.mkdir()
    read_csv(TINY / "accounts.csv").drop("org_id").write_csv(data / "accounts.csv")
    read_csv(TINY / "payments.csv").drop("instrument_type").write_csv(data / "payments.csv")
    read_csv(TINY / "requests.csv").drop("asn", "ip_type", "input_tokens", "output_tokens").write_csv(
        data / "requests.csv"
    )
    embedded = linkage.run(data)
    store.write_graph(embedded.graph)
    read_back = store.read_graph()
    assert {"org_id", "output_tokens"} <= set(read_back.nodes["Account"].columns)
    assert {"asn", "ip_type"} <= set(read_back.nodes["IP"].columns)
    from_store = detect_from_store(store, None, Settings(), write_back=False)
    assert from_store.rings.height > 0
    assert from_store.rings.drop("evidence").equals(embedded.rings.drop("evidence"))


def test_ring_write_back_replaces_previous_rings(store, tiny_result) -> None:
    store.write_graph(tiny_result.graph)
    store.write_rings(tiny_result.rings, tiny_result.members, run_id="r1")
    store.write_rings(
        tiny_result.rings.head(1),
        tiny_result.members.filter(pl.col("ring_id") == tiny_result.rings["ring_id"][0]),
        run_id="r2",
    )
    rings, _, _ = store.driver.execute_query("MATCH (r:Ring) RETURN collect(DISTINCT r.run_id) AS runs, count(r) AS n")
    assert rings[0]["runs"] == ["r2"] and rings[0]["n"] == 1


def _cli(*args: str) -> str:
    outcome = CliRunner().invoke(main, list(args))
    assert outcome.exit_code == 0, outcome.output
    return outcome.output


def test_every_named_query_on_known_answers(store, tiny_result) -> None:
    store.write_graph(tiny_result.graph)
    store.write_rings(tiny_result.rings, tiny_result.members, run_id="r1")
    ring = tiny_result.rings.filter(pl.col("flagged"))["ring_id"][0]
    members = pl.read_json(_cli("query", "ring_members", "--param", f"ring_id={ring}", "--format", "json").encode())
    assert sorted(members["account_id"].to_list()) == [f"ring_{i:02d}" for i in range(12)]
    why = pl.read_json(
        _cli("query", "why_linked", "--param", "a=ring_00", "--param", "b=ring_03", "--format", "json").encode()
    )
    assert {"card_ring_0", "fp:ring-client"} <= set(why["entity"].to_list())
    near = pl.read_json(
        _cli(
            "query",
            "neighbourhood",
            "--param",
            "account_id=family_0",
            "--param",
            "depth=1",
            "--param",
            "max_shared=50",
            "--param",
            "limit=50",
            "--format",
            "json",
        ).encode()
    )
    assert sorted(near["account_id"].to_list()) == ["family_1", "family_2"]
    tied = pl.read_json(_cli("query", "accounts_by_entity", "--param", "value=card_acme", "--format", "json").encode())
    assert sorted(tied["account_id"].to_list()) == [f"org_{i:02d}" for i in range(10)]
    templates = pl.read_json(
        _cli("query", "ring_templates", "--param", f"ring_id={ring}", "--param", "limit=3", "--format", "json").encode()
    )
    assert templates["members"][0] == 12 and "step-by-step" in templates["scaffold"][0]
    flagged = pl.read_json(_cli("query", "flagged_rings", "--param", "limit=5", "--format", "json").encode())
    assert flagged["ring_id"].to_list() == [ring]
    sharing = _cli("query", "rings_sharing_infrastructure", "--param", "min_shared=1", "--param", "limit=5")
    assert "(0 rows)" in sharing  # the tiny rings share nothing
    assert "ring_id" in _cli("query", "rings_new_or_grown", "--param", "min_growth=0")
    assert set(queries()) >= {
        "ring_members",
        "why_linked",
        "neighbourhood",
        "accounts_by_entity",
        "ring_templates",
        "rings_sharing_infrastructure",
        "rings_new_or_grown",
    }


def test_investigator_queries_cannot_write(store) -> None:
    with pytest.raises(StoreError, match="(?i)write"):
        store.run_read_query("CREATE (:Account {account_id: 'evil'})", {})
    found, _, _ = store.driver.execute_query("MATCH (a:Account {account_id: 'evil'}) RETURN count(a) AS n")
    assert found[0]["n"] == 0


def test_injection_in_ids_and_parameters_is_inert(store, tiny_result) -> None:
    from linkage.graph import Graph

    graph = Graph(dict(tiny_result.graph.nodes), dict(tiny_result.graph.rels))  # the module's result stays as it was
    evil = "x'}) DETACH DELETE n //"
    graph.nodes["Account"] = pl.concat(
        [graph.nodes["Account"], graph.nodes["Account"].head(1).with_columns(pl.lit(evil).alias("account_id"))]
    )
    store.write_graph(graph)
    keys, rows = store.run_read_query("MATCH (a:Account {account_id: $id}) RETURN a.account_id", {"id": evil})
    assert rows == [[evil]]
    output = _cli("query", "why_linked", "--param", f"a={evil}", "--param", "b=' OR 1=1 MATCH (n) DETACH DELETE n //")
    assert "(0 rows)" in output
    assert store.counts()["nodes"] == sum(f.height for f in graph.nodes.values())


def test_bulk_import_holds_the_same_graph_as_the_transactional_load(store, tiny_result, tmp_path: Path) -> None:
    """Full rebuilds through neo4j-admin: same nodes, relationships and properties, same rings.
    Stops and restarts the project's server (the importer needs the database offline)."""
    import subprocess
    import sys

    from linkage.store.neo4j_import import bulk_import

    store.write_graph(tiny_result.graph)
    before = _snapshot(store)
    store.close()
    server = [str(Path(__file__).resolve().parent.parent / "scripts" / "neo4j.sh")]
    env = os.environ | {"PYTHON": sys.executable}
    subprocess.run(server + ["stop"], check=True, env=env)
    try:
        stats = bulk_import(tiny_result.graph, Settings().neo4j.admin_command)
    finally:
        subprocess.run(server + ["start"], check=True, env=env)
    assert stats.relationships == sum(frame.height for frame in tiny_result.graph.rels.values())
    imported = _connect()
    try:
        assert _snapshot(imported) == before
        times, _, _ = imported.driver.execute_query(
            "MATCH (a:Account) WHERE a.created_at IS NOT NULL RETURN a.account_id AS id, a.created_at AS t ORDER BY id LIMIT 1"
        )
        expected = tiny_result.graph.nodes["Account"].filter(pl.col("account_id") == times[0]["id"])["created_at"][0]
        assert times[0]["t"].to_native() == expected
        again = detect_from_store(imported, tmp_path / "from-import", Settings(), write_back=False)
        assert again.members.sort("account_id").equals(tiny_result.members.sort("account_id"))
    finally:
        imported.close()


# ---------------------------------------------------------------- issue 17 regressions (Neo4j)
def _graph_signature(store) -> tuple[list, list]:
    """Every linkage node and relationship by key (Run history and the lock left out)."""
    nodes, _, _ = store.driver.execute_query(
        "MATCH (n) WHERE NOT n:Run AND NOT n:LinkageLock AND NOT n:Ring "
        "RETURN labels(n)[0] AS label, coalesce(n.account_id, n.ip, n.subnet, toString(n.asn), n.device_id, "
        "n.template_id, n.instrument_id, n.org_id, n.domain, n.model) AS key ORDER BY label, key"
    )
    rels, _, _ = store.driver.execute_query(
        "MATCH (a)-[r]->(b) WHERE NOT b:Run AND NOT b:Ring "
        "RETURN type(r) AS t, elementId(a) IS NOT NULL AS ok, r.count AS c, "
        "coalesce(a.account_id, a.ip) AS src, coalesce(b.ip, b.subnet, toString(b.asn), b.device_id, b.template_id, "
        "b.instrument_id, b.org_id, b.domain, b.model) AS dst ORDER BY t, src, dst"
    )
    return [tuple(r.values()) for r in nodes], [tuple(r.values()) for r in rels]


def test_f5_rebuild_after_removing_a_partition_equals_a_full_load(store, tmp_path: Path) -> None:
    import shutil

    from linkage.rebuild import rebuild

    from .test_rebuild import _partitioned

    data = _partitioned(tmp_path / "in")
    rebuild(data, tmp_path / "out", store=store)
    partitions = sorted((data / "requests").iterdir())
    shutil.rmtree(partitions[-1])  # a day withdrawn, and another day rewritten with half its rows
    victim = sorted(partitions[0].rglob("*.csv"))[0]
    frame = pl.read_csv(victim, infer_schema_length=0)
    frame.head(frame.height // 2).write_csv(victim)
    rebuild(data, tmp_path / "out", store=store)
    incremental = _graph_signature(store)
    rebuild(data, tmp_path / "fresh", store=store, full=True)  # from an emptied database
    assert incremental == _graph_signature(store)
    with store.driver.session() as session:  # and a database holding a stranger's leftovers is emptied
        session.run("CREATE (:Account {account_id: 'stale'})").consume()
    rebuild(data, tmp_path / "fresh2", store=store, full=True)
    assert _graph_signature(store) == incremental


def test_f6_server_lost_mid_load_is_one_line_exit_3(
    store, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from neo4j.exceptions import ServiceUnavailable, SessionExpired

    from linkage.store import neo4j as neo4j_store

    calls = {"n": 0}
    real = neo4j_store.Neo4jStore._write_batches

    def dropped(self, statement, rows):
        calls["n"] += 1
        if calls["n"] == 3:  # the connection dies after two label loads
            raise SessionExpired("Failed to read from defunct connection")
        return real(self, statement, rows)

    monkeypatch.setattr(neo4j_store.Neo4jStore, "_write_batches", dropped)
    result = CliRunner().invoke(main, ["run", str(tiny), "--out", str(tmp_path / "out"), "--neo4j"])
    assert result.exit_code == 3
    assert len(result.stderr.strip().splitlines()) == 1 and "connection lost" in result.stderr
    monkeypatch.setattr(
        neo4j_store.Neo4jStore, "_write_batches", lambda self, s, r: (_ for _ in ()).throw(ServiceUnavailable("gone"))
    )
    result = CliRunner().invoke(main, ["rebuild", str(tiny), "--out", str(tmp_path / "nightly"), "--neo4j"])
    assert result.exit_code == 3
    assert json.loads(result.stdout.strip().splitlines()[-1])["exit_reason"] == "store_error"


def test_f11_queries_cannot_read_the_servers_files(store) -> None:
    with pytest.raises(StoreError):
        store.run_read_query('LOAD CSV FROM "file:///etc/passwd" AS line RETURN line LIMIT 1', {})
    with pytest.raises(StoreError):
        store.run_read_query('LOAD CSV FROM "file:///../../../../etc/passwd" AS line RETURN line LIMIT 1', {})


def test_f12_concurrent_loads_are_serialised_by_the_database_lock(store, tiny_result) -> None:
    from linkage.errors import LockHeldError
    from linkage.store.neo4j import Neo4jStore

    settings = Settings().neo4j
    first = Neo4jStore.from_settings(settings, writer=True)
    try:
        impatient = settings.model_copy(update={"lock_wait_seconds": 0.5})
        with pytest.raises(LockHeldError, match="is loading"):
            Neo4jStore.from_settings(impatient, writer=True)
        Neo4jStore.from_settings(impatient, writer=False).close()  # readers never wait
    finally:
        first.close()
    errors: list[BaseException] = []

    def load() -> None:
        try:
            writer = Neo4jStore.from_settings(settings, writer=True)
            try:
                writer.write_graph(tiny_result.graph)
                writer.write_rings(tiny_result.rings, tiny_result.members, run_id="r")
            finally:
                writer.close()
        except BaseException as exc:  # noqa: BLE001 — collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    rings, _, _ = store.driver.execute_query("MATCH (r:Ring) RETURN count(r) AS n")
    assert rings[0]["n"] == tiny_result.rings.height


def test_f12_a_killed_holders_lock_is_taken_over_at_once(store) -> None:
    import socket

    from linkage.store.neo4j import Neo4jStore

    dead = f"{socket.gethostname()}:999999:killed"  # no such pid: the holder was SIGKILLed
    store.driver.execute_query(
        "MERGE (l:LinkageLock {name: 'load'}) SET l.holder = $holder, l.expires_ms = timestamp() + 3600000",
        holder=dead,
    )
    impatient = Settings().neo4j.model_copy(update={"lock_wait_seconds": 0.5})
    writer = Neo4jStore.from_settings(impatient, writer=True)
    try:
        records, _, _ = store.driver.execute_query("MATCH (l:LinkageLock {name: 'load'}) RETURN l.holder AS h")
        assert records[0]["h"] == writer.lock_holder != dead
    finally:
        writer.close()
    other_host = "elsewhere:1:alive"  # another host's holder is never presumed dead: it waits out the lease
    store.driver.execute_query(
        "MERGE (l:LinkageLock {name: 'load'}) SET l.holder = $holder, l.expires_ms = timestamp() + 3600000",
        holder=other_host,
    )
    with pytest.raises(LockHeldError, match="elsewhere"):
        Neo4jStore.from_settings(impatient, writer=True)
    store.driver.execute_query("MATCH (l:LinkageLock) DELETE l")


def test_f12_the_heartbeat_keeps_a_long_load_s_lease(store) -> None:
    from linkage.store.neo4j import Neo4jStore

    short = Settings().neo4j.model_copy(update={"lock_lease_seconds": 0.4, "lock_wait_seconds": 0.3})
    holder = Neo4jStore.from_settings(short, writer=True)
    try:
        time.sleep(1.5)  # several leases long, with no loading step renewing it
        with pytest.raises(LockHeldError):
            Neo4jStore.from_settings(short, writer=True)
        assert not holder.lock_lost
    finally:
        holder.close()
    Neo4jStore.from_settings(short, writer=True).close()  # released: the next writer gets it at once


# ---------------------------------------------------------------- issue 16: queries without traps
QUERY_CASES = [
    ("flagged_rings", {}),
    ("ring_members", {"ring_id": "RING"}),
    ("ring_templates", {"ring_id": "RING"}),
    ("rings_new_or_grown", {}),
    ("rings_sharing_infrastructure", {}),
    ("why_linked", {"a": "ring_00", "b": "ring_05"}),
    ("why_linked", {"a": "family_0", "b": "org_03"}),
    ("accounts_by_entity", {"value": "card_ring_0"}),
    ("accounts_by_entity", {"value": "53999901"}),  # a BIN
    ("accounts_by_entity", {"value": "16000"}),  # an ASN
    ("accounts_by_entity", {"value": "u0x@mailbox-q.net"}),  # a mailbox
    ("accounts_by_entity", {"value": "step-by-step reasoning"}),  # template text
    ("accounts_by_entity", {"value": "45.1.1.0/24", "kind": "Subnet"}),
    ("neighbourhood", {"account_id": "ring_00", "depth": "1"}),
    ("neighbourhood", {"account_id": "family_0", "depth": "3", "max_shared": "20"}),
    ("neighbourhood", {"account_id": "ben_00", "depth": "2", "frontier": "3"}),
]


def test_named_queries_give_the_same_answers_with_and_without_neo4j(store, tmp_path: Path) -> None:
    from linkage.cli import plain_value
    from linkage.cypher import query as named_query
    from linkage.store.embedded import EmbeddedStore
    from linkage.store.lookups import run_lookup

    result = linkage.run(TINY, tmp_path / "out", store=[EmbeddedStore(tmp_path / "out" / "graph"), store])
    ring = result.rings.filter(pl.col("flagged"))["ring_id"][0]
    for name, given in QUERY_CASES:
        chosen = named_query(name)
        values = chosen.bind({k: (ring if v == "RING" else v) for k, v in given.items()})
        neo_keys, neo_rows = store.run_read_query(chosen.text, values)
        file_keys, file_rows = run_lookup(tmp_path / "out" / "graph", name, values)
        assert neo_keys == file_keys, name
        assert [plain_value(r) for r in neo_rows] == [plain_value(r) for r in file_rows], (name, given)
        if name in ("accounts_by_entity", "why_linked", "ring_members"):
            assert neo_rows, (name, given)  # each lookup finds something on the fixture
    # the run's flag cut is kept with the rings it flagged, in both stores
    cut = result.summary["rings"]["flag_cut"]
    assert cut is not None
    _, runs = store.run_read_query("MATCH (r:Run) WHERE r.flag_cut IS NOT NULL RETURN r.flag_cut AS cut", {})
    assert [row[0] for row in runs] == [pytest.approx(cut)]
    assert json.loads((tmp_path / "out" / "graph" / "rings" / "run.json").read_text())["flag_cut"] == pytest.approx(cut)


def test_neo4j_browser_is_served_on_loopback(store) -> None:
    import urllib.request

    url = os.environ.get("NEO4J_BROWSER_URL")
    if not url:
        pytest.skip("NEO4J_BROWSER_URL not set (a server not started by scripts/neo4j.sh)")
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200 and b"Neo4j Browser" in response.read()


def test_explain_through_neo4j_gives_the_numbers_the_files_give(store, tmp_path: Path) -> None:
    from dataclasses import asdict

    from linkage.explain import RunTables, explain_account, explain_pair

    out = tmp_path / "out"
    result = linkage.run(TINY, out, store=[store])
    stored = RunTables.from_store(store)
    flagged = result.members.join(result.rings.filter(pl.col("flagged")).select("ring_id"), on="ring_id")
    assert flagged.height >= 10
    for member in flagged["account_id"].to_list():
        from_files = explain_account(out, member)
        assert asdict(explain_account(stored, member)) == asdict(from_files)
        for link in from_files.links[:3]:
            assert asdict(explain_pair(stored, member, link["partner"])) == asdict(
                explain_pair(out, member, link["partner"])
            )
    words = CliRunner().invoke(main, ["explain", "--neo4j", flagged["account_id"][0]])
    assert words.exit_code == 0 and "attachment" in words.stdout
