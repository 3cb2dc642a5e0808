"""MkDocs hook: the API reference gets one mkdocstrings entry per name in `infer.__all__`.

`__all__` is read from src/infer/__init__.py without importing infer (the docs build needs no
runtime), so a name added to it gets a reference entry with no edit to the docs.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

PLACEHOLDER = "<!-- infer.__all__ -->"
INIT = Path(__file__).resolve().parents[1] / "src" / "infer" / "__init__.py"


def public_names(init: Path = INIT) -> list[str]:
    """The names in `__all__` of the package's __init__.py, in their order there."""
    tree = ast.parse(init.read_text(encoding="utf-8"))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return [str(v) for v in ast.literal_eval(node.value)]
    raise ValueError(f"{init} has no literal __all__")


def reference(names: list[str]) -> str:
    """The mkdocstrings blocks of the API page: one `::: infer.NAME` per public name."""
    return "\n\n".join(f"::: infer.{name}" for name in names) + "\n"


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if PLACEHOLDER not in markdown:
        return markdown
    return markdown.replace(PLACEHOLDER, reference(public_names()))
