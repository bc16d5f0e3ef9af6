"""Prompt-template mining: requests filled into one generation scaffold share a template id.

Two phases so that the request log streams:

1. per batch (:meth:`TemplateMiner.add_batch`): mask variable slots, cut the masked prompt
   into sentence/line segments and hash them; keep one row per distinct masked prompt.
2. once over everything (:meth:`TemplateMiner.finish`): a segment that occurs in at least
   ``min_segment_accounts`` *distinct* masked prompts is scaffold; anything rarer is a
   filled slot. A prompt's template is the ordered scaffold segments with each run of slots
   collapsed into one. A prompt with no scaffold but sent that often verbatim (after
   masking) is its own template. Templates whose scaffold text is near-identical (MinHash
   LSH over word shingles) are merged.

Counting support over distinct masked prompts, not requests, is what tells a scaffold
(seen around many different fillers) from a filler that is merely re-sent often.
"""
from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field

import numba
import numpy as np
import polars as pl

from .normalize import REASONING_STYLE, mask_prompts, split_segments
from .settings import TemplateSettings

SLOT = 0  # segment hash standing for a run of filled slots
_SEED = 7


@dataclass
class TemplateResult:
    """prompt_key → template_id, and one row per template for the graph."""

    assignments: pl.DataFrame  # prompt_key (u64), template_id (str)
    templates: pl.DataFrame  # template_id, text, example, distinct_prompts, scaffold_segments


_lsh_import: threading.Thread | None = None


def _prefetch_lsh() -> None:
    """Import datasketch (it pulls in scipy: about a second) in the background, once per process, so
    that the near-duplicate merge at the end of mining does not wait for it."""
    global _lsh_import
    if _lsh_import is None:
        _lsh_import = threading.Thread(target=importlib.import_module, args=("datasketch",), daemon=True)
        _lsh_import.start()


