"""Security: external data that would leave the model's folder is refused before any runtime reads
it; no pickle anywhere in infer; the cache folder is private (0700)."""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import infer
from infer.cache import Cache, Key
from infer.errors import CacheError, ModelError
from infer.model import Model

SRC = Path(infer.__file__).parent
W = np.array([1, 2, 3, 4], np.float32)


def _external(tensor: onnx.TensorProto, location: str, **extra: str) -> onnx.TensorProto:
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for k, v in {"location": location, **extra}.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = k, v
    return tensor


def _model(location: str, carrier: str = "initializer") -> onnx.ModelProto:
    """y = x + w, where w is stored externally at `location`, held by `carrier`."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    w = _external(numpy_helper.from_array(W, "w"), location)
    opsets = [helper.make_opsetid("", 17)]
    functions = []
    if carrier == "initializer":
        graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [w])
    elif carrier == "constant":
        nodes = [
            helper.make_node("Constant", [], ["w"], value=w),
            helper.make_node("Add", ["x", "w"], ["y"]),
        ]
        graph = helper.make_graph(nodes, "g", [x], [y])
    elif carrier == "subgraph":
        branch = helper.make_graph(
            [helper.make_node("Add", ["x", "w"], ["b"])],
            "then",
            [],
            [helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])],
            [w],
        )
        nodes = [
            helper.make_node(
                "Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True])
            ),
            helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch),
        ]
        graph = helper.make_graph(nodes, "g", [x], [y])
    elif carrier == "function":
        body = [
            helper.make_node("Constant", [], ["w"], value=w),
            helper.make_node("Add", ["fx", "w"], ["fy"]),
        ]
        functions = [helper.make_function("local", "AddW", ["fx"], ["fy"], body, opsets)]
        opsets = [*opsets, helper.make_opsetid("local", 1)]
        graph = helper.make_graph(
            [helper.make_node("AddW", ["x"], ["y"], domain="local")], "g", [x], [y]
        )
    elif carrier in ("sparse_values", "sparse_indices"):
        values = numpy_helper.from_array(W, "w")
        indices = numpy_helper.from_array(np.arange(4, dtype=np.int64), "i")
        _external(values if carrier == "sparse_values" else indices, location)
        sparse = helper.make_sparse_tensor(values, indices, [4])
        graph = helper.make_graph(
            [
                helper.make_node("Constant", [], ["w"], sparse_value=sparse),
                helper.make_node("Add", ["x", "w"], ["y"]),
            ],
            "g",
            [x],
            [y],
        )
    else:
        raise ValueError(carrier)
    model = helper.make_model(graph, opset_imports=opsets, functions=functions)
    model.ir_version = 8
    return model


@pytest.fixture
def layout(tmp_path):
    """tmp/secret.bin (outside), tmp/model/ (the model's folder) with data/w.bin inside."""
    (tmp_path / "secret.bin").write_bytes(np.full(4, 666, np.float32).tobytes())
    folder = tmp_path / "model"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "w.bin").write_bytes(W.tobytes())
    return tmp_path, folder


def _save(folder: Path, model: onnx.ModelProto, name: str = "model.onnx") -> Path:
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


ESCAPES = {
    "dotdot": "../secret.bin",
    "dotdot_deep": "data/../../secret.bin",
    "dotdot_inside": "data/../data/w.bin",  # stays inside, but '..' is refused outright
    "absolute": "{root}/secret.bin",
    "etc_passwd": "/etc/passwd",
    "symlink_file": "link.bin",
    "symlink_dir": "linkdir/secret.bin",
    "nul": "data/w.bin\0../../secret.bin",
    "empty": "",
}


def _prepare(name: str, root: Path, folder: Path) -> str:
    if name == "symlink_file":
        (folder / "link.bin").symlink_to(root / "secret.bin")
    if name == "symlink_dir":
        (folder / "linkdir").symlink_to(root, target_is_directory=True)
    return ESCAPES[name].format(root=root)


@pytest.mark.parametrize("escape", list(ESCAPES))
def test_external_data_leaving_the_folder_is_refused(layout, escape):
    root, folder = layout
    path = _save(folder, _model(_prepare(escape, root, folder)))
    with pytest.raises(ModelError, match="external data location"):
        Model.load(path)
    for backend in ("onnxruntime", "reference"):
        with pytest.raises(ModelError, match="external data location"):
            infer.Engine.load(path, "cpu", backend=backend, cache=False)


