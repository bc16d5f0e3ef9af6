"""Stage 5 — score: how strongly each ring looks like a coordinated extraction operation,
measured against the run's own background.

**Account risk.** Every account gets, for each behaviour an extraction operation cannot do
without, its percentile among all accounts of this run (so no constant depends on one world's
scale or mix), and its risk is the mean of those percentiles (:data:`RISK_FEATURES`):

- proxy_share: requests through proxy / VPN / datacenter / Tor exits (bought egress)
- recency: how late the account was created (campaign accounts are made for the operation)
- address_spread: distinct addresses per request (rotating exits)
- scaffold_share: sampled prompts on a mined scaffold (generated, not typed)
- reasoning_share: prompts asking for step-by-step reasoning, grading, tool-use transcripts
- output_per_request, input_per_request: harvested answers are long, contexts large
- volume: requests (accounts are worked, not tried)

A feature whose column is absent from the input is left out rather than counted as innocence.

**Ring score** = the mean risk of its members, shrunk towards the background mean by
``prior_members`` pseudo-customers; a ring weighs as many customers as it holds (the seats of a
declared org billed as one are one customer, see :func:`~linkage.detect.one_customer_orgs`), so a
small ring, or one org's seats, needs to be risky throughout. What a declared org explains of its
seats (its egress, the week it signed up, its templates: :data:`ORG_EXPLAINED_FEATURES`) counts in
a ring only as far as the org does not explain the ring or its links keep one clock beyond chance
(:func:`org_explained_risk`): an operation that declares an org still runs its accounts on its
scheduler, and what it asks for counts in full. The ring's excess over the background is then
weighed by how alike its members act (:func:`weigh_by_alike`, :mod:`linkage.behaviour`): strangers
sharing a NAT or a platform's egress move down, operated rings up; and a ring that neither acts as
alike as the run's reference ring nor keeps one clock keeps only what its timing supports
(:func:`operated_by_behaviour_or_clock`). What the academic institutions its members signed up
with explain of them (a class on its course: :data:`INSTITUTION_EXPLAINED_FEATURES`) counts only
as far as the ring keeps a clock beyond chance (:func:`vouched_risk`). **A second reading** counts only
what members are and ask for (:data:`CONTENT_FEATURES`), against its own cut and in proportion to the
confidence that the ring keeps one clock: an operation that buys clean infrastructure per account
loses the rest of its risk (:func:`_with_content_reading`); it raises a ring, never lowers one. **Flag**: the ring's average member
is riskier than all but ``flag_background_share`` of the run's ordinary customers (a declared org
counts as one): the lower of two readings, the customers no ring holds, and every customer outside
the rings that already stand out against them (:func:`flag_cut`). A random group's mean is far less
spread than single accounts, so few benign groups get there by chance; operations are risky member
after member. **Bystanders**: loosely tied, tame members of a flagged ring leave it where its tame
members are demonstrably the loosely tied ones (:func:`bystanders`), unless they keep the clock of
the ring's risky core (:func:`_clock_of`); where that core keeps one clock beyond chance, tame
members on their own hours leave however tightly tied (:func:`off_the_rings_clock`), and a ring
dragged under the cut is tested too, on stronger evidence (the test's level shared among the rings
tested; every such ring where the run has no IP types to discount shared exits by). **Paid for**:
once rings are scored, an account in no ring paying with a card mostly held by ring members joins
the ring holding most of them (:func:`paid_by_the_ring`), adding to its evidence, not its score.

The older coordination features (lockstep, owned infrastructure and templates, equal volume,
signup burst, declared org) are kept as columns and in the evidence text: they say *how* a ring
is tied, while the risk says whether it behaves like extraction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa

from .behaviour import Profiles, alike, alike_against_crowd, profiles
from .chance import mann_whitney_less
from .detect import Detection, in_entity_order
from .graph import Graph, stable_order
from .normalize import academic_institution
from .settings import ScoreSettings

RISK_FEATURES = (
    "proxy_share",
    "recency",
    "address_spread",
    "scaffold_share",
    "reasoning_share",
    "output_per_request",
    "input_per_request",
    "volume",
)
# what an academic institution explains of its students in a course: the week they signed up, the
# course's problem-set scaffold, step-by-step questions and their long answers (:func:`vouched_risk`)
INSTITUTION_EXPLAINED_FEATURES = ("recency", "scaffold_share", "reasoning_share", "output_per_request")
# what a declared org explains of its seats: its egress (often a cloud's), the week it signed up, its
# internal templates (:func:`org_explained_risk`)
ORG_EXPLAINED_FEATURES = ("proxy_share", "recency", "scaffold_share")
# what an account is and asks for: made lately, and asking for what an operation came for, however
# clean the infrastructure it pays for (proxy share and address spread say how traffic arrives, which
# an operation can buy per account). Recency stays in: without it, incident-scale agencies (one
# operator's old client accounts on synchronised batches) came over the content reading's cut
CONTENT_FEATURES = ("recency", "scaffold_share", "reasoning_share", "output_per_request", "input_per_request", "volume")
# how a ring is tied (columns and evidence text; the score is the members' risk)
COORDINATION_FEATURES = (
    "coordination",
    "owned_infrastructure",
    "owned_templates",
    "reasoning_style",
    "equal_volume",
    "lockstep",
    "proxy_share",
    "signup_burst",
)
# rounds of moving bystanders apart (each moves at least one member; a handful is typical): a bound
# so that no input can make scoring recurse without end
_MAX_BYSTANDER_ROUNDS = 32
_INFRA_TYPES = ["PaymentInstrument", "IP", "SignupIP", "Subnet", "Device", "Bin"]
_CROWD_TYPES = ["IP", "SignupIP", "Subnet"]
_BURST_WINDOW_MS = 6 * 3600 * 1000
# the mean surprisal −ln p of a p-value drawn by chance (p uniform: −ln p is exponential with mean 1):
# links whose lockstep averages no more are not on a common clock
CHANCE_SURPRISAL = 1.0


def ring_ids(communities: pl.DataFrame) -> pl.DataFrame:
    """community → stable content id: the same members always give the same ring_id."""
    members = communities.sort("account_id").group_by("community", maintain_order=True).agg(pl.col("account_id"))
    ids = ["R" + hashlib.sha1("\n".join(m).encode()).hexdigest()[:12] for m in members["account_id"].to_list()]
    return pl.DataFrame({"community": members["community"], "ring_id": ids})


class AccountReading(NamedTuple):
    """What scoring reads of the accounts alone, before any ring forms: the same in every round."""

    risk: pl.DataFrame  # account_risk
    behaviour: Profiles  # behaviour.profiles
    institutions: pl.DataFrame  # account_institutions
    customers: pl.DataFrame  # customer_ranks


def read_accounts(graph: Graph) -> AccountReading:
    """:class:`AccountReading` of the graph's accounts."""
    accounts = graph.nodes["Account"]
    return AccountReading(
        account_risk(graph), profiles(graph), account_institutions(accounts), customer_ranks(accounts)
    )


class ScoredRings(NamedTuple):
    """What scoring gives: the rings, highest score first; their members; the entities they share;
    every account's risk and its score outside any ring; and the score at which rings are flagged."""

    rings: pl.DataFrame
    members: pl.DataFrame
    evidence: pl.DataFrame
    alone: pl.DataFrame
    flag_cut: float | None


