"""Behaviour profiles: how alike a ring's members act, on the run's own scale."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from linkage.behaviour import _dense_codes, _Grouped, alike, alike_against_crowd, member_alike, profiles

from .conftest import graph_of


def _graph(n: int, same: list[int]):
    """``same`` accounts call one model with one template through one client for long answers;
    every other account has a model, template and client of its own and short answers."""
    others = [i for i in range(n) if i not in same]
    shares = {
        rel: [(f"{prefix}-shared", same)] + [(f"{prefix}-{i}", [i]) for i in others]
        for rel, prefix in (("USED_MODEL", "model"), ("SENT_TEMPLATE", "template"), ("USED_DEVICE", "client"))
    }
    graph = graph_of(n, shares)
    long = pl.Series([i in same for i in range(n)])
    graph.nodes["Account"] = graph.nodes["Account"].with_columns(
        input_tokens=pl.when(long).then(50_000).otherwise(pl.int_range(n) * 10),
        output_tokens=pl.when(long).then(90_000).otherwise(pl.int_range(n) * 10),
        reasoning_requests=pl.when(long).then(10).otherwise(0),
        sampled_prompts=pl.lit(10),
    )
    return graph


def _rings(groups: dict[str, list[int]]) -> pl.DataFrame:
    rows = [(ring, f"a{i:04d}") for ring, members in groups.items() for i in members]
    return pl.DataFrame({"ring_id": [r for r, _ in rows], "account_id": [a for _, a in rows]})


def test_accounts_acting_identically_are_one_and_unrelated_ones_near_zero() -> None:
    graph = _graph(20, same=[0, 1, 2, 3])
    found = dict(alike(profiles(graph), _rings({"operated": [0, 1, 2, 3], "strangers": [10, 12, 14, 16]})).iter_rows())
    assert found["operated"] == pytest.approx(1.0)
    # strangers share nothing but where they fall among the run's accounts: below an average pair,
    # whose similarity the operated accounts raise
    assert found["strangers"] < 0.1


def test_the_whole_run_as_one_ring_is_zero_by_construction() -> None:
    graph = _graph(12, same=[0, 1, 2])
    everyone = _rings({"all": list(range(12))})
    assert alike(profiles(graph), everyone)["alike"][0] == pytest.approx(0.0, abs=1e-9)


def test_a_run_without_behaviour_gives_no_reading() -> None:
    graph = graph_of(5, {})
    graph.nodes["Account"] = graph.nodes["Account"].with_columns(requests=pl.lit(0))
    assert alike(profiles(graph), _rings({"r": [0, 1, 2]}))["alike"].to_list() == [None]


def test_beyond_the_client_strangers_on_one_client_act_like_strangers() -> None:
    """Accounts whose only common trait is their client read as alike with the client aspect and
    as strangers without it; an operation acting as one stays alike either way."""
    graph = _graph(30, same=[0, 1, 2, 3])
    on_one_client = list(range(4, 30, 3))  # spread over the run, as strangers are
    graph.rels["USED_DEVICE"] = graph.rels["USED_DEVICE"].with_columns(
        pl.when(pl.col("src").is_in([f"a{i:04d}" for i in on_one_client]))
        .then(pl.lit("client-sdk-default"))
        .otherwise(pl.col("dst"))
        .alias("dst")
    )
    rings = _rings({"operated": [0, 1, 2, 3], "sdk": on_one_client})
    with_client = dict(alike(profiles(graph), rings).iter_rows())
    beyond = dict(alike(profiles(graph, without=("client",)), rings).iter_rows())
    assert with_client["sdk"] > 0.1
    assert beyond["sdk"] < 0.05
    assert beyond["operated"] == pytest.approx(1.0)


def test_each_members_alike_averages_to_the_rings_and_tells_a_customer_from_the_operation() -> None:
    """A member's ``alike`` is its mean similarity to the ring's others: their mean is the ring's
    ``alike``; a stranger in the ring reads near 0 (under it), the operation's accounts far above."""
    graph = _graph(30, same=[0, 1, 2, 3, 4, 5])
    rings = _rings({"mixed": [0, 1, 2, 3, 4, 5, 13, 21], "strangers": [8, 16, 24]})
    members = member_alike(profiles(graph), rings)
    rings_alike = dict(alike(profiles(graph), rings).iter_rows())
    means = dict(members.group_by("ring_id").agg(pl.col("alike").mean()).iter_rows())
    assert means == pytest.approx(rings_alike, abs=1e-5)
    by_account = dict(members.select("account_id", "alike").iter_rows())
    assert min(by_account[f"a{i:04d}"] for i in range(6)) > 0.5
    assert max(by_account[f"a{i:04d}"] for i in (13, 21)) < 0.05


