"""The Neo4j store: schema, idempotent batched loads, atomic ring write-back, reads for detection.

Every statement comes from ``cypher/*.cypher`` and takes its data as parameters. Writes go
through managed transactions (``execute_write``), which retry transient errors such as
deadlocks between two concurrent loads; each unit of work is an idempotent MERGE batch.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import polars as pl
from neo4j import Driver, GraphDatabase, RoutingControl, unit_of_work
from neo4j.exceptions import AuthError, ClientError, DriverError, Neo4jError, ServiceUnavailable

from ..cypher import schema_statements, statements
from ..errors import LockHeldError, StoreError
from ..graph import NODE_SPECS, REL_SPECS, Graph, with_optional_properties
from ..settings import Neo4jSettings

log = logging.getLogger(__name__)
_TIME_COLUMNS = ("created_at", "first_seen", "last_seen", "added_at")


def settings_from_env(base: Neo4jSettings | None = None) -> Neo4jSettings:
    """NEO4J_URI / NEO4J_USERNAME / NEO4J_PASSWORD / NEO4J_DATABASE override the settings file."""
    base = base or Neo4jSettings()
    env = {"uri": "NEO4J_URI", "username": "NEO4J_USERNAME", "password": "NEO4J_PASSWORD", "database": "NEO4J_DATABASE"}
    values = {key: os.environ[var] for key, var in env.items() if os.environ.get(var)}
    return base.model_copy(update=values)


def masked_uri(uri: str) -> str:
    """The URI without credentials (``bolt://user:secret@host`` → ``bolt://host``), for messages."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    return urlunsplit((parts.scheme, host + (f":{parts.port}" if parts.port else ""), parts.path, parts.query, ""))


def _holder_is_dead(holder: str) -> bool:
    """True when a lock holder (``host:pid:tag``) ran on this host and its process no longer exists."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _store_errors(method: _Method) -> _Method:
    """Any driver or server failure inside a store method becomes one StoreError line (exit 3)."""

    @functools.wraps(method)
    def wrapper(self: Neo4jStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (StoreError, LockHeldError):
            raise
        except Neo4jError as exc:
            reason = (exc.message or exc.code or type(exc).__name__).splitlines()[0][:300]
            raise StoreError(f"neo4j at {masked_uri(self.settings.uri)}: {reason}") from exc
        except (DriverError, OSError) as exc:
            raise StoreError(
                f"neo4j at {masked_uri(self.settings.uri)}: connection lost or refused ({type(exc).__name__})"
            ) from exc

    return wrapper  # type: ignore[return-value]


@dataclass
class LoadStats:
    nodes: int = 0
    relationships: int = 0
    seconds: float = 0.0
    per_type: dict[str, float] = field(default_factory=dict)

    @property
    def relationships_per_second(self) -> float:
        return self.relationships / self.seconds if self.seconds else 0.0


class Neo4jStore:
    def __init__(self, driver: Driver, settings: Neo4jSettings) -> None:
        self.driver = driver
        self.settings = settings
        self.last_load = LoadStats()
        self.lock_holder: str | None = None
        self.lock_lost = False
        self._heartbeat_stop: threading.Event | None = None

    @classmethod
    def from_settings(cls, settings: Neo4jSettings | None = None, writer: bool = False) -> Neo4jStore:
        """Connect (and apply the schema). ``writer``: take the database's load lock for the store's
        lifetime (loads and ring write-back), waiting up to ``lock_wait_seconds`` for another holder."""
        settings = settings_from_env(settings)
        where = masked_uri(settings.uri)
        try:
            driver = GraphDatabase.driver(
                settings.uri,
                auth=(settings.username, settings.password),
                max_connection_lifetime=1800,
                liveness_check_timeout=60,
                notifications_min_severity="OFF",
            )
            driver.verify_connectivity()
        except AuthError as exc:
            raise StoreError(f"neo4j at {where}: authentication failed for user '{settings.username}'") from exc
        except ClientError as exc:  # e.g. the server's rate limit after repeated wrong passwords
            raise StoreError(f"neo4j at {where}: refused ({exc.code or type(exc).__name__})") from exc
        except (ServiceUnavailable, DriverError, Neo4jError, OSError, ValueError) as exc:
            raise StoreError(f"neo4j at {where}: unreachable ({type(exc).__name__})") from exc
        store = cls(driver, settings)
        try:
            store.apply_schema()
            if writer:
                store.take_lock()
        except BaseException:
            driver.close()
            raise
        return store

    def close(self) -> None:
        try:
            if self.lock_holder is not None:
                self.release_lock()
        finally:
            self.driver.close()

    # ------------------------------------------------------------ the load lock
    LOCK_NAME = "load"

    @_store_errors
    def take_lock(self) -> None:
        """Hold the database's load lock, waiting for another holder up to ``lock_wait_seconds``
        (then :class:`LockHeldError`, exit 75: cron retries later).

        The lock is a lease that a background heartbeat renews every quarter lease while this store
        holds it, so a holder that dies (SIGKILL, lost host) frees it within one lease. A holder on
        this host whose process is gone is taken over at once.
        """
        holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # each store its own holder
        lock = statements("lock.cypher")
        deadline = time.monotonic() + self.settings.lock_wait_seconds
        while True:
            current, _, _ = self.driver.execute_query(
                lock["lock_holder"], name=self.LOCK_NAME, database_=self.settings.database
            )
            other = current[0]["holder"] if current else None
            stale = other if other is not None and _holder_is_dead(other) else None
            if self._try_lock(holder, stale):
                if stale is not None:
                    log.warning("neo4j load lock: taken over from %s (its process is gone)", stale)
                self.lock_holder = holder
                self._start_heartbeat()
                return
            if time.monotonic() >= deadline:
                raise LockHeldError(
                    f"neo4j at {masked_uri(self.settings.uri)}: {other or 'another load'} is loading; "
                    f"waited {self.settings.lock_wait_seconds:g} s"
                )
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))

    def _try_lock(self, holder: str, stale: str | None = None) -> bool:
        """Take or renew the lease; ``stale``: a dead holder whose lease may be taken over early."""
        records, _, _ = self.driver.execute_query(
            statements("lock.cypher")["take_lock"],
            name=self.LOCK_NAME,
            holder=holder,
            stale=stale,
            now_ms=_now_ms(),
            lease_ms=int(self.settings.lock_lease_seconds * 1000),
            database_=self.settings.database,
        )
        return bool(records)

    def _start_heartbeat(self) -> None:
        stop = threading.Event()
        self._heartbeat_stop = stop
        threading.Thread(target=self._renew_until_stopped, args=(stop,), name="linkage-lock", daemon=True).start()

    def _renew_until_stopped(self, stop: threading.Event) -> None:
        interval = self.settings.lock_lease_seconds / 4
        while not stop.wait(interval):
            holder = self.lock_holder
            if holder is None:
                return
            try:
                if not self._try_lock(holder):
                    self.lock_lost = True
                    log.error("neo4j load lock: lost to another holder (lease expired)")
                    return
            except (Neo4jError, DriverError, OSError) as exc:  # a blip: the next beat retries
                log.warning("neo4j load lock: renewal failed (%s)", type(exc).__name__)

    def _check_lock_held(self) -> None:
        """Between loading steps: stop if the heartbeat found the lease taken by another writer."""
        if self.lock_holder is not None and self.lock_lost:
            raise StoreError(
                f"neo4j at {masked_uri(self.settings.uri)}: the load lock's lease expired and another "
                "writer took it; stopping (the next run repeats the load)"
            )

    @_store_errors
    def release_lock(self) -> None:
        if self._heartbeat_stop is not None:
            self._heartbeat_stop.set()
        self.driver.execute_query(
            statements("lock.cypher")["release_lock"],
            name=self.LOCK_NAME,
            holder=self.lock_holder,
            database_=self.settings.database,
        )
        self.lock_holder = None

    # ------------------------------------------------------------ writes
    @_store_errors
    def apply_schema(self) -> None:
        for statement in schema_statements():
            self.driver.execute_query(statement, database_=self.settings.database)

    def _write_batches(self, statement: str, rows: list[dict[str, Any]]) -> None:
        size = self.settings.batch_size
        with self.driver.session(database=self.settings.database) as session:
            for start in range(0, len(rows), size):
                batch = rows[start : start + size]
                session.execute_write(_run_batch, statement, {"rows": batch})

    @_store_errors
    def write_graph(self, graph: Graph) -> LoadStats:
        """Nodes first, then relationships (sorted, so concurrent loads lock hubs in one order)."""
        load = statements("load.cypher")
        stats = LoadStats()
        start = time.perf_counter()
        for spec in NODE_SPECS:
            frame = graph.nodes.get(spec.label)
            if frame is None or frame.height == 0:
                continue
            rows = _records(frame.filter(pl.col(spec.key).is_not_null()).unique(spec.key, keep="first").sort(spec.key))
            self._write_batches(load[f"node_{spec.label}"], rows)
            stats.nodes += len(rows)
            log.info("neo4j load: %d %s nodes", len(rows), spec.label)
            self._check_lock_held()
        for rel in REL_SPECS:
            frame = graph.rels.get(rel.type)
            if frame is None or frame.height == 0:
                continue
            began = time.perf_counter()
            rows = _records(frame.select("src", "dst", "count", "first_seen", "last_seen").sort("src", "dst"))
            self._write_batches(load[f"rel_{rel.type}"], rows)
            stats.relationships += len(rows)
            stats.per_type[rel.type] = round(time.perf_counter() - began, 3)
            log.info("neo4j load: %d %s relationships in %.1f s", len(rows), rel.type, stats.per_type[rel.type])
            self._check_lock_held()
        stats.seconds = time.perf_counter() - start
        self.last_load = stats
        log.info(
            "neo4j load: %d nodes, %d relationships in %.1fs (%.0f rel/s)",
            stats.nodes,
            stats.relationships,
            stats.seconds,
            stats.relationships_per_second,
        )
        return stats

    @_store_errors
    def remove_graph(self, removed: Graph) -> int:
        """Delete the relationships and nodes of ``removed`` (keys only matter): what an incremental
        load takes away so that the database equals a full load. Returns how many were asked."""
        load = statements("load.cypher")
        asked = 0
        for rel in REL_SPECS:
            frame = removed.rels.get(rel.type)
            if frame is not None and frame.height:
                self._write_batches(load[f"unload_rel_{rel.type}"], _records(frame.select("src", "dst")))
                asked += frame.height
        for spec in NODE_SPECS:
            frame = removed.nodes.get(spec.label)
            if frame is not None and frame.height:
                keys = frame[spec.key].to_list()
                size = self.settings.batch_size
                with self.driver.session(database=self.settings.database) as session:
                    for start in range(0, len(keys), size):
                        session.execute_write(
                            _run_batch, load[f"unload_node_{spec.label}"], {"keys": keys[start : start + size]}
                        )
                asked += frame.height
        self._check_lock_held()
        return asked

    @_store_errors
    def clear_graph(self) -> None:
        """Empty the linkage graph (every label linkage writes), before a full load."""
        with self.driver.session(database=self.settings.database) as session:
            session.run(statements("load.cypher")["clear_graph"]).consume()
        self._check_lock_held()

    @_store_errors
    def write_rings(
        self, rings: pl.DataFrame, members: pl.DataFrame, run_id: str, run_props: dict | None = None
    ) -> None:
        """Replace the rings in one transaction: readers see the old set or the new one, never a mix."""
        ring_rows = rings.with_columns(pl.lit(run_id).alias("run_id")).to_dicts()
        member_rows = _records(
            members.select("ring_id", "account_id", "account_score", "attachment", "strength")
            if "strength" in members.columns
            else members.select("ring_id", "account_id", "account_score", "attachment")
        )
        props = {
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "rings": rings.height,
            "flagged": int(rings["flagged"].sum()) if rings.height else 0,
        } | (run_props or {})
        sql = statements("rings.cypher")

        def replace(tx) -> None:
            tx.run(sql["delete_rings"]).consume()
            for start in range(0, max(len(ring_rows), 1), 5000):
                tx.run(sql["create_rings"], rings=ring_rows[start : start + 5000]).consume()
            for start in range(0, len(member_rows), 10000):
                tx.run(sql["create_members"], members=member_rows[start : start + 10000]).consume()
            tx.run(sql["record_run"], run_id=run_id, props=_plain(props)).consume()

        with self.driver.session(database=self.settings.database) as session:
            session.execute_write(replace)

    @_store_errors
    def write_explanation(self, links: pl.DataFrame, holdings: pl.DataFrame, detect_settings: str, run_id: str) -> None:
        """Replace the links and entity values `linkage explain --neo4j` reads (the members of flagged
        rings), in one transaction; written after :meth:`write_rings` (the run node must exist)."""
        sql = statements("explain.cypher")
        link_rows = _records(links)
        holding_rows = _records(holdings)

        def replace(tx) -> None:
            tx.run(sql["delete_explanation"]).consume()
            for start in range(0, len(link_rows), 10000):
                tx.run(sql["create_links"], links=link_rows[start : start + 10000]).consume()
            for start in range(0, len(holding_rows), 10000):
                tx.run(sql["create_holdings"], rows=holding_rows[start : start + 10000], run_id=run_id).consume()
            tx.run(sql["record_detect_settings"], run_id=run_id, settings=detect_settings).consume()

        with self.driver.session(database=self.settings.database) as session:
            session.execute_write(replace)

    @_store_errors
    def read_explanation(self) -> dict[str, Any]:
        """The tables :class:`linkage.explain.RunTables` needs, as stored by :meth:`write_explanation`."""
        sql = statements("explain.cypher")
        records, _, _ = self.driver.execute_query(
            sql["read_detect_settings"], database_=self.settings.database, routing_=RoutingControl.READ
        )
        return {
            "links": self._read(sql["read_links"]),
            "holdings": self._read(sql["read_holdings"]),
            "members": self._read(sql["read_members"]),
            "detect_settings": records[0]["settings"] if records else None,
        }

    # ------------------------------------------------------------ reads
    @_store_errors
    def read_graph(self) -> Graph:
        reads = statements("read.cypher")
        graph = Graph()
        for spec in NODE_SPECS:
            graph.nodes[spec.label] = _frame(self._read(reads[f"read_{spec.label}"]), spec.key)
        for rel in REL_SPECS:
            graph.rels[rel.type] = _frame(
                self._read(reads[f"read_{rel.type}"]), None, ["src", "dst", "count", "first_seen", "last_seen"]
            )
        graph.nodes["Account"] = graph.nodes["Account"].sort("account_id")
        return with_optional_properties(graph)

    def _read(self, statement: str, **params: Any) -> list[dict[str, Any]]:
        records, _, _ = self.driver.execute_query(
            statement, params, database_=self.settings.database, routing_=RoutingControl.READ
        )
        return [r["row"] for r in records]

    def run_read_query(self, text: str, params: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
        """An investigator's query in a READ transaction: the server itself refuses any write."""

        @unit_of_work(timeout=300)
        def work(tx):
            result = tx.run(text, params)
            return result.keys(), [list(r.values()) for r in result]

        try:
            with self.driver.session(database=self.settings.database, default_access_mode="READ") as session:
                keys, rows = session.execute_read(work)
        except ClientError as exc:
            raise StoreError(f"neo4j refused the query: {exc.message}") from exc
        except (Neo4jError, DriverError, OSError) as exc:
            raise StoreError(f"neo4j at {masked_uri(self.settings.uri)}: query failed ({type(exc).__name__})") from exc
        return list(keys), rows

    @_store_errors
    def counts(self) -> dict[str, int]:
        records, _, _ = self.driver.execute_query(
            statements("rings.cypher")["graph_counts"], database_=self.settings.database, routing_=RoutingControl.READ
        )
        return dict(records[0])


def _run_batch(tx: Any, statement: str, params: dict[str, Any]) -> None:
    """One batch in a managed transaction (retried as a whole on transient errors)."""
    tx.run(statement, params).consume()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if isinstance(v, (str, int, float, bool)) or v is None}


def _records(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows as driver parameters. Timestamps go as epoch milliseconds: packing Python datetimes costs
    the driver ~50× more than integers; the load statements turn them back into DATETIME."""
    times = [c for c, t in frame.schema.items() if isinstance(t, pl.Datetime)]
    return frame.with_columns([pl.col(c).dt.epoch("ms") for c in times]).to_dicts()


def _frame(rows: Iterable[dict[str, Any]], key: str | None, columns: list[str] | None = None) -> pl.DataFrame:
    rows = list(rows)
    if not rows:
        return pl.DataFrame(schema={c: pl.Utf8 for c in (columns or [key or "id"])})
    frame = pl.DataFrame(rows, infer_schema_length=None)
    times = [c for c in _TIME_COLUMNS if c in frame.columns]
    frame = frame.with_columns(
        [pl.col(c).cast(pl.Int64).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC") for c in times]
    )
    if columns:
        frame = frame.select(columns)
    return frame.sort(key) if key else frame.sort("src", "dst")
