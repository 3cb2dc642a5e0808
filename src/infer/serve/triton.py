"""`infer serve`: Triton Inference Server in front of an infer Engine, through nvidia-pytriton.

pytriton ships a real `tritonserver` binary and its Python backend. The engine runs in this
process, inside the function Triton calls; Triton supplies HTTP/gRPC, health, metrics and the
dynamic batcher that merges concurrent requests into one engine run.

    with infer.serve.triton("model.onnx", device="cpu") as server:
        ...  # send requests to server.http_address / server.grpc_address
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import signal
import socket
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import batching
from ..engine import Engine
from ..errors import InferError, OptionError
from ..model import ModelSource
from ..tensors import TensorSpec, dtype_info
from . import _specs

log = logging.getLogger(__name__)

_INSTALL = (
    'pip install "infer-engine[serve]" (nvidia-pytriton and tritonclient; Linux x86_64/aarch64)'
)
_ACCESS_HEADER = "triton-access-token"  # pytriton's header for its restricted endpoints
_ENV_LOCK = threading.Lock()
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class ServeError(InferError):
    """The serving engine could not start, or stopped while serving."""


class PortInUse(ServeError):
    """A port the server needs is already taken by another process."""


class TritonServer:
    """Triton Inference Server for an Engine (or a model, loaded with `device` and
    `load_options` such as backend=, precision=, preprocess=): `start()`/`stop()`, or `with` it.

    name: the model name clients use (default: the model file's stem).
    max_batch: the largest batch Triton's dynamic batcher forms; used when every input and
        output has a dynamic leading (batch) dimension, else the model is served unbatched.
        0 turns batching off.
    max_queue_delay_us: how long the batcher waits for more requests to fill a batch.
    instances: model instances, each taking one batch at a time (the engine is shared; it is
        thread-safe).
    host: the address to bind: loopback by default; anything else exposes the server.
    shutdown_timeout_s: how long stopping waits for requests in flight.
    """

    def __init__(
        self,
        engine_or_model: Engine | ModelSource,
        *,
        name: str | None = None,
        max_batch: int = 16,
        max_queue_delay_us: int = 500,
        instances: int = 1,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        host: str = "127.0.0.1",
        shutdown_timeout_s: int = 5,
        startup_timeout_s: float = 60.0,
        device: str = "auto",
        **load_options: Any,
    ) -> None:
        if isinstance(engine_or_model, Engine) and (load_options or device != "auto"):
            given = sorted([*load_options, *(["device"] if device != "auto" else [])])
            raise OptionError(
                f"load options {given} apply when a model is given; an Engine is already loaded"
            )
        self.max_batch = _specs.check_count("max_batch", max_batch, 0)
        self.max_queue_delay_us = _specs.check_count("max_queue_delay_us", max_queue_delay_us, 0)
        self.instances = _specs.check_count("instances", instances, 1)
        self.shutdown_timeout_s = _specs.check_count("shutdown_timeout_s", shutdown_timeout_s, 0)
        ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        for what, port in ports.items():
            _specs.check_count(f"{what}_port", port, 1)
            if port > 65535:
                raise OptionError(f"{what}_port must be at most 65535, got {port}")
        if len(set(ports.values())) < len(ports):
            raise OptionError(f"http, grpc and metrics ports must differ, got {ports}")
        if not isinstance(host, str) or not host.strip():
            raise OptionError(f"host must be an address such as '127.0.0.1', got {host!r}")
        self.host = host.strip()
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.startup_timeout_s = float(startup_timeout_s)
        self.name = _specs.check_model_name(name) if name is not None else None
        self._source = engine_or_model
        self._device = device
        self._load_options = load_options
        self._engine: Engine | None = (
            engine_or_model if isinstance(engine_or_model, Engine) else None
        )
        self._owns_engine = self._engine is None
        self._triton: Any = None
        self._logdir: tempfile.TemporaryDirectory[str] | None = None
        self.max_batch_size = 0  # what Triton was told; set by start()

    # -- what clients use ---------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise ServeError("the server is not started: no engine is loaded yet")
        return self._engine

    @property
    def http_address(self) -> str:
        """host:port of the HTTP endpoint (what tritonclient.http takes)."""
        return f"{_client_host(self.host)}:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        """host:port of the gRPC endpoint (what tritonclient.grpc takes)."""
        return f"{_client_host(self.host)}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_client_host(self.host)}:{self.metrics_port}/metrics"

    @property
    def access_token(self) -> str | None:
        """Token for Triton's restricted endpoints (statistics, repository, ...), sent as the
        'triton-access-token' header; inference and health need none."""
        return None if self._triton is None else self._triton.get_access_token()

    @property
    def running(self) -> bool:
        return self._triton is not None and self._triton.is_alive()

    def statistics(self) -> dict[str, Any]:
        """Triton's inference statistics for the model (batch sizes, queue and compute times)."""
        import tritonclient.http as httpclient

        headers = {_ACCESS_HEADER: self.access_token} if self.access_token else None
        with httpclient.InferenceServerClient(self.http_address) as client:
            return client.get_inference_statistics(self.name or "", headers=headers)

    def log(self) -> str:
        """What the Triton server has logged so far."""
        path = self._log_path
        return path.read_text(errors="replace") if path is not None and path.is_file() else ""

    # -- lifetime -----------------------------------------------------------------------------

    def start(self) -> TritonServer:
        """Load the engine (if a model was given), start Triton, and wait until the model is ready."""
        if self._triton is not None:
            raise ServeError(f"Triton is already serving {self.name!r} on {self.http_address}")
        try:
            import pytriton  # noqa: F401
            import tritonclient.http  # noqa: F401
        except ImportError as e:
            raise ServeError(f"serving with Triton needs {_INSTALL}: {e}") from e
        if self._engine is None:
            assert not isinstance(self._source, Engine)  # an engine given is never let go
            self._engine = Engine.load(self._source, self._device, **self._load_options)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from pytriton.model_config import DynamicBatcher, ModelConfig
        from pytriton.triton import TritonConfig

        engine = self.engine
        if self.name is None:
            self.name = _specs.model_name(engine.model.name)
        batched = self.max_batch > 0 and batching.has_batch_axis(engine.inputs, engine.outputs)
        if self.max_batch > 0 and not batched:
            log.info(
                "%s: not every input and output has a dynamic leading dimension, so Triton "
                "serves it without batching (max_batch_size 0)",
                self.name,
            )
        self.max_batch_size = self.max_batch if batched else 0
        inputs = [_pytriton_tensor(s, batched) for s in engine.inputs]
        outputs = [_pytriton_tensor(s, batched) for s in engine.outputs]
        for what, port in (
            ("HTTP", self.http_port),
            ("gRPC", self.grpc_port),
            ("metrics", self.metrics_port),
        ):
            _check_port(self.host, port, what)
        if self.host not in _LOOPBACK:
            log.warning(
                "Triton binds %s: the model is reachable from other machines, and inference "
                "needs no credentials",
                self.host,
            )
        self._logdir = tempfile.TemporaryDirectory(prefix="infer-triton-")
        config = TritonConfig(
            http_address=self.host,
            http_port=self.http_port,
            grpc_address=self.host,
            grpc_port=self.grpc_port,
            metrics_address=self.host,
            metrics_port=self.metrics_port,
            allow_gpu_metrics=any(d.kind == "cuda" for d in _hardware()),
            exit_timeout_secs=self.shutdown_timeout_s,
            log_file=Path(self._logdir.name) / "tritonserver.log",
            log_verbose=0,
        )
        handler = _Handler(engine, batched)
        self._triton = _fail_fast_triton_class(self.startup_timeout_s)(config=config)
        self._triton.bind(
            model_name=self.name,
            infer_func=[handler] * self.instances,
            inputs=inputs,
            outputs=outputs,
            config=ModelConfig(
                batching=batched,
                max_batch_size=self.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=self.max_queue_delay_us),
            ),
            strict=False,
        )
        started = time.monotonic()
        with _server_environment():
            try:
                self._triton.run()
            except _ServerExited as e:
                raise self._startup_error(str(e)) from None
            except Exception as e:  # pytriton's own load request can fail first
                failure = _load_failure(self.log(), self.name or "")
                if failure:
                    raise self._load_error(failure) from e
                raise ServeError(f"Triton did not start: {e}\n{self._log_tail()}") from e
        self._wait_for_model(started)
        log.info(
            "Triton serves %s on http %s, grpc %s (%s, max_batch_size %d)",
            self.name,
            self.http_address,
            self.grpc_address,
            engine.backend,
            self.max_batch_size,
        )

    def _wait_for_model(self, started: float) -> None:
        import tritonclient.http as httpclient

        deadline = started + self.startup_timeout_s
        with httpclient.InferenceServerClient(self.http_address, network_timeout=5.0) as client:
            while True:
                with contextlib.suppress(Exception):
                    if client.is_model_ready(self.name or ""):
                        return
                failure = _load_failure(self.log(), self.name or "")
                if failure or time.monotonic() > deadline:
                    raise self._load_error(
                        failure or f"not ready after {self.startup_timeout_s:.0f} s"
                    )
                time.sleep(0.1)

    def _load_error(self, reason: str) -> ServeError:
        return ServeError(f"Triton could not load model {self.name!r}: {reason}{_hint(reason)}")

    def _startup_error(self, why: str) -> ServeError:
        fatal = _fatal_lines(self.log())
        text = "; ".join(fatal) or why or "the server process exited during start-up"
        if "already in use" in text or "Address in use" in text:
            return PortInUse(f"Triton could not bind its ports on {self.host}: {text}")
        return ServeError(f"Triton did not start: {text}\n{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        tail = self.log().splitlines()[-lines:]
        return "Triton's log ends:\n" + "\n".join(tail) if tail else ""

    @property
    def _log_path(self) -> Path | None:
        return None if self._logdir is None else Path(self._logdir.name) / "tritonserver.log"

    def stop(self) -> None:
        """Stop Triton (requests in flight get `shutdown_timeout_s` to finish); idempotent."""
        triton, self._triton = self._triton, None
        if triton is not None:
            self._unload(triton.get_access_token())
            try:
                triton.stop()
            except Exception:  # the server may already be gone; stopping must not fail
                log.debug("stopping Triton failed", exc_info=True)
        if self._owns_engine and self._engine is not None:
            self._engine.close()
            self._engine = None
        if self._logdir is not None:
            self._logdir.cleanup()
            self._logdir = None

    def _unload(self, token: str | None) -> None:
        """Unload the model while Triton still runs and wait until it is gone, so that the
        SIGINT pytriton's stop sends finds no live model. Otherwise a client's open connection
        holds Triton past its exit timeout (`shutdown_timeout_s`) with the model still live:
        Triton exits with failure and kills its Python stubs ("Non-graceful termination",
        leaked shared memory), where the CLI's SIGTERM, arriving after the clients left, did not."""
        import tritonclient.http as httpclient

        headers = {_ACCESS_HEADER: token} if token else None
        deadline = time.monotonic() + self.shutdown_timeout_s + 5.0
        try:
            with httpclient.InferenceServerClient(
                self.http_address, network_timeout=self.shutdown_timeout_s + 5.0
            ) as client:
                client.unload_model(self.name or "", headers=headers)
            # The request returns as unloading starts, and readiness and the repository index
            # say nothing of the stubs finalizing: Triton's log says when it is done.
            done = f"successfully unloaded '{self.name}'"
            while done not in self.log() and time.monotonic() < deadline:
                time.sleep(0.05)
        except Exception:  # Triton may be gone already; stopping must go on
            log.debug("unloading %s before stopping Triton failed", self.name, exc_info=True)

    def serve_forever(self, poll_s: float = 0.5) -> None:
        """Block until Ctrl-C or SIGTERM, then stop cleanly; ServeError if Triton dies first."""
        if self._triton is None:
            self.start()
        stop = threading.Event()
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda signum, frame: stop.set())
        try:
            while not stop.wait(poll_s):
                # pytriton's liveness also checks each model's handler threads; under load it can
                # read false for a moment, and a signal also reaches Triton: look again after 1 s.
                if not self.running and not stop.wait(1.0) and not self.running:
                    raise ServeError(f"Triton stopped unexpectedly.\n{self._log_tail()}")
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            self.stop()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"serving on {self.http_address}" if self._triton is not None else "stopped"
        return f"<TritonServer {self.name or self._source!r} {state}>"


