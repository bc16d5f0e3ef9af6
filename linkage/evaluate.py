"""Detection quality of a run against ground-truth labels (``linkage eval``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from .errors import InputError


def load_labels(path: Path) -> pl.DataFrame:
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".parquet", ".csv"))
        if not files:
            raise InputError(f"{path}: no labels file found")
        path = files[0]
    frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path, infer_schema_length=0)
    for column in ("account_id", "label"):
        if column not in frame.columns:
            raise InputError(f"{path}: required column '{column}' missing from labels")
    return frame.with_columns(pl.col("account_id").cast(pl.Utf8), pl.col("label").cast(pl.Utf8))


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the precision-recall curve, ties broken pessimistically (positives last)."""
    if positive.sum() == 0:
        return 0.0
    order = np.lexsort((positive, -scores))
    hits = positive[order].astype(float)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    _, a_codes = np.unique(a, return_inverse=True)
    _, b_codes = np.unique(b, return_inverse=True)
    pairs = a_codes.astype(np.int64) * (b_codes.max() + 1) + b_codes
    nij = np.unique(pairs, return_counts=True)[1]
    comb = lambda x: (x * (x - 1) / 2.0).sum()  # noqa: E731
    sum_ij, sum_a, sum_b = comb(nij), comb(np.bincount(a_codes)), comb(np.bincount(b_codes))
    total = comb(np.array([len(a)]))
    expected = sum_a * sum_b / total if total else 0.0
    maximum = (sum_a + sum_b) / 2
    return float((sum_ij - expected) / (maximum - expected)) if maximum != expected else 1.0


def evaluate(run_dir: Path, labels_path: Path, write: bool = True) -> dict[str, Any]:
    run_dir = Path(run_dir)
    for name in ("rings.csv", "ring_members.csv"):
        if not (run_dir / name).exists():
            raise InputError(f"{run_dir / name}: not found; is {run_dir} a linkage run directory?")
    labels = load_labels(labels_path)
    rings = pl.read_csv(run_dir / "rings.csv", columns=["ring_id", "score", "size", "flagged"])
    members = pl.read_csv(
        run_dir / "ring_members.csv", columns=["ring_id", "account_id"], schema_overrides={"account_id": pl.Utf8}
    )
    scored = members.join(rings, on="ring_id")
    per_account = scored.group_by("account_id").agg(pl.col("score").max(), pl.col("flagged").any())
    frame = labels.join(per_account, on="account_id", how="left").with_columns(
        pl.col("score").fill_null(0.0),
        pl.col("flagged").fill_null(False),
        (pl.col("label") != "benign").alias("positive"),
    )
    positive, flagged = frame["positive"].to_numpy(), frame["flagged"].to_numpy()
    tp = int((positive & flagged).sum())
    precision = tp / max(int(flagged.sum()), 1)
    recall = tp / max(int(positive.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    report: dict[str, Any] = {
        "accounts": frame.height,
        "campaign_accounts": int(positive.sum()),
        "flagged_accounts": int(flagged.sum()),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "average_precision": round(average_precision(frame["score"].to_numpy(), positive), 4),
        "benign_flagged": int((~positive & flagged).sum()),
        "benign_flagged_rate": round(float((~positive & flagged).sum()) / max(int((~positive).sum()), 1), 5),
    }
    flagged_members = scored.filter(pl.col("flagged")).join(labels, on="account_id", how="left")
    campaigns = {}
    for label in sorted(frame.filter(pl.col("positive"))["label"].unique().to_list()):
        mine = frame.filter(pl.col("label") == label)
        rings_with = flagged_members.filter(pl.col("label") == label)["ring_id"].unique()
        in_those = flagged_members.filter(pl.col("ring_id").is_in(rings_with.implode()))
        campaigns[label] = {
            "accounts": mine.height,
            "recall": round(float(mine["flagged"].mean()), 4),
            "purity": round(float((in_those["label"] == label).mean()), 4) if in_those.height else 0.0,
            "rings": int(rings_with.len()),
        }
    report["campaigns"] = campaigns
    if "kind" in labels.columns:
        kinds = (
            frame.filter(~pl.col("positive"))
            .group_by("kind")
            .agg(pl.len().alias("accounts"), pl.col("flagged").sum().alias("flagged"))
            .sort("kind")
        )
        report["benign_flagged_by_kind"] = {k: {"accounts": a, "flagged": f} for k, a, f in kinds.iter_rows()}
    cluster = frame.join(
        flagged_members.select("account_id", "ring_id").unique("account_id"), on="account_id", how="left"
    )
    cluster = cluster.filter(pl.col("positive") | pl.col("ring_id").is_not_null())
    if cluster.height:
        predicted = (
            cluster.select(pl.coalesce("ring_id", pl.lit("none:") + pl.col("account_id"))).to_series().to_numpy()
        )
        truth = (
            cluster.select(
                pl.when(pl.col("positive")).then(pl.col("label")).otherwise(pl.lit("benign:") + pl.col("account_id"))
            )
            .to_series()
            .to_numpy()
        )
        report["adjusted_rand_index"] = round(adjusted_rand_index(predicted, truth), 4)
    report["rings_flagged"] = int(rings["flagged"].sum())
    if write:
        (run_dir / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'metric':<28}{'value':>10}"]
    for key in (
        "accounts",
        "campaign_accounts",
        "flagged_accounts",
        "precision",
        "recall",
        "f1",
        "average_precision",
        "benign_flagged",
        "benign_flagged_rate",
        "adjusted_rand_index",
        "rings_flagged",
    ):
        if key in report:
            lines.append(f"{key:<28}{report[key]:>10}")
    lines.append("")
    lines.append(f"{'campaign':<24}{'accounts':>9}{'recall':>8}{'purity':>8}{'rings':>7}")
    for label, c in report["campaigns"].items():
        lines.append(f"{label:<24}{c['accounts']:>9}{c['recall']:>8}{c['purity']:>8}{c['rings']:>7}")
    if "benign_flagged_by_kind" in report:
        lines.append("")
        lines.append(f"{'benign kind':<24}{'accounts':>9}{'flagged':>8}")
        for kind, c in report["benign_flagged_by_kind"].items():
            lines.append(f"{kind:<24}{c['accounts']:>9}{c['flagged']:>8}")
    return "\n".join(lines)
