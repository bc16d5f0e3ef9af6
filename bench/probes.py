"""What an operation can change cheaply: one world run again with its campaign accounts changed as
an operator could change them, the benign accounts untouched.

    python bench/probes.py [--bench-seeds 102] [--bench-scale 0.02] [--sim-seeds ...]
                           [--only own_fingerprints,...] [--work /tmp/linkage-probes] [--config FILE]

Unlike ``bench/ablation.py`` (a column missing from the whole export) a probe needs the labels: it
rewrites only what the campaign accounts send or declare. Probes:

- ``own_fingerprints``: every campaign account gets a client fingerprint nobody else holds (a TLS
  fingerprint is a library setting);
- ``common_client``: every campaign account uses the run's most common benign client build (hides
  among an SDK default's thousands of holders);
- ``declared_org``: each campaign's accounts declare one org of their own and pay nothing (before
  the unpaid-seat rule such a fleet was one customer, shrunk to the background);
- ``thin_volume``: every campaign account keeps one request in four (per file: each file of a
  partitioned log is thinned on its own);
- ``own_exits``: every campaign account sends everything, its signup too, from one residential
  address of its own (a static "ISP proxy" per account, on the run's most common residential
  network);
- ``separate_everything``: ``own_exits`` and ``own_fingerprints``, and every paying campaign account
  pays with an instrument of its own: what is left to link them is what they ask, how, and when;
- ``own_clock``: every campaign account's requests shifted by an offset of its own (up to a day);
- ``separate_own_clock``: both of the last two (the limit: found as rings, scored like customers);
- ``declared_org_own_clock``: ``declared_org`` and ``own_clock``, cheap both: what a declared org
  explains counts only where its seats keep one clock (``score.declared_org_clock``), so this is
  what that rule must survive.
- ``declared_org_separate``: ``separate_everything``, and each campaign's accounts declare one org
  of their own, paying seat by seat: a benign org's seats to the content reading;
- ``academic_mail``: every campaign account signs up on one college's mail domain, one college per
  campaign (bought student mailboxes: not cheap, but what ``score.academic_institutions`` reads);
- ``academic_mail_own_clock``: ``academic_mail`` and ``own_clock``: what an academic institution
  explains counts only where a ring keeps no clock beyond chance, so this is that rule's risk.

Prints F1, AP, the worst campaign's recall and benign accounts flagged per (world, probe); rows go to
bench/results/probes.jsonl.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
from quality import read_truth, rewrite_parquet, run_variants, variant_copy

# (input dir, labels: account_id, label) → rewrites the copied input in place
Probe = Callable[[Path, pl.DataFrame], None]


def _is_campaign(truth: pl.DataFrame) -> pl.Expr:
    campaign = truth.filter(pl.col("label") != "benign")["account_id"]
    return pl.col("account_id").cast(pl.Utf8).is_in(campaign.implode())


def _one_per_campaign_account(inputs: Path, truth: pl.DataFrame, table: str, column: str, prefix: str) -> None:
    """``column`` of ``table`` set, on every campaign account's rows, to a value of that account's own."""
    own = pl.concat_str([pl.lit(prefix), pl.col("account_id").cast(pl.Utf8)])
    rewrite_parquet(
        inputs,
        table,
        lambda t: t.with_columns(pl.when(_is_campaign(truth)).then(own).otherwise(pl.col(column)).alias(column)),
    )


def own_fingerprints(inputs: Path, truth: pl.DataFrame) -> None:
    _one_per_campaign_account(inputs, truth, "requests", "device_id", "probe-own-")


def common_client(inputs: Path, truth: pl.DataFrame) -> None:
    files = sorted(inputs.glob("requests/**/*.parquet")) or sorted(inputs.glob("requests.parquet"))
    held = (
        pl.concat([pl.read_parquet(f, columns=["account_id", "device_id"], hive_partitioning=False) for f in files])
        .filter(~_is_campaign(truth) & pl.col("device_id").is_not_null())
        .unique()
        .group_by("device_id")
        .len()
        .sort(["len", "device_id"], descending=[True, False])
    )
    common = held["device_id"][0]
    rewrite_parquet(
        inputs,
        "requests",
        lambda t: t.with_columns(
            pl.when(_is_campaign(truth)).then(pl.lit(common)).otherwise(pl.col("device_id")).alias("device_id")
        ),
    )


def _set_on_accounts(inputs: Path, values: pl.DataFrame, column: str, new: pl.Expr) -> None:
    """``column`` of the accounts table set to ``new`` (which reads ``probe``) on the accounts
    ``values`` (``account_id, probe``) lists; every other account's row as it was."""
    rewrite_parquet(
        inputs,
        "accounts",
        lambda t: (
            t.with_columns(pl.col("account_id").cast(pl.Utf8))
            .join(values, on="account_id", how="left")
            .with_columns(pl.when(pl.col("probe").is_not_null()).then(new).otherwise(pl.col(column)).alias(column))
            .drop("probe")
        ),
    )