def score_rings(
    detection: Detection,
    graph: Graph,
    settings: ScoreSettings,
    flag_threshold: float | None = None,
    labels: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    min_ring_size: int = 3,
    detached: pl.DataFrame | None = None,
    reading: AccountReading | None = None,
) -> ScoredRings:
    """Rings, ring_members, ring_evidence and ``alone`` (:class:`ScoredRings`) — rings sorted by score,
    highest first; ``alone``: every account's risk and the score it has outside any ring (as if in a
    ring at the background's mean); ``flag_cut``: ``flag_threshold`` when given, else the cut calibrated
    to the run (:func:`flag_cut`), None when neither (no ring formed). Reads only the graph.

    ``labels``: from the evidence rows (``entity, type, degree``) to ``entity, label`` (see
    :func:`linkage.labels.entity_labels`); without it an entity is labelled by its key.
    ``min_ring_size``: a ring left smaller by moving its bystanders apart (:func:`bystanders`) dissolves;
    ``detached``: the bystanders already moved apart (``account_id, community, bystander_community``):
    counted per ring, and their rings point back to the ring they left (``bystanders_of``);
    ``reading``: :func:`read_accounts` of the graph, when already known (the rounds of moving
    bystanders apart; a large run reads it while Leiden runs)."""
    accounts = graph.nodes["Account"]
    billed = detection.accounts.select("account_id", "org_id")  # (orgs billed as one: see detect.memberships)
    reading = read_accounts(graph) if reading is None else reading
    risk, behaviour, customers = reading.risk, reading.behaviour, reading.customers
    flag_threshold = settings.flag_threshold if flag_threshold is None else flag_threshold
    members = detection.communities.join(ring_ids(detection.communities), on="community")
    if members.height == 0:
        return ScoredRings(
            _empty_rings(),
            pl.DataFrame(
                schema={
                    "ring_id": pl.Utf8,
                    "account_id": pl.Utf8,
                    "account_score": pl.Float64,
                    "attachment": pl.Float64,
                    "strength": pl.Float64,
                }
            ),
            _empty_evidence(),
            _alone(risk, None),
            flag_threshold,
        )
    ring_of = members.select("account_id", "ring_id")
    links = _in_ring_links(detection, members)
    strength = _internal_strength(detection, members, links)
    background = background_risk(risk, members.select("account_id"), customers)
    prior = float(background.mean()) if background.len() else 0.5
    available = [f for f in RISK_FEATURES if f in risk.columns]
    ring_features = (
        members.select("ring_id", "account_id")
        .join(risk, on="account_id", how="left")
        .group_by("ring_id")
        .agg([pl.col(f).mean().alias(f"risk_{f}") for f in available])
    )
    lockstep = _lockstep(detection, members, links)
    hours = _lockstep(detection, members, links, hours_only=True)
    size_and_org = _size_and_org(members, accounts)
    institutions = _institutions(members, reading.institutions)
    # what members' academic institutions explain (a class on its course) is taken out before the
    # ring is read, by both readings
    scored_risk = vouched_risk(members, risk, institutions, hours) if settings.academic_institutions else risk
    ring_risk = shrunk_ring_risk(
        members,
        org_explained_risk(members, scored_risk, size_and_org, hours) if settings.declared_org_clock else scored_risk,
        billed,
        prior,
        settings.prior_members,
    )
    if settings.timing_confidence:
        ring_risk = _weigh_by_timing(ring_risk, hours, prior)
    ring_alike = alike(behaviour, members.select("ring_id", "account_id"))
    crowd_alike = ring_alike.with_columns(pl.lit(None, pl.Float64).alias("crowd_alike"))
    if settings.alike_reference_share is not None:
        ring_risk = weigh_by_alike(ring_risk, ring_alike, prior, settings.alike_reference_share)
        if settings.alike_against_crowd:
            # how alike members act against the customers on their own addresses, read by the
            # alike-or-clock rule where it can lower a ring: risk over the background, members alike
            over = ring_risk.filter(pl.col("score") > prior).join(
                ring_alike.filter(pl.col("alike") > 0), on="ring_id", how="semi"
            )
            crowd_alike = alike_with_crowd(detection, members, behaviour, ring_alike, over.select("ring_id"))
        if settings.alike_or_clock:
            ring_risk = operated_by_behaviour_or_clock(
                ring_risk,
                crowd_alike,
                lockstep,
                prior,
                settings.alike_reference_share,
                CHANCE_SURPRISAL if settings.clock_beyond_chance else 0.0,
            )
    threshold = (
        flag_cut(risk, members, customers, ring_risk, background, settings.flag_background_share)
        if flag_threshold is None
        else flag_threshold
    )
    ring_risk = ring_risk.with_columns(pl.lit(False).alias("content_reading"))
    if settings.content_reading:
        ring_risk = _with_content_reading(
            members, customers, billed, scored_risk, ring_risk, ring_alike, lockstep, threshold, settings
        )
    rounds = 0 if detached is None else int(detached["round"].max()) + 1
    if settings.detach_bystanders and rounds < _MAX_BYSTANDER_ROUNDS:
        every_ring_under_cut = _test_under_cut(settings, risk)
        loose = bystanders(
            _with_core_timing(detection, members, strength, risk, threshold, links),
            risk,
            ring_risk,
            threshold,
            settings.bystander_test_level,
            min_ring_size if every_ring_under_cut or settings.clocked_cores_under_cut else None,
            settings.bystander_clock_share,
            clocked_cores_only=not every_ring_under_cut,
            off_clock=settings.off_clock_visitors,
            loose_off_clock=settings.loose_off_clock_visitors,
            declared=accounts.select("account_id", "org_id"),
        )
        if detached is not None:  # an account leaves one ring once: the rounds end
            loose = loose.join(detached.select("account_id"), on="account_id", how="anti")
        if loose.height:
            moving = loose.join(detection.communities.select("account_id", "community"), on="account_id")
            if detached is None:
                offset = int(detection.communities["community"].max()) + 1  # (communities are non-negative)
            else:  # later rounds: a ring's bystanders join the ring of its earlier ones
                offset = int((detached["bystander_community"] - detached["community"])[0])
            moving = moving.with_columns(
                (pl.col("community") + offset).alias("bystander_community"), pl.lit(rounds).alias("round")
            )
            detached = moving if detached is None else pl.concat([detached, moving])
            # again until no ring has a bystander: once weak members have left, the median member
            # is the ring's own, and members tied below it and tame on their own are found next;
            # each round moves tame members into rings of tame members, which are never tested
            # again (no core over the cut), so the rounds end
            trimmed = _bystanders_apart(detection, detached, min_ring_size)
            return score_rings(trimmed, graph, settings, threshold, labels, min_ring_size, detached, reading)
    paid = paid_by_the_ring(detection, members) if settings.paid_by_the_ring else members.clear()
    if paid.height:
        members = pl.concat([members, paid], how="diagonal_relaxed")
        ring_of = members.select("account_id", "ring_id")
        size_and_org = _size_and_org(members, accounts)
        institutions = _institutions(members, reading.institutions)
    # the members are settled: the rings' joins over the graph run on a second thread (polars releases
    # the GIL) while the entities they share are sorted out on this one
    with ThreadPoolExecutor(max_workers=1) as pool:
        traffic = pool.submit(_traffic_features, accounts, ring_of)
        owned_templates = pool.submit(_owned_templates, graph, ring_of)
        signup_burst = pool.submit(_signup_burst, members, accounts)
        into = pool.submit(_links_into_rings, detection, members)
        evidence = _shared_entities(detection, members)
        named = labels(evidence) if labels is not None else evidence.select("entity", pl.col("entity").alias("label"))
        evidence = evidence.join(named.unique("entity"), on="entity", how="left").with_columns(
            pl.col("label").fill_null(pl.col("entity"))
        )
        evidence = _owned_tools_named(detection, evidence)
        features = (
            size_and_org.join(_coordination(strength), on="ring_id", how="left")
            .join(institutions, on="ring_id", how="left")
            .join(_owned_infrastructure(evidence), on="ring_id", how="left")
            .join(traffic.result(), on="ring_id", how="left")
            .join(owned_templates.result(), on="ring_id", how="left")
            .join(signup_burst.result(), on="ring_id", how="left")
            .join(lockstep, on="ring_id", how="left")
            .with_columns(pl.col(pl.Float64).fill_null(0.0))
            .join(crowd_alike, on="ring_id", how="left")
        )
        links_into_rings = into.result()
    rings = (
        features.join(ring_risk, on="ring_id", how="left")
        .join(ring_features, on="ring_id", how="left")
        .with_columns(pl.col("score").fill_null(0.0))
    )
    rings = rings.with_columns(
        (pl.col("score") >= threshold).alias("flagged"),
        _background_percentile(background, pl.col("score")).alias("background_percentile"),
    )
    rings = rings.join(_bystander_columns(members, detached), on="ring_id", how="left").with_columns(
        pl.col("detached").fill_null(0)
    )
    rings = rings.join(_evidence_text(evidence, settings.top_evidence), on="ring_id", how="left").join(
        paid.group_by("ring_id").len("paid_members"), on="ring_id", how="left"
    )
    rings = rings.with_columns(
        pl.concat_str(
            [
                pl.format(
                    "members riskier than {}% of unlinked accounts", (pl.col("background_percentile") * 100).round(1)
                ),
                pl.format("; {}", pl.col("evidence")).fill_null(""),
                pl.format(
                    "; members act alike {} (0: like two unrelated customers of this run, 1: identical)",
                    pl.col("alike").round(2),
                ).fill_null(""),
                pl.when(pl.col("crowd_alike") < pl.col("alike"))
                .then(
                    pl.format(", {} against the unlinked customers on their addresses", pl.col("crowd_alike").round(2))
                )
                .otherwise(pl.lit("")),
                pl.format(
                    "; their links keep one clock {} nats a link (about 1: chance)", pl.col("lockstep").round(1)
                ).fill_null(""),
                pl.when(pl.col("content_reading"))
                .then(pl.lit("; scored on what its members are and ask for, read alone: they keep one clock"))
                .otherwise(pl.lit("")),
                pl.format("; proxy/VPN/DC traffic {}%", (pl.col("proxy_share") * 100).round(0)),
                pl.format("; owned scaffolds {}%", (pl.col("owned_templates") * 100).round(0)),
                pl.format("; reasoning-style {}%", (pl.col("reasoning_style") * 100).round(0)),
                pl.format("; signup burst {}%", (pl.col("signup_burst") * 100).round(0)),
                pl.format("; volume CV {}", (1 - pl.col("equal_volume")).round(2)),
                pl.format("; declared org {}%", (pl.col("org_explained") * 100).round(0)),
                pl.when(
                    (pl.col("org_explained") > 0)
                    & pl.lit(settings.declared_org_clock and not settings.timing_confidence)
                )
                .then(pl.lit(" (what it explains counted as far as its seats keep one clock)"))
                .otherwise(pl.lit("")),
                pl.when(pl.col("institution").is_not_null() & pl.lit(settings.academic_institutions))
                .then(
                    pl.format(
                        "; {}% of an academic institution by mail or campus sign-up, most of {} (what a course explains, "
                        "its signup week, scaffold and step-by-step answers, counted as far as the ring keeps "
                        "one clock beyond chance)",
                        (pl.col("institution_share") * 100).round(0),
                        pl.col("institution"),
                    )
                )
                .otherwise(pl.lit("")),
                pl.when(pl.col("bystanders_of").is_not_null())
                .then(
                    pl.format(
                        "; bystanders of {}: tied to it loosely, under the cut on their own", pl.col("bystanders_of")
                    )
                )
                .otherwise(pl.lit("")),
                pl.when(pl.col("paid_members") > 0)
                .then(
                    pl.format(
                        "; {} member(s) joined by paying with a card more than half of whose holders are members (in no ring by their links)",
                        pl.col("paid_members"),
                    )
                )
                .otherwise(pl.lit("")),
                pl.when(pl.col("detached") > 0)
                .then(
                    pl.format("; {} member(s) detached (tied loosely, under the cut on their own)", pl.col("detached"))
                )
                .otherwise(pl.lit("")),
            ]
        )
        .str.strip_chars("; ")
        .alias("evidence")
    )
    rings = rings.sort(["score", "ring_id"], descending=[True, False])
    order = [
        "ring_id",
        "score",
        "size",
        "flagged",
        "background_percentile",
        "alike",
        "content_reading",
        *COORDINATION_FEATURES,
        "org_explained",
        "org_id",
        "institution",
        "institution_share",
        "detached",
        "bystanders_of",
        "requests",
        *[f"risk_{f}" for f in available],
        "evidence",
    ]
    # round: parallel float sums may differ in the last bit between runs; outputs must not
    rings = rings.select(order).with_columns(pl.col(pl.Float64).round(6))
    ring_members = (
        members.select("ring_id", "account_id")
        .join(strength.select("account_id", "attachment", "strength"), on="account_id", how="left")
        .join(rings.select("ring_id", "score"), on="ring_id")
        .with_columns(pl.col("attachment").fill_null(0.0), pl.col("strength").fill_null(0.0))
        .join(risk, on="account_id", how="left")
        .with_columns(((pl.col("score") + pl.col("risk").fill_null(0.0)) / 2).round(6).alias("account_score"))
        .drop("score")
    )
    ring_members = (
        ring_members.join(rings.select("ring_id", pl.int_range(pl.len()).alias("_rank")), on="ring_id")
        .sort("_rank", "account_id")
        .drop("_rank")
        .select("ring_id", "account_id", "account_score", "attachment", "strength")
    )
    evidence = evidence.with_columns(pl.col(pl.Float64).round(6))
    return ScoredRings(
        rings,
        ring_members,
        evidence.join(rings.select("ring_id"), on="ring_id")
        .sort("ring_id", "value_total", "entity", descending=[False, True, False])
        .select("ring_id", "entity", "type", "label", "members", "degree", "value", "value_total", "shared_by"),
        _alone(risk, prior, _ties_outside(detection, members, strength, rings, links_into_rings)),
        threshold,
    )


