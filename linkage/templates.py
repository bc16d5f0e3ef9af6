"""Prompt-template mining: requests filled into one generation scaffold share a template id.

Two phases so that the request log streams:

1. per batch (:meth:`TemplateMiner.add_batch`): every prompt's text is hashed (the request's
   ``prompt_key``) and each account's ``max_prompts_per_account`` distinct texts of smallest hash
   over the *whole* input are kept as the sample (:class:`PromptSample`; the same sample whatever
   the file layout). Nothing is masked yet.
2. once over the sample (:meth:`TemplateMiner.finish`): variable slots are masked, masked prompts
   cut into sentence/line segments; a segment that occurs in at least ``min_segment_accounts``
   *distinct* masked prompts is scaffold, anything rarer a filled slot. A prompt's template is the
   ordered scaffold segments with each run of slots collapsed into one. Only prompts with a slot
   (filler or a masked value) and at least ``min_scaffold_chars`` of scaffold text have a template:
   a question many people send word for word, or a stock phrase around their own text, is
   everyday phrasing, not a generation scaffold. Templates whose scaffold text
   is near-identical (MinHash LSH over word shingles) are merged. Every request whose text was
   sampled (for any account) gets the text's template.

Counting support over distinct masked prompts, not requests, is what tells a scaffold
(seen around many different fillers) from a filler that is merely re-sent often.
"""

from __future__ import annotations

import importlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numba
import numpy as np
import polars as pl

from .kernels import kernel
from .normalize import REASONING_STYLE, mask_prompts, split_segments
from .settings import TemplateSettings

SLOT = 0  # segment hash standing for a run of filled slots
_MERGE_BLOCK = 256  # sampled rows whose buffers are loaded ahead at once (see _merge_bottom_k)
_SEED = 7


