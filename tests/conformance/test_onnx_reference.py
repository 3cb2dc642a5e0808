"""The ONNX backend test suite through infer's reference backend (onnx.reference).

Pure Python: about a minute, most of it the nine "light" real models (inception_v2 alone ~17 s).
Marked slow so `-m "not slow"` leaves it out of quick local runs; CI runs it.
"""

import pytest

from .onnx_suite import require_pinned, suite_cases

LABEL = "reference"
pytestmark = pytest.mark.slow

require_pinned(LABEL)
globals().update(suite_cases(LABEL, __name__))
