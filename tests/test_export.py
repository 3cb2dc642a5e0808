"""`infer.serve.export_triton`: Triton model repositories, checked with Triton's own config
protobuf (from tritonclient) and with the tritonserver binary that pytriton ships."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

import infer
from infer.options import Options
from infer.serve import export as export_module
from infer.serve import export_triton

from . import models
from .net import free_ports
from .skips import PYTRITON_MISSING

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc] (the [serve] extra)"
)
text_format = pytest.importorskip("google.protobuf.text_format")


def parse(folder: Path):
    """config.pbtxt as Triton's ModelConfig message (a parse error fails the test)."""
    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def io(config) -> dict[str, tuple[str, list[int]]]:
    type_name = model_config_pb2.DataType.Name
    return {t.name: (type_name(t.data_type), list(t.dims)) for t in [*config.input, *config.output]}


def accelerator(config) -> dict[str, str] | None:
    accs = config.optimization.execution_accelerators.gpu_execution_accelerator
    if not accs:
        return None
    assert [a.name for a in accs] == ["tensorrt"]
    return dict(accs[0].parameters)


def test_onnxruntime_repository_for_any_device(tmp_path):
    folder = export_triton(models.multi_io(), tmp_path / "repo", name="mio", instances=2)
    assert folder == tmp_path / "repo" / "mio"
    assert sorted(p.name for p in folder.rglob("*")) == ["1", "config.pbtxt", "model.onnx"]
    config = parse(folder)
    assert config.name == "mio"
    assert (config.platform, config.backend) == ("onnxruntime_onnx", "onnxruntime")
    assert config.max_batch_size == 16
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert io(config) == {
        "a": ("TYPE_FP32", [4]),
        "b": ("TYPE_INT64", [4]),
        "mask": ("TYPE_BOOL", [4]),
        "sum": ("TYPE_FP32", [4]),
        "masked": ("TYPE_FP32", [4]),
        "count": ("TYPE_INT64", [4]),
    }
    [group] = config.instance_group
    assert (group.count, model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind)) == (
        2,
        "KIND_AUTO",
    )
    assert accelerator(config) == {
        "precision_mode": "FP32",
        "max_workspace_size_bytes": str(1 << 30),
        "trt_engine_cache_enable": "true",
        "trt_engine_cache_path": "/tmp/triton-trt-cache/mio",
    }
    rng = np.random.default_rng(0)
    feeds = {
        "a": rng.standard_normal((3, 4)).astype(np.float32),
        "b": rng.integers(0, 9, (3, 4)),
        "mask": rng.random((3, 4)) > 0.5,
    }
    with (
        infer.Engine.load(folder / "1" / "model.onnx", "cpu") as exported,
        infer.Engine.load(models.multi_io(), "cpu") as original,
    ):
        got, want = exported.run(feeds), original.run(feeds)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_real_model_file_is_copied_unchanged_at_fp32(tmp_path, real_model):
    source = real_model("ocr_cls")
    folder = export_triton(source, tmp_path, device="gpu")
    assert folder.name == "ch_ppocr_mobile_v2.0_cls_infer"
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (source, folder / "1/model.onnx")]
    assert digest[0] == digest[1]
    config = parse(folder)
    assert io(config) == {
        "x": ("TYPE_FP32", [3, -1, -1]),
        "save_infer_model/scale_0.tmp_1": ("TYPE_FP32", [2]),
    }
    kind = model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind)
    assert kind == "KIND_GPU" and accelerator(config)["precision_mode"] == "FP32"


def test_cpu_instances_get_no_tensorrt_block(tmp_path):
    cpu = parse(export_triton(models.relu(), tmp_path, name="cpu", device="cpu"))
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(cpu.instance_group[0].kind) == "KIND_CPU"
    assert accelerator(cpu) is None and not cpu.HasField("optimization")
    off = parse(export_triton(models.relu(), tmp_path, name="off", tensorrt_accelerator=False))
    assert accelerator(off) is None


