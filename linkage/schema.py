"""The input tables of the data contract (../shared/DATA_CONTRACT.md), as data."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # id | string | text | timestamp | int | asn (an int, "AS" prefix allowed) | ip
    required: bool = False


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[Column, ...]
    required_table: bool = True
    # columns of a table of millions of rows whose values repeat (the request log's accounts,
    # addresses, clients): validated per distinct value, and categoricals from then on
    categorical_columns: frozenset[str] = frozenset()

    @property
    def required_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)


ACCOUNTS = TableSpec(
    "accounts",
    (
        Column("account_id", "id", True),
        Column("created_at", "timestamp", True),
        Column("email", "string"),
        Column("org_id", "string"),
        Column("country", "string"),
        Column("signup_ip", "ip"),
    ),
)

PAYMENTS = TableSpec(
    "payments",
    (
        Column("account_id", "id", True),
        Column("instrument_id", "id", True),
        Column("instrument_type", "string"),
        Column("bin", "string"),
        Column("issuer_country", "string"),
        Column("added_at", "timestamp"),
    ),
)

REQUESTS = TableSpec(
    "requests",
    (
        Column("account_id", "id", True),
        Column("ts", "timestamp", True),
        Column("ip", "ip", True),
        Column("request_id", "string"),
        Column("asn", "asn"),
        Column("ip_type", "string"),
        Column("device_id", "string"),
        Column("user_agent", "text"),
        Column("model", "string"),
        Column("prompt", "text"),
        Column("input_tokens", "int"),
        Column("output_tokens", "int"),
    ),
    categorical_columns=frozenset({"account_id", "ip", "ip_type", "device_id", "model"}),
)

LABELS = TableSpec(
    "labels",
    (
        Column("account_id", "id", True),
        Column("label", "id", True),
    ),
    required_table=False,
)

TABLES: dict[str, TableSpec] = {t.name: t for t in (ACCOUNTS, PAYMENTS, REQUESTS, LABELS)}
EXTENSIONS = (".csv", ".csv.gz", ".jsonl", ".jsonl.gz", ".parquet")
PROXY_IP_TYPES = ("proxy", "vpn", "datacenter", "tor")
# other IP-intelligence vocabularies (ipinfo's and MaxMind's connection and usage types, IP2Proxy's
# codes) in the contract's terms; any other value is kept as given
IP_TYPE_SYNONYMS = {
    "hosting": "datacenter",
    "dch": "datacenter",
    "data center": "datacenter",
    "data_center": "datacenter",
    "cloud": "datacenter",
    "cellular": "mobile",
    "wireless": "mobile",
    "isp": "residential",
    "broadband": "residential",
    "pub": "proxy",
    "public proxy": "proxy",
    "web proxy": "proxy",
    "tor exit": "tor",
    "tor_exit": "tor",
}
