"""Check what the built sdist and wheel hold, or print the lowest-versions constraints.

python tools/check_dist.py dist/*.tar.gz dist/*.whl   # exit 1 naming what is wrong
python tools/check_dist.py --lowest pyproject.toml    # "numpy==1.24" ... for pip -c
"""

from __future__ import annotations

import re
import sys
import tarfile
import zipfile
from pathlib import Path

import tomllib

# The runtimes whose minima the lowest-versions run installs (the core dependencies, ONNX
# Runtime and OpenVINO).
LOWEST = ("numpy", "onnx", "ml_dtypes", "onnxruntime", "openvino")

# What a rebuild needs, and nothing else (no tests, benchmarks or their results, caches).
SDIST = re.compile(
    r"(PKG-INFO|setup\.cfg|pyproject\.toml|README\.md|LICENSE|CHANGELOG\.md|MANIFEST\.in"
    r"|src|src/infer(/[\w/]+)?|src/infer/.+\.(py|typed)|src/infer_engine\.egg-info(/.+)?)"
)
WHEEL_NEEDS = ("infer/__init__.py", "infer/py.typed", "infer/cli/__init__.py")
WHEEL_META = ("licenses/LICENSE", "entry_points.txt", "METADATA")


def check_sdist(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    wrong = [
        f"{path.name}: {n} does not belong in the sdist" for n in names if not SDIST.fullmatch(n)
    ]
    for needed in (
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "CHANGELOG.md",
        "src/infer/__init__.py",
    ):
        if needed not in names:
            wrong.append(f"{path.name}: {needed} is missing")
    return wrong


def check_wheel(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as whl:
        names = whl.namelist()
        entry_points = next(
            (whl.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")), ""
        )
    wrong = [f"{path.name}: {n} is missing" for n in WHEEL_NEEDS if n not in names]
    for meta in WHEEL_META:
        if not any(n.endswith(f".dist-info/{meta}") for n in names):
            wrong.append(f"{path.name}: .dist-info/{meta} is missing")
    stray = [n for n in names if not n.startswith(("infer/", "infer_engine-"))]
    stray += [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".so"))]
    wrong += [f"{path.name}: {n} does not belong in the wheel" for n in stray]
    if "infer = infer.cli:main" not in entry_points:
        wrong.append(f"{path.name}: no `infer` console script")
    return wrong


def lowest(pyproject: Path) -> list[str]:
    """`name==minimum` for each of LOWEST, from the `>=` bounds that pyproject.toml declares."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = [*project["dependencies"]]
    for extra in ("cpu", "openvino"):
        requirements += project["optional-dependencies"][extra]
    pins = {}
    for requirement in requirements:
        found = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)\s*(,.*)?", requirement)
        if found and found.group(1) in LOWEST:
            pins[found.group(1)] = found.group(2)
    missing = [name for name in LOWEST if name not in pins]
    if missing:
        raise SystemExit(f"pyproject.toml declares no `>=` minimum for {missing}")
    return [f"{name}=={pins[name]}" for name in LOWEST]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--lowest"]:
        print("\n".join(lowest(Path(argv[1]))))
        return 0
    wrong: list[str] = []
    for arg in argv:
        path = Path(arg)
        wrong += check_wheel(path) if path.suffix == ".whl" else check_sdist(path)
    for line in wrong:
        print(line, file=sys.stderr)
    if not wrong:
        print(f"contents ok: {', '.join(Path(a).name for a in argv)}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
