"""The install commands of the README and the docs: each one that serves or runs models
installs a runtime."""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
RUNTIMES = {"cpu", "gpu", "openvino", "tensorrt", "coreml"}


def _installs() -> list[set[str]]:
    """The extras of every `pip install -e ".[a,b]"` or `"infer-engine[a,b]"` that the README
    and the docs pages show."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    return [set(m.split(",")) for m in re.findall(r'"(?:\.|infer-engine)\[([a-z0-9,-]+)\]"', text)]


def test_every_install_line_names_real_extras_and_a_runtime():
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ])  # fmt: skip
    installs = _installs()
    assert any("serve" in i for i in installs) and any("ray" in i for i in installs)
    for names in installs:
        assert names <= extras, sorted(names - extras)
        if names & {"serve", "ray", "cli"}:  # these bring no runtime of their own
            assert names & RUNTIMES, f"pip install .[{','.join(sorted(names))}] has no runtime"