class _Handler:
    """The function Triton calls with a batch of requests: one engine run per group of requests
    whose inputs agree on everything but the batch dimension."""

    def __init__(self, engine: Engine, batched: bool) -> None:
        self.engine = engine
        self.batched = batched
        # rank-1 tensors are declared [1] to Triton when batched (dims cannot be empty)
        self._unit_in = {s.name for s in engine.inputs if batched and len(s.shape or ()) == 1}
        self._unit_out = {s.name for s in engine.outputs if batched and len(s.shape or ()) == 1}
        self._text_in = {s.name for s in engine.inputs if s.dtype.kind == "O"}
        self._text_out = {s.name for s in engine.outputs if s.dtype.kind == "O"}

    async def __call__(self, requests: Sequence[Any]) -> list[dict[str, np.ndarray]]:
        feeds = [self._feeds(getattr(r, "data", r)) for r in requests]
        members = batching.groups(feeds, self.batched)
        runs = [self.engine.submit(batching.merge([feeds[i] for i in idx])) for idx in members]
        results = await asyncio.gather(*(asyncio.wrap_future(r) for r in runs))
        responses: list[dict[str, np.ndarray]] = [{} for _ in requests]
        for idx, out in zip(members, results):
            for i, part in zip(idx, batching.split(self._outputs(out), [feeds[i] for i in idx])):
                responses[i] = part
        return responses

    def _feeds(self, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for name, value in data.items():
            if name in self._unit_in and value.ndim == 2 and value.shape[1] == 1:
                value = value[:, 0]
            if name in self._text_in:
                value = np.array([_text(v) for v in value.reshape(-1)], object).reshape(value.shape)
            out[name] = value
        return out

    def _outputs(self, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name in self._text_out & out.keys():
            value = out[name]
            out[name] = np.array(
                [v if isinstance(v, bytes) else str(v).encode() for v in value.reshape(-1)], object
            ).reshape(value.shape)
        for name in self._unit_out & out.keys():
            out[name] = out[name][:, None]
        return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pytriton_tensor(spec: TensorSpec, batched: bool) -> Any:
    from pytriton.model_config import Tensor

    triton_type = _specs.triton_type(spec)  # refuses types Triton lacks, naming the tensor
    if spec.dtype.kind == "O":
        dtype: Any = np.bytes_
    elif triton_type == "TYPE_BF16":
        raise OptionError(
            f"tensor {spec.name!r} is bfloat16, which Triton's Python backend (pytriton) cannot "
            "carry; serve a model with float32 or float16 inputs and outputs"
        )
    else:
        dtype = dtype_info(spec.dtype).numpy
    return Tensor(name=spec.name, dtype=dtype, shape=tuple(_specs.triton_dims(spec, batched)))


def _hardware() -> tuple[Any, ...]:
    from ..device import probe_hardware

    return probe_hardware().devices


def _client_host(host: str) -> str:
    """Where a local client reaches a server bound to `host` (a wildcard means loopback)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _check_port(host: str, port: int, what: str) -> None:
    """PortInUse if `port` on `host` is taken; OptionError if `host` is not an address here."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM
        )[0]
    except socket.gaierror as e:
        raise OptionError(f"host {host!r} is not a valid address: {e}") from e
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"{what} port {port} on {host} is already in use; stop what holds it or "
                    f"choose another port (--{what.lower()}-port)"
                ) from e
            raise OptionError(f"cannot bind {host}:{port} for {what}: {e.strerror}") from e


