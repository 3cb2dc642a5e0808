"""The ONNX backend test suite through infer's ONNX Runtime backend (CPU provider)."""

from .onnx_suite import require_pinned, suite_cases

LABEL = "onnxruntime"

require_pinned(LABEL)
globals().update(suite_cases(LABEL, __name__))
