"""src/infer type-checks clean: mypy, as pyproject.toml configures it, reports no error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~40 s from a cold cache, a few seconds once .mypy_cache holds the package
def test_mypy_reports_no_error():
    # Run from the repository root so [tool.mypy] (files, strictness, the untyped runtimes)
    # applies, with this interpreter so mypy sees the packages the tests run against.
    done = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    report = f"{done.stdout}{done.stderr}"
    assert done.returncode == 0, f"mypy (pip install -e '.[test]' installs it):\n{report}"
    assert "Success: no issues found" in done.stdout, report
