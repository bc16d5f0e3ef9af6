"""What customers share with no operation behind them: one world run again with its benign accounts
changed as a provider's real customers often are, the campaign accounts untouched.

    python bench/confounders.py [--bench-seeds 104] [--bench-scale 0.02] [--sim-seeds ...]
                                [--only sdk_default,...] [--work /tmp/linkage-confounders] [--config FILE]

``bench/probes.py`` changes what an operation controls; a confounder changes what the unseen worlds
may do differently to benign customers, each pushed far past what the generators draw, so that a
world's benign crowd links, looks alike or keeps one clock by chance. Each run is timed as well: a
denser benign graph is where the projection and Leiden grow. Confounders:

- ``sdk_default``: every benign account's requests carry one of 20 client builds (fingerprint and
  user agent), picked by the account: a popular SDK's defaults, thousands of holders each;
- ``carrier_nat``: seven in ten benign accounts send everything, their signup too, from one of 500
  carrier-grade NAT addresses (100.64.0.0/10, one mobile network), picked by the account: some
  forty customers behind each;
- ``shared_exits``: every benign request leaves through one of 3,000 exits of one VPN service,
  drawn per request: every customer of it shares addresses with hundreds of others;
- ``one_rush``: every benign request's time squeezed into the first fifteenth of the span, in
  order: the whole benign month busy in two days, its accounts active in the same hours by chance;
- ``popular_templates``: every benign account sends half its prompts (drawn per request) through
  one of 30 popular scaffolds, picked by the account, its own text in the slot;
- ``everyday_phrasing``: every benign prompt opens with one of 12 everyday openers and closes with
  one of 8 courtesies (drawn per request): phrasing everyone shares, no scaffold.

Choices "by the account" and draws "per request" come from polars' hash of the account id (and the
request's time), so a variant is the same on every run of one polars version. Prints F1, AP, the
worst campaign's recall, benign accounts flagged, the largest ring and the run's seconds per (world,
confounder); rows go to bench/results/confounders.jsonl.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
from quality import read_truth, rewrite_parquet, run_variants, variant_copy

# (input dir, labels: account_id, label) → rewrites the copied input in place
Confounder = Callable[[Path, pl.DataFrame], None]

_SEED = 11
_SDK_BUILDS = 20
_NAT_ADDRESSES = 500
_NAT_SHARE = 0.7
_NAT_ASN = 64_600  # one mobile network's (a private-use number: no real network is implied)
_VPN_EXITS = 3_000
_VPN_ASN = 64_700
_RUSH = 15  # the span is squeezed to 1/_RUSH
_TEMPLATES = 30
_OPENERS = [
    "Can you help me with this? ",
    "Please explain: ",
    "Quick question. ",
    "I need some help. ",
    "Hi! ",
    "Hello, ",
    "Could you take a look? ",
    "Help me understand this. ",
    "I have a question. ",
    "Hey, ",
    "Please help: ",
    "Can you answer this? ",
]
_CLOSERS = [" Thanks!", " Thank you.", " Thanks in advance.", " Much appreciated.", " Cheers.", "", " Thx", " Ty!"]


def _is_benign(truth: pl.DataFrame) -> pl.Expr:
    benign = truth.filter(pl.col("label") == "benign")["account_id"]
    return pl.col("account_id").cast(pl.Utf8).is_in(benign.implode())


def _by_account(salt: int) -> pl.Expr:
    """A number per account (the same on each of its rows, in every table)."""
    return pl.col("account_id").cast(pl.Utf8).hash(seed=_SEED + salt)


def _per_request(salt: int) -> pl.Expr:
    """A number per request: its account and time hashed together."""
    return pl.struct(pl.col("account_id").cast(pl.Utf8), pl.col("ts").cast(pl.Utf8)).hash(seed=_SEED + salt)


def _on_benign(truth: pl.DataFrame, values: dict[str, pl.Expr], where: pl.Expr | None = None) -> Callable:
    """A table rewrite: ``values`` (column → new value) on the benign accounts' rows (and ``where``)."""
    chosen = _is_benign(truth) if where is None else _is_benign(truth) & where

    def change(table: pl.DataFrame) -> pl.DataFrame:
        present = {c: v for c, v in values.items() if c in table.columns}
        return table.with_columns([pl.when(chosen).then(v).otherwise(pl.col(c)).alias(c) for c, v in present.items()])

    return change