@pytest.mark.parametrize(
    "carrier",
    ["initializer", "constant", "subgraph", "function", "sparse_values", "sparse_indices"],
)
def test_every_tensor_of_the_model_is_checked(layout, carrier):
    _, folder = layout
    path = _save(folder, _model("../secret.bin", carrier))
    with pytest.raises(ModelError, match=r"'\.\./secret\.bin' must be a relative path inside"):
        infer.Engine.load(path, "cpu", cache=False)


@pytest.mark.parametrize("backend", ["onnxruntime", "reference"])
@pytest.mark.parametrize("location", ["data/w.bin", "./data/w.bin"])
def test_external_data_inside_the_folder_loads(layout, backend, location):
    _, folder = layout
    path = _save(folder, _model(location))
    assert Model.load(path).external_data == ((folder / "data" / "w.bin").resolve(),)
    with infer.Engine.load(path, "cpu", backend=backend, cache=False) as engine:
        np.testing.assert_array_equal(engine.run({"x": np.zeros(4, np.float32)})["y"], W)


def test_a_symlink_that_stays_inside_the_folder(layout):
    # infer allows it (it resolves inside the folder), and so does ONNX Runtime; onnx's own
    # loader, which the reference backend reads external data with, refuses every symlink.
    _, folder = layout
    (folder / "inside_link.bin").symlink_to(folder / "data" / "w.bin")
    path = _save(folder, _model("inside_link.bin"))
    with infer.Engine.load(path, "cpu", backend="onnxruntime", cache=False) as engine:
        np.testing.assert_array_equal(engine.run({"x": np.zeros(4, np.float32)})["y"], W)
    with pytest.raises(ModelError, match="symbolic link"):
        infer.Engine.load(path, "cpu", backend="reference", cache=False)


def test_a_model_folder_reached_through_a_symlink_still_works(layout):
    root, folder = layout
    _save(folder, _model("data/w.bin"))
    (root / "alias").symlink_to(folder, target_is_directory=True)
    with infer.Engine.load(root / "alias" / "model.onnx", "cpu", cache=False) as engine:
        np.testing.assert_array_equal(engine.run({"x": np.zeros(4, np.float32)})["y"], W)


def test_a_model_file_symlinked_from_elsewhere_reads_data_beside_the_link(layout):
    # The link's folder is the model's folder (as ONNX Runtime reads it): data next to the real
    # file but not next to the link is not found, and nothing outside is read.
    root, folder = layout
    real = _save(folder, _model("data/w.bin"))
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "model.onnx").symlink_to(real)
    with pytest.raises(ModelError, match="does not exist"):
        infer.Engine.load(elsewhere / "model.onnx", "cpu", cache=False)


def test_bad_offsets_and_lengths_are_infer_errors(layout):
    _, folder = layout
    for extra in ({"offset": "-8"}, {"offset": "4096"}, {"length": "1000000"}, {"offset": "x"}):
        model = _model("data/w.bin")
        for k, v in extra.items():
            e = model.graph.initializer[0].external_data.add()
            e.key, e.value = k, v
        path = _save(folder, model)
        for backend in ("onnxruntime", "reference"):
            with pytest.raises(infer.InferError):
                infer.Engine.load(path, "cpu", backend=backend, cache=False)


def test_external_data_needs_a_path_to_be_read(layout):
    model = _model("data/w.bin")
    with pytest.raises(ModelError, match="load it from its path"):
        Model.load(model)
    with pytest.raises(ModelError, match="load it from its path"):
        infer.Engine.load(model.SerializeToString(), "cpu")


def test_model_paths_that_are_not_regular_files_are_refused(tmp_path):
    with pytest.raises(ModelError, match="NUL byte"):
        infer.Engine.load(str(tmp_path / "model\0.onnx"))
    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)  # reading it would block forever
    with pytest.raises(ModelError, match="not a regular file"):
        infer.Engine.load(fifo)
    if Path("/dev/zero").exists():
        with pytest.raises(ModelError, match="not a regular file"):
            infer.Engine.load("/dev/zero")


# -- no pickle ---------------------------------------------------------------------------------

