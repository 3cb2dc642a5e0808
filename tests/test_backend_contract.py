"""Every backend's Session and Binding subclasses leave the base classes' methods alone."""

from __future__ import annotations

import ast
import importlib
import inspect

import pytest

from infer.backends.base import Binding, Session
from infer.selection import BACKENDS

# Deliberate: ONNX Runtime picks its raw-OrtValue runner once per session instead of a branch per run.
REBOUND_ON_PURPOSE = {("onnxruntime", "_run")}


@pytest.mark.parametrize("name", BACKENDS)
def test_no_attribute_shadows_a_base_method(name):
    """An attribute named like a base method (say `_pool`) would break the base's use of it:
    submit() on a GPU did, until this test."""
    module = importlib.import_module(f"infer.backends.{name}")
    tree = ast.parse(inspect.getsource(module))
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    checked = 0
    for cls_name, node in classes.items():
        cls = getattr(module, cls_name, None)
        base = next(
            (b for b in (Session, Binding) if isinstance(cls, type) and issubclass(cls, b)), None
        )
        if base is None:
            continue
        checked += 1
        assigned = {
            t.attr
            for n in ast.walk(node)
            if isinstance(n, (ast.Assign, ast.AnnAssign))
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
            if isinstance(t, ast.Attribute) and getattr(t.value, "id", None) == "self"
        }
        methods = {m for m, _ in inspect.getmembers(base, callable)}
        clash = {a for a in assigned & methods if (name, a) not in REBOUND_ON_PURPOSE}
        assert not clash, f"{cls_name} overwrites {clash}"
    assert checked, f"no Session or Binding subclass found in infer.backends.{name}"
