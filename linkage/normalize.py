"""Normalising identifiers, vectorised: timestamps, IPs and their subnets, emails, prompt scaffolds.

Every function takes and returns polars objects; nothing loops over rows in Python except over
the rare distinct IPv6 forms the compiled parser leaves to ``ipaddress`` (embedded dotted IPv4,
zone ids, IPv4-mapped addresses).
"""

from __future__ import annotations

import functools
import ipaddress

import numba
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from .kernels import kernel
from .schema import IP_TYPE_SYNONYMS

TS_DTYPE = pl.Datetime("ms", "UTC")
_EPOCH_MS_CUTOFF = 100_000_000_000  # a number above this is epoch milliseconds, not seconds

# ---------------------------------------------------------------- timestamps
_ISO = (
    r"^([0-9]{4}-[0-9]{2}-[0-9]{2})(?:[T ]([0-9]{2}:[0-9]{2})(:[0-9]{2})?(\.[0-9]{1,9})?)?\s*"
    r"(Z|z|UTC|[+-][0-9]{2}(?::?[0-9]{2})?)?$"  # "+00", PostgreSQL's text form of a zone, included
)


_ISO_FORMS = (  # without an offset: UTC. "+00:00" literally first: parsing any offset (%:z) is slower
    "%Y-%m-%dT%H:%M:%SZ",
    "%Y-%m-%dT%H:%M:%S%.fZ",
    "%Y-%m-%dT%H:%M:%S+00:00",
    "%Y-%m-%dT%H:%M:%S%.f+00:00",
    "%Y-%m-%dT%H:%M:%S%:z",
    "%Y-%m-%dT%H:%M:%S%.f%:z",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S+00",  # PostgreSQL's text form of a UTC timestamptz
    "%Y-%m-%d %H:%M:%S%.f+00",
)


def parse_timestamps(values: pl.Series) -> pl.Series:
    """ISO-8601 (UTC when no offset), epoch seconds (or milliseconds), or native datetimes → UTC ms.

    Unparseable values become null; the caller tells them apart from missing ones.
    """
    dtype = values.dtype
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            return values.dt.replace_time_zone("UTC").dt.cast_time_unit("ms")
        return values.dt.convert_time_zone("UTC").dt.cast_time_unit("ms")
    if isinstance(dtype, pl.Date):
        return values.cast(pl.Datetime("ms")).dt.replace_time_zone("UTC")
    if dtype.is_numeric():
        return _from_epoch(values.cast(pl.Float64))
    text = values.cast(pl.Utf8)
    whole = _arrow_iso(text)
    if whole is not None:
        return whole.alias(values.name)
    result = pl.repeat(None, len(text), dtype=TS_DTYPE, eager=True)
    pending = text.is_not_null()
    # fast paths: the common ISO forms, each parsed natively (the general path below is ~15× slower).
    # A form is tried on the rows still pending only if it fits the first of them, so a file in one
    # form costs one parse, and a file mixing forms takes each form in turn.
    for form in _ISO_FORMS:
        rows = pending.arg_true()
        if len(rows) == 0:
            return result.alias(values.name)
        part = text if len(rows) == len(text) else text.gather(rows)
        if part.head(64).str.to_datetime(form, strict=False, time_unit="ms", time_zone="UTC").null_count() == min(
            64, len(part)
        ):
            continue
        result = result.scatter(rows, part.str.to_datetime(form, strict=False, time_unit="ms", time_zone="UTC"))
        pending = result.is_null() & text.is_not_null()
    rows = pending.arg_true()
    if len(rows):
        result = result.scatter(rows, _parse_general(text.gather(rows)))
    return result.alias(values.name)