def shrunk_ring_risk(
    members: pl.DataFrame, risk: pl.DataFrame, billed: pl.DataFrame, prior: float, prior_members: float
) -> pl.DataFrame:
    """``ring_id, score``: the mean ``risk`` of each ring's members, shrunk towards ``prior`` by
    ``prior_members`` pseudo-customers. The mean of a few customers is noisy: a ring of three needs
    to be risky throughout, a ring of fifty barely moves, and the seats of one org billed as one (one
    customer, :func:`ring_customers`) move it little."""
    means = (
        members.join(risk.select("account_id", "risk"), on="account_id", how="left")
        .group_by("ring_id")
        .agg(pl.col("risk").fill_null(0.0).mean().alias("mean"))
    )
    return (
        ring_customers(members, billed)
        .join(means, on="ring_id")
        .select(
            "ring_id",
            (
                (pl.col("mean") * pl.col("customers") + prior_members * prior) / (pl.col("customers") + prior_members)
            ).alias("score"),
        )
    )


def content_risk(risk: pl.DataFrame) -> pl.DataFrame | None:
    """``account_id, risk``: the mean of the :data:`CONTENT_FEATURES` percentiles alone; None where the
    run has no other feature to leave out (the reading would be the risk itself)."""
    content = [f for f in CONTENT_FEATURES if f in risk.columns]
    if not content or all(f in content for f in RISK_FEATURES if f in risk.columns):
        return None
    return risk.select("account_id", pl.mean_horizontal(content).alias("risk"))


def raised_by_content(
    ring_risk: pl.DataFrame, ring_content: pl.DataFrame, content_cut: float, threshold: float
) -> pl.DataFrame:
    """``ring_risk`` with each ring's score raised to what its content reading says, on the score's own
    scale: a ring ``x`` over the content reading's cut scores ``x`` over ``threshold``. A ring's score
    is never lowered; ``content_reading`` says where the reading decided it."""
    raised = ring_risk.join(ring_content.select("ring_id", pl.col("score").alias("content")), on="ring_id", how="left")
    lifted = pl.col("content") - content_cut + threshold
    return raised.with_columns(
        pl.max_horizontal("score", lifted.fill_null(0.0)).alias("score"),
        (pl.col("content_reading") | (lifted.fill_null(0.0) > pl.col("score")).fill_null(False)).alias(
            "content_reading"
        ),
    ).drop("content")


def _with_content_reading(
    members: pl.DataFrame,
    customers: pl.DataFrame,
    billed: pl.DataFrame,
    risk: pl.DataFrame,
    ring_risk: pl.DataFrame,
    ring_alike: pl.DataFrame,
    lockstep: pl.DataFrame,
    threshold: float,
    settings: ScoreSettings,
) -> pl.DataFrame:
    """A second reading of each ring, on what its members are and ask for alone (``score.content_reading``).

    An operation can buy clean infrastructure per account (a static residential address, its own
    card and client fingerprint each); its members' risk then loses the part that says how their
    traffic arrives, and what is left is what they came for. Read alone, that is also the risk of
    customers who ask for the same things (agent builders on one open-source client, a class on
    one problem set), so its excess counts only in proportion to the confidence that the ring keeps
    one clock, ``1 − e^(−lockstep)`` (``lockstep``: :func:`_lockstep` of the round): a scheduler's
    accounts take turns, customers keep their own hours. The reading has its own cut, calibrated on
    the run as the risk's is (:func:`flag_cut`), and can raise a ring, never lower it. Where big
    rings' per-link lockstep is diluted (incident scale, 0.5–1 nats) it adds little and the full
    reading stands."""
    content = content_risk(risk)
    if content is None:
        return ring_risk
    background = background_risk(content, members.select("account_id"), customers)
    prior = float(background.mean()) if background.len() else 0.5
    ring_content = shrunk_ring_risk(members, content, billed, prior, settings.prior_members)
    if settings.alike_reference_share is not None:
        ring_content = weigh_by_alike(ring_content, ring_alike, prior, settings.alike_reference_share)
    ring_content = _weigh_by_timing(ring_content, lockstep, prior)
    content_cut = flag_cut(content, members, customers, ring_content, background, settings.flag_background_share)
    return raised_by_content(ring_risk, ring_content, content_cut, threshold)


def ring_customers(members: pl.DataFrame, billed: pl.DataFrame) -> pl.DataFrame:
    """``ring_id, customers``: how many customers a ring's members are, the seats of an org billed as
    one counting once (``billed``: :func:`~linkage.detect.one_customer_orgs`)."""
    return (
        members.select("ring_id", "account_id")
        .join(billed, on="account_id", how="left")
        .group_by("ring_id")
        .agg(pl.coalesce("org_id", "account_id").n_unique().alias("customers"))
    )


def bystanders(
    strength: pl.DataFrame,
    risk: pl.DataFrame,
    ring_risk: pl.DataFrame,
    threshold: float,
    level: float = 0.05,
    core_size: int | None = None,
    clock_share: float | None = ScoreSettings.model_fields["bystander_clock_share"].default,
    clocked_cores_only: bool = False,
    off_clock: bool = False,
    loose_off_clock: bool = False,
    declared: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Members of flagged rings that are there by what they share, not by what they do: tied to the
    ring more loosely than its median member, and by their own behaviour not risky enough to be
    flagged (their risk under the run's flag cut). Users of the open-source client or popular
    template an operation also runs link to it through that tooling and land in its community;
    the operation's own accounts are tied more tightly or act like it.

    Only in a ring whose tame members are its loosely tied ones (:func:`tame_members_looser`, at
    ``level``): half of any ring is tied below its median, and in a ring that is one operation
    throughout how tightly a member is tied says nothing of how it acts, so its tamest members are
    the operation's too, not visitors. ``clock_share``: nor in a ring whose tame members keep its
    clock (:func:`on_the_rings_clock`): an operation's tamest accounts still run on its scheduler,
    visitors keep their own hours.

    ``core_size``: visitors can also drag a ring under the cut (benign VPN users on the exits an
    operation rotates through, once nothing marks those exits as VPN). A ring under the cut with at
    least this many members over it is tested too, but there a false alarm would flag a ring, so
    the level is divided by the number of such rings tested (Bonferroni) and a ring too small to
    decide is left whole. None: flagged rings only. ``clocked_cores_only``: of the rings under the cut,
    only those whose core keeps one clock: its members' median lockstep per link inside the ring at
    least ``−ln(level)`` nats, so that timing alone would be a coincidence less often than ``level``.
    An operation diluted by visitors still runs its accounts on its scheduler (world B's campaign a
    among hosted apps on its cloud's egress: 9–11 nats); the benign cores that opening every ring
    under the cut flagged on world B keep none (0–0.8 nats a link on seeds 7, 115, 165, 170), nor do
    classes of students (0.6–1.1) or an org's nightly batch (0.96). ``off_clock``: in flagged rings,
    also the tame members who keep their own hours while the core keeps one clock, however tightly
    tied (:func:`off_the_rings_clock`; needs ``clock_share``). ``loose_off_clock``: in rings under
    the cut whose core keeps one clock, also the members off it and tied more loosely than those on
    it, however risky (:func:`loose_off_the_rings_clock`; needs ``clock_share``); ``declared``:
    ``account_id, org_id`` as declared, so that an org's own clock is left alone.

    Returns ``account_id`` of each."""
    flagged = ring_risk.filter(pl.col("score") >= threshold).select("ring_id")
    every_ring = strength.join(risk.select("account_id", "risk"), on="account_id", how="left").with_columns(
        pl.col("risk").fill_null(0.0)
    )
    members = every_ring if core_size is not None else every_ring.join(flagged, on="ring_id")
    loose_and_tame = (pl.col("attachment") < 1.0) & (pl.col("risk") < threshold)
    in_flagged = members.join(flagged, on="ring_id")
    # only rings with someone to move are tested (at incident scale most flagged rings have no one)
    mixed = tame_members_looser(_with_candidates(in_flagged, loose_and_tame), threshold, level, clock_share=clock_share)
    if core_size is not None:
        under = members.join(flagged, on="ring_id", how="anti")
        cores = _cores_under_cut(
            under, threshold, core_size, _clock_beyond_chance(level) if clocked_cores_only else None
        )
        under = _with_candidates(under.join(cores, on="ring_id"), loose_and_tame)
        rings_under = under["ring_id"].n_unique()
        if rings_under:
            mixed = pl.concat(
                [
                    mixed,
                    tame_members_looser(
                        under, threshold, level / rings_under, undecided_mixed=False, clock_share=clock_share
                    ),
                ]
            )
    movers = members.join(mixed, on="ring_id").filter(loose_and_tame).select("account_id")
    if clock_share is not None and off_clock and "timing" in members.columns:
        movers = pl.concat([movers, off_the_rings_clock(in_flagged, threshold, level, clock_share)]).unique()
    if clock_share is not None and loose_off_clock and "timing" in strength.columns:
        under_cut = every_ring.join(flagged, on="ring_id", how="anti")
        if declared is not None:
            under_cut = under_cut.join(declared.select("account_id", "org_id"), on="account_id", how="left")
        movers = pl.concat([movers, loose_off_the_rings_clock(under_cut, threshold, level, clock_share)]).unique()
    return movers


def loose_off_the_rings_clock(members: pl.DataFrame, threshold: float, level: float, share: float) -> pl.DataFrame:
    """``account_id`` of the members, risky or tame, of the rings given whose core (the members
    over ``threshold``) keeps one clock beyond chance, who keep their own hours (under ``share`` of
    the core's median lockstep, :func:`_clock_of`) and are tied to the ring more loosely than the
    median member on its clock, where the ring's members off its clock are tied to it more loosely
    than those on it (one-sided Mann–Whitney on ``strength``, at ``level`` divided by the number of
    rings tested). Not the ring's median member: visitors can be half a ring.

    Individuals on the datacenter network an operation rents from can be as risky as its accounts by
    their own readings (datacenter egress, volume), so a split by risk keeps them; but they neither
    keep the operation's clock nor share what its accounts share (world B 1352: nine visitors at
    attachment 0.03–0.23 and 0–2.4 nats of lockstep a link, the operation's twelve at 0.94–1.00 and
    10.6–20.1 nats, the ring 0.617 under a cut of 0.619). Two readings, hours and ties, must agree.
    Nor where half the clock's keepers declared one org (``org_id``, when given; billed as one or
    not): an org's seats on its nightly batch keep their own clock, and its other seats and
    neighbours are no operation's visitors (world B 104 and 4004: with them gone, an org's five and
    seven seats, paying seat by seat, came over the cut). An operation that declares one org for
    its accounts only keeps the rules that held before this one."""
    clock = _clock_of(members, threshold)
    cores = (
        members.filter(pl.col("risk") >= threshold)
        .group_by("ring_id")
        .agg(clock.median().alias("core"))
        .filter(pl.col("core") >= _clock_beyond_chance(level))
    )
    timed = members.join(cores, on="ring_id").with_columns((clock < share * pl.col("core")).alias("off"))
    customer = pl.coalesce("org_id", "account_id") if "org_id" in members.columns else pl.col("account_id")
    grouped = (
        timed.group_by("ring_id")
        .agg(
            pl.col("strength").filter(pl.col("off")).alias("off_clock"),
            pl.col("strength").filter(~pl.col("off")).alias("on_clock"),
            # the share of the clock's keepers that its largest customer holds
            (customer.filter(~pl.col("off")).unique_counts().max() / (~pl.col("off")).sum()).alias("one_customer"),
        )
        .filter(
            (pl.col("off_clock").list.len() > 0) & (pl.col("on_clock").list.len() > 0) & (pl.col("one_customer") < 0.5)
        )
        .sort("ring_id")
    )
    if grouped.height == 0:
        return pl.DataFrame(schema={"account_id": pl.Utf8})
    each = level / grouped.height
    apart = [
        _tends_lower(off, on, each) for off, on in zip(grouped["off_clock"].to_list(), grouped["on_clock"].to_list())
    ]
    rings = grouped.filter(pl.Series(apart, dtype=pl.Boolean)).select(
        "ring_id", pl.col("on_clock").list.median().alias("on_clock_median")
    )
    return (
        timed.join(rings, on="ring_id")
        .filter(pl.col("off") & (pl.col("strength") < pl.col("on_clock_median")))
        .select("account_id")
    )


def off_the_rings_clock(members: pl.DataFrame, threshold: float, level: float, share: float) -> pl.DataFrame:
    """``account_id`` of the tame members (risk under ``threshold``) of rings whose core (the members
    over it) keeps one clock while they keep their own hours.

    A ring's core keeps a clock when its median lockstep per link inside the ring reaches
    ``−ln(level)`` nats (timing alone a coincidence less often than ``level``); its tame members keep
    their own hours when their lockstep tends lower than the core's (one-sided Mann–Whitney at
    ``level``). Those of them under ``share`` of the core's median are visitors however tightly they
    share its tooling: users of an open-source agent client whose scaffolds and fingerprint an
    operation reuses are tied to its ring like its workers (world B: attachment 0.4–1.0), but their
    links carry 0–1.2 nats of lockstep against the workers' 7.5."""
    grouped = (
        _tame_and_risky(members, threshold, {"": _clock_of(members, threshold)})
        .with_columns(pl.col("risky").list.median().alias("core"))
        .filter(pl.col("core") >= _clock_beyond_chance(level))
    )
    if grouped.height == 0:
        return pl.DataFrame(schema={"account_id": pl.Utf8})
    off = [
        _tends_lower(tame, risky, level) for tame, risky in zip(grouped["tame"].to_list(), grouped["risky"].to_list())
    ]
    rings = grouped.filter(pl.Series(off, dtype=pl.Boolean)).select("ring_id", "core")
    return (
        members.join(rings, on="ring_id")
        .filter((pl.col("risk") < threshold) & (_clock_of(members, threshold) < share * pl.col("core")))
        .select("account_id")
    )


