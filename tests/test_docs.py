"""The docs site: it builds in strict mode, and every name in `infer.__all__` has an API entry."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import infer

ROOT = Path(__file__).resolve().parents[1]


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_is_generated_from_infer_all():
    hooks = _hooks()
    assert hooks.public_names() == list(infer.__all__)
    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert hooks.PLACEHOLDER in api
    page = hooks.on_page_markdown(api, page=None)
    for name in infer.__all__:
        assert f"::: infer.{name}\n" in page, name


@pytest.mark.slow
def test_the_site_builds_strictly_with_an_entry_per_public_name(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason=f'{module} builds the docs: pip install -e ".[docs]"')
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # mkdocs-material's notice on stderr
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stderr[-4000:]}"
    html = (site / "api" / "index.html").read_text(encoding="utf-8")
    anchors = set(re.findall(r'id="infer\.([A-Za-z_][A-Za-z0-9_]*)"', html))
    missing = [name for name in infer.__all__ if name not in anchors]
    assert not missing, "no API reference entry for " + ", ".join(f"infer.{n}" for n in missing)
    tour = (site / "index.html").read_text(encoding="utf-8")
    assert "Engine.load" in tour  # the README's tour, included by the snippet markers
