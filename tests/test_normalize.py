from __future__ import annotations

import polars as pl

from linkage.normalize import (
    _SLOT_MARK,
    _SLOTS,
    academic_institution,
    canonical_emails,
    lowercase,
    mask_slots,
    parse_ips,
    parse_timestamps,
)


def test_ip_subnets_v4_and_v6() -> None:
    parsed = parse_ips(pl.Series(["10.1.2.3", " 10.1.2.99", "2001:DB8:0:0:1::1", "::ffff:10.1.2.3", "1.2.3", "zz"]))
    assert parsed["ip"].to_list() == ["10.1.2.3", "10.1.2.99", "2001:db8::1:0:0:1", "10.1.2.3", None, None]
    assert parsed["subnet"].to_list() == ["10.1.2.0/24", "10.1.2.0/24", "2001:db8::/64", "10.1.2.0/24", None, None]


def test_ip_octets_with_leading_zeros_are_rejected_not_reinterpreted() -> None:
    """ "010.1.2.3" is octal to some parsers and decimal to others: unparseable (so quarantined), like ipaddress."""
    parsed = parse_ips(pl.Series(["010.001.002.003", "10.1.2.3", "0.0.0.0", "192.168.000.010"]))
    assert parsed["ip"].to_list() == [None, "10.1.2.3", "0.0.0.0", None]
    assert parsed["subnet"].to_list() == [None, "10.1.2.0/24", "0.0.0.0/24", None]


def test_lowercase_keeps_categoricals_and_lowers_each_value() -> None:
    raw = pl.Series(["Proxy", "vpn", None, "VPN", "proxy"])
    for values in (raw, raw.cast(pl.Categorical)):
        lowered = lowercase(values)
        assert lowered.cast(pl.Utf8).to_list() == ["proxy", "vpn", None, "vpn", "proxy"]
        assert lowered.dtype == values.dtype
    already = pl.Series(["a", "b", "a"]).cast(pl.Categorical)
    assert lowercase(already) is already


def test_email_canonical_form() -> None:
    frame = pl.DataFrame({"e": ["J.Doe+promo@GoogleMail.com", "jdoe@gmail.com", "a.b+x@corp.io", "4f2a9c"]})
    canonical, domain = canonical_emails(pl.col("e"))
    out = frame.select(canonical.alias("c"), domain.alias("d"))
    assert out["c"].to_list() == ["jdoe@gmail.com", "jdoe@gmail.com", "a.b@corp.io", "4f2a9c"]
    assert out["d"].to_list() == ["gmail.com", "gmail.com", "corp.io", None]


def test_academic_institutions_are_read_from_their_own_mail_domains() -> None:
    domains = [
        "student.college0.edu",
        "mit.edu",
        "cs.ox.ac.uk",
        "tsinghua.edu.cn",
        "gmail.com",
        "edu.com",
        "x.ac",
        None,
    ]
    found = pl.DataFrame({"d": domains}).select(academic_institution(pl.col("d")))["d"].to_list()
    assert found == ["college0.edu", "mit.edu", "ox.ac.uk", "tsinghua.edu.cn", None, None, None, None]


def test_timestamps_offsets_epochs_and_garbage() -> None:
    values = pl.Series(
        ["2026-02-23T10:00:00Z", "2026-02-23T12:00:00+02:00", "2026-02-23 10:00", "1771840800", "yesterday", None]
    )
    parsed = parse_timestamps(values).dt.epoch("s").to_list()
    assert parsed[:4] == [1771840800] * 4
    assert parsed[4:] == [None, None]


