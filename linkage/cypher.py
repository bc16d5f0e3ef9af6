"""Access to the Cypher files in ``cypher/``: named statements and the investigators' queries."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

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


_TYPES: dict[str, type] = {"string": str, "integer": int, "float": float, "boolean": bool}
_PARAM = re.compile(
    r"^(?P<name>[A-Za-z_]\w*)\s+(?P<type>string|integer|float|boolean)"
    r"(?:\s*=\s*(?P<default>\"[^\"]*\"|\S+))?\s*(?:—\s*(?P<help>.*))?$"
)


@dataclass(frozen=True)
class QueryParam:
    """One ``// Param: name type [= default] — description`` line of a query's header."""

    name: str
    type: str  # string | integer | float | boolean
    default: Any = None  # None: required
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is None

    def convert(self, text: str) -> Any:
        """The typed value of ``text``: a string stays a string (``00123`` is not 123)."""
        if self.type == "string":
            return text
        if self.type == "boolean":
            if text.lower() not in ("true", "false"):
                raise ConfigError(f"--param {self.name}: expected true or false, got '{text}'")
            return text.lower() == "true"
        try:
            return _TYPES[self.type](text)
        except ValueError:
            raise ConfigError(f"--param {self.name}: expected {self.type}, got '{text}'") from None


@dataclass(frozen=True)
class NamedQuery:
    name: str
    purpose: str
    params: tuple[QueryParam, ...]
    example: str
    text: str

    @property
    def parameters(self) -> list[str]:
        return [p.name for p in self.params]

    def bind(self, given: dict[str, str]) -> dict[str, Any]:
        """Typed values for every declared parameter (defaults filled in); an unknown or missing
        parameter, or a value of the wrong type, is a :class:`ConfigError` naming it."""
        declared = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise ConfigError(
                f"query '{self.name}' has no parameter '{unknown[0]}' (parameters: {', '.join(declared) or 'none'})"
            )
        missing = [p.name for p in self.params if p.required and p.name not in given]
        if missing:
            raise ConfigError(f"query '{self.name}' needs --param {missing[0]}=… ({declared[missing[0]].help})")
        return {p.name: p.convert(given[p.name]) if p.name in given else p.default for p in self.params}


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


def _params(path: Path, header: list[str], body: str) -> tuple[QueryParam, ...]:
    params = []
    for line in header:
        if not line.lower().startswith("param:"):
            continue
        found = _PARAM.match(line.split(":", 1)[1].strip())
        if not found:
            raise ConfigError(f"{path}: malformed parameter line '{line}' (name type [= default] — description)")
        default = found["default"]
        param = QueryParam(found["name"], found["type"], None, (found["help"] or "").strip())
        if default is not None:
            param = QueryParam(param.name, param.type, param.convert(default.strip('"')), param.help)
        params.append(param)
    used = set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", body))
    declared = {p.name for p in params}
    if used != declared:
        raise ConfigError(f"{path}: parameters used {sorted(used)} but declared {sorted(declared)}")
    return tuple(params)


@cache
def queries() -> dict[str, NamedQuery]:
    found: dict[str, NamedQuery] = {}
    for path in sorted((CYPHER_DIR / "queries").glob("*.cypher")):
        lines = path.read_text().splitlines()
        header = [line.lstrip("/").strip() for line in lines if line.startswith("//")]
        body = "\n".join(line for line in lines if not line.startswith("//")).strip().rstrip(";")
        found[path.stem] = NamedQuery(
            path.stem,
            _header_field(header, "purpose"),
            _params(path, header, body),
            _header_field(header, "example"),
            body,
        )
    return found


def query(name: str) -> NamedQuery:
    try:
        return queries()[name]
    except KeyError:
        raise ConfigError(f"no query named '{name}' (see `linkage query --list`)") from None
