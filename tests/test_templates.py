"""Requests filled into one scaffold share a template; unrelated prompts do not."""

from __future__ import annotations

import random

import polars as pl

from linkage.settings import TemplateSettings
from linkage.templates import TemplateMiner

WORDS = "apple river stone cloud market garden engine signal forest budget ladder window planet violin".split()


def _filler(rng: random.Random, n: int = 7) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _templates_of(prompts: list[str], settings: TemplateSettings | None = None) -> list[str | None]:
    settings = settings or TemplateSettings(max_prompts_per_account=10_000)
    miner = TemplateMiner(settings)
    accounts = pl.Series([f"a{i}" for i in range(len(prompts))])
    per_request = miner.add_batch(accounts, pl.Series(prompts))
    counts = per_request.filter(pl.col("prompt_key").is_not_null()).group_by("prompt_key").len("requests")
    result = miner.finish(counts)
    return per_request.join(result.assignments, on="prompt_key", how="left", maintain_order="left")[
        "template_id"
    ].to_list()


def test_same_scaffold_different_fillers_share_a_template() -> None:
    rng = random.Random(1)
    cot = [
        f"Here is a problem and its final answer. Write the full step-by-step reasoning.\nProblem: "
        f"{_filler(rng)}?\nAnswer: {rng.randint(1, 9999)}"
        for _ in range(20)
    ]
    agent = [
        f"You are a coding agent in repo {_filler(rng, 2)}-{rng.randint(1, 99)}. Task: {_filler(rng)}.\n"
        f"Emit each tool call as JSON."
        for _ in range(20)
    ]
    free = [f"{_filler(rng, 9)} {_filler(rng, 5)}" for _ in range(20)]
    ids = _templates_of(cot + agent + free)
    assert len(set(ids[:20])) == 1 and ids[0] is not None
    assert len(set(ids[20:40])) == 1 and ids[20] is not None
    assert ids[0] != ids[20], "different tasks must not share a template"
    assert all(t is None for t in ids[40:]), "free-form prompts have no template"


STOCK_SENTENCES = [
    "The city council approved a pilot program for protected bike lanes downtown.",
    "Quarterly revenue grew on the back of subscription renewals.",
    "The landlord agreed to repair the heating before the lease renewal.",
    "Volunteers planted three thousand trees along the river this spring.",
    "The vendor missed two delivery deadlines and offered a discount.",
    "Ticket sales for the festival sold out within four hours of opening.",
]
STOCK_INSTRUCTIONS = [
    "Summarize this for a busy executive, one short paragraph:",
    "Rewrite this paragraph to sound more confident:",
]


def test_a_template_says_how_many_accounts_fill_it_twice() -> None:
    """Unrelated people who each send an everyday instruction around two sentences from a small stock
    (a demo text, a sample paragraph) meet on the same combination by chance: every sentence recurs,
    so the combination reads as a scaffold held by a few accounts, as rare as a shared card. No
    account fills it twice (``repeated_by`` 0: detection does not count it as evidence). A scaffold
    its accounts fill again and again is repeated by each of them."""
    rng = random.Random(6)
    combos = [
        (instruction, first, second)
        for instruction in STOCK_INSTRUCTIONS
        for first in STOCK_SENTENCES
        for second in STOCK_SENTENCES
        if first != second
    ]
    rng.shuffle(combos)
    people = 40  # person i sends combinations i and i + 1: each combination is two people's, once each
    stock = [
        "\n".join(combos[(i + j) % len(combos)]) + f"\nKeep it under {rng.randint(40, 200)} words."
        for i in range(people)
        for j in (0, 1)
    ]
    scaffold = [
        f"Here is a problem and its final answer. Write the full step-by-step reasoning.\nProblem: {_filler(rng)}?\n"
        f"Answer: {rng.randint(1, 9999)}"
        for _ in range(30)
    ]
    accounts = [f"person{i}" for i in range(people) for _ in (0, 1)] + [f"op{i // 3}" for i in range(30)]
    # (reworded scaffolds are merged first; combinations that share most of their text would merge
    # there, so that step is left out to see the combinations themselves)
    miner = TemplateMiner(TemplateSettings(max_prompts_per_account=10_000, near_duplicate_jaccard=1.0))
    per_request = miner.add_batch(pl.Series(accounts), pl.Series(stock + scaffold))
    result = miner.finish(per_request.group_by("prompt_key").len("requests"))
    ids = per_request.join(result.assignments, on="prompt_key", how="left", maintain_order="left")["template_id"]
    repeated_by = dict(result.templates.select("template_id", "repeated_by").iter_rows())
    combinations = [t for t in ids[: len(stock)] if t is not None]
    assert combinations and max(combinations.count(t) for t in set(combinations)) == 2  # two holders each
    assert {repeated_by[t] for t in combinations} == {0}
    operated = ids[len(stock) :]
    assert operated.n_unique() == 1 and repeated_by[operated[0]] == 10


