"""The ONNX backend suite's set-up: a private ONNX_HOME, and the CPU copies of the tests only."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _onnx_home(tmp_path_factory):
    """The suite writes the "light" real models' data under $ONNX_HOME: keep it out of ~/.onnx."""
    saved = {k: os.environ.get(k) for k in ("ONNX_HOME", "ONNX_MODELS")}
    os.environ["ONNX_HOME"] = str(tmp_path_factory.mktemp("onnx_home"))
    os.environ.pop("ONNX_MODELS", None)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def pytest_collection_modifyitems(config, items):
    """Deselect the suite's `_cuda` copies: the runs here are the CPU suite, and
    known_failures.toml holds what was measured on the CPU (a GPU run needs its own entries).

    The suite's failures (the strict xfails among them: hundreds per backend) are reported as
    Python prints tracebacks unless --tb was given: pytest's default long form reads and parses
    the source of every frame, which took ~40 of the OpenVINO module's ~95 s here.
    """
    suite = [i for i in items if "OnnxBackend" in getattr(i.cls, "__name__", "")]
    cuda = [i for i in suite if i.name.endswith("_cuda")]
    if cuda:
        config.hook.pytest_deselected(items=cuda)
        drop = set(map(id, cuda))
        items[:] = [i for i in items if id(i) not in drop]
    if config.getoption("tbstyle", "auto") == "auto":
        for item in suite:
            item.repr_failure = _native_repr


def _native_repr(excinfo):
    return excinfo.getrepr(style="native", chain=True)