def _clock_of(members: pl.DataFrame, threshold: float) -> pl.Expr:
    """A member's lockstep per link: a tame member's with the ring's risky members (``core_timing``,
    where known), a risky member's with the whole ring (``timing``). Visitors that keep a clock of
    their own (an org's seats on its nightly batch) are tied to each other by it, not to the ring."""
    if "core_timing" not in members.columns:
        return pl.col("timing")
    return pl.when(pl.col("risk") < threshold).then(pl.col("core_timing")).otherwise(pl.col("timing"))


def _with_core_timing(
    detection: Detection,
    members: pl.DataFrame,
    strength: pl.DataFrame,
    risk: pl.DataFrame,
    threshold: float,
    links: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """``strength`` (:func:`_internal_strength`'s, which carries each member's ``idx``) with
    ``core_timing``: each member's mean lockstep per link over its kept links to members of its ring
    at or over ``threshold`` on their own (0 where it has none). ``links``: the rings' links
    (:func:`_in_ring_links`), when already known."""
    core = (
        members.select("idx", "account_id")
        .join(risk.select("account_id", "risk"), on="account_id")
        .filter(pl.col("risk") >= threshold)["idx"]
        .to_numpy()
        .astype(np.int64)
    )
    links = _in_ring_links(detection, members) if links is None else links
    a, b = links["a"].to_numpy().astype(np.int64), links["b"].to_numpy().astype(np.int64)
    activity = links["activity"].to_numpy()
    size = int(max(a.max(initial=-1), b.max(initial=-1), core.max(initial=-1))) + 1
    is_core = np.zeros(size, bool)
    is_core[core] = True
    # each end's links whose other end is in the core
    count, summed = _sums_by_account(
        np.concatenate([a[is_core[b]], b[is_core[a]]]),
        size,
        np.concatenate([activity[is_core[b]], activity[is_core[a]]]),
    )
    timed = np.flatnonzero(count)
    to_core = pl.DataFrame(
        {"idx": pl.Series(timed).cast(members["idx"].dtype), "core_timing": summed[timed] / count[timed]}
    )
    return strength.join(to_core, on="idx", how="left").with_columns(pl.col("core_timing").fill_null(0.0)).drop("idx")


def _tame_and_risky(members: pl.DataFrame, threshold: float, values: dict[str, pl.Expr]) -> pl.DataFrame:
    """Per ring with members on both sides of ``threshold`` (``risk``), sorted by ring: each of
    ``values`` as two lists, ``tame<suffix>`` (members under it) and ``risky<suffix>``."""
    tame = pl.col("risk") < threshold
    return (
        members.group_by("ring_id")
        .agg(
            *[value.filter(tame).alias(f"tame{suffix}") for suffix, value in values.items()],
            *[value.filter(~tame).alias(f"risky{suffix}") for suffix, value in values.items()],
        )
        .filter((pl.col("tame").list.len() > 0) & (pl.col("risky").list.len() > 0))
        .sort("ring_id")
    )


def _clock_beyond_chance(level: float) -> float:
    """The lockstep per link (nats) past which timing alone is a coincidence less often than ``level``."""
    return -math.log(level)


def _cores_under_cut(members: pl.DataFrame, threshold: float, size: int, min_timing: float | None) -> pl.DataFrame:
    """``ring_id`` of the rings with at least ``size`` members over the cut whose median lockstep per
    link inside the ring (``timing``; none: 0) reaches ``min_timing`` nats (None: any)."""
    timing = pl.col("timing") if "timing" in members.columns else pl.lit(0.0)
    cores = (
        members.filter(pl.col("risk") >= threshold).group_by("ring_id").agg(pl.len(), timing.median().alias("timing"))
    )
    keep = pl.col("len") >= size
    if min_timing is not None:
        keep &= pl.col("timing") >= min_timing
    return cores.filter(keep).select("ring_id")


def _test_under_cut(settings: ScoreSettings, risk: pl.DataFrame) -> bool:
    """Whether rings under the cut are tested for bystanders (``score.bystanders_under_cut``; by default
    where the run cannot tell proxy, VPN and datacenter exits from other addresses)."""
    if settings.bystanders_under_cut is not None:
        return settings.bystanders_under_cut
    return "proxy_share" not in risk.columns


def _with_candidates(members: pl.DataFrame, candidate: pl.Expr) -> pl.DataFrame:
    """The members of the rings that have at least one ``candidate`` member."""
    return members.join(members.filter(candidate).select("ring_id").unique(), on="ring_id")


def tame_members_looser(
    members: pl.DataFrame,
    threshold: float,
    level: float,
    undecided_mixed: bool = True,
    clock_share: float | None = None,
) -> pl.DataFrame:
    """``ring_id`` of the rings whose tame members (``risk`` under ``threshold``) are tied to the ring
    more loosely (``strength``) than its risky ones: a one-sided Mann–Whitney test per ring, p-value
    at most ``level``.

    Visitors (users of the tooling an operation runs) are both looser and tamer than its accounts,
    however few they are; in a pure operation whose mean risk sits near the cut, half its members
    are under the cut, tied like the rest. Not corrected for the number of rings tested: a ring
    wrongly found mixed only loses its loose, tame members, as every flagged ring did before the
    test; nor can it spare a ring too small for it to decide (``undecided_mixed``: such a ring
    counts as mixed).

    ``clock_share`` (needs ``timing``, and ``core_timing`` where known, see :func:`_clock_of`; None: off): a ring
    whose tame members keep its clock (:func:`on_the_rings_clock`) is not mixed, however loosely
    they share its infrastructure."""
    timing = _clock_of(members, threshold) if clock_share is not None and "timing" in members.columns else pl.lit(0.0)
    grouped = _tame_and_risky(members, threshold, {"": pl.col("strength"), "_timing": timing})
    if grouped.height == 0:
        return grouped.select("ring_id")
    # a loop over rings, not members. Where the test could not reach ``level`` whatever the ties (one
    # tame member among fewer than 1/level: a small ring with a visitor), it is not run: such a ring
    # is mixed if ``undecided_mixed`` (the rule applies as before the test), else it is not
    mixed = [
        _tends_lower(tame, risky, level)
        and not (clock_share is not None and on_the_rings_clock(tame_t, risky_t, clock_share))
        if _decidable(len(tame), len(risky), level)
        else undecided_mixed
        for tame, risky, tame_t, risky_t in zip(
            grouped["tame"].to_list(),
            grouped["risky"].to_list(),
            grouped["tame_timing"].to_list(),
            grouped["risky_timing"].to_list(),
        )
    ]
    return grouped.filter(pl.Series(mixed, dtype=pl.Boolean)).select("ring_id")


def on_the_rings_clock(tame: list[float], risky: list[float], share: float) -> bool:
    """Whether a ring's tame members keep its risky members' clock: the median tame member's lockstep
    per link inside the ring reaches ``share`` of the median risky member's, and that is beyond
    chance. A careful operation's tamest accounts share less with it (more camouflage, fewer of its
    scaffolds) but run on its scheduler: on world B's campaign d both medians are 2.4–4.4 nats per
    link. Users of the tooling an operation runs keep their own hours: 0–0.4 against 6–8 on every
    ring of visitors measured (a ratio of 0.07 at most). A ring whose risky members' links carry no
    more lockstep than chance (:data:`CHANCE_SURPRISAL`: classes of students 0.6–0.7, one at 1.1; a
    declared org's nightly batch 0.96; every campaign ring measured 2.4 and more; at incident scale
    most of a large fleet's small rings, whose pairs rarely meet) vouches for nobody.

    Parameters
    ----------
    tame, risky : each member's mean lockstep surprisal per link (nats): a tame member's over its
        links to the ring's risky members (``core_timing``), a risky member's over all its links
        inside the ring (``timing``); see :func:`_clock_of`.
    share : the fraction of the risky median the tame median must reach.

    Returns
    -------
    True where timing vouches for the tame members."""
    if not tame or not risky:
        return False
    core = float(np.median(risky))
    return core > CHANCE_SURPRISAL and float(np.median(tame)) >= share * core


def _tends_lower(lower: list[float], higher: list[float], level: float) -> bool:
    """Whether ``lower`` tends lower than ``higher`` at ``level`` (one-sided Mann–Whitney), where the
    test can reach ``level`` at all (:func:`_decidable`)."""
    return _decidable(len(lower), len(higher), level) and mann_whitney_less(np.array(lower), np.array(higher)) <= level


def _decidable(tame: int, risky: int, level: float) -> bool:
    """Whether the rank test's smallest p-value, 1 / C(tame + risky, tame), can reach ``level``. In
    logs (a float cannot hold the count for a ring of a thousand), with a hair of tolerance: lgamma
    puts ln C(20, 1) a rounding error under ln 20, and a count of exactly 1 / level is decidable."""
    arrangements = math.lgamma(tame + risky + 1) - math.lgamma(tame + 1) - math.lgamma(risky + 1)
    return arrangements >= -math.log(level) - 1e-9


def _bystander_columns(members: pl.DataFrame, detached: pl.DataFrame | None) -> pl.DataFrame:
    """Per ring: ``detached``, how many bystanders left it, and ``bystanders_of``, for a ring of
    bystanders, the ring they left (null otherwise)."""
    rings = members.select("community", "ring_id").unique()
    if detached is None or detached.height == 0:
        return rings.select(
            "ring_id", pl.lit(0, pl.UInt32).alias("detached"), pl.lit(None, pl.Utf8).alias("bystanders_of")
        )
    counts = detached.group_by("community").agg(pl.len().alias("detached"))
    sources = (
        detached.select("community", "bystander_community")
        .unique()
        .join(rings.rename({"ring_id": "bystanders_of"}), on="community")
        .select(pl.col("bystander_community").alias("community"), "bystanders_of")
    )
    return (
        rings.join(counts, on="community", how="left")
        .join(sources, on="community", how="left")
        .select("ring_id", pl.col("detached").fill_null(0), "bystanders_of")
    )


def _bystanders_apart(detection: Detection, detached: pl.DataFrame, min_ring_size: int) -> Detection:
    """The detection with the bystanders of each ring moved into a community of their own (they are
    linked, to the ring and mostly to each other, by what they share; they rank as a group under
    the cut), and communities left too small dissolved."""
    moved = detached.select("account_id", "bystander_community")
    communities = (
        detection.communities.join(moved, on="account_id", how="left")
        .with_columns(pl.coalesce("bystander_community", "community").alias("community"))
        .drop("bystander_community")
    )
    sizes = communities.group_by("community").len()
    kept = communities.join(sizes.filter(pl.col("len") >= min_ring_size), on="community").drop("len")
    return dataclasses.replace(detection, communities=kept)


def _alone(risk: pl.DataFrame, background_mean: float | None, ties: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per account: its risk, and its score outside any ring — the members' rule (the mean of the
    ring's score and the account's own risk) with the ring at the background's mean, so that an
    operation's account that missed its ring still ranks above ordinary customers. An account tied
    beyond chance to a ring it is not in (``ties``: ``account_id, ring_score, tie``, the tie as a
    share of the ring's median member's, at most 1) counts that ring in by its tie: a tie like a
    member's scores like a member, none like the background."""
    mean = float(risk["risk"].mean() or 0.0) if background_mean is None else background_mean
    alone = risk.select("account_id", "risk")
    context = pl.lit(mean)
    if ties is not None and ties.height:
        best = ties.group_by("account_id").agg(
            (pl.col("tie") * pl.col("ring_score") + (1 - pl.col("tie")) * mean).max().alias("context")
        )
        alone = alone.join(best, on="account_id", how="left")
        context = pl.max_horizontal(pl.col("context").fill_null(mean), pl.lit(mean))
    return alone.select("account_id", "risk", ((pl.col("risk") + context) / 2).round(6).alias("alone_score"))


def _ties_outside(
    detection: Detection,
    members: pl.DataFrame,
    strength: pl.DataFrame,
    rings: pl.DataFrame,
    into: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """``account_id, ring_id, ring_score, tie``: accounts in no ring with kept links into a ring, their
    summed link weight into it as a share of its median member's strength (at most 1). ``into``:
    :func:`_links_into_rings`, when already known."""
    into = _links_into_rings(detection, members) if into is None else into
    median = strength.group_by("ring_id").agg(pl.col("strength").median().alias("median"))
    return (
        into.join(median, on="ring_id")
        .join(rings.select("ring_id", pl.col("score").alias("ring_score")), on="ring_id")
        .join(detection.accounts.select(pl.col("idx").alias("outside"), "account_id"), on="outside")
        .select(
            "account_id",
            "ring_id",
            "ring_score",
            (pl.col("weight") / pl.col("median")).clip(0, 1).fill_nan(0.0).alias("tie"),
        )
    )


def _links_into_rings(detection: Detection, members: pl.DataFrame) -> pl.DataFrame:
    """``outside, ring_id, weight``: per account in no ring (its index) and ring, the summed weight of
    its kept links into the ring."""
    ring_of = members.select("idx", "ring_id")
    ends = pl.concat(
        [
            detection.pairs.select(pl.col("a").alias("outside"), pl.col("b").alias("idx"), "weight"),
            detection.pairs.select(pl.col("b").alias("outside"), pl.col("a").alias("idx"), "weight"),
        ]
    )
    return (
        ends.join(ring_of, on="idx")
        .join(ring_of.select(pl.col("idx").alias("outside")), on="outside", how="anti")
        .group_by("outside", "ring_id")
        .agg(pl.col("weight").sum().alias("weight"))
    )


def account_risk(graph: Graph) -> pl.DataFrame:
    """Per account: each available risk feature as its percentile in this run, and ``risk``, their mean."""
    accounts = graph.nodes["Account"]
    addresses = graph.rels["USED_IP"].group_by(pl.col("src").alias("account_id")).agg(pl.len().alias("addresses"))
    templated = (
        graph.rels["SENT_TEMPLATE"]
        .group_by(pl.col("src").alias("account_id"))
        .agg(pl.col("count").sum().alias("templated"))
    )
    frame = accounts.join(addresses, on="account_id", how="left").join(templated, on="account_id", how="left")
    requests = pl.col("requests").cast(pl.Float64).clip(1, None)
    sampled = pl.col("sampled_prompts").cast(pl.Float64).clip(1, None)
    values = frame.select(
        "account_id",
        (pl.col("proxy_requests") / requests).alias("proxy_share"),
        pl.col("created_at").dt.epoch("s").cast(pl.Float64).alias("recency"),
        (pl.col("addresses").fill_null(0) / requests).alias("address_spread"),
        (pl.col("templated").fill_null(0) / sampled).alias("scaffold_share"),
        (pl.col("reasoning_requests") / sampled).alias("reasoning_share"),
        (pl.col("output_tokens").fill_null(0) / requests).alias("output_per_request"),
        (pl.col("input_tokens").fill_null(0) / requests).alias("input_per_request"),
        pl.col("requests").cast(pl.Float64).alias("volume"),
    )
    available = [name for name in RISK_FEATURES if values[name].drop_nulls().n_unique() > 1]
    if not available:
        return values.select("account_id", pl.lit(0.0).alias("risk"))
    percentiles = values.select(
        "account_id",
        *[(pl.col(name).fill_null(pl.col(name).min()).rank("average") / pl.len()).alias(name) for name in available],
    )
    return percentiles.with_columns(pl.mean_horizontal(available).alias("risk"))


def customer_ranks(accounts: pl.DataFrame) -> pl.DataFrame:
    """``account_id, customer``: each account's customer (its declared org, else itself) as a rank in
    the customers' text order, so that the background's readings, four a round of scoring, group
    and sort on an integer instead of on 200k texts each."""
    return accounts.select(
        "account_id", pl.coalesce("org_id", "account_id").rank("dense").cast(pl.UInt32).alias("customer")
    )


def background_risk(risk: pl.DataFrame, excluded: pl.DataFrame, customers: pl.DataFrame) -> pl.Series:
    """The risk of every customer but the ``excluded`` accounts, a declared org counted once (the
    mean of its seats): seats of one org behave alike, and forty of them would otherwise decide
    the background's tail by themselves. ``customers``: :func:`customer_ranks`; the risks come in
    the customers' text order."""
    rest = risk.join(excluded, on="account_id", how="anti").join(customers, on="account_id", how="left")
    return rest.group_by("customer").agg(pl.col("risk").mean()).sort("customer")["risk"]


def flag_cut(
    risk: pl.DataFrame,
    members: pl.DataFrame,
    customers: pl.DataFrame,
    ring_risk: pl.DataFrame,
    unlinked: pl.Series,
    share: float,
) -> float:
    """The ring score to flag at: the risk only ``share`` of ordinary customers reach, taking the
    lower of two readings of "ordinary". The customers no ring holds are one; but where most
    customers are in some ring (at incident scale four in five are, mostly in small benign ones)
    those left over are a biased sample, topped by the campaign accounts that missed their ring.
    The other is every customer outside the rings that already stand out against the first."""
    if unlinked.len() == 0:
        return 1.0
    first = _quantile(unlinked, 1 - share)
    standing_out = ring_risk.filter(pl.col("score") >= first).select("ring_id")
    excluded = members.join(standing_out, on="ring_id").select("account_id")
    return min(first, _quantile(background_risk(risk, excluded, customers), 1 - share))


def _quantile(values: pl.Series, q: float) -> float:
    return float(np.quantile(values.to_numpy(), q)) if values.len() else 1.0


def _background_percentile(background: pl.Series, score: pl.Expr) -> pl.Expr:
    """Share of background accounts whose risk is below ``score``."""
    ordered = np.sort(background.to_numpy())
    if len(ordered) == 0:
        return pl.lit(1.0)
    return score.map_batches(
        lambda s: pl.Series(np.searchsorted(ordered, s.to_numpy(), side="left") / len(ordered)), return_dtype=pl.Float64
    )


def _empty_rings() -> pl.DataFrame:
    schema = {
        "ring_id": pl.Utf8,
        "score": pl.Float64,
        "size": pl.Int64,
        "flagged": pl.Boolean,
        "background_percentile": pl.Float64,
        "alike": pl.Float64,
        "content_reading": pl.Boolean,
    }
    schema |= {name: pl.Float64 for name in COORDINATION_FEATURES}
    schema |= {
        "org_explained": pl.Float64,
        "org_id": pl.Utf8,
        "institution": pl.Utf8,
        "institution_share": pl.Float64,
        "detached": pl.UInt32,
        "bystanders_of": pl.Utf8,
        "requests": pl.Int64,
        "evidence": pl.Utf8,
    }
    return pl.DataFrame(schema=schema)


def _empty_evidence() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "ring_id": pl.Utf8,
            "entity": pl.Utf8,
            "type": pl.Utf8,
            "members": pl.UInt32,
            "degree": pl.UInt32,
            "value": pl.Float64,
            "value_total": pl.Float64,
            "shared_by": pl.List(pl.Utf8),
            "label": pl.Utf8,
        }
    )


