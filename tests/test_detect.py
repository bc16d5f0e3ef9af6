"""Links weighed against chance, hub handling, reproducibility, known answers."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import linkage
from linkage.detect import _carried_by_a_client, _hub_cycles, _merge_distinct, memberships, one_customer_orgs, project
from linkage.graph import Graph
from linkage.settings import DetectSettings, Settings

from .conftest import TINY, TINY_LABELS, graph_of, read_csv, singly_held


def _pair_weight(graph: Graph, a: int, b: int, settings: DetectSettings | None = None) -> float:
    """The pair's combined surprisal (nats) whether or not it reaches the link threshold."""
    settings = settings or DetectSettings()
    accounts, evidence = memberships(graph, settings)
    pairs = project(accounts, evidence, settings, threshold=0.0)
    hit = pairs.filter((pl.col("a") == min(a, b)) & (pl.col("b") == max(a, b)))
    return float(hit["weight"][0]) if hit.height else 0.0


def test_a_nat_address_is_worth_nothing_and_a_rare_one_much():
    n = 3000
    graph = graph_of(
        n,
        {
            "USED_IP": [("100.64.0.1", list(range(2000))), ("24.1.1.1", [2500, 2501])]
            + singly_held(n, "USED_IP", "24.9.", set(range(2000)) | {2500, 2501})
        },
    )
    nat, rare = _pair_weight(graph, 0, 1), _pair_weight(graph, 2500, 2501)
    assert nat < 0.1
    assert rare > 10


def test_a_lone_shared_card_is_improbable_among_singly_held_cards():
    """The surprisal of a card two accounts share grows with the cards everybody else holds alone."""
    small = graph_of(10, {"PAID_WITH": [("card1", [0, 1])] + singly_held(10, "PAID_WITH", "c", {0, 1})})
    large = graph_of(1000, {"PAID_WITH": [("card1", [0, 1])] + singly_held(1000, "PAID_WITH", "c", {0, 1})})
    assert _pair_weight(large, 0, 1) > _pair_weight(small, 0, 1) + 4


def test_one_shared_address_alone_does_not_link_where_households_share_them_but_with_a_card_it_does():
    """In a run where 600 households of two share an address, sharing one is ordinary; a card shared
    besides it is not."""
    n = 2000
    households = [(f"24.2.{i}", [i, i + 1]) for i in range(4, 1204, 2)]
    shares = {
        "USED_IP": [("24.1.1.1", [0, 1]), ("24.1.1.2", [2, 3])]
        + households
        + singly_held(n, "USED_IP", "24.9.", set(range(1204))),
        "PAID_WITH": [("card1", [2, 3])] + singly_held(n, "PAID_WITH", "c", {2, 3}),
    }
    accounts, evidence = memberships(graph_of(n, shares), DetectSettings())
    linked = project(accounts, evidence, DetectSettings())
    pairs = set(zip(linked["a"].to_list(), linked["b"].to_list()))
    assert (0, 1) not in pairs
    assert (2, 3) in pairs
    # memberships come in entity order; in any other order they are sorted first, to the same links
    shuffled = evidence.sample(fraction=1.0, shuffle=True, seed=5)
    assert project(accounts, shuffled, DetectSettings()).equals(linked)


def test_accounts_holding_many_entities_are_expected_to_meet():
    """Two proxy rotators sharing one exit among dozens each: less surprising than two home users
    sharing their one address (the configuration model's degree correction)."""
    n = 2000
    rotators = [(f"10.0.{a}.{k}", [a]) for a in (0, 1) for k in range(30)] + [("24.1.1.1", [0, 1])]
    homes = [("24.1.1.2", [2, 3])]
    graph = graph_of(n, {"USED_IP": rotators + homes + singly_held(n, "USED_IP", "24.9.", {0, 1, 2, 3})})
    assert _pair_weight(graph, 0, 1) < _pair_weight(graph, 2, 3) - 3


def test_weak_evidence_in_many_families_does_not_add_up_like_strong_evidence():
    """Fisher's combination: surprisal spread over several families is worth less than its sum."""
    from linkage.chance import fisher_log_tail

    assert fisher_log_tail(np.array([12.0]), np.array([1]))[0] == pytest.approx(12.0)
    combined = fisher_log_tail(np.array([12.0, 12.0]), np.array([2, 4]))
    assert combined[0] == pytest.approx(12.0 - np.log(13.0))
    assert combined[1] < combined[0] < 12.0


def test_a_template_nobody_fills_twice_is_no_evidence() -> None:
    """Two people who each met a combination of stock sentences once share nothing: the template links
    them only if some account fills it with two or more distinct texts (``repeated_by``). A graph
    stored without the count keeps every template."""
    n = 1000
    shares = {"SENT_TEMPLATE": [("T1", [0, 1])] + singly_held(n, "SENT_TEMPLATE", "t", {0, 1})}
    graph = graph_of(n, shares)
    template_ids = graph.rels["SENT_TEMPLATE"]["dst"].unique()
    counted = {tid: 1 for tid in template_ids}
    for repeated_by, linked in ((0, False), (1, True)):
        counted["T1"] = repeated_by
        graph.nodes["PromptTemplate"] = pl.DataFrame(
            {"template_id": list(counted), "repeated_by": list(counted.values())}
        )
        assert (_pair_weight(graph, 0, 1) > 10) == linked
    graph.nodes["PromptTemplate"] = pl.DataFrame({"template_id": list(counted)})
    counted_nowhere = _pair_weight(graph, 0, 1)
    assert counted_nowhere > 10
    assert _pair_weight(graph, 0, 1, DetectSettings(template_repeated_by=0)) == counted_nowhere


