"""Weighting (rarity, evidence type, declared org), hub handling, reproducibility, known answers."""
from __future__ import annotations

import shutil

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import linkage
from linkage.detect import _hub_cycles, memberships, project
from linkage.graph import Graph
from linkage.settings import DetectSettings, Settings

from .conftest import TINY, TINY_LABELS, read_csv

T0 = datetime(2026, 2, 1, tzinfo=timezone.utc)


def _graph(n: int, shares: dict[str, list[tuple[str, list[int]]]], orgs: dict[int, str] | None = None) -> Graph:
    """A minimal graph: n accounts and, per relationship type, entities with their member indices."""
    ids = [f"a{i:04d}" for i in range(n)]
    graph = Graph()
    graph.nodes["Account"] = pl.DataFrame({
        "account_id": ids, "created_at": [T0] * n, "email": [None] * n, "org_id": [(orgs or {}).get(i) for i in range(n)],
        "requests": [10] * n, "activity_signature": [None] * n,
    }, schema_overrides={"email": pl.Utf8, "org_id": pl.Utf8, "activity_signature": pl.List(pl.Int64)}) \
        .with_columns(pl.col("created_at").dt.replace_time_zone("UTC") + pl.duration(days=pl.int_range(n)))
    empty = pl.DataFrame(schema={"src": pl.Utf8, "dst": pl.Utf8, "count": pl.Int64,
                                 "first_seen": pl.Datetime("ms", "UTC"), "last_seen": pl.Datetime("ms", "UTC")})
    for rel in ("PAID_WITH", "USED_DEVICE", "SENT_TEMPLATE", "HAS_EMAIL_DOMAIN", "SIGNED_UP_FROM", "USED_IP", "USED_MODEL"):
        rows = [(ids[i], entity) for entity, members in shares.get(rel, []) for i in members]
        graph.rels[rel] = pl.DataFrame({"src": [r[0] for r in rows], "dst": [r[1] for r in rows], "count": [1] * len(rows)},
                                       schema={"src": pl.Utf8, "dst": pl.Utf8, "count": pl.Int64}) \
            .with_columns(first_seen=pl.lit(T0), last_seen=pl.lit(T0)) if rows else empty
    ips = sorted({e for e, _ in shares.get("USED_IP", [])})
    graph.nodes["IP"] = pl.DataFrame({"ip": ips, "subnet": [None] * len(ips), "asn": [None] * len(ips),
                                      "ip_type": ["mobile" if ip.startswith("100.") else "residential" for ip in ips]},
                                     schema={"ip": pl.Utf8, "subnet": pl.Utf8, "asn": pl.Int64, "ip_type": pl.Utf8})
    graph.nodes["PaymentInstrument"] = pl.DataFrame(
        {"instrument_id": [e for e, _ in shares.get("PAID_WITH", [])]},
        schema={"instrument_id": pl.Utf8}).with_columns(pl.lit(None, pl.Utf8).alias("instrument_type"),
                                                        pl.lit(None, pl.Utf8).alias("bin"))
    return graph


def _pair_weight(graph: Graph, a: int, b: int, settings: DetectSettings | None = None) -> float:
    settings = settings or DetectSettings(min_pair_weight=0.0)
    accounts, evidence = memberships(graph, settings)
    pairs = project(accounts, evidence, settings)
    hit = pairs.filter((pl.col("a") == min(a, b)) & (pl.col("b") == max(a, b)))
    return float(hit["weight"][0]) if hit.height else 0.0


def test_rarity_discount_nat_ip_versus_small_share() -> None:
    n = 3000
    graph = _graph(n, {"USED_IP": [("100.64.0.1", list(range(2000))), ("24.1.1.1", [2500, 2501])]})
    nat, rare = _pair_weight(graph, 0, 1), _pair_weight(graph, 2500, 2501)
    assert rare > 5 * max(nat, 1e-9)
    assert nat < 0.1