@dataclass
class TemplateMiner:
    settings: TemplateSettings
    _distinct: list[pl.DataFrame] = field(default_factory=list)
    _segment_text: list[pl.DataFrame] = field(default_factory=list)
    _examples: list[pl.DataFrame] = field(default_factory=list)
    # (prompt_key, token) rows of every signature, in order: set by finish() for the template texts
    _tokens: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema={"prompt_key": pl.UInt64, "token": pl.UInt64}))

    def __post_init__(self) -> None:
        _prefetch_lsh()

    def state(self) -> dict[str, pl.DataFrame]:
        """What this miner learnt from its batches, to be stored and merged later (incremental rebuilds)."""
        return {
            "segments": pl.concat(self._distinct) if self._distinct else
            pl.DataFrame(schema={"prompt_key": pl.UInt64, "segment_key": pl.UInt64, "batch": pl.Int32}),
            "segment_text": self._texts(),
            "examples": pl.concat(self._examples) if self._examples else
            pl.DataFrame(schema={"prompt_key": pl.UInt64, "example": pl.Utf8}),
        }

    @classmethod
    def from_states(cls, settings: TemplateSettings, states: list[dict[str, pl.DataFrame]]) -> "TemplateMiner":
        """A miner equal to one that had seen the states' batches in this order."""
        miner = cls(settings)
        offset = 0
        for state in states:
            segments = state["segments"]
            miner._distinct.append(segments.with_columns((pl.col("batch") + offset).cast(pl.Int32)))
            offset += int(segments["batch"].max()) + 1 if segments.height else 0
            miner._segment_text.append(state["segment_text"])
            miner._examples.append(state["examples"])
        return miner

    def _segments_once(self) -> pl.DataFrame:
        """All batches' (prompt_key, segment_key) rows, each distinct prompt once, in segment order."""
        if not self._distinct:
            return pl.DataFrame(schema={"prompt_key": pl.UInt64, "segment_key": pl.UInt64})
        segments = pl.concat(self._distinct)
        # a prompt's rows are contiguous within its batch, and batches are in order: each prompt
        # counts with its rows from the first batch that saw it
        key, batch = segments["prompt_key"].to_numpy(), segments["batch"].to_numpy()
        starts = np.flatnonzero(np.r_[True, (key[1:] != key[:-1]) | (batch[1:] != batch[:-1])]) if len(key) \
            else np.zeros(0, np.int64)
        heads = pl.Series(key[starts])
        segments = segments.drop("batch")
        if heads.n_unique() == heads.len():  # no prompt seen in two batches (cheap to establish)
            return segments
        first_seen = heads.is_first_distinct().to_numpy()
        return segments.filter(pl.Series(np.repeat(first_seen, np.diff(np.r_[starts, len(key)]))))

    def add_batch(self, accounts: pl.Series, prompts: pl.Series) -> pl.DataFrame:
        """Per request: ``prompt_key`` (hash of the masked prompt; null when the request has no prompt
        or was not sampled) and ``reasoning_style``.

        Only up to ``max_prompts_per_account`` prompts per account and batch are mined, picked by
        a hash of their text: a campaign account's thousandth scaffolded prompt says nothing its
        tenth did not, and masking text is the costliest step of the run."""
        sampled = _sample_per_account(accounts, prompts, self.settings.max_prompts_per_account)
        rows = np.flatnonzero(sampled)
        chosen = prompts.gather(rows)  # all text work happens on the sample only
        # mask each distinct raw prompt once: retries and verbatim repeats are common in real logs
        raw_key = chosen.hash(_SEED + 1)
        distinct = pl.DataFrame({"raw_key": raw_key, "prompt": chosen}).unique("raw_key", keep="first")
        distinct = distinct.with_columns(mask_prompts(distinct["prompt"], self.settings.max_prompt_chars).alias("masked"))
        masked = pl.DataFrame({"raw_key": raw_key}).join(distinct.select("raw_key", "masked"), on="raw_key",
                                                         how="left", maintain_order="left")["masked"]
        keys = masked.hash(_SEED).alias("prompt_key")
        reasoning = chosen.str.slice(0, self.settings.max_prompt_chars) \
            .str.contains_any(REASONING_STYLE, ascii_case_insensitive=True).fill_null(False)
        full_keys = pl.repeat(None, len(prompts), dtype=pl.UInt64, eager=True).alias("prompt_key")
        full_reasoning = pl.repeat(False, len(prompts), dtype=pl.Boolean, eager=True).alias("reasoning_style")
        if len(rows):
            full_keys = full_keys.scatter(rows, keys)
            full_reasoning = full_reasoning.scatter(rows, reasoning)
        per_request = pl.DataFrame({"prompt_key": full_keys, "reasoning_style": full_reasoning})
        prompts = chosen
        first = (pl.DataFrame({"prompt_key": keys, "masked": masked, "raw": prompts})
                 .filter(pl.col("prompt_key").is_not_null())
                 .unique("prompt_key", keep="first", maintain_order=True))
        exploded = split_segments(first["prompt_key"], first["masked"], self.settings.max_segments) \
            .rename({"key": "prompt_key"}).with_columns(pl.col("segment").hash(_SEED).alias("segment_key"))
        self._distinct.append(exploded.select("prompt_key", "segment_key",
                                              pl.lit(len(self._distinct), pl.Int32).alias("batch")))
        repeated = exploded.group_by("segment_key").agg(pl.col("segment").first(), pl.len().alias("n")) \
            .filter(pl.col("n") >= 2).select("segment_key", "segment")
        self._segment_text.append(repeated)
        sampled = first.filter(pl.col("prompt_key") % self.settings.example_sample_modulus == 0)
        self._examples.append(sampled.select("prompt_key", pl.col("raw").str.slice(0, 600).alias("example")))
        return per_request

    def finish(self, request_counts: pl.DataFrame) -> TemplateResult:
        """``request_counts``: prompt_key, requests (after de-duplication of requests)."""
        segments = self._segments_once()
        support = segments.lazy().group_by("segment_key").agg(
            pl.col("prompt_key").n_unique().cast(pl.UInt32).alias("support")).collect(engine="streaming")
        with_support = segments.join(support, on="segment_key", how="left", maintain_order="left")
        # rows of a prompt are contiguous: per-prompt work is done on runs, not by grouping
        key = with_support["prompt_key"].to_numpy()
        starts = np.r_[True, key[1:] != key[:-1]] if len(key) else np.zeros(0, bool)
        run_starts = np.flatnonzero(starts)
        support_values = with_support["support"].to_numpy()
        # a segment far rarer than the scaffold around it is a filled slot that happened to repeat
        # (a repository name typed into "You are an agent in repo …" a few times)
        strongest = np.repeat(np.maximum.reduceat(support_values, run_starts), np.diff(np.r_[run_starts, len(key)])) \
            if len(key) else support_values
        is_scaffold = (support_values >= self.settings.min_segment_accounts) \
            & (support_values >= self.settings.sibling_support_ratio * strongest)
        marked = with_support.select("prompt_key", "segment_key").with_columns(pl.Series("is_scaffold", is_scaffold))
        # collapse each run of filled slots into a single SLOT marker
        previous = np.r_[True, is_scaffold[:-1]] if len(key) else np.zeros(0, bool)
        keep = is_scaffold | starts | previous
        marked = marked.with_columns(
            pl.when(pl.col("is_scaffold")).then(pl.col("segment_key")).otherwise(pl.lit(SLOT, pl.UInt64)).alias("token"),
        ).filter(pl.Series(keep))
        # a prompt's signature is its token sequence: hashed run by run, no per-prompt lists
        kept_starts = np.flatnonzero(starts[keep])
        sequence_key, scaffold_segments = _hash_runs(kept_starts, marked["token"].to_numpy(),
                                                     marked["is_scaffold"].to_numpy())
        signatures = pl.DataFrame({"prompt_key": marked["prompt_key"].gather(kept_starts),
                                   "sequence_key": sequence_key, "scaffold_segments": scaffold_segments})
        signatures = signatures.join(request_counts, on="prompt_key", how="left").with_columns(
            pl.col("requests").fill_null(0))
        with_scaffold = signatures.filter(pl.col("scaffold_segments") > 0)
        verbatim = signatures.filter((pl.col("scaffold_segments") == 0)
                                     & (pl.col("requests") >= self.settings.min_segment_accounts))
        keyed = pl.concat([
            with_scaffold.with_columns(pl.col("sequence_key").alias("template_key")),
            verbatim.with_columns((pl.col("prompt_key") ^ pl.lit(0x5BD1E995, pl.UInt64)).alias("template_key")),
        ]).drop("sequence_key")
        self._tokens = marked.select("prompt_key", "token")
        keyed = self._merge_near_duplicates(keyed)
        assignments = keyed.select("prompt_key", _template_id(pl.col("template_key")).alias("template_id"))
        templates = self._describe(keyed)
        return TemplateResult(assignments=assignments, templates=templates)

    # ------------------------------------------------------------ helpers
    def _texts(self) -> pl.DataFrame:
        texts = pl.concat(self._segment_text) if self._segment_text else \
            pl.DataFrame(schema={"segment_key": pl.UInt64, "segment": pl.Utf8})
        return texts.unique("segment_key", keep="first", maintain_order=True)

    def _template_texts(self, keyed: pl.DataFrame) -> pl.DataFrame:
        """template_key → readable scaffold text, slots shown as ‹…›."""
        # each template's most requested prompt (ties: smallest key), and its tokens in order
        representatives = keyed.group_by("template_key").agg(
            pl.col("prompt_key").sort_by(["requests", "prompt_key"], descending=[True, False]).first())
        tokens = self._tokens.filter(pl.col("prompt_key").is_in(representatives["prompt_key"].implode())) \
            .join(representatives, on="prompt_key", how="left", maintain_order="left") \
            .with_columns(pl.int_range(pl.len()).over("template_key").alias("pos"))
        tokens = tokens.join(self._texts(), left_on="token", right_on="segment_key", how="left").sort("template_key", "pos")
        return tokens.group_by("template_key").agg(
            pl.when(pl.col("token") == SLOT).then(pl.lit("‹…›")).otherwise(pl.col("segment").fill_null("‹?›"))
            .str.join(" ").alias("text"))

    def _merge_near_duplicates(self, keyed: pl.DataFrame) -> pl.DataFrame:
        """Templates whose scaffold text is nearly the same (reworded scaffolds) get one key."""
        if keyed.height == 0 or self.settings.near_duplicate_jaccard >= 1:
            return keyed
        from datasketch import MinHash, MinHashLSH

        weight = keyed.group_by("template_key").agg(pl.col("requests").sum()).sort(
            "requests", "template_key", descending=[True, False])
        candidates = weight.filter(pl.col("requests") >= 2).head(20_000)
        texts = self._template_texts(keyed.filter(pl.col("template_key").is_in(candidates["template_key"].implode())))
        texts = candidates.join(texts, on="template_key", how="left")
        lsh = MinHashLSH(threshold=self.settings.near_duplicate_jaccard, num_perm=64)
        canonical: dict[int, int] = {}
        for key, text in texts.select("template_key", "text").iter_rows():
            shingles = _shingles(text or "")
            if len(shingles) < 3:
                continue
            signature = MinHash(num_perm=64, seed=_SEED)
            signature.update_batch(shingles)
            matches = lsh.query(signature)
            canonical[key] = min((canonical[m] for m in matches), default=key)
            lsh.insert(key, signature)
        if not canonical:
            return keyed
        mapping = pl.DataFrame({"template_key": list(canonical), "merged": list(canonical.values())},
                               schema={"template_key": pl.UInt64, "merged": pl.UInt64})
        return keyed.join(mapping, on="template_key", how="left").with_columns(
            pl.coalesce("merged", "template_key").alias("template_key")).drop("merged")

    def _describe(self, keyed: pl.DataFrame) -> pl.DataFrame:
        texts = self._template_texts(keyed)
        examples = pl.concat(self._examples) if self._examples else \
            pl.DataFrame(schema={"prompt_key": pl.UInt64, "example": pl.Utf8})
        example = keyed.select("template_key", "prompt_key", "requests").join(examples, on="prompt_key") \
            .sort("requests", "prompt_key", descending=[True, False]) \
            .unique("template_key", keep="first", maintain_order=True).select("template_key", "example")
        summary = keyed.group_by("template_key").agg(
            pl.len().alias("distinct_prompts"), pl.col("scaffold_segments").max())
        return (summary.join(texts, on="template_key", how="left").join(example, on="template_key", how="left")
                .select(_template_id(pl.col("template_key")).alias("template_id"), "text", "example",
                        "distinct_prompts", "scaffold_segments")
                .sort("template_id"))


