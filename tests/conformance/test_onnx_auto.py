"""The ONNX backend test suite through infer's default choice (`auto`): each model goes to the
first backend of the CPU row of the selection table that compiles it (ONNX Runtime, then the
next ones), so it passes more than any single backend."""

from .onnx_suite import require_pinned, suite_cases

LABEL = "auto"

require_pinned(LABEL)
globals().update(suite_cases(LABEL, __name__))