def test_ipv6_compiled_parser_agrees_with_the_standard_library() -> None:
    """Canonical text and /64 exactly as ipaddress gives them, for random and edge-case forms."""
    import ipaddress
    import random

    from linkage.normalize import _parse_v6

    rng = random.Random(7)
    cases = [
        "::",
        "::1",
        "1::",
        "1:2:3:4:5:6:7::",
        "::2:3:4:5:6:7:8",
        "1:2:3:4:5:6:7:8",
        "2001:DB8::1",
        "2001:0db8:0000:0000:0000:ff00:0042:8329",
        "fe80::1%eth0",
        "::ffff:1.2.3.4",
        "::ffff:a01:203",
        "64:ff9b::1.2.3.4",
        "1:0:0:2:0:0:0:3",
        "1:0:0:2:0:0:3:4",
        "0:0:1:0:0:1:0:0",
        ":::",
        "1:2:3:4:5:6:7:8:9",
        "12345::",
        "g::1",
        "1::2::3",
        ":1::",
        "1:",
        ":1",
        "1:2:3:4:5:6:7",
        "",
        "1:2:3:4:5:6:7:8::",
    ]
    for _ in range(3000):
        words = [rng.choice([0, 0, 0, rng.randrange(1 << 16)]) for _ in range(8)]
        text = ":".join(f"{w:x}" if rng.random() < 0.7 else f"{w:04X}" for w in words)
        cases.append(str(ipaddress.IPv6Address(text)) if rng.random() < 0.5 else text)
    ip, subnet = _parse_v6(pl.Series(cases, dtype=pl.Utf8))
    for text, got_ip, got_subnet in zip(cases, ip.to_list(), subnet.to_list()):
        try:
            address = ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            assert (got_ip, got_subnet) == (None, None), text
            continue
        if address.ipv4_mapped is not None:
            v4 = str(address.ipv4_mapped)
            assert (got_ip, got_subnet) == (v4, v4.rsplit(".", 1)[0] + ".0/24"), text
        else:
            assert (got_ip, got_subnet) == (str(address), str(ipaddress.ip_network(f"{address}/64", strict=False))), (
                text
            )


def test_timestamp_fast_forms_agree_with_the_general_parser() -> None:
    """Each common ISO form (fractions, offsets, no zone = UTC), alone or mixed in one column, gives
    what the general parser gives."""
    from linkage.normalize import _parse_general

    values = [
        "2026-02-23T10:00:00Z",
        "2026-02-23T10:00:00.250Z",
        "2026-02-23T12:00:00+02:00",
        "2026-02-23T10:00:00+00:00",
        "2026-02-23T10:00:00.001+00:00",
        "2026-02-23T04:30:00.5-05:30",
        "2026-02-23T10:00:00",
        "2026-02-23T10:00:00.125",
        "2026-02-23 10:00:00",
        "2026-02-23 10:00:00.75",
        "2026-02-23T10:00",
        "1771840800",
        "soon",
        None,
    ]
    expected = _parse_general(pl.Series(values, dtype=pl.Utf8)).dt.epoch("ms").to_list()
    assert expected[0] == 1771840800000 and expected[2] == 1771840800000 and expected[5] == 1771840800500
    assert parse_timestamps(pl.Series(values)).dt.epoch("ms").to_list() == expected  # mixed
    for value, want in zip(values, expected):  # one form per column, as in most files
        assert parse_timestamps(pl.Series([value] * 70, dtype=pl.Utf8)).dt.epoch("ms").to_list() == [want] * 70, value


def test_times_read_by_arrow_agree_with_the_general_parser() -> None:
    """Columns of zoned ISO times (CSV and JSON logs) are read by Arrow's cast; each value is what
    the general parser reads, and forms Arrow reads otherwise (an hour without minutes) or not at all
    (no zone, finer fractions) leave the column to the parsers above."""
    import random

    from linkage.normalize import _arrow_iso, _parse_general

    rng = random.Random(5)
    forms = []
    for _ in range(300):
        year, month, day = rng.randint(1, 9998), rng.randint(1, 12), rng.randint(1, 28)
        clock = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}" + rng.choice(["", f":{rng.randint(0, 59):02d}"])
        fraction = rng.choice(["", ".5", ".25", ".125"]) if clock.count(":") == 2 else ""
        zone = rng.choice(["Z", "+00:00", "-05:30", "+0530", "+14:00", "-00:00", "+02"])
        forms.append(f"{year:04d}-{month:02d}-{day:02d}T{clock}{fraction}{zone}")
    column = pl.Series(forms + [None], dtype=pl.Utf8)
    assert _arrow_iso(column) is not None  # read by Arrow
    assert parse_timestamps(column).dt.epoch("ms").to_list() == _parse_general(column).dt.epoch("ms").to_list()
    for other in ("2026-02-23T10Z", "2026-02-23T10:00:00", "2026-02-23T10:00:00.1234Z", "2026-02-23 10:00:00Z"):
        mixed = pl.Series([forms[0], other], dtype=pl.Utf8)
        assert (_arrow_iso(mixed) is None) == ("T" in other), other  # (a space for the T Arrow reads too)
        assert parse_timestamps(mixed).dt.epoch("ms").to_list() == _parse_general(mixed).dt.epoch("ms").to_list()


