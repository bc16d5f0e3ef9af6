"""Campaign simulator: a synthetic provider with benign confounders and distillation campaigns.

Deterministic per seed and vectorised (numpy/polars, no Python loop per request). Scale 1 is
the reported incident: ~24,000 campaign accounts in ~250,000 benign ones, ~16M requests
over 30 days. Labels are written to ``OUT/labels/labels.parquet``, apart from the input
tables, so a run over ``OUT`` never sees them.

The simulator is a tool for understanding, not the target: its campaigns and confounders
are written from how such operations must work (paid proxy pools, scaffolded prompts,
schedulers, signup waves) and how ordinary customers look alike by accident (carrier NAT,
campus egress, SDK defaults, popular templates, org seats).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

DAY = 86_400
START = 1_768_867_200  # 2026-01-20T00:00:00Z
DAYS = 30
NEW_MODEL_DAY = 20
MODELS = np.array(["atlas-large", "atlas-medium", "atlas-small"])
NEW_MODEL = "atlas-large-2"

WORDS = np.array(
    (
        "apple river stone cloud market garden engine signal forest budget ladder window planet violin harbor "
        "puzzle orbit candle meadow silver copper rocket tunnel island lantern marble pepper thunder velvet "
        "canyon glacier falcon beacon compass quartz saddle timber walnut zephyr anchor basket cactus dolphin "
        "ember fossil granite horizon ivory jungle kettle lemon magnet nectar oasis pebble quiver raven summit "
        "tiger umbrella vortex wander yonder zenith algebra matrix vector integral prime theorem sequence graph "
        "protein enzyme neuron voltage circuit photon plasma sodium carbon nitrogen climate drought harvest "
        "contract invoice payroll tenant mortgage pension tariff export import customer shipment warehouse"
    ).split()
)
NAMES = np.array("Alice Bob Carlos Dana Emeka Fatima Goran Hana Ivan Julia Kenji Lena Mateo Nora Omar Priya".split())

POPULAR_SYSTEM = "You are a helpful assistant."
BENIGN_SHAPES = [
    "How do I {a} {b} in Python?",
    "Can you explain {a} and {b} to a beginner?",
    "Write a short email to {name} about the {a} {b}.",
    "Summarize this: {a} {b} {c} {d}.",
    "What is the difference between {a} and {b}?",
    "Translate to French: the {a} near the {b}.",
    "Give me three ideas for a {a} {b} project.",
    "Fix this bug: {a}_{b} returns None when {c} is empty.",
    "Why does my {a} {b} keep failing after {n} retries?",
    "Draft a plan for {a}, {b} and {c}.",
    "Explain step by step how {a} relates to {b}.",
]
POPULAR_TEMPLATES = [  # framework defaults used by many unrelated customers
    "Answer the following questions as best you can. You have access to the following tools:\n"
    "search: look things up.\nQuestion: {a} {b} {c}?\nThought:",
    "You are an expert copywriter. Rewrite the text below to be more engaging.\nText: {a} {b} {c} {d}.",
    "Context information is below.\n---------------------\n{a} {b} {c} {d}\n---------------------\n"
    "Given the context information and not prior knowledge, answer the query.\nQuery: {e} {f}?\nAnswer:",
]
SCAFFOLDS = {
    "cot": [
        "Here is a problem and its final answer. Write out the complete step-by-step reasoning that leads to "
        "the answer, as a careful expert would.\nProblem: {a} {b} {c} {d} {e}?\nFinal answer: {n}\nReasoning:",
        "Below is a question with its correct answer. Reconstruct the full chain of thought, every intermediate "
        "step included.\nQuestion: {a} {b} {c} {d} {e}?\nCorrect answer: {n}\nChain of thought:",
        "Voici un problème et sa réponse finale. Rédige tout le raisonnement étape par étape.\n"
        "Problème : {a} {b} {c} {d} {e} ?\nRéponse : {n}\nRaisonnement :",
        "下面是一道题目及其最终答案。请写出完整的逐步推理过程。\n题目：{a} {b} {c} {d} {e}？\n答案：{n}\n推理：",
    ],
    "rubric": [
        "Grade the response below against the rubric. For each criterion give a score from 1 to 10 and a "
        "one-paragraph justification.\nRubric: {a} {b} {c}.\nResponse: {d} {e} {f} {g}.\nGrades:",
    ],
    "rewrite": [
        "Rewrite the following answer so that it stays neutral and omits any mention of {a}, while keeping "
        "all facts intact.\nOriginal answer: {b} {c} {d} {e}.\nRewritten answer:",
    ],
    "agentic": [
        "You are an autonomous software engineer working in the repository {a}-{b}. Task: {c} {d} {e}.\n"
        "Think step by step, then emit each tool call as JSON.\nAvailable tools: read_file, write_file, "
        "run_tests, search_code.\nBegin.",
        '<trajectory>\nUser goal: {a} {b} {c}.\n<tool_call>{{"name": "search_code", "query": "{d}"}}'
        "</tool_call>\nObservation: {e} {f} {g}.\nContinue the trajectory. Explain the reasoning behind every "
        "action before calling the next tool.",
    ],
}


@dataclass
class CampaignTactics:
    """How one campaign operates in a world; the fixed world's values are the defaults of
    :meth:`World.fixed`."""

    size: float = 1.0  # multiplier on its account count
    camouflage: float = 0.1  # share of requests drawn from benign phrasing
    timing: str = "scheduled"  # scheduled | scheduled_jitter | careful
    volume: float = 1.0  # multiplier on requests per account (account lifetime)
    paraphrases: int = 1  # reworded variants of each scaffold it uses


@dataclass
class World:
    """What a simulated provider month is made of. ``fixed()`` is the original world; ``draw(seed)``
    a random member of the family: confounder mix and sizes, how varied benign prompts are,
    campaign tactics, and gaps in the optional columns. Nothing here is read by detection."""

    benign: dict[str, float] = field(default_factory=lambda: dict.fromkeys(BENIGN_KINDS, 1.0) | {"course": 0.0})
    everyday_shapes: int = 0  # extra benign prompt shapes from the phrase-bank generator
    stock_sentences: int = 0  # benign prompts around sentences from a small stock (0: none)
    campaign_bank: tuple[str, int] | None = None  # (campaign, items): its scaffold carries a line from a bank
    course_personal_mail: float = 0.0  # share of a class's students who sign up on a personal address
    campaigns: dict[str, CampaignTactics] = field(
        default_factory=lambda: {
            "campaign_hydra": CampaignTactics(camouflage=0.15, timing="scheduled_jitter"),
            "campaign_sticky": CampaignTactics(camouflage=0.08, timing="scheduled"),
            "campaign_dc": CampaignTactics(camouflage=0.1, timing="scheduled_jitter"),
            "campaign_careful": CampaignTactics(camouflage=0.3, timing="careful"),
        }
    )
    hydra_pool: str = "resproxy"  # resproxy | dcproxy | carrier0 (mobile proxies)
    hydra_accounts_per_card: int = 330
    sticky_device: str = "custom"  # custom | sdk_default
    dc_fake_org_share: float = 0.2
    missing: dict[str, float] = field(default_factory=lambda: {"device_id": 0.0, "asn": 0.0, "ip_type": 0.0})

    @classmethod
    def fixed(cls) -> World:
        return cls()

    @classmethod
    def draw(cls, seed: int) -> World:
        rng = np.random.default_rng(seed + 7_777)

        def multiplier(low: float = 0.3, high: float = 3.0) -> float:
            return float(np.exp(rng.uniform(np.log(low), np.log(high))))

        campaigns = {
            name: CampaignTactics(
                size=multiplier(0.3, 2.0),
                camouflage=float(rng.uniform(0.05, 0.6)),
                timing=str(rng.choice(["scheduled", "scheduled_jitter", "careful"])),
                volume=multiplier(0.5, 2.0),
                paraphrases=int(rng.choice([1, 1, 2, 4])),
            )
            for name in cls().campaigns
        }
        return cls(
            benign={kind: multiplier() for kind in BENIGN_KINDS},
            everyday_shapes=int(rng.choice([0, 40, 200, 1000])),
            campaigns=campaigns,
            hydra_pool=str(rng.choice(["resproxy", "dcproxy", "carrier0"])),
            hydra_accounts_per_card=int(rng.choice([25, 100, 330, 1000])),
            sticky_device=str(rng.choice(["custom", "sdk_default"])),
            dc_fake_org_share=float(rng.uniform(0.0, 0.6)),
            missing={
                column: float(rng.choice([0.0, 0.0, rng.uniform(0.05, 0.5), 1.0]))
                for column in ("device_id", "asn", "ip_type")
            },
        )._with_late_draws(rng)

    def _with_late_draws(self, rng: np.random.Generator) -> World:
        """What was added to the family later, drawn last so that every earlier draw of a seed is
        what it was before it existed:

        - course cohorts: 0, 1 or 2 classes (a course is the hardest benign look-alike: a cohort
          that signs up together and asks for step-by-step reasoning on one assignment scaffold);
        - in half the worlds, a campaign run as many small cells (:func:`_cells`): 3–5 accounts
          behind one exit and one pair of client builds, nothing else shared between cells but the
          scaffold; separate infrastructure per cell is what hides it in one giant benign community
          under modularity;
        - in half the worlds, benign prompts around sentences from a small stock (a sample paragraph
          pasted into an everyday "summarize this" request): each combination of an instruction and
          stock sentences reads as a rare scaffold that a few unrelated people meet once each;
        - in half the worlds, one campaign's scaffold carries a line from its own small bank (one of a
          few canned stack traces or datasets), so its accounts meet each combination once too;
        - the share of a class's students who sign up on a personal address instead of their college's
          (0–40 %; drawn after everything else, as are the students it picks, see :func:`_courses`)."""
        self.benign["course"] = float(rng.choice([0.0, 1.0, 2.0]))
        if rng.random() < 0.5:
            self.campaigns["campaign_cells"] = CampaignTactics(
                size=float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))),
                camouflage=float(rng.uniform(0.05, 0.5)),
                timing=str(rng.choice(["scheduled", "scheduled_jitter", "careful"])),
                volume=float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))),
                paraphrases=int(rng.choice([1, 2, 4])),
            )
        self.stock_sentences = int(rng.choice([0, 0, 8, 30]))
        if rng.random() < 0.5:
            self.campaign_bank = (
                str(rng.choice(["campaign_hydra", "campaign_sticky", "campaign_dc", "campaign_careful"])),
                int(rng.choice([3, 6, 12])),
            )
        self.course_personal_mail = float(rng.uniform(0.0, 0.4))
        return self

    def describe(self) -> dict[str, object]:
        return asdict(self)


BENIGN_KINDS = ("regular", "mobile_nat", "university", "org_seats", "family", "vpn", "relay", "gateway", "hackathon")
PERSONAL_MAIL = np.array(["gmail.com", "outlook.com", "yahoo.com", "proton.me", "icloud.com"])


@dataclass
class SimulationConfig:
    scale: float = 0.01
    seed: int = 1
    fmt: str = "parquet"
    world: str = "fixed"  # fixed: the original world; random: a world drawn from the seed (World.draw)

    def make_world(self) -> World:
        return World.draw(self.seed) if self.world == "random" else World.fixed()


@dataclass
class Cohort:
    """Accounts of one kind, as columns; requests are generated per cohort."""

    kind: str
    label: str
    frame: pl.DataFrame


class Simulator:
    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.world = config.make_world()
        self.rng = np.random.default_rng(config.seed)
        self.s = config.scale
        self.next_id = 0
        self.isp_asns = np.arange(7000, 7040)
        self.carrier_asns = np.array([21000, 21001, 21002, 21003, 21004])
        self.filler_pool = self._filler_pool(int(max(5_000, 200_000 * min(self.s, 1) ** 0.5)))

    # ------------------------------------------------------------ helpers
    def n(self, base: float, minimum: int = 1, kind: str | None = None) -> int:
        """Accounts of a cohort at this scale (times the world's multiplier for a benign ``kind``)."""
        factor = self.world.benign.get(kind, 1.0) if kind else 1.0
        return max(minimum, int(round(base * self.s * factor)))

    def ids(self, count: int) -> np.ndarray:
        start = self.next_id
        self.next_id += count
        # scrambled so that a campaign's accounts are not contiguous
        raw = (
            np.arange(start, start + count, dtype=np.uint64) * np.uint64(0x9E3779B1) + np.uint64(self.config.seed)
        ) & np.uint64(0xFFFFFFFFFF)
        return np.char.add("acct_", np.char.zfill(np.char.mod("%x", raw), 10))

    def _filler_pool(self, size: int) -> np.ndarray:
        words = self.rng.choice(WORDS, size=(size, 3))
        return np.char.add(np.char.add(np.char.add(words[:, 0], " "), np.char.add(words[:, 1], " ")), words[:, 2])

    def ipv4(self, values: np.ndarray) -> np.ndarray:
        v = values.astype(np.int64)
        parts = [(v >> shift) & 255 for shift in (24, 16, 8, 0)]
        out = parts[0].astype(str)
        for p in parts[1:]:
            out = np.char.add(np.char.add(out, "."), p.astype(str))
        return out

    def home_ips(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Residential addresses inside ISP ranges: (ip text, asn)."""
        isp = self.rng.integers(0, len(self.isp_asns), count)
        base = (24 + isp) << 24  # 24.x.x.x … 63.x.x.x
        ips = base + self.rng.integers(0, 1 << 24, count)
        return self.ipv4(ips), self.isp_asns[isp]

    def signup_times(self, count: int, start: float, end: float) -> np.ndarray:
        return self.rng.uniform(start, end, count).astype(np.int64)

    def cohort(self, kind: str, label: str, count: int, created: np.ndarray, **columns) -> Cohort:
        columns = {
            k: (pl.Series(k, v.tolist(), dtype=pl.Utf8) if isinstance(v, np.ndarray) and v.dtype == object else v)
            for k, v in columns.items()
        }
        frame = pl.DataFrame({"account_id": self.ids(count), "created_at": created, **columns})
        return Cohort(kind, label, frame.with_columns(pl.lit(kind).alias("kind"), pl.lit(label).alias("label")))

    def emails(self, ids: np.ndarray, domains: np.ndarray) -> np.ndarray:
        local = np.char.add(
            self.rng.choice(np.char.lower(NAMES), len(ids)), np.char.mod("%d", self.rng.integers(1, 99999, len(ids)))
        )
        return np.char.add(np.char.add(local, "@"), domains)

    # ------------------------------------------------------------ network pools
    def build_pools(self, regular_home_ips: np.ndarray) -> None:
        """Shared address pools: (ip, asn, ip_type) arrays concatenated with offsets per pool."""
        rng = self.rng
        pools: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for c, asn in enumerate(self.carrier_asns):  # carrier-grade NAT: a few hundred exits per carrier
            size = max(20, int(300 * min(self.s, 1) ** 0.5))
            if c == 4:  # an IPv6 carrier: addresses inside a handful of /64s
                prefix = rng.integers(0, 4, size)
                host = rng.integers(1, 1 << 16, size)
                ips = np.char.add(
                    np.char.add(np.char.add("2600:380:", prefix.astype(str)), "::"), np.char.mod("%x", host)
                )
            else:
                ips = self.ipv4((100 << 24) + (64 << 16) + (c << 12) + rng.integers(0, 1 << 12, size))
            pools[f"carrier{c}"] = (ips, np.full(size, asn), np.full(size, "mobile"))
        for v in range(3):  # commercial VPNs
            size = max(10, int(150 * min(self.s, 1) ** 0.5))
            ips = self.ipv4((185 << 24) + (v << 16) + rng.integers(0, 1 << 12, size))
            pools[f"vpn{v}"] = (ips, np.full(size, 9000 + v), np.full(size, "vpn"))
        size = max(10, int(200 * min(self.s, 1) ** 0.5))  # privacy relay exits
        pools["relay"] = (
            self.ipv4((172 << 24) + (224 << 16) + rng.integers(0, 1 << 16, size)),
            np.full(size, 9100),
            np.full(size, "proxy"),
        )
        # hydra's residential proxy pool: real customers' home addresses, re-sold as exits
        size = min(len(regular_home_ips), max(50, int(4000 * self.s**0.7)))
        chosen = rng.choice(len(regular_home_ips), size, replace=False)
        ips = regular_home_ips[chosen]
        asn = 7000 + (np.array([int(x.split(".")[0]) for x in ips]) - 24)
        typed = np.where(rng.random(size) < 0.3, "proxy", "residential")
        pools["resproxy"] = (ips, asn, typed)
        # datacenter proxies: a few hosting ASNs, dense /24s
        subnets = rng.integers(0, 1 << 16, 30)
        host = rng.integers(1, 255, max(60, int(1500 * self.s**0.5)))
        sub = rng.integers(0, 30, len(host))
        ips = self.ipv4((45 << 24) + (subnets[sub] << 8) + host)
        pools["dcproxy"] = (ips, 16000 + sub % 3, np.where(rng.random(len(host)) < 0.6, "datacenter", "proxy"))
        self.pool_names = list(pools)
        self.pool_offset = np.cumsum([0] + [len(p[0]) for p in pools.values()])
        self.pool_ip = np.concatenate([p[0] for p in pools.values()])
        self.pool_asn = np.concatenate([p[1] for p in pools.values()])
        self.pool_type = np.concatenate([p[2] for p in pools.values()])

    def pool(self, name: str) -> int:
        return self.pool_names.index(name)

    def private_pool(self, name: str, ips: np.ndarray, asn: np.ndarray, ip_type: np.ndarray) -> int:
        """Add a small pool (an org's or campus's egress) and return its code."""
        self.pool_names.append(name)
        self.pool_offset = np.r_[self.pool_offset, self.pool_offset[-1] + len(ips)]
        self.pool_ip = np.r_[self.pool_ip, ips]
        self.pool_asn = np.r_[self.pool_asn, asn]
        self.pool_type = np.r_[self.pool_type, ip_type]
        return len(self.pool_names) - 1


# Per-account behaviour columns every cohort carries (defaults fill what a cohort leaves out).
BEHAVIOUR_DEFAULTS = {
    "email": None,
    "org_id": None,
    "country": "US",
    "signup_ip": None,
    "home_ip": None,
    "home_asn": 0,
    "home_type": "residential",
    "pool": -1,
    "pool_share": 0.0,  # share of requests sent through the shared pool
    "device": None,
    "user_agent": "atlas-python/1.4.2",
    "family": "free",
    "camouflage": 0.0,
    "requests": 10,
    "timing": "diurnal",
    "pivot": 0,
    "reasoning_tokens": 0,
}


def simulate(out_dir: Path, config: SimulationConfig) -> dict[str, object]:
    """Write ``OUT/input/{accounts,payments,requests/date=…}`` and ``OUT/labels.parquet``."""
    sim = Simulator(config)
    accounts, payments = _population(sim)
    requests = _requests(sim, accounts)
    return _write(out_dir, config, accounts, payments, requests)


def _population(sim: Simulator) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng, s = sim.rng, sim.s
    cohorts: list[pl.DataFrame] = []
    payments: list[pl.DataFrame] = []
    past = START - 365 * DAY
    sdk_defaults = np.array([f"tls:{h}" for h in ("a1f3", "b7e2", "c9d4", "d2a8", "e5b1")])

    def devices(count: int, default_share: float) -> np.ndarray:
        own = np.char.add("fp:", np.char.mod("%012x", rng.integers(0, 1 << 48, count)))
        defaults = rng.choice(sdk_defaults, count, p=[0.4, 0.25, 0.15, 0.12, 0.08])
        return np.where(rng.random(count) < default_share, defaults, own)

    def card(
        ids: np.ndarray, instrument: np.ndarray, kind: str = "card", bins: np.ndarray | None = None
    ) -> pl.DataFrame:
        bins = bins if bins is not None else rng.choice(COMMON_BINS, len(ids))
        return pl.DataFrame(
            {
                "account_id": ids,
                "instrument_id": instrument,
                "instrument_type": kind,
                "bin": bins,
                "issuer_country": "US",
            }
        )

    def unique_instruments(count: int, prefix: str = "pi") -> np.ndarray:
        return np.char.add(f"{prefix}_", np.char.mod("%014x", rng.integers(0, 1 << 56, count)))

    # --- regular customers (their home addresses later double as hydra's proxy exits)
    n = sim.n(150_000, kind="regular")
    created = sim.signup_times(n, past, START + 25 * DAY)
    home, asn = sim.home_ips(n)
    regular = sim.cohort(
        "regular",
        "benign",
        n,
        created,
        email=sim.emails(np.empty(n), rng.choice(PERSONAL_MAIL, n)),
        home_ip=home,
        home_asn=asn,
        signup_ip=home,
        device=devices(n, 0.6),
        family=np.where(rng.random(n) < 0.25, "popular", "free"),
        requests=np.clip(rng.lognormal(2.2, 1.0, n), 1, 2000).astype(int),
    )
    cohorts.append(regular.frame)
    has_card = rng.random(n) < 0.85
    payments.append(card(regular.frame["account_id"].to_numpy()[has_card], unique_instruments(int(has_card.sum()))))
    sim.build_pools(home)

    # --- mobile users behind carrier NAT (IPv4 and IPv6 pools)
    n = sim.n(40_000, kind="mobile_nat")
    carrier = rng.integers(0, 5, n)
    mobile = sim.cohort(
        "mobile_nat",
        "benign",
        n,
        sim.signup_times(n, past, START + 25 * DAY),
        email=sim.emails(np.empty(n), rng.choice(PERSONAL_MAIL, n)),
        pool=np.array([sim.pool(f"carrier{c}") for c in range(5)])[carrier],
        pool_share=1.0,
        device=devices(n, 0.3),
        user_agent="atlas-mobile/2.0",
        family=np.where(rng.random(n) < 0.2, "popular", "free"),
        requests=np.clip(rng.lognormal(2.0, 0.9, n), 1, 500).astype(int),
    )
    cohorts.append(mobile.frame.with_columns(pl.col("pool").cast(pl.Int64)))
    payments.append(card(mobile.frame["account_id"].to_numpy(), unique_instruments(n)))

    # --- university campuses: hundreds of students behind a few egress addresses
    for u in range(max(2, sim.n(8, kind="university"))):
        n = sim.n(1000, 20)
        egress = sim.ipv4((128 << 24) + (u << 16) + rng.integers(1, 250, 3))
        code = sim.private_pool(f"campus{u}", egress, np.full(3, 11000 + u), np.full(3, "unknown"))
        home, asn = sim.home_ips(n)
        cohorts.append(
            sim.cohort(
                "university",
                "benign",
                n,
                sim.signup_times(n, past, START + 20 * DAY),
                email=sim.emails(np.empty(n), np.full(n, f"student.uni{u}.edu")),
                home_ip=home,
                home_asn=asn,
                signup_ip=egress[rng.integers(0, 3, n)],
                pool=code,
                pool_share=0.8,
                device=devices(n, 0.5),
                family=np.where(rng.random(n) < 0.3, "popular", "free"),
                requests=np.clip(rng.lognormal(2.3, 0.9, n), 1, 800).astype(int),
            ).frame
        )

    # --- organisations: seats share billing, egress, client build and an internal system prompt
    org_sizes = list(np.clip(rng.lognormal(2.5, 0.9, sim.n(150, 3, kind="org_seats")), 3, 300).astype(int)) + [300]
    for o, size in enumerate(org_sizes):
        egress = sim.ipv4((52 << 24) + (o << 8) + np.array([10, 11]))
        code = sim.private_pool(f"org{o}", egress, np.full(2, 14000 + o % 50), np.full(2, "datacenter"))
        ids_frame = sim.cohort(
            "org_seats",
            "benign",
            size,
            sim.signup_times(size, past, START + 10 * DAY),
            email=sim.emails(np.empty(size), np.full(size, f"corp{o}.com")),
            org_id=f"org_{o:04d}",
            signup_ip=egress[0],
            pool=code,
            pool_share=0.9,
            device=f"fp:org{o}-client",
            user_agent="atlas-python/1.4.2",
            family=f"org:{o}",
            requests=np.clip(rng.lognormal(3.0, 1.0, size), 1, 3000).astype(int),
        ).frame
        cohorts.append(ids_frame)
        payments.append(
            card(
                ids_frame["account_id"].to_numpy(),
                np.full(size, f"pi_org_{o:04d}"),
                kind="invoice" if size > 50 else "card",
            )
        )

    # --- families sharing a card and a home connection
    for size in (2, 3, 4):
        k = sim.n(700, 2, kind="family")
        n = k * size
        family_home, family_asn = sim.home_ips(k)
        member_of = np.repeat(np.arange(k), size)
        frame = sim.cohort(
            "family",
            "benign",
            n,
            sim.signup_times(n, past, START + 20 * DAY),
            email=sim.emails(np.empty(n), rng.choice(PERSONAL_MAIL, n)),
            home_ip=family_home[member_of],
            home_asn=family_asn[member_of],
            signup_ip=family_home[member_of],
            device=devices(n, 0.5),
            requests=np.clip(rng.lognormal(2.0, 0.9, n), 1, 300).astype(int),
        ).frame
        cohorts.append(frame)
        instruments = unique_instruments(k, "pi_family")[member_of]
        payments.append(card(frame["account_id"].to_numpy(), instruments))

    # --- VPN and privacy-relay users: benign traffic through shared anonymising exits
    for name, pool_names, count, share in (
        ("vpn", ["vpn0", "vpn1", "vpn2"], 8000, 0.7),
        ("relay", ["relay"], 5000, 0.9),
    ):
        n = sim.n(count, kind=name)
        home, asn = sim.home_ips(n)
        codes = np.array([sim.pool(p) for p in pool_names])[rng.integers(0, len(pool_names), n)]
        frame = sim.cohort(
            name,
            "benign",
            n,
            sim.signup_times(n, past, START + 25 * DAY),
            email=sim.emails(np.empty(n), rng.choice(PERSONAL_MAIL, n)),
            home_ip=home,
            home_asn=asn,
            pool=codes,
            pool_share=share,
            device=devices(n, 0.5),
            family=np.where(rng.random(n) < 0.25, "popular", "free"),
            requests=np.clip(rng.lognormal(2.2, 0.9, n), 1, 800).astype(int),
        ).frame
        cohorts.append(frame)
        payments.append(card(frame["account_id"].to_numpy(), unique_instruments(n)))

    # --- high-volume single accounts: gateways and batch pipelines on their own servers
    n = sim.n(60, 3, kind="gateway")
    dc = sim.ipv4((34 << 24) + rng.integers(0, 1 << 20, n))
    frame = sim.cohort(
        "gateway",
        "benign",
        n,
        sim.signup_times(n, past, START),
        email=sim.emails(np.empty(n), np.full(n, "gmail.com")),
        home_ip=dc,
        home_asn=15169,
        home_type="datacenter",
        signup_ip=dc,
        device=devices(n, 0.0),
        timing="batch",
        family=np.where(rng.random(n) < 0.5, "popular", "free"),
        requests=np.full(n, int(20_000 * min(s, 1) ** 0.3)),
    ).frame
    cohorts.append(frame)
    payments.append(card(frame["account_id"].to_numpy(), unique_instruments(n)))

    # --- an evaluation company: many reasoning-style prompts, legitimately, under a declared org
    n = 40
    egress = sim.ipv4((52 << 24) + (250 << 16) + np.array([7, 8]))
    code = sim.private_pool("evalco", egress, np.full(2, 14999), np.full(2, "datacenter"))
    frame = sim.cohort(
        "eval_company",
        "benign",
        n,
        sim.signup_times(n, START - 200 * DAY, START - 100 * DAY),
        email=sim.emails(np.empty(n), np.full(n, "evalco.ai")),
        org_id="org_evalco",
        signup_ip=egress[0],
        pool=code,
        pool_share=1.0,
        device="fp:evalco-harness",
        family="evalco",
        timing="batch",
        reasoning_tokens=1,
        requests=np.full(n, int(3000 * min(s, 1) ** 0.5) + 10),
    ).frame
    cohorts.append(frame)
    payments.append(card(frame["account_id"].to_numpy(), np.full(n, "pi_evalco"), kind="invoice"))

    # --- hackathon cohorts: sign up together from the venue, start from the same starter prompt
    for h in range(max(1, int(round((2 if s >= 0.1 else 1) * sim.world.benign["hackathon"])))):
        n = 150 if s >= 0.1 else 60
        venue = sim.ipv4(np.array([(81 << 24) + (h << 8) + 5]))[0]
        start = START + (5 + 7 * h) * DAY + 9 * 3600
        home, asn = sim.home_ips(n)
        frame = sim.cohort(
            "hackathon",
            "benign",
            n,
            sim.signup_times(n, start, start + 2 * 3600),
            email=sim.emails(np.empty(n), rng.choice(PERSONAL_MAIL, n)),
            signup_ip=venue,
            home_ip=home,
            home_asn=asn,
            device=devices(n, 0.8),
            family="hackathon",
            requests=np.clip(rng.lognormal(2.5, 0.7, n), 3, 300).astype(int),
        ).frame
        cohorts.append(frame)
        payments.append(card(frame["account_id"].to_numpy(), unique_instruments(n)))

    _campaigns(sim, cohorts, payments, card, unique_instruments, devices)
    _courses(sim, cohorts, payments, card, unique_instruments, devices)
    _cells(sim, cohorts, payments, card, unique_instruments)
    frames = [_with_defaults(c) for c in cohorts]
    return pl.concat(frames, how="vertical_relaxed"), pl.concat(payments, how="diagonal_relaxed")


COMMON_BINS = np.array(
    [
        "41111111",
        "42424242",
        "51055105",
        "52000000",
        "37828224",
        "60110000",
        "35301113",
        "40128888",
        "55555555",
        "49927398",
    ]
)


def _courses(sim: Simulator, cohorts: list, payments: list, card, unique_instruments, devices) -> None:
    """University classes: students who sign up in the course's first days, on campus and at home,
    and work through problem sets on the course's scaffold asking for step-by-step solutions."""
    rng, s = sim.rng, sim.s
    for c in range(int(sim.world.benign.get("course", 0.0))):
        n = 120 if s >= 0.1 else 50
        start = START + (3 + 9 * c) * DAY + 8 * 3600
        egress = sim.ipv4((141 << 24) + (c << 16) + rng.integers(1, 250, 2))
        code = sim.private_pool(f"course{c}", egress, np.full(2, 11500 + c), np.full(2, "unknown"))
        home, asn = sim.home_ips(n)
        # who signs up on a personal address: drawn apart, so that the simulator's stream is as before
        apart = np.random.default_rng([sim.config.seed, 1 + c])
        personal = apart.random(n) < sim.world.course_personal_mail
        domains = np.where(personal, apart.choice(PERSONAL_MAIL, n), f"student.college{c}.edu")
        frame = sim.cohort(
            "course",
            "benign",
            n,
            sim.signup_times(n, start, start + 3 * DAY),
            email=sim.emails(np.empty(n), domains),
            signup_ip=egress[rng.integers(0, 2, n)],
            home_ip=home,
            home_asn=asn,
            pool=code,
            pool_share=0.6,
            device=devices(n, 0.6),
            family="course",
            reasoning_tokens=1,
            requests=np.clip(rng.lognormal(3.2, 0.6, n), 5, 400).astype(int),
        ).frame
        cohorts.append(frame)
        paying = frame["account_id"].to_numpy()[rng.random(n) < 0.3]  # most students stay on the free tier
        payments.append(card(paying, unique_instruments(len(paying))))


def _cells(sim: Simulator, cohorts: list, payments: list, card, unique_instruments) -> None:
    """A campaign run as many small cells: each of 3–5 accounts behind its own exit (a rented server
    or a residential address) with its own pair of custom client builds, signed up together; own
    cards or none, name-like emails. Across cells only the scaffold is shared."""
    tactics = sim.world.campaigns.get("campaign_cells")
    if tactics is None:
        return
    rng = sim.rng
    n = sim.n(2_400 * tactics.size, 12)
    cell = np.repeat(np.arange(n), rng.integers(3, 6, n))[:n]  # cells of 3-5, in order
    cells = int(cell.max()) + 1
    rented = rng.random(cells) < 0.5
    residential, residential_asn = sim.home_ips(cells)
    server = sim.ipv4((104 << 24) + (rng.integers(0, 1 << 16, cells) << 8) + rng.integers(1, 255, cells))
    exit_ip = np.where(rented, server, residential)[cell]
    exit_asn = np.where(rented, 16500 + rng.integers(0, 20, cells), residential_asn)[cell]
    builds = np.char.add("fp:cell-", np.char.mod("%012x", rng.integers(0, 1 << 48, (cells, 2))))
    cell_start = START - rng.integers(1, 30, cells) * DAY
    frame = sim.cohort(
        "campaign",
        "campaign_cells",
        n,
        cell_start[cell] + rng.integers(0, 3 * 3600, n),
        email=sim.emails(np.empty(n), rng.choice(["gmail.com", "outlook.com", "proton.me"], n)),
        country=rng.choice(["US", "GB", "CA", "AU"], n),
        home_ip=exit_ip,
        home_asn=exit_asn,
        home_type=np.where(rented, "datacenter", "residential")[cell],
        signup_ip=exit_ip,
        device=builds[cell, rng.integers(0, 2, n)],
        family="cells",
        camouflage=tactics.camouflage,
        requests=int(150 * tactics.volume),
        timing=tactics.timing,
        reasoning_tokens=1,
    ).frame
    cohorts.append(frame)
    paying = frame["account_id"].to_numpy()[rng.random(n) < 0.6]
    payments.append(card(paying, unique_instruments(len(paying))))


def _campaigns(sim: Simulator, cohorts: list, payments: list, card, unique_instruments, devices) -> None:
    rng, s, world = sim.rng, sim.s, sim.world
    tactics = world.campaigns
    pivot = START + NEW_MODEL_DAY * DAY + 3 * 3600

    # A — "hydra" reseller: thousands of accounts behind a residential proxy pool, cards fanned out,
    # signup waves, gmail dot/plus aliases, synthetic device per account, spoofed popular system prompt.
    n = sim.n(10_000 * tactics["campaign_hydra"].size, 30)
    wave_start = np.sort(rng.choice(np.arange(-12, 0), size=12, replace=False))
    wave = rng.integers(0, 12, n)
    created = START + wave_start[wave] * DAY + rng.integers(0, 2 * 3600, n)
    base = rng.integers(0, max(1, n // 25), n)
    local = np.char.add("m", np.char.mod("%06d", base))
    dotted = np.array([x[:1] + "." + x[1:] for x in local])
    plus = np.char.add(np.char.add(local, "+"), np.char.mod("%d", rng.integers(1, 999, n)))
    variant = rng.integers(0, 3, n)
    email = np.char.add(np.where(variant == 0, local, np.where(variant == 1, dotted, plus)), "@gmail.com")
    frame = sim.cohort(
        "campaign",
        "campaign_hydra",
        n,
        created,
        email=email,
        country=rng.choice(["US", "GB", "DE", "SG"], n),
        signup_ip=sim.pool_ip[
            sim.pool_offset[sim.pool(world.hydra_pool)]
            + rng.integers(
                0, sim.pool_offset[sim.pool(world.hydra_pool) + 1] - sim.pool_offset[sim.pool(world.hydra_pool)], n
            )
        ],
        pool=sim.pool(world.hydra_pool),
        pool_share=1.0,
        device=devices(n, 0.0),
        family="cot_spoofed",
        camouflage=tactics["campaign_hydra"].camouflage,
        requests=int(500 * min(s, 1) ** 0.15 * tactics["campaign_hydra"].volume),
        timing=tactics["campaign_hydra"].timing,
        pivot=pivot,
        reasoning_tokens=1,
    ).frame
    cohorts.append(frame)
    cards = max(3, n // world.hydra_accounts_per_card)
    payments.append(card(frame["account_id"].to_numpy(), unique_instruments(cards, "pi_h")[rng.integers(0, cards, n)]))

    # B — sticky residential exits (one address per account), many virtual cards from one BIN,
    # one custom client, agentic coding / tool-use scaffolds, exact round robin.
    n = sim.n(8_000 * tactics["campaign_sticky"].size, 25)
    home, asn = sim.home_ips(n)
    frame = sim.cohort(
        "campaign",
        "campaign_sticky",
        n,
        sim.signup_times(n, START - 14 * DAY, START),
        email=sim.emails(np.empty(n), rng.choice(["mailbox-q.net", "inboxly.io", "tmpmail.cc"], n)),
        home_ip=home,
        home_asn=asn,
        signup_ip=home,
        device="fp:8c1e-harvester" if world.sticky_device == "custom" else devices(n, 1.0),
        user_agent="atlas-python/1.4.2",
        family="agentic",
        camouflage=tactics["campaign_sticky"].camouflage,
        requests=int(400 * min(s, 1) ** 0.15 * tactics["campaign_sticky"].volume),
        timing=tactics["campaign_sticky"].timing,
        pivot=pivot,
        reasoning_tokens=1,
    ).frame
    cohorts.append(frame)
    payments.append(
        card(
            frame["account_id"].to_numpy(),
            unique_instruments(n, "pi_v"),
            kind="virtual_card",
            bins=np.full(n, "53999901"),
        )
    )

    # C — datacenter proxies in dense subnets, a single signup burst, no card, rotating client
    # fingerprints, rubric-grading and censorship-rewrite scaffolds; some accounts declare fake orgs.
    n = sim.n(5_500 * tactics["campaign_dc"].size, 20)
    created = START - 2 * DAY + rng.integers(0, 6 * 3600, n)
    fake_org = np.where(
        rng.random(n) < world.dc_fake_org_share,
        np.char.add("org_c", np.char.mod("%03d", rng.integers(0, max(1, n // 200), n))),
        None,
    )
    fp_pool = np.char.add("fp:c-", np.char.mod("%02d", np.arange(25)))
    frame = sim.cohort(
        "campaign",
        "campaign_dc",
        n,
        created,
        email=sim.emails(
            np.empty(n), np.char.add(np.char.add("d", np.char.mod("%02d", rng.integers(0, 50, n))), ".biz")
        ),
        org_id=fake_org,
        pool=sim.pool("dcproxy"),
        pool_share=1.0,
        device=rng.choice(fp_pool, n),
        user_agent="Mozilla/5.0",
        family=np.where(rng.random(n) < 0.55, "rubric", "rewrite"),
        camouflage=tactics["campaign_dc"].camouflage,
        requests=int(350 * min(s, 1) ** 0.15 * tactics["campaign_dc"].volume),
        timing=tactics["campaign_dc"].timing,
    ).frame
    cohorts.append(frame)
    wallet = rng.random(n) < 0.3
    payments.append(
        card(
            frame["account_id"].to_numpy()[wallet],
            unique_instruments(int(wallet.sum()), "pi_w"),
            kind="crypto",
            bins=np.full(int(wallet.sum()), None),
        )
    )

    # D — small and careful: unique everything, default SDK fingerprint, low volume; what it cannot
    # avoid is its own scaffold and its schedule.
    n = max(5, int(round((40 if s >= 0.1 else 25) * tactics["campaign_careful"].size)))
    home, asn = sim.home_ips(n)
    frame = sim.cohort(
        "campaign",
        "campaign_careful",
        n,
        sim.signup_times(n, START - 60 * DAY, START),
        email=sim.emails(np.empty(n), np.full(n, "gmail.com")),
        home_ip=home,
        home_asn=asn,
        signup_ip=home,
        device=devices(n, 1.0),
        family="careful",
        camouflage=tactics["campaign_careful"].camouflage,
        requests=int(80 * tactics["campaign_careful"].volume),
        timing=tactics["campaign_careful"].timing,
        reasoning_tokens=1,
    ).frame
    cohorts.append(frame)
    payments.append(card(frame["account_id"].to_numpy(), unique_instruments(n)))


def _with_defaults(frame: pl.DataFrame) -> pl.DataFrame:
    missing = {k: v for k, v in BEHAVIOUR_DEFAULTS.items() if k not in frame.columns}
    frame = frame.with_columns([pl.lit(v).alias(k) for k, v in missing.items()])
    frame = frame.select("account_id", "created_at", "label", "kind", *BEHAVIOUR_DEFAULTS)
    return frame.with_columns(
        pl.col("created_at").cast(pl.Int64),
        pl.col("pool").cast(pl.Int64),
        pl.col("pool_share").cast(pl.Float64),
        pl.col("requests").cast(pl.Int64),
        pl.col("camouflage").cast(pl.Float64),
        pl.col("pivot").cast(pl.Int64),
        pl.col("home_asn").cast(pl.Int64),
        pl.col("reasoning_tokens").cast(pl.Int64),
        *[
            pl.col(c).cast(pl.Utf8)
            for c in (
                "email",
                "org_id",
                "country",
                "signup_ip",
                "home_ip",
                "home_type",
                "device",
                "user_agent",
                "family",
                "timing",
            )
        ],
    )


OPERATING_HOURS = {
    "campaign_hydra": (0, 10),
    "campaign_sticky": (12, 20),
    "campaign_dc": (4, 14),
    "campaign_careful": (2, 4),
    "campaign_cells": (6, 16),
}
DIURNAL = np.array([1, 1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 6, 6, 6, 6, 7, 7, 7, 6, 5, 4, 3, 2, 1], float)


OPENERS = (
    "",
    "",
    "Hi! ",
    "Quick question: ",
    "Please ",
    "Can you ",
    "I need help: ",
    "Hey, ",
    "Could you ",
    "For my job, ",
    "For school, ",
    "Honestly, ",
)
TASKS = (
    "explain {a} to me",
    "summarize the {a} {b} article",
    "write an email to {name} about {a}",
    "fix my {a} {b} code",
    "compare {a} and {b}",
    "give me ideas for a {a} {b} party",
    "translate the {a} {b} note to Spanish",
    "plan a trip to {a} with {b}",
    "draft a cover letter for a {a} job",
    "what is a good {a} for {b}",
    "rewrite this: {a} {b} {c}",
    "help me understand {a} {b}",
    "make a shopping list for {a} and {b}",
    "write a poem about {a}",
    "debug why {a} returns {n}",
    "outline a talk on {a} {b}",
    "suggest names for a {a} {b}",
    "answer this quiz: {a} {b} {c}?",
)
CLOSERS = (
    "",
    "",
    "",
    " Thanks!",
    " Keep it short.",
    " Step by step please.",
    " In simple words.",
    " Use bullet points.",
    " Be concise.",
    " Keep it under {n} words.",
    " ASAP.",
    " Make it friendly.",
)
PARAPHRASE = (
    ("complete", "full"),
    ("Write out", "Spell out"),
    ("careful", "meticulous"),
    ("problem", "exercise"),
    ("reasoning", "thinking"),
    ("Explain", "Justify"),
    ("Reconstruct", "Recreate"),
    ("each", "every"),
    ("Grade", "Score"),
    ("Rewrite", "Rephrase"),
    ("autonomous", "independent"),
    ("Task", "Goal"),
    ("numbered", "enumerated"),
    ("Narrate", "Describe"),
)
_CAMPAIGN_FAMILIES = {
    "cot_spoofed": "campaign_hydra",
    "agentic": "campaign_sticky",
    "rubric": "campaign_dc",
    "rewrite": "campaign_dc",
    "careful": "campaign_careful",
    "cells": "campaign_cells",
}


def everyday_shapes(count: int, seed: int) -> list[str]:
    """Benign prompt shapes that share everyday phrasing (openers, stock closers) without being
    anyone's scaffold."""
    rng = np.random.default_rng(seed + 99)
    shapes = {
        OPENERS[rng.integers(len(OPENERS))] + TASKS[rng.integers(len(TASKS))] + CLOSERS[rng.integers(len(CLOSERS))]
        for _ in range(count)
    }
    return sorted(shape[0].upper() + shape[1:] for shape in shapes)


def paraphrases(scaffold: str, count: int, seed: int) -> list[str]:
    """``count`` rewordings of a scaffold (the first is the scaffold itself)."""
    rng = np.random.default_rng(seed)
    variants = [scaffold]
    for _ in range(count - 1):
        text = scaffold
        for old, new in PARAPHRASE:
            if old in text and rng.random() < 0.5:
                text = text.replace(old, new)
        variants.append(text)
    return variants


def _formats(accounts: pl.DataFrame, world: World | None = None, seed: int = 0) -> dict[str, list[str]]:
    """Prompt format strings per family; slots {a}…{g}, {n}, {name}."""
    world = world or World.fixed()
    free = BENIGN_SHAPES + everyday_shapes(world.everyday_shapes, seed) if world.everyday_shapes else BENIGN_SHAPES
    formats = {
        "free": free,
        "popular": POPULAR_TEMPLATES + [POPULAR_SYSTEM + "\n" + f for f in free[:4]],
        "evalco": [
            "Evaluation item {n}. Solve the following and show your reasoning step by step, then give the "
            "final answer on its own line.\nItem: {a} {b} {c}?"
        ],
        "hackathon": ["Hackathon starter kit: build a {a} app that uses {b}. Return complete runnable code."]
        + free[:3],
        "course": [
            "MATH 201 problem set {n}. Solve the following problem and show every step of your reasoning, "
            "then state the final answer.\nProblem: {a} {b} {c}?",
            "MATH 201 problem set {n}. Explain step by step how to approach this problem.\nProblem: {a} {b}?",
        ]
        + free[:2],
        "cot_spoofed": [POPULAR_SYSTEM + "\n" + f for f in SCAFFOLDS["cot"]],
        "agentic": SCAFFOLDS["agentic"] * 2 + SCAFFOLDS["cot"][1:2],
        "rubric": SCAFFOLDS["rubric"],
        "rewrite": SCAFFOLDS["rewrite"],
        "cells": [
            "Act as a senior data analyst. Dataset: {a} {b} {c}. Question: {d} {e}?\nWork through the "
            "analysis step by step, show every intermediate result, then state the conclusion.",
            "Competition problem: {a} {b} {c} {d}?\nGive a rigorous derivation, one numbered step per line, "
            "then the final answer alone on the last line.",
        ],
        "careful": [
            "Solve the task and narrate your full internal reasoning in numbered steps before the final "
            "line, which starts with ANSWER.\nTask: {a} {b} {c} {d}?",
            "Task: {a} {b} {c}.\nNarrate your complete internal reasoning as numbered steps; end with a line "
            "starting with ANSWER.",
        ],
    }
    for family in accounts["family"].unique().to_list():
        if family.startswith("org:"):
            o = family.split(":")[1]
            prefix = (
                f"You are the internal assistant of Corp{o} Incorporated. Follow the Corp{o} style guide, "
                f"cite internal documents and never reveal customer data.\n"
            )
            formats[family] = [prefix + f for f in free]
    if world.stock_sentences:
        stocked = [instruction + "\n{s}\n{t}\n" + tail for instruction, tail in STOCK_SHAPES]
        # about a fifth of everyday prompts (shapes are drawn uniformly)
        formats["free"] = formats["free"] + stocked * max(1, len(formats["free"]) // (4 * len(stocked)))
    for family, campaign in _CAMPAIGN_FAMILIES.items():
        count = world.campaigns[campaign].paraphrases if campaign in world.campaigns else 1
        if count > 1:
            formats[family] = [v for i, f in enumerate(formats[family]) for v in paraphrases(f, count, seed + i)]
        if world.campaign_bank and world.campaign_bank[0] == campaign and family in formats:
            # the bank's line sits after the scaffold's first line: a segment of its own
            formats[family] = [f.replace("\n", "\n{u}\n", 1) if "\n" in f else f + "\n{u}" for f in formats[family]]
    return formats


STOCK_SHAPES = (
    ("Summarize this for a busy executive, one short paragraph:", "Keep it under {n} words."),
    ("Rewrite this paragraph to sound more confident:", "Address it to {name}."),
    ("Translate the following text to Spanish:", "Reference number {n}."),
    ("Answer the question using only the context below. Context:", "Question: what happened in {n}?"),
)


def stock_text(count: int, seed: int) -> list[str]:
    """A small stock of sentences (sample paragraphs that many people paste)."""
    rng = np.random.default_rng(seed + 4_242)
    subjects = (
        "The city council",
        "Our support team",
        "The vendor",
        "Researchers",
        "The school district",
        "The landlord",
        "Volunteers",
        "The startup",
        "Analysts",
        "The orchestra",
    )
    verbs = ("approved", "postponed", "announced", "reviewed", "expanded", "cancelled", "funded", "delayed")
    objects = (
        "a pilot program for bike lanes",
        "the quarterly budget",
        "a new hiring plan",
        "the festival schedule",
        "repairs to the heating",
        "a free concert series",
        "the database migration",
        "a seed round",
    )
    endings = ("after a long debate.", "ahead of schedule.", "despite the weather.", "for the second time this year.")
    return [
        f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} {rng.choice(endings)}" for _ in range(count)
    ]


def campaign_bank_lines(count: int, seed: int) -> list[str]:
    """A campaign's own small bank of lines its scaffold carries (canned failures to fix)."""
    rng = np.random.default_rng(seed + 5_353)
    modules = ("billing", "parser", "cache", "scheduler", "auth", "export", "search", "upload")
    return [
        f"FAILED tests/test_{rng.choice(modules)}.py::test_{rng.choice(modules)}_{i} - AssertionError: "
        f"expected {rng.integers(1, 99)} got {rng.integers(100, 999)}"
        for i in range(count)
    ]


def _requests(sim: Simulator, accounts: pl.DataFrame) -> pl.DataFrame:
    """Request rows without prompt text yet: owner, time, network, device, model, format id, tokens."""
    rng = sim.rng
    missing = accounts["home_ip"].is_null().to_numpy()
    home, asn = sim.home_ips(int(missing.sum()))
    home_ip = accounts["home_ip"].to_numpy().astype(object)
    home_asn = accounts["home_asn"].to_numpy()
    home_ip[missing], home_asn[missing] = home, asn
    counts = accounts["requests"].to_numpy()
    owner = np.repeat(np.arange(accounts.height), counts)
    r = len(owner)
    label = accounts["label"].to_numpy()
    timing = accounts["timing"].to_numpy()
    created = accounts["created_at"].to_numpy()
    end = START + DAYS * DAY
    begin = np.maximum(created, START)[owner]
    ts = begin + rng.random(r) * np.maximum(end - begin, 3600)
    diurnal = timing[owner] == "diurnal"
    day = (ts // DAY).astype(np.int64)
    hour = rng.choice(24, r, p=DIURNAL / DIURNAL.sum())
    ts = np.where(diurnal, day * DAY + hour * 3600 + rng.random(r) * 3600, ts)
    ts = np.maximum(ts, created[owner] + 60)
    for campaign, (h0, h1) in OPERATING_HOURS.items():
        rows = np.flatnonzero(label[owner] == campaign)
        if len(rows):
            ts[rows] = _scheduled(rng, owner[rows], timing[owner[rows][0]], h0, h1, created)
    ts = np.clip(ts, START, end - 1).astype(np.int64)
    # network: a shared pool for part of the traffic, the account's own address otherwise
    pool = accounts["pool"].to_numpy()[owner]
    through_pool = (pool >= 0) & (rng.random(r) < accounts["pool_share"].to_numpy()[owner])
    size = np.where(pool >= 0, sim.pool_offset[np.maximum(pool, 0) + 1] - sim.pool_offset[np.maximum(pool, 0)], 1)
    pick = sim.pool_offset[np.maximum(pool, 0)] + (rng.random(r) * size).astype(np.int64)
    ip = np.where(through_pool, sim.pool_ip[pick], home_ip[owner])
    asn_col = np.where(through_pool, sim.pool_asn[pick], home_asn[owner])
    ip_type = np.where(through_pool, sim.pool_type[pick], accounts["home_type"].to_numpy()[owner])
    # models: benign customers adopt the new model gradually, campaigns pivot in lockstep
    pivot = accounts["pivot"].to_numpy()[owner]
    adopt_at = START + NEW_MODEL_DAY * DAY + rng.random(accounts.height) * 10 * DAY
    adopter = rng.random(accounts.height) < 0.4
    preferred = rng.integers(0, 3, accounts.height)
    model = MODELS[np.where(rng.random(r) < 0.7, preferred[owner], rng.integers(0, 3, r))]
    benign_switch = (pivot == 0) & adopter[owner] & (ts >= adopt_at[owner])
    model = np.where(benign_switch | ((pivot > 0) & (ts >= pivot)), NEW_MODEL, np.where(pivot > 0, MODELS[0], model))
    reasoning = accounts["reasoning_tokens"].to_numpy()[owner] > 0
    output_tokens = np.where(reasoning, rng.lognormal(7.0, 0.4, r), rng.lognormal(5.5, 0.8, r)).astype(np.int64)
    camouflaged = rng.random(r) < accounts["camouflage"].to_numpy()[owner]
    return pl.DataFrame(
        {
            "owner": owner,
            "ts": ts,
            "ip": ip.astype(str),
            "asn": asn_col.astype(np.int64),
            "ip_type": ip_type,
            "model": model,
            "output_tokens": output_tokens,
            "camouflaged": camouflaged,
        }
    ).with_columns(pl.int_range(pl.len()).alias("seq"))


def _scheduled(
    rng: np.random.Generator, owner: np.ndarray, timing: str, h0: int, h1: int, created: np.ndarray
) -> np.ndarray:
    """A scheduler's timeline: requests spread over daily operating hours and dealt to accounts in turn."""
    members, position = np.unique(owner, return_inverse=True)
    total = len(owner)
    first_day = 3 if timing != "careful" else 0
    day = rng.integers(first_day, DAYS, total)
    times = np.sort(START + day * DAY + h0 * 3600 + rng.random(total) * (h1 - h0) * 3600)
    if timing == "careful":
        return times[rng.permutation(total)]
    occurrence = np.zeros(total, np.int64)
    order = np.argsort(position, kind="stable")
    counts = np.bincount(position)
    occurrence[order] = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    slot = np.minimum(occurrence * len(members) + position, total - 1)
    result = times[slot]
    if timing == "scheduled_jitter":
        result = result + rng.normal(0, 900, total)
    return np.maximum(result, created[owner] + 60)


def _prompts(sim: Simulator, rows: pl.DataFrame, accounts: pl.DataFrame, formats: dict[str, list[str]]) -> pl.DataFrame:
    """Fill each request's format (chosen from its account's family, or camouflage) with random slots."""
    rng = sim.rng
    n = rows.height
    family = np.where(rows["camouflaged"].to_numpy(), "free", accounts["family"].to_numpy()[rows["owner"].to_numpy()])
    names = sorted(formats)
    fmt_ids: dict[tuple[str, int], int] = {}
    all_formats: list[str] = []
    for fam in names:
        for i, fmt in enumerate(formats[fam]):
            fmt_ids[(fam, i)] = len(all_formats)
            all_formats.append(fmt)
    sizes = np.array([len(formats[f]) for f in names])
    fam_code = np.searchsorted(np.array(names), family)
    variant = (rng.random(n) * sizes[fam_code]).astype(np.int64)
    base = np.cumsum(np.r_[0, sizes])[:-1]
    fmt = base[fam_code] + variant
    filler = pl.Series(sim.filler_pool)
    slots = {k: filler.gather(rng.integers(0, len(filler), n)) for k in "abcdefg"}
    slots["n"] = pl.Series(rng.integers(1, 10_000, n)).cast(pl.Utf8)
    slots["name"] = pl.Series(NAMES).gather(rng.integers(0, len(NAMES), n))
    if sim.world.stock_sentences:
        stock = pl.Series(stock_text(sim.world.stock_sentences, sim.config.seed))
        slots["s"], slots["t"] = (stock.gather(rng.integers(0, len(stock), n)) for _ in range(2))
    if sim.world.campaign_bank:
        bank = pl.Series(campaign_bank_lines(sim.world.campaign_bank[1], sim.config.seed))
        slots["u"] = bank.gather(rng.integers(0, len(bank), n))
    frame = pl.DataFrame({"seq": rows["seq"], "fmt": fmt, **slots})
    pieces = []
    for fid in np.unique(fmt):
        part = frame.filter(pl.col("fmt") == fid)
        pieces.append(part.select("seq", _fill(all_formats[fid]).alias("prompt")))
    return pl.concat(pieces)


def _fill(fmt: str) -> pl.Expr:
    import re

    parts: list[pl.Expr] = []
    last = 0
    for match in re.finditer(r"\{(a|b|c|d|e|f|g|n|name|s|t|u)\}", fmt):
        parts.append(pl.lit(fmt[last : match.start()].replace("{{", "{").replace("}}", "}")))
        parts.append(pl.col(match.group(1)))
        last = match.end()
    parts.append(pl.lit(fmt[last:].replace("{{", "{").replace("}}", "}")))
    return pl.concat_str(parts)


def _write(
    out_dir: Path, config: SimulationConfig, accounts: pl.DataFrame, payments: pl.DataFrame, requests: pl.DataFrame
) -> dict[str, object]:
    out_dir = Path(out_dir)
    input_dir = out_dir / "input"
    (input_dir / "requests").mkdir(parents=True, exist_ok=True)
    sim = Simulator(config)  # a fresh generator for prompt text, independent of the population draws
    sim.rng = np.random.default_rng(config.seed + 1)
    formats = _formats(accounts, sim.world, config.seed)
    to_iso = pl.from_epoch(pl.col("created_at"), "s").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    table = accounts.select("account_id", to_iso.alias("created_at"), "email", "org_id", "country", "signup_ip")
    _save(table, input_dir / "accounts", config.fmt)
    _save(payments.with_columns(pl.lit(None, pl.Utf8).alias("added_at")), input_dir / "payments", config.fmt)
    labels = accounts.select("account_id", "label", "kind")
    labels.write_parquet(out_dir / "labels.parquet")
    labels.write_csv(out_dir / "labels.csv")
    ids = accounts["account_id"]
    devices = accounts["device"]
    agents = accounts["user_agent"]
    gaps = np.random.default_rng(config.seed + 2)
    days = requests.with_columns((pl.col("ts") // DAY).alias("day")).partition_by(
        "day", as_dict=True, maintain_order=True
    )
    for (day,), rows in sorted(days.items()):
        prompts = _prompts(sim, rows, accounts, formats)
        frame = rows.join(prompts, on="seq").sort("ts", "seq")
        frame = frame.with_columns(
            ids.gather(frame["owner"]).alias("account_id"),
            devices.gather(frame["owner"]).alias("device_id"),
            agents.gather(frame["owner"]).alias("user_agent"),
        ).select(
            (pl.lit("req_") + pl.col("seq").cast(pl.Utf8)).alias("request_id"),
            "account_id",
            pl.from_epoch("ts", "s").dt.strftime("%Y-%m-%dT%H:%M:%SZ").alias("ts"),
            "ip",
            "asn",
            "ip_type",
            "device_id",
            "user_agent",
            "model",
            "prompt",
            (pl.col("prompt").str.len_chars() // 4 + 20).alias("input_tokens"),
            "output_tokens",
        )
        frame = _with_gaps(frame, sim.world.missing, gaps)
        date = pl.from_epoch(pl.lit(int(day) * DAY), "s").dt.strftime("%Y-%m-%d")
        date_text = pl.select(date).item()
        _save(frame, input_dir / "requests" / f"date={date_text}" / "part-0", config.fmt)
    summary = {
        "accounts": accounts.height,
        "requests": requests.height,
        "payments": payments.height,
        "campaign_accounts": int((accounts["label"] != "benign").sum()),
        "labels": str(out_dir / "labels.parquet"),
        "input": str(input_dir),
        "scale": config.scale,
        "seed": config.seed,
        "world": config.world,
        "world_spec": sim.world.describe(),
    }
    (out_dir / "simulation.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _with_gaps(frame: pl.DataFrame, missing: dict[str, float], rng: np.random.Generator) -> pl.DataFrame:
    """Optional columns left empty on a share of rows, or absent altogether (share 1)."""
    for column, share in missing.items():
        if share >= 1.0:
            frame = frame.drop(column)
        elif share > 0:
            frame = frame.with_columns(
                pl.when(pl.Series(rng.random(frame.height) < share)).then(None).otherwise(pl.col(column)).alias(column)
            )
    return frame


def _save(frame: pl.DataFrame, stem: Path, fmt: str) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        frame.write_parquet(stem.with_suffix(".parquet"))
    elif fmt == "csv":
        frame.write_csv(stem.with_suffix(".csv"))
    else:
        frame.write_ndjson(stem.with_suffix(".jsonl"))
