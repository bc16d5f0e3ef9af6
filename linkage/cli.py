"""The command line: a thin layer over the library API. Errors are one line on stderr."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from .errors import ConfigError, LinkageError
from .settings import Settings


def _settings(config: str | None, overrides: dict[str, Any]) -> Settings:
    return Settings.load(config, {k: v for k, v in overrides.items() if v is not None})


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log line (``--log-format json``), for cron and log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _output_options(ctx: click.Context) -> dict[str, Any]:
    return ctx.find_root().meta.setdefault("linkage.output", {"quiet": False, "log_format": "text"})


def _quiet() -> bool:
    context = click.get_current_context(silent=True)
    return bool(context and _output_options(context)["quiet"])


def _setup_logging(verbose: int) -> None:
    """-v progress, -vv debug; ``--quiet`` only errors; ``--log-format json`` one JSON object per line."""
    context = click.get_current_context(silent=True)
    options = _output_options(context) if context else {"quiet": False, "log_format": "text"}
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    if options["quiet"]:
        level = logging.ERROR
    handler = logging.StreamHandler(sys.stderr)
    if options["log_format"] == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # the driver logs every lost connection and retry itself; linkage reports the failure in one
    # line (exit 3), so the driver's own lines only with -vv
    logging.getLogger("neo4j").setLevel(logging.DEBUG if verbose >= 2 else logging.CRITICAL)


class _Group(click.Group):
    """Turns linkage errors into a one-line reason and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LinkageError as exc:
            click.echo(f"linkage: error: {terminal_safe(str(exc))}", err=True)
            sys.exit(exc.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 — last resort: still one line, still non-zero
            logging.getLogger("linkage").debug("internal error", exc_info=True)
            click.echo(
                f"linkage: internal error: {type(exc).__name__}: {terminal_safe(str(exc))} "
                "(run with -vv for a traceback)",
                err=True,
            )
            sys.exit(1)


common_config = click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML settings file")


def _remember(name: str):
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is not None:
            _output_options(ctx)[name] = value

    return callback


def verbosity(command):
    """-v/-vv, --quiet and --log-format, on every command that does work."""
    command = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        expose_value=False,
        is_eager=True,
        callback=_remember("log_format"),
        help="log lines as text or as one JSON object each (cron)",
    )(command)
    command = click.option(
        "-q",
        "--quiet",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_remember("quiet"),
        help="only errors on stderr (a rebuild's JSON line still goes to stdout)",
    )(command)
    return click.option("-v", "--verbose", count=True, help="-v progress logging, -vv debug")(command)


@click.group(cls=_Group)
@click.version_option(package_name="linkage")
def main() -> None:
    """linkage: find coordinated extraction rings among API accounts."""


@main.command(name="bulk-import")
@click.argument("graph_dir", type=click.Path(exists=True, file_okay=False))
@common_config
@verbosity
def bulk_import_cmd(graph_dir: str, config: str | None, verbose: int) -> None:
    """Replace the Neo4j database with a graph written by `run --graph`, through neo4j-admin's
    offline importer (full rebuilds; stop the server first, start it again afterwards)."""
    _setup_logging(verbose)
    from .store.embedded import EmbeddedStore
    from .store.neo4j import settings_from_env
    from .store.neo4j_import import bulk_import

    settings = settings_from_env(_settings(config, {}).neo4j)
    stats = bulk_import(EmbeddedStore(str(graph_dir)).read_graph(), settings.admin_command, settings.database)
    click.echo(
        json.dumps(
            {
                "nodes": stats.nodes,
                "relationships": stats.relationships,
                "seconds": round(stats.seconds, 1),
                "relationships_per_second": round(stats.relationships_per_second),
                "stages_s": stats.per_type,
            }
        )
    )


