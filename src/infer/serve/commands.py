"""The `infer serve` and `infer export triton` commands; the CLI adds them with `register(app)`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from ..errors import InferError

PREPROCESS_HELP = (
    "Preprocessing fused into the model, e.g. image:letterbox,size=640: a resize mode and "
    "Preprocess.image's keywords as key=value (lists split by /: mean=0.485/0.456/0.406; "
    "size=640 or HxW); NAME=image:... for one input of several (repeat the option); or a "
    ".json/.toml file of those keywords."
)

SERVE_HELP = """Serve a model through Triton Inference Server (HTTP and gRPC).

Examples:

$ infer serve model.onnx --device cpu

$ infer serve yolo.onnx --preprocess image:letterbox,size=640

$ infer serve model.onnx --preprocess preprocess.toml"""
EXPORT_HELP = """Write a Triton model repository entry (config.pbtxt and the model).

Examples:

$ infer export triton model.onnx --repo models/ --precision fp16

$ infer export triton yolo.onnx --repo models/ --preprocess image:letterbox,size=640"""

log = logging.getLogger(__name__)


def _preprocess(items: list[str] | None) -> Any:
    """The --preprocess values as a spec for Engine.load (None: no preprocessing)."""
    from ..transforms._preprocess_text import parse_many

    return parse_many(items or [])


EXIT_USAGE = 2  # what the CLI returns for any error the user caused


def register(app: typer.Typer) -> None:
    """Add `serve` and `export triton` to `app` (reusing its `export` group if it has one)."""
    app.command("serve", help=SERVE_HELP, short_help=SERVE_HELP.split("\n")[0])(serve)
    _export_group(app).command("triton", help=EXPORT_HELP, short_help=EXPORT_HELP.split("\n")[0])(
        export_triton
    )


def _export_group(app: typer.Typer) -> typer.Typer:
    for group in app.registered_groups:
        if group.name == "export" and group.typer_instance is not None:
            return group.typer_instance
    export = typer.Typer(help="Write models for other serving engines.", no_args_is_help=True)
    app.add_typer(export, name="export")
    return export


def serve(
    model: Annotated[str, typer.Argument(help="The model file (ONNX, or a runtime's own format).")],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda[:N], gpu, npu, ane.")] = "auto",
    backend: Annotated[
        str | None, typer.Option(help="Force a backend (onnxruntime, openvino, ...).")
    ] = None,
    precision: Annotated[str, typer.Option(help="fp32, fp16, bf16 or int8.")] = "fp32",
    preprocess: Annotated[
        list[str] | None, typer.Option(help=PREPROCESS_HELP, metavar="SPEC")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Model name for clients (default: the file's stem).")
    ] = None,
    max_batch: Annotated[
        int, typer.Option(help="Largest batch the dynamic batcher forms; 0: no batching.")
    ] = 16,
    max_queue_delay_us: Annotated[
        int, typer.Option(help="How long a request may wait for a batch to fill.")
    ] = 500,
    instances: Annotated[int, typer.Option(help="Model instances (batches run at once).")] = 1,
    http_port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8002,
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but loopback exposes the server.")
    ] = "127.0.0.1",
) -> None:
    """Serve MODEL with Triton until Ctrl-C or SIGTERM."""
    from .triton import triton

    _show_info_logs()
    load: dict[str, Any] = {"precision": precision}
    if backend is not None:
        load["backend"] = backend
    try:
        spec = _preprocess(preprocess)
        if spec is not None:
            load["preprocess"] = spec
        server = triton(
            model,
            name=name,
            max_batch=max_batch,
            max_queue_delay_us=max_queue_delay_us,
            instances=instances,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            host=host,
            device=device,
            **load,
        )
        server.start()
    except InferError as e:
        _fail(e)
    engine = server.engine
    batching = (
        f"dynamic batching up to {server.max_batch_size}, queue delay {max_queue_delay_us} us"
        if server.max_batch_size
        else "no batching"
    )
    typer.echo(f"serving {server.name}: {engine.backend} on {engine.device}, {batching}")
    typer.echo(f"  HTTP     http://{server.http_address}/v2/models/{server.name}/infer")
    typer.echo(f"  gRPC     {server.grpc_address}")
    typer.echo(f"  metrics  {server.metrics_url}")
    typer.echo("Ctrl-C or SIGTERM stops it.")
    try:
        server.serve_forever()
    except InferError as e:
        _fail(e)
    typer.echo("stopped")


def export_triton(
    model: Annotated[str, typer.Argument(help="The ONNX model (or a TensorRT plan).")],
    repo: Annotated[Path, typer.Option(help="The model repository folder.")],
    name: Annotated[str | None, typer.Option(help="Model name (default: the file's stem).")] = None,
    backend: Annotated[
        str, typer.Option(help="Triton backend: onnxruntime, tensorrt or openvino.")
    ] = "onnxruntime",
    device: Annotated[
        str | None,
        typer.Option(help="Instance kind: gpu, cpu or auto (default: the backend's usual)."),
    ] = None,
    precision: Annotated[str, typer.Option(help="fp32, fp16, bf16 or int8.")] = "fp32",
    preprocess: Annotated[
        list[str] | None, typer.Option(help=PREPROCESS_HELP, metavar="SPEC")
    ] = None,
    max_batch: Annotated[int, typer.Option(help="max_batch_size; 0: no batching.")] = 16,
    max_queue_delay_us: Annotated[int, typer.Option(help="Dynamic batcher queue delay.")] = 500,
    instances: Annotated[int, typer.Option(help="Instances per device.")] = 1,
    tensorrt_accelerator: Annotated[
        bool, typer.Option(help="ONNX Runtime on GPUs: hand subgraphs to TensorRT.")
    ] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace REPO/NAME if it exists.")] = False,
) -> None:
    """Write REPO/NAME/config.pbtxt and REPO/NAME/1/<model> for Triton Inference Server."""
    from .export import export_triton as export

    _show_info_logs()
    try:
        spec = _preprocess(preprocess)
        folder = export(
            model,
            repo,
            name=name,
            backend=backend,
            device=device,
            precision=precision,
            preprocess=spec,
            max_batch=max_batch,
            max_queue_delay_us=max_queue_delay_us,
            instances=instances,
            tensorrt_accelerator=tensorrt_accelerator,
            overwrite=overwrite,
        )
    except InferError as e:
        _fail(e)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    typer.echo(f"wrote {folder}: {', '.join(files)}")


def _fail(error: InferError) -> NoReturn:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(EXIT_USAGE)


def _show_info_logs() -> None:
    """Let infer's INFO lines (what was chosen, environment fixes) reach the terminal, unless the
    application already configured logging."""
    root = logging.getLogger()
    ours = logging.getLogger("infer")
    if root.handlers or any(not isinstance(h, logging.NullHandler) for h in ours.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
