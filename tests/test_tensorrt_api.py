"""The TensorRT backend against TensorRT's published Python API (10.13), without TensorRT.

TensorRT cannot be installed here, but its API can be read: the `tensorrt-stubs` wheel holds
the whole 10.13 Python API as .pyi text. These tests parse it and check every TensorRT name
the backend uses: module attributes (`trt.Builder`, `trt.BuilderFlag.TF32`), the methods and
properties called on TensorRT objects (held, by convention, in variables named for their
class), the callbacks our subclasses of TensorRT interfaces override, and the enum members
named in strings. Nothing from the binding-index API that TensorRT 10 removed may appear.
The same is done for the cuda-python calls in `infer.cuda`, against the installed module.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "infer"
# The modules that hold TensorRT objects (_trt_profiles.py works on plain shapes).
TRT_MODULES = [
    SRC / "backends" / name
    for name in ("tensorrt.py", "_trt_build.py", "_trt_session.py", "_trt_contexts.py")
]
STUBS = "tensorrt-stubs==10.13.0.35.1"

# The naming convention of the TensorRT modules: a variable (or attribute) of this name holds
# an object of this TensorRT class.
HOLDERS = {
    "builder": "Builder",
    "network": "INetworkDefinition",
    "config": "IBuilderConfig",
    "parser": "OnnxParser",
    "profile": "IOptimizationProfile",
    "runtime": "Runtime",
    "_runtime": "Runtime",
    "engine": "ICudaEngine",
    "_engine": "ICudaEngine",
    "context": "IExecutionContext",
    "timing_cache": "ITimingCache",
    "on_disk": "ITimingCache",
    "tensor": "ITensor",
    "error": "ParserError",
    "data_type": "DataType",
    "creation": "NetworkDefinitionCreationFlag",
}

# Gone in TensorRT 10 (the binding-index API, implicit batch, the v1/v2 enqueue calls).
REMOVED_IN_10 = {
    "get_binding_index",
    "get_binding_name",
    "get_binding_shape",
    "set_binding_shape",
    "get_binding_dtype",
    "get_binding_format",
    "get_binding_vectorized_dim",
    "binding_is_input",
    "is_shape_binding",
    "num_bindings",
    "execute_async_v2",
    "execute_async",
    "build_engine",
    "build_cuda_engine",
    "max_workspace_size",
    "max_batch_size",
    "set_shape_input",
    "get_shape",
}
# Still in 10.13 but not the named-tensor API this backend is written for.
NOT_NAMED_TENSOR_API = {"execute_v2", "execute"}


# -- the stubs --------------------------------------------------------------------------------


@dataclass
class StubClass:
    name: str
    bases: list[str]
    methods: set[str] = field(default_factory=set)
    values: set[str] = field(default_factory=set)  # properties, attributes, enum members
    body: str = ""


def parse_stub(text: str) -> dict[str, StubClass]:
    """Classes of a generated .pyi, read line by line (ast rejects a few generated lines)."""
    classes: dict[str, StubClass] = {}
    current: StubClass | None = None
    decorator = ""
    lines: list[str] = []
    for line in text.splitlines():
        m = re.match(r"class (\w+)(?:\((.*)\))?:", line)
        if m:
            if current is not None:
                current.body = "\n".join(lines)
            bases = [b.strip().split(".")[-1] for b in (m.group(2) or "").split(",") if b.strip()]
            current = classes[m.group(1)] = StubClass(m.group(1), bases)
            lines = []
            continue
        if current is None:
            continue
        if line and not line.startswith(" "):  # back at module level
            current.body = "\n".join(lines)
            current = None
            continue
        lines.append(line)
        if line.startswith("    @"):
            decorator = line.strip()
            continue
        m = re.match(r"    def (\w+)\(", line)
        if m:
            (current.values if decorator == "@property" else current.methods).add(m.group(1))
            decorator = ""
            continue
        m = re.match(r"    (\w+): ", line)
        if m:
            current.values.add(m.group(1))
        m = re.match(r"    class (\w+)", line)
        if m:
            current.values.add(m.group(1))
    if current is not None:
        current.body = "\n".join(lines)
    return classes


@dataclass
class Api:
    module: set[str]
    classes: dict[str, StubClass]

    def members(self, cls: str) -> tuple[set[str], set[str]]:
        methods: set[str] = set()
        values: set[str] = set()
        todo = [cls]
        while todo:
            c = self.classes.get(todo.pop())
            if c is None:
                continue
            methods |= c.methods
            values |= c.values
            todo += c.bases
        return methods, values


def _data_root() -> Path:
    root = os.environ.get("INFER_TEST_DATA")
    return Path(root) if root else Path.home() / ".cache" / "infer-test-data"


@pytest.fixture(scope="session")
def api() -> Api:
    """TensorRT 10.13's Python API, from the tensorrt-stubs wheel (fetched once, --no-deps)."""
    folder = _data_root() / STUBS.replace("==", "-")
    folder.mkdir(parents=True, exist_ok=True)
    wheels = list(folder.glob("*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             "--disable-pip-version-check", STUBS, "-d", str(folder)],
            check=True,
        )  # fmt: skip
        wheels = list(folder.glob("*.whl"))
    with zipfile.ZipFile(wheels[0]) as zf:
        bindings = zf.read("tensorrt_bindings/tensorrt.pyi").decode()
        package = zf.read("tensorrt/__init__.pyi").decode()
    names = set(
        re.search(r"__all__ = \[(.*?)\]", package, re.S)
        .group(1)
        .replace("'", "")
        .replace(" ", "")
        .split(",")
    )
    names |= set(re.findall(r"^(\w+): ", package, re.M))
    return Api(names, parse_stub(bindings))


# -- what the backend uses --------------------------------------------------------------------


@dataclass(frozen=True)
class Use:
    owner: str  # "trt", "trt.<Class>", or a TensorRT class name from HOLDERS
    name: str
    called: bool
    where: str


def _base_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def uses(path: Path) -> list[Use]:
    tree = ast.parse(path.read_text())
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    found = []
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute):
            value = node.value
            if isinstance(value, ast.Name) and value.id == "trt":
                found.append(Use("trt", node.attr, id(node) in called, where))
            elif (
                isinstance(value, ast.Attribute)
                and isinstance(value.value, ast.Name)
                and value.value.id == "trt"
            ):
                found.append(Use(f"trt.{value.attr}", node.attr, id(node) in called, where))
            else:
                base = _base_name(value)
                if base in HOLDERS:
                    found.append(Use(HOLDERS[base], node.attr, id(node) in called, where))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("hasattr", "getattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            target = node.args[0]
            name = node.args[1].value
            if isinstance(target, ast.Name) and target.id == "trt":
                found.append(Use("trt", name, False, where))
            elif isinstance(target, ast.Attribute) and _base_name(target.value) == "trt":
                found.append(Use(f"trt.{target.attr}", name, False, where))
            elif _base_name(target) in HOLDERS:
                found.append(Use(HOLDERS[_base_name(target)], name, False, where))
    return found


def subclasses(path: Path) -> list[tuple[str, str, list[str]]]:
    """(our class, TensorRT base, method names) for each class deriving from trt.<Base>."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                if isinstance(base, ast.Attribute) and _base_name(base.value) == "trt":
                    methods = [f.name for f in node.body if isinstance(f, ast.FunctionDef)]
                    out.append((node.name, base.attr, methods))
    return out


def all_uses() -> list[Use]:
    return [u for path in TRT_MODULES for u in uses(path)]


def test_the_modules_use_tensorrt_at_all():
    found = all_uses()
    # The convention is only useful if it is followed: the core calls must be seen.
    names = {(u.owner, u.name) for u in found}
    for expected in [
        ("IExecutionContext", "execute_async_v3"),
        ("IExecutionContext", "set_input_shape"),
        ("IExecutionContext", "set_tensor_address"),
        ("ICudaEngine", "num_io_tensors"),
        ("ICudaEngine", "get_tensor_name"),
        ("ICudaEngine", "get_tensor_mode"),
        ("Builder", "build_serialized_network"),
        ("IBuilderConfig", "set_timing_cache"),
        ("ITimingCache", "combine"),
        ("ITimingCache", "serialize"),
        ("Runtime", "deserialize_cuda_engine"),
    ]:
        assert expected in names, f"{expected} is not used (or not through a conventional name)"


def test_module_attributes_exist_in_tensorrt_10(api):
    missing = [u for u in all_uses() if u.owner == "trt" and u.name not in api.module]
    assert not missing, f"not in TensorRT 10.13's module: {missing}"


def test_class_members_exist_in_tensorrt_10(api):
    bad = []
    for u in all_uses():
        if u.owner == "trt":
            continue
        cls = u.owner.removeprefix("trt.")
        assert cls in api.classes, f"{u.where}: TensorRT has no class {cls}"
        methods, values = api.members(cls)
        if u.name not in methods | values:
            bad.append(f"{u.where}: {cls}.{u.name} does not exist")
        elif u.called and u.name not in methods:
            bad.append(f"{u.where}: {cls}.{u.name} is a property, but it is called")
        elif not u.called and u.name in methods and u.name not in values:
            bad.append(f"{u.where}: {cls}.{u.name} is a method, but it is not called")
    assert not bad, "\n".join(bad)


def test_overridden_callbacks_are_tensorrt_callbacks(api):
    """A misspelled callback is never called by TensorRT: each method of a subclass of a TensorRT
    interface must be one of its callbacks, or a helper our own code calls."""
    sources = "\n".join(p.read_text() for p in TRT_MODULES)
    found = [s for p in TRT_MODULES for s in subclasses(p)]
    assert {base for _, base, _ in found} >= {"ILogger", "IProgressMonitor", "IOutputAllocator"}
    bad = []
    for ours, base, methods in found:
        stub = api.classes[base]
        for m in methods:
            if m == "__init__" or m in stub.methods or f"def {m}(" in stub.body:
                continue
            if re.search(rf"\.{m}\(", sources):  # a helper we call ourselves
                continue
            bad.append(f"{ours}.{m} is not a {base} callback and nothing calls it")
    assert not bad, "\n".join(bad)


def test_enum_members_named_in_strings_exist(api):
    """Flags looked up by name (getattr, _flag(trt, "FP16")) must be real enum members."""
    members = set()
    for cls in api.classes.values():
        members |= {v for v in cls.values if v.isupper()}
    enum_like = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|[A-Z]{2,}[0-9]+")
    bad = []
    for path in TRT_MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            text = node.value if isinstance(node, ast.Constant) else None
            if isinstance(text, str) and enum_like.fullmatch(text) and text not in members:
                bad.append(f"{path.name}:{node.lineno}: {text!r}")
    assert not bad, f"not a TensorRT 10.13 enum member: {bad}"


def test_no_api_removed_in_tensorrt_10_is_used(api):
    engine_methods, engine_values = api.members("ICudaEngine")
    context_methods, context_values = api.members("IExecutionContext")
    config_methods, config_values = api.members("IBuilderConfig")
    builder_methods, _ = api.members("Builder")
    present = (
        engine_methods | engine_values | context_methods | context_values | config_methods
        | config_values | builder_methods
    )  # fmt: skip
    # The list means something: none of these is in 10.13 any more.
    assert not (REMOVED_IN_10 - {"get_shape"}) & present
    used = {u.name for u in all_uses()}
    text = "\n".join(p.read_text() for p in TRT_MODULES)
    for name in REMOVED_IN_10 | NOT_NAMED_TENSOR_API:
        assert name not in used, f"{name} is used"
        assert not re.search(rf"\.{name}\(", text), f"{name}( appears in the TensorRT modules"


def test_hardware_levels_and_flag_names_are_tensorrt_members(api):
    from infer.backends import _trt_build

    _, levels = api.members("HardwareCompatibilityLevel")
    assert set(_trt_build._HARDWARE_LEVELS.values()) <= levels
    _, flags = api.members("BuilderFlag")
    assert {"FP16", "INT8", "TF32", "VERSION_COMPATIBLE"} <= flags
    _, creation = api.members("NetworkDefinitionCreationFlag")
    assert "STRONGLY_TYPED" in creation


def test_tensorrt_dtype_names_are_in_the_dtype_table(api):
    """Every TensorRT DataType the table names exists, so engine.get_tensor_dtype(n).name maps."""
    from infer.tensors import DTYPES, dtype_info

    _, members = api.members("DataType")
    named = {row.tensorrt for row in DTYPES if row.tensorrt}
    assert named <= members
    for name in ("FLOAT", "HALF", "INT8", "INT32", "INT64", "BOOL", "UINT8", "BF16"):
        assert dtype_info(name).tensorrt == name


def test_the_stub_parser_reads_properties_and_methods(api):
    methods, values = api.members("ICudaEngine")
    assert "num_io_tensors" in values and "get_tensor_name" in methods
    methods, values = api.members("ParserError")
    assert "desc" in methods
    assert "reallocate_output_async" in api.classes["IOutputAllocator"].body


# -- cuda-python ------------------------------------------------------------------------------


def test_cuda_python_calls_exist():
    """Every runtime call infer.cuda makes is in the installed cuda-python."""
    runtime = pytest.importorskip("cuda.bindings.runtime")
    tree = ast.parse((SRC / "cuda.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            v = node.value
            from_call = isinstance(v, ast.Call) and getattr(v.func, "id", None) == "_runtime"
            if from_call or (isinstance(v, ast.Name) and v.id in ("rt", "kind")):
                names.add(node.attr)
    assert {"cudaMalloc", "cudaMemcpyAsync", "cudaStreamCreateWithFlags"} <= names
    enum = runtime.cudaMemcpyKind
    missing = [n for n in names if not hasattr(runtime, n) and not hasattr(enum, n)]
    assert not missing, f"not in cuda-python: {missing}"