def test_a_ring_of_one_crowd_acts_alike_only_as_far_as_it_stands_out_from_its_crowd() -> None:
    """Ten accounts act identically (a population: scripts of one kind). A ring of four of them is
    alike on the run's scale, but not against the six others it shares an address with; the same
    four against a crowd of strangers stay alike. A crowd smaller than the ring reads nothing."""
    graph = _graph(30, same=list(range(10)))
    behaviour = profiles(graph)
    ring = _rings({"slice": [0, 1, 2, 3]})
    assert alike(behaviour, ring)["alike"][0] == pytest.approx(1.0)
    of_its_kind = _rings({"slice": [4, 5, 6, 7, 8, 9]})
    strangers = _rings({"slice": [20, 21, 22, 23, 24, 25]})
    assert alike_against_crowd(behaviour, ring, of_its_kind)["crowd_alike"][0] == pytest.approx(0.0, abs=1e-9)
    assert alike_against_crowd(behaviour, ring, strangers)["crowd_alike"][0] > 0.9
    assert alike_against_crowd(behaviour, ring, _rings({"slice": [20, 21]})).height == 0


def test_the_compiled_sums_match_every_pair_summed_by_hand() -> None:
    """The group sums behind every reading (pairs within a ring, each member against the others, the
    ring against its crowd) equal the dot products of the profile vectors taken pair by pair; an
    account outside the profiles counts in a ring's size and adds nothing."""
    graph = _graph(30, same=[0, 1, 2, 3, 4])
    behaviour = profiles(graph)
    vectors = {a: {} for a in range(30)}
    for account, feature, u in behaviour.vectors.iter_rows():
        vectors[account][feature] = u

    def dot(a: int, b: int) -> float:
        return sum(u * vectors[b].get(f, 0.0) for f, u in vectors[a].items())

    rings = {"r1": [0, 1, 2, 7, 11], "r2": [3, 4, 20]}
    members = _rings(rings).vstack(pl.DataFrame({"ring_id": ["r2"], "account_id": ["nobody"]}))
    crowd = _rings({"r1": [5, 6, 8], "r2": [21, 22, 23, 24, 25]})
    grouped = _Grouped.of(behaviour, members)
    pairs, each, dots = grouped.sums(behaviour, _Grouped.of(behaviour, crowd, ids=grouped.ids))
    ids = grouped.ids.to_list()
    assert grouped.sizes.tolist() == [5, 4]
    crowds = {"r1": [5, 6, 8], "r2": [21, 22, 23, 24, 25]}
    for ring, accounts in rings.items():
        g = ids.index(ring)
        assert pairs[g] == pytest.approx(sum(dot(a, b) for a in accounts for b in accounts if a != b))
        assert dots[g] == pytest.approx(sum(dot(a, c) for a in accounts for c in crowds[ring]))
    by_row = dict(zip(members["account_id"], each))
    assert by_row["a0007"] == pytest.approx(sum(dot(7, b) for b in rings["r1"] if b != 7))
    assert by_row["nobody"] == 0.0


def test_dense_codes_number_hashes_in_order_of_first_appearance() -> None:
    hashes = np.array([2**63 + 5, 17, 2**63 + 5, 33, 17, 17 + 64], np.uint64)  # (17 and 81 share low bits)
    codes, n = _dense_codes(hashes)
    assert codes.tolist() == [0, 1, 0, 2, 1, 3]
    assert n == 4