def _sample_per_account(accounts: pl.Series, prompts: pl.Series, limit: int) -> np.ndarray:
    """Boolean mask: at most ``limit`` prompted rows per account, those with the smallest text hash
    (order-independent; a repeated text ranks by position)."""
    codes = accounts.cast(pl.Categorical).to_physical().to_numpy()
    dense = np.unique(codes, return_inverse=True)[1].astype(np.int64)  # (category codes are process-wide)
    rows = _bottom_k_rows(dense, prompts.hash(_SEED + 3).to_numpy(), prompts.is_not_null().to_numpy(),
                          int(dense.max(initial=-1)) + 1, limit)
    chosen = np.zeros(len(prompts), bool)
    chosen[rows] = True
    return chosen


@numba.njit(cache=True, nogil=True)
def _bottom_k_rows(codes, hashes, present, n_codes, k):
    """Rows of the ``k`` smallest (hash, row) per code among present rows: one pass keeping a sorted
    buffer of ``k`` per code (a window rank over the batch cost twice the CPU)."""
    best_hash = np.zeros((n_codes, k), np.uint64)
    best_row = np.zeros((n_codes, k), np.int64)
    filled = np.zeros(n_codes, np.int64)
    for row in range(len(codes)):
        if not present[row]:
            continue
        code, value = codes[row], hashes[row]
        size = filled[code]
        if size == k and value >= best_hash[code, k - 1]:
            continue  # (an equal hash on a later row ranks after the earlier one)
        position = min(size, k - 1)
        while position > 0 and value < best_hash[code, position - 1]:
            best_hash[code, position], best_row[code, position] = best_hash[code, position - 1], best_row[code, position - 1]
            position -= 1
        best_hash[code, position], best_row[code, position] = value, row
        filled[code] = min(size + 1, k)
    chosen = np.empty(filled.sum(), np.int64)
    n = 0
    for code in range(n_codes):
        for j in range(filled[code]):
            chosen[n] = best_row[code, j]
            n += 1
    return chosen


@numba.njit(cache=True, nogil=True)
def _hash_runs(run_starts, tokens, scaffold):
    """Per run of rows (one prompt's kept tokens, in order): a 64-bit hash of the token sequence
    (splitmix64 over length and tokens; order matters) and the number of scaffold tokens."""
    n_runs, n_rows = len(run_starts), len(tokens)
    keys = np.empty(n_runs, np.uint64)
    counts = np.zeros(n_runs, np.int64)
    for run in range(n_runs):
        end = run_starts[run + 1] if run + 1 < n_runs else n_rows
        h = np.uint64(0x9E3779B97F4A7C15) * np.uint64(end - run_starts[run] + 1)
        for row in range(run_starts[run], end):
            h = (h ^ tokens[row]) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = h ^ (h >> np.uint64(31))
            counts[run] += scaffold[row]
        keys[run] = h
    return keys, counts


def _template_id(key: pl.Expr) -> pl.Expr:
    return pl.lit("T") + key.cast(pl.Utf8)


def _shingles(text: str, width: int = 2) -> list[bytes]:
    words = text.split()
    return [" ".join(words[i:i + width]).encode() for i in range(max(len(words) - width + 1, 0))]