def test_scaffold_behind_a_popular_system_prompt_is_its_own_template() -> None:
    rng = random.Random(2)
    popular = [f"You are a helpful assistant.\n{_filler(rng, 9)}?" for _ in range(20)]
    wrapped = [
        f"You are a helpful assistant.\nReconstruct the full chain of thought.\nQuestion: {_filler(rng)}?"
        for _ in range(20)
    ]
    ids = _templates_of(popular + wrapped)
    assert len(set(ids[:20])) == 1 and len(set(ids[20:])) == 1
    assert ids[0] != ids[20]


def test_masked_slots_numbers_ids_urls_quotes() -> None:
    prompts = [
        f'Fetch https://api.example.com/v1/items/{i} for user_{1000 + i} and reply "{WORDS[i % 7]}" '
        f"with id {i:08x}-{i:04d}."
        for i in range(12)
    ]
    ids = _templates_of(prompts)
    assert len(set(ids)) == 1 and ids[0] is not None


def test_near_duplicate_scaffolds_merge() -> None:
    rng = random.Random(3)
    a = [
        f"Write out the complete step by step reasoning that leads to the answer, as a careful expert would.\n"
        f"Problem: {_filler(rng)}?"
        for _ in range(10)
    ]
    b = [
        f"Write out the complete step by step reasoning that leads to the answer, as a careful expert would do.\n"
        f"Problem: {_filler(rng)}?"
        for _ in range(10)
    ]
    ids = _templates_of(a + b, TemplateSettings(max_prompts_per_account=10_000, near_duplicate_jaccard=0.6))
    assert len(set(ids)) == 1


def _merged_one_by_one(keys: list[int], texts: list[str], threshold: float) -> dict[int, int]:
    """The near-duplicate merge as datasketch spells it: a MinHash per text, queried against the
    LSH of the earlier texts, then inserted."""
    from datasketch import MinHash, MinHashLSH

    from linkage.templates import _SEED

    lsh = MinHashLSH(threshold=threshold, num_perm=64)
    prototype = MinHash(num_perm=64, seed=_SEED)
    canonical: dict[int, int] = {}
    for key, text in zip(keys, texts, strict=True):
        words = text.split()
        shingles = [" ".join(words[i : i + 2]).encode() for i in range(len(words) - 1)]
        if len(shingles) < 3:
            continue
        signature = MinHash(num_perm=64, seed=_SEED, permutations=prototype.permutations, scheme=prototype.scheme)
        signature.update_batch(shingles)
        canonical[key] = min((canonical[m] for m in lsh.query(signature)), default=key)
        lsh.insert(key, signature)
    return canonical


def test_near_duplicates_merged_at_once_as_one_by_one() -> None:
    """Signatures and bands computed for all texts at once merge exactly what datasketch's MinHash
    and LSH merge text by text, in the same order of precedence."""
    from linkage.templates import near_duplicate_canonical

    rng = random.Random(11)
    vocabulary = [f"w{i}" for i in range(200)] + ["é", "日本", "a\u00a0b"]
    scaffolds = [[rng.choice(vocabulary) for _ in range(rng.randint(1, 25))] for _ in range(150)]
    texts = []
    for _ in range(1500):
        words = list(rng.choice(scaffolds))
        for _ in range(rng.randint(0, 3)):  # a few words reworded
            words[rng.randrange(len(words))] = rng.choice(vocabulary)
        texts.append(rng.choice([" ", "  ", "\n", "\t"]).join(words))
    keys = list(dict.fromkeys(rng.getrandbits(64) for _ in texts))
    texts = texts[: len(keys)]
    for threshold in (0.3, 0.6, 0.9):
        expected = _merged_one_by_one(keys, texts, threshold)
        merged = near_duplicate_canonical(keys, texts, threshold)
        assert merged == expected and list(merged) == list(expected)
        assert sum(key != into for key, into in merged.items()) > 100  # merges happened
    assert near_duplicate_canonical([1, 2], ["too short", "a b c"], 0.6) == {}