def sdk_default(inputs: Path, truth: pl.DataFrame) -> None:
    build = _by_account(1) % _SDK_BUILDS
    rewrite_parquet(
        inputs,
        "requests",
        _on_benign(
            truth, {"device_id": pl.format("sdk-default-{}", build), "user_agent": pl.format("sdk/{}.0", build)}
        ),
    )


def _nat_address(salt: int) -> pl.Expr:
    slot = _by_account(salt) % _NAT_ADDRESSES
    return pl.format("100.64.{}.{}", slot // 250, slot % 250 + 1)


def behind_nat() -> pl.Expr:
    """The benign accounts ``carrier_nat`` puts behind the carrier's NAT (by account: about seven in ten)."""
    return (_by_account(3) % 100) < int(_NAT_SHARE * 100)


def carrier_nat(inputs: Path, truth: pl.DataFrame) -> None:
    behind = behind_nat()
    rewrite_parquet(
        inputs,
        "requests",
        _on_benign(
            truth,
            {"ip": _nat_address(2), "asn": pl.lit(_NAT_ASN, pl.Int64), "ip_type": pl.lit("mobile")},
            behind,
        ),
    )
    rewrite_parquet(inputs, "accounts", _on_benign(truth, {"signup_ip": _nat_address(2)}, behind))


def shared_exits(inputs: Path, truth: pl.DataFrame) -> None:
    exit_ = _per_request(4) % _VPN_EXITS
    rewrite_parquet(
        inputs,
        "requests",
        _on_benign(
            truth,
            {
                "ip": pl.format("45.{}.{}.9", exit_ // 250, exit_ % 250 + 1),
                "asn": pl.lit(_VPN_ASN, pl.Int64),
                "ip_type": pl.lit("vpn"),
            },
        ),
    )


def one_rush(inputs: Path, truth: pl.DataFrame) -> None:
    files = sorted(inputs.glob("requests/**/*.parquet")) or sorted(inputs.glob("requests.parquet"))
    text = pl.read_parquet_schema(files[0])["ts"] == pl.Utf8
    ts = pl.col("ts").str.to_datetime(time_zone="UTC") if text else pl.col("ts")
    start = pl.concat([pl.read_parquet(f, columns=["ts"]).select(ts.min()) for f in files])["ts"].min()
    squeezed = pl.lit(start) + (ts - pl.lit(start)) / _RUSH
    if text:
        squeezed = squeezed.dt.to_string("%Y-%m-%dT%H:%M:%S%.3fZ")
    rewrite_parquet(inputs, "requests", _on_benign(truth, {"ts": squeezed}))


def popular_templates(inputs: Path, truth: pl.DataFrame) -> None:
    scaffold = pl.format(
        "You are writing assistant number {}. Follow the house style guide carefully and answer the request "
        "below in full sentences, citing sources where you can.\nRequest: ",
        _by_account(5) % _TEMPLATES,
    )
    half = (_per_request(6) % 2) == 0
    rewrite_parquet(inputs, "requests", _on_benign(truth, {"prompt": scaffold + pl.col("prompt")}, half))


def everyday_phrasing(inputs: Path, truth: pl.DataFrame) -> None:
    opener = pl.lit(pl.Series(_OPENERS)).gather(_per_request(7) % len(_OPENERS))
    closer = pl.lit(pl.Series(_CLOSERS)).gather(_per_request(8) % len(_CLOSERS))
    rewrite_parquet(inputs, "requests", _on_benign(truth, {"prompt": opener + pl.col("prompt") + closer}))


CONFOUNDERS: dict[str, Confounder] = {
    "sdk_default": sdk_default,
    "carrier_nat": carrier_nat,
    "shared_exits": shared_exits,
    "one_rush": one_rush,
    "popular_templates": popular_templates,
    "everyday_phrasing": everyday_phrasing,
}


def confounded(inputs: Path, labels: Path, target: Path, confounder: str) -> Path:
    """A copy of ``inputs`` at ``target`` with the benign accounts changed by ``confounder``."""
    truth = read_truth(labels)
    return variant_copy(inputs, target, lambda staging: CONFOUNDERS[confounder](staging, truth))


def main() -> None:
    def variant(inputs: Path, labels: Path, confounder: str) -> Path:
        # each variant in its own folder: its input, and beside it the run's output (see quality.measure)
        return confounded(inputs, labels, inputs.parent / f"confounder-{confounder}" / "input", confounder)

    run_variants(
        __doc__ or "",
        list(CONFOUNDERS),
        variant,
        unchanged="none",
        header="world-confounder",
        bench_seeds="104",
        work="/tmp/linkage-confounders",
        log="confounders",
    )


if __name__ == "__main__":
    main()
