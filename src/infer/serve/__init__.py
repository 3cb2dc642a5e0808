"""Hand-over to scale-out engines that already exist: Triton Inference Server and Ray.

infer grows no server of its own. `triton()` serves an Engine through Triton (nvidia-pytriton),
`export_triton()` writes a model repository for a full Triton deployment, and `infer.ray` (or
`infer.serve.ray`) runs engines on Ray Data and Ray Serve. Nothing here imports pytriton,
tritonclient or ray until it is used.
"""

from __future__ import annotations

from .export import export_triton
from .triton import PortInUse, ServeError, TritonServer, triton

__all__ = ["PortInUse", "ServeError", "TritonServer", "export_triton", "triton"]