def test_declared_org_explains_sharing() -> None:
    n = 500
    shares = {
        "PAID_WITH": [("card_org", [0, 1]), ("card_other", [2, 3])] + singly_held(n, "PAID_WITH", "c", {0, 1, 2, 3})
    }
    graph = graph_of(n, shares, orgs={0: "org_a", 1: "org_a"})
    assert _pair_weight(graph, 0, 1) == pytest.approx(DetectSettings().org_discount * _pair_weight(graph, 2, 3))


def test_a_declared_org_explains_nothing_for_seats_billed_alone() -> None:
    """Declaring one org does not fold an operation's accounts into one customer: seats that each pay
    with their own instrument are linked like anyone else, and so are seats that pay nothing in an
    org that shows no shared billing; a seat the org's shared invoice covers keeps its org."""
    n = 500
    shares = {
        "USED_DEVICE": [("fp_shared", [0, 1]), ("fp_other", [2, 3]), ("fp_free", [4, 5]), ("fp_seat", [8, 9])],
        "PAID_WITH": [("card_0", [0]), ("card_1", [1]), ("invoice", [6, 7])]
        + singly_held(n, "PAID_WITH", "c", {0, 1, 4, 5, 6, 7, 8, 9}),
    }
    orgs = {0: "org_fake", 1: "org_fake", 4: "org_free", 5: "org_free"} | dict.fromkeys(range(6, 10), "org_billed")
    graph = graph_of(n, shares, orgs=orgs)
    assert dict(one_customer_orgs(graph).head(10).iter_rows()) == {
        "a0000": None,
        "a0001": None,
        "a0002": None,
        "a0003": None,
        "a0004": None,
        "a0005": None,
        "a0006": "org_billed",
        "a0007": "org_billed",
        "a0008": "org_billed",
        "a0009": "org_billed",
    }
    assert _pair_weight(graph, 0, 1) == pytest.approx(_pair_weight(graph, 2, 3))
    assert _pair_weight(graph, 4, 5) == pytest.approx(_pair_weight(graph, 2, 3))
    assert _pair_weight(graph, 8, 9) == pytest.approx(DetectSettings().org_discount * _pair_weight(graph, 2, 3))
    # a run without payments cannot tell who is billed as one: every declared org stands
    unbilled = graph_of(n, {"USED_DEVICE": shares["USED_DEVICE"]}, orgs=orgs)
    assert dict(one_customer_orgs(unbilled).head(10).iter_rows()) == {f"a{i:04d}": orgs.get(i) for i in range(10)}


def test_hubs_never_expand_into_cliques() -> None:
    n = 5000
    graph = graph_of(n, {"USED_DEVICE": [("sdk-default", list(range(n)))], "SENT_TEMPLATE": [("T1", list(range(600)))]})
    settings = DetectSettings()
    accounts, evidence = memberships(graph, settings)
    pairs = project(accounts, evidence, settings, threshold=0.0)
    assert pairs.height <= 600 * 2 * settings.hub_partners  # a clique would be 179,700 pairs
    ubiquitous = evidence.filter(pl.col("entity") == "Device|sdk-default")
    assert ubiquitous.height == 0, "an entity used by everyone carries no evidence"


