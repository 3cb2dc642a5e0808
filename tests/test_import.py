"""`import infer` needs only numpy, onnx and ml_dtypes; runtimes load lazily."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

RUNTIMES = ["onnxruntime", "openvino", "tensorrt", "coremltools", "cuda", "pynvml", "torch"]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[1],
    )


def test_import_loads_no_runtime():
    result = _run(
        f"""
        import sys
        import infer
        loaded = [m for m in {RUNTIMES!r} if m in sys.modules]
        assert not loaded, loaded
        """
    )
    assert result.returncode == 0, result.stderr


def test_works_with_no_runtime_installed():
    # Block every runtime import, as on a machine with the base install only.
    result = _run(
        f"""
        import sys
        for name in {RUNTIMES!r}:
            sys.modules[name] = None  # makes `import name` raise ImportError
        import numpy as np
        import infer
        from tests import models

        infos = {{b.name: b for b in infer.backends()}}
        assert not infos["onnxruntime"].available
        assert "onnxruntime is not installed" in infos["onnxruntime"].reason
        assert "infer-engine[cpu]" in infos["onnxruntime"].install
        with infer.Engine.load(models.relu()) as engine:
            assert engine.backend == "reference", engine.selection
            assert engine(np.array([[-1, 2, -3]], np.float32)).tolist() == [[0, 2, 0]]
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