@main.command()
@click.argument("input_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="output directory")
@common_config
@click.option("--threshold", type=float, help="flag rings scoring at or above this (score.flag_threshold)")
@click.option("--seed", type=int, help="Leiden seed (detect.seed)")
@click.option("--resolution", type=float, help="Leiden resolution (detect.resolution)")
@click.option("--neo4j", "use_neo4j", is_flag=True, help="also load the graph and rings into Neo4j (NEO4J_* env)")
@click.option("--graph", "write_graph", is_flag=True, help="also write the graph tables as Parquet to OUT/graph")
@verbosity
def run(
    input_dir: str,
    out_dir: str,
    config: str | None,
    threshold: float | None,
    seed: int | None,
    resolution: float | None,
    use_neo4j: bool,
    write_graph: bool,
    verbose: int,
) -> None:
    """Run the whole pipeline on INPUT_DIR and write rings to --out."""
    _setup_logging(verbose)
    from .pipeline import run as run_pipeline
    from .store.embedded import EmbeddedStore

    settings = _settings(
        config, {"score.flag_threshold": threshold, "detect.seed": seed, "detect.resolution": resolution}
    )
    stores = [EmbeddedStore(Path(out_dir) / "graph")] if write_graph else []
    if use_neo4j:
        stores.append(_neo4j_store(settings, writer=True))
    try:
        result = run_pipeline(input_dir, out_dir, settings, store=stores)
    finally:
        for store in stores:
            store.close()
    rings = result.summary["rings"]
    if not _quiet():
        cut = "" if rings["flag_cut"] is None else f" at score ≥ {rings['flag_cut']:.3f}"
        click.echo(
            f"{rings['total']} rings, {rings['flagged']} flagged{cut} ({rings['accounts_in_flagged']} accounts)"
            f" → {out_dir}",
            err=True,
        )


def _neo4j_store(settings: Settings, writer: bool):
    """``writer``: the store will load or write rings back, so it holds the database's load lock."""
    from .store.neo4j import Neo4jStore

    return Neo4jStore.from_settings(settings.neo4j, writer=writer)


@main.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--scale", type=float, default=0.01, show_default=True, help="1.0 ≈ the reported incident")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv", "jsonl"]), default="parquet", show_default=True)
@click.option(
    "--world",
    type=click.Choice(["random", "fixed"]),
    default="random",
    show_default=True,
    help="random: the seed also draws the confounder mix, campaign tactics and data gaps; fixed: the original world",
)
@verbosity
def simulate(out_dir: str, scale: float, seed: int, fmt: str, world: str, verbose: int) -> None:
    """Write a synthetic input set with campaigns and benign confounders; labels go to OUT/labels."""
    _setup_logging(verbose)
    from .simulate import SimulationConfig
    from .simulate import simulate as simulate_data

    summary = simulate_data(Path(out_dir), SimulationConfig(scale=scale, seed=seed, fmt=fmt, world=world))
    click.echo(json.dumps(summary))


@main.command(name="eval")
@click.option("--labels", "labels_path", required=True, type=click.Path(exists=True))
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def evaluate_cmd(labels_path: str, run_dir: str) -> None:
    """Score a run directory against ground-truth labels; writes RUN_DIR/eval.json."""
    from .evaluate import evaluate, format_report

    report = evaluate(Path(run_dir), Path(labels_path))
    click.echo(format_report(report))


