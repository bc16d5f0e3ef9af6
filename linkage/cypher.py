"""Access to the Cypher files in ``cypher/``: named statements and the investigators' queries."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .errors import ConfigError


def _cypher_dir() -> Path:
    """The Cypher files: shipped in the package (``linkage.cypher_files``, mapped from ``cypher/``)."""
    from importlib.resources import files

    return Path(str(files("linkage.cypher_files")))


CYPHER_DIR = _cypher_dir()
_NAME = re.compile(r"^//\s*:name\s+(\S+)\s*$", re.MULTILINE)


@cache
def statements(file: str) -> dict[str, str]:
    """``// :name x`` sections of ``cypher/<file>``, each a statement without its trailing ';'."""
    text = (CYPHER_DIR / file).read_text()
    parts = _NAME.split(text)
    return {name: body.strip().rstrip(";").strip() for name, body in zip(parts[1::2], parts[2::2])}


def schema_statements() -> list[str]:
    text = "\n".join(
        line for line in (CYPHER_DIR / "schema.cypher").read_text().splitlines() if not line.strip().startswith("//")
    )
    return [s.strip() for s in text.split(";") if s.strip()]


@dataclass(frozen=True)
class NamedQuery:
    name: str
    purpose: str
    parameters: list[str]
    example: str
    text: str


def _header_field(header: list[str], field: str) -> str:
    """A header field's text, continuation lines included (up to the next ``Field:`` line)."""
    collected: list[str] = []
    for line in header:
        starts_field = re.match(r"^[A-Z][a-z]+:", line) is not None
        if collected and starts_field:
            break
        if line.lower().startswith(field + ":"):
            collected.append(line.split(":", 1)[1].strip())
        elif collected:
            collected.append(line.strip())
    return " ".join(collected)


@cache
def queries() -> dict[str, NamedQuery]:
    found: dict[str, NamedQuery] = {}
    for path in sorted((CYPHER_DIR / "queries").glob("*.cypher")):
        lines = path.read_text().splitlines()
        header = [l.lstrip("/").strip() for l in lines if l.startswith("//")]
        body = "\n".join(l for l in lines if not l.startswith("//")).strip().rstrip(";")
        params = sorted(set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", body)))
        found[path.stem] = NamedQuery(
            path.stem, _header_field(header, "purpose"), params, _header_field(header, "example"), body
        )
    return found


def query(name: str) -> NamedQuery:
    try:
        return queries()[name]
    except KeyError:
        raise ConfigError(f"no query named '{name}' (see `linkage query --list`)") from None