def _arrow_iso(text: pl.Series) -> pl.Series | None:
    """Every value read by Arrow's ISO-8601 cast (a tenth of polars' parse with a format: CSV and
    JSON logs carry their times as text), or None when any value is not in a form it reads as
    :func:`parse_timestamps` does: a date and a time to the minute at least, a zone (``Z`` or an
    offset), at most millisecond digits. Arrow refuses every other form (a time without a zone,
    finer fractions, out-of-range fields), and an hour without minutes, which it reads and this
    module does not, is kept from it; those columns take the parse below."""
    present = text.drop_nulls()
    if len(present) == 0 or not (present.str.slice(13, 1) == ":").all():
        return None
    try:
        parsed = pc.cast(text.to_arrow(), pa.timestamp("ms", "UTC"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return pl.Series(text.name, parsed, dtype=TS_DTYPE)


def _parse_general(text: pl.Series) -> pl.Series:
    text = text.str.strip_chars()
    numeric = text.str.contains(r"^-?[0-9]+(\.[0-9]+)?$")
    from_epoch = _from_epoch(text.cast(pl.Float64, strict=False))
    parts = text.str.extract_groups(_ISO)
    offset = (
        parts.struct.field("5")
        .str.replace(r"^(Z|z|UTC)$", "+00:00")
        .str.replace(r"^([+-][0-9]{2})([0-9]{2})$", "${1}:${2}")
        .str.replace(r"^([+-][0-9]{2})$", "${1}:00")
        .fill_null("+00:00")
    )
    iso = pl.concat_str(
        [
            parts.struct.field("1"),
            pl.lit("T"),
            parts.struct.field("2").fill_null("00:00"),
            parts.struct.field("3").fill_null(":00"),
            parts.struct.field("4").fill_null(""),
            offset,
        ]
    )
    from_iso = (
        pl.select(iso.alias("v"))
        .to_series()
        .str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%:z", strict=False, time_unit="ms")
        .dt.convert_time_zone("UTC")
    )
    return pl.select(pl.when(numeric).then(from_epoch).otherwise(from_iso)).to_series()


def _from_epoch(seconds: pl.Series) -> pl.Series:
    millis = pl.select(pl.when(seconds.abs() > _EPOCH_MS_CUTOFF).then(seconds).otherwise(seconds * 1000)).to_series()
    # NaN and ±inf compare false, so they fall out with everything beyond years 1–9999; the cast is
    # lenient because polars evaluates it on every row, the ones the mask drops included
    in_range = (millis > -62_135_596_800_000) & (millis < 253_402_300_799_000)
    whole_ms = millis.round(0).cast(pl.Int64, strict=False)
    return pl.select(pl.when(in_range).then(whole_ms)).to_series().cast(pl.Datetime("ms")).dt.replace_time_zone("UTC")


# ---------------------------------------------------------------- IPs
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"^{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}$"


def parse_ips(values: pl.Series, distinct: bool = False) -> pl.DataFrame:
    """For each input value: canonical IP text (null if invalid), version, and its subnet (/24, /64).

    IPv4 is validated and cut with regexes; IPv6 goes through a compiled parser, each distinct
    string once. (The request log's addresses are parsed once per process instead: see
    ``ingest.CategoryCleaner``.) ``distinct``: the values are distinct already, so they are parsed
    as they come (de-duplicating a million addresses and joining them back cost twice the parsing)."""
    original = values.cast(pl.Utf8)
    if distinct:
        return _parse_distinct(original)
    distinct = original.unique()  # parse each distinct address once, then join back
    parsed = _parse_distinct(distinct).with_columns(distinct.alias("raw"))
    return (
        pl.DataFrame({"raw": original})
        .join(parsed, on="raw", how="left", maintain_order="left", nulls_equal=True)
        .drop("raw")
    )


def _parse_distinct(values: pl.Series) -> pl.DataFrame:
    """ip, ip_version, subnet for each of ``values`` (row for row; meant for distinct values)."""
    # as load balancers and proxy logs write an address: with a port ("1.2.3.4:443"), in brackets
    # ("[2001:db8::1]:443"), or as a one-host prefix ("1.2.3.4/32", "2001:db8::1/128")
    raw = values.str.strip_chars()
    # (literal tests first: a plain address, nearly every value, skips the patterns)
    wrapped = (
        raw.str.contains("[", literal=True)
        | raw.str.contains("/", literal=True)
        | (raw.str.count_matches(":", literal=True) == 1)
    ).fill_null(False)
    if wrapped.any():
        unwrapped = (
            raw.filter(wrapped)
            .str.replace(r"^([0-9]{1,3}(?:\.[0-9]{1,3}){3})(?:/32|:[0-9]{1,5})$", "$1")
            .str.replace(r"^\[([^\]]+)\](?::[0-9]{1,5})?$", "$1")
            .str.replace(r"^([0-9A-Fa-f:.]+)/128$", "$1")
        )
        raw = raw.scatter(wrapped.arg_true(), unwrapped)
    # octets with leading zeros ("010.1.2.3") do not match: ambiguous (octal to some parsers), and
    # rejected like Python's ipaddress does; a matching address is already canonical
    is_v4 = raw.str.contains(_IPV4).fill_null(False)
    v6_ip = pl.Series("v6_ip", [None] * len(raw), pl.Utf8)
    v6_subnet = pl.Series("v6_subnet", [None] * len(raw), pl.Utf8)
    maybe_v6 = (~is_v4 & raw.str.contains(":").fill_null(False)).arg_true()
    if len(maybe_v6):
        ip, subnet = _parse_v6(raw.gather(maybe_v6))
        v6_ip, v6_subnet = v6_ip.scatter(maybe_v6, ip), v6_subnet.scatter(maybe_v6, subnet)
    return pl.DataFrame({"is_v4": is_v4, "v4": raw, "v6_ip": v6_ip, "v6_subnet": v6_subnet}).select(
        ip=pl.when(pl.col("is_v4")).then(pl.col("v4")).otherwise(pl.col("v6_ip")),
        ip_version=pl.when(pl.col("is_v4"))
        .then(pl.lit(4, pl.Int8))
        .when(pl.col("v6_ip").is_not_null())
        .then(pl.lit(6, pl.Int8)),
        subnet=pl.when(pl.col("is_v4"))
        .then(pl.col("v4").str.replace(r"\.[0-9]+$", ".0/24"))
        .otherwise(pl.col("v6_subnet")),
    )


def _parse_v6(texts: pl.Series) -> tuple[pl.Series, pl.Series]:
    """Canonical text (RFC 5952, as Python's ipaddress prints it) and /64 of each IPv6 value, null where
    invalid. A compiled pass over the Arrow buffers: logs can hold millions of distinct IPv6 addresses
    (privacy addresses rotate daily) and the standard library costs ~20 µs each. The rare forms it
    leaves alone (embedded dotted IPv4, zone ids, IPv4-mapped addresses) go through the standard library."""
    array = texts.fill_null("").to_arrow().cast(pa.large_string())
    offsets = np.frombuffer(array.buffers()[1], np.int64)[array.offset : array.offset + len(array) + 1]
    data = np.frombuffer(array.buffers()[2], np.uint8) if array.buffers()[2] is not None else np.zeros(0, np.uint8)
    status, ip_offsets, ip_data, subnet_offsets, subnet_data = _v6_kernel(offsets, data)
    ip = _strings(ip_offsets, ip_data)
    subnet = _strings(subnet_offsets, subnet_data)
    parsed = status == _V6_PARSED
    ip = pl.select(pl.when(pl.Series(parsed)).then(ip)).to_series()
    subnet = pl.select(pl.when(pl.Series(parsed)).then(subnet)).to_series()
    slow = np.flatnonzero(status == _V6_STANDARD_LIBRARY)
    if len(slow):
        info = [_v6_info(text) for text in texts.gather(slow).to_list()]  # cached: few such addresses
        ip = ip.scatter(slow, pl.Series([row[1] for row in info], dtype=pl.Utf8))
        subnet = subnet.scatter(slow, pl.Series([row[2] for row in info], dtype=pl.Utf8))
    return ip, subnet


def _strings(offsets: np.ndarray, data: np.ndarray) -> pl.Series:
    return pl.from_arrow(pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(data)))


_V6_INVALID, _V6_PARSED, _V6_STANDARD_LIBRARY = 0, 1, 2


@kernel()
def _v6_kernel(offsets, data):
    """Per value: status, and the canonical address and its /64 as string buffers (offsets, bytes)."""
    n = len(offsets) - 1
    status = np.zeros(n, np.int8)
    groups = np.zeros(8, np.int64)
    network = np.zeros(8, np.int64)
    ip_offsets, subnet_offsets = np.zeros(n + 1, np.int64), np.zeros(n + 1, np.int64)
    ip_data, subnet_data = np.empty(n * 39, np.uint8), np.empty(n * 24, np.uint8)  # (longest texts: 39, "…::/64" 24)
    ip_end = subnet_end = 0
    for row in range(n):
        state = _v6_groups(data, offsets[row], offsets[row + 1], groups)
        if (
            state == 1
            and groups[0] == 0
            and groups[1] == 0
            and groups[2] == 0
            and groups[3] == 0
            and groups[4] == 0
            and groups[5] == 0xFFFF
        ):
            state = 2  # IPv4-mapped: read as the IPv4 address it maps
        status[row] = state
        if state == 1:
            ip_end = _v6_format(groups, ip_data, ip_end)
            network[:4] = groups[:4]
            subnet_end = _v6_format(network, subnet_data, subnet_end)
            for byte in (47, 54, 52):  # "/64"
                subnet_data[subnet_end] = byte
                subnet_end += 1
        ip_offsets[row + 1], subnet_offsets[row + 1] = ip_end, subnet_end
    return status, ip_offsets, ip_data[:ip_end], subnet_offsets, subnet_data[:subnet_end]


@numba.njit(cache=True, nogil=True)
def _v6_groups(data, start, end, groups):
    """The 8 groups of the IPv6 text in ``data[start:end]``: 1 parsed, 0 invalid, 2 for the standard
    library (a '.' or '%': embedded IPv4 or a zone id)."""
    for i in range(start, end):
        if data[i] == 46 or data[i] == 37:
            return 2
    parts = np.zeros(8, np.int64)
    count, gap, i = 0, -1, start
    if i + 1 < end and data[i] == 58 and data[i + 1] == 58:  # leading "::"
        gap, i = 0, i + 2
    while i < end:
        value, digits = 0, 0
        while i < end and digits <= 4:
            c = data[i]
            if 48 <= c <= 57:
                value = value * 16 + c - 48
            elif 97 <= c <= 102:
                value = value * 16 + c - 87
            elif 65 <= c <= 70:
                value = value * 16 + c - 55
            else:
                break
            digits += 1
            i += 1
        if digits == 0 or digits > 4 or count == 8:
            return 0
        parts[count] = value
        count += 1
        if i == end:
            break
        if data[i] != 58:
            return 0
        i += 1
        if i < end and data[i] == 58:
            if gap >= 0:
                return 0  # a second "::"
            gap, i = count, i + 1
        elif i == end:
            return 0  # a trailing single ':'
    if gap < 0:
        if count != 8:
            return 0
        groups[:] = parts
        return 1
    if count > 7:  # "::" stands for at least one group
        return 0
    groups[:] = 0
    groups[:gap] = parts[:gap]
    tail = count - gap
    groups[8 - tail :] = parts[gap:count]
    return 1


@numba.njit(cache=True, nogil=True)
def _v6_format(groups, out, position):
    """Write the RFC 5952 text of 8 groups at ``out[position:]``: lowercase hex without leading zeros,
    the first longest run of two or more zero groups as "::". Returns the new end."""
    best_start, best_length, run_start, run_length = -1, 0, -1, 0
    for k in range(8):
        if groups[k] == 0:
            if run_length == 0:
                run_start = k
            run_length += 1
            if run_length > best_length:
                best_start, best_length = run_start, run_length
        else:
            run_length = 0
    if best_length < 2:
        best_start = -1
    k = 0
    while k < 8:
        if k == best_start:  # (the group before it wrote no separator)
            out[position], out[position + 1] = 58, 58
            position += 2
            k += best_length
            continue
        value = groups[k]
        shift = 12
        while shift > 0 and (value >> shift) & 0xF == 0:
            shift -= 4
        while shift >= 0:
            nibble = (value >> shift) & 0xF
            out[position] = nibble + 48 if nibble < 10 else nibble + 87
            position += 1
            shift -= 4
        k += 1
        if k < 8 and k != best_start:
            out[position] = 58
            position += 1
    return position


@functools.lru_cache(maxsize=1 << 20)
def _v6_info(text: str) -> tuple[str, str | None, str | None]:
    if not text.isascii():  # an address is written in ASCII digits; other scripts' digits are not one
        return text, None, None
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return text, None, None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        v4 = str(address.ipv4_mapped)
        return text, v4, v4.rsplit(".", 1)[0] + ".0/24"
    network = ipaddress.ip_network(f"{address}/64", strict=False)
    return text, str(address), str(network)


# ---------------------------------------------------------------- emails
# Providers that ignore dots in the local part; everyone we know of ignores a +tag.
_DOTLESS_DOMAINS = ("gmail.com", "googlemail.com")


def canonical_emails(emails: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """(canonical address, domain). A value without '@' is taken as an upstream hash and kept as is."""
    lowered = emails.str.strip_chars().str.to_lowercase()
    local = lowered.str.extract(r"^([^@]+)@", 1).str.replace(r"\+.*$", "")
    domain = lowered.str.extract(r"@([^@]+)$", 1).str.replace("^googlemail.com$", "gmail.com")
    local = (
        pl.when(domain.is_in(list(_DOTLESS_DOMAINS)))
        .then(local.str.replace_all(".", "", literal=True))
        .otherwise(local)
    )
    canonical = pl.when(domain.is_null()).then(lowered).otherwise(pl.concat_str([local, pl.lit("@"), domain]))
    return canonical, domain


# An academic institution's own mail domain: it issues the addresses (``.edu``, ``.edu.xx``, ``.ac.xx``),
# so an operator cannot mint them at will as it can a free-mail address, an org id or a domain of its own.
_ACADEMIC_DOMAIN = r"(?:^|\.)([a-z0-9-]+\.(?:edu|(?:ac|edu)\.[a-z]{2}))$"


def academic_institution(domain: pl.Expr) -> pl.Expr:
    """The academic institution a mail domain belongs to (``college.edu`` for ``student.college.edu``,
    ``ox.ac.uk`` for ``cs.ox.ac.uk``), null for any other domain."""
    return domain.str.extract(_ACADEMIC_DOMAIN, 1)


# ---------------------------------------------------------------- prompts
# Slots that vary from one filled-in prompt to the next; the scaffold around them does not.
# Few, cheap patterns: each pass over 16M prompts costs seconds (see PERFORMANCE_NOTES).
# One alternation, one pass: code blocks, URLs and emails, quoted spans, any token with a digit
# (numbers, ids, hashes, uuids); the kind of slot does not matter to the scaffold, only its place.
_ADDRESS_SLOTS = (r"\S+://\S+", r"www\.\S+", r"\S+@\S+\.\w+")
_OTHER_SLOTS = (
    r"\"[^\"\n]{0,400}\"",
    r"“[^”\n]{0,400}”",
    r"«[^»\n]{0,400}»",
    r"'[^'\n]{2,400}'",
    r"`[^`\n]{1,200}`",
    r"[\w-]*\d[\w-]*",
)
_CODE_SLOT = r"```.*?(?:```|$)"
_SLOTS = "(?s)" + "|".join((_CODE_SLOT, *_ADDRESS_SLOTS, *_OTHER_SLOTS))
# An address branch starts with a run of any non-blank characters: no literal to search for, so the
# regex engine tries it at every position (half the pass). It can only match a text holding its
# literal, so texts with none are masked by the same alternation without those branches: the same
# matches, in the same order of preference.
_SLOTS_WITHOUT_ADDRESSES = "(?s)" + "|".join((_CODE_SLOT, *_OTHER_SLOTS))
_ADDRESS_LITERALS = ["://", "www.", "@"]
_SLOT_MARK = "‹n›"
_NAME = (r"([a-z,;] )[A-Z][a-z]+(?: [A-Z][a-z]+)*", "${1}‹name›")  # capitalised words mid-sentence
_BREAKS = [". ", "? ", "! ", ": ", "; ", "。", "？", "！", "：", "\r"]
# Phrases of prompts that harvest reasoning traces, grades or tool-use trajectories (matched
# case-insensitively with Aho-Corasick: one cheap pass, a few languages).
REASONING_STYLE = [
    "step-by-step",
    "step by step",
    "chain of thought",
    "chain-of-thought",
    "show your work",
    "show your reasoning",
    "show all your work",
    "reasoning trace",
    "reasoning steps",
    "think carefully",
    "explain your reasoning",
    "full reasoning",
    "complete reasoning",
    "internal reasoning",
    "numbered steps",
    "rubric",
    "grade the",
    "score the response",
    "tool_call",
    "tool call",
    "function call",
    "<tool",
    "observation:",
    "trajectory",
    "raisonnement",
    "étape par étape",
    "paso a paso",
    "razonamiento",
    "пошагово",
    "рассуждени",
    "推理",
    "逐步",
    "思考过程",
]


def mask_prompts(prompts: pl.Series, max_chars: int) -> pl.Series:
    """Prompt text with variable slots replaced by markers (numbers, quotes, code, ids, URLs, names)."""
    masked = mask_slots(prompts.str.slice(0, max_chars))
    return masked.str.replace_all(*_NAME).str.to_lowercase()


def mask_slots(texts: pl.Series) -> pl.Series:
    """``texts`` with each slot of :data:`_SLOTS` replaced by a marker (see :data:`_SLOTS_WITHOUT_ADDRESSES`)."""
    masked = texts.str.replace_all(_SLOTS_WITHOUT_ADDRESSES, _SLOT_MARK)
    with_address = texts.str.contains_any(_ADDRESS_LITERALS).arg_true()
    if len(with_address):
        masked = masked.scatter(with_address, texts.gather(with_address).str.replace_all(_SLOTS, _SLOT_MARK))
    return masked


def split_segments(keys: pl.Series, masked: pl.Series, max_segments: int) -> pl.DataFrame:
    """(key, segment) rows: masked prompts cut at line and sentence ends, whitespace-trimmed, in order."""
    broken = masked.str.replace_many(_BREAKS, [b.strip() + "\n" for b in _BREAKS])
    broken = broken.str.replace_all(r"[ \t]*\n\s*", "\n").str.strip_chars()
    frame = pl.DataFrame({"key": keys, "segment": broken.str.split("\n").list.head(max_segments)})
    return frame.explode("segment").filter(pl.col("segment").str.len_bytes() > 0)


# ---------------------------------------------------------------- table normalisers


def normalize_accounts(accounts: pl.DataFrame) -> pl.DataFrame:
    canonical, domain = canonical_emails(pl.col("email"))
    return accounts.with_columns(
        canonical.alias("email"),
        domain.alias("email_domain"),
        pl.col("country").str.to_uppercase(),
        pl.col("signup_ip_subnet").alias("signup_subnet"),
    )


def normalize_payments(payments: pl.DataFrame) -> pl.DataFrame:
    return payments.with_columns(
        pl.col("instrument_type").str.to_lowercase(),
        pl.col("bin").str.replace_all(r"\D", "").str.slice(0, 8),
        pl.col("issuer_country").str.to_uppercase(),
    )


def lowercase(values: pl.Series, synonyms: dict[str, str] | None = None) -> pl.Series:
    """Lower-cased text, then ``synonyms`` (lower-case keys) replaced by their canonical value; a
    categorical stays one and is mapped per distinct value (usually a no-op)."""
    if not isinstance(values.dtype, pl.Categorical):
        lowered_text = values.str.to_lowercase()
        return lowered_text.replace(synonyms) if synonyms else lowered_text
    distinct = values.unique(maintain_order=True).drop_nulls()
    text = distinct.cast(pl.Utf8).str.to_lowercase()
    lowered = (text.replace(synonyms) if synonyms else text).cast(pl.Categorical)
    if (lowered.to_physical() == distinct.to_physical()).all():
        return values
    mapping = pl.DataFrame({"raw": distinct.to_physical(), "lowered": lowered})
    return (
        pl.DataFrame({"raw": values.to_physical()})
        .join(mapping, on="raw", how="left", maintain_order="left")["lowered"]
        .alias(values.name)
    )


def normalize_requests(batch: pl.DataFrame, miner, bound: tuple[np.ndarray, np.ndarray] | None = None) -> pl.DataFrame:
    """A validated request batch reduced to the compact columns the graph needs; prompt text is
    consumed here (by the template miner) and not kept."""
    prompts = batch["prompt"] if "prompt" in batch.columns else pl.Series("prompt", [None] * batch.height, pl.Utf8)
    accounts = batch["account_id"].cast(pl.Categorical)
    per_prompt = miner.add_batch(accounts, prompts, bound)
    request_key = pl.when(pl.col("request_id").is_not_null()).then(pl.col("request_id").hash(11))
    # identifiers repeat across millions of requests: categoricals hold each string once and
    # turn every later group-by into an integer one
    cat = pl.Categorical
    return batch.select(
        accounts,
        "ts",
        pl.col("ip").cast(cat),
        pl.col("ip_subnet").alias("subnet").cast(cat),
        "asn",
        lowercase(batch["ip_type"], IP_TYPE_SYNONYMS).cast(cat),
        pl.col("device_id").cast(cat),
        pl.col("model").cast(cat),
        "input_tokens",
        "output_tokens",
        request_key.alias("request_key"),
        per_prompt["prompt_key"],
        pl.col("_file").cast(pl.Categorical),
        "_row",
    )
