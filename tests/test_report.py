"""report.html: one self-contained page per run, checked in a real headless Chromium."""

from __future__ import annotations

import os
import re
from pathlib import Path

import polars as pl
import pytest

import linkage
from linkage.report import REPORT_FILE, write_report

from .conftest import TINY


def _browser_path() -> str:
    path = os.environ.get("LINKAGE_CHROMIUM") or "/usr/bin/chromium"
    if not Path(path).exists():
        if os.environ.get("LINKAGE_REQUIRE_BROWSER"):
            pytest.fail(f"no chromium at {path!r} but the browser tests are required (CI)")
        pytest.skip("no chromium: scripts/chromium.sh installs Debian's package")
    return path


def _open(report: Path, screenshot: Path | None = None) -> dict:
    """Load the page; return console problems, every request, dialogs and what rendered."""
    playwright = pytest.importorskip("playwright.sync_api")
    seen: dict = {"problems": [], "requests": [], "dialogs": []}
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=_browser_path(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1500})
        page.on("console", lambda m: seen["problems"].append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: seen["problems"].append(str(e)))
        page.on("request", lambda r: seen["requests"].append(r.url))
        page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
        page.goto(report.as_uri())
        page.wait_for_selector("body[data-rendered=true]", timeout=30_000)
        page.wait_for_timeout(1500)  # the drawings settle
        seen["overview_rows"] = page.locator("#overview tr").count() - 1
        seen["cards"] = page.locator("details.card").count()
        seen["flagged_cards"] = page.locator("details.card[data-flagged=true]").count()
        seen["flagged_drawn"] = page.locator("details.card[data-flagged=true][open] .network canvas").count()
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
        browser.close()
    return seen


def test_report_renders_offline_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = linkage.run(TINY, out)
    artifacts = Path(os.environ.get("LINKAGE_ARTIFACTS", tmp_path))
    seen = _open(out / REPORT_FILE, artifacts / "report.png")
    assert seen["problems"] == []
    assert seen["requests"] == [(out / REPORT_FILE).as_uri()]  # nothing fetched: self-contained
    assert seen["overview_rows"] == result.rings.height
    flagged = int(result.rings["flagged"].sum())
    assert flagged >= 1 and seen["flagged_cards"] == flagged == seen["flagged_drawn"]
    assert (artifacts / "report.png").stat().st_size > 10_000


def test_hostile_ids_stay_text(tmp_path: Path) -> None:
    data = tmp_path / "in"
    data.mkdir()
    hostile = "<img src=x onerror=alert(1)></script><script>alert(2)</script>"
    for table in ("accounts", "payments", "requests"):
        text = (TINY / f"{table}.csv").read_text().replace("ring_00", hostile.replace(",", ";"))
        (data / f"{table}.csv").write_text(text)
    out = tmp_path / "out"
    linkage.run(data, out)
    seen = _open(out / REPORT_FILE)
    assert seen["dialogs"] == [] and seen["problems"] == []
    assert seen["requests"] == [(out / REPORT_FILE).as_uri()]


def test_report_is_self_contained_and_rewritable(tmp_path: Path) -> None:
    out = tmp_path / "out"
    linkage.run(TINY, out)
    page = (out / REPORT_FILE).read_text()
    assert not re.search(r'<(script|link|img)[^>]+(src|href)=["\']?(https?:)?//', page)
    first = page
    (out / REPORT_FILE).unlink()
    assert write_report(out).read_text() == first  # `linkage report OUT` draws the same page
    members = pl.read_parquet(out / "ring_members.parquet")
    assert all(account in page for account in members["account_id"].to_list())
