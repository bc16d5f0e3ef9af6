"""The command line: a thin layer over the library API. Errors are one line on stderr."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click
import pydantic

from .errors import ConfigError, LinkageError
from .settings import Settings


def _settings(config: str | None, overrides: dict[str, Any]) -> Settings:
    try:
        return Settings.load(config, {k: v for k, v in overrides.items() if v is not None})
    except (pydantic.ValidationError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()
        raise ConfigError(f"settings: {' '.join(first[:3])}") from exc


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


class _Group(click.Group):
    """Turns linkage errors into a one-line reason and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LinkageError as exc:
            click.echo(f"linkage: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 — last resort: still one line, still non-zero
            logging.getLogger("linkage").debug("internal error", exc_info=True)
            click.echo(f"linkage: internal error: {type(exc).__name__}: {exc} (run with -vv for a traceback)", err=True)
            sys.exit(1)


common_config = click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML settings file")
verbosity = click.option("-v", "--verbose", count=True, help="-v progress logging, -vv debug")


@click.group(cls=_Group)
@click.version_option(package_name="linkage")
def main() -> None:
    """linkage: find coordinated extraction rings among API accounts."""


@main.command()
@click.argument("input_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="output directory")
@common_config
@click.option("--threshold", type=float, help="flag rings scoring at or above this (score.flag_threshold)")
@click.option("--seed", type=int, help="Leiden seed (detect.seed)")
@click.option("--resolution", type=float, help="Leiden resolution (detect.resolution)")
@click.option("--neo4j", "use_neo4j", is_flag=True, help="also load the graph and rings into Neo4j (NEO4J_* env)")
@verbosity
def run(input_dir: str, out_dir: str, config: str | None, threshold: float | None, seed: int | None,
        resolution: float | None, use_neo4j: bool, verbose: int) -> None:
    """Run the whole pipeline on INPUT_DIR and write rings to --out."""
    _setup_logging(verbose)
    from .pipeline import run as run_pipeline
    settings = _settings(config, {"score.flag_threshold": threshold, "detect.seed": seed,
                                  "detect.resolution": resolution})
    store = _neo4j_store(settings) if use_neo4j else None
    try:
        result = run_pipeline(input_dir, out_dir, settings, store=store)
    finally:
        if store is not None:
            store.close()
    rings = result.summary["rings"]
    click.echo(f"{rings['total']} rings, {rings['flagged']} flagged ({rings['accounts_in_flagged']} accounts) → {out_dir}",
               err=True)


def _neo4j_store(settings: Settings):
    from .store.neo4j import Neo4jStore
    return Neo4jStore.from_settings(settings.neo4j)


@main.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--scale", type=float, default=0.01, show_default=True, help="1.0 ≈ the reported incident")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv", "jsonl"]), default="parquet", show_default=True)
@verbosity
def simulate(out_dir: str, scale: float, seed: int, fmt: str, verbose: int) -> None:
    """Write a synthetic input set with campaigns and benign confounders; labels go to OUT/labels."""
    _setup_logging(verbose)
    from .simulate import SimulationConfig, simulate as simulate_data
    summary = simulate_data(Path(out_dir), SimulationConfig(scale=scale, seed=seed, fmt=fmt))
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


if __name__ == "__main__":
    main()