def _sums_by_account(ends: np.ndarray, size: int, *values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per account index ``0..size-1``: how often it is among ``ends`` (link ends), then the sum of each
    of ``values`` (one per end) over those ends. One bincount pass each, where stacking both ends of
    millions of links and grouping them took 0.3-0.5 s a round of scoring."""
    return np.bincount(ends, minlength=size), *(np.bincount(ends, weights=v, minlength=size) for v in values)


def _internal_strength(detection: Detection, members: pl.DataFrame, links: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per member: summed weight of kept links inside its ring (``strength``), the mean lockstep
    surprisal of those links (``timing``, nats per link), and attachment relative to the ring median.
    ``links``: the rings' links (:func:`_in_ring_links`), when already known."""
    edges = _in_ring_links(detection, members) if links is None else links
    idx = members["idx"].to_numpy().astype(np.int64)
    ends = np.concatenate([edges["a"].to_numpy(), edges["b"].to_numpy()]).astype(np.int64)
    size = int(max(ends.max(initial=-1), idx.max(initial=-1))) + 1
    count, weight, activity = _sums_by_account(
        ends, size, *(np.tile(edges[c].to_numpy(), 2) for c in ("weight", "activity"))
    )
    out = members.select("idx", "account_id", "ring_id").with_columns(
        pl.Series("strength", weight[idx]), pl.Series("timing", activity[idx] / np.maximum(count[idx], 1))
    )
    return out.with_columns(
        (pl.col("strength") / pl.col("strength").median().over("ring_id"))
        .clip(0, 1)
        .fill_nan(0.0)
        .round(4)
        .alias("attachment"),
        pl.col("strength").round(6),
        pl.col("timing").round(6),
    )


# What an account holder controls: sharing one is being paid for by the same hands (an exit address
# or a client build can be shared by strangers; a card is not, unless given)
_CONTROLLED_TYPES = ["PaymentInstrument"]


def paid_by_the_ring(detection: Detection, members: pl.DataFrame) -> pl.DataFrame:
    """Accounts in no ring that pay with an instrument most of whose holders are ring members: they
    join the ring that holds most of their instruments (``idx, account_id, community, ring_id``),
    after its score is settled.

    An operation's accounts that send nothing, or too little to link, still show who pays for them:
    world B's campaign c gives one card to ~25 accounts, and at scale 0.01 5–15 of its accounts send
    no request in the log (created before it). A card of 27 holders is worth 7.8 nats between two of
    them against a link threshold of 10.4 (a card of that degree is met by chance), so an account
    with nothing else to share never links; but the card's other holders are in the operation's
    rings (its fleets: three rings share each of its cards). "Most" is more than half of all its
    holders, the joining account included; ties between rings go to the lower ring id."""
    held = detection.memberships.filter(pl.col("type").is_in(_CONTROLLED_TYPES)).select(
        "idx", "account_id", "entity_key", "degree"
    )
    ring_by_idx = members.select("idx", "community", "ring_id")
    holders = held.join(ring_by_idx, on="idx").group_by("entity_key", "community", "ring_id", "degree").len()
    owned = holders.filter(2 * pl.col("len").sum().over("entity_key") > pl.col("degree"))
    outside = held.join(ring_by_idx, on="idx", how="anti")
    joined = (
        outside.join(owned.select("entity_key", "community", "ring_id", "len"), on="entity_key")
        .group_by("idx", "account_id", "community", "ring_id")
        .agg(pl.col("len").sum())
        .sort(["idx", "len", "ring_id"], descending=[False, True, False])
        .unique("idx", keep="first")
    )
    return joined.select(
        pl.col("idx").cast(members.schema["idx"]),
        pl.col("account_id").cast(members.schema["account_id"]),
        pl.col("community").cast(members.schema["community"]),
        pl.col("ring_id").cast(members.schema["ring_id"]),
    )


def _coordination(strength: pl.DataFrame) -> pl.DataFrame:
    """The median member's summed link surprisal inside its ring (nats)."""
    return strength.group_by("ring_id").agg(pl.col("strength").median().alias("coordination"))


def _shared_entities(detection: Detection, members: pl.DataFrame) -> pl.DataFrame:
    """Entities shared by at least two members of a ring, with how many members and accounts share each.

    Worked on arrays: the memberships come in entity order, members by account id within an entity
    (:func:`~linkage.detect.memberships`), so one stable sort by (ring, entity) lays each ring's holders
    of an entity side by side in id order, and only the entities that two members share have their
    texts gathered. At incident scale this is 6 M memberships: 1.2-1.6 s, where polars' two-key group-bys took 2.0-2.9 s."""
    held = in_entity_order(detection.memberships)
    idx = held["idx"].to_numpy()
    # an account is in one ring at most (rings partition; paid members come from outside every ring)
    ring_of = np.full(detection.accounts.height, -1, np.int64)
    ring_of[members["idx"].to_numpy()] = members["community"].to_numpy()
    community = ring_of[idx]
    rows = np.flatnonzero(community >= 0)
    key = held["entity_key"].to_numpy()
    entity = np.cumsum(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
    n_entities = int(entity[-1]) + 1 if len(entity) else 1
    group = community[rows] * n_entities + entity[rows]
    order = stable_order(group)
    rows, group = rows[order], group[order]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]]) if len(rows) else np.zeros(0, np.int64)
    sizes = np.diff(np.append(starts, len(rows)))
    shared = sizes >= 2
    starts, sizes = starts[shared], sizes[shared]
    in_shared = np.repeat(starts, sizes) + _ranks_within(sizes)
    first = rows[starts]
    ring_id = members.select("community", "ring_id").unique("community").sort("community")
    ring_code = np.searchsorted(ring_id["community"].to_numpy(), community[first])
    value = held["value"].to_numpy()[rows[in_shared]]
    offsets = np.r_[0, np.cumsum(sizes)]
    shared_by = pa.LargeListArray.from_arrays(
        pa.array(offsets, pa.int64()), held["account_id"].gather(rows[in_shared]).to_arrow()
    )
    return pl.DataFrame(
        {
            "ring_id": ring_id["ring_id"].gather(ring_code),
            "entity": held["entity"].gather(first),
            "type": held["type"].gather(first),
            "members": pl.Series(sizes, dtype=pl.UInt32),
            "degree": held["degree"].gather(first),
            # what it is worth between two members: a hub's worth is the lower of its two holders',
            # and only an owned build's workers hold it at more (detect.valued_as_owned)
            "value": _second_largest(value, offsets),
            "shared_by": pl.from_arrow(shared_by),
        }
    ).with_columns((pl.col("value") * (pl.col("members") - 1)).alias("value_total"))