@main.command()
@click.argument("input_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@verbosity
def baseline(input_dir: str, out_dir: str, verbose: int) -> None:
    """The naive recipe for comparison: connected components over any shared card, IP or device."""
    _setup_logging(verbose)
    from .baseline import run_baseline

    run_baseline(Path(input_dir), Path(out_dir))


@main.command()
@click.option("--neo4j", "use_neo4j", is_flag=True, help="read the accumulated graph from Neo4j")
@click.option(
    "--graph-dir", type=click.Path(exists=True, file_okay=False), help="read a graph written by `run --graph`"
)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@common_config
@click.option("--threshold", type=float)
@click.option("--no-write-back", is_flag=True, help="do not replace the rings kept in the store")
@verbosity
def detect(
    use_neo4j: bool,
    graph_dir: str | None,
    out_dir: str,
    config: str | None,
    threshold: float | None,
    no_write_back: bool,
    verbose: int,
) -> None:
    """Detect rings over a stored graph (Neo4j or a graph directory), not only the files of one run."""
    _setup_logging(verbose)
    from .pipeline import detect_from_store
    from .store.embedded import EmbeddedStore

    if use_neo4j == bool(graph_dir):
        raise ConfigError("detect: give exactly one of --neo4j or --graph-dir")
    settings = _settings(config, {"score.flag_threshold": threshold})
    store = _neo4j_store(settings, writer=not no_write_back) if use_neo4j else EmbeddedStore(str(graph_dir))
    try:
        result = detect_from_store(store, Path(out_dir), settings, write_back=not no_write_back)
    finally:
        store.close()
    rings = result.summary["rings"]
    if not _quiet():
        click.echo(f"{rings['total']} rings, {rings['flagged']} flagged → {out_dir}", err=True)


@main.command()
@click.argument("input_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--neo4j", "use_neo4j", is_flag=True, help="also keep the graph and rings in Neo4j")
@click.option("--full", is_flag=True, help="forget what was ingested and rebuild from scratch (ring ids carry over)")
@click.option("--reset-history", is_flag=True, help="with --full: also forget the rings, so every ring gets a new id")
@common_config
@verbosity
def rebuild(
    input_dir: str, out_dir: str, use_neo4j: bool, full: bool, reset_history: bool, config: str | None, verbose: int
) -> None:
    """Nightly rebuild for cron: ingest new or changed files only, recompute rings over everything.

    Prints one JSON line on stdout. Exit codes: 0 done, 1 internal error, 2 bad input or
    settings, 3 Neo4j unreachable or refusing, 75 another rebuild holds the lock (retry later)."""
    _setup_logging(verbose)
    from .rebuild import failure_summary, nightly, summary_line

    started = time.time()
    try:
        summary = nightly(input_dir, out_dir, config, use_neo4j=use_neo4j, full=full, reset_history=reset_history)
    except BaseException as exc:
        click.echo(summary_line(failure_summary(exc, started)))
        raise
    click.echo(summary_line(summary))


@main.command()
@click.argument("where_and_accounts", nargs=-1, required=True, metavar="(RUN_DIR | --neo4j) ACCOUNT [OTHER]")
@click.option("--neo4j", "use_neo4j", is_flag=True, help="read what the last run stored in Neo4j (flagged rings)")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@common_config
def explain(where_and_accounts: tuple[str, ...], use_neo4j: bool, fmt: str, config: str | None) -> None:
    """Why ACCOUNT is in its ring (its links and attachment), or, with OTHER, the waterfall of what
    links the two: each shared entity, the chance and family discounts, timing, the org discount and
    Fisher's combination, ending on the weight detection used. From a run directory, or with --neo4j
    from the store (the members of flagged rings): the same numbers."""
    from dataclasses import asdict

    from .explain import RunTables, explain_account, explain_pair, format_account, format_pair

    args = list(where_and_accounts)
    if use_neo4j:
        _setup_logging(0)
        store = _neo4j_store(_settings(config, {}), writer=False)
        try:
            source = RunTables.from_store(store)
        finally:
            store.close()
    else:
        if not Path(args[0]).is_dir():
            raise ConfigError(f"explain: '{args[0]}' is not a run directory (or give --neo4j)")
        source = RunTables.from_files(args.pop(0))
    if not 1 <= len(args) <= 2:
        raise ConfigError("explain: give one account, or two for the link between them")
    found = explain_pair(source, args[0], args[1]) if len(args) == 2 else explain_account(source, args[0])
    if fmt == "json":
        click.echo(json.dumps(asdict(found), indent=2))
    else:
        text = format_pair(found) if len(args) == 2 else format_account(found)  # type: ignore[arg-type]
        click.echo(terminal_safe(text).replace("\\x0a", "\n"))


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def report(run_dir: str) -> None:
    """Write RUN_DIR/report.html again from a finished run's files (every run writes it too)."""
    from .report import write_report

    click.echo(str(write_report(run_dir)))


@main.command(name="warm-up")
def warm_up() -> None:
    """Compile linkage's loops once, after installing or upgrading (make install does): without it the
    first run compiles them, about 25 s."""
    from .kernels import warm_up as compile_kernels

    found = compile_kernels()
    click.echo(f"{sum(1 for n in found.values() if n)} of {len(found)} compiled loops ready")


@main.group()
def config() -> None:
    """Inspect settings."""


@config.command(name="show")
@common_config
def config_show(config: str | None) -> None:
    """Print the effective settings (defaults, then --config, then NEO4J_* variables) as TOML,
    secrets masked. Paste any part into a settings file to change it."""
    import tomli_w

    from .store.neo4j import masked_uri, settings_from_env

    settings = _settings(config, {})
    effective = settings.model_copy(update={"neo4j": settings_from_env(settings.neo4j)})
    shown = effective.shown()
    shown["neo4j"]["uri"] = masked_uri(shown["neo4j"]["uri"])
    click.echo(tomli_w.dumps(shown).rstrip("\n"))


def _split_param(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise click.BadParameter(f"'{text}': expected name=value")
    name, raw = text.split("=", 1)
    return name, raw


@main.command()
@click.argument("name", required=False)
@click.option("--list", "list_queries", is_flag=True, help="list the named queries")
@click.option("--param", "params", multiple=True, help="name=value, typed as the query's header declares")
@click.option(
    "--graph-dir",
    type=click.Path(exists=True, file_okay=False),
    help="query a run's Parquet graph (OUT/graph, from `run --graph`) instead of Neo4j: no server needed",
)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--max-width", type=int, default=60, show_default=True, help="table cells cut at this width (0: never)")
@common_config
def query(
    name: str | None,
    list_queries: bool,
    params: tuple[str, ...],
    graph_dir: str | None,
    fmt: str,
    max_width: int,
    config: str | None,
) -> None:
    """Run one of the investigators' named queries (cypher/queries): on Neo4j in a READ
    transaction, or with --graph-dir over a run's Parquet graph (the same answers)."""
    _setup_logging(0)
    from .cypher import queries
    from .cypher import query as named_query

    if list_queries or not name:
        for q in queries().values():
            click.echo(f"{q.name:<30} {q.purpose}")
            for p in q.params:
                default = "required" if p.required else f"default {p.default!r}"
                click.echo(f"{'':<30}   {p.name} ({p.type}, {default}) {p.help}")
            click.echo(f"{'':<30}   e.g. {q.example}")
        return
    chosen = named_query(name)
    values = chosen.bind(dict(_split_param(p) for p in params))
    if graph_dir:
        from .store.lookups import run_lookup

        keys, rows = run_lookup(graph_dir, name, values)
    else:
        store = _neo4j_store(_settings(config, {}), writer=False)
        try:
            keys, rows = store.run_read_query(chosen.text, values)
        finally:
            store.close()
    click.echo(_format_rows(keys, rows, fmt, max_width))


def plain_value(value: Any) -> Any:
    """A database or Parquet value as the same plain Python value: times as ISO-8601 seconds (UTC)."""
    import datetime as dt

    if hasattr(value, "to_native"):  # neo4j.time types
        value = value.to_native()
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).isoformat(timespec="seconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    return value


def _format_rows(keys: list[str], rows: list[list[Any]], fmt: str, max_width: int = 60) -> str:
    """Rows for a terminal or a file: values from the database are data, never terminal controls
    or spreadsheet formulas."""
    import csv
    import io

    from .export import escape_formula

    plain = [[plain_value(v) for v in row] for row in rows]
    if fmt == "json":  # JSON escapes control characters itself
        return json.dumps([dict(zip(keys, row)) for row in plain], default=str, indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(keys)
        writer.writerows(
            [[escape_formula(terminal_safe(v)) if isinstance(v, str) else v for v in row] for row in plain]
        )
        return buffer.getvalue().rstrip("\n")
    cells = [keys] + [
        ["" if v is None else _cell(terminal_safe(str(v)).replace("\n", "\\n"), max_width) for v in row]
        for row in plain
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(keys))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [f"({len(rows)} rows)"])


def _cell(text: str, width: int) -> str:
    """A table cell, cut visibly (…) at ``width``; --format csv/json and --max-width 0 keep everything."""
    return text if width <= 0 or len(text) <= width else text[: width - 1] + "…"


# C0 controls (ESC starts terminal escape sequences), DEL and C1 controls, shown as \xNN instead
_CONTROL = {code: f"\\x{code:02x}" for code in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)) if code != 0x0A}


def terminal_safe(text: str) -> str:
    """``text`` with every control character made visible, so data cannot drive the terminal."""
    return text.translate(_CONTROL)


def entry() -> None:
    """The console script: :func:`main`, then straight out of the process once output is flushed.
    A large run leaves gigabytes of frames behind; freeing them object by object at interpreter exit
    takes longer than the kernel takes to drop the whole address space."""
    _reuse_freed_memory()
    # a run makes few reference cycles but millions of allocations: collect rarely, and never
    # again walk the objects alive at start (imported modules)
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    code: int | str | None = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    if isinstance(code, str):  # (sys.exit("message"): printed, status 1, as the interpreter does)
        print(code, file=sys.stderr, flush=True)
        code = 1
    os._exit(code or 0)


def _reuse_freed_memory() -> None:
    """glibc gives every allocation over 32 MB (numpy's arrays of millions of rows) its own mapping and
    unmaps it on free, so each such temporary is faulted in afresh, page by page: about a quarter of
    a large run's system time. In the CLI's own process (not in a notebook's) large blocks come from
    the heap instead and freed memory stays there for the next one. No-op off glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    mallopt(m_mmap_max, 0)
    mallopt(m_trim_threshold, 2**31 - 1)


if __name__ == "__main__":
    entry()
