"""Core ML backend: real packages built with coremltools' MIL builder.

Everything that needs no Core ML runtime runs everywhere: the signature read from the spec,
flexible-shape checks, format sniffing, device -> compute-unit mapping, the probe's reason and
the selection messages on machines without macOS, and the ONNX Runtime CoreML provider options.
Predictions are marked `macos` and run for real where Core ML can run (compared with ONNX
Runtime on the CPU within fp16 tolerance); elsewhere they skip with the probe's reason.
"""

from __future__ import annotations

import logging
import platform
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import infer
from infer import BackendUnavailable, Engine, InputError, Model, ModelFormat, OptionError
from infer.backends import base
from infer.backends import coreml as cm
from infer.cache import Cache
from infer.device import Device, cpu
from infer.options import Options
from infer.selection import TABLE, Choice

from . import models

ct = pytest.importorskip(
    "coremltools", reason="coremltools is not installed (the [test] extra has it)"
)
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import get_new_symbol, types  # noqa: E402

BACKEND = base.get("coreml")
PROBE = BACKEND.probe()
on_coreml = pytest.mark.skipif(
    not PROBE.available, reason=f"Core ML cannot run here: {PROBE.reason}"
)
not_mac = pytest.mark.skipif(
    sys.platform == "darwin", reason="checks what a machine without macOS reports"
)

for _name in ("coremltools", "coremltools.converters"):
    logging.getLogger(_name).setLevel(logging.ERROR)

# -- models ------------------------------------------------------------------------------------

RNG = np.random.default_rng(7)
W1 = RNG.standard_normal((4, 8)).astype(np.float32) * 0.5
B1 = RNG.standard_normal(8).astype(np.float32) * 0.1
W2 = RNG.standard_normal((8, 3)).astype(np.float32) * 0.5
B2 = RNG.standard_normal(3).astype(np.float32) * 0.1


def _convert(prog, path: Path, precision: str = "fp16", inputs=None, target=None) -> Path:
    model = ct.convert(
        prog,
        convert_to="mlprogram",
        inputs=inputs,
        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        minimum_deployment_target=target or ct.target.macOS13,
    )
    model.save(str(path))
    return path