def test_evidence_types_card_outweighs_ip() -> None:
    graph = _graph(200, {"PAID_WITH": [("card1", [0, 1])], "USED_IP": [("24.1.1.1", [2, 3])]})
    assert _pair_weight(graph, 0, 1) > 2 * _pair_weight(graph, 2, 3)


def test_a_shared_address_alone_never_links() -> None:
    graph = _graph(200, {"USED_IP": [("24.1.1.1", [0, 1])]})
    assert _pair_weight(graph, 0, 1) < DetectSettings().min_pair_weight


def test_declared_org_explains_sharing() -> None:
    shares = {"PAID_WITH": [("card_org", [0, 1]), ("card_other", [2, 3])]}
    graph = _graph(200, shares, orgs={0: "org_a", 1: "org_a"})
    assert _pair_weight(graph, 0, 1) == pytest.approx(DetectSettings().org_discount * _pair_weight(graph, 2, 3))


def test_hubs_never_expand_into_cliques() -> None:
    n = 5000
    graph = _graph(n, {"USED_DEVICE": [("sdk-default", list(range(n)))], "SENT_TEMPLATE": [("T1", list(range(600)))]})
    settings = DetectSettings(min_pair_weight=0.0)
    accounts, evidence = memberships(graph, settings)
    pairs = project(accounts, evidence, settings)
    assert pairs.height <= 600 * 2 * settings.hub_partners  # a clique would be 179,700 pairs
    ubiquitous = evidence.filter(pl.col("entity") == "Device|sdk-default")
    assert ubiquitous.height == 0, "an entity used by everyone carries no evidence"


