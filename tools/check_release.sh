#!/usr/bin/env bash
# The package as users get it (issue 24), after the pinned suites of the README's test command:
#   1. build  python -m build (sdist, then the wheel from the sdist), twine check --strict, and
#             the sdist's and the wheel's file lists against what they must hold;
#   2. smoke  the wheel (not editable) with [cpu,cli] only, in a fresh venv, run from outside the
#             tree: infer devices, infer bench demo, one Engine.load of a model made on the spot;
#   3. newest the core tests against the newest versions the declared ranges allow (no pins);
#   4. lowest the core tests against the lowest versions pyproject.toml declares.
# PYTHON (default .venv/bin/python, the [test] environment) runs build and twine.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python=${PYTHON:-$root/.venv/bin/python}
work=$(mktemp -d "${TMPDIR:-/tmp}/infer-release.XXXXXX")
trap 'rm -rf "$work"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1

# The core tests: the engine, feeds, tensors, models, preprocessing, compare, the CLI's basics,
# bindings, batching, sequences and the choice, which need no pinned runtime version
# (tests/conformance needs them and is left out: its modules skip themselves elsewhere than at
# the pins; so are tests that measure a runtime version's own behaviour, test_honest_precision).
core=(
    tests/test_import.py tests/test_engine.py tests/test_feeds.py tests/test_tensors.py
    tests/test_model.py tests/test_preprocess.py tests/test_compare.py tests/test_cli.py
    tests/test_binding.py tests/test_batching.py tests/test_batch_zero.py tests/test_sequence.py
    tests/test_token_ids.py tests/test_batching_sequence.py
    tests/test_device.py tests/test_choice.py tests/test_inspect.py tests/test_packaging.py
    tests/test_reference_casts.py
)
tools=(pytest pytest-timeout hypothesis psutil "tomli; python_version < '3.11'")

times=()
stage() {  # stage NAME COMMAND...: run it, note its time
    local name=$1 start=$SECONDS
    shift
    echo "=== $name"
    "$@"
    times+=("$name: $((SECONDS - start)) s")
    echo "=== $name: $((SECONDS - start)) s"
}

versions() {  # the runtime versions a venv resolved
    "$1/bin/python" - <<'PY'
from importlib.metadata import PackageNotFoundError, version
found = []
for name in ("numpy", "onnx", "ml_dtypes", "onnxruntime", "openvino"):
    try:
        found.append(f"{name} {version(name)}")
    except PackageNotFoundError:
        found.append(f"{name} -")
print("versions:", ", ".join(found))
PY
}

build() {
    "$python" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || {
        cat "$work/build.log"
        return 1
    }
    "$python" -m twine check --strict "$work"/dist/*
    ls -l "$work/dist"
    "$python" tools/check_dist.py "$work"/dist/*
}

smoke() {
    local wheel
    wheel=$(ls "$work"/dist/*.whl)
    python3 -m venv "$work/smoke"
    "$work/smoke/bin/pip" install --quiet "$wheel[cpu,cli]"
    mkdir "$work/outside" && cd "$work/outside"  # no source tree on sys.path
    INFER_CACHE_DIR="$work/cache" "$work/smoke/bin/infer" --version
    INFER_CACHE_DIR="$work/cache" "$work/smoke/bin/infer" devices
    INFER_CACHE_DIR="$work/cache" "$work/smoke/bin/infer" bench demo --duration 0.5 --warmup 0.2
    INFER_CACHE_DIR="$work/cache" "$work/smoke/bin/python" -c '
import importlib.metadata, pathlib, sys
import numpy as np
from onnx import TensorProto, helper
import infer
here = pathlib.Path(infer.__file__).resolve()
assert "site-packages" in here.parts, f"infer was imported from {here}, not the installed wheel"
assert (here.parent / "py.typed").is_file(), "py.typed is missing from the wheel"
assert infer.__version__ == importlib.metadata.version("infer-engine"), infer.__version__
graph = helper.make_graph(
    [helper.make_node("Mul", ["x", "two"], ["y"])], "smoke",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    initializer=[helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
x = np.arange(8, dtype=np.float32).reshape(2, 4)
with infer.Engine.load(model) as engine:
    y = engine.run({"x": x})["y"]
    np.testing.assert_array_equal(y, 2 * x)
    print(f"Engine.load: {engine.backend} on {engine.device}, y == 2x; infer {infer.__version__}")
'
    cd "$root"
}

core_tests() {  # core_tests VENV PIP-ARGS...: a fresh venv with the package editable, the core tests
    local venv=$1
    shift
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "$@" -e ".[cpu,openvino,cli]" "${tools[@]}"
    versions "$venv"
    "$venv/bin/python" -m pytest -q -p no:cacheprovider "${core[@]}"
}

lowest() {
    # numpy, onnx, ml_dtypes, onnxruntime and openvino pinned to the minima pyproject declares.
    "$python" tools/check_dist.py --lowest pyproject.toml >"$work/lowest.txt"
    echo "constraints: $(tr '\n' ' ' <"$work/lowest.txt")"
    core_tests "$work/lowest" --constraint "$work/lowest.txt"
}

stage build build
stage smoke smoke
stage newest core_tests "$work/newest"
stage lowest lowest
printf '%s\n' "${times[@]}"