# -- the Python backend's libpython -----------------------------------------------------------


def _stub_library_dir() -> str | None:
    """The folder holding this interpreter's shared libpython, if it has one."""
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or "libpython{}.{}.so.1.0".format(
        *sys.version_info[:2]
    )
    if libdir and os.path.isfile(os.path.join(libdir, soname)):
        return libdir
    return None


@contextlib.contextmanager
def _server_environment() -> Iterator[None]:
    """LD_LIBRARY_PATH for the server process while pytriton starts it.

    Triton's Python-backend stub links `libpython3.X.so`, which the loader finds in the system
    folders. When this interpreter is another build (pyenv, conda, a venv of a newer patch
    release), the stub would run the system's libpython against this interpreter's standard
    library and fail at start-up (e.g. "'_thread.RLock' object has no attribute
    '_recursion_count'"). Putting this interpreter's LIBDIR first makes the stub load the same
    libpython as this process. pytriton copies os.environ when it starts the server, so the
    change is made for that moment only (under a lock) and undone after.
    """
    libdir = _stub_library_dir()
    version = "{}.{}".format(*sys.version_info[:2])
    with _ENV_LOCK:
        old = os.environ.get("LD_LIBRARY_PATH")
        parts = [p for p in (old or "").split(os.pathsep) if p]
        if libdir is None:
            log.info(
                "this Python (%s) has no shared libpython%s in its LIBDIR; Triton's Python "
                "backend will use the system's, which must be the same Python release",
                sys.executable,
                version,
            )
        elif not parts or parts[0] != libdir:
            os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
                [libdir, *(p for p in parts if p != libdir)]
            )
            log.info(
                "Triton's Python backend links libpython%s: putting %s (this interpreter's "
                "LIBDIR) first on the server's LD_LIBRARY_PATH so it runs the same Python",
                version,
                libdir,
            )
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("LD_LIBRARY_PATH", None)
            else:
                os.environ["LD_LIBRARY_PATH"] = old


