"""README and docs/ link only to files that exist in the repository (a clone alone is complete)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import ROOT

_LINK = re.compile(r"\]\(([^)\s]+)\)")
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_relative_link_resolves(document: Path) -> None:
    targets = [t for t in _LINK.findall(document.read_text()) if not re.match(r"^[a-z]+:", t)]
    missing = [t for t in targets if not (document.parent / t.split("#")[0]).exists()]
    assert not missing, f"{document.name} links to missing files: {missing}"
    assert all(not (document.parent / t).resolve().is_relative_to(ROOT.parent / "shared") for t in targets)


def test_readme_cites_no_file_outside_the_repository() -> None:
    text = (ROOT / "README.md").read_text()
    for cited in re.findall(r"`((?:\.\./)+[^`\s]+)`", text):
        # the one sibling README names is the optional benchmark, and it says so
        assert cited.startswith("../shared/benchmark"), cited
    assert "PERFORMANCE_NOTES" not in text and "DATA_CONTRACT" not in text


def test_every_key_constant_is_a_setting_with_a_sensitivity_row(monkeypatch: pytest.MonkeyPatch) -> None:
    from linkage.settings import Settings

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from sensitivity import KEY_CONSTANTS

    defaults = Settings()
    table = (ROOT / "README.md").read_text().split("### Sensitivity", 1)[1]
    for dotted in KEY_CONSTANTS:
        section, name = dotted.split(".")
        value = getattr(getattr(defaults, section), name)
        assert isinstance(value, int | float) and not isinstance(value, bool), dotted
        assert f"| `{dotted}`" in table, f"README's sensitivity table has no row for {dotted}"
