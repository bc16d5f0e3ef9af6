"""Readable labels for evidence entities: what an investigator reads instead of an opaque key.

An entity is ``TYPE|key`` throughout detection (``PromptTemplate|T1341…``, ``SignupBurst|982964``,
``ModelSwitch|atlas-large-2@491844``). :func:`entity_labels` turns each into a sentence built from
the graph's own node properties: a template becomes its scaffold text, a signup burst or model
switch its time window and how many accounts are in it, a card its type, BIN and issuer country.
"""

from __future__ import annotations

import polars as pl

from .graph import Graph
from .settings import DetectSettings

_MAX_TEMPLATE_CHARS = 160


def entity_labels(graph: Graph, entities: pl.DataFrame, settings: DetectSettings) -> pl.DataFrame:
    """``entity, label`` for the distinct ``entity`` values of ``entities`` (columns ``entity``, ``type``,
    ``degree``: the number of accounts holding it)."""
    distinct = entities.select("entity", "type", "degree").unique("entity", keep="first")
    if distinct.height == 0:
        return pl.DataFrame(schema={"entity": pl.Utf8, "label": pl.Utf8})
    keyed = distinct.with_columns(pl.col("entity").str.splitn("|", 2).struct.field("field_1").alias("key"))
    keys = keyed.select("key").unique()
    labelled = keyed.join(_cards(graph, keys), on="key", how="left").join(_addresses(graph, keys), on="key", how="left")
    labelled = labelled.join(_templates(graph, keys), on="key", how="left")
    burst_seconds = settings.signup_window_minutes * 60
    window_start = pl.from_epoch(pl.col("key").cast(pl.Int64, strict=False) * burst_seconds, time_unit="s")
    switch = pl.col("key").str.splitn("@", 2)
    switch_start = pl.from_epoch(switch.struct.field("field_1").cast(pl.Int64, strict=False) * 3600, time_unit="s")
    accounts = pl.format("{} accounts", pl.col("degree"))
    label = (
        pl.when(pl.col("type") == "PaymentInstrument")
        .then(pl.format("card {} ({})", pl.col("key"), pl.col("card_facts").fill_null("no card details")))
        .when(pl.col("type") == "Bin")
        .then(pl.format("BIN {} (cards of {})", pl.col("key"), accounts))
        .when(pl.col("type").is_in(["IP", "SignupIP"]))
        .then(
            pl.format(
                "{} {} ({})",
                pl.when(pl.col("type") == "IP").then(pl.lit("address")).otherwise(pl.lit("signup address")),
                pl.col("key"),
                pl.col("address_facts").fill_null("no network details"),
            )
        )
        .when(pl.col("type") == "Subnet")
        .then(pl.format("subnet {}", pl.col("key")))
        .when(pl.col("type") == "ASN")
        .then(pl.format("network AS{}", pl.col("key")))
        .when(pl.col("type") == "Device")
        .then(pl.format("client fingerprint {}", pl.col("key")))
        .when(pl.col("type") == "Email")
        .then(pl.format("mailbox {}", pl.col("key")))
        .when(pl.col("type") == "EmailDomain")
        .then(pl.format("email domain {}", pl.col("key")))
        .when(pl.col("type") == "PromptTemplate")
        .then(pl.format("template «{}»", pl.col("template_text").fill_null(pl.col("key"))))
        .when(pl.col("type") == "SignupBurst")
        .then(
            pl.format(
                "signup burst {}–{} UTC ({})",
                window_start.dt.strftime("%Y-%m-%d %H:%M"),
                (window_start + pl.duration(seconds=burst_seconds)).dt.strftime("%H:%M"),
                accounts,
            )
        )
        .when(pl.col("type") == "ModelSwitch")
        .then(
            pl.format(
                "switch to {} in the hour from {} UTC ({})",
                switch.struct.field("field_0"),
                switch_start.dt.strftime("%Y-%m-%d %H:%M"),
                accounts,
            )
        )
        .otherwise(pl.format("{} {}", pl.col("type"), pl.col("key")))
    )
    return labelled.select("entity", label.alias("label"))


def _node_facts(graph: Graph, label: str, key: str, keys: pl.DataFrame, name: str, facts: pl.Expr) -> pl.DataFrame:
    """``key, <name>``: ``facts`` of the ``label`` nodes whose key is among ``keys`` (null where empty)."""
    nodes = graph.nodes.get(label)
    if nodes is None or nodes.height == 0:
        return pl.DataFrame(schema={"key": pl.Utf8, name: pl.Utf8})
    return nodes.join(keys, left_on=key, right_on="key").select(
        pl.col(key).alias("key"), pl.when(facts != "").then(facts).alias(name)
    )


def _listed(*parts: pl.Expr) -> pl.Expr:
    return pl.concat_str(list(parts), separator=", ", ignore_nulls=True)


def _cards(graph: Graph, keys: pl.DataFrame) -> pl.DataFrame:
    facts = _listed(
        pl.col("instrument_type"),
        pl.format("BIN {}", pl.col("bin")),
        pl.format("issued in {}", pl.col("issuer_country")),
    )
    return _node_facts(graph, "PaymentInstrument", "instrument_id", keys, "card_facts", facts)


def _addresses(graph: Graph, keys: pl.DataFrame) -> pl.DataFrame:
    facts = _listed(pl.col("ip_type"), pl.format("AS{}", pl.col("asn")), pl.format("subnet {}", pl.col("subnet")))
    return _node_facts(graph, "IP", "ip", keys, "address_facts", facts)


def _templates(graph: Graph, keys: pl.DataFrame) -> pl.DataFrame:
    text = pl.col("text").str.replace_all(r"\s+", " ").str.strip_chars()
    short = (
        pl.when(text.str.len_chars() > _MAX_TEMPLATE_CHARS)
        .then(text.str.slice(0, _MAX_TEMPLATE_CHARS) + "…")
        .otherwise(text)
    )
    return _node_facts(graph, "PromptTemplate", "template_id", keys, "template_text", short)
