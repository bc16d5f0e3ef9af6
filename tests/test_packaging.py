"""A normal install (a wheel, not the editable checkout) carries everything linkage needs.

The wheel is built from the repository, installed without its dependencies into a fresh virtual
environment that borrows the test environment's third-party packages, and run from outside the
checkout, so nothing can come from the source tree."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, TINY


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``bin/`` of a fresh venv holding only the built wheel (dependencies borrowed)."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(work / "dist")],
        check=True,
        cwd=work,
    )
    wheel = next((work / "dist").glob("linkage-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(work / "venv")], check=True)
    venv_site = next((work / "venv" / "lib").glob("python3*/site-packages"))
    # the test environment's packages for the dependencies; its .pth files (the editable checkout)
    # are not processed from a path added this way
    (venv_site / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(work / "venv" / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        check=True,
    )
    return work / "venv" / "bin"


def _linkage(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(bin_dir / "linkage"), *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_wheel_ships_the_cypher_files(installed: Path, tmp_path: Path) -> None:
    listed = _linkage(installed, "query", "--list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    names = sorted(p.stem for p in (ROOT / "cypher" / "queries").glob("*.cypher"))
    assert names and all(name in listed.stdout for name in names)
    where = subprocess.run(
        [str(installed / "python"), "-c", "import linkage.cypher as c; print(c.CYPHER_DIR)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert str(ROOT) not in where.stdout  # from the installed package, not the checkout


@pytest.mark.neo4j
def test_wheel_loads_neo4j(installed: Path, tmp_path: Path) -> None:
    if not os.environ.get("NEO4J_URI"):
        pytest.skip("no Neo4j server")
    done = _linkage(installed, "run", str(TINY), "--out", str(tmp_path / "out"), "--neo4j", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "rings.csv").exists()


def test_dependencies_are_bounded_and_locked() -> None:
    """Every dependency names an upper bound on its major version, and the lock file that `make`
    installs from pins each one (with hashes)."""
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    lock = (ROOT / "requirements.lock").read_text()
    pinned = {m.group(1).lower().replace("_", "-") for m in re.finditer(r"^([A-Za-z0-9_.-]+)==", lock, re.M)}
    for requirement in declared:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")
        assert "<" in requirement, f"{requirement}: no upper bound"
        assert name in pinned, f"{name} is not in requirements.lock"
    assert "--hash=sha256:" in lock
    assert "--require-hashes -r requirements.lock" in (ROOT / "Makefile").read_text()
