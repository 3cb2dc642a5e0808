"""Every backend's Session and Binding subclasses leave the base's I/O edge alone: the final
methods are not overridden and no attribute shadows a base method."""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap

import pytest

from infer.backends.base import Binding, Session
from infer.selection import BACKENDS

# Deliberate: ONNX Runtime picks its raw-OrtValue runner once per session instead of a branch per run.
REBOUND_ON_PURPOSE = {("OnnxRuntimeSession", "_run")}
FINAL = {Session: {"run", "submit", "bind", "close"}, Binding: {"run", "close"}}


def _subclasses(base: type) -> list[type]:
    found, todo = [], list(base.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return [c for c in found if c.__module__.startswith("infer.backends.")]


@pytest.fixture(scope="module")
def classes():
    for name in BACKENDS:
        importlib.import_module(f"infer.backends.{name}")
    return {base: _subclasses(base) for base in FINAL}


def test_the_base_marks_its_edge_final():
    for base, names in FINAL.items():
        for name in names:
            assert getattr(getattr(base, name), "__final__", False), f"{base.__name__}.{name}"


@pytest.mark.parametrize("name", BACKENDS)
def test_every_backend_has_a_session(name):
    """Defined in the backend's module or in a private helper it imports (_trt_session)."""
    module = importlib.import_module(f"infer.backends.{name}")
    sessions = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, Session)]
    assert [s for s in sessions if s is not Session], f"no Session subclass in {module.__name__}"


def test_no_backend_overrides_a_final_method(classes):
    for base, names in FINAL.items():
        for cls in classes[base]:
            overridden = sorted(n for n in names if n in vars(cls))
            assert not overridden, f"{cls.__module__}.{cls.__name__} overrides {overridden}"


def test_no_attribute_shadows_a_base_method(classes):
    """An attribute named like a base method (say `_pool`) would break the base's use of it:
    submit() on a GPU did, until this test."""
    for base in FINAL:
        methods = {m for m, _ in inspect.getmembers(base, callable)}
        for cls in classes[base]:
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
            assigned = {
                t.attr
                for n in ast.walk(tree)
                if isinstance(n, (ast.Assign, ast.AnnAssign))
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                if isinstance(t, ast.Attribute) and getattr(t.value, "id", None) == "self"
            }
            clash = {a for a in assigned & methods if (cls.__name__, a) not in REBOUND_ON_PURPOSE}
            assert not clash, f"{cls.__name__} overwrites {clash}"