# -- reading Triton's log ---------------------------------------------------------------------

_FATAL = re.compile(r'^E\d{4} [\d:.]+\s+\d+ main\.cc:\d+\] "?(.*?)"?\s*$', re.M)
_LOAD_FAILED = re.compile(
    r"failed to load '(?P<name>[^']+)' version \d+: (?P<why>.*?)\"?\s*$", re.M
)


def _fatal_lines(text: str) -> list[str]:
    """The errors Triton's main logged (it logs these just before exiting)."""
    return [m.group(1).strip() for m in _FATAL.finditer(text)]


def _load_failure(text: str, name: str) -> str | None:
    """Why Triton failed to load model `name`, from its log (a Python traceback: its error line)."""
    for m in _LOAD_FAILED.finditer(text):
        if m.group("name") == name:
            why = m.group("why").replace("\\n", "\n").replace('\\"', '"')
            errors = [ln.strip() for ln in why.splitlines() if _EXCEPTION_LINE.match(ln.strip())]
            return errors[-1] if "Traceback" in why and errors else why.strip()
    return None


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*")


def _hint(reason: str) -> str:
    """What to do about a model that failed to load, where the cause is the Python backend."""
    version = "{}.{}".format(*sys.version_info[:2])
    if "stub" in reason.lower() or "libpython" in reason:
        return (
            f"\nTriton's Python backend stub needs the shared library libpython{version}.so: "
            f"install it (Debian/Ubuntu: apt-get install libpython{version}) or use a Python "
            "built with --enable-shared"
        )
    if "_recursion_count" in reason and _stub_library_dir() is None:
        return (
            f"\nThe stub ran the system's libpython{version} against this interpreter's "
            "standard library, and they differ: use the system Python, or one built with "
            "--enable-shared"
        )
    return ""


