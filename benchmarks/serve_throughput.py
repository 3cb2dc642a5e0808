"""Served throughput: Triton (infer serve) with N concurrent clients sending batch-1 requests,
against the same Engine called in process with `submit()` and the raw ONNX Runtime call.

    python benchmarks/serve_throughput.py [--seconds 5] [--clients 8] [--protocol grpc,http]

Everything runs on this machine (clients, Triton, the engine), on 127.0.0.1. Prints a table and
writes benchmarks/results/serve_throughput.json. The figure that matters is the ratio to
in-process submit() measured in the same run: machines (and shared ones especially) are noisy.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import infer  # noqa: E402
import infer.serve  # noqa: E402
import models  # noqa: E402


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def timed(fn: Any, seconds: float, warmup: float) -> tuple[int, list[float]]:
    """Call fn() until `seconds` pass (after `warmup`); count calls and their latencies."""
    end_warm = time.perf_counter() + warmup
    while time.perf_counter() < end_warm:
        fn()
    latencies = []
    end = time.perf_counter() + seconds
    while (t := time.perf_counter()) < end:
        fn()
        latencies.append(time.perf_counter() - t)
    return len(latencies), latencies


def in_threads(make_call: Any, clients: int, seconds: float, warmup: float) -> dict[str, float]:
    """`clients` threads, each with its own call from make_call(), for `seconds`."""
    results: list[tuple[int, list[float]]] = [(0, [])] * clients
    barrier = threading.Barrier(clients)

    def worker(k: int) -> None:
        call = make_call()
        barrier.wait()
        results[k] = timed(call, seconds, warmup)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = sum(n for n, _ in results)
    lat = [x for _, ls in results for x in ls]
    return summary(done, seconds, lat)


def summary(done: int, seconds: float, latencies: list[float]) -> dict[str, float]:
    lat = sorted(latencies) or [float("nan")]
    return {
        "requests_per_s": done / seconds,
        "p50_ms": 1e3 * statistics.median(lat),
        "p99_ms": 1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
    }


def submit_window(engine: infer.Engine, feeds: dict, window: int, seconds: float, warmup: float):
    """Keep `window` runs in flight through engine.submit(), like `window` waiting clients."""
    pending: collections.deque = collections.deque()
    latencies: list[float] = []
    counting = False
    done = 0
    t_end_warm = time.perf_counter() + warmup
    t_end = t_end_warm + seconds
    while True:
        now = time.perf_counter()
        if not counting and now >= t_end_warm:
            counting = True
        if now >= t_end:
            break
        while len(pending) < window:
            pending.append((time.perf_counter(), engine.submit(feeds)))
        started, fut = pending.popleft()
        fut.result()
        if counting:
            done += 1
            latencies.append(time.perf_counter() - started)
    for _, fut in pending:
        fut.result()
    return summary(done, seconds, latencies)


def raw_onnxruntime(model_bytes: bytes, feeds: dict, seconds: float, warmup: float):
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    done, lat = timed(lambda: session.run(None, feeds), seconds, warmup)
    return summary(done, seconds, lat)


def triton_client(protocol: str, address: str, model: str, x: np.ndarray):
    if protocol == "grpc":
        import tritonclient.grpc as client_lib
    else:
        import tritonclient.http as client_lib
    client = client_lib.InferenceServerClient(address)
    inp = client_lib.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)

    def call() -> None:
        client.infer(model, [inp])

    return call


def batch_sizes(server: infer.serve.TritonServer) -> dict[int, int]:
    stats = server.statistics()["model_stats"][0]["batch_stats"]
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--protocol", default="grpc,http")
    parser.add_argument("--channels", type=int, default=64, help="CNN width (compute per request)")
    parser.add_argument("--size", type=int, default=128, help="CNN input size")
    parser.add_argument("--max-queue-delay-us", type=int, default=500)
    parser.add_argument("--instances", default="1,2", help="Triton model instances to try")
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "serve_throughput.json")
    )
    args = parser.parse_args()

    proto = models.cnn(channels=args.channels, size=args.size, depth=4)
    model_bytes = proto.SerializeToString()
    x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32)
    feeds = {"input": x}
    rows: list[dict[str, Any]] = []

    engine = infer.Engine.load(model_bytes, "cpu")
    raw = raw_onnxruntime(model_bytes, feeds, args.seconds, args.warmup)
    rows.append({"mode": "onnxruntime session.run, 1 caller", **raw})
    base = submit_window(engine, feeds, args.clients, args.seconds, args.warmup)
    rows.append({"mode": f"engine.submit, {args.clients} in flight", **base})

    for instances in [int(n) for n in args.instances.split(",")]:
        http, grpc, metrics = free_ports(3)
        with infer.serve.triton(
            engine,
            name="cnn",
            http_port=http,
            grpc_port=grpc,
            metrics_port=metrics,
            max_queue_delay_us=args.max_queue_delay_us,
            instances=instances,
        ) as server:
            for protocol in args.protocol.split(","):
                address = server.grpc_address if protocol == "grpc" else server.http_address
                before = batch_sizes(server)
                served = in_threads(
                    lambda p=protocol, a=address: triton_client(p, a, "cnn", x),
                    args.clients,
                    args.seconds,
                    args.warmup,
                )
                after = batch_sizes(server)
                new = {k: after[k] - before.get(k, 0) for k in after}
                new = {k: n for k, n in new.items() if n}
                runs = sum(new.values())
                mean_batch = sum(k * n for k, n in new.items()) / runs if runs else 0.0
                rows.append(
                    {
                        "mode": f"Triton {protocol}, {instances} instance(s), {args.clients} clients",
                        **served,
                        "mean_batch": round(mean_batch, 2),
                        "batches": {str(k): v for k, v in sorted(new.items())},
                    }
                )
    engine.close()

    for row in rows:
        row["vs_submit"] = row["requests_per_s"] / base["requests_per_s"]
    print(
        f"model: CNN {args.channels}ch {args.size}x{args.size}, batch-1 requests, {args.seconds:.0f} s each"
    )
    print(f"{'mode':48} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6} {'vs submit':>10}")
    for row in rows:
        batch = f"{row['mean_batch']:.1f}" if "mean_batch" in row else ""
        print(
            f"{row['mode']:48} {row['requests_per_s']:9.1f} {row['p50_ms']:8.2f} "
            f"{row['p99_ms']:8.2f} {batch:>6} {row['vs_submit']:9.2f}x"
        )
    result = {
        "benchmark": "serve_throughput",
        "model": {"kind": "cnn", "channels": args.channels, "size": args.size, "depth": 4},
        "clients": args.clients,
        "seconds": args.seconds,
        "max_queue_delay_us": args.max_queue_delay_us,
        "instances": args.instances,
        "note": "clients, Triton and the engine share this machine's cores",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0],
            "python": platform.python_version(),
        },
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