def _ranks_within(sizes: np.ndarray) -> np.ndarray:
    """0, 1, … size-1 for each group in turn."""
    ends = np.cumsum(sizes)
    return np.arange(int(ends[-1]) if len(ends) else 0) - np.repeat(ends - sizes, sizes)


def _second_largest(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per group of ``values`` (``offsets[i]:offsets[i+1]``, each at least two long) its second-largest
    value, a tie with the largest counting twice."""
    if len(offsets) < 2:
        return np.zeros(0, np.float64)
    sizes = np.diff(offsets)
    group = np.repeat(np.arange(len(sizes)), sizes)
    largest = np.maximum.reduceat(values, offsets[:-1])
    at_largest = np.flatnonzero(values == largest[group])
    first_largest = at_largest[np.r_[True, group[at_largest[1:]] != group[at_largest[:-1]]]]
    rest = values.copy()
    rest[first_largest] = -np.inf
    return np.maximum.reduceat(rest, offsets[:-1])


def alike_with_crowd(
    detection: Detection, members: pl.DataFrame, behaviour: Profiles, ring_alike: pl.DataFrame, read: pl.DataFrame
) -> pl.DataFrame:
    """``ring_alike`` with ``crowd_alike``: how much more alike each ring's members act with each other
    than with its crowd, the customers in no ring on the addresses, sign-up addresses and subnets
    two or more of its members share (:func:`~linkage.behaviour.alike_against_crowd`; null for a ring
    whose crowd is smaller than itself, and for rings not in ``read``: ``ring_id``). A platform's
    users act alike as a population (scripts on one cloud's egress); a slice of them is no more alike
    than the rest of its crowd, where an operation behind a commercial proxy acts unlike the proxy's
    other customers."""
    # each ring is read once, when it first forms (ring ids are content hashes of the members): the
    # rounds of moving bystanders apart leave most rings as they were
    new = read.join(behaviour.crowd_known, on="ring_id", how="anti")
    if new.height:
        measured = new.join(_against_crowd(detection, members, behaviour, new), on="ring_id", how="left")
        behaviour.crowd_known = pl.concat([behaviour.crowd_known, measured])
    return ring_alike.join(behaviour.crowd_known.join(read, on="ring_id", how="semi"), on="ring_id", how="left")


def _against_crowd(
    detection: Detection, members: pl.DataFrame, behaviour: Profiles, read: pl.DataFrame
) -> pl.DataFrame:
    # joined on integers (the accounts' index, each read ring's number), not on ids: where the
    # addresses are shared widely, a ring's shared entities reach thousands of holders each (32 M
    # (ring, holder) rows, 7.6 M distinct, on a world B at 0.1 with every address behind ~35 accounts)
    held = detection.memberships.lazy().filter(pl.col("type").is_in(_CROWD_TYPES)).select("idx", "entity_key")
    numbered = read.lazy().select("ring_id").with_row_index("ring")
    in_rings = members.lazy().select("idx", "ring_id")
    read_members = members.lazy().select("account_id", "ring_id").join(read.lazy(), on="ring_id", how="semi")
    shared = (
        held.join(in_rings.join(numbered, on="ring_id").select("idx", "ring"), on="idx")
        .group_by("ring", "entity_key")
        .len()
        .filter(pl.col("len") >= 2)
        .select("ring", "entity_key")
    )
    unlinked = held.join(shared.select("entity_key").unique(), on="entity_key", how="semi").join(
        in_rings, on="idx", how="anti"
    )
    # each (ring, holder) once, as one 64-bit key sorted and kept where it changes (a hashed unique of
    # those 32 M keys took 2.4 s, the sort 1.0 s): the crowd comes in one order, run after run
    key = pl.col("ring").cast(pl.UInt64) * (1 << 32) + pl.col("idx").cast(pl.UInt64)
    crowd = (
        shared.join(unlinked, on="entity_key")
        .select(key.alias("key"))
        .sort("key")
        .filter((pl.col("key") != pl.col("key").shift(1)).fill_null(True))
        .select((pl.col("key") // (1 << 32)).alias("ring"), (pl.col("key") % (1 << 32)).alias("idx"))
        .join(numbered.select(pl.col("ring").cast(pl.UInt64), "ring_id"), on="ring", maintain_order="left")
        .join(
            detection.accounts.lazy().select(pl.col("idx").cast(pl.UInt64), "account_id"),
            on="idx",
            maintain_order="left",
        )
        .select("ring_id", "account_id")
    )
    frames = pl.collect_all([read_members, crowd])
    return alike_against_crowd(behaviour, frames[0], frames[1])


def _owned_infrastructure(evidence: pl.DataFrame) -> pl.DataFrame:
    infra = evidence.filter(pl.col("type").is_in(_INFRA_TYPES))
    return infra.group_by("ring_id").agg(
        ((pl.col("members") / pl.col("degree")) * pl.col("value_total"))
        .sum()
        .truediv(pl.col("value_total").sum())
        .alias("owned_infrastructure")
    )


def account_institutions(accounts: pl.DataFrame) -> pl.DataFrame:
    """``account_id, institution``: the academic institution each account belongs to, by its mail
    domain (:func:`~linkage.normalize.academic_institution`) or, for an account on other mail, by the
    address it signed up from, where more sign-ups were on one institution's mail than on any other
    domain (a campus's egress: the student who signed up on a personal address beside classmates on
    the college's; a tie with other mail vouches for nobody, a tie between two institutions' mail
    for the first by name). Accounts with neither are left out."""
    own = accounts.select(
        "account_id",
        "signup_ip",
        "email_domain",
        academic_institution(pl.col("email_domain")).alias("institution"),
    )
    campus = (
        own.filter(pl.col("signup_ip").is_not_null() & pl.col("email_domain").is_not_null())
        .group_by("signup_ip", pl.coalesce("institution", "email_domain").alias("domain"))
        .agg(pl.len(), pl.col("institution").first())
        .sort("len", pl.col("institution").is_not_null(), "domain", descending=[True, False, False])
        .unique("signup_ip", keep="first")
        .filter(pl.col("institution").is_not_null())
        .select("signup_ip", pl.col("institution").alias("campus"))
    )
    return (
        own.join(campus, on="signup_ip", how="left")
        .select("account_id", pl.coalesce("institution", "campus").alias("institution"))
        .filter(pl.col("institution").is_not_null())
    )


def _institutions(members: pl.DataFrame, institutions: pl.DataFrame) -> pl.DataFrame:
    """``ring_id, institution, institution_share``: the academic institution most of a ring's members
    belong to, and the share of members that belong to any (``institutions``: of each account, by
    :func:`account_institutions`); rings with none are left out."""
    on_any = members.join(institutions, on="account_id")
    sizes = members.group_by("ring_id").len("size")
    return (
        _most_common(on_any, "institution")
        .select("ring_id", "institution")
        .join(on_any.group_by("ring_id").len("on_any"), on="ring_id")
        .join(sizes, on="ring_id")
        .select("ring_id", "institution", (pl.col("on_any") / pl.col("size")).alias("institution_share"))
    )


def vouched_risk(
    members: pl.DataFrame, risk: pl.DataFrame, institutions: pl.DataFrame, lockstep: pl.DataFrame
) -> pl.DataFrame:
    """``risk`` with what a ring's academic institutions explain taken out of its members: each of
    :data:`INSTITUTION_EXPLAINED_FEATURES` above the run's mean counts ``1 − institution_share ·
    e^(−max(0, lockstep − 1))`` of its excess, and ``risk`` is their mean again.

    A course's students sign up in its first week, work on its problem-set scaffold and ask for
    step-by-step solutions, whose answers are long: new, scaffolded, reasoning-heavy and verbose
    member after member, alike by one cause. The institution vouches for the members on its mail
    domain (it issues the addresses, and the provider verifies them at sign-up), which an operation
    cannot mint as it mints free-mail addresses, a domain or an org id of its own. What a course does
    not explain still counts in full: how traffic arrives (bought exits, rotating addresses), how
    much an account sends and how large its contexts are. So does what a ring keeps on one clock beyond
    chance (1 nat a link): an operation on academic addresses that runs its accounts on a scheduler
    keeps everything.

    ``institutions``: ``ring_id, institution_share`` (:func:`_institutions`); ``lockstep``: ``ring_id,
    lockstep`` (:func:`_lockstep`). Accounts in no ring, or in a ring on no academic domain, keep
    their risk."""
    explained = [f for f in INSTITUTION_EXPLAINED_FEATURES if f in risk.columns]
    available = [f for f in RISK_FEATURES if f in risk.columns]
    if not explained or institutions.height == 0:
        return risk
    means = dict(zip(explained, risk.select([pl.col(f).mean() for f in explained]).row(0), strict=True))
    vouched = institutions.join(lockstep, on="ring_id", how="left").select(
        "ring_id", (pl.col("institution_share") * _timing_by_chance(CHANCE_SURPRISAL)).alias("vouched")
    )
    share = pl.col("vouched").fill_null(0.0)
    return (
        risk.join(members.select("account_id", "ring_id"), on="account_id", how="left")
        .join(vouched, on="ring_id", how="left")
        .with_columns([(pl.col(f) - share * (pl.col(f) - means[f]).clip(0.0, None)).alias(f) for f in explained])
        .with_columns(pl.mean_horizontal(available).alias("risk"))
        .drop("ring_id", "vouched")
    )


def _most_common(members: pl.DataFrame, column: str) -> pl.DataFrame:
    """``ring_id, column, len``: per ring the value of ``column`` most members hold and how many hold
    it (ties to the first in order, so runs repeat)."""
    return (
        members.group_by("ring_id", column)
        .len()
        .sort("len", column, descending=[True, False])
        .unique("ring_id", keep="first")
    )


def _size_and_org(members: pl.DataFrame, accounts: pl.DataFrame) -> pl.DataFrame:
    with_org = members.join(accounts.select("account_id", "org_id"), on="account_id", how="left")
    modal = _most_common(with_org.filter(pl.col("org_id").is_not_null()), "org_id")
    sizes = members.group_by("ring_id").len("size").with_columns(pl.col("size").cast(pl.Int64))
    return (
        sizes.join(modal, on="ring_id", how="left")
        .with_columns((pl.col("len").fill_null(0) / pl.col("size")).alias("org_explained"))
        .drop("len")
    )


def _traffic_features(accounts: pl.DataFrame, ring_of: pl.DataFrame) -> pl.DataFrame:
    per_account = accounts.join(ring_of, on="account_id").select(
        "ring_id",
        pl.col("requests").cast(pl.Float64).alias("n"),
        "proxy_requests",
        "reasoning_requests",
        "sampled_prompts",
    )
    total = pl.col("n").sum()
    sampled = pl.col("sampled_prompts").sum()
    return per_account.group_by("ring_id").agg(
        pl.when(total > 0).then(pl.col("proxy_requests").sum() / total).otherwise(0.0).alias("proxy_share"),
        pl.when(sampled > 0).then(pl.col("reasoning_requests").sum() / sampled).otherwise(0.0).alias("reasoning_style"),
        # equal volumes among three accounts happen by chance; among thirty they are scheduled
        (
            pl.when(pl.col("n").mean() > 0)
            .then(1 - (pl.col("n").std(ddof=0) / pl.col("n").mean()).clip(0, 1))
            .otherwise(0.0)
            * ((pl.len() - 1) / 9).clip(0, 1)
        ).alias("equal_volume"),
        total.cast(pl.Int64).alias("requests"),
    )


def _owned_templates(graph: Graph, ring_of: pl.DataFrame) -> pl.DataFrame:
    """Σ over templates of (share of the ring's requests) × (share of the template's use inside the ring)²."""
    sent = graph.rels["SENT_TEMPLATE"].select(
        pl.col("src").alias("account_id"), pl.col("dst").alias("template_id"), pl.col("count").alias("n")
    )
    global_use = graph.nodes["PromptTemplate"].select("template_id", pl.col("requests").alias("global_requests"))
    totals = (
        graph.nodes["Account"]
        .join(ring_of, on="account_id")
        .group_by("ring_id")
        .agg(pl.col("sampled_prompts").sum().alias("ring_requests"))
    )
    use = (
        sent.join(ring_of, on="account_id")
        .group_by("ring_id", "template_id")
        .agg(pl.col("n").sum())
        .join(global_use, on="template_id")
        .join(totals, on="ring_id")
    )
    return use.group_by("ring_id").agg(
        ((pl.col("n") / pl.col("ring_requests")) * (pl.col("n") / pl.col("global_requests")))
        .sum()
        .clip(0, 1)
        .alias("owned_templates")
    )


def _signup_burst(members: pl.DataFrame, accounts: pl.DataFrame) -> pl.DataFrame:
    created = (
        members.join(accounts.select("account_id", "created_at"), on="account_id")
        .select("ring_id", pl.col("created_at").dt.epoch("ms").alias("t"))
        .sort("ring_id", "t")
    )
    rings, times = created["ring_id"].to_numpy(), created["t"].to_numpy()
    best: dict[str, float] = {}
    boundaries = np.flatnonzero(np.r_[True, rings[1:] != rings[:-1], True])
    for start, end in zip(boundaries[:-1], boundaries[1:]):
        t = times[start:end]
        within = np.searchsorted(t, t + _BURST_WINDOW_MS, side="right") - np.arange(len(t))
        best[rings[start]] = float(within.max()) / len(t)
    return pl.DataFrame(
        {"ring_id": list(best), "signup_burst": list(best.values())},
        schema={"ring_id": pl.Utf8, "signup_burst": pl.Float64},
    )


def alike_reference(known: pl.DataFrame, share: float) -> float:
    """The run's reference ring's ``alike``: the one only ``share`` of its rings (``known``: those with
    behaviour) exceed."""
    return float(known["alike"].quantile(1.0 - share, interpolation="linear") or 0.0)


def _timing_by_chance(beyond: float = 0.0) -> pl.Expr:
    """``e^(−lockstep)``: the chance that a ring's links keep their common clock by coincidence (the
    p-value behind the mean surprisal; a ring without a lockstep counts as keeping none). With
    ``beyond``, only the lockstep over that level counts: ``e^(−max(0, lockstep − beyond))``."""
    return (-(pl.col("lockstep").fill_null(0.0) - beyond).clip(0.0, None)).exp()


def weigh_by_alike(ring_risk: pl.DataFrame, ring_alike: pl.DataFrame, prior: float, share: float) -> pl.DataFrame:
    """Risk and acting alike, read together: a ring's risk above the background's mean counts in
    proportion to ``(1 + alike) / (1 + reference)``, ``reference`` the ``alike`` (:mod:`linkage.behaviour`)
    that only ``share`` of the run's rings exceed. Most rings of a run are customers tied by what they share
    (a carrier NAT, a campus, a serverless platform's egress) and act like strangers; an operation's
    accounts act alike. A ring as alike as the run's reference ring keeps its score; one acting like
    strangers keeps ``1 / (1 + reference)`` of its excess, one acting identically ``2 / (1 + reference)``.
    The factor is gentle on purpose (at most a few tenths either way): it moves rings near the cut,
    and decides nothing alone. Without behaviour in the run (no request log) scores are unchanged."""
    known = ring_alike.filter(pl.col("alike").is_not_null())
    if known.height == 0:
        return ring_risk
    reference = alike_reference(known, share)
    factor = (1.0 + pl.col("alike").clip(-1.0, 1.0)) / (1.0 + max(reference, 0.0))
    return (
        ring_risk.join(known, on="ring_id", how="left")
        .with_columns((prior + (pl.col("score") - prior) * factor.fill_null(1.0)).alias("score"))
        .drop("alike")
    )


def org_explained_risk(
    members: pl.DataFrame, risk: pl.DataFrame, org: pl.DataFrame, lockstep: pl.DataFrame
) -> pl.DataFrame:
    """``account_id, risk``: each ring member's risk with what its declared org explains taken out, in
    proportion to how much of the ring the org explains and how little the ring keeps one clock.

    A declared org's seats arrive from its egress, signed up when it did and repeat its internal
    templates, by right (:data:`ORG_EXPLAINED_FEATURES`); what they ask for, and how much, the org
    does not explain. In a ring, each of those features' percentile above the run's mean counts
    ``1 − org_explained · e^(−lockstep)`` of itself: ``org_explained`` the share of members declaring
    the ring's most common org, ``e^(−lockstep)`` the chance that its links' timing is coincidence.
    A ring with no declared org is unchanged; one org's seats on their own hours lose most of what
    their org explains; an operation that declares orgs and runs its accounts on a scheduler keeps
    it. An operation that declares an org and gives each account its own clock loses at most those
    features: what it asks for still counts in full.

    ``org``: ``ring_id, org_explained``; ``lockstep``: ``ring_id, lockstep`` (:func:`_lockstep`; a
    ring without it counts as keeping no clock). Accounts in no ring, and risks without these
    features, are returned as they are."""
    explained = [f for f in ORG_EXPLAINED_FEATURES if f in risk.columns]
    features = [f for f in RISK_FEATURES if f in risk.columns]
    if not explained:
        return risk.select("account_id", "risk")
    means = risk.select([pl.col(f).mean() for f in explained]).row(0)
    share = (
        org.select("ring_id", "org_explained")
        .join(lockstep, on="ring_id", how="left")
        .select(
            "ring_id",
            (pl.col("org_explained").fill_null(0.0) * _timing_by_chance()).alias("explained"),
        )
    )
    above_mean = pl.sum_horizontal([pl.col(f) - mean for f, mean in zip(explained, means, strict=True)])
    return (
        risk.join(members.select("account_id", "ring_id"), on="account_id", how="left")
        .join(share, on="ring_id", how="left")
        .select(
            "account_id",
            (pl.col("risk") - pl.col("explained").fill_null(0.0) * above_mean / len(features)).alias("risk"),
        )
    )


def operated_by_behaviour_or_clock(
    ring_risk: pl.DataFrame,
    ring_alike: pl.DataFrame,
    lockstep: pl.DataFrame,
    prior: float,
    share: float,
    chance_level: float = 0.0,
) -> pl.DataFrame:
    """A ring is operated if its members act alike or keep one clock; strangers sharing a platform's
    egress do neither. Its excess over the background counts in proportion to
    ``1 − (1 − min(1, alike / reference)) · e^(−lockstep)``: a ring acting as alike as the run's
    reference ring (the one only ``share`` of its rings exceed, :func:`weigh_by_alike`) keeps it
    whatever its clock, as does one whose links keep a clock beyond chance; a ring of strangers
    (alike 0) on their own hours keeps only what its timing supports. A ring without a lockstep
    counts as keeping no clock; one without behaviour (no request log) is left as it is.

    ``chance_level``: the lockstep links keep by chance (:data:`CHANCE_SURPRISAL`, with
    ``score.clock_beyond_chance``); only what lies beyond it counts, ``e^(−max(0, lockstep −
    chance_level))``, so strangers whose links keep their clock no better than chance keep nothing."""
    known = ring_alike.filter(pl.col("alike").is_not_null())
    if known.height == 0:
        return ring_risk
    reference = alike_reference(known, share)
    if reference <= 0.0:
        return ring_risk
    if "crowd_alike" in known.columns:  # (the reference stays the run's; each ring is read against its crowd)
        known = known.with_columns(pl.min_horizontal("alike", pl.col("crowd_alike").fill_null(pl.col("alike"))))
        known = known.drop("crowd_alike")
    unlike = 1.0 - (pl.col("alike").clip(0.0, None) / reference).clip(None, 1.0)
    factor = 1.0 - unlike.fill_null(0.0) * _timing_by_chance(chance_level)
    return (
        ring_risk.join(known, on="ring_id", how="left")
        .join(lockstep, on="ring_id", how="left")
        .with_columns((prior + (pl.col("score") - prior) * factor).alias("score"))
        .drop("alike", "lockstep")
    )


def _weigh_by_timing(ring_risk: pl.DataFrame, lockstep: pl.DataFrame, prior: float) -> pl.DataFrame:
    """Members alike in behaviour are an operation only if they are operated together: the ring's risk
    above the background's mean counts in proportion to ``1 − e^(−lockstep)``, the confidence that
    its members keep one clock beyond chance (``lockstep`` is a surprisal, −ln of a p-value). A
    class of students asking for step-by-step solutions behaves like a harvesting campaign, member
    after member, but each keeps their own hours; a scheduler's accounts share its hours."""
    confidence = 1.0 - _timing_by_chance()
    return (
        ring_risk.join(lockstep, on="ring_id", how="left")
        .with_columns((prior + (pl.col("score") - prior) * confidence).alias("score"))
        .drop("lockstep")
    )


def _lockstep(
    detection: Detection, members: pl.DataFrame, links: pl.DataFrame | None = None, hours_only: bool = False
) -> pl.DataFrame:
    """The mean lockstep surprisal (nats) of the ring's links (``links``: :func:`_in_ring_links`, when
    already known). ``hours_only``: without the part that is the members' lifetimes coinciding
    (a course, or an org's seats, live in the same weeks; whether they keep one clock is read in
    their hours)."""
    ring_of = members.select("community", "ring_id").unique("community")
    links = _in_ring_links(detection, members) if links is None else links
    clock = pl.col("activity") - pl.col("days") if hours_only else pl.col("activity")
    per_community = links.group_by("community").agg(clock.mean().alias("lockstep"))
    return per_community.join(ring_of, on="community").select("ring_id", "lockstep")


def _in_ring_links(detection: Detection, members: pl.DataFrame) -> pl.DataFrame:
    """The kept links whose two ends are members of one ring (``a, b, weight, activity, community``),
    in the pairs' order. Each end's ring is looked up by account index in an array rather than
    joined: scoring asks for these links several times a round, of millions of pairs at scale."""
    a, b = detection.pairs["a"].to_numpy(), detection.pairs["b"].to_numpy()
    idx = members["idx"].to_numpy().astype(np.int64)
    size = int(max(a.max(initial=-1), b.max(initial=-1), idx.max(initial=-1))) + 1
    community = np.full(size, -1, np.int64)
    community[idx] = members["community"].to_numpy()
    of_a = community[a]
    inside = (of_a >= 0) & (of_a == community[b])
    return (
        detection.pairs.select("a", "b", "weight", "activity", "days")
        .filter(pl.Series(inside))
        .with_columns(pl.Series("community", of_a[inside]))
    )


def _owned_tools_named(detection: Detection, evidence: pl.DataFrame) -> pl.DataFrame:
    """Labels an owned build or scaffold as one (:func:`~linkage.detect.owned_tools`): why a tool a
    hundred accounts hold is worth as much as the rarest between its workers."""
    if detection.owned is None or detection.owned.height == 0:
        return evidence
    keys = detection.owned["entity_key"].unique().implode()
    owned = detection.memberships.filter(pl.col("entity_key").is_in(keys))["entity"].unique().implode()
    what = (
        pl.when(pl.col("type") == "PromptTemplate")
        .then(pl.lit("an operation's scaffold"))
        .otherwise(pl.lit("an owned build"))
    )
    return evidence.with_columns(
        pl.when(pl.col("entity").is_in(owned))
        .then(pl.concat_str([pl.col("label"), pl.lit(" ("), what, pl.lit(": its holders act as one)")]))
        .otherwise(pl.col("label"))
        .alias("label")
    )


def _evidence_text(evidence: pl.DataFrame, top: int) -> pl.DataFrame:
    ranked = (
        evidence.sort("ring_id", "value_total", "entity", descending=[False, True, False])
        .group_by("ring_id", maintain_order=True)
        .head(top)
    )
    return ranked.group_by("ring_id", maintain_order=True).agg(
        pl.format(
            "{} shared by {} members ({} accounts overall, weight {})",
            pl.col("label"),
            pl.col("members"),
            pl.col("degree"),
            pl.col("value").round(2),
        )
        .str.join("; ")
        .alias("evidence")
    )