def declared_org(inputs: Path, truth: pl.DataFrame) -> None:
    _declare_one_org_per_campaign(inputs, truth)
    rewrite_parquet(inputs, "payments", lambda t: t.filter(~_is_campaign(truth)))


def _declare_one_org_per_campaign(inputs: Path, truth: pl.DataFrame) -> None:
    org = truth.filter(pl.col("label") != "benign").select(
        "account_id", pl.concat_str([pl.lit("probe-org-"), pl.col("label")]).alias("probe")
    )
    _set_on_accounts(inputs, org, "org_id", pl.col("probe"))


def thin_volume(inputs: Path, truth: pl.DataFrame) -> None:
    """Keeps one request in four of each campaign account (in its own time order): the harvest spread
    over four times as many accounts would look like this per account."""
    kept = (pl.int_range(pl.len()).over("account_id", order_by="ts") % 4) == 0
    rewrite_parquet(inputs, "requests", lambda t: t.filter(~_is_campaign(truth) | kept))


def own_exits(inputs: Path, truth: pl.DataFrame) -> None:
    """One residential address per campaign account, each in a /24 of its own, on the ASN most of the
    benign residential traffic uses (a big ISP's customers: no rarer than a household)."""
    campaign = truth.filter(pl.col("label") != "benign").sort("account_id")
    position = pl.int_range(pl.len())
    addresses = campaign.select(
        "account_id",
        pl.format("73.{}.{}.{}", position // 256 % 256, position % 256, position * 37 % 253 + 1).alias("probe_ip"),
    )
    asn = _common_residential_asn(inputs, truth)

    def requests(table: pl.DataFrame) -> pl.DataFrame:
        table = table.with_columns(pl.col("account_id").cast(pl.Utf8)).join(addresses, on="account_id", how="left")
        mine = pl.col("probe_ip").is_not_null()
        changed = [pl.coalesce("probe_ip", "ip").alias("ip")]
        if "ip_type" in table.columns:
            changed.append(pl.when(mine).then(pl.lit("residential")).otherwise(pl.col("ip_type")).alias("ip_type"))
        if "asn" in table.columns and asn is not None:
            changed.append(
                pl.when(mine).then(pl.lit(asn)).otherwise(pl.col("asn")).cast(table["asn"].dtype).alias("asn")
            )
        return table.with_columns(changed).drop("probe_ip")

    def accounts(table: pl.DataFrame) -> pl.DataFrame:
        if "signup_ip" not in table.columns:
            return table
        table = table.with_columns(pl.col("account_id").cast(pl.Utf8)).join(addresses, on="account_id", how="left")
        return table.with_columns(pl.coalesce("probe_ip", "signup_ip").alias("signup_ip")).drop("probe_ip")

    rewrite_parquet(inputs, "requests", requests)
    rewrite_parquet(inputs, "accounts", accounts)


def _common_residential_asn(inputs: Path, truth: pl.DataFrame) -> int | None:
    files = sorted(inputs.glob("requests/**/*.parquet")) or sorted(inputs.glob("requests.parquet"))
    columns = pl.read_parquet_schema(files[0])
    if "asn" not in columns:
        return None
    wanted = ["account_id", "asn", *(["ip_type"] if "ip_type" in columns else [])]
    benign = pl.concat([pl.read_parquet(f, columns=wanted, hive_partitioning=False) for f in files]).filter(
        ~_is_campaign(truth) & pl.col("asn").is_not_null()
    )
    if "ip_type" in wanted:
        benign = benign.filter(pl.col("ip_type") == "residential")
    counted = benign.group_by("asn").len().sort(["len", "asn"], descending=[True, False])
    return int(counted["asn"][0]) if counted.height else None


def separate_everything(inputs: Path, truth: pl.DataFrame) -> None:
    own_exits(inputs, truth)
    own_fingerprints(inputs, truth)
    _one_per_campaign_account(inputs, truth, "payments", "instrument_id", "probe-card-")
    # an account that paid with two instruments now holds one, once
    rewrite_parquet(
        inputs, "payments", lambda t: t.unique(["account_id", "instrument_id"], keep="first", maintain_order=True)
    )


def own_clock(inputs: Path, truth: pl.DataFrame) -> None:
    """Every campaign account's requests shifted by an offset of its own, up to a day (drawn from a
    hash of its id): each keeps its own rhythm, no two keep one clock."""
    offset_ms = (pl.col("account_id").cast(pl.Utf8).hash(seed=7) % (24 * 3600 * 1000)).cast(pl.Int64)

    def shifted(table: pl.DataFrame) -> pl.DataFrame:
        if table["ts"].dtype == pl.Utf8:  # ISO text (the contract allows it): shifted as a time, written back as text
            moved = (pl.col("ts").str.to_datetime(time_zone="UTC") + pl.duration(milliseconds=offset_ms)).dt.to_string(
                "%Y-%m-%dT%H:%M:%S%.3fZ"
            )
        else:
            moved = pl.col("ts") + pl.duration(milliseconds=offset_ms)
        return table.with_columns(pl.when(_is_campaign(truth)).then(moved).otherwise(pl.col("ts")).alias("ts"))

    rewrite_parquet(inputs, "requests", shifted)


def separate_own_clock(inputs: Path, truth: pl.DataFrame) -> None:
    separate_everything(inputs, truth)
    own_clock(inputs, truth)


def declared_org_own_clock(inputs: Path, truth: pl.DataFrame) -> None:
    declared_org(inputs, truth)
    own_clock(inputs, truth)


def declared_org_separate(inputs: Path, truth: pl.DataFrame) -> None:
    """``separate_everything``, and each campaign's accounts declare one org of their own: seats of an
    org that pay one by one, each on an exit, a client and a card of its own (how a benign org's
    seats look to the content reading, which leaves out what a declared org explains)."""
    separate_everything(inputs, truth)
    _declare_one_org_per_campaign(inputs, truth)


def academic_mail(inputs: Path, truth: pl.DataFrame) -> None:
    """Every campaign account's address moved to one college's mail domain per campaign
    (``student.probe-<campaign>.edu``), its local part kept."""
    college = truth.filter(pl.col("label") != "benign").select(
        "account_id", pl.format("student.probe-{}.edu", pl.col("label").str.replace_all("_", "-")).alias("probe")
    )
    local = pl.col("email").str.extract(r"^([^@]*)")
    _set_on_accounts(inputs, college, "email", pl.concat_str([local, pl.lit("@"), pl.col("probe")]))


def academic_mail_own_clock(inputs: Path, truth: pl.DataFrame) -> None:
    academic_mail(inputs, truth)
    own_clock(inputs, truth)


PROBES: dict[str, Probe] = {
    "own_fingerprints": own_fingerprints,
    "common_client": common_client,
    "declared_org": declared_org,
    "thin_volume": thin_volume,
    "own_exits": own_exits,
    "separate_everything": separate_everything,
    "own_clock": own_clock,
    "separate_own_clock": separate_own_clock,
    "declared_org_own_clock": declared_org_own_clock,
    "declared_org_separate": declared_org_separate,
    "academic_mail": academic_mail,
    "academic_mail_own_clock": academic_mail_own_clock,
}


def probed(inputs: Path, labels: Path, target: Path, probe: str) -> Path:
    """A copy of ``inputs`` at ``target`` with the campaign accounts changed by ``probe``."""
    truth = read_truth(labels)
    return variant_copy(inputs, target, lambda staging: PROBES[probe](staging, truth))


def main() -> None:
    def variant(inputs: Path, labels: Path, probe: str) -> Path:
        # each variant in its own folder: its input, and beside it the run's output (see quality.measure)
        return probed(inputs, labels, inputs.parent / f"probe-{probe}" / "input", probe)

    run_variants(
        __doc__ or "",
        list(PROBES),
        variant,
        unchanged="none",
        header="world-probe",
        bench_seeds="102",
        work="/tmp/linkage-probes",
        log="probes",
    )


if __name__ == "__main__":
    main()