def test_model_without_a_batch_axis_is_exported_unbatched(tmp_path):
    config = parse(export_triton(models.relu(batch=2), tmp_path, name="fixed"))
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert io(config) == {"x": ("TYPE_FP32", [2, 3]), "y": ("TYPE_FP32", [2, 3])}
    assert (
        parse(export_triton(models.relu(), tmp_path, name="off", max_batch=0)).max_batch_size == 0
    )


def test_batched_rank1_tensors_are_reshaped(tmp_path):
    config = parse(export_triton(models.double(), tmp_path, name="scale"))
    assert config.max_batch_size == 16
    for tensor in [*config.input, *config.output]:
        assert list(tensor.dims) == [1]
        assert tensor.HasField("reshape") and list(tensor.reshape.shape) == []


def test_openvino_ir_runs_like_the_onnx_model(tmp_path, real_model):
    ov = pytest.importorskip("openvino", reason="needs openvino (the [openvino] extra)")
    source = real_model("orientation")
    folder = export_triton(source, tmp_path, backend="openvino", max_batch=8)
    assert sorted(p.name for p in (folder / "1").iterdir()) == ["model.bin", "model.xml"]
    config = parse(folder)
    assert (config.platform, config.backend, config.max_batch_size) == ("", "openvino", 8)
    assert (
        model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_CPU"
    )
    assert io(config) == {"x": ("TYPE_FP32", [3, 224, 224]), "fetch_name_0": ("TYPE_FP32", [4])}
    assert 'element_type="f16"' not in (folder / "1" / "model.xml").read_text()  # fp32 weights
    x = np.random.default_rng(0).random((2, 3, 224, 224), np.float32)
    compiled = ov.Core().compile_model(
        str(folder / "1" / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    got = compiled({"x": x})[compiled.output("fetch_name_0")]
    with infer.Engine.load(source, "cpu") as engine:
        want = engine.run({"x": x})["fetch_name_0"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_tensorrt_config_declares_the_plan_platform():
    request = export_module._Request(
        name="plan",
        kind="gpu",
        options=Options(precision="fp16"),
        max_batch=8,
        max_queue_delay_us=100,
        instances=1,
        tensorrt_accelerator=True,
    )
    specs = infer.Engine.load(models.cnn(), "cpu")
    text = export_module.config_text(
        export_module.TARGETS["tensorrt"], request, specs.inputs, specs.outputs
    )
    specs.close()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert (config.platform, config.backend, config.max_batch_size) == (
        "tensorrt_plan",
        "tensorrt",
        8,
    )
    assert io(config) == {"input": ("TYPE_FP32", [3, 32, 32]), "logits": ("TYPE_FP32", [10])}
    assert (
        model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_GPU"
    )
    assert accelerator(config) is None  # TensorRT runs the plan itself


def test_tensorrt_export_without_tensorrt_fails_and_leaves_nothing(tmp_path):
    with pytest.raises(infer.InferError, match=r"(?i)tensorrt"):
        export_triton(models.cnn(), tmp_path / "repo", name="cnn", backend="tensorrt")
    assert list((tmp_path / "repo").iterdir()) == []


@pytest.mark.gpu
def test_tensorrt_plan_export_on_a_gpu(tmp_path):
    if not any(d.kind == "cuda" for d in infer.devices()):
        pytest.skip("needs an NVIDIA GPU with TensorRT (infer's tensorrt backend)")
    folder = export_triton(models.cnn(), tmp_path, name="cnn", backend="tensorrt", max_batch=8)
    assert (folder / "1" / "model.plan").stat().st_size > 0
    assert parse(folder).platform == "tensorrt_plan"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backend": "tflite"}, "onnxruntime, tensorrt, openvino"),
        ({"backend": "openvino", "device": "gpu"}, "runs on cpu"),
        ({"backend": "tensorrt", "device": "cpu"}, "runs on gpu"),
        ({"max_batch": -1}, "max_batch must be"),
        ({"instances": 0}, "instances must be"),
        ({"name": "no/slashes"}, "not valid for Triton"),
    ],
)
def test_bad_options_are_option_errors(tmp_path, kwargs, match):
    with pytest.raises(infer.OptionError, match=match):
        export_triton(models.relu(), tmp_path, **kwargs)


def test_existing_model_folder_needs_overwrite(tmp_path):
    export_triton(models.relu(), tmp_path, name="m", device="cpu")
    with pytest.raises(infer.OptionError, match="already exists"):
        export_triton(models.relu(), tmp_path, name="m")
    assert (
        model_config_pb2.ModelInstanceGroup.Kind.Name(parse(tmp_path / "m").instance_group[0].kind)
        == "KIND_CPU"
    )
    export_triton(models.relu(), tmp_path, name="m", device="gpu", overwrite=True)
    kinds = parse(tmp_path / "m").instance_group[0].kind
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(kinds) == "KIND_GPU"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging folders left


def test_bfloat16_io_is_declared_bf16(tmp_path):
    config = parse(export_triton(models.bf16_cast(), tmp_path, name="bf"))
    assert io(config)["y"] == ("TYPE_BF16", [1])


def test_precision_goes_into_the_graph(tmp_path):
    has_transform = importlib.util.find_spec("infer.transforms.precision") is not None
    if not has_transform:
        with pytest.raises(infer.OptionError, match=r"infer\.transforms\.precision"):
            export_triton(models.cnn(), tmp_path, name="half", precision="fp16")
        return
    folder = export_triton(models.cnn(), tmp_path, name="half", precision="fp16")
    config = parse(folder)
    assert accelerator(config)["precision_mode"] == "FP16"
    graph = onnx.load(folder / "1" / "model.onnx").graph
    assert any(t.data_type == TensorProto.FLOAT16 for t in graph.initializer)


# -- the tritonserver binary pytriton ships ---------------------------------------------------


def _tritonserver() -> tuple[Path, Path, Path]:
    pytriton = pytest.importorskip("pytriton", reason=PYTRITON_MISSING)
    from pytriton.utils.distribution import get_libs_path

    root = Path(pytriton.__file__).parent / "tritonserver"
    return root / "bin" / "tritonserver", root / "backends", Path(get_libs_path())


@pytest.mark.triton
def test_tritonserver_accepts_the_exported_configs(tmp_path):
    """Triton parses and validates each config.pbtxt when it polls the repository, before it
    looks for the backend. pytriton bundles only the Python backend, so here our models must
    get exactly as far as "unable to find backend library"; a deliberately broken config in the
    same repository shows the check can fail."""
    binary, backends, libs = _tritonserver()
    repo = tmp_path / "repo"
    export_triton(models.multi_io(), repo, name="ort_auto")
    export_triton(models.relu(batch=2), repo, name="ort_cpu", device="cpu")
    export_triton(models.double(), repo, name="ort_rank1", device="gpu")
    export_triton(models.cnn(), repo, name="ov", backend="openvino")
    with infer.Engine.load(models.cnn(), "cpu") as engine:
        request = export_module._Request("trt", "gpu", Options(), 8, 500, 1, True)
        (repo / "trt" / "1").mkdir(parents=True)
        (repo / "trt" / "config.pbtxt").write_text(
            export_module.config_text(
                export_module.TARGETS["tensorrt"], request, engine.inputs, engine.outputs
            )
        )
    broken = repo / "broken"
    (broken / "1").mkdir(parents=True)
    text = (repo / "ort_auto" / "config.pbtxt").read_text().replace('"ort_auto"', '"broken"')
    (broken / "config.pbtxt").write_text(
        text.replace("max_queue_delay_microseconds: 500", "preferred_batch_size: [64]")
    )
    env = {**os.environ, "LD_LIBRARY_PATH": str(libs)}
    http_port, grpc_port = free_ports(2)
    run = subprocess.run(
        [
            str(binary),
            f"--model-repository={repo}",
            f"--backend-directory={backends}",
            "--disable-auto-complete-config",
            "--http-address=127.0.0.1",
            f"--http-port={http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={grpc_port}",
            "--allow-metrics=false",
            "--exit-timeout-secs=2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = run.stdout + run.stderr
    assert run.returncode != 0  # the broken model makes start-up fail, whatever else loads
    assert "Poll failed for model directory 'broken'" in log, log[-3000:]
    assert "preferred size must be <= max batch size" in log
    for name, backend in (
        ("ort_auto", "onnxruntime"),
        ("ort_cpu", "onnxruntime"),
        ("ort_rank1", "onnxruntime"),
        ("ov", "openvino"),
        ("trt", "tensorrt"),
    ):
        assert f"Poll failed for model directory '{name}'" not in log, log[-3000:]
        if (backends / backend).is_dir():  # a pytriton that bundles this backend: it must load
            assert f"successfully loaded '{name}'" in log, log[-3000:]
        else:
            assert (
                f"failed to load '{name}' version 1: Invalid argument: unable to find backend "
                f"library for backend '{backend}'"
            ) in log, log[-3000:]


def _infer(*args: object) -> subprocess.CompletedProcess:
    """`python -m infer ARGS` in a fresh process (this interpreter, this checkout)."""
    return subprocess.run(
        [sys.executable, "-m", "infer", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "100"},
    )


def test_export_triton_cli_fuses_a_preprocess_spec(tmp_path):
    """`--preprocess` takes the text form (and a file): the exported graph takes uint8 frames
    and computes what the spec's numpy form and the model compute."""
    model = tmp_path / "det.onnx"
    onnx.save(models.cnn(size=32), model)
    text = "image:letterbox,size=32,mean=0.485/0.456/0.406,std=0.229/0.224/0.225"
    result = _infer(
        "export", "triton", model, "--repo", tmp_path / "repo", "--device", "cpu",
        "--preprocess", text,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "repo" / "det"
    assert io(parse(folder))["input"] == ("TYPE_UINT8", [-1, -1, 3])
    frames = np.random.default_rng(0).integers(0, 256, (2, 40, 50, 3), np.uint8)
    spec = infer.Preprocess.parse(text)
    with (
        infer.Engine.load(folder / "1" / "model.onnx", "cpu", backend="onnxruntime") as exported,
        infer.Engine.load(models.cnn(size=32), "cpu", backend="onnxruntime") as original,
    ):
        got = exported.run({"input": frames})
        want = original.run({"input": spec.apply(frames)})
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)
    (tmp_path / "pre.toml").write_text('resize = "letterbox"\nsize = 32\n')
    result = _infer(
        "export", "triton", model, "--repo", tmp_path / "repo2", "--device", "cpu",
        "--preprocess", tmp_path / "pre.toml",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert io(parse(tmp_path / "repo2" / "det"))["input"] == ("TYPE_UINT8", [-1, -1, 3])


@pytest.mark.parametrize(
    "spec, words",
    [
        ("image:letterbx,size=32", "'letterbx' is not a resize mode"),
        ("image:size=big", "size='big' is not a size"),
        ("letterbox", "'letterbox' is not a kind of preprocessing; start with image:"),
        ("nope.json", "'nope.json': the file cannot be read"),
    ],
)
def test_export_triton_cli_refuses_a_bad_preprocess_spec(tmp_path, spec, words):
    model = tmp_path / "det.onnx"
    onnx.save(models.cnn(size=32), model)
    result = _infer("export", "triton", model, "--repo", tmp_path / "repo", "--preprocess", spec)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: --preprocess {spec!r}: ") and words in line, line
    assert not (tmp_path / "repo" / "det").exists()