def test_hub_cycles_connect_every_member() -> None:
    codes = np.repeat(np.arange(3), 100)
    idx = np.arange(300)
    left, right = np.divmod(_hub_cycles(codes, idx, 2, seed=1, n=300), 300)
    assert (left < right).all()
    degree = np.bincount(np.r_[left, right], minlength=300)
    assert degree.min() >= 2
    assert set(zip(left // 100, right // 100)) <= {(0, 0), (1, 1), (2, 2)}, "cycles stay inside their hub"


def test_hub_cycles_laid_apart_are_the_cycles_laid_together() -> None:
    """Each cycle is drawn from its own number: laying cycles 0-1 and 2-4 apart (as two threads do) gives
    the same candidates as laying all five at once."""
    rng = np.random.default_rng(3)
    codes = np.sort(rng.integers(0, 12, 600))
    idx = rng.permutation(600)
    together = np.sort(_hub_cycles(codes, idx, 5, seed=7, n=600))
    apart = np.r_[_hub_cycles(codes, idx, 2, seed=7, n=600), _hub_cycles(codes, idx, 5, seed=7, n=600, first=2)]
    np.testing.assert_array_equal(together, np.sort(apart))
    assert len(np.unique(together)) > 600, "the five cycles are not one cycle five times"


def test_one_cycle_per_hub_is_laid_on_one_thread() -> None:
    """``detect.hub_partners = 1`` (the least the settings allow): the other thread lays no cycle, and the
    candidates are the one cycle's."""
    from linkage.detect import _hub_candidates

    codes = np.repeat(np.arange(4), 30)
    idx = np.arange(120)
    assert len(_hub_cycles(codes, idx, 1, seed=2, n=120, first=1)) == 0
    np.testing.assert_array_equal(
        _hub_candidates(codes, idx, 120, 1, 2), np.sort(_hub_cycles(codes, idx, 1, seed=2, n=120))
    )
    assert len(_hub_candidates(codes, idx, 120, 1, 2)) == 120


def test_hub_cycles_visit_members_in_hash_order_ties_in_row_order() -> None:
    """The cycles are a stable sort of each hub's members by a truncated hash: with entity codes so
    large that three bits of hash are left, most keys tie, and ties keep row order."""
    from linkage.graph import mix64

    codes = np.repeat(np.array([1 << 60, 2 << 60]), 40)
    idx = np.r_[np.arange(40), np.arange(100, 140)]
    got = np.sort(_hub_cycles(codes, idx, 1, seed=5, n=1_000))
    mixed = idx.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ codes.astype(np.uint64)
    key = mix64(mixed ^ np.uint64(5 * 1_000_003)) >> np.uint64(62)
    expected = []
    for hub in (slice(0, 40), slice(40, 80)):
        members = idx[hub][np.argsort(key[hub], kind="stable")]
        cycle = zip(members, np.roll(members, -1))
        expected += [min(a, b) * 1_000 + max(a, b) for a, b in cycle]
    np.testing.assert_array_equal(got, np.sort(expected))


def test_merging_candidates_gives_the_distinct_values_and_each_contributions_place() -> None:
    rng = np.random.default_rng(11)
    for _ in range(100):
        a = np.sort(rng.integers(0, 60, rng.integers(0, 50)))  # repeats: a pair's several contributions
        b = np.sort(rng.integers(0, 60, rng.integers(0, 50)))
        merged, position = _merge_distinct(a, b)
        expected = np.unique(np.r_[a, b])
        np.testing.assert_array_equal(merged, expected)
        np.testing.assert_array_equal(position, np.searchsorted(expected, a))


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
    outcome = runner.invoke(
        main, ["detect", "--graph-dir", str(tmp_path / "run" / "graph"), "--out", str(tmp_path / "again")]
    )
    assert outcome.exit_code == 0, outcome.output
    for name in ("rings.csv", "ring_members.csv"):
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    assert runner.invoke(main, ["detect", "--out", str(tmp_path / "x")]).exit_code == 2


def _brute_force_weight(small: dict, a: dict, b: dict, rules, ends: tuple[int, int]) -> tuple[float, int]:
    """The pair rule written out plainly: per type the strongest value plus a capped share of the
    rest, less what both ends' memberships make expected; per family the same again; and the
    number of families that gave anything."""
    values: dict[int, list[float]] = {t: list(v) for t, v in small.items()}
    for (t, e), v in a.items():
        if (t, e) in b:
            values.setdefault(t, []).append(min(v, b[(t, e)]))
    per_family: dict[int, list[float]] = {}
    for t, shared in values.items():
        best = max(shared)
        value = (
            best
            + rules.extra * min(sum(shared) - best, best)
            - rules.log_memberships[ends[0], t]
            - rules.log_memberships[ends[1], t]
        )
        if value > 0:
            per_family.setdefault(int(rules.family_code[t]), []).append(value)
    total = sum(max(v) + rules.extra * min(sum(v) - max(v), max(v)) for v in per_family.values())
    return total, len(per_family)


@pytest.mark.parametrize("values", ["each holder its own", "one per hub, a few hubs not"])
@pytest.mark.parametrize("order", ["shuffled", "in pair order"])
@pytest.mark.parametrize("threads", ["one", "two"])
def test_pair_weights_match_brute_force(threads, order, values, monkeypatch):
    """Small-entity contributions and hubs both ends hold (at the lower of the two ends' values), combined per
    type and family less the degree correction, exactly as the rule says — including pairs sharing
    nothing, and whether the contributions come in pair order (as the projection makes them) or not.
    A hub is usually worth the same to every holder (the kernel then reads it per hub); an owned build
    is not (it reads the holders' own values)."""
    if threads == "two":  # the candidates cut in two halves weighed on two threads
        monkeypatch.setattr("linkage.detect.PARALLEL_MIN_PAIRS", 2)
    from linkage.detect import Held, Shared, TypeRules, pair_weights

    rng = np.random.default_rng(5)
    n_accounts, n_types = 70, 4
    member = rng.integers(0, 60, 900)
    entity = rng.integers(0, 40, 900)
    keep = np.unique(member * 1000 + entity, return_index=True)[1]
    member, entity = member[keep], entity[keep]
    hub_type = entity % n_types  # an entity belongs to one type
    hub_value = 3 * rng.random(len(member))
    if values == "one per hub, a few hubs not":
        hub_value = np.where(entity % 7 == 0, hub_value, (3 * rng.random(40))[entity])
    ca = np.sort(rng.integers(0, n_accounts, 400))
    cb = rng.integers(0, n_accounts, 400)
    position = rng.integers(0, len(ca), 300)
    if order == "in pair order":
        position = np.sort(position)
    small_type = rng.integers(0, n_types, 300)
    small_value = 3 * rng.random(300)
    log_memberships = np.log(rng.integers(1, 4, (n_accounts, n_types)).astype(float))
    rules = TypeRules(log_memberships=log_memberships, family_code=np.array([0, 1, 1, 2]), n_families=3, extra=0.25)
    weights, families = pair_weights(
        n_accounts, ca, cb, Shared(position, small_type, small_value), Held(member, hub_type, entity, hub_value), rules
    )
    hubs: dict[int, dict] = {}
    for m, t, e, v in zip(member, hub_type, entity, hub_value):
        hubs.setdefault(int(m), {})[(int(t), int(e))] = v
    for p in range(len(ca)):
        small: dict[int, list[float]] = {}
        for k in np.flatnonzero(position == p):
            small.setdefault(int(small_type[k]), []).append(small_value[k])
        expected, expected_families = _brute_force_weight(
            small, hubs.get(int(ca[p]), {}), hubs.get(int(cb[p]), {}), rules, (int(ca[p]), int(cb[p]))
        )
        assert weights[p] == pytest.approx(expected), p
        assert families[p] == expected_families, p
    assert (weights == 0).any() and (weights > 0).any() and (families >= 2).any()


def test_relationship_tables_are_in_text_order_whatever_the_category_codes():
    """Aggregates over categorical request columns are grouped on integer ranks of their texts; they
    must equal the plain text aggregate, in text order, even when category codes were handed out in
    another order (files ingested concurrently), and skip rows with either end missing."""
    from linkage.graph import RequestKeys, _rel, _request_rel

    rng = np.random.default_rng(3)
    words = [f"{w}{n}" for w in ("b", "a", "ab", "Z", "é", "10", "9") for n in range(5)]
    # categories first seen in a scrambled order, then rows drawn from them
    pl.Series(list(reversed(words))).cast(pl.Categorical)
    rows = pl.DataFrame(
        {
            "account_id": rng.choice(words, 400),
            "ip": rng.choice(words, 400),
            "ts": pl.datetime_range(
                datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC), "1m", time_unit="ms", eager=True
            )[:400],
        }
    )
    rows = rows.with_columns(pl.col("ts").gather(rng.permutation(400)))  # (first and last are not the ends of the log)
    rows = rows.with_columns(
        pl.when(pl.int_range(400) % 17 == 0).then(None).otherwise(pl.col("ip")).alias("ip"),
        pl.when(pl.int_range(400) % 23 == 0).then(None).otherwise(pl.col("account_id")).alias("account_id"),
    )
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


def test_pair_groups_account_by_account_equal_a_hash_group_by():
    """Counting each account's rows on its own gives a polars group-by's groups (count, first and
    last time) in (account, target) order; rows without an account or a target count nowhere."""
    from linkage.graph import NO_RANK, _pair_groups_by_account, _rows_by_account

    rng = np.random.default_rng(5)
    for n in (0, 1, 5000):
        account = rng.integers(0, 300, n).astype(np.uint32)
        target = rng.integers(0, 40, n).astype(np.uint32)
        account[rng.random(n) < 0.05] = NO_RANK
        target[rng.random(n) < 0.05] = NO_RANK
        ts = rng.integers(0, 10**12, n)
        rows, starts = _rows_by_account(account, 300)
        got = _pair_groups_by_account(starts, target[rows], ts[rows], 40)
        valid = (account != NO_RANK) & (target != NO_RANK)
        expected = (
            pl.DataFrame({"a": account[valid].astype(np.int64), "t": target[valid].astype(np.int64), "ts": ts[valid]})
            .group_by("a", "t")
            .agg(pl.len().cast(pl.Int64), pl.col("ts").min().alias("first"), pl.col("ts").max().alias("last"))
            .sort("a", "t")
        )
        assert all(np.array_equal(x, expected[c].to_numpy()) for x, c in zip(got, ["a", "t", "len", "first", "last"]))
        assert got[2].sum() == valid.sum()


def test_account_activity_equals_the_plain_group_by():
    """The compiled per-account totals equal a polars group-by, nulls included (no tokens, unsampled
    prompts, unknown network type)."""
    from linkage.graph import RequestKeys, _account_activity

    rng = np.random.default_rng(8)
    n = 3000
    requests = pl.DataFrame(
        {
            "account_id": rng.choice([f"acct{i}" for i in range(40)], n),
            "ts": pl.Series(rng.integers(1.7e12, 1.8e12, n)).cast(pl.Datetime("ms", "UTC")),
            "ip_type": pl.Series(
                [["proxy", "residential", "vpn", None][i] for i in rng.integers(0, 4, n)], dtype=pl.Utf8
            ),
            "input_tokens": pl.Series(rng.integers(0, 500, n)).set(pl.Series(rng.random(n) < 0.1), None),
            "output_tokens": rng.integers(0, 500, n),
            "reasoning_style": pl.Series([[True, False, None][i] for i in rng.integers(0, 3, n)], dtype=pl.Boolean),
        }
    ).with_columns(pl.col("account_id", "ip_type").cast(pl.Categorical))
    expected = (
        requests.group_by(pl.col("account_id").cast(pl.Utf8))
        .agg(
            pl.len().cast(pl.Int64).alias("requests"),
            pl.col("ts").min().alias("first_seen"),
            pl.col("ts").max().alias("last_seen"),
            pl.col("input_tokens").sum(),
            pl.col("output_tokens").sum(),
            pl.col("ip_type").is_in(["proxy", "vpn", "datacenter", "tor"]).sum().cast(pl.Int64).alias("proxy_requests"),
            pl.col("reasoning_style").sum().cast(pl.Int64).alias("reasoning_requests"),
            pl.col("reasoning_style").is_not_null().sum().cast(pl.Int64).alias("sampled_prompts"),
        )
        .sort("account_id")
    )
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


def test_signature_agreement_equals_a_plain_count():
    from linkage.detect import _signature_agreement

    rng = np.random.default_rng(4)
    n, width = 300, 16
    matrix = rng.integers(0, 3, (n, width)).astype(np.int32)
    has = np.arange(n) % 7 != 0
    ca, cb = rng.integers(0, n, 3000), rng.integers(0, n, 3000)
    got = _signature_agreement(matrix, has, ca, cb)
    expected = np.where(has[ca] & has[cb], (matrix[ca] == matrix[cb]).mean(axis=1), 0.0)
    assert np.allclose(got, expected)
    # written into slices of one result (the two threads' halves), whatever the slices held before
    into = np.full(len(ca), 9.0)
    _signature_agreement(matrix, has, ca[:1000], cb[:1000], into[:1000])
    _signature_agreement(matrix, has, ca[1000:], cb[1000:], into[1000:])
    assert np.array_equal(into, got)


def test_lockstep_is_surprising_only_beyond_what_independent_accounts_share():
    """Two accounts active in the very same windows among many: far beyond chance. Two accounts active
    around the clock: their agreement is expected and worth little."""
    from linkage.chance import lockstep_surprisal

    same = lockstep_surprisal(np.array([0.75]), np.array([20.0]), np.array([20.0]), 720.0, 1.0, 16)
    always_on = lockstep_surprisal(np.array([0.75]), np.array([700.0]), np.array([700.0]), 720.0, 1.0, 16)
    one_of_two = lockstep_surprisal(np.array([5 / 16]), np.array([2.0]), np.array([2.0]), 600.0, 1.0, 16)
    nothing = lockstep_surprisal(np.array([0.0]), np.array([20.0]), np.array([20.0]), 720.0, 1.0, 16)
    assert same[0] > 20 and always_on[0] < 2 and nothing[0] == 0
    assert one_of_two[0] < 6, "two users with two active hours each meeting once is not lockstep"
    # an account active around the clock shares every window of a scheduled one, in a run whose
    # accounts share more hours than independence (calibration 1.5): the overlap cannot exceed the
    # scheduled account's 150 windows, and agreeing as much as that makes expected is no evidence
    busy = lockstep_surprisal(np.array([150 / 700]), np.array([700.0]), np.array([150.0]), 720.0, 1.5, 16)
    keeping_step = lockstep_surprisal(np.array([0.9]), np.array([700.0]), np.array([150.0]), 720.0, 1.5, 16)
    assert busy[0] < 1 and keeping_step[0] > 15


def test_window_counts_estimate_distinct_windows_from_minhash():
    from linkage.chance import window_counts

    rng = np.random.default_rng(2)
    for true in (5, 50, 500):
        minima = np.array([(rng.random(true).min() * (1 << 31)) for _ in range(16 * 200)]).reshape(200, 16)
        estimate = window_counts(minima.astype(np.int64), np.ones(200, bool))
        assert np.median(estimate) == pytest.approx(true, rel=0.35)


def test_benign_look_alikes_never_join_a_camouflaged_campaign_which_is_flagged(tmp_path: Path) -> None:
    """Everyday phrasing, carrier NAT, a campus, SDK defaults and a shared model switch link nobody to
    the campaign; the campaign (65 % camouflage, no proxy) is found whole, pure and flagged; no benign account
    is flagged (fixtures/make_confounders.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_confounders", TINY.parent / "make_confounders.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    maker.build(tmp_path / "data")
    labels = read_csv(tmp_path / "data" / "labels.csv")
    (tmp_path / "data" / "labels.csv").rename(tmp_path / "labels.csv")  # the engine never sees the truth
    result = linkage.run(tmp_path / "data")
    members = result.members.join(labels, on="account_id").join(result.rings.select("ring_id", "flagged"), on="ring_id")
    mixed = members.group_by("ring_id").agg(pl.col("label").n_unique().alias("labels")).filter(pl.col("labels") > 1)
    assert mixed.height == 0, "a ring mixes benign look-alikes with the campaign"
    campaign = set(labels.filter(pl.col("label") == "campaign")["account_id"].to_list())
    flagged = set(members.filter(pl.col("flagged"))["account_id"].to_list())
    assert len(flagged & campaign) >= 0.9 * len(campaign)
    assert flagged <= campaign, "a benign account was flagged"
    # every account is ranked, in a ring or not: campaign accounts first
    from linkage.evaluate import average_precision

    scores = result.account_scores.join(labels, on="account_id")
    assert scores.height == labels.height
    assert average_precision(scores["account_score"].to_numpy(), (scores["label"] == "campaign").to_numpy()) > 0.95


def test_an_account_in_no_ring_is_ranked_by_its_own_risk() -> None:
    """Outside a ring an account's score is its risk against the background, not a flat zero."""
    result = linkage.run(TINY)
    alone = result.account_scores.filter(pl.col("ring_id").is_null())
    assert alone.height > 0 and alone["account_score"].n_unique() > 1
    assert (alone["account_score"] > 0).all()


def test_lockstep_mixture_matches_a_brute_force_sum_and_its_bound_never_changes_a_decision():
    """The compiled mixture (stepped for busy accounts) stays within ~1.5 nats of the plain sum
    Σ_o Poisson(o; λ)·P(Binomial(16, o/(A+B−o)) ≥ x) over the overlaps o ≤ min(A, B), the Poisson
    renormalised to them; with ``needed`` it may return an upper bound,
    but only where even the bound falls short, so no pair's link decision moves."""
    from scipy.stats import binom, poisson

    from linkage.chance import lockstep_surprisal

    rng = np.random.default_rng(1)
    n = 600
    agreement = rng.integers(0, 17, n) / 16
    a, b = rng.integers(1, 700, n).astype(float), rng.integers(1, 700, n).astype(float)
    got = lockstep_surprisal(agreement, a, b, 720.0, 1.3, 16)
    for p in range(n):
        x = int(round(agreement[p] * 16))
        overlap = np.arange(0, int(min(a[p], b[p])) + 1)
        law = poisson.pmf(overlap, 1.3 * a[p] * b[p] / 720)
        tail = (law * binom.sf(x - 1, 16, overlap / (a[p] + b[p] - overlap))).sum() / law.sum()
        expected = -np.log(tail) if x > 0 else 0.0
        if expected < 600:
            assert got[p] == pytest.approx(expected, abs=1.5), p
    needed = rng.uniform(0, 30, n)
    bounded = lockstep_surprisal(agreement, a, b, 720.0, 1.3, 16, needed)
    assert np.all(bounded >= got - 1e-9)
    assert np.array_equal(bounded >= needed, got >= needed)


def test_lockstep_worked_out_once_per_class_is_the_same_bit_for_bit():
    """Pairs of one agreement, one pair of window counts and one W (a campaign on one schedule) are
    summed once; the figures, bounds where a pair needs less included, are those of every pair on
    its own."""
    from linkage.chance import lockstep_surprisal
    from linkage.detect import _lockstep_classes

    rng = np.random.default_rng(3)
    windows = rng.choice([3.0, 40.5, 212.25, 690.0], 50)  # per account: few distinct schedules
    a, b = rng.integers(0, 50, 4_000), rng.integers(0, 50, 4_000)
    agreement = rng.integers(0, 17, 4_000) / 16
    needed = rng.uniform(-5, 40, 4_000)
    step = rng.choice([151, 152, 168], 4_000)  # per pair: the lifetimes' W, by its step on the grid
    total = np.exp2(step / 16)
    classes = _lockstep_classes(agreement, 16, windows, step, a, b)
    assert classes is not None and len(np.unique(classes)) <= 4 * 4 * 17 * 3
    alone = lockstep_surprisal(agreement, windows[a], windows[b], total, 1.3, 16, needed)
    grouped = lockstep_surprisal(agreement, windows[a], windows[b], total, 1.3, 16, needed, classes)
    assert np.array_equal(alone, grouped)
    assert (grouped > lockstep_surprisal(agreement, windows[a], windows[b], total, 1.3, 16)).any()  # bounds used
    # one W for all (no lifetimes known) gives the same figures as per pair
    same_w = lockstep_surprisal(agreement, windows[a], windows[b], np.full(4_000, 720.0), 1.3, 16)
    assert np.array_equal(same_w, lockstep_surprisal(agreement, windows[a], windows[b], 720.0, 1.3, 16))


def _builds_graph(
    n: int = 400,
    tool_billed_as_one: bool = True,
    customers: int = 10,
    customers_half_alike: bool = False,
    shared: str = "USED_DEVICE",
    strangers_on_one_model: bool = False,
    clients: str = "own",
) -> Graph:
    """Three hub tools of the relationship ``shared`` (client builds, or with ``SENT_TEMPLATE``
    scaffolds): ``fleet`` (0–59) run one model for long, reasoning-heavy answers on a tool
    ``customers`` more (from 190 on) use too, strangers to it or, with ``customers_half_alike``, on
    its model with its long inputs; ``sdk`` (60–119) are strangers (with ``strangers_on_one_model``,
    on one default model with the long inputs of a long tool); ``tool`` (120–179) are one org's
    seats acting as one (billed as one customer unless ``tool_billed_as_one`` is off). Everyone
    holds a tool of the other kind of their own (where scaffolds are shared, ``clients``: ``own``, a
    client each; ``none``; ``cells``, the fleet on small builds of four); two accounts share a small
    tool, the run's rarest."""
    fleet, sdk, tool = range(0, 60), range(60, 120), range(120, 180)
    acting_alike = set(fleet) | set(tool)
    half_alike = set(range(190, 190 + customers)) if customers_half_alike else set()
    hubs = [
        ("fleet-build", [*fleet, *range(190, 190 + customers)]),
        ("sdk-default", list(sdk)),
        ("org-tool", list(tool)),
        ("pair-build", [180, 181]),
    ]
    hubs += singly_held(n, shared, "own-build-", set(range(182)))
    on_default = set(sdk) if strangers_on_one_model else set()
    models = [("model-fleet", [*fleet, *sorted(half_alike)]), ("model-tool", list(tool))]
    models += [("model-default", sorted(on_default))] if on_default else []
    models += [(f"model-{i}", [i]) for i in range(n) if i not in acting_alike | half_alike | on_default]
    cards = [("corp-card", list(tool))] if tool_billed_as_one else [(f"card-{i}", [i]) for i in tool]
    other = "SENT_TEMPLATE" if shared == "USED_DEVICE" else "USED_DEVICE"
    shares = {
        shared: hubs,
        other: _clients(n, clients) if other == "USED_DEVICE" else [(f"own-{i}", [i]) for i in range(n)],
        "USED_MODEL": models,
        "PAID_WITH": cards,
    }
    graph = graph_of(n, shares, orgs={i: "corp" for i in tool})
    alike_ = pl.Series([i in acting_alike for i in range(n)])
    long_inputs = pl.Series([i in acting_alike | half_alike | on_default for i in range(n)])
    graph.nodes["Account"] = graph.nodes["Account"].with_columns(
        input_tokens=pl.when(long_inputs).then(50_000).otherwise(pl.int_range(n) * 7),
        output_tokens=pl.when(alike_).then(90_000).otherwise((pl.int_range(n) * 13) % 997),
        reasoning_requests=pl.when(alike_).then(10).otherwise(pl.int_range(n) % 3),
        sampled_prompts=pl.lit(10),
    )
    return graph


def _clients(n: int, clients: str) -> list[tuple[str, list[int]]]:
    if clients == "none":
        return []
    if clients == "cells":
        return [(f"cell-{k}", list(range(k, k + 4))) for k in range(0, 60, 4)] + singly_held(
            n, "", "own-", set(range(60))
        )
    return [(f"own-{i}", [i]) for i in range(n)]


def _owned(graph: Graph, entity_type: str = "Device") -> dict[str, list[int]]:
    """Each owned tool of the graph with its workers' indices."""
    from linkage.behaviour import profiles
    from linkage.detect import TOOLS, owned_tools

    accounts, evidence = memberships(graph, DetectSettings())
    owned = owned_tools(
        evidence,
        profiles(graph, without=TOOLS[entity_type]),
        accounts.select("account_id", "org_id"),
        48,
        0.5,
        entity_type,
    )
    rows = evidence.join(owned, on=["entity_key", "account_id"]).group_by("entity").agg(pl.col("idx").sort())
    return {entity: list(workers) for entity, workers in rows.iter_rows()}


def test_a_build_whose_holders_act_as_one_beyond_it_is_owned_an_sdk_default_and_an_orgs_tool_are_not() -> None:
    """The fleet's build is owned and only the fleet are its workers: the ten customers on it act
    like nobody there. The strangers' SDK default is not; nor the org's tool while its seats are
    billed as one customer (shared by right)."""
    assert _owned(_builds_graph()) == {"Device|fleet-build": list(range(60))}
    # seats paying each on their own are each their own customer, whatever org they declare: their
    # tool is read like anyone's
    assert _owned(_builds_graph(tool_billed_as_one=False)) == {
        "Device|fleet-build": list(range(60)),
        "Device|org-tool": list(range(120, 180)),
    }
    # a build the operation shares with 30 customers who act half like it (on its model, with its
    # long inputs) is not its own: the holders as a group act alike, but a third act like no one there
    assert _owned(_builds_graph(customers=30, customers_half_alike=True)) == {}


def test_holders_of_an_owned_build_form_a_ring_where_a_hub_alone_links_none() -> None:
    graph = _builds_graph()
    ringed = set(linkage.detect.detect(graph, DetectSettings()).communities["idx"].to_list())
    assert set(range(60)) <= ringed, "the fleet is one ring"
    assert not ringed & set(range(60, 120)), "strangers on an SDK default stay apart"
    assert not ringed & set(range(190, 200)), "customers on the operation's build are not its workers"
    off = linkage.detect.detect(graph, DetectSettings(owned_build_alike=None)).communities
    assert not set(off["idx"].to_list()) & set(range(60)), "without the rule the build links nobody"


def test_a_scaffold_whose_holders_act_as_one_beyond_it_is_owned_a_popular_long_template_is_not() -> None:
    """The same reading of a hub scaffold, its holders' behaviour read beyond their templates, clients
    and input lengths: strangers on one popular long template, all on the default model, have the
    same long inputs because of the template, and that is not acting as one."""
    from linkage.behaviour import member_alike, profiles
    from linkage.detect import TOOLS

    graph = _builds_graph(shared="SENT_TEMPLATE", strangers_on_one_model=True)
    assert _owned(graph, "PromptTemplate") == {"PromptTemplate|fleet-build": list(range(60))}
    # what keeps them apart is leaving out the input length the template gives them: with it, most
    # of the strangers would reach the mark
    _, evidence = memberships(graph, DetectSettings())
    strangers = evidence.filter(pl.col("entity") == "PromptTemplate|sdk-default").select(
        pl.col("entity").alias("ring_id"), "account_id"
    )

    def at_mark(without: tuple[str, ...]) -> float:
        return float((member_alike(profiles(graph, without=without), strangers)["alike"] >= 0.5).mean())

    assert at_mark(TOOLS["PromptTemplate"]) < 0.25 < 0.5 < at_mark(("client", "template"))


@pytest.mark.parametrize("clients", ["none", "own"])
def test_a_scaffold_links_the_workers_no_client_build_links(clients: str) -> None:
    """By default a scaffold is read for the workers no client build can link: a fleet without a
    client, or with one of its own per account (rotated fingerprints), is one ring by its scaffold."""

    def ringed(graph: Graph, owned_scaffolds: bool | None = None) -> set[int]:
        found = linkage.detect.detect(graph, DetectSettings(owned_scaffolds=owned_scaffolds)).communities
        return set(found["idx"].to_list())

    graph = _builds_graph(shared="SENT_TEMPLATE", strangers_on_one_model=True, clients=clients)
    assert set(range(60)) <= ringed(graph), "the fleet is one ring"
    assert not ringed(graph) & set(range(60, 120)), "strangers on a popular template stay apart"
    assert not ringed(graph, owned_scaffolds=False) & set(range(60)), "without the rule the scaffold links nobody"


def test_a_scaffold_is_not_read_for_workers_their_client_builds_link() -> None:
    """A fleet whose cells share small builds is linked by them; its scaffold is read for it only
    when ``owned_scaffolds`` asks for every worker."""
    graph = _builds_graph(shared="SENT_TEMPLATE", strangers_on_one_model=True, clients="cells")

    def scaffold_workers(owned_scaffolds: bool | None) -> int:
        owned = linkage.detect.detect(graph, DetectSettings(owned_scaffolds=owned_scaffolds)).owned
        return 0 if owned is None else owned.height

    assert scaffold_workers(None) == 0
    assert scaffold_workers(True) == 60


@pytest.mark.parametrize(
    ("shared", "entity_type", "named"),
    [("USED_DEVICE", "Device", "owned build"), ("SENT_TEMPLATE", "PromptTemplate", "operation's scaffold")],
)
def test_a_rings_evidence_names_an_owned_tool_as_one(shared: str, entity_type: str, named: str) -> None:
    """An investigator reading a ring sees why a build or scaffold seventy accounts hold weighs so much."""
    from linkage.score import _owned_tools_named

    detection = linkage.detect.detect(_builds_graph(shared=shared), DetectSettings(owned_scaffolds=True))
    tools = detection.memberships.filter(pl.col("type") == entity_type).select("entity", "type").unique()
    labelled = _owned_tools_named(detection, tools.with_columns(pl.col("entity").alias("label")))
    for entity, _, label in labelled.iter_rows():
        assert (named in label) == (entity == f"{entity_type}|fleet-build"), (entity, label)
    assert labelled.height > 2


def test_clique_contributions_are_every_pair_of_each_group_by_size_then_row_major() -> None:
    """Each small group's members paired every way (codes a·n + b, a < b, whichever row comes first),
    with the row of the group's earlier member; groups by size (ties in order), pairs row-major."""
    from linkage.detect import _clique_contributions

    rows = np.array([4, 0, 2, 5, 1, 3])  # membership rows, grouped: [4, 0, 2] [5, 1] [3]
    idx = np.array([7, 3, 9, 1, 6, 2])  # account of each membership row
    code, first = _clique_contributions(np.array([0, 3, 5]), np.array([3, 2, 1]), rows, idx, 10)
    # the pair group (rows 5, 1: accounts 2, 3) before the triple (rows 4, 0, 2: accounts 6, 7, 9)
    assert code.tolist() == [2 * 10 + 3, 6 * 10 + 7, 6 * 10 + 9, 7 * 10 + 9]
    assert first.tolist() == [5, 4, 4, 0]


def test_a_client_build_carries_the_workers_of_a_scaffold_only_where_they_are_most_of_its_holders():
    """A scaffold's workers are left to the owned-scaffold reading unless a client build links them to
    each other: a few-holder build most of whose holders share one of their hub scaffolds, or an owned
    build. A build shared with strangers links no worker (fingerprints that many unrelated accounts
    happen to share would otherwise switch the reading off for everyone)."""
    rows = [
        *[(a, 1, "Device", 3) for a in ("w1", "w2", "x1")],  # two of its three holders work scaffold 9
        *[(a, 2, "Device", 30) for a in ("w3", "w4")],  # two of thirty: shared with strangers
        *[(f"s{i}", 2, "Device", 30) for i in range(28)],
        *[(a, 9, "PromptTemplate", 60) for a in ("w1", "w2", "w3", "w4", "w5", "w6")],
    ]
    evidence = pl.DataFrame(rows, schema=["account_id", "entity_key", "type", "degree"], orient="row")
    owned = pl.DataFrame({"account_id": ["w6"]})
    carried = set(_carried_by_a_client(evidence, owned, hub_size=48)["account_id"])
    assert carried == {"w1", "w2", "w6"}
    assert set(_carried_by_a_client(evidence, None, hub_size=48)["account_id"]) == {"w1", "w2"}