def test_prompt_sample_is_each_accounts_smallest_distinct_hashes_whatever_the_layout() -> None:
    """The sample is per account the ``k`` distinct texts of smallest hash over all rows: the same
    whether the rows come as one batch or as several files merged in any order."""
    from linkage.templates import _SEED

    rng = random.Random(5)
    n = 4000
    accounts = [f"a{rng.randrange(60)}" for _ in range(n)]
    # few distinct texts per account, so repeats of one text are common
    prompts = [None if rng.random() < 0.1 else _filler(rng, 1) + " " + rng.choice(WORDS) for _ in range(n)]
    hashes = pl.Series(prompts).hash(_SEED + 1).to_list()
    for k in (1, 3, 12):
        expected: dict[str, set[int]] = {}
        for account in set(accounts):
            texts = {hashes[r] for r in range(n) if accounts[r] == account and prompts[r] is not None}
            expected[account] = set(sorted(texts)[:k])
        layouts = {"one batch": [range(n)], "files": [range(0, 1500), range(1500, 1700), range(1700, n)]}
        layouts["files, reversed"] = list(reversed(layouts["files"]))
        for name, parts in layouts.items():
            merged = TemplateMiner(TemplateSettings(max_prompts_per_account=k))
            for part in parts:  # each part sampled on its own (a file), then merged (as ingest and rebuild do)
                one_file = TemplateMiner(TemplateSettings(max_prompts_per_account=k))
                one_file.add_batch(
                    pl.Series([accounts[r] for r in part]), pl.Series([prompts[r] for r in part], dtype=pl.Utf8)
                )
                merged.absorb(one_file.state())
            got = merged.state()["candidates"].group_by(pl.col("account_id").cast(pl.Utf8)).agg("prompt_key")
            assert {a: set(keys) for a, keys in got.iter_rows()} == {a: e for a, e in expected.items() if e}, (name, k)
            texts = merged._sample.texts()
            assert texts["prompt_key"].is_unique().all() and texts["prompt_key"].is_sorted()
            by_key = dict(zip(hashes, prompts))
            assert all(by_key[key] == text for key, text in texts.iter_rows())


def test_every_request_with_a_sampled_text_gets_its_template() -> None:
    """Texts outside an account's own sample still get the template when another account's sample
    holds the same text; unsampled texts get no row (reasoning_style null = not mined)."""
    rng = random.Random(9)
    scaffold = [f"Grade the response below against the rubric.\nResponse: {_filler(rng)}." for _ in range(30)]
    settings = TemplateSettings(max_prompts_per_account=2)
    miner = TemplateMiner(settings)
    # account a sends every text; b..p two each (so every text is in someone's sample)
    accounts = ["a"] * 30 + [chr(ord("b") + i // 2) for i in range(30)]
    per_request = miner.add_batch(pl.Series(accounts), pl.Series(scaffold + scaffold))
    counts = per_request.group_by("prompt_key").len("requests")
    result = miner.finish(counts)
    mined = per_request.join(result.assignments, on="prompt_key", how="left", maintain_order="left")
    assert mined["template_id"].null_count() == 0 and mined["template_id"].n_unique() == 1
    assert mined["reasoning_style"].all()


def test_a_popular_label_does_not_turn_the_instruction_beside_it_into_filler() -> None:
    """'Task:' opens hundreds of unrelated prompts; a scaffold that starts with it keeps its own
    instruction text as scaffold (the sibling rule's reference is a segment long enough to be one)."""
    rng = random.Random(4)
    labelled = [f"Task: {_filler(rng, 9)}." for _ in range(400)]
    careful = [
        f"Task: {_filler(rng, 9)}.\nNarrate your complete internal reasoning as numbered steps; end with a line "
        f"starting with ANSWER."
        for _ in range(30)
    ]
    ids = _templates_of(labelled + careful)
    assert ids[400] is not None and len(set(ids[400:])) == 1
    assert ids[400] not in set(ids[:400])


def test_positions_are_each_requests_place_in_the_sample() -> None:
    """Each request's text found in the sample's keys by the hash table, as a join would find it:
    sampled texts at their place, texts left out of the sample and requests without a prompt null."""
    rng = random.Random(4)
    miner = TemplateMiner(TemplateSettings(max_prompts_per_account=3))
    accounts = [f"a{rng.randrange(40)}" for _ in range(2000)]
    prompts = [None if rng.random() < 0.1 else _filler(rng, 3) for _ in range(2000)]
    per_request = miner.add_batch(pl.Series(accounts), pl.Series(prompts, dtype=pl.Utf8))
    keys = miner.sampled_keys()
    expected = per_request.join(
        pl.DataFrame({"prompt_key": keys}).with_row_index("position"),
        on="prompt_key",
        how="left",
        maintain_order="left",
    )["position"]
    got = miner.positions(per_request["prompt_key"])
    assert got.dtype == expected.dtype and got.equals(expected)
    assert 0 < got.null_count() < 2000 and got.drop_nulls().n_unique() == len(keys)
    assert got.filter(per_request["prompt_key"].is_null()).null_count() == per_request["prompt_key"].null_count() > 0