@dataclass
class TemplateResult:
    """prompt_key → template_id, and one row per template for the graph."""

    assignments: pl.DataFrame  # per sampled text: prompt_key (u64), template_id (str, null: none), reasoning_style
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
class PromptSample:
    """Each account's ``k`` distinct prompt texts of smallest text hash, over everything offered.

    The bottom-k of a union is the bottom-k of its parts' bottom-ks, so every file is sampled on
    its own and the merged sample is the same whatever the layout (one file, daily partitions,
    files staged night by night) and whatever the order of merging: a full run and a nightly
    rebuild over the same files mine the same prompts. Rows that lose their place are dropped as
    files are merged, so memory stays near the size of the final sample.

    Candidate rows: ``account_id`` (categorical: its codes are process-wide and index the
    per-account buffers), ``prompt_key`` (hash of the text), ``prompt``."""

    k: int
    _frames: list[pl.DataFrame] = field(default_factory=list)
    _slot_of: np.ndarray = field(default_factory=lambda: np.full(0, -1, np.int64))  # code → buffer row
    _hash: np.ndarray = field(init=False)  # (slots, k): each account's smallest hashes, ascending
    _ref: np.ndarray = field(init=False)  # (slots, k): frame << 32 | row of each
    _filled: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    _slots: int = 0
    _dead: int = 0
    # (code → slot, per slot the hash a new text must stay under to enter that account's sample):
    # copies made after each merge, read by other threads; the sample only improves, so a stale
    # bound still never drops a text that would have entered
    bound: tuple[np.ndarray, np.ndarray] | None = None
    _texts: pl.DataFrame | None = None
    _pending: pl.DataFrame | None = None  # a first batch's own bottom-k, merged only when it must be

    def __post_init__(self) -> None:
        self._hash = np.zeros((0, self.k), np.uint64)
        self._ref = np.zeros((0, self.k), np.int64)

    def offer(self, candidates: pl.DataFrame, is_sample: bool = False) -> None:
        """Merge candidate rows; only those that enter some account's bottom-k are kept.

        ``is_sample``: the rows already are a sample (per account at most ``k`` distinct texts): into an
        empty sample they are kept as they are, and merged only if more rows come (a file of one batch,
        the usual case, then costs no merge)."""
        if candidates.height == 0:
            return
        self._texts = None
        if is_sample and self._pending is None and not self._frames:
            self._pending = _owned_texts(candidates)
            return
        self._settle()
        self._merge(candidates)

    def _settle(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._merge(pending)

    def _merge(self, candidates: pl.DataFrame) -> None:
        codes = candidates["account_id"].cast(pl.Categorical).to_physical().to_numpy().astype(np.int64)
        self._reserve(codes)
        accepted, self._slots, evicted, _ = _merge_bottom_k(
            codes,
            candidates["prompt_key"].to_numpy(),
            self._slot_of,
            self._slots,
            self._hash,
            self._ref,
            self._filled,
            len(self._frames),
        )
        self._frames.append(_owned_texts(candidates.filter(pl.Series(accepted))))
        self._dead += evicted
        if self._dead > max(int(self._filled.sum()), 100_000):
            self._compact()
        self._publish_bound()

    def _publish_bound(self) -> None:
        kth = np.where(
            self._filled[: self._slots] == self.k, self._hash[: self._slots, self.k - 1], np.iinfo(np.uint64).max
        )
        self.bound = (self._slot_of.copy(), kth)

    def candidates(self) -> pl.DataFrame:
        """The rows currently in the sample (one per account and text)."""
        if self._pending is not None and not self._frames:
            return self._pending
        self._settle()
        self._compact()
        return self._frames[0] if self._frames else pl.DataFrame(schema=_CANDIDATE_SCHEMA)

    def texts(self) -> pl.DataFrame:
        """The sampled texts, each once, in key order: prompt_key, prompt."""
        if self._texts is None:
            self._texts = (
                self.candidates().select("prompt_key", "prompt").unique("prompt_key", keep="first").sort("prompt_key")
            )
        return self._texts

    def _reserve(self, codes: np.ndarray) -> None:
        if len(codes) and codes.max() >= len(self._slot_of):
            grown = np.full(max(int(codes.max()) + 1, 2 * len(self._slot_of)), -1, np.int64)
            grown[: len(self._slot_of)] = self._slot_of
            self._slot_of = grown
        # (accounts not seen before, each once: marked, not sorted; codes index the categorical pool)
        unseen = np.zeros(len(self._slot_of), bool)
        unseen[codes[self._slot_of[codes] < 0]] = True
        needed = self._slots + int(np.count_nonzero(unseen))
        if needed > len(self._filled):
            size = max(needed, 2 * len(self._filled))
            for name in ("_hash", "_ref", "_filled"):
                old = getattr(self, name)
                new = np.zeros((size, *old.shape[1:]), old.dtype)
                new[: len(old)] = old
                setattr(self, name, new)

    def _compact(self) -> None:
        """One frame holding exactly the rows in the buffers (refs renumbered)."""
        if len(self._frames) <= 1 and self._dead == 0:
            return
        live = np.arange(self.k)[None, :] < self._filled[: self._slots, None]
        refs_view = self._ref[: self._slots]
        refs = refs_view[live]
        order = np.argsort(refs, kind="stable")
        frame_of, row = refs[order] >> 32, refs[order] & 0xFFFFFFFF
        bounds = np.searchsorted(frame_of, np.arange(len(self._frames) + 1))
        parts = [
            frame[row[bounds[f] : bounds[f + 1]]] for f, frame in enumerate(self._frames) if bounds[f + 1] > bounds[f]
        ]
        renumbered = np.empty_like(refs)
        renumbered[order] = np.arange(len(refs))
        refs_view[live] = renumbered
        self._frames = [pl.concat(parts) if parts else self._frames[0].clear()]
        self._dead = 0


_CANDIDATE_SCHEMA = {"account_id": pl.Categorical, "prompt_key": pl.UInt64, "prompt": pl.Utf8}


def _owned_texts(rows: pl.DataFrame) -> pl.DataFrame:
    """The rows with their prompt texts copied into buffers of their own.

    A filtered string column is a set of views into the whole batch's text buffers: keeping a few
    sampled texts per file would keep every prompt of the run alive (3.5 GB at incident scale).
    Concatenating with nothing writes the kept texts afresh."""
    return rows.with_columns(pl.concat_str([pl.col("prompt"), pl.lit("")]).alias("prompt"))


@dataclass
class TemplateMiner:
    """Samples prompts while the request log streams (:meth:`add_batch`), mines templates once at the
    end (:meth:`finish`). Only the sample's texts are ever masked: masking is the costliest text work
    of a run, and a campaign account's thousandth scaffolded prompt says nothing its tenth did not."""

    settings: TemplateSettings
    _sample: PromptSample = field(init=False)
    _segment_text: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema={"segment_key": pl.UInt64, "segment": pl.Utf8})
    )
    _examples: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema={"prompt_key": pl.UInt64, "example": pl.Utf8})
    )
    # per distinct masked prompt: its masked values and length (set by _mine_texts)
    _masked_shape: pl.DataFrame = field(default_factory=pl.DataFrame)
    # (prompt_key, token) rows of every signature, in order: set by finish() for the template texts
    _tokens: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema={"prompt_key": pl.UInt64, "token": pl.UInt64})
    )

    STATE_PARTS = ("candidates",)

    def __post_init__(self) -> None:
        self._sample = PromptSample(self.settings.max_prompts_per_account)
        _prefetch_lsh()

    def state(self) -> dict[str, pl.DataFrame]:
        """What this miner sampled, to be stored and merged later (per-file staging of rebuilds)."""
        return {"candidates": self._sample.candidates()}

    def absorb(self, state: dict[str, pl.DataFrame]) -> None:
        """Merge another miner's state (one file's, sampled on its own)."""
        self._sample.offer(state["candidates"])

    @property
    def bound(self) -> tuple[np.ndarray, np.ndarray] | None:
        """See :meth:`add_batch`."""
        return self._sample.bound

    def sampled_keys(self) -> pl.Series:
        """The sample's text hashes, ascending (the order of :meth:`finish`'s assignments)."""
        return self._sample.texts()["prompt_key"]

    def positions(self, prompt_keys: pl.Series) -> pl.Series:
        """Per request (its ``prompt_key``), its text's place among :meth:`sampled_keys`; null where the
        text was not sampled. One probe of a hash table of the sample per request, on two threads: a
        join of the log's key column took twice as long (1.0-1.2 s against 0.5 s for 14.5 M requests)."""
        found = _found_positions(self.sampled_keys().to_numpy(), prompt_keys)
        position = pl.Series("position", found.view(np.uint32))  # (-1 reads as 2^32 - 1: masked next)
        return pl.select(pl.when(pl.Series(found >= 0)).then(position)).to_series()

    def add_batch(
        self, accounts: pl.Series, prompts: pl.Series, bound: tuple[np.ndarray, np.ndarray] | None = None
    ) -> pl.DataFrame:
        """Per request: ``prompt_key``, the hash of its text (null without a prompt); the batch's
        candidates for the sample (per account its ``max_prompts_per_account`` distinct texts of
        smallest hash) are kept. Costs a hash per prompt; no text is masked here.

        ``bound``: another sample's :attr:`PromptSample.bound` (the run's sample so far); texts that
        could not enter it are not kept (an exact shortcut: this file's sample then holds only what
        can still matter to that one)."""
        keys = pl.select(pl.when(prompts.is_not_null()).then(prompts.hash(_SEED + 1))).to_series().alias("prompt_key")
        accounts = accounts.cast(pl.Categorical)
        codes = accounts.to_physical().to_numpy()
        hashes, present = keys.fill_null(0).to_numpy(), keys.is_not_null().to_numpy()
        if bound is not None:
            slot_of, kth = bound
            slot = (
                np.where(codes < len(slot_of), slot_of[np.minimum(codes, len(slot_of) - 1)], -1)
                if len(slot_of)
                else np.full(len(codes), -1)
            )
            bounded = (slot >= 0) & (slot < len(kth))
            present &= ~bounded | (hashes < kth[np.where(bounded, slot, 0)])
        rows = _bottom_k_rows(codes.astype(np.int64), hashes, present, self.settings.max_prompts_per_account)
        self._sample.offer(
            pl.DataFrame(
                {
                    "account_id": accounts.gather(rows),
                    "prompt_key": keys.gather(rows),
                    "prompt": prompts.gather(rows).str.slice(0, self.settings.max_prompt_chars),
                }
            ),
            is_sample=True,
        )
        return pl.DataFrame({"prompt_key": keys})

    def _mine_texts(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(per sampled text: prompt_key, masked_key, reasoning_style; per distinct masked prompt its
        segments in order: prompt_key (the masked key), segment_key). Both halves of the sample are
        worked on at once (polars releases the GIL)."""
        texts = self._sample.texts()
        settings = self.settings

        def mask(part: pl.DataFrame) -> pl.DataFrame:
            masked = mask_prompts(part["prompt"], settings.max_prompt_chars)
            return part.select("prompt_key", "prompt").with_columns(
                masked.alias("masked"),
                masked.hash(_SEED).alias("masked_key"),
                part["prompt"]
                .str.contains_any(REASONING_STYLE, ascii_case_insensitive=True)
                .fill_null(False)
                .alias("reasoning_style"),
            )

        masked = _in_halves(mask, texts)
        distinct = masked.unique("masked_key", keep="first", maintain_order=True)
        self._masked_shape = distinct.select(
            pl.col("masked_key").alias("prompt_key"),
            pl.col("masked").str.count_matches("‹").alias("masked_values"),
            pl.col("masked").str.len_chars().alias("masked_chars"),
        )

        def segment(part: pl.DataFrame) -> pl.DataFrame:
            return (
                split_segments(part["masked_key"], part["masked"], settings.max_segments)
                .rename({"key": "prompt_key"})
                .with_columns(pl.col("segment").hash(_SEED).alias("segment_key"))
            )

        exploded = _in_halves(segment, distinct)
        self._segment_text = (
            exploded.group_by("segment_key")
            .agg(pl.col("segment").first(), pl.len().alias("n"))
            .filter(pl.col("n") >= 2)
            .select("segment_key", "segment")
        )
        examples = distinct.filter(pl.col("masked_key") % settings.example_sample_modulus == 0)
        self._examples = examples.select(
            pl.col("masked_key").alias("prompt_key"), pl.col("prompt").str.slice(0, 600).alias("example")
        )
        return masked.select("prompt_key", "masked_key", "reasoning_style"), exploded.select(
            "prompt_key", "segment_key"
        )

    def finish(self, request_counts: pl.DataFrame) -> TemplateResult:
        """``request_counts``: prompt_key (text hash), requests (after de-duplication of requests).

        Assignments are per sampled text, in key order: prompt_key → template_id (null for free-form
        prompts) and reasoning_style; a text not in the sample has no row."""
        sampled, segments = self._mine_texts()
        # from here on a "prompt" is a distinct masked prompt (prompt_key = its masked key)
        request_counts = (
            sampled.join(request_counts, on="prompt_key", how="left")
            .group_by("masked_key")
            .agg(pl.col("requests").fill_null(0).sum())
            .rename({"masked_key": "prompt_key"})
        )
        support = (
            segments.lazy()
            .group_by("segment_key")
            .agg(pl.col("prompt_key").n_unique().cast(pl.UInt32).alias("support"))
            .collect(engine="streaming")
        )
        with_support = segments.join(support, on="segment_key", how="left", maintain_order="left")
        # rows of a prompt are contiguous: per-prompt work is done on runs, not by grouping
        key = with_support["prompt_key"].to_numpy()
        starts = np.r_[True, key[1:] != key[:-1]] if len(key) else np.zeros(0, bool)
        run_starts = np.flatnonzero(starts)
        support_values = with_support["support"].to_numpy()
        # a segment far rarer than the scaffold around it is a filled slot that happened to repeat
        # (a repository name typed into "You are an agent in repo …" a few times). The reference is the
        # prompt's most common segment long enough to be a scaffold: a bare label ("task:", "answer:")
        # is in thousands of prompts and would make every real instruction beside it look like filler
        lengths = (
            with_support.join(
                self._segment_text.select("segment_key", pl.col("segment").str.len_chars().alias("chars")),
                on="segment_key",
                how="left",
                maintain_order="left",
            )["chars"]
            .fill_null(0)
            .to_numpy()
        )
        reference = np.where(lengths >= self.settings.min_scaffold_chars, support_values, 0)
        strongest = (
            np.repeat(np.maximum.reduceat(reference, run_starts), np.diff(np.r_[run_starts, len(key)]))
            if len(key)
            else support_values
        )
        is_scaffold = (support_values >= self.settings.min_segment_accounts) & (
            support_values >= self.settings.sibling_support_ratio * strongest
        )
        marked = with_support.select("prompt_key", "segment_key").with_columns(pl.Series("is_scaffold", is_scaffold))
        # collapse each run of filled slots into a single SLOT marker
        previous = np.r_[True, is_scaffold[:-1]] if len(key) else np.zeros(0, bool)
        keep = is_scaffold | starts | previous
        marked = marked.with_columns(
            pl.when(pl.col("is_scaffold"))
            .then(pl.col("segment_key"))
            .otherwise(pl.lit(SLOT, pl.UInt64))
            .alias("token"),
        ).filter(pl.Series(keep))
        # a prompt's signature is its token sequence: hashed run by run, no per-prompt lists
        kept_starts = np.flatnonzero(starts[keep])
        sequence_key, scaffold_segments = _hash_runs(
            kept_starts, marked["token"].to_numpy(), marked["is_scaffold"].to_numpy()
        )
        signatures = pl.DataFrame(
            {
                "prompt_key": marked["prompt_key"].gather(kept_starts),
                "sequence_key": sequence_key,
                "scaffold_segments": scaffold_segments,
            }
        )
        signatures = signatures.join(request_counts, on="prompt_key", how="left").with_columns(
            pl.col("requests").fill_null(0)
        )
        # a template is a scaffold its users fill: fixed instruction text around variable slots. A
        # question many people send word for word, or a short stock phrase ("step by step please.")
        # around their own text, is everyday phrasing, not a generation scaffold
        shape = self._scaffold_shape(marked)
        with_scaffold = (
            signatures.join(shape, on="prompt_key", how="left")
            .filter(
                (pl.col("scaffold_segments") > 0)
                & pl.col("slots").fill_null(0).gt(0)
                & pl.col("scaffold_chars").fill_null(0).ge(self.settings.min_scaffold_chars)
            )
            .with_columns(pl.col("sequence_key").alias("template_key"))
            .drop("slots", "scaffold_chars")
        )
        # a prompt sent that often whose every variable part was masked (ids, numbers, URLs) is a
        # scaffold too: its masked values are the slots
        verbatim = (
            signatures.join(self._masked_shape, on="prompt_key", how="left")
            .filter(
                (pl.col("scaffold_segments") == 0)
                & (pl.col("requests") >= self.settings.min_segment_accounts)
                & (pl.col("masked_values") > 0)
                & (pl.col("masked_chars") >= self.settings.min_scaffold_chars)
            )
            .with_columns((pl.col("prompt_key") ^ pl.lit(0x5BD1E995, pl.UInt64)).alias("template_key"))
            .drop("masked_values", "masked_chars")
        )
        keyed = pl.concat([with_scaffold, verbatim]).drop("sequence_key")
        self._tokens = marked.select("prompt_key", "token")
        keyed = self._merge_near_duplicates(keyed)
        by_masked = keyed.select(
            pl.col("prompt_key").alias("masked_key"), _template_id(pl.col("template_key")).alias("template_id")
        )
        assignments = sampled.join(by_masked, on="masked_key", how="left", maintain_order="left").select(
            "prompt_key", pl.col("template_id").cast(pl.Categorical), "reasoning_style"
        )
        templates = self._describe(keyed).join(self._repeated_by(assignments), on="template_id", how="left")
        templates = templates.with_columns(pl.col("repeated_by").fill_null(0))
        return TemplateResult(assignments=assignments, templates=templates)

    # ------------------------------------------------------------ helpers
    def _repeated_by(self, assignments: pl.DataFrame) -> pl.DataFrame:
        """Per template: how many accounts filled it with two or more distinct texts of their own sample
        (``assignments``: per sampled text its template). A scaffold is what its users fill again and
        again; a combination of stock sentences that recur (a filler drawn from a small bank reads as
        scaffold: it is in hundreds of prompts) is met once each by a few unrelated people, and reads
        as rare as a shared card."""
        return (
            self._sample.candidates()
            .select("account_id", "prompt_key")
            .join(assignments.filter(pl.col("template_id").is_not_null()), on="prompt_key")
            .group_by("account_id", "template_id")
            .agg(pl.len().alias("texts"))
            .filter(pl.col("texts") >= 2)
            .group_by(pl.col("template_id").cast(pl.Utf8))
            .agg(pl.len().cast(pl.Int64).alias("repeated_by"))
        )

    def _scaffold_shape(self, marked: pl.DataFrame) -> pl.DataFrame:
        """Per prompt: its runs of filled slots and the characters of its scaffold text."""
        # a slot is a run of filler segments or a masked value (‹n›, ‹name›) inside the scaffold text
        lengths = self._segment_text.select(
            "segment_key",
            pl.col("segment").str.len_chars().alias("chars"),
            pl.col("segment").str.count_matches("‹").alias("masked"),
        )
        return (
            marked.join(lengths, left_on="token", right_on="segment_key", how="left")
            .group_by("prompt_key")
            .agg(
                ((~pl.col("is_scaffold")).sum() + pl.col("masked").filter(pl.col("is_scaffold")).sum()).alias("slots"),
                pl.col("chars").filter(pl.col("is_scaffold")).sum().alias("scaffold_chars"),
            )
        )

    def _template_texts(self, keyed: pl.DataFrame) -> pl.DataFrame:
        """template_key → readable scaffold text, slots shown as ‹…›."""
        # each template's most requested prompt (ties: smallest key), and its tokens in order
        representatives = keyed.group_by("template_key").agg(
            pl.col("prompt_key").sort_by(["requests", "prompt_key"], descending=[True, False]).first()
        )
        tokens = (
            self._tokens.filter(pl.col("prompt_key").is_in(representatives["prompt_key"].implode()))
            .join(representatives, on="prompt_key", how="left", maintain_order="left")
            .with_columns(pl.int_range(pl.len()).over("template_key").alias("pos"))
        )
        tokens = tokens.join(self._segment_text, left_on="token", right_on="segment_key", how="left").sort(
            "template_key", "pos"
        )
        return tokens.group_by("template_key").agg(
            pl.when(pl.col("token") == SLOT)
            .then(pl.lit("‹…›"))
            .otherwise(pl.col("segment").fill_null("‹?›"))
            .str.join(" ")
            .alias("text")
        )

    def _merge_near_duplicates(self, keyed: pl.DataFrame) -> pl.DataFrame:
        """Templates whose scaffold text is nearly the same (reworded scaffolds) get one key."""
        if keyed.height == 0 or self.settings.near_duplicate_jaccard >= 1:
            return keyed
        weight = (
            keyed.group_by("template_key")
            .agg(pl.col("requests").sum())
            .sort("requests", "template_key", descending=[True, False])
        )
        candidates = weight.filter(pl.col("requests") >= 2).head(20_000)
        texts = self._template_texts(keyed.filter(pl.col("template_key").is_in(candidates["template_key"].implode())))
        texts = candidates.join(texts, on="template_key", how="left")
        canonical = near_duplicate_canonical(
            texts["template_key"].to_list(), texts["text"].fill_null("").to_list(), self.settings.near_duplicate_jaccard
        )
        if not canonical:
            return keyed
        mapping = pl.DataFrame(
            {"template_key": list(canonical), "merged": list(canonical.values())},
            schema={"template_key": pl.UInt64, "merged": pl.UInt64},
        )
        return (
            keyed.join(mapping, on="template_key", how="left")
            .with_columns(pl.coalesce("merged", "template_key").alias("template_key"))
            .drop("merged")
        )

    def _describe(self, keyed: pl.DataFrame) -> pl.DataFrame:
        texts = self._template_texts(keyed)
        examples = self._examples
        example = (
            keyed.select("template_key", "prompt_key", "requests")
            .join(examples, on="prompt_key")
            .sort("requests", "prompt_key", descending=[True, False])
            .unique("template_key", keep="first", maintain_order=True)
            .select("template_key", "example")
        )
        summary = keyed.group_by("template_key").agg(
            pl.len().alias("distinct_prompts"), pl.col("scaffold_segments").max()
        )
        return (
            summary.join(texts, on="template_key", how="left")
            .join(example, on="template_key", how="left")
            .select(
                _template_id(pl.col("template_key")).alias("template_id"),
                "text",
                "example",
                "distinct_prompts",
                "scaffold_segments",
            )
            .sort("template_id")
        )


def _in_halves(work, frame: pl.DataFrame) -> pl.DataFrame:
    """``work`` on both halves of ``frame`` at once (two threads), results concatenated in order."""
    if frame.height < 50_000:
        return work(frame)
    half = frame.height // 2
    with ThreadPoolExecutor(max_workers=2) as pool:
        parts = list(pool.map(work, [frame.slice(0, half), frame.slice(half)]))
    return pl.concat(parts)


@numba.njit(cache=True, nogil=True)
def _insert_smallest(best_hash, best_ref, filled, slot, value, ref):
    """Put ``value`` (with ``ref``) into ``slot``'s ascending buffer of its smallest distinct values.
    0: refused (not below a full buffer's largest, or held already); 1: added; 2: added, and the
    largest fell out."""
    k = best_hash.shape[1]
    size = filled[slot]
    if size == k and value >= best_hash[slot, k - 1]:
        return 0
    for j in range(size):
        if best_hash[slot, j] == value:
            return 0
    entered = 1
    if size == k:
        size -= 1
        entered = 2
    position = size
    while position > 0 and value < best_hash[slot, position - 1]:
        best_hash[slot, position], best_ref[slot, position] = (
            best_hash[slot, position - 1],
            best_ref[slot, position - 1],
        )
        position -= 1
    best_hash[slot, position], best_ref[slot, position] = value, ref
    filled[slot] = size + 1
    return entered


@kernel()
def _bottom_k_rows(codes, hashes, present, k):
    """Rows (ascending) of the ``k`` smallest distinct hashes per code among present rows (a repeated
    hash: its first row): one pass keeping a sorted buffer of ``k`` per code, after one pass that
    numbers the codes present (codes are process-wide categorical codes, sparse in a batch)."""
    slot_of = np.full(codes.max() + 1 if len(codes) else 0, -1, np.int64)
    n_codes = 0
    for row in range(len(codes)):
        if present[row] and slot_of[codes[row]] < 0:
            slot_of[codes[row]] = n_codes
            n_codes += 1
    best_hash = np.zeros((n_codes, k), np.uint64)
    best_row = np.zeros((n_codes, k), np.int64)
    filled = np.zeros(n_codes, np.int64)
    for row in range(len(codes)):
        if present[row]:
            _insert_smallest(best_hash, best_row, filled, slot_of[codes[row]], hashes[row], row)
    chosen = np.empty(filled.sum(), np.int64)
    n = 0
    for code in range(n_codes):
        for j in range(filled[code]):
            chosen[n] = best_row[code, j]
            n += 1
    return np.sort(chosen)


@kernel(writes=("slot_of", "best_hash", "best_ref", "filled"))
def _merge_bottom_k(codes, hashes, slot_of, n_slots, best_hash, best_ref, filled, frame_no):
    """Offer rows to per-account buffers of the ``k`` smallest distinct hashes (ascending). Returns
    which rows entered (their ref: ``frame_no`` << 32 | rank among the entered rows), the new number
    of accounts and how many buffered rows were pushed out.

    Rows come in blocks: a block's slots and buffer rows are loaded first, each load independent of
    the others (the buffers of a run's accounts are tens of MB: many cache misses in flight at once,
    where offering a row waits for its own), then its rows are offered in order."""
    accepted = np.zeros(len(codes), np.bool_)
    n_accepted, evicted = 0, 0
    k = best_hash.shape[1]
    slots = np.empty(_MERGE_BLOCK, np.int64)
    touched = np.uint64(0)
    for begin in range(0, len(codes), _MERGE_BLOCK):
        end = min(begin + _MERGE_BLOCK, len(codes))
        for row in range(begin, end):  # (new accounts numbered in row order, as one row at a time would)
            slot = slot_of[codes[row]]
            if slot < 0:
                slot = n_slots
                slot_of[codes[row]] = slot
                n_slots += 1
            slots[row - begin] = slot
        for row in range(begin, end):
            slot = slots[row - begin]
            touched += best_hash[slot, 0] + best_hash[slot, k - 1] + np.uint64(filled[slot])
            touched += np.uint64(best_ref[slot, 0] + best_ref[slot, k - 1])
        for row in range(begin, end):
            ref = (frame_no << 32) | n_accepted
            entered = _insert_smallest(best_hash, best_ref, filled, slots[row - begin], hashes[row], ref)
            if entered:
                accepted[row] = True
                n_accepted += 1
                evicted += entered == 2
    return accepted, n_slots, evicted, touched


def _found_positions(keys: np.ndarray, prompt_keys: pl.Series) -> np.ndarray:
    """Per request, its key's position in ``keys`` (distinct), -1 where absent or null; the copies of
    the log's keys are freed on return, before the caller builds its result."""
    slot_key, slot_position = _key_table(keys, 1 << (2 * len(keys)).bit_length())  # (at most half full)
    values, present = prompt_keys.fill_null(0).to_numpy(), prompt_keys.is_not_null().to_numpy()
    found = np.empty(len(values), np.int32)  # (a sample holds fewer than 2^31 texts)
    halves = [slice(0, len(values) // 2), slice(len(values) // 2, len(values))]
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda h: _probe(values[h], present[h], slot_key, slot_position, found[h]), halves))
    return found


@kernel()
def _key_table(keys, size):
    """An open-addressing table of ``size`` slots (a power of two, more than ``keys``) for distinct
    64-bit text hashes, their low bits picking the slot: per slot its key and the key's position in
    ``keys``, -1 for an empty slot."""
    mask = np.uint64(size - 1)
    slot_key, slot_position = np.zeros(size, np.uint64), np.full(size, -1, np.int64)
    for position in range(len(keys)):
        slot = keys[position] & mask
        while slot_position[slot] >= 0:
            slot = (slot + np.uint64(1)) & mask
        slot_key[slot], slot_position[slot] = keys[position], position
    return slot_key, slot_position


@kernel(writes=("found",))
def _probe(values, present, slot_key, slot_position, found):
    """Per value, its position in :func:`_key_table`'s keys, or -1 (absent, or not ``present``)."""
    mask = np.uint64(len(slot_key) - 1)
    for row in range(len(values)):
        found[row] = -1
        if not present[row]:
            continue
        slot = values[row] & mask
        while slot_position[slot] >= 0:
            if slot_key[slot] == values[row]:
                found[row] = slot_position[slot]
                break
            slot = (slot + np.uint64(1)) & mask


@kernel()
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


def near_duplicate_canonical(keys: list[int], texts: list[str], threshold: float) -> dict[int, int]:
    """Each template key whose text has three word pairs or more → the key it merges into: in the
    given order, the least of what the earlier texts it shares an LSH band with merged into, or
    itself. The same as inserting datasketch ``MinHash`` signatures of the texts' word pairs (64
    permutations, its default SHA-1 hash) one by one into a ``MinHashLSH`` of ``threshold`` and
    querying each before its insertion, but signatures and bands are computed for all texts at
    once, each distinct word pair hashed once: a signature per text cost 2.6 s at incident scale.

    Parameters
    ----------
    keys : the template keys, in the order of precedence.
    texts : their scaffold texts.
    threshold : the Jaccard similarity the LSH's bands are laid out for.

    Returns
    -------
    ``{key: canonical key}`` for the keys with a signature, in the given order."""
    from datasketch import MinHash, MinHashLSH

    kept = [(key, words) for key, words in zip(keys, map(str.split, texts), strict=True) if len(words) >= 4]
    if not kept:
        return {}
    shingles, pair_of, lengths = _word_pairs([words for _, words in kept])
    signatures = _minhash_signatures(shingles, pair_of, lengths, MinHash(num_perm=64, seed=_SEED))
    bands = MinHashLSH(threshold=threshold, num_perm=64).hashranges
    # per band, the texts whose band of the signature is the same: a bucket of the LSH's table
    buckets = [_row_groups(signatures[:, lo:hi]) for lo, hi in bands]
    least: list[dict[int, int]] = [{} for _ in bands]
    canonical: dict[int, int] = {}
    for row, (key, _) in enumerate(kept):
        earlier = [seen[bucket[row]] for seen, bucket in zip(least, buckets, strict=True) if bucket[row] in seen]
        merged = min(earlier, default=key)
        canonical[key] = merged
        for seen, bucket in zip(least, buckets, strict=True):
            if merged < seen.get(bucket[row], merged + 1):
                seen[bucket[row]] = merged
    return canonical


def _word_pairs(word_lists: list[list[str]]) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """The distinct pairs of adjacent words (``"w1 w2"``, UTF-8), each list's pairs as indices into
    them (lists one after the other), and how many pairs each list has."""
    lengths = np.fromiter(map(len, word_lists), np.int64, len(word_lists))
    flat = pl.Series("w", [w for words in word_lists for w in words], dtype=pl.Utf8)
    vocabulary = flat.unique(maintain_order=True)
    code = (
        flat.to_frame()
        .join(vocabulary.to_frame().with_row_index("code"), on="w", how="left", maintain_order="left")["code"]
        .to_numpy()
        .astype(np.int64)
    )
    last_word = np.cumsum(lengths) - 1
    first = np.ones(len(code), bool)
    first[last_word] = False  # a list's last word starts no pair
    left = np.flatnonzero(first)
    pairs, pair_of = np.unique(code[left] * len(vocabulary) + code[left + 1], return_inverse=True)
    words = vocabulary.to_list()
    shingles = [f"{words[p // len(words)]} {words[p % len(words)]}".encode() for p in pairs.tolist()]
    return shingles, pair_of.ravel(), lengths - 1


def _minhash_signatures(shingles: list[bytes], shingle_of: np.ndarray, lengths: np.ndarray, prototype) -> np.ndarray:
    """One row per list of shingles (``lengths`` of them, one list after the other, as indices into
    ``shingles``): ``prototype``'s MinHash of the list, by its permutations and scheme and the
    SHA-1 hash datasketch uses by default."""
    from datasketch.hashfunc import sha1_hash32
    from datasketch.minhash import _fmix  # its pre-mix for the affine schemes (the test compares with datasketch)

    if prototype.scheme != "affine32":
        raise ValueError(f"MinHash scheme {prototype.scheme!r}: only affine32 is computed in bulk")
    hashed = np.fromiter(map(sha1_hash32, shingles), np.uint32, len(shingles))
    a, b = prototype.permutations
    permuted = _fmix(hashed, 32)[:, None] * a + b  # uint32 arithmetic wraps: modulo 2^32, as datasketch's
    return _least_rows(permuted, shingle_of, np.r_[0, np.cumsum(lengths)])


@kernel()
def _least_rows(values, row_of, starts):
    """Per segment ``starts[i]:starts[i + 1]`` of ``row_of``, the column-wise least of those rows of
    ``values``: a reduceat of a gather without the gathered array."""
    out = np.empty((len(starts) - 1, values.shape[1]), values.dtype)
    for segment in range(len(starts) - 1):
        out[segment, :] = values[row_of[starts[segment]]]
        for j in range(starts[segment] + 1, starts[segment + 1]):
            row = values[row_of[j]]
            for k in range(values.shape[1]):
                if row[k] < out[segment, k]:
                    out[segment, k] = row[k]
    return out


def _row_groups(rows: np.ndarray) -> list[int]:
    """A group number per row, equal for equal rows (rows compared as raw bytes)."""
    as_bytes = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1])))
    return np.unique(as_bytes.ravel(), return_inverse=True)[1].ravel().tolist()
