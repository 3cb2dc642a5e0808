"""`infer.ray`: Ray Data predictor and Ray Serve deployment (see infer.serve.ray).

Importing this module does not import Ray; Ray imports it on its workers.
"""

from __future__ import annotations

from .serve.ray import Predictor, deployment

__all__ = ["Predictor", "deployment"]