def mlp_package(path: Path, precision: str) -> Path:
    """x: float32[N in 1..8, 4] -> y = relu(x @ W1 + B1) @ W2 + B2: float32[N, 3]."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(get_new_symbol(), 4), dtype=types.fp32)])
    def prog(x):
        h = mb.relu(x=mb.linear(x=x, weight=W1.T, bias=B1))
        return mb.linear(x=h, weight=W2.T, bias=B2, name="y")

    batch = ct.RangeDim(lower_bound=1, upper_bound=8, default=1)
    return _convert(prog, path, precision, [ct.TensorType(name="x", shape=(batch, 4))])


def mlp_onnx(batch: str | int = "N") -> onnx.ModelProto:
    """The same MLP as ONNX, for parity on a Mac."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["m1"]),
            helper.make_node("Add", ["m1", "b1"], ["a1"]),
            helper.make_node("Relu", ["a1"], ["r1"]),
            helper.make_node("MatMul", ["r1", "w2"], ["m2"]),
            helper.make_node("Add", ["m2", "b2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        [
            numpy_helper.from_array(W1, "w1"),
            numpy_helper.from_array(B1, "b1"),
            numpy_helper.from_array(W2, "w2"),
            numpy_helper.from_array(B2, "b2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def image_mean_package(path: Path, color: str) -> Path:
    """An 8x8 image (scaled by 1/255) -> its per-channel mean: float32[1, 3]."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 8, 8), dtype=types.fp32)])
    def prog(image):
        return mb.reduce_mean(x=image, axes=[2, 3], keep_dims=False, name="mean")

    layout = getattr(ct.colorlayout, color)
    image = ct.ImageType(name="image", shape=(1, 3, 8, 8), color_layout=layout, scale=1 / 255.0)
    return _convert(prog, path, "fp32", [image])


def gray_range_package(path: Path) -> Path:
    """A grayscale image of 8..32 x 8..64 pixels -> the image back, doubled."""

    @mb.program(
        input_specs=[
            mb.TensorSpec(shape=(1, 1, get_new_symbol(), get_new_symbol()), dtype=types.fp32)
        ]
    )
    def prog(gray):
        return mb.mul(x=gray, y=2.0, name="doubled")

    shape = (1, 1, ct.RangeDim(8, 32, 8), ct.RangeDim(8, 64, 8))
    image = ct.ImageType(name="gray", shape=shape, color_layout=ct.colorlayout.GRAYSCALE)
    return _convert(prog, path, "fp32", [image])


def enumerated_package(path: Path) -> Path:
    """x: float32 of shape [1, 3, 8, 8] or [1, 3, 16, 16] -> relu(x)."""

    @mb.program(
        input_specs=[
            mb.TensorSpec(shape=(1, 3, get_new_symbol(), get_new_symbol()), dtype=types.fp32)
        ]
    )
    def prog(x):
        return mb.relu(x=x, name="y")

    shapes = ct.EnumeratedShapes(shapes=[[1, 3, 8, 8], [1, 3, 16, 16]], default=[1, 3, 8, 8])
    return _convert(prog, path, "fp16", [ct.TensorType(name="x", shape=shapes)])


def typed_package(path: Path) -> Path:
    """Multiarray dtypes: h: float16[2, 3], i: int32[2, 3] -> s = h + float16(i) (fp16), n = i * 2."""

    @mb.program(
        input_specs=[
            mb.TensorSpec(shape=(2, 3), dtype=types.fp16),
            mb.TensorSpec(shape=(2, 3), dtype=types.int32),
        ],
        opset_version=ct.target.iOS16,
    )
    def prog(h, i):
        s = mb.add(x=h, y=mb.cast(x=i, dtype="fp16"), name="s")
        n = mb.mul(x=i, y=np.int32(2), name="n")
        return s, n

    return _convert(prog, path, "fp16", target=ct.target.macOS13)


def neuralnetwork_file(path: Path) -> Path:
    """A neural-network spec in one .mlmodel file: x: float32[2, 3] -> relu(x)."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3), dtype=types.fp32)])
    def prog(x):
        return mb.relu(x=x, name="y")

    ct.convert(prog, convert_to="neuralnetwork").save(str(path))
    return path


def multifunction_package(folder: Path) -> Path:
    """Two functions: "relu" (x: [2, 3]) and "sig" (x: [2, 5], the default)."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3), dtype=types.fp32)])
    def relu(x):
        return mb.relu(x=x, name="y")

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 5), dtype=types.fp32)])
    def sig(x):
        return mb.sigmoid(x=x, name="z")

    a = _convert(relu, folder / "relu.mlpackage", target=ct.target.macOS15)
    b = _convert(sig, folder / "sig.mlpackage", target=ct.target.macOS15)
    desc = ct.utils.MultiFunctionDescriptor()
    desc.add_function(str(a), src_function_name="main", target_function_name="relu")
    desc.add_function(str(b), src_function_name="main", target_function_name="sig")
    desc.default_function_name = "sig"
    path = folder / "multi.mlpackage"
    ct.utils.save_multifunction(desc, str(path))
    return path


def stateful_package(path: Path) -> Path:
    """An accumulator: out = acc += x, with acc a Core ML state."""

    @mb.program(
        input_specs=[
            mb.TensorSpec(shape=(1, 4), dtype=types.fp16),
            mb.StateTensorSpec(shape=(1, 4), dtype=types.fp16),
        ],
        opset_version=ct.target.iOS18,
    )
    def prog(x, acc):
        total = mb.add(x=x, y=mb.read_state(input=acc))
        mb.coreml_update_state(state=acc, value=total)
        return mb.identity(x=total, name="out")

    return _convert(prog, path, "fp16", target=ct.target.macOS15)


@pytest.fixture(scope="module")
def pkgs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("coreml")
    return {
        "mlp16": mlp_package(root / "mlp16.mlpackage", "fp16"),
        "mlp32": mlp_package(root / "mlp32.mlpackage", "fp32"),
        "rgb": image_mean_package(root / "rgb.mlpackage", "RGB"),
        "bgr": image_mean_package(root / "bgr.mlpackage", "BGR"),
        "gray": gray_range_package(root / "gray.mlpackage"),
        "enum": enumerated_package(root / "enum.mlpackage"),
        "typed": typed_package(root / "typed.mlpackage"),
        "nn": neuralnetwork_file(root / "nn.mlmodel"),
        "multi": multifunction_package(root),
        "state": stateful_package(root / "state.mlpackage"),
    }


def sig(path: Path, function: str | None = None) -> cm.Signature:
    return BACKEND.signature(Model.load(path), function)


def spec_text(specs) -> list[str]:
    return [repr(s) for s in specs]


# -- reading models --------------------------------------------------------------------------


def test_formats_are_sniffed_from_content(pkgs, tmp_path):
    assert Model.load(pkgs["mlp16"]).format is ModelFormat.COREML
    assert Model.load(pkgs["nn"]).format is ModelFormat.COREML
    renamed = tmp_path / "weights.bin"  # a Core ML spec under a suffix that says nothing
    renamed.write_bytes(pkgs["nn"].read_bytes())
    assert Model.load(renamed).format is ModelFormat.COREML
    from_bytes = Model.load(pkgs["nn"].read_bytes())
    assert from_bytes.format is ModelFormat.COREML
    assert spec_text(BACKEND.signature(from_bytes).input_specs) == [
        "TensorSpec('x', [2, 3], float32)"
    ]
    onnx_bytes = mlp_onnx().SerializeToString()
    assert Model.load(onnx_bytes).format is ModelFormat.ONNX


def test_mlp_signature_from_spec(pkgs):
    s16, s32 = sig(pkgs["mlp16"]), sig(pkgs["mlp32"])
    for s in (s16, s32):
        assert spec_text(s.input_specs) == ["TensorSpec('x', [?, 4], float32)"]
        # The description leaves flexible outputs' shapes out; the ML program has them.
        assert spec_text(s.output_specs) == ["TensorSpec('y', [?, 3], float32)"]
        assert s.inputs[0].ranges == ((1, 8), (4, 4))
        assert s.model_type == "mlProgram" and s.min_macos == (13,)
    assert (s16.precision, s32.precision) == ("fp16", "fp32")


def test_image_inputs_are_pixels_in_hwc(pkgs):
    rgb, bgr = sig(pkgs["rgb"]), sig(pkgs["bgr"])
    assert spec_text(rgb.input_specs) == ["TensorSpec('image', [1, 8, 8, 3], uint8)"]
    assert spec_text(rgb.output_specs) == ["TensorSpec('mean', [1, 3], float32)"]
    assert (rgb.inputs[0].kind, rgb.inputs[0].color, bgr.inputs[0].color) == ("image", "RGB", "BGR")
    gray = sig(pkgs["gray"])
    assert spec_text(gray.input_specs) == ["TensorSpec('gray', [1, ?, ?, 1], uint8)"]
    assert gray.inputs[0].ranges == ((1, 1), (8, 32), (8, 64), (1, 1))
    gray.inputs[0].check(np.zeros((1, 32, 9, 1), np.uint8))
    with pytest.raises(
        InputError, match=r"'gray': dimension 1 is 33, outside the model's range 8\.\.32"
    ):
        gray.inputs[0].check(np.zeros((1, 33, 9, 1), np.uint8))


def test_enumerated_shapes(pkgs):
    s = sig(pkgs["enum"])
    assert spec_text(s.input_specs) == ["TensorSpec('x', [1, 3, ?, ?], float32)"]
    assert spec_text(s.output_specs) == ["TensorSpec('y', [1, 3, ?, ?], float32)"]
    x = s.inputs[0]
    assert x.shapes == ((1, 3, 8, 8), (1, 3, 16, 16))
    x.check(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(InputError) as e:
        x.check(np.zeros((1, 3, 12, 12), np.float32))
    assert "shape [1, 3, 12, 12] is not one the Core ML model takes" in str(e.value)
    assert "[1, 3, 8, 8], [1, 3, 16, 16]" in str(e.value)


def test_multiarray_dtypes(pkgs):
    s = sig(pkgs["typed"])
    assert spec_text(s.input_specs) == [
        "TensorSpec('h', [2, 3], float16)",
        "TensorSpec('i', [2, 3], int32)",
    ]
    assert spec_text(s.output_specs) == [
        "TensorSpec('s', [2, 3], float16)",
        "TensorSpec('n', [2, 3], int32)",
    ]
    for name in ("FLOAT32", "FLOAT16", "INT32", "DOUBLE", "INT8"):
        assert infer.tensors.dtype_info(name).coreml == name


def test_neural_network_file(pkgs):
    s = sig(pkgs["nn"])
    assert s.model_type == "neuralNetwork" and s.precision is None
    assert spec_text(s.input_specs) == ["TensorSpec('x', [2, 3], float32)"]
    assert spec_text(s.output_specs) == ["TensorSpec('y', ?, float32)"]  # no shape, no program
    # Neural networks compute in fp32 on the CPU and in fp16 on the GPU and Neural Engine.
    assert cm._runs_in(s, Device("cpu"), None) == "fp32"
    assert cm._runs_in(s, Device("ane"), None) == "fp16"
    assert cm._runs_in(sig(pkgs["mlp32"]), Device("ane"), None) == "fp32"


def test_multifunction_package(pkgs):
    default = sig(pkgs["multi"])
    assert default.functions == ("relu", "sig") and default.function == "sig"
    assert spec_text(default.input_specs) == ["TensorSpec('x', [2, 5], float32)"]
    relu = sig(pkgs["multi"], "relu")
    assert spec_text(relu.output_specs) == ["TensorSpec('y', [2, 3], float32)"]
    with pytest.raises(
        OptionError, match=r"no function 'tanh'; its functions are \['relu', 'sig'\]"
    ):
        sig(pkgs["multi"], "tanh")
    with pytest.raises(OptionError, match="single function"):
        sig(pkgs["mlp16"], "main")


def test_broken_packages_are_model_errors(pkgs, tmp_path):
    broken = tmp_path / "broken.mlpackage"
    broken.mkdir()
    (broken / "Manifest.json").write_text('{"itemInfoEntries": {}}')
    with pytest.raises(infer.ModelError, match=r"Manifest\.json does not name a root model"):
        BACKEND.signature(Model.load(broken))
    escape = tmp_path / "escape.mlpackage"
    escape.mkdir()
    (escape / "Manifest.json").write_text(
        '{"rootModelIdentifier": "a", "itemInfoEntries": {"a": {"path": "../../outside.mlmodel"}}}'
    )
    with pytest.raises(infer.ModelError, match="leaves the package"):
        BACKEND.signature(Model.load(escape))
    garbage = tmp_path / "garbage.mlmodel"
    garbage.write_bytes(b"\x08\x04" + bytes(range(60)))
    with pytest.raises(infer.ModelError, match=r"garbage\.mlmodel"):
        BACKEND.signature(Model.load(garbage))


# -- what the backend accepts ------------------------------------------------------------------


def test_supports_reasons(pkgs):
    options = Options()
    assert "stateful (state: acc)" in BACKEND.supports(Model.load(pkgs["state"]), cpu(), options)
    assert "carries its own precision" in BACKEND.supports(
        Model.load(pkgs["mlp16"]), cpu(), Options(precision="int8", calibration=[{}])
    )
    assert BACKEND.supports(Model.load(mlp_onnx()), cpu(), options) == (
        "takes coreml models, not onnx"
    )
    with pytest.raises(
        OptionError, match=r"backend_options\['coreml'\]: unknown option\(s\) \['units'\]"
    ):
        BACKEND.supports(
            Model.load(pkgs["mlp16"]), cpu(), Options(backend_options={"coreml": {"units": 1}})
        )
    assert BACKEND.precisions(cpu()) == {"fp32": "native", "fp16": "native"}


def test_devices_map_to_compute_units():
    units = {
        (kind, variant): cm._units(Device(kind), variant)
        for kind, variant in [("ane", None), ("gpu", None), ("cpu", None), ("ane", cm.ALL)]
    }
    assert units == {
        ("ane", None): "CPU_AND_NE",
        ("gpu", None): "CPU_AND_GPU",
        ("cpu", None): "CPU_ONLY",
        ("ane", "all"): "ALL",
    }
    for name in units.values():  # every name is a real coremltools.ComputeUnit member
        assert getattr(ct.ComputeUnit, name) is ct.ComputeUnit[name]


def test_optimization_hints_use_coremltools_enums():
    own = dict(cm._OPTIONS, specialization="fast_prediction", reshape_frequency="infrequent")
    own["low_precision_accumulation_on_gpu"] = True
    assert cm._hints(ct, own) == {
        "specializationStrategy": ct.SpecializationStrategy.FastPrediction,
        "reshapeFrequency": ct.ReshapeFrequency.Infrequent,
        "allowLowPrecisionAccumulationOnGPU": True,
    }
    assert cm._hints(ct, cm._OPTIONS) == {}
    with pytest.raises(OptionError, match="specialization'] must be one of"):
        cm._hints(ct, dict(cm._OPTIONS, specialization="fast"))


def test_image_pixels_cross_to_pil_and_back(pkgs):
    pytest.importorskip("PIL", reason="pillow is not installed")
    rgb = sig(pkgs["rgb"]).inputs[0]
    pixels = RNG.integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    image = cm._to_coreml(rgb, pixels)
    assert (image.mode, image.size) == ("RGB", (8, 8))
    back = cm._from_coreml(rgb, image)
    assert back.dtype == np.uint8 and back.shape == (1, 8, 8, 3)
    np.testing.assert_array_equal(back, pixels)
    gray = sig(pkgs["gray"]).inputs[0]
    image = cm._to_coreml(gray, pixels[..., :1])
    assert (image.mode, image.size) == ("L", (8, 8))  # PIL's size is (width, height)
    np.testing.assert_array_equal(cm._from_coreml(gray, image), pixels[..., :1])


def test_selection_table_rows():
    assert TABLE["ane"][0] == Choice("coreml", "ane")
    gpu = list(TABLE["gpu"])
    assert gpu.index(Choice("coreml", "gpu")) > max(
        i for i, r in enumerate(gpu) if r.kind == "cuda"
    )
    auto = list(TABLE["auto"])
    assert auto.index(Choice("coreml", "auto", "all")) > max(
        i for i, r in enumerate(auto) if r.kind == "cuda"
    )
    assert TABLE["cpu"][-1] == Choice("coreml", "cpu")
    assert "coreml" in infer.selection.BACKENDS


# -- on machines without Core ML ---------------------------------------------------------------


@not_mac
def test_probe_says_core_ml_needs_macos():
    info = BACKEND.probe()
    assert not info.available
    assert info.reason.startswith(f"Core ML predictions need macOS; this is {platform.system()}")
    assert f"coremltools {ct.__version__} here reads and converts models only" in info.reason
    assert 'pip install "infer-engine[coreml]"' in info.install
    assert BACKEND.name in [b.name for b in infer.backends()]


@not_mac
@pytest.mark.parametrize("cache", [True, False])
def test_compile_without_core_ml_is_a_compile_error(pkgs, tmp_path, cache):
    # Called directly (selection never gets here off macOS): coremltools' MLModel hands back a
    # model that cannot predict when Core ML fails to load it; the backend must refuse instead.
    options = Options(cache=cache, cache_dir=tmp_path)
    with pytest.raises(infer.CompileError, match=r"Core ML could not load Model\(coreml"):
        BACKEND.compile(Model.load(pkgs["nn"]), cpu(), options)


@not_mac
def test_auto_passes_core_ml_over_with_the_reason(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_onnx(), path)
    with Engine.load(path, device="auto") as engine:
        assert engine.backend == "onnxruntime"
        core_ml = [a for a in engine.selection if a.backend == "coreml[all]"]
        assert len(core_ml) == 1
        assert core_ml[0].verdict == "unavailable"
        assert "Core ML predictions need macOS" in core_ml[0].reason


@not_mac
def test_core_ml_package_without_macos_is_unavailable(pkgs):
    with pytest.raises(BackendUnavailable) as e:
        Engine.load(pkgs["mlp16"], device="auto")
    text = str(e.value)
    assert "coreml[all] on auto: unavailable: Core ML predictions need macOS" in text
    # Backends that do not read Core ML packages are passed over, not fallen back from.
    assert "onnxruntime[cpu] on cpu:0: skipped: takes onnx models, not coreml" in text
    with pytest.raises(BackendUnavailable, match="coreml on cpu: unavailable"):
        Engine.load(pkgs["mlp16"], device="cpu")


@not_mac
def test_ane_without_macos_says_what_is_needed(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_onnx(), path)
    with pytest.raises(BackendUnavailable) as e:
        Engine.load(path, device="ane")
    text = str(e.value)
    lines = text.splitlines()
    assert lines[0].startswith("no backend can run Model(onnx") and lines[0].endswith("on ane:")
    assert lines[1].startswith("  - coreml on ane: unavailable: Core ML predictions need macOS")
    assert 'install: pip install "infer-engine[coreml]" on macOS' in lines[1]
    assert lines[2].startswith("  - onnxruntime[coreml] on ane: unavailable: no ane device")
    assert "onnxruntime's CoreML execution provider, both on macOS" in lines[2]


# -- ONNX on Apple hardware: ONNX Runtime's CoreML execution provider ----------------------------

# The option names and values the provider accepts (onnxruntime coreml_options.cc).
ORT_COREML_OPTIONS = {
    "MLComputeUnits",
    "ModelFormat",
    "RequireStaticInputShapes",
    "EnableOnSubgraphs",
    "SpecializationStrategy",
    "ProfileComputePlan",
    "AllowLowPrecisionAccumulationOnGPU",
    "ModelCacheDirectory",
}
ORT_COREML_UNITS = {"CPUAndNeuralEngine", "CPUAndGPU", "CPUOnly", "ALL"}


def test_coreml_provider_chain_per_device(tmp_path):
    ort = base.get("onnxruntime")
    model = Model.load(mlp_onnx())
    options = Options(cache_dir=tmp_path)
    chains = {
        kind: ort._providers("coreml", Device(kind), options, model) for kind in ("ane", "gpu")
    }
    for kind, units in (("ane", "CPUAndNeuralEngine"), ("gpu", "CPUAndGPU")):
        (name, opts), fallback = chains[kind]
        assert (name, fallback) == ("CoreMLExecutionProvider", ("CPUExecutionProvider", {}))
        assert set(opts) <= ORT_COREML_OPTIONS and opts["MLComputeUnits"] in ORT_COREML_UNITS
        assert (opts["MLComputeUnits"], opts["ModelFormat"]) == (units, "MLProgram")
        folder = Path(opts["ModelCacheDirectory"])
        assert folder.is_dir() and folder.is_relative_to(tmp_path)
    other = Model.load(models.relu())
    other_folder = ort._providers("coreml", Device("ane"), options, other)[0][1]
    assert other_folder["ModelCacheDirectory"] != chains["ane"][0][1]["ModelCacheDirectory"]
    uncached = ort._providers("coreml", Device("ane"), Options(cache=False), model)
    assert "ModelCacheDirectory" not in uncached[0][1]


def test_in_memory_models_get_a_coreml_cache_key():
    from infer.backends.onnxruntime import _with_coreml_cache_key

    model = Model.load(mlp_onnx())
    keyed = onnx.load_from_string(_with_coreml_cache_key(model))
    props = {p.key: p.value for p in keyed.metadata_props}
    key = props["COREML_CACHE_KEY"]
    assert key == model.digest and key.isalnum() and len(key) <= 64
    own = mlp_onnx()
    helper.set_model_props(own, {"COREML_CACHE_KEY": "mine1"})
    kept = onnx.load_from_string(_with_coreml_cache_key(Model.load(own)))
    assert {p.key: p.value for p in kept.metadata_props} == {"COREML_CACHE_KEY": "mine1"}


def test_coreml_provider_missing_from_build_says_where_it_is():
    ort = base.get("onnxruntime")
    if "CoreMLExecutionProvider" in ort.providers():
        pytest.skip("this onnxruntime build has the CoreML provider")
    why = ort.supports(Model.load(mlp_onnx()), Device("ane"), Options(), "coreml")
    assert why == (
        "CoreMLExecutionProvider is not in this onnxruntime build "
        "(the onnxruntime wheels for macOS include it)"
    )


# -- predictions: only where Core ML runs ------------------------------------------------------


def _reference(x: np.ndarray) -> np.ndarray:
    with Engine.load(mlp_onnx(), device="cpu", backend="onnxruntime") as engine:
        return engine.run({"x": x})["y"]


@pytest.mark.macos
@on_coreml
@pytest.mark.parametrize("device", ["cpu", "gpu", "ane", "auto"])
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_mlp_matches_onnxruntime(pkgs, device, precision):
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    expected = _reference(x)
    path = pkgs["mlp16" if precision == "fp16" else "mlp32"]
    with Engine.load(path, device=device, precision=precision) as engine:
        assert engine.backend == "coreml"
        units = "ALL" if device == "auto" else cm.COMPUTE_UNITS[device]
        assert engine.details["compute_units"] == units
        assert engine.precision == precision
        assert spec_text(engine.inputs) == ["TensorSpec('x', [?, 4], float32)"]
        y = engine.run({"x": x})["y"]
        assert y.dtype == np.float32 and y.shape == (5, 3)
        tol = 2e-2 if precision == "fp16" or device != "cpu" else 1e-5
        np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)
        with pytest.raises(InputError, match=r"outside the model.s range 1\.\.8"):
            engine.run({"x": np.zeros((9, 4), np.float32)})
        futures = [engine.submit({"x": x}) for _ in range(8)]
        for f in futures:
            np.testing.assert_allclose(f.result()["y"], y, rtol=1e-3, atol=1e-3)


@pytest.mark.macos
@on_coreml
def test_image_input_runs_in_the_declared_colour_order(pkgs):
    pixels = np.zeros((1, 8, 8, 3), np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 255, 51, 0  # R, G, B
    with (
        Engine.load(pkgs["rgb"], device="cpu") as rgb,
        Engine.load(pkgs["bgr"], device="cpu") as bgr,
    ):
        np.testing.assert_allclose(rgb.run({"image": pixels})["mean"], [[1.0, 0.2, 0.0]], atol=1e-3)
        np.testing.assert_allclose(bgr.run({"image": pixels})["mean"], [[0.0, 0.2, 1.0]], atol=1e-3)


@pytest.mark.macos
@on_coreml
def test_flexible_and_typed_models_run(pkgs):
    with Engine.load(pkgs["enum"], device="cpu") as engine:
        x = RNG.standard_normal((1, 3, 16, 16)).astype(np.float32)
        np.testing.assert_allclose(engine.run({"x": x})["y"], np.maximum(x, 0), atol=1e-2)
        with pytest.raises(InputError, match="is not one the Core ML model takes"):
            engine.run({"x": np.zeros((1, 3, 12, 12), np.float32)})
    with Engine.load(pkgs["typed"], device="cpu") as engine:
        h = np.arange(6, dtype=np.float16).reshape(2, 3)
        i = np.arange(6, dtype=np.int32).reshape(2, 3)
        out = engine.run({"h": h, "i": i})
        assert (out["s"].dtype, out["n"].dtype) == (np.float16, np.int32)
        np.testing.assert_array_equal(out["s"], h + i)
        np.testing.assert_array_equal(out["n"], i * 2)
    with Engine.load(pkgs["nn"], device="cpu") as engine:
        x = RNG.standard_normal((2, 3)).astype(np.float32)
        np.testing.assert_allclose(engine(x), np.maximum(x, 0), atol=1e-6)
        assert engine.precision == "fp32"


@pytest.mark.macos
@on_coreml
@pytest.mark.skipif((cm._macos() or (0,)) < (15,), reason="multifunction packages need macOS 15")
def test_multifunction_package_runs_the_chosen_function(pkgs):
    options = {"coreml": {"function": "relu"}}
    with Engine.load(pkgs["multi"], device="cpu", backend_options=options) as engine:
        assert engine.details["function"] == "relu"
        x = RNG.standard_normal((2, 3)).astype(np.float32)
        np.testing.assert_allclose(engine(x), np.maximum(x, 0), atol=1e-2)


@pytest.mark.macos
@on_coreml
def test_compiled_model_is_cached(pkgs, tmp_path):
    for _ in range(2):
        with Engine.load(pkgs["mlp16"], device="cpu", cache_dir=tmp_path):
            pass
    entries = Cache(tmp_path).entries("coreml-compiled")
    assert len(entries) == 1 and entries[0].file("model.mlmodelc").is_dir()


@pytest.mark.macos
@pytest.mark.skipif(
    "CoreMLExecutionProvider" not in base.get("onnxruntime").providers(),
    reason="this onnxruntime build has no CoreML execution provider (macOS wheels have it)",
)
def test_onnx_on_the_neural_engine_through_onnxruntime(tmp_path):
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    # Static shapes: the provider takes every node of a fixed-shape graph.
    with Engine.load(mlp_onnx(batch=5), device="ane", cache_dir=tmp_path) as engine:
        assert (engine.backend, engine.device.kind) == ("onnxruntime", "ane")
        chosen = engine.selection[-1]
        assert chosen.backend == "onnxruntime[coreml]" and "CoreML" in chosen.reason
        np.testing.assert_allclose(engine.run({"x": x})["y"], _reference(x), rtol=2e-2, atol=2e-2)