def test_hub_cycles_connect_every_member() -> None:
    codes = np.repeat(np.arange(3), 100)
    idx = np.arange(300)
    left, right = _hub_cycles(codes, idx, 2, seed=1)
    degree = np.bincount(np.r_[left, right], minlength=300)
    assert degree.min() >= 2
    assert set(zip(left // 100, right // 100)) <= {(0, 0), (1, 1), (2, 2)}, "cycles stay inside their hub"


def test_same_input_same_output_byte_for_byte(tmp_path: Path) -> None:
    linkage.run(TINY, tmp_path / "one")
    linkage.run(TINY, tmp_path / "two")
    for name in ("rings.csv", "ring_members.csv", "ring_evidence.csv", "accounts.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_file_layout_does_not_change_the_rings(tmp_path: Path) -> None:
    """The request log as one file or as shuffled parts in nested partitions: the same rings, byte for
    byte (the prompt sample is per account over the whole input, not per file or batch)."""
    layout = tmp_path / "parts"
    shutil.copytree(TINY, layout)
    requests = read_csv(layout / "requests.csv").sample(fraction=1.0, shuffle=True, seed=3)
    (layout / "requests.csv").unlink()
    for part in range(3):
        folder = layout / "requests" / f"day={part}"
        folder.mkdir(parents=True)
        requests.gather_every(3, offset=part).write_csv(folder / "part-0.csv")
    # one prompt per account: the tightest sample, where a per-file sample would differ most
    settings = Settings.load(overrides={"templates.max_prompts_per_account": 1})
    one = linkage.run(TINY, tmp_path / "one", settings)
    three = linkage.run(layout, tmp_path / "three", settings)
    for name in ("rings.csv", "ring_members.csv", "ring_evidence.csv", "accounts.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "three" / name).read_bytes(), name
    # what the sample feeds: per account the prompts mined, and the template relationships
    assert one.graph.nodes["Account"].equals(three.graph.nodes["Account"])
    assert one.graph.rels["SENT_TEMPLATE"].equals(three.graph.rels["SENT_TEMPLATE"])
    assert one.graph.nodes["Account"]["sampled_prompts"].sum() > 0


def test_known_ring_found_and_look_alikes_not_flagged() -> None:
    result = linkage.run(TINY)
    labels = read_csv(TINY_LABELS)
    flagged = result.rings.filter(pl.col("flagged"))
    assert flagged.height == 1
    members = set(result.members.filter(pl.col("ring_id") == flagged["ring_id"][0])["account_id"].to_list())
    assert members == set(labels.filter(pl.col("label") == "campaign_ring")["account_id"].to_list())
    ringed = set(result.members["account_id"].to_list())
    assert not any(a.startswith("nat_") for a in ringed), "a carrier NAT pool must not become a ring"
    org_rings = result.rings.filter(pl.col("org_explained") > 0.5)
    assert not org_rings["flagged"].any()


@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
def test_threshold_setting_controls_flagging(threshold: float) -> None:
    result = linkage.run(TINY, settings=Settings.load(overrides={"score.flag_threshold": threshold}))
    assert result.rings["flagged"].to_list() == (result.rings["score"] >= threshold).to_list()
    assert result.rings["flagged"].any() == (threshold <= result.rings["score"].max())


def test_optional_columns_absent_does_not_silence_detection(tiny: Path) -> None:
    """Without prompts, ip_type or devices, the features they feed are left out, not counted as 0."""
    read_csv(tiny / "requests.csv").drop("prompt", "ip_type", "device_id").write_csv(tiny / "requests.csv")
    result = linkage.run(tiny)
    flagged = result.rings.filter(pl.col("flagged"))
    assert flagged.height == 1
    members = result.members.filter(pl.col("ring_id") == flagged["ring_id"][0])["account_id"].to_list()
    assert sorted(members) == [f"ring_{i:02d}" for i in range(12)]


def test_detection_from_the_embedded_graph_store_equals_the_run(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from linkage.cli import main
    runner = CliRunner()
    assert runner.invoke(main, ["run", str(TINY), "--out", str(tmp_path / "run"), "--graph"]).exit_code == 0
    outcome = runner.invoke(main, ["detect", "--graph-dir", str(tmp_path / "run" / "graph"), "--out", str(tmp_path / "again")])
    assert outcome.exit_code == 0, outcome.output
    for name in ("rings.csv", "ring_members.csv"):
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    assert runner.invoke(main, ["detect", "--out", str(tmp_path / "x")]).exit_code == 2


def _brute_force_weight(small: dict, a: dict, b: dict, rules) -> float:
    """The pair-weight rule written out plainly: per type the strongest value plus a capped share of
    the rest; per family the same again."""
    values: dict[int, list[float]] = {t: list(v) for t, v in small.items()}
    for (t, e), v in a.items():
        if (t, e) in b:
            values.setdefault(t, []).append(v)
    per_family: dict[int, list[float]] = {}
    for t, shared in values.items():
        best = max(shared)
        capped = min(best + rules.extra * min(sum(shared) - best, best), rules.caps[t])
        per_family.setdefault(int(rules.family_code[t]), []).append(capped)
    return sum(max(v) + rules.extra * min(sum(v) - max(v), max(v)) for v in per_family.values())


@pytest.mark.parametrize("threads", ["one", "two"])
def test_pair_weights_match_brute_force(threads, monkeypatch):
    if threads == "two":  # the candidates cut in two halves weighed on two threads
        monkeypatch.setattr("linkage.detect.PARALLEL_MIN_PAIRS", 2)
    """Small-entity contributions and hubs both ends hold (valued on the first end), combined per
    type and family with caps, exactly as the rule says — including pairs sharing nothing."""
    from linkage.detect import Held, Shared, TypeRules, pair_weights
    rng = np.random.default_rng(5)
    n_accounts, n_types = 70, 4
    member = rng.integers(0, 60, 900)
    entity = rng.integers(0, 40, 900)
    keep = np.unique(member * 1000 + entity, return_index=True)[1]
    member, entity = member[keep], entity[keep]
    hub_type = entity % n_types  # an entity belongs to one type
    hub_value = rng.random(len(member))
    ca = rng.integers(0, n_accounts, 400)
    cb = rng.integers(0, n_accounts, 400)
    position = rng.integers(0, len(ca), 300)
    small_type = rng.integers(0, n_types, 300)
    small_value = rng.random(300)
    rules = TypeRules(caps=np.array([1.5, 0.8, 2.0, 0.5]), family_code=np.array([0, 1, 1, 2]), n_families=3, extra=0.25)
    weights = pair_weights(n_accounts, ca, cb, Shared(position, small_type, small_value),
                           Held(member, hub_type, entity, hub_value), rules)
    hubs: dict[int, dict] = {}
    for m, t, e, v in zip(member, hub_type, entity, hub_value):
        hubs.setdefault(int(m), {})[(int(t), int(e))] = v
    for p in range(len(ca)):
        small: dict[int, list[float]] = {}
        for k in np.flatnonzero(position == p):
            small.setdefault(int(small_type[k]), []).append(small_value[k])
        expected = _brute_force_weight(small, hubs.get(int(ca[p]), {}), hubs.get(int(cb[p]), {}), rules)
        assert weights[p] == pytest.approx(expected), p
    assert (weights == 0).any() and (weights > 0).any()


def test_relationship_tables_are_in_text_order_whatever_the_category_codes():
    """Aggregates over categorical request columns are grouped on integer ranks of their texts; they
    must equal the plain text aggregate, in text order, even when category codes were handed out in
    another order (files ingested concurrently), and skip rows with either end missing."""
    from linkage.graph import RequestKeys, _rel, _request_rel
    rng = np.random.default_rng(3)
    words = [f"{w}{n}" for w in ("b", "a", "ab", "Z", "é", "10", "9") for n in range(5)]
    # categories first seen in a scrambled order, then rows drawn from them
    pl.Series(list(reversed(words))).cast(pl.Categorical)
    rows = pl.DataFrame({"account_id": rng.choice(words, 400), "ip": rng.choice(words, 400),
                         "ts": pl.datetime_range(datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 2, tzinfo=timezone.utc),
                                                 "1m", time_unit="ms", eager=True)[:400]})
    rows = rows.with_columns(pl.col("ts").gather(rng.permutation(400)))  # (first and last are not the ends of the log)
    rows = rows.with_columns(pl.when(pl.int_range(400) % 17 == 0).then(None).otherwise(pl.col("ip")).alias("ip"),
                             pl.when(pl.int_range(400) % 23 == 0).then(None).otherwise(pl.col("account_id")).alias("account_id"))
    coded = rows.with_columns(pl.col("account_id", "ip").cast(pl.Categorical))
    ordered, distinct = _request_rel(coded, RequestKeys.of(coded), "ip")
    assert distinct.to_list() == sorted(rows["ip"].drop_nulls().unique().to_list())
    expected = _rel(rows, "account_id", "ip", "ts")
    assert ordered.schema["src"] == pl.Utf8 and ordered.schema["dst"] == pl.Utf8
    assert ordered.equals(expected)
    assert ordered.select("src", "dst").equals(ordered.select("src", "dst").sort("src", "dst"))
    assert expected["count"].sum() == rows.drop_nulls(["account_id", "ip"]).height < 400
    as_text, _ = _request_rel(rows, RequestKeys.of(rows), "ip")  # (text columns: through categories)
    assert as_text.equals(expected)


def test_pair_groups_by_sorting_equal_the_hash_group_by():
    """The 64-bit sort (the usual path) and the hash group-by (logs too large for it) give the same
    groups in the same order; the sort declines what does not fit in 64 bits."""
    from linkage.graph import _pair_groups_by_hashing, _pair_groups_by_sorting
    rng = np.random.default_rng(5)
    for n in (0, 1, 5000):
        account = rng.integers(0, 300, n).astype(np.uint32)
        target = rng.integers(0, 40, n).astype(np.uint32)
        ts = rng.integers(0, 10**12, n)
        by_sorting = _pair_groups_by_sorting(account, 300, target, 40, ts)
        by_hashing = _pair_groups_by_hashing(account, target, ts)
        assert all(np.array_equal(x, y) for x, y in zip(by_sorting, by_hashing))
        assert by_sorting[2].sum() == n
    assert _pair_groups_by_sorting(account, 1 << 30, target, 1 << 30, ts) is None


def test_account_activity_equals_the_plain_group_by():
    """The compiled per-account totals equal a polars group-by, nulls included (no tokens, unsampled
    prompts, unknown network type)."""
    from linkage.graph import RequestKeys, _account_activity
    rng = np.random.default_rng(8)
    n = 3000
    requests = pl.DataFrame({
        "account_id": rng.choice([f"acct{i}" for i in range(40)], n),
        "ts": pl.Series(rng.integers(1.7e12, 1.8e12, n)).cast(pl.Datetime("ms", "UTC")),
        "ip_type": pl.Series([["proxy", "residential", "vpn", None][i] for i in rng.integers(0, 4, n)], dtype=pl.Utf8),
        "input_tokens": pl.Series(rng.integers(0, 500, n)).set(pl.Series(rng.random(n) < 0.1), None),
        "output_tokens": rng.integers(0, 500, n),
        "reasoning_style": pl.Series([[True, False, None][i] for i in rng.integers(0, 3, n)], dtype=pl.Boolean),
    }).with_columns(pl.col("account_id", "ip_type").cast(pl.Categorical))
    expected = requests.group_by(pl.col("account_id").cast(pl.Utf8)).agg(
        pl.len().cast(pl.Int64).alias("requests"), pl.col("ts").min().alias("first_seen"),
        pl.col("ts").max().alias("last_seen"), pl.col("input_tokens").sum(), pl.col("output_tokens").sum(),
        pl.col("ip_type").is_in(["proxy", "vpn", "datacenter", "tor"]).sum().cast(pl.Int64).alias("proxy_requests"),
        pl.col("reasoning_style").sum().cast(pl.Int64).alias("reasoning_requests"),
        pl.col("reasoning_style").is_not_null().sum().cast(pl.Int64).alias("sampled_prompts")).sort("account_id")
    assert _account_activity(requests, RequestKeys.of(requests)).equals(expected)


def test_top_per_account_keeps_each_accounts_most_used_entities():
    """Per account all rows when it has at most ``cap``, else its ``cap`` most used (ties: lower entity),
    whether or not the rows come in account order."""
    from linkage.detect import _top_per_account

    rng = np.random.default_rng(1)
    for trial in range(20):
        n = int(rng.integers(0, 3000))
        account = rng.integers(0, max(1, n // 10), n)
        if trial % 2:
            account = np.sort(account)
        entity = rng.permutation(10 * n + 10)[:n]  # one row per (account, entity)
        count = rng.integers(1, 6, n)
        for cap in (1, 3, 24):
            expected = set()
            for a in set(account.tolist()):
                rows = [r for r in range(n) if account[r] == a]
                expected |= set(sorted(rows, key=lambda r: (-count[r], entity[r]))[:cap])
            got = _top_per_account(account, count, entity, cap)
            assert got.tolist() == sorted(expected), (trial, cap)


def test_activity_similarity_is_the_agreement_of_signatures_above_chance():
    """Lockstep per pair: the share of MinHash positions two accounts agree on, rescaled above chance
    (0.2) and 0 when either has no signature — checked against a plain computation."""
    from linkage.detect import _activity_similarity
    from linkage.graph import ACTIVITY_SIGNATURE_SIZE

    rng = np.random.default_rng(4)
    n, width = 300, ACTIVITY_SIGNATURE_SIZE
    base = rng.integers(0, 3, (n, width))
    signatures = [None if i % 7 == 0 else base[i].tolist() for i in range(n)]
    accounts = pl.DataFrame({"activity_signature": signatures}, schema={"activity_signature": pl.List(pl.Int64)})
    ca, cb = rng.integers(0, n, 5000), rng.integers(0, n, 5000)
    got = _activity_similarity(accounts, ca, cb)
    for p in range(len(ca)):
        a, b = signatures[ca[p]], signatures[cb[p]]
        share = 0.0 if a is None or b is None else sum(x == y for x, y in zip(a, b)) / width
        assert got[p] == pytest.approx(min(max((share - 0.2) / 0.8, 0.0), 1.0))
    assert (got == 0).any() and (got == 1).any() and ((got > 0) & (got < 1)).any()