def test_ip_types_from_other_vocabularies_are_read_in_the_contracts_terms() -> None:
    """ipinfo/MaxMind "hosting", "cellular", "isp" and IP2Proxy's "DCH" mean datacenter, mobile and
    residential; unknown values stay as given; text and categorical columns agree."""
    from linkage.schema import IP_TYPE_SYNONYMS

    raw = pl.Series("ip_type", ["Hosting", "RESIDENTIAL", "Cellular", None, "satellite", "DCH", "isp", "vpn"])
    expected = ["datacenter", "residential", "mobile", None, "satellite", "datacenter", "residential", "vpn"]
    assert lowercase(raw, IP_TYPE_SYNONYMS).to_list() == expected
    assert lowercase(raw.cast(pl.Categorical), IP_TYPE_SYNONYMS).cast(pl.Utf8).to_list() == expected


def test_addresses_as_proxies_and_load_balancers_write_them() -> None:
    """A port, brackets or a one-host prefix around an address is the address; a network is not one."""
    raw = pl.Series(
        [
            "1.2.3.4:8080",
            "1.2.3.4/32",
            "[2001:db8::1]",
            "[2001:db8::1]:443",
            "2001:db8::1/128",
            "2001:db8::/32",
            "1.2.3.0/24",
            "1.2.3.4:80:80",
        ]
    )
    parsed = parse_ips(raw)
    assert parsed["ip"].to_list() == [
        "1.2.3.4",
        "1.2.3.4",
        "2001:db8::1",
        "2001:db8::1",
        "2001:db8::1",
        None,
        None,
        None,
    ]
    assert parsed["subnet"].to_list()[:2] == ["1.2.3.0/24", "1.2.3.0/24"]
    # values known to be distinct are parsed as they come, to the same result
    assert parse_ips(raw, distinct=True).equals(parsed)


def test_timestamps_with_an_hour_only_offset_as_postgresql_writes_them() -> None:
    """psql prints a timestamptz as "2026-02-03 02:00:00+00"; other zones as "+02" or "-01"."""
    parsed = parse_timestamps(
        pl.Series(
            "ts",
            ["2026-02-03 02:00:00+00", "2026-02-03 02:00:00.25+00", "2026-02-03 04:00:00+02", "2026-02-03 01:00:00-01"],
        )
    )
    assert parsed.dt.epoch("ms").to_list() == [1770084000000, 1770084000250, 1770084000000, 1770084000000]
    assert parse_timestamps(pl.Series("ts", ["2026-02-03 04:00:00+0030"])).dt.epoch("s").to_list() == [
        1770084000 + 5400  # 03:30 UTC: "+0030" is a half-hour offset, not "+00" and stray digits
    ]


def test_slots_are_masked_as_by_the_whole_alternation_with_or_without_an_address() -> None:
    # texts without an address literal skip the address branches: the matches must stay the same
    texts = pl.Series(
        [
            "fix issue 42 in 'my repo' using `grep -r x`",
            "mail bob@example.com or see https://x.org/a?b=1 and www.site.io now",
            '"quoted https://inside.org" then a@b.cd, ids ab-12-cd and 3.14',
            "```python\nprint(1)  # a@b\n``` after the block www.x.y",
            "WWW.UPPER.COM and ftp://host/path, «guillemets» “curly 7”",
            "no slot at all here",
            "",
            None,
            "@ alone, :// alone, www. alone",
        ],
        dtype=pl.Utf8,
    )
    assert mask_slots(texts).to_list() == texts.str.replace_all(_SLOTS, _SLOT_MARK).to_list()
    assert mask_slots(texts)[1] == "mail ‹n› or see ‹n› and ‹n› now"
