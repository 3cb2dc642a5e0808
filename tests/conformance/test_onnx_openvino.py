"""The ONNX backend test suite through infer's OpenVINO backend (CPU, f32).

It runs as soon as `infer.backends.openvino` exists and is in the selection table; until then
the module skips and says so.
"""

import importlib.util

import pytest

from .onnx_suite import require_pinned, suite_cases

LABEL = "openvino"

if importlib.util.find_spec("infer.backends.openvino") is None:
    pytest.skip(
        "infer.backends.openvino is not in this tree yet (issue 3): no OpenVINO conformance run",
        allow_module_level=True,
    )
require_pinned(LABEL)
globals().update(suite_cases(LABEL, __name__))