_UNSAFE_MODULES = {
    "pickle",
    "cPickle",
    "_pickle",
    "dill",
    "cloudpickle",
    "joblib",
    "shelve",
    "marshal",
    "copyreg",
}


def _problems(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in _UNSAFE_MODULES]
        elif (
            isinstance(node, ast.ImportFrom)
            and (node.module or "").split(".")[0] in _UNSAFE_MODULES
        ):
            found.append(f"from {node.module}")
        elif isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "allow_pickle" and not (
                    isinstance(kw.value, ast.Constant) and kw.value.value is False
                ):
                    found.append("allow_pickle=<not False>")
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "load":
                owner = func.value
                if isinstance(owner, ast.Name) and owner.id == "torch":
                    weights_only = [k for k in node.keywords if k.arg == "weights_only"]
                    if not (
                        weights_only
                        and isinstance(weights_only[0].value, ast.Constant)
                        and weights_only[0].value.value is True
                    ):
                        found.append("torch.load without weights_only=True")
        elif isinstance(node, ast.FunctionDef) and node.name in (
            "__reduce__",
            "__reduce_ex__",
            "__setstate__",
        ):
            found.append(f"def {node.name}")
    return found


def test_no_pickle_anywhere_in_infer():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 10
    bad = {}
    for f in files:
        problems = _problems(ast.parse(f.read_text(encoding="utf-8"), str(f)))
        text = f.read_text(encoding="utf-8")
        if "pickle" in text.lower().replace("allow_pickle=false", ""):
            problems.append("mentions pickle")
        if problems:
            bad[str(f.relative_to(SRC))] = problems
    assert not bad, f"pickle (or a way to it) in infer's source: {bad}"


@pytest.mark.parametrize(
    "source",
    [
        "import pickle",
        "import joblib as j",
        "from dill import loads",
        "import numpy as np\nnp.load(f, allow_pickle=True)",
        "import torch\ntorch.load(p)",
        "class A:\n    def __reduce__(self):\n        return (A, ())",
    ],
)
def test_the_pickle_check_catches(source):
    assert _problems(ast.parse(source))


def test_the_pickle_check_allows_safe_loads():
    assert not _problems(
        ast.parse(
            "import numpy as np\nnp.load(f, allow_pickle=False)\nimport torch\ntorch.load(p, weights_only=True)"
        )
    )


# -- the cache folder --------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o000, 0o002])
def test_the_cache_folder_is_created_0700_whatever_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        cache = Cache(tmp_path / "deep" / "cache")
        entry, _ = cache.get_or_build(
            Key.of("onnx-fp16", model="m"), lambda d: (d / "a.onnx").write_bytes(b"x") and None
        )
        folder = cache.folder("openvino", model="m")
    finally:
        os.umask(old)
    assert _mode(cache.root) == 0o700
    assert _mode(entry.path) == 0o700
    assert _mode(cache.root / "onnx-fp16") == 0o700
    assert _mode(folder) == 0o700
    locks = list((cache.root / "onnx-fp16").glob("*.lock"))
    assert locks and all(_mode(p) & 0o077 == 0 for p in locks)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_the_default_cache_folder_is_0700(tmp_path, monkeypatch):
    monkeypatch.setenv("INFER_CACHE_DIR", str(tmp_path / "infer-cache"))
    cache = Cache()
    cache.get_or_build(Key.of("k", x=1), lambda d: (d / "f").write_bytes(b"1") and None)
    assert cache.root == tmp_path / "infer-cache"
    assert _mode(cache.root) == 0o700


@pytest.mark.parametrize(
    "kind", ["..", "../x", "a/b", "/abs", "", ".hidden", "a\\b", "a\0b", "x" * 200]
)
def test_cache_kinds_cannot_leave_the_cache_folder(tmp_path, kind):
    cache = Cache(tmp_path / "cache")
    with pytest.raises(CacheError, match="cache kind"):
        Key.of(kind, x=1)
    with pytest.raises(CacheError, match="cache kind"):
        cache.clear(kind)
    with pytest.raises(CacheError, match="cache kind"):
        cache.entries(kind)
    with pytest.raises(CacheError, match="cache kind"):
        cache.folder(kind, x=1)
    assert (tmp_path / "cache").exists() is False or not any((tmp_path / "cache").iterdir())
