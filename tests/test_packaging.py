"""The distribution: its name in every install hint, one version, and the files a wheel needs."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

import infer

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DIST = "infer-engine"  # `infer` on PyPI is another project


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_distribution_has_a_name_of_its_own():
    project = _pyproject()["project"]
    assert project["name"] == DIST
    assert project["scripts"] == {"infer": "infer.cli:main"}
    for extra, requirements in project["optional-dependencies"].items():
        for requirement in requirements:
            assert not re.match(r"infer\[", requirement), (extra, requirement)


def test_install_hints_name_the_distribution():
    # `pip install infer` or "infer[cpu]" installs someone else's package.
    wrong = re.compile(r"""pip install (-U )?["']?infer(["'\s`)]|$)|(?<![\w-])infer\[""")
    files = [*sorted((ROOT / "src").rglob("*.py")), ROOT / "README.md"]
    files += sorted((ROOT / "docs").glob("*.md"))
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in files
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if wrong.search(line)
    ]
    assert not found, "install hints that name `infer` instead of infer-engine:\n" + "\n".join(
        found
    )


def test_the_version_is_written_once():
    dynamic = _pyproject()["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "infer._version.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc)?\d*(\.dev\d+)?", infer.__version__)
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"## {infer.__version__}" in changelog


def test_the_installed_metadata_agrees():
    try:
        installed = importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{DIST} is not installed here (pip install -e . installs it)")
    assert installed == infer.__version__


def test_the_package_ships_its_type_marker_and_license():
    assert (ROOT / "src" / "infer" / "py.typed").is_file()
    assert "Apache License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