# -- fail fast when the server exits during start-up ----------------------------------------


class _ServerExited(Exception):
    pass


def _fail_fast_triton_class(timeout_s: float) -> type:
    """pytriton's Triton, waiting for the server only while its process lives.

    pytriton polls a server that is starting for up to 120 s, even when the process has already
    exited (a port taken between our check and its bind, a bad flag). This subclass stops
    waiting as soon as the process is gone, or after `timeout_s`.
    """
    from pytriton.triton import Triton

    class _Triton(Triton):
        def _wait_for_server(self) -> None:
            import tritonclient.http as httpclient

            server = getattr(self, "_triton_server", None)
            url = getattr(self, "_url", "").split("://")[-1]
            if server is not None and url:
                deadline = time.monotonic() + timeout_s
                with httpclient.InferenceServerClient(url, network_timeout=2.0) as client:
                    while server.is_alive() and time.monotonic() < deadline:
                        with contextlib.suppress(Exception):
                            if client.is_server_ready():
                                break
                        time.sleep(0.05)
                    else:
                        raise _ServerExited(
                            f"not ready after {timeout_s:.0f} s" if server.is_alive() else ""
                        )
            super()._wait_for_server()

    return _Triton


triton = TritonServer
"""`infer.serve.triton(model_or_engine, ...)`: the server, to use as a context manager."""
